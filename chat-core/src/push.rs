//! Web Push subscriptions (section 8 of the wire contract): what the store
//! keeps so that a user with no open session can be told of new messages and
//! calls.
//!
//! A subscription is what a browser's `PushManager.subscribe` hands out: a
//! push service's `endpoint` and the keys (`p256dh`, `auth`) that payloads
//! for it are encrypted with. The store keeps them per user, at most
//! [`MAX_SUBSCRIPTIONS`] each (an 11th replaces the oldest), one row per
//! endpoint (an endpoint subscribed again, by whoever, is theirs from then
//! on: a browser belongs to whoever signed in last). Sending, folding and
//! the durable outbox live in a push crate (`chat-push`), which reads these
//! through [`Store::push_store`](crate::Store::push_store); the engine only
//! offers it who is connected ([`BridgeHost::has_open_session`](crate::BridgeHost::has_open_session)).

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::id::{RoomId, UserId};
use crate::time::Timestamp;

/// How many subscriptions a user keeps: an 11th replaces the oldest.
pub const MAX_SUBSCRIPTIONS: u32 = 10;

/// The longest endpoint URL accepted, in bytes.
pub const MAX_ENDPOINT_BYTES: usize = 2048;

/// One browser's (or device's) push subscription.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushSubscription {
    /// Whose it is.
    pub user_id: UserId,
    /// The push service's URL for this subscription; unique over all users.
    pub endpoint: String,
    /// The browser's P-256 public key, base64url (65 bytes, uncompressed).
    pub p256dh: String,
    /// The browser's authentication secret, base64url (16 bytes).
    pub auth: String,
    /// When it was stored (or stored again).
    pub created_at: Timestamp,
}

/// The push subscriptions a store keeps, when it can. A store returns it
/// from [`Store::push_store`](crate::Store::push_store); the store
/// conformance suite checks it.
#[async_trait]
pub trait PushStore: Send + Sync {
    /// Stores `subscription`, replacing the row of its endpoint whoever it
    /// belonged to (with its keys and `created_at`), then removes the
    /// user's oldest subscriptions beyond `max`, in one transaction.
    async fn add_push_subscription(&self, subscription: &PushSubscription, max: u32) -> Result<()>;

    /// Removes the user's subscription of `endpoint`. `false` when the user
    /// has none there (another user's is left alone).
    async fn remove_push_subscription(&self, user: &UserId, endpoint: &str) -> Result<bool>;

    /// Removes the subscription of `endpoint` whoever it belongs to (its
    /// push service said it is gone), if it is still the one stored at or
    /// before `stored_at` (one subscribed again since is kept). Returns
    /// whether it removed one.
    async fn forget_push_endpoint(&self, endpoint: &str, stored_at: Timestamp) -> Result<bool>;

    /// The subscription of `endpoint`, if any.
    async fn push_subscription(&self, endpoint: &str) -> Result<Option<PushSubscription>>;

    /// A user's subscriptions, oldest first.
    async fn push_subscriptions(&self, user: &UserId) -> Result<Vec<PushSubscription>>;

    /// Whether anyone has a subscription: a server nobody subscribed on
    /// looks for no one to push.
    async fn any_push_subscription(&self) -> Result<bool>;

    /// For each of `rooms`, its members who have at least one subscription,
    /// have not muted the room at `now` (`muted_until` unset or not after
    /// `now`), and are neither deactivated nor deleted: `(room, user)`
    /// pairs, in no particular order. One read for a batch of messages.
    async fn push_recipients(&self, rooms: &[RoomId], now: Timestamp) -> Result<Vec<(RoomId, UserId)>>;
}

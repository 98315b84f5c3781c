//! Web Push for the chat toolkit (section 8 of the wire contract).
//!
//! [`PushBridge`] tells users who have no open session on any server
//! process of what they miss: a new message in a room they have not muted
//! (never their own), folded to at most one push per room every 10 s with a
//! count, and an incoming call (as the engine's [`chat_core::CallNotifier`]).
//! Payloads are encrypted for each browser with `aes128gcm` (RFC 8291) and
//! signed for with VAPID (RFC 8292), all on RustCrypto (`web-push-native`,
//! `p256`): no OpenSSL.
//!
//! - **Durable.** Nothing is sent from the engine's path: what is to be
//!   pushed becomes jobs in the store's bridge outbox, sent from there, and a
//!   restart neither loses nor doubles them (see the `bridge` module).
//! - **Retried** on 429 (after its `Retry-After`), 5xx and no answer, with
//!   backoff, for as long as the push lives (`TTL`); a subscription whose
//!   push service answers 404 or 410 is forgotten.
//! - **Safe to point anywhere.** Endpoints come from users: they must be
//!   `https` on public addresses, checked when stored and again at every
//!   connection (a name resolving to a private address is refused), with no
//!   redirects, unless [`PushConfig::allow_private_endpoints`].
//! - **One sender.** Of several processes on one database, the one holding
//!   the bridge's lease sends; every process enqueues what it commits.
//!
//! [`routes`] serves `GET /v1/push/vapid-public-key` and
//! `POST`/`DELETE /v1/push/subscriptions` beside the other HTTP routes.

mod bridge;
mod config;
mod endpoint;
mod routes;
mod send;
pub mod vapid;

pub use bridge::{NAME, PREVIEW_CHARS, PushBridge};
pub use config::PushConfig;
pub use endpoint::{NewSubscription, SubscriptionKeys, is_public};
pub use routes::routes;
pub use vapid::VapidKey;

//! The seam to other chat platforms.
//!
//! A [`Bridge`] sees what the engine commits (new, edited and deleted
//! messages, rooms and memberships) and can post into rooms as a user through
//! [`Engine::post_as`](crate::Engine::post_as). Bridges are never on the hot
//! path: [`Bridge::on_event`] is called after the commit and must only queue
//! work, so a slow or absent remote platform never delays a local send, an ack
//! or a fan-out.
//!
//! What a bridge must not lose (its outbox of calls to the remote platform,
//! and the links between local and remote ids) it keeps in the store, through
//! [`BridgeStore`], which [`Store::bridge_store`](crate::Store::bridge_store)
//! hands out. Its rules: job ids grow with every enqueue, and
//! [`BridgeStore::due_jobs`] gives only the oldest pending job of each queue,
//! so one queue's jobs run in order while a queue waiting for a retry holds
//! up no other; a job whose `(bridge, dedupe_key)` is pending or failed is not
//! enqueued twice; a link is one remote id per `(bridge, kind, local id)`,
//! readable both ways. A bridge with an outbox shows its jobs to operators
//! through [`Bridge::jobs`] and [`Bridge::retry_job`], which the engine
//! exposes as [`Engine::bridge_jobs`](crate::Engine::bridge_jobs) and
//! [`Engine::retry_bridge_job`](crate::Engine::retry_bridge_job) (the admin
//! API of a transport).
//!
//! A bridge configured in several processes on one database elects the one
//! that talks to the remote platform with [`BridgeStore::acquire_lease`];
//! the others report [`BridgeHealth::standby`]. Events reach a bridge after
//! the commit, through memory, so one may be lost in a crash: a bridge that
//! must not lose any reads back from the store what its outbox does not
//! reflect (new messages by seq, changes with
//! [`Store::changed_messages`](crate::Store::changed_messages)).

mod outbox;

use std::collections::BTreeMap;

use async_trait::async_trait;
use serde::Serialize;

use crate::engine::Engine;
use crate::error::Result;
use crate::id::{RoomId, UserId};
use crate::message::Message;
use crate::room::Room;
use crate::user::User;

pub use outbox::{BridgeStore, Job, JobCounts, JobStatus, NewJob};

/// Something a bridge may want to mirror.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BridgeEvent {
    /// A message was committed.
    MessageCreated(Message),
    /// A message was edited.
    MessageUpdated(Message),
    /// A message was deleted.
    MessageDeleted(Message),
    /// A room was made.
    RoomCreated(Room),
    /// A room was claimed or closed; carries the room as it is now.
    RoomUpdated(Room),
    /// A user became a member.
    MemberAdded {
        /// The room.
        room_id: RoomId,
        /// The new member.
        user: User,
    },
    /// A user stopped being a member.
    MemberRemoved {
        /// The room.
        room_id: RoomId,
        /// The former member.
        user_id: UserId,
    },
}

/// How a bridge is doing, for `/health`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct BridgeHealth {
    /// Whether the bridge is connected to its platform.
    pub connected: bool,
    /// Whether the bridge is on standby: another process holds its lease and
    /// does its work, so not being connected here is as it should be.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub standby: bool,
    /// Work waiting to be sent.
    pub pending: u64,
    /// Work that failed for good.
    pub failed: u64,
    /// The last error, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Anything else worth showing.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub details: BTreeMap<String, String>,
}

/// A bridge to another platform.
#[async_trait]
pub trait Bridge: Send + Sync + 'static {
    /// A short name, used in `/health` and logs (`discord`).
    fn name(&self) -> &str;

    /// Called once when the engine starts, with a handle for posting as users.
    async fn start(&self, engine: Engine) -> Result<()> {
        let _ = engine;
        Ok(())
    }

    /// Sees a committed change. Must return quickly: queue, don't send.
    /// `origin` names the bridge that caused the change, if one did, so that a
    /// bridge can skip its own echoes.
    fn on_event(&self, event: &BridgeEvent, origin: Option<&str>);

    /// How many support agents are available on the bridged platform.
    fn online_agents(&self) -> u32 {
        0
    }

    /// The bridge's state for `/health`.
    fn health(&self) -> BridgeHealth {
        BridgeHealth { connected: true, ..BridgeHealth::default() }
    }

    /// The bridge's outbox jobs with a status, oldest first, at most `limit`,
    /// for operators. A bridge without an outbox has none.
    async fn jobs(&self, status: JobStatus, limit: u32) -> Result<Vec<Job>> {
        let _ = (status, limit);
        Ok(Vec::new())
    }

    /// Makes a failed job pending again, so that it runs at once. `false`
    /// when the bridge has no failed job with that id (a bridge without an
    /// outbox has none).
    async fn retry_job(&self, id: i64) -> Result<bool> {
        let _ = id;
        Ok(false)
    }

    /// Finishes or persists pending work. Called once at shutdown.
    async fn stop(&self) {}
}

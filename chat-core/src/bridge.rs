//! The seam to other chat platforms.
//!
//! A [`Bridge`] sees what the engine commits (new, edited and deleted
//! messages, rooms and memberships) and acts back through the [`BridgeHost`]
//! it is started with: it reads the store and posts, edits, deletes, claims
//! and closes as users of its platform. That handle is all a bridge gets of
//! the engine, so a bridge depends on this module alone, never on the
//! engine's type. Bridges are never on the hot path: [`Bridge::on_event`] is
//! called after the commit and must only queue work, so a slow or absent
//! remote platform never delays a local send, an ack or a fan-out.
//!
//! What a bridge must not lose (its outbox of calls to the remote platform, and
//! the links between local and remote ids) it keeps in the store, through
//! [`BridgeStore`], which [`Store::bridge_store`] hands out. Its rules: job ids
//! grow with every enqueue, and [`BridgeStore::due_jobs`] gives only the oldest
//! pending job of each queue, so one queue's jobs run in order while a queue
//! waiting for a retry holds up no other; a job whose `(bridge, dedupe_key)` is
//! pending or failed is not enqueued twice; a link is one remote id per
//! `(bridge, kind, local id)`, readable both ways. A bridge with an outbox
//! shows its jobs to operators through [`Bridge::jobs`] and
//! [`Bridge::retry_job`], which the engine exposes as
//! [`Engine::bridge_jobs`](crate::Engine::bridge_jobs) and
//! [`Engine::retry_bridge_job`](crate::Engine::retry_bridge_job) (the admin API
//! of a transport).
//!
//! A bridge configured in several processes on one database elects the one
//! that talks to the remote platform with [`BridgeStore::acquire_lease`]
//! ([`Lease`] keeps one process's side of it: when to renew, whether it
//! surely still holds it); the others report [`BridgeHealth::standby`].
//! Events reach a bridge after the commit, through memory, so one may be
//! lost in a crash: a bridge that
//! must not lose any reads back from the store what its outbox does not
//! reflect (new messages by seq, changes with [`Store::changed_messages`]).

mod lease;
mod outbox;

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use serde::Serialize;

use crate::attachment::{ByteStream, StoredAttachment, Upload};
use crate::engine::{Engine, UploadLimits};
use crate::error::Result;
use crate::id::{MessageId, RoomId, UserId};
use crate::message::{Attachment, Message};
use crate::room::Room;
use crate::store::Store;
use crate::user::User;

pub use lease::{Leader, Lease};
pub use outbox::{BridgeStore, Job, JobCounts, JobStatus, NewJob, NewLink};

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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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

    /// Called once when the engine starts, with the handle through which the
    /// bridge reads the store and acts as users of its platform. A bridge
    /// that acts keeps it; an error stops the engine's start.
    async fn start(&self, host: Arc<dyn BridgeHost>) -> Result<()> {
        let _ = host;
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

/// What a bridge may do to the engine: its whole contract with it, handed to
/// [`Bridge::start`].
///
/// A bridge reads through [`store`](BridgeHost::store) and changes what
/// sessions see only through the other methods: it records the users of its
/// platform, shows their typing, and posts, edits, deletes, claims and
/// closes as one of them under the rules a session's command keeps
/// (membership, closed rooms, who may edit or delete), announced to the
/// room as a session's would be. Those room writes take the bridge's name,
/// `bridge`, which comes back as the `origin` of the events they cause
/// ([`Bridge::on_event`]), so that a bridge can skip its own echoes. Nothing
/// here opens a session, administers rooms or stops the engine: that stays
/// with whoever runs it.
///
/// [`Engine`] implements it; a test of a bridge may implement it for a
/// stand-in.
#[async_trait]
pub trait BridgeHost: Send + Sync + 'static {
    /// The engine's store, for reading rooms, members, messages and users,
    /// and for the bridge's own outbox and links through
    /// [`Store::bridge_store`]. Messages, memberships and rooms are changed
    /// through the methods below, never here: the store would not tell the
    /// sessions.
    fn store(&self) -> &dyn Store;

    /// Whether `user` has a session open on any process of the server, as
    /// far as this process's presence knows (it hears the others' within
    /// a heartbeat). Invisible sessions count: the user is there.
    fn has_open_session(&self, user: &UserId) -> bool;

    /// Records a user of the bridged platform, or updates its name, avatar
    /// and roles. `invalid` for a user that fails validation.
    async fn upsert_user(&self, user: User) -> Result<User>;

    /// Posts a message into a room as `user`. The user is recorded, and
    /// becomes a member if the room's rules let them join (a support agent
    /// in a support room, anyone in a public group); `forbidden` otherwise
    /// or when the room is closed. The message goes through the group
    /// committer like a session's send, and is stored once per
    /// `client_msg_id`: a retry answers with the stored message.
    async fn post_as(
        &self,
        bridge: &str,
        user: User,
        room: RoomId,
        client_msg_id: String,
        body: String,
    ) -> Result<Message>;

    /// [`post_as`](BridgeHost::post_as) with files `user` uploaded through
    /// [`store_upload`](BridgeHost::store_upload); the body may be empty.
    async fn post_files_as(
        &self,
        bridge: &str,
        user: User,
        room: RoomId,
        client_msg_id: String,
        body: String,
        attachments: Vec<String>,
    ) -> Result<Message>;

    /// How large a file `user` may upload and where to spool it
    /// (`chat_attachments::spool`); `invalid` when the server keeps no
    /// attachments, `too_large` when the user's quota is used up.
    async fn upload_limits(&self, user: &User) -> Result<UploadLimits>;

    /// Records a spooled file as uploaded by `user` (an agent's file on the
    /// other platform, copied in so that it outlives that platform's links).
    /// The user must be recorded first ([`upsert_user`](BridgeHost::upsert_user)).
    async fn store_upload(&self, user: &User, upload: Upload) -> Result<Attachment>;

    /// A file posted in a room, record and bytes, to copy to the other
    /// platform; `not_found` once its message was deleted.
    async fn attachment(&self, id: &str) -> Result<(StoredAttachment, ByteStream)>;

    /// Gives the files of a message read from [`store`](BridgeHost::store)
    /// their signed URLs, as sessions get them, for a bridge that links to
    /// them rather than copying them. They are absolute only when the
    /// server knows its public address (`AttachmentConfig::public_url`), and
    /// valid for a while (`AttachmentConfig::url_ttl`). The default leaves
    /// them as they are.
    fn sign_attachments(&self, message: &mut Message) {
        let _ = message;
    }

    /// Edits a message as its sender (the bridged user changed what they
    /// wrote), with the rules of a session's `message:edit`: a member, the
    /// sender, not deleted. The room sees `message:updated`.
    async fn edit_as(
        &self,
        bridge: &str,
        user: &UserId,
        room: RoomId,
        message: MessageId,
        body: String,
    ) -> Result<Message>;

    /// Deletes a message as `user`, with the rules of a session's
    /// `message:delete` (the sender or a room admin; deleting twice is fine).
    /// The room sees `message:deleted`.
    async fn delete_as(&self, bridge: &str, user: &UserId, room: RoomId, message: MessageId) -> Result<()>;

    /// Records a support agent as the one who took a support room (an agent
    /// pressed "Claim" on the other platform); the agent is recorded and
    /// becomes a member, the latest claim wins. `forbidden` when `user` lacks
    /// the support role or the room is closed; `invalid` for a room that is
    /// not a support room.
    async fn claim_room_as(&self, bridge: &str, user: User, room: RoomId) -> Result<Room>;

    /// Closes a support room to new messages (an agent pressed "Close" on
    /// the other platform), with the rules of
    /// [`claim_room_as`](BridgeHost::claim_room_as). Closing again changes
    /// and announces nothing.
    async fn close_room_as(&self, bridge: &str, user: User, room: RoomId) -> Result<Room>;

    /// Shows or hides a typing indicator of `user` in a room. It stores
    /// nothing and ends by itself like one from a session.
    async fn set_typing_as(&self, user: &UserId, room: RoomId, typing: bool) -> Result<()>;
}

/// The engine is the host of its bridges. Each method is the engine's own of
/// the same name; this impl only narrows what a bridge can reach.
#[async_trait]
impl BridgeHost for Engine {
    fn store(&self) -> &dyn Store {
        Engine::store(self).as_ref()
    }

    fn has_open_session(&self, user: &UserId) -> bool {
        Engine::has_open_session(self, user)
    }

    async fn upsert_user(&self, user: User) -> Result<User> {
        Engine::upsert_user(self, user).await
    }

    async fn post_as(
        &self,
        bridge: &str,
        user: User,
        room: RoomId,
        client_msg_id: String,
        body: String,
    ) -> Result<Message> {
        Engine::post_as(self, bridge, user, room, client_msg_id, body).await
    }

    async fn post_files_as(
        &self,
        bridge: &str,
        user: User,
        room: RoomId,
        client_msg_id: String,
        body: String,
        attachments: Vec<String>,
    ) -> Result<Message> {
        Engine::post_files_as(self, bridge, user, room, client_msg_id, body, attachments).await
    }

    async fn upload_limits(&self, user: &User) -> Result<UploadLimits> {
        Engine::upload_limits(self, user).await
    }

    async fn store_upload(&self, user: &User, upload: Upload) -> Result<Attachment> {
        Engine::store_upload(self, user, upload).await
    }

    async fn attachment(&self, id: &str) -> Result<(StoredAttachment, ByteStream)> {
        Engine::attachment_for_bridge(self, id).await
    }

    fn sign_attachments(&self, message: &mut Message) {
        Engine::sign_message(self, message);
    }

    async fn edit_as(
        &self,
        bridge: &str,
        user: &UserId,
        room: RoomId,
        message: MessageId,
        body: String,
    ) -> Result<Message> {
        Engine::edit_as(self, bridge, user, room, message, body).await
    }

    async fn delete_as(&self, bridge: &str, user: &UserId, room: RoomId, message: MessageId) -> Result<()> {
        Engine::delete_as(self, bridge, user, room, message).await
    }

    async fn claim_room_as(&self, bridge: &str, user: User, room: RoomId) -> Result<Room> {
        Engine::claim_room_as(self, bridge, user, room).await
    }

    async fn close_room_as(&self, bridge: &str, user: User, room: RoomId) -> Result<Room> {
        Engine::close_room_as(self, bridge, user, room).await
    }

    async fn set_typing_as(&self, user: &UserId, room: RoomId, typing: bool) -> Result<()> {
        Engine::set_typing_as(self, user, room, typing).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Mutex, OnceLock};

    use super::*;
    use crate::message::HistoryQuery;
    use crate::room::{MemberRole, NewRoom, RoomKind, Visibility};
    use crate::store::{MemberLimits, MemoryStore};
    use crate::time::Timestamp;

    /// A bridge that keeps its host and remembers whose doing each event was.
    #[derive(Default)]
    struct Keeper {
        host: OnceLock<Arc<dyn BridgeHost>>,
        origins: Mutex<Vec<Option<String>>>,
    }

    #[async_trait]
    impl Bridge for Keeper {
        fn name(&self) -> &str {
            "keeper"
        }

        async fn start(&self, host: Arc<dyn BridgeHost>) -> Result<()> {
            self.host.set(host).map_err(|_| crate::Error::internal("started twice"))
        }

        fn on_event(&self, _event: &BridgeEvent, origin: Option<&str>) {
            self.origins.lock().expect("not poisoned").push(origin.map(str::to_owned));
        }
    }

    fn uid(id: &str) -> UserId {
        UserId::new(id).expect("valid user id")
    }

    #[tokio::test]
    async fn a_bridge_acts_through_the_host_it_was_started_with() {
        let store = Arc::new(MemoryStore::new());
        let keeper = Arc::new(Keeper::default());
        let engine = Engine::builder(store.clone()).bridge(keeper.clone()).start().await.expect("the engine starts");
        let host = keeper.host.get().expect("started with a host");
        let (room, _) = store
            .create_room(
                NewRoom {
                    id: RoomId::generate(),
                    kind: RoomKind::Group,
                    name: Some("general".into()),
                    visibility: Visibility::Public,
                    created_by: uid("ada"),
                    created_at: Timestamp::now(),
                    members: vec![(uid("ada"), MemberRole::Owner)],
                },
                MemberLimits::NONE,
            )
            .await
            .expect("room");

        let dave = User::new(uid("dave"), "Dave");
        let posted = host.post_as("keeper", dave.clone(), room.id, "d1".into(), "helo".into()).await.expect("posted");
        let edited = host.edit_as("keeper", &dave.id, room.id, posted.id, "hello".into()).await.expect("edited");
        assert_eq!(edited.body, "hello");
        let page = host.store().history(room.id, HistoryQuery { limit: 10, ..Default::default() }).await.expect("read");
        assert_eq!(page.messages, [edited]);
        host.delete_as("keeper", &dave.id, room.id, posted.id).await.expect("deleted");
        assert!(host.store().message(room.id, posted.id).await.expect("read").is_some_and(|m| m.deleted));

        let origins = keeper.origins.lock().expect("not poisoned").clone();
        assert!(origins.len() >= 3, "{origins:?}");
        assert!(origins.iter().all(|o| o.as_deref() == Some("keeper")), "its own doing, each time: {origins:?}");
        engine.shutdown().await;
    }
}

//! The persistence seam.
//!
//! A [`Store`] keeps users, rooms, memberships, messages and receipt cursors.
//! The engine calls it from many tasks at once; an implementation must be safe
//! to share (`Send + Sync`) and must uphold these rules, which the conformance
//! suite (`chat_core::testing`, feature `testing`) checks:
//!
//! - **Seq.** [`Store::append_messages`] gives each new message the next seq of
//!   its room: from 1, no gaps, never reused, in batch order, even when several
//!   processes write to one database.
//! - **Idempotency.** A message whose (room, sender, `client_msg_id`) was stored
//!   before is not stored again; the earlier message comes back with
//!   `created: false`. This holds inside one batch and across racing writers.
//! - **Durability.** When `append_messages` returns `Ok`, the whole batch is
//!   committed. The engine acknowledges sends only after that, and batches
//!   concurrent sends itself (group commit), so an implementation should make one
//!   durable commit per call, not one per message.
//! - **Who may write.** `append_messages` refuses, message by message, a
//!   sender who is not a member of the room, a closed room and a missing room,
//!   in the transaction that stores the batch: no cache of another process can
//!   let a former member write.
//! - **Limits** on memberships ([`MemberLimits`]) are checked in the
//!   transaction that inserts the membership, so that they hold exactly under
//!   concurrent requests from any number of processes. A membership records
//!   whether the user joined by themselves (created or joined the room) or was
//!   added by someone else; only the former count towards a user's quota, so
//!   nobody can fill another user's quota.
//! - **Bans** ([`Store::ban_member`]) remove the member and bar them in one
//!   transaction, and [`Store::add_member`] refuses a banned user in the
//!   transaction that would insert them: a ban holds against a join racing
//!   it on another process.
//! - **Cursors** only move forward; reading implies delivery.
//! - **Search** ([`Store::search_messages`]) finds current text only: an
//!   edit or a delete changes what matches in the transaction that makes it.
//! - **Accounts** ([`UserAccount`]) are the store's word on whose
//!   credentials are accepted; the engine reads them when a session opens
//!   and again, with [`Store::touch_user`], once the session is registered,
//!   so that no process trusts what it remembers. A deleted user stays
//!   deleted: [`Store::upsert_user`] refuses them, [`Store::delete_user`]
//!   forgets their profile and removes every membership in one transaction,
//!   and every read hands them out as [`User::deleted`].
//! - **Attachments** ([`AttachmentStore`], when the store keeps them):
//!   `append_messages` binds a message's attachments to it in the commit that
//!   stores it, only the sender's own and only those never posted (a
//!   message that would take one already posted is refused alone with
//!   [`Error::Conflict`](crate::Error::Conflict)); `delete_message` marks
//!   them removed in its transaction; an upload's record is refused, in the
//!   transaction that would insert it, when it would take its uploader past
//!   their quota.
//! - **Calls** ([`Store::start_call`], [`Store::update_call`]) are decided
//!   here, not in a process's memory: whether a user is in a live call is
//!   read and acted on in the transaction that stores the new call (racing
//!   invites of two users who call each other make one call), and every
//!   later change is a compare-and-set on the call's version, so that of
//!   racing processes exactly one accepts or ends a call.
//! - **Errors** are classified: an unreachable backend is
//!   [`Error::Unavailable`](crate::Error::Unavailable), never a panic, and no
//!   backend text reaches a client through `Display`.

mod memory;

use async_trait::async_trait;

pub use memory::MemoryStore;

use crate::attachment::StoredAttachment;
use crate::bridge::BridgeStore;
use crate::call::{Call, CallStart};
use crate::error::Result;
use crate::id::{AttachmentId, CallId, MessageId, RoomId, SessionId, UserId};
use crate::message::{Appended, HistoryPage, HistoryQuery, Message, NewMessage};
use crate::room::{Ban, Member, MemberRole, NewRoom, ReceiptKind, Room, RoomChanges, RoomSummary};
use crate::search::{SearchPage, SearchQuery};

/// The limits a new membership must keep. A store checks them in the
/// transaction that inserts the membership.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemberLimits {
    /// Most rooms a user may have created or joined by themselves. Rooms that
    /// others added the user to do not count.
    pub max_own_rooms: u64,
    /// Most members one room may have.
    pub max_members: u64,
}

impl MemberLimits {
    /// No limit at all (for tools and tests).
    pub const NONE: MemberLimits = MemberLimits { max_own_rooms: u64::MAX, max_members: u64::MAX };

    /// What a store answers when a user already has
    /// [`MemberLimits::max_own_rooms`] rooms of their own, so that every
    /// store says it alike.
    pub fn own_rooms_error(&self) -> crate::Error {
        crate::Error::forbidden(format!(
            "you have created or joined the maximum number of rooms ({})",
            self.max_own_rooms
        ))
    }

    /// What a store answers when a room already has
    /// [`MemberLimits::max_members`] members.
    pub fn room_full_error(&self) -> crate::Error {
        crate::Error::forbidden("the room is full")
    }

    /// Whether a new membership fits, given the room's member count and the
    /// user's own rooms, both counted in the transaction that would insert
    /// it: the room's capacity first, then, for a user joining by
    /// themselves, their own rooms.
    pub fn check_join(&self, members: u64, own_rooms: u64, self_joined: bool) -> Result<()> {
        if members >= self.max_members {
            return Err(self.room_full_error());
        }
        if self_joined && own_rooms >= self.max_own_rooms {
            return Err(self.own_rooms_error());
        }
        Ok(())
    }
}

/// What a store answers when [`Store::add_member`] meets a ban, so that
/// every store says it alike.
pub fn banned_error() -> crate::Error {
    crate::Error::forbidden("banned from this room")
}

/// How a user becomes a member of a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Joining {
    /// The role they get.
    pub role: MemberRole,
    /// When.
    pub at: Timestamp,
    /// `true` when the user joins by themselves (counts towards
    /// [`MemberLimits::max_own_rooms`]); `false` when someone else adds them.
    pub self_joined: bool,
}

/// Where a page of the support queue starts: after this room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct QueueCursor {
    /// The room's [`QueuedRoom::waiting_since`].
    pub waiting_since: Timestamp,
    /// The room's id, which orders rooms waiting since the same millisecond.
    pub room_id: RoomId,
}

/// A room and when it was last active, from [`Store::rooms_active_since`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveRoom {
    /// The room.
    pub room: Room,
    /// The newest of its creation and its messages' `created_at`: what
    /// orders a user's rooms.
    pub last_activity: Timestamp,
}

/// A room of the support queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedRoom {
    /// The room.
    pub room: Room,
    /// When its first message was stored: how long the visitor has waited.
    pub waiting_since: Timestamp,
}
use crate::time::Timestamp;
use crate::user::{User, UserAccount, UserListQuery, UserPatch};

/// Persistence for everything the engine knows. See the [module docs](self) for
/// the rules an implementation must keep.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Creates a user (active, created now) or replaces the name, avatar and
    /// roles of an existing one. A deleted user is
    /// [`Error::Conflict`](crate::Error::Conflict): nothing brings them back.
    async fn upsert_user(&self, user: &User) -> Result<()>;

    /// One user, if known; a deleted one as [`User::deleted`].
    async fn user(&self, id: &UserId) -> Result<Option<User>>;

    /// The known users among `ids`, in any order, deleted ones as
    /// [`User::deleted`]; unknown ids are skipped.
    async fn users(&self, ids: &[UserId]) -> Result<Vec<User>>;

    /// Users whose id or name contains `query`, ignoring ASCII case, ordered by
    /// name then id, at most `limit`. Deleted users are never found.
    async fn search_users(&self, query: &str, limit: u32) -> Result<Vec<User>>;

    /// A user's account, a deleted user's included (with [`User::deleted`]);
    /// `None` for an id never stored.
    async fn account(&self, id: &UserId) -> Result<Option<UserAccount>>;

    /// The accounts of users who are not deleted, by id in byte order:
    /// those after `query.after` whose id or name contains `query.text`
    /// (ignoring ASCII case, the text taken literally), at most `query.limit`.
    async fn list_accounts(&self, query: &UserListQuery) -> Result<Vec<UserAccount>>;

    /// An operator's change of a user who is not deleted, applied in one
    /// write with `at` recorded as [`UserAccount::profile_set_at`]. Returns
    /// the user as they are now; `None` for an unknown or deleted user.
    async fn update_user(&self, id: &UserId, patch: &UserPatch, at: Timestamp) -> Result<Option<User>>;

    /// Deactivates (`false`) or reactivates (`true`) a user. Returns `false`
    /// for an unknown or deleted user.
    async fn set_user_active(&self, id: &UserId, active: bool) -> Result<bool>;

    /// Records `at` as when the user's tokens were revoked
    /// ([`UserAccount::tokens_revoked_at`]). Returns `false` for an unknown
    /// or deleted user.
    async fn revoke_tokens(&self, id: &UserId, at: Timestamp) -> Result<bool>;

    /// Deletes a user, in one transaction: marks them deleted at `at`,
    /// forgets their name, avatar and roles, and removes every membership
    /// of theirs (their messages stay), remembering those rooms for
    /// [`Store::deleted_members`]. Returns the rooms they were removed from;
    /// `None` for an unknown or already deleted user.
    async fn delete_user(&self, id: &UserId, at: Timestamp) -> Result<Option<Vec<RoomId>>>;

    /// The users who were members of the room when they were deleted, by
    /// the time of their deletion (then id). They are no members; a room's
    /// member list names them, as deleted, so that their messages can be
    /// shown as a deleted user's.
    async fn deleted_members(&self, room: RoomId) -> Result<Vec<UserId>>;

    /// Records `at` as when the user was last seen and returns their account
    /// as it is after that write; `None` for an unknown user. The engine
    /// calls it once when a session opens (after registering it, so that
    /// the answer also settles a race with a deactivation) and once when a
    /// user's last session on a process closes.
    async fn touch_user(&self, id: &UserId, at: Timestamp) -> Result<Option<UserAccount>>;

    /// Makes a room with its initial members: the first, its creator
    /// (`created_by`), joins by themselves; the others are added by the
    /// creator. Returns an existing room and `false` instead for a `direct`
    /// room whose pair of members already has one, and for a `support` room
    /// whose creator has one that is not closed (a creator has at most one
    /// open support room, also when two requests race).
    ///
    /// Fails with [`Error::Forbidden`](crate::Error::Forbidden) when the
    /// creator already has [`MemberLimits::max_own_rooms`] rooms of their own,
    /// counted in the same transaction; an existing room is returned all the same.
    async fn create_room(&self, room: NewRoom, limits: MemberLimits) -> Result<(Room, bool)>;

    /// One room, if it exists.
    async fn room(&self, id: RoomId) -> Result<Option<Room>>;

    /// The `last_seq` of each of these rooms that exists, in any order. A
    /// cluster compares the rooms it serves with this after a broker outage
    /// and every few seconds, so stores should answer it in one query; the
    /// default reads the rooms one by one.
    async fn last_seqs(&self, rooms: &[RoomId]) -> Result<Vec<(RoomId, u64)>> {
        let mut out = Vec::with_capacity(rooms.len());
        for id in rooms {
            if let Some(room) = self.room(*id).await? {
                out.push((room.id, room.last_seq));
            }
        }
        Ok(out)
    }

    /// Records `user` as the agent who took the room (`claimed_by`), the
    /// latest claim winning. Returns the room as it is now and whether this
    /// call changed it (`false` when `user` held the claim already); `None`
    /// when the room does not exist.
    async fn claim_room(&self, id: RoomId, user: &UserId) -> Result<Option<(Room, bool)>>;

    /// Closes the room to new messages (`closed`). Returns the room as it is
    /// now and whether this call closed it, which exactly one of racing
    /// callers sees; `None` when the room does not exist.
    async fn close_room(&self, id: RoomId) -> Result<Option<(Room, bool)>>;

    /// Sets a room's name and topic (`room:update`). Returns the room as it
    /// is now; `None` when it does not exist.
    async fn update_room(&self, id: RoomId, changes: &RoomChanges) -> Result<Option<Room>>;

    /// Every room the user is a member of, with their read cursor and their
    /// mute ([`RoomSummary::with_mute`]), newest activity first.
    async fn rooms_of_user(&self, user: &UserId) -> Result<Vec<RoomSummary>>;

    /// The support queue: support rooms that are not closed and have at least
    /// one message, longest waiting first (by [`QueuedRoom::waiting_since`],
    /// then room id), starting after `after`, at most `limit`. Empty support
    /// rooms never show, however many there are.
    async fn support_queue(&self, after: Option<QueueCursor>, limit: u32) -> Result<Vec<QueuedRoom>>;

    /// Support rooms, closed ones included, newest activity first (ties by
    /// room id, descending), at most `limit`. Bridges catch up from these:
    /// what happened lately, a close included, is what a lost event could
    /// have kept from them.
    async fn support_rooms(&self, limit: u32) -> Result<Vec<Room>>;

    /// Rooms of every kind whose last activity (made, or a message stored)
    /// is at or after `since`, oldest activity first, ties by room id; with
    /// `after` (a room of the previous page), only those after it in that
    /// order, so that `(since, after)` set to the last room's
    /// `(last_activity, id)` reads the next page. At most `limit`.
    ///
    /// Bridges that must see every message catch up from these after a
    /// crash. It is read rarely (a catch-up, not a send), so a store may
    /// scan its rooms rather than keep an index that every send would have
    /// to update.
    async fn rooms_active_since(&self, since: Timestamp, after: Option<RoomId>, limit: u32) -> Result<Vec<ActiveRoom>>;

    /// How many rooms the user is a member of (however they became one).
    async fn room_count_of_user(&self, user: &UserId) -> Result<u64>;

    /// One membership, if the user is a member.
    async fn member(&self, room: RoomId, user: &UserId) -> Result<Option<Member>>;

    /// Every member of a room, in joining order.
    async fn members(&self, room: RoomId) -> Result<Vec<Member>>;

    /// How many members a room has.
    async fn member_count(&self, room: RoomId) -> Result<u64>;

    /// Adds a member with cursors at 0. Returns `false` (and changes nothing)
    /// when the user already is one, [`Error::NotFound`](crate::Error::NotFound)
    /// when the room does not exist, and [`Error::Forbidden`](crate::Error::Forbidden)
    /// when the user is banned from the room ([`banned_error`]), when the room
    /// has [`MemberLimits::max_members`] members or, for a user joining by
    /// themselves, when they have [`MemberLimits::max_own_rooms`] rooms of
    /// their own; all of it read in the inserting transaction.
    async fn add_member(&self, room: RoomId, user: &UserId, joining: Joining, limits: MemberLimits) -> Result<bool>;

    /// Removes a member. Returns `false` when the user was not one.
    async fn remove_member(&self, room: RoomId, user: &UserId) -> Result<bool>;

    /// Bars `ban.user_id` from the room and removes them if they are a
    /// member, in one transaction that a racing [`Store::add_member`] cannot
    /// slip between. Banning someone who is not a member is allowed; banning
    /// again keeps the first ban. Returns whether they were a member;
    /// [`Error::NotFound`](crate::Error::NotFound) when the room does not exist.
    async fn ban_member(&self, room: RoomId, ban: &Ban) -> Result<bool>;

    /// Lifts a ban. Returns `false` when there was none.
    async fn unban_member(&self, room: RoomId, user: &UserId) -> Result<bool>;

    /// The room's bans, newest first, at most `limit`.
    async fn bans(&self, room: RoomId, limit: u32) -> Result<Vec<Ban>>;

    /// Sets a member's role. Returns `false` when the user is not a member.
    async fn set_member_role(&self, room: RoomId, user: &UserId, role: MemberRole) -> Result<bool>;

    /// Sets until when a member muted the room (`None`: not muted;
    /// [`MUTED_FOREVER`](crate::room::MUTED_FOREVER): until unmuted).
    /// Returns `false` when the user is not a member.
    async fn set_muted(&self, room: RoomId, user: &UserId, until: Option<Timestamp>) -> Result<bool>;

    /// The distinct users who share at least one room with `user`, without `user`.
    async fn co_members(&self, user: &UserId) -> Result<Vec<UserId>>;

    /// Stores a batch of messages in one durable commit and returns one answer
    /// per input, in input order. Each new message gets the next seq of its
    /// room; its sender's read and delivered cursors move up to it. A
    /// duplicate (same room, sender and `client_msg_id` as a stored message or
    /// an earlier one in the batch) stores nothing and returns the first message.
    ///
    /// A message is refused, alone, when at the commit its room does not exist
    /// ([`Error::NotFound`](crate::Error::NotFound)), is closed
    /// ([`Error::Forbidden`](crate::Error::Forbidden)) or its sender is not a
    /// member ([`Error::NotMember`](crate::Error::NotMember)); the rest of the
    /// batch is stored. The outer error is for a batch that failed whole.
    async fn append_messages(&self, batch: Vec<NewMessage>) -> Result<Vec<Result<Appended>>>;

    /// One message of a room, if it exists.
    async fn message(&self, room: RoomId, id: MessageId) -> Result<Option<Message>>;

    /// Replaces a message's body and sets `edited_at`. `None` when the message
    /// does not exist in that room.
    async fn edit_message(&self, room: RoomId, id: MessageId, body: &str, at: Timestamp) -> Result<Option<Message>>;

    /// Marks a message deleted, clearing its body and attachments (the seq stays
    /// taken). `None` when the message does not exist in that room.
    async fn delete_message(&self, room: RoomId, id: MessageId, at: Timestamp) -> Result<Option<Message>>;

    /// The messages of a room changed (edited or deleted) at or after
    /// `since`, by `edited_at` then seq, at most `limit`. A bridge that lost
    /// the events of such changes (a crash, a full queue) finds them here.
    ///
    /// The default reads the whole history page by page; stores that can
    /// filter on `edited_at` themselves should.
    async fn changed_messages(&self, room: RoomId, since: Timestamp, limit: u32) -> Result<Vec<Message>> {
        let mut changed = Vec::new();
        let mut after = 0;
        loop {
            let page =
                self.history(room, HistoryQuery { after_seq: Some(after), before_seq: None, limit: 500 }).await?;
            let Some(last) = page.messages.last() else { break };
            after = last.seq;
            changed.extend(page.messages.into_iter().filter(|m| m.edited_at.is_some_and(|t| t >= since)));
            if !page.has_more {
                break;
            }
        }
        changed.sort_by_key(|m| (m.edited_at, m.seq));
        changed.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
        Ok(changed)
    }

    /// One page of a room's history, ascending by seq:
    /// - no cursor: the newest `limit` messages; `has_more` when older ones exist;
    /// - `before_seq`: the newest `limit` below it; `has_more` when older ones exist;
    /// - `after_seq`: the oldest `limit` above it; `has_more` when newer ones exist;
    /// - both: the oldest `limit` strictly between; `has_more` when more lie between.
    ///
    /// Deleted messages are included (with `deleted: true`), so seqs have no gaps.
    async fn history(&self, room: RoomId, query: HistoryQuery) -> Result<HistoryPage>;

    /// Full-text search ([`crate::search`]): the messages that hold every
    /// word of the query, in the rooms `query.user` is a member of now (or in
    /// `query.room` only), newest first, at most `query.limit`, older than
    /// `query.before` (a `next` this store gave). Deleted messages are never
    /// found, and an edited one only by its current text. `next` is set when
    /// older results may exist. A cursor this store did not make is
    /// [`Error::Invalid`](crate::Error::Invalid).
    ///
    /// The default answers [`Error::Unavailable`](crate::Error::Unavailable):
    /// a store that cannot search says so instead of finding nothing.
    async fn search_messages(&self, query: &SearchQuery) -> Result<SearchPage> {
        let _ = query;
        Err(crate::Error::unavailable("this store cannot search messages"))
    }

    /// Moves a member's cursor forward to `up_to` (a read moves the delivered
    /// cursor too). Returns the new value when it moved, `None` when it was
    /// already there or beyond, or when the user is not a member.
    async fn advance_cursor(&self, room: RoomId, user: &UserId, kind: ReceiptKind, up_to: u64) -> Result<Option<u64>>;

    /// Places a call (ringing) unless one of its two users is in a live call
    /// already, deciding in one transaction that racing invites on any
    /// process cannot slip between ([`crate::call`]):
    /// - the callee is calling the caller right now (a ringing call from
    ///   `call.callee` to `call.caller`): [`CallStart::Glare`] with that
    ///   call, nothing stored (the older invite is kept);
    /// - the caller is in a live call: [`CallStart::CallerBusy`], nothing stored;
    /// - the callee is in a live call: the call is stored as ended with
    ///   [`EndReason::Busy`](crate::EndReason::Busy) at its `created_at`,
    ///   and returned as stored, in [`CallStart::Busy`];
    /// - otherwise the call is stored as given: [`CallStart::Started`].
    ///
    /// The default answers [`Error::Unavailable`](crate::Error::Unavailable):
    /// a store that cannot keep calls says so.
    async fn start_call(&self, call: &Call) -> Result<CallStart> {
        let _ = call;
        Err(crate::Error::unavailable("this store cannot keep calls"))
    }

    /// One call, if it exists.
    async fn call(&self, id: CallId) -> Result<Option<Call>> {
        let _ = id;
        Err(crate::Error::unavailable("this store cannot keep calls"))
    }

    /// Stores a call's new state (everything but its id, room, media, users,
    /// creation and ring times) if its stored `version` is still
    /// `call.version`, and bumps the version: a compare-and-set. Returns the
    /// call as stored now, or `None` when it changed meanwhile (or does not
    /// exist), in which case nothing was written.
    async fn update_call(&self, call: &Call) -> Result<Option<Call>> {
        let _ = call;
        Err(crate::Error::unavailable("this store cannot keep calls"))
    }

    /// Moves the [`CallParty::until`](crate::CallParty::until) of every
    /// side of a live call whose session is one of `legs` to `until`: the
    /// lease of the sessions open on this process. Does not bump versions.
    async fn renew_calls(&self, legs: &[(CallId, SessionId)], until: Timestamp) -> Result<()> {
        let _ = (legs, until);
        Err(crate::Error::unavailable("this store cannot keep calls"))
    }

    /// Live calls whose [`Call::deadline`](crate::Call::deadline) is at or
    /// before `now`, oldest first, at most `limit`.
    async fn due_calls(&self, now: Timestamp, limit: u32) -> Result<Vec<Call>> {
        let _ = (now, limit);
        Err(crate::Error::unavailable("this store cannot keep calls"))
    }

    /// Ended calls whose history line is not written
    /// ([`Call::logged`](crate::Call::logged) unset) and that ended at or
    /// before `before`, oldest first, at most `limit`.
    async fn unlogged_calls(&self, before: Timestamp, limit: u32) -> Result<Vec<Call>> {
        let _ = (before, limit);
        Err(crate::Error::unavailable("this store cannot keep calls"))
    }

    /// Records that a call's history line was written. Does not bump its version.
    async fn mark_call_logged(&self, id: CallId) -> Result<()> {
        let _ = id;
        Err(crate::Error::unavailable("this store cannot keep calls"))
    }

    /// The outbox and links bridges keep here, when this store can hold them.
    /// Bridges that need durable work refuse to start without it.
    fn bridge_store(&self) -> Option<&dyn BridgeStore> {
        None
    }

    /// The records of uploads, when this store can hold them. Without it
    /// the engine refuses attachments.
    fn attachment_store(&self) -> Option<&dyn AttachmentStore> {
        None
    }

    /// The push subscriptions, when this store can keep them. Without it
    /// the server offers no Web Push.
    fn push_store(&self) -> Option<&dyn crate::push::PushStore> {
        None
    }

    /// A secret every process of the server shares (the key that signs
    /// attachment URLs, say): the value stored under `name`, or `candidate`
    /// once it was stored because there was none. Racing callers all get the
    /// first value stored.
    ///
    /// The default keeps nothing and answers `candidate`, which is right for
    /// a store only one process uses and is never restarted on (the memory
    /// store); a store shared by processes must keep it.
    async fn server_secret(&self, name: &str, candidate: &str) -> Result<String> {
        let _ = name;
        Ok(candidate.to_string())
    }

    /// Checks that the backend answers; used by health checks.
    async fn ping(&self) -> Result<()>;

    /// Finishes pending work and releases connections. Called once at shutdown.
    async fn close(&self) {}
}

/// The records of uploads ([`StoredAttachment`]): which file is whose, where
/// it was posted, and what the clean-up may remove. A store returns it from
/// [`Store::attachment_store`]; the conformance suite checks it with
/// `attachment_store_conformance`.
#[async_trait]
pub trait AttachmentStore: Send + Sync {
    /// Records an upload, unless the uploader's attachments that are not
    /// removed would then account for more than `quota` bytes (see
    /// [`StoredAttachment::accounted_bytes`]) (0: no quota), which
    /// is [`Error::TooLarge`](crate::Error::TooLarge) and records nothing.
    /// The check and the insert are one transaction, so the quota holds
    /// exactly under concurrent uploads on any number of processes.
    async fn insert_attachment(&self, attachment: &StoredAttachment, quota: u64) -> Result<()>;

    /// One record, removed or not.
    async fn attachment(&self, id: AttachmentId) -> Result<Option<StoredAttachment>>;

    /// The records of `ids` that exist, in no particular order.
    async fn attachments(&self, ids: &[AttachmentId]) -> Result<Vec<StoredAttachment>>;

    /// The bytes a user's attachments that are not removed take, each
    /// counted as at least [`MIN_ACCOUNTED_BYTES`](crate::attachment::MIN_ACCOUNTED_BYTES)
    /// (see [`StoredAttachment::accounted_bytes`]).
    async fn attachment_usage(&self, user: &UserId) -> Result<u64>;

    /// Records the clean-up may remove, at most `limit`: those removed (their
    /// message was deleted) and those never posted that were uploaded before
    /// `orphaned_before`.
    async fn attachments_to_purge(&self, orphaned_before: Timestamp, limit: u32) -> Result<Vec<StoredAttachment>>;

    /// Marks a record removed if [`attachments_to_purge`](Self::attachments_to_purge)
    /// would list it (removed already, or never posted and uploaded before
    /// `orphaned_before`), so that no message can take it from then on.
    /// `false` when it was posted meanwhile or is gone.
    async fn mark_removed(&self, id: AttachmentId, orphaned_before: Timestamp) -> Result<bool>;

    /// Forgets a removed record, once its bytes are gone.
    async fn forget_attachment(&self, id: AttachmentId) -> Result<()>;
}

/// What every store answers when a message would take an attachment that
/// cannot be posted with it, so that every store says it alike.
pub fn attachment_taken_error() -> crate::Error {
    crate::Error::conflict("an attachment was already posted, or is not yours")
}

/// What every store answers when an upload would exceed its uploader's quota.
pub fn quota_error(quota: u64) -> crate::Error {
    crate::Error::too_large(format!("your attachments would take more than your quota of {quota} bytes"))
}

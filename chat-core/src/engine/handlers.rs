//! The commands that have no home of their own: sessions opening, rooms
//! (creating, listing, claiming, closing, the support queue), history,
//! messages (send, edit, delete), typing, and user and message search. Each validates its
//! input, checks permissions, then changes the store and publishes the
//! resulting events. Membership (`membership.rs`), receipts (`receipts.rs`)
//! and presence (`presence.rs`) each live in their own module.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::oneshot;

use super::cluster::Control;
use super::committer::{CommitJob, CommitRequest};
use super::hub::SessionShared;
use super::session::{Ready, Session};
use super::{Ctx, Inner};
use crate::bridge::BridgeEvent;
use crate::broker::{Audience, Topic};
use crate::command::{CreateRoom, DeleteMessage, EditMessage, Reply, SearchMessages, SearchUsers, SendMessage};
use crate::error::{Error, Result};
use crate::event::{Event, MessageDeleted, MessageEvent, RoomAdded, RoomUpdated};
use crate::id::{RoomId, SessionId, UserId};
use crate::message::{Appended, HistoryPage, HistoryQuery, NewMessage, validate_body, validate_client_msg_id};
use crate::room::{MemberRole, NewRoom, Room, RoomKind, RoomSummary, Visibility};
use crate::search::{self, SearchPage, SearchQuery};
use crate::store::{QueueCursor, QueuedRoom};
use crate::time::Timestamp;
use crate::user::{Identity, User};

/// The commands an anonymous visitor may send: their own support room's
/// life, and nothing that reaches other users or reveals them. Every other
/// command, present or future, answers `forbidden`.
pub(crate) fn visitor_may(kind: crate::command::CommandKind) -> bool {
    use crate::command::CommandKind as K;
    matches!(
        kind,
        K::RoomCreate
            | K::RoomJoin
            | K::RoomLeave
            | K::RoomList
            | K::RoomHistory
            | K::MessageSend
            | K::MessageEdit
            | K::MessageDelete
            | K::TypingStart
            | K::TypingStop
            | K::MessageDelivered
            | K::MessageRead
            | K::Ping
    )
}

/// One page of the support queue, for `GET /v1/support/queue`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SupportQueuePage {
    /// The rooms, longest waiting first.
    pub rooms: Vec<QueuedRoom>,
    /// The cursor of the next page, when there may be one.
    pub next: Option<String>,
}

/// The store refuses to write a deleted user (`conflict`): for a session
/// opening, that is a user deleted since their account was read.
fn deleted_meanwhile(err: Error) -> Error {
    match err {
        Error::Conflict(_) => Error::Unauthorized("the user was deleted".into()),
        other => other,
    }
}

/// Writes a queue cursor as the opaque text clients pass back.
pub(crate) fn encode_queue_cursor(cursor: QueueCursor) -> String {
    format!("{}.{}", cursor.waiting_since.as_millis(), cursor.room_id)
}

/// Reads a cursor made by [`encode_queue_cursor`].
pub(crate) fn decode_queue_cursor(text: &str) -> Result<QueueCursor> {
    let bad = || Error::invalid("cursor is not one this server gave");
    let (millis, room) = text.split_once('.').ok_or_else(bad)?;
    let millis: i64 = millis.parse().map_err(|_| bad())?;
    let room_id: RoomId = room.parse().map_err(|_| bad())?;
    Ok(QueueCursor { waiting_since: Timestamp::from_millis(millis), room_id })
}

impl Inner {
    pub(crate) async fn open_session(
        self: &Arc<Self>,
        identity: Identity,
        transport: &'static str,
    ) -> Result<(Session, Ready)> {
        if !self.accepting.load(Ordering::SeqCst) {
            return Err(Error::unavailable("the server is shutting down"));
        }
        // The store's word on these credentials, and the user as stored.
        let user = match self.store.account(&identity.user_id).await? {
            Some(account) => {
                account.admits(&identity)?;
                let claims_apply = account.claims_apply(&identity);
                let mut user = account.user;
                let mut changed = false;
                if claims_apply {
                    if let Some(name) = identity.name.as_ref().filter(|n| **n != user.name) {
                        user.name.clone_from(name);
                        changed = true;
                    }
                    if let Some(roles) = identity.roles.as_ref().filter(|r| **r != user.roles) {
                        user.roles.clone_from(roles);
                        changed = true;
                    }
                }
                if changed {
                    user.validate()?;
                    self.store.upsert_user(&user).await.map_err(deleted_meanwhile)?;
                }
                user
            }
            None => {
                let name = identity.name.clone().unwrap_or_else(|| identity.user_id.to_string());
                let mut user = User::new(identity.user_id.clone(), name);
                user.roles = identity.roles.clone().unwrap_or_default();
                user.validate()?;
                self.store.upsert_user(&user).await.map_err(deleted_meanwhile)?;
                user
            }
        };
        let rooms = self.room_list(&user).await?;
        let user = Arc::new(user);
        let limits = &self.config.limits;
        let shared = Arc::new(SessionShared::new(SessionId::generate(), user.clone(), limits.outbound_queue));
        if self.hub.register(shared.clone(), limits.max_connections_per_user).is_err() {
            return Err(Error::RateLimited("too many open connections for this user".into()));
        }
        if let Some(cluster) = &self.cluster {
            // Events for the user from other processes (`room:added`, a
            // removal, the end of their sessions) reach this session from
            // here on.
            cluster.interest_changed(crate::broker::Topic::User(user.id.clone())).await;
        }
        // Asked again now that the session can be ended from anywhere: a
        // deactivation, revocation or deletion committed after the read
        // above either shows here, or ends this session through
        // `Engine::end_sessions` once it is registered. A read: when the
        // user was last seen is written behind the session's opening.
        let refused = match self.store.account(&user.id).await {
            Ok(Some(account)) => account.admits(&identity).err(),
            Ok(None) => Some(Error::Unauthorized("the user was deleted".into())),
            Err(err) => Some(err),
        };
        if let Some(err) = refused {
            self.forget_session(&shared);
            return Err(err);
        }
        self.last_seen.note(user.id.clone(), Timestamp::now());
        self.presence.connect(&user);
        self.keepalives.add(shared.id);
        let ready = Ready { session_id: shared.id, user: User::clone(&user), rooms, server_time: Timestamp::now() };
        let session = Session::new(self.clone(), shared, identity.expires_at, transport);
        Ok((session, ready))
    }

    /// Undoes the registration of a session that is refused before it
    /// opened (it was never counted online, nor joined a room).
    fn forget_session(&self, shared: &SessionShared) {
        let (last, emptied) = self.hub.unregister(shared.id);
        self.rooms_emptied(&emptied);
        if last && let Some(cluster) = &self.cluster {
            cluster.interest_note(crate::broker::Topic::User(shared.user_id().clone()));
        }
    }

    /// Counts a room creation or invitation against the user's allowance.
    /// Bridges act for people of another platform, whose own limits apply there.
    pub(crate) fn take_room_action(&self, ctx: &Ctx) -> Result<()> {
        let per_minute = self.config.limits.room_actions_per_minute;
        if ctx.bridge.is_none() && !self.room_actions.take(&ctx.user.id, per_minute) {
            return Err(Error::RateLimited(format!(
                "at most {per_minute} room creations and invitations a minute; try again shortly"
            )));
        }
        Ok(())
    }

    pub(crate) async fn room_or_404(&self, room: RoomId) -> Result<Room> {
        self.store.room(room).await?.ok_or(Error::NotFound("room"))
    }

    pub(crate) async fn create_room(&self, ctx: &Ctx, req: CreateRoom) -> Result<Reply> {
        let limits = &self.config.limits;
        if ctx.user.is_visitor() && req.kind != RoomKind::Support {
            return Err(Error::forbidden("visitors may only open a support room"));
        }
        if let Some(name) = &req.name {
            super::moderation::check_room_name(limits, name)?;
        }
        let name = req.name;
        if req.members.len() > limits.max_initial_members {
            return Err(Error::too_large(format!("at most {} members at creation", limits.max_initial_members)));
        }
        let mut seen = HashSet::new();
        let others: Vec<UserId> =
            req.members.into_iter().filter(|u| *u != ctx.user.id && seen.insert(u.clone())).collect();
        let mut known = self.store.users(&others).await?;
        // A deleted user is known no more.
        known.retain(|u| !u.deleted);
        if known.len() != others.len() {
            return Err(Error::NotFound("user"));
        }
        if known.iter().any(User::is_visitor) {
            return Err(Error::forbidden("visitors can only be in their own support room"));
        }
        let visibility = match (req.kind, req.visibility) {
            (RoomKind::Group, v) => v.unwrap_or(Visibility::Private),
            (_, Some(Visibility::Public)) => {
                return Err(Error::invalid("only group rooms can be public"));
            }
            _ => Visibility::Private,
        };
        match req.kind {
            RoomKind::Direct if others.len() != 1 => {
                return Err(Error::invalid("a direct room needs exactly one other member"));
            }
            RoomKind::Support if !others.is_empty() => {
                return Err(Error::invalid("a support room starts with its visitor only; agents join by role"));
            }
            _ => {}
        }
        self.take_room_action(ctx)?;
        let mut members = vec![(ctx.user.id.clone(), MemberRole::Owner)];
        members.extend(others.iter().map(|u| (u.clone(), MemberRole::Member)));
        let new = NewRoom {
            id: RoomId::generate(),
            kind: req.kind,
            name,
            visibility,
            created_by: ctx.user.id.clone(),
            created_at: Timestamp::now(),
            members,
        };
        // The store returns an existing direct room of the pair, or the
        // creator's open support room, and checks the creator's quota, all in
        // one transaction. Rooms others add a user to do not count.
        let (room, created) = self.store.create_room(new, self.member_limits()).await?;
        if created {
            self.notify_bridges(BridgeEvent::RoomCreated(room.clone()), ctx.bridge.as_deref());
            let added = Event::RoomAdded(RoomAdded { room: room.clone() });
            self.publish(Audience::Users { users: others, except_session: None }, added.clone()).await;
            self.publish(Audience::Users { users: vec![ctx.user.id.clone()], except_session: ctx.session }, added)
                .await;
        }
        Ok(Reply::Room { room })
    }

    /// Records the support agent `ctx.user` as the one who took a support
    /// room, making them a member, and announces `room:updated` to the room
    /// when the claim changed.
    pub(crate) async fn claim_room(&self, ctx: &Ctx, room_id: RoomId) -> Result<Room> {
        let room = self.support_room_for_agent(ctx, room_id).await?;
        if room.closed {
            return Err(Error::room_closed());
        }
        self.ensure_member(ctx, room_id).await?;
        let (room, changed) = self.store.claim_room(room_id, &ctx.user.id).await?.ok_or(Error::NotFound("room"))?;
        if changed {
            self.announce_room_update(ctx, &room, None).await;
        }
        Ok(room)
    }

    /// Closes a support room to new messages for good, on behalf of the
    /// support agent `ctx.user`, and announces `room:updated` (with `closed`)
    /// once, whoever else closes it at the same time.
    pub(crate) async fn close_room(&self, ctx: &Ctx, room_id: RoomId) -> Result<Room> {
        self.support_room_for_agent(ctx, room_id).await?;
        let (room, changed) = self.store.close_room(room_id).await?.ok_or(Error::NotFound("room"))?;
        if changed {
            let control = Control::RoomClosed { room_id };
            if let Some(cluster) = &self.cluster {
                cluster.publish_control(Topic::Room(room_id), &control);
            }
            self.apply_control(control);
            self.announce_room_update(ctx, &room, None).await;
        }
        Ok(room)
    }

    async fn support_room_for_agent(&self, ctx: &Ctx, room_id: RoomId) -> Result<Room> {
        let room = self.room_or_404(room_id).await?;
        if room.kind != RoomKind::Support {
            return Err(Error::invalid("only support rooms are claimed and closed"));
        }
        if !ctx.user.is_support() {
            return Err(Error::forbidden("only support agents claim and close support rooms"));
        }
        Ok(room)
    }

    /// `room:updated` to the room (but the session in `except_session`,
    /// which has the room in its reply) and the bridges.
    pub(crate) async fn announce_room_update(&self, ctx: &Ctx, room: &Room, except_session: Option<SessionId>) {
        let audience = Audience::Room { room_id: room.id, except_session, except_user: None };
        self.publish(audience, Event::RoomUpdated(RoomUpdated { room: room.clone() })).await;
        self.notify_bridges(BridgeEvent::RoomUpdated(room.clone()), ctx.bridge.as_deref());
    }

    /// Tells the support agents connected here that a support room has
    /// entered the queue (its first message is stored), with `room:added`, so
    /// that their lists show it at once. They are not made members: an agent
    /// joins the rooms they answer, and spam cannot fill their rooms.
    pub(crate) async fn announce_queued(&self, room_id: RoomId) {
        // Every room's first message comes here; with no agent to tell, the
        // room is not even read.
        let agents = self.presence.support_agents_connected();
        if agents.is_empty() {
            return;
        }
        let room = match self.store.room(room_id).await {
            Ok(Some(room)) if room.kind == RoomKind::Support && !room.closed => room,
            Ok(_) => return,
            Err(err) => {
                // The queue in each agent's room list still shows the room.
                tracing::warn!(room = %room_id, error = %err, "could not announce a queued support room");
                return;
            }
        };
        let audience = Audience::Users { users: agents, except_session: None };
        self.publish(audience, Event::RoomAdded(RoomAdded { room })).await;
    }

    pub(crate) async fn list_rooms(&self, ctx: &Ctx) -> Result<Reply> {
        Ok(Reply::Rooms { rooms: self.room_list(&ctx.user).await? })
    }

    /// A user's rooms, newest activity first; for a support agent, followed
    /// by the first page of the support queue (longest waiting first) without
    /// the rooms they have joined (with a read cursor of 0), so that an agent
    /// who was away sees who waits. The rest of the queue is paged through
    /// [`Inner::support_queue`].
    async fn room_list(&self, user: &User) -> Result<Vec<RoomSummary>> {
        let mut rooms = self.store.rooms_of_user(&user.id).await?;
        if user.is_support() && !user.is_visitor() {
            let known: HashSet<RoomId> = rooms.iter().map(|s| s.room.id).collect();
            let queue = self.store.support_queue(None, self.config.limits.support_queue).await?;
            rooms
                .extend(queue.into_iter().filter(|q| !known.contains(&q.room.id)).map(|q| RoomSummary::new(q.room, 0)));
        }
        Ok(rooms)
    }

    /// One page of the support queue, for support agents: open support
    /// rooms with at least one message, longest waiting first.
    pub(crate) async fn support_queue(
        &self,
        user: &User,
        cursor: Option<&str>,
        limit: Option<u32>,
    ) -> Result<SupportQueuePage> {
        if !user.is_support() || user.is_visitor() {
            return Err(Error::forbidden("only support agents see the support queue"));
        }
        let after = cursor.map(decode_queue_cursor).transpose()?;
        let limit = match limit {
            Some(0) => return Err(Error::invalid("limit must be at least 1")),
            Some(n) => n.min(self.config.limits.max_history_page),
            None => self.config.limits.support_queue,
        };
        let rooms = self.store.support_queue(after, limit).await?;
        let next = match rooms.last() {
            Some(last) if rooms.len() as u32 == limit => {
                Some(encode_queue_cursor(QueueCursor { waiting_since: last.waiting_since, room_id: last.room.id }))
            }
            _ => None,
        };
        Ok(SupportQueuePage { rooms, next })
    }

    pub(crate) async fn history(
        &self,
        ctx: &Ctx,
        room: RoomId,
        before_seq: Option<u64>,
        after_seq: Option<u64>,
        limit: Option<u32>,
    ) -> Result<HistoryPage> {
        let limits = &self.config.limits;
        let limit = match limit {
            Some(0) => return Err(Error::invalid("limit must be at least 1")),
            Some(n) => n.min(limits.max_history_page),
            None => limits.default_history_page,
        };
        self.require_member(ctx, room).await?;
        let mut page = self.store.history(room, HistoryQuery { before_seq, after_seq, limit }).await?;
        self.sign_all(&mut page.messages);
        Ok(page)
    }

    /// Validates a send and queues it for the group committer. The returned
    /// receiver answers once the message is durably stored.
    pub(crate) async fn send(&self, ctx: &Ctx, req: SendMessage) -> Result<oneshot::Receiver<Result<Appended>>> {
        validate_client_msg_id(&req.client_msg_id)?;
        // A message may be only files: its body may then be empty.
        validate_body(&req.body, self.config.limits.max_body_chars, !req.attachments.is_empty())?;
        let attachments =
            self.resolve_attachments(&ctx.user.id, req.room_id, &req.client_msg_id, &req.attachments).await?;
        // The store refuses a non-member, a closed room and a missing one in
        // the commit itself, so these reads only answer early. A session
        // joined to the room skips them: the hub's view of it could be stale
        // (another process may have changed the membership), but the commit's
        // cannot.
        let closed = if self.joined_here(ctx, req.room_id) {
            self.hub.is_closed(req.room_id)
        } else {
            self.require_member(ctx, req.room_id).await?;
            self.room_or_404(req.room_id).await?.closed
        };
        if closed {
            return Err(Error::room_closed());
        }
        if let Some(reply_to) = req.reply_to
            && self.store.message(req.room_id, reply_to).await?.is_none()
        {
            return Err(Error::NotFound("reply_to message"));
        }
        if !self.accepting.load(Ordering::SeqCst) {
            return Err(Error::unavailable("the server is shutting down"));
        }
        let (tx, rx) = oneshot::channel();
        let request = CommitRequest {
            message: NewMessage {
                id: crate::id::MessageId::generate(),
                room_id: req.room_id,
                sender_id: ctx.user.id.clone(),
                client_msg_id: req.client_msg_id,
                body: req.body,
                attachments,
                reply_to: req.reply_to,
                created_at: Timestamp::now(),
                call: None,
            },
            session: ctx.session,
            bridge: ctx.bridge.clone(),
            reply: tx,
        };
        self.commits
            .send(CommitJob::Append(request))
            .await
            .map_err(|_| Error::unavailable("the committer has stopped"))?;
        Ok(rx)
    }

    pub(crate) async fn edit(&self, ctx: &Ctx, req: EditMessage) -> Result<Reply> {
        validate_body(&req.body, self.config.limits.max_body_chars, false)?;
        self.require_member(ctx, req.room_id).await?;
        let msg = self.store.message(req.room_id, req.message_id).await?.ok_or(Error::NotFound("message"))?;
        if msg.sender_id != ctx.user.id {
            return Err(Error::forbidden("only the sender may edit a message"));
        }
        if msg.deleted {
            return Err(Error::conflict("the message was deleted"));
        }
        let mut message = self
            .store
            .edit_message(req.room_id, req.message_id, &req.body, Timestamp::now())
            .await?
            .ok_or(Error::NotFound("message"))?;
        self.sign(&mut message);
        let audience = Audience::Room { room_id: req.room_id, except_session: ctx.session, except_user: None };
        self.publish(audience, Event::MessageUpdated(MessageEvent { message: message.clone() })).await;
        self.notify_bridges(BridgeEvent::MessageUpdated(message.clone()), ctx.bridge.as_deref());
        Ok(Reply::Message { message })
    }

    pub(crate) async fn delete(&self, ctx: &Ctx, req: DeleteMessage) -> Result<Reply> {
        let member = self.require_member(ctx, req.room_id).await?;
        let msg = self.store.message(req.room_id, req.message_id).await?.ok_or(Error::NotFound("message"))?;
        // A visitor owns their support room, but the agents' answers are not theirs to remove.
        if msg.sender_id != ctx.user.id && (!member.role.is_admin() || ctx.user.is_visitor()) {
            return Err(Error::forbidden("only the sender or a room admin may delete a message"));
        }
        if msg.deleted {
            return Ok(Reply::empty());
        }
        let message = self
            .store
            .delete_message(req.room_id, req.message_id, Timestamp::now())
            .await?
            .ok_or(Error::NotFound("message"))?;
        let audience = Audience::Room { room_id: req.room_id, except_session: ctx.session, except_user: None };
        let event = MessageDeleted { room_id: req.room_id, message_id: req.message_id };
        self.publish(audience, Event::MessageDeleted(event)).await;
        self.notify_bridges(BridgeEvent::MessageDeleted(message), ctx.bridge.as_deref());
        Ok(Reply::empty())
    }

    pub(crate) async fn typing(&self, ctx: &Ctx, room: RoomId, typing: bool) -> Result<Reply> {
        // Typing stores nothing and shows nothing of the room, so a session
        // joined to it goes by the hub, which keeps typing alive while the
        // database is down. (A membership ended on another process reaches
        // this hub with the cluster's membership messages.)
        if !self.joined_here(ctx, room) {
            self.require_member(ctx, room).await?;
        }
        let changed = if typing { self.typing.start(room, &ctx.user.id) } else { self.typing.stop(room, &ctx.user.id) };
        if changed {
            self.publish_typing(room, ctx.user.id.clone(), typing).await;
        }
        Ok(Reply::empty())
    }

    /// `messages:search`: the checks of section 5, then the store's search.
    pub(crate) async fn search_messages(&self, ctx: &Ctx, req: SearchMessages) -> Result<SearchPage> {
        // Visitors are refused before this, by `visitor_may`.
        if req.q.chars().count() > search::MAX_QUERY_CHARS {
            return Err(Error::too_large(format!("q is longer than {} characters", search::MAX_QUERY_CHARS)));
        }
        let words = search::words(&req.q);
        if words.is_empty() {
            return Err(Error::invalid("q has no word to search for"));
        }
        if words.len() > search::MAX_WORDS {
            return Err(Error::invalid(format!("q has more than {} words", search::MAX_WORDS)));
        }
        let limit = match req.limit {
            Some(0) => return Err(Error::invalid("limit must be at least 1")),
            Some(n) => n.min(search::MAX_LIMIT),
            None => search::DEFAULT_LIMIT,
        };
        if req.before.as_ref().is_some_and(|b| b.len() > 200) {
            return Err(Error::invalid("cursor is not one this server gave"));
        }
        if let Some(room) = req.room_id {
            match self.require_member(ctx, room).await {
                Ok(_) => {}
                // Section 12: a room the user is not a member of is
                // `forbidden`, whether or not it exists.
                Err(Error::NotMember | Error::NotFound(_)) => {
                    return Err(Error::forbidden("you are not a member of this room"));
                }
                Err(other) => return Err(other),
            }
        }
        let query = SearchQuery { user: ctx.user.id.clone(), words, room: req.room_id, limit, before: req.before };
        let mut page = self.store.search_messages(&query).await?;
        self.sign_all(page.results.iter_mut().map(|hit| &mut hit.message));
        Ok(page)
    }

    pub(crate) async fn search_users(&self, req: SearchUsers) -> Result<Reply> {
        // Visitors are refused before this, by `visitor_may`.
        let q = req.q.trim();
        if q.is_empty() {
            return Err(Error::invalid("q must not be empty"));
        }
        if q.chars().count() > 100 {
            return Err(Error::too_large("q is longer than 100 characters"));
        }
        let max = self.config.limits.max_search_results;
        let limit = req.limit.unwrap_or(20).clamp(1, max);
        Ok(Reply::Users { users: self.store.search_users(q, limit).await? })
    }
}

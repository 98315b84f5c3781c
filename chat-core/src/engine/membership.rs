//! Membership: who may be in a room, joining, leaving and inviting, and
//! the subscriptions of sessions to rooms that follow from it. This is
//! membership's one home: the rules ([`may_self_join`], the own-room quota),
//! the store's word on who is a member (checked on every command that needs
//! it, never a cache another process could have made stale), and the news of
//! a removal to every process ([`Inner::member_removed`]).

use super::cluster::Control;
use super::{Ctx, Inner};
use crate::bridge::BridgeEvent;
use crate::broker::{Audience, Topic};
use crate::command::{Invite, Joined, Reply};
use crate::error::{Error, Result};
use crate::event::{Event, RoomAdded, UserJoined, UserLeft};
use crate::id::{RoomId, UserId};
use crate::room::{Member, MemberReceipts, MemberRole, Room, RoomKind, Visibility};
use crate::store::{Joining, MemberLimits};
use crate::time::Timestamp;
use crate::user::User;

/// Whether a user who is not a member may join a room by themselves.
pub(crate) fn may_self_join(room: &Room, user: &User) -> bool {
    match room.kind {
        // Visitors are kept to their own support rooms.
        RoomKind::Group => room.visibility == Visibility::Public && !user.is_visitor(),
        RoomKind::Support => room.created_by == user.id || (user.is_support() && !user.is_visitor()),
        RoomKind::Direct => false,
    }
}

/// Whether a membership counts towards the user's own-room quota. A support
/// agent's support rooms do not: visitors open them, one each, and an agent
/// who answers thousands over the months must not be locked out by that.
fn counts_as_own(room: &Room, user: &User) -> bool {
    !(room.kind == RoomKind::Support && user.is_support() && room.created_by != user.id)
}

impl Inner {
    /// Fails with `not_found` when the room does not exist and `not_member`
    /// when the user is not in it, as the store has it: the hub's record of
    /// the session's rooms could be stale when another process changed the
    /// membership.
    pub(crate) async fn require_member(&self, ctx: &Ctx, room: RoomId) -> Result<Member> {
        match self.store.member(room, &ctx.user.id).await? {
            Some(m) => Ok(m),
            None => match self.store.room(room).await? {
                Some(_) => Err(Error::NotMember),
                None => Err(Error::NotFound("room")),
            },
        }
    }

    /// Whether the asking session joined the room here, as this process's
    /// hub remembers it: enough for what stores nothing (typing) or what the
    /// store checks again (a send's commit), never for a permission.
    pub(crate) fn joined_here(&self, ctx: &Ctx, room: RoomId) -> bool {
        ctx.session.is_some_and(|session| self.hub.is_subscribed(session, room))
    }

    /// The limits every new membership keeps, checked by the store.
    pub(crate) fn member_limits(&self) -> MemberLimits {
        let limits = &self.config.limits;
        MemberLimits { max_own_rooms: limits.max_rooms_per_user, max_members: limits.max_members_per_room }
    }

    /// Adds a member and announces it; `false` when they already were one.
    /// `self_joined` says whether the user joins by themselves (which counts
    /// towards their quota) or is added by someone else. `origin` is the
    /// bridge acting, if one is, so that it can skip the echo.
    pub(crate) async fn add_member(
        &self,
        room: &Room,
        user: &User,
        self_joined: bool,
        origin: Option<&str>,
    ) -> Result<bool> {
        let joining = Joining {
            role: MemberRole::Member,
            at: Timestamp::now(),
            self_joined: self_joined && counts_as_own(room, user),
        };
        let added = self.store.add_member(room.id, &user.id, joining, self.member_limits()).await?;
        if added {
            let audience =
                Audience::Room { room_id: room.id, except_session: None, except_user: Some(user.id.clone()) };
            self.publish(audience, Event::UserJoined(UserJoined { room_id: room.id, user: user.clone() })).await;
            self.notify_bridges(BridgeEvent::MemberAdded { room_id: room.id, user: user.clone() }, origin);
        }
        Ok(added)
    }

    /// Makes the user a member if the room's rules let them join by themselves.
    pub(crate) async fn ensure_member(&self, ctx: &Ctx, room_id: RoomId) -> Result<(Room, Member)> {
        let room = self.room_or_404(room_id).await?;
        if let Some(member) = self.store.member(room_id, &ctx.user.id).await? {
            return Ok((room, member));
        }
        if !may_self_join(&room, &ctx.user) {
            return Err(Error::forbidden(match room.kind {
                RoomKind::Direct => "direct rooms are for their two members only",
                RoomKind::Support => "support rooms are for their visitor and the support team",
                RoomKind::Group => "this room is private: a member must add you",
            }));
        }
        self.add_member(&room, &ctx.user, true, ctx.bridge.as_deref()).await?;
        let member = self.store.member(room_id, &ctx.user.id).await?.ok_or(Error::NotMember)?;
        Ok((room, member))
    }

    /// Joins a room (becoming a member when allowed) and subscribes the
    /// session to its events.
    pub(crate) async fn join_room(&self, ctx: &Ctx, room_id: RoomId) -> Result<Reply> {
        let (room, member) = self.ensure_member(ctx, room_id).await?;
        if let Some(session) = ctx.session {
            self.hub.subscribe(session, room_id);
            if let Some(cluster) = &self.cluster {
                // Once this returns, the room's messages from every process
                // reach this one, and its position here is read: whatever
                // is posted after the reading below is delivered.
                cluster.order.open(room_id);
                cluster.interest_changed(crate::broker::Topic::Room(room_id)).await;
            }
        }
        let members = self.store.members(room_id).await?;
        let ids: Vec<UserId> = members.iter().map(|m| m.user_id.clone()).collect();
        let mut users = self.store.users(&ids).await?;
        // Deleted users are no members, but their messages stay: the list
        // names them, as deleted, so that a client can show who wrote those.
        users.extend(self.store.deleted_members(room_id).await?.into_iter().map(User::deleted));
        let roles = members.iter().map(|m| (m.user_id.clone(), m.role)).collect();
        let receipts = members
            .into_iter()
            .map(|m| MemberReceipts { user_id: m.user_id, delivered_seq: m.delivered_seq, read_seq: m.read_seq })
            .collect();
        // Re-read the room so that last_seq is no older than the subscription.
        let room = self.store.room(room_id).await?.unwrap_or(room);
        if room.closed {
            self.hub.mark_closed(room_id);
        }
        Ok(Reply::Joined(Box::new(Joined {
            last_seq: room.last_seq,
            read_seq: member.read_seq,
            members: users,
            receipts,
            roles,
            room,
        })))
    }

    pub(crate) async fn leave_room(&self, ctx: &Ctx, room_id: RoomId) -> Result<Reply> {
        let room = self.room_or_404(room_id).await?;
        if room.kind == RoomKind::Direct {
            return Err(Error::forbidden("direct rooms cannot be left"));
        }
        if !self.store.remove_member(room_id, &ctx.user.id).await? {
            return Err(Error::NotMember);
        }
        self.member_removed(room_id, &ctx.user.id).await;
        self.announce_left(room_id, &ctx.user.id, ctx.bridge.as_deref()).await;
        Ok(Reply::empty())
    }

    /// After a user left or was removed from a room (and
    /// [`Inner::member_removed`]): their typing there ends, the other members
    /// get `user:left`, bridges `MemberRemoved`.
    pub(crate) async fn announce_left(&self, room_id: RoomId, user_id: &UserId, origin: Option<&str>) {
        if self.typing.stop(room_id, user_id) {
            self.publish_typing(room_id, user_id.clone(), false).await;
        }
        let audience = Audience::Room { room_id, except_session: None, except_user: Some(user_id.clone()) };
        self.publish(audience, Event::UserLeft(UserLeft { room_id, user_id: user_id.clone() })).await;
        self.notify_bridges(BridgeEvent::MemberRemoved { room_id, user_id: user_id.clone() }, origin);
    }

    /// After the store removed a member: their sessions here and on every
    /// other process leave the room's stream and get `room:removed`. Waits
    /// until the broker has the news, so that nothing posted after the
    /// caller's reply can reach those sessions: it is published to the
    /// room's topic after this.
    pub(crate) async fn member_removed(&self, room_id: RoomId, user_id: &UserId) {
        self.removed_from_rooms(user_id, &[room_id]).await;
    }

    /// [`Inner::member_removed`] for several rooms at once (a deleted user
    /// leaves all of theirs), waiting for the broker once.
    pub(crate) async fn removed_from_rooms(&self, user_id: &UserId, rooms: &[RoomId]) {
        let control = |room_id, notify| Control::MemberRemoved { room_id, user_id: user_id.clone(), notify };
        if let Some(cluster) = &self.cluster {
            for &room_id in rooms {
                cluster.publish_control(Topic::Room(room_id), &control(room_id, false));
                cluster.publish_control(Topic::User(user_id.clone()), &control(room_id, true));
            }
            if let Err(err) = cluster.flush(self.config.cluster.flush_timeout).await {
                // The store refuses the user's sends and reads already; only
                // their sessions elsewhere may see the room a little longer.
                tracing::warn!(rooms = rooms.len(), user = %user_id, error = %err, "a removal may reach other processes late");
            }
        }
        for &room_id in rooms {
            self.apply_control(control(room_id, true));
        }
    }

    pub(crate) async fn invite(&self, ctx: &Ctx, req: Invite) -> Result<Reply> {
        self.require_member(ctx, req.room_id).await?;
        let room = self.room_or_404(req.room_id).await?;
        let user = self.store.user(&req.user_id).await?.filter(|u| !u.deleted).ok_or(Error::NotFound("user"))?;
        if user.is_visitor() {
            return Err(Error::forbidden("visitors can only be in their own support room"));
        }
        match room.kind {
            RoomKind::Direct => return Err(Error::forbidden("direct rooms have exactly two members")),
            RoomKind::Support if !user.is_support() => {
                return Err(Error::forbidden("only support agents can be added to a support room"));
            }
            _ => {}
        }
        if self.store.member(room.id, &user.id).await?.is_some() {
            return Ok(Reply::empty());
        }
        self.take_room_action(ctx)?;
        if self.add_member(&room, &user, false, ctx.bridge.as_deref()).await? {
            let audience = Audience::Users { users: vec![user.id.clone()], except_session: None };
            self.publish(audience, Event::RoomAdded(RoomAdded { room })).await;
        }
        Ok(Reply::empty())
    }
}

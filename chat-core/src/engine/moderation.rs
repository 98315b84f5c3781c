//! Moderation and room settings: `room:update`, `room:remove` (with `ban`),
//! `room:unban`, `room:bans`, `room:set_role`, `room:mute` and `room:unmute`.
//!
//! Every permission is read from the store on each command (the acting
//! member's role, the target's role, the bans), never from this process's
//! memory, so that a change made through another process holds at once. A
//! removal reaches the removed user's sessions on every process through
//! [`Inner::member_removed`], as a `room:leave` does.

use super::{Ctx, Inner};
use crate::broker::Audience;
use crate::command::{BanEntry, MemberRef, MuteRoom, RemoveMember, Reply, SetRole, UpdateRoom};
use crate::config::Limits;
use crate::error::{Error, Result};
use crate::event::{Event, MemberUpdated, RoomMuted};
use crate::id::{RoomId, UserId};
use crate::room::{Ban, MUTED_FOREVER, Member, MemberRole, Room, RoomChanges, RoomKind};
use crate::time::Timestamp;
use crate::user::{User, check_visible};

/// The most bans `room:bans` lists.
pub(crate) const MAX_BANS_LISTED: u32 = 200;

/// A room name as `room:create` and `room:update` accept it: at most
/// [`Limits::max_room_name_chars`] characters, not blank, nothing hidden.
pub(crate) fn check_room_name(limits: &Limits, name: &str) -> Result<()> {
    // Not `validate_name`: its fixed cap for user names would override the
    // configured limit and turn `too_large` into `invalid`.
    if name.chars().count() > limits.max_room_name_chars {
        return Err(Error::too_large(format!("name is longer than {} characters", limits.max_room_name_chars)));
    }
    if name.trim().is_empty() {
        return Err(Error::invalid("name must not be blank"));
    }
    check_visible("name", name)
}

/// A topic: at most [`Limits::max_room_topic_chars`] characters; line
/// breaks and tabs are allowed, other hidden characters are not.
fn check_topic(limits: &Limits, topic: &str) -> Result<()> {
    if topic.chars().count() > limits.max_room_topic_chars {
        return Err(Error::too_large(format!("topic is longer than {} characters", limits.max_room_topic_chars)));
    }
    for line in topic.split(['\n', '\t']) {
        check_visible("topic", line)?;
    }
    Ok(())
}

/// Only group rooms are moderated: a direct room has its two members for
/// good, and a support room is its visitor's, answered and closed by the
/// support team.
fn require_group(room: &Room) -> Result<()> {
    match room.kind {
        RoomKind::Group => Ok(()),
        RoomKind::Direct => Err(Error::forbidden("direct rooms have no moderation or settings")),
        RoomKind::Support => Err(Error::forbidden("support rooms are claimed and closed, not moderated")),
    }
}

impl Inner {
    /// The acting user's membership, when they own or administer the room.
    async fn require_moderator(&self, ctx: &Ctx, room_id: RoomId) -> Result<(Room, Member)> {
        let member = self.require_member(ctx, room_id).await?;
        let room = self.room_or_404(room_id).await?;
        require_group(&room)?;
        if !member.role.is_admin() {
            return Err(Error::forbidden("only the room's owner and admins may do this"));
        }
        Ok((room, member))
    }

    pub(crate) async fn update_room(&self, ctx: &Ctx, req: UpdateRoom) -> Result<Reply> {
        let limits = &self.config.limits;
        // An empty (or blank) value clears the field; anything else must be
        // a valid value.
        let name = match req.name {
            Some(name) if name.trim().is_empty() => Some(None),
            Some(name) => {
                check_room_name(limits, &name)?;
                Some(Some(name))
            }
            None => None,
        };
        let topic = match req.topic {
            Some(topic) if topic.trim().is_empty() => Some(None),
            Some(topic) => {
                check_topic(limits, &topic)?;
                Some(Some(topic))
            }
            None => None,
        };
        let (room, _) = self.require_moderator(ctx, req.room_id).await?;
        let changes = RoomChanges { name, topic };
        let mut after = room.clone();
        changes.apply(&mut after);
        if after == room {
            return Ok(Reply::Room { room });
        }
        let room = self.store.update_room(req.room_id, &changes).await?.ok_or(Error::NotFound("room"))?;
        self.announce_room_update(ctx, &room, ctx.session).await;
        Ok(Reply::Room { room })
    }

    pub(crate) async fn remove_member_by(&self, ctx: &Ctx, req: RemoveMember) -> Result<Reply> {
        let (room, me) = self.require_moderator(ctx, req.room_id).await?;
        if req.user_id == ctx.user.id {
            return Err(Error::invalid("to leave a room, use room:leave"));
        }
        if self.store.user(&req.user_id).await?.is_none() {
            return Err(Error::NotFound("user"));
        }
        match self.store.member(room.id, &req.user_id).await? {
            Some(target) => check_outranks(&me, &target)?,
            None if !req.ban => return Err(Error::NotFound("member")),
            None => {}
        }
        let removed = if req.ban {
            let ban = Ban { user_id: req.user_id.clone(), banned_by: ctx.user.id.clone(), banned_at: Timestamp::now() };
            self.store.ban_member(room.id, &ban).await?
        } else {
            self.store.remove_member(room.id, &req.user_id).await?
        };
        if removed {
            self.member_removed(room.id, &req.user_id).await;
            self.announce_left(room.id, &req.user_id, ctx.bridge.as_deref()).await;
        } else if !req.ban {
            // Someone else removed them in the meantime.
            return Err(Error::NotFound("member"));
        }
        Ok(Reply::empty())
    }

    pub(crate) async fn unban(&self, ctx: &Ctx, req: MemberRef) -> Result<Reply> {
        let (room, _) = self.require_moderator(ctx, req.room_id).await?;
        // Lifting a ban that is not there is no error: the user may join.
        self.store.unban_member(room.id, &req.user_id).await?;
        Ok(Reply::empty())
    }

    pub(crate) async fn list_bans(&self, ctx: &Ctx, room_id: RoomId) -> Result<Reply> {
        let (room, _) = self.require_moderator(ctx, room_id).await?;
        let bans = self.store.bans(room.id, MAX_BANS_LISTED).await?;
        let ids: Vec<UserId> = bans.iter().map(|b| b.user_id.clone()).collect();
        let mut users: std::collections::HashMap<UserId, User> =
            self.store.users(&ids).await?.into_iter().map(|u| (u.id.clone(), u)).collect();
        let bans = bans
            .into_iter()
            .map(|ban| BanEntry {
                user: users
                    .remove(&ban.user_id)
                    .unwrap_or_else(|| User::new(ban.user_id.clone(), ban.user_id.as_str())),
                banned_by: ban.banned_by,
                banned_at: ban.banned_at,
            })
            .collect();
        Ok(Reply::Bans { bans })
    }

    pub(crate) async fn set_role(&self, ctx: &Ctx, req: SetRole) -> Result<Reply> {
        if req.role == MemberRole::Owner {
            return Err(Error::invalid("role must be admin or member: a room has one owner"));
        }
        let (room, me) = self.require_moderator(ctx, req.room_id).await?;
        if me.role != MemberRole::Owner {
            return Err(Error::forbidden("only the room's owner sets roles"));
        }
        let target = self.store.member(room.id, &req.user_id).await?.ok_or(Error::NotFound("member"))?;
        if target.role == MemberRole::Owner {
            return Err(Error::forbidden("the owner's role does not change"));
        }
        if target.role == req.role {
            return Ok(Reply::empty());
        }
        if !self.store.set_member_role(room.id, &req.user_id, req.role).await? {
            return Err(Error::NotFound("member"));
        }
        let audience = Audience::Room { room_id: room.id, except_session: None, except_user: None };
        let event = MemberUpdated { room_id: room.id, user_id: req.user_id, role: req.role };
        self.publish(audience, Event::MemberUpdated(event)).await;
        Ok(Reply::empty())
    }

    pub(crate) async fn mute(&self, ctx: &Ctx, req: MuteRoom) -> Result<Reply> {
        let until = match req.until {
            Some(until) if until <= Timestamp::now() => {
                return Err(Error::invalid("until must be in the future"));
            }
            Some(until) => until.min(MUTED_FOREVER),
            None => MUTED_FOREVER,
        };
        self.set_mute(ctx, req.room_id, Some(until)).await
    }

    pub(crate) async fn unmute(&self, ctx: &Ctx, room_id: RoomId) -> Result<Reply> {
        self.set_mute(ctx, room_id, None).await
    }

    async fn set_mute(&self, ctx: &Ctx, room_id: RoomId, until: Option<Timestamp>) -> Result<Reply> {
        self.require_member(ctx, room_id).await?;
        if !self.store.set_muted(room_id, &ctx.user.id, until).await? {
            return Err(Error::NotMember);
        }
        // The user's other sessions show the room muted too.
        let event = RoomMuted { room_id, muted: until.is_some(), muted_until: until.filter(|t| *t < MUTED_FOREVER) };
        let audience = Audience::Users { users: vec![ctx.user.id.clone()], except_session: ctx.session };
        self.publish(audience, Event::RoomMuted(event)).await;
        Ok(Reply::empty())
    }
}

/// Whether `me` may remove `target`: nobody removes the owner, and only the
/// owner removes an admin.
fn check_outranks(me: &Member, target: &Member) -> Result<()> {
    match target.role {
        MemberRole::Owner => Err(Error::forbidden("the room's owner cannot be removed")),
        MemberRole::Admin if me.role != MemberRole::Owner => {
            Err(Error::forbidden("only the room's owner removes an admin"))
        }
        _ => Ok(()),
    }
}

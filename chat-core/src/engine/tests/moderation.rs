//! Moderation and room settings (protocol section 4): who may do what, what
//! each member hears, and that a removal or a ban holds at once.

use super::*;
use crate::command::{MemberRef, MuteRoom, RemoveMember, SetRole, UpdateRoom};
use crate::room::MUTED_FOREVER;

fn update(room_id: RoomId, name: Option<&str>, topic: Option<&str>) -> Command {
    Command::RoomUpdate(UpdateRoom { room_id, name: name.map(Into::into), topic: topic.map(Into::into) })
}

fn remove(room_id: RoomId, user: &UserId, ban: bool) -> Command {
    Command::RoomRemove(RemoveMember { room_id, user_id: user.clone(), ban })
}

fn unban(room_id: RoomId, user: &UserId) -> Command {
    Command::RoomUnban(MemberRef { room_id, user_id: user.clone() })
}

fn set_role(room_id: RoomId, user: &UserId, role: MemberRole) -> Command {
    Command::RoomSetRole(SetRole { room_id, user_id: user.clone(), role })
}

fn mute(room_id: RoomId, until: Option<Timestamp>) -> Command {
    Command::RoomMute(MuteRoom { room_id, until })
}

fn room_updated(ev: Event) -> Room {
    match ev {
        Event::RoomUpdated(e) => e.room,
        other => panic!("expected room:updated, got {other:?}"),
    }
}

fn removed(ev: Event) -> RoomId {
    match ev {
        Event::RoomRemoved(e) => e.room_id,
        other => panic!("expected room:removed, got {other:?}"),
    }
}

fn left(ev: Event) -> (RoomId, UserId) {
    match ev {
        Event::UserLeft(e) => (e.room_id, e.user_id),
        other => panic!("expected user:left, got {other:?}"),
    }
}

fn roles_of(reply: Reply) -> Vec<(String, MemberRole)> {
    match reply {
        Reply::Joined(joined) => joined.roles.into_iter().map(|(u, r)| (u.to_string(), r)).collect(),
        other => panic!("expected a join reply, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn owners_and_admins_change_a_rooms_name_and_topic() {
    let engine = engine().await;
    let mut alice = connect(&engine, "alice").await;
    let mut bob = connect(&engine, "bob").await;
    let mut eve = connect(&engine, "eve").await;
    let room = alice.group(Visibility::Private, &[bob.id()]).await;
    alice.join(room.id).await;
    bob.join(room.id).await;
    alice.drain().await;
    bob.drain().await;

    assert_eq!(bob.err(update(room.id, None, Some("mine now"))).await, "forbidden");
    assert_eq!(eve.err(update(room.id, None, Some("x"))).await, "not_member");
    let after = room_of(alice.ok(update(room.id, Some("Launch"), Some("Ship it\non Friday"))).await);
    assert_eq!((after.name.as_deref(), after.topic.as_deref()), (Some("Launch"), Some("Ship it\non Friday")));
    assert_eq!(room_updated(bob.event().await), after, "the others hear of it");
    alice.quiet().await;
    assert_eq!(bob.join(room.id).await.room.topic.as_deref(), Some("Ship it\non Friday"));

    // The same values again change nothing and tell nobody.
    alice.ok(update(room.id, Some("Launch"), None)).await;
    bob.quiet().await;
    // An empty value clears.
    let after = room_of(alice.ok(update(room.id, None, Some(""))).await);
    assert_eq!((after.name.as_deref(), after.topic), (Some("Launch"), None));
    assert_eq!(room_updated(bob.event().await).topic, None);

    // An admin may, too, once the owner made them one.
    alice.ok(set_role(room.id, &bob.id(), MemberRole::Admin)).await;
    bob.drain().await;
    let after = room_of(bob.ok(update(room.id, None, Some("by bob"))).await);
    assert_eq!(after.topic.as_deref(), Some("by bob"));
    alice.drain().await;

    let long = "t".repeat(501);
    assert_eq!(alice.err(update(room.id, None, Some(&long))).await, "too_large");
    assert_eq!(alice.err(update(room.id, Some(&"n".repeat(101)), None)).await, "too_large");
    assert_eq!(alice.err(update(room.id, None, Some("a\u{202E}b"))).await, "invalid");
    assert_eq!(alice.err(update(RoomId::generate(), None, Some("x"))).await, "not_found");
    let direct = room_of(alice.ok(create(RoomKind::Direct, None, &[bob.id()])).await);
    assert_eq!(alice.err(update(direct.id, Some("ours"), None)).await, "forbidden");
}

#[tokio::test(start_paused = true)]
async fn a_removed_member_is_out_at_once_and_a_ban_keeps_them_out() {
    let engine = engine().await;
    let mut alice = connect(&engine, "alice").await;
    let mut carol = connect(&engine, "carol").await;
    let mut troll = connect(&engine, "troll").await;
    let mut troll_too = connect(&engine, "troll").await;
    let room = alice.group(Visibility::Public, &[]).await;
    for c in [&mut alice, &mut carol, &mut troll, &mut troll_too] {
        c.join(room.id).await;
    }
    for c in [&mut alice, &mut carol, &mut troll, &mut troll_too] {
        c.drain().await;
    }

    alice.ok(remove(room.id, &troll.id(), true)).await;
    assert_eq!(removed(troll.event().await), room.id);
    assert_eq!(removed(troll_too.event().await), room.id);
    assert_eq!(left(carol.event().await), (room.id, troll.id()));
    assert_eq!(left(alice.event().await), (room.id, troll.id()));
    carol.say(room.id, "after the ban").await;
    troll.quiet().await;
    troll_too.quiet().await;
    assert_eq!(troll.err(send(room.id, "t1", "let me in")).await, "not_member");
    assert_eq!(troll.err(join(room.id)).await, "forbidden", "a public room refuses a banned user");
    assert_eq!(carol.err(invite(room.id, &troll.id())).await, "forbidden", "nor may a member add them");
    let Reply::Rooms { rooms } = troll.ok(Command::RoomList).await else { panic!("expected rooms") };
    assert!(!rooms.iter().any(|s| s.room.id == room.id), "the room left the troll's list");

    let Reply::Bans { bans } = alice.ok(Command::RoomBans(RoomRef { room_id: room.id })).await else {
        panic!("expected bans")
    };
    assert_eq!(bans.len(), 1);
    assert_eq!((bans[0].user.id.as_str(), bans[0].banned_by.as_str()), ("troll", "alice"));
    assert_eq!(carol.err(Command::RoomBans(RoomRef { room_id: room.id })).await, "forbidden");

    alice.ok(unban(room.id, &troll.id())).await;
    alice.ok(unban(room.id, &troll.id())).await;
    troll.join(room.id).await;
    // Without a ban, a removed member may come back by themselves.
    alice.drain().await;
    alice.ok(remove(room.id, &troll.id(), false)).await;
    assert_eq!(removed(troll.event().await), room.id);
    troll.join(room.id).await;
}

#[tokio::test(start_paused = true)]
async fn only_the_owner_sets_roles_and_removes_admins() {
    let engine = engine().await;
    let mut owner = connect(&engine, "owner").await;
    let mut admin = connect(&engine, "admin").await;
    let mut other_admin = connect(&engine, "other-admin").await;
    let mut member = connect(&engine, "member").await;
    let _stranger = connect(&engine, "stranger").await;
    let ids = [admin.id(), other_admin.id(), member.id()];
    let room = owner.group(Visibility::Private, &ids).await;
    for c in [&mut owner, &mut admin, &mut other_admin, &mut member] {
        c.join(room.id).await;
        c.drain().await;
    }
    owner.ok(set_role(room.id, &admin.id(), MemberRole::Admin)).await;
    for c in [&mut owner, &mut admin, &mut other_admin, &mut member] {
        match c.event().await {
            Event::MemberUpdated(e) => {
                assert_eq!((e.room_id, e.user_id.as_str(), e.role), (room.id, "admin", MemberRole::Admin));
            }
            other => panic!("expected room:member_updated, got {other:?}"),
        }
    }
    owner.ok(set_role(room.id, &other_admin.id(), MemberRole::Admin)).await;
    let roles = roles_of(member.ok(join(room.id)).await);
    assert_eq!(
        roles,
        [
            ("admin".to_owned(), MemberRole::Admin),
            ("member".to_owned(), MemberRole::Member),
            ("other-admin".to_owned(), MemberRole::Admin),
            ("owner".to_owned(), MemberRole::Owner),
        ]
    );
    for c in [&mut owner, &mut admin, &mut other_admin, &mut member] {
        c.drain().await;
    }

    assert_eq!(admin.err(set_role(room.id, &member.id(), MemberRole::Admin)).await, "forbidden");
    assert_eq!(member.err(remove(room.id, &admin.id(), false)).await, "forbidden");
    assert_eq!(admin.err(remove(room.id, &other_admin.id(), false)).await, "forbidden");
    assert_eq!(admin.err(remove(room.id, &owner.id(), true)).await, "forbidden");
    assert_eq!(owner.err(set_role(room.id, &admin.id(), MemberRole::Owner)).await, "invalid");
    assert_eq!(owner.err(set_role(room.id, &owner.id(), MemberRole::Member)).await, "forbidden");
    assert_eq!(owner.err(set_role(room.id, &uid("stranger"), MemberRole::Admin)).await, "not_found");
    assert_eq!(owner.err(remove(room.id, &owner.id(), false)).await, "invalid");
    assert_eq!(owner.err(remove(room.id, &uid("stranger"), false)).await, "not_found");
    assert_eq!(owner.err(remove(room.id, &uid("nobody"), true)).await, "not_found");
    // A ban ahead of time is allowed.
    admin.ok(remove(room.id, &uid("stranger"), true)).await;

    // Admins remove members; the owner removes admins.
    admin.ok(remove(room.id, &member.id(), false)).await;
    assert_eq!(removed(member.event().await), room.id);
    assert_eq!(left(other_admin.event().await), (room.id, member.id()));
    owner.ok(remove(room.id, &other_admin.id(), false)).await;
    assert_eq!(removed(other_admin.event().await), room.id);
    // A demoted admin moderates no more.
    owner.ok(set_role(room.id, &admin.id(), MemberRole::Member)).await;
    assert_eq!(admin.err(update(room.id, None, Some("x"))).await, "forbidden");
}

#[tokio::test(start_paused = true)]
async fn a_mute_shows_in_the_room_list_and_on_the_users_other_sessions() {
    let engine = engine().await;
    let mut alice = connect(&engine, "alice").await;
    let mut bob = connect(&engine, "bob").await;
    let mut bob_too = connect(&engine, "bob").await;
    let mut eve = connect(&engine, "eve").await;
    let room = alice.group(Visibility::Private, &[bob.id()]).await;
    bob.drain().await;
    bob_too.drain().await;

    let until = Timestamp::now().plus(Duration::from_secs(3600));
    bob.ok(mute(room.id, Some(until))).await;
    match bob_too.event().await {
        Event::RoomMuted(e) => assert_eq!((e.room_id, e.muted, e.muted_until), (room.id, true, Some(until))),
        other => panic!("expected room:muted, got {other:?}"),
    }
    bob.quiet().await;
    alice.quiet().await;
    let s = bob.summary(room.id).await;
    assert_eq!((s.muted, s.muted_until), (true, Some(until)));
    let s = alice.summary(room.id).await;
    assert_eq!((s.muted, s.muted_until), (false, None), "a mute is the user's own");

    bob.ok(mute(room.id, None)).await;
    let s = bob_too.summary(room.id).await;
    assert_eq!((s.muted, s.muted_until), (true, None), "until room:unmute");
    bob.ok(Command::RoomUnmute(RoomRef { room_id: room.id })).await;
    let s = bob.summary(room.id).await;
    assert_eq!((s.muted, s.muted_until), (false, None));
    bob_too.drain().await;

    assert_eq!(bob.err(mute(room.id, Some(Timestamp::from_millis(1)))).await, "invalid");
    assert_eq!(eve.err(mute(room.id, None)).await, "not_member");
    // Any member mutes any room, a direct one too; a date past the sentinel is capped.
    let direct = room_of(alice.ok(create(RoomKind::Direct, None, &[bob.id()])).await);
    alice.ok(mute(direct.id, Some(Timestamp::from_millis(MUTED_FOREVER.as_millis() + 5)))).await;
    let s = alice.summary(direct.id).await;
    assert_eq!((s.muted, s.muted_until), (true, None));
}

#[tokio::test(start_paused = true)]
async fn visitors_and_support_rooms_are_not_moderated() {
    let engine = engine().await;
    let mut visitor = connect_as(&engine, visitor("v1")).await;
    let mut agent = connect_as(&engine, support("agent")).await;
    let room = room_of(visitor.ok(create(RoomKind::Support, None, &[])).await);
    visitor.say(room.id, "hello").await;
    agent.join(room.id).await;
    assert_eq!(visitor.err(remove(room.id, &agent.id(), true)).await, "forbidden");
    assert_eq!(visitor.err(update(room.id, None, Some("x"))).await, "forbidden");
    assert_eq!(visitor.err(mute(room.id, None)).await, "forbidden");
    assert_eq!(agent.err(remove(room.id, &visitor.id(), true)).await, "forbidden");
    assert_eq!(agent.err(update(room.id, None, Some("x"))).await, "forbidden");
    agent.ok(mute(room.id, None)).await;
}

//! Rooms over real sockets: create, join, leave, invite and list, who gets
//! which event, and the refusals a non-member meets.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::{TestServer, create_room, group_with, send_message, token};

const NO_SUCH_ROOM: &str = "01900000-0000-7000-8000-000000000000";

fn id(room: &Value) -> String {
    room["id"].as_str().expect("room.id").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_create_answers_the_room_and_tells_the_members() {
    let server = TestServer::start().await;
    server.create_user("carol", &[]).await;
    let mut bob = server.connect("bob").await;
    let mut ada = server.connect("ada").await;
    let mut ada_phone = server.connect("ada").await;
    let room = create_room(&mut ada, json!({"kind": "group", "name": "team", "members": ["bob", "bob", "ada"]})).await;
    assert_eq!(room["kind"], "group");
    assert_eq!(room["name"], "team");
    assert_eq!(room["visibility"], "private", "the default");
    assert_eq!(room["created_by"], "ada");
    assert_eq!(room["last_seq"], 0);
    assert!(room["created_at"].as_str().is_some_and(|t| t.ends_with('Z')), "{room}");
    assert_eq!(bob.expect_event("room:added").await["room"], room);
    assert_eq!(ada_phone.expect_event("room:added").await["room"], room, "the creator's other sessions");
    // The creating session is not told: the next room:added it gets is another room's.
    let direct = create_room(&mut bob, json!({"kind": "direct", "members": ["ada"]})).await;
    assert_eq!(ada.expect_event("room:added").await["room"]["id"], direct["id"]);
    let members: Vec<Value> = ada.ok("room:join", json!({"room_id": id(&room)})).await["members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|u| u["id"].clone())
        .collect();
    assert_eq!(members.len(), 2, "duplicates and the creator named again count once: {members:?}");

    let table = [
        (json!({"kind": "group", "members": ["nobody"]}), "not_found"),
        (json!({"kind": "direct", "members": []}), "invalid"),
        (json!({"kind": "direct", "members": ["bob", "carol"]}), "invalid"),
        (json!({"kind": "direct", "members": ["bob"], "visibility": "public"}), "invalid"),
        (json!({"kind": "support", "members": ["bob"]}), "invalid"),
        (json!({"kind": "castle"}), "invalid"),
        (json!({"kind": "group", "name": "n".repeat(101)}), "too_large"),
        (json!({"kind": "group", "name": "  "}), "invalid"),
    ];
    for (data, code) in table {
        assert_eq!(ada.fail("room:create", data.clone()).await, code, "{data}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_direct_room_is_made_once_and_cannot_be_left() {
    let server = TestServer::start().await;
    let mut carol = server.connect("carol").await;
    let mut bob = server.connect("bob").await;
    let mut ada = server.connect("ada").await;
    let first = create_room(&mut ada, json!({"kind": "direct", "members": ["bob"]})).await;
    assert_eq!(first["kind"], "direct");
    assert_eq!(first["visibility"], "private");
    let again = create_room(&mut ada, json!({"kind": "direct", "members": ["bob"]})).await;
    let reverse = create_room(&mut bob, json!({"kind": "direct", "members": ["ada"]})).await;
    assert_eq!(again["id"], first["id"]);
    assert_eq!(reverse["id"], first["id"]);
    // Bob was told once: the next room:added he gets is a later room's.
    assert_eq!(bob.expect_event("room:added").await["room"]["id"], first["id"]);
    let later = create_room(&mut ada, json!({"kind": "group", "members": ["bob"]})).await;
    assert_eq!(bob.expect_event("room:added").await["room"]["id"], later["id"]);
    let rooms = bob.ok("room:list", json!({})).await["rooms"].as_array().expect("rooms").len();
    assert_eq!(rooms, 2);

    let room = id(&first);
    assert_eq!(ada.fail("room:leave", json!({"room_id": room})).await, "forbidden");
    assert_eq!(ada.fail("room:invite", json!({"room_id": room, "user_id": "carol"})).await, "forbidden");
    assert_eq!(carol.fail("room:join", json!({"room_id": room})).await, "forbidden");
    // Both members can use it.
    ada.ok("room:join", json!({"room_id": room})).await;
    bob.ok("room:join", json!({"room_id": room})).await;
    let sent = send_message(&mut ada, &room, "d1", "hi bob").await;
    assert_eq!(bob.expect_event("message:new").await["message"], sent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joining_a_public_room_makes_a_member_and_tells_the_others() {
    let server = TestServer::start().await;
    let mut ada = server.connect("ada").await;
    let mut carol = server.connect("carol").await;
    let mut dave = server.connect("dave").await;
    let public = group_with(&mut ada, "public", &[]).await;
    send_message(&mut ada, &public, "p1", "first").await;
    let joined = carol.ok("room:join", json!({"room_id": public})).await;
    assert_eq!(joined["room"]["id"], public.as_str());
    assert_eq!(joined["room"]["visibility"], "public");
    assert_eq!(joined["last_seq"], 1);
    assert_eq!(joined["read_seq"], 0);
    let mut members: Vec<String> =
        joined["members"].as_array().expect("members").iter().map(|u| u["id"].as_str().unwrap_or("").into()).collect();
    members.sort();
    assert_eq!(members, ["ada", "carol"]);
    let event = ada.expect_event("user:joined").await;
    assert_eq!(event["room_id"], public.as_str());
    assert_eq!(event["user"]["id"], "carol");
    assert_eq!(event["user"]["name"], "carol");
    // Joining again (a second session) makes no new member.
    let mut carol_phone = server.connect("carol").await;
    carol_phone.ok("room:join", json!({"room_id": public})).await;
    dave.ok("room:join", json!({"room_id": public})).await;
    assert_eq!(ada.expect_event("user:joined").await["user"]["id"], "dave", "no second user:joined for carol");
    assert_eq!(carol.expect_event("user:joined").await["user"]["id"], "dave", "members that joined hear of others");

    let private = group_with(&mut ada, "private", &[]).await;
    assert_eq!(dave.fail("room:join", json!({"room_id": private})).await, "forbidden");
    assert_eq!(dave.fail("room:join", json!({"room_id": NO_SUCH_ROOM})).await, "not_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn support_rooms_admit_their_visitor_and_agents_only() {
    let server = TestServer::start().await;
    let (status, visitor) = server.post("/v1/visitor-sessions", &json!({"name": "Vic"}), None).await;
    assert_eq!(status, 201, "{visitor}");
    let mut vic = server.connect_token(visitor["token"].as_str().expect("token")).await;
    let mut agent = server.connect_token(&support::token_with_roles("agent", &["support"])).await;
    let mut bob = server.connect("bob").await;
    let room = create_room(&mut vic, json!({"kind": "support", "name": "help"})).await;
    assert_eq!(room["kind"], "support");
    assert_eq!(room["visibility"], "private");
    let room = id(&room);
    vic.ok("room:join", json!({"room_id": room})).await;
    assert_eq!(bob.fail("room:join", json!({"room_id": room})).await, "forbidden");
    assert_eq!(vic.fail("room:invite", json!({"room_id": room, "user_id": "bob"})).await, "forbidden");
    agent.ok("room:join", json!({"room_id": room})).await;
    assert_eq!(vic.expect_event("user:joined").await["user"]["id"], "agent");
    let sent = send_message(&mut vic, &room, "s1", "I need help").await;
    assert_eq!(agent.expect_event("message:new").await["message"]["id"], sent["id"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaving_a_room_tells_the_others_and_stops_its_events() {
    let server = TestServer::start().await;
    let mut ada = server.connect("ada").await;
    let mut bob = server.connect("bob").await;
    let mut bob_phone = server.connect("bob").await;
    let room = group_with(&mut ada, "public", &["bob"]).await;
    bob.ok("room:join", json!({"room_id": room})).await;
    bob_phone.ok("room:join", json!({"room_id": room})).await;
    let direct = create_room(&mut ada, json!({"kind": "direct", "members": ["bob"]})).await;
    let direct = id(&direct);
    ada.ok("room:join", json!({"room_id": direct})).await;
    bob_phone.ok("room:join", json!({"room_id": direct})).await;

    assert_eq!(bob.ok("room:leave", json!({"room_id": room})).await, json!({}));
    let left = ada.expect_event("user:left").await;
    assert_eq!(left, json!({"room_id": room, "user_id": "bob"}));
    // Every session of the leaver stops getting the room's events: the next
    // message:new on bob's phone is the direct room's.
    send_message(&mut ada, &room, "after-leave", "bob is gone").await;
    send_message(&mut ada, &direct, "d1", "still here?").await;
    assert_eq!(bob_phone.expect_event("message:new").await["message"]["room_id"], direct.as_str());
    let rooms = bob.ok("room:list", json!({})).await;
    assert_eq!(rooms["rooms"].as_array().expect("rooms").len(), 1, "{rooms}");
    assert_eq!(bob.fail("room:history", json!({"room_id": room})).await, "not_member");
    assert_eq!(bob.fail("room:leave", json!({"room_id": room})).await, "not_member");
    assert_eq!(bob.fail("room:leave", json!({"room_id": NO_SUCH_ROOM})).await, "not_found");
    // A public room can be joined again.
    bob.ok("room:join", json!({"room_id": room})).await;
    assert_eq!(ada.expect_event("user:joined").await["user"]["id"], "bob");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invite_makes_a_member_at_once() {
    let server = TestServer::start().await;
    server.create_user("erin", &[]).await;
    let mut ada = server.connect("ada").await;
    let mut carol = server.connect("carol").await;
    let mut carol_phone = server.connect("carol").await;
    let mut dave = server.connect("dave").await;
    let room = group_with(&mut ada, "private", &[]).await;
    assert_eq!(ada.ok("room:invite", json!({"room_id": room, "user_id": "carol"})).await, json!({}));
    for session in [&mut carol, &mut carol_phone] {
        let added = session.expect_event("room:added").await;
        assert_eq!(added["room"]["id"], room.as_str());
    }
    let joined = ada.expect_event("user:joined").await;
    assert_eq!(joined["room_id"], room.as_str());
    assert_eq!(joined["user"]["id"], "carol");
    // Carol is a member before she joins: she can read, and join a private room.
    carol.ok("room:history", json!({"room_id": room})).await;
    carol.ok("room:join", json!({"room_id": room})).await;
    // Inviting a member again changes nothing and announces nothing.
    ada.ok("room:invite", json!({"room_id": room, "user_id": "carol"})).await;
    // A user created by the admin API can be invited before connecting.
    ada.ok("room:invite", json!({"room_id": room, "user_id": "erin"})).await;
    assert_eq!(ada.expect_event("user:joined").await["user"]["id"], "erin", "no second user:joined for carol");
    assert_eq!(ada.fail("room:invite", json!({"room_id": room, "user_id": "nobody"})).await, "not_found");
    assert_eq!(dave.fail("room:invite", json!({"room_id": room, "user_id": "dave"})).await, "not_member");
    let erin = server.connect("erin").await;
    assert_eq!(erin.ready["rooms"][0]["id"], room.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_events_go_only_to_sessions_that_joined_the_room() {
    let server = TestServer::start().await;
    let mut ada = server.connect("ada").await;
    let mut bob_joined = server.connect("bob").await;
    let mut bob_idle = server.connect("bob").await;
    let room = group_with(&mut ada, "private", &["bob"]).await;
    bob_joined.ok("room:join", json!({"room_id": room})).await;
    let sent = send_message(&mut ada, &room, "m1", "hello").await;
    assert_eq!(bob_joined.expect_event("message:new").await["message"], sent);
    ada.ok("typing:start", json!({"room_id": room})).await;
    assert_eq!(bob_joined.expect_event("typing:user").await["typing"], true);
    // The idle session is a member's too, but it did not join: the first
    // event it gets after its room:added ones is a later room:added.
    let marker = create_room(&mut ada, json!({"kind": "direct", "members": ["bob"]})).await;
    assert_eq!(bob_idle.expect_event("room:added").await["room"]["id"], room.as_str());
    assert_eq!(bob_idle.expect_event("room:added").await["room"]["id"], marker["id"]);
    for kind in ["message:new", "typing:user", "user:joined"] {
        assert!(bob_idle.take_kept(kind).is_empty(), "{kind} reached a session that did not join");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_member_is_refused_every_room_command() {
    let server = TestServer::start().await;
    let mut ada = server.connect("ada").await;
    let mut eve = server.connect("eve").await;
    let room = group_with(&mut ada, "private", &[]).await;
    let message = send_message(&mut ada, &room, "m1", "secret").await;
    let message_id = message["id"].clone();
    let table = [
        ("room:join", json!({"room_id": room}), "forbidden"),
        ("message:send", json!({"room_id": room, "client_msg_id": "e1", "body": "hi"}), "not_member"),
        ("message:edit", json!({"room_id": room, "message_id": message_id, "body": "mine"}), "not_member"),
        ("message:delete", json!({"room_id": room, "message_id": message_id}), "not_member"),
        ("room:history", json!({"room_id": room}), "not_member"),
        ("typing:start", json!({"room_id": room}), "not_member"),
        ("typing:stop", json!({"room_id": room}), "not_member"),
        ("message:delivered", json!({"room_id": room, "up_to_seq": 1}), "not_member"),
        ("message:read", json!({"room_id": room, "up_to_seq": 1}), "not_member"),
        ("room:leave", json!({"room_id": room}), "not_member"),
        ("room:invite", json!({"room_id": room, "user_id": "eve"}), "not_member"),
    ];
    for (kind, data, code) in table {
        assert_eq!(eve.fail(kind, data).await, code, "{kind}");
    }
    // Nothing changed: one message, unedited, and no typing or receipt reached Ada.
    let history = ada.ok("room:history", json!({"room_id": room})).await;
    assert_eq!(history["messages"], json!([message]));
    ada.expect_no_event("typing:user", Duration::from_millis(200)).await;
    assert!(ada.take_kept("message:status").is_empty());
    assert!(ada.take_kept("user:joined").is_empty());

    let (status, body) = server.get(&format!("/v1/rooms/{room}/messages"), Some(&token("eve"))).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "not_member");
    // A room that does not exist is not_found rather than not_member.
    let data = json!({"room_id": NO_SUCH_ROOM, "client_msg_id": "x", "body": "hi"});
    assert_eq!(eve.fail("message:send", data).await, "not_found");
    assert_eq!(eve.fail("room:history", json!({"room_id": NO_SUCH_ROOM})).await, "not_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_and_member_limits_are_forbidden() {
    let server = TestServer::start_with(|c| {
        c.max_members_per_room = 2;
        c.max_rooms_per_user = 2;
    })
    .await;
    server.create_user("bob", &[]).await;
    server.create_user("carol", &[]).await;
    let mut ada = server.connect("ada").await;
    let room = group_with(&mut ada, "public", &["bob"]).await;
    assert_eq!(ada.fail("room:invite", json!({"room_id": room, "user_id": "carol"})).await, "forbidden");
    let mut carol = server.connect("carol").await;
    assert_eq!(carol.fail("room:join", json!({"room_id": room})).await, "forbidden", "the room is full");
    create_room(&mut ada, json!({"kind": "group"})).await;
    assert_eq!(ada.fail("room:create", json!({"kind": "group"})).await, "forbidden", "two rooms at most");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owners_and_admins_moderate_rooms_over_the_socket() {
    let server = TestServer::start().await;
    let mut owner = server.connect("owner").await;
    let mut admin = server.connect("admin").await;
    let mut troll = server.connect("troll").await;
    let mut troll_phone = server.connect("troll").await;
    let room = group_with(&mut owner, "public", &["admin"]).await;
    for client in [&mut admin, &mut troll, &mut troll_phone] {
        client.ok("room:join", json!({"room_id": room})).await;
    }

    // Roles come with the join; the owner names an admin, and every member hears it.
    let joined = owner.ok("room:join", json!({"room_id": room})).await;
    assert_eq!(joined["roles"], json!({"owner": "owner", "admin": "member", "troll": "member"}), "{joined}");
    assert_eq!(
        owner.ok("room:set_role", json!({"room_id": room, "user_id": "admin", "role": "admin"})).await,
        json!({})
    );
    let updated = troll.expect_event("room:member_updated").await;
    assert_eq!(updated, json!({"room_id": room, "user_id": "admin", "role": "admin"}));
    assert_eq!(
        admin.fail("room:set_role", json!({"room_id": room, "user_id": "troll", "role": "admin"})).await,
        "forbidden"
    );
    assert_eq!(
        owner.fail("room:set_role", json!({"room_id": room, "user_id": "troll", "role": "owner"})).await,
        "invalid"
    );
    assert_eq!(
        owner.fail("room:set_role", json!({"room_id": room, "user_id": "troll", "role": "king"})).await,
        "invalid"
    );

    // Settings: the admin sets a topic; the others get room:updated, the
    // sender only the reply.
    let reply = admin.ok("room:update", json!({"room_id": room, "topic": "Be kind"})).await;
    assert_eq!(reply["room"]["topic"], "Be kind");
    assert_eq!(reply["room"]["name"], "team", "the name is kept");
    let seen = owner.expect_event("room:updated").await;
    assert_eq!(seen["room"], reply["room"]);
    admin.expect_no_event("room:updated", Duration::from_millis(200)).await;
    assert_eq!(troll.fail("room:update", json!({"room_id": room, "name": "troll land"})).await, "forbidden");
    assert_eq!(admin.fail("room:update", json!({"room_id": room, "topic": 7})).await, "invalid");
    assert_eq!(admin.fail("room:update", json!({"room_id": room, "topic": "x".repeat(501)})).await, "too_large");
    let rooms = troll.ok("room:list", json!({})).await;
    assert_eq!(rooms["rooms"][0]["topic"], "Be kind", "{rooms}");

    // Removal with a ban: every session of the troll is out at once.
    assert_eq!(admin.fail("room:remove", json!({"room_id": room, "user_id": "owner"})).await, "forbidden");
    assert_eq!(admin.ok("room:remove", json!({"room_id": room, "user_id": "troll", "ban": true})).await, json!({}));
    for client in [&mut troll, &mut troll_phone] {
        assert_eq!(client.expect_event("room:removed").await, json!({"room_id": room}));
    }
    assert_eq!(owner.expect_event("user:left").await, json!({"room_id": room, "user_id": "troll"}));
    send_message(&mut owner, &room, "after-ban", "the troll is gone").await;
    troll_phone.expect_no_event("message:new", Duration::from_millis(300)).await;
    assert_eq!(
        troll.fail("message:send", json!({"room_id": room, "client_msg_id": "t", "body": "hi"})).await,
        "not_member"
    );
    assert_eq!(troll.fail("room:join", json!({"room_id": room})).await, "forbidden");
    assert_eq!(admin.fail("room:invite", json!({"room_id": room, "user_id": "troll"})).await, "forbidden");
    let bans = owner.ok("room:bans", json!({"room_id": room})).await;
    assert_eq!(bans["bans"][0]["user"]["id"], "troll", "{bans}");
    assert_eq!(bans["bans"][0]["banned_by"], "admin", "{bans}");
    assert!(bans["bans"][0]["banned_at"].as_str().is_some_and(|t| t.ends_with('Z')), "{bans}");
    assert_eq!(troll.fail("room:bans", json!({"room_id": room})).await, "not_member");
    assert_eq!(owner.ok("room:unban", json!({"room_id": room, "user_id": "troll"})).await, json!({}));
    troll.ok("room:join", json!({"room_id": room})).await;

    // A mute is the member's own, shown in their list and told to their other sessions.
    let until = "2999-01-01T00:00:00.000Z";
    assert_eq!(troll.ok("room:mute", json!({"room_id": room, "until": until})).await, json!({}));
    let muted = troll_phone.expect_event("room:muted").await;
    assert_eq!(muted, json!({"room_id": room, "muted": true, "muted_until": until}));
    let rooms = troll.ok("room:list", json!({})).await;
    assert_eq!((&rooms["rooms"][0]["muted"], &rooms["rooms"][0]["muted_until"]), (&json!(true), &json!(until)));
    let rooms = owner.ok("room:list", json!({})).await;
    assert!(rooms["rooms"][0].get("muted").is_none(), "{rooms}");
    assert_eq!(troll.fail("room:mute", json!({"room_id": room, "until": "tomorrow"})).await, "invalid");
    assert_eq!(troll.fail("room:mute", json!({"room_id": room, "until": "2001-01-01T00:00:00Z"})).await, "invalid");
    troll.ok("room:mute", json!({"room_id": room, "until": null})).await;
    let rooms = troll.ok("room:list", json!({})).await;
    assert_eq!(rooms["rooms"][0]["muted"], true);
    assert!(rooms["rooms"][0].get("muted_until").is_none(), "{rooms}");
    troll.ok("room:unmute", json!({"room_id": room})).await;
    let rooms = troll.ok("room:list", json!({})).await;
    assert!(rooms["rooms"][0].get("muted").is_none(), "{rooms}");
    assert_eq!(server.connect("nobody").await.fail("room:mute", json!({"room_id": room})).await, "not_member");
}

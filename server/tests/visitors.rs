//! What an anonymous visitor (`POST /v1/visitor-sessions`) may do, and what
//! support agents see however many visitors there are (issue #21, defects 2
//! and 3), over the real HTTP API and WebSocket.

mod support;

use serde_json::{Value, json};
use support::{Client, TestServer, token_with_roles};

/// A visitor session made the way the widget makes one.
async fn visitor(server: &TestServer) -> (Client, String) {
    let (status, body) = server.post("/v1/visitor-sessions", &json!({"name": "Vic"}), None).await;
    assert_eq!(status, 201, "{body}");
    let token = body["token"].as_str().expect("a token").to_owned();
    (server.connect_token(&token).await, token)
}

async fn open_support_room(client: &mut Client) -> String {
    let room = client.ok("room:create", json!({"kind": "support"})).await;
    let id = room["room"]["id"].as_str().expect("room id").to_owned();
    client.ok("room:join", json!({"room_id": id})).await;
    id
}

fn visitors_unlimited(config: &mut chat_server::Config) {
    config.visitor_sessions_per_minute = 10_000;
}

#[tokio::test]
async fn a_visitor_may_only_talk_in_its_own_support_room() {
    let server = TestServer::start_with(visitors_unlimited).await;
    let mut alice = server.connect("alice").await;
    let public = support::group_with(&mut alice, "public", &[]).await;
    let (mut vic, vic_token) = visitor(&server).await;
    assert_eq!(vic.ready["user"]["roles"], json!(["visitor"]));
    let vic_id = vic.user_id();

    let room = open_support_room(&mut vic).await;
    let again = vic.ok("room:create", json!({"kind": "support"})).await;
    assert_eq!(again["room"]["id"], room.as_str(), "one open support room per visitor");
    let mut agent = server.connect_token(&token_with_roles("agent", &["support"])).await;
    vic.ok("message:send", json!({"room_id": room, "client_msg_id": "v1", "body": "hello"})).await;
    agent.ok("room:join", json!({"room_id": room})).await;
    let answer = agent.ok("message:send", json!({"room_id": room, "client_msg_id": "a1", "body": "hi!"})).await;
    let answer_id = answer["message"]["id"].clone();

    let refused: [(&str, Value); 8] = [
        ("room:create", json!({"kind": "direct", "members": ["alice"]})),
        ("room:create", json!({"kind": "group", "name": "mine"})),
        ("room:join", json!({"room_id": public})),
        ("room:invite", json!({"room_id": room, "user_id": "alice"})),
        ("users:search", json!({"q": "a"})),
        ("users:online", json!({})),
        ("presence:update", json!({"status": "away"})),
        ("message:delete", json!({"room_id": room, "message_id": answer_id})),
    ];
    for (kind, data) in refused {
        assert_eq!(vic.fail(kind, data.clone()).await, "forbidden", "{kind} {data}");
    }
    let (status, body) = server.get("/v1/users/online", Some(&vic_token)).await;
    assert_eq!(status, 403, "{body}");
    let (status, body) = server.get("/v1/support/queue", Some(&vic_token)).await;
    assert_eq!(status, 403, "{body}");
    // Nobody can pull a visitor into another room.
    assert_eq!(alice.fail("room:create", json!({"kind": "direct", "members": [vic_id]})).await, "forbidden");
    assert_eq!(alice.fail("room:invite", json!({"room_id": public, "user_id": vic_id})).await, "forbidden");
    // The agent's answer is still there.
    let history = support::all_history(&mut vic, &room).await;
    assert_eq!(history.iter().filter(|m| m["deleted"] == false).count(), 2);
}

#[tokio::test]
async fn agents_see_every_waiting_customer_however_many_empty_rooms_exist() {
    let server = TestServer::start_with(visitors_unlimited).await;
    let (mut customer, _) = visitor(&server).await;
    let waiting = open_support_room(&mut customer).await;
    customer.ok("message:send", json!({"room_id": waiting, "client_msg_id": "c1", "body": "my order?"})).await;
    // One visitor opening rooms over and over gets its one room back; many
    // visitors each leave an empty one.
    let (mut spammer, _) = visitor(&server).await;
    for _ in 0..20 {
        spammer.ok("room:create", json!({"kind": "support"})).await;
    }
    for _ in 0..60 {
        let (mut spam, _) = visitor(&server).await;
        spam.ok("room:create", json!({"kind": "support"})).await;
    }

    let agent_token = token_with_roles("agent", &["support"]);
    let mut agent = server.connect_token(&agent_token).await;
    let ready_rooms: Vec<Value> = agent.ready["rooms"].as_array().expect("rooms").clone();
    assert_eq!(ready_rooms.len(), 1, "only the room with a message waits: {ready_rooms:?}");
    assert_eq!(ready_rooms[0]["id"], waiting.as_str());
    let listed = agent.ok("room:list", json!({})).await;
    assert_eq!(listed["rooms"].as_array().map(Vec::len), Some(1));

    let (status, page) = server.get("/v1/support/queue?limit=10", Some(&agent_token)).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["rooms"].as_array().map(Vec::len), Some(1));
    assert_eq!(page["rooms"][0]["room"]["id"], waiting.as_str());
    assert!(page["rooms"][0]["waiting_since"].is_string());
    assert_eq!(page["next"], Value::Null);
    let (status, body) = server.get("/v1/support/queue?cursor=bogus", Some(&agent_token)).await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = server.get("/v1/support/queue", Some(&support::token("alice"))).await;
    assert_eq!(status, 403, "{body}");
}

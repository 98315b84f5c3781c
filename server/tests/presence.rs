//! Presence, the online list and user search over real sockets.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::{TestServer, group_with, token};

/// The ids and statuses of a `users` list of `users:online`.
fn online(list: &Value) -> Vec<(String, String)> {
    list["users"]
        .as_array()
        .expect("users")
        .iter()
        .map(|u| {
            let id = u["user"]["id"].as_str().expect("user.id").to_owned();
            (id, u["status"].as_str().expect("status").to_owned())
        })
        .collect()
}

fn pair(id: &str, status: &str) -> (String, String) {
    (id.to_owned(), status.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_is_online_while_any_session_is_open() {
    let server = TestServer::start().await;
    let mut bob = server.connect("bob").await;
    let mut dave = server.connect("dave").await;
    let mut ada = server.connect("ada").await;
    group_with(&mut ada, "private", &["bob"]).await;
    let mut ada_phone = server.connect("ada").await;
    assert_eq!(
        online(&bob.ok("users:online", json!({})).await),
        [pair("ada", "online"), pair("bob", "online"), pair("dave", "online")]
    );

    // One of two sessions closing changes nothing: the next change Bob hears of is "away".
    // (Ada's coming online is announced in the background, to whoever shares a
    // room with her when it runs: it may reach Bob after the group was made.)
    ada.close().await;
    ada_phone.ok("presence:update", json!({"status": "away"})).await;
    let changed = bob.expect_event_where("presence:changed", |e| e["status"] != "online").await;
    assert_eq!(changed, json!({"user_id": "ada", "status": "away"}));
    let early = bob.take_kept("presence:changed");
    assert!(early.iter().all(|e| e["data"]["status"] == "online"), "{early:?}");
    assert_eq!(online(&bob.ok("users:online", json!({})).await)[0], pair("ada", "away"));
    ada_phone.ok("presence:update", json!({"status": "online"})).await;
    assert_eq!(bob.expect_event("presence:changed").await["status"], "online");

    // The last session closing makes Ada offline, with when she was last seen.
    ada_phone.close().await;
    let changed = bob.expect_event("presence:changed").await;
    assert_eq!(changed["user_id"], "ada");
    assert_eq!(changed["status"], "offline");
    assert!(changed["last_seen"].as_str().is_some_and(|t| t.ends_with('Z')), "{changed}");
    assert_eq!(online(&bob.ok("users:online", json!({})).await), [pair("bob", "online"), pair("dave", "online")]);
    // Coming back is announced too.
    let _ada = server.connect("ada").await;
    assert_eq!(bob.expect_event("presence:changed").await, json!({"user_id": "ada", "status": "online"}));
    // Dave shares no room with Ada and heard nothing of her.
    dave.expect_no_event("presence:changed", Duration::from_millis(300)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invisible_is_shown_as_offline_and_not_listed() {
    let server = TestServer::start().await;
    let mut bob = server.connect("bob").await;
    let mut ada = server.connect("ada").await;
    let room = group_with(&mut ada, "private", &["bob"]).await;
    bob.ok("room:join", json!({"room_id": room})).await;

    assert_eq!(ada.ok("presence:update", json!({"status": "invisible"})).await, json!({}));
    let changed = bob.expect_event("presence:changed").await;
    assert_eq!(changed["user_id"], "ada");
    assert_eq!(changed["status"], "offline");
    assert!(changed["last_seen"].is_string(), "{changed}");
    assert_eq!(online(&bob.ok("users:online", json!({})).await), [pair("bob", "online")]);
    assert_eq!(online(&ada.ok("users:online", json!({})).await), [pair("bob", "online")], "not even to herself");
    let (status, body) = server.get("/v1/users/online", Some(&token("bob"))).await;
    assert_eq!(status, 200);
    assert_eq!(online(&body), [pair("bob", "online")]);
    // An invisible user still chats.
    support::send_message(&mut ada, &room, "i1", "boo").await;
    assert_eq!(bob.expect_event("message:new").await["message"]["sender_id"], "ada");

    ada.ok("presence:update", json!({"status": "busy"})).await;
    assert_eq!(bob.expect_event("presence:changed").await, json!({"user_id": "ada", "status": "busy"}));
    assert_eq!(online(&bob.ok("users:online", json!({})).await), [pair("ada", "busy"), pair("bob", "online")]);
    assert_eq!(ada.fail("presence:update", json!({"status": "offline"})).await, "invalid");
    assert_eq!(ada.fail("presence:update", json!({"status": "sleeping"})).await, "invalid");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_search_finds_by_name_and_id() {
    let server = TestServer::start().await;
    for id in ["alice", "alina", "bob"] {
        server.create_user(id, &[]).await;
    }
    let (status, body) = server
        .post(
            "/v1/admin/users",
            &json!({"id": "u-42", "name": "Alfred Named", "avatar_url": "https://a.example/x.png"}),
            Some(support::API_KEY),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let mut client = server.connect("zed").await;
    let ids = |reply: &Value| -> Vec<String> {
        let mut ids: Vec<String> =
            reply["users"].as_array().expect("users").iter().map(|u| u["id"].as_str().unwrap_or("").into()).collect();
        ids.sort();
        ids
    };
    assert_eq!(ids(&client.ok("users:search", json!({"q": "ali"})).await), ["alice", "alina"]);
    assert_eq!(ids(&client.ok("users:search", json!({"q": "alfred"})).await), ["u-42"], "by name, any case");
    assert_eq!(ids(&client.ok("users:search", json!({"q": "u-4"})).await), ["u-42"], "by id");
    let found = client.ok("users:search", json!({"q": "u-42"})).await;
    assert_eq!(
        found["users"][0],
        json!({"id": "u-42", "name": "Alfred Named", "avatar_url": "https://a.example/x.png", "roles": []})
    );
    assert_eq!(
        client.ok("users:search", json!({"q": "al", "limit": 1})).await["users"].as_array().map(Vec::len),
        Some(1)
    );
    assert_eq!(ids(&client.ok("users:search", json!({"q": "nobody"})).await), Vec::<String>::new());
    assert_eq!(client.fail("users:search", json!({"q": "  "})).await, "invalid");
    assert_eq!(client.fail("users:search", json!({"q": "q".repeat(101)})).await, "too_large");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_answers_the_server_time() {
    let server = TestServer::start().await;
    let mut client = server.connect("ada").await;
    let pong = client.ok("ping", json!({})).await;
    let time = pong["server_time"].as_str().expect("server_time");
    let ready_time = client.ready["server_time"].as_str().expect("ready.server_time");
    assert!(time >= ready_time, "{time} before {ready_time}");
    assert!(time.ends_with('Z') && time.len() == "2024-01-01T00:00:00.000Z".len(), "{time}");
}

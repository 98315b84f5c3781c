//! The admin API for users and tokens (section 9 of the wire contract):
//! listing, reading and changing users, deactivation, token revocation and
//! deletion, each checked on a real server over HTTP and WebSocket. A
//! deactivation reaching a session on another process is checked in
//! `cluster.rs`, a revoked Socket.IO client in `socketio.rs`.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::{API_KEY, Client, TestServer, group_with, mint, now_secs, send_message, status_and_json, token};
use tokio_tungstenite::tungstenite;

/// An admin request: `method` on `path` with an optional JSON body and key.
async fn admin(server: &TestServer, method: &str, path: &str, body: Option<Value>, key: Option<&str>) -> (u16, Value) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("a method");
    let mut request = server.http.request(method, server.url(path));
    if let Some(body) = body {
        request = request.json(&body);
    }
    if let Some(key) = key {
        request = request.header("x-api-key", key);
    }
    status_and_json(request.send().await.expect("the request")).await
}

/// An admin request with the right key.
async fn call(server: &TestServer, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    admin(server, method, path, body, Some(API_KEY)).await
}

/// A token for `user` issued `ago` seconds ago, with the claims `extra`.
fn issued_ago(user: &str, ago: u64, extra: Value) -> String {
    let mut claims = json!({"sub": user, "iat": now_secs() - ago, "exp": now_secs() + 3600});
    if let (Value::Object(claims), Value::Object(extra)) = (&mut claims, extra) {
        claims.extend(extra);
    }
    mint(&claims)
}

/// A token made by the server's own token route.
async fn server_token(server: &TestServer, user: &str) -> String {
    let (status, body) = call(server, "POST", &format!("/v1/admin/users/{user}/tokens"), Some(json!({}))).await;
    assert_eq!(status, 200, "{body}");
    body["token"].as_str().expect("token").to_owned()
}

/// Tries to open a WebSocket session with `token`: the close code and
/// reason the server refused it with.
async fn refused(server: &TestServer, token: &str) -> (u16, String) {
    let mut client = Client::open(server.addr, "/v1/ws", &[("authorization", format!("Bearer {token}"))])
        .await
        .expect("the upgrade itself succeeds");
    match client.read(tokio::time::Instant::now() + support::WAIT).await {
        support::Read::Closed(Some(close)) => close,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// `GET /v1/users/online` with `token`: its status and error code, if any.
async fn http_with(server: &TestServer, token: &str) -> (u16, Value) {
    let (status, body) = server.get("/v1/users/online", Some(token)).await;
    (status, body["error"]["code"].clone())
}

fn ids(users: &Value) -> Vec<&str> {
    users.as_array().expect("a list").iter().map(|u| u["id"].as_str().expect("id")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_user_route_needs_the_api_key() {
    let server = TestServer::start().await;
    server.create_user("ada", &[]).await;
    let routes: &[(&str, &str, Option<Value>)] = &[
        ("GET", "/v1/admin/users", None),
        ("GET", "/v1/admin/users/ada", None),
        ("PATCH", "/v1/admin/users/ada", Some(json!({"name": "X"}))),
        ("POST", "/v1/admin/users/ada/deactivate", None),
        ("POST", "/v1/admin/users/ada/reactivate", None),
        ("POST", "/v1/admin/users/ada/revoke-tokens", None),
        ("DELETE", "/v1/admin/users/ada", None),
    ];
    for (method, path, body) in routes {
        for key in [None, Some("wrong-key")] {
            let (status, answer) = admin(&server, method, path, body.clone(), key).await;
            assert_eq!(status, 401, "{method} {path} with {key:?}: {answer}");
            assert_eq!(answer["error"]["code"], "unauthorized", "{method} {path}");
            assert!(answer["error"]["message"].is_string());
        }
    }
    // Nothing of it happened.
    let (status, body) = call(&server, "GET", "/v1/admin/users/ada", None).await;
    assert_eq!((status, body["name"].as_str(), body["active"].as_bool()), (200, Some("ada"), Some(true)));
    // Unknown users are 404 on every route, ids that cannot be ids 400.
    for (method, path, body) in routes.iter().skip(1) {
        let path = path.replace("/ada", "/nobody");
        let (status, answer) = call(&server, method, &path, body.clone()).await;
        assert_eq!((status, &answer["error"]["code"]), (404, &json!("not_found")), "{method} {path}: {answer}");
    }
    let long = "x".repeat(129);
    let (status, answer) = call(&server, "GET", &format!("/v1/admin/users/{long}"), None).await;
    assert_eq!((status, &answer["error"]["code"]), (400, &json!("invalid")), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_user_list_pages_by_id_filters_and_caps_its_limit() {
    let server = TestServer::start().await;
    for i in 0..205 {
        let (status, body) = server
            .post("/v1/admin/users", &json!({"id": format!("u{i:03}"), "name": format!("User {i}")}), Some(API_KEY))
            .await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, page) = call(&server, "GET", "/v1/admin/users", None).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["users"].as_array().map(Vec::len), Some(50), "50 by default");
    assert_eq!(page["next"], "u049");
    let first = &page["users"][0];
    assert_eq!(
        (first["id"].as_str(), first["name"].as_str(), first["active"].as_bool()),
        (Some("u000"), Some("User 0"), Some(true))
    );
    assert!(first["created_at"].is_string() && first["roles"] == json!([]), "{first}");
    assert!(first.get("last_seen").is_none(), "never connected: {first}");

    let (_, capped) = call(&server, "GET", "/v1/admin/users?limit=500", None).await;
    assert_eq!(capped["users"].as_array().map(Vec::len), Some(200), "a limit above 200 is capped");
    let (_, rest) = call(&server, "GET", "/v1/admin/users?limit=500&cursor=u199", None).await;
    assert_eq!(ids(&rest["users"]), ["u200", "u201", "u202", "u203", "u204"]);
    assert!(rest.get("next").is_none(), "the last page has no next: {rest}");
    // Walking every page visits every user once.
    let mut seen = Vec::new();
    let mut cursor = String::new();
    loop {
        let (_, page) = call(&server, "GET", &format!("/v1/admin/users?limit=64&cursor={cursor}"), None).await;
        seen.extend(ids(&page["users"]).into_iter().map(str::to_owned));
        match page["next"].as_str() {
            Some(next) => cursor = next.to_owned(),
            None => break,
        }
    }
    assert_eq!(seen, (0..205).map(|i| format!("u{i:03}")).collect::<Vec<_>>());

    let (_, found) = call(&server, "GET", "/v1/admin/users?q=USER%2020", None).await;
    assert_eq!(ids(&found["users"]), ["u020", "u200", "u201", "u202", "u203", "u204"], "q matches names, any case");
    let (_, found) = call(&server, "GET", "/v1/admin/users?q=U19&limit=3", None).await;
    assert_eq!(ids(&found["users"]), ["u190", "u191", "u192"], "and ids");
    assert_eq!(found["next"], "u192");

    for bad in ["limit=0", "limit=-1", "limit=many", &format!("cursor={}", "x".repeat(200))] {
        let (status, body) = call(&server, "GET", &format!("/v1/admin/users?{bad}"), None).await;
        assert_eq!((status, &body["error"]["code"]), (400, &json!("invalid")), "{bad}: {body}");
    }

    // Connecting makes a user, and sets last_seen.
    let _ada = server.connect("ada").await;
    // Written behind the session's opening, within moments.
    let mut ada = serde_json::Value::Null;
    for _ in 0..100 {
        ada = call(&server, "GET", "/v1/admin/users/ada", None).await.1;
        if ada["last_seen"].is_string() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(ada["last_seen"].is_string(), "{ada}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patch_changes_a_user_and_wins_over_older_tokens() {
    let server = TestServer::start().await;
    let old = issued_ago("ada", 5, json!({"name": "Ada", "roles": ["support"]}));
    let mut session = server.connect_token(&old).await;
    assert_eq!(session.ready["user"]["roles"], json!(["support"]));

    let (status, body) = call(&server, "PATCH", "/v1/admin/users/ada", Some(json!({"name": "Ada Lovelace"}))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["name"], "Ada Lovelace");
    assert_eq!(body["roles"], json!(["support"]), "fields not named are kept");
    assert_eq!(body["active"], true);
    session.ok("ping", json!({})).await;

    let avatar = "https://example.invalid/ada.png";
    let (status, body) = call(&server, "PATCH", "/v1/admin/users/ada", Some(json!({"avatar_url": avatar}))).await;
    assert_eq!((status, body["avatar_url"].as_str()), (200, Some(avatar)), "{body}");
    let (_, body) = call(&server, "PATCH", "/v1/admin/users/ada", Some(json!({"avatar_url": null}))).await;
    assert!(body.get("avatar_url").is_none(), "null removes the avatar: {body}");

    // New roles end the sessions, so that none goes on with the old ones.
    let (status, body) = call(&server, "PATCH", "/v1/admin/users/ada", Some(json!({"roles": []}))).await;
    assert_eq!((status, &body["roles"]), (200, &json!([])), "{body}");
    session.expect_close(4401).await;
    // The old token's claims no longer undo the change...
    let again = server.connect_token(&old).await;
    assert_eq!(
        (again.ready["user"]["name"].as_str(), &again.ready["user"]["roles"]),
        (Some("Ada Lovelace"), &json!([]))
    );
    let (status, body) = server.get("/v1/support/queue", Some(&old)).await;
    assert_eq!(status, 403, "nor give roles over HTTP: {body}");
    // ...a token made by the server now carries the new profile...
    let fresh = server_token(&server, "ada").await;
    let made = server.connect_token(&fresh).await;
    assert_eq!(made.ready["user"]["name"], "Ada Lovelace");
    // ...and a token issued after the change applies its claims, as before.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let newer = issued_ago("ada", 0, json!({"name": "Ada L.", "roles": ["support"]}));
    let newest = server.connect_token(&newer).await;
    assert_eq!(
        (newest.ready["user"]["name"].as_str(), &newest.ready["user"]["roles"]),
        (Some("Ada L."), &json!(["support"]))
    );

    for bad in [
        json!({"name": " "}),
        json!({"name": "a\u{202E}b"}),
        json!({"name": "x".repeat(101)}),
        json!({"avatar_url": "javascript:alert(1)"}),
        json!({"roles": ["not a role"]}),
        json!({"active": false}),
        json!(["name"]),
    ] {
        let (status, body) = call(&server, "PATCH", "/v1/admin/users/ada", Some(bad.clone())).await;
        assert!(status == 400 || status == 413, "{bad}: {status} {body}");
    }
    let (status, body) = call(&server, "PATCH", "/v1/admin/users/nobody", Some(json!({"name": "N"}))).await;
    assert_eq!((status, &body["error"]["code"]), (404, &json!("not_found")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deactivation_closes_sessions_and_refuses_tokens_until_reactivated() {
    let server = TestServer::start().await;
    server.create_user("ada", &[]).await;
    let ada_token = server_token(&server, "ada").await;
    let mut first = server.connect_token(&ada_token).await;
    let mut second = server.connect("ada").await;
    let mut bob = server.connect("bob").await;

    let (status, body) = call(&server, "POST", "/v1/admin/users/ada/deactivate", None).await;
    assert_eq!((status, body), (204, Value::Null));
    first.expect_close(4401).await;
    second.expect_close(4401).await;
    bob.ok("ping", json!({})).await;
    for token in [ada_token.clone(), token("ada")] {
        assert_eq!(refused(&server, &token).await, (4401, "the user is deactivated".to_owned()));
        assert_eq!(http_with(&server, &token).await, (401, json!("unauthorized")));
    }
    let (_, listed) = call(&server, "GET", "/v1/admin/users/ada", None).await;
    assert_eq!(listed["active"], false, "{listed}");
    let (status, body) = call(&server, "POST", "/v1/admin/users/ada/tokens", Some(json!({}))).await;
    assert_eq!((status, &body["error"]["code"]), (409, &json!("conflict")), "no tokens for a deactivated user");

    let (status, _) = call(&server, "POST", "/v1/admin/users/ada/reactivate", None).await;
    assert_eq!(status, 204);
    let mut back = server.connect_token(&ada_token).await;
    back.ok("ping", json!({})).await;
    assert_eq!(http_with(&server, &ada_token).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_refuses_older_tokens_and_accepts_newer_ones() {
    let server = TestServer::start().await;
    let old = issued_ago("ada", 5, json!({}));
    let no_iat = token("ada");
    let mut session = server.connect_token(&old).await;
    let mut other = server.connect_token(&no_iat).await;

    let (status, body) = call(&server, "POST", "/v1/admin/users/ada/revoke-tokens", None).await;
    assert_eq!((status, body), (204, Value::Null));
    session.expect_close(4401).await;
    other.expect_close(4401).await;
    for token in [&old, &no_iat] {
        assert_eq!(refused(&server, token).await, (4401, "token revoked".to_owned()));
        assert_eq!(http_with(&server, token).await, (401, json!("unauthorized")));
    }
    // A token the server makes right away is issued after the revocation's
    // second, and accepted.
    let fresh = server_token(&server, "ada").await;
    let mut back = server.connect_token(&fresh).await;
    back.ok("ping", json!({})).await;
    assert_eq!(http_with(&server, &fresh).await.0, 200);
    let (_, account) = call(&server, "GET", "/v1/admin/users/ada", None).await;
    assert_eq!(account["active"], true, "revoking is not deactivating: {account}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_user_leaves_rooms_keeps_messages_and_is_refused_for_good() {
    let server = TestServer::start().await;
    let mut ada = server.connect("ada").await;
    let mut bob = server.connect("bob").await;
    let room = group_with(&mut ada, "private", &["bob"]).await;
    bob.ok("room:join", json!({"room_id": room})).await;
    let sent = send_message(&mut ada, &room, "a-1", "remember me").await;
    bob.expect_event("message:new").await;

    let (status, body) = call(&server, "DELETE", "/v1/admin/users/ada", None).await;
    assert_eq!((status, body), (204, Value::Null));
    ada.expect_close(4401).await;
    let left = bob.expect_event("user:left").await;
    assert_eq!(left, json!({"room_id": room, "user_id": "ada"}));

    let history = bob.ok("room:history", json!({"room_id": room})).await;
    assert_eq!(history["messages"][0]["id"], sent["id"]);
    assert_eq!(history["messages"][0]["sender_id"], "ada", "her messages keep their sender");
    assert_eq!(history["messages"][0]["body"], "remember me");
    let joined = bob.ok("room:join", json!({"room_id": room})).await;
    assert_eq!(
        joined["members"],
        json!([{"id": "bob", "name": "bob", "roles": []}, {"id": "ada", "name": "Deleted user", "deleted": true}]),
        "she is named, as deleted, after the members"
    );
    assert_eq!(joined["receipts"].as_array().map(Vec::len), Some(1), "but is no member");

    let (status, body) = call(&server, "GET", "/v1/admin/users/ada", None).await;
    assert_eq!((status, &body["error"]["code"]), (404, &json!("not_found")));
    let (_, list) = call(&server, "GET", "/v1/admin/users", None).await;
    assert_eq!(ids(&list["users"]), ["bob"], "deleted users are not listed");
    let found = bob.ok("users:search", json!({"q": "ada"})).await;
    assert_eq!(found["users"], json!([]));
    assert_eq!(bob.fail("room:invite", json!({"room_id": room, "user_id": "ada"})).await, "not_found");

    // Her tokens are refused for good; nothing makes her again.
    assert_eq!(refused(&server, &token("ada")).await, (4401, "the user was deleted".to_owned()));
    assert_eq!(http_with(&server, &token("ada")).await, (401, json!("unauthorized")));
    let (status, body) = server.post("/v1/admin/users", &json!({"id": "ada", "name": "Ada"}), Some(API_KEY)).await;
    assert_eq!((status, &body["error"]["code"]), (409, &json!("conflict")), "{body}");
    for (method, path) in [
        ("DELETE", "/v1/admin/users/ada"),
        ("POST", "/v1/admin/users/ada/reactivate"),
        ("POST", "/v1/admin/users/ada/tokens"),
    ] {
        let (status, _) = call(&server, method, path, Some(json!({}))).await;
        assert_eq!(status, 404, "{method} {path}");
    }
}

/// A session that opens with a token of a user who is deleted at the same
/// moment never outlives the deletion: it is refused, or ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_opening_during_a_deactivation_do_not_outlive_it() {
    let server = TestServer::start().await;
    server.create_user("ada", &[]).await;
    let mut opening = Vec::new();
    for _ in 0..8 {
        let addr = server.addr;
        opening.push(tokio::spawn(async move {
            let headers = [("authorization", format!("Bearer {}", token("ada")))];
            let mut client = Client::open(addr, "/v1/ws", &headers).await?;
            let first = client.read(tokio::time::Instant::now() + support::WAIT).await;
            Ok::<_, tungstenite::Error>((client, first))
        }));
    }
    let (status, _) = call(&server, "POST", "/v1/admin/users/ada/deactivate", None).await;
    assert_eq!(status, 204);
    for task in opening {
        let (mut client, first) = task.await.expect("the task").expect("the upgrade");
        match first {
            support::Read::Frame(ready) => {
                assert_eq!(ready["type"], "ready");
                client.expect_close(4401).await;
            }
            support::Read::Closed(Some((code, _))) => assert_eq!(code, 4401),
            other => panic!("{other:?}"),
        }
    }
    // Each refused or ended session is gone from the server too.
    let deadline = tokio::time::Instant::now() + support::WAIT;
    loop {
        let (_, body) = server.get("/health", None).await;
        if body["connections"] == 0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "sessions left: {body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

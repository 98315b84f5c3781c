//! Authentication over real sockets: the three ways to present a token, the
//! close codes of bad or late credentials, expiry while open, and the origin
//! policy of browser upgrades.

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::{Client, ServerProcess, TestServer, mint, mint_with, now_secs, token, unsigned_token};
use tokio_tungstenite::tungstenite;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_way_of_presenting_a_token_gets_ready() {
    let server = TestServer::start().await;
    for (way, user) in [("header", "hana"), ("query", "quinn"), ("frame", "fred")] {
        let t = token(user);
        let mut client = match way {
            "header" => Client::open(server.addr, "/v1/ws", &[("authorization", format!("Bearer {t}"))]).await,
            "query" => Client::open(server.addr, &format!("/v1/ws?token={t}"), &[]).await,
            _ => Client::open(server.addr, "/v1/ws", &[]).await,
        }
        .expect("upgrade");
        if way == "frame" {
            client.send_text(json!({"type": "auth", "data": {"token": t}}).to_string()).await;
        }
        let ready = client.wait_ready().await.clone();
        assert!(ready["session_id"].as_str().is_some_and(|s| !s.is_empty()), "{way}: {ready}");
        assert_eq!(ready["user"]["id"], user, "{way}");
        assert_eq!(ready["user"]["name"], user, "{way}");
        assert!(ready["user"]["roles"].is_array(), "{way}: {ready}");
        assert_eq!(ready["rooms"], json!([]), "{way}");
        let time = ready["server_time"].as_str().expect("server_time");
        assert!(time.ends_with('Z') && time.contains('T'), "{way}: RFC3339 UTC: {time}");
        // The session works.
        let pong = client.ok("ping", json!({})).await;
        assert!(pong["server_time"].is_string(), "{way}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_lists_the_rooms_of_the_user() {
    let server = TestServer::start().await;
    let bob = server.connect("bob").await;
    let mut ada = server.connect("ada").await;
    let room = support::group_with(&mut ada, "private", &["bob"]).await;
    support::send_message(&mut ada, &room, "m1", "hello").await;
    bob.close().await;
    let bob = server.connect("bob").await;
    let rooms = bob.ready["rooms"].as_array().expect("rooms");
    assert_eq!(rooms.len(), 1, "{rooms:?}");
    assert_eq!(rooms[0]["id"], room.as_str());
    assert_eq!(rooms[0]["last_seq"], 1);
    assert_eq!(rooms[0]["unread"], 1);
    assert_eq!(rooms[0]["read_seq"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_and_no_auth_frame_closes_4408() {
    let server = TestServer::start_with(|c| c.auth_timeout_s = 1).await;
    let started = Instant::now();
    let mut client = Client::open(server.addr, "/v1/ws", &[]).await.expect("upgrade");
    client.expect_close(4408).await;
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(900), "closed after {elapsed:?}, before the 1 s limit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_close_4401() {
    let server = TestServer::start().await;
    let exp = now_secs() + 3600;
    let table = [
        ("malformed", "not-a-jwt".to_owned()),
        ("expired", mint(&json!({"sub": "ada", "exp": now_secs() - 3600}))),
        ("forged", mint_with(&json!({"sub": "ada", "exp": exp}), b"another-secret-another-secret-another")),
        ("alg none", unsigned_token("ada")),
        ("no exp", mint(&json!({"sub": "ada"}))),
        ("no sub", mint(&json!({"exp": exp}))),
        ("sub too long", mint(&json!({"sub": "x".repeat(129), "exp": exp}))),
        (
            "HS384",
            jsonwebtoken::encode(
                &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS384),
                &json!({"sub": "ada", "exp": exp}),
                &jsonwebtoken::EncodingKey::from_secret(support::SECRET.as_bytes()),
            )
            .expect("encodes"),
        ),
    ];
    for (what, bad) in table {
        for way in ["header", "frame"] {
            let mut client = if way == "header" {
                Client::open(server.addr, "/v1/ws", &[("authorization", format!("Bearer {bad}"))]).await
            } else {
                Client::open(server.addr, "/v1/ws", &[]).await
            }
            .expect("upgrade");
            if way == "frame" {
                client.send_text(json!({"type": "auth", "data": {"token": bad}}).to_string()).await;
            }
            let reason = client.expect_close(4401).await;
            assert!(!reason.is_empty(), "{what} by {way}: the reason says why");
        }
    }
    // A first frame that is not an auth frame is refused too.
    let mut client = Client::open(server.addr, "/v1/ws", &[]).await.expect("upgrade");
    client.send_text(json!({"type": "ping", "ref": 1}).to_string()).await;
    client.expect_close(4401).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn algorithm_confusion_is_refused_by_an_rs256_server() {
    let keys = concat!(env!("CARGO_MANIFEST_DIR"), "/../chat-transport-ws/tests/keys");
    let public = std::path::PathBuf::from(format!("{keys}/rsa_public.pem"));
    let private_pem = std::fs::read(format!("{keys}/rsa_private.pem")).expect("private key");
    let public_pem = std::fs::read(&public).expect("public key");
    let server = TestServer::start_with(|c| {
        c.jwt_algorithm = "RS256".into();
        c.jwt_secret = None;
        c.jwt_public_key_file = Some(public);
    })
    .await;
    let claims = json!({"sub": "ada", "exp": now_secs() + 3600});
    let rs256 = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_rsa_pem(&private_pem).expect("RSA key"),
    )
    .expect("encodes");
    let client = server.connect_token(&rs256).await;
    assert_eq!(client.user_id(), "ada");
    // An HS256 token whose "secret" is the server's public key.
    let confused = mint_with(&claims, &public_pem);
    let mut client =
        Client::open(server.addr, "/v1/ws", &[("authorization", format!("Bearer {confused}"))]).await.expect("upgrade");
    client.expect_close(4401).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_expiring_while_open_closes_4401() {
    let server = TestServer::start().await;
    let short = mint(&json!({"sub": "ada", "exp": now_secs() + 1}));
    let started = Instant::now();
    let mut client = server.connect_token(&short).await;
    // Still open past the expiry itself, within the leeway.
    tokio::time::sleep(Duration::from_secs(3)).await;
    client.ok("ping", json!({})).await;
    let reason = client.expect_close_within(4401, Duration::from_secs(6)).await;
    let elapsed = started.elapsed();
    assert!(elapsed <= Duration::from_secs(8), "closed after {elapsed:?}");
    assert!(elapsed >= Duration::from_secs(4), "closed after {elapsed:?}, before expiry plus leeway");
    assert!(reason.contains("expired"), "{reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_auth_frame_is_an_error_and_the_session_goes_on() {
    let server = TestServer::start().await;
    let mut client = server.connect("ada").await;
    client.send_text(json!({"type": "auth", "data": {"token": token("eve")}}).to_string()).await;
    let error = client.expect_frame("error").await;
    assert_eq!(error["error"]["code"], "invalid", "{error}");
    client.ok("ping", json!({})).await;
    assert_eq!(client.user_id(), "ada");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_connections_of_one_user_close_4429() {
    let server = TestServer::start_with(|c| c.max_connections_per_user = 1).await;
    let mut first = server.connect("ada").await;
    let mut second = Client::open(server.addr, "/v1/ws", &[("authorization", format!("Bearer {}", token("ada")))])
        .await
        .expect("upgrade");
    second.expect_close(4429).await;
    first.ok("ping", json!({})).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_upgrades_follow_the_origin_policy() {
    let server = TestServer::start_with(|c| c.allowed_origins = "https://app.example".into()).await;
    let bearer = ("authorization", format!("Bearer {}", token("ada")));
    let same_origin = format!("http://{}", server.addr);
    for (origin, allowed) in [
        ("https://evil.example", false),
        ("https://app.example.evil", false),
        ("null", false),
        ("https://app.example", true),
        (same_origin.as_str(), true),
    ] {
        let result = Client::open(server.addr, "/v1/ws", &[bearer.clone(), ("origin", origin.to_owned())]).await;
        match result {
            Ok(mut client) => {
                assert!(allowed, "{origin} was let in");
                client.wait_ready().await;
            }
            Err(tungstenite::Error::Http(response)) => {
                assert!(!allowed, "{origin} was refused: {}", response.status());
                assert_eq!(response.status().as_u16(), 403, "{origin}");
            }
            Err(other) => panic!("{origin}: {other}"),
        }
    }
    // Without an Origin (not a browser) the upgrade is allowed.
    server.connect("bob").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_token_never_reaches_the_logs() {
    let dir = tempfile::tempdir().expect("temp dir");
    let process =
        ServerProcess::start(&dir.path().join("chat.db"), dir.path().join("log"), &[("RUST_LOG", "debug")]).await;
    let secret_part = token("ada");
    let mut client = Client::open(process.addr, &format!("/v1/ws?token={secret_part}"), &[]).await.expect("upgrade");
    client.wait_ready().await;
    client.ok("ping", json!({})).await;
    // A refused query token (logged as a failure) must not show either.
    let bad =
        support::mint_with(&json!({"sub": "eve", "exp": now_secs() + 60}), b"forged-forged-forged-forged-forged!!");
    let mut refused = Client::open(process.addr, &format!("/v1/ws?token={bad}"), &[]).await.expect("upgrade");
    refused.expect_close(4401).await;
    client.close().await;
    let logs = process.logs();
    assert!(logs.contains("/v1/ws"), "debug logs show requests, so the check means something: {logs}");
    for t in [&secret_part, &bad] {
        let signature = t.rsplit('.').next().expect("signature");
        assert!(!logs.contains(signature), "a token appears in the logs:\n{logs}");
    }
    assert!(!logs.contains("token="), "a query string appears in the logs:\n{logs}");
}

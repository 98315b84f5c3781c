//! Web Push end to end (PROTOCOL.md sections 8 and 12) against a stand-in
//! push service on loopback that does what a real one checks: the VAPID
//! JWT (ES256, `aud` its origin, `exp`, `sub`) against the key the server
//! publishes, the `aes128gcm` body decrypted with the subscription's private
//! key, and `TTL`. It answers as scripted (201 by default; 500, 503 or 410
//! when a test says so) and records every request.
//!
//! Who is pushed (subscribed members with no open session, not the sender,
//! not those who muted the room), folding, 404/410 removal, retry on 5xx,
//! the most subscriptions, nothing doubled across a restart, calls. The
//! scenario of who is pushed also runs on PostgreSQL with
//! `CHAT_TEST_POSTGRES_URL` (without it, it says that it skips).

mod support;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chat_broker::testing::BrokerServer;
use chat_store_sql::testing::TempSchema;
use p256::elliptic_curve::sec1::ToEncodedPoint as _;
use serde_json::{Value, json};
use support::{Client, ServerProcess, TestServer, create_room, token};
use tokio::time::Instant;

const SUBJECT: &str = "mailto:ops@example.com";

/// What the stand-in got.
#[derive(Debug, Clone)]
struct Received {
    sub: String,
    status: u16,
    payload: Value,
    ttl: u64,
    topic: String,
    urgency: String,
}

#[derive(Default)]
struct PushState {
    /// Subscription id → its private key and auth secret.
    keys: HashMap<String, (p256::SecretKey, [u8; 16])>,
    /// Subscription id → the statuses to answer next (then 201).
    script: HashMap<String, VecDeque<u16>>,
    received: Vec<Received>,
    /// What failed a check: a test fails when this is not empty.
    errors: Vec<String>,
    /// The VAPID public key the server publishes.
    vapid: String,
}

#[derive(Clone)]
struct PushService {
    addr: SocketAddr,
    state: Arc<Mutex<PushState>>,
}

impl PushService {
    async fn start(vapid: String) -> Self {
        let state = Arc::new(Mutex::new(PushState { vapid, ..PushState::default() }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let app = axum::Router::new().route("/p/{id}", axum::routing::post(receive)).with_state((state.clone(), addr));
        tokio::spawn(async move { axum::serve(listener, app).await.expect("serve") });
        PushService { addr, state }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PushState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new subscription's `PushSubscription.toJSON()`, its keys kept here.
    fn subscription(&self, id: &str) -> Value {
        let secret = p256::SecretKey::random(&mut p256::elliptic_curve::rand_core::OsRng);
        let auth: [u8; 16] = rand_bytes();
        let point = secret.public_key().to_encoded_point(false);
        let body = json!({
            "endpoint": format!("http://{}/p/{id}", self.addr),
            "keys": {"p256dh": URL_SAFE_NO_PAD.encode(point.as_bytes()), "auth": URL_SAFE_NO_PAD.encode(auth)},
        });
        self.lock().keys.insert(id.to_owned(), (secret, auth));
        body
    }

    fn script(&self, id: &str, statuses: &[u16]) {
        self.lock().script.insert(id.to_owned(), statuses.iter().copied().collect());
    }

    fn received(&self, id: &str) -> Vec<Received> {
        self.lock().received.iter().filter(|r| r.sub == id).cloned().collect()
    }

    fn all(&self) -> Vec<Received> {
        self.lock().received.clone()
    }

    fn assert_no_errors(&self) {
        let errors = self.lock().errors.clone();
        assert!(errors.is_empty(), "the push service saw bad requests: {errors:?}");
    }

    /// Waits until `id` got `n` requests; returns them.
    async fn wait_for(&self, id: &str, n: usize, within: Duration) -> Vec<Received> {
        let deadline = Instant::now() + within;
        loop {
            let got = self.received(id);
            if got.len() >= n {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "{id} got {} of {n} pushes: {got:?}; errors {:?}",
                got.len(),
                self.lock().errors
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

fn rand_bytes<const N: usize>() -> [u8; N] {
    use p256::elliptic_curve::rand_core::RngCore as _;
    let mut bytes = [0u8; N];
    p256::elliptic_curve::rand_core::OsRng.fill_bytes(&mut bytes);
    bytes
}

#[derive(serde::Deserialize)]
struct VapidClaims {
    sub: String,
}

/// Checks one push the way a push service does, decrypts it, and answers as scripted.
async fn receive(
    State((state, addr)): State<(Arc<Mutex<PushState>>, SocketAddr)>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> impl IntoResponse {
    let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    match check(&state, addr, &id, &headers, &body) {
        Ok((payload, ttl)) => {
            let status = state.script.get_mut(&id).and_then(VecDeque::pop_front).unwrap_or(201);
            let (topic, urgency) = (header("topic"), header("urgency"));
            state.received.push(Received { sub: id, status, payload, ttl, topic, urgency });
            StatusCode::from_u16(status).unwrap_or(StatusCode::CREATED)
        }
        Err(why) => {
            state.errors.push(format!("{id}: {why}"));
            StatusCode::BAD_REQUEST
        }
    }
}

fn check(
    state: &PushState,
    addr: SocketAddr,
    id: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(Value, u64), String> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    if header("content-encoding") != "aes128gcm" {
        return Err(format!("content-encoding {:?}", header("content-encoding")));
    }
    let ttl = header("ttl").parse::<u64>().map_err(|_| "no TTL".to_owned())?;
    // Authorization: vapid t=<JWT>, k=<public key>
    let auth = header("authorization");
    let (t, k) =
        auth.strip_prefix("vapid t=").and_then(|a| a.split_once(", k=")).ok_or(format!("authorization {auth:?}"))?;
    if k != state.vapid {
        return Err("k is not the server's published VAPID key".into());
    }
    let point = URL_SAFE_NO_PAD.decode(k).unwrap_or_default();
    if point.len() != 65 {
        return Err("k is not an uncompressed P-256 point".into());
    }
    let key = jsonwebtoken::DecodingKey::from_ec_components(
        &URL_SAFE_NO_PAD.encode(&point[1..33]),
        &URL_SAFE_NO_PAD.encode(&point[33..]),
    )
    .map_err(|_| "k makes no ES256 key".to_owned())?;
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    validation.set_audience(&[format!("http://{addr}")]);
    validation.set_required_spec_claims(&["exp", "aud", "sub"]);
    let claims =
        jsonwebtoken::decode::<VapidClaims>(t, &key, &validation).map_err(|e| format!("VAPID JWT: {e}"))?.claims;
    if claims.sub != SUBJECT {
        return Err(format!("sub {:?}", claims.sub));
    }
    let (secret, auth) = state.keys.get(id).cloned().ok_or("unknown subscription".to_owned())?;
    let mut secret_auth = web_push_native::Auth::default();
    secret_auth.copy_from_slice(&auth);
    let plain =
        web_push_native::decrypt(body.to_vec(), &secret, &secret_auth).map_err(|e| format!("cannot decrypt: {e}"))?;
    let payload = serde_json::from_slice::<Value>(&plain).map_err(|_| "payload is not JSON".to_owned())?;
    Ok((payload, ttl))
}

/// A server whose push endpoints may be on loopback (the stand-in's).
async fn server_on(database_url: Option<String>, tweak: impl FnOnce(&mut chat_server::Config)) -> TestServer {
    TestServer::start_with(move |config| {
        config.vapid_subject = Some(SUBJECT.into());
        config.push_allow_private_endpoints = true;
        config.call_ring_s = 2;
        if let Some(url) = database_url {
            config.database_url = url;
        }
        tweak(config);
    })
    .await
}

async fn vapid_key(server: impl Into<SocketAddr>) -> String {
    let url = format!("http://{}/v1/push/vapid-public-key", server.into());
    let (status, body) = support::status_and_json(support::http_client().get(url).send().await.expect("GET")).await;
    assert_eq!(status, 200, "{body}");
    body["key"].as_str().expect("key").to_owned()
}

async fn subscribe(server: impl Into<SocketAddr>, user: &str, subscription: &Value) -> u16 {
    let response = support::http_client()
        .post(format!("http://{}/v1/push/subscriptions", server.into()))
        .bearer_auth(token(user))
        .json(subscription)
        .send()
        .await
        .expect("POST");
    response.status().as_u16()
}

async fn unsubscribe(server: &TestServer, user: &str, endpoint: &str) -> u16 {
    let response = server
        .http
        .delete(server.url("/v1/push/subscriptions"))
        .bearer_auth(token(user))
        .json(&json!({"endpoint": endpoint}))
        .send()
        .await
        .expect("DELETE");
    response.status().as_u16()
}

async fn users(server: &TestServer, ids: &[&str]) {
    for id in ids {
        server.create_user(id, &[]).await;
    }
}

async fn group(client: &mut Client, name: &str, members: &[&str]) -> String {
    let room = create_room(client, json!({"kind": "group", "name": name, "members": members})).await;
    room["id"].as_str().expect("room id").to_owned()
}

async fn send(client: &mut Client, room: &str, body: &str) -> Value {
    let id = format!("m-{}", URL_SAFE_NO_PAD.encode(rand_bytes::<9>()));
    client.ok("message:send", json!({"room_id": room, "client_msg_id": id, "body": body})).await["message"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_is_public_and_subscriptions_are_checked() {
    let server = server_on(None, |_| {}).await;
    let key = vapid_key(server.addr).await;
    assert_eq!(URL_SAFE_NO_PAD.decode(&key).expect("base64url").len(), 65, "an uncompressed P-256 point");
    let service = PushService::start(key).await;
    let good = service.subscription("s");

    let anonymous = server.http.post(server.url("/v1/push/subscriptions")).json(&good).send().await.expect("POST");
    assert_eq!(anonymous.status().as_u16(), 401);
    assert_eq!(subscribe(server.addr, "ada", &good).await, 201);
    assert_eq!(subscribe(server.addr, "ada", &good).await, 201, "again is no error");
    let mut bad_keys = good.clone();
    bad_keys["keys"]["auth"] = json!("c2hvcnQ");
    assert_eq!(subscribe(server.addr, "ada", &bad_keys).await, 400);
    let mut off_curve = good.clone();
    off_curve["keys"]["p256dh"] = json!(URL_SAFE_NO_PAD.encode([4u8; 65]));
    assert_eq!(subscribe(server.addr, "ada", &off_curve).await, 400);
    assert_eq!(subscribe(server.addr, "ada", &json!({"endpoint": 5})).await, 400);
    assert_eq!(unsubscribe(&server, "ada", "https://push.example.com/never").await, 204, "unknown is no error");
    assert_eq!(unsubscribe(&server, "ada", good["endpoint"].as_str().expect("endpoint")).await, 204);

    // Anyone can become a visitor: visitors may not have the server POST
    // to URLs of their choosing.
    let (status, body) = server.post("/v1/visitor-sessions", &json!({"name": "Vic"}), None).await;
    assert_eq!(status, 201, "{body}");
    let visitor = server
        .http
        .post(server.url("/v1/push/subscriptions"))
        .bearer_auth(body["token"].as_str().expect("token"))
        .json(&service.subscription("vic"))
        .send()
        .await
        .expect("POST");
    assert_eq!(visitor.status().as_u16(), 403);

    // Without the test setting: https on public addresses only.
    let strict = TestServer::start_with(|config| config.vapid_subject = Some(SUBJECT.into())).await;
    let with = |endpoint: &str| {
        let mut s = good.clone();
        s["endpoint"] = json!(endpoint);
        s
    };
    for refused in [
        good["endpoint"].as_str().expect("endpoint").to_owned(),
        "https://127.0.0.1/p".into(),
        "https://10.0.0.8/p".into(),
        "https://[::1]/p".into(),
        "https://localhost/p".into(),
        "https://169.254.169.254/latest/meta-data".into(),
    ] {
        assert_eq!(subscribe(strict.addr, "ada", &with(&refused)).await, 400, "{refused}");
    }
    assert_eq!(subscribe(strict.addr, "ada", &with("https://push.example.com/wpush/abc")).await, 201);
    let (status, spec) = server.get("/v1/openapi.json", None).await;
    assert_eq!(status, 200);
    assert!(spec["paths"]["/v1/push/subscriptions"]["post"].is_object(), "documented");
    strict.stop().await.expect("stops");
    server.stop().await.expect("stops");
}

/// Ada writes in a room of five: Bob (subscribed, away) is pushed once;
/// Cleo (subscribed, connected), Dan (subscribed, muted the room), Eve (no
/// subscription) and Ada herself (subscribed, the sender) are not.
async fn who_is_pushed(server: TestServer) {
    let service = PushService::start(vapid_key(server.addr).await).await;
    for (user, sub) in [("ada", "ada-1"), ("bob", "bob-1"), ("bob", "bob-2"), ("cleo", "cleo-1"), ("dan", "dan-1")] {
        assert_eq!(subscribe(server.addr, user, &service.subscription(sub)).await, 201);
    }
    users(&server, &["ada", "bob", "cleo", "dan", "eve"]).await;
    let mut ada = server.connect("ada").await;
    let room = group(&mut ada, "Planning", &["bob", "cleo", "dan", "eve"]).await;
    let mut dan = server.connect("dan").await;
    dan.ok("room:mute", json!({"room_id": room})).await;
    dan.close().await;
    let _cleo = server.connect("cleo").await;
    // Bob was here and left: his sessions count no more.
    server.connect("bob").await.close().await;

    let long = format!("{}{}", "é".repeat(119), "xyz");
    let message = send(&mut ada, &room, &long).await;
    let got = service.wait_for("bob-1", 1, Duration::from_secs(10)).await;
    service.wait_for("bob-2", 1, Duration::from_secs(10)).await;
    let push = &got[0];
    assert_eq!(push.status, 201);
    assert_eq!(push.payload["type"], "message");
    assert_eq!(push.payload["room_id"], room.as_str());
    assert_eq!(push.payload["room_name"], "Planning");
    assert_eq!(push.payload["message_id"], message["id"]);
    assert_eq!(push.payload["seq"], message["seq"]);
    assert_eq!(push.payload["sender"]["id"], "ada");
    assert_eq!(push.payload["preview"].as_str().expect("preview").chars().count(), 120, "120 scalars");
    assert!(push.payload.get("count").is_none(), "one message: no count");
    assert!(push.ttl > 0 && push.ttl <= 24 * 3600, "TTL {}", push.ttl);
    assert_eq!((push.urgency.as_str(), push.topic.len()), ("normal", 32));

    tokio::time::sleep(Duration::from_millis(500)).await;
    let others: Vec<String> = service.all().iter().map(|r| r.sub.clone()).filter(|s| !s.starts_with("bob")).collect();
    assert!(others.is_empty(), "only Bob is pushed: {others:?}");
    assert_eq!(service.received("bob-1").len(), 1);
    service.assert_no_errors();
    server.stop().await.expect("stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn who_is_pushed_on_sqlite() {
    who_is_pushed(server_on(None, |_| {}).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn who_is_pushed_on_postgres() {
    let Some(schema) = TempSchema::create("push: who is pushed").await else { return };
    who_is_pushed(server_on(Some(schema.url()), |_| {}).await).await;
}

/// Three messages in a second: one push at once, then one more after the
/// fold window for the other two, with their count and the newest preview.
/// A message in another room is not held back by the first room's window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_fold_within_ten_seconds_per_room() {
    let server = server_on(None, |_| {}).await;
    let service = PushService::start(vapid_key(server.addr).await).await;
    assert_eq!(subscribe(server.addr, "bob", &service.subscription("bob")).await, 201);
    users(&server, &["ada", "bob"]).await;
    let mut ada = server.connect("ada").await;
    let room = group(&mut ada, "Busy", &["bob"]).await;
    let other = group(&mut ada, "Quiet", &["bob"]).await;
    let first = send(&mut ada, &room, "one").await;
    service.wait_for("bob", 1, Duration::from_secs(5)).await;
    let started = Instant::now();
    send(&mut ada, &room, "two").await;
    let third = send(&mut ada, &room, "three").await;
    send(&mut ada, &other, "elsewhere").await;
    let got = service.wait_for("bob", 2, Duration::from_secs(5)).await;
    assert_eq!(got[1].payload["room_id"], other.as_str(), "another room is not held back");
    let got = service.wait_for("bob", 3, Duration::from_secs(15)).await;
    assert!(started.elapsed() >= Duration::from_secs(8), "folded until the window ended: {:?}", started.elapsed());
    assert_eq!(got[0].payload["message_id"], first["id"]);
    assert_eq!(got[2].payload["message_id"], third["id"]);
    assert_eq!(got[2].payload["preview"], "three");
    assert_eq!(got[2].payload["count"], 2);
    assert_eq!(got[0].topic, got[2].topic, "one topic per room: a newer push replaces an undelivered one");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(service.received("bob").len(), 3, "nothing more");
    service.assert_no_errors();
    server.stop().await.expect("stops");
}

/// A push service answering 500 is tried again, and gets the push once;
/// one answering 410 has its subscription forgotten.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_retried_and_gone_subscriptions_forgotten() {
    let server = server_on(None, |_| {}).await;
    let service = PushService::start(vapid_key(server.addr).await).await;
    assert_eq!(subscribe(server.addr, "bob", &service.subscription("flaky")).await, 201);
    assert_eq!(subscribe(server.addr, "bob", &service.subscription("gone")).await, 201);
    service.script("flaky", &[500, 503]);
    service.script("gone", &[410]);
    users(&server, &["ada", "bob"]).await;
    let mut ada = server.connect("ada").await;
    let room = group(&mut ada, "One", &["bob"]).await;
    let message = send(&mut ada, &room, "hello").await;
    let flaky = service.wait_for("flaky", 3, Duration::from_secs(15)).await;
    assert_eq!(flaky.iter().map(|r| r.status).collect::<Vec<_>>(), [500, 503, 201]);
    assert!(flaky.iter().all(|r| r.payload["message_id"] == message["id"]), "the same push each time");
    assert_eq!(service.received("gone").len(), 1);

    // Another room (no folding): the forgotten subscription gets nothing.
    let other = group(&mut ada, "Two", &["bob"]).await;
    send(&mut ada, &other, "again").await;
    service.wait_for("flaky", 4, Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(service.received("gone").len(), 1, "410: forgotten");
    service.assert_no_errors();
    server.stop().await.expect("stops");
}

/// A user keeps ten subscriptions: an 11th replaces the oldest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_eleventh_subscription_replaces_the_oldest() {
    let server = server_on(None, |_| {}).await;
    let service = PushService::start(vapid_key(server.addr).await).await;
    for i in 0..11 {
        assert_eq!(subscribe(server.addr, "bob", &service.subscription(&format!("d{i}"))).await, 201);
    }
    users(&server, &["ada", "bob"]).await;
    let mut ada = server.connect("ada").await;
    let room = group(&mut ada, "Devices", &["bob"]).await;
    send(&mut ada, &room, "to every device").await;
    for i in 1..11 {
        service.wait_for(&format!("d{i}"), 1, Duration::from_secs(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(service.received("d0").is_empty(), "the oldest was replaced");
    service.assert_no_errors();
    server.stop().await.expect("stops");
}

/// A push that was answered is not sent again after a restart; one that
/// was still being retried is sent once by the restarted server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_pushed_twice_across_a_restart() {
    let server = server_on(None, |_| {}).await;
    let service = PushService::start(vapid_key(server.addr).await).await;
    assert_eq!(subscribe(server.addr, "bob", &service.subscription("bob")).await, 201);
    users(&server, &["ada", "bob"]).await;
    let mut ada = server.connect("ada").await;
    let done = group(&mut ada, "Done", &["bob"]).await;
    let pending = group(&mut ada, "Pending", &["bob"]).await;
    send(&mut ada, &done, "delivered before the restart").await;
    service.wait_for("bob", 1, Duration::from_secs(5)).await;
    // The next push fails twice (retried after 1 s, then 2 s): the server
    // stops while it waits.
    service.script("bob", &[503, 503]);
    let message = send(&mut ada, &pending, "delivered after the restart").await;
    service.wait_for("bob", 2, Duration::from_secs(5)).await;
    ada.close().await;
    let dir = server.stop().await.expect("stops");

    let server = TestServer::start_in(dir, |config| {
        config.vapid_subject = Some(SUBJECT.into());
        config.push_allow_private_endpoints = true;
    })
    .await;
    let got = service.wait_for("bob", 4, Duration::from_secs(15)).await;
    assert_eq!(got.iter().map(|r| r.status).collect::<Vec<_>>(), [201, 503, 503, 201]);
    assert_eq!(got[3].payload["message_id"], message["id"]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(service.received("bob").len(), 4, "nothing doubled");
    assert_eq!(vapid_key(server.addr).await, service.lock().vapid, "the key is kept in the store");
    service.assert_no_errors();
    server.stop().await.expect("stops");
}

/// A call to a user with no open session is pushed once, urgently; the
/// missed call's history line makes no second push.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_to_someone_away_is_pushed_once() {
    let server = server_on(None, |_| {}).await;
    let service = PushService::start(vapid_key(server.addr).await).await;
    assert_eq!(subscribe(server.addr, "bob", &service.subscription("bob")).await, 201);
    users(&server, &["ada", "bob"]).await;
    let mut ada = server.connect("ada").await;
    let room = create_room(&mut ada, json!({"kind": "direct", "members": ["bob"]})).await;
    let room = room["id"].as_str().expect("room id").to_owned();
    let call = ada.ok("call:invite", json!({"room_id": room, "media": "video"})).await;
    let got = service.wait_for("bob", 1, Duration::from_secs(5)).await;
    let push = &got[0].payload;
    assert_eq!(push["type"], "call");
    assert_eq!(push["call_id"], call["call_id"]);
    assert_eq!(push["room_id"], room.as_str());
    assert_eq!(push["from"]["id"], "ada");
    assert_eq!(push["media"], "video");
    assert_eq!(got[0].urgency, "high");
    assert!(got[0].ttl <= 2, "lives as long as the call rings: {}", got[0].ttl);
    // The ring times out (2 s): the missed call's line is written.
    ada.expect_event_within("call:ended", Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(service.received("bob").len(), 1, "no second push for the missed call");
    service.assert_no_errors();
    server.stop().await.expect("stops");
}

/// Two processes on one database and NATS: Bob's session on one process
/// keeps the other from pushing him; once he left, he is pushed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_on_another_process_counts() {
    let Some(schema) = TempSchema::create("push: a session on another process").await else { return };
    let Some(broker) = BrokerServer::nats().await else { return };
    let dir = tempfile::tempdir().expect("temp dir");
    let env = [
        ("CHAT_BROKER_URL", broker.url()),
        ("CHAT_BROKER_PREFIX", format!("p{}", std::process::id())),
        ("CHAT_VAPID_SUBJECT", SUBJECT.to_owned()),
        ("CHAT_PUSH_ALLOW_PRIVATE_ENDPOINTS", "true".to_owned()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let url = schema.url();
    let (a, b) = tokio::join!(
        ServerProcess::start_url(&url, dir.path().join("a.log"), &env),
        ServerProcess::start_url(&url, dir.path().join("b.log"), &env),
    );
    // Until each hears of the other, presence is not whole.
    let deadline = Instant::now() + Duration::from_secs(30);
    for process in [&a, &b] {
        loop {
            let response = support::http_client().get(format!("http://{}/health", process.addr)).send().await;
            let (_, health) = support::status_and_json(response.expect("GET /health")).await;
            if health["broker"] == "ok" && health["peers"] == 1 {
                break;
            }
            assert!(Instant::now() < deadline, "the processes did not meet: {health}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let key = vapid_key(a.addr).await;
    assert_eq!(vapid_key(b.addr).await, key, "one key for every process");
    let service = PushService::start(key).await;
    let bob = b.connect("bob").await;
    let mut ada = a.connect("ada").await;
    assert_eq!(subscribe(a.addr, "bob", &service.subscription("bob")).await, 201);
    let online = |addr: SocketAddr| async move {
        let response = support::http_client()
            .get(format!("http://{addr}/v1/users/online"))
            .bearer_auth(token("ada"))
            .send()
            .await
            .expect("GET");
        let (_, body) = support::status_and_json(response).await;
        body["users"].as_array().cloned().unwrap_or_default().iter().any(|u| u["user"]["id"] == "bob")
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !online(a.addr).await {
        assert!(Instant::now() < deadline, "process A never heard of Bob's session on B");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let room = group(&mut ada, "Across", &["bob"]).await;
    send(&mut ada, &room, "you are here").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(service.received("bob").is_empty(), "Bob has a session on B: no push");

    bob.close().await;
    while online(a.addr).await {
        assert!(Instant::now() < deadline + Duration::from_secs(5), "process A never heard that Bob left");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let message = send(&mut ada, &room, "you left").await;
    let got = service.wait_for("bob", 1, Duration::from_secs(10)).await;
    assert_eq!(got[0].payload["message_id"], message["id"]);
    assert!(got[0].payload.get("count").is_none(), "what he saw is not counted");
    service.assert_no_errors();
}

/// `CHAT_VAPID_PRIVATE_KEY_FILE` names the key (PEM or base64url); with
/// `CHAT_PUSH=false` there is no push at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_can_come_from_a_file_and_push_can_be_off() {
    use p256::pkcs8::EncodePrivateKey as _;
    let dir = tempfile::tempdir().expect("temp dir");
    let secret = p256::SecretKey::random(&mut p256::elliptic_curve::rand_core::OsRng);
    let expected = URL_SAFE_NO_PAD.encode(secret.public_key().to_encoded_point(false).as_bytes());
    let pem = dir.path().join("vapid.pem");
    std::fs::write(&pem, secret.to_pkcs8_pem(Default::default()).expect("PEM").as_bytes()).expect("write");
    let raw = dir.path().join("vapid.txt");
    std::fs::write(&raw, format!("{}\n", URL_SAFE_NO_PAD.encode(secret.to_bytes()))).expect("write");
    for file in [pem, raw] {
        let path = file.display().to_string();
        let server = server_on(None, |config| config.vapid_private_key_file = Some(path)).await;
        assert_eq!(vapid_key(server.addr).await, expected, "{}", file.display());
        server.stop().await.expect("stops");
    }

    let off = server_on(None, |config| config.push = false).await;
    let (status, _) = off.get("/v1/push/vapid-public-key", None).await;
    assert_eq!(status, 404, "no push routes");
    off.stop().await.expect("stops");
}

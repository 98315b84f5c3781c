//! Webhooks end to end: chat-server POSTing to a receiver on 127.0.0.1 that
//! records every request and answers as a test tells it (200, an error, or
//! nothing at all while it is down). Signatures are checked by recomputing
//! the HMAC here; the server runs in process (`chat_server::run`) or as the
//! compiled binary for the kill test, on SQLite and, when
//! `CHAT_TEST_POSTGRES_URL` is set, on PostgreSQL.

mod support;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chat_discord::testing::{SUPPORT_ROLE, StandIn};
use chat_server::Config;
use chat_store_sql::testing::TempSchema;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use support::*;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// The secret of the configured endpoint.
const HOOK_SECRET: &str = "webhook-secret-for-tests";

// ---------------------------------------------------------------------------
// The receiver

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Hit {
    signature: String,
    content_type: String,
    user_agent: String,
    body: String,
    event: Value,
    /// The status it was answered with.
    status: u16,
    at: Instant,
}

impl Hit {
    fn id(&self) -> &str {
        self.event["id"].as_str().unwrap_or_default()
    }

    fn kind(&self) -> &str {
        self.event["type"].as_str().unwrap_or_default()
    }
}

#[derive(Default)]
struct Script {
    hits: Vec<Hit>,
    /// Requests still to answer with an error, and with which status.
    failures: u32,
    status: u16,
    /// Answer every request with `status`.
    failing: bool,
}

/// An HTTP server on 127.0.0.1 standing in for a webhook receiver. Every
/// answer closes its connection, so that taking the receiver down refuses
/// the next delivery instead of serving it on a kept connection.
struct Receiver {
    addr: SocketAddr,
    script: Arc<Mutex<Script>>,
    task: Option<JoinHandle<()>>,
}

impl Receiver {
    async fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let script = Arc::new(Mutex::new(Script::default()));
        let task = Some(Self::serve(listener, script.clone()));
        Receiver { addr, script, task }
    }

    fn serve(listener: TcpListener, script: Arc<Mutex<Script>>) -> JoinHandle<()> {
        let app = Router::new().fallback(record).with_state(script);
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        })
    }

    fn url(&self) -> String {
        format!("http://{}/hooks/chat", self.addr)
    }

    fn script(&self) -> std::sync::MutexGuard<'_, Script> {
        self.script.lock().expect("not poisoned")
    }

    /// Answers the next `n` requests with `status`.
    fn fail_next(&self, n: u32, status: u16) {
        let mut script = self.script();
        script.failures = n;
        script.status = status;
    }

    /// Answers every request with `status` (`None`: with 200 again).
    fn fail_all(&self, status: Option<u16>) {
        let mut script = self.script();
        script.failing = status.is_some();
        script.status = status.unwrap_or(200);
    }

    /// Stops listening: deliveries are refused until [`Receiver::up`].
    async fn down(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }

    async fn up(&mut self) {
        let listener = TcpListener::bind(self.addr).await.expect("bind the same port again");
        self.task = Some(Self::serve(listener, self.script.clone()));
    }

    fn hits(&self) -> Vec<Hit> {
        self.script().hits.clone()
    }

    /// Waits until `done` holds for the requests so far (those answered
    /// 2xx only, when `delivered`); returns them.
    async fn wait(&self, what: &str, within: Duration, delivered: bool, done: impl Fn(&[Hit]) -> bool) -> Vec<Hit> {
        let deadline = Instant::now() + within;
        loop {
            let hits: Vec<Hit> = self.hits().into_iter().filter(|h| !delivered || h.status < 300).collect();
            if done(&hits) {
                return hits;
            }
            assert!(Instant::now() < deadline, "not within {within:?}: {what}; got {:#?}", summary(&hits));
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Waits for `n` delivered events of `kind` (first deliveries of each id).
    async fn delivered(&self, kind: &str, n: usize, within: Duration) -> Vec<Value> {
        let hits = self
            .wait(&format!("{n} × {kind}"), within, true, |hits| {
                first_of_each(hits).iter().filter(|h| h.kind() == kind).count() >= n
            })
            .await;
        first_of_each(&hits).into_iter().filter(|h| h.kind() == kind).map(|h| h.event).collect()
    }
}

async fn record(State(script): State<Arc<Mutex<Script>>>, headers: HeaderMap, body: Bytes) -> Response {
    let text = |name| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let body = String::from_utf8_lossy(&body).into_owned();
    let mut script = script.lock().expect("not poisoned");
    let status = if script.failing {
        script.status
    } else if script.failures > 0 {
        script.failures -= 1;
        script.status
    } else {
        200
    };
    script.hits.push(Hit {
        signature: text("x-chat-signature"),
        content_type: text(header::CONTENT_TYPE.as_str()),
        user_agent: text(header::USER_AGENT.as_str()),
        event: serde_json::from_str(&body).unwrap_or(Value::Null),
        body,
        status,
        at: Instant::now(),
    });
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, [(header::CONNECTION, "close")], "").into_response()
}

/// The first request of each event id, in the order they came.
fn first_of_each(hits: &[Hit]) -> Vec<Hit> {
    let mut seen = HashSet::new();
    hits.iter().filter(|h| seen.insert(h.id().to_owned())).cloned().collect()
}

fn summary(hits: &[Hit]) -> Vec<String> {
    hits.iter().map(|h| format!("{} {} {}", h.status, h.kind(), h.id())).collect()
}

/// Checks a request's signature by recomputing it: `t` is now (within a
/// minute) and `v1` is HMAC-SHA256 of `"<t>.<body>"` in hex.
fn assert_signed(hit: &Hit, secret: &str) {
    let mut t = None;
    let mut v1 = None;
    for part in hit.signature.split(',') {
        match part.split_once('=') {
            Some(("t", value)) => t = value.parse::<u64>().ok(),
            Some(("v1", value)) => v1 = Some(value.to_owned()),
            _ => {}
        }
    }
    let (Some(t), Some(v1)) = (t, v1) else { panic!("malformed signature {:?}", hit.signature) };
    assert!(now_secs().abs_diff(t) <= 60, "t={t} is not now");
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(format!("{t}.{}", hit.body).as_bytes());
    let expected: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(v1, expected, "the signature of {}", hit.body);
    assert_eq!(hit.content_type, "application/json");
    assert!(hit.user_agent.starts_with("chat-webhooks/"), "{}", hit.user_agent);
    let keys: HashSet<&str> = hit.event.as_object().expect("an object").keys().map(String::as_str).collect();
    assert_eq!(keys, HashSet::from(["id", "type", "created_at", "data"]), "{}", hit.body);
}

/// A server whose configured endpoint is `receiver`.
async fn server_for(receiver: &Receiver, tweak: impl FnOnce(&mut Config)) -> TestServer {
    let url = receiver.url();
    TestServer::start_with(move |config| {
        config.webhook_url = Some(url);
        config.webhook_secret = Some(HOOK_SECRET.into());
        unthrottle(config);
        tweak(config);
    })
    .await
}

/// An admin API call with a JSON body (or none) and the API key (or another).
async fn admin(server: &TestServer, method: &str, path: &str, body: Option<Value>, key: Option<&str>) -> (u16, Value) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let mut request = server.http.request(method, server.url(path));
    if let Some(body) = body {
        request = request.json(&body);
    }
    if let Some(key) = key {
        request = request.header("x-api-key", key);
    }
    status_and_json(request.send().await.expect("request")).await
}

/// Polls `check` every 50 ms until it gives a value, for up to `within`.
async fn eventually<T, F: Future<Output = Option<T>>>(what: &str, within: Duration, mut check: impl FnMut() -> F) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------
// Tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_is_signed_and_carries_the_documented_data() {
    let receiver = Receiver::start().await;
    let server = server_for(&receiver, |_| {}).await;
    server.create_user("bob", &[]).await;
    server.create_user("cy", &[]).await;
    let mut ada = server.connect("ada").await;

    // A room with a member named at creation: room.created, then
    // member.added for bob and none for ada, its creator.
    let room =
        create_room(&mut ada, json!({"kind": "group", "name": "team", "visibility": "public", "members": ["bob"]}))
            .await;
    let room_id = room["id"].as_str().expect("room id").to_owned();
    ada.ok("room:join", json!({"room_id": room_id})).await;
    // An invite and a join by oneself.
    ada.ok("room:invite", json!({"room_id": room_id, "user_id": "cy"})).await;
    let mut dee = server.connect("dee").await;
    dee.ok("room:join", json!({"room_id": room_id})).await;
    let sent = send_message(&mut ada, &room_id, "m1", "hello").await;
    let edited =
        ada.ok("message:edit", json!({"room_id": room_id, "message_id": sent["id"], "body": "hello, all"})).await;
    ada.ok("message:delete", json!({"room_id": room_id, "message_id": sent["id"]})).await;
    dee.ok("room:leave", json!({"room_id": room_id})).await;
    let updated = ada.ok("room:update", json!({"room_id": room_id, "topic": "webhooks"})).await;

    let hits = receiver.wait("the room's nine events", Duration::from_secs(10), true, |hits| hits.len() >= 9).await;
    for hit in &hits {
        assert_signed(hit, HOOK_SECRET);
    }
    let kinds: Vec<&str> = hits.iter().map(Hit::kind).collect();
    assert_eq!(
        kinds,
        [
            "room.created",
            "member.added",
            "member.added",
            "member.added",
            "message.created",
            "message.updated",
            "message.deleted",
            "member.removed",
            "room.updated"
        ],
        "in the room's order"
    );
    let data: Vec<&Value> = hits.iter().map(|h| &h.event["data"]).collect();
    assert_eq!(data[0], &json!({"room": room}));
    let added: Vec<&str> = data[1..4].iter().map(|d| d["user"]["id"].as_str().unwrap_or_default()).collect();
    assert_eq!(added, ["bob", "cy", "dee"], "bob named at creation, cy invited, dee joined; never ada");
    assert!(data[1..4].iter().all(|d| d["room_id"] == room_id.as_str() && d["user"]["name"].is_string()));
    assert_eq!(data[4], &json!({"room_id": room_id, "message": sent}));
    assert_eq!(data[5], &json!({"room_id": room_id, "message": edited["message"]}));
    assert_eq!(data[6], &json!({"room_id": room_id, "message_id": sent["id"]}));
    assert_eq!(data[7], &json!({"room_id": room_id, "user_id": "dee"}));
    assert_eq!(data[8], &json!({"room": updated["room"]}));
    assert_eq!(hits[4].event["created_at"], sent["created_at"], "a message's event is dated as the message");
    let ids: HashSet<&str> = hits.iter().map(Hit::id).collect();
    assert_eq!(ids.len(), hits.len(), "each event has an id of its own");

    // A visitor's support room: room.created; its first message opens it.
    let (status, visitor) = server.post("/v1/visitor-sessions", &json!({"name": "Vera"}), None).await;
    assert_eq!(status, 201, "{visitor}");
    let mut vera = server.connect_token(visitor["token"].as_str().expect("token")).await;
    let support = create_room(&mut vera, json!({"kind": "support"})).await;
    let support_id = support["id"].as_str().expect("room id").to_owned();
    let first = send_message(&mut vera, &support_id, "v1", "my order is late").await;
    send_message(&mut vera, &support_id, "v2", "order #12").await;
    let hits = receiver.wait("the support room's events", Duration::from_secs(10), true, |hits| hits.len() >= 13).await;
    let support_hits: Vec<&Hit> = hits.iter().filter(|h| h.event["data"].to_string().contains(&support_id)).collect();
    let kinds: Vec<&str> = support_hits.iter().map(|h| h.kind()).collect();
    assert_eq!(kinds, ["room.created", "support.opened", "message.created", "message.created"]);
    assert_eq!(support_hits[0].event["data"], json!({"room": support}), "the visitor made it: no member.added");
    assert_eq!(support_hits[1].event["data"]["room"]["id"], support_id.as_str());
    assert_eq!(support_hits[1].event["data"]["room"]["kind"], "support");
    assert_eq!(support_hits[2].event["data"]["message"], first);
    for hit in &hits {
        assert_signed(hit, HOOK_SECRET);
    }
    assert!(hits.iter().all(|h| h.status == 200), "{:?}", summary(&hits));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn support_rooms_are_claimed_and_closed_by_agents_of_a_bridge() {
    let receiver = Receiver::start().await;
    let discord = StandIn::start().await;
    let settings = discord_settings(&discord);
    let server = server_for(&receiver, move |config| config.discord = settings).await;
    let (status, visitor) = server.post("/v1/visitor-sessions", &json!({"name": "Vera"}), None).await;
    assert_eq!(status, 201, "{visitor}");
    let mut vera = server.connect_token(visitor["token"].as_str().expect("token")).await;
    let room = create_room(&mut vera, json!({"kind": "support"})).await;
    let room = room["id"].as_str().expect("room id").to_owned();
    send_message(&mut vera, &room, "v1", "hello?").await;
    let thread = {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (_, health) = server.get("/health", None).await;
            let thread = discord.lock().threads.first().map(|t| t.0);
            if let Some(thread) = thread.filter(|_| health["bridges"]["discord"]["connected"] == true) {
                break thread;
            }
            assert!(Instant::now() < deadline, "no thread, or the gateway is not up: {health}");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    };

    discord.press_button(thread, 77, "Alice", &[SUPPORT_ROLE], &format!("chat:claim:{room}"));
    let claimed = receiver.delivered("support.claimed", 1, Duration::from_secs(10)).await;
    assert_eq!(claimed[0]["data"]["room"]["id"], room.as_str());
    assert_eq!(claimed[0]["data"]["room"]["claimed_by"], "discord:77");
    discord.press_button(thread, 77, "Alice", &[SUPPORT_ROLE], &format!("chat:close:{room}"));
    let closed = receiver.delivered("support.closed", 1, Duration::from_secs(10)).await;
    assert_eq!(closed[0]["data"]["room"]["closed"], true);

    let hits = first_of_each(&receiver.hits());
    let kinds: Vec<&str> = hits.iter().map(Hit::kind).collect();
    assert_eq!(
        kinds,
        ["room.created", "support.opened", "message.created", "member.added", "support.claimed", "support.closed"],
        "the agent becomes a member as they claim"
    );
    assert_eq!(hits[3].event["data"]["user"]["id"], "discord:77");
    for hit in &hits {
        assert_signed(hit, HOOK_SECRET);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_room_keeps_its_order_and_a_retry_sends_the_same_event_again() {
    let receiver = Receiver::start().await;
    let server = server_for(&receiver, |_| {}).await;
    let mut ada = server.connect("ada").await;
    let rooms = [group_with(&mut ada, "public", &[]).await, group_with(&mut ada, "public", &[]).await];
    receiver.delivered("room.created", 2, Duration::from_secs(10)).await;

    // The first two deliveries fail: they come again, then everything in order.
    receiver.fail_next(2, 500);
    const EACH: u64 = 120;
    for room in &rooms {
        send_pipelined(&mut ada, room, EACH, "in order", 32).await;
    }
    let created = receiver.delivered("message.created", 2 * EACH as usize, Duration::from_secs(30)).await;
    for room in &rooms {
        let seqs: Vec<u64> = created
            .iter()
            .filter(|e| e["data"]["room_id"] == room.as_str())
            .map(|e| e["data"]["message"]["seq"].as_u64().expect("seq"))
            .collect();
        assert_eq!(seqs, (1..=EACH).collect::<Vec<_>>(), "room {room}: every message once, in seq order");
    }
    let hits = receiver.hits();
    let failed: Vec<&Hit> = hits.iter().filter(|h| h.status == 500).collect();
    assert_eq!(failed.len(), 2);
    for fail in failed {
        let again: Vec<&Hit> = hits.iter().filter(|h| h.id() == fail.id() && h.status == 200).collect();
        assert_eq!(again.len(), 1, "delivered once more after the 500: {}", fail.id());
        assert_eq!(again[0].body, fail.body, "the same bytes");
        assert_ne!(again[0].signature, "", "signed again");
        assert!(again[0].at.duration_since(fail.at) >= Duration::from_millis(900), "retried after a second");
    }
    let delivered = hits.iter().filter(|h| h.status == 200).count();
    assert_eq!(delivered, 2 + 2 * EACH as usize, "no event delivered twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_outage_loses_nothing() {
    let mut receiver = Receiver::start().await;
    let server = server_for(&receiver, |_| {}).await;
    let mut ada = server.connect("ada").await;
    let room = group_with(&mut ada, "public", &[]).await;
    receiver.delivered("room.created", 1, Duration::from_secs(10)).await;

    receiver.down().await;
    for i in 0..20 {
        send_message(&mut ada, &room, &format!("down-{i}"), "while the receiver is down").await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (_, health) = server.get("/health", None).await;
    assert_eq!(health["status"], "ok", "a receiver being down is not the server's health: {health}");
    assert!(health["bridges"]["webhooks"]["pending"].as_u64().is_some_and(|p| p > 0), "{health}");
    receiver.up().await;
    for i in 20..30 {
        send_message(&mut ada, &room, &format!("up-{i}"), "after").await;
    }
    let created = receiver.delivered("message.created", 30, Duration::from_secs(30)).await;
    let seqs: Vec<u64> = created.iter().map(|e| e["data"]["message"]["seq"].as_u64().expect("seq")).collect();
    assert_eq!(seqs, (1..=30).collect::<Vec<_>>(), "nothing lost, in order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_filter_events_and_one_failing_endpoint_delays_no_other() {
    let failing = Receiver::start().await;
    let healthy = Receiver::start().await;
    // No configured endpoint: both come from the admin API.
    let server = TestServer::start_with(unthrottle).await;
    let add = |receiver: &Receiver, events: Value| json!({"url": receiver.url(), "secret": "a secret for the admin api", "events": events});
    let (status, first) =
        admin(&server, "POST", "/v1/admin/webhooks", Some(add(&failing, json!(["message.created"]))), Some(API_KEY))
            .await;
    assert_eq!(status, 201, "{first}");
    let (status, second) =
        admin(&server, "POST", "/v1/admin/webhooks", Some(add(&healthy, json!([]))), Some(API_KEY)).await;
    assert_eq!(status, 201, "{second}");
    failing.fail_all(Some(503));

    let mut ada = server.connect("ada").await;
    let room = group_with(&mut ada, "public", &[]).await;
    for i in 0..10 {
        let sent_at = Instant::now();
        send_message(&mut ada, &room, &format!("m{i}"), "hello").await;
        let created = healthy.delivered("message.created", i + 1, Duration::from_secs(5)).await;
        let arrived =
            healthy.hits().iter().find(|h| h.id() == created[i]["id"].as_str().unwrap_or_default()).map(|h| h.at);
        assert!(
            arrived.is_some_and(|at| at.duration_since(sent_at) < Duration::from_secs(2)),
            "message {i} reached the healthy endpoint at once"
        );
    }
    let kinds: HashSet<String> = healthy.hits().iter().map(|h| h.kind().to_owned()).collect();
    assert_eq!(kinds, HashSet::from(["room.created".to_owned(), "message.created".to_owned()]));
    assert!(failing.hits().iter().all(|h| h.kind() == "message.created"), "only the events it asked for");
    assert!(!failing.hits().is_empty(), "it was tried");

    // Once it answers, it gets everything it missed, in order.
    failing.fail_all(None);
    let created = failing.delivered("message.created", 10, Duration::from_secs(30)).await;
    let seqs: Vec<u64> = created.iter().map(|e| e["data"]["message"]["seq"].as_u64().expect("seq")).collect();
    assert_eq!(seqs, (1..=10).collect::<Vec<_>>());
    for hit in failing.hits() {
        assert_signed(&hit, "a secret for the admin api");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_manages_endpoints_and_failed_deliveries() {
    let receiver = Receiver::start().await;
    // Deliveries give up after two seconds here, instead of a day.
    let server = server_for(&receiver, |config| config.webhook_give_up_s = 2).await;
    let secret = "another secret, long enough";
    let valid = json!({"url": receiver.url(), "secret": secret, "events": ["message.created", "member.added"]});

    // The key is required everywhere.
    for (method, path) in [
        ("GET", "/v1/admin/webhooks"),
        ("POST", "/v1/admin/webhooks"),
        ("DELETE", "/v1/admin/webhooks/config"),
        ("GET", "/v1/admin/webhooks/config/deliveries"),
        ("POST", "/v1/admin/webhooks/config/deliveries/1/retry"),
    ] {
        let (status, body) = admin(&server, method, path, Some(valid.clone()), None).await;
        assert_eq!(status, 401, "{method} {path}: {body}");
        let (status, _) = admin(&server, method, path, Some(valid.clone()), Some("wrong key")).await;
        assert_eq!(status, 401, "{method} {path} with a wrong key");
    }
    // What is refused, and why.
    let long_url = format!("{}?{}", receiver.url(), "a".repeat(2048));
    for bad in [
        json!({"url": "ftp://example.com/hook", "secret": secret}),
        json!({"url": "not a url", "secret": secret}),
        json!({"url": long_url, "secret": secret}),
        json!({"url": receiver.url(), "secret": "too short"}),
        json!({"url": receiver.url(), "secret": "s".repeat(257)}),
        json!({"url": receiver.url(), "secret": secret, "events": ["message.sent"]}),
        json!({"url": receiver.url()}),
        json!({"secret": secret}),
    ] {
        let (status, body) = admin(&server, "POST", "/v1/admin/webhooks", Some(bad.clone()), Some(API_KEY)).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(body["error"]["code"], "invalid", "{body}");
    }

    let (status, created) = admin(&server, "POST", "/v1/admin/webhooks", Some(valid.clone()), Some(API_KEY)).await;
    assert_eq!(status, 201, "{created}");
    let keys: HashSet<&str> = created.as_object().expect("object").keys().map(String::as_str).collect();
    assert_eq!(keys, HashSet::from(["id", "url", "events", "created_at"]), "{created}");
    assert_eq!(created["events"], json!(["message.created", "member.added"]));
    let id = created["id"].as_str().expect("id").to_owned();
    let (status, listed) = admin(&server, "GET", "/v1/admin/webhooks", None, Some(API_KEY)).await;
    assert_eq!(status, 200, "{listed}");
    let hooks = listed["webhooks"].as_array().expect("webhooks");
    let ids: Vec<&str> = hooks.iter().map(|h| h["id"].as_str().unwrap_or_default()).collect();
    assert_eq!(ids, ["config", id.as_str()], "the configured endpoint first");
    assert_eq!(hooks[0]["source"], "config");
    assert_eq!(hooks[0]["url"], receiver.url().as_str());
    assert_eq!(hooks[1]["source"], "api");
    assert!(!listed.to_string().contains(secret) && !listed.to_string().contains(HOOK_SECRET), "{listed}");
    assert!(!created.to_string().contains(secret), "{created}");

    // Every delivery fails: after two seconds of retries each one is failed,
    // and listed for each endpoint.
    receiver.fail_all(Some(500));
    let mut ada = server.connect("ada").await;
    let room = group_with(&mut ada, "public", &[]).await;
    let sent = send_message(&mut ada, &room, "m1", "will fail").await;
    let failed_path = format!("/v1/admin/webhooks/{id}/deliveries?status=failed");
    let failed = eventually("a failed delivery", Duration::from_secs(15), || async {
        let (status, body) = admin(&server, "GET", &failed_path, None, Some(API_KEY)).await;
        assert_eq!(status, 200, "{body}");
        body["deliveries"].as_array().cloned().filter(|list| !list.is_empty())
    })
    .await;
    assert_eq!(failed.len(), 1, "only message.created was for this endpoint: {failed:?}");
    let delivery = &failed[0];
    assert_eq!(delivery["type"], "message.created");
    assert_eq!(delivery["status"], "failed");
    assert!(delivery["attempts"].as_u64().is_some_and(|a| a >= 2), "{delivery}");
    assert!(delivery["last_error"].as_str().is_some_and(|e| e.contains("500")), "{delivery}");
    assert!(delivery["created_at"].is_string() && delivery["next_attempt_at"].is_null(), "{delivery}");
    let attempted: Vec<Hit> = receiver
        .hits()
        .into_iter()
        .filter(|h| h.event["id"] == delivery["event_id"] && h.kind() == "message.created")
        .collect();
    assert!(!attempted.is_empty() && attempted.iter().all(|h| h.event["data"]["message"] == sent));
    // Failed is the default status; the configured endpoint has every event.
    eventually("both events failed for the configured endpoint", Duration::from_secs(15), || async {
        let (status, body) = admin(&server, "GET", "/v1/admin/webhooks/config/deliveries", None, Some(API_KEY)).await;
        assert_eq!(status, 200);
        let kinds: Vec<String> = body["deliveries"]
            .as_array()
            .expect("list")
            .iter()
            .map(|d| d["type"].as_str().unwrap_or_default().to_owned())
            .collect();
        (kinds == ["room.created", "message.created"]).then_some(())
    })
    .await;
    let health = eventually("three failed deliveries in /health", Duration::from_secs(10), || async {
        let (_, health) = server.get("/health", None).await;
        (health["bridges"]["webhooks"]["failed"] == 3).then_some(health)
    })
    .await;
    assert!(health["bridges"]["webhooks"]["last_error"].as_str().is_some_and(|e| e.contains("500")), "{health}");

    // Retried by hand once the receiver is back: delivered, no longer failed.
    receiver.fail_all(None);
    let delivery_id = delivery["id"].as_i64().expect("delivery id");
    let retry = format!("/v1/admin/webhooks/{id}/deliveries/{delivery_id}/retry");
    let (status, body) = admin(&server, "POST", &retry, None, Some(API_KEY)).await;
    assert_eq!(status, 204, "{body}");
    receiver
        .wait("the retried delivery", Duration::from_secs(10), true, |hits| {
            hits.iter().any(|h| h.event["id"] == delivery["event_id"])
        })
        .await;
    let (status, _) = admin(&server, "POST", &retry, None, Some(API_KEY)).await;
    assert_eq!(status, 404, "no longer failed");
    let (status, body) =
        admin(&server, "GET", &format!("/v1/admin/webhooks/{id}/deliveries?status=failed"), None, Some(API_KEY)).await;
    assert_eq!((status, body["deliveries"].as_array().map(Vec::len)), (200, Some(0)), "{body}");

    // Errors of the delivery routes.
    for (path, want) in [
        ("/v1/admin/webhooks/nope/deliveries".to_owned(), 404),
        (format!("/v1/admin/webhooks/{id}/deliveries?status=stuck"), 400),
        (format!("/v1/admin/webhooks/{id}/deliveries?limit=0"), 400),
        (format!("/v1/admin/webhooks/{id}/deliveries?status=pending&limit=5000"), 200),
    ] {
        let (status, body) = admin(&server, "GET", &path, None, Some(API_KEY)).await;
        assert_eq!(status, want, "{path}: {body}");
    }
    for (path, want) in [
        ("/v1/admin/webhooks/nope/deliveries/1/retry".to_owned(), 404),
        (format!("/v1/admin/webhooks/{id}/deliveries/999999/retry"), 404),
        (format!("/v1/admin/webhooks/{id}/deliveries/abc/retry"), 400),
    ] {
        let (status, body) = admin(&server, "POST", &path, None, Some(API_KEY)).await;
        assert_eq!(status, want, "{path}: {body}");
    }

    // Deleting: the configured endpoint cannot be, an unknown one is 404,
    // and a deleted one is gone with its deliveries.
    let (status, body) = admin(&server, "DELETE", "/v1/admin/webhooks/config", None, Some(API_KEY)).await;
    assert_eq!(status, 409, "{body}");
    let (status, _) = admin(&server, "DELETE", "/v1/admin/webhooks/nope", None, Some(API_KEY)).await;
    assert_eq!(status, 404);
    receiver.fail_all(Some(500));
    send_message(&mut ada, &room, "m2", "pending when deleted").await;
    let (status, body) = admin(&server, "DELETE", &format!("/v1/admin/webhooks/{id}"), None, Some(API_KEY)).await;
    assert_eq!(status, 204, "{body}");
    let (status, _) = admin(&server, "DELETE", &format!("/v1/admin/webhooks/{id}"), None, Some(API_KEY)).await;
    assert_eq!(status, 404, "deleted already");
    let (status, _) = admin(&server, "GET", &format!("/v1/admin/webhooks/{id}/deliveries"), None, Some(API_KEY)).await;
    assert_eq!(status, 404);
    let (_, listed) = admin(&server, "GET", "/v1/admin/webhooks", None, Some(API_KEY)).await;
    assert_eq!(listed["webhooks"].as_array().map(Vec::len), Some(1), "{listed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_most_twenty_endpoints_are_added() {
    let server = TestServer::start().await;
    for i in 0..20 {
        let body = json!({"url": format!("https://example.com/hook/{i}"), "secret": "a secret for each of them"});
        let (status, created) = admin(&server, "POST", "/v1/admin/webhooks", Some(body), Some(API_KEY)).await;
        assert_eq!(status, 201, "{created}");
    }
    let body = json!({"url": "https://example.com/hook/21", "secret": "a secret for each of them"});
    let (status, refused) = admin(&server, "POST", "/v1/admin/webhooks", Some(body), Some(API_KEY)).await;
    assert_eq!(status, 409, "{refused}");
    assert_eq!(refused["error"]["code"], "conflict");
}

/// The compiled server on `url`, with the receiver as its configured endpoint.
async fn process_for(url: &str, log: std::path::PathBuf, receiver: &Receiver) -> ServerProcess {
    let hook = receiver.url();
    ServerProcess::start_url(
        url,
        log,
        &[
            ("CHAT_WEBHOOK_URL", hook.as_str()),
            ("CHAT_WEBHOOK_SECRET", HOOK_SECRET),
            ("CHAT_COMMANDS_PER_SECOND", "100000"),
            ("CHAT_COMMAND_BURST", "100000"),
        ],
    )
    .await
}

/// Sends messages to a room of a server process, kills it with SIGKILL right
/// after the acknowledgements, restarts it on the same database, and checks
/// that every acknowledged message reaches the receiver (repeats allowed).
async fn killed_and_restarted(url: &str) {
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut first = process_for(url, dir.path().join("first.log"), &receiver).await;
    let mut ada = first.connect("ada").await;
    let room = group_with(&mut ada, "public", &[]).await;
    let mut refs = Vec::new();
    for i in 0..150 {
        let data = json!({"room_id": room, "client_msg_id": format!("k{i}"), "body": format!("kill {i}")});
        refs.push(ada.send("message:send", data).await);
    }
    let mut acked = Vec::new();
    for r in &refs {
        let reply = ada.reply(r).await;
        assert_eq!(reply["ok"], true, "{reply}");
        acked.push(reply["data"]["message"]["id"].as_str().expect("message id").to_owned());
    }
    first.kill();
    let before = first_of_each(&receiver.hits()).iter().filter(|h| h.kind() == "message.created").count();

    let _second = process_for(url, dir.path().join("second.log"), &receiver).await;
    // The killed process's lease runs out (15 s) before the new one delivers.
    let hits = receiver
        .wait("every acknowledged message", Duration::from_secs(45), true, |hits| {
            let ids: HashSet<&str> = hits
                .iter()
                .filter(|h| h.kind() == "message.created")
                .filter_map(|h| h.event["data"]["message"]["id"].as_str())
                .collect();
            acked.iter().all(|id| ids.contains(id.as_str()))
        })
        .await;
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for hit in hits.iter().filter(|h| h.kind() == "message.created") {
        assert_signed(hit, HOOK_SECRET);
        *seen.entry(hit.id()).or_default() += 1;
    }
    eprintln!(
        "kill test on {}: {before} of {} delivered before the kill; {} repeats after",
        url.split(':').next().unwrap_or_default(),
        acked.len(),
        seen.values().map(|n| n - 1).sum::<usize>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_delivers_every_message_after_its_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    killed_and_restarted(&format!("sqlite://{}", dir.path().join("chat.db").display())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_on_postgres_delivers_every_message_after_its_restart() {
    let Some(schema) = TempSchema::create("webhooks_kill").await else {
        return;
    };
    killed_and_restarted(&schema.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_on_postgres_deliver_each_event_once_in_order() {
    let Some(schema) = TempSchema::create("webhooks_two_processes").await else {
        return;
    };
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let url = schema.url();
    let (a, b) = tokio::join!(
        process_for(&url, dir.path().join("a.log"), &receiver),
        process_for(&url, dir.path().join("b.log"), &receiver),
    );
    let mut ada = a.connect("ada").await;
    let room = group_with(&mut ada, "public", &[]).await;
    let mut bob = b.connect("bob").await;
    bob.ok("room:join", json!({"room_id": room})).await;
    // Both processes store messages of the room; one of them delivers.
    for i in 0..40 {
        let (client, who) = if i % 2 == 0 { (&mut ada, "ada") } else { (&mut bob, "bob") };
        send_message(client, &room, &format!("{who}-{i}"), "from two processes").await;
    }
    let created = receiver.delivered("message.created", 40, Duration::from_secs(30)).await;
    let seqs: Vec<u64> = created.iter().map(|e| e["data"]["message"]["seq"].as_u64().expect("seq")).collect();
    assert_eq!(seqs, (1..=40).collect::<Vec<_>>(), "in the room's order");
    let joined = receiver.delivered("member.added", 1, Duration::from_secs(10)).await;
    assert_eq!(joined[0]["data"]["user"]["id"], "bob");
}

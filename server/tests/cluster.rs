//! Many `chat-server` processes as one server (PROTOCOL.md section 11):
//! three real processes on one PostgreSQL database, with NATS and again with
//! Redis, each broker a server process of the test's own so that it can be
//! stopped and started again. Needs `CHAT_TEST_POSTGRES_URL`, `nats-server`
//! and `redis-server`; without them every test says that it skips (and
//! fails instead under `CI=true`).

mod support;

use std::collections::HashSet;
use std::time::Duration;

use chat_broker::testing::BrokerServer;
use chat_store_sql::testing::TempSchema;
use serde_json::{Value, json};
use support::{Client, ServerProcess, group_with, http_client, status_and_json};
use tokio::time::Instant;

#[derive(Clone, Copy, Debug)]
enum Kind {
    Nats,
    Redis,
}

/// The broker server of a test, or `None` when its binary is missing
/// (outside CI; the helper says so).
async fn broker_server(kind: Kind) -> Option<BrokerServer> {
    match kind {
        Kind::Nats => BrokerServer::nats().await,
        Kind::Redis => BrokerServer::redis().await,
    }
}

struct Cluster {
    _schema: TempSchema,
    broker: BrokerServer,
    _dir: tempfile::TempDir,
    processes: Vec<ServerProcess>,
}

impl Cluster {
    /// Three processes on a fresh schema and the broker, started together.
    async fn start(test: &str, kind: Kind) -> Option<Cluster> {
        let schema = TempSchema::create(test).await?;
        let broker = broker_server(kind).await?;
        let dir = tempfile::tempdir().expect("temp dir");
        let url = schema.url();
        let env = [("CHAT_BROKER_URL", broker.url()), ("CHAT_BROKER_PREFIX", format!("t{}", std::process::id()))];
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (a, b, c) = tokio::join!(
            ServerProcess::start_url(&url, dir.path().join("a.log"), &env),
            ServerProcess::start_url(&url, dir.path().join("b.log"), &env),
            ServerProcess::start_url(&url, dir.path().join("c.log"), &env),
        );
        let cluster = Cluster { _schema: schema, broker, _dir: dir, processes: vec![a, b, c] };
        cluster.until_all_see_each_other().await;
        Some(cluster)
    }

    async fn until_all_see_each_other(&self) {
        let want = self.processes.len() - 1;
        for process in &self.processes {
            eventually(Duration::from_secs(10), || async {
                let body = health(process).await;
                body["broker"] == "ok" && body["peers"] == want
            })
            .await;
        }
    }

    fn logs(&self) -> String {
        self.processes.iter().map(ServerProcess::logs).collect::<Vec<_>>().join("\n---\n")
    }
}

async fn health(process: &ServerProcess) -> Value {
    let response = http_client().get(format!("http://{}/health", process.addr)).send().await.expect("GET /health");
    let (status, body) = status_and_json(response).await;
    assert_eq!(status, 200, "{body}");
    body
}

/// Polls `check` every 50 ms until it holds; fails after `within`.
async fn eventually<F, Fut>(within: Duration, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    loop {
        if check().await {
            return started.elapsed();
        }
        assert!(started.elapsed() < within, "not within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn send_data(room: &str, client_msg_id: &str, body: &str) -> Value {
    json!({"room_id": room, "client_msg_id": client_msg_id, "body": body})
}

/// Pipelines `n` sends without waiting; returns their refs.
async fn send_many(client: &mut Client, room: &str, prefix: &str, n: usize) -> Vec<Value> {
    let mut refs = Vec::with_capacity(n);
    for i in 0..n {
        refs.push(
            client.send("message:send", send_data(room, &format!("{prefix}-{i}"), &format!("{prefix} {i}"))).await,
        );
    }
    refs
}

/// Waits for the replies of `refs`; the acknowledged messages.
async fn acks(client: &mut Client, refs: &[Value]) -> Vec<Value> {
    let mut acked = Vec::with_capacity(refs.len());
    for r in refs {
        let reply = client.reply(r).await;
        assert_eq!(reply["ok"], true, "{reply}");
        acked.push(reply["data"]["message"].clone());
    }
    acked
}

/// Reads `n` `message:new` events, each within `within`; fails on a seq out
/// of order or seen twice.
async fn messages(client: &mut Client, n: usize, within: Duration) -> Vec<Value> {
    let mut got: Vec<Value> = Vec::with_capacity(n);
    for _ in 0..n {
        let message = client.expect_event_within("message:new", within).await["message"].clone();
        if let Some(last) = got.last() {
            assert!(message["seq"].as_u64() > last["seq"].as_u64(), "seq {} after {}", message["seq"], last["seq"]);
        }
        got.push(message);
    }
    got
}

/// Asserts that `user` is not announced offline to `client` within `window`.
async fn no_offline(client: &mut Client, user: &str, window: Duration) {
    let deadline = Instant::now() + window;
    loop {
        match client.read(deadline).await {
            support::Read::Frame(f) => {
                let d = &f["data"];
                assert!(
                    !(f["type"] == "presence:changed" && d["user_id"] == user && d["status"] == "offline"),
                    "{user} went offline: {f}"
                );
            }
            support::Read::Timeout => return,
            support::Read::Closed(c) => panic!("closed: {c:?}"),
        }
    }
}

fn seqs(messages: &[Value]) -> Vec<u64> {
    messages.iter().map(|m| m["seq"].as_u64().expect("seq")).collect()
}

async fn online_ids(process: &ServerProcess, token_user: &str) -> HashSet<String> {
    let response = http_client()
        .get(format!("http://{}/v1/users/online", process.addr))
        .bearer_auth(support::token(token_user))
        .send()
        .await
        .expect("GET /v1/users/online");
    let (status, body) = status_and_json(response).await;
    assert_eq!(status, 200, "{body}");
    body["users"].as_array().expect("users").iter().map(|u| u["user"]["id"].as_str().expect("id").to_owned()).collect()
}

// ---------------------------------------------------------------------------

async fn one_server(test: &str, kind: Kind) {
    let Some(cluster) = Cluster::start(test, kind).await else { return };
    let [a, b, c] = [&cluster.processes[0], &cluster.processes[1], &cluster.processes[2]];
    let mut alice = a.connect("alice").await;
    let mut bob = b.connect("bob").await;
    let mut carol = c.connect("carol").await;
    let mut carol_on_a = a.connect("carol").await;
    let room = group_with(&mut alice, "public", &[]).await;
    for client in [&mut alice, &mut bob, &mut carol, &mut carol_on_a] {
        client.ok("room:join", json!({"room_id": room})).await;
    }

    // Two processes take sends for one room at once: every client sees
    // every message once, in seq order.
    let n = 100;
    let (alice_refs, bob_refs) = tokio::join!(send_many(&mut alice, &room, "a", n), send_many(&mut bob, &room, "b", n));
    let from_both = messages(&mut carol, 2 * n, Duration::from_secs(10)).await;
    assert_eq!(seqs(&from_both), (1..=2 * n as u64).collect::<Vec<_>>());
    let (alice_acked, bob_acked) = (acks(&mut alice, &alice_refs).await, acks(&mut bob, &bob_refs).await);
    assert_eq!(alice_acked.len() + bob_acked.len(), 2 * n);
    let at_alice = messages(&mut alice, n, Duration::from_secs(10)).await;
    assert!(at_alice.iter().all(|m| m["sender_id"] == "bob"), "alice sees bob's, her own came as replies");
    let at_bob = messages(&mut bob, n, Duration::from_secs(10)).await;
    assert!(at_bob.iter().all(|m| m["sender_id"] == "alice"));
    assert_eq!(messages(&mut carol_on_a, 2 * n, Duration::from_secs(10)).await.len(), 2 * n);
    carol.expect_no_event("message:new", Duration::from_millis(500)).await;

    // Typing, receipts and joins cross processes.
    bob.ok("typing:start", json!({"room_id": room})).await;
    let typing = alice.expect_event("typing:user").await;
    assert_eq!((typing["user_id"].as_str(), typing["typing"].as_bool()), (Some("bob"), Some(true)));
    carol.ok("message:read", json!({"room_id": room, "up_to_seq": 2 * n})).await;
    let status = bob.expect_event_where("message:status", |d| d["user_id"] == "carol").await;
    assert_eq!(status["up_to_seq"], 2 * n);
    let mut dave = c.connect("dave").await;
    dave.ok("room:join", json!({"room_id": room})).await;
    let joined = alice.expect_event_where("user:joined", |d| d["user"]["id"] == "dave").await;
    assert_eq!(joined["room_id"], room.as_str());

    // room:added reaches a user on another process.
    let private = group_with(&mut alice, "private", &["bob"]).await;
    let added = bob.expect_event("room:added").await;
    assert_eq!(added["room"]["id"], private.as_str());

    // Presence counts every process, and every process agrees.
    for process in [a, b, c] {
        let want: HashSet<String> = ["alice", "bob", "carol", "dave"].map(String::from).into();
        eventually(Duration::from_secs(5), || async { online_ids(process, "alice").await == want }).await;
    }
    // A session of bob's on another process keeps him online; the last one
    // closing takes him offline, once.
    let bob2 = a.connect("bob").await;
    alice.take_kept("presence:changed");
    drop(bob);
    no_offline(&mut alice, "bob", Duration::from_secs(1)).await;
    bob2.close().await;
    let offline = alice.expect_event_where("presence:changed", |d| d["user_id"] == "bob").await;
    assert_eq!(offline["status"], "offline");

    // Leaving through one process ends the room on the user's sessions on
    // every process before the reply; nothing posted later reaches them.
    carol_on_a.ok("room:leave", json!({"room_id": room})).await;
    let removed = carol.expect_event("room:removed").await;
    assert_eq!(removed["room_id"], room.as_str());
    assert_eq!(carol_on_a.expect_event("room:removed").await["room_id"], room.as_str());
    alice.ok("message:send", send_data(&room, "after-leave", "after carol left")).await;
    let left = dave.expect_event_where("user:left", |d| d["user_id"] == "carol").await;
    assert_eq!(left["room_id"], room.as_str());
    dave.expect_event_where("message:new", |d| d["message"]["client_msg_id"] == "after-leave").await;
    carol.expect_no_event("message:new", Duration::from_secs(1)).await;
    carol_on_a.expect_no_event("message:new", Duration::from_millis(200)).await;

    // A client moving to another process resumes with since_seq.
    let last_seen = 2 * n as u64 + 1;
    drop(dave);
    alice.ok("message:send", send_data(&room, "while-away", "while dave moves")).await;
    let mut dave = a.connect("dave").await;
    dave.ok("room:join", json!({"room_id": room, "since_seq": last_seen})).await;
    let replayed = messages(&mut dave, 1, Duration::from_secs(5)).await;
    assert_eq!(replayed[0]["client_msg_id"], "while-away");
    dave.expect_no_event("message:new", Duration::from_millis(500)).await;

    // Moderation holds on every process at once: a member removed and
    // banned through one process is out on another before the reply, and
    // cannot join back through a third; settings reach every process.
    let mut erin = c.connect("erin").await;
    let mut fay = b.connect("fay").await;
    for client in [&mut erin, &mut fay] {
        client.ok("room:join", json!({"room_id": room})).await;
    }
    alice.ok("room:remove", json!({"room_id": room, "user_id": "erin", "ban": true})).await;
    assert_eq!(erin.expect_event("room:removed").await["room_id"], room.as_str());
    let left = fay.expect_event_where("user:left", |d| d["user_id"] == "erin").await;
    assert_eq!(left["room_id"], room.as_str());
    assert_eq!(erin.fail("message:send", send_data(&room, "banned", "let me in")).await, "not_member");
    let mut erin_on_b = b.connect("erin").await;
    assert_eq!(erin_on_b.fail("room:join", json!({"room_id": room})).await, "forbidden");
    let updated = alice.ok("room:update", json!({"room_id": room, "topic": "one server"})).await;
    assert_eq!(updated["room"]["topic"], "one server");
    let seen = fay.expect_event("room:updated").await;
    assert_eq!(seen["room"]["topic"], "one server");

    for process in &cluster.processes {
        assert!(!process.logs().contains("ERROR"), "a process logged an error:\n{}", cluster.logs());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_processes_on_nats_are_one_server() {
    one_server("three_processes_on_nats_are_one_server", Kind::Nats).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_processes_on_redis_are_one_server() {
    one_server("three_processes_on_redis_are_one_server", Kind::Redis).await;
}

// ---------------------------------------------------------------------------

async fn kill_mid_stream(test: &str, kind: Kind) {
    let Some(mut cluster) = Cluster::start(test, kind).await else { return };
    let mut alice = cluster.processes[0].connect("alice").await;
    let mut bob = cluster.processes[1].connect("bob").await;
    let room = group_with(&mut alice, "private", &["bob"]).await;
    alice.ok("room:join", json!({"room_id": room})).await;
    bob.ok("room:join", json!({"room_id": room})).await;
    alice.take_kept("presence:changed");

    // Bob sends through B; B is killed with -9 while his sends go on.
    let refs = send_many(&mut bob, &room, "b", 200).await;
    let mut acked = acks(&mut bob, &refs[..50]).await;
    cluster.processes[1].kill();
    let killed_at = Instant::now();
    // Whatever else B acknowledged before it died counts too.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match bob.read(deadline).await {
            support::Read::Frame(f) if f["type"] == "reply" && f["ok"] == true => {
                acked.push(f["data"]["message"].clone())
            }
            support::Read::Frame(_) => {}
            support::Read::Timeout | support::Read::Closed(_) => break,
        }
    }

    // Every acknowledged message is stored and reaches alice, in order, once.
    // Acks of pipelined sends come as their commits finish, not in seq order.
    let acked_seqs: Vec<u64> = seqs(&acked);
    let newest = acked_seqs.iter().copied().max();
    let mut seen: Vec<Value> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while seqs(&seen).last().copied() < newest {
        assert!(Instant::now() < deadline, "acked {acked_seqs:?}, alice saw {:?}", seqs(&seen));
        let message = alice.expect_event_within("message:new", Duration::from_secs(20)).await["message"].clone();
        if let Some(last) = seen.last() {
            assert!(message["seq"].as_u64() > last["seq"].as_u64(), "order: {} after {}", message["seq"], last["seq"]);
        }
        seen.push(message);
    }
    assert!(killed_at.elapsed() <= Duration::from_secs(16), "the last acked message took {:?}", killed_at.elapsed());
    let seen_seqs: HashSet<u64> = seqs(&seen).into_iter().collect();
    let missing: Vec<u64> = acked_seqs.iter().copied().filter(|s| !seen_seqs.contains(s)).collect();
    assert!(missing.is_empty(), "acknowledged but not delivered: {missing:?}; seen {:?}", seqs(&seen));
    let history = support::all_history(&mut alice, &room).await;
    let stored: HashSet<u64> = support::seqs(&history).into_iter().collect();
    assert!(acked_seqs.iter().all(|s| stored.contains(s)), "every acknowledged message is stored");

    // Bob goes offline elsewhere within 15 s of the kill.
    let deadline = killed_at + Duration::from_secs(15);
    let offline = loop {
        match alice.read(deadline).await {
            support::Read::Frame(f)
                if f["type"] == "presence:changed"
                    && f["data"]["user_id"] == "bob"
                    && f["data"]["status"] == "offline" =>
            {
                break f["data"].clone();
            }
            support::Read::Frame(_) => {}
            other => panic!("bob not offline within 15 s of the kill: {other:?}\n{}", cluster.logs()),
        }
    };
    assert!(offline["last_seen"].is_string());
    let a = &cluster.processes[0];
    assert!(!online_ids(a, "alice").await.contains("bob"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_killed_mid_stream_on_nats_loses_nothing_acknowledged() {
    kill_mid_stream("a_process_killed_mid_stream_on_nats_loses_nothing_acknowledged", Kind::Nats).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_killed_mid_stream_on_redis_loses_nothing_acknowledged() {
    kill_mid_stream("a_process_killed_mid_stream_on_redis_loses_nothing_acknowledged", Kind::Redis).await;
}

// ---------------------------------------------------------------------------

async fn broker_restart(test: &str, kind: Kind) {
    let Some(cluster) = Cluster::start(test, kind).await else { return };
    let mut alice = cluster.processes[0].connect("alice").await;
    let mut carol = cluster.processes[2].connect("carol").await;
    let mut dora = cluster.processes[0].connect("dora").await;
    let room = group_with(&mut alice, "public", &[]).await;
    for client in [&mut alice, &mut carol, &mut dora] {
        client.ok("room:join", json!({"room_id": room})).await;
    }
    let refs = send_many(&mut alice, &room, "before", 10).await;
    let before = acks(&mut alice, &refs).await;
    assert_eq!(seqs(&messages(&mut carol, 10, Duration::from_secs(5)).await), seqs(&before));

    cluster.broker.stop().await;
    // Within 5 s every process says so, still answering 200.
    for process in &cluster.processes {
        eventually(Duration::from_secs(5), || async {
            let body = health(process).await;
            body["broker"] == "unavailable" && body["status"] == "degraded"
        })
        .await;
    }
    // Commands are answered and clients of the same process served.
    let refs = send_many(&mut alice, &room, "during", 20).await;
    let during = acks(&mut alice, &refs).await;
    assert_eq!(seqs(&messages(&mut dora, 30, Duration::from_secs(5)).await)[10..], seqs(&during)[..]);

    cluster.broker.restart().await;
    let back = Instant::now();
    // Within 10 s of the broker's return, carol has what she missed, without
    // reconnecting, in order and once.
    let missed = messages(&mut carol, 20, Duration::from_secs(10)).await;
    assert_eq!(seqs(&missed), seqs(&during));
    assert!(back.elapsed() <= Duration::from_secs(10), "filled after {:?}", back.elapsed());
    for process in &cluster.processes {
        eventually(Duration::from_secs(10), || async { health(process).await["broker"] == "ok" }).await;
    }
    let refs = send_many(&mut alice, &room, "after", 5).await;
    let after = acks(&mut alice, &refs).await;
    assert_eq!(seqs(&messages(&mut carol, 5, Duration::from_secs(5)).await), seqs(&after));
    carol.expect_no_event("message:new", Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_nats_server_restarted_mid_stream_leaves_no_gap_and_no_double() {
    broker_restart("the_nats_server_restarted_mid_stream_leaves_no_gap_and_no_double", Kind::Nats).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_server_restarted_mid_stream_leaves_no_gap_and_no_double() {
    broker_restart("the_redis_server_restarted_mid_stream_leaves_no_gap_and_no_double", Kind::Redis).await;
}

// ---------------------------------------------------------------------------

async fn broker_comes_later(test: &str, kind: Kind) {
    let Some(schema) = TempSchema::create(test).await else { return };
    let Some(broker) = broker_server(kind).await else { return };
    broker.stop().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let env = [("CHAT_BROKER_URL", broker.url()), ("CHAT_BROKER_PREFIX", format!("late{}", std::process::id()))];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let url = schema.url();
    let (a, b) = tokio::join!(
        ServerProcess::start_url(&url, dir.path().join("a.log"), &env),
        ServerProcess::start_url(&url, dir.path().join("b.log"), &env),
    );
    // Started without their broker: degraded, serving their own clients.
    for process in [&a, &b] {
        let body = health(process).await;
        assert_eq!(
            (body["status"].as_str(), body["broker"].as_str()),
            (Some("degraded"), Some("unavailable")),
            "{body}"
        );
    }
    let mut alice = a.connect("alice").await;
    let mut bob = b.connect("bob").await;
    let room = group_with(&mut alice, "public", &[]).await;
    alice.ok("room:join", json!({"room_id": room})).await;
    bob.ok("room:join", json!({"room_id": room})).await;
    alice.ok("message:send", send_data(&room, "early", "before the broker")).await;

    broker.restart().await;
    for process in [&a, &b] {
        eventually(Duration::from_secs(10), || async {
            let body = health(process).await;
            body["broker"] == "ok" && body["status"] == "ok" && body["peers"] == 1
        })
        .await;
    }
    // What was sent before the broker came reaches bob by the comparison
    // with the store, and what is sent after, live.
    let early = messages(&mut bob, 1, Duration::from_secs(10)).await;
    assert_eq!(early[0]["client_msg_id"], "early");
    alice.ok("message:send", send_data(&room, "late", "after the broker")).await;
    let late = messages(&mut bob, 1, Duration::from_secs(5)).await;
    assert_eq!(late[0]["client_msg_id"], "late");
    bob.expect_no_event("message:new", Duration::from_millis(500)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_started_before_nats_join_when_it_comes() {
    broker_comes_later("processes_started_before_nats_join_when_it_comes", Kind::Nats).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_started_before_redis_join_when_it_comes() {
    broker_comes_later("processes_started_before_redis_join_when_it_comes", Kind::Redis).await;
}

/// An admin call with the test API key to one process: its status.
async fn admin_post(process: &ServerProcess, path: &str) -> u16 {
    let response = http_client()
        .post(format!("http://{}{path}", process.addr))
        .header("x-api-key", support::API_KEY)
        .send()
        .await
        .expect("POST");
    response.status().as_u16()
}

/// Whether `process` refuses a session of `user` with 4401.
async fn refuses(process: &ServerProcess, user: &str) -> bool {
    let headers = [("authorization", format!("Bearer {}", support::token(user)))];
    let mut client = Client::open(process.addr, "/v1/ws", &headers).await.expect("the upgrade");
    matches!(client.read(Instant::now() + support::WAIT).await, support::Read::Closed(Some((4401, _))))
}

/// A deactivation through one process closes the user's session on another
/// at once, and every process refuses them until a reactivation through a
/// third (section 9 with section 11: the store is where it is decided, the
/// broker tells the sessions).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deactivation_on_one_process_closes_a_session_on_another() {
    let Some(cluster) = Cluster::start("a_deactivation_on_one_process_closes", Kind::Nats).await else { return };
    let [a, b, c] = [&cluster.processes[0], &cluster.processes[1], &cluster.processes[2]];
    let mut mallory = b.connect("mallory").await;
    let mut alice = b.connect("alice").await;
    let started = Instant::now();
    assert_eq!(admin_post(a, "/v1/admin/users/mallory/deactivate").await, 204);
    mallory.expect_close_within(4401, Duration::from_secs(2)).await;
    assert!(started.elapsed() < Duration::from_secs(2), "closed within {:?}", started.elapsed());
    alice.ok("ping", json!({})).await;
    for process in [a, b, c] {
        assert!(refuses(process, "mallory").await, "{} lets mallory in:\n{}", process.addr, cluster.logs());
    }
    assert_eq!(admin_post(c, "/v1/admin/users/mallory/reactivate").await, 204);
    let mut back = b.connect("mallory").await;
    back.ok("ping", json!({})).await;
}

/// A file uploaded through one process is posted there and read through
/// another, by the link the other process's client was sent (the signing key
/// is the store's, the storage shared), and a removal on a third ends a
/// member's access everywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_uploaded_through_one_process_is_read_through_another() {
    let Some(cluster) = Cluster::start("a_file_uploaded_through_one_process", Kind::Nats).await else { return };
    let [a, b, c] = [&cluster.processes[0], &cluster.processes[1], &cluster.processes[2]];
    let mut alice = a.connect("alice").await;
    let mut bob = b.connect("bob").await;
    let room = group_with(&mut alice, "private", &["bob"]).await;
    bob.ok("room:join", json!({"room_id": room})).await;
    let bytes: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let form = reqwest::multipart::Form::new()
        .part("file", reqwest::multipart::Part::bytes(bytes.clone()).file_name("report.bin"));
    let response = http_client()
        .post(format!("http://{}/v1/attachments", a.addr))
        .bearer_auth(support::token("alice"))
        .multipart(form)
        .send()
        .await
        .expect("upload");
    let (status, file) = status_and_json(response).await;
    assert_eq!(status, 201, "{file}");
    let data = json!({"room_id": room, "client_msg_id": "f", "body": "the report", "attachments": [file["id"]]});
    alice.ok("message:send", data).await;
    let seen = bob.expect_event("message:new").await;
    let url = seen["message"]["attachments"][0]["url"].as_str().expect("a signed link").to_string();
    let got = http_client().get(format!("http://{}{url}", b.addr)).send().await.expect("GET on b");
    assert_eq!(got.status().as_u16(), 200, "{}", cluster.logs());
    assert_eq!(got.bytes().await.expect("body").to_vec(), bytes);
    let path = format!("/v1/attachments/{}", file["id"].as_str().expect("id"));
    let by_token = |process: &ServerProcess| {
        let url = format!("http://{}{path}", process.addr);
        async move { http_client().get(url).bearer_auth(support::token("bob")).send().await.expect("GET").status() }
    };
    assert_eq!(by_token(c).await.as_u16(), 200, "a member, through a third process");
    alice.ok("room:remove", json!({"room_id": room, "user_id": "bob"})).await;
    for process in [a, b, c] {
        assert_eq!(by_token(process).await.as_u16(), 404, "removed, on {}", process.addr);
    }
}

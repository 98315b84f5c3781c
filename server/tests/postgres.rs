//! The server on PostgreSQL: two processes sharing one database, and the
//! database going away and coming back. Needs `CHAT_TEST_POSTGRES_URL`;
//! without it every test says that it skips.

mod support;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use chat_store_sql::testing::TempSchema;
use serde_json::{Value, json};
use support::relay::{Mode, Relay};
use support::{Client, ServerProcess, TestServer, group_with, http_client, status_and_json};
use tokio::time::Instant;

fn send_data(room: &str, client_msg_id: &str, body: &str) -> Value {
    json!({"room_id": room, "client_msg_id": client_msg_id, "body": body})
}

/// Pipelines `n` sends and returns every acknowledged message.
async fn pipeline(client: &mut Client, room: &str, prefix: &str, n: usize) -> Vec<Value> {
    let mut refs = Vec::with_capacity(n);
    for i in 0..n {
        refs.push(
            client.send("message:send", send_data(room, &format!("{prefix}-{i}"), &format!("{prefix} {i}"))).await,
        );
    }
    let mut acked = Vec::with_capacity(n);
    for r in &refs {
        let reply = client.reply(r).await;
        assert_eq!(reply["ok"], true, "{reply}");
        acked.push(reply["data"]["message"].clone());
    }
    acked
}

/// Two `chat-server` processes on the schema, started together: both run
/// the migrations, one of them does the work. The directory holds their logs.
async fn two_processes(schema: &TempSchema) -> (tempfile::TempDir, ServerProcess, ServerProcess) {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = schema.url();
    let (a, b) = tokio::join!(
        ServerProcess::start_url(&url, dir.path().join("a.log"), &[]),
        ServerProcess::start_url(&url, dir.path().join("b.log"), &[]),
    );
    (dir, a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_server_processes_on_one_database_store_one_gapless_room() {
    let Some(schema) = TempSchema::create("two_server_processes_on_one_database_store_one_gapless_room").await else {
        return;
    };
    let (_dir, a, b) = two_processes(&schema).await;
    let mut bob = b.connect("bob").await;
    let mut ada = a.connect("ada").await;
    let room = group_with(&mut ada, "private", &["bob"]).await;
    bob.ok("room:join", json!({"room_id": room})).await;
    let mut ada_on_b = b.connect("ada").await;
    ada_on_b.ok("room:join", json!({"room_id": room})).await;
    let mut bob_on_a = a.connect("bob").await;
    bob_on_a.ok("room:join", json!({"room_id": room})).await;

    // Four connections, two per process, send at once.
    const EACH: usize = 60;
    let clients = [("ada-a", ada), ("bob-b", bob), ("ada-b", ada_on_b), ("bob-a", bob_on_a)];
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|(prefix, mut client)| {
            let room = room.clone();
            tokio::spawn(async move {
                let acked = pipeline(&mut client, &room, prefix, EACH).await;
                (client, acked)
            })
        })
        .collect();
    let mut clients = Vec::new();
    let mut seqs = Vec::new();
    for task in tasks {
        let (client, acked) = task.await.expect("sender task");
        seqs.extend(support::seqs(&acked));
        clients.push(client);
    }
    seqs.sort_unstable();
    let total = (4 * EACH) as u64;
    assert_eq!(seqs, (1..=total).collect::<Vec<_>>(), "acked seqs across both processes are 1..={total}");

    // A retry through the other process is the same message, not a new one.
    let first = support::send_message(&mut clients[0], &room, "once", "sent through a").await;
    let again = support::send_message(&mut clients[2], &room, "once", "retried through b").await;
    assert_eq!(first, again, "the retry answers with the stored message");

    for client in &mut clients[..2] {
        let history = support::all_history(client, &room).await;
        assert_eq!(support::seqs(&history), (1..=total + 1).collect::<Vec<_>>(), "no gap, no duplicate");
        let keys: HashSet<(String, String)> = history
            .iter()
            .map(|m| (m["sender_id"].to_string(), m["client_msg_id"].as_str().expect("client_msg_id").to_owned()))
            .collect();
        assert_eq!(keys.len() as u64, total + 1, "every send stored once");
    }
    for (name, process) in [("a", &a), ("b", &b)] {
        assert!(!process.logs().contains("ERROR"), "process {name} logged an error:\n{}", process.logs());
    }
}

/// Where the test database listens, for putting a relay in front of it.
fn postgres_addr(url: &str) -> SocketAddr {
    let rest = url.split("://").nth(1).expect("a URL");
    let host_port = rest.split('/').next().expect("host").rsplit('@').next().expect("host");
    let host_port = if host_port.contains(':') { host_port.to_owned() } else { format!("{host_port}:5432") };
    let host_port = host_port.replace("localhost", "127.0.0.1");
    host_port.parse().unwrap_or_else(|_| panic!("the test database must be on a numeric address: {host_port}"))
}

/// `/health` as status, body and how long it took.
async fn health(server: &TestServer) -> (u16, Value, Duration) {
    let started = Instant::now();
    let (status, body) =
        status_and_json(http_client().get(server.url("/health")).send().await.expect("GET /health")).await;
    (status, body, started.elapsed())
}

/// Waits until `/health` says ok again.
async fn until_healthy(server: &TestServer, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let (status, body, _) = health(server).await;
        if status == 200 {
            assert_eq!(body["status"], "ok");
            return;
        }
        assert!(Instant::now() < deadline, "still {status} {body} after {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The server through a relay to PostgreSQL, with short database timeouts.
async fn server_behind_relay(test: &str) -> Option<(TempSchema, Relay, TestServer)> {
    let schema = TempSchema::create(test).await?;
    let target = postgres_addr(&schema.url());
    let relay = Relay::start(target).await;
    let url = relay.url_for(&schema.url(), target);
    let server = TestServer::start_with(move |config| {
        config.database_url = url;
        config.database_acquire_timeout_ms = 500;
        config.database_statement_timeout_ms = 1_000;
        support::unthrottle(config);
    })
    .await;
    until_healthy(&server, Duration::from_secs(10)).await;
    Some((schema, relay, server))
}

/// Checks everything the outage must not break, for either way of breaking.
async fn outage(test: &str, mode: Mode) {
    let Some((_schema, relay, server)) = server_behind_relay(test).await else {
        return;
    };
    let mut ada = server.connect("ada").await;
    let mut bob = server.connect("bob").await;
    let room = group_with(&mut ada, "public", &[]).await;
    bob.ok("room:join", json!({"room_id": room})).await;
    let before = pipeline(&mut ada, &room, "before", 20).await;

    relay.set(mode);
    // /health notices within a second, every time it is asked.
    for _ in 0..3 {
        let (status, body, took) = health(&server).await;
        assert_eq!((status, &body["status"], &body["store"]), (503, &json!("degraded"), &json!("unavailable")));
        assert!(took < Duration::from_millis(1_500), "/health took {took:?}");
    }
    // Sends fail as unavailable in bounded time, and the sockets stay open.
    let started = Instant::now();
    let mut refs = Vec::new();
    for i in 0..5 {
        refs.push(ada.send("message:send", send_data(&room, &format!("during-{i}"), "during the outage")).await);
    }
    for r in &refs {
        let reply = ada.reply(r).await;
        assert_eq!(reply["ok"], false, "{reply}");
        assert_eq!(reply["error"]["code"], "unavailable", "{reply}");
    }
    assert!(started.elapsed() < Duration::from_secs(4), "sends took {:?} to fail", started.elapsed());
    // What needs no database still works: typing reaches bob at once.
    ada.ok("typing:start", json!({"room_id": room})).await;
    bob.expect_event("typing:user").await;

    relay.set(Mode::Up);
    until_healthy(&server, Duration::from_secs(10)).await;
    // The same sockets carry on; retrying the failed sends stores each once,
    // whether or not the database had committed them before the break.
    let after = pipeline(&mut ada, &room, "during", 5).await;
    let retried = pipeline(&mut ada, &room, "during", 5).await;
    assert_eq!(after, retried, "a second retry returns the same messages");
    let history = support::all_history(&mut bob, &room).await;
    let n = history.len() as u64;
    assert_eq!(n, 25, "20 before, 5 retried, nothing doubled: {history:?}");
    assert_eq!(support::seqs(&history), (1..=n).collect::<Vec<_>>());
    for acked in &before {
        assert!(history.contains(acked), "an acknowledged message was lost: {acked}");
    }
    // And bob, whose socket lived through it all, sees new messages live.
    support::send_message(&mut ada, &room, "live", "back to normal").await;
    let live = bob.expect_event_where("message:new", |e| e["message"]["client_msg_id"] == "live").await;
    assert_eq!(live["message"]["seq"], 26);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_goes_down_degrades_health_fails_sends_and_recovers() {
    outage("a_database_that_goes_down_degrades_health_fails_sends_and_recovers", Mode::Down).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silently_cut_network_is_treated_like_a_database_outage() {
    outage("a_silently_cut_network_is_treated_like_a_database_outage", Mode::Blackhole).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_subcommand_prepares_a_database_and_refuses_a_newer_one() {
    let Some(schema) = TempSchema::create("migrate_subcommand_prepares_a_database_and_refuses_a_newer_one").await
    else {
        return;
    };
    let migrate = || {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_chat-server"));
        for (key, _) in std::env::vars() {
            if key.starts_with("CHAT_") || key == "RUST_LOG" {
                command.env_remove(key);
            }
        }
        command.arg("migrate").env("CHAT_DATABASE_URL", schema.url()).output().expect("run chat-server migrate")
    };
    let out = migrate();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(log.contains("schema is up to date"), "{log}");
    assert!(!log.contains("postgres@"), "the database user is not logged: {log}");

    // A newer build's migration recorded: the command refuses and says why.
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&schema.url()).await.expect("connect");
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
         VALUES (1000, 'from the future', TRUE, '\\x00', 0)",
    )
    .execute(&mut conn)
    .await
    .expect("record a newer migration");
    let out = migrate();
    assert!(!out.status.success(), "a newer schema must be refused");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("newer than this build supports"), "{log}");
}

/// A user who left a private room through one process cannot post into it
/// through a session on another, whose own record still lists them as
/// joined: the store refuses the append in the transaction that would store
/// it, and the room's seqs stay gapless (issue #21, defect 5).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_who_left_through_one_process_cannot_post_through_another() {
    let Some(schema) = TempSchema::create("a_user_who_left_through_one_process_cannot_post_through_another").await
    else {
        return;
    };
    let (_dir, a, b) = two_processes(&schema).await;
    let mut mallory_on_b = b.connect("mallory").await;
    let mut ada = a.connect("ada").await;
    let room = group_with(&mut ada, "private", &["mallory"]).await;
    mallory_on_b.ok("room:join", json!({"room_id": room})).await;
    let sent = mallory_on_b.ok("message:send", send_data(&room, "m-1", "while a member")).await;
    assert_eq!(sent["message"]["seq"], 1);

    let mut mallory_on_a = a.connect("mallory").await;
    mallory_on_a.ok("room:leave", json!({"room_id": room})).await;

    // B never heard of the leave: its session is still subscribed.
    for i in 0..5 {
        let code = mallory_on_b.fail("message:send", send_data(&room, &format!("m-late-{i}"), "after leaving")).await;
        assert_eq!(code, "not_member", "send {i} after leaving");
    }
    assert_eq!(mallory_on_b.fail("room:history", json!({"room_id": room})).await, "not_member");
    let after = ada.ok("message:send", send_data(&room, "a-1", "still gapless")).await;
    assert_eq!(after["message"]["seq"], 2, "nothing of the refused sends was stored");
    let history = support::all_history(&mut ada, &room).await;
    assert_eq!(support::seqs(&history), [1, 2]);
    assert!(history.iter().all(|m| m["body"] != "after leaving"));
}

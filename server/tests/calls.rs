//! Calls end to end (PROTOCOL.md sections 7 and 12) over real WebSockets:
//! ringing, the first accept winning, signals relayed to the chosen session
//! alone, hang-up, decline, busy, the ring timeout, glare, a dropped
//! connection coming back within the grace or not, and the line every call
//! leaves in the room's history. Each scenario runs on SQLite and, with
//! `CHAT_TEST_POSTGRES_URL`, on PostgreSQL (without it those say that they
//! skip). The last tests put the caller and the callee on two processes of
//! one server, over NATS and over Redis (each needs its server's binary,
//! and PostgreSQL).

mod support;

use std::time::Duration;

use chat_broker::testing::BrokerServer;
use chat_store_sql::testing::TempSchema;
use serde_json::{Value, json};
use support::{Client, ServerProcess, TestServer, all_history, create_room, token};
use tokio::time::Instant;

/// The ring time of the servers here, in seconds: short, so that a timeout
/// is quick to see.
const RING_S: u64 = 3;

#[derive(Clone, Copy, Debug)]
enum Db {
    Sqlite,
    Postgres,
}

/// A server on `db` (and the schema it must outlive), or `None` when
/// PostgreSQL is not configured (after saying so).
async fn server(test: &str, db: Db) -> Option<(TestServer, Option<TempSchema>)> {
    let schema = match db {
        Db::Sqlite => None,
        Db::Postgres => Some(TempSchema::create(test).await?),
    };
    let url = schema.as_ref().map(TempSchema::url);
    let server = TestServer::start_with(move |config| {
        config.call_ring_s = RING_S;
        config.ice_servers = r#"[{"urls":"stun:stun.example.org"},{"urls":"turn:turn.example.org:3478"}]"#.into();
        config.turn_secret = Some("turn-secret".into());
        if let Some(url) = url {
            config.database_url = url;
        }
    })
    .await;
    Some((server, schema))
}

/// Runs one scenario on SQLite and on PostgreSQL.
macro_rules! on_both {
    ($name:ident) => {
        mod $name {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let Some((server, _schema)) = server(concat!(stringify!($name), " on SQLite"), Db::Sqlite).await else {
                    return;
                };
                super::$name(&server).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let Some((server, _schema)) = server(concat!(stringify!($name), " on PostgreSQL"), Db::Postgres).await
                else {
                    return;
                };
                super::$name(&server).await;
            }
        }
    };
}

/// A direct room of `a` and `b`; returns its id.
async fn direct(a: &mut Client, b: &str) -> String {
    let room = create_room(a, json!({"kind": "direct", "members": [b]})).await;
    room["id"].as_str().expect("room id").to_owned()
}

async fn invite(client: &mut Client, room: &str, media: &str) -> Value {
    client.ok("call:invite", json!({"room_id": room, "media": media})).await
}

fn call_id(placed: &Value) -> String {
    placed["call_id"].as_str().expect("call_id").to_owned()
}

/// The call lines of a room's history: (sender, outcome, duration).
async fn call_lines(client: &mut Client, room: &str) -> Vec<(String, String, Option<u64>)> {
    all_history(client, room)
        .await
        .into_iter()
        .filter(|m| m.get("call").is_some())
        .map(|m| {
            assert_eq!(m["body"], "", "a call's line has an empty body: {m}");
            let call = &m["call"];
            (
                m["sender_id"].as_str().unwrap_or_default().to_owned(),
                call["outcome"].as_str().unwrap_or_default().to_owned(),
                call["duration_s"].as_u64(),
            )
        })
        .collect()
}

async fn ring_accept_signal_hang_up(server: &TestServer) {
    let mut ada = server.connect("ada").await;
    let mut bob = server.connect("bob").await;
    let mut bob2 = server.connect("bob").await;
    let room = direct(&mut ada, "bob").await;
    ada.ok("room:join", json!({"room_id": room})).await;

    let placed = invite(&mut ada, &room, "video").await;
    let call = call_id(&placed);
    let ice = placed["ice_servers"].as_array().expect("ice_servers");
    assert_eq!(ice.len(), 2, "{placed}");
    let turn = &ice[1];
    let username = turn["username"].as_str().expect("TURN username");
    assert!(username.ends_with(":ada"), "{username}");
    assert!(turn["credential"].as_str().is_some_and(|c| !c.is_empty()), "{turn}");
    assert!(ice[0].get("username").is_none(), "STUN gets no credentials");

    for b in [&mut bob, &mut bob2] {
        let incoming = b.expect_event("call:incoming").await;
        assert_eq!(incoming["call_id"], call.as_str());
        assert_eq!(incoming["room_id"], room.as_str());
        assert_eq!(incoming["media"], "video");
        assert_eq!(incoming["from"]["id"], "ada", "from is a User: {incoming}");
    }

    bob2.ok("call:accept", json!({"call_id": call})).await;
    let chosen = bob2.ready["session_id"].clone();
    for c in [&mut ada, &mut bob, &mut bob2] {
        let accepted = c.expect_event("call:accepted").await;
        assert_eq!((&accepted["call_id"], &accepted["user_id"]), (&json!(call), &json!("bob")));
        assert_eq!(accepted["session_id"], chosen);
    }
    let elsewhere = bob.expect_event("call:ended").await;
    assert_eq!((&elsewhere["call_id"], &elsewhere["reason"]), (&json!(call), &json!("answered_elsewhere")));
    assert_eq!(bob.fail("call:accept", json!({"call_id": call})).await, "conflict");

    let offer = json!({"type": "offer", "sdp": "v=0\r\n"});
    ada.ok("call:signal", json!({"call_id": call, "to": "bob", "payload": offer})).await;
    let signal = bob2.expect_event("call:signal").await;
    assert_eq!(signal, json!({"call_id": call, "from": "ada", "payload": offer}));
    bob.expect_no_event("call:signal", Duration::from_millis(300)).await;
    let answer = json!({"type": "answer", "sdp": "v=0\r\n"});
    bob2.ok("call:signal", json!({"call_id": call, "to": "ada", "payload": answer})).await;
    assert_eq!(ada.expect_event("call:signal").await["payload"], answer);
    assert_eq!(bob.fail("call:signal", json!({"call_id": call, "to": "ada", "payload": {}})).await, "forbidden");
    let big = "x".repeat(17 * 1024);
    assert_eq!(ada.fail("call:signal", json!({"call_id": call, "to": "bob", "payload": big})).await, "too_large");

    tokio::time::sleep(Duration::from_millis(1_100)).await;
    ada.ok("call:end", json!({"call_id": call})).await;
    for c in [&mut ada, &mut bob2] {
        let ended = c.expect_event_where("call:ended", |e| e["reason"] != "answered_elsewhere").await;
        assert_eq!((&ended["call_id"], &ended["reason"]), (&json!(call), &json!("hangup")));
        assert!(ended["duration_s"].as_u64().is_some_and(|d| d >= 1), "{ended}");
    }
    let line = ada.expect_event_where("message:new", |m| m["message"].get("call").is_some()).await;
    assert_eq!(line["message"]["sender_id"], "ada");
    assert_eq!(line["message"]["call"]["call_id"], call.as_str());
    assert_eq!(line["message"]["call"]["media"], "video");
    let lines = call_lines(&mut bob2, &room).await;
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!((lines[0].0.as_str(), lines[0].1.as_str()), ("ada", "ended"));
    assert!(lines[0].2.is_some_and(|d| d >= 1));

    let (status, body) = server.get("/v1/calls/ice-servers", Some(&token("bob"))).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["ice_servers"][1]["username"].as_str().is_some_and(|u| u.ends_with(":bob")), "{body}");
    let (status, _) = server.get("/v1/calls/ice-servers", None).await;
    assert_eq!(status, 401);
}
on_both!(ring_accept_signal_hang_up);

async fn declined_busy_and_unanswered_calls(server: &TestServer) {
    let mut ada = server.connect("ada").await;
    let mut bob = server.connect("bob").await;
    let mut cat = server.connect("cat").await;
    let ada_bob = direct(&mut ada, "bob").await;
    let cat_bob = direct(&mut cat, "bob").await;

    // Declined.
    let declined = call_id(&invite(&mut ada, &ada_bob, "audio").await);
    bob.expect_event("call:incoming").await;
    bob.ok("call:reject", json!({"call_id": declined})).await;
    assert_eq!(ada.expect_event("call:rejected").await["user_id"], "bob");
    assert_eq!(ada.expect_event("call:ended").await["reason"], "rejected");

    // Not answered: ringing ends after the ring time.
    let started = Instant::now();
    let unanswered = call_id(&invite(&mut ada, &ada_bob, "audio").await);
    bob.expect_event("call:incoming").await;
    let ended = ada.expect_event_within("call:ended", Duration::from_secs(RING_S + 5)).await;
    assert_eq!((&ended["call_id"], &ended["reason"]), (&json!(unanswered), &json!("timeout")));
    assert!(started.elapsed() >= Duration::from_secs(RING_S), "rang {:?}", started.elapsed());
    let ended = bob.expect_event_where("call:ended", |e| e["call_id"] == unanswered.as_str()).await;
    assert_eq!(ended["reason"], "timeout");

    // Busy: bob is in a call with ada when cat calls.
    let talking = call_id(&invite(&mut ada, &ada_bob, "audio").await);
    bob.expect_event("call:incoming").await;
    bob.ok("call:accept", json!({"call_id": talking})).await;
    let busy = call_id(&invite(&mut cat, &cat_bob, "video").await);
    let ended = cat.expect_event("call:ended").await;
    assert_eq!((&ended["call_id"], &ended["reason"]), (&json!(busy), &json!("busy")));
    bob.expect_no_event("call:incoming", Duration::from_millis(300)).await;
    assert_eq!(ada.fail("call:invite", json!({"room_id": ada_bob, "media": "audio"})).await, "conflict");
    bob.ok("call:end", json!({"call_id": talking})).await;

    // The caller gives up while it rings.
    let abandoned = call_id(&invite(&mut cat, &cat_bob, "video").await);
    bob.expect_event_where("call:incoming", |e| e["call_id"] == abandoned.as_str()).await;
    cat.ok("call:end", json!({"call_id": abandoned})).await;
    let ended = bob.expect_event_where("call:ended", |e| e["call_id"] == abandoned.as_str()).await;
    assert_eq!(ended["reason"], "hangup");

    let outcomes = |lines: Vec<(String, String, Option<u64>)>| {
        lines.into_iter().map(|(sender, outcome, _)| format!("{sender}:{outcome}")).collect::<Vec<_>>()
    };
    assert_eq!(outcomes(call_lines(&mut ada, &ada_bob).await), ["ada:rejected", "ada:missed", "ada:ended"]);
    assert_eq!(outcomes(call_lines(&mut cat, &cat_bob).await), ["cat:busy", "cat:missed"]);
}
on_both!(declined_busy_and_unanswered_calls);

async fn two_users_calling_each_other_get_one_call(server: &TestServer) {
    let mut ada = server.connect("ada").await;
    let mut bob = server.connect("bob").await;
    let room = direct(&mut ada, "bob").await;
    // Both invite at once; whichever the store takes first is the call.
    let (ra, rb) = (
        ada.send("call:invite", json!({"room_id": room, "media": "video"})).await,
        bob.send("call:invite", json!({"room_id": room, "media": "video"})).await,
    );
    let (a, b) = (ada.reply(&ra).await, bob.reply(&rb).await);
    assert_eq!((a["ok"].clone(), b["ok"].clone()), (json!(true), json!(true)), "{a} {b}");
    let (a, b) = (&a["data"], &b["data"]);
    assert_eq!(a["call_id"], b["call_id"], "one call: {a} {b}");
    let glares = [a, b].iter().filter(|d| d["glare"] == true).count();
    assert_eq!(glares, 1, "one invite answered the other: {a} {b}");
    let call = a["call_id"].clone();
    for c in [&mut ada, &mut bob] {
        assert_eq!(c.expect_event("call:accepted").await["call_id"], call);
    }
    let (caller, callee) = if a["glare"] == true { (&mut bob, &mut ada) } else { (&mut ada, &mut bob) };
    let to = callee.user_id();
    caller.ok("call:signal", json!({"call_id": call, "to": to, "payload": {"type": "offer"}})).await;
    assert_eq!(callee.expect_event("call:signal").await["call_id"], call);
    caller.ok("call:end", json!({"call_id": call})).await;
    assert_eq!(call_lines(caller, &room).await.len(), 1, "one call, one line");
}
on_both!(two_users_calling_each_other_get_one_call);

async fn a_dropped_participant_comes_back_or_the_call_ends(server: &TestServer) {
    let mut ada = server.connect("ada").await;
    let mut bob = server.connect("bob").await;
    let room = direct(&mut ada, "bob").await;
    let call = call_id(&invite(&mut ada, &room, "video").await);
    bob.expect_event("call:incoming").await;
    bob.ok("call:accept", json!({"call_id": call})).await;
    ada.expect_event("call:accepted").await;

    // Within the grace: the new connection takes the call over.
    ada.close().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut back = server.connect("ada").await;
    let rejoined = back.ok("call:rejoin", json!({"call_id": call})).await;
    assert_eq!(
        (&rejoined["state"], &rejoined["peer"], &rejoined["caller"]),
        (&json!("accepted"), &json!("bob"), &json!(true))
    );
    let notice = bob.expect_event("call:rejoined").await;
    assert_eq!(notice["session_id"], back.ready["session_id"]);
    back.ok("call:signal", json!({"call_id": call, "to": "bob", "payload": {"type": "offer"}})).await;
    bob.expect_event("call:signal").await;
    bob.ok("call:signal", json!({"call_id": call, "to": "ada", "payload": {"type": "answer"}})).await;
    back.expect_event("call:signal").await;
    bob.expect_no_event("call:ended", Duration::from_secs(10)).await;

    // Not coming back: the call ends once the grace has passed.
    let dropped = Instant::now();
    back.close().await;
    let ended = bob.expect_event_within("call:ended", Duration::from_secs(20)).await;
    assert_eq!(ended["reason"], "disconnected");
    assert!(dropped.elapsed() >= Duration::from_secs(9), "ended after {:?}, before the grace", dropped.elapsed());
    let lines = call_lines(&mut bob, &room).await;
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0].1, "ended");
    let mut late = server.connect("ada").await;
    assert_eq!(late.fail("call:rejoin", json!({"call_id": call})).await, "conflict");
}
on_both!(a_dropped_participant_comes_back_or_the_call_ends);

async fn who_may_call(server: &TestServer) {
    let mut ada = server.connect("ada").await;
    let mut bob = server.connect("bob").await;
    server.connect("cat").await;
    let group = create_room(&mut ada, json!({"kind": "group", "name": "g", "members": ["bob", "cat"]})).await;
    let group = group["id"].as_str().expect("id").to_owned();
    assert_eq!(ada.fail("call:invite", json!({"room_id": group, "media": "audio"})).await, "invalid");
    let placed = ada.ok("call:invite", json!({"room_id": group, "media": "audio", "to": "bob"})).await;
    assert_eq!(bob.expect_event("call:incoming").await["call_id"], placed["call_id"]);
    let mut dan = server.connect("dan").await;
    assert_eq!(dan.fail("call:invite", json!({"room_id": group, "media": "audio", "to": "bob"})).await, "not_member");
    assert_eq!(dan.fail("call:accept", json!({"call_id": placed["call_id"]})).await, "not_found");
    assert_eq!(ada.fail("call:invite", json!({"room_id": group, "media": "smell", "to": "bob"})).await, "invalid");
}
on_both!(who_may_call);

// ---------------------------------------------------------------------------
// Across processes

#[derive(Clone, Copy, Debug)]
enum Kind {
    Nats,
    Redis,
}

/// Two processes of one server on PostgreSQL and the broker.
async fn two_processes(
    test: &str,
    kind: Kind,
) -> Option<(TempSchema, BrokerServer, tempfile::TempDir, ServerProcess, ServerProcess)> {
    let schema = TempSchema::create(test).await?;
    let broker = match kind {
        Kind::Nats => BrokerServer::nats().await?,
        Kind::Redis => BrokerServer::redis().await?,
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let url = schema.url();
    let ring = RING_S.to_string();
    let env = [
        ("CHAT_BROKER_URL", broker.url()),
        ("CHAT_BROKER_PREFIX", format!("c{}", std::process::id())),
        ("CHAT_CALL_RING_S", ring),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (a, b) = tokio::join!(
        ServerProcess::start_url(&url, dir.path().join("a.log"), &env),
        ServerProcess::start_url(&url, dir.path().join("b.log"), &env),
    );
    // Until each hears of the other, presence (and so nothing here) is whole.
    let deadline = Instant::now() + Duration::from_secs(10);
    for process in [&a, &b] {
        loop {
            let health: Value = support::http_client()
                .get(format!("http://{}/health", process.addr))
                .send()
                .await
                .expect("GET /health")
                .json()
                .await
                .expect("health JSON");
            if health["broker"] == "ok" && health["peers"] == 1 {
                break;
            }
            assert!(Instant::now() < deadline, "the processes did not meet: {health}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Some((schema, broker, dir, a, b))
}

async fn a_call_between_two_processes(kind: Kind) {
    let test = format!("a_call_between_two_processes over {kind:?}");
    let Some((_schema, _broker, _dir, a, b)) = two_processes(&test, kind).await else { return };
    let mut ada = a.connect("ada").await;
    let mut bob = b.connect("bob").await;
    let mut bob_on_a = a.connect("bob").await;
    let mut cat = a.connect("cat").await;
    let room = direct(&mut ada, "bob").await;
    let cat_bob = direct(&mut cat, "bob").await;

    let call = call_id(&invite(&mut ada, &room, "video").await);
    for c in [&mut bob, &mut bob_on_a] {
        assert_eq!(c.expect_event("call:incoming").await["from"]["id"], "ada");
    }
    bob.ok("call:accept", json!({"call_id": call})).await;
    assert_eq!(ada.expect_event("call:accepted").await["session_id"], bob.ready["session_id"]);
    assert_eq!(bob_on_a.expect_event("call:ended").await["reason"], "answered_elsewhere");

    let offer = json!({"type": "offer", "sdp": "v=0"});
    ada.ok("call:signal", json!({"call_id": call, "to": "bob", "payload": offer})).await;
    assert_eq!(bob.expect_event("call:signal").await["payload"], offer, "the offer crossed to process B");
    bob.ok("call:signal", json!({"call_id": call, "to": "ada", "payload": {"candidate": "c1"}})).await;
    assert_eq!(ada.expect_event("call:signal").await["payload"]["candidate"], "c1");
    bob_on_a.expect_no_event("call:signal", Duration::from_millis(300)).await;

    // Busy is decided by the store, whichever process the callee is on.
    let busy = call_id(&invite(&mut cat, &cat_bob, "audio").await);
    let ended = cat.expect_event("call:ended").await;
    assert_eq!((&ended["call_id"], &ended["reason"]), (&json!(busy), &json!("busy")));

    tokio::time::sleep(Duration::from_millis(1_100)).await;
    bob.ok("call:end", json!({"call_id": call})).await;
    let ended = ada.expect_event_where("call:ended", |e| e["call_id"] == call.as_str()).await;
    assert_eq!(ended["reason"], "hangup");
    assert!(ended["duration_s"].as_u64().is_some_and(|d| d >= 1), "{ended}");
    let lines = call_lines(&mut ada, &room).await;
    assert_eq!(lines.len(), 1, "one line, whichever process ended the call: {lines:?}");
    assert_eq!((lines[0].0.as_str(), lines[0].1.as_str()), ("ada", "ended"));
    assert_eq!(call_lines(&mut cat, &cat_bob).await.len(), 1);

    // A call nobody answers times out, ended by one of the processes.
    let unanswered = call_id(&invite(&mut ada, &room, "audio").await);
    let ended = tokio::time::timeout(
        Duration::from_secs(RING_S + 5),
        bob.expect_event_where("call:ended", |e| e["call_id"] == unanswered.as_str()),
    )
    .await
    .expect("the call times out");
    assert_eq!(ended["reason"], "timeout");
    let lines = call_lines(&mut ada, &room).await;
    assert_eq!(lines.iter().map(|l| l.1.as_str()).collect::<Vec<_>>(), ["ended", "missed"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_between_two_processes_over_nats() {
    a_call_between_two_processes(Kind::Nats).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_between_two_processes_over_redis() {
    a_call_between_two_processes(Kind::Redis).await;
}

//! What survives the end of a server: a graceful shutdown closes sessions with
//! 1001 and returns, and every acknowledged message survives `kill -9`.

mod support;

use std::collections::VecDeque;
use std::time::Duration;

use serde_json::{Value, json};
use support::{Client, ServerProcess, TestServer, group_with, http_client, status_and_json, token};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_sessions_with_1001_and_run_returns() {
    let server = TestServer::start().await;
    let mut ada = server.connect("ada").await;
    let mut bob = server.connect("bob").await;
    let room = group_with(&mut ada, "public", &[]).await;
    let last = support::send_message(&mut ada, &room, "m1", "before shutdown").await;
    let addr = server.addr;
    let stopping = tokio::spawn(server.stop());
    ada.expect_close(1001).await;
    bob.expect_close(1001).await;
    let dir = stopping.await.expect("stop task").expect("run returns Ok");
    // The listener is gone.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "still accepting after run returned");
    // The data is there for the next server.
    let server = TestServer::start_in(dir, |_| {}).await;
    let mut ada = server.connect("ada").await;
    let history = ada.ok("room:history", json!({"room_id": room})).await;
    assert_eq!(history["messages"], json!([last]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_answers_every_stored_send_before_closing() {
    let server = TestServer::unthrottled().await;
    let mut ada = server.connect("ada").await;
    let room = group_with(&mut ada, "public", &[]).await;
    let mut refs = Vec::new();
    for i in 0..200 {
        let data = json!({"room_id": room, "client_msg_id": format!("k{i}"), "body": format!("pending {i}")});
        refs.push(ada.send("message:send", data).await);
    }
    // Stop once commits are under way, with most sends still pending.
    let first = ada.reply(&refs[0]).await;
    assert_eq!(first["ok"], true, "{first}");
    let stopping = tokio::spawn(server.stop());
    let mut acked = vec![first["data"]["message"].clone()];
    acked.extend(acks_until_going_away(&mut ada).await);
    let dir = stopping.await.expect("stop task").expect("run returns Ok");
    assert_acks_are_the_stored_messages(dir, &room, acked).await;
}

/// The messages acknowledged to `client` until the server's close frame,
/// which must be 1001; other replies may only say `unavailable`.
async fn acks_until_going_away(client: &mut Client) -> Vec<Value> {
    let mut acked = Vec::new();
    loop {
        match client.next_read(tokio::time::Instant::now() + support::WAIT).await {
            support::Read::Frame(f) if f["type"] == "reply" && f["ok"] == true => {
                acked.push(f["data"]["message"].clone())
            }
            support::Read::Frame(f) if f["type"] == "reply" => {
                assert_eq!(f["error"]["code"], "unavailable", "a send refused at shutdown: {f}");
            }
            support::Read::Frame(f) => panic!("unexpected {f}"),
            support::Read::Closed(close) => {
                assert_eq!(close.map(|(code, _)| code), Some(1001), "after {} acks", acked.len());
                return acked;
            }
            support::Read::Timeout => panic!("no close frame"),
        }
    }
}

/// Restarts on the stopped server's database and checks that `acked` are
/// exactly the messages stored in `room`: none stored without an ack.
async fn assert_acks_are_the_stored_messages(dir: tempfile::TempDir, room: &str, mut acked: Vec<Value>) {
    let server = TestServer::start_in(dir, |_| {}).await;
    let mut ada = server.connect("ada").await;
    let stored = support::all_history(&mut ada, room).await;
    // Acks of one commit batch may come in any order.
    acked.sort_by_key(|m| m["seq"].as_u64());
    let (acked_seqs, stored_seqs) = (support::seqs(&acked), support::seqs(&stored));
    let unanswered: Vec<u64> = stored_seqs.iter().filter(|s| !acked_seqs.contains(s)).copied().collect();
    assert!(unanswered.is_empty(), "stored but not answered before the close: {unanswered:?}");
    assert_eq!(acked_seqs, stored_seqs, "no ack for a message that is not stored, none twice");
    assert!(acked == stored, "the acks are the stored messages");
}

/// A client that is still sending, and has not read for a while, when the
/// server shuts down: the server reads what it sent until the close
/// handshake, so that closing the socket does not reset the connection and
/// throw away the acks and the close frame still queued for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_reaches_a_client_that_is_behind_and_still_sending() {
    let server = TestServer::unthrottled().await;
    let mut ada = server.connect("ada").await;
    let room = group_with(&mut ada, "public", &[]).await;
    let body = "x".repeat(3_900);
    // About 400 KB of acks, far more than the client's socket buffer holds
    // while it reads nothing, so the server's writes wait.
    for i in 0..100 {
        let data = json!({"room_id": room, "client_msg_id": format!("a{i}"), "body": body});
        ada.send("message:send", data).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stopping = tokio::spawn(server.stop());
    // More input while the server is closing, which it will not act on.
    for i in 0..20 {
        let data = json!({"room_id": room, "client_msg_id": format!("b{i}"), "body": "late"});
        ada.send("message:send", data).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let acked = acks_until_going_away(&mut ada).await;
    assert!(!acked.is_empty(), "no send was acknowledged");
    let dir = stopping.await.expect("stop task").expect("run returns Ok");
    assert_acks_are_the_stored_messages(dir, &room, acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_messages_survive_kill_9() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("chat.db");
    let mut process = ServerProcess::start(&db, dir.path().join("first.log"), &[]).await;
    let bearer = || vec![("authorization", format!("Bearer {}", token("ada")))];
    let mut ada = Client::open(process.addr, "/v1/ws", &bearer()).await.expect("upgrade");
    ada.wait_ready().await;
    let room = group_with(&mut ada, "private", &[]).await;

    // 100 pipelined sends, 20 in flight at a time, every one acknowledged.
    let mut acked: Vec<Value> = Vec::new();
    let mut in_flight = VecDeque::new();
    for i in 0..120 {
        if in_flight.len() == 20 || (i >= 100 && !in_flight.is_empty()) {
            let reply = ada.reply(&in_flight.pop_front().expect("in flight")).await;
            assert_eq!(reply["ok"], true, "{reply}");
            acked.push(reply["data"]["message"].clone());
        }
        if i < 100 {
            let data = json!({"room_id": room, "client_msg_id": format!("k{i}"), "body": format!("durable {i}")});
            in_flight.push_back(ada.send("message:send", data).await);
        }
    }
    assert_eq!(acked.len(), 100);
    // Twenty more in flight at the kill: those that got a reply are promised too.
    for i in 100..120 {
        let data = json!({"room_id": room, "client_msg_id": format!("k{i}"), "body": format!("durable {i}")});
        ada.send("message:send", data).await;
    }
    process.kill();
    loop {
        match ada.next_read(tokio::time::Instant::now() + Duration::from_secs(2)).await {
            support::Read::Frame(f) if f["type"] == "reply" && f["ok"] == true => {
                acked.push(f["data"]["message"].clone())
            }
            support::Read::Frame(_) => {}
            _ => break,
        }
    }

    let process = ServerProcess::start(&db, dir.path().join("second.log"), &[]).await;
    let mut ada = Client::open(process.addr, "/v1/ws", &bearer()).await.expect("upgrade");
    ada.wait_ready().await;
    let stored = support::all_history(&mut ada, &room).await;
    let seqs = support::seqs(&stored);
    assert_eq!(seqs, (1..=stored.len() as u64).collect::<Vec<u64>>(), "no gap after recovery");
    for message in &acked {
        let seq = message["seq"].as_u64().expect("seq");
        assert_eq!(&stored[seq as usize - 1], message, "acknowledged message {seq} is stored as acknowledged");
    }
    // HTTP history agrees.
    let response = http_client()
        .get(format!("http://{}/v1/rooms/{room}/messages?after_seq=0&limit=100", process.addr))
        .bearer_auth(token("ada"))
        .send()
        .await
        .expect("GET");
    let (status, body) = status_and_json(response).await;
    assert_eq!(status, 200);
    let first_page = &stored[..stored.len().min(100)];
    assert!(body["messages"].as_array().is_some_and(|page| page == first_page), "{body}");
    assert_eq!(body["has_more"], stored.len() > 100);
    // The next send gets the next seq, and a resend of an acknowledged key is not stored twice.
    let next = support::send_message(&mut ada, &room, "after-restart", "next").await;
    assert_eq!(next["seq"], stored.len() as u64 + 1);
    let resent = support::send_message(&mut ada, &room, "k0", "durable 0").await;
    assert_eq!(resent, stored[0]);
}

/// A small tmpfs mounted over a temporary directory, unmounted on drop.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    /// Mounts `size` (e.g. `1m`), or `None` where this process may not mount
    /// (not root, or no mount namespace), after saying so.
    fn mount(size: &str, test: &str) -> Option<SmallDisk> {
        let dir = tempfile::tempdir().expect("temp dir");
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .stderr(std::process::Stdio::null())
            .status();
        if !matches!(status, Ok(s) if s.success()) {
            eprintln!("SKIPPED {test}: cannot mount a small tmpfs here (needs root)");
            return None;
        }
        Some(SmallDisk { dir })
    }

    fn resize(&self, size: &str) {
        let status = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(self.dir.path())
            .status()
            .expect("remount");
        assert!(status.success(), "remount to {size}");
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_sends_as_unavailable_and_loses_nothing() {
    let Some(disk) = SmallDisk::mount("1m", "a_full_disk_fails_sends_as_unavailable_and_loses_nothing") else {
        return;
    };
    let db = disk.dir.path().join("chat.db");
    let url = format!("sqlite://{}", db.display());
    let server = TestServer::start_with(move |config| {
        config.database_url = url;
        support::unthrottle(config);
    })
    .await;
    let mut ada = server.connect("ada").await;
    let mut bob = server.connect("bob").await;
    let room = group_with(&mut ada, "public", &[]).await;
    bob.ok("room:join", json!({"room_id": room})).await;

    // Fill the disk with 4,000-byte messages until a send fails.
    let body = "x".repeat(4000);
    let mut acked = Vec::new();
    let mut failure = None;
    for i in 0..1000 {
        let reply =
            ada.request("message:send", json!({"room_id": room, "client_msg_id": format!("m{i}"), "body": body})).await;
        if reply["ok"] == true {
            acked.push(reply["data"]["message"]["seq"].as_u64().expect("seq"));
        } else {
            failure = Some(reply);
            break;
        }
    }
    let failure = failure.expect("a 1 MiB disk fills up within 1000 messages of 4 kB");
    assert_eq!(failure["error"]["code"], "unavailable", "{failure}");
    assert!(!acked.is_empty(), "some messages fitted before the disk was full");

    // The server and both sockets live on; reads still work.
    let history = ada.ok("room:history", json!({"room_id": room, "limit": 100})).await;
    assert_eq!(
        history["messages"].as_array().expect("messages").last().expect("a message")["seq"],
        *acked.last().expect("acked")
    );
    let (status, _) = server.get("/health", None).await;
    assert!(status == 200 || status == 503, "/health answers: {status}");

    // With room again, the same socket sends again, and nothing acked is lost.
    disk.resize("16m");
    let retried = ada
        .ok("message:send", json!({"room_id": room, "client_msg_id": format!("m{}", acked.len()), "body": "fits now"}))
        .await;
    assert_eq!(retried["message"]["seq"], acked.len() as u64 + 1, "the failed send left no gap");
    let stored = support::seqs(&support::all_history(&mut bob, &room).await);
    assert_eq!(stored, (1..=acked.len() as u64 + 1).collect::<Vec<_>>(), "every acknowledged message is stored");
    server.stop().await.expect("a clean stop");
}

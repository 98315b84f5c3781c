//! Messages over real sockets: send, history, edit, delete, idempotent
//! resend, ordering under concurrent sends, resume after `since_seq`,
//! typing and receipts.

mod support;

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{Client, TestServer, group_with, send_message, seqs};

const NO_SUCH_MESSAGE: &str = "01900000-0000-7000-8000-000000000000";

fn send_data(room: &str, client_msg_id: &str, body: &str) -> Value {
    json!({"room_id": room, "client_msg_id": client_msg_id, "body": body})
}

/// Ada on two sessions and Bob, all joined to a private room of theirs.
async fn ada_on_two_devices_and_bob(server: &TestServer) -> (Client, Client, Client, String) {
    let mut ada = server.connect("ada").await;
    let mut ada_phone = server.connect("ada").await;
    let mut bob = server.connect("bob").await;
    let room = group_with(&mut ada, "private", &["bob"]).await;
    ada_phone.ok("room:join", json!({"room_id": room})).await;
    bob.ok("room:join", json!({"room_id": room})).await;
    (ada, ada_phone, bob, room)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_is_answered_to_its_session_and_announced_to_the_others() {
    let server = TestServer::start().await;
    let (mut ada, mut ada_phone, mut bob, room) = ada_on_two_devices_and_bob(&server).await;

    let first = send_message(&mut ada, &room, "c-1", "hello bob").await;
    assert_eq!(first["room_id"], room.as_str());
    assert_eq!(first["seq"], 1);
    assert_eq!(first["sender_id"], "ada");
    assert_eq!(first["client_msg_id"], "c-1");
    assert_eq!(first["body"], "hello bob");
    assert_eq!(first["attachments"], json!([]));
    assert_eq!(first["deleted"], false);
    assert!(first.get("edited_at").is_none() && first.get("reply_to").is_none(), "{first}");
    let created = first["created_at"].as_str().expect("created_at");
    assert!(created.ends_with('Z') && created.split('.').nth(1).is_some_and(|f| f.len() == 4), "millis: {created}");
    let first_id = first["id"].as_str().expect("id");
    assert_eq!(first_id.len(), 36);
    assert_eq!(&first_id[14..15], "7", "a UUIDv7: {first_id}");

    assert_eq!(bob.expect_event("message:new").await["message"], first);
    assert_eq!(ada_phone.expect_event("message:new").await["message"], first, "the sender's other session");

    let data = json!({"room_id": room, "client_msg_id": "c-2", "body": "re", "reply_to": first["id"]});
    let second = bob.ok("message:send", data).await["message"].clone();
    assert_eq!(second["seq"], 2);
    assert_eq!(second["reply_to"], first["id"]);
    assert!(second["id"].as_str() > Some(first_id), "ids sort by time");
    // The sending session got its own message only as the reply.
    assert_eq!(ada.expect_event("message:new").await["message"]["seq"], 2);

    let unknown = json!({"room_id": room, "client_msg_id": "c-3", "body": "re", "reply_to": NO_SUCH_MESSAGE});
    assert_eq!(ada.fail("message:send", unknown).await, "not_found");
    let attached = json!({"room_id": room, "client_msg_id": "c-4", "body": "x", "attachments": ["a1"]});
    assert_eq!(ada.fail("message:send", attached).await, "invalid");
    assert_eq!(ada.fail("message:send", send_data(&room, "", "x")).await, "invalid");
    assert_eq!(ada.fail("message:send", send_data(&room, &"k".repeat(129), "x")).await, "invalid");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_pages_by_seq() {
    let server = TestServer::start_with(|c| c.max_history_page = 20).await;
    let mut ada = server.connect("ada").await;
    let room = group_with(&mut ada, "private", &[]).await;
    let mut refs = Vec::new();
    for i in 1..=25 {
        refs.push(ada.send("message:send", send_data(&room, &format!("h{i}"), &format!("message {i}"))).await);
    }
    for r in &refs {
        assert_eq!(ada.reply(r).await["ok"], true);
    }
    let table: [(Value, Vec<u64>, bool); 8] = [
        (json!({}), (6..=25).collect(), true),
        (json!({"limit": 10}), (16..=25).collect(), true),
        (json!({"before_seq": 16, "limit": 10}), (6..=15).collect(), true),
        (json!({"before_seq": 6, "limit": 10}), (1..=5).collect(), false),
        (json!({"after_seq": 20, "limit": 10}), (21..=25).collect(), false),
        (json!({"after_seq": 5, "limit": 10}), (6..=15).collect(), true),
        (json!({"after_seq": 0, "limit": 500}), (1..=20).collect(), true),
        (json!({"after_seq": 25}), vec![], false),
    ];
    for (query, expected, has_more) in table {
        let mut data = query.clone();
        data["room_id"] = json!(room);
        let page = ada.ok("room:history", data).await;
        let got = seqs(page["messages"].as_array().expect("messages"));
        assert_eq!(got, expected, "{query}");
        assert_eq!(page["has_more"], has_more, "{query}");
    }
    let page = ada.ok("room:history", json!({"room_id": room, "before_seq": 2, "limit": 1})).await;
    assert_eq!(page["messages"][0]["body"], "message 1");
    assert_eq!(ada.fail("room:history", json!({"room_id": room, "limit": 0})).await, "invalid");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edit_and_delete_reach_the_other_sessions() {
    let server = TestServer::start().await;
    let (mut ada, mut ada_phone, mut bob, room) = ada_on_two_devices_and_bob(&server).await;
    let original = send_message(&mut ada, &room, "e1", "helo").await;
    let id = original["id"].clone();

    let edited =
        ada.ok("message:edit", json!({"room_id": room, "message_id": id, "body": "hello"})).await["message"].clone();
    assert_eq!(edited["id"], id);
    assert_eq!(edited["seq"], original["seq"]);
    assert_eq!(edited["body"], "hello");
    assert!(edited["edited_at"].is_string(), "{edited}");
    assert_eq!(bob.expect_event("message:updated").await["message"], edited);
    assert_eq!(ada_phone.expect_event("message:updated").await["message"], edited);
    let edit = |body: &str| json!({"room_id": room, "message_id": id, "body": body});
    assert_eq!(bob.fail("message:edit", edit("mine now")).await, "forbidden", "only the sender edits");
    assert_eq!(bob.fail("message:delete", json!({"room_id": room, "message_id": id})).await, "forbidden");
    let unknown = json!({"room_id": room, "message_id": NO_SUCH_MESSAGE, "body": "x"});
    assert_eq!(ada.fail("message:edit", unknown).await, "not_found");

    let bobs = send_message(&mut bob, &room, "b1", "from bob").await;
    assert_eq!(ada.ok("message:delete", json!({"room_id": room, "message_id": id})).await, json!({}));
    let deleted = bob.expect_event("message:deleted").await;
    assert_eq!(deleted, json!({"room_id": room, "message_id": id}));
    assert_eq!(ada_phone.expect_event("message:deleted").await, deleted);
    assert_eq!(ada.fail("message:edit", edit("again")).await, "conflict");
    // The room's owner may delete someone else's message.
    ada.ok("message:delete", json!({"room_id": room, "message_id": bobs["id"]})).await;
    assert_eq!(bob.expect_event("message:deleted").await["message_id"], bobs["id"]);

    let history = bob.ok("room:history", json!({"room_id": room})).await;
    let messages = history["messages"].as_array().expect("messages");
    assert_eq!(seqs(messages), vec![1, 2], "deleted messages keep their seq");
    assert!(messages.iter().all(|m| m["deleted"] == true), "{history}");
    assert!(messages.iter().all(|m| m["body"] != "hello" && m["body"] != "from bob"), "bodies are gone: {history}");
    // The editing and deleting session heard nothing of its own changes: its
    // first event after them is a new message.
    send_message(&mut bob, &room, "b2", "marker").await;
    let next = ada.next_of(&["message:new", "message:updated", "message:deleted"]).await;
    assert_eq!(next["type"], "message:new", "{next}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resending_a_client_msg_id_stores_one_message() {
    let server = TestServer::start().await;
    let mut ada = server.connect("ada").await;
    let mut bob = server.connect("bob").await;
    let room = group_with(&mut ada, "public", &["bob"]).await;
    bob.ok("room:join", json!({"room_id": room})).await;
    let first = send_message(&mut ada, &room, "same", "once").await;
    let again = send_message(&mut ada, &room, "same", "once").await;
    assert_eq!(again, first);
    // Two resends in flight together (one commit batch) answer the first message too.
    let a = ada.send("message:send", send_data(&room, "twin", "twice")).await;
    let b = ada.send("message:send", send_data(&room, "twin", "twice")).await;
    let (a, b) = (ada.reply(&a).await, ada.reply(&b).await);
    assert_eq!(a["data"]["message"], b["data"]["message"]);
    assert_eq!(a["data"]["message"]["seq"], 2);
    // The same key from another sender is another message.
    let bobs = send_message(&mut bob, &room, "same", "mine").await;
    assert_eq!(bobs["seq"], 3);

    // Bob heard of 1 and 2 once each (3 is his own), then of the marker.
    send_message(&mut ada, &room, "marker", "last").await;
    let mut heard = Vec::new();
    while heard.last() != Some(&4) {
        heard.push(bob.expect_event("message:new").await["message"]["seq"].as_u64().expect("seq"));
    }
    assert_eq!(heard, [1, 2, 4], "one message:new per stored message");
    let history = ada.ok("room:history", json!({"room_id": room})).await;
    assert_eq!(seqs(history["messages"].as_array().expect("messages")), vec![1, 2, 3, 4]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_sends_are_all_acknowledged_in_order() {
    let server = TestServer::start().await;
    let mut owner = server.connect("owner").await;
    let room = group_with(&mut owner, "public", &[]).await;
    let mut listener = server.connect("listener").await;
    listener.ok("room:join", json!({"room_id": room})).await;
    let mut senders = Vec::new();
    for i in 0..4 {
        let mut client = server.connect(&format!("sender{i}")).await;
        client.ok("room:join", json!({"room_id": room})).await;
        senders.push(client);
    }
    let tasks: Vec<_> = senders
        .into_iter()
        .enumerate()
        .map(|(i, mut client)| {
            let room = room.clone();
            tokio::spawn(async move {
                let mut refs = Vec::new();
                for n in 0..50 {
                    let data = send_data(&room, &format!("s{i}-{n}"), &format!("sender {i} message {n}"));
                    refs.push(client.send("message:send", data).await);
                }
                let mut acked = Vec::new();
                for r in &refs {
                    let reply = client.reply(r).await;
                    assert_eq!(reply["ok"], true, "{reply}");
                    acked.push(reply["data"]["message"]["seq"].as_u64().expect("seq"));
                }
                acked
            })
        })
        .collect();
    let mut received = Vec::new();
    while received.len() < 200 {
        received.push(listener.expect_event("message:new").await["message"].clone());
    }
    assert_eq!(seqs(&received), (1..=200).collect::<Vec<u64>>(), "in order, no gap, no duplicate");
    let mut all_acked = Vec::new();
    for task in tasks {
        let acked = task.await.expect("sender");
        assert!(acked.windows(2).all(|w| w[0] < w[1]), "one session's sends keep their order: {acked:?}");
        all_acked.extend(acked);
    }
    all_acked.sort_unstable();
    assert_eq!(all_acked, (1..=200).collect::<Vec<u64>>());
    // Each listener event matches its sender's key: sender i's n-th message precedes its (n+1)-th.
    for i in 0..4 {
        let mine: Vec<String> = received
            .iter()
            .filter(|m| m["sender_id"] == format!("sender{i}"))
            .map(|m| m["client_msg_id"].as_str().unwrap_or("").to_owned())
            .collect();
        let expected: Vec<String> = (0..50).map(|n| format!("s{i}-{n}")).collect();
        assert_eq!(mine, expected);
    }
    listener.expect_no_event("message:new", Duration::from_millis(200)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_replays_what_was_missed_then_goes_live() {
    let server = TestServer::unthrottled().await;
    let mut ada = server.connect("ada").await;
    let room = group_with(&mut ada, "public", &[]).await;
    let mut bob = server.connect("bob").await;
    bob.ok("room:join", json!({"room_id": room})).await;
    for i in 1..=5 {
        send_message(&mut ada, &room, &format!("early{i}"), "before").await;
    }
    let mut seen = Vec::new();
    while seen.len() < 5 {
        seen.push(bob.expect_event("message:new").await["message"]["seq"].as_u64().expect("seq"));
    }
    let since = *seen.last().expect("seen");
    bob.close().await;

    // 700 messages while Bob is away: more than one replay chunk (500).
    const MISSED: u64 = 700;
    let mut refs = VecDeque::new();
    for i in 0..MISSED {
        refs.push_back(ada.send("message:send", send_data(&room, &format!("away{i}"), "while away")).await);
    }
    for r in &refs {
        assert_eq!(ada.reply(r).await["ok"], true);
    }

    // Carol keeps sending while Bob comes back.
    const LIVE: u64 = 150;
    let mut carol = server.connect("carol").await;
    carol.ok("room:join", json!({"room_id": room})).await;
    let live_room = room.clone();
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let live = tokio::spawn(async move {
        let mut started = Some(started_tx);
        let mut in_flight = VecDeque::new();
        for i in 0..LIVE {
            if in_flight.len() == 3 {
                let reply = carol.reply(&in_flight.pop_front().expect("in flight")).await;
                assert_eq!(reply["ok"], true, "{reply}");
                if let Some(tx) = started.take() {
                    let _ = tx.send(());
                }
            }
            in_flight.push_back(carol.send("message:send", send_data(&live_room, &format!("live{i}"), "live")).await);
        }
        for r in &in_flight {
            assert_eq!(carol.reply(r).await["ok"], true);
        }
    });
    let _ = started_rx.await;
    let mut bob = server.connect("bob").await;
    let reference = bob.send("room:join", json!({"room_id": room, "since_seq": since})).await;
    let mut replied = false;
    let mut got = Vec::new();
    let last = since + MISSED + LIVE;
    while got.last().copied() != Some(last) {
        let frame = bob.next_frame().await;
        match frame["type"].as_str() {
            Some("reply") if frame["ref"] == reference => {
                assert_eq!(frame["ok"], true, "{frame}");
                assert!(frame["data"]["last_seq"].as_u64() >= Some(since + MISSED), "{frame}");
                replied = true;
            }
            Some("message:new") => {
                assert!(replied, "a message:new came before the join's reply");
                got.push(frame["data"]["message"]["seq"].as_u64().expect("seq"));
            }
            _ => {}
        }
    }
    live.await.expect("live sender");
    assert_eq!(got, (since + 1..=last).collect::<Vec<u64>>(), "in order, no gap, no duplicate");
    bob.expect_no_event("message:new", Duration::from_millis(200)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_reaches_the_other_members_and_ends_by_itself() {
    let server = TestServer::start().await;
    let mut ada = server.connect("ada").await;
    let mut bob = server.connect("bob").await;
    let room = group_with(&mut ada, "private", &["bob"]).await;
    bob.ok("room:join", json!({"room_id": room})).await;
    let typing = |on: bool| json!({"room_id": room, "user_id": "ada", "typing": on});

    assert_eq!(ada.ok("typing:start", json!({"room_id": room})).await, json!({}));
    assert_eq!(bob.expect_event("typing:user").await, typing(true));
    // A repeated start while typing announces nothing new.
    ada.ok("typing:start", json!({"room_id": room})).await;
    ada.ok("typing:stop", json!({"room_id": room})).await;
    assert_eq!(bob.expect_event("typing:user").await, typing(false));
    // Sending ends typing, announced before the message.
    ada.ok("typing:start", json!({"room_id": room})).await;
    assert_eq!(bob.expect_event("typing:user").await, typing(true));
    send_message(&mut ada, &room, "t1", "done typing").await;
    let next = bob.next_of(&["typing:user", "message:new"]).await;
    assert_eq!((next["type"].as_str(), &next["data"]), (Some("typing:user"), &typing(false)), "{next}");
    assert_eq!(bob.expect_event("message:new").await["message"]["client_msg_id"], "t1");
    // The typist's own session hears only the others.
    bob.ok("typing:start", json!({"room_id": room})).await;
    assert_eq!(ada.expect_event("typing:user").await["user_id"], "bob");
    bob.ok("typing:stop", json!({"room_id": room})).await;
    assert_eq!(ada.expect_event("typing:user").await["typing"], false);
    assert!(ada.take_kept("typing:user").is_empty());

    // Typing ends by itself about 6 s after the last start.
    ada.ok("typing:start", json!({"room_id": room})).await;
    let started = Instant::now();
    assert_eq!(bob.expect_event("typing:user").await, typing(true));
    let ended = bob.expect_event_within("typing:user", Duration::from_secs(9)).await;
    let elapsed = started.elapsed();
    assert_eq!(ended, typing(false));
    assert!(elapsed >= Duration::from_secs(5) && elapsed <= Duration::from_secs(8), "ended after {elapsed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_move_forward_only_and_update_unread_counts() {
    let server = TestServer::start().await;
    let mut ada = server.connect("ada").await;
    let mut bob = server.connect("bob").await;
    let room = group_with(&mut ada, "private", &["bob"]).await;
    bob.ok("room:join", json!({"room_id": room})).await;
    for i in 1..=3 {
        send_message(&mut ada, &room, &format!("r{i}"), "read me").await;
    }
    let summary = |list: &Value| -> (Value, Value) {
        let rooms = list["rooms"].as_array().expect("rooms");
        let mine = rooms.iter().find(|r| r["id"] == room.as_str()).expect("the room is listed");
        (mine["unread"].clone(), mine["read_seq"].clone())
    };
    assert_eq!(summary(&bob.ok("room:list", json!({})).await), (json!(3), json!(0)));
    let status = |kind: &str, seq: u64| json!({"room_id": room, "user_id": "bob", "status": kind, "up_to_seq": seq});

    assert_eq!(bob.ok("message:delivered", json!({"room_id": room, "up_to_seq": 3})).await, json!({}));
    assert_eq!(ada.expect_event("message:status").await, status("delivered", 3));
    bob.ok("message:read", json!({"room_id": room, "up_to_seq": 2})).await;
    assert_eq!(ada.expect_event("message:status").await, status("read", 2));
    assert_eq!(summary(&bob.ok("room:list", json!({})).await), (json!(1), json!(2)));

    // Lower or equal cursors are accepted and change nothing.
    bob.ok("message:read", json!({"room_id": room, "up_to_seq": 1})).await;
    bob.ok("message:read", json!({"room_id": room, "up_to_seq": 2})).await;
    bob.ok("message:delivered", json!({"room_id": room, "up_to_seq": 2})).await;
    assert_eq!(summary(&bob.ok("room:list", json!({})).await), (json!(1), json!(2)));
    bob.ok("message:read", json!({"room_id": room, "up_to_seq": 3})).await;
    assert_eq!(ada.expect_event("message:status").await, status("read", 3), "nothing was emitted in between");
    assert_eq!(summary(&bob.ok("room:list", json!({})).await), (json!(0), json!(3)));
    assert_eq!(bob.ok("room:join", json!({"room_id": room})).await["read_seq"], 3);
    // The reader's own sessions are not told.
    assert!(bob.take_kept("message:status").is_empty());
    assert_eq!(bob.fail("message:read", json!({"room_id": room, "up_to_seq": 4})).await, "invalid");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_reply_carries_every_members_cursors() {
    let server = TestServer::start().await;
    let mut ada = server.connect("ada").await;
    let mut bob = server.connect("bob").await;
    let room = group_with(&mut ada, "private", &["bob"]).await;
    for i in 1..=3 {
        send_message(&mut ada, &room, &format!("c{i}"), "tick me").await;
    }
    bob.ok("room:join", json!({"room_id": room})).await;
    bob.ok("message:delivered", json!({"room_id": room, "up_to_seq": 3})).await;
    bob.ok("message:read", json!({"room_id": room, "up_to_seq": 2})).await;
    // Ada was away for those receipts: a new session learns them from the join reply.
    ada.close().await;
    let mut ada = server.connect("ada").await;
    let joined = ada.ok("room:join", json!({"room_id": room, "since_seq": 3})).await;
    assert_eq!(
        joined["receipts"],
        json!([
            {"user_id": "ada", "delivered_seq": 3, "read_seq": 3},
            {"user_id": "bob", "delivered_seq": 3, "read_seq": 2},
        ])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_since_seq_beyond_the_newest_message_still_gets_live_messages() {
    let server = TestServer::start().await;
    let mut ada = server.connect("ada").await;
    let room = group_with(&mut ada, "public", &[]).await;
    send_message(&mut ada, &room, "m1", "one").await;
    let mut bob = server.connect("bob").await;
    // A stale cursor, from before a restore say, is past the room's newest message.
    let joined = bob.ok("room:join", json!({"room_id": room, "since_seq": 50})).await;
    assert_eq!(joined["last_seq"], 1);
    send_message(&mut ada, &room, "m2", "two").await;
    assert_eq!(bob.expect_event("message:new").await["message"]["seq"], 2, "live messages are not held back");
    // Joining again from 0 replays the whole room, once.
    bob.ok("room:join", json!({"room_id": room, "since_seq": 0})).await;
    send_message(&mut ada, &room, "m3", "three").await;
    let mut got = Vec::new();
    while got.last() != Some(&3) {
        got.push(bob.expect_event("message:new").await["message"]["seq"].as_u64().expect("seq"));
    }
    assert_eq!(got, [1, 2, 3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_ends_when_the_typist_leaves_or_closes_the_last_session() {
    let server = TestServer::start().await;
    let mut ada = server.connect("ada").await;
    let mut bob = server.connect("bob").await;
    let bob_phone = server.connect("bob").await;
    let room = group_with(&mut ada, "public", &["bob"]).await;
    bob.ok("room:join", json!({"room_id": room})).await;
    let typing = |on: bool| json!({"room_id": room, "user_id": "bob", "typing": on});
    bob.ok("typing:start", json!({"room_id": room})).await;
    assert_eq!(ada.expect_event("typing:user").await, typing(true));
    // Another session of Bob's is still open: typing goes on.
    bob.close().await;
    bob_phone.close().await;
    assert_eq!(ada.expect_event_within("typing:user", Duration::from_secs(2)).await, typing(false));
    let mut bob = server.connect("bob").await;
    bob.ok("room:join", json!({"room_id": room})).await;
    bob.ok("typing:start", json!({"room_id": room})).await;
    assert_eq!(ada.expect_event("typing:user").await, typing(true));
    bob.ok("room:leave", json!({"room_id": room})).await;
    assert_eq!(ada.expect_event_within("typing:user", Duration::from_secs(2)).await, typing(false));
    assert_eq!(ada.expect_event("user:left").await["user_id"], "bob");
}

/// `messages:search` over the socket and `GET /v1/search/messages` over
/// HTTP, on the server's store: whole words with case and accents folded, in
/// the rooms the user is a member of now, newest first and paged; edits,
/// deletes and leaving a room change what is found at once; visitors and
/// rooms of others are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_are_searched_over_the_socket_and_http() {
    let server = TestServer::start().await;
    let (mut ada, _, mut bob, room) = ada_on_two_devices_and_bob(&server).await;
    let mut cy = server.connect("cy").await;
    let elsewhere = group_with(&mut cy, "private", &[]).await;
    let first = send_message(&mut ada, &room, "c-1", "Crème brûlée at noon?").await;
    let second = send_message(&mut bob, &room, "c-2", "creme brulee, yes").await;
    send_message(&mut ada, &room, "c-3", "the cremes are gone").await;
    send_message(&mut cy, &elsewhere, "c-4", "creme elsewhere").await;

    let id = |message: &Value| message["id"].as_str().expect("a message id").to_owned();
    let found = |reply: &Value| -> Vec<String> {
        reply["results"]
            .as_array()
            .expect("results")
            .iter()
            .map(|h| h["message"]["id"].as_str().expect("id").to_owned())
            .collect()
    };
    let reply = bob.ok("messages:search", json!({"q": "CRÈME Brulee"})).await;
    assert_eq!(found(&reply), [id(&second), id(&first)], "{reply}");
    assert_eq!(reply["results"][0]["room"]["id"], room.as_str());
    assert!(reply.get("next").is_none(), "one page: {reply}");
    let page = bob.ok("messages:search", json!({"q": "creme", "limit": 1})).await;
    assert_eq!(found(&page), [id(&second)]);
    let next = page["next"].as_str().expect("a next page").to_owned();
    let page = bob.ok("messages:search", json!({"q": "creme", "limit": 1, "before": next})).await;
    assert_eq!(found(&page), [id(&first)], "older");

    // The same over HTTP.
    let (status, body) = server.get("/v1/search/messages?q=creme%20brulee&limit=5", Some(&support::token("bob"))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(found(&body).len(), 2);
    let (status, body) =
        server.get(&format!("/v1/search/messages?q=creme&room_id={elsewhere}"), Some(&support::token("bob"))).await;
    assert_eq!((status, body["error"]["code"].as_str()), (403, Some("forbidden")), "{body}");
    let (status, _) = server.get("/v1/search/messages?q=creme", None).await;
    assert_eq!(status, 401);
    let (status, body) = server.post("/v1/visitor-sessions", &json!({"name": "Vic"}), None).await;
    assert_eq!(status, 201, "{body}");
    let visitor = body["token"].as_str().expect("a visitor token").to_owned();
    let (status, _) = server.get("/v1/search/messages?q=creme", Some(&visitor)).await;
    assert_eq!(status, 403, "visitors may not search");

    // Rules and errors.
    assert_eq!(bob.fail("messages:search", json!({"q": "  !? "})).await, "invalid");
    assert_eq!(bob.fail("messages:search", json!({"q": "x".repeat(201)})).await, "too_large");
    assert_eq!(bob.fail("messages:search", json!({"q": "creme", "room_id": elsewhere})).await, "forbidden");
    assert_eq!(bob.fail("messages:search", json!({"q": "creme", "before": "nope"})).await, "invalid");

    // An edit, a delete and leaving change what is found at once.
    let first_id = id(&first);
    ada.ok("message:edit", json!({"room_id": room, "message_id": first_id.as_str(), "body": "tiramisu then"})).await;
    let reply = bob.ok("messages:search", json!({"q": "tiramisu"})).await;
    assert_eq!(found(&reply), [first_id.as_str()]);
    assert_eq!(found(&bob.ok("messages:search", json!({"q": "noon"})).await).len(), 0, "the old words are gone");
    bob.ok("message:delete", json!({"room_id": room, "message_id": second["id"]})).await;
    assert_eq!(found(&bob.ok("messages:search", json!({"q": "brulee"})).await).len(), 0, "deleted");
    bob.ok("room:leave", json!({"room_id": room})).await;
    assert_eq!(found(&bob.ok("messages:search", json!({"q": "tiramisu"})).await).len(), 0, "left");
    assert_eq!(found(&ada.ok("messages:search", json!({"q": "tiramisu"})).await).len(), 1, "the others still find it");
}

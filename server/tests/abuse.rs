//! The envelope and the limits that protect the server: malformed frames,
//! unknown commands, garbage floods, oversized frames and bodies, command
//! rate limits, and slow consumers.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::{Client, RawWs, TestServer, group_with, send_message, seqs, token, unthrottle};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_get_invalid_and_the_connection_stays_open() {
    let server = TestServer::start().await;
    let mut client = server.connect("ada").await;
    let table = [
        "not json",
        "{\"type\":",
        "[1,2,3]",
        "\"ping\"",
        "42",
        "{}",
        "{\"data\":{}}",
        "{\"type\":7}",
        "{\"type\":null}",
        "{\"type\":[\"ping\"]}",
    ];
    for text in table {
        client.send_text(text).await;
        let frame = client.next_frame().await;
        assert_eq!(frame["type"], "error", "{text}: {frame}");
        assert_eq!(frame["error"]["code"], "invalid", "{text}: {frame}");
        assert!(frame["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{text}");
        // A following command works.
        client.ok("ping", json!({})).await;
    }
    // Bad data for a known command, with a ref, is a failed reply.
    assert_eq!(client.fail("room:join", json!({"room_id": 5})).await, "invalid");
    assert_eq!(client.fail("room:join", json!({"room_id": "not-a-uuid"})).await, "invalid");
    assert_eq!(client.fail("message:send", json!({})).await, "invalid");
    client.ok("ping", json!({})).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_closes_gets_a_close_frame_back() {
    let server = TestServer::start().await;
    let ada = server.connect("ada").await;
    // Without the server's answer, a browser reports the close as unclean (1006).
    assert_eq!(ada.close().await, Some(1000));
    // Before authenticating too.
    let client = Client::open(server.addr, "/v1/ws", &[]).await.expect("upgrade");
    assert_eq!(client.close().await, Some(1000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_commands_get_unknown_command() {
    let server = TestServer::start().await;
    let mut client = server.connect("ada").await;
    let reply = client.request("room:explode", json!({})).await;
    assert_eq!(reply["ok"], false, "{reply}");
    assert_eq!(reply["error"]["code"], "unknown_command", "{reply}");
    // Without a ref the failure is an error frame.
    client.send_text(json!({"type": "room:explode"}).to_string()).await;
    let frame = client.expect_frame("error").await;
    assert_eq!(frame["error"]["code"], "unknown_command", "{frame}");
    client.ok("ping", json!({})).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refs_are_echoed_verbatim_and_successes_without_ref_are_silent() {
    let server = TestServer::start().await;
    let mut client = server.connect("ada").await;
    for reference in [json!("a-1"), json!(0), json!(-3), json!(12.5), json!("x".repeat(128))] {
        client.send_text(json!({"type": "ping", "ref": reference, "data": {}}).to_string()).await;
        let frame = client.next_frame().await;
        assert_eq!(frame["type"], "reply");
        assert_eq!(frame["ref"], reference);
        assert_eq!(frame["ok"], true);
    }
    // A ref that is neither a number nor a short string is invalid.
    client.send_text(json!({"type": "ping", "ref": {"a": 1}}).to_string()).await;
    assert_eq!(client.expect_frame("error").await["error"]["code"], "invalid");
    // A successful command without ref gets no answer: the next frame is the ping's reply.
    client.send_text(json!({"type": "room:list"}).to_string()).await;
    let reference = client.send("ping", json!({})).await;
    let frame = client.next_frame().await;
    assert_eq!(frame["ref"], reference, "{frame}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_than_twenty_bad_frames_in_ten_seconds_close_4400() {
    let server = TestServer::start().await;
    let mut client = server.connect("ada").await;
    for _ in 0..20 {
        client.send_text("garbage").await;
    }
    // Twenty are tolerated.
    for _ in 0..20 {
        assert_eq!(client.expect_frame("error").await["error"]["code"], "invalid");
    }
    client.ok("ping", json!({})).await;
    client.send_text("garbage").await;
    client.expect_close(4400).await;
    // Others are not affected.
    server.connect("ada").await.ok("ping", json!({})).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_frame_closes_1009_and_the_server_goes_on() {
    let server = TestServer::start().await;
    let mut bystander = server.connect("bob").await;
    let mut client = server.connect("ada").await;
    let room = group_with(&mut client, "public", &["bob"]).await;
    bystander.ok("room:join", json!({"room_id": room})).await;
    let big = json!({"type": "message:send", "ref": 1, "data": {
        "room_id": room, "client_msg_id": "big", "body": "x".repeat(4 * 1024 * 1024)
    }});
    let closed = client.send_oversized(big.to_string()).await;
    assert_eq!(closed.map(|(code, _)| code), Some(1009));
    // The other session and new connections are served.
    send_message(&mut bystander, &room, "after", "still here").await;
    let mut again = server.connect("ada").await;
    again.ok("room:join", json!({"room_id": room})).await;
    let history = again.ok("room:history", json!({"room_id": room})).await;
    assert_eq!(seqs(history["messages"].as_array().expect("messages")), vec![1], "the big frame stored nothing");
    // A frame just under the limit is accepted.
    let body = "y".repeat(3000);
    send_message(&mut again, &room, "fits", &body).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_first_frame_closes_1009_before_auth() {
    let server = TestServer::start().await;
    let mut client = Client::open(server.addr, "/v1/ws", &[]).await.expect("upgrade");
    let auth = json!({"type": "auth", "data": {"token": "x".repeat(200_000)}});
    assert_eq!(client.send_oversized(auth.to_string()).await.map(|(code, _)| code), Some(1009));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_frames_are_invalid() {
    let server = TestServer::start().await;
    let mut client = server.connect("ada").await;
    client.send_binary(b"{\"type\":\"ping\"}".to_vec()).await;
    assert_eq!(client.expect_frame("error").await["error"]["code"], "invalid");
    client.ok("ping", json!({})).await;
    // Before auth, a binary frame is not an auth frame.
    let mut client = Client::open(server.addr, "/v1/ws", &[]).await.expect("upgrade");
    client.send_binary(vec![1, 2, 3]).await;
    client.expect_close(4401).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_body_is_too_large() {
    let server = TestServer::start_with(|c| c.max_body_chars = 100).await;
    let mut client = server.connect("ada").await;
    let room = group_with(&mut client, "private", &[]).await;
    let send = |body: String| json!({"room_id": room, "client_msg_id": body.len().to_string(), "body": body});
    assert_eq!(client.fail("message:send", send("x".repeat(101))).await, "too_large");
    // Characters, not bytes, are counted.
    let message = client.ok("message:send", send("é".repeat(100))).await["message"].clone();
    assert_eq!(message["seq"], 1);
    let edit = json!({"room_id": room, "message_id": message["id"], "body": "z".repeat(101)});
    assert_eq!(client.fail("message:edit", edit).await, "too_large");
    assert_eq!(client.fail("message:send", send("  ".into())).await, "invalid", "a blank body");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_beyond_the_burst_are_rate_limited() {
    let server = TestServer::start_with(|c| {
        c.commands_per_second = 1;
        c.command_burst = 5;
    })
    .await;
    let mut client = server.connect("ada").await;
    let mut refs = Vec::new();
    for _ in 0..8 {
        refs.push(client.send("ping", json!({})).await);
    }
    let mut codes = Vec::new();
    for r in &refs {
        let reply = client.reply(r).await;
        codes.push(if reply["ok"] == true { "ok" } else { reply["error"]["code"].as_str().unwrap_or("?") }.to_owned());
    }
    assert_eq!(codes, ["ok", "ok", "ok", "ok", "ok", "rate_limited", "rate_limited", "rate_limited"]);
    // The session stays open and recovers.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    client.ok("ping", json!({})).await;
}

/// A client that stops reading while a room is busy is closed with 4429; the
/// others keep getting every message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_is_closed_4429_and_others_get_everything() {
    let server = TestServer::start_with(|c| {
        c.outbound_queue = 16;
        unthrottle(c);
    })
    .await;
    let mut sender = server.connect("sam").await;
    let mut listener = server.connect("lee").await;
    let room = group_with(&mut sender, "public", &[]).await;
    listener.ok("room:join", json!({"room_id": room})).await;
    // A tiny receive buffer, so that the server's writes block soon.
    let bearer = ("authorization", format!("Bearer {}", token("stu")));
    let mut stalled = Client::open_with_buffer(server.addr, "/v1/ws", &[bearer], Some(4096)).await.expect("upgrade");
    stalled.wait_ready().await;
    stalled.ok("room:join", json!({"room_id": room})).await;

    // From here on `stalled` is not polled. Each body is 4000 characters of
    // four bytes: 16 KB per event.
    const COUNT: u64 = 600;
    let body = "\u{1F600}".repeat(4000);
    let listen = tokio::spawn(async move {
        let mut got = Vec::new();
        while got.len() < COUNT as usize {
            let event = listener.expect_event("message:new").await;
            assert_eq!(event["message"]["body"].as_str().map(|b| b.chars().count()), Some(4000));
            got.push(event["message"]["seq"].as_u64().expect("seq"));
        }
        got
    });
    // At most four sends in flight: a commit fans out at most four events at
    // once, which a reading client's queue of 16 absorbs. (A burst larger than
    // the queue closes even a client that reads as fast as it can.)
    support::send_pipelined(&mut sender, &room, COUNT, &body, 4).await;
    // The server waits (up to its write timeout) to send the close frame, so
    // reading resumes at once.
    let reason = stalled.expect_close_within(4429, Duration::from_secs(8)).await;
    assert!(reason.contains("slow"), "{reason}");
    let metrics = server.metrics().await;
    assert_eq!(support::metric(&metrics, "chat_slow_consumer_closes_total"), 1.0, "the close is counted once");
    let got = listen.await.expect("listener");
    assert_eq!(got, (1..=COUNT).collect::<Vec<u64>>());
    // The sender's session was not affected.
    let last: Value = sender.ok("room:list", json!({})).await;
    assert_eq!(last["rooms"][0]["last_seq"], COUNT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_answers_no_ping_is_closed_after_the_idle_timeout() {
    let server = TestServer::start_with(|c| {
        c.keepalive_s = 1;
        c.idle_timeout_s = 2;
    })
    .await;
    let mut silent = server.connect("ada").await;
    let mut awake = server.connect("bob").await;
    // Bob reads for 4 s, and reading answers the server's pings; Ada's
    // socket is not read, so her pings go unanswered.
    awake.expect_no_event("message:new", Duration::from_secs(4)).await;
    let reason = silent.expect_close_within(1001, Duration::from_secs(6)).await;
    assert_eq!(reason, "idle timeout");
    awake.ok("ping", json!({})).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_frames_after_authentication_count_towards_4400() {
    let server = TestServer::start().await;
    let mut client = server.connect("ada").await;
    let auth = json!({"type": "auth", "data": {"token": token("ada")}});
    client.send_text(auth.to_string()).await;
    let frame = client.expect_frame("error").await;
    assert_eq!(frame["error"]["code"], "invalid", "{frame}");
    // With a ref, the error is the reply to it.
    for i in 0..19 {
        let reference = json!(format!("again-{i}"));
        client.send_text(json!({"type": "auth", "ref": reference, "data": {"token": token("ada")}}).to_string()).await;
        let reply = client.reply(&reference).await;
        assert_eq!((reply["ok"].clone(), reply["error"]["code"].clone()), (json!(false), json!("invalid")), "{reply}");
    }
    client.ok("ping", json!({})).await;
    client.send_text(auth.to_string()).await;
    client.expect_close(4400).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refs_are_measured_in_characters_and_errors_carry_them() {
    let server = TestServer::start().await;
    let mut client = server.connect("ada").await;
    // 128 characters of two and four bytes, written as they are or escaped,
    // are accepted and echoed.
    let table = [
        ("é".repeat(128), json!("é".repeat(128)).to_string()),
        ("é".repeat(128), format!("\"{}\"", "\\u00e9".repeat(128))),
        ("\u{1F600}".repeat(128), format!("\"{}\"", "\\ud83d\\ude00".repeat(128))),
    ];
    for (expected, written) in table {
        client.send_text(format!(r#"{{"type":"ping","ref":{written},"data":{{}}}}"#)).await;
        let frame = client.next_frame().await;
        assert_eq!((frame["type"].as_str(), frame["ok"].as_bool()), (Some("reply"), Some(true)), "{written}: {frame}");
        assert_eq!(frame["ref"], json!(expected));
    }
    // A character more is refused, in a reply to that ref.
    for long in ["é".repeat(129), "x".repeat(129)] {
        client.send_text(json!({"type": "ping", "ref": long, "data": {}}).to_string()).await;
        let frame = client.next_frame().await;
        assert_eq!(frame["type"], "reply", "{frame}");
        assert_eq!(frame["ref"], json!(long));
        assert_eq!((frame["ok"].clone(), frame["error"]["code"].clone()), (json!(false), json!("invalid")));
    }
    // Whatever else is wrong with a frame, an error for it carries a ref that
    // can be read.
    for text in [
        r#"{"ref":"r1","data":{}}"#,
        r#"{"type":7,"ref":"r1"}"#,
        r#"{"type":null,"ref":"r1","data":{}}"#,
        r#"{"type":"room:join","ref":"r1","data":5}"#,
        r#"{"type":"auth","ref":"r1","data":{}}"#,
    ] {
        client.send_text(text).await;
        let frame = client.next_frame().await;
        assert_eq!(frame["type"], "reply", "{text}: {frame}");
        assert_eq!(frame["ref"], "r1", "{text}: {frame}");
        assert_eq!(frame["error"]["code"], "invalid", "{text}: {frame}");
    }
    client.ok("ping", json!({})).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_that_is_not_utf8_closes_1007() {
    let server = TestServer::start().await;
    let mut ws = RawWs::connect(server.addr, Some(&token("ada"))).await;
    assert_eq!(ws.next_json().await["type"], "ready");
    ws.send_frame(0x81, true, &[b'{', 0xff, 0xfe, b'}']).await;
    assert_eq!(ws.close_code().await, Some(1007));
    // In the auth frame's place too.
    let mut ws = RawWs::connect(server.addr, None).await;
    ws.send_frame(0x81, true, &[0xc3, 0x28]).await;
    assert_eq!(ws.close_code().await, Some(1007));
    server.connect("ada").await.ok("ping", json!({})).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_violations_close_1002() {
    let server = TestServer::start().await;
    let ping = br#"{"type":"ping","data":{}}"#;
    let table: [(&str, u8, bool, &[u8]); 5] = [
        ("an unmasked frame", 0x81, false, ping),
        ("a reserved bit", 0x81 | 0x40, true, ping),
        ("an unknown opcode", 0x83, true, ping),
        ("a fragmented control frame", 0x09, true, b"x"),
        ("a continuation of nothing", 0x80, true, ping),
    ];
    for (what, first, masked, payload) in table {
        let mut ws = RawWs::connect(server.addr, Some(&token("ada"))).await;
        assert_eq!(ws.next_json().await["type"], "ready");
        ws.send_frame(first, masked, payload).await;
        assert_eq!(ws.close_code().await, Some(1002), "{what}");
    }
    // Before authentication too.
    let mut ws = RawWs::connect(server.addr, None).await;
    ws.send_frame(0x81, false, ping).await;
    assert_eq!(ws.close_code().await, Some(1002));
    server.connect("ada").await.ok("ping", json!({})).await;
}

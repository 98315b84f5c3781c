//! Connections that cost the server without asking anything of it: headers
//! that never finish, idle keep-alives, slow bodies, and one address (or
//! everyone) opening more connections than the server will hold.

mod support;

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use serde_json::Value;
use support::{API_KEY, Client, TestServer, http_client_from, read_response, tcp_from, wait_closed};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite;

fn loopback(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

/// Writes `lines` one at a time, `every` apart, until the server stops
/// taking them.
fn trickle(mut to: tokio::net::tcp::OwnedWriteHalf, lines: &'static str, every: Duration) {
    tokio::spawn(async move {
        for line in lines.split_inclusive('\n').cycle() {
            if to.write_all(line.as_bytes()).await.is_err() {
                return;
            }
            tokio::time::sleep(every).await;
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_trickled_headers_are_closed_after_the_header_timeout() {
    let server = TestServer::start_with(|c| {
        c.header_timeout_s = 1;
        c.http_idle_timeout_s = 30;
    })
    .await;
    let started = Instant::now();
    let mut silent = TcpStream::connect(server.addr).await.expect("connect");
    // A header line every 200 ms: bytes keep coming, the head never ends.
    let trickled = TcpStream::connect(server.addr).await.expect("connect");
    let (mut trickled_in, mut trickled_out) = trickled.into_split();
    trickled_out.write_all(b"GET /health HTTP/1.1\r\nHost: test\r\n").await.expect("write");
    trickle(trickled_out, "X-Trickle: 1\r\n", Duration::from_millis(200));
    // A whole upgrade but its final CRLF.
    let mut upgrade = TcpStream::connect(server.addr).await.expect("connect");
    let request = "GET /v1/ws HTTP/1.1\r\nHost: test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
                   Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
    upgrade.write_all(request.as_bytes()).await.expect("write");

    let limit = Duration::from_secs(6);
    let closed = [
        ("silent", wait_closed(&mut silent, limit).await),
        ("trickled", wait_closed(&mut trickled_in, limit).await),
        ("unfinished upgrade", wait_closed(&mut upgrade, limit).await),
    ];
    for (what, after) in closed {
        assert!(after.is_some(), "the {what} connection is still open after {limit:?}");
    }
    assert!(started.elapsed() >= Duration::from_millis(900), "closed before the timeout: {:?}", started.elapsed());
    let (status, _) = server.get("/health", None).await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let server = TestServer::start_with(|c| {
        c.header_timeout_s = 1;
        c.http_idle_timeout_s = 3;
    })
    .await;
    let mut conn = TcpStream::connect(server.addr).await.expect("connect");
    conn.write_all(b"GET /health HTTP/1.1\r\nHost: test\r\n\r\n").await.expect("write");
    let (status, _, _) = read_response(&mut conn).await;
    assert_eq!(status, 200);
    let answered = Instant::now();
    // Past the header timeout the connection is still there: waiting for a
    // request is not sending one slowly.
    tokio::time::sleep(Duration::from_millis(1800)).await;
    let mut byte = [0u8; 1];
    let open = matches!(conn.try_read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock);
    assert!(open, "an idle keep-alive was closed at the header timeout");
    assert!(wait_closed(&mut conn, Duration::from_secs(5)).await.is_some(), "still open 7 s after its response");
    let idle = answered.elapsed();
    assert!(idle >= Duration::from_millis(2800), "closed after {idle:?} of idleness");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_request_body_is_answered_408_and_closed() {
    let server = TestServer::start_with(|c| {
        c.body_timeout_s = 1;
        c.http_idle_timeout_s = 30;
    })
    .await;
    let conn = TcpStream::connect(server.addr).await.expect("connect");
    let (mut from, mut to) = conn.into_split();
    let head = format!(
        "POST /v1/admin/users HTTP/1.1\r\nHost: test\r\nx-api-key: {API_KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: 4000\r\n\r\n{{\"id\":"
    );
    to.write_all(head.as_bytes()).await.expect("write");
    // A byte every 100 ms: never silent, never done.
    trickle(to, " \n", Duration::from_millis(100));
    let started = Instant::now();
    let (status, headers, body) = read_response(&mut from).await;
    assert_eq!(status, 408, "{}", String::from_utf8_lossy(&body));
    assert!(started.elapsed() < Duration::from_secs(4), "answered after {:?}", started.elapsed());
    assert!(headers.iter().any(|(n, v)| n == "connection" && v.eq_ignore_ascii_case("close")), "{headers:?}");
    let body: Value = serde_json::from_slice(&body).expect("a JSON error");
    assert!(body["error"]["message"].is_string(), "{body}");
    assert!(wait_closed(&mut from, Duration::from_secs(3)).await.is_some(), "the connection stays open");
}

/// Opens raw connections from 127.0.0.1 that each got a `/health` answer on
/// keep-alive, retrying refused ones, until `count` are open.
async fn hold_answered(server: &TestServer, count: usize) -> Vec<TcpStream> {
    let mut held = Vec::new();
    let deadline = Instant::now() + support::WAIT;
    while held.len() < count {
        assert!(Instant::now() < deadline, "only {} of {count} slots came free", held.len());
        let mut conn = TcpStream::connect(server.addr).await.expect("connect");
        conn.write_all(b"GET /health HTTP/1.1\r\nHost: test\r\n\r\n").await.expect("write");
        match read_response(&mut conn).await.0 {
            200 => held.push(conn),
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    held
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_holds_at_most_its_cap_of_connections() {
    let server = TestServer::start_with(|c| {
        c.max_connections_per_ip = 4;
        c.header_timeout_s = 60;
    })
    .await;
    // A WebSocket counts like any connection, for as long as it is open.
    let ws = server.connect("ada").await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(TcpStream::connect(server.addr).await.expect("connect"));
    }
    // The fifth from 127.0.0.1 is refused with 429...
    let (status, body) =
        support::status_and_json(http_client_from(loopback(1)).get(server.url("/health")).send().await.expect("GET"))
            .await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "rate_limited", "{body}");
    // ...and so is a WebSocket, before its upgrade.
    let bearer = ("authorization", format!("Bearer {}", support::token("bob")));
    match Client::open(server.addr, "/v1/ws", &[bearer]).await {
        Err(tungstenite::Error::Http(response)) => assert_eq!(response.status(), 429),
        Err(other) => panic!("refused without an HTTP answer: {other}"),
        Ok(_) => panic!("a fifth connection from one address was upgraded"),
    }
    // Another address is served as usual.
    let (status, body) =
        support::status_and_json(http_client_from(loopback(2)).get(server.url("/health")).send().await.expect("GET"))
            .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["connections"], 1, "the refused WebSocket opened no session");

    // Closing connections frees their slots: all four, and no more.
    drop(held);
    assert_eq!(ws.close().await, Some(1000));
    let _held = hold_answered(&server, 4).await;
    let mut fifth = TcpStream::connect(server.addr).await.expect("connect");
    fifth.write_all(b"GET /health HTTP/1.1\r\nHost: test\r\n\r\n").await.expect("write");
    let (status, headers, _) = read_response(&mut fifth).await;
    assert_eq!(status, 429);
    assert!(headers.iter().any(|(n, v)| n == "connection" && v == "close"), "{headers:?}");
    assert!(wait_closed(&mut fifth, Duration::from_secs(2)).await.is_some(), "a refused connection is closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_process_wide_cap_answers_503() {
    let server = TestServer::start_with(|c| {
        c.max_connections = 3;
        c.header_timeout_s = 60;
    })
    .await;
    let mut held = Vec::new();
    for last in 1..=3 {
        held.push(tcp_from(loopback(last), server.addr).await);
    }
    let (status, body) =
        support::status_and_json(http_client_from(loopback(4)).get(server.url("/health")).send().await.expect("GET"))
            .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "unavailable", "{body}");
    drop(held.pop());
    let deadline = Instant::now() + support::WAIT;
    loop {
        let response = http_client_from(loopback(4)).get(server.url("/health")).send().await.expect("GET");
        if response.status() == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "the closed connection's slot never came free");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

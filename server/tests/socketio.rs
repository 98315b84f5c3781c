//! The Socket.IO transport (section 10 of the wire contract) with real,
//! independent clients: each test starts a server of its own and runs one
//! of the client test files of `chat-transport-socketio/tests/clients`
//! against it (Node's `socket.io-client` and `ws`, python-socketio), passing
//! the server's URL, its HS256 secret and its API key as `CHAT_URL`,
//! `CHAT_JWT_SECRET` and `CHAT_API_KEY`. A missing Node (or npm, when
//! `node_modules` must be installed) or python-socketio fails the test when
//! `CI=true`, and skips it, saying so, elsewhere.
//!
//! The slow consumer is tested here in Rust, speaking Engine.IO by hand, so
//! that one client can stop reading while others go on.

mod support;

use std::collections::VecDeque;
use std::fs::File;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use chat_server::Config;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use support::{API_KEY, SECRET, TestServer, WAIT, token, unthrottle};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

/// Longest one client test file may run before it is killed.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(90);

/// The folder of the client tests.
fn clients_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../chat-transport-socketio/tests/clients")
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// `Some` when the client runtime is there; otherwise fails the test when
/// `CI=true`, or prints `SKIPPED: …why…` and gives `None`.
fn require<T>(test: &str, found: &Result<T, String>) -> Option<T>
where
    T: Clone,
{
    match found {
        Ok(value) => Some(value.clone()),
        Err(why) if in_ci() => panic!("{test}: {why} (CI=true, so this fails instead of skipping)"),
        Err(why) => {
            // Straight to stderr, past the test harness's capture, so that
            // the skip shows in `cargo test`'s output.
            let _ = writeln!(std::io::stderr(), "SKIPPED: {test}: {why}");
            None
        }
    }
}

/// Runs `command` to the end (at most `limit`), its output in one string.
fn run_to_end(mut command: Command, limit: Duration) -> Result<(bool, String), String> {
    let log = tempfile::NamedTempFile::new().map_err(|e| format!("a log file: {e}"))?;
    let out = log.reopen().map_err(|e| e.to_string())?;
    let err = out.try_clone().map_err(|e| e.to_string())?;
    command.stdin(Stdio::null()).stdout(Stdio::from(out)).stderr(Stdio::from(err));
    let mut child = command.spawn().map_err(|e| format!("cannot start {:?}: {e}", command.get_program()))?;
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            break Some(status);
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(25));
    };
    let mut output = String::new();
    let _ = std::io::Read::read_to_string(&mut File::open(log.path()).map_err(|e| e.to_string())?, &mut output);
    match status {
        Some(status) => Ok((status.success(), output)),
        None => Ok((false, format!("{output}\n-- killed after {limit:?}"))),
    }
}

/// Node with the clients' packages installed (`npm ci` once, when
/// `node_modules` is missing), or why not.
fn node() -> &'static Result<(), String> {
    static NODE: OnceLock<Result<(), String>> = OnceLock::new();
    NODE.get_or_init(|| {
        let version = Command::new("node").arg("--version").output().map_err(|e| format!("no node ({e})"))?;
        let version = String::from_utf8_lossy(&version.stdout).trim().to_owned();
        let major: u32 = version.trim_start_matches('v').split('.').next().and_then(|m| m.parse().ok()).unwrap_or(0);
        if major < 18 {
            return Err(format!("node {version} is too old; the client tests need 18 or newer"));
        }
        let dir = clients_dir();
        let installed =
            ["socket.io-client", "ws"].iter().all(|p| dir.join("node_modules").join(p).join("package.json").exists());
        if !installed {
            let mut npm = Command::new("npm");
            npm.args(["ci", "--no-audit", "--no-fund", "--loglevel=error"]).current_dir(&dir);
            match run_to_end(npm, Duration::from_secs(300)) {
                Ok((true, _)) => {}
                Ok((false, output)) => return Err(format!("npm ci in {} failed:\n{output}", dir.display())),
                Err(e) => return Err(format!("npm is needed to install the clients' packages: {e}")),
            }
        }
        Ok(())
    })
}

/// The Python interpreter with python-socketio's client, or why not.
/// `CHAT_TEST_PYTHON` names another interpreter than `python3`.
fn python() -> &'static Result<String, String> {
    static PYTHON: OnceLock<Result<String, String>> = OnceLock::new();
    PYTHON.get_or_init(|| {
        let python = std::env::var("CHAT_TEST_PYTHON").unwrap_or_else(|_| "python3".to_owned());
        let mut check = Command::new(&python);
        check.args(["-c", "import socketio, engineio, websocket, requests"]);
        match run_to_end(check, Duration::from_secs(60)) {
            Ok((true, _)) => Ok(python),
            Ok((false, output)) => Err(format!(
                "{python} has no python-socketio client (pip install -r \
                 chat-transport-socketio/tests/clients/requirements.txt): {}",
                output.trim()
            )),
            Err(e) => Err(format!("no {python}: {e}")),
        }
    })
}

/// Runs a client test program against `server`; asserts that it exits 0,
/// printing its output either way (shown by cargo test on failure).
async fn run_clients(server: &TestServer, program: &str, args: &[&str]) {
    let mut command = Command::new(program);
    command
        .args(args)
        .current_dir(clients_dir())
        .env("CHAT_URL", server.url(""))
        .env("CHAT_JWT_SECRET", SECRET)
        .env("CHAT_API_KEY", API_KEY)
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env("no_proxy", "127.0.0.1,localhost")
        .env("PYTHONUNBUFFERED", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1");
    for proxy in ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"] {
        command.env_remove(proxy);
    }
    let what = format!("{program} {}", args.join(" "));
    let (success, output) = tokio::task::spawn_blocking(move || run_to_end(command, SCRIPT_TIMEOUT))
        .await
        .expect("the runner thread")
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    println!("---- {what}\n{output}");
    assert!(success, "{what} failed:\n{output}");
}

/// Runs one Node test file against a server configured by `tweak`.
async fn node_test(test: &str, file: &str, tweak: impl FnOnce(&mut Config)) {
    let found = tokio::task::spawn_blocking(node).await.expect("the runner thread");
    if require(test, found).is_none() {
        return;
    }
    let server = TestServer::start_with(tweak).await;
    run_clients(&server, "node", &["--test-reporter=spec", file]).await;
}

fn visitors_unlimited(config: &mut Config) {
    config.visitor_sessions_per_minute = 10_000;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_connect_and_auth() {
    node_test("node_connect_and_auth", "auth.test.mjs", |_| {}).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_every_command_with_its_ack_and_the_aliases() {
    node_test("node_every_command_with_its_ack_and_the_aliases", "commands.test.mjs", |_| {}).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_events_between_socketio_clients() {
    node_test("node_events_between_socketio_clients", "events.test.mjs", |_| {}).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_native_and_socketio_clients_share_rooms() {
    node_test("node_native_and_socketio_clients_share_rooms", "native.test.mjs", |_| {}).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_support_widget_dialect() {
    node_test("node_support_widget_dialect", "widget.test.mjs", visitors_unlimited).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_resume_with_since_seq() {
    node_test("node_resume_with_since_seq", "resume.test.mjs", |_| {}).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_token_expiring_while_connected() {
    // The engine keeps a session for its expiry leeway (5 s, not
    // configurable by chat-server) past the token's `exp`.
    node_test("node_token_expiring_while_connected", "expiry.test.mjs", |_| {}).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_rate_and_frame_limits() {
    node_test("node_rate_and_frame_limits", "limits.test.mjs", |c| {
        c.commands_per_second = 5;
        c.command_burst = 5;
        c.max_frame_bytes = 4096;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_socketio_clients() {
    let found = tokio::task::spawn_blocking(python).await.expect("the runner thread");
    let Some(python) = require("python_socketio_clients", found) else { return };
    let server = TestServer::start_with(visitors_unlimited).await;
    run_clients(&server, &python, &["-m", "unittest", "-v", "test_socketio"]).await;
}

// --- Engine.IO by hand ---

/// A Socket.IO client over a raw Engine.IO WebSocket
/// (`/socket.io/?EIO=4&transport=websocket`), for a client that stops
/// reading at will.
struct Eio {
    ws: WebSocketStream<TcpStream>,
    /// Events read while waiting for something else: (name, data).
    kept: VecDeque<(String, Value)>,
    next_ack: u64,
    /// The data of `ready`.
    ready: Value,
}

impl Eio {
    /// Connects with `token` in the handshake's `auth` and waits for `ready`;
    /// with a small socket receive buffer when asked.
    async fn connect(addr: SocketAddr, token: &str, recv_buffer: Option<u32>) -> Eio {
        let (mut eio, handshake) = Eio::open(addr, recv_buffer).await;
        assert!(handshake["sid"].is_string(), "{handshake}");
        eio.send(format!("40{}", json!({ "token": token }))).await;
        let connected = eio.packet().await;
        assert!(connected.starts_with("40{"), "the namespace connect: {connected}");
        eio.ready = eio.expect_event("ready").await;
        eio
    }

    /// Opens the WebSocket and reads the Engine.IO open packet: its JSON.
    async fn open(addr: SocketAddr, recv_buffer: Option<u32>) -> (Eio, Value) {
        let socket = TcpSocket::new_v4().expect("socket");
        if let Some(size) = recv_buffer {
            socket.set_recv_buffer_size(size).expect("SO_RCVBUF");
        }
        let stream = socket.connect(addr).await.expect("TCP connect");
        stream.set_nodelay(true).expect("TCP_NODELAY");
        let url = format!("ws://{addr}/socket.io/?EIO=4&transport=websocket");
        let (ws, _) = tokio_tungstenite::client_async(url, stream).await.expect("the WebSocket upgrade");
        let mut eio = Eio { ws, kept: VecDeque::new(), next_ack: 0, ready: Value::Null };
        let open = eio.packet().await;
        let handshake: Value = serde_json::from_str(open.strip_prefix('0').expect("the open packet: 0{…}"))
            .expect("the open packet's JSON");
        (eio, handshake)
    }

    /// Reads until the server's close frame: its code (`None` when the
    /// connection ended without one), answering nothing.
    async fn close_code(&mut self, wait: Duration) -> Option<u16> {
        let deadline = Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await.expect("the connection ends in time") {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return None,
            }
        }
    }

    async fn send(&mut self, packet: String) {
        self.ws.send(Message::text(packet)).await.expect("send");
    }

    /// The next Socket.IO packet, answering Engine.IO pings.
    async fn packet(&mut self) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let next = tokio::time::timeout_at(deadline, self.ws.next()).await.expect("a packet in time");
            match next {
                Some(Ok(Message::Text(text))) if text.as_str() == "2" => self.send("3".to_owned()).await,
                Some(Ok(Message::Text(text))) => return text.as_str().to_owned(),
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                other => panic!("waiting for a packet: {other:?}"),
            }
        }
    }

    /// Reads one packet: an event is kept and returned as such, an ack as `Err`.
    async fn read(&mut self) -> Result<(String, Value), (u64, Value)> {
        let packet = self.packet().await;
        if let Some(rest) = packet.strip_prefix("42") {
            let args: Vec<Value> = serde_json::from_str(rest).expect("an event's JSON array");
            let name = args[0].as_str().expect("an event's name").to_owned();
            return Ok((name, args.get(1).cloned().unwrap_or(Value::Null)));
        }
        let rest = packet.strip_prefix("43").unwrap_or_else(|| panic!("an unexpected packet: {packet}"));
        let split = rest.find('[').expect("an ack's arguments");
        let id: u64 = rest[..split].parse().expect("an ack id");
        let args: Vec<Value> = serde_json::from_str(&rest[split..]).expect("an ack's JSON array");
        Err((id, args.into_iter().next().unwrap_or(Value::Null)))
    }

    /// The data of the first kept or new event `name`; others are kept.
    async fn expect_event(&mut self, name: &str) -> Value {
        if let Some(i) = self.kept.iter().position(|(n, _)| n == name) {
            return self.kept.remove(i).expect("present").1;
        }
        loop {
            match self.read().await {
                Ok((n, data)) if n == name => return data,
                Ok(event) => self.kept.push_back(event),
                Err(ack) => panic!("an ack nobody asked for: {ack:?}"),
            }
        }
    }

    /// Emits an event with an ack and returns the ack's argument.
    async fn call(&mut self, name: &str, data: Value) -> Value {
        self.next_ack += 1;
        let id = self.next_ack;
        self.send(format!("42{id}{}", json!([name, data]))).await;
        loop {
            match self.read().await {
                Ok(event) => self.kept.push_back(event),
                Err((got, ack)) if got == id => return ack,
                Err(other) => panic!("an ack for another call: {other:?}"),
            }
        }
    }

    async fn ok(&mut self, name: &str, data: Value) -> Value {
        let ack = self.call(name, data).await;
        assert_eq!(ack["ok"], true, "{name}: {ack}");
        ack["data"].clone()
    }
}

/// `/health`'s count of Socket.IO sessions.
async fn socketio_sessions(server: &TestServer) -> u64 {
    let (status, health) = server.get("/health", None).await;
    assert_eq!(status, 200, "{health}");
    health["transports"]["socketio"].as_u64().unwrap_or(0)
}

/// A Socket.IO client that stops reading while a room is busy is cut off as
/// a slow consumer: its session ends (its user goes offline for the others,
/// `/health` counts one Socket.IO session less), and every other client,
/// Socket.IO or native, gets every message once and in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_socketio_consumer_is_cut_without_hurting_others() {
    let server = TestServer::start_with(|c| {
        c.outbound_queue = 16;
        unthrottle(c);
    })
    .await;
    let mut sender = server.connect("sam").await;
    let mut native = server.connect("lee").await;
    let room = support::group_with(&mut sender, "public", &[]).await;
    native.ok("room:join", json!({"room_id": room})).await;
    let mut reader = Eio::connect(server.addr, &token("rita"), None).await;
    assert_eq!(reader.ready["user"]["id"], "rita");
    reader.ok("room:join", json!({"room_id": room})).await;
    // A tiny receive buffer, so that the server's writes block soon.
    let mut stalled = Eio::connect(server.addr, &token("stu"), Some(4096)).await;
    stalled.ok("room:join", json!({"room_id": room})).await;
    native.expect_event_where("user:joined", |d| d["user"]["id"] == "stu").await;

    assert_eq!(socketio_sessions(&server).await, 2);
    let metrics = server.metrics().await;
    assert_eq!(support::metric(&metrics, r#"chat_transport_connections{transport="socketio"}"#), 2.0);
    assert_eq!(support::metric(&metrics, r#"chat_transport_connections{transport="websocket"}"#), 2.0);

    // From here on `stalled` is not read. Each body is 4000 characters of
    // four bytes: 16 KB per event.
    const COUNT: u64 = 600;
    let body = "\u{1F600}".repeat(4000);
    let listen_native = tokio::spawn(async move {
        let mut got = Vec::new();
        while got.len() < COUNT as usize {
            let event = native.expect_event("message:new").await;
            got.push(event["message"]["seq"].as_u64().expect("seq"));
        }
        (native, got)
    });
    let listen_socketio = tokio::spawn(async move {
        let mut got = Vec::new();
        while got.len() < COUNT as usize {
            let event = reader.expect_event("message:new").await;
            assert_eq!(event["message"]["body"].as_str().map(|b| b.chars().count()), Some(4000));
            got.push(event["message"]["seq"].as_u64().expect("seq"));
        }
        (reader, got)
    });
    // Once its session is over (`/health` counts one Socket.IO session
    // less), the stalled client reads again: what it got of the room is in
    // order, then it is told why it was cut off, then disconnected.
    let health = server.url("/health");
    let watch_stalled = tokio::spawn(async move {
        let http = support::http_client();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let health: Value = http.get(&health).send().await.expect("GET /health").json().await.expect("JSON");
            if health["transports"]["socketio"] == 1 {
                break;
            }
            assert!(Instant::now() < deadline, "the stalled client's session never ended");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut seqs = Vec::new();
        let mut close = None;
        loop {
            let next = tokio::time::timeout(Duration::from_secs(8), stalled.ws.next()).await;
            let text = match next {
                Ok(Some(Ok(Message::Text(text)))) => text,
                Ok(Some(Ok(_))) => continue,
                Ok(Some(Err(_)) | None) => panic!("the connection ended without a disconnect packet"),
                Err(_) => panic!("no disconnect packet after {} messages (close: {close:?})", seqs.len()),
            };
            match text.as_str() {
                "2" => stalled.send("3".to_owned()).await,
                "41" => break,
                packet => {
                    let rest = packet.strip_prefix("42").unwrap_or_else(|| panic!("a packet: {packet:.100}"));
                    let args: Value = serde_json::from_str(rest).expect("an event");
                    assert!(close.is_none(), "an event after close: {args:.100}");
                    match args[0].as_str() {
                        Some("message:new") => seqs.push(args[1]["message"]["seq"].as_u64().expect("seq")),
                        Some("close") => close = Some(args[1].clone()),
                        _ => {}
                    }
                }
            }
        }
        (seqs, close)
    });
    // At most four sends in flight, so that a reading client's queue of 16
    // absorbs what one commit fans out.
    support::send_pipelined(&mut sender, &room, COUNT, &body, 4).await;

    let (mut native, native_got) = listen_native.await.expect("the native listener");
    let (mut reader, reader_got) = listen_socketio.await.expect("the Socket.IO listener");
    let all: Vec<u64> = (1..=COUNT).collect();
    assert_eq!(native_got, all, "the native client got every message once, in order");
    assert_eq!(reader_got, all, "the Socket.IO reader got every message once, in order");

    // The stalled client's session is over.
    // (Presence is announced in the background: stu's coming online may
    // or may not have reached lee, so this looks for the going offline.)
    native.expect_event_where("presence:changed", |d| d["user_id"] == "stu" && d["status"] == "offline").await;
    let deadline = Instant::now() + WAIT;
    while socketio_sessions(&server).await != 1 {
        assert!(Instant::now() < deadline, "the slow consumer's session is still counted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let metrics = server.metrics().await;
    assert_eq!(support::metric(&metrics, "chat_slow_consumer_closes_total"), 1.0, "the cut is counted once");
    assert_eq!(support::metric(&metrics, r#"chat_transport_connections{transport="socketio"}"#), 1.0);

    // The others go on: nothing more, nothing twice, and they still talk.
    let last = sender.ok("message:send", json!({"room_id": room, "client_msg_id": "after", "body": "after"})).await;
    assert_eq!(last["message"]["seq"], COUNT + 1);
    assert_eq!(reader.expect_event("message:new").await["message"]["seq"], COUNT + 1);
    assert_eq!(native.expect_event("message:new").await["message"]["seq"], COUNT + 1);
    assert!(
        reader.kept.iter().all(|(name, _)| name != "message:new"),
        "the reader got a message twice: {:?}",
        reader.kept.iter().map(|(n, _)| n).collect::<Vec<_>>()
    );
    assert!(native.take_kept("message:new").is_empty(), "the native client got a message twice");
    reader.ok("ping", json!({})).await;

    let (seqs, close) = watch_stalled.await.expect("the stalled client");
    assert!(seqs.len() < COUNT as usize, "the stalled client got everything");
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "what the stalled client got is in order");
    let close = close.expect("a close event before the disconnect");
    assert_eq!(close["code"], 4429, "{close}");
    assert!(close["reason"].as_str().is_some_and(|r| r.contains("slow")), "{close}");
}

/// Opens an Engine.IO long-polling session by hand: its `sid`.
async fn polling_handshake(server: &TestServer, origin: Option<&str>) -> (u16, Option<String>) {
    let mut request = support::http_client().get(server.url("/socket.io/?EIO=4&transport=polling"));
    if let Some(origin) = origin {
        request = request.header("origin", origin);
    }
    let response = request.send().await.expect("the handshake is answered");
    let status = response.status().as_u16();
    let body = response.text().await.unwrap_or_default();
    // `0{"sid":"…","upgrades":["websocket"],…}`
    let sid = body
        .strip_prefix('0')
        .and_then(|open| serde_json::from_str::<Value>(open).ok())
        .and_then(|open| open["sid"].as_str().map(str::to_owned));
    (status, sid)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_origins_follow_the_listeners_allow_list() {
    let server = TestServer::start_with(|c| c.allowed_origins = "https://app.example".into()).await;
    for (origin, allowed) in [
        (Some("https://evil.example"), false),
        (Some("https://app.example.evil"), false),
        (Some("null"), false),
        (Some("https://app.example"), true),
        (None, true),
    ] {
        let (status, sid) = polling_handshake(&server, origin).await;
        if allowed {
            assert_eq!(status, 200, "{origin:?} may open a polling session");
            assert!(sid.is_some(), "{origin:?}: an open packet with a sid");
        } else {
            assert_eq!(status, 403, "{origin:?} is refused before Socket.IO");
            assert!(sid.is_none());
        }
    }
    // The WebSocket upgrade is refused the same way.
    let refused = tokio_tungstenite::connect_async(
        tokio_tungstenite::tungstenite::http::Request::builder()
            .uri(format!("ws://{}/socket.io/?EIO=4&transport=websocket", server.addr))
            .header("host", server.addr.to_string())
            .header("origin", "https://evil.example")
            .header("connection", "Upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", tokio_tungstenite::tungstenite::handshake::client::generate_key())
            .body(())
            .expect("a request"),
    )
    .await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => assert_eq!(response.status(), 403),
        other => panic!("expected 403, got {other:?}"),
    }
    server.stop().await.expect("stops cleanly");
}

/// Connects a polling session (`sid`) to the namespace with `user`'s token:
/// the HTTP client and the session's URL.
async fn polling_connect(sid: String, server: &TestServer, user: &str) -> (reqwest::Client, String) {
    let url = server.url(&format!("/socket.io/?EIO=4&transport=polling&sid={sid}"));
    let client = support::http_client();
    // Authenticate the session: `40{"token"}` is the Socket.IO connect packet.
    let connect = format!("40{}", json!({ "token": token(user) }));
    let posted = client.post(&url).body(connect).send().await.expect("answered");
    assert_eq!(posted.status().as_u16(), 200);
    let deadline = Instant::now() + WAIT;
    loop {
        let packets = poll(&client, &url).await;
        if packets.iter().any(|p| p.starts_with("40")) {
            break;
        }
        assert!(Instant::now() < deadline, "no connect packet: {packets:?}");
    }
    (client, url)
}

/// One poll: its packets (they come `\x1e`-separated); a ping (`2`) is
/// answered with a pong (`3`).
async fn poll(client: &reqwest::Client, url: &str) -> Vec<String> {
    let polled = client.get(url).send().await.expect("answered").text().await.unwrap_or_default();
    let packets: Vec<String> = polled.split('\u{1e}').map(str::to_owned).collect();
    if packets.iter().any(|p| p == "2") {
        client.post(url).body("3").send().await.expect("answered");
    }
    packets
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_polling_payload_over_the_frame_limit_ends_only_that_session() {
    let server = TestServer::start_with(|c| c.max_frame_bytes = 4096).await;
    let (_, sid) = polling_handshake(&server, None).await;
    let sid = sid.expect("a polling session");
    let (client, url) = polling_connect(sid, &server, "ada").await;
    // A payload larger than the limit is refused and ends the session.
    let big = format!("42{}", json!(["ping", { "pad": "x".repeat(8 * 1024) }]));
    let posted = client.post(&url).body(big).send().await.expect("answered");
    assert!(!posted.status().is_success(), "an oversized payload is refused: {}", posted.status());
    let deadline = Instant::now() + WAIT;
    loop {
        let after = client.get(&url).send().await.expect("answered");
        if !after.status().is_success() {
            break;
        }
        let text = after.text().await.unwrap_or_default();
        // The close packet (`1`) may come first.
        if text.contains('\u{1e}') && text.split('\u{1e}').any(|p| p == "1") || text == "1" {
            break;
        }
        assert!(Instant::now() < deadline, "the session outlived an oversized payload: {text}");
    }
    // Others go on: a new session works.
    let (status, sid) = polling_handshake(&server, None).await;
    assert_eq!((status, sid.is_some()), (200, true));
    server.stop().await.expect("stops cleanly");
}

/// The Engine.IO handshake of a WebSocket opened straight to `/socket.io/`
/// (no polling first), and the Socket.IO connect: the open packet states the
/// server's heartbeat and frame limit; a connect to another namespace, a
/// forged token or none is refused with a `connect_error` (`44`) and may be
/// tried again on the same connection, up to three refusals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_connect_is_refused_and_tried_again_on_the_same_connection() {
    let server = TestServer::start_with(|c| {
        c.keepalive_s = 20;
        c.idle_timeout_s = 50;
        c.max_frame_bytes = 8192;
    })
    .await;
    let (mut eio, open) = Eio::open(server.addr, None).await;
    assert!(open["sid"].as_str().is_some_and(|s| !s.is_empty()), "{open}");
    assert_eq!(open["upgrades"], json!([]), "nothing to upgrade to from WebSocket");
    assert_eq!(open["pingInterval"], 20_000, "the keepalive beat is the ping");
    assert_eq!(open["pingTimeout"], 30_000, "ping interval + timeout = the idle timeout");
    assert_eq!(open["maxPayload"], 8192);

    eio.send(r#"40/admin,{"token":"x"}"#.to_owned()).await;
    assert_eq!(eio.packet().await, r#"44/admin,{"message":"Invalid namespace"}"#);
    eio.send(format!("40{}", json!({"token": "forged.token.here"}))).await;
    let refused = eio.packet().await;
    let refusal: Value = serde_json::from_str(refused.strip_prefix("44").expect("a connect_error")).expect("JSON");
    assert!(refusal["message"].as_str().is_some_and(|m| m.starts_with("unauthorized")), "{refusal}");
    // An event before the connect is ignored, as Socket.IO does.
    eio.send(r#"421["ping",{}]"#.to_owned()).await;
    eio.send("40".to_owned()).await;
    let refused = eio.packet().await;
    assert!(refused.starts_with(r#"44{"message":"unauthorized: missing token"#), "{refused}");
    eio.send(format!("40{}", json!({"token": token("ada")}))).await;
    let connected = eio.packet().await;
    let connected: Value = serde_json::from_str(connected.strip_prefix("40").expect("a connect")).expect("JSON");
    assert!(connected["sid"].is_string(), "{connected}");
    assert_eq!(eio.expect_event("ready").await["user"]["id"], "ada");
    assert_eq!(eio.expect_event("connection_status").await["status"], "connected");
    assert!(eio.ok("ping", json!({})).await["server_time"].is_string());

    // Three refusals end the connection.
    let (mut eio, _) = Eio::open(server.addr, None).await;
    for _ in 0..3 {
        eio.send(format!("40{}", json!({"token": "forged"}))).await;
        assert!(eio.packet().await.starts_with("44{"));
    }
    assert_eq!(eio.close_code(WAIT).await, Some(4401));
    server.stop().await.expect("stops cleanly");
}

/// Packets that are not commands over a WebSocket opened straight to
/// `/socket.io/`: each is answered (an `error` event, or the ack the client
/// asked for) and the connection goes on, until too many in a row, which
/// end it as natively (`close` 4400, then the server's disconnect); a
/// frame over the limit ends it with 1009.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_packets_over_websocket_are_answered_and_counted() {
    let server = TestServer::start_with(|c| c.max_frame_bytes = 4096).await;
    let mut eio = Eio::connect(server.addr, &token("ada"), None).await;
    let ack = eio.call("no:such", json!({})).await;
    assert_eq!((ack["ok"].clone(), ack["error"]["code"].clone()), (json!(false), json!("unknown_command")), "{ack}");
    let ack = eio.call("room:join", json!({"room_id": 12})).await;
    assert_eq!(ack["error"]["code"], "invalid", "{ack}");
    for (packet, what) in [
        (r#"42["no:such"]"#, "an unknown event without an ack"),
        ("42not json", "an event that is not JSON"),
        (r#"42{"a":1}"#, "an event that is not an array"),
        ("42[]", "an event without a name"),
        (r#"451-["x",{"_placeholder":true,"num":0}]"#, "a binary event"),
        ("4x", "an unknown Socket.IO packet"),
        ("9", "an unknown Engine.IO packet"),
        ("42123456789012345678901234567890[\"ping\"]", "an ack id past 64 bits"),
    ] {
        eio.send(packet.to_owned()).await;
        let error = eio.expect_event("error").await;
        assert!(matches!(error["code"].as_str(), Some("invalid" | "unknown_command")), "{what}: {error}");
    }
    eio.ws.send(Message::binary(vec![1u8, 2, 3])).await.expect("send");
    assert_eq!(eio.expect_event("error").await["code"], "invalid", "a binary frame");
    // Still there: pong, no-op and a client's ping are fine.
    eio.send("6".to_owned()).await;
    eio.send("2".to_owned()).await;
    assert_eq!(eio.packet().await, "3", "a client's ping is answered");
    assert!(eio.ok("ping", json!({})).await["server_time"].is_string());
    // 11 bad packets so far; more than 20 within 10 s end the session.
    for _ in 0..10 {
        eio.send("4x".to_owned()).await;
    }
    let mut close = None;
    loop {
        match eio.read().await {
            Ok((name, data)) if name == "close" => close = Some(data),
            Ok(_) => {}
            Err(ack) => panic!("an ack nobody asked for: {ack:?}"),
        }
        if close.is_some() {
            break;
        }
    }
    let close = close.expect("a close event");
    assert_eq!(close["code"], 4400, "{close}");
    assert_eq!(eio.packet().await, "41", "then the server's disconnect");
    assert_eq!(eio.close_code(WAIT).await, Some(4400));

    // A frame over the limit: 1009, and only that connection ends.
    let mut other = Eio::connect(server.addr, &token("bob"), None).await;
    let mut big = Eio::connect(server.addr, &token("cy"), None).await;
    big.send(format!("42{}", json!(["ping", {"pad": "x".repeat(5000)}]))).await;
    assert_eq!(big.close_code(WAIT).await, Some(1009));
    other.ok("ping", json!({})).await;
    server.stop().await.expect("stops cleanly");
}

/// The engine's keepalive beat is the Engine.IO ping over a WebSocket opened
/// straight to `/socket.io/`: a client that answers (`3`) stays, one that
/// does not is closed after the idle timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socketio_client_that_answers_no_ping_is_closed_after_the_idle_timeout() {
    let server = TestServer::start_with(|c| {
        c.keepalive_s = 1;
        c.idle_timeout_s = 2;
    })
    .await;
    let started = Instant::now();
    let mut silent = Eio::connect(server.addr, &token("ada"), None).await;
    let mut awake = Eio::connect(server.addr, &token("bob"), None).await;
    // Bob answers every ping for 4 s (`packet` does); Ada answers none.
    let listen = tokio::spawn(async move {
        while started.elapsed() < Duration::from_secs(4) {
            let _ = tokio::time::timeout(Duration::from_millis(500), awake.packet()).await;
        }
        awake
    });
    assert_eq!(silent.close_code(Duration::from_secs(6)).await, Some(1001));
    assert!(started.elapsed() >= Duration::from_secs(2), "closed before the idle timeout: {:?}", started.elapsed());
    let mut awake = listen.await.expect("the awake client");
    awake.ok("ping", json!({})).await;
    server.stop().await.expect("stops cleanly");
}

/// A long-polling client that stops polling fills its socket's buffer (as
/// long as the engine's outbound queue) and is cut off as a slow consumer:
/// its session ends at once and is counted; when it polls again it gets what
/// was buffered, in order, then `close` 4429 and the server's disconnect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_polling_client_that_stops_polling_is_cut_as_a_slow_consumer() {
    let server = TestServer::start_with(|c| {
        c.outbound_queue = 16;
        unthrottle(c);
    })
    .await;
    let mut sender = server.connect("sam").await;
    let room = support::group_with(&mut sender, "public", &[]).await;
    let (_, sid) = polling_handshake(&server, None).await;
    let (client, url) = polling_connect(sid.expect("a polling session"), &server, "pat").await;
    let join = format!("421{}", json!(["room:join", {"room_id": room}]));
    client.post(&url).body(join).send().await.expect("answered");
    let deadline = Instant::now() + WAIT;
    while !poll(&client, &url).await.iter().any(|p| p.starts_with("431[")) {
        assert!(Instant::now() < deadline, "no ack of the join");
    }
    assert_eq!(socketio_sessions(&server).await, 1);

    // From here on nothing is polled.
    const COUNT: u64 = 40;
    support::send_pipelined(&mut sender, &room, COUNT, "hello", 4).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while socketio_sessions(&server).await != 0 {
        assert!(Instant::now() < deadline, "the slow consumer's session is still counted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let metrics = server.metrics().await;
    assert_eq!(support::metric(&metrics, "chat_slow_consumer_closes_total"), 1.0, "the cut is counted once");

    let (mut seqs, mut close) = (Vec::new(), None);
    let deadline = Instant::now() + Duration::from_secs(8);
    'polling: loop {
        for packet in poll(&client, &url).await {
            if packet == "41" {
                break 'polling;
            }
            let Some(event) = packet.strip_prefix("42") else { continue };
            let args: Value = serde_json::from_str(event).expect("an event");
            assert!(close.is_none(), "an event after close: {args:.100}");
            match args[0].as_str() {
                Some("message:new") => seqs.push(args[1]["message"]["seq"].as_u64().expect("seq")),
                Some("close") => close = Some(args[1].clone()),
                _ => {}
            }
        }
        assert!(Instant::now() < deadline, "no disconnect packet after {} messages (close: {close:?})", seqs.len());
    }
    assert!(!seqs.is_empty() && seqs.len() < COUNT as usize, "got {} of {COUNT}", seqs.len());
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "what it got is in order");
    let close = close.expect("a close event before the disconnect");
    assert_eq!(close["code"], 4429, "{close}");
    sender.ok("ping", json!({})).await;
    server.stop().await.expect("stops cleanly");
}

/// A Socket.IO client whose tokens are revoked through the admin API is
/// disconnected as a native one is (4401), and its next connect with the
/// same token is refused with a `connect_error` saying why; a token made
/// afterwards connects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socketio_client_is_refused_after_its_tokens_are_revoked() {
    let server = TestServer::start().await;
    let old = token("ada");
    let mut eio = Eio::connect(server.addr, &old, None).await;
    assert_eq!(eio.ready["user"]["id"], "ada");
    let (status, body) = server.post("/v1/admin/users/ada/revoke-tokens", &json!({}), Some(API_KEY)).await;
    assert_eq!(status, 204, "{body}");
    assert_eq!(eio.close_code(WAIT).await, Some(4401));

    let (mut eio, _) = Eio::open(server.addr, None).await;
    eio.send(format!("40{}", json!({ "token": old }))).await;
    let refused = eio.packet().await;
    assert_eq!(refused, r#"44{"message":"unauthorized: token revoked"}"#);
    let (status, body) = server.post("/v1/admin/users/ada/tokens", &json!({}), Some(API_KEY)).await;
    assert_eq!(status, 200, "{body}");
    let fresh = body["token"].as_str().expect("token");
    eio.send(format!("40{}", json!({ "token": fresh }))).await;
    assert!(eio.packet().await.starts_with("40{"), "a token made after the revocation connects");
    assert_eq!(eio.expect_event("ready").await["user"]["id"], "ada");
    server.stop().await.expect("stops cleanly");
}

/// Calls are ordinary commands and events over Socket.IO too: a native
/// caller rings a Socket.IO callee, who accepts with an ack and gets the
/// signals; hanging up reaches both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_between_a_native_and_a_socketio_client() {
    let server = TestServer::start().await;
    let mut bob = Eio::connect(server.addr, &token("bob"), None).await;
    let mut ada = server.connect("ada").await;
    let room = support::create_room(&mut ada, json!({"kind": "direct", "members": ["bob"]})).await;
    let placed = ada.ok("call:invite", json!({"room_id": room["id"], "media": "audio"})).await;
    let incoming = bob.expect_event("call:incoming").await;
    assert_eq!((&incoming["call_id"], &incoming["from"]["id"]), (&placed["call_id"], &json!("ada")));
    bob.ok("call:accept", json!({"call_id": placed["call_id"]})).await;
    assert_eq!(ada.expect_event("call:accepted").await["user_id"], "bob");
    let offer = json!({"type": "offer", "sdp": "v=0"});
    ada.ok("call:signal", json!({"call_id": placed["call_id"], "to": "bob", "payload": offer})).await;
    assert_eq!(bob.expect_event("call:signal").await["payload"], offer);
    let ack = bob
        .call("call:signal", json!({"call_id": placed["call_id"], "to": "ada", "payload": "x".repeat(20_000)}))
        .await;
    assert_eq!(ack["error"]["code"], "too_large", "{ack}");
    bob.ok("call:end", json!({"call_id": placed["call_id"]})).await;
    assert_eq!(ada.expect_event("call:ended").await["reason"], "hangup");
    assert_eq!(bob.expect_event("call:ended").await["reason"], "hangup");
}

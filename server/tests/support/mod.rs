//! Shared helpers of the end-to-end tests: the real server on an ephemeral
//! port (in process through `chat_server::run`, or the compiled binary),
//! token minting, HTTP calls, and a WebSocket client that pairs replies with
//! their `ref` and keeps events for later expectations.

// Each test binary uses a different part of this module.
#![allow(dead_code, unreachable_pub)]

pub mod relay;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chat_server::Config;
use futures_util::{SinkExt, StreamExt};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};

/// The HS256 secret every test server verifies with.
pub const SECRET: &str = "end-to-end-test-secret-with-enough-bytes";
/// The admin API key of every test server.
pub const API_KEY: &str = "e2e-admin-key";
/// How long a test waits for something that should happen at once.
pub const WAIT: Duration = Duration::from_secs(5);

/// Seconds since the epoch.
pub fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("the clock is after 1970").as_secs()
}

/// Signs `claims` with HS256 and `secret`.
pub fn mint_with(claims: &Value, secret: &[u8]) -> String {
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(secret))
        .expect("token encodes")
}

/// Signs `claims` with the test secret.
pub fn mint(claims: &Value) -> String {
    mint_with(claims, SECRET.as_bytes())
}

/// A valid token for `user` (display name = id), good for an hour.
pub fn token(user: &str) -> String {
    mint(&json!({"sub": user, "name": user, "exp": now_secs() + 3600}))
}

/// A valid token carrying roles.
pub fn token_with_roles(user: &str, roles: &[&str]) -> String {
    mint(&json!({"sub": user, "name": user, "roles": roles, "exp": now_secs() + 3600}))
}

/// Base64url without padding, for hand-made tokens.
pub fn b64url(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

/// An unsigned `alg: none` token.
pub fn unsigned_token(user: &str) -> String {
    let header = b64url(br#"{"alg":"none","typ":"JWT"}"#);
    let claims = b64url(json!({"sub": user, "exp": now_secs() + 3600}).to_string().as_bytes());
    format!("{header}.{claims}.")
}

/// The configuration every test server starts from: a database in `dir`,
/// the test secret and API key.
pub fn base_config(dir: &Path) -> Config {
    Config {
        database_url: format!("sqlite://{}", dir.join("chat.db").display()),
        // Beside the database whatever the database: a test on PostgreSQL
        // must not leave files in the working directory.
        attachments_url: Some(format!("file://{}", dir.join("chat-attachments").display())),
        jwt_secret: Some(SECRET.to_owned()),
        api_key: Some(API_KEY.to_owned()),
        ..Config::default()
    }
}

/// The Discord settings of a server whose bridge talks to the stand-in
/// `discord` (through the proxy setting, as a deployment behind a
/// rate-limit proxy would).
pub fn discord_settings(discord: &chat_discord::testing::StandIn) -> chat_server::DiscordSettings {
    use chat_discord::testing::{FORUM, GUILD, SUPPORT_ROLE};
    chat_server::DiscordSettings {
        token: Some("stand-in-token".into()),
        guild_id: Some(GUILD),
        forum_channel_id: Some(FORUM),
        support_role_id: Some(SUPPORT_ROLE),
        proxy_url: Some(discord.url()),
        role_map: None,
        channel_map: None,
        max_upload_bytes: None,
        // The stand-in serves agents' files itself.
        cdn_origins: Some(discord.url()),
    }
}

/// An HTTP client that ignores proxy settings of the environment.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().timeout(WAIT).build().expect("HTTP client")
}

/// Reads a response as its status and JSON body (`Null` when the body is not JSON).
pub async fn status_and_json(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let text = response.text().await.expect("response body");
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// A server started with `chat_server::run` on `127.0.0.1:0`.
pub struct TestServer {
    pub addr: SocketAddr,
    pub http: reqwest::Client,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), String>>>,
    dir: tempfile::TempDir,
}

impl TestServer {
    /// A server with the base configuration.
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// A server whose per-connection command rate is effectively unlimited,
    /// for tests that pipeline many commands.
    pub async fn unthrottled() -> Self {
        Self::start_with(unthrottle).await
    }

    /// A server with the base configuration changed by `tweak`.
    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> Self {
        Self::start_in(tempfile::tempdir().expect("temp dir"), tweak).await
    }

    /// A server on the database in `dir` (kept from a stopped server, say).
    pub async fn start_in(dir: tempfile::TempDir, tweak: impl FnOnce(&mut Config)) -> Self {
        let mut config = base_config(dir.path());
        tweak(&mut config);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (tx, rx) = oneshot::channel::<()>();
        let shutdown = async move {
            let _ = rx.await;
        };
        let task =
            tokio::spawn(
                async move { chat_server::run(listener, config, shutdown).await.map_err(|e| format!("{e:#}")) },
            );
        TestServer { addr, http: http_client(), shutdown: Some(tx), task: Some(task), dir }
    }

    /// `http://addr` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Connects as `user` with a header token and waits for `ready`.
    pub async fn connect(&self, user: &str) -> Client {
        self.connect_token(&token(user)).await
    }

    /// Connects with `token` in the header and waits for `ready`.
    pub async fn connect_token(&self, token: &str) -> Client {
        let mut client =
            Client::open(self.addr, "/v1/ws", &[("authorization", format!("Bearer {token}"))]).await.expect("upgrade");
        client.wait_ready().await;
        client
    }

    /// GET with an optional bearer token.
    pub async fn get(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        let mut request = self.http.get(self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        status_and_json(request.send().await.expect("GET")).await
    }

    /// POST a JSON body with an optional `x-api-key`.
    pub async fn post(&self, path: &str, body: &Value, api_key: Option<&str>) -> (u16, Value) {
        let mut request = self.http.post(self.url(path)).json(body);
        if let Some(key) = api_key {
            request = request.header("x-api-key", key);
        }
        status_and_json(request.send().await.expect("POST")).await
    }

    /// Creates a user through the admin API, so that it is known before it connects.
    pub async fn create_user(&self, id: &str, roles: &[&str]) {
        let (status, body) =
            self.post("/v1/admin/users", &json!({"id": id, "name": id, "roles": roles}), Some(API_KEY)).await;
        assert_eq!(status, 200, "{body}");
    }

    /// Resolves the shutdown future and waits for `run` to return; gives back
    /// the directory of the database.
    pub async fn stop(mut self) -> Result<tempfile::TempDir, String> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let task = self.task.take().expect("the server task");
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .map_err(|_| "run did not return within 10 s".to_owned())?
            .map_err(|e| format!("the server task failed: {e}"))??;
        Ok(self.dir)
    }
}

/// One frame read from the socket, or why none was.
#[derive(Debug)]
pub enum Read {
    Frame(Value),
    /// A close frame's code and reason, or `None` when the connection ended without one.
    Closed(Option<(u16, String)>),
    Timeout,
}

/// A WebSocket client. Frames that a call did not ask for are kept, in order,
/// for the next calls.
pub struct Client {
    ws: WebSocketStream<TcpStream>,
    pending: VecDeque<Value>,
    next_ref: u64,
    /// The data of the `ready` frame, once [`Client::wait_ready`] saw it.
    pub ready: Value,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("pending", &self.pending.len()).finish_non_exhaustive()
    }
}

impl Client {
    /// Upgrades `path` (which may carry a query) with extra headers; does not wait for `ready`.
    pub async fn open(addr: SocketAddr, path: &str, headers: &[(&str, String)]) -> Result<Client, tungstenite::Error> {
        Self::open_with_buffer(addr, path, headers, None).await
    }

    /// Like [`Client::open`], with a small socket receive buffer when asked,
    /// so that a client that stops reading pushes back on the server quickly.
    pub async fn open_with_buffer(
        addr: SocketAddr,
        path: &str,
        headers: &[(&str, String)],
        recv_buffer: Option<u32>,
    ) -> Result<Client, tungstenite::Error> {
        let socket = TcpSocket::new_v4().expect("socket");
        if let Some(size) = recv_buffer {
            socket.set_recv_buffer_size(size).expect("SO_RCVBUF");
        }
        let stream = socket.connect(addr).await.expect("TCP connect");
        stream.set_nodelay(true).expect("TCP_NODELAY");
        let mut request = format!("ws://{addr}{path}").into_client_request().expect("request");
        for (name, value) in headers {
            let value = HeaderValue::from_str(value).expect("header value");
            let name = tungstenite::http::HeaderName::from_bytes(name.as_bytes()).expect("header name");
            request.headers_mut().insert(name, value);
        }
        let (ws, _) = tokio_tungstenite::client_async(request, stream).await?;
        Ok(Client { ws, pending: VecDeque::new(), next_ref: 0, ready: Value::Null })
    }

    /// Waits for the `ready` frame, which must be the first, and keeps its data.
    pub async fn wait_ready(&mut self) -> &Value {
        let frame = self.next_frame().await;
        assert_eq!(frame["type"], "ready", "the first frame after auth: {frame}");
        self.ready = frame["data"].clone();
        &self.ready
    }

    /// This session's user id, from `ready`.
    pub fn user_id(&self) -> String {
        self.ready["user"]["id"].as_str().expect("ready.user.id").to_owned()
    }

    /// Sends a text frame as is.
    pub async fn send_text(&mut self, text: impl Into<String>) {
        self.ws.send(Message::text(text.into())).await.expect("send");
    }

    /// Sends a command with a fresh numeric `ref` without waiting; returns the ref.
    pub async fn send(&mut self, kind: &str, data: Value) -> Value {
        self.next_ref += 1;
        let reference = json!(self.next_ref);
        let frame = json!({"type": kind, "ref": reference, "data": data});
        self.send_text(frame.to_string()).await;
        reference
    }

    /// Waits for the reply with this `ref`, keeping other frames.
    pub async fn reply(&mut self, reference: &Value) -> Value {
        self.take_first(|f| f["type"] == "reply" && f["ref"] == *reference, &format!("the reply to ref {reference}"))
            .await
    }

    /// The first kept or new frame that `matches`; other frames are kept.
    async fn take_first(&mut self, matches: impl Fn(&Value) -> bool, what: &str) -> Value {
        if let Some(i) = self.pending.iter().position(&matches) {
            return self.pending.remove(i).expect("present");
        }
        let deadline = Instant::now() + WAIT;
        loop {
            match self.read(deadline).await {
                Read::Frame(f) if matches(&f) => return f,
                Read::Frame(f) => self.pending.push_back(f),
                other => panic!("waiting for {what}: {other:?}; kept: {:?}", self.pending),
            }
        }
    }

    /// Sends a command and returns its whole reply frame.
    pub async fn request(&mut self, kind: &str, data: Value) -> Value {
        let reference = self.send(kind, data).await;
        self.reply(&reference).await
    }

    /// Sends a command that must succeed and returns the reply's data.
    pub async fn ok(&mut self, kind: &str, data: Value) -> Value {
        let reply = self.request(kind, data).await;
        assert_eq!(reply["ok"], true, "{kind} failed: {reply}");
        reply["data"].clone()
    }

    /// Sends a command that must fail and returns the error code.
    pub async fn fail(&mut self, kind: &str, data: Value) -> String {
        let reply = self.request(kind, data).await;
        assert_eq!(reply["ok"], false, "{kind} should have failed: {reply}");
        reply["error"]["code"].as_str().expect("error.code").to_owned()
    }

    /// The next frame of any kind: a kept one first, else one from the socket.
    pub async fn next_frame(&mut self) -> Value {
        if let Some(frame) = self.pending.pop_front() {
            return frame;
        }
        match self.read(Instant::now() + WAIT).await {
            Read::Frame(f) => f,
            other => panic!("waiting for a frame: {other:?}"),
        }
    }

    /// The next kept or new frame whose type is one of `kinds`, whole; frames
    /// of other types are kept.
    pub async fn next_of(&mut self, kinds: &[&str]) -> Value {
        self.take_first(|f| kinds.iter().any(|k| f["type"] == *k), &format!("one of {kinds:?}")).await
    }

    /// Takes the first kept or new event of this type and returns its data.
    pub async fn expect_event(&mut self, kind: &str) -> Value {
        self.expect_event_within(kind, WAIT).await
    }

    /// [`Client::expect_event`] with another time limit.
    pub async fn expect_event_within(&mut self, kind: &str, wait: Duration) -> Value {
        self.expect_frame_within(kind, wait).await["data"].clone()
    }

    /// Takes the first kept or new frame of this type (an event, `error`…) whole.
    pub async fn expect_frame(&mut self, kind: &str) -> Value {
        self.expect_frame_within(kind, WAIT).await
    }

    async fn expect_frame_within(&mut self, kind: &str, wait: Duration) -> Value {
        if let Some(i) = self.pending.iter().position(|f| f["type"] == kind) {
            return self.pending.remove(i).expect("present");
        }
        let deadline = Instant::now() + wait;
        loop {
            match self.read(deadline).await {
                Read::Frame(f) if f["type"] == kind => return f,
                Read::Frame(f) => self.pending.push_back(f),
                other => panic!("waiting for {kind}: {other:?}; kept: {:?}", self.pending),
            }
        }
    }

    /// Takes the first kept or new event of this type whose data satisfies `pred`.
    pub async fn expect_event_where(&mut self, kind: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let matches = |f: &Value| f["type"] == kind && pred(&f["data"]);
        if let Some(i) = self.pending.iter().position(matches) {
            return self.pending.remove(i).expect("present")["data"].clone();
        }
        let deadline = Instant::now() + WAIT;
        loop {
            match self.read(deadline).await {
                Read::Frame(f) if matches(&f) => return f["data"].clone(),
                Read::Frame(f) => self.pending.push_back(f),
                other => panic!("waiting for a matching {kind}: {other:?}; kept: {:?}", self.pending),
            }
        }
    }

    /// Asserts that no event of this type is kept or arrives within `window`.
    pub async fn expect_no_event(&mut self, kind: &str, window: Duration) {
        if let Some(f) = self.pending.iter().find(|f| f["type"] == kind) {
            panic!("unexpected {kind}: {f}");
        }
        let deadline = Instant::now() + window;
        loop {
            match self.read(deadline).await {
                Read::Frame(f) if f["type"] == kind => panic!("unexpected {kind}: {f}"),
                Read::Frame(f) => self.pending.push_back(f),
                Read::Timeout => return,
                Read::Closed(c) => panic!("closed while expecting no {kind}: {c:?}"),
            }
        }
    }

    /// Removes and returns every kept frame of this type.
    pub fn take_kept(&mut self, kind: &str) -> Vec<Value> {
        let (taken, kept): (Vec<Value>, Vec<Value>) = self.pending.drain(..).partition(|f| f["type"] == kind);
        self.pending = kept.into();
        taken
    }

    /// Reads (dropping every other frame) until the server closes; asserts the
    /// close code and returns the reason.
    pub async fn expect_close(&mut self, code: u16) -> String {
        self.expect_close_within(code, WAIT).await
    }

    /// [`Client::expect_close`] with another time limit.
    pub async fn expect_close_within(&mut self, code: u16, wait: Duration) -> String {
        self.pending.clear();
        let deadline = Instant::now() + wait;
        loop {
            match self.read(deadline).await {
                Read::Frame(_) => {}
                Read::Closed(Some((got, reason))) => {
                    assert_eq!(got, code, "close code (reason: {reason:?})");
                    return reason;
                }
                other => panic!("waiting for close code {code}: {other:?}"),
            }
        }
    }

    /// The next kept frame, else one read from the socket before `deadline`.
    pub async fn next_read(&mut self, deadline: Instant) -> Read {
        match self.pending.pop_front() {
            Some(frame) => Read::Frame(frame),
            None => self.read(deadline).await,
        }
    }

    /// Reads one frame from the socket, answering nothing; pings are skipped.
    pub async fn read(&mut self, deadline: Instant) -> Read {
        loop {
            let next = match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Ok(next) => next,
                Err(_) => return Read::Timeout,
            };
            match next {
                Some(Ok(Message::Text(text))) => {
                    let value = serde_json::from_str(text.as_str()).expect("the server sends JSON");
                    return Read::Frame(value);
                }
                Some(Ok(Message::Close(frame))) => {
                    return Read::Closed(frame.map(|f| (u16::from(f.code), f.reason.to_string())));
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Ok(Message::Binary(_))) => panic!("the server sent a binary frame"),
                Some(Err(_)) | None => return Read::Closed(None),
            }
        }
    }

    /// Sends one large text frame while reading, and returns how the server
    /// closed. The server stops reading at the frame header, so the send may
    /// never finish; the read side decides.
    pub async fn send_oversized(&mut self, text: String) -> Option<(u16, String)> {
        let (mut tx, mut rx) = (&mut self.ws).split();
        let send = tx.send(Message::text(text));
        let read = async {
            loop {
                match rx.next().await {
                    Some(Ok(Message::Close(frame))) => {
                        return frame.map(|f| (u16::from(f.code), f.reason.to_string()));
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => return None,
                }
            }
        };
        tokio::pin!(send, read);
        let mut sent = false;
        let outcome = tokio::time::timeout(WAIT, async {
            loop {
                tokio::select! {
                    _ = &mut send, if !sent => sent = true,
                    closed = &mut read => return closed,
                }
            }
        });
        outcome.await.expect("the server did not close the connection")
    }

    /// Sends a binary frame.
    pub async fn send_binary(&mut self, data: Vec<u8>) {
        self.ws.send(Message::binary(data)).await.expect("send");
    }

    /// Sends a close frame (1000) and waits briefly for the server to end the
    /// connection; returns the code of the close frame the server answered
    /// with, `None` when it answered with none.
    pub async fn close(mut self) -> Option<u16> {
        let normal = CloseFrame { code: CloseCode::Normal, reason: "".into() };
        let _ = self.ws.close(Some(normal)).await;
        let answer = async {
            while let Some(Ok(message)) = self.ws.next().await {
                if let Message::Close(frame) = message {
                    return frame.map(|f| u16::from(f.code));
                }
            }
            None
        };
        tokio::time::timeout(WAIT, answer).await.ok().flatten()
    }
}

/// Creates a room and returns it.
pub async fn create_room(client: &mut Client, data: Value) -> Value {
    client.ok("room:create", data).await["room"].clone()
}

/// Sends `count` messages `m0`, `m1`… with `body` to `room`, at most
/// `window` in flight, and asserts every one is acknowledged. A small
/// window keeps what one commit fans out within a reading client's queue.
pub async fn send_pipelined(client: &mut Client, room: &str, count: u64, body: &str, window: usize) {
    let mut in_flight = std::collections::VecDeque::new();
    for i in 0..count {
        if in_flight.len() == window {
            let reply = client.reply(&in_flight.pop_front().expect("in flight")).await;
            assert_eq!(reply["ok"], true, "{reply}");
        }
        let data = json!({"room_id": room, "client_msg_id": format!("m{i}"), "body": body});
        in_flight.push_back(client.send("message:send", data).await);
    }
    for r in &in_flight {
        let reply = client.reply(r).await;
        assert_eq!(reply["ok"], true, "{reply}");
    }
}

/// Creates a group room with `members` and joins it; returns its id.
pub async fn group_with(client: &mut Client, visibility: &str, members: &[&str]) -> String {
    let room =
        create_room(client, json!({"kind": "group", "name": "team", "visibility": visibility, "members": members}))
            .await;
    let id = room["id"].as_str().expect("room.id").to_owned();
    client.ok("room:join", json!({"room_id": id})).await;
    id
}

/// Sends a message and returns it as acknowledged.
pub async fn send_message(client: &mut Client, room: &str, client_msg_id: &str, body: &str) -> Value {
    let data = json!({"room_id": room, "client_msg_id": client_msg_id, "body": body});
    client.ok("message:send", data).await["message"].clone()
}

/// The seqs of `message:new` frames (or of messages), as numbers.
pub fn seqs(messages: &[Value]) -> Vec<u64> {
    messages.iter().map(|m| m["seq"].as_u64().expect("seq")).collect()
}

/// Every message of `room`, oldest first, read page by page over the socket.
pub async fn all_history(client: &mut Client, room: &str) -> Vec<Value> {
    let mut stored: Vec<Value> = Vec::new();
    loop {
        let after = stored.last().map_or(0, |m| m["seq"].as_u64().expect("seq"));
        let page = client.ok("room:history", json!({"room_id": room, "after_seq": after, "limit": 100})).await;
        stored.extend(page["messages"].as_array().expect("messages").iter().cloned());
        // Stops on anything but `true`, so a page without the field cannot loop.
        if page["has_more"] != true {
            return stored;
        }
    }
}

/// The compiled `chat-server` binary, serving on a free port of 127.0.0.1
/// with its logs in a file.
pub struct ServerProcess {
    pub addr: SocketAddr,
    child: Child,
    pub log: PathBuf,
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("local addr").port()
}

impl ServerProcess {
    /// Starts the binary on the SQLite file `database` with extra environment,
    /// and waits until `/health` answers.
    pub async fn start(database: &Path, log: PathBuf, env: &[(&str, &str)]) -> ServerProcess {
        Self::start_url(&format!("sqlite://{}", database.display()), log, env).await
    }

    /// Starts the binary on the database at `url` with extra environment, and
    /// waits until `/health` answers.
    pub async fn start_url(url: &str, log: PathBuf, env: &[(&str, &str)]) -> ServerProcess {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let log_file = std::fs::File::create(&log).expect("log file");
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_chat-server"));
        for (key, _) in std::env::vars() {
            // A DISCORD_TOKEN of the developer's environment must never
            // connect a test server to the real Discord.
            if key.starts_with("CHAT_") || key.starts_with("DISCORD_") || key == "RUST_LOG" {
                command.env_remove(key);
            }
        }
        // Attachments beside the log (the processes of one test share it),
        // not in the working directory; `env` may name other storage.
        let files = log.parent().unwrap_or(Path::new(".")).join("chat-attachments");
        command
            .env("CHAT_LISTEN", addr.to_string())
            .env("CHAT_DATABASE_URL", url)
            .env("CHAT_ATTACHMENTS_URL", format!("file://{}", files.display()))
            .env("CHAT_JWT_SECRET", SECRET)
            .env("CHAT_API_KEY", API_KEY)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log_file));
        let child = command.spawn().expect("start chat-server");
        let mut process = ServerProcess { addr, child, log };
        process.wait_healthy().await;
        process
    }

    async fn wait_healthy(&mut self) {
        let http = http_client();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(response) = http.get(format!("http://{}/health", self.addr)).send().await
                && response.status().is_success()
            {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("chat-server exited with {status}: {}", self.logs());
            }
            assert!(Instant::now() < deadline, "chat-server did not become healthy: {}", self.logs());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Connects as `user` with a header token and waits for `ready`.
    pub async fn connect(&self, user: &str) -> Client {
        let mut client = Client::open(self.addr, "/v1/ws", &[("authorization", format!("Bearer {}", token(user)))])
            .await
            .expect("upgrade");
        client.wait_ready().await;
        client
    }

    /// What the process logged so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL, then reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Lifts the per-connection command rate limit.
pub fn unthrottle(config: &mut Config) {
    config.commands_per_second = 100_000;
    config.command_burst = 100_000;
}

/// A metric's value in a Prometheus text exposition.
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
}

impl TestServer {
    /// The Prometheus exposition of `/metrics`, fetched with the API key.
    pub async fn metrics(&self) -> String {
        let response = self.http.get(self.url("/metrics")).bearer_auth(API_KEY).send().await.expect("GET /metrics");
        assert_eq!(response.status(), 200);
        response.text().await.expect("metrics body")
    }
}

/// A TCP connection to `addr` leaving from `source` (another loopback
/// address such as 127.0.0.2 is another client address).
pub async fn tcp_from(source: std::net::IpAddr, addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.bind(SocketAddr::new(source, 0)).expect("bind the source address");
    socket.connect(addr).await.expect("TCP connect")
}

/// An HTTP client whose requests leave from `source` and that keeps no
/// connection open after a response.
pub fn http_client_from(source: std::net::IpAddr) -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(WAIT)
        .local_address(source)
        .pool_max_idle_per_host(0)
        .build()
        .expect("HTTP client")
}

/// Reads and drops whatever arrives until the peer closes the connection
/// (end of stream or reset): how long that took, or `None` when it was still
/// open after `within`.
pub async fn wait_closed(stream: &mut (impl tokio::io::AsyncRead + Unpin), within: Duration) -> Option<Duration> {
    use tokio::io::AsyncReadExt;
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    let read_all = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(within, read_all).await.ok().map(|()| started.elapsed())
}

/// One HTTP/1.1 response read off a raw connection: its status, headers
/// (names in lower case) and body (by `Content-Length`; none without it).
pub async fn read_response(stream: &mut (impl tokio::io::AsyncRead + Unpin)) -> (u16, Vec<(String, String)>, Vec<u8>) {
    use tokio::io::AsyncReadExt;
    let mut data = Vec::new();
    let head_end = loop {
        if let Some(i) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout(WAIT, stream.read(&mut buf)).await.expect("a response in time").expect("read");
        assert!(n > 0, "the connection closed before a response: {:?}", String::from_utf8_lossy(&data));
        data.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8(data[..head_end].to_vec()).expect("an ASCII head");
    let mut lines = head.split("\r\n");
    let status = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|s| s.parse().ok()).expect("a status line");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    let length: usize =
        headers.iter().find(|(n, _)| n == "content-length").and_then(|(_, v)| v.parse().ok()).unwrap_or(0);
    let mut body = data[head_end + 4..].to_vec();
    while body.len() < length {
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout(WAIT, stream.read(&mut buf)).await.expect("a body in time").expect("read");
        assert!(n > 0, "the connection closed within the body");
        body.extend_from_slice(&buf[..n]);
    }
    (status, headers, body)
}

/// A WebSocket client that writes its frames by hand, for frames that
/// tungstenite's client refuses to send (bad UTF-8, reserved bits, unmasked).
pub struct RawWs {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl RawWs {
    /// Upgrades `/v1/ws` by hand, with a bearer token when given.
    pub async fn connect(addr: SocketAddr, token: Option<&str>) -> RawWs {
        use tokio::io::AsyncWriteExt;
        let mut stream = TcpStream::connect(addr).await.expect("TCP connect");
        stream.set_nodelay(true).expect("TCP_NODELAY");
        let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
        let request = format!(
            "GET /v1/ws HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{auth}\r\n"
        );
        stream.write_all(request.as_bytes()).await.expect("write the upgrade");
        // Whatever came after the head is already the first frame (the
        // server writes `ready` right behind the 101): keep it.
        let (status, _, after_head) = read_response(&mut stream).await;
        assert_eq!(status, 101, "the upgrade");
        RawWs { stream, buf: after_head }
    }

    /// Writes one frame: `first` is the first header byte (FIN, RSV1-3,
    /// opcode); the payload is masked when `masked` (as a client must).
    pub async fn send_frame(&mut self, first: u8, masked: bool, payload: &[u8]) {
        use tokio::io::AsyncWriteExt;
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        let mut frame = vec![first];
        let bit = if masked { 0x80 } else { 0 };
        match payload.len() {
            n if n < 126 => frame.push(bit | n as u8),
            n if n <= 0xffff => {
                frame.push(bit | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(bit | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        if masked {
            frame.extend_from_slice(&mask);
            frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        } else {
            frame.extend_from_slice(payload);
        }
        // The server may already have closed: what it answered is what counts.
        let _ = self.stream.write_all(&frame).await;
    }

    /// Sends a final, masked text frame.
    pub async fn send_text(&mut self, text: &str) {
        self.send_frame(0x81, true, text.as_bytes()).await;
    }

    /// The next frame from the server, as (opcode, payload); `None` when the
    /// connection ended (or nothing came within [`WAIT`]).
    pub async fn next_frame(&mut self) -> Option<(u8, Vec<u8>)> {
        use tokio::io::AsyncReadExt;
        let deadline = Instant::now() + WAIT;
        loop {
            if self.buf.len() >= 2 {
                let (len, start) = match self.buf[1] & 0x7f {
                    126 if self.buf.len() >= 4 => (usize::from(u16::from_be_bytes([self.buf[2], self.buf[3]])), 4),
                    127 if self.buf.len() >= 10 => {
                        let bytes: [u8; 8] = self.buf[2..10].try_into().expect("eight bytes");
                        (u64::from_be_bytes(bytes) as usize, 10)
                    }
                    126 | 127 => (usize::MAX, 0),
                    n => (usize::from(n), 2),
                };
                if len != usize::MAX && self.buf.len() >= start + len {
                    let opcode = self.buf[0] & 0x0f;
                    let payload = self.buf[start..start + len].to_vec();
                    self.buf.drain(..start + len);
                    return Some((opcode, payload));
                }
            }
            let mut chunk = [0u8; 4096];
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => self.buf.extend_from_slice(&chunk[..n]),
                _ => return None,
            }
        }
    }

    /// The next text frame as JSON, skipping pings.
    pub async fn next_json(&mut self) -> Value {
        loop {
            match self.next_frame().await {
                Some((0x1, payload)) => return serde_json::from_slice(&payload).expect("the server sends JSON"),
                Some((0x9 | 0xa, _)) => {}
                other => panic!("waiting for a text frame: {other:?}"),
            }
        }
    }

    /// Reads until the server's close frame and returns its code; `None`
    /// when the connection ended without one.
    pub async fn close_code(&mut self) -> Option<u16> {
        loop {
            match self.next_frame().await? {
                (0x8, payload) if payload.len() >= 2 => return Some(u16::from_be_bytes([payload[0], payload[1]])),
                (0x8, _) => return Some(1005),
                _ => {}
            }
        }
    }
}

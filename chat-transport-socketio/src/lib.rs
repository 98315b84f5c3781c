//! Socket.IO for the chat toolkit: Socket.IO v5 on Engine.IO v4, over
//! WebSocket and HTTP long-polling, on [socketioxide], so that
//! `socket.io-client` 4.x (and python-socketio, and the other client
//! libraries) talk to the same engine as native clients with nothing changed
//! but the URL. The contract is section 10 of the wire contract; the
//! project's `docs/socketio.md` has it in short, with a migration guide.
//!
//! [`routes`] gives the `/socket.io/` endpoint, to be mounted beside the
//! native transport with [`chat_transport_ws::router_with`], so that it shares
//! the listener, its connection caps, timers, CORS and origin allow-list:
//!
//! ```no_run
//! # use chat_transport_ws::AppState;
//! # fn wire(state: AppState) -> axum::Router {
//! let socketio = chat_transport_socketio::routes(&state);
//! chat_transport_ws::router_with(state, socketio)
//! # }
//! ```
//!
//! # How a socket meets the engine
//!
//! One Socket.IO socket is one engine [`Session`], exactly as a native
//! WebSocket is. socketioxide speaks the protocols (handshakes, heartbeats,
//! packets, acks, the upgrade from polling); everything chat-specific comes
//! from the engine, which is the only path between clients: socketioxide's
//! rooms, broadcasts and adapter are never used, so native and Socket.IO
//! clients share rooms and nothing reaches anyone twice.
//!
//! - **Connect.** The namespace's middleware authenticates the handshake's
//!   `auth.token` (or an `Authorization: Bearer` header) with the listener's
//!   authenticator and opens the session; a refusal is a `connect_error`
//!   whose message starts with the error code (`unauthorized: token
//!   expired`). The server then emits `ready` (the native `ready`'s data) and
//!   `connection_status`.
//! - **Commands in.** Every event is taken, in the order it arrived, into the
//!   socket's bounded queue by an extractor that runs inside socketioxide's
//!   dispatch (a handler proper would be spawned as a task per event, and
//!   tasks may run out of order). One task per socket, the driver, submits
//!   them to the session while it accepts input, so a client that sends
//!   faster than its commands complete is pushed back as natively; past the
//!   queue's bound a command is refused `rate_limited` at once.
//! - **Answers and events out.** The driver writes the session's output: an
//!   ack `{"ok":true,"data"}` or `{"ok":false,"error"}` for a command that
//!   asked for one, an `error` event for a failure without one, and each
//!   event under its own name. An event's payload is encoded once for every
//!   Socket.IO session it goes to ([`chat_core::Delivery`] caches it per
//!   codec); socketioxide frames it per socket.
//! - **Aliases** of common Socket.IO chat servers: `room:joined` and
//!   `message:ack` after a successful join or send, `user:online` /
//!   `user:offline` beside `presence:changed`, `pong` after `ping`.
//! - **The support-widget dialect.** A visitor's `chat message` (a string or
//!   `{"text"}`) posts to its open support room, opening one on first use;
//!   the visitor gets `message_received` when it is stored, and other
//!   members' messages as `chat message` `{"text","from","message"}`.
//! - **Limits.** A packet larger than the listener's frame limit ends the
//!   connection (socketioxide's `max_payload`); a session the engine ends (an
//!   expired token, abuse, revocation) is told why with a `close` event
//!   `{"code","reason"}` (the native close code) and disconnected; a client
//!   that stops reading fills its socket's buffer (as long as the engine's
//!   outbound queue) and is cut off as a slow consumer (`close` 4429 once
//!   it reads again), without holding up anyone else.
//!
//! socketioxide has no connection-state recovery; resuming is `room:join`
//! with `since_seq`, as natively, which loses nothing even across server
//! restarts and processes.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use chat_core::command::{CreateRoom, JoinRoom, SendMessage};
use chat_core::{
    CloseReason, Command, CommandKind, Delivery, Error, ErrorCode, Event, EventCodec, Output, PresenceStatus, Ready,
    Ref, Reply, RoomId, RoomKind, Session, User, UserId,
};
use chat_transport_ws::wire::ErrorBody;
use chat_transport_ws::{ApiError, AppState};
use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};
use serde_json::value::RawValue;
use socketioxide::adapter::LocalAdapter;
use socketioxide::extract::{AckSender, SocketRef, TryData};
use socketioxide::handler::{ConnectHandler, FromMessage, FromMessageParts, Value};
use socketioxide::socket::Socket;
use socketioxide::{SendError, SocketError, SocketIo};
use tokio::sync::Notify;

/// The name sessions of this transport are counted under
/// ([`chat_core::Engine::open_session_on`]).
pub const TRANSPORT: &str = "socketio";

/// tungstenite's read buffer per WebSocket: commands are a few hundred
/// bytes, and every idle connection holds this much (as natively).
const READ_BUFFER_BYTES: usize = 512;

/// Most commands waiting in one socket's queue for the session to take
/// them; past it a command is refused `rate_limited` at once.
const MAX_QUEUED: usize = 256;

/// Most `chat message` texts held while the visitor's support room opens.
const MAX_WIDGET_PENDING: usize = 32;

/// How long a slow consumer's socket is given to drain far enough to take
/// its `close` and disconnect packets, after its session has already ended;
/// its heartbeat ends it in any case.
const DISCONNECT_RETRY: Duration = Duration::from_millis(100);
const DISCONNECT_TRIES: u32 = 100;

/// The `/socket.io/` endpoint for the engine, authenticator and limits of
/// `app`, to mount with [`chat_transport_ws::router_with`]. A browser
/// request from an origin the listener does not allow is answered 403
/// before it reaches Socket.IO.
pub fn routes(app: &AppState) -> Router<AppState> {
    let limit = app.config().max_frame_bytes;
    let (service, io) = SocketIo::builder()
        .max_payload(u64::try_from(limit).unwrap_or(u64::MAX))
        .ws_max_message_size(limit)
        .ws_max_frame_size(limit)
        .ws_read_buffer_size(READ_BUFFER_BYTES)
        .max_buffer_size(app.engine().config().limits.outbound_queue)
        .build_svc();
    let (for_connect, for_auth) = (app.clone(), app.clone());
    let connect = move |socket: SocketRef| connected(for_connect.clone(), socket);
    let middleware =
        move |socket: SocketRef, data: TryData<serde_json::Value>| authenticate(for_auth.clone(), socket, data);
    io.ns("/", connect.with(middleware));
    Router::new()
        .route_service("/socket.io/", service.clone())
        .route_service("/socket.io", service)
        .layer(middleware::from_fn_with_state(app.clone(), guard))
}

/// What every request to `/socket.io/` passes before socketioxide: the
/// origin check, then the request head is cut down and detached. socketioxide
/// (engineioxide) keeps the head for the socket's whole life, so only the
/// headers it and the authentication read are kept, and they and the URI
/// are copied: hyper parses them as slices of the connection's 8 KiB read
/// buffer, which they would otherwise keep alive, and a browser's cookies
/// and `Accept-*` headers would cost every connection a kilobyte more.
async fn guard(State(app): State<AppState>, mut request: Request, next: Next) -> Response {
    use axum::http::{HeaderMap, HeaderValue, Uri};
    if !app.origin_allowed(request.headers()) {
        return ApiError::new(ErrorCode::Forbidden, "origin not allowed").into_response();
    }
    if let Ok(uri) = Uri::try_from(request.uri().to_string()) {
        *request.uri_mut() = uri;
    }
    let headers = request.headers_mut();
    let mut kept = HeaderMap::with_capacity(KEPT_HEADERS.len());
    for name in KEPT_HEADERS {
        for value in headers.get_all(&name) {
            let mut copy = HeaderValue::from_bytes(value.as_bytes()).unwrap_or_else(|_| value.clone());
            copy.set_sensitive(value.is_sensitive());
            kept.append(name.clone(), copy);
        }
    }
    *headers = kept;
    next.run(request).await
}

/// The request headers that reach socketioxide: the WebSocket handshake's,
/// the body's framing, and the token's.
const KEPT_HEADERS: [axum::http::HeaderName; 10] = {
    use axum::http::header;
    [
        header::HOST,
        header::CONNECTION,
        header::UPGRADE,
        header::SEC_WEBSOCKET_KEY,
        header::SEC_WEBSOCKET_VERSION,
        header::SEC_WEBSOCKET_PROTOCOL,
        header::CONTENT_TYPE,
        header::CONTENT_LENGTH,
        header::TRANSFER_ENCODING,
        header::AUTHORIZATION,
    ]
};

/// Why a connection was refused: the `connect_error` message, which starts
/// with the error code.
#[derive(Debug)]
struct Refusal(String);

impl Refusal {
    fn new(err: &Error) -> Self {
        let code = err.code().as_str();
        let message = err.to_string();
        if message.starts_with(code) { Refusal(message) } else { Refusal(format!("{code}: {message}")) }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The session opened by the middleware, for the connect handler to take.
#[derive(Clone)]
struct Opened(Arc<Mutex<Option<(Session, Ready)>>>);

/// The connect middleware: authenticates the handshake and opens the session.
async fn authenticate(app: AppState, socket: SocketRef, data: TryData<serde_json::Value>) -> Result<(), Refusal> {
    let from_auth = data.0.ok().and_then(|auth| auth.get("token").and_then(|t| t.as_str()).map(str::to_owned));
    let Some(token) = from_auth.or_else(|| chat_transport_ws::bearer_token(&socket.req_parts().headers)) else {
        return Err(Refusal::new(&Error::Unauthorized("missing token: connect with auth: {token}".into())));
    };
    let identity = app.authenticator().authenticate(&token).await.map_err(|e| Refusal::new(&e))?;
    drop(token);
    let (session, ready) = match app.engine().open_session_on(TRANSPORT, identity).await {
        Ok(opened) => opened,
        Err(err) => {
            tracing::warn!(error = %err, "opening a Socket.IO session failed");
            return Err(Refusal::new(&err));
        }
    };
    tracing::debug!(session = %session.id(), user = %session.user().id, socket = %socket.id, "socket.io session opened");
    socket.extensions.insert(Opened(Arc::new(Mutex::new(Some((session, ready))))));
    Ok(())
}

/// The connect handler. Its synchronous part runs inside socketioxide's
/// connect, before any event of the socket can be dispatched: the socket's
/// queue and handlers are in place before the first event. The returned
/// future (spawned by socketioxide) is the socket's driver.
fn connected(app: AppState, socket: SocketRef) -> impl Future<Output = ()> + Send {
    let opened = socket.extensions.remove::<Opened>().and_then(|o| o.0.lock().ok().and_then(|mut slot| slot.take()));
    let link = Arc::new(Link::default());
    socket.extensions.insert(link.clone());
    socket.on_fallback(|_: Queued| async {});
    let gone = link.clone();
    socket.on_disconnect(move |_: SocketRef| {
        gone.push(Inbound::Gone);
        async {}
    });
    async move {
        let Some((session, ready)) = opened else {
            let _ = socket.disconnect();
            return;
        };
        Driver::new(app, socket, session, link).run(ready).await;
    }
}

// --- commands in ---

/// What the driver takes from a socket's queue.
enum Inbound {
    /// An event from the client: `["name", data…]` and its ack, if it asked for one.
    Packet(Value, Option<AckSender>),
    /// The socket is gone.
    Gone,
}

/// A socket's queue of incoming events, between socketioxide's dispatch and
/// the driver. It allocates with the first event, not with the socket.
#[derive(Default)]
struct Link {
    queue: Mutex<VecDeque<Inbound>>,
    wake: Notify,
}

impl Link {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Inbound>> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues an event; when the queue is full, hands the ack back.
    fn push_packet(&self, value: Value, ack: Option<AckSender>) -> Result<(), Option<AckSender>> {
        let mut queue = self.lock();
        if queue.len() >= MAX_QUEUED {
            return Err(ack);
        }
        queue.push_back(Inbound::Packet(value, ack));
        drop(queue);
        self.wake.notify_one();
        Ok(())
    }

    fn push(&self, item: Inbound) {
        self.lock().push_back(item);
        self.wake.notify_one();
    }

    /// The next item; cancel-safe (an item is taken only when returned).
    async fn next(&self) -> Inbound {
        loop {
            let popped = self.lock().pop_front();
            if let Some(item) = popped {
                return item;
            }
            self.wake.notified().await;
        }
    }
}

/// The extractor that queues every event for the driver, inside
/// socketioxide's dispatch and so in arrival order. It then declines, so
/// that socketioxide spawns no task for the (empty) handler.
struct Queued;

/// "Taken by the socket's queue": the extractor's deliberate refusal.
#[derive(Debug)]
struct Taken;

impl fmt::Display for Taken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("queued for the session")
    }
}

impl std::error::Error for Taken {}

impl FromMessage<LocalAdapter> for Queued {
    type Error = Taken;

    fn from_message(socket: Arc<Socket>, mut value: Value, ack_id: Option<i64>) -> Result<Self, Taken> {
        let ack = match ack_id {
            Some(_) => match AckSender::from_message_parts(&socket, &mut value, &ack_id) {
                Ok(ack) => Some(ack),
                Err(never) => match never {},
            },
            None => None,
        };
        let Some(link) = socket.extensions.get::<Arc<Link>>() else { return Err(Taken) };
        if let Err(ack) = link.push_packet(value, ack) {
            let err = Error::RateLimited("too many commands waiting; slow down".into());
            match ack {
                Some(ack) => {
                    let _ = ack.send(&AckBody::<()>::Err(&err));
                }
                None => {
                    let _ = SocketRef::from(socket).emit("error", &ErrorBody(&err));
                }
            }
        }
        Err(Taken)
    }
}

/// An event's name and first argument, borrowed from its packet.
fn parse(value: &Value) -> Result<(String, Option<&RawValue>), Error> {
    let Value::Str(text, binaries) = value else {
        return Err(Error::invalid("binary packets are not supported; send JSON"));
    };
    if binaries.as_ref().is_some_and(|b| !b.is_empty()) {
        return Err(Error::invalid("binary attachments are not supported; send JSON"));
    }
    let args: Vec<&RawValue> =
        serde_json::from_str(text.as_str()).map_err(|_| Error::invalid("an event must be a JSON array"))?;
    let name = args.first().ok_or_else(|| Error::invalid("an event needs a name"))?;
    let name: String = serde_json::from_str(name.get()).map_err(|_| Error::invalid("an event's name is a string"))?;
    Ok((name, args.get(1).copied()))
}

// --- answers out ---

/// An ack's argument: `{"ok":true,"data"}` or `{"ok":false,"error"}`.
enum AckBody<'a, T> {
    Ok(&'a T),
    Err(&'a Error),
}

impl<T: Serialize> Serialize for AckBody<'_, T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(2))?;
        match self {
            AckBody::Ok(data) => {
                map.serialize_entry("ok", &true)?;
                map.serialize_entry("data", data)?;
            }
            AckBody::Err(err) => {
                map.serialize_entry("ok", &false)?;
                map.serialize_entry("error", &ErrorBody(err))?;
            }
        }
        map.end()
    }
}

/// The ack of `ping`: `{"ok":true,"data":{"server_time"},"server_time"}`,
/// which reads right both as this transport's ack and as the widget
/// dialect's bare `{"server_time"}`.
#[derive(Serialize)]
struct PingAck<'a> {
    ok: bool,
    data: &'a Reply,
    server_time: &'a chat_core::Timestamp,
}

/// `close`: why the server ended the session, with the native close code.
#[derive(Serialize)]
struct CloseInfo {
    code: u16,
    reason: &'static str,
}

/// `message:ack` and `message_received`.
#[derive(Serialize)]
struct Stored<'a> {
    client_msg_id: &'a str,
    message: &'a chat_core::Message,
}

/// The dialect's `chat message` from another member.
#[derive(Serialize)]
struct ChatMessage<'a> {
    text: &'a str,
    from: &'a User,
    message: &'a chat_core::Message,
}

/// An event as this transport emits it: its name, its data encoded once,
/// and the alias some Socket.IO chat servers emit beside it.
struct Frame {
    name: &'static str,
    data: Box<RawValue>,
    alias: Option<(&'static str, Box<RawValue>)>,
}

/// Encodes events for Socket.IO sessions; the engine caches the result per
/// event, so an event for many sessions is encoded once.
struct SocketIoCodec;

fn raw<T: Serialize + ?Sized>(value: &T) -> Box<RawValue> {
    serde_json::value::to_raw_value(value).unwrap_or_else(|e| {
        tracing::error!(error = %e, "encoding an event failed");
        RawValue::from_string("{}".to_owned()).unwrap_or_default()
    })
}

impl EventCodec for SocketIoCodec {
    type Frame = Arc<Frame>;

    fn encode(&self, event: &Event) -> Arc<Frame> {
        let alias = match event {
            Event::PresenceChanged(p)
                if (p.status == PresenceStatus::Offline) != (p.previous == PresenceStatus::Offline) =>
            {
                #[derive(Serialize)]
                struct Who<'a> {
                    user_id: &'a UserId,
                }
                let name = if p.status == PresenceStatus::Offline { "user:offline" } else { "user:online" };
                Some((name, raw(&Who { user_id: &p.user_id })))
            }
            _ => None,
        };
        Arc::new(Frame { name: event.name(), data: raw(&event.data()), alias })
    }
}

// --- the driver ---

/// What a command's answer leads to, besides its ack.
enum Then {
    /// Nothing more.
    Plain,
    /// `room:joined` with the reply's data.
    Joined,
    /// `event` `{"client_msg_id","message"}` once the message is stored:
    /// `message:ack` for `message:send`, `message_received` for the
    /// dialect's `chat message`.
    Stored { client_msg_id: String, event: &'static str },
    /// The ping ack's special shape, and a `pong` event.
    Pong,
    /// The visitor's support room was opened (or found): join it.
    WidgetCreated,
    /// The visitor's support room was joined: post what waits.
    WidgetJoined,
}

/// A command waiting for its answer.
struct Pending {
    ack: Option<AckSender>,
    then: Then,
}

/// A visitor's part in the support-widget dialect.
#[derive(Default)]
struct Widget {
    /// The open support room, once known.
    room: Option<RoomId>,
    /// Whether this socket follows it (joined).
    joined: bool,
    /// A `room:create` for it is under way.
    opening: bool,
    /// A room that could not be joined was replaced since the last join:
    /// a second failure fails the waiting texts instead of trying again.
    reopened: bool,
    /// Texts waiting for the room, with their acks.
    waiting: VecDeque<(String, Option<AckSender>)>,
    /// The room's members, to say who wrote.
    members: HashMap<UserId, User>,
}

/// Whether the driver goes on.
#[derive(PartialEq, Eq)]
enum Flow {
    Continue,
    Stop,
}

/// One socket's task: feeds its commands to its session and writes the
/// session's output to it.
struct Driver {
    app: AppState,
    socket: SocketRef,
    session: Session,
    link: Arc<Link>,
    next_ref: u64,
    /// Commands whose answer needs more than an `error` event on failure.
    pending: HashMap<u64, Pending>,
    /// Visitors only.
    widget: Option<Box<Widget>>,
}

impl Driver {
    fn new(app: AppState, socket: SocketRef, session: Session, link: Arc<Link>) -> Self {
        Driver { app, socket, session, link, next_ref: 0, pending: HashMap::new(), widget: None }
    }

    async fn run(mut self, ready: Ready) {
        if self.emit("ready", &ready) == Flow::Stop {
            return;
        }
        let support = self.app.engine().support_availability();
        #[derive(Serialize)]
        struct Status {
            status: &'static str,
            support_available: bool,
        }
        if self.emit("connection_status", &Status { status: "connected", support_available: support.available })
            == Flow::Stop
        {
            return;
        }
        if self.session.user().is_visitor() {
            let me = self.session.user().id.clone();
            // The visitor's open support room, if it has one: followed at
            // once, so that a widget speaking the dialect hears the agent
            // after a reconnect before it writes again.
            let open = ready
                .rooms
                .iter()
                .filter(|r| r.room.kind == RoomKind::Support && !r.room.closed && r.room.created_by == me)
                .max_by_key(|r| r.room.created_at)
                .map(|r| r.room.id);
            let mut widget = Box::<Widget>::default();
            widget.room = open;
            self.widget = Some(widget);
            if let Some(room_id) = open {
                Box::pin(self.widget_follow(room_id)).await;
            }
        }
        drop(ready);
        let link = self.link.clone();
        loop {
            enum Step {
                Out(Output),
                In(Inbound),
            }
            let step = tokio::select! {
                biased;
                output = self.session.next_output() => Step::Out(output),
                inbound = link.next(), if self.session.accepts_input() => Step::In(inbound),
            };
            // Boxed, so that the task's future (the socket's whole idle
            // state) holds only the wait, not the state of every await on
            // the command and output paths (about 4.7 KB inline).
            let flow = match step {
                Step::Out(output) => Box::pin(self.output(output)).await,
                Step::In(Inbound::Gone) => Flow::Stop,
                Step::In(Inbound::Packet(value, ack)) => Box::pin(self.packet(&value, ack)).await,
            };
            if flow == Flow::Stop {
                break;
            }
        }
        tracing::debug!(session = %self.session.id(), user = %self.session.user().id, "socket.io session closed");
    }

    /// Emits an event; a socket whose buffer is full is a slow consumer and
    /// is cut off.
    fn emit<T: Serialize + ?Sized>(&mut self, name: &str, data: &T) -> Flow {
        match self.socket.emit(name, data) {
            Ok(()) => Flow::Continue,
            Err(SendError::Socket(SocketError::InternalChannelFull)) => self.slow_consumer(),
            Err(SendError::Socket(SocketError::Closed)) => Flow::Stop,
            Err(err) => {
                tracing::error!(error = %err, event = name, "emitting an event failed");
                Flow::Continue
            }
        }
    }

    /// Cuts off a client whose socket's buffer is full: the session ends
    /// (counted as the engine's own slow-consumer closes are), and the
    /// socket is told why and disconnected.
    fn slow_consumer(&mut self) -> Flow {
        tracing::info!(session = %self.session.id(), user = %self.session.user().id, "socket.io slow consumer closed");
        self.session.fell_behind();
        end(self.socket.clone(), CloseReason::SlowConsumer);
        Flow::Stop
    }

    fn ack<T: Serialize>(&mut self, ack: Option<AckSender>, result: &Result<T, Error>) -> Flow {
        match (ack, result) {
            (Some(ack), Ok(data)) => self.send_ack(ack, &AckBody::Ok(data)),
            (Some(ack), Err(err)) => self.send_ack(ack, &AckBody::<()>::Err(err)),
            (None, Ok(_)) => Flow::Continue,
            (None, Err(err)) => self.emit("error", &ErrorBody(err)),
        }
    }

    fn send_ack<T: Serialize + ?Sized>(&mut self, ack: AckSender, body: &T) -> Flow {
        match ack.send(body) {
            Ok(()) => Flow::Continue,
            Err(SendError::Socket(SocketError::InternalChannelFull)) => self.slow_consumer(),
            Err(SendError::Socket(SocketError::Closed)) => Flow::Stop,
            Err(err) => {
                tracing::error!(error = %err, "sending an ack failed");
                Flow::Continue
            }
        }
    }

    /// Answers a frame that is not a valid command, and counts it.
    fn bad(&mut self, ack: Option<AckSender>, err: Error) -> Flow {
        if self.ack::<()>(ack, &Err(err)) == Flow::Stop {
            return Flow::Stop;
        }
        match self.session.note_bad_frame() {
            Some(reason) => {
                end(self.socket.clone(), reason);
                Flow::Stop
            }
            None => Flow::Continue,
        }
    }

    async fn packet(&mut self, value: &Value, ack: Option<AckSender>) -> Flow {
        let (name, data) = match parse(value) {
            Ok(parsed) => parsed,
            Err(err) => return self.bad(ack, err),
        };
        if name == "chat message" {
            return self.chat_message(data, ack).await;
        }
        let Some(kind) = CommandKind::from_name(&name) else {
            return self.bad(ack, Error::UnknownCommand(name));
        };
        let text = data.map_or("{}", RawValue::get);
        let command = match Command::decode(kind, &mut serde_json::Deserializer::from_str(text)) {
            Ok(command) => command,
            Err(e) => return self.bad(ack, Error::invalid(e.to_string())),
        };
        let then = match &command {
            Command::RoomJoin(_) => Then::Joined,
            Command::MessageSend(send) => {
                Then::Stored { client_msg_id: send.client_msg_id.clone(), event: "message:ack" }
            }
            Command::Ping => Then::Pong,
            _ => Then::Plain,
        };
        self.submit(command, ack, then).await;
        Flow::Continue
    }

    /// Submits a command; its answer comes back as an [`Output::Reply`]
    /// with the `ref` made here when anything waits for it.
    async fn submit(&mut self, command: Command, ack: Option<AckSender>, then: Then) {
        let reference = if ack.is_some() || !matches!(then, Then::Plain) {
            self.next_ref += 1;
            self.pending.insert(self.next_ref, Pending { ack, then });
            Some(Ref(self.next_ref.to_string().into()))
        } else {
            None
        };
        self.session.submit(reference, command).await;
    }

    async fn output(&mut self, output: Output) -> Flow {
        match output {
            Output::Reply { reference, result } => {
                let pending = reference.and_then(|r| r.0.parse::<u64>().ok()).and_then(|n| self.pending.remove(&n));
                match pending {
                    Some(Pending { ack, then }) => self.answered(ack, then, result).await,
                    None => self.ack(None, &result),
                }
            }
            Output::Event(delivery) => self.event(&delivery).await,
            Output::Close(reason) => {
                if reason != CloseReason::Shutdown {
                    end(self.socket.clone(), reason);
                }
                // At shutdown the connection ends with the process, which
                // socket.io clients take as a reason to reconnect (a
                // server-side disconnect would stop them).
                Flow::Stop
            }
            // socketioxide pings and times out clients itself.
            _ => Flow::Continue,
        }
    }

    async fn answered(&mut self, ack: Option<AckSender>, then: Then, result: Result<Reply, Error>) -> Flow {
        match (then, result) {
            (Then::Plain, result) => self.ack(ack, &result),
            (Then::Joined, Ok(reply)) => {
                if self.emit("room:joined", &reply) == Flow::Stop {
                    return Flow::Stop;
                }
                self.ack(ack, &Ok(reply))
            }
            (Then::Stored { client_msg_id, event }, Ok(Reply::Message { message })) => {
                if self.emit(event, &Stored { client_msg_id: &client_msg_id, message: &message }) == Flow::Stop {
                    return Flow::Stop;
                }
                self.ack(ack, &Ok(Reply::Message { message }))
            }
            (Then::Pong, Ok(reply)) => {
                let Reply::Pong { server_time } = &reply else { return self.ack(ack, &Ok(reply)) };
                if let Some(ack) = ack
                    && self.send_ack(ack, &PingAck { ok: true, data: &reply, server_time }) == Flow::Stop
                {
                    return Flow::Stop;
                }
                self.emit("pong", &reply)
            }
            (Then::WidgetCreated, result) => self.widget_created(result).await,
            (Then::WidgetJoined, result) => self.widget_joined(result).await,
            (_, result) => self.ack(ack, &result),
        }
    }

    async fn event(&mut self, delivery: &Delivery) -> Flow {
        let frame = delivery.encoded(&SocketIoCodec);
        if self.emit(frame.name, &*frame.data) == Flow::Stop {
            return Flow::Stop;
        }
        if let Some((name, data)) = &frame.alias
            && self.emit(name, &**data) == Flow::Stop
        {
            return Flow::Stop;
        }
        if self.widget.is_some() { self.widget_event(delivery.event()).await } else { Flow::Continue }
    }

    // --- the support-widget dialect ---

    /// `chat message`: a visitor's text for its support room.
    async fn chat_message(&mut self, data: Option<&RawValue>, ack: Option<AckSender>) -> Flow {
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Text {
            Bare(String),
            Object { text: String },
        }
        let Some(widget) = self.widget.as_mut() else {
            let err =
                Error::forbidden("`chat message` is the support widget's dialect, for visitors; use message:send");
            return self.bad(ack, err);
        };
        let text = match data.map(|d| serde_json::from_str::<Text>(d.get())) {
            Some(Ok(Text::Bare(text) | Text::Object { text })) => text,
            _ => return self.bad(ack, Error::invalid("`chat message` takes a string or {\"text\"}")),
        };
        if widget.waiting.len() >= MAX_WIDGET_PENDING {
            return self.ack::<()>(ack, &Err(Error::RateLimited("too many messages waiting for the room".into())));
        }
        match widget.room {
            Some(room_id) if widget.joined => {
                self.widget_send(room_id, text, ack).await;
            }
            Some(_) => widget.waiting.push_back((text, ack)),
            None => {
                widget.waiting.push_back((text, ack));
                if !widget.opening {
                    self.widget_open().await;
                }
            }
        }
        Flow::Continue
    }

    /// Opens the visitor's support room (`room:create` answers the open one
    /// if there is one).
    async fn widget_open(&mut self) {
        if let Some(widget) = self.widget.as_mut() {
            widget.opening = true;
        }
        let create = CreateRoom { kind: RoomKind::Support, name: None, visibility: None, members: Vec::new() };
        self.submit(Command::RoomCreate(create), None, Then::WidgetCreated).await;
    }

    /// Follows the visitor's support room, for its messages and members.
    async fn widget_follow(&mut self, room_id: RoomId) {
        self.submit(Command::RoomJoin(JoinRoom { room_id, since_seq: None }), None, Then::WidgetJoined).await;
    }

    async fn widget_send(&mut self, room_id: RoomId, body: String, ack: Option<AckSender>) {
        let client_msg_id = uuid::Uuid::now_v7().to_string();
        let send = SendMessage {
            room_id,
            client_msg_id: client_msg_id.clone(),
            body,
            attachments: Vec::new(),
            reply_to: None,
        };
        let then = Then::Stored { client_msg_id, event: "message_received" };
        self.submit(Command::MessageSend(send), ack, then).await;
    }

    /// Fails every waiting text with `err`.
    fn widget_fail(&mut self, err: &Error) -> Flow {
        let waiting = self.widget.as_mut().map(|w| std::mem::take(&mut w.waiting)).unwrap_or_default();
        let mut told = false;
        for (_, ack) in waiting {
            let flow = match ack {
                Some(ack) => self.send_ack(ack, &AckBody::<()>::Err(err)),
                // Texts sent without an ack hear of it once.
                None if !told => {
                    told = true;
                    self.emit("error", &ErrorBody(err))
                }
                None => Flow::Continue,
            };
            if flow == Flow::Stop {
                return Flow::Stop;
            }
        }
        Flow::Continue
    }

    async fn widget_created(&mut self, result: Result<Reply, Error>) -> Flow {
        let Some(widget) = self.widget.as_mut() else { return Flow::Continue };
        widget.opening = false;
        match result {
            Ok(Reply::Room { room }) => {
                widget.room = Some(room.id);
                widget.joined = false;
                self.widget_follow(room.id).await;
                Flow::Continue
            }
            Ok(_) => self.widget_fail(&Error::Internal("room:create answered without a room".into())),
            Err(err) => self.widget_fail(&err),
        }
    }

    async fn widget_joined(&mut self, result: Result<Reply, Error>) -> Flow {
        let Some(widget) = self.widget.as_mut() else { return Flow::Continue };
        match result {
            Ok(Reply::Joined { room, members, .. }) => {
                widget.joined = true;
                widget.reopened = false;
                widget.members = members.into_iter().map(|u| (u.id.clone(), u)).collect();
                let waiting = std::mem::take(&mut widget.waiting);
                for (text, ack) in waiting {
                    self.widget_send(room.id, text, ack).await;
                }
                Flow::Continue
            }
            Ok(_) => self.widget_fail(&Error::Internal("room:join answered without a room".into())),
            Err(err) => {
                // The room cannot be followed (closed meanwhile): texts that
                // wait for it open another, once; a later text does too.
                widget.room = None;
                widget.joined = false;
                if widget.waiting.is_empty() || widget.opening || widget.reopened || err.code() != ErrorCode::Forbidden
                {
                    return self.widget_fail(&err);
                }
                widget.reopened = true;
                self.widget_open().await;
                Flow::Continue
            }
        }
    }

    /// The dialect's view of an event: other members' messages in the
    /// visitor's support room as `chat message`, and the room's state.
    async fn widget_event(&mut self, event: &Event) -> Flow {
        let me = self.session.user().id.clone();
        let Some(widget) = self.widget.as_mut() else { return Flow::Continue };
        let Some(room) = widget.room else { return Flow::Continue };
        match event {
            Event::MessageNew(e) if e.message.room_id == room && e.message.sender_id != me => {
                let sender = e.message.sender_id.clone();
                if !widget.members.contains_key(&sender) {
                    let found = self.app.engine().store().user(&sender).await.ok().flatten();
                    let user = found.unwrap_or_else(|| User::new(sender.clone(), sender.to_string()));
                    if let Some(widget) = self.widget.as_mut() {
                        widget.members.insert(sender.clone(), user);
                    }
                }
                let Some(from) = self.widget.as_ref().and_then(|w| w.members.get(&sender)).cloned() else {
                    return Flow::Continue;
                };
                let message = &e.message;
                self.emit("chat message", &ChatMessage { text: &message.body, from: &from, message })
            }
            Event::UserJoined(e) if e.room_id == room => {
                widget.members.insert(e.user.id.clone(), e.user.clone());
                Flow::Continue
            }
            Event::RoomUpdated(e) if e.room.id == room && e.room.closed => {
                widget.room = None;
                widget.joined = false;
                Flow::Continue
            }
            Event::RoomRemoved(e) if e.room_id == room => {
                widget.room = None;
                widget.joined = false;
                Flow::Continue
            }
            _ => Flow::Continue,
        }
    }
}

/// Ends a socket the engine is done with: tells it why (`close`), then
/// disconnects it. A socket whose buffer is full (a slow consumer) cannot
/// take either packet yet; they are tried again, in that order, while the
/// buffer drains, so that a client that reads again learns why it was cut
/// off, and the socket's heartbeat ends it if it never does. Its session is
/// already gone either way.
fn end(socket: SocketRef, reason: CloseReason) {
    let close = CloseInfo { code: chat_transport_ws::ws::code_for(reason), reason: reason.message() };
    let full = |sent: Result<(), SendError>| matches!(sent, Err(SendError::Socket(SocketError::InternalChannelFull)));
    let mut told = !full(socket.emit("close", &close));
    if told && !matches!(socket.clone().disconnect(), Err(SocketError::InternalChannelFull)) {
        return;
    }
    tokio::spawn(async move {
        for _ in 0..DISCONNECT_TRIES {
            tokio::time::sleep(DISCONNECT_RETRY).await;
            if !told {
                told = !full(socket.emit("close", &close));
                if !told {
                    continue;
                }
            }
            if !matches!(socket.clone().disconnect(), Err(SocketError::InternalChannelFull)) {
                return;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(text: &str) -> Value {
        Value::Str(text.to_owned().into(), None)
    }

    #[test]
    fn events_parse_into_name_and_first_argument() {
        let v = value(r#"["room:join",{"room_id":"r"},"ignored"]"#);
        let (name, data) = parse(&v).expect("parses");
        assert_eq!(name, "room:join");
        assert_eq!(data.map(RawValue::get), Some(r#"{"room_id":"r"}"#));
        let v = value(r#"["room:list"]"#);
        assert!(parse(&v).expect("parses").1.is_none());
        for bad in [r#"{"a":1}"#, "[]", "[1]", "not json"] {
            assert_eq!(parse(&value(bad)).expect_err(bad).code(), ErrorCode::Invalid, "{bad}");
        }
        let binary =
            Value::Str(r#"["x",{"_placeholder":true,"num":0}]"#.into(), Some(VecDeque::from([vec![1u8].into()])));
        assert_eq!(parse(&binary).expect_err("binary").code(), ErrorCode::Invalid);
    }

    #[test]
    fn acks_have_the_contract_shape() {
        let ok = serde_json::to_value(AckBody::Ok(&Reply::empty())).expect("serializes");
        assert_eq!(ok, serde_json::json!({"ok": true, "data": {}}));
        let err = Error::NotMember;
        let failed = serde_json::to_value(AckBody::<()>::Err(&err)).expect("serializes");
        assert_eq!(failed["ok"], false);
        assert_eq!(failed["error"]["code"], "not_member");
    }

    #[test]
    fn presence_aliases_follow_comings_and_goings() {
        let change = |status, previous| {
            Event::PresenceChanged(chat_core::event::PresenceChanged {
                user_id: UserId::new("ada").expect("valid"),
                status,
                last_seen: None,
                previous,
            })
        };
        let alias = |e: &Event| SocketIoCodec.encode(e).alias.as_ref().map(|(n, d)| (*n, d.get().to_owned()));
        assert_eq!(
            alias(&change(PresenceStatus::Online, PresenceStatus::Offline)),
            Some(("user:online", r#"{"user_id":"ada"}"#.to_owned()))
        );
        assert_eq!(alias(&change(PresenceStatus::Away, PresenceStatus::Online)), None);
        assert_eq!(alias(&change(PresenceStatus::Offline, PresenceStatus::Busy)).map(|a| a.0), Some("user:offline"));
        let frame = SocketIoCodec.encode(&change(PresenceStatus::Away, PresenceStatus::Online));
        assert_eq!(frame.name, "presence:changed");
        assert_eq!(frame.data.get(), r#"{"user_id":"ada","status":"away"}"#);
    }

    #[test]
    fn refusals_start_with_the_error_code() {
        assert_eq!(Refusal::new(&Error::Unauthorized("token expired".into())).0, "unauthorized: token expired");
        assert!(Refusal::new(&Error::unavailable("x")).0.starts_with("unavailable: "));
    }
}

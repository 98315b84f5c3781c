//! Socket.IO over WebSocket on the native transport's machinery, without
//! socketioxide: a client that opens `/socket.io/?EIO=4&transport=websocket`
//! (socket.io-client with `transports: ["websocket"]`, most mobile and
//! server-side clients) gets one task and one allocation, as a native
//! connection does, with Engine.IO v4 and Socket.IO v5 framing on top:
//!
//! - the Engine.IO open packet `0{"sid","upgrades":[],"pingInterval",
//!   "pingTimeout","maxPayload"}`, then the namespace connect `40{auth}`,
//!   answered `40{"sid"}` or `44{"message"}` (the client may try again until
//!   the auth timeout, at most [`MAX_REFUSALS`] times);
//! - events `42["name",data]`, acks `43<id>[body]`;
//! - the engine's keepalive beat is the Engine.IO ping (`2`, answered `3`),
//!   and a client silent past the idle timeout is closed;
//! - the session's output is written as natively: an event is one shared
//!   packet (`42[…]`, encoded once for every session), batched per flush; a
//!   client that stops reading blocks only its own writes, and the engine
//!   cuts it off as a slow consumer once its queue is full;
//! - a client that sends faster than its commands complete is not read
//!   until they do (as natively), so nothing queues up unbounded.
//!
//! Long-polling, and the WebSocket a polling client upgrades to (it carries
//! the polling session's `sid`), stay with socketioxide ([`crate::polling`]).

use std::collections::VecDeque;
use std::future::{Future, poll_fn};
use std::net::SocketAddr;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::{ConnectInfo, FromRequestParts, Request};
use axum::response::{IntoResponse, Response};
use chat_core::{CloseReason, Error, Output};
use chat_transport_ws::AppState;
use chat_transport_ws::ws::{self as native, Handshake, MAX_BATCH, Socket, WriteEnd, close_code};
use futures_util::StreamExt;
use serde::Serialize;
use tokio::time::{Instant, timeout};
use tungstenite::{Message, Utf8Bytes};

use crate::driver::{Driver, Flow, Frame, Outlet, Sent, event_packet};
use crate::{Refusal, auth_token, open_session};

/// Most refused namespace connects (`40{auth}` answered `44`) before the
/// connection is closed.
pub(crate) const MAX_REFUSALS: u32 = 3;

/// How long a close frame may take to go out when nothing else waits.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// The ping interval announced when the engine has no keepalive beat: a
/// day, so that clients do not time out a server that never pings (and
/// below the 24.8 days a JavaScript timer can wait).
const NO_PING_MS: u64 = 24 * 3600 * 1000;

/// Whether a request to `/socket.io/` opens a new Engine.IO session over
/// WebSocket: `EIO=4`, `transport=websocket` and no `sid` (a WebSocket with
/// a `sid` is an upgrade from polling, socketioxide's), with the upgrade's
/// headers.
pub(crate) fn is_fresh_websocket(request: &Request) -> bool {
    let (mut eio4, mut websocket, mut sid) = (false, false, false);
    for pair in request.uri().query().unwrap_or("").split('&') {
        match pair.split_once('=').unwrap_or((pair, "")) {
            ("EIO", v) => eio4 = v == "4",
            ("transport", v) => websocket = v == "websocket",
            ("sid", _) => sid = true,
            _ => {}
        }
    }
    eio4 && websocket && !sid && request.headers().contains_key(axum::http::header::UPGRADE)
}

/// Answers the upgrade and spawns the connection's task.
pub(crate) async fn upgrade(app: AppState, request: Request) -> Response {
    let (mut parts, _) = request.into_parts();
    let handshake = match Handshake::from_request_parts(&mut parts, &()).await {
        Ok(handshake) => handshake,
        Err(rejection) => return rejection.into_response(),
    };
    let bearer = chat_transport_ws::bearer_token(&parts.headers);
    let peer = parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0);
    drop(parts);
    let response = handshake.response();
    tokio::spawn(connection(app, handshake, bearer, peer));
    response
}

/// The connection's task. The handshakes run in a boxed future that is
/// freed before the loop starts, and the connection's state is one
/// allocation, so that an idle connection's task holds little more than a
/// pointer.
fn connection(
    app: AppState,
    handshake: Handshake,
    bearer: Option<String>,
    peer: Option<SocketAddr>,
) -> impl Future<Output = ()> + Send {
    let opening = Box::pin(open(app, handshake, bearer, peer));
    async move {
        let Some(conn) = opening.await else { return };
        conn.run().await;
    }
}

/// The Engine.IO open packet.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct OpenPacket<'a> {
    sid: &'a str,
    upgrades: [&'a str; 0],
    ping_interval: u64,
    ping_timeout: u64,
    max_payload: usize,
}

/// A random session or socket id.
fn new_sid() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// Sends one text frame, within [`CLOSE_WAIT`]; `false` when it could not.
async fn send_text(socket: &mut Socket, text: String) -> bool {
    matches!(timeout(CLOSE_WAIT, native::write_beside(socket, Utf8Bytes::from(text))).await, Ok(Ok(())))
}

/// The namespace of a packet's remainder (`/admin,…`; `/` when there is
/// none) and what follows it.
fn namespace(rest: &str) -> (&str, &str) {
    match rest.strip_prefix('/') {
        Some(_) => match rest.split_once(',') {
            Some((nsp, after)) => (nsp, after),
            None => (rest, ""),
        },
        None => ("/", rest),
    }
}

/// The Engine.IO handshake, then the Socket.IO connect with the token of
/// its `auth` (or of the upgrade's `Authorization: Bearer` header); `None`
/// once the connection was closed instead.
async fn open(
    app: AppState,
    handshake: Handshake,
    bearer: Option<String>,
    peer: Option<SocketAddr>,
) -> Option<Box<Conn>> {
    let mut socket = handshake.socket(native::socket_config(app.config())).await?;
    let interval = app.engine().config().keepalive_interval;
    let idle = app.config().idle_timeout;
    let ping_interval = if interval.is_zero() { NO_PING_MS } else { interval.as_millis() as u64 };
    // A client waits `pingInterval + pingTimeout` for a ping before it gives
    // up: the idle timeout, after which the server gives up on it too.
    let ping_timeout = (idle.saturating_sub(interval).as_millis() as u64).max(1000);
    let sid = new_sid();
    let open =
        OpenPacket { sid: &sid, upgrades: [], ping_interval, ping_timeout, max_payload: app.config().max_frame_bytes };
    let open = serde_json::to_string(&open).unwrap_or_default();
    if !send_text(&mut socket, format!("0{open}")).await {
        return None;
    }
    let deadline = Instant::now() + app.config().auth_timeout;
    let mut refusals = 0;
    loop {
        let next = match tokio::time::timeout_at(deadline, socket.next()).await {
            Ok(next) => next,
            Err(_) => {
                let why = "no Socket.IO connect within the time limit";
                native::close(&mut socket, close_code::AUTH_TIMEOUT, why, CLOSE_WAIT).await;
                return None;
            }
        };
        let text = match next {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(_))) => {
                let _ = timeout(CLOSE_WAIT, futures_util::SinkExt::flush(&mut socket)).await;
                return None;
            }
            // Pongs, and anything binary before the connect, are ignored.
            Some(Ok(_)) => continue,
            Some(Err(e)) if native::is_too_big(&e) => {
                native::send_close(&mut socket, close_code::TOO_BIG, "frame too large", CLOSE_WAIT).await;
                return None;
            }
            Some(Err(e)) => {
                if let Some((code, reason)) = native::violation(&e) {
                    native::fail(&mut socket, code, reason, CLOSE_WAIT).await;
                }
                return None;
            }
            None => return None,
        };
        let Some(rest) = text.as_str().strip_prefix("40") else {
            if text.as_str() == "1" {
                native::close(&mut socket, 1000, "", CLOSE_WAIT).await;
                return None;
            }
            // Socket.IO ignores packets for a namespace not connected.
            continue;
        };
        let (nsp, auth) = namespace(rest);
        if nsp != "/" {
            let refusal = serde_json::json!({"message": "Invalid namespace"});
            if !send_text(&mut socket, format!("44{nsp},{refusal}")).await {
                return None;
            }
            continue;
        }
        let from_auth = serde_json::from_str::<serde_json::Value>(auth).ok().as_ref().and_then(auth_token);
        match open_session(&app, from_auth.or_else(|| bearer.clone())).await {
            Ok((session, ready)) => {
                tracing::debug!(session = %session.id(), user = %session.user().id, ?peer, "socket.io session opened");
                let connected = serde_json::json!({"sid": new_sid()});
                if !send_text(&mut socket, format!("40{connected}")).await {
                    return None;
                }
                let mut driver = Driver::new(app, FrameQueue::default(), session);
                if driver.start(ready).await == Flow::Stop {
                    return None;
                }
                // `ready` lists every room of the user: written past
                // tungstenite's buffer, which keeps the room of the largest
                // write it took for the connection's life.
                while let Some(frame) = driver.out.frames.pop_front() {
                    let Message::Text(text) = frame else { continue };
                    let write = native::write_beside(&mut socket, text);
                    if !matches!(timeout(driver.app.config().write_timeout, write).await, Ok(Ok(()))) {
                        return None;
                    }
                }
                let conn = Conn { driver, socket, last_heard: Instant::now(), input_first: false };
                return Some(Box::new(conn));
            }
            Err(Refusal(message)) => {
                tracing::debug!(?peer, reason = %message, "socket.io connect refused");
                refusals += 1;
                if !send_text(&mut socket, format!("44{}", serde_json::json!({"message": message}))).await {
                    return None;
                }
                if refusals >= MAX_REFUSALS {
                    let why = "too many refused connects";
                    native::close(&mut socket, close_code::AUTH_FAILED, why, CLOSE_WAIT).await;
                    return None;
                }
            }
        }
    }
}

/// The outlet of a connection of this module: packets queue as frames,
/// which the connection's loop writes. It never fills: a client that does
/// not read blocks the loop's write, the session's own queue fills, and the
/// engine ends the session as a slow consumer.
#[derive(Default)]
pub(crate) struct FrameQueue {
    frames: VecDeque<Message>,
    /// Why the driver ended the connection.
    ending: Option<CloseReason>,
}

impl FrameQueue {
    fn push<E: std::fmt::Display>(&mut self, packet: Result<Utf8Bytes, E>, what: &str) -> Sent {
        match packet {
            Ok(packet) => self.frames.push_back(Message::Text(packet)),
            Err(e) => tracing::error!(error = %e, what, "encoding a socket.io packet failed"),
        }
        Sent::Done
    }
}

impl Outlet for FrameQueue {
    /// The id of the client's event.
    type Ack = u64;

    fn emit<T: Serialize + ?Sized>(&mut self, name: &str, data: &T) -> Sent {
        self.push(event_packet(name, data), name)
    }

    fn emit_encoded(&mut self, frame: &Frame, alias: bool) -> Sent {
        match (alias, &frame.alias) {
            (false, _) => self.frames.push_back(Message::Text(frame.packet.clone())),
            (true, Some(alias)) => self.frames.push_back(Message::Text(alias.packet.clone())),
            (true, None) => {}
        }
        Sent::Done
    }

    fn ack<T: Serialize + ?Sized>(&mut self, id: u64, body: &T) -> Sent {
        let mut packet = format!("43{id}").into_bytes();
        let packet = serde_json::to_writer(&mut packet, &(body,))
            .map(|()| Utf8Bytes::from(String::from_utf8(packet).unwrap_or_default()));
        self.push(packet, "ack")
    }

    fn end(&mut self, reason: CloseReason) {
        self.ending.get_or_insert(reason);
    }
}

/// What woke the loop that a poll could not finish.
enum Wake {
    /// Frames the socket could not take at once; then an output, if one
    /// was taken meanwhile.
    Write(Option<Output>),
    /// The socket failed.
    Dead,
    /// An output that needs more than a poll (a reply, a close, an event for
    /// the widget dialect).
    Output(Output),
    /// A frame from the client, or the socket's end (`None`) or failure.
    Incoming(Option<Result<Message, tungstenite::Error>>),
    /// The client was silent past the idle timeout.
    Idle,
    /// The driver ended the connection.
    Ended,
}

/// How a connection ends.
enum End {
    /// The socket failed or is gone: nothing to say.
    Dead,
    /// The client sent a close frame (answered by the socket).
    ClientClosed,
    /// The client disconnected (`41`) or closed the Engine.IO session (`1`).
    ClientLeft,
    /// Silent past the idle timeout.
    Idle,
    /// A frame over the size limit.
    TooBig,
    /// A frame that broke RFC 6455.
    Violation(u16, &'static str),
    /// The engine ended the session, or the driver did (abuse).
    Session(CloseReason),
    /// The driver stopped without a reason.
    Quiet,
}

/// One connection: the driver (session, outlet, dialect) and the socket.
struct Conn {
    driver: Driver<FrameQueue>,
    socket: Socket,
    /// When the client last sent anything, pongs included.
    last_heard: Instant,
    /// Which of output and input is polled first; alternates.
    input_first: bool,
}

impl Conn {
    fn poll_input(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Message, tungstenite::Error>>> {
        if !self.driver.session.accepts_input() {
            // Woken again by the session once a command in progress ends.
            return Poll::Pending;
        }
        self.socket.poll_next_unpin(cx)
    }

    /// Waits for something to do: writes the session's events (and pings)
    /// while the socket takes them, and returns what needs more.
    fn poll_wake(&mut self, cx: &mut Context<'_>) -> Poll<Wake> {
        loop {
            if self.driver.out.ending.is_some() {
                return Poll::Ready(Wake::Ended);
            }
            self.input_first = !self.input_first;
            if self.input_first
                && let Poll::Ready(incoming) = self.poll_input(cx)
            {
                return Poll::Ready(Wake::Incoming(incoming));
            }
            let mut taken = None;
            while self.driver.out.frames.len() < MAX_BATCH {
                match self.driver.session.poll_next_output(cx) {
                    Poll::Ready(Output::Event(delivery)) if self.driver.widget.is_none() => {
                        // A frame queue always takes it.
                        let _ = self.driver.event_now(&delivery);
                    }
                    Poll::Ready(Output::Keepalive) => {
                        if self.last_heard.elapsed() > self.driver.app.config().idle_timeout {
                            return Poll::Ready(Wake::Idle);
                        }
                        self.driver.out.frames.push_back(Message::Text(Utf8Bytes::from_static("2")));
                    }
                    Poll::Ready(output) => {
                        taken = Some(output);
                        break;
                    }
                    Poll::Pending => break,
                }
            }
            let wrote = !self.driver.out.frames.is_empty();
            if wrote {
                match native::poll_send(&mut self.socket, &mut self.driver.out.frames, cx) {
                    Poll::Ready(Ok(())) => {}
                    Poll::Ready(Err(_)) => return Poll::Ready(Wake::Dead),
                    Poll::Pending => return Poll::Ready(Wake::Write(taken)),
                }
            }
            if let Some(output) = taken {
                return Poll::Ready(Wake::Output(output));
            }
            if wrote {
                // Sent; look for more. Tokio's budget for the socket makes
                // the write pend, and so this loop end, before the task
                // could hog its thread.
                continue;
            }
            if !self.input_first
                && let Poll::Ready(incoming) = self.poll_input(cx)
            {
                return Poll::Ready(Wake::Incoming(incoming));
            }
            return Poll::Pending;
        }
    }

    /// Runs the connection until it ends. Every step but the wait is boxed,
    /// so that the task keeps only the wait's state.
    async fn run(mut self: Box<Self>) {
        let end = loop {
            let wake = poll_fn(|cx| self.poll_wake(cx)).await;
            if let Some(end) = Box::pin(self.handle(wake)).await {
                break end;
            }
        };
        Box::pin(self.finish(end)).await;
    }

    /// Why the driver stopped.
    fn ending(&mut self) -> End {
        self.driver.out.ending.take().map_or(End::Quiet, End::Session)
    }

    /// Does what woke the loop; `Some` once the connection is over.
    async fn handle(&mut self, wake: Wake) -> Option<End> {
        match wake {
            Wake::Write(then) => {
                let closed = self.driver.session.close_signal();
                let write_timeout = self.driver.app.config().write_timeout;
                match native::write_frames(&mut self.socket, &mut self.driver.out.frames, closed, write_timeout).await {
                    Ok(()) => {}
                    Err(WriteEnd::Killed) => {
                        let reason = self.driver.session.close_reason().unwrap_or(CloseReason::SlowConsumer);
                        return Some(End::Session(reason));
                    }
                    Err(WriteEnd::Dead) => return Some(End::Dead),
                }
                let output = then?;
                (self.driver.output(output).await == Flow::Stop).then(|| self.ending())
            }
            Wake::Dead => Some(End::Dead),
            Wake::Output(output) => (self.driver.output(output).await == Flow::Stop).then(|| self.ending()),
            Wake::Incoming(incoming) => {
                self.last_heard = Instant::now();
                self.incoming(incoming).await
            }
            Wake::Idle => Some(End::Idle),
            Wake::Ended => Some(self.ending()),
        }
    }

    /// A frame from the client; `Some` once the connection is over.
    async fn incoming(&mut self, incoming: Option<Result<Message, tungstenite::Error>>) -> Option<End> {
        let flow = match incoming {
            Some(Ok(Message::Text(text))) => return self.engine_packet(text.as_str()).await,
            Some(Ok(Message::Binary(_))) => {
                self.driver.bad(None, Error::invalid("binary frames are not supported; send JSON text packets"))
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => Flow::Continue,
            Some(Ok(Message::Close(_))) => return Some(End::ClientClosed),
            Some(Err(e)) if native::is_too_big(&e) => return Some(End::TooBig),
            Some(Err(e)) => return Some(native::violation(&e).map_or(End::Dead, |(c, r)| End::Violation(c, r))),
            None => return Some(End::Dead),
        };
        (flow == Flow::Stop).then(|| self.ending())
    }

    /// An Engine.IO packet.
    async fn engine_packet(&mut self, text: &str) -> Option<End> {
        let flow = match text.as_bytes().first() {
            // A pong, a no-op.
            Some(b'3' | b'6') => Flow::Continue,
            // A client's ping (Engine.IO v3 clients ping the server) is answered.
            Some(b'2') => {
                self.driver.out.frames.push_back(Message::Text(Utf8Bytes::from_static("3")));
                Flow::Continue
            }
            Some(b'1') => return Some(End::ClientLeft),
            Some(b'4') => return self.socket_packet(&text[1..]).await,
            _ => self.driver.bad(None, Error::invalid("not an Engine.IO packet")),
        };
        (flow == Flow::Stop).then(|| self.ending())
    }

    /// A Socket.IO packet (an Engine.IO message).
    async fn socket_packet(&mut self, packet: &str) -> Option<End> {
        let Some(kind) = packet.as_bytes().first() else {
            let flow = self.driver.bad(None, Error::invalid("an empty Socket.IO packet"));
            return (flow == Flow::Stop).then(|| self.ending());
        };
        let flow = match kind {
            b'2' => {
                let (nsp, rest) = namespace(&packet[1..]);
                let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
                let (id, args) = rest.split_at(digits);
                let id = match id {
                    "" => None,
                    id => match id.parse::<u64>() {
                        Ok(id) => Some(id),
                        Err(_) => {
                            let flow = self.driver.bad(None, Error::invalid("an ack id must fit 64 bits"));
                            return (flow == Flow::Stop).then(|| self.ending());
                        }
                    },
                };
                if nsp != "/" {
                    // Socket.IO ignores packets for a namespace not connected.
                    return None;
                }
                Box::pin(self.driver.packet(args, id)).await
            }
            // The client leaves the namespace.
            b'1' => return Some(End::ClientLeft),
            // Connected already; an ack (the server asks for none).
            b'0' | b'3' => Flow::Continue,
            b'5' | b'6' => {
                let err = Error::invalid("binary attachments are not supported; send JSON");
                self.driver.bad(None, err)
            }
            _ => self.driver.bad(None, Error::invalid("not a Socket.IO packet")),
        };
        (flow == Flow::Stop).then(|| self.ending())
    }

    /// Ends the connection. The session is dropped first, so that the
    /// engine counts it gone (and others see its user go offline) at once,
    /// whatever the last writes wait for.
    async fn finish(mut self: Box<Self>, end: End) {
        let mut frames = std::mem::take(&mut self.driver.out.frames);
        let write_timeout = self.driver.app.config().write_timeout;
        tracing::debug!(session = %self.driver.session.id(), user = %self.driver.session.user().id, "socket.io session closed");
        let Conn { driver, mut socket, .. } = *self;
        drop(driver);
        let (code, reason) = match end {
            End::Dead => return,
            End::ClientClosed => {
                // The socket answers the client's close frame with this flush.
                let _ = timeout(write_timeout, futures_util::SinkExt::flush(&mut socket)).await;
                return;
            }
            End::TooBig => {
                native::send_close(&mut socket, close_code::TOO_BIG, "frame too large", CLOSE_WAIT).await;
                return;
            }
            End::Violation(code, reason) => {
                native::fail(&mut socket, code, reason, write_timeout).await;
                return;
            }
            End::ClientLeft | End::Quiet => (1000, ""),
            End::Idle => (close_code::GOING_AWAY, "idle timeout"),
            End::Session(reason) => {
                let code = native::code_for(reason);
                if reason != CloseReason::Shutdown {
                    // Why, then the server's disconnect: a socket.io client
                    // does not reconnect after it. At shutdown only the
                    // transport ends, and clients reconnect.
                    let why = crate::driver::CloseInfo::new(reason);
                    if let Ok(packet) = event_packet("close", &why) {
                        frames.push_back(Message::Text(packet));
                    }
                    frames.push_back(Message::Text(Utf8Bytes::from_static("41")));
                }
                (code, reason.message())
            }
        };
        let written = timeout(write_timeout, poll_fn(|cx| native::poll_send(&mut socket, &mut frames, cx))).await;
        if matches!(written, Ok(Ok(()))) {
            native::close(&mut socket, code, reason, write_timeout).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(uri: &str, upgrade: bool) -> Request {
        let mut builder = axum::http::Request::builder().uri(uri);
        if upgrade {
            builder = builder.header("upgrade", "websocket");
        }
        builder.body(axum::body::Body::empty()).expect("a request")
    }

    #[test]
    fn only_new_websocket_sessions_are_taken_here() {
        assert!(is_fresh_websocket(&request("/socket.io/?EIO=4&transport=websocket", true)));
        assert!(is_fresh_websocket(&request("/socket.io/?t=x&transport=websocket&EIO=4", true)));
        // An upgrade from polling, polling itself, another protocol version,
        // a request that is not an upgrade.
        assert!(!is_fresh_websocket(&request("/socket.io/?EIO=4&transport=websocket&sid=abc", true)));
        assert!(!is_fresh_websocket(&request("/socket.io/?EIO=4&transport=polling", false)));
        assert!(!is_fresh_websocket(&request("/socket.io/?EIO=3&transport=websocket", true)));
        assert!(!is_fresh_websocket(&request("/socket.io/?EIO=4&transport=websocket", false)));
    }

    #[test]
    fn namespaces_are_split_off() {
        assert_eq!(namespace(r#"{"token":"t"}"#), ("/", r#"{"token":"t"}"#));
        assert_eq!(namespace(""), ("/", ""));
        assert_eq!(namespace("/admin,{}"), ("/admin", "{}"));
        assert_eq!(namespace("/admin"), ("/admin", ""));
        assert_eq!(namespace("/,12[\"x\"]"), ("/", "12[\"x\"]"));
    }

    #[test]
    fn acks_and_events_are_socketio_packets() {
        let mut out = FrameQueue::default();
        out.ack(7, &serde_json::json!({"ok": true}));
        out.emit("room:joined", &serde_json::json!({"a": 1}));
        let texts: Vec<String> = out
            .frames
            .iter()
            .map(|m| match m {
                Message::Text(t) => t.as_str().to_owned(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(texts, [r#"437[{"ok":true}]"#, r#"42["room:joined",{"a":1}]"#]);
        out.end(CloseReason::SlowConsumer);
        out.end(CloseReason::Shutdown);
        assert_eq!(out.ending, Some(CloseReason::SlowConsumer), "the first reason stands");
    }
}

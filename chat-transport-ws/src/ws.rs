//! `GET /v1/ws`: the upgrade, authentication, and the loop that drives one
//! engine session over one WebSocket.
//!
//! The building blocks are public for transports that speak another
//! protocol over WebSocket on the same listener (`chat-transport-socketio`
//! runs Engine.IO on them): [`Handshake`] takes the upgrade request apart
//! without spawning anything, [`Handshake::response`] and
//! [`Handshake::socket`] answer it and give the socket, configured with the
//! listener's limits, and [`poll_send`], [`write_frames`], [`close`],
//! [`send_close`] and [`fail`] write to it, end it, and fail it after a
//! violation of RFC 6455 ([`violation`], [`is_too_big`]) as this transport
//! does.

use std::collections::VecDeque;
use std::future::{Future, poll_fn};
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use chat_core::{CloseReason, Error, ErrorCode, Identity, Output, Session};
use futures_util::{SinkExt, StreamExt};
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{Instant, timeout};
use tokio_tungstenite::WebSocketStream;
use tungstenite::protocol::frame::Frame as WsFrame;
use tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tungstenite::{Message, Utf8Bytes};

use crate::AppState;
use crate::config::WsConfig;
use crate::error::ApiError;
use crate::wire::{self, Frame, JsonCodec};

/// Close codes of the contract.
pub mod close_code {
    /// The server is shutting down; reconnect and resume.
    pub const GOING_AWAY: u16 = 1001;
    /// The client broke RFC 6455 (reserved bits, an unknown opcode, an
    /// unmasked frame, a fragmented control frame…).
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// A text frame that is not UTF-8.
    pub const INVALID_DATA: u16 = 1007;
    /// A frame was larger than the configured limit.
    pub const TOO_BIG: u16 = 1009;
    /// An unexpected server error.
    pub const INTERNAL: u16 = 1011;
    /// The server cannot take the session right now (store down); try again later.
    pub const TRY_AGAIN_LATER: u16 = 1013;
    /// Too many invalid frames.
    pub const PROTOCOL_ABUSE: u16 = 4400;
    /// Missing, malformed, expired or forged token.
    pub const AUTH_FAILED: u16 = 4401;
    /// No auth frame in time.
    pub const AUTH_TIMEOUT: u16 = 4408;
    /// Rate limit or slow consumer.
    pub const RATE_LIMITED: u16 = 4429;
}

/// The close code for an engine close reason.
pub fn code_for(reason: CloseReason) -> u16 {
    match reason {
        CloseReason::Shutdown => close_code::GOING_AWAY,
        CloseReason::SlowConsumer => close_code::RATE_LIMITED,
        CloseReason::TokenExpired | CloseReason::Revoked => close_code::AUTH_FAILED,
        CloseReason::Abuse => close_code::PROTOCOL_ABUSE,
        _ => close_code::INTERNAL,
    }
}

/// tungstenite's read buffer: allocated for every connection up front and
/// never shrunk, and the most one read from the socket takes. A larger frame
/// is read in several calls into room reserved for the whole frame (and kept
/// by that connection). Commands are a few hundred bytes, so 512 bytes reads
/// most in one call while an idle connection holds half a KiB less than with
/// 1 KiB.
const READ_BUFFER_BYTES: usize = 512;

/// One upgraded connection.
pub type Socket = WebSocketStream<TokioIo<Upgraded>>;

/// The parts of a WebSocket upgrade request (RFC 6455, section 4.2.1) that
/// the answer and the upgrade need.
///
/// Done here rather than with axum's `WebSocketUpgrade`, which spawns the
/// connection's task itself: that task also holds the future that builds the
/// socket, about 0.4 KiB more for every connection for as long as it is open.
pub struct Handshake {
    key: HeaderValue,
    on_upgrade: OnUpgrade,
}

impl std::fmt::Debug for Handshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handshake").finish_non_exhaustive()
    }
}

/// Whether a comma-separated header holds `token`, in any case.
fn header_has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|part| part.trim().eq_ignore_ascii_case(token))
}

/// Why a request to the WebSocket endpoint was not upgraded.
#[derive(Debug)]
pub enum HandshakeRejection {
    /// Not a WebSocket upgrade, or one of another version: answered 426 with
    /// the header that says what would be accepted.
    UpgradeRequired(&'static str, header::HeaderName, &'static str),
    /// A WebSocket upgrade without its key.
    Invalid(&'static str),
}

impl IntoResponse for HandshakeRejection {
    fn into_response(self) -> Response {
        match self {
            HandshakeRejection::UpgradeRequired(message, name, value) => {
                let body = json!({"error": {"code": ErrorCode::Invalid.as_str(), "message": message}});
                (StatusCode::UPGRADE_REQUIRED, [(name, HeaderValue::from_static(value))], Json(body)).into_response()
            }
            HandshakeRejection::Invalid(message) => ApiError::new(ErrorCode::Invalid, message).into_response(),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Handshake {
    type Rejection = HandshakeRejection;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let headers = &parts.headers;
        if !header_has_token(headers, header::CONNECTION, "upgrade")
            || !header_has_token(headers, header::UPGRADE, "websocket")
        {
            return Err(HandshakeRejection::UpgradeRequired(
                "this endpoint takes a WebSocket upgrade",
                header::UPGRADE,
                "websocket",
            ));
        }
        if headers.get(header::SEC_WEBSOCKET_VERSION).is_none_or(|v| v.as_bytes() != b"13") {
            return Err(HandshakeRejection::UpgradeRequired(
                "unsupported WebSocket version; this server speaks version 13",
                header::SEC_WEBSOCKET_VERSION,
                "13",
            ));
        }
        let key = headers
            .get(header::SEC_WEBSOCKET_KEY)
            .cloned()
            .ok_or(HandshakeRejection::Invalid("the Sec-WebSocket-Key header is missing"))?;
        // Present on every HTTP/1.1 connection that hyper can hand over.
        let on_upgrade = parts.extensions.remove::<OnUpgrade>().ok_or(HandshakeRejection::UpgradeRequired(
            "this connection cannot be upgraded; use HTTP/1.1",
            header::UPGRADE,
            "websocket",
        ))?;
        Ok(Handshake { key, on_upgrade })
    }
}

impl Handshake {
    /// The `101 Switching Protocols` answer; the connection is upgraded once
    /// it has been sent.
    pub fn response(&self) -> Response {
        let accept = tungstenite::handshake::derive_accept_key(self.key.as_bytes());
        Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header(header::CONNECTION, "upgrade")
            .header(header::UPGRADE, "websocket")
            .header(header::SEC_WEBSOCKET_ACCEPT, accept)
            .body(Body::empty())
            .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
    }

    /// The upgraded socket, once [`Handshake::response`] has gone out, with
    /// the listener's frame limit and buffer sizes ([`socket_config`]);
    /// `None` when the upgrade failed.
    pub async fn socket(self, config: WebSocketConfig) -> Option<Socket> {
        match self.on_upgrade.await {
            Ok(upgraded) => {
                Some(WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config)).await)
            }
            Err(err) => {
                tracing::debug!(error = %err, "the WebSocket upgrade failed");
                None
            }
        }
    }
}

/// The socket settings of this listener: frames and messages up to
/// [`WsConfig::max_frame_bytes`], and small buffers.
pub fn socket_config(config: &WsConfig) -> WebSocketConfig {
    let limit = config.max_frame_bytes;
    WebSocketConfig::default()
        .max_message_size(Some(limit))
        .max_frame_size(Some(limit))
        // Small buffers keep idle connections cheap. Frames fed in one batch
        // collect in the write buffer and leave in as few writes as its size
        // allows, then the flush sends the rest.
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(8 * 1024)
        .max_write_buffer_size(limit.max(1024 * 1024) * 4)
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct TokenQuery {
    /// The token, for clients that cannot set headers (browsers); it may
    /// also come as `Authorization: Bearer` or in the first frame.
    token: Option<String>,
}

/// The native WebSocket transport (docs/protocol.md): JSON frames, after a
/// token in the header, the query or the first frame.
#[utoipa::path(
    get, path = "/v1/ws", tag = "connect", params(TokenQuery),
    security((), ("bearer" = [])),
    responses(
        (status = 101, description = "Switching to the WebSocket protocol"),
        (status = 400, description = "An upgrade without Sec-WebSocket-Key", body = crate::openapi::ErrorBody),
        (status = 403, description = "A browser origin not in CHAT_ALLOWED_ORIGINS", body = crate::openapi::ErrorBody),
        (status = 426, description = "Not a WebSocket upgrade, or another WebSocket version", body = crate::openapi::ErrorBody),
        (status = 429, description = "Too many connections from this address", body = crate::openapi::ErrorBody),
        (status = 503, description = "The server is full", body = crate::openapi::ErrorBody),
    )
)]
pub(crate) async fn upgrade(
    State(app): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<TokenQuery>, axum::extract::rejection::QueryRejection>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    handshake: Result<Handshake, HandshakeRejection>,
) -> Response {
    if !app.origin_allowed(&headers) {
        return ApiError::new(ErrorCode::Forbidden, "origin not allowed").into_response();
    }
    let handshake = match handshake {
        Ok(handshake) => handshake,
        Err(rejection) => return rejection.into_response(),
    };
    // The query may carry the token: it is read here and never logged.
    let token = crate::bearer_token(&headers).or_else(|| query.ok().and_then(|q| q.0.token));
    let peer = peer.map(|Extension(ConnectInfo(addr))| addr);
    let response = handshake.response();
    tokio::spawn(connection(app, handshake, token, peer));
    response
}

/// How long a closing connection reads on, waiting for the client's close
/// frame, after sending its own.
pub const CLOSE_HANDSHAKE_WAIT: Duration = Duration::from_secs(1);

/// Sends a close frame, waiting at most `wait`, then reads (and drops) what
/// the client sent until its answering close frame, for at most
/// [`CLOSE_HANDSHAKE_WAIT`]. Dropping a socket with unread input makes the
/// kernel reset the connection, and a reset throws away whatever was still
/// queued to go out: the last acks, and the close frame itself.
pub async fn close(socket: &mut Socket, code: u16, reason: &str, wait: Duration) {
    if send_close(socket, code, reason, wait).await {
        let drain = async {
            while let Some(Ok(message)) = socket.next().await {
                if let Message::Close(_) = message {
                    break;
                }
            }
        };
        let _ = timeout(CLOSE_HANDSHAKE_WAIT, drain).await;
    }
}

/// Sends a close frame, waiting at most `wait`, and reads nothing more: for
/// a client whose input the server will not read, such as a frame over the
/// size limit. `true` once the frame is out.
pub async fn send_close(socket: &mut Socket, code: u16, reason: &str, wait: Duration) -> bool {
    let frame = CloseFrame { code: CloseCode::from(code), reason: Utf8Bytes::from(reason) };
    matches!(timeout(wait, socket.send(Message::Close(Some(frame)))).await, Ok(Ok(())))
}

/// Whether a read failed on a frame or message over the size limit (answered
/// with a close 1009, and nothing more read).
pub fn is_too_big(err: &tungstenite::Error) -> bool {
    matches!(err, tungstenite::Error::Capacity(_))
}

/// The close frame owed to a client whose frame could not be read, other
/// than an oversized one: 1007 for text that is not UTF-8, 1002 for a
/// violation of RFC 6455. `None` when the socket itself failed or ended,
/// and there is nobody to tell.
pub fn violation(err: &tungstenite::Error) -> Option<(u16, &'static str)> {
    use tungstenite::error::ProtocolError;
    match err {
        tungstenite::Error::Utf8(_) => Some((close_code::INVALID_DATA, "text frames must be UTF-8")),
        tungstenite::Error::Protocol(ProtocolError::ResetWithoutClosingHandshake) => None,
        tungstenite::Error::Protocol(e) => Some((close_code::PROTOCOL_ERROR, protocol_reason(e))),
        _ => None,
    }
}

/// A close reason for a protocol violation (at most 123 bytes, as a close
/// frame allows).
fn protocol_reason(err: &tungstenite::error::ProtocolError) -> &'static str {
    use tungstenite::error::ProtocolError;
    match err {
        ProtocolError::NonZeroReservedBits => "reserved bits are set",
        ProtocolError::UnmaskedFrameFromClient => "client frames must be masked",
        ProtocolError::UnknownDataFrameType(_) | ProtocolError::UnknownControlFrameType(_) => "unknown opcode",
        ProtocolError::FragmentedControlFrame => "control frames must not be fragmented",
        ProtocolError::ControlFrameTooBig => "control frames carry at most 125 bytes",
        ProtocolError::UnexpectedContinueFrame | ProtocolError::ExpectedFragment(_) => "bad fragmentation",
        _ => "protocol error",
    }
}

/// Fails the connection (RFC 6455, section 7.1.7) after a frame that could
/// not be read: sends the close frame, then, since what follows cannot be
/// read as frames, ends the sending side and drops raw input until the
/// client closes, for at most [`CLOSE_HANDSHAKE_WAIT`]. Unread input would
/// make the kernel reset the connection and discard the close frame.
pub async fn fail(socket: &mut Socket, code: u16, reason: &str, wait: Duration) {
    if !send_close(socket, code, reason, wait).await {
        return;
    }
    let io = socket.get_mut();
    let linger = async {
        let _ = io.shutdown().await;
        let mut buf = [0u8; 512];
        while let Ok(1..) = io.read(&mut buf).await {}
    };
    let _ = timeout(CLOSE_HANDSHAKE_WAIT, linger).await;
}

enum Auth {
    Token(String),
    Closed,
}

/// Waits for `{"type":"auth","data":{"token"}}` within the auth timeout.
async fn auth_frame(app: &AppState, socket: &mut Socket) -> Auth {
    let deadline = Instant::now() + app.config.auth_timeout;
    loop {
        let next = match tokio::time::timeout_at(deadline, socket.next()).await {
            Ok(next) => next,
            Err(_) => {
                close(socket, close_code::AUTH_TIMEOUT, "no auth frame within the time limit", Duration::from_secs(2))
                    .await;
                return Auth::Closed;
            }
        };
        match next {
            Some(Ok(Message::Text(text))) => {
                return match wire::decode(text.as_str()) {
                    Ok(Frame::Auth(_, token)) => Auth::Token(token),
                    _ => {
                        let why = "the first frame must be {\"type\":\"auth\",\"data\":{\"token\":…}}";
                        close(socket, close_code::AUTH_FAILED, why, Duration::from_secs(2)).await;
                        Auth::Closed
                    }
                };
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
            Some(Ok(Message::Binary(_))) => {
                close(
                    socket,
                    close_code::AUTH_FAILED,
                    "the first frame must be a text auth frame",
                    Duration::from_secs(2),
                )
                .await;
                return Auth::Closed;
            }
            Some(Err(e)) if is_too_big(&e) => {
                send_close(socket, close_code::TOO_BIG, "frame too large", Duration::from_secs(2)).await;
                return Auth::Closed;
            }
            Some(Ok(Message::Close(_))) => {
                let _ = timeout(Duration::from_secs(2), socket.flush()).await;
                return Auth::Closed;
            }
            Some(Err(e)) => {
                if let Some((code, reason)) = violation(&e) {
                    fail(socket, code, reason, Duration::from_secs(2)).await;
                }
                return Auth::Closed;
            }
            None => return Auth::Closed,
        }
    }
}

/// Drives one upgraded connection. The set-up (authentication, opening the
/// session, the `ready` frame) runs in a boxed future that is freed before
/// the loop starts, and the connection's state is one allocation that the
/// loop borrows, so that the task every idle connection keeps holds little
/// more than a pointer.
fn connection(
    app: AppState,
    handshake: Handshake,
    token: Option<String>,
    peer: Option<SocketAddr>,
) -> impl Future<Output = ()> + Send {
    // Made here, so that the task keeps only the box and not these arguments.
    let opening = Box::pin(open(app, handshake, token, peer));
    async move {
        let Some(conn) = opening.await else { return };
        conn.run().await;
    }
}

/// Authenticates the connection and opens its session; `None` once the
/// connection was closed instead.
async fn open(
    app: AppState,
    handshake: Handshake,
    token: Option<String>,
    peer: Option<SocketAddr>,
) -> Option<Box<Conn>> {
    let mut socket = handshake.socket(socket_config(&app.config)).await?;
    let token = match token {
        Some(token) => token,
        None => match auth_frame(&app, &mut socket).await {
            Auth::Token(token) => token,
            Auth::Closed => return None,
        },
    };
    let identity: Identity = match app.auth.authenticate(&token).await {
        Ok(identity) => identity,
        Err(err) => {
            tracing::debug!(?peer, reason = %err, "authentication failed");
            let reason = if err.code() == chat_core::ErrorCode::Unauthorized {
                err.to_string()
            } else {
                "authentication failed".into()
            };
            close(&mut socket, close_code::AUTH_FAILED, &reason, Duration::from_secs(2)).await;
            return None;
        }
    };
    drop(token);
    let (session, ready) = match app.engine.open_session_on("websocket", identity).await {
        Ok(opened) => opened,
        Err(err) => {
            let (code, reason) = match &err {
                // Deleted, deactivated or revoked, as the store has it.
                Error::Unauthorized(msg) => (close_code::AUTH_FAILED, msg.clone()),
                Error::RateLimited(msg) => (close_code::RATE_LIMITED, msg.clone()),
                Error::Unavailable(_) => (close_code::TRY_AGAIN_LATER, "service temporarily unavailable".to_owned()),
                other => (close_code::INTERNAL, other.to_string()),
            };
            tracing::warn!(?peer, error = %err, "opening a session failed");
            close(&mut socket, code, &reason, Duration::from_secs(2)).await;
            return None;
        }
    };
    tracing::debug!(session = %session.id(), user = %session.user().id, ?peer, "session opened");
    let ready = wire::encode_event_frame("ready", &ready);
    if !matches!(timeout(app.config.write_timeout, write_beside(&mut socket, ready)).await, Ok(Ok(()))) {
        tracing::debug!(session = %session.id(), "the ready frame could not be written");
        return None;
    }
    let conn =
        Box::new(Conn { config: app.config.clone(), session, socket, last_heard: Instant::now(), input_first: false });
    Some(conn)
}

/// Writes one text frame straight to the socket under tungstenite.
///
/// tungstenite's write buffer keeps the room of the largest write for the
/// connection's life, and the `ready` frame (every room of the user) is
/// often the largest an idle connection gets: framed here and written past
/// the buffer, it leaves the buffer empty. Whatever tungstenite holds (a pong
/// answered during the auth frame's wait) is flushed first, so frames never
/// interleave.
pub async fn write_beside(socket: &mut Socket, text: Utf8Bytes) -> Result<(), tungstenite::Error> {
    socket.flush().await?;
    let frame = WsFrame::message(Bytes::from(text), OpCode::Data(Data::Text), true);
    let mut bytes = Vec::with_capacity(frame.len());
    frame.format(&mut bytes)?;
    let io = socket.get_mut();
    io.write_all(&bytes).await?;
    io.flush().await?;
    Ok(())
}

/// Why a write stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteEnd {
    /// The engine ended the session while the write was blocked.
    Killed,
    /// The socket failed or stayed blocked past the write timeout.
    Dead,
}

/// Why the server ends a connection.
#[derive(Debug, Clone, Copy)]
enum Ending {
    /// The engine ended the session.
    Session(CloseReason),
    /// The client sent nothing, not even a pong, for the idle timeout.
    Idle,
}

impl Ending {
    fn close_frame(self) -> (u16, &'static str) {
        match self {
            Ending::Session(reason) => (code_for(reason), reason.message()),
            Ending::Idle => (close_code::GOING_AWAY, "idle timeout"),
        }
    }
}

/// How long a write may still take once the server is shutting down: the
/// frames are then the acks of stored sends, worth a short wait.
const SHUTDOWN_WRITE_GRACE: Duration = Duration::from_secs(2);

/// Most frames written before one flush; batching saves a syscall per frame
/// when events come in bursts.
pub const MAX_BATCH: usize = 64;

/// Feeds the frames to the socket and flushes it. Resumable: a frame leaves
/// `frames` once the socket has taken it, so after `Pending` the next call
/// goes on where this one stopped.
pub fn poll_send(
    socket: &mut Socket,
    frames: &mut VecDeque<Message>,
    cx: &mut Context<'_>,
) -> Poll<Result<(), tungstenite::Error>> {
    while !frames.is_empty() {
        ready!(socket.poll_ready_unpin(cx))?;
        if let Some(frame) = frames.pop_front() {
            socket.start_send_unpin(frame)?;
        }
    }
    socket.poll_flush_unpin(cx)
}

/// Writes frames for a session (`closed` is its [`Session::close_signal`]):
/// at once when the socket has room, which needs no timer; otherwise giving
/// up when the engine ends the session ([`WriteEnd::Killed`], with the frames
/// not yet taken left in `frames`) or the client stops reading for longer
/// than `write_timeout`.
pub async fn write_frames(
    socket: &mut Socket,
    frames: &mut VecDeque<Message>,
    closed: chat_core::CloseSignal,
    write_timeout: Duration,
) -> Result<(), WriteEnd> {
    if let Poll::Ready(res) = poll_once(|cx| poll_send(socket, frames, cx)).await {
        return res.map_err(|_| WriteEnd::Dead);
    }
    let work = poll_fn(|cx| poll_send(socket, frames, cx));
    tokio::pin!(work);
    tokio::select! {
        biased;
        res = timeout(write_timeout, &mut work) => return match res {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) | Err(_) => Err(WriteEnd::Dead),
        },
        _ = closed.closed() => {}
    }
    // The engine ended the session while the write waited. A slow consumer
    // is cut off at once; at shutdown the write may finish within a grace.
    if closed.reason() != Some(CloseReason::Shutdown) {
        return Err(WriteEnd::Killed);
    }
    match timeout(SHUTDOWN_WRITE_GRACE, work).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) | Err(_) => Err(WriteEnd::Killed),
    }
}

/// Polls once: `Ready` with the poll's result, registering the task's waker
/// like any poll when it is `Pending`.
async fn poll_once<T>(mut f: impl FnMut(&mut Context<'_>) -> Poll<T>) -> Poll<T> {
    poll_fn(|cx| Poll::Ready(f(cx))).await
}

/// What the loop has to do that [`Conn::poll_wake`] could not do in the poll.
enum Wake {
    /// Frames the socket could not take at once (possibly none, with a flush
    /// still pending), and why the connection ends if it does.
    Write(VecDeque<Message>, Option<Ending>),
    /// The socket failed while taking frames.
    Dead,
    /// The client sent a frame, or the socket ended (`None`) or failed.
    Incoming(Option<Result<Message, tungstenite::Error>>),
}

/// One authenticated connection: its session and its socket.
///
/// An idle connection costs its task, this one allocation and the socket's
/// buffers, and no timer: the session's keepalive beat
/// ([`Output::Keepalive`]) is when the client is pinged and its silence
/// checked. The task waits in [`Conn::poll_wake`], which polls the session
/// and the socket by hand and writes output itself whenever the socket takes
/// it at once; everything else (a command, a write that has to wait) runs in
/// a boxed future of its own, so the task's future holds little more than
/// the pointer to this.
struct Conn {
    config: Arc<WsConfig>,
    session: Session,
    /// Read and written by the loop alone, so not split: one allocation
    /// fewer, and no lock between the halves.
    socket: Socket,
    /// When the client last sent anything, pongs included.
    last_heard: Instant,
    /// Which of output and input is polled first; alternates, so that a
    /// stream of events cannot starve the client's commands or the reverse.
    input_first: bool,
}

impl Conn {
    fn poll_input(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Message, tungstenite::Error>>> {
        if !self.session.accepts_input() {
            // Woken again by the session once a command in progress ends.
            return Poll::Pending;
        }
        self.socket.poll_next_unpin(cx)
    }

    /// Waits for something to do: writes the session's output while the
    /// socket takes it, and returns what needs more than a poll.
    fn poll_wake(&mut self, cx: &mut Context<'_>) -> Poll<Wake> {
        loop {
            self.input_first = !self.input_first;
            if self.input_first
                && let Poll::Ready(incoming) = self.poll_input(cx)
            {
                return Poll::Ready(Wake::Incoming(incoming));
            }
            if let Poll::Ready(output) = self.session.poll_next_output(cx) {
                let (mut frames, ending) = self.batch(output, cx);
                if ending.is_some() {
                    return Poll::Ready(Wake::Write(frames, ending));
                }
                match poll_send(&mut self.socket, &mut frames, cx) {
                    // Sent; look for more. Tokio's budget for the socket
                    // makes the write pend, and so this loop end, before
                    // the task could hog its thread.
                    Poll::Ready(Ok(())) => continue,
                    Poll::Ready(Err(_)) => return Poll::Ready(Wake::Dead),
                    Poll::Pending => return Poll::Ready(Wake::Write(frames, None)),
                }
            }
            if !self.input_first
                && let Poll::Ready(incoming) = self.poll_input(cx)
            {
                return Poll::Ready(Wake::Incoming(incoming));
            }
            return Poll::Pending;
        }
    }

    /// The frames of an output and of whatever else the session has ready,
    /// up to a batch, to go out in one flush; and why the connection ends,
    /// if it does.
    fn batch(&mut self, first: Output, cx: &mut Context<'_>) -> (VecDeque<Message>, Option<Ending>) {
        let mut frames = VecDeque::new();
        let mut next = first;
        loop {
            match next {
                Output::Reply { reference, result } => {
                    frames.extend(wire::encode_reply(reference.as_ref(), &result).map(Message::Text));
                }
                Output::Event(delivery) => frames.push_back(Message::Text(delivery.encoded(&JsonCodec))),
                Output::Close(reason) => return (frames, Some(Ending::Session(reason))),
                Output::Keepalive => {
                    if self.last_heard.elapsed() > self.config.idle_timeout {
                        return (frames, Some(Ending::Idle));
                    }
                    frames.push_back(Message::Ping(Default::default()));
                }
                _ => {}
            }
            if frames.len() >= MAX_BATCH {
                break;
            }
            match self.session.poll_next_output(cx) {
                Poll::Ready(output) => next = output,
                Poll::Pending => break,
            }
        }
        (frames, None)
    }

    async fn write(&mut self, mut frames: VecDeque<Message>) -> Result<(), WriteEnd> {
        write_frames(&mut self.socket, &mut frames, self.session.close_signal(), self.config.write_timeout).await
    }

    async fn write_one(&mut self, frame: Message) -> Result<(), WriteEnd> {
        self.write(VecDeque::from([frame])).await
    }

    /// Sends a close frame; the connection is over.
    async fn close(&mut self, code: u16, reason: &str) {
        close(&mut self.socket, code, reason, self.config.write_timeout).await;
    }

    /// Runs the connection until it ends. Every step but the wait is boxed,
    /// so that the task keeps only the wait's state. (Holding `Conn` in the
    /// task instead of boxing it made idle connections larger, not smaller:
    /// the future keeps more than one copy's room for it.)
    async fn run(mut self: Box<Self>) {
        loop {
            let wake = poll_fn(|cx| self.poll_wake(cx)).await;
            if !Box::pin(self.handle(wake)).await {
                break;
            }
        }
        tracing::debug!(session = %self.session.id(), user = %self.session.user().id, "session closed");
    }

    /// Does what woke the loop. `false` once the connection is over.
    async fn handle(&mut self, wake: Wake) -> bool {
        match wake {
            Wake::Write(frames, mut ending) => {
                match self.write(frames).await {
                    Ok(()) => {}
                    Err(WriteEnd::Killed) => ending = self.session.close_reason().map(Ending::Session),
                    Err(WriteEnd::Dead) => return false,
                }
                if let Some(ending) = ending {
                    let (code, reason) = ending.close_frame();
                    self.close(code, reason).await;
                    return false;
                }
                true
            }
            Wake::Dead => false,
            Wake::Incoming(incoming) => {
                self.last_heard = Instant::now();
                self.incoming(incoming).await
            }
        }
    }

    /// Handles a frame from the client. `false` once the connection is over.
    async fn incoming(&mut self, incoming: Option<Result<Message, tungstenite::Error>>) -> bool {
        match incoming {
            Some(Ok(Message::Text(text))) => match wire::decode(text.as_str()) {
                Ok(Frame::Command(reference, command)) => {
                    self.session.submit(reference, command).await;
                    true
                }
                Ok(Frame::Auth(reference, _)) => {
                    // Answered like any frame that breaks the protocol, and
                    // counted like one: otherwise a client could send them
                    // forever, each costing a parse and an answer.
                    let err = Err(Error::invalid("already authenticated"));
                    if let Some(frame) = wire::encode_reply(reference.as_ref(), &err)
                        && self.write_one(Message::Text(frame)).await.is_err()
                    {
                        return false;
                    }
                    self.bad_frame().await
                }
                Err(bad) => {
                    let frame = wire::encode_reply(bad.reference.as_ref(), &Err(bad.error));
                    if let Some(frame) = frame
                        && self.write_one(Message::Text(frame)).await.is_err()
                    {
                        return false;
                    }
                    self.bad_frame().await
                }
            },
            Some(Ok(Message::Binary(_))) => {
                let err = Error::invalid("binary frames are not supported; send JSON text frames");
                if self.write_one(Message::Text(wire::encode_error(&err))).await.is_err() {
                    return false;
                }
                self.bad_frame().await
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => true,
            Some(Err(e)) if is_too_big(&e) => {
                send_close(&mut self.socket, close_code::TOO_BIG, "frame too large", Duration::from_secs(2)).await;
                false
            }
            Some(Ok(Message::Close(_))) => {
                // The client closed: the socket answers with a close frame
                // of its own, which goes out with this flush.
                let _ = timeout(self.config.write_timeout, self.socket.flush()).await;
                false
            }
            Some(Err(e)) => {
                if let Some((code, reason)) = violation(&e) {
                    fail(&mut self.socket, code, reason, self.config.write_timeout).await;
                }
                false
            }
            None => false,
        }
    }

    /// Counts an invalid frame; closes the connection after too many.
    async fn bad_frame(&mut self) -> bool {
        match self.session.note_bad_frame() {
            Some(reason) => {
                self.close(code_for(reason), reason.message()).await;
                false
            }
            None => true,
        }
    }
}

//! `GET /v1/ws`: the upgrade, authentication, and the loop that drives one
//! engine session over one WebSocket.

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use chat_core::{CloseReason, CloseSignal, Error, Identity, Output, Session};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{FutureExt, SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::json;
use tokio::time::{Instant, timeout};

use crate::AppState;
use crate::wire::{self, Frame, JsonCodec};

/// Close codes of the contract.
pub mod close_code {
    /// The server is shutting down; reconnect and resume.
    pub const GOING_AWAY: u16 = 1001;
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
        CloseReason::TokenExpired => close_code::AUTH_FAILED,
        CloseReason::Abuse => close_code::PROTOCOL_ABUSE,
        _ => close_code::INTERNAL,
    }
}

/// tungstenite's read buffer: allocated (and zeroed) for every connection up
/// front and never shrunk, and the most one read from the socket takes. A
/// larger frame is read in several calls into room reserved for the whole
/// frame. Commands are a few hundred bytes, so 1 KiB reads one per call while
/// an idle connection holds 3 KiB less than with 4 KiB.
const READ_BUFFER_BYTES: usize = 1024;

type Sink = SplitSink<WebSocket, Message>;
type Stream = SplitStream<WebSocket>;

#[derive(Deserialize)]
pub(crate) struct TokenQuery {
    token: Option<String>,
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim().to_owned())
}

pub(crate) async fn upgrade(
    State(app): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<TokenQuery>, axum::extract::rejection::QueryRejection>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    if let Some(origin) = headers.get(header::ORIGIN) {
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
        let allowed = origin.to_str().is_ok_and(|o| app.config.origins.allows(o, host));
        if !allowed {
            let body = json!({"error": {"code": "forbidden", "message": "origin not allowed"}});
            return (StatusCode::FORBIDDEN, Json(body)).into_response();
        }
    }
    let ws = match ws {
        Ok(ws) => ws,
        Err(rejection) => return rejection.into_response(),
    };
    // The query may carry the token: it is read here and never logged.
    let token = bearer(&headers).or_else(|| query.ok().and_then(|q| q.0.token));
    let peer = peer.map(|Extension(ConnectInfo(addr))| addr);
    let limit = app.config.max_frame_bytes;
    ws.max_message_size(limit)
        .max_frame_size(limit)
        // Small buffers keep idle connections cheap. Frames fed in one batch
        // collect in the write buffer and leave in as few writes as its size
        // allows, then the flush sends the rest.
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(8 * 1024)
        .max_write_buffer_size(limit.max(1024 * 1024) * 4)
        // The socket is split before the connection's future is made, so
        // that the task does not keep a moved-out copy of it.
        .on_upgrade(move |socket| {
            let (sink, stream) = socket.split();
            connection(app, sink, stream, token, peer)
        })
}

async fn close(sink: &mut Sink, code: u16, reason: &str, wait: Duration) {
    let frame = CloseFrame { code, reason: Utf8Bytes::from(reason) };
    let _ = timeout(wait, sink.send(Message::Close(Some(frame)))).await;
}

fn is_too_big(err: &axum::Error) -> bool {
    let text = err.to_string();
    // axum wraps the tungstenite error; look through the chain for a capacity error.
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = source {
        if let Some(tungstenite::Error::Capacity(_)) = e.downcast_ref::<tungstenite::Error>() {
            return true;
        }
        source = e.source();
    }
    text.contains("Space limit exceeded") || text.contains("too long")
}

enum Auth {
    Token(String),
    Closed,
}

/// Waits for `{"type":"auth","data":{"token"}}` within the auth timeout.
async fn auth_frame(app: &AppState, sink: &mut Sink, stream: &mut Stream) -> Auth {
    let deadline = Instant::now() + app.config.auth_timeout;
    loop {
        let next = match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(next) => next,
            Err(_) => {
                close(sink, close_code::AUTH_TIMEOUT, "no auth frame within the time limit", Duration::from_secs(2))
                    .await;
                return Auth::Closed;
            }
        };
        match next {
            Some(Ok(Message::Text(text))) => {
                return match wire::decode(text.as_str()) {
                    Ok(Frame::Auth(token)) => Auth::Token(token),
                    _ => {
                        let why = "the first frame must be {\"type\":\"auth\",\"data\":{\"token\":…}}";
                        close(sink, close_code::AUTH_FAILED, why, Duration::from_secs(2)).await;
                        Auth::Closed
                    }
                };
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(Message::Binary(_))) => {
                close(
                    sink,
                    close_code::AUTH_FAILED,
                    "the first frame must be a text auth frame",
                    Duration::from_secs(2),
                )
                .await;
                return Auth::Closed;
            }
            Some(Err(e)) if is_too_big(&e) => {
                close(sink, close_code::TOO_BIG, "frame too large", Duration::from_secs(2)).await;
                return Auth::Closed;
            }
            Some(Ok(Message::Close(_)) | Err(_)) | None => return Auth::Closed,
        }
    }
}

/// Drives one upgraded connection. The set-up (authentication, opening the
/// session) runs once and its future is boxed and dropped before the loop
/// starts, so that it adds nothing to the task every idle connection keeps.
async fn connection(
    app: AppState,
    mut sink: Sink,
    mut stream: Stream,
    token: Option<String>,
    peer: Option<SocketAddr>,
) {
    let opened = Box::pin(open(&app, &mut sink, &mut stream, token, peer)).await;
    let Some((session, ready_frame)) = opened else { return };
    let span = tracing::info_span!("session", id = %session.id(), user = %session.user().id);
    tracing::debug!(parent: &span, ?peer, "session opened");
    drive(&app, session, sink, stream, ready_frame).await;
    tracing::debug!(parent: &span, "session closed");
}

/// Authenticates the connection and opens its session; `None` once the
/// connection was closed instead.
async fn open(
    app: &AppState,
    sink: &mut Sink,
    stream: &mut Stream,
    token: Option<String>,
    peer: Option<SocketAddr>,
) -> Option<(Session, Utf8Bytes)> {
    let token = match token {
        Some(token) => token,
        None => match auth_frame(app, sink, stream).await {
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
            close(sink, close_code::AUTH_FAILED, &reason, Duration::from_secs(2)).await;
            return None;
        }
    };
    drop(token);
    let (session, ready) = match app.engine.open_session(identity).await {
        Ok(opened) => opened,
        Err(err) => {
            let (code, reason) = match &err {
                Error::RateLimited(msg) => (close_code::RATE_LIMITED, msg.clone()),
                Error::Unavailable(_) => (close_code::TRY_AGAIN_LATER, "service temporarily unavailable".to_owned()),
                other => (close_code::INTERNAL, other.to_string()),
            };
            tracing::warn!(?peer, error = %err, "opening a session failed");
            close(sink, code, &reason, Duration::from_secs(2)).await;
            return None;
        }
    };
    Some((session, wire::encode_event_frame("ready", &ready)))
}

/// Why the write loop stopped.
enum WriteEnd {
    /// The engine ended the session while the write was blocked.
    Killed,
    /// The socket failed or stayed blocked past the write timeout.
    Dead,
}

fn frame_for(output: Output) -> Result<Option<Message>, CloseReason> {
    match output {
        Output::Reply { reference, result } => Ok(wire::encode_reply(reference.as_ref(), &result).map(Message::Text)),
        Output::Event(delivery) => Ok(Some(Message::Text(delivery.encoded(&JsonCodec)))),
        Output::Close(reason) => Err(reason),
        _ => Ok(None),
    }
}

/// How long a write may still take once the server is shutting down: the
/// frames are then the acks of stored sends, worth a short wait.
const SHUTDOWN_WRITE_GRACE: Duration = Duration::from_secs(2);

/// Feeds frames and flushes them, giving up when the engine ends the session
/// or the client stops reading for longer than the write timeout.
async fn write(app: &AppState, sink: &mut Sink, closed: &CloseSignal, frames: Vec<Message>) -> Result<(), WriteEnd> {
    let work = async {
        for frame in frames {
            sink.feed(frame).await?;
        }
        sink.flush().await
    };
    tokio::pin!(work);
    // A socket with room in its send buffer takes the frames at once; only a
    // write that has to wait arms the timer and watches for the session's end,
    // which saves a timer entry per write on the fan-out path.
    if let Some(res) = work.as_mut().now_or_never() {
        return res.map_err(|_| WriteEnd::Dead);
    }
    tokio::select! {
        biased;
        res = timeout(app.config.write_timeout, &mut work) => return match res {
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

/// Most frames written before one flush; batching saves a syscall per frame
/// when events come in bursts.
const MAX_BATCH: usize = 64;

async fn drive(app: &AppState, mut session: Session, mut sink: Sink, mut stream: Stream, ready: Utf8Bytes) {
    let closed = session.close_signal();
    if write(app, &mut sink, &closed, vec![Message::Text(ready)]).await.is_err() {
        return;
    }
    let mut ping = tokio::time::interval(app.config.ping_interval);
    ping.reset();
    let mut last_heard = Instant::now();
    let close_wait = app.config.write_timeout;
    loop {
        tokio::select! {
            output = session.next_output() => {
                let mut frames = Vec::new();
                let mut ending = None;
                match frame_for(output) {
                    Ok(frame) => frames.extend(frame),
                    Err(reason) => ending = Some(reason),
                }
                // Take whatever else is ready without waiting, up to a batch.
                while ending.is_none() && frames.len() < MAX_BATCH {
                    match session.next_output().now_or_never() {
                        Some(output) => match frame_for(output) {
                            Ok(frame) => frames.extend(frame),
                            Err(reason) => ending = Some(reason),
                        },
                        None => break,
                    }
                }
                if !frames.is_empty() {
                    match write(app, &mut sink, &closed, frames).await {
                        Ok(()) => {}
                        Err(WriteEnd::Killed) => ending = closed.reason(),
                        Err(WriteEnd::Dead) => return,
                    }
                }
                if let Some(reason) = ending {
                    close(&mut sink, code_for(reason), reason.message(), close_wait).await;
                    return;
                }
            }
            incoming = stream.next(), if session.accepts_input() => {
                last_heard = Instant::now();
                match incoming {
                    Some(Ok(Message::Text(text))) => match wire::decode(text.as_str()) {
                        Ok(Frame::Command(reference, command)) => {
                            // Boxed: running a command takes a future several
                            // times the size of the idle loop, which every
                            // connection's task would otherwise carry.
                            Box::pin(session.submit(reference, command)).await
                        }
                        Ok(Frame::Auth(_)) => {
                            let err = Error::invalid("already authenticated");
                            let _ = write(app, &mut sink, &closed, vec![Message::Text(wire::encode_error(&err))]).await;
                        }
                        Err(bad) => {
                            let frame = wire::encode_reply(bad.reference.as_ref(), &Err(bad.error));
                            if let Some(frame) = frame {
                                if write(app, &mut sink, &closed, vec![Message::Text(frame)]).await.is_err() {
                                    return;
                                }
                            }
                            if let Some(reason) = session.note_bad_frame() {
                                close(&mut sink, code_for(reason), reason.message(), close_wait).await;
                                return;
                            }
                        }
                    },
                    Some(Ok(Message::Binary(_))) => {
                        let err = Error::invalid("binary frames are not supported; send JSON text frames");
                        if write(app, &mut sink, &closed, vec![Message::Text(wire::encode_error(&err))]).await.is_err() {
                            return;
                        }
                        if let Some(reason) = session.note_bad_frame() {
                            close(&mut sink, code_for(reason), reason.message(), close_wait).await;
                            return;
                        }
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                    Some(Err(e)) if is_too_big(&e) => {
                        close(&mut sink, close_code::TOO_BIG, "frame too large", Duration::from_secs(2)).await;
                        return;
                    }
                    Some(Ok(Message::Close(_)) | Err(_)) | None => return,
                }
            }
            _ = ping.tick() => {
                if last_heard.elapsed() > app.config.idle_timeout {
                    close(&mut sink, close_code::GOING_AWAY, "idle timeout", Duration::from_secs(2)).await;
                    return;
                }
                if write(app, &mut sink, &closed, vec![Message::Ping(Default::default())]).await.is_err() {
                    return;
                }
            }
        }
    }
}

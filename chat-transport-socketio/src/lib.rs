//! Socket.IO for the chat toolkit: Socket.IO v5 on Engine.IO v4, over
//! WebSocket and HTTP long-polling, so that `socket.io-client` 4.x (and
//! python-socketio, and the other client libraries) talk to the same engine
//! as native clients with nothing changed but the URL. The contract is
//! section 10 of the wire contract; the project's `docs/socketio.md` has it
//! in short, with a migration guide.
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
//! WebSocket is, whichever way its packets travel:
//!
//! - **A WebSocket opened straight to `/socket.io/`** (`transports:
//!   ["websocket"]`) runs on the native transport's connection loop and
//!   building blocks ([`chat_transport_ws::ws`]), with Engine.IO and
//!   Socket.IO framing on top: one task and one allocation per connection,
//!   events written as one shared packet without waiting, the engine's
//!   keepalive beat as the Engine.IO ping, and a client that stops reading
//!   cut off by the engine as a slow consumer, as natively.
//! - **Long-polling, and the WebSocket a polling client upgrades to,** are
//!   served by [socketioxide], which speaks those protocols (handshakes,
//!   heartbeats, the upgrade). Its namespace middleware opens the session;
//!   an extractor inside its dispatch queues every event in arrival order;
//!   one task per socket drives the session.
//!
//! Everything chat-specific comes from the engine, which is the only path
//! between clients: socketioxide's rooms, broadcasts and adapter are never
//! used, so native and Socket.IO clients share rooms and nothing reaches
//! anyone twice. Both paths share the driver:
//!
//! - **Connect.** The handshake's `auth.token` (or an `Authorization:
//!   Bearer` header) is checked by the listener's authenticator and the
//!   session opened; a refusal is a `connect_error` whose message starts
//!   with the error code (`unauthorized: token expired`). The server then
//!   emits `ready` (the native `ready`'s data) and `connection_status`.
//! - **Answers and events out.** An ack `{"ok":true,"data"}` or
//!   `{"ok":false,"error"}` for a command that asked for one, an `error`
//!   event for a failure without one, and each event under its own name. An
//!   event is encoded once for every Socket.IO session it goes to
//!   ([`chat_core::Delivery`] caches it per codec).
//! - **Aliases** of common Socket.IO chat servers: `room:joined` and
//!   `message:ack` after a successful join or send, `user:online` /
//!   `user:offline` beside `presence:changed`, `pong` after `ping`.
//! - **The support-widget dialect.** A visitor's `chat message` (a string or
//!   `{"text"}`) posts to its open support room, opening one on first use;
//!   the visitor gets `message_received` when it is stored, and other
//!   members' messages as `chat message` `{"text","from","message"}`.
//! - **Limits.** A packet larger than the listener's frame limit ends the
//!   connection; a session the engine ends (an expired token, abuse,
//!   revocation, a slow consumer) is told why with a `close` event
//!   `{"code","reason"}` (the native close code) and disconnected.
//!
//! Socket.IO's connection-state recovery is not offered; resuming is
//! `room:join` with `since_seq`, as natively, which loses nothing even
//! across server restarts and processes.

mod driver;
mod polling;
mod websocket;

use std::fmt;

use axum::Router;
use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use chat_core::{Error, ErrorCode, Ready, Session};
use chat_transport_ws::{ApiError, AppState};
use socketioxide::SocketIo;
use socketioxide::extract::{SocketRef, TryData};
use socketioxide::handler::ConnectHandler;
use utoipa_axum::router::OpenApiRouter;

/// The name sessions of this transport are counted under
/// ([`chat_core::Engine::open_session_on`]).
pub const TRANSPORT: &str = "socketio";

/// tungstenite's read buffer per WebSocket: commands are a few hundred
/// bytes, and every idle connection holds this much (as natively).
const READ_BUFFER_BYTES: usize = 512;

/// Most commands waiting in one long-polling socket's queue for the session
/// to take them; past it a command is refused `rate_limited` at once.
const MAX_QUEUED: usize = 256;

/// Most `chat message` texts held while the visitor's support room opens.
const MAX_WIDGET_PENDING: usize = 32;

/// The Socket.IO endpoint, as `/v1/openapi.json` describes it: the routes
/// are socketioxide's service and the native loop, not handlers, so this
/// function only carries their description.
#[utoipa::path(
    get, path = "/socket.io/", tag = "connect",
    params(
        ("EIO" = String, Query, description = "The Engine.IO version: 4"),
        ("transport" = String, Query, description = "`websocket` or `polling`"),
        ("sid" = Option<String>, Query, description = "A long-polling session, once open"),
    ),
    responses(
        (status = 101, description = "Switching to the WebSocket protocol (`transport=websocket`)"),
        (status = 200, description = "Engine.IO packets (`transport=polling`)", content_type = "text/plain", body = String),
        (status = 400, description = "Not an Engine.IO v4 request, or an unknown session"),
        (status = 403, description = "A browser origin not in CHAT_ALLOWED_ORIGINS"),
    )
)]
#[allow(dead_code)]
fn socket_io() {}

#[derive(utoipa::OpenApi)]
#[openapi(paths(socket_io))]
struct SocketIoApi;

/// The `/socket.io/` endpoint for the engine, authenticator and limits of
/// `app`, to mount with [`chat_transport_ws::router_with`], with its
/// description for `/v1/openapi.json`. A browser request from an origin the
/// listener does not allow is answered 403 before it reaches Socket.IO.
pub fn routes(app: &AppState) -> OpenApiRouter<AppState> {
    use utoipa::OpenApi as _;
    OpenApiRouter::with_openapi(SocketIoApi::openapi()).merge(OpenApiRouter::from(service_routes(app)))
}

fn service_routes(app: &AppState) -> Router<AppState> {
    let limit = app.config().max_frame_bytes;
    let (service, io) = SocketIo::builder()
        .max_payload(u64::try_from(limit).unwrap_or(u64::MAX))
        .ws_max_message_size(limit)
        .ws_max_frame_size(limit)
        .ws_read_buffer_size(READ_BUFFER_BYTES)
        .max_buffer_size(app.engine().config().limits.outbound_queue)
        .build_svc();
    let (for_connect, for_auth) = (app.clone(), app.clone());
    let connect = move |socket: SocketRef| polling::connected(for_connect.clone(), socket);
    let middleware = move |socket: SocketRef, data: TryData<serde_json::Value>| {
        polling::authenticate(for_auth.clone(), socket, data)
    };
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
    if websocket::is_fresh_websocket(&request) {
        return websocket::upgrade(app, request).await;
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

/// Authenticates a handshake's token and opens its session.
async fn open_session(app: &AppState, token: Option<String>) -> Result<(Session, Ready), Refusal> {
    let Some(token) = token else {
        return Err(Refusal::new(&Error::Unauthorized("missing token: connect with auth: {token}".into())));
    };
    let identity = app.authenticator().authenticate(&token).await.map_err(|e| Refusal::new(&e))?;
    drop(token);
    app.engine().open_session_on(TRANSPORT, identity).await.map_err(|err| {
        tracing::warn!(error = %err, "opening a Socket.IO session failed");
        Refusal::new(&err)
    })
}

/// The token of a handshake's `auth` (`{"token": "…"}`).
fn auth_token(auth: &serde_json::Value) -> Option<String> {
    auth.get("token").and_then(|t| t.as_str()).map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_start_with_the_error_code() {
        assert_eq!(Refusal::new(&Error::Unauthorized("token expired".into())).0, "unauthorized: token expired");
        assert!(Refusal::new(&Error::unavailable("x")).0.starts_with("unavailable: "));
    }
}

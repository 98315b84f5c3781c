//! The HTTP API of PROTOCOL.md section 2.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::rejection::{BytesRejection, FailedToBufferBody, JsonRejection, QueryRejection};
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use chat_core::command::SearchMessages;
use chat_core::user::VISITOR_ROLE;
use chat_core::{ErrorCode, HistoryQuery, Identity, RoomId, User, UserId};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::error::ApiError;
use crate::openapi::{DevLoginEnabled, ErrorBody, Health, IceServers, OnlineUsers, QueuePage, QueuedRoomBody, Session};

type ApiResult<T> = Result<T, ApiError>;

/// Parses a JSON body, answering a bad one in the contract's error format.
pub(crate) fn body<T>(payload: Result<Json<T>, JsonRejection>) -> ApiResult<T> {
    payload.map(|Json(v)| v).map_err(|rejection| match rejection {
        JsonRejection::BytesRejection(BytesRejection::FailedToBufferBody(FailedToBufferBody::LengthLimitError(_))) => {
            ApiError::new(ErrorCode::TooLarge, "request body too large")
        }
        JsonRejection::BytesRejection(ref failed) if timed_out(failed) => ApiError::body_timeout(),
        JsonRejection::BytesRejection(_) => ApiError::new(ErrorCode::Invalid, "the request body could not be read"),
        other => ApiError::new(ErrorCode::Invalid, other.body_text()),
    })
}

/// Whether the body deadline (the router's `RequestBodyDeadlineLayer`) is
/// among the causes of `err`.
fn timed_out(err: &(dyn std::error::Error + 'static)) -> bool {
    std::iter::successors(Some(err), |e| e.source()).any(|e| e.is::<tower_http::timeout::TimeoutError>())
}

/// Reads a query string, answering a bad one in the contract's error format (400).
pub(crate) fn query<T>(params: Result<Query<T>, QueryRejection>) -> ApiResult<T> {
    params.map(|Query(p)| p).map_err(|e| ApiError::new(ErrorCode::Invalid, e.body_text()))
}

/// Parses an optional JSON body: no body at all means the defaults.
pub(crate) fn optional_body<T: Default>(payload: Result<Json<T>, JsonRejection>) -> ApiResult<T> {
    match payload {
        Err(JsonRejection::MissingJsonContentType(_)) => Ok(T::default()),
        other => body(other),
    }
}

/// The token issuer, or 503 when the server has no signing key.
pub(crate) fn issuer(app: &AppState) -> ApiResult<&crate::TokenIssuer> {
    app.issuer.as_deref().ok_or_else(|| ApiError::new(ErrorCode::Unavailable, "this server does not issue tokens"))
}

/// The identity of a request's bearer token, once the engine has checked
/// that the store still accepts it (the user is not deleted or deactivated,
/// the token not revoked): every route that takes a token comes here.
async fn authenticate(app: &AppState, headers: &HeaderMap) -> ApiResult<Identity> {
    Ok(authenticate_user(app, headers).await?.0)
}

/// [`authenticate`], with the user as the store knows them (their current
/// roles: a visitor's quota is smaller).
pub(crate) async fn authenticate_user(app: &AppState, headers: &HeaderMap) -> ApiResult<(Identity, User)> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .ok_or_else(|| ApiError::new(ErrorCode::Unauthorized, "missing bearer token"))?;
    let identity = app.auth.authenticate(token).await?;
    let user = app.engine.authorize(&identity).await?;
    Ok((identity, user))
}

pub(crate) fn require_api_key(app: &AppState, headers: &HeaderMap) -> ApiResult<()> {
    let Some(expected) = &app.config.api_key else {
        return Err(ApiError::new(ErrorCode::Unauthorized, "the admin API is disabled: set CHAT_API_KEY"));
    };
    let given = headers.get("x-api-key").map(|v| v.as_bytes()).unwrap_or_default();
    if chat_core::auth::constant_time_eq(given, expected.as_bytes()) {
        Ok(())
    } else {
        Err(ApiError::new(ErrorCode::Unauthorized, "missing or wrong x-api-key"))
    }
}

/// The engine's metrics for Prometheus. Open while no API key is configured;
/// with one, the scraper sends it as `x-api-key` or as a bearer token
/// (Prometheus: `authorization: { credentials: <key> }`).
#[utoipa::path(
    get, path = "/metrics", tag = "service",
    security((), ("api_key" = []), ("bearer" = [])),
    responses(
        (status = 200, description = "OpenMetrics text", content_type = "application/openmetrics-text", body = String),
        (status = 401, description = "An API key is configured and was not given", body = ErrorBody),
    )
)]
pub(crate) async fn metrics(State(app): State<AppState>, headers: HeaderMap) -> ApiResult<Response> {
    if let Some(expected) = &app.config.api_key {
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, key)| key.trim().as_bytes());
        let given = bearer.or_else(|| headers.get("x-api-key").map(|v| v.as_bytes())).unwrap_or_default();
        if !chat_core::auth::constant_time_eq(given, expected.as_bytes()) {
            return Err(ApiError::new(ErrorCode::Unauthorized, "missing or wrong API key"));
        }
    }
    let body = app.engine.encode_metrics();
    Ok(([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], body).into_response())
}

/// The process's health: 200 while it can serve (`degraded` when a bridge
/// or the broker is down), 503 when its store is.
#[utoipa::path(
    get, path = "/health", tag = "service",
    responses(
        (status = 200, description = "Serving", body = Health),
        (status = 503, description = "The store does not answer", body = Health),
    )
)]
pub(crate) async fn health(State(app): State<AppState>) -> Response {
    let store = app.engine.store_health(Duration::from_secs(1)).await;
    let bridges = app.engine.bridge_health();
    // A bridge on standby leaves the connection to the process holding its lease.
    let bridges_ok = bridges.values().all(|b| b.connected || b.standby);
    // Without its broker a process still serves its own clients, so it stays
    // in the load balancer: degraded, not down.
    let broker = app.engine.broker_connected();
    let status = if store.is_ok() && bridges_ok && broker != Some(false) { "ok" } else { "degraded" };
    let body = Health {
        status,
        version: app.config.version.clone(),
        uptime_s: app.engine.uptime().as_secs(),
        connections: app.engine.connections(),
        transports: app.engine.connections_by_transport(),
        store: if store.is_ok() { "ok" } else { "unavailable" },
        bridges,
        support: app.engine.support_availability(),
        broker: broker.map(|connected| if connected { "ok" } else { "unavailable" }),
        peers: broker.map(|_| app.engine.peer_processes()),
    };
    let code = if store.is_ok() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, Json(body)).into_response()
}

/// Whether support agents are online, here or on a bridged platform.
#[utoipa::path(
    get, path = "/v1/support/availability", tag = "visitors",
    responses((status = 200, description = "Support agents online", body = chat_core::SupportAvailability))
)]
pub(crate) async fn support_availability(State(app): State<AppState>) -> Response {
    Json(app.engine.support_availability()).into_response()
}

/// As `users:online`: the users connected, by name; invisible ones are left out.
#[utoipa::path(
    get, path = "/v1/users/online", tag = "chat", security(("bearer" = [])),
    responses(
        (status = 200, description = "Online users", body = OnlineUsers),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "Visitors may not list users", body = ErrorBody),
    )
)]
pub(crate) async fn users_online(State(app): State<AppState>, headers: HeaderMap) -> ApiResult<Response> {
    let identity = authenticate(&app, &headers).await?;
    Ok(Json(OnlineUsers { users: app.engine.online_users_for(&identity).await? }).into_response())
}

/// The ICE servers (STUN, TURN with credentials made for this user) for
/// the user's calls: the list `call:invite` answers with.
#[utoipa::path(
    get, path = "/v1/calls/ice-servers", tag = "chat", security(("bearer" = [])),
    responses(
        (status = 200, description = "RTCIceServer objects", body = IceServers),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "Visitors may not call", body = ErrorBody),
    )
)]
pub(crate) async fn ice_servers(State(app): State<AppState>, headers: HeaderMap) -> ApiResult<Response> {
    let identity = authenticate(&app, &headers).await?;
    Ok(Json(IceServers { ice_servers: app.engine.ice_servers(&identity).await? }).into_response())
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct QueueParams {
    /// The `next` of the previous page.
    cursor: Option<String>,
    /// Rooms per page (at most 100).
    limit: Option<u32>,
}

/// `GET /v1/support/queue?cursor=&limit=`: the support queue for agents, a
/// page at a time, longest waiting first.
#[utoipa::path(
    get, path = "/v1/support/queue", tag = "chat", security(("bearer" = [])), params(QueueParams),
    responses(
        (status = 200, description = "Open support rooms with a message, longest waiting first", body = QueuePage),
        (status = 400, description = "A bad cursor or limit", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "Only support agents", body = ErrorBody),
    )
)]
pub(crate) async fn support_queue(
    State(app): State<AppState>,
    headers: HeaderMap,
    params: Result<Query<QueueParams>, QueryRejection>,
) -> ApiResult<Response> {
    let identity = authenticate(&app, &headers).await?;
    let params = query(params)?;
    let page = app.engine.support_queue(&identity, params.cursor.as_deref(), params.limit).await?;
    let rooms =
        page.rooms.into_iter().map(|q| QueuedRoomBody { room: q.room, waiting_since: q.waiting_since }).collect();
    Ok(Json(QueuePage { rooms, next: page.next }).into_response())
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct HistoryParams {
    /// Only messages below this seq.
    before_seq: Option<u64>,
    /// Only messages above this seq.
    after_seq: Option<u64>,
    /// Page size: 1 to 100 (larger is capped), 50 by default.
    limit: Option<u32>,
}

/// As `room:history`: a page of a room's messages, ascending by seq.
#[utoipa::path(
    get, path = "/v1/rooms/{id}/messages", tag = "chat", security(("bearer" = [])),
    params(("id" = chat_core::RoomId, Path, description = "The room"), HistoryParams),
    responses(
        (status = 200, description = "A page of history", body = chat_core::HistoryPage),
        (status = 400, description = "A bad id, cursor or limit", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "Not a member", body = ErrorBody),
        (status = 404, description = "No such room", body = ErrorBody),
    )
)]
pub(crate) async fn room_messages(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(room): Path<String>,
    params: Result<Query<HistoryParams>, QueryRejection>,
) -> ApiResult<Response> {
    let identity = authenticate(&app, &headers).await?;
    let room: RoomId = room.parse()?;
    let params = query(params)?;
    let limits = &app.engine.config().limits;
    let limit = match params.limit {
        Some(0) => return Err(ApiError::new(ErrorCode::Invalid, "limit must be at least 1")),
        Some(n) => n.min(limits.max_history_page),
        None => limits.default_history_page,
    };
    let query = HistoryQuery { before_seq: params.before_seq, after_seq: params.after_seq, limit };
    let page = app.engine.history(&identity.user_id, room, query).await?;
    Ok(Json(page).into_response())
}

/// `GET /v1/search/messages?q=&room_id=&limit=&before=`: `messages:search`
/// over HTTP.
#[utoipa::path(
    get, path = "/v1/search/messages", tag = "chat", security(("bearer" = [])), params(SearchMessages),
    responses(
        (status = 200, description = "Messages holding every word, newest first", body = chat_core::SearchPage),
        (status = 400, description = "No word to look for, or a bad cursor or limit", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "A room_id you are not a member of; visitors may not search", body = ErrorBody),
        (status = 413, description = "A query over 200 characters", body = ErrorBody),
    )
)]
pub(crate) async fn search_messages(
    State(app): State<AppState>,
    headers: HeaderMap,
    params: Result<Query<SearchMessages>, QueryRejection>,
) -> ApiResult<Response> {
    let identity = authenticate(&app, &headers).await?;
    let params = query(params)?;
    let page = app.engine.search_messages(&identity, params).await?;
    Ok(Json(page).into_response())
}

/// Counts what each client address spends (requests, or bytes) in fixed
/// windows. The map is pruned of expired windows when it grows, and refuses
/// new addresses once it holds `MAX_TRACKED` live ones, so a flood of
/// addresses cannot grow it without bound.
#[derive(Debug)]
pub(crate) struct IpLimiter {
    per_window: u64,
    window: Duration,
    seen: Mutex<HashMap<IpAddr, (Instant, u64)>>,
}

const MAX_TRACKED: usize = 100_000;

impl IpLimiter {
    pub(crate) fn new(per_window: u64, window: Duration) -> Self {
        IpLimiter { per_window, window, seen: Mutex::new(HashMap::new()) }
    }

    /// Spends one; whether the address is still within its allowance.
    pub(crate) fn allow(&self, ip: IpAddr) -> bool {
        self.spend(ip, 1).is_some_and(|spent| spent <= self.per_window)
    }

    /// What the address may still spend in this window (0 for an address
    /// that cannot be tracked any more).
    pub(crate) fn remaining(&self, ip: IpAddr) -> u64 {
        self.spend(ip, 0).map_or(0, |spent| self.per_window.saturating_sub(spent))
    }

    /// Adds `amount` to what the address spent in this window; the new total,
    /// or `None` when the address cannot be tracked (the map is full).
    pub(crate) fn spend(&self, ip: IpAddr, amount: u64) -> Option<u64> {
        let now = Instant::now();
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.len() >= MAX_TRACKED && !seen.contains_key(&ip) {
            seen.retain(|_, (start, _)| now.duration_since(*start) < self.window);
            if seen.len() >= MAX_TRACKED {
                return None;
            }
        }
        let entry = seen.entry(ip).or_insert((now, 0));
        if now.duration_since(entry.0) >= self.window {
            *entry = (now, 0);
        }
        entry.1 = entry.1.saturating_add(amount);
        Some(entry.1)
    }
}

pub(crate) fn client_ip(app: &AppState, headers: &HeaderMap, peer: Option<SocketAddr>) -> Option<IpAddr> {
    if app.config.trust_forwarded_for {
        let forwarded = headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .and_then(|v| v.trim().parse().ok());
        if forwarded.is_some() {
            return forwarded;
        }
    }
    peer.map(|p| p.ip())
}

#[derive(Deserialize, Default, ToSchema)]
pub(crate) struct VisitorRequest {
    /// The visitor's display name, when the site knows it.
    name: Option<String>,
}

/// A session for an anonymous website visitor (the support widget's).
#[utoipa::path(
    post, path = "/v1/visitor-sessions", tag = "visitors",
    request_body(content = Option<VisitorRequest>, description = "Optional; no body is no name"),
    responses(
        (status = 201, description = "A visitor and their token", body = Session),
        (status = 400, description = "A bad name", body = ErrorBody),
        (status = 429, description = "Too many visitor sessions from this address", body = ErrorBody),
        (status = 503, description = "This server makes no tokens", body = ErrorBody),
    )
)]
pub(crate) async fn visitor_session(
    State(app): State<AppState>,
    headers: HeaderMap,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    payload: Result<Json<VisitorRequest>, JsonRejection>,
) -> ApiResult<Response> {
    let ip = client_ip(&app, &headers, peer.map(|Extension(ConnectInfo(a))| a));
    if let Some(ip) = ip
        && !app.visitors.allow(ip)
    {
        return Err(ApiError::new(ErrorCode::RateLimited, "too many visitor sessions from this address"));
    }
    let request = optional_body(payload)?;
    let issuer = issuer(&app)?;
    let id = uuid::Uuid::now_v7().simple().to_string();
    let user_id = UserId::new(format!("visitor:{id}"))?;
    let name = request.name.map(|n| n.trim().to_owned()).filter(|n| !n.is_empty());
    let name = name.unwrap_or_else(|| format!("Visitor {}", &id[id.len() - 4..]));
    let user = User { roles: vec![VISITOR_ROLE.to_owned()], ..User::new(user_id, name) };
    let user = app.engine.upsert_user(user).await?;
    let (token, expires_at) = issuer.issue(&user, app.config.visitor_token_ttl)?;
    Ok((StatusCode::CREATED, Json(Session { token, user, expires_at })).into_response())
}

#[derive(Deserialize, ToSchema)]
pub(crate) struct DevLoginRequest {
    /// Any name; the user id is made from it.
    name: String,
    #[serde(default)]
    roles: Vec<String>,
}

/// `GET /v1/dev-login`: tells the chat page to offer signing in by name. The
/// route exists only while `dev_login` is on.
#[utoipa::path(
    get, path = "/v1/dev-login", tag = "development",
    responses((status = 200, description = "Signing in by name is on", body = DevLoginEnabled))
)]
pub(crate) async fn dev_login_enabled() -> Response {
    Json(DevLoginEnabled { enabled: true }).into_response()
}

/// The user id a dev-login name stands for: its letters and digits in lower
/// case, other runs of characters as one `-` ("Ada Lovelace" is
/// `ada-lovelace`), so that typing the same name again is the same user.
fn dev_user_id(name: &str) -> String {
    let mut id = String::new();
    for c in name.trim().chars().flat_map(char::to_lowercase) {
        if c.is_alphanumeric() {
            id.push(c);
        } else if !id.is_empty() && !id.ends_with('-') {
            id.push('-');
        }
    }
    id.trim_end_matches('-').chars().take(64).collect()
}

/// `POST /v1/dev-login` `{"name","roles"?}`: a token for the user that name
/// stands for, with no password. Only routed while `dev_login` is on.
#[utoipa::path(
    post, path = "/v1/dev-login", tag = "development", request_body = DevLoginRequest,
    responses(
        (status = 201, description = "The user and a token", body = Session),
        (status = 400, description = "A name without a letter or digit, or bad roles", body = ErrorBody),
    )
)]
pub(crate) async fn dev_login(
    State(app): State<AppState>,
    payload: Result<Json<DevLoginRequest>, JsonRejection>,
) -> ApiResult<Response> {
    let request = body(payload)?;
    let name = request.name.trim().to_owned();
    let id = dev_user_id(&name);
    if id.is_empty() {
        return Err(ApiError::new(ErrorCode::Invalid, "name must contain a letter or a digit"));
    }
    let issuer = issuer(&app)?;
    let mut user = User::new(UserId::new(id)?, name);
    user.roles = request.roles;
    user.validate()?;
    let user = app.engine.upsert_user(user).await?;
    let user = app.engine.token_subject(&user.id).await?;
    let (token, expires_at) = issuer.issue(&user, app.config.user_token_ttl)?;
    tracing::info!(user = %user.id, "dev login");
    Ok((StatusCode::CREATED, Json(Session { token, user, expires_at })).into_response())
}

pub(crate) async fn not_found() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no such route")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_user_ids() {
        let table = [
            ("ada", "ada"),
            ("  Ada Lovelace ", "ada-lovelace"),
            ("Grace  -- Hopper!", "grace-hopper"),
            ("Zoë", "zoë"),
            ("!!!", ""),
        ];
        for (name, id) in table {
            assert_eq!(dev_user_id(name), id, "{name}");
        }
    }

    #[test]
    fn ip_limiter_counts_per_window() {
        let limiter = IpLimiter::new(2, Duration::from_secs(60));
        let a: IpAddr = "127.0.0.1".parse().expect("ip");
        let b: IpAddr = "127.0.0.2".parse().expect("ip");
        assert!(limiter.allow(a));
        assert!(limiter.allow(a));
        assert!(!limiter.allow(a));
        assert!(limiter.allow(b));
    }
}

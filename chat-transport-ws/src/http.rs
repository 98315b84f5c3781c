//! The HTTP API of PROTOCOL.md section 2.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::rejection::{BytesRejection, FailedToBufferBody, JsonRejection};
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use chat_core::command::SearchMessages;
use chat_core::user::VISITOR_ROLE;
use chat_core::{ErrorCode, HistoryQuery, Identity, JobStatus, RoomId, Timestamp, User, UserId};
use serde::Deserialize;
use serde_json::json;

use crate::AppState;
use crate::error::ApiError;

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

/// Parses an optional JSON body: no body at all means the defaults.
fn optional_body<T: Default>(payload: Result<Json<T>, JsonRejection>) -> ApiResult<T> {
    match payload {
        Err(JsonRejection::MissingJsonContentType(_)) => Ok(T::default()),
        other => body(other),
    }
}

/// The token issuer, or 503 when the server has no signing key.
fn issuer(app: &AppState) -> ApiResult<&crate::TokenIssuer> {
    app.issuer.as_deref().ok_or_else(|| ApiError::new(ErrorCode::Unavailable, "this server does not issue tokens"))
}

async fn authenticate(app: &AppState, headers: &HeaderMap) -> ApiResult<Identity> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .ok_or_else(|| ApiError::new(ErrorCode::Unauthorized, "missing bearer token"))?;
    Ok(app.auth.authenticate(token).await?)
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

pub(crate) async fn health(State(app): State<AppState>) -> Response {
    let store = app.engine.store_health(Duration::from_secs(1)).await;
    let bridges = app.engine.bridge_health();
    // A bridge on standby leaves the connection to the process holding its lease.
    let bridges_ok = bridges.values().all(|b| b.connected || b.standby);
    // Without its broker a process still serves its own clients, so it stays
    // in the load balancer: degraded, not down.
    let broker = app.engine.broker_connected();
    let status = if store.is_ok() && bridges_ok && broker != Some(false) { "ok" } else { "degraded" };
    let mut body = json!({
        "status": status,
        "version": app.config.version,
        "uptime_s": app.engine.uptime().as_secs(),
        "connections": app.engine.connections(),
        "transports": app.engine.connections_by_transport(),
        "store": if store.is_ok() { "ok" } else { "unavailable" },
        "bridges": bridges,
        "support": app.engine.support_availability(),
    });
    if let Some(connected) = broker {
        body["broker"] = json!(if connected { "ok" } else { "unavailable" });
        body["peers"] = json!(app.engine.peer_processes());
    }
    let code = if store.is_ok() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, Json(body)).into_response()
}

pub(crate) async fn support_availability(State(app): State<AppState>) -> Response {
    Json(app.engine.support_availability()).into_response()
}

pub(crate) async fn users_online(State(app): State<AppState>, headers: HeaderMap) -> ApiResult<Response> {
    let identity = authenticate(&app, &headers).await?;
    Ok(Json(json!({ "users": app.engine.online_users_for(&identity).await? })).into_response())
}

#[derive(Deserialize)]
pub(crate) struct QueueParams {
    cursor: Option<String>,
    limit: Option<u32>,
}

/// `GET /v1/support/queue?cursor=&limit=`: the support queue for agents, a
/// page at a time, longest waiting first.
pub(crate) async fn support_queue(
    State(app): State<AppState>,
    headers: HeaderMap,
    params: Result<Query<QueueParams>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    let identity = authenticate(&app, &headers).await?;
    let Query(params) = params.map_err(|e| ApiError::new(ErrorCode::Invalid, e.body_text()))?;
    let page = app.engine.support_queue(&identity, params.cursor.as_deref(), params.limit).await?;
    let rooms: Vec<_> =
        page.rooms.iter().map(|q| json!({ "room": q.room, "waiting_since": q.waiting_since })).collect();
    Ok(Json(json!({ "rooms": rooms, "next": page.next })).into_response())
}

#[derive(Deserialize)]
pub(crate) struct HistoryParams {
    before_seq: Option<u64>,
    after_seq: Option<u64>,
    limit: Option<u32>,
}

pub(crate) async fn room_messages(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(room): Path<String>,
    params: Result<Query<HistoryParams>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    let identity = authenticate(&app, &headers).await?;
    let room: RoomId = room.parse()?;
    let Query(params) = params.map_err(|e| ApiError::new(ErrorCode::Invalid, e.body_text()))?;
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
pub(crate) async fn search_messages(
    State(app): State<AppState>,
    headers: HeaderMap,
    params: Result<Query<SearchMessages>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    let identity = authenticate(&app, &headers).await?;
    let Query(params) = params.map_err(|e| ApiError::new(ErrorCode::Invalid, e.body_text()))?;
    let page = app.engine.search_messages(&identity, params).await?;
    Ok(Json(page).into_response())
}

/// Counts requests per client address in fixed windows. The map is pruned of
/// expired windows when it grows, and refuses new addresses once it holds
/// `MAX_TRACKED` live ones, so a flood of addresses cannot grow it without bound.
#[derive(Debug)]
pub(crate) struct IpLimiter {
    per_window: u32,
    window: Duration,
    seen: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

const MAX_TRACKED: usize = 100_000;

impl IpLimiter {
    pub(crate) fn new(per_window: u32, window: Duration) -> Self {
        IpLimiter { per_window, window, seen: Mutex::new(HashMap::new()) }
    }

    pub(crate) fn allow(&self, ip: IpAddr) -> bool {
        let now = Instant::now();
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.len() >= MAX_TRACKED && !seen.contains_key(&ip) {
            seen.retain(|_, (start, _)| now.duration_since(*start) < self.window);
            if seen.len() >= MAX_TRACKED {
                return false;
            }
        }
        let entry = seen.entry(ip).or_insert((now, 0));
        if now.duration_since(entry.0) >= self.window {
            *entry = (now, 0);
        }
        entry.1 += 1;
        entry.1 <= self.per_window
    }
}

fn client_ip(app: &AppState, headers: &HeaderMap, peer: Option<SocketAddr>) -> Option<IpAddr> {
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

#[derive(Deserialize, Default)]
pub(crate) struct VisitorRequest {
    name: Option<String>,
}

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
    Ok((StatusCode::CREATED, Json(json!({ "token": token, "user": user, "expires_at": expires_at }))).into_response())
}

#[derive(Deserialize)]
pub(crate) struct DevLoginRequest {
    name: String,
    #[serde(default)]
    roles: Vec<String>,
}

/// `GET /v1/dev-login`: tells the chat page to offer signing in by name. The
/// route exists only while `dev_login` is on.
pub(crate) async fn dev_login_enabled() -> Response {
    Json(json!({ "enabled": true })).into_response()
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
    let (token, expires_at) = issuer.issue(&user, app.config.user_token_ttl)?;
    tracing::info!(user = %user.id, "dev login");
    Ok((StatusCode::CREATED, Json(json!({ "token": token, "user": user, "expires_at": expires_at }))).into_response())
}

#[derive(Deserialize)]
pub(crate) struct AdminUser {
    id: UserId,
    name: String,
    avatar_url: Option<String>,
    #[serde(default)]
    roles: Vec<String>,
}

pub(crate) async fn admin_upsert_user(
    State(app): State<AppState>,
    headers: HeaderMap,
    payload: Result<Json<AdminUser>, JsonRejection>,
) -> ApiResult<Response> {
    require_api_key(&app, &headers)?;
    let req = body(payload)?;
    let user = User { id: req.id, name: req.name, avatar_url: req.avatar_url, roles: req.roles };
    let user = app.engine.upsert_user(user).await?;
    Ok(Json(json!({ "user": user })).into_response())
}

#[derive(Deserialize, Default)]
pub(crate) struct TokenRequest {
    ttl_s: Option<u64>,
}

pub(crate) async fn admin_token(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    payload: Result<Json<TokenRequest>, JsonRejection>,
) -> ApiResult<Response> {
    require_api_key(&app, &headers)?;
    let request = optional_body(payload)?;
    let issuer = issuer(&app)?;
    let id = UserId::new(id)?;
    let user = app.engine.store().user(&id).await?.ok_or(chat_core::Error::NotFound("user"))?;
    let ttl = match request.ttl_s {
        Some(0) => return Err(ApiError::new(ErrorCode::Invalid, "ttl_s must be at least 1")),
        Some(s) if s > 366 * 24 * 3600 => {
            return Err(ApiError::new(ErrorCode::Invalid, "ttl_s must be at most a year"));
        }
        Some(s) => Duration::from_secs(s),
        None => app.config.user_token_ttl,
    };
    let (token, expires_at): (String, Timestamp) = issuer.issue(&user, ttl)?;
    Ok(Json(json!({ "token": token, "expires_at": expires_at })).into_response())
}

/// The query of an outbox listing, `?status=failed|pending&limit=N`: the
/// bridges' jobs here, and other crates' listings of the same (webhook
/// deliveries).
#[derive(Debug, Default, Deserialize)]
pub struct JobQuery {
    /// `failed` (the default) or `pending`.
    pub status: Option<String>,
    /// How many, oldest first: 100 unless asked, at most [`MAX_JOBS_PAGE`].
    pub limit: Option<u32>,
}

/// Most jobs one listing returns.
pub const MAX_JOBS_PAGE: u32 = 1000;

impl JobQuery {
    /// The status and the limit asked for; 400 for another status or a
    /// limit of 0. A limit above [`MAX_JOBS_PAGE`] is capped.
    pub fn read(&self) -> ApiResult<(JobStatus, u32)> {
        let status = match self.status.as_deref() {
            None => JobStatus::Failed,
            Some(s) => JobStatus::parse(s)
                .ok_or_else(|| ApiError::new(ErrorCode::Invalid, "status must be failed or pending"))?,
        };
        let limit = match self.limit {
            Some(0) => return Err(ApiError::new(ErrorCode::Invalid, "limit must be at least 1")),
            Some(n) => n.min(MAX_JOBS_PAGE),
            None => 100,
        };
        Ok((status, limit))
    }
}

/// `GET /v1/admin/bridges/{bridge}/jobs?status=failed|pending&limit=N`: a
/// bridge's outbox jobs, oldest first (failed ones unless asked otherwise).
pub(crate) async fn admin_bridge_jobs(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(bridge): Path<String>,
    params: Result<Query<JobQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    require_api_key(&app, &headers)?;
    let Query(params) = params.map_err(|e| ApiError::new(ErrorCode::Invalid, e.body_text()))?;
    let (status, limit) = params.read()?;
    let jobs = app.engine.bridge_jobs(&bridge, status, limit).await?;
    Ok(Json(json!({ "jobs": jobs })).into_response())
}

/// `POST /v1/admin/bridges/{bridge}/jobs/{id}/retry`: runs a failed job
/// again, at once. 404 when the bridge has no failed job with that id.
pub(crate) async fn admin_retry_bridge_job(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path((bridge, id)): Path<(String, String)>,
) -> ApiResult<Response> {
    require_api_key(&app, &headers)?;
    let id: i64 = id.parse().map_err(|_| ApiError::new(ErrorCode::Invalid, "the job id must be a number"))?;
    if !app.engine.retry_bridge_job(&bridge, id).await? {
        return Err(ApiError::new(ErrorCode::NotFound, "no failed job with that id"));
    }
    Ok(Json(json!({ "retried": true, "id": id })).into_response())
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

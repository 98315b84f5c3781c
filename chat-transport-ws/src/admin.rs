//! The admin API: every route under `/v1/admin/`, for operators holding the
//! API key (`x-api-key`). Users and their accounts (section 9 of the wire
//! contract), tokens, and the bridges' outboxes. The rules live in the
//! engine (`chat_core::Engine::accounts` and the methods beside it); this
//! module reads requests and writes answers.

use std::time::Duration;

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chat_core::{ErrorCode, JobStatus, Timestamp, User, UserAccount, UserId, UserPatch};
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::error::ApiError;
use crate::http::{body, issuer, optional_body, query, require_api_key};
use crate::openapi::{ErrorBody, Jobs, Retried, Token};

type ApiResult<T> = Result<T, ApiError>;

/// An account as the admin API shows it: the User, with `active`,
/// `created_at` and `last_seen` (when known) beside its fields.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Account {
    #[serde(flatten)]
    user: User,
    /// `false` while deactivated.
    active: bool,
    /// When the user was first stored.
    created_at: Timestamp,
    /// When a session of theirs last opened or their last one closed.
    #[serde(skip_serializing_if = "Option::is_none")]
    last_seen: Option<Timestamp>,
}

impl From<UserAccount> for Account {
    fn from(account: UserAccount) -> Self {
        Account {
            user: account.user,
            active: account.active,
            created_at: account.created_at,
            last_seen: account.last_seen,
        }
    }
}

/// A page of the user list.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Accounts {
    users: Vec<Account>,
    /// The `cursor` of the next page, when there may be one.
    #[serde(skip_serializing_if = "Option::is_none")]
    next: Option<String>,
}

/// `{"user"}`: the user as stored after `POST /v1/admin/users`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct StoredUser {
    user: User,
}

/// The user id of a route's path: 400 for one that cannot be an id.
fn user_id(id: String) -> ApiResult<UserId> {
    Ok(UserId::new(id)?)
}

/// 204, for the routes that answer nothing.
fn done() -> Response {
    StatusCode::NO_CONTENT.into_response()
}

#[derive(Deserialize, ToSchema)]
pub(crate) struct AdminUser {
    id: UserId,
    name: String,
    avatar_url: Option<String>,
    #[serde(default)]
    roles: Vec<String>,
}

/// `POST /v1/admin/users` `{"id","name","avatar_url"?,"roles"?}`: creates
/// the user or replaces those fields, as an operator's change (it wins over
/// the name and roles of tokens issued before it). 409 for a deleted user.
#[utoipa::path(
    post, path = "/v1/admin/users", tag = "admin", security(("api_key" = [])), request_body = AdminUser,
    responses(
        (status = 200, description = "The user as stored", body = StoredUser),
        (status = 400, description = "A bad field", body = ErrorBody),
        (status = 401, description = "No or a wrong API key", body = ErrorBody),
        (status = 409, description = "The user was deleted", body = ErrorBody),
    )
)]
pub(crate) async fn upsert_user(
    State(app): State<AppState>,
    headers: HeaderMap,
    payload: Result<Json<AdminUser>, JsonRejection>,
) -> ApiResult<Response> {
    require_api_key(&app, &headers)?;
    let req = body(payload)?;
    let user = User { avatar_url: req.avatar_url, roles: req.roles, ..User::new(req.id, req.name) };
    let user = app.engine.put_user(user).await?;
    Ok(Json(StoredUser { user }).into_response())
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListParams {
    /// The `next` of the previous page.
    cursor: Option<String>,
    /// Users per page: 1 to 200 (larger is capped), 50 by default.
    limit: Option<u32>,
    /// A substring of the id or the name, case ignored.
    q: Option<String>,
}

/// `GET /v1/admin/users?cursor=&limit=&q=`: the users who are not deleted,
/// by id, a page at a time.
#[utoipa::path(
    get, path = "/v1/admin/users", tag = "admin", security(("api_key" = [])), params(ListParams),
    responses(
        (status = 200, description = "A page of users, by id", body = Accounts),
        (status = 400, description = "A bad cursor, limit or q", body = ErrorBody),
        (status = 401, description = "No or a wrong API key", body = ErrorBody),
    )
)]
pub(crate) async fn list_users(
    State(app): State<AppState>,
    headers: HeaderMap,
    params: Result<Query<ListParams>, QueryRejection>,
) -> ApiResult<Response> {
    require_api_key(&app, &headers)?;
    let params = query(params)?;
    let page = app.engine.accounts(params.cursor.as_deref(), params.q.as_deref(), params.limit).await?;
    let users = page.accounts.into_iter().map(Account::from).collect();
    Ok(Json(Accounts { users, next: page.next }).into_response())
}

/// `GET /v1/admin/users/{id}`: one user's account; 404 for an unknown or
/// deleted user.
#[utoipa::path(
    get, path = "/v1/admin/users/{id}", tag = "admin", security(("api_key" = [])),
    params(("id" = UserId, Path, description = "The user")),
    responses(
        (status = 200, description = "The user's account", body = Account),
        (status = 401, description = "No or a wrong API key", body = ErrorBody),
        (status = 404, description = "No such user, or a deleted one", body = ErrorBody),
    )
)]
pub(crate) async fn get_user(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    require_api_key(&app, &headers)?;
    let account = app.engine.account(&user_id(id)?).await?;
    Ok(Json(Account::from(account)).into_response())
}

/// Reads a field that may be absent (keep), `null` (remove) or a value.
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PatchUser {
    name: Option<String>,
    /// `null` removes the avatar.
    #[serde(default, deserialize_with = "present")]
    avatar_url: Option<Option<String>>,
    roles: Option<Vec<String>>,
}

/// `PATCH /v1/admin/users/{id}` `{"name"?,"avatar_url"?,"roles"?}`: changes
/// those fields (`"avatar_url":null` removes the avatar); 200 with the
/// account, 404 for an unknown or deleted user, 400 for a bad value.
#[utoipa::path(
    patch, path = "/v1/admin/users/{id}", tag = "admin", security(("api_key" = [])),
    params(("id" = UserId, Path, description = "The user")), request_body = PatchUser,
    responses(
        (status = 200, description = "The user's account as it is now", body = Account),
        (status = 400, description = "A bad or unknown field", body = ErrorBody),
        (status = 401, description = "No or a wrong API key", body = ErrorBody),
        (status = 404, description = "No such user, or a deleted one", body = ErrorBody),
    )
)]
pub(crate) async fn patch_user(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    payload: Result<Json<PatchUser>, JsonRejection>,
) -> ApiResult<Response> {
    require_api_key(&app, &headers)?;
    let id = user_id(id)?;
    let req = body(payload)?;
    let patch = UserPatch { name: req.name, avatar_url: req.avatar_url, roles: req.roles };
    app.engine.update_user(&id, patch).await?;
    let account = app.engine.account(&id).await?;
    Ok(Json(Account::from(account)).into_response())
}

/// `POST /v1/admin/users/{id}/deactivate`: 204; the user's sessions end
/// (4401) on every process and none of their tokens is accepted.
#[utoipa::path(
    post, path = "/v1/admin/users/{id}/deactivate", tag = "admin", security(("api_key" = [])),
    params(("id" = UserId, Path, description = "The user")),
    responses(
        (status = 204, description = "Deactivated: the sessions of the user end on every process"),
        (status = 401, description = "No or a wrong API key", body = ErrorBody),
        (status = 404, description = "No such user, or a deleted one", body = ErrorBody),
    )
)]
pub(crate) async fn deactivate_user(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    require_api_key(&app, &headers)?;
    app.engine.deactivate_user(&user_id(id)?).await?;
    Ok(done())
}

/// `POST /v1/admin/users/{id}/reactivate`: 204.
#[utoipa::path(
    post, path = "/v1/admin/users/{id}/reactivate", tag = "admin", security(("api_key" = [])),
    params(("id" = UserId, Path, description = "The user")),
    responses(
        (status = 204, description = "Active again"),
        (status = 401, description = "No or a wrong API key", body = ErrorBody),
        (status = 404, description = "No such user, or a deleted one", body = ErrorBody),
    )
)]
pub(crate) async fn reactivate_user(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    require_api_key(&app, &headers)?;
    app.engine.reactivate_user(&user_id(id)?).await?;
    Ok(done())
}

/// `POST /v1/admin/users/{id}/revoke-tokens`: 204; every token issued until
/// this second is refused from now on, and the user's sessions end.
#[utoipa::path(
    post, path = "/v1/admin/users/{id}/revoke-tokens", tag = "admin", security(("api_key" = [])),
    params(("id" = UserId, Path, description = "The user")),
    responses(
        (status = 204, description = "Every token issued until now is refused; the sessions of the user end"),
        (status = 401, description = "No or a wrong API key", body = ErrorBody),
        (status = 404, description = "No such user, or a deleted one", body = ErrorBody),
    )
)]
pub(crate) async fn revoke_tokens(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    require_api_key(&app, &headers)?;
    app.engine.revoke_tokens(&user_id(id)?).await?;
    Ok(done())
}

/// `DELETE /v1/admin/users/{id}`: 204; the user is gone for good.
#[utoipa::path(
    delete, path = "/v1/admin/users/{id}", tag = "admin", security(("api_key" = [])),
    params(("id" = UserId, Path, description = "The user")),
    responses(
        (status = 204, description = "Deleted for good: gone from rooms and lists, messages kept"),
        (status = 401, description = "No or a wrong API key", body = ErrorBody),
        (status = 404, description = "No such user, or deleted already", body = ErrorBody),
    )
)]
pub(crate) async fn delete_user(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    require_api_key(&app, &headers)?;
    app.engine.delete_user(&user_id(id)?).await?;
    Ok(done())
}

#[derive(Deserialize, Default, ToSchema)]
pub(crate) struct TokenRequest {
    /// Seconds the token lasts: 1 to a year; the server's default otherwise.
    ttl_s: Option<u64>,
}

/// `POST /v1/admin/users/{id}/tokens` `{"ttl_s"?}`: a token for the user.
/// 404 for an unknown or deleted user, 409 for a deactivated one.
#[utoipa::path(
    post, path = "/v1/admin/users/{id}/tokens", tag = "admin", security(("api_key" = [])),
    params(("id" = UserId, Path, description = "The user")),
    request_body(content = Option<TokenRequest>, description = "Optional"),
    responses(
        (status = 200, description = "A token for the user", body = Token),
        (status = 400, description = "A bad ttl_s", body = ErrorBody),
        (status = 401, description = "No or a wrong API key", body = ErrorBody),
        (status = 404, description = "No such user, or a deleted one", body = ErrorBody),
        (status = 409, description = "The user is deactivated", body = ErrorBody),
        (status = 503, description = "This server makes no tokens", body = ErrorBody),
    )
)]
pub(crate) async fn make_token(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    payload: Result<Json<TokenRequest>, JsonRejection>,
) -> ApiResult<Response> {
    require_api_key(&app, &headers)?;
    let request = optional_body(payload)?;
    let issuer = issuer(&app)?;
    let id = user_id(id)?;
    let ttl = match request.ttl_s {
        Some(0) => return Err(ApiError::new(ErrorCode::Invalid, "ttl_s must be at least 1")),
        Some(s) if s > 366 * 24 * 3600 => {
            return Err(ApiError::new(ErrorCode::Invalid, "ttl_s must be at most a year"));
        }
        Some(s) => Duration::from_secs(s),
        None => app.config.user_token_ttl,
    };
    let user = app.engine.token_subject(&id).await?;
    let (token, expires_at): (String, Timestamp) = issuer.issue(&user, ttl)?;
    Ok(Json(Token { token, expires_at }).into_response())
}

/// The query of an outbox listing, `?status=failed|pending&limit=N`: the
/// bridges' jobs here, and other crates' listings of the same (webhook
/// deliveries).
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct JobQuery {
    /// `failed` (the default) or `pending`.
    pub status: Option<String>,
    /// How many, oldest first: 100 unless asked, at most 1000 (larger is capped).
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

#[utoipa::path(
    get, path = "/v1/admin/bridges/{bridge}/jobs", tag = "admin", security(("api_key" = [])),
    params(("bridge" = String, Path, description = "The bridge's name, e.g. discord"), JobQuery),
    responses(
        (status = 200, description = "The bridge's jobs, oldest first", body = Jobs),
        (status = 400, description = "A bad status or limit", body = ErrorBody),
        (status = 401, description = "No or a wrong API key", body = ErrorBody),
        (status = 404, description = "No such bridge", body = ErrorBody),
    )
)]
pub(crate) async fn bridge_jobs(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(bridge): Path<String>,
    params: Result<Query<JobQuery>, QueryRejection>,
) -> ApiResult<Response> {
    require_api_key(&app, &headers)?;
    let (status, limit) = query(params)?.read()?;
    let jobs = app.engine.bridge_jobs(&bridge, status, limit).await?;
    Ok(Json(Jobs { jobs }).into_response())
}

/// `POST /v1/admin/bridges/{bridge}/jobs/{id}/retry`: runs a failed job
/// again, at once. 404 when the bridge has no failed job with that id.
#[utoipa::path(
    post, path = "/v1/admin/bridges/{bridge}/jobs/{id}/retry", tag = "admin", security(("api_key" = [])),
    params(
        ("bridge" = String, Path, description = "The bridge's name"),
        ("id" = i64, Path, description = "The job"),
    ),
    responses(
        (status = 200, description = "The job runs again at once", body = Retried),
        (status = 400, description = "A job id that is not a number", body = ErrorBody),
        (status = 401, description = "No or a wrong API key", body = ErrorBody),
        (status = 404, description = "No failed job with that id", body = ErrorBody),
    )
)]
pub(crate) async fn retry_bridge_job(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path((bridge, id)): Path<(String, String)>,
) -> ApiResult<Response> {
    require_api_key(&app, &headers)?;
    let id: i64 = id.parse().map_err(|_| ApiError::new(ErrorCode::Invalid, "the job id must be a number"))?;
    if !app.engine.retry_bridge_job(&bridge, id).await? {
        return Err(ApiError::new(ErrorCode::NotFound, "no failed job with that id"));
    }
    Ok(Json(Retried { retried: true, id }).into_response())
}

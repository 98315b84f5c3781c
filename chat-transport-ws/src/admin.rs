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
use serde::{Deserialize, Deserializer};
use serde_json::{Value, json};

use crate::AppState;
use crate::error::ApiError;
use crate::http::{body, issuer, optional_body, require_api_key};

type ApiResult<T> = Result<T, ApiError>;

/// An account as the admin API shows it: the User, with `active`,
/// `created_at` and `last_seen` (when known) beside its fields.
fn account_json(account: &UserAccount) -> Value {
    let mut value = json!(account.user);
    if let Value::Object(fields) = &mut value {
        fields.insert("active".into(), json!(account.active));
        fields.insert("created_at".into(), json!(account.created_at));
        if let Some(seen) = account.last_seen {
            fields.insert("last_seen".into(), json!(seen));
        }
    }
    value
}

/// The user id of a route's path: 400 for one that cannot be an id.
fn user_id(id: String) -> ApiResult<UserId> {
    Ok(UserId::new(id)?)
}

fn query<T>(params: Result<Query<T>, QueryRejection>) -> ApiResult<T> {
    params.map(|Query(p)| p).map_err(|e| ApiError::new(ErrorCode::Invalid, e.body_text()))
}

/// 204, for the routes that answer nothing.
fn done() -> Response {
    StatusCode::NO_CONTENT.into_response()
}

#[derive(Deserialize)]
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
pub(crate) async fn upsert_user(
    State(app): State<AppState>,
    headers: HeaderMap,
    payload: Result<Json<AdminUser>, JsonRejection>,
) -> ApiResult<Response> {
    require_api_key(&app, &headers)?;
    let req = body(payload)?;
    let user = User { avatar_url: req.avatar_url, roles: req.roles, ..User::new(req.id, req.name) };
    let user = app.engine.put_user(user).await?;
    Ok(Json(json!({ "user": user })).into_response())
}

#[derive(Deserialize)]
pub(crate) struct ListParams {
    cursor: Option<String>,
    limit: Option<u32>,
    q: Option<String>,
}

/// `GET /v1/admin/users?cursor=&limit=&q=`: the users who are not deleted,
/// by id, a page at a time.
pub(crate) async fn list_users(
    State(app): State<AppState>,
    headers: HeaderMap,
    params: Result<Query<ListParams>, QueryRejection>,
) -> ApiResult<Response> {
    require_api_key(&app, &headers)?;
    let params = query(params)?;
    let page = app.engine.accounts(params.cursor.as_deref(), params.q.as_deref(), params.limit).await?;
    let users: Vec<Value> = page.accounts.iter().map(account_json).collect();
    let mut answer = json!({ "users": users });
    if let Some(next) = page.next {
        answer["next"] = json!(next);
    }
    Ok(Json(answer).into_response())
}

/// `GET /v1/admin/users/{id}`: one user's account; 404 for an unknown or
/// deleted user.
pub(crate) async fn get_user(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    require_api_key(&app, &headers)?;
    let account = app.engine.account(&user_id(id)?).await?;
    Ok(Json(json!({ "user": account_json(&account) })).into_response())
}

/// Reads a field that may be absent (keep), `null` (remove) or a value.
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct PatchUser {
    name: Option<String>,
    #[serde(default, deserialize_with = "present")]
    avatar_url: Option<Option<String>>,
    roles: Option<Vec<String>>,
}

/// `PATCH /v1/admin/users/{id}` `{"name"?,"avatar_url"?,"roles"?}`: changes
/// those fields (`"avatar_url":null` removes the avatar); 200 with the
/// account, 404 for an unknown or deleted user, 400 for a bad value.
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
    Ok(Json(json!({ "user": account_json(&account) })).into_response())
}

/// `POST /v1/admin/users/{id}/deactivate`: 204; the user's sessions end
/// (4401) on every process and none of their tokens is accepted.
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
pub(crate) async fn delete_user(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    require_api_key(&app, &headers)?;
    app.engine.delete_user(&user_id(id)?).await?;
    Ok(done())
}

#[derive(Deserialize, Default)]
pub(crate) struct TokenRequest {
    ttl_s: Option<u64>,
}

/// `POST /v1/admin/users/{id}/tokens` `{"ttl_s"?}`: a token for the user.
/// 404 for an unknown or deleted user, 409 for a deactivated one.
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
    Ok(Json(json!({ "token": token, "expires_at": expires_at })).into_response())
}

#[derive(Deserialize)]
pub(crate) struct JobsParams {
    status: Option<String>,
    limit: Option<u32>,
}

/// Most jobs one listing returns.
const MAX_JOBS_PAGE: u32 = 1000;

/// `GET /v1/admin/bridges/{bridge}/jobs?status=failed|pending&limit=N`: a
/// bridge's outbox jobs, oldest first (failed ones unless asked otherwise).
pub(crate) async fn bridge_jobs(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(bridge): Path<String>,
    params: Result<Query<JobsParams>, QueryRejection>,
) -> ApiResult<Response> {
    require_api_key(&app, &headers)?;
    let params = query(params)?;
    let status = match params.status.as_deref() {
        None => JobStatus::Failed,
        Some(s) => {
            JobStatus::parse(s).ok_or_else(|| ApiError::new(ErrorCode::Invalid, "status must be failed or pending"))?
        }
    };
    let limit = match params.limit {
        Some(0) => return Err(ApiError::new(ErrorCode::Invalid, "limit must be at least 1")),
        Some(n) => n.min(MAX_JOBS_PAGE),
        None => 100,
    };
    let jobs = app.engine.bridge_jobs(&bridge, status, limit).await?;
    Ok(Json(json!({ "jobs": jobs })).into_response())
}

/// `POST /v1/admin/bridges/{bridge}/jobs/{id}/retry`: runs a failed job
/// again, at once. 404 when the bridge has no failed job with that id.
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
    Ok(Json(json!({ "retried": true, "id": id })).into_response())
}

//! The admin API of webhooks (PROTOCOL.md section 9), for
//! [`chat_transport_ws::router_with`]. Every route needs the API key
//! (`x-api-key`); no answer ever carries a secret.
//!
//! | route | answer |
//! |---|---|
//! | `POST /v1/admin/webhooks` `{"url","secret","events"?}` | 201 `{"id","url","events","created_at"}`; 400 for a bad URL, secret or event; 409 past the most endpoints |
//! | `GET /v1/admin/webhooks` | `{"webhooks":[{"id","url","events","created_at","source"}…]}` |
//! | `DELETE /v1/admin/webhooks/{id}` | 204, its deliveries dropped; 404 unknown; 409 for the configured endpoint |
//! | `GET /v1/admin/webhooks/{id}/deliveries?status=failed\|pending&limit=` | `{"deliveries":[…]}`, oldest first; failed unless asked; 404 unknown endpoint |
//! | `POST /v1/admin/webhooks/{id}/deliveries/{delivery_id}/retry` | 204; 404 unknown endpoint or no failed delivery with that id |

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use chat_core::{ErrorCode, Timestamp};
use chat_transport_ws::{ApiError, AppState, ErrorBody, JobQuery, json_body, query_params, require_api_key};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::bridge::{Delivery, WebhookBridge};
use crate::endpoint::{Endpoint, EventType, NewEndpoint};
use crate::error::Error;

type ApiResult<T> = Result<T, ApiError>;

impl From<Error> for ApiError {
    fn from(err: Error) -> Self {
        ApiError::from(chat_core::Error::from(err))
    }
}

/// The routes, served with `bridge` (the one given to the engine), each
/// with its description for `/v1/openapi.json`.
pub fn routes(bridge: WebhookBridge) -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(add, list))
        .routes(routes!(remove))
        .routes(routes!(deliveries))
        .routes(routes!(retry))
        .layer(Extension(bridge))
}

/// An endpoint as added: never its secret.
#[derive(Debug, Serialize, ToSchema)]
struct Added {
    id: String,
    url: String,
    events: Vec<EventType>,
    created_at: Timestamp,
}

/// `{"webhooks"}`
#[derive(Debug, Serialize, ToSchema)]
struct Endpoints {
    webhooks: Vec<Endpoint>,
}

/// `{"deliveries"}`
#[derive(Debug, Serialize, ToSchema)]
struct Deliveries {
    deliveries: Vec<Delivery>,
}

/// Adds an endpoint: events are POSTed to it, signed with its secret.
#[utoipa::path(
    post, path = "/v1/admin/webhooks", tag = "admin", security(("api_key" = [])), request_body = NewEndpoint,
    responses(
        (status = 201, description = "The endpoint, without its secret", body = Added),
        (status = 400, description = "A bad URL, secret or event", body = ErrorBody),
        (status = 401, description = "No or a wrong API key", body = ErrorBody),
        (status = 409, description = "The most endpoints there may be", body = ErrorBody),
    )
)]
async fn add(
    State(app): State<AppState>,
    Extension(bridge): Extension<WebhookBridge>,
    headers: HeaderMap,
    payload: Result<Json<NewEndpoint>, JsonRejection>,
) -> ApiResult<Response> {
    require_api_key(&app, &headers)?;
    let endpoint = bridge.add_endpoint(json_body(payload)?).await?;
    let body = Added { id: endpoint.id, url: endpoint.url, events: endpoint.events, created_at: endpoint.created_at };
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// Every endpoint, the configured one included; no secret.
#[utoipa::path(
    get, path = "/v1/admin/webhooks", tag = "admin", security(("api_key" = [])),
    responses(
        (status = 200, description = "The endpoints", body = Endpoints),
        (status = 401, description = "No or a wrong API key", body = ErrorBody),
    )
)]
async fn list(
    State(app): State<AppState>,
    Extension(bridge): Extension<WebhookBridge>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    require_api_key(&app, &headers)?;
    Ok(Json(Endpoints { webhooks: bridge.endpoints().await? }).into_response())
}

/// Removes an endpoint added through this API, and its deliveries.
#[utoipa::path(
    delete, path = "/v1/admin/webhooks/{id}", tag = "admin", security(("api_key" = [])),
    params(("id" = String, Path, description = "The endpoint")),
    responses(
        (status = 204, description = "Removed, its deliveries dropped"),
        (status = 401, description = "No or a wrong API key", body = ErrorBody),
        (status = 404, description = "No such endpoint", body = ErrorBody),
        (status = 409, description = "The configured endpoint (CHAT_WEBHOOK_URL) is not removed here", body = ErrorBody),
    )
)]
async fn remove(
    State(app): State<AppState>,
    Extension(bridge): Extension<WebhookBridge>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    require_api_key(&app, &headers)?;
    if !bridge.remove_endpoint(&id).await? {
        return Err(ApiError::new(ErrorCode::NotFound, "no webhook endpoint with that id"));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// An endpoint's deliveries, oldest first: failed ones unless asked.
#[utoipa::path(
    get, path = "/v1/admin/webhooks/{id}/deliveries", tag = "admin", security(("api_key" = [])),
    params(("id" = String, Path, description = "The endpoint"), JobQuery),
    responses(
        (status = 200, description = "The deliveries", body = Deliveries),
        (status = 400, description = "A bad status or limit", body = ErrorBody),
        (status = 401, description = "No or a wrong API key", body = ErrorBody),
        (status = 404, description = "No such endpoint", body = ErrorBody),
    )
)]
async fn deliveries(
    State(app): State<AppState>,
    Extension(bridge): Extension<WebhookBridge>,
    headers: HeaderMap,
    Path(id): Path<String>,
    params: Result<Query<JobQuery>, QueryRejection>,
) -> ApiResult<Response> {
    require_api_key(&app, &headers)?;
    let params = query_params(params)?;
    let (status, limit) = params.read()?;
    let Some(deliveries) = bridge.deliveries(&id, status, limit).await? else {
        return Err(ApiError::new(ErrorCode::NotFound, "no webhook endpoint with that id"));
    };
    Ok(Json(Deliveries { deliveries }).into_response())
}

/// Delivers a failed delivery again, at once.
#[utoipa::path(
    post, path = "/v1/admin/webhooks/{id}/deliveries/{delivery}/retry", tag = "admin", security(("api_key" = [])),
    params(
        ("id" = String, Path, description = "The endpoint"),
        ("delivery" = i64, Path, description = "The delivery"),
    ),
    responses(
        (status = 204, description = "Due again at once"),
        (status = 400, description = "A delivery id that is not a number", body = ErrorBody),
        (status = 401, description = "No or a wrong API key", body = ErrorBody),
        (status = 404, description = "No such endpoint, or no failed delivery with that id", body = ErrorBody),
    )
)]
async fn retry(
    State(app): State<AppState>,
    Extension(bridge): Extension<WebhookBridge>,
    headers: HeaderMap,
    Path((id, delivery)): Path<(String, String)>,
) -> ApiResult<Response> {
    require_api_key(&app, &headers)?;
    let delivery: i64 =
        delivery.parse().map_err(|_| ApiError::new(ErrorCode::Invalid, "the delivery id must be a number"))?;
    match bridge.retry_delivery(&id, delivery).await? {
        None => Err(ApiError::new(ErrorCode::NotFound, "no webhook endpoint with that id")),
        Some(false) => Err(ApiError::new(ErrorCode::NotFound, "no failed delivery with that id")),
        Some(true) => Ok(StatusCode::NO_CONTENT.into_response()),
    }
}

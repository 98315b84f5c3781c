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
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use chat_core::ErrorCode;
use chat_transport_ws::{ApiError, AppState, JobQuery, json_body, require_api_key};
use serde_json::json;

use crate::bridge::WebhookBridge;
use crate::endpoint::NewEndpoint;
use crate::error::Error;

type ApiResult<T> = Result<T, ApiError>;

impl From<Error> for ApiError {
    fn from(err: Error) -> Self {
        ApiError::from(chat_core::Error::from(err))
    }
}

/// The routes, served with `bridge` (the one given to the engine).
pub fn routes(bridge: WebhookBridge) -> Router<AppState> {
    Router::new()
        .route("/v1/admin/webhooks", post(add).get(list))
        .route("/v1/admin/webhooks/{id}", axum::routing::delete(remove))
        .route("/v1/admin/webhooks/{id}/deliveries", get(deliveries))
        .route("/v1/admin/webhooks/{id}/deliveries/{delivery}/retry", post(retry))
        .layer(Extension(bridge))
}

async fn add(
    State(app): State<AppState>,
    Extension(bridge): Extension<WebhookBridge>,
    headers: HeaderMap,
    payload: Result<Json<NewEndpoint>, JsonRejection>,
) -> ApiResult<Response> {
    require_api_key(&app, &headers)?;
    let endpoint = bridge.add_endpoint(json_body(payload)?).await?;
    let body = json!({
        "id": endpoint.id,
        "url": endpoint.url,
        "events": endpoint.events,
        "created_at": endpoint.created_at,
    });
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

async fn list(
    State(app): State<AppState>,
    Extension(bridge): Extension<WebhookBridge>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    require_api_key(&app, &headers)?;
    Ok(Json(json!({ "webhooks": bridge.endpoints().await? })).into_response())
}

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

async fn deliveries(
    State(app): State<AppState>,
    Extension(bridge): Extension<WebhookBridge>,
    headers: HeaderMap,
    Path(id): Path<String>,
    params: Result<Query<JobQuery>, QueryRejection>,
) -> ApiResult<Response> {
    require_api_key(&app, &headers)?;
    let Query(params) = params.map_err(|e| ApiError::new(ErrorCode::Invalid, e.body_text()))?;
    let (status, limit) = params.read()?;
    let Some(deliveries) = bridge.deliveries(&id, status, limit).await? else {
        return Err(ApiError::new(ErrorCode::NotFound, "no webhook endpoint with that id"));
    };
    Ok(Json(json!({ "deliveries": deliveries })).into_response())
}

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

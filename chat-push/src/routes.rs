//! The HTTP side of push (section 8), for [`chat_transport_ws::router_with`].
//!
//! | route | answer |
//! |---|---|
//! | `GET /v1/push/vapid-public-key` (public) | `{"key"}`, base64url |
//! | `POST /v1/push/subscriptions` `{"endpoint","keys":{"p256dh","auth"}}` | 201; 400 for a bad endpoint or keys; 403 for visitors |
//! | `DELETE /v1/push/subscriptions` `{"endpoint"}` | 204, also for an unknown endpoint |

use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use chat_core::ErrorCode;
use chat_transport_ws::{ApiError, AppState, ErrorBody, authenticate_user, json_body};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::bridge::PushBridge;
use crate::endpoint::NewSubscription;

type ApiResult<T> = Result<T, ApiError>;

/// The routes, served with `bridge` (the one given to the engine).
pub fn routes(bridge: PushBridge) -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(vapid_public_key))
        .routes(routes!(subscribe, unsubscribe))
        .layer(Extension(bridge))
}

/// `{"key"}`
#[derive(Debug, Serialize, ToSchema)]
struct VapidPublicKey {
    /// The server's VAPID public key, base64url (the `applicationServerKey`).
    key: String,
}

/// `{"endpoint"}`
#[derive(Debug, Deserialize, ToSchema)]
struct Unsubscribe {
    /// The endpoint of the subscription to remove.
    endpoint: String,
}

/// The key browsers subscribe with.
#[utoipa::path(
    get, path = "/v1/push/vapid-public-key", tag = "push",
    responses(
        (status = 200, description = "The VAPID public key", body = VapidPublicKey),
        (status = 503, description = "Push has not started", body = ErrorBody),
    )
)]
async fn vapid_public_key(Extension(bridge): Extension<PushBridge>) -> ApiResult<Response> {
    let key = bridge.public_key().ok_or_else(|| ApiError::new(ErrorCode::Unavailable, "push has not started"))?;
    Ok(Json(VapidPublicKey { key: key.to_owned() }).into_response())
}

/// Stores a browser's push subscription for the caller (at most 10 each:
/// an 11th replaces the oldest). The body is `PushSubscription.toJSON()`.
#[utoipa::path(
    post, path = "/v1/push/subscriptions", tag = "push", security(("bearer" = [])), request_body = NewSubscription,
    responses(
        (status = 201, description = "Stored"),
        (status = 400, description = "A bad endpoint or keys", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "Visitors may not subscribe", body = ErrorBody),
    )
)]
async fn subscribe(
    State(app): State<AppState>,
    Extension(bridge): Extension<PushBridge>,
    headers: HeaderMap,
    payload: Result<Json<NewSubscription>, JsonRejection>,
) -> ApiResult<Response> {
    let user = authenticate_user(&app, &headers).await?;
    if user.is_visitor() {
        // Anyone can become a visitor: their subscriptions would let anyone
        // have the server POST to URLs of their choosing.
        return Err(ApiError::new(ErrorCode::Forbidden, "visitors may not subscribe to push notifications"));
    }
    bridge.subscribe(&user.id, json_body(payload)?).await?;
    Ok(StatusCode::CREATED.into_response())
}

/// Removes the caller's subscription of an endpoint; an unknown one is no error.
#[utoipa::path(
    delete, path = "/v1/push/subscriptions", tag = "push", security(("bearer" = [])), request_body = Unsubscribe,
    responses(
        (status = 204, description = "Removed, or there was none"),
        (status = 401, description = "No valid token", body = ErrorBody),
    )
)]
async fn unsubscribe(
    State(app): State<AppState>,
    Extension(bridge): Extension<PushBridge>,
    headers: HeaderMap,
    payload: Result<Json<Unsubscribe>, JsonRejection>,
) -> ApiResult<Response> {
    let user = authenticate_user(&app, &headers).await?;
    bridge.unsubscribe(&user.id, &json_body(payload)?.endpoint).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

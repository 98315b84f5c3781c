//! The OpenAPI 3.1 description of the HTTP API, `GET /v1/openapi.json`.
//!
//! Nothing of it is written by hand: every route is registered through
//! utoipa-axum's [`OpenApiRouter`](utoipa_axum::router::OpenApiRouter) with
//! the `#[utoipa::path]` attribute on its handler, so a route and its
//! description are one declaration; request and answer bodies are the Rust
//! types the handlers serialize (deriving `ToSchema`, the domain's in
//! `chat-core` under its `openapi` feature). What this module adds is the
//! document's frame: title, version, the two ways to authenticate, and the
//! answer bodies that only the HTTP API has.

use std::collections::BTreeMap;

use axum::Extension;
use axum::body::Bytes;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use chat_core::bridge::BridgeHealth;
use chat_core::{Job, OnlineUser, Room, SupportAvailability, Timestamp, User};
use serde::Serialize;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

/// The frame of the document; the paths come from the router.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "chat-server HTTP API",
        description = "The HTTP routes of the chat server. The WebSocket protocol is described in docs/protocol.md; \
                       errors are `{\"error\":{\"code\",\"message\"}}` with the status that fits the code.",
        license(name = "MIT OR Apache-2.0", identifier = "MIT OR Apache-2.0"),
    ),
    modifiers(&Security),
    tags(
        (name = "service", description = "Health, metrics and this document"),
        (name = "connect", description = "The WebSocket and Socket.IO endpoints"),
        (name = "chat", description = "Reading what a signed-in user may read"),
        (name = "attachments", description = "Uploading files and reading them, by token or signed URL"),
        (name = "visitors", description = "Anonymous website visitors and their support availability"),
        (name = "admin", description = "Operators, with the API key (`x-api-key`)"),
        (name = "development", description = "Only while the server's dev_login is on"),
    )
)]
pub(crate) struct ApiDoc;

/// The document, serialized once when the router is built.
#[derive(Debug, Clone)]
pub(crate) struct Document(Bytes);

impl Document {
    pub(crate) fn new(api: utoipa::openapi::OpenApi) -> Self {
        // Serializing plain data into memory does not fail; an empty
        // document would show that it did.
        Document(Bytes::from(api.to_pretty_json().unwrap_or_default()))
    }
}

/// This document: the OpenAPI 3.1 description of every HTTP route.
#[utoipa::path(
    get, path = "/v1/openapi.json", tag = "service",
    responses((status = 200, description = "The OpenAPI document", content_type = "application/json", body = Object))
)]
pub(crate) async fn serve(Extension(document): Extension<Document>) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], document.0).into_response()
}

/// The bearer token (a JWT) of users, and the operators' API key.
struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).bearer_format("JWT").build()),
        );
        components
            .add_security_scheme("api_key", SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("x-api-key"))));
    }
}

/// Every error: `{"error":{"code","message"}}`, for the descriptions of
/// routes (other crates' too).
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub(crate) error: ErrorDetail,
}

/// An error's code and text.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// `invalid`, `unauthorized`, `forbidden`, `not_found`, `not_member`,
    /// `too_large`, `rate_limited`, `conflict`, `unknown_command`,
    /// `unavailable` or `internal`.
    #[schema(examples("not_found"))]
    pub(crate) code: &'static str,
    /// For humans; never carries backend details.
    pub(crate) message: String,
}

/// `GET /health`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Health {
    /// `ok`, or `degraded` when the store, a bridge or the broker is down.
    #[schema(examples("ok"))]
    pub(crate) status: &'static str,
    pub(crate) version: String,
    pub(crate) uptime_s: u64,
    /// Open sessions on this process.
    pub(crate) connections: usize,
    /// Open sessions by transport (`ws`, `socketio`).
    pub(crate) transports: BTreeMap<&'static str, usize>,
    /// `ok` or `unavailable` (then the answer is 503).
    pub(crate) store: &'static str,
    /// Each bridge's state, by name.
    pub(crate) bridges: BTreeMap<String, BridgeHealth>,
    pub(crate) support: SupportAvailability,
    /// With a broker only: `ok` or `unavailable`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) broker: Option<&'static str>,
    /// With a broker only: the server processes this one hears from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) peers: Option<usize>,
}

/// `{"users"}` of `GET /v1/users/online`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct OnlineUsers {
    pub(crate) users: Vec<OnlineUser>,
}

/// `{"ice_servers"}` of `GET /v1/calls/ice-servers`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct IceServers {
    /// RTCIceServer objects (`urls`, and `username`/`credential` for TURN).
    #[schema(value_type = Vec<Object>)]
    pub(crate) ice_servers: Vec<serde_json::Value>,
}

/// A room of the support queue.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct QueuedRoomBody {
    pub(crate) room: Room,
    /// When its first message was stored.
    pub(crate) waiting_since: Timestamp,
}

/// A page of the support queue.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct QueuePage {
    pub(crate) rooms: Vec<QueuedRoomBody>,
    /// The `cursor` of the next page, when there may be one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) next: Option<String>,
}

/// A token for a user, with the user.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Session {
    /// A JWT for `Authorization: Bearer`, `?token=` or the `auth` frame.
    pub(crate) token: String,
    pub(crate) user: User,
    pub(crate) expires_at: Timestamp,
}

/// `GET /v1/dev-login`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct DevLoginEnabled {
    pub(crate) enabled: bool,
}

/// A token made by the admin API.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Token {
    pub(crate) token: String,
    pub(crate) expires_at: Timestamp,
}

/// A bridge's outbox jobs.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Jobs {
    pub(crate) jobs: Vec<Job>,
}

/// The answer to a job's retry.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Retried {
    pub(crate) retried: bool,
    pub(crate) id: i64,
}

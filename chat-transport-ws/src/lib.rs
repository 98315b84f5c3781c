//! The native JSON-over-WebSocket transport and the HTTP API of the chat
//! toolkit, built on axum.
//!
//! [`router`] gives an axum [`Router`] with `GET /v1/ws`, the HTTP routes of
//! the wire contract, and the browser side embedded from `web/`: the chat page
//! at `/`, the support widget at `/widget.js` and the client library at
//! `/chat-client.js` (see [`web`]). Each WebSocket drives one [`chat_core::Session`]; this
//! crate adds only what is WebSocket- or HTTP-specific: the three ways to
//! present a token, origin checks, close codes, frame limits, keep-alive pings,
//! and the JSON envelope (in [`wire`]). [`serve`] is the accept loop to serve
//! the router with: it caps connections per client address and in all, and
//! times out slow headers, idle keep-alives and slow bodies.
//!
//! # Example
//!
//! ```no_run
//! use std::sync::Arc;
//! use chat_core::{Engine, MemoryStore};
//! use chat_transport_ws::{AppState, JwtAuthenticator, JwtConfig, SignKey, TokenIssuer, WsConfig, router};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let secret = b"a secret of at least thirty-two bytes!".to_vec();
//! let engine = Engine::builder(Arc::new(MemoryStore::new())).start().await?;
//! let state = AppState::new(
//!     engine,
//!     Arc::new(JwtAuthenticator::new(&JwtConfig::hs256(secret.clone()))?),
//!     Some(Arc::new(TokenIssuer::new(&SignKey::Hs256(secret), None, None)?)),
//!     WsConfig::default(),
//! );
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! let config = WsConfig::default();
//! chat_transport_ws::serve(listener, router(state), &config, std::future::pending()).await?;
//! # Ok(())
//! # }
//! ```

mod admin;
mod attachments;
pub mod auth;
pub mod calls;
mod config;
pub mod error;
mod http;
mod openapi;
mod serve;
pub mod web;
pub mod wire;
pub mod ws;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{HeaderMap, HeaderValue, Method, header};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::get;
use chat_core::{Authenticator, Engine};
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::timeout::RequestBodyDeadlineLayer;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use admin::{JobQuery, MAX_JOBS_PAGE};
pub use auth::{Claims, JwtAuthenticator, JwtConfig, SignKey, TokenIssuer, VerifyKey, generate_secret};
pub use calls::IceConfig;
pub use config::{OriginPolicy, WsConfig};
pub use error::{ApiError, Error, Result};
pub use openapi::{ErrorBody, ErrorDetail};
pub use serve::serve;
/// The OpenAPI crates the router is built with, for transports that add
/// routes ([`router_with`]) to describe them with the same versions.
pub use {utoipa, utoipa_axum};

/// What every handler shares. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    engine: Engine,
    auth: Arc<dyn Authenticator>,
    issuer: Option<Arc<TokenIssuer>>,
    config: Arc<WsConfig>,
    visitors: Arc<http::IpLimiter>,
    /// Bytes visitors uploaded per client address this hour.
    visitor_uploads: Arc<http::IpLimiter>,
    page_headers: Arc<web::PageHeaders>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState").field("config", &self.config).finish_non_exhaustive()
    }
}

impl AppState {
    /// Everything the routes need. Without an `issuer`, the routes that make
    /// tokens (visitor sessions, admin tokens) answer 503.
    pub fn new(
        engine: Engine,
        auth: Arc<dyn Authenticator>,
        issuer: Option<Arc<TokenIssuer>>,
        config: WsConfig,
    ) -> Self {
        let visitors = Arc::new(http::IpLimiter::new(config.visitor_sessions_per_ip.into(), config.visitor_window));
        let visitor_uploads =
            Arc::new(http::IpLimiter::new(config.visitor_upload_bytes_per_ip, Duration::from_secs(3600)));
        let page_headers = Arc::new(web::PageHeaders::new(&config.origins));
        AppState { engine, auth, issuer, config: Arc::new(config), visitors, visitor_uploads, page_headers }
    }

    /// The engine behind the routes.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The authenticator every transport on this listener checks tokens with.
    pub fn authenticator(&self) -> &Arc<dyn Authenticator> {
        &self.auth
    }

    /// The listener's settings: origins and limits, which other transports
    /// mounted beside this one apply too.
    pub fn config(&self) -> &WsConfig {
        &self.config
    }

    /// Whether a request's `Origin` (if it sent one) is allowed by
    /// [`WsConfig::origins`]. Requests without one (not from a browser) are.
    pub fn origin_allowed(&self, headers: &HeaderMap) -> bool {
        let Some(origin) = headers.get(header::ORIGIN) else { return true };
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
        origin.to_str().is_ok_and(|o| self.config.origins.allows(o, host))
    }
}

/// For admin routes of other crates (mounted with [`router_with`]): checks
/// the request's `x-api-key` against [`WsConfig::api_key`] as the built-in
/// admin routes do; 401 when it is missing or wrong, or no key is configured.
pub fn require_api_key(app: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    http::require_api_key(app, headers)
}

/// For routes of other crates: a JSON body, or the error the built-in
/// routes answer a bad one with (400, 413 past the body limit, 408 when it
/// came too slowly).
pub fn json_body<T>(payload: Result<axum::Json<T>, axum::extract::rejection::JsonRejection>) -> Result<T, ApiError> {
    http::body(payload)
}

/// For routes of other crates: a query string, or the 400 the built-in
/// routes answer a bad one with.
pub fn query_params<T>(
    params: Result<axum::extract::Query<T>, axum::extract::rejection::QueryRejection>,
) -> Result<T, ApiError> {
    http::query(params)
}

/// For routes of other crates: the user a request's bearer token names, as
/// the built-in routes find them (401 without a valid token, 403 for a
/// deactivated or deleted account).
pub async fn authenticate_user(app: &AppState, headers: &HeaderMap) -> Result<chat_core::User, ApiError> {
    Ok(http::authenticate_user(app, headers).await?.1)
}

/// The token of an `Authorization: Bearer <token>` header, if there is one.
pub fn bearer_token(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim().to_owned())
}

/// Logs each request's method, path (never the query, which may carry a
/// token), status and duration.
async fn log_request(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let started = Instant::now();
    let response = next.run(request).await;
    tracing::debug!(%method, %path, status = response.status().as_u16(), elapsed_ms = started.elapsed().as_millis() as u64, "http");
    response
}

fn cors(policy: &OriginPolicy) -> CorsLayer {
    let layer = CorsLayer::new()
        .allow_methods([Method::GET, Method::POST])
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
        .max_age(std::time::Duration::from_secs(3600));
    match policy.clone() {
        OriginPolicy::Any => layer.allow_origin(AllowOrigin::any()),
        policy => layer.allow_origin(AllowOrigin::predicate(move |origin: &HeaderValue, parts| {
            let host = parts.headers.get(header::HOST).and_then(|h| h.to_str().ok());
            origin.to_str().is_ok_and(|o| policy.allows(o, host))
        })),
    }
}

/// The WebSocket endpoint and the HTTP API, ready to serve. Serve it with
/// [`serve`] (or, without its connection limits and timers, with
/// `into_make_service_with_connect_info::<SocketAddr>()`) so that
/// per-address limits see client addresses. A request body must arrive
/// within [`WsConfig::body_timeout`]; a slower one is answered 408.
pub fn router(state: AppState) -> Router {
    router_with(state, OpenApiRouter::new())
}

/// [`router`] with more routes beside the built-in ones, such as another
/// transport's (`chat-transport-socketio` mounts `/socket.io/` this way).
/// They share the listener's CORS, request logging, body limits and deadline,
/// and their descriptions join the built-in ones in `/v1/openapi.json`.
pub fn router_with(state: AppState, extra: OpenApiRouter<AppState>) -> Router {
    let limit = state.config.max_http_body_bytes;
    let body_deadline = RequestBodyDeadlineLayer::new(state.config.body_timeout);
    let cors = cors(&state.config.origins);
    let (api_routes, mut api) = api_router(state.config.dev_login).merge(extra).split_for_parts();
    // Uploads have bodies as large as the attachment limit, which the
    // upload enforces while it streams, and the time a slow link needs.
    let (upload_routes, upload_api) =
        OpenApiRouter::<AppState>::new().routes(utoipa_axum::routes!(attachments::upload)).split_for_parts();
    api.merge(upload_api);
    let uploads = upload_routes
        .layer(DefaultBodyLimit::disable())
        .layer(RequestBodyDeadlineLayer::new(state.config.upload_timeout));
    let document = openapi::Document::new(api);
    let mut router = Router::new();
    for asset in web::ASSETS {
        router = router.route(asset.path, get(web::serve));
    }
    router
        .route("/index.html", get(web::serve))
        .merge(api_routes)
        .fallback(http::not_found)
        .layer(axum::Extension(document))
        .layer(DefaultBodyLimit::max(limit))
        .layer(body_deadline)
        .merge(uploads)
        .layer(cors)
        .layer(middleware::from_fn(log_request))
        .with_state(state)
}

/// Every route of the HTTP API, each registered with its description: a
/// route cannot be added here without one.
fn api_router(dev_login: bool) -> OpenApiRouter<AppState> {
    use utoipa::OpenApi as _;
    let mut api = OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(openapi::serve))
        .routes(routes!(ws::upgrade))
        .routes(routes!(http::health))
        .routes(routes!(http::metrics))
        .routes(routes!(http::support_availability))
        .routes(routes!(http::support_queue))
        .routes(routes!(http::users_online))
        .routes(routes!(http::ice_servers))
        .routes(routes!(http::room_messages))
        .routes(routes!(http::search_messages))
        .routes(routes!(attachments::download))
        .routes(routes!(attachments::thumbnail))
        .routes(routes!(http::visitor_session))
        .routes(routes!(admin::list_users, admin::upsert_user))
        .routes(routes!(admin::get_user, admin::patch_user, admin::delete_user))
        .routes(routes!(admin::deactivate_user))
        .routes(routes!(admin::reactivate_user))
        .routes(routes!(admin::revoke_tokens))
        .routes(routes!(admin::make_token))
        .routes(routes!(admin::bridge_jobs))
        .routes(routes!(admin::retry_bridge_job));
    if dev_login {
        api = api.routes(routes!(http::dev_login_enabled, http::dev_login));
    }
    api
}

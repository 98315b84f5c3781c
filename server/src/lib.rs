//! The reference chat server: the engine, the WebSocket transport and the SQL
//! store, wired together from a [`Config`], with the Discord bridge when
//! `DISCORD_TOKEN` is set (feature `discord`, on by default) and signed
//! webhooks (feature `webhooks`, on by default: the endpoint of
//! `CHAT_WEBHOOK_URL` and those added through `/v1/admin/webhooks`).
//!
//! [`run`] serves on a listener until a shutdown future resolves; `main` only
//! parses the command line, sets up logging, binds and calls it. Tests call
//! [`run`] on `127.0.0.1:0`.
//!
//! # Example
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> anyhow::Result<()> {
//! let mut config = chat_server::Config::default();
//! config.database_url = "sqlite::memory:".into();
//! config.jwt_secret = Some("a secret of at least thirty-two bytes".into());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let addr = listener.local_addr()?;
//! let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
//! let server = tokio::spawn(chat_server::run(listener, config, async move {
//!     let _ = stopped.await;
//! }));
//! // … clients connect to ws://{addr}/v1/ws …
//! # let _ = addr;
//! stop.send(()).ok();
//! server.await??;
//! # Ok(())
//! # }
//! ```

mod config;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use chat_core::{Authenticator, Engine, Store};
use chat_transport_ws::{AppState, JwtAuthenticator, JwtConfig, SignKey, TokenIssuer, VerifyKey};
use tokio::net::TcpListener;

pub use config::{Backend, Config, DiscordSettings, LogFormat};

/// Opens the store the configuration names, bringing its schema up to date.
pub async fn open_store(config: &Config) -> anyhow::Result<Arc<dyn Store>> {
    let context = || format!("opening the database {}", redact(&config.database_url));
    let store: Arc<dyn Store> = match config.backend()? {
        #[cfg(feature = "sqlite")]
        Backend::Sqlite => {
            Arc::new(chat_store_sql::SqliteStore::connect(sqlite_config(config)).await.with_context(context)?)
        }
        #[cfg(feature = "postgres")]
        Backend::Postgres => {
            Arc::new(chat_store_sql::PostgresStore::connect(postgres_config(config)).await.with_context(context)?)
        }
        #[allow(unreachable_patterns)] // `backend()` refuses what this build leaves out.
        other => bail!("{} is not built in", other.name()),
    };
    Ok(store)
}

/// Where attachments go, and their limits; `None` when they are off.
async fn attachments_from(config: &Config, store: &dyn Store) -> anyhow::Result<Option<chat_core::AttachmentConfig>> {
    let Some(url) = config.attachments_location() else {
        tracing::info!("attachments are off");
        return Ok(None);
    };
    let mut s3 = chat_attachments::S3Options::default();
    s3.endpoint = config.s3_endpoint.clone();
    s3.region = config.s3_region.clone();
    s3.access_key_id = config.s3_access_key_id.clone();
    s3.secret_access_key = config.s3_secret_access_key.clone();
    s3.allow_http = config.s3_allow_http;
    let blobs = chat_attachments::open_with(&url, &s3)
        .await
        .with_context(|| format!("opening the attachment storage {url}"))?;
    if config.broker().is_some()
        && let Some(dir) = url.strip_prefix("file://")
    {
        shared_directory(store, std::path::Path::new(dir)).await?;
    }
    tracing::info!(storage = %blobs.describe(), "attachments are on");
    let mut attachments = chat_core::AttachmentConfig::new(blobs);
    attachments.max_bytes = config.max_attachment_bytes;
    attachments.quota_bytes = config.attachment_quota_bytes;
    attachments.visitor_quota_bytes = config.visitor_attachment_quota_bytes;
    attachments.url_ttl = Duration::from_secs(config.attachment_url_ttl_s);
    attachments.orphan_after = Duration::from_secs(config.attachment_orphan_after_s);
    attachments.cleanup_interval = Duration::from_secs(config.attachment_cleanup_s);
    attachments.public_url = config.public_url.clone().unwrap_or_default();
    Ok(Some(attachments))
}

/// With several processes, attachments in a local directory work only if
/// every process sees the same one (a shared mount). The first process to
/// start leaves a marker file there and names it in the store; a process
/// that cannot find the named marker in its directory refuses to start,
/// rather than serve files the others cannot see. What this cannot tell: a
/// directory copied whole to another machine (marker and all).
async fn shared_directory(store: &dyn Store, dir: &std::path::Path) -> anyhow::Result<()> {
    let candidate = chat_core::AttachmentId::generate().to_string();
    let marker = |name: &str| dir.join(format!(".chat-server-{name}"));
    tokio::fs::write(marker(&candidate), b"attachments of one chat server\n")
        .await
        .with_context(|| format!("writing a marker in the attachment directory {}", dir.display()))?;
    let named =
        store.server_secret("attachments-dir-marker", &candidate).await.context("reading the directory marker")?;
    if named != candidate {
        let _ = tokio::fs::remove_file(marker(&candidate)).await;
        if !tokio::fs::try_exists(marker(&named)).await.unwrap_or(false) {
            anyhow::bail!(
                "the attachment directory {} is not the one the other processes of this server use (it lacks their \
                 marker .chat-server-{named}): with CHAT_BROKER_URL, every process needs the same storage — a shared \
                 mount, or CHAT_ATTACHMENTS_URL=s3://…",
                dir.display()
            );
        }
    }
    Ok(())
}

/// Creates or upgrades the schema of the configured database, without serving.
pub async fn migrate(config: &Config) -> anyhow::Result<()> {
    let context = || format!("migrating the database {}", redact(&config.database_url));
    match config.backend()? {
        #[cfg(feature = "sqlite")]
        Backend::Sqlite => chat_store_sql::SqliteStore::migrate(sqlite_config(config)).await.with_context(context),
        #[cfg(feature = "postgres")]
        Backend::Postgres => {
            chat_store_sql::PostgresStore::migrate(postgres_config(config)).await.with_context(context)
        }
        #[allow(unreachable_patterns)]
        other => bail!("{} is not built in", other.name()),
    }
}

#[cfg(feature = "sqlite")]
fn sqlite_config(config: &Config) -> chat_store_sql::SqliteConfig {
    use chat_store_sql::{SqliteConfig, Synchronous};
    let mut sqlite = SqliteConfig::from_url(&config.database_url);
    sqlite.synchronous = Synchronous::parse(&config.sqlite_synchronous).unwrap_or(Synchronous::Full);
    sqlite.max_read_connections = config.database_max_connections;
    sqlite.busy_timeout = Duration::from_millis(config.database_statement_timeout_ms);
    sqlite.wal_autocheckpoint_pages = config.sqlite_wal_autocheckpoint_pages;
    sqlite.writer_cache_kib = config.sqlite_writer_cache_kib;
    sqlite
}

#[cfg(feature = "postgres")]
fn postgres_config(config: &Config) -> chat_store_sql::PostgresConfig {
    let mut postgres = chat_store_sql::PostgresConfig::from_url(&config.database_url);
    postgres.max_connections = config.database_max_connections;
    postgres.min_connections = postgres.min_connections.min(config.database_max_connections);
    postgres.statement_timeout = Duration::from_millis(config.database_statement_timeout_ms);
    postgres.acquire_timeout = Duration::from_millis(config.database_acquire_timeout_ms);
    postgres
}

/// Hides the user and password of a database URL before it is shown.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => format!("{}://***@{}", &url[..scheme], &url[at + 1..]),
        _ => url.to_owned(),
    }
}

/// Where the generated HS256 secret is kept: beside the database file.
pub fn secret_path(config: &Config) -> Option<PathBuf> {
    let db = config.sqlite_path()?;
    Some(db.with_extension("jwt-secret"))
}

/// Reads the kept secret, or makes and keeps a new one (readable by the owner only).
fn kept_secret(path: &Path) -> anyhow::Result<String> {
    if let Ok(text) = std::fs::read_to_string(path) {
        let secret = text.trim().to_owned();
        if secret.len() >= 32 {
            return Ok(secret);
        }
        bail!("{} holds a secret shorter than 32 bytes; remove it to make a new one", path.display());
    }
    let secret = chat_transport_ws::generate_secret()?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    write_private(path, &secret).with_context(|| format!("writing {}", path.display()))?;
    tracing::warn!(
        path = %path.display(),
        "CHAT_JWT_SECRET is not set: made a random secret and kept it beside the database; \
         set CHAT_JWT_SECRET to share one between servers or token issuers"
    );
    Ok(secret)
}

#[cfg(unix)]
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    file.write_all(text.as_bytes())
}

#[cfg(not(unix))]
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    std::fs::write(path, text)
}

/// How the server checks and makes tokens.
#[derive(Clone)]
pub struct Auth {
    /// Checks tokens.
    pub verifier: Arc<dyn Authenticator>,
    /// Makes tokens, when a signing key is configured.
    pub issuer: Option<Arc<TokenIssuer>>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth").field("issuer", &self.issuer).finish_non_exhaustive()
    }
}

/// The token verifier and, when a signing key is available, the issuer.
pub fn auth_from(config: &Config) -> anyhow::Result<Auth> {
    let read = |path: &PathBuf| std::fs::read(path).with_context(|| format!("reading {}", path.display()));
    let (verify, sign) = match config.jwt_algorithm.to_ascii_uppercase().as_str() {
        "HS256" => {
            let secret = match (&config.jwt_secret, secret_path(config)) {
                (Some(secret), _) => secret.clone(),
                (None, Some(path)) => kept_secret(&path)?,
                (None, None) if config.backend()? == Backend::Postgres => bail!(
                    "CHAT_JWT_SECRET must be set with PostgreSQL: every server sharing the database \
                     must check tokens with the same secret"
                ),
                (None, None) => {
                    tracing::warn!(
                        "CHAT_JWT_SECRET is not set and the database is in memory: tokens last only as long as this process"
                    );
                    chat_transport_ws::generate_secret()?
                }
            };
            let bytes = secret.into_bytes();
            (VerifyKey::Hs256(bytes.clone()), Some(SignKey::Hs256(bytes)))
        }
        alg @ ("RS256" | "EDDSA") => {
            let public = config
                .jwt_public_key_file
                .as_ref()
                .with_context(|| format!("jwt_algorithm {alg} needs jwt_public_key_file"))?;
            let public = read(public)?;
            let private = config.jwt_private_key_file.as_ref().map(read).transpose()?;
            if alg == "RS256" {
                (VerifyKey::Rs256Pem(public), private.map(SignKey::Rs256Pem))
            } else {
                (VerifyKey::EdDsaPem(public), private.map(SignKey::EdDsaPem))
            }
        }
        other => bail!("jwt_algorithm must be HS256, RS256 or EdDSA, not {other:?}"),
    };
    let jwt = JwtConfig::hs256(Vec::new())
        .with_key(verify)
        .with_issuer(config.jwt_issuer.clone())
        .with_audience(config.jwt_audience.clone());
    let auth = JwtAuthenticator::new(&jwt).context("setting up token verification")?;
    let issuer = sign
        .map(|key| TokenIssuer::new(&key, config.jwt_issuer.clone(), config.jwt_audience.clone()))
        .transpose()
        .context("setting up token signing")?;
    Ok(Auth { verifier: Arc::new(auth), issuer: issuer.map(Arc::new) })
}

/// The process's soft limit on open files, where the system tells it
/// (Linux's `/proc/self/limits`); `None` when unlimited or unknown.
fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    parse_open_files_limit(&limits)
}

fn parse_open_files_limit(limits: &str) -> Option<u64> {
    let line = limits.lines().find_map(|line| line.strip_prefix("Max open files"))?;
    line.split_whitespace().next()?.parse().ok()
}

/// How many connections fit within an open-file limit: the limit less room
/// for the database's connections and files, the listener, logs, and the
/// connections being refused (up to 64 at once). Without this, connections
/// past the limit fail at accept, unanswered, rather than getting 503.
fn connections_within(open_files: Option<u64>, config: &Config) -> Option<usize> {
    let reserve = 128 + u64::from(config.database_max_connections) * 2;
    let fit = open_files?.saturating_sub(reserve).max(1);
    Some(usize::try_from(fit).unwrap_or(usize::MAX))
}

/// A URL without its password, for logs.
#[cfg(any(feature = "nats", feature = "redis"))]
fn redact_url(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((_, host)) => format!("{scheme}://…@{host}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

/// The routes of every transport the configuration asks for, and `extra`
/// (other crates' routes, such as the webhooks' admin API), on one router.
fn transports(
    state: AppState,
    config: &Config,
    extra: chat_transport_ws::utoipa_axum::router::OpenApiRouter<AppState>,
) -> anyhow::Result<axum::Router> {
    #[cfg(feature = "socketio")]
    if config.socketio {
        let socketio = chat_transport_socketio::routes(&state);
        return Ok(chat_transport_ws::router_with(state, extra.merge(socketio)));
    }
    #[cfg(not(feature = "socketio"))]
    if config.socketio {
        anyhow::bail!(
            "socketio is on, but this build has no Socket.IO transport (cargo feature `socketio`); set CHAT_SOCKETIO=false"
        );
    }
    Ok(chat_transport_ws::router_with(state, extra))
}

/// Serves until `shutdown` resolves, then stops accepting, closes every
/// session with 1001, waits for accepted sends to be committed, and returns.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let store = open_store(&config).await?;
    let Auth { verifier, issuer } = auth_from(&config)?;
    #[cfg_attr(
        not(any(feature = "discord", feature = "webhooks", feature = "push", feature = "nats", feature = "redis")),
        allow(unused_mut)
    )]
    let attachments = attachments_from(&config, store.as_ref()).await?;
    let mut engine = Engine::builder(store).config(config.engine_config()).ice_servers(Arc::new(config.ice_config()?));
    if let Some(attachments) = attachments {
        engine = engine.attachments(attachments);
    }
    #[cfg_attr(not(any(feature = "webhooks", feature = "push")), allow(unused_mut))]
    let mut extra_routes = chat_transport_ws::utoipa_axum::router::OpenApiRouter::new();
    #[cfg(any(feature = "nats", feature = "redis"))]
    if let Some(url) = config.broker() {
        let options = chat_broker::Options { prefix: config.broker_prefix.clone(), ..chat_broker::Options::default() };
        let broker = chat_broker::connect(url, options).await.context("setting up the broker")?;
        tracing::info!(broker = %redact_url(url), prefix = %config.broker_prefix, "one server with the other processes on the broker");
        engine = engine.broker(broker);
    }
    #[cfg(feature = "discord")]
    if let Some(discord) = config.discord_config()? {
        let bridge = chat_discord::DiscordBridge::new(discord).context("setting up the Discord bridge")?;
        tracing::info!(guild = config.discord.guild_id, "the Discord bridge is on");
        engine = engine.bridge(Arc::new(bridge));
    }
    #[cfg(feature = "webhooks")]
    {
        let settings = config.webhook_config()?;
        if let Some(endpoint) = &settings.endpoint {
            tracing::info!(url = %endpoint.url, "webhooks go to the configured endpoint");
        }
        let webhooks = chat_webhooks::WebhookBridge::new(settings).context("setting up webhooks")?;
        engine = engine.bridge(Arc::new(webhooks.clone()));
        extra_routes = extra_routes.merge(chat_webhooks::routes(webhooks));
    }
    #[cfg(feature = "push")]
    if let Some(push) = config.push_config()? {
        if config.vapid_subject.is_none() {
            tracing::warn!(subject = %push.subject, "CHAT_VAPID_SUBJECT is not set; some push services refuse pushes without a real contact");
        }
        let push = chat_push::PushBridge::new(push).context("setting up push")?;
        engine = engine.bridge(Arc::new(push.clone())).call_notifier(Arc::new(push.clone()));
        extra_routes = extra_routes.merge(chat_push::routes(push));
    }
    let engine = engine.start().await.context("starting the engine")?;
    if config.dev_login {
        tracing::warn!("dev_login is on: anyone who can reach this server can sign in as any user by name");
    }
    let mut ws_config = config.ws_config();
    if let Some(fit) = connections_within(open_files_limit(), &config)
        && fit < ws_config.max_connections
    {
        tracing::info!(
            max_connections = ws_config.max_connections,
            using = fit,
            "max_connections is above what the open-file limit leaves for connections; using {fit}, so that \
                 connections past it get 503 instead of failing at accept (raise `ulimit -n` for more)"
        );
        ws_config.max_connections = fit;
    }
    let state = AppState::new(engine.clone(), verifier, issuer, ws_config.clone());
    let app = transports(state, &config, extra_routes)?;
    let stopping = engine.clone();
    // Connections are still accepted while the engine shuts down; the accept
    // loop stops once it has.
    let shutdown = async move {
        shutdown.await;
        tracing::info!("shutting down: closing sessions and committing pending sends");
        stopping.shutdown().await;
    };
    chat_transport_ws::serve(listener, app, &ws_config, shutdown).await.context("serving")?;
    // Upgraded connections outlive the HTTP server; give them a moment to
    // send their close frames.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while engine.connections() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tracing::info!("stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_open_file_limit_caps_connections() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max processes             63536                63536                processes \n\
                      Max open files            1024                 524288               files     \n";
        assert_eq!(parse_open_files_limit(limits), Some(1024));
        assert_eq!(parse_open_files_limit("Max open files  unlimited  unlimited  files"), None);
        assert_eq!(parse_open_files_limit(""), None);
        let config = Config { database_max_connections: 10, ..Config::default() };
        assert_eq!(connections_within(Some(1024), &config), Some(1024 - 148));
        assert_eq!(connections_within(Some(100), &config), Some(1), "never zero");
        assert_eq!(connections_within(None, &config), None);
    }
}

//! Configuration: defaults, then an optional TOML file, then `CHAT_*`
//! environment variables, each overriding the one before.
//!
//! Every key has the same name in both places: `listen` in the file is
//! `CHAT_LISTEN` in the environment. The Discord bridge's settings are the
//! exception: they keep the names such deployments already use,
//! `DISCORD_TOKEN` and so on, and sit in a `[discord]` table of the file
//! (`token`, `guild_id`, …).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use chat_core::{EngineConfig, Limits};
use chat_transport_ws::{OriginPolicy, WsConfig};
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Readable lines.
    Human,
    /// One JSON object per line.
    Json,
}

/// The kind of database a [`Config`] names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// One SQLite file, embedded.
    Sqlite,
    /// A PostgreSQL server, possibly shared by several chat servers.
    Postgres,
}

impl Backend {
    /// A name for messages.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "SQLite",
            Backend::Postgres => "PostgreSQL",
        }
    }

    /// The cargo feature that builds it in.
    pub fn feature(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }

    /// Whether this build has it.
    pub fn is_built_in(self) -> bool {
        match self {
            Backend::Sqlite => cfg!(feature = "sqlite"),
            Backend::Postgres => cfg!(feature = "postgres"),
        }
    }
}

/// Everything `chat-server` can be configured with. See the README for a table.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// The store: `sqlite://path` (made when missing), `sqlite::memory:`, or
    /// `postgres://user@host:port/db` (also `postgresql://`).
    pub database_url: String,
    /// SQLite `synchronous`: `full` (an ack survives power loss), `normal` or `off`.
    pub sqlite_synchronous: String,
    /// SQLite: pages the write-ahead log collects before a commit copies them
    /// back into the database file (`wal_autocheckpoint`; 16 384 = 64 MiB).
    pub sqlite_wal_autocheckpoint_pages: u32,
    /// SQLite: the writing connection's page cache in KiB (`cache_size`;
    /// 16 384 = 16 MiB, taken as pages are used).
    pub sqlite_writer_cache_kib: u32,
    /// Most database connections this server opens: the PostgreSQL pool, or
    /// SQLite's read connections (SQLite always writes through one).
    pub database_max_connections: u32,
    /// Longest a database statement may run (PostgreSQL `statement_timeout`),
    /// or wait for another process's lock (SQLite `busy_timeout`), in ms.
    pub database_statement_timeout_ms: u64,
    /// PostgreSQL: how long a call waits for a connection before it fails as
    /// unavailable, in ms. Bounds the wait while the database is unreachable.
    pub database_acquire_timeout_ms: u64,
    /// HS256 secret (at least 32 bytes). When unset and no public key is
    /// configured, one is made and kept beside the database.
    pub jwt_secret: Option<String>,
    /// `HS256`, `RS256` or `EdDSA`.
    pub jwt_algorithm: String,
    /// PEM public key for RS256/EdDSA verification.
    pub jwt_public_key_file: Option<PathBuf>,
    /// PEM private key for RS256/EdDSA signing (visitor and admin tokens).
    pub jwt_private_key_file: Option<PathBuf>,
    /// Required `iss` claim.
    pub jwt_issuer: Option<String>,
    /// Required `aud` claim.
    pub jwt_audience: Option<String>,
    /// Key for the admin API; admin routes answer 401 while unset.
    pub api_key: Option<String>,
    /// Browser origins allowed besides the server's own: `*` or a comma-separated list.
    pub allowed_origins: String,
    /// `human` or `json`.
    pub log_format: LogFormat,
    /// Take client addresses from `X-Forwarded-For` (only behind a trusted proxy).
    pub trust_forwarded_for: bool,
    /// Longest message body, in characters.
    pub max_body_chars: usize,
    /// Largest WebSocket frame, in bytes; larger ones close the connection with 1009.
    pub max_frame_bytes: usize,
    /// Largest history page.
    pub max_history_page: u32,
    /// Most rooms a user may have created or joined themselves (rooms others
    /// added them to do not count).
    pub max_rooms_per_user: u64,
    /// Rooms a user may create plus users they may invite, per minute; 0 is
    /// no limit.
    pub room_actions_per_minute: u32,
    /// Most members per room.
    pub max_members_per_room: u64,
    /// Most simultaneous connections per user.
    pub max_connections_per_user: usize,
    /// Sustained commands per second per connection.
    pub commands_per_second: u32,
    /// Burst of commands above the sustained rate.
    pub command_burst: u32,
    /// Events queued per connection before it is closed as a slow consumer (4429).
    pub outbound_queue: usize,
    /// How long a durable commit waits for more sends to share it, in
    /// microseconds (0: commit at once). See `EngineConfig::commit_window`.
    pub commit_window_us: u64,
    /// Visitor sessions one address may create per minute.
    pub visitor_sessions_per_minute: u32,
    /// Seconds a connection may take to authenticate.
    pub auth_timeout_s: u64,
    /// Seconds between keepalive pings on each WebSocket (0: none, and no
    /// idle timeout either). See `EngineConfig::keepalive_interval`.
    pub keepalive_s: u64,
    /// Seconds a WebSocket may stay silent (no frame, no pong) before it is
    /// closed with 1001; checked at each keepalive, so longer than it.
    pub idle_timeout_s: u64,
    /// Seconds a client has to send a request's headers (from the accept, or
    /// from the first byte of a later request on a keep-alive connection).
    pub header_timeout_s: u64,
    /// Seconds a keep-alive HTTP connection may wait for its next request
    /// (or a request in progress may move no byte) before it is closed.
    pub http_idle_timeout_s: u64,
    /// Seconds a request body may take to arrive in full; slower ones get 408.
    pub body_timeout_s: u64,
    /// Most connections open at once from one client address (HTTP and
    /// WebSocket together; IPv6 per /64), by TCP peer address: behind a
    /// proxy, the proxy's. Past it: 429, before any upgrade.
    pub max_connections_per_ip: usize,
    /// Most connections open at once in all; past it: 503.
    pub max_connections: usize,
    /// Let anyone sign in to the chat page with just a name (`/v1/dev-login`).
    /// For development machines only; off by default.
    pub dev_login: bool,
    /// Serve Socket.IO clients at `/socket.io/` beside the native
    /// WebSocket (needs the `socketio` feature, on by default).
    pub socketio: bool,
    /// The broker that makes several server processes one server:
    /// `nats://host:4222` or `redis://host:6379` (plain publish/subscribe is
    /// enough). Unset: this process is the whole server.
    pub broker_url: Option<String>,
    /// What the broker's subjects or channels start with, so that several
    /// deployments can share one broker.
    pub broker_prefix: String,
    /// Where committed changes are POSTed as signed webhooks (`https://…`),
    /// with `webhook_secret`; more endpoints are added through
    /// `/v1/admin/webhooks` (needs the `webhooks` feature, on by default).
    pub webhook_url: Option<String>,
    /// The HMAC key that signs the webhooks of `webhook_url`, 16 to 256 bytes.
    pub webhook_secret: Option<String>,
    /// The events sent to `webhook_url`, comma-separated
    /// (`message.created,support.opened`); empty for all.
    pub webhook_events: String,
    /// Seconds a webhook delivery is retried before it is failed (a day);
    /// shorter for tests, or for receivers that want nothing late.
    pub webhook_give_up_s: u64,
    /// Where attachments are kept: `file:///dir` (or a path), `s3://bucket/prefix`
    /// (credentials and endpoint from `AWS_*`), or `off`. Unset: the directory
    /// `chat-attachments` beside the SQLite database (or in the working
    /// directory). Several processes need storage they all see.
    pub attachments_url: Option<String>,
    /// The endpoint of S3-compatible attachment storage (else `AWS_ENDPOINT_URL`).
    pub s3_endpoint: Option<String>,
    /// Its region (else `AWS_REGION`).
    pub s3_region: Option<String>,
    /// Its access key id (else `AWS_ACCESS_KEY_ID`).
    pub s3_access_key_id: Option<String>,
    /// Its secret access key (else `AWS_SECRET_ACCESS_KEY`).
    pub s3_secret_access_key: Option<String>,
    /// Allow an `http://` S3 endpoint (a local MinIO, tests).
    pub s3_allow_http: bool,
    /// Largest attachment, in bytes (413 past it).
    pub max_attachment_bytes: u64,
    /// Most bytes one user's attachments may take (each counts at least 64 KiB); 0: no quota.
    pub attachment_quota_bytes: u64,
    /// The same for anonymous visitors.
    pub visitor_attachment_quota_bytes: u64,
    /// Seconds a signed attachment URL stays valid, at least (at most twice that).
    pub attachment_url_ttl_s: u64,
    /// Seconds after which an attachment never posted is removed.
    pub attachment_orphan_after_s: u64,
    /// Seconds between two rounds of the attachment clean-up.
    pub attachment_cleanup_s: u64,
    /// Seconds an upload's body may take to arrive.
    pub upload_timeout_s: u64,
    /// Bytes anonymous visitors may upload from one client address in an hour.
    pub visitor_upload_bytes_per_hour: u64,
    /// The server's public address (`https://chat.example.com`), put before
    /// attachment URLs so that webhook receivers and widgets on other sites
    /// can fetch them. Unset: URLs are relative to the server.
    pub public_url: Option<String>,
    /// Seconds a call rings before it ends with `timeout`.
    pub call_ring_s: u64,
    /// The ICE servers calls use: a JSON array of RTCIceServer objects
    /// (`[{"urls":"stun:stun.example.org"},{"urls":"turn:turn.example.org"}]`),
    /// taken as written from `CHAT_ICE_SERVERS`. Empty: none (peers on one
    /// network still connect).
    pub ice_servers: String,
    /// The secret shared with the TURN server (coturn's
    /// `static-auth-secret`): `turn:`/`turns:` entries of `ice_servers` then
    /// get a username and credential made per user that expire.
    pub turn_secret: Option<String>,
    /// Seconds the TURN credentials of `turn_secret` stay valid.
    pub turn_ttl_s: u64,
    /// Web Push to users with no open session (`CHAT_PUSH`, on by default).
    pub push: bool,
    /// The VAPID subject push services may reach the operator at: a
    /// `mailto:` or `https:` URL (`CHAT_VAPID_SUBJECT`). Unset: `public_url`
    /// when it is https, else `mailto:postmaster@localhost`, which some push
    /// services refuse: set it in production.
    pub vapid_subject: Option<String>,
    /// A file holding the VAPID private key (PEM, or the base64url key of
    /// `web-push generate-vapid-keys`). Unset: the server makes a key on its
    /// first start and keeps it in the store, shared by every process.
    pub vapid_private_key_file: Option<String>,
    /// Lets push endpoints be `http` or on addresses that are not public
    /// (tests, push services on a private network).
    pub push_allow_private_endpoints: bool,
    /// The Discord bridge, on when a token is set (`[discord]`, `DISCORD_*`).
    pub discord: DiscordSettings,
    /// `CHAT_*` variables of the environment that name no setting and were
    /// ignored, for `main` to warn about once logging is set up.
    #[serde(skip)]
    pub ignored_env: Vec<String>,
}

/// The Discord bridge's settings: the `[discord]` table of the file, or the
/// `DISCORD_*` variables (`DISCORD_TOKEN`, `DISCORD_GUILD_ID`, …). The bridge
/// is on when `token` is set, and then the three ids are required.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DiscordSettings {
    /// The bot token (`DISCORD_TOKEN`).
    pub token: Option<String>,
    /// The server (`DISCORD_GUILD_ID`).
    pub guild_id: Option<u64>,
    /// The forum that gets one post per support room (`DISCORD_FORUM_CHANNEL_ID`).
    pub forum_channel_id: Option<u64>,
    /// The agents' role (`DISCORD_SUPPORT_ROLE_ID`).
    pub support_role_id: Option<u64>,
    /// Send REST calls to this base URL instead of Discord's (`DISCORD_PROXY_URL`).
    pub proxy_url: Option<String>,
    /// Discord roles that give chat roles, as `role_id=chat_role` pairs
    /// separated by commas (`DISCORD_ROLE_MAP`, e.g. `1111=admin,2222=lead`).
    pub role_map: Option<String>,
    /// Group rooms mirrored to Discord text channels, as `room_id=channel_id`
    /// pairs separated by commas (`DISCORD_CHANNEL_MAP`).
    pub channel_map: Option<String>,
    /// The largest file uploaded to Discord, in bytes
    /// (`DISCORD_MAX_UPLOAD_BYTES`); unset, the guild's limit as Discord
    /// tells it, else 8 MiB. Larger files reach Discord as a line with their
    /// name and size (and a link, with `CHAT_PUBLIC_URL`).
    pub max_upload_bytes: Option<u64>,
    /// Where agents' files may be downloaded from, as origins separated by
    /// commas (`DISCORD_CDN_ORIGINS`); unset, Discord's CDN
    /// (`https://cdn.discordapp.com,https://media.discordapp.net`).
    pub cdn_origins: Option<String>,
}

impl std::fmt::Debug for DiscordSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiscordSettings")
            .field("token", &self.token.as_ref().map(|_| "***"))
            .field("guild_id", &self.guild_id)
            .field("forum_channel_id", &self.forum_channel_id)
            .field("support_role_id", &self.support_role_id)
            .field("proxy_url", &self.proxy_url)
            .field("role_map", &self.role_map)
            .field("channel_map", &self.channel_map)
            .field("max_upload_bytes", &self.max_upload_bytes)
            .field("cdn_origins", &self.cdn_origins)
            .finish()
    }
}

/// Settings whose `CHAT_*` variable is read as written rather than like
/// TOML (see [`Config::load`]).
const VERBATIM_ENV: [&str; 3] = ["webhook_secret", "ice_servers", "turn_secret"];

/// The keys of `[discord]`, which are also the `DISCORD_*` variables.
const DISCORD_KEYS: [&str; 9] = [
    "token",
    "guild_id",
    "forum_channel_id",
    "support_role_id",
    "proxy_url",
    "role_map",
    "channel_map",
    "max_upload_bytes",
    "cdn_origins",
];

impl DiscordSettings {
    /// Whether the bridge is on: a token is set.
    pub fn enabled(&self) -> bool {
        self.token.as_deref().is_some_and(|t| !t.trim().is_empty())
    }

    /// The three ids, or which one is missing, when the bridge is on.
    fn ids(&self) -> anyhow::Result<(u64, u64, u64)> {
        let require = |value: Option<u64>, var: &str| match value {
            Some(id) if id > 0 => Ok(id),
            _ => Err(anyhow::anyhow!(
                "DISCORD_TOKEN is set but {var} is not (or is 0): set it, or {} in the [discord] table",
                var.trim_start_matches("DISCORD_").to_ascii_lowercase()
            )),
        };
        Ok((
            require(self.guild_id, "DISCORD_GUILD_ID")?,
            require(self.forum_channel_id, "DISCORD_FORUM_CHANNEL_ID")?,
            require(self.support_role_id, "DISCORD_SUPPORT_ROLE_ID")?,
        ))
    }

    /// `channel_map` read as (room, Discord channel id) pairs.
    #[cfg(feature = "discord")]
    fn channel_pairs(&self) -> anyhow::Result<Vec<(chat_core::RoomId, u64)>> {
        let text = self.channel_map.as_deref().unwrap_or_default();
        let mut pairs = Vec::new();
        for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let parsed =
                pair.split_once('=').and_then(|(room, id)| Some((room.trim().parse().ok()?, id.trim().parse().ok()?)));
            let Some(pair) = parsed else {
                anyhow::bail!("DISCORD_CHANNEL_MAP: {pair:?} is not room_id=channel_id");
            };
            pairs.push(pair);
        }
        Ok(pairs)
    }

    /// `role_map` read as (Discord role id, chat role) pairs.
    #[cfg(feature = "discord")]
    fn role_pairs(&self) -> anyhow::Result<Vec<(u64, String)>> {
        let text = self.role_map.as_deref().unwrap_or_default();
        let mut pairs = Vec::new();
        for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let parsed = pair.split_once('=').and_then(|(id, role)| Some((id.trim().parse().ok()?, role.trim())));
            let Some((id, role)) = parsed else {
                anyhow::bail!("DISCORD_ROLE_MAP: {pair:?} is not role_id=chat_role");
            };
            pairs.push((id, role.to_owned()));
        }
        Ok(pairs)
    }
}

impl Default for Config {
    fn default() -> Self {
        let limits = Limits::default();
        let ws = WsConfig::default();
        let engine = EngineConfig::default();
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            database_url: "sqlite://chat.db".into(),
            sqlite_synchronous: "full".into(),
            sqlite_wal_autocheckpoint_pages: 16_384,
            sqlite_writer_cache_kib: 16_384,
            database_max_connections: 10,
            database_statement_timeout_ms: 5_000,
            database_acquire_timeout_ms: 2_000,
            jwt_secret: None,
            jwt_algorithm: "HS256".into(),
            jwt_public_key_file: None,
            jwt_private_key_file: None,
            jwt_issuer: None,
            jwt_audience: None,
            api_key: None,
            allowed_origins: String::new(),
            log_format: LogFormat::Human,
            trust_forwarded_for: false,
            max_body_chars: limits.max_body_chars,
            max_frame_bytes: ws.max_frame_bytes,
            max_history_page: limits.max_history_page,
            max_rooms_per_user: limits.max_rooms_per_user,
            room_actions_per_minute: limits.room_actions_per_minute,
            max_members_per_room: limits.max_members_per_room,
            max_connections_per_user: limits.max_connections_per_user,
            commands_per_second: limits.commands_per_second,
            command_burst: limits.command_burst,
            outbound_queue: limits.outbound_queue,
            commit_window_us: engine.commit_window.as_micros() as u64,
            visitor_sessions_per_minute: ws.visitor_sessions_per_ip,
            auth_timeout_s: ws.auth_timeout.as_secs(),
            keepalive_s: engine.keepalive_interval.as_secs(),
            idle_timeout_s: ws.idle_timeout.as_secs(),
            header_timeout_s: ws.header_timeout.as_secs(),
            http_idle_timeout_s: ws.http_idle_timeout.as_secs(),
            body_timeout_s: ws.body_timeout.as_secs(),
            max_connections_per_ip: ws.max_connections_per_ip,
            max_connections: ws.max_connections,
            dev_login: false,
            socketio: true,
            broker_url: None,
            broker_prefix: "chat".into(),
            webhook_url: None,
            webhook_secret: None,
            webhook_events: String::new(),
            webhook_give_up_s: 24 * 3600,
            attachments_url: None,
            s3_endpoint: None,
            s3_region: None,
            s3_access_key_id: None,
            s3_secret_access_key: None,
            s3_allow_http: false,
            max_attachment_bytes: 10 * 1024 * 1024,
            attachment_quota_bytes: 1024 * 1024 * 1024,
            visitor_attachment_quota_bytes: 50 * 1024 * 1024,
            attachment_url_ttl_s: 3600,
            attachment_orphan_after_s: 24 * 3600,
            attachment_cleanup_s: 600,
            upload_timeout_s: ws.upload_timeout.as_secs(),
            visitor_upload_bytes_per_hour: ws.visitor_upload_bytes_per_ip,
            public_url: None,
            call_ring_s: engine.calls.ring_timeout.as_secs(),
            ice_servers: String::new(),
            turn_secret: None,
            turn_ttl_s: 24 * 3600,
            push: true,
            vapid_subject: None,
            vapid_private_key_file: None,
            push_allow_private_endpoints: false,
            discord: DiscordSettings::default(),
            ignored_env: Vec::new(),
        }
    }
}

/// Sorts the `CHAT_*` variables of an environment: those that name a
/// setting in `known` are read; `CHAT_CONFIG` (the file, read by the CLI) and
/// `CHAT_TEST_*` (the test suites') are left alone; one that looks like a
/// mistyped setting (`CHAT_MAX_BODY_CHAR`, `CHAT_LISTEN_ADDR`…) is an error
/// naming the setting it probably meant, since a typo silently ignored is a
/// setting silently not applied; the rest belong to the deployment and are
/// returned to be warned about.
fn check_environment(
    vars: impl Iterator<Item = (std::ffi::OsString, std::ffi::OsString)>,
    known: &std::collections::BTreeSet<String>,
) -> anyhow::Result<Vec<String>> {
    let mut ignored = Vec::new();
    for (name, _) in vars {
        let Some(name) = name.to_str() else { continue };
        let Some(rest) = name.get(..5).filter(|p| p.eq_ignore_ascii_case("CHAT_")).map(|_| &name[5..]) else {
            continue;
        };
        let key = rest.to_ascii_lowercase();
        if known.contains(&key) || key == "config" || key.starts_with("test_") {
            continue;
        }
        if let Some(meant) = likely_meant(&key, known) {
            bail!(
                "{name} is not a setting; did you mean CHAT_{}? (unset it, or rename it if it is your own variable)",
                meant.to_ascii_uppercase()
            );
        }
        ignored.push(name.to_owned());
    }
    ignored.sort();
    Ok(ignored)
}

/// The setting `key` is probably a typo of: one or two letters off (one for
/// short names), the same but for underscores, or a known name with a word
/// added or dropped at either end (`listen_addr`, `max_body`).
fn likely_meant<'a>(key: &str, known: &'a std::collections::BTreeSet<String>) -> Option<&'a str> {
    let squash = |s: &str| s.replace('_', "");
    let allowed = if key.len() >= 8 { 2 } else { 1 };
    known
        .iter()
        .map(|k| (k, edit_distance(key, k)))
        .filter(|(k, d)| {
            *d <= allowed
                || squash(key) == squash(k)
                || (k.len() >= 6 && (key.starts_with(&format!("{k}_")) || key.ends_with(&format!("_{k}"))))
                || (key.len() >= 6 && (k.starts_with(&format!("{key}_")) || k.ends_with(&format!("_{key}"))))
        })
        .min_by_key(|(_, d)| *d)
        .map(|(k, _)| k.as_str())
}

/// Levenshtein distance, for short names.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1).min(row[j] + 1).min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

impl Config {
    /// Reads the file (if given) and the environment over the defaults.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Self> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.exists() {
                bail!("config file {} does not exist", path.display());
            }
            figment = figment.merge(Toml::file(path));
        }
        // `CHAT_LISTEN` sets `listen`; values parse like TOML (`CHAT_MAX_BODY_CHARS=100`).
        // Only variables that name a setting are read: a deployment's own
        // `CHAT_*` variables (a front end's `CHAT_URL`) are its business, and
        // only a likely typo of a setting is refused (see `check_environment`).
        let known = Self::keys();
        let ignored = check_environment(std::env::vars_os(), &known)?;
        figment = figment.merge(Env::prefixed("CHAT_").filter(move |key| {
            let key = key.as_str().to_ascii_lowercase();
            known.contains(&key) && !VERBATIM_ENV.contains(&key.as_str())
        }));
        // Secrets are taken as written: `CHAT_WEBHOOK_SECRET=0123…` is text,
        // where parsing it like TOML would make it a number (and drop its
        // leading zero).
        for (name, value) in std::env::vars_os() {
            let (Some(name), Some(value)) = (name.to_str(), value.to_str()) else { continue };
            let key = name.get(..5).filter(|p| p.eq_ignore_ascii_case("CHAT_")).map(|_| name[5..].to_ascii_lowercase());
            if let Some(key) = key.filter(|k| VERBATIM_ENV.contains(&k.as_str())) {
                figment = figment.merge(Serialized::default(&key, value));
            }
        }
        // `DISCORD_TOKEN` sets `discord.token`. Only the bridge's own keys are
        // read, so other `DISCORD_*` variables of the environment do no harm.
        figment =
            figment.merge(Env::prefixed("DISCORD_").only(&DISCORD_KEYS).map(|key| format!("discord.{key}").into()));
        let mut config: Config = figment.extract().context("invalid configuration")?;
        config.validate()?;
        config.ignored_env = ignored;
        Ok(config)
    }

    /// The top-level settings, as written in a file (and, upper-cased after
    /// `CHAT_`, in the environment). `discord` is a table, set by `DISCORD_*`.
    fn keys() -> std::collections::BTreeSet<String> {
        match serde_json::to_value(Config::default()) {
            Ok(serde_json::Value::Object(map)) => map.into_iter().map(|(k, _)| k).filter(|k| k != "discord").collect(),
            _ => std::collections::BTreeSet::new(),
        }
    }

    fn validate(&self) -> anyhow::Result<()> {
        self.backend()?;
        if self.call_ring_s == 0 {
            bail!("call_ring_s must be positive");
        }
        if self.turn_ttl_s == 0 {
            bail!("turn_ttl_s must be positive");
        }
        self.ice_config()?;
        if self.database_max_connections == 0 {
            bail!("database_max_connections must be at least 1");
        }
        if let Some(url) = self.broker() {
            let scheme = url.split_once("://").map(|(scheme, _)| scheme).unwrap_or_default();
            let built = match scheme {
                "nats" => cfg!(feature = "nats"),
                "redis" => cfg!(feature = "redis"),
                _ => bail!("broker_url must start with nats:// or redis://"),
            };
            if !built {
                bail!(
                    "broker_url names {scheme}, which this build leaves out (build chat-server with the {scheme:?} feature)"
                );
            }
            if self.sqlite_path().is_none() && self.backend()? == Backend::Sqlite {
                bail!(
                    "broker_url is set, but the database is in memory: processes of one server must share their database (PostgreSQL)"
                );
            }
            let valid = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
            if self.broker_prefix.is_empty()
                || !self.broker_prefix.split('.').all(|p| !p.is_empty() && p.chars().all(valid))
            {
                bail!("broker_prefix must be dot-separated words of letters, digits, '-' and '_'");
            }
        }
        if self.database_statement_timeout_ms == 0 || self.database_acquire_timeout_ms == 0 {
            bail!("database_statement_timeout_ms and database_acquire_timeout_ms must be positive");
        }
        #[cfg(feature = "sqlite")]
        chat_store_sql::Synchronous::parse(&self.sqlite_synchronous).with_context(|| {
            format!("sqlite_synchronous must be full, normal or off, not {:?}", self.sqlite_synchronous)
        })?;
        if self.sqlite_wal_autocheckpoint_pages == 0 {
            bail!("sqlite_wal_autocheckpoint_pages must be positive (the log would grow without a bound)");
        }
        if self.sqlite_writer_cache_kib == 0 {
            bail!("sqlite_writer_cache_kib must be positive");
        }
        if self.max_frame_bytes < 1024 {
            bail!("max_frame_bytes must be at least 1024");
        }
        if self.max_body_chars == 0 || self.max_history_page == 0 || self.outbound_queue == 0 {
            bail!("max_body_chars, max_history_page and outbound_queue must be positive");
        }
        if self.keepalive_s > 0 && self.idle_timeout_s <= self.keepalive_s {
            bail!(
                "idle_timeout_s ({}) must be longer than keepalive_s ({}): a client is pinged at each keepalive, and needs that long to answer",
                self.idle_timeout_s,
                self.keepalive_s
            );
        }
        if self.header_timeout_s == 0 || self.http_idle_timeout_s == 0 || self.body_timeout_s == 0 {
            bail!("header_timeout_s, http_idle_timeout_s and body_timeout_s must be positive");
        }
        if self.max_connections_per_ip == 0 || self.max_connections == 0 {
            bail!("max_connections_per_ip and max_connections must be positive");
        }
        if self.max_attachment_bytes == 0 || self.attachment_orphan_after_s == 0 || self.attachment_cleanup_s == 0 {
            bail!("max_attachment_bytes, attachment_orphan_after_s and attachment_cleanup_s must be positive");
        }
        if let Some(url) = self.public_url.as_deref().filter(|u| !u.trim().is_empty())
            && !(url.starts_with("https://") || url.starts_with("http://"))
        {
            bail!("public_url must start with https:// (or http://), not {url:?}");
        }
        self.validate_webhooks()?;
        if self.discord.enabled() {
            self.discord.ids()?;
            if !cfg!(feature = "discord") {
                bail!(
                    "DISCORD_TOKEN is set, but this build leaves the Discord bridge out (build chat-server with the \"discord\" feature)"
                );
            }
        }
        Ok(())
    }

    /// Where calls get their ICE servers: `ice_servers`, with TURN
    /// credentials from `turn_secret`.
    pub fn ice_config(&self) -> anyhow::Result<chat_transport_ws::IceConfig> {
        chat_transport_ws::IceConfig::new(
            &self.ice_servers,
            self.turn_secret.clone().filter(|s| !s.is_empty()),
            Duration::from_secs(self.turn_ttl_s),
        )
        .map_err(|e| anyhow::anyhow!("CHAT_ICE_SERVERS: {e}"))
    }

    /// Web Push's settings: the VAPID subject, and the key from its file
    /// when one is named. `None` when push is off.
    #[cfg(feature = "push")]
    pub fn push_config(&self) -> anyhow::Result<Option<chat_push::PushConfig>> {
        if !self.push {
            return Ok(None);
        }
        let subject = match self.vapid_subject.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
            Some(subject) => subject.to_owned(),
            None => match self.public_url.as_deref().filter(|u| u.starts_with("https://")) {
                Some(url) => url.trim_end_matches('/').to_owned(),
                None => "mailto:postmaster@localhost".to_owned(),
            },
        };
        let mut config = chat_push::PushConfig::new(subject);
        if let Some(path) = self.vapid_private_key_file.as_deref().filter(|p| !p.is_empty()) {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading the VAPID key file {path}"))?;
            config.key = Some(chat_push::VapidKey::from_text(&text).map_err(|e| anyhow::anyhow!("{path}: {e}"))?);
        }
        config.allow_private_endpoints = self.push_allow_private_endpoints;
        config.validate().map_err(|e| anyhow::anyhow!("CHAT_VAPID_SUBJECT: {e}"))?;
        Ok(Some(config))
    }

    /// The webhook endpoint of the configuration: both its URL and its
    /// secret, or neither; known events; a positive give-up time.
    fn validate_webhooks(&self) -> anyhow::Result<()> {
        let url = self.webhook_url.as_deref().map(str::trim).filter(|u| !u.is_empty());
        let secret = self.webhook_secret.as_deref().filter(|s| !s.is_empty());
        match (url, secret) {
            (Some(_), None) => bail!("webhook_url is set but webhook_secret is not: set CHAT_WEBHOOK_SECRET too"),
            (None, Some(_)) => bail!("webhook_secret is set but webhook_url is not: set CHAT_WEBHOOK_URL too"),
            _ => {}
        }
        if self.webhook_give_up_s == 0 {
            bail!("webhook_give_up_s must be positive");
        }
        #[cfg(feature = "webhooks")]
        self.webhook_config()?;
        #[cfg(not(feature = "webhooks"))]
        if url.is_some() {
            bail!(
                "CHAT_WEBHOOK_URL is set, but this build leaves webhooks out (build chat-server with the \"webhooks\" feature)"
            );
        }
        Ok(())
    }

    /// The webhooks' settings, with the endpoint of the configuration if one is set.
    #[cfg(feature = "webhooks")]
    pub fn webhook_config(&self) -> anyhow::Result<chat_webhooks::WebhookConfig> {
        let mut config = chat_webhooks::WebhookConfig::default();
        let url = self.webhook_url.as_deref().map(str::trim).filter(|u| !u.is_empty());
        if let (Some(url), Some(secret)) = (url, self.webhook_secret.as_deref().filter(|s| !s.is_empty())) {
            let names = self.webhook_events.split(',').map(str::trim).filter(|e| !e.is_empty());
            let events = chat_webhooks::EventType::parse_list(names).context("webhook_events")?;
            config.endpoint =
                Some(chat_webhooks::ConfiguredEndpoint { url: url.to_owned(), secret: secret.to_owned(), events });
        }
        config.give_up_after = Duration::from_secs(self.webhook_give_up_s);
        config.validate().context("invalid webhook settings")?;
        Ok(config)
    }

    /// The Discord bridge's settings, when `DISCORD_TOKEN` is set.
    #[cfg(feature = "discord")]
    pub fn discord_config(&self) -> anyhow::Result<Option<chat_discord::DiscordConfig>> {
        if !self.discord.enabled() {
            return Ok(None);
        }
        let (guild, forum, role) = self.discord.ids()?;
        let token = self.discord.token.clone().unwrap_or_default();
        let mut config = chat_discord::DiscordConfig::new(token, guild, forum, role);
        config.proxy_url = self.discord.proxy_url.clone().filter(|u| !u.trim().is_empty());
        config.role_map = self.discord.role_pairs()?;
        config.channels = self.discord.channel_pairs()?;
        config.max_upload_bytes = self.discord.max_upload_bytes;
        if let Some(origins) = self.discord.cdn_origins.as_deref().filter(|o| !o.trim().is_empty()) {
            config.cdn_origins = origins
                .split(',')
                .map(|o| o.trim().trim_end_matches('/').to_owned())
                .filter(|o| !o.is_empty())
                .collect();
        }
        config.validate().context("invalid Discord settings")?;
        Ok(Some(config))
    }

    /// The engine's settings.
    pub fn engine_config(&self) -> EngineConfig {
        let mut config = EngineConfig::default();
        let limits = &mut config.limits;
        limits.max_body_chars = self.max_body_chars;
        limits.max_history_page = self.max_history_page;
        limits.default_history_page = limits.default_history_page.min(self.max_history_page);
        limits.max_rooms_per_user = self.max_rooms_per_user;
        limits.room_actions_per_minute = self.room_actions_per_minute;
        limits.max_members_per_room = self.max_members_per_room;
        limits.max_connections_per_user = self.max_connections_per_user;
        limits.commands_per_second = self.commands_per_second;
        limits.command_burst = self.command_burst;
        limits.outbound_queue = self.outbound_queue;
        config.commit_window = Duration::from_micros(self.commit_window_us);
        config.keepalive_interval = Duration::from_secs(self.keepalive_s);
        config.calls.ring_timeout = Duration::from_secs(self.call_ring_s.max(1));
        config
    }

    /// The transport's settings.
    pub fn ws_config(&self) -> WsConfig {
        let mut ws = WsConfig::default();
        ws.max_frame_bytes = self.max_frame_bytes;
        ws.origins = OriginPolicy::parse(&self.allowed_origins);
        ws.api_key = self.api_key.clone().filter(|k| !k.is_empty());
        ws.trust_forwarded_for = self.trust_forwarded_for;
        ws.visitor_sessions_per_ip = self.visitor_sessions_per_minute;
        ws.visitor_window = Duration::from_secs(60);
        ws.auth_timeout = Duration::from_secs(self.auth_timeout_s.max(1));
        ws.idle_timeout = Duration::from_secs(self.idle_timeout_s);
        ws.header_timeout = Duration::from_secs(self.header_timeout_s);
        ws.http_idle_timeout = Duration::from_secs(self.http_idle_timeout_s);
        ws.body_timeout = Duration::from_secs(self.body_timeout_s);
        ws.upload_timeout = Duration::from_secs(self.upload_timeout_s.max(1));
        ws.visitor_upload_bytes_per_ip = self.visitor_upload_bytes_per_hour;
        ws.max_connections_per_ip = self.max_connections_per_ip;
        ws.max_connections = self.max_connections;
        ws.version = env!("CARGO_PKG_VERSION").to_owned();
        ws.dev_login = self.dev_login;
        ws
    }

    /// The broker's URL, when one is set (an empty one is none).
    pub fn broker(&self) -> Option<&str> {
        self.broker_url.as_deref().map(str::trim).filter(|u| !u.is_empty())
    }

    /// Which store `database_url` names, by its scheme.
    pub fn backend(&self) -> anyhow::Result<Backend> {
        let url = self.database_url.as_str();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else {
            bail!("database_url must start with sqlite:, postgres:// or postgresql://");
        };
        if !backend.is_built_in() {
            bail!(
                "database_url names {}, which this build leaves out (build chat-server with the {:?} feature)",
                backend.name(),
                backend.feature()
            );
        }
        Ok(backend)
    }

    /// Where attachments are kept, as a URL for `chat_attachments::open`;
    /// `None` when they are off.
    pub fn attachments_location(&self) -> Option<String> {
        match self.attachments_url.as_deref().map(str::trim) {
            Some("off") | Some("none") | Some("false") => None,
            Some(url) if !url.is_empty() => Some(url.to_string()),
            _ => {
                let dir = match self.sqlite_path() {
                    Some(db) => db.parent().map(|p| p.join("chat-attachments")).unwrap_or("chat-attachments".into()),
                    // A database in memory keeps nothing: neither do its files.
                    None if self.database_url.starts_with("sqlite:") => {
                        std::env::temp_dir().join(format!("chat-attachments-{}", std::process::id()))
                    }
                    None => PathBuf::from("chat-attachments"),
                };
                let dir = if dir.as_os_str().is_empty() { PathBuf::from("chat-attachments") } else { dir };
                Some(format!("file://{}", dir.display()))
            }
        }
    }

    /// The SQLite file, if the database is one (not in memory).
    pub fn sqlite_path(&self) -> Option<PathBuf> {
        let rest = self.database_url.strip_prefix("sqlite://").or_else(|| self.database_url.strip_prefix("sqlite:"))?;
        let path = rest.split('?').next().unwrap_or(rest);
        if path.is_empty() || path == ":memory:" || self.database_url.contains("mode=memory") {
            return None;
        }
        Some(PathBuf::from(path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_of_sqlite_urls() {
        let mut c = Config::default();
        assert_eq!(c.sqlite_path(), Some(PathBuf::from("chat.db")));
        c.database_url = "sqlite:///var/lib/chat/chat.db?mode=rwc".into();
        assert_eq!(c.sqlite_path(), Some(PathBuf::from("/var/lib/chat/chat.db")));
        c.database_url = "sqlite::memory:".into();
        assert_eq!(c.sqlite_path(), None);
    }

    #[test]
    fn the_scheme_picks_the_backend() {
        let mut c = Config::default();
        let table = [
            ("sqlite://chat.db", Some(Backend::Sqlite)),
            ("sqlite::memory:", Some(Backend::Sqlite)),
            ("postgres://chat@db:5432/chat", Some(Backend::Postgres)),
            ("postgresql://localhost/chat", Some(Backend::Postgres)),
            ("mysql://localhost/chat", None),
            ("chat.db", None),
        ];
        for (url, expected) in table {
            c.database_url = url.into();
            assert_eq!(c.backend().ok(), expected.filter(|b| b.is_built_in()), "{url}");
        }
        c.database_url = "mysql://localhost/chat".into();
        let err = c.validate().expect_err("an unknown scheme is refused").to_string();
        assert!(err.contains("postgres://"), "the error lists what works: {err}");
    }

    #[test]
    fn database_limits_must_be_positive() {
        let mut c = Config { database_max_connections: 0, ..Config::default() };
        assert!(c.validate().is_err());
        c.database_max_connections = 4;
        c.database_statement_timeout_ms = 0;
        assert!(c.validate().is_err());
        c.database_statement_timeout_ms = 100;
        assert!(c.validate().is_ok());
        c.sqlite_wal_autocheckpoint_pages = 0;
        assert!(c.validate().is_err(), "a log never checkpointed grows without a bound");
        c.sqlite_wal_autocheckpoint_pages = 1;
        c.sqlite_writer_cache_kib = 0;
        assert!(c.validate().is_err());
        c.sqlite_writer_cache_kib = 1;
        assert!(c.validate().is_ok());
    }

    #[test]
    fn the_idle_timeout_must_outlast_the_keepalive() {
        let defaults = Config::default();
        assert_eq!((defaults.keepalive_s, defaults.idle_timeout_s), (30, 75));
        let mut c = Config { keepalive_s: 30, idle_timeout_s: 30, ..Config::default() };
        let err = c.validate().expect_err("a client is closed before it could answer a ping").to_string();
        assert!(err.contains("idle_timeout_s"), "{err}");
        c.idle_timeout_s = 31;
        assert!(c.validate().is_ok());
        c.keepalive_s = 0;
        c.idle_timeout_s = 0;
        assert!(c.validate().is_ok(), "no keepalive, no idle timeout");
        assert_eq!(c.engine_config().keepalive_interval, Duration::ZERO);
        c.keepalive_s = 5;
        c.idle_timeout_s = 12;
        assert_eq!(c.engine_config().keepalive_interval, Duration::from_secs(5));
        assert_eq!(c.ws_config().idle_timeout, Duration::from_secs(12));
    }

    // figment's test jail returns its own large error type.
    #[allow(clippy::result_large_err)]
    #[test]
    fn calls_take_their_ice_servers_and_turn_secret_as_written() {
        use chat_core::IceServers as _;
        figment::Jail::expect_with(|jail| {
            let c = Config::load(None).map_err(|e| e.to_string())?;
            assert_eq!(c.engine_config().calls.ring_timeout, Duration::from_secs(30));
            let ada = chat_core::UserId::new("ada").map_err(|e| e.to_string())?;
            assert!(c.ice_config().map_err(|e| e.to_string())?.ice_servers(&ada).is_empty(), "none by default");
            jail.set_env(
                "CHAT_ICE_SERVERS",
                r#"[{"urls":"stun:s.example.org"},{"urls":["turns:t.example.org:5349"]}]"#,
            );
            jail.set_env("CHAT_TURN_SECRET", "0123456789");
            jail.set_env("CHAT_TURN_TTL_S", "60");
            jail.set_env("CHAT_CALL_RING_S", "5");
            let c = Config::load(None).map_err(|e| format!("{e:#}"))?;
            assert_eq!(c.turn_secret.as_deref(), Some("0123456789"), "a secret of digits stays a string");
            assert_eq!(c.engine_config().calls.ring_timeout, Duration::from_secs(5));
            let servers = c.ice_config().map_err(|e| e.to_string())?.ice_servers(&ada);
            assert_eq!(servers.len(), 2);
            assert!(servers[0].get("username").is_none());
            assert!(servers[1]["username"].as_str().is_some_and(|u| u.ends_with(":ada")), "{servers:?}");
            for (var, bad) in [
                ("CHAT_ICE_SERVERS", "stun:s.example.org"),
                ("CHAT_ICE_SERVERS", r#"[{"url":"stun:s.example.org"}]"#),
                ("CHAT_CALL_RING_S", "0"),
                ("CHAT_TURN_TTL_S", "0"),
            ] {
                let good = std::env::var(var).unwrap_or_default();
                jail.set_env(var, bad);
                let err = Config::load(None).expect_err("refused").to_string();
                assert!(err.to_lowercase().contains(&var[5..].to_lowercase()), "{var}={bad}: {err}");
                jail.set_env(var, good);
            }
            Ok(())
        });
    }

    // figment's test jail returns its own large error type.
    #[allow(clippy::result_large_err)]
    #[test]
    fn file_then_environment() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("chat.toml", "listen = \"127.0.0.1:9000\"\nmax_body_chars = 10\napi_key = \"k\"")?;
            jail.set_env("CHAT_MAX_BODY_CHARS", "20");
            jail.set_env("CHAT_TEST_POSTGRES_URL", "postgres://tests-only");
            let c = Config::load(Some(Path::new("chat.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(c.listen.port(), 9000);
            assert_eq!(c.max_body_chars, 20, "the environment wins over the file");
            assert_eq!(c.api_key.as_deref(), Some("k"));
            assert!(!c.dev_login, "dev login is off unless asked for");
            jail.set_env("CHAT_DEV_LOGIN", "true");
            assert!(Config::load(None).map_err(|e| e.to_string())?.ws_config().dev_login);
            assert!(!c.discord.enabled(), "the bridge is off without a token");
            jail.create_file("bad.toml", "lisen = \"x\"")?;
            assert!(Config::load(Some(Path::new("bad.toml"))).is_err(), "unknown keys are refused");
            Ok(())
        });
    }

    #[test]
    fn the_environment_is_forgiven_all_but_typos() {
        let known = Config::keys();
        assert!(known.contains("max_body_chars") && known.contains("socketio") && !known.contains("discord"));
        let env = |vars: &[&str]| {
            check_environment(
                vars.iter().map(|v| (std::ffi::OsString::from(*v), std::ffi::OsString::from("x"))),
                &known,
            )
            .map_err(|e| e.to_string())
        };
        assert_eq!(
            env(&["CHAT_URL", "CHAT_LISTEN", "CHAT_TEST_POSTGRES_URL", "CHAT_CONFIG", "PATH", "CHAT_FRONTEND_THEME"]),
            Ok(vec!["CHAT_FRONTEND_THEME".to_owned(), "CHAT_URL".to_owned()]),
            "settings are read, the rest ignored"
        );
        assert_eq!(env(&["chat_api_key", "Chat_Listen"]), Ok(vec![]), "in any case, as figment reads them");
        assert_eq!(env(&[]), Ok(vec![]), "settings are read, the rest ignored");
        for (typo, meant) in [
            ("CHAT_MAX_BODY_CHAR", "CHAT_MAX_BODY_CHARS"),
            ("CHAT_LISTN", "CHAT_LISTEN"),
            ("CHAT_DATABASEURL", "CHAT_DATABASE_URL"),
            ("CHAT_LISTEN_ADDR", "CHAT_LISTEN"),
            ("CHAT_JWT_SECRETS", "CHAT_JWT_SECRET"),
            ("CHAT_BROKER", "CHAT_BROKER_URL"),
            ("CHAT_API_KEYS", "CHAT_API_KEY"),
        ] {
            let err = env(&[typo]).expect_err(typo);
            assert!(err.contains(meant) && err.contains(typo), "{typo}: {err}");
        }
    }

    // figment's test jail returns its own large error type.
    #[allow(clippy::result_large_err)]
    #[test]
    fn unknown_variables_are_ignored_and_typos_refused_on_load() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("CHAT_URL", "https://chat.example.com");
            jail.set_env("CHAT_MAX_BODY_CHARS", "20");
            let c = Config::load(None).map_err(|e| e.to_string())?;
            assert_eq!(c.max_body_chars, 20);
            assert_eq!(c.ignored_env, ["CHAT_URL"]);
            jail.set_env("CHAT_MAX_BODY_CHAR", "30");
            let err = Config::load(None).expect_err("a typo is refused").to_string();
            assert!(err.contains("did you mean CHAT_MAX_BODY_CHARS"), "{err}");
            Ok(())
        });
    }

    // figment's test jail returns its own large error type.
    #[allow(clippy::result_large_err)]
    #[test]
    fn connection_limits_and_timers_reach_the_transport() {
        figment::Jail::expect_with(|jail| {
            let ws = Config::load(None).map_err(|e| e.to_string())?.ws_config();
            assert_eq!(
                (ws.header_timeout, ws.http_idle_timeout, ws.body_timeout),
                (Duration::from_secs(10), Duration::from_secs(60), Duration::from_secs(30))
            );
            assert_eq!((ws.max_connections_per_ip, ws.max_connections), (256, 100_000));
            jail.set_env("CHAT_HEADER_TIMEOUT_S", "3");
            jail.set_env("CHAT_HTTP_IDLE_TIMEOUT_S", "4");
            jail.set_env("CHAT_BODY_TIMEOUT_S", "5");
            jail.set_env("CHAT_MAX_CONNECTIONS_PER_IP", "7");
            jail.set_env("CHAT_MAX_CONNECTIONS", "8");
            let ws = Config::load(None).map_err(|e| e.to_string())?.ws_config();
            assert_eq!(
                (ws.header_timeout, ws.http_idle_timeout, ws.body_timeout),
                (Duration::from_secs(3), Duration::from_secs(4), Duration::from_secs(5))
            );
            assert_eq!((ws.max_connections_per_ip, ws.max_connections), (7, 8));
            for var in ["CHAT_HEADER_TIMEOUT_S", "CHAT_MAX_CONNECTIONS_PER_IP", "CHAT_MAX_CONNECTIONS"] {
                jail.set_env(var, "0");
                assert!(Config::load(None).is_err(), "{var}=0 is refused");
                jail.set_env(var, "9");
            }
            Ok(())
        });
    }

    // figment's test jail returns its own large error type.
    #[allow(clippy::result_large_err)]
    #[cfg(feature = "webhooks")]
    #[test]
    fn the_webhook_endpoint_comes_from_the_environment() {
        figment::Jail::expect_with(|jail| {
            let config = Config::load(None).map_err(|e| e.to_string())?.webhook_config().map_err(|e| e.to_string())?;
            assert_eq!(config.endpoint, None, "no endpoint unless one is set");
            assert_eq!(config.give_up_after, Duration::from_secs(86_400), "a day of retries");
            jail.set_env("CHAT_WEBHOOK_URL", "https://example.com/hooks/chat");
            let err = Config::load(None).expect_err("a URL needs its secret").to_string();
            assert!(err.contains("CHAT_WEBHOOK_SECRET"), "{err}");
            // A secret of digits only is still a string, leading zero included.
            jail.set_env("CHAT_WEBHOOK_SECRET", "0234567890123456");
            jail.set_env("CHAT_WEBHOOK_EVENTS", "message.created, support.opened");
            jail.set_env("CHAT_WEBHOOK_GIVE_UP_S", "2");
            let config =
                Config::load(None).map_err(|e| format!("{e:#}"))?.webhook_config().map_err(|e| e.to_string())?;
            let endpoint = config.endpoint.expect("the configured endpoint");
            assert_eq!(endpoint.url, "https://example.com/hooks/chat");
            assert_eq!(endpoint.secret, "0234567890123456");
            assert_eq!(
                endpoint.events,
                [chat_webhooks::EventType::MessageCreated, chat_webhooks::EventType::SupportOpened]
            );
            assert_eq!(config.give_up_after, Duration::from_secs(2));
            for (var, bad) in [
                ("CHAT_WEBHOOK_EVENTS", "message.created,message.sent"),
                ("CHAT_WEBHOOK_SECRET", "short"),
                ("CHAT_WEBHOOK_URL", "ftp://example.com/hook"),
                ("CHAT_WEBHOOK_GIVE_UP_S", "0"),
            ] {
                let good = std::env::var(var).unwrap_or_default();
                jail.set_env(var, bad);
                assert!(Config::load(None).is_err(), "{var}={bad} is refused");
                jail.set_env(var, good);
            }
            jail.set_env("CHAT_WEBHOOK_URL", "");
            let err = Config::load(None).expect_err("a secret needs its URL").to_string();
            assert!(err.contains("CHAT_WEBHOOK_URL"), "{err}");
            Ok(())
        });
    }

    // figment's test jail returns its own large error type.
    #[allow(clippy::result_large_err)]
    #[test]
    fn discord_settings_from_the_file_and_its_own_variables() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "chat.toml",
                "[discord]\ntoken = \"from-file\"\nguild_id = 1111\nforum_channel_id = 2222\n",
            )?;
            let err = Config::load(Some(Path::new("chat.toml"))).expect_err("the role id is missing").to_string();
            assert!(err.contains("DISCORD_SUPPORT_ROLE_ID"), "the error names the missing setting: {err}");
            jail.set_env("DISCORD_SUPPORT_ROLE_ID", "1300000000000000001");
            jail.set_env("DISCORD_TOKEN", "from-env");
            jail.set_env("DISCORD_PROXY_URL", "http://127.0.0.1:9");
            jail.set_env("DISCORD_SOMETHING_ELSE", "ignored");
            jail.set_env("DISCORD_ROLE_MAP", "1111=admin, 2222=lead,");
            let c = Config::load(Some(Path::new("chat.toml"))).map_err(|e| format!("{e:#}"))?;
            assert_eq!(c.discord.token.as_deref(), Some("from-env"), "the environment wins over the file");
            assert_eq!(
                (c.discord.guild_id, c.discord.forum_channel_id, c.discord.support_role_id),
                (Some(1111), Some(2222), Some(1_300_000_000_000_000_001))
            );
            assert!(!format!("{c:?}").contains("from-env"), "the token is not shown");
            #[cfg(feature = "discord")]
            {
                let bridge = c.discord_config().map_err(|e| e.to_string())?.expect("the bridge is on");
                assert_eq!(bridge.proxy_url.as_deref(), Some("http://127.0.0.1:9"));
                assert_eq!(bridge.support_role_id, 1_300_000_000_000_000_001);
                assert_eq!(bridge.role_map, [(1111, "admin".to_owned()), (2222, "lead".to_owned())]);
                for bad in ["1111", "x=admin", "1111=not a role"] {
                    jail.set_env("DISCORD_ROLE_MAP", bad);
                    // A bare number fails at loading already; the others when the bridge is set up.
                    let refused =
                        Config::load(Some(Path::new("chat.toml"))).map_or(true, |c| c.discord_config().is_err());
                    assert!(refused, "{bad:?} is refused");
                }
                jail.set_env("DISCORD_ROLE_MAP", "");
                let room = chat_core::RoomId::generate();
                jail.set_env("DISCORD_CHANNEL_MAP", format!("{room}=3333"));
                let c = Config::load(Some(Path::new("chat.toml"))).map_err(|e| format!("{e:#}"))?;
                let bridge = c.discord_config().map_err(|e| e.to_string())?.expect("the bridge is on");
                assert_eq!(bridge.channels, [(room, 3333)]);
                for bad in [format!("{room}"), "not-a-room=3333".into(), format!("{room}=2222")] {
                    jail.set_env("DISCORD_CHANNEL_MAP", &bad);
                    let refused =
                        Config::load(Some(Path::new("chat.toml"))).map_or(true, |c| c.discord_config().is_err());
                    assert!(refused, "{bad:?} is refused");
                }
                jail.set_env("DISCORD_CHANNEL_MAP", "");
                assert_eq!(bridge.max_upload_bytes, None, "unset: the guild's limit");
                jail.set_env("DISCORD_MAX_UPLOAD_BYTES", "26214400");
                jail.set_env("DISCORD_CDN_ORIGINS", "https://cdn.example/, http://127.0.0.1:9");
                let c = Config::load(Some(Path::new("chat.toml"))).map_err(|e| format!("{e:#}"))?;
                let bridge = c.discord_config().map_err(|e| e.to_string())?.expect("the bridge is on");
                assert_eq!(bridge.max_upload_bytes, Some(25 * 1024 * 1024));
                assert_eq!(bridge.cdn_origins, ["https://cdn.example", "http://127.0.0.1:9"]);
                jail.set_env("DISCORD_CDN_ORIGINS", "cdn.example");
                let refused = Config::load(Some(Path::new("chat.toml"))).map_or(true, |c| c.discord_config().is_err());
                assert!(refused, "an origin without its scheme is refused");
                jail.set_env("DISCORD_CDN_ORIGINS", "");
            }
            jail.set_env("DISCORD_GUILD_ID", "0");
            assert!(Config::load(Some(Path::new("chat.toml"))).is_err(), "an id of 0 is refused");
            jail.set_env("DISCORD_TOKEN", "");
            let c = Config::load(Some(Path::new("chat.toml"))).map_err(|e| format!("{e:#}"))?;
            assert!(!c.discord.enabled(), "an empty token leaves the bridge off");
            Ok(())
        });
    }
}

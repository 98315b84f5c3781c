//! `chat-server`: parses the command line, sets up logging, binds and runs.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use chat_core::{User, UserId};
use chat_server::{Config, LogFormat};
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

/// jemalloc, not the system allocator: after a reconnect storm glibc keeps
/// the storm's peak and fragments further with each one, where jemalloc gives
/// the pages back (docs/BENCHMARKS.md, "Reconnect storms: memory").
///
/// Where jemalloc can take the unprefixed `malloc` (Linux, the BSDs other
/// than DragonFly), it serves the C code too: SQLite allocates and frees
/// several chunks per page a batch of sends journals, and glibc's malloc cost
/// 8 % of the core in the durable-sends benchmark (docs/BENCHMARKS.md,
/// "Durable sends over WebSocket").
#[cfg(all(feature = "jemalloc", not(target_env = "msvc")))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read once before the first allocation, so before
/// `main`: freed pages go back to the OS after one second instead of ten, so
/// that a storm's peak does not linger. `MALLOC_CONF` in the environment
/// (`_RJEM_MALLOC_CONF` where jemalloc is prefixed: Apple, Android,
/// DragonFly) still overrides them. The background thread (enabled at build
/// time) does the purging, off the request path.
///
/// jemalloc declares this symbol weak, for the program to define; defining an
/// exported symbol is the one `unsafe` the workspace allows.
#[cfg(all(feature = "jemalloc", not(target_env = "msvc")))]
#[allow(unsafe_code)]
#[cfg_attr(
    any(target_vendor = "apple", target_os = "android", target_os = "dragonfly"),
    unsafe(export_name = "_rjem_malloc_conf")
)]
#[cfg_attr(
    not(any(target_vendor = "apple", target_os = "android", target_os = "dragonfly")),
    unsafe(export_name = "malloc_conf")
)]
static MALLOC_CONF: &[u8; 20] = b"dirty_decay_ms:1000\0";

#[derive(Parser)]
#[command(name = "chat-server", version, about = "The reference chat server")]
struct Cli {
    /// A TOML file with the same keys as the CHAT_* environment variables.
    #[arg(long, global = true, env = "CHAT_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve (the default).
    Serve,
    /// Print a token for a user, signed with the configured key.
    Token {
        /// The user id (the token's `sub`).
        #[arg(long)]
        user: String,
        /// Display name.
        #[arg(long)]
        name: Option<String>,
        /// A role such as `support`; repeat for several.
        #[arg(long = "role")]
        roles: Vec<String>,
        /// Lifetime: seconds, or a number with s, m, h or d.
        #[arg(long, default_value = "24h")]
        ttl: String,
    },
    /// Create or upgrade the database schema, then exit.
    Migrate,
}

fn parse_duration(text: &str) -> anyhow::Result<Duration> {
    let text = text.trim();
    let (digits, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    let n: u64 = digits.parse().with_context(|| format!("{text:?} is not a duration like 90, 15m, 24h or 7d"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => bail!("{text:?} is not a duration like 90, 15m, 24h or 7d"),
    };
    if secs == 0 {
        bail!("the duration must be positive");
    }
    Ok(Duration::from_secs(secs))
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = Config::load(cli.config.as_deref())?;
    init_logging(config.log_format);
    for variable in &config.ignored_env {
        tracing::warn!(%variable, "not a chat-server setting; ignored");
    }
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            let listener = tokio::net::TcpListener::bind(config.listen)
                .await
                .with_context(|| format!("binding {}", config.listen))?;
            tracing::info!(addr = %listener.local_addr()?, database = %chat_server::redact(&config.database_url), "listening");
            chat_server::run(listener, config, shutdown_signal()).await
        }
        Command::Token { user, name, roles, ttl } => {
            let ttl = parse_duration(&ttl)?;
            let issuer = chat_server::auth_from(&config)?
                .issuer
                .context("no signing key configured: set CHAT_JWT_SECRET or jwt_private_key_file")?;
            let id = UserId::new(user).map_err(|e| anyhow::anyhow!("--user: {e}"))?;
            let mut user = User::new(id.clone(), name.unwrap_or_else(|| id.to_string()));
            user.roles = roles;
            user.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
            let (token, _) = issuer.issue(&user, ttl).map_err(|e| anyhow::anyhow!("{e}"))?;
            println!("{token}");
            Ok(())
        }
        Command::Migrate => {
            chat_server::migrate(&config).await?;
            tracing::info!(database = %chat_server::redact(&config.database_url), "schema is up to date");
            Ok(())
        }
    }
}

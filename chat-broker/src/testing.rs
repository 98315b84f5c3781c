//! Broker servers for tests (feature `test-support`): a `nats-server` or
//! `redis-server` process of the test's own on a free loopback port, which
//! the test can stop and restart on the same port to play an outage, and
//! which is killed when dropped. This crate's conformance tests use them, and
//! so can end-to-end tests of servers built on the brokers.
//!
//! ```no_run
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use chat_broker::testing::BrokerServer;
//!
//! let Some(server) = BrokerServer::nats().await else { return }; // skipped: no nats-server
//! let broker = chat_broker::connect(&server.url(), chat_broker::Options::default()).await.unwrap();
//! server.stop().await; // the outage
//! server.restart().await; // back on the same port, answering
//! # drop(broker);
//! # }
//! ```
//!
//! When the binary is missing, `start` says so on the test's output
//! (`skipped: nats-server not found …`) and returns `None`, so that
//! `cargo test` passes on a machine without it; with `CI=true` in the
//! environment it panics instead, so that CI never skips. The binaries are
//! looked up on `PATH` and in the usual `sbin` directories, or taken from
//! `CHAT_TEST_NATS_SERVER` and `CHAT_TEST_REDIS_SERVER`.

use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a server may take to answer after it was started.
const READY_WITHIN: Duration = Duration::from_secs(10);

/// A broker server of the test's own on `127.0.0.1`: a `nats-server` (core
/// NATS only, no JetStream) or a `redis-server` (keeping nothing on disk).
#[derive(Debug)]
pub struct BrokerServer {
    process: ServerProcess,
}

impl BrokerServer {
    /// Starts a `nats-server` on a free port and returns once it answers;
    /// `None` when it is not installed (see the [module docs](self)).
    pub async fn nats() -> Option<BrokerServer> {
        Some(BrokerServer { process: ServerProcess::start(Kind::Nats, None).await? })
    }

    /// [`BrokerServer::nats`] that admits only user `chat` with `password`.
    pub async fn nats_with_password(password: &str) -> Option<BrokerServer> {
        Some(BrokerServer { process: ServerProcess::start(Kind::Nats, Some(password.to_owned())).await? })
    }

    /// Starts a `redis-server` on a free port and returns once it answers;
    /// `None` when it is not installed (see the [module docs](self)).
    pub async fn redis() -> Option<BrokerServer> {
        Some(BrokerServer { process: ServerProcess::start(Kind::Redis, None).await? })
    }

    /// [`BrokerServer::redis`] that admits only clients giving `password`.
    pub async fn redis_with_password(password: &str) -> Option<BrokerServer> {
        Some(BrokerServer { process: ServerProcess::start(Kind::Redis, Some(password.to_owned())).await? })
    }

    /// `nats://127.0.0.1:<port>` or `redis://127.0.0.1:<port>/`, with the
    /// credentials when it wants them.
    pub fn url(&self) -> String {
        self.url_with(self.process.password.as_deref())
    }

    /// The URL with other credentials (`None`: none), to try wrong ones.
    pub fn url_with(&self, password: Option<&str>) -> String {
        let port = self.process.port;
        match (self.process.kind, password) {
            (Kind::Nats, None) => format!("nats://127.0.0.1:{port}"),
            (Kind::Nats, Some(p)) => format!("nats://chat:{p}@127.0.0.1:{port}"),
            (Kind::Redis, None) => format!("redis://127.0.0.1:{port}/"),
            (Kind::Redis, Some(p)) => format!("redis://:{p}@127.0.0.1:{port}/"),
        }
    }

    /// The port it listens on, the same across restarts.
    pub fn port(&self) -> u16 {
        self.process.port
    }

    /// Kills it (an outage: connections drop, the port refuses).
    pub async fn stop(&self) {
        self.process.stop();
    }

    /// Starts it again on the same port, killing it first if it runs, and
    /// returns once it answers.
    pub async fn restart(&self) {
        self.process.restart().await;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Nats,
    Redis,
}

impl Kind {
    fn binary(self) -> &'static str {
        match self {
            Kind::Nats => "nats-server",
            Kind::Redis => "redis-server",
        }
    }

    fn env(self) -> &'static str {
        match self {
            Kind::Nats => "CHAT_TEST_NATS_SERVER",
            Kind::Redis => "CHAT_TEST_REDIS_SERVER",
        }
    }

    fn package(self) -> &'static str {
        match self {
            Kind::Nats => "nats-server",
            Kind::Redis => "redis-server",
        }
    }

    fn command(self, program: &Path, port: u16, password: Option<&str>) -> Command {
        let mut command = Command::new(program);
        let port = port.to_string();
        match (self, password) {
            (Kind::Nats, Some(p)) => command.args(["--user", "chat", "--pass", p]),
            (Kind::Redis, Some(p)) => command.args(["--requirepass", p]),
            (_, None) => &mut command,
        };
        match self {
            Kind::Nats => command.args(["-a", "127.0.0.1", "-p", &port]),
            Kind::Redis => command.args([
                "--port",
                &port,
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                &std::env::temp_dir().to_string_lossy(),
            ]),
        };
        command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        command
    }

    /// Whether the server on `port` answers as it should.
    async fn answers(self, port: u16) -> bool {
        let probe = async {
            let mut stream = TcpStream::connect(SocketAddr::from((Ipv4Addr::LOCALHOST, port))).await.ok()?;
            let mut buf = [0u8; 64];
            match self {
                // The server speaks first.
                Kind::Nats => {
                    let n = stream.read(&mut buf).await.ok()?;
                    buf[..n].starts_with(b"INFO ").then_some(())
                }
                Kind::Redis => {
                    stream.write_all(b"PING\r\n").await.ok()?;
                    let n = stream.read(&mut buf).await.ok()?;
                    // One that wants a password answers NOAUTH.
                    (buf[..n].starts_with(b"+PONG") || buf[..n].starts_with(b"-NOAUTH")).then_some(())
                }
            }
        };
        matches!(tokio::time::timeout(Duration::from_secs(1), probe).await, Ok(Some(())))
    }
}

#[derive(Debug)]
struct ServerProcess {
    kind: Kind,
    program: PathBuf,
    port: u16,
    password: Option<String>,
    child: Mutex<Option<Child>>,
}

impl ServerProcess {
    async fn start(kind: Kind, password: Option<String>) -> Option<ServerProcess> {
        let Some(program) = find(kind) else {
            let what = match std::env::var_os(kind.env()).filter(|p| !p.is_empty()) {
                Some(path) => format!("{} not found at {} ({})", kind.binary(), path.to_string_lossy(), kind.env()),
                None => format!(
                    "{} not found (on PATH, in /usr/sbin or /usr/local/sbin; or set {})",
                    kind.binary(),
                    kind.env()
                ),
            };
            if ci() {
                panic!("{what}, and CI=true: install it (Debian package {})", kind.package());
            }
            // Straight to stderr rather than through `eprintln!`, which the
            // test harness captures: the skip shows in the test's output.
            let test = std::thread::current().name().map(|n| format!("{n}: ")).unwrap_or_default();
            let _ = writeln!(std::io::stderr(), "{test}skipped: {what}");
            return None;
        };
        // A free port may be taken by someone else between our look and the
        // server's bind; try a few.
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port();
            let server = ServerProcess {
                kind,
                program: program.clone(),
                port,
                password: password.clone(),
                child: Mutex::new(None),
            };
            match server.launch().await {
                Ok(()) => return Some(server),
                Err(e) => last = e,
            }
        }
        panic!("{} did not start: {last}", kind.binary());
    }

    fn child(&self) -> std::sync::MutexGuard<'_, Option<Child>> {
        self.child.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs the server on `self.port` and waits until it answers.
    async fn launch(&self) -> Result<(), String> {
        let child = self
            .kind
            .command(&self.program, self.port, self.password.as_deref())
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", self.program.display()))?;
        *self.child() = Some(child);
        let deadline = tokio::time::Instant::now() + READY_WITHIN;
        loop {
            if self.kind.answers(self.port).await {
                return Ok(());
            }
            let exited = self.child().as_mut().and_then(|c| c.try_wait().ok().flatten());
            if let Some(status) = exited {
                *self.child() = None;
                return Err(format!("{} on port {} exited: {status}", self.kind.binary(), self.port));
            }
            if tokio::time::Instant::now() >= deadline {
                self.stop();
                return Err(format!(
                    "{} on port {} did not answer within {READY_WITHIN:?}",
                    self.kind.binary(),
                    self.port
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn stop(&self) {
        if let Some(mut child) = self.child().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    async fn restart(&self) {
        self.stop();
        // The port was ours a moment ago; a few tries cover a slow release.
        let mut last = String::new();
        for _ in 0..5 {
            match self.launch().await {
                Ok(()) => return,
                Err(e) => last = e,
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("{} did not restart: {last}", self.kind.binary());
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Whether this is a CI run, where a missing server is a failure.
fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

fn find(kind: Kind) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(kind.env()).filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        return path.is_file().then_some(path);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/usr/local/bin", "/usr/bin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(kind.binary()))
        .find(|candidate| candidate.is_file())
}

/// A loopback port nobody listened on a moment ago.
fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .unwrap_or_else(|e| panic!("no free loopback port: {e}"))
}

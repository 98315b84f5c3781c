//! The accept loop: serves a [`Router`] on a TCP listener, HTTP/1.1 with
//! upgrades, with the limits a public listener needs and that `axum::serve`
//! does not have.
//!
//! - **Caps, counted at accept.** Before any work is done for a connection,
//!   it takes a slot of the process ([`WsConfig::max_connections`]) and one
//!   of its client address ([`WsConfig::max_connections_per_ip`]); both are
//!   held until the connection ends, a WebSocket's included, since the slot
//!   travels with the socket through the upgrade. A connection past a cap
//!   gets a one-line answer (503 or 429) and is closed, without reaching the
//!   router: a WebSocket is refused before its upgrade.
//! - **Timers while HTTP.** A request's headers must arrive within
//!   [`WsConfig::header_timeout`] of the accept, or of the first byte of a
//!   later request; a keep-alive connection waiting for its next request, or
//!   a request that moves no byte, is closed after
//!   [`WsConfig::http_idle_timeout`]; a request body must be complete within
//!   [`WsConfig::body_timeout`] (the router's layer, see [`crate::router`]).
//!   An upgraded connection leaves all three behind: the WebSocket has its
//!   own keepalive and idle timeout.
//!
//! The client address is always the TCP peer's: a forwarded header is not
//! read yet when a connection is accepted, and could not be trusted before
//! the request anyway. Behind a reverse proxy the per-address cap therefore
//! counts the proxy's connections to this server.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::ConnectInfo;
use axum::http::{HeaderValue, Request, Response, StatusCode, header};
use chat_core::ErrorCode;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore, watch};
use tokio::time::{Instant, sleep, sleep_until, timeout};
use tower::ServiceExt;

use crate::config::WsConfig;

/// Most connections being refused at once. A refusal reads the request (for
/// at most [`REFUSAL_WAIT`]) so that the client gets its answer rather than
/// a reset; past this many, refused connections are closed at once.
const MAX_REFUSING: usize = 64;

/// The longest a refused connection is kept waiting for its request.
const REFUSAL_WAIT: Duration = Duration::from_secs(2);

/// Serves `app` on `listener` until `shutdown` resolves, with the limits of
/// `config` (see the module docs). Then it stops accepting, lets every
/// connection finish the request it is serving (idle ones close at once),
/// and returns once they have; upgraded connections are not waited for,
/// their sessions end with the engine.
///
/// Requests carry the peer address as `ConnectInfo<SocketAddr>`, as with
/// axum's `into_make_service_with_connect_info`.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    config: &WsConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> io::Result<()> {
    let limits = Arc::new(ConnectionLimits::new(config.max_connections_per_ip, config.max_connections));
    let timers = Timers { header: config.header_timeout, idle: config.http_idle_timeout };
    let refusing = Arc::new(Semaphore::new(MAX_REFUSING));
    // Connections watch `stop` to shut down gracefully; the end of this
    // function waits until every connection task has dropped its clone of
    // `running`.
    let (stop, stopping) = watch::channel(false);
    let (done, running) = watch::channel(());
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(err) if is_connection_error(&err) => continue,
            Err(err) => {
                // Out of file descriptors, most likely: wait for some to be
                // freed rather than spin.
                tracing::error!(error = %err, "accepting a connection failed; trying again in a second");
                tokio::select! {
                    () = &mut shutdown => break,
                    () = sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        let slot = match limits.acquire(peer.ip()) {
            Ok(slot) => slot,
            Err(refusal) => {
                tracing::debug!(%peer, ?refusal, "connection refused");
                if let Ok(permit) = refusing.clone().try_acquire_owned() {
                    let wait = timers.header.min(REFUSAL_WAIT);
                    tokio::spawn(async move {
                        refuse(stream, refusal, wait).await;
                        drop(permit);
                    });
                }
                continue;
            }
        };
        // Frames are small and latency matters more than packet count.
        if let Err(err) = stream.set_nodelay(true) {
            tracing::debug!(error = %err, "TCP_NODELAY not set");
        }
        let connection = connection(stream, peer, slot, app.clone(), timers, stopping.clone());
        let running = running.clone();
        tokio::spawn(async move {
            connection.await;
            drop(running);
        });
    }
    drop(listener);
    let _ = stop.send(true);
    drop(running);
    done.closed().await;
    Ok(())
}

/// Errors of one connection that `accept` reports; the listener is fine.
fn is_connection_error(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
    )
}

#[derive(Debug, Clone, Copy)]
struct Timers {
    header: Duration,
    idle: Duration,
}

/// Serves one accepted connection until it closes, is upgraded, times out,
/// or finishes its request after the server began to stop.
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    slot: Slot,
    app: Router,
    timers: Timers,
    mut stopping: watch::Receiver<bool>,
) {
    let activity = Arc::new(Activity::new(slot));
    let io = TokioIo::new(WatchedIo { inner: stream, activity: activity.clone() });
    let service_activity = activity.clone();
    let service = service_fn(move |mut request: Request<Incoming>| {
        service_activity.request_started();
        request.extensions_mut().insert(ConnectInfo(peer));
        let response = app.clone().oneshot(request);
        let activity = service_activity.clone();
        async move {
            let response = response.await.unwrap_or_else(|never| match never {});
            Ok::<_, Infallible>(response.map(|body| WatchedBody { inner: body, activity: Some(activity) }))
        }
    });
    // The timers are the watchdog's, not hyper's: hyper's header timer also
    // runs while a keep-alive connection waits for its next request, which
    // would make the idle timeout the header timeout.
    let conn = http1::Builder::new().header_read_timeout(None).serve_connection(io, service).with_upgrades();
    let mut conn = std::pin::pin!(conn);
    let watchdog = watchdog(&activity, timers);
    let mut watchdog = std::pin::pin!(watchdog);
    let mut graceful = false;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(err) = result {
                    tracing::debug!(%peer, error = %err, "HTTP connection failed");
                }
                break;
            }
            why = &mut watchdog => {
                tracing::debug!(%peer, why, "HTTP connection closed");
                break;
            }
            _ = stopping.wait_for(|stop| *stop), if !graceful => {
                graceful = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
    // Upgraded, or closed: either way the socket no longer needs watching.
    activity.phase.store(DONE, Ordering::Relaxed);
}

/// Waits for its head's first byte, or for the connection to open.
const WAITING: u8 = 0;
/// Reading a head: from the accept, or from the first byte of a later request.
const HEAD: u8 = 1;
/// Serving a request, from its complete head to the end of its response.
const BUSY: u8 = 2;
/// Upgraded or closed.
const DONE: u8 = 3;

/// Where one HTTP connection is, as its socket and its service see it.
/// Shared by the socket wrapper (bytes in and out), the service (requests
/// and the ends of their responses) and the watchdog that times each phase.
/// It holds the connection's [`Slot`]: the socket wrapper keeps it, through
/// an upgrade too, until the socket is closed.
#[derive(Debug)]
struct Activity {
    phase: AtomicU8,
    /// Bytes moved while [`BUSY`], since the watchdog last looked.
    progress: AtomicBool,
    /// Wakes the watchdog when the phase changes.
    changed: Notify,
    _slot: Slot,
}

impl Activity {
    fn new(slot: Slot) -> Self {
        // A new connection reads its first head at once: its header timer
        // runs from the accept.
        Activity { phase: AtomicU8::new(HEAD), progress: AtomicBool::new(false), changed: Notify::new(), _slot: slot }
    }

    fn set(&self, from: u8, to: u8) {
        if self.phase.compare_exchange(from, to, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
            self.changed.notify_one();
        }
    }

    fn bytes_read(&self) {
        match self.phase.load(Ordering::Relaxed) {
            WAITING => self.set(WAITING, HEAD),
            BUSY => self.progress.store(true, Ordering::Relaxed),
            _ => {}
        }
    }

    fn bytes_written(&self) {
        if self.phase.load(Ordering::Relaxed) == BUSY {
            self.progress.store(true, Ordering::Relaxed);
        }
    }

    fn request_started(&self) {
        self.phase.store(BUSY, Ordering::Release);
        self.changed.notify_one();
    }

    fn response_ended(&self) {
        self.set(BUSY, WAITING);
    }
}

/// Resolves when the connection has spent too long in one phase, with why.
async fn watchdog(activity: &Activity, timers: Timers) -> &'static str {
    let mut phase = activity.phase.load(Ordering::Acquire);
    let mut since = Instant::now();
    loop {
        let changed = activity.changed.notified();
        let now = activity.phase.load(Ordering::Acquire);
        if now != phase {
            phase = now;
            since = Instant::now();
            activity.progress.store(false, Ordering::Relaxed);
        }
        let limit = if phase == HEAD { timers.header } else { timers.idle };
        tokio::select! {
            () = changed => {}
            () = sleep_until(since + limit) => {
                if activity.phase.load(Ordering::Acquire) != phase {
                    continue;
                }
                match phase {
                    HEAD => return "the request's headers did not arrive in time",
                    WAITING => return "idle keep-alive",
                    // A request that still moves bytes goes on.
                    BUSY if activity.progress.swap(false, Ordering::Relaxed) => since = Instant::now(),
                    BUSY => return "a request moved no byte for the idle timeout",
                    _ => std::future::pending::<()>().await,
                }
            }
        }
    }
}

/// The socket of one connection: tells [`Activity`] of bytes moved. After
/// an upgrade it is the WebSocket's socket, and its [`Activity`] only keeps
/// the connection's slot.
struct WatchedIo {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for WatchedIo {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.bytes_read();
        }
        polled
    }
}

impl AsyncWrite for WatchedIo {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(1..))) {
            self.activity.bytes_written();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(1..))) {
            self.activity.bytes_written();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A response body that tells [`Activity`] when it is done: written to the
/// end, or dropped.
struct WatchedBody {
    inner: Body,
    activity: Option<Arc<Activity>>,
}

impl WatchedBody {
    fn ended(&mut self) {
        if let Some(activity) = self.activity.take() {
            activity.response_ended();
        }
    }
}

impl Drop for WatchedBody {
    fn drop(&mut self) {
        self.ended();
    }
}

impl hyper::body::Body for WatchedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None)) {
            self.ended();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Why a connection was refused at accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// The process holds [`WsConfig::max_connections`].
    Full,
    /// The address holds [`WsConfig::max_connections_per_ip`].
    TooManyFromAddress,
}

/// Answers one request of a refused connection with 503 or 429 and closes
/// it, waiting at most `wait` for the request.
async fn refuse(stream: TcpStream, refusal: Refusal, wait: Duration) {
    let service = service_fn(move |_: Request<Incoming>| async move {
        let (status, code, message) = match refusal {
            Refusal::Full => {
                (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Unavailable, "the server is at its connection limit")
            }
            Refusal::TooManyFromAddress => {
                (StatusCode::TOO_MANY_REQUESTS, ErrorCode::RateLimited, "too many connections from this address")
            }
        };
        let body = serde_json::json!({"error": {"code": code.as_str(), "message": message}}).to_string();
        let mut response = Response::new(Body::from(body));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        Ok::<_, Infallible>(response)
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(wait)
        .keep_alive(false)
        .serve_connection(TokioIo::new(stream), service);
    let _ = timeout(wait * 2, conn).await;
}

/// Open connections, per client address and in all. An address has an
/// entry only while it has open connections, so the map holds at most
/// `total` entries.
#[derive(Debug)]
struct ConnectionLimits {
    per_address: usize,
    total: usize,
    open: AtomicUsize,
    by_address: Mutex<HashMap<IpAddr, usize>>,
}

impl ConnectionLimits {
    fn new(per_address: usize, total: usize) -> Self {
        ConnectionLimits { per_address, total, open: AtomicUsize::new(0), by_address: Mutex::new(HashMap::new()) }
    }

    /// A slot for a connection from `ip`, held until the [`Slot`] is dropped.
    fn acquire(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, Refusal> {
        if self.open.fetch_add(1, Ordering::AcqRel) >= self.total {
            self.open.fetch_sub(1, Ordering::AcqRel);
            return Err(Refusal::Full);
        }
        let address = address_key(ip);
        let mut by_address = self.by_address.lock().unwrap_or_else(|e| e.into_inner());
        let count = by_address.entry(address).or_insert(0);
        if *count >= self.per_address {
            drop(by_address);
            self.open.fetch_sub(1, Ordering::AcqRel);
            return Err(Refusal::TooManyFromAddress);
        }
        *count += 1;
        Ok(Slot { limits: self.clone(), address })
    }

    fn release(&self, address: IpAddr) {
        let mut by_address = self.by_address.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = by_address.get_mut(&address) {
            *count -= 1;
            if *count == 0 {
                by_address.remove(&address);
            }
        }
        drop(by_address);
        self.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What one client address is counted as: IPv4 addresses (also when mapped
/// into IPv6) one by one, IPv6 addresses by their /64, which one host
/// usually has whole.
fn address_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(v6.to_bits() & !u128::from(u64::MAX))),
        v4 => v4,
    }
}

/// One connection's place in [`ConnectionLimits`]; freed when dropped.
#[derive(Debug)]
struct Slot {
    limits: Arc<ConnectionLimits>,
    address: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.limits.release(self.address);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_capped_per_address_and_in_all_and_freed_on_drop() {
        let limits = Arc::new(ConnectionLimits::new(2, 3));
        let a: IpAddr = "192.0.2.1".parse().expect("ip");
        let b: IpAddr = "192.0.2.2".parse().expect("ip");
        let first = limits.acquire(a).expect("a slot");
        let second = limits.acquire(a).expect("a slot");
        assert_eq!(limits.acquire(a).err(), Some(Refusal::TooManyFromAddress));
        let third = limits.acquire(b).expect("a slot");
        assert_eq!(limits.acquire(b).err(), Some(Refusal::Full));
        drop(first);
        assert_eq!(limits.open.load(Ordering::Relaxed), 2);
        let again = limits.acquire(a).expect("a freed slot");
        drop((second, third, again));
        assert_eq!(limits.open.load(Ordering::Relaxed), 0);
        let by_address = limits.by_address.lock().expect("lock");
        assert!(by_address.is_empty(), "no entry outlives its connections: {by_address:?}");
    }

    #[test]
    fn ipv6_addresses_count_per_64_and_mapped_ipv4_as_ipv4() {
        let limits = Arc::new(ConnectionLimits::new(1, 10));
        let one: IpAddr = "2001:db8:1:2::1".parse().expect("ip");
        let same_64: IpAddr = "2001:db8:1:2:ffff::9".parse().expect("ip");
        let other_64: IpAddr = "2001:db8:1:3::1".parse().expect("ip");
        let _one = limits.acquire(one).expect("a slot");
        assert_eq!(limits.acquire(same_64).err(), Some(Refusal::TooManyFromAddress));
        let _other = limits.acquire(other_64).expect("another /64");
        let _v4 = limits.acquire("198.51.100.7".parse().expect("ip")).expect("a slot");
        let mapped: IpAddr = "::ffff:198.51.100.7".parse().expect("ip");
        assert_eq!(limits.acquire(mapped).err(), Some(Refusal::TooManyFromAddress));
    }
}

//! Brokers for the chat toolkit: the processes of one chat server talk to
//! each other over NATS (feature `nats`) or Redis pub/sub (feature `redis`).
//!
//! Each adapter implements [`chat_core::Broker`]: a process subscribes to the
//! [`Topic`]s it serves, publishes each event once to its topic, and hears
//! from the broker when something may have been lost
//! ([`BrokerSink::resubscribed`](chat_core::BrokerSink::resubscribed),
//! [`BrokerSink::lost`](chat_core::BrokerSink::lost)); the engine fills such
//! gaps from the store, so plain at-most-once pub/sub is all either adapter
//! offers. [`connect`] picks the adapter by the URL's scheme, so a server can
//! take the broker from its configuration:
//!
//! ```no_run
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), chat_core::Error> {
//! use chat_broker::Options;
//!
//! let broker = chat_broker::connect("nats://127.0.0.1:4222", Options::default()).await?;
//! // Hand it to the engine (`Engine::builder(store).broker(broker)`), which
//! // starts it. Connecting never fails because the server is down: the
//! // broker starts degraded and keeps trying.
//! # let _ = broker;
//! # Ok(())
//! # }
//! ```
//!
//! A scheme this build has no adapter for is refused with a message that
//! names the feature:
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let refused = chat_broker::connect("amqp://127.0.0.1", chat_broker::Options::default()).await;
//! assert_eq!(refused.err().map(|e| e.code()), Some(chat_core::ErrorCode::Invalid));
//! # }
//! ```
//!
//! Every topic becomes the NATS subject or Redis channel
//! `{prefix}.{topic name}` ([`Options::prefix`], `chat` by default; see
//! [`Topic::name`]), so several chat servers can share one broker server
//! under different prefixes.
//!
//! # What the adapters promise, and how
//!
//! Both adapters pass the conformance suite of `chat_core::testing::broker`
//! against a real server (`tests/conformance.rs`, which kills and restarts
//! it): no echo, interest, order per publisher, `subscribe` active on
//! return, outages reported within seconds and recovered without a new
//! subscribe call. Every call is bounded by [`Options::timeout`]; while the
//! server is away, `publish` and `subscribe` fail at once as `unavailable`
//! and nothing is queued, so memory stays bounded. A connection that dies
//! without a word (a dropped route, a frozen server) is noticed by pings
//! within about three [`Options::keepalive`] intervals.
//!
//! ## NATS ([`NatsBroker`], async-nats 0.52)
//!
//! What we found, in its source and its tracker:
//!
//! - **Subscriptions survive reconnects**, as in every NATS client
//!   ([nats-server#193], [nats.go#288]): the connection task keeps them and
//!   sends every SUB again in `handle_reconnect`. But it does so *after*
//!   `Event::Connected`: the connector sends the event the moment the
//!   handshake succeeds, and the callback runs on another task, so a
//!   callback may run before a single SUB went out.
//! - **`Client::flush` is not a round trip.** It waits until the client's
//!   buffer is written to the socket, not for the server's PONG (unlike the
//!   Go client's `Flush`, [nats.go#256]; async-nats's flush is what other
//!   clients call a buffer flush, [nats.java#377]). The server reads each
//!   connection on its own, so a publication another process makes right
//!   after our flush can be routed before our SUB is read. `subscribe` and
//!   `publish` must return only once the server has what they sent, so this
//!   adapter *syncs* instead: a request on the same connection to a subject
//!   that only this broker's second, responder connection subscribes to
//!   (`_CHAT_SYNC.<instance id>`); its answer, or the server's own
//!   `503 no responders` while the responder is away, comes after the server
//!   handled everything sent before it. The responder, rather than relying on
//!   `no responders` alone, keeps a debugging `nats sub '>'` from swallowing
//!   every probe. `resubscribed` is said after such a sync following a
//!   reconnect (a supervisor task notices reconnects by the client's
//!   `connects` counter, not only by events, which async-nats drops when its
//!   event queue is full).
//! - **Slow consumers**: when a subscriber's buffer is full async-nats drops
//!   the message and sends `Event::SlowConsumer` for every drop
//!   ([nats.rs#444]; the flood is what [vector#24230] had to tame). The
//!   callback only sets a flag; the supervisor turns it into one
//!   [`BrokerSink::lost`](chat_core::BrokerSink::lost) per tick. A server that
//!   finds us too slow closes the connection, which is a reconnect like any
//!   other.
//! - **While disconnected, publications queue** in the client's command
//!   channel and go out after the reconnect. `publish` refuses while the
//!   client is not connected instead, so a failed publish is lost rather
//!   than late, and the channel (bounded) never fills with stale events.
//!
//! - **Credentials in the URL are parsed, not sent**: async-nats reads
//!   `nats://user:password@host` into its server address but builds CONNECT
//!   from the options alone, so a server that wants a password would refuse
//!   us forever. The adapter reads them from the URL and sets them
//!   (`user:password`, or a lone `token@`), tested against a server that
//!   wants one.
//!
//! Settings: `no_echo` (our publications never come back to us),
//! `retry_on_initial_connect` (connecting and `start` work with the server
//! down), a ping interval of [`Options::keepalive`] (async-nats closes the
//! connection after two unanswered pings), bounded command and subscription
//! capacities, backoff from 100 ms to [`Options::max_reconnect_delay`]. One
//! task per subscribed topic forwards into the sink; dropping its
//! `Subscriber` unsubscribes. The crate builds async-nats without JetStream,
//! KV, object store, nkeys and WebSockets; TLS (`tls://`) uses rustls with
//! ring. Permissions: publish to `{prefix}.>` and `_CHAT_SYNC.>`, subscribe to
//! `{prefix}.>`, `_CHAT_SYNC.>` and `_INBOX.>`.
//!
//! ## Redis ([`RedisBroker`], redis-rs 1.8)
//!
//! What we found, in its source and its tracker:
//!
//! - **Nothing resubscribes by itself** on the RESP2 pub/sub connection
//!   (`aio::PubSub`): when the socket ends, its stream ends, and that is all.
//!   `ConnectionManager` cannot carry RESP2 pub/sub ([redis-rs#1059],
//!   [redis-rs#362]); it resubscribes only over RESP3 with a push sender, an
//!   opt-in added later ([redis-rs#1408]), and it reconnects on the next
//!   request or a disconnect push, never telling us when the subscriptions
//!   are back.
//! - **Timeouts are ours to set**: a request can wait on a connection that is
//!   not broken yet but no longer answers ([redis-rs#1541]).
//! - **Slow consumers**: Redis never drops a pub/sub message quietly; past
//!   `client-output-buffer-limit pubsub` it closes the connection (see
//!   [fred.rs#367]). redis-rs's pub/sub task reads every message off the
//!   socket into an unbounded channel at once, so that limit is reached only
//!   when this process is starved; the adapter's reading task hands each
//!   message to the sink without waiting (the sink must not block).
//! - **Redis echoes**: a publication reaches the publisher's own
//!   subscriptions too.
//!
//! So the adapter owns the reconnect loop: one task owns a dedicated pub/sub
//! connection (`get_async_pubsub().split()`), keeps the wanted channels, and
//! on any error, end of stream or unanswered PING (every
//! [`Options::keepalive`]) drops it, reconnects with backoff, SUBSCRIBEs the
//! whole set, and only then calls `resubscribed`. Publishing goes over a
//! separate multiplexed connection, one pipeline of PUBLISH per batch, whose
//! failure also makes the task start over. Every payload is framed with the
//! adapter instance's random 16-byte id, and the reader drops its own. The
//! connection-manager feature is not used.
//!
//! [nats-server#193]: https://github.com/nats-io/nats-server/issues/193
//! [nats.go#288]: https://github.com/nats-io/nats.go/issues/288
//! [nats.go#256]: https://github.com/nats-io/nats.go/issues/256
//! [nats.java#377]: https://github.com/nats-io/nats.java/issues/377
//! [nats.rs#444]: https://github.com/nats-io/nats.rs/pull/444
//! [vector#24230]: https://github.com/vectordotdev/vector/pull/24230
//! [redis-rs#1059]: https://github.com/redis-rs/redis-rs/issues/1059
//! [redis-rs#362]: https://github.com/redis-rs/redis-rs/issues/362
//! [redis-rs#1408]: https://github.com/redis-rs/redis-rs/pull/1408
//! [redis-rs#1541]: https://github.com/redis-rs/redis-rs/issues/1541
//! [fred.rs#367]: https://github.com/aembke/fred.rs/issues/367
//!
//! # Tests
//!
//! The feature `test-support` adds [`testing`]: `nats-server` and
//! `redis-server` processes on loopback ports of their own, which tests stop
//! and restart to play an outage.

use std::sync::Arc;
use std::time::Duration;

use chat_core::Broker;
#[cfg(any(feature = "nats", feature = "redis"))]
use chat_core::Topic;

pub use error::{Error, Result};
#[cfg(feature = "nats")]
pub use nats::NatsBroker;
#[cfg(feature = "redis")]
pub use redis::RedisBroker;

mod error;
#[cfg(feature = "nats")]
mod nats;
#[cfg(feature = "redis")]
mod redis;
#[cfg(feature = "test-support")]
pub mod testing;

/// Settings shared by both adapters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Put, with a dot, in front of every topic name to make its NATS
    /// subject or Redis channel. Dot-separated words of `[A-Za-z0-9_-]`;
    /// `chat` by default. Servers that share a broker server need different
    /// prefixes; the processes of one server need the same.
    pub prefix: String,
    /// The longest a `publish` or `subscribe` (and a connection attempt) may
    /// take before it fails as `unavailable`. 3 s by default.
    pub timeout: Duration,
    /// How often an idle connection is pinged; a connection lost without a
    /// word shows within about three of these. 1.5 s by default.
    pub keepalive: Duration,
    /// The longest wait between reconnect attempts, which start at once, then
    /// wait 100 ms and double. 2 s by default.
    pub max_reconnect_delay: Duration,
    /// The client name the broker server shows for this process's
    /// connections, followed by a random instance id. `chat` by default.
    pub name: String,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            prefix: "chat".to_owned(),
            timeout: Duration::from_secs(3),
            keepalive: Duration::from_millis(1500),
            max_reconnect_delay: Duration::from_secs(2),
            name: "chat".to_owned(),
        }
    }
}

impl Options {
    /// Checks the settings; the text of the error says which is wrong.
    pub fn validate(&self) -> Result<()> {
        let word_ok = |w: &str| !w.is_empty() && w.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if self.prefix.len() > 64 || !self.prefix.split('.').all(word_ok) {
            return Err(Error::Config(format!(
                "broker prefix {:?} must be dot-separated words of A-Z, a-z, 0-9, _ and -, at most 64 bytes",
                self.prefix
            )));
        }
        if self.name.is_empty() || self.name.len() > 64 || !self.name.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(Error::Config(format!(
                "broker client name {:?} must be 1 to 64 printable ASCII bytes",
                self.name
            )));
        }
        for (what, value) in [
            ("timeout", self.timeout),
            ("keepalive", self.keepalive),
            ("max_reconnect_delay", self.max_reconnect_delay),
        ] {
            if value.is_zero() {
                return Err(Error::Config(format!("broker {what} must be more than zero")));
            }
        }
        Ok(())
    }
}

/// Makes the broker for `url`, chosen by its scheme: `nats://` or `tls://`
/// (feature `nats`), `redis://` or `redis+unix://` (feature `redis`). The
/// broker is not started; the engine starts it. A broker server that is down
/// is not an error (the broker starts degraded and keeps trying); a
/// malformed URL, an unknown scheme or one whose feature this build lacks is
/// `invalid`.
pub async fn connect(url: &str, options: Options) -> Result<Arc<dyn Broker>, chat_core::Error> {
    options.validate()?;
    let scheme = url.split_once("://").map(|(scheme, _)| scheme.to_ascii_lowercase()).unwrap_or_default();
    match scheme.as_str() {
        "nats" | "tls" => connect_nats(url, options).await,
        "redis" | "redis+unix" => connect_redis(url, options).await,
        "rediss" => Err(chat_core::Error::invalid(
            "rediss:// (Redis over TLS) is not built into chat-broker; use redis:// on a trusted network",
        )),
        "" => Err(chat_core::Error::invalid(
            "the broker URL needs a scheme: nats:// (feature `nats`) or redis:// (feature `redis`)",
        )),
        other => Err(chat_core::Error::invalid(format!(
            "unknown broker URL scheme {other:?}: expected nats:// (feature `nats`) or redis:// (feature `redis`)"
        ))),
    }
}

#[cfg(feature = "nats")]
async fn connect_nats(url: &str, options: Options) -> Result<Arc<dyn Broker>, chat_core::Error> {
    Ok(Arc::new(NatsBroker::connect(url, options).await?))
}

#[cfg(not(feature = "nats"))]
async fn connect_nats(_url: &str, _options: Options) -> Result<Arc<dyn Broker>, chat_core::Error> {
    Err(chat_core::Error::invalid("a nats:// broker needs chat-broker's `nats` feature, which this build lacks"))
}

#[cfg(feature = "redis")]
async fn connect_redis(url: &str, options: Options) -> Result<Arc<dyn Broker>, chat_core::Error> {
    Ok(Arc::new(RedisBroker::connect(url, options).await?))
}

#[cfg(not(feature = "redis"))]
async fn connect_redis(_url: &str, _options: Options) -> Result<Arc<dyn Broker>, chat_core::Error> {
    Err(chat_core::Error::invalid("a redis:// broker needs chat-broker's `redis` feature, which this build lacks"))
}

/// The NATS subject or Redis channel of a topic.
#[cfg(any(feature = "nats", feature = "redis"))]
fn subject(prefix: &str, topic: &Topic) -> String {
    format!("{prefix}.{}", topic.name())
}

/// Waits between reconnect attempts: none before the first retry, then
/// 100 ms doubling up to `max`. `attempts` counts the attempt about to be
/// made, from 1.
#[cfg(any(feature = "nats", feature = "redis"))]
fn backoff(attempts: usize, max: Duration) -> Duration {
    if attempts <= 1 {
        return Duration::ZERO;
    }
    let exp = u32::try_from(attempts - 2).unwrap_or(u32::MAX).min(16);
    Duration::from_millis(100u64.saturating_mul(1 << exp)).min(max)
}

/// 16 random bytes that tell this broker instance apart from every other.
#[cfg(any(feature = "nats", feature = "redis"))]
fn random_id() -> [u8; 16] {
    let mut id = [0u8; 16];
    if getrandom::fill(&mut id).is_err() {
        // No system randomness (never seen on a supported system): the time,
        // the process and a counter are unique enough to tell instances apart.
        use std::sync::atomic::{AtomicU64, Ordering};
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
        id[..8].copy_from_slice(&(nanos as u64).to_le_bytes());
        let rest = (u64::from(std::process::id()) << 32) ^ COUNTER.fetch_add(1, Ordering::Relaxed);
        id[8..].copy_from_slice(&rest.to_le_bytes());
    }
    id
}

/// [`random_id`] in hex, for names and subjects.
#[cfg(feature = "nats")]
fn instance_id() -> String {
    use std::fmt::Write as _;
    random_id().iter().fold(String::with_capacity(32), |mut hex, b| {
        let _ = write!(hex, "{b:02x}");
        hex
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chat_core::ErrorCode;

    #[tokio::test]
    async fn schemes_pick_an_adapter_or_say_what_is_missing() {
        for (url, needle) in [
            ("amqp://127.0.0.1:5672", "unknown broker URL scheme \"amqp\""),
            ("127.0.0.1:4222", "needs a scheme"),
            ("rediss://127.0.0.1:6379", "not built into chat-broker"),
        ] {
            let err = connect(url, Options::default()).await.err().expect("refused");
            assert_eq!(err.code(), ErrorCode::Invalid, "{url}");
            assert!(err.to_string().contains(needle), "{url}: {err}");
        }
        #[cfg(not(feature = "nats"))]
        {
            let err = connect("nats://127.0.0.1:1", Options::default()).await.err().expect("refused");
            assert!(err.to_string().contains("`nats` feature"), "{err}");
        }
        #[cfg(not(feature = "redis"))]
        {
            let err = connect("redis://127.0.0.1:1", Options::default()).await.err().expect("refused");
            assert!(err.to_string().contains("`redis` feature"), "{err}");
        }
    }

    #[test]
    fn prefixes_are_checked() {
        for ok in ["chat", "chat.eu-1", "a_b.c"] {
            let options = Options { prefix: ok.into(), ..Options::default() };
            assert!(options.validate().is_ok(), "{ok}");
        }
        for bad in ["", "chat.", ".chat", "a..b", "chat.*", "chat.>", "a b", "ü", &"a".repeat(65)] {
            let options = Options { prefix: bad.into(), ..Options::default() };
            assert!(matches!(options.validate(), Err(Error::Config(_))), "{bad:?}");
        }
        let options = Options { timeout: Duration::ZERO, ..Options::default() };
        assert!(options.validate().is_err());
    }

    #[cfg(any(feature = "nats", feature = "redis"))]
    #[test]
    fn backoff_starts_at_once_doubles_and_stops_at_the_maximum() {
        let max = Duration::from_secs(2);
        let delays: Vec<u128> = (1..=8).map(|a| backoff(a, max).as_millis()).collect();
        assert_eq!(delays, [0, 100, 200, 400, 800, 1600, 2000, 2000]);
        assert_eq!(backoff(usize::MAX, max), max);
    }

    #[cfg(any(feature = "nats", feature = "redis"))]
    #[test]
    fn instance_ids_differ() {
        assert_ne!(random_id(), random_id());
    }
}

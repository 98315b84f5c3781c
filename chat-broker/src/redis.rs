//! The Redis adapter: Redis pub/sub through redis-rs (feature `redis`).
//!
//! Two connections per process: a dedicated pub/sub connection, owned by one
//! driver task that (re)connects with backoff, SUBSCRIBEs every wanted
//! channel, reads the messages into the sink and PINGs to notice a silent
//! loss; and a multiplexed connection for publishing, one pipeline per batch.
//! The driver makes both and drops both whenever either fails, so that
//! "connected" always means both are up and every subscription is active. See
//! the [crate docs](crate) for why each choice was made.

use std::collections::HashSet;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use ::redis::aio::{MultiplexedConnection, PubSubSink, PubSubStream};
use ::redis::{AsyncConnectionConfig, Msg, RedisError};
use async_trait::async_trait;
use bytes::Bytes;
use chat_core::{Broker, BrokerSink, Topic};
use futures_util::StreamExt;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use crate::error::{Error, Result};
use crate::{Options, backoff};

/// The length of the instance id that starts every payload this adapter
/// publishes.
const ID_LEN: usize = 16;

/// A [`Broker`] on a Redis server. Made by [`crate::connect`] or
/// [`RedisBroker::connect`].
pub struct RedisBroker {
    inner: Arc<Inner>,
}

struct Inner {
    client: ::redis::Client,
    prefix: String,
    /// Redis delivers a publication to every subscriber, the publisher's own
    /// pub/sub connection included; this id, in front of every payload,
    /// tells our own publications apart.
    id: [u8; ID_LEN],
    options: Options,
    sink: OnceLock<Arc<dyn BrokerSink>>,
    state: Mutex<State>,
    /// Serialises everything that SUBSCRIBEs or UNSUBSCRIBEs (`subscribe`,
    /// `unsubscribe`, the resubscription after a connect), so that the
    /// server's subscriptions follow the order of the calls and a connect
    /// never misses a topic added meanwhile.
    ops: tokio::sync::Mutex<()>,
    failed_attempts: AtomicU64,
    /// Bumped whenever the driver connects, fails or loses its connection:
    /// wakes a `start` waiting for the first attempt.
    progress: watch::Sender<u64>,
    driver: Mutex<Option<JoinHandle<()>>>,
    stopped: AtomicBool,
}

#[derive(Default)]
struct State {
    /// The wanted channels, whether or not the server has them right now.
    channels: HashSet<String>,
    /// The current connection, once every wanted channel is subscribed on it.
    conn: Option<Conn>,
    /// `start` returned: from now on a connect is news for the sink
    /// ([`BrokerSink::resubscribed`]).
    start_returned: bool,
}

/// One connection's handles, shared by the calls that use it.
#[derive(Clone)]
struct Conn {
    subscriptions: PubSubSink,
    publisher: MultiplexedConnection,
    /// Ends this connection: the driver drops it and connects anew. One per
    /// connection, so that a failure of an old one cannot end a new one.
    kill: Arc<Notify>,
}

impl Conn {
    fn is(&self, other: &Conn) -> bool {
        Arc::ptr_eq(&self.kill, &other.kill)
    }
}

impl RedisBroker {
    /// Makes a broker for the Redis server at `url` (`redis://host:port/`,
    /// `redis+unix:///path`). Nothing is sent until [`Broker::start`]; a
    /// server that is down is not an error.
    pub async fn connect(url: &str, options: Options) -> Result<RedisBroker> {
        options.validate()?;
        let client = ::redis::Client::open(url).map_err(|e| Error::Config(format!("invalid Redis URL: {e}")))?;
        Ok(RedisBroker {
            inner: Arc::new(Inner {
                client,
                prefix: options.prefix.clone(),
                id: crate::random_id(),
                options,
                sink: OnceLock::new(),
                state: Mutex::new(State::default()),
                ops: tokio::sync::Mutex::new(()),
                failed_attempts: AtomicU64::new(0),
                progress: watch::Sender::new(0),
                driver: Mutex::new(None),
                stopped: AtomicBool::new(false),
            }),
        })
    }
}

impl Inner {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn bump(&self) {
        self.progress.send_modify(|n| *n = n.wrapping_add(1));
    }

    fn check_running(&self) -> Result<()> {
        if self.stopped.load(Ordering::Acquire) { Err(Error::Stopped) } else { Ok(()) }
    }

    fn connected(&self) -> Result<Conn> {
        self.state().conn.clone().ok_or_else(|| Error::unavailable("not connected to Redis"))
    }

    /// Gives up `conn`: it is no longer used, and its driver reconnects.
    fn fail(&self, conn: &Conn) {
        {
            let mut state = self.state();
            if state.conn.as_ref().is_some_and(|current| current.is(conn)) {
                state.conn = None;
            }
        }
        conn.kill.notify_one();
        self.bump();
    }

    /// Makes both connections, subscribes every wanted channel, and makes
    /// them the current connection; whether the sink must hear of it.
    async fn connect_once(&self) -> Result<(Conn, PubSubStream, bool)> {
        let timeout = self.options.timeout;
        let pubsub = within(timeout, self.client.get_async_pubsub()).await?;
        let (mut subscriptions, stream) = pubsub.split();
        let config =
            AsyncConnectionConfig::new().set_connection_timeout(Some(timeout)).set_response_timeout(Some(timeout));
        let publisher = within(timeout, self.client.get_multiplexed_async_connection_with_config(&config)).await?;

        let _ops = self.ops.lock().await;
        let channels: Vec<String> = self.state().channels.iter().cloned().collect();
        if !channels.is_empty() {
            within(timeout, subscriptions.subscribe(&channels)).await?;
        }
        let conn = Conn { subscriptions, publisher, kill: Arc::new(Notify::new()) };
        let tell = {
            let mut state = self.state();
            state.conn = Some(conn.clone());
            state.start_returned
        };
        Ok((conn, stream, tell))
    }

    /// Reads the connection's messages into the sink until it ends, a PING
    /// goes unanswered, or the connection is given up.
    async fn pump(&self, conn: &Conn, mut stream: PubSubStream, sink: &dyn BrokerSink) {
        let keepalive = self.options.keepalive;
        let mut pinger = conn.subscriptions.clone();
        let ping = async move {
            loop {
                tokio::time::sleep(keepalive).await;
                match tokio::time::timeout(keepalive, pinger.ping::<::redis::Value>()).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return format!("ping failed: {e}"),
                    Err(_) => return format!("no answer to a ping within {keepalive:?}"),
                }
            }
        };
        tokio::pin!(ping);
        loop {
            tokio::select! {
                message = stream.next() => match message {
                    Some(message) => self.deliver(&message, sink),
                    None => {
                        tracing::warn!("redis broker disconnected; reconnecting");
                        return;
                    }
                },
                reason = &mut ping => {
                    tracing::warn!(%reason, "redis broker connection lost; reconnecting");
                    return;
                }
                () = conn.kill.notified() => {
                    tracing::warn!("redis broker connection given up; reconnecting");
                    return;
                }
            }
        }
    }

    fn deliver(&self, message: &Msg, sink: &dyn BrokerSink) {
        let framed = message.get_payload_bytes();
        let Some((sender, payload)) = framed.split_first_chunk::<ID_LEN>() else {
            tracing::debug!(channel = message.get_channel_name(), "redis broker ignored a payload it did not frame");
            return;
        };
        if *sender == self.id {
            return;
        }
        // A channel given up by `unsubscribe` may still deliver until Redis
        // confirms; once `unsubscribe` returned, nothing of it gets through.
        if !self.state().channels.contains(message.get_channel_name()) {
            return;
        }
        sink.receive(Bytes::copy_from_slice(payload));
    }

    async fn subscribe(&self, topics: &[Topic]) -> Result<()> {
        self.check_running()?;
        let channels: Vec<String> = topics.iter().map(|t| crate::subject(&self.prefix, t)).collect();
        let _ops = self.ops.lock().await;
        let conn = {
            let mut state = self.state();
            state.channels.extend(channels.iter().cloned());
            state.conn.clone()
        };
        // Without a connection the channels are subscribed by the next
        // connect, which then tells the sink.
        let conn = conn.ok_or_else(|| Error::unavailable("not connected to Redis"))?;
        if channels.is_empty() {
            return Ok(());
        }
        let mut subscriptions = conn.subscriptions.clone();
        match within(self.options.timeout, subscriptions.subscribe(&channels)).await {
            Ok(()) => Ok(()),
            Err(e) => {
                // Whether Redis has the channels is unknown: start over.
                self.fail(&conn);
                Err(e)
            }
        }
    }

    async fn unsubscribe(&self, topics: &[Topic]) {
        let channels: Vec<String> = topics.iter().map(|t| crate::subject(&self.prefix, t)).collect();
        let _ops = self.ops.lock().await;
        let conn = {
            let mut state = self.state();
            for channel in &channels {
                state.channels.remove(channel);
            }
            state.conn.clone()
        };
        let Some(conn) = conn else { return };
        let mut subscriptions = conn.subscriptions.clone();
        if let Err(e) = within(self.options.timeout, subscriptions.unsubscribe(&channels)).await {
            // The channels are forgotten all the same (`deliver` drops what
            // still comes); a new connection subscribes only what is wanted.
            tracing::debug!(error = %e, "redis broker could not unsubscribe; reconnecting");
            self.fail(&conn);
        }
    }

    async fn publish(&self, batch: &[(Topic, Bytes)]) -> Result<()> {
        self.check_running()?;
        // No connection, no queue: what cannot be sent now is lost, and
        // memory stays bounded however long Redis is away.
        let conn = self.connected()?;
        if batch.is_empty() {
            return Ok(());
        }
        let mut pipe = ::redis::pipe();
        for (topic, payload) in batch {
            let mut framed = Vec::with_capacity(ID_LEN + payload.len());
            framed.extend_from_slice(&self.id);
            framed.extend_from_slice(payload);
            pipe.cmd("PUBLISH").arg(crate::subject(&self.prefix, topic)).arg(framed).ignore();
        }
        let mut publisher = conn.publisher.clone();
        match tokio::time::timeout(self.options.timeout, pipe.query_async::<()>(&mut publisher)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                if broken(&e) {
                    self.fail(&conn);
                }
                Err(Error::unavailable(e))
            }
            Err(_) => {
                self.fail(&conn);
                Err(Error::unavailable("Redis did not take the publications in time"))
            }
        }
    }
}

/// Whether an error means the connection is no longer usable.
fn broken(e: &RedisError) -> bool {
    e.is_io_error() || e.is_connection_dropped() || e.is_timeout() || e.is_unrecoverable_error()
}

/// `f` within `timeout`, its Redis error or the timeout as `Unavailable`.
async fn within<T>(timeout: Duration, f: impl Future<Output = ::redis::RedisResult<T>>) -> Result<T> {
    match tokio::time::timeout(timeout, f).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(Error::unavailable(e)),
        Err(_) => Err(Error::unavailable("Redis did not answer in time")),
    }
}

/// Connects, reads, and connects again after every loss, with backoff,
/// until the broker stops.
async fn drive(inner: Arc<Inner>, sink: Arc<dyn BrokerSink>) {
    let mut attempts = 0;
    loop {
        if inner.stopped.load(Ordering::Acquire) {
            return;
        }
        attempts += 1;
        match inner.connect_once().await {
            Ok((conn, stream, tell)) => {
                // After a loss the first retry is at once, then 100 ms, doubling.
                attempts = 0;
                inner.bump();
                if tell {
                    tracing::info!("redis broker resubscribed");
                    sink.resubscribed();
                } else {
                    tracing::info!("redis broker connected");
                }
                inner.pump(&conn, stream, &*sink).await;
                inner.fail(&conn);
            }
            Err(e) => {
                tracing::debug!(error = %e, "redis broker connection attempt failed");
                inner.failed_attempts.fetch_add(1, Ordering::AcqRel);
                inner.bump();
            }
        }
        tokio::time::sleep(backoff(attempts + 1, inner.options.max_reconnect_delay)).await;
    }
}

#[async_trait]
impl Broker for RedisBroker {
    async fn start(&self, sink: Arc<dyn BrokerSink>) -> chat_core::Result<()> {
        let inner = &self.inner;
        inner.check_running()?;
        inner.sink.set(sink.clone()).map_err(|_| Error::StartedTwice)?;
        inner.state().channels.insert(crate::subject(&inner.prefix, &Topic::Cluster));
        let mut progress = inner.progress.subscribe();
        *lock(&inner.driver) = Some(tokio::spawn(drive(inner.clone(), sink)));

        // Wait for the first connection attempt, so that a broker whose
        // server is up is connected when `start` returns, and one whose
        // server is down returns at once.
        let deadline = tokio::time::Instant::now() + inner.options.timeout * 3;
        while inner.state().conn.is_none() && inner.failed_attempts.load(Ordering::Acquire) == 0 {
            match tokio::time::timeout_at(deadline, progress.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => break,
            }
        }
        let connected = {
            let mut state = inner.state();
            state.start_returned = true;
            state.conn.is_some()
        };
        if !connected {
            tracing::warn!("redis broker started without a connection; it keeps trying");
        }
        Ok(())
    }

    async fn subscribe(&self, topics: &[Topic]) -> chat_core::Result<()> {
        Ok(self.inner.subscribe(topics).await?)
    }

    async fn unsubscribe(&self, topics: &[Topic]) -> chat_core::Result<()> {
        self.inner.unsubscribe(topics).await;
        Ok(())
    }

    async fn publish(&self, batch: &[(Topic, Bytes)]) -> chat_core::Result<()> {
        Ok(self.inner.publish(batch).await?)
    }

    fn is_connected(&self) -> bool {
        !self.inner.stopped.load(Ordering::Acquire) && self.inner.state().conn.is_some()
    }

    async fn stop(&self) {
        let inner = &self.inner;
        if inner.stopped.swap(true, Ordering::AcqRel) {
            return;
        }
        // Awaited, so that the sink hears nothing more once `stop` returned.
        let driver = lock(&inner.driver).take();
        if let Some(driver) = driver {
            driver.abort();
            let _ = driver.await;
        }
        // Dropping the last handles closes both connections.
        let mut state = inner.state();
        state.conn = None;
        state.channels.clear();
    }
}

impl Drop for RedisBroker {
    fn drop(&mut self) {
        if let Some(driver) = lock(&self.inner.driver).take() {
            driver.abort();
        }
    }
}

impl fmt::Debug for RedisBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.inner.state();
        f.debug_struct("RedisBroker")
            .field("prefix", &self.inner.prefix)
            .field("channels", &state.channels.len())
            .field("connected", &state.conn.is_some())
            .field("stopped", &self.inner.stopped.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

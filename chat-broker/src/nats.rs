//! The NATS adapter: core NATS subjects through async-nats (feature `nats`).
//!
//! One client per process. Each subscribed topic is one async-nats
//! `Subscriber`, drained by a task of its own into the sink; dropping the
//! subscriber (on `unsubscribe` or `stop`) unsubscribes it. async-nats keeps
//! its subscriptions across reconnects and sends them again itself; this
//! adapter only has to find out when the server has them, which is what the
//! *sync* below is for. See the [crate docs](crate) for why each choice was
//! made.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use async_nats::client::{PublishErrorKind, RequestErrorKind};
use async_nats::connection::State;
use async_nats::{Client, ConnectOptions, Event, Subscriber};
use async_trait::async_trait;
use bytes::Bytes;
use chat_core::{Broker, BrokerSink, Topic};
use futures_util::StreamExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::error::{Error, Result};
use crate::{Options, backoff, instance_id};

/// Messages a subscription holds before async-nats drops them (and says
/// `SlowConsumer`, which becomes [`BrokerSink::lost`]). The forwarding task
/// hands each message on at once, so this only fills when the process is
/// starved.
const SUBSCRIPTION_CAPACITY: usize = 8 * 1024;

/// Commands (publishes, subscribes) waiting for the connection's task. While
/// it is full, `publish` waits, within the broker's timeout.
const CLIENT_CAPACITY: usize = 1024;

/// How often the supervisor looks at the connection when no event woke it.
const SUPERVISOR_TICK: Duration = Duration::from_millis(250);

/// A [`Broker`] on a NATS server. Made by [`crate::connect`] or
/// [`NatsBroker::connect`].
pub struct NatsBroker {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    /// A second connection that answers sync probes; see [`Inner::sync`].
    responder: Client,
    responder_task: Mutex<Option<JoinHandle<()>>>,
    prefix: String,
    /// The subject of this broker's sync probes, which only its responder
    /// subscribes to.
    sync_subject: String,
    timeout: Duration,
    shared: Arc<Shared>,
    sink: OnceLock<Arc<dyn BrokerSink>>,
    /// The topics this broker wants. The async lock also serialises handing
    /// subscriptions to the client, so that a topic never has two
    /// subscriptions (which would deliver its publications twice).
    topics: tokio::sync::Mutex<HashMap<Topic, Forwarder>>,
    supervisor: Mutex<Option<JoinHandle<()>>>,
    stopped: AtomicBool,
}

/// What the client's event callback shares with the broker; made before the
/// client, which takes the callback.
#[derive(Debug)]
struct Shared {
    status: Mutex<Status>,
    /// Set when async-nats dropped messages; the supervisor turns it into one
    /// [`BrokerSink::lost`] (async-nats reports every dropped message).
    lost: AtomicBool,
    /// Connection attempts that failed, so that `start` returns at once when
    /// the server is down.
    failed_attempts: AtomicU64,
    /// Bumped on every event (but `SlowConsumer`) and every change of
    /// `status`: wakes the
    /// supervisor and a `start` waiting for the first connection.
    changes: watch::Sender<u64>,
}

#[derive(Debug, Default)]
struct Status {
    /// Connected, and the server has every subscription (the last sync after
    /// the last connect succeeded, and no subscribe failed since).
    active: bool,
    /// `start` returned: from now on a sync that makes the broker active is
    /// news for the sink ([`BrokerSink::resubscribed`]).
    start_returned: bool,
}

impl Shared {
    fn status(&self) -> MutexGuard<'_, Status> {
        self.status.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn bump(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    fn is_active(&self) -> bool {
        self.status().active
    }

    fn deactivate(&self) {
        self.status().active = false;
        self.bump();
    }

    /// Marks the broker active; whether the sink must hear of it.
    fn activate(&self) -> bool {
        let tell = {
            let mut status = self.status();
            status.active = true;
            status.start_returned
        };
        self.bump();
        tell
    }

    fn on_event(&self, event: Event) {
        match event {
            Event::Connected => tracing::info!("nats broker connected"),
            Event::Disconnected => {
                tracing::warn!("nats broker disconnected; reconnecting");
                self.status().active = false;
            }
            Event::SlowConsumer(sid) => {
                tracing::debug!(sid, "nats broker dropped a message: the subscription's buffer was full");
                // No bump: one comes per dropped message, and the supervisor
                // reports them together on its tick.
                self.lost.store(true, Ordering::Release);
                return;
            }
            Event::ClientError(err) => {
                tracing::debug!(error = %err, "nats broker connection attempt failed");
                self.failed_attempts.fetch_add(1, Ordering::AcqRel);
            }
            Event::ServerError(err) => tracing::warn!(error = %err, "nats server reported an error"),
            Event::LameDuckMode => tracing::info!("nats server entered lame duck mode"),
            other => tracing::debug!(event = %other, "nats broker event"),
        }
        self.bump();
    }
}

/// One wanted topic: its forwarding task once the client has the
/// subscription, `None` until then.
struct Forwarder {
    /// Cleared before the task is aborted, so that nothing is delivered once
    /// `unsubscribe` returned, even from messages the task already holds.
    live: Arc<AtomicBool>,
    task: Option<JoinHandle<()>>,
}

impl Forwarder {
    fn pending() -> Self {
        Forwarder { live: Arc::new(AtomicBool::new(true)), task: None }
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.live.store(false, Ordering::Release);
        if let Some(task) = &self.task {
            // Dropping the task's `Subscriber` unsubscribes it.
            task.abort();
        }
    }
}

impl NatsBroker {
    /// Makes a broker for the NATS server(s) at `url` (`nats://host:port`,
    /// `tls://…`, several separated by commas). async-nats opens the
    /// connections in the background at once; nothing is subscribed or
    /// published before [`Broker::start`]. A server that is down is not an
    /// error.
    pub async fn connect(url: &str, options: Options) -> Result<NatsBroker> {
        options.validate()?;
        let id = instance_id();
        let sync_subject = format!("_CHAT_SYNC.{id}");
        let shared = Arc::new(Shared {
            status: Mutex::new(Status::default()),
            lost: AtomicBool::new(false),
            failed_attempts: AtomicU64::new(0),
            changes: watch::Sender::new(0),
        });
        let events = shared.clone();
        let credentials = credentials(url)?;
        let client = async_nats::connect_with_options(
            url,
            connect_options(&options, &format!("{}-{id}", options.name), &credentials)
                .event_callback(move |event| {
                    events.on_event(event);
                    std::future::ready(())
                })
                .subscription_capacity(SUBSCRIPTION_CAPACITY),
        )
        .await
        .map_err(|e| Error::Config(format!("invalid NATS URL: {e}")))?;
        let responder = async_nats::connect_with_options(
            url,
            connect_options(&options, &format!("{}-{id}-sync", options.name), &credentials).subscription_capacity(64),
        )
        .await
        .map_err(|e| Error::Config(format!("invalid NATS URL: {e}")))?;
        Ok(NatsBroker {
            inner: Arc::new(Inner {
                client,
                responder,
                responder_task: Mutex::new(None),
                prefix: options.prefix,
                sync_subject,
                timeout: options.timeout,
                shared,
                sink: OnceLock::new(),
                topics: tokio::sync::Mutex::new(HashMap::new()),
                supervisor: Mutex::new(None),
                stopped: AtomicBool::new(false),
            }),
        })
    }
}

/// What the URL says about authenticating.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Credentials {
    None,
    /// `nats://user:password@host`
    UserPassword(String, String),
    /// `nats://token@host`
    Token(String),
}

/// Reads the credentials of a NATS URL. async-nats parses them but does not
/// send them by itself (they must be given as options), so without this a
/// server that wants a password would refuse the broker forever.
fn credentials(url: &str) -> Result<Credentials> {
    let addr: async_nats::ServerAddr = url.parse().map_err(|e| Error::Config(format!("invalid NATS URL: {e}")))?;
    Ok(match (addr.username(), addr.password()) {
        (Some(user), Some(password)) => Credentials::UserPassword(user.to_owned(), password.to_owned()),
        (Some(token), None) => Credentials::Token(token.to_owned()),
        _ => Credentials::None,
    })
}

/// The options both connections share.
fn connect_options(options: &Options, name: &str, credentials: &Credentials) -> ConnectOptions {
    let max_delay = options.max_reconnect_delay;
    let connect = match credentials {
        Credentials::None => ConnectOptions::new(),
        Credentials::UserPassword(user, password) => {
            ConnectOptions::with_user_and_password(user.clone(), password.clone())
        }
        Credentials::Token(token) => ConnectOptions::with_token(token.clone()),
    };
    connect
        .name(name)
        // Our own publications never come back to us.
        .no_echo()
        // `connect` and `start` work with the server down; async-nats keeps trying.
        .retry_on_initial_connect()
        .connection_timeout(options.timeout)
        .request_timeout(Some(options.timeout))
        // Unanswered pings close the connection after three intervals.
        .ping_interval(options.keepalive)
        .client_capacity(CLIENT_CAPACITY)
        .reconnect_delay_callback(move |attempts| backoff(attempts, max_delay))
}

impl Inner {
    fn subject(&self, topic: &Topic) -> String {
        crate::subject(&self.prefix, topic)
    }

    fn check_running(&self) -> Result<()> {
        if self.stopped.load(Ordering::Acquire) { Err(Error::Stopped) } else { Ok(()) }
    }

    /// Hands the wanted topics that the client does not have yet to it, each
    /// with a task that forwards into the sink. Topics stay pending before
    /// `start` (there is no sink yet) and when the client does not take them
    /// in time.
    async fn register_pending(&self, topics: &mut HashMap<Topic, Forwarder>) -> Result<()> {
        let Some(sink) = self.sink.get() else { return Ok(()) };
        for (topic, forwarder) in topics.iter_mut().filter(|(_, f)| f.task.is_none()) {
            let subject = self.subject(topic);
            let subscriber = match tokio::time::timeout(self.timeout, self.client.subscribe(subject)).await {
                Ok(Ok(subscriber)) => subscriber,
                Ok(Err(e)) => return Err(Error::unavailable(e)),
                Err(_) => return Err(Error::unavailable("the NATS client did not take a subscription in time")),
            };
            forwarder.task = Some(tokio::spawn(forward(subscriber, forwarder.live.clone(), sink.clone())));
        }
        Ok(())
    }

    /// Returns once the server has processed everything this broker's client
    /// sent before: its subscriptions and publications.
    ///
    /// async-nats's `flush` only writes the client's buffer to the socket;
    /// the server may still read a later publication of another process
    /// first. A request is a round trip on the same connection, so its answer
    /// comes after the server handled all that went before it. The request
    /// goes to a subject only this broker's responder connection subscribes
    /// to, which answers it; when the responder is not subscribed (yet), the
    /// server answers `503 no responders` itself, which proves the same.
    async fn sync(&self) -> Result<()> {
        if self.client.connection_state() != State::Connected {
            return Err(Error::unavailable("not connected to NATS"));
        }
        self.sync_connected().await
    }

    async fn sync_connected(&self) -> Result<()> {
        match tokio::time::timeout(self.timeout, self.client.request(self.sync_subject.clone(), Bytes::new())).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) if e.kind() == RequestErrorKind::NoResponders => Ok(()),
            Ok(Err(e)) => Err(Error::unavailable(e)),
            Err(_) => Err(Error::unavailable("NATS did not answer in time")),
        }
    }

    async fn subscribe(&self, topics: &[Topic]) -> Result<()> {
        self.check_running()?;
        let registered = {
            let mut wanted = self.topics.lock().await;
            for topic in topics {
                wanted.entry(topic.clone()).or_insert_with(Forwarder::pending);
            }
            self.register_pending(&mut wanted).await
        };
        let result = match registered {
            Ok(()) => self.sync().await,
            Err(e) => Err(e),
        };
        if result.is_err() {
            // The supervisor syncs again once it can and then says `resubscribed`.
            self.shared.deactivate();
        }
        result
    }

    async fn publish(&self, batch: &[(Topic, Bytes)]) -> Result<()> {
        self.check_running()?;
        // While disconnected async-nats would queue the publications and send
        // them after the reconnect; refusing them here keeps memory bounded
        // and the contract (a failed publish is lost, not late).
        if self.client.connection_state() != State::Connected {
            return Err(Error::unavailable("not connected to NATS"));
        }
        let send = async {
            for (topic, payload) in batch {
                self.client.publish(self.subject(topic), payload.clone()).await.map_err(|e| match e.kind() {
                    PublishErrorKind::MaxPayloadExceeded => Error::TooLarge(Box::new(e)),
                    PublishErrorKind::InvalidSubject => Error::Config(format!("invalid subject: {e}")),
                    PublishErrorKind::Send => Error::unavailable(e),
                })?;
            }
            self.sync_connected().await
        };
        match tokio::time::timeout(self.timeout, send).await {
            Ok(result) => result,
            Err(_) => Err(Error::unavailable("NATS did not take the publications in time")),
        }
    }
}

/// Hands a subscription's messages to the sink until it ends or the topic is
/// forgotten.
async fn forward(mut subscriber: Subscriber, live: Arc<AtomicBool>, sink: Arc<dyn BrokerSink>) {
    while let Some(message) = subscriber.next().await {
        if !live.load(Ordering::Acquire) {
            break;
        }
        sink.receive(message.payload);
    }
}

/// Answers this broker's sync probes from its second connection.
async fn respond(responder: Client, mut probes: Subscriber) {
    while let Some(probe) = probes.next().await {
        if let Some(reply) = probe.reply {
            // A lost answer makes one sync time out; nothing else to do.
            let _ = responder.publish(reply, Bytes::new()).await;
        }
    }
}

/// Watches the connection: after every (re)connect, and after a failed
/// subscribe, syncs until the server has every subscription, then tells the
/// sink; turns dropped messages into one `lost` per tick.
async fn supervise(inner: Arc<Inner>, sink: Arc<dyn BrokerSink>) {
    let mut changes = inner.shared.changes.subscribe();
    let mut synced_connects = 0;
    let mut last_lost = tokio::time::Instant::now() - SUPERVISOR_TICK;
    loop {
        if let Ok(Err(_)) = tokio::time::timeout(SUPERVISOR_TICK, changes.changed()).await {
            tokio::time::sleep(SUPERVISOR_TICK).await;
        }
        if inner.stopped.load(Ordering::Acquire) {
            return;
        }
        // At most one `lost` per tick, however many messages were dropped.
        if last_lost.elapsed() >= SUPERVISOR_TICK && inner.shared.lost.swap(false, Ordering::AcqRel) {
            last_lost = tokio::time::Instant::now();
            sink.lost();
        }
        if inner.client.connection_state() != State::Connected {
            if inner.shared.is_active() {
                inner.shared.deactivate();
            }
            continue;
        }
        // Read before syncing: a reconnect during the sync makes the next
        // round sync again.
        let connects = inner.client.statistics().connects.load(Ordering::Acquire);
        if connects == synced_connects && inner.shared.is_active() {
            continue;
        }
        let registered = {
            let mut wanted = inner.topics.lock().await;
            inner.register_pending(&mut wanted).await
        };
        match registered {
            Ok(()) => match inner.sync().await {
                Ok(()) => {
                    synced_connects = connects;
                    if inner.shared.activate() {
                        tracing::info!("nats broker resubscribed");
                        sink.resubscribed();
                    }
                }
                Err(e) => tracing::debug!(error = %e, "nats broker sync failed; retrying"),
            },
            Err(e) => tracing::debug!(error = %e, "nats broker could not subscribe; retrying"),
        }
    }
}

#[async_trait]
impl Broker for NatsBroker {
    async fn start(&self, sink: Arc<dyn BrokerSink>) -> chat_core::Result<()> {
        let inner = &self.inner;
        inner.check_running()?;
        inner.sink.set(sink.clone()).map_err(|_| Error::StartedTwice)?;
        let probes = inner.responder.subscribe(inner.sync_subject.clone()).await.map_err(Error::unavailable)?;
        *lock(&inner.responder_task) = Some(tokio::spawn(respond(inner.responder.clone(), probes)));
        {
            let mut wanted = inner.topics.lock().await;
            wanted.entry(Topic::Cluster).or_insert_with(Forwarder::pending);
            // Pending topics are registered again by the supervisor.
            let _ = inner.register_pending(&mut wanted).await;
        }
        *lock(&inner.supervisor) = Some(tokio::spawn(supervise(inner.clone(), sink)));

        // Wait for the first connection attempt, so that a broker whose
        // server is up is connected when `start` returns, and one whose
        // server is down returns at once.
        let mut changes = inner.shared.changes.subscribe();
        let deadline = tokio::time::Instant::now() + inner.timeout;
        while !inner.shared.is_active() && inner.shared.failed_attempts.load(Ordering::Acquire) == 0 {
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => break,
            }
        }
        let active = {
            let mut status = inner.shared.status();
            status.start_returned = true;
            status.active
        };
        if !active {
            tracing::warn!("nats broker started without a connection; it keeps trying");
        }
        Ok(())
    }

    async fn subscribe(&self, topics: &[Topic]) -> chat_core::Result<()> {
        Ok(self.inner.subscribe(topics).await?)
    }

    async fn unsubscribe(&self, topics: &[Topic]) -> chat_core::Result<()> {
        let mut wanted = self.inner.topics.lock().await;
        for topic in topics {
            // Dropping the forwarder stops delivery and unsubscribes.
            wanted.remove(topic);
        }
        Ok(())
    }

    async fn publish(&self, batch: &[(Topic, Bytes)]) -> chat_core::Result<()> {
        Ok(self.inner.publish(batch).await?)
    }

    fn is_connected(&self) -> bool {
        !self.inner.stopped.load(Ordering::Acquire)
            && self.inner.shared.is_active()
            && self.inner.client.connection_state() == State::Connected
    }

    async fn stop(&self) {
        let inner = &self.inner;
        if inner.stopped.swap(true, Ordering::AcqRel) {
            return;
        }
        inner.shared.deactivate();
        // Awaited, so that the sink hears nothing more once `stop` returned.
        let supervisor = lock(&inner.supervisor).take();
        if let Some(supervisor) = supervisor {
            supervisor.abort();
            let _ = supervisor.await;
        }
        abort(&inner.responder_task);
        inner.topics.lock().await.clear();
        // Drain sends the unsubscribes, flushes and closes the connections.
        let _ = tokio::time::timeout(inner.timeout, inner.client.drain()).await;
        let _ = tokio::time::timeout(inner.timeout, inner.responder.drain()).await;
    }
}

impl Drop for NatsBroker {
    fn drop(&mut self) {
        abort(&self.inner.supervisor);
        abort(&self.inner.responder_task);
    }
}

impl fmt::Debug for NatsBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsBroker")
            .field("prefix", &self.inner.prefix)
            .field("state", &self.inner.client.connection_state())
            .field("active", &self.inner.shared.is_active())
            .field("stopped", &self.inner.stopped.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

fn abort(task: &Mutex<Option<JoinHandle<()>>>) {
    if let Some(task) = lock(task).take() {
        task.abort();
    }
}

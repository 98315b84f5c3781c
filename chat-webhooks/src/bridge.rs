//! [`WebhookBridge`]: the enqueuer and its catch-up, the leader, the worker.
//!
//! Tasks started by [`Bridge::start`], in every process configured with the
//! bridge:
//!
//! - the **enqueuer** takes the engine's events from a bounded channel (so
//!   [`Bridge::on_event`] never waits), turns each into webhook events and
//!   writes one delivery per endpoint that wants it into the outbox, in the
//!   commit that also moves the room's checkpoint (the last seq and the
//!   newest change enqueued). Between batches it runs the **catch-up**,
//!   which finds in the store what no event brought (a process that crashed
//!   between a commit and its enqueue, an event dropped from a full channel);
//!   one task does both, so they never race each other;
//! - the **leader** takes and renews the bridge's lease; while this process
//!   holds it, it runs the worker, and stops it when it loses it.
//!
//! Only while the lease is held, the **worker** reads each endpoint's due
//! deliveries (one per room at a time, in order) and sends them, many
//! endpoints and rooms at once up to a bound, and records each outcome:
//! done, retry later, or failed for good.
//!
//! Each endpoint's deliveries are kept in the outbox under a name of their
//! own ([`Endpoint::outbox_name`]), so that one endpoint's backlog is read,
//! counted, listed and dropped without touching another's.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use chat_core::bridge::{Leader, Lease};
use chat_core::{
    Bridge, BridgeEvent, BridgeHealth, BridgeHost, BridgeStore, HistoryQuery, Job, JobStatus, Message, NewJob, NewLink,
    Room, RoomId, RoomKind, Store, Timestamp, User,
};
use serde::Serialize;
use tokio::sync::{Notify, mpsc};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use crate::config::WebhookConfig;
use crate::endpoint::{CONFIGURED_ID, Endpoint, NewEndpoint, outbox_name};
use crate::error::{Error, Result};
use crate::event::Event;
use crate::sign::{SIGNATURE_HEADER, signature};

/// The name of this bridge: in `/health`, in logs, in the store.
pub const NAME: &str = "webhooks";

/// Endpoint id → the endpoint as JSON (secret included).
const LINK_ENDPOINT: &str = "endpoint";
/// Room id → its checkpoint: the last seq and the newest change enqueued.
const LINK_ROOM: &str = "room";
/// `scanned` → when the last complete catch-up started (ms).
const LINK_STATE: &str = "state";
const SCANNED: &str = "scanned";
/// How far before the last catch-up the next one looks: messages are
/// stamped by the clock of the process that stored them, before the commit.
const CATCH_UP_SLACK: Duration = Duration::from_secs(60);
/// Rooms a catch-up reads at once.
const CATCH_UP_PAGE: u32 = 500;
/// Most messages of one room a catch-up enqueues (the newest are kept).
const MAX_CATCH_UP_MESSAGES: usize = 10_000;
/// Most messages the enqueuer reads from the store to fill a room's gap
/// (what another process stored and has not enqueued yet, when this one
/// enqueues a later message). A larger gap is the catch-up's to fill.
const MAX_GAP: u64 = 100;
/// How long the enqueuer and the worker use the endpoints they read before
/// reading them again: an endpoint added through another process receives
/// events from this one within this time.
const ENDPOINTS_MAX_AGE: Duration = Duration::from_secs(1);
/// Room checkpoints kept in memory before the map is cleared.
const MAX_CACHED_CHECKPOINTS: usize = 100_000;
/// Most bytes of a receiver's answer read (to keep the connection); the rest is dropped.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// The bridge. Cheap to clone; clones share everything.
#[derive(Clone)]
pub struct WebhookBridge {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for WebhookBridge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookBridge").field("config", &self.shared.config).finish_non_exhaustive()
    }
}

struct Shared {
    config: WebhookConfig,
    client: webhook_reqwest::Client,
    /// The configured endpoint, if any, as the others are seen.
    configured: Option<Endpoint>,
    events: mpsc::Sender<BridgeEvent>,
    /// Taken by the enqueuer when the bridge starts.
    events_rx: Mutex<Option<mpsc::Receiver<BridgeEvent>>>,
    /// What the bridge may do to the engine; set once, when it starts.
    host: OnceLock<Arc<dyn BridgeHost>>,
    /// The endpoints as last read, and when: see [`ENDPOINTS_MAX_AGE`].
    endpoints: Mutex<Option<(Instant, Arc<Vec<Endpoint>>)>>,
    /// Whether there was an endpoint when they were last read: without
    /// one, `on_event` queues nothing.
    any_endpoint: AtomicBool,
    /// Wakes the worker: deliveries were enqueued here, or one was retried by hand.
    wake: Notify,
    /// Wakes the enqueuer for a catch-up.
    catch_up: Notify,
    /// The lease that elects the one process of several that delivers.
    lease: Lease,
    state: Mutex<State>,
    /// The enqueuer and the leader: they run as long as the bridge.
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// The worker while this process holds the lease.
    leading: tokio::sync::Mutex<Option<Leading>>,
    /// Set when an event was dropped or could not be enqueued: the next
    /// catch-up runs at once, in any process.
    overflowed: AtomicBool,
    /// Events dropped so far, for `/health`.
    dropped: AtomicU64,
}

/// The worker, while the lease is held.
struct Leading {
    /// Tells the worker to start nothing more and wait for what it sent.
    stop: Arc<AtomicBool>,
    worker: JoinHandle<()>,
}

#[derive(Default)]
struct State {
    /// Whether this process holds the lease (and so delivers).
    active: bool,
    endpoints: usize,
    pending: u64,
    failed: u64,
    last_error: Option<String>,
}

/// A delivery of one event to one endpoint, for operators.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Delivery {
    /// The delivery's id (its outbox job's).
    pub id: i64,
    /// The event's `id`, as the receiver sees it.
    pub event_id: String,
    /// The event's `type`.
    #[serde(rename = "type")]
    pub kind: String,
    /// `pending` or `failed`.
    pub status: JobStatus,
    /// Attempts that failed so far.
    pub attempts: u32,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// When it was enqueued.
    pub created_at: Timestamp,
    /// When the next attempt is due (pending deliveries only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<Timestamp>,
}

impl Delivery {
    fn of(job: Job) -> Self {
        Delivery {
            id: job.id,
            event_id: job.dedupe_key,
            kind: job.kind,
            status: job.status,
            attempts: job.attempts,
            last_error: job.last_error,
            created_at: job.created_at,
            next_attempt_at: (job.status == JobStatus::Pending).then_some(job.run_at),
        }
    }
}

impl WebhookBridge {
    /// A bridge with these settings. Nothing is sent until the engine starts it.
    pub fn new(config: WebhookConfig) -> Result<Self> {
        config.validate()?;
        let client = webhook_reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            .redirect(webhook_reqwest::redirect::Policy::none())
            .user_agent(config.user_agent.clone())
            .build()
            .map_err(|e| Error::Config(format!("cannot set up the HTTP client: {e}")))?;
        let configured = config.endpoint.as_ref().map(|c| Endpoint {
            id: CONFIGURED_ID.to_owned(),
            url: c.url.clone(),
            events: c.events.clone(),
            created_at: Timestamp::now(),
            source: "config",
            secret: c.secret.clone(),
        });
        let (events, events_rx) = mpsc::channel(config.event_queue);
        let lease = Lease::new(NAME, config.lease_ttl, config.lease_renew);
        let shared = Shared {
            config,
            client,
            configured,
            events,
            events_rx: Mutex::new(Some(events_rx)),
            host: OnceLock::new(),
            endpoints: Mutex::new(None),
            any_endpoint: AtomicBool::new(true),
            wake: Notify::new(),
            catch_up: Notify::new(),
            lease,
            state: Mutex::new(State::default()),
            tasks: Mutex::new(Vec::new()),
            leading: tokio::sync::Mutex::new(None),
            overflowed: AtomicBool::new(false),
            dropped: AtomicU64::new(0),
        };
        Ok(WebhookBridge { shared: Arc::new(shared) })
    }

    /// Every endpoint, the configured one first, then those of the admin
    /// API by id (so, oldest first), as the store has them now.
    pub async fn endpoints(&self) -> Result<Vec<Endpoint>> {
        Ok(self.shared.load_endpoints().await?.as_ref().clone())
    }

    /// Adds an endpoint; it receives the events committed from now on
    /// (other processes start sending to it within a second).
    /// [`Error::Invalid`] for a bad URL, secret or event name,
    /// [`Error::Conflict`] when `max_endpoints` are there already.
    pub async fn add_endpoint(&self, new: NewEndpoint) -> Result<Endpoint> {
        let endpoint = new.validate(Timestamp::now())?;
        let shared = &self.shared;
        let added = shared.load_endpoints().await?.iter().filter(|e| e.id != CONFIGURED_ID).count();
        if added >= shared.config.max_endpoints {
            return Err(Error::Conflict(format!(
                "there are {} webhook endpoints already, the most allowed; delete one first",
                shared.config.max_endpoints
            )));
        }
        shared.outbox()?.set_link(NAME, LINK_ENDPOINT, &endpoint.id, &endpoint.to_stored()).await?;
        shared.load_endpoints().await?;
        tracing::info!(endpoint = %endpoint.id, url = %endpoint.url, "webhooks: endpoint added");
        Ok(endpoint)
    }

    /// Deletes an endpoint of the admin API and drops its deliveries.
    /// `false` when there is no such endpoint; [`Error::Conflict`] for the
    /// configured one, which only the configuration removes.
    pub async fn remove_endpoint(&self, id: &str) -> Result<bool> {
        if id == CONFIGURED_ID && self.shared.configured.is_some() {
            return Err(Error::Conflict(
                "this endpoint is set by the server's configuration (CHAT_WEBHOOK_URL); change it there".into(),
            ));
        }
        let outbox = self.shared.outbox()?;
        if !outbox.delete_link(NAME, LINK_ENDPOINT, id).await? {
            return Ok(false);
        }
        self.shared.load_endpoints().await?;
        let name = outbox_name(id);
        let dropped = outbox.clear_jobs(&name).await?;
        tracing::info!(endpoint = %id, dropped, "webhooks: endpoint deleted with its deliveries");
        // A process that read the endpoints just before the delete may
        // still enqueue for it, for up to a second: drop those too.
        let shared = self.shared.clone();
        tokio::spawn(async move {
            tokio::time::sleep(ENDPOINTS_MAX_AGE * 3).await;
            if let Ok(outbox) = shared.outbox()
                && let Err(err) = outbox.clear_jobs(&name).await
            {
                tracing::warn!(error = %err, "webhooks: cannot drop a deleted endpoint's late deliveries");
            }
        });
        self.shared.refresh_counts().await;
        Ok(true)
    }

    /// An endpoint's deliveries with a status, oldest first, at most
    /// `limit`; `None` when there is no such endpoint.
    pub async fn deliveries(&self, endpoint: &str, status: JobStatus, limit: u32) -> Result<Option<Vec<Delivery>>> {
        let Some(endpoint) = self.shared.endpoint(endpoint).await? else {
            return Ok(None);
        };
        let jobs = self.shared.outbox()?.jobs(&endpoint.outbox_name(), status, limit).await?;
        Ok(Some(jobs.into_iter().map(Delivery::of).collect()))
    }

    /// Makes a failed delivery of an endpoint pending again, due at once;
    /// it is tried once more (its retries are spent: if that attempt fails,
    /// it is failed again). `None` when there is no such endpoint, `false`
    /// when it has no failed delivery with that id.
    pub async fn retry_delivery(&self, endpoint: &str, delivery: i64) -> Result<Option<bool>> {
        let Some(endpoint) = self.shared.endpoint(endpoint).await? else {
            return Ok(None);
        };
        let requeued = self.shared.outbox()?.requeue_job(&endpoint.outbox_name(), delivery, Timestamp::now()).await?;
        if requeued {
            self.shared.wake.notify_one();
            self.shared.refresh_counts().await;
        }
        Ok(Some(requeued))
    }
}

impl Shared {
    fn host(&self) -> Result<&dyn BridgeHost> {
        self.host
            .get()
            .map(|host| &**host)
            .ok_or_else(|| Error::Chat(chat_core::Error::unavailable("the webhooks bridge has not been started")))
    }

    fn store(&self) -> Result<&dyn Store> {
        Ok(self.host()?.store())
    }

    fn outbox(&self) -> Result<&dyn BridgeStore> {
        self.store()?
            .bridge_store()
            .ok_or_else(|| Error::Chat(chat_core::Error::unavailable("the store cannot keep the webhooks' outbox")))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn record_error(&self, err: &dyn std::fmt::Display) {
        self.state().last_error = Some(err.to_string());
    }

    /// Reads the endpoints from the store (the configured one first) and
    /// keeps them for [`Shared::current_endpoints`].
    async fn load_endpoints(&self) -> Result<Arc<Vec<Endpoint>>> {
        let links = self.outbox()?.links(NAME, LINK_ENDPOINT).await?;
        let mut endpoints: Vec<Endpoint> = self.configured.iter().cloned().collect();
        for (id, text) in links {
            match Endpoint::from_stored(id.clone(), &text) {
                Some(endpoint) => endpoints.push(endpoint),
                None => tracing::warn!(endpoint = %id, "webhooks: a stored endpoint cannot be read; skipped"),
            }
        }
        let endpoints = Arc::new(endpoints);
        self.state().endpoints = endpoints.len();
        self.any_endpoint.store(!endpoints.is_empty(), Ordering::SeqCst);
        *self.endpoints.lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), endpoints.clone()));
        Ok(endpoints)
    }

    /// The endpoints, read again when those in memory are older than
    /// [`ENDPOINTS_MAX_AGE`]; when the store cannot be read, the last ones.
    async fn current_endpoints(&self) -> Result<Arc<Vec<Endpoint>>> {
        let known = self.endpoints.lock().unwrap_or_else(|e| e.into_inner()).clone();
        match known {
            Some((at, endpoints)) if at.elapsed() < ENDPOINTS_MAX_AGE => Ok(endpoints),
            known => match self.load_endpoints().await {
                Ok(endpoints) => Ok(endpoints),
                Err(err) => known.map(|(_, endpoints)| endpoints).ok_or(err),
            },
        }
    }

    /// One endpoint, as the store has it now.
    async fn endpoint(&self, id: &str) -> Result<Option<Endpoint>> {
        Ok(self.load_endpoints().await?.iter().find(|e| e.id == id).cloned())
    }

    async fn refresh_counts(&self) {
        let Ok(endpoints) = self.current_endpoints().await else { return };
        let Ok(outbox) = self.outbox() else { return };
        let (mut pending, mut failed) = (0, 0);
        for endpoint in endpoints.iter() {
            match outbox.job_counts(&endpoint.outbox_name()).await {
                Ok(counts) => {
                    pending += counts.pending;
                    failed += counts.failed;
                }
                Err(_) => return,
            }
        }
        let mut state = self.state();
        state.pending = pending;
        state.failed = failed;
    }

    /// An event could not become deliveries here: a catch-up finds it in
    /// the store.
    fn lost_event(&self) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
        self.overflowed.store(true, Ordering::SeqCst);
        self.catch_up.notify_one();
    }
}

#[async_trait]
impl Bridge for WebhookBridge {
    fn name(&self) -> &str {
        NAME
    }

    async fn start(&self, host: Arc<dyn BridgeHost>) -> chat_core::Result<()> {
        if host.store().bridge_store().is_none() {
            return Err(chat_core::Error::internal("the webhooks bridge needs a store that keeps bridge jobs"));
        }
        let shared = &self.shared;
        if shared.host.set(host).is_err() {
            return Err(chat_core::Error::internal("the webhooks bridge was started twice"));
        }
        let events = shared.events_rx.lock().unwrap_or_else(|e| e.into_inner()).take();
        let Some(events) = events else {
            return Err(chat_core::Error::internal("the webhooks bridge was started twice"));
        };
        let outbox = shared.outbox()?;
        if shared.configured.is_none() {
            // The configuration no longer names an endpoint: what was still
            // to be sent to the one it named is not wanted any more.
            outbox.clear_jobs(&outbox_name(CONFIGURED_ID)).await?;
        }
        let endpoints = shared.load_endpoints().await?;
        // The first try is made here, so that a lone process delivers from the start.
        let held = hold_lease(shared).await?;
        let tasks = vec![tokio::spawn(enqueue(shared.clone(), events)), tokio::spawn(lead(shared.clone(), held))];
        *shared.tasks.lock().unwrap_or_else(|e| e.into_inner()) = tasks;
        // Every process looks once for what it stored and never enqueued
        // before it stopped.
        shared.catch_up.notify_one();
        shared.refresh_counts().await;
        tracing::info!(endpoints = endpoints.len(), active = held, "webhooks: started");
        Ok(())
    }

    fn on_event(&self, event: &BridgeEvent, _origin: Option<&str>) {
        // Without endpoints, there is no one to tell. An endpoint added
        // through another process is seen within a second (the enqueuer
        // reads them that often), and gets what is committed from then on.
        if !self.shared.any_endpoint.load(Ordering::Relaxed) {
            return;
        }
        // Changes made by bridges are changes like any other here.
        if self.shared.events.try_send(event.clone()).is_err() {
            // Said once until the catch-up that finds them has run.
            if !self.shared.overflowed.load(Ordering::SeqCst) {
                tracing::warn!("webhooks: event queue full; catching up from the store");
            }
            self.shared.lost_event();
        }
    }

    fn health(&self) -> BridgeHealth {
        let state = self.shared.state();
        let started = self.shared.host.get().is_some();
        BridgeHealth {
            // There is no connection to keep: receivers are called as needed.
            connected: true,
            standby: started && !state.active,
            pending: state.pending,
            failed: state.failed,
            last_error: state.last_error.clone(),
            details: [
                ("endpoints".to_owned(), state.endpoints.to_string()),
                ("role".to_owned(), if state.active { "active" } else { "standby" }.to_owned()),
                ("events_caught_up".to_owned(), self.shared.dropped.load(Ordering::Relaxed).to_string()),
            ]
            .into(),
        }
    }

    /// The deliveries of every endpoint with a status, oldest first.
    async fn jobs(&self, status: JobStatus, limit: u32) -> chat_core::Result<Vec<Job>> {
        let shared = &self.shared;
        let mut jobs = Vec::new();
        for endpoint in shared.load_endpoints().await?.iter() {
            jobs.extend(shared.outbox()?.jobs(&endpoint.outbox_name(), status, limit).await?);
        }
        jobs.sort_by_key(|j| j.id);
        jobs.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
        Ok(jobs)
    }

    /// Makes a failed delivery of any endpoint pending again.
    async fn retry_job(&self, id: i64) -> chat_core::Result<bool> {
        for endpoint in self.shared.load_endpoints().await?.iter() {
            if self.retry_delivery(&endpoint.id, id).await? == Some(true) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Stops the tasks, waits for the deliveries in flight (within the
    /// timeout), and hands the lease back so that another process takes
    /// over at once.
    async fn stop(&self) {
        let tasks = std::mem::take(&mut *self.shared.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        for task in tasks {
            task.abort();
        }
        if step_down(&self.shared).await
            && let Ok(outbox) = self.shared.outbox()
            && let Err(err) = self.shared.lease.release(outbox).await
        {
            tracing::warn!(error = %err, "webhooks: cannot release the lease; it runs out by itself");
        }
    }
}

// ---------------------------------------------------------------------------
// The lease: of several processes, one delivers

/// Asks for the lease once (a renewal when this process holds it), and
/// starts or stops the worker to match. Returns whether this process holds it.
async fn hold_lease(shared: &Arc<Shared>) -> Result<bool> {
    let held = shared.lease.acquire(shared.outbox()?).await?;
    if held {
        step_up(shared).await;
    } else {
        step_down(shared).await;
    }
    Ok(held)
}

/// Renews the lease, or waits for it, until the bridge stops.
async fn lead(shared: Arc<Shared>, held: bool) {
    shared.lease.keep(&Holder(shared.clone()), held).await;
}

/// This process as a candidate for the lease.
struct Holder(Arc<Shared>);

#[async_trait]
impl Leader for Holder {
    type Error = Error;

    async fn hold(&self) -> Result<bool> {
        hold_lease(&self.0).await
    }

    async fn stand_down(&self) {
        step_down(&self.0).await;
    }

    fn failed(&self, err: &Error) {
        self.0.record_error(err);
    }

    async fn tried(&self, held: bool) {
        if !held {
            // No worker refreshes the counts here.
            self.0.refresh_counts().await;
        }
    }
}

/// Starts the worker, unless it runs.
async fn step_up(shared: &Arc<Shared>) {
    let mut leading = shared.leading.lock().await;
    if leading.is_some() {
        return;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let worker = tokio::spawn(work(shared.clone(), stop.clone()));
    *leading = Some(Leading { stop, worker });
    shared.state().active = true;
    // Whatever the last holder left unenqueued is found now.
    shared.catch_up.notify_one();
}

/// Stops the worker, letting the deliveries in flight finish (within the
/// timeout). Returns whether it was running.
async fn step_down(shared: &Shared) -> bool {
    let Some(leading) = shared.leading.lock().await.take() else {
        return false;
    };
    shared.state().active = false;
    leading.stop.store(true, Ordering::SeqCst);
    shared.wake.notify_one();
    let mut worker = leading.worker;
    let grace = shared.config.timeout + Duration::from_secs(1);
    if tokio::time::timeout(grace, &mut worker).await.is_err() {
        worker.abort();
    }
    true
}

// ---------------------------------------------------------------------------
// Engine events → webhook events → deliveries in the outbox

/// How far a room's events were enqueued: the last message seq, and the
/// newest edit or delete time (ms). Kept in a link per room and moved in the
/// commit of the deliveries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Checkpoint {
    seq: u64,
    changed: i64,
}

impl Checkpoint {
    fn encode(self) -> String {
        format!("{}:{}", self.seq, self.changed)
    }

    fn decode(text: &str) -> Option<Self> {
        let (seq, changed) = text.split_once(':')?;
        Some(Checkpoint { seq: seq.parse().ok()?, changed: changed.parse().ok()? })
    }
}

/// Room checkpoints as this process last wrote or read them.
#[derive(Default)]
struct Checkpoints {
    known: HashMap<RoomId, Checkpoint>,
}

/// Events on their way into the outbox, and the checkpoints they move.
#[derive(Default)]
struct Batch {
    events: Vec<Event>,
    moved: HashMap<RoomId, Checkpoint>,
    /// Found by a catch-up: an endpoint of the admin API gets none of
    /// these from before it was added.
    found_later: bool,
}

impl Batch {
    fn push(&mut self, event: Event) {
        self.events.push(event);
    }

    /// Forgets what it holds of a room: its events and its checkpoint.
    fn forget(&mut self, room: RoomId) {
        self.events.retain(|e| e.room_id != room);
        self.moved.remove(&room);
    }

    /// One delivery per event and endpoint that wants it, and the checkpoints.
    fn writes(&self, endpoints: &[Endpoint], now: Timestamp) -> (Vec<NewJob>, Vec<NewLink>) {
        let mut jobs = Vec::new();
        for event in &self.events {
            let body = event.body();
            let since_added =
                |e: &&Endpoint| !self.found_later || e.id == CONFIGURED_ID || event.created_at >= e.created_at;
            for endpoint in endpoints.iter().filter(|e| e.wants(event.kind)).filter(since_added) {
                jobs.push(NewJob {
                    bridge: endpoint.outbox_name(),
                    queue: event.room_id.to_string(),
                    dedupe_key: event.id.clone(),
                    kind: event.kind.as_str().to_owned(),
                    payload: body.clone(),
                    created_at: now,
                });
            }
        }
        let links = self
            .moved
            .iter()
            .map(|(room, checkpoint)| NewLink {
                bridge: NAME.to_owned(),
                kind: LINK_ROOM.to_owned(),
                local: room.to_string(),
                remote: checkpoint.encode(),
            })
            .collect();
        (jobs, links)
    }
}

/// Writes engine events into the outbox in the order they came, and runs
/// the catch-up when asked (by the leader, a dropped event, or the timer
/// while this process holds the lease).
async fn enqueue(shared: Arc<Shared>, mut events: mpsc::Receiver<BridgeEvent>) {
    let mut rooms = Checkpoints::default();
    let mut batch = Vec::new();
    let mut catch_up_due = false;
    let mut retry_at: Option<Instant> = None;
    let mut timer = tokio::time::interval(shared.config.catch_up_every);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Keeps `any_endpoint` current while no event comes.
    let mut reread = tokio::time::interval(ENDPOINTS_MAX_AGE);
    reread.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if catch_up_due && retry_at.is_none_or(|at| at <= Instant::now()) {
            let overflowed = shared.overflowed.swap(false, Ordering::SeqCst);
            match catch_up(&shared, &mut rooms).await {
                Ok(()) => {
                    catch_up_due = false;
                    retry_at = None;
                }
                Err(err) => {
                    tracing::warn!(error = %err, "webhooks: cannot catch up from the store; trying again");
                    shared.record_error(&err);
                    if overflowed {
                        shared.overflowed.store(true, Ordering::SeqCst);
                    }
                    retry_at = Some(Instant::now() + Duration::from_secs(1));
                }
            }
        }
        let retry = async {
            match retry_at {
                Some(at) if catch_up_due => tokio::time::sleep_until(at).await,
                _ => std::future::pending().await,
            }
        };
        tokio::select! {
            n = events.recv_many(&mut batch, 256) => {
                if n == 0 {
                    return;
                }
                let taken = std::mem::take(&mut batch);
                enqueue_events(&shared, &mut rooms, taken).await;
            }
            () = shared.catch_up.notified() => catch_up_due = true,
            _ = timer.tick() => catch_up_due |= shared.state().active,
            _ = reread.tick() => {
                if let Err(err) = shared.current_endpoints().await {
                    shared.record_error(&err);
                }
            }
            () = retry => {}
        }
    }
}

/// Turns a batch of engine events into deliveries and writes them, with the
/// rooms' checkpoints, in one commit (retried until the store takes it).
async fn enqueue_events(shared: &Shared, rooms: &mut Checkpoints, events: Vec<BridgeEvent>) {
    let count = events.len();
    let endpoints = match shared.current_endpoints().await {
        Ok(endpoints) => endpoints,
        Err(err) => {
            tracing::warn!(error = %err, "webhooks: cannot read the endpoints; catching up later");
            shared.record_error(&err);
            for _ in 0..count {
                shared.lost_event();
            }
            return;
        }
    };
    if endpoints.is_empty() {
        return;
    }
    let mut out = Batch::default();
    // Rooms whose events this batch gave up on: neither their events nor
    // their checkpoints are written, so that the catch-up finds them all.
    let mut failed = HashSet::new();
    for event in events {
        let room = room_of(&event);
        if room.is_some_and(|r| failed.contains(&r)) {
            shared.lost_event();
            continue;
        }
        if let Err(err) = add_event(shared, rooms, &mut out, event).await {
            tracing::warn!(error = %err, room = ?room, "webhooks: cannot read what an event needs; catching up later");
            shared.record_error(&err);
            shared.lost_event();
            if let Some(room) = room {
                out.forget(room);
                failed.insert(room);
            }
        }
    }
    // The store may be down for a while; the batch waits here (the channel
    // behind pushes back on `on_event`, which then drops events for the
    // catch-up to find).
    let mut delay = Duration::from_millis(100);
    while let Err(err) = write(shared, rooms, &out, &endpoints).await {
        tracing::warn!(error = %err, "webhooks: cannot write to the outbox; retrying");
        shared.record_error(&err);
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(10));
    }
}

/// Writes a batch: its deliveries and checkpoints in one commit; then the
/// checkpoints are what this process knows, and the worker is woken.
async fn write(shared: &Shared, rooms: &mut Checkpoints, out: &Batch, endpoints: &[Endpoint]) -> Result<()> {
    if out.events.is_empty() && out.moved.is_empty() {
        return Ok(());
    }
    let (jobs, links) = out.writes(endpoints, Timestamp::now());
    let added = shared.outbox()?.enqueue_and_link(jobs, links).await?;
    if rooms.known.len() + out.moved.len() > MAX_CACHED_CHECKPOINTS {
        rooms.known.clear();
    }
    rooms.known.extend(out.moved.iter().map(|(room, checkpoint)| (*room, *checkpoint)));
    if added > 0 {
        shared.wake.notify_one();
    }
    Ok(())
}

/// The room an engine event is about.
fn room_of(event: &BridgeEvent) -> Option<RoomId> {
    match event {
        BridgeEvent::MessageCreated(m) | BridgeEvent::MessageUpdated(m) | BridgeEvent::MessageDeleted(m) => {
            Some(m.room_id)
        }
        BridgeEvent::RoomCreated(room) | BridgeEvent::RoomUpdated(room) => Some(room.id),
        BridgeEvent::MemberAdded { room_id, .. } | BridgeEvent::MemberRemoved { room_id, .. } => Some(*room_id),
        _ => None,
    }
}

/// A room's checkpoint: as the batch moved it, as this process knows it,
/// or as the store has it (`fresh` reads the store whatever is known).
async fn checkpoint(
    shared: &Shared,
    rooms: &mut Checkpoints,
    out: &Batch,
    room: RoomId,
    fresh: bool,
) -> Result<Option<Checkpoint>> {
    if let Some(moved) = out.moved.get(&room) {
        return Ok(Some(*moved));
    }
    if !fresh && let Some(known) = rooms.known.get(&room) {
        return Ok(Some(*known));
    }
    let stored = shared.outbox()?.remote_of(NAME, LINK_ROOM, &room.to_string()).await?;
    let stored = stored.as_deref().and_then(Checkpoint::decode);
    if let Some(stored) = stored {
        rooms.known.insert(room, stored);
    }
    Ok(stored)
}

/// Adds the webhook events of one engine event to the batch.
async fn add_event(shared: &Shared, rooms: &mut Checkpoints, out: &mut Batch, event: BridgeEvent) -> Result<()> {
    match event {
        BridgeEvent::MessageCreated(message) => {
            let room = message.room_id;
            let mut known = checkpoint(shared, rooms, out, room, false).await?;
            if known.is_some_and(|c| c.seq + 1 < message.seq) {
                // Another process may have enqueued the gap since: ask the store.
                known = checkpoint(shared, rooms, out, room, true).await?;
            }
            let at = known.unwrap_or_default();
            if known.is_some() && message.seq <= at.seq {
                // Enqueued already, by a catch-up or by the process whose gap this filled.
                return Ok(());
            }
            if known.is_some() {
                fill_gap(shared, out, room, at.seq, message.seq, message.created_at).await?;
            }
            add_message(shared, out, None, &message).await?;
            out.moved.insert(room, Checkpoint { seq: message.seq, ..at });
        }
        BridgeEvent::MessageUpdated(message) | BridgeEvent::MessageDeleted(message) => {
            let room = message.room_id;
            let mut at = checkpoint(shared, rooms, out, room, false).await?;
            if at.is_some_and(|c| c.seq < message.seq) {
                at = checkpoint(shared, rooms, out, room, true).await?;
            }
            if let Some(at) = at
                && at.seq < message.seq
            {
                // Its creation is not enqueued yet (another process's): the
                // receiver hears of the message before its change.
                fill_gap(shared, out, room, at.seq, message.seq + 1, message.created_at).await?;
            }
            let changed = message.edited_at.map_or(0, |t| t.as_millis());
            let at = out.moved.get(&room).copied().or(at).unwrap_or_default();
            out.push(if message.deleted { Event::message_deleted(&message) } else { Event::message_updated(&message) });
            out.moved.insert(room, Checkpoint { seq: at.seq.max(message.seq), changed: at.changed.max(changed) });
        }
        BridgeEvent::RoomCreated(room) => {
            if checkpoint(shared, rooms, out, room.id, false).await?.is_some() {
                // A catch-up enqueued it already.
                return Ok(());
            }
            add_room_created(shared, out, &room).await?;
            out.moved.insert(room.id, Checkpoint { seq: room.last_seq, changed: 0 });
        }
        BridgeEvent::RoomUpdated(room) => {
            out.push(if room.kind == RoomKind::Support {
                Event::support_changed(&room)
            } else {
                Event::room_updated(&room)
            });
        }
        BridgeEvent::MemberAdded { room_id, user } => out.push(Event::member_added(room_id, &user)),
        BridgeEvent::MemberRemoved { room_id, user_id } => out.push(Event::member_removed(room_id, &user_id)),
        other => tracing::debug!(event = ?other, "webhooks: an engine event with no webhook"),
    }
    Ok(())
}

/// `message.created` for a stored message, after `support.opened` when it
/// is a support room's first. `room` is the room when the caller has it.
async fn add_message(shared: &Shared, out: &mut Batch, room: Option<&Room>, message: &Message) -> Result<()> {
    if message.seq == 1 {
        let read;
        let room = match room {
            Some(room) => Some(room),
            None => {
                read = shared.store()?.room(message.room_id).await?;
                read.as_ref()
            }
        };
        if let Some(room) = room.filter(|r| r.kind == RoomKind::Support) {
            out.push(Event::support_opened(room, message.created_at));
        }
    }
    out.push(Event::message_created(message));
    Ok(())
}

/// `room.created`, then `member.added` for each member named at its
/// creation (those who joined at its creation time), not its creator.
async fn add_room_created(shared: &Shared, out: &mut Batch, room: &Room) -> Result<()> {
    out.push(Event::room_created(room));
    let store = shared.store()?;
    let named: Vec<_> = store
        .members(room.id)
        .await?
        .into_iter()
        .filter(|m| m.user_id != room.created_by && m.joined_at == room.created_at)
        .map(|m| m.user_id)
        .collect();
    if named.is_empty() {
        return Ok(());
    }
    let mut users: HashMap<_, User> = store.users(&named).await?.into_iter().map(|u| (u.id.clone(), u)).collect();
    for id in &named {
        if let Some(user) = users.remove(id) {
            out.push(Event::initial_member(room, &user));
        }
    }
    Ok(())
}

/// `message.created` for the messages of a room after `after_seq` and
/// before `before_seq` that the store holds and no one enqueued yet: what
/// another process stored just before this one stored a later message.
/// Only a small, recent gap is filled here (a larger one, or older
/// messages, are a catch-up's business: such a checkpoint is stale, from a
/// time without endpoints).
async fn fill_gap(
    shared: &Shared,
    out: &mut Batch,
    room: RoomId,
    after_seq: u64,
    before_seq: u64,
    near: Timestamp,
) -> Result<()> {
    let missing = before_seq.saturating_sub(after_seq + 1);
    if missing == 0 {
        return Ok(());
    }
    if missing > MAX_GAP {
        tracing::debug!(%room, missing, "webhooks: a room's checkpoint is far behind; leaving it to the catch-up");
        return Ok(());
    }
    let query = HistoryQuery { after_seq: Some(after_seq), before_seq: Some(before_seq), limit: MAX_GAP as u32 };
    let page = shared.store()?.history(room, query).await?;
    let oldest = Timestamp::from_millis(near.as_millis().saturating_sub(CATCH_UP_SLACK.as_millis() as i64));
    for message in page.messages.iter().filter(|m| m.created_at >= oldest) {
        add_message(shared, out, None, message).await?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// The catch-up: what the store holds and no event brought

/// Enqueues what was committed and never enqueued, for the rooms active
/// since the last catch-up (less [`CATCH_UP_SLACK`]): `room.created` (with
/// its first members) for rooms without a checkpoint, `message.created`
/// for messages after the checkpoint, `message.updated`/`message.deleted`
/// for changes newer than it. Ids are derived from what they are about, so
/// what was delivered before the crash comes again with the same id.
async fn catch_up(shared: &Shared, rooms: &mut Checkpoints) -> Result<()> {
    let started = Timestamp::now();
    let outbox = shared.outbox()?;
    let scanned = outbox.remote_of(NAME, LINK_STATE, SCANNED).await?.and_then(|v| v.parse::<i64>().ok());
    let endpoints = shared.load_endpoints().await?;
    // Without endpoints, or on the very first start, nothing was missed:
    // the next catch-up starts from here.
    if let Some(scanned) = scanned.filter(|_| !endpoints.is_empty()) {
        let since = Timestamp::from_millis(scanned.saturating_sub(CATCH_UP_SLACK.as_millis() as i64));
        let store = shared.store()?;
        let (mut from, mut after) = (since, None);
        loop {
            let page = store.rooms_active_since(from, after, CATCH_UP_PAGE).await?;
            let mut out = Batch { found_later: true, ..Batch::default() };
            for active in &page {
                catch_up_room(shared, rooms, &mut out, &active.room, since).await?;
                if out.events.len() >= 1000 {
                    let full = std::mem::replace(&mut out, Batch { found_later: true, ..Batch::default() });
                    write(shared, rooms, &full, &endpoints).await?;
                }
            }
            write(shared, rooms, &out, &endpoints).await?;
            match page.last() {
                Some(last) if page.len() == CATCH_UP_PAGE as usize => {
                    (from, after) = (last.last_activity, Some(last.room.id))
                }
                _ => break,
            }
        }
    }
    outbox.set_link(NAME, LINK_STATE, SCANNED, &started.as_millis().to_string()).await?;
    Ok(())
}

/// One room of a catch-up, with `since` the oldest time it looks at.
async fn catch_up_room(
    shared: &Shared,
    rooms: &mut Checkpoints,
    out: &mut Batch,
    room: &Room,
    since: Timestamp,
) -> Result<()> {
    let store = shared.store()?;
    let known = checkpoint(shared, rooms, out, room.id, true).await?;
    let mut at = known.unwrap_or_default();
    if known.is_none() && room.created_at >= since {
        add_room_created(shared, out, room).await?;
    }
    if room.last_seq > at.seq {
        for message in unenqueued(store, room, at.seq, since).await? {
            add_message(shared, out, Some(room), &message).await?;
        }
        at.seq = room.last_seq;
    }
    let after = Timestamp::from_millis(at.changed.saturating_add(1)).max(since);
    for message in store.changed_messages(room.id, after, 1000).await? {
        let changed = message.edited_at.map_or(0, |t| t.as_millis());
        if changed <= at.changed || message.seq > at.seq {
            continue;
        }
        out.push(if message.deleted { Event::message_deleted(&message) } else { Event::message_updated(&message) });
        at.changed = changed;
    }
    if known != Some(at) {
        out.moved.insert(room.id, at);
    }
    Ok(())
}

/// The messages of a room after `after_seq` stored at or after `since`,
/// oldest first, at most [`MAX_CATCH_UP_MESSAGES`] (the newest), read
/// newest first until one is older than `since`.
async fn unenqueued(store: &dyn Store, room: &Room, after_seq: u64, since: Timestamp) -> Result<Vec<Message>> {
    let mut found = Vec::new();
    let mut before = room.last_seq + 1;
    'pages: while before > after_seq + 1 {
        let query = HistoryQuery { before_seq: Some(before), after_seq: None, limit: 100 };
        let page = store.history(room.id, query).await?;
        let Some(first) = page.messages.first() else { break };
        before = first.seq;
        for message in page.messages.into_iter().rev() {
            if message.seq <= after_seq || message.created_at < since || found.len() >= MAX_CATCH_UP_MESSAGES {
                break 'pages;
            }
            found.push(message);
        }
    }
    found.reverse();
    Ok(found)
}

// ---------------------------------------------------------------------------
// The worker: deliveries → receivers

/// What a finished delivery tells the worker: its endpoint and queue, and
/// when it is due again if it is to be retried.
type Finished = (String, String, Option<Timestamp>);

/// Sends due deliveries until `stop` is set, never abandoning one in the
/// middle: each endpoint's outbox is read when this process enqueued for it,
/// when one of its deliveries finished or comes due again, and every
/// `poll_every` (for what other processes enqueued).
async fn work(shared: Arc<Shared>, stop: Arc<AtomicBool>) {
    let config = &shared.config;
    let mut running: JoinSet<Finished> = JoinSet::new();
    // Endpoint → the queues (rooms) with a delivery in flight.
    let mut busy: HashMap<String, HashSet<String>> = HashMap::new();
    // Endpoint → when to read its due deliveries next.
    let mut next_look: HashMap<String, Instant> = HashMap::new();
    let mut counted_at = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        let endpoints = match shared.current_endpoints().await {
            Ok(endpoints) => endpoints,
            Err(err) => {
                shared.record_error(&err);
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        next_look.retain(|id, _| endpoints.iter().any(|e| e.id == *id));
        let mut wake_at = Instant::now() + config.poll_every;
        for endpoint in endpoints.iter() {
            let in_flight = busy.get(&endpoint.id).map_or(0, HashSet::len);
            let free = config
                .max_in_flight_per_endpoint
                .saturating_sub(in_flight)
                .min(config.max_in_flight.saturating_sub(running.len()));
            if free == 0 {
                continue;
            }
            let look_at = next_look.get(&endpoint.id).copied().unwrap_or_else(Instant::now);
            if look_at > Instant::now() {
                wake_at = wake_at.min(look_at);
                continue;
            }
            if !shared.lease.fresh() {
                // The leader renews it or stands down; wait for either.
                wake_at = Instant::now() + Duration::from_millis(100);
                break;
            }
            let limit = u32::try_from(in_flight + free).unwrap_or(u32::MAX);
            let due = async {
                Ok::<_, Error>(shared.outbox()?.due_jobs(&endpoint.outbox_name(), Timestamp::now(), limit).await?)
            }
            .await;
            next_look.insert(endpoint.id.clone(), Instant::now() + config.poll_every);
            let due = match due {
                Ok(due) => due,
                Err(err) => {
                    shared.record_error(&err);
                    continue;
                }
            };
            let queues = busy.entry(endpoint.id.clone()).or_default();
            let mut started = 0;
            for job in due {
                if started == free || !queues.insert(job.queue.clone()) {
                    continue;
                }
                started += 1;
                let (shared, endpoint) = (shared.clone(), endpoint.clone());
                running.spawn(async move {
                    let outcome = deliver(&shared, &endpoint, &job).await;
                    let retry_at = match settle(&shared, &endpoint, &job, outcome).await {
                        Ok(retry_at) => retry_at,
                        Err(err) => {
                            tracing::warn!(error = %err, delivery = job.id, "webhooks: cannot record a delivery's outcome");
                            shared.record_error(&err);
                            None
                        }
                    };
                    (endpoint.id, job.queue, retry_at)
                });
            }
        }
        if counted_at.elapsed() >= Duration::from_secs(2) {
            shared.refresh_counts().await;
            counted_at = Instant::now();
        }
        tokio::select! {
            Some(finished) = running.join_next(), if !running.is_empty() => {
                if let Ok((endpoint, queue, retry_at)) = finished {
                    if let Some(queues) = busy.get_mut(&endpoint) {
                        queues.remove(&queue);
                    }
                    // Its queue's next delivery may be due now; a retry comes due by itself.
                    let look_at = match retry_at {
                        Some(at) => Instant::now() + at.until(),
                        None => Instant::now(),
                    };
                    let next = next_look.entry(endpoint).or_insert(look_at);
                    *next = (*next).min(look_at);
                }
            }
            () = shared.wake.notified() => next_look.clear(),
            () = tokio::time::sleep_until(wake_at) => {}
        }
    }
    // Stopping: what was sent is answered (or times out) and recorded.
    while running.join_next().await.is_some() {}
    shared.refresh_counts().await;
}

/// One attempt of a delivery: the stored body, signed now. `Ok` for a 2xx
/// answer within the timeout; otherwise why not.
async fn deliver(shared: &Shared, endpoint: &Endpoint, job: &Job) -> Result<(), String> {
    let t = Timestamp::now().as_secs();
    let response = shared
        .client
        .post(&endpoint.url)
        .header("content-type", "application/json")
        .header(SIGNATURE_HEADER, signature(endpoint.secret.as_bytes(), t, job.payload.as_bytes()))
        .body(job.payload.clone())
        .send()
        .await;
    let mut response = match response {
        Ok(response) => response,
        Err(err) if err.is_timeout() => return Err(format!("no answer within {:?}", shared.config.timeout)),
        Err(err) if err.is_connect() => {
            return Err(format!("cannot connect: {}", chat_core::error::root_cause(&err.without_url())));
        }
        Err(err) => return Err(chat_core::error::root_cause(&err.without_url())),
    };
    let status = response.status();
    // Reading (some of) the answer keeps the connection for the next delivery.
    let mut read = 0;
    while read < MAX_ANSWER_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => read += chunk.len(),
            _ => break,
        }
    }
    if status.is_success() { Ok(()) } else { Err(format!("answered HTTP {}", status.as_u16())) }
}

/// Records an attempt's outcome: done; to retry after the backoff (never
/// later than the give-up time, so that the last attempt is made then); or
/// failed for good once that time has come. Returns when a retry is due.
async fn settle(
    shared: &Shared,
    endpoint: &Endpoint,
    job: &Job,
    outcome: Result<(), String>,
) -> Result<Option<Timestamp>> {
    let outbox = shared.outbox()?;
    let name = endpoint.outbox_name();
    let why = match outcome {
        Ok(()) => {
            outbox.finish_job(&name, job.id).await?;
            return Ok(None);
        }
        Err(why) => why,
    };
    tracing::info!(endpoint = %endpoint.id, delivery = job.id, attempts = job.attempts + 1, error = %why, "webhooks: delivery failed");
    shared.record_error(&format!("{}: {why}", endpoint.url));
    let now = Timestamp::now();
    let give_up_at = job.created_at.plus(shared.config.give_up_after);
    if now >= give_up_at {
        outbox.fail_job(&name, job.id, &why).await?;
        return Ok(None);
    }
    let run_at = now.plus(shared.config.backoff(job.attempts)).min(give_up_at);
    outbox.retry_job_at(&name, job.id, run_at, &why).await?;
    Ok(Some(run_at))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints_read_back() {
        let checkpoint = Checkpoint { seq: 42, changed: 1_767_323_045_123 };
        assert_eq!(Checkpoint::decode(&checkpoint.encode()), Some(checkpoint));
        assert_eq!(Checkpoint::decode("7"), None);
        assert_eq!(Checkpoint::decode("x:1"), None);
    }
}

//! [`PushBridge`]: who is pushed, folding, the outbox and the worker.
//!
//! Two kinds of jobs go through the store's bridge outbox (bridge `push`):
//!
//! - **fold** `{"user","room","from_seq"}`, one per user and room (its
//!   queue and dedupe key): "this user has something new in this room from
//!   this seq on". The process that committed a message enqueues one for
//!   each member who should hear of it; while one waits, the next messages
//!   of the room enqueue nothing (deduplicated) and are folded into it. It
//!   is due when the fold window since the user's last push of the room has
//!   passed. When it runs it reads the room from the store, from `from_seq`
//!   (or after what was last pushed), and writes one **send** job per
//!   subscription of the user together with a link
//!   `last:{user}:{room}` = `{sent at}:{seq}` in one commit; a fold job run
//!   again after a crash finds nothing after that seq and sends nothing.
//! - **send** `{"endpoint","user","body","ttl_s","urgency","topic"}`, one
//!   queue per endpoint: the payload encrypted now and POSTed; retried on
//!   429, 5xx and no answer; the subscription forgotten on 404 and 410.
//!   A push whose answer was lost is sent again, with the same `Topic`, so
//!   that a push service still holding the first replaces it.
//!
//! Calls skip folding: a call to a user with no open session becomes send
//! jobs at once, living as long as the call rings.
//!
//! Of several processes on one database, the one holding the lease runs
//! the jobs; all of them enqueue what they commit.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use chat_core::bridge::{BridgeStore, Job, JobStatus, Leader, Lease, NewJob, NewLink};
use chat_core::push::{MAX_SUBSCRIPTIONS, PushStore, PushSubscription};
use chat_core::{
    Bridge, BridgeEvent, BridgeHealth, BridgeHost, Call, CallNotifier, HistoryQuery, Message, RoomId, Store, Timestamp,
    User, UserId,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, mpsc};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use crate::config::PushConfig;
use crate::endpoint::{NewSubscription, PublicOnly, validate};
use crate::send::{self, Headers, Outcome};
use crate::vapid::VapidKey;

/// The bridge's name: its jobs, links and lease in the store.
pub const NAME: &str = "push";

/// The longest preview, in Unicode scalar values.
pub const PREVIEW_CHARS: usize = 120;

/// Messages and calls waiting to be looked at; past this, a push is lost
/// (said in the log and `/health`) rather than memory growing.
const QUEUE: usize = 10_000;

/// Messages read when a fold job counts what it stands for.
const FOLD_PAGE: u32 = 100;

/// How often a process asks the store whether anyone has a subscription
/// (one made through another process is seen within this).
const SUBSCRIBERS_EVERY: Duration = Duration::from_secs(5);

/// Users × rooms whose last push time this process remembers.
const MAX_RECENT: usize = 100_000;

/// A push to a browser, and how the outbox sends it.
#[derive(Clone)]
pub struct PushBridge {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for PushBridge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PushBridge").finish_non_exhaustive()
    }
}

/// Something to tell users who are away.
enum Work {
    Message(Message),
    Call(Box<Call>, User),
}

struct Shared {
    config: PushConfig,
    host: OnceLock<Arc<dyn BridgeHost>>,
    key: OnceLock<VapidKey>,
    client: webhook_reqwest::Client,
    work: mpsc::Sender<Work>,
    work_rx: Mutex<Option<mpsc::Receiver<Work>>>,
    lease: Lease,
    leading: tokio::sync::Mutex<Option<Leading>>,
    wake: Notify,
    /// When this process last pushed a user about a room (the link in the
    /// store is the truth; this spares reading it for every message).
    recent: Mutex<HashMap<(UserId, RoomId), Timestamp>>,
    state: Mutex<State>,
    lost: AtomicU64,
    sent: AtomicU64,
    /// Whether anyone may have a subscription: while nobody has, committed
    /// messages are not even queued (a server that does not use push pays
    /// nothing). Set at once by a subscription here, and read from the store
    /// every [`SUBSCRIBERS_EVERY`] for those made through other processes.
    anyone: AtomicBool,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

struct Leading {
    stop: Arc<AtomicBool>,
    worker: JoinHandle<()>,
}

#[derive(Default)]
struct State {
    active: bool,
    pending: u64,
    last_error: Option<String>,
}

/// A fold job's arguments.
#[derive(Debug, Serialize, Deserialize)]
struct Fold {
    user: UserId,
    room: RoomId,
    from_seq: u64,
}

/// A send job's arguments.
#[derive(Debug, Serialize, Deserialize)]
struct Send {
    endpoint: String,
    user: UserId,
    body: String,
    ttl_s: u64,
    urgency: String,
    topic: String,
}

/// The payload of a message push (section 8).
#[derive(Debug, Serialize)]
struct MessagePush<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    room_id: RoomId,
    #[serde(skip_serializing_if = "Option::is_none")]
    room_name: Option<&'a str>,
    message_id: String,
    seq: u64,
    sender: &'a User,
    preview: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    count: Option<u64>,
}

/// The payload of a call push (section 8).
#[derive(Debug, Serialize)]
struct CallPush<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    call_id: String,
    room_id: RoomId,
    from: &'a User,
    media: chat_core::CallMedia,
}

impl PushBridge {
    /// A bridge with these settings; it runs once the engine starts it.
    pub fn new(config: PushConfig) -> chat_core::Result<Self> {
        config.validate()?;
        let mut client = webhook_reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            .redirect(webhook_reqwest::redirect::Policy::none())
            .user_agent(concat!("chat-push/", env!("CARGO_PKG_VERSION")));
        if !config.allow_private_endpoints {
            client = client.dns_resolver(Arc::new(PublicOnly));
        }
        let client = client.build().map_err(|e| chat_core::Error::internal(format!("push: HTTP client: {e}")))?;
        let (work, work_rx) = mpsc::channel(QUEUE);
        let lease = Lease::new(NAME, config.lease_ttl, config.lease_renew);
        let key = OnceLock::new();
        if let Some(configured) = &config.key {
            let _ = key.set(configured.clone());
        }
        Ok(Self {
            shared: Arc::new(Shared {
                config,
                host: OnceLock::new(),
                key,
                client,
                work,
                work_rx: Mutex::new(Some(work_rx)),
                lease,
                leading: tokio::sync::Mutex::new(None),
                wake: Notify::new(),
                recent: Mutex::new(HashMap::new()),
                state: Mutex::new(State::default()),
                lost: AtomicU64::new(0),
                sent: AtomicU64::new(0),
                anyone: AtomicBool::new(true),
                tasks: Mutex::new(Vec::new()),
            }),
        })
    }

    /// The VAPID public key browsers subscribe with; `None` before the
    /// engine started the bridge.
    pub fn public_key(&self) -> Option<&str> {
        self.shared.key.get().map(VapidKey::public_key)
    }

    /// Stores `user`'s subscription (checked: see the wire contract); an
    /// 11th replaces their oldest.
    pub async fn subscribe(&self, user: &UserId, new: NewSubscription) -> chat_core::Result<()> {
        validate(&new, self.shared.config.allow_private_endpoints)?;
        let subscription = PushSubscription {
            user_id: user.clone(),
            endpoint: new.endpoint,
            p256dh: new.keys.p256dh,
            auth: new.keys.auth,
            created_at: Timestamp::now(),
        };
        self.shared.subs()?.add_push_subscription(&subscription, MAX_SUBSCRIPTIONS).await?;
        self.shared.anyone.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Removes `user`'s subscription of `endpoint`; an unknown one is no error.
    pub async fn unsubscribe(&self, user: &UserId, endpoint: &str) -> chat_core::Result<()> {
        self.shared.subs()?.remove_push_subscription(user, endpoint).await?;
        Ok(())
    }

    /// Pushes sent since the start (for tests and metrics).
    pub fn sent(&self) -> u64 {
        self.shared.sent.load(Ordering::Relaxed)
    }
}

impl Shared {
    fn host(&self) -> chat_core::Result<&dyn BridgeHost> {
        self.host.get().map(|h| h.as_ref()).ok_or_else(|| chat_core::Error::unavailable("push has not started"))
    }

    fn store(&self) -> chat_core::Result<&dyn Store> {
        Ok(self.host()?.store())
    }

    fn subs(&self) -> chat_core::Result<&dyn PushStore> {
        self.store()?
            .push_store()
            .ok_or_else(|| chat_core::Error::unavailable("this store keeps no push subscriptions"))
    }

    fn outbox(&self) -> chat_core::Result<&dyn BridgeStore> {
        self.store()?.bridge_store().ok_or_else(|| chat_core::Error::unavailable("this store keeps no bridge jobs"))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn record_error(&self, err: &dyn std::fmt::Display) {
        self.state().last_error = Some(err.to_string());
    }

    fn queue(&self, work: Work) {
        if self.work.try_send(work).is_err() {
            if self.lost.fetch_add(1, Ordering::Relaxed) == 0 {
                tracing::warn!("push: too much waiting; pushes are being lost");
            }
            self.record_error(&"the queue of pushes to look at was full; some were lost");
        }
    }

    /// When the user's next push of the room may go, as far as this process knows.
    fn due(&self, user: &UserId, room: RoomId, now: Timestamp) -> Timestamp {
        let recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        recent.get(&(user.clone(), room)).map_or(now, |at| at.plus(self.config.fold_window).max(now))
    }

    fn pushed(&self, user: &UserId, room: RoomId, at: Timestamp) {
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        if recent.len() >= MAX_RECENT {
            let window = self.config.fold_window;
            recent.retain(|_, t| t.plus(window) > at);
            if recent.len() >= MAX_RECENT {
                recent.clear();
            }
        }
        recent.insert((user.clone(), room), at);
    }

    async fn refresh_counts(&self) {
        if let Ok(outbox) = self.outbox()
            && let Ok(counts) = outbox.job_counts(NAME).await
        {
            self.state().pending = counts.pending;
        }
    }
}

#[async_trait]
impl Bridge for PushBridge {
    fn name(&self) -> &str {
        NAME
    }

    async fn start(&self, host: Arc<dyn BridgeHost>) -> chat_core::Result<()> {
        let store = host.store();
        if store.bridge_store().is_none() || store.push_store().is_none() {
            return Err(chat_core::Error::internal("push needs a store that keeps bridge jobs and push subscriptions"));
        }
        if self.shared.key.get().is_none() {
            let key = VapidKey::from_store(store).await?;
            let _ = self.shared.key.set(key);
        }
        let shared = &self.shared;
        if shared.host.set(host).is_err() {
            return Err(chat_core::Error::internal("push was started twice"));
        }
        let Some(work) = shared.work_rx.lock().unwrap_or_else(|e| e.into_inner()).take() else {
            return Err(chat_core::Error::internal("push was started twice"));
        };
        let held = hold_lease(shared).await?;
        shared.anyone.store(shared.subs()?.any_push_subscription().await?, Ordering::Relaxed);
        let tasks = vec![
            tokio::spawn(enqueue(shared.clone(), work)),
            tokio::spawn(lead(shared.clone(), held)),
            tokio::spawn(watch_subscribers(shared.clone())),
        ];
        *shared.tasks.lock().unwrap_or_else(|e| e.into_inner()) = tasks;
        shared.refresh_counts().await;
        tracing::info!(active = held, "push: started");
        Ok(())
    }

    fn on_event(&self, event: &BridgeEvent, _origin: Option<&str>) {
        // A call's history line is no news: the call was pushed when it rang.
        if let BridgeEvent::MessageCreated(message) = event
            && self.shared.anyone.load(Ordering::Relaxed)
            && message.call.is_none()
            && !message.deleted
        {
            self.shared.queue(Work::Message(message.clone()));
        }
    }

    fn health(&self) -> BridgeHealth {
        let state = self.shared.state();
        let started = self.shared.host.get().is_some();
        BridgeHealth {
            connected: true,
            standby: started && !state.active,
            pending: state.pending,
            failed: 0,
            last_error: state.last_error.clone(),
            details: [
                ("role".to_owned(), if state.active { "active" } else { "standby" }.to_owned()),
                ("sent".to_owned(), self.shared.sent.load(Ordering::Relaxed).to_string()),
                ("lost".to_owned(), self.shared.lost.load(Ordering::Relaxed).to_string()),
            ]
            .into(),
        }
    }

    async fn jobs(&self, status: JobStatus, limit: u32) -> chat_core::Result<Vec<Job>> {
        self.shared.outbox()?.jobs(NAME, status, limit).await
    }

    async fn stop(&self) {
        let tasks = std::mem::take(&mut *self.shared.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        for task in tasks {
            task.abort();
        }
        if step_down(&self.shared).await
            && let Ok(outbox) = self.shared.outbox()
            && let Err(err) = self.shared.lease.release(outbox).await
        {
            tracing::warn!(error = %err, "push: cannot release the lease; it runs out by itself");
        }
    }
}

impl CallNotifier for PushBridge {
    fn callee_unreachable(&self, call: &Call, from: &User) {
        self.shared.queue(Work::Call(Box::new(call.clone()), from.clone()));
    }
}

// ---------------------------------------------------------------------------
// The lease: of several processes, one sends

async fn hold_lease(shared: &Arc<Shared>) -> chat_core::Result<bool> {
    let held = shared.lease.acquire(shared.outbox()?).await?;
    if held {
        step_up(shared).await;
    } else {
        step_down(shared).await;
    }
    Ok(held)
}

async fn lead(shared: Arc<Shared>, held: bool) {
    shared.lease.keep(&Holder(shared.clone()), held).await;
}

struct Holder(Arc<Shared>);

#[async_trait]
impl Leader for Holder {
    type Error = chat_core::Error;

    async fn hold(&self) -> chat_core::Result<bool> {
        hold_lease(&self.0).await
    }

    async fn stand_down(&self) {
        step_down(&self.0).await;
    }

    fn failed(&self, err: &chat_core::Error) {
        self.0.record_error(err);
    }

    async fn tried(&self, held: bool) {
        if !held {
            self.0.refresh_counts().await;
        }
    }
}

async fn step_up(shared: &Arc<Shared>) {
    let mut leading = shared.leading.lock().await;
    if leading.is_some() {
        return;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let worker = tokio::spawn(work(shared.clone(), stop.clone()));
    *leading = Some(Leading { stop, worker });
    shared.state().active = true;
}

async fn step_down(shared: &Shared) -> bool {
    let Some(leading) = shared.leading.lock().await.take() else {
        return false;
    };
    shared.state().active = false;
    leading.stop.store(true, Ordering::SeqCst);
    shared.wake.notify_one();
    let mut worker = leading.worker;
    if tokio::time::timeout(shared.config.timeout + Duration::from_secs(1), &mut worker).await.is_err() {
        worker.abort();
    }
    true
}

// ---------------------------------------------------------------------------
// Messages and calls → jobs in the outbox

/// Keeps [`Shared::anyone`] current with subscriptions made elsewhere.
async fn watch_subscribers(shared: Arc<Shared>) {
    loop {
        tokio::time::sleep(SUBSCRIBERS_EVERY).await;
        match async { shared.subs()?.any_push_subscription().await }.await {
            Ok(any) => shared.anyone.store(any, Ordering::Relaxed),
            Err(err) => shared.record_error(&err),
        }
    }
}

/// Messages and calls taken off the queue at once: the messages of a batch
/// cost one query and one commit.
const BATCH: usize = 256;

/// How long a batch waits for more after its first message.
const COALESCE: Duration = Duration::from_millis(50);

async fn enqueue(shared: Arc<Shared>, mut work: mpsc::Receiver<Work>) {
    let mut batch = Vec::with_capacity(BATCH);
    while work.recv_many(&mut batch, BATCH).await > 0 {
        // What comes within COALESCE joins the batch: under load a batch
        // fills in a few milliseconds, and a trickle costs a read per COALESCE
        // rather than one per message.
        let until = Instant::now() + COALESCE;
        while batch.len() < BATCH {
            let room = BATCH - batch.len();
            match tokio::time::timeout_at(until, work.recv_many(&mut batch, room)).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        let mut messages = Vec::new();
        let mut results = Vec::new();
        for item in batch.drain(..) {
            match item {
                Work::Message(message) => messages.push(message),
                Work::Call(call, from) => results.push(enqueue_call(&shared, &call, &from).await),
            }
        }
        results.push(enqueue_messages(&shared, &messages).await);
        for result in results {
            match result {
                Ok(true) => shared.wake.notify_one(),
                Ok(false) => {}
                Err(err) => {
                    tracing::warn!(error = %err, "push: cannot enqueue; those pushes are lost");
                    shared.record_error(&err);
                }
            }
        }
    }
}

/// A fold job for each member who should hear of one of `messages`:
/// subscribed, not its sender, not muted, with no open session anywhere,
/// starting at the first of the room's messages that is not their own.
async fn enqueue_messages(shared: &Shared, messages: &[Message]) -> chat_core::Result<bool> {
    if messages.is_empty() {
        return Ok(false);
    }
    let host = shared.host()?;
    let subs = shared.subs()?;
    let now = Timestamp::now();
    // Room → sender → the sender's first seq in the batch (rooms in the
    // order they came, so that jobs are enqueued in the messages' order).
    let mut rooms: Vec<(RoomId, Vec<(UserId, u64)>)> = Vec::new();
    for m in messages {
        let at = match rooms.iter().position(|(room, _)| *room == m.room_id) {
            Some(at) => at,
            None => {
                rooms.push((m.room_id, Vec::new()));
                rooms.len() - 1
            }
        };
        let senders = &mut rooms[at].1;
        match senders.iter_mut().find(|(sender, _)| *sender == m.sender_id) {
            Some((_, seq)) => *seq = (*seq).min(m.seq),
            None => senders.push((m.sender_id.clone(), m.seq)),
        }
    }
    let ids: Vec<RoomId> = rooms.iter().map(|(room, _)| *room).collect();
    let mut members: HashMap<RoomId, Vec<UserId>> = HashMap::new();
    for (room, user) in subs.push_recipients(&ids, now).await? {
        members.entry(room).or_default().push(user);
    }
    let mut jobs = Vec::new();
    for (room, senders) in rooms {
        for user in members.remove(&room).unwrap_or_default() {
            // The first message in the batch that someone else sent.
            let Some(from_seq) = senders.iter().filter(|(s, _)| *s != user).map(|(_, seq)| *seq).min() else {
                continue;
            };
            if host.has_open_session(&user) {
                continue;
            }
            let key = format!("fold:{user}:{room}");
            let due = shared.due(&user, room, now);
            let fold = Fold { user, room, from_seq };
            jobs.push(NewJob {
                bridge: NAME.into(),
                queue: key.clone(),
                dedupe_key: key,
                kind: "fold".into(),
                payload: serde_json::to_string(&fold).unwrap_or_default(),
                created_at: due,
            });
        }
    }
    if jobs.is_empty() {
        return Ok(false);
    }
    Ok(shared.outbox()?.enqueue_jobs(jobs).await? > 0)
}

/// A send job for each subscription of a callee who has no open session.
async fn enqueue_call(shared: &Shared, call: &Call, from: &User) -> chat_core::Result<bool> {
    let callee = &call.callee.user_id;
    if shared.host()?.has_open_session(callee) {
        return Ok(false);
    }
    let now = Timestamp::now();
    let ttl = call.ring_until.until();
    if ttl < Duration::from_secs(1) {
        return Ok(false);
    }
    let payload =
        CallPush { kind: "call", call_id: call.id.to_string(), room_id: call.room_id, from, media: call.media };
    let body = serde_json::to_string(&payload).map_err(|e| chat_core::Error::internal(e.to_string()))?;
    let subscriptions = shared.subs()?.push_subscriptions(callee).await?;
    let tag = format!("call:{}", call.id);
    let jobs = send_jobs(&subscriptions, &tag, &body, ttl, "high", &send::topic(&tag), now);
    if jobs.is_empty() {
        return Ok(false);
    }
    Ok(shared.outbox()?.enqueue_jobs(jobs).await? > 0)
}

fn send_jobs(
    subscriptions: &[PushSubscription],
    tag: &str,
    body: &str,
    ttl: Duration,
    urgency: &str,
    topic: &str,
    now: Timestamp,
) -> Vec<NewJob> {
    subscriptions
        .iter()
        .map(|s| {
            let queue = format!("send:{}", send::topic(&s.endpoint));
            let job = Send {
                endpoint: s.endpoint.clone(),
                user: s.user_id.clone(),
                body: body.to_owned(),
                ttl_s: ttl.as_secs(),
                urgency: urgency.to_owned(),
                topic: topic.to_owned(),
            };
            NewJob {
                bridge: NAME.into(),
                dedupe_key: format!("{queue}:{tag}"),
                queue,
                kind: "send".into(),
                payload: serde_json::to_string(&job).unwrap_or_default(),
                created_at: now,
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------
// The worker

/// Runs due jobs until `stop` is set: when something was enqueued here,
/// when a job ends, and every `poll_every` (for other processes' jobs).
async fn work(shared: Arc<Shared>, stop: Arc<AtomicBool>) {
    let mut running: JoinSet<(String, Option<Timestamp>)> = JoinSet::new();
    let mut busy: HashSet<String> = HashSet::new();
    let mut next_look = Instant::now();
    let mut counted_at = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        let free = shared.config.max_in_flight.saturating_sub(running.len());
        if free > 0 && next_look <= Instant::now() {
            if shared.lease.fresh() {
                next_look = Instant::now() + shared.config.poll_every;
                let limit = u32::try_from(busy.len() + free).unwrap_or(u32::MAX);
                let due = async { shared.outbox()?.due_jobs(NAME, Timestamp::now(), limit).await }.await;
                match due {
                    Ok(due) => {
                        let due: Vec<Job> = due.into_iter().filter(|j| !busy.contains(&j.queue)).take(free).collect();
                        for job in due {
                            busy.insert(job.queue.clone());
                            let shared = shared.clone();
                            running.spawn(async move {
                                let again = match run(&shared, &job).await {
                                    Ok(again) => again,
                                    Err(err) => {
                                        tracing::warn!(error = %err, job = job.id, "push: a job failed");
                                        shared.record_error(&err);
                                        let at = Timestamp::now().plus(Duration::from_secs(5));
                                        if let Ok(outbox) = shared.outbox() {
                                            let _ = outbox.retry_job_at(NAME, job.id, at, &err.to_string()).await;
                                        }
                                        Some(at)
                                    }
                                };
                                (job.queue, again)
                            });
                        }
                    }
                    Err(err) => shared.record_error(&err),
                }
            } else {
                next_look = Instant::now() + Duration::from_millis(100);
            }
        }
        if counted_at.elapsed() >= Duration::from_secs(2) {
            shared.refresh_counts().await;
            counted_at = Instant::now();
        }
        tokio::select! {
            Some(done) = running.join_next(), if !running.is_empty() => {
                if let Ok((queue, again)) = done {
                    busy.remove(&queue);
                    let at = again.map_or_else(Instant::now, |t| Instant::now() + t.until());
                    next_look = next_look.min(at);
                }
            }
            () = shared.wake.notified() => next_look = Instant::now(),
            () = tokio::time::sleep_until(next_look.max(Instant::now() + Duration::from_millis(1))) => {}
        }
    }
    while running.join_next().await.is_some() {}
    shared.refresh_counts().await;
}

/// Runs one job; returns when it is due again, if it stays.
async fn run(shared: &Shared, job: &Job) -> chat_core::Result<Option<Timestamp>> {
    match job.kind.as_str() {
        "fold" => run_fold(shared, job).await,
        "send" => run_send(shared, job).await,
        other => {
            tracing::warn!(kind = other, "push: a job of an unknown kind is dropped");
            shared.outbox()?.finish_job(NAME, job.id).await?;
            Ok(None)
        }
    }
}

fn parse_last(link: Option<String>) -> Option<(Timestamp, u64)> {
    let link = link?;
    let (at, seq) = link.split_once(':')?;
    Some((Timestamp::from_millis(at.parse().ok()?), seq.parse().ok()?))
}

/// A fold job: what the user missed in the room since the last push, as
/// one push to each of their subscriptions.
async fn run_fold(shared: &Shared, job: &Job) -> chat_core::Result<Option<Timestamp>> {
    let outbox = shared.outbox()?;
    let Ok(fold) = serde_json::from_str::<Fold>(&job.payload) else {
        outbox.finish_job(NAME, job.id).await?;
        return Ok(None);
    };
    let now = Timestamp::now();
    let link_key = format!("{}:{}", fold.user, fold.room);
    let last = parse_last(outbox.remote_of(NAME, "last", &link_key).await?);
    if let Some((sent_at, _)) = last {
        let open_at = sent_at.plus(shared.config.fold_window);
        if open_at > now {
            // Another process pushed lately: this one waits its turn.
            outbox.retry_job_at(NAME, job.id, open_at, "waits for the fold window").await?;
            return Ok(Some(open_at));
        }
    }
    let store = shared.store()?;
    let host = shared.host()?;
    let member = store.member(fold.room, &fold.user).await?;
    let wanted = member.is_some_and(|m| !m.is_muted(now)) && !host.has_open_session(&fold.user);
    let pushed_seq = last.map_or(0, |(_, seq)| seq);
    let after = pushed_seq.max(fold.from_seq.saturating_sub(1));
    let mut news = Vec::new();
    let mut more = false;
    if wanted {
        let page = store
            .history(fold.room, HistoryQuery { before_seq: None, after_seq: Some(after), limit: FOLD_PAGE })
            .await?;
        more = page.has_more;
        news =
            page.messages.into_iter().filter(|m| m.sender_id != fold.user && !m.deleted && m.call.is_none()).collect();
    }
    let Some(mut latest) = news.last().cloned() else {
        outbox.finish_job(NAME, job.id).await?;
        return Ok(None);
    };
    let mut count = news.len() as u64;
    if more {
        // More than a page: the newest message is the preview, and the
        // count is every seq since (own messages included: an estimate).
        let newest = store.history(fold.room, HistoryQuery { before_seq: None, after_seq: None, limit: 1 }).await?;
        if let Some(m) = newest.messages.into_iter().next().filter(|m| m.sender_id != fold.user && !m.deleted) {
            latest = m;
        }
        count = latest.seq.saturating_sub(after);
    }
    let room = store.room(fold.room).await?;
    let sender = store
        .users(std::slice::from_ref(&latest.sender_id))
        .await?
        .into_iter()
        .next()
        .unwrap_or_else(|| User::new(latest.sender_id.clone(), latest.sender_id.to_string()));
    let payload = MessagePush {
        kind: "message",
        room_id: fold.room,
        room_name: room.as_ref().and_then(|r| r.name.as_deref()),
        message_id: latest.id.to_string(),
        seq: latest.seq,
        sender: &sender,
        preview: preview(&latest),
        count: (count > 1).then_some(count),
    };
    let body = serde_json::to_string(&payload).map_err(|e| chat_core::Error::internal(e.to_string()))?;
    let subscriptions = shared.subs()?.push_subscriptions(&fold.user).await?;
    let topic = send::topic(&format!("room:{}", fold.room));
    let tag = format!("{}:{}:{}", fold.user, fold.room, latest.seq);
    let jobs = send_jobs(&subscriptions, &tag, &body, shared.config.message_ttl, "normal", &topic, now);
    let link = NewLink {
        bridge: NAME.into(),
        kind: "last".into(),
        local: link_key,
        remote: format!("{}:{}", now.as_millis(), latest.seq.max(pushed_seq)),
    };
    outbox.enqueue_and_link(jobs, vec![link]).await?;
    outbox.finish_job(NAME, job.id).await?;
    shared.pushed(&fold.user, fold.room, now);
    shared.wake.notify_one();
    Ok(None)
}

/// The first [`PREVIEW_CHARS`] of a message's text, or its files' names.
fn preview(message: &Message) -> String {
    let text = if message.body.trim().is_empty() && !message.attachments.is_empty() {
        let names: Vec<&str> = message.attachments.iter().map(|a| a.name.as_str()).collect();
        format!("📎 {}", names.join(", "))
    } else {
        message.body.clone()
    };
    text.chars().take(PREVIEW_CHARS).collect()
}

/// A send job: one attempt, and what its answer means.
async fn run_send(shared: &Shared, job: &Job) -> chat_core::Result<Option<Timestamp>> {
    let outbox = shared.outbox()?;
    let Ok(push) = serde_json::from_str::<Send>(&job.payload) else {
        outbox.finish_job(NAME, job.id).await?;
        return Ok(None);
    };
    let subscription = shared.subs()?.push_subscription(&push.endpoint).await?;
    // Unsubscribed since, or the browser now belongs to someone else.
    let Some(subscription) = subscription.filter(|s| s.user_id == push.user) else {
        outbox.finish_job(NAME, job.id).await?;
        return Ok(None);
    };
    let now = Timestamp::now();
    let expires = job.created_at.plus(Duration::from_secs(push.ttl_s));
    if now >= expires {
        outbox.finish_job(NAME, job.id).await?;
        shared.record_error(&format!("a push to {} expired unsent", origin(&push.endpoint)));
        return Ok(None);
    }
    let key = shared.key.get().ok_or_else(|| chat_core::Error::unavailable("push has no VAPID key"))?;
    let headers = Headers { ttl: expires.until(), urgency: &push.urgency, topic: &push.topic };
    let outcome =
        send::push(&shared.client, key, &shared.config.subject, &subscription, push.body.as_bytes(), headers).await;
    match outcome {
        Outcome::Sent => {
            outbox.finish_job(NAME, job.id).await?;
            shared.sent.fetch_add(1, Ordering::Relaxed);
            Ok(None)
        }
        Outcome::Gone => {
            tracing::info!(push_service = %origin(&push.endpoint), "push: a subscription is gone; forgetting it");
            shared.subs()?.forget_push_endpoint(&push.endpoint, subscription.created_at).await?;
            outbox.finish_job(NAME, job.id).await?;
            Ok(None)
        }
        Outcome::Refused(why) => {
            tracing::warn!(push_service = %origin(&push.endpoint), error = %why, "push: refused; dropped");
            shared.record_error(&format!("{}: {why}", origin(&push.endpoint)));
            outbox.finish_job(NAME, job.id).await?;
            Ok(None)
        }
        Outcome::Retry(why, after) => {
            shared.record_error(&format!("{}: {why}", origin(&push.endpoint)));
            let wait = after.unwrap_or_else(|| shared.config.backoff(job.attempts)).max(Duration::from_millis(100));
            let at = now.plus(wait);
            if at >= expires {
                outbox.finish_job(NAME, job.id).await?;
                return Ok(None);
            }
            outbox.retry_job_at(NAME, job.id, at, &why).await?;
            Ok(Some(at))
        }
    }
}

/// An endpoint's origin, for logs (the path names the subscription).
fn origin(endpoint: &str) -> String {
    endpoint.parse::<url::Url>().map_or_else(|_| "?".into(), |u| u.origin().ascii_serialization())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn previews_are_120_scalars_or_the_files() {
        let mut m = Message {
            id: chat_core::MessageId::generate(),
            room_id: RoomId::generate(),
            seq: 1,
            sender_id: UserId::new("a").expect("valid"),
            client_msg_id: "c".into(),
            body: "é".repeat(200),
            attachments: Vec::new(),
            reply_to: None,
            created_at: Timestamp::from_millis(0),
            edited_at: None,
            deleted: false,
            call: None,
        };
        assert_eq!(preview(&m).chars().count(), PREVIEW_CHARS);
        m.body = "short".into();
        assert_eq!(preview(&m), "short");
    }

    #[test]
    fn the_last_push_link_reads_back() {
        assert_eq!(parse_last(Some("1500:42".into())), Some((Timestamp::from_millis(1500), 42)));
        assert_eq!(parse_last(Some("junk".into())), None);
        assert_eq!(parse_last(None), None);
    }
}

//! [`DiscordBridge`]: the outbox worker, the enqueuer and the gateway.
//!
//! Tasks started by [`Bridge::start`], in every process configured with the bridge:
//!
//! - the **enqueuer** takes the engine's events from a bounded channel (so
//!   [`Bridge::on_event`] never waits) and writes them as outbox jobs;
//! - the **leader** takes and renews the bridge's lease in the store; while
//!   this process holds it, it runs the rest, and stops them when it loses it;
//! - the **catch-up** looks in the store for what the enqueuer missed (a
//!   crash between a commit and its job, an event dropped from a full
//!   channel) and enqueues it.
//!
//! Only while the lease is held:
//!
//! - the **worker** runs due jobs, one queue (room) at a time in order, and
//!   stores every id Discord hands back before the job counts as done;
//! - the **gateway** keeps serenity's shard connected and feeds what agents
//!   write into the **inbound** task, which posts it into rooms in order;
//! - the **watcher** looks at the shard every quarter second, so that a
//!   lost gateway shows in `/health` and no agent counts while it is gone
//!   (serenity tells handlers nothing when a resume or a restart fails).
//!
//! Who the agents are and who of them is online (the [`Roster`]) is built
//! by a collector on the shard, which sees the gateway's events in the
//! order they came; serenity runs each event's handler in a task of its
//! own, in no order.
//!
//! A post job mirrors every message of its room up to its own that is not in
//! Discord yet, oldest first, and moves the room's `posted` cursor: so the
//! order of a room holds whichever process enqueued which job first, and one
//! job found by the catch-up stands for every message it missed.
//!
//! The modules follow the tasks: [`lease`] is what this process starts and
//! stops as it takes and loses the lease; [`outbound`] holds the enqueuer,
//! the catch-up, the worker and what posts look like in Discord; [`inbound`]
//! holds the gateway and its watcher, the roster, the inbound task and the
//! catch-up after READY. This module keeps the bridge itself, the state its
//! tasks share, the kinds of link it keeps in the store, and what both
//! directions use.

mod inbound;
mod lease;
mod outbound;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
#[cfg(feature = "test-support")]
use std::time::Duration;

use async_trait::async_trait;
use chat_core::bridge::Lease;
use chat_core::{Bridge, BridgeEvent, BridgeHealth, BridgeHost, BridgeStore, Job, RoomId, RoomKind, Timestamp, UserId};
use serde_json::{Value, json};
use serenity::all::ChannelId;
use serenity::gateway::ShardManager;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;

use crate::config::DiscordConfig;
use crate::error::{Error, Result};
use crate::rest::Rest;
use inbound::roster::Roster;
use lease::{hold_lease, lead, step_down};
use outbound::{catch_up_loop, enqueue};

/// The name of this bridge: in `/health`, in the store, as an event's origin.
pub const NAME: &str = "discord";

/// The user id of a Discord member inside the chat.
pub fn agent_user_id(discord_user: u64) -> Result<UserId> {
    Ok(UserId::new(format!("discord:{discord_user}"))?)
}

const LINK_THREAD: &str = "thread";
const LINK_MESSAGE: &str = "message";
const LINK_WEBHOOK: &str = "webhook";
const LINK_CURSOR: &str = "cursor";
/// A support room whose first post was checked for its buttons after a
/// READY (and given them if it lacked them), so it is not checked again.
const LINK_BUTTONS: &str = "buttons";
/// Room → the seq up to which every message of the room that goes to
/// Discord was posted (or given up on). Moved by post jobs only.
const LINK_POSTED: &str = "posted";
/// Room → the newest change time (ms) a catch-up looked at.
const LINK_CHANGES: &str = "changes";
/// Message → the change Discord shows: its `edited_at` in ms, or `deleted`.
const LINK_MIRRORED: &str = "mirrored";
/// Room → set once its thread was archived.
const LINK_ARCHIVED: &str = "archived";
/// `online_agents` → what the lease holder counts, and until when (ms) that holds.
const LINK_STATUS: &str = "status";
/// Message → the ids (JSON) of its files that reached Discord as lines
/// rather than uploads, so that an edit shows the same lines.
const LINK_FILE_LINES: &str = "file-lines";
/// An agent's message → the lines naming its files that could not be
/// copied in, which its edits keep.
const LINK_LINES_IN: &str = "lines-in";
/// A Discord attachment → the chat's copy of it, so that a delivery tried
/// again (its post failed) does not copy its files twice.
const LINK_UPLOAD: &str = "upload";
/// Discord's upload limit when neither the settings nor the guild say
/// otherwise (below every tier's, which have been 8, 25 and 10 MiB).
const DEFAULT_UPLOAD_BYTES: u64 = 8 * 1024 * 1024;
/// Custom ids of the buttons on a thread's first post: the prefix, then the room id.
const CLAIM_PREFIX: &str = "chat:claim:";
const CLOSE_PREFIX: &str = "chat:close:";

/// The bridge. Cheap to clone; clones share everything.
#[derive(Clone)]
pub struct DiscordBridge {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for DiscordBridge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiscordBridge").field("config", &self.shared.config).finish_non_exhaustive()
    }
}

struct Shared {
    config: DiscordConfig,
    rest: Rest,
    events: mpsc::Sender<BridgeEvent>,
    /// Taken by the enqueuer when the bridge starts.
    events_rx: Mutex<Option<mpsc::Receiver<BridgeEvent>>>,
    /// What the bridge may do to the engine; set once, when it starts.
    host: OnceLock<Arc<dyn BridgeHost>>,
    /// Wakes the worker when jobs were enqueued or a job was retried by hand.
    wake: Notify,
    state: Mutex<State>,
    /// The enqueuer, the leader and the catch-up: they run as long as the bridge.
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// The worker, gateway and inbound tasks while this process holds the
    /// lease; taken and stopped when it loses it or the bridge stops.
    leading: tokio::sync::Mutex<Option<Leading>>,
    /// The running shards, for a clean stop.
    shards: Mutex<Option<Arc<ShardManager>>>,
    /// The lease that elects the one process of several that runs the
    /// worker and the gateway. The worker runs no job when its end is near.
    lease: Lease,
    /// Set when `on_event` dropped an event: the catch-up runs at once.
    overflowed: AtomicBool,
    /// Events dropped so far, for `/health`.
    dropped: AtomicU64,
    /// Wakes the catch-up.
    catch_up: Notify,
    /// How long the READY handler waits before it runs, so that tests can
    /// make it run after the handlers of the events that followed READY.
    #[cfg(feature = "test-support")]
    ready_delay: Mutex<Duration>,
}

/// What runs while the lease is held.
struct Leading {
    /// Tells the worker to stop after the job it is running.
    stop: Arc<AtomicBool>,
    worker: JoinHandle<()>,
    /// The gateway and inbound tasks, aborted at once.
    others: Vec<JoinHandle<()>>,
}

#[derive(Default)]
struct State {
    /// Whether this process holds the lease (and so runs the worker and the gateway).
    active: bool,
    /// What the lease holder counted as online agents, while its word holds:
    /// a process on standby has no gateway and shows this instead.
    published_agents: Option<usize>,
    /// Whether serenity's shard runner was connected when the gateway
    /// watcher last looked ([`watch_gateway`]).
    ///
    /// [`watch_gateway`]: inbound::watch_gateway
    shard_up: bool,
    pending: u64,
    failed: u64,
    last_error: Option<String>,
    bot_user: Option<u64>,
    /// Our webhook of each channel (the forum, mapped text channels).
    webhooks: HashMap<u64, (u64, String)>,
    /// Members whose join, update or leave was handled in this gateway
    /// session, for their chat roles. Serenity runs every event's handler in
    /// a task of its own, so such an event may be handled before the
    /// GUILD_CREATE (or member chunk) it followed; what it said is newer
    /// than that snapshot and wins.
    members_heard: HashSet<u64>,
    /// The agents and their presence, from the gateway's events in order.
    roster: Roster,
    /// The number of the last member request (a GUILD_CREATE's), for the
    /// nonce that its chunks carry back.
    requests: u64,
    /// The largest upload the guild takes, as Discord last said it (a button
    /// press carries it; a GUILD_CREATE's boost tier implies it).
    guild_upload_limit: Option<u64>,
}

impl State {
    /// Whether the gateway is connected with a roster that holds now: the
    /// shard runner is connected, and since the roster's snapshot came (or
    /// the session resumed) the watcher never saw it otherwise.
    fn connected(&self) -> bool {
        self.active && self.shard_up && self.roster.current
    }

    /// Agents available now. Presences are only known while the gateway is
    /// connected; a stale count would promise visitors an answer, so none
    /// count while it is away.
    fn online_agents(&self) -> usize {
        if !self.active {
            return self.published_agents.unwrap_or(0);
        }
        if !self.connected() {
            return 0;
        }
        self.roster.online()
    }

    /// What the watcher saw of the shard runner. Serenity emits no stage
    /// update when a resume or a restart fails, so this is how a lost
    /// gateway shows: the roster stops counting until a RESUMED (the
    /// session goes on, missed events replayed) or a fresh snapshot.
    fn shard_seen(&mut self, up: bool) {
        self.shard_up = up;
        if !up {
            self.roster.current = false;
        }
    }

    /// RESUMED: the session goes on, and Discord replays what it missed,
    /// so a complete roster holds again.
    fn resumed(&mut self) {
        if self.roster.complete {
            self.roster.current = true;
        }
    }
}

impl DiscordBridge {
    /// A bridge with these settings. Nothing connects until the engine starts it.
    pub fn new(config: DiscordConfig) -> Result<Self> {
        config.validate()?;
        let rest = Rest::new(&config)?;
        let (events, events_rx) = mpsc::channel(config.event_queue);
        let lease = Lease::new(NAME, config.lease_ttl, config.lease_renew);
        let shared = Shared {
            config,
            rest,
            events,
            events_rx: Mutex::new(Some(events_rx)),
            host: OnceLock::new(),
            wake: Notify::new(),
            state: Mutex::new(State::default()),
            tasks: Mutex::new(Vec::new()),
            leading: tokio::sync::Mutex::new(None),
            shards: Mutex::new(None),
            lease,
            overflowed: AtomicBool::new(false),
            dropped: AtomicU64::new(0),
            catch_up: Notify::new(),
            #[cfg(feature = "test-support")]
            ready_delay: Mutex::new(Duration::ZERO),
        };
        Ok(DiscordBridge { shared: Arc::new(shared) })
    }

    /// Makes the handler of every later READY wait `delay` before it runs
    /// (feature `test-support`): serenity runs each event's handler in a
    /// task of its own, and this makes READY's run after those of the
    /// events that followed it, as happens now and then in production.
    #[cfg(feature = "test-support")]
    pub fn delay_ready_handler(&self, delay: Duration) {
        *self.shared.ready_delay.lock().unwrap_or_else(|e| e.into_inner()) = delay;
    }
}

impl Shared {
    fn host(&self) -> Result<&dyn BridgeHost> {
        self.host.get().map(|host| &**host).ok_or_else(|| Error::Config("the bridge has not been started".into()))
    }

    fn outbox(&self) -> Result<&dyn BridgeStore> {
        self.host()?
            .store()
            .bridge_store()
            .ok_or_else(|| Error::Config("the store cannot keep the bridge's outbox".into()))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The largest upload to Discord, for one file and for the files of one
    /// message together: the settings', else the guild's, else 8 MiB.
    fn upload_limit(&self) -> u64 {
        self.config.max_upload_bytes.or(self.state().guild_upload_limit).unwrap_or(DEFAULT_UPLOAD_BYTES)
    }

    fn record_error(&self, err: &Error) {
        self.state().last_error = Some(err.to_string());
    }

    async fn refresh_counts(&self) {
        if let Ok(counts) = async { Ok::<_, Error>(self.outbox()?.job_counts(NAME).await?) }.await {
            let mut state = self.state();
            state.pending = counts.pending;
            state.failed = counts.failed;
        }
    }
}

#[async_trait]
impl Bridge for DiscordBridge {
    fn name(&self) -> &str {
        NAME
    }

    async fn start(&self, host: Arc<dyn BridgeHost>) -> chat_core::Result<()> {
        if host.store().bridge_store().is_none() {
            return Err(chat_core::Error::internal("the discord bridge needs a store that keeps bridge jobs"));
        }
        if self.shared.host.set(host).is_err() {
            return Err(chat_core::Error::internal("the discord bridge was started twice"));
        }
        let events = self.shared.events_rx.lock().unwrap_or_else(|e| e.into_inner()).take();
        let Some(events) = events else {
            return Err(chat_core::Error::internal("the discord bridge was started twice"));
        };
        link_channels(&self.shared).await.map_err(into_chat)?;
        let shared = &self.shared;
        // The first try is made here, so that a lone process runs its
        // worker and gateway from the start.
        let renewed = hold_lease(shared).await.map_err(into_chat)?;
        let tasks = vec![
            tokio::spawn(enqueue(shared.clone(), events)),
            tokio::spawn(lead(shared.clone(), renewed)),
            tokio::spawn(catch_up_loop(shared.clone())),
        ];
        *shared.tasks.lock().unwrap_or_else(|e| e.into_inner()) = tasks;
        shared.refresh_counts().await;
        Ok(())
    }

    fn on_event(&self, event: &BridgeEvent, origin: Option<&str>) {
        let wanted = match event {
            // Our own messages came from Discord and need no copy there.
            BridgeEvent::MessageCreated(_) | BridgeEvent::MessageUpdated(_) | BridgeEvent::MessageDeleted(_) => {
                origin != Some(NAME)
            }
            // A closed support room's thread is archived, whoever closed it
            // (a Close button is our own doing, and still needs the archive).
            BridgeEvent::RoomUpdated(room) => room.closed && room.kind == RoomKind::Support,
            _ => false,
        };
        if !wanted {
            return;
        }
        if let Err(err) = self.shared.events.try_send(event.clone()) {
            // The change is committed: a catch-up finds it in the store.
            tracing::warn!(error = %err, "discord bridge: event queue full; catching up from the store");
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            self.shared.overflowed.store(true, Ordering::SeqCst);
            self.shared.catch_up.notify_one();
        }
    }

    fn online_agents(&self) -> u32 {
        u32::try_from(self.shared.state().online_agents()).unwrap_or(u32::MAX)
    }

    fn health(&self) -> BridgeHealth {
        let state = self.shared.state();
        let started = self.shared.host.get().is_some();
        BridgeHealth {
            connected: state.connected(),
            standby: started && !state.active,
            pending: state.pending,
            failed: state.failed,
            last_error: state.last_error.clone(),
            details: [
                ("online_agents".to_owned(), state.online_agents().to_string()),
                ("role".to_owned(), if state.active { "active" } else { "standby" }.to_owned()),
                ("events_caught_up".to_owned(), self.shared.dropped.load(Ordering::Relaxed).to_string()),
            ]
            .into(),
        }
    }

    async fn jobs(&self, status: chat_core::JobStatus, limit: u32) -> chat_core::Result<Vec<Job>> {
        Ok(self.shared.outbox().map_err(into_chat)?.jobs(NAME, status, limit).await?)
    }

    /// Makes a failed job pending again and wakes the worker.
    async fn retry_job(&self, id: i64) -> chat_core::Result<bool> {
        let requeued = self.shared.outbox().map_err(into_chat)?.requeue_job(NAME, id, Timestamp::now()).await?;
        if requeued {
            self.shared.wake.notify_one();
            self.shared.refresh_counts().await;
        }
        Ok(requeued)
    }

    /// Stops the tasks, letting the worker finish the job it is running,
    /// and hands the lease back so that another process takes over at once.
    async fn stop(&self) {
        let tasks = std::mem::take(&mut *self.shared.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        for task in tasks {
            task.abort();
        }
        let was_active = step_down(&self.shared).await;
        if was_active
            && let Ok(outbox) = self.shared.outbox()
            && let Err(err) = self.shared.lease.release(outbox).await
        {
            tracing::warn!(error = %err, "discord bridge: cannot release the lease; it runs out by itself");
        }
    }
}

/// Links each mapped group room to its text channel, as a support room is
/// linked to its thread, so that both directions and the catch-up treat them
/// alike. A newly mapped channel's cursor starts now: what was written there
/// before the mapping stays out of the room, and what the room held stays
/// out of the channel.
async fn link_channels(shared: &Shared) -> Result<()> {
    let outbox = shared.outbox()?;
    for (room, channel) in &shared.config.channels {
        let channel = channel.to_string();
        outbox.set_link(NAME, LINK_THREAD, &room.to_string(), &channel).await?;
        if outbox.remote_of(NAME, LINK_CURSOR, &channel).await?.is_none() {
            outbox.set_link(NAME, LINK_CURSOR, &channel, &snowflake_now().to_string()).await?;
        }
        // Likewise, what the room held before stays out of the channel: a
        // catch-up posts only what comes after this.
        let room_key = room.to_string();
        if outbox.remote_of(NAME, LINK_POSTED, &room_key).await?.is_none() {
            let last_seq = shared.host()?.store().room(*room).await?.map_or(0, |r| r.last_seq);
            outbox.set_link(NAME, LINK_POSTED, &room_key, &last_seq.to_string()).await?;
        }
    }
    Ok(())
}

/// The smallest Discord id of this millisecond (ids count milliseconds since
/// 2015-01-01 in their top bits).
fn snowflake_now() -> u64 {
    let ms = u64::try_from(Timestamp::now().as_millis()).unwrap_or(0);
    ms.saturating_sub(1_420_070_400_000) << 22
}

/// An error of the bridge as the engine's callers see it.
fn into_chat(err: Error) -> chat_core::Error {
    match err {
        Error::Chat(err) => err,
        other => chat_core::Error::unavailable(other.to_string()),
    }
}

// Both directions read the ids that Discord hands back or the store keeps,
// and make the buttons of a support thread's first post.

fn id_of(value: &Value, what: &str) -> Result<String> {
    value
        .get("id")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| Error::Unexpected(format!("{what} without an id")))
}

/// The Claim and Close buttons of a room's forum post, in one row.
fn buttons(room: RoomId) -> Value {
    json!([{
        "type": 1,
        "components": [
            { "type": 2, "style": 1, "label": "Claim", "custom_id": format!("{CLAIM_PREFIX}{room}") },
            { "type": 2, "style": 4, "label": "Close", "custom_id": format!("{CLOSE_PREFIX}{room}") },
        ],
    }])
}

/// A size as people read it: `512 B`, `1.5 KiB`, `12.0 MiB`.
fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

fn parse_snowflake(id: &str) -> Result<u64> {
    id.parse::<u64>()
        .ok()
        .filter(|&n| n != 0)
        .ok_or_else(|| Error::Unexpected(format!("a stored id that is not a snowflake: {id:?}")))
}

fn parse_channel(id: &str) -> Result<ChannelId> {
    id.parse::<u64>()
        .ok()
        .filter(|&n| n != 0)
        .map(ChannelId::new)
        .ok_or_else(|| Error::Unexpected(format!("a stored channel id that is not a snowflake: {id:?}")))
}

#[cfg(test)]
mod tests {
    use super::inbound::roster::Seen;
    use super::*;

    fn chunk(nonce: u64, index: u32, count: u32, members: &[(u64, bool)], presences: &[(u64, bool)]) -> Seen {
        Seen::Chunk { nonce, index, count, members: members.to_vec(), presences: presences.to_vec() }
    }

    /// Only a connected gateway counts: a lost one stops the count until it
    /// resumes or a fresh answer comes.
    #[test]
    fn sizes_read_as_people_read_them() {
        let table = [(0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (1536, "1.5 KiB"), (8 << 20, "8.0 MiB")];
        for (bytes, shown) in table {
            assert_eq!(human_size(bytes), shown);
        }
    }

    #[test]
    fn only_a_connected_gateway_counts_its_agents() {
        let mut state = State { active: true, shard_up: true, ..State::default() };
        assert_eq!((state.connected(), state.online_agents()), (false, 0), "no roster yet");
        state.roster.apply(1, chunk(1, 0, 1, &[(1, true)], &[(1, true)]));
        assert_eq!((state.connected(), state.online_agents()), (true, 1));
        state.shard_seen(false);
        assert_eq!((state.connected(), state.online_agents()), (false, 0), "lost");
        state.shard_seen(true);
        assert_eq!((state.connected(), state.online_agents()), (false, 0), "a new session, not yet its roster");
        state.resumed();
        assert_eq!((state.connected(), state.online_agents()), (true, 1), "resumed: the roster holds again");
        state.shard_seen(false);
        state.shard_seen(true);
        state.roster.apply(2, chunk(2, 0, 1, &[(1, true), (2, true)], &[(1, true), (2, true)]));
        assert_eq!((state.connected(), state.online_agents()), (true, 2), "a fresh answer");
        state.active = false;
        state.published_agents = Some(5);
        assert_eq!((state.connected(), state.online_agents()), (false, 5), "on standby: the holder's word");
    }
}

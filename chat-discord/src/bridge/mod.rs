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

mod lease;
mod outbound;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use async_trait::async_trait;
use chat_core::bridge::Lease;
use chat_core::{
    Bridge, BridgeEvent, BridgeHealth, BridgeHost, BridgeStore, Job, MessageId, RoomId, RoomKind, Timestamp, User,
    UserId,
};
use serde_json::{Value, json};
use serenity::all::{
    Attachment, ChannelId, ChunkGuildFilter, ClientBuilder, ComponentInteraction, ConnectionStage, Context,
    EventHandler, GatewayIntents, Guild, GuildId, GuildMemberUpdateEvent, GuildMembersChunkEvent, Interaction,
    InteractionId, Member, Message, MessageId as DiscordMessageId, MessageUpdateEvent, OnlineStatus, Presence, Ready,
    ResumedEvent, RoleId, TypingStartEvent, User as DiscordUser,
};
use serenity::gateway::{CollectorCallback, ShardManager};
use serenity::http::{LightMethod, Route};
use serenity::model::event::Event as GatewayEvent;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;

use crate::config::DiscordConfig;
use crate::error::{Error, Result};
use crate::rest::Rest;
use lease::{hold_lease, lead, publish_agents, step_down};
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
/// Custom ids of the buttons on a thread's first post: the prefix, then the room id.
const CLAIM_PREFIX: &str = "chat:claim:";
const CLOSE_PREFIX: &str = "chat:close:";
/// An interaction answer only the clicking agent sees.
const EPHEMERAL: u64 = 1 << 6;

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

/// Who the agents are and whether each is available. Serenity runs every
/// event's handler in a task of its own, so handlers see events in any
/// order (READY's handler may run after GUILD_CREATE's). The roster is built
/// instead by collectors ([`roster_collector`]), which the shard calls for
/// each event in the order it came: from the answer to a member request
/// made after the guild's GUILD_CREATE (a snapshot newer than any event the
/// collector was not there for), then every later event, in order.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Roster {
    /// The member request whose answer this roster started from (0: none yet).
    request: u64,
    /// The chunks of that answer received so far.
    chunks: HashSet<u32>,
    /// Whether every chunk of the answer came.
    complete: bool,
    /// Whether it holds now: complete, and the gateway not seen lost since
    /// (see [`State::shard_seen`]).
    current: bool,
    /// Members holding the support role.
    agents: HashSet<u64>,
    /// Whether each member is online, idle or dnd.
    available: HashMap<u64, bool>,
    /// Members whose role, and members whose presence, an event after the
    /// answer's first chunk told: newer than what later chunks of the
    /// answer say of them.
    heard_roles: HashSet<u64>,
    heard_presences: HashSet<u64>,
}

/// What a collector saw that changes the roster, of the configured guild.
#[derive(Debug, Clone)]
enum Seen {
    /// A chunk answering the member request `nonce`: members (and whether
    /// each holds the support role) and the presences of those not offline.
    Chunk { nonce: u64, index: u32, count: u32, members: Vec<(u64, bool)>, presences: Vec<(u64, bool)> },
    /// GUILD_CREATE: the members and presences it carries, which are all of
    /// them (`whole`) unless the guild is large.
    Guild { members: Vec<(u64, bool)>, presences: Vec<(u64, bool)>, whole: bool },
    /// PRESENCE_UPDATE: whether the member is available now.
    Presence(u64, bool),
    /// A member joined, changed or left: whether they hold the support role now.
    Member(u64, bool),
}

impl Roster {
    /// Applies what the collector of member request `request` saw, in the
    /// order the shard received it. The answer's first chunk starts a new
    /// roster; other events count only for the roster of their own
    /// collector's request (earlier ones are older than its answer).
    fn apply(&mut self, request: u64, seen: Seen) {
        if request < self.request {
            return;
        }
        match seen {
            Seen::Chunk { nonce, index, count, members, presences } if nonce == request => {
                if request > self.request {
                    *self = Roster { request, ..Roster::default() };
                }
                for (user, holds) in members {
                    if !self.heard_roles.contains(&user) {
                        self.set_agent(user, holds);
                    }
                    // Asked with presences: a member listed without one is offline.
                    if !self.heard_presences.contains(&user) {
                        self.available.insert(user, false);
                    }
                }
                for (user, available) in presences {
                    if !self.heard_presences.contains(&user) {
                        self.available.insert(user, available);
                    }
                }
                self.chunks.insert(index);
                if self.chunks.len() >= usize::try_from(count).unwrap_or(usize::MAX) {
                    self.complete = true;
                    self.current = true;
                }
            }
            Seen::Chunk { .. } => {}
            _ if request != self.request => {}
            Seen::Guild { members, presences, whole } => {
                if whole {
                    self.agents.retain(|a| members.iter().any(|(m, _)| m == a));
                }
                for (user, holds) in members {
                    self.heard_roles.insert(user);
                    self.set_agent(user, holds);
                    if whole {
                        self.heard_presences.insert(user);
                        self.available.insert(user, false);
                    }
                }
                for (user, available) in presences {
                    self.heard_presences.insert(user);
                    self.available.insert(user, available);
                }
            }
            Seen::Presence(user, available) => {
                self.heard_presences.insert(user);
                self.available.insert(user, available);
            }
            Seen::Member(user, holds) => {
                self.heard_roles.insert(user);
                self.set_agent(user, holds);
            }
        }
    }

    fn set_agent(&mut self, user: u64, holds_role: bool) {
        if holds_role {
            self.agents.insert(user);
        } else {
            self.agents.remove(&user);
        }
    }

    /// Agents online, idle or dnd.
    fn online(&self) -> usize {
        self.agents.iter().filter(|a| self.available.get(a).copied().unwrap_or(false)).count()
    }
}

/// What a gateway event changes in the roster, if it concerns the guild.
fn seen(config: &DiscordConfig, event: &GatewayEvent) -> Option<Seen> {
    let guild = config.guild_id;
    let presence = |p: &Presence| (p.user.id.get(), is_available(p.status));
    match event {
        GatewayEvent::GuildMembersChunk(chunk) if chunk.guild_id.get() == guild => {
            let nonce = chunk.nonce.as_deref()?.strip_prefix(NONCE_PREFIX)?.parse().ok()?;
            Some(Seen::Chunk {
                nonce,
                index: chunk.chunk_index,
                count: chunk.chunk_count,
                members: chunk.members.values().map(|m| (m.user.id.get(), holds_support(config, &m.roles))).collect(),
                presences: chunk.presences.iter().flatten().map(presence).collect(),
            })
        }
        GatewayEvent::GuildCreate(event) if event.guild.id.get() == guild => {
            let g = &event.guild;
            let carried = u64::try_from(g.members.len()).unwrap_or(u64::MAX);
            Some(Seen::Guild {
                members: g.members.values().map(|m| (m.user.id.get(), holds_support(config, &m.roles))).collect(),
                presences: g.presences.values().map(presence).collect(),
                whole: !g.large && carried >= g.member_count,
            })
        }
        GatewayEvent::PresenceUpdate(event) if event.presence.guild_id.map(GuildId::get) == Some(guild) => {
            let (user, available) = presence(&event.presence);
            Some(Seen::Presence(user, available))
        }
        GatewayEvent::GuildMemberAdd(event) if event.member.guild_id.get() == guild => {
            Some(Seen::Member(event.member.user.id.get(), holds_support(config, &event.member.roles)))
        }
        GatewayEvent::GuildMemberUpdate(event) if event.guild_id.get() == guild => {
            Some(Seen::Member(event.user.id.get(), holds_support(config, &event.roles)))
        }
        GatewayEvent::GuildMemberRemove(event) if event.guild_id.get() == guild => {
            Some(Seen::Member(event.user.id.get(), false))
        }
        _ => None,
    }
}

/// The collector of member request `request`: applies the shard's events to
/// the roster as they come, until a newer request's answer replaced it (or
/// the bridge is gone). Called by serenity's shard runner for each event
/// before any handler runs, with the runner's list of collectors locked: it
/// only takes the state's lock.
fn roster_collector(shared: Weak<Shared>, request: u64) -> CollectorCallback {
    CollectorCallback(Box::new(move |event| {
        let Some(shared) = shared.upgrade() else { return false };
        let seen = seen(&shared.config, event);
        let mut state = shared.state();
        if request < state.roster.request {
            return false;
        }
        if let Some(seen) = seen {
            state.roster.apply(request, seen);
        }
        true
    }))
}

/// The prefix of the nonce of our member requests; the request's number follows.
const NONCE_PREFIX: &str = "chat-bridge:";

fn is_available(status: OnlineStatus) -> bool {
    matches!(status, OnlineStatus::Online | OnlineStatus::Idle | OnlineStatus::DoNotDisturb)
}

/// Work for the inbound task, kept in arrival order. `Member` is a member
/// (by id) who joined or changed (display name, roles) or left (`None`);
/// `Snapshot` the members (id, display name, roles) a GUILD_CREATE or a
/// member chunk carried. Both keep chat users' roles up to date.
enum Inbound {
    Message(Box<Message>),
    Update(Box<MessageUpdateEvent>),
    Delete { channel: ChannelId, message: DiscordMessageId },
    Typing(Box<TypingStartEvent>),
    Member(u64, Option<(String, Vec<RoleId>)>),
    Snapshot(Vec<(u64, String, Vec<RoleId>)>),
    CatchUp,
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

// ---------------------------------------------------------------------------
// Inbound: gateway → rooms

/// Keeps serenity's shard running. Before each start it checks, through the
/// proxy, the bot user and the gateway URL, and hands that URL to the shard
/// itself: serenity would otherwise fall back to the real gateway when the
/// call fails.
async fn gateway(shared: Arc<Shared>, inbound: mpsc::Sender<Inbound>) {
    let mut delay = Duration::from_secs(1);
    loop {
        match run_gateway(&shared, inbound.clone()).await {
            Ok(()) => delay = Duration::from_secs(1),
            Err(err) => {
                tracing::warn!(error = %err, "discord bridge: gateway not running");
                shared.record_error(&err);
            }
        }
        // The client is gone, and its shards with it.
        *shared.shards.lock().unwrap_or_else(|e| e.into_inner()) = None;
        shared.state().shard_seen(false);
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(60));
    }
}

/// How often the gateway watcher looks at the shard.
const WATCH_EVERY: Duration = Duration::from_millis(250);

/// Looks at serenity's shard runner every [`WATCH_EVERY`]: whether it is
/// connected ([`State::shard_seen`]), since serenity tells handlers nothing
/// when a resume or a restart fails. When the count of online agents
/// changes, processes on standby are told at once rather than at the next
/// renewal of the lease, so that none of them counts agents of a gateway
/// that is gone.
async fn watch_gateway(shared: Arc<Shared>) {
    let mut published = None;
    loop {
        tokio::time::sleep(WATCH_EVERY).await;
        let shards = shared.shards.lock().unwrap_or_else(|e| e.into_inner()).clone();
        match shards {
            Some(shards) => {
                // Applied with the runners locked: serenity records a
                // runner's stage (there) before it hands the event that
                // changed it (READY, RESUMED) to collectors and handlers, so
                // no older look can undo what such an event set.
                let runners = shards.runners.lock().await;
                let up = runners.values().any(|runner| runner.stage == ConnectionStage::Connected);
                shared.state().shard_seen(up);
                drop(runners);
            }
            None => shared.state().shard_seen(false),
        }
        let count = shared.state().online_agents();
        if published != Some(count) && shared.lease.fresh() {
            let Some(until) = shared.lease.until() else { continue };
            match publish_agents(&shared, until).await {
                Ok(()) => published = Some(count),
                Err(err) => tracing::debug!(error = %err, "discord bridge: cannot share the count of online agents"),
            }
        }
    }
}

async fn run_gateway(shared: &Arc<Shared>, inbound: mpsc::Sender<Inbound>) -> Result<()> {
    let me = shared.rest.call(LightMethod::Get, Route::UserMe, Vec::new(), None).await?;
    let bot: u64 = id_of(&me, "the bot user")?.parse().map_err(|_| Error::Unexpected("a bot id".into()))?;
    shared.state().bot_user = Some(bot);
    let gateway = shared.rest.call(LightMethod::Get, Route::Gateway, Vec::new(), None).await?;
    let url = gateway
        .get("url")
        .and_then(Value::as_str)
        .filter(|u| u.starts_with("wss://") || u.starts_with("ws://"))
        .ok_or_else(|| Error::Unexpected("no gateway URL".into()))?
        .to_owned();
    let intents = GatewayIntents::GUILDS
        | GatewayIntents::GUILD_MESSAGES
        | GatewayIntents::MESSAGE_CONTENT
        | GatewayIntents::GUILD_MESSAGE_TYPING
        | GatewayIntents::GUILD_MEMBERS
        | GatewayIntents::GUILD_PRESENCES;
    let handler = Handler { shared: shared.clone(), inbound };
    // Built from our `Http` (proxy, timeout), never from a token, which
    // would make serenity build a client without either.
    let mut client = ClientBuilder::new_with_http(shared.rest.serenity_http(), intents)
        .event_handler(handler)
        .await
        .map_err(|e| Error::Unavailable(format!("cannot build the gateway client: {e}")))?;
    *client.ws_url.lock().await = url;
    *shared.shards.lock().unwrap_or_else(|e| e.into_inner()) = Some(client.shard_manager.clone());
    client.start().await.map_err(|e| Error::Unavailable(format!("the gateway stopped: {e}")))
}

struct Handler {
    shared: Arc<Shared>,
    inbound: mpsc::Sender<Inbound>,
}

impl Handler {
    /// A member joined, changed or left (`roles` is `None`): the roles of
    /// their chat user change, through the inbound task so that it is
    /// ordered with their messages. (Whether they count as an agent is the
    /// roster's, which its collector keeps.)
    async fn member_changed(&self, user: &DiscordUser, nick: Option<&str>, roles: Option<&[RoleId]>) {
        self.shared.state().members_heard.insert(user.id.get());
        let name = nick.map(str::to_owned).or_else(|| user.global_name.clone()).unwrap_or_else(|| user.name.clone());
        let now = roles.map(|held| (name, held.to_vec()));
        let _ = self.inbound.send(Inbound::Member(user.id.get(), now)).await;
    }

    /// Hands a snapshot's members to the inbound task, for their chat roles.
    async fn snapshot(&self, members: impl Iterator<Item = &Member>) {
        let members: Vec<_> = members.map(|m| (m.user.id.get(), member_name(m), m.roles.clone())).collect();
        if !members.is_empty() {
            let _ = self.inbound.send(Inbound::Snapshot(members)).await;
        }
    }
}

fn holds_support(config: &DiscordConfig, held: &[RoleId]) -> bool {
    held.iter().any(|r| r.get() == config.support_role_id)
}

#[async_trait]
impl EventHandler for Handler {
    async fn ready(&self, _ctx: Context, ready: Ready) {
        #[cfg(feature = "test-support")]
        {
            let delay = *self.shared.ready_delay.lock().unwrap_or_else(|e| e.into_inner());
            tokio::time::sleep(delay).await;
        }
        {
            let mut state = self.shared.state();
            state.bot_user = Some(ready.user.id.get());
            // A new gateway session: member events heard before it are
            // stale. The roster is left alone: this handler may run after
            // those of the events that followed READY, and the roster is
            // replaced, in order, by the answer to the member request that
            // the session's GUILD_CREATE makes.
            state.members_heard.clear();
        }
        // Whether the shard resumed or identified anew, what was written
        // while it was away is fetched: serenity often re-identifies, and
        // then Discord replays nothing.
        let _ = self.inbound.send(Inbound::CatchUp).await;
    }

    /// The session resumed: it goes on, so does the roster.
    async fn resume(&self, _ctx: Context, _event: ResumedEvent) {
        self.shared.state().resumed();
    }

    async fn message(&self, _ctx: Context, message: Message) {
        if message.guild_id.map(GuildId::get) == Some(self.shared.config.guild_id) {
            let _ = self.inbound.send(Inbound::Message(Box::new(message))).await;
        }
    }

    async fn message_update(
        &self,
        _ctx: Context,
        _old: Option<Message>,
        _new: Option<Message>,
        event: MessageUpdateEvent,
    ) {
        if event.guild_id.map(GuildId::get) == Some(self.shared.config.guild_id) {
            let _ = self.inbound.send(Inbound::Update(Box::new(event))).await;
        }
    }

    async fn message_delete(
        &self,
        _ctx: Context,
        channel: ChannelId,
        message: DiscordMessageId,
        guild: Option<GuildId>,
    ) {
        if guild.map(GuildId::get) == Some(self.shared.config.guild_id) {
            let _ = self.inbound.send(Inbound::Delete { channel, message }).await;
        }
    }

    /// The guild is available, at every (re)connection: its members and
    /// presences are asked for (REQUEST_GUILD_MEMBERS, which the
    /// GUILD_MEMBERS intent allows, with presences, which GUILD_PRESENCES
    /// does), and a collector is put on the shard first that builds the
    /// roster from the answer and every event after it, in order (see
    /// [`Roster`]). This handler may run after those of later events; the
    /// answer is newer than all of them. A large guild (over serenity's
    /// `large_threshold` of 250 members) carries only some of its members
    /// here, so it needs the request anyway. The members carried here keep
    /// their chat users' roles current.
    async fn guild_create(&self, ctx: Context, guild: Guild, _is_new: Option<bool>) {
        if guild.id.get() != self.shared.config.guild_id {
            return;
        }
        let request = {
            let mut state = self.shared.state();
            state.requests += 1;
            state.requests
        };
        ctx.shard.add_collector(roster_collector(Arc::downgrade(&self.shared), request));
        let nonce = format!("{NONCE_PREFIX}{request}");
        ctx.shard.chunk_guild(guild.id, None, true, ChunkGuildFilter::None, Some(nonce));
        self.snapshot(guild.members.values()).await;
    }

    /// Members asked for after a GUILD_CREATE, up to 1000 a chunk: their
    /// chat users' roles. (The roster's collector counts them.)
    async fn guild_members_chunk(&self, _ctx: Context, chunk: GuildMembersChunkEvent) {
        if chunk.guild_id.get() != self.shared.config.guild_id {
            return;
        }
        self.snapshot(chunk.members.values()).await;
    }

    async fn guild_member_addition(&self, _ctx: Context, member: Member) {
        if member.guild_id.get() == self.shared.config.guild_id {
            self.member_changed(&member.user, member.nick.as_deref(), Some(&member.roles)).await;
        }
    }

    async fn guild_member_update(
        &self,
        _ctx: Context,
        _old: Option<Member>,
        _new: Option<Member>,
        event: GuildMemberUpdateEvent,
    ) {
        if event.guild_id.get() == self.shared.config.guild_id {
            self.member_changed(&event.user, event.nick.as_deref(), Some(&event.roles)).await;
        }
    }

    async fn guild_member_removal(&self, _ctx: Context, guild: GuildId, user: DiscordUser, _member: Option<Member>) {
        if guild.get() == self.shared.config.guild_id {
            self.member_changed(&user, None, None).await;
        }
    }

    /// A button of a thread's first post was pressed. Answered here rather
    /// than through the outbox: Discord takes the answer only within three
    /// seconds, so a queued one would be worthless.
    async fn interaction_create(&self, _ctx: Context, interaction: Interaction) {
        let Interaction::Component(click) = interaction else { return };
        if click.guild_id.map(GuildId::get) != Some(self.shared.config.guild_id) {
            return;
        }
        let (text, outcome) = match press(&self.shared, &click).await {
            Ok(text) => (text, None),
            Err(err) => (refusal(&err), Some(err)),
        };
        if let Some(err) = outcome {
            tracing::info!(error = %err, button = %click.data.custom_id, "discord bridge: a button press was refused");
        }
        let answer =
            json!({ "type": 4, "data": { "content": text, "flags": EPHEMERAL, "allowed_mentions": { "parse": [] } } });
        let route =
            Route::InteractionResponse { interaction_id: InteractionId::new(click.id.get()), token: &click.token };
        if let Err(err) = self.shared.rest.call(LightMethod::Post, route, Vec::new(), Some(&answer)).await {
            tracing::warn!(error = %err, "discord bridge: cannot answer a button press");
            self.shared.record_error(&err);
        }
    }

    async fn typing_start(&self, _ctx: Context, event: TypingStartEvent) {
        if event.guild_id.map(GuildId::get) == Some(self.shared.config.guild_id) {
            let _ = self.inbound.send(Inbound::Typing(Box::new(event))).await;
        }
    }
}

/// The chat roles of a member acting in a mapped thread or channel:
/// `support` in a support thread (the people answering there are the support
/// team), then the chat role of each mapped Discord role they hold, each once.
fn chat_roles(config: &DiscordConfig, held: &[RoleId], support: bool) -> Vec<String> {
    let mut roles = Vec::new();
    if support {
        roles.push(chat_core::user::SUPPORT_ROLE.to_owned());
    }
    for (role, name) in &config.role_map {
        // A user holds at most `MAX_ROLES`; more would make every post fail.
        if roles.len() >= chat_core::user::MAX_ROLES {
            break;
        }
        if held.iter().any(|r| r.get() == *role) && !roles.contains(name) {
            roles.push(name.clone());
        }
    }
    roles
}

/// Claims or closes the room a button names, as the member who pressed it,
/// who must hold the support role. Returns what to tell them.
async fn press(shared: &Shared, click: &ComponentInteraction) -> Result<String> {
    let id = click.data.custom_id.as_str();
    let (claim, room) = match (id.strip_prefix(CLAIM_PREFIX), id.strip_prefix(CLOSE_PREFIX)) {
        (Some(room), _) => (true, room),
        (_, Some(room)) => (false, room),
        _ => return Err(Error::Unexpected(format!("an unknown button {id:?}"))),
    };
    let room: RoomId = room.parse()?;
    let Some(member) = &click.member else {
        return Err(Error::Chat(chat_core::Error::forbidden("only members of the server may do this")));
    };
    if !member.roles.iter().any(|r| r.get() == shared.config.support_role_id) {
        return Err(Error::Chat(chat_core::Error::forbidden("only the support team may do this")));
    }
    let name =
        member.nick.clone().or_else(|| member.user.global_name.clone()).unwrap_or_else(|| member.user.name.clone());
    let mut user = User::new(agent_user_id(member.user.id.get())?, name);
    user.roles = chat_roles(&shared.config, &member.roles, true);
    let host = shared.host()?;
    if claim {
        host.claim_room_as(NAME, user, room).await?;
        Ok("You took this conversation; the visitor sees it.".into())
    } else {
        host.close_room_as(NAME, user, room).await?;
        Ok("The conversation is closed; the visitor was told, and this thread is archived.".into())
    }
}

/// What an agent whose button press failed is told. Chat errors carry a
/// message written for users; anything else stays in the logs.
fn refusal(err: &Error) -> String {
    match err {
        Error::Chat(err)
            if err.code() != chat_core::ErrorCode::Internal && err.code() != chat_core::ErrorCode::Unavailable =>
        {
            format!("Not done: {err}.")
        }
        _ => "Not done: the chat cannot do this right now; try again.".into(),
    }
}

/// Handles inbound work one item at a time, so that messages of a thread
/// reach the room in the order they came.
async fn receive(shared: Arc<Shared>, mut inbound: mpsc::Receiver<Inbound>) {
    while let Some(item) = inbound.recv().await {
        let result = match item {
            Inbound::Message(message) => deliver(&shared, &message).await,
            Inbound::Update(event) => update(&shared, &event).await,
            Inbound::Delete { channel, message } => remove(&shared, channel, message).await,
            Inbound::Typing(event) => typing(&shared, &event).await,
            Inbound::Member(user, now) => member_roles(&shared, user, now).await,
            Inbound::Snapshot(members) => snapshot_roles(&shared, members).await,
            Inbound::CatchUp => catch_up(&shared).await,
        };
        if let Err(err) = result {
            tracing::warn!(error = %err, "discord bridge: inbound event not delivered");
            shared.record_error(&err);
        }
    }
}

/// Posts a message written in a mapped thread into its room, once: the
/// Discord message id is the `client_msg_id`, so a message seen live and
/// again by a catch-up is stored once.
async fn deliver(shared: &Shared, message: &Message) -> Result<()> {
    let outbox = shared.outbox()?;
    let thread = message.channel_id.get().to_string();
    let Some(room) = outbox.local_of(NAME, LINK_THREAD, &thread).await? else {
        return Ok(());
    };
    advance_cursor(outbox, &thread, message.id.get()).await?;
    let bot = shared.state().bot_user;
    if message.author.bot || message.webhook_id.is_some() || Some(message.author.id.get()) == bot {
        return Ok(());
    }
    if message.content.trim_start().starts_with(shared.config.note_prefix.as_str()) {
        return Ok(());
    }
    let mut body = message.content.clone();
    for file in &message.attachments {
        body.push_str(&format!("\n[{}]({})", file.filename, file.url));
    }
    if body.trim().is_empty() {
        return Ok(());
    }
    let room: RoomId = room.parse()?;
    // In a support thread, the people writing are the support team; in a
    // mapped text channel, they are anyone of the server.
    let support = shared.config.channel_of(room).is_none();
    let name = message
        .member
        .as_ref()
        .and_then(|m| m.nick.clone())
        .or_else(|| message.author.global_name.clone())
        .unwrap_or_else(|| message.author.name.clone());
    let mut user = User::new(agent_user_id(message.author.id.get())?, name);
    user.roles = match &message.member {
        Some(member) => {
            let support = support || holds_support(&shared.config, &member.roles);
            chat_roles(&shared.config, &member.roles, support)
        }
        // Fetched messages carry no member: the roles last seen stay.
        None => match shared.host()?.store().user(&user.id).await? {
            Some(known) if !known.roles.is_empty() => known.roles,
            _ => chat_roles(&shared.config, &[], support),
        },
    };
    let client_msg_id = format!("discord:{}", message.id.get());
    let posted = shared.host()?.post_as(NAME, user, room, client_msg_id, body).await?;
    outbox.set_link(NAME, LINK_MESSAGE, &posted.id.to_string(), &message.id.get().to_string()).await?;
    Ok(())
}

/// The room message a Discord message of a mapped thread was delivered as,
/// if it was one an agent wrote: the bridge changes only what it posted for
/// agents (visitors' messages change in the chat, and reach Discord from there).
async fn agent_message(
    shared: &Shared,
    channel: ChannelId,
    message: DiscordMessageId,
) -> Result<Option<chat_core::Message>> {
    let outbox = shared.outbox()?;
    let Some(room) = outbox.local_of(NAME, LINK_THREAD, &channel.get().to_string()).await? else {
        return Ok(None);
    };
    let Some(local) = outbox.local_of(NAME, LINK_MESSAGE, &message.get().to_string()).await? else {
        return Ok(None);
    };
    let room: RoomId = room.parse()?;
    let local: MessageId = local.parse()?;
    let found = shared.host()?.store().message(room, local).await?;
    Ok(found.filter(|m| m.sender_id.as_str().starts_with("discord:") && !m.deleted))
}

/// A member joined, changed or left (`now` is `None`): if they are a chat
/// user already, their name and roles become what Discord says now, without
/// waiting for their next message or button press. `support` follows the
/// support role; mapped roles follow the role map; someone who left the
/// server keeps their name and loses every role. Members who never wrote in
/// a mapped thread or channel are not made chat users.
async fn member_roles(shared: &Shared, user: u64, now: Option<(String, Vec<RoleId>)>) -> Result<()> {
    let host = shared.host()?;
    let id = agent_user_id(user)?;
    let Some(known) = host.store().user(&id).await? else {
        return Ok(());
    };
    let next = as_member_now(&shared.config, &known, now);
    if next != known {
        host.upsert_user(next).await?;
    }
    Ok(())
}

/// A GUILD_CREATE or member chunk: the members it carries who are chat
/// users already get their name and roles as Discord says them now, so that
/// role changes made while the gateway was away apply too. A member whose
/// own event was heard in this gateway session is skipped: that event is
/// newer, and is applied already or queued behind this. One store read per
/// snapshot or chunk.
async fn snapshot_roles(shared: &Shared, members: Vec<(u64, String, Vec<RoleId>)>) -> Result<()> {
    let host = shared.host()?;
    let ids: Vec<UserId> = members.iter().filter_map(|(user, _, _)| agent_user_id(*user).ok()).collect();
    let known: HashMap<UserId, User> = host.store().users(&ids).await?.into_iter().map(|u| (u.id.clone(), u)).collect();
    for (user, name, held) in members {
        let Some(known) = agent_user_id(user).ok().and_then(|id| known.get(&id)) else { continue };
        if shared.state().members_heard.contains(&user) {
            continue;
        }
        let next = as_member_now(&shared.config, known, Some((name, held)));
        if &next != known {
            host.upsert_user(next).await?;
        }
    }
    Ok(())
}

/// A chat user with the name and roles of the member they are on Discord
/// now, or with no roles when they left (`None`).
fn as_member_now(config: &DiscordConfig, known: &User, now: Option<(String, Vec<RoleId>)>) -> User {
    let mut next = known.clone();
    match now {
        Some((name, held)) => {
            next.roles = chat_roles(config, &held, holds_support(config, &held));
            if chat_core::user::validate_name(&name).is_ok() {
                next.name = name;
            }
        }
        None => next.roles.clear(),
    }
    next
}

/// A member's display name in the guild: their nickname, else their global
/// name, else their user name.
fn member_name(member: &Member) -> String {
    member.nick.clone().or_else(|| member.user.global_name.clone()).unwrap_or_else(|| member.user.name.clone())
}

/// An agent edited a message in a mapped thread: the room gets the new text.
async fn update(shared: &Shared, event: &MessageUpdateEvent) -> Result<()> {
    // Updates without content are Discord's own (embeds unfurled, pins).
    let Some(content) = &event.content else {
        return Ok(());
    };
    let Some(message) = agent_message(shared, event.channel_id, event.id).await? else {
        return Ok(());
    };
    apply_edit(shared, &message, content, event.attachments.as_deref().unwrap_or_default()).await
}

/// Gives an agent's room message the text its Discord message has now,
/// unless that is the same, empty, or a note.
async fn apply_edit(
    shared: &Shared,
    message: &chat_core::Message,
    content: &str,
    attachments: &[Attachment],
) -> Result<()> {
    if content.trim_start().starts_with(shared.config.note_prefix.as_str()) {
        return Ok(());
    }
    let mut body = content.to_owned();
    for file in attachments {
        body.push_str(&format!("\n[{}]({})", file.filename, file.url));
    }
    if body.trim().is_empty() || body == message.body {
        return Ok(());
    }
    shared.host()?.edit_as(NAME, &message.sender_id, message.room_id, message.id, body).await?;
    Ok(())
}

/// An agent's message was deleted in a mapped thread: so it is in the room.
async fn remove(shared: &Shared, channel: ChannelId, id: DiscordMessageId) -> Result<()> {
    let Some(message) = agent_message(shared, channel, id).await? else {
        return Ok(());
    };
    shared.host()?.delete_as(NAME, &message.sender_id, message.room_id, message.id).await?;
    Ok(())
}

async fn advance_cursor(outbox: &dyn BridgeStore, thread: &str, seen: u64) -> Result<()> {
    let cursor = outbox.remote_of(NAME, LINK_CURSOR, thread).await?.and_then(|c| c.parse::<u64>().ok());
    if cursor.is_none_or(|c| c < seen) {
        outbox.set_link(NAME, LINK_CURSOR, thread, &seen.to_string()).await?;
    }
    Ok(())
}

async fn typing(shared: &Shared, event: &TypingStartEvent) -> Result<()> {
    let outbox = shared.outbox()?;
    let thread = event.channel_id.get().to_string();
    let Some(room) = outbox.local_of(NAME, LINK_THREAD, &thread).await? else {
        return Ok(());
    };
    if Some(event.user_id.get()) == shared.state().bot_user {
        return Ok(());
    }
    let room: RoomId = room.parse()?;
    shared.host()?.set_typing_as(&agent_user_id(event.user_id.get())?, room, true).await?;
    Ok(())
}

/// How many of a thread's latest messages a catch-up reads again for the
/// edits and deletes it missed: Discord's largest page, so one call per
/// thread, and at most this many link reads. Older changes are not caught up.
const RECHECK_WINDOW: usize = 100;

/// After READY, catches up every mapped thread: what was written there after
/// the newest message seen is delivered, oldest first; then the latest
/// messages are read again for agents' edits and deletes made meanwhile. A
/// thread that cannot be read (deleted, no access) does not stop the others.
async fn catch_up(shared: &Shared) -> Result<()> {
    let outbox = shared.outbox()?;
    let mut failure = None;
    for (room, thread) in outbox.links(NAME, LINK_THREAD).await? {
        let caught = async {
            fetch_missed(shared, &thread).await?;
            recheck_recent(shared, &room, &thread).await
        };
        if let Err(err) = caught.await {
            tracing::warn!(error = %err, thread, "discord bridge: a thread was not caught up");
            failure = Some(err);
        }
    }
    if let Err(err) = add_missing_buttons(shared).await {
        failure = Some(err);
    }
    failure.map_or(Ok(()), Err)
}

/// Gives the first post of every open support thread that lacks them the
/// Claim and Close buttons (posts opened before the buttons existed), once:
/// each room is recorded when done, or when closed (a closed room stays
/// closed) or refused, so a later READY costs one link read per thread and
/// no call. A transient failure leaves the room for the next READY.
async fn add_missing_buttons(shared: &Shared) -> Result<()> {
    let outbox = shared.outbox()?;
    let store = shared.host()?.store();
    let mut failure = None;
    for (room_key, thread) in outbox.links(NAME, LINK_THREAD).await? {
        if outbox.remote_of(NAME, LINK_BUTTONS, &room_key).await?.is_some() {
            continue;
        }
        let Ok(room) = room_key.parse::<RoomId>() else { continue };
        if shared.config.channel_of(room).is_some() {
            continue;
        }
        let Some(found) = store.room(room).await? else { continue };
        if found.kind != RoomKind::Support {
            continue;
        }
        let done = if found.closed { Ok("closed") } else { give_buttons(shared, room, &thread).await.map(|()| "done") };
        match done {
            Ok(how) => outbox.set_link(NAME, LINK_BUTTONS, &room_key, how).await?,
            // Refused (the post is not the bot's, no access): asking again
            // at every READY would be refused again.
            Err(err) if !err.is_transient() => {
                tracing::warn!(error = %err, thread, "discord bridge: a post cannot be given its buttons");
                outbox.set_link(NAME, LINK_BUTTONS, &room_key, "refused").await?;
            }
            Err(err) => {
                tracing::warn!(error = %err, thread, "discord bridge: cannot give a post its buttons now");
                failure = Some(err);
            }
        }
    }
    failure.map_or(Ok(()), Err)
}

/// Adds the buttons to a thread's first post if it has no components. A
/// post Discord no longer has needs nothing.
async fn give_buttons(shared: &Shared, room: RoomId, thread: &str) -> Result<()> {
    let channel_id = parse_channel(thread)?;
    // A forum post's first message has the thread's id.
    let message_id = DiscordMessageId::new(parse_snowflake(thread)?);
    let route = || Route::ChannelMessage { channel_id, message_id };
    let first = match shared.rest.call(LightMethod::Get, route(), Vec::new(), None).await {
        Ok(first) => first,
        Err(Error::Refused { status: 404, .. }) => return Ok(()),
        Err(err) => return Err(err),
    };
    if first.get("components").and_then(Value::as_array).is_some_and(|c| !c.is_empty()) {
        return Ok(());
    }
    // Only the components change; the text stays as the outbox left it.
    let body = json!({ "components": buttons(room) });
    match shared.rest.call(LightMethod::Patch, route(), Vec::new(), Some(&body)).await {
        Ok(_) | Err(Error::Refused { status: 404, .. }) => Ok(()),
        Err(err) => Err(err),
    }
}

/// Delivers what was written in a thread after the newest message seen there.
async fn fetch_missed(shared: &Shared, thread: &str) -> Result<()> {
    let outbox = shared.outbox()?;
    let channel_id = parse_channel(thread)?;
    {
        loop {
            let after = outbox.remote_of(NAME, LINK_CURSOR, thread).await?.unwrap_or_else(|| thread.to_owned());
            let params = vec![("after", after), ("limit", "100".to_owned())];
            let page = shared.rest.call(LightMethod::Get, Route::ChannelMessages { channel_id }, params, None).await?;
            let mut messages: Vec<Message> =
                serde_json::from_value(page).map_err(|e| Error::Unexpected(format!("a message list: {e}")))?;
            if messages.is_empty() {
                break;
            }
            messages.sort_by_key(|m| m.id);
            let full = messages.len() >= 100;
            for message in &messages {
                deliver(shared, message).await?;
            }
            if !full {
                break;
            }
        }
    }
    Ok(())
}

/// Applies the edits and deletes of agents' messages that the gateway did
/// not bring: the room's latest [`RECHECK_WINDOW`] messages that agents
/// wrote are compared with the thread's latest [`RECHECK_WINDOW`]. An edited
/// one gets its current text; a linked one missing from a window that must
/// hold it is deleted. Threads whose recent room messages include no
/// agent's cost no call to Discord.
async fn recheck_recent(shared: &Shared, room: &str, thread: &str) -> Result<()> {
    let host = shared.host()?;
    let outbox = shared.outbox()?;
    let room: RoomId = room.parse()?;
    let query = chat_core::HistoryQuery { limit: RECHECK_WINDOW as u32, ..Default::default() };
    let recent = host.store().history(room, query).await?;
    let mut linked = Vec::new();
    for message in recent.messages {
        if !message.sender_id.as_str().starts_with("discord:") || message.deleted {
            continue;
        }
        let remote = outbox.remote_of(NAME, LINK_MESSAGE, &message.id.to_string()).await?;
        if let Some(remote) = remote.and_then(|r| r.parse::<u64>().ok()) {
            linked.push((message, remote));
        }
    }
    if linked.is_empty() {
        return Ok(());
    }
    let channel_id = parse_channel(thread)?;
    let params = vec![("limit", RECHECK_WINDOW.to_string())];
    let page = shared.rest.call(LightMethod::Get, Route::ChannelMessages { channel_id }, params, None).await?;
    let window: Vec<Message> =
        serde_json::from_value(page).map_err(|e| Error::Unexpected(format!("a message list: {e}")))?;
    let ids: Vec<u64> = window.iter().map(|m| m.id.get()).collect();
    for (message, remote) in linked {
        match window.iter().find(|m| m.id.get() == remote) {
            // Never edited since it was posted: nothing to compare.
            Some(now) if now.edited_timestamp.is_none() => {}
            Some(now) => apply_edit(shared, &message, &now.content, &now.attachments).await?,
            None if deleted_meanwhile(remote, &ids) => {
                host.delete_as(NAME, &message.sender_id, room, message.id).await?;
            }
            None => {}
        }
    }
    Ok(())
}

/// Whether a message missing from the thread's latest messages (`window`,
/// ids as Discord listed them) was deleted: a window shorter than
/// [`RECHECK_WINDOW`] is the whole thread; a full one covers only ids from
/// its oldest on.
fn deleted_meanwhile(remote: u64, window: &[u64]) -> bool {
    if window.contains(&remote) {
        return false;
    }
    window.len() < RECHECK_WINDOW || window.iter().min().is_some_and(|&oldest| remote > oldest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agents(roster: &Roster) -> Vec<u64> {
        let mut agents: Vec<u64> = roster.agents.iter().copied().collect();
        agents.sort_unstable();
        agents
    }

    fn chunk(nonce: u64, index: u32, count: u32, members: &[(u64, bool)], presences: &[(u64, bool)]) -> Seen {
        Seen::Chunk { nonce, index, count, members: members.to_vec(), presences: presences.to_vec() }
    }

    /// The roster follows the shard's events in order: the answer to a
    /// member request starts it, events after its first chunk win over its
    /// later chunks, events its collector saw before the answer are older
    /// than it, and an older request's collector changes nothing.
    #[test]
    fn the_roster_follows_the_events_in_order() {
        // (what, events as (collector's request, event), agents after, online after, complete)
        type Case = (&'static str, Vec<(u64, Seen)>, &'static [u64], usize, bool);
        let table: Vec<Case> = vec![
            ("no answer yet", vec![(1, Seen::Presence(1, true)), (1, Seen::Member(1, true))], &[], 0, false),
            (
                "one chunk: members without a presence are offline",
                vec![(1, chunk(1, 0, 1, &[(1, true), (2, true), (3, false)], &[(1, true), (3, true)]))],
                &[1, 2],
                1,
                true,
            ),
            (
                "later events apply in order",
                vec![
                    (1, chunk(1, 0, 1, &[(1, true), (2, true)], &[(1, true)])),
                    (1, Seen::Presence(2, true)),
                    (1, Seen::Presence(1, false)),
                    (1, Seen::Member(3, true)),
                    (1, Seen::Presence(3, true)),
                    (1, Seen::Member(2, false)),
                ],
                &[1, 3],
                1,
                true,
            ),
            (
                "events after the first chunk win over later chunks",
                vec![
                    (1, chunk(1, 0, 2, &[(1, true)], &[(1, true)])),
                    (1, Seen::Member(2, false)),
                    (1, Seen::Presence(3, false)),
                    (1, chunk(1, 1, 2, &[(2, true), (3, true)], &[(2, true), (3, true)])),
                ],
                &[1, 3],
                1,
                true,
            ),
            ("an answer not yet whole", vec![(1, chunk(1, 0, 2, &[(1, true)], &[(1, true)]))], &[1], 1, false),
            (
                "a newer answer replaces the roster; its collector ignores what came before it",
                vec![
                    (1, chunk(1, 0, 1, &[(1, true), (2, true)], &[(1, true), (2, true)])),
                    (2, Seen::Presence(3, true)),
                    (2, chunk(2, 0, 1, &[(2, true)], &[])),
                    (1, Seen::Presence(2, true)),
                    (1, Seen::Member(4, true)),
                ],
                &[2],
                0,
                true,
            ),
            (
                "a chunk answering another request is not this collector's",
                vec![(2, chunk(1, 0, 1, &[(1, true)], &[(1, true)]))],
                &[],
                0,
                false,
            ),
            (
                "a whole GUILD_CREATE after the answer replaces members and presences",
                vec![
                    (1, chunk(1, 0, 1, &[(1, true), (2, true)], &[(1, true), (2, true)])),
                    (1, Seen::Guild { members: vec![(2, true), (3, true)], presences: vec![(3, true)], whole: true }),
                ],
                &[2, 3],
                1,
                true,
            ),
            (
                "a large one changes only whom it carries",
                vec![
                    (1, chunk(1, 0, 1, &[(1, true), (2, true)], &[(1, true), (2, true)])),
                    (1, Seen::Guild { members: vec![(3, true)], presences: vec![(3, true)], whole: false }),
                ],
                &[1, 2, 3],
                3,
                true,
            ),
        ];
        for (what, events, want_agents, want_online, want_complete) in table {
            let mut roster = Roster::default();
            for (request, seen) in events {
                roster.apply(request, seen);
            }
            assert_eq!(agents(&roster), want_agents, "{what}");
            assert_eq!(roster.online(), want_online, "{what}");
            assert_eq!(roster.complete, want_complete, "{what}");
        }
    }

    /// Only a connected gateway counts: a lost one stops the count until it
    /// resumes or a fresh answer comes.
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

    #[test]
    fn a_message_missing_from_a_window_that_covers_it_was_deleted() {
        // A full window: the thread's latest messages, with gaps between ids.
        let full: Vec<u64> = (1_000..1_000 + RECHECK_WINDOW as u64).map(|i| i * 2).collect();
        assert_eq!(full.len(), RECHECK_WINDOW);
        let table: [(&str, u64, &[u64], bool); 6] = [
            ("still there", 11, &[10, 11, 12], false),
            ("missing from the whole thread", 11, &[10, 12], true),
            ("the thread is empty now", 11, &[], true),
            ("missing inside a full window", 2_051, &full[..], true),
            ("older than a full window: unknown", 1_999, &full[..], false),
            ("present in a full window", 2_050, &full[..], false),
        ];
        for (what, remote, window, deleted) in table {
            assert_eq!(deleted_meanwhile(remote, window), deleted, "{what}");
        }
    }
}

//! The engine: routes commands, enforces the rules, commits sends in batches and
//! fans events out.
//!
//! One [`Engine`] serves one server process. Transports open a [`Session`]
//! per connection with [`Engine::open_session`] and drive it; HTTP handlers
//! call the engine's other methods directly, and bridges the ones of
//! [`BridgeHost`](crate::BridgeHost). Given a [`Broker`], engines on one
//! store are one server (see `cluster.rs`). Cloning an `Engine` is cheap (it
//! is an `Arc`).

mod attachments;
mod calls;
mod cluster;
mod committer;
mod expiry;
mod handlers;
mod hub;
mod keepalive;
mod membership;
mod moderation;
mod presence;
mod receipts;
mod room_actions;
mod session;
#[cfg(test)]
mod tests;
mod typing;
mod users;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

pub use attachments::{AttachmentAccess, OpenedAttachment, UploadLimits};
pub use handlers::SupportQueuePage;
pub use hub::CloseReason;
pub use session::{CloseSignal, Output, Ready, Ref, Session};
pub use users::{AccountPage, DEFAULT_USER_PAGE, MAX_USER_PAGE};

use self::committer::CommitJob;
use self::expiry::ExpiryQueue;
use self::hub::{Hub, SessionShared};
use self::keepalive::KeepaliveQueue;
use self::presence::PresenceTracker;
use self::session::TransportCounts;
use self::typing::TypingTracker;
use crate::bridge::{Bridge, BridgeEvent, BridgeHealth, Job, JobStatus};
use crate::broker::{Audience, Broker, Fanout};
use crate::call::{CallNotifier, IceServers};
use crate::command::SearchMessages;
use crate::config::EngineConfig;
use crate::error::{Error, Result};
use crate::event::{Event, Typing};
use crate::id::{MessageId, RoomId, SessionId, UserId};
use crate::message::{HistoryPage, HistoryQuery};
use crate::metrics::Metrics;
use crate::presence::OnlineUser;
use crate::search::SearchPage;
use crate::store::Store;
use crate::user::{Identity, User};

/// Sets up an [`Engine`].
#[must_use]
pub struct EngineBuilder {
    store: Arc<dyn Store>,
    broker: Option<Arc<dyn Broker>>,
    bridges: Vec<Arc<dyn Bridge>>,
    config: EngineConfig,
    attachments: Option<crate::attachment::AttachmentConfig>,
    ice_servers: Option<Arc<dyn IceServers>>,
    call_notifier: Option<Arc<dyn CallNotifier>>,
}

impl std::fmt::Debug for EngineBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineBuilder").field("config", &self.config).finish_non_exhaustive()
    }
}

impl EngineBuilder {
    /// Makes the engine one process of a cluster: events also reach the
    /// sessions of the other processes on `broker`, and presence counts
    /// theirs. Without a broker the engine is a single process.
    pub fn broker(mut self, broker: Arc<dyn Broker>) -> Self {
        self.broker = Some(broker);
        self
    }

    /// Adds a bridge.
    pub fn bridge(mut self, bridge: Arc<dyn Bridge>) -> Self {
        self.bridges.push(bridge);
        self
    }

    /// Accepts attachments, kept as `config` says. Without this, messages
    /// with attachments are refused (`invalid`). The store must keep
    /// attachment records ([`Store::attachment_store`]).
    pub fn attachments(mut self, config: crate::attachment::AttachmentConfig) -> Self {
        self.attachments = Some(config);
        self
    }

    /// Replaces the default limits and timings.
    pub fn config(mut self, config: EngineConfig) -> Self {
        self.config = config;
        self
    }

    /// Where calls get their ICE servers (STUN, TURN with per-user
    /// credentials). Without one, calls are offered none.
    pub fn ice_servers(mut self, source: Arc<dyn IceServers>) -> Self {
        self.ice_servers = Some(source);
        self
    }

    /// Who hears of calls to users with no open session anywhere (the seam
    /// for push notifications).
    pub fn call_notifier(mut self, notifier: Arc<dyn CallNotifier>) -> Self {
        self.call_notifier = Some(notifier);
        self
    }

    /// Starts the engine's tasks (the committer, presence and typing timers),
    /// the broker and the bridges. Must be called inside a Tokio runtime.
    pub async fn start(self) -> Result<Engine> {
        let metrics = Arc::new(Metrics::new());
        let hub = Arc::new(Hub::new(metrics.clone()));
        let (cluster, queues) = match self.broker {
            Some(broker) => {
                let (cluster, queues) = cluster::Cluster::new(broker, metrics.clone());
                (Some(cluster), Some(queues))
            }
            None => (None, None),
        };
        // Sends wait for room in this queue, which bounds the memory that
        // pending sends can take when the store is slower than the clients.
        let (commit_tx, commit_rx) = mpsc::channel(committer::batch_limit(&self.config) * 4);
        let attachments = match self.attachments {
            Some(config) => Some(attachments::Attachments::new(config, self.store.as_ref()).await?),
            None => None,
        };
        let inner = Arc::new(Inner {
            attachments,
            typing: TypingTracker::new(self.config.typing_timeout),
            room_actions: room_actions::RoomActionLimiter::default(),
            keepalives: KeepaliveQueue::new(self.config.keepalive_interval),
            transports: TransportCounts::default(),
            store: self.store,
            cluster,
            bridges: self.bridges,
            config: self.config,
            hub,
            metrics,
            presence: PresenceTracker::default(),
            expiries: ExpiryQueue::default(),
            commits: commit_tx,
            accepting: AtomicBool::new(true),
            last_seen: LastSeen::default(),
            ice_servers: self.ice_servers,
            call_notifier: self.call_notifier,
            call_legs: calls::CallLegs::default(),
            started: Instant::now(),
            tasks: Mutex::new(Vec::new()),
        });
        let mut tasks = vec![
            tokio::spawn(committer::run(inner.clone(), commit_rx)),
            tokio::spawn(announce_presence(inner.clone())),
            tokio::spawn(expire_typing(inner.clone())),
            tokio::spawn(expire_sessions(inner.clone())),
            tokio::spawn(keep_sessions_alive(inner.clone())),
            tokio::spawn(write_last_seen(inner.clone())),
            tokio::spawn(attachments::clean_up(inner.clone())),
            tokio::spawn(calls::sweep(Arc::downgrade(&inner))),
        ];
        if let (Some(cluster), Some(queues)) = (&inner.cluster, queues) {
            let sink = Arc::new(cluster::ClusterSink { inner: Arc::downgrade(&inner) });
            cluster.broker.start(sink).await?;
            let weak = Arc::downgrade(&inner);
            let (outgoing, interest) = queues.split();
            tasks.push(tokio::spawn(cluster::publish(cluster.broker.clone(), inner.metrics.clone(), outgoing)));
            tasks.push(tokio::spawn(cluster::follow_interest(weak.clone(), interest)));
            tasks.push(tokio::spawn(cluster::repair(weak.clone())));
            tasks.push(tokio::spawn(cluster::heartbeat(weak)));
        }
        *inner.tasks.lock().unwrap_or_else(|e| e.into_inner()) = tasks;
        let engine = Engine { inner };
        for bridge in &engine.inner.bridges {
            bridge.start(Arc::new(engine.clone())).await?;
        }
        Ok(engine)
    }
}

/// The chat engine of one server process. See the [module docs](self).
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("sessions", &self.inner.hub.session_count()).finish_non_exhaustive()
    }
}

pub(crate) struct Inner {
    pub(crate) store: Arc<dyn Store>,
    /// Where uploads go and how their URLs are signed, when the engine
    /// takes attachments.
    pub(crate) attachments: Option<attachments::Attachments>,
    /// This process's part in a cluster, when the engine has a broker.
    pub(crate) cluster: Option<cluster::Cluster>,
    pub(crate) bridges: Vec<Arc<dyn Bridge>>,
    pub(crate) config: EngineConfig,
    pub(crate) hub: Arc<Hub>,
    /// Counted by the sessions, the committer and the hub; read by scrapes.
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) presence: PresenceTracker,
    pub(crate) typing: TypingTracker,
    /// Each user's allowance of room creations and invites.
    pub(crate) room_actions: room_actions::RoomActionLimiter,
    /// When each session's credentials run out (plus the leeway).
    pub(crate) expiries: ExpiryQueue,
    /// Each session's keepalive beat.
    pub(crate) keepalives: KeepaliveQueue,
    /// Open sessions by transport.
    pub(crate) transports: TransportCounts,
    /// The group committer's queue. Every send goes through it, so sends are
    /// committed in batches and fanned out in commit order.
    pub(crate) commits: mpsc::Sender<CommitJob>,
    /// Cleared at shutdown: new sessions and sends are refused from then on.
    pub(crate) accepting: AtomicBool,
    /// When users were last seen, waiting to be written (see [`LastSeen`]).
    pub(crate) last_seen: LastSeen,
    /// Where calls get their ICE servers.
    pub(crate) ice_servers: Option<Arc<dyn IceServers>>,
    /// Who hears of calls to users who are nowhere connected.
    pub(crate) call_notifier: Option<Arc<dyn CallNotifier>>,
    /// Which sessions here take part in calls: what the timers and the
    /// calls' sweep act on (the store decides).
    pub(crate) call_legs: calls::CallLegs,
    started: Instant,
    /// The background tasks, aborted at shutdown once the committer is drained.
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

/// Who is asking: the session (if any) and its user.
#[derive(Debug, Clone)]
pub(crate) struct Ctx {
    pub(crate) session: Option<SessionId>,
    pub(crate) user: User,
    /// The bridge acting for the user, if one is.
    pub(crate) bridge: Option<Arc<str>>,
}

/// Support availability, for `/v1/support/availability`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SupportAvailability {
    /// Whether at least one agent is online.
    pub available: bool,
    /// Support-role users online on any server process, plus agents online
    /// on bridged platforms.
    pub online_agents: u32,
}

impl Engine {
    /// Starts building an engine on a store.
    pub fn builder(store: Arc<dyn Store>) -> EngineBuilder {
        EngineBuilder {
            store,
            broker: None,
            bridges: Vec::new(),
            config: EngineConfig::default(),
            ice_servers: None,
            call_notifier: None,
            attachments: None,
        }
    }

    /// The store the engine uses.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// The engine's configuration.
    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }

    /// Opens a session for an authenticated identity: checks that the store
    /// still accepts the credentials (`unauthorized` for a deleted or
    /// deactivated user, or a revoked token; see `users.rs`), records the
    /// user (name and roles from the credentials win over stored ones,
    /// unless an operator set the user's profile after the credentials were
    /// issued), registers the session and marks the user online. Returns the
    /// session and the data of its `ready` frame.
    ///
    /// The session is counted under the transport `"other"`; a transport
    /// that wants its own line in the metrics and `/health` uses
    /// [`Engine::open_session_on`].
    pub async fn open_session(&self, identity: Identity) -> Result<(Session, Ready)> {
        self.open_session_on("other", identity).await
    }

    /// [`Engine::open_session`] for a session of the named transport
    /// (`"websocket"`, `"socketio"`…), counted under that name by
    /// [`Engine::connections_by_transport`] and the metric
    /// `chat_transport_connections`.
    pub async fn open_session_on(&self, transport: &'static str, identity: Identity) -> Result<(Session, Ready)> {
        self.inner.open_session(identity, transport).await
    }

    /// Creates or updates a user (visitors, dev login). `conflict` for a
    /// deleted user. The admin API uses [`Engine::put_user`].
    pub async fn upsert_user(&self, user: User) -> Result<User> {
        user.validate()?;
        self.inner.store.upsert_user(&user).await?;
        Ok(user)
    }

    /// A page of history for a member of the room.
    pub async fn history(&self, user: &UserId, room: RoomId, query: HistoryQuery) -> Result<HistoryPage> {
        // Only the id matters for the membership check, so an unknown user is
        // simply not a member rather than an error of its own.
        let ctx = Ctx { session: None, user: User::new(user.clone(), user.as_str()), bridge: None };
        self.inner.history(&ctx, room, query.before_seq, query.after_seq, Some(query.limit)).await
    }

    /// `messages:search` for the holder of `identity` (the HTTP route):
    /// the same checks and answer as the command; visitors are refused.
    pub async fn search_messages(&self, identity: &Identity, request: SearchMessages) -> Result<SearchPage> {
        let user = self.acting_user(identity).await?;
        if user.is_visitor() {
            return Err(Error::forbidden("visitors may not search messages"));
        }
        let ctx = Ctx { session: None, user, bridge: None };
        self.inner.search_messages(&ctx, request).await
    }

    /// The ICE servers for the holder of `identity`'s calls (`GET
    /// /v1/calls/ice-servers`): the same list `call:invite` answers with.
    /// Visitors, who may not call, are refused.
    pub async fn ice_servers(&self, identity: &Identity) -> Result<Vec<serde_json::Value>> {
        let user = self.acting_user(identity).await?;
        if user.is_visitor() {
            return Err(Error::forbidden("visitors may not make calls"));
        }
        Ok(self.inner.ice_servers_for(&user.id))
    }

    /// Connected, visible users, on every server process of the cluster.
    pub fn online_users(&self) -> Vec<OnlineUser> {
        self.inner.presence.online_users()
    }

    /// Whether `user` has a session open on any server process of the
    /// cluster (invisible ones included), as far as this process has heard.
    pub fn has_open_session(&self, user: &UserId) -> bool {
        self.inner.presence.is_connected(user)
    }

    /// The user an HTTP request acts as: [`Engine::authorize`].
    async fn acting_user(&self, identity: &Identity) -> Result<User> {
        self.authorize(identity).await
    }

    /// [`Engine::online_users`], for the holder of `identity`: visitors are
    /// refused, as they are `users:online`.
    pub async fn online_users_for(&self, identity: &Identity) -> Result<Vec<OnlineUser>> {
        if self.acting_user(identity).await?.is_visitor() {
            return Err(Error::forbidden("visitors may not list who is online"));
        }
        Ok(self.inner.presence.online_users())
    }

    /// One page of the support queue for a support agent: open support rooms
    /// with at least one message, longest waiting first, after the opaque
    /// `cursor` of the previous page.
    pub async fn support_queue(
        &self,
        identity: &Identity,
        cursor: Option<&str>,
        limit: Option<u32>,
    ) -> Result<SupportQueuePage> {
        let user = self.acting_user(identity).await?;
        self.inner.support_queue(&user, cursor, limit).await
    }

    /// Support agents online on every server process and on bridged platforms.
    pub fn support_availability(&self) -> SupportAvailability {
        let local = self.inner.presence.online_support_agents();
        // A bridge on standby here counts what the process doing its work
        // says in its heartbeats, when there is a cluster to hear it from.
        let bridged: u32 = self
            .inner
            .bridges
            .iter()
            .map(|b| match self.inner.presence.bridge_agents(b.name()) {
                Some(count) if self.inner.cluster.is_some() && b.health().standby => count,
                _ => b.online_agents(),
            })
            .sum();
        let online_agents = local.saturating_add(bridged);
        SupportAvailability { available: online_agents > 0, online_agents }
    }

    /// Whether the broker is reachable with every subscription active;
    /// `None` for an engine without a broker (a single process).
    pub fn broker_connected(&self) -> Option<bool> {
        self.inner.cluster.as_ref().map(|c| c.broker.is_connected())
    }

    /// Other server processes this one has heard from recently (zero
    /// without a broker).
    pub fn peer_processes(&self) -> usize {
        if self.inner.cluster.is_some() { self.inner.presence.node_count() } else { 0 }
    }

    /// Ends every session of a user, on this process and, through the
    /// broker, on every other (the user was deactivated, or their tokens
    /// revoked). The sessions close with [`CloseReason::Revoked`].
    pub async fn end_sessions(&self, user: &UserId) {
        let control = cluster::Control::EndSessions { user_id: user.clone() };
        if let Some(cluster) = &self.inner.cluster {
            cluster.publish_control(crate::broker::Topic::User(user.clone()), &control);
            if let Err(err) = cluster.flush(self.inner.config.cluster.flush_timeout).await {
                tracing::warn!(%user, error = %err, "ending a user's sessions on other processes may be late");
            }
        }
        self.inner.apply_control(control);
    }

    /// Open sessions on this process.
    pub fn connections(&self) -> usize {
        self.inner.hub.session_count()
    }

    /// Open sessions on this process by transport name (see
    /// [`Engine::open_session_on`]), for every transport that has had a
    /// session since the engine started.
    pub fn connections_by_transport(&self) -> BTreeMap<&'static str, usize> {
        self.inner.transports.snapshot()
    }

    /// The engine's metrics in the Prometheus text format (OpenMetrics):
    /// connections, commands by type and result, events and deliveries,
    /// fan-out and ack latency, store commit latency and batch size, failed
    /// commits and slow-consumer closes. All names start with `chat_`.
    pub fn encode_metrics(&self) -> String {
        self.inner.metrics.encode(self.inner.hub.session_count(), &self.inner.transports.snapshot())
    }

    /// How long the engine has been running.
    pub fn uptime(&self) -> Duration {
        self.inner.started.elapsed()
    }

    /// Pings the store, giving up after `timeout`.
    pub async fn store_health(&self, timeout: Duration) -> Result<()> {
        match tokio::time::timeout(timeout, self.inner.store.ping()).await {
            Ok(res) => res,
            Err(_) => Err(Error::unavailable("store ping timed out")),
        }
    }

    /// Each bridge's health, by name.
    pub fn bridge_health(&self) -> BTreeMap<String, BridgeHealth> {
        self.inner.bridges.iter().map(|b| (b.name().to_owned(), b.health())).collect()
    }

    /// The outbox jobs of the bridge named `bridge` with a status, oldest
    /// first, at most `limit`. `NotFound` when no bridge has that name.
    pub async fn bridge_jobs(&self, bridge: &str, status: JobStatus, limit: u32) -> Result<Vec<Job>> {
        self.bridge_named(bridge)?.jobs(status, limit).await
    }

    /// Makes a failed job of the bridge named `bridge` pending again. `false`
    /// when that bridge has no failed job with this id; `NotFound` when no
    /// bridge has that name.
    pub async fn retry_bridge_job(&self, bridge: &str, id: i64) -> Result<bool> {
        self.bridge_named(bridge)?.retry_job(id).await
    }

    fn bridge_named(&self, name: &str) -> Result<&Arc<dyn Bridge>> {
        self.inner.bridges.iter().find(|b| b.name() == name).ok_or(Error::NotFound("bridge"))
    }

    /// Posts a message into a room as `user`, on behalf of a bridge. The user
    /// is recorded, and becomes a member if the room's rules let them join (a
    /// support agent in a support room, anyone in a public group). Bridges see
    /// the resulting event with `origin` set to `bridge`, so they can skip it.
    pub async fn post_as(
        &self,
        bridge: &str,
        user: User,
        room: RoomId,
        client_msg_id: String,
        body: String,
    ) -> Result<crate::message::Message> {
        self.post_files_as(bridge, user, room, client_msg_id, body, Vec::new()).await
    }

    /// [`Engine::post_as`] with attachments `user` uploaded (through
    /// [`Engine::store_upload`]); the body may then be empty.
    pub async fn post_files_as(
        &self,
        bridge: &str,
        user: User,
        room: RoomId,
        client_msg_id: String,
        body: String,
        attachments: Vec<String>,
    ) -> Result<crate::message::Message> {
        user.validate()?;
        self.inner.store.upsert_user(&user).await?;
        let ctx = Ctx { session: None, user, bridge: Some(Arc::from(bridge)) };
        self.inner.ensure_member(&ctx, room).await?;
        let pending = self
            .inner
            .send(&ctx, crate::command::SendMessage { room_id: room, client_msg_id, body, attachments, reply_to: None })
            .await?;
        let appended = pending.await.map_err(|_| Error::unavailable("the commit was abandoned"))??;
        Ok(appended.message)
    }

    /// Edits a message as its sender, on behalf of a bridge: the bridged
    /// user changed what they wrote on the other platform. The same rules as a
    /// session's `message:edit` apply (a member, the sender, not deleted), and
    /// the room sees `message:updated`; bridges see the change with `origin`
    /// set to `bridge`.
    pub async fn edit_as(
        &self,
        bridge: &str,
        user: &UserId,
        room: RoomId,
        message: MessageId,
        body: String,
    ) -> Result<crate::message::Message> {
        let ctx = self.bridge_ctx(bridge, user);
        let edit = crate::command::EditMessage { room_id: room, message_id: message, body };
        match self.inner.edit(&ctx, edit).await? {
            crate::command::Reply::Message { message } => Ok(message),
            _ => Err(Error::internal("an edit answered without its message")),
        }
    }

    /// Deletes a message as `user`, on behalf of a bridge, with the rules of a
    /// session's `message:delete` (the sender or a room admin; deleting twice
    /// is fine). The room sees `message:deleted`; bridges see the change with
    /// `origin` set to `bridge`.
    pub async fn delete_as(&self, bridge: &str, user: &UserId, room: RoomId, message: MessageId) -> Result<()> {
        let ctx = self.bridge_ctx(bridge, user);
        self.inner.delete(&ctx, crate::command::DeleteMessage { room_id: room, message_id: message }).await?;
        Ok(())
    }

    /// Who a bridge acts as: only the id matters to the rules of edits and deletes.
    fn bridge_ctx(&self, bridge: &str, user: &UserId) -> Ctx {
        Ctx { session: None, user: User::new(user.clone(), user.as_str()), bridge: Some(Arc::from(bridge)) }
    }

    /// Records a support agent as the one who took a support room, on behalf
    /// of a bridge (an agent pressed "Claim" on the other platform). The agent
    /// is recorded as a user and becomes a member; the latest claim wins. When
    /// the claim changed, the room's members get `room:updated` with
    /// `claimed_by`, and bridges see [`BridgeEvent::RoomUpdated`] with
    /// `origin` set to `bridge`. `forbidden` when `user` lacks the support role
    /// or the room is closed; `invalid` for a room that is not a support room.
    pub async fn claim_room_as(&self, bridge: &str, user: User, room: RoomId) -> Result<crate::room::Room> {
        user.validate()?;
        self.inner.store.upsert_user(&user).await?;
        let ctx = Ctx { session: None, user, bridge: Some(Arc::from(bridge)) };
        self.inner.claim_room(&ctx, room).await
    }

    /// Closes a support room to new messages, on behalf of a bridge (an agent
    /// pressed "Close" on the other platform). From then on `message:send`
    /// to the room fails with `forbidden`. The first close announces
    /// `room:updated` with `closed: true` to the room's members and
    /// [`BridgeEvent::RoomUpdated`] to bridges (`origin` set to `bridge`);
    /// closing again changes nothing and announces nothing. The same rules
    /// on `user` and the room as [`Engine::claim_room_as`].
    pub async fn close_room_as(&self, bridge: &str, user: User, room: RoomId) -> Result<crate::room::Room> {
        user.validate()?;
        self.inner.store.upsert_user(&user).await?;
        let ctx = Ctx { session: None, user, bridge: Some(Arc::from(bridge)) };
        self.inner.close_room(&ctx, room).await
    }

    /// Shows or hides a typing indicator in a room for a user, on behalf of a
    /// bridge. The indicator ends by itself like one from a session.
    pub async fn set_typing_as(&self, user: &UserId, room: RoomId, typing: bool) -> Result<()> {
        let changed = if typing { self.inner.typing.start(room, user) } else { self.inner.typing.stop(room, user) };
        if changed {
            self.inner.publish_typing(room, user.clone(), typing).await;
        }
        Ok(())
    }

    /// Stops the engine: refuses new sessions and sends, closes every session
    /// with [`CloseReason::Shutdown`], waits until every accepted send is
    /// committed, then stops bridges, the broker and the store.
    pub async fn shutdown(&self) {
        self.inner.accepting.store(false, Ordering::SeqCst);
        self.inner.hub.kill_all(CloseReason::Shutdown);
        let (tx, rx) = oneshot::channel();
        if self.inner.commits.send(CommitJob::Flush(tx)).await.is_ok() {
            let _ = rx.await;
        }
        for bridge in &self.inner.bridges {
            bridge.stop().await;
        }
        if let Some(cluster) = &self.inner.cluster {
            cluster::goodbye(cluster, self.inner.config.cluster.flush_timeout).await;
            cluster.broker.stop().await;
        }
        self.inner.store.close().await;
        let tasks = std::mem::take(&mut *self.inner.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        for task in tasks {
            task.abort();
        }
    }
}

impl Inner {
    /// Publishes a fan-out: to this process's sessions at once, and to
    /// the other processes' through the broker. A broker failure is logged,
    /// not returned, because the change it announces is already committed
    /// (and a message lost on the way is read back from the store).
    pub(crate) async fn publish(&self, audience: Audience, event: Event) {
        self.publish_now(audience, event);
    }

    /// [`Inner::publish`] for callers that cannot wait: it does not.
    pub(crate) fn publish_now(&self, audience: Audience, event: Event) {
        let fanout = Fanout { audience, event };
        let Some(cluster) = &self.cluster else {
            self.hub.deliver(fanout);
            return;
        };
        // A session of this process needs nothing from the broker.
        if let Audience::Session { session_id, .. } = &fanout.audience
            && self.hub.has_session(*session_id)
        {
            self.hub.deliver(fanout);
            return;
        }
        cluster.publish_fanout(&fanout);
        match &fanout.event {
            Event::MessageNew(e) => {
                let (room, seq) = (e.message.room_id, e.message.seq);
                cluster.order.offer(room, seq, fanout, &self.hub);
            }
            _ => self.hub.deliver(fanout),
        }
    }

    pub(crate) fn publish_typing_now(&self, room_id: RoomId, user_id: UserId, typing: bool) {
        let audience = Audience::Room { room_id, except_session: None, except_user: Some(user_id.clone()) };
        self.publish_now(audience, Event::Typing(Typing { room_id, user_id, typing }));
    }

    pub(crate) async fn publish_typing(&self, room_id: RoomId, user_id: UserId, typing: bool) {
        self.publish_typing_now(room_id, user_id, typing);
    }

    /// A room lost its last subscriber here.
    pub(crate) fn rooms_emptied(&self, rooms: &[RoomId]) {
        if let Some(cluster) = &self.cluster {
            for room in rooms {
                cluster.room_emptied(*room, &self.hub);
            }
        }
    }

    pub(crate) fn notify_bridges(&self, event: BridgeEvent, origin: Option<&str>) {
        for bridge in &self.bridges {
            bridge.on_event(&event, origin);
        }
    }

    /// Called when a session ends, from its `Drop`.
    pub(crate) fn session_closed(self: &Arc<Self>, shared: &SessionShared) {
        let (last, emptied) = self.hub.unregister(shared.id);
        self.call_session_closed(shared.id);
        self.presence.disconnect(shared.user_id());
        self.rooms_emptied(&emptied);
        if last {
            if let Some(cluster) = &self.cluster {
                cluster.interest_note(crate::broker::Topic::User(shared.user_id().clone()));
            }
            self.record_last_seen(shared.user_id());
            let rooms = self.typing.stop_user(shared.user_id());
            if !rooms.is_empty() {
                let inner = self.clone();
                let user = shared.user_id().clone();
                if let Ok(rt) = tokio::runtime::Handle::try_current() {
                    rt.spawn(async move {
                        for room in rooms {
                            inner.publish_typing(room, user.clone(), false).await;
                        }
                    });
                }
            }
        }
    }
}

impl Inner {
    /// Records when a user's last session here closed, in the background (a
    /// session ends in its `Drop`). Skipped at shutdown, when the store is
    /// closing: the time of their last connect stays.
    fn record_last_seen(self: &Arc<Self>, user: &UserId) {
        if !self.accepting.load(Ordering::SeqCst) {
            return;
        }
        self.last_seen.note(user.clone(), crate::time::Timestamp::now());
    }
}

/// When users were last seen (a session opened, or their last one here
/// closed), kept off the path of opening and closing sessions: noted here
/// and written by one task, one user at a time. A reconnect storm of ten
/// thousand sessions then costs the store's writer ten thousand small
/// updates spread behind the storm, not ten thousand writes each session
/// waits for; a user seen again before their turn is written once. Bounded
/// by the users with sessions on this process.
#[derive(Default)]
pub(crate) struct LastSeen {
    pending: std::sync::Mutex<HashMap<UserId, crate::time::Timestamp>>,
    wake: tokio::sync::Notify,
}

impl LastSeen {
    pub(crate) fn note(&self, user: UserId, at: crate::time::Timestamp) {
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).insert(user, at);
        self.wake.notify_one();
    }

    fn take(&self) -> Vec<(UserId, crate::time::Timestamp)> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).drain().collect()
    }
}

async fn write_last_seen(inner: Arc<Inner>) {
    loop {
        inner.last_seen.wake.notified().await;
        for (user, at) in inner.last_seen.take() {
            if let Err(err) = inner.store.touch_user(&user, at).await {
                tracing::debug!(%user, error = %err, "last seen not recorded");
            }
        }
    }
}

/// Announces presence changes, and in a cluster tells the other processes
/// of this one's; see `presence.rs` for why this is one task.
async fn announce_presence(inner: Arc<Inner>) {
    loop {
        inner.presence.wake.notified().await;
        if let Some(cluster) = &inner.cluster
            && let Some(delta) = inner.presence.take_delta()
        {
            cluster.publish_gossip(&delta);
        }
        for (user_id, status, last_seen, previous) in inner.presence.take_changes() {
            let users = match inner.store.co_members(&user_id).await {
                Ok(users) => users,
                // During shutdown the store closes while the last sessions
                // drop; failing to announce their going offline is expected.
                Err(err) if !inner.accepting.load(Ordering::SeqCst) => {
                    tracing::debug!(user = %user_id, error = %err, "presence not announced: shutting down");
                    continue;
                }
                Err(err) => {
                    tracing::warn!(user = %user_id, error = %err, "presence not announced: store failed");
                    continue;
                }
            };
            if users.is_empty() {
                continue;
            }
            // Every process announces to its own sessions from its view of
            // the whole cluster, so this never goes through the broker.
            let event = Event::PresenceChanged(crate::event::PresenceChanged { user_id, status, last_seen, previous });
            inner.hub.deliver(Fanout { audience: Audience::Users { users, except_session: None }, event });
        }
    }
}

/// Ends typing indicators whose deadline passed.
async fn expire_typing(inner: Arc<Inner>) {
    loop {
        match inner.typing.next_deadline() {
            None => inner.typing.wake.notified().await,
            Some(deadline) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(deadline) => {}
                    _ = inner.typing.wake.notified() => {}
                }
            }
        }
        for (room, user) in inner.typing.expire(tokio::time::Instant::now()) {
            inner.publish_typing(room, user, false).await;
        }
    }
}

/// Ends sessions whose credentials have expired, at their deadline.
async fn expire_sessions(inner: Arc<Inner>) {
    loop {
        let (due, next) = inner.expiries.take_due(tokio::time::Instant::now());
        for session in due {
            inner.hub.kill(session, CloseReason::TokenExpired);
        }
        match next {
            None => inner.expiries.wake.notified().await,
            Some(deadline) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(deadline) => {}
                    _ = inner.expiries.wake.notified() => {}
                }
            }
        }
    }
}

/// Gives every session its keepalive beat, an interval apart.
async fn keep_sessions_alive(inner: Arc<Inner>) {
    if !inner.keepalives.enabled() {
        return;
    }
    loop {
        let next = inner.keepalives.take_due(tokio::time::Instant::now(), |sessions| inner.hub.beat(sessions));
        match next {
            None => inner.keepalives.wake.notified().await,
            Some(deadline) => tokio::time::sleep_until(deadline).await,
        }
    }
}

//! The engine as one process of many: what it publishes to the others,
//! what it does with what they publish, and how it keeps every room's
//! messages gapless and in order whatever the broker loses or reorders.
//!
//! - **Interest.** The hub knows which rooms and users have sessions here.
//!   One task keeps the broker's subscriptions equal to that: a room's topic
//!   while a session here joined it, a user's topic while the user has a
//!   session here, the cluster topic always. A join waits until its room's
//!   subscription is active and the room's position is read from the store,
//!   so nothing published after the join's reply can be missed.
//! - **Order.** Each served room has a position: the highest seq delivered
//!   here. A message at the next seq goes out at once (to local sessions,
//!   whichever process committed it), a later one waits for the gap to close
//!   for [`ClusterConfig::gap_hold`], then the gap is read from the store,
//!   and one at or below the position is a duplicate and is dropped. A
//!   repair task also compares every served room with the store after the
//!   broker reconnects or reports a loss, and every
//!   [`ClusterConfig::audit_interval`], which brings in messages stored by a
//!   process that died before publishing them.
//! - **Control.** Changes of the hub's state travel as typed messages, not
//!   as events to be interpreted: a member removed (on the room's topic, so
//!   that it comes before anything posted after it, and on the user's, which
//!   tells every session `room:removed`), a room closed, a user's sessions
//!   ended.
//! - **Presence** gossip goes on the cluster topic; see `presence.rs`.
//!
//! [`ClusterConfig::gap_hold`]: crate::ClusterConfig::gap_hold
//! [`ClusterConfig::audit_interval`]: crate::ClusterConfig::audit_interval

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::Instant;
use uuid::Uuid;

use super::Inner;
use super::hub::{CloseReason, Hub};
use super::presence::Gossip;
use crate::broker::{Audience, Broker, BrokerSink, Fanout, Topic};
use crate::error::{Error, Result};
use crate::event::{Event, MessageEvent};
use crate::id::{RoomId, UserId};
use crate::message::HistoryQuery;
use crate::metrics::Metrics;

/// Publications waiting for the broker, at most. Past it new ones are
/// dropped (and counted): rooms' messages come back from the store, and
/// everything else is as lost as on a broker that drops it.
const OUTGOING_LIMIT: usize = 65_536;
/// Publications handed to the broker in one call, at most.
const PUBLISH_BATCH: usize = 512;
/// Messages held per room while waiting for a gap to close, at most; later
/// ones are dropped and read back from the store with the gap.
const HELD_LIMIT: usize = 4_096;
/// Messages read from the store per call when filling a gap.
const FILL_PAGE: u64 = 500;
/// Rooms read per store call when comparing positions.
const AUDIT_CHUNK: usize = 500;
/// Shards of the rooms' positions, so that rooms delivered by different
/// tasks do not wait for each other.
const SHARDS: usize = 16;

/// A change of the hub's state that other processes must apply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "c", rename_all = "snake_case")]
pub(crate) enum Control {
    /// `user` is no longer a member of `room_id`. On the room's topic it
    /// unsubscribes their sessions; on the user's topic (`notify`) it also
    /// tells each of them `room:removed`.
    MemberRemoved { room_id: RoomId, user_id: UserId, notify: bool },
    /// The room was closed to new messages.
    RoomClosed { room_id: RoomId },
    /// Every session of the user ends.
    EndSessions { user_id: UserId },
}

/// What travels between processes.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "k", content = "v", rename_all = "snake_case")]
enum Body {
    Event(Box<Fanout>),
    Control(Control),
    Presence(Gossip),
}

#[derive(Debug, Serialize, Deserialize)]
struct Envelope {
    /// The sending process.
    node: Uuid,
    body: Body,
}

/// The same, borrowed, for encoding without a copy.
#[derive(Serialize)]
#[serde(tag = "k", content = "v", rename_all = "snake_case")]
enum BodyRef<'a> {
    Event(&'a Fanout),
    Control(&'a Control),
    Presence(&'a Gossip),
}

#[derive(Serialize)]
struct EnvelopeRef<'a> {
    node: Uuid,
    body: BodyRef<'a>,
}

pub(crate) enum Outgoing {
    Publish(Topic, Bytes),
    /// Answered once everything queued before it went to the broker.
    Flush(oneshot::Sender<Result<()>>),
}

/// A change of interest in a topic, and who waits for it to be applied.
pub(crate) type InterestNote = (Topic, Option<oneshot::Sender<()>>);

pub(crate) struct Cluster {
    /// This process, as the others know it; new at every start.
    pub(crate) node: Uuid,
    pub(crate) broker: Arc<dyn Broker>,
    outgoing: mpsc::Sender<Outgoing>,
    interest: mpsc::UnboundedSender<InterestNote>,
    pub(crate) order: Sequencer,
    /// Wakes the repair task for a comparison with the store now.
    pub(crate) audit: Notify,
    /// Publications dropped because the queue to the broker was full.
    dropped: AtomicU64,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster").field("node", &self.node).finish_non_exhaustive()
    }
}

/// The receivers of the cluster's queues, for its tasks.
pub(crate) struct ClusterQueues {
    outgoing: mpsc::Receiver<Outgoing>,
    interest: mpsc::UnboundedReceiver<InterestNote>,
}

impl ClusterQueues {
    pub(crate) fn split(self) -> (mpsc::Receiver<Outgoing>, mpsc::UnboundedReceiver<InterestNote>) {
        (self.outgoing, self.interest)
    }
}

impl Cluster {
    pub(crate) fn new(broker: Arc<dyn Broker>, metrics: Arc<Metrics>) -> (Self, ClusterQueues) {
        let (out_tx, out_rx) = mpsc::channel(OUTGOING_LIMIT);
        let (int_tx, int_rx) = mpsc::unbounded_channel();
        let cluster = Cluster {
            node: Uuid::now_v7(),
            broker,
            outgoing: out_tx,
            interest: int_tx,
            order: Sequencer::default(),
            audit: Notify::new(),
            dropped: AtomicU64::new(0),
            metrics,
        };
        (cluster, ClusterQueues { outgoing: out_rx, interest: int_rx })
    }

    fn encode(&self, body: BodyRef<'_>) -> Option<Bytes> {
        match serde_json::to_vec(&EnvelopeRef { node: self.node, body }) {
            Ok(bytes) => Some(Bytes::from(bytes)),
            Err(err) => {
                tracing::error!(error = %err, "a publication could not be encoded");
                None
            }
        }
    }

    fn queue(&self, topic: Topic, payload: Bytes) {
        if self.outgoing.try_send(Outgoing::Publish(topic, payload)).is_err() {
            self.metrics.cluster_dropped(1);
            let before = self.dropped.fetch_add(1, Ordering::Relaxed);
            if before.is_multiple_of(10_000) {
                tracing::warn!(dropped = before + 1, "the broker is not keeping up; publications are dropped");
            }
        }
    }

    /// Publishes a fan-out to the processes that serve its audience: a
    /// room's topic once, or each user's topic with that user alone (a
    /// process serving two of the users must not get the event twice).
    pub(crate) fn publish_fanout(&self, fanout: &Fanout) {
        match &fanout.audience {
            Audience::Room { room_id, .. } => {
                if let Some(bytes) = self.encode(BodyRef::Event(fanout)) {
                    self.queue(Topic::Room(*room_id), bytes);
                }
            }
            Audience::Session { user_id, .. } => {
                if let Some(bytes) = self.encode(BodyRef::Event(fanout)) {
                    self.queue(Topic::User(user_id.clone()), bytes);
                }
            }
            Audience::Users { users, except_session } => {
                for user in users {
                    let one = Fanout {
                        audience: Audience::Users { users: vec![user.clone()], except_session: *except_session },
                        event: fanout.event.clone(),
                    };
                    if let Some(bytes) = self.encode(BodyRef::Event(&one)) {
                        self.queue(Topic::User(user.clone()), bytes);
                    }
                }
            }
        }
    }

    pub(crate) fn publish_control(&self, topic: Topic, control: &Control) {
        if let Some(bytes) = self.encode(BodyRef::Control(control)) {
            self.queue(topic, bytes);
        }
    }

    pub(crate) fn publish_gossip(&self, gossip: &Gossip) {
        if let Some(bytes) = self.encode(BodyRef::Presence(gossip)) {
            self.queue(Topic::Cluster, bytes);
        }
    }

    /// Waits until everything queued so far went to the broker, at most
    /// `timeout`.
    pub(crate) async fn flush(&self, timeout: std::time::Duration) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        if self.outgoing.send(Outgoing::Flush(tx)).await.is_err() {
            return Err(Error::unavailable("the cluster publisher has stopped"));
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(Error::unavailable("the cluster publisher has stopped")),
            Err(_) => Err(Error::unavailable("the broker did not take the publications in time")),
        }
    }

    /// Tells the interest task that a topic may have gained or lost its
    /// local audience, and waits until the broker's subscriptions (and, for
    /// a room, its position) follow.
    pub(crate) async fn interest_changed(&self, topic: Topic) {
        let (tx, rx) = oneshot::channel();
        if self.interest.send((topic, Some(tx))).is_ok() {
            let _ = rx.await;
        }
    }

    /// [`Cluster::interest_changed`] without waiting.
    pub(crate) fn interest_note(&self, topic: Topic) {
        let _ = self.interest.send((topic, None));
    }

    /// A room lost its last local subscriber.
    pub(crate) fn room_emptied(&self, room: RoomId, hub: &Hub) {
        self.order.close(room, hub);
        self.interest_note(Topic::Room(room));
    }
}

/// Per room: the position delivered here, and messages waiting for a gap.
#[derive(Default)]
struct RoomOrder {
    /// The highest seq delivered here, once known.
    delivered: Option<u64>,
    /// Messages that came ahead of a gap, by seq.
    held: BTreeMap<u64, Fanout>,
    /// Since when the oldest gap has been waited on.
    held_since: Option<Instant>,
}

impl RoomOrder {
    /// Delivers held messages that follow the position without a gap.
    fn drain(&mut self, hub: &Hub) {
        let Some(mut at) = self.delivered else { return };
        while let Some(entry) = self.held.first_entry() {
            let seq = *entry.key();
            if seq <= at {
                entry.remove();
            } else if seq == at + 1 {
                hub.deliver(entry.remove());
                at = seq;
            } else {
                break;
            }
        }
        self.delivered = Some(at);
        if self.held.is_empty() {
            self.held_since = None;
        }
    }
}

/// The positions of the rooms served here. See the [module docs](self).
#[derive(Default)]
pub(crate) struct Sequencer {
    shards: [Mutex<HashMap<RoomId, RoomOrder>>; SHARDS],
    /// Set when some room holds messages; cleared by the repair task.
    holding: AtomicBool,
}

impl Sequencer {
    fn shard(&self, room: RoomId) -> MutexGuard<'_, HashMap<RoomId, RoomOrder>> {
        let index = (room.as_uuid().as_u128() % SHARDS as u128) as usize;
        self.shards[index].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts keeping a room's position (its first local subscriber came).
    pub(crate) fn open(&self, room: RoomId) {
        self.shard(room).entry(room).or_default();
    }

    /// Stops keeping it, unless a session subscribed again meanwhile.
    fn close(&self, room: RoomId, hub: &Hub) {
        let mut shard = self.shard(room);
        if !hub.serves_room(room) {
            shard.remove(&room);
        }
    }

    /// Sets a room's position when it is not known yet (read from the
    /// store once the room's subscription was active).
    fn set_position(&self, room: RoomId, last_seq: u64, hub: &Hub) {
        if let Some(order) = self.shard(room).get_mut(&room)
            && order.delivered.is_none()
        {
            order.delivered = Some(last_seq);
            order.drain(hub);
        }
    }

    /// Delivers a room's message here in seq order: at once when it is the
    /// next, held when it is ahead of a gap, dropped when it was delivered
    /// already or nobody here joined the room.
    pub(crate) fn offer(&self, room: RoomId, seq: u64, fanout: Fanout, hub: &Hub) {
        let mut shard = self.shard(room);
        let Some(order) = shard.get_mut(&room) else { return };
        match order.delivered {
            Some(at) if seq <= at => {}
            Some(at) if seq == at + 1 => {
                hub.deliver(fanout);
                order.delivered = Some(seq);
                order.drain(hub);
            }
            _ => {
                if order.held.len() < HELD_LIMIT {
                    order.held.entry(seq).or_insert(fanout);
                }
                order.held_since.get_or_insert_with(Instant::now);
                self.holding.store(true, Ordering::Release);
            }
        }
    }

    /// Rooms whose gap has been waited on for `hold`: the room, its
    /// position, and the last seq of the gap.
    fn due(&self, now: Instant, hold: std::time::Duration) -> Vec<(RoomId, u64, u64)> {
        if !self.holding.swap(false, Ordering::AcqRel) {
            return Vec::new();
        }
        let mut due = Vec::new();
        let mut still = false;
        for shard in &self.shards {
            let shard = shard.lock().unwrap_or_else(|e| e.into_inner());
            for (room, order) in shard.iter() {
                let (Some(at), Some(since), Some((&first, _))) =
                    (order.delivered, order.held_since, order.held.first_key_value())
                else {
                    still |= order.held_since.is_some();
                    continue;
                };
                still = true;
                if now.duration_since(since) >= hold {
                    due.push((*room, at, first - 1));
                }
            }
        }
        if still {
            self.holding.store(true, Ordering::Release);
        }
        due
    }

    /// Every served room and its position (`None` while unknown).
    fn positions(&self) -> Vec<(RoomId, Option<u64>)> {
        let mut out = Vec::new();
        for shard in &self.shards {
            let shard = shard.lock().unwrap_or_else(|e| e.into_inner());
            out.extend(shard.iter().map(|(room, order)| (*room, order.delivered)));
        }
        out
    }

    /// A served room's position, when known.
    fn position(&self, room: RoomId) -> Option<u64> {
        self.shard(room).get(&room).and_then(|order| order.delivered)
    }

    fn is_holding(&self) -> bool {
        self.holding.load(Ordering::Acquire)
    }
}

/// The broker's side of the engine: where publications of other processes
/// arrive.
pub(crate) struct ClusterSink {
    pub(crate) inner: Weak<Inner>,
}

impl BrokerSink for ClusterSink {
    fn receive(&self, payload: Bytes) {
        let Some(inner) = self.inner.upgrade() else { return };
        let Some(cluster) = inner.cluster.as_ref() else { return };
        let envelope: Envelope = match serde_json::from_slice(&payload) {
            Ok(envelope) => envelope,
            Err(err) => {
                tracing::warn!(error = %err, bytes = payload.len(), "a publication from the broker could not be read");
                return;
            }
        };
        if envelope.node == cluster.node {
            return;
        }
        inner.metrics.cluster_received();
        match envelope.body {
            Body::Event(fanout) => inner.receive_event(*fanout),
            Body::Control(control) => inner.apply_control(control),
            Body::Presence(gossip) => inner.receive_gossip(envelope.node, gossip),
        }
    }

    fn resubscribed(&self) {
        let Some(inner) = self.inner.upgrade() else { return };
        tracing::info!("the broker is back: comparing every served room with the store");
        inner.cluster_caught_up_needed();
    }

    fn lost(&self) {
        let Some(inner) = self.inner.upgrade() else { return };
        tracing::warn!("the broker dropped publications to this process: comparing every served room with the store");
        // Presence finds its own losses by the heartbeats' versions and asks
        // only the process concerned; asking everyone here would add load to
        // a process that is already behind.
        if let Some(cluster) = &inner.cluster {
            cluster.audit.notify_one();
        }
    }
}

impl Inner {
    fn cluster(&self) -> &Cluster {
        self.cluster.as_ref().expect("only called in a cluster")
    }

    /// What may have been lost is found again: rooms from the store,
    /// presence from the other processes' snapshots.
    fn cluster_caught_up_needed(&self) {
        let cluster = self.cluster();
        cluster.audit.notify_one();
        cluster.publish_gossip(&Gossip::Sync { of: None });
        for part in self.presence.snapshot() {
            cluster.publish_gossip(&part);
        }
    }

    /// An event another process published.
    fn receive_event(&self, fanout: Fanout) {
        if let Event::MessageNew(e) = &fanout.event {
            let (room, seq, sender) = (e.message.room_id, e.message.seq, e.message.sender_id.clone());
            // A message ends its sender's typing, wherever it was typed.
            if self.typing.stop(room, &sender) {
                self.publish_typing_now(room, sender, false);
            }
            self.cluster().order.offer(room, seq, fanout, &self.hub);
            return;
        }
        self.hub.deliver(fanout);
    }

    /// Applies a control message, from here or from another process.
    pub(crate) fn apply_control(&self, control: Control) {
        match control {
            Control::MemberRemoved { room_id, user_id, notify } => {
                let emptied = if notify {
                    self.hub.remove_member(&user_id, room_id)
                } else {
                    self.hub.unsubscribe_user(&user_id, room_id)
                };
                if emptied && let Some(cluster) = &self.cluster {
                    cluster.room_emptied(room_id, &self.hub);
                }
            }
            Control::RoomClosed { room_id } => self.hub.mark_closed(room_id),
            Control::EndSessions { user_id } => self.hub.kill_user(&user_id, CloseReason::Revoked),
        }
    }

    fn receive_gossip(&self, node: Uuid, gossip: Gossip) {
        let cluster = self.cluster();
        let ask_every = self.config.cluster.heartbeat;
        let follow = self.presence.receive(cluster.node, node, gossip, Instant::now(), ask_every);
        if let Some(of) = follow.ask {
            cluster.publish_gossip(&Gossip::Sync { of: Some(of) });
        }
        if follow.send_snapshot {
            for part in self.presence.snapshot() {
                cluster.publish_gossip(&part);
            }
        }
    }

    /// Reads the rooms' positions from the store and sets the unknown ones.
    async fn read_positions(&self, rooms: &[RoomId]) {
        let cluster = self.cluster();
        for chunk in rooms.chunks(AUDIT_CHUNK) {
            match self.store.last_seqs(chunk).await {
                Ok(found) => {
                    for (room, last_seq) in found {
                        cluster.order.set_position(room, last_seq, &self.hub);
                    }
                }
                Err(err) => {
                    // The repair task tries again; the rooms hold meanwhile.
                    tracing::warn!(error = %err, rooms = chunk.len(), "could not read the rooms' positions");
                }
            }
        }
    }

    /// Delivers a room's messages after `after` up to `until` from the store.
    async fn fill(&self, room: RoomId, mut after: u64, until: u64) -> Result<()> {
        let cluster = self.cluster();
        while after < until {
            let limit = (until - after).min(FILL_PAGE) as u32;
            let page =
                self.store.history(room, HistoryQuery { before_seq: None, after_seq: Some(after), limit }).await?;
            let Some(last) = page.messages.last().map(|m| m.seq) else { break };
            for mut message in page.messages {
                self.sign(&mut message);
                let seq = message.seq;
                let audience = Audience::Room { room_id: room, except_session: None, except_user: None };
                let fanout = Fanout { audience, event: Event::MessageNew(MessageEvent { message }) };
                cluster.order.offer(room, seq, fanout, &self.hub);
            }
            self.metrics.gap_filled(last - after);
            after = last;
            if !page.has_more {
                break;
            }
        }
        Ok(())
    }

    /// Compares every served room's position with the store and fills
    /// what is missing.
    async fn audit(&self) {
        let cluster = self.cluster();
        let positions = cluster.order.positions();
        let unknown: Vec<RoomId> = positions.iter().filter(|(_, at)| at.is_none()).map(|(room, _)| *room).collect();
        if !unknown.is_empty() {
            self.read_positions(&unknown).await;
        }
        let known: HashMap<RoomId, u64> = positions.into_iter().filter_map(|(room, at)| Some((room, at?))).collect();
        let rooms: Vec<RoomId> = known.keys().copied().collect();
        let mut behind = Vec::new();
        for chunk in rooms.chunks(AUDIT_CHUNK) {
            let found = match self.store.last_seqs(chunk).await {
                Ok(found) => found,
                Err(err) => {
                    tracing::warn!(error = %err, "could not compare the served rooms with the store");
                    return;
                }
            };
            for (room, last_seq) in found {
                let at = known.get(&room).copied().unwrap_or(last_seq);
                if last_seq > at {
                    behind.push((room, last_seq));
                }
            }
        }
        if behind.is_empty() {
            return;
        }
        // A message this process stored a moment ago may not have gone out
        // through its own fan-out yet; reading it from the store first would
        // show it to its sender as an event besides the reply. So the rooms
        // behind get a moment to catch up by themselves first.
        tokio::time::sleep(self.config.cluster.gap_hold * 5).await;
        for (room, last_seq) in behind {
            let Some(at) = cluster.order.position(room) else { continue };
            if last_seq > at
                && let Err(err) = self.fill(room, at, last_seq).await
            {
                tracing::warn!(%room, error = %err, "could not fill a room's messages from the store");
            }
        }
    }
}

/// Sends what the engine queued to the broker, in batches, in order.
pub(crate) async fn publish(broker: Arc<dyn Broker>, metrics: Arc<Metrics>, mut queue: mpsc::Receiver<Outgoing>) {
    let mut taken = Vec::with_capacity(PUBLISH_BATCH);
    let mut batch = Vec::with_capacity(PUBLISH_BATCH);
    let mut flushes = Vec::new();
    let mut failing = false;
    while queue.recv_many(&mut taken, PUBLISH_BATCH).await > 0 {
        for item in taken.drain(..) {
            match item {
                Outgoing::Publish(topic, payload) => batch.push((topic, payload)),
                Outgoing::Flush(done) => flushes.push(done),
            }
        }
        let result = if batch.is_empty() { Ok(()) } else { broker.publish(&batch).await };
        match &result {
            Ok(()) => metrics.cluster_sent(batch.len() as u64),
            Err(_) => metrics.cluster_dropped(batch.len() as u64),
        }
        match &result {
            Ok(()) if failing => {
                failing = false;
                tracing::info!("publishing to the broker works again");
            }
            Err(err) if !failing => {
                failing = true;
                tracing::warn!(error = %err, lost = batch.len(), "publishing to the broker failed; other processes will fill what they miss from the store");
            }
            _ => {}
        }
        batch.clear();
        for done in flushes.drain(..) {
            let _ = done.send(match &result {
                Ok(()) => Ok(()),
                Err(err) => Err(Error::unavailable(err.to_string())),
            });
        }
    }
}

/// Keeps the broker's subscriptions equal to the hub's interest, and reads
/// each newly subscribed room's position.
pub(crate) async fn follow_interest(inner: Weak<Inner>, mut queue: mpsc::UnboundedReceiver<InterestNote>) {
    let mut active: HashSet<Topic> = HashSet::new();
    let mut notes = Vec::new();
    while queue.recv_many(&mut notes, 1024).await > 0 {
        let Some(inner) = inner.upgrade() else { return };
        let cluster = inner.cluster();
        let mut subscribe = Vec::new();
        let mut unsubscribe = Vec::new();
        let mut waiters = Vec::new();
        for (topic, waiter) in notes.drain(..) {
            waiters.extend(waiter);
            let wanted = inner.hub.wants(&topic);
            if wanted && !active.contains(&topic) {
                active.insert(topic.clone());
                subscribe.push(topic);
            } else if !wanted && active.remove(&topic) {
                unsubscribe.push(topic);
            }
        }
        if !unsubscribe.is_empty()
            && let Err(err) = cluster.broker.unsubscribe(&unsubscribe).await
        {
            tracing::debug!(error = %err, "unsubscribing failed");
        }
        if !subscribe.is_empty() {
            // While the broker is away the subscriptions are remembered and
            // made when it is back; the repair task then fills the rooms.
            if let Err(err) = cluster.broker.subscribe(&subscribe).await {
                tracing::debug!(error = %err, topics = subscribe.len(), "subscribing failed; the broker will subscribe when it is back");
            }
            let rooms: Vec<RoomId> =
                subscribe.iter().filter_map(|t| if let Topic::Room(r) = t { Some(*r) } else { None }).collect();
            if !rooms.is_empty() {
                inner.read_positions(&rooms).await;
            }
        }
        for waiter in waiters {
            let _ = waiter.send(());
        }
    }
}

/// Fills gaps that were waited on long enough, and compares the served
/// rooms with the store now and then.
pub(crate) async fn repair(inner: Weak<Inner>) {
    let Some(strong) = inner.upgrade() else { return };
    let settings = strong.config.cluster.clone();
    drop(strong);
    let tick = (settings.gap_hold / 2).max(std::time::Duration::from_millis(10));
    // Audits asked for (reconnects, losses) come at most this often, so that
    // a broker reporting losses again and again does not turn into a storm
    // of store reads.
    let min_gap = std::time::Duration::from_secs(1).min(settings.audit_interval);
    let mut last_audit = Instant::now();
    let mut next_audit = Instant::now() + settings.audit_interval;
    loop {
        let holding = match inner.upgrade() {
            Some(inner) => inner.cluster().order.is_holding(),
            None => return,
        };
        let wake = if holding { (Instant::now() + tick).min(next_audit) } else { next_audit };
        let audit_now = {
            let Some(strong) = inner.upgrade() else { return };
            let cluster_audit = async { strong.cluster().audit.notified().await };
            tokio::select! {
                _ = tokio::time::sleep_until(wake) => false,
                _ = cluster_audit => true,
            }
        };
        let Some(inner) = inner.upgrade() else { return };
        let cluster = inner.cluster();
        for (room, at, until) in cluster.order.due(Instant::now(), settings.gap_hold) {
            if let Err(err) = inner.fill(room, at, until).await {
                tracing::warn!(%room, error = %err, "could not fill a gap from the store; trying again shortly");
            }
        }
        if audit_now || Instant::now() >= next_audit {
            let since = last_audit.elapsed();
            if since < min_gap {
                tokio::time::sleep(min_gap - since).await;
            }
            inner.audit().await;
            last_audit = Instant::now();
            next_audit = last_audit + settings.audit_interval;
        }
    }
}

/// Tells the other processes this one is alive, and drops those that went
/// silent.
pub(crate) async fn heartbeat(inner: Weak<Inner>) {
    let Some(strong) = inner.upgrade() else { return };
    let settings = strong.config.cluster.clone();
    strong.cluster().publish_gossip(&Gossip::Sync { of: None });
    drop(strong);
    let mut ticks = tokio::time::interval(settings.heartbeat);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        // A bridge on standby here leaves the count to the process doing its work.
        let bridges = inner
            .bridges
            .iter()
            .filter(|b| !b.health().standby)
            .map(|b| (b.name().to_owned(), b.online_agents()))
            .collect();
        inner.cluster().publish_gossip(&inner.presence.heartbeat(bridges));
        inner.presence.expire_nodes(Instant::now(), settings.node_timeout);
    }
}

/// Says goodbye at shutdown, so that the others drop this process's
/// sessions at once rather than after the node timeout.
pub(crate) async fn goodbye(cluster: &Cluster, timeout: std::time::Duration) {
    cluster.publish_gossip(&Gossip::Goodbye);
    if let Err(err) = cluster.flush(timeout).await {
        tracing::debug!(error = %err, "the goodbye did not reach the broker");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Typing;

    #[test]
    fn envelopes_round_trip() {
        let room = RoomId::generate();
        let fanout = Fanout {
            audience: Audience::Room { room_id: room, except_session: None, except_user: None },
            event: Event::Typing(Typing { room_id: room, user_id: UserId::new("u").expect("valid"), typing: true }),
        };
        let node = Uuid::now_v7();
        let bytes = serde_json::to_vec(&EnvelopeRef { node, body: BodyRef::Event(&fanout) }).expect("encodes");
        let back: Envelope = serde_json::from_slice(&bytes).expect("decodes");
        assert_eq!(back.node, node);
        assert!(matches!(back.body, Body::Event(f) if *f == fanout));
        let control = Control::MemberRemoved { room_id: room, user_id: UserId::new("u").expect("valid"), notify: true };
        let bytes = serde_json::to_vec(&EnvelopeRef { node, body: BodyRef::Control(&control) }).expect("encodes");
        let back: Envelope = serde_json::from_slice(&bytes).expect("decodes");
        assert!(matches!(back.body, Body::Control(c) if c == control));
    }
}

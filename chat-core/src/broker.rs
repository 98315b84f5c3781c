//! The seam between server processes: a [`Broker`] carries what one
//! process publishes to the others that are interested in it.
//!
//! An engine with no broker is a single process: every event goes straight
//! from the engine to its own sessions, and nothing is serialized. With a
//! broker, the engine still delivers to its own sessions directly (local
//! fan-out never crosses the network) and also publishes each event once,
//! encoded once, to the [`Topic`] of its audience: a room's topic reaches the
//! processes with a session joined to that room, a user's topic the processes
//! with a session of that user, and [`Topic::Cluster`] every process. The
//! engine tells the broker which topics it needs (`subscribe`/`unsubscribe`,
//! as rooms get their first and lose their last local subscriber), so a
//! process receives only what it serves.
//!
//! A broker moves opaque bytes; what they mean (events, the engine's control
//! messages, presence) is the engine's business, which is also what keeps
//! the engine correct over a broker that loses messages: every room event
//! that matters carries its seq, and a process that finds a gap, or hears
//! from its broker that something may have been lost
//! ([`BrokerSink::resubscribed`], [`BrokerSink::lost`]), fills it from the
//! store. Plain at-most-once publish/subscribe (NATS core subjects, Redis
//! pub/sub) is therefore enough.
//!
//! [`LocalBroker`] connects engines inside one process (tests, embedding
//! several engines); the `chat-broker` crate has the NATS and Redis adapters.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::event::Event;
use crate::id::{RoomId, SessionId, UserId};

/// Who an event is for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Audience {
    /// Sessions that joined the room, except one session or all sessions of one user.
    Room {
        /// The room.
        room_id: RoomId,
        /// Skip this session (it got the result in its reply).
        except_session: Option<SessionId>,
        /// Skip every session of this user (events about the user's own action).
        except_user: Option<UserId>,
    },
    /// Every session of these users, except one session.
    Users {
        /// The users.
        users: Vec<UserId>,
        /// Skip this session.
        except_session: Option<SessionId>,
    },
    /// One session of a user, wherever it is: published to the user's
    /// topic, and delivered by the process that has the session.
    Session {
        /// The session's user.
        user_id: UserId,
        /// The session.
        session_id: SessionId,
    },
}

/// An event and its audience.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fanout {
    /// Who gets it.
    pub audience: Audience,
    /// What they get.
    pub event: Event,
}

/// What a publication is addressed to. A process receives a topic's
/// publications while it is subscribed to it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Topic {
    /// A room: its events, and the engine's control messages about it.
    Room(RoomId),
    /// A user: events for the user's sessions wherever they are, and the
    /// engine's control messages about the user.
    User(UserId),
    /// Every process: presence and other cluster-wide news.
    Cluster,
}

impl Topic {
    /// The topic's name, made of `[A-Za-z0-9.-]` only, so that it is a valid
    /// NATS subject and Redis channel after the adapter's prefix and a dot:
    /// `room.<uuid>`, `user.<hex of the id's UTF-8>`, `cluster`.
    pub fn name(&self) -> String {
        match self {
            Topic::Room(room) => format!("room.{room}"),
            Topic::User(user) => {
                let mut name = String::with_capacity(5 + user.as_str().len() * 2);
                name.push_str("user.");
                for byte in user.as_str().bytes() {
                    let _ = write!(name, "{byte:02x}");
                }
                name
            }
            Topic::Cluster => "cluster".to_owned(),
        }
    }
}

/// Where a broker hands what it receives, on one process.
pub trait BrokerSink: Send + Sync + 'static {
    /// A publication of another process on a subscribed topic. Publications
    /// of one process to one topic arrive in the order they were published.
    /// Must not block; called from the broker's receiving task.
    fn receive(&self, payload: Bytes);

    /// The broker's connection came back and every subscription is active
    /// again. Whatever was published meanwhile is lost to this process, and
    /// the engine fills it in from the store.
    fn resubscribed(&self);

    /// Publications were dropped on the way to this process (it read too
    /// slowly); the subscriptions are still active.
    fn lost(&self);
}

/// Carries publications between server processes. See the [module docs](self).
///
/// Implementations must keep, per topic and publishing process, the order of
/// publication, must not deliver a process its own publications, and must not
/// deliver a publication twice. They need not keep anything across their own
/// reconnects: they tell the sink instead.
#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// Starts receiving into `sink` and subscribes to [`Topic::Cluster`].
    /// Called once, before anything else. Returns at once when the broker is
    /// unreachable: the broker keeps trying, and the process runs degraded
    /// meanwhile.
    async fn start(&self, sink: Arc<dyn BrokerSink>) -> Result<()>;

    /// Subscribes to topics. Returns once publications made from now on will
    /// be received; `Unavailable` when the broker is unreachable, in which
    /// case the topics are still remembered and subscribed when it comes
    /// back (followed by [`BrokerSink::resubscribed`]).
    async fn subscribe(&self, topics: &[Topic]) -> Result<()>;

    /// Forgets topics: their publications stop arriving soon after.
    async fn unsubscribe(&self, topics: &[Topic]) -> Result<()>;

    /// Publishes a batch, in order. Returns once the broker has taken all of
    /// it, so that anything published after this returns, by any process, to
    /// one of these topics is delivered after it. `Unavailable` when the
    /// broker is unreachable or too slow: the batch, or part of it, is lost.
    async fn publish(&self, batch: &[(Topic, Bytes)]) -> Result<()>;

    /// Whether the broker is reachable and every subscription is active.
    fn is_connected(&self) -> bool;

    /// Stops receiving and closes the connection. Called once at shutdown.
    async fn stop(&self) {}
}

/// Connects the [`LocalBroker`]s made from it: engines in one process that
/// act as one server, as processes on a real broker do. It can also play a
/// broker outage ([`LocalBus::set_available`]), which is what the engine's
/// cluster tests use it for.
#[derive(Debug, Clone, Default)]
pub struct LocalBus {
    state: Arc<Mutex<BusState>>,
}

#[derive(Debug, Default)]
struct BusState {
    nodes: Vec<Weak<LocalNode>>,
    down: bool,
    /// Publications to rooms' topics still to lose without telling anyone.
    lose: usize,
}

impl LocalBus {
    /// A bus with no brokers on it yet.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BusState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A broker for one more engine on this bus.
    pub fn broker(&self) -> LocalBroker {
        let node = Arc::new(LocalNode::default());
        let mut state = self.lock();
        state.nodes.retain(|n| n.strong_count() > 0);
        state.nodes.push(Arc::downgrade(&node));
        LocalBroker { bus: self.clone(), node }
    }

    /// Plays an outage (`false`) and the return (`true`): while down, every
    /// publish fails and is lost, and subscribing fails (the topics are kept);
    /// on return every started broker's sink hears
    /// [`BrokerSink::resubscribed`].
    pub fn set_available(&self, available: bool) {
        let nodes: Vec<Arc<LocalNode>> = {
            let mut state = self.lock();
            let was_down = std::mem::replace(&mut state.down, !available);
            if !(was_down && available) {
                return;
            }
            state.nodes.iter().filter_map(Weak::upgrade).collect()
        };
        for node in nodes {
            node.up.store(true, Ordering::SeqCst);
            if let Some(sink) = node.sink.get() {
                sink.resubscribed();
            }
        }
    }

    /// Plays a broker that silently loses the next `publications` to rooms'
    /// topics (to every receiver), as pub/sub may: nobody is told, and only
    /// the engine's own checks can find out.
    pub fn lose_room_publications(&self, publications: usize) {
        self.lock().lose = publications;
    }

    fn is_down(&self) -> bool {
        self.lock().down
    }
}

#[derive(Default)]
struct LocalNode {
    sink: OnceLock<Arc<dyn BrokerSink>>,
    topics: Mutex<HashSet<Topic>>,
    /// Whether the node's subscriptions are active (false after an outage
    /// until the bus is back).
    up: AtomicBool,
    stopped: AtomicBool,
}

impl std::fmt::Debug for LocalNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalNode").field("started", &self.sink.get().is_some()).finish_non_exhaustive()
    }
}

impl LocalNode {
    fn topics(&self) -> std::sync::MutexGuard<'_, HashSet<Topic>> {
        self.topics.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One engine's broker on a [`LocalBus`]. Publishing hands the payload to
/// the other engines on the bus that subscribed to its topic, at once and in
/// call order.
#[derive(Debug)]
pub struct LocalBroker {
    bus: LocalBus,
    node: Arc<LocalNode>,
}

impl LocalBroker {
    fn unavailable() -> Error {
        Error::unavailable("the local bus is down")
    }
}

#[async_trait]
impl Broker for LocalBroker {
    async fn start(&self, sink: Arc<dyn BrokerSink>) -> Result<()> {
        self.node.sink.set(sink).map_err(|_| Error::conflict("the broker was started twice"))?;
        self.node.topics().insert(Topic::Cluster);
        self.node.up.store(!self.bus.is_down(), Ordering::SeqCst);
        Ok(())
    }

    async fn subscribe(&self, topics: &[Topic]) -> Result<()> {
        self.node.topics().extend(topics.iter().cloned());
        if self.bus.is_down() {
            self.node.up.store(false, Ordering::SeqCst);
            return Err(Self::unavailable());
        }
        Ok(())
    }

    async fn unsubscribe(&self, topics: &[Topic]) -> Result<()> {
        let mut mine = self.node.topics();
        for topic in topics {
            mine.remove(topic);
        }
        Ok(())
    }

    async fn publish(&self, batch: &[(Topic, Bytes)]) -> Result<()> {
        if self.node.stopped.load(Ordering::SeqCst) {
            return Err(Error::unavailable("the broker was stopped"));
        }
        let others: Vec<Arc<LocalNode>> = {
            let state = self.bus.lock();
            if state.down {
                self.node.up.store(false, Ordering::SeqCst);
                return Err(Self::unavailable());
            }
            state
                .nodes
                .iter()
                .filter_map(Weak::upgrade)
                .filter(|n| !Arc::ptr_eq(n, &self.node) && !n.stopped.load(Ordering::SeqCst))
                .collect()
        };
        for (topic, payload) in batch {
            if matches!(topic, Topic::Room(_)) {
                let mut state = self.bus.lock();
                if state.lose > 0 {
                    state.lose -= 1;
                    continue;
                }
            }
            for node in &others {
                if !node.topics().contains(topic) {
                    continue;
                }
                if let Some(sink) = node.sink.get() {
                    sink.receive(payload.clone());
                }
            }
        }
        Ok(())
    }

    fn is_connected(&self) -> bool {
        self.node.up.load(Ordering::SeqCst) && !self.bus.is_down()
    }

    async fn stop(&self) {
        self.node.stopped.store(true, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_are_safe_subjects() {
        let user = UserId::new("visitor:a b.*>é").expect("valid");
        let name = Topic::User(user).name();
        assert!(name.starts_with("user."));
        assert!(name[5..].bytes().all(|b| b.is_ascii_hexdigit()), "{name}");
        assert_eq!(Topic::Cluster.name(), "cluster");
        let room = RoomId::generate();
        assert_eq!(Topic::Room(room).name(), format!("room.{room}"));
    }
}

//! The registry of this node's sessions and the rooms they joined, and the
//! delivery of fan-outs to them.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::task::Waker;
use std::time::Instant;

use futures_util::task::AtomicWaker;
use tokio::sync::Notify;

use crate::broker::{Audience, Fanout};
use crate::event::{Delivery, Event};
use crate::id::{RoomId, SessionId, UserId};
use crate::metrics::Metrics;
use crate::user::User;

/// Why the engine ends a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CloseReason {
    /// The server is shutting down; the client should reconnect and resume.
    Shutdown,
    /// The session's outbound queue filled up: the client could not keep up.
    SlowConsumer,
    /// The session's credentials expired.
    TokenExpired,
    /// The client kept sending frames that are not valid commands.
    Abuse,
    /// The user's access was ended (deactivated, or their tokens revoked),
    /// on this process or another.
    Revoked,
}

impl CloseReason {
    /// A short text for the close frame.
    pub fn message(self) -> &'static str {
        match self {
            CloseReason::Shutdown => "server shutting down",
            CloseReason::SlowConsumer => "slow consumer: events could not be delivered fast enough",
            CloseReason::TokenExpired => "token expired",
            CloseReason::Abuse => "too many invalid frames",
            CloseReason::Revoked => "access revoked",
        }
    }
}

/// State shared between a session's owner and the engine, which may need to
/// end the session from another task (a fan-out finding its queue full, a
/// shutdown).
#[derive(Debug)]
pub(crate) struct SessionShared {
    pub(crate) id: SessionId,
    /// The session's user, shared with the session and with presence.
    pub(crate) user: Arc<User>,
    /// Set once; the first reason wins. The owner polls `killed` and then reads it.
    close: OnceLock<CloseReason>,
    /// Wakes everyone waiting in `killed` when `close` is set.
    killed: Notify,
    /// Events fanned out to the session and not yet taken by its owner.
    mailbox: Mailbox,
    /// The owner's task, woken by a new event and by the kill.
    owner: AtomicWaker,
    /// Set by the keepalive task, taken by the owner.
    keepalive: AtomicBool,
}

impl SessionShared {
    pub(crate) fn new(id: SessionId, user: Arc<User>, queue_limit: usize) -> Self {
        SessionShared {
            id,
            user,
            close: OnceLock::new(),
            killed: Notify::new(),
            mailbox: Mailbox::new(queue_limit),
            owner: AtomicWaker::new(),
            keepalive: AtomicBool::new(false),
        }
    }

    pub(crate) fn user_id(&self) -> &UserId {
        &self.user.id
    }

    pub(crate) fn kill(&self, reason: CloseReason) {
        if self.close.set(reason).is_ok() {
            self.killed.notify_waiters();
            self.owner.wake();
        }
    }

    pub(crate) fn close_reason(&self) -> Option<CloseReason> {
        self.close.get().copied()
    }

    /// Resolves once the session is killed (at once if it already is). The
    /// waiter registers before checking the flag, so a kill in between is not
    /// missed.
    pub(crate) async fn killed(&self) {
        let notified = self.killed.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if self.close.get().is_some() {
            return;
        }
        notified.await
    }

    /// Marks a keepalive beat for the owner and wakes it.
    fn beat(&self) {
        self.keepalive.store(true, Ordering::Relaxed);
        self.owner.wake();
    }

    /// Whether a keepalive beat is waiting; takes it.
    pub(crate) fn take_keepalive(&self) -> bool {
        self.keepalive.swap(false, Ordering::Relaxed)
    }

    /// Registers the owner's task, to be woken by the next event or the
    /// kill. Called before looking at either, so that none is missed.
    pub(crate) fn register_owner(&self, waker: &Waker) {
        self.owner.register(waker);
    }

    /// The oldest event waiting for the owner.
    pub(crate) fn take_event(&self) -> Option<Arc<Delivery>> {
        self.mailbox.pop()
    }

    /// Queues an event for the owner and wakes it; `false`, queueing
    /// nothing, when the queue is at its limit.
    fn offer(&self, delivery: &Arc<Delivery>) -> bool {
        if !self.mailbox.push(delivery) {
            return false;
        }
        self.owner.wake();
        true
    }
}

/// A session's queue of fanned-out events, bounded by the outbound queue
/// limit.
///
/// Unlike a channel it allocates nothing until the first event and gives its
/// memory back once drained, so an idle session costs a few words, and a
/// session that is sent to keeps at most [`Mailbox::KEEP`] slots between
/// bursts.
#[derive(Debug)]
struct Mailbox {
    queue: Mutex<VecDeque<Arc<Delivery>>>,
    limit: usize,
}

impl Mailbox {
    /// Slots a drained queue may keep for the next burst.
    const KEEP: usize = 16;

    fn new(limit: usize) -> Self {
        Mailbox { queue: Mutex::new(VecDeque::new()), limit: limit.max(1) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Arc<Delivery>>> {
        // A push or pop cannot leave the queue half-changed, so poison is ignored.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn push(&self, delivery: &Arc<Delivery>) -> bool {
        let mut queue = self.lock();
        if queue.len() >= self.limit {
            return false;
        }
        queue.push_back(delivery.clone());
        true
    }

    fn pop(&self) -> Option<Arc<Delivery>> {
        let mut queue = self.lock();
        let next = queue.pop_front();
        if queue.is_empty() && queue.capacity() > Self::KEEP {
            queue.shrink_to(Self::KEEP);
        }
        next
    }
}

struct Entry {
    shared: Arc<SessionShared>,
    /// The rooms the session joined; made with the first. An empty set still
    /// takes its room in every slot of `State::sessions`, so this holds a
    /// pointer instead.
    #[expect(clippy::box_collection, reason = "a pointer, not a set's 48 bytes, in every slot of the map")]
    rooms: Option<Box<HashSet<RoomId>>>,
}

impl Entry {
    fn rooms(&self) -> impl Iterator<Item = &RoomId> {
        self.rooms.iter().flat_map(|rooms| rooms.iter())
    }
}

#[derive(Default)]
struct State {
    sessions: HashMap<SessionId, Entry>,
    users: HashMap<UserId, Vec<SessionId>>,
    rooms: HashMap<RoomId, HashSet<SessionId>>,
    /// Closed rooms among those with local subscribers. A session joined to
    /// a room sends without a store read, so this is how such a send learns
    /// early that the room was closed (the commit checks again): marked when
    /// a join reads a closed room and when a close is applied, here or on
    /// another process. Forgotten with the room's last subscriber, so it
    /// stays as small as `rooms`.
    closed: HashSet<RoomId>,
}

impl State {
    /// Unsubscribes one session from a room; whether that was the room's
    /// last local subscriber.
    fn unsubscribe(&mut self, session: SessionId, room: RoomId) -> bool {
        if let Some(rooms) = self.sessions.get_mut(&session).and_then(|e| e.rooms.as_mut()) {
            rooms.remove(&room);
        }
        if let Some(set) = self.rooms.get_mut(&room) {
            set.remove(&session);
            if set.is_empty() {
                self.rooms.remove(&room);
                self.closed.remove(&room);
                return true;
            }
        }
        false
    }

    /// Unsubscribes every session of a user from a room; whether that left
    /// the room with no local subscriber.
    fn unsubscribe_user(&mut self, user: &UserId, room: RoomId) -> bool {
        let Some(ids) = self.users.get(user).cloned() else { return false };
        let mut emptied = false;
        for id in ids {
            emptied |= self.unsubscribe(id, room);
        }
        emptied
    }
}

/// Local sessions. Reads (fan-out) take a shared lock and never await.
pub(crate) struct Hub {
    state: RwLock<State>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub").field("sessions", &self.read().sessions.len()).finish()
    }
}

impl Hub {
    pub(crate) fn new(metrics: Arc<Metrics>) -> Self {
        Hub { state: RwLock::default(), metrics }
    }

    fn read(&self) -> RwLockReadGuard<'_, State> {
        // No code path leaves the maps inconsistent on panic, so poison is ignored.
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a session unless its user is at the connection limit. Returns
    /// whether it is the user's first session on this node.
    pub(crate) fn register(&self, shared: Arc<SessionShared>, max_per_user: usize) -> Result<bool, ()> {
        let mut state = self.write();
        let sessions = state.users.entry(shared.user_id().clone()).or_default();
        if sessions.len() >= max_per_user {
            return Err(());
        }
        // Most users have one session: room for one, not the four a first
        // push would make.
        if sessions.is_empty() {
            sessions.reserve_exact(1);
        }
        sessions.push(shared.id);
        let first = sessions.len() == 1;
        state.sessions.insert(shared.id, Entry { shared, rooms: None });
        Ok(first)
    }

    /// Forgets a session. Returns whether it was the user's last one here,
    /// and the rooms it was the last local subscriber of.
    pub(crate) fn unregister(&self, id: SessionId) -> (bool, Vec<RoomId>) {
        let mut state = self.write();
        let Some(entry) = state.sessions.remove(&id) else {
            return (false, Vec::new());
        };
        let mut emptied = Vec::new();
        for room in entry.rooms() {
            if state.unsubscribe(id, *room) {
                emptied.push(*room);
            }
        }
        let user = entry.shared.user_id();
        let mut last = false;
        if let Some(list) = state.users.get_mut(user) {
            list.retain(|s| *s != id);
            if list.is_empty() {
                state.users.remove(user);
                last = true;
            }
        }
        (last, emptied)
    }

    /// Subscribes a session to a room's events; whether it is the room's
    /// first local subscriber.
    pub(crate) fn subscribe(&self, session: SessionId, room: RoomId) -> bool {
        let mut state = self.write();
        let State { sessions, rooms, .. } = &mut *state;
        let Some(entry) = sessions.get_mut(&session) else { return false };
        entry.rooms.get_or_insert_with(Box::default).insert(room);
        let subscribers = rooms.entry(room).or_default();
        subscribers.insert(session);
        subscribers.len() == 1
    }

    /// Unsubscribes every session of a user from a room (they left it);
    /// whether that left the room with no local subscriber.
    pub(crate) fn unsubscribe_user(&self, user: &UserId, room: RoomId) -> bool {
        self.write().unsubscribe_user(user, room)
    }

    /// The user is no longer a member of the room: every session of theirs
    /// here is unsubscribed from it and gets `room:removed`. Returns whether
    /// the room was left with no local subscriber.
    pub(crate) fn remove_member(&self, user: &UserId, room: RoomId) -> bool {
        let emptied = self.write().unsubscribe_user(user, room);
        let event = Event::RoomRemoved(crate::event::RoomRemoved { room_id: room });
        self.deliver(Fanout { audience: Audience::Users { users: vec![user.clone()], except_session: None }, event });
        emptied
    }

    /// Unsubscribes one session from a room; whether that left the room
    /// with no local subscriber.
    pub(crate) fn unsubscribe_session(&self, session: SessionId, room: RoomId) -> bool {
        self.write().unsubscribe(session, room)
    }

    /// Whether any session here needs a topic's publications.
    pub(crate) fn wants(&self, topic: &crate::broker::Topic) -> bool {
        use crate::broker::Topic;
        let state = self.read();
        match topic {
            Topic::Room(room) => state.rooms.contains_key(room),
            Topic::User(user) => state.users.contains_key(user),
            _ => true,
        }
    }

    /// Whether any session here joined the room.
    pub(crate) fn serves_room(&self, room: RoomId) -> bool {
        self.read().rooms.contains_key(&room)
    }

    /// Remembers that a room with local subscribers is closed.
    pub(crate) fn mark_closed(&self, room: RoomId) {
        let mut state = self.write();
        if state.rooms.contains_key(&room) {
            state.closed.insert(room);
        }
    }

    /// Whether a room with local subscribers is known to be closed.
    pub(crate) fn is_closed(&self, room: RoomId) -> bool {
        self.read().closed.contains(&room)
    }

    pub(crate) fn is_subscribed(&self, session: SessionId, room: RoomId) -> bool {
        self.read().sessions.get(&session).and_then(|e| e.rooms.as_ref()).is_some_and(|rooms| rooms.contains(&room))
    }

    /// Whether the session is open here.
    pub(crate) fn has_session(&self, session: SessionId) -> bool {
        self.read().sessions.contains_key(&session)
    }

    pub(crate) fn session_count(&self) -> usize {
        self.read().sessions.len()
    }

    /// Gives each of these sessions a keepalive beat; whether each is still here.
    pub(crate) fn beat(&self, sessions: &[SessionId]) -> Vec<bool> {
        let state = self.read();
        sessions
            .iter()
            .map(|id| match state.sessions.get(id) {
                Some(entry) => {
                    entry.shared.beat();
                    true
                }
                None => false,
            })
            .collect()
    }

    /// Ends one session, if it is still here.
    pub(crate) fn kill(&self, session: SessionId, reason: CloseReason) {
        if let Some(entry) = self.read().sessions.get(&session) {
            entry.shared.kill(reason);
        }
    }

    /// Ends every session of a user here.
    pub(crate) fn kill_user(&self, user: &UserId, reason: CloseReason) {
        let state = self.read();
        for id in state.users.get(user).into_iter().flatten() {
            if let Some(entry) = state.sessions.get(id) {
                entry.shared.kill(reason);
            }
        }
    }

    pub(crate) fn kill_all(&self, reason: CloseReason) {
        for entry in self.read().sessions.values() {
            entry.shared.kill(reason);
        }
    }

    /// Queues the delivery to one session; whether it was queued.
    fn offer(&self, entry: &Entry, delivery: &Arc<Delivery>) -> bool {
        if entry.shared.offer(delivery) {
            return true;
        }
        tracing::debug!(session = %entry.shared.id, user = %entry.shared.user_id(), "outbound queue full, closing slow consumer");
        if entry.shared.close_reason().is_none() {
            self.metrics.slow_consumer();
        }
        entry.shared.kill(CloseReason::SlowConsumer);
        false
    }

    /// Delivers one fan-out to its local audience. The event is wrapped once
    /// and shared by every recipient.
    pub(crate) fn deliver(&self, fanout: Fanout) {
        let started = Instant::now();
        let name = fanout.event.name();
        let delivery = Arc::new(Delivery::new(fanout.event));
        let mut queued = 0u64;
        self.deliver_to(&fanout.audience, &delivery, &mut queued);
        self.metrics.fanout(name, queued, started.elapsed());
    }

    fn deliver_to(&self, audience: &Audience, delivery: &Arc<Delivery>, queued: &mut u64) {
        let state = self.read();
        match audience {
            Audience::Room { room_id, except_session, except_user } => {
                let Some(ids) = state.rooms.get(room_id) else { return };
                for id in ids {
                    if Some(*id) == *except_session {
                        continue;
                    }
                    let Some(entry) = state.sessions.get(id) else { continue };
                    if except_user.as_ref() == Some(entry.shared.user_id()) {
                        continue;
                    }
                    *queued += u64::from(self.offer(entry, delivery));
                }
            }
            Audience::Session { user_id, session_id } => {
                if let Some(entry) = state.sessions.get(session_id).filter(|e| e.shared.user_id() == user_id) {
                    *queued += u64::from(self.offer(entry, delivery));
                }
            }
            Audience::Users { users, except_session } => {
                for user in users {
                    for id in state.users.get(user).into_iter().flatten() {
                        if Some(*id) == *except_session {
                            continue;
                        }
                        if let Some(entry) = state.sessions.get(id) {
                            *queued += u64::from(self.offer(entry, delivery));
                        }
                    }
                }
            }
        }
    }
}

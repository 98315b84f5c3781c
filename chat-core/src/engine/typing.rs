//! Typing indicators that end by themselves.
//!
//! Every `typing:start` (re)arms a deadline `timeout` later. All deadlines have
//! the same length, so they are created in deadline order and a FIFO queue is
//! enough: one task sleeps until the oldest, and an entry whose generation no
//! longer matches (re-armed or stopped since) is skipped.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::id::{RoomId, UserId};

type Key = (RoomId, UserId);

#[derive(Default)]
struct State {
    active: HashMap<Key, u64>,
    queue: VecDeque<(Instant, Key, u64)>,
    next_gen: u64,
}

pub(crate) struct TypingTracker {
    state: Mutex<State>,
    timeout: Duration,
    pub(crate) wake: Notify,
}

impl std::fmt::Debug for TypingTracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TypingTracker").field("timeout", &self.timeout).finish_non_exhaustive()
    }
}

impl TypingTracker {
    pub(crate) fn new(timeout: Duration) -> Self {
        TypingTracker { state: Mutex::default(), timeout, wake: Notify::new() }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts or re-arms typing. Returns `true` when the user was not typing.
    pub(crate) fn start(&self, room: RoomId, user: &UserId) -> bool {
        let mut s = self.lock();
        s.next_gen += 1;
        let generation = s.next_gen;
        let key = (room, user.clone());
        let was_idle = s.active.insert(key.clone(), generation).is_none();
        let deadline = Instant::now() + self.timeout;
        let was_empty = s.queue.is_empty();
        s.queue.push_back((deadline, key, generation));
        drop(s);
        if was_empty {
            self.wake.notify_one();
        }
        was_idle
    }

    /// Stops typing. Returns `true` when the user was typing.
    pub(crate) fn stop(&self, room: RoomId, user: &UserId) -> bool {
        // The queued deadline stays and is skipped when it comes due.
        self.lock().active.remove(&(room, user.clone())).is_some()
    }

    /// Stops every indicator of a user (their last session closed).
    pub(crate) fn stop_user(&self, user: &UserId) -> Vec<RoomId> {
        let mut s = self.lock();
        let rooms: Vec<RoomId> = s.active.keys().filter(|(_, u)| u == user).map(|(r, _)| *r).collect();
        for room in &rooms {
            s.active.remove(&(*room, user.clone()));
        }
        rooms
    }

    /// The oldest pending deadline.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.lock().queue.front().map(|(d, _, _)| *d)
    }

    /// Removes and returns the indicators whose deadline has passed.
    pub(crate) fn expire(&self, now: Instant) -> Vec<Key> {
        let mut s = self.lock();
        let mut out = Vec::new();
        while let Some((deadline, _, _)) = s.queue.front() {
            if *deadline > now {
                break;
            }
            let Some((_, key, generation)) = s.queue.pop_front() else { break };
            if s.active.get(&key) == Some(&generation) {
                s.active.remove(&key);
                out.push(key);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn typing_ends_six_seconds_after_the_last_start() {
        let t = TypingTracker::new(Duration::from_secs(6));
        let room = RoomId::generate();
        let u = UserId::new("u").expect("valid");
        assert!(t.start(room, &u));
        tokio::time::advance(Duration::from_secs(4)).await;
        assert!(!t.start(room, &u), "a repeated start re-arms without a new event");
        tokio::time::advance(Duration::from_secs(3)).await;
        assert!(t.expire(Instant::now()).is_empty(), "the first deadline was superseded");
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(t.expire(Instant::now()), vec![(room, u.clone())]);
        assert!(!t.stop(room, &u));
    }

    #[tokio::test(start_paused = true)]
    async fn stop_cancels_the_deadline() {
        let t = TypingTracker::new(Duration::from_secs(6));
        let room = RoomId::generate();
        let u = UserId::new("u").expect("valid");
        t.start(room, &u);
        assert!(t.stop(room, &u));
        tokio::time::advance(Duration::from_secs(7)).await;
        assert!(t.expire(Instant::now()).is_empty());
        assert!(t.next_deadline().is_none());
    }
}

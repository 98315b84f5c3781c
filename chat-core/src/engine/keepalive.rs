//! The keepalive beat of every session, kept by one task.
//!
//! Every interval, each session yields [`Output::Keepalive`](super::Output)
//! once, so that its transport can check on the client (a WebSocket ping, an
//! idle timeout) without a timer per connection: with tens of thousands of
//! idle connections those timers were a good part of each one's memory. All
//! intervals are the same, so sessions are due in the order they were added,
//! and a FIFO queue that the task sleeps on is enough. A session's beat falls
//! an interval after it opened, which spreads the beats of a server's
//! sessions as their connections were spread.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::id::SessionId;

#[derive(Debug)]
pub(crate) struct KeepaliveQueue {
    interval: Duration,
    /// Sessions in the order they are due. A closed session leaves its entry
    /// until it is due, and is dropped then.
    due: Mutex<VecDeque<(Instant, SessionId)>>,
    /// Wakes the task when the queue was empty.
    pub(crate) wake: Notify,
}

impl KeepaliveQueue {
    pub(crate) fn new(interval: Duration) -> Self {
        KeepaliveQueue { interval, due: Mutex::new(VecDeque::new()), wake: Notify::new() }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<(Instant, SessionId)>> {
        // A push or pop cannot leave the queue half-changed, so poison is ignored.
        self.due.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether sessions get a keepalive beat at all.
    pub(crate) fn enabled(&self) -> bool {
        !self.interval.is_zero()
    }

    /// Starts the beat of a session opened now.
    pub(crate) fn add(&self, session: SessionId) {
        if !self.enabled() {
            return;
        }
        let mut due = self.lock();
        let was_empty = due.is_empty();
        due.push_back((Instant::now() + self.interval, session));
        drop(due);
        if was_empty {
            self.wake.notify_one();
        }
    }

    /// Takes the sessions due at `now`, and when the next one is. `beat`
    /// gives each its keepalive and says whether it is still open; an open
    /// one is due again an interval later.
    pub(crate) fn take_due(&self, now: Instant, mut beat: impl FnMut(&[SessionId]) -> Vec<bool>) -> Option<Instant> {
        let mut due = self.lock();
        let ready = due.iter().take_while(|(at, _)| *at <= now).count();
        if ready > 0 {
            let sessions: Vec<SessionId> = due.drain(..ready).map(|(_, id)| id).collect();
            let open = beat(&sessions);
            let next = now + self.interval;
            due.extend(sessions.into_iter().zip(open).filter(|(_, open)| *open).map(|(id, _)| (next, id)));
            // Give back the room a storm of short-lived sessions took.
            if due.capacity() > 64 && due.len() < due.capacity() / 4 {
                let keep = (due.len() * 2).max(64);
                due.shrink_to(keep);
            }
        }
        due.front().map(|(at, _)| *at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn sessions_beat_every_interval_in_order_until_closed() {
        let queue = KeepaliveQueue::new(Duration::from_secs(10));
        let start = Instant::now();
        let (a, b) = (SessionId::generate(), SessionId::generate());
        queue.add(a);
        tokio::time::advance(Duration::from_secs(3)).await;
        queue.add(b);

        let mut beats = Vec::new();
        let mut beat = |ids: &[SessionId]| {
            beats.extend_from_slice(ids);
            ids.iter().map(|id| *id == a).collect() // b closed after its first beat
        };
        assert_eq!(queue.take_due(start + Duration::from_secs(9), &mut beat), Some(start + Duration::from_secs(10)));
        assert_eq!(queue.take_due(start + Duration::from_secs(10), &mut beat), Some(start + Duration::from_secs(13)));
        assert_eq!(queue.take_due(start + Duration::from_secs(13), &mut beat), Some(start + Duration::from_secs(20)));
        assert_eq!(queue.take_due(start + Duration::from_secs(23), &mut beat), Some(start + Duration::from_secs(33)));
        assert_eq!(beats, vec![a, b, a]);
    }

    #[test]
    fn a_zero_interval_turns_beats_off() {
        let queue = KeepaliveQueue::new(Duration::ZERO);
        queue.add(SessionId::generate());
        assert_eq!(queue.take_due(Instant::now() + Duration::from_secs(60), |ids| vec![true; ids.len()]), None);
    }
}

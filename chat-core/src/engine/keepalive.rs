//! The keepalive beat of every session, kept by one task.
//!
//! Every interval, each session yields [`Output::Keepalive`](super::Output)
//! once, so that its transport can check on the client (a WebSocket ping, an
//! idle timeout) without a timer per connection: with tens of thousands of
//! idle connections those timers were a good part of each one's memory. All
//! intervals are the same, so sessions are due in the order they were added,
//! and a FIFO queue that the task sleeps on is enough. Sessions due within
//! [`GRAIN`] of each other share one entry, so that each costs the 16 bytes
//! of its id. A session's beat falls an interval after it opened, which
//! spreads the beats of a server's sessions as their connections were spread.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::id::SessionId;

/// How far apart the beats of sessions sharing an entry may fall.
const GRAIN: Duration = Duration::from_millis(100);

#[derive(Debug)]
pub(crate) struct KeepaliveQueue {
    interval: Duration,
    /// Sessions by when they are due, oldest first. A closed session stays
    /// until it is due, and is dropped then.
    due: Mutex<VecDeque<(Instant, Vec<SessionId>)>>,
    /// Wakes the task when the queue was empty.
    pub(crate) wake: Notify,
}

impl KeepaliveQueue {
    pub(crate) fn new(interval: Duration) -> Self {
        KeepaliveQueue { interval, due: Mutex::new(VecDeque::new()), wake: Notify::new() }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<(Instant, Vec<SessionId>)>> {
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
        let at = Instant::now() + self.interval;
        let mut due = self.lock();
        let was_empty = due.is_empty();
        match due.back_mut() {
            Some((last, sessions)) if at.duration_since(*last) < GRAIN => sessions.push(session),
            _ => due.push_back((at, vec![session])),
        }
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
            let sessions: Vec<SessionId> = due.drain(..ready).flat_map(|(_, ids)| ids).collect();
            let open = beat(&sessions);
            let again: Vec<SessionId> =
                sessions.into_iter().zip(open).filter(|(_, open)| *open).map(|(id, _)| id).collect();
            if !again.is_empty() {
                // Every entry left was added before now, so is due no later.
                due.push_back((now + self.interval, again));
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

    #[tokio::test(start_paused = true)]
    async fn sessions_due_close_together_share_an_entry() {
        let queue = KeepaliveQueue::new(Duration::from_secs(10));
        let start = Instant::now();
        let ids: Vec<SessionId> = (0..3).map(|_| SessionId::generate()).collect();
        queue.add(ids[0]);
        tokio::time::advance(GRAIN / 2).await;
        queue.add(ids[1]);
        tokio::time::advance(GRAIN).await;
        queue.add(ids[2]);
        assert_eq!(queue.lock().len(), 2, "the first two share an entry");

        let mut beats = Vec::new();
        let next = queue.take_due(start + Duration::from_secs(10) + GRAIN, |ids| {
            beats.extend_from_slice(ids);
            vec![true; ids.len()]
        });
        assert_eq!(beats, ids[..2]);
        assert_eq!(next, Some(start + Duration::from_secs(10) + GRAIN + GRAIN / 2));
        assert_eq!(queue.lock().len(), 2, "the third, then the first two again");
    }

    #[test]
    fn a_zero_interval_turns_beats_off() {
        let queue = KeepaliveQueue::new(Duration::ZERO);
        queue.add(SessionId::generate());
        assert_eq!(queue.take_due(Instant::now() + Duration::from_secs(60), |ids| vec![true; ids.len()]), None);
    }
}

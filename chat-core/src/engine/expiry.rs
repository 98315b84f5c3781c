//! Sessions whose credentials expire, ended by one task.
//!
//! Every session opened with an expiring identity leaves its deadline here;
//! one task sleeps until the earliest and ends the sessions that are due.
//! Sessions need no timer of their own, which matters at tens of thousands of
//! idle connections: a timer is a tokio allocation per session, and an entry
//! here is a few words in an ordered set.

use std::collections::BTreeSet;
use std::sync::Mutex;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::id::SessionId;

#[derive(Debug, Default)]
pub(crate) struct ExpiryQueue {
    deadlines: Mutex<BTreeSet<(Instant, SessionId)>>,
    /// Wakes the task when a deadline earlier than all others arrives.
    pub(crate) wake: Notify,
}

impl ExpiryQueue {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeSet<(Instant, SessionId)>> {
        // An insert or remove cannot leave the set half-changed, so poison is ignored.
        self.deadlines.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Ends `session` at `at` unless it is removed first.
    pub(crate) fn add(&self, at: Instant, session: SessionId) {
        let mut deadlines = self.lock();
        let earliest = deadlines.first().is_none_or(|(first, _)| at < *first);
        deadlines.insert((at, session));
        drop(deadlines);
        if earliest {
            self.wake.notify_one();
        }
    }

    /// Forgets a session's deadline (it closed first).
    pub(crate) fn remove(&self, at: Instant, session: SessionId) {
        self.lock().remove(&(at, session));
    }

    /// Takes the sessions due at `now`, and the next deadline after them.
    pub(crate) fn take_due(&self, now: Instant) -> (Vec<SessionId>, Option<Instant>) {
        let mut deadlines = self.lock();
        let mut due = Vec::new();
        while let Some(&(at, session)) = deadlines.first() {
            if at > now {
                return (due, Some(at));
            }
            deadlines.pop_first();
            due.push(session);
        }
        (due, None)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn due_sessions_come_out_in_deadline_order_and_removed_ones_never() {
        let queue = ExpiryQueue::default();
        let now = Instant::now();
        let (a, b, c) = (SessionId::generate(), SessionId::generate(), SessionId::generate());
        queue.add(now + Duration::from_secs(3), a);
        queue.add(now + Duration::from_secs(1), b);
        queue.add(now + Duration::from_secs(2), c);
        queue.remove(now + Duration::from_secs(2), c);

        assert_eq!(queue.take_due(now), (vec![], Some(now + Duration::from_secs(1))));
        assert_eq!(queue.take_due(now + Duration::from_secs(5)), (vec![b, a], None));
        assert_eq!(queue.len(), 0);
    }

    #[tokio::test]
    async fn an_earlier_deadline_wakes_the_task() {
        let queue = ExpiryQueue::default();
        let now = Instant::now();
        queue.add(now + Duration::from_secs(10), SessionId::generate());
        // The first deadline leaves a wake-up for the task.
        queue.wake.notified().await;
        queue.add(now + Duration::from_secs(20), SessionId::generate());
        let later = tokio::time::timeout(Duration::from_millis(20), queue.wake.notified()).await;
        assert!(later.is_err(), "a later deadline needs no wake-up");
        queue.add(now + Duration::from_secs(5), SessionId::generate());
        tokio::time::timeout(Duration::from_secs(1), queue.wake.notified()).await.expect("woken");
    }
}

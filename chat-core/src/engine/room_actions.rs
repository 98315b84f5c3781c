//! The per-user limit on adding others to rooms (`room:create` and
//! `room:invite`), so that nobody can fill other users' room lists faster than
//! [`Limits::room_actions_per_minute`](crate::Limits::room_actions_per_minute).
//!
//! A token bucket per user, shared by all of that user's sessions on this
//! process. The map holds only users who acted within the last minute: a
//! bucket that has refilled completely says nothing a new one would not, so
//! it is dropped when the map is swept.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::id::UserId;

/// Per-user token buckets.
#[derive(Debug, Default)]
pub(crate) struct RoomActionLimiter {
    buckets: Mutex<Buckets>,
}

#[derive(Debug, Default)]
struct Buckets {
    by_user: HashMap<UserId, (f64, Instant)>,
    /// The map's size at which the next sweep runs: twice what the last sweep
    /// left, so sweeping costs O(1) per insert, amortized.
    sweep_at: usize,
}

const REFILL: Duration = Duration::from_secs(60);

impl RoomActionLimiter {
    /// Takes one action from the user's bucket of `per_minute`; `false` when
    /// it is empty. Zero means no limit.
    pub(crate) fn take(&self, user: &UserId, per_minute: u32) -> bool {
        self.take_at(user, per_minute, Instant::now())
    }

    fn take_at(&self, user: &UserId, per_minute: u32, now: Instant) -> bool {
        if per_minute == 0 {
            return true;
        }
        let capacity = f64::from(per_minute);
        let rate = capacity / REFILL.as_secs_f64();
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.by_user.len() >= buckets.sweep_at.max(1024) {
            buckets.by_user.retain(|_, (_, last)| now.saturating_duration_since(*last) < REFILL);
            buckets.sweep_at = buckets.by_user.len() * 2;
        }
        let (tokens, last) = buckets.by_user.entry(user.clone()).or_insert((capacity, now));
        *tokens = (*tokens + now.saturating_duration_since(*last).as_secs_f64() * rate).min(capacity);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.buckets.lock().unwrap_or_else(|e| e.into_inner()).by_user.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uid(s: &str) -> UserId {
        UserId::new(s).expect("a valid user id")
    }

    #[test]
    fn a_user_gets_the_limit_then_one_more_per_refill_step() {
        let limiter = RoomActionLimiter::default();
        let start = Instant::now();
        let ann = uid("ann");
        let taken = (0..40).filter(|_| limiter.take_at(&ann, 30, start)).count();
        assert_eq!(taken, 30, "a burst takes the minute's allowance and no more");
        assert!(limiter.take_at(&uid("bob"), 30, start), "another user has their own bucket");
        assert!(!limiter.take_at(&ann, 30, start + Duration::from_secs(1)), "1 s refills half an action");
        assert!(limiter.take_at(&ann, 30, start + Duration::from_secs(3)), "2 s refill one");
        assert!(limiter.take_at(&uid("zed"), 0, start), "zero means no limit");
    }

    #[test]
    fn users_idle_for_a_minute_are_swept() {
        let limiter = RoomActionLimiter::default();
        let start = Instant::now();
        for i in 0..1024 {
            limiter.take_at(&uid(&format!("u{i}")), 30, start);
        }
        assert_eq!(limiter.len(), 1024);
        limiter.take_at(&uid("late"), 30, start + REFILL);
        assert_eq!(limiter.len(), 1, "only the user who acted within the minute is kept");
    }
}

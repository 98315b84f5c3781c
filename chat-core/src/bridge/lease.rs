//! [`Lease`]: one process's side of a bridge's lease in its [`BridgeStore`].
//!
//! A bridge configured in several processes on one database lets one of
//! them talk to the remote platform. Each process asks for the lease every
//! [`Lease::renew_every`] (the holder's asking is a renewal); the store
//! grants it to one. The holder must stop acting before another may take
//! over: it counts the lease as running out `renew_every` before its end,
//! measured from when it last asked, so that a process that stalls (a paused
//! VM, a lost database) never acts on a lease another holds.
//! [`Lease::keep`] is that loop, for a bridge's [`Leader`].

use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use super::BridgeStore;
use crate::error::Result;
use crate::time::Timestamp;

/// The work a bridge does only while it holds its lease, as
/// [`Lease::keep`] drives it.
#[async_trait]
pub trait Leader: Send + Sync {
    /// What asking for the lease may fail with.
    type Error: std::fmt::Display + Send + Sync;

    /// Asks for the lease once ([`Lease::acquire`]; a renewal while held)
    /// and starts or stops the work to match. Returns whether this process
    /// holds the lease now.
    async fn hold(&self) -> std::result::Result<bool, Self::Error>;

    /// Stops the work at once: asking failed, and the lease may run out
    /// before the next try, when another process may take it.
    async fn stand_down(&self);

    /// Records a failed try (for `/health`).
    fn failed(&self, err: &Self::Error) {
        let _ = err;
    }

    /// Called after each try, with whether this process holds the lease.
    async fn tried(&self, held: bool) {
        let _ = held;
    }
}

/// A bridge's lease as one process holds it, or waits for it.
#[derive(Debug)]
pub struct Lease {
    bridge: String,
    /// This process's name in the lease: unique per process and start.
    holder: String,
    ttl: Duration,
    renew: Duration,
    /// When the last granted request was made: the lease lasts `ttl` from
    /// then. `None` while not held.
    renewed_at: Mutex<Option<Instant>>,
}

impl Lease {
    /// The lease of `bridge`, lasting `ttl` from each request, asked for
    /// every `renew` (at most half of `ttl`).
    pub fn new(bridge: &str, ttl: Duration, renew: Duration) -> Self {
        Lease {
            bridge: bridge.to_owned(),
            holder: format!("{bridge}-bridge-{}", uuid::Uuid::now_v7()),
            ttl,
            renew,
            renewed_at: Mutex::new(None),
        }
    }

    /// This process's name in the lease.
    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// How often to ask for the lease (a renewal while held).
    pub fn renew_every(&self) -> Duration {
        self.renew
    }

    fn renewed_at(&self) -> Option<Instant> {
        *self.renewed_at.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Asks for the lease once, to last `ttl` from now; a renewal when this
    /// process holds it. Returns whether it holds it now.
    pub async fn acquire(&self, store: &dyn BridgeStore) -> Result<bool> {
        let asked_at = Instant::now();
        let until = Timestamp::now().plus(self.ttl);
        let held = store.acquire_lease(&self.bridge, &self.holder, Timestamp::now(), until).await?;
        *self.renewed_at.lock().unwrap_or_else(|e| e.into_inner()) = held.then_some(asked_at);
        Ok(held)
    }

    /// Whether the lease surely lasts a while yet: held, and last renewed
    /// less than `ttl - renew` ago. Work that another holder could do too
    /// starts only then.
    pub fn fresh(&self) -> bool {
        self.renewed_at().is_some_and(|at| at.elapsed() + self.renew < self.ttl)
    }

    /// After a failed renewal: whether to stop acting as the holder now,
    /// since the lease may run out before the next renewal.
    pub fn lapsing(&self) -> bool {
        self.renewed_at().is_none_or(|at| at.elapsed() + self.renew >= self.ttl)
    }

    /// When the lease runs out, as this process last renewed it; `None`
    /// when it does not hold it.
    pub fn until(&self) -> Option<Timestamp> {
        self.renewed_at().map(|at| Timestamp::now().plus(self.ttl.saturating_sub(at.elapsed())))
    }

    /// Asks for the lease every [`Lease::renew_every`] through `leader`,
    /// forever (the task running it is aborted when the bridge stops).
    /// `held` says whether the first try, made before, got it. When a try
    /// fails and the lease may run out before the next, the leader stands
    /// down.
    pub async fn keep<L: Leader>(&self, leader: &L, mut held: bool) {
        loop {
            tokio::time::sleep(self.renew).await;
            match leader.hold().await {
                Ok(now_held) => {
                    if now_held != held {
                        tracing::info!(bridge = %self.bridge, holder = %self.holder, active = now_held, "a bridge's lease changed hands");
                    }
                    held = now_held;
                }
                Err(err) => {
                    tracing::warn!(bridge = %self.bridge, error = %err, "cannot renew a bridge's lease");
                    leader.failed(&err);
                    if held && self.lapsing() {
                        tracing::warn!(bridge = %self.bridge, "a bridge's lease may have run out; standing by");
                        leader.stand_down().await;
                        held = false;
                    }
                }
            }
            leader.tried(held).await;
        }
    }

    /// Hands the lease back so that another process takes it at once.
    /// Returns whether this process held it.
    pub async fn release(&self, store: &dyn BridgeStore) -> Result<bool> {
        *self.renewed_at.lock().unwrap_or_else(|e| e.into_inner()) = None;
        store.release_lease(&self.bridge, &self.holder).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{MemoryStore, Store};

    #[tokio::test(start_paused = true)]
    async fn a_lease_is_fresh_until_a_renewal_before_its_end() {
        let store = MemoryStore::new();
        let out = store.bridge_store().expect("a bridge store");
        let first = Lease::new("b", Duration::from_secs(15), Duration::from_secs(5));
        let second = Lease::new("b", Duration::from_secs(15), Duration::from_secs(5));
        assert_ne!(first.holder(), second.holder());
        assert!(!first.fresh() && first.lapsing() && first.until().is_none(), "not held yet");
        assert!(first.acquire(out).await.expect("asks"));
        assert!(!second.acquire(out).await.expect("asks"), "one holder");
        assert!(first.fresh() && !first.lapsing());
        assert!(first.until().is_some_and(|t| t > Timestamp::now().plus(Duration::from_secs(14))));
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(!first.fresh() && first.lapsing(), "within a renewal of its end");
        assert!(first.acquire(out).await.expect("renews"));
        assert!(first.fresh());
        assert!(first.release(out).await.expect("releases"));
        assert!(!first.fresh());
        assert!(second.acquire(out).await.expect("asks"), "taken at once after a release");
    }
}

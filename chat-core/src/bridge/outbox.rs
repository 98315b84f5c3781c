//! What a bridge keeps in the store: a durable outbox of jobs and the links
//! between local and remote ids.
//!
//! A bridge must not lose work when the remote platform is down or the
//! process restarts, and must not do it twice. So every call it makes to the
//! remote platform is first written as a [`Job`], and every id the remote
//! platform hands back (a thread for a room, a remote message for a local one)
//! is written as a link before the next step runs. A [`Store`](crate::Store)
//! that can hold both returns itself from
//! [`Store::bridge_store`](crate::Store::bridge_store); the conformance checks
//! (`chat_core::bridge_store_conformance!`, feature `testing`) say what an
//! implementation must do:
//!
//! - **Order.** Job ids grow with every enqueue. [`BridgeStore::due_jobs`]
//!   returns only the oldest pending job of each queue, so the jobs of one
//!   queue (one room) run one after the other in enqueue order, while a queue
//!   that waits for a retry does not hold up the others.
//! - **Deduplication.** A job whose `(bridge, dedupe_key)` is already pending
//!   or failed is not enqueued again. Finished jobs are removed, so a bridge
//!   makes its jobs idempotent through links, not through this key alone.
//! - **Links** are one remote id per `(bridge, kind, local id)`, readable in
//!   both directions.
//! - **Lease.** At most one holder has a bridge's lease at a time: it is
//!   granted when nobody holds it, when its holder let it run out, or to its
//!   holder again (a renewal), and decided atomically when several processes
//!   ask at once. Several processes configured with one bridge use it to
//!   elect the one that runs the outbox and the connection.
//!
//! Everything is scoped by the bridge's name, so several bridges share the
//! tables without seeing each other's rows.

use async_trait::async_trait;
use serde::Serialize;

use crate::error::Result;
use crate::time::Timestamp;

/// Whether a job is still to run or has given up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    /// Waiting for its turn or for its next attempt.
    Pending,
    /// Gave up; runs again only when retried by hand.
    Failed,
}

impl JobStatus {
    /// The name used in stores and on the admin API.
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Pending => "pending",
            JobStatus::Failed => "failed",
        }
    }

    /// Parses [`JobStatus::as_str`] output.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(JobStatus::Pending),
            "failed" => Some(JobStatus::Failed),
            _ => None,
        }
    }
}

/// A job on its way into the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewJob {
    /// The bridge that will run it (`discord`).
    pub bridge: String,
    /// Jobs of one queue run one at a time, in enqueue order (a room id, say).
    pub queue: String,
    /// While a job with this key is pending or failed, another is not enqueued.
    pub dedupe_key: String,
    /// What to do; the bridge's own vocabulary.
    pub kind: String,
    /// The job's arguments, as the bridge wrote them (JSON, typically).
    pub payload: String,
    /// When it was enqueued; it is due from then on.
    pub created_at: Timestamp,
}

/// A link on its way into the store, for [`BridgeStore::enqueue_and_link`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewLink {
    /// The bridge it belongs to.
    pub bridge: String,
    /// What it links (`thread`, `cursor`, …); the bridge's own vocabulary.
    pub kind: String,
    /// The local id (or key).
    pub local: String,
    /// The remote id (or value).
    pub remote: String,
}

/// A job in the outbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Job {
    /// Store-made, growing with every enqueue.
    pub id: i64,
    /// The bridge that runs it.
    pub bridge: String,
    /// Its queue.
    pub queue: String,
    /// Its deduplication key.
    pub dedupe_key: String,
    /// What to do.
    pub kind: String,
    /// Its arguments.
    pub payload: String,
    /// Pending or failed.
    pub status: JobStatus,
    /// Attempts that failed so far.
    pub attempts: u32,
    /// Not run before this time.
    pub run_at: Timestamp,
    /// Why the last attempt failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// When it was enqueued.
    pub created_at: Timestamp,
}

/// How many jobs a bridge has, for `/health`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JobCounts {
    /// Pending jobs.
    pub pending: u64,
    /// Failed jobs.
    pub failed: u64,
}

/// The outbox and links of bridges. See the [`bridge`](crate::bridge) module docs for the rules.
#[async_trait]
pub trait BridgeStore: Send + Sync + 'static {
    /// Adds jobs in one commit, in order; a job whose `(bridge, dedupe_key)`
    /// is pending or failed already is skipped. Returns how many were added.
    async fn enqueue_jobs(&self, jobs: Vec<NewJob>) -> Result<u64>;

    /// Adds jobs as [`enqueue_jobs`](BridgeStore::enqueue_jobs) does and sets
    /// links as [`set_link`](BridgeStore::set_link) does, in one commit: a
    /// bridge that records how far it enqueued (a cursor) never finds the
    /// cursor ahead of its jobs, and pays for one commit instead of several.
    /// Returns how many jobs were added.
    ///
    /// The default enqueues, then sets each link: a crash in between leaves
    /// the links behind the jobs, never ahead of them.
    async fn enqueue_and_link(&self, jobs: Vec<NewJob>, links: Vec<NewLink>) -> Result<u64> {
        let added = self.enqueue_jobs(jobs).await?;
        for link in links {
            self.set_link(&link.bridge, &link.kind, &link.local, &link.remote).await?;
        }
        Ok(added)
    }

    /// The jobs of `bridge` that may run at `now`: of each queue, its oldest
    /// pending job, if that job's `run_at` has come. Ordered by id, at most `limit`.
    async fn due_jobs(&self, bridge: &str, now: Timestamp, limit: u32) -> Result<Vec<Job>>;

    /// One job of `bridge`, if it exists.
    async fn job(&self, bridge: &str, id: i64) -> Result<Option<Job>>;

    /// Removes a job that succeeded. Returns `false` when it was not there.
    async fn finish_job(&self, bridge: &str, id: i64) -> Result<bool>;

    /// Records a failed attempt of a pending job: one more attempt, the error,
    /// and the time before which it does not run again.
    async fn retry_job_at(&self, bridge: &str, id: i64, run_at: Timestamp, error: &str) -> Result<()>;

    /// Records a failed attempt and gives up on the job: it stays, failed,
    /// until [`BridgeStore::requeue_job`].
    async fn fail_job(&self, bridge: &str, id: i64, error: &str) -> Result<()>;

    /// Makes a failed job pending again, due at `now`, with its attempts reset.
    /// Returns `false` when there is no failed job with that id.
    async fn requeue_job(&self, bridge: &str, id: i64, now: Timestamp) -> Result<bool>;

    /// The jobs of `bridge` with a status, oldest first, at most `limit`.
    async fn jobs(&self, bridge: &str, status: JobStatus, limit: u32) -> Result<Vec<Job>>;

    /// How many jobs of `bridge` are pending and failed.
    async fn job_counts(&self, bridge: &str) -> Result<JobCounts>;

    /// Removes every job of `bridge`, pending and failed (its work is no
    /// longer wanted: a webhook endpoint was deleted). Returns how many.
    async fn clear_jobs(&self, bridge: &str) -> Result<u64>;

    /// Links `local` to `remote` under `kind`, replacing an earlier link of `local`.
    async fn set_link(&self, bridge: &str, kind: &str, local: &str, remote: &str) -> Result<()>;

    /// The remote id linked to `local`, if any.
    async fn remote_of(&self, bridge: &str, kind: &str, local: &str) -> Result<Option<String>>;

    /// Removes the link of `local` under `kind`. Returns whether there was one.
    async fn delete_link(&self, bridge: &str, kind: &str, local: &str) -> Result<bool>;

    /// The local id linked to `remote`, if any (the first, should several be).
    async fn local_of(&self, bridge: &str, kind: &str, remote: &str) -> Result<Option<String>>;

    /// Every `(local, remote)` link of a kind, ordered by local id.
    async fn links(&self, bridge: &str, kind: &str) -> Result<Vec<(String, String)>>;

    /// Takes or renews the lease of `bridge` for `holder`, to last until
    /// `until`. Granted when nobody holds it, when the lease of its holder
    /// ended at or before `now`, or when `holder` holds it already; of
    /// processes asking at once, one wins. Returns whether `holder` holds it
    /// now. Times come from the callers' clocks, which must roughly agree.
    async fn acquire_lease(&self, bridge: &str, holder: &str, now: Timestamp, until: Timestamp) -> Result<bool>;

    /// Ends the lease of `bridge` if `holder` holds it, so that another may
    /// take it at once. Returns whether it did.
    async fn release_lease(&self, bridge: &str, holder: &str) -> Result<bool>;
}

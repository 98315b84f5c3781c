//! [`BridgeStore`] on PostgreSQL: the `bridge_jobs` and `bridge_links` tables
//! of migration 0002. Every call is bounded like the store's others; an
//! enqueue of several jobs is one transaction.

use async_trait::async_trait;
use chat_core::{BridgeStore, Job, JobCounts, JobStatus, NewJob, NewLink, Timestamp};
use sqlx::Row;
use sqlx::postgres::PgRow;

use super::{Db, PostgresStore};
use crate::codec;
use crate::common::finish;
use crate::error::{Error, Result};

macro_rules! job_cols {
    () => {
        "id, bridge, queue, dedupe_key, kind, payload, status, attempts, run_at, last_error, created_at"
    };
}

fn job_from_row(row: &PgRow) -> Result<Job> {
    let status: &str = row.try_get("status").db()?;
    let attempts: i64 = row.try_get("attempts").db()?;
    Ok(Job {
        id: row.try_get("id").db()?,
        bridge: row.try_get("bridge").db()?,
        queue: row.try_get("queue").db()?,
        dedupe_key: row.try_get("dedupe_key").db()?,
        kind: row.try_get("kind").db()?,
        payload: row.try_get("payload").db()?,
        status: JobStatus::parse(status).ok_or(Error::Corrupt("bridge_jobs.status"))?,
        attempts: u32::try_from(attempts).map_err(|_| Error::Corrupt("bridge_jobs.attempts"))?,
        run_at: codec::time_from_db(row.try_get("run_at").db()?),
        last_error: row.try_get("last_error").db()?,
        created_at: codec::time_from_db(row.try_get("created_at").db()?),
    })
}

/// Sets a link, replacing the earlier one of `local`.
async fn upsert_link<'c>(
    executor: impl sqlx::PgExecutor<'c>,
    bridge: &str,
    kind: &str,
    local: &str,
    remote: &str,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO bridge_links (bridge, kind, local_id, remote_id) VALUES ($1, $2, $3, $4)
         ON CONFLICT (bridge, kind, local_id) DO UPDATE SET remote_id = EXCLUDED.remote_id",
    )
    .bind(bridge)
    .bind(kind)
    .bind(local)
    .bind(remote)
    .execute(executor)
    .await
    .db()?;
    Ok(())
}

#[async_trait]
impl BridgeStore for PostgresStore {
    async fn enqueue_jobs(&self, jobs: Vec<NewJob>) -> chat_core::Result<u64> {
        self.enqueue_and_link(jobs, Vec::new()).await
    }

    async fn enqueue_and_link(&self, jobs: Vec<NewJob>, links: Vec<NewLink>) -> chat_core::Result<u64> {
        let added = self
            .bounded(async {
                let mut tx = self.begin().await?;
                let result = async {
                    let mut added = 0;
                    for job in &jobs {
                        added += sqlx::query(
                            "INSERT INTO bridge_jobs (bridge, queue, dedupe_key, kind, payload, status, run_at, created_at)
                             VALUES ($1, $2, $3, $4, $5, 'pending', $6, $6)
                             ON CONFLICT (bridge, dedupe_key) DO NOTHING",
                        )
                        .bind(&job.bridge)
                        .bind(&job.queue)
                        .bind(&job.dedupe_key)
                        .bind(&job.kind)
                        .bind(&job.payload)
                        .bind(job.created_at.as_millis())
                        .execute(&mut *tx)
                        .await.db()?
                        .rows_affected();
                    }
                    for link in &links {
                        upsert_link(&mut *tx, &link.bridge, &link.kind, &link.local, &link.remote).await?;
                    }
                    Ok::<u64, Error>(added)
                }
                .await;
                finish(tx, result).await
            })
            .await?;
        Ok(added)
    }

    async fn due_jobs(&self, bridge: &str, now: Timestamp, limit: u32) -> chat_core::Result<Vec<Job>> {
        self.bounded(async {
            let rows = sqlx::query(concat!(
                "SELECT ",
                job_cols!(),
                " FROM bridge_jobs j
                 WHERE j.bridge = $1 AND j.status = 'pending' AND j.run_at <= $2
                   AND j.id = (SELECT MIN(h.id) FROM bridge_jobs h
                               WHERE h.bridge = j.bridge AND h.status = 'pending' AND h.queue = j.queue)
                 ORDER BY j.id LIMIT $3"
            ))
            .bind(bridge)
            .bind(now.as_millis())
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .db()?;
            Ok(rows.iter().map(job_from_row).collect::<Result<_>>()?)
        })
        .await
    }

    async fn job(&self, bridge: &str, id: i64) -> chat_core::Result<Option<Job>> {
        self.bounded(async {
            let row = sqlx::query(concat!("SELECT ", job_cols!(), " FROM bridge_jobs WHERE bridge = $1 AND id = $2"))
                .bind(bridge)
                .bind(id)
                .fetch_optional(&self.pool)
                .await
                .db()?;
            Ok(row.as_ref().map(job_from_row).transpose()?)
        })
        .await
    }

    async fn finish_job(&self, bridge: &str, id: i64) -> chat_core::Result<bool> {
        self.bounded(async {
            let done = sqlx::query("DELETE FROM bridge_jobs WHERE bridge = $1 AND id = $2")
                .bind(bridge)
                .bind(id)
                .execute(&self.pool)
                .await
                .db()?
                .rows_affected();
            Ok(done > 0)
        })
        .await
    }

    async fn retry_job_at(&self, bridge: &str, id: i64, run_at: Timestamp, error: &str) -> chat_core::Result<()> {
        self.bounded(async {
            let changed = sqlx::query(
                "UPDATE bridge_jobs SET attempts = attempts + 1, run_at = $3, last_error = $4
                 WHERE bridge = $1 AND id = $2",
            )
            .bind(bridge)
            .bind(id)
            .bind(run_at.as_millis())
            .bind(error)
            .execute(&self.pool)
            .await
            .db()?
            .rows_affected();
            if changed == 0 {
                return Err(chat_core::Error::NotFound("job"));
            }
            Ok(())
        })
        .await
    }

    async fn fail_job(&self, bridge: &str, id: i64, error: &str) -> chat_core::Result<()> {
        self.bounded(async {
            let changed = sqlx::query(
                "UPDATE bridge_jobs SET attempts = attempts + 1, status = 'failed', last_error = $3
                 WHERE bridge = $1 AND id = $2",
            )
            .bind(bridge)
            .bind(id)
            .bind(error)
            .execute(&self.pool)
            .await
            .db()?
            .rows_affected();
            if changed == 0 {
                return Err(chat_core::Error::NotFound("job"));
            }
            Ok(())
        })
        .await
    }

    async fn requeue_job(&self, bridge: &str, id: i64, now: Timestamp) -> chat_core::Result<bool> {
        self.bounded(async {
            let changed = sqlx::query(
                "UPDATE bridge_jobs SET status = 'pending', attempts = 0, run_at = $3
                 WHERE bridge = $1 AND id = $2 AND status = 'failed'",
            )
            .bind(bridge)
            .bind(id)
            .bind(now.as_millis())
            .execute(&self.pool)
            .await
            .db()?
            .rows_affected();
            Ok(changed > 0)
        })
        .await
    }

    async fn jobs(&self, bridge: &str, status: JobStatus, limit: u32) -> chat_core::Result<Vec<Job>> {
        self.bounded(async {
            let rows = sqlx::query(concat!(
                "SELECT ",
                job_cols!(),
                " FROM bridge_jobs WHERE bridge = $1 AND status = $2 ORDER BY id LIMIT $3"
            ))
            .bind(bridge)
            .bind(status.as_str())
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .db()?;
            Ok(rows.iter().map(job_from_row).collect::<Result<_>>()?)
        })
        .await
    }

    async fn clear_jobs(&self, bridge: &str) -> chat_core::Result<u64> {
        self.bounded(async {
            let done =
                sqlx::query("DELETE FROM bridge_jobs WHERE bridge = $1").bind(bridge).execute(&self.pool).await.db()?;
            Ok(done.rows_affected())
        })
        .await
    }

    async fn job_counts(&self, bridge: &str) -> chat_core::Result<JobCounts> {
        self.bounded(async {
            let (pending, failed): (i64, i64) = sqlx::query_as(
                "SELECT COUNT(*) FILTER (WHERE status = 'pending'), COUNT(*) FILTER (WHERE status = 'failed')
                 FROM bridge_jobs WHERE bridge = $1",
            )
            .bind(bridge)
            .fetch_one(&self.pool)
            .await
            .db()?;
            Ok(JobCounts { pending: codec::count_from_db(pending)?, failed: codec::count_from_db(failed)? })
        })
        .await
    }

    async fn set_link(&self, bridge: &str, kind: &str, local: &str, remote: &str) -> chat_core::Result<()> {
        self.bounded(async { Ok(upsert_link(&self.pool, bridge, kind, local, remote).await?) }).await
    }

    async fn delete_link(&self, bridge: &str, kind: &str, local: &str) -> chat_core::Result<bool> {
        self.bounded(async {
            let done = sqlx::query("DELETE FROM bridge_links WHERE bridge = $1 AND kind = $2 AND local_id = $3")
                .bind(bridge)
                .bind(kind)
                .bind(local)
                .execute(&self.pool)
                .await
                .db()?;
            Ok(done.rows_affected() > 0)
        })
        .await
    }

    async fn remote_of(&self, bridge: &str, kind: &str, local: &str) -> chat_core::Result<Option<String>> {
        self.bounded(async {
            Ok(sqlx::query_scalar(
                "SELECT remote_id FROM bridge_links WHERE bridge = $1 AND kind = $2 AND local_id = $3",
            )
            .bind(bridge)
            .bind(kind)
            .bind(local)
            .fetch_optional(&self.pool)
            .await
            .db()?)
        })
        .await
    }

    async fn local_of(&self, bridge: &str, kind: &str, remote: &str) -> chat_core::Result<Option<String>> {
        self.bounded(async {
            Ok(sqlx::query_scalar(
                "SELECT local_id FROM bridge_links WHERE bridge = $1 AND kind = $2 AND remote_id = $3
                 ORDER BY local_id LIMIT 1",
            )
            .bind(bridge)
            .bind(kind)
            .bind(remote)
            .fetch_optional(&self.pool)
            .await
            .db()?)
        })
        .await
    }

    async fn acquire_lease(
        &self,
        bridge: &str,
        holder: &str,
        now: Timestamp,
        until: Timestamp,
    ) -> chat_core::Result<bool> {
        self.bounded(async {
            // ON CONFLICT locks the lease's row, so of processes racing for
            // it one updates it and the others see the new holder and get
            // no row back.
            let granted: Option<String> = sqlx::query_scalar(
                "INSERT INTO bridge_leases (bridge, holder, expires_at) VALUES ($1, $2, $4)
                 ON CONFLICT (bridge) DO UPDATE SET holder = EXCLUDED.holder, expires_at = EXCLUDED.expires_at
                 WHERE bridge_leases.holder = EXCLUDED.holder OR bridge_leases.expires_at <= $3
                 RETURNING holder",
            )
            .bind(bridge)
            .bind(holder)
            .bind(now.as_millis())
            .bind(until.as_millis())
            .fetch_optional(&self.pool)
            .await
            .db()?;
            Ok(granted.is_some())
        })
        .await
    }

    async fn release_lease(&self, bridge: &str, holder: &str) -> chat_core::Result<bool> {
        self.bounded(async {
            let done = sqlx::query("DELETE FROM bridge_leases WHERE bridge = $1 AND holder = $2")
                .bind(bridge)
                .bind(holder)
                .execute(&self.pool)
                .await
                .db()?;
            Ok(done.rows_affected() > 0)
        })
        .await
    }

    async fn links(&self, bridge: &str, kind: &str) -> chat_core::Result<Vec<(String, String)>> {
        self.bounded(async {
            Ok(sqlx::query_as(
                "SELECT local_id, remote_id FROM bridge_links WHERE bridge = $1 AND kind = $2 ORDER BY local_id",
            )
            .bind(bridge)
            .bind(kind)
            .fetch_all(&self.pool)
            .await
            .db()?)
        })
        .await
    }
}

//! What the bench programs share: where PostgreSQL is, a schema of their own
//! in it, and percentiles.
//!
//! Benches read the PostgreSQL URL from [`POSTGRES_URL_ENV`] and skip
//! PostgreSQL, saying so, when it is unset. Every PostgreSQL run works in a
//! fresh [`BenchSchema`], so a bench never touches the tables of tests (or of
//! another bench) running in other schemas of the same database.

use std::time::Duration;

use anyhow::Context;
use sqlx::Connection;

/// The variable that names the PostgreSQL database the benches may use, e.g.
/// `postgres://postgres@127.0.0.1:5432/test`.
pub const POSTGRES_URL_ENV: &str = "CHAT_BENCH_POSTGRES_URL";

/// The PostgreSQL URL from [`POSTGRES_URL_ENV`], or `None` after saying on
/// stdout that PostgreSQL is skipped.
pub fn postgres_url() -> Option<String> {
    match std::env::var(POSTGRES_URL_ENV) {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            println!(
                "PostgreSQL SKIPPED: {POSTGRES_URL_ENV} is not set \
                 (e.g. {POSTGRES_URL_ENV}=postgres://postgres@127.0.0.1:5432/test)"
            );
            None
        }
    }
}

/// A schema made for one bench run. [`BenchSchema::drop_now`] removes it with
/// everything in it; a run that fails half-way leaves it behind, named
/// `chat_bench_…`, for inspection.
#[derive(Debug)]
pub struct BenchSchema {
    base_url: String,
    name: String,
}

impl BenchSchema {
    /// Creates a fresh, empty schema in the database at `base_url`.
    pub async fn create(base_url: &str) -> anyhow::Result<BenchSchema> {
        let name = format!("chat_bench_{}", uuid::Uuid::now_v7().simple());
        let mut conn = sqlx::PgConnection::connect(base_url)
            .await
            .with_context(|| format!("connecting to PostgreSQL ({POSTGRES_URL_ENV})"))?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {name}"))).execute(&mut conn).await?;
        conn.close().await?;
        Ok(BenchSchema { base_url: base_url.to_owned(), name })
    }

    /// The database URL with this schema first on every connection's search path.
    pub fn url(&self) -> String {
        let sep = if self.base_url.contains('?') { '&' } else { '?' };
        format!("{}{sep}options=-c%20search_path%3D{}", self.base_url, self.name)
    }

    /// Drops the schema and everything in it.
    pub async fn drop_now(self) -> anyhow::Result<()> {
        let mut conn = sqlx::PgConnection::connect(&self.base_url).await?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP SCHEMA {} CASCADE", self.name))).execute(&mut conn).await?;
        conn.close().await?;
        Ok(())
    }
}

/// The sample below which `p` percent of `sorted` lies (nearest rank).
pub fn percentile(sorted: &[Duration], p: usize) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[(sorted.len() * p / 100).min(sorted.len() - 1)]
}

/// A duration in milliseconds with two decimals, as the tables print them.
pub fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

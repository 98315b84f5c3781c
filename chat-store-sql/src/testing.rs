//! Helpers for tests that need PostgreSQL (feature `postgres`): this crate's
//! own, the server's end-to-end tests, and yours.
//!
//! Tests read the server's URL from [`POSTGRES_URL_ENV`] and skip, saying so on
//! stderr, when it is unset, so that `cargo test` passes on a machine without
//! PostgreSQL while CI, which sets it, runs everything. Each test works in a
//! [`TempSchema`] of its own, so tests run in parallel on one database and
//! leave nothing behind.
//!
//! ```no_run
//! # async fn example() {
//! use chat_store_sql::testing::TempSchema;
//! use chat_store_sql::{PostgresConfig, PostgresStore};
//!
//! let Some(schema) = TempSchema::create("my test").await else { return };
//! let store = PostgresStore::connect(PostgresConfig::from_url(schema.url())).await.unwrap();
//! // … use the store; the schema is dropped with `schema` …
//! # drop(store);
//! # }
//! ```

/// The variable that names the PostgreSQL server the tests may use.
pub const POSTGRES_URL_ENV: &str = "CHAT_TEST_POSTGRES_URL";

/// The PostgreSQL URL from [`POSTGRES_URL_ENV`], or `None` after saying on stderr
/// that the calling test skips.
pub fn postgres_url(test: &str) -> Option<String> {
    match std::env::var(POSTGRES_URL_ENV) {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            eprintln!(
                "SKIPPED {test}: {POSTGRES_URL_ENV} is not set (e.g. {POSTGRES_URL_ENV}=postgres://postgres@127.0.0.1:5432/test)"
            );
            None
        }
    }
}

/// A schema of its own in the test database, dropped with everything in it
/// when this value is dropped. Tests run in parallel on one database, each in
/// its own schema.
#[derive(Debug)]
pub struct TempSchema {
    base_url: String,
    name: String,
}

impl TempSchema {
    /// Makes a fresh schema, or `None` (after saying so on stderr) when
    /// [`POSTGRES_URL_ENV`] is unset. Panics when it is set but the server
    /// cannot be reached: a test run that was promised PostgreSQL must not
    /// quietly skip.
    pub async fn create(test: &str) -> Option<TempSchema> {
        use sqlx::Connection;
        let base_url = postgres_url(test)?;
        let name = format!("chat_test_{}", uuid_simple());
        let mut conn = sqlx::PgConnection::connect(&base_url).await.unwrap_or_else(|e| {
            panic!("{POSTGRES_URL_ENV} is set but PostgreSQL cannot be reached: {e}");
        });
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {name}")))
            .execute(&mut conn)
            .await
            .expect("create a test schema");
        let _ = conn.close().await;
        Some(TempSchema { base_url, name })
    }

    /// The URL of the database with this schema first on the search path.
    pub fn url(&self) -> String {
        with_search_path(&self.base_url, &self.name)
    }

    /// The schema's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// `url` with `schema` as the search path of every connection.
pub fn with_search_path(url: &str, schema: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}options=-c%20search_path%3D{schema}")
}

impl Drop for TempSchema {
    fn drop(&mut self) {
        // Drop runs inside the test's runtime, which cannot block on itself:
        // clean up from a thread with a runtime of its own.
        let url = self.base_url.clone();
        let sql = format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name);
        let cleanup = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
                return;
            };
            rt.block_on(async {
                use sqlx::Connection;
                if let Ok(mut conn) = sqlx::PgConnection::connect(&url).await {
                    let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut conn).await;
                    let _ = conn.close().await;
                }
            });
        });
        let _ = cleanup.join();
    }
}

/// A random name part, unique enough for concurrent test runs.
fn uuid_simple() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}

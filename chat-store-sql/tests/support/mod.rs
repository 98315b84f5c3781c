//! Helpers shared by the integration tests.

#![allow(dead_code, unused_imports)] // Each test file uses its own part of this module.

#[cfg(feature = "sqlite")]
pub(crate) use sqlite::*;

#[cfg(feature = "sqlite")]
mod sqlite {
    use std::path::{Path, PathBuf};

    use chat_core::testing::TestStore;
    use chat_store_sql::{SqliteConfig, SqliteStore};
    use tempfile::TempDir;

    /// A temporary directory and the URL of a database file inside it that does
    /// not exist yet.
    pub(crate) fn temp_db() -> (TempDir, PathBuf, String) {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("chat.db");
        let url = url_of(&path);
        (dir, path, url)
    }

    pub(crate) fn url_of(path: &Path) -> String {
        format!("sqlite://{}", path.display())
    }

    /// A store with default settings on a fresh database file, with the directory
    /// kept until the store is closed.
    pub(crate) async fn temp_store() -> TestStore {
        let (dir, _, url) = temp_db();
        let store = SqliteStore::connect(SqliteConfig::from_url(url)).await.expect("connect to a fresh database file");
        TestStore::with_guard(store, dir)
    }

    /// A store on a private in-memory database.
    pub(crate) async fn memory_store() -> SqliteStore {
        SqliteStore::connect(SqliteConfig::from_url("sqlite::memory:")).await.expect("connect to an in-memory database")
    }
}

/// The variable that names the PostgreSQL server the tests may use.
#[cfg(feature = "postgres")]
pub(crate) const POSTGRES_ENV: &str = "CHAT_TEST_POSTGRES_URL";

/// The PostgreSQL URL from [`POSTGRES_ENV`], or `None` after saying on stderr
/// that the calling test skips.
#[cfg(feature = "postgres")]
pub(crate) fn postgres_url(test: &str) -> Option<String> {
    match std::env::var(POSTGRES_ENV) {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            eprintln!(
                "SKIPPED {test}: {POSTGRES_ENV} is not set (e.g. {POSTGRES_ENV}=postgres://postgres@127.0.0.1:5432/test)"
            );
            None
        }
    }
}

/// A schema of its own in the test database, dropped with everything in it
/// when this value is dropped. Tests run in parallel on one database, each in
/// its own schema.
#[cfg(feature = "postgres")]
pub(crate) struct PgSchema {
    base_url: String,
    name: String,
}

#[cfg(feature = "postgres")]
impl PgSchema {
    /// Makes a fresh schema, or `None` (after saying so) without a server.
    pub(crate) async fn create(test: &str) -> Option<PgSchema> {
        use sqlx::Connection;
        let base_url = postgres_url(test)?;
        let name = format!("chat_test_{}", uuid_simple());
        let mut conn = sqlx::PgConnection::connect(&base_url).await.unwrap_or_else(|e| {
            panic!("{POSTGRES_ENV} is set but PostgreSQL cannot be reached: {e}");
        });
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {name}")))
            .execute(&mut conn)
            .await
            .expect("create a test schema");
        let _ = conn.close().await;
        Some(PgSchema { base_url, name })
    }

    /// The URL of the database with this schema first on the search path.
    pub(crate) fn url(&self) -> String {
        with_search_path(&self.base_url, &self.name)
    }

    /// The schema's name.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }
}

/// `url` with `schema` as the search path of every connection.
#[cfg(feature = "postgres")]
pub(crate) fn with_search_path(url: &str, schema: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}options=-c%20search_path%3D{schema}")
}

#[cfg(feature = "postgres")]
impl Drop for PgSchema {
    fn drop(&mut self) {
        // Drop runs inside the test's runtime, which cannot block on itself:
        // clean up from a thread with a runtime of its own.
        let url = self.base_url.clone();
        let sql = format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name);
        let cleanup = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
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
#[cfg(feature = "postgres")]
fn uuid_simple() -> String {
    chat_core::RoomId::generate().as_uuid().simple().to_string()
}

/// A PostgreSQL store in a fresh schema, or `None` without a server.
#[cfg(feature = "postgres")]
pub(crate) async fn postgres_store() -> Option<chat_core::testing::TestStore> {
    let schema = PgSchema::create("postgres conformance").await?;
    let store = chat_store_sql::PostgresStore::connect(chat_store_sql::PostgresConfig::from_url(schema.url()))
        .await
        .expect("connect to PostgreSQL");
    Some(chat_core::testing::TestStore::with_guard(store, schema))
}

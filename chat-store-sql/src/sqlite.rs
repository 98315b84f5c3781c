//! The SQLite store (feature `sqlite`).
//!
//! One process owns the database file through two pools:
//!
//! - a **writer** pool of exactly one connection. Every write goes through it,
//!   so writes queue in the pool instead of fighting over SQLite's single
//!   write lock; each write transaction starts with `BEGIN IMMEDIATE`, so a
//!   second process writing to the same file waits for the lock (up to
//!   [`SqliteConfig::busy_timeout`]) instead of failing half-way.
//! - a **reader** pool of several read-only connections. In WAL mode readers
//!   never block the writer nor each other, and each read sees every
//!   transaction committed before it started.
//!
//! An in-memory database (`sqlite::memory:`) lives inside one connection, so
//! there the writer connection serves reads too.

use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chat_core::{
    ActiveRoom, Appended, Ban, Call, CallId, CallParty, CallStart, EndReason, HistoryPage, HistoryQuery, Joining,
    Member, MemberLimits, MemberRole, Message, MessageId, NewMessage, NewRoom, QueueCursor, QueuedRoom, ReceiptKind,
    Room, RoomChanges, RoomId, RoomKind, RoomSummary, SearchPage, SearchQuery, SessionId, Store, Timestamp, User,
    UserAccount, UserId, UserListQuery, UserPatch,
};
use sqlx::error::DatabaseError;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteError, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{Row, SqliteConnection, SqlitePool};

use crate::batch::{
    Found, Key, Moves, Outcome, RoomState, answers, bindings, file_ids, has_files, moves, new_count, plan, rooms_of,
    senders_of,
};
use crate::common::{distinct_rooms, history_page, search_hits};
use crate::error::{Backend, Error, Result};
use crate::{codec, migrate};

mod attachments;
mod outbox;
mod push;

/// The migrations, oldest first. A migration, once released, never changes:
/// sqlx refuses to start when an applied migration's checksum differs.
const MIGRATIONS: &[migrate::Embedded] = &[
    (1, "initial", include_str!("../migrations/sqlite/0001_initial.sql")),
    (2, "bridge outbox", include_str!("../migrations/sqlite/0002_bridge_outbox.sql")),
    (3, "support queue", include_str!("../migrations/sqlite/0003_support_queue.sql")),
    (4, "room claim and close", include_str!("../migrations/sqlite/0004_room_claim_close.sql")),
    (5, "bridge lease", include_str!("../migrations/sqlite/0005_bridge_lease.sql")),
    (6, "limits and queue", include_str!("../migrations/sqlite/0006_limits_and_queue.sql")),
    (7, "message search", include_str!("../migrations/sqlite/0007_message_search.sql")),
    (8, "moderation", include_str!("../migrations/sqlite/0008_moderation.sql")),
    (9, "user admin", include_str!("../migrations/sqlite/0009_user_admin.sql")),
    (10, "attachments", include_str!("../migrations/sqlite/0010_attachments.sql")),
    (11, "calls", include_str!("../migrations/sqlite/0011_calls.sql")),
    (12, "push", include_str!("../migrations/sqlite/0012_push.sql")),
];

/// How hard SQLite works to make a commit survive a power cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Synchronous {
    /// Every commit is on disk when `append_messages` returns (the default;
    /// what the store's durability rule asks for).
    #[default]
    Full,
    /// In WAL mode, commits survive a crash of the process but the newest ones
    /// may be lost with power; faster.
    Normal,
    /// No syncing at all: for tests and throwaway data.
    Off,
}

impl Synchronous {
    /// The name used in configuration files.
    pub fn as_str(self) -> &'static str {
        match self {
            Synchronous::Full => "full",
            Synchronous::Normal => "normal",
            Synchronous::Off => "off",
        }
    }

    /// Parses [`Synchronous::as_str`] output, ignoring ASCII case.
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "full" => Some(Synchronous::Full),
            "normal" => Some(Synchronous::Normal),
            "off" => Some(Synchronous::Off),
            _ => None,
        }
    }

    fn to_sqlx(self) -> SqliteSynchronous {
        match self {
            Synchronous::Full => SqliteSynchronous::Full,
            Synchronous::Normal => SqliteSynchronous::Normal,
            Synchronous::Off => SqliteSynchronous::Off,
        }
    }
}

/// Settings of a [`SqliteStore`]. Start from [`SqliteConfig::from_url`] and
/// change the fields that matter.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SqliteConfig {
    /// Where the database is: `sqlite://chat.db` (a file, made when missing),
    /// `sqlite::memory:` (private to this store, gone when it closes), or any
    /// URL sqlx accepts, such as `sqlite://chat.db?mode=ro` for read-only.
    pub url: String,
    /// Durability of each commit; [`Synchronous::Full`] unless changed.
    pub synchronous: Synchronous,
    /// How long a statement waits for a lock held by another process before it
    /// fails as unavailable. Inside one process writes queue in the writer pool
    /// and never wait here.
    pub busy_timeout: Duration,
    /// Connections that serve reads concurrently (at least 1). Unused for an
    /// in-memory database, which has one connection.
    pub max_read_connections: u32,
    /// How many pages the write-ahead log collects before the commit that
    /// passes this size copies them back into the database file (SQLite's
    /// `wal_autocheckpoint`); the `-wal` file is also cut back to about this
    /// size after it resets. Larger means fewer checkpoints, each writing back
    /// a hot index page once for many commits, and a larger `-wal` file: the
    /// default, 16 384, is 64 MiB at SQLite's usual 4 KiB page. SQLite's own
    /// default is 1 000. At least 1.
    pub wal_autocheckpoint_pages: u32,
    /// The writer connection's page cache, in KiB (SQLite's `cache_size`).
    /// A batch of sends to many rooms changes a page of each room's index
    /// entries; when those do not fit, SQLite writes pages to the log before
    /// the commit and reads them back, and every commit starts colder. The
    /// default, 16 384 (16 MiB), holds the pages of a full batch of sends to
    /// as many rooms several times over; it is taken as pages are used, and
    /// stays taken. SQLite's own default is 2 000. At least 1.
    pub writer_cache_kib: u32,
}

impl SqliteConfig {
    /// The default settings for a database URL.
    pub fn from_url(url: impl Into<String>) -> Self {
        SqliteConfig {
            url: url.into(),
            synchronous: Synchronous::Full,
            busy_timeout: Duration::from_secs(5),
            max_read_connections: 4,
            wal_autocheckpoint_pages: 16_384,
            writer_cache_kib: 16_384,
        }
    }

    /// Whether the URL names an in-memory database.
    fn is_memory(&self) -> bool {
        let rest = self.url.trim_start_matches("sqlite://").trim_start_matches("sqlite:");
        let (db, params) = rest.split_once('?').unwrap_or((rest, ""));
        db == ":memory:" || params.split('&').any(|p| p == "mode=memory")
    }
}

/// A [`Store`] in one SQLite database. Cheap to clone: clones share the pools.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    /// The one connection that writes. Holding it is what serialises writers
    /// inside this process.
    writer: SqlitePool,
    /// Read-only connections; the writer pool itself for an in-memory database.
    reader: SqlitePool,
}

impl SqliteStore {
    /// The newest schema version this build knows. A database recording a newer
    /// one is refused with [`Error::SchemaTooNew`].
    pub const SCHEMA_VERSION: i64 = migrate::newest(MIGRATIONS);

    /// Opens (creating when missing) the database, brings its schema up to date
    /// and returns the store.
    ///
    /// Fails with [`Error::SchemaTooNew`] when a newer build migrated the
    /// database, [`Error::Unavailable`] when the file cannot be opened, and
    /// [`Error::Config`] for a malformed URL.
    pub async fn connect(config: SqliteConfig) -> Result<Self> {
        let base = base_options(&config)?;
        let memory = config.is_memory();
        if !memory {
            // Migrations run on a connection of their own, with SQLite's
            // default temp store: a migration that rewrites a large table
            // journals its pages to a temporary file, where the writer would
            // hold them in memory (see `writer_options`).
            Self::migrate(config.clone()).await?;
        }
        let writer_options = if memory { base.clone() } else { writer_options(base.clone(), &config) };
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            // Keeping the connection open keeps its statement cache warm, and
            // keeps an in-memory database alive.
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            // A local file does not drop connections the way a network peer
            // does; a ping before every write would only add a round trip.
            .test_before_acquire(false)
            .connect_with(writer_options.create_if_missing(true))
            .await
            .db()?;
        if memory && let Err(err) = migrate_pool(&writer).await {
            writer.close().await;
            return Err(err);
        }
        let reader = if memory {
            writer.clone()
        } else {
            SqlitePoolOptions::new()
                .max_connections(config.max_read_connections.max(1))
                .test_before_acquire(false)
                // Read-only connections: a write sent to the wrong pool fails
                // instead of taking the write lock beside the writer.
                .connect_with(base.read_only(true))
                .await
                .db()?
        };
        Ok(SqliteStore { writer, reader })
    }

    /// Creates the database when missing and brings its schema up to date,
    /// without keeping a store open: for a `migrate` command run before
    /// starting servers.
    pub async fn migrate(config: SqliteConfig) -> Result<()> {
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(wal_options(base_options(&config)?, &config).create_if_missing(true))
            .await
            .db()?;
        let result = migrate_pool(&writer).await;
        writer.close().await;
        result
    }

    /// Runs `body` in a write transaction on the writer connection: committed
    /// when it succeeds, rolled back when anything fails.
    ///
    /// The transaction starts with `BEGIN IMMEDIATE`, holding SQLite's write
    /// lock from its first statement, so it never has to upgrade a read lock
    /// (which fails at once with `SQLITE_BUSY` when another process writes).
    /// It is driven with plain statements rather than sqlx's transaction
    /// object: when a COMMIT fails (a full disk), SQLite may already have
    /// rolled back, and sqlx would go on believing the transaction open and
    /// refuse every later write on that connection.
    async fn write_tx<T>(&self, body: impl AsyncFnOnce(&mut SqliteConnection) -> Result<T>) -> Result<T> {
        self.write_tx_begun(async move |conn: &mut SqliteConnection| {
            sqlx::raw_sql("BEGIN IMMEDIATE").execute(&mut *conn).await.db()?;
            let value = body(conn).await?;
            sqlx::raw_sql("COMMIT").execute(&mut *conn).await.db()?;
            Ok(value)
        })
        .await
    }

    /// Runs `body` on the writer connection, which begins and commits a
    /// transaction itself (folding `BEGIN IMMEDIATE` and `COMMIT` into its
    /// own calls: each call is a hand-off to SQLite's thread and back), and
    /// rolls back whatever is open when it fails.
    async fn write_tx_begun<T>(&self, body: impl AsyncFnOnce(&mut SqliteConnection) -> Result<T>) -> Result<T> {
        let mut conn = self.writer.acquire().await.db()?;
        let result = body(&mut conn).await;
        if result.is_err() {
            // Whatever state the failure left, end it; "no transaction is
            // active" is fine. A connection that cannot even roll back is not
            // trusted again: the pool opens a fresh one for the next write.
            if let Err(rollback) = sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await
                && !rollback.to_string().contains("no transaction is active")
            {
                tracing::warn!(error = %rollback, "rolling back a failed write failed; reopening the connection");
                conn.close_on_drop();
            }
        }
        result
    }
}

/// Options shared by the writer and the readers.
fn base_options(config: &SqliteConfig) -> Result<SqliteConnectOptions> {
    Ok(SqliteConnectOptions::from_str(&config.url)
        .db()?
        .foreign_keys(true)
        .busy_timeout(config.busy_timeout)
        .synchronous(config.synchronous.to_sqlx()))
}

/// The writer's options for a database file: [`wal_options`], a page cache
/// of [`SqliteConfig::writer_cache_kib`], and statement journals in memory.
///
/// SQLite journals the original of every page a statement changes while a
/// transaction is open (a statement or savepoint may have to be undone on its
/// own): for a batch of sends, a few pages per message. With the default temp
/// store that journal spills to a temporary file past 64 KiB, a `pwrite` per
/// page; in memory it is a copy. The writer's statements are the store's own
/// and bounded by a batch; migrations, which may rewrite whole tables, run on
/// a connection with the defaults.
fn writer_options(base: SqliteConnectOptions, config: &SqliteConfig) -> SqliteConnectOptions {
    wal_options(base, config)
        .pragma("cache_size", format!("-{}", config.writer_cache_kib.max(1)))
        .pragma("temp_store", "memory")
}

/// Write-ahead logging, and when to checkpoint, for a connection that writes
/// to a database file. Only a connection that commits ever checkpoints, so
/// readers keep SQLite's defaults.
fn wal_options(base: SqliteConnectOptions, config: &SqliteConfig) -> SqliteConnectOptions {
    let pages = config.wal_autocheckpoint_pages.max(1);
    base.journal_mode(SqliteJournalMode::Wal)
        .pragma("wal_autocheckpoint", pages.to_string())
        // In bytes; the usual page size. Without a limit, a log that once grew
        // long (a reader holding back a checkpoint) keeps its size on disk.
        .pragma("journal_size_limit", (u64::from(pages) * 4096).to_string())
}

/// Refuses a database migrated by a newer build, then applies what is missing.
async fn migrate_pool(pool: &SqlitePool) -> Result<()> {
    let tracked: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations')",
    )
    .fetch_one(pool)
    .await
    .db()?;
    if tracked {
        let found: Option<i64> =
            sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations").fetch_one(pool).await.db()?;
        migrate::check_not_newer(found, SqliteStore::SCHEMA_VERSION)?;
    }
    migrate::migrator(MIGRATIONS).run(pool).await.db()?;
    Ok(())
}

/// Turns a sqlx result into this crate's, classified by what this backend
/// knows of SQLite's errors.
trait Db<T> {
    fn db(self) -> Result<T>;
}

impl<T> Db<T> for std::result::Result<T, sqlx::Error> {
    fn db(self) -> Result<T> {
        self.map_err(Error::from_sqlx::<sqlx::Sqlite>)
    }
}

impl<T> Db<T> for std::result::Result<T, sqlx::migrate::MigrateError> {
    fn db(self) -> Result<T> {
        self.map_err(Error::from_migrate::<sqlx::Sqlite>)
    }
}

impl Backend for sqlx::Sqlite {
    type DatabaseError = SqliteError;

    /// Whether a SQLite error code means the database cannot be used right now.
    fn is_transient(err: &SqliteError) -> bool {
        const BUSY: i32 = 5;
        const LOCKED: i32 = 6;
        const NOMEM: i32 = 7;
        const READONLY: i32 = 8;
        const IOERR: i32 = 10;
        const FULL: i32 = 13;
        const CANTOPEN: i32 = 14;
        const PROTOCOL: i32 = 15;
        // `code()` is the extended result code; its low byte is the primary code.
        let Some(code) = err.code().and_then(|c| c.parse::<i32>().ok()) else {
            return false;
        };
        matches!(code & 0xff, BUSY | LOCKED | NOMEM | READONLY | IOERR | FULL | CANTOPEN | PROTOCOL)
    }
}

// Column lists, as macros so that `concat!` can build `&'static str` queries.
macro_rules! user_cols {
    () => {
        "id, name, avatar_url, roles, deleted_at"
    };
}
macro_rules! account_cols {
    () => {
        concat!(user_cols!(), ", active, created_at, last_seen, tokens_revoked_at, profile_set_at")
    };
}
macro_rules! room_cols {
    () => {
        "id, kind, name, topic, visibility, created_by, created_at, last_seq, claimed_by, closed"
    };
}
/// The support queue after `(?1, ?2)`, at most `?3` rooms: a range of the
/// partial index `rooms_support_queue`, whose WHERE the query repeats word
/// for word so that SQLite may use it.
macro_rules! support_queue_sql {
    () => {
        concat!(
            "SELECT ",
            room_cols!(),
            ", first_message_at FROM rooms
             WHERE kind = 'support' AND closed = 0 AND first_message_at IS NOT NULL
               AND (first_message_at, id) > (?1, ?2)
             ORDER BY first_message_at, id LIMIT ?3"
        )
    };
}
macro_rules! member_cols {
    () => {
        "room_id, user_id, role, joined_at, delivered_seq, read_seq, muted_until"
    };
}
macro_rules! message_cols {
    () => {
        "room_id, seq, id, sender_id, client_msg_id, body, attachments, reply_to, created_at, edited_at, deleted, call"
    };
}

/// [`message_cols!`] of a table alias, for queries that join messages.
macro_rules! message_cols_of {
    ("m") => {
        "m.room_id AS room_id, m.seq AS seq, m.id AS id, m.sender_id AS sender_id, \
         m.client_msg_id AS client_msg_id, m.body AS body, m.attachments AS attachments, m.reply_to AS reply_to, \
         m.created_at AS created_at, m.edited_at AS edited_at, m.deleted AS deleted, m.call AS call"
    };
}

/// `search_messages`: ?1 the FTS5 query, ?2 the searcher, ?3 the rowid the
/// page starts below, ?4 the one room or NULL, ?5 the rows to read.
const SEARCH_MESSAGES: &str = concat!(
    "SELECT m.rowid AS found_at, ",
    message_cols_of!("m"),
    " FROM messages_fts f
      JOIN messages m ON m.rowid = f.rowid
      JOIN members mb ON mb.room_id = m.room_id AND mb.user_id = ?2
      WHERE messages_fts MATCH ?1 AND f.rowid < ?3 AND m.deleted = 0 AND (?4 IS NULL OR m.room_id = ?4)
      ORDER BY f.rowid DESC LIMIT ?5"
);

/// An FTS5 query that matches every one of `words` (made by
/// `chat_core::search::words`): each a quoted string, so that nothing in it
/// is read as FTS5 syntax.
fn fts_query(words: &[String]) -> String {
    let quoted: Vec<String> = words.iter().map(|w| format!("\"{}\"", w.replace('"', "\"\""))).collect();
    quoted.join(" ")
}

fn user_from_row(row: &SqliteRow) -> Result<User> {
    let id = codec::user_id(row.try_get("id").db()?, "users.id")?;
    if row.try_get::<Option<i64>, _>("deleted_at").db()?.is_some() {
        return Ok(User::deleted(id));
    }
    Ok(User {
        name: row.try_get("name").db()?,
        avatar_url: row.try_get("avatar_url").db()?,
        roles: codec::roles_from_db(row.try_get("roles").db()?)?,
        ..User::new(id, "")
    })
}

fn account_from_row(row: &SqliteRow) -> Result<UserAccount> {
    let time = |column: &str| -> Result<Option<Timestamp>> {
        Ok(row.try_get::<Option<i64>, _>(column).db()?.map(codec::time_from_db))
    };
    Ok(UserAccount {
        user: user_from_row(row)?,
        active: row.try_get("active").db()?,
        created_at: codec::time_from_db(row.try_get("created_at").db()?),
        last_seen: time("last_seen")?,
        tokens_revoked_at: time("tokens_revoked_at")?,
        profile_set_at: time("profile_set_at")?,
    })
}

fn room_from_row(row: &SqliteRow) -> Result<Room> {
    Ok(Room {
        id: codec::room_id(row.try_get("id").db()?, "rooms.id")?,
        kind: codec::room_kind(row.try_get("kind").db()?)?,
        name: row.try_get("name").db()?,
        topic: row.try_get("topic").db()?,
        visibility: codec::visibility(row.try_get("visibility").db()?)?,
        created_by: codec::user_id(row.try_get("created_by").db()?, "rooms.created_by")?,
        created_at: codec::time_from_db(row.try_get("created_at").db()?),
        last_seq: codec::seq_from_db(row.try_get("last_seq").db()?, "rooms.last_seq")?,
        claimed_by: row
            .try_get::<Option<String>, _>("claimed_by")
            .db()?
            .map(|id| codec::user_id(id, "rooms.claimed_by"))
            .transpose()?,
        closed: row.try_get("closed").db()?,
    })
}

fn member_from_row(row: &SqliteRow) -> Result<Member> {
    Ok(Member {
        room_id: codec::room_id(row.try_get("room_id").db()?, "members.room_id")?,
        user_id: codec::user_id(row.try_get("user_id").db()?, "members.user_id")?,
        role: codec::member_role(row.try_get("role").db()?)?,
        joined_at: codec::time_from_db(row.try_get("joined_at").db()?),
        delivered_seq: codec::seq_from_db(row.try_get("delivered_seq").db()?, "members.delivered_seq")?,
        read_seq: codec::seq_from_db(row.try_get("read_seq").db()?, "members.read_seq")?,
        muted_until: row.try_get::<Option<i64>, _>("muted_until").db()?.map(codec::time_from_db),
    })
}

fn message_from_row(row: &SqliteRow) -> Result<Message> {
    let reply_to: Option<&str> = row.try_get("reply_to").db()?;
    let edited_at: Option<i64> = row.try_get("edited_at").db()?;
    Ok(Message {
        id: codec::message_id(row.try_get("id").db()?, "messages.id")?,
        room_id: codec::room_id(row.try_get("room_id").db()?, "messages.room_id")?,
        seq: codec::seq_from_db(row.try_get("seq").db()?, "messages.seq")?,
        sender_id: codec::user_id(row.try_get("sender_id").db()?, "messages.sender_id")?,
        client_msg_id: row.try_get("client_msg_id").db()?,
        body: row.try_get("body").db()?,
        attachments: codec::attachments_from_db(row.try_get("attachments").db()?)?,
        reply_to: reply_to.map(|id| codec::message_id(id, "messages.reply_to")).transpose()?,
        created_at: codec::time_from_db(row.try_get("created_at").db()?),
        edited_at: edited_at.map(codec::time_from_db),
        deleted: row.try_get("deleted").db()?,
        call: codec::call_summary_from_db(row.try_get("call").db()?)?,
    })
}

macro_rules! call_cols {
    () => {
        "id, room_id, media, caller_id, caller_session, caller_until, callee_id, callee_session, callee_until, state, \
         created_at, ring_until, accepted_at, ended_at, end_reason, logged, version"
    };
}

fn call_from_row(row: &SqliteRow) -> Result<Call> {
    let session = |column: &'static str| -> Result<Option<SessionId>> {
        let text: Option<&str> = row.try_get(column).db()?;
        text.map(|s| s.parse().map_err(|_| Error::Corrupt(column))).transpose()
    };
    let time = |column: &str| -> Result<Option<Timestamp>> {
        Ok(row.try_get::<Option<i64>, _>(column).db()?.map(codec::time_from_db))
    };
    let id: &str = row.try_get("id").db()?;
    Ok(Call {
        id: id.parse().map_err(|_| Error::Corrupt("calls.id"))?,
        room_id: codec::room_id(row.try_get("room_id").db()?, "calls.room_id")?,
        media: codec::call_media(row.try_get("media").db()?)?,
        caller: CallParty {
            user_id: codec::user_id(row.try_get("caller_id").db()?, "calls.caller_id")?,
            session: session("caller_session")?,
            until: time("caller_until")?,
        },
        callee: CallParty {
            user_id: codec::user_id(row.try_get("callee_id").db()?, "calls.callee_id")?,
            session: session("callee_session")?,
            until: time("callee_until")?,
        },
        state: codec::call_state(row.try_get("state").db()?)?,
        created_at: codec::time_from_db(row.try_get("created_at").db()?),
        ring_until: codec::time_from_db(row.try_get("ring_until").db()?),
        accepted_at: time("accepted_at")?,
        ended_at: time("ended_at")?,
        end_reason: codec::end_reason(row.try_get("end_reason").db()?)?,
        logged: row.try_get("logged").db()?,
        version: codec::version_from_db(row.try_get("version").db()?)?,
    })
}

/// Inserts a call whole.
async fn insert_call(conn: &mut SqliteConnection, call: &Call) -> Result<()> {
    sqlx::query(concat!(
        "INSERT INTO calls (",
        call_cols!(),
        ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)"
    ))
    .bind(call.id.to_string())
    .bind(call.room_id.to_string())
    .bind(call.media.as_str())
    .bind(call.caller.user_id.as_str())
    .bind(call.caller.session.map(|s| s.to_string()))
    .bind(call.caller.until.map(Timestamp::as_millis))
    .bind(call.callee.user_id.as_str())
    .bind(call.callee.session.map(|s| s.to_string()))
    .bind(call.callee.until.map(Timestamp::as_millis))
    .bind(call.state.as_str())
    .bind(call.created_at.as_millis())
    .bind(call.ring_until.as_millis())
    .bind(call.accepted_at.map(Timestamp::as_millis))
    .bind(call.ended_at.map(Timestamp::as_millis))
    .bind(call.end_reason.map(EndReason::as_str))
    .bind(call.logged)
    .bind(codec::version_to_db(call.version))
    .execute(&mut *conn)
    .await
    .db()?;
    Ok(())
}

/// Inserts a room; `?7` is its `direct_key`, `?8` its `open_support_of`.
macro_rules! insert_room {
    () => {
        "INSERT INTO rooms (id, kind, name, visibility, created_by, created_at, last_seq, last_activity, direct_key,
                           open_support_of)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, 0, ?6, ?7, ?8)"
    };
}

/// The body of [`Store::create_room`], inside a write transaction: the
/// outer error is the database's, the inner one the answer to the caller.
/// The transaction holds SQLite's write lock from its first statement, so
/// the lookups and the count below stay true until the commit.
async fn create_room_in(
    conn: &mut SqliteConnection,
    new: NewRoom,
    direct_key: Option<String>,
    limits: MemberLimits,
) -> Result<chat_core::Result<(Room, bool)>> {
    let id = new.id.to_string();
    let created_at = new.created_at.as_millis();
    let open_support_of = (new.kind == RoomKind::Support).then(|| new.created_by.as_str());
    // An existing direct room of the pair, or open support room of the
    // creator, is the answer whatever the creator's quota.
    let (existing, insert) = match (&direct_key, open_support_of) {
        (Some(key), _) => (
            Some((concat!("SELECT ", room_cols!(), " FROM rooms WHERE direct_key = ?1"), key.as_str())),
            concat!(insert_room!(), " ON CONFLICT (direct_key) DO NOTHING"),
        ),
        (None, Some(creator)) => (
            Some((concat!("SELECT ", room_cols!(), " FROM rooms WHERE open_support_of = ?1"), creator)),
            concat!(insert_room!(), " ON CONFLICT (open_support_of) DO NOTHING"),
        ),
        (None, None) => (None, insert_room!()),
    };
    if let Some((sql, key)) = existing
        && let Some(row) = sqlx::query(sql).bind(key).fetch_optional(&mut *conn).await.db()?
    {
        return Ok(Ok((room_from_row(&row)?, false)));
    }
    if own_rooms(conn, &new.created_by).await? >= limits.max_own_rooms {
        return Ok(Err(limits.own_rooms_error()));
    }
    // The UNIQUE indexes decide, not the lookup above; with the write lock
    // held they never skip, but a skipped insert still returns the room.
    let inserted = sqlx::query(insert)
        .bind(&id)
        .bind(new.kind.as_str())
        .bind(new.name.as_deref())
        .bind(new.visibility.as_str())
        .bind(new.created_by.as_str())
        .bind(created_at)
        .bind(direct_key.as_deref())
        .bind(open_support_of)
        .execute(&mut *conn)
        .await
        .db()?
        .rows_affected();
    if inserted == 0 {
        let (sql, key) =
            existing.ok_or_else(|| Error::Database("a room insert was skipped with no unique key".into()))?;
        let row = sqlx::query(sql)
            .bind(key)
            .fetch_optional(&mut *conn)
            .await
            .db()?
            .ok_or_else(|| Error::Database("a room insert was skipped with no room to return".into()))?;
        return Ok(Ok((room_from_row(&row)?, false)));
    }
    for (user, role) in &new.members {
        sqlx::query(
            "INSERT INTO members (room_id, user_id, role, joined_at, self_joined) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (room_id, user_id) DO NOTHING",
        )
        .bind(&id)
        .bind(user.as_str())
        .bind(role.as_str())
        .bind(created_at)
        // The creator joins by themselves; the others were added by them.
        .bind(*user == new.created_by)
        .execute(&mut *conn)
        .await
        .db()?;
    }
    Ok(Ok((new.room(), true)))
}

/// Counts the rooms user `?1` joined by themselves, from their entries in
/// `members_own_by_user` alone (the quota bounds how many there are).
const COUNT_OWN_ROOMS: &str = "SELECT COUNT(*) FROM members WHERE user_id = ?1 AND self_joined";

/// How many rooms `user` joined by themselves.
async fn own_rooms(conn: &mut SqliteConnection, user: &UserId) -> Result<u64> {
    let n: i64 = sqlx::query_scalar(COUNT_OWN_ROOMS).bind(user.as_str()).fetch_one(&mut *conn).await.db()?;
    codec::count_from_db(n)
}

/// A list as one JSON text, bound as a single parameter and read back with
/// `json_each`, so that a statement's text stays the same whatever the
/// batch's size.
fn json<T: serde::Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|e| Error::Database(Box::new(e)))
}

/// The rows a planned batch inserts, as the JSON array its INSERT reads.
fn planned_rows(batch: &[NewMessage], plan: &[Outcome]) -> Result<String> {
    type Row<'a> = (String, i64, String, &'a str, &'a str, &'a str, String, Option<String>, i64, Option<String>);
    let mut rows: Vec<Row<'_>> = Vec::with_capacity(new_count(plan));
    for (new, outcome) in batch.iter().zip(plan) {
        let Outcome::New(seq) = *outcome else { continue };
        rows.push((
            new.room_id.to_string(),
            seq,
            new.id.to_string(),
            new.sender_id.as_str(),
            &new.client_msg_id,
            &new.body,
            codec::attachments_to_db(&new.attachments)?,
            new.reply_to.map(|id| id.to_string()),
            new.created_at.as_millis(),
            codec::call_summary_to_db(new.call.as_deref())?,
        ));
    }
    json(&rows)
}

/// Inserts the rows of `?1` (see [`planned_rows`]); a row whose idempotency
/// key (or seq) is taken fails the statement, which SQLite then undoes alone.
macro_rules! insert_rows {
    () => {
        "INSERT INTO messages (room_id, seq, id, sender_id, client_msg_id, body, attachments, reply_to, created_at,
                               call)
         SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4, value ->> 5, value ->> 6,
                value ->> 7, value ->> 8, value ->> 9
         FROM json_each(?1)"
    };
}

/// [`insert_rows!`], skipping a row whose idempotency key is taken. `WHERE
/// true` tells SQLite's parser that ON CONFLICT belongs to the INSERT.
macro_rules! insert_skipping_stored {
    () => {
        concat!(insert_rows!(), " WHERE true ON CONFLICT (room_id, sender_id, client_msg_id) DO NOTHING")
    };
}

/// Moves the room counters and activity times to `?2`'s, and the senders'
/// cursors to `?3`'s (see [`moves_json`]). A room's first message sets its
/// `first_message_at`, which later ones keep.
macro_rules! apply_moves {
    () => {
        "UPDATE rooms SET last_seq = (u.value ->> 1), last_activity = MAX(last_activity, u.value ->> 2),
                          first_message_at = COALESCE(first_message_at, u.value ->> 3)
         FROM json_each(?2) AS u WHERE rooms.id = (u.value ->> 0);
         UPDATE members SET read_seq = MAX(read_seq, u.value ->> 2), delivered_seq = MAX(delivered_seq, u.value ->> 2)
         FROM json_each(?3) AS u WHERE members.room_id = (u.value ->> 0) AND members.user_id = (u.value ->> 1)"
    };
}

/// The counter and cursor moves of a planned batch, as the two JSON arrays
/// [`apply_moves!`] reads.
fn moves_json(batch: &[NewMessage], plan: &[Outcome]) -> Result<(String, String)> {
    let Moves { rooms, cursors } = moves(batch, plan);
    let rooms: Vec<(String, i64, i64, i64)> =
        rooms.into_iter().map(|r| (r.id.to_string(), r.last_seq, r.last_activity, r.first_at)).collect();
    let cursors: Vec<(String, &str, i64)> =
        cursors.into_iter().map(|(room, user, seq)| (room.to_string(), user, seq)).collect();
    Ok((json(&rooms)?, json(&cursors)?))
}

/// The stored messages that share an idempotency key with a message of the batch.
async fn stored_copies<'a>(conn: &mut SqliteConnection, batch: &'a [NewMessage]) -> Result<HashMap<Key<'a>, Message>> {
    let keys: Vec<(String, &str, &str)> =
        batch.iter().map(|m| (m.room_id.to_string(), m.sender_id.as_str(), m.client_msg_id.as_str())).collect();
    let rows = sqlx::query(concat!(
        "SELECT ",
        message_cols!(),
        " FROM messages WHERE (room_id, sender_id, client_msg_id) IN
            (SELECT value ->> 0, value ->> 1, value ->> 2 FROM json_each(?1))"
    ))
    .bind(json(&keys)?)
    .fetch_all(&mut *conn)
    .await
    .db()?;
    let mut stored = HashMap::with_capacity(rows.len());
    for row in &rows {
        let message = message_from_row(row)?;
        // Borrow the key from the batch, which outlives the map.
        if let Some(new) = batch.iter().find(|m| {
            m.room_id == message.room_id && m.sender_id == message.sender_id && m.client_msg_id == message.client_msg_id
        }) {
            stored.insert((new.room_id, new.sender_id.as_str(), new.client_msg_id.as_str()), message);
        }
    }
    Ok(stored)
}

/// The first read of an append, for the rooms of `?1` and the (room,
/// sender) pairs of `?2`: one row of two JSON arrays, the rooms that exist
/// as `[id, last_seq, closed]` and the positions in `?2` of the pairs that
/// are memberships. The CROSS JOIN keeps `?2` the outer loop, so that each
/// pair is one point lookup of `(room_id, user_id)` in an index of members.
macro_rules! first_read {
    () => {
        "SELECT (SELECT json_group_array(json_array(id, last_seq, closed)) FROM rooms
                 WHERE id IN (SELECT value FROM json_each(?1))) AS rooms,
                (SELECT json_group_array(p.key) FROM json_each(?2) AS p CROSS JOIN members AS m
                 WHERE m.room_id = (p.value ->> 0) AND m.user_id = (p.value ->> 1)) AS members"
    };
}

/// The body of [`Store::append_messages`]: one write transaction, which
/// holds SQLite's write lock, so nothing else moves the counters or the
/// memberships meanwhile. It is begun with the first read and committed with
/// the insert: two calls to SQLite's worker thread for a batch without
/// retries (each call is a hand-off between threads, which costs more than
/// the statements), and a fixed number of statements whatever the batch's
/// size. Run by [`SqliteStore::write_tx_begun`], which rolls back what a
/// failure leaves open.
async fn append_in(conn: &mut SqliteConnection, batch: Vec<NewMessage>) -> Result<Vec<chat_core::Result<Appended>>> {
    let room_ids: Vec<String> = rooms_of(&batch).iter().map(RoomId::to_string).collect();
    let senders = senders_of(&batch);
    let pairs: Vec<(String, &str)> = senders.iter().map(|(room, user)| (room.to_string(), *user)).collect();
    // One row holding every counter and closed flag, and which (room,
    // sender) pairs are memberships (their positions in `?2`, each found by
    // one index lookup): sqlx's SQLite worker hands each row over to this
    // task separately, and a batch over hundreds of rooms would otherwise
    // switch threads hundreds of times before its first insert. Reading the
    // memberships here, under the write lock, refuses a sender removed a
    // moment ago without a call of its own.
    let (rooms, members): (String, String) = sqlx::query_as(concat!("BEGIN IMMEDIATE; ", first_read!()))
        .bind(json(&room_ids)?)
        .bind(json(&pairs)?)
        .fetch_one(&mut *conn)
        .await
        .db()?;
    let rooms: Vec<(String, i64, i64)> = serde_json::from_str(&rooms).map_err(|_| Error::Corrupt("rooms.last_seq"))?;
    let members: Vec<usize> = serde_json::from_str(&members).map_err(|_| Error::Corrupt("members"))?;
    let found = Found {
        rooms: rooms
            .iter()
            .map(|(id, last_seq, closed)| {
                Ok((codec::room_id(id, "rooms.id")?, RoomState { last_seq: *last_seq, closed: *closed != 0 }))
            })
            .collect::<Result<_>>()?,
        members: members.iter().filter_map(|&i| senders.get(i).copied()).collect(),
        files: HashMap::new(),
    };
    if has_files(&batch) {
        let outcomes = append_with_files(conn, &batch, found).await?;
        return answers(batch, outcomes);
    }

    // Most batches hold no retry: they are inserted as numbered, the counters
    // and cursors moved and the transaction committed, in one call. A retry
    // of a stored message makes the INSERT fail on the idempotency index;
    // SQLite undoes that statement alone and the rest of the call does not
    // run, so the batch is renumbered around the stored copies in the same
    // transaction.
    let mut outcomes = plan(&batch, &found, &HashMap::new());
    let (rooms, cursors) = moves_json(&batch, &outcomes)?;
    const PLANNED: &str = concat!(insert_rows!(), "; ", apply_moves!(), "; COMMIT");
    let planned =
        sqlx::query(PLANNED).bind(planned_rows(&batch, &outcomes)?).bind(rooms).bind(cursors).execute(&mut *conn).await;
    match planned.db() {
        Ok(_) => return answers(batch, outcomes),
        Err(Error::Conflict(_)) => {}
        Err(err) => return Err(err),
    }
    let stored = stored_copies(conn, &batch).await?;
    outcomes = plan(&batch, &found, &stored);
    let (rooms, cursors) = moves_json(&batch, &outcomes)?;
    const RENUMBERED: &str = concat!(insert_skipping_stored!(), "; SELECT changes(); ", apply_moves!());
    let inserted: Vec<i64> = sqlx::query_scalar(RENUMBERED)
        .bind(planned_rows(&batch, &outcomes)?)
        .bind(rooms)
        .bind(cursors)
        .fetch_all(&mut *conn)
        .await
        .db()?;
    if inserted.first().copied() != Some(new_count(&outcomes) as i64) {
        return Err(Error::Database("a renumbered batch did not insert every new message".into()));
    }
    sqlx::raw_sql("COMMIT").execute(&mut *conn).await.db()?;
    answers(batch, outcomes)
}

/// The rest of [`append_in`] for a batch that posts attachments (rare, so
/// plainly done): its stored copies and its files' records are read under
/// the write lock before it is planned, so that a retry answers the stored
/// message and a file goes to one message only; the files are bound to
/// their messages in the transaction that stores them.
async fn append_with_files(
    conn: &mut SqliteConnection,
    batch: &[NewMessage],
    mut found: Found<'_>,
) -> Result<Vec<Outcome>> {
    let ids = file_ids(batch);
    let rows: Vec<(String, String, bool)> = sqlx::query_as(
        "SELECT id, uploader, message_id IS NULL AND removed = 0 FROM attachments
         WHERE id IN (SELECT value FROM json_each(?1))",
    )
    .bind(json(&ids)?)
    .fetch_all(&mut *conn)
    .await
    .db()?;
    found.files = rows.into_iter().map(|(id, uploader, postable)| (id, (uploader, postable))).collect();
    let stored = stored_copies(conn, batch).await?;
    let outcomes = plan(batch, &found, &stored);
    let (rooms, cursors) = moves_json(batch, &outcomes)?;
    const INSERT: &str = concat!(insert_rows!(), "; ", apply_moves!());
    sqlx::query(INSERT)
        .bind(planned_rows(batch, &outcomes)?)
        .bind(rooms)
        .bind(cursors)
        .execute(&mut *conn)
        .await
        .db()?;
    sqlx::query(
        "UPDATE attachments SET room_id = b.value ->> 1, message_id = b.value ->> 2
         FROM json_each(?1) AS b WHERE attachments.id = b.value ->> 0",
    )
    .bind(json(&bindings(batch, &outcomes))?)
    .execute(&mut *conn)
    .await
    .db()?;
    sqlx::raw_sql("COMMIT").execute(&mut *conn).await.db()?;
    Ok(outcomes)
}

impl SqliteStore {
    /// The room after a conditional update: the updated row when the update
    /// changed it, otherwise the room as stored (`None` when there is none).
    async fn updated_room(&self, id: RoomId, changed: Option<SqliteRow>) -> chat_core::Result<Option<(Room, bool)>> {
        if let Some(row) = changed {
            return Ok(Some((room_from_row(&row)?, true)));
        }
        let row = sqlx::query(concat!("SELECT ", room_cols!(), " FROM rooms WHERE id = ?1"))
            .bind(id.to_string())
            .fetch_optional(&self.writer)
            .await
            .db()?;
        Ok(row.as_ref().map(room_from_row).transpose()?.map(|room| (room, false)))
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn upsert_user(&self, user: &User) -> chat_core::Result<()> {
        // A deleted user's row stays, and the WHERE leaves it as it is.
        let written = sqlx::query(
            "INSERT INTO users (id, name, avatar_url, roles, created_at) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (id) DO UPDATE SET name = excluded.name, avatar_url = excluded.avatar_url, roles = excluded.roles
             WHERE users.deleted_at IS NULL",
        )
        .bind(user.id.as_str())
        .bind(&user.name)
        .bind(user.avatar_url.as_deref())
        .bind(codec::roles_to_db(&user.roles)?)
        .bind(Timestamp::now().as_millis())
        .execute(&self.writer)
        .await
        .db()?
        .rows_affected();
        if written == 0 {
            return Err(chat_core::Error::conflict("the user was deleted"));
        }
        Ok(())
    }

    async fn user(&self, id: &UserId) -> chat_core::Result<Option<User>> {
        let row = sqlx::query(concat!("SELECT ", user_cols!(), " FROM users WHERE id = ?1"))
            .bind(id.as_str())
            .fetch_optional(&self.reader)
            .await
            .db()?;
        Ok(row.as_ref().map(user_from_row).transpose()?)
    }

    async fn users(&self, ids: &[UserId]) -> chat_core::Result<Vec<User>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        // One bind for any number of ids keeps the SQL text static.
        let rows =
            sqlx::query(concat!("SELECT ", user_cols!(), " FROM users WHERE id IN (SELECT value FROM json_each(?1))"))
                .bind(codec::user_ids_to_db(ids)?)
                .fetch_all(&self.reader)
                .await
                .db()?;
        Ok(rows.iter().map(user_from_row).collect::<Result<_>>()?)
    }

    async fn search_users(&self, query: &str, limit: u32) -> chat_core::Result<Vec<User>> {
        // SQLite's built-in lower() folds ASCII only, exactly like
        // to_ascii_lowercase, and instr() has no wildcards to escape.
        let rows = sqlx::query(concat!(
            "SELECT ",
            user_cols!(),
            " FROM users WHERE deleted_at IS NULL AND (instr(lower(id), ?1) > 0 OR instr(lower(name), ?1) > 0)
              ORDER BY name, id LIMIT ?2"
        ))
        .bind(query.to_ascii_lowercase())
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await
        .db()?;
        Ok(rows.iter().map(user_from_row).collect::<Result<_>>()?)
    }

    async fn account(&self, id: &UserId) -> chat_core::Result<Option<UserAccount>> {
        let row = sqlx::query(concat!("SELECT ", account_cols!(), " FROM users WHERE id = ?1"))
            .bind(id.as_str())
            .fetch_optional(&self.reader)
            .await
            .db()?;
        Ok(row.as_ref().map(account_from_row).transpose()?)
    }

    async fn list_accounts(&self, query: &UserListQuery) -> chat_core::Result<Vec<UserAccount>> {
        // Ids are compared as bytes (BINARY), the primary key's order. No id
        // sorts before '', so that is where a first page starts.
        let rows = sqlx::query(concat!(
            "SELECT ",
            account_cols!(),
            " FROM users
              WHERE deleted_at IS NULL AND id > ?1
                AND (?2 IS NULL OR instr(lower(id), ?2) > 0 OR instr(lower(name), ?2) > 0)
              ORDER BY id LIMIT ?3"
        ))
        .bind(query.after.as_ref().map_or("", UserId::as_str))
        .bind(query.text.as_deref().map(str::to_ascii_lowercase))
        .bind(i64::from(query.limit))
        .fetch_all(&self.reader)
        .await
        .db()?;
        Ok(rows.iter().map(account_from_row).collect::<Result<_>>()?)
    }

    async fn update_user(&self, id: &UserId, patch: &UserPatch, at: Timestamp) -> chat_core::Result<Option<User>> {
        let roles = patch.roles.as_deref().map(codec::roles_to_db).transpose()?;
        let row = sqlx::query(concat!(
            "UPDATE users SET name = coalesce(?2, name),
                              avatar_url = CASE WHEN ?3 THEN ?4 ELSE avatar_url END,
                              roles = coalesce(?5, roles),
                              profile_set_at = ?6
             WHERE id = ?1 AND deleted_at IS NULL RETURNING ",
            user_cols!()
        ))
        .bind(id.as_str())
        .bind(patch.name.as_deref())
        .bind(patch.avatar_url.is_some())
        .bind(patch.avatar_url.as_ref().and_then(Option::as_deref))
        .bind(roles)
        .bind(at.as_millis())
        .fetch_optional(&self.writer)
        .await
        .db()?;
        Ok(row.as_ref().map(user_from_row).transpose()?)
    }

    async fn set_user_active(&self, id: &UserId, active: bool) -> chat_core::Result<bool> {
        let changed = sqlx::query("UPDATE users SET active = ?2 WHERE id = ?1 AND deleted_at IS NULL")
            .bind(id.as_str())
            .bind(active)
            .execute(&self.writer)
            .await
            .db()?
            .rows_affected();
        Ok(changed > 0)
    }

    async fn revoke_tokens(&self, id: &UserId, at: Timestamp) -> chat_core::Result<bool> {
        // Never back: a process whose clock is behind cannot let older
        // tokens in again.
        let changed = sqlx::query(
            "UPDATE users SET tokens_revoked_at = max(coalesce(tokens_revoked_at, ?2), ?2)
             WHERE id = ?1 AND deleted_at IS NULL",
        )
        .bind(id.as_str())
        .bind(at.as_millis())
        .execute(&self.writer)
        .await
        .db()?
        .rows_affected();
        Ok(changed > 0)
    }

    async fn delete_user(&self, id: &UserId, at: Timestamp) -> chat_core::Result<Option<Vec<RoomId>>> {
        let id = id.as_str();
        let rooms = self.write_tx(async move |conn: &mut SqliteConnection| {
            let deleted = sqlx::query(
                "UPDATE users SET deleted_at = ?2, name = ?3, avatar_url = NULL, roles = '[]'
                 WHERE id = ?1 AND deleted_at IS NULL",
            )
            .bind(id)
            .bind(at.as_millis())
            .bind(chat_core::user::DELETED_USER_NAME)
            .execute(&mut *conn)
            .await
            .db()?
            .rows_affected();
            if deleted == 0 {
                return Ok(None);
            }
            sqlx::query(
                "INSERT OR IGNORE INTO deleted_members (room_id, user_id, deleted_at)
                 SELECT room_id, user_id, ?2 FROM members WHERE user_id = ?1",
            )
            .bind(id)
            .bind(at.as_millis())
            .execute(&mut *conn)
            .await
            .db()?;
            let rooms: Vec<String> = sqlx::query_scalar("DELETE FROM members WHERE user_id = ?1 RETURNING room_id")
                .bind(id)
                .fetch_all(&mut *conn)
                .await
                .db()?;
            // Their browsers are told nothing more.
            sqlx::query("DELETE FROM push_subscriptions WHERE user_id = ?1").bind(id).execute(&mut *conn).await.db()?;
            Ok(Some(rooms))
        });
        let Some(rooms) = rooms.await? else { return Ok(None) };
        Ok(Some(rooms.iter().map(|r| codec::room_id(r, "members.room_id")).collect::<Result<_>>()?))
    }

    async fn deleted_members(&self, room: RoomId) -> chat_core::Result<Vec<UserId>> {
        let ids: Vec<String> =
            sqlx::query_scalar("SELECT user_id FROM deleted_members WHERE room_id = ?1 ORDER BY deleted_at, user_id")
                .bind(room.to_string())
                .fetch_all(&self.reader)
                .await
                .db()?;
        Ok(ids.into_iter().map(|id| codec::user_id(id, "deleted_members.user_id")).collect::<Result<_>>()?)
    }

    async fn touch_user(&self, id: &UserId, at: Timestamp) -> chat_core::Result<Option<UserAccount>> {
        let row = sqlx::query(concat!("UPDATE users SET last_seen = ?2 WHERE id = ?1 RETURNING ", account_cols!()))
            .bind(id.as_str())
            .bind(at.as_millis())
            .fetch_optional(&self.writer)
            .await
            .db()?;
        Ok(row.as_ref().map(account_from_row).transpose()?)
    }

    async fn create_room(&self, new: NewRoom, limits: MemberLimits) -> chat_core::Result<(Room, bool)> {
        let direct_key = match (new.kind, new.members.as_slice()) {
            (RoomKind::Direct, [(a, _), (b, _)]) => Some(NewRoom::direct_key(a, b)),
            (RoomKind::Direct, _) => {
                return Err(chat_core::Error::invalid("a direct room has exactly two members"));
            }
            _ => None,
        };
        let created =
            self.write_tx(async move |conn: &mut SqliteConnection| create_room_in(conn, new, direct_key, limits).await);
        match created.await {
            Ok(answer) => answer,
            Err(Error::Conflict(source)) => {
                tracing::debug!(error = %source, "room id already taken");
                Err(chat_core::Error::conflict("room id already taken"))
            }
            Err(err) => Err(err.into()),
        }
    }

    async fn room(&self, id: RoomId) -> chat_core::Result<Option<Room>> {
        let row = sqlx::query(concat!("SELECT ", room_cols!(), " FROM rooms WHERE id = ?1"))
            .bind(id.to_string())
            .fetch_optional(&self.reader)
            .await
            .db()?;
        Ok(row.as_ref().map(room_from_row).transpose()?)
    }

    async fn last_seqs(&self, rooms: &[RoomId]) -> chat_core::Result<Vec<(RoomId, u64)>> {
        if rooms.is_empty() {
            return Ok(Vec::new());
        }
        // One row of JSON rather than a row per room: see `ARCHITECTURE.md`.
        let ids: Vec<String> = rooms.iter().map(RoomId::to_string).collect();
        let ids = serde_json::to_string(&ids).map_err(|e| chat_core::Error::internal(e.to_string()))?;
        let (found,): (Option<String>,) = sqlx::query_as(
            "SELECT json_group_array(json_array(id, last_seq)) FROM rooms \
             WHERE id IN (SELECT value FROM json_each(?1))",
        )
        .bind(ids)
        .fetch_one(&self.reader)
        .await
        .db()?;
        let pairs: Vec<(String, u64)> = match found {
            Some(text) => serde_json::from_str(&text).map_err(|e| chat_core::Error::internal(e.to_string()))?,
            None => Vec::new(),
        };
        pairs
            .into_iter()
            .map(|(id, seq)| {
                let id =
                    id.parse().map_err(|_| chat_core::Error::internal(format!("bad room id {id:?} in the store")))?;
                Ok((id, seq))
            })
            .collect()
    }

    async fn claim_room(&self, id: RoomId, user: &UserId) -> chat_core::Result<Option<(Room, bool)>> {
        let changed = sqlx::query(concat!(
            "UPDATE rooms SET claimed_by = ?2 WHERE id = ?1 AND claimed_by IS NOT ?2 RETURNING ",
            room_cols!()
        ))
        .bind(id.to_string())
        .bind(user.as_str())
        .fetch_optional(&self.writer)
        .await
        .db()?;
        self.updated_room(id, changed).await
    }

    async fn close_room(&self, id: RoomId) -> chat_core::Result<Option<(Room, bool)>> {
        // The room leaves the support queue's index, and its creator may
        // open another support room.
        let changed = sqlx::query(concat!(
            "UPDATE rooms SET closed = 1, open_support_of = NULL WHERE id = ?1 AND closed = 0 RETURNING ",
            room_cols!()
        ))
        .bind(id.to_string())
        .fetch_optional(&self.writer)
        .await
        .db()?;
        self.updated_room(id, changed).await
    }

    async fn rooms_of_user(&self, user: &UserId) -> chat_core::Result<Vec<RoomSummary>> {
        let rows = sqlx::query(
            "SELECT r.id, r.kind, r.name, r.topic, r.visibility, r.created_by, r.created_at, r.last_seq, r.claimed_by,
                    r.closed, m.read_seq, m.muted_until
             FROM members m JOIN rooms r ON r.id = m.room_id
             WHERE m.user_id = ?1
             ORDER BY r.last_activity DESC, r.id DESC",
        )
        .bind(user.as_str())
        .fetch_all(&self.reader)
        .await
        .db()?;
        let now = Timestamp::now();
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let read_seq = codec::seq_from_db(row.try_get("read_seq").db()?, "members.read_seq")?;
            let muted_until = row.try_get::<Option<i64>, _>("muted_until").db()?.map(codec::time_from_db);
            out.push(RoomSummary::new(room_from_row(row)?, read_seq).with_mute(muted_until, now));
        }
        Ok(out)
    }

    async fn update_room(&self, id: RoomId, changes: &RoomChanges) -> chat_core::Result<Option<Room>> {
        let row = sqlx::query(concat!(
            "UPDATE rooms SET name = CASE WHEN ?2 THEN ?3 ELSE name END, topic = CASE WHEN ?4 THEN ?5 ELSE topic END
             WHERE id = ?1 RETURNING ",
            room_cols!()
        ))
        .bind(id.to_string())
        .bind(changes.name.is_some())
        .bind(changes.name.clone().flatten())
        .bind(changes.topic.is_some())
        .bind(changes.topic.clone().flatten())
        .fetch_optional(&self.writer)
        .await
        .db()?;
        Ok(row.as_ref().map(room_from_row).transpose()?)
    }

    async fn support_rooms(&self, limit: u32) -> chat_core::Result<Vec<Room>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            room_cols!(),
            " FROM rooms WHERE kind = 'support' ORDER BY last_activity DESC, id DESC LIMIT ?1"
        ))
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await
        .db()?;
        Ok(rows.iter().map(room_from_row).collect::<Result<_>>()?)
    }

    async fn rooms_active_since(
        &self,
        since: Timestamp,
        after: Option<RoomId>,
        limit: u32,
    ) -> chat_core::Result<Vec<ActiveRoom>> {
        // No index orders rooms by activity (each send would update it): a
        // catch-up scans the table. Without `after`, start before every room:
        // no id sorts before ''.
        let after = after.map_or(String::new(), |id| id.to_string());
        let rows = sqlx::query(concat!(
            "SELECT ",
            room_cols!(),
            ", last_activity FROM rooms WHERE (last_activity, id) > (?1, ?2) ORDER BY last_activity, id LIMIT ?3"
        ))
        .bind(since.as_millis())
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await
        .db()?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let last_activity = codec::time_from_db(row.try_get("last_activity").db()?);
            out.push(ActiveRoom { room: room_from_row(row)?, last_activity });
        }
        Ok(out)
    }

    async fn support_queue(&self, after: Option<QueueCursor>, limit: u32) -> chat_core::Result<Vec<QueuedRoom>> {
        // Without a cursor, start before every room: no id sorts before ''.
        let (after_at, after_id) =
            after.map_or((i64::MIN, String::new()), |c| (c.waiting_since.as_millis(), c.room_id.to_string()));
        let rows = sqlx::query(support_queue_sql!())
            .bind(after_at)
            .bind(after_id)
            .bind(i64::from(limit))
            .fetch_all(&self.reader)
            .await
            .db()?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let waiting_since = codec::time_from_db(row.try_get("first_message_at").db()?);
            out.push(QueuedRoom { room: room_from_row(row)?, waiting_since });
        }
        Ok(out)
    }

    async fn room_count_of_user(&self, user: &UserId) -> chat_core::Result<u64> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM members WHERE user_id = ?1")
            .bind(user.as_str())
            .fetch_one(&self.reader)
            .await
            .db()?;
        Ok(codec::count_from_db(n)?)
    }

    async fn member(&self, room: RoomId, user: &UserId) -> chat_core::Result<Option<Member>> {
        let row = sqlx::query(concat!("SELECT ", member_cols!(), " FROM members WHERE room_id = ?1 AND user_id = ?2"))
            .bind(room.to_string())
            .bind(user.as_str())
            .fetch_optional(&self.reader)
            .await
            .db()?;
        Ok(row.as_ref().map(member_from_row).transpose()?)
    }

    async fn members(&self, room: RoomId) -> chat_core::Result<Vec<Member>> {
        let rows = sqlx::query(concat!("SELECT ", member_cols!(), " FROM members WHERE room_id = ?1 ORDER BY pos"))
            .bind(room.to_string())
            .fetch_all(&self.reader)
            .await
            .db()?;
        Ok(rows.iter().map(member_from_row).collect::<Result<_>>()?)
    }

    async fn member_count(&self, room: RoomId) -> chat_core::Result<u64> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM members WHERE room_id = ?1")
            .bind(room.to_string())
            .fetch_one(&self.reader)
            .await
            .db()?;
        Ok(codec::count_from_db(n)?)
    }

    async fn add_member(
        &self,
        room: RoomId,
        user: &UserId,
        joining: Joining,
        limits: MemberLimits,
    ) -> chat_core::Result<bool> {
        let room = room.to_string();
        let user = user.as_str();
        // Two calls: the write lock and what the limits need, then the insert
        // (when the answer is yes) and the commit. The lock holds from the
        // first statement, so the counts stay true until the insert.
        self.write_tx_begun(async move |conn: &mut SqliteConnection| {
            let (exists, member, banned, members, own): (bool, bool, bool, i64, i64) = sqlx::query_as(concat!(
                "BEGIN IMMEDIATE; ",
                "SELECT EXISTS (SELECT 1 FROM rooms WHERE id = ?1),
                        EXISTS (SELECT 1 FROM members WHERE room_id = ?1 AND user_id = ?2),
                        EXISTS (SELECT 1 FROM room_bans WHERE room_id = ?1 AND user_id = ?2),
                        (SELECT COUNT(*) FROM members WHERE room_id = ?1),
                        CASE WHEN ?3 THEN (SELECT COUNT(*) FROM members WHERE user_id = ?2 AND self_joined)
                             ELSE 0 END"
            ))
            .bind(&room)
            .bind(user)
            .bind(joining.self_joined)
            .fetch_one(&mut *conn)
            .await
            .db()?;
            let answer = if !exists {
                Err(chat_core::Error::NotFound("room"))
            } else if member {
                Ok(false)
            } else if banned {
                Err(chat_core::store::banned_error())
            } else {
                limits
                    .check_join(codec::count_from_db(members)?, codec::count_from_db(own)?, joining.self_joined)
                    .map(|()| true)
            };
            if matches!(answer, Ok(true)) {
                sqlx::query(
                    "INSERT INTO members (room_id, user_id, role, joined_at, self_joined) VALUES (?1, ?2, ?3, ?4, ?5);
                     COMMIT",
                )
                .bind(&room)
                .bind(user)
                .bind(joining.role.as_str())
                .bind(joining.at.as_millis())
                .bind(joining.self_joined)
                .execute(&mut *conn)
                .await
                .db()?;
            } else {
                sqlx::raw_sql("COMMIT").execute(&mut *conn).await.db()?;
            }
            Ok(answer)
        })
        .await?
    }

    async fn remove_member(&self, room: RoomId, user: &UserId) -> chat_core::Result<bool> {
        let removed = sqlx::query("DELETE FROM members WHERE room_id = ?1 AND user_id = ?2")
            .bind(room.to_string())
            .bind(user.as_str())
            .execute(&self.writer)
            .await
            .db()?
            .rows_affected();
        Ok(removed > 0)
    }

    async fn ban_member(&self, room: RoomId, ban: &Ban) -> chat_core::Result<bool> {
        let room = room.to_string();
        let ban = ban.clone();
        self.write_tx_begun(async move |conn: &mut SqliteConnection| {
            let (exists, member): (bool, bool) = sqlx::query_as(concat!(
                "BEGIN IMMEDIATE; ",
                "SELECT EXISTS (SELECT 1 FROM rooms WHERE id = ?1),
                        EXISTS (SELECT 1 FROM members WHERE room_id = ?1 AND user_id = ?2)"
            ))
            .bind(&room)
            .bind(ban.user_id.as_str())
            .fetch_one(&mut *conn)
            .await
            .db()?;
            if !exists {
                sqlx::raw_sql("COMMIT").execute(&mut *conn).await.db()?;
                return Ok(Err(chat_core::Error::NotFound("room")));
            }
            sqlx::query(
                "INSERT INTO room_bans (room_id, user_id, banned_by, banned_at) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (room_id, user_id) DO NOTHING;
                 DELETE FROM members WHERE room_id = ?1 AND user_id = ?2;
                 COMMIT",
            )
            .bind(&room)
            .bind(ban.user_id.as_str())
            .bind(ban.banned_by.as_str())
            .bind(ban.banned_at.as_millis())
            .execute(&mut *conn)
            .await
            .db()?;
            Ok(Ok(member))
        })
        .await?
    }

    async fn unban_member(&self, room: RoomId, user: &UserId) -> chat_core::Result<bool> {
        let removed = sqlx::query("DELETE FROM room_bans WHERE room_id = ?1 AND user_id = ?2")
            .bind(room.to_string())
            .bind(user.as_str())
            .execute(&self.writer)
            .await
            .db()?
            .rows_affected();
        Ok(removed > 0)
    }

    async fn bans(&self, room: RoomId, limit: u32) -> chat_core::Result<Vec<Ban>> {
        let rows: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT user_id, banned_by, banned_at FROM room_bans WHERE room_id = ?1
             ORDER BY banned_at DESC, user_id LIMIT ?2",
        )
        .bind(room.to_string())
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await
        .db()?;
        Ok(rows.into_iter().map(codec::ban_from_db).collect::<Result<_>>()?)
    }

    async fn set_member_role(&self, room: RoomId, user: &UserId, role: MemberRole) -> chat_core::Result<bool> {
        let changed = sqlx::query("UPDATE members SET role = ?3 WHERE room_id = ?1 AND user_id = ?2")
            .bind(room.to_string())
            .bind(user.as_str())
            .bind(role.as_str())
            .execute(&self.writer)
            .await
            .db()?
            .rows_affected();
        Ok(changed > 0)
    }

    async fn set_muted(&self, room: RoomId, user: &UserId, until: Option<Timestamp>) -> chat_core::Result<bool> {
        let changed = sqlx::query("UPDATE members SET muted_until = ?3 WHERE room_id = ?1 AND user_id = ?2")
            .bind(room.to_string())
            .bind(user.as_str())
            .bind(until.map(Timestamp::as_millis))
            .execute(&self.writer)
            .await
            .db()?
            .rows_affected();
        Ok(changed > 0)
    }

    async fn co_members(&self, user: &UserId) -> chat_core::Result<Vec<UserId>> {
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT o.user_id FROM members m JOIN members o ON o.room_id = m.room_id
             WHERE m.user_id = ?1 AND o.user_id <> ?1",
        )
        .bind(user.as_str())
        .fetch_all(&self.reader)
        .await
        .db()?;
        Ok(ids.into_iter().map(|id| codec::user_id(id, "members.user_id")).collect::<Result<_>>()?)
    }

    async fn append_messages(&self, batch: Vec<NewMessage>) -> chat_core::Result<Vec<chat_core::Result<Appended>>> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        // One transaction, so one commit (and one fsync) for the whole batch,
        // and nothing of it stored when any part fails. A refused message is
        // an answer of its own, not a failure.
        Ok(self.write_tx_begun(async move |conn: &mut SqliteConnection| append_in(conn, batch).await).await?)
    }

    async fn message(&self, room: RoomId, id: MessageId) -> chat_core::Result<Option<Message>> {
        let row = sqlx::query(concat!("SELECT ", message_cols!(), " FROM messages WHERE id = ?2 AND room_id = ?1"))
            .bind(room.to_string())
            .bind(id.to_string())
            .fetch_optional(&self.reader)
            .await
            .db()?;
        Ok(row.as_ref().map(message_from_row).transpose()?)
    }

    async fn edit_message(
        &self,
        room: RoomId,
        id: MessageId,
        body: &str,
        at: Timestamp,
    ) -> chat_core::Result<Option<Message>> {
        let row = sqlx::query(concat!(
            "UPDATE messages SET body = ?3, edited_at = ?4 WHERE id = ?2 AND room_id = ?1 RETURNING ",
            message_cols!()
        ))
        .bind(room.to_string())
        .bind(id.to_string())
        .bind(body)
        .bind(at.as_millis())
        .fetch_optional(&self.writer)
        .await
        .db()?;
        Ok(row.as_ref().map(message_from_row).transpose()?)
    }

    async fn delete_message(&self, room: RoomId, id: MessageId, at: Timestamp) -> chat_core::Result<Option<Message>> {
        // The message and its files' records in one transaction: a file is
        // never served once its message is gone.
        Ok(self
            .write_tx(async move |conn: &mut SqliteConnection| {
                let row = sqlx::query(concat!(
                    "UPDATE messages SET body = '', attachments = '[]', deleted = 1, edited_at = ?3
                     WHERE id = ?2 AND room_id = ?1 RETURNING ",
                    message_cols!()
                ))
                .bind(room.to_string())
                .bind(id.to_string())
                .bind(at.as_millis())
                .fetch_optional(&mut *conn)
                .await
                .db()?;
                if row.is_some() {
                    sqlx::query("UPDATE attachments SET removed = 1 WHERE message_id = ?1")
                        .bind(id.to_string())
                        .execute(&mut *conn)
                        .await
                        .db()?;
                }
                row.as_ref().map(message_from_row).transpose()
            })
            .await?)
    }

    async fn changed_messages(&self, room: RoomId, since: Timestamp, limit: u32) -> chat_core::Result<Vec<Message>> {
        // A range of the room's primary key, filtered: edits are few, and
        // bridges ask rarely (after a restart or a lost event).
        let rows = sqlx::query(concat!(
            "SELECT ",
            message_cols!(),
            " FROM messages WHERE room_id = ?1 AND edited_at >= ?2 ORDER BY edited_at, seq LIMIT ?3"
        ))
        .bind(room.to_string())
        .bind(since.as_millis())
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await
        .db()?;
        Ok(rows.iter().map(message_from_row).collect::<Result<_, _>>()?)
    }

    async fn history(&self, room: RoomId, q: HistoryQuery) -> chat_core::Result<HistoryPage> {
        let room = room.to_string();
        let limit = i64::from(q.limit);
        // One row more than asked tells whether more lie beyond the page.
        let fetch = limit + 1;
        let query = match (q.before_seq, q.after_seq) {
            (None, None) => sqlx::query(concat!(
                "SELECT ",
                message_cols!(),
                " FROM messages WHERE room_id = ?1 ORDER BY seq DESC LIMIT ?2"
            ))
            .bind(room)
            .bind(fetch),
            (Some(before), None) => sqlx::query(concat!(
                "SELECT ",
                message_cols!(),
                " FROM messages WHERE room_id = ?1 AND seq < ?2 ORDER BY seq DESC LIMIT ?3"
            ))
            .bind(room)
            .bind(codec::seq_bound(before))
            .bind(fetch),
            (None, Some(after)) => sqlx::query(concat!(
                "SELECT ",
                message_cols!(),
                " FROM messages WHERE room_id = ?1 AND seq > ?2 ORDER BY seq ASC LIMIT ?3"
            ))
            .bind(room)
            .bind(codec::seq_bound(after))
            .bind(fetch),
            (Some(before), Some(after)) => sqlx::query(concat!(
                "SELECT ",
                message_cols!(),
                " FROM messages WHERE room_id = ?1 AND seq > ?2 AND seq < ?3 ORDER BY seq ASC LIMIT ?4"
            ))
            .bind(room)
            .bind(codec::seq_bound(after))
            .bind(codec::seq_bound(before))
            .bind(fetch),
        };
        let rows = query.fetch_all(&self.reader).await.db()?;
        Ok(history_page(rows, &q, message_from_row)?)
    }

    async fn search_messages(&self, query: &SearchQuery) -> chat_core::Result<SearchPage> {
        // The FTS index is walked newest first (by rowid, which grows with
        // every insert), each hit checked against the searcher's membership
        // by primary key, until the page is full: no sort, and no more rows
        // read than the page needs past the ones the user may not see. The
        // cursor is the last rowid given.
        let before = match &query.before {
            Some(text) => {
                text.parse::<i64>().map_err(|_| chat_core::Error::invalid("cursor is not one this server gave"))?
            }
            None => i64::MAX,
        };
        let rows = sqlx::query(SEARCH_MESSAGES)
            .bind(fts_query(&query.words))
            .bind(query.user.as_str())
            .bind(before)
            .bind(query.room.map(|r| r.to_string()))
            .bind(i64::from(query.limit) + 1)
            .fetch_all(&self.reader)
            .await
            .db()?;
        let more = rows.len() > query.limit as usize;
        let mut messages = Vec::with_capacity(rows.len().min(query.limit as usize));
        let mut last_at = None;
        for row in rows.iter().take(query.limit as usize) {
            last_at = Some(row.try_get::<i64, _>("found_at").db()?);
            messages.push(message_from_row(row)?);
        }
        let next = if more { last_at.map(|at| at.to_string()) } else { None };
        let rooms =
            sqlx::query(concat!("SELECT ", room_cols!(), " FROM rooms WHERE id IN (SELECT value FROM json_each(?1))"))
                .bind(json(&distinct_rooms(&messages))?)
                .fetch_all(&self.reader)
                .await
                .db()?;
        let rooms = rooms.iter().map(room_from_row).collect::<Result<_>>()?;
        let results = search_hits(messages, rooms);
        Ok(SearchPage { results, next })
    }

    async fn advance_cursor(
        &self,
        room: RoomId,
        user: &UserId,
        kind: ReceiptKind,
        up_to: u64,
    ) -> chat_core::Result<Option<u64>> {
        let sql = match kind {
            ReceiptKind::Delivered => {
                "UPDATE members SET delivered_seq = ?3 WHERE room_id = ?1 AND user_id = ?2 AND delivered_seq < ?3"
            }
            // Reading implies delivery; MAX keeps the delivered cursor from moving back.
            ReceiptKind::Read => {
                "UPDATE members SET read_seq = ?3, delivered_seq = MAX(delivered_seq, ?3)
                 WHERE room_id = ?1 AND user_id = ?2 AND read_seq < ?3"
            }
        };
        let moved = sqlx::query(sql)
            .bind(room.to_string())
            .bind(user.as_str())
            .bind(codec::seq_to_db(up_to)?)
            .execute(&self.writer)
            .await
            .db()?
            .rows_affected();
        Ok((moved > 0).then_some(up_to))
    }

    async fn start_call(&self, call: &Call) -> chat_core::Result<CallStart> {
        let call = call.clone();
        // The write lock, held from BEGIN IMMEDIATE, keeps the live calls
        // read here true until the new one is stored.
        Ok(self
            .write_tx(async move |conn: &mut SqliteConnection| {
                let rows = sqlx::query(concat!(
                    "SELECT ",
                    call_cols!(),
                    " FROM calls WHERE id IN (
                        SELECT id FROM calls WHERE caller_id IN (?1, ?2) AND state <> 'ended'
                        UNION SELECT id FROM calls WHERE callee_id IN (?1, ?2) AND state <> 'ended')
                      ORDER BY id"
                ))
                .bind(call.caller.user_id.as_str())
                .bind(call.callee.user_id.as_str())
                .fetch_all(&mut *conn)
                .await
                .db()?;
                let live = rows.iter().map(call_from_row).collect::<Result<Vec<_>>>()?;
                let start = call.start_against(&live);
                match &start {
                    CallStart::Started => insert_call(conn, &call).await?,
                    CallStart::Busy(busy) => insert_call(conn, busy).await?,
                    _ => {}
                }
                Ok(start)
            })
            .await?)
    }

    async fn call(&self, id: CallId) -> chat_core::Result<Option<Call>> {
        let row = sqlx::query(concat!("SELECT ", call_cols!(), " FROM calls WHERE id = ?1"))
            .bind(id.to_string())
            .fetch_optional(&self.reader)
            .await
            .db()?;
        Ok(row.as_ref().map(call_from_row).transpose()?)
    }

    async fn update_call(&self, call: &Call) -> chat_core::Result<Option<Call>> {
        let row = sqlx::query(concat!(
            "UPDATE calls SET state = ?2, caller_session = ?3, caller_until = ?4, callee_session = ?5,
                              callee_until = ?6, accepted_at = ?7, ended_at = ?8, end_reason = ?9, logged = ?10,
                              version = version + 1
             WHERE id = ?1 AND version = ?11 RETURNING ",
            call_cols!()
        ))
        .bind(call.id.to_string())
        .bind(call.state.as_str())
        .bind(call.caller.session.map(|s| s.to_string()))
        .bind(call.caller.until.map(Timestamp::as_millis))
        .bind(call.callee.session.map(|s| s.to_string()))
        .bind(call.callee.until.map(Timestamp::as_millis))
        .bind(call.accepted_at.map(Timestamp::as_millis))
        .bind(call.ended_at.map(Timestamp::as_millis))
        .bind(call.end_reason.map(EndReason::as_str))
        .bind(call.logged)
        .bind(codec::version_to_db(call.version))
        .fetch_optional(&self.writer)
        .await
        .db()?;
        Ok(row.as_ref().map(call_from_row).transpose()?)
    }

    async fn renew_calls(&self, legs: &[(CallId, SessionId)], until: Timestamp) -> chat_core::Result<()> {
        if legs.is_empty() {
            return Ok(());
        }
        let legs: Vec<(String, String)> = legs.iter().map(|(c, s)| (c.to_string(), s.to_string())).collect();
        sqlx::query(
            "UPDATE calls SET
                 caller_until = CASE WHEN EXISTS (SELECT 1 FROM json_each(?1) AS l
                     WHERE l.value ->> 0 = calls.id AND l.value ->> 1 = calls.caller_session) THEN ?2 ELSE caller_until END,
                 callee_until = CASE WHEN EXISTS (SELECT 1 FROM json_each(?1) AS l
                     WHERE l.value ->> 0 = calls.id AND l.value ->> 1 = calls.callee_session) THEN ?2 ELSE callee_until END
             WHERE state <> 'ended' AND id IN (SELECT value ->> 0 FROM json_each(?1))",
        )
        .bind(json(&legs)?)
        .bind(until.as_millis())
        .execute(&self.writer)
        .await
        .db()?;
        Ok(())
    }

    async fn due_calls(&self, now: Timestamp, limit: u32) -> chat_core::Result<Vec<Call>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            call_cols!(),
            " FROM calls WHERE state <> 'ended'
                AND ((state = 'ringing' AND ring_until <= ?1) OR caller_until <= ?1 OR callee_until <= ?1)
              ORDER BY id LIMIT ?2"
        ))
        .bind(now.as_millis())
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await
        .db()?;
        Ok(rows.iter().map(call_from_row).collect::<Result<Vec<_>>>()?)
    }

    async fn unlogged_calls(&self, before: Timestamp, limit: u32) -> chat_core::Result<Vec<Call>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            call_cols!(),
            " FROM calls WHERE state = 'ended' AND logged = 0 AND ended_at <= ?1 ORDER BY id LIMIT ?2"
        ))
        .bind(before.as_millis())
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await
        .db()?;
        Ok(rows.iter().map(call_from_row).collect::<Result<Vec<_>>>()?)
    }

    async fn mark_call_logged(&self, id: CallId) -> chat_core::Result<()> {
        sqlx::query("UPDATE calls SET logged = 1 WHERE id = ?1")
            .bind(id.to_string())
            .execute(&self.writer)
            .await
            .db()?;
        Ok(())
    }

    fn bridge_store(&self) -> Option<&dyn chat_core::BridgeStore> {
        Some(self)
    }

    fn attachment_store(&self) -> Option<&dyn chat_core::store::AttachmentStore> {
        Some(self)
    }

    fn push_store(&self) -> Option<&dyn chat_core::push::PushStore> {
        Some(self)
    }

    async fn server_secret(&self, name: &str, candidate: &str) -> chat_core::Result<String> {
        Ok(self.secret(name, candidate).await?)
    }

    async fn ping(&self) -> chat_core::Result<()> {
        sqlx::query("SELECT 1").execute(&self.reader).await.db()?;
        Ok(())
    }

    async fn close(&self) {
        self.reader.close().await;
        self.writer.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_urls_are_recognised() {
        for url in
            ["sqlite::memory:", "sqlite://:memory:", "sqlite://?mode=memory", "sqlite://x?cache=shared&mode=memory"]
        {
            assert!(SqliteConfig::from_url(url).is_memory(), "{url}");
        }
        for url in ["sqlite://chat.db", "sqlite:chat.db", "sqlite://memory.db?mode=ro"] {
            assert!(!SqliteConfig::from_url(url).is_memory(), "{url}");
        }
    }

    #[test]
    fn synchronous_names_round_trip() {
        for s in [Synchronous::Full, Synchronous::Normal, Synchronous::Off] {
            assert_eq!(Synchronous::parse(s.as_str()), Some(s));
        }
        assert_eq!(Synchronous::parse("NORMAL"), Some(Synchronous::Normal));
        assert_eq!(Synchronous::parse("extra"), None);
        assert_eq!(Synchronous::default(), Synchronous::Full);
    }

    #[test]
    fn the_schema_version_is_the_newest_migration() {
        assert_eq!(MIGRATIONS.iter().map(|m| m.0).max(), Some(SqliteStore::SCHEMA_VERSION));
        assert!(MIGRATIONS.windows(2).all(|w| w[0].0 < w[1].0), "migrations are listed oldest first");
    }

    #[tokio::test]
    async fn the_writer_checkpoints_at_the_configured_size() -> std::result::Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let mut config = SqliteConfig::from_url(format!("sqlite://{}", dir.path().join("c.db").display()));
        config.wal_autocheckpoint_pages = 123;
        config.writer_cache_kib = 4_321;
        let store = SqliteStore::connect(config).await?;
        let mode: String = sqlx::query_scalar("PRAGMA journal_mode").fetch_one(&store.writer).await?;
        let pages: i64 = sqlx::query_scalar("PRAGMA wal_autocheckpoint").fetch_one(&store.writer).await?;
        let limit: i64 = sqlx::query_scalar("PRAGMA journal_size_limit").fetch_one(&store.writer).await?;
        assert_eq!((mode.as_str(), pages, limit), ("wal", 123, 123 * 4096));
        // A negative cache_size is in KiB; temp_store 2 is MEMORY.
        let cache: i64 = sqlx::query_scalar("PRAGMA cache_size").fetch_one(&store.writer).await?;
        let temp: i64 = sqlx::query_scalar("PRAGMA temp_store").fetch_one(&store.writer).await?;
        assert_eq!((cache, temp), (-4_321, 2));
        // Readers keep SQLite's defaults: their caches start over after
        // every commit anyway.
        let temp: i64 = sqlx::query_scalar("PRAGMA temp_store").fetch_one(&store.reader).await?;
        assert_eq!(temp, 0);
        store.close().await;
        Ok(())
    }

    /// A search walks the FTS index newest first and looks each hit's
    /// message and the searcher's membership up by key: no sort, no scan of
    /// messages or members, however many rooms and messages there are.
    #[tokio::test]
    async fn a_search_walks_the_index_newest_first() -> std::result::Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let store =
            SqliteStore::connect(SqliteConfig::from_url(format!("sqlite://{}", dir.path().join("s.db").display())))
                .await?;
        let mut conn = store.writer.acquire().await?;
        sqlx::query(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2000)
             INSERT INTO rooms (id, kind, visibility, created_by, created_at, last_activity)
             SELECT printf('00000000-0000-7000-8000-%012d', i), 'group', 'private', 'x', i, i FROM n",
        )
        .execute(&mut *conn)
        .await?;
        sqlx::query(
            "INSERT INTO members (room_id, user_id, role, joined_at)
             SELECT r.id, 'user-' || u.value, 'member', 0 FROM rooms r, json_each('[1,2,3]') u",
        )
        .execute(&mut *conn)
        .await?;
        sqlx::query(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 20000)
             INSERT INTO messages (room_id, seq, id, sender_id, client_msg_id, body, created_at)
             SELECT printf('00000000-0000-7000-8000-%012d', i % 2000 + 1), i, printf('%08d-0000-7000-8000-000000000000', i),
                    'user-1', 'c' || i, 'note number ' || i, i FROM n",
        )
        .execute(&mut *conn)
        .await?;
        sqlx::query("ANALYZE").execute(&mut *conn).await?;
        for room in [None, Some("00000000-0000-7000-8000-000000000007")] {
            let rows: Vec<(i64, i64, i64, String)> =
                sqlx::query_as(sqlx::AssertSqlSafe(format!("EXPLAIN QUERY PLAN {SEARCH_MESSAGES}")))
                    .bind(fts_query(&["note".to_owned()]))
                    .bind("user-2")
                    .bind(i64::MAX)
                    .bind(room)
                    .bind(21i64)
                    .fetch_all(&mut *conn)
                    .await?;
            let plan = rows.into_iter().map(|r| r.3).collect::<Vec<_>>().join("\n");
            assert!(plan.contains("SCAN f VIRTUAL TABLE INDEX"), "{plan}");
            assert!(plan.contains("SEARCH m USING INTEGER PRIMARY KEY (rowid=?)"), "{plan}");
            assert!(plan.contains("SEARCH mb USING"), "{plan}");
            assert!(!plan.contains("TEMP B-TREE") && !plan.contains("SCAN m") && !plan.contains("SCAN mb"), "{plan}");
        }
        drop(conn);
        // And the answer over those rows: the newest 20 of user-2's.
        let query = chat_core::SearchQuery {
            user: UserId::new("user-2")?,
            words: vec!["note".into()],
            room: None,
            limit: 20,
            before: None,
        };
        let page = store.search_messages(&query).await?;
        let bodies: Vec<&str> = page.results.iter().map(|h| h.message.body.as_str()).collect();
        assert_eq!(bodies.first().copied(), Some("note number 20000"));
        assert_eq!(bodies.len(), 20);
        assert!(page.next.is_some());
        store.close().await;
        Ok(())
    }

    /// The plan of one of this store's statements, its parameters bound.
    async fn plan_of(conn: &mut SqliteConnection, sql: &str, binds: (&str, &str, i64)) -> String {
        let rows: Vec<(i64, i64, i64, String)> =
            sqlx::query_as(sqlx::AssertSqlSafe(format!("EXPLAIN QUERY PLAN {sql}")))
                .bind(binds.0)
                .bind(binds.1)
                .bind(binds.2)
                .fetch_all(&mut *conn)
                .await
                .expect("explain");
        rows.into_iter().map(|r| r.3).collect::<Vec<_>>().join("\n")
    }

    /// The support queue is a range of its partial index, from the cursor
    /// on, in the index's order (no sort), however many support rooms are
    /// empty or closed; an append's first read looks each membership up in
    /// an index of members; a user's own rooms are counted from their partial
    /// index.
    #[tokio::test]
    async fn the_queue_the_membership_probe_and_the_quota_use_their_indexes()
    -> std::result::Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let store =
            SqliteStore::connect(SqliteConfig::from_url(format!("sqlite://{}", dir.path().join("p.db").display())))
                .await?;
        let mut conn = store.writer.acquire().await?;
        // 20,000 rooms, most of them support rooms, a few hundred waiting, a
        // member or two each, so that reading everything would be the wrong plan.
        sqlx::query(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 20000)
             INSERT INTO rooms (id, kind, visibility, created_by, created_at, last_activity, closed, first_message_at)
             SELECT printf('00000000-0000-7000-8000-%012d', i), CASE WHEN i % 4 = 0 THEN 'group' ELSE 'support' END,
                    'private', 'v' || i, i, i, i % 3 = 0, CASE WHEN i % 40 = 1 THEN i END FROM n",
        )
        .execute(&mut *conn)
        .await?;
        sqlx::query(
            "INSERT INTO members (room_id, user_id, role, joined_at, self_joined)
             SELECT id, created_by, 'owner', 0, 1 FROM rooms UNION ALL SELECT id, 'agent', 'member', 0, 0 FROM rooms",
        )
        .execute(&mut *conn)
        .await?;
        sqlx::query("ANALYZE").execute(&mut *conn).await?;

        for (at, id) in [("-9223372036854775808", ""), ("4001", "00000000-0000-7000-8000-000000004001")] {
            let plan = plan_of(&mut conn, support_queue_sql!(), (at, id, 50)).await;
            assert!(
                plan.contains("SEARCH rooms USING INDEX rooms_support_queue ((first_message_at,id)>(?,?))"),
                "{plan}"
            );
            assert!(!plan.contains("SCAN") && !plan.contains("TEMP B-TREE"), "{plan}");
        }
        let rooms = r#"["00000000-0000-7000-8000-000000000001","00000000-0000-7000-8000-000000000002"]"#;
        let pairs = r#"[["00000000-0000-7000-8000-000000000001","v1"],["00000000-0000-7000-8000-000000000002","x"]]"#;
        let plan = plan_of(&mut conn, first_read!(), (rooms, pairs, 0)).await;
        // A point lookup of both columns, in the UNIQUE index or in
        // members_by_user (user_id, room_id), whichever the planner picks.
        assert!(
            plan.contains("SEARCH m USING COVERING INDEX sqlite_autoindex_members_1 (room_id=? AND user_id=?)")
                || plan.contains("SEARCH m USING COVERING INDEX members_by_user (user_id=? AND room_id=?)"),
            "{plan}"
        );
        assert!(plan.contains("SEARCH rooms USING INDEX sqlite_autoindex_rooms_1 (id=?)"), "{plan}");
        assert!(!plan.contains("SCAN rooms") && !plan.contains("SCAN m ") && !plan.ends_with("SCAN m"), "{plan}");
        let sql = format!("{COUNT_OWN_ROOMS} AND ?2 IS NOT NULL AND ?3 IS NOT NULL");
        let plan = plan_of(&mut conn, &sql, ("agent", "", 0)).await;
        assert!(plan.contains("members_own_by_user (user_id=?)"), "{plan}");

        // And the answers over those rooms: the waiting ones that are open, in order.
        drop(conn);
        let all = store.support_queue(None, 1000).await?;
        let want: Vec<i64> = (1..=20_000).filter(|i| i % 4 != 0 && i % 3 != 0 && i % 40 == 1).collect();
        assert_eq!(all.iter().map(|q| q.waiting_since.as_millis()).collect::<Vec<_>>(), want);
        store.close().await;
        Ok(())
    }
}

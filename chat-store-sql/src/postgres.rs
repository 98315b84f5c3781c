//! The PostgreSQL store (feature `postgres`).
//!
//! Built for several server processes sharing one database:
//!
//! - **Seqs** come from `rooms.last_seq`. An append locks the row of every room
//!   it writes to (`FOR NO KEY UPDATE`, in room id order, so two batches that
//!   share rooms can never deadlock), numbers its messages from the locked
//!   counter and moves the counter in the same transaction. Whichever process
//!   holds the lock, seqs stay gapless and unique.
//! - **Idempotency** is the UNIQUE index on `(room_id, sender_id,
//!   client_msg_id)`. A batch is inserted with `ON CONFLICT DO NOTHING`; when
//!   the database skips a row, an earlier copy of that send is stored, and the
//!   batch is renumbered around it (still inside the transaction and under the
//!   room locks, so nothing else can interleave).
//! - **Group commit**: a whole batch is one transaction of a fixed number of
//!   statements (arrays bound through `unnest`), whatever its size.
//! - **Who may write**: the statement that locks the rooms also returns
//!   their closed flags and, by one primary-key probe per (room, sender), the
//!   senders who are members. The statement that moves the senders' cursors
//!   later in the transaction must find every one of those memberships still
//!   there: a removal that committed in between makes the batch start over
//!   in a new transaction, which refuses the former member. (Locking the
//!   memberships `FOR KEY SHARE` in the probe would do the same, but writes a
//!   lock into every sender's row on every append: a fifth of the throughput.)
//! - **Limits**: whoever counts memberships against a limit first takes
//!   transaction-long advisory locks, the user's then the room's, so that
//!   counts and inserts of racing processes do not interleave. One open
//!   support room per creator and one direct room per pair are UNIQUE columns.
//! - **Updates in place**: every send moves its room's counter and its
//!   sender's cursors, so no index holds those columns (nor `last_activity`;
//!   the support rooms' orders, by activity and by the time of their first
//!   message, live in `support_queue`), and both tables leave a fifth
//!   of each page free. PostgreSQL can then make these updates HOT: no new
//!   index entries and no dead rows left for vacuum.
//! - **Bounded waits**: a pool that cannot hand out a connection within
//!   [`PostgresConfig::acquire_timeout`] fails the call as unavailable, the
//!   server cancels any statement running past
//!   [`PostgresConfig::statement_timeout`], and each call as a whole gives up
//!   after the sum of both, so a database that stops answering (a cut network
//!   does not close sockets) costs a caller a bounded wait, never a hang.
//!
//! Tables live in the first schema of the connection's `search_path`, which a
//! URL can set: `postgres://host/db?options=-c%20search_path%3Dchat`.

use std::collections::HashMap;
use std::future::Future;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chat_core::{
    ActiveRoom, Appended, Ban, Call, CallId, CallParty, CallStart, EndReason, HistoryPage, HistoryQuery, Joining,
    Member, MemberLimits, MemberRole, Message, MessageId, NewMessage, NewRoom, QueueCursor, QueuedRoom, ReceiptKind,
    Room, RoomChanges, RoomId, RoomKind, RoomSummary, SearchPage, SearchQuery, SessionId, Store, Timestamp, User,
    UserAccount, UserId, UserListQuery, UserPatch,
};
use sqlx::postgres::{PgConnectOptions, PgDatabaseError, PgPoolOptions, PgRow};
use sqlx::{PgConnection, PgPool, Row};
use uuid::Uuid;

use crate::batch::{
    Found, Key, Moves, Outcome, RoomState, answers, bindings, file_ids, has_files, moves, new_count, plan, rooms_of,
    senders_of,
};
use crate::common::{distinct_rooms, finish, history_page, limit_to_db, search_hits};
use crate::error::{Backend, Error, Result};
use crate::{codec, migrate};

mod attachments;
mod outbox;
mod push;

/// The migrations, oldest first. A migration, once released, never changes.
const MIGRATIONS: &[migrate::Embedded] = &[
    (1, "initial", include_str!("../migrations/postgres/0001_initial.sql")),
    (2, "bridge outbox", include_str!("../migrations/postgres/0002_bridge_outbox.sql")),
    (3, "support queue", include_str!("../migrations/postgres/0003_support_queue.sql")),
    (4, "room claim and close", include_str!("../migrations/postgres/0004_room_claim_close.sql")),
    (5, "bridge lease", include_str!("../migrations/postgres/0005_bridge_lease.sql")),
    (6, "hot updates", include_str!("../migrations/postgres/0006_hot_updates.sql")),
    (7, "limits and queue", include_str!("../migrations/postgres/0007_limits_and_queue.sql")),
    (8, "message search", include_str!("../migrations/postgres/0008_message_search.sql")),
    (9, "moderation", include_str!("../migrations/postgres/0009_moderation.sql")),
    (10, "user admin", include_str!("../migrations/postgres/0010_user_admin.sql")),
    (11, "attachments", include_str!("../migrations/postgres/0011_attachments.sql")),
    (12, "calls", include_str!("../migrations/postgres/0012_calls.sql")),
    (13, "push", include_str!("../migrations/postgres/0013_push.sql")),
];

/// Settings of a [`PostgresStore`]. Start from [`PostgresConfig::from_url`] and
/// change the fields that matter.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PostgresConfig {
    /// Where the database is: `postgres://user@host:5432/db`, with any
    /// parameter sqlx accepts (`sslmode` excepted: this build has no TLS, so use
    /// a Unix socket or a trusted network).
    pub url: String,
    /// Connections this process keeps at most. Every server process sharing
    /// the database has its own pool, so the database's `max_connections`
    /// must cover the sum.
    pub max_connections: u32,
    /// Connections kept open even when idle, so that the first calls after a
    /// quiet period do not pay for a connection.
    pub min_connections: u32,
    /// How long a call waits for a free connection (or for a new one while the
    /// database is unreachable) before it fails as unavailable.
    pub acquire_timeout: Duration,
    /// The longest one statement may run; the database cancels it after that.
    /// It also bounds waiting for another process's lock on a room.
    pub statement_timeout: Duration,
}

impl PostgresConfig {
    /// The default settings for a database URL: 10 connections, waits of 2 s
    /// for a connection and 5 s for a statement.
    pub fn from_url(url: impl Into<String>) -> Self {
        PostgresConfig {
            url: url.into(),
            max_connections: 10,
            min_connections: 1,
            acquire_timeout: Duration::from_secs(2),
            statement_timeout: Duration::from_secs(5),
        }
    }

    fn connect_options(&self) -> Result<PgConnectOptions> {
        if !(self.url.starts_with("postgres://") || self.url.starts_with("postgresql://")) {
            return Err(Error::Config("a PostgreSQL URL starts with postgres:// or postgresql://".into()));
        }
        let statement_timeout = format!("{}ms", self.statement_timeout.as_millis().max(1));
        Ok(PgConnectOptions::from_str(&self.url)
            .db()?
            // Notices such as "relation already exists, skipping" are not worth a log line.
            .options([("statement_timeout", statement_timeout.as_str()), ("client_min_messages", "warning")])
            .application_name("chat-server"))
    }

    fn pool_options(&self) -> PgPoolOptions {
        PgPoolOptions::new()
            .max_connections(self.max_connections.max(1))
            .min_connections(self.min_connections.min(self.max_connections.max(1)))
            .acquire_timeout(self.acquire_timeout)
    }
}

/// A [`Store`] in one PostgreSQL database. Cheap to clone: clones share the pool.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
    /// The longest any call may take: a connection wait plus a statement.
    /// Enforced here too, because a database behind a cut network never
    /// answers, and then the server-side timeout never reaches us.
    deadline: Duration,
}

impl PostgresStore {
    /// The newest schema version this build knows. A database recording a newer
    /// one is refused with [`Error::SchemaTooNew`].
    pub const SCHEMA_VERSION: i64 = migrate::newest(MIGRATIONS);

    /// Connects, brings the schema up to date and returns the store.
    ///
    /// Fails with [`Error::SchemaTooNew`] when a newer build migrated the
    /// database, [`Error::Unavailable`] when it cannot be reached, and
    /// [`Error::Config`] for a malformed URL. Several processes may start at
    /// once: migrations take an advisory lock and run once.
    pub async fn connect(config: PostgresConfig) -> Result<Self> {
        let pool = config.pool_options().connect_with(config.connect_options()?).await.db()?;
        if let Err(err) = migrate_pool(&pool).await {
            pool.close().await;
            return Err(err);
        }
        Ok(PostgresStore { pool, deadline: config.acquire_timeout + config.statement_timeout })
    }

    /// Brings the schema up to date without keeping a store open: for a
    /// `migrate` command run before starting servers.
    pub async fn migrate(config: PostgresConfig) -> Result<()> {
        let pool = config.pool_options().max_connections(1).connect_with(config.connect_options()?).await.db()?;
        let result = migrate_pool(&pool).await;
        pool.close().await;
        result
    }

    /// The schema version recorded in the database, `None` before the first
    /// migration.
    pub async fn schema_version(&self) -> Result<Option<i64>> {
        recorded_version(&self.pool).await
    }

    /// Runs `call`, failing it as unavailable when it outlives the deadline.
    async fn bounded<T, E: From<Error>>(&self, call: impl Future<Output = Result<T, E>>) -> Result<T, E> {
        match tokio::time::timeout(self.deadline, call).await {
            Ok(result) => result,
            Err(_) => Err(Error::Unavailable("the database did not answer in time".into()).into()),
        }
    }

    async fn begin(&self) -> Result<sqlx::Transaction<'static, sqlx::Postgres>> {
        self.pool.begin().await.db()
    }
}

/// The newest migration recorded in the database.
async fn recorded_version(pool: &PgPool) -> Result<Option<i64>> {
    // to_regclass follows the search_path, as sqlx's own migration table does.
    let tracked: bool =
        sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL").fetch_one(pool).await.db()?;
    if !tracked {
        return Ok(None);
    }
    sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations").fetch_one(pool).await.db()
}

/// Refuses a database migrated by a newer build, then applies what is missing.
async fn migrate_pool(pool: &PgPool) -> Result<()> {
    migrate::check_not_newer(recorded_version(pool).await?, PostgresStore::SCHEMA_VERSION)?;
    migrate::migrator(MIGRATIONS).run(pool).await.db()?;
    index_unsearched(pool).await
}

/// Messages indexed for search per statement of [`index_unsearched`].
const SEARCH_BACKFILL_BATCH: i64 = 1000;

/// Gives the messages stored before search existed their words (migration
/// 8 cannot: the folding is the server's), a batch at a time through the
/// partial index of those without. Idempotent, and harmless when several
/// processes start at once: they write the same words.
async fn index_unsearched(pool: &PgPool) -> Result<()> {
    let mut total = 0u64;
    loop {
        let rows = sqlx::query(
            "SELECT room_id, seq, body FROM messages WHERE search IS NULL AND NOT deleted ORDER BY room_id, seq LIMIT $1",
        )
        .bind(SEARCH_BACKFILL_BATCH)
        .fetch_all(pool)
        .await
        .db()?;
        if rows.is_empty() {
            break;
        }
        let mut rooms: Vec<Uuid> = Vec::with_capacity(rows.len());
        let mut seqs: Vec<i64> = Vec::with_capacity(rows.len());
        let mut words: Vec<String> = Vec::with_capacity(rows.len());
        for row in &rows {
            rooms.push(row.try_get("room_id").db()?);
            seqs.push(row.try_get("seq").db()?);
            words.push(search_words(row.try_get("body").db()?));
        }
        sqlx::query(
            "UPDATE messages m SET search = array_to_tsvector(string_to_array(u.w, ' '))
             FROM unnest($1::uuid[], $2::int8[], $3::text[]) AS u(r, s, w)
             WHERE m.room_id = u.r AND m.seq = u.s",
        )
        .bind(&rooms)
        .bind(&seqs)
        .bind(&words)
        .execute(pool)
        .await
        .db()?;
        total += rows.len() as u64;
    }
    if total > 0 {
        tracing::info!(messages = total, "indexed stored messages for search");
    }
    Ok(())
}

/// What a message's `search` column is made of: its words, folded, one
/// space apart; the column is `array_to_tsvector(string_to_array(…, ' '))`
/// of this, the words as they are (no parser, no dictionary: the server
/// folded them already, and skipping PostgreSQL's parser halves the cost of
/// an insert's vector).
fn search_words(body: &str) -> String {
    chat_core::search::words(body).join(" ")
}

/// A `tsquery` that matches every one of `words` exactly, as lexemes of
/// [`search_words`]: `'w1' & 'w2'`.
fn words_query(words: &[String]) -> String {
    let quoted: Vec<String> =
        words.iter().map(|w| format!("'{}'", w.replace('\\', "\\\\").replace('\'', "''"))).collect();
    quoted.join(" & ")
}

/// Turns a sqlx result into this crate's, classified by what this backend
/// knows of PostgreSQL's errors.
trait Db<T> {
    fn db(self) -> Result<T>;
}

impl<T> Db<T> for std::result::Result<T, sqlx::Error> {
    fn db(self) -> Result<T> {
        self.map_err(Error::from_sqlx::<sqlx::Postgres>)
    }
}

impl<T> Db<T> for std::result::Result<T, sqlx::migrate::MigrateError> {
    fn db(self) -> Result<T> {
        self.map_err(Error::from_migrate::<sqlx::Postgres>)
    }
}

impl Backend for sqlx::Postgres {
    type DatabaseError = PgDatabaseError;

    fn is_transient(err: &PgDatabaseError) -> bool {
        is_transient_code(err.code())
    }
}

/// Whether a PostgreSQL error's SQLSTATE code means the database cannot be
/// used right now.
fn is_transient_code(code: &str) -> bool {
    // Class 08: connection exception; 53: insufficient resources (disk full,
    // too many connections); 57: operator intervention (shutdown, canceled by
    // statement_timeout); 40001/40P01: serialization failure and deadlock,
    // which a retry resolves; 55P03: lock not available; 25006: read-only
    // transaction (a standby, or a primary demoted by failover).
    code.starts_with("08")
        || code.starts_with("53")
        || code.starts_with("57")
        || matches!(code, "40001" | "40P01" | "55P03" | "25006")
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
/// Matches users whose id or name contains `$n` (in lower case), folding
/// ASCII case only, as every store does (PostgreSQL's lower() would fold by
/// locale); strpos has no wildcards to escape.
macro_rules! user_text_matches {
    ($n:literal) => {
        concat!(
            "(strpos(translate(id, 'ABCDEFGHIJKLMNOPQRSTUVWXYZ', 'abcdefghijklmnopqrstuvwxyz'), ",
            $n,
            ") > 0 OR strpos(translate(name, 'ABCDEFGHIJKLMNOPQRSTUVWXYZ', 'abcdefghijklmnopqrstuvwxyz'), ",
            $n,
            ") > 0)"
        )
    };
}
macro_rules! room_cols {
    () => {
        "id, kind, name, topic, visibility, created_by, created_at, last_seq, claimed_by, closed"
    };
}
/// The support queue after `($1, $2)`, at most `$3` rooms: a range of the
/// partial index `support_queue_waiting`, then each room by its key. Closed
/// rooms left the table when they closed.
macro_rules! support_queue_sql {
    () => {
        concat!(
            "SELECT ",
            room_cols!(),
            ", q.waiting_since FROM support_queue q JOIN rooms ON rooms.id = q.room_id
             WHERE q.waiting_since IS NOT NULL AND (q.waiting_since, q.room_id) > ($1, $2) AND NOT rooms.closed
             ORDER BY q.waiting_since, q.room_id LIMIT $3"
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
        "room_id, seq, id, sender_id, client_msg_id, body, attachments::text AS attachments, reply_to, created_at, \
         edited_at, deleted, call::text AS call"
    };
}

/// The statement of [`Store::search_messages`]: $1 the query, every word
/// as a quoted lexeme ([`words_query`]), $2 the searcher, $3 the one room or NULL, $4 and $5 the
/// (created_at, id) the page starts below, $6 the rows to read. Public for
/// the tests that check its plan.
#[doc(hidden)]
pub const SEARCH_MESSAGES_SQL: &str = concat!(
    "SELECT ",
    message_cols!(),
    " FROM messages
      WHERE search @@ $1::tsquery AND NOT deleted
        AND room_id IN (SELECT room_id FROM members WHERE user_id = $2)
        AND ($3::uuid IS NULL OR room_id = $3)
        AND (created_at, id) < ($4, $5)
      ORDER BY created_at DESC, id DESC LIMIT $6"
);

/// `list_accounts`: the users after `$1` whose id or name contains `$2` (any
/// when NULL), at most `$3`: a range of the partial index `users_listed`,
/// in byte order. No id sorts before '', so that is where a first page starts.
const LIST_ACCOUNTS: &str = concat!(
    "SELECT ",
    account_cols!(),
    " FROM users WHERE deleted_at IS NULL AND id COLLATE \"C\" > $1 AND ($2::text IS NULL OR ",
    user_text_matches!("$2"),
    ") ORDER BY id COLLATE \"C\" LIMIT $3"
);

fn user_from_row(row: &PgRow) -> Result<User> {
    let id = codec::user_id(row.try_get("id").db()?, "users.id")?;
    if row.try_get::<Option<i64>, _>("deleted_at").db()?.is_some() {
        return Ok(User::deleted(id));
    }
    Ok(User {
        name: row.try_get("name").db()?,
        avatar_url: row.try_get("avatar_url").db()?,
        roles: row.try_get("roles").db()?,
        ..User::new(id, "")
    })
}

fn account_from_row(row: &PgRow) -> Result<UserAccount> {
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

fn room_from_row(row: &PgRow) -> Result<Room> {
    Ok(Room {
        id: RoomId::from_uuid(row.try_get("id").db()?),
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

fn member_from_row(row: &PgRow) -> Result<Member> {
    Ok(Member {
        room_id: RoomId::from_uuid(row.try_get("room_id").db()?),
        user_id: codec::user_id(row.try_get("user_id").db()?, "members.user_id")?,
        role: codec::member_role(row.try_get("role").db()?)?,
        joined_at: codec::time_from_db(row.try_get("joined_at").db()?),
        delivered_seq: codec::seq_from_db(row.try_get("delivered_seq").db()?, "members.delivered_seq")?,
        read_seq: codec::seq_from_db(row.try_get("read_seq").db()?, "members.read_seq")?,
        muted_until: row.try_get::<Option<i64>, _>("muted_until").db()?.map(codec::time_from_db),
    })
}

fn message_from_row(row: &PgRow) -> Result<Message> {
    let reply_to: Option<Uuid> = row.try_get("reply_to").db()?;
    let edited_at: Option<i64> = row.try_get("edited_at").db()?;
    Ok(Message {
        id: MessageId::from_uuid(row.try_get("id").db()?),
        room_id: RoomId::from_uuid(row.try_get("room_id").db()?),
        seq: codec::seq_from_db(row.try_get("seq").db()?, "messages.seq")?,
        sender_id: codec::user_id(row.try_get("sender_id").db()?, "messages.sender_id")?,
        client_msg_id: row.try_get("client_msg_id").db()?,
        body: row.try_get("body").db()?,
        attachments: codec::attachments_from_db(row.try_get("attachments").db()?)?,
        reply_to: reply_to.map(MessageId::from_uuid),
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

fn call_from_row(row: &PgRow) -> Result<Call> {
    let time = |column: &str| -> Result<Option<Timestamp>> {
        Ok(row.try_get::<Option<i64>, _>(column).db()?.map(codec::time_from_db))
    };
    let session = |column: &str| -> Result<Option<SessionId>> {
        Ok(row.try_get::<Option<Uuid>, _>(column).db()?.map(SessionId::from_uuid))
    };
    Ok(Call {
        id: CallId::from_uuid(row.try_get("id").db()?),
        room_id: RoomId::from_uuid(row.try_get("room_id").db()?),
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

/// Takes the transaction-long advisory locks on the calls of the users in
/// `$1`, in the order of their keys (so that two transactions locking
/// overlapping pairs never wait for each other in a circle). Whoever reads
/// a user's live calls to decide on a new one holds it until the commit.
const LOCK_CALLS: &str = "SELECT count(pg_advisory_xact_lock(k)) FROM (
     SELECT DISTINCT hashtextextended('chat:call:' || u, 0) AS k FROM unnest($1::text[]) AS u ORDER BY k) AS keys";

/// The body of [`Store::start_call`], in a transaction.
async fn start_call_in(conn: &mut PgConnection, call: &Call) -> Result<CallStart> {
    let users = [call.caller.user_id.as_str(), call.callee.user_id.as_str()];
    sqlx::query(LOCK_CALLS).bind(&users[..]).execute(&mut *conn).await.db()?;
    let rows = sqlx::query(concat!(
        "SELECT ",
        call_cols!(),
        " FROM calls WHERE id IN (
            SELECT id FROM calls WHERE caller_id = ANY($1) AND state <> 'ended'
            UNION SELECT id FROM calls WHERE callee_id = ANY($1) AND state <> 'ended')
          ORDER BY id"
    ))
    .bind(&users[..])
    .fetch_all(&mut *conn)
    .await
    .db()?;
    let live = rows.iter().map(call_from_row).collect::<Result<Vec<_>>>()?;
    let start = call.start_against(&live);
    match &start {
        CallStart::Started => insert_call(conn, call).await?,
        CallStart::Busy(busy) => insert_call(conn, busy).await?,
        _ => {}
    }
    Ok(start)
}

/// Inserts a call whole.
async fn insert_call(conn: &mut PgConnection, call: &Call) -> Result<()> {
    sqlx::query(concat!(
        "INSERT INTO calls (",
        call_cols!(),
        ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)"
    ))
    .bind(call.id.as_uuid())
    .bind(call.room_id.as_uuid())
    .bind(call.media.as_str())
    .bind(call.caller.user_id.as_str())
    .bind(call.caller.session.map(|s| *s.as_uuid()))
    .bind(call.caller.until.map(Timestamp::as_millis))
    .bind(call.callee.user_id.as_str())
    .bind(call.callee.session.map(|s| *s.as_uuid()))
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

/// Inserts a room; `$7` is its `direct_key`, `$8` its `open_support_of`.
macro_rules! insert_room {
    () => {
        "INSERT INTO rooms (id, kind, name, visibility, created_by, created_at, last_seq, last_activity, direct_key,
                           open_support_of)
         VALUES ($1, $2, $3, $4, $5, $6, 0, $6, $7, $8)"
    };
}

/// Takes the transaction-long advisory lock on `$1`'s own rooms. Whoever
/// counts a user's own rooms against a limit holds it, so that of racing
/// processes one counts, inserts and commits before the next counts. Taken
/// before a room's lock ([`LOCK_ROOM`]) when both are needed, never after.
const LOCK_OWN_ROOMS: &str = "SELECT pg_advisory_xact_lock(hashtextextended('chat:own:' || $1, 0))";

/// Takes the transaction-long advisory lock on room `$1`'s members, held by
/// whoever counts them against a limit.
const LOCK_ROOM: &str = "SELECT pg_advisory_xact_lock(hashtextextended('chat:room:' || $1::text, 0))";

/// Counts the rooms user `$1` joined by themselves, from their entries in
/// `members_own_by_user` alone. No LIMIT: with one, PostgreSQL's planner
/// reads the table instead for a user who is a member of many rooms (a
/// support agent), expecting to meet enough own rooms soon.
const COUNT_OWN_ROOMS: &str = "SELECT COUNT(*) FROM members WHERE user_id = $1 AND self_joined";

/// How many rooms `user` joined by themselves.
async fn own_rooms(conn: &mut PgConnection, user: &UserId) -> Result<u64> {
    let n: i64 = sqlx::query_scalar(COUNT_OWN_ROOMS).bind(user.as_str()).fetch_one(&mut *conn).await.db()?;
    codec::count_from_db(n)
}

/// The body of [`Store::create_room`], inside a transaction: the outer error
/// is the database's, the inner one the answer to the caller.
async fn create_room_in(
    conn: &mut PgConnection,
    new: NewRoom,
    direct_key: Option<String>,
    limits: MemberLimits,
) -> Result<chat_core::Result<(Room, bool)>> {
    let created_at = new.created_at.as_millis();
    let open_support_of = (new.kind == RoomKind::Support).then(|| new.created_by.as_str());
    // Statements see what was committed when they start, so everything
    // counted below comes after the lock.
    sqlx::query(LOCK_OWN_ROOMS).bind(new.created_by.as_str()).execute(&mut *conn).await.db()?;
    // An existing direct room of the pair, or open support room of the
    // creator, is the answer whatever the creator's quota.
    let (existing, insert) = match (&direct_key, open_support_of) {
        (Some(key), _) => (
            Some((concat!("SELECT ", room_cols!(), " FROM rooms WHERE direct_key = $1"), key.as_str())),
            concat!(insert_room!(), " ON CONFLICT (direct_key) DO NOTHING"),
        ),
        (None, Some(creator)) => (
            Some((concat!("SELECT ", room_cols!(), " FROM rooms WHERE open_support_of = $1"), creator)),
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
    // The UNIQUE indexes decide, not the lookup above: the other member of a
    // direct pair may be making the same room, and a racing insert of the
    // same key waits for the first to commit, then skips.
    let inserted = sqlx::query(insert)
        .bind(new.id.as_uuid())
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
    if new.kind == RoomKind::Support {
        // In the queue from its first message on (`waiting_since`).
        sqlx::query("INSERT INTO support_queue (room_id, last_activity) VALUES ($1, $2)")
            .bind(new.id.as_uuid())
            .bind(new.created_at.as_millis())
            .execute(&mut *conn)
            .await
            .db()?;
    }
    let users: Vec<&str> = new.members.iter().map(|(user, _)| user.as_str()).collect();
    let roles: Vec<&str> = new.members.iter().map(|(_, role)| role.as_str()).collect();
    // WITH ORDINALITY keeps the list's order, so `pos` follows it. The
    // creator joins by themselves; the others were added by them.
    sqlx::query(
        "INSERT INTO members (room_id, user_id, role, joined_at, self_joined)
         SELECT $1, u.user_id, u.role, $4, u.user_id = $5
         FROM unnest($2::text[], $3::text[]) WITH ORDINALITY AS u(user_id, role, n)
         ORDER BY u.n
         ON CONFLICT (room_id, user_id) DO NOTHING",
    )
    .bind(new.id.as_uuid())
    .bind(&users)
    .bind(&roles)
    .bind(created_at)
    .bind(new.created_by.as_str())
    .execute(&mut *conn)
    .await
    .db()?;
    Ok(Ok((new.room(), true)))
}

/// Inserts the new messages of a planned batch in one statement and returns
/// how many rows went in. With `skip_stored`, a row whose idempotency key is
/// taken is skipped instead of failing the statement.
async fn insert_planned(
    conn: &mut PgConnection,
    batch: &[NewMessage],
    plan: &[Outcome],
    skip_stored: bool,
) -> Result<u64> {
    let n = new_count(plan);
    let mut rooms = Vec::with_capacity(n);
    let mut seqs = Vec::with_capacity(n);
    let mut ids = Vec::with_capacity(n);
    let mut senders = Vec::with_capacity(n);
    let mut client_ids = Vec::with_capacity(n);
    let mut bodies = Vec::with_capacity(n);
    let mut attachments = Vec::with_capacity(n);
    let mut replies = Vec::with_capacity(n);
    let mut times = Vec::with_capacity(n);
    let mut words = Vec::with_capacity(n);
    let mut calls = Vec::with_capacity(n);
    for (new, outcome) in batch.iter().zip(plan) {
        let Outcome::New(seq) = *outcome else { continue };
        rooms.push(*new.room_id.as_uuid());
        seqs.push(seq);
        ids.push(*new.id.as_uuid());
        senders.push(new.sender_id.as_str());
        client_ids.push(new.client_msg_id.as_str());
        bodies.push(new.body.as_str());
        attachments.push(codec::attachments_to_db(&new.attachments)?);
        replies.push(new.reply_to.map(|id| *id.as_uuid()));
        times.push(new.created_at.as_millis());
        words.push(search_words(&new.body));
        calls.push(codec::call_summary_to_db(new.call.as_deref())?);
    }
    if n == 0 {
        return Ok(0);
    }
    let sql = if skip_stored {
        concat!(
            "INSERT INTO messages (room_id, seq, id, sender_id, client_msg_id, body, attachments, reply_to, created_at,
                                   search, call)
             SELECT r, s, i, se, c, b, a::jsonb, rt, t, array_to_tsvector(string_to_array(w, ' ')), k::jsonb
             FROM unnest($1::uuid[], $2::int8[], $3::uuid[], $4::text[], $5::text[], $6::text[], $7::text[],
                         $8::uuid[], $9::int8[], $10::text[], $11::text[]) AS u(r, s, i, se, c, b, a, rt, t, w, k)",
            " ON CONFLICT (room_id, sender_id, client_msg_id) DO NOTHING"
        )
    } else {
        "INSERT INTO messages (room_id, seq, id, sender_id, client_msg_id, body, attachments, reply_to, created_at,
                               search, call)
         SELECT r, s, i, se, c, b, a::jsonb, rt, t, array_to_tsvector(string_to_array(w, ' ')), k::jsonb
         FROM unnest($1::uuid[], $2::int8[], $3::uuid[], $4::text[], $5::text[], $6::text[], $7::text[],
                     $8::uuid[], $9::int8[], $10::text[], $11::text[]) AS u(r, s, i, se, c, b, a, rt, t, w, k)"
    };
    Ok(sqlx::query(sql)
        .bind(&rooms)
        .bind(&seqs)
        .bind(&ids)
        .bind(&senders)
        .bind(&client_ids)
        .bind(&bodies)
        .bind(&attachments)
        .bind(&replies)
        .bind(&times)
        .bind(&words)
        .bind(&calls)
        .execute(&mut *conn)
        .await
        .db()?
        .rows_affected())
}

/// The stored messages that share an idempotency key with a message of the batch.
async fn stored_copies<'a>(conn: &mut PgConnection, batch: &'a [NewMessage]) -> Result<HashMap<Key<'a>, Message>> {
    let rooms: Vec<Uuid> = batch.iter().map(|m| *m.room_id.as_uuid()).collect();
    let senders: Vec<&str> = batch.iter().map(|m| m.sender_id.as_str()).collect();
    let client_ids: Vec<&str> = batch.iter().map(|m| m.client_msg_id.as_str()).collect();
    let rows = sqlx::query(concat!(
        "SELECT ",
        message_cols!(),
        " FROM messages WHERE (room_id, sender_id, client_msg_id) IN
            (SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[]))"
    ))
    .bind(&rooms)
    .bind(&senders)
    .bind(&client_ids)
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

/// The first statement of an append: locks the rooms of `$1` in id order
/// (`FOR NO KEY UPDATE`: the counter is what serialises writers) and returns
/// each with its counter, its closed flag and the senders among the (room,
/// sender) pairs of `$2`/`$3` who are its members. Each pair is one probe of
/// the members' primary key. A removal that commits after this statement is
/// caught by the cursors' update (see [`append_in`]). A missing room returns
/// no row.
const LOCK_AND_ADMIT: &str = "WITH locked AS MATERIALIZED (
         SELECT id, last_seq, closed FROM rooms WHERE id = ANY($1) ORDER BY id FOR NO KEY UPDATE),
     admitted AS MATERIALIZED (
         SELECT m.room_id, m.user_id FROM unnest($2::uuid[], $3::text[]) AS p(room_id, user_id)
         JOIN members m ON m.room_id = p.room_id AND m.user_id = p.user_id)
     SELECT l.id, l.last_seq, l.closed,
            ARRAY(SELECT a.user_id FROM admitted a WHERE a.room_id = l.id) AS senders
     FROM locked l ORDER BY l.id";

/// How often a batch is written again when memberships change under it
/// before the store gives up (as unavailable): once is all a removal takes.
const APPEND_ATTEMPTS: usize = 3;

/// What one attempt at an append came to.
enum Attempt {
    /// Written; commit it.
    Done(Vec<chat_core::Result<Appended>>),
    /// A sender stopped being a member after the probe: roll back and start over.
    Raced(Vec<NewMessage>),
}

/// The body of [`Store::append_messages`], inside one transaction.
async fn append_in(conn: &mut PgConnection, batch: Vec<NewMessage>) -> Result<Attempt> {
    // Lock every room of the batch, in id order, read its counter, and find
    // who may write there, in the statement that reads the counters.
    let room_ids: Vec<Uuid> = rooms_of(&batch).iter().map(|id| *id.as_uuid()).collect();
    let senders = senders_of(&batch);
    let (pair_rooms, pair_users): (Vec<Uuid>, Vec<&str>) =
        senders.iter().map(|(room, user)| (*room.as_uuid(), *user)).unzip();
    let locked: Vec<(Uuid, i64, bool, Vec<String>)> = sqlx::query_as(LOCK_AND_ADMIT)
        .bind(&room_ids)
        .bind(&pair_rooms)
        .bind(&pair_users)
        .fetch_all(&mut *conn)
        .await
        .db()?;
    let mut found = Found::default();
    for (id, last_seq, closed, members) in &locked {
        let room = RoomId::from_uuid(*id);
        found.rooms.insert(room, RoomState { last_seq: *last_seq, closed: *closed });
        // Borrow the sender from the batch, which outlives the plan.
        found
            .members
            .extend(senders.iter().filter(|(r, user)| *r == room && members.iter().any(|m| m == user)).copied());
    }

    // Most batches hold no retry: insert them as numbered. When the unique
    // index skips a row, take this batch's rows back out (the room locks mean
    // every row past the old counters is ours) and renumber around the stored
    // copies.
    let files = has_files(&batch);
    let mut outcomes = if files {
        // A batch posting files (rare) reads its stored copies first, so that
        // a retry answers the stored message rather than a taken file.
        found.files = attachments::lock_files(conn, &file_ids(&batch)).await?.into_iter().collect();
        let stored = stored_copies(conn, &batch).await?;
        plan(&batch, &found, &stored)
    } else {
        plan(&batch, &found, &HashMap::new())
    };
    let expected = new_count(&outcomes) as u64;
    if insert_planned(conn, &batch, &outcomes, true).await? != expected {
        let (rooms, lasts): (Vec<Uuid>, Vec<i64>) = locked.iter().map(|(id, last_seq, ..)| (*id, *last_seq)).unzip();
        sqlx::query(
            "DELETE FROM messages m USING unnest($1::uuid[], $2::int8[]) AS r(id, last)
             WHERE m.room_id = r.id AND m.seq > r.last",
        )
        .bind(&rooms)
        .bind(&lasts)
        .execute(&mut *conn)
        .await
        .db()?;
        let stored = stored_copies(conn, &batch).await?;
        outcomes = plan(&batch, &found, &stored);
        let expected = new_count(&outcomes) as u64;
        let inserted = insert_planned(conn, &batch, &outcomes, false).await?;
        if inserted != expected {
            return Err(Error::Database("a renumbered batch did not insert every new message".into()));
        }
    }

    // Counters, activity times and the senders' cursors, one statement each.
    // A support room's first message puts it in the queue (`waiting_since`),
    // which later ones leave alone; each moves its activity time, which
    // orders the rooms bridges catch up from.
    let Moves { rooms, cursors } = moves(&batch, &outcomes);
    if !rooms.is_empty() {
        let ids: Vec<Uuid> = rooms.iter().map(|r| *r.id.as_uuid()).collect();
        let seqs: Vec<i64> = rooms.iter().map(|r| r.last_seq).collect();
        let times: Vec<i64> = rooms.iter().map(|r| r.last_activity).collect();
        let firsts: Vec<i64> = rooms.iter().map(|r| r.first_at).collect();
        sqlx::query(
            "WITH r AS (
                 UPDATE rooms SET last_seq = u.seq, last_activity = GREATEST(rooms.last_activity, u.at)
                 FROM unnest($1::uuid[], $2::int8[], $3::int8[], $4::int8[]) AS u(id, seq, at, first_at)
                 WHERE rooms.id = u.id
                 RETURNING rooms.id, rooms.kind, rooms.last_activity, u.first_at)
             UPDATE support_queue q
             SET last_activity = r.last_activity, waiting_since = COALESCE(q.waiting_since, r.first_at) FROM r
             WHERE q.room_id = r.id AND r.kind = 'support'",
        )
        .bind(&ids)
        .bind(&seqs)
        .bind(&times)
        .bind(&firsts)
        .execute(&mut *conn)
        .await
        .db()?;

        let rooms: Vec<Uuid> = cursors.iter().map(|c| *c.0.as_uuid()).collect();
        let users: Vec<&str> = cursors.iter().map(|c| c.1).collect();
        let seqs: Vec<i64> = cursors.iter().map(|c| c.2).collect();
        // Each sender with a new message was a member at the probe; this
        // statement sees what committed since (and waits for what is
        // committing), so a row it cannot find is a membership removed in
        // between, and the batch must not be stored as it is.
        let moved = sqlx::query(
            "UPDATE members SET read_seq = GREATEST(members.read_seq, u.seq),
                                delivered_seq = GREATEST(members.delivered_seq, u.seq)
             FROM unnest($1::uuid[], $2::text[], $3::int8[]) AS u(room_id, user_id, seq)
             WHERE members.room_id = u.room_id AND members.user_id = u.user_id",
        )
        .bind(&rooms)
        .bind(&users)
        .bind(&seqs)
        .execute(&mut *conn)
        .await
        .db()?
        .rows_affected();
        if moved != cursors.len() as u64 {
            return Ok(Attempt::Raced(batch));
        }
    }
    if files {
        attachments::bind_files(conn, &bindings(&batch, &outcomes)).await?;
    }
    answers(batch, outcomes).map(Attempt::Done)
}

/// The body of [`Store::add_member`], inside a transaction: the outer error
/// is the database's, the inner one the answer to the caller.
async fn add_member_in(
    conn: &mut PgConnection,
    room: RoomId,
    user: &UserId,
    joining: Joining,
    limits: MemberLimits,
) -> Result<chat_core::Result<bool>> {
    // The user's lock first (only a user joining by themselves is counted),
    // then the room's, as every writer takes them. The statement after the
    // locks sees every membership committed before them, and inserts only
    // when the limits allow; it returns what it found either way.
    if joining.self_joined {
        sqlx::query(LOCK_OWN_ROOMS).bind(user.as_str()).execute(&mut *conn).await.db()?;
    }
    sqlx::query(LOCK_ROOM).bind(room.as_uuid()).execute(&mut *conn).await.db()?;
    let (exists, member, banned, members, own, inserted): (bool, bool, bool, i64, i64, bool) = sqlx::query_as(
        "WITH found AS (
             SELECT EXISTS (SELECT 1 FROM rooms WHERE id = $1) AS room_exists,
                    EXISTS (SELECT 1 FROM members WHERE room_id = $1 AND user_id = $2) AS is_member,
                    EXISTS (SELECT 1 FROM room_bans WHERE room_id = $1 AND user_id = $2) AS is_banned,
                    (SELECT COUNT(*) FROM members WHERE room_id = $1) AS members,
                    CASE WHEN $5 THEN (SELECT COUNT(*) FROM members WHERE user_id = $2 AND self_joined)
                         ELSE 0 END AS own),
         inserted AS (
             INSERT INTO members (room_id, user_id, role, joined_at, self_joined)
             SELECT $1, $2, $3, $4, $5 FROM found
             WHERE room_exists AND NOT is_member AND NOT is_banned AND members < $6 AND (NOT $5 OR own < $7)
             ON CONFLICT (room_id, user_id) DO NOTHING
             RETURNING 1)
         SELECT room_exists, is_member, is_banned, members, own, EXISTS (SELECT 1 FROM inserted) FROM found",
    )
    .bind(room.as_uuid())
    .bind(user.as_str())
    .bind(joining.role.as_str())
    .bind(joining.at.as_millis())
    .bind(joining.self_joined)
    .bind(limit_to_db(limits.max_members))
    .bind(limit_to_db(limits.max_own_rooms))
    .fetch_one(&mut *conn)
    .await
    .db()?;
    Ok(if !exists {
        Err(chat_core::Error::NotFound("room"))
    } else if member {
        Ok(false)
    } else if banned {
        Err(chat_core::store::banned_error())
    } else {
        // Every writer of this room's memberships holds its lock, so the
        // insert skips only what `is_member` saw.
        limits
            .check_join(codec::count_from_db(members)?, codec::count_from_db(own)?, joining.self_joined)
            .map(|()| inserted)
    })
}

/// Records a ban and removes the membership, under the room's lock that
/// [`add_member_in`] takes too, so that a join racing the ban either
/// commits before it (and is removed here) or sees it.
async fn ban_member_in(conn: &mut PgConnection, room: RoomId, ban: &Ban) -> Result<chat_core::Result<bool>> {
    sqlx::query(LOCK_ROOM).bind(room.as_uuid()).execute(&mut *conn).await.db()?;
    let (exists, removed): (bool, bool) = sqlx::query_as(
        "WITH found AS (SELECT EXISTS (SELECT 1 FROM rooms WHERE id = $1) AS room_exists),
         banned AS (
             INSERT INTO room_bans (room_id, user_id, banned_by, banned_at)
             SELECT $1, $2, $3, $4 FROM found WHERE room_exists
             ON CONFLICT (room_id, user_id) DO NOTHING),
         removed AS (DELETE FROM members WHERE room_id = $1 AND user_id = $2 RETURNING 1)
         SELECT room_exists, EXISTS (SELECT 1 FROM removed) FROM found",
    )
    .bind(room.as_uuid())
    .bind(ban.user_id.as_str())
    .bind(ban.banned_by.as_str())
    .bind(ban.banned_at.as_millis())
    .fetch_one(&mut *conn)
    .await
    .db()?;
    Ok(if exists { Ok(removed) } else { Err(chat_core::Error::NotFound("room")) })
}

impl PostgresStore {
    /// The room after a conditional update: the updated row when the update
    /// changed it, otherwise the room as stored (`None` when there is none).
    async fn updated_room(&self, id: RoomId, changed: Option<PgRow>) -> chat_core::Result<Option<(Room, bool)>> {
        if let Some(row) = changed {
            return Ok(Some((room_from_row(&row)?, true)));
        }
        let row = sqlx::query(concat!("SELECT ", room_cols!(), " FROM rooms WHERE id = $1"))
            .bind(id.as_uuid())
            .fetch_optional(&self.pool)
            .await
            .db()?;
        Ok(row.as_ref().map(room_from_row).transpose()?.map(|room| (room, false)))
    }
}

#[async_trait]
impl Store for PostgresStore {
    async fn upsert_user(&self, user: &User) -> chat_core::Result<()> {
        self.bounded(async {
            // A deleted user's row stays, and the WHERE leaves it as it is.
            let written = sqlx::query(
                "INSERT INTO users (id, name, avatar_url, roles, created_at) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (id) DO UPDATE
                 SET name = excluded.name, avatar_url = excluded.avatar_url, roles = excluded.roles
                 WHERE users.deleted_at IS NULL",
            )
            .bind(user.id.as_str())
            .bind(&user.name)
            .bind(user.avatar_url.as_deref())
            .bind(&user.roles)
            .bind(Timestamp::now().as_millis())
            .execute(&self.pool)
            .await
            .db()?
            .rows_affected();
            if written == 0 {
                return Err(chat_core::Error::conflict("the user was deleted"));
            }
            Ok(())
        })
        .await
    }

    async fn user(&self, id: &UserId) -> chat_core::Result<Option<User>> {
        self.bounded(async {
            let row = sqlx::query(concat!("SELECT ", user_cols!(), " FROM users WHERE id = $1"))
                .bind(id.as_str())
                .fetch_optional(&self.pool)
                .await
                .db()?;
            Ok(row.as_ref().map(user_from_row).transpose()?)
        })
        .await
    }

    async fn users(&self, ids: &[UserId]) -> chat_core::Result<Vec<User>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<&str> = ids.iter().map(UserId::as_str).collect();
        self.bounded(async {
            let rows = sqlx::query(concat!("SELECT ", user_cols!(), " FROM users WHERE id = ANY($1)"))
                .bind(&ids)
                .fetch_all(&self.pool)
                .await
                .db()?;
            Ok(rows.iter().map(user_from_row).collect::<Result<_>>()?)
        })
        .await
    }

    async fn search_users(&self, query: &str, limit: u32) -> chat_core::Result<Vec<User>> {
        // COLLATE "C" orders by bytes, as Rust compares strings.
        self.bounded(async {
            let rows = sqlx::query(concat!(
                "SELECT ",
                user_cols!(),
                " FROM users WHERE deleted_at IS NULL AND ",
                user_text_matches!("$1"),
                " ORDER BY name COLLATE \"C\", id COLLATE \"C\" LIMIT $2"
            ))
            .bind(query.to_ascii_lowercase())
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .db()?;
            Ok(rows.iter().map(user_from_row).collect::<Result<_>>()?)
        })
        .await
    }

    async fn account(&self, id: &UserId) -> chat_core::Result<Option<UserAccount>> {
        self.bounded(async {
            let row = sqlx::query(concat!("SELECT ", account_cols!(), " FROM users WHERE id = $1"))
                .bind(id.as_str())
                .fetch_optional(&self.pool)
                .await
                .db()?;
            Ok(row.as_ref().map(account_from_row).transpose()?)
        })
        .await
    }

    async fn list_accounts(&self, query: &UserListQuery) -> chat_core::Result<Vec<UserAccount>> {
        self.bounded(async {
            let rows = sqlx::query(LIST_ACCOUNTS)
                .bind(query.after.as_ref().map_or("", UserId::as_str))
                .bind(query.text.as_deref().map(str::to_ascii_lowercase))
                .bind(i64::from(query.limit))
                .fetch_all(&self.pool)
                .await
                .db()?;
            Ok(rows.iter().map(account_from_row).collect::<Result<_>>()?)
        })
        .await
    }

    async fn update_user(&self, id: &UserId, patch: &UserPatch, at: Timestamp) -> chat_core::Result<Option<User>> {
        self.bounded(async {
            let row = sqlx::query(concat!(
                "UPDATE users SET name = coalesce($2, name),
                                  avatar_url = CASE WHEN $3 THEN $4 ELSE avatar_url END,
                                  roles = coalesce($5, roles),
                                  profile_set_at = $6
                 WHERE id = $1 AND deleted_at IS NULL RETURNING ",
                user_cols!()
            ))
            .bind(id.as_str())
            .bind(patch.name.as_deref())
            .bind(patch.avatar_url.is_some())
            .bind(patch.avatar_url.as_ref().and_then(Option::as_deref))
            .bind(patch.roles.as_deref())
            .bind(at.as_millis())
            .fetch_optional(&self.pool)
            .await
            .db()?;
            Ok(row.as_ref().map(user_from_row).transpose()?)
        })
        .await
    }

    async fn set_user_active(&self, id: &UserId, active: bool) -> chat_core::Result<bool> {
        self.bounded(async {
            let changed = sqlx::query("UPDATE users SET active = $2 WHERE id = $1 AND deleted_at IS NULL")
                .bind(id.as_str())
                .bind(active)
                .execute(&self.pool)
                .await
                .db()?
                .rows_affected();
            Ok(changed > 0)
        })
        .await
    }

    async fn revoke_tokens(&self, id: &UserId, at: Timestamp) -> chat_core::Result<bool> {
        // Never back: a process whose clock is behind cannot let older
        // tokens in again.
        self.bounded(async {
            let changed = sqlx::query(
                "UPDATE users SET tokens_revoked_at = GREATEST(tokens_revoked_at, $2)
                 WHERE id = $1 AND deleted_at IS NULL",
            )
            .bind(id.as_str())
            .bind(at.as_millis())
            .execute(&self.pool)
            .await
            .db()?
            .rows_affected();
            Ok(changed > 0)
        })
        .await
    }

    async fn delete_user(&self, id: &UserId, at: Timestamp) -> chat_core::Result<Option<Vec<RoomId>>> {
        self.bounded(async {
            let mut tx = self.begin().await?;
            let deleted = sqlx::query(
                "UPDATE users SET deleted_at = $2, name = $3, avatar_url = NULL, roles = '{}'
                 WHERE id = $1 AND deleted_at IS NULL",
            )
            .bind(id.as_str())
            .bind(at.as_millis())
            .bind(chat_core::user::DELETED_USER_NAME)
            .execute(&mut *tx)
            .await
            .db()?
            .rows_affected();
            if deleted == 0 {
                return Ok(None);
            }
            sqlx::query(
                "INSERT INTO deleted_members (room_id, user_id, deleted_at)
                 SELECT room_id, user_id, $2 FROM members WHERE user_id = $1
                 ON CONFLICT DO NOTHING",
            )
            .bind(id.as_str())
            .bind(at.as_millis())
            .execute(&mut *tx)
            .await
            .db()?;
            // An append racing this either committed first or starts over
            // and finds the memberships gone (see the module docs).
            let rooms: Vec<Uuid> = sqlx::query_scalar("DELETE FROM members WHERE user_id = $1 RETURNING room_id")
                .bind(id.as_str())
                .fetch_all(&mut *tx)
                .await
                .db()?;
            // Their browsers are told nothing more.
            sqlx::query("DELETE FROM push_subscriptions WHERE user_id = $1")
                .bind(id.as_str())
                .execute(&mut *tx)
                .await
                .db()?;
            tx.commit().await.db()?;
            Ok(Some(rooms.into_iter().map(RoomId::from_uuid).collect()))
        })
        .await
    }

    async fn deleted_members(&self, room: RoomId) -> chat_core::Result<Vec<UserId>> {
        self.bounded(async {
            let ids: Vec<String> = sqlx::query_scalar(
                "SELECT user_id FROM deleted_members WHERE room_id = $1 ORDER BY deleted_at, user_id COLLATE \"C\"",
            )
            .bind(room.as_uuid())
            .fetch_all(&self.pool)
            .await
            .db()?;
            Ok(ids.into_iter().map(|id| codec::user_id(id, "deleted_members.user_id")).collect::<Result<_>>()?)
        })
        .await
    }

    async fn touch_user(&self, id: &UserId, at: Timestamp) -> chat_core::Result<Option<UserAccount>> {
        self.bounded(async {
            let row = sqlx::query(concat!("UPDATE users SET last_seen = $2 WHERE id = $1 RETURNING ", account_cols!()))
                .bind(id.as_str())
                .bind(at.as_millis())
                .fetch_optional(&self.pool)
                .await
                .db()?;
            Ok(row.as_ref().map(account_from_row).transpose()?)
        })
        .await
    }

    async fn create_room(&self, new: NewRoom, limits: MemberLimits) -> chat_core::Result<(Room, bool)> {
        let direct_key = match (new.kind, new.members.as_slice()) {
            (RoomKind::Direct, [(a, _), (b, _)]) => Some(NewRoom::direct_key(a, b)),
            (RoomKind::Direct, _) => {
                return Err(chat_core::Error::invalid("a direct room has exactly two members"));
            }
            _ => None,
        };
        self.bounded(async {
            let mut tx = self.begin().await?;
            let result = create_room_in(&mut tx, new, direct_key, limits).await;
            match finish(tx, result).await {
                Ok(answer) => answer,
                Err(Error::Conflict(source)) => {
                    tracing::debug!(error = %source, "room id already taken");
                    Err(chat_core::Error::conflict("room id already taken"))
                }
                Err(err) => Err(err.into()),
            }
        })
        .await
    }

    async fn room(&self, id: RoomId) -> chat_core::Result<Option<Room>> {
        self.bounded(async {
            let row = sqlx::query(concat!("SELECT ", room_cols!(), " FROM rooms WHERE id = $1"))
                .bind(id.as_uuid())
                .fetch_optional(&self.pool)
                .await
                .db()?;
            Ok(row.as_ref().map(room_from_row).transpose()?)
        })
        .await
    }

    async fn last_seqs(&self, rooms: &[RoomId]) -> chat_core::Result<Vec<(RoomId, u64)>> {
        if rooms.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<uuid::Uuid> = rooms.iter().map(|r| *r.as_uuid()).collect();
        self.bounded(async {
            let rows: Vec<(uuid::Uuid, i64)> = sqlx::query_as("SELECT id, last_seq FROM rooms WHERE id = ANY($1)")
                .bind(&ids)
                .fetch_all(&self.pool)
                .await
                .db()?;
            Ok(rows.into_iter().map(|(id, seq)| (RoomId::from_uuid(id), seq.max(0) as u64)).collect())
        })
        .await
    }

    async fn claim_room(&self, id: RoomId, user: &UserId) -> chat_core::Result<Option<(Room, bool)>> {
        self.bounded(async {
            let changed = sqlx::query(concat!(
                "UPDATE rooms SET claimed_by = $2 WHERE id = $1 AND claimed_by IS DISTINCT FROM $2 RETURNING ",
                room_cols!()
            ))
            .bind(id.as_uuid())
            .bind(user.as_str())
            .fetch_optional(&self.pool)
            .await
            .db()?;
            self.updated_room(id, changed).await
        })
        .await
    }

    async fn close_room(&self, id: RoomId) -> chat_core::Result<Option<(Room, bool)>> {
        self.bounded(async {
            // The room leaves the support queue, and its creator may open
            // another support room.
            let changed = sqlx::query(concat!(
                "WITH closed AS (
                     UPDATE rooms SET closed = true, open_support_of = NULL WHERE id = $1 AND NOT closed
                     RETURNING ",
                room_cols!(),
                "), dequeued AS (UPDATE support_queue SET waiting_since = NULL WHERE room_id IN (SELECT id FROM closed))
                 SELECT * FROM closed"
            ))
            .bind(id.as_uuid())
            .fetch_optional(&self.pool)
            .await
            .db()?;
            self.updated_room(id, changed).await
        })
        .await
    }

    async fn rooms_of_user(&self, user: &UserId) -> chat_core::Result<Vec<RoomSummary>> {
        self.bounded(async {
            let rows = sqlx::query(
                "SELECT r.id, r.kind, r.name, r.topic, r.visibility, r.created_by, r.created_at, r.last_seq,
                    r.claimed_by, r.closed, m.read_seq, m.muted_until
                 FROM members m JOIN rooms r ON r.id = m.room_id
                 WHERE m.user_id = $1
                 ORDER BY r.last_activity DESC, r.id DESC",
            )
            .bind(user.as_str())
            .fetch_all(&self.pool)
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
        })
        .await
    }

    async fn update_room(&self, id: RoomId, changes: &RoomChanges) -> chat_core::Result<Option<Room>> {
        self.bounded(async {
            let row = sqlx::query(concat!(
                "UPDATE rooms SET name = CASE WHEN $2 THEN $3 ELSE name END,
                                  topic = CASE WHEN $4 THEN $5 ELSE topic END
                 WHERE id = $1 RETURNING ",
                room_cols!()
            ))
            .bind(id.as_uuid())
            .bind(changes.name.is_some())
            .bind(changes.name.clone().flatten())
            .bind(changes.topic.is_some())
            .bind(changes.topic.clone().flatten())
            .fetch_optional(&self.pool)
            .await
            .db()?;
            Ok(row.as_ref().map(room_from_row).transpose()?)
        })
        .await
    }

    async fn support_rooms(&self, limit: u32) -> chat_core::Result<Vec<Room>> {
        self.bounded(async {
            let rows = sqlx::query(concat!(
                "SELECT ",
                room_cols!(),
                " FROM rooms JOIN (SELECT room_id, last_activity AS activity FROM support_queue
                   ORDER BY last_activity DESC, room_id DESC LIMIT $1) AS q ON q.room_id = rooms.id
                 ORDER BY q.activity DESC, rooms.id DESC"
            ))
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .db()?;
            Ok(rows.iter().map(room_from_row).collect::<Result<_>>()?)
        })
        .await
    }

    async fn rooms_active_since(
        &self,
        since: Timestamp,
        after: Option<RoomId>,
        limit: u32,
    ) -> chat_core::Result<Vec<ActiveRoom>> {
        // No index covers `last_activity` (sends update it in place, HOT):
        // a catch-up scans the table. Without `after`, start before every
        // room: no UUID sorts before the nil one.
        let after = after.map_or(Uuid::nil(), |id| *id.as_uuid());
        self.bounded(async {
            let rows = sqlx::query(concat!(
                "SELECT ",
                room_cols!(),
                ", last_activity FROM rooms WHERE (last_activity, id) > ($1, $2) ORDER BY last_activity, id LIMIT $3"
            ))
            .bind(since.as_millis())
            .bind(after)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .db()?;
            let mut out = Vec::with_capacity(rows.len());
            for row in &rows {
                let last_activity = codec::time_from_db(row.try_get("last_activity").db()?);
                out.push(ActiveRoom { room: room_from_row(row)?, last_activity });
            }
            Ok(out)
        })
        .await
    }

    async fn support_queue(&self, after: Option<QueueCursor>, limit: u32) -> chat_core::Result<Vec<QueuedRoom>> {
        // Without a cursor, start before every room.
        let (after_at, after_id) =
            after.map_or((i64::MIN, Uuid::nil()), |c| (c.waiting_since.as_millis(), *c.room_id.as_uuid()));
        self.bounded(async {
            let rows = sqlx::query(support_queue_sql!())
                .bind(after_at)
                .bind(after_id)
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await
                .db()?;
            let mut out = Vec::with_capacity(rows.len());
            for row in &rows {
                let waiting_since = codec::time_from_db(row.try_get("waiting_since").db()?);
                out.push(QueuedRoom { room: room_from_row(row)?, waiting_since });
            }
            Ok(out)
        })
        .await
    }

    async fn room_count_of_user(&self, user: &UserId) -> chat_core::Result<u64> {
        self.bounded(async {
            let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM members WHERE user_id = $1")
                .bind(user.as_str())
                .fetch_one(&self.pool)
                .await
                .db()?;
            Ok(codec::count_from_db(n)?)
        })
        .await
    }

    async fn member(&self, room: RoomId, user: &UserId) -> chat_core::Result<Option<Member>> {
        self.bounded(async {
            let row =
                sqlx::query(concat!("SELECT ", member_cols!(), " FROM members WHERE room_id = $1 AND user_id = $2"))
                    .bind(room.as_uuid())
                    .bind(user.as_str())
                    .fetch_optional(&self.pool)
                    .await
                    .db()?;
            Ok(row.as_ref().map(member_from_row).transpose()?)
        })
        .await
    }

    async fn members(&self, room: RoomId) -> chat_core::Result<Vec<Member>> {
        self.bounded(async {
            let rows = sqlx::query(concat!("SELECT ", member_cols!(), " FROM members WHERE room_id = $1 ORDER BY pos"))
                .bind(room.as_uuid())
                .fetch_all(&self.pool)
                .await
                .db()?;
            Ok(rows.iter().map(member_from_row).collect::<Result<_>>()?)
        })
        .await
    }

    async fn member_count(&self, room: RoomId) -> chat_core::Result<u64> {
        self.bounded(async {
            let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM members WHERE room_id = $1")
                .bind(room.as_uuid())
                .fetch_one(&self.pool)
                .await
                .db()?;
            Ok(codec::count_from_db(n)?)
        })
        .await
    }

    async fn add_member(
        &self,
        room: RoomId,
        user: &UserId,
        joining: Joining,
        limits: MemberLimits,
    ) -> chat_core::Result<bool> {
        self.bounded(async {
            let mut tx = self.begin().await?;
            let result = add_member_in(&mut tx, room, user, joining, limits).await;
            finish(tx, result).await?
        })
        .await
    }

    async fn remove_member(&self, room: RoomId, user: &UserId) -> chat_core::Result<bool> {
        self.bounded(async {
            let removed = sqlx::query("DELETE FROM members WHERE room_id = $1 AND user_id = $2")
                .bind(room.as_uuid())
                .bind(user.as_str())
                .execute(&self.pool)
                .await
                .db()?
                .rows_affected();
            Ok(removed > 0)
        })
        .await
    }

    async fn ban_member(&self, room: RoomId, ban: &Ban) -> chat_core::Result<bool> {
        self.bounded(async {
            let mut tx = self.begin().await?;
            let result = ban_member_in(&mut tx, room, ban).await;
            finish(tx, result).await?
        })
        .await
    }

    async fn unban_member(&self, room: RoomId, user: &UserId) -> chat_core::Result<bool> {
        self.bounded(async {
            let removed = sqlx::query("DELETE FROM room_bans WHERE room_id = $1 AND user_id = $2")
                .bind(room.as_uuid())
                .bind(user.as_str())
                .execute(&self.pool)
                .await
                .db()?
                .rows_affected();
            Ok(removed > 0)
        })
        .await
    }

    async fn bans(&self, room: RoomId, limit: u32) -> chat_core::Result<Vec<Ban>> {
        self.bounded(async {
            let rows: Vec<(String, String, i64)> = sqlx::query_as(
                "SELECT user_id, banned_by, banned_at FROM room_bans WHERE room_id = $1
                 ORDER BY banned_at DESC, user_id LIMIT $2",
            )
            .bind(room.as_uuid())
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .db()?;
            Ok(rows.into_iter().map(codec::ban_from_db).collect::<Result<_>>()?)
        })
        .await
    }

    async fn set_member_role(&self, room: RoomId, user: &UserId, role: MemberRole) -> chat_core::Result<bool> {
        self.bounded(async {
            let changed = sqlx::query("UPDATE members SET role = $3 WHERE room_id = $1 AND user_id = $2")
                .bind(room.as_uuid())
                .bind(user.as_str())
                .bind(role.as_str())
                .execute(&self.pool)
                .await
                .db()?
                .rows_affected();
            Ok(changed > 0)
        })
        .await
    }

    async fn set_muted(&self, room: RoomId, user: &UserId, until: Option<Timestamp>) -> chat_core::Result<bool> {
        self.bounded(async {
            let changed = sqlx::query("UPDATE members SET muted_until = $3 WHERE room_id = $1 AND user_id = $2")
                .bind(room.as_uuid())
                .bind(user.as_str())
                .bind(until.map(Timestamp::as_millis))
                .execute(&self.pool)
                .await
                .db()?
                .rows_affected();
            Ok(changed > 0)
        })
        .await
    }

    async fn co_members(&self, user: &UserId) -> chat_core::Result<Vec<UserId>> {
        self.bounded(async {
            let ids: Vec<String> = sqlx::query_scalar(
                "SELECT DISTINCT o.user_id FROM members m JOIN members o ON o.room_id = m.room_id
                 WHERE m.user_id = $1 AND o.user_id <> $1",
            )
            .bind(user.as_str())
            .fetch_all(&self.pool)
            .await
            .db()?;
            Ok(ids.into_iter().map(|id| codec::user_id(id, "members.user_id")).collect::<Result<_>>()?)
        })
        .await
    }

    async fn append_messages(&self, batch: Vec<NewMessage>) -> chat_core::Result<Vec<chat_core::Result<Appended>>> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        self.bounded(async {
            // One transaction: one durable commit for the whole batch, and
            // nothing of it stored when any part fails. A membership removed
            // while the batch was being written makes it start over; a second
            // attempt sees the removal from its first statement on.
            let mut batch = batch;
            for _ in 0..APPEND_ATTEMPTS {
                let mut tx = self.begin().await?;
                match append_in(&mut tx, batch).await {
                    Ok(Attempt::Done(answers)) => return Ok(finish(tx, Ok(answers)).await?),
                    Ok(Attempt::Raced(again)) => {
                        tracing::debug!("a sender left while their batch was written; writing it again");
                        tx.rollback().await.db()?;
                        batch = again;
                    }
                    Err(err) => return Ok(finish(tx, Err(err)).await?),
                }
            }
            Err(chat_core::Error::unavailable("memberships kept changing while a batch was written"))
        })
        .await
    }

    async fn message(&self, room: RoomId, id: MessageId) -> chat_core::Result<Option<Message>> {
        self.bounded(async {
            let row = sqlx::query(concat!("SELECT ", message_cols!(), " FROM messages WHERE id = $2 AND room_id = $1"))
                .bind(room.as_uuid())
                .bind(id.as_uuid())
                .fetch_optional(&self.pool)
                .await
                .db()?;
            Ok(row.as_ref().map(message_from_row).transpose()?)
        })
        .await
    }

    async fn edit_message(
        &self,
        room: RoomId,
        id: MessageId,
        body: &str,
        at: Timestamp,
    ) -> chat_core::Result<Option<Message>> {
        self.bounded(async {
            let row = sqlx::query(concat!(
                "UPDATE messages SET body = $3, edited_at = $4, search = array_to_tsvector(string_to_array($5, ' '))
                 WHERE id = $2 AND room_id = $1 RETURNING ",
                message_cols!()
            ))
            .bind(room.as_uuid())
            .bind(id.as_uuid())
            .bind(body)
            .bind(at.as_millis())
            .bind(search_words(body))
            .fetch_optional(&self.pool)
            .await
            .db()?;
            Ok(row.as_ref().map(message_from_row).transpose()?)
        })
        .await
    }

    async fn delete_message(&self, room: RoomId, id: MessageId, at: Timestamp) -> chat_core::Result<Option<Message>> {
        self.bounded(async {
            // The message and its files' records in one transaction: a file
            // is never served once its message is gone.
            let mut tx = self.begin().await?;
            let result = async {
                let row = sqlx::query(concat!(
                    "UPDATE messages SET body = '', attachments = '[]', deleted = TRUE, edited_at = $3, search = NULL
                     WHERE id = $2 AND room_id = $1 RETURNING ",
                    message_cols!()
                ))
                .bind(room.as_uuid())
                .bind(id.as_uuid())
                .bind(at.as_millis())
                .fetch_optional(&mut *tx)
                .await
                .db()?;
                if row.is_some() {
                    sqlx::query("UPDATE attachments SET removed = TRUE WHERE message_id = $1")
                        .bind(id.as_uuid())
                        .execute(&mut *tx)
                        .await
                        .db()?;
                }
                row.as_ref().map(message_from_row).transpose()
            }
            .await;
            Ok(finish(tx, result).await?)
        })
        .await
    }

    async fn changed_messages(&self, room: RoomId, since: Timestamp, limit: u32) -> chat_core::Result<Vec<Message>> {
        // A range of the room's primary key, filtered: edits are few, and
        // bridges ask rarely (after a restart or a lost event).
        self.bounded(async {
            let rows = sqlx::query(concat!(
                "SELECT ",
                message_cols!(),
                " FROM messages WHERE room_id = $1 AND edited_at >= $2 ORDER BY edited_at, seq LIMIT $3"
            ))
            .bind(room.as_uuid())
            .bind(since.as_millis())
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .db()?;
            Ok(rows.iter().map(message_from_row).collect::<Result<Vec<_>>>()?)
        })
        .await
    }

    async fn search_messages(&self, query: &SearchQuery) -> chat_core::Result<SearchPage> {
        // The GIN index finds the matching messages; those of the searcher's
        // rooms are sorted newest first. The cursor is the last result's
        // (created_at, id).
        let (before_at, before_id) = match &query.before {
            Some(text) => {
                let bad = || chat_core::Error::invalid("cursor is not one this server gave");
                let (at, id) = text.split_once('.').ok_or_else(bad)?;
                (at.parse::<i64>().map_err(|_| bad())?, Uuid::parse_str(id).map_err(|_| bad())?)
            }
            None => (i64::MAX, Uuid::max()),
        };
        let limit = i64::from(query.limit);
        self.bounded(async {
            let rows = sqlx::query(SEARCH_MESSAGES_SQL)
                .bind(words_query(&query.words))
                .bind(query.user.as_str())
                .bind(query.room.map(|r| *r.as_uuid()))
                .bind(before_at)
                .bind(before_id)
                .bind(limit + 1)
                .fetch_all(&self.pool)
                .await
                .db()?;
            let more = rows.len() > query.limit as usize;
            let messages: Vec<Message> =
                rows.iter().take(query.limit as usize).map(message_from_row).collect::<Result<_>>()?;
            let next =
                if more { messages.last().map(|m| format!("{}.{}", m.created_at.as_millis(), m.id)) } else { None };
            let room_ids: Vec<Uuid> = distinct_rooms(&messages).iter().map(|r| *r.as_uuid()).collect();
            let rooms = sqlx::query(concat!("SELECT ", room_cols!(), " FROM rooms WHERE id = ANY($1)"))
                .bind(&room_ids)
                .fetch_all(&self.pool)
                .await
                .db()?;
            let rooms = rooms.iter().map(room_from_row).collect::<Result<_>>()?;
            let results = search_hits(messages, rooms);
            Ok(SearchPage { results, next })
        })
        .await
    }

    async fn history(&self, room: RoomId, q: HistoryQuery) -> chat_core::Result<HistoryPage> {
        let room = *room.as_uuid();
        // One row more than asked tells whether more lie beyond the page.
        let fetch = i64::from(q.limit) + 1;
        self.bounded(async {
            let query = match (q.before_seq, q.after_seq) {
                (None, None) => sqlx::query(concat!(
                    "SELECT ",
                    message_cols!(),
                    " FROM messages WHERE room_id = $1 ORDER BY seq DESC LIMIT $2"
                ))
                .bind(room)
                .bind(fetch),
                (Some(before), None) => sqlx::query(concat!(
                    "SELECT ",
                    message_cols!(),
                    " FROM messages WHERE room_id = $1 AND seq < $2 ORDER BY seq DESC LIMIT $3"
                ))
                .bind(room)
                .bind(codec::seq_bound(before))
                .bind(fetch),
                (None, Some(after)) => sqlx::query(concat!(
                    "SELECT ",
                    message_cols!(),
                    " FROM messages WHERE room_id = $1 AND seq > $2 ORDER BY seq ASC LIMIT $3"
                ))
                .bind(room)
                .bind(codec::seq_bound(after))
                .bind(fetch),
                (Some(before), Some(after)) => sqlx::query(concat!(
                    "SELECT ",
                    message_cols!(),
                    " FROM messages WHERE room_id = $1 AND seq > $2 AND seq < $3 ORDER BY seq ASC LIMIT $4"
                ))
                .bind(room)
                .bind(codec::seq_bound(after))
                .bind(codec::seq_bound(before))
                .bind(fetch),
            };
            let rows = query.fetch_all(&self.pool).await.db()?;
            Ok(history_page(rows, &q, message_from_row)?)
        })
        .await
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
                "UPDATE members SET delivered_seq = $3 WHERE room_id = $1 AND user_id = $2 AND delivered_seq < $3"
            }
            // Reading implies delivery; GREATEST keeps the delivered cursor from moving back.
            ReceiptKind::Read => {
                "UPDATE members SET read_seq = $3, delivered_seq = GREATEST(delivered_seq, $3)
                 WHERE room_id = $1 AND user_id = $2 AND read_seq < $3"
            }
        };
        let up_to_db = codec::seq_to_db(up_to)?;
        self.bounded(async {
            let moved = sqlx::query(sql)
                .bind(room.as_uuid())
                .bind(user.as_str())
                .bind(up_to_db)
                .execute(&self.pool)
                .await
                .db()?
                .rows_affected();
            Ok((moved > 0).then_some(up_to))
        })
        .await
    }

    async fn start_call(&self, call: &Call) -> chat_core::Result<CallStart> {
        self.bounded(async {
            let mut tx = self.begin().await?;
            let result = start_call_in(&mut tx, call).await;
            Ok(finish(tx, result).await?)
        })
        .await
    }

    async fn call(&self, id: CallId) -> chat_core::Result<Option<Call>> {
        self.bounded(async {
            let row = sqlx::query(concat!("SELECT ", call_cols!(), " FROM calls WHERE id = $1"))
                .bind(id.as_uuid())
                .fetch_optional(&self.pool)
                .await
                .db()?;
            Ok(row.as_ref().map(call_from_row).transpose()?)
        })
        .await
    }

    async fn update_call(&self, call: &Call) -> chat_core::Result<Option<Call>> {
        self.bounded(async {
            // Under READ COMMITTED a racing update waits for this one's
            // commit, then finds the version moved on and changes nothing.
            let row = sqlx::query(concat!(
                "UPDATE calls SET state = $2, caller_session = $3, caller_until = $4, callee_session = $5,
                                  callee_until = $6, accepted_at = $7, ended_at = $8, end_reason = $9, logged = $10,
                                  version = version + 1
                 WHERE id = $1 AND version = $11 RETURNING ",
                call_cols!()
            ))
            .bind(call.id.as_uuid())
            .bind(call.state.as_str())
            .bind(call.caller.session.map(|s| *s.as_uuid()))
            .bind(call.caller.until.map(Timestamp::as_millis))
            .bind(call.callee.session.map(|s| *s.as_uuid()))
            .bind(call.callee.until.map(Timestamp::as_millis))
            .bind(call.accepted_at.map(Timestamp::as_millis))
            .bind(call.ended_at.map(Timestamp::as_millis))
            .bind(call.end_reason.map(EndReason::as_str))
            .bind(call.logged)
            .bind(codec::version_to_db(call.version))
            .fetch_optional(&self.pool)
            .await
            .db()?;
            Ok(row.as_ref().map(call_from_row).transpose()?)
        })
        .await
    }

    async fn renew_calls(&self, legs: &[(CallId, SessionId)], until: Timestamp) -> chat_core::Result<()> {
        if legs.is_empty() {
            return Ok(());
        }
        let ids: Vec<Uuid> = legs.iter().map(|(c, _)| *c.as_uuid()).collect();
        let sessions: Vec<Uuid> = legs.iter().map(|(_, s)| *s.as_uuid()).collect();
        self.bounded(async {
            sqlx::query(
                "UPDATE calls SET
                     caller_until = CASE WHEN (id, caller_session) IN (SELECT * FROM unnest($1::uuid[], $2::uuid[]))
                                    THEN $3 ELSE caller_until END,
                     callee_until = CASE WHEN (id, callee_session) IN (SELECT * FROM unnest($1::uuid[], $2::uuid[]))
                                    THEN $3 ELSE callee_until END
                 WHERE state <> 'ended' AND id = ANY($1)",
            )
            .bind(&ids)
            .bind(&sessions)
            .bind(until.as_millis())
            .execute(&self.pool)
            .await
            .db()?;
            Ok(())
        })
        .await
    }

    async fn due_calls(&self, now: Timestamp, limit: u32) -> chat_core::Result<Vec<Call>> {
        self.bounded(async {
            let rows = sqlx::query(concat!(
                "SELECT ",
                call_cols!(),
                " FROM calls WHERE state <> 'ended'
                    AND ((state = 'ringing' AND ring_until <= $1) OR caller_until <= $1 OR callee_until <= $1)
                  ORDER BY id LIMIT $2"
            ))
            .bind(now.as_millis())
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .db()?;
            Ok(rows.iter().map(call_from_row).collect::<Result<Vec<_>>>()?)
        })
        .await
    }

    async fn unlogged_calls(&self, before: Timestamp, limit: u32) -> chat_core::Result<Vec<Call>> {
        self.bounded(async {
            let rows = sqlx::query(concat!(
                "SELECT ",
                call_cols!(),
                " FROM calls WHERE state = 'ended' AND NOT logged AND ended_at <= $1 ORDER BY id LIMIT $2"
            ))
            .bind(before.as_millis())
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .db()?;
            Ok(rows.iter().map(call_from_row).collect::<Result<Vec<_>>>()?)
        })
        .await
    }

    async fn mark_call_logged(&self, id: CallId) -> chat_core::Result<()> {
        self.bounded(async {
            sqlx::query("UPDATE calls SET logged = TRUE WHERE id = $1")
                .bind(id.as_uuid())
                .execute(&self.pool)
                .await
                .db()?;
            Ok(())
        })
        .await
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
        self.secret(name, candidate).await
    }

    async fn ping(&self) -> chat_core::Result<()> {
        self.bounded(async {
            sqlx::query("SELECT 1").execute(&self.pool).await.db()?;
            Ok(())
        })
        .await
    }

    async fn close(&self) {
        self.pool.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_codes_are_classified() {
        // admin_shutdown, connection_failure, too_many_connections, disk_full,
        // query_canceled, serialization_failure, deadlock, lock_not_available,
        // read_only_sql_transaction.
        for code in ["57P01", "08006", "53300", "53100", "57014", "40001", "40P01", "55P03", "25006"] {
            assert!(is_transient_code(code), "{code} is transient");
        }
        // unique_violation, foreign_key_violation, syntax_error, undefined_table, check_violation.
        for code in ["23505", "23503", "42601", "42P01", "23514"] {
            assert!(!is_transient_code(code), "{code} is not transient");
        }
    }

    #[test]
    fn the_schema_version_is_the_newest_migration() {
        assert_eq!(MIGRATIONS.iter().map(|m| m.0).max(), Some(PostgresStore::SCHEMA_VERSION));
        assert!(MIGRATIONS.windows(2).all(|w| w[0].0 < w[1].0), "migrations are listed oldest first");
    }

    #[test]
    fn defaults_bound_every_wait() {
        let config = PostgresConfig::from_url("postgres://localhost/chat");
        assert!(config.acquire_timeout <= Duration::from_secs(5));
        assert!(config.statement_timeout <= Duration::from_secs(30));
        assert!(config.connect_options().is_ok());
        assert!(PostgresConfig::from_url("mysql://nope").connect_options().is_err());
    }

    /// The plan of one of this store's statements, for the given parameters.
    async fn plan_of<'q>(
        conn: &mut PgConnection,
        sql: &str,
        bind: impl FnOnce(
            sqlx::query::QueryScalar<'q, sqlx::Postgres, String, sqlx::postgres::PgArguments>,
        ) -> sqlx::query::QueryScalar<'q, sqlx::Postgres, String, sqlx::postgres::PgArguments>,
    ) -> String {
        let query = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("EXPLAIN {sql}")));
        let lines: Vec<String> = bind(query).fetch_all(&mut *conn).await.expect("explain");
        lines.join("\n")
    }

    /// Among 20,000 rooms, most of them support rooms that never got a
    /// message: the support queue is a range of `support_queue_waiting` from
    /// the cursor on, in its order (no sort), each room then read by its key;
    /// an append's first statement locks its rooms by key and probes each
    /// (room, sender) in the members' primary key; a user's own rooms are
    /// counted from their partial index.
    #[tokio::test]
    async fn the_queue_the_membership_probe_and_the_quota_use_their_indexes() {
        use sqlx::Connection;
        let Some(schema) = crate::testing::TempSchema::create("postgres plans").await else {
            return;
        };
        let store = PostgresStore::connect(PostgresConfig::from_url(schema.url())).await.expect("connect");
        let mut conn = PgConnection::connect(&schema.url()).await.expect("a raw connection");
        for sql in [
            "INSERT INTO rooms (id, kind, visibility, created_by, created_at, last_activity, closed)
             SELECT ('00000000-0000-7000-8000-' || lpad(n::text, 12, '0'))::uuid,
                    CASE WHEN n % 4 = 0 THEN 'group' ELSE 'support' END, 'private', 'v' || n, n, n, n % 3 = 0
             FROM generate_series(1, 20000) AS n",
            "INSERT INTO support_queue (room_id, last_activity, waiting_since)
             SELECT id, created_at, CASE WHEN created_at % 40 = 1 AND NOT closed THEN created_at END FROM rooms
             WHERE kind = 'support'",
            "INSERT INTO members (room_id, user_id, role, joined_at, self_joined)
             SELECT id, created_by, 'owner', 0, true FROM rooms
             UNION ALL SELECT id, 'agent', 'member', 0, false FROM rooms",
            "ANALYZE",
        ] {
            sqlx::query(sql).execute(&mut conn).await.expect(sql);
        }

        for (at, id) in [(i64::MIN, Uuid::nil()), (4_001, Uuid::max())] {
            let plan = plan_of(&mut conn, support_queue_sql!(), |q| q.bind(at).bind(id).bind(50_i64)).await;
            // An index (only) scan, the cursor its start.
            assert!(plan.contains("Scan using support_queue_waiting on support_queue"), "{plan}");
            assert!(plan.contains("Index Cond: (ROW(waiting_since, room_id) > ROW("), "{plan}");
            assert!(plan.contains("rooms_pkey"), "{plan}");
            assert!(!plan.contains("Seq Scan") && !plan.contains("Sort"), "{plan}");
        }
        let rooms: Vec<Uuid> =
            (1..=3).map(|n| Uuid::from_u128(0x0000_0000_0000_7000_8000_0000_0000_0000 + n)).collect();
        let plan = plan_of(&mut conn, LOCK_AND_ADMIT, |q| {
            q.bind(rooms.clone()).bind(rooms.clone()).bind(vec!["v1", "agent", "x"])
        })
        .await;
        assert!(
            // One probe of the members' key per pair (an index-only scan
            // when the visibility map allows), one of the rooms' per room.
            plan.contains("Scan using members_pkey on members") && plan.contains("Index Scan using rooms_pkey"),
            "{plan}"
        );
        assert!(!plan.contains("Seq Scan"), "{plan}");
        let plan =
            plan_of(&mut conn, &COUNT_OWN_ROOMS.replace("COUNT(*)", "COUNT(*)::text"), |q| q.bind("agent")).await;
        assert!(plan.contains("members_own_by_user"), "{plan}");

        // And the answers over those rooms: the waiting ones that are open, in order.
        let all = store.support_queue(None, 1000).await.expect("support_queue");
        let want: Vec<i64> = (1..=20_000).filter(|i| i % 4 != 0 && i % 3 != 0 && i % 40 == 1).collect();
        assert_eq!(all.iter().map(|q| q.waiting_since.as_millis()).collect::<Vec<_>>(), want);
        store.close().await;
    }

    /// The user list pages through its partial index from the cursor on,
    /// skipping deleted users without reading them, and never sorts.
    #[tokio::test]
    async fn the_user_list_walks_its_index() {
        use sqlx::Connection;
        let Some(schema) = crate::testing::TempSchema::create("postgres user list plan").await else {
            return;
        };
        let store = PostgresStore::connect(PostgresConfig::from_url(schema.url())).await.expect("connect");
        let mut conn = PgConnection::connect(&schema.url()).await.expect("a raw connection");
        for sql in [
            "INSERT INTO users (id, name) SELECT 'u' || n, 'User ' || n FROM generate_series(1, 20000) AS n",
            "UPDATE users SET deleted_at = 1 WHERE id LIKE 'u1%'",
            "ANALYZE",
        ] {
            sqlx::query(sql).execute(&mut conn).await.expect(sql);
        }
        for after in ["", "u5"] {
            let plan = plan_of(&mut conn, LIST_ACCOUNTS, |q| q.bind(after).bind(None::<String>).bind(51_i64)).await;
            assert!(plan.contains("using users_listed on users"), "{plan}");
            assert!(!plan.contains("Seq Scan") && !plan.contains("Sort"), "{plan}");
        }
        let query = chat_core::UserListQuery { after: Some(UserId::new("u5").expect("id")), text: None, limit: 3 };
        let page = store.list_accounts(&query).await.expect("list_accounts");
        assert_eq!(page.iter().map(|a| a.user.id.as_str()).collect::<Vec<_>>(), ["u50", "u500", "u5000"]);
        let first = chat_core::UserListQuery { after: None, text: None, limit: 2 };
        let page = store.list_accounts(&first).await.expect("list_accounts");
        assert_eq!(page.iter().map(|a| a.user.id.as_str()).collect::<Vec<_>>(), ["u2", "u20"], "u1… are deleted");
        store.close().await;
    }
}

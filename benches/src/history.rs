//! History pages in a room of a million messages, on SQLite and PostgreSQL.
//!
//! Fills one room with N messages (straight SQL: a recursive CTE on SQLite,
//! `generate_series` on PostgreSQL, then the room's `last_seq` set to match),
//! then times `Store::history` pages of 50 at the newest page, in the middle,
//! at the oldest edge, and forward from the middle (as a resume replays), and
//! `Store::rooms_of_user` for a member of that room. Prints the query plans of
//! the history queries: each must be a range scan of the `(room_id, seq)`
//! primary key that stops after the page, with no sort.
//!
//! ```text
//! CHAT_BENCH_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/test \
//!   cargo run --release -p chat-benches --bin history -- \
//!   [--backend sqlite|postgres|all] [--messages N] [--samples N] [--user-rooms N] [--quick]
//! ```
//!
//! Without `CHAT_BENCH_POSTGRES_URL`, PostgreSQL is skipped. The PostgreSQL
//! run works in a schema of its own, dropped afterwards.

use std::time::{Duration, Instant};

use anyhow::Context;
use chat_benches::{BenchSchema, ms, percentile, postgres_url};
use chat_core::{
    HistoryQuery, MemberLimits, MemberRole, NewRoom, RoomId, RoomKind, Store, Timestamp, UserId, Visibility,
};
use chat_store_sql::{PostgresConfig, PostgresStore, SqliteConfig, SqliteStore, Synchronous};
use clap::{Parser, ValueEnum};
use sqlx::{Connection, Row};

/// History page latency in a room of a million messages, and the query plans.
#[derive(Debug, Parser)]
struct Args {
    /// The stores to measure (PostgreSQL needs CHAT_BENCH_POSTGRES_URL).
    #[arg(long, value_enum, default_value_t = Which::All)]
    backend: Which,
    /// Messages in the room.
    #[arg(long, default_value_t = 1_000_000)]
    messages: u64,
    /// Timed calls at each position.
    #[arg(long, default_value_t = 1000)]
    samples: usize,
    /// Rooms the reader belongs to, the big one among them.
    #[arg(long, default_value_t = 100)]
    user_rooms: usize,
    /// A short run (20 000 messages, 200 samples) that checks the bench works.
    #[arg(long)]
    quick: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Which {
    Sqlite,
    Postgres,
    All,
}

/// Page size, the engine's default.
const LIMIT: u32 = 50;

/// Where the big room's data lives, for the SQL the Store trait does not offer.
enum Place {
    Sqlite { url: String, _dir: tempfile::TempDir },
    Postgres { schema: BenchSchema },
}

/// The history queries of the stores, copied from `history` in
/// `chat-store-sql/src/sqlite.rs` and `src/postgres.rs` (columns shortened to
/// `*`, which changes neither the plan nor the pages read): newest page,
/// page before a seq, page after a seq.
const SQLITE_HISTORY: [(&str, &str); 3] = [
    ("newest page", "SELECT * FROM messages WHERE room_id = ?1 ORDER BY seq DESC LIMIT ?2"),
    ("before_seq", "SELECT * FROM messages WHERE room_id = ?1 AND seq < ?2 ORDER BY seq DESC LIMIT ?3"),
    ("after_seq", "SELECT * FROM messages WHERE room_id = ?1 AND seq > ?2 ORDER BY seq ASC LIMIT ?3"),
];
const POSTGRES_HISTORY: [(&str, &str, &str); 3] = [
    ("newest page", "(uuid, int8)", "SELECT * FROM messages WHERE room_id = $1 ORDER BY seq DESC LIMIT $2"),
    (
        "before_seq",
        "(uuid, int8, int8)",
        "SELECT * FROM messages WHERE room_id = $1 AND seq < $2 ORDER BY seq DESC LIMIT $3",
    ),
    (
        "after_seq",
        "(uuid, int8, int8)",
        "SELECT * FROM messages WHERE room_id = $1 AND seq > $2 ORDER BY seq ASC LIMIT $3",
    ),
];

/// Makes the store, the big room with the reader in it, and the reader's other rooms.
async fn setup(
    which: Which,
    base_url: Option<&str>,
    user_rooms: usize,
) -> anyhow::Result<(Box<dyn Store>, Place, RoomId, UserId)> {
    let (store, place): (Box<dyn Store>, Place) = match which {
        Which::Sqlite => {
            let dir = tempfile::tempdir()?;
            let url = format!("sqlite://{}", dir.path().join("history.db").display());
            let mut config = SqliteConfig::from_url(url.clone());
            config.synchronous = Synchronous::Full;
            let store = SqliteStore::connect(config).await.context("opening SQLite")?;
            (Box::new(store), Place::Sqlite { url, _dir: dir })
        }
        _ => {
            let base_url = base_url.context("no PostgreSQL URL")?;
            let schema = BenchSchema::create(base_url).await?;
            let store =
                PostgresStore::connect(PostgresConfig::from_url(schema.url())).await.context("opening PostgreSQL")?;
            (Box::new(store), Place::Postgres { schema })
        }
    };
    let owner = UserId::new("owner")?;
    let reader = UserId::new("reader")?;
    let mut big = None;
    for r in 0..user_rooms.max(1) {
        let new = NewRoom {
            id: RoomId::generate(),
            kind: RoomKind::Group,
            name: Some(format!("room {r}")),
            visibility: Visibility::Public,
            created_by: owner.clone(),
            created_at: Timestamp::now(),
            members: vec![(owner.clone(), MemberRole::Owner), (reader.clone(), MemberRole::Member)],
        };
        let (room, _) = store.create_room(new, MemberLimits::NONE).await?;
        big.get_or_insert(room.id);
    }
    let big = big.context("no room made")?;
    Ok((store, place, big, reader))
}

/// Inserts `n` messages of 200 bytes into `room`, seqs 1..=n, and sets the
/// room's counter to match, as if they had been sent one by one.
async fn fill(place: &Place, room: RoomId, n: u64) -> anyhow::Result<()> {
    let n = i64::try_from(n)?;
    let body = "x".repeat(200);
    let t0 = Timestamp::now().as_millis() - n;
    match place {
        Place::Sqlite { url, .. } => {
            let mut conn = sqlx::SqliteConnection::connect(url).await?;
            let mut tx = conn.begin().await?;
            // Ids are UUIDs that grow with seq, as the v7 ids of real sends do.
            sqlx::query(
                "WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < ?2)
                 INSERT INTO messages (room_id, seq, id, sender_id, client_msg_id, body, attachments, created_at)
                 SELECT ?1, n, printf('00000000-0000-7000-8000-%012x', n), 'u' || (n % 100), 'fill-' || n, ?3,
                        '[]', ?4 + n
                 FROM g",
            )
            .bind(room.to_string())
            .bind(n)
            .bind(&body)
            .bind(t0)
            .execute(&mut *tx)
            .await?;
            sqlx::query("UPDATE rooms SET last_seq = ?2, last_activity = ?3 WHERE id = ?1")
                .bind(room.to_string())
                .bind(n)
                .bind(t0 + n)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            // Write the fill back into the database file now, so that timed
            // reads do not share the disk with its checkpoint.
            sqlx::raw_sql("PRAGMA wal_checkpoint(TRUNCATE)").execute(&mut conn).await?;
            conn.close().await?;
        }
        Place::Postgres { schema } => {
            let mut conn = sqlx::PgConnection::connect(&schema.url()).await?;
            let mut tx = conn.begin().await?;
            sqlx::query(
                "INSERT INTO messages (room_id, seq, id, sender_id, client_msg_id, body, created_at)
                 SELECT $1, g, ('00000000-0000-7000-8000-' || lpad(to_hex(g), 12, '0'))::uuid, 'u' || (g % 100),
                        'fill-' || g, $3, $4 + g
                 FROM generate_series(1::int8, $2::int8) AS g",
            )
            .bind(room.as_uuid())
            .bind(n)
            .bind(&body)
            .bind(t0)
            .execute(&mut *tx)
            .await?;
            sqlx::query("UPDATE rooms SET last_seq = $2, last_activity = $3 WHERE id = $1")
                .bind(room.as_uuid())
                .bind(n)
                .bind(t0 + n)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            // What autovacuum would do shortly after such a load: statistics
            // for the planner and a visibility map.
            sqlx::raw_sql("VACUUM (ANALYZE) messages").execute(&mut conn).await?;
            // Write the fill's dirty pages out now, so that timed reads do not
            // share the disk with the checkpoint that would otherwise follow.
            sqlx::raw_sql("CHECKPOINT").execute(&mut conn).await?;
            conn.close().await?;
        }
    }
    Ok(())
}

/// A position in the room, and the seqs its page must hold.
struct Position {
    label: String,
    query: HistoryQuery,
    first_seq: u64,
    has_more: bool,
}

fn positions(n: u64) -> Vec<Position> {
    let middle = n / 2;
    let limit = u64::from(LIMIT);
    let query = |before_seq, after_seq| HistoryQuery { before_seq, after_seq, limit: LIMIT };
    vec![
        Position { label: "newest page".into(), query: query(None, None), first_seq: n - limit + 1, has_more: true },
        Position {
            label: format!("middle, before_seq {middle}"),
            query: query(Some(middle), None),
            first_seq: middle - limit,
            has_more: true,
        },
        Position {
            label: format!("oldest page, before_seq {}", limit + 1),
            query: query(Some(limit + 1), None),
            first_seq: 1,
            has_more: false,
        },
        Position {
            label: format!("middle, after_seq {middle}"),
            query: query(None, Some(middle)),
            first_seq: middle + 1,
            has_more: true,
        },
    ]
}

struct Timing {
    first: Duration,
    p50: Duration,
    p99: Duration,
}

/// Times `samples` calls after a few untimed ones; `first` is the very first call.
async fn time<F, Fut>(samples: usize, mut call: F) -> anyhow::Result<Timing>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let start = Instant::now();
    call().await?;
    let first = start.elapsed();
    for _ in 0..20 {
        call().await?;
    }
    let mut latencies = Vec::with_capacity(samples);
    for _ in 0..samples {
        let start = Instant::now();
        call().await?;
        latencies.push(start.elapsed());
    }
    latencies.sort();
    Ok(Timing { first, p50: percentile(&latencies, 50), p99: percentile(&latencies, 99) })
}

/// The query plans of the history queries and of `rooms_of_user`, as the database gives them.
async fn plans(place: &Place, room: RoomId, n: u64) -> anyhow::Result<()> {
    let n = i64::try_from(n)?;
    let middle = n / 2;
    let fetch = i64::from(LIMIT) + 1;
    match place {
        Place::Sqlite { url, .. } => {
            let mut conn = sqlx::SqliteConnection::connect(url).await?;
            // SQLite names the indexes behind UNIQUE and PRIMARY KEY itself; say which is which.
            let indexes = sqlx::query(
                "SELECT l.name, l.origin, group_concat(i.name, ', ') AS columns
                 FROM pragma_index_list('messages') AS l, pragma_index_info(l.name) AS i
                 GROUP BY l.name ORDER BY l.name",
            )
            .fetch_all(&mut conn)
            .await?;
            for index in indexes {
                let (name, origin, columns): (String, String, String) =
                    (index.try_get("name")?, index.try_get("origin")?, index.try_get("columns")?);
                println!("    index {name}: ({columns}), origin {origin}");
            }
            for (label, sql) in SQLITE_HISTORY {
                let explain = sqlx::AssertSqlSafe(format!("EXPLAIN QUERY PLAN {sql}"));
                let query = sqlx::query(explain).bind(room.to_string());
                let query = if label == "newest page" { query.bind(fetch) } else { query.bind(middle).bind(fetch) };
                println!("    {label}: {sql}");
                for row in query.fetch_all(&mut conn).await? {
                    println!("      {}", row.try_get::<String, _>("detail")?);
                }
            }
            conn.close().await?;
        }
        Place::Postgres { schema } => {
            let mut conn = sqlx::PgConnection::connect(&schema.url()).await?;
            // The store's statements are prepared once per connection, and
            // PostgreSQL soon plans them once for any parameters: show that
            // generic plan, run, so the rows and pages it touched are visible.
            sqlx::raw_sql("SET plan_cache_mode = force_generic_plan").execute(&mut conn).await?;
            for (i, (label, types, sql)) in POSTGRES_HISTORY.into_iter().enumerate() {
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!("PREPARE page{i}{types} AS {sql}")))
                    .execute(&mut conn)
                    .await?;
                let args = if label == "newest page" {
                    format!("'{room}', {fetch}")
                } else {
                    format!("'{room}', {middle}, {fetch}")
                };
                let explain =
                    format!("EXPLAIN (ANALYZE, BUFFERS, COSTS OFF, TIMING OFF, SUMMARY OFF) EXECUTE page{i}({args})");
                println!("    {label}: {sql}");
                for row in sqlx::raw_sql(sqlx::AssertSqlSafe(explain)).fetch_all(&mut conn).await? {
                    println!("      {}", row.try_get::<String, _>(0)?);
                }
            }
            conn.close().await?;
        }
    }
    Ok(())
}

async fn bench(which: Which, base_url: Option<&str>, args: &Args) -> anyhow::Result<Vec<String>> {
    let name = if which == Which::Sqlite { "SQLite" } else { "PostgreSQL" };
    println!("{name}: a room of {} messages, the reader in {} rooms", args.messages, args.user_rooms);
    let (store, place, room, reader) = setup(which, base_url, args.user_rooms).await?;
    let start = Instant::now();
    fill(&place, room, args.messages).await?;
    println!("  filled in {:.1?}", start.elapsed());

    let mut rows = Vec::new();
    for position in positions(args.messages) {
        let store = &*store;
        let expected = position.first_seq;
        let timing = time(args.samples, || async {
            let page = store.history(room, position.query).await?;
            let first = page.messages.first().map(|m| m.seq);
            anyhow::ensure!(
                page.messages.len() == LIMIT as usize && first == Some(expected) && page.has_more == position.has_more,
                "wrong page at {}: {} messages from {first:?}, has_more {}",
                position.label,
                page.messages.len(),
                page.has_more
            );
            Ok(())
        })
        .await?;
        println!(
            "  history, {:<30} p50 {:>9}   p99 {:>9}   (first call {})",
            position.label,
            ms(timing.p50),
            ms(timing.p99),
            ms(timing.first)
        );
        rows.push(format!(
            "| {name} | history, {} | {} | {} | {} |",
            position.label,
            ms(timing.p50),
            ms(timing.p99),
            ms(timing.first)
        ));
    }
    let store_ref = &*store;
    let reader_ref = &reader;
    let rooms = args.user_rooms;
    let timing = time(args.samples, || async move {
        let found = store_ref.rooms_of_user(reader_ref).await?.len();
        anyhow::ensure!(found == rooms, "rooms_of_user found {found} rooms, not {rooms}");
        Ok(())
    })
    .await?;
    println!(
        "  rooms_of_user ({} rooms)               p50 {:>9}   p99 {:>9}   (first call {})",
        rooms,
        ms(timing.p50),
        ms(timing.p99),
        ms(timing.first)
    );
    rows.push(format!(
        "| {name} | rooms_of_user ({rooms} rooms) | {} | {} | {} |",
        ms(timing.p50),
        ms(timing.p99),
        ms(timing.first)
    ));

    println!("  query plans:");
    plans(&place, room, args.messages).await?;
    store.close().await;
    if let Place::Postgres { schema } = place {
        schema.drop_now().await?;
    }
    Ok(rows)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    if args.quick {
        (args.messages, args.samples) = (20_000, 200);
    }
    anyhow::ensure!(args.messages >= 2 * u64::from(LIMIT) + 2, "the room needs at least {} messages", 2 * LIMIT + 2);
    let mut rows = Vec::new();
    if matches!(args.backend, Which::Sqlite | Which::All) {
        rows.extend(bench(Which::Sqlite, None, &args).await?);
    }
    if matches!(args.backend, Which::Postgres | Which::All)
        && let Some(base_url) = postgres_url()
    {
        rows.extend(bench(Which::Postgres, Some(&base_url), &args).await?);
    }
    println!();
    println!("| store | call | p50 | p99 | first call |");
    println!("|---|---|---:|---:|---:|");
    for row in rows {
        println!("{row}");
    }
    Ok(())
}

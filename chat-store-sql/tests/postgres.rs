//! What only the PostgreSQL store has to get right: several processes on one
//! database, migrations, bounded waits and query plans. Needs
//! `CHAT_TEST_POSTGRES_URL`; without it every test says that it skips.

mod support;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chat_core::{HistoryQuery, MemberLimits, Room, RoomId, Store};
use chat_store_sql::testing::TempSchema;
use chat_store_sql::{Error, PostgresConfig, PostgresStore};
use sqlx::{Connection, PgConnection};
use support::{accepted, group, msg, uid};

async fn connect(schema: &TempSchema) -> PostgresStore {
    PostgresStore::connect(PostgresConfig::from_url(schema.url())).await.expect("connect")
}

async fn make_room(store: &PostgresStore, members: &[&str]) -> Room {
    store.create_room(group(members), MemberLimits::NONE).await.expect("create_room").0
}

async fn raw(schema: &TempSchema) -> PgConnection {
    PgConnection::connect(&schema.url()).await.expect("a raw connection")
}

/// Every stored message of a room, oldest first.
async fn all_messages(store: &dyn Store, room: RoomId) -> Vec<chat_core::Message> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let page = store
            .history(room, HistoryQuery { after_seq: Some(after), limit: 100, ..Default::default() })
            .await
            .expect("history");
        out.extend(page.messages);
        after = out.last().map_or(0, |m| m.seq);
        if !page.has_more {
            return out;
        }
    }
}

/// The versions of the embedded migrations: every one up to the newest.
fn migration_versions() -> Vec<i64> {
    (1..=PostgresStore::SCHEMA_VERSION).collect()
}

#[tokio::test]
async fn a_fresh_schema_is_migrated_once_even_by_racing_processes() {
    let Some(schema) = TempSchema::create("a_fresh_schema_is_migrated_once_even_by_racing_processes").await else {
        return;
    };
    // Four servers starting at the same moment on an empty database.
    let starts = (0..4).map(|_| PostgresStore::connect(PostgresConfig::from_url(schema.url())));
    let stores: Vec<PostgresStore> =
        futures_util::future::join_all(starts).await.into_iter().collect::<Result<_, _>>().expect("every start");
    for store in &stores {
        assert_eq!(store.schema_version().await.expect("version"), Some(PostgresStore::SCHEMA_VERSION));
    }
    let mut conn = raw(&schema).await;
    let applied: Vec<i64> = sqlx::query_scalar("SELECT version FROM _sqlx_migrations ORDER BY version")
        .fetch_all(&mut conn)
        .await
        .expect("applied migrations");
    assert_eq!(applied, migration_versions());
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables WHERE table_schema = $1 ORDER BY table_name",
    )
    .bind(schema.name())
    .fetch_all(&mut conn)
    .await
    .expect("tables");
    assert_eq!(
        tables,
        [
            "_sqlx_migrations",
            "attachments",
            "bridge_jobs",
            "bridge_leases",
            "bridge_links",
            "calls",
            "deleted_members",
            "members",
            "messages",
            "push_subscriptions",
            "room_bans",
            "rooms",
            "server_secrets",
            "support_queue",
            "users"
        ]
    );
    for store in stores {
        store.close().await;
    }
    // The migrate command on an up-to-date database changes nothing.
    PostgresStore::migrate(PostgresConfig::from_url(schema.url())).await.expect("migrate again");
}

#[tokio::test]
async fn a_database_from_a_newer_build_is_refused_and_left_alone() {
    let Some(schema) = TempSchema::create("a_database_from_a_newer_build_is_refused_and_left_alone").await else {
        return;
    };
    let store = connect(&schema).await;
    let room = make_room(&store, &["ada"]).await;
    store.append_messages(vec![msg(room.id, "ada", "m1")]).await.expect("append");
    store.close().await;

    let mut conn = raw(&schema).await;
    let future = PostgresStore::SCHEMA_VERSION + 1;
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
         VALUES ($1, 'from the future', TRUE, '\\x00', 0)",
    )
    .bind(future)
    .execute(&mut conn)
    .await
    .expect("record a newer migration");

    for attempt in [
        PostgresStore::connect(PostgresConfig::from_url(schema.url())).await.map(drop),
        PostgresStore::migrate(PostgresConfig::from_url(schema.url())).await,
    ] {
        match attempt {
            Err(Error::SchemaTooNew { found, supported }) => {
                assert_eq!((found, supported), (future, PostgresStore::SCHEMA_VERSION));
            }
            other => panic!("a newer schema must be refused, got {other:?}"),
        }
    }
    let versions: Vec<i64> = sqlx::query_scalar("SELECT version FROM _sqlx_migrations ORDER BY version")
        .fetch_all(&mut conn)
        .await
        .expect("versions");
    let mut expected: Vec<i64> = migration_versions();
    expected.push(future);
    assert_eq!(versions, expected, "nothing was applied or removed");
    let messages: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM messages").fetch_one(&mut conn).await.expect("count messages");
    assert_eq!(messages, 1, "the data is untouched");
}

/// Two stores with pools of their own are what two server processes are to
/// the database: many tasks on each append to one room at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_processes_writing_one_room_keep_seqs_gapless() {
    let Some(schema) = TempSchema::create("two_processes_writing_one_room_keep_seqs_gapless").await else {
        return;
    };
    let a: Arc<dyn Store> = Arc::new(connect(&schema).await);
    let b: Arc<dyn Store> = Arc::new(connect(&schema).await);
    let senders: Vec<String> = (0..8).map(|i| format!("s{i}")).collect();
    let names: Vec<&str> = senders.iter().map(String::as_str).collect();
    let room = a.create_room(group(&names), MemberLimits::NONE).await.expect("create_room").0.id;
    let other = a.create_room(group(&names), MemberLimits::NONE).await.expect("create_room").0.id;
    const PER_TASK: usize = 40;

    let mut tasks = Vec::new();
    for (i, sender) in senders.iter().cloned().enumerate() {
        let store = Arc::clone(if i % 2 == 0 { &a } else { &b });
        tasks.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for k in (0..PER_TASK).step_by(2) {
                // Batches of two that also touch another room, in either
                // order, so that the two processes lock rooms in every order.
                let mut batch = vec![msg(room, &sender, &format!("{k}")), msg(room, &sender, &format!("{}", k + 1))];
                let extra = msg(other, &sender, &format!("o{k}"));
                if k % 4 == 0 {
                    batch.insert(0, extra)
                } else {
                    batch.push(extra)
                }
                let out = accepted(store.append_messages(batch).await.expect("append"));
                seqs.extend(out.iter().filter(|x| x.message.room_id == room).map(|x| x.message.seq));
            }
            seqs
        }));
    }
    let mut seqs = Vec::new();
    for task in tasks {
        seqs.extend(task.await.expect("task"));
    }
    seqs.sort_unstable();
    let total = (senders.len() * PER_TASK) as u64;
    assert_eq!(seqs, (1..=total).collect::<Vec<_>>(), "acked seqs are exactly 1..={total}");
    for store in [&a, &b] {
        let stored = all_messages(&**store, room).await;
        assert_eq!(stored.iter().map(|m| m.seq).collect::<Vec<_>>(), (1..=total).collect::<Vec<_>>());
        let keys: HashSet<(String, String)> =
            stored.iter().map(|m| (m.sender_id.to_string(), m.client_msg_id.clone())).collect();
        assert_eq!(keys.len() as u64, total, "every send stored once");
        assert_eq!(store.room(room).await.expect("room").expect("exists").last_seq, total);
    }
    let others = all_messages(&*a, other).await;
    assert_eq!(others.iter().map(|m| m.seq).collect::<Vec<_>>(), (1..=others.len() as u64).collect::<Vec<_>>());
    a.close().await;
    b.close().await;
}

/// The same send retried through both processes at once is stored once, and
/// both get the stored message back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_send_racing_itself_through_two_processes_is_stored_once() {
    let Some(schema) = TempSchema::create("a_send_racing_itself_through_two_processes_is_stored_once").await else {
        return;
    };
    let a: Arc<dyn Store> = Arc::new(connect(&schema).await);
    let b: Arc<dyn Store> = Arc::new(connect(&schema).await);
    let room = a.create_room(group(&["ada"]), MemberLimits::NONE).await.expect("create_room").0.id;
    for round in 0..20 {
        let key = format!("retry-{round}");
        let (x, y) = tokio::join!(
            a.append_messages(vec![msg(room, "ada", &key)]),
            b.append_messages(vec![msg(room, "ada", &format!("fresh-{round}")), msg(room, "ada", &key)]),
        );
        let x = accepted(x.expect("append through a")).remove(0);
        let y = accepted(y.expect("append through b")).remove(1);
        assert_eq!(x.message, y.message, "round {round}: both answers are the one stored message");
        assert!(x.created != y.created, "round {round}: exactly one of them created it");
    }
    let stored = all_messages(&*a, room).await;
    assert_eq!(stored.len(), 40, "20 retried keys and 20 fresh ones, each once");
    assert_eq!(stored.iter().map(|m| m.seq).collect::<Vec<_>>(), (1..=40).collect::<Vec<_>>(), "no gap");
    a.close().await;
    b.close().await;
}

#[tokio::test]
async fn an_unreachable_server_is_unavailable_within_the_acquire_timeout() {
    // No PostgreSQL listens on this port: a listener bound and dropped.
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let mut config = PostgresConfig::from_url(format!("postgres://postgres@127.0.0.1:{port}/test"));
    config.acquire_timeout = Duration::from_millis(500);
    let started = Instant::now();
    let err = PostgresStore::connect(config).await.expect_err("nothing to connect to");
    assert!(err.is_unavailable(), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(3), "gave up after {:?}", started.elapsed());
    let core = chat_core::Error::from(err);
    assert_eq!(core.code().as_str(), "unavailable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_locked_by_a_stuck_writer_fails_the_append_in_bounded_time() {
    let Some(schema) = TempSchema::create("a_room_locked_by_a_stuck_writer_fails_the_append_in_bounded_time").await
    else {
        return;
    };
    let mut config = PostgresConfig::from_url(schema.url());
    config.statement_timeout = Duration::from_millis(300);
    let store = PostgresStore::connect(config).await.expect("connect");
    let room = make_room(&store, &["ada"]).await;

    // Another process holds the room's lock and does nothing with it.
    let mut stuck = raw(&schema).await;
    sqlx::query("BEGIN").execute(&mut stuck).await.expect("begin");
    sqlx::query("SELECT last_seq FROM rooms WHERE id = $1 FOR UPDATE")
        .bind(room.id.as_uuid())
        .execute(&mut stuck)
        .await
        .expect("lock the room");

    let started = Instant::now();
    let err = store.append_messages(vec![msg(room.id, "ada", "m1")]).await.expect_err("the room is locked");
    assert_eq!(err.code().as_str(), "unavailable", "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(2), "waited {:?}", started.elapsed());
    // Reads go on meanwhile.
    assert_eq!(store.room(room.id).await.expect("room").map(|r| r.last_seq), Some(0));

    sqlx::query("ROLLBACK").execute(&mut stuck).await.expect("release");
    let out = accepted(store.append_messages(vec![msg(room.id, "ada", "m1")]).await.expect("append after release"));
    assert_eq!((out[0].message.seq, out[0].created), (1, true), "the failed attempt left no trace");
    store.close().await;
}

/// A membership removed by another process while a batch of its member's
/// messages is being written: the removal holds the membership row when the
/// append probes it (still there, uncommitted), then commits while the append
/// waits to move the sender's cursor. The append must not store the message:
/// it starts over and refuses the former member, and the seq stays unused.
#[tokio::test]
async fn a_member_removed_while_their_batch_is_written_is_refused() {
    let Some(schema) = TempSchema::create("a_member_removed_while_their_batch_is_written_is_refused").await else {
        return;
    };
    let store = connect(&schema).await;
    let room = make_room(&store, &["ada", "bob"]).await;
    accepted(store.append_messages(vec![msg(room.id, "bob", "b0")]).await.expect("append"));

    let mut remover = raw(&schema).await;
    sqlx::query("BEGIN").execute(&mut remover).await.expect("begin");
    let removed = sqlx::query("DELETE FROM members WHERE room_id = $1 AND user_id = 'bob'")
        .bind(room.id.as_uuid())
        .execute(&mut remover)
        .await
        .expect("remove bob")
        .rows_affected();
    assert_eq!(removed, 1);

    let append = tokio::spawn({
        let store = store.clone();
        async move { store.append_messages(vec![msg(room.id, "bob", "b1"), msg(room.id, "ada", "a1")]).await }
    });
    // Let the append pass its probe and wait on bob's row.
    tokio::time::sleep(Duration::from_millis(300)).await;
    sqlx::query("COMMIT").execute(&mut remover).await.expect("commit the removal");

    let answers = append.await.expect("the append task").expect("the batch is answered");
    assert_eq!(answers[0].as_ref().map(|_| ()).map_err(|e| e.code().as_str()), Err("not_member"), "{answers:?}");
    let ada = answers[1].as_ref().expect("ada's message is stored");
    assert_eq!(ada.message.seq, 2, "bob's refused message took no seq");
    let stored: Vec<_> = all_messages(&store, room.id).await.into_iter().map(|m| (m.seq, m.client_msg_id)).collect();
    assert_eq!(stored, [(1, "b0".to_owned()), (2, "a1".to_owned())]);
    store.close().await;
}

/// The plans, not only the timings: with a big room in the tables, history
/// pages are range scans of the primary key, and a user's rooms start from
/// the user's index entries. Nothing reads a whole table or sorts a room.
#[tokio::test]
async fn history_and_room_lists_use_their_indexes() {
    let Some(schema) = TempSchema::create("history_and_room_lists_use_their_indexes").await else {
        return;
    };
    let store = connect(&schema).await;
    let room = make_room(&store, &["ada", "bob"]).await;
    let mut conn = raw(&schema).await;
    // A room of 50,000 messages and 5,000 other users in 2,500 other rooms,
    // written directly, then analysed as autovacuum would.
    sqlx::query(
        "INSERT INTO messages (room_id, seq, id, sender_id, client_msg_id, body, created_at)
         SELECT $1, n, gen_random_uuid(), 'ada', 'c' || n, 'message ' || n, n FROM generate_series(1, 50000) AS n",
    )
    .bind(room.id.as_uuid())
    .execute(&mut conn)
    .await
    .expect("fill the room");
    crowd(&mut conn, &room).await;

    let id = room.id.to_string();
    let plans = [
        format!("SELECT * FROM messages WHERE room_id = '{id}' ORDER BY seq DESC LIMIT 51"),
        format!("SELECT * FROM messages WHERE room_id = '{id}' AND seq < 25000 ORDER BY seq DESC LIMIT 51"),
        format!("SELECT * FROM messages WHERE room_id = '{id}' AND seq > 10 ORDER BY seq ASC LIMIT 51"),
        format!("SELECT * FROM messages WHERE room_id = '{id}' AND seq > 10 AND seq < 90 ORDER BY seq ASC LIMIT 51"),
    ];
    for sql in &plans {
        let plan = explain(&mut conn, sql).await;
        assert!(plan.contains("Index Scan") && plan.contains("messages_pkey"), "{sql}\n{plan}");
        assert!(!plan.contains("Seq Scan") && !plan.contains("Sort"), "{sql}\n{plan}");
    }
    let plan = explain(
        &mut conn,
        "SELECT r.id, m.read_seq FROM members m JOIN rooms r ON r.id = m.room_id
         WHERE m.user_id = 'ada' ORDER BY r.last_activity DESC, r.id DESC",
    )
    .await;
    assert!(plan.contains("members_by_user"), "a user's rooms start from members_by_user:\n{plan}");
    assert!(!plan.contains("Seq Scan on members"), "{plan}");
    let plan = explain(&mut conn, "SELECT COUNT(*) FROM members WHERE user_id = 'ada'").await;
    assert!(plan.contains("Index Only Scan using members_by_user"), "{plan}");

    // And the store's own answers over that room are right at both edges.
    let newest = store.history(room.id, HistoryQuery { limit: 50, ..Default::default() }).await.expect("newest");
    assert_eq!((newest.messages[0].seq, newest.messages[49].seq, newest.has_more), (49_951, 50_000, true));
    let oldest = store
        .history(room.id, HistoryQuery { before_seq: Some(3), limit: 50, ..Default::default() })
        .await
        .expect("oldest");
    assert_eq!((oldest.messages.len(), oldest.has_more), (2, false));
    let summary = store.rooms_of_user(&uid("bob")).await.expect("rooms of bob");
    assert_eq!(summary[0].unread, 50_000, "unread is the counter minus the cursor, not a count of rows");
    store.close().await;
}

/// A search finds its candidates in the GIN index of the words, and the
/// searcher's rooms from members_by_user: it never reads the messages table
/// whole, however big, and answers newest first across pages.
#[tokio::test]
async fn a_search_uses_the_word_index() {
    let Some(schema) = TempSchema::create("a_search_uses_the_word_index").await else {
        return;
    };
    let store = connect(&schema).await;
    let room = make_room(&store, &["ada", "bob"]).await;
    let mut conn = raw(&schema).await;
    // 50,000 messages, one in a thousand about "zebra", written directly
    // with their words, and 2,500 other rooms, then analysed.
    sqlx::query(
        "INSERT INTO messages (room_id, seq, id, sender_id, client_msg_id, body, created_at, search)
         SELECT $1, n, gen_random_uuid(), 'ada', 'c' || n, b, n, to_tsvector('simple', b)
         FROM generate_series(1, 50000) AS n,
              LATERAL (SELECT CASE WHEN n % 1000 = 0 THEN 'a zebra ' || n ELSE 'message ' || n END AS b) AS t",
    )
    .bind(room.id.as_uuid())
    .execute(&mut conn)
    .await
    .expect("fill the room");
    crowd(&mut conn, &room).await;

    let sql = chat_store_sql::postgres::SEARCH_MESSAGES_SQL
        .replace("$1", "'zebra'")
        .replace("$2", "'bob'")
        .replace("$3", "NULL")
        .replace("$4", "9223372036854775807")
        .replace("$5", "'ffffffff-ffff-ffff-ffff-ffffffffffff'::uuid")
        .replace("$6", "21");
    let plan = explain(&mut conn, &sql).await;
    assert!(plan.contains("Bitmap Index Scan on messages_search"), "{plan}");
    assert!(plan.contains("members_by_user") || plan.contains("members_pkey"), "{plan}");
    assert!(!plan.contains("Seq Scan on messages") && !plan.contains("Seq Scan on members"), "{plan}");

    let mut query = chat_core::SearchQuery {
        user: uid("bob"),
        words: chat_core::search::words("ZEBRA"),
        room: None,
        limit: 20,
        before: None,
    };
    let mut seqs = Vec::new();
    loop {
        let page = store.search_messages(&query).await.expect("search");
        seqs.extend(page.results.iter().map(|h| h.message.seq));
        match page.next {
            Some(next) => query.before = Some(next),
            None => break,
        }
    }
    assert_eq!(seqs, (1..=50).rev().map(|n| n * 1000).collect::<Vec<u64>>(), "all 50, newest first, in pages");
    store.close().await;
}

/// Messages stored before search existed get their words when a server
/// starts (migration 8 cannot fold them), and are found from then on.
#[tokio::test]
async fn messages_stored_before_search_are_indexed_at_start() {
    let Some(schema) = TempSchema::create("messages_stored_before_search_are_indexed_at_start").await else {
        return;
    };
    let store = connect(&schema).await;
    let room = make_room(&store, &["ada", "bob"]).await;
    store.close().await;
    let mut conn = raw(&schema).await;
    sqlx::query(
        "INSERT INTO messages (room_id, seq, id, sender_id, client_msg_id, body, created_at)
         SELECT $1, n, gen_random_uuid(), 'ada', 'c' || n, 'Crème brûlée ' || n, n FROM generate_series(1, 2500) AS n",
    )
    .bind(room.id.as_uuid())
    .execute(&mut conn)
    .await
    .expect("messages without words");
    let store = connect(&schema).await;
    let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM messages WHERE search IS NULL")
        .fetch_one(&mut conn)
        .await
        .expect("count");
    assert_eq!(left, 0, "every stored message was indexed at start");
    let query = chat_core::SearchQuery {
        user: uid("bob"),
        words: chat_core::search::words("creme 2500"),
        room: Some(room.id),
        limit: 5,
        before: None,
    };
    let page = store.search_messages(&query).await.expect("search");
    assert_eq!(page.results.iter().map(|h| h.message.seq).collect::<Vec<_>>(), [2500], "accents folded");
    store.close().await;
}

/// After a test wrote `room`'s 50,000 messages directly: moves its counter
/// to them, adds 2,500 other rooms of two members each, and analyses the
/// tables as autovacuum would, so that a plan that reads a whole table
/// would be the wrong one.
async fn crowd(conn: &mut PgConnection, room: &Room) {
    sqlx::query("UPDATE rooms SET last_seq = 50000 WHERE id = $1")
        .bind(room.id.as_uuid())
        .execute(&mut *conn)
        .await
        .expect("move the counter");
    sqlx::query(
        "WITH r AS (INSERT INTO rooms (id, kind, visibility, created_by, created_at, last_activity)
                    SELECT gen_random_uuid(), 'group', 'private', 'x', n, n FROM generate_series(1, 2500) AS n
                    RETURNING id)
         INSERT INTO members (room_id, user_id, role, joined_at)
         SELECT r.id, 'user-' || u, 'member', 0 FROM r, generate_series(1, 2) AS u",
    )
    .execute(&mut *conn)
    .await
    .expect("other rooms");
    sqlx::query("ANALYZE").execute(&mut *conn).await.expect("analyze");
}

async fn explain(conn: &mut PgConnection, sql: &str) -> String {
    let lines: Vec<String> =
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!("EXPLAIN {sql}"))).fetch_all(&mut *conn).await.expect("explain");
    lines.join("\n")
}

/// Every send moves its room's counter and activity time and its sender's
/// cursors. PostgreSQL updates a row in place (HOT) only when no index holds
/// a changed column, in its key, its INCLUDE list, an expression or a
/// partial index's predicate; otherwise each send adds an entry to every
/// index of the table and leaves a dead row behind.
#[tokio::test]
async fn no_index_holds_a_column_that_sends_move() {
    let Some(schema) = TempSchema::create("no_index_holds_a_column_that_sends_move").await else {
        return;
    };
    connect(&schema).await.close().await;
    let mut conn = raw(&schema).await;
    let found: Vec<(String, String)> = sqlx::query_as(
        "SELECT i.indexrelid::regclass::text, c.col
         FROM pg_index i
         CROSS JOIN unnest(ARRAY['last_seq', 'last_activity', 'read_seq', 'delivered_seq']) AS c(col)
         WHERE i.indrelid IN ('rooms'::regclass, 'members'::regclass)
           AND (EXISTS (SELECT 1 FROM pg_attribute a
                        WHERE a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey) AND a.attname = c.col)
                OR coalesce(pg_get_expr(i.indexprs, i.indrelid), '') LIKE '%' || c.col || '%'
                OR coalesce(pg_get_expr(i.indpred, i.indrelid), '') LIKE '%' || c.col || '%')",
    )
    .fetch_all(&mut conn)
    .await
    .expect("read the indexes");
    assert!(found.is_empty(), "indexes holding a column every send moves: {found:?}");
    let options: Vec<String> = sqlx::query_scalar(
        "SELECT array_to_string(reloptions, ',') FROM pg_class WHERE oid IN ('rooms'::regclass, 'members'::regclass)",
    )
    .fetch_all(&mut conn)
    .await
    .expect("read the table options");
    assert_eq!(options, ["fillfactor=80", "fillfactor=80"], "pages keep room for updated rows");
}

/// Takes a migrated schema back to version 6, as a database made before
/// migration 7 was.
const BACK_TO_VERSION_6: &[&str] = &[
    "DROP INDEX support_queue_waiting",
    "ALTER TABLE support_queue DROP COLUMN waiting_since",
    "ALTER TABLE rooms DROP COLUMN open_support_of",
    "ALTER TABLE members DROP COLUMN self_joined",
    "DELETE FROM _sqlx_migrations WHERE version = 7",
];

async fn run_all(conn: &mut PgConnection, statements: &[&str]) {
    for sql in statements {
        sqlx::query(sqlx::AssertSqlSafe(*sql)).execute(&mut *conn).await.expect(sql);
    }
}

/// Migration 6 moved the support queue's order out of `rooms`: a database
/// made before it keeps its waiting support rooms in the queue, through
/// migration 7 too, and a send puts a room that had none there.
#[tokio::test]
async fn the_support_queue_survives_the_upgrade_that_moved_it() {
    use chat_core::{RoomKind, Timestamp};
    let Some(schema) = TempSchema::create("the_support_queue_survives_the_upgrade_that_moved_it").await else {
        return;
    };
    let store = connect(&schema).await;
    let mut support = Vec::new();
    for (i, at) in [1_000, 3_000, 2_000, 4_000].into_iter().enumerate() {
        let visitor = format!("visitor-{i}");
        let mut new = group(&[&visitor]);
        (new.kind, new.name, new.created_at) = (RoomKind::Support, None, Timestamp::from_millis(at));
        let (room, _) = store.create_room(new, MemberLimits::NONE).await.expect("create a support room");
        if i < 3 {
            let mut hello = msg(room.id, &visitor, "hello");
            hello.created_at = Timestamp::from_millis(at + 1);
            accepted(store.append_messages(vec![hello]).await.expect("append"));
        }
        support.push(room.id);
    }
    make_room(&store, &["ada"]).await;
    store.close().await;

    // Back to the schema of version 5, as a database made before 6 was.
    let mut conn = raw(&schema).await;
    run_all(&mut conn, BACK_TO_VERSION_6).await;
    run_all(
        &mut conn,
        &[
            "DROP TABLE support_queue",
            "CREATE INDEX rooms_support_by_activity ON rooms (last_activity DESC, id DESC) WHERE kind = 'support'",
            "DROP INDEX members_by_user",
            "CREATE INDEX members_by_user ON members (user_id) INCLUDE (room_id, read_seq)",
            "ALTER TABLE members RESET (fillfactor)",
            "ALTER TABLE rooms RESET (fillfactor)",
            "DELETE FROM _sqlx_migrations WHERE version = 6",
        ],
    )
    .await;

    let store = connect(&schema).await;
    assert_eq!(store.schema_version().await.expect("version"), Some(PostgresStore::SCHEMA_VERSION));
    let queue = |store: &PostgresStore| {
        let store = store.clone();
        async move {
            let queue = store.support_queue(None, 10).await.expect("support_queue");
            queue.iter().map(|q| (q.room.id, q.waiting_since.as_millis())).collect::<Vec<_>>()
        }
    };
    assert_eq!(
        queue(&store).await,
        [(support[0], 1_001), (support[2], 2_001), (support[1], 3_001)],
        "waiting support rooms only, by their first message"
    );
    // A first send puts the empty room at its place; a later one moves nothing.
    let mut late = msg(support[3], "visitor-3", "late");
    late.created_at = Timestamp::from_millis(2_500);
    let mut again = msg(support[0], "visitor-0", "again");
    again.created_at = Timestamp::from_millis(9_000);
    accepted(store.append_messages(vec![late, again]).await.expect("append"));
    assert_eq!(
        queue(&store).await,
        [(support[0], 1_001), (support[2], 2_001), (support[3], 2_500), (support[1], 3_001)]
    );
    store.close().await;
}

/// Migration 7 on a database of version 6: the owners' memberships become
/// their own rooms, the newest open support room of each creator becomes
/// their one open support room (older duplicates stay, unmarked, so that the
/// migration cannot fail on them), and the queue keeps the open support rooms
/// that have a message, by their first one.
#[tokio::test]
async fn the_upgrade_to_version_7_fills_in_what_it_adds() {
    use chat_core::{RoomKind, Timestamp};
    let Some(schema) = TempSchema::create("the_upgrade_to_version_7_fills_in_what_it_adds").await else {
        return;
    };
    connect(&schema).await.close().await;
    let mut conn = raw(&schema).await;
    run_all(&mut conn, BACK_TO_VERSION_6).await;
    // What version 6 allowed: three support rooms of one visitor, one closed.
    let [closed, waiting, newest, other, team] = [(); 5].map(|()| *RoomId::generate().as_uuid());
    // $1..$5 in the statements below, in this order.
    let rooms = [closed, waiting, newest, other, team];
    for (sql, binds) in [
        (
            "INSERT INTO rooms (id, kind, visibility, created_by, created_at, last_seq, last_activity, closed)
             VALUES ($1, 'support', 'public', 'vis', 1000, 1, 1100, true),
                    ($2, 'support', 'public', 'vis', 2000, 2, 2600, false),
                    ($3, 'support', 'public', 'vis', 3000, 0, 3000, false),
                    ($4, 'support', 'public', 'w', 1500, 2, 5000, false),
                    ($5, 'group', 'private', 'vis', 500, 0, 500, false)",
            5,
        ),
        (
            "INSERT INTO support_queue (room_id, last_activity) SELECT id, last_activity FROM rooms WHERE kind = 'support'",
            0,
        ),
        (
            "INSERT INTO members (room_id, user_id, role, joined_at)
             VALUES ($1, 'vis', 'owner', 0), ($2, 'vis', 'owner', 0), ($3, 'vis', 'owner', 0), ($4, 'w', 'owner', 0),
                    ($5, 'vis', 'owner', 0), ($5, 'x', 'member', 0)",
            5,
        ),
        (
            "INSERT INTO messages (room_id, seq, id, sender_id, client_msg_id, body, created_at)
             VALUES ($1, 1, gen_random_uuid(), 'vis', 'a', 'a', 1100),
                    ($2, 1, gen_random_uuid(), 'vis', 'a', 'a', 2500),
                    ($2, 2, gen_random_uuid(), 'vis', 'b', 'b', 2600),
                    ($4, 1, gen_random_uuid(), 'w', 'a', 'a', 1600),
                    ($4, 2, gen_random_uuid(), 'w', 'b', 'b', 5000)",
            4,
        ),
    ] {
        let mut query = sqlx::query(sql);
        for id in &rooms[..binds] {
            query = query.bind(*id);
        }
        query.execute(&mut conn).await.expect(sql);
    }

    let store = connect(&schema).await;
    assert_eq!(store.schema_version().await.expect("version"), Some(PostgresStore::SCHEMA_VERSION));
    let queue: Vec<(uuid::Uuid, i64)> = store
        .support_queue(None, 10)
        .await
        .expect("support_queue")
        .iter()
        .map(|q| (*q.room.id.as_uuid(), q.waiting_since.as_millis()))
        .collect();
    assert_eq!(queue, [(other, 1_600), (waiting, 2_500)], "open support rooms with a message, by the first one");

    let support = |visitor: &str| {
        let mut new = group(&[visitor]);
        (new.kind, new.name, new.created_at) = (RoomKind::Support, None, Timestamp::from_millis(9_000));
        new
    };
    let (room, created) = store.create_room(support("vis"), MemberLimits::NONE).await.expect("create_room");
    assert_eq!((*room.id.as_uuid(), created), (newest, false), "the newest open support room is the creator's one");
    store.close_room(room.id).await.expect("close_room");
    let (room, created) = store.create_room(support("vis"), MemberLimits::NONE).await.expect("create_room");
    assert!(created && *room.id.as_uuid() != waiting, "an older duplicate is left as it was, unmarked");

    // Owners' memberships are their own rooms; being a member is not.
    let limits = chat_core::MemberLimits { max_own_rooms: 5, max_members: u64::MAX };
    let err = store.create_room(group(&["vis"]), limits).await.expect_err("vis has 5 own rooms now");
    assert_eq!(err.code().as_str(), "forbidden", "{err:?}");
    let one = chat_core::MemberLimits { max_own_rooms: 1, max_members: u64::MAX };
    store.create_room(group(&["x"]), one).await.expect("x was added to the team room, it is not their own");
    store.close().await;
}

/// Migration 10 on a database without it (version 8, or 9 when the
/// migration numbered before it is there): the users stored before are
/// active, made at the upgrade, never seen, and listed by the new index.
#[tokio::test]
async fn the_upgrade_to_user_accounts_keeps_every_user_active() {
    use chat_core::{Timestamp, UserListQuery};
    let Some(schema) = TempSchema::create("the_upgrade_to_user_accounts_keeps_every_user_active").await else {
        return;
    };
    let store = connect(&schema).await;
    store.close().await;
    let mut conn = raw(&schema).await;
    run_all(
        &mut conn,
        &[
            "DROP TABLE deleted_members",
            "DROP INDEX users_listed",
            "ALTER TABLE users DROP COLUMN created_at, DROP COLUMN last_seen, DROP COLUMN active,
             DROP COLUMN tokens_revoked_at, DROP COLUMN profile_set_at, DROP COLUMN deleted_at",
            "DELETE FROM _sqlx_migrations WHERE version = 10",
            "INSERT INTO users (id, name, roles) VALUES ('ada', 'Ada', '{support}'), ('bob', 'Bob', '{}')",
        ],
    )
    .await;
    conn.close().await.expect("close the raw connection");

    let before = Timestamp::now();
    let store = connect(&schema).await;
    let after = Timestamp::now();
    assert_eq!(store.schema_version().await.expect("version"), Some(PostgresStore::SCHEMA_VERSION));
    let ada = store.account(&uid("ada")).await.expect("account").expect("ada is kept");
    assert_eq!(
        (ada.user.name.as_str(), ada.user.roles.as_slice(), ada.active),
        ("Ada", &["support".to_owned()][..], true)
    );
    assert!(before.as_secs() <= ada.created_at.as_secs() && ada.created_at <= after, "{ada:?}");
    assert_eq!((ada.last_seen, ada.tokens_revoked_at, ada.profile_set_at), (None, None, None));
    let all = store.list_accounts(&UserListQuery { after: None, text: None, limit: 10 }).await.expect("list");
    assert_eq!(all.iter().map(|a| a.user.id.as_str()).collect::<Vec<_>>(), ["ada", "bob"]);
    store.close().await;
}

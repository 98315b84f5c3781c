//! What only the SQLite store has to get right: files, reopening, locks,
//! read-only databases and schema versions.

mod support;

use std::sync::Arc;
use std::time::Duration;

use chat_core::{HistoryQuery, MemberLimits, NewMessage, NewRoom, Room, RoomId, RoomKind, Store, User};
use chat_store_sql::{Error, SqliteConfig, SqliteStore};
use sqlx::{Connection, SqliteConnection};
use support::{accepted, group, msg, uid};

async fn connect(url: &str) -> SqliteStore {
    SqliteStore::connect(SqliteConfig::from_url(url)).await.expect("connect")
}

async fn make_room(store: &SqliteStore, members: &[&str]) -> Room {
    store.create_room(group(members), MemberLimits::NONE).await.expect("create_room").0
}

async fn seqs(store: &SqliteStore, room: RoomId) -> Vec<u64> {
    let page = store.history(room, HistoryQuery { limit: 1000, ..Default::default() }).await.expect("history");
    page.messages.iter().map(|m| m.seq).collect()
}

/// A raw connection, to look at the file the way another program would.
async fn raw(url: &str) -> SqliteConnection {
    SqliteConnection::connect(url).await.expect("a raw connection")
}

#[tokio::test]
async fn a_missing_file_is_created_in_wal_mode_with_the_schema() {
    let (_dir, path, url) = support::temp_db();
    assert!(!path.exists());
    let store = connect(&url).await;
    assert!(path.exists(), "connect must create the database file");
    store.ping().await.expect("ping");
    store.close().await;

    let mut conn = raw(&url).await;
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode").fetch_one(&mut conn).await.expect("journal_mode");
    assert_eq!(mode, "wal");
    let tables: Vec<String> = sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
        .fetch_all(&mut conn)
        .await
        .expect("tables");
    for table in ["_sqlx_migrations", "members", "messages", "rooms", "users"] {
        assert!(tables.iter().any(|t| t == table), "table {table} is missing from {tables:?}");
    }
    let version: i64 =
        sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations").fetch_one(&mut conn).await.expect("version");
    assert_eq!(version, SqliteStore::SCHEMA_VERSION);
}

#[tokio::test]
async fn reopening_keeps_data_and_continues_seqs() {
    let (_dir, _, url) = support::temp_db();
    let store = connect(&url).await;
    store.upsert_user(&User::new(uid("ada"), "Ada")).await.expect("upsert_user");
    let room = make_room(&store, &["ada", "bob"]).await;
    let direct = NewRoom { kind: RoomKind::Direct, name: None, ..group(&["ada", "bob"]) };
    let (direct_room, _) = store.create_room(direct, MemberLimits::NONE).await.expect("create direct room");
    let first = accepted(
        store
            .append_messages(vec![msg(room.id, "ada", "a"), msg(room.id, "bob", "b"), msg(room.id, "ada", "c")])
            .await
            .expect("append"),
    );
    store.advance_cursor(room.id, &uid("bob"), chat_core::ReceiptKind::Read, 3).await.expect("advance_cursor");
    store.close().await;

    // Migrations run again on a database that has them: nothing changes.
    let store = connect(&url).await;
    assert_eq!(store.user(&uid("ada")).await.expect("user").map(|u| u.name), Some("Ada".into()));
    assert_eq!(store.room(room.id).await.expect("room").map(|r| r.last_seq), Some(3));
    assert_eq!(seqs(&store, room.id).await, [1, 2, 3]);
    let member = store.member(room.id, &uid("bob")).await.expect("member").expect("bob is a member");
    assert_eq!((member.read_seq, member.delivered_seq), (3, 3));

    let out = accepted(
        store
            .append_messages(vec![msg(room.id, "bob", "d"), msg(room.id, "ada", "a")])
            .await
            .expect("append after reopening"),
    );
    assert_eq!((out[0].message.seq, out[0].created), (4, true), "seqs continue after reopening");
    assert_eq!(out[1].message, first[0].message, "idempotency survives reopening");
    assert!(!out[1].created);

    let again = NewRoom { kind: RoomKind::Direct, name: None, ..group(&["bob", "ada"]) };
    let (found, created) = store.create_room(again, MemberLimits::NONE).await.expect("create direct room again");
    assert_eq!((found.id, created), (direct_room.id, false), "direct rooms stay unique after reopening");
    store.close().await;
}

#[tokio::test]
async fn a_read_only_database_refuses_writes_as_unavailable() {
    let (_dir, path, url) = support::temp_db();
    let store = connect(&url).await;
    let room = make_room(&store, &["ada"]).await;
    store.append_messages(vec![msg(room.id, "ada", "a")]).await.expect("append");
    store.close().await;

    // Tests may run as root, which ignores file permissions, so the database is
    // opened read-only through the URL instead of by chmod.
    let ro = format!("{}?mode=ro", support::url_of(&path));
    let store = connect(&ro).await;
    let err = store.append_messages(vec![msg(room.id, "ada", "b")]).await.expect_err("a write to a read-only database");
    assert_eq!(err.code().as_str(), "unavailable", "got {err:?}");
    assert_eq!(err.to_string(), "service temporarily unavailable", "no database text in the message");
    let err = store.upsert_user(&User::new(uid("bob"), "Bob")).await.expect_err("another write");
    assert_eq!(err.code().as_str(), "unavailable", "got {err:?}");

    // Reads still work, and the failed write left nothing behind.
    assert_eq!(seqs(&store, room.id).await, [1]);
    assert_eq!(store.room(room.id).await.expect("room").map(|r| r.last_seq), Some(1));
    store.close().await;
}

#[tokio::test]
async fn a_newer_schema_is_refused_with_a_clear_error() {
    let (_dir, _, url) = support::temp_db();
    connect(&url).await.close().await;

    let future = SqliteStore::SCHEMA_VERSION + 1000;
    let mut conn = raw(&url).await;
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
         VALUES (?1, 'from a newer build', TRUE, x'00', 0)",
    )
    .bind(future)
    .execute(&mut conn)
    .await
    .expect("record a future migration");
    conn.close().await.expect("close the raw connection");

    let err = SqliteStore::connect(SqliteConfig::from_url(&url)).await.expect_err("a newer schema must be refused");
    match &err {
        Error::SchemaTooNew { found, supported } => {
            assert_eq!((*found, *supported), (future, SqliteStore::SCHEMA_VERSION));
        }
        other => panic!("expected SchemaTooNew, got {other:?}"),
    }
    let text = err.to_string();
    assert!(text.contains(&future.to_string()) && text.contains("newer"), "unclear message: {text}");
    let err = SqliteStore::migrate(SqliteConfig::from_url(&url)).await.expect_err("migrate must refuse too");
    assert!(matches!(err, Error::SchemaTooNew { .. }), "got {err:?}");
}

#[tokio::test]
async fn migrate_prepares_a_database_for_connect() {
    let (_dir, path, url) = support::temp_db();
    SqliteStore::migrate(SqliteConfig::from_url(&url)).await.expect("migrate");
    assert!(path.exists());
    SqliteStore::migrate(SqliteConfig::from_url(&url)).await.expect("migrate twice");
    let store = connect(&url).await;
    let room = make_room(&store, &["ada"]).await;
    assert_eq!(store.member_count(room.id).await.expect("member_count"), 1);
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_stores_on_one_file_keep_seqs_gapless() {
    // Two stores stand in for two processes: each has its own writer
    // connection, and only SQLite's file lock keeps them apart.
    let (_dir, _, url) = support::temp_db();
    let a = Arc::new(connect(&url).await);
    let b = Arc::new(connect(&url).await);
    let room = make_room(&a, &["a", "b"]).await;
    let mut tasks = Vec::new();
    for (name, store) in [("a", Arc::clone(&a)), ("b", Arc::clone(&b))] {
        for t in 0..3 {
            let store = Arc::clone(&store);
            tasks.push(tokio::spawn(async move {
                for i in 0..20 {
                    let batch =
                        vec![msg(room.id, name, &format!("{t}-{i}-x")), msg(room.id, name, &format!("{t}-{i}-y"))];
                    store.append_messages(batch).await.expect("append from two stores");
                }
            }));
        }
    }
    for task in tasks {
        task.await.expect("an appending task panicked");
    }
    let total = 2 * 3 * 20 * 2;
    assert_eq!(seqs(&a, room.id).await, (1..=total).collect::<Vec<_>>());
    assert_eq!(seqs(&b, room.id).await, (1..=total).collect::<Vec<_>>(), "each store sees the other's writes");
    a.close().await;
    b.close().await;
}

#[tokio::test]
async fn a_database_locked_by_another_process_is_unavailable() {
    let (_dir, _, url) = support::temp_db();
    let mut config = SqliteConfig::from_url(&url);
    config.busy_timeout = Duration::from_millis(100);
    let store = SqliteStore::connect(config).await.expect("connect");
    let room = make_room(&store, &["ada"]).await;

    let mut other = raw(&url).await;
    sqlx::query("BEGIN IMMEDIATE").execute(&mut other).await.expect("take the write lock");
    let err = store.append_messages(vec![msg(room.id, "ada", "a")]).await.expect_err("the database is locked");
    assert_eq!(err.code().as_str(), "unavailable", "got {err:?}");
    sqlx::query("ROLLBACK").execute(&mut other).await.expect("release the write lock");

    let out =
        accepted(store.append_messages(vec![msg(room.id, "ada", "a")]).await.expect("append once the lock is gone"));
    assert_eq!((out[0].message.seq, out[0].created), (1, true), "the failed attempt used up nothing");
    store.close().await;
}

#[tokio::test]
async fn an_unopenable_file_is_unavailable_not_a_panic() {
    let (dir, _, _) = support::temp_db();
    let url = support::url_of(&dir.path().join("no-such-directory").join("chat.db"));
    let err = SqliteStore::connect(SqliteConfig::from_url(url)).await.expect_err("the directory does not exist");
    assert!(err.is_unavailable(), "got {err:?}");
    assert_eq!(chat_core::Error::from(err).code().as_str(), "unavailable");
}

#[tokio::test]
async fn a_malformed_url_is_a_configuration_error() {
    let err = SqliteStore::connect(SqliteConfig::from_url("sqlite://chat.db?mode=sideways"))
        .await
        .expect_err("an unknown mode");
    assert!(matches!(err, Error::Config(_)), "got {err:?}");
    assert!(!err.to_string().contains("sideways"), "the message stays generic: {err}");
}

#[tokio::test]
async fn a_closed_store_is_unavailable() {
    let store = support::memory_store().await;
    store.close().await;
    let err = store.room(RoomId::generate()).await.expect_err("the store is closed");
    assert_eq!(err.code().as_str(), "unavailable", "got {err:?}");
    let err = store.append_messages(vec![msg(RoomId::generate(), "ada", "a")]).await.expect_err("closed");
    assert_eq!(err.code().as_str(), "unavailable", "got {err:?}");
}

#[tokio::test]
async fn in_memory_databases_are_private_to_their_store() {
    let a = support::memory_store().await;
    let b = support::memory_store().await;
    let room = make_room(&a, &["ada"]).await;
    assert!(a.room(room.id).await.expect("room").is_some());
    assert_eq!(b.room(room.id).await.expect("room"), None, "another in-memory store must not see it");
    a.close().await;
    b.close().await;
}

/// The plans, not only the timings: history pages are range searches of the
/// `(room_id, seq)` key, read in the order asked for, with no sort; a user's
/// rooms start from the user's index entries. Nothing scans a table.
#[tokio::test]
async fn history_and_room_lists_use_their_indexes() {
    let (_dir, _, url) = support::temp_db();
    let store = connect(&url).await;
    let room = make_room(&store, &["ada", "bob"]).await;
    let batch: Vec<NewMessage> = (0..2_000).map(|i| msg(room.id, "ada", &format!("m{i}"))).collect();
    store.append_messages(batch).await.expect("fill the room");
    store.close().await;
    let mut conn = raw(&url).await;
    // 2,500 other rooms of two members each, so that the statistics see a
    // members table where reading it all would be the wrong plan.
    sqlx::query(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2500)
         INSERT INTO rooms (id, kind, visibility, created_by, created_at, last_activity)
         SELECT printf('00000000-0000-7000-8000-%012d', i), 'group', 'private', 'x', i, i FROM n",
    )
    .execute(&mut conn)
    .await
    .expect("other rooms");
    sqlx::query(
        "INSERT INTO members (room_id, user_id, role, joined_at)
         SELECT r.id, 'user-' || u.value || '-' || r.created_at, 'member', 0
         FROM rooms r, json_each('[1,2]') u WHERE r.created_by = 'x'",
    )
    .execute(&mut conn)
    .await
    .expect("their members");
    sqlx::query("ANALYZE").execute(&mut conn).await.expect("analyze");

    let id = room.id.to_string();
    let history = [
        format!("SELECT * FROM messages WHERE room_id = '{id}' ORDER BY seq DESC LIMIT 51"),
        format!("SELECT * FROM messages WHERE room_id = '{id}' AND seq < 1000 ORDER BY seq DESC LIMIT 51"),
        format!("SELECT * FROM messages WHERE room_id = '{id}' AND seq > 10 ORDER BY seq ASC LIMIT 51"),
        format!("SELECT * FROM messages WHERE room_id = '{id}' AND seq > 10 AND seq < 90 ORDER BY seq ASC LIMIT 51"),
    ];
    for sql in &history {
        let plan = query_plan(&mut conn, sql).await;
        assert!(plan.contains("SEARCH messages USING INDEX sqlite_autoindex_messages"), "{sql}\n{plan}");
        assert!(!plan.contains("SCAN") && !plan.contains("TEMP B-TREE"), "{sql}\n{plan}");
    }
    let plan = query_plan(
        &mut conn,
        "SELECT r.id, m.read_seq FROM members m JOIN rooms r ON r.id = m.room_id
         WHERE m.user_id = 'ada' ORDER BY r.last_activity DESC, r.id DESC",
    )
    .await;
    assert!(
        plan.contains("USING INDEX members_by_user") || plan.contains("USING COVERING INDEX members_by_user"),
        "{plan}"
    );
    assert!(!plan.contains("SCAN"), "{plan}");
}

async fn query_plan(conn: &mut SqliteConnection, sql: &str) -> String {
    let rows: Vec<(i64, i64, i64, String)> = sqlx::query_as(sqlx::AssertSqlSafe(format!("EXPLAIN QUERY PLAN {sql}")))
        .fetch_all(&mut *conn)
        .await
        .expect("explain");
    rows.into_iter().map(|r| r.3).collect::<Vec<_>>().join("\n")
}

/// Migration 6 on a database of version 5: the owners' memberships become
/// their own rooms, the newest open support room of each creator becomes
/// their one open support room (older duplicates stay, unmarked, so that the
/// migration cannot fail on them), and the queue holds the open support rooms
/// that have a message, by their first one.
#[tokio::test]
async fn the_upgrade_to_version_6_fills_in_what_it_adds() {
    use chat_core::{MemberLimits, Timestamp};
    let (_dir, _, url) = support::temp_db();
    connect(&url).await.close().await;
    let mut conn = raw(&url).await;
    // Back to version 5, then what version 5 allowed: three support rooms of
    // one visitor, one of them closed.
    let [closed, waiting, newest, other, team] = [(); 5].map(|()| RoomId::generate().to_string());
    for sql in [
        "DROP INDEX rooms_support_queue",
        "ALTER TABLE rooms DROP COLUMN first_message_at",
        "DROP INDEX rooms_open_support_of",
        "ALTER TABLE rooms DROP COLUMN open_support_of",
        "DROP INDEX members_own_by_user",
        "ALTER TABLE members DROP COLUMN self_joined",
        "DELETE FROM _sqlx_migrations WHERE version = 6",
    ] {
        sqlx::query(sql).execute(&mut conn).await.expect(sql);
    }
    for sql in [
        "INSERT INTO rooms (id, kind, visibility, created_by, created_at, last_seq, last_activity, closed)
         VALUES (?1, 'support', 'public', 'vis', 1000, 1, 1100, 1), (?2, 'support', 'public', 'vis', 2000, 2, 2600, 0),
                (?3, 'support', 'public', 'vis', 3000, 0, 3000, 0), (?4, 'support', 'public', 'w', 1500, 2, 5000, 0),
                (?5, 'group', 'private', 'vis', 500, 0, 500, 0)",
        "INSERT INTO members (room_id, user_id, role, joined_at)
         VALUES (?1, 'vis', 'owner', 0), (?2, 'vis', 'owner', 0), (?3, 'vis', 'owner', 0), (?4, 'w', 'owner', 0),
                (?5, 'vis', 'owner', 0), (?5, 'x', 'member', 0)",
        "INSERT INTO messages (room_id, seq, id, sender_id, client_msg_id, body, created_at)
         VALUES (?1, 1, 'm1', 'vis', 'a', 'a', 1100), (?2, 1, 'm2', 'vis', 'a', 'a', 2500),
                (?2, 2, 'm3', 'vis', 'b', 'b', 2600), (?4, 1, 'm4', 'w', 'a', 'a', 1600),
                (?4, 2, 'm5', 'w', 'b', 'b', 5000)",
    ] {
        let mut query = sqlx::query(sql);
        for id in [&closed, &waiting, &newest, &other, &team] {
            query = query.bind(id.as_str());
        }
        query.execute(&mut conn).await.expect(sql);
    }
    conn.close().await.expect("close the raw connection");

    let store = connect(&url).await;
    let queue: Vec<(String, i64)> = store
        .support_queue(None, 10)
        .await
        .expect("support_queue")
        .iter()
        .map(|q| (q.room.id.to_string(), q.waiting_since.as_millis()))
        .collect();
    assert_eq!(
        queue,
        [(other, 1_600), (waiting.clone(), 2_500)],
        "open support rooms with a message, by the first one"
    );

    let support = || NewRoom {
        kind: RoomKind::Support,
        name: None,
        created_at: Timestamp::from_millis(9_000),
        ..group(&["vis"])
    };
    let (room, created) = store.create_room(support(), MemberLimits::NONE).await.expect("create_room");
    assert_eq!((room.id.to_string(), created), (newest, false), "the newest open support room is the creator's one");
    store.close_room(room.id).await.expect("close_room");
    let (room, created) = store.create_room(support(), MemberLimits::NONE).await.expect("create_room");
    assert!(created && room.id.to_string() != waiting, "an older duplicate is left as it was, unmarked");

    // Owners' memberships are their own rooms; being a member is not.
    let five = MemberLimits { max_own_rooms: 5, max_members: u64::MAX };
    let err = store.create_room(group(&["vis"]), five).await.expect_err("vis has 5 own rooms now");
    assert_eq!(err.code().as_str(), "forbidden", "{err:?}");
    let one = MemberLimits { max_own_rooms: 1, max_members: u64::MAX };
    store.create_room(group(&["x"]), one).await.expect("x was added to the team room, it is not their own");
    store.close().await;
}

/// Migration 7 on a database of version 6: the messages already stored
/// (not the deleted ones) are indexed for search, and the triggers keep the
/// index in step from then on.
#[tokio::test]
async fn the_upgrade_to_version_7_indexes_the_stored_messages() {
    use chat_core::{MessageId, SearchQuery, search};
    let (_dir, _, url) = support::temp_db();
    let store = connect(&url).await;
    let room = make_room(&store, &["ada", "bob"]).await;
    store.close().await;
    let mut conn = raw(&url).await;
    for sql in [
        "DROP TRIGGER messages_fts_insert",
        "DROP TRIGGER messages_fts_delete",
        "DROP TRIGGER messages_fts_update",
        "DROP TABLE messages_fts",
        "DELETE FROM _sqlx_migrations WHERE version = 7",
    ] {
        sqlx::query(sql).execute(&mut conn).await.expect(sql);
    }
    let (kept, gone) = (MessageId::generate().to_string(), MessageId::generate().to_string());
    sqlx::query(
        "INSERT INTO messages (room_id, seq, id, sender_id, client_msg_id, body, created_at, deleted)
         VALUES (?1, 1, ?2, 'ada', 'a', 'Crème brûlée', 1000, 0), (?1, 2, ?3, 'ada', 'b', '', 1001, 1)",
    )
    .bind(room.id.to_string())
    .bind(&kept)
    .bind(&gone)
    .execute(&mut conn)
    .await
    .expect("messages of version 6");
    conn.close().await.expect("close the raw connection");

    let store = connect(&url).await;
    let query =
        |q: &str| SearchQuery { user: uid("bob"), words: search::words(q), room: None, limit: 10, before: None };
    let page = store.search_messages(&query("CREME")).await.expect("search");
    assert_eq!(page.results.iter().map(|h| h.message.id.to_string()).collect::<Vec<_>>(), [kept.as_str()]);
    let kept_id: MessageId = kept.parse().expect("an id");
    store.edit_message(room.id, kept_id, "tiramisu", chat_core::Timestamp::from_millis(2000)).await.expect("edit");
    assert!(store.search_messages(&query("creme")).await.expect("search").results.is_empty(), "the triggers are back");
    assert_eq!(store.search_messages(&query("tiramisu")).await.expect("search").results.len(), 1);
    store.close().await;
}

/// Migration 9 on a database without it (version 7, or 8 when the migration
/// numbered before it is there): the users stored before are active, made
/// at the upgrade, never seen, and go on being found and changed.
#[tokio::test]
async fn the_upgrade_to_user_accounts_keeps_every_user_active() {
    use chat_core::{Timestamp, UserListQuery};
    let (_dir, _, url) = support::temp_db();
    let store = connect(&url).await;
    store.close().await;
    let mut conn = raw(&url).await;
    for sql in [
        "DROP TABLE deleted_members",
        "ALTER TABLE users DROP COLUMN created_at",
        "ALTER TABLE users DROP COLUMN last_seen",
        "ALTER TABLE users DROP COLUMN active",
        "ALTER TABLE users DROP COLUMN tokens_revoked_at",
        "ALTER TABLE users DROP COLUMN profile_set_at",
        "ALTER TABLE users DROP COLUMN deleted_at",
        "DELETE FROM _sqlx_migrations WHERE version = 9",
        "INSERT INTO users (id, name, roles) VALUES ('ada', 'Ada', '[\"support\"]'), ('bob', 'Bob', '[]')",
    ] {
        sqlx::query(sql).execute(&mut conn).await.expect(sql);
    }
    conn.close().await.expect("close the raw connection");

    let before = Timestamp::now();
    let store = connect(&url).await;
    let after = Timestamp::now();
    let ada = store.account(&uid("ada")).await.expect("account").expect("ada is kept");
    assert_eq!(
        (ada.user.name.as_str(), ada.user.roles.as_slice(), ada.active),
        ("Ada", &["support".to_owned()][..], true)
    );
    assert!(before.as_secs() <= ada.created_at.as_secs() && ada.created_at <= after, "{ada:?}");
    assert_eq!((ada.last_seen, ada.tokens_revoked_at, ada.profile_set_at), (None, None, None));
    let all = store.list_accounts(&UserListQuery { after: None, text: None, limit: 10 }).await.expect("list");
    assert_eq!(all.iter().map(|a| a.user.id.as_str()).collect::<Vec<_>>(), ["ada", "bob"]);
    assert!(store.delete_user(&uid("bob"), Timestamp::now()).await.expect("delete").is_some());
    assert_eq!(store.search_users("b", 10).await.expect("search").len(), 0);
    store.close().await;
}

//! Helpers shared by the integration tests.

#![allow(dead_code, unused_imports)] // Each test file uses its own part of this module.

#[cfg(feature = "sqlite")]
pub(crate) use sqlite::*;

/// A user id from a literal.
pub(crate) fn uid(id: &str) -> chat_core::UserId {
    chat_core::UserId::new(id).expect("a valid user id")
}

/// A private group room of `members`, the first one its creator.
pub(crate) fn group(members: &[&str]) -> chat_core::NewRoom {
    use chat_core::{MemberRole, NewRoom, RoomId, RoomKind, Timestamp, Visibility};
    NewRoom {
        id: RoomId::generate(),
        kind: RoomKind::Group,
        name: Some("room".into()),
        visibility: Visibility::Private,
        created_by: uid(members[0]),
        created_at: Timestamp::from_millis(1_000),
        members: members.iter().map(|m| (uid(m), MemberRole::Member)).collect(),
    }
}

/// The answers of an append whose every message must be accepted.
pub(crate) fn accepted(answers: Vec<chat_core::Result<chat_core::Appended>>) -> Vec<chat_core::Appended> {
    answers.into_iter().map(|a| a.expect("a member's message to an open room is accepted")).collect()
}

/// A message from `sender` into `room` with its idempotency key.
pub(crate) fn msg(room: chat_core::RoomId, sender: &str, client_msg_id: &str) -> chat_core::NewMessage {
    use chat_core::{MessageId, NewMessage, Timestamp};
    NewMessage {
        id: MessageId::generate(),
        room_id: room,
        sender_id: uid(sender),
        client_msg_id: client_msg_id.into(),
        body: format!("body of {client_msg_id}"),
        attachments: Vec::new(),
        reply_to: None,
        created_at: Timestamp::from_millis(2_000),
        call: None,
    }
}

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

/// A PostgreSQL store in a fresh schema, or `None` without a server.
#[cfg(feature = "postgres")]
pub(crate) async fn postgres_store() -> Option<chat_core::testing::TestStore> {
    let schema = chat_store_sql::testing::TempSchema::create("postgres conformance").await?;
    let store = chat_store_sql::PostgresStore::connect(chat_store_sql::PostgresConfig::from_url(schema.url()))
        .await
        .expect("connect to PostgreSQL");
    Some(chat_core::testing::TestStore::with_guard(store, schema))
}

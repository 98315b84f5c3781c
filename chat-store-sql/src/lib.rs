//! SQL implementations of [`chat_core::Store`].
//!
//! Each backend is a feature with its own module; enable the ones you need:
//!
//! | feature | store | database |
//! |---|---|---|
//! | `sqlite` (default) | [`SqliteStore`] | one SQLite file, bundled into the binary |
//! | `postgres` | [`PostgresStore`] | a PostgreSQL server, shareable by several processes |
//!
//! Every backend keeps the rules of the [`Store`](chat_core::Store) trait and
//! runs the conformance suite of `chat_core::testing` in its tests. What they
//! share:
//!
//! - **Seqs** come from a `last_seq` counter on the room row, moved inside the
//!   transaction that inserts the message, which holds the room's write lock
//!   (SQLite's database lock; PostgreSQL's row lock), so they are gapless even
//!   with several processes writing. A duplicate takes no seq.
//! - **Idempotency** is a UNIQUE index on `(room_id, sender_id, client_msg_id)`
//!   with `ON CONFLICT DO NOTHING`; a skipped insert reads the stored message.
//!   The index decides, not a lookup before the insert.
//! - **Group commit**: [`append_messages`](chat_core::Store::append_messages)
//!   writes its whole batch in one transaction, so one durable commit, and
//!   nothing of it when any part fails.
//! - **Who may write** is read by the append's first statement, the one that
//!   reads the counters under the rooms' write lock: whether each room exists
//!   and is open, and one index lookup per (room, sender) of the batch. A
//!   refused message takes no seq; the rest of the batch is stored.
//! - **Direct rooms** are unique per pair of users through a UNIQUE
//!   `direct_key` column, and a creator's open support room through a UNIQUE
//!   `open_support_of` column, not a check before the insert.
//! - **Limits** on memberships are counted in the transaction that inserts:
//!   under SQLite's write lock, and under PostgreSQL advisory locks on the
//!   user and the room (always in that order). A user's own rooms are the
//!   memberships marked `self_joined`, counted from a partial index.
//! - **Errors** are classified by [`Error`]: a database that cannot be reached,
//!   is busy, read-only or full is [`Error::Unavailable`]; a broken uniqueness
//!   rule is [`Error::Conflict`]. Converted into [`chat_core::Error`], no
//!   database text reaches a client.
//! - **Migrations** are embedded in the binary and run on connect. A database
//!   migrated by a newer build is refused ([`Error::SchemaTooNew`]) rather than
//!   used with a schema this build does not know.
//!
//! Both backends hand out identical values: user ids are text and times
//! integer milliseconds since the epoch on both. SQLite keeps room and message
//! ids as text and roles and attachments as JSON text; PostgreSQL keeps them
//! as `UUID`, `TEXT[]` and `JSONB`.
//!
//! # Example
//!
//! ```
//! # #[cfg(feature = "sqlite")]
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use chat_core::{HistoryQuery, MemberLimits, MemberRole, MessageId, NewMessage, NewRoom, RoomId, RoomKind};
//! use chat_core::{Store, Timestamp, UserId, Visibility};
//! use chat_store_sql::{SqliteConfig, SqliteStore};
//!
//! // A file would be `sqlite://chat.db`; it is created when missing.
//! let store = SqliteStore::connect(SqliteConfig::from_url("sqlite::memory:")).await?;
//!
//! let ada = UserId::new("ada")?;
//! let (room, created) = store
//!     .create_room(NewRoom {
//!         id: RoomId::generate(),
//!         kind: RoomKind::Group,
//!         name: Some("general".into()),
//!         visibility: Visibility::Public,
//!         created_by: ada.clone(),
//!         created_at: Timestamp::now(),
//!         members: vec![(ada.clone(), MemberRole::Owner)],
//!     }, MemberLimits::NONE)
//!     .await?;
//! assert!(created);
//!
//! let send_as = |sender: &UserId, client_msg_id: &str| NewMessage {
//!     id: MessageId::generate(),
//!     room_id: room.id,
//!     sender_id: sender.clone(),
//!     client_msg_id: client_msg_id.into(),
//!     body: "hello".into(),
//!     attachments: vec![],
//!     reply_to: None,
//!     created_at: Timestamp::now(),
//!     call: None,
//! };
//! let bob = UserId::new("bob")?;
//! // One batch, one commit; the retried "m1" is not stored twice, and bob,
//! // who is not a member, is refused alone.
//! let batch = vec![send_as(&ada, "m1"), send_as(&bob, "b1"), send_as(&ada, "m2"), send_as(&ada, "m1")];
//! let answers = store.append_messages(batch).await?;
//! let seqs: Vec<Option<(u64, bool)>> =
//!     answers.iter().map(|a| a.as_ref().ok().map(|a| (a.message.seq, a.created))).collect();
//! assert_eq!(seqs, [Some((1, true)), None, Some((2, true)), Some((1, false))]);
//!
//! let page = store.history(room.id, HistoryQuery { limit: 50, ..Default::default() }).await?;
//! assert_eq!(page.messages.len(), 2);
//! store.close().await;
//! # Ok(())
//! # }
//! # #[cfg(not(feature = "sqlite"))]
//! # fn main() {}
//! ```

#[cfg_attr(not(any(feature = "sqlite", feature = "postgres")), allow(dead_code))]
mod batch;
mod codec;
mod common;
pub mod error;
mod migrate;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "sqlite")]
pub mod sqlite;
#[cfg(feature = "postgres")]
pub mod testing;

pub use error::{Error, Result};
#[cfg(feature = "postgres")]
pub use postgres::{PostgresConfig, PostgresStore};
#[cfg(feature = "sqlite")]
pub use sqlite::{SqliteConfig, SqliteStore, Synchronous};

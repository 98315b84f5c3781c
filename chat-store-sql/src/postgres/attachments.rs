//! [`AttachmentStore`] on PostgreSQL: the `attachments` and `server_secrets`
//! tables of migration 0011. Posting binds files in `append_messages` (which
//! locks their rows) and deleting a message removes them in
//! `delete_message` (both in `postgres.rs`), each in the transaction that
//! changes the message.

use async_trait::async_trait;
use chat_core::attachment::{Posted, StoredAttachment, Thumbnail};
use chat_core::store::{AttachmentStore, quota_error};
use chat_core::{AttachmentId, MessageId, RoomId, Timestamp, UserId};
use sqlx::Row;
use sqlx::postgres::{PgConnection, PgRow};
use uuid::Uuid;

use super::{Db, PostgresStore};
use crate::codec;
use crate::common::finish;
use crate::error::{Error, Result};

macro_rules! attachment_cols {
    () => {
        "id, uploader, name, content_type, size, width, height, thumbnail_type, thumbnail_size, created_at, \
         room_id, message_id, removed"
    };
}

/// What a file counts for against the quota, in SQL (see
/// [`StoredAttachment::accounted_bytes`]).
macro_rules! accounted {
    () => {
        "GREATEST(size + COALESCE(thumbnail_size, 0), 65536)"
    };
}

/// Serializes one user's uploads while their usage is summed and the new
/// record inserted, so that the quota holds across processes.
const LOCK_UPLOADER: &str = "SELECT pg_advisory_xact_lock(hashtextextended('chat:uploads:' || $1::text, 0))";

/// The bytes a user's files that still count take, against the quota.
const USAGE: &str =
    concat!("SELECT COALESCE(SUM(", accounted!(), "), 0)::int8 FROM attachments WHERE uploader = $1 AND NOT removed");

fn from_row(row: &PgRow) -> Result<StoredAttachment> {
    let uploader: String = row.try_get("uploader").db()?;
    let size: i64 = row.try_get("size").db()?;
    let thumbnail_type: Option<String> = row.try_get("thumbnail_type").db()?;
    let thumbnail_size: Option<i64> = row.try_get("thumbnail_size").db()?;
    let room_id: Option<Uuid> = row.try_get("room_id").db()?;
    let message_id: Option<Uuid> = row.try_get("message_id").db()?;
    let dimension = |col: &str| -> Result<Option<u32>> {
        let v: Option<i32> = row.try_get(col).db()?;
        v.map(|v| u32::try_from(v).map_err(|_| Error::Corrupt("attachments.width/height"))).transpose()
    };
    let posted = match (room_id, message_id) {
        (Some(room), Some(message)) => {
            Some(Posted { room_id: RoomId::from_uuid(room), message_id: MessageId::from_uuid(message) })
        }
        _ => None,
    };
    Ok(StoredAttachment {
        id: AttachmentId::from_uuid(row.try_get("id").db()?),
        uploader: UserId::new(uploader).map_err(|_| Error::Corrupt("attachments.uploader"))?,
        name: row.try_get("name").db()?,
        content_type: row.try_get("content_type").db()?,
        size: u64::try_from(size).map_err(|_| Error::Corrupt("attachments.size"))?,
        width: dimension("width")?,
        height: dimension("height")?,
        thumbnail: match (thumbnail_type, thumbnail_size) {
            (Some(content_type), Some(size)) => Some(Thumbnail {
                content_type,
                size: u64::try_from(size).map_err(|_| Error::Corrupt("attachments.thumbnail_size"))?,
            }),
            _ => None,
        },
        created_at: codec::time_from_db(row.try_get("created_at").db()?),
        posted,
        removed: row.try_get("removed").db()?,
    })
}

fn dimension(v: Option<u32>) -> Option<i32> {
    v.map(|v| i32::try_from(v).unwrap_or(i32::MAX))
}

async fn insert_in(conn: &mut PgConnection, a: &StoredAttachment, quota: u64) -> Result<chat_core::Result<()>> {
    if quota > 0 {
        sqlx::query(LOCK_UPLOADER).bind(a.uploader.as_str()).execute(&mut *conn).await.db()?;
        let used: i64 = sqlx::query_scalar(USAGE).bind(a.uploader.as_str()).fetch_one(&mut *conn).await.db()?;
        if used.max(0) as u64 + a.accounted_bytes() > quota {
            return Ok(Err(quota_error(quota)));
        }
    }
    sqlx::query(concat!(
        "INSERT INTO attachments (",
        attachment_cols!(),
        ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
    ))
    .bind(a.id.as_uuid())
    .bind(a.uploader.as_str())
    .bind(&a.name)
    .bind(&a.content_type)
    .bind(a.size as i64)
    .bind(dimension(a.width))
    .bind(dimension(a.height))
    .bind(a.thumbnail.as_ref().map(|t| t.content_type.clone()))
    .bind(a.thumbnail.as_ref().map(|t| t.size as i64))
    .bind(a.created_at.as_millis())
    .bind(a.posted.map(|p| *p.room_id.as_uuid()))
    .bind(a.posted.map(|p| *p.message_id.as_uuid()))
    .bind(a.removed)
    .execute(&mut *conn)
    .await
    .db()?;
    Ok(Ok(()))
}

#[async_trait]
impl AttachmentStore for PostgresStore {
    async fn insert_attachment(&self, attachment: &StoredAttachment, quota: u64) -> chat_core::Result<()> {
        self.bounded(async {
            let mut tx = self.begin().await?;
            let result = insert_in(&mut tx, attachment, quota).await;
            finish(tx, result).await?
        })
        .await
    }

    async fn attachment(&self, id: AttachmentId) -> chat_core::Result<Option<StoredAttachment>> {
        self.bounded(async {
            let row = sqlx::query(concat!("SELECT ", attachment_cols!(), " FROM attachments WHERE id = $1"))
                .bind(id.as_uuid())
                .fetch_optional(&self.pool)
                .await
                .db()?;
            Ok(row.as_ref().map(from_row).transpose()?)
        })
        .await
    }

    async fn attachments(&self, ids: &[AttachmentId]) -> chat_core::Result<Vec<StoredAttachment>> {
        let ids: Vec<Uuid> = ids.iter().map(|id| *id.as_uuid()).collect();
        self.bounded(async {
            let rows = sqlx::query(concat!("SELECT ", attachment_cols!(), " FROM attachments WHERE id = ANY($1)"))
                .bind(&ids)
                .fetch_all(&self.pool)
                .await
                .db()?;
            Ok(rows.iter().map(from_row).collect::<Result<_>>()?)
        })
        .await
    }

    async fn attachment_usage(&self, user: &UserId) -> chat_core::Result<u64> {
        self.bounded(async {
            let used: i64 = sqlx::query_scalar(USAGE).bind(user.as_str()).fetch_one(&self.pool).await.db()?;
            Ok(used.max(0) as u64)
        })
        .await
    }

    async fn attachments_to_purge(
        &self,
        orphaned_before: Timestamp,
        limit: u32,
    ) -> chat_core::Result<Vec<StoredAttachment>> {
        self.bounded(async {
            let rows = sqlx::query(concat!(
                "SELECT ",
                attachment_cols!(),
                " FROM attachments WHERE (message_id IS NULL OR removed) AND (removed OR created_at < $1)
                 ORDER BY created_at LIMIT $2"
            ))
            .bind(orphaned_before.as_millis())
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .db()?;
            Ok(rows.iter().map(from_row).collect::<Result<_>>()?)
        })
        .await
    }

    async fn mark_removed(&self, id: AttachmentId, orphaned_before: Timestamp) -> chat_core::Result<bool> {
        self.bounded(async {
            // The row lock this takes waits for a send posting the file to
            // commit, and then sees it posted.
            let changed = sqlx::query(
                "UPDATE attachments SET removed = TRUE
                 WHERE id = $1 AND (removed OR (message_id IS NULL AND created_at < $2))",
            )
            .bind(id.as_uuid())
            .bind(orphaned_before.as_millis())
            .execute(&self.pool)
            .await
            .db()?
            .rows_affected();
            Ok(changed > 0)
        })
        .await
    }

    async fn forget_attachment(&self, id: AttachmentId) -> chat_core::Result<()> {
        self.bounded(async {
            sqlx::query("DELETE FROM attachments WHERE id = $1 AND removed")
                .bind(id.as_uuid())
                .execute(&self.pool)
                .await
                .db()?;
            Ok(())
        })
        .await
    }
}

impl PostgresStore {
    /// [`Store::server_secret`](chat_core::Store::server_secret) on PostgreSQL.
    pub(super) async fn secret(&self, name: &str, candidate: &str) -> chat_core::Result<String> {
        self.bounded(async {
            // The insert waits for a racing one to commit and then does
            // nothing; the read that follows sees the winner.
            sqlx::query("INSERT INTO server_secrets (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING")
                .bind(name)
                .bind(candidate)
                .execute(&self.pool)
                .await
                .db()?;
            Ok(sqlx::query_scalar("SELECT value FROM server_secrets WHERE name = $1")
                .bind(name)
                .fetch_one(&self.pool)
                .await
                .db()?)
        })
        .await
    }
}

/// Reads the records of the files a batch names, locking them (in id order,
/// after the rooms' locks) so that a racing batch posting the same file
/// waits for this one and then sees it posted.
pub(super) async fn lock_files(conn: &mut PgConnection, ids: &[&str]) -> Result<Vec<(String, (String, bool))>> {
    let ids: Vec<Uuid> = ids.iter().filter_map(|id| id.parse().ok()).collect();
    let rows: Vec<(Uuid, String, bool)> = sqlx::query_as(
        "SELECT id, uploader, message_id IS NULL AND NOT removed FROM attachments
         WHERE id = ANY($1) ORDER BY id FOR UPDATE",
    )
    .bind(&ids)
    .fetch_all(&mut *conn)
    .await
    .db()?;
    Ok(rows.into_iter().map(|(id, uploader, postable)| (id.to_string(), (uploader, postable))).collect())
}

/// Binds the files a batch posts to their messages.
pub(super) async fn bind_files(conn: &mut PgConnection, bindings: &[(String, String, String)]) -> Result<()> {
    if bindings.is_empty() {
        return Ok(());
    }
    let mut ids = Vec::with_capacity(bindings.len());
    let mut rooms = Vec::with_capacity(bindings.len());
    let mut messages = Vec::with_capacity(bindings.len());
    for (id, room, message) in bindings {
        let parse = |s: &str| s.parse::<Uuid>().map_err(|_| Error::Corrupt("attachment binding"));
        ids.push(parse(id)?);
        rooms.push(parse(room)?);
        messages.push(parse(message)?);
    }
    sqlx::query(
        "UPDATE attachments SET room_id = b.room_id, message_id = b.message_id
         FROM unnest($1::uuid[], $2::uuid[], $3::uuid[]) AS b(id, room_id, message_id)
         WHERE attachments.id = b.id",
    )
    .bind(&ids)
    .bind(&rooms)
    .bind(&messages)
    .execute(&mut *conn)
    .await
    .db()?;
    Ok(())
}

//! [`AttachmentStore`] on SQLite: the `attachments` and `server_secrets`
//! tables of migration 0010. Posting binds files in `append_messages` and
//! deleting a message removes them in `delete_message` (both in
//! `sqlite.rs`), each in the transaction that changes the message.

use async_trait::async_trait;
use chat_core::attachment::{Posted, StoredAttachment, Thumbnail};
use chat_core::store::{AttachmentStore, quota_error};
use chat_core::{AttachmentId, Timestamp, UserId};
use sqlx::Row;
use sqlx::sqlite::{SqliteConnection, SqliteRow};

use super::{Db, SqliteStore};
use crate::codec;
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
        "MAX(size + COALESCE(thumbnail_size, 0), 65536)"
    };
}

/// The bytes a user's files that still count take, against the quota.
const USAGE: &str =
    concat!("SELECT COALESCE(SUM(", accounted!(), "), 0) FROM attachments WHERE uploader = ?1 AND removed = 0");

fn from_row(row: &SqliteRow) -> Result<StoredAttachment> {
    let id: String = row.try_get("id").db()?;
    let uploader: String = row.try_get("uploader").db()?;
    let size: i64 = row.try_get("size").db()?;
    let thumbnail_type: Option<String> = row.try_get("thumbnail_type").db()?;
    let thumbnail_size: Option<i64> = row.try_get("thumbnail_size").db()?;
    let room_id: Option<String> = row.try_get("room_id").db()?;
    let message_id: Option<String> = row.try_get("message_id").db()?;
    let dimension = |col: &str| -> Result<Option<u32>> {
        let v: Option<i64> = row.try_get(col).db()?;
        v.map(|v| u32::try_from(v).map_err(|_| Error::Corrupt("attachments.width/height"))).transpose()
    };
    let posted = match (room_id, message_id) {
        (Some(room), Some(message)) => Some(Posted {
            room_id: codec::room_id(&room, "attachments.room_id")?,
            message_id: message.parse().map_err(|_| Error::Corrupt("attachments.message_id"))?,
        }),
        _ => None,
    };
    Ok(StoredAttachment {
        id: id.parse().map_err(|_| Error::Corrupt("attachments.id"))?,
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
        removed: row.try_get::<i64, _>("removed").db()? != 0,
    })
}

async fn insert_in(conn: &mut SqliteConnection, a: &StoredAttachment, quota: u64) -> Result<chat_core::Result<()>> {
    if quota > 0 {
        let used: i64 = sqlx::query_scalar(USAGE).bind(a.uploader.as_str()).fetch_one(&mut *conn).await.db()?;
        if used.max(0) as u64 + a.accounted_bytes() > quota {
            return Ok(Err(quota_error(quota)));
        }
    }
    sqlx::query(concat!(
        "INSERT INTO attachments (",
        attachment_cols!(),
        ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)"
    ))
    .bind(a.id.to_string())
    .bind(a.uploader.as_str())
    .bind(&a.name)
    .bind(&a.content_type)
    .bind(a.size as i64)
    .bind(a.width.map(i64::from))
    .bind(a.height.map(i64::from))
    .bind(a.thumbnail.as_ref().map(|t| t.content_type.clone()))
    .bind(a.thumbnail.as_ref().map(|t| t.size as i64))
    .bind(a.created_at.as_millis())
    .bind(a.posted.map(|p| p.room_id.to_string()))
    .bind(a.posted.map(|p| p.message_id.to_string()))
    .bind(i64::from(a.removed))
    .execute(&mut *conn)
    .await
    .db()?;
    Ok(Ok(()))
}

#[async_trait]
impl AttachmentStore for SqliteStore {
    async fn insert_attachment(&self, attachment: &StoredAttachment, quota: u64) -> chat_core::Result<()> {
        // The sum and the insert under one write lock: SQLite has one writer,
        // so no other upload of the user can come between them.
        self.write_tx(async move |conn: &mut SqliteConnection| insert_in(conn, attachment, quota).await).await?
    }

    async fn attachment(&self, id: AttachmentId) -> chat_core::Result<Option<StoredAttachment>> {
        let row = sqlx::query(concat!("SELECT ", attachment_cols!(), " FROM attachments WHERE id = ?1"))
            .bind(id.to_string())
            .fetch_optional(&self.reader)
            .await
            .db()?;
        Ok(row.as_ref().map(from_row).transpose()?)
    }

    async fn attachments(&self, ids: &[AttachmentId]) -> chat_core::Result<Vec<StoredAttachment>> {
        let ids: Vec<String> = ids.iter().map(ToString::to_string).collect();
        let rows = sqlx::query(concat!(
            "SELECT ",
            attachment_cols!(),
            " FROM attachments WHERE id IN (SELECT value FROM json_each(?1))"
        ))
        .bind(serde_json::to_string(&ids).map_err(|_| Error::Corrupt("attachment ids"))?)
        .fetch_all(&self.reader)
        .await
        .db()?;
        Ok(rows.iter().map(from_row).collect::<Result<_>>()?)
    }

    async fn attachment_usage(&self, user: &UserId) -> chat_core::Result<u64> {
        let used: i64 = sqlx::query_scalar(USAGE).bind(user.as_str()).fetch_one(&self.reader).await.db()?;
        Ok(used.max(0) as u64)
    }

    async fn attachments_to_purge(
        &self,
        orphaned_before: Timestamp,
        limit: u32,
    ) -> chat_core::Result<Vec<StoredAttachment>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            attachment_cols!(),
            " FROM attachments WHERE (message_id IS NULL OR removed = 1)
               AND (removed = 1 OR created_at < ?1)
             ORDER BY created_at LIMIT ?2"
        ))
        .bind(orphaned_before.as_millis())
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await
        .db()?;
        Ok(rows.iter().map(from_row).collect::<Result<_>>()?)
    }

    async fn mark_removed(&self, id: AttachmentId, orphaned_before: Timestamp) -> chat_core::Result<bool> {
        let changed = sqlx::query(
            "UPDATE attachments SET removed = 1
             WHERE id = ?1 AND (removed = 1 OR (message_id IS NULL AND created_at < ?2))",
        )
        .bind(id.to_string())
        .bind(orphaned_before.as_millis())
        .execute(&self.writer)
        .await
        .db()?
        .rows_affected();
        Ok(changed > 0)
    }

    async fn forget_attachment(&self, id: AttachmentId) -> chat_core::Result<()> {
        sqlx::query("DELETE FROM attachments WHERE id = ?1 AND removed = 1")
            .bind(id.to_string())
            .execute(&self.writer)
            .await
            .db()?;
        Ok(())
    }
}

impl SqliteStore {
    /// [`Store::server_secret`](chat_core::Store::server_secret) on SQLite.
    pub(super) async fn secret(&self, name: &str, candidate: &str) -> Result<String> {
        sqlx::query("INSERT INTO server_secrets (name, value) VALUES (?1, ?2) ON CONFLICT (name) DO NOTHING")
            .bind(name)
            .bind(candidate)
            .execute(&self.writer)
            .await
            .db()?;
        sqlx::query_scalar("SELECT value FROM server_secrets WHERE name = ?1")
            .bind(name)
            .fetch_one(&self.writer)
            .await
            .db()
    }
}

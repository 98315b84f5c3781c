//! [`PushStore`] on SQLite: the `push_subscriptions` table of migration 0012.

use async_trait::async_trait;
use chat_core::push::{PushStore, PushSubscription};
use chat_core::{RoomId, Timestamp, UserId};
use sqlx::Row;
use sqlx::sqlite::{SqliteConnection, SqliteRow};

use super::{Db, SqliteStore};
use crate::codec;
use crate::error::Result;

macro_rules! cols {
    () => {
        "endpoint, user_id, p256dh, auth, created_at"
    };
}

fn from_row(row: &SqliteRow) -> Result<PushSubscription> {
    Ok(PushSubscription {
        user_id: codec::user_id(row.try_get("user_id").db()?, "push_subscriptions.user_id")?,
        endpoint: row.try_get("endpoint").db()?,
        p256dh: row.try_get("p256dh").db()?,
        auth: row.try_get("auth").db()?,
        created_at: codec::time_from_db(row.try_get("created_at").db()?),
    })
}

#[async_trait]
impl PushStore for SqliteStore {
    async fn add_push_subscription(&self, s: &PushSubscription, max: u32) -> chat_core::Result<()> {
        // One writer: nothing comes between the replace and the trim.
        self.write_tx(async move |conn: &mut SqliteConnection| {
            sqlx::query("DELETE FROM push_subscriptions WHERE endpoint = ?1")
                .bind(&s.endpoint)
                .execute(&mut *conn)
                .await
                .db()?;
            sqlx::query(
                "INSERT INTO push_subscriptions (endpoint, user_id, p256dh, auth, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .bind(&s.endpoint)
            .bind(s.user_id.as_str())
            .bind(&s.p256dh)
            .bind(&s.auth)
            .bind(s.created_at.as_millis())
            .execute(&mut *conn)
            .await
            .db()?;
            sqlx::query(
                "DELETE FROM push_subscriptions WHERE user_id = ?1 AND id NOT IN
                 (SELECT id FROM push_subscriptions WHERE user_id = ?1 ORDER BY id DESC LIMIT ?2)",
            )
            .bind(s.user_id.as_str())
            .bind(i64::from(max))
            .execute(&mut *conn)
            .await
            .db()?;
            Ok(())
        })
        .await?;
        Ok(())
    }

    async fn remove_push_subscription(&self, user: &UserId, endpoint: &str) -> chat_core::Result<bool> {
        let gone = sqlx::query("DELETE FROM push_subscriptions WHERE endpoint = ?1 AND user_id = ?2")
            .bind(endpoint)
            .bind(user.as_str())
            .execute(&self.writer)
            .await
            .db()?
            .rows_affected();
        Ok(gone > 0)
    }

    async fn forget_push_endpoint(&self, endpoint: &str, stored_at: Timestamp) -> chat_core::Result<bool> {
        let gone = sqlx::query("DELETE FROM push_subscriptions WHERE endpoint = ?1 AND created_at <= ?2")
            .bind(endpoint)
            .bind(stored_at.as_millis())
            .execute(&self.writer)
            .await
            .db()?
            .rows_affected();
        Ok(gone > 0)
    }

    async fn push_subscription(&self, endpoint: &str) -> chat_core::Result<Option<PushSubscription>> {
        let row = sqlx::query(concat!("SELECT ", cols!(), " FROM push_subscriptions WHERE endpoint = ?1"))
            .bind(endpoint)
            .fetch_optional(&self.reader)
            .await
            .db()?;
        Ok(row.as_ref().map(from_row).transpose()?)
    }

    async fn push_subscriptions(&self, user: &UserId) -> chat_core::Result<Vec<PushSubscription>> {
        let rows = sqlx::query(concat!("SELECT ", cols!(), " FROM push_subscriptions WHERE user_id = ?1 ORDER BY id"))
            .bind(user.as_str())
            .fetch_all(&self.reader)
            .await
            .db()?;
        Ok(rows.iter().map(from_row).collect::<Result<_>>()?)
    }

    async fn any_push_subscription(&self) -> chat_core::Result<bool> {
        let any: i64 = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM push_subscriptions)")
            .fetch_one(&self.reader)
            .await
            .db()?;
        Ok(any != 0)
    }

    async fn push_recipients(&self, rooms: &[RoomId], now: Timestamp) -> chat_core::Result<Vec<(RoomId, UserId)>> {
        let rooms: Vec<String> = rooms.iter().map(ToString::to_string).collect();
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT m.room_id, m.user_id FROM members m
             WHERE m.room_id IN (SELECT DISTINCT value FROM json_each(?1))
               AND (m.muted_until IS NULL OR m.muted_until <= ?2)
               AND EXISTS (SELECT 1 FROM push_subscriptions s WHERE s.user_id = m.user_id)
               AND NOT EXISTS (SELECT 1 FROM users u WHERE u.id = m.user_id AND (u.active = 0 OR u.deleted_at IS NOT NULL))",
        )
        .bind(serde_json::to_string(&rooms).map_err(|_| crate::error::Error::Corrupt("room ids"))?)
        .bind(now.as_millis())
        .fetch_all(&self.reader)
        .await
        .db()?;
        Ok(rows
            .into_iter()
            .map(|(room, user)| {
                Ok((codec::room_id(&room, "members.room_id")?, codec::user_id(user, "members.user_id")?))
            })
            .collect::<Result<_>>()?)
    }
}

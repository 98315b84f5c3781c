//! [`PushStore`] on PostgreSQL: the `push_subscriptions` table of migration 0013.

use async_trait::async_trait;
use chat_core::push::{PushStore, PushSubscription};
use chat_core::{RoomId, Timestamp, UserId};
use sqlx::Row;
use sqlx::postgres::PgRow;

use super::{Db, PostgresStore};
use crate::codec;
use crate::common::finish;
use crate::error::Result;

macro_rules! cols {
    () => {
        "endpoint, user_id, p256dh, auth, created_at"
    };
}

fn from_row(row: &PgRow) -> Result<PushSubscription> {
    Ok(PushSubscription {
        user_id: codec::user_id(row.try_get("user_id").db()?, "push_subscriptions.user_id")?,
        endpoint: row.try_get("endpoint").db()?,
        p256dh: row.try_get("p256dh").db()?,
        auth: row.try_get("auth").db()?,
        created_at: codec::time_from_db(row.try_get("created_at").db()?),
    })
}

#[async_trait]
impl PushStore for PostgresStore {
    async fn add_push_subscription(&self, s: &PushSubscription, max: u32) -> chat_core::Result<()> {
        self.bounded(async {
            let mut tx = self.begin().await?;
            let result = async {
                // An endpoint stored again takes a new id: it is its user's newest.
                sqlx::query(
                    "INSERT INTO push_subscriptions (endpoint, user_id, p256dh, auth, created_at)
                     VALUES ($1, $2, $3, $4, $5)
                     ON CONFLICT (endpoint) DO UPDATE SET
                       id = nextval(pg_get_serial_sequence('push_subscriptions', 'id')),
                       user_id = EXCLUDED.user_id, p256dh = EXCLUDED.p256dh, auth = EXCLUDED.auth,
                       created_at = EXCLUDED.created_at",
                )
                .bind(&s.endpoint)
                .bind(s.user_id.as_str())
                .bind(&s.p256dh)
                .bind(&s.auth)
                .bind(s.created_at.as_millis())
                .execute(&mut *tx)
                .await
                .db()?;
                sqlx::query(
                    "DELETE FROM push_subscriptions WHERE user_id = $1 AND id NOT IN
                     (SELECT id FROM push_subscriptions WHERE user_id = $1 ORDER BY id DESC LIMIT $2)",
                )
                .bind(s.user_id.as_str())
                .bind(i64::from(max))
                .execute(&mut *tx)
                .await
                .db()?;
                Ok(())
            }
            .await;
            finish(tx, result).await
        })
        .await?;
        Ok(())
    }

    async fn remove_push_subscription(&self, user: &UserId, endpoint: &str) -> chat_core::Result<bool> {
        self.bounded(async {
            let gone = sqlx::query("DELETE FROM push_subscriptions WHERE endpoint = $1 AND user_id = $2")
                .bind(endpoint)
                .bind(user.as_str())
                .execute(&self.pool)
                .await
                .db()?
                .rows_affected();
            Ok(gone > 0)
        })
        .await
    }

    async fn forget_push_endpoint(&self, endpoint: &str, stored_at: Timestamp) -> chat_core::Result<bool> {
        self.bounded(async {
            let gone = sqlx::query("DELETE FROM push_subscriptions WHERE endpoint = $1 AND created_at <= $2")
                .bind(endpoint)
                .bind(stored_at.as_millis())
                .execute(&self.pool)
                .await
                .db()?
                .rows_affected();
            Ok(gone > 0)
        })
        .await
    }

    async fn push_subscription(&self, endpoint: &str) -> chat_core::Result<Option<PushSubscription>> {
        self.bounded(async {
            let row = sqlx::query(concat!("SELECT ", cols!(), " FROM push_subscriptions WHERE endpoint = $1"))
                .bind(endpoint)
                .fetch_optional(&self.pool)
                .await
                .db()?;
            Ok(row.as_ref().map(from_row).transpose()?)
        })
        .await
    }

    async fn push_subscriptions(&self, user: &UserId) -> chat_core::Result<Vec<PushSubscription>> {
        self.bounded(async {
            let rows =
                sqlx::query(concat!("SELECT ", cols!(), " FROM push_subscriptions WHERE user_id = $1 ORDER BY id"))
                    .bind(user.as_str())
                    .fetch_all(&self.pool)
                    .await
                    .db()?;
            Ok(rows.iter().map(from_row).collect::<Result<_>>()?)
        })
        .await
    }

    async fn any_push_subscription(&self) -> chat_core::Result<bool> {
        self.bounded(async {
            let any: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM push_subscriptions)")
                .fetch_one(&self.pool)
                .await
                .db()?;
            Ok(any)
        })
        .await
    }

    async fn push_recipients(&self, rooms: &[RoomId], now: Timestamp) -> chat_core::Result<Vec<(RoomId, UserId)>> {
        let rooms: Vec<uuid::Uuid> = rooms.iter().map(|r| *r.as_uuid()).collect();
        self.bounded(async {
            let rows: Vec<(uuid::Uuid, String)> = sqlx::query_as(
                "SELECT m.room_id, m.user_id FROM members m
                 WHERE m.room_id = ANY($1) AND (m.muted_until IS NULL OR m.muted_until <= $2)
                   AND EXISTS (SELECT 1 FROM push_subscriptions s WHERE s.user_id = m.user_id)
                   AND NOT EXISTS (SELECT 1 FROM users u WHERE u.id = m.user_id AND (NOT u.active OR u.deleted_at IS NOT NULL))",
            )
            .bind(&rooms)
            .bind(now.as_millis())
            .fetch_all(&self.pool)
            .await
            .db()?;
            Ok(rows
                .into_iter()
                .map(|(room, user)| Ok((RoomId::from_uuid(room), codec::user_id(user, "members.user_id")?)))
                .collect::<Result<_>>()?)
        })
        .await
    }
}

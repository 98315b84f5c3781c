//! Small pieces every backend uses around sqlx calls.

use crate::error::{Error, Result};

/// Turns a sqlx result into this crate's, classifying the error.
pub(crate) trait Db<T> {
    fn db(self) -> Result<T>;
}

impl<T> Db<T> for std::result::Result<T, sqlx::Error> {
    fn db(self) -> Result<T> {
        self.map_err(Error::from)
    }
}

/// Commits `tx` when `result` is `Ok`, rolls it back otherwise.
#[cfg(feature = "postgres")]
pub(crate) async fn finish<DB: sqlx::Database, T>(tx: sqlx::Transaction<'static, DB>, result: Result<T>) -> Result<T> {
    match result {
        Ok(value) => {
            tx.commit().await?;
            Ok(value)
        }
        Err(err) => {
            // Dropping the transaction would roll back too, but only when the
            // connection is next used; doing it now releases the locks at once.
            if let Err(rollback) = tx.rollback().await {
                tracing::warn!(error = %rollback, "rolling back a failed store write failed");
            }
            Err(err)
        }
    }
}

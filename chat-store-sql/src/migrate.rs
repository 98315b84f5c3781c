//! Versioned migrations, embedded in the binary, shared by every backend.
//!
//! Each backend lists its migrations oldest first as `(version, description,
//! sql)`. A migration, once released, never changes: sqlx refuses to start when
//! an applied migration's checksum differs from the embedded one. Before
//! applying anything, a backend compares the newest version recorded in the
//! database with the newest it knows, and refuses a database that a newer build
//! migrated ([`Error::SchemaTooNew`](crate::Error::SchemaTooNew)).

use sqlx::SqlStr;
use sqlx::migrate::{Migration, MigrationType, Migrator};

use crate::error::{Error, Result};

/// One embedded migration: version, description, SQL text.
pub(crate) type Embedded = (i64, &'static str, &'static str);

/// The newest version in a list of migrations.
pub(crate) const fn newest(migrations: &[Embedded]) -> i64 {
    let mut newest = 0;
    let mut i = 0;
    while i < migrations.len() {
        if migrations[i].0 > newest {
            newest = migrations[i].0;
        }
        i += 1;
    }
    newest
}

/// A migrator for the embedded list.
pub(crate) fn migrator(migrations: &[Embedded]) -> Migrator {
    let migrations = migrations
        .iter()
        .map(|&(version, description, sql)| {
            Migration::new(version, description.into(), MigrationType::Simple, SqlStr::from_static(sql), false)
        })
        .collect();
    Migrator::with_migrations(migrations)
}

/// Refuses a database whose newest recorded migration (`found`, `None` for a
/// database never migrated) is newer than what this build knows.
pub(crate) fn check_not_newer(found: Option<i64>, supported: i64) -> Result<()> {
    match found {
        Some(found) if found > supported => Err(Error::SchemaTooNew { found, supported }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_is_the_highest_version() {
        assert_eq!(newest(&[]), 0);
        assert_eq!(newest(&[(1, "a", ""), (3, "b", ""), (2, "c", "")]), 3);
    }

    #[test]
    fn only_a_newer_schema_is_refused() {
        assert!(check_not_newer(None, 1).is_ok());
        assert!(check_not_newer(Some(1), 1).is_ok());
        assert!(check_not_newer(Some(0), 1).is_ok());
        assert!(matches!(check_not_newer(Some(2), 1), Err(Error::SchemaTooNew { found: 2, supported: 1 })));
    }
}

//! Errors of the SQL stores, classified by what a caller can do about them.
//!
//! Database text (SQL, constraint names, file paths) stays in `source()` for the
//! logs; no variant's `Display` contains it. Converting into
//! [`chat_core::Error`] keeps that promise for clients: `Unavailable` and
//! `Internal` hide their source, and a `Conflict` gets a fixed text.
//!
//! The classification is shared and names no backend: each backend says which
//! of its database's own errors mean "not now" (a `Backend` implementation in
//! its module) and converts its sqlx errors through it, so that a backend
//! builds alone and this module depends on none.

use chat_core::BoxError;
use sqlx::error::DatabaseError;

/// Result with [`Error`] as the default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong in a SQL store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The database cannot be reached or written right now: the connection or
    /// the file failed, the pool timed out or was closed, the database is busy,
    /// read-only or out of space. Retrying later may work.
    #[error("database unavailable")]
    Unavailable(#[source] BoxError),
    /// A write broke a uniqueness rule (an id that is already taken).
    #[error("the write conflicts with stored data")]
    Conflict(#[source] BoxError),
    /// The named thing does not exist.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// An argument the database cannot represent, such as a seq above `i64::MAX`.
    #[error("{0}")]
    Invalid(&'static str),
    /// The database was migrated by a newer build; this one refuses to touch it.
    #[error(
        "database schema version {found} is newer than this build supports (up to {supported}); \
         run a newer version or restore a backup"
    )]
    SchemaTooNew {
        /// The newest migration recorded in the database.
        found: i64,
        /// The newest migration this build knows.
        supported: i64,
    },
    /// Running the migrations failed.
    #[error("database migration failed")]
    Migrate(#[source] BoxError),
    /// The connection settings are unusable (a malformed URL, for example).
    #[error("invalid database configuration")]
    Config(#[source] BoxError),
    /// A stored value cannot be turned back into a domain value. The text names
    /// the column, never the value.
    #[error("stored data cannot be read: {0}")]
    Corrupt(&'static str),
    /// Any other database failure: a bug or an unexpected answer.
    #[error("database error")]
    Database(#[source] BoxError),
}

impl Error {
    /// Whether retrying later may succeed.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Error::Unavailable(_))
    }
}

/// What a backend knows of its database's errors, and all that the shared
/// classification needs of it.
///
/// Connection, pool and uniqueness failures look alike on every database and
/// are classified here; which of a database's own error codes mean "not now"
/// only its backend knows. Each backend implements this for its sqlx database
/// type and converts its errors with [`Error::from_sqlx`] and
/// [`Error::from_migrate`], so that this module names no backend and each
/// backend builds alone.
pub(crate) trait Backend {
    /// The error type of the database's own failures.
    type DatabaseError: DatabaseError;

    /// Whether the database's own error means "not now" rather than "never":
    /// busy, locked, read-only, full, shutting down, out of connections.
    fn is_transient(err: &Self::DatabaseError) -> bool;
}

impl Error {
    /// A sqlx failure of backend `B`, classified.
    pub(crate) fn from_sqlx<B: Backend>(err: sqlx::Error) -> Self {
        if is_unavailable::<B>(&err) {
            return Error::Unavailable(Box::new(err));
        }
        match &err {
            sqlx::Error::Database(db) if db.is_unique_violation() => Error::Conflict(Box::new(err)),
            sqlx::Error::Configuration(_) => Error::Config(Box::new(err)),
            sqlx::Error::Migrate(_) => Error::Migrate(Box::new(err)),
            _ => Error::Database(Box::new(err)),
        }
    }

    /// A failed migration of backend `B`, classified.
    pub(crate) fn from_migrate<B: Backend>(err: sqlx::migrate::MigrateError) -> Self {
        use sqlx::migrate::MigrateError;
        // A migration that could not run because the database is busy, read-only
        // or unreachable is as unavailable as any other write.
        let transient = match &err {
            MigrateError::Execute(e) | MigrateError::ExecuteMigration(e, _) => is_unavailable::<B>(e),
            _ => false,
        };
        if transient { Error::Unavailable(Box::new(err)) } else { Error::Migrate(Box::new(err)) }
    }
}

impl From<Error> for chat_core::Error {
    fn from(err: Error) -> Self {
        match err {
            Error::Unavailable(_) => chat_core::Error::unavailable(err),
            Error::Conflict(source) => {
                // `chat_core::Error::Conflict` carries no source, so the cause goes to the log here.
                tracing::debug!(error = %source, "store write conflict");
                chat_core::Error::conflict("the change conflicts with stored data")
            }
            Error::NotFound(what) => chat_core::Error::NotFound(what),
            Error::Invalid(msg) => chat_core::Error::invalid(msg),
            _ => chat_core::Error::internal(err),
        }
    }
}

/// Whether an error of backend `B` means "not now" rather than "never". A
/// database error of another type than `B`'s (there is none in practice) is
/// never transient.
fn is_unavailable<B: Backend>(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::BeginFailed => true,
        sqlx::Error::Database(db) => db.try_downcast_ref::<B::DatabaseError>().is_some_and(B::is_transient),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;
    use std::error::Error as StdError;

    use sqlx::error::ErrorKind;

    use super::*;

    /// A backend of the tests' own: its database's errors carry a code, and
    /// it knows one of them to be transient, as a real backend knows its own.
    struct Fake;

    #[derive(Debug)]
    struct FakeError {
        code: &'static str,
    }

    impl std::fmt::Display for FakeError {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "error {} in /var/lib/secret.db", self.code)
        }
    }

    impl StdError for FakeError {}

    impl DatabaseError for FakeError {
        fn message(&self) -> &str {
            "in /var/lib/secret.db"
        }

        fn code(&self) -> Option<Cow<'_, str>> {
            Some(Cow::Borrowed(self.code))
        }

        fn as_error(&self) -> &(dyn StdError + Send + Sync + 'static) {
            self
        }

        fn as_error_mut(&mut self) -> &mut (dyn StdError + Send + Sync + 'static) {
            self
        }

        fn into_error(self: Box<Self>) -> Box<dyn StdError + Send + Sync + 'static> {
            self
        }

        fn kind(&self) -> ErrorKind {
            if self.code == "unique" { ErrorKind::UniqueViolation } else { ErrorKind::Other }
        }
    }

    impl Backend for Fake {
        type DatabaseError = FakeError;

        fn is_transient(err: &FakeError) -> bool {
            err.code == "busy"
        }
    }

    fn database(code: &'static str) -> sqlx::Error {
        sqlx::Error::Database(Box::new(FakeError { code }))
    }

    #[test]
    fn a_database_error_is_unavailable_when_its_backend_says_so() {
        let busy = Error::from_sqlx::<Fake>(database("busy"));
        assert!(busy.is_unavailable(), "{busy:?}");
        assert_eq!(busy.to_string(), "database unavailable");
        let unique = Error::from_sqlx::<Fake>(database("unique"));
        assert!(matches!(unique, Error::Conflict(_)), "{unique:?}");
        let other = Error::from_sqlx::<Fake>(database("syntax"));
        assert!(matches!(other, Error::Database(_)), "{other:?}");
        assert!(!other.to_string().contains("secret"), "no database text in {other}");

        let migration = sqlx::migrate::MigrateError::Execute(database("busy"));
        assert!(Error::from_migrate::<Fake>(migration).is_unavailable());
        let migration = sqlx::migrate::MigrateError::Execute(database("syntax"));
        assert!(matches!(Error::from_migrate::<Fake>(migration), Error::Migrate(_)));
    }

    #[test]
    fn connection_failures_are_unavailable_and_hide_their_text() {
        let table = [
            sqlx::Error::PoolTimedOut,
            sqlx::Error::PoolClosed,
            sqlx::Error::WorkerCrashed,
            sqlx::Error::Io(std::io::Error::other("disk on fire at /var/lib/chat.db")),
        ];
        for err in table {
            let err = Error::from_sqlx::<Fake>(err);
            assert!(err.is_unavailable(), "{err:?}");
            assert_eq!(err.to_string(), "database unavailable");
            let core = chat_core::Error::from(err);
            assert_eq!(core.code().as_str(), "unavailable");
            assert_eq!(core.to_string(), "service temporarily unavailable");
        }
    }

    #[test]
    fn other_failures_are_internal_and_hide_their_text() {
        let err = Error::from_sqlx::<Fake>(sqlx::Error::ColumnNotFound("secret_column".into()));
        assert!(matches!(err, Error::Database(_)));
        assert!(!err.to_string().contains("secret_column"));
        let core = chat_core::Error::from(err);
        assert_eq!(core.code().as_str(), "internal");
        assert_eq!(core.to_string(), "internal error");
        assert!(std::error::Error::source(&core).is_some(), "the cause stays available for logs");

        let core = chat_core::Error::from(Error::Corrupt("rooms.id"));
        assert_eq!(core.code().as_str(), "internal");
        let core = chat_core::Error::from(Error::SchemaTooNew { found: 9, supported: 1 });
        assert_eq!(core.code().as_str(), "internal");
    }

    #[test]
    fn request_errors_keep_their_kind() {
        assert_eq!(chat_core::Error::from(Error::NotFound("room")).code().as_str(), "not_found");
        assert_eq!(chat_core::Error::from(Error::Invalid("seq out of range")).code().as_str(), "invalid");
        let conflict = chat_core::Error::from(Error::Conflict("UNIQUE constraint failed: rooms.id".into()));
        assert_eq!(conflict.code().as_str(), "conflict");
        assert!(!conflict.to_string().contains("rooms.id"), "no database text reaches a client");
    }

    #[test]
    fn a_newer_schema_says_what_to_do() {
        let text = Error::SchemaTooNew { found: 7, supported: 3 }.to_string();
        assert!(text.contains('7') && text.contains('3') && text.contains("newer"), "{text}");
    }
}

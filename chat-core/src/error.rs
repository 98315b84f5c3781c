//! The one error type of the engine and of the traits it drives.
//!
//! Every variant maps to one of the contract's error codes through
//! [`Error::code`]. The `Display` text of a variant is safe to show to a client:
//! backend failures keep their cause in `source()` for the logs and never in the
//! message.

use std::fmt;

/// A boxed error from a backend (database driver, network client).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The innermost cause of an error, which says what happened (connection
/// refused, a DNS failure) where the outer ones say what was being done:
/// for logs and `/health` of bridges that call other services.
pub fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    std::iter::successors(Some(err), |e| e.source()).last().map_or_else(|| err.to_string(), |e| e.to_string())
}

/// Result with [`Error`] as the default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, classified so that callers never match on backend types.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The input is malformed or out of range; the text says which field.
    #[error("{0}")]
    Invalid(String),
    /// No valid credentials.
    #[error("{0}")]
    Unauthorized(String),
    /// Authenticated but not allowed.
    #[error("{0}")]
    Forbidden(String),
    /// The named thing does not exist (or is not visible to the caller).
    #[error("{0} not found")]
    NotFound(&'static str),
    /// Only members of the room may do this.
    #[error("not a member of this room")]
    NotMember,
    /// A size limit was exceeded; the text says which.
    #[error("{0}")]
    TooLarge(String),
    /// Too many requests; slow down.
    #[error("{0}")]
    RateLimited(String),
    /// The request conflicts with the current state.
    #[error("{0}")]
    Conflict(String),
    /// The command name is not known.
    #[error("unknown command {0:?}")]
    UnknownCommand(String),
    /// A backend (store, broker) cannot be reached right now; retrying later may work.
    #[error("service temporarily unavailable")]
    Unavailable(#[source] BoxError),
    /// A bug or an unexpected backend answer.
    #[error("internal error")]
    Internal(#[source] BoxError),
}

/// The contract's error codes, as sent to clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    /// `invalid`
    Invalid,
    /// `unauthorized`
    Unauthorized,
    /// `forbidden`
    Forbidden,
    /// `not_found`
    NotFound,
    /// `not_member`
    NotMember,
    /// `too_large`
    TooLarge,
    /// `rate_limited`
    RateLimited,
    /// `conflict`
    Conflict,
    /// `unknown_command`
    UnknownCommand,
    /// `unavailable`
    Unavailable,
    /// `internal`
    Internal,
}

impl ErrorCode {
    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Invalid => "invalid",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::NotMember => "not_member",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Conflict => "conflict",
            ErrorCode::UnknownCommand => "unknown_command",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Error {
    /// The contract's code for this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            Error::Invalid(_) => ErrorCode::Invalid,
            Error::Unauthorized(_) => ErrorCode::Unauthorized,
            Error::Forbidden(_) => ErrorCode::Forbidden,
            Error::NotFound(_) => ErrorCode::NotFound,
            Error::NotMember => ErrorCode::NotMember,
            Error::TooLarge(_) => ErrorCode::TooLarge,
            Error::RateLimited(_) => ErrorCode::RateLimited,
            Error::Conflict(_) => ErrorCode::Conflict,
            Error::UnknownCommand(_) => ErrorCode::UnknownCommand,
            Error::Unavailable(_) => ErrorCode::Unavailable,
            Error::Internal(_) => ErrorCode::Internal,
        }
    }

    /// Shorthand for [`Error::Invalid`].
    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::Invalid(msg.into())
    }

    /// Shorthand for [`Error::Forbidden`].
    pub fn forbidden(msg: impl Into<String>) -> Self {
        Error::Forbidden(msg.into())
    }

    /// The refusal of a message to a closed room, from the engine and the
    /// stores alike.
    pub fn room_closed() -> Self {
        Error::Forbidden("the room is closed".into())
    }

    /// Shorthand for [`Error::Conflict`].
    pub fn conflict(msg: impl Into<String>) -> Self {
        Error::Conflict(msg.into())
    }

    /// Shorthand for [`Error::TooLarge`].
    pub fn too_large(msg: impl Into<String>) -> Self {
        Error::TooLarge(msg.into())
    }

    /// Wraps a backend failure that may go away by itself.
    pub fn unavailable(err: impl Into<BoxError>) -> Self {
        Error::Unavailable(err.into())
    }

    /// Wraps an unexpected failure.
    pub fn internal(err: impl Into<BoxError>) -> Self {
        Error::Internal(err.into())
    }

    /// Whether the error comes from a backend rather than from the request.
    pub fn is_backend(&self) -> bool {
        matches!(self, Error::Unavailable(_) | Error::Internal(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_errors_do_not_show_their_cause() {
        let err = Error::unavailable("connection refused to 10.0.0.1:5432 password=hunter2");
        assert_eq!(err.to_string(), "service temporarily unavailable");
        assert_eq!(err.code(), ErrorCode::Unavailable);
        assert!(std::error::Error::source(&err).is_some());
        let err = Error::internal("syntax error near SELECT");
        assert_eq!(err.to_string(), "internal error");
    }

    #[test]
    fn codes_are_the_contract_strings() {
        let table = [
            (Error::invalid("x"), "invalid"),
            (Error::Unauthorized("x".into()), "unauthorized"),
            (Error::forbidden("x"), "forbidden"),
            (Error::NotFound("room"), "not_found"),
            (Error::NotMember, "not_member"),
            (Error::too_large("x"), "too_large"),
            (Error::RateLimited("x".into()), "rate_limited"),
            (Error::conflict("x"), "conflict"),
            (Error::UnknownCommand("x".into()), "unknown_command"),
        ];
        for (err, code) in table {
            assert_eq!(err.code().as_str(), code);
        }
    }
}

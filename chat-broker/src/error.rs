//! Errors of the brokers, classified by what a caller can do about them.
//!
//! Broker text (addresses, server replies) stays in `source()` for the logs.
//! Converting into [`chat_core::Error`], which the [`Broker`](chat_core::Broker)
//! methods and [`connect`](crate::connect) return, keeps that promise:
//! `Unavailable` hides its source.

use chat_core::BoxError;

/// Result with [`Error`] as the default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong in a broker.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The settings are unusable: a malformed URL, an unknown scheme, a
    /// scheme whose feature is not built in, a bad prefix. The text says which.
    #[error("{0}")]
    Config(String),
    /// The broker cannot be reached, is not connected yet, or did not answer
    /// in time. Retrying later may work.
    #[error("broker unavailable")]
    Unavailable(#[source] BoxError),
    /// The broker was stopped; nothing more goes through it.
    #[error("the broker was stopped")]
    Stopped,
    /// `start` was called a second time.
    #[error("the broker was started twice")]
    StartedTwice,
    /// A payload is larger than the broker server takes.
    #[error("a payload is larger than the broker takes")]
    TooLarge(#[source] BoxError),
}

impl Error {
    /// Shorthand for [`Error::Unavailable`].
    #[cfg_attr(not(any(feature = "nats", feature = "redis")), allow(dead_code))]
    pub(crate) fn unavailable(err: impl Into<BoxError>) -> Self {
        Error::Unavailable(err.into())
    }

    /// Whether retrying later may succeed.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Error::Unavailable(_) | Error::Stopped)
    }
}

impl From<Error> for chat_core::Error {
    fn from(err: Error) -> Self {
        match err {
            Error::Config(msg) => chat_core::Error::invalid(msg),
            Error::StartedTwice => chat_core::Error::conflict("the broker was started twice"),
            Error::TooLarge(_) => chat_core::Error::too_large("a payload is larger than the broker takes"),
            err @ (Error::Unavailable(_) | Error::Stopped) => chat_core::Error::unavailable(err),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chat_core::ErrorCode;

    #[test]
    fn errors_map_to_core_codes_without_their_cause() {
        let table = [
            (Error::Config("bad url".into()), ErrorCode::Invalid),
            (Error::unavailable("connection refused to 10.0.0.1:4222"), ErrorCode::Unavailable),
            (Error::Stopped, ErrorCode::Unavailable),
            (Error::StartedTwice, ErrorCode::Conflict),
            (Error::TooLarge("maximum payload exceeded".into()), ErrorCode::TooLarge),
        ];
        for (err, code) in table {
            let core: chat_core::Error = err.into();
            assert_eq!(core.code(), code);
            assert!(!core.to_string().contains("10.0.0.1"), "{core}");
        }
    }
}

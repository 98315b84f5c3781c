//! Errors of the Discord bridge, classified by what the outbox does with them.

use std::time::Duration;

/// Result with [`Error`] as the default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong talking to Discord or keeping the bridge's state.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The settings cannot work (a missing id, a malformed proxy URL).
    #[error("invalid discord configuration: {0}")]
    Config(String),
    /// Discord asked us to slow down. `global` means every route waits.
    #[error("rate limited by discord for {retry_after:?}")]
    RateLimited {
        /// How long to wait, from the body's `retry_after` or the headers.
        retry_after: Duration,
        /// Whether the limit is the global one rather than the route's.
        global: bool,
    },
    /// Discord could not be reached or answered with a server error; trying
    /// again later may work.
    #[error("discord unavailable: {0}")]
    Unavailable(String),
    /// Discord refused the call (a 4xx other than 429); trying again will not help.
    #[error("discord refused the call with {status}: {message}")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// Discord's error message.
        message: String,
    },
    /// Discord answered something this bridge cannot read.
    #[error("unexpected answer from discord: {0}")]
    Unexpected(String),
    /// The store or the engine failed.
    #[error("chat engine: {0}")]
    Chat(#[from] chat_core::Error),
}

impl Error {
    /// Whether an outbox job that failed with this error should run again.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::RateLimited { .. } | Error::Unavailable(_) => true,
            Error::Chat(err) => err.code() == chat_core::ErrorCode::Unavailable,
            _ => false,
        }
    }
}

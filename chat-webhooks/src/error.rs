//! Errors of the webhooks bridge.

/// Result with [`Error`] as the default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong setting up webhooks or managing their endpoints.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The settings cannot work (a zero timeout, a lease renewed too rarely).
    #[error("invalid webhook configuration: {0}")]
    Config(String),
    /// An endpoint is not acceptable (its URL, secret or events).
    #[error("{0}")]
    Invalid(String),
    /// The endpoint cannot be changed this way (the one from the
    /// configuration), or there are as many endpoints as allowed.
    #[error("{0}")]
    Conflict(String),
    /// The store failed, or the bridge has not been started.
    #[error("chat engine: {0}")]
    Chat(#[from] chat_core::Error),
}

impl From<Error> for chat_core::Error {
    fn from(err: Error) -> Self {
        match err {
            Error::Chat(err) => err,
            Error::Invalid(message) | Error::Config(message) => chat_core::Error::invalid(message),
            Error::Conflict(message) => chat_core::Error::conflict(message),
        }
    }
}

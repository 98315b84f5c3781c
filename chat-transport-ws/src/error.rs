//! Errors of this crate, and how engine errors become HTTP answers.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chat_core::ErrorCode;
use serde_json::json;

/// Result with [`Error`] as the default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong setting up the transport.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A key could not be read or parsed.
    #[error("invalid key: {0}")]
    Key(String),
    /// A configuration value makes no sense.
    #[error("invalid configuration: {0}")]
    Config(String),
}

/// The HTTP status that fits an error code.
pub fn status_for(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::Invalid | ErrorCode::UnknownCommand => StatusCode::BAD_REQUEST,
        ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
        ErrorCode::Forbidden | ErrorCode::NotMember => StatusCode::FORBIDDEN,
        ErrorCode::NotFound => StatusCode::NOT_FOUND,
        ErrorCode::Conflict => StatusCode::CONFLICT,
        ErrorCode::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// An error answered over HTTP as `{"error":{"code","message"}}`.
#[derive(Debug)]
pub struct ApiError {
    code: ErrorCode,
    message: String,
}

impl ApiError {
    /// An error with a code and a message for humans.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError { code, message: message.into() }
    }
}

impl From<chat_core::Error> for ApiError {
    fn from(err: chat_core::Error) -> Self {
        if err.is_backend() {
            tracing::warn!(error = %err, source = ?std::error::Error::source(&err), "request failed");
        }
        // The Display text of core errors never carries backend details.
        ApiError { code: err.code(), message: err.to_string() }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({ "error": { "code": self.code.as_str(), "message": self.message } });
        (status_for(self.code), Json(body)).into_response()
    }
}

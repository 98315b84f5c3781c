//! Errors of this crate, and how engine errors become HTTP answers.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chat_core::ErrorCode;

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
    /// The status, when not the one that fits the code ([`status_for`]).
    status: Option<StatusCode>,
    /// Ends the connection after the answer (`Connection: close`).
    close: bool,
}

impl ApiError {
    /// An error with a code and a message for humans.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError { code, message: message.into(), status: None, close: false }
    }

    /// 408: the request body did not arrive in time. The connection is
    /// closed after the answer, since the rest of the body may still come.
    pub(crate) fn body_timeout() -> Self {
        ApiError {
            code: ErrorCode::Invalid,
            message: "the request body did not arrive in time".into(),
            status: Some(StatusCode::REQUEST_TIMEOUT),
            close: true,
        }
    }
}

impl From<chat_core::Error> for ApiError {
    fn from(err: chat_core::Error) -> Self {
        if err.is_backend() {
            tracing::warn!(error = %err, source = ?std::error::Error::source(&err), "request failed");
        }
        // The Display text of core errors never carries backend details.
        ApiError::new(err.code(), err.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = crate::openapi::ErrorBody {
            error: crate::openapi::ErrorDetail { code: self.code.as_str(), message: self.message },
        };
        let mut response = (self.status.unwrap_or(status_for(self.code)), Json(body)).into_response();
        if self.close {
            response
                .headers_mut()
                .insert(axum::http::header::CONNECTION, axum::http::HeaderValue::from_static("close"));
        }
        response
    }
}

//! The backend's errors and the one place they become a status. Unexpected failures carry
//! context for the log; clients get an opaque 500.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// Everything a handler can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Invalid input (400), naming the field.
    #[error("{field}: {message}")]
    Invalid {
        /// The offending field.
        field: &'static str,
        /// Why.
        message: String,
    },
    /// A client error with its own status and code.
    #[error("{message}")]
    Client {
        /// The status.
        status: StatusCode,
        /// snake_case code.
        code: &'static str,
        /// Message.
        message: String,
    },
    /// Our failure; `context` says what we were doing.
    #[error("{context}: {source}")]
    Internal {
        /// What we were doing.
        context: &'static str,
        /// The cause.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl ApiError {
    /// A 400 naming the field.
    pub fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        ApiError::Invalid { field, message: message.into() }
    }

    /// Any client error.
    pub fn client(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError::Client { status, code, message: message.into() }
    }

    /// 401.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::client(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// 403.
    pub fn forbidden(code: &'static str, message: impl Into<String>) -> Self {
        Self::client(StatusCode::FORBIDDEN, code, message)
    }
}

/// Adds context to unexpected errors: `.context("loading user")?`.
pub trait Context<T> {
    /// Wraps the error as [`ApiError::Internal`].
    fn context(self, context: &'static str) -> Result<T, ApiError>;
}

impl<T, E: std::error::Error + Send + Sync + 'static> Context<T> for Result<T, E> {
    fn context(self, context: &'static str) -> Result<T, ApiError> {
        self.map_err(|e| ApiError::Internal { context, source: Box::new(e) })
    }
}

/// Maps a JSON body rejection: too large is 413, anything else a 400 on `body`.
pub fn json_rejection(e: axum::extract::rejection::JsonRejection) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return ApiError::client(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "the request body is too large",
        );
    }
    ApiError::invalid("body", e.body_text())
}

/// A `429` with the contract's body and `Retry-After` in whole seconds (at least 1, so a
/// client never retries at once).
pub fn too_many(
    code: &'static str,
    message: impl Into<String>,
    retry_after: std::time::Duration,
) -> Response {
    let mut r = ApiError::client(StatusCode::TOO_MANY_REQUESTS, code, message).into_response();
    let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
    r.headers_mut().insert(axum::http::header::RETRY_AFTER, secs.max(1).into());
    r
}

/// The contract's error body.
pub fn body(status: StatusCode, code: &str, message: &str) -> Response {
    (status, Json(json!({"error": {"code": code, "message": message}}))).into_response()
}

impl ApiError {
    /// The status and the contract's error body (the log gets an internal error's cause).
    pub fn parts(self) -> (StatusCode, serde_json::Value) {
        let (status, code, message) = match self {
            ApiError::Invalid { field, message } => {
                (StatusCode::BAD_REQUEST, "invalid_input", format!("{field}: {message}"))
            }
            ApiError::Client { status, code, message } => (status, code, message),
            ApiError::Internal { context, source } => {
                tracing::error!(%context, error = %source, "internal error");
                (StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error".to_owned())
            }
        };
        (status, json!({"error": {"code": code, "message": message}}))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, v) = self.parts();
        (status, Json(v)).into_response()
    }
}

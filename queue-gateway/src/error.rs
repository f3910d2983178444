//! Errors: who caused them (client, upstream, us), whether sending the same request again is
//! safe, and the one place they become a status (and are logged, once). [`CodecError`] is the
//! HTTP/1.1 codec's ([`crate::http1`]), [`UpstreamError`] the backend side's
//! ([`crate::upstream`]); both end up in [`GatewayError`].

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// A configuration value was refused; `field` names it.
#[derive(Debug, thiserror::Error)]
#[error("config field `{field}`: {reason}")]
pub struct ConfigError {
    /// The offending field (`rooms.summer.batch_size`, `WR_LISTEN`, ...).
    pub field: String,
    /// Why.
    pub reason: String,
}

impl ConfigError {
    pub(crate) fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError { field: field.into(), reason: reason.into() }
    }
}

/// Everything a request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The client sent something invalid (`400`, or the given status).
    #[error("{message}")]
    Client {
        /// Status to answer with (a 4xx).
        status: StatusCode,
        /// snake_case code for the body.
        code: &'static str,
        /// Human-readable message.
        message: String,
    },
    /// Too many requests; retry after this many seconds.
    #[error("rate limited")]
    RateLimited {
        /// Seconds until a retry may pass.
        retry_after_s: u64,
    },
    /// We will not take this request now (`503` with `Retry-After`): a gate at capacity.
    #[error("{message}")]
    Unavailable {
        /// snake_case code for the body.
        code: &'static str,
        /// Human-readable message.
        message: String,
        /// Seconds before a retry is worth it.
        retry_after_s: u64,
    },
    /// The upstream failed (`502`) or timed out (`504`).
    #[error("upstream: {0}")]
    Upstream(#[from] UpstreamError),
    /// The store is unreachable or misbehaved.
    #[error("store: {0}")]
    Store(queue_core::Error),
    /// A bug or an unexpected failure of ours.
    #[error("internal: {0}")]
    Internal(String),
}

/// Who caused an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// The request (bad input, not admitted, too many): a 4xx.
    Client,
    /// The backend: no connection, no answer, a broken answer.
    Upstream,
    /// The gateway or its store.
    Internal,
}

/// Why a message could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The peer closed the connection before the first byte of a message.
    #[error("the peer closed the connection")]
    Closed,
    /// The socket failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The peer's bytes are not a message two readers would split the same way.
    #[error("{0}")]
    Invalid(&'static str),
    /// The peer took in nothing for [`crate::http1::WRITE_STALL`].
    #[error("the peer stopped reading")]
    Stalled,
}

/// Why the backend gave no (usable) answer.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No connection: nothing was sent.
    #[error("connect to {addr}: {source}")]
    Connect { addr: String, source: std::io::Error },
    /// No connection in time: nothing was sent.
    #[error("connect to {0}: timed out")]
    ConnectTimeout(String),
    /// hyper's client failed (the request may have reached the backend).
    #[error("{}", chain(.0))]
    Http(#[from] hyper::Error),
    /// The relay's exchange failed, or the backend's answer broke the protocol (the request
    /// may have reached the backend).
    #[error("{0}")]
    Codec(#[from] CodecError),
    /// No answer within `upstream_timeout_ms` (the request may have been processed).
    #[error("no answer in time")]
    Timeout,
}

impl UpstreamError {
    /// Whether the request certainly never reached the backend (a retry cannot repeat it).
    pub fn unsent(&self) -> bool {
        matches!(self, UpstreamError::Connect { .. } | UpstreamError::ConnectTimeout(_))
    }

    /// Whether hyper's client stopped on the request body's size limit.
    pub(crate) fn is_length_limit(&self) -> bool {
        let UpstreamError::Http(e) = self else { return false };
        std::iter::successors(Some(e as &(dyn std::error::Error + 'static)), |e| e.source())
            .any(|s| s.is::<http_body_util::LengthLimitError>())
    }
}

/// An error with its causes, for the log ("connection error: broken pipe").
fn chain(e: &hyper::Error) -> String {
    std::iter::successors(Some(e as &(dyn std::error::Error + 'static)), |e| e.source())
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(": ")
}

impl GatewayError {
    /// Who caused it.
    pub fn cause(&self) -> Cause {
        match self {
            GatewayError::Client { .. } | GatewayError::RateLimited { .. } => Cause::Client,
            GatewayError::Upstream(_) => Cause::Upstream,
            GatewayError::Unavailable { .. } | GatewayError::Store(_) | GatewayError::Internal(_) => {
                Cause::Internal
            }
        }
    }

    /// Whether the client may send the same request again without risk of it taking effect
    /// twice: after a rate limit or an overload (nothing was done), a store outage (nothing was
    /// written), or a backend that was never reached. Not after a backend that may have
    /// processed the request (a timeout, a broken answer), nor after a refusal (the same
    /// request fails the same way). Such answers carry `Retry-After`.
    pub fn retry_safe(&self) -> bool {
        match self {
            GatewayError::RateLimited { .. } | GatewayError::Unavailable { .. } | GatewayError::Store(_) => {
                true
            }
            GatewayError::Upstream(e) => e.unsent(),
            GatewayError::Client { .. } | GatewayError::Internal(_) => false,
        }
    }

    /// `413 payload_too_large`.
    pub fn too_large() -> Self {
        Self::client(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", "the request body is too large")
    }

    /// A client error with a status and code.
    pub fn client(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        GatewayError::Client { status, code, message: message.into() }
    }

    /// `400 bad_request`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::client(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// `404 not_found`.
    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::client(StatusCode::NOT_FOUND, code, message)
    }
}

impl From<queue_core::Error> for GatewayError {
    fn from(e: queue_core::Error) -> Self {
        use queue_core::Error as E;
        match e {
            E::UnknownRoom(room) => Self::not_found("unknown_room", format!("no room `{room}`")),
            E::UnknownGate(gate) => Self::not_found("unknown_gate", format!("no gate `{gate}`")),
            E::GateBusy(gate, n) => Self::client(
                StatusCode::CONFLICT,
                "gate_busy",
                format!("gate `{gate}` still has {n} logged requests to answer"),
            ),
            E::UnknownTicket => Self::not_found("unknown_ticket", "no such ticket in this room"),
            E::InvalidId { kind, reason } => {
                Self::client(StatusCode::BAD_REQUEST, "invalid_id", format!("invalid {kind} id: {reason}"))
            }
            E::InvalidConfig { field, reason } => {
                Self::client(StatusCode::BAD_REQUEST, "invalid_config", format!("field `{field}`: {reason}"))
            }
            E::InvalidArgument { field, reason } => {
                Self::client(StatusCode::BAD_REQUEST, "invalid_argument", format!("`{field}`: {reason}"))
            }
            other => GatewayError::Store(other),
        }
    }
}

/// The contract's error body: `{"error": {"code", "message"}}`.
pub fn error_body(status: StatusCode, code: &str, message: &str) -> Response {
    let body = json!({ "error": { "code": code, "message": message } });
    (status, axum::Json(body)).into_response()
}

impl IntoResponse for GatewayError {
    fn into_response(self) -> Response {
        match self {
            GatewayError::Client { status, code, message } => {
                let mut r = error_body(status, code, &message);
                if status == StatusCode::PAYLOAD_TOO_LARGE {
                    // The rest of the body is never read: the connection cannot carry another
                    // request, and a client that pooled it would lose its next one.
                    r.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
                }
                r
            }
            GatewayError::RateLimited { retry_after_s } => {
                let mut r = error_body(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    "too many requests; retry after the time in Retry-After",
                );
                r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry_after_s.max(1)));
                r
            }
            GatewayError::Unavailable { code, message, retry_after_s } => {
                let mut r = error_body(StatusCode::SERVICE_UNAVAILABLE, code, &message);
                r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry_after_s.max(1)));
                r
            }
            GatewayError::Upstream(UpstreamError::Timeout) => {
                tracing::warn!("upstream timed out");
                error_body(
                    StatusCode::GATEWAY_TIMEOUT,
                    "upstream_timeout",
                    "the backend did not answer in time",
                )
            }
            GatewayError::Upstream(cause) => {
                let retry = cause.unsent();
                tracing::warn!(%cause, retry_safe = retry, "upstream failed");
                let mut r =
                    error_body(StatusCode::BAD_GATEWAY, "bad_gateway", "the backend could not be reached");
                if retry {
                    r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                }
                r
            }
            GatewayError::Store(e) => {
                tracing::error!(error = %e, "store failure");
                let mut r = error_body(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_unavailable",
                    "the waiting room is briefly unavailable; retry shortly",
                );
                r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
                r
            }
            GatewayError::Internal(cause) => {
                tracing::error!(%cause, "internal error");
                error_body(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error")
            }
        }
    }
}

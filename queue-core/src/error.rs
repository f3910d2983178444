//! The engine's one error type.

use std::fmt;

/// Everything that can go wrong in `queue-core`.
///
/// The first group is the caller's fault (bad input, unknown things) and maps to a 4xx at the
/// HTTP edge; [`Error::Store`] and [`Error::Protocol`] are ours and map to a 5xx.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An identifier did not have the required shape.
    #[error("invalid {kind}: {reason}")]
    InvalidId {
        /// Which kind of id (`room`, `ticket`, `user`).
        kind: &'static str,
        /// Why it was refused.
        reason: &'static str,
    },
    /// A room configuration was refused; `field` names the offending field.
    #[error("invalid room config: field `{field}`: {reason}")]
    InvalidConfig {
        /// The field at fault (dotted path for nested values).
        field: String,
        /// Why it was refused.
        reason: String,
    },
    /// The room does not exist.
    #[error("unknown room `{0}`")]
    UnknownRoom(String),
    /// The gate does not exist.
    #[error("unknown gate `{0}`")]
    UnknownGate(String),
    /// The gate's log is full (`max_logged` entries wait).
    #[error("the log of gate `{0}` is full")]
    LogFull(String),
    /// The gate cannot be deleted while its log holds entries.
    #[error("gate `{0}` still has {1} logged requests to answer")]
    GateBusy(String, u64),
    /// The ticket does not exist in that room.
    #[error("unknown ticket")]
    UnknownTicket,
    /// A request argument was out of range (e.g. `admit` with count 0).
    #[error("invalid argument `{field}`: {reason}")]
    InvalidArgument {
        /// The argument at fault.
        field: &'static str,
        /// Why it was refused.
        reason: String,
    },
    /// The backing store failed or was unreachable.
    #[cfg(feature = "engine")]
    #[error("store error: {0}")]
    Store(#[from] redis::RedisError),
    /// The store answered something this version does not understand.
    #[error("store protocol error: {0}")]
    Protocol(String),
    /// A key, token or crypto operation failed.
    #[error("token error: {0}")]
    Token(#[from] crate::token::TokenError),
}

impl Error {
    /// True when the caller caused the error (bad input, unknown things): a 4xx at the edge.
    pub fn is_client_error(&self) -> bool {
        matches!(
            self,
            Error::InvalidId { .. }
                | Error::InvalidConfig { .. }
                | Error::UnknownRoom(_)
                | Error::UnknownGate(_)
                | Error::GateBusy(..)
                | Error::UnknownTicket
                | Error::InvalidArgument { .. }
        )
    }

    pub(crate) fn config(field: impl fmt::Display, reason: impl fmt::Display) -> Self {
        Error::InvalidConfig { field: field.to_string(), reason: reason.to_string() }
    }
}

/// Shorthand used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

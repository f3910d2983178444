//! Policy: what the gateway allows, each piece taking narrow arguments (headers, a path, a
//! key), never the whole gateway state.
//!
//! # Layout
//! - [`screen`]: what every request passes first (refused methods and headers, the canonical
//!   path, prefix matching as backends route).
//! - [`admission`]: ticket cookies, user JWTs, admission-token checks.
//! - [`rate_limit`]: per-IP and per-user token buckets (governor).
//! - [`gate`]: the overload gates' permits and live configs, replay markers.
//! - [`rooms`]: the live room configs and their protected-prefix index.

pub mod admission;
pub mod gate;
pub mod rate_limit;
pub mod rooms;
pub mod screen;

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

//! Admission checks on the routes the gateway protects: the `X-Admission-Token` the gateway
//! passes on is verified again here with `queue-core`'s `Verifier` against the gateway's JWKS
//! (`TB_ADMISSION_JWKS_URL`), for the room that guards the resource.

use std::sync::Arc;

use axum::http::HeaderMap;
use queue_core::token::{AdmissionClaims, TokenError};
use queue_core::verify::Verifier;

use crate::error::ApiError;

/// The header the gateway forwards the token in.
pub const HEADER: &str = "x-admission-token";

/// The verifier, if configured.
#[derive(Debug, Clone)]
pub struct Admission {
    verifier: Option<Arc<Verifier>>,
}

impl Admission {
    /// Verifies against `jwks_url`; `None` refuses every protected request.
    pub fn new(verifier: Option<Verifier>) -> Self {
        Admission { verifier: verifier.map(Arc::new) }
    }

    /// The claims of a valid admission to `room`, or `403 not_admitted`.
    pub async fn require(&self, headers: &HeaderMap, room: &str) -> Result<Arc<AdmissionClaims>, ApiError> {
        let refuse = |why: &str| {
            ApiError::forbidden("not_admitted", format!("an admission to room `{room}` is required ({why})"))
        };
        let Some(v) = &self.verifier else { return Err(refuse("admission checks are not configured")) };
        let token = headers.get(HEADER).and_then(|h| h.to_str().ok()).ok_or_else(|| refuse("no token"))?;
        v.verify(token, room).await.map_err(|e| match e {
            TokenError::Refused(why) => refuse(why),
            other => {
                tracing::warn!(error = %other, "admission verification unavailable");
                refuse("verification unavailable")
            }
        })
    }
}

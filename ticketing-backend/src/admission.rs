//! Admission checks on the routes the gateway protects: the `X-Admission-Token` the gateway
//! passes on is verified again here with `queue-core`'s `Verifier` against the gateway's JWKS
//! (`TB_ADMISSION_JWKS_URL`), for the room that guards the resource. An admission the
//! gateway bound to a signed-in user (its `sub` is the user's id, not `anon:…`) passes only
//! for that user.

use std::sync::Arc;

use axum::http::HeaderMap;
use queue_core::gate::GateSecret;
use queue_core::gate::marker::REPLAY_HEADER;
use queue_core::token::{AdmissionClaims, TokenError};
use queue_core::verify::Verifier;

use crate::error::ApiError;

/// The header the gateway forwards the token in.
pub const HEADER: &str = "x-admission-token";

/// The verifier, if configured, and the gate's replay-marker key.
#[derive(Debug, Clone)]
pub struct Admission {
    verifier: Option<Arc<Verifier>>,
    gate: Option<GateSecret>,
}

/// A request the gateway's overload gate replayed from its log (a request extension).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Replayed {
    /// The offset it was logged under.
    pub offset: String,
}

impl Admission {
    /// Verifies against `jwks_url`; `None` refuses every protected request. With `gate`,
    /// replay markers are checked.
    pub fn new(verifier: Option<Verifier>, gate: Option<GateSecret>) -> Self {
        Admission { verifier: verifier.map(Arc::new), gate }
    }

    /// Checks a replay marker: `Ok(Some)` for a genuine replay, `Ok(None)` without a marker
    /// (or without a key to check one: the marker is then ignored), `403` for a forged one.
    pub fn replayed(
        &self,
        method: &str,
        path: &str,
        headers: &HeaderMap,
    ) -> Result<Option<Replayed>, ApiError> {
        let (Some(gate), Some(v)) = (&self.gate, headers.get(REPLAY_HEADER)) else { return Ok(None) };
        let now =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        v.to_str()
            .map_err(|_| "the replay marker is not text")
            .and_then(|v| gate.verify_marker(v, method, path, now))
            .map(|offset| Some(Replayed { offset }))
            .map_err(|why| ApiError::forbidden("invalid_replay_marker", why))
    }

    /// The claims of a valid admission to `room` that `user` may use: an anonymous one, or
    /// one bound to this very account when the buyer joined signed in (`403
    /// admission_not_yours` for another account's).
    pub async fn require_for(
        &self,
        headers: &HeaderMap,
        room: &str,
        user: &crate::users::CurrentUser,
    ) -> Result<Arc<AdmissionClaims>, ApiError> {
        let claims = self.require(headers, room).await?;
        if !claims.sub.starts_with("anon:") && claims.sub != user.id.to_string() {
            return Err(ApiError::forbidden(
                "admission_not_yours",
                "this admission was given to another account; queue with your own",
            ));
        }
        Ok(claims)
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

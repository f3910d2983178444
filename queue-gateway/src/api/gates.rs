//! `GET /api/v1/gate/{offset}`: a logged request's place or its answer; and a gate as the
//! admin API shows it.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use queue_core::gate::{GateConfig, GateId, Polled, StoredResponse};
use serde_json::json;

use crate::error::GatewayError;
use crate::policy::rate_limit::Api;
use crate::state::App;
use crate::transport::PeerAddr;

/// `GET /api/v1/gate/{offset}`: `202` with the position while pending, the stored response
/// once replayed, `404` for unknown or expired offsets.
pub async fn poll(
    State(app): State<Arc<App>>,
    path: Result<Path<String>, PathRejection>,
    req: Request,
) -> Response {
    poll_inner(&app, path, req).await.unwrap_or_else(IntoResponse::into_response)
}

async fn poll_inner(
    app: &App,
    path: Result<Path<String>, PathRejection>,
    req: Request,
) -> Result<Response, GatewayError> {
    let peer = req.extensions().get::<PeerAddr>().copied();
    crate::api::room::limit(app, Api::Status, peer, req.headers(), None)?;
    let unknown = || GatewayError::not_found("unknown_offset", "no such offset, or its response has expired");
    let offset = path.map_err(|_| unknown())?.0;
    let (gate, id) = app.gate_secret.parse_offset(&offset).ok_or_else(unknown)?;
    match app.gate_log.poll(&gate, id).await? {
        Polled::Pending { position } => Ok(pending(&offset, position)),
        Polled::Done(stored) => Ok(stored_response(stored)),
        Polled::Unknown => Err(unknown()),
    }
}

fn stored_response(stored: StoredResponse) -> Response {
    let mut r = Response::new(Body::from(stored.body));
    *r.status_mut() = StatusCode::from_u16(stored.status).unwrap_or(StatusCode::BAD_GATEWAY);
    for (k, v) in stored.headers {
        if let (Ok(k), Ok(v)) = (HeaderName::from_bytes(k.as_bytes()), HeaderValue::from_str(&v)) {
            r.headers_mut().append(k, v);
        }
    }
    r
}

/// The `GET /admin/v1/gates/{gate}` view: config plus this gateway's load and the log's counts.
pub async fn gate_json(app: &App, id: &GateId, cfg: &GateConfig) -> Result<serde_json::Value, GatewayError> {
    let mut v = serde_json::to_value(cfg).map_err(|e| GatewayError::Internal(e.to_string()))?;
    let (inflight, overloaded) = app.gates.get(id).map(|g| g.permits.load()).unwrap_or((0, false));
    let counts = app.gate_log.counts(id).await?;
    v["gate"] = json!(id.as_str());
    v["inflight"] = json!(inflight);
    v["overloaded"] = json!(overloaded);
    v["logged"] = json!(counts.logged);
    v["backlog"] = json!(counts.backlog);
    v["dead_letters"] = json!(counts.dead_letters);
    Ok(v)
}

/// `202 {"offset", "position", "poll"}`.
pub(crate) fn pending(offset: &str, position: u64) -> Response {
    let poll = format!("/api/v1/gate/{offset}");
    let mut r =
        (StatusCode::ACCEPTED, axum::Json(json!({ "offset": offset, "position": position, "poll": poll })))
            .into_response();
    let h = r.headers_mut();
    h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Ok(v) = HeaderValue::from_str(&poll) {
        h.insert(header::LOCATION, v);
    }
    r
}

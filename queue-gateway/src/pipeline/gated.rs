//! Phase 5, requests under a gate: forwarded with a permit, or held FIFO up to `hold_ms`,
//! then logged for replay (`202` and an offset) or refused (`503`).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, Method, header};
use axum::response::Response;
use http_body_util::{BodyExt, Limited};
use queue_core::gate::{GateConfig, LoggedRequest};

use crate::error::GatewayError;
use crate::metrics::GateLabel;
use crate::pipeline::forward;
use crate::policy::gate::{Gate, Lane, Permit};
use crate::state::App;
use crate::transport::PeerAddr;

/// Request headers kept in the log: what the backend needs to authenticate, route and
/// deduplicate the replay. Everything else (cookies of other sites, caching, hop-by-hop) is
/// dropped.
const LOGGED_HEADERS: [&str; 13] = [
    "accept",
    "accept-language",
    "authorization",
    "content-type",
    "cookie",
    "idempotency-key",
    "traceparent",
    "user-agent",
    "x-request-id",
    "x-admission-token",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
];

/// A gated request: forward it with a permit, or hold it, then log or refuse it.
pub(crate) async fn handle(
    app: &App,
    gate: Arc<Gate>,
    req: Request,
    token: Option<HeaderValue>,
) -> Result<Response, GatewayError> {
    let cfg = gate.cfg();
    let peer = req.extensions().get::<PeerAddr>().copied();
    let (mut parts, body) = req.into_parts();
    if cfg.replayable {
        check_length(&parts.headers, cfg.max_body_bytes)?;
    }
    let path = parts.uri.path_and_query().map_or("/", |pq| pq.as_str()).to_owned();
    forward::prepare(app, &mut parts, peer, token.as_ref())?;
    let to_log = cfg.replayable && gate.backlog.load(Ordering::Relaxed);
    let waiter = if to_log { None } else { Some(gate.permits.try_acquire(Lane::Live)) };
    if let Some(Ok(permit)) = waiter {
        let body = if cfg.replayable { Body::from(read_body(body, cfg.max_body_bytes).await?) } else { body };
        return forward_with(app, parts, body, permit).await;
    }
    let body = if cfg.replayable { Some(read_body(body, cfg.max_body_bytes).await?) } else { None };
    if let Some(Err(rx)) = waiter
        && let Ok(Ok(permit)) = tokio::time::timeout(Duration::from_millis(cfg.hold_ms), rx).await
    {
        let body = body.map_or_else(Body::empty, Body::from);
        return forward_with(app, parts, body, permit).await;
    }
    let Some(body) = body else {
        return Err(GatewayError::Unavailable {
            code: "overloaded",
            message: format!("the backend is at capacity for this route (gate `{}`); retry shortly", gate.id),
            retry_after_s: 1,
        });
    };
    log(app, &gate, &cfg, &parts.method, &path, &parts.headers, body).await
}

fn check_length(headers: &HeaderMap, max: u32) -> Result<(), GatewayError> {
    match headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok()) {
        Some(len) if len > u64::from(max) => Err(GatewayError::too_large()),
        _ => Ok(()),
    }
}

async fn read_body(body: Body, max: u32) -> Result<Bytes, GatewayError> {
    match Limited::new(body, max as usize).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(GatewayError::too_large()),
        Err(e) => Err(GatewayError::bad_request(format!("the request body could not be read: {e}"))),
    }
}

/// Forwards with `permit` held until the response body is done.
async fn forward_with(
    app: &App,
    parts: axum::http::request::Parts,
    body: Body,
    permit: Permit,
) -> Result<Response, GatewayError> {
    let resp = crate::upstream::send(&app.upstream, &app.metrics, parts, body).await?;
    let (parts, body) = resp.into_parts();
    let body = body.map_frame(move |f| {
        let _held = &permit;
        f
    });
    Ok(Response::from_parts(parts, Body::new(body)))
}

async fn log(
    app: &App,
    gate: &Gate,
    cfg: &GateConfig,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response, GatewayError> {
    let headers = LOGGED_HEADERS
        .iter()
        .filter_map(|n| Some((n.to_string(), headers.get(*n)?.to_str().ok()?.to_owned())))
        .collect();
    let req = LoggedRequest { method: method.to_string(), path: path.to_owned(), headers, body };
    let appended = match app.gate_log.append(&gate.id, &req, cfg.max_logged).await {
        Ok(a) => a,
        Err(queue_core::Error::LogFull(_)) => {
            return Err(GatewayError::Unavailable {
                code: "gate_log_full",
                message: format!(
                    "gate `{}` has {} requests waiting already; retry later",
                    gate.id, cfg.max_logged
                ),
                retry_after_s: 5,
            });
        }
        Err(e) => return Err(e.into()),
    };
    gate.backlog.store(true, Ordering::Relaxed);
    gate.logged.notify_one();
    app.metrics.gate_logged.get_or_create(&GateLabel { gate: gate.id.to_string() }).inc();
    let offset = app.gate_secret.offset(&gate.id, appended.id);
    Ok(crate::api::gates::pending(&offset, appended.position))
}

//! The admin API (DESIGN §4): room configs and the operators' levers, behind a bearer token
//! compared in constant time. Every change is written as one audit log line.

use std::sync::Arc;

use aws_lc_rs::{constant_time, digest};
use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use queue_core::gate::{GateConfig, GateId};
use queue_core::{RoomConfig, RoomId};
use serde_json::{Value, json};

use crate::api::room::{path_err, room_id};
use crate::error::GatewayError;
use crate::state::App;

type Result<T, E = GatewayError> = std::result::Result<T, E>;

/// An unreadable body in the contract's error shape (axum's own rejection is plain text).
fn body_err(e: BytesRejection) -> GatewayError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return GatewayError::too_large();
    }
    GatewayError::bad_request(format!("the request body could not be read: {}", e.body_text()))
}

fn authorize(app: &App, headers: &HeaderMap) -> Result<()> {
    let Some(expected) = &app.cfg.admin_token else {
        return Err(GatewayError::client(
            StatusCode::FORBIDDEN,
            "admin_disabled",
            "the admin API is disabled: set WR_ADMIN_TOKEN",
        ));
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let Some(given) = given else {
        return Err(GatewayError::client(StatusCode::UNAUTHORIZED, "unauthorized", "missing bearer token"));
    };
    // Digests first: equal lengths, and the comparison time says nothing about the token.
    let a = digest::digest(&digest::SHA256, given.as_bytes());
    let b = digest::digest(&digest::SHA256, expected.as_bytes());
    constant_time::verify_slices_are_equal(a.as_ref(), b.as_ref())
        .map_err(|_| GatewayError::client(StatusCode::FORBIDDEN, "forbidden", "wrong admin token"))
}

/// `409 prefix_taken` when one of `mine` is already another's (rooms, gates).
fn no_shared_prefix<'a>(
    field: &str,
    held: &str,
    mine: &[String],
    others: impl IntoIterator<Item = (&'a str, &'a [String])>,
) -> Result<()> {
    for (other, theirs) in others {
        if let Some(p) = mine.iter().find(|p| theirs.contains(p)) {
            return Err(GatewayError::client(
                StatusCode::CONFLICT,
                "prefix_taken",
                format!("field `{field}`: {p} is already {held} `{other}`"),
            ));
        }
    }
    Ok(())
}

fn unauthorized_header(mut r: Response) -> Response {
    if r.status() == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    r
}

async fn room_json(app: &App, room: &RoomId, cfg: &RoomConfig) -> Result<Value> {
    let mut v = serde_json::to_value(cfg).map_err(|e| GatewayError::Internal(e.to_string()))?;
    let st = app.store.stats(room).await?;
    v["state"] = json!(st.phase.as_str());
    v["room"] = json!(room.as_str());
    v["waiting"] = json!(st.waiting);
    v["active"] = json!(st.active);
    v["admitted_per_minute"] = json!((st.admitted_per_minute * 10.0).round() / 10.0);
    Ok(v)
}

async fn guarded<F, Fut>(app: Arc<App>, headers: HeaderMap, f: F) -> Response
where
    F: FnOnce(Arc<App>) -> Fut,
    Fut: std::future::Future<Output = Result<Response>>,
{
    let r = match authorize(&app, &headers) {
        Ok(()) => f(app).await.unwrap_or_else(IntoResponse::into_response),
        Err(e) => e.into_response(),
    };
    unauthorized_header(r)
}

fn audit(action: &str, room: &RoomId, detail: Value) {
    tracing::info!(target: "audit", action, room = %room, detail = %detail, "admin change");
}

/// `GET /admin/v1/rooms`
pub async fn list(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    guarded(app, headers, |app| async move {
        let mut rooms = Vec::new();
        for id in app.store.rooms().await? {
            if let Some(cfg) = app.store.room_config(&id).await? {
                rooms.push(room_json(&app, &id, &cfg).await?);
            }
        }
        Ok(Json(json!({ "rooms": rooms })).into_response())
    })
    .await
}

/// `GET /admin/v1/rooms/{room}`
pub async fn get(
    State(app): State<Arc<App>>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Response {
    guarded(app, headers, |app| async move {
        let room = room_id(&path.map_err(path_err)?.0)?;
        let cfg = app
            .store
            .room_config(&room)
            .await?
            .ok_or_else(|| GatewayError::from(queue_core::Error::UnknownRoom(room.to_string())))?;
        Ok(Json(room_json(&app, &room, &cfg).await?).into_response())
    })
    .await
}

/// `PUT /admin/v1/rooms/{room}`
pub async fn put(
    State(app): State<Arc<App>>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    guarded(app, headers, |app| async move {
        let room = room_id(&path.map_err(path_err)?.0)?;
        let cfg = RoomConfig::from_json(&body.map_err(body_err)?)?;
        // Two rooms protecting the same prefix would make admission ambiguous.
        let index = app.rooms.snapshot();
        let others = index
            .rooms
            .iter()
            .filter(|(id, _)| **id != room)
            .map(|(id, c)| (id.as_str(), c.protect.as_slice()));
        no_shared_prefix("protect", "protected by room", &cfg.protect, others)?;
        let created = app.store.put_room(&room, &cfg).await?;
        audit(
            if created { "create_room" } else { "update_room" },
            &room,
            serde_json::to_value(&cfg).unwrap_or_default(),
        );
        refresh(&app).await;
        let code = if created { StatusCode::CREATED } else { StatusCode::OK };
        Ok((code, Json(room_json(&app, &room, &cfg).await?)).into_response())
    })
    .await
}

/// `DELETE /admin/v1/rooms/{room}`
pub async fn delete(
    State(app): State<Arc<App>>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Response {
    guarded(app, headers, |app| async move {
        let room = room_id(&path.map_err(path_err)?.0)?;
        if !app.store.delete_room(&room).await? {
            return Err(queue_core::Error::UnknownRoom(room.to_string()).into());
        }
        audit("delete_room", &room, Value::Null);
        refresh(&app).await;
        Ok(StatusCode::NO_CONTENT.into_response())
    })
    .await
}

async fn set_paused(
    app: Arc<App>,
    path: Result<Path<String>, PathRejection>,
    paused: bool,
) -> Result<Response> {
    let room = room_id(&path.map_err(path_err)?.0)?;
    app.store.set_paused(&room, paused).await?;
    audit(if paused { "pause" } else { "resume" }, &room, Value::Null);
    refresh(&app).await;
    let st = app.store.stats(&room).await?;
    Ok(Json(json!({ "room": room.as_str(), "state": st.phase.as_str() })).into_response())
}

/// `POST /admin/v1/rooms/{room}/{action}`: `pause`, `resume`, or `admit` with `{"count": N}`.
pub async fn action(
    State(app): State<Arc<App>>,
    path: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let (room, action) = match path {
        Ok(Path((room, action))) => (Ok(Path(room)), action),
        Err(e) => return path_err(e).into_response(),
    };
    match action.as_str() {
        "pause" | "resume" => guarded(app, headers, |app| set_paused(app, room, action == "pause")).await,
        "admit" => admit(State(app), room, headers, body).await,
        _ => {
            let unknown = || async {
                Err(GatewayError::not_found("unknown_action", "the room actions are pause, resume and admit"))
            };
            guarded(app, headers, |_| unknown()).await
        }
    }
}

async fn admit(
    State(app): State<Arc<App>>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    guarded(app, headers, |app| async move {
        let room = room_id(&path.map_err(path_err)?.0)?;
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Admit {
            count: u32,
        }
        let req: Admit = serde_json::from_slice(&body.map_err(body_err)?)
            .map_err(|e| GatewayError::bad_request(format!("body must be {{\"count\": N}}: {e}")))?;
        let admitted = app.store.admit(&room, req.count).await?;
        audit("admit", &room, json!({ "requested": req.count, "admitted": admitted.len() }));
        app.metrics
            .admitted
            .get_or_create(&crate::metrics::Metrics::room(room.as_str()))
            .inc_by(admitted.len() as u64);
        Ok(Json(json!({ "room": room.as_str(), "admitted": admitted.len() })).into_response())
    })
    .await
}

async fn refresh(app: &App) {
    if let Err(e) = crate::background::rooms::reload(app).await {
        tracing::warn!(error = %e, "room cache refresh after an admin change failed");
    }
}

fn gate_id(raw: &str) -> Result<GateId> {
    GateId::parse(raw).map_err(GatewayError::from)
}

fn gate_audit(action: &str, gate: &GateId, detail: Value) {
    tracing::info!(target: "audit", action, gate = %gate, detail = %detail, "admin change");
}

async fn refresh_gates(app: &Arc<App>) {
    if let Err(e) = crate::background::gates::refresh(app).await {
        tracing::warn!(error = %e, "gate refresh after an admin change failed");
    }
}

/// `GET /admin/v1/gates`
pub async fn list_gates(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    guarded(app, headers, |app| async move {
        let mut gates = Vec::new();
        for (id, cfg) in app.gate_log.gates().await? {
            gates.push(crate::api::gates::gate_json(&app, &id, &cfg).await?);
        }
        Ok(Json(json!({ "gates": gates })).into_response())
    })
    .await
}

/// `GET /admin/v1/gates/{gate}`: the config plus `inflight`, `overloaded` (this gateway),
/// `logged`, `backlog` and `dead_letters` (the log).
pub async fn get_gate(
    State(app): State<Arc<App>>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Response {
    guarded(app, headers, |app| async move {
        let id = gate_id(&path.map_err(path_err)?.0)?;
        let cfg = app
            .gate_log
            .gates()
            .await?
            .into_iter()
            .find(|(g, _)| g == &id)
            .map(|(_, c)| c)
            .ok_or_else(|| GatewayError::from(queue_core::Error::UnknownGate(id.to_string())))?;
        Ok(Json(crate::api::gates::gate_json(&app, &id, &cfg).await?).into_response())
    })
    .await
}

/// `PUT /admin/v1/gates/{gate}`
pub async fn put_gate(
    State(app): State<Arc<App>>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    guarded(app, headers, |app| async move {
        let id = gate_id(&path.map_err(path_err)?.0)?;
        let cfg = GateConfig::from_json(&body.map_err(body_err)?)?;
        // Two gates on one prefix would split its capacity in two.
        let gates = app.gate_log.gates().await?;
        let others = gates.iter().filter(|(g, _)| *g != id).map(|(g, c)| (g.as_str(), c.prefixes.as_slice()));
        no_shared_prefix("prefixes", "gated by", &cfg.prefixes, others)?;
        let created = app.gate_log.put_gate(&id, &cfg).await?;
        gate_audit(
            if created { "create_gate" } else { "update_gate" },
            &id,
            serde_json::to_value(&cfg).unwrap_or_default(),
        );
        refresh_gates(&app).await;
        let code = if created { StatusCode::CREATED } else { StatusCode::OK };
        Ok((code, Json(crate::api::gates::gate_json(&app, &id, &cfg).await?)).into_response())
    })
    .await
}

/// `DELETE /admin/v1/gates/{gate}`: `409 gate_busy` while its log holds entries.
pub async fn delete_gate(
    State(app): State<Arc<App>>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Response {
    guarded(app, headers, |app| async move {
        let id = gate_id(&path.map_err(path_err)?.0)?;
        if !app.gate_log.delete_gate(&id).await? {
            return Err(queue_core::Error::UnknownGate(id.to_string()).into());
        }
        gate_audit("delete_gate", &id, Value::Null);
        refresh_gates(&app).await;
        Ok(StatusCode::NO_CONTENT.into_response())
    })
    .await
}

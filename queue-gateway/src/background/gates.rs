//! The gates' background work: refreshes (the log's configs into this gateway's [`Gates`](crate::policy::gate::Gates),
//! every second and after admin changes) and the replay consumers.

use std::sync::Arc;
use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{Method, header};
use http_body_util::{BodyExt, Limited};
use queue_core::gate::marker::REPLAY_HEADER;
use queue_core::gate::{Delivery, GateConfig, GateId, StoredResponse};
use serde_json::json;
use tokio::sync::{Notify, watch};

use crate::error::GatewayError;
use crate::metrics::GateLabel;
use crate::policy::gate::{Gate, Lane, Permit, Permits};
use crate::state::App;
use crate::upstream::UpstreamError;

/// Brings the gates in line with the log's configs: new gates get permits and a consumer,
/// changed ones their new limit, deleted ones stop. Gates the log lost (neither there nor
/// remembered as deleted) are first put back from the configs this gateway knows, as rooms
/// are ([`crate::policy::rooms::RoomCache::refresh`]).
pub async fn refresh(app: &Arc<App>) -> queue_core::Result<()> {
    let number = app.gates.order.begin();
    let known: Vec<(GateId, GateConfig)> = {
        let by_id = app.gates.by_id.read().unwrap_or_else(|e| e.into_inner());
        by_id.iter().map(|(id, g)| (id.clone(), (*g.cfg()).clone())).collect()
    };
    let mut configs = app.gate_log.gates().await?;
    let missing: Vec<_> = known.into_iter().filter(|(id, _)| configs.iter().all(|(c, _)| c != id)).collect();
    let _turn = if missing.is_empty() {
        None
    } else {
        let turn = app.gates.restoring.lock().await;
        // What a refresh that had the turn first put back is there now.
        configs = app.gate_log.gates().await?;
        Some(turn)
    };
    for (id, cfg) in missing {
        if configs.iter().any(|(c, _)| *c == id) || app.gate_log.was_deleted(&id).await? {
            continue;
        }
        app.gate_log.put_gate(&id, &cfg).await?;
        tracing::error!(
            gate = %id,
            "the gate log lost this gate (Redis restarted without persistence, was flushed, or failed over to an empty replica): put back from this gateway's last known config; requests it had logged are gone"
        );
        app.metrics.restored("gate").inc();
        configs.push((id, cfg));
    }
    let mut spawned = Vec::new();
    {
        let mut by_id = app.gates.by_id.write().unwrap_or_else(|e| e.into_inner());
        if !app.gates.order.admit(number) {
            return Ok(());
        }
        let live: std::collections::HashSet<&GateId> = configs.iter().map(|(id, _)| id).collect();
        by_id.retain(|id, g| {
            let keep = live.contains(id);
            if !keep {
                g.removed.store(true, Ordering::Relaxed);
                g.logged.notify_one();
            }
            keep
        });
        for (id, cfg) in &configs {
            match by_id.get(id) {
                Some(g) => {
                    if *g.cfg() != *cfg {
                        *g.cfg.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(cfg.clone());
                        g.permits.set_limit(cfg.max_inflight);
                    }
                }
                None => {
                    let label = GateLabel { gate: id.to_string() };
                    for family in
                        [&app.metrics.gate_logged, &app.metrics.gate_replayed, &app.metrics.gate_dead_letters]
                    {
                        let _ = family.get_or_create(&label);
                    }
                    let permits = Permits::new(
                        id.as_str(),
                        cfg.max_inflight,
                        app.metrics.gate_inflight.get_or_create(&label).clone(),
                        app.metrics.gate_overloaded.get_or_create(&label).clone(),
                    );
                    let gate = Arc::new(Gate {
                        id: id.clone(),
                        cfg: RwLock::new(Arc::new(cfg.clone())),
                        permits,
                        logged: Notify::new(),
                        backlog: AtomicBool::new(false),
                        removed: AtomicBool::new(false),
                    });
                    by_id.insert(id.clone(), gate.clone());
                    spawned.push(gate);
                }
            }
        }
        let mut list: Vec<(String, Arc<Gate>)> = by_id
            .values()
            .flat_map(|g| g.cfg().prefixes.iter().map(|p| (p.clone(), g.clone())).collect::<Vec<_>>())
            .collect();
        list.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
        *app.gates.prefixes.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(list);
    }
    for gate in spawned {
        tokio::spawn(replay::consume(app.clone(), gate, app.shutdown.clone()));
    }
    Ok(())
}

pub mod replay {
    //! Consumers: every gateway runs one per gate, all in one consumer group. A consumer
    //! reads the next entry, waits for a replay permit, and delivers it with that permit
    //! (an entry left unanswered on shutdown or death is claimed by another); entries
    //! a dead gateway left idle are claimed; failures are retried with backoff until
    //! `max_attempts`, then dead-lettered with a stored error response.

    use super::*;

    /// How often a consumer looks for entries of dead consumers, and for entries other
    /// gateways logged while it had nothing to do.
    const IDLE_POLL: Duration = Duration::from_millis(200);

    pub(crate) async fn consume(app: Arc<App>, gate: Arc<Gate>, mut shutdown: watch::Receiver<bool>) {
        let claim_idle = Duration::from_millis(app.cfg.replay.claim_idle_ms);
        let mut last_claim = tokio::time::Instant::now();
        while !gate.removed() && !*shutdown.borrow() {
            if last_claim.elapsed() >= claim_idle / 4 {
                last_claim = tokio::time::Instant::now();
                match app.gate_log.claim(&gate.id, &app.instance, claim_idle, 16).await {
                    Ok(claimed) => {
                        for d in claimed {
                            tracing::info!(gate = %gate.id, offset = %d.id, "claimed an entry a dead consumer left");
                            tokio::spawn(deliver(app.clone(), gate.clone(), d, None));
                        }
                    }
                    Err(e) => tracing::warn!(gate = %gate.id, error = %e, "claiming idle entries failed"),
                }
            }
            match app.gate_log.next(&gate.id, &app.instance).await {
                Ok(Some(d)) => {
                    // One entry at a time: the next is read only once this one has capacity,
                    // so replays start in offset order.
                    gate.backlog.store(true, Ordering::Relaxed);
                    let permit = tokio::select! {
                        p = gate.permits.acquire(Lane::Replay) => p,
                        _ = shutdown.changed() => break,
                    };
                    let Some(permit) = permit else { break };
                    tokio::spawn(deliver(app.clone(), gate.clone(), d, Some(permit)));
                }
                Ok(None) => {
                    gate.backlog.store(false, Ordering::Relaxed);
                    tokio::select! {
                        _ = gate.logged.notified() => {}
                        _ = tokio::time::sleep(IDLE_POLL) => {}
                        _ = shutdown.changed() => break,
                    }
                }
                Err(e) => {
                    tracing::warn!(gate = %gate.id, error = %e, "reading the gate log failed");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    /// Delivers one entry until it is answered or dead-lettered.
    async fn deliver(app: Arc<App>, gate: Arc<Gate>, d: Delivery, mut permit: Option<Permit>) {
        let label = GateLabel { gate: gate.id.to_string() };
        loop {
            // The permit first: the attempt resets the entry's idle clock, which must not run
            // out while this consumer waits for capacity.
            let held = match permit.take() {
                Some(p) => Some(p),
                None => gate.permits.acquire(Lane::Replay).await,
            };
            let attempt = match app.gate_log.attempt(&gate.id, &app.instance, d.id).await {
                Ok(Some(n)) => n,
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!(gate = %gate.id, offset = %d.id, error = %e, "could not start a delivery; another consumer will claim it");
                    return;
                }
            };
            let cfg = gate.cfg();
            let outcome = if attempt > cfg.max_attempts {
                Err(Failure::Exhausted)
            } else {
                send(&app, &gate, &d).await
            };
            drop(held);
            match outcome {
                Ok(resp) => {
                    finish(&app, &gate, &d, &resp, None, &cfg).await;
                    app.metrics.gate_replayed.get_or_create(&label).inc();
                    return;
                }
                Err(reason) if attempt >= cfg.max_attempts => {
                    tracing::warn!(gate = %gate.id, offset = %d.id, attempt, %reason, "dead-lettered");
                    let body = json!({"error": {"code": "replay_failed", "message": format!(
                        "the request could not be delivered after {attempt} attempts ({reason}); retrying it with the same Idempotency-Key is safe")}});
                    let resp = StoredResponse {
                        status: 502,
                        headers: vec![("content-type".into(), "application/json".into())],
                        body: Bytes::from(body.to_string()),
                    };
                    if finish(&app, &gate, &d, &resp, Some(&reason.to_string()), &cfg).await {
                        app.metrics.gate_dead_letters.get_or_create(&label).inc();
                    }
                    return;
                }
                Err(reason) => {
                    tracing::info!(gate = %gate.id, offset = %d.id, attempt, %reason, "replay failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt.min(20)))).await;
                }
            }
        }
    }

    /// Why one delivery attempt failed (every kind is retried until `max_attempts`: a logged
    /// request carries an `Idempotency-Key`, so the backend applies it once).
    #[derive(Debug, thiserror::Error)]
    enum Failure {
        #[error("the logged request has an unreplayable {0}")]
        Unreplayable(&'static str),
        #[error("{0}")]
        Upstream(#[from] GatewayError),
        #[error("the backend answered {0}")]
        Answered(axum::http::StatusCode),
        #[error("reading the backend's answer failed: {0}")]
        Body(axum::BoxError),
        #[error("delivery attempts exhausted")]
        Exhausted,
    }

    async fn finish(
        app: &App,
        gate: &Gate,
        d: &Delivery,
        resp: &StoredResponse,
        dead: Option<&str>,
        cfg: &GateConfig,
    ) -> bool {
        let ttl = Duration::from_secs(cfg.response_ttl_s.into());
        for wait in [0, 100, 500, 2_000] {
            tokio::time::sleep(Duration::from_millis(wait)).await;
            match app.gate_log.finish(&gate.id, d.id, resp, ttl, dead).await {
                Ok(done) => return done,
                Err(e) => {
                    tracing::warn!(gate = %gate.id, offset = %d.id, error = %e, "storing a replay's response failed")
                }
            }
        }
        // Unacknowledged: another consumer claims it later (Idempotency-Key guards the repeat).
        false
    }

    /// One delivery attempt: the response, or why it failed (transport errors, timeouts and
    /// 502/503/504 from the backend are failures worth retrying).
    async fn send(app: &App, gate: &Gate, d: &Delivery) -> Result<StoredResponse, Failure> {
        let r = &d.request;
        let method = Method::from_bytes(r.method.as_bytes()).map_err(|_| Failure::Unreplayable("method"))?;
        let uri: axum::http::Uri = r.path.parse().map_err(|_| Failure::Unreplayable("path"))?;
        let mut builder = axum::http::Request::builder().method(method).uri(app.upstream.uri_for(&uri)?);
        for (k, v) in &r.headers {
            builder = builder.header(k.as_str(), v.as_str());
        }
        let offset = app.gate_secret.offset(&gate.id, d.id);
        let expires = crate::policy::gate::unix_now() + app.cfg.limits.upstream_timeout_ms / 1000 + 60;
        builder = builder.header(REPLAY_HEADER, app.gate_secret.marker(&offset, &r.method, &r.path, expires));
        builder = builder.header(header::HOST, app.upstream.authority());
        let req = builder.body(Body::from(r.body.clone())).map_err(|_| Failure::Unreplayable("header"))?;
        let (parts, body) = req.into_parts();
        let resp = crate::upstream::send(&app.upstream, &app.metrics, parts, body).await?;
        let status = resp.status();
        if matches!(status.as_u16(), 502..=504) {
            return Err(Failure::Answered(status));
        }
        let (parts, body) = resp.into_parts();
        let max = app.cfg.replay.max_response_bytes;
        let body = match tokio::time::timeout(app.upstream.timeout(), Limited::new(body, max).collect()).await
        {
            Ok(Ok(b)) => b.to_bytes(),
            Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
                let msg = json!({"error": {"code": "response_too_large", "message": format!(
                    "the backend answered {status} with a body over {max} bytes, which is not kept")}});
                return Ok(StoredResponse {
                    status: 502,
                    headers: vec![("content-type".into(), "application/json".into())],
                    body: Bytes::from(msg.to_string()),
                });
            }
            Ok(Err(e)) => return Err(Failure::Body(e)),
            Err(_) => return Err(Failure::Upstream(GatewayError::Upstream(UpstreamError::Timeout))),
        };
        let headers = parts
            .headers
            .iter()
            .filter(|(k, _)| *k != header::CONTENT_LENGTH)
            .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
            .collect();
        Ok(StoredResponse { status: status.as_u16(), headers, body })
    }
}

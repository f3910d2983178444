//! A backend with a fixed capacity, for overload drills, gate tests and the gate benchmark.
//!
//! It serves `capacity` requests at once, each taking `latency`. Past that the requests share
//! the machine: a request that starts with `n > capacity` in flight takes `latency × n /
//! capacity`, and one that would take longer than `deadline` fails after `deadline` with a
//! `503` (a backend error, its time wasted). Offered far more than its capacity, it collapses
//! as real backends do: everyone slow, most failing, little goodput.
//!
//! It records arrivals in order (with the gate's replay offset when present) and applies each
//! `Idempotency-Key` once: a repeat gets the first answer back without a second effect.
//! `GET /_stats` reports the counters; paths under `/fail/` always answer `503`; a
//! `sleep_ms=N` query parameter sets one request's latency.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use queue_core::gate::marker::REPLAY_HEADER;
use serde::Serialize;
use serde_json::json;
use tokio::net::TcpListener;

/// One request as the backend saw it.
#[derive(Clone, Debug, Serialize)]
pub struct Arrival {
    /// Method and path.
    pub method: String,
    /// Path and query.
    pub path: String,
    /// `Idempotency-Key`, if sent.
    pub key: Option<String>,
    /// The replay marker's offset, if the request was a replay.
    pub replay_offset: Option<String>,
}

/// What the backend has seen.
#[derive(Debug, Default)]
pub struct Record {
    in_flight: AtomicU64,
    /// Requests served within capacity.
    pub served: AtomicU64,
    /// Requests that started with the backend over capacity (slowed down).
    pub overloaded: AtomicU64,
    /// Requests that failed: past the deadline (backend errors).
    pub errors: AtomicU64,
    /// Effects applied (first sight of each idempotency key, or every keyless request).
    pub effects: AtomicU64,
    /// Highest concurrency seen.
    pub peak: AtomicU64,
    arrivals: Mutex<Vec<Arrival>>,
    answers: Mutex<HashMap<String, serde_json::Value>>,
}

impl Record {
    /// Arrivals so far, in order.
    pub fn arrivals(&self) -> Vec<Arrival> {
        self.arrivals.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Distinct idempotency keys applied.
    pub fn keys_applied(&self) -> usize {
        self.answers.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    fn snapshot(&self) -> serde_json::Value {
        json!({
            "served": self.served.load(Ordering::Relaxed),
            "overloaded": self.overloaded.load(Ordering::Relaxed),
            "errors": self.errors.load(Ordering::Relaxed),
            "effects": self.effects.load(Ordering::Relaxed),
            "peak": self.peak.load(Ordering::Relaxed),
        })
    }
}

/// How the backend behaves.
#[derive(Clone, Copy, Debug)]
pub struct Capacity {
    /// Requests served at full speed at once.
    pub concurrent: u64,
    /// Time of one request within capacity.
    pub latency: Duration,
    /// A request that would take longer fails after this long.
    pub deadline: Duration,
}

struct Backend {
    cap: Capacity,
    record: Arc<Record>,
}

/// Starts the backend on `listener`; returns its address and record.
pub async fn start(listener: TcpListener, cap: Capacity) -> std::io::Result<(SocketAddr, Arc<Record>)> {
    let addr = listener.local_addr()?;
    let record = Arc::new(Record::default());
    let backend = Arc::new(Backend { cap, record: record.clone() });
    let app = axum::Router::new().fallback(handle).with_state(backend);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "capacity backend stopped");
        }
    });
    Ok((addr, record))
}

async fn handle(State(b): State<Arc<Backend>>, req: Request<Body>) -> Response {
    let r = &b.record;
    if req.uri().path() == "/_stats" {
        return axum::Json(r.snapshot()).into_response();
    }
    let arrival = arrival_of(&req);
    r.arrivals.lock().unwrap_or_else(|e| e.into_inner()).push(arrival.clone());
    if arrival.path.starts_with("/fail/") {
        return (StatusCode::SERVICE_UNAVAILABLE, "failing on purpose").into_response();
    }
    let now = r.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    r.peak.fetch_max(now, Ordering::Relaxed);
    let _guard = InFlight(r.clone());
    let mut work = latency_of(&arrival.path).unwrap_or(b.cap.latency);
    if now > b.cap.concurrent {
        r.overloaded.fetch_add(1, Ordering::Relaxed);
        work = work.mul_f64(now as f64 / b.cap.concurrent.max(1) as f64);
    }
    if work > b.cap.deadline {
        tokio::time::sleep(b.cap.deadline).await;
        r.errors.fetch_add(1, Ordering::Relaxed);
        let body = json!({"error": {"code": "backend_overloaded", "message": "timed out under load"}});
        return (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response();
    }
    tokio::time::sleep(work).await;
    r.served.fetch_add(1, Ordering::Relaxed);
    let answer = apply(r, &arrival);
    (StatusCode::CREATED, axum::Json(answer)).into_response()
}

/// `?sleep_ms=N` (at most 10 s) overrides the latency of one request.
fn latency_of(path: &str) -> Option<Duration> {
    let query = path.split_once('?')?.1;
    let ms: u64 = query.split('&').find_map(|kv| kv.strip_prefix("sleep_ms="))?.parse().ok()?;
    Some(Duration::from_millis(ms.min(10_000)))
}

fn arrival_of(req: &Request<Body>) -> Arrival {
    let header = |n: &str| req.headers().get(n).and_then(|v| v.to_str().ok()).map(str::to_owned);
    Arrival {
        method: req.method().to_string(),
        path: req.uri().path_and_query().map_or("/", |p| p.as_str()).to_owned(),
        key: header("idempotency-key"),
        replay_offset: header(REPLAY_HEADER).and_then(|m| m.split(';').nth(1).map(str::to_owned)),
    }
}

/// Applies the request's effect once per idempotency key; a repeat gets the first answer.
fn apply(r: &Record, arrival: &Arrival) -> serde_json::Value {
    let Some(key) = &arrival.key else {
        let n = r.effects.fetch_add(1, Ordering::Relaxed) + 1;
        return json!({"key": null, "path": arrival.path, "effect": n});
    };
    let mut answers = r.answers.lock().unwrap_or_else(|e| e.into_inner());
    answers
        .entry(key.clone())
        .or_insert_with(|| {
            let n = r.effects.fetch_add(1, Ordering::Relaxed) + 1;
            json!({"key": key, "path": arrival.path, "effect": n})
        })
        .clone()
}

struct InFlight(Arc<Record>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

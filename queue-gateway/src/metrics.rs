//! Prometheus metrics, registered explicitly in one registry, named as in DESIGN §7.
//! Labels come only from bounded sets: room ids from config, route templates, result codes.

use std::sync::OnceLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// `{room}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RoomLabel {
    /// Room id.
    pub room: String,
}

/// `{room, reason}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DropLabel {
    /// Room id.
    pub room: String,
    /// `idle` or `left`.
    pub reason: &'static str,
}

/// `{result}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// `ok` or the refusal reason.
    pub result: &'static str,
}

/// `{gate}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GateLabel {
    /// Gate id.
    pub gate: String,
}

/// `{kind}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    /// `room` or `gate`.
    pub kind: &'static str,
}

/// `{route, code}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteCode {
    /// Route template.
    pub route: &'static str,
    /// HTTP status code.
    pub code: u16,
}

/// `{route}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabel {
    /// Route template.
    pub route: &'static str,
}

fn seconds_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

fn wait_histogram() -> Histogram {
    // One second to about nine hours.
    Histogram::new(exponential_buckets(1.0, 2.0, 16))
}

/// Every metric of the gateway.
#[derive(Debug)]
pub struct Metrics {
    /// Holds them all; `/metrics` encodes it.
    pub registry: Registry,
    pub tickets_joined: Family<RoomLabel, Counter>,
    pub waiting: Family<RoomLabel, Gauge>,
    pub active: Family<RoomLabel, Gauge>,
    pub admitted: Family<RoomLabel, Counter>,
    pub dropped: Family<DropLabel, Counter>,
    pub wait_seconds: Family<RoomLabel, Histogram>,
    pub tick_seconds: Histogram,
    pub sse_connections: Gauge,
    pub rate_limited: Counter,
    pub token_verifications: Family<ResultLabel, Counter>,
    pub http_requests: Family<RouteCode, Counter>,
    pub http_duration: Family<RouteLabel, Histogram>,
    pub upstream_duration: Histogram,
    pub gate_inflight: Family<GateLabel, Gauge>,
    pub gate_overloaded: Family<GateLabel, Gauge>,
    pub gate_logged: Family<GateLabel, Counter>,
    pub gate_replayed: Family<GateLabel, Counter>,
    pub gate_dead_letters: Family<GateLabel, Counter>,
    pub store_up: Gauge,
    pub store_restored: Family<KindLabel, Counter>,
    /// Handles of the per-request series, by route index.
    requests: [RouteSeries; MAX_ROUTES],
    /// `token_verifications{result="ok"}`, counted on every admitted request.
    token_ok: OnceLock<Counter>,
}

/// Most routes [`Metrics::request_done`] keeps handles for.
pub const MAX_ROUTES: usize = 32;
/// Status codes whose `{route, code}` counters are kept at hand; others are looked up.
const COMMON_CODES: [u16; 8] = [200, 201, 204, 303, 403, 404, 429, 503];

/// One route's series, looked up in their families on first use only: a `Family` lookup
/// hashes the label set and takes a lock, and every request counted two of them.
#[derive(Debug, Default)]
struct RouteSeries {
    duration: OnceLock<Histogram>,
    codes: [OnceLock<Counter>; COMMON_CODES.len()],
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let m = Metrics {
            tickets_joined: Family::default(),
            waiting: Family::default(),
            active: Family::default(),
            admitted: Family::default(),
            dropped: Family::default(),
            wait_seconds: Family::new_with_constructor(wait_histogram),
            tick_seconds: seconds_histogram(),
            sse_connections: Gauge::default(),
            rate_limited: Counter::default(),
            token_verifications: Family::default(),
            http_requests: Family::default(),
            http_duration: Family::new_with_constructor(seconds_histogram),
            upstream_duration: seconds_histogram(),
            gate_inflight: Family::default(),
            gate_overloaded: Family::default(),
            gate_logged: Family::default(),
            gate_replayed: Family::default(),
            gate_dead_letters: Family::default(),
            store_up: Gauge::default(),
            store_restored: Family::default(),
            requests: std::array::from_fn(|_| RouteSeries::default()),
            token_ok: OnceLock::new(),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register("waitingroom_tickets_joined", "Tickets created by joins", m.tickets_joined.clone());
        r.register("waitingroom_waiting", "Tickets waiting", m.waiting.clone());
        r.register("waitingroom_active", "Admissions not yet expired", m.active.clone());
        r.register("waitingroom_admitted", "Admissions made by ticks and operators", m.admitted.clone());
        r.register("waitingroom_dropped", "Tickets that left the queue, by reason", m.dropped.clone());
        r.register("waitingroom_wait_seconds", "Join to admission", m.wait_seconds.clone());
        r.register("waitingroom_tick_seconds", "Time to apply one tick", m.tick_seconds.clone());
        r.register("waitingroom_sse_connections", "Open SSE streams", m.sse_connections.clone());
        r.register("waitingroom_rate_limited", "Requests refused by rate limits", m.rate_limited.clone());
        r.register(
            "waitingroom_token_verifications",
            "Admission token checks on protected paths, by result",
            m.token_verifications.clone(),
        );
        r.register("waitingroom_http_requests", "HTTP requests by route and status", m.http_requests.clone());
        r.register(
            "waitingroom_http_request_duration_seconds",
            "HTTP request duration by route",
            m.http_duration.clone(),
        );
        r.register(
            "waitingroom_upstream_duration_seconds",
            "Time to the upstream's response head",
            m.upstream_duration.clone(),
        );
        r.register(
            "waitingroom_gate_inflight",
            "Requests in flight through a gate (this gateway)",
            m.gate_inflight.clone(),
        );
        r.register(
            "waitingroom_gate_overloaded",
            "1 while a gate is over its in-flight limit",
            m.gate_overloaded.clone(),
        );
        r.register("waitingroom_gate_logged", "Requests a gate appended to its log", m.gate_logged.clone());
        r.register(
            "waitingroom_gate_replayed",
            "Logged requests replayed and answered",
            m.gate_replayed.clone(),
        );
        r.register(
            "waitingroom_gate_dead_letters",
            "Logged requests moved to the dead letters",
            m.gate_dead_letters.clone(),
        );
        r.register(
            "waitingroom_store_up",
            "1 while the store answers, 0 when it does not",
            m.store_up.clone(),
        );
        r.register(
            "waitingroom_store_restored",
            "Rooms and gates the store had lost (Redis restarted empty, flushed, failed over to an empty replica), put back from a gateway's last known configs",
            m.store_restored.clone(),
        );
        // Both series exist from the start (at 0), so an alert on their increase sees the first.
        for kind in ["room", "gate"] {
            let _ = m.store_restored.get_or_create(&KindLabel { kind });
        }
        Metrics { registry, ..m }
    }

    /// `store_restored{kind}`.
    pub fn restored(&self, kind: &'static str) -> Counter {
        self.store_restored.get_or_create(&KindLabel { kind }).clone()
    }

    /// Counts a finished request of route number `index` (below [`MAX_ROUTES`]), labelled
    /// `route`: its status and its duration.
    pub fn request_done(&self, index: usize, route: &'static str, code: u16, seconds: f64) {
        let Some(series) = self.requests.get(index) else {
            self.http_requests.get_or_create(&RouteCode { route, code }).inc();
            self.http_duration.get_or_create(&RouteLabel { route }).observe(seconds);
            return;
        };
        let count = || self.http_requests.get_or_create(&RouteCode { route, code }).clone();
        match COMMON_CODES.iter().position(|c| *c == code) {
            Some(i) => series.codes[i].get_or_init(count).inc(),
            None => count().inc(),
        };
        series
            .duration
            .get_or_init(|| self.http_duration.get_or_create(&RouteLabel { route }).clone())
            .observe(seconds);
    }

    /// Counts an admission check on a protected path by its result (`ok` or the refusal).
    pub fn token_checked(&self, result: &'static str) {
        if result == "ok" {
            self.token_ok
                .get_or_init(|| self.token_verifications.get_or_create(&ResultLabel { result }).clone())
                .inc();
        } else {
            self.token_verifications.get_or_create(&ResultLabel { result }).inc();
        }
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    pub(crate) fn room(room: &str) -> RoomLabel {
        RoomLabel { room: room.to_owned() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_series_count_through_their_handles() {
        let m = Metrics::new();
        for _ in 0..2 {
            m.request_done(2, "/x", 200, 0.01);
        }
        m.request_done(2, "/x", 418, 0.01);
        m.request_done(MAX_ROUTES, "/y", 200, 0.5);
        for result in ["ok", "ok", "expired"] {
            m.token_checked(result);
        }
        let text = m.encode();
        for line in [
            r#"waitingroom_http_requests_total{route="/x",code="200"} 2"#,
            r#"waitingroom_http_requests_total{route="/x",code="418"} 1"#,
            r#"waitingroom_http_requests_total{route="/y",code="200"} 1"#,
            r#"waitingroom_http_request_duration_seconds_count{route="/x"} 3"#,
            r#"waitingroom_http_request_duration_seconds_count{route="/y"} 1"#,
            r#"waitingroom_token_verifications_total{result="ok"} 2"#,
            r#"waitingroom_token_verifications_total{result="expired"} 1"#,
        ] {
            assert!(text.contains(line), "{line} not in\n{text}");
        }
    }
}

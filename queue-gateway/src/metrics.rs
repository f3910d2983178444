//! Prometheus metrics, registered explicitly in one registry, named as in DESIGN §7.
//! Labels come only from bounded sets: room ids from config, route templates, result codes.

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
        Metrics { registry, ..m }
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

//! Prometheus metrics with the `ticketing_` prefix, registered explicitly.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// `{route, code}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteCode {
    /// Route template.
    pub route: String,
    /// Status code.
    pub code: u16,
}

/// `{route}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabel {
    /// Route template.
    pub route: String,
}

/// `{kind}` of a reconciliation finding.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    /// `orphan_charge`, `paid_without_charge`, `refunded_at_provider`, `amount_mismatch`,
    /// `revoked_tickets_missing`.
    pub kind: String,
}

/// Every metric of the backend.
#[derive(Debug)]
pub struct Metrics {
    /// The registry `/metrics` encodes.
    pub registry: Registry,
    /// Requests by route and status.
    pub http_requests: Family<RouteCode, Counter>,
    /// Request duration by route.
    pub http_duration: Family<RouteLabel, Histogram>,
    /// Reservations that held their seats.
    pub reservations_held: Counter,
    /// Coupons issued.
    pub coupons_issued: Counter,
    /// Payments confirmed (sagas completed).
    pub payments_confirmed: Counter,
    /// Sagas undone by their compensations.
    pub sagas_compensated: Counter,
    /// Tickets issued.
    pub tickets_issued: Counter,
    /// Paid orders refunded (their tickets revoked, their seats back on sale).
    pub payments_refunded: Counter,
    /// Disagreements between the provider's ledger and the database found by the last
    /// reconciliation, by kind (repaired ones included).
    pub reconcile_discrepancies: Family<KindLabel, Gauge>,
    /// Disagreements reconciliation repaired, by kind.
    pub reconcile_repaired: Family<KindLabel, Counter>,
    /// When reconciliation last completed (Unix s).
    pub reconcile_last_success: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let http_requests = Family::<RouteCode, Counter>::default();
        let http_duration = Family::<RouteLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 16))
        });
        registry.register(
            "ticketing_http_requests",
            "HTTP requests by route and status",
            http_requests.clone(),
        );
        registry.register(
            "ticketing_http_request_duration_seconds",
            "HTTP request duration by route",
            http_duration.clone(),
        );
        let reservations_held = Counter::default();
        registry.register(
            "ticketing_reservations_held",
            "Reservations that held their seats",
            reservations_held.clone(),
        );
        let coupons_issued = Counter::default();
        registry.register("ticketing_coupons_issued", "Coupons issued", coupons_issued.clone());
        let payments_confirmed = Counter::default();
        registry.register("ticketing_payments_confirmed", "Payments confirmed", payments_confirmed.clone());
        let sagas_compensated = Counter::default();
        registry.register(
            "ticketing_sagas_compensated",
            "Sagas undone by compensation",
            sagas_compensated.clone(),
        );
        let tickets_issued = Counter::default();
        registry.register("ticketing_tickets_issued", "Tickets issued", tickets_issued.clone());
        let payments_refunded = Counter::default();
        registry.register("ticketing_payments_refunded", "Paid orders refunded", payments_refunded.clone());
        let reconcile_discrepancies = Family::<KindLabel, Gauge>::default();
        registry.register(
            "ticketing_reconcile_discrepancies",
            "Provider ledger vs database disagreements found by the last reconciliation, by kind",
            reconcile_discrepancies.clone(),
        );
        let reconcile_repaired = Family::<KindLabel, Counter>::default();
        registry.register(
            "ticketing_reconcile_repaired",
            "Disagreements reconciliation repaired, by kind",
            reconcile_repaired.clone(),
        );
        let reconcile_last_success = Gauge::default();
        registry.register(
            "ticketing_reconcile_last_success_timestamp_seconds",
            "When reconciliation last completed",
            reconcile_last_success.clone(),
        );
        Metrics {
            payments_refunded,
            reconcile_discrepancies,
            reconcile_repaired,
            reconcile_last_success,
            tickets_issued,
            registry,
            http_requests,
            http_duration,
            reservations_held,
            coupons_issued,
            payments_confirmed,
            sagas_compensated,
        }
    }
}

impl Metrics {
    /// The text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

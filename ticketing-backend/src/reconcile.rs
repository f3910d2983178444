//! Reconciliation: the payment provider's ledger against the database, so that every charge
//! has exactly one paid order and every paid order its charge.
//!
//! A run reads the provider's transactions of the last [`WINDOW_MS`] (`GET /v1/transactions`)
//! and the orders they name, plus the paid orders of the same window, and sorts what
//! disagrees into [`Kind`]s. It repairs what is safe without a person: a charge of one of our
//! orders that is not paid is refunded (`orphan_charge`), valid tickets of an order that is
//! not paid are revoked (`tickets_not_revoked`). The rest is reported (log, ops webhook,
//! metric `ticketing_reconcile_discrepancies{kind}`, alert `ReconcileDiscrepancies`): a paid
//! order the provider never charged, one it refunded behind our back, an amount that
//! differs, or a charge of an order this database never had (which no machine refunds).
//! Orders younger than the grace period are left to their saga and the recovery loop.
//!
//! It runs every `reconcile_every_s` under a lease (one instance does the work) and on
//! demand as `ticketing-backend jobs reconcile`.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use serde::Serialize;
use sqlx::Row;
use tokio::sync::watch;

use crate::db::now_ms;
use crate::error::{ApiError, Context};
use crate::metrics::KindLabel;
use crate::payments::ProviderPayment;
use crate::state::AppState;

type Result<T, E = ApiError> = std::result::Result<T, E>;

/// How far back a run looks.
pub const WINDOW_MS: i64 = 48 * 3_600_000;
/// Order ids per `IN (…)` query.
const CHUNK: usize = 500;

/// A kind of disagreement.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// The provider holds a charge for an order that is not paid here (repaired: refunded).
    OrphanCharge,
    /// An order is paid here but the provider has no charge for it (reported).
    PaidWithoutCharge,
    /// The provider refunded an order that is paid here (reported).
    RefundedAtProvider,
    /// The provider charged another amount than the paid order's (reported).
    AmountMismatch,
    /// Valid tickets of an order that is not paid (repaired: revoked).
    TicketsNotRevoked,
    /// The provider holds a charge for an order this database never had: another shop on
    /// the same account, a charge made by hand, or orders lost with a database (reported,
    /// never refunded by a machine).
    UnknownOrder,
}

impl Kind {
    /// Every kind, for the metric's zeroes.
    pub const ALL: [Kind; 6] = [
        Kind::OrphanCharge,
        Kind::PaidWithoutCharge,
        Kind::RefundedAtProvider,
        Kind::AmountMismatch,
        Kind::TicketsNotRevoked,
        Kind::UnknownOrder,
    ];

    fn label(self) -> &'static str {
        match self {
            Kind::OrphanCharge => "orphan_charge",
            Kind::PaidWithoutCharge => "paid_without_charge",
            Kind::RefundedAtProvider => "refunded_at_provider",
            Kind::AmountMismatch => "amount_mismatch",
            Kind::TicketsNotRevoked => "tickets_not_revoked",
            Kind::UnknownOrder => "unknown_order",
        }
    }
}

/// One disagreement.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// What disagrees.
    pub kind: Kind,
    /// The order.
    pub order_id: String,
    /// Details for a person.
    pub detail: String,
    /// Whether this run repaired it.
    pub repaired: bool,
}

/// What a run found.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    /// Payments in the provider's ledger for the window.
    pub provider_payments: usize,
    /// Paid orders in the database for the window.
    pub paid_orders: usize,
    /// Every disagreement.
    pub findings: Vec<Finding>,
}

/// The columns of an order reconciliation reads.
struct Local {
    status: String,
    step: String,
    amount: i64,
    updated_at: i64,
}

async fn orders(s: &AppState, ids: &[String]) -> Result<HashMap<String, Local>> {
    let mut out = HashMap::new();
    for chunk in ids.chunks(CHUNK) {
        let marks = (1..=chunk.len()).map(|i| format!("${i}")).collect::<Vec<_>>().join(", ");
        let sql = format!(
            "SELECT order_id, status, step, amount, updated_at FROM payments WHERE order_id IN ({marks})"
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for id in chunk {
            q = q.bind(id);
        }
        for r in q.fetch_all(&s.db.pool).await.context("loading orders to reconcile")? {
            let local = Local { status: r.get(1), step: r.get(2), amount: r.get(3), updated_at: r.get(4) };
            out.insert(r.get(0), local);
        }
    }
    Ok(out)
}

/// One run: compares, repairs what is safe, reports the rest; `grace_ms` spares orders a
/// saga may still be finishing.
pub async fn run(s: &AppState, grace_ms: i64) -> Result<Report> {
    let now = now_ms();
    let from = (now - WINDOW_MS).max(s.reconcile_since_ms);
    let ledger = s
        .provider
        .ledger(from, now + 60_000)
        .await
        .map_err(|e| ApiError::Internal { context: "reading the provider's ledger", source: e.into() })?;
    let ids: Vec<String> =
        ledger.iter().map(|p| p.order_id.clone()).collect::<HashSet<_>>().into_iter().collect();
    let local = orders(s, &ids).await?;
    let mut report = Report { provider_payments: ledger.len(), ..Report::default() };
    for p in &ledger {
        if let Some(f) = compare(s, p, local.get(&p.order_id), now - grace_ms).await? {
            report.findings.push(f);
        }
    }
    report.paid_orders = paid_without_charge(s, &ledger, from, now - grace_ms, &mut report.findings).await?;
    revoke_stray_tickets(s, &mut report.findings).await?;
    publish(s, &report);
    Ok(report)
}

/// What one provider payment says against its order.
async fn compare(
    s: &AppState,
    p: &ProviderPayment,
    local: Option<&Local>,
    settled: i64,
) -> Result<Option<Finding>> {
    let finding =
        |kind, detail: String, repaired| Finding { kind, order_id: p.order_id.clone(), detail, repaired };
    let paid = local.is_some_and(|l| l.status == "paid");
    match (p.status.as_str(), local) {
        ("DONE", Some(l)) if paid && l.amount != p.amount => Ok(Some(finding(
            Kind::AmountMismatch,
            format!("charged {} for an order of {}", p.amount, l.amount),
            false,
        ))),
        ("DONE", _) if paid => Ok(None),
        ("DONE", Some(l))
            if l.updated_at > settled && (l.status == "confirming" || l.step == "compensating") =>
        {
            Ok(None)
        }
        ("DONE", None) => Ok(Some(finding(
            Kind::UnknownOrder,
            format!(
                "charged {} by payment {} for an order this database does not know",
                p.amount, p.payment_key
            ),
            false,
        ))),
        ("DONE", Some(l)) => {
            let state = format!("{} ({})", l.status, l.step);
            let refunded =
                s.provider.refund(&p.order_id, "reconciliation: a charge without a paid order").await;
            if let Err(e) = &refunded {
                tracing::warn!(order = %p.order_id, error = %e, "refunding an orphan charge failed; the next run retries");
            }
            Ok(Some(finding(
                Kind::OrphanCharge,
                format!("charged {} by payment {} for an order that is {state}", p.amount, p.payment_key),
                refunded.is_ok(),
            )))
        }
        ("CANCELED", Some(l)) if paid && l.step != "refunding" => Ok(Some(finding(
            Kind::RefundedAtProvider,
            format!("the provider refunded payment {} of an order paid here", p.payment_key),
            false,
        ))),
        _ => Ok(None),
    }
}

/// Orders paid in `[from, until)` the provider has no payment for. (The ledger reaches a
/// little further back than `from` for them: it is read from `from` too, and an order is
/// paid after its charge.)
async fn paid_without_charge(
    s: &AppState,
    ledger: &[ProviderPayment],
    from: i64,
    until: i64,
    findings: &mut Vec<Finding>,
) -> Result<usize> {
    let rows = sqlx::query(
        "SELECT order_id FROM payments WHERE status = 'paid' AND amount > 0 AND paid_at >= $1 AND paid_at < $2",
    )
    .bind(from + 60_000)
    .bind(until)
    .fetch_all(&s.db.pool)
    .await
    .context("listing paid orders to reconcile")?;
    let known: HashSet<&str> = ledger.iter().map(|p| p.order_id.as_str()).collect();
    for r in &rows {
        let id: String = r.get(0);
        if !known.contains(id.as_str()) {
            findings.push(Finding {
                kind: Kind::PaidWithoutCharge,
                order_id: id,
                detail: "paid here, but the provider has no payment for it".into(),
                repaired: false,
            });
        }
    }
    Ok(rows.len())
}

/// Valid tickets of orders that are not paid: revoked (the database refuses new ones; this
/// catches rows from before it did).
async fn revoke_stray_tickets(s: &AppState, findings: &mut Vec<Finding>) -> Result<()> {
    let rows = sqlx::query(
        "SELECT DISTINCT t.order_id FROM tickets t JOIN payments p ON p.order_id = t.order_id \
         WHERE t.status = 'valid' AND p.status <> 'paid' LIMIT 1000",
    )
    .fetch_all(&s.db.pool)
    .await
    .context("finding tickets of unpaid orders")?;
    for r in rows {
        let id: String = r.get(0);
        let revoked = sqlx::query(
            "UPDATE tickets SET status = 'revoked', revoked_at = $1 WHERE order_id = $2 AND status = 'valid' \
             AND order_id IN (SELECT order_id FROM payments WHERE order_id = $2 AND status <> 'paid')",
        )
        .bind(now_ms())
        .bind(&id)
        .execute(&s.db.pool)
        .await
        .context("revoking stray tickets")?;
        findings.push(Finding {
            kind: Kind::TicketsNotRevoked,
            order_id: id,
            detail: format!("{} valid tickets of an order that is not paid", revoked.rows_affected()),
            repaired: true,
        });
    }
    Ok(())
}

fn publish(s: &AppState, report: &Report) {
    for kind in Kind::ALL {
        let n = report.findings.iter().filter(|f| f.kind == kind).count();
        let label = KindLabel { kind: kind.label().into() };
        s.metrics.reconcile_discrepancies.get_or_create(&label).set(n as i64);
        let repaired = report.findings.iter().filter(|f| f.kind == kind && f.repaired).count();
        s.metrics.reconcile_repaired.get_or_create(&label).inc_by(repaired as u64);
    }
    s.metrics.reconcile_last_success.set(now_ms() / 1000);
    for f in &report.findings {
        tracing::warn!(kind = f.kind.label(), order = %f.order_id, repaired = f.repaired, detail = %f.detail, "reconciliation");
        if !f.repaired {
            s.notifier.ops(format!(
                "reconciliation: {} on order {}: {}",
                f.kind.label(),
                f.order_id,
                f.detail
            ));
        }
    }
}

/// Runs reconciliation every `every` under the `reconcile` lease until shutdown.
pub async fn worker(
    s: AppState,
    holder: String,
    every: Duration,
    grace: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    // The series start at zero, and "last success" at the start, so that a fresh instance
    // neither lacks them nor looks stale.
    for kind in Kind::ALL {
        let label = KindLabel { kind: kind.label().into() };
        s.metrics.reconcile_discrepancies.get_or_create(&label).set(0);
        s.metrics.reconcile_repaired.get_or_create(&label).inc_by(0);
    }
    s.metrics.reconcile_last_success.set(now_ms() / 1000);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.changed() => return,
        }
        match crate::jobs::reconcile(&s, &holder, grace).await {
            Ok(out) => tracing::debug!(?out, "reconciliation round"),
            Err(e) => tracing::warn!(error = %e, "reconciliation failed"),
        }
    }
}

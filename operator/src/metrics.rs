//! Prometheus metrics (prefix `scale_agent_operator`) and the admin HTTP server:
//! `/metrics`, `/healthz`, `/readyz`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::error::{Error, Result};

/// Label of the errors counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// The error's stable label.
    pub error: String,
}

/// Label of the webhook counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AdmissionLabels {
    /// allowed, warned or denied.
    pub result: String,
}

/// Every metric the operator exports.
pub struct Metrics {
    registry: Registry,
    /// Reconciles run (only the leader reconciles).
    pub reconciles: Counter,
    /// Reconciles that failed, by error label.
    pub errors: Family<ErrorLabels, Counter>,
    /// Reconcile duration, seconds.
    pub duration: Histogram,
    /// Status subresource writes.
    pub status_writes: Counter,
    /// AgentShards known.
    pub shards: Gauge,
    /// Accounts served across all shards (state Active).
    pub accounts: Gauge,
    /// Accounts left out for a conflict across all shards.
    pub conflicts: Gauge,
    /// 1 while this replica holds the leader Lease.
    pub leader: Gauge,
    /// Admission reviews answered, by result.
    pub admissions: Family<AdmissionLabels, Counter>,
    /// Versions of AgentShards the watch could not decode (each is skipped).
    pub undecodable_shards: Counter,
    ready: AtomicBool,
}

impl Metrics {
    /// A fresh registry with every metric registered.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("scale_agent_operator");
        let reconciles = Counter::default();
        let errors = Family::<ErrorLabels, Counter>::default();
        let duration = Histogram::new(exponential_buckets(0.005, 2.0, 12));
        let status_writes = Counter::default();
        let shards = Gauge::default();
        let accounts = Gauge::default();
        let conflicts = Gauge::default();
        let leader = Gauge::default();
        let admissions = Family::<AdmissionLabels, Counter>::default();
        let undecodable_shards = Counter::default();
        registry.register(
            "reconciles",
            "AgentShard reconciles run",
            reconciles.clone(),
        );
        registry.register(
            "reconcile_errors",
            "AgentShard reconciles that failed, by error",
            errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Duration of AgentShard reconciles",
            duration.clone(),
        );
        registry.register(
            "status_writes",
            "AgentShard status writes",
            status_writes.clone(),
        );
        registry.register("shards", "AgentShards known", shards.clone());
        registry.register(
            "accounts",
            "Accounts served by all shards",
            accounts.clone(),
        );
        registry.register(
            "conflicts",
            "Accounts left out for a conflict, all shards",
            conflicts.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica holds the leader Lease",
            leader.clone(),
        );
        registry.register(
            "admission_reviews",
            "Admission reviews answered, by result",
            admissions.clone(),
        );
        registry.register(
            "undecodable_shards",
            "Versions of AgentShards that could not be decoded and were skipped",
            undecodable_shards.clone(),
        );
        Self {
            registry,
            reconciles,
            errors,
            duration,
            status_writes,
            shards,
            accounts,
            conflicts,
            leader,
            admissions,
            undecodable_shards,
            ready: AtomicBool::new(false),
        }
    }

    /// Marks the replica ready (its shard cache is synced and the webhook serves).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// The metrics in Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `addr` until the process ends.
pub async fn serve_admin(addr: SocketAddr, metrics: Arc<Metrics>) -> Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(metrics);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Serve {
            what: "admin server",
            addr: addr.to_string(),
            source,
        })?;
    tracing::info!(%addr, "admin server listening");
    axum::serve(listener, app)
        .await
        .map_err(|source| Error::Serve {
            what: "admin server",
            addr: addr.to_string(),
            source,
        })
}

async fn metrics_handler(State(m): State<Arc<Metrics>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        m.encode(),
    )
}

async fn readyz(State(m): State<Arc<Metrics>>) -> impl IntoResponse {
    if m.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_with_prefix() {
        let m = Metrics::new();
        m.reconciles.inc();
        m.errors
            .get_or_create(&ErrorLabels {
                error: "ApiConflict".into(),
            })
            .inc();
        let text = m.encode();
        assert!(
            text.contains("scale_agent_operator_reconciles_total 1"),
            "{text}"
        );
        assert!(
            text.contains("scale_agent_operator_reconcile_errors_total{error=\"ApiConflict\"} 1"),
            "{text}"
        );
        assert!(text.contains("scale_agent_operator_leader 0"), "{text}");
    }
}

//! Prometheus metrics (prefix `scale_agent_operator`, declared once below with
//! [`scale_agent_runtime::metrics!`]) and the admin HTTP server:
//! `/metrics`, `/healthz`, `/readyz`.

use std::net::SocketAddr;
use std::sync::Arc;

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

scale_agent_runtime::metrics! {
    /// Every metric the operator exports.
    pub struct Metrics {
        /// Reconciles run (only the leader reconciles).
        reconciles: Counter,
        /// Reconciles that failed, by error label.
        reconcile_errors: Family<ErrorLabels, Counter>,
        /// Reconcile duration, seconds.
        reconcile_duration_seconds: Histogram = Histogram::new(exponential_buckets(0.005, 2.0, 12)),
        /// Status subresource writes.
        status_writes: Counter,
        /// AgentShards known.
        shards: Gauge,
        /// Accounts served across all shards (state Active).
        accounts: Gauge,
        /// Accounts left out for a conflict across all shards.
        conflicts: Gauge,
        /// 1 while this replica holds the leader Lease.
        leader: Gauge,
        /// Admission reviews answered, by result.
        admission_reviews: Family<AdmissionLabels, Counter>,
        /// Versions of AgentShards the watch could not decode (each is skipped).
        undecodable_shards: Counter,
        /// 1 while this replica is ready: its shard cache is synced and the webhook serves
        /// (what `/readyz` answers).
        ready: Gauge,
    }
}

impl Metrics {
    /// Marks the replica ready (its shard cache is synced and the webhook serves).
    pub fn set_ready(&self, ready: bool) {
        self.ready.set(i64::from(ready));
    }

    /// The metrics in Prometheus text format.
    pub fn encode(&self) -> String {
        scale_agent_runtime::metrics::render("scale_agent_operator", |registry| {
            self.register(registry)
        })
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
    if m.ready.get() == 1 {
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
        let m = Metrics::default();
        m.reconciles.inc();
        m.reconcile_errors
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

//! The admin HTTP server: `/healthz` (alive), `/readyz` (connected to the hub and every
//! held account synced; the body says what is missing), `/metrics` (Prometheus text).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State as AxState;
use axum::http::StatusCode;
use axum::routing::get;

use crate::metrics::Metrics;
use crate::state::State;

#[derive(Clone)]
struct Shared {
    state: Arc<State>,
    metrics: Arc<Metrics>,
}

/// Serves the admin endpoints on `addr` until the process ends.
pub async fn serve(
    addr: SocketAddr,
    state: Arc<State>,
    metrics: Arc<Metrics>,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(Shared { state, metrics });
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "admin server listening");
    axum::serve(listener, app).await
}

async fn readyz(AxState(s): AxState<Shared>) -> (StatusCode, String) {
    let problems = s.state.problems();
    let notes: String = problems
        .iter()
        .map(|(a, p)| format!("\naccount {a}: {p}"))
        .collect();
    match s.state.readiness() {
        Ok(()) => (StatusCode::OK, format!("ok{notes}")),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{}{notes}", why.join("\n")),
        ),
    }
}

async fn metrics_text(AxState(s): AxState<Shared>) -> String {
    let buffered = s.state.buffered_bytes();
    s.metrics
        .buffered_bytes
        .set(i64::try_from(buffered).unwrap_or(i64::MAX));
    s.metrics.render()
}

//! The agent's Prometheus metrics (`scale_agent_*`).

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Every metric the agent exports.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Objects sent to the hub.
    pub events_sent: Counter,
    /// Watch errors (each retried).
    pub watch_errors: Counter,
    /// Whole-kind relists after a watch expired.
    pub relists: Counter,
    /// Watches resumed from the hub's resume point (no relist).
    pub resumes: Counter,
    /// Connections to the hub opened.
    pub connects: Counter,
    /// Connection attempts that failed.
    pub connect_failures: Counter,
    /// Operations run, by any outcome.
    pub operations: Counter,
    /// Accounts this replica streams now.
    pub accounts_streaming: Gauge,
    /// Accounts the hub rejected.
    pub accounts_rejected: Gauge,
    /// Bytes sent and not yet acknowledged by the hub.
    pub buffered_bytes: Gauge,
    /// Live replicas of the shard, this one included.
    pub members: Gauge,
    /// Kubernetes API requests from the hub being replayed now.
    pub kube_api_requests_in_flight: Gauge,
    /// Kubernetes API requests from the hub replayed, by any outcome.
    pub kube_api_requests: Counter,
}

impl Metrics {
    /// Renders every metric in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut r = Registry::with_prefix("scale_agent");
        r.register(
            "events_sent",
            "Objects sent to the hub",
            self.events_sent.clone(),
        );
        r.register(
            "watch_errors",
            "Watch errors, each retried",
            self.watch_errors.clone(),
        );
        r.register(
            "relists",
            "Whole-kind relists after a watch expired",
            self.relists.clone(),
        );
        r.register(
            "resumes",
            "Watches resumed from the hub's resume point",
            self.resumes.clone(),
        );
        r.register(
            "hub_connects",
            "Connections to the hub opened",
            self.connects.clone(),
        );
        r.register(
            "hub_connect_failures",
            "Failed connection attempts to the hub",
            self.connect_failures.clone(),
        );
        r.register("operations", "Operations run", self.operations.clone());
        r.register(
            "accounts_streaming",
            "Accounts this replica streams",
            self.accounts_streaming.clone(),
        );
        r.register(
            "accounts_rejected",
            "Accounts the hub rejected",
            self.accounts_rejected.clone(),
        );
        r.register(
            "buffered_bytes",
            "Bytes sent and not yet acknowledged",
            self.buffered_bytes.clone(),
        );
        r.register(
            "members",
            "Live replicas of the shard",
            self.members.clone(),
        );
        r.register(
            "kube_api_requests_in_flight",
            "Kubernetes API requests from the hub being replayed now",
            self.kube_api_requests_in_flight.clone(),
        );
        r.register(
            "kube_api_requests",
            "Kubernetes API requests from the hub replayed",
            self.kube_api_requests.clone(),
        );
        let mut out = String::new();
        if encode(&mut out, &r).is_err() {
            out.clear();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_render_with_the_prefix_and_total_suffix() {
        let m = Metrics::default();
        m.resumes.inc();
        m.relists.inc_by(2);
        let text = m.render();
        assert!(
            text.lines().any(|l| l == "scale_agent_resumes_total 1"),
            "{text}"
        );
        assert!(
            text.lines().any(|l| l == "scale_agent_relists_total 2"),
            "{text}"
        );
    }
}

//! The agent's Prometheus metrics (`scale_agent_*`). Each metric is declared once, below:
//! its field name is its metric name and its doc comment its help text.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Declares [`Metrics`] and registers every field under its own name.
macro_rules! metrics {
    ($( $(#[doc = $doc:literal])+ $name:ident: $ty:ty, )+) => {
        /// Every metric the agent exports.
        #[derive(Debug, Default)]
        pub struct Metrics {
            $( $(#[doc = $doc])+ pub $name: $ty, )+
        }

        impl Metrics {
            fn register(&self, registry: &mut Registry) {
                $( registry.register(stringify!($name), help(&[$($doc),+]), self.$name.clone()); )+
            }
        }
    };
}

metrics! {
    /// Objects sent to the hub.
    events_sent: Counter,
    /// Failed lists and watches, and unreadable watch events (each retried or skipped).
    watch_errors: Counter,
    /// Whole-kind relists after a watch expired.
    relists: Counter,
    /// Watches resumed from the hub's resume point (no relist).
    resumes: Counter,
    /// Watch bookmarks passed on to the hub as watch progress.
    watch_progress: Counter,
    /// Connections to the hub opened.
    hub_connects: Counter,
    /// Sessions with the hub that failed (connecting or later).
    hub_connect_failures: Counter,
    /// Operations run, by any outcome.
    operations: Counter,
    /// Accounts this replica streams now.
    accounts_streaming: Gauge,
    /// Accounts the hub rejected.
    accounts_rejected: Gauge,
    /// Bytes sent and not yet acknowledged by the hub.
    buffered_bytes: Gauge,
    /// Live replicas of the shard, this one included.
    members: Gauge,
    /// Kubernetes API requests from the hub being replayed now.
    kube_api_requests_in_flight: Gauge,
    /// Kubernetes API requests from the hub replayed, by any outcome.
    kube_api_requests: Counter,
}

/// A help text from doc comment lines (each starts with the space after `///`).
fn help(lines: &[&str]) -> String {
    lines
        .iter()
        .map(|l| l.trim())
        .collect::<Vec<_>>()
        .join(" ")
        .trim_end_matches('.')
        .to_string()
}

impl Metrics {
    /// Renders every metric in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut registry = Registry::with_prefix("scale_agent");
        self.register(&mut registry);
        let mut out = String::new();
        if encode(&mut out, &registry).is_err() {
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

    #[test]
    fn every_metric_has_its_name_and_help() {
        let text = Metrics::default().render();
        for line in [
            "# HELP scale_agent_hub_connects Connections to the hub opened.",
            "# TYPE scale_agent_watch_progress counter",
            "scale_agent_watch_progress_total 0",
            "# HELP scale_agent_members Live replicas of the shard, this one included.",
            "scale_agent_buffered_bytes 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from {text}"
            );
        }
    }
}

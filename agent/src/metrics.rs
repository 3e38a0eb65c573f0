//! The agent's Prometheus metrics (`scale_agent_*`), declared once below with
//! [`scale_agent_runtime::metrics!`]: a field's name is its metric name, its doc comment its
//! help text.

use std::fmt::Write as _;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

scale_agent_runtime::metrics! {
    /// Every metric the agent exports.
    pub struct Metrics {
        /// Objects sent to the hub.
        events_sent: Counter,
        /// Failed lists and watches, and unreadable watch events (each retried or skipped).
        watch_errors: Counter,
        /// Full relists of a kind (every object listed again between SyncStart and SyncEnd), by cause.
        relists: Family<RelistLabels, Counter>,
        /// Watches resumed from the hub's resume point (no relist).
        resumes: Counter,
        /// Watch bookmarks passed on to the hub as watch progress, by kind.
        watch_progress: Family<KindLabels, Counter>,
        /// Connections to the hub opened.
        connects: Counter,
        /// Sessions with the hub that failed (connecting or later).
        connect_failures: Counter,
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
        /// Bytes of Kubernetes API request bodies held until the cluster has them (at most --max-held-request-mib per hub session).
        kube_api_request_bytes_held: Gauge,
        /// Watches the agent keeps open on each cluster's API server (by its URL): one per kind for all the accounts of one identity, and the watches of accounts that watch on their own.
        watches_open: Family<ServerLabels, Gauge>,
    }
}

/// Why a kind is listed again from scratch instead of resuming its watch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RelistCause {
    /// The hub has no resume point for the kind (first sync, or a new holder).
    NoResumePoint,
    /// The watch's resourceVersion expired (410 Gone, or the server no longer has it).
    Expired,
    /// The account's cluster or filters differ from those the hub's cache was listed with.
    SelectionChanged,
    /// The hub's resume point is ahead of what the cluster has: not to be trusted.
    SuspiciousResume,
    /// The kind is watched in several namespaces: one resume point cannot resume them all.
    SeveralNamespaces,
    /// The kind is no longer watched: listed empty so the hub drops what it cached.
    KindRemoved,
    /// The account fell too far behind the watch it shares with other accounts.
    FellBehind,
}

impl RelistCause {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoResumePoint => "no_resume_point",
            Self::Expired => "expired",
            Self::SelectionChanged => "selection_changed",
            Self::SuspiciousResume => "suspicious_resume",
            Self::SeveralNamespaces => "several_namespaces",
            Self::KindRemoved => "kind_removed",
            Self::FellBehind => "fell_behind",
        }
    }
}

impl EncodeLabelValue for RelistCause {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> std::fmt::Result {
        encoder.write_str(self.as_str())
    }
}

/// The label of `relists`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RelistLabels {
    /// Why.
    pub cause: RelistCause,
}

/// The label of a per-kind metric: `kind` is `Kind` for the core group and `Kind.group`
/// otherwise, as accounts name kinds in their config. Only watched kinds get one, so the
/// series are bounded by the kinds the config selects, not by accounts or objects.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct KindLabels {
    /// `Kind` or `Kind.group`.
    pub kind: String,
}

impl KindLabels {
    /// The label of the kind `kind` of API group `group` (empty for the core group).
    pub fn of(group: &str, kind: &str) -> KindLabels {
        KindLabels {
            kind: if group.is_empty() {
                kind.to_owned()
            } else {
                format!("{kind}.{group}")
            },
        }
    }
}

/// The label of a per-cluster metric: the API server's URL (bounded by the clusters the
/// config names).
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ServerLabels {
    /// The server's URL.
    pub server: String,
}

/// One open watch, counted in `watches_open` until dropped.
pub struct OpenWatch(Gauge);

impl Drop for OpenWatch {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Metrics {
    /// Counts a watch open on `server` for as long as the returned guard lives.
    pub fn watch_opened(&self, server: &str) -> OpenWatch {
        let gauge = self
            .watches_open
            .get_or_create(&ServerLabels {
                server: server.to_owned(),
            })
            .clone();
        gauge.inc();
        OpenWatch(gauge)
    }

    /// Watches open on `server` now.
    pub fn watches_open_on(&self, server: &str) -> i64 {
        self.watches_open
            .get(&ServerLabels {
                server: server.to_owned(),
            })
            .map_or(0, |g| g.get())
    }

    /// Counts one bookmark of `kind` passed on to the hub as watch progress.
    pub fn watch_progressed(&self, kind: &KindLabels) {
        self.watch_progress.get_or_create(kind).inc();
    }

    /// Bookmarks of `kind` passed on to the hub so far (reading adds no series).
    pub fn watch_progress_of(&self, kind: &KindLabels) -> u64 {
        self.watch_progress.get(kind).map_or(0, |c| c.get())
    }

    /// Counts one full relist.
    pub fn relist(&self, cause: RelistCause) {
        self.relists.get_or_create(&RelistLabels { cause }).inc();
    }

    /// Full relists so far for `cause`.
    pub fn relists(&self, cause: RelistCause) -> u64 {
        self.relists.get_or_create(&RelistLabels { cause }).get()
    }
}

impl Metrics {
    /// Renders every metric in the Prometheus text format.
    pub fn render(&self) -> String {
        scale_agent_runtime::metrics::render("scale_agent", |registry| self.register(registry))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_render_with_the_prefix_and_total_suffix() {
        let m = Metrics::default();
        m.resumes.inc();
        m.relist(RelistCause::Expired);
        m.relist(RelistCause::Expired);
        m.relist(RelistCause::SelectionChanged);
        let text = m.render();
        assert!(
            text.lines().any(|l| l == "scale_agent_resumes_total 1"),
            "{text}"
        );
        for line in [
            "scale_agent_relists_total{cause=\"expired\"} 2",
            "scale_agent_relists_total{cause=\"selection_changed\"} 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from {text}"
            );
        }
    }

    #[test]
    fn watch_progress_is_counted_by_kind_and_group() {
        let m = Metrics::default();
        let configmaps = KindLabels::of("", "ConfigMap");
        let deployments = KindLabels::of("apps", "Deployment");
        m.watch_progressed(&configmaps);
        m.watch_progressed(&configmaps);
        m.watch_progressed(&deployments);
        assert_eq!(m.watch_progress_of(&configmaps), 2);
        assert_eq!(m.watch_progress_of(&KindLabels::of("", "Secret")), 0);
        let text = m.render();
        assert!(!text.contains("Secret"), "a read added a series: {text}");
        for line in [
            "# HELP scale_agent_watch_progress Watch bookmarks passed on to the hub as watch progress, by kind.",
            "# TYPE scale_agent_watch_progress counter",
            "scale_agent_watch_progress_total{kind=\"ConfigMap\"} 2",
            "scale_agent_watch_progress_total{kind=\"Deployment.apps\"} 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from {text}"
            );
        }
    }

    #[test]
    fn every_metric_has_its_name_and_help() {
        let text = Metrics::default().render();
        for line in [
            "# HELP scale_agent_connects Connections to the hub opened.",
            "# TYPE scale_agent_resumes counter",
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

//! Prometheus metrics of the hub, prefixed `scaleagent_hub_`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// A metric label holding one stable word (a reason or an outcome).
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ReasonLabel {
    /// The word.
    pub reason: &'static str,
}

/// The state of an account.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct StateLabel {
    /// `connected` or `disconnected`.
    pub state: &'static str,
}

/// The outcome of an operation.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// success, failed, timeout, unknown_account, disconnected, invalid, ...
    pub outcome: &'static str,
}

/// How a request to an account's Kubernetes API was answered.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct KubeApiLabel {
    /// `cluster` (carried to the agent), `cache` (from the hub's cache) or `hub`
    /// (refused by the hub itself).
    pub source: &'static str,
    /// The HTTP status class: `2xx`, `3xx`, `4xx`, `5xx`.
    pub code: &'static str,
}

/// Every metric of the hub.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Live agent sessions.
    pub sessions: Gauge,
    /// Accounts by state (set at scrape time).
    pub accounts: Family<StateLabel, Gauge>,
    /// Cached objects (set at scrape time).
    pub objects: Gauge,
    /// Object events applied to the cache.
    pub events_applied: Counter,
    /// Object events not applied, by reason.
    pub events_rejected: Family<ReasonLabel, Counter>,
    /// Frames ignored, by reason (unknown kind, not registered, duplicate Hello).
    pub frames_ignored: Family<ReasonLabel, Counter>,
    /// Streams refused before a session began, by reason.
    pub sessions_rejected: Family<ReasonLabel, Counter>,
    /// Account registrations accepted.
    pub registrations_accepted: Counter,
    /// Account registrations rejected, by reason.
    pub registrations_rejected: Family<ReasonLabel, Counter>,
    /// Accounts taken over by a newer session.
    pub registrations_superseded: Counter,
    /// Accounts removed (grace period over, or unregistered as removed).
    pub accounts_removed: Family<ReasonLabel, Counter>,
    /// Objects dropped at SyncEnd because the relist no longer had them.
    pub objects_dropped_on_sync: Counter,
    /// Operations by outcome.
    pub operations: Family<OutcomeLabel, Counter>,
    /// Errors writing the binding store.
    pub store_errors: Counter,
    /// TLS handshakes that failed (untrusted or missing client certificate,
    /// timeouts, protocol errors).
    pub tls_handshake_failures: Counter,
    /// Times new TLS material was loaded from changed files.
    pub tls_reloads: Counter,
    /// Sessions drained because they reached the maximum connection age.
    pub sessions_aged_out: Counter,
    /// HTTP API requests refused for a missing or wrong bearer token.
    pub http_unauthorized: Counter,
    /// Requests to the accounts' Kubernetes API, by source and status class.
    pub kube_api_requests: Family<KubeApiLabel, Counter>,
    /// Kubernetes API requests carried to agents and not finished (set at
    /// scrape time).
    pub kube_api_requests_in_flight: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("scaleagent_hub");
        let m = Metrics {
            registry: Registry::default(),
            sessions: Gauge::default(),
            accounts: Family::default(),
            objects: Gauge::default(),
            events_applied: Counter::default(),
            events_rejected: Family::default(),
            frames_ignored: Family::default(),
            sessions_rejected: Family::default(),
            registrations_accepted: Counter::default(),
            registrations_rejected: Family::default(),
            registrations_superseded: Counter::default(),
            accounts_removed: Family::default(),
            objects_dropped_on_sync: Counter::default(),
            operations: Family::default(),
            store_errors: Counter::default(),
            tls_handshake_failures: Counter::default(),
            tls_reloads: Counter::default(),
            sessions_aged_out: Counter::default(),
            http_unauthorized: Counter::default(),
            kube_api_requests: Family::default(),
            kube_api_requests_in_flight: Gauge::default(),
        };
        registry.register("sessions", "Live agent sessions", m.sessions.clone());
        registry.register("accounts", "Accounts by state", m.accounts.clone());
        registry.register("objects", "Cached objects", m.objects.clone());
        registry.register(
            "events_applied",
            "Object events applied to the cache",
            m.events_applied.clone(),
        );
        registry.register(
            "events_rejected",
            "Object events not applied, by reason",
            m.events_rejected.clone(),
        );
        registry.register(
            "frames_ignored",
            "Agent frames ignored, by reason",
            m.frames_ignored.clone(),
        );
        registry.register(
            "sessions_rejected",
            "Agent streams refused before a session began, by reason",
            m.sessions_rejected.clone(),
        );
        registry.register(
            "registrations_accepted",
            "Account registrations accepted",
            m.registrations_accepted.clone(),
        );
        registry.register(
            "registrations_rejected",
            "Account registrations rejected, by reason",
            m.registrations_rejected.clone(),
        );
        registry.register(
            "registrations_superseded",
            "Accounts taken over by a newer session",
            m.registrations_superseded.clone(),
        );
        registry.register(
            "accounts_removed",
            "Accounts removed with their cache, by reason",
            m.accounts_removed.clone(),
        );
        registry.register(
            "objects_dropped_on_sync",
            "Objects dropped at SyncEnd because a relist no longer had them",
            m.objects_dropped_on_sync.clone(),
        );
        registry.register("operations", "Operations by outcome", m.operations.clone());
        registry.register(
            "store_errors",
            "Errors writing the binding store",
            m.store_errors.clone(),
        );
        registry.register(
            "tls_handshake_failures",
            "TLS handshakes that failed (e.g. no trusted client certificate)",
            m.tls_handshake_failures.clone(),
        );
        registry.register(
            "tls_reloads",
            "Times changed TLS files were loaded",
            m.tls_reloads.clone(),
        );
        registry.register(
            "sessions_aged_out",
            "Sessions drained at the maximum connection age",
            m.sessions_aged_out.clone(),
        );
        registry.register(
            "http_unauthorized",
            "HTTP API requests refused for a missing or wrong bearer token",
            m.http_unauthorized.clone(),
        );
        registry.register(
            "kube_api_requests",
            "Requests to the accounts' Kubernetes API, by source (cluster, cache, hub) and status class",
            m.kube_api_requests.clone(),
        );
        registry.register(
            "kube_api_requests_in_flight",
            "Kubernetes API requests carried to agents and not finished",
            m.kube_api_requests_in_flight.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Counts an event rejection.
    pub fn event_rejected(&self, reason: &'static str) {
        self.events_rejected
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// Counts an ignored frame.
    pub fn frame_ignored(&self, reason: &'static str) {
        self.frames_ignored
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// Counts an operation outcome.
    pub fn operation(&self, outcome: &'static str) {
        self.operations
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
    }

    /// Counts a Kubernetes API answer.
    pub fn kube_api(&self, source: &'static str, status: u16) {
        let code = match status {
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        self.kube_api_requests
            .get_or_create(&KubeApiLabel { source, code })
            .inc();
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(err) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(%err, "encoding metrics failed");
        }
        out
    }
}

//! Prometheus metrics of the hub, prefixed `scale_agent_hub_`.

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
    /// Syncs the agents opened, by mode: `full_relist` (everything listed
    /// again) or `resumed_watch` (resumed from the hub's resume point).
    pub syncs: Family<ModeLabel, Counter>,
    /// 1 while this replica holds the leader lease of a shared store.
    pub replica_leader: Gauge,
    /// Account changes written behind to the shared store.
    pub store_flushes: Counter,
    /// Accounts this replica let go because another replica took them over.
    pub accounts_handed_over: Counter,
    /// Operations sent again because the replica that sent them stopped
    /// (or let their account go) before they were answered.
    pub operations_adopted: Counter,
    /// Requests about accounts held by another replica, by outcome
    /// (`forwarded`, `failed`, `refused_second_hop`).
    pub forwarded: Family<OutcomeLabel, Counter>,
}

/// The mode of a sync.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ModeLabel {
    /// `full_relist` or `resumed_watch`.
    pub mode: &'static str,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// The prefix of every hub metric (`scale_agent_hub_...`), beside the
/// agent's `scale_agent_` and the operator's `scale_agent_operator_`.
pub const PREFIX: &str = "scale_agent_hub";

/// Adds one to the counter of `reason` in `family`.
fn count(family: &Family<ReasonLabel, Counter>, reason: &'static str) {
    family.get_or_create(&ReasonLabel { reason }).inc();
}

/// A new metric of type `M`, registered under `name` with `help`.
fn register<M>(registry: &mut Registry, name: &str, help: &str) -> M
where
    M: prometheus_client::registry::Metric + Default + Clone,
{
    let metric = M::default();
    registry.register(name, help, metric.clone());
    metric
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Metrics {
        let mut r = Registry::with_prefix(PREFIX);
        Metrics {
            sessions: register(&mut r, "sessions", "Live agent sessions"),
            accounts: register(&mut r, "accounts", "Accounts by state"),
            objects: register(&mut r, "objects", "Cached objects"),
            events_applied: register(
                &mut r,
                "events_applied",
                "Object events applied to the cache",
            ),
            events_rejected: register(
                &mut r,
                "events_rejected",
                "Object events not applied, by reason",
            ),
            frames_ignored: register(&mut r, "frames_ignored", "Agent frames ignored, by reason"),
            sessions_rejected: register(
                &mut r,
                "sessions_rejected",
                "Agent streams refused before a session began, by reason",
            ),
            registrations_accepted: register(
                &mut r,
                "registrations_accepted",
                "Account registrations accepted",
            ),
            registrations_rejected: register(
                &mut r,
                "registrations_rejected",
                "Account registrations rejected, by reason",
            ),
            registrations_superseded: register(
                &mut r,
                "registrations_superseded",
                "Accounts taken over by a newer session",
            ),
            accounts_removed: register(
                &mut r,
                "accounts_removed",
                "Accounts removed with their cache, by reason",
            ),
            objects_dropped_on_sync: register(
                &mut r,
                "objects_dropped_on_sync",
                "Objects dropped at SyncEnd because a relist no longer had them",
            ),
            operations: register(&mut r, "operations", "Operations by outcome"),
            store_errors: register(&mut r, "store_errors", "Errors writing the binding store"),
            tls_handshake_failures: register(
                &mut r,
                "tls_handshake_failures",
                "TLS handshakes that failed (e.g. no trusted client certificate)",
            ),
            tls_reloads: register(&mut r, "tls_reloads", "Times changed TLS files were loaded"),
            sessions_aged_out: register(
                &mut r,
                "sessions_aged_out",
                "Sessions drained at the maximum connection age",
            ),
            http_unauthorized: register(
                &mut r,
                "http_unauthorized",
                "HTTP API requests refused for a missing or wrong bearer token",
            ),
            kube_api_requests: register(
                &mut r,
                "kube_api_requests",
                "Requests to the accounts' Kubernetes API, by source (cluster, cache, stale: the cache of an account whose agent is away, hub) and status class",
            ),
            kube_api_requests_in_flight: register(
                &mut r,
                "kube_api_requests_in_flight",
                "Kubernetes API requests carried to agents and not finished",
            ),
            syncs: register(
                &mut r,
                "syncs",
                "Syncs opened by agents, by mode (full_relist, resumed_watch)",
            ),
            replica_leader: register(
                &mut r,
                "replica_leader",
                "1 while this replica enforces grace periods for every replica (leader lease of the shared store)",
            ),
            store_flushes: register(
                &mut r,
                "store_flushes",
                "Account changes written behind to the shared store",
            ),
            accounts_handed_over: register(
                &mut r,
                "accounts_handed_over",
                "Accounts this replica let go because another replica took them over",
            ),
            operations_adopted: register(
                &mut r,
                "operations_adopted",
                "Operations sent again by this replica because the replica that sent them stopped before they were answered",
            ),
            forwarded: register(
                &mut r,
                "forwarded_requests",
                "Requests about accounts held by another replica, by outcome",
            ),
            registry: r,
        }
    }

    /// Counts a refused (or revoked) account registration.
    pub fn registration_rejected(&self, reason: &'static str) {
        count(&self.registrations_rejected, reason);
    }

    /// Counts an event rejection.
    pub fn event_rejected(&self, reason: &'static str) {
        count(&self.events_rejected, reason);
    }

    /// Counts an ignored frame.
    pub fn frame_ignored(&self, reason: &'static str) {
        count(&self.frames_ignored, reason);
    }

    /// Counts a stream refused before its session began.
    pub fn session_rejected(&self, reason: &'static str) {
        count(&self.sessions_rejected, reason);
    }

    /// Counts a removed account.
    pub fn account_removed(&self, reason: &'static str) {
        count(&self.accounts_removed, reason);
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

    /// Counts a sync opened in `mode`.
    pub fn sync(&self, mode: &'static str) {
        self.syncs.get_or_create(&ModeLabel { mode }).inc();
    }

    /// Counts a request about an account held by another replica.
    pub fn forwarded(&self, outcome: &'static str) {
        self.forwarded
            .get_or_create(&OutcomeLabel { outcome })
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

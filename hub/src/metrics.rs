//! Prometheus metrics of the hub, prefixed `scale_agent_hub_`, declared once below with
//! [`scale_agent_runtime::metrics!`]: a field's name is its metric name, its doc comment its
//! help text.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

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
    /// The HTTP status class: `1xx` (a switch of protocols), `2xx`, `3xx`, `4xx`, `5xx`.
    pub code: &'static str,
}

/// The content type of an answer from the Kubernetes API's cache.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ContentTypeLabel {
    /// `json`, `table`, `protobuf`, or `json_not_protobuf` (protobuf asked first,
    /// JSON answered: a kind the protobuf schema lacks, or an object it cannot write).
    pub content_type: &'static str,
}

scale_agent_runtime::metrics! {
    /// Every metric of the hub.
    pub struct Metrics {
        /// Live agent sessions.
        sessions: Gauge,
        /// Changes sent to Clouddriver's account storage API, by action (create, update,
        /// delete) and outcome (ok, refused, unreachable, malformed).
        clouddriver_pushes: Family<crate::spinnaker::PushLabel, Counter>,
        /// Clouddriver definitions named like a served account that this hub did not
        /// make (left alone).
        clouddriver_foreign: Gauge,
        /// Served accounts whose Clouddriver definition says what the hub wants.
        clouddriver_in_step: Gauge,
        /// Failed lists of Clouddriver's kubernetes definitions.
        clouddriver_list_failures: Counter,
        /// Served accounts whose last change Clouddriver refused (each also a Warning
        /// Event on its AgentShard).
        clouddriver_refused: Gauge,
        /// Accounts by state (set at scrape time).
        accounts: Family<StateLabel, Gauge>,
        /// Cached objects (set at scrape time).
        objects: Gauge,
        /// Object events applied to the cache.
        events_applied: Counter,
        /// Object events not applied, by reason.
        events_rejected: Family<ReasonLabel, Counter>,
        /// Frames ignored, by reason (unknown kind, not registered, duplicate Hello).
        frames_ignored: Family<ReasonLabel, Counter>,
        /// Streams refused before a session began, by reason.
        sessions_rejected: Family<ReasonLabel, Counter>,
        /// Account registrations accepted.
        registrations_accepted: Counter,
        /// Account registrations rejected, by reason.
        registrations_rejected: Family<ReasonLabel, Counter>,
        /// Accounts taken over by a newer session.
        registrations_superseded: Counter,
        /// Accounts removed (grace period over, or unregistered as removed).
        accounts_removed: Family<ReasonLabel, Counter>,
        /// Objects dropped at SyncEnd because the relist no longer had them.
        objects_dropped_on_sync: Counter,
        /// Operations by outcome.
        operations: Family<OutcomeLabel, Counter>,
        /// Errors writing the binding store.
        store_errors: Counter,
        /// TLS handshakes that failed (untrusted or missing client certificate,
        /// timeouts, protocol errors).
        tls_handshake_failures: Counter,
        /// Times new TLS material was loaded from changed files.
        tls_reloads: Counter,
        /// Sessions drained because they reached the maximum connection age.
        sessions_aged_out: Counter,
        /// HTTP API requests refused for a missing or wrong bearer token.
        http_unauthorized: Counter,
        /// Requests to the accounts' Kubernetes API, by source (cluster, cache, stale: the
        /// cache of an account whose agent is away, hub) and status class.
        kube_api_requests: Family<KubeApiLabel, Counter>,
        /// Successful answers from the cache (lists, watches, objects by name), by
        /// the content type they were written in.
        kube_api_cache_answers: Family<ContentTypeLabel, Counter>,
        /// Kubernetes API requests carried to agents and not finished (set at
        /// scrape time).
        kube_api_requests_in_flight: Gauge,
        /// Bytes of the clusters' discovery and OpenAPI answers the hub keeps to answer
        /// them from memory, all accounts together.
        kube_api_discovery_bytes: Gauge,
        /// Discovery and OpenAPI answers passed on without being kept, by the bound
        /// they would have crossed (`account_answers`, `account_bytes`, `total_bytes`).
        kube_api_discovery_not_kept: Family<ReasonLabel, Counter>,
        /// Syncs the agents opened, by mode: `full_relist` (everything listed
        /// again) or `resumed_watch` (resumed from the hub's resume point).
        syncs: Family<ModeLabel, Counter>,
        /// 1 while this replica holds the leader lease of a shared store.
        replica_leader: Gauge,
        /// Account changes written behind to the shared store.
        store_flushes: Counter,
        /// Accounts this replica let go because another replica took them over.
        accounts_handed_over: Counter,
        /// Operations sent again because the replica that sent them stopped
        /// (or let their account go) before they were answered.
        operations_adopted: Counter,
        /// Requests about accounts held by another replica, by outcome
        /// (`forwarded`, `failed`, `refused_second_hop`, `refused_insecure`: a
        /// Kubernetes API request with no TLS path to its holder), and requests
        /// marked forwarded refused because their connection's certificate does
        /// not name the replica the mark names (`refused_unproven`).
        forwarded_requests: Family<OutcomeLabel, Counter>,
    }
}

/// The mode of a sync.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ModeLabel {
    /// `full_relist` or `resumed_watch`.
    pub mode: &'static str,
}

/// The prefix of every hub metric (`scale_agent_hub_...`), beside the
/// agent's `scale_agent_` and the operator's `scale_agent_operator_`.
pub const PREFIX: &str = "scale_agent_hub";

/// Adds one to the counter of `reason` in `family`.
fn count(family: &Family<ReasonLabel, Counter>, reason: &'static str) {
    family.get_or_create(&ReasonLabel { reason }).inc();
}

impl Metrics {
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
            // 101: an exec, attach or port-forward switched protocols.
            100..=199 => "1xx",
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        self.kube_api_requests
            .get_or_create(&KubeApiLabel { source, code })
            .inc();
    }

    /// Counts an answer from the cache written as `content_type`.
    pub fn kube_api_cache_answer(&self, content_type: &'static str) {
        self.kube_api_cache_answers
            .get_or_create(&ContentTypeLabel { content_type })
            .inc();
    }

    /// Counts a discovery answer passed on without being kept.
    pub fn discovery_not_kept(&self, reason: &'static str) {
        count(&self.kube_api_discovery_not_kept, reason);
    }

    /// Counts a sync opened in `mode`.
    pub fn sync(&self, mode: &'static str) {
        self.syncs.get_or_create(&ModeLabel { mode }).inc();
    }

    /// Counts a request about an account held by another replica.
    pub fn forwarded(&self, outcome: &'static str) {
        self.forwarded_requests
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        scale_agent_runtime::metrics::render(PREFIX, |registry| self.register(registry))
    }
}

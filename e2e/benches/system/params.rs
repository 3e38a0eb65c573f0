//! The benchmark's command line: which scenarios, at which scale. Every flag has an
//! environment variable (`BENCH_<FLAG>`), so `just bench` passes either through.
//!
//! The defaults finish in under 25 minutes on a 2-core machine (see docs/performance.md
//! for what each costs and what the machine could not hold).

use std::path::PathBuf;

use clap::Parser;

/// Every scenario, in the order they run.
pub const SCENARIOS: [&str; 9] = [
    "hub_ingest",
    "initial_sync",
    "agent_memory_scaling",
    "change_latency",
    "reconnect",
    "kube_api",
    "kube_api_interactive",
    "armory_workload",
    "operator_convergence",
];

/// System benchmarks of scale-agent on the real test control plane.
#[derive(Debug, Clone, Parser)]
#[command(name = "system", about)]
pub struct Params {
    /// Run only these scenarios (comma-separated): hub_ingest, initial_sync,
    /// agent_memory_scaling, change_latency, reconnect, kube_api, kube_api_interactive,
    /// armory_workload, operator_convergence.
    #[arg(long, env = "BENCH_ONLY", value_delimiter = ',')]
    pub only: Vec<String>,

    /// Target API servers (one etcd, each its own prefix) the accounts share; each
    /// account has namespaces of its own.
    #[arg(long, env = "BENCH_CLUSTERS", default_value_t = 3)]
    pub clusters: usize,

    /// Size of each seeded ConfigMap's payload, bytes.
    #[arg(long, env = "BENCH_OBJECT_BYTES", default_value_t = 1000)]
    pub object_bytes: usize,

    /// Concurrent requests that create the seed objects, per API server.
    #[arg(long, env = "BENCH_SEED_WORKERS", default_value_t = 8)]
    pub seed_workers: usize,

    /// agent_memory_scaling: the account counts to measure.
    #[arg(long, env = "BENCH_ACCOUNTS", value_delimiter = ',', default_values_t = [10, 100, 500])]
    pub accounts: Vec<usize>,

    /// agent_memory_scaling: objects per account (one namespace each).
    #[arg(long, env = "BENCH_OBJECTS_PER_ACCOUNT", default_value_t = 300)]
    pub objects_per_account: usize,

    /// agent_memory_scaling: seconds after the initial sync over which the steady
    /// resident set is taken (median of the second half).
    #[arg(long, env = "BENCH_STEADY_SECONDS", default_value_t = 20)]
    pub steady_seconds: u64,

    /// initial_sync: accounts.
    #[arg(long, env = "BENCH_SYNC_ACCOUNTS", default_value_t = 50)]
    pub sync_accounts: usize,

    /// initial_sync: namespaces per account (each with --objects-per-account objects).
    #[arg(long, env = "BENCH_SYNC_NAMESPACES", default_value_t = 7)]
    pub sync_namespaces: usize,

    /// change_latency: accounts, each a namespace of its own.
    #[arg(long, env = "BENCH_LATENCY_ACCOUNTS", default_value_t = 20)]
    pub latency_accounts: usize,

    /// change_latency: the highest change rate tried, per second; the rate used is the
    /// lower of this and half the closed-loop write rate the API servers showed.
    #[arg(long, env = "BENCH_LATENCY_RATE", default_value_t = 100.0)]
    pub latency_rate: f64,

    /// change_latency: seconds of changes.
    #[arg(long, env = "BENCH_LATENCY_SECONDS", default_value_t = 60)]
    pub latency_seconds: u64,

    /// change_latency: how often the hub is asked for a changed object, milliseconds
    /// (the hub's figure includes up to this much polling delay).
    #[arg(long, env = "BENCH_LATENCY_POLL_MS", default_value_t = 2)]
    pub latency_poll_ms: u64,

    /// reconnect: accounts.
    #[arg(long, env = "BENCH_RECONNECT_ACCOUNTS", default_value_t = 20)]
    pub reconnect_accounts: usize,

    /// reconnect: changes per second across the accounts while nginx restarts.
    #[arg(long, env = "BENCH_RECONNECT_RATE", default_value_t = 20.0)]
    pub reconnect_rate: f64,

    /// reconnect: seconds nginx stays down.
    #[arg(long, env = "BENCH_RECONNECT_DOWN_SECONDS", default_value_t = 3)]
    pub reconnect_down_seconds: u64,

    /// armory_workload: accounts (all on the management cluster, where kwok runs pods).
    #[arg(long, env = "BENCH_ARMORY_ACCOUNTS", default_value_t = 100)]
    pub armory_accounts: usize,

    /// armory_workload: namespaces per account.
    #[arg(long, env = "BENCH_ARMORY_NAMESPACES", default_value_t = 1)]
    pub armory_namespaces: usize,

    /// armory_workload: Deployments (each with a Service and a ConfigMap) per account
    /// before the workload starts.
    #[arg(long, env = "BENCH_ARMORY_DEPLOYMENTS", default_value_t = 5)]
    pub armory_deployments: usize,

    /// armory_workload: minutes of workload after the initial sync.
    #[arg(long, env = "BENCH_ARMORY_MINUTES", default_value_t = 10)]
    pub armory_minutes: u64,

    /// operator_convergence: AgentShards.
    #[arg(long, env = "BENCH_SHARDS", default_value_t = 1000)]
    pub shards: usize,

    /// operator_convergence: accounts per shard.
    #[arg(long, env = "BENCH_ACCOUNTS_PER_SHARD", default_value_t = 10)]
    pub accounts_per_shard: usize,

    /// operator_convergence: percent of the accounts whose name another shard claims
    /// first.
    #[arg(long, env = "BENCH_CONFLICT_PERCENT", default_value_t = 1.0)]
    pub conflict_percent: f64,

    /// Where latest.json and latest.md go.
    #[arg(long, env = "BENCH_OUT", default_value = "bench-results")]
    pub out: PathBuf,

    /// Keep the control plane's run folder (logs of every component) after the run.
    #[arg(long, env = "BENCH_KEEP_RUN_DIR")]
    pub keep_run_dir: bool,

    /// Set by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    pub bench: bool,

    /// Internal: run a baseline process (see baseline.rs) from this spec file.
    #[arg(long, hide = true)]
    pub baseline_reflector: Option<PathBuf>,
}

impl Params {
    /// Whether `scenario` is to run.
    pub fn runs(&self, scenario: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|s| s == scenario)
    }

    /// Names given to `--only` that are no scenario.
    pub fn unknown_scenarios(&self) -> Vec<String> {
        self.only
            .iter()
            .filter(|s| !SCENARIOS.contains(&s.as_str()))
            .cloned()
            .collect()
    }

    /// The namespaces of seeded objects the selected scenarios need
    /// (`obj-0` ... `obj-<n-1>`).
    pub fn seeded_namespaces(&self) -> usize {
        let mut n = 0;
        if self.runs("agent_memory_scaling") {
            n = n.max(self.accounts.iter().copied().max().unwrap_or(0));
        }
        if self.runs("initial_sync") {
            n = n.max(scale_agent_e2e::bench::layout::sync_namespaces_needed(
                self.sync_accounts,
                self.sync_namespaces,
                self.clusters,
            ));
        }
        n
    }
}

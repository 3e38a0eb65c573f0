//! Command-line flags of the agent.
//!
//! Most settings live in the config file, which the operator writes into the
//! shard's ConfigMap and the agent reloads on change; flags hold only what a pod
//! needs to start: where its files are, who it is, where to serve admin HTTP.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
pub use scale_agent_runtime::LogFormat;
use scale_agent_runtime::flags::positive_duration;

/// Watches a group of Kubernetes clusters and streams every change to the
/// scale-agent hub (Spinnaker Clouddriver's side), and runs the deploy
/// operations the hub sends back.
///
/// Replicas of one shard split its accounts among themselves through one
/// coordination Lease per replica in the shard's namespace.
#[derive(Debug, Parser)]
#[command(
    name = "scale-agent",
    version,
    about,
    long_about,
    after_long_help = "The same executable runs the operator and the hub: started as \
        scale-agent-operator or scale-agent-hub (links to it in the image), or as \
        `scale-agent operator ...` and `scale-agent hub ...`."
)]
pub struct Args {
    /// The agent config file: hub address and TLS, accounts, budget. Written by
    /// the operator into the shard's ConfigMap; reloaded when it changes.
    #[arg(
        long,
        env = "SCALE_AGENT_CONFIG",
        value_name = "PATH",
        default_value = "/etc/scale-agent/config.yaml"
    )]
    pub config: PathBuf,

    /// Directory of kubeconfig files, one per account, as mounted from the
    /// shard's kubeconfig Secret; reloaded when it changes.
    #[arg(
        long,
        value_name = "DIR",
        default_value = "/etc/scale-agent/kubeconfigs"
    )]
    pub kubeconfig_dir: PathBuf,

    /// This replica's identity: its Lease name, and the replica id it gives the
    /// hub. In a pod, the pod name from the downward API.
    #[arg(long, env = "POD_NAME", value_name = "NAME")]
    pub replica_id: String,

    /// The uid of this replica's pod (downward API): its Lease names the pod as owner,
    /// which the operator requires before it believes the replica's report.
    #[arg(long, env = "POD_UID", value_name = "UID")]
    pub pod_uid: Option<String>,

    /// The namespace of the shard, where the replicas' Leases live. In a pod,
    /// the pod namespace from the downward API.
    #[arg(long, env = "POD_NAMESPACE", value_name = "NAMESPACE")]
    pub namespace: String,

    /// Address of the admin HTTP server: /metrics (Prometheus), /healthz
    /// (process alive), /readyz (connected to the hub and synced).
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:8080")]
    pub admin_addr: SocketAddr,

    /// How long a replica's membership Lease stays valid without renewal: a killed
    /// replica's accounts move to the others after at most this long.
    #[arg(long, value_name = "DURATION", default_value = "15s", value_parser = positive_duration)]
    pub lease_duration: Duration,

    /// How often the Lease is renewed and the shard's members re-read.
    #[arg(long, value_name = "DURATION", default_value = "3s", value_parser = positive_duration)]
    pub lease_renew_interval: Duration,

    /// How often the config file and kubeconfigs are checked for changes.
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = positive_duration)]
    pub reload_interval: Duration,

    /// HTTP/2 keepalive ping interval towards the hub; keep it below the load
    /// balancer's idle timeout.
    #[arg(long, value_name = "DURATION", default_value = "20s", value_parser = positive_duration)]
    pub keepalive_interval: Duration,

    /// Mebibytes of Kubernetes API request bodies held at once per hub session, until
    /// the cluster has them; a request whose body does not fit gets 429 (Retry-After),
    /// so many large bodies at once cannot grow the agent past it. At least 16, the
    /// largest body: any one body fits once the others are through.
    #[arg(long, value_name = "MIB", default_value_t = crate::proxy::DEFAULT_HELD_REQUEST_MIB, value_parser = clap::value_parser!(u32).range(16..))]
    pub max_held_request_mib: u32,

    /// Log line format: human-readable text, or one JSON object per line for
    /// log collectors.
    #[arg(long, value_enum, value_name = "FORMAT", default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[cfg(test)]
mod tests {
    use super::*;

    scale_agent_runtime::flags_are_consistent!(Args);

    #[test]
    fn defaults_fill_in_what_is_not_given() {
        let args = Args::try_parse_from([
            "scale-agent",
            "--replica-id",
            "prod-east-agent-0",
            "--namespace",
            "spinnaker",
        ])
        .expect("parses");
        assert_eq!(
            args.kubeconfig_dir,
            PathBuf::from("/etc/scale-agent/kubeconfigs")
        );
        assert_eq!(args.admin_addr, "0.0.0.0:8080".parse().expect("valid"));
        assert_eq!(args.log_format, LogFormat::Text);
        assert_eq!(args.lease_duration, Duration::from_secs(15));
        assert_eq!(args.lease_renew_interval, Duration::from_secs(3));
        assert_eq!(args.reload_interval, Duration::from_secs(2));
        assert_eq!(args.keepalive_interval, Duration::from_secs(20));
        assert_eq!(args.max_held_request_mib, 64);
    }

    fn parse(flags: &[&str]) -> Result<Args, clap::Error> {
        let base = ["scale-agent", "--replica-id", "r", "--namespace", "n"];
        Args::try_parse_from(base.iter().chain(flags))
    }

    #[test]
    fn durations_take_units() {
        let args = parse(&[
            "--lease-duration=1m30s",
            "--lease-renew-interval=500ms",
            "--reload-interval=2s",
            "--keepalive-interval=10",
        ])
        .expect("parses");
        assert_eq!(args.lease_duration, Duration::from_secs(90));
        assert_eq!(args.lease_renew_interval, Duration::from_millis(500));
        assert_eq!(args.reload_interval, Duration::from_secs(2));
        // A bare number is seconds.
        assert_eq!(args.keepalive_interval, Duration::from_secs(10));
    }

    #[test]
    fn bad_durations_are_refused_with_the_flag_named() {
        for flag in [
            "--lease-duration=0s",
            "--keepalive-interval=0",
            "--reload-interval=2x",
            "--lease-renew-interval=",
        ] {
            let err = parse(&[flag]).expect_err(flag).to_string();
            let name = flag.split('=').next().unwrap_or_default();
            assert!(err.contains(name), "{flag}: {err}");
        }
        // The old spellings are gone, not silently ignored.
        assert!(parse(&["--lease-duration-seconds=15"]).is_err());
    }
}

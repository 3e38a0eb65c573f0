//! Command-line flags of the operator.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Parser, ValueEnum};
pub use scale_agent_runtime::LogFormat;

use crate::children::IssuerRef;

fn parse_issuer(s: &str) -> Result<IssuerRef, String> {
    s.parse()
}

/// How an allow-list flag is read, the same for every such flag: patterns
/// (exact names, or prefixes ending in `*`) separated by commas, in one value
/// or several (`--allowed-images=a,b --allowed-images=c`), or from its
/// environment variable. Used as `#[arg(allow_list())]`.
trait AllowList {
    fn allow_list(self) -> Self;
}

impl AllowList for clap::Arg {
    fn allow_list(self) -> Self {
        self.value_name("PATTERN").value_delimiter(',')
    }
}

/// Reconciles AgentShards (scaleagent.dev/v1alpha1) into agent Deployments, keeps
/// account names unique across every shard in the cluster, and serves the admission
/// webhook that warns about (or denies) a claim on a name another shard holds.
#[derive(Debug, Clone, Parser)]
#[command(name = "scale-agent-operator", version, about, long_about)]
pub struct Args {
    /// The hub address (host:port) for shards that leave spec.hub out.
    #[arg(long, env = "SCALE_AGENT_DEFAULT_HUB", value_name = "HOST:PORT")]
    pub default_hub: Option<String>,

    /// The TLS Secret (ca.crt, tls.crt, tls.key; in the shard's namespace) agents use to
    /// reach the default hub, for shards that leave spec.hub out. `{shard}` is replaced
    /// by the shard's name: each shard's client certificate names its shard.
    #[arg(
        long,
        env = "SCALE_AGENT_DEFAULT_HUB_TLS_SECRET",
        value_name = "NAME",
        requires = "default_hub"
    )]
    pub default_hub_tls_secret: Option<String>,

    /// The agent image for shards that leave spec.image out. Shards may name only this
    /// image, and those --allowed-images allows.
    #[arg(long, env = "SCALE_AGENT_DEFAULT_IMAGE", value_name = "IMAGE")]
    pub default_image: Option<String>,

    /// Images shards may name in spec.image besides --default-image: exact names, or
    /// prefixes ending in `*` (`registry.example.com/scale-agent:*`); `*` allows any.
    /// Whoever may create an AgentShard picks the image of pods the operator creates.
    #[arg(long, env = "SCALE_AGENT_ALLOWED_IMAGES", allow_list())]
    pub allowed_images: Vec<String>,

    /// ServiceAccounts shards may name in spec.serviceAccountName besides their own
    /// `<shard>-agent` and --default-service-account: exact names or `prefix*`.
    #[arg(long, env = "SCALE_AGENT_ALLOWED_SERVICE_ACCOUNTS", allow_list())]
    pub allowed_service_accounts: Vec<String>,

    /// Issue each shard's agent client certificate from this CA (a Secret
    /// `namespace/name` with tls.crt and a PKCS#8 tls.key; ca.crt, when present, is what
    /// agents verify the hub with, else the CA itself), into the Secret
    /// `<shard>-agent-tls` the operator owns, for shards without spec.hub.tlsSecretRef.
    #[arg(
        long,
        env = "SCALE_AGENT_AGENT_CA_SECRET",
        value_name = "NAMESPACE/NAME",
        conflicts_with = "agent_cert_issuer"
    )]
    pub agent_ca_secret: Option<String>,

    /// Have cert-manager issue each shard's agent client certificate instead: a
    /// Certificate `<shard>-agent-tls` from this issuer (`ClusterIssuer/<name>`, or
    /// `Issuer/<name>` in the shard's namespace).
    #[arg(
        long,
        env = "SCALE_AGENT_AGENT_CERT_ISSUER",
        value_name = "KIND/NAME",
        value_parser = parse_issuer
    )]
    pub agent_cert_issuer: Option<IssuerRef>,

    /// Lifetime of the agents' client certificates (`24h`, `30m`); renewed at two thirds
    /// of it, and picked up by running agents without a restart.
    #[arg(
        long,
        value_name = "DURATION",
        default_value = "24h",
        value_parser = scale_agent_runtime::parse_duration
    )]
    pub agent_cert_lifetime: Duration,

    /// What the webhook does with a claim on a name another shard holds: allow it with a
    /// warning naming the owner, or reject it with the same message.
    #[arg(long, value_enum, default_value_t = WebhookMode::Warn)]
    pub webhook_mode: WebhookMode,

    /// Address the HTTPS admission webhook listens on.
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:9443")]
    pub webhook_addr: SocketAddr,

    /// Call the webhook at this URL (clientConfig.url) instead of through a Service; for
    /// API servers outside the cluster, like the test control plane
    /// (https://127.0.0.1:<port>/validate).
    #[arg(long, value_name = "URL")]
    pub webhook_url: Option<String>,

    /// The Service (namespace/name, port 443) the API server calls the webhook through,
    /// when --webhook-url is not given.
    #[arg(
        long,
        value_name = "NAMESPACE/NAME",
        default_value = "scale-agent-system/scale-agent-operator-webhook"
    )]
    pub webhook_service: String,

    /// Name of the ValidatingWebhookConfiguration the operator keeps current (its
    /// caBundle, its URL). Empty: do not register the webhook (it is still served).
    #[arg(long, value_name = "NAME", default_value = "scale-agent-operator")]
    pub webhook_config_name: String,

    /// Address of the admin HTTP server: /metrics, /healthz, /readyz.
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:8080")]
    pub admin_addr: SocketAddr,

    /// Namespace of the leader-election Lease and of the webhook's certificate Secret.
    #[arg(
        long,
        env = "POD_NAMESPACE",
        value_name = "NAMESPACE",
        default_value = "scale-agent-system"
    )]
    pub leader_election_namespace: String,

    /// Name of the leader-election Lease.
    #[arg(long, value_name = "NAME", default_value = "scale-agent-operator")]
    pub leader_election_name: String,

    /// This replica's identity in the Lease (the pod name in a cluster).
    #[arg(long, env = "POD_NAME", value_name = "ID")]
    pub identity: Option<String>,

    /// How long a leader's Lease lasts without renewal before another replica may take
    /// it (`15s`, `1m`; at least 2s). `--lease-duration-seconds=N` is still read, as N
    /// seconds.
    #[arg(
        long,
        value_name = "DURATION",
        default_value = "15s",
        value_parser = scale_agent_runtime::parse_duration,
        alias = "lease-duration-seconds"
    )]
    pub lease_duration: Duration,

    /// The ServiceAccount of agent pods of shards that leave spec.serviceAccountName out.
    /// Empty: the operator creates `<shard>-agent` with only the access agents need
    /// (their Leases, reading pods).
    #[arg(long, value_name = "NAME", default_value = "")]
    pub default_service_account: String,

    /// Kubeconfig features accounts may use, comma-separated: `exec` (exec and
    /// auth-provider plugins: the agent runs a program), `files` (tokenFile,
    /// client-certificate, client-key, certificate-authority paths: the agent reads its
    /// own files), `insecure-tls` (insecure-skip-tls-verify), `proxy` (proxy-url). None by
    /// default: an account whose kubeconfig uses one is Invalid (KubeconfigRefused), and
    /// the agents refuse it too.
    #[arg(long, value_name = "FEATURES", value_delimiter = ',')]
    pub allow_kubeconfig: Vec<scale_agent_crds::KubeconfigFeature>,

    /// Log line format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Log line format of the agents the operator runs (their `--log-format`).
    #[arg(
        long,
        env = "SCALE_AGENT_AGENT_LOG_FORMAT",
        value_enum,
        value_name = "FORMAT",
        default_value_t = LogFormat::Text
    )]
    pub agent_log_format: LogFormat,
}

/// What the webhook does with a claim on a name another shard holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum WebhookMode {
    /// Allow the request, with an admission warning naming the owner (kubectl prints it).
    Warn,
    /// Reject the request with a message naming the owner.
    Deny,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    scale_agent_runtime::flags_are_consistent!(Args);

    #[test]
    fn defaults() {
        let a = Args::try_parse_from(["scale-agent-operator"]).expect("parses");
        assert_eq!(a.webhook_mode, WebhookMode::Warn);
        assert_eq!(a.lease_duration, Duration::from_secs(15));
        assert!(a.default_hub.is_none());
        assert!(a.allow_kubeconfig.is_empty());
        let a = Args::try_parse_from(["scale-agent-operator", "--allow-kubeconfig=exec,files"])
            .expect("parses");
        assert_eq!(
            a.allow_kubeconfig,
            [
                scale_agent_crds::KubeconfigFeature::Exec,
                scale_agent_crds::KubeconfigFeature::Files
            ]
        );
        assert!(
            Args::try_parse_from(["scale-agent-operator", "--allow-kubeconfig=shell"]).is_err()
        );
        assert_eq!(a.agent_cert_lifetime, Duration::from_secs(86_400));
        assert!(a.allowed_images.is_empty() && a.agent_ca_secret.is_none());
        let a = Args::try_parse_from([
            "scale-agent-operator",
            "--webhook-mode",
            "deny",
            "--webhook-url",
            "https://127.0.0.1:1/validate",
        ])
        .expect("parses");
        assert_eq!(a.webhook_mode, WebhookMode::Deny);
    }

    #[test]
    fn certificate_and_policy_flags() {
        let a = Args::try_parse_from([
            "scale-agent-operator",
            "--agent-ca-secret=scale-agent-system/scale-agent-ca",
            "--agent-cert-lifetime=90s",
            "--allowed-images=reg/a:*,reg/b:1",
        ])
        .expect("parses");
        assert_eq!(a.agent_cert_lifetime, Duration::from_secs(90));
        assert_eq!(a.allowed_images, ["reg/a:*", "reg/b:1"]);
        let both = Args::try_parse_from([
            "scale-agent-operator",
            "--agent-ca-secret=ns/ca",
            "--agent-cert-issuer=ClusterIssuer/ca",
        ]);
        assert!(both.is_err(), "a CA and an issuer exclude each other");
        assert!(
            Args::try_parse_from(["scale-agent-operator", "--agent-cert-issuer=Foo/x"]).is_err()
        );
    }

    #[test]
    fn allow_lists_take_commas_repeats_and_their_environment_variable() {
        for (flag, env) in [
            ("allowed-images", "SCALE_AGENT_ALLOWED_IMAGES"),
            (
                "allowed-service-accounts",
                "SCALE_AGENT_ALLOWED_SERVICE_ACCOUNTS",
            ),
        ] {
            let a = Args::try_parse_from([
                "scale-agent-operator".to_owned(),
                format!("--{flag}=a*,b"),
                format!("--{flag}"),
                "c".to_owned(),
            ])
            .expect("parses");
            let got = match flag {
                "allowed-images" => a.allowed_images,
                _ => a.allowed_service_accounts,
            };
            assert_eq!(got, ["a*", "b", "c"], "--{flag}");
            let command = Args::command();
            let arg = command
                .get_arguments()
                .find(|arg| arg.get_long() == Some(flag))
                .expect("the flag exists");
            assert_eq!(
                arg.get_env().and_then(|e| e.to_str()),
                Some(env),
                "--{flag}"
            );
            assert_eq!(
                arg.get_value_names()
                    .map(|names| names.iter().map(|n| n.as_str()).collect::<Vec<_>>()),
                Some(vec!["PATTERN"]),
                "--{flag}"
            );
        }
    }

    #[test]
    fn lease_duration_in_the_duration_style_and_the_old_spelling() {
        let parse = |flag: &str| {
            Args::try_parse_from(["scale-agent-operator", flag]).map(|a| a.lease_duration)
        };
        assert_eq!(
            parse("--lease-duration=1m30s").ok(),
            Some(Duration::from_secs(90))
        );
        assert_eq!(
            parse("--lease-duration=500ms").ok(),
            Some(Duration::from_millis(500))
        );
        assert_eq!(
            parse("--lease-duration-seconds=8").ok(),
            Some(Duration::from_secs(8))
        );
        assert!(parse("--lease-duration=soon").is_err());
    }
}

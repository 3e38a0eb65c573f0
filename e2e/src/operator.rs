//! Running the operator against the test control plane, as `just up` and the operator's
//! end-to-end tests do: the real `scale-agent-operator` binary as a [`Proc`], its webhook
//! called by the management kube-apiserver at `https://127.0.0.1:<port>/validate`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use crate::controlplane::http_get;
use crate::ports::{free_port, start_on_free_ports};
use crate::process::{Proc, files_under, tail, wait_ready};
use crate::{ControlPlane, Error, Result, metrics, workspace_binary};

/// The namespace of the operator's Lease and webhook certificate in the test environment.
pub const NAMESPACE: &str = "scale-agent-system";

/// How to start one operator.
#[derive(Debug, Clone)]
pub struct OperatorOptions {
    /// Component name (log file `logs/<name>.log`) and Lease identity.
    pub name: String,
    /// `warn` or `deny`.
    pub webhook_mode: String,
    /// `--default-hub`.
    pub default_hub: Option<String>,
    /// `--default-image`.
    pub default_image: Option<String>,
    /// `--lease-duration`, in seconds.
    pub lease_duration_seconds: u32,
    /// Name of the ValidatingWebhookConfiguration (and of the Lease); operators that
    /// share it share leadership.
    pub instance: String,
    /// Register (and keep current) the ValidatingWebhookConfiguration; a standby started
    /// next to a running operator leaves it pointing at the first one.
    pub register_webhook: bool,
    /// The kubeconfig the operator uses; the management cluster's admin one when `None`.
    pub kubeconfig: Option<PathBuf>,
    /// The folder whose `logs/` gets its log: a test's folder for an operator one test
    /// starts; the control plane's run folder when `None`.
    pub run_dir: Option<PathBuf>,
    /// More flags.
    pub extra_args: Vec<String>,
}

impl Default for OperatorOptions {
    fn default() -> Self {
        Self {
            name: "operator".into(),
            webhook_mode: "warn".into(),
            default_hub: Some("hub.scale-agent.invalid:443".into()),
            default_image: Some("scale-agent:dev".into()),
            lease_duration_seconds: 10,
            instance: "scale-agent-operator".into(),
            register_webhook: true,
            kubeconfig: None,
            run_dir: None,
            extra_args: Vec::new(),
        }
    }
}

/// A running operator. Dropping it stops it (SIGTERM: it gives its Lease up).
#[derive(Debug)]
pub struct Operator {
    proc: Proc,
    /// Port of /metrics, /healthz, /readyz.
    pub admin_port: u16,
    /// Port of the HTTPS webhook.
    pub webhook_port: u16,
    /// The options it was started with.
    pub options: OperatorOptions,
}

/// The operator binary: `$SCALE_AGENT_OPERATOR_BIN`, else this workspace's (see
/// [`workspace_binary`]). Warns when it is older than its sources.
pub fn binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("SCALE_AGENT_OPERATOR_BIN") {
        return Ok(PathBuf::from(p));
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let bin = workspace_binary("scale-agent-operator")?;
    let Ok(built) = std::fs::metadata(&bin).and_then(|m| m.modified()) else {
        return Ok(bin);
    };
    let newest = newest_mtime(&[root.join("operator/src"), root.join("crds/src")]);
    if newest.is_some_and(|n| n > built) {
        // Still usable; but say so, since the tests then run yesterday's operator.
        eprintln!(
            "warning: {} is older than the operator's sources; run `cargo build -p scale-agent-operator`",
            bin.display()
        );
    }
    Ok(bin)
}

fn newest_mtime(dirs: &[PathBuf]) -> Option<SystemTime> {
    dirs.iter()
        .flat_map(|d| files_under(d))
        .filter_map(|f| f.metadata().and_then(|m| m.modified()).ok())
        .max()
}

/// Creates `namespace` unless it exists.
pub fn ensure_namespace(cp: &ControlPlane, namespace: &str) -> Result<()> {
    cp.apply(&format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {namespace}\n"
    ))?;
    Ok(())
}

impl Operator {
    /// Starts the operator against the management cluster (as cluster admin) and waits
    /// until it answers `/readyz` (its shard cache is synced and the webhook serves).
    pub async fn start(cp: &ControlPlane, options: OperatorOptions) -> Result<Operator> {
        ensure_namespace(cp, NAMESPACE)?;
        start_on_free_ports(&options.name.clone(), || {
            Operator::start_on_free_ports(cp, options.clone())
        })
        .await
    }

    async fn start_on_free_ports(cp: &ControlPlane, options: OperatorOptions) -> Result<Operator> {
        let admin_port = free_port()?;
        let webhook_port = free_port()?;
        let mut cmd = Command::new(binary()?);
        cmd.env(
            "KUBECONFIG",
            options
                .kubeconfig
                .as_deref()
                .unwrap_or(&cp.management.kubeconfig),
        )
        .env(
            "RUST_LOG",
            std::env::var("OPERATOR_LOG")
                .unwrap_or_else(|_| "info,scale_agent_operator=debug,kube=warn".into()),
        )
        .arg(format!("--webhook-mode={}", options.webhook_mode))
        .arg(format!("--webhook-addr=127.0.0.1:{webhook_port}"))
        .arg(format!(
            "--webhook-url=https://127.0.0.1:{webhook_port}/validate"
        ))
        .arg(format!(
            "--webhook-config-name={}",
            if options.register_webhook {
                options.instance.as_str()
            } else {
                ""
            }
        ))
        .arg(format!("--admin-addr=127.0.0.1:{admin_port}"))
        .arg(format!("--leader-election-namespace={NAMESPACE}"))
        .arg(format!("--leader-election-name={}", options.instance))
        .arg(format!("--identity={}", options.name))
        .arg(format!(
            "--lease-duration={}s",
            options.lease_duration_seconds
        ))
        .arg("--log-format=json")
        .arg(format!("--allow-kubeconfig={}", crate::kubeconfig::NEEDS));
        if let Some(hub) = &options.default_hub {
            cmd.arg(format!("--default-hub={hub}"));
        }
        if let Some(image) = &options.default_image {
            cmd.arg(format!("--default-image={image}"));
        }
        cmd.args(&options.extra_args);
        let run_dir = options.run_dir.as_deref().unwrap_or(&cp.run_dir);
        let proc = Proc::spawn(&options.name, cmd, run_dir)?;
        let mut op = Operator {
            proc,
            admin_port,
            webhook_port,
            options,
        };
        op.wait_ready(Duration::from_secs(60)).await?;
        Ok(op)
    }

    async fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let port = self.admin_port;
        wait_ready(
            &mut self.proc,
            timeout,
            Duration::from_millis(200),
            || async move {
                http_get(port, "/readyz")
                    .await
                    .is_ok_and(|b| b.lines().next().is_some_and(|l| l.contains(" 200")))
            },
        )
        .await
    }

    /// The operator's log file.
    pub fn log(&self) -> &Path {
        self.proc.log()
    }

    /// The last `lines` lines of its log.
    pub fn tail(&self, lines: usize) -> String {
        tail(self.proc.log(), lines)
    }

    /// The process (to signal or stop it).
    pub fn process(&mut self) -> &mut Proc {
        &mut self.proc
    }

    /// Its `/metrics` text.
    pub async fn metrics(&self) -> Result<String> {
        metrics::scrape(&format!("127.0.0.1:{}", self.admin_port)).await
    }

    /// The value of metric `series` (name with labels, as [`metrics::sample`] reads it);
    /// an error when it is not exposed, so that `== 0` checks cannot pass on a renamed
    /// metric.
    pub async fn metric(&self, series: &str) -> Result<f64> {
        metrics::require(&self.metrics().await?, series)
    }

    /// Whether it holds the leader Lease (its `leader` gauge).
    pub async fn is_leader(&self) -> bool {
        self.metric("scale_agent_operator_leader")
            .await
            .is_ok_and(|v| v == 1.0)
    }
}

/// Installs the operator's RBAC from `rbac_yaml` (manifests/operator/rbac.yaml) and
/// writes a kubeconfig, `<run_dir>/kubeconfigs/scale-agent-operator.kubeconfig`, that
/// authenticates as its ServiceAccount with a token: the operator then runs with exactly
/// the permissions a real cluster gives it.
pub fn service_account_kubeconfig(cp: &ControlPlane, rbac_yaml: &Path) -> Result<PathBuf> {
    ensure_namespace(cp, NAMESPACE)?;
    cp.kubectl(["apply", "-f", &rbac_yaml.display().to_string()])?;
    let token = cp.kubectl([
        "create",
        "token",
        "scale-agent-operator",
        "-n",
        NAMESPACE,
        "--duration=4h",
    ])?;
    let ca = base64_std(cp.pki.ca_pem.as_bytes());
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: management\n  cluster:\n    server: {}\n    certificate-authority-data: {ca}\nusers:\n- name: scale-agent-operator\n  user:\n    token: {}\ncontexts:\n- name: operator\n  context:\n    cluster: management\n    user: scale-agent-operator\ncurrent-context: operator\n",
        cp.management.server,
        token.trim()
    );
    let path = cp
        .run_dir
        .join("kubeconfigs")
        .join("scale-agent-operator.kubeconfig");
    crate::kubeconfig::write(&path, &text)?;
    Ok(path)
}

/// Applies the examples of `manifests/examples/` (`dir`) for `just up`: first a kubeconfig
/// Secret per account, built from the target clusters' kubeconfigs
/// (`kc-<target>` in each example namespace), then the shards.
pub fn apply_examples(cp: &ControlPlane, dir: &Path) -> Result<()> {
    let namespaces = ["spinnaker", "team-b"];
    for ns in namespaces {
        ensure_namespace(cp, ns)?;
        for t in &cp.targets {
            cp.kubeconfig_secret(ns, &format!("kc-{}", t.name), &t.kubeconfig)?;
        }
    }
    // Shards in file order: the conflicting pair's owner is applied (and so created) first.
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io("reading", dir, e))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    for f in files {
        cp.kubectl(["apply", "-f", &f.display().to_string()])?;
        // creationTimestamp has one-second resolution: keep the examples' ages apart.
        std::thread::sleep(Duration::from_millis(1100));
    }
    Ok(())
}

/// For `just up`: starts the operator (webhook in `warn` mode, agents pointed at `hub`
/// when given, their client certificates issued from the CA Secret `agent_ca`
/// (`namespace/name`) when given), applies the examples in `examples` with their
/// kubeconfig Secrets, and waits until every example shard has a status, so `kubectl
/// get ash -A` shows them (one with a conflict). Drop the returned operator before the
/// control plane.
pub async fn up(
    cp: &ControlPlane,
    examples: &Path,
    hub: Option<&str>,
    agent_ca: Option<&str>,
) -> Result<Operator> {
    let mut options = OperatorOptions {
        lease_duration_seconds: 15,
        ..OperatorOptions::default()
    };
    if let Some(hub) = hub {
        options.default_hub = Some(hub.to_owned());
    }
    if let Some(secret) = agent_ca {
        options
            .extra_args
            .push(format!("--agent-ca-secret={secret}"));
    }
    let op = Operator::start(cp, options).await?;
    tracing::info!(log = %op.log().display(), "operator running; applying {}", examples.display());
    apply_examples(cp, examples)?;
    crate::wait::until(
        "every example AgentShard to have a status",
        Duration::from_secs(90),
        || async {
            let out = cp
                .kubectl([
                    "get",
                    "ash",
                    "-A",
                    "-o",
                    "jsonpath={range .items[*]}{.status.observedGeneration}{\"\\n\"}{end}",
                ])
                .ok()?;
            // Until the operator writes one, the API server shows the CRD's default
            // status, observedGeneration 0.
            let unobserved = scale_agent_crds::UNOBSERVED_GENERATION.to_string();
            let lines: Vec<&str> = out.lines().map(str::trim).collect();
            (!lines.is_empty() && lines.iter().all(|l| !l.is_empty() && *l != unobserved))
                .then_some(())
        },
    )
    .await?;
    Ok(op)
}

fn base64_std(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

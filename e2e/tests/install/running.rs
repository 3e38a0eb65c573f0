//! The operator and hub of `manifests/install`, running as their ServiceAccounts with the
//! flags of their installed Deployments (see `kubelet`), and the Secrets the hub needs,
//! made as docs/install.md has users make them.

use std::time::Duration;

use anyhow::{Context, ensure};
use scale_agent_e2e::controlplane::http_get;
use scale_agent_e2e::process::tail;
use scale_agent_e2e::{Env, wait};

use crate::cluster::secret;
use crate::kubelet::{self, Overrides, PodProcess};

/// The namespace `manifests/install` installs into.
pub const NS: &str = "scale-agent-system";

/// The installed operator and hub, running.
pub struct Installed {
    pub hub: PodProcess,
    pub operator: PodProcess,
    /// The bearer token of the hub's HTTP API.
    pub token: String,
    _dir: tempfile::TempDir,
}

impl Installed {
    /// Makes the hub's Secrets and the agents' CA, then starts the hub and the operator and waits until the
    /// hub has listed AgentShards and the operator is ready, leads, and has registered its
    /// webhook: each only possible with the permissions of its ServiceAccount.
    pub async fn start(env: &Env) -> anyhow::Result<Installed> {
        let cp = &env.cp;
        let dir = tempfile::tempdir()?;
        // A serving certificate (here also for the loopback address the stand-in listens
        // on) with the CA of the agents' client certificates, and the API token.
        let serving = cp.pki.issue_server(
            "install-hub",
            &["127.0.0.1", "scale-agent-hub-grpc.scale-agent-system.svc"],
        )?;
        secret(
            env,
            NS,
            "scale-agent-hub-tls",
            &[
                ("tls.crt", serving.cert_pem.as_str()),
                ("tls.key", serving.key_pem.as_str()),
                ("ca.crt", cp.pki.ca_pem.as_str()),
            ],
        )?;
        // The CA itself, which the operator issues agents' certificates from.
        let ca_key = std::fs::read_to_string(&cp.pki.ca_key_file)?;
        secret(
            env,
            NS,
            "scale-agent-ca",
            &[
                ("tls.crt", cp.pki.ca_pem.as_str()),
                ("tls.key", ca_key.as_str()),
            ],
        )?;
        let token = format!("install-test-{}", std::process::id());
        secret(
            env,
            NS,
            "scale-agent-hub-api-token",
            &[("token", token.as_str())],
        )?;
        // The Kubernetes API's tokens file, and the token Clouddriver's kubeconfig gets.
        let kube_api_token = format!("install-kube-api-{}", std::process::id());
        secret(
            env,
            NS,
            "scale-agent-hub-kube-api-tokens",
            &[
                ("tokens", format!("{kube_api_token} *").as_str()),
                ("clouddriver", kube_api_token.as_str()),
            ],
        )?;

        let hub = kubelet::run(cp, NS, "scale-agent-hub", dir.path(), |_| Overrides {
            env: Vec::new(),
            // A dropped account waits 600 s by default; the test watches one go.
            args: vec!["--grace-period=3s".into()],
        })
        .await
        .context("starting the installed hub")?;
        let hub_log = hub.proc.log().to_path_buf();
        wait::until(
            "the hub to list AgentShards as its ServiceAccount",
            Duration::from_secs(60),
            || async {
                std::fs::read_to_string(&hub_log)
                    .ok()
                    .filter(|l| l.contains("account ownership is enforced"))
            },
        )
        .await
        .with_context(|| tail(&hub_log, 30))?;

        let hub_grpc = hub.ports["grpc"];
        let operator = kubelet::run(cp, NS, "scale-agent-operator", dir.path(), |ports| {
            Overrides {
                // Cluster DNS would resolve the hub's Service; the API server would call
                // the webhook through its Service.
                env: vec![(
                    "SCALE_AGENT_DEFAULT_HUB".into(),
                    format!("127.0.0.1:{hub_grpc}"),
                )],
                args: vec![
                    format!(
                        "--webhook-url=https://127.0.0.1:{}/validate",
                        ports["webhook"]
                    ),
                    format!("--allow-kubeconfig={}", scale_agent_e2e::kubeconfig::NEEDS),
                ],
            }
        })
        .await
        .context("starting the installed operator")?;
        let installed = Installed {
            hub,
            operator,
            token,
            _dir: dir,
        };
        let admin = installed.operator.ports["admin"];
        wait::until(
            "the operator to be ready as its ServiceAccount",
            Duration::from_secs(60),
            || async {
                http_get(admin, "/readyz")
                    .await
                    .ok()
                    .filter(|r| r.contains(" 200 "))
            },
        )
        .await
        .with_context(|| installed.diagnostics())?;
        wait::until("the operator to lead", Duration::from_secs(30), || async {
            let m = http_get(admin, "/metrics").await.ok()?;
            m.lines()
                .any(|l| l == "scale_agent_operator_leader 1")
                .then_some(())
        })
        .await
        .with_context(|| installed.diagnostics())?;
        let webhook = cp.kubectl([
            "get",
            "validatingwebhookconfiguration",
            "scale-agent-operator",
            "-o",
            "json",
        ])?;
        ensure!(
            webhook.contains(&format!(
                "https://127.0.0.1:{}/validate",
                installed.operator.ports["webhook"]
            )),
            "the operator did not register its webhook: {webhook}"
        );
        Ok(installed)
    }

    /// `127.0.0.1:<port>` of the hub's gRPC endpoint.
    pub fn hub_grpc(&self) -> String {
        format!("127.0.0.1:{}", self.hub.ports["grpc"])
    }

    /// `127.0.0.1:<port>` of the hub's HTTP API and metrics.
    pub fn hub_http(&self) -> String {
        format!("127.0.0.1:{}", self.hub.ports["http"])
    }

    /// `127.0.0.1:<port>` of the operator's admin server.
    pub fn operator_admin(&self) -> String {
        format!("127.0.0.1:{}", self.operator.ports["admin"])
    }

    /// The last lines of both logs, for a failure message.
    pub fn diagnostics(&self) -> String {
        format!(
            "operator log:\n{}\nhub log:\n{}",
            tail(self.operator.proc.log(), 30),
            tail(self.hub.proc.log(), 30)
        )
    }

    /// `GET` of the hub's HTTP API with its token; the body.
    pub async fn hub_api(&self, path: &str) -> anyhow::Result<String> {
        Ok(reqwest::Client::new()
            .get(format!("http://{}{path}", self.hub_http()))
            .bearer_auth(&self.token)
            .send()
            .await?
            .text()
            .await?)
    }
}

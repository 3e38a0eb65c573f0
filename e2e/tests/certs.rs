//! Certificates come by themselves: the operator, given a CA (`--agent-ca-secret`, as
//! `just up` gives it the agents' CA), issues every shard's agents a short-lived client
//! certificate naming the shard; agents reach the hub through nginx (which verifies the
//! certificate and forwards it; the hub accepts an account only from the shard that owns
//! it), and pick up each renewal without a restart and without losing an event. A TLS
//! Secret a shard names itself is checked like a kubeconfig Secret; with
//! `--agent-cert-issuer` the operator writes a cert-manager Certificate instead.
//!
//! The tests run one after another: the last one puts another operator in place.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use scale_agent_crds::{AccountState, AgentShard, ShardRef, condition_type, shard_identity_uri};
use scale_agent_e2e::converge::{configmaps, converge, put_cm};
use scale_agent_e2e::hubstack::HubStack;
use scale_agent_e2e::operator::{NAMESPACE, Operator, OperatorOptions};
use scale_agent_e2e::pods::PodRunner;
use scale_agent_e2e::runner::{self, Fixture};
use scale_agent_e2e::shards::{configmap_shard, wait_shard};
use scale_agent_e2e::{Env, Options, wait};

/// The Secret in the operator's namespace holding the run's CA.
const CA_SECRET: &str = "agent-ca";
/// A lifetime short enough to see renewals within a test (renewed every ~17 s).
const LIFETIME: &str = "40s";

/// The control plane, the hub behind nginx (as `just up` runs them), and the operator
/// issuing certificates.
struct CertsEnv {
    // Field order is drop order: the operator, then the load balancer and hub, then the
    // control plane.
    op: tokio::sync::Mutex<Option<Operator>>,
    stack: HubStack,
    env: Env,
}

impl Fixture for CertsEnv {
    fn env(&self) -> &Env {
        &self.env
    }

    async fn shared_logs(&self) -> Vec<PathBuf> {
        let mut logs = vec![self.hub_log()];
        if let Some(op) = self.op.lock().await.as_ref() {
            logs.push(op.log().to_path_buf());
        }
        logs
    }
}

impl CertsEnv {
    fn hub_log(&self) -> PathBuf {
        self.env.cp.run_dir.join("logs/hub.log")
    }

    fn operator_options(&self, name: &str, tls: &[String]) -> OperatorOptions {
        let mut extra_args = tls.to_vec();
        extra_args.push(format!("--agent-cert-lifetime={LIFETIME}"));
        OperatorOptions {
            name: name.into(),
            default_hub: Some(self.stack.nginx.address.clone()),
            extra_args,
            ..OperatorOptions::default()
        }
    }
}

async fn start() -> anyhow::Result<CertsEnv> {
    let env = Env::start(Options::default()).await?;
    let cp = &env.cp;
    let stack = HubStack::start(cp, &cp.run_dir, "30s", None).await?;
    scale_agent_e2e::operator::ensure_namespace(cp, NAMESPACE)?;
    cp.apply(&stack.agents.ca_secret_yaml(NAMESPACE, CA_SECRET)?)?;
    let mut fixture = CertsEnv {
        op: tokio::sync::Mutex::new(None),
        stack,
        env,
    };
    let options = fixture.operator_options(
        "operator",
        &[format!("--agent-ca-secret={NAMESPACE}/{CA_SECRET}")],
    );
    let op = Operator::start(&fixture.env.cp, options).await?;
    fixture.op = tokio::sync::Mutex::new(Some(op));
    Ok(fixture)
}

fn main() {
    runner::run(
        Some(1),
        start(),
        vec![
            (
                "a_shard_in_a_fresh_namespace_streams_through_nginx_and_renews_without_losing_an_event",
                |e| Box::pin(fresh_namespace(e)),
            ),
            (
                "tls_secret_problems_are_reported_once_and_nothing_rolls_out",
                |e| Box::pin(tls_secret_problems(e)),
            ),
            (
                "with_an_issuer_the_operator_writes_a_cert_manager_certificate",
                |e| Box::pin(cert_manager(e)),
            ),
            (
                "the_json_api_refuses_an_anonymous_operation_as_just_up_runs_it",
                |e| Box::pin(anonymous_operation(e)),
            ),
            ("an_agent_certificate_logs_in_to_no_api_server", |e| {
                Box::pin(agent_certificate_login(e))
            }),
        ],
    );
}

fn ready(s: &AgentShard) -> bool {
    s.is_condition_true(condition_type::READY)
}

fn config_valid_reason(s: &AgentShard) -> Option<String> {
    s.condition(condition_type::CONFIG_VALID)
        .map(|c| format!("{}/{}", c.status, c.reason))
}

async fn secret(env: &Env, ns: &str, name: &str) -> anyhow::Result<Option<Secret>> {
    Ok(Api::<Secret>::namespaced(env.client().await?, ns)
        .get_opt(name)
        .await?)
}

/// How many times the Events with `reason` about `name` happened (their series counted).
fn event_count(env: &Env, ns: &str, name: &str, reason: &str) -> anyhow::Result<u64> {
    let out = env.cp.kubectl([
        "get",
        "events",
        "-n",
        ns,
        "--field-selector",
        &format!("reason={reason},involvedObject.name={name}"),
        "-o",
        "jsonpath={range .items[*]}{.count}{\" \"}{.series.count}{\"\\n\"}{end}",
    ])?;
    Ok(out
        .lines()
        .map(|l| {
            l.split_whitespace()
                .filter_map(|n| n.parse::<u64>().ok())
                .max()
                .unwrap_or(1)
        })
        .sum())
}

async fn fresh_namespace(env: Arc<CertsEnv>) -> anyhow::Result<()> {
    let ns = env.env.namespace("certs-fresh").await?;
    env.env.kubeconfig_secret(&ns, "kc")?;
    let pods = PodRunner::for_test(&env.env, &ns).await?;
    let account = format!("{ns}-a");
    let api = configmaps(&env.env.cp.management, &ns).await?;
    put_cm(&api, "before", "0").await?;
    // No certificate of its own, no hub of its own: the operator's defaults.
    env.env
        .apply(&configmap_shard(&ns, "fresh", &[&account], ""))?;
    let s = wait_shard(&env.env, "fresh Ready", &ns, "fresh", 120, ready).await?;
    ensure!(
        s.account_status(&account).map(|a| a.state) == Some(AccountState::Active),
        "{:?}",
        s.status
    );
    // The certificate is the operator's, owned by the shard, and names it (the hub
    // accepted the account from this shard through nginx's forwarded certificate).
    let tls = secret(&env.env, &ns, "fresh-agent-tls")
        .await?
        .context("the issued Secret")?;
    ensure!(
        tls.metadata
            .owner_references
            .iter()
            .flatten()
            .any(|o| o.kind == "AgentShard" && o.name == "fresh" && o.controller == Some(true)),
        "owner: {:?}",
        tls.metadata.owner_references
    );
    converge(&env.stack.hub, &account, &api, &ns, Duration::from_secs(30)).await?;
    let pod = pods.running().into_iter().next().context("an agent runs")?;
    let pid = pods.pid(&pod).context("agent pid")?;
    let cert = |s: &Secret| {
        s.data
            .as_ref()
            .and_then(|d| d.get("tls.crt"))
            .map(|b| b.0.clone())
            .unwrap_or_default()
    };

    // Keep changing the cluster while the certificate renews twice.
    let mut seen = BTreeSet::from([cert(&tls)]);
    let started = Instant::now();
    let mut n = 0u32;
    while seen.len() < 3 {
        ensure!(
            started.elapsed() < Duration::from_secs(90),
            "the certificate renewed {} times in 90s",
            seen.len() - 1
        );
        put_cm(&api, &format!("during-{}", n % 20), &n.to_string()).await?;
        n += 1;
        if let Some(s) = secret(&env.env, &ns, "fresh-agent-tls").await? {
            seen.insert(cert(&s));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    eprintln!(
        "renewed twice in {:.1?}, {n} ConfigMap writes meanwhile",
        started.elapsed()
    );
    // Let the agent pick up the last one, then check nothing was lost.
    tokio::time::sleep(Duration::from_secs(3)).await;
    put_cm(&api, "after", "1").await?;
    let took = converge(&env.stack.hub, &account, &api, &ns, Duration::from_secs(30)).await?;
    eprintln!("the hub's cache equals the cluster {took:.1?} after the last write");
    ensure!(
        pods.pid(&pod) == Some(pid),
        "the agent was restarted (pid {pid} -> {:?})",
        pods.pid(&pod)
    );
    let log = pods.log(&pod).context("agent log")?;
    let reloads = std::fs::read_to_string(&log)?
        .matches("the hub TLS files changed; reconnecting")
        .count();
    ensure!(
        reloads >= 2,
        "the agent reloaded its certificate {reloads} times"
    );
    wait_shard(&env.env, "fresh still Ready", &ns, "fresh", 30, ready).await?;
    Ok(())
}

async fn tls_secret_problems(env: Arc<CertsEnv>) -> anyhow::Result<()> {
    let ns = env.env.namespace("certs-own").await?;
    env.env.kubeconfig_secret(&ns, "kc")?;
    let _pods = PodRunner::for_test(&env.env, &ns).await?;
    let account = format!("{ns}-a");
    let own = format!(
        "  hub:\n    address: \"{}\"\n    tlsSecretRef: {{ name: mtls }}\n",
        env.stack.nginx.address
    );
    env.env
        .apply(&configmap_shard(&ns, "own", &[&account], &own))?;

    // Missing.
    let s = wait_shard(&env.env, "own: TLS Secret missing", &ns, "own", 60, |s| {
        config_valid_reason(s).as_deref() == Some("False/TlsSecretNotFound")
    })
    .await?;
    ensure!(
        s.condition(condition_type::STALLED)
            .is_some_and(|c| c.status == "True" && c.message.contains("mtls")),
        "{:?}",
        s.status
    );
    let deployments = Api::<Deployment>::namespaced(env.env.client().await?, &ns);
    ensure!(
        deployments.get_opt("own-agent").await?.is_none(),
        "nothing rolls out with a TLS Secret the agents cannot use"
    );
    wait::until(
        "the TlsSecretNotFound Event",
        Duration::from_secs(20),
        || async {
            (event_count(&env.env, &ns, "own", "TlsSecretNotFound").ok()? >= 1).then_some(())
        },
    )
    .await?;
    // No silent loop: the status stays as it is and the Event is not repeated.
    let rv = s.metadata.resource_version.clone();
    tokio::time::sleep(Duration::from_secs(6)).await;
    let later = wait_shard(&env.env, "own", &ns, "own", 5, |_| true).await?;
    ensure!(
        later.metadata.resource_version == rv,
        "the status keeps being rewritten"
    );
    ensure!(
        event_count(&env.env, &ns, "own", "TlsSecretNotFound")? == 1,
        "the Event repeats"
    );

    // Without ca.crt.
    let mine = env.stack.agents.issue_client(
        &format!("{ns}-own"),
        "own",
        None,
        &[&shard_identity_uri(&ShardRef::new(ns.as_str(), "own"))],
    )?;
    let create = |name: &str, cert: &PathBuf, key: &PathBuf, ca: bool| -> anyhow::Result<()> {
        let mut args = vec![
            "create".to_owned(),
            "secret".into(),
            "generic".into(),
            name.into(),
            format!("--namespace={ns}"),
            format!("--from-file=tls.crt={}", cert.display()),
            format!("--from-file=tls.key={}", key.display()),
            "--dry-run=client".into(),
            "-o".into(),
            "yaml".into(),
        ];
        if ca {
            args.push(format!(
                "--from-file=ca.crt={}",
                env.stack.agents.ca_file.display()
            ));
        }
        let yaml = env.env.cp.kubectl(args)?;
        env.env.apply(&yaml)?;
        Ok(())
    };
    create("mtls", &mine.cert_file, &mine.key_file, false)?;
    wait_shard(
        &env.env,
        "own: TLS Secret without ca.crt",
        &ns,
        "own",
        60,
        |s| config_valid_reason(s).as_deref() == Some("False/TlsSecretKeyNotFound"),
    )
    .await?;

    // Naming another shard.
    let other = env.stack.agents.issue_client(
        &format!("{ns}-other"),
        "other",
        None,
        &[&shard_identity_uri(&ShardRef::new(ns.as_str(), "other"))],
    )?;
    create("mtls", &other.cert_file, &other.key_file, true)?;
    let s = wait_shard(
        &env.env,
        "own: another shard's certificate",
        &ns,
        "own",
        60,
        |s| config_valid_reason(s).as_deref() == Some("False/TlsCertificateWrongShard"),
    )
    .await?;
    let message = s
        .condition(condition_type::CONFIG_VALID)
        .map(|c| c.message.clone())
        .unwrap_or_default();
    ensure!(message.contains(&format!("{ns}/other")), "{message}");
    wait::until(
        "the TlsCertificateWrongShard Event",
        Duration::from_secs(20),
        || async {
            (event_count(&env.env, &ns, "own", "TlsCertificateWrongShard").ok()? >= 1).then_some(())
        },
    )
    .await?;

    // Its own certificate: it streams.
    create("mtls", &mine.cert_file, &mine.key_file, true)?;
    wait_shard(
        &env.env,
        "own Ready with its own certificate",
        &ns,
        "own",
        120,
        ready,
    )
    .await?;
    ensure!(
        secret(&env.env, &ns, "own-agent-tls").await?.is_none(),
        "the operator issued a certificate for a shard that has its own"
    );
    Ok(())
}

const CERTIFICATE_CRD: &str = r#"apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: certificates.cert-manager.io
spec:
  group: cert-manager.io
  names: { kind: Certificate, plural: certificates, singular: certificate, listKind: CertificateList }
  scope: Namespaced
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          x-kubernetes-preserve-unknown-fields: true
"#;

async fn cert_manager(env: Arc<CertsEnv>) -> anyhow::Result<()> {
    // A stand-in for cert-manager's CRD (cert-manager itself is not installed): what
    // can be checked is the Certificate the operator writes, and that agents use the
    // Secret it names once it is filled.
    env.env.apply(CERTIFICATE_CRD)?;
    wait::until("the Certificate CRD", Duration::from_secs(30), || async {
        env.env
            .cp
            .kubectl(["get", "certificates.cert-manager.io", "-A"])
            .ok()
    })
    .await?;
    let mut slot = env.op.lock().await;
    drop(slot.take());
    let options = env.operator_options(
        "operator-cert-manager",
        &["--agent-cert-issuer=ClusterIssuer/scale-agent-ca".to_owned()],
    );
    *slot = Some(Operator::start(&env.env.cp, options).await?);
    drop(slot);
    let result = cert_manager_steps(&env).await;
    // Put the CA-issuing operator back, whatever happened.
    let mut slot = env.op.lock().await;
    drop(slot.take());
    let options = env.operator_options(
        "operator",
        &[format!("--agent-ca-secret={NAMESPACE}/{CA_SECRET}")],
    );
    *slot = Some(Operator::start(&env.env.cp, options).await?);
    result
}

async fn cert_manager_steps(env: &CertsEnv) -> anyhow::Result<()> {
    let ns = env.env.namespace("certs-cm").await?;
    env.env.kubeconfig_secret(&ns, "kc")?;
    let _pods = PodRunner::for_test(&env.env, &ns).await?;
    let account = format!("{ns}-a");
    env.env
        .apply(&configmap_shard(&ns, "managed", &[&account], ""))?;
    let ar = ApiResource::from_gvk(&GroupVersionKind::gvk(
        "cert-manager.io",
        "v1",
        "Certificate",
    ));
    let certs: Api<DynamicObject> = Api::namespaced_with(env.env.client().await?, &ns, &ar);
    let cert = wait::until("the Certificate", Duration::from_secs(60), || async {
        certs.get_opt("managed-agent-tls").await.ok()?
    })
    .await?;
    let spec = &cert.data["spec"];
    let identity = shard_identity_uri(&ShardRef::new(ns.as_str(), "managed"));
    ensure!(spec["uris"] == serde_json::json!([identity]), "{spec}");
    ensure!(spec["secretName"] == "managed-agent-tls", "{spec}");
    ensure!(
        spec["issuerRef"]
            == serde_json::json!({ "group": "cert-manager.io", "kind": "ClusterIssuer", "name": "scale-agent-ca" }),
        "{spec}"
    );
    ensure!(
        spec["usages"] == serde_json::json!(["client auth", "digital signature"]),
        "{spec}"
    );
    ensure!(
        spec["duration"] == "3600s" && spec["renewBefore"] == "1200s",
        "{spec}"
    );
    ensure!(
        cert.metadata
            .owner_references
            .iter()
            .flatten()
            .any(|o| o.kind == "AgentShard" && o.name == "managed"),
        "{:?}",
        cert.metadata.owner_references
    );
    // The agents mount the Secret cert-manager fills; do what cert-manager would.
    let pair =
        env.stack
            .agents
            .issue_client(&format!("{ns}-managed"), "managed", None, &[&identity])?;
    let yaml = env.env.cp.kubectl([
        "create".to_owned(),
        "secret".into(),
        "generic".into(),
        "managed-agent-tls".into(),
        format!("--namespace={ns}"),
        format!("--from-file=tls.crt={}", pair.cert_file.display()),
        format!("--from-file=tls.key={}", pair.key_file.display()),
        format!("--from-file=ca.crt={}", env.stack.agents.ca_file.display()),
        "--dry-run=client".into(),
        "-o".into(),
        "yaml".into(),
    ])?;
    env.env.apply(&yaml)?;
    wait_shard(&env.env, "managed Ready", &ns, "managed", 120, ready).await?;
    Ok(())
}

/// `just up` gives the hub's JSON API a token (`HUB_API_TOKEN`): an operation without
/// it is refused before it reaches any account, and the token lets it through.
async fn anonymous_operation(e: Arc<CertsEnv>) -> anyhow::Result<()> {
    let hub = &e.stack.hub;
    let token = hub
        .api_token
        .clone()
        .context("the hub runs with an API token")?;
    let apply = serde_json::json!({
        "type": "apply",
        "manifest": { "apiVersion": "v1", "kind": "ConfigMap",
                      "metadata": { "name": "anonymous", "namespace": "default" } },
    });
    let client = reqwest::Client::new();
    let post = |token: Option<&str>| {
        let mut request = client
            .post(format!(
                "{}/v1/accounts/no-such-account/operations",
                hub.http
            ))
            .json(&apply);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };
    let anonymous = post(None).await?;
    ensure!(
        anonymous.status() == reqwest::StatusCode::UNAUTHORIZED,
        "an anonymous operation: {}",
        anonymous.status()
    );
    let wrong = post(Some("0123456789abcdef-not-the-token")).await?;
    ensure!(
        wrong.status() == reqwest::StatusCode::UNAUTHORIZED,
        "{}",
        wrong.status()
    );
    // With the token the request reaches the accounts (this one is unknown).
    let with_token = post(Some(&token)).await?;
    ensure!(
        with_token.status() == reqwest::StatusCode::NOT_FOUND,
        "with the token: {}",
        with_token.status()
    );
    let (status, _) = hub.get("/v1/accounts").await?;
    ensure!(status == 200, "listing with the token: {status}");
    Ok(())
}

/// The agents' CA (the Secret the operator issues their certificates from, as `just up`
/// gives it) is not the API servers' client CA: a certificate it signs is refused by the
/// API server as by any stranger.
async fn agent_certificate_login(e: Arc<CertsEnv>) -> anyhow::Result<()> {
    let cp = &e.env.cp;
    let data = secret(&e.env, NAMESPACE, CA_SECRET)
        .await?
        .and_then(|s| s.data)
        .context("the agents' CA Secret")?;
    let text = |key: &str| -> anyhow::Result<String> {
        Ok(String::from_utf8(
            data.get(key).context(key.to_owned())?.0.clone(),
        )?)
    };
    let issuer = rcgen::Issuer::from_ca_cert_pem(
        &text("tls.crt")?,
        rcgen::KeyPair::from_pem(&text("tls.key")?)?,
    )?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "an-agent");
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let key = rcgen::KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    let kubeconfig = cp.run_dir.join("agent-login.kubeconfig");
    std::fs::write(
        &kubeconfig,
        scale_agent_e2e::kubeconfig::render(
            "agent",
            &cp.management.server,
            &cp.pki.ca_pem,
            &cert.pem(),
            &key.serialize_pem(),
        ),
    )?;
    let out = scale_agent_e2e::kubectl::run_full(
        &cp.bins.kubectl,
        &kubeconfig,
        ["get", "--raw", "/api"],
        None,
    )?;
    ensure!(
        !out.success && out.stderr.contains("Unauthorized"),
        "an agent's certificate at the API server: {} {}",
        out.stdout,
        out.stderr
    );
    Ok(())
}

//! The Kubernetes API the hub serves for every account, against the real control
//! plane: Clouddriver's kubectl command lines through the hub with nothing but the
//! hub's kubeconfig (with the installed kubectl and with Debian's older one), compared
//! with the same commands run directly against the cluster; the hub's own refusals
//! (401, 403, 404, 503, 504, Impersonate-*, unsafe paths) as Kubernetes Status
//! objects; streaming with flow control and cancellation; exec, port-forward and cp
//! (connection upgrades) through the hub to a node whose kubelet is kwok.
//!
//! One account streams the management cluster (it has controllers and kwok, so
//! Deployments roll out, Jobs run and Events exist), another a bare target cluster.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use scale_agent_crds::{AccountConfig, ShardRef, TlsConfig, shard_identity_uri};
use scale_agent_e2e::agent::AgentProcess;
use scale_agent_e2e::converge::wait_state;
use scale_agent_e2e::hubstack::HOST_SUFFIX;
use scale_agent_e2e::informer::Informer;
use scale_agent_e2e::kubectl::{self, Output};
use scale_agent_e2e::ports::{connect_when_listening, free_port};
use scale_agent_e2e::scenario::*;
use scale_agent_e2e::{Env, runner, wait};
use serde_json::{Value, json};

const TARGET: &str = "cluster-1";

fn main() {
    runner::main(
        &[TARGET],
        vec![
            (
                "clouddriver_kubectl_command_lines_work_through_the_hub",
                |e| Box::pin(clouddriver_command_lines(e)),
            ),
            ("debian_kubectl_works_through_the_hub", |e| {
                Box::pin(debian_kubectl(e))
            }),
            ("the_hub_refuses_with_kubernetes_status", |e| {
                Box::pin(refusals(e))
            }),
            ("answers_stream_with_flow_control_and_cancel", |e| {
                Box::pin(streaming(e))
            }),
            ("lists_from_the_cache_equal_the_cluster", |e| {
                Box::pin(cached_lists(e))
            }),
            ("watchers_through_the_hub_see_what_the_cluster_shows", |e| {
                Box::pin(watchers(e))
            }),
            ("reads_reflect_writes_through_the_hub", |e| {
                Box::pin(read_your_writes(e))
            }),
            (
                "a_client_go_informer_through_the_hub_never_reaches_the_cluster",
                |e| Box::pin(informer(e)),
            ),
            ("reads_answer_from_the_cache_while_the_agent_is_away", |e| {
                Box::pin(stale_reads(e))
            }),
            ("kubectl_prints_the_same_tables_through_the_hub", |e| {
                Box::pin(tables(e))
            }),
            (
                "kubectl_get_name_answers_from_the_cache_as_the_cluster",
                |e| Box::pin(objects_by_name(e)),
            ),
            (
                "discovery_and_openapi_come_from_the_hub_and_follow_new_crds",
                |e| Box::pin(discovery_from_memory(e)),
            ),
            ("clouddriver_caching_cycle_never_reaches_the_cluster", |e| {
                Box::pin(caching_cycle(e))
            }),
            ("kubectl_get_w_prints_from_the_cache", |e| {
                Box::pin(watched_tables(e))
            }),
            (
                "one_accounts_watches_leave_the_agents_other_account_answered",
                |e| Box::pin(fair_shares(e)),
            ),
            (
                "kubectl_prints_custom_resources_columns_through_the_hub",
                |e| Box::pin(custom_resource_tables(e)),
            ),
            (
                "kept_discovery_is_counted_and_forgotten_with_its_account",
                |e| Box::pin(discovery_forgotten(e)),
            ),
            (
                "kubectl_exec_port_forward_and_cp_work_through_the_hub",
                |e| Box::pin(interactive(e)),
            ),
            (
                "debian_kubectl_execs_and_port_forwards_over_spdy_through_the_hub",
                |e| Box::pin(interactive_spdy(e)),
            ),
            (
                "exec_and_a_nodes_proxy_are_authorized_as_any_request",
                |e| Box::pin(interactive_refusals(e)),
            ),
            (
                "an_exec_whose_client_stops_reading_holds_back_only_itself",
                |e| Box::pin(interactive_flow(e)),
            ),
            (
                "kubectl_reaches_accounts_by_host_name_with_their_own_tokens",
                |e| Box::pin(by_host_name(e)),
            ),
            (
                "kubectl_attach_and_logs_f_end_at_the_cluster_with_their_client",
                |e| Box::pin(attach_and_logs(e)),
            ),
        ],
    );
}

// ---------- the rig: a hub with TLS and its Kubernetes API, one agent, two accounts ----------

/// A token allowed every account.
const TOKEN_ALL: &str = "e2e-clouddriver-token-all-accounts";
/// A token allowed only the target-cluster account.
const TOKEN_ONE: &str = "e2e-team-token-only-the-target";

struct Rig {
    s: Scenario,
    agent: AgentProcess,
    /// The account streaming the management cluster.
    mgmt: String,
    /// The account streaming the target cluster.
    target: String,
    /// `https://127.0.0.1:<port>` of the Kubernetes API.
    kube_api: String,
    /// The kubeconfig `scale-agent-hub kubeconfig` wrote (token: every account).
    hub_kubeconfig: PathBuf,
    /// The CA of the hub's certificate.
    ca_file: PathBuf,
    /// The management cluster's admin kubeconfig (direct access).
    direct: PathBuf,
    /// The hub's log file.
    hub_log: PathBuf,
}

fn stream_all_kinds(name: &str, ns: &str) -> AccountConfig {
    let mut a = account(name, ns);
    a.scope.kinds = vec![];
    a
}

async fn rig(env: &Env, name: &str, extra_hub_args: &[&str]) -> anyhow::Result<Rig> {
    rig_streaming(env, name, extra_hub_args, &[], "600s").await
}

/// [`rig`] whose management account streams `kinds` (the default set when empty),
/// and whose hub keeps an away account for `grace`.
async fn rig_streaming(
    env: &Env,
    name: &str,
    extra_hub_args: &[&str],
    kinds: &[&str],
    grace: &str,
) -> anyhow::Result<Rig> {
    let pki = &env.cp.pki;
    // Also `*.<HOST_SUFFIX>`: accounts by host name.
    let wildcard = format!("*.{HOST_SUFFIX}");
    let hub_cert = pki.issue_server(
        &format!("hub-{name}"),
        &["127.0.0.1", "localhost", &wildcard],
    )?;
    let port = free_port()?;
    let dir = env
        .cp
        .run_dir
        .join(format!("kubeapi-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mgmt = format!("{name}-mgmt");
    let target = format!("{name}-target");
    let tokens = dir.join("tokens");
    std::fs::write(
        &tokens,
        format!("# e2e tokens\n{TOKEN_ALL} *\n{TOKEN_ONE} {target}\n"),
    )?;
    let mut hub_args = vec![
        format!("--tls-cert={}", hub_cert.cert_file.display()),
        format!("--tls-key={}", hub_cert.key_file.display()),
        format!("--client-ca={}", pki.ca_file.display()),
        format!("--kube-api-addr=127.0.0.1:{port}"),
        format!("--kube-api-tokens-file={}", tokens.display()),
    ];
    hub_args.extend(extra_hub_args.iter().map(|a| a.to_string()));
    let s = scenario_with(env, name, grace, None, hub_args).await?;
    let identity = shard_identity_uri(&ShardRef::new(s.ns.clone(), name.to_string()));
    let client = pki.issue_client(&format!("agent-{name}"), "agent", None, &[&identity])?;
    let mut mgmt_account = stream_all_kinds(&mgmt, &s.ns);
    mgmt_account.scope.kinds = kinds.iter().map(|k| (*k).to_owned()).collect();
    let mut cfg = config(
        &s,
        name,
        vec![mgmt_account, stream_all_kinds(&target, &s.ns)],
    );
    cfg.hub.tls = Some(TlsConfig {
        ca_file: pki.ca_file.display().to_string(),
        cert_file: client.cert_file.display().to_string(),
        key_file: client.key_file.display().to_string(),
        server_name: None,
    });
    let mut kcs = kubeconfigs(env, &[(&target, TARGET)])?;
    kcs.insert(
        format!("{mgmt}.kubeconfig"),
        std::fs::read_to_string(&env.cp.management.kubeconfig)?,
    );
    let agent = start_agent(
        env,
        &s,
        &format!("{name}-0"),
        &cfg,
        &kcs,
        &["--lease-renew-interval=500ms"],
    )?;
    for account in [&mgmt, &target] {
        wait_state(&s.hub, account, "Connected", Duration::from_secs(40))
            .await
            .with_context(|| agent_log(&agent))?;
    }
    // The kubeconfig a Spinnaker operator would paste into Clouddriver, written by the
    // hub's own subcommand from the accounts the hub knows.
    let token_file = dir.join("clouddriver-token");
    std::fs::write(&token_file, format!("{TOKEN_ALL}\n"))?;
    let hub_kubeconfig = dir.join("hub-kubeconfig");
    let kube_api = format!("https://127.0.0.1:{port}");
    let text = write_kubeconfig(
        &kube_api,
        &token_file,
        &pki.ca_file,
        &[format!("--hub-api={}", s.hub.http)],
        &hub_kubeconfig,
    )?;
    for account in [&mgmt, &target] {
        ensure!(
            text.contains(&format!("{kube_api}/accounts/{account}")),
            "no context for {account} in:\n{text}"
        );
    }
    Ok(Rig {
        agent,
        mgmt,
        target,
        kube_api,
        hub_kubeconfig,
        ca_file: pki.ca_file.clone(),
        direct: env.cp.management.kubeconfig.clone(),
        hub_log: env.test_dir(&s.ns).join("logs/hub.log"),
        s,
    })
}

/// Writes a kubeconfig with `scale-agent-hub kubeconfig` (the hub's API at `server`,
/// the token in `token_file`, the CA `ca`, and `args`) to `out`; its text.
fn write_kubeconfig(
    server: &str,
    token_file: &Path,
    ca: &Path,
    args: &[String],
    out: &Path,
) -> anyhow::Result<String> {
    let done = Command::new(scale_agent_e2e::workspace_binary("scale-agent-hub")?)
        .arg("kubeconfig")
        .arg(format!("--server={server}"))
        .arg(format!("--token-file={}", token_file.display()))
        .arg(format!("--certificate-authority={}", ca.display()))
        .args(args)
        .arg(format!("--output={}", out.display()))
        .output()?;
    ensure!(
        done.status.success(),
        "scale-agent-hub kubeconfig {args:?}: {}",
        String::from_utf8_lossy(&done.stderr)
    );
    Ok(std::fs::read_to_string(out)?)
}

impl Rig {
    /// Kills the agent and waits until the hub says `account` is Disconnected (kept
    /// for the grace period).
    async fn stop_agent(&self, account: &str) -> anyhow::Result<()> {
        self.agent.proc.signal(nix::sys::signal::Signal::SIGKILL);
        wait::until(
            "the account Disconnected",
            Duration::from_secs(60),
            || async {
                scale_agent_e2e::converge::account_state(&self.s.hub, account)
                    .await
                    .filter(|a| a["state"] == "Disconnected")
            },
        )
        .await?;
        Ok(())
    }

    fn logs(&self) -> String {
        format!(
            "agent:\n{}\nhub:\n{}",
            agent_log(&self.agent),
            scale_agent_e2e::process::tail(&self.hub_log, 30)
        )
    }

    /// [`Rig::logs`] and the end of the log of `kubelet` (kwok).
    fn logs_with(&self, kubelet: &scale_agent_e2e::kubelet::FakeKubelet) -> String {
        format!(
            "{}\nkwok:\n{}",
            self.logs(),
            scale_agent_e2e::process::tail(&kubelet.log, 20)
        )
    }
}

/// kubectl through the hub (context = account) and directly, same arguments.
struct Kubectl<'a> {
    bin: PathBuf,
    rig: &'a Rig,
    account: String,
}

impl<'a> Kubectl<'a> {
    /// The installed kubectl, through `rig`'s hub as `account`.
    fn new(env: &Env, rig: &'a Rig, account: String) -> Kubectl<'a> {
        Kubectl {
            bin: env.cp.bins.kubectl.clone(),
            rig,
            account,
        }
    }

    fn hub_args(&self, args: &[&str]) -> Vec<String> {
        let mut all = vec!["--context".to_owned(), self.account.clone()];
        all.extend(args.iter().map(|a| a.to_string()));
        all
    }

    /// Through the hub; must succeed.
    fn hub(&self, args: &[&str], stdin: Option<&str>) -> anyhow::Result<String> {
        kubectl::run(
            &self.bin,
            &self.rig.hub_kubeconfig,
            self.hub_args(args),
            stdin,
        )
        .with_context(|| self.rig.logs())
    }

    /// Through the hub, whatever the exit status.
    fn hub_full(&self, args: &[&str], stdin: Option<&str>) -> anyhow::Result<Output> {
        Ok(kubectl::run_full(
            &self.bin,
            &self.rig.hub_kubeconfig,
            self.hub_args(args),
            stdin,
        )?)
    }

    /// Directly against the cluster, whatever the exit status.
    fn direct_full(&self, args: &[&str], stdin: Option<&str>) -> anyhow::Result<Output> {
        Ok(kubectl::run_full(&self.bin, &self.rig.direct, args, stdin)?)
    }

    /// Directly; must succeed.
    fn direct(&self, args: &[&str]) -> anyhow::Result<String> {
        Ok(kubectl::run(&self.bin, &self.rig.direct, args, None)?)
    }

    /// Starts a long-running kubectl (`get -w`) through the hub, runs `then`, and
    /// returns what it printed once a line contains `expect` (or after 20 s).
    fn hub_watch(
        &self,
        args: &[&str],
        expect: &str,
        then: impl FnOnce() -> anyhow::Result<()>,
    ) -> anyhow::Result<String> {
        let mut child = Command::new(&self.bin)
            .arg("--kubeconfig")
            .arg(&self.rig.hub_kubeconfig)
            .args(self.hub_args(args))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let rx = kubectl::lines_of(child.stdout.take().context("kubectl's stdout")?);
        // Let the watch start before the change.
        std::thread::sleep(Duration::from_millis(1500));
        let outcome = then();
        let mut printed = String::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while let Ok(line) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            printed.push_str(&line);
            printed.push('\n');
            if line.contains(expect) {
                break;
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        outcome?;
        Ok(printed)
    }

    /// `-o json` through the hub, parsed.
    /// Through the hub, whatever the exit status, as a kubectl process whose discovery
    /// cache is `cache_dir` (a new folder: it asks for discovery as a new Clouddriver
    /// pod or a CI job's kubectl does).
    fn hub_cached_in(&self, cache_dir: &Path, args: &[&str]) -> anyhow::Result<Output> {
        let dir = cache_dir.display().to_string();
        let mut all = vec!["--cache-dir", dir.as_str()];
        all.extend_from_slice(args);
        self.hub_full(&all, None)
    }

    fn hub_json(&self, args: &[&str], stdin: Option<&str>) -> anyhow::Result<Value> {
        let out = self.hub(args, stdin)?;
        serde_json::from_str(&out).with_context(|| format!("kubectl {args:?} printed:\n{out}"))
    }
}

fn items(list: &Value) -> Vec<(String, String, String)> {
    list["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|i| {
                    (
                        i["kind"].as_str().unwrap_or_default().to_owned(),
                        i["metadata"]["name"]
                            .as_str()
                            .unwrap_or_default()
                            .to_owned(),
                        i["metadata"]["uid"].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn deployment(ns: &str, image: &str) -> String {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": "web",
            "namespace": ns,
            "labels": { "app": "web", "app.kubernetes.io/managed-by": "spinnaker" },
            "annotations": { "moniker.spinnaker.io/application": "web" }
        },
        "spec": {
            "replicas": 1,
            "selector": { "matchLabels": { "app": "web" } },
            "template": {
                "metadata": { "labels": { "app": "web" } },
                "spec": { "containers": [{ "name": "main", "image": image }] }
            }
        }
    })
    .to_string()
}

// ---------- Clouddriver's command lines ----------

async fn clouddriver_command_lines(env: Arc<Env>) -> anyhow::Result<()> {
    let rig = rig(&env, "kcd", &[]).await?;
    let ns = rig.s.ns.clone();
    let k = Kubectl::new(&env, &rig, rig.mgmt.clone());
    run_command_lines(&k, &ns, true).await
}

/// The command lines Clouddriver's `KubectlJobExecutor` runs, each through the hub,
/// asserting what Clouddriver reads from their output. `full`: also the ones older
/// kubectl versions do not have.
async fn run_command_lines(k: &Kubectl<'_>, ns: &str, full: bool) -> anyhow::Result<()> {
    let t0 = Instant::now();
    // Deploy: client-side apply, as Clouddriver does by default.
    let applied = k.hub_json(
        &["apply", "-o", "json", "-f", "-"],
        Some(&deployment(ns, "nginx:1.25")),
    )?;
    ensure!(
        applied["kind"] == "Deployment" && applied["metadata"]["name"] == "web",
        "apply -o json: {applied}"
    );
    ensure!(
        applied["metadata"]["annotations"]
            .get("kubectl.kubernetes.io/last-applied-configuration")
            .is_some(),
        "client-side apply wrote no last-applied annotation: {applied}"
    );
    let service = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": { "name": "web", "namespace": ns, "labels": { "app": "web" } },
        "spec": { "selector": { "app": "web" }, "ports": [{ "port": 80 }] }
    });
    let created = k.hub_json(
        &["create", "-o", "json", "-f", "-"],
        Some(&service.to_string()),
    )?;
    ensure!(created["kind"] == "Service", "create -o json: {created}");
    // A second client-side apply with a change: kubectl reads the object (and its
    // last-applied annotation) through the hub to compute the patch.
    let reapplied = k.hub_json(
        &["apply", "-o", "json", "-f", "-"],
        Some(&deployment(ns, "nginx:1.26")),
    )?;
    ensure!(
        reapplied["spec"]["template"]["spec"]["containers"][0]["image"] == "nginx:1.26",
        "re-apply: {reapplied}"
    );
    // The Deployment controller creates a ReplicaSet; wait for it through the hub.
    wait::until(
        "a ReplicaSet of web through the hub",
        Duration::from_secs(30),
        || async {
            let list = k
                .hub_json(&["-o", "json", "get", "replicaset", "-n", ns], None)
                .ok()?;
            (!items(&list).is_empty()).then_some(())
        },
    )
    .await?;

    // The caching cycle: several kinds of a namespace, with and without a selector.
    let args = [
        "-o",
        "json",
        "get",
        "deployment,replicaset,service",
        "-n",
        ns,
    ];
    let through = k.hub_json(&args, None)?;
    let direct: Value = serde_json::from_str(&k.direct(&args)?)?;
    let mut seen = items(&through);
    let mut want = items(&direct);
    seen.sort();
    want.sort();
    ensure!(
        seen == want,
        "get deployment,replicaset,service through the hub:\n{seen:?}\ndirectly:\n{want:?}"
    );
    let kinds: Vec<&str> = seen.iter().map(|(k, _, _)| k.as_str()).collect();
    for kind in ["Deployment", "ReplicaSet", "Service"] {
        ensure!(kinds.contains(&kind), "no {kind} in {seen:?}");
    }
    let selected = k.hub_json(
        &[
            "-o",
            "json",
            "get",
            "deployment,replicaset,service",
            "-n",
            ns,
            "-l",
            "app.kubernetes.io/managed-by=spinnaker",
        ],
        None,
    )?;
    let selected = items(&selected);
    ensure!(
        selected.len() == 1 && selected[0].0 == "Deployment",
        "-l app.kubernetes.io/managed-by=spinnaker: {selected:?}"
    );
    // Cluster-scoped kinds, without -n.
    let cluster_scoped = k.hub_json(&["-o", "json", "get", "namespace,clusterrole"], None)?;
    let names: Vec<String> = items(&cluster_scoped)
        .into_iter()
        .map(|(_, n, _)| n)
        .collect();
    ensure!(
        names.iter().any(|n| n == ns) && names.iter().any(|n| n == "cluster-admin"),
        "get namespace,clusterrole: {names:?}"
    );
    // One object by name: the same object, byte for byte, as directly (nothing
    // changes the Service meanwhile).
    let one = k.hub(&["get", "service", "web", "-n", ns, "-o", "json"], None)?;
    let direct_one = k.direct(&["get", "service", "web", "-n", ns, "-o", "json"])?;
    ensure!(
        one == direct_one,
        "get service web -o json differs:\n{one}\n---\n{direct_one}"
    );
    // Events of one object, by field selector.
    wait::until(
        "the Deployment's events through the hub",
        Duration::from_secs(30),
        || async {
            let events = k
                .hub_json(
                    &[
                        "get",
                        "event",
                        "-n",
                        ns,
                        "--field-selector",
                        "involvedObject.name=web,involvedObject.kind=Deployment",
                        "-o",
                        "json",
                    ],
                    None,
                )
                .ok()?;
            let list = events["items"].as_array()?;
            (!list.is_empty() && list.iter().all(|e| e["involvedObject"]["name"] == "web"))
                .then_some(())
        },
    )
    .await?;
    // Discovery: the same API resources as the cluster.
    let resources = k.hub(&["api-resources"], None)?;
    let direct_resources = k.direct(&["api-resources"])?;
    ensure!(
        resources == direct_resources,
        "api-resources differs:\n{resources}\n---\n{direct_resources}"
    );
    // Tables.
    let table = k.hub(&["get", "namespaces"], None)?;
    ensure!(
        kubectl::table(&table)
            .iter()
            .any(|row| row.iter().any(|(c, v)| c == "NAME" && v == ns)),
        "get namespaces:\n{table}"
    );
    let crds = k.hub(&["get", "crd"], None)?;
    ensure!(
        crds.contains("agentshards.scaleagent.dev"),
        "get crd:\n{crds}"
    );
    let deployments = k.hub(&["get", "deployments", "-n", ns], None)?;
    ensure!(
        kubectl::table(&deployments)
            .iter()
            .any(|row| row.iter().any(|(c, v)| c == "NAME" && v == "web")),
        "get deployments:\n{deployments}"
    );

    // Server-side apply, create, replace.
    let ssa = k.hub_json(
        &[
            "apply",
            "--server-side=true",
            "--force-conflicts=true",
            "-o",
            "json",
            "-f",
            "-",
        ],
        Some(&deployment(ns, "nginx:1.27")),
    )?;
    ensure!(
        ssa["spec"]["template"]["spec"]["containers"][0]["image"] == "nginx:1.27",
        "apply --server-side: {ssa}"
    );
    let cm = json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": { "name": "settings", "namespace": ns, "labels": { "tier": "conf" } },
        "data": { "v": "1" }
    });
    k.hub_json(&["create", "-o", "json", "-f", "-"], Some(&cm.to_string()))?;
    let mut cm2 = cm.clone();
    cm2["data"]["v"] = json!("2");
    let replaced = k.hub_json(
        &["replace", "-o", "json", "-f", "-"],
        Some(&cm2.to_string()),
    )?;
    ensure!(replaced["data"]["v"] == "2", "replace: {replaced}");
    // A bad request gets the cluster's own answer.
    let bad = json!({ "apiVersion": "v1", "kind": "ConfigMap", "metadata": { "name": "Not_Valid", "namespace": ns } });
    let hub_bad = k.hub_full(&["create", "-f", "-"], Some(&bad.to_string()))?;
    let direct_bad = k.direct_full(&["create", "-f", "-"], Some(&bad.to_string()))?;
    ensure!(
        !hub_bad.success && hub_bad.stderr == direct_bad.stderr,
        "an invalid object: through the hub {:?}, directly {:?}",
        hub_bad.stderr,
        direct_bad.stderr
    );

    // Scale, patch (three types), rollout.
    k.hub(
        &["scale", "deployment", "web", "-n", ns, "--replicas=2"],
        None,
    )?;
    let scaled = k.hub_json(&["get", "deployment", "web", "-n", ns, "-o", "json"], None)?;
    ensure!(scaled["spec"]["replicas"] == 2, "scale: {scaled}");
    for (ty, patch, check) in [
        (
            "strategic",
            r#"{"metadata":{"labels":{"patched":"strategic"}}}"#,
            "strategic",
        ),
        (
            "merge",
            r#"{"metadata":{"labels":{"patched":"merge"}}}"#,
            "merge",
        ),
        (
            "json",
            r#"[{"op":"replace","path":"/metadata/labels/patched","value":"json"}]"#,
            "json",
        ),
    ] {
        k.hub(
            &[
                "patch",
                "deployment",
                "web",
                "-n",
                ns,
                "--type",
                ty,
                "-p",
                patch,
            ],
            None,
        )?;
        let got = k.hub_json(&["get", "deployment", "web", "-n", ns, "-o", "json"], None)?;
        ensure!(
            got["metadata"]["labels"]["patched"] == check,
            "patch --type {ty}: {}",
            got["metadata"]["labels"]
        );
    }
    let history = k.hub(&["rollout", "history", "deployment/web", "-n", ns], None)?;
    ensure!(history.contains("REVISION"), "rollout history:\n{history}");
    ensure!(
        history == k.direct(&["rollout", "history", "deployment/web", "-n", ns])?,
        "rollout history differs from the cluster's"
    );
    // Which image revision 1 had depends on how fast the controller saw the applies:
    // its ReplicaSet says.
    let sets = k.hub_json(&["get", "replicaset", "-n", ns, "-o", "json"], None)?;
    let first_image = sets["items"]
        .as_array()
        .and_then(|sets| {
            sets.iter().find(|rs| {
                rs["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "1"
            })
        })
        .map(|rs| rs["spec"]["template"]["spec"]["containers"][0]["image"].clone())
        .context("no ReplicaSet of revision 1")?;
    ensure!(first_image != "nginx:1.27", "revision 1 runs {first_image}");
    k.hub(
        &[
            "rollout",
            "undo",
            "deployment/web",
            "-n",
            ns,
            "--to-revision=1",
        ],
        None,
    )?;
    let undone = k.hub_json(&["get", "deployment", "web", "-n", ns, "-o", "json"], None)?;
    ensure!(
        undone["spec"]["template"]["spec"]["containers"][0]["image"] == first_image,
        "rollout undo --to-revision=1: {}",
        undone["spec"]["template"]
    );
    k.hub(&["rollout", "pause", "deployment/web", "-n", ns], None)?;
    let paused = k.hub_json(&["get", "deployment", "web", "-n", ns, "-o", "json"], None)?;
    ensure!(paused["spec"]["paused"] == true, "rollout pause");
    k.hub(&["rollout", "resume", "deployment/web", "-n", ns], None)?;
    k.hub(&["rollout", "restart", "deployment/web", "-n", ns], None)?;
    let restarted = k.hub_json(&["get", "deployment", "web", "-n", ns, "-o", "json"], None)?;
    ensure!(
        restarted["spec"]["template"]["metadata"]["annotations"]
            .get("kubectl.kubernetes.io/restartedAt")
            .is_some(),
        "rollout restart: {}",
        restarted["spec"]["template"]
    );
    // Wait for a condition (the controller and kwok make the Deployment available).
    k.hub(
        &[
            "wait",
            "--for=condition=Available",
            "deployment/web",
            "-n",
            ns,
            "--timeout=60s",
        ],
        None,
    )?;

    // `get -w`: printing a table and as JSON (both from the hub's cache): both show a
    // ConfigMap created after they started.
    for (i, output) in ["wide", "json"].into_iter().enumerate() {
        let name = format!("watched-{i}");
        let printed = k.hub_watch(
            &["get", "configmaps", "-n", ns, "-w", "-o", output],
            &name,
            || {
                let cm = json!({
                    "apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": { "name": name, "namespace": ns }
                });
                k.direct_full(&["create", "-f", "-"], Some(&cm.to_string()))
                    .map(|_| ())
            },
        )?;
        ensure!(
            printed.contains(&name),
            "get -w -o {output} printed:\n{printed}"
        );
    }
    // Logs: the cluster's own answer (kwok runs no containers), through the hub as
    // directly; the same for a Job's logs and for `top`, which needs a metrics API
    // this cluster does not have.
    let pods = k.hub_json(
        &["get", "pods", "-n", ns, "-l", "app=web", "-o", "json"],
        None,
    )?;
    let pod = pods["items"][0]["metadata"]["name"]
        .as_str()
        .context("a pod of web")?
        .to_owned();
    let job = json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": { "name": "once", "namespace": ns },
        "spec": { "template": { "spec": { "restartPolicy": "Never",
            "containers": [{ "name": "run", "image": "busybox" }] } } }
    });
    k.hub(&["create", "-f", "-"], Some(&job.to_string()))?;
    let mut same = vec![
        vec!["logs", pod.as_str(), "-c", "main", "-n", ns],
        vec!["top", "pod", "--containers", "-n", ns],
    ];
    if full {
        same.push(vec!["logs", "job/once", "-n", ns]);
    }
    for args in same {
        let hub = k.hub_full(&args, None)?;
        let direct = k.direct_full(&args, None)?;
        ensure!(
            hub.success == direct.success && hub.stdout == direct.stdout,
            "kubectl {args:?}: through the hub {hub:?}, directly {direct:?}"
        );
        // Error texts may name the request's own path: compare their first words.
        let first = |s: &str| s.split_whitespace().take(4).collect::<Vec<_>>().join(" ");
        ensure!(
            first(&hub.stderr) == first(&direct.stderr),
            "kubectl {args:?}: stderr through the hub {:?}, directly {:?}",
            hub.stderr,
            direct.stderr
        );
    }

    // Delete: by name with each cascade, and by label.
    for (cascade, kind, name) in [
        ("orphan", "job", "once"),
        ("background", "service", "web"),
        ("foreground", "deployment", "web"),
    ] {
        k.hub(
            &[
                "delete",
                kind,
                name,
                "-n",
                ns,
                "--ignore-not-found=true",
                &format!("--cascade={cascade}"),
                "--grace-period=0",
            ],
            None,
        )?;
    }
    k.hub(&["delete", "configmap", "-n", ns, "-l", "tier=conf"], None)?;
    let again = k.hub(
        &[
            "delete",
            "deployment",
            "web",
            "-n",
            ns,
            "--ignore-not-found=true",
        ],
        None,
    )?;
    ensure!(again.trim().is_empty(), "--ignore-not-found: {again}");
    wait::until("the Deployment gone", Duration::from_secs(30), || async {
        let out = k
            .hub_full(&["get", "deployment", "web", "-n", ns], None)
            .ok()?;
        (!out.success && out.stderr.contains("NotFound")).then_some(())
    })
    .await?;
    let left = k.hub_json(
        &[
            "get",
            "configmap",
            "-n",
            ns,
            "-l",
            "tier=conf",
            "-o",
            "json",
        ],
        None,
    )?;
    ensure!(items(&left).is_empty(), "delete -l: {left}");
    eprintln!("command lines through the hub: {:?}", t0.elapsed());
    Ok(())
}

// ---------- Debian's kubectl ----------

/// Debian's `kubernetes-client` (an older kubectl, as Clouddriver ships one), unpacked
/// into the cache folder of the test binaries; installed from the Debian archive when
/// missing, without touching the system's own kubectl.
fn debian_kubectl_binary() -> anyhow::Result<PathBuf> {
    let home = std::env::var_os("HOME").context("HOME is not set")?;
    let root = Path::new(&home).join(".cache/scale-agent/debian-kubernetes-client");
    let bin = root.join("usr/bin/kubectl");
    if bin.is_file() {
        return Ok(bin);
    }
    let download = tempfile::tempdir()?;
    let run = |cmd: &mut Command| -> anyhow::Result<()> {
        let out = cmd.stdout(Stdio::null()).output()?;
        ensure!(
            out.status.success(),
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    };
    eprintln!("fetching Debian's kubernetes-client (apt-get download) ...");
    if run(Command::new("apt-get")
        .args(["download", "kubernetes-client"])
        .current_dir(download.path()))
    .is_err()
    {
        run(Command::new("apt-get").args(["update", "-qq"]))?;
        run(Command::new("apt-get")
            .args(["download", "kubernetes-client"])
            .current_dir(download.path()))?;
    }
    let deb = std::fs::read_dir(download.path())?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .context("apt-get download left no .deb")?;
    std::fs::create_dir_all(&root)?;
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
    ensure!(bin.is_file(), "the package has no usr/bin/kubectl");
    Ok(bin)
}

async fn debian_kubectl(env: Arc<Env>) -> anyhow::Result<()> {
    let bin = debian_kubectl_binary()?;
    let version = Command::new(&bin)
        .args(["version", "--client", "--short"])
        .output()?;
    eprintln!(
        "Debian's kubectl: {}",
        String::from_utf8_lossy(&version.stdout).trim()
    );
    let rig = rig(&env, "kdeb", &[]).await?;
    let ns = rig.s.ns.clone();
    let k = Kubectl {
        bin,
        rig: &rig,
        account: rig.mgmt.clone(),
    };
    // An older kubectl reads OpenAPI v2 (protobuf) for apply: through the hub it is
    // the cluster's own document.
    run_command_lines(&k, &ns, false).await
}

// ---------- refusals ----------

/// A kube-rs client for the hub's Kubernetes API of `account`, with `token` (or none).
async fn hub_client(rig: &Rig, account: &str, token: Option<&str>) -> anyhow::Result<kube::Client> {
    let mut user = json!({});
    if let Some(t) = token {
        user = json!({ "token": t });
    }
    let kubeconfig = json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{ "name": "hub", "cluster": {
            "server": format!("{}/accounts/{account}", rig.kube_api),
            "certificate-authority": rig.ca_file.display().to_string(),
        }}],
        "users": [{ "name": "u", "user": user }],
        "contexts": [{ "name": "c", "context": { "cluster": "hub", "user": "u" } }],
        "current-context": "c",
    });
    let kc: kube::config::Kubeconfig = serde_json::from_value(kubeconfig)?;
    let mut config =
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await?;
    config.default_retry = false;
    Ok(kube::Client::try_from(config)?)
}

/// Sends a request and returns the status and the body as JSON.
async fn call(
    client: &kube::Client,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> anyhow::Result<(u16, Value)> {
    let mut req = http::Request::builder().method(method).uri(path);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let response = client.send(req.body(kube::client::Body::empty())?).await?;
    let status = response.status().as_u16();
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await?
        .to_bytes();
    let json = serde_json::from_slice(&body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
    Ok((status, json))
}

fn expect_status(got: &(u16, Value), code: u16, reason: &str, what: &str) -> anyhow::Result<()> {
    let (status, body) = got;
    ensure!(
        *status == code
            && body["kind"] == "Status"
            && body["apiVersion"] == "v1"
            && body["status"] == "Failure"
            && body["reason"] == reason
            && body["code"] == code,
        "{what}: expected {code} {reason} as a Status, got {status} {body}"
    );
    Ok(())
}

async fn refusals(env: Arc<Env>) -> anyhow::Result<()> {
    // Stale reads off: a disconnected account answers every request 503 (see
    // `stale_reads` for the default).
    let rig = rig(
        &env,
        "kref",
        &["--kube-api-request-timeout=3s", "--kube-api-no-stale-reads"],
    )
    .await?;
    let ns = rig.s.ns.clone();
    let list = format!("/api/v1/namespaces/{ns}/configmaps");
    // No token, a wrong token: 401.
    let anonymous = hub_client(&rig, &rig.target, None).await?;
    expect_status(
        &call(&anonymous, "GET", &list, &[]).await?,
        401,
        "Unauthorized",
        "no token",
    )?;
    let wrong = hub_client(&rig, &rig.target, Some("not-a-token-the-hub-knows")).await?;
    expect_status(
        &call(&wrong, "GET", &list, &[]).await?,
        401,
        "Unauthorized",
        "wrong token",
    )?;
    // A token limited to the target account: in for it, 403 for the other (and for
    // an account that does not exist, so it cannot probe names).
    let scoped = hub_client(&rig, &rig.target, Some(TOKEN_ONE)).await?;
    let (code, body) = call(&scoped, "GET", &list, &[]).await?;
    ensure!(
        code == 200 && body["kind"] == "ConfigMapList",
        "scoped token on its account: {code} {body}"
    );
    let other = hub_client(&rig, &rig.mgmt, Some(TOKEN_ONE)).await?;
    expect_status(
        &call(&other, "GET", &list, &[]).await?,
        403,
        "Forbidden",
        "scoped token on another account",
    )?;
    let nowhere = hub_client(&rig, "no-such-account", Some(TOKEN_ONE)).await?;
    expect_status(
        &call(&nowhere, "GET", &list, &[]).await?,
        403,
        "Forbidden",
        "scoped token on an unknown account",
    )?;
    // An unknown account: 404.
    let unknown = hub_client(&rig, "no-such-account", Some(TOKEN_ALL)).await?;
    let got = call(&unknown, "GET", &list, &[]).await?;
    expect_status(&got, 404, "NotFound", "unknown account")?;
    ensure!(
        got.1["details"]["name"] == "no-such-account",
        "404 details: {}",
        got.1
    );
    // Impersonation is refused: it would act with the agent's rights.
    let all = hub_client(&rig, &rig.target, Some(TOKEN_ALL)).await?;
    for header in [
        "Impersonate-User",
        "Impersonate-Group",
        "Impersonate-Extra-Scopes",
    ] {
        expect_status(
            &call(&all, "GET", &list, &[(header, "system:admin")]).await?,
            403,
            "Forbidden",
            header,
        )?;
    }
    // Paths that could leave the cluster's API root are refused, not replayed.
    for path in [
        "/api/%2e%2e/%2e%2e/x",
        "/api/v1%2Fnamespaces",
        "/api/./v1/namespaces",
    ] {
        expect_status(
            &call(&all, "GET", path, &[]).await?,
            400,
            "BadRequest",
            path,
        )?;
    }
    // The target account is limited to namespace `ns` (its AgentShard's `namespaces`):
    // through the hub, even with the all-accounts token and the cluster's admin
    // kubeconfig behind it, it reaches nothing of another namespace, no namespaced
    // kind across all namespaces, and writes nothing cluster-scoped; nor does an
    // access review describe the admin kubeconfig's rights.
    for (method, path) in [
        (
            "GET",
            "/api/v1/namespaces/kube-system/configmaps".to_string(),
        ),
        ("GET", "/api/v1/namespaces/kube-system/secrets".to_string()),
        ("GET", "/api/v1/configmaps".to_string()),
        ("GET", "/api/v1/secrets?watch=true".to_string()),
        (
            "POST",
            "/apis/rbac.authorization.k8s.io/v1/clusterroles".to_string(),
        ),
        (
            "POST",
            "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews".to_string(),
        ),
        ("DELETE", format!("/api/v1/namespaces/{ns}")),
    ] {
        expect_status(
            &call(&all, method, &path, &[]).await?,
            403,
            "Forbidden",
            &format!("{method} {path} for an account limited to {ns}"),
        )?;
    }
    let (code, body) = call(&all, "GET", &list, &[]).await?;
    ensure!(
        code == 200 && body["kind"] == "ConfigMapList",
        "its own namespace: {code} {body}"
    );
    let (code, body) = call(&all, "GET", "/api/v1/namespaces", &[]).await?;
    ensure!(
        code == 200 && body["kind"] == "NamespaceList",
        "cluster-scoped kinds stay readable: {code} {body}"
    );
    // The cluster's own answers come back unchanged: 404 for a missing object.
    let (code, body) = call(&all, "GET", &format!("{list}/nope"), &[]).await?;
    ensure!(
        code == 404 && body["reason"] == "NotFound" && body["details"]["kind"] == "configmaps",
        "the cluster's 404: {code} {body}"
    );
    // An agent too slow to answer: 504 (the request's own timeout, then the hub's
    // default, --kube-api-request-timeout=3s). One object by name goes to the cluster
    // (a list would come from the cache, which needs no agent).
    rig.agent.proc.signal(nix::sys::signal::Signal::SIGSTOP);
    let one = format!("{list}/kube-root-ca.crt");
    let frozen = async {
        let started = Instant::now();
        let got = call(&all, "GET", &format!("{one}?timeout=1s"), &[]).await?;
        expect_status(&got, 504, "Timeout", "frozen agent, timeout=1s")?;
        ensure!(
            started.elapsed() < Duration::from_secs(6),
            "504 took {:?}",
            started.elapsed()
        );
        let got = call(&all, "GET", &one, &[]).await?;
        expect_status(&got, 504, "Timeout", "frozen agent, default timeout")?;
        anyhow::Ok(())
    }
    .await;
    rig.agent.proc.signal(nix::sys::signal::Signal::SIGCONT);
    frozen?;
    // The agent gone (its accounts wait out the grace period): 503 with a message.

    rig.stop_agent(&rig.target).await?;
    let got = call(&all, "GET", &list, &[]).await?;
    expect_status(
        &got,
        503,
        "ServiceUnavailable",
        "disconnected account, stale reads off",
    )?;
    ensure!(
        got.1["message"]
            .as_str()
            .is_some_and(|m| m.contains("disconnected")),
        "503 message: {}",
        got.1
    );
    Ok(())
}

// ---------- streaming, flow control, cancellation ----------

async fn metric(url: &str, name: &str) -> anyhow::Result<f64> {
    let text = reqwest::get(url).await?.text().await?;
    text.lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .with_context(|| format!("no {name} in {url}"))
}

async fn streaming(env: Arc<Env>) -> anyhow::Result<()> {
    let rig = rig(&env, "kstr", &[]).await?;
    let ns = rig.s.ns.clone();
    let target = target(&env, TARGET)?;
    let cms = scale_agent_e2e::converge::configmaps(target, &ns).await?;
    // 600 ConfigMaps of 32 KiB: a list of ~19 MiB, far more than the 1 MiB window
    // plus what the sockets between the client and the hub can buffer.
    let filler = "x".repeat(32 << 10);
    let mut tasks = Vec::new();
    for chunk in 0..6 {
        let cms = cms.clone();
        let filler = filler.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..100 {
                let cm: k8s_openapi::api::core::v1::ConfigMap = serde_json::from_value(json!({
                    "metadata": { "name": format!("big-{chunk}-{i}") },
                    "data": { "v": filler }
                }))?;
                cms.create(&kube::api::PostParams::default(), &cm).await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let all = hub_client(&rig, &rig.target, Some(TOKEN_ALL)).await?;
    // `pretty` is a parameter the cache does not answer: the list goes to the cluster.
    let list = format!("/api/v1/namespaces/{ns}/configmaps?pretty=false");
    // A whole list streams through the window, byte for byte as the cluster sends it.
    let (code, body) = call(&all, "GET", &list, &[]).await?;
    ensure!(code == 200, "list: {code}");
    let n = body["items"].as_array().map_or(0, Vec::len);
    ensure!(n >= 600, "list through the hub has {n} items");
    // Five clients that never read their answer: the agent stops at their windows,
    // and the account's objects keep streaming on the same session meanwhile.
    let mut held = Vec::new();
    for _ in 0..5 {
        let req = http::Request::get(&list).body(kube::client::Body::empty())?;
        held.push(all.send(req).await?);
    }
    let hub_metrics = format!("{}/metrics", rig.s.hub.http);
    let agent_metrics = format!("http://{}/metrics", rig.agent.admin);
    let in_flight = metric(&hub_metrics, "scale_agent_hub_kube_api_requests_in_flight").await?;
    ensure!(in_flight >= 5.0, "hub requests in flight: {in_flight}");
    let started = Instant::now();
    scale_agent_e2e::converge::put_cm(&cms, "while-held", "v").await?;
    wait::until(
        "a change while answers are held",
        Duration::from_secs(10),
        || async {
            scale_agent_e2e::converge::hub_snapshot(&rig.s.hub, &rig.target, &ns)
                .await
                .filter(|s| s.contains_key("while-held"))
        },
    )
    .await
    .with_context(|| rig.logs())?;
    let lag = started.elapsed();
    ensure!(
        lag < Duration::from_secs(3),
        "a change took {lag:?} to reach the hub while five answers were held"
    );
    eprintln!("change reached the hub in {lag:?} with five unread 19 MiB answers held");
    // The clients go away: their requests end at the hub and at the agent.
    drop(held);
    wait::until(
        "held requests cancelled",
        Duration::from_secs(10),
        || async {
            let hub = metric(&hub_metrics, "scale_agent_hub_kube_api_requests_in_flight")
                .await
                .ok()?;
            let agent = metric(&agent_metrics, "scale_agent_kube_api_requests_in_flight")
                .await
                .ok()?;
            (hub == 0.0 && agent == 0.0).then_some(())
        },
    )
    .await
    .with_context(|| rig.logs())?;
    // A watch the cluster answers (Secrets never come from the cache) streams changes
    // as they happen, and ends at the agent when dropped.
    let watch =
        format!("/api/v1/namespaces/{ns}/secrets?watch=true&fieldSelector=metadata.name%3Dwatched");
    let req = http::Request::get(&watch).body(kube::client::Body::empty())?;
    let response = all.send(req).await?;
    ensure!(response.status() == 200, "watch: {}", response.status());
    let mut body = response.into_body();
    let secrets: kube::Api<k8s_openapi::api::core::v1::Secret> =
        kube::Api::namespaced(target.client().await?, &ns);
    let secret: k8s_openapi::api::core::v1::Secret = serde_json::from_value(json!({
        "metadata": { "name": "watched" },
        "stringData": { "k": "v" }
    }))?;
    secrets
        .create(&kube::api::PostParams::default(), &secret)
        .await?;
    let frame = tokio::time::timeout(
        Duration::from_secs(10),
        http_body_util::BodyExt::frame(&mut body),
    )
    .await
    .context("no watch event within 10s")?
    .context("the watch ended")??;
    let data = frame.into_data().ok().context("a data frame")?;
    let event: Value = serde_json::from_slice(&data)?;
    ensure!(
        event["type"] == "ADDED" && event["object"]["metadata"]["name"] == "watched",
        "watch event: {event}"
    );
    drop(body);
    wait::until(
        "the watch cancelled at the agent",
        Duration::from_secs(10),
        || async {
            let agent = metric(&agent_metrics, "scale_agent_kube_api_requests_in_flight")
                .await
                .ok()?;
            (agent == 0.0).then_some(())
        },
    )
    .await?;
    let text = std::fs::read_to_string(&rig.hub_log).unwrap_or_default();
    if text.contains("more response body than the hub granted") {
        bail!("the agent overran a window:\n{}", rig.logs());
    }
    Ok(())
}

// ---------- fair shares of an agent ----------

/// Both accounts of the rig are carried by one agent session. Watches the cluster
/// answers, more than the agent carries at once (256), on the management account:
/// the hub refuses those past the account's and the token's share (429), so the
/// target account's requests are still carried and answered (issue 21, item 9).
async fn fair_shares(env: Arc<Env>) -> anyhow::Result<()> {
    let rig = rig(&env, "kfair", &[]).await?;
    let ns = rig.s.ns.clone();
    let mgmt = hub_client(&rig, &rig.mgmt, Some(TOKEN_ALL)).await?;
    // Secrets never come from the cache: every watch goes to the cluster.
    let watch = format!("/api/v1/namespaces/{ns}/secrets?watch=true");
    let sends = (0..300).map(|_| {
        let mgmt = mgmt.clone();
        let watch = watch.clone();
        async move {
            let req = http::Request::get(&watch).body(kube::client::Body::empty())?;
            anyhow::Ok(mgmt.send(req).await?)
        }
    });
    let mut held = Vec::new();
    let mut refused = 0;
    for answer in futures::future::join_all(sends).await {
        let answer = answer?;
        match answer.status().as_u16() {
            200 => held.push(answer),
            429 => refused += 1,
            other => bail!("a watch of the management account answered {other}"),
        }
    }
    let target = hub_client(&rig, &rig.target, Some(TOKEN_ONE)).await?;
    for _ in 0..10 {
        let read = format!("/api/v1/namespaces/{ns}/secrets?limit=1");
        let got = call(&target, "GET", &read, &[]).await?;
        ensure!(
            got.0 == 200,
            "the target account's read while the management account holds {} watches ({refused} refused): {} {}\n{}",
            held.len(),
            got.0,
            got.1,
            rig.logs()
        );
    }
    ensure!(refused > 0, "all 300 watches were carried");
    eprintln!(
        "FAIR: 300 watches of one account: {} carried, {refused} refused 429; the other account's reads answered",
        held.len()
    );
    drop(held);
    let agent_metrics = format!("http://{}/metrics", rig.agent.admin);
    wait::until(
        "the watches ended at the agent",
        Duration::from_secs(20),
        || async {
            let agent = metric(&agent_metrics, "scale_agent_kube_api_requests_in_flight")
                .await
                .ok()?;
            (agent == 0.0).then_some(())
        },
    )
    .await?;
    Ok(())
}

// ---------- reads from the cache ----------

/// The cluster's own answer to a raw request (status, JSON body).
async fn direct_call(
    cluster: &scale_agent_e2e::Cluster,
    path: &str,
) -> anyhow::Result<(u16, Value)> {
    call(&cluster.client().await?, "GET", path, &[]).await
}

/// An item as the cache holds it: the stream leaves out `managedFields` (kubectl
/// does not print them either).
fn as_streamed(mut item: Value) -> Value {
    if let Some(meta) = item.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("managedFields");
    }
    item
}

fn list_items(list: &Value) -> Vec<Value> {
    list["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(as_streamed)
        .collect()
}

async fn cache_answers(rig: &Rig) -> anyhow::Result<f64> {
    Ok(metric(
        &format!("{}/metrics", rig.s.hub.http),
        "scale_agent_hub_kube_api_requests_total{source=\"cache\",code=\"2xx\"}",
    )
    .await
    .unwrap_or(0.0))
}

/// Waits until the hub's cache of `account` holds every ConfigMap of the cluster.
async fn cache_caught_up(
    rig: &Rig,
    account: &str,
    cms: &kube::Api<k8s_openapi::api::core::v1::ConfigMap>,
) -> anyhow::Result<()> {
    scale_agent_e2e::converge::converge(
        &rig.s.hub,
        account,
        cms,
        &rig.s.ns,
        Duration::from_secs(30),
    )
    .await
    .with_context(|| rig.logs())?;
    Ok(())
}

async fn cached_lists(env: Arc<Env>) -> anyhow::Result<()> {
    let rig = rig(&env, "kls", &[]).await?;
    let ns = rig.s.ns.clone();
    let cluster = target(&env, TARGET)?;
    let cms = scale_agent_e2e::converge::configmaps(cluster, &ns).await?;
    for i in 0..30 {
        let cm: k8s_openapi::api::core::v1::ConfigMap = serde_json::from_value(json!({
            "metadata": { "name": format!("cm-{i:02}"), "labels": { "tier": if i % 2 == 0 { "a" } else { "b" }, "n": i.to_string() } },
            "data": { "v": i.to_string() }
        }))?;
        cms.create(&kube::api::PostParams::default(), &cm).await?;
    }
    cache_caught_up(&rig, &rig.target, &cms).await?;
    let hub = hub_client(&rig, &rig.target, Some(TOKEN_ALL)).await?;
    let before = cache_answers(&rig).await?;
    let base = format!("/api/v1/namespaces/{ns}/configmaps");
    let queries = [
        String::new(),
        "?labelSelector=tier%3Da".into(),
        "?labelSelector=tier!%3Da".into(),
        "?labelSelector=tier+in+(a,b),!missing,n".into(),
        "?fieldSelector=metadata.name%3Dcm-07".into(),
        "?fieldSelector=metadata.name!%3Dcm-07,metadata.namespace%3D".to_string() + &ns,
        "?resourceVersion=0".into(),
    ];
    for q in &queries {
        let (code, through) = call(&hub, "GET", &format!("{base}{q}"), &[]).await?;
        let (dcode, direct) = direct_call(cluster, &format!("{base}{q}")).await?;
        ensure!(code == 200 && dcode == 200, "{q}: {code} / {dcode}");
        ensure!(
            through["kind"] == direct["kind"] && through["apiVersion"] == direct["apiVersion"],
            "{q}: list type {} {} vs {} {}",
            through["kind"],
            through["apiVersion"],
            direct["kind"],
            direct["apiVersion"]
        );
        let (t, d) = (list_items(&through), list_items(&direct));
        ensure!(
            t == d,
            "{q}: items from the cache differ from the cluster's:\n{t:?}\n---\n{d:?}"
        );
        ensure!(
            through["metadata"]["resourceVersion"]
                .as_str()
                .is_some_and(|rv| !rv.is_empty()),
            "{q}: no resourceVersion: {}",
            through["metadata"]
        );
    }
    let after = cache_answers(&rig).await?;
    ensure!(
        after - before >= queries.len() as f64,
        "only {} of {} lists came from the cache",
        after - before,
        queries.len()
    );
    // Pages come from one snapshot: a change made between pages does not show.
    let (_, full) = direct_call(cluster, &base).await?;
    let want: Vec<String> = list_items(&full)
        .iter()
        .map(|i| {
            i["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut rv = None;
    let mut pages = 0;
    loop {
        let q = if token.is_empty() {
            format!("{base}?limit=7")
        } else {
            format!("{base}?limit=7&continue={token}")
        };
        let (code, page) = call(&hub, "GET", &q, &[]).await?;
        ensure!(code == 200, "page {pages}: {code} {page}");
        pages += 1;
        let page_rv = page["metadata"]["resourceVersion"].clone();
        ensure!(
            rv.get_or_insert_with(|| page_rv.clone()) == &page_rv,
            "pages at different versions"
        );
        for item in list_items(&page) {
            if item["metadata"]["name"] == "cm-20" {
                ensure!(
                    item["data"]["v"] == "20",
                    "a change between pages showed: {item}"
                );
            }
            seen.push(
                item["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            );
        }
        if pages == 1 {
            scale_agent_e2e::converge::put_cm(&cms, "cm-20", "changed").await?;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        match page["metadata"]["continue"].as_str() {
            Some(t) if !t.is_empty() => token = t.to_owned(),
            _ => break,
        }
    }
    ensure!(
        pages == 5 && seen == want,
        "{pages} pages: {seen:?}, want {want:?}"
    );
    // What the cache cannot answer exactly goes to the cluster, which gives its own
    // answer: a field it does not index, a resource the agent does not stream.
    for q in [
        format!("{base}?fieldSelector=data.v%3D1"),
        format!("/api/v1/namespaces/{ns}/endpoints"),
    ] {
        let (code, through) = call(&hub, "GET", &q, &[]).await?;
        let (dcode, direct) = direct_call(cluster, &q).await?;
        ensure!(
            code == dcode
                && through["message"] == direct["message"]
                && list_items(&through).len() == list_items(&direct).len(),
            "{q}: through the hub {code} {}, directly {dcode} {}",
            through["message"],
            direct["message"]
        );
    }
    // Namespaces, for an account that streams only some: the cluster's list, with the
    // namespaces the cache does not hold. (Not compared by count: other tests create
    // namespaces on the same cluster meanwhile.)
    let (code, through) = call(&hub, "GET", "/api/v1/namespaces", &[]).await?;
    let items = list_items(&through);
    let names: Vec<&str> = items
        .iter()
        .filter_map(|i| i["metadata"]["name"].as_str())
        .collect();
    ensure!(
        code == 200 && names.contains(&"kube-system") && names.contains(&ns.as_str()),
        "/api/v1/namespaces through the hub: {code} {names:?}"
    );
    Ok(())
}

/// What a watcher and the cluster must agree on about a ConfigMap: its name, its
/// resourceVersion and its `v`.
fn seen(c: &k8s_openapi::api::core::v1::ConfigMap) -> (String, String, String) {
    (
        c.metadata.name.clone().unwrap_or_default(),
        c.metadata.resource_version.clone().unwrap_or_default(),
        c.data
            .as_ref()
            .and_then(|d| d.get("v").cloned())
            .unwrap_or_default(),
    )
}

async fn watchers(env: Arc<Env>) -> anyhow::Result<()> {
    use futures::StreamExt as _;
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::runtime::{WatchStreamExt as _, reflector, watcher};
    let mut rig = rig(&env, "kwt", &[]).await?;
    let ns = rig.s.ns.clone();
    let cluster = target(&env, TARGET)?;
    let cms = scale_agent_e2e::converge::configmaps(cluster, &ns).await?;
    for i in 0..5 {
        scale_agent_e2e::converge::put_cm(&cms, &format!("w-{i}"), "0").await?;
    }
    cache_caught_up(&rig, &rig.target, &cms).await?;
    let hub = hub_client(&rig, &rig.target, Some(TOKEN_ALL)).await?;
    // The same watcher (kube-rs, with bookmarks) through the hub and on the cluster.
    let start = |client: kube::Client| {
        let (reader, writer) = reflector::store::<ConfigMap>();
        let stream = reflector(
            writer,
            watcher(
                kube::Api::<ConfigMap>::namespaced(client, &ns),
                watcher::Config::default(),
            ),
        )
        .default_backoff()
        .touched_objects();
        let task = tokio::spawn(async move {
            futures::pin_mut!(stream);
            while stream.next().await.is_some() {}
        });
        (reader, task)
    };
    let (through, through_task) = start(hub.clone());
    let (direct, direct_task) = start(cluster.client().await?);
    let state = |store: &reflector::Store<ConfigMap>| {
        let mut s: Vec<_> = store.state().iter().map(|c| seen(c)).collect();
        s.sort();
        s
    };
    let same = |what: &'static str| {
        let (through, direct) = (through.clone(), direct.clone());
        let cms = cms.clone();
        async move {
            wait::until(what, Duration::from_secs(60), || async {
                let fresh = cms.list(&Default::default()).await.ok()?;
                let mut want: Vec<_> = fresh.items.iter().map(seen).collect();
                want.sort();
                (state(&through) == want && state(&direct) == want).then_some(())
            })
            .await
        }
    };
    same("both watchers see the cluster's ConfigMaps").await?;
    let started = Instant::now();
    for i in 0..10 {
        scale_agent_e2e::converge::put_cm(&cms, &format!("w-{i}"), "1").await?;
    }
    for i in 0..3 {
        cms.delete(&format!("w-{i}"), &Default::default()).await?;
    }
    same("both watchers follow changes and deletions").await?;
    eprintln!(
        "changes seen through the hub's watch and directly in {:?}",
        started.elapsed()
    );
    // A watch from a version the hub cannot vouch for (older than its window) goes to
    // the cluster, which answers it from its own history: the same bytes.
    let old =
        format!("/api/v1/namespaces/{ns}/configmaps?watch=true&resourceVersion=1&timeoutSeconds=1");
    let (code, through_old) = call(&hub, "GET", &old, &[]).await?;
    let (dcode, direct_old) = direct_call(cluster, &old).await?;
    ensure!(
        code == dcode && through_old == direct_old,
        "watch from resourceVersion 1: through the hub {code} {through_old}, directly {dcode} {direct_old}"
    );
    // A watch from the hub's own list version is served from the cache.
    let before = cache_answers(&rig).await?;
    let (_, listed) = call(
        &hub,
        "GET",
        &format!("/api/v1/namespaces/{ns}/configmaps"),
        &[],
    )
    .await?;
    let rv = listed["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let recent = format!(
        "/api/v1/namespaces/{ns}/configmaps?watch=true&resourceVersion={rv}&timeoutSeconds=2"
    );
    let writer = {
        let cms = cms.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            scale_agent_e2e::converge::put_cm(&cms, "w-9", "3").await
        })
    };
    let (code, events) = call(&hub, "GET", &recent, &[]).await?;
    writer.await??;
    let events = events
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| events.to_string());
    ensure!(
        code == 200 && events.contains("\"MODIFIED\"") && events.contains("\"w-9\""),
        "watch from {rv} through the hub: {code} {events}"
    );
    ensure!(
        cache_answers(&rig).await? - before >= 2.0,
        "the list and the watch did not both come from the cache"
    );
    // The hub restarts (its cache is gone; the agent streams again): the watcher
    // through the hub watches again, lists again when told 410, and converges,
    // changes made while the hub was down included.
    // Only a deletion while the hub is down: the relist after the restart simply does
    // not list the object, and the version the watcher resumes from is not older than
    // any object the hub lists; the deletion must still reach it.
    rig.s.hub.stop();
    cms.delete("w-6", &Default::default()).await?;
    let restarted = Instant::now();
    rig.s.hub.restart().await?;
    same("the watcher through the restarted hub sees the deletion").await?;
    eprintln!(
        "converged {:?} after the hub restarted",
        restarted.elapsed()
    );
    scale_agent_e2e::converge::put_cm(&cms, "after-restart", "x").await?;
    scale_agent_e2e::converge::put_cm(&cms, "w-5", "2").await?;
    same("the watcher through the restarted hub follows new changes").await?;
    through_task.abort();
    direct_task.abort();
    Ok(())
}

async fn read_your_writes(env: Arc<Env>) -> anyhow::Result<()> {
    use k8s_openapi::api::apps::v1::Deployment;
    use kube::api::{ListParams, Patch, PatchParams};
    let rig = rig(&env, "kryw", &[]).await?;
    let ns = rig.s.ns.clone();
    let hub = hub_client(&rig, &rig.target, Some(TOKEN_ALL)).await?;
    let api: kube::Api<Deployment> = kube::Api::namespaced(hub, &ns);
    let by_name = ListParams::default().fields("metadata.name=web");
    let before = cache_answers(&rig).await?;
    let mut took = Vec::new();
    for i in 0..200 {
        let image = format!("nginx:1.{i}");
        let manifest: Value = serde_json::from_str(&deployment(&ns, &image))?;
        let started = Instant::now();
        let written = api
            .patch(
                "web",
                &PatchParams::apply("e2e-ryw").force(),
                &Patch::Apply(&manifest),
            )
            .await?;
        let generation = written.metadata.generation;
        // At once, from the cache: the new generation and image, every time.
        let list = api.list(&by_name).await?;
        took.push(started.elapsed());
        let got = list.items.first().context("web is not in the list")?;
        let got_image = got
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .and_then(|s| s.containers.first())
            .and_then(|c| c.image.clone());
        ensure!(
            got.metadata.generation == generation && got_image.as_deref() == Some(image.as_str()),
            "write {i}: wrote generation {generation:?} image {image}, read generation {:?} image {got_image:?}",
            got.metadata.generation
        );
    }
    let after = cache_answers(&rig).await?;
    ensure!(
        after - before >= 190.0,
        "only {} of 200 reads came from the cache: the barrier was not exercised",
        after - before
    );
    took.sort();
    eprintln!(
        "200 write-then-read through the hub: p50 {:?}, p99 {:?}, max {:?}; {} reads from the cache",
        took[100],
        took[197],
        took[199],
        after - before
    );
    Ok(())
}

/// The hub's Kubernetes API requests so far: (from the cache, to the cluster).
async fn answered(rig: &Rig) -> anyhow::Result<(f64, f64)> {
    let text = reqwest::get(format!("{}/metrics", rig.s.hub.http))
        .await?
        .text()
        .await?;
    let name = "scale_agent_hub_kube_api_requests_total";
    Ok((
        scale_agent_e2e::metrics::sum_with(&text, name, "source=\"cache\""),
        scale_agent_e2e::metrics::sum_with(&text, name, "source=\"cluster\""),
    ))
}

/// The hub's answers from the cache so far, by content type (`json`, `table`,
/// `protobuf`, `json_not_protobuf`).
async fn cache_answers_as(rig: &Rig, content_type: &str) -> anyhow::Result<f64> {
    let text = reqwest::get(format!("{}/metrics", rig.s.hub.http))
        .await?
        .text()
        .await?;
    Ok(scale_agent_e2e::metrics::sum_with(
        &text,
        "scale_agent_hub_kube_api_cache_answers_total",
        &format!("content_type=\"{content_type}\""),
    ))
}

/// client-go's own informer (`e2e/informer/`, client-go 0.36: it lists with a streaming
/// watch, `sendInitialEvents=true`, and asks Kubernetes protobuf first for built-in
/// kinds) through the hub: it syncs to what the cluster holds and follows a change made
/// on the cluster, not one of its requests reaches the cluster, and the hub answered
/// it in protobuf (decoded by client-go itself), never falling back to JSON.
async fn informer(env: Arc<Env>) -> anyhow::Result<()> {
    let rig = rig(&env, "kinf", &[]).await?;
    let ns = rig.s.ns.clone();
    let cluster = target(&env, TARGET)?;
    let cms = scale_agent_e2e::converge::configmaps(cluster, &ns).await?;
    for i in 0..20 {
        scale_agent_e2e::converge::put_cm(&cms, &format!("i-{i:02}"), "0").await?;
    }
    cache_caught_up(&rig, &rig.target, &cms).await?;
    let before = answered(&rig).await?;
    let protobuf_before = cache_answers_as(&rig, "protobuf").await?;
    let json_before = cache_answers_as(&rig, "json_not_protobuf").await?;
    let informer = Informer::start(
        &rig.hub_kubeconfig,
        Some(&rig.target),
        &ns,
        Duration::from_secs(120),
    )?;
    let next = |what: &str, want: fn(&Value) -> bool| -> anyhow::Result<Value> {
        informer.next(what, &want).with_context(|| rig.logs())
    };
    let start = next("start line", |v| v["event"] == "start")?;
    ensure!(
        start["watchListClient"] == true,
        "this client-go does not list with a streaming watch: {start}"
    );
    let synced = next("sync", |v| v["event"] == "synced")?;
    let mut want: Vec<String> = cms
        .list(&Default::default())
        .await?
        .items
        .iter()
        .filter_map(|c| c.metadata.name.clone())
        .collect();
    want.sort();
    ensure!(
        synced["names"] == json!(want),
        "the informer synced to {} but the cluster holds {want:?}",
        synced["names"]
    );
    scale_agent_e2e::converge::put_cm(&cms, "made-after-sync", "1").await?;
    next("ConfigMap made on the cluster after the sync", |v| {
        v["event"] == "added" && v["name"] == "made-after-sync"
    })?;
    scale_agent_e2e::converge::put_cm(&cms, "i-03", "2").await?;
    next("change of i-03", |v| {
        v["event"] == "updated" && v["name"] == "i-03"
    })?;
    let (_, err) = informer.stop()?;
    let after = answered(&rig).await?;
    eprintln!(
        "client-go informer through the hub: {} requests answered from the cache, {} reached the cluster",
        after.0 - before.0,
        after.1 - before.1
    );
    ensure!(
        after.1 == before.1,
        "{} of the informer's requests reached the cluster (from the cache: {})\n{err}",
        after.1 - before.1,
        after.0 - before.0
    );
    ensure!(
        after.0 > before.0,
        "no request of the informer was answered from the cache"
    );
    let protobuf = cache_answers_as(&rig, "protobuf").await? - protobuf_before;
    let json = cache_answers_as(&rig, "json_not_protobuf").await? - json_before;
    eprintln!("client-go informer through the hub: {protobuf} answers in protobuf, {json} in JSON");
    ensure!(
        protobuf >= 1.0 && json == 0.0,
        "the hub answered the informer's protobuf asks {protobuf} times in protobuf and {json} times in JSON"
    );
    Ok(())
}

/// The agent gone (its account waits out the grace period): kubectl's list through the
/// hub still answers, from the cache, with a Warning saying since when it is not
/// followed; a write and a read only the cluster can answer get 503 at once; the
/// account says it serves stale data.
async fn stale_reads(env: Arc<Env>) -> anyhow::Result<()> {
    let rig = rig(&env, "kstale", &[]).await?;
    let ns = rig.s.ns.clone();
    let cluster = target(&env, TARGET)?;
    let cms = scale_agent_e2e::converge::configmaps(cluster, &ns).await?;
    for i in 0..5 {
        scale_agent_e2e::converge::put_cm(&cms, &format!("s-{i}"), "0").await?;
    }
    cache_caught_up(&rig, &rig.target, &cms).await?;
    let k = Kubectl::new(&env, &rig, rig.target.clone());
    let get = ["get", "configmaps", "-n", ns.as_str(), "-o", "json"];
    // While connected (this also leaves kubectl's discovery in its disk cache:
    // discovery goes to the cluster).
    let connected = k.hub_full(&get, None)?;
    ensure!(
        connected.success && !connected.stderr.contains("disconnected"),
        "kubectl get while connected: {}",
        connected.stderr
    );
    let names = |out: &str| -> anyhow::Result<Vec<String>> {
        let list: Value = serde_json::from_str(out)?;
        let mut n: Vec<String> = items(&list).into_iter().map(|(_, name, _)| name).collect();
        n.sort();
        Ok(n)
    };
    let want = names(&connected.stdout)?;
    rig.stop_agent(&rig.target).await?;
    let away = k.hub_full(&get, None)?;
    ensure!(
        away.success,
        "kubectl get while the agent is away failed: {}",
        away.stderr
    );
    ensure!(
        names(&away.stdout)? == want,
        "while away kubectl listed {:?}, before {want:?}",
        names(&away.stdout)?
    );
    ensure!(
        away.stderr.contains(&format!(
            "Warning: account {} is disconnected: this answer is the hub's last known state of the cluster, not followed since ",
            rig.target
        )),
        "kubectl printed no warning: {}",
        away.stderr
    );
    eprintln!("kubectl while the agent is away: {}", away.stderr.trim());
    // A write, and a read only the cluster can answer (one object by name): 503 at once.
    let hub = hub_client(&rig, &rig.target, Some(TOKEN_ALL)).await?;
    let body = json!({ "apiVersion": "v1", "kind": "ConfigMap", "metadata": { "name": "written-while-away" } });
    let req = http::Request::builder()
        .method("POST")
        .uri(format!("/api/v1/namespaces/{ns}/configmaps"))
        .header("content-type", "application/json")
        .body(kube::client::Body::from(serde_json::to_vec(&body)?))?;
    let started = Instant::now();
    let response = hub.send(req).await?;
    let took = started.elapsed();
    ensure!(
        response.status().as_u16() == 503,
        "a write while away: {}",
        response.status()
    );
    ensure!(
        took < Duration::from_secs(1),
        "the write's 503 took {took:?}"
    );
    eprintln!("a write while the agent is away: 503 in {took:?}");
    // One object by name the cache holds: its last known state; one it does not
    // hold only the cluster could answer.
    let (code, by_name) = call(
        &hub,
        "GET",
        &format!("/api/v1/namespaces/{ns}/configmaps/s-1"),
        &[],
    )
    .await?;
    ensure!(
        code == 200 && by_name["metadata"]["name"] == "s-1",
        "one object by name while away: {code} {by_name}"
    );
    let missing = call(
        &hub,
        "GET",
        &format!("/api/v1/namespaces/{ns}/configmaps/not-cached"),
        &[],
    )
    .await?;
    expect_status(
        &missing,
        503,
        "ServiceUnavailable",
        "an object the cache does not hold while away",
    )?;
    let account = scale_agent_e2e::converge::account_state(&rig.s.hub, &rig.target)
        .await
        .context("the account is gone")?;
    ensure!(
        account["servingStale"] == true,
        "the account does not say it serves stale data: {account}"
    );
    let text = reqwest::get(format!("{}/metrics", rig.s.hub.http))
        .await?
        .text()
        .await?;
    let stale = scale_agent_e2e::metrics::sum_with(
        &text,
        "scale_agent_hub_kube_api_requests_total",
        "source=\"stale\"",
    );
    ensure!(stale >= 1.0, "no answer counted as stale");
    Ok(())
}

/// kubectl's printed table without its AGE column (ages differ by when each was asked).
fn without_age(out: &str) -> Vec<Vec<String>> {
    let mut lines = out.lines();
    let header: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    let age = header.iter().position(|c| *c == "AGE");
    std::iter::once(header.iter().map(|c| (*c).to_owned()).collect::<Vec<_>>())
        .chain(lines.map(|l| l.split_whitespace().map(str::to_owned).collect()))
        .map(|mut cells: Vec<String>| {
            if let Some(i) = age.filter(|i| *i < cells.len()) {
                cells.remove(i);
            }
            cells
        })
        .collect()
}

/// `kubectl get` (printed columns, and `-o wide`) of every kind of the default set, and
/// of one object by name, through the hub prints what it prints against the cluster,
/// AGE excepted, and the Tables it asks for come from the cache.
async fn tables(env: Arc<Env>) -> anyhow::Result<()> {
    let rig = rig(&env, "ktab", &[]).await?;
    let ns = rig.s.ns.clone();
    let k = Kubectl::new(&env, &rig, rig.mgmt.clone());
    for i in 0..3 {
        k.direct(&[
            "-n",
            &ns,
            "create",
            "configmap",
            &format!("t-{i}"),
            &format!("--from-literal=a={i}"),
            "--from-literal=b=x",
        ])?;
    }
    k.direct(&["-n", &ns, "create", "serviceaccount", "robot"])?;
    k.direct(&[
        "-n",
        &ns,
        "create",
        "deployment",
        "web",
        "--image=nginx:1.27",
        "--replicas=2",
    ])?;
    k.direct(&[
        "-n",
        &ns,
        "create",
        "deployment",
        "two",
        "--image=busybox",
        "--image=redis",
    ])?;
    let workloads = format!(
        r#"
apiVersion: apps/v1
kind: StatefulSet
metadata: {{ name: db, namespace: {ns} }}
spec:
  replicas: 1
  serviceName: db
  selector: {{ matchLabels: {{ app: db }} }}
  template:
    metadata: {{ labels: {{ app: db }} }}
    spec: {{ containers: [{{ name: db, image: postgres:17 }}] }}
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {{ name: agent, namespace: {ns} }}
spec:
  selector: {{ matchLabels: {{ app: agent }} }}
  template:
    metadata: {{ labels: {{ app: agent }} }}
    spec:
      nodeSelector: {{ kubernetes.io/os: linux }}
      containers: [{{ name: agent, image: busybox }}, {{ name: side, image: redis }}]
---
apiVersion: v1
kind: Service
metadata: {{ name: web, namespace: {ns} }}
spec:
  selector: {{ app: web, tier: front }}
  ports: [{{ port: 80, name: http }}, {{ port: 53, protocol: UDP, name: dns }}]
---
apiVersion: v1
kind: Service
metadata: {{ name: edge, namespace: {ns} }}
spec:
  type: NodePort
  externalIPs: [192.0.2.10]
  selector: {{ app: web }}
  ports: [{{ port: 443 }}]
---
apiVersion: batch/v1
kind: CronJob
metadata: {{ name: nightly, namespace: {ns} }}
spec:
  schedule: "0 3 * * *"
  timeZone: Europe/Paris
  suspend: true
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: Never
          containers: [{{ name: backup, image: busybox }}]
---
apiVersion: batch/v1
kind: Job
metadata: {{ name: migrate, namespace: {ns} }}
spec:
  suspend: true
  completions: 3
  parallelism: 2
  template:
    spec:
      restartPolicy: Never
      containers: [{{ name: migrate, image: busybox }}, {{ name: side, image: redis }}]
---
apiVersion: batch/v1
kind: Job
metadata: {{ name: once, namespace: {ns} }}
spec:
  suspend: true
  parallelism: 4
  template:
    spec:
      restartPolicy: Never
      containers: [{{ name: once, image: busybox }}]
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {{ name: web, namespace: {ns} }}
spec:
  tls: [{{ hosts: [a.example], secretName: web-tls }}]
  rules:
  - host: a.example
    http: {{ paths: [{{ path: /, pathType: Prefix, backend: {{ service: {{ name: web, port: {{ number: 80 }} }} }} }}] }}
  - host: b.example
    http: {{ paths: [{{ path: /, pathType: Prefix, backend: {{ service: {{ name: web, port: {{ number: 80 }} }} }} }}] }}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{ name: web-only, namespace: {ns} }}
spec:
  podSelector: {{ matchLabels: {{ app: web }} }}
  policyTypes: [Ingress]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{ name: all, namespace: {ns} }}
spec:
  podSelector: {{}}
  policyTypes: [Egress]
---
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata: {{ name: web, namespace: {ns} }}
spec:
  scaleTargetRef: {{ apiVersion: apps/v1, kind: Deployment, name: web }}
  minReplicas: 2
  maxReplicas: 4
  metrics:
  - type: Resource
    resource: {{ name: cpu, target: {{ type: Utilization, averageUtilization: 70 }} }}
  - type: Resource
    resource: {{ name: memory, target: {{ type: AverageValue, averageValue: 100Mi }} }}
"#
    );
    let applied = k.direct_full(&["apply", "-f", "-"], Some(&workloads))?;
    ensure!(
        applied.success,
        "applying the workloads: {}",
        applied.stderr
    );
    // Warm kubectl's discovery cache (discovery goes to the cluster).
    k.hub(&["-n", &ns, "get", "configmaps"], None)?;
    // Every kind, and one object by name (`kubectl get KIND NAME`), each also `-o wide`.
    let gets: Vec<Vec<&str>> = [
        vec!["configmaps"],
        vec!["serviceaccounts"],
        vec!["deployments"],
        vec!["replicasets"],
        vec!["statefulsets"],
        vec!["daemonsets"],
        vec!["services"],
        vec!["jobs"],
        vec!["cronjobs"],
        vec!["ingresses"],
        vec!["networkpolicies"],
        vec!["pods"],
        vec!["horizontalpodautoscalers"],
        vec!["deployment", "web"],
        vec!["configmap", "t-0"],
        vec!["service", "edge"],
        vec!["hpa", "web"],
        vec!["job", "migrate"],
    ]
    .iter()
    .flat_map(|what| {
        let mut get = vec!["-n", ns.as_str(), "get"];
        get.extend(what.iter().copied());
        let mut wide = get.clone();
        wide.extend(["-o", "wide"]);
        [get, wide]
    })
    .collect();
    let (cache_before, _) = answered(&rig).await?;
    for args in &gets {
        // The cache follows the cluster (Deployments roll out meanwhile): the same
        // table within a while.
        let mut last = (String::new(), String::new());
        let same = wait::until(
            "the same table through the hub and directly",
            Duration::from_secs(30),
            || {
                let through = k.hub(args, None);
                let direct = k.direct(args);
                let outcome = match (through, direct) {
                    (Ok(t), Ok(d)) => {
                        let same = without_age(&t) == without_age(&d) && t.lines().count() > 1;
                        last = (t, d);
                        same.then_some(())
                    }
                    _ => None,
                };
                async move { outcome }
            },
        )
        .await;
        ensure!(
            same.is_ok(),
            "kubectl {args:?}: through the hub\n{}\ndirectly\n{}",
            last.0,
            last.1
        );
        eprintln!("kubectl {}:\n{}", args.join(" "), last.0);
    }
    let (cache_after, _) = answered(&rig).await?;
    ensure!(
        cache_after - cache_before >= gets.len() as f64,
        "only {} of {} tables came from the cache",
        cache_after - cache_before,
        gets.len()
    );
    // Once settled, each again: not one reaches the cluster.
    let (cache_before, cluster_before) = answered(&rig).await?;
    for args in &gets {
        k.hub(args, None)?;
    }
    let (cache_after, cluster_after) = answered(&rig).await?;
    eprintln!(
        "{} tables: {} requests from the cache, {} to the cluster",
        gets.len(),
        cache_after - cache_before,
        cluster_after - cluster_before
    );
    ensure!(
        cluster_after == cluster_before,
        "of {} tables, {} requests went to the cluster",
        gets.len(),
        cluster_after - cluster_before
    );
    Ok(())
}

/// `kubectl get KIND NAME -o json|yaml` (how Clouddriver reads every object it deploys)
/// through the hub prints exactly what it prints against the cluster, the
/// last-applied annotation of a client-side apply included, and none of these reads
/// reaches the cluster.
async fn objects_by_name(env: Arc<Env>) -> anyhow::Result<()> {
    let rig = rig(&env, "kget", &[]).await?;
    let ns = rig.s.ns.clone();
    let k = Kubectl::new(&env, &rig, rig.mgmt.clone());
    let applied = k.direct_full(
        &["apply", "-f", "-"],
        Some(&format!(
            r#"
apiVersion: v1
kind: ConfigMap
metadata: {{ name: settings, namespace: {ns}, labels: {{ app: web }} }}
data: {{ a: "1", b: two }}
---
apiVersion: v1
kind: ServiceAccount
metadata: {{ name: robot, namespace: {ns} }}
"#
        )),
    )?;
    ensure!(applied.success, "apply: {}", applied.stderr);
    k.direct_full(&["apply", "-f", "-"], Some(&deployment(&ns, "nginx:1.27")))?;
    // Warm kubectl's discovery cache (discovery goes to the cluster).
    k.hub(&["-n", &ns, "get", "configmaps"], None)?;
    let gets: Vec<Vec<&str>> = [
        ("configmap", "settings"),
        ("serviceaccount", "robot"),
        ("deployment", "web"),
        ("namespace", ns.as_str()),
    ]
    .iter()
    .flat_map(|(kind, name)| {
        ["json", "yaml"].map(|o| vec!["-n", ns.as_str(), "get", *kind, *name, "-o", o])
    })
    .collect();
    // The cache follows the cluster (the Deployment rolls out meanwhile): the same
    // output within a while.
    for args in &gets {
        let mut last = (String::new(), String::new());
        let same = wait::until(
            "the same object through the hub and directly",
            Duration::from_secs(30),
            || {
                let outcome = match (k.hub(args, None), k.direct(args)) {
                    (Ok(t), Ok(d)) => {
                        let same = t == d;
                        last = (t, d);
                        same.then_some(())
                    }
                    _ => None,
                };
                async move { outcome }
            },
        )
        .await;
        ensure!(
            same.is_ok(),
            "kubectl {args:?}: through the hub\n{}\ndirectly\n{}",
            last.0,
            last.1
        );
    }
    // What keeping the last-applied annotation costs the hub's memory, for objects
    // deployed by a client-side apply as Clouddriver deploys them.
    for (kind, name) in [("configmap", "settings"), ("deployment", "web")] {
        let object: Value =
            serde_json::from_str(&k.hub(&["-n", &ns, "get", kind, name, "-o", "json"], None)?)?;
        let applied =
            object["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"]
                .as_str()
                .map(str::len);
        let Some(applied) = applied else {
            bail!("the client-side apply's annotation is missing: {object}");
        };
        eprintln!(
            "{kind}/{name}: {} bytes as the hub keeps it, {applied} of them the last-applied annotation",
            object.to_string().len()
        );
    }
    // Counted once everything has settled: each read once more.
    let (cache_before, cluster_before) = answered(&rig).await?;
    for args in &gets {
        k.hub(args, None)?;
    }
    let (cache_after, cluster_after) = answered(&rig).await?;
    eprintln!(
        "{} reads by name: {} from the cache, {} to the cluster",
        gets.len(),
        cache_after - cache_before,
        cluster_after - cluster_before
    );
    ensure!(
        cache_after - cache_before >= gets.len() as f64 && cluster_after == cluster_before,
        "of {} reads by name, {} came from the cache and {} went to the cluster",
        gets.len(),
        cache_after - cache_before,
        cluster_after - cluster_before
    );
    Ok(())
}

/// Discovery and OpenAPI through the hub: once the agent follows the cluster's CRDs
/// and APIServices, a kubectl with an empty discovery cache (a new Clouddriver pod,
/// every `kubectl` of a CI job) runs without one request reaching the cluster; the
/// per-group form older clients use (client-go 0.26) and OpenAPI are the cluster's
/// bytes; a CRD created on the cluster is served through the hub at once.
async fn discovery_from_memory(env: Arc<Env>) -> anyhow::Result<()> {
    let rig = rig(&env, "kdisc", &[]).await?;
    let ns = rig.s.ns.clone();
    let k = Kubectl::new(&env, &rig, rig.mgmt.clone());
    let caches = rig.s.dir.path().join("kubectl-caches");
    let mut runs = 0;
    // A kubectl process with nothing cached: discovery, then a list.
    let mut fresh = |args: &[&str]| {
        runs += 1;
        k.hub_cached_in(&caches.join(runs.to_string()), args)
    };
    // The agent follows CRDs and APIServices shortly after it registers; from then on
    // the first kubectl fills the hub's memory and the next asks the cluster nothing.
    let deadline = Instant::now() + Duration::from_secs(30);
    let last = loop {
        let (c0, x0) = answered(&rig).await?;
        let out = fresh(&["-n", ns.as_str(), "get", "configmaps", "-o", "name"])?;
        let (c1, x1) = answered(&rig).await?;
        let last = (c1 - c0, x1 - x0);
        if out.success && x1 == x0 && c1 > c0 {
            break last;
        }
        ensure!(
            Instant::now() < deadline,
            "a kubectl with an empty discovery cache: {} requests from the hub, {} to the cluster ({})",
            last.0,
            last.1,
            out.stderr
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    eprintln!(
        "a kubectl with an empty discovery cache: {} requests from the hub, {} to the cluster",
        last.0, last.1
    );
    // The per-group form and OpenAPI (of the other account): the cluster's answers; once
    // kept, read again without the cluster.
    let hub = hub_client(&rig, &rig.target, Some(TOKEN_ALL)).await?;
    let cluster = target(&env, TARGET)?;
    let paths = [
        "/version",
        "/api",
        "/api/v1",
        "/apis",
        "/apis/apps/v1",
        "/openapi/v2",
        "/openapi/v3",
    ];
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (c0, x0) = answered(&rig).await?;
        for p in paths {
            let through = call(&hub, "GET", p, &[]).await?;
            let direct = direct_call(cluster, p).await?;
            ensure!(through == direct, "{p} differs through the hub");
        }
        let (c1, x1) = answered(&rig).await?;
        eprintln!(
            "{} discovery and OpenAPI reads: {} from the hub, {} to the cluster",
            paths.len(),
            c1 - c0,
            x1 - x0
        );
        if x1 == x0 && c1 - c0 >= paths.len() as f64 {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "discovery read again: {} from the hub, {} to the cluster",
            c1 - c0,
            x1 - x0
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // What that costs the hub: the kubectl's discovery of one account, and the
    // per-group discovery and OpenAPI v2 and v3 of the other.
    let kept = metric(
        &format!("{}/metrics", rig.s.hub.http),
        "scale_agent_hub_kube_api_discovery_bytes",
    )
    .await?;
    eprintln!("discovery and OpenAPI kept by the hub: {kept} bytes");
    ensure!(kept > 0.0, "the hub says it keeps no discovery");
    // A new CRD on the cluster: a kubectl through the hub finds its kind.
    let group = format!("{}.e2e.scaleagent.dev", rig.mgmt);
    let crd = crd_manifest(&group, "widget", "Widget", "");
    // On the target cluster, which the tests counting the management account's
    // requests do not ask through their hubs.
    let on_target = |args: &[&str], stdin: Option<&str>| {
        kubectl::run_full(&env.cp.bins.kubectl, &cluster.kubeconfig, args, stdin)
    };
    let kt = Kubectl::new(&env, &rig, rig.target.clone());
    let created = on_target(&["apply", "-f", "-"], Some(&crd))?;
    ensure!(created.success, "creating the CRD: {}", created.stderr);
    let deadline = Instant::now() + Duration::from_secs(30);
    let found = loop {
        runs += 1;
        let out = kt.hub_cached_in(
            &caches.join(runs.to_string()),
            &["-n", ns.as_str(), "get", &format!("widgets.{group}")],
        )?;
        if out.success {
            break Ok(());
        }
        if Instant::now() > deadline {
            break Err(out.stderr);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    on_target(&["delete", "crd", &format!("widgets.{group}")], None)?;
    if let Err(last) = found {
        bail!("kubectl through the hub never found the new CRD's kind: {last}");
    }
    Ok(())
}

/// Clouddriver's caching cycle for an account (its `kubectl get <every kind> -n <ns> -o
/// json`, and its Namespace) and one deploy stage (`kubectl apply`, then reads of the
/// object until it is stable), each a new kubectl process with nothing cached, through
/// the hub: they print what the same commands print against the cluster; of the
/// caching cycle not one request reaches the cluster, of the deploy stage only the
/// apply's.
async fn caching_cycle(env: Arc<Env>) -> anyhow::Result<()> {
    let rig = rig(&env, "kcyc", &[]).await?;
    let ns = rig.s.ns.clone();
    let k = Kubectl::new(&env, &rig, rig.mgmt.clone());
    let caches = rig.s.dir.path().join("kubectl-caches");
    let applied = k.direct_full(
        &["apply", "-f", "-"],
        Some(&format!(
            r#"
apiVersion: v1
kind: ConfigMap
metadata: {{ name: settings, namespace: {ns} }}
data: {{ a: "1" }}
---
apiVersion: v1
kind: Service
metadata: {{ name: web, namespace: {ns} }}
spec: {{ selector: {{ app: web }}, ports: [{{ port: 80 }}] }}
---
apiVersion: batch/v1
kind: CronJob
metadata: {{ name: nightly, namespace: {ns} }}
spec:
  schedule: "0 3 * * *"
  suspend: true
  jobTemplate: {{ spec: {{ template: {{ spec: {{ restartPolicy: Never, containers: [{{ name: b, image: busybox }}] }} }} }} }}
"#
        )),
    )?;
    ensure!(applied.success, "apply: {}", applied.stderr);
    let kinds = "deployment,replicaset,statefulset,daemonset,pod,service,configmap,serviceaccount,persistentvolumeclaim,job,cronjob,horizontalpodautoscaler,ingress,networkpolicy";
    let cycle: Vec<Vec<&str>> = vec![
        vec!["get", kinds, "-n", ns.as_str(), "-o", "json"],
        vec![
            "get",
            kinds,
            "-n",
            ns.as_str(),
            "-l",
            "app.kubernetes.io/managed-by=spinnaker",
            "-o",
            "json",
        ],
        vec!["get", "namespace", ns.as_str(), "-o", "json"],
    ];
    let mut runs = 0;
    let mut fresh = |args: &[&str]| {
        runs += 1;
        k.hub_cached_in(&caches.join(runs.to_string()), args)
    };
    // The first kubectl fills the hub's discovery once the agent follows the cluster's
    // CRDs; the cache follows the cluster (the Deployment rolls out meanwhile): the
    // same output within a while, then counted.
    let deadline = Instant::now() + Duration::from_secs(60);
    let (measured, cache, cluster) = loop {
        let (c0, x0) = answered(&rig).await?;
        let mut same = true;
        let mut last = String::new();
        for args in &cycle {
            let through = fresh(args)?;
            let direct = k.direct(args)?;
            if !through.success || through.stdout != direct {
                same = false;
                last = format!(
                    "kubectl {args:?}: through the hub\n{}{}\ndirectly\n{direct}",
                    through.stdout, through.stderr
                );
            }
        }
        let (c1, x1) = answered(&rig).await?;
        if same && x1 == x0 {
            break (cycle.len(), c1 - c0, x1 - x0);
        }
        ensure!(
            Instant::now() < deadline,
            "the caching cycle: {} requests from the hub, {} to the cluster; {last}",
            c1 - c0,
            x1 - x0
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    eprintln!(
        "caching cycle ({measured} kubectl processes, each with an empty discovery cache): {cache} requests from the hub, {cluster} to the cluster"
    );
    // The deploy stage.
    let (c0, x0) = answered(&rig).await?;
    let deployed = k.hub_full(
        &["apply", "-f", "-", "-o", "json"],
        Some(&deployment(&ns, "nginx:1.27")),
    )?;
    ensure!(deployed.success, "apply: {}", deployed.stderr);
    let (c1, x1) = answered(&rig).await?;
    let read = ["get", "deployment", "web", "-n", ns.as_str(), "-o", "json"];
    let stable = wait::until(
        "the Deployment stable, read through the hub",
        Duration::from_secs(60),
        || {
            let got = fresh(&read)
                .ok()
                .filter(|o| o.success)
                .and_then(|o| serde_json::from_str::<Value>(&o.stdout).ok());
            let done = got.is_some_and(|d| {
                d["status"]["observedGeneration"] == d["metadata"]["generation"]
                    && d["status"]["readyReplicas"] == d["spec"]["replicas"]
            });
            async move { done.then_some(()) }
        },
    )
    .await;
    ensure!(
        stable.is_ok(),
        "the Deployment never looked stable through the hub"
    );
    let (c2, x2) = answered(&rig).await?;
    let through = fresh(&read)?;
    ensure!(
        through.stdout == k.direct(&read)?,
        "the deployed object differs through the hub"
    );
    eprintln!(
        "deploy stage: apply {} from the hub, {} to the cluster; reads until stable {} from the hub, {} to the cluster",
        c1 - c0,
        x1 - x0,
        c2 - c1,
        x2 - x1
    );
    ensure!(
        x2 == x1,
        "the deploy stage's reads: {} requests reached the cluster",
        x2 - x1
    );
    caching_cycle_while_away(&rig, &k, &cycle, &mut fresh).await
}

/// The agent stopped (the account waits out its grace period): the same caching cycle,
/// each a new kubectl process with nothing cached, still prints what the cluster holds,
/// from the hub's last known state, and kubectl shows the Warning saying so; a write
/// gets 503 at once, saying why.
async fn caching_cycle_while_away(
    rig: &Rig,
    k: &Kubectl<'_>,
    cycle: &[Vec<&str>],
    fresh: &mut impl FnMut(&[&str]) -> anyhow::Result<Output>,
) -> anyhow::Result<()> {
    // What the hub prints while it follows the cluster, equal to the cluster's (the
    // Deployment's rollout may still be settling).
    let mut want = Vec::new();
    let settled = wait::until(
        "the caching cycle through the hub equal to the cluster",
        Duration::from_secs(30),
        || {
            let outputs: Option<Vec<String>> = cycle
                .iter()
                .map(|args| {
                    let through = fresh(args).ok().filter(|o| o.success)?;
                    (k.direct(args).ok()? == through.stdout).then_some(through.stdout)
                })
                .collect();
            let done = outputs.map(|o| want = o).is_some();
            async move { done.then_some(()) }
        },
    )
    .await;
    ensure!(
        settled.is_ok(),
        "the caching cycle never settled before the agent stopped"
    );
    rig.stop_agent(&rig.mgmt).await?;
    let warning = format!(
        "Warning: account {} is disconnected: this answer is the hub's last known state of the cluster, not followed since ",
        rig.mgmt
    );
    for (args, want) in cycle.iter().zip(&want) {
        let away = fresh(args)?;
        ensure!(
            away.success && away.stdout == *want,
            "kubectl {args:?} while the agent is away:\n{}{}",
            away.stdout,
            away.stderr
        );
        ensure!(
            away.stderr.contains(&warning),
            "kubectl {args:?} while the agent is away printed no warning: {}",
            away.stderr
        );
    }
    eprintln!(
        "caching cycle while the agent is away: {} kubectl processes answered from the hub's last known state",
        cycle.len()
    );
    let started = Instant::now();
    let write = k.hub_full(
        &["apply", "-f", "-"],
        Some(&deployment(&rig.s.ns, "nginx:1.28")),
    )?;
    let took = started.elapsed();
    ensure!(
        !write.success && write.stderr.contains("is disconnected"),
        "kubectl apply while the agent is away: {}{}",
        write.stdout,
        write.stderr
    );
    eprintln!(
        "kubectl apply while the agent is away, {took:?}: {}",
        write.stderr.trim()
    );
    Ok(())
}

/// `kubectl get -w` printing columns through the hub: the list and then the watch of
/// Tables come from the cache (not one request reaches the cluster), and it prints a
/// change made on the cluster as kubectl prints it directly.
/// Waits until the hub keeps the account's discovery: a kubectl with an empty discovery
/// cache running `get` asks the cluster nothing. The hub keeps discovery (`/version`
/// included) only while the agent's report of the cluster's API surface stands, and
/// drops it when that changes (as it does while the APIServices settle after a start).
async fn discovery_kept(rig: &Rig, k: &Kubectl<'_>, get: &[&str]) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, x0) = answered(rig).await?;
        let cache = tempfile::tempdir()?;
        let tried = k.hub_cached_in(cache.path(), get)?;
        let (_, x1) = answered(rig).await?;
        if tried.success && x1 == x0 {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "kubectl get kept asking the cluster"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn watched_tables(env: Arc<Env>) -> anyhow::Result<()> {
    let rig = rig(&env, "kwat", &[]).await?;
    let ns = rig.s.ns.clone();
    let k = Kubectl::new(&env, &rig, rig.mgmt.clone());
    let get = ["-n", ns.as_str(), "get", "configmaps"];
    discovery_kept(&rig, &k, &get).await?;
    let (c0, x0) = answered(&rig).await?;
    let printed = k.hub_watch(
        &["-n", ns.as_str(), "get", "configmaps", "-w"],
        "w-1",
        || {
            k.direct_full(
                &[
                    "-n",
                    ns.as_str(),
                    "create",
                    "configmap",
                    "w-1",
                    "--from-literal=a=1",
                    "--from-literal=b=2",
                ],
                None,
            )
            .map(|_| ())
        },
    )?;
    let (c1, x1) = answered(&rig).await?;
    let direct = k.direct(&["-n", ns.as_str(), "get", "configmap", "w-1"])?;
    let row = |out: &str| {
        without_age(out)
            .into_iter()
            .find(|cells| cells.first().is_some_and(|c| c == "w-1"))
    };
    ensure!(
        row(&printed).is_some() && row(&printed) == row(&direct),
        "kubectl get -w through the hub printed:\n{printed}\ndirectly:\n{direct}"
    );
    eprintln!(
        "kubectl get -w: {} requests from the hub, {} to the cluster",
        c1 - c0,
        x1 - x0
    );
    ensure!(
        x1 == x0 && c1 - c0 >= 2.0,
        "kubectl get -w: {} requests from the hub, {} to the cluster",
        c1 - c0,
        x1 - x0
    );
    // `kubectl get KIND NAME -w`: the object's Table, then a watch of Tables from "0"
    // (its initial event first), both from the cache; kubectl prints the change.
    discovery_kept(&rig, &k, &get).await?;
    let (c0, x0) = answered(&rig).await?;
    let printed = k.hub_watch(
        &[
            "-n",
            ns.as_str(),
            "get",
            "configmap",
            "w-1",
            "-w",
            "--output-watch-events",
        ],
        "MODIFIED",
        || {
            k.direct_full(
                &[
                    "-n",
                    ns.as_str(),
                    "patch",
                    "configmap",
                    "w-1",
                    "-p",
                    r#"{"data":{"c":"3"}}"#,
                ],
                None,
            )
            .map(|_| ())
        },
    )?;
    let (c1, x1) = answered(&rig).await?;
    let modified = without_age(&printed)
        .into_iter()
        .find(|cells| cells.first().is_some_and(|c| c == "MODIFIED"));
    ensure!(
        modified.as_deref() == Some(&["MODIFIED".to_owned(), "w-1".to_owned(), "3".to_owned()][..]),
        "kubectl get configmap w-1 -w through the hub printed:\n{printed}"
    );
    eprintln!(
        "kubectl get configmap w-1 -w: {} requests from the hub, {} to the cluster",
        c1 - c0,
        x1 - x0
    );
    ensure!(
        x1 == x0,
        "kubectl get configmap w-1 -w: {} requests to the cluster",
        x1 - x0
    );
    // A streaming list of Tables (initial events, then the bookmark that ends them),
    // as the API server writes it.
    let path = format!(
        "/api/v1/namespaces/{ns}/configmaps?watch=1&sendInitialEvents=true&allowWatchBookmarks=true&resourceVersionMatch=NotOlderThan&timeoutSeconds=2"
    );
    let accept = [("accept", "application/json;as=Table;v=v1;g=meta.k8s.io")];
    let hub = hub_client(&rig, &rig.mgmt, Some(TOKEN_ALL)).await?;
    let (c0, x0) = answered(&rig).await?;
    let through = call(&hub, "GET", &path, &accept).await?;
    let (_, x1) = answered(&rig).await?;
    let direct = call(&env.cp.management.client().await?, "GET", &path, &accept).await?;
    // What follows the initial-events-end bookmark (a periodic bookmark before the
    // timeout) depends on when each server's timer fires, not on what it serves.
    let (through, direct) = (table_events(&through.1)?, table_events(&direct.1)?);
    let (through, direct) = (initial_events(&through), initial_events(&direct));
    ensure!(
        through == direct,
        "a streaming list of Tables:\nthrough the hub {through:#?}\ndirectly {direct:#?}"
    );
    ensure!(
        x1 == x0,
        "a streaming list of Tables reached the cluster ({} requests from the hub)",
        answered(&rig).await?.0 - c0
    );
    Ok(())
}

/// What an event of a watch of Tables shows: its type, whether it carries the column
/// definitions, the row's cells without the age, the row's initial-events-end annotation.
type TableEvent = (String, bool, Vec<Value>, Value);

/// The events of a streaming list up to and including the bookmark that ends its
/// initial events (all of them when no event ends them).
fn initial_events(events: &[TableEvent]) -> &[TableEvent] {
    let end = events
        .iter()
        .position(|e| e.0 == "BOOKMARK" && e.3 == "true")
        .map_or(events.len(), |i| i + 1);
    &events[..end]
}

/// The events of a watch of Tables (its body, one JSON event a line) as what they
/// show: the type, whether the Table carries column definitions, each row's cells
/// without the age, and the row's initial-events-end annotation.
fn table_events(body: &Value) -> anyhow::Result<Vec<TableEvent>> {
    let text = body
        .as_str()
        .map_or_else(|| body.to_string(), str::to_owned);
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let event: Value = serde_json::from_str(line).with_context(|| format!("event {line}"))?;
        let table = &event["object"];
        let columns = table["columnDefinitions"].as_array();
        let age = columns
            .and_then(|c| c.iter().position(|c| c["name"] == "Age"))
            .unwrap_or(2);
        let row = &table["rows"][0];
        let mut cells = row["cells"].as_array().cloned().unwrap_or_default();
        if age < cells.len() {
            cells.remove(age);
        }
        out.push((
            event["type"].as_str().unwrap_or_default().to_owned(),
            columns.is_some_and(|c| !c.is_empty()),
            cells,
            row["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"].clone(),
        ));
    }
    Ok(out)
}

/// A namespaced CRD of `group` whose kind is `kind` (plural `<singular>s`), served at
/// v1 with any fields; `version_extra` is added to its version (YAML, indented 4).
fn crd_manifest(group: &str, singular: &str, kind: &str, version_extra: &str) -> String {
    format!(
        r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {{ name: {singular}s.{group} }}
spec:
  group: {group}
  scope: Namespaced
  names: {{ plural: {singular}s, singular: {singular}, kind: {kind} }}
  versions:
  - name: v1
    served: true
    storage: true
    schema: {{ openAPIV3Schema: {{ type: object, x-kubernetes-preserve-unknown-fields: true }} }}{version_extra}
"#
    )
}

/// A custom resource's `kubectl get` (its CRD's `additionalPrinterColumns`, `-o wide`
/// and one object by name) through the hub prints what it prints against the cluster,
/// AGE excepted, and once the hub has read the CRD not one of these reaches the cluster.
async fn custom_resource_tables(env: Arc<Env>) -> anyhow::Result<()> {
    let name = "kcrd";
    let group = format!("{name}-mgmt.e2e.scaleagent.dev");
    let crd = crd_manifest(
        &group,
        "gadget",
        "Gadget",
        r#"
    additionalPrinterColumns:
    - { name: Size, type: integer, jsonPath: .spec.size }
    - { name: Color, type: string, jsonPath: .spec.color, description: the gadget's color }
    - { name: Wheels, type: string, jsonPath: '.spec.parts[?(@.kind=="wheel")].count' }
    - { name: Shiny, type: boolean, jsonPath: .spec.shiny }
    - { name: Since, type: date, jsonPath: .spec.since }
    - { name: Owner, type: string, jsonPath: .metadata.labels.owner, priority: 1 }"#,
    );
    let direct = |args: &[&str], stdin: Option<&str>| {
        kubectl::run_full(
            &env.cp.bins.kubectl,
            &env.cp.management.kubeconfig,
            args,
            stdin,
        )
    };
    let created = direct(&["apply", "-f", "-"], Some(&crd))?;
    ensure!(created.success, "creating the CRD: {}", created.stderr);
    let established = direct(
        &[
            "wait",
            "--for=condition=Established",
            "--timeout=30s",
            &format!("crd/gadgets.{group}"),
        ],
        None,
    )?;
    ensure!(established.success, "the CRD: {}", established.stderr);
    let rig = rig_streaming(
        &env,
        name,
        &[],
        &["ConfigMap", &format!("Gadget.{group}")],
        "600s",
    )
    .await?;
    let ns = rig.s.ns.clone();
    let k = Kubectl::new(&env, &rig, rig.mgmt.clone());
    let gadgets = format!(
        r#"
apiVersion: {group}/v1
kind: Gadget
metadata: {{ name: g1, namespace: {ns}, labels: {{ owner: ann }} }}
spec:
  size: 3
  color: red
  shiny: true
  since: "2026-01-01T00:00:00Z"
  parts: [{{ kind: bolt, count: 9 }}, {{ kind: wheel, count: 4 }}]
---
apiVersion: {group}/v1
kind: Gadget
metadata: {{ name: g2, namespace: {ns} }}
spec: {{ size: 1, parts: [{{ kind: bolt, count: 2 }}] }}
"#
    );
    let applied = k.direct_full(&["apply", "-f", "-"], Some(&gadgets))?;
    ensure!(applied.success, "the gadgets: {}", applied.stderr);
    let gets: Vec<Vec<&str>> = vec![
        vec!["-n", ns.as_str(), "get", "gadgets"],
        vec!["-n", ns.as_str(), "get", "gadgets", "-o", "wide"],
        vec!["-n", ns.as_str(), "get", "gadget", "g1"],
        vec!["-n", ns.as_str(), "get", "gadget", "g2", "-o", "wide"],
    ];
    // The agent follows the CRDs shortly after it registers; from then on the hub
    // reads the CRD once and prints from the cache.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (c0, x0) = answered(&rig).await?;
        let mut differ = None;
        for args in &gets {
            let through = k.hub(args, None)?;
            let direct = k.direct(args)?;
            if without_age(&through) != without_age(&direct) || through.lines().count() < 2 {
                differ = Some(format!(
                    "kubectl {args:?}: through the hub\n{through}\ndirectly\n{direct}"
                ));
            }
        }
        let (c1, x1) = answered(&rig).await?;
        if differ.is_none() && x1 == x0 {
            eprintln!(
                "{} custom resource tables: {} requests from the cache, 0 to the cluster",
                gets.len(),
                c1 - c0
            );
            break;
        }
        if Instant::now() > deadline {
            direct(&["delete", "crd", &format!("gadgets.{group}")], None)?;
            bail!(
                "custom resource tables: {} requests went to the cluster; {}",
                x1 - x0,
                differ.unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    direct(&["delete", "crd", &format!("gadgets.{group}")], None)?;
    Ok(())
}

/// What the hub keeps of a cluster's discovery shows in
/// `scale_agent_hub_kube_api_discovery_bytes`, and is forgotten once the account is
/// removed (its agent gone past the grace period).
async fn discovery_forgotten(env: Arc<Env>) -> anyhow::Result<()> {
    let rig = rig_streaming(&env, "kforget", &[], &[], "3s").await?;
    let ns = rig.s.ns.clone();
    let k = Kubectl::new(&env, &rig, rig.mgmt.clone());
    let caches = rig.s.dir.path().join("kubectl-caches");
    let bytes = || async {
        metric(
            &format!("{}/metrics", rig.s.hub.http),
            "scale_agent_hub_kube_api_discovery_bytes",
        )
        .await
    };
    // Once the agent follows the cluster's CRDs, a kubectl with nothing cached leaves
    // the cluster's discovery in the hub's memory.
    let mut runs = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    let kept = loop {
        runs += 1;
        let out = k.hub_cached_in(
            &caches.join(runs.to_string()),
            &["-n", ns.as_str(), "get", "configmaps"],
        )?;
        ensure!(out.success, "kubectl through the hub: {}", out.stderr);
        let kept = bytes().await?;
        if kept > 0.0 {
            break kept;
        }
        ensure!(Instant::now() < deadline, "the hub kept no discovery");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    eprintln!("discovery kept for the account: {kept} bytes");
    rig.agent.proc.signal(nix::sys::signal::Signal::SIGKILL);
    wait::until("the accounts removed", Duration::from_secs(60), || async {
        let mgmt = scale_agent_e2e::converge::account_state(&rig.s.hub, &rig.mgmt).await;
        let target = scale_agent_e2e::converge::account_state(&rig.s.hub, &rig.target).await;
        (mgmt.is_none() && target.is_none()).then_some(())
    })
    .await?;
    let removed = Instant::now();
    let forgotten = wait::until("the discovery forgotten", Duration::from_secs(30), || {
        let bytes = bytes();
        async { (bytes.await.ok()? == 0.0).then_some(()) }
    })
    .await;
    ensure!(
        forgotten.is_ok(),
        "{} bytes of discovery still kept 30 s after the accounts were removed",
        bytes().await.unwrap_or(kept)
    );
    eprintln!(
        "discovery forgotten {:?} after the accounts were removed",
        removed.elapsed()
    );
    Ok(())
}

// ---------- exec, port-forward, cp: connection upgrades carried through the agent ----------

/// Bytes that do not repeat in any short period (a file `kubectl cp` carries).
fn payload(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    format!("{:x}", sha2::Sha256::digest(bytes))
}

/// kubectl with `kubeconfig`, the exit code and what it printed.
fn kubectl_status(
    bin: &Path,
    kubeconfig: &Path,
    args: &[&str],
    stdin: Option<&[u8]>,
) -> anyhow::Result<(i32, String, String)> {
    use std::io::Write as _;
    // Never waits for ever: a kubectl still running after 120 s is ended (exit 124).
    let mut child = Command::new("timeout")
        .arg("120")
        .arg(bin)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    if let (Some(bytes), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(bytes)?;
    }
    let out = child.wait_with_output()?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// A node of the target cluster whose kubelet is kwok (exec runs local commands in
/// `work`, port-forward reaches an echo server), the rig's namespace in the target
/// cluster and a pod `p` in it on that node, Ready.
async fn kubelet_and_pod(
    env: &Env,
    rig: &Rig,
    node: &str,
) -> anyhow::Result<(scale_agent_e2e::kubelet::FakeKubelet, PathBuf)> {
    let work = env.test_dir(&rig.s.ns).join("kubelet").join("work");
    let kubelet = scale_agent_e2e::kubelet::with_pod(
        &env.cp.bins,
        &env.cp.pki,
        target(env, TARGET)?,
        node,
        &env.cp.run_dir,
        &work,
        &rig.s.ns,
        "p",
    )
    .await?;
    Ok((kubelet, work))
}

async fn interactive(env: Arc<Env>) -> anyhow::Result<()> {
    let bin = env.cp.bins.kubectl.clone();
    exec_port_forward_cp(&env, "kexec", bin).await
}

async fn interactive_spdy(env: Arc<Env>) -> anyhow::Result<()> {
    // Debian's kubectl 1.20 speaks SPDY only.
    let bin = debian_kubectl_binary()?;
    exec_port_forward_cp(&env, "kexecspdy", bin).await
}

/// `kubectl exec` (output, exit code, standard input), `cp` both ways and
/// `port-forward` through the hub with the kubectl `bin`.
async fn exec_port_forward_cp(env: &Env, name: &str, bin: PathBuf) -> anyhow::Result<()> {
    let rig = rig(env, name, &[]).await?;
    let (kubelet, work) = kubelet_and_pod(env, &rig, &format!("{name}-node")).await?;
    let ns = rig.s.ns.clone();
    let direct = target(env, TARGET)?.kubeconfig.clone();
    let hub = |args: &[&str], stdin: Option<&[u8]>| {
        let mut all = vec!["--context", rig.target.as_str()];
        all.extend_from_slice(args);
        kubectl_status(&bin, &rig.hub_kubeconfig, &all, stdin)
    };
    let logs = || rig.logs_with(&kubelet);

    // A command's output, error output and exit code, as directly.
    let command = [
        "exec",
        "-n",
        &ns,
        "p",
        "--",
        "sh",
        "-c",
        "echo out-$((6*7)); echo err >&2; exit 3",
    ];
    let through = hub(&command, None)?;
    let straight = kubectl_status(&bin, &direct, &command, None)?;
    eprintln!(
        "exec through the hub: exit {} {:?}; directly: exit {} {:?}",
        through.0, through.1, straight.0, straight.1
    );
    ensure!(
        through.1 == "out-42\n" && through.2.contains("err"),
        "exec through the hub printed {:?} / {:?}\n{}",
        through.1,
        through.2,
        logs()
    );
    ensure!(
        through.0 == straight.0 && through.0 != 0,
        "exit code through the hub {} (stderr {:?}), directly {}",
        through.0,
        through.2,
        straight.0
    );

    // Standard input carries a file of a few MiB into the pod, `kubectl cp` carries it
    // back out: checksums equal. (kwok never closes a command's standard input, so
    // the command reads exactly the file's length rather than to the end, and `kubectl
    // cp` into the pod, whose tar reads to the end, would wait for ever with kwok.)
    let data = payload(3 << 20);
    let inside = work.join("in-pod.bin");
    let (code, _, err) = hub(
        &[
            "exec",
            "-i",
            "-n",
            &ns,
            "p",
            "--",
            "sh",
            "-c",
            &format!("head -c {} > {}", data.len(), inside.display()),
        ],
        Some(data.as_slice()),
    )?;
    ensure!(
        code == 0,
        "exec -i through the hub: exit {code}, {err}\n{}",
        logs()
    );
    ensure!(
        sha256(&std::fs::read(&inside)?) == sha256(&data),
        "the file written through the pod's standard input differs"
    );
    let back = env.test_dir(&ns).join("kubelet/down.bin");
    let (code, _, err) = hub(
        &[
            "cp",
            &format!("{ns}/p:{}", inside.display()),
            &back.display().to_string(),
        ],
        None,
    )?;
    ensure!(code == 0, "kubectl cp down: exit {code}: {err}\n{}", logs());
    ensure!(
        sha256(&std::fs::read(&back)?) == sha256(&data),
        "the file copied out of the pod differs"
    );

    // port-forward: a TCP payload there and back through the hub.
    let local_port = free_port()?;
    let mut forward = Command::new(&bin)
        .arg("--kubeconfig")
        .arg(&rig.hub_kubeconfig)
        .args(["--context", &rig.target, "port-forward", "-n", &ns, "pod/p"])
        .arg(format!("{local_port}:80"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let round_trip = async {
        let mut conn = connect_when_listening(local_port, Duration::from_secs(20)).await?;
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let sent = payload(1 << 20);
        let (mut r, mut w) = conn.split();
        let write = async {
            w.write_all(&sent).await?;
            w.flush().await
        };
        let mut got = vec![0u8; sent.len()];
        let read = r.read_exact(&mut got);
        let (wrote, read) =
            tokio::time::timeout(Duration::from_secs(30), async { tokio::join!(write, read) })
                .await
                .context("the port-forwarded echo did not come back in 30 s")?;
        wrote?;
        read?;
        ensure!(got == sent, "the port-forwarded echo differs");
        Ok(())
    };
    let outcome = round_trip.await;
    let _ = forward.kill();
    let printed = forward.wait_with_output()?;
    outcome.with_context(|| {
        format!(
            "kubectl port-forward: {}{}\n{}",
            String::from_utf8_lossy(&printed.stdout),
            String::from_utf8_lossy(&printed.stderr),
            logs()
        )
    })?;
    Ok(())
}

/// An upgrade request (as kubectl's WebSocket exec) with curl, HTTP/1.1; the status.
fn upgrade_status(rig: &Rig, account: &str, token: &str, path: &str) -> anyhow::Result<u16> {
    let out = Command::new("curl")
        .args(["-sS", "--http1.1", "--max-time", "10", "-o", "/dev/null"])
        .args(["-w", "%{http_code}"])
        .arg("--cacert")
        .arg(&rig.ca_file)
        .args(["-H", &format!("Authorization: Bearer {token}")])
        .args(["-H", "Connection: Upgrade", "-H", "Upgrade: websocket"])
        .args(["-H", "Sec-WebSocket-Version: 13"])
        .args(["-H", "Sec-WebSocket-Key: c2NhbGUtYWdlbnQtZTJlLWtleQ=="])
        .args(["-H", "Sec-WebSocket-Protocol: v5.channel.k8s.io"])
        .arg(format!("{}/accounts/{account}{path}", rig.kube_api))
        .output()?;
    let code = String::from_utf8_lossy(&out.stdout);
    code.trim().parse().with_context(|| {
        format!(
            "curl printed {code:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

async fn interactive_refusals(env: Arc<Env>) -> anyhow::Result<()> {
    let rig = rig(&env, "kexecref", &[]).await?;
    let ns = rig.s.ns.clone();
    let exec = |ns: &str| {
        format!("/api/v1/namespaces/{ns}/pods/p/exec?command=id&stdout=true&stderr=true")
    };
    // A token for the target account only, used for the other account: 403.
    let code = upgrade_status(&rig, &rig.mgmt, TOKEN_ONE, &exec(&ns))?;
    ensure!(code == 403, "exec with another account's token: {code}");
    // The target account is limited to the rig's namespace: an exec in another is
    // refused by the hub (403) before anything reaches the cluster.
    let code = upgrade_status(&rig, &rig.target, TOKEN_ALL, &exec("kube-system"))?;
    ensure!(
        code == 403,
        "exec outside the account's namespaces: {code}\n{}",
        rig.logs()
    );
    // A node's kubelet serves every namespace (and `run` executes commands without an
    // upgrade): refused for a limited account, whatever the method.
    let client = hub_client(&rig, &rig.target, Some(TOKEN_ALL)).await?;
    for (method, path) in [
        ("GET", "/api/v1/nodes/kwok-node-0/proxy/pods"),
        (
            "GET",
            "/api/v1/nodes/kwok-node-0/proxy/containerLogs/kube-system/p/c",
        ),
        (
            "POST",
            "/api/v1/nodes/kwok-node-0/proxy/run/kube-system/p/c?cmd=id",
        ),
    ] {
        expect_status(
            &call(&client, method, path, &[]).await?,
            403,
            "Forbidden",
            &format!("{method} {path} for an account limited to namespaces"),
        )?;
    }
    // In its namespace the exec is carried (no kubelet here: whatever the cluster
    // answers, not the hub's 403 or 400).
    let code = upgrade_status(&rig, &rig.target, TOKEN_ONE, &exec(&ns))?;
    ensure!(
        code != 403 && code != 400,
        "exec in the account's namespace: {code}\n{}",
        rig.logs()
    );
    Ok(())
}

/// Whether a process of this machine runs `yes <marker>` (what kwok runs for an exec).
fn yes_running(marker: &str) -> bool {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return false;
    };
    dir.filter_map(Result::ok).any(|e| {
        std::fs::read(e.path().join("cmdline"))
            .is_ok_and(|c| c == format!("yes\0{marker}\0").as_bytes())
    })
}

async fn interactive_flow(env: Arc<Env>) -> anyhow::Result<()> {
    let rig = rig(&env, "kexecflow", &[]).await?;
    let (kubelet, _work) = kubelet_and_pod(&env, &rig, "kexecflow-node").await?;
    let ns = rig.s.ns.clone();
    let bin = env.cp.bins.kubectl.clone();
    let logs = || rig.logs_with(&kubelet);
    // A client that never reads what its command writes, for ever.
    let marker = format!("scale-agent-e2e-{}", std::process::id());
    let mut stalled = Command::new(&bin)
        .arg("--kubeconfig")
        .arg(&rig.hub_kubeconfig)
        .args(["--context", &rig.target, "exec", "-n", &ns, "p", "--"])
        .args(["sh", "-c", &format!("exec yes {marker}")])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let outcome = async {
        ensure!(
            within_20s(|| yes_running(&marker)).await.is_some(),
            "the command never ran\n{}",
            logs()
        );
        // Let every window and buffer on the way fill up.
        tokio::time::sleep(Duration::from_secs(2)).await;
        // Meanwhile the account's other requests, another exec included, go on.
        let t = Instant::now();
        let (code, out, err) = kubectl_status(
            &bin,
            &rig.hub_kubeconfig,
            &[
                "--context",
                &rig.target,
                "exec",
                "-n",
                &ns,
                "p",
                "--",
                "echo",
                "alive",
            ],
            None,
        )?;
        ensure!(
            code == 0 && out == "alive\n",
            "another exec beside a stalled one: exit {code}, {out:?} {err}\n{}",
            logs()
        );
        let (code, _, err) = kubectl_status(
            &bin,
            &rig.hub_kubeconfig,
            &["--context", &rig.target, "get", "pods", "-n", &ns],
            None,
        )?;
        ensure!(code == 0, "a read beside a stalled exec: {err}");
        eprintln!(
            "beside an exec whose client stopped reading: another exec and a read took {:?}",
            t.elapsed()
        );
        Ok(())
    }
    .await;
    // Ending the client ends the command where it runs.
    let _ = stalled.kill();
    let _ = stalled.wait();
    outcome?;
    let ended = within_20s(|| !yes_running(&marker))
        .await
        .with_context(|| {
            format!(
                "the command still runs 20 s after its client went away\n{}",
                logs()
            )
        })?;
    eprintln!("the command ended {ended:?} after its client went away");
    Ok(())
}

/// Polls `done` every 100 ms for up to 20 s: how long until it held, `None` if it
/// never did.
async fn within_20s(mut done: impl FnMut() -> bool) -> Option<Duration> {
    let started = Instant::now();
    loop {
        if done() {
            return Some(started.elapsed());
        }
        if started.elapsed() > Duration::from_secs(20) {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------- accounts by host name ----------

/// curl to `https://<host>:<port><path>` resolved to 127.0.0.1 (so the TLS server name
/// and `Host` are `host`), with `token` and extra arguments; the status and the body.
fn curl_host(
    rig: &Rig,
    host: &str,
    path: &str,
    token: &str,
    extra: &[&str],
) -> anyhow::Result<(u16, String)> {
    let port = rig
        .kube_api
        .rsplit(':')
        .next()
        .context("the Kubernetes API's port")?;
    let body = tempfile::NamedTempFile::new()?;
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "-w", "%{http_code}", "-o"])
        .arg(body.path())
        .arg("--cacert")
        .arg(&rig.ca_file)
        .args(["--resolve", &format!("{host}:{port}:127.0.0.1")])
        .args(["-H", &format!("Authorization: Bearer {token}")])
        .args(extra)
        .arg(format!("https://{host}:{port}{path}"))
        .output()?;
    let code = String::from_utf8_lossy(&out.stdout);
    let code = code.trim().parse().with_context(|| {
        format!(
            "curl printed {code:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    Ok((code, std::fs::read_to_string(body.path())?))
}

/// With `--kube-api-host-suffix`, the kubeconfig `scale-agent-hub kubeconfig
/// --host-suffix` writes for a hub at 127.0.0.1 (`tls-server-name:
/// <account>.hub.test`, no DNS) lets the installed kubectl use an account with paths
/// that drop the server's (`get --raw /api`, which the path form answers 404), and
/// `get`, `exec` and `port-forward` as through the path form; the host name selects the
/// account and nothing else: a token of one account at another's host name is refused.
async fn by_host_name(env: Arc<Env>) -> anyhow::Result<()> {
    let suffix_flag = format!("--kube-api-host-suffix={HOST_SUFFIX}");
    let rig = rig(&env, "khost", &[&suffix_flag]).await?;
    let (kubelet, _work) = kubelet_and_pod(&env, &rig, "khost-node").await?;
    let ns = rig.s.ns.clone();
    let bin = env.cp.bins.kubectl.clone();
    let logs = || rig.logs_with(&kubelet);
    // The hub's subcommand writes the host-name form.
    let token_file = env.test_dir(&ns).join("host-token");
    std::fs::write(&token_file, format!("{TOKEN_ALL}\n"))?;
    let by_host = env.test_dir(&ns).join("hub-kubeconfig-by-host");
    let text = write_kubeconfig(
        &rig.kube_api,
        &token_file,
        &rig.ca_file,
        &[
            format!("--host-suffix={HOST_SUFFIX}"),
            format!("--account={}", rig.target),
            format!("--account={}", rig.mgmt),
        ],
        &by_host,
    )?;
    ensure!(
        text.contains(&format!(
            "server: \"{}\"\n    tls-server-name: \"{}.{HOST_SUFFIX}\"",
            rig.kube_api, rig.target
        )),
        "the host-name kubeconfig:\n{text}"
    );
    let run = |kubeconfig: &Path, args: &[&str]| {
        let mut all = vec!["--context", rig.target.as_str()];
        all.extend_from_slice(args);
        kubectl_status(&bin, kubeconfig, &all, None)
    };

    // A path of its own, the server's dropped: 404 in the path form, the account's
    // answer by host name.
    let (code, _, err) = run(&rig.hub_kubeconfig, &["get", "--raw", "/api"])?;
    eprintln!("kubectl get --raw /api, the path form: exit {code}: {err}");
    ensure!(
        code != 0,
        "get --raw /api in the path form reached an account"
    );
    let (code, out, err) = run(&by_host, &["get", "--raw", "/api"])?;
    ensure!(
        code == 0 && serde_json::from_str::<Value>(&out)?["kind"] == "APIVersions",
        "get --raw /api by host name: exit {code}, {out} {err}\n{}",
        logs()
    );
    // Reads, an exec and a port-forward by host name, as through the path form.
    let pods = ["get", "pods", "-n", &ns, "-o", "name"];
    let (code, named, err) = run(&by_host, &pods)?;
    ensure!(code == 0, "get pods by host name: {err}\n{}", logs());
    let (_, pathed, _) = run(&rig.hub_kubeconfig, &pods)?;
    ensure!(
        named == "pod/p\n" && named == pathed,
        "get pods by host name printed {named:?}, by path {pathed:?}"
    );
    let (code, out, err) = run(&by_host, &["exec", "-n", &ns, "p", "--", "echo", "by-host"])?;
    ensure!(
        code == 0 && out == "by-host\n",
        "exec by host name: exit {code}, {out:?} {err}\n{}",
        logs()
    );
    let local_port = free_port()?;
    let mut forward = Command::new(&bin)
        .arg("--kubeconfig")
        .arg(&by_host)
        .args(["--context", &rig.target, "port-forward", "-n", &ns, "pod/p"])
        .arg(format!("{local_port}:80"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let echoed = echo_through(local_port, b"through the account's host name").await;
    let _ = forward.kill();
    let printed = forward.wait_with_output()?;
    echoed.with_context(|| {
        format!(
            "port-forward by host name: {}\n{}",
            String::from_utf8_lossy(&printed.stderr),
            logs()
        )
    })?;

    // The host name selects the account; the token must still be allowed it.
    let target_host = format!("{}.{HOST_SUFFIX}", rig.target);
    let mgmt_host = format!("{}.{HOST_SUFFIX}", rig.mgmt);
    let (code, body) = curl_host(&rig, &mgmt_host, "/api", TOKEN_ONE, &[])?;
    ensure!(
        code == 403,
        "the target's token at the other account's host name: {code} {body}"
    );
    let (code, _) = curl_host(&rig, &target_host, "/api", TOKEN_ONE, &[])?;
    ensure!(
        code == 200,
        "the target's token at its own host name: {code}"
    );
    // A connection opened for one account's name asking for another: 421.
    let other = format!("Host: {mgmt_host}");
    let (code, body) = curl_host(&rig, &target_host, "/api", TOKEN_ALL, &["-H", &other])?;
    ensure!(
        code == 421,
        "Host naming another account than the TLS server name: {code} {body}"
    );
    Ok(())
}

/// Connects to a port-forward's local port (waiting up to 20 s for it to listen) and
/// checks that `payload` comes back (an echo server at the other end).
async fn echo_through(local_port: u16, payload: &[u8]) -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut conn = connect_when_listening(local_port, Duration::from_secs(20)).await?;
    conn.write_all(payload).await?;
    let mut got = vec![0u8; payload.len()];
    tokio::time::timeout(Duration::from_secs(20), conn.read_exact(&mut got))
        .await
        .context("the port-forwarded echo did not come back in 20 s")??;
    ensure!(got == payload, "the port-forwarded echo differs");
    Ok(())
}

// ---------- attach and logs -f ----------

/// A kubectl that keeps printing (`logs -f`, `attach`) through the hub: its lines as
/// they come.
struct Following {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Following {
    fn start(bin: &Path, kubeconfig: &Path, args: &[&str]) -> anyhow::Result<Following> {
        let mut child = Command::new(bin)
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let lines = kubectl::lines_of(child.stdout.take().context("kubectl's stdout")?);
        Ok(Following { child, lines })
    }

    /// Whether a line containing `text` comes within `limit`; every line printed on the
    /// way goes into `seen`.
    fn printed(&self, text: &str, limit: Duration, seen: &mut Vec<String>) -> bool {
        let deadline = Instant::now() + limit;
        while let Ok(line) = self
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            if line.contains(text) {
                return true;
            }
            seen.push(line);
        }
        false
    }
}

impl Drop for Following {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `kubectl logs -f` and `kubectl attach` through the hub print what the container
/// writes as it writes it, and a client ended mid-stream ends the session at the
/// cluster: kwok (the node's kubelet) closes the log file it was following for it.
async fn attach_and_logs(env: Arc<Env>) -> anyhow::Result<()> {
    let rig = rig(&env, "kattach", &[]).await?;
    let (kubelet, work) = kubelet_and_pod(&env, &rig, "kattach-node").await?;
    let ns = rig.s.ns.clone();
    let bin = env.cp.bins.kubectl.clone();
    let file = scale_agent_e2e::kubelet::log_file(&work);
    let logs = || rig.logs_with(&kubelet);
    let append = |text: &str| -> anyhow::Result<()> {
        use std::io::Write as _;
        let mut f = std::fs::OpenOptions::new().append(true).open(&file)?;
        f.write_all(scale_agent_e2e::kubelet::log_line(text).as_bytes())?;
        Ok(())
    };
    ensure!(
        kubelet.open_count(&file) == 0,
        "kwok holds the log file before any client"
    );
    for (what, command) in [
        ("logs -f", vec!["logs", "-f", "-n", ns.as_str(), "p"]),
        ("attach", vec!["attach", "-n", ns.as_str(), "p"]),
    ] {
        let mut args = vec!["--context", rig.target.as_str()];
        args.extend(command);
        let client = Following::start(&bin, &rig.hub_kubeconfig, &args)?;
        // Written after the client began: it comes through as it is written.
        let marker = format!("{}-{}", what.replace(' ', ""), std::process::id());
        let opened = within_20s(|| kubelet.open_count(&file) > 0).await;
        let seen = (|| {
            ensure!(
                opened.is_some(),
                "kwok never opened the log file for {what}"
            );
            // Appended again each second: a line written while kwok still looks for
            // the file's end is not followed, as a container's own output then.
            let mut seen = Vec::new();
            for _ in 0..20 {
                append(&marker)?;
                if client.printed(&marker, Duration::from_secs(1), &mut seen) {
                    return Ok(());
                }
            }
            bail!("no line with {marker:?} in 20 s; printed: {seen:?}")
        })();
        seen.with_context(|| format!("kubectl {what} through the hub\n{}", logs()))?;
        // The client goes away mid-stream: the kubelet stops following for it. (kwok's
        // attach notices its connection closed at its next write, as a kubelet's does
        // with a container that keeps writing: lines go on being appended.)
        drop(client);
        let ended = within_20s(|| {
            let _ = append("after the client went away");
            kubelet.open_count(&file) == 0
        })
        .await
        .with_context(|| {
            format!(
                "kwok still follows the log file for {what} 20 s after its client went away\n{}",
                logs()
            )
        })?;
        eprintln!(
            "kubectl {what}: the kubelet stopped following {ended:?} after its client went away"
        );
    }
    Ok(())
}

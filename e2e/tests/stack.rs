//! The whole system: an AgentShard applied with kubectl becomes an agent Deployment
//! (operator), its pods run (kwok, and a real agent process per pod from the harness's
//! stand-in kubelet), and the agents stream the target clusters to the hub. Scaling,
//! editing and deleting the shard reach the running agents.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use scale_agent_e2e::converge::{account_state, configmaps, converge, put_cm, wait_state};
use scale_agent_e2e::operator::{Operator, OperatorOptions};
use scale_agent_e2e::pods::{PodRunner, RunnerConfig};
use scale_agent_e2e::scenario::{
    account, config, kubeconfigs, scenario_with, start_agent, wait_logged,
};
use scale_agent_e2e::{Env, runner, wait};

fn main() {
    runner::main(
        &["cluster-1", "cluster-2"],
        vec![(
            "agentshard_applied_with_kubectl_streams_through_real_agents",
            |e| Box::pin(stack(e)),
        )],
    );
}

fn secret(ns: &str, name: &str, kubeconfig: &str) -> String {
    let indented: String = kubeconfig.lines().map(|l| format!("    {l}\n")).collect();
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\n  namespace: {ns}\nstringData:\n  kubeconfig: |\n{indented}"
    )
}

fn shard(ns: &str, replicas: u32, accounts: &[(&str, &str)]) -> String {
    let mut y = format!(
        "apiVersion: scaleagent.dev/v1alpha1\nkind: AgentShard\nmetadata:\n  name: stack\n  namespace: {ns}\nspec:\n  replicas: {replicas}\n  accounts:\n"
    );
    for (account, secret) in accounts {
        y.push_str(&format!(
            "  - name: {account}\n    kubeconfigSecretRef: {{ name: {secret} }}\n    namespaces: [{ns}]\n    kinds: [ConfigMap]\n"
        ));
    }
    y
}

async fn stack(env: Arc<Env>) -> anyhow::Result<()> {
    // The hub accepts an account only from the AgentShard that owns it.
    let s = scenario_with(
        &env,
        "stack",
        "5s",
        None,
        vec!["--authorize-shards=*".into()],
    )
    .await?;
    let ns = s.ns.clone();
    let cp = &env.cp;
    let _operator = Operator::start(
        cp,
        OperatorOptions {
            default_hub: Some(s.hub.grpc.clone()),
            run_dir: Some(env.test_dir(&ns)),
            ..OperatorOptions::default()
        },
    )
    .await?;
    let pods = PodRunner::start(
        cp.client().await?,
        RunnerConfig {
            args: vec![
                "--lease-renew-interval=500ms".into(),
                "--lease-duration=4s".into(),
                "--reload-interval=500ms".into(),
            ],
            ..RunnerConfig::new(cp, env.test_dir(&ns))?
        },
    );
    for (i, c) in ["cluster-1", "cluster-2"].iter().enumerate() {
        let kc = std::fs::read_to_string(&cp.target(c).context("cluster")?.kubeconfig)?;
        cp.kubectl_stdin(
            ["apply", "-f", "-"],
            &secret(&ns, &format!("kc-{}", i + 1), &kc),
        )?;
    }
    let api1 = configmaps(cp.target("cluster-1").context("cluster-1")?, &ns).await?;
    let api2 = configmaps(cp.target("cluster-2").context("cluster-2")?, &ns).await?;
    put_cm(&api1, "one", "1").await?;
    put_cm(&api2, "two", "2").await?;

    // 1. Apply a shard with one account: an agent pod runs, the account streams.
    let applied = Instant::now();
    let out = cp.kubectl_stdin(["apply", "-f", "-"], &shard(&ns, 1, &[("stack-a", "kc-1")]))?;
    ensure!(out.success, "apply: {}", out.stderr);
    let a = wait_state(&s.hub, "stack-a", "Connected", Duration::from_secs(60))
        .await
        .with_context(|| {
            format!(
                "pods running: {:?}\n{}",
                pods.running(),
                cp.kubectl(["get", "ash,deploy,pods", "-n", &ns])
                    .unwrap_or_default()
            )
        })?;
    eprintln!(
        "AgentShard applied -> account streaming at the hub in {:.2?}",
        applied.elapsed()
    );
    let pod = a["replica"].as_str().unwrap_or_default().to_string();
    ensure!(
        pod.starts_with("stack-agent-"),
        "the replica is the pod name, got {a}"
    );
    converge(&s.hub, "stack-a", &api1, &ns, Duration::from_secs(20)).await?;
    cp.kubectl([
        "wait",
        "--for=condition=Ready",
        "--timeout=60s",
        "-n",
        &ns,
        "ash/stack",
    ])?;

    // An agent of another shard claiming the account (same cluster, so only ownership
    // stands in its way) is refused with NOT_OWNER; the shard's agent keeps it.
    let rogue_cfg = config(&s, "rogue", vec![account("stack-a", &ns)]);
    let rogue = start_agent(
        &env,
        &s,
        "rogue-0",
        &rogue_cfg,
        &kubeconfigs(&env, &[("stack-a", "cluster-1")])?,
        &[],
    )?;
    wait_logged(
        &rogue,
        "the rogue agent to be refused as not the owner",
        &["NotOwner"],
    )
    .await?;
    let still = account_state(&s.hub, "stack-a")
        .await
        .context("stack-a listed")?;
    ensure!(
        still["replica"] == pod.as_str() && still["state"] == "Connected",
        "stack-a moved: {still}"
    );
    drop(rogue);

    // 2. Add an account with kubectl: the running agent picks it up, no new pod.
    let pod_key = format!("{ns}/{pod}");
    let pid_before = pods.admin(&pod_key).context("agent runs for the pod")?;
    cp.kubectl_stdin(
        ["apply", "-f", "-"],
        &shard(&ns, 1, &[("stack-a", "kc-1"), ("stack-b", "kc-2")]),
    )?;
    wait_state(&s.hub, "stack-b", "Connected", Duration::from_secs(30)).await?;
    converge(&s.hub, "stack-b", &api2, &ns, Duration::from_secs(20)).await?;
    ensure!(
        pods.running() == vec![pod_key.clone()],
        "a new pod appeared: {:?}",
        pods.running()
    );
    ensure!(
        pods.admin(&pod_key) == Some(pid_before),
        "the agent of the pod was restarted"
    );

    // 3. Scale to two replicas: each account moves to the replica that rendezvous
    // hashing picks among the two pods (every replica computes the same).
    // Watch the hub while the account moves: a handoff keeps the account, its binding
    // and its cached objects (no removal, no window for another cluster).
    let (stop_watch, watching) = tokio::sync::watch::channel(false);
    let hub_http = s.hub.http.clone();
    // Every poll must be answered: a moment the hub could not be asked is a moment the
    // handoff was not watched.
    let monitor = tokio::spawn(async move {
        let (mut missing, mut answered, mut unanswered) = (Vec::new(), 0u32, Vec::new());
        while !*watching.borrow() {
            match accounts_listed(&hub_http).await {
                Ok(list) => {
                    answered += 1;
                    for name in ["stack-a", "stack-b"] {
                        let listed = list
                            .iter()
                            .any(|a| a["name"] == name && a["objects"].as_u64() > Some(0));
                        if !listed {
                            missing.push(name);
                        }
                    }
                }
                Err(e) => unanswered.push(e.to_string()),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        (missing, answered, unanswered)
    });
    cp.kubectl(["scale", "ash/stack", "-n", &ns, "--replicas=2"])?;
    let placed = wait::until(
        "accounts held where the assignment puts them",
        Duration::from_secs(60),
        || async {
            let members: Vec<String> = pods
                .running()
                .iter()
                .filter_map(|k| k.strip_prefix(&format!("{ns}/")).map(str::to_string))
                .collect();
            if members.len() != 2 {
                return None;
            }
            let mut sorted = members.clone();
            sorted.sort();
            let mut placed = Vec::new();
            for account in ["stack-a", "stack-b"] {
                let want = scale_agent::assignment::owner(account, &sorted)?;
                let got = account_state(&s.hub, account).await?;
                if got["state"] != "Connected" || got["replica"] != want {
                    return None;
                }
                placed.push(format!("{account} on {want}"));
            }
            Some(placed)
        },
    )
    .await
    .with_context(|| format!("pods: {:?}", pods.running()))?;
    eprintln!("after scaling to 2: {placed:?}");
    let _ = stop_watch.send(true);
    let (missing, answered, unanswered) = monitor.await?;
    eprintln!("the hub answered {answered} polls during the handoff");
    ensure!(
        unanswered.is_empty(),
        "{} of the hub's answers during the handoff were missing or unreadable: {:?}",
        unanswered.len(),
        unanswered.iter().take(3).collect::<Vec<_>>()
    );
    ensure!(
        answered > 0,
        "no poll of the hub was answered during the handoff"
    );
    ensure!(
        missing.is_empty(),
        "accounts vanished from the hub (or lost their objects) during the handoff: {missing:?}"
    );
    put_cm(&api1, "after-scale", "x").await?;
    converge(&s.hub, "stack-a", &api1, &ns, Duration::from_secs(20)).await?;

    // 4. Delete the shard: the pods go, their agents stop, the hub drops the accounts
    // after its grace period (5 s here).
    cp.kubectl(["delete", "ash/stack", "-n", &ns, "--wait=true"])?;
    wait::until("the agents to stop", Duration::from_secs(60), || async {
        pods.running()
            .iter()
            .all(|k| !k.starts_with(&format!("{ns}/")))
            .then_some(())
    })
    .await?;
    wait::until(
        "the hub to drop the accounts",
        Duration::from_secs(30),
        || async {
            (account_state(&s.hub, "stack-a").await.is_none()
                && account_state(&s.hub, "stack-b").await.is_none())
            .then_some(())
        },
    )
    .await?;
    Ok(())
}

/// The hub's list of accounts (`GET /v1/accounts`); an error when the hub does not
/// answer 200 with a JSON array.
async fn accounts_listed(hub_http: &str) -> anyhow::Result<Vec<serde_json::Value>> {
    let resp = reqwest::Client::new()
        .get(format!("{hub_http}/v1/accounts"))
        .timeout(Duration::from_secs(5))
        .send()
        .await?
        .error_for_status()?;
    match resp.json::<serde_json::Value>().await? {
        serde_json::Value::Array(list) => Ok(list),
        other => anyhow::bail!("not a list of accounts: {other}"),
    }
}

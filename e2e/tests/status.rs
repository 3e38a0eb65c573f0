//! Status is the truth, and the GitOps tools read it: live shards driven into each state
//! the operator reports, with real agents (the stand-in kubelet runs one per pod and
//! marks it Ready only from its `/readyz`) streaming the management cluster to a hub of
//! the test's own. For each state the test asserts the shard's conditions and account
//! states, the Event, what the real kstatus library says (`e2e/kstatus`, what Flux and
//! kpt wait on) and what the Argo CD health check says (`manifests/gitops/argocd`, with
//! Lua 5.1):
//!
//! | state | Ready reason | kstatus | Argo CD |
//! |---|---|---|---|
//! | every account streams | Ready | Current | Healthy |
//! | agents cannot reach the hub | HubUnreachable | InProgress | Progressing |
//! | the hub refuses an account | RefusedByHub (NotOwner) | Failed | Degraded |
//! | every replica killed | NoReplica | InProgress | Progressing |
//! | only ghost Leases "report" it | NoReplica | InProgress | Progressing |
//! | an account another shard owns | AccountConflict | Failed | Degraded |
//! | a kubeconfig Secret missing | ConfigInvalid | Failed | Degraded |
//! | waiting for a handoff | OwnerReleasing | InProgress | Progressing |
//! | paused | Paused | InProgress | Suspended |

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, ensure};
use kube::api::{Api, PostParams};
use nix::sys::signal::Signal;
use scale_agent_crds::{AccountState, AgentShard, condition_type};
use scale_agent_e2e::gitops::{argocd_health, kstatus};
use scale_agent_e2e::operator::{Operator, OperatorOptions};
use scale_agent_e2e::pods::PodRunner;
use scale_agent_e2e::runner::{self, Fixture};
use scale_agent_e2e::scenario::{Scenario, scenario_with};
use scale_agent_e2e::shards::{configmap_shard, wait_shard};
use scale_agent_e2e::{Env, Options, wait};

/// The control plane and the operator under test, shared by the tests.
struct StatusEnv {
    // Declared first: it stops before the control plane.
    op: Operator,
    env: Env,
}

impl Fixture for StatusEnv {
    fn env(&self) -> &Env {
        &self.env
    }

    async fn shared_logs(&self) -> Vec<PathBuf> {
        vec![self.op.log().to_path_buf()]
    }
}

async fn start() -> anyhow::Result<StatusEnv> {
    let env = Env::start(Options::default()).await?;
    let op = Operator::start(&env.cp, OperatorOptions::default()).await?;
    Ok(StatusEnv { op, env })
}

fn main() {
    runner::run(
        None,
        start(),
        scale_agent_e2e::tests![
            streaming_shard_is_ready_current_and_healthy => streaming,
            unreachable_hub_is_not_ready_and_says_why => unreachable_hub,
            refused_account_is_stalled_failed_and_degraded => refused,
            killed_replicas_leave_accounts_without_a_replica => killed,
            ghost_leases_do_not_make_an_account_streaming => ghosts,
            conflict_and_invalid_config_are_failed_and_degraded => conflict_and_invalid,
            a_handoff_in_progress_is_in_progress => handoff,
            a_paused_shard_is_suspended => paused,
            the_accounts_context_picks_one_of_two_and_streams => chosen_context,
        ],
    );
}

/// One test's namespace, hub and agents.
struct Test {
    ns: String,
    scenario: Scenario,
    pods: PodRunner,
}

/// A namespace and hub for `name` (hub flags `hub_args`), and agents for the pods of
/// that namespace, with short Leases so that a dead replica is noticed within seconds.
async fn test(env: &StatusEnv, name: &str, hub_args: Vec<String>) -> anyhow::Result<Test> {
    let scenario = scenario_with(&env.env, name, "5s", None, hub_args).await?;
    let ns = scenario.ns.clone();
    env.env.kubeconfig_secret(&ns, "kc")?;
    let pods = PodRunner::for_test(&env.env, &ns).await?;
    Ok(Test { ns, scenario, pods })
}

/// A shard streaming the ConfigMaps of `ns` in the management cluster, for each of
/// `accounts`, to `hub`, with `extra` spec lines.
fn shard(ns: &str, name: &str, hub: &str, accounts: &[&str], extra: &str) -> String {
    let extra = format!("  hub: {{ address: \"{hub}\" }}\n{extra}");
    configmap_shard(ns, name, accounts, &extra)
}

async fn get(env: &Env, ns: &str, name: &str) -> anyhow::Result<AgentShard> {
    Ok(Api::<AgentShard>::namespaced(env.client().await?, ns)
        .get(name)
        .await?)
}

fn ready(s: &AgentShard) -> Option<(String, String, String)> {
    s.condition(condition_type::READY)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

fn is(s: &AgentShard, type_: &str, status: &str) -> bool {
    s.condition(type_).is_some_and(|c| c.status == status)
}

fn account_state(s: &AgentShard, name: &str) -> Option<AccountState> {
    s.account_status(name).map(|a| a.state)
}

/// What kstatus and Argo CD say of shard `ns/name` now.
async fn gitops_view(env: &Env, ns: &str, name: &str) -> anyhow::Result<(String, String)> {
    let statuses = kstatus(&env.cp.management.kubeconfig, ns)?;
    let k = statuses
        .get(&format!("{ns}/{name}"))
        .with_context(|| format!("kstatus lists no {ns}/{name}: {statuses:?}"))?;
    let obj = serde_json::to_value(get(env, ns, name).await?)?;
    let (argo, message) = argocd_health(&obj)?;
    eprintln!(
        "{ns}/{name}: kstatus {} ({}), Argo CD {argo} ({message})",
        k.status, k.message
    );
    Ok((k.status.clone(), argo))
}

/// Checks what kstatus and Argo CD say of shard `ns/name`.
async fn expect_gitops(
    env: &Env,
    ns: &str,
    name: &str,
    kstatus: &str,
    argo: &str,
) -> anyhow::Result<()> {
    let seen = gitops_view(env, ns, name).await?;
    ensure!(
        seen == (kstatus.to_owned(), argo.to_owned()),
        "{ns}/{name}: expected kstatus {kstatus} and Argo CD {argo}, got {seen:?}"
    );
    Ok(())
}

/// Waits for an Event with `reason` (and `type_`) about shard `name`; returns its note.
async fn event(
    env: &Env,
    ns: &str,
    name: &str,
    reason: &str,
    type_: &str,
) -> anyhow::Result<String> {
    let selector = format!("reason={reason},type={type_},involvedObject.name={name}");
    Ok(wait::until(
        &format!("a {type_} Event {reason} about {ns}/{name}"),
        Duration::from_secs(30),
        || async {
            let out = env
                .cp
                .kubectl([
                    "get",
                    "events",
                    "-n",
                    ns,
                    "--field-selector",
                    &selector,
                    "-o",
                    "jsonpath={range .items[*]}{.message}{\"\\n\"}{end}",
                ])
                .ok()?;
            out.lines().next().map(str::to_owned)
        },
    )
    .await?)
}

async fn streaming(env: Arc<StatusEnv>) -> anyhow::Result<()> {
    let t = test(&env, "st-ready", Vec::new()).await?;
    let ns = &t.ns;
    // Agent pods must pass Pod Security `restricted`: the namespace enforces it, so
    // the ReplicaSet could not create a pod that does not.
    env.env.cp.kubectl([
        "label",
        "namespace",
        ns,
        "pod-security.kubernetes.io/enforce=restricted",
    ])?;
    let account = format!("{ns}-a");
    env.env
        .apply(&shard(ns, "good", &t.scenario.hub.grpc, &[&account], ""))?;
    let s = wait_shard(&env.env, "good Ready", ns, "good", 90, |s| {
        is(s, condition_type::READY, "True")
    })
    .await?;
    ensure!(
        account_state(&s, &account) == Some(AccountState::Active),
        "{:?}",
        s.status
    );
    let st = s.status.as_ref().context("status")?;
    ensure!(
        st.active_accounts == 1 && st.ready_replicas == 1,
        "counts: {st:?}"
    );
    ensure!(
        is(&s, condition_type::RECONCILING, "False") && is(&s, condition_type::STALLED, "False")
    );
    // The printer column ACCOUNTS counts streaming accounts.
    let row = env
        .env
        .cp
        .kubectl(["get", "ash", "good", "-n", ns, "--no-headers"])?;
    let columns: Vec<&str> = row.split_whitespace().collect();
    ensure!(columns.get(3) == Some(&"1"), "kubectl get ash: {row}");
    expect_gitops(&env.env, ns, "good", "Current", "Healthy").await?;
    event(&env.env, ns, "good", "Ready", "Normal").await?;
    Ok(())
}

/// Issue 21.12: a kubeconfig with two contexts and no current-context streams through the
/// one the account's `context` names (the other points nowhere); without `context` the
/// account is Invalid saying to set it.
async fn chosen_context(env: Arc<StatusEnv>) -> anyhow::Result<()> {
    let t = test(&env, "st-context", Vec::new()).await?;
    let ns = &t.ns;
    let text = std::fs::read_to_string(&env.env.cp.management.kubeconfig)?;
    let (two, real) = scale_agent_e2e::kubeconfig::with_decoy_context(&text)?;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("two-contexts.kubeconfig");
    std::fs::write(&path, two)?;
    env.env.cp.kubeconfig_secret(ns, "kc", &path)?;
    let (chosen, unset) = (format!("{ns}-a"), format!("{ns}-b"));
    let yaml = shard(ns, "ctx", &t.scenario.hub.grpc, &[&chosen, &unset], "").replace(
        &format!("  - name: {chosen}\n"),
        &format!("  - name: {chosen}\n    context: {real}\n"),
    );
    env.env.apply(&yaml)?;
    let s = wait_shard(
        &env.env,
        "the chosen context streaming",
        ns,
        "ctx",
        90,
        |s| account_state(s, &chosen) == Some(AccountState::Active),
    )
    .await?;
    let b = s
        .account_status(&unset)
        .context("the account without context")?;
    ensure!(
        b.state == AccountState::Invalid && b.message.contains("set the account's context"),
        "{b:?}"
    );
    Ok(())
}

async fn unreachable_hub(env: Arc<StatusEnv>) -> anyhow::Result<()> {
    let t = test(&env, "st-nohub", Vec::new()).await?;
    let ns = &t.ns;
    // Nothing listens there.
    let nowhere = format!("127.0.0.1:{}", scale_agent_e2e::ports::free_port()?);
    let account = format!("{ns}-a");
    env.env
        .apply(&shard(ns, "lost", &nowhere, &[&account], ""))?;
    let s = wait_shard(&env.env, "lost says HubUnreachable", ns, "lost", 90, |s| {
        account_state(s, &account) == Some(AccountState::HubUnreachable)
            && ready(s).is_some_and(|r| r.1 == "HubUnreachable")
    })
    .await?;
    let (status, _, message) = ready(&s).context("Ready")?;
    ensure!(status == "False", "{s:?}");
    ensure!(
        message.contains(&nowhere) || message.contains("connect"),
        "Ready says why: {message}"
    );
    ensure!(
        is(&s, condition_type::RECONCILING, "True"),
        "{:?}",
        s.status
    );
    // The agent is not ready either: the Deployment has no ready replica.
    ensure!(
        s.status.as_ref().is_some_and(|st| st.ready_replicas == 0),
        "{:?}",
        s.status
    );
    expect_gitops(&env.env, ns, "lost", "InProgress", "Progressing").await?;
    event(&env.env, ns, "lost", "HubUnreachable", "Warning").await?;
    Ok(())
}

async fn refused(env: Arc<StatusEnv>) -> anyhow::Result<()> {
    // A hub that accepts accounts only from the shards of another namespace.
    let t = test(
        &env,
        "st-refused",
        vec!["--authorize-shards=scale-agent-nobody".into()],
    )
    .await?;
    let ns = &t.ns;
    let account = format!("{ns}-a");
    env.env
        .apply(&shard(ns, "refused", &t.scenario.hub.grpc, &[&account], ""))?;
    let s = wait_shard(
        &env.env,
        "refused says RefusedByHub",
        ns,
        "refused",
        90,
        |s| {
            account_state(s, &account) == Some(AccountState::RefusedByHub)
                && ready(s).is_some_and(|r| r.1 == "RefusedByHub")
        },
    )
    .await?;
    let a = s.account_status(&account).context("account")?;
    ensure!(a.reason == "NotOwner", "the hub's reason: {a:?}");
    ensure!(
        is(&s, condition_type::STALLED, "True") && is(&s, condition_type::RECONCILING, "False"),
        "{:?}",
        s.status
    );
    expect_gitops(&env.env, ns, "refused", "Failed", "Degraded").await?;
    let note = event(&env.env, ns, "refused", "RefusedByHub", "Warning").await?;
    ensure!(
        note.contains(&account) && note.contains("NotOwner"),
        "{note}"
    );
    Ok(())
}

async fn killed(env: Arc<StatusEnv>) -> anyhow::Result<()> {
    let t = test(&env, "st-killed", Vec::new()).await?;
    let ns = &t.ns;
    let accounts = [format!("{ns}-a"), format!("{ns}-b")];
    let names: Vec<&str> = accounts.iter().map(String::as_str).collect();
    env.env.apply(&shard(
        ns,
        "mortal",
        &t.scenario.hub.grpc,
        &names,
        "  replicas: 2\n",
    ))?;
    wait_shard(&env.env, "mortal Ready", ns, "mortal", 90, |s| {
        is(s, condition_type::READY, "True")
    })
    .await?;
    // Kill every agent of the shard (their pods stay, as after a crash).
    let running = t.pods.running();
    ensure!(running.len() == 2, "two agents run: {running:?}");
    for pod in &running {
        ensure!(t.pods.signal(pod, Signal::SIGKILL), "killing {pod}");
    }
    let s = wait_shard(&env.env, "mortal says NoReplica", ns, "mortal", 30, |s| {
        names
            .iter()
            .all(|a| account_state(s, a) == Some(AccountState::NoReplica))
            && ready(s).is_some_and(|r| r.1 == "NoReplica")
    })
    .await?;
    ensure!(is(&s, condition_type::READY, "False"));
    expect_gitops(&env.env, ns, "mortal", "InProgress", "Progressing").await?;
    event(&env.env, ns, "mortal", "NoReplica", "Warning").await?;
    Ok(())
}

async fn ghosts(env: Arc<StatusEnv>) -> anyhow::Result<()> {
    let t = test(&env, "st-ghost", Vec::new()).await?;
    let ns = &t.ns;
    let account = format!("{ns}-a");
    // No replica runs.
    env.env.apply(&shard(
        ns,
        "haunted",
        &t.scenario.hub.grpc,
        &[&account],
        "  replicas: 0\n",
    ))?;
    wait_shard(&env.env, "haunted NoReplica", ns, "haunted", 60, |s| {
        account_state(s, &account) == Some(AccountState::NoReplica)
    })
    .await?;
    // A pod of the namespace that is not an agent of the shard.
    let pods = Api::<k8s_openapi::api::core::v1::Pod>::namespaced(env.env.client().await?, ns);
    let impostor: k8s_openapi::api::core::v1::Pod = serde_json::from_value(serde_json::json!({
        "metadata": { "name": "impostor", "labels": { "app": "impostor" } },
        "spec": {
            "securityContext": { "runAsNonRoot": true, "seccompProfile": { "type": "RuntimeDefault" } },
            "containers": [{
                "name": "impostor",
                "image": "registry.invalid/impostor:1",
                "securityContext": {
                    "allowPrivilegeEscalation": false,
                    "capabilities": { "drop": ["ALL"] },
                },
            }],
        },
    }))?;
    let impostor = pods.create(&PostParams::default(), &impostor).await?;
    let impostor_uid = impostor.metadata.uid.clone().context("the pod's uid")?;
    // Leases labelled for the shard that say the account streams: one not named after
    // its holder, one owned by a pod that does not exist, one named after a pod but not
    // owned by it, one owned by a pod that is not an agent of the shard.
    let report = format!(
        "{{\"hub\":{{\"state\":\"Connected\"}},\"accounts\":{{\"{account}\":{{\"state\":\"Streaming\"}}}}}}"
    );
    let now = k8s_openapi::jiff::Timestamp::now();
    let leases =
        Api::<k8s_openapi::api::coordination::v1::Lease>::namespaced(env.env.client().await?, ns);
    let absent = "00000000-0000-0000-0000-000000000000";
    for (name, holder, owner) in [
        ("ghost-1", "ghost-1", None),
        (
            "scale-agent-haunted-agent-x",
            "haunted-agent-x",
            Some(("haunted-agent-x", absent)),
        ),
        ("scale-agent-haunted-agent-y", "haunted-agent-y", None),
        (
            "scale-agent-impostor",
            "impostor",
            Some(("impostor", impostor_uid.as_str())),
        ),
    ] {
        let mut lease: k8s_openapi::api::coordination::v1::Lease =
            serde_json::from_value(serde_json::json!({
                "metadata": {
                    "name": name,
                    "labels": { "scaleagent.dev/shard": "haunted" },
                    "annotations": { "scaleagent.dev/report": report },
                },
                "spec": {
                    "holderIdentity": holder,
                    "leaseDurationSeconds": 3600,
                    "renewTime": k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(now),
                },
            }))?;
        if let Some((pod, uid)) = owner {
            lease.metadata.owner_references =
                Some(vec![scale_agent_crds::membership::lease_owner(pod, uid)]);
        }
        leases.create(&PostParams::default(), &lease).await?;
    }
    // Give the operator every chance to believe them.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let s = get(&env.env, ns, "haunted").await?;
    ensure!(
        account_state(&s, &account) == Some(AccountState::NoReplica),
        "a ghost Lease made the account look streaming: {:?}",
        s.status
    );
    ensure!(
        ready(&s).is_some_and(|r| r.0 == "False" && r.1 == "NoReplica"),
        "{:?}",
        s.status
    );
    expect_gitops(&env.env, ns, "haunted", "InProgress", "Progressing").await?;
    Ok(())
}

async fn conflict_and_invalid(env: Arc<StatusEnv>) -> anyhow::Result<()> {
    let t = test(&env, "st-conflict", Vec::new()).await?;
    let ns = &t.ns;
    let hub = &t.scenario.hub.grpc;
    let taken = format!("{ns}-taken");
    env.env
        .apply(&shard(ns, "owner", hub, &[&taken], "  replicas: 0\n"))?;
    wait_shard(&env.env, "owner holds the account", ns, "owner", 60, |s| {
        account_state(s, &taken).is_some_and(AccountState::served)
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    env.env
        .apply(&shard(ns, "latecomer", hub, &[&taken], "  replicas: 0\n"))?;
    wait_shard(&env.env, "latecomer conflicts", ns, "latecomer", 60, |s| {
        account_state(s, &taken) == Some(AccountState::Conflict)
            && is(s, condition_type::STALLED, "True")
    })
    .await?;
    expect_gitops(&env.env, ns, "latecomer", "Failed", "Degraded").await?;

    let missing = format!("{ns}-missing");
    env.env.apply(
        &shard(ns, "broken", hub, &[&missing], "  replicas: 0\n")
            .replace("name: kc }", "name: kc-does-not-exist }"),
    )?;
    wait_shard(&env.env, "broken is invalid", ns, "broken", 60, |s| {
        account_state(s, &missing) == Some(AccountState::Invalid)
            && is(s, condition_type::STALLED, "True")
            && ready(s).is_some_and(|r| r.1 == "ConfigInvalid")
    })
    .await?;
    expect_gitops(&env.env, ns, "broken", "Failed", "Degraded").await?;
    Ok(())
}

async fn handoff(env: Arc<StatusEnv>) -> anyhow::Result<()> {
    let t = test(&env, "st-handoff", Vec::new()).await?;
    let ns = &t.ns;
    let hub = &t.scenario.hub.grpc;
    let name = format!("{ns}-h");
    env.env
        .apply(&shard(ns, "giver", hub, &[&name], "  replicas: 0\n"))?;
    wait_shard(&env.env, "giver holds it", ns, "giver", 60, |s| {
        account_state(s, &name).is_some_and(AccountState::served)
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    env.env
        .apply(&shard(ns, "taker", hub, &[&name], "  replicas: 0\n"))?;
    wait_shard(&env.env, "taker waits", ns, "taker", 60, |s| {
        account_state(s, &name) == Some(AccountState::Conflict)
    })
    .await?;
    // The giver drops the account, and asks for an image the operator does not run:
    // its agent config cannot be rewritten, so it keeps the name (releasing it) and the
    // taker waits for the handoff.
    env.env.apply(&shard(
        ns,
        "giver",
        hub,
        &[],
        "  replicas: 0\n  image: registry.invalid/not-allowed:1\n",
    ))?;
    let s = wait_shard(&env.env, "taker in a handoff", ns, "taker", 60, |s| {
        s.account_status(&name)
            .is_some_and(|a| a.state == AccountState::Conflict && a.reason == "OwnerReleasing")
            && is(s, condition_type::RECONCILING, "True")
    })
    .await?;
    ensure!(is(&s, condition_type::STALLED, "False"), "{:?}", s.status);
    expect_gitops(&env.env, ns, "taker", "InProgress", "Progressing").await?;
    let g = wait_shard(&env.env, "giver stalled", ns, "giver", 60, |s| {
        is(s, condition_type::STALLED, "True")
    })
    .await?;
    ensure!(
        g.condition(condition_type::CONFIG_VALID)
            .is_some_and(|c| c.reason == "ImageNotAllowed"),
        "{:?}",
        g.status
    );
    expect_gitops(&env.env, ns, "giver", "Failed", "Degraded").await?;
    event(&env.env, ns, "giver", "ImageNotAllowed", "Warning").await?;
    Ok(())
}

async fn paused(env: Arc<StatusEnv>) -> anyhow::Result<()> {
    let t = test(&env, "st-paused", Vec::new()).await?;
    let ns = &t.ns;
    let account = format!("{ns}-p");
    env.env.apply(&shard(
        ns,
        "resting",
        &t.scenario.hub.grpc,
        &[&account],
        "  paused: true\n",
    ))?;
    wait_shard(&env.env, "resting paused", ns, "resting", 60, |s| {
        ready(s).is_some_and(|r| r.1 == "Paused")
    })
    .await?;
    expect_gitops(&env.env, ns, "resting", "InProgress", "Suspended").await?;
    Ok(())
}

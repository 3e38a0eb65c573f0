//! `reconnect`: an agent streams accounts through nginx while their objects change
//! (creates, updates, deletes at `--reconnect-rate`); nginx is stopped for
//! `--reconnect-down-seconds` and started again, the changes going on. Measured: whole
//! kinds relisted after the reconnect (goal 0: every watch resumes from the hub's resume
//! point) and the time from nginx's restart until every account's cache equals its
//! cluster again. Baselines: the watches a relist-on-reconnect would repeat, and the
//! cold initial sync of the same accounts through the same path.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams};
use scale_agent_e2e::bench::goal::Goal;
use scale_agent_e2e::bench::report::Figure;
use scale_agent_e2e::converge::{converge, put_cm};
use scale_agent_e2e::metrics::{require_sum, required, scrape};
use serde_json::json;
use tokio::task::JoinSet;

use crate::stack::{Stack, configmap_accounts};
use crate::{Ctx, secs};

/// Objects each account starts with.
const OBJECTS: usize = 50;
/// Objects the churn creates, updates and deletes per account.
const CHURNED: u64 = 10;

/// The figures this scenario makes, with their units.
pub fn names() -> Vec<(String, &'static str)> {
    vec![
        ("reconnect.relists".into(), "relists"),
        ("reconnect.time_to_equal".into(), "s"),
    ]
}

/// Changes going on in the background; dropping it stops them.
struct Churn {
    stop: Arc<AtomicBool>,
    made: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Churn {
    /// Creates, updates and deletes objects across `apis` at `rate` per second.
    fn start(apis: Vec<Api<ConfigMap>>, rate: f64, bytes: usize) -> Churn {
        let stop = Arc::new(AtomicBool::new(false));
        let made = Arc::new(AtomicU64::new(0));
        let (stopping, counter) = (Arc::clone(&stop), Arc::clone(&made));
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(0.1)));
            let mut tasks = JoinSet::new();
            let mut i = 0u64;
            let pad = "x".repeat(bytes);
            while !stopping.load(Ordering::Relaxed) {
                tick.tick().await;
                let api = apis[i as usize % apis.len()].clone();
                let round = i / apis.len() as u64;
                let name = format!("churn-{}", round % CHURNED);
                let value = format!("{i}-{pad}");
                let made = Arc::clone(&counter);
                let delete = round % 5 == 4;
                tasks.spawn(async move {
                    // Failures (nothing to delete) are not changes.
                    let ok = if delete {
                        api.delete(&name, &DeleteParams::default()).await.is_ok()
                    } else {
                        put_cm(&api, &name, &value).await.is_ok()
                    };
                    if ok {
                        made.fetch_add(1, Ordering::Relaxed);
                    }
                });
                while tasks.try_join_next().is_some() {}
                i += 1;
            }
            while tasks.join_next().await.is_some() {}
        });
        Churn { stop, made, task }
    }

    /// Stops the changes; returns how many were made.
    async fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let _ = (&mut self.task).await;
        self.made.load(Ordering::Relaxed)
    }
}

impl Drop for Churn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Waits until every account's cache equals its cluster (all checked at once); returns
/// when the last one did.
async fn all_equal(
    stack: &Stack,
    accounts: &[(String, String, Api<ConfigMap>)],
    timeout: Duration,
) -> anyhow::Result<Instant> {
    let checks = accounts.iter().map(|(name, ns, api)| async move {
        converge(&stack.hub, name, api, ns, timeout)
            .await
            .map(|_| Instant::now())
    });
    let mut last = Instant::now();
    for r in futures::future::join_all(checks).await {
        last = last.max(r?);
    }
    Ok(last)
}

/// Runs the scenario.
pub async fn run(ctx: &Ctx) -> anyhow::Result<Vec<Figure>> {
    let p = &ctx.p;
    let mut accounts = Vec::new();
    let mut checked = Vec::new();
    let mut expected = std::collections::BTreeMap::new();
    for seeded in configmap_accounts(ctx, "rc", p.reconnect_accounts, OBJECTS).await? {
        let ns = seeded.name.clone();
        accounts.push(seeded.account);
        expected.insert(seeded.name.clone(), OBJECTS);
        checked.push((
            seeded.name,
            ns.clone(),
            Api::<ConfigMap>::namespaced(seeded.client, &ns),
        ));
    }
    let mut stack = Stack::start(&ctx.env, "reconnect").await?;
    let started = Instant::now();
    let mut agent = stack.agent(&ctx.env, "reconnect", &accounts, &[])?;
    let synced = stack
        .wait_synced(
            &mut agent,
            &expected,
            Duration::from_millis(100),
            Duration::from_secs(300),
        )
        .await?;
    let cold = synced - started;
    all_equal(&stack, &checked, Duration::from_secs(60)).await?;

    let admin = agent.admin.clone();
    // `relists` is a family (by cause): its total is the sum of its series, and every
    // counter read here must exist, or the figure would read 0 for ever.
    let relists = relists_total(&admin).await?;
    let resumes = required(&admin, "scale_agent_resumes_total").await?;
    let connects = required(&admin, "scale_agent_connects_total").await?;
    let apis: Vec<Api<ConfigMap>> = checked.iter().map(|(_, _, a)| a.clone()).collect();
    let churning = Churn::start(apis, p.reconnect_rate, p.object_bytes);
    tokio::time::sleep(Duration::from_secs(3)).await;
    tracing::info!("reconnect: stopping nginx");
    stack.nginx.stop();
    tokio::time::sleep(Duration::from_secs(p.reconnect_down_seconds)).await;
    stack.nginx.restart().await?;
    let up = Instant::now();
    scale_agent_e2e::wait::until("the agent to reconnect", Duration::from_secs(120), || {
        let admin = admin.clone();
        async move {
            (required(&admin, "scale_agent_connects_total").await.ok()? > connects).then_some(())
        }
    })
    .await
    .with_context(|| scale_agent_e2e::process::tail(agent.proc.log(), 20))?;
    let equal = all_equal(&stack, &checked, Duration::from_secs(120)).await?;
    let time_to_equal = equal - up;
    let changes = churning.stop().await;
    let relisted = relists_total(&admin).await? - relists;
    let resumed = required(&admin, "scale_agent_resumes_total").await? - resumes;
    drop(agent);
    drop(stack);

    // One ConfigMap watch per account (one namespace each).
    let watches = p.reconnect_accounts;
    let mut params = ctx.stream_params();
    params.insert("accounts".into(), json!(p.reconnect_accounts));
    params.insert("objects_per_account".into(), json!(OBJECTS));
    params.insert("change_rate_per_second".into(), json!(p.reconnect_rate));
    params.insert("nginx_down_seconds".into(), json!(p.reconnect_down_seconds));
    params.insert("changes".into(), json!(changes));
    Ok(vec![
        Figure::new("reconnect", "reconnect.relists", relisted, "relists")
            .reference(watches as f64, "the watches a relist on every reconnect repeats: counted, not measured")
            .goal(Goal::AtMost { limit: 0.0 })
            .params(&params)
            .note(format!("{resumed} watches resumed from the hub's resume points")),
        Figure::new("reconnect", "reconnect.time_to_equal", secs(time_to_equal), "s")
            .baseline(secs(cold), "cold initial sync of the same accounts through the same path")
            .params(&params)
            .note("from nginx accepting connections again until every account's cache equalled its cluster (names, resourceVersions, data), changes going on; includes the agent's reconnect backoff"),
    ])
}

/// Every relist the agent at `admin` counted, whatever the cause.
async fn relists_total(admin: &str) -> anyhow::Result<f64> {
    Ok(require_sum(
        &scrape(admin).await?,
        "scale_agent_relists_total",
    )?)
}

//! Many watches on one account, as a fleet of kubectl `-w`, dashboards and controllers
//! make them: [`WATCHES`] watches of one namespace's labelled ConfigMaps while they
//! change [`RATE`] times a second, through the hub and on the cluster's API server.
//! Measured: each change's time from the write's start to each watch that shows it
//! (the p99 over every watch and change), and the CPU the hub spends meanwhile.
//!
//! The watches go over HTTP/2, [`PER_CONNECTION`] to a connection (kube's own client
//! speaks HTTP/1.1 only, one connection per watch); each connection has a token of its
//! own at the hub. They are read as lines: only the change's number is looked for, so the
//! clients' cost stays small next to the servers'.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::{AsyncBufReadExt as _, StreamExt as _};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use scale_agent::cluster_client::Connections;
use scale_agent_e2e::bench::sampler::{Measured, Sampler};

/// Watches each way.
pub const WATCHES: usize = 2_000;
/// Watches per connection (a kube-apiserver carries 100 streams on one).
pub const PER_CONNECTION: usize = 80;
/// Connections (and, at the hub, tokens) each way.
pub const CONNECTIONS: usize = WATCHES / PER_CONNECTION;
/// Changes per second.
pub const RATE: usize = 100;
/// Changes each way.
pub const CHANGES: usize = 500;
/// Objects the changes go round.
const OBJECTS: usize = 10;
/// The label the watched objects carry.
const LABEL: &str = "fan-out";
/// How long every watch gets to show the last change, and the time a change that
/// never showed counts as.
const LIMIT: Duration = Duration::from_secs(30);

/// What one way measured.
pub struct FanOut {
    /// Each (watch, change) the watch showed: its time in seconds.
    pub shown: Vec<f64>,
    /// (watch, change) pairs never shown within [`LIMIT`].
    pub missing: usize,
    /// CPU seconds the process asked about used from the first write's start until
    /// every watch ended, and that window's seconds.
    pub cpu: Option<Measured<(f64, f64)>>,
}

impl FanOut {
    /// Every (watch, change)'s time in seconds, a change a watch never showed counted
    /// as [`LIMIT`].
    pub fn latencies(&self) -> Vec<f64> {
        let mut all = self.shown.clone();
        all.extend(std::iter::repeat_n(LIMIT.as_secs_f64(), self.missing));
        all
    }
}

/// Makes the [`OBJECTS`] watched objects in `ns` (on the cluster, through `writer`).
pub async fn seed(writer: &Api<ConfigMap>) -> anyhow::Result<()> {
    for i in 0..OBJECTS {
        let cm: ConfigMap = serde_json::from_value(serde_json::json!({
            "metadata": { "name": format!("fan-{i}"), "labels": { LABEL: "1" } },
            "data": { "seq": "-1" },
        }))?;
        match writer.create(&PostParams::default(), &cm).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Opens [`WATCHES`] watches with `kubeconfigs` ([`CONNECTIONS`] of them, one per
/// connection), writes [`CHANGES`] changes through `writer` at [`RATE`] a second, and
/// times each change to each watch; with `cpu_of`, the CPU that process used meanwhile.
pub async fn measure(
    kubeconfigs: &[PathBuf],
    ns: &str,
    writer: &Api<ConfigMap>,
    cpu_of: Option<u32>,
) -> anyhow::Result<FanOut> {
    let connections = Arc::new(Connections::default());
    let sent: Arc<Vec<OnceLock<Instant>>> =
        Arc::new((0..CHANGES).map(|_| OnceLock::new()).collect());
    let ready = Arc::new(AtomicUsize::new(0));
    let mut watchers = Vec::with_capacity(WATCHES);
    // The connections stay while their watches run.
    let mut leases = Vec::with_capacity(kubeconfigs.len());
    // Every watch starts at one version read the same way, so none begins with a copy
    // of the objects: what is measured is the changes going out.
    let mut from = None;
    for path in kubeconfigs {
        let kubeconfig = kube::config::Kubeconfig::read_from(path)?;
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
        let clients = connections.clients(&config, PER_CONNECTION).await?;
        let rv = match &from {
            Some(rv) => String::clone(rv),
            None => {
                let listed = Api::<ConfigMap>::namespaced(clients.client.clone(), ns)
                    .list(&ListParams::default().labels(&format!("{LABEL}=1")))
                    .await?;
                let rv = listed
                    .metadata
                    .resource_version
                    .context("a list without a resourceVersion")?;
                from.insert(rv).clone()
            }
        };
        for _ in 0..PER_CONNECTION {
            watchers.push(tokio::spawn(watch(
                clients.client.clone(),
                format!(
                    "/api/v1/namespaces/{ns}/configmaps?watch=1&labelSelector={LABEL}%3D1&resourceVersion={rv}&timeoutSeconds={}",
                    LIMIT.as_secs() * 4
                ),
                Arc::clone(&ready),
            )));
        }
        leases.push(clients.lease);
    }
    let opened = Instant::now();
    while ready.load(Ordering::Relaxed) < watchers.len() {
        anyhow::ensure!(
            opened.elapsed() < LIMIT,
            "{} of {} watches opened within {LIMIT:?}",
            ready.load(Ordering::Relaxed),
            watchers.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let sampler = cpu_of.map(|pid| Sampler::start(pid, Duration::from_millis(100)));
    let first = Instant::now();
    if let Some(s) = &sampler {
        s.sample_now();
    }
    write(writer, &sent).await?;
    // Every watch ends by itself once it showed the last change, or at the limit.
    let mut shown_times = Vec::with_capacity(WATCHES * CHANGES);
    let mut missing = 0;
    for w in watchers {
        let seen = w.await.context("a watch task")??;
        let mut shown = vec![false; CHANGES];
        for (seq, at) in seen {
            let Some(Some(started)) = sent.get(seq).map(OnceLock::get) else {
                continue;
            };
            if !std::mem::replace(&mut shown[seq], true) {
                shown_times.push(at.saturating_duration_since(*started).as_secs_f64());
            }
        }
        let never = shown.iter().filter(|s| !**s).count();
        missing += never;
    }
    let cpu = sampler.map(|s| {
        s.sample_now();
        s.cpu_between(first, Instant::now())
    });
    drop(leases);
    Ok(FanOut {
        shown: shown_times,
        missing,
        cpu,
    })
}

/// Writes change `seq` (0, 1, ...) to object `fan-{seq % OBJECTS}` at [`RATE`] a second,
/// noting when each write started.
async fn write(writer: &Api<ConfigMap>, sent: &Arc<Vec<OnceLock<Instant>>>) -> anyhow::Result<()> {
    let mut tick = tokio::time::interval(Duration::from_secs(1) / RATE as u32);
    let mut writes = futures::stream::FuturesUnordered::new();
    for seq in 0..CHANGES {
        tick.tick().await;
        let writer = writer.clone();
        let sent = Arc::clone(sent);
        writes.push(async move {
            let _ = sent[seq].set(Instant::now());
            let patch = serde_json::json!({ "data": { "seq": seq.to_string() } });
            writer
                .patch(
                    &format!("fan-{}", seq % OBJECTS),
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await
        });
        // Answers are read as they come, so the writes keep the rate.
        while let Some(Some(done)) = futures::FutureExt::now_or_never(writes.next()) {
            done?;
        }
    }
    while let Some(done) = writes.next().await {
        done?;
    }
    Ok(())
}

/// One watch (`url`): counts itself in `ready` when the server answered, and returns
/// each change number it showed with when, until it showed the last change (or three
/// times [`LIMIT`] after it opened).
async fn watch(
    client: kube::Client,
    url: String,
    ready: Arc<AtomicUsize>,
) -> anyhow::Result<Vec<(usize, Instant)>> {
    let request = http::Request::get(url).body(Vec::new())?;
    let body = client.request_stream(request).await;
    ready.fetch_add(1, Ordering::Relaxed);
    let mut lines = body?.lines();
    let mut seen = Vec::with_capacity(CHANGES);
    let deadline = tokio::time::Instant::now() + LIMIT * 3;
    loop {
        let line = match tokio::time::timeout_at(deadline, lines.next()).await {
            Ok(Some(line)) => line?,
            Ok(None) | Err(_) => break,
        };
        let at = Instant::now();
        if let Some(seq) = seq_of(&line) {
            seen.push((seq, at));
            if seq + 1 == CHANGES {
                break;
            }
        }
    }
    Ok(seen)
}

/// The change number an event's object carries (`"seq":"N"` in its data), if any.
fn seq_of(line: &str) -> Option<usize> {
    const MARK: &str = "\"seq\":\"";
    let from = line.find(MARK)? + MARK.len();
    let digits = &line[from..];
    let end = digits.find('"')?;
    digits[..end].parse().ok()
}

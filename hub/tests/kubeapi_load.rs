//! Answering big lists from the cache must not stall the agents' streams: an account
//! of 10,000 objects is listed over and over through the Kubernetes API while the
//! same agent keeps sending changes, and the time each change takes to be applied
//! (its Ack) is measured with and without the lists, and against the JSON API's list
//! (in its largest pages), which writes the objects out while holding the lock event
//! ingestion needs.
//!
//! Prints the figures; fails when the lists do not come from the cache, or when a
//! change waits as long behind them as behind the JSON API's pages.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{FakeAgent, Result, deployments, hello, object, open};
use scale_agent_hub::kubeapi::{KubeApiConfig, TokenSource};
use scale_agent_proto::PROTOCOL_VERSION;
use scale_agent_proto::v1::{
    self as pb, AgentFrame, EventType, StreamScope, agent_frame, hub_frame,
};

const TOKEN: &str = "load-test-token-0123456789";
const OBJECTS: usize = 10_000;
/// The JSON API's largest page.
const JSON_PAGE: usize = scale_agent_hub::api::page::MAX_LIMIT;

fn body_of(i: usize) -> String {
    // About 1.5 KiB, like a small Deployment.
    format!("{:>1500}", i)
}

async fn agent_with_objects(hub: &scale_agent_hub::RunningHub) -> Result<FakeAgent> {
    let mut hello = hello("load", "load-0", PROTOCOL_VERSION);
    hello.capabilities = vec![scale_agent_proto::kube_api::CAPABILITY.into()];
    let first = AgentFrame {
        frame: Some(agent_frame::Frame::Hello(hello)),
    };
    let mut agent = FakeAgent::from_opened(open(&hub.grpc_url(), first).await??);
    agent
        .send(agent_frame::Frame::Register(pb::Register {
            accounts: vec![pb::Account {
                name: "big".into(),
                cluster_id: "cluster-big".into(),
                server_url: "https://big.example:6443".into(),
                kubernetes_version: "v1.36.0".into(),
                scope: Some(StreamScope::default()),
            }],
        }))
        .await?;
    let accepted = agent
        .wait_for(|f| match f {
            hub_frame::Frame::RegisterResult(r) => Some(r.accounts.clone()),
            _ => None,
        })
        .await?;
    assert!(accepted[0].accepted, "{accepted:?}");
    agent
        .send(agent_frame::Frame::SyncStart(pb::SyncStart {
            account: "big".into(),
            kind: Some(deployments()),
            mode: pb::SyncMode::FullRelist as i32,
            resource_version: String::new(),
            resource: "deployments".into(),
            namespaced: true,
            ..Default::default()
        }))
        .await?;
    let mut rv = 1000;
    for chunk in 0..(OBJECTS / 500) {
        let events = (0..500)
            .map(|i| {
                let n = chunk * 500 + i;
                rv += 1;
                let mut ev = object(
                    EventType::Added,
                    deployments(),
                    &format!("ns-{}", n % 20),
                    &format!("d-{n:05}"),
                    &rv.to_string(),
                );
                let mut body: serde_json::Value =
                    serde_json::from_slice(&ev.body_json).expect("json");
                body["spec"] = serde_json::json!({ "filler": body_of(n) });
                ev.body_json = body.to_string().into_bytes().into();
                ev
            })
            .collect();
        agent.events("big", events).await?;
    }
    agent
        .sync_end("big", deployments(), &rv.to_string(), OBJECTS as u64)
        .await?;
    agent.barrier().await?;
    Ok(agent)
}

/// Sends `n` one-event batches, each after the previous one's Ack; the Ack times.
async fn ack_times(agent: &mut FakeAgent, n: usize, rv: &mut u64) -> Result<Vec<Duration>> {
    let mut times = Vec::with_capacity(n);
    for i in 0..n {
        *rv += 1;
        let ev = object(
            EventType::Modified,
            deployments(),
            "ns-0",
            &format!("d-{:05}", i % OBJECTS),
            &rv.to_string(),
        );
        let started = Instant::now();
        agent.events("big", vec![ev]).await?;
        times.push(started.elapsed());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    times.sort();
    Ok(times)
}

fn summary(times: &[Duration]) -> String {
    let at = |q: f64| times[((times.len() as f64 - 1.0) * q) as usize];
    format!(
        "p50 {:?}, p99 {:?}, max {:?}",
        at(0.5),
        at(0.99),
        times[times.len() - 1]
    )
}

/// The bytes of a list of every object at `url`, page after page while the JSON
/// API's answer names a next one; `None` when a request fails.
async fn list_all(client: &reqwest::Client, url: &str) -> Option<usize> {
    let mut bytes = 0;
    let mut next: Option<String> = None;
    loop {
        let mut request = client.get(url).bearer_auth(TOKEN);
        if let Some(token) = &next {
            request = request.query(&[("continue", token)]);
        }
        let resp = request.send().await.ok()?;
        next = resp
            .headers()
            .get(scale_agent_hub::api::page::CONTINUE_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        bytes += resp.bytes().await.ok()?.len();
        if next.is_none() {
            return Some(bytes);
        }
    }
}

/// Lists every object of the account over and over from `clients` tasks until
/// `stop`; how many lists finished, and the longest one.
fn hammer(
    url: String,
    clients: usize,
    stop: Arc<AtomicBool>,
) -> (Arc<AtomicUsize>, tokio::task::JoinHandle<Duration>) {
    let done = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&done);
    let task = tokio::spawn(async move {
        let client = reqwest::Client::new();
        let mut tasks = Vec::new();
        for _ in 0..clients {
            let (client, url, stop, counter) = (
                client.clone(),
                url.clone(),
                Arc::clone(&stop),
                Arc::clone(&counter),
            );
            tasks.push(tokio::spawn(async move {
                let mut longest = Duration::ZERO;
                while !stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    let Some(bytes) = list_all(&client, &url).await else {
                        continue;
                    };
                    assert!(bytes > OBJECTS * 1500, "a short list: {bytes} bytes");
                    longest = longest.max(started.elapsed());
                    counter.fetch_add(1, Ordering::Relaxed);
                }
                longest
            }));
        }
        let mut longest = Duration::ZERO;
        for t in tasks {
            longest = longest.max(t.await.unwrap_or_default());
        }
        longest
    });
    (done, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn listing_ten_thousand_objects_does_not_stall_event_ingestion() -> Result<()> {
    common::logs();
    let hub = common::hub_with(|c| {
        c.kube_api = Some(KubeApiConfig::new(
            "127.0.0.1:0".parse().expect("an address"),
            TokenSource::Text(format!("{TOKEN} *\n")),
        ));
    })
    .await?;
    let api = hub.kube_api_addr().expect("the Kubernetes API is served");
    let mut agent = agent_with_objects(&hub).await?;
    let mut rv = 100_000;
    let quiet = ack_times(&mut agent, 200, &mut rv).await?;

    // From the cache, through the Kubernetes API.
    let url = format!("http://{api}/accounts/big/apis/apps/v1/deployments");
    let stop = Arc::new(AtomicBool::new(false));
    let (lists, task) = hammer(url, 4, Arc::clone(&stop));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let busy = ack_times(&mut agent, 200, &mut rv).await?;
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let longest_list = task.await?;
    let cache_lists = lists.load(Ordering::Relaxed);

    // The JSON API's list, for comparison: it writes the objects out under the lock,
    // a page (its largest, half the account) at a time.
    let url = format!(
        "{}/v1/accounts/big/objects?limit={JSON_PAGE}",
        hub.http_url()
    );
    let stop = Arc::new(AtomicBool::new(false));
    let (json_lists, task) = hammer(url, 4, Arc::clone(&stop));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let locked = ack_times(&mut agent, 200, &mut rv).await?;
    stop.store(true, Ordering::Relaxed);
    let longest_json = task.await?;

    eprintln!("{OBJECTS} objects; a change's Ack, one at a time:");
    eprintln!(
        "  no lists:                                  {}",
        summary(&quiet)
    );
    eprintln!(
        "  4 clients listing through the Kubernetes API: {} ({cache_lists} lists in {elapsed:?}, longest {longest_list:?})",
        summary(&busy)
    );
    eprintln!(
        "  4 clients listing through the JSON API:       {} ({} lists, longest {longest_json:?})",
        summary(&locked),
        json_lists.load(Ordering::Relaxed)
    );
    let metrics = hub.metrics_text();
    assert!(
        metrics.lines().any(|l| l
            .starts_with("scale_agent_hub_kube_api_requests_total{source=\"cache\",code=\"2xx\"}")),
        "the lists did not come from the cache"
    );
    assert!(cache_lists >= 4, "only {cache_lists} lists finished");
    // Compared with the JSON API's list on the same machine in the same run, so the
    // check holds on a busy machine: the cache's lists take only shared bodies under
    // the lock, the JSON API's write each page (5,000 objects, 7.5 MB) out under it.
    // A 10,000-object list written out under the lock would hold it twice as long as
    // such a page; taken from the cache it must hold up the stream less than one.
    let (busy_p50, locked_p50) = (busy[busy.len() / 2], locked[locked.len() / 2]);
    assert!(
        busy_p50 < locked_p50,
        "the median change waited {busy_p50:?} with Kubernetes API lists, {locked_p50:?} with JSON API lists"
    );
    hub.shutdown().await?;
    Ok(())
}

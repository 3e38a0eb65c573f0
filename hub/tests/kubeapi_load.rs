//! Answering big lists from the cache must not block the agents' streams: an account
//! of 10,000 objects (about 15 MB) is listed through the Kubernetes API by clients
//! that stop reading after the first bytes (so the hub is stuck writing their answers)
//! while other clients list it over and over, and every change the same agent sends
//! meanwhile must still be applied (Acked).
//!
//! The property is asserted, not a speed: a change waits for nothing but its own frame,
//! so its bound only tells a blocked stream from a slow machine. How long changes take
//! under list load is for the benchmark to measure, not for a test to judge.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{FakeAgent, Result, deployments, object};
use scale_agent_hub::kubeapi::{KubeApiConfig, TokenSource};
use scale_agent_proto::v1::EventType;

const TOKEN: &str = "load-test-token-0123456789";
const OBJECTS: usize = 10_000;

fn body_of(i: usize) -> String {
    // About 1.5 KiB, like a small Deployment.
    format!("{:>1500}", i)
}

async fn agent_with_objects(hub: &scale_agent_hub::RunningHub) -> Result<FakeAgent> {
    let mut agent = FakeAgent::connect_carrying_requests(hub, "load", "load-0").await?;
    agent
        .register_and_start_sync("big", "cluster-big", deployments(), "deployments")
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

/// Sends `n` one-event batches, each after the previous one's Ack, each within
/// `bound`; their Ack times, sorted.
async fn changes_applied(
    agent: &mut FakeAgent,
    n: usize,
    rv: &mut u64,
    bound: Duration,
) -> Result<Vec<Duration>> {
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
        tokio::time::timeout(bound, agent.events("big", vec![ev]))
            .await
            .map_err(|_| {
                format!("change {i} was not applied within {bound:?}: ingestion is blocked")
            })??;
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

/// Starts `n` lists of the whole account at `url` and reads only the first bytes of
/// each: the answers stay open with most of their body unread.
async fn held_lists(url: &str, n: usize) -> Result<Vec<reqwest::Response>> {
    let client = reqwest::Client::new();
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        let mut resp = client.get(url).bearer_auth(TOKEN).send().await?;
        assert!(
            resp.status().is_success(),
            "a list answered {}",
            resp.status()
        );
        let first = resp.chunk().await?.map_or(0, |c| c.len());
        assert!(first > 0, "a list answered nothing");
        held.push(resp);
    }
    Ok(held)
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
async fn lists_of_ten_thousand_objects_do_not_block_event_ingestion() -> Result<()> {
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
    // Far above any Ack time on a loaded machine; only a blocked stream reaches it.
    let bound = Duration::from_secs(30);

    // From the cache, through the Kubernetes API: four answers held unread (15 MB each,
    // more than the sockets buffer), four clients listing over and over.
    let url = format!("http://{api}/accounts/big/apis/apps/v1/deployments");
    let held = held_lists(&url, 4).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let (lists, task) = hammer(url, 4, Arc::clone(&stop));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let busy = changes_applied(&mut agent, 200, &mut rv, bound).await?;
    // The held answers were still unread while every change was applied.
    let held_count = held.len();
    drop(held);
    let stopped = Instant::now();
    stop.store(true, Ordering::Relaxed);
    let longest_list = task.await?;
    let cache_lists = lists.load(Ordering::Relaxed);
    eprintln!(
        "{OBJECTS} objects, {held_count} lists held unread, 4 clients listing: 200 changes applied ({}); {cache_lists} lists finished, longest {longest_list:?}; lists stopped in {:?}",
        summary(&busy),
        stopped.elapsed()
    );
    let metrics = hub.metrics_text();
    assert!(
        metrics.lines().any(|l| l
            .starts_with("scale_agent_hub_kube_api_requests_total{source=\"cache\",code=\"2xx\"}")),
        "the lists did not come from the cache"
    );
    assert!(
        cache_lists >= 1,
        "no list finished while the changes were applied"
    );
    hub.shutdown().await?;
    Ok(())
}

/// Watches from the cache are counted per token: one token holding its most is
/// answered 429 for the next, while another token's watch is served, and an ended
/// watch gives its place back.
#[tokio::test]
async fn one_tokens_watches_are_bounded_and_leave_room_for_another() -> Result<()> {
    common::logs();
    const OTHER: &str = "another-load-test-token-98765";
    let hub = common::hub_with(|c| {
        let mut api = KubeApiConfig::new(
            "127.0.0.1:0".parse().expect("an address"),
            TokenSource::Text(format!("{TOKEN} *\n{OTHER} big\n")),
        );
        api.max_watches_per_token = 2;
        c.kube_api = Some(api);
    })
    .await?;
    let api = hub.kube_api_addr().expect("the Kubernetes API is served");
    let _agent = agent_with_objects(&hub).await?;
    let url = format!("http://{api}/accounts/big/apis/apps/v1/deployments?watch=true");
    let client = reqwest::Client::new();
    let watch = |token: &'static str| client.get(&url).bearer_auth(token).send();
    let mut held = vec![watch(TOKEN).await?, watch(TOKEN).await?];
    for w in &held {
        assert_eq!(w.status().as_u16(), 200);
    }
    assert_eq!(watch(TOKEN).await?.status().as_u16(), 429, "a third watch");
    let other = watch(OTHER).await?;
    assert_eq!(other.status().as_u16(), 200, "another token's watch");
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let again = watch(TOKEN).await?;
        if again.status().as_u16() == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "an ended watch never gave its place back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    hub.shutdown().await?;
    Ok(())
}

/// The bytes of list answers a token leaves unread are bounded: past the token's bound
/// its next list is answered 429, while another token still lists, and reading (or
/// dropping) the answers gives the room back (issue 21, item 10).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unread_lists_are_bounded_per_token() -> Result<()> {
    common::logs();
    const OTHER: &str = "another-load-test-token-98765";
    let hub = common::hub_with(|c| {
        let mut api = KubeApiConfig::new(
            "127.0.0.1:0".parse().expect("an address"),
            TokenSource::Text(format!("{TOKEN} *\n{OTHER} big\n")),
        );
        // Two whole lists of the account (about 16 MB each), not three.
        api.held.per_token = 40 << 20;
        c.kube_api = Some(api);
    })
    .await?;
    let api = hub.kube_api_addr().expect("the Kubernetes API is served");
    let _agent = agent_with_objects(&hub).await?;
    let url = format!("http://{api}/accounts/big/apis/apps/v1/deployments");
    let held = held_lists(&url, 2).await?;
    let client = reqwest::Client::new();
    let third = client.get(&url).bearer_auth(TOKEN).send().await?;
    let status = third.status().as_u16();
    let text = third.text().await?;
    assert_eq!(status, 429, "a third unread list of one token: {text:.200}");
    assert!(text.contains("this token"), "{text}");
    let other = client.get(&url).bearer_auth(OTHER).send().await?;
    assert_eq!(other.status().as_u16(), 200, "another token's list");
    assert!(other.bytes().await?.len() > OBJECTS * 1500);
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let again = client.get(&url).bearer_auth(TOKEN).send().await?;
        if again.status().as_u16() == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "dropped lists never gave their bytes back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    hub.shutdown().await?;
    Ok(())
}

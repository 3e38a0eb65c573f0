//! A change to the cache costs per change, not per watch × change (issue 21, item 11):
//! however many watches from the cache follow a kind, applying a change takes the
//! hub's registry-and-cache lock the same number of times, because watches read the
//! kind's changes without it. Counted, not timed: the lock's acquisitions while
//! changes reach 1 watch and then 40.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{FakeAgent, Result, deployments, object};
use scale_agent_hub::RunningHub;
use scale_agent_hub::kubeapi::{KubeApiConfig, TokenSource};
use scale_agent_proto::v1::EventType;

const TOKEN: &str = "fan-out-test-token-0123456789";
/// Changes counted per round.
const CHANGES: usize = 5;

async fn agent_streaming(hub: &RunningHub) -> Result<FakeAgent> {
    // A real agent carries requests too: the hub answers from the cache only for
    // such agents.
    let mut agent = FakeAgent::connect_carrying_requests(hub, "fan", "fan-0").await?;
    agent
        .register_and_start_sync("fan", "cluster-fan", deployments(), "deployments")
        .await?;
    let events = (0..10)
        .map(|i| {
            object(
                EventType::Added,
                deployments(),
                "ns",
                &format!("d-{i}"),
                &(100 + i).to_string(),
            )
        })
        .collect();
    agent.events("fan", events).await?;
    agent.sync_end("fan", deployments(), "109", 10).await?;
    agent.barrier().await?;
    Ok(agent)
}

/// Opens `n` watches from version `rv`; each counts the events it reads into `lines`.
async fn watches(
    api: &str,
    n: usize,
    rv: u64,
    lines: &Arc<AtomicUsize>,
) -> Result<Vec<tokio::task::JoinHandle<()>>> {
    let client = reqwest::Client::new();
    let url = format!(
        "http://{api}/accounts/fan/apis/apps/v1/namespaces/ns/deployments?watch=true&resourceVersion={rv}"
    );
    let mut readers = Vec::new();
    for _ in 0..n {
        let mut w = client.get(&url).bearer_auth(TOKEN).send().await?;
        assert_eq!(w.status().as_u16(), 200, "{}", w.text().await?);
        let lines = Arc::clone(lines);
        readers.push(tokio::spawn(async move {
            while let Ok(Some(chunk)) = w.chunk().await {
                let n = chunk.iter().filter(|b| **b == b'\n').count();
                lines.fetch_add(n, Ordering::SeqCst);
            }
        }));
    }
    Ok(readers)
}

/// Sends one change and waits until `expect` events were read in all.
async fn change(
    agent: &mut FakeAgent,
    rv: &mut u64,
    lines: &AtomicUsize,
    expect: usize,
) -> Result<()> {
    *rv += 1;
    let ev = object(
        EventType::Modified,
        deployments(),
        "ns",
        "d-1",
        &rv.to_string(),
    );
    agent.events("fan", vec![ev]).await?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while lines.load(Ordering::SeqCst) < expect {
        assert!(
            Instant::now() < deadline,
            "{} of {expect} events reached the watches",
            lines.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_change_takes_the_cache_lock_as_often_whatever_the_number_of_watches() -> Result<()> {
    common::logs();
    let hub = common::hub_with(|c| {
        c.kube_api = Some(KubeApiConfig::new(
            "127.0.0.1:0".parse().expect("an address"),
            TokenSource::Text(format!("{TOKEN} *\n")),
        ));
    })
    .await?;
    let api = hub
        .kube_api_addr()
        .expect("the Kubernetes API is served")
        .to_string();
    let mut agent = agent_streaming(&hub).await?;
    let mut rv = 109;
    let mut locks = Vec::new();
    for n in [1, 40] {
        let lines = Arc::new(AtomicUsize::new(0));
        let readers = watches(&api, n, rv, &lines).await?;
        // Every watch is following before counting starts.
        change(&mut agent, &mut rv, &lines, n).await?;
        let before = hub.core_locks();
        for i in 2..=CHANGES + 1 {
            change(&mut agent, &mut rv, &lines, n * i).await?;
        }
        let taken = hub.core_locks() - before;
        eprintln!("{n} watches: the cache lock taken {taken} times for {CHANGES} changes");
        locks.push(taken);
        for r in readers {
            r.abort();
        }
    }
    // Before: every watch took the lock on every change (40 × 5 = 200 more). Some
    // slack for the hub's own periodic work.
    assert!(
        locks[1] <= locks[0] + 20,
        "the cache lock was taken {} times for {CHANGES} changes followed by 1 watch, {} times by 40",
        locks[0],
        locks[1]
    );
    hub.shutdown().await?;
    Ok(())
}

//! Many clients listing one big kind at once, as Clouddriver's caching threads and a
//! fleet of kubectl users do: each client lists every object of the kind in pages of
//! [`PAGE`] (as kubectl and client-go's informers do), all [`CLIENTS`] at once, through
//! the hub and on the cluster's API server. Each client has a connection, and at the
//! hub a token, of its own. While the same load runs through the hub, changes are
//! watched through it: answering big lists must not hold back the agents' streams.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams};

/// Clients listing at once.
pub const CLIENTS: usize = 50;
/// Rounds of [`CLIENTS`] concurrent lists each way; every client's time is a sample.
pub const ROUNDS: usize = 3;
/// Objects per page, as kubectl and client-go ask.
const PAGE: u32 = 500;

/// What one way (through the hub, or on the API server) measured.
pub struct Load {
    /// Each client's time to list every object, in seconds.
    pub per_client: Vec<f64>,
    /// The median round's time from the first request to the last answer, in seconds.
    pub round_wall: f64,
}

/// Lists every object of the namespace `ns` with each client at once, [`ROUNDS`] times;
/// each list must hold `objects` objects.
pub async fn measure(clients: &[kube::Client], ns: &str, objects: usize) -> anyhow::Result<Load> {
    let mut per_client = Vec::with_capacity(clients.len() * ROUNDS);
    let mut walls = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        let started = Instant::now();
        let times = round(clients, ns, objects).await?;
        walls.push(started.elapsed().as_secs_f64());
        per_client.extend(times.into_iter().map(|t| t.as_secs_f64()));
    }
    walls.sort_by(f64::total_cmp);
    Ok(Load {
        per_client,
        round_wall: walls[walls.len() / 2],
    })
}

/// Runs rounds of lists through `clients` until the returned flag is set; the task
/// ends with the number of rounds run, or the first error.
pub fn background(
    clients: Vec<kube::Client>,
    ns: String,
    objects: usize,
) -> (
    Arc<AtomicBool>,
    tokio::task::JoinHandle<anyhow::Result<usize>>,
) {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let task = tokio::spawn(async move {
        let mut rounds = 0;
        while !flag.load(Ordering::Relaxed) {
            round(&clients, &ns, objects).await?;
            rounds += 1;
        }
        Ok(rounds)
    });
    (stop, task)
}

/// One round: every client lists at once; each client's time.
async fn round(
    clients: &[kube::Client],
    ns: &str,
    objects: usize,
) -> anyhow::Result<Vec<Duration>> {
    let lists = clients.iter().map(|client| {
        let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
        async move {
            let started = Instant::now();
            let listed = list_all(&api).await?;
            anyhow::ensure!(
                listed >= objects,
                "a client listed {listed} of {objects} objects"
            );
            Ok(started.elapsed())
        }
    });
    futures::future::try_join_all(lists).await
}

/// Lists every object page by page; how many there were.
async fn list_all(api: &Api<ConfigMap>) -> anyhow::Result<usize> {
    let mut listed = 0;
    let mut token: Option<String> = None;
    loop {
        let mut lp = ListParams::default().limit(PAGE);
        if let Some(t) = &token {
            lp = lp.continue_token(t);
        }
        let page = api.list(&lp).await?;
        listed += page.items.len();
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(next) => token = Some(next),
            None => return Ok(listed),
        }
    }
}

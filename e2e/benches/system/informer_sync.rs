//! client-go's own shared informer (`e2e/informer/`: since client-go 0.35 it lists with a
//! streaming watch, `sendInitialEvents=true`) on one big namespace of ConfigMaps: the
//! time from starting the process until it reports itself synced, with every object.

use std::path::Path;
use std::time::Duration;

use scale_agent_e2e::informer::Informer;

/// Runs of the informer each way; the median is reported.
pub const RUNS: usize = 3;
/// How long one run may take to sync.
const LIMIT: Duration = Duration::from_secs(120);

/// The median of [`RUNS`] informer starts through `kubeconfig` on the ConfigMaps of
/// `ns` until synced; each must see at least `objects` objects.
pub fn median(kubeconfig: &Path, ns: &str, objects: usize) -> anyhow::Result<Duration> {
    let mut times = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        times.push(once(kubeconfig, ns, objects)?);
    }
    times.sort();
    Ok(times[times.len() / 2])
}

/// One informer process, from its start until it prints `synced`.
fn once(kubeconfig: &Path, ns: &str, objects: usize) -> anyhow::Result<Duration> {
    let informer = Informer::start(kubeconfig, None, ns, LIMIT)?;
    let synced = informer.next_within("sync", LIMIT, &|v| v["event"] == "synced");
    let took = informer.started.elapsed();
    informer.kill();
    let seen = synced?["names"].as_array().map_or(0, Vec::len);
    anyhow::ensure!(
        seen >= objects,
        "the informer synced with {seen} of {objects} objects"
    );
    Ok(took)
}

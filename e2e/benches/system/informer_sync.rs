//! client-go's own shared informer (`e2e/informer/`: since client-go 0.35 it lists with a
//! streaming watch, `sendInitialEvents=true`) on one big namespace of ConfigMaps: the
//! time from starting the process until it reports itself synced, with every object.

use std::io::BufRead as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::Value;

/// Runs of the informer each way; the median is reported.
pub const RUNS: usize = 3;
/// How long one run may take to sync.
const LIMIT: Duration = Duration::from_secs(120);

/// The median of [`RUNS`] informer starts through `kubeconfig` on the ConfigMaps of
/// `ns` until synced; each must see at least `objects` objects.
pub fn median(kubeconfig: &Path, ns: &str, objects: usize) -> anyhow::Result<Duration> {
    let bin = scale_agent_e2e::gitops::go_tool("informer")?;
    let mut times = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        times.push(once(&bin, kubeconfig, ns, objects)?);
    }
    times.sort();
    Ok(times[times.len() / 2])
}

/// One informer process, from its start until it prints `synced`.
fn once(bin: &Path, kubeconfig: &Path, ns: &str, objects: usize) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut child = Command::new(bin)
        .arg(format!("--kubeconfig={}", kubeconfig.display()))
        .arg(format!("--namespace={ns}"))
        .arg(format!("--for={}s", LIMIT.as_secs()))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let stdout = child.stdout.take().context("the informer's stdout")?;
    let mut synced = None;
    for line in std::io::BufReader::new(stdout).lines() {
        let Ok(v) = serde_json::from_str::<Value>(&line?) else {
            continue;
        };
        if v["event"] == "synced" {
            synced = Some((started.elapsed(), v["names"].as_array().map_or(0, Vec::len)));
            break;
        }
    }
    // Closing its standard input ends the informer.
    drop(child.stdin.take());
    let _ = child.kill();
    let _ = child.wait();
    let (took, seen) =
        synced.with_context(|| format!("the informer ended without syncing within {LIMIT:?}"))?;
    anyhow::ensure!(
        seen >= objects,
        "the informer synced with {seen} of {objects} objects"
    );
    Ok(took)
}

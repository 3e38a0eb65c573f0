//! `hub_ingest`: the criterion benchmark `hub/benches/ingest.rs` measures how many
//! events the hub applies per second on one core, and a baseline (decode, check the
//! JSON, keep by key) on the same frames; `just bench` runs it before this binary. Here
//! its estimates are read from `target/criterion/hub_ingest/` into the report. The
//! hub's memory per cached object comes from `initial_sync`'s hub (a real hub process
//! holding every object of that scenario).

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use scale_agent_e2e::bench::goal::Goal;
use scale_agent_e2e::bench::report::Figure;
use serde_json::Value;

use crate::params::Params;

/// The name of the memory figure (measured in `initial_sync`).
pub const RSS_PER_OBJECT: &str = "hub_ingest.rss_per_object";

/// The figures this scenario makes, with their units.
pub fn names() -> Vec<(String, &'static str)> {
    vec![
        ("hub_ingest.events_per_second.batch_500".into(), "events/s"),
        ("hub_ingest.events_per_second.batch_1".into(), "events/s"),
    ]
}

fn criterion_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::workspace_root().join("target"))
        .join("criterion")
        .join("hub_ingest")
}

/// Mean seconds per iteration of criterion benchmark `id`, and when it was measured.
fn estimate(id: &str) -> anyhow::Result<(f64, SystemTime)> {
    let path = criterion_dir().join(id).join("new").join("estimates.json");
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "reading {} (run `cargo bench -p scale-agent-hub --bench ingest` first; `just bench` does)",
            path.display()
        )
    })?;
    let v: Value = serde_json::from_str(&text)?;
    let ns = v["mean"]["point_estimate"]
        .as_f64()
        .with_context(|| format!("no mean in {}", path.display()))?;
    Ok((ns * 1e-9, std::fs::metadata(&path)?.modified()?))
}

/// Reads the criterion results into figures.
pub async fn run(_p: &Params) -> anyhow::Result<Vec<Figure>> {
    // `just bench` notes when it started the criterion run: older results are not this
    // run's.
    let since = std::env::var("BENCH_INGEST_SINCE")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .map(|s| SystemTime::UNIX_EPOCH + Duration::from_secs(s));
    let mut out = Vec::new();
    for batch in [500u32, 1] {
        let (hub, at) = estimate(&format!("hub_batch_{batch}"))?;
        let (bare, _) = estimate(&format!("baseline_batch_{batch}"))?;
        if let Some(since) = since {
            anyhow::ensure!(
                at >= since,
                "the criterion results in {} predate this run",
                criterion_dir().display()
            );
        }
        let age = SystemTime::now()
            .duration_since(at)
            .map_or(0, |d| d.as_secs());
        let name = format!("hub_ingest.events_per_second.batch_{batch}");
        out.push(
            Figure::new("hub_ingest", &name, f64::from(batch) / hub, "events/s")
                .baseline(
                    f64::from(batch) / bare,
                    "decode the same frames, check each body is JSON, keep it in a hash map",
                )
                .goal(Goal::RatioAtLeast { ratio: 0.5 })
                .param("events_per_frame", batch)
                .param("cached_objects", 100_000)
                .param("object_bytes", 1200)
                .param("threads", 1)
                .param("criterion_results_age_seconds", age)
                .note("higher is better; the ratio is the share of the baseline's rate the hub reaches"),
        );
    }
    Ok(out)
}

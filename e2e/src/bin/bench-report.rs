//! Writes what the benchmark publishes from `bench-results/latest.json`:
//! `bench-results/latest.md` and the figures of the README and docs/performance.md
//! (between their markers). `just bench` does the same at the end of a run; run this
//! after editing how a report is shown.

use std::path::Path;

use scale_agent_e2e::bench::report::{Report, publish};

fn main() -> Result<(), String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let json_path = root.join("bench-results/latest.json");
    let json = std::fs::read_to_string(&json_path)
        .map_err(|e| format!("reading {}: {e}", json_path.display()))?;
    let report = Report::from_json(&json).map_err(|e| format!("{}: {e}", json_path.display()))?;
    let md = root.join("bench-results/latest.md");
    std::fs::write(&md, report.to_markdown())
        .map_err(|e| format!("writing {}: {e}", md.display()))?;
    publish(&root, &report)?;
    println!("wrote bench-results/latest.md, README.md and docs/performance.md from latest.json");
    Ok(())
}

//! Replays a fuzz target's checked-in inputs on stable Rust: every file of
//! `fuzz/seeds/<target>/` and `fuzz/regressions/<target>/`, through the target's body.
//! Included (`#[path]`) by the seed-replay tests of the crates the targets exercise.

use std::path::{Path, PathBuf};

/// Runs `body` over every checked-in input of `target`; returns how many ran. Panics,
/// naming the file, when an input breaks the target, and when there is no seed at all
/// (a replay of nothing proves nothing).
pub fn replay(target: &str, body: fn(&[u8])) -> usize {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut files: Vec<PathBuf> = ["seeds", "regressions"]
        .iter()
        .filter_map(|dir| std::fs::read_dir(fuzz.join(dir).join(target)).ok())
        .flatten()
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(
        files.iter().any(|p| p.starts_with(fuzz.join("seeds"))),
        "no seeds in fuzz/seeds/{target}"
    );
    for file in &files {
        let data = std::fs::read(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        if let Err(panic) = std::panic::catch_unwind(|| body(&data)) {
            let why = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_default();
            panic!("fuzz input {} breaks {target}: {why}", file.display());
        }
    }
    files.len()
}

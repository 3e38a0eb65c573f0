//! What a failed end-to-end test prints, the same for every test binary: for each
//! namespace the test created, what lives in it (AgentShards and their children, pods,
//! Leases), the AgentShards' status and the namespace's Events; the last lines of the logs
//! of the components the test started (hub, agents, nginx, an operator: everything under
//! the test's folder, [`Env::test_dir`]); and the lines of the shared components' logs
//! (the binary's operator) that mention the test's namespaces. Every part is bounded, so
//! the report stays readable however much a test logged.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::Env;
use crate::process::{files_under, read_end};

/// Lines shown of each log of a test's own components.
const LOG_LINES: usize = 30;
/// Logs shown per namespace; the folder holds the rest.
const MAX_LOGS: usize = 8;
/// Lines shown of a shared log that mention the test.
const SHARED_LOG_LINES: usize = 40;
/// How much of the end of a shared log is searched for the test's lines.
const SHARED_LOG_BYTES: u64 = 4 * 1024 * 1024;
/// Lines shown of each kubectl listing.
const LISTING_LINES: usize = 150;
/// Characters shown of one line.
const LINE_CHARS: usize = 400;

/// The report of a failed test that created `namespaces`; `shared_logs` are the logs of
/// components every test of the binary uses.
pub fn report(env: &Env, namespaces: &[String], shared_logs: &[PathBuf]) -> String {
    let mut out = String::new();
    if namespaces.is_empty() {
        out += "=== the test created no namespace\n";
    }
    for ns in namespaces {
        namespace_report(env, ns, &mut out);
    }
    for log in shared_logs {
        let text = read_end(log, SHARED_LOG_BYTES);
        let (lines, matched) = lines_about(&text, namespaces, SHARED_LOG_LINES);
        let what = if matched {
            "lines mentioning the test's namespaces"
        } else {
            "no line mentions the test's namespaces; its last lines"
        };
        let _ = writeln!(out, "=== {} ({what}):\n{lines}", log.display());
    }
    let _ = writeln!(
        out,
        "=== every component's full log is under {}",
        env.cp.run_dir.display()
    );
    out
}

fn namespace_report(env: &Env, ns: &str, out: &mut String) {
    let kubectl = |args: &[&str]| match env.cp.kubectl(args) {
        Ok(text) if text.trim().is_empty() => "(none)\n".to_string(),
        Ok(text) => text,
        Err(e) => format!("(kubectl {} failed: {e})", args.join(" ")),
    };
    let _ = writeln!(out, "=== namespace {ns}: objects");
    out.push_str(&clip(
        &kubectl(&[
            "get",
            "agentshards,deployments,replicasets,pods,configmaps,secrets,poddisruptionbudgets,leases",
            "-n",
            ns,
            "-o",
            "wide",
        ]),
        LISTING_LINES,
        Keep::Head,
    ));
    let _ = writeln!(out, "=== namespace {ns}: AgentShard status");
    out.push_str(&clip(
        &shard_statuses(&kubectl(&["get", "agentshards", "-n", ns, "-o", "json"])),
        LISTING_LINES,
        Keep::Head,
    ));
    let _ = writeln!(out, "=== namespace {ns}: Events (latest last)");
    out.push_str(&clip(
        // Not by lastTimestamp: events.k8s.io Events (the operator's) may lack it.
        &kubectl(&[
            "get",
            "events",
            "-n",
            ns,
            "--sort-by=.metadata.creationTimestamp",
        ]),
        LISTING_LINES,
        Keep::Tail,
    ));
    let dir = env.test_dir(ns);
    let logs = component_logs(&dir);
    if logs.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "=== logs of the components of namespace {ns} (last {LOG_LINES} lines each):"
    );
    for log in logs.iter().take(MAX_LOGS) {
        let text = read_end(log, 256 * 1024);
        let _ = writeln!(out, "--- {}", log.display());
        out.push_str(&clip(&text, LOG_LINES, Keep::Tail));
    }
    if logs.len() > MAX_LOGS {
        let _ = writeln!(
            out,
            "({} more logs in {})",
            logs.len() - MAX_LOGS,
            dir.display()
        );
    }
}

/// Each AgentShard of a `kubectl get -o json` listing: name, generation and status as
/// YAML (the status says what the operator concluded; the spec is the test's own).
fn shard_statuses(listing: &str) -> String {
    let Ok(list) = serde_json::from_str::<serde_json::Value>(listing) else {
        // kubectl's own error text.
        return format!("{listing}\n");
    };
    let items = list["items"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    if items.is_empty() {
        return "(no AgentShards)\n".into();
    }
    let mut out = String::new();
    for item in items {
        let status = match &item["status"] {
            serde_json::Value::Null => "(no status yet)\n".to_string(),
            status => serde_yaml::to_string(status).unwrap_or_default(),
        };
        let _ = write!(
            out,
            "{} (generation {}):\n{}",
            item["metadata"]["name"].as_str().unwrap_or("?"),
            item["metadata"]["generation"],
            indent(&status)
        );
    }
    out
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("  {l}\n")).collect()
}

/// The `*.log` files under `dir`, the hub's and operators' first (they say what the
/// agents were told), then by name.
fn component_logs(dir: &Path) -> Vec<PathBuf> {
    let mut logs: Vec<PathBuf> = files_under(dir)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    logs.sort_by_key(|p| (rank(p), p.clone()));
    logs
}

fn rank(log: &Path) -> u8 {
    let name = log
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if name.starts_with("hub") {
        0
    } else if name.starts_with("operator") {
        1
    } else if name == "error.log" || name.starts_with("nginx") {
        2
    } else {
        3
    }
}

/// The last `max` lines of `text` that mention one of `needles`, and whether any did;
/// when none does, the last `max` lines.
fn lines_about(text: &str, needles: &[String], max: usize) -> (String, bool) {
    let matching: Vec<&str> = text
        .lines()
        .filter(|l| needles.iter().any(|n| l.contains(n.as_str())))
        .collect();
    if matching.is_empty() {
        (clip(text, max, Keep::Tail), false)
    } else {
        (clip(&matching.join("\n"), max, Keep::Tail), true)
    }
}

/// Which end of a text to keep.
#[derive(Clone, Copy)]
enum Keep {
    Head,
    Tail,
}

/// At most `max` lines of `text`, each at most [`LINE_CHARS`] characters, saying how many
/// were left out; ends with a newline.
fn clip(text: &str, max: usize, keep: Keep) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let dropped = lines.len().saturating_sub(max);
    let kept = match keep {
        Keep::Head => &lines[..lines.len() - dropped],
        Keep::Tail => &lines[dropped..],
    };
    let mut out = String::new();
    if dropped > 0 && matches!(keep, Keep::Tail) {
        let _ = writeln!(out, "({dropped} earlier lines left out)");
    }
    for line in kept {
        match line.char_indices().nth(LINE_CHARS) {
            Some((cut, _)) => {
                let _ = writeln!(out, "{} …", &line[..cut]);
            }
            None => {
                let _ = writeln!(out, "{line}");
            }
        }
    }
    if dropped > 0 && matches!(keep, Keep::Head) {
        let _ = writeln!(out, "({dropped} more lines left out)");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_bounds_lines_and_their_length() {
        let text: String = (0..10).map(|i| format!("line {i}\n")).collect();
        assert_eq!(
            clip(&text, 2, Keep::Tail),
            "(8 earlier lines left out)\nline 8\nline 9\n"
        );
        assert_eq!(
            clip(&text, 2, Keep::Head),
            "line 0\nline 1\n(8 more lines left out)\n"
        );
        assert_eq!(clip("a\nb", 5, Keep::Head), "a\nb\n");
        let long = "é".repeat(LINE_CHARS + 10);
        let clipped = clip(&long, 1, Keep::Tail);
        assert_eq!(clipped.chars().count(), LINE_CHARS + 3, "{clipped}");
    }

    #[test]
    fn shared_logs_show_the_lines_of_the_failed_test() {
        let log = "a ns-1 reconciled\nb ns-2 reconciled\nc ns-1 failed\nd other\n";
        let ns = vec!["ns-1".to_string()];
        assert_eq!(
            lines_about(log, &ns, 10),
            ("a ns-1 reconciled\nc ns-1 failed\n".into(), true)
        );
        let (tail, matched) = lines_about(log, &["ns-9".to_string()], 1);
        assert!(!matched);
        assert_eq!(tail, "(3 earlier lines left out)\nd other\n");
    }

    #[test]
    fn statuses_of_a_listing() {
        let listing = r#"{"items":[{"metadata":{"name":"east","generation":2},
            "status":{"observedGeneration":2,"conditions":[{"type":"Ready","status":"True"}]}}]}"#;
        let out = shard_statuses(listing);
        assert!(out.starts_with("east (generation 2):\n"), "{out}");
        assert!(out.contains("  observedGeneration: 2\n"), "{out}");
        assert!(out.contains("type: Ready"), "{out}");
        assert_eq!(shard_statuses(r#"{"items":[]}"#), "(no AgentShards)\n");
        assert_eq!(
            shard_statuses(r#"{"items":[{"metadata":{"name":"new","generation":1}}]}"#),
            "new (generation 1):\n  (no status yet)\n"
        );
        assert_eq!(shard_statuses("(kubectl failed)"), "(kubectl failed)\n");
    }

    #[test]
    fn the_hub_and_operators_come_first() {
        let dir = tempfile::tempdir().expect("tempdir");
        for f in [
            "logs/agent-a-0.log",
            "logs/hub.log",
            "nginx-1/error.log",
            "logs/operator.log",
            "pods/x/config.yaml",
        ] {
            let path = dir.path().join(f);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            std::fs::write(&path, "x").expect("write");
        }
        let names: Vec<String> = component_logs(dir.path())
            .iter()
            .map(|p| {
                p.strip_prefix(dir.path())
                    .expect("under dir")
                    .display()
                    .to_string()
            })
            .collect();
        assert_eq!(
            names,
            [
                "logs/hub.log",
                "logs/operator.log",
                "nginx-1/error.log",
                "logs/agent-a-0.log"
            ]
        );
    }
}

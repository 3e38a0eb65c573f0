//! The AgentShard CRD, installed the same way by the tests, `just up` and the benchmarks:
//! the checked-in YAML applied server-side, then waited for until the API server serves
//! the kind, so the first AgentShard applied afterwards is accepted.

use std::path::{Path, PathBuf};

use std::time::{Duration, Instant};

use crate::{ControlPlane, Error, Result};

/// The CRD's name.
pub const NAME: &str = "agentshards.scaleagent.dev";

/// The checked-in CRD (`just crds` regenerates it from the Rust types).
pub fn checked_in() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds/agentshards.scaleagent.dev.yaml")
}

/// Applies the CRD at `path` to the management cluster and waits (at most 60 s) until it
/// is Established.
pub fn install(cp: &ControlPlane, path: &Path) -> Result<()> {
    cp.kubectl([
        "apply".as_ref(),
        "--server-side".as_ref(),
        "-f".as_ref(),
        path.as_os_str(),
    ])?;
    // Polled rather than `kubectl wait`: right after the create the CRD has no
    // conditions yet, and `kubectl wait` then fails ("accessor error") instead of waiting;
    // a jsonpath filter over the conditions fails the same way, so the JSON is read.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let crd = cp.kubectl(["get", &format!("crd/{NAME}"), "-o", "json"])?;
        if established(&crd) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(Error::Timeout {
                what: format!("crd/{NAME} to be Established"),
                seconds: 60,
            });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Whether the CRD (`kubectl get -o json`) has condition Established True; false while it
/// has no conditions yet.
fn established(crd_json: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(crd_json)
        .ok()
        .and_then(|crd| crd.pointer("/status/conditions").cloned())
        .and_then(|c| c.as_array().cloned())
        .is_some_and(|conditions| {
            conditions
                .iter()
                .any(|c| c["type"] == "Established" && c["status"] == "True")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn established_only_with_the_condition_true() {
        assert!(!established(r#"{"status":{}}"#));
        assert!(!established(r#"{"metadata":{}}"#));
        assert!(!established(
            r#"{"status":{"conditions":[{"type":"Established","status":"False"}]}}"#
        ));
        assert!(established(
            r#"{"status":{"conditions":[{"type":"NamesAccepted","status":"True"},{"type":"Established","status":"True"}]}}"#
        ));
    }
}

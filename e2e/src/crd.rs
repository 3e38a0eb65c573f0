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
    // conditions yet, and `kubectl wait` then fails ("accessor error") instead of waiting.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let established = cp.kubectl([
            "get",
            &format!("crd/{NAME}"),
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Established\")].status}",
        ])?;
        if established.trim() == "True" {
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

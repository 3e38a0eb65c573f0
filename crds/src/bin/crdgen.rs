//! Writes the AgentShard CRD manifest.
//!
//! ```text
//! crdgen            # to crds/agentshards.scaleagent.dev.yaml
//! crdgen PATH       # to PATH
//! crdgen -          # to standard output
//! ```

use std::{io::Write, path::PathBuf, process::ExitCode};

fn main() -> ExitCode {
    let target = std::env::args_os().nth(1);
    let yaml = match scale_agent_crds::crd_yaml() {
        Ok(yaml) => yaml,
        Err(err) => {
            eprintln!("crdgen: {err}");
            return ExitCode::FAILURE;
        }
    };
    let written = match target.as_deref() {
        Some(dash) if dash == "-" => std::io::stdout().lock().write_all(yaml.as_bytes()),
        path => {
            let path = path.map(PathBuf::from).unwrap_or_else(|| {
                PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(scale_agent_crds::CRD_FILE)
            });
            std::fs::write(&path, &yaml).map(|()| eprintln!("crdgen: wrote {}", path.display()))
        }
    };
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("crdgen: cannot write the CRD: {err}");
            ExitCode::FAILURE
        }
    }
}

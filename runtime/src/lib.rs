//! What every scale-agent binary (operator, agent, hub) does the same way, in one place:
//!
//! - [`logging`]: the `--log-format` flag and the tracing subscriber behind it;
//! - [`metrics`]: metrics declared once per binary and exported with its build;
//! - [`duration`]: duration flags in one style (`15s`, `500ms`, `10m`, `1h30m`);
//! - [`flags`]: the check of a binary's flag declarations, and non-zero duration flags;
//! - [`signal`]: waiting for SIGTERM or Ctrl-C, so a binary can let go of what it holds
//!   (a Lease, its sessions) before it exits;
//! - [`entry`]: running a binary's async body to an exit code.

pub mod duration;
pub mod entry;
pub mod flags;
pub mod logging;
pub mod metrics;
pub mod signal;

pub use duration::parse_duration;
pub use entry::run_to_exit;
pub use logging::{LogFormat, init_logging};
pub use signal::terminated;

//! Log setup: `--log-format text|json`, `RUST_LOG` to filter, lines to stderr.

use clap::ValueEnum;
use tracing_subscriber::EnvFilter;

/// How log lines are written (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum LogFormat {
    /// Human-readable text.
    #[default]
    Text,
    /// One JSON object per line, with the current span's fields (shard, account), for log
    /// collectors.
    Json,
}

/// Installs the process's tracing subscriber: `RUST_LOG` when set, else `default_filter`
/// (e.g. `"info,kube_client=warn"`); lines go to stderr, coloured only on a terminal.
/// Call once, first thing in `main`.
pub fn init_logging(format: LogFormat, default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().with_current_span(true).init(),
    }
}

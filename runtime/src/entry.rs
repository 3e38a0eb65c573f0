//! How a binary's `main` runs its async body: one place for the runtime and the exit code,
//! so the program runs the same whether it was started under its own name or through the
//! image's one executable (`scale-agent`, which dispatches on its name).

use std::fmt::Display;
use std::process::ExitCode;

/// Runs `body` to completion on a multi-threaded tokio runtime: success, or its error
/// logged as `"<program> failed"` and a failure exit code. A runtime that cannot start is
/// said on stderr (logging may not be set up yet).
pub fn run_to_exit<E: Display>(
    program: &'static str,
    body: impl Future<Output = Result<(), E>>,
) -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("{program}: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(body) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %err, "{program} failed");
            ExitCode::FAILURE
        }
    }
}

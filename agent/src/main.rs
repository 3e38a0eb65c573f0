//! `scale-agent`: the agent binary. See `scale_agent::cli` for its flags.

use std::process::ExitCode;

use clap::Parser as _;
use scale_agent::cli::Args;

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    scale_agent_runtime::init_logging(args.log_format, "info,kube_client=warn");
    match scale_agent::run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "scale-agent failed");
            ExitCode::FAILURE
        }
    }
}

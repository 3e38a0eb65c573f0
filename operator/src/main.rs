//! `scale-agent-operator`: see the library's documentation and `--help`.

use std::process::ExitCode;

use clap::Parser as _;
use scale_agent_operator::cli::Args;

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    scale_agent_runtime::init_logging(args.log_format, "info,kube_runtime=warn,kube_client=warn");
    match scale_agent_operator::run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "scale-agent-operator failed");
            ExitCode::FAILURE
        }
    }
}

//! `scale-agent-hub`: the hub binary. See `cli` for its flags and the
//! `scale_agent_hub` library for everything else.

mod cli;

use std::process::ExitCode;

use clap::Parser as _;
use scale_agent_hub::{Error, Hub};
use tracing::{error, info};

async fn run(args: cli::Args) -> Result<(), Error> {
    let hub = Hub::start(args.into_config()?).await?;
    let stop = hub.shutdown_token();
    tokio::spawn(async move {
        scale_agent_runtime::terminated().await;
        info!("signal received; draining agent sessions and stopping");
        stop.cancel();
    });
    hub.wait().await
}

fn main() -> ExitCode {
    let args = cli::Args::parse();
    scale_agent_runtime::init_logging(args.log_format, "info");
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(err) => {
            error!(%err, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            error!(%err, kind = err.label(), "hub stopped");
            ExitCode::FAILURE
        }
    }
}

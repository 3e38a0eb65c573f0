//! `scale-agent-hub`: the hub binary. See `cli` for its flags and the
//! `scale_agent_hub` library for everything else.

mod cli;

use std::process::ExitCode;

use clap::Parser as _;
use scale_agent_hub::kubeapi::kubeconfig;
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

/// `scale-agent-hub kubeconfig ...`: see `kubeconfig::Args`.
fn write_kubeconfig() -> ExitCode {
    let args = kubeconfig::Args::parse_from(std::env::args_os().skip(1));
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("scale-agent-hub kubeconfig: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(kubeconfig::run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("scale-agent-hub kubeconfig: {err}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == "kubeconfig")
    {
        return write_kubeconfig();
    }
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

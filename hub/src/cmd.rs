//! The `scale-agent-hub` program: its own binary and the image's `scale-agent` executable
//! (as `scale-agent-hub`) both run [`main_with`]. See [`crate::cli`] for its flags.

use std::ffi::OsString;
use std::process::ExitCode;

use clap::Parser as _;
use tracing::{error, info};

use crate::cli;
use crate::kubeapi::kubeconfig;
use crate::{Error, Hub};

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

/// `scale-agent-hub kubeconfig ...`: see `kubeconfig::Args`; `args` start at
/// `kubeconfig`.
fn write_kubeconfig(args: Vec<OsString>) -> ExitCode {
    let args = kubeconfig::Args::parse_from(args);
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

/// The hub's `main`: `args` are the command line, the program name first.
/// `scale-agent-hub kubeconfig ...` writes a kubeconfig; anything else runs the hub.
pub fn main_with(args: impl IntoIterator<Item = OsString>) -> ExitCode {
    let args: Vec<OsString> = args.into_iter().collect();
    if args.get(1).is_some_and(|a| a == "kubeconfig") {
        return write_kubeconfig(args.into_iter().skip(1).collect());
    }
    let args = cli::Args::parse_from(args);
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

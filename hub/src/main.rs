//! `scale-agent-hub`: the hub binary. See `cli` for its flags and the
//! `scale_agent_hub` library for everything else.

mod cli;

use std::process::ExitCode;

use clap::Parser as _;
use scale_agent_hub::kubeapi::{KubeApiConfig, TokenSource, kubeconfig};
use scale_agent_hub::{Config, Hub, ShardSource, TlsConfig};
use tracing::{error, info};

fn config(args: &cli::Args) -> Result<Config, scale_agent_hub::Error> {
    let mut config = Config::new(args.grpc_addr, args.http_addr);
    config.grace_period = args.grace_period;
    config.store.clone_from(&args.store);
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        config.tls = Some(TlsConfig::from_files(cert, key, args.client_ca.as_deref())?);
    }
    config.trusted_proxies.clone_from(&args.trusted_proxies);
    config
        .client_cert_header
        .clone_from(&args.client_cert_header);
    if !args.authorize_shards.is_empty() {
        let namespaces = if args.authorize_shards.iter().any(|n| n == "*") {
            Vec::new()
        } else {
            args.authorize_shards.clone()
        };
        config.authorize = Some(ShardSource::Watch {
            namespaces,
            client: None,
        });
    }
    config.max_connection_age = args.max_connection_age;
    config.max_connection_age_grace = args.max_connection_age_grace;
    config.api_token_file.clone_from(&args.api_token_file);
    config.reload_interval = args.reload_interval;
    if let (Some(addr), Some(tokens)) = (args.kube_api_addr, &args.kube_api_tokens_file) {
        let mut api = KubeApiConfig::new(addr, TokenSource::File(tokens.clone()));
        api.allow_impersonation = args.kube_api_allow_impersonation;
        api.request_timeout = args.kube_api_request_timeout;
        config.kube_api = Some(api);
    }
    Ok(config)
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

async fn run(args: cli::Args) -> Result<(), scale_agent_hub::Error> {
    let hub = Hub::start(config(&args)?).await?;
    let stop = hub.shutdown_token();
    tokio::spawn(async move {
        scale_agent_runtime::terminated().await;
        info!("signal received; draining agent sessions and stopping");
        stop.cancel();
    });
    hub.wait().await
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

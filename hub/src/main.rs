//! `scale-agent-hub`: the hub binary. See `cli` for its flags.

mod cli;

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    let _args = cli::Args::parse();
    // The run path (store, registry, gRPC and HTTP servers) is not written yet;
    // fail loudly rather than pretend to run.
    eprintln!("scale-agent-hub: not yet implemented");
    ExitCode::FAILURE
}

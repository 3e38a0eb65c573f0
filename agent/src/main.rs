//! `scale-agent`: the agent binary. See `cli` for its flags.

mod cli;

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    let _args = cli::Args::parse();
    // The run path (config, leases, watches, the hub stream, admin server) is
    // not written yet; fail loudly rather than pretend to run.
    eprintln!("scale-agent: not yet implemented");
    ExitCode::FAILURE
}

//! `scale-agent-hub`: the hub binary. See `scale_agent_hub::cli` for its flags and the
//! `scale_agent_hub` library for everything else. The image runs the same code through
//! its one executable, `scale-agent` (cmd/).

use std::process::ExitCode;

fn main() -> ExitCode {
    scale_agent_hub::cmd::main_with(std::env::args_os())
}

//! `scale-agent-operator`: see the library's documentation and `--help`. The image runs
//! the same code through its one executable, `scale-agent` (cmd/).

use std::process::ExitCode;

fn main() -> ExitCode {
    scale_agent_operator::main_with(std::env::args_os())
}

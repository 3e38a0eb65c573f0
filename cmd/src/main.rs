//! `scale-agent`: the agent, the operator and the hub in one executable, so the image
//! holds one binary (they share most of their code) and two links to it.
//!
//! Which program runs is chosen by the name it was started as (the base name of
//! `argv[0]`), else by its first argument:
//!
//! | started as | runs |
//! |---|---|
//! | `scale-agent-operator ARGS` | the operator |
//! | `scale-agent-hub ARGS` (also `scale-agent-hub kubeconfig ...`) | the hub |
//! | `scale-agent operator ARGS`, `scale-agent hub ARGS` | the operator, the hub |
//! | `scale-agent migrate ARGS` | Clouddriver accounts into AgentShards |
//! | `scale-agent ARGS` (anything else) | the agent |
//!
//! The image's entrypoint is `scale-agent`: the operator starts agent pods with the
//! agent's flags only, and the manifests set the operator's and the hub's `command` to
//! their own names.

use std::ffi::{OsStr, OsString};
use std::path::Path;
use std::process::ExitCode;

/// The programs this executable holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Program {
    Agent,
    Operator,
    Hub,
    Migrate,
}

impl Program {
    /// The name the program is known by (its `--help` and `--version` say it).
    fn name(self) -> &'static str {
        match self {
            Program::Agent => "scale-agent",
            Program::Operator => "scale-agent-operator",
            Program::Hub => "scale-agent-hub",
            Program::Migrate => "scale-agent migrate",
        }
    }
}

/// The program `args` (the command line, program name first) ask for, and its command
/// line with the program's own name first.
fn choose(mut args: Vec<OsString>) -> (Program, Vec<OsString>) {
    let invoked = args
        .first()
        .and_then(|a| Path::new(a).file_name())
        .unwrap_or(OsStr::new(""));
    for program in [Program::Operator, Program::Hub] {
        if invoked == program.name() {
            return (program, args);
        }
    }
    let sub = match args.get(1).and_then(|a| a.to_str()) {
        Some("agent") => Program::Agent,
        Some("operator") => Program::Operator,
        Some("hub") => Program::Hub,
        Some("migrate") => Program::Migrate,
        _ => return (Program::Agent, args),
    };
    args.splice(0..2, [OsString::from(sub.name())]);
    (sub, args)
}

fn main() -> ExitCode {
    match choose(std::env::args_os().collect()) {
        (Program::Agent, args) => scale_agent::main_with(args),
        (Program::Operator, args) => scale_agent_operator::main_with(args),
        (Program::Hub, args) => scale_agent_hub::cmd::main_with(args),
        (Program::Migrate, args) => scale_agent_operator::migrate::main_with(args),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chosen(args: &[&str]) -> (Program, Vec<String>) {
        let (p, rest) = choose(args.iter().map(OsString::from).collect());
        let rest = rest
            .into_iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        (p, rest)
    }

    #[test]
    fn the_name_it_runs_as_chooses_the_operator_or_the_hub() {
        assert_eq!(
            chosen(&[
                "/usr/local/bin/scale-agent-operator",
                "--webhook-mode",
                "deny"
            ]),
            (
                Program::Operator,
                vec![
                    "/usr/local/bin/scale-agent-operator".into(),
                    "--webhook-mode".into(),
                    "deny".into()
                ]
            )
        );
        // The hub's own subcommand stays the hub's.
        assert_eq!(
            chosen(&["scale-agent-hub", "kubeconfig", "--out", "x"]).0,
            Program::Hub
        );
        // Run as the hub, a first argument that names another program is the hub's.
        assert_eq!(chosen(&["scale-agent-hub", "operator"]).0, Program::Hub);
    }

    #[test]
    fn the_agent_runs_unless_a_first_argument_names_another_program() {
        // What the operator's agent pods run: the entrypoint with the agent's flags.
        let agent = [
            "/usr/local/bin/scale-agent",
            "--config",
            "/etc/scale-agent/config.yaml",
        ];
        assert_eq!(
            chosen(&agent),
            (
                Program::Agent,
                agent.iter().map(|s| s.to_string()).collect()
            )
        );
        assert_eq!(chosen(&["scale-agent"]).0, Program::Agent);
        assert_eq!(
            chosen(&["scale-agent", "hub", "kubeconfig", "--account", "a"]),
            (
                Program::Hub,
                vec![
                    "scale-agent-hub".into(),
                    "kubeconfig".into(),
                    "--account".into(),
                    "a".into()
                ]
            )
        );
        assert_eq!(
            chosen(&["/x/scale-agent", "operator", "--help"]),
            (
                Program::Operator,
                vec!["scale-agent-operator".into(), "--help".into()]
            )
        );
        assert_eq!(
            chosen(&["scale-agent", "migrate", "-f", "c.yml"]),
            (
                Program::Migrate,
                vec!["scale-agent migrate".into(), "-f".into(), "c.yml".into()]
            )
        );
        assert_eq!(
            chosen(&["scale-agent", "agent", "--version"]),
            (
                Program::Agent,
                vec!["scale-agent".into(), "--version".into()]
            )
        );
        // Another name (a copy renamed by hand) runs the agent too.
        assert_eq!(chosen(&["agent-copy", "--help"]).0, Program::Agent);
    }
}

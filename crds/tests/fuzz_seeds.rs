//! The `agent_config` fuzz target's checked-in inputs (fuzz/seeds, fuzz/regressions),
//! replayed through the target's own body on every `cargo test`: the fuzz crate needs
//! nightly, its inputs do not.

#[path = "../../fuzz/src/agent_config.rs"]
mod agent_config;
#[path = "../../fuzz/src/replay.rs"]
mod replay;

#[test]
fn agent_config_seeds_and_regressions_pass_the_fuzz_target() {
    let ran = replay::replay("agent_config", agent_config::run);
    eprintln!("{ran} agent_config inputs replayed");
}

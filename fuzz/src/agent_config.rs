//! The `agent_config` fuzz target's body (run by the target in `fuzz_targets/` and, over
//! the checked-in seeds and regressions, by `crds/tests/fuzz_seeds.rs` in `just test`).
//!
//! The agent's config parser: any bytes, read as (lossy) UTF-8, must never make
//! `AgentConfig::from_yaml` panic; a config it accepts must survive
//! `to_yaml` and `from_yaml` again unchanged.
use scale_agent_crds::AgentConfig;

/// The target's body: one input. Panics on a broken invariant.
pub fn run(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let Ok(config) = AgentConfig::from_yaml(&text) else {
        return;
    };
    let yaml = match config.to_yaml() {
        Ok(yaml) => yaml,
        Err(err) => panic!("an accepted config does not serialize: {err}\n{config:#?}"),
    };
    match AgentConfig::from_yaml(&yaml) {
        Ok(again) => assert_eq!(
            again, config,
            "the config changed in a YAML round trip; written as:\n{yaml}"
        ),
        Err(err) => {
            panic!("an accepted config, written out, is refused: {err}\nwritten as:\n{yaml}")
        }
    }
}

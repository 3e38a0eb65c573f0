//! libFuzzer target: the body is `scale_agent_fuzz::agent_config::run`
//! (fuzz/src/agent_config.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| scale_agent_fuzz::agent_config::run(data));

//! libFuzzer target: the body is `scale_agent_fuzz::hub_frames::run` (fuzz/src/hub_frames.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| scale_agent_fuzz::hub_frames::run(data));

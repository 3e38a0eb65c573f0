//! The fuzz targets' bodies, one function each, shared by the libFuzzer targets in
//! `fuzz_targets/` and the seed replays that `just test` runs on stable Rust
//! (`crds/tests/fuzz_seeds.rs`, `hub/tests/fuzz_seeds.rs`, which include these files).

pub mod agent_config;
pub mod hub_frames;

//! The `hub_frames` fuzz target's checked-in inputs (fuzz/seeds, fuzz/regressions),
//! replayed through the target's own body on every `cargo test`: the fuzz crate needs
//! nightly, its inputs do not.

#[path = "../../fuzz/src/hub_frames.rs"]
mod hub_frames;
#[path = "../../fuzz/src/replay.rs"]
mod replay;

#[test]
fn hub_frames_seeds_and_regressions_pass_the_fuzz_target() {
    let ran = replay::replay("hub_frames", hub_frames::run);
    eprintln!("{ran} hub_frames inputs replayed");
}

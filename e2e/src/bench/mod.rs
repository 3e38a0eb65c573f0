//! What the system benchmarks (`just bench`, `benches/system.rs`) share: the report and
//! its figures ([`report`]), the goals they are judged by ([`goal`]), percentiles
//! ([`stats`]), reading a process's memory, CPU and connections from `/proc`
//! ([`procfs`], [`sampler`]), filling clusters with objects fast ([`seed`]), and a proxy
//! that counts the API requests a component makes ([`proxy`]).
//!
//! Every figure is measured next to a baseline in the same run and on the same control
//! plane, so that a noisy machine moves both; memory is always the process's resident set
//! read from `/proc` (the kernel's high-water mark `VmHWM` and `VmRSS` sampled), never an
//! estimate.

pub mod convergence;
pub mod goal;
pub mod layout;
pub mod procfs;
pub mod proxy;
pub mod report;
pub mod sampler;
pub mod seed;
pub mod stats;

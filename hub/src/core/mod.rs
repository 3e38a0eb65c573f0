//! The hub's own state and its rules: who holds which account (the registry),
//! every streamed object (the cache, its resync diff and the window of recent
//! changes the Kubernetes API watches from), who owns an account by the
//! AgentShards (the one watch in this folder), operations waiting for results, and bounded strings.

pub mod answer;
pub mod cache;
pub mod clip;
pub mod fair;
pub mod memory;
pub mod operation_request;
pub mod operations;
pub mod ownership;
pub mod registry;
pub mod resync;
pub mod slots;
pub mod window;

//! The agents' side: the gRPC service (`AgentHub.Connect`), one session per
//! stream, what a Register is answered (alone or through the store replicas
//! share), events and syncs into the cache, operations and proxied requests
//! routed to the session that holds an account, and accounts revoked when a
//! shard loses them.

pub mod grpc;
pub mod ingest;
pub mod register;
pub mod register_shared;
pub mod revocation;
pub mod routing;
pub mod session;
pub mod tunnel;

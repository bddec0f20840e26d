//! The node agent. It declares the node's services as VM operators write them today,
//! runs their health checks, and (in later stages) keeps their keys, runs DNS and the
//! proxy. This crate never depends on the server: the two speak only gRPC.
#![forbid(unsafe_code)]

pub mod config;
pub mod error;

pub use config::{AgentConfig, HealthCheck, LocalService, Probe};
pub use error::AgentConfigError;

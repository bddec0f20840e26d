//! The node agent. It declares the node's services as VM operators write them today,
//! runs their health checks, keeps a stream to the servers, and runs and feeds the proxy.
//! This crate never depends on the server: the two speak only gRPC.
#![forbid(unsafe_code)]

pub mod config;
pub mod error;
pub mod health;
pub mod run;
pub mod session;
pub mod sidecar;
pub mod view;

pub use config::{AgentConfig, HealthCheck, LocalService, Probe};
pub use error::{AgentConfigError, AgentError};
pub use run::{AgentOptions, AgentState, RunningAgent};
pub use session::SessionSettings;

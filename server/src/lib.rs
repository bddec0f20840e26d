//! The Trellis control plane. A server keeps the mesh's state in the replicated store
//! and answers the admin HTTP API; servers form a Raft group among themselves.
#![forbid(unsafe_code)]

pub mod admin;
pub mod config;
pub mod discovery;
pub mod error;
mod run;

pub use config::ServerConfig;
pub use error::ServerError;
pub use run::{RunningServer, start};

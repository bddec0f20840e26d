//! The Trellis data plane.
//!
//! The proxy runs from a compiled [`config::Snapshot`]: listeners, route tables, clusters with
//! their endpoints and policies, built from Istio resources by [`config::compile`]. It is
//! driven through a [`ProxyHandle`]: started from a snapshot, given new ones with
//! [`ProxyHandle::swap`], drained with [`ProxyHandle::shutdown`]. [`run_from_file`] does all of
//! that for `trellis proxy --config FILE`.
#![forbid(unsafe_code)]

pub mod admin;
pub mod body;
pub mod cluster;
pub mod config;
pub mod detect;
pub mod drain;
pub mod error;
pub mod flags;
pub mod handle;
pub mod http;
pub mod listener;
pub mod metrics;
pub mod ratelimit;
pub mod runtime;
pub mod shared;
pub mod sni;
pub mod tcp;
pub mod workers;

pub use config::{ProxyConfig, Snapshot, compile, load_file};
pub use error::{CompileError, FileError, ProxyError};
pub use handle::{ProxyHandle, run_from_file, shutdown_signal};

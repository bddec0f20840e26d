//! `trellis.dev/v1`: kinds Istio has no word for, in the same envelope as Istio's.

pub mod rate_limit;
pub mod service;

pub use rate_limit::*;
pub use service::*;

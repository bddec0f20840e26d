//! Importers of services and endpoints. Each adapter watches one source and yields the
//! whole desired set of what that source says exists, tagged with the source; the
//! server diffs it against what the source wrote before.
#![forbid(unsafe_code)]

pub mod error;
pub mod static_files;

use std::collections::BTreeMap;

use trellis_api::{Resource, ResourceKey};

pub use error::RegistryError;

/// Everything one source says exists, keyed by kind/namespace/name.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DesiredSet {
    /// Which source this came from, e.g. `file:/etc/trellis/services`.
    pub source: String,
    pub resources: BTreeMap<ResourceKey, Resource>,
}

//! Why a source could not be read. A source in error keeps its last good set: the
//! caller never wipes services because a file was half-written or a server was down.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{path}: cannot be read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("{0}")]
    Parse(trellis_api::ParseErrors),

    #[error(
        "{path}[{index}]: kind {kind} is not inventory; a VM inventory file holds Service and WorkloadEntry documents"
    )]
    NotInventory {
        path: PathBuf,
        index: usize,
        kind: String,
    },

    #[error("{key} is declared twice: in {first} and in {second}")]
    Duplicate {
        key: String,
        first: String,
        second: String,
    },

    #[error("watching {path}: {reason}")]
    Watch { path: PathBuf, reason: String },
}

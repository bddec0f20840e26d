//! Errors in an agent's config file: each names the file and the field.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum AgentConfigError {
    #[error("{path}: cannot be read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("{path}: {field}: {message}")]
    Invalid {
        path: PathBuf,
        field: String,
        message: String,
    },
}

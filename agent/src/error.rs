//! The agent's errors: a bad config file names the file and the field; the rest name what
//! the agent could not do.

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

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Config(#[from] AgentConfigError),

    #[error("data dir {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },

    #[error("no config from any server (and none cached) within {0:?}")]
    NoConfig(std::time::Duration),
}

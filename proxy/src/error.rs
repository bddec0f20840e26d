//! Errors the proxy reports to whoever drives it: a bad config file, a snapshot that does not
//! compile, a listener that cannot bind. Errors about a single request never get here: they
//! become an HTTP/gRPC status with a response flag (see [`crate::flags`]).

use std::net::SocketAddr;
use std::path::PathBuf;

/// Why a config file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("{}: invalid {format}: {message}", path.display())]
    Syntax {
        path: PathBuf,
        format: &'static str,
        message: String,
    },

    /// A field of the proxy's own sections (`listeners`, `services`, ...) that is unknown,
    /// missing or of the wrong type.
    #[error("{}: {field}: {message}", path.display())]
    Field {
        path: PathBuf,
        field: String,
        message: String,
    },

    /// Documents under `resources:` that the resource model refused; each error already names
    /// the document and the field.
    #[error("{}: {source}", path.display())]
    Resources {
        path: PathBuf,
        source: trellis_api::ParseErrors,
    },

    #[error("{}: {source}", path.display())]
    Compile { path: PathBuf, source: CompileError },
}

/// Why resources and endpoints could not be compiled into a snapshot. Each names the resource
/// (`VirtualService default/reviews`, or the config section) and the field path in it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompileError {
    #[error("{resource}: {field}: {message}")]
    Invalid {
        resource: String,
        field: String,
        message: String,
    },

    /// A setting the resource model accepts but this proxy does not implement: refused rather
    /// than silently ignored, so nobody believes it is in force.
    #[error("{resource}: {field}: {what} is not supported by the Trellis proxy yet")]
    Unsupported {
        resource: String,
        field: String,
        what: String,
    },
}

impl CompileError {
    pub(crate) fn invalid(
        resource: impl Into<String>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self::Invalid {
            resource: resource.into(),
            field: field.into(),
            message: message.into(),
        }
    }

    pub(crate) fn unsupported(
        resource: impl Into<String>,
        field: impl Into<String>,
        what: impl Into<String>,
    ) -> Self {
        Self::Unsupported {
            resource: resource.into(),
            field: field.into(),
            what: what.into(),
        }
    }
}

/// Why the proxy could not start or take a new snapshot.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error(transparent)]
    File(#[from] FileError),

    #[error(transparent)]
    Compile(#[from] CompileError),

    #[error("listener {name}: cannot bind {addr}: {source}")]
    Bind {
        name: String,
        addr: SocketAddr,
        source: std::io::Error,
    },

    #[error("cannot listen for SIGTERM: {0}")]
    Signal(std::io::Error),

    #[error("cannot start the proxy's worker threads: {0}")]
    Workers(std::io::Error),
}

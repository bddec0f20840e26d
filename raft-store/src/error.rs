//! The store's errors. Each names the thing at fault (a file, a peer, a node id) and,
//! where an operator can fix it, how.

use std::path::PathBuf;

use crate::types::NodeId;

/// Bytes that could not be encoded or decoded.
#[derive(Debug, Clone, thiserror::Error)]
#[error("encoding: {0}")]
pub struct CodecError(pub String);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("data dir {path}: {reason}")]
    DataDir { path: PathBuf, reason: String },

    #[error(
        "data dir {path} is in use by another running server (redb lock held); stop it or pick another --data-dir"
    )]
    DataDirInUse { path: PathBuf },

    #[error(
        "node id {node_id} clashes: {other} already uses it; a server's data dir was probably copied. Start this server with an empty --data-dir (or remove {path}) so it gets a fresh id"
    )]
    NodeIdClash {
        node_id: NodeId,
        other: String,
        path: PathBuf,
    },

    #[error(
        "data dir {path} belongs to cluster {ours}, but {peer} is in cluster {theirs}; point --data-dir at an empty directory to join {theirs}"
    )]
    ForeignCluster {
        path: PathBuf,
        ours: String,
        theirs: String,
        peer: String,
    },

    #[error(
        "--join {addr}: not a Trellis server ({answer}); give the gRPC address (--grpc-addr) of a Trellis server"
    )]
    NotATrellisServer { addr: String, answer: String },

    #[error("peer {addr}: {reason}")]
    Peer { addr: String, reason: String },

    #[error("storage: {0}")]
    Storage(String),

    #[error("no leader is known right now ({0}); retry shortly")]
    NoLeader(String),

    #[error("raft: {0}")]
    Raft(String),

    #[error(
        "watch from revision {requested} is older than the kept history (compacted up to {compact_revision}); re-list and watch again"
    )]
    Compacted {
        requested: u64,
        compact_revision: u64,
    },

    #[error("invalid request: {0}")]
    InvalidRequest(String),

    #[error("{0}")]
    Codec(#[from] CodecError),
}

impl From<tonic::Status> for Error {
    fn from(s: tonic::Status) -> Self {
        match s.code() {
            tonic::Code::Unavailable => Error::NoLeader(s.message().to_string()),
            tonic::Code::InvalidArgument => Error::InvalidRequest(s.message().to_string()),
            _ => Error::Raft(format!("{}: {}", s.code(), s.message())),
        }
    }
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        match &e {
            Error::NoLeader(_) => tonic::Status::unavailable(e.to_string()),
            Error::InvalidRequest(_) => tonic::Status::invalid_argument(e.to_string()),
            Error::Compacted { .. } => tonic::Status::out_of_range(e.to_string()),
            Error::NodeIdClash { .. } | Error::ForeignCluster { .. } => {
                tonic::Status::failed_precondition(e.to_string())
            }
            _ => tonic::Status::internal(e.to_string()),
        }
    }
}

/// How openraft's storage errors are made for one kind of storage operation.
pub(crate) type IoKind = fn(openraft::AnyError) -> openraft::StorageIOError<NodeId>;

/// Turns any displayable error into openraft's storage error of one kind.
pub(crate) trait IoContext<T> {
    fn io(self, kind: IoKind) -> Result<T, openraft::StorageError<NodeId>>;
}

impl<T, E: std::fmt::Display> IoContext<T> for Result<T, E> {
    fn io(self, kind: IoKind) -> Result<T, openraft::StorageError<NodeId>> {
        self.map_err(|e| openraft::StorageError::IO {
            source: kind(openraft::AnyError::error(e)),
        })
    }
}

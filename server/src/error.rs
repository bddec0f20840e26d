//! Why a server could not start or run.

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("{flag} {addr}: cannot listen there: {source}")]
    Bind {
        flag: &'static str,
        addr: String,
        source: std::io::Error,
    },

    #[error(
        "--grpc-addr {0} listens on every interface; give --advertise-addr HOST:PORT so other servers know where to reach this one"
    )]
    NeedAdvertise(String),

    #[error("--acl-token-file {path}: cannot be read: {source}")]
    AclTokenFile {
        path: String,
        source: std::io::Error,
    },

    #[error("--acl-token-file {0}: the file is empty; an empty token would let anyone in")]
    EmptyAclToken(String),

    #[error(transparent)]
    Store(#[from] trellis_raft_store::Error),
}

//! How one server is set up: where it keeps its data, where it listens, how it
//! finds the others.

use std::path::PathBuf;

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub data_dir: PathBuf,
    /// Where the gRPC listener binds (agents and the other servers), `host:port`.
    pub grpc_addr: String,
    /// Where the admin HTTP API binds, `host:port`.
    pub http_addr: String,
    /// The gRPC address other servers use; the bound address when not given.
    pub advertise_addr: Option<String>,
    pub bootstrap_expect: u32,
    pub join: Vec<String>,
    pub node_id: Option<u64>,
    /// Revisions of watch history each server keeps.
    pub history_revisions: u64,
    /// Applied entries between snapshots.
    pub snapshot_every: u64,
    /// A file holding the token every admin API request must present (but the
    /// `/v1/status/*` probes). `None`: the API is open, as for `trellis dev`.
    pub acl_token_file: Option<PathBuf>,
    /// Pings, push deadlines, debounce of the agents' streams.
    pub discovery: crate::discovery::DiscoverySettings,
}

impl ServerConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        ServerConfig {
            data_dir: data_dir.into(),
            grpc_addr: "127.0.0.1:8502".into(),
            http_addr: "127.0.0.1:8500".into(),
            advertise_addr: None,
            bootstrap_expect: 0,
            join: Vec::new(),
            node_id: None,
            history_revisions: 100_000,
            snapshot_every: 50_000,
            acl_token_file: None,
            discovery: crate::discovery::DiscoverySettings::default(),
        }
    }
}

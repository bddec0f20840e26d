//! A replicated, durable, revisioned key-value store: openraft with its log in
//! append-only segment files and its state machine in redb, Raft over tonic gRPC,
//! etcd-like revisions and watches.
//!
//! Bytes in, bytes out: the store knows nothing of the mesh that keeps its state here.
#![forbid(unsafe_code)]
// openraft's storage traits fix the error type, and it is large; boxing it here would
// only add an allocation at every boundary.
#![allow(clippy::result_large_err)]

mod channels;
pub mod client;
mod codec;
pub mod data_dir;
pub mod error;
mod forward;
mod grpc;
mod log_segments;
pub mod log_store;
pub mod network;
pub mod node;
pub mod snapshot_file;
pub mod state_machine;
pub mod types;
pub mod watch;

/// Generated protobuf and gRPC code for the store's wire API.
#[allow(clippy::all, missing_docs, rust_2018_idioms)]
pub mod pb {
    tonic::include_proto!("trellis.store.v1");
}

pub use client::StoreClient;
pub use error::Error;
pub use grpc::{ClusterService, KvService, RaftService, services};
pub use network::{LinkControl, LinkDecision, OpenLinks};
pub use node::{ClusterStatus, MemberStatus, NodeConfig, StoreNode};
pub use state_machine::HistoryRetention;
pub use types::{Compare, Event, EventKind, KeyValue, NodeId, Op, Txn};
pub use watch::WatchUpdate;

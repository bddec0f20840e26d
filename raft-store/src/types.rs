//! The store's Raft type configuration and the commands carried in its log.

use std::io::Cursor;

use serde::{Deserialize, Serialize};

pub type NodeId = u64;

openraft::declare_raft_types!(
    /// Raft types of the store: commands are key-value transactions on bytes.
    pub TypeConfig:
        D = Command,
        R = CommandResult,
        NodeId = NodeId,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type StoredMembership = openraft::StoredMembership<NodeId, openraft::BasicNode>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, openraft::BasicNode>;
pub type Snapshot = openraft::Snapshot<TypeConfig>;

/// What a log entry asks the state machine to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    Txn(Txn),
    /// Transactions that reached the leader together, applied in order in one entry.
    /// They share the entry's revision, as the events of one transaction do.
    Batch(Vec<Txn>),
    /// Written once by the server that forms the cluster, so every member (and every
    /// data dir) can tell which cluster it belongs to.
    SetClusterId(String),
}

/// A transaction: if every comparison holds, the `success` operations run, else the
/// `failure` ones; all of them commit together at one revision or not at all.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Txn {
    pub compare: Vec<Compare>,
    pub success: Vec<Op>,
    pub failure: Vec<Op>,
}

/// Compare-on-mod-revision: the key's last modification must be at `mod_revision`,
/// and `0` means the key must not exist.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compare {
    pub key: Vec<u8>,
    pub mod_revision: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    Put { key: Vec<u8>, value: Vec<u8> },
    Delete { key: Vec<u8> },
    DeletePrefix { prefix: Vec<u8> },
}

impl Txn {
    pub fn put(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Self {
        Txn {
            success: vec![Op::Put {
                key: key.into(),
                value: value.into(),
            }],
            ..Txn::default()
        }
    }

    pub fn delete(key: impl Into<Vec<u8>>) -> Self {
        Txn {
            success: vec![Op::Delete { key: key.into() }],
            ..Txn::default()
        }
    }

    pub fn delete_prefix(prefix: impl Into<Vec<u8>>) -> Self {
        Txn {
            success: vec![Op::DeletePrefix {
                prefix: prefix.into(),
            }],
            ..Txn::default()
        }
    }
}

/// The outcome of a command once applied.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandResult {
    /// The store's revision after this command: the log index of its entry when it
    /// wrote anything, otherwise the revision it left unchanged.
    pub revision: u64,
    pub succeeded: bool,
    pub deleted: u64,
    /// For a batch: each transaction's own result, in order.
    #[serde(default)]
    pub batch: Vec<CommandResult>,
}

/// A key's value with its revisions, as etcd keeps them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyValue {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub create_revision: u64,
    pub mod_revision: u64,
    /// How many times the key was written since it was last created.
    pub version: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    Put,
    Delete,
}

/// One change to one key. A delete carries the key with `mod_revision` set to the
/// revision of the delete and an empty value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub kind: EventKind,
    pub kv: KeyValue,
}

impl Event {
    pub fn revision(&self) -> u64 {
        self.kv.mod_revision
    }
}

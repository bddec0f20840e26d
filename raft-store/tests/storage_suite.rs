//! openraft's own storage test suite, run against the log (segment files and redb) and the redb state machine.
#![allow(clippy::result_large_err)]

use std::sync::Arc;

use openraft::testing::{StoreBuilder, Suite};
use trellis_raft_store::log_store::LogStore;
use trellis_raft_store::state_machine::{HistoryRetention, StateMachine};
use trellis_raft_store::types::{StorageError, TypeConfig};
use trellis_raft_store::watch::WatchHub;

struct RedbBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for RedbBuilder {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError> {
        let dir = tempfile::tempdir().expect("temp dir");
        let log_db = Arc::new(redb::Database::create(dir.path().join("log.redb")).expect("log db"));
        let state_db =
            Arc::new(redb::Database::create(dir.path().join("state.redb")).expect("state db"));
        let log = LogStore::open(log_db, dir.path()).expect("log store");
        let sm = StateMachine::open(
            state_db,
            dir.path(),
            Arc::new(WatchHub::default()),
            HistoryRetention::default(),
        )
        .expect("state machine");
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite() -> Result<(), StorageError> {
    Suite::test_all(RedbBuilder)
}

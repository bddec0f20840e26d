//! The Raft log, vote and purge point in redb. Every method that openraft relies on
//! for durability commits with `Durability::Immediate` before it reports success.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{LogState, OptionalSend, RaftLogReader, StorageIOError, Vote};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

use crate::codec::{decode, encode};
use crate::error::{IoContext, IoKind};
use crate::types::{Entry, LogId, NodeId, StorageError, TypeConfig};

const LOG: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("raft_log");
const LOG_META: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("raft_log_meta");

const VOTE: &str = "vote";
const COMMITTED: &str = "committed";
const LAST_PURGED: &str = "last_purged";

#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
}

/// Runs a redb operation off the async threads: commits wait for fsync.
async fn blocking<T, F>(f: F) -> Result<T, StorageError>
where
    F: FnOnce() -> Result<T, StorageError> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .io(StorageIOError::write)?
}

impl LogStore {
    pub fn open(db: Arc<Database>) -> Result<Self, redb::Error> {
        let tx = db.begin_write()?;
        tx.open_table(LOG)?;
        tx.open_table(LOG_META)?;
        tx.commit()?;
        Ok(LogStore { db })
    }

    fn read_meta<T: serde::de::DeserializeOwned>(
        db: &Database,
        key: &str,
        make: IoKind,
    ) -> Result<Option<T>, StorageError> {
        let tx = db.begin_read().io(make)?;
        let table = tx.open_table(LOG_META).io(make)?;
        match table.get(key).io(make)? {
            Some(v) => Ok(Some(decode(v.value()).io(make)?)),
            None => Ok(None),
        }
    }

    fn write_meta<T: serde::Serialize>(
        db: &Database,
        key: &str,
        value: &T,
        durability: Durability,
        make: IoKind,
    ) -> Result<(), StorageError> {
        let bytes = encode(value).io(make)?;
        let mut tx = db.begin_write().io(make)?;
        tx.set_durability(durability).io(make)?;
        {
            let mut table = tx.open_table(LOG_META).io(make)?;
            table.insert(key, bytes.as_slice()).io(make)?;
        }
        tx.commit().io(make)
    }

    /// The last log id, for a node's status.
    pub fn last_log_id(&self) -> Result<Option<LogId>, StorageError> {
        let tx = self.db.begin_read().io(StorageIOError::read_logs)?;
        let table = tx.open_table(LOG).io(StorageIOError::read_logs)?;
        match table.last().io(StorageIOError::read_logs)? {
            Some((_, v)) => {
                let entry: Entry = decode(v.value()).io(StorageIOError::read_logs)?;
                Ok(Some(entry.log_id))
            }
            None => Self::read_meta(&self.db, LAST_PURGED, StorageIOError::read_logs),
        }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(i) => Some(i.saturating_add(1)),
            Bound::Excluded(i) => Some(*i),
            Bound::Unbounded => None,
        };
        let db = self.db.clone();
        blocking(move || {
            let err: IoKind = StorageIOError::read_logs;
            let tx = db.begin_read().io(err)?;
            let table = tx.open_table(LOG).io(err)?;
            let iter = match end {
                Some(end) if end <= start => return Ok(Vec::new()),
                Some(end) => table.range(start..end).io(err)?,
                None => table.range(start..).io(err)?,
            };
            let mut entries = Vec::new();
            for item in iter {
                let (_, v) = item.io(err)?;
                entries.push(decode(v.value()).io(err)?);
            }
            Ok(entries)
        })
        .await
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let db = self.db.clone();
        blocking(move || {
            let last_purged_log_id: Option<LogId> =
                Self::read_meta(&db, LAST_PURGED, StorageIOError::read_logs)?;
            let err: IoKind = StorageIOError::read_logs;
            let tx = db.begin_read().io(err)?;
            let table = tx.open_table(LOG).io(err)?;
            let last_log_id = match table.last().io(err)? {
                Some((_, v)) => {
                    let entry: Entry = decode(v.value()).io(err)?;
                    Some(entry.log_id)
                }
                None => last_purged_log_id,
            };
            Ok(LogState {
                last_purged_log_id,
                last_log_id,
            })
        })
        .await
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError> {
        let db = self.db.clone();
        let vote = *vote;
        blocking(move || {
            Self::write_meta(
                &db,
                VOTE,
                &vote,
                Durability::Immediate,
                StorageIOError::write_vote,
            )
        })
        .await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        let db = self.db.clone();
        blocking(move || Self::read_meta(&db, VOTE, StorageIOError::read_vote)).await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Not fsynced on its own: a committed index lost in a crash only means a restart
        // re-applies fewer entries itself and learns the rest from the leader.
        let db = self.db.clone();
        blocking(move || {
            Self::write_meta(
                &db,
                COMMITTED,
                &committed,
                Durability::None,
                StorageIOError::write,
            )
        })
        .await
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        let db = self.db.clone();
        blocking(move || {
            Ok(Self::read_meta::<Option<LogId>>(&db, COMMITTED, StorageIOError::read)?.flatten())
        })
        .await
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let err: IoKind = StorageIOError::write_logs;
        let encoded = entries
            .into_iter()
            .map(|e| Ok((e.log_id.index, encode(&e).io(err)?)))
            .collect::<Result<Vec<_>, StorageError>>()?;
        let db = self.db.clone();
        let result = blocking(move || {
            let err: IoKind = StorageIOError::write_logs;
            let mut tx = db.begin_write().io(err)?;
            tx.set_durability(Durability::Immediate).io(err)?;
            {
                let mut table = tx.open_table(LOG).io(err)?;
                for (index, bytes) in &encoded {
                    table.insert(*index, bytes.as_slice()).io(err)?;
                }
            }
            tx.commit().io(err)
        })
        .await;
        match &result {
            Ok(()) => callback.log_io_completed(Ok(())),
            Err(e) => callback.log_io_completed(Err(std::io::Error::other(e.to_string()))),
        }
        result
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let db = self.db.clone();
        blocking(move || {
            let err: IoKind = StorageIOError::write_logs;
            let mut tx = db.begin_write().io(err)?;
            tx.set_durability(Durability::Immediate).io(err)?;
            {
                let mut table = tx.open_table(LOG).io(err)?;
                table.retain_in(log_id.index.., |_, _| false).io(err)?;
            }
            tx.commit().io(err)
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let db = self.db.clone();
        blocking(move || {
            let err: IoKind = StorageIOError::write_logs;
            let purged = encode(&log_id).io(err)?;
            let mut tx = db.begin_write().io(err)?;
            tx.set_durability(Durability::Immediate).io(err)?;
            {
                let mut meta = tx.open_table(LOG_META).io(err)?;
                meta.insert(LAST_PURGED, purged.as_slice()).io(err)?;
                let mut table = tx.open_table(LOG).io(err)?;
                table.retain_in(..=log_id.index, |_, _| false).io(err)?;
            }
            tx.commit().io(err)
        })
        .await
    }
}

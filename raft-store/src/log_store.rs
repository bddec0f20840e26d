//! The Raft log, vote and purge point in redb.
//!
//! One writer thread owns every change to the log file. It takes whatever writes are
//! queued, puts them in one redb transaction and fsyncs once (group commit), then tells
//! each caller. Appends return at once and report through openraft's flush callback,
//! so the leader replicates an entry while its own copy is still being written; until
//! an entry is on disk, readers find it in memory. Votes, truncation and purging wait
//! for their fsync before they return.
//!
//! The newest entries stay in memory for a while after they are on disk, because they are
//! read again at once: to apply them when they commit, and to send them to a follower.
//! A read from redb would have to leave the runtime for a blocking thread and come back,
//! a hand-off on the path of every write.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{LogState, OptionalSend, RaftLogReader, StorageIOError, Vote};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::oneshot;

use crate::codec::{decode, encode};
use crate::error::{IoContext, IoKind};
use crate::types::{Entry, LogId, NodeId, StorageError, TypeConfig};

const LOG: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("raft_log");
const LOG_META: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("raft_log_meta");

const VOTE: &str = "vote";
const COMMITTED: &str = "committed";
const LAST_PURGED: &str = "last_purged";

/// How many bytes of entries already on disk the log keeps in memory as well.
const RECENT_ON_DISK_BYTES: usize = 8 << 20;

/// One entry held in memory.
struct Held {
    /// The append that wrote it: a flush only counts for the append it belongs to, not for
    /// a newer one that replaced it after a truncation.
    seq: u64,
    entry: Entry,
    size: usize,
    on_disk: bool,
}

/// The newest entries of the log, by index, without a gap: every entry not yet on disk,
/// and before them entries already on disk up to [`RECENT_ON_DISK_BYTES`].
#[derive(Default)]
struct Recent {
    entries: BTreeMap<u64, Held>,
    on_disk_bytes: usize,
}

impl Recent {
    fn insert(&mut self, index: u64, held: Held) {
        if let Some(old) = self.entries.insert(index, held) {
            self.forget(&old);
        }
    }

    fn forget(&mut self, held: &Held) {
        if held.on_disk {
            self.on_disk_bytes -= held.size;
        }
    }

    fn remove_range(&mut self, range: impl RangeBounds<u64>) {
        let gone: Vec<u64> = self.entries.range(range).map(|(i, _)| *i).collect();
        for i in gone {
            if let Some(held) = self.entries.remove(&i) {
                self.forget(&held);
            }
        }
    }

    /// Marks the entries of one flushed append as on disk, then lets the oldest ones go.
    fn flushed(&mut self, written: &[(u64, u64)]) {
        for (index, seq) in written {
            if let Some(held) = self.entries.get_mut(index)
                && held.seq == *seq
                && !held.on_disk
            {
                held.on_disk = true;
                self.on_disk_bytes += held.size;
            }
        }
        while self.on_disk_bytes > RECENT_ON_DISK_BYTES {
            let Some(first) = self.entries.first_entry() else {
                break;
            };
            // Older entries are written before newer ones; this only guards the rule
            // that nothing not on disk is ever dropped.
            if !first.get().on_disk {
                break;
            }
            let held = first.remove();
            self.on_disk_bytes -= held.size;
        }
    }

    fn last_log_id(&self) -> Option<LogId> {
        self.entries.last_key_value().map(|(_, h)| h.entry.log_id)
    }
}

enum Write {
    Append {
        entries: Vec<(u64, u64, Vec<u8>)>,
        callback: LogFlushed<TypeConfig>,
    },
    Meta {
        key: &'static str,
        value: Vec<u8>,
        done: Option<oneshot::Sender<Result<(), String>>>,
    },
    Truncate {
        from: u64,
        done: oneshot::Sender<Result<(), String>>,
    },
    Purge {
        upto: u64,
        value: Vec<u8>,
        done: oneshot::Sender<Result<(), String>>,
    },
}

#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
    recent: Arc<Mutex<Recent>>,
    seq: Arc<AtomicU64>,
    writer: mpsc::Sender<Write>,
    /// The newest committed log id not yet written; it rides along with the next write
    /// rather than costing a transaction of its own.
    committed: Arc<Mutex<Option<Vec<u8>>>>,
}

async fn blocking<T, F>(f: F) -> Result<T, StorageError>
where
    F: FnOnce() -> Result<T, StorageError> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .io(StorageIOError::read)?
}

impl LogStore {
    pub fn open(db: Arc<Database>) -> Result<Self, redb::Error> {
        let tx = db.begin_write()?;
        tx.open_table(LOG)?;
        tx.open_table(LOG_META)?;
        tx.commit()?;
        let recent = Arc::new(Mutex::new(Recent::default()));
        let committed = Arc::new(Mutex::new(None));
        let (writer, queue) = mpsc::channel();
        {
            let db = db.clone();
            let recent = recent.clone();
            let committed = committed.clone();
            std::thread::Builder::new()
                .name("raft-log-writer".into())
                .spawn(move || write_loop(&db, &recent, &committed, &queue))
                .map_err(|e| redb::Error::Io(std::io::Error::other(e)))?;
        }
        Ok(LogStore {
            db,
            recent,
            seq: Arc::new(AtomicU64::new(1)),
            writer,
            committed,
        })
    }

    fn recent(&self) -> std::sync::MutexGuard<'_, Recent> {
        self.recent.lock().unwrap_or_else(|p| p.into_inner())
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

    /// Queues a write and waits until it is on disk.
    async fn write_and_wait(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<(), String>>) -> Write,
        kind: IoKind,
    ) -> Result<(), StorageError> {
        let (tx, rx) = oneshot::channel();
        self.writer
            .send(make(tx))
            .map_err(|_| "the log writer stopped")
            .io(kind)?;
        rx.await
            .map_err(|_| "the log writer stopped")
            .io(kind)?
            .io(kind)
    }

    fn last_on_disk(db: &Database) -> Result<Option<LogId>, StorageError> {
        let err: IoKind = StorageIOError::read_logs;
        let tx = db.begin_read().io(err)?;
        let table = tx.open_table(LOG).io(err)?;
        match table.last().io(err)? {
            Some((_, v)) => Ok(Some(decode::<Entry>(v.value()).io(err)?.log_id)),
            None => Self::read_meta(db, LAST_PURGED, err),
        }
    }

    /// The last log id, for a node's status.
    pub fn last_log_id(&self) -> Result<Option<LogId>, StorageError> {
        if let Some(log_id) = self.recent().last_log_id() {
            return Ok(Some(log_id));
        }
        Self::last_on_disk(&self.db)
    }
}

/// Takes every queued write, commits them in one transaction, then answers each.
fn write_loop(
    db: &Database,
    recent: &Mutex<Recent>,
    committed: &Mutex<Option<Vec<u8>>>,
    queue: &mpsc::Receiver<Write>,
) {
    while let Ok(first) = queue.recv() {
        let mut batch = vec![first];
        while let Ok(more) = queue.try_recv() {
            batch.push(more);
        }
        if let Some(value) = committed.lock().unwrap_or_else(|p| p.into_inner()).take() {
            batch.push(Write::Meta {
                key: COMMITTED,
                value,
                done: None,
            });
        }
        let started = std::time::Instant::now();
        let result = commit(db, &batch).map_err(|e| e.to_string());
        tracing::debug!(
            writes = batch.len(),
            micros = started.elapsed().as_micros() as u64,
            "log batch committed"
        );
        let mut written: Vec<(u64, u64)> = Vec::new();
        for write in batch {
            match write {
                Write::Append { entries, callback } => {
                    written.extend(entries.iter().map(|(i, s, _)| (*i, *s)));
                    callback.log_io_completed(result.clone().map_err(std::io::Error::other));
                }
                Write::Meta { done, .. } => {
                    if let Some(done) = done {
                        let _ = done.send(result.clone());
                    }
                }
                Write::Truncate { done, .. } | Write::Purge { done, .. } => {
                    let _ = done.send(result.clone());
                }
            }
        }
        if result.is_ok() {
            // Only now may readers go to disk for these; a newer append to the same
            // index (after a truncation) keeps its place.
            recent
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .flushed(&written);
        }
    }
}

fn commit(db: &Database, batch: &[Write]) -> Result<(), redb::Error> {
    let mut tx = db.begin_write()?;
    let durable = batch
        .iter()
        .any(|w| !matches!(w, Write::Meta { key: COMMITTED, .. }));
    tx.set_durability(if durable {
        Durability::Immediate
    } else {
        Durability::None
    })
    .map_err(|e| redb::Error::Io(std::io::Error::other(e.to_string())))?;
    {
        let mut log = tx.open_table(LOG)?;
        let mut meta = tx.open_table(LOG_META)?;
        for write in batch {
            match write {
                Write::Append { entries, .. } => {
                    for (index, _, bytes) in entries {
                        log.insert(*index, bytes.as_slice())?;
                    }
                }
                Write::Meta { key, value, .. } => {
                    meta.insert(*key, value.as_slice())?;
                }
                Write::Truncate { from, .. } => {
                    log.retain_in(*from.., |_, _| false)?;
                }
                Write::Purge { upto, value, .. } => {
                    meta.insert(LAST_PURGED, value.as_slice())?;
                    log.retain_in(..=*upto, |_, _| false)?;
                }
            }
        }
    }
    tx.commit()?;
    Ok(())
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
            Bound::Included(i) => i.saturating_add(1),
            Bound::Excluded(i) => *i,
            Bound::Unbounded => u64::MAX,
        };
        if end <= start {
            return Ok(Vec::new());
        }
        // Taken before the disk read: an entry leaves memory only after it is on disk.
        let pending: Vec<(u64, Entry)> = self
            .recent()
            .entries
            .range(start..end)
            .map(|(i, h)| (*i, h.entry.clone()))
            .collect();
        let first_pending = pending.first().map_or(end, |(i, _)| *i);
        let mut entries: BTreeMap<u64, Entry> = if first_pending > start {
            let db = self.db.clone();
            blocking(move || {
                let err: IoKind = StorageIOError::read_logs;
                let tx = db.begin_read().io(err)?;
                let table = tx.open_table(LOG).io(err)?;
                let mut out = BTreeMap::new();
                for item in table.range(start..first_pending).io(err)? {
                    let (k, v) = item.io(err)?;
                    out.insert(k.value(), decode::<Entry>(v.value()).io(err)?);
                }
                Ok(out)
            })
            .await?
        } else {
            BTreeMap::new()
        };
        entries.extend(pending);
        Ok(entries.into_values().collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let db = self.db.clone();
        let (last_purged_log_id, on_disk) = blocking(move || {
            let purged: Option<LogId> =
                Self::read_meta(&db, LAST_PURGED, StorageIOError::read_logs)?;
            Ok((purged, Self::last_on_disk(&db)?))
        })
        .await?;
        let last_log_id = self.recent().last_log_id().or(on_disk);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError> {
        let value = encode(vote).io(StorageIOError::write_vote)?;
        self.write_and_wait(
            |done| Write::Meta {
                key: VOTE,
                value,
                done: Some(done),
            },
            StorageIOError::write_vote,
        )
        .await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        let db = self.db.clone();
        blocking(move || Self::read_meta(&db, VOTE, StorageIOError::read_vote)).await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Written with the next log write, never on its own: a committed index lost in a
        // crash only means a restart re-applies fewer entries itself and learns the rest
        // from the leader.
        let value = encode(&committed).io(StorageIOError::write)?;
        *self.committed.lock().unwrap_or_else(|p| p.into_inner()) = Some(value);
        Ok(())
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
        let mut encoded = Vec::new();
        {
            let mut recent = self.recent();
            for entry in entries {
                let seq = self.seq.fetch_add(1, Ordering::Relaxed);
                let bytes = encode(&entry).io(err)?;
                let index = entry.log_id.index;
                recent.insert(
                    index,
                    Held {
                        seq,
                        entry,
                        size: bytes.len(),
                        on_disk: false,
                    },
                );
                encoded.push((index, seq, bytes));
            }
        }
        self.writer
            .send(Write::Append {
                entries: encoded,
                callback,
            })
            .map_err(|_| "the log writer stopped")
            .io(err)
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.recent().remove_range(log_id.index..);
        self.write_and_wait(
            |done| Write::Truncate {
                from: log_id.index,
                done,
            },
            StorageIOError::write_logs,
        )
        .await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let value = encode(&log_id).io(StorageIOError::write_logs)?;
        self.write_and_wait(
            |done| Write::Purge {
                upto: log_id.index,
                value,
                done,
            },
            StorageIOError::write_logs,
        )
        .await?;
        self.recent().remove_range(..=log_id.index);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, EntryPayload};

    use super::*;

    fn held(index: u64, seq: u64, size: usize) -> Held {
        Held {
            seq,
            entry: Entry {
                log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
                payload: EntryPayload::Blank,
            },
            size,
            on_disk: false,
        }
    }

    #[test]
    fn memory_keeps_every_entry_not_on_disk_and_a_bounded_tail_of_the_rest() {
        let mut recent = Recent::default();
        let size = RECENT_ON_DISK_BYTES / 4;
        for i in 1..=10 {
            recent.insert(i, held(i, i, size));
        }
        // Nothing is on disk yet: all of it stays, however large.
        recent.flushed(&[]);
        assert_eq!(recent.entries.len(), 10);

        // A flush reported for an older append of index 6 does not count for the newer one.
        recent.flushed(&[(1, 1), (2, 2), (3, 3), (4, 4), (5, 5), (6, 99)]);
        assert!(!recent.entries[&6].on_disk);
        assert!(recent.on_disk_bytes <= RECENT_ON_DISK_BYTES);
        assert_eq!(
            recent.entries.keys().copied().collect::<Vec<_>>(),
            (2..=10).collect::<Vec<_>>()
        );

        recent.flushed(&[(6, 6), (7, 7), (8, 8), (9, 9), (10, 10)]);
        assert!(recent.on_disk_bytes <= RECENT_ON_DISK_BYTES);
        assert_eq!(
            recent.entries.keys().copied().collect::<Vec<_>>(),
            vec![7, 8, 9, 10]
        );
        assert_eq!(recent.last_log_id().map(|l| l.index), Some(10));

        // Truncation and purge keep the byte count true.
        recent.remove_range(9..);
        recent.remove_range(..=7);
        assert_eq!(recent.entries.keys().copied().collect::<Vec<_>>(), vec![8]);
        assert_eq!(recent.on_disk_bytes, size);
    }
}

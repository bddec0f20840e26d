//! The Raft log: its entries in append-only segment files (`log_segments`), the vote,
//! the committed index and the purge point in redb.
//!
//! One writer thread owns every change to the log. It takes whatever writes are queued,
//! appends their entries and syncs once (group commit), then tells each caller. Appends
//! return at once and report through openraft's flush callback, so the leader replicates
//! an entry while its own copy is still being written; until an entry is on disk, readers
//! find it in memory. Votes, truncation and purging wait for their fsync before they
//! return.
//!
//! The newest entries stay in memory for a while after they are on disk, because they are
//! read again at once: to apply them when they commit, and to send them to a follower.
//! A read from a segment file would have to leave the runtime for a blocking thread and
//! come back, a hand-off on the path of every write.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{LogState, OptionalSend, RaftLogReader, StorageIOError, Vote};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::oneshot;

use crate::codec::{decode, encode};
use crate::error::{IoContext, IoKind};
use crate::log_segments::{SegmentError, Segments};
use crate::types::{Entry, LogId, NodeId, StorageError, TypeConfig};

/// Where entries were kept before they moved to segment files; read once, to move them.
const LEGACY_LOG: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("raft_log");
const LOG_META: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("raft_log_meta");

const VOTE: &str = "vote";
const COMMITTED: &str = "committed";
const LAST_PURGED: &str = "last_purged";

/// How many bytes of entries already on disk the log keeps in memory as well.
const RECENT_ON_DISK_BYTES: usize = 8 << 20;

/// How often the committed index is written. It costs a sync of its own, and a lost one
/// only means a restart re-applies fewer entries by itself and learns the rest from the
/// leader.
const COMMITTED_EVERY: Duration = Duration::from_secs(1);

/// The log's entries are under `dir/`, beside its redb file.
pub const SEGMENTS_DIR: &str = "raft-log";

/// Why the log could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum LogOpenError {
    #[error("{0}")]
    Meta(#[from] redb::Error),
    #[error(transparent)]
    Segments(#[from] SegmentError),
}

fn meta_error(e: impl Into<redb::Error>) -> LogOpenError {
    LogOpenError::Meta(e.into())
}

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
    segments: Arc<Mutex<Segments>>,
    recent: Arc<Mutex<Recent>>,
    seq: Arc<AtomicU64>,
    writer: mpsc::Sender<Write>,
    /// The newest committed log id not yet written; the writer writes it now and then.
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
    /// Opens the log: its redb file `db` and its segments in `dir/raft-log/`. A log from
    /// a build that kept entries in redb is moved to segments first.
    pub fn open(db: Arc<Database>, dir: &Path) -> Result<Self, LogOpenError> {
        // Read only, so that a log refused below leaves the data dir as it was.
        let purged: Option<LogId> = {
            let tx = db.begin_read().map_err(meta_error)?;
            match tx.open_table(LOG_META) {
                Ok(table) => match table.get(LAST_PURGED).map_err(meta_error)? {
                    Some(v) => Some(decode(v.value()).map_err(|e| {
                        LogOpenError::Meta(redb::Error::Io(std::io::Error::other(e)))
                    })?),
                    None => None,
                },
                Err(redb::TableError::TableDoesNotExist(_)) => None,
                Err(e) => return Err(meta_error(e)),
            }
        };
        let mut segments = Segments::open(&dir.join(SEGMENTS_DIR), purged.map(|l| l.index))?;
        move_legacy_entries(&db, &mut segments)?;
        let segments = Arc::new(Mutex::new(segments));
        let recent = Arc::new(Mutex::new(Recent::default()));
        let committed = Arc::new(Mutex::new(None));
        let (writer, queue) = mpsc::channel();
        {
            let db = db.clone();
            let segments = segments.clone();
            let recent = recent.clone();
            let committed = committed.clone();
            std::thread::Builder::new()
                .name("raft-log-writer".into())
                .spawn(move || write_loop(&db, &segments, &recent, &committed, &queue))
                .map_err(|e| LogOpenError::Meta(redb::Error::Io(e)))?;
        }
        Ok(LogStore {
            db,
            segments,
            recent,
            seq: Arc::new(AtomicU64::new(1)),
            writer,
            committed,
        })
    }

    fn segments(&self) -> std::sync::MutexGuard<'_, Segments> {
        lock(&self.segments)
    }

    fn recent(&self) -> std::sync::MutexGuard<'_, Recent> {
        lock(&self.recent)
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

    /// The newest entry on disk, else the purge point. Reads the disk.
    fn last_on_disk(&self) -> Result<Option<LogId>, StorageError> {
        let err: IoKind = StorageIOError::read_logs;
        let plan = {
            let segments = self.segments();
            segments
                .last_index()
                .map(|last| segments.plan_read(last, last + 1))
        };
        if let Some(plan) = plan {
            for span in plan {
                if let Some(bytes) = span.read().io(err)?.last() {
                    return Ok(Some(decode::<Entry>(bytes).io(err)?.log_id));
                }
            }
        }
        Self::read_meta(&self.db, LAST_PURGED, err)
    }

    /// The last log id, for a node's status.
    pub fn last_log_id(&self) -> Result<Option<LogId>, StorageError> {
        if let Some(log_id) = self.recent().last_log_id() {
            return Ok(Some(log_id));
        }
        self.last_on_disk()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Moves entries that an older build kept in redb into segments. The redb table goes in
/// the same transaction that follows the segments' sync, so a crash part-way only means
/// the move is done again.
fn move_legacy_entries(db: &Database, segments: &mut Segments) -> Result<(), LogOpenError> {
    let tx = db.begin_write().map_err(meta_error)?;
    tx.open_table(LOG_META).map_err(meta_error)?;
    let entries: Vec<(u64, Vec<u8>)> = {
        let table = tx.open_table(LEGACY_LOG).map_err(meta_error)?;
        let mut out = Vec::new();
        for item in table.iter().map_err(meta_error)? {
            let (k, v) = item.map_err(meta_error)?;
            out.push((k.value(), v.value().to_vec()));
        }
        out
    };
    if !entries.is_empty() {
        segments.clear()?;
        for chunk in entries.chunks(1024) {
            let refs: Vec<(u64, &[u8])> = chunk.iter().map(|(i, b)| (*i, b.as_slice())).collect();
            if let Some(file) = segments.append(&refs)? {
                file.sync_data()
                    .map_err(|e| LogOpenError::Meta(redb::Error::Io(e)))?;
            }
        }
        tracing::info!(
            entries = entries.len(),
            "moved the Raft log's entries to segment files"
        );
    }
    tx.delete_table(LEGACY_LOG).map_err(meta_error)?;
    tx.commit().map_err(meta_error)?;
    Ok(())
}

/// Takes every queued write, commits them together, then answers each.
fn write_loop(
    db: &Database,
    segments: &Mutex<Segments>,
    recent: &Mutex<Recent>,
    committed: &Mutex<Option<Vec<u8>>>,
    queue: &mpsc::Receiver<Write>,
) {
    let mut committed_written = Instant::now();
    while let Ok(first) = queue.recv() {
        let mut batch = vec![first];
        while let Ok(more) = queue.try_recv() {
            batch.push(more);
        }
        let started = Instant::now();
        let result = commit(db, segments, committed, &batch);
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
            lock(recent).flushed(&written);
        }
        // After the answers, so it is never on a write's path.
        if committed_written.elapsed() >= COMMITTED_EVERY
            && let Some(value) = lock(committed).take()
        {
            committed_written = Instant::now();
            if let Err(e) = write_meta(db, &[(COMMITTED, &value)], None) {
                tracing::warn!(error = %e, "the committed index could not be written");
            }
        }
    }
}

fn commit(
    db: &Database,
    segments: &Mutex<Segments>,
    committed: &Mutex<Option<Vec<u8>>>,
    batch: &[Write],
) -> Result<(), String> {
    let mut to_sync: Vec<Arc<std::fs::File>> = Vec::new();
    let mut purged_files = Vec::new();
    let mut purged_to = None;
    let mut metas: Vec<(&str, &[u8])> = Vec::new();
    {
        let mut segments = lock(segments);
        for write in batch {
            match write {
                Write::Append { entries, .. } => {
                    let refs: Vec<(u64, &[u8])> =
                        entries.iter().map(|(i, _, b)| (*i, b.as_slice())).collect();
                    if let Some(file) = segments.append(&refs).map_err(|e| e.to_string())?
                        && !to_sync.iter().any(|f| Arc::ptr_eq(f, &file))
                    {
                        to_sync.push(file);
                    }
                }
                Write::Truncate { from, .. } => {
                    segments.truncate(*from).map_err(|e| e.to_string())?;
                }
                Write::Purge { upto, value, .. } => {
                    purged_files.extend(segments.purge(*upto));
                    purged_to = Some(value.as_slice());
                }
                Write::Meta { key, value, .. } => metas.push((key, value.as_slice())),
            }
        }
    }
    for file in &to_sync {
        file.sync_data()
            .map_err(|e| format!("raft log segment cannot be synced: {e}"))?;
    }
    if !metas.is_empty() || purged_to.is_some() {
        let pending = lock(committed).take();
        if let Some(value) = &pending {
            metas.push((COMMITTED, value));
        }
        write_meta(db, &metas, purged_to).map_err(|e| e.to_string())?;
    }
    // Only once the purge is recorded: until then a restart may still need them.
    if !purged_files.is_empty() {
        let segments = lock(segments);
        segments
            .remove_files(&purged_files)
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Writes log metadata durably: the vote must be on disk before it is answered.
fn write_meta(
    db: &Database,
    metas: &[(&str, &[u8])],
    purged_to: Option<&[u8]>,
) -> Result<(), redb::Error> {
    let mut tx = db.begin_write()?;
    tx.set_durability(Durability::Immediate)
        .map_err(|e| redb::Error::Io(std::io::Error::other(e.to_string())))?;
    {
        let mut meta = tx.open_table(LOG_META)?;
        for (key, value) in metas {
            meta.insert(*key, *value)?;
        }
        if let Some(value) = purged_to {
            meta.insert(LAST_PURGED, value)?;
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
            let plan = self.segments().plan_read(start, first_pending);
            blocking(move || {
                let err: IoKind = StorageIOError::read_logs;
                let mut out = BTreeMap::new();
                for span in plan {
                    for bytes in span.read().io(err)? {
                        let entry = decode::<Entry>(&bytes).io(err)?;
                        out.insert(entry.log_id.index, entry);
                    }
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
        let store = self.clone();
        let (last_purged_log_id, on_disk) = blocking(move || {
            let purged: Option<LogId> =
                Self::read_meta(&store.db, LAST_PURGED, StorageIOError::read_logs)?;
            Ok((purged, store.last_on_disk()?))
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
        // Written by the log writer now and then (`COMMITTED_EVERY`), never waited for.
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

    #[tokio::test]
    async fn a_log_kept_in_redb_by_an_older_build_moves_to_segments_whole() {
        let dir = tempfile::tempdir().unwrap();
        let db_path = dir.path().join("raft-log.redb");
        {
            let db = Database::create(&db_path).unwrap();
            let tx = db.begin_write().unwrap();
            {
                let mut table = tx.open_table(LEGACY_LOG).unwrap();
                for i in 0..300 {
                    let bytes = encode(&held(i, 0, 0).entry).unwrap();
                    table.insert(i, bytes.as_slice()).unwrap();
                }
            }
            tx.commit().unwrap();
        }
        // The writer thread of a dropped store lets go of the file as it ends.
        let reopen = || {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            loop {
                match Database::create(&db_path) {
                    Ok(db) => return db,
                    Err(redb::DatabaseError::DatabaseAlreadyOpen)
                        if std::time::Instant::now() < deadline =>
                    {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(e) => panic!("{}: {e}", db_path.display()),
                }
            }
        };
        for _ in 0..2 {
            let db = Arc::new(reopen());
            let mut log = LogStore::open(db, dir.path()).unwrap();
            let entries = log.try_get_log_entries(0..400).await.unwrap();
            assert_eq!(
                entries.iter().map(|e| e.log_id.index).collect::<Vec<_>>(),
                (0..300).collect::<Vec<_>>()
            );
            assert_eq!(log.last_log_id().unwrap().map(|l| l.index), Some(299));
        }
        let db = reopen();
        let tx = db.begin_read().unwrap();
        assert!(tx.open_table(LEGACY_LOG).is_err(), "the old table is gone");
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

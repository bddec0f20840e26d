//! The key-value state machine in redb. Applying a batch of entries is one write
//! transaction that holds the data, the history of events, the applied log id and the
//! membership together, so a restart never re-applies an entry or skips one.
//!
//! Most applied batches are committed without their own fsync: the Raft log is durable, and
//! a crash only rolls the state machine back to an earlier applied index, from which
//! openraft re-applies the committed log. Snapshots and installed snapshots are
//! fsynced, and the log is never purged past a snapshot, so the entries needed to roll
//! forward are always still there. A snapshot's data is a file of its own beside the
//! database (`snapshot_file`); redb records which file is current.

use std::io::Cursor;
use std::sync::Arc;

use openraft::storage::RaftStateMachine;
use openraft::{AnyError, EntryPayload, OptionalSend, RaftSnapshotBuilder, StorageIOError};
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction,
};
use serde::{Deserialize, Serialize};

use crate::codec::{decode, encode};
use crate::error::{IoContext, IoKind};
use crate::snapshot_file::SnapshotFiles;
use crate::types::{
    Command, CommandResult, Entry, Event, EventKind, KeyValue, LogId, Op, Snapshot, SnapshotMeta,
    StorageError, StoredMembership, Txn, TypeConfig,
};
use crate::watch::WatchHub;

const KV: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("kv");
const HISTORY: TableDefinition<'_, (u64, u32), &[u8]> = TableDefinition::new("kv_history");
const SM_META: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("state_meta");
const SNAPSHOT: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("snapshot");

const LAST_APPLIED: &str = "last_applied";
const MEMBERSHIP: &str = "membership";
const REVISION: &str = "revision";
const COMPACT_REVISION: &str = "compact_revision";
const CLUSTER_ID: &str = "cluster_id";
const SNAPSHOT_META: &str = "meta";
/// The snapshot's data, as stores written before snapshot files kept it; read if no file
/// is named, removed when the next snapshot is recorded.
const SNAPSHOT_DATA: &str = "data";
/// The name of the current snapshot's file.
const SNAPSHOT_FILE: &str = "file";

/// A stored value with its revisions.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    value: Vec<u8>,
    create_revision: u64,
    mod_revision: u64,
    version: u64,
}

impl Record {
    fn into_kv(self, key: Vec<u8>) -> KeyValue {
        KeyValue {
            key,
            value: self.value,
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
            version: self.version,
        }
    }
}

/// What a snapshot holds: the data and the revision counters, not the history.
#[derive(Serialize, Deserialize)]
struct SnapshotBody {
    revision: u64,
    cluster_id: String,
    kvs: Vec<(Vec<u8>, Record)>,
}

/// How much watch history the state machine keeps.
#[derive(Debug, Clone, Copy)]
pub struct HistoryRetention {
    /// Events of the newest `revisions` log indexes are kept; older ones are compacted.
    pub revisions: u64,
}

impl Default for HistoryRetention {
    fn default() -> Self {
        HistoryRetention { revisions: 100_000 }
    }
}

async fn blocking<T, F>(f: F) -> Result<T, StorageError>
where
    F: FnOnce() -> Result<T, StorageError> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .io(StorageIOError::write_state_machine)?
}

/// The read side of the state machine, shared by every reader on this server.
#[derive(Clone)]
pub struct StateView {
    db: Arc<Database>,
}

/// The answer to a history read that starts below what is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compacted {
    pub compact_revision: u64,
}

impl StateView {
    fn read<T>(
        &self,
        f: impl FnOnce(&redb::ReadTransaction) -> Result<T, redb::Error>,
    ) -> Result<T, crate::Error> {
        let tx = self
            .db
            .begin_read()
            .map_err(|e| crate::Error::Storage(e.to_string()))?;
        f(&tx).map_err(|e| crate::Error::Storage(e.to_string()))
    }

    fn meta_u64(tx: &redb::ReadTransaction, key: &str) -> Result<u64, redb::Error> {
        let table = tx.open_table(SM_META)?;
        Ok(match table.get(key)? {
            Some(v) => decode(v.value()).map_err(|e| redb::Error::Corrupted(e.to_string()))?,
            None => 0,
        })
    }

    /// The revision of the newest applied write.
    pub fn revision(&self) -> Result<u64, crate::Error> {
        self.read(|tx| Self::meta_u64(tx, REVISION))
    }

    pub fn compact_revision(&self) -> Result<u64, crate::Error> {
        self.read(|tx| Self::meta_u64(tx, COMPACT_REVISION))
    }

    /// The cluster this state belongs to; empty before the cluster has one.
    pub fn cluster_id(&self) -> Result<String, crate::Error> {
        self.read(|tx| {
            let table = tx.open_table(SM_META)?;
            Ok(match table.get(CLUSTER_ID)? {
                Some(v) => decode(v.value()).map_err(|e| redb::Error::Corrupted(e.to_string()))?,
                None => String::new(),
            })
        })
    }

    pub fn last_applied(&self) -> Result<Option<LogId>, crate::Error> {
        self.read(|tx| {
            let table = tx.open_table(SM_META)?;
            Ok(match table.get(LAST_APPLIED)? {
                Some(v) => decode(v.value()).map_err(|e| redb::Error::Corrupted(e.to_string()))?,
                None => None,
            })
        })
    }

    /// One key, or every key under a prefix, with the revision they were read at.
    pub fn range(
        &self,
        key: &[u8],
        prefix: bool,
        limit: usize,
    ) -> Result<(u64, Vec<KeyValue>, bool), crate::Error> {
        self.read(|tx| {
            let revision = Self::meta_u64(tx, REVISION)?;
            let table = tx.open_table(KV)?;
            let mut out = Vec::new();
            let mut more = false;
            if prefix {
                for item in table.range(key..)? {
                    let (k, v) = item?;
                    if !k.value().starts_with(key) {
                        break;
                    }
                    if limit > 0 && out.len() == limit {
                        more = true;
                        break;
                    }
                    let record: Record =
                        decode(v.value()).map_err(|e| redb::Error::Corrupted(e.to_string()))?;
                    out.push(record.into_kv(k.value().to_vec()));
                }
            } else if let Some(v) = table.get(key)? {
                let record: Record =
                    decode(v.value()).map_err(|e| redb::Error::Corrupted(e.to_string()))?;
                out.push(record.into_kv(key.to_vec()));
            }
            Ok((revision, out, more))
        })
    }

    /// Events under `prefix` with revision at least `from`, oldest first, at most
    /// `limit` of them (whole revisions are never split).
    pub fn history(
        &self,
        prefix: &[u8],
        from: u64,
        limit: usize,
    ) -> Result<Result<Vec<Event>, Compacted>, crate::Error> {
        self.read(|tx| {
            let compact_revision = Self::meta_u64(tx, COMPACT_REVISION)?;
            if from <= compact_revision {
                return Ok(Err(Compacted { compact_revision }));
            }
            let table = tx.open_table(HISTORY)?;
            let mut out: Vec<Event> = Vec::new();
            for item in table.range((from, 0)..)? {
                let (k, v) = item?;
                let (rev, _) = k.value();
                if out.len() >= limit && out.last().is_some_and(|e| e.revision() != rev) {
                    break;
                }
                let event: Event =
                    decode(v.value()).map_err(|e| redb::Error::Corrupted(e.to_string()))?;
                if event.kv.key.starts_with(prefix) {
                    out.push(event);
                }
            }
            Ok(Ok(out))
        })
    }
}

/// Applies entries in one transaction that does not wait for the disk: their data, the
/// revision and the applied index together.
fn apply_entries(
    db: &Database,
    entries: &[Entry],
    retention: HistoryRetention,
) -> Result<(Vec<CommandResult>, Vec<Event>, u64), StorageError> {
    let err: IoKind = StorageIOError::write_state_machine;
    let mut tx = db.begin_write().io(err)?;
    tx.set_durability(Durability::None).io(err)?;
    let mut revision: u64 = StateMachine::get_meta(&tx, REVISION)?;
    let mut results = Vec::with_capacity(entries.len());
    let mut events = Vec::new();
    let mut last = None;
    for entry in entries {
        last = Some(entry.log_id);
        let result = match &entry.payload {
            EntryPayload::Blank => CommandResult {
                revision,
                succeeded: true,
                ..CommandResult::default()
            },
            EntryPayload::Membership(m) => {
                let stored = StoredMembership::new(Some(entry.log_id), m.clone());
                StateMachine::put_meta(&tx, MEMBERSHIP, &stored)?;
                CommandResult {
                    revision,
                    succeeded: true,
                    ..CommandResult::default()
                }
            }
            EntryPayload::Normal(Command::SetClusterId(id)) => {
                let current: String = StateMachine::get_meta(&tx, CLUSTER_ID)?;
                if current.is_empty() {
                    StateMachine::put_meta(&tx, CLUSTER_ID, id)?;
                }
                CommandResult {
                    revision,
                    succeeded: current.is_empty() || current == *id,
                    ..CommandResult::default()
                }
            }
            EntryPayload::Normal(Command::Txn(txn)) => {
                let first_event = events.len();
                let result = apply_txn(&tx, txn, entry.log_id.index, &mut events)?;
                record_history(&tx, entry.log_id.index, &events[first_event..])?;
                settle(result, &mut revision)
            }
            EntryPayload::Normal(Command::Batch(txns)) => {
                let first_event = events.len();
                let mut each = Vec::with_capacity(txns.len());
                for txn in txns {
                    let result = apply_txn(&tx, txn, entry.log_id.index, &mut events)?;
                    each.push(settle(result, &mut revision));
                }
                record_history(&tx, entry.log_id.index, &events[first_event..])?;
                CommandResult {
                    revision,
                    succeeded: each.iter().all(|r| r.succeeded),
                    deleted: each.iter().map(|r| r.deleted).sum(),
                    batch: each,
                }
            }
        };
        results.push(result);
    }
    StateMachine::put_meta(&tx, REVISION, &revision)?;
    StateMachine::put_meta(&tx, LAST_APPLIED, &last)?;
    compact_history(&tx, revision, retention)?;
    tx.commit().io(err)?;
    Ok((results, events, revision))
}

/// Makes every commit so far durable. The applied index is written again (unchanged) so
/// the transaction is not empty.
fn make_durable(db: &Database) -> Result<(), StorageError> {
    let err: IoKind = StorageIOError::write_state_machine;
    let mut tx = db.begin_write().io(err)?;
    tx.set_durability(Durability::Immediate).io(err)?;
    let applied: Option<LogId> = StateMachine::get_meta(&tx, LAST_APPLIED)?;
    StateMachine::put_meta(&tx, LAST_APPLIED, &applied)?;
    tx.commit().io(err)?;
    Ok(())
}

/// The state machine half of the store, driven by openraft.
pub struct StateMachine {
    db: Arc<Database>,
    files: SnapshotFiles,
    hub: Arc<WatchHub>,
    retention: HistoryRetention,
    /// When a durable commit was last started. redb reuses the pages a commit frees only
    /// after a durable commit, so one is made in a while to keep the file small.
    last_durable: std::time::Instant,
    /// The durable commit under way. It runs after the apply that started it has answered,
    /// so no write waits for the disk here; the next apply waits for it (rather than block
    /// a runtime thread on redb's write lock).
    durable: Option<tokio::task::JoinHandle<Result<(), StorageError>>>,
}

/// The longest the state machine goes without a durable commit. A durable commit flushes
/// every page written since the last one and holds up the next apply meanwhile: after 1 s
/// of 64 writers that took 30–40 ms; after 200 ms it is a fifth of that (p99.9 of a put 32
/// ms instead of 48 in bench-store). Nothing is lost between two: the log holds every
/// entry after the last snapshot, and a restart applies them again from the durable
/// applied index.
const DURABLE_EVERY: std::time::Duration = std::time::Duration::from_millis(200);

impl StateMachine {
    /// Opens the state machine in `db`; snapshot files go in `snapshot_dir`.
    pub fn open(
        db: Arc<Database>,
        snapshot_dir: impl Into<std::path::PathBuf>,
        hub: Arc<WatchHub>,
        retention: HistoryRetention,
    ) -> Result<Self, redb::Error> {
        let tx = db.begin_write()?;
        tx.open_table(KV)?;
        tx.open_table(HISTORY)?;
        tx.open_table(SM_META)?;
        tx.open_table(SNAPSHOT)?;
        tx.commit()?;
        let sm = StateMachine {
            db,
            files: SnapshotFiles::new(snapshot_dir),
            hub,
            retention,
            last_durable: std::time::Instant::now(),
            durable: None,
        };
        let view = sm.view();
        let revision = view
            .revision()
            .map_err(|e| redb::Error::Corrupted(e.to_string()))?;
        sm.hub.set_revision(revision);
        Ok(sm)
    }

    pub fn view(&self) -> StateView {
        StateView {
            db: self.db.clone(),
        }
    }

    fn put_meta<T: Serialize>(
        tx: &WriteTransaction,
        key: &str,
        value: &T,
    ) -> Result<(), StorageError> {
        let err: IoKind = StorageIOError::write_state_machine;
        let bytes = encode(value).io(err)?;
        tx.open_table(SM_META)
            .io(err)?
            .insert(key, bytes.as_slice())
            .io(err)?;
        Ok(())
    }

    fn get_meta<T: serde::de::DeserializeOwned + Default>(
        tx: &WriteTransaction,
        key: &str,
    ) -> Result<T, StorageError> {
        let err: IoKind = StorageIOError::read_state_machine;
        let table = tx.open_table(SM_META).io(err)?;
        let value = table.get(key).io(err)?;
        match value {
            Some(v) => decode(v.value()).io(err),
            None => Ok(T::default()),
        }
    }
}

/// Keeps the events of one log entry for watchers, numbered in the order they happened.
fn record_history(
    tx: &WriteTransaction,
    revision: u64,
    events: &[Event],
) -> Result<(), StorageError> {
    let err: IoKind = StorageIOError::write_state_machine;
    let mut history = tx.open_table(HISTORY).io(err)?;
    for (seq, event) in events.iter().enumerate() {
        let seq = u32::try_from(seq).io(err)?;
        history
            .insert((revision, seq), encode(event).io(err)?.as_slice())
            .io(err)?;
    }
    Ok(())
}

/// A transaction's result carries the store's revision after it; the store moves to
/// the transaction's revision when it wrote anything.
fn settle(mut result: CommandResult, revision: &mut u64) -> CommandResult {
    if result.revision != 0 {
        *revision = result.revision;
    } else {
        result.revision = *revision;
    }
    result
}

/// Applies one transaction at `revision`, appending its events to `events`.
fn apply_txn(
    tx: &WriteTransaction,
    txn: &Txn,
    revision: u64,
    events: &mut Vec<Event>,
) -> Result<CommandResult, StorageError> {
    let err: IoKind = StorageIOError::write_state_machine;
    let mut kv = tx.open_table(KV).io(err)?;
    let mut succeeded = true;
    for cmp in &txn.compare {
        let current = match kv.get(cmp.key.as_slice()).io(err)? {
            Some(v) => decode::<Record>(v.value()).io(err)?.mod_revision,
            None => 0,
        };
        if current != cmp.mod_revision {
            succeeded = false;
            break;
        }
    }
    let ops = if succeeded {
        &txn.success
    } else {
        &txn.failure
    };
    let mut deleted = 0;
    let before = events.len();
    for op in ops {
        match op {
            Op::Put { key, value } => {
                let prior = match kv.get(key.as_slice()).io(err)? {
                    Some(v) => Some(decode::<Record>(v.value()).io(err)?),
                    None => None,
                };
                let record = Record {
                    value: value.clone(),
                    create_revision: prior.as_ref().map_or(revision, |p| p.create_revision),
                    mod_revision: revision,
                    version: prior.as_ref().map_or(1, |p| p.version + 1),
                };
                kv.insert(key.as_slice(), encode(&record).io(err)?.as_slice())
                    .io(err)?;
                events.push(Event {
                    kind: EventKind::Put,
                    kv: record.into_kv(key.clone()),
                });
            }
            Op::Delete { key } => {
                let removed = kv.remove(key.as_slice()).io(err)?.is_some();
                if removed {
                    deleted += 1;
                    events.push(deletion(key.clone(), revision));
                }
            }
            Op::DeletePrefix { prefix } => {
                let mut keys = Vec::new();
                for item in kv.range(prefix.as_slice()..).io(err)? {
                    let (k, _) = item.io(err)?;
                    if !k.value().starts_with(prefix) {
                        break;
                    }
                    keys.push(k.value().to_vec());
                }
                for key in keys {
                    kv.remove(key.as_slice()).io(err)?;
                    deleted += 1;
                    events.push(deletion(key, revision));
                }
            }
        }
    }
    let wrote = events.len() > before;
    Ok(CommandResult {
        revision: if wrote { revision } else { 0 },
        succeeded,
        deleted,
        batch: Vec::new(),
    })
}

fn deletion(key: Vec<u8>, revision: u64) -> Event {
    Event {
        kind: EventKind::Delete,
        kv: KeyValue {
            key,
            value: Vec::new(),
            create_revision: 0,
            mod_revision: revision,
            version: 0,
        },
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let db = self.db.clone();
        blocking(move || {
            let err: IoKind = StorageIOError::read_state_machine;
            let tx = db.begin_read().io(err)?;
            let table = tx.open_table(SM_META).io(err)?;
            let last_applied: Option<LogId> = match table.get(LAST_APPLIED).io(err)? {
                Some(v) => decode(v.value()).io(err)?,
                None => None,
            };
            let membership: StoredMembership = match table.get(MEMBERSHIP).io(err)? {
                Some(v) => decode(v.value()).io(err)?,
                None => StoredMembership::default(),
            };
            Ok((last_applied, membership))
        })
        .await
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandResult>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        if let Some(pending) = self.durable.take() {
            pending.await.io(StorageIOError::write_state_machine)??;
        }
        let count = entries.len();
        let started = std::time::Instant::now();
        // A commit that does not wait for the disk is cheaper than handing it to a
        // blocking thread and back, which would sit on every write's path.
        let (results, events, revision) = apply_entries(&self.db, &entries, self.retention)?;
        tracing::debug!(
            entries = count,
            micros = started.elapsed().as_micros() as u64,
            "applied"
        );
        self.hub.publish(events, revision);
        if self.last_durable.elapsed() >= DURABLE_EVERY {
            self.last_durable = std::time::Instant::now();
            let db = self.db.clone();
            self.durable = Some(tokio::task::spawn_blocking(move || make_durable(&db)));
        }
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            db: self.db.clone(),
            files: self.files.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let db = self.db.clone();
        let files = self.files.clone();
        let meta = meta.clone();
        let data = snapshot.into_inner();
        let revision = blocking(move || {
            let err: IoKind = StorageIOError::write_state_machine;
            let body: SnapshotBody = decode(&data).io(err)?;
            let file = files.write(&meta.snapshot_id, &data).io(err)?;
            let _current = files.lock();
            let mut tx = db.begin_write().io(err)?;
            tx.set_durability(Durability::Immediate).io(err)?;
            {
                let mut kv = tx.open_table(KV).io(err)?;
                kv.retain(|_, _| false).io(err)?;
                for (key, record) in &body.kvs {
                    kv.insert(key.as_slice(), encode(record).io(err)?.as_slice())
                        .io(err)?;
                }
                let mut history = tx.open_table(HISTORY).io(err)?;
                history.retain(|_, _| false).io(err)?;
            }
            let snapshot_index = meta.last_log_id.map_or(0, |l| l.index);
            StateMachine::put_meta(&tx, REVISION, &body.revision)?;
            // Events up to the snapshot are not in it: watchers older than that re-list.
            StateMachine::put_meta(&tx, COMPACT_REVISION, &snapshot_index)?;
            StateMachine::put_meta(&tx, CLUSTER_ID, &body.cluster_id)?;
            StateMachine::put_meta(&tx, LAST_APPLIED, &meta.last_log_id)?;
            StateMachine::put_meta(&tx, MEMBERSHIP, &meta.last_membership)?;
            record_snapshot(&tx, &meta, &file, true)?;
            tx.commit().io(err)?;
            files.remove_all_but(&file);
            Ok((body.revision, snapshot_index))
        })
        .await?;
        self.hub.reset(revision.0, revision.1);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        let db = self.db.clone();
        let files = self.files.clone();
        blocking(move || {
            // Held until the file is read: a snapshot built meanwhile removes the old file.
            let _current = files.lock();
            let (meta, file) = {
                let tx = db.begin_read().map_err(err_snapshot)?;
                let table = tx.open_table(SNAPSHOT).map_err(err_snapshot)?;
                let meta = match table.get(SNAPSHOT_META).map_err(err_snapshot)? {
                    Some(v) => decode::<SnapshotMeta>(v.value()).map_err(err_snapshot)?,
                    None => return Ok(None),
                };
                let file = match table.get(SNAPSHOT_FILE).map_err(err_snapshot)? {
                    Some(v) => Ok(String::from_utf8_lossy(v.value()).into_owned()),
                    None => match table.get(SNAPSHOT_DATA).map_err(err_snapshot)? {
                        Some(v) => Err(v.value().to_vec()),
                        None => return Ok(None),
                    },
                };
                (meta, file)
            };
            let data = match file {
                Ok(name) => {
                    let path = files.path(&name);
                    std::fs::read(&path).map_err(|e| {
                        err_snapshot(format!("snapshot file {}: {e}", path.display()))
                    })?
                }
                Err(in_db) => in_db,
            };
            Ok(Some(Snapshot {
                meta,
                snapshot: Box::new(Cursor::new(data)),
            }))
        })
        .await
    }
}

fn err_snapshot<E: std::fmt::Display>(e: E) -> StorageError {
    StorageError::IO {
        source: StorageIOError::read_snapshot(None, AnyError::error(e)),
    }
}

/// Drops history older than the retention window, in steps of an eighth of the window
/// so the cost is spread over many applies.
fn compact_history(
    tx: &WriteTransaction,
    revision: u64,
    retention: HistoryRetention,
) -> Result<(), StorageError> {
    let err: IoKind = StorageIOError::write_state_machine;
    let keep = retention.revisions.max(1);
    let compacted: u64 = StateMachine::get_meta(tx, COMPACT_REVISION)?;
    if revision.saturating_sub(compacted) <= keep + keep / 8 {
        return Ok(());
    }
    let new_compact = revision - keep;
    let mut history = tx.open_table(HISTORY).io(err)?;
    history
        .retain_in(..(new_compact + 1, 0), |_, _| false)
        .io(err)?;
    StateMachine::put_meta(tx, COMPACT_REVISION, &new_compact)
}

pub struct SnapshotBuilder {
    db: Arc<Database>,
    files: SnapshotFiles,
}

/// Names `file` as the current snapshot. A built snapshot is not recorded over a newer one
/// (installed while it was built); an installed one always is, since it replaced the state.
fn record_snapshot(
    tx: &WriteTransaction,
    meta: &SnapshotMeta,
    file: &str,
    installed: bool,
) -> Result<bool, StorageError> {
    let err: IoKind = StorageIOError::write_state_machine;
    let mut snap = tx.open_table(SNAPSHOT).io(err)?;
    let newer = !installed
        && match snap.get(SNAPSHOT_META).io(err)? {
            Some(v) => decode::<SnapshotMeta>(v.value())
                .map(|current| current.last_log_id > meta.last_log_id)
                .unwrap_or(false),
            None => false,
        };
    if newer {
        return Ok(false);
    }
    snap.insert(SNAPSHOT_META, encode(meta).io(err)?.as_slice())
        .io(err)?;
    snap.insert(SNAPSHOT_FILE, file.as_bytes()).io(err)?;
    snap.remove(SNAPSHOT_DATA).io(err)?;
    Ok(true)
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let db = self.db.clone();
        let files = self.files.clone();
        blocking(move || {
            let err: IoKind = StorageIOError::write_state_machine;
            // Read from a snapshot of the database, not under the write lock: a whole copy
            // of the keys takes long, and applies go on meanwhile.
            let read = db.begin_read().io(err)?;
            let meta_of = |key: &str| -> Result<Option<Vec<u8>>, StorageError> {
                let table = read.open_table(SM_META).io(err)?;
                Ok(table.get(key).io(err)?.map(|v| v.value().to_vec()))
            };
            let last_applied: Option<LogId> = match meta_of(LAST_APPLIED)? {
                Some(v) => decode(&v).io(err)?,
                None => None,
            };
            let membership: StoredMembership = match meta_of(MEMBERSHIP)? {
                Some(v) => decode(&v).io(err)?,
                None => StoredMembership::default(),
            };
            let revision: u64 = match meta_of(REVISION)? {
                Some(v) => decode(&v).io(err)?,
                None => 0,
            };
            let cluster_id: String = match meta_of(CLUSTER_ID)? {
                Some(v) => decode(&v).io(err)?,
                None => String::new(),
            };
            let mut kvs = Vec::new();
            {
                let kv = read.open_table(KV).io(err)?;
                for item in kv.iter().io(err)? {
                    let (k, v) = item.io(err)?;
                    kvs.push((k.value().to_vec(), decode::<Record>(v.value()).io(err)?));
                }
            }
            drop(read);
            let data = encode(&SnapshotBody {
                revision,
                cluster_id,
                kvs,
            })
            .io(err)?;
            let snapshot_id = match last_applied {
                Some(l) => format!("{}-{}-{}", l.leader_id.term, l.index, revision),
                None => format!("0-0-{revision}"),
            };
            let meta = SnapshotMeta {
                last_log_id: last_applied,
                last_membership: membership,
                snapshot_id,
            };
            // Written with no lock held: applies go on while the file is written and synced.
            let file = files.write(&meta.snapshot_id, &data).io(err)?;
            // Committed durably, this also makes every state machine commit before it
            // durable, and those already reach past the snapshot: a restart never finds the
            // log purged beyond what the state machine holds.
            let _current = files.lock();
            let mut tx = db.begin_write().io(err)?;
            tx.set_durability(Durability::Immediate).io(err)?;
            let recorded = record_snapshot(&tx, &meta, &file, false)?;
            tx.commit().io(err)?;
            if recorded {
                files.remove_all_but(&file);
            } else {
                let _ = std::fs::remove_file(files.path(&file));
            }
            Ok(Snapshot {
                meta,
                snapshot: Box::new(Cursor::new(data)),
            })
        })
        .await
    }
}

//! What this server knows of the nodes streaming to it, written to the store (`/nodes/<name>`).
//! Connects, registrations and refusals go at once; version progress at most every 5 s per
//! node, so ten thousand ACKs cost a few writes, not ten thousand.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;
use trellis_api::discovery::{NODES_PREFIX, NackRecord, NodeStatus};
use trellis_raft_store::{Compare, Op, StoreNode, Txn};

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

pub fn node_key(name: &str) -> String {
    format!("{NODES_PREFIX}{name}")
}

/// How soon a change of a node's record must reach the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Dirty {
    Clean,
    /// Versions sent and acknowledged: they change with every push to every node, so they
    /// are written at most every [`PROGRESS_EVERY`] per node.
    Progress,
    /// Connected, disconnected, registered, refused: written at once.
    Now,
}

const PROGRESS_EVERY: Duration = Duration::from_secs(5);

struct Record {
    status: NodeStatus,
    dirty: Dirty,
    last_write: Option<std::time::Instant>,
    /// The revision of this server's last write of the record: a "disconnected" write only
    /// lands if nobody (another server the node moved to) wrote it since.
    written: Option<u64>,
    /// Streams of this node on this server (a reconnect may overlap the old stream's end).
    streams: u32,
}

#[derive(Clone)]
pub struct NodeTable {
    records: Arc<Mutex<HashMap<String, Record>>>,
    server: String,
    /// Wakes the flusher for a change that should not wait for the next tick.
    urgent: Arc<tokio::sync::Notify>,
}

impl NodeTable {
    pub fn new(server: String) -> Self {
        NodeTable {
            records: Arc::default(),
            urgent: Arc::default(),
            server,
        }
    }

    fn update(&self, name: &str, urgency: Dirty, f: impl FnOnce(&mut Record)) {
        let mut records = self.records.lock().unwrap_or_else(|p| p.into_inner());
        let record = records.entry(name.to_owned()).or_insert_with(|| Record {
            status: NodeStatus {
                name: name.to_owned(),
                ..NodeStatus::default()
            },
            dirty: Dirty::Now,
            last_write: None,
            written: None,
            streams: 0,
        });
        f(record);
        record.dirty = record.dirty.max(urgency);
        if urgency == Dirty::Now {
            self.urgent.notify_one();
        }
    }

    pub fn connected(&self, name: &str, agent_version: &str, applied: &str) {
        let server = self.server.clone();
        self.update(name, Dirty::Now, |r| {
            r.streams += 1;
            let s = &mut r.status;
            s.connected = true;
            s.server = server;
            s.agent_version = agent_version.to_owned();
            if !applied.is_empty() {
                s.applied_version = applied.to_owned();
            }
        });
    }

    pub fn registered(&self, name: &str, address: &str, workloads: Vec<String>) {
        self.update(name, Dirty::Now, |r| {
            r.status.address = address.to_owned();
            r.status.workloads = workloads;
        });
    }

    pub fn sent(&self, name: &str, version: &str) {
        self.update(name, Dirty::Progress, |r| {
            r.status.sent_version = version.to_owned();
        });
    }

    pub fn acked(&self, name: &str, version: &str) {
        self.update(name, Dirty::Progress, |r| {
            r.status.applied_version = version.to_owned();
        });
    }

    pub fn nacked(&self, name: &str, version: &str, reason: &str) {
        self.update(name, Dirty::Now, |r| {
            r.status.last_nack = Some(NackRecord {
                version: version.to_owned(),
                reason: reason.to_owned(),
                at: now_secs(),
            });
        });
    }

    pub fn disconnected(&self, name: &str) {
        let mut records = self.records.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(r) = records.get_mut(name) {
            r.streams = r.streams.saturating_sub(1);
            if r.streams == 0 {
                r.status.connected = false;
                r.status.server.clear();
                r.dirty = Dirty::Now;
                self.urgent.notify_one();
            }
        }
    }

    /// Writes every changed record. Connected nodes go in one transaction; a node that left
    /// is written only if its record is still ours.
    pub async fn flush(&self, store: &StoreNode) {
        let (live, gone): (Vec<_>, Vec<_>) = {
            let mut records = self.records.lock().unwrap_or_else(|p| p.into_inner());
            let mut live = Vec::new();
            let mut gone = Vec::new();
            let now = std::time::Instant::now();
            let due = |r: &Record| match r.dirty {
                Dirty::Clean => false,
                Dirty::Now => true,
                Dirty::Progress => r.last_write.is_none_or(|t| now - t >= PROGRESS_EVERY),
            };
            for (name, r) in records.iter_mut().filter(|(_, r)| due(r)) {
                r.dirty = Dirty::Clean;
                r.last_write = Some(now);
                r.status.last_seen = now_secs();
                let value = serde_json::to_vec(&r.status).unwrap_or_default();
                if r.status.connected {
                    live.push((name.clone(), value));
                } else {
                    gone.push((name.clone(), value, r.written));
                }
            }
            (live, gone)
        };
        if !live.is_empty() {
            let txn = Txn {
                compare: Vec::new(),
                success: live
                    .iter()
                    .map(|(name, value)| Op::Put {
                        key: node_key(name).into_bytes(),
                        value: value.clone(),
                    })
                    .collect(),
                failure: Vec::new(),
            };
            match store.txn(txn).await {
                Ok(r) => self.mark_written(live.iter().map(|(n, _)| n.as_str()), r.revision),
                Err(e) => {
                    tracing::debug!(error = %e, "discovery: writing node status");
                    self.mark_dirty(live.iter().map(|(n, _)| n.as_str()));
                }
            }
        }
        for (name, value, written) in gone {
            let key = node_key(&name).into_bytes();
            let txn = Txn {
                compare: written
                    .map(|rev| Compare {
                        key: key.clone(),
                        mod_revision: rev,
                    })
                    .into_iter()
                    .collect(),
                success: vec![Op::Put { key, value }],
                failure: Vec::new(),
            };
            match store.txn(txn).await {
                Ok(r) if r.succeeded => self.mark_written([name.as_str()], r.revision),
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "discovery: writing node status");
                    self.mark_dirty([name.as_str()]);
                }
            }
        }
        // Forget nodes that left and whose departure is written.
        let mut records = self.records.lock().unwrap_or_else(|p| p.into_inner());
        records.retain(|_, r| r.status.connected || r.dirty != Dirty::Clean || r.streams > 0);
    }

    fn mark_written<'a>(&self, names: impl IntoIterator<Item = &'a str>, revision: u64) {
        let mut records = self.records.lock().unwrap_or_else(|p| p.into_inner());
        for n in names {
            if let Some(r) = records.get_mut(n) {
                r.written = Some(revision);
            }
        }
    }

    fn mark_dirty<'a>(&self, names: impl IntoIterator<Item = &'a str>) {
        let mut records = self.records.lock().unwrap_or_else(|p| p.into_inner());
        for n in names {
            if let Some(r) = records.get_mut(n) {
                r.dirty = Dirty::Now;
            }
        }
    }

    pub fn spawn_flusher(
        &self,
        store: StoreNode,
        every: Duration,
        mut stop: watch::Receiver<bool>,
    ) {
        let table = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => table.flush(&store).await,
                    // Flushes are one after another, so a crowd of connects still makes
                    // few writes: whatever piled up during one goes in the next.
                    _ = table.urgent.notified() => table.flush(&store).await,
                    _ = stop.changed() => return,
                }
            }
        });
    }
}

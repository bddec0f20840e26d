//! The server's copy of everything a node's view is made of: `/config/` and `/registry/`,
//! kept current by the store's watch. Changes are gathered into bursts (a debounce, as
//! Istio does) before the streams look at them.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::{broadcast, watch};
use tokio::time::{Instant, sleep, timeout_at};
use trellis_raft_store::{EventKind, StoreNode, WatchUpdate};

/// Keys under these prefixes make up the views.
const VIEW_PREFIXES: [&str; 2] = ["/config/", "/registry/"];

pub fn in_view_space(key: &str) -> bool {
    VIEW_PREFIXES.iter().any(|p| key.starts_with(p))
}

#[derive(Debug, Clone)]
pub struct Entry {
    pub revision: u64,
    pub value: Bytes,
}

#[derive(Default)]
pub struct MirrorState {
    pub items: BTreeMap<String, Entry>,
    /// The store revision the items are current to.
    pub revision: u64,
}

/// One burst of changes, published after the mirror applied it.
#[derive(Debug, Clone)]
pub struct Changes {
    pub revision: u64,
    /// Keys put or deleted in the burst. Empty with `resync`: anything may have changed.
    pub keys: Arc<Vec<String>>,
    pub resync: bool,
}

#[derive(Debug, Clone, Copy)]
pub struct Debounce {
    /// A burst ends after this long without a new change...
    pub quiet: Duration,
    /// ...or this long after it began, whichever comes first.
    pub max: Duration,
}

impl Default for Debounce {
    fn default() -> Self {
        Debounce {
            quiet: Duration::from_millis(10),
            max: Duration::from_millis(100),
        }
    }
}

#[derive(Clone)]
pub struct Mirror {
    pub state: Arc<RwLock<MirrorState>>,
    changes: broadcast::Sender<Changes>,
    /// The revision of the first full listing; 0 until the mirror can be trusted.
    ready: watch::Receiver<u64>,
}

impl Mirror {
    /// Starts following the store; the mirror is ready once it has listed everything.
    pub fn start(node: StoreNode, debounce: Debounce, stop: watch::Receiver<bool>) -> Mirror {
        let state = Arc::new(RwLock::new(MirrorState::default()));
        let (changes, _) = broadcast::channel(1024);
        let (ready_tx, ready) = watch::channel(0);
        let mirror = Mirror {
            state: state.clone(),
            changes: changes.clone(),
            ready,
        };
        tokio::spawn(follow(node, state, changes, ready_tx, debounce, stop));
        mirror
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Changes> {
        self.changes.subscribe()
    }

    /// Waits for the first full listing.
    pub async fn ready(&self) {
        let mut r = self.ready.clone();
        let _ = r.wait_for(|rev| *rev > 0).await;
    }

    pub fn read(&self) -> std::sync::RwLockReadGuard<'_, MirrorState> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }
}

fn write(state: &RwLock<MirrorState>) -> std::sync::RwLockWriteGuard<'_, MirrorState> {
    state.write().unwrap_or_else(|p| p.into_inner())
}

/// Lists each prefix of the view space; the revision is the oldest of the listings, so a
/// watch from just after it misses nothing (it may repeat a change a later listing already
/// holds, which is harmless: the same key at the same revision).
async fn list(node: &StoreNode) -> Option<(u64, BTreeMap<String, Entry>)> {
    let mut items = BTreeMap::new();
    let mut revision = u64::MAX;
    for prefix in VIEW_PREFIXES {
        let (rev, kvs, _) = match node.range(prefix.as_bytes(), true, 0, false).await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, "discovery: listing the store");
                return None;
            }
        };
        revision = revision.min(rev);
        items.extend(kvs.into_iter().filter_map(|kv| {
            let key = String::from_utf8(kv.key).ok()?;
            Some((
                key,
                Entry {
                    revision: kv.mod_revision,
                    value: Bytes::from(kv.value),
                },
            ))
        }));
    }
    Some((revision, items))
}

/// Lists, then watches from just after the listing. Whenever the watch breaks (compaction
/// below us, a restart of the store) it lists again and announces a resync, so every stream
/// re-diffs against the new truth.
async fn follow(
    node: StoreNode,
    state: Arc<RwLock<MirrorState>>,
    changes: broadcast::Sender<Changes>,
    ready: watch::Sender<u64>,
    debounce: Debounce,
    mut stop: watch::Receiver<bool>,
) {
    let mut retry = Duration::from_millis(50);
    loop {
        if *stop.borrow() {
            return;
        }
        let listed = list(&node).await;
        let Some((revision, items)) = listed else {
            tokio::select! {
                _ = sleep(retry) => {}
                _ = stop.changed() => return,
            }
            retry = (retry * 2).min(Duration::from_secs(2));
            continue;
        };
        retry = Duration::from_millis(50);
        {
            let mut s = write(&state);
            s.items = items;
            s.revision = revision.max(1);
        }
        let _ = changes.send(Changes {
            revision: revision.max(1),
            keys: Arc::new(Vec::new()),
            resync: true,
        });
        ready.send_replace(revision.max(1));
        tracing::info!(revision, "discovery: views listed");

        // One watch per prefix, so the store's other writes (node status, raw keys) never
        // reach the mirror. The prefixes share no key, so their events need no common order.
        let feeds: Result<Vec<_>, _> = VIEW_PREFIXES
            .iter()
            .map(|p| node.watch(*p, revision + 1))
            .collect();
        let mut feed = match feeds {
            Ok(f) => futures::stream::select_all(f),
            Err(e) => {
                tracing::warn!(error = %e, "discovery: watching the store");
                sleep(retry).await;
                continue;
            }
        };
        // One burst at a time: take the first update, then more until quiet or max.
        'watching: loop {
            let first = tokio::select! {
                u = feed.next() => u,
                _ = stop.changed() => return,
            };
            let mut burst = Vec::new();
            let mut broken = false;
            match first {
                Some(WatchUpdate::Events(events)) => burst.extend(events),
                Some(WatchUpdate::Compacted { compact_revision }) => {
                    tracing::warn!(
                        compact_revision,
                        "discovery: watch compacted, listing again"
                    );
                    broken = true;
                }
                None => broken = true,
            }
            if !broken {
                let hard = Instant::now() + debounce.max;
                loop {
                    let until = (Instant::now() + debounce.quiet).min(hard);
                    match timeout_at(until, feed.next()).await {
                        Err(_) => break,
                        Ok(Some(WatchUpdate::Events(events))) => burst.extend(events),
                        Ok(_) => {
                            broken = true;
                            break;
                        }
                    }
                    if Instant::now() >= hard {
                        break;
                    }
                }
            }
            if !burst.is_empty() {
                let mut keys = Vec::new();
                let mut last = 0;
                {
                    let mut s = write(&state);
                    for e in burst {
                        last = last.max(e.revision());
                        let Ok(key) = String::from_utf8(e.kv.key) else {
                            continue;
                        };
                        if !in_view_space(&key) {
                            continue;
                        }
                        match e.kind {
                            EventKind::Put => {
                                s.items.insert(
                                    key.clone(),
                                    Entry {
                                        revision: e.kv.mod_revision,
                                        value: Bytes::from(e.kv.value),
                                    },
                                );
                            }
                            EventKind::Delete => {
                                s.items.remove(&key);
                            }
                        }
                        keys.push(key);
                    }
                    s.revision = s.revision.max(last);
                }
                if !keys.is_empty() {
                    keys.sort();
                    keys.dedup();
                    let _ = changes.send(Changes {
                        revision: last,
                        keys: Arc::new(keys),
                        resync: false,
                    });
                }
            }
            if broken {
                break 'watching;
            }
        }
        if *stop.borrow() {
            return;
        }
        sleep(retry).await;
    }
}

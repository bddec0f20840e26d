//! Watches: every event under a prefix from a revision on, in order, exactly once.
//!
//! A watcher first reads the kept history, then follows what the state machine
//! publishes as it applies. It subscribes before it reads, and skips anything at or
//! below the last revision it delivered, so nothing falls between the two and nothing
//! is sent twice. A watcher that falls behind the live feed goes back to the history.
//!
//! The hub hands each watcher only the events under its prefix: a write elsewhere in the
//! keyspace wakes no watcher, which on a busy store is most writes for most watchers.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

use crate::state_machine::{Compacted, StateView};
use crate::types::Event;

/// How many events a catch-up read takes from the history at once.
const HISTORY_PAGE: usize = 1024;

#[derive(Debug)]
enum Applied {
    Events(Vec<Event>),
    /// A snapshot replaced the state: history up to `compact_revision` is gone.
    Reset {
        compact_revision: u64,
    },
}

/// Batches a watcher may have queued before it counts as behind and goes back to the
/// history.
const QUEUED_BATCHES: usize = 1024;

/// One watcher as the hub sees it.
struct Subscriber {
    prefix: Vec<u8>,
    queue: mpsc::Sender<Applied>,
    /// Set when a batch did not fit in the queue; until the watcher has caught up from the
    /// history and cleared it, nothing more is queued, so nothing newer can overtake the
    /// dropped batch.
    behind: Arc<AtomicBool>,
}

impl Subscriber {
    /// Queues `applied` unless the watcher is behind; false once the watcher has gone.
    fn offer(&self, applied: Applied) -> bool {
        match self.queue.try_send(applied) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                self.behind.store(true, Ordering::Release);
                true
            }
            Err(TrySendError::Closed(_)) => false,
        }
    }
}

/// Where the state machine announces what it applied.
pub struct WatchHub {
    subscribers: Mutex<Vec<Subscriber>>,
    revision: watch::Sender<u64>,
    /// Set when the server stops: every watch ends so its client resumes elsewhere.
    closed: watch::Sender<bool>,
}

impl Default for WatchHub {
    fn default() -> Self {
        WatchHub {
            subscribers: Mutex::new(Vec::new()),
            revision: watch::channel(0).0,
            closed: watch::channel(false).0,
        }
    }
}

impl WatchHub {
    pub(crate) fn set_revision(&self, revision: u64) {
        self.revision.send_replace(revision);
    }

    fn subscribers(&self) -> std::sync::MutexGuard<'_, Vec<Subscriber>> {
        self.subscribers.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn subscribe(&self, prefix: Vec<u8>) -> (mpsc::Receiver<Applied>, Arc<AtomicBool>) {
        let (queue, rx) = mpsc::channel(QUEUED_BATCHES);
        let behind = Arc::new(AtomicBool::new(false));
        self.subscribers().push(Subscriber {
            prefix,
            queue,
            behind: behind.clone(),
        });
        (rx, behind)
    }

    pub(crate) fn publish(&self, events: Vec<Event>, revision: u64) {
        if !events.is_empty() {
            self.subscribers().retain(|s| {
                if s.queue.is_closed() {
                    return false;
                }
                if s.behind.load(Ordering::Acquire) {
                    return true;
                }
                let mine: Vec<Event> = events
                    .iter()
                    .filter(|e| e.kv.key.starts_with(&s.prefix))
                    .cloned()
                    .collect();
                mine.is_empty() || s.offer(Applied::Events(mine))
            });
        }
        self.revision.send_if_modified(|r| {
            let changed = *r != revision;
            *r = revision;
            changed
        });
    }

    pub(crate) fn reset(&self, revision: u64, compact_revision: u64) {
        self.subscribers().retain(|s| {
            s.behind.load(Ordering::Acquire) || s.offer(Applied::Reset { compact_revision })
        });
        self.revision.send_replace(revision);
    }

    pub(crate) fn close(&self) {
        self.closed.send_replace(true);
    }

    /// The revision of the newest applied write on this server, as it changes.
    pub fn revision(&self) -> watch::Receiver<u64> {
        self.revision.subscribe()
    }
}

/// What a watch delivers: a batch of events in revision order, or the news that the
/// requested revision is older than the kept history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchUpdate {
    Events(Vec<Event>),
    Compacted { compact_revision: u64 },
}

/// Starts a watch on this server's state. `from_revision == 0` means "from now on".
pub fn start(
    view: StateView,
    hub: Arc<WatchHub>,
    prefix: Vec<u8>,
    from_revision: u64,
) -> ReceiverStream<WatchUpdate> {
    let (tx, rx) = mpsc::channel(64);
    let (mut feed, behind) = hub.subscribe(prefix.clone());
    let mut closed = hub.closed.subscribe();
    let mut next = if from_revision == 0 {
        *hub.revision.borrow() + 1
    } else {
        from_revision
    };
    tokio::spawn(async move {
        if *closed.borrow_and_update() {
            return;
        }
        'catch_up: loop {
            loop {
                let page = {
                    let view = view.clone();
                    let prefix = prefix.clone();
                    tokio::task::spawn_blocking(move || view.history(&prefix, next, HISTORY_PAGE))
                        .await
                };
                let events = match page {
                    Ok(Ok(Ok(events))) => events,
                    Ok(Ok(Err(Compacted { compact_revision }))) => {
                        let _ = tx.send(WatchUpdate::Compacted { compact_revision }).await;
                        return;
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "watch could not read history; ending the watch");
                        return;
                    }
                    Err(_) => return,
                };
                let Some(last) = events.last().map(Event::revision) else {
                    break;
                };
                next = last + 1;
                if tx.send(WatchUpdate::Events(events)).await.is_err() {
                    return;
                }
            }
            loop {
                let received = tokio::select! {
                    r = feed.recv() => r,
                    () = tx.closed() => return,
                    _ = closed.changed() => return,
                };
                match received {
                    Some(Applied::Events(events)) => {
                        let Some(newest) = events.iter().map(Event::revision).max() else {
                            continue;
                        };
                        // Events the history already delivered are skipped.
                        let batch: Vec<Event> = events
                            .into_iter()
                            .filter(|e| e.revision() >= next)
                            .collect();
                        next = next.max(newest + 1);
                        if !batch.is_empty() && tx.send(WatchUpdate::Events(batch)).await.is_err() {
                            return;
                        }
                    }
                    Some(Applied::Reset { compact_revision }) => {
                        if next <= compact_revision {
                            let _ = tx.send(WatchUpdate::Compacted { compact_revision }).await;
                            return;
                        }
                    }
                    None => return,
                }
                // Everything queued before the hub stopped queueing is delivered: clear the
                // mark first, so what is published from now on is queued, then read the
                // history, which holds everything in between.
                if feed.is_empty() && behind.swap(false, Ordering::AcqRel) {
                    continue 'catch_up;
                }
            }
        }
    });
    ReceiverStream::new(rx)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures::StreamExt;
    use openraft::storage::RaftStateMachine;
    use openraft::{CommittedLeaderId, EntryPayload, LogId};

    use super::*;
    use crate::state_machine::{HistoryRetention, StateMachine};
    use crate::types::{Command, Entry, Txn};

    fn entry(index: u64, key: String) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Command::Txn(Txn::put(key, b"v".to_vec()))),
        }
    }

    #[tokio::test]
    async fn a_watcher_that_falls_behind_gets_every_event_once_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(redb::Database::create(dir.path().join("state.redb")).unwrap());
        let hub = Arc::new(WatchHub::default());
        let mut sm = StateMachine::open(
            db,
            dir.path().join("snapshots"),
            hub.clone(),
            HistoryRetention::default(),
        )
        .unwrap();
        let mut stream = start(sm.view(), hub.clone(), b"w/".to_vec(), 0);

        // Nobody reads the stream while far more batches are applied than the watcher may
        // queue; every other write is outside its prefix.
        let applies = (QUEUED_BATCHES as u64 + 64) * 3;
        for index in 1..=applies {
            let key = if index % 2 == 0 {
                format!("w/{index}")
            } else {
                format!("x/{index}")
            };
            sm.apply([entry(index, key)]).await.unwrap();
        }
        assert!(
            hub.subscribers()
                .iter()
                .all(|s| s.behind.load(Ordering::Acquire)),
            "the watcher never fell behind; the test does not test the catch-up"
        );

        let wanted: Vec<String> = (1..=applies)
            .filter(|i| i % 2 == 0)
            .map(|i| format!("w/{i}"))
            .collect();
        let mut seen = Vec::new();
        let mut last_revision = 0;
        while seen.len() < wanted.len() {
            let update = tokio::time::timeout(Duration::from_secs(10), stream.next())
                .await
                .unwrap_or_else(|_| panic!("watch stalled after {} events", seen.len()))
                .expect("watch ended early");
            let WatchUpdate::Events(events) = update else {
                panic!("unexpected {update:?}");
            };
            for e in events {
                assert!(e.revision() > last_revision, "revisions out of order");
                last_revision = e.revision();
                seen.push(String::from_utf8(e.kv.key).unwrap());
            }
        }
        assert_eq!(seen, wanted);

        // Caught up, it follows the live feed again.
        sm.apply([entry(applies + 1, "w/last".into())])
            .await
            .unwrap();
        let update = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("live event after catching up")
            .expect("watch ended early");
        let WatchUpdate::Events(events) = update else {
            panic!("unexpected {update:?}");
        };
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].kv.key, b"w/last");
    }
}

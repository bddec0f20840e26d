//! Watches: every event under a prefix from a revision on, in order, exactly once.
//!
//! A watcher first reads the kept history, then follows what the state machine
//! publishes as it applies. It subscribes before it reads, and skips anything at or
//! below the last revision it delivered, so nothing falls between the two and nothing
//! is sent twice. A watcher that falls behind the live feed goes back to the history.

use std::sync::Arc;

use tokio::sync::{broadcast, mpsc, watch};
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

/// Where the state machine announces what it applied.
pub struct WatchHub {
    feed: broadcast::Sender<Arc<Applied>>,
    revision: watch::Sender<u64>,
    /// Set when the server stops: every watch ends so its client resumes elsewhere.
    closed: watch::Sender<bool>,
}

impl Default for WatchHub {
    fn default() -> Self {
        WatchHub {
            feed: broadcast::channel(4096).0,
            revision: watch::channel(0).0,
            closed: watch::channel(false).0,
        }
    }
}

impl WatchHub {
    pub(crate) fn set_revision(&self, revision: u64) {
        self.revision.send_replace(revision);
    }

    pub(crate) fn publish(&self, events: Vec<Event>, revision: u64) {
        if !events.is_empty() {
            let _ = self.feed.send(Arc::new(Applied::Events(events)));
        }
        self.revision.send_if_modified(|r| {
            let changed = *r != revision;
            *r = revision;
            changed
        });
    }

    pub(crate) fn reset(&self, revision: u64, compact_revision: u64) {
        let _ = self
            .feed
            .send(Arc::new(Applied::Reset { compact_revision }));
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
    let mut feed = hub.feed.subscribe();
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
                    Ok(applied) => match &*applied {
                        Applied::Events(events) => {
                            let Some(newest) = events.iter().map(Event::revision).max() else {
                                continue;
                            };
                            let batch: Vec<Event> = events
                                .iter()
                                .filter(|e| e.revision() >= next && e.kv.key.starts_with(&prefix))
                                .cloned()
                                .collect();
                            next = next.max(newest + 1);
                            if !batch.is_empty()
                                && tx.send(WatchUpdate::Events(batch)).await.is_err()
                            {
                                return;
                            }
                        }
                        Applied::Reset { compact_revision } => {
                            if next <= *compact_revision {
                                let _ = tx
                                    .send(WatchUpdate::Compacted {
                                        compact_revision: *compact_revision,
                                    })
                                    .await;
                                return;
                            }
                        }
                    },
                    Err(broadcast::error::RecvError::Lagged(_)) => continue 'catch_up,
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        }
    });
    ReceiverStream::new(rx)
}

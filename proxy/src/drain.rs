//! Graceful drain: stop accepting, let in-flight work finish, cut what is left at the
//! deadline.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[derive(Clone, Default)]
pub struct Drain {
    draining: CancellationToken,
    killed: CancellationToken,
    tracker: TaskTracker,
}

impl Drain {
    /// A connection's task, counted until it ends, to be run wherever the caller chooses
    /// (a worker thread).
    pub fn track<F>(&self, fut: F) -> impl Future<Output = ()> + Send + 'static
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let killed = self.killed.clone();
        self.tracker.track_future(async move {
            tokio::select! {
                _ = fut => {}
                _ = killed.cancelled() => {}
            }
        })
    }

    pub fn is_draining(&self) -> bool {
        self.draining.is_cancelled()
    }

    /// Resolves when a drain starts: connections then finish what they are doing and close.
    pub fn draining(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.draining.cancelled()
    }

    pub fn draining_token(&self) -> CancellationToken {
        self.draining.clone()
    }

    /// Starts draining and waits for connections up to `timeout`; returns how many were
    /// still open and got cut.
    pub async fn drain(&self, timeout: Duration) -> usize {
        self.draining.cancel();
        self.tracker.close();
        if tokio::time::timeout(timeout, self.tracker.wait())
            .await
            .is_err()
        {
            let left = self.tracker.len();
            self.killed.cancel();
            self.tracker.wait().await;
            return left;
        }
        0
    }
}

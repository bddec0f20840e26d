//! Graceful drain: stop accepting, let in-flight work finish, cut what is left at the
//! deadline.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use futures::task::AtomicWaker;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
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
        let killed = Cancelled::new(&self.killed);
        self.tracker.track_future(async move {
            tokio::select! {
                biased;
                _ = fut => {}
                _ = killed => {}
            }
        })
    }

    pub fn is_draining(&self) -> bool {
        self.draining.is_cancelled()
    }

    /// Resolves when a drain starts: connections then finish what they are doing and close.
    pub fn draining(&self) -> Cancelled {
        Cancelled::new(&self.draining)
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

pin_project_lite::pin_project! {
    /// Resolves once `token` is cancelled, like `token.cancelled_owned()`, but looks at the
    /// token only after the token has woken it. A connection's task waits on two of these
    /// beside its connection and is polled several times per request; polling the token's
    /// own future each time (a lock and a waker check) was 2 % of a request's instructions.
    pub struct Cancelled {
        #[pin]
        inner: WaitForCancellationFutureOwned,
        woken: Arc<WokenFlag>,
        waker: Waker,
    }
}

/// Set when the token wakes its future; wakes the task that waits on it.
struct WokenFlag {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for WokenFlag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl Cancelled {
    fn new(token: &CancellationToken) -> Self {
        let woken = Arc::new(WokenFlag {
            // The first poll registers with the token.
            woken: AtomicBool::new(true),
            task: AtomicWaker::new(),
        });
        Self {
            inner: token.clone().cancelled_owned(),
            waker: Waker::from(woken.clone()),
            woken,
        }
    }
}

impl Future for Cancelled {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        this.woken.task.register(cx.waker());
        if !this.woken.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        this.inner.poll(&mut Context::from_waker(this.waker))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn draining_resolves_when_a_drain_starts_and_not_before() {
        let drain = Drain::default();
        let mut waiting = Box::pin(drain.draining());
        let early = tokio::time::timeout(Duration::from_millis(50), waiting.as_mut()).await;
        assert!(early.is_err(), "resolved with no drain started");
        let started = drain.clone();
        tokio::spawn(async move { started.drain(Duration::from_secs(1)).await });
        tokio::time::timeout(Duration::from_secs(10), waiting)
            .await
            .expect("a started drain was not seen");
        // Asked for after the drain started, it resolves at once.
        tokio::time::timeout(Duration::from_secs(10), drain.draining())
            .await
            .expect("a drain already started was not seen");
    }
}

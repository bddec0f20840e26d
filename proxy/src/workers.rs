//! Worker threads, each running its own single-threaded runtime, the way Envoy runs its
//! workers: a downstream connection, every request on it and the upstream connections those
//! requests use all live on one thread. A request then never waits for another thread to be
//! woken, which on a loaded host costs more than the proxying itself.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::error::ProxyError;

type Job = Pin<Box<dyn Future<Output = ()> + Send>>;

/// How many tasks a worker runs before it looks for new socket events while tasks are still
/// queued (tokio's default is 61). A request is four or five task polls, so under load the
/// default took an `epoll_wait` every dozen requests and interleaved new events with
/// half-done ones; 200 is HAProxy's `tune.runqueue-depth`. Over HTTP/2 (h2load, 32 × 10
/// streams) it took 1–11 % (median 5 %) off the user CPU per request in all 16 interleaved
/// rounds against 61, and served more requests per second in 12 of them (median +5 %); a
/// worker with nothing queued still polls at once, so light load waits no longer.
const TASK_POLLS_PER_IO_POLL: u32 = 200;

thread_local! {
    static WORKER: Cell<Option<usize>> = const { Cell::new(None) };
}

/// The worker this code runs on, for state kept per worker (upstream pools). Code that runs
/// elsewhere (the admin listener, tests driving a cluster directly) shares worker 0's.
pub fn current() -> usize {
    WORKER.with(Cell::get).unwrap_or(0)
}

/// How many workers `concurrency` asks for: 0 means one per CPU, as in Istio's ProxyConfig.
pub fn resolve(concurrency: u32) -> usize {
    match concurrency {
        0 => std::thread::available_parallelism().map_or(1, usize::from),
        n => n as usize,
    }
}

pub struct Workers {
    queues: Vec<mpsc::UnboundedSender<Job>>,
    next: AtomicUsize,
    stop: CancellationToken,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Workers {
    /// Starts `count` workers (at least one).
    pub fn start(count: usize) -> Result<Self, ProxyError> {
        let stop = CancellationToken::new();
        let mut queues = Vec::new();
        let mut threads = Vec::new();
        for index in 0..count.max(1) {
            let (tx, mut rx) = mpsc::unbounded_channel::<Job>();
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .event_interval(TASK_POLLS_PER_IO_POLL)
                .build()
                .map_err(ProxyError::Workers)?;
            let stop = stop.clone();
            let thread = std::thread::Builder::new()
                .name(format!("proxy-worker-{index}"))
                .spawn(move || {
                    WORKER.with(|w| w.set(Some(index)));
                    runtime.block_on(async move {
                        // tokio's timer wakes the worker's own event loop (a write to its
                        // eventfd) whenever a new timer is earlier than every armed one, and
                        // every request arms one (hyper's header read timeout). A timer that
                        // is always armed and always the earliest keeps that from happening
                        // on every request; it costs one wakeup a second.
                        drop(tokio::spawn(async {
                            loop {
                                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                            }
                        }));
                        loop {
                            tokio::select! {
                                _ = stop.cancelled() => break,
                                job = rx.recv() => match job {
                                    Some(job) => drop(tokio::spawn(job)),
                                    None => break,
                                },
                            }
                        }
                    });
                    // Dropping the runtime ends what is still running on it: by now the
                    // drain has finished or given up on those connections.
                })
                .map_err(ProxyError::Workers)?;
            queues.push(tx);
            threads.push(thread);
        }
        Ok(Self {
            queues,
            next: AtomicUsize::new(0),
            stop,
            threads: Mutex::new(threads),
        })
    }

    pub fn count(&self) -> usize {
        self.queues.len()
    }

    /// Runs `job` on the next worker in turn. Whatever the job registers with a runtime
    /// (sockets, timers, tasks) must be made inside it, so that it lands on that worker.
    pub fn spawn<F>(&self, job: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.queues.len();
        if self.queues[i].send(Box::pin(job)).is_err() {
            tracing::warn!(worker = i, "proxy worker has stopped; connection dropped");
        }
    }

    /// Stops every worker and waits for its thread; what still runs on them is dropped.
    pub fn stop(&self) {
        self.stop.cancel();
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|p| p.into_inner()));
        for t in threads {
            // A worker that panicked has nothing left to clean up.
            let _ = t.join();
        }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

//! What every listener and connection shares: the current runtime (swapped atomically),
//! metrics and the drain signal.

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::drain::Drain;
use crate::metrics::Metrics;
use crate::runtime::Runtime;
use crate::workers::Workers;

pub struct Shared {
    runtime: ArcSwap<Runtime>,
    /// Serialises swaps so each new runtime is built from the one it replaces.
    swap_lock: std::sync::Mutex<()>,
    pub metrics: Metrics,
    pub drain: Drain,
    /// Where downstream connections are served.
    pub workers: Workers,
}

impl Shared {
    /// Starts the workers and the first runtime from `snapshot`.
    pub fn start(snapshot: Arc<crate::config::Snapshot>) -> Result<Self, crate::ProxyError> {
        let workers = Workers::start(crate::workers::resolve(snapshot.concurrency))?;
        let runtime = Runtime::new(snapshot, None, workers.count());
        Ok(Self {
            runtime: ArcSwap::from_pointee(runtime),
            swap_lock: std::sync::Mutex::new(()),
            metrics: Metrics::default(),
            drain: Drain::default(),
            workers,
        })
    }

    /// The runtime as of now. A request holds on to the one it started with, so a swap
    /// never changes the rules under a request in flight.
    pub fn runtime(&self) -> Arc<Runtime> {
        self.runtime.load_full()
    }

    pub fn swap(&self, snapshot: Arc<crate::config::Snapshot>) {
        let _guard = self.swap_lock.lock();
        let old = self.runtime.load_full();
        let new = Runtime::new(snapshot, Some(&old), self.workers.count());
        self.runtime.store(Arc::new(new));
        self.metrics.config_swaps.inc();
    }
}

/// One downstream connection, as the request path needs to know it.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub listener: String,
    pub peer: SocketAddr,
    pub local: SocketAddr,
    /// Where the client meant to go, when iptables redirected it.
    pub original_dst: Option<SocketAddr>,
}

//! How the CLI and the agent drive the proxy: start it from a snapshot, swap snapshots,
//! drain it.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use crate::config::Snapshot;
use crate::error::ProxyError;
use crate::listener::Listeners;
use crate::shared::Shared;

/// A running proxy. Cloning gives another handle to the same proxy.
#[derive(Clone)]
pub struct ProxyHandle {
    shared: Arc<Shared>,
    listeners: Arc<Listeners>,
    swap_lock: Arc<tokio::sync::Mutex<()>>,
}

impl ProxyHandle {
    /// Binds the snapshot's listeners and starts serving. Must run inside a tokio runtime.
    pub async fn start(snapshot: Snapshot) -> Result<Self, ProxyError> {
        let snapshot = Arc::new(snapshot);
        let listeners = Arc::new(Listeners::new());
        let bound = listeners.bind(&snapshot).await?;
        let shared = Arc::new(Shared::start(snapshot.clone())?);
        listeners.activate(bound, &snapshot, &shared);
        for w in &snapshot.warnings {
            tracing::warn!("{w}");
        }
        Ok(Self {
            shared,
            listeners,
            swap_lock: Arc::new(tokio::sync::Mutex::new(())),
        })
    }

    /// Swaps in a new snapshot atomically: requests already started finish under the rules
    /// they started with; every request after this returns sees the new ones. Open
    /// connections (HTTP/2, WebSocket, TCP) are not touched. If a new listener cannot bind,
    /// nothing changes.
    pub async fn swap(&self, snapshot: Snapshot) -> Result<(), ProxyError> {
        let _serial = self.swap_lock.lock().await;
        let snapshot = Arc::new(snapshot);
        let bound = self.listeners.bind(&snapshot).await?;
        self.shared.swap(snapshot.clone());
        self.listeners.activate(bound, &snapshot, &self.shared);
        for w in &snapshot.warnings {
            tracing::warn!("{w}");
        }
        tracing::info!(version = %snapshot.version, "config swapped");
        Ok(())
    }

    /// The snapshot in force.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.shared.runtime().snapshot.clone()
    }

    /// The address a listener actually bound (useful with port 0).
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.listeners.addr(name)
    }

    /// Stops accepting, lets in-flight work finish up to the snapshot's drain timeout, then
    /// cuts what is left. Returns how many connections had to be cut.
    pub async fn shutdown(&self) -> usize {
        let timeout = self.snapshot().drain_timeout.as_std();
        tracing::info!(?timeout, "draining");
        self.listeners.stop_traffic();
        let cut = self.shared.drain.drain(timeout).await;
        self.listeners.stop_all();
        self.shared.workers.stop();
        if cut > 0 {
            tracing::warn!(cut, "drain timeout: connections cut");
        }
        cut
    }
}

/// `trellis proxy --config FILE`: runs until `shutdown` resolves, then drains.
pub async fn run_from_file<F>(path: &Path, shutdown: F) -> Result<(), ProxyError>
where
    F: Future<Output = ()>,
{
    let snapshot = crate::config::load_file(path)?;
    let handle = ProxyHandle::start(snapshot).await?;
    shutdown.await;
    handle.shutdown().await;
    Ok(())
}

/// Resolves on SIGTERM or SIGINT: the usual `shutdown` for [`run_from_file`].
pub async fn shutdown_signal() -> Result<(), ProxyError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).map_err(ProxyError::Signal)?;
    let mut int = signal(SignalKind::interrupt()).map_err(ProxyError::Signal)?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

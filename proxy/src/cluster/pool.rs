//! Upstream connections: a connector that enforces `maxConnections` and the connect timeout,
//! and per-cluster HTTP/1.1 and HTTP/2 pools of connections per endpoint.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::http1::Http1Pool;
use super::http2::Http2Pool;
use crate::config::PoolLimits;

/// The connection limit was reached: answered with `503` and flag `UO`.
#[derive(Debug, thiserror::Error)]
#[error("upstream connection limit reached")]
pub struct PoolOverflow;

#[derive(Debug, thiserror::Error)]
#[error("connect timeout after {0:?}")]
pub struct ConnectTimeout(pub Duration);

/// Why a request got no response from the upstream.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("connecting to {authority}: {source}")]
    Connect {
        authority: String,
        #[source]
        source: io::Error,
    },
    #[error("HTTP handshake with {authority}: {source}")]
    Handshake {
        authority: String,
        #[source]
        source: hyper::Error,
    },
    #[error(transparent)]
    Http(#[from] hyper::Error),
}

impl SendError {
    /// Whether no connection could be had (refused, timed out, over `maxConnections`).
    pub fn is_connect(&self) -> bool {
        matches!(self, Self::Connect { .. } | Self::Handshake { .. })
    }
}

/// Opens TCP connections to the endpoint named in the URI's authority.
#[derive(Clone)]
pub struct Connector {
    connections: Option<Arc<Semaphore>>,
    connect_timeout: Duration,
}

impl Connector {
    pub fn new(limits: &PoolLimits, connections: Option<Arc<Semaphore>>) -> Self {
        Self {
            connections,
            connect_timeout: limits.connect_timeout.as_std(),
        }
    }

    /// Opens one connection, counted against the cluster's limit while it lives.
    pub async fn connect(&self, authority: &str) -> io::Result<Conn> {
        let permit = match &self.connections {
            Some(s) => Some(
                s.clone()
                    .try_acquire_owned()
                    .map_err(|_| io::Error::other(PoolOverflow))?,
            ),
            None => None,
        };
        let timeout = self.connect_timeout;
        let stream = tokio::time::timeout(timeout, TcpStream::connect(authority))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, ConnectTimeout(timeout)))??;
        // Requests are small and latency-bound; Nagle only adds delay.
        let _ = stream.set_nodelay(true);
        Ok(Conn {
            stream,
            _permit: permit,
        })
    }

    /// Opens a connection to `authority`, starts HTTP on it with `handshake`, and drives the
    /// connection on a task of its own; returns the handle requests are sent through.
    pub async fn open<S, C, H, F>(&self, authority: &str, handshake: H) -> Result<S, SendError>
    where
        H: FnOnce(TokioIo<Conn>) -> F,
        F: Future<Output = hyper::Result<(S, C)>>,
        C: Future<Output = hyper::Result<()>> + Send + 'static,
    {
        let conn = self
            .connect(authority)
            .await
            .map_err(|source| SendError::Connect {
                authority: authority.to_owned(),
                source,
            })?;
        let (sender, connection) =
            handshake(TokioIo::new(conn))
                .await
                .map_err(|source| SendError::Handshake {
                    authority: authority.to_owned(),
                    source,
                })?;
        let label = authority.to_owned();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(upstream = %label, error = %e, "upstream connection ended");
            }
        });
        Ok(sender)
    }
}

/// Connections kept open between requests, closed once unused for the idle timeout.
pub trait IdleConnections: Send + Sync + 'static {
    fn idle_timeout(&self) -> Duration;
    /// Closes connections unused for the idle timeout; returns whether any are left.
    fn close_idle(&self) -> bool;
}

/// Runs while `pool` keeps connections, closing each once it has been unused for the idle
/// timeout; ends with the pool, or when nothing is left (the pool starts it again).
pub async fn reap<P: IdleConnections>(pool: std::sync::Weak<P>) {
    let every = match pool.upgrade() {
        Some(p) => {
            (p.idle_timeout() / 4).clamp(Duration::from_millis(100), Duration::from_secs(10))
        }
        None => return,
    };
    loop {
        tokio::time::sleep(every).await;
        match pool.upgrade() {
            Some(p) if p.close_idle() => {}
            _ => return,
        }
    }
}

/// A connector with no connection limit and a 1 s connect timeout, for the pools' tests.
#[cfg(test)]
pub fn test_connector() -> Connector {
    Connector {
        connections: None,
        connect_timeout: Duration::from_secs(1),
    }
}

/// An upstream connection holding its slot of `maxConnections` until closed.
pub struct Conn {
    pub stream: TcpStream,
    _permit: Option<OwnedSemaphorePermit>,
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// One worker's connections of a cluster.
struct WorkerPool {
    http1: Arc<Http1Pool>,
    http2: Arc<Http2Pool>,
}

/// The connections of one cluster, pooled per worker thread so a request only ever uses
/// connections its own thread drives. Kept across snapshot swaps while the cluster's limits
/// stay the same, so a swap does not drop pooled connections. `maxConnections` counts the
/// connections of all workers together.
pub struct Pool {
    pub limits: PoolLimits,
    pub connector: Connector,
    per_worker: Vec<WorkerPool>,
}

impl Pool {
    pub fn new(limits: &PoolLimits, workers: usize) -> Self {
        let connections = limits
            .max_connections
            .map(|n| Arc::new(Semaphore::new(usize::try_from(n).unwrap_or(usize::MAX))));
        let connector = Connector::new(limits, connections);
        let idle = limits
            .idle_timeout
            .map(|d| d.as_std())
            .unwrap_or(Duration::from_secs(90));
        let per_worker = (0..workers.max(1))
            .map(|_| WorkerPool {
                http1: Arc::new(Http1Pool::new(
                    connector.clone(),
                    idle,
                    limits.max_requests_per_connection,
                )),
                http2: Arc::new(Http2Pool::new(
                    connector.clone(),
                    idle,
                    limits.max_requests_per_connection,
                )),
            })
            .collect();
        Self {
            limits: limits.clone(),
            connector,
            per_worker,
        }
    }

    pub fn workers(&self) -> usize {
        self.per_worker.len()
    }

    /// The HTTP/1.1 connections of the worker this runs on.
    pub fn http1(&self) -> &Arc<Http1Pool> {
        &self.per_worker[crate::workers::current() % self.per_worker.len()].http1
    }

    /// The HTTP/2 connections of the worker this runs on.
    pub fn http2(&self) -> &Arc<Http2Pool> {
        &self.per_worker[crate::workers::current() % self.per_worker.len()].http2
    }
}

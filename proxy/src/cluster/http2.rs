//! HTTP/2 upstream connections of one worker: one multiplexed connection per endpoint,
//! shared by every request to it, replaced when it closes or has served
//! `maxRequestsPerConnection` streams, closed once idle for the idle timeout.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

// Looked up on every request by keys from the proxy's own config, which need no defence
// against flooding: foldhash, not SipHash (3 % of the instructions of a request).
use foldhash::HashMap;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http2::{self, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::pool::{Connector, IdleConnections, SendError, reap};
use crate::body::Body;

struct Shared {
    sender: SendRequest<Body>,
    last_used: Instant,
    served: u32,
}

/// The HTTP/2 connections of one worker, keyed by the endpoint's `host:port`.
pub struct Http2Pool {
    connector: Connector,
    idle_timeout: Duration,
    max_requests: Option<u32>,
    connections: Mutex<Connections>,
}

#[derive(Default)]
struct Connections {
    by_authority: HashMap<String, Shared>,
    reaping: bool,
}

impl Http2Pool {
    pub fn new(connector: Connector, idle_timeout: Duration, max_requests: Option<u32>) -> Self {
        Self {
            connector,
            idle_timeout,
            max_requests,
            connections: Mutex::new(Connections::default()),
        }
    }

    /// Sends `req` (absolute URI) to `authority` on its shared connection, opening one if
    /// there is none. A request refused before it was sent (the connection was going away)
    /// is sent again on a new connection.
    ///
    /// Not an `async fn`: that would hold the request twice, as its argument and as the local
    /// a resend replaces.
    pub fn send<'a>(
        self: &'a Arc<Self>,
        authority: &'a str,
        req: Request<Body>,
    ) -> impl Future<Output = Result<Response<Incoming>, SendError>> + Send + 'a {
        let mut req = req;
        async move {
            let mut fresh = false;
            loop {
                let mut sender = match self.take_stream(authority) {
                    Some(sender) => sender,
                    None => {
                        fresh = true;
                        Box::pin(self.connect(authority)).await?
                    }
                };
                match sender.try_send_request(req).await {
                    Ok(resp) => return Ok(resp),
                    Err(mut e) => match e.take_message() {
                        Some(again) if !fresh => {
                            self.forget(authority);
                            req = again;
                        }
                        _ => return Err(SendError::Http(e.into_error())),
                    },
                }
            }
        }
    }

    /// A handle on the endpoint's connection for one more stream, counted against
    /// `maxRequestsPerConnection`.
    fn take_stream(&self, authority: &str) -> Option<SendRequest<Body>> {
        let mut conns = self.connections.lock().unwrap_or_else(|p| p.into_inner());
        let shared = conns.by_authority.get_mut(authority)?;
        if shared.sender.is_closed() {
            conns.by_authority.remove(authority);
            return None;
        }
        shared.served += 1;
        shared.last_used = Instant::now();
        let sender = shared.sender.clone();
        if self.max_requests.is_some_and(|max| shared.served >= max) {
            // This stream is its last; the next request opens a new connection, and this
            // one closes once its streams end.
            conns.by_authority.remove(authority);
        }
        Some(sender)
    }

    /// Stops handing out the endpoint's connection: it refused a stream as it went away.
    fn forget(&self, authority: &str) {
        let mut conns = self.connections.lock().unwrap_or_else(|p| p.into_inner());
        conns.by_authority.remove(authority);
    }

    async fn connect(self: &Arc<Self>, authority: &str) -> Result<SendRequest<Body>, SendError> {
        let sender = self
            .connector
            .open(authority, |io| {
                http2::Builder::new(TokioExecutor::new())
                    .timer(TokioTimer::new())
                    .keep_alive_interval(Duration::from_secs(30))
                    .keep_alive_timeout(Duration::from_secs(10))
                    .handshake(io)
            })
            .await?;
        let served = 1;
        let mut conns = self.connections.lock().unwrap_or_else(|p| p.into_inner());
        if self.max_requests.is_none_or(|max| served < max) {
            // Two requests that found no connection at once each open one; the later
            // becomes the shared one and the other closes when its stream ends.
            conns.by_authority.insert(
                authority.to_owned(),
                Shared {
                    sender: sender.clone(),
                    last_used: Instant::now(),
                    served,
                },
            );
        }
        if !conns.reaping
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            conns.reaping = true;
            runtime.spawn(reap(Arc::downgrade(self)));
        }
        Ok(sender)
    }

    #[cfg(test)]
    fn open_count(&self) -> usize {
        let conns = self.connections.lock().unwrap_or_else(|p| p.into_inner());
        conns.by_authority.len()
    }
}

impl IdleConnections for Http2Pool {
    fn idle_timeout(&self) -> Duration {
        self.idle_timeout
    }

    fn close_idle(&self) -> bool {
        let now = Instant::now();
        let mut conns = self.connections.lock().unwrap_or_else(|p| p.into_inner());
        conns.by_authority.retain(|_, s| {
            !s.sender.is_closed() && now.duration_since(s.last_used) < self.idle_timeout
        });
        let left = !conns.by_authority.is_empty();
        if !left {
            conns.reaping = false;
        }
        left
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::BodyExt;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    use hyper_util::server::conn::auto;
    use tokio::net::TcpListener;

    use super::*;

    /// An HTTP/2 upstream answering `ok`, counting connections.
    async fn upstream() -> (String, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (s, _) = listener.accept().await.unwrap();
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let svc = service_fn(|_req| async {
                        Ok::<_, std::convert::Infallible>(Response::new(crate::body::full("ok")))
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .http2_only()
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        (addr, accepted)
    }

    fn pool(idle: Duration, max_requests: Option<u32>) -> Arc<Http2Pool> {
        Arc::new(Http2Pool::new(
            super::super::pool::test_connector(),
            idle,
            max_requests,
        ))
    }

    async fn get(pool: &Arc<Http2Pool>, authority: &str) -> bytes::Bytes {
        let req = Request::builder()
            .uri(format!("http://{authority}/"))
            .version(http::Version::HTTP_2)
            .body(crate::body::empty())
            .unwrap();
        let resp = pool.send(authority, req).await.unwrap();
        resp.into_body().collect().await.unwrap().to_bytes()
    }

    #[tokio::test]
    async fn concurrent_requests_share_one_connection() {
        let (addr, accepted) = upstream().await;
        let pool = pool(Duration::from_secs(90), None);
        assert_eq!(get(&pool, &addr).await, "ok");
        let all = (0..20).map(|_| get(&pool, &addr));
        for body in futures::future::join_all(all).await {
            assert_eq!(body, "ok");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn max_requests_per_connection_opens_a_new_connection() {
        let (addr, accepted) = upstream().await;
        let pool = pool(Duration::from_secs(90), Some(2));
        for _ in 0..6 {
            assert_eq!(get(&pool, &addr).await, "ok");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn an_idle_connection_is_closed_after_the_idle_timeout() {
        let (addr, _) = upstream().await;
        let pool = pool(Duration::from_millis(200), None);
        assert_eq!(get(&pool, &addr).await, "ok");
        assert_eq!(pool.open_count(), 1);
        let deadline = Instant::now() + Duration::from_secs(10);
        while pool.open_count() > 0 {
            assert!(Instant::now() < deadline, "idle connection never closed");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

//! HTTP/1.1 upstream connections of one worker: an idle list per endpoint, a connection
//! handed to one request at a time and given back when its response has been read to the end.
//!
//! hyper-util's pooling client does the same for any protocol, but on every request it boxes a
//! 3 KiB future, spawns a task that waits to put the connection back, and races a checkout
//! against a connect; at a proxy's request rates that was a tenth of its CPU. A connection here
//! is driven by its own task as before; a request only pops, sends and pushes.

use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
// Looked up on every request by keys from the proxy's own config, which need no defence
// against flooding: foldhash, not SipHash (3 % of the instructions of a request).
use foldhash::HashMap;
use http::{Request, Response, StatusCode};
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, SendRequest};

use super::pool::{Connector, IdleConnections, SendError, reap};
use crate::body::Body;

struct Idle {
    sender: SendRequest<Body>,
    since: Instant,
    served: u32,
    /// The endpoint, made once per connection: shared, not copied, by each request on it.
    authority: Arc<str>,
}

/// The idle HTTP/1.1 connections of one worker, keyed by the endpoint's `host:port`.
pub struct Http1Pool {
    connector: Connector,
    idle_timeout: Duration,
    /// `maxRequestsPerConnection`: a connection that has served this many is closed.
    max_requests: Option<u32>,
    idle: Mutex<IdleLists>,
}

#[derive(Default)]
struct IdleLists {
    by_authority: HashMap<Arc<str>, Vec<Idle>>,
    /// Whether a task is closing connections idle past the timeout.
    reaping: bool,
}

impl Http1Pool {
    pub fn new(connector: Connector, idle_timeout: Duration, max_requests: Option<u32>) -> Self {
        Self {
            connector,
            idle_timeout,
            max_requests,
            idle: Mutex::new(IdleLists::default()),
        }
    }

    /// Sends `req` (origin-form URI, `Host` set) to `authority` on an idle connection or a new
    /// one. A request the upstream never saw because its idle connection was closing is sent
    /// again on another, as hyper-util's client does.
    ///
    /// Not an `async fn`: that would hold the request twice, as its argument and as the local
    /// a resend replaces.
    pub fn send<'a>(
        self: &'a Arc<Self>,
        authority: &'a str,
        req: Request<Body>,
    ) -> impl Future<Output = Result<Response<PooledBody>, SendError>> + Send + 'a {
        let mut req = req;
        async move {
            loop {
                let (mut lease, reused) = match self.checkout(authority) {
                    Some(lease) => (lease, true),
                    // Boxed: only a request that finds no idle connection carries its state.
                    None => (Box::pin(self.connect(authority)).await?, false),
                };
                let sender = lease
                    .sender
                    .as_mut()
                    .expect("a lease holds its sender until dropped");
                if reused && sender.ready().await.is_err() {
                    continue;
                }
                match sender.try_send_request(req).await {
                    Ok(resp) => {
                        lease.served += 1;
                        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
                            // The connection now belongs to the upgraded session.
                            lease.reusable = false;
                        }
                        let (parts, body) = resp.into_parts();
                        let body = PooledBody {
                            inner: body,
                            lease: Some(lease),
                        };
                        return Ok(Response::from_parts(parts, body));
                    }
                    Err(mut e) => match e.take_message() {
                        Some(again) if reused => {
                            lease.reusable = false;
                            req = again;
                        }
                        _ => {
                            lease.reusable = false;
                            return Err(SendError::Http(e.into_error()));
                        }
                    },
                }
            }
        }
    }

    fn checkout(self: &Arc<Self>, authority: &str) -> Option<Lease> {
        let now = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.by_authority.get_mut(authority)?;
        // Newest first: it is the one least likely to have been closed by the upstream, and
        // the ones left unused age out.
        while let Some(entry) = list.pop() {
            if entry.sender.is_closed() || now.duration_since(entry.since) >= self.idle_timeout {
                continue;
            }
            return Some(Lease {
                sender: Some(entry.sender),
                served: entry.served,
                reusable: true,
                authority: entry.authority,
                pool: Arc::downgrade(self),
            });
        }
        None
    }

    async fn connect(self: &Arc<Self>, authority: &str) -> Result<Lease, SendError> {
        let sender = self
            .connector
            .open(authority, |io| async move {
                // One buffer and one `write` per request head and small body, as on the
                // downstream side (`http::serve`).
                let (sender, connection) =
                    http1::Builder::new().writev(false).handshake(io).await?;
                Ok((sender, connection.with_upgrades()))
            })
            .await?;
        Ok(Lease {
            sender: Some(sender),
            served: 0,
            reusable: true,
            authority: Arc::from(authority),
            pool: Arc::downgrade(self),
        })
    }

    fn put_back(self: &Arc<Self>, authority: Arc<str>, sender: SendRequest<Body>, served: u32) {
        // By the time a response body has been read to its end, the connection's task (on
        // this same worker) has already asked for the next request, unless the request body
        // is still being sent: an upstream that answered early (a 401 to an upload). Such a
        // connection is let go rather than pooled, so no later request waits behind an
        // upload that may never finish.
        if sender.is_closed()
            || !sender.is_ready()
            || self.max_requests.is_some_and(|max| served >= max)
        {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let entry = Idle {
            sender,
            since: Instant::now(),
            served,
            authority,
        };
        match idle.by_authority.get_mut(&*entry.authority) {
            Some(list) => list.push(entry),
            None => {
                idle.by_authority
                    .insert(entry.authority.clone(), vec![entry]);
            }
        }
        if !idle.reaping
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            idle.reaping = true;
            runtime.spawn(reap(Arc::downgrade(self)));
        }
    }

    #[cfg(test)]
    fn idle_count(&self) -> usize {
        let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.by_authority.values().map(Vec::len).sum()
    }
}

impl IdleConnections for Http1Pool {
    fn idle_timeout(&self) -> Duration {
        self.idle_timeout
    }

    fn close_idle(&self) -> bool {
        let now = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.by_authority.retain(|_, list| {
            list.retain(|e| {
                !e.sender.is_closed() && now.duration_since(e.since) < self.idle_timeout
            });
            !list.is_empty()
        });
        let left = !idle.by_authority.is_empty();
        if !left {
            idle.reaping = false;
        }
        left
    }
}

/// A connection lent to one request.
struct Lease {
    sender: Option<SendRequest<Body>>,
    served: u32,
    reusable: bool,
    authority: Arc<str>,
    pool: Weak<Http1Pool>,
}

impl Lease {
    /// Gives the connection back for the next request; dropping it instead closes it.
    fn release(mut self) {
        if !self.reusable {
            return;
        }
        if let (Some(sender), Some(pool)) = (self.sender.take(), self.pool.upgrade()) {
            pool.put_back(self.authority, sender, self.served);
        }
    }
}

pin_project_lite::pin_project! {
    /// A response body from a pooled connection: the connection goes back to the pool once
    /// the body has been read to its end, and is closed if the body is dropped before that.
    pub struct PooledBody {
        #[pin]
        inner: Incoming,
        lease: Option<Lease>,
    }

    impl PinnedDrop for PooledBody {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(lease) = this.lease.take()
                && this.inner.is_end_stream()
            {
                lease.release();
            }
        }
    }
}

impl HttpBody for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        match &polled {
            Poll::Ready(None) => {
                if let Some(lease) = this.lease.take() {
                    lease.release();
                }
            }
            Poll::Ready(Some(Err(_))) => {
                this.lease.take();
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// An upstream that answers every request on a connection with `200 ok`, counting
    /// connections.
    async fn upstream() -> (String, Arc<std::sync::atomic::AtomicUsize>) {
        upstream_answering(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await
    }

    /// The same with `answer`; one that says `connection: close` is followed by closing.
    async fn upstream_answering(
        answer: &'static [u8],
    ) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let mut have = Vec::new();
                    loop {
                        let n = match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        have.extend_from_slice(&buf[..n]);
                        while let Some(end) = have.windows(4).position(|w| w == b"\r\n\r\n") {
                            have.drain(..end + 4);
                            if s.write_all(answer).await.is_err() {
                                return;
                            }
                            if answer.starts_with(b"HTTP/1.1 200 OK\r\nconnection: close") {
                                return;
                            }
                        }
                    }
                });
            }
        });
        (addr, accepted)
    }

    fn pool(idle: Duration, max_requests: Option<u32>) -> Arc<Http1Pool> {
        Arc::new(Http1Pool::new(
            super::super::pool::test_connector(),
            idle,
            max_requests,
        ))
    }

    fn get_request(authority: &str) -> Request<Body> {
        Request::builder()
            .uri("/")
            .header("host", authority)
            .body(crate::body::empty())
            .unwrap()
    }

    async fn get(pool: &Arc<Http1Pool>, authority: &str) -> Bytes {
        let req = get_request(authority);
        let resp = pool.send(authority, req).await.unwrap();
        resp.into_body().collect().await.unwrap().to_bytes()
    }

    #[tokio::test]
    async fn a_connection_serves_request_after_request() {
        let (addr, accepted) = upstream().await;
        let pool = pool(Duration::from_secs(90), None);
        for _ in 0..5 {
            assert_eq!(get(&pool, &addr).await, "ok");
        }
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_eq!(pool.idle_count(), 1);
    }

    #[tokio::test]
    async fn a_connection_answering_without_a_body_serves_request_after_request() {
        let (addr, accepted) = upstream_answering(b"HTTP/1.1 204 No Content\r\n\r\n").await;
        let pool = pool(Duration::from_secs(90), None);
        for _ in 0..5 {
            assert_eq!(get(&pool, &addr).await, "");
        }
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_eq!(pool.idle_count(), 1);
    }

    /// Reads a request head; false if the connection ended first.
    async fn read_head(s: &mut tokio::net::TcpStream) -> bool {
        let mut buf = vec![0u8; 4096];
        let mut have = Vec::new();
        while !have.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => have.extend_from_slice(&buf[..n]),
            }
        }
        true
    }

    /// An upstream that answers one request with a chunked body, each chunk sent when `go`
    /// hands it over, the body ended when `go` closes.
    async fn streaming_upstream(go: tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let mut go = go;
            let (mut s, _) = listener.accept().await.unwrap();
            if !read_head(&mut s).await {
                return;
            }
            s.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
                .await
                .unwrap();
            while let Some(chunk) = go.recv().await {
                let head = format!("{:x}\r\n", chunk.len());
                s.write_all(head.as_bytes()).await.unwrap();
                s.write_all(&chunk).await.unwrap();
                s.write_all(b"\r\n").await.unwrap();
            }
            s.write_all(b"0\r\n\r\n").await.unwrap();
            // Keeps the connection open, as a keep-alive upstream would.
            let _ = s.read(&mut [0u8; 64]).await;
        });
        addr
    }

    #[tokio::test]
    async fn a_body_arriving_after_its_head_is_read_as_it_comes() {
        let (go, rx) = tokio::sync::mpsc::unbounded_channel();
        let addr = streaming_upstream(rx).await;
        let pool = pool(Duration::from_secs(90), None);
        let req = get_request(&addr);
        let resp = tokio::time::timeout(Duration::from_secs(10), pool.send(&addr, req))
            .await
            .expect("no response head")
            .unwrap();
        let mut body = resp.into_body();
        // Each chunk is sent only after the one before has been read through the pool: a
        // body that waited for the whole response would stall here.
        for i in 0..3u8 {
            go.send(vec![b'a' + i; 100]).unwrap();
            let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
                .await
                .expect("a chunk sent by the upstream never arrived")
                .unwrap()
                .unwrap();
            assert_eq!(frame.into_data().unwrap(), vec![b'a' + i; 100]);
        }
        // A megabyte in one go: more than the connection can hand over at once.
        go.send(vec![b'z'; 1 << 20]).unwrap();
        drop(go);
        let rest = tokio::time::timeout(Duration::from_secs(10), body.collect())
            .await
            .expect("the rest of the body never arrived")
            .unwrap()
            .to_bytes();
        assert_eq!(rest.len(), 1 << 20);
        assert_eq!(
            pool.idle_count(),
            1,
            "the connection goes back once the body has ended"
        );
    }

    #[tokio::test]
    async fn an_idle_connection_the_upstream_closed_is_not_lent() {
        // Answers one request per connection and closes it without saying so.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = accepted.clone();
        let (closed_tx, mut closed_rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let closed = closed_tx.clone();
                tokio::spawn(async move {
                    if !read_head(&mut s).await {
                        return;
                    }
                    let _ = s
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                        .await;
                    drop(s);
                    let _ = closed.send(());
                });
            }
        });
        let pool = pool(Duration::from_secs(90), None);
        for _ in 0..3 {
            assert_eq!(get(&pool, &addr).await, "ok");
            tokio::time::timeout(Duration::from_secs(10), closed_rx.recv())
                .await
                .expect("upstream never closed its connection");
        }
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn max_requests_per_connection_opens_a_new_connection() {
        let (addr, accepted) = upstream().await;
        let pool = pool(Duration::from_secs(90), Some(2));
        for _ in 0..5 {
            assert_eq!(get(&pool, &addr).await, "ok");
        }
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn an_upstream_closing_after_each_response_gets_a_new_connection_each_time() {
        let (addr, accepted) = upstream_answering(
            b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok",
        )
        .await;
        let pool = pool(Duration::from_secs(90), None);
        for _ in 0..5 {
            assert_eq!(get(&pool, &addr).await, "ok");
        }
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 5);
    }

    #[tokio::test]
    async fn a_connection_still_sending_an_upload_is_not_lent_again() {
        let (addr, accepted) =
            upstream_answering(b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\n\r\n").await;
        let pool = pool(Duration::from_secs(90), None);
        // An upload the client never finishes; the upstream answers before reading it.
        let (mut tx, rx) = futures::channel::mpsc::channel::<
            Result<hyper::body::Frame<Bytes>, crate::body::BoxError>,
        >(1);
        tx.try_send(Ok(hyper::body::Frame::data(Bytes::from_static(b"part"))))
            .unwrap();
        let upload = Request::builder()
            .method("POST")
            .uri("/")
            .header("host", &addr)
            .body(http_body_util::StreamBody::new(rx).boxed())
            .unwrap();
        let resp = pool.send(&addr, upload).await.unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        drop(resp);
        assert_eq!(pool.idle_count(), 0);
        let next = get_request(&addr);
        let resp = tokio::time::timeout(Duration::from_secs(10), pool.send(&addr, next))
            .await
            .expect("a request waited behind an unfinished upload")
            .unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 2);
        drop(tx);
    }

    #[tokio::test]
    async fn a_body_dropped_unread_closes_its_connection() {
        let (addr, accepted) = upstream().await;
        let pool = pool(Duration::from_secs(90), None);
        let req = get_request(&addr);
        let resp = pool.send(&addr, req).await.unwrap();
        drop(resp);
        assert_eq!(pool.idle_count(), 0);
        assert_eq!(get(&pool, &addr).await, "ok");
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn idle_connections_close_after_the_idle_timeout() {
        let (addr, _) = upstream().await;
        let pool = pool(Duration::from_millis(200), None);
        assert_eq!(get(&pool, &addr).await, "ok");
        assert_eq!(pool.idle_count(), 1);
        let deadline = Instant::now() + Duration::from_secs(10);
        while pool.idle_count() > 0 {
            assert!(Instant::now() < deadline, "idle connection never closed");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

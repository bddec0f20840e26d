//! Real servers and clients for the proxy's tests: everything on 127.0.0.1, port 0, and every
//! wait bounded by a deadline that fails loudly.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use trellis_proxy::{ProxyConfig, ProxyHandle, compile};

pub const DEADLINE: Duration = Duration::from_secs(20);

/// Awaits `fut`, failing the test if it takes longer than the deadline.
pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(DEADLINE, fut).await {
        Ok(v) => v,
        Err(_) => panic!("deadline of {DEADLINE:?} passed waiting for: {what}"),
    }
}

/// Polls `check` until it holds, failing loudly at the deadline.
pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    within(what, async {
        while !check() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
}

pub type Handler = Arc<
    dyn Fn(
            Request<Incoming>,
        ) -> std::pin::Pin<Box<dyn Future<Output = Response<Full<Bytes>>> + Send>>
        + Send
        + Sync,
>;

/// An upstream that holds every request until the test releases it: its address, the
/// release (one `notify_one` per request) and how many requests have arrived.
pub async fn serve_held(
    body: &'static str,
) -> (SocketAddr, Arc<tokio::sync::Notify>, Arc<AtomicUsize>) {
    let release = Arc::new(tokio::sync::Notify::new());
    let arrived = Arc::new(AtomicUsize::new(0));
    let (rel, arr) = (release.clone(), arrived.clone());
    let addr = serve_http(Arc::new(move |_req| {
        let rel = rel.clone();
        arr.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            rel.notified().await;
            Response::new(Full::new(Bytes::from(body)))
        })
    }))
    .await;
    (addr, release, arrived)
}

/// The whole body of a request an upstream received (empty if reading it failed).
pub async fn request_body(req: Request<Incoming>) -> Bytes {
    req.into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default()
}

/// An upstream that answers every request with the body it was sent.
pub async fn body_echo() -> SocketAddr {
    serve_http(Arc::new(|req| {
        Box::pin(async move { Response::new(Full::new(request_body(req).await)) })
    }))
    .await
}

/// An HTTP/1.1 + HTTP/2 (prior knowledge) server running `handler`, with upgrades.
pub async fn serve_http(handler: Handler) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind upstream");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let handler = handler.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let handler = handler.clone();
                    async move { Ok::<_, Infallible>(handler(req).await) }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

/// A named upstream: answers 200 with its name as the body and echoes what it saw.
pub struct Upstream {
    pub addr: SocketAddr,
    pub hits: Arc<AtomicUsize>,
    pub name: String,
}

impl Upstream {
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
    pub fn port(&self) -> u16 {
        self.addr.port()
    }
}

pub fn echo_response(name: &str, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(name.to_owned())));
    let h = resp.headers_mut();
    h.insert("x-upstream", name.parse().expect("name"));
    if let Ok(v) = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .parse()
    {
        h.insert("x-path", v);
    }
    if let Some(host) = req.headers().get("host") {
        h.insert("x-host", host.clone());
    }
    h.insert(
        "x-version",
        format!("{:?}", req.version()).parse().expect("version"),
    );
    for (k, v) in req.headers() {
        if k.as_str().starts_with("x-")
            && let Ok(name) =
                http::HeaderName::from_bytes(format!("x-req-{}", k.as_str()).as_bytes())
        {
            h.insert(name, v.clone());
        }
    }
    resp
}

pub async fn upstream(name: &str) -> Upstream {
    let hits = Arc::new(AtomicUsize::new(0));
    let h2 = hits.clone();
    let n = name.to_owned();
    let addr = serve_http(Arc::new(move |req| {
        h2.fetch_add(1, Ordering::SeqCst);
        let resp = echo_response(&n, &req);
        Box::pin(async move { resp })
    }))
    .await;
    Upstream {
        addr,
        hits,
        name: name.to_owned(),
    }
}

/// An upstream whose status for each request is chosen by `status(n)`, n counting from 0.
pub async fn upstream_with(
    name: &str,
    status: impl Fn(usize) -> u16 + Send + Sync + 'static,
) -> Upstream {
    let hits = Arc::new(AtomicUsize::new(0));
    let h2 = hits.clone();
    let n = name.to_owned();
    let status = Arc::new(status);
    let addr = serve_http(Arc::new(move |req| {
        let i = h2.fetch_add(1, Ordering::SeqCst);
        let mut resp = echo_response(&n, &req);
        *resp.status_mut() = StatusCode::from_u16(status(i)).expect("status");
        Box::pin(async move { resp })
    }))
    .await;
    Upstream {
        addr,
        hits,
        name: name.to_owned(),
    }
}

pub async fn start_proxy(yaml: &str) -> ProxyHandle {
    let config = ProxyConfig::from_text(Path::new("test.yaml"), yaml)
        .unwrap_or_else(|e| panic!("config: {e}"));
    let snapshot = compile(&config).unwrap_or_else(|e| panic!("compile: {e}"));
    ProxyHandle::start(snapshot).await.expect("start proxy")
}

pub fn snapshot(yaml: &str) -> trellis_proxy::Snapshot {
    let config = ProxyConfig::from_text(Path::new("test.yaml"), yaml)
        .unwrap_or_else(|e| panic!("config: {e}"));
    compile(&config).unwrap_or_else(|e| panic!("compile: {e}"))
}

pub fn addr(proxy: &ProxyHandle, listener: &str) -> SocketAddr {
    proxy
        .listener_addr(listener)
        .unwrap_or_else(|| panic!("listener {listener} is not bound"))
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
    pub fn flags(&self) -> &str {
        self.header("x-trellis-response-flags")
    }
}

pub type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

pub fn h2_client() -> HttpClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

pub async fn send(client: &HttpClient, req: Request<Full<Bytes>>) -> Reply {
    within("response", async {
        let resp = client.request(req).await.expect("request failed");
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.expect("response body").to_bytes();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    })
    .await
}

pub async fn get(client: &HttpClient, addr: SocketAddr, path: &str) -> Reply {
    get_with(client, addr, path, &[]).await
}

pub async fn get_with(
    client: &HttpClient,
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Reply {
    let mut b = Request::get(format!("http://{addr}{path}"));
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    send(client, b.body(Full::new(Bytes::new())).expect("request")).await
}

/// Counts bodies of `n` GETs.
pub async fn tally(
    client: &HttpClient,
    addr: SocketAddr,
    path: &str,
    n: usize,
) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for _ in 0..n {
        let r = get(client, addr, path).await;
        *seen
            .entry(format!("{} {}", r.status.as_u16(), r.body))
            .or_insert(0) += 1;
    }
    seen
}

/// A TCP server that writes `banner` (if any) and then echoes.
pub async fn tcp_echo(banner: &'static [u8]) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                if !banner.is_empty() && s.write_all(banner).await.is_err() {
                    return;
                }
                let mut buf = [0u8; 4096];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    addr
}

/// Writes raw bytes and reads until the peer closes or `until` appears.
pub async fn raw_exchange(addr: SocketAddr, request: &[u8], until: &str) -> String {
    within("raw exchange", async {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(request).await.expect("write");
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    out.extend_from_slice(&buf[..n]);
                    if !until.is_empty() && String::from_utf8_lossy(&out).contains(until) {
                        break;
                    }
                }
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    })
    .await
}

/// The usual two-version service: `reviews` with subsets v1 and v2, and an upstream listener.
pub fn reviews_yaml(v1: &Upstream, v2: &Upstream, extra: &str) -> String {
    format!(
        r#"
listeners:
  admin: {{bind: "127.0.0.1:0"}}
  upstreams:
    - {{name: reviews, bind: "127.0.0.1:0", service: reviews, port: 9080}}
services:
  - name: reviews
    ports: [{{number: 9080, protocol: HTTP}}]
    endpoints:
      - {{address: 127.0.0.1, port: {p1}, labels: {{version: v1}}}}
      - {{address: 127.0.0.1, port: {p2}, labels: {{version: v2}}}}
resources:
  - apiVersion: networking.istio.io/v1
    kind: DestinationRule
    metadata: {{name: reviews}}
    spec:
      host: reviews
      subsets:
        - {{name: v1, labels: {{version: v1}}}}
        - {{name: v2, labels: {{version: v2}}}}
{extra}
"#,
        p1 = v1.port(),
        p2 = v2.port(),
    )
}

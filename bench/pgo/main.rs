//! pgo-train: the traffic a profile-guided build of `trellis` learns from.
//!
//! `deploy/build-release.sh` builds an instrumented `trellis`, runs this against it, merges
//! the profiles the processes write when they exit, and builds the release binary with them.
//! The mix is what a mesh node spends its time on: HTTP/1.1 and HTTP/2 through one and two
//! proxies, closed loop and at a fixed rate (where the workers sleep between requests),
//! routes with matches, rewrites, header changes, weighted subsets, retries and a rate limit,
//! gRPC, raw TCP; then a three-server cluster taking writes and `apply`s. Every phase must
//! succeed: a profile learnt from errors would optimise the error paths.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use trellis_bench::{Processes, grpc_channel, spawn};
use trellis_raft_store::pb as store_pb;

#[derive(Parser)]
#[command(
    about = "Drives an instrumented trellis through the traffic a release build is tuned for"
)]
struct Args {
    /// The (instrumented) trellis binary.
    #[arg(long)]
    trellis: Option<PathBuf>,
    /// Seconds of each closed-loop phase; the others take a fraction of it.
    #[arg(long, default_value_t = 6)]
    seconds: u64,
    /// Runs only the phases whose name contains this (to look into one of them).
    #[arg(long)]
    only: Option<String>,
    /// Where configs and logs go (default: a temporary directory, removed at the end).
    #[arg(long)]
    dir: Option<PathBuf>,
}

/// A page the size of nginx's default `index.html`.
const PAGE: &[u8] = &[b'x'; 615];

/// An upstream workload answering HTTP/1.1 and HTTP/2 (prior knowledge) on one port.
/// `/flaky…` fails every third request with 503, so retries have something to do.
async fn http_upstream(version: &'static str) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let calls = Arc::new(AtomicU64::new(0));
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            let calls = calls.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let calls = calls.clone();
                    async move {
                        let path = req.uri().path().to_owned();
                        let sent = match req.into_body().collect().await {
                            Ok(body) => body.to_bytes().len(),
                            Err(_) => 0,
                        };
                        let n = calls.fetch_add(1, Ordering::Relaxed);
                        let status = if path.starts_with("/flaky") && n.is_multiple_of(3) {
                            StatusCode::SERVICE_UNAVAILABLE
                        } else {
                            StatusCode::OK
                        };
                        let body = if sent > 0 {
                            Bytes::from(sent.to_string())
                        } else {
                            Bytes::from_static(PAGE)
                        };
                        Response::builder()
                            .status(status)
                            .header("content-type", "text/html")
                            .header("x-version", version)
                            .body(Full::new(body))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

async fn grpc_upstream() -> anyhow::Result<SocketAddr> {
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("shop.Cart", tonic_health::ServingStatus::Serving)
        .await;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await;
    });
    Ok(addr)
}

async fn tcp_echo() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = stream.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    Ok(addr)
}

/// The server-side proxy: an inbound listener in front of the `v1` workload.
fn inbound_config(workload: SocketAddr) -> String {
    format!(
        r#"node: {{name: web-1, namespace: default}}
drainTimeout: 5s
listeners:
  admin: {{bind: "127.0.0.1:0"}}
  inbound: {{bind: "127.0.0.1:0", service: web, address: "{workload}", protocol: HTTP}}
services:
  - name: web
    ports: [{{number: 80, protocol: HTTP}}]
"#
    )
}

/// The client-side proxy: `web` leads to the server-side proxy (two hops), `api` straight to
/// two versions of a workload over HTTP/2 with the routing an Istio user writes, `cart` to a
/// gRPC server, `echo` to a TCP echo.
fn outbound_config(
    inbound: u16,
    v1: SocketAddr,
    v2: SocketAddr,
    grpc: SocketAddr,
    echo: SocketAddr,
) -> String {
    let (v1p, v2p, grpcp, echop) = (v1.port(), v2.port(), grpc.port(), echo.port());
    format!(
        r#"node: {{name: client-1, namespace: default}}
drainTimeout: 5s
listeners:
  admin: {{bind: "127.0.0.1:0"}}
  upstreams:
    - {{name: web, bind: "127.0.0.1:0", service: web, port: 80}}
    - {{name: api, bind: "127.0.0.1:0", service: api, port: 80}}
    - {{name: cart, bind: "127.0.0.1:0", service: cart, port: 50051}}
    - {{name: echo, bind: "127.0.0.1:0", service: echo, port: 7}}
services:
  - name: web
    ports: [{{number: 80, protocol: HTTP}}]
    endpoints:
      - {{address: 127.0.0.1, port: {inbound}}}
  - name: api
    ports: [{{number: 80, protocol: HTTP2}}]
    endpoints:
      - {{address: 127.0.0.1, port: {v1p}, labels: {{version: v1}}}}
      - {{address: 127.0.0.1, port: {v2p}, labels: {{version: v2}}}}
  - name: cart
    ports: [{{number: 50051, protocol: GRPC}}]
    endpoints:
      - {{address: 127.0.0.1, port: {grpcp}}}
  - name: echo
    ports: [{{number: 7, protocol: TCP}}]
    endpoints:
      - {{address: 127.0.0.1, port: {echop}}}
resources:
  - apiVersion: networking.istio.io/v1
    kind: DestinationRule
    metadata: {{name: api}}
    spec:
      host: api
      trafficPolicy:
        connectionPool:
          tcp: {{maxConnections: 100}}
          http: {{http2MaxRequests: 1000, maxRetries: 3}}
        outlierDetection: {{consecutive5xxErrors: 50, interval: 10s, baseEjectionTime: 30s}}
      subsets:
        - {{name: v1, labels: {{version: v1}}}}
        - {{name: v2, labels: {{version: v2}}}}
  - apiVersion: networking.istio.io/v1
    kind: VirtualService
    metadata: {{name: api}}
    spec:
      hosts: [api]
      http:
        - match: [{{headers: {{end-user: {{exact: jason}}}}}}]
          route: [{{destination: {{host: api, subset: v2}}}}]
        - match: [{{uri: {{prefix: /flaky}}}}]
          route: [{{destination: {{host: api, subset: v1}}}}]
          retries: {{attempts: 3, perTryTimeout: 2s, retryOn: "5xx,reset,connect-failure"}}
        - match: [{{uri: {{prefix: /old/}}}}]
          rewrite: {{uri: /new/}}
          headers:
            request: {{set: {{x-rewritten: "1"}}, remove: [x-debug]}}
            response: {{add: {{x-served-by: trellis}}}}
          route: [{{destination: {{host: api, subset: v1}}}}]
        - route:
            - {{destination: {{host: api, subset: v1}}, weight: 80}}
            - {{destination: {{host: api, subset: v2}}, weight: 20}}
          timeout: 10s
  - apiVersion: trellis.dev/v1
    kind: RateLimit
    metadata: {{name: api}}
    spec: {{host: api, requestsPerUnit: 1000000, unit: SECOND}}
"#
    )
}

/// Starts `trellis proxy --config CONFIG` among `procs` (so it is stopped whatever happens
/// next), its listeners on ports the OS picks, and waits for its admin `/ready`. Returns the
/// ports of `listeners`, read from its `listening listener=NAME local=ADDR` log lines.
async fn start_proxy(
    bin: &Path,
    dir: &Path,
    name: &str,
    yaml: &str,
    listeners: &[&str],
    procs: &mut Processes,
) -> anyhow::Result<Vec<u16>> {
    let config = dir.join(format!("{name}.yaml"));
    std::fs::write(&config, yaml)?;
    let log = dir.join(format!("{name}.log"));
    let args = [
        "proxy".into(),
        "--config".into(),
        config.display().to_string(),
    ];
    procs.0.push(spawn(bin, &args, &log)?);
    let child = procs.0.last_mut().context("the proxy just started")?;
    let port = |child: &mut std::process::Child, listener: &str| {
        let key = format!("listener={listener}");
        trellis_bench::wait_for_line(&log, child, name, |line| {
            line.split_whitespace()
                .any(|w| w == key)
                .then(|| {
                    trellis_bench::field(line, "local")?
                        .parse::<SocketAddr>()
                        .ok()
                })
                .flatten()
                .map(|a| a.port())
        })
    };
    let admin = port(child, "admin")?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = raw_get(admin, "/ready").await
            && r.starts_with("HTTP/1.1 200")
        {
            break;
        }
        if let Ok(Some(status)) = child.try_wait() {
            bail!(
                "{name} exited ({status}) before it was ready; log in {}",
                log.display()
            );
        }
        if Instant::now() > deadline {
            bail!("{name} was not ready within 30 s; log in {}", log.display());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    listeners.iter().map(|l| port(child, l)).collect()
}

async fn raw_get(port: u16, path: &str) -> anyhow::Result<String> {
    let mut s = connect(port).await?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes())
        .await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    Ok(out)
}

/// Sends SIGTERM to every process of `procs` and waits for each to exit cleanly: a profile
/// is written only then. One still running 30 s later is killed, and the run fails.
fn stop_all(what: &str, procs: &mut Processes) -> anyhow::Result<()> {
    let unclean = procs.stop(Duration::from_secs(30));
    ensure!(
        unclean.is_empty(),
        "{what}: {}; their profiles are lost",
        unclean.join(", ")
    );
    Ok(())
}

/// Requests of one kind: what each sends, and how an answer counts.
#[derive(Clone, Copy)]
enum Mix {
    /// `GET /` and nothing else, as the benchmark's load tools send.
    Plain,
    /// The `api` routes in turn: weighted default, header match, rewrite, retries, a POST.
    Routes,
}

fn request(mix: Mix, n: u64) -> Request<Full<Bytes>> {
    let b = Request::builder()
        .header("host", "svc")
        .header("user-agent", "pgo-train");
    let (b, body) = match (mix, n % 5) {
        (Mix::Plain, _) | (Mix::Routes, 0) => (b.uri("/"), Bytes::new()),
        (Mix::Routes, 1) => (
            b.uri("/reviews/1").header("end-user", "jason"),
            Bytes::new(),
        ),
        (Mix::Routes, 2) => (b.uri("/old/page?x=1").header("x-debug", "1"), Bytes::new()),
        (Mix::Routes, 3) => (b.uri("/flaky/item"), Bytes::new()),
        (Mix::Routes, _) => (
            b.method("POST")
                .uri("/orders")
                .header("content-type", "application/json"),
            Bytes::from_static(br#"{"item": 12, "quantity": 3}"#),
        ),
    };
    b.body(Full::new(body)).expect("a valid request")
}

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    failed: AtomicU64,
    first_failure: std::sync::Mutex<Option<String>>,
}

impl Tally {
    fn count(&self, ok: bool) {
        if ok { &self.ok } else { &self.failed }.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts an HTTP exchange; the first failure is kept for the error message.
    fn exchange(&self, what: &str, answer: Result<StatusCode, String>) {
        // A retry budget may refuse a retry; the upstream's own 503 then reaches the client.
        let expected = |s: &StatusCode| {
            s.is_success() || (what.contains(" /flaky") && *s == StatusCode::SERVICE_UNAVAILABLE)
        };
        let ok = answer.as_ref().is_ok_and(expected);
        if !ok && let Ok(mut first) = self.first_failure.lock() {
            first.get_or_insert_with(|| format!("{what}: {answer:?}"));
        }
        self.count(ok);
    }
}

/// hyper's HTTP/1.1 and HTTP/2 senders, which share no trait.
trait SendRequest {
    fn send(
        &mut self,
        req: Request<Full<Bytes>>,
    ) -> impl Future<Output = hyper::Result<Response<Incoming>>>;
}

impl SendRequest for hyper::client::conn::http1::SendRequest<Full<Bytes>> {
    fn send(
        &mut self,
        req: Request<Full<Bytes>>,
    ) -> impl Future<Output = hyper::Result<Response<Incoming>>> {
        self.send_request(req)
    }
}

impl SendRequest for hyper::client::conn::http2::SendRequest<Full<Bytes>> {
    fn send(
        &mut self,
        req: Request<Full<Bytes>>,
    ) -> impl Future<Output = hyper::Result<Response<Incoming>>> {
        self.send_request(req)
    }
}

/// Sends one request and reads the whole answer.
async fn exchange(send: &mut impl SendRequest, tally: &Tally, req: Request<Full<Bytes>>) {
    let what = format!("{} {}", req.method(), req.uri());
    let answer = match send.send(req).await {
        Ok(r) => {
            let status = r.status();
            match r.into_body().collect().await {
                Ok(_) => Ok(status),
                Err(e) => Err(format!("body: {e}")),
            }
        }
        Err(e) => Err(e.to_string()),
    };
    tally.exchange(&what, answer);
}

/// A connection to one of the proxies' listeners, Nagle off as load tools have it.
async fn connect(port: u16) -> anyhow::Result<TcpStream> {
    let stream = TcpStream::connect(("127.0.0.1", port)).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Keeps `connections` HTTP/1.1 connections busy until `until`, one request in flight on
/// each; with `every`, each connection sends at most one request per period instead.
async fn http1_load(
    port: u16,
    connections: usize,
    mix: Mix,
    until: Instant,
    every: Option<Duration>,
    tally: Arc<Tally>,
) -> anyhow::Result<()> {
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..connections {
        let stream = connect(port).await?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let tally = tally.clone();
        tasks.spawn(async move {
            let mut tick = every.map(|p| {
                let mut t = tokio::time::interval(p);
                t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                t
            });
            let mut n = 0u64;
            while Instant::now() < until {
                if let Some(t) = &mut tick {
                    t.tick().await;
                }
                if send.ready().await.is_err() {
                    tally.count(false);
                    return;
                }
                exchange(&mut send, &tally, request(mix, n)).await;
                n += 1;
            }
        });
    }
    tasks.join_all().await;
    Ok(())
}

/// `connections` HTTP/2 connections (prior knowledge) with `streams` requests in flight on each.
async fn http2_load(
    port: u16,
    connections: usize,
    streams: usize,
    mix: Mix,
    until: Instant,
    tally: Arc<Tally>,
) -> anyhow::Result<()> {
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..connections {
        let stream = connect(port).await?;
        let (send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await?;
        tokio::spawn(conn);
        for s in 0..streams {
            let mut send = send.clone();
            let tally = tally.clone();
            tasks.spawn(async move {
                let mut n = s as u64;
                while Instant::now() < until {
                    exchange(&mut send, &tally, request(mix, n)).await;
                    if send.ready().await.is_err() {
                        return;
                    }
                    n += 1;
                }
            });
        }
    }
    tasks.join_all().await;
    Ok(())
}

async fn grpc_load(
    port: u16,
    clients: usize,
    until: Instant,
    tally: Arc<Tally>,
) -> anyhow::Result<()> {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..clients {
        let mut client = HealthClient::new(grpc_channel(&format!("127.0.0.1:{port}")).await?);
        let tally = tally.clone();
        tasks.spawn(async move {
            while Instant::now() < until {
                let r = client
                    .check(HealthCheckRequest {
                        service: "shop.Cart".into(),
                    })
                    .await;
                let answer = match r {
                    Ok(r) if r.get_ref().status == 1 => Ok(StatusCode::OK),
                    Ok(r) => Err(format!("status {}", r.get_ref().status)),
                    Err(e) => Err(e.to_string()),
                };
                tally.exchange("Check shop.Cart", answer);
            }
        });
    }
    tasks.join_all().await;
    Ok(())
}

async fn tcp_load(
    port: u16,
    connections: usize,
    until: Instant,
    tally: Arc<Tally>,
) -> anyhow::Result<()> {
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..connections {
        let mut stream = connect(port).await?;
        let tally = tally.clone();
        tasks.spawn(async move {
            let mut buf = [0u8; 512];
            while Instant::now() < until {
                let ok = stream.write_all(&buf).await.is_ok()
                    && stream.read_exact(&mut buf).await.is_ok();
                tally.count(ok);
                if !ok {
                    return;
                }
            }
        });
    }
    tasks.join_all().await;
    Ok(())
}

/// `--only`, for `phase`.
static ONLY: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();

/// Runs one phase and checks that nearly every exchange succeeded.
async fn phase<F>(name: &str, run: impl FnOnce(Arc<Tally>) -> F) -> anyhow::Result<()>
where
    F: Future<Output = anyhow::Result<()>>,
{
    if ONLY
        .get()
        .and_then(Option::as_deref)
        .is_some_and(|only| !name.contains(only))
    {
        return Ok(());
    }
    let tally = Arc::new(Tally::default());
    let started = Instant::now();
    run(tally.clone()).await.with_context(|| name.to_owned())?;
    let (ok, failed) = (
        tally.ok.load(Ordering::Relaxed),
        tally.failed.load(Ordering::Relaxed),
    );
    eprintln!(
        "{name:<40} {ok:>9} ok {failed:>5} failed  {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let first = tally
        .first_failure
        .lock()
        .ok()
        .and_then(|f| f.clone())
        .unwrap_or_default();
    ensure!(
        ok > 0 && failed * 1000 <= ok,
        "{name}: {ok} succeeded, {failed} failed; the first: {first}"
    );
    Ok(())
}

async fn train_proxies(bin: &Path, dir: &Path, seconds: u64) -> anyhow::Result<()> {
    let v1 = http_upstream("v1").await?;
    let v2 = http_upstream("v2").await?;
    let grpc = grpc_upstream().await?;
    let echo = tcp_echo().await?;
    let mut procs = Processes::default();
    let [inbound] = start_proxy(
        bin,
        dir,
        "server-side",
        &inbound_config(v1),
        &["inbound"],
        &mut procs,
    )
    .await?[..] else {
        bail!("the server-side proxy's inbound port");
    };
    let [web, api, cart, echo_port] = start_proxy(
        bin,
        dir,
        "client-side",
        &outbound_config(inbound, v1, v2, grpc, echo),
        &["web", "api", "cart", "echo"],
        &mut procs,
    )
    .await?[..] else {
        bail!("the client-side proxy's ports");
    };

    let full = Duration::from_secs(seconds);
    let half = full / 2;
    let at = |d: Duration| Instant::now() + d;
    phase("HTTP/1.1, 2 hops, 32 connections", |t| {
        http1_load(web, 32, Mix::Plain, at(full), None, t)
    })
    .await?;
    phase("HTTP/1.1, 1 hop, 32 connections", |t| {
        http1_load(inbound, 32, Mix::Plain, at(full), None, t)
    })
    .await?;
    phase("HTTP/2, 2 hops, 4 x 8 streams", |t| {
        http2_load(web, 4, 8, Mix::Plain, at(full), t)
    })
    .await?;
    phase("HTTP/2, 1 hop, 4 x 8 streams", |t| {
        http2_load(inbound, 4, 8, Mix::Plain, at(half), t)
    })
    .await?;
    phase("HTTP/1.1 routes to HTTP/2, 8 connections", |t| {
        http1_load(api, 8, Mix::Routes, at(full), None, t)
    })
    .await?;
    phase("HTTP/2 routes, 2 x 8 streams", |t| {
        http2_load(api, 2, 8, Mix::Routes, at(half), t)
    })
    .await?;
    phase("HTTP/1.1, 2 hops, 1,000 rps", |t| {
        http1_load(
            web,
            10,
            Mix::Plain,
            at(full),
            Some(Duration::from_millis(10)),
            t,
        )
    })
    .await?;
    phase("HTTP/1.1, 1 hop, 1,000 rps", |t| {
        http1_load(
            inbound,
            10,
            Mix::Plain,
            at(half),
            Some(Duration::from_millis(10)),
            t,
        )
    })
    .await?;
    phase("gRPC unary, 4 clients", |t| grpc_load(cart, 4, at(half), t)).await?;
    phase("TCP echo, 8 connections", |t| {
        tcp_load(echo_port, 8, at(half), t)
    })
    .await?;

    stop_all("the proxies", &mut procs)
}

async fn train_servers(bin: &Path, dir: &Path, seconds: u64) -> anyhow::Result<()> {
    let mut procs = Processes::default();
    let cluster = trellis_bench::start_trellis_cluster(bin, dir, &mut procs).await?;
    let leader = cluster
        .grpc
        .iter()
        .position(|a| *a == cluster.leader)
        .context("the leader is a member")?;
    let admin_port: u16 = cluster.admin[leader]
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .context("admin address")?;
    let until = Instant::now() + Duration::from_secs(seconds);
    phase("store puts, 16 clients", |tally| async move {
        let mut tasks = tokio::task::JoinSet::new();
        for c in 0..16u32 {
            let mut kv = store_pb::kv_client::KvClient::new(grpc_channel(&cluster.leader).await?);
            let tally = tally.clone();
            tasks.spawn(async move {
                let mut n = 0u32;
                while Instant::now() < until {
                    let r = kv
                        .put(store_pb::PutRequest {
                            key: format!("/train/{c}/{}", n % 1000).into_bytes(),
                            value: vec![b'v'; 256],
                        })
                        .await;
                    tally.count(r.is_ok());
                    n += 1;
                }
            });
        }
        tasks.join_all().await;
        Ok(())
    })
    .await?;
    let until = Instant::now() + Duration::from_secs(seconds) / 2;
    phase("apply VirtualService + DestinationRule", |tally| async move {
        let mut n = 0u64;
        while Instant::now() < until {
            let yaml = format!(
                "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: reviews-{}}}\nspec:\n  hosts: [reviews]\n  http:\n    - route:\n        - {{destination: {{host: reviews, subset: v1}}, weight: {}}}\n        - {{destination: {{host: reviews, subset: v2}}, weight: {}}}\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: reviews}}\nspec:\n  host: reviews\n  subsets:\n    - {{name: v1, labels: {{version: v1}}}}\n    - {{name: v2, labels: {{version: v2}}}}\n",
                n % 20,
                n % 100,
                100 - n % 100
            );
            tally.count(post(admin_port, "/v1/apply", &yaml).await?.is_success());
            n += 1;
        }
        Ok(())
    })
    .await?;
    stop_all("the servers", &mut procs)
}

async fn post(port: u16, path: &str, body: &str) -> anyhow::Result<StatusCode> {
    let stream = connect(port).await?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let r = send
        .send_request(
            Request::post(path)
                .header("host", "localhost")
                .body(Full::new(Bytes::from(body.to_owned())))?,
        )
        .await?;
    let status = r.status();
    r.into_body().collect().await?;
    Ok(status)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let bin = trellis_bench::trellis_bin(args.trellis.as_deref())?;
    let temp;
    let dir = match &args.dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d.clone()
        }
        None => {
            temp = tempfile::tempdir()?;
            temp.path().to_owned()
        }
    };
    ONLY.get_or_init(|| args.only.clone());
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        train_proxies(&bin, &dir, args.seconds).await?;
        train_servers(&bin, &dir, args.seconds).await
    })
}

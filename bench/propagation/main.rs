//! bench-propagation: a three-server Trellis cluster on loopback and N discovery streams
//! (as many agents would open), multiplexed over a few HTTP/2 connections from this one
//! process. Measures the time from a config write's acknowledgement to each stream
//! receiving it, for single writes and for a burst, and the servers' RSS per connected
//! stream. Prints one table.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Parser;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};
use trellis_api::discovery::discovery_client::DiscoveryClient;
use trellis_api::discovery::{
    Ack, AgentMessage, Hello, Pong, ServerMessage, agent_message, server_message,
};
use trellis_bench::{Processes, cpu_ticks};

#[derive(Parser)]
#[command(about = "How fast a config write reaches 1 to 10,000 discovery streams")]
struct Args {
    /// The trellis binary (default: the one built beside this benchmark).
    #[arg(long)]
    trellis: Option<PathBuf>,
    /// Stream counts to run, each against a fresh cluster.
    #[arg(long, value_delimiter = ',', default_value = "1,100,1000,10000")]
    streams: Vec<usize>,
    /// Single writes, one after another, each once every stream has it.
    #[arg(long, default_value_t = 20)]
    writes: usize,
    /// Pause after each single write has reached every stream, ms.
    #[arg(long, default_value_t = 200)]
    pause_ms: u64,
    /// Writes of the burst...
    #[arg(long, default_value_t = 100)]
    burst: usize,
    /// ...started evenly over this many ms.
    #[arg(long, default_value_t = 1000)]
    burst_ms: u64,
    /// Discovery streams sharing one HTTP/2 connection.
    #[arg(long, default_value_t = 100)]
    streams_per_connection: usize,
    /// Give up on a step (streams connecting, a write converging) after this many seconds.
    #[arg(long, default_value_t = 60)]
    timeout_secs: u64,
    /// Where the data dirs go (default: a temporary directory under /var/tmp, on disk).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Keep the data dirs and server logs after the run (their path is printed).
    #[arg(long)]
    keep: bool,
}

type Http = Client<HttpConnector, Full<Bytes>>;

fn http_client() -> Http {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new()).build(connector)
}

struct Cluster {
    procs: Processes,
    grpc: Vec<String>,
    /// The leader's admin address.
    leader_http: String,
}

impl Cluster {
    fn pids(&self) -> Vec<u32> {
        self.procs.0.iter().map(Child::id).collect()
    }
}

async fn start_cluster(bin: &Path, dir: &Path, http: &Http) -> anyhow::Result<Cluster> {
    let mut procs = Processes(Vec::new());
    let (grpc, admin) = trellis_bench::spawn_trellis_cluster(bin, dir, &mut procs)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut leader_http = None;
        let mut ready = 0;
        for a in &admin {
            let Ok((status, body)) = get(http, &format!("http://{a}/v1/status/ready")).await else {
                continue;
            };
            if status != 200 {
                continue;
            }
            ready += 1;
            let v: serde_json::Value = serde_json::from_slice(&body)?;
            if v["leader"].as_u64().is_some() && v["leader"] == v["node_id"] {
                leader_http = Some(a.clone());
            }
        }
        if ready == 3
            && let Some(leader_http) = leader_http
        {
            return Ok(Cluster {
                procs,
                grpc,
                leader_http,
            });
        }
        if Instant::now() > deadline {
            bail!(
                "the Trellis cluster did not form within 60s; logs in {}",
                dir.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn get(http: &Http, url: &str) -> anyhow::Result<(u16, Bytes)> {
    let req = hyper::Request::get(url).body(Full::new(Bytes::new()))?;
    let resp = http.request(req).await?;
    let status = resp.status().as_u16();
    Ok((status, resp.into_body().collect().await?.to_bytes()))
}

/// The pushed key of write `j`.
const KEY_PREFIX: &str = "/config/virtualservice/default/bench-";

/// Writes VirtualService `bench-<j>`; returns its revision and when the answer arrived.
async fn write(http: &Http, leader: &str, j: usize) -> anyhow::Result<(u64, Instant)> {
    let name = format!("bench-{j}");
    let body = serde_json::json!({
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"hosts": [name], "http": [{"route": [{"destination": {"host": name}}]}]},
    });
    let req = hyper::Request::put(format!(
        "http://{leader}/v1/config/virtualservice/default/{name}"
    ))
    .header("content-type", "application/json")
    .body(Full::new(Bytes::from(serde_json::to_vec(&body)?)))?;
    let resp = http.request(req).await?;
    let acked = Instant::now();
    let status = resp.status();
    let revision = resp
        .headers()
        .get("x-trellis-index")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let text = resp.into_body().collect().await?.to_bytes();
    if !status.is_success() {
        bail!(
            "PUT {name}: {status}: {}",
            String::from_utf8_lossy(&text).trim()
        );
    }
    let revision = revision.with_context(|| format!("PUT {name}: no X-Trellis-Index"))?;
    Ok((revision, acked))
}

/// What the stream tasks record, lock-free: for each (write, stream) when the stream got
/// the write (ns since `base`, plus one; 0 for not yet) and at which revision.
struct Board {
    n: usize,
    base: Instant,
    arrivals: Vec<AtomicU64>,
    revisions: Vec<AtomicU64>,
    /// Streams that have each write.
    counts: Vec<AtomicUsize>,
    /// Streams that got and ACKed their first push.
    ready: AtomicUsize,
    ended: AtomicUsize,
    first_error: Mutex<Option<String>>,
    wake: Notify,
}

impl Board {
    fn new(n: usize, writes: usize) -> Board {
        Board {
            n,
            base: Instant::now(),
            arrivals: (0..n * writes).map(|_| AtomicU64::new(0)).collect(),
            revisions: (0..n * writes).map(|_| AtomicU64::new(0)).collect(),
            counts: (0..writes).map(|_| AtomicUsize::new(0)).collect(),
            ready: AtomicUsize::new(0),
            ended: AtomicUsize::new(0),
            first_error: Mutex::new(None),
            wake: Notify::new(),
        }
    }

    fn ns(&self, at: Instant) -> u64 {
        u64::try_from(at.duration_since(self.base).as_nanos()).unwrap_or(u64::MAX)
    }

    fn arrived(&self, write: usize, stream: usize, at_ns: u64, revision: u64) {
        let Some(slot) = self.arrivals.get(write * self.n + stream) else {
            return;
        };
        if slot
            .compare_exchange(0, at_ns + 1, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            self.revisions[write * self.n + stream].store(revision, Ordering::Relaxed);
            if self.counts[write].fetch_add(1, Ordering::AcqRel) + 1 == self.n {
                self.wake.notify_one();
            }
        }
    }

    fn failed(&self, stream: usize, why: String) {
        {
            let mut e = self.first_error.lock().unwrap_or_else(|p| p.into_inner());
            if e.is_none() {
                *e = Some(format!("stream {stream}: {why}"));
            }
        }
        self.ended.fetch_add(1, Ordering::AcqRel);
        self.wake.notify_one();
    }

    /// Waits until `done` holds; fails if a stream ended or `timeout` passed.
    async fn wait(
        &self,
        what: &str,
        timeout: Duration,
        done: impl Fn() -> bool,
    ) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let ended = self.ended.load(Ordering::Acquire);
            if ended > 0 {
                let e = self.first_error.lock().unwrap_or_else(|p| p.into_inner());
                bail!(
                    "{what}: {ended} of {} streams ended; first: {}",
                    self.n,
                    e.as_deref().unwrap_or("?")
                );
            }
            if done() {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, self.wake.notified())
                .await
                .is_err()
            {
                bail!("{what}: not done within {timeout:?}");
            }
        }
    }
}

/// One agent's stream: hello, then ACK every push and answer every ping.
async fn stream_task(board: Arc<Board>, idx: usize, channel: Channel, open: Arc<Semaphore>) {
    let (tx, rx) = mpsc::channel::<AgentMessage>(8);
    let hello = AgentMessage {
        kind: Some(agent_message::Kind::Hello(Hello {
            node: format!("bench-node-{idx}"),
            held: Vec::new(),
            applied_version: String::new(),
            registration: None,
            agent_version: "bench-propagation".into(),
            proxy_only: true,
        })),
    };
    if tx.send(hello).await.is_err() {
        return;
    }
    let mut inbound = {
        let _permit = open.acquire().await;
        match DiscoveryClient::new(channel)
            .stream(ReceiverStream::new(rx))
            .await
        {
            Ok(r) => r.into_inner(),
            Err(s) => return board.failed(idx, format!("opening: {s}")),
        }
    };
    let mut first = true;
    loop {
        let reply = match inbound.message().await {
            Ok(Some(ServerMessage {
                kind: Some(server_message::Kind::Push(p)),
            })) => {
                if !p.upserts.is_empty() {
                    let at = board.ns(Instant::now());
                    for u in &p.upserts {
                        if let Some(j) = u
                            .key
                            .strip_prefix(KEY_PREFIX)
                            .and_then(|j| j.parse::<usize>().ok())
                        {
                            board.arrived(j, idx, at, u.revision);
                        }
                    }
                }
                agent_message::Kind::Ack(Ack {
                    version: p.version,
                    nonce: p.nonce,
                })
            }
            Ok(Some(ServerMessage {
                kind: Some(server_message::Kind::Ping(p)),
            })) => agent_message::Kind::Pong(Pong { seq: p.seq }),
            Ok(Some(_)) => continue,
            Ok(None) => return board.failed(idx, "the server ended the stream".into()),
            Err(s) => return board.failed(idx, format!("{s}")),
        };
        let is_ack = matches!(reply, agent_message::Kind::Ack(_));
        if tx.send(AgentMessage { kind: Some(reply) }).await.is_err() {
            return board.failed(idx, "the request stream closed".into());
        }
        if first && is_ack {
            first = false;
            if board.ready.fetch_add(1, Ordering::AcqRel) + 1 == board.n {
                board.wake.notify_one();
            }
        }
    }
}

/// A `/proc/PID/status` field in KiB: `VmRSS:` now, `VmHWM:` the peak.
fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .unwrap_or(0)
}

/// CPU seconds so far of the servers and of this process.
struct Cpu {
    pids: Vec<String>,
    tick: f64,
}

impl Cpu {
    fn now(&self) -> (f64, f64) {
        let servers = self.pids.iter().map(|p| cpu_ticks(p)).sum::<f64>() / self.tick;
        (servers, cpu_ticks("self") / self.tick)
    }

    fn since(&self, then: (f64, f64)) -> String {
        let now = self.now();
        format!(
            "CPU s: servers {:.1}, bench {:.1}",
            now.0 - then.0,
            now.1 - then.1
        )
    }
}

struct Stats {
    p50_us: u64,
    p99_us: u64,
    max_us: u64,
    /// Mean over writes of the time until the last stream had it.
    mean_last_us: f64,
    /// From the last write's acknowledgement to the last stream having every write.
    final_us: u64,
}

fn stats(board: &Board, writes: &[(usize, u64, Instant)]) -> anyhow::Result<Stats> {
    let mut h = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    let mut last_sum = 0u64;
    let mut latest = 0u64;
    let mut last_ack = 0u64;
    for &(j, revision, acked) in writes {
        let ack = board.ns(acked);
        last_ack = last_ack.max(ack);
        let mut last = 0u64;
        for s in 0..board.n {
            let at = board.arrivals[j * board.n + s].load(Ordering::Relaxed);
            let got = board.revisions[j * board.n + s].load(Ordering::Relaxed);
            if at == 0 || got < revision {
                bail!("write {j} (revision {revision}): stream {s} got revision {got}");
            }
            let at = at - 1;
            latest = latest.max(at);
            let us = at.saturating_sub(ack) / 1000;
            last = last.max(us);
            h.record(us.max(1))?;
        }
        last_sum += last;
    }
    Ok(Stats {
        p50_us: h.value_at_quantile(0.50),
        p99_us: h.value_at_quantile(0.99),
        max_us: h.max(),
        mean_last_us: last_sum as f64 / writes.len().max(1) as f64,
        final_us: latest.saturating_sub(last_ack) / 1000,
    })
}

enum Outcome {
    Done {
        single: Stats,
        burst: Stats,
        /// Server RSS (sum of 3) before the streams, with them, after the burst, KiB.
        rss: [u64; 3],
    },
    Failed(String),
}

async fn run_count(
    args: &Args,
    bin: &Path,
    dir: &Path,
    http: &Http,
    n: usize,
    tick: f64,
) -> anyhow::Result<Outcome> {
    let cluster = start_cluster(bin, dir, http).await?;
    let cpu = Cpu {
        pids: cluster.pids().iter().map(u32::to_string).collect(),
        tick,
    };
    let sum = |field: &str| {
        cluster
            .pids()
            .iter()
            .map(|&p| status_kib(p, field))
            .sum::<u64>()
    };
    let rss = || sum("VmRSS:");
    let timeout = Duration::from_secs(args.timeout_secs);
    // Write 0 warms the admin path and the store; the streams get it in their first push.
    write(http, &cluster.leader_http, 0).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_before = rss();

    let total_writes = 1 + args.writes + args.burst;
    let board = Arc::new(Board::new(n, total_writes));
    let open = Arc::new(Semaphore::new(500));
    let mut tasks = JoinSet::new();
    let t = Instant::now();
    let c0 = cpu.now();
    let per_conn = args.streams_per_connection.max(1);
    let mut channels: Vec<Vec<Channel>> = vec![Vec::new(); 3];
    for i in 0..n {
        let (server, k) = (i % 3, i / 3);
        if k % per_conn == 0 {
            let ch = Endpoint::from_shared(format!("http://{}", cluster.grpc[server]))?
                .tcp_nodelay(true)
                .initial_connection_window_size(4 << 20)
                .connect()
                .await
                .with_context(|| format!("connecting to {}", cluster.grpc[server]))?;
            channels[server].push(ch);
        }
        let ch = channels[server][k / per_conn].clone();
        tasks.spawn(stream_task(board.clone(), i, ch, open.clone()));
    }
    let conns: usize = channels.iter().map(Vec::len).sum();
    let outcome = async {
        board
            .wait("connecting the streams", timeout * 2, || {
                board.ready.load(Ordering::Acquire) == n
            })
            .await?;
        eprintln!(
            "  {n} streams over {conns} connections up and ACKed in {:.2}s ({})",
            t.elapsed().as_secs_f64(),
            cpu.since(c0)
        );
        // Let the first node-status flush (every ACK is recorded) pass.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let rss_connected = rss();

        let c0 = cpu.now();
        let mut singles = Vec::new();
        for j in 1..=args.writes {
            let (revision, acked) = write(http, &cluster.leader_http, j).await?;
            singles.push((j, revision, acked));
            board
                .wait(&format!("single write {j}"), timeout, || {
                    board.counts[j].load(Ordering::Acquire) == n
                })
                .await?;
            tokio::time::sleep(Duration::from_millis(args.pause_ms)).await;
        }
        eprintln!("  single writes done ({})", cpu.since(c0));

        let c0 = cpu.now();
        let first = 1 + args.writes;
        let every = Duration::from_micros(args.burst_ms * 1000 / args.burst.max(1) as u64);
        let start = tokio::time::Instant::now();
        let mut burst = JoinSet::new();
        for k in 0..args.burst {
            tokio::time::sleep_until(start + every * u32::try_from(k)?).await;
            let (http, leader) = (http.clone(), cluster.leader_http.clone());
            burst.spawn(async move {
                let (revision, acked) = write(&http, &leader, first + k).await?;
                anyhow::Ok((first + k, revision, acked))
            });
        }
        let mut bursts = Vec::new();
        while let Some(r) = burst.join_next().await {
            bursts.push(r??);
        }
        let burst_span = bursts
            .iter()
            .map(|b| b.2)
            .max()
            .map_or(Duration::ZERO, |last| last.duration_since(start.into_std()));
        board
            .wait("the burst", timeout, || {
                (first..first + args.burst).all(|j| board.counts[j].load(Ordering::Acquire) == n)
            })
            .await?;
        eprintln!(
            "  burst done, acknowledged over {:.0} ms ({})",
            burst_span.as_secs_f64() * 1000.0,
            cpu.since(c0)
        );
        let rss_after = rss();
        tokio::time::sleep(Duration::from_secs(3)).await;
        eprintln!(
            "  servers' RSS (sum): {} MiB before the streams, {} connected, {} after the burst, \
             {} 3 s later; peak (VmHWM) {}",
            rss_before >> 10,
            rss_connected >> 10,
            rss_after >> 10,
            rss() >> 10,
            sum("VmHWM:") >> 10
        );
        anyhow::Ok(Outcome::Done {
            single: stats(&board, &singles)?,
            burst: stats(&board, &bursts)?,
            rss: [rss_before, rss_connected, rss_after],
        })
    }
    .await;
    tasks.shutdown().await;
    drop(channels);
    drop(cluster);
    Ok(match outcome {
        Ok(o) => o,
        Err(e) => Outcome::Failed(format!("{e:#}")),
    })
}

fn ms(us: u64) -> String {
    format!("{:.1}", us as f64 / 1000.0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let trellis = trellis_bench::trellis_bin(args.trellis.as_deref())?;
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    let tick: f64 = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0);
    let base = match &args.dir {
        Some(d) => tempfile::tempdir_in(d)?,
        None => tempfile::tempdir_in("/var/tmp")?,
    };
    if args.keep {
        eprintln!("keeping data dirs and logs in {}", base.path().display());
    }
    let http = http_client();
    let mut rows = Vec::new();
    for &n in &args.streams {
        eprintln!("{n} streams: starting a fresh cluster");
        let dir = base.path().join(format!("streams-{n}"));
        std::fs::create_dir_all(&dir)?;
        let outcome = run_count(&args, &trellis, &dir, &http, n, tick).await?;
        if let Outcome::Failed(e) = &outcome {
            eprintln!("  {n} streams FAILED: {e}");
        }
        rows.push((n, outcome));
        if !args.keep {
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
    println!(
        "propagation: 3 servers on loopback, single writes one at a time ({} x, {} ms apart), \
         then {} writes over {} ms; latency from the PUT's answer to each stream's push",
        args.writes, args.pause_ms, args.burst, args.burst_ms
    );
    println!(
        "| streams | run              | p50 ms | p99 ms | max ms |  last stream ms | \
         server RSS MiB (sum of 3, connected) | RSS KiB per stream |"
    );
    println!(
        "|--------:|------------------|-------:|-------:|-------:|----------------:|\
         -------------------------------------:|-------------------:|"
    );
    for (n, outcome) in &rows {
        match outcome {
            Outcome::Failed(e) => println!("| {n:>7} | failed: {e} |"),
            Outcome::Done {
                single, burst, rss, ..
            } => {
                let per = |after: u64| (after as f64 - rss[0] as f64) / *n as f64;
                println!(
                    "| {:>7} | {:<16} | {:>6} | {:>6} | {:>6} | {:>15} | {:>36.1} | {:>18.1} |",
                    n,
                    format!("{} single", args.writes),
                    ms(single.p50_us),
                    ms(single.p99_us),
                    ms(single.max_us),
                    ms(single.mean_last_us as u64),
                    rss[1] as f64 / 1024.0,
                    per(rss[1]),
                );
                println!(
                    "| {:>7} | {:<16} | {:>6} | {:>6} | {:>6} | {:>15} | {:>36.1} | {:>18.1} |",
                    n,
                    format!("burst {}/{}ms", args.burst, args.burst_ms),
                    ms(burst.p50_us),
                    ms(burst.p99_us),
                    ms(burst.max_us),
                    format!("{} / {}", ms(burst.mean_last_us as u64), ms(burst.final_us)),
                    rss[2] as f64 / 1024.0,
                    per(rss[2]),
                );
            }
        }
    }
    println!(
        "last stream ms: the mean over writes of the time until the last stream had the write; \
         for the burst also (after /) the time from the last write's answer until every stream \
         had every write. RSS: after the streams connected (burst row: after the burst); \
         per stream: (that - before the streams) / streams."
    );
    if args.keep {
        let _ = base.keep();
    }
    Ok(())
}

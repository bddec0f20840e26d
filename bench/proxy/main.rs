//! bench-proxy: one nginx upstream reached directly, through one and two Trellis proxies,
//! and through one and two HAProxy processes, all on loopback in one run. Measures latency
//! at fixed open-loop rates (oha, with latency correction), closed-loop maximum throughput
//! (wrk), HTTP/2 throughput with many streams per connection (h2load), the proxies' CPU per
//! 1,000 requests and their peak RSS, and prints one table per metric group.
//!
//! All chains run at once, idle but for the one under load, and every measurement is taken
//! for each chain in turn, then again, for `--rounds` rounds, each on freshly started
//! proxies (`measure_all` says why): a shared machine's speed drifts
//! by a quarter within minutes, so chains measured minutes apart are not comparable, and one
//! sample each is not enough. The tables show medians over the rounds; a latency added over
//! direct is the median of each round's difference to the direct run just before it.
//!
//! Trellis and HAProxy with the same number of hops are measured back to back, and which of
//! the two goes first changes every round (which pair goes first, every other round): two
//! builds measured both ways round read about 1.3 % faster when measured first, so a fixed
//! order would tilt a comparison whose goals are judged within a few per cent. The last
//! table compares each pair round by round.
#![forbid(unsafe_code)]

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use trellis_bench::{Processes, free_port, spawn};

#[derive(Parser)]
#[command(about = "Trellis's proxy against direct connections and HAProxy, side by side")]
struct Args {
    /// The trellis binary (default: the one built beside this benchmark).
    #[arg(long)]
    trellis: Option<PathBuf>,
    #[arg(long, default_value = "nginx")]
    nginx: PathBuf,
    #[arg(long, default_value = "haproxy")]
    haproxy: PathBuf,
    /// Open-loop load generator (cargo install oha).
    #[arg(long, default_value = "oha")]
    oha: PathBuf,
    /// Closed-loop load generator (Debian: apt-get install wrk).
    #[arg(long, default_value = "wrk")]
    wrk: PathBuf,
    /// HTTP/2 load generator (Debian: apt-get install nghttp2-client).
    #[arg(long, default_value = "h2load")]
    h2load: PathBuf,
    /// Concurrent HTTP/2 streams per h2load connection.
    #[arg(long, default_value_t = 10)]
    h2_streams: u32,
    /// Open-loop rates, requests per second.
    #[arg(long, value_delimiter = ',', default_value = "1000,2000,5000")]
    rates: Vec<u32>,
    /// Seconds of each open-loop and closed-loop run.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Connections of every run.
    #[arg(long, default_value_t = 32)]
    connections: u32,
    /// Times every measurement is repeated, each chain in turn; tables show medians. Six:
    /// with three, the same binary's HTTP/2 rate read 94 % of HAProxy's in one run and 104 %
    /// in the next, an hour apart; an even number lets Trellis and HAProxy each go first in
    /// half the rounds.
    #[arg(long, default_value_t = 6)]
    rounds: usize,
    /// Where configs and logs go (default: a temporary directory, removed afterwards).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Instruction counter (Debian: apt-get install valgrind): one Trellis and one HAProxy,
    /// each run under callgrind, count the instructions they execute per request. Unlike
    /// time, the count does not drift with a shared machine's speed.
    #[arg(long, default_value = "valgrind")]
    valgrind: PathBuf,
    /// Requests counted per load under callgrind (after as many again to warm up).
    #[arg(long, default_value_t = 4000)]
    counted_requests: u64,
}

fn wait_port(port: u16, procs: &mut Processes, log: &Path) -> anyhow::Result<()> {
    wait_port_for(port, procs, log, Duration::from_secs(20))
}

fn wait_port_for(
    port: u16,
    procs: &mut Processes,
    log: &Path,
    limit: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        for c in &mut procs.0 {
            if let Ok(Some(st)) = c.try_wait() {
                bail!("a process exited ({st}); see {}", log.display());
            }
        }
        if Instant::now() > deadline {
            bail!(
                "nothing listens on {port} after {} s; see {}",
                limit.as_secs(),
                log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// nginx answering HTTP/1.1 on `port` and HTTP/2 (prior knowledge) on `h2_port`.
fn start_nginx(bin: &Path, dir: &Path, port: u16, h2_port: u16) -> anyhow::Result<Processes> {
    let d = dir.display();
    let conf = format!(
        "user root;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {d}/nginx-body;
    proxy_temp_path {d}/nginx-proxy;
    fastcgi_temp_path {d}/nginx-fastcgi;
    uwsgi_temp_path {d}/nginx-uwsgi;
    scgi_temp_path {d}/nginx-scgi;
    keepalive_timeout 75s;
    keepalive_requests 1000000;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            default_type text/plain;
            return 200 \"hello from nginx\\n\";
        }}
    }}
    server {{
        listen 127.0.0.1:{h2_port} http2;
        location / {{
            default_type text/plain;
            return 200 \"hello from nginx\\n\";
        }}
    }}
}}
"
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf)?;
    let log = dir.join("nginx.log");
    let mut procs = Processes::default();
    procs.0.push(spawn(
        bin,
        &[
            "-p".into(),
            dir.display().to_string(),
            "-c".into(),
            path.display().to_string(),
            "-g".into(),
            "daemon off;".into(),
        ],
        &log,
    )?);
    wait_port(port, &mut procs, &log)?;
    Ok(procs)
}

/// One `trellis proxy`: `upstream` is `Some((bind, endpoint))` for a client-side upstream
/// listener, `inbound` is `Some((bind, workload))` for a server-side inbound listener.
/// Writes a Trellis proxy config: with `upstream = Some((bind, endpoint))` an outbound
/// listener, with `inbound = Some((bind, workload))` a server-side inbound listener. Returns
/// the config's path and the port clients connect to.
fn trellis_config(
    dir: &Path,
    name: &str,
    upstream: Option<(u16, u16)>,
    inbound: Option<(u16, u16)>,
) -> anyhow::Result<(PathBuf, u16)> {
    let admin = free_port()?;
    let mut yaml = format!(
        "node: {{name: {name}, namespace: default}}\ndrainTimeout: 1s\nlisteners:\n  admin: {{bind: \"127.0.0.1:{admin}\"}}\n"
    );
    let mut services =
        String::from("services:\n  - name: web\n    ports: [{number: 80, protocol: HTTP}]\n");
    let mut port = 0;
    if let Some((bind, workload)) = inbound {
        yaml += &format!(
            "  inbound: {{bind: \"127.0.0.1:{bind}\", service: web, address: \"127.0.0.1:{workload}\", protocol: HTTP}}\n"
        );
        port = bind;
    }
    if let Some((bind, endpoint)) = upstream {
        yaml += &format!(
            "  upstreams:\n    - {{name: web, bind: \"127.0.0.1:{bind}\", service: web, port: 80}}\n"
        );
        services += &format!("    endpoints:\n      - {{address: 127.0.0.1, port: {endpoint}}}\n");
        port = bind;
    }
    yaml += &services;
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, yaml)?;
    Ok((path, port))
}

/// One `trellis proxy` process; see `trellis_config`.
fn start_trellis(
    bin: &Path,
    dir: &Path,
    name: &str,
    upstream: Option<(u16, u16)>,
    inbound: Option<(u16, u16)>,
    procs: &mut Processes,
) -> anyhow::Result<u16> {
    let (path, port) = trellis_config(dir, name, upstream, inbound)?;
    let log = dir.join(format!("{name}.log"));
    procs.0.push(spawn(
        bin,
        &[
            "proxy".into(),
            "--config".into(),
            path.display().to_string(),
        ],
        &log,
    )?);
    wait_port(port, procs, &log)?;
    Ok(port)
}

/// Writes an HAProxy config: an HTTP frontend on `bind` with keep-alive to `to`.
fn haproxy_config(dir: &Path, name: &str, bind: u16, to: u16) -> anyhow::Result<PathBuf> {
    let cfg = format!(
        "global
    maxconn 4096
defaults
    mode http
    option http-keep-alive
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s
frontend fe
    bind 127.0.0.1:{bind}
    default_backend be
backend be
    http-reuse always
    server s1 127.0.0.1:{to}
"
    );
    let path = dir.join(format!("{name}.cfg"));
    std::fs::write(&path, cfg)?;
    Ok(path)
}

/// One `haproxy` process; see `haproxy_config`.
fn start_haproxy(
    bin: &Path,
    dir: &Path,
    name: &str,
    bind: u16,
    to: u16,
    procs: &mut Processes,
) -> anyhow::Result<()> {
    let path = haproxy_config(dir, name, bind, to)?;
    let log = dir.join(format!("{name}.log"));
    procs.0.push(spawn(
        bin,
        &["-f".into(), path.display().to_string(), "-db".into()],
        &log,
    )?);
    wait_port(bind, procs, &log)
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32, tick: f64) -> f64 {
    trellis_bench::cpu_ticks(&pid.to_string()) / tick
}

/// VmHWM of a process, in MiB.
fn peak_rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

struct OpenLoop {
    achieved: f64,
    errors: u64,
    /// p50, p90, p99, p99.9 in milliseconds.
    pct: [f64; 4],
    cpu_per_1k: f64,
}

fn run_oha(args: &Args, port: u16, rate: u32) -> anyhow::Result<(f64, u64, u64, [f64; 4])> {
    let out = Command::new(&args.oha)
        .args([
            "--no-tui",
            "--output-format",
            "json",
            "-z",
            &format!("{}s", args.seconds),
            "-q",
            &rate.to_string(),
            "--latency-correction",
            // Requests in flight at the deadline finish instead of counting as errors.
            "-w",
            "-c",
            &args.connections.to_string(),
            &format!("http://127.0.0.1:{port}/"),
        ])
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", args.oha.display()))?;
    if !out.status.success() {
        bail!("oha failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("oha's JSON")?;
    let ms = |k: &str| v["latencyPercentiles"][k].as_f64().unwrap_or(f64::NAN) * 1000.0;
    let pct = [ms("p50"), ms("p90"), ms("p99"), ms("p99.9")];
    let mut ok = 0;
    let mut bad = 0;
    if let Some(codes) = v["statusCodeDistribution"].as_object() {
        for (code, n) in codes {
            let n = n.as_u64().unwrap_or(0);
            if code.starts_with('2') {
                ok += n;
            } else {
                bad += n;
            }
        }
    }
    if let Some(errs) = v["errorDistribution"].as_object()
        && !errs.is_empty()
    {
        bad += errs.values().filter_map(|n| n.as_u64()).sum::<u64>();
        eprintln!("oha errors on port {port} at {rate} rps: {errs:?}");
    }
    let rps = v["summary"]["requestsPerSec"].as_f64().unwrap_or(f64::NAN);
    Ok((rps, ok, bad, pct))
}

struct ClosedLoop {
    rps: f64,
    p99_ms: f64,
    cpu_per_1k: f64,
}

fn run_wrk(args: &Args, port: u16) -> anyhow::Result<(f64, f64, u64)> {
    let out = Command::new(&args.wrk)
        .args([
            "-t",
            "1",
            "-c",
            &args.connections.to_string(),
            "-d",
            &format!("{}s", args.seconds),
            "--latency",
            &format!("http://127.0.0.1:{port}/"),
        ])
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", args.wrk.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("wrk failed: {text}{}", String::from_utf8_lossy(&out.stderr));
    }
    let rps = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .context("no Requests/sec in wrk's output")?;
    let p99 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("99%"))
        .map_or(f64::NAN, |v| wrk_duration_ms(v.trim()));
    let requests = text
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(0);
    if text.contains("Non-2xx") || text.contains("Socket errors") {
        eprintln!("wrk on port {port} saw errors:\n{text}");
    }
    Ok((rps, p99, requests))
}

/// `812.00us`, `1.23ms`, `2.00s` → milliseconds.
fn wrk_duration_ms(v: &str) -> f64 {
    let split = v.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(v.len());
    let (n, unit) = v.split_at(split);
    let n: f64 = n.parse().unwrap_or(f64::NAN);
    match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        "m" => n * 60_000.0,
        _ => f64::NAN,
    }
}

struct Http2 {
    rps: f64,
    mean_ms: f64,
    max_ms: f64,
    failed: u64,
    cpu_per_1k: f64,
}

/// h2load over prior-knowledge HTTP/2: requests/s, mean and max latency, failed and
/// succeeded requests.
fn run_h2load(args: &Args, port: u16) -> anyhow::Result<(f64, f64, f64, u64, u64)> {
    let out = Command::new(&args.h2load)
        .args([
            "-t",
            "1",
            "-c",
            &args.connections.to_string(),
            "-m",
            &args.h2_streams.to_string(),
            "-D",
            &args.seconds.to_string(),
            &format!("http://127.0.0.1:{port}/"),
        ])
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", args.h2load.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "h2load failed: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // finished in 10.00s, 34698.13 req/s, 1.46MB/s
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("finished in"))
        .and_then(|l| l.split(',').nth(1))
        .and_then(|v| v.trim().strip_suffix("req/s"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .context("no req/s in h2load's output")?;
    // requests: 100 total, 100 started, 100 done, 98 succeeded, 2 failed, ...
    let count = |what: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix("requests:"))
            .and_then(|l| {
                l.split(',')
                    .find(|part| part.trim().ends_with(what))
                    .and_then(|part| part.split_whitespace().next())
                    .and_then(|n| n.parse::<u64>().ok())
            })
            .unwrap_or(0)
    };
    // time for request:   209us   4.18ms   922us   542us   86.15%  (min max mean sd)
    let times: Vec<f64> = text
        .lines()
        .find_map(|l| l.strip_prefix("time for request:"))
        .map(|l| l.split_whitespace().map(wrk_duration_ms).collect())
        .unwrap_or_default();
    let max_ms = times.get(1).copied().unwrap_or(f64::NAN);
    let mean_ms = times.get(2).copied().unwrap_or(f64::NAN);
    Ok((rps, mean_ms, max_ms, count("failed"), count("succeeded")))
}

/// One chain's results, medians over the rounds.
struct ChainResult {
    name: &'static str,
    open: Vec<OpenLoop>,
    /// Per rate: p50, p90, p99, p99.9 added over direct (median of each round's difference).
    added: Vec<[f64; 4]>,
    closed: ClosedLoop,
    /// Lowest and highest closed-loop req/s over the rounds.
    closed_range: (f64, f64),
    /// `None` when h2load is not installed.
    http2: Option<Http2>,
    /// Largest VmHWM among the chain's proxies after one run at the first rate, freshly
    /// started and before any other load.
    peak_rss_mib: f64,
    proxies: usize,
}

/// A chain ready to be measured. `h2_port`: where it takes HTTP/2 (the same port for the
/// proxies, which sniff it; nginx's HTTP/2 port for `direct`), `None` to skip HTTP/2.
struct Chain {
    name: &'static str,
    port: u16,
    h2_port: Option<u16>,
    procs: Processes,
}

impl Chain {
    fn cpu(&self, tick: f64) -> f64 {
        self.procs
            .pids()
            .iter()
            .map(|&p| cpu_seconds(p, tick))
            .sum()
    }

    fn peak_rss_mib(&self) -> f64 {
        self.procs
            .pids()
            .iter()
            .map(|&p| peak_rss_mib(p))
            .fold(0.0, f64::max)
    }

    /// Connections, pools, allocator, for every load a round brings: a second each over
    /// HTTP/2 (where the chain takes it), in a closed loop and, last, as the first
    /// measurement will, at the lowest rate.
    fn warm_up(&self, args: &Args) {
        let url = format!("http://127.0.0.1:{}/", self.port);
        let connections = args.connections.to_string();
        let streams = args.h2_streams.to_string();
        let rate = args.rates.first().copied().unwrap_or(1000).to_string();
        let h2_url = self.h2_port.map(|p| format!("http://127.0.0.1:{p}/"));
        let mut loads = Vec::new();
        if let Some(h2_url) = &h2_url {
            loads.push((
                &args.h2load,
                vec![
                    "-t",
                    "1",
                    "-c",
                    &connections,
                    "-m",
                    &streams,
                    "-D",
                    "1",
                    h2_url,
                ],
            ));
        }
        loads.push((
            &args.wrk,
            vec!["-t", "1", "-c", &connections, "-d", "1s", &url],
        ));
        loads.push((
            &args.oha,
            vec![
                "--no-tui",
                "-z",
                "1s",
                "-q",
                &rate,
                "-c",
                &connections,
                &url,
            ],
        ));
        for (bin, load) in loads {
            // A load that fails here fails again, with its message, when it is measured.
            let _ = Command::new(bin)
                .args(load)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }

    fn open_loop(&self, args: &Args, rate: u32, tick: f64) -> anyhow::Result<OpenLoop> {
        let before = self.cpu(tick);
        let (achieved, requests, errors, pct) = run_oha(args, self.port, rate)?;
        let used = self.cpu(tick) - before;
        eprintln!(
            "{:<12} {rate:>5} rps: achieved {achieved:.0}, p99 {:.3} ms, {errors} errors",
            self.name, pct[2]
        );
        Ok(OpenLoop {
            achieved,
            errors,
            pct,
            cpu_per_1k: per_1k(used, requests),
        })
    }

    fn closed_loop(&self, args: &Args, tick: f64) -> anyhow::Result<ClosedLoop> {
        let before = self.cpu(tick);
        let (rps, p99_ms, requests) = run_wrk(args, self.port)?;
        let used = self.cpu(tick) - before;
        eprintln!(
            "{:<12} closed loop: {rps:.0} rps, p99 {p99_ms:.3} ms",
            self.name
        );
        Ok(ClosedLoop {
            rps,
            p99_ms,
            cpu_per_1k: per_1k(used, requests),
        })
    }

    fn http2(&self, args: &Args, tick: f64) -> anyhow::Result<Option<Http2>> {
        let Some(h2_port) = self.h2_port else {
            return Ok(None);
        };
        let before = self.cpu(tick);
        let (rps, mean_ms, max_ms, failed, succeeded) = run_h2load(args, h2_port)?;
        let used = self.cpu(tick) - before;
        eprintln!(
            "{:<12} http/2: {rps:.0} rps, mean {mean_ms:.3} ms, {failed} failed",
            self.name
        );
        Ok(Some(Http2 {
            rps,
            mean_ms,
            max_ms,
            failed,
            cpu_per_1k: per_1k(used, succeeded + failed),
        }))
    }
}

/// One round of one chain.
struct Round {
    open: Vec<OpenLoop>,
    closed: ClosedLoop,
    http2: Option<Http2>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| !x.is_nan());
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Two chains compared round by round, by index into the chains: `chain` is judged against
/// `against`. In a control pair both are the same proxy with the same config, so whatever
/// separates them is the benchmark's own noise.
#[derive(Clone, Copy)]
struct Pair {
    chain: usize,
    against: usize,
    control: bool,
}

/// The chains as `start_chains` orders them: direct, trellis x1, trellis x2, haproxy x1,
/// haproxy x2, haproxy x1 B, haproxy x2 B. Each Trellis chain is judged against the HAProxy
/// chain with as many hops; a second HAProxy chain against the first, with each number of
/// hops, is the control.
const PAIRS: [Pair; 4] = [
    Pair {
        chain: 1,
        against: 3,
        control: false,
    },
    Pair {
        chain: 2,
        against: 4,
        control: false,
    },
    Pair {
        chain: 5,
        against: 3,
        control: true,
    },
    Pair {
        chain: 6,
        against: 4,
        control: true,
    },
];

/// Chains measured next to each other in every round: those with one hop (trellis x1,
/// haproxy x1, haproxy x1 B) and those with two, so that every pair above is measured in the
/// same stretch of time and each control pair in the same arrangement as the Trellis one.
const GROUPS: [&[usize]; 2] = [&[1, 3, 5], &[2, 4, 6]];

/// The order in which a round measures the chains: `direct` (index 0) first, as the baseline
/// of the latencies added, then each group. Within a group the chains move one place on
/// every two rounds and run in reverse in odd rounds, so over two rounds every chain goes
/// before each other one of its group once, and over twice as many rounds as the group has
/// chains it takes every place equally often. The groups too move one place on every two
/// rounds.
fn round_order(round: usize, groups: &[&[usize]]) -> Vec<usize> {
    let arrange = |items: &mut Vec<usize>| {
        if !items.is_empty() {
            let turn = (round / 2) % items.len();
            items.rotate_right(turn);
        }
        if !round.is_multiple_of(2) {
            items.reverse();
        }
    };
    let mut slots: Vec<usize> = (0..groups.len()).collect();
    let turn = (round / 2) % groups.len().max(1);
    slots.rotate_right(turn);
    let mut order = vec![0];
    for g in slots {
        let mut chains = groups[g].to_vec();
        arrange(&mut chains);
        order.extend(chains);
    }
    order
}

/// Every chain measured `args.rounds` times, each measurement taken for all chains in turn
/// in the round's order (`round_order`); the first chain is `direct`. Each round runs on
/// proxies of its own, started by `start` and warmed up before it and stopped after it: a
/// process keeps its own luck for its whole life (where its memory and threads landed), and
/// in one run with the same processes throughout, one chain's p99 at 1,000 rps was behind
/// its peer's in all six rounds and the other chain's in none, the other way round in the
/// next run.
fn measure_all(
    args: &Args,
    start: &dyn Fn(usize) -> anyhow::Result<Vec<Chain>>,
    groups: &[&[usize]],
    pairs: &[Pair],
    tick: f64,
) -> anyhow::Result<(Vec<ChainResult>, Vec<PairResult>)> {
    let mut rounds: Vec<Vec<Round>> = Vec::new();
    let mut peaks = Vec::new();
    let mut chain_names = Vec::new();
    let mut proxies = Vec::new();
    for round in 0..args.rounds.max(1) {
        let chains = start(round)?;
        if round == 0 {
            rounds = chains.iter().map(|_| Vec::new()).collect();
            peaks = vec![0.0; chains.len()];
            chain_names = chains.iter().map(|c| c.name).collect();
            proxies = chains.iter().map(|c| c.procs.pids().len()).collect();
            // Peak RSS at the lowest rate, before the warm-up's heavier loads raise it: each
            // chain's freshly started proxies, one run at that rate, their VmHWM after it.
            let rate = args.rates.first().copied().unwrap_or(1000);
            for (i, c) in chains.iter().enumerate() {
                if c.procs.pids().is_empty() {
                    continue;
                }
                eprintln!("peak RSS of {} at {rate} rps:", c.name);
                c.open_loop(args, rate, tick)?;
                peaks[i] = c.peak_rss_mib();
            }
        }
        for c in &chains {
            c.warm_up(args);
        }
        let order = round_order(round, groups);
        let names: Vec<&str> = order.iter().map(|&i| chains[i].name).collect();
        eprintln!(
            "round {} of {}: {}",
            round + 1,
            args.rounds.max(1),
            names.join(", ")
        );
        let mut open: Vec<Vec<OpenLoop>> = chains.iter().map(|_| Vec::new()).collect();
        for &rate in &args.rates {
            for &i in &order {
                open[i].push(chains[i].open_loop(args, rate, tick)?);
            }
        }
        let mut closed: Vec<Option<ClosedLoop>> = chains.iter().map(|_| None).collect();
        for &i in &order {
            closed[i] = Some(chains[i].closed_loop(args, tick)?);
        }
        let mut http2: Vec<Option<Http2>> = chains.iter().map(|_| None).collect();
        for &i in &order {
            http2[i] = chains[i].http2(args, tick)?;
        }
        for (i, ((o, c), h)) in open.into_iter().zip(closed).zip(http2).enumerate() {
            let Some(c) = c else {
                bail!("round {round} did not measure {}", chains[i].name);
            };
            rounds[i].push(Round {
                open: o,
                closed: c,
                http2: h,
            });
        }
    }
    let paired = pairs
        .iter()
        .map(|p| compare_pair(args, &chain_names, &rounds, *p))
        .collect();
    let direct = &rounds[0];
    let mut results = Vec::new();
    for (i, &name) in chain_names.iter().enumerate() {
        let mine = &rounds[i];
        let of = |f: &dyn Fn(&Round) -> f64| median(mine.iter().map(f).collect());
        let open = (0..args.rates.len())
            .map(|r| OpenLoop {
                achieved: of(&|x| x.open[r].achieved),
                errors: mine.iter().map(|x| x.open[r].errors).sum(),
                pct: [0, 1, 2, 3].map(|k| of(&|x| x.open[r].pct[k])),
                cpu_per_1k: of(&|x| x.open[r].cpu_per_1k),
            })
            .collect();
        let added = (0..args.rates.len())
            .map(|r| {
                [0, 1, 2, 3].map(|k| {
                    median(
                        mine.iter()
                            .zip(direct)
                            .map(|(x, d)| x.open[r].pct[k] - d.open[r].pct[k])
                            .collect(),
                    )
                })
            })
            .collect();
        let closed_rps: Vec<f64> = mine.iter().map(|x| x.closed.rps).collect();
        let closed_range = range(&closed_rps);
        let closed = ClosedLoop {
            rps: median(closed_rps),
            p99_ms: of(&|x| x.closed.p99_ms),
            cpu_per_1k: of(&|x| x.closed.cpu_per_1k),
        };
        let http2 = if mine.iter().all(|x| x.http2.is_some()) {
            let h = |f: &dyn Fn(&Http2) -> f64| {
                median(
                    mine.iter()
                        .filter_map(|x| x.http2.as_ref())
                        .map(f)
                        .collect(),
                )
            };
            Some(Http2 {
                rps: h(&|x| x.rps),
                mean_ms: h(&|x| x.mean_ms),
                max_ms: h(&|x| x.max_ms),
                failed: mine
                    .iter()
                    .filter_map(|x| x.http2.as_ref())
                    .map(|x| x.failed)
                    .sum(),
                cpu_per_1k: h(&|x| x.cpu_per_1k),
            })
        } else {
            None
        };
        results.push(ChainResult {
            name,
            open,
            added,
            closed,
            closed_range,
            http2,
            peak_rss_mib: peaks[i],
            proxies: proxies[i],
        });
    }
    Ok((results, paired))
}

/// One chain against another (`Pair`), round by round.
struct PairResult {
    chain: &'static str,
    against: &'static str,
    control: bool,
    /// Closed loop: the chain's req/s as a share of the other's, one per round.
    closed_ratio: Vec<f64>,
    /// HTTP/2: the same; empty without h2load.
    http2_ratio: Vec<f64>,
    /// Per open-loop rate: the chain's p99 minus the other's in ms, one per round. Both add
    /// to the same direct run, so this is the difference of their added p99s.
    p99_diff: Vec<Vec<f64>>,
}

fn compare_pair(args: &Args, names: &[&'static str], rounds: &[Vec<Round>], p: Pair) -> PairResult {
    let (t, h) = (&rounds[p.chain], &rounds[p.against]);
    let closed_ratio = t
        .iter()
        .zip(h)
        .map(|(t, h)| t.closed.rps / h.closed.rps)
        .collect();
    let http2_ratio = t
        .iter()
        .zip(h)
        .filter_map(|(t, h)| Some(t.http2.as_ref()?.rps / h.http2.as_ref()?.rps))
        .collect();
    let p99_diff = (0..args.rates.len())
        .map(|r| {
            t.iter()
                .zip(h)
                .map(|(t, h)| t.open[r].pct[2] - h.open[r].pct[2])
                .collect()
        })
        .collect();
    PairResult {
        chain: names[p.chain],
        against: names[p.against],
        control: p.control,
        closed_ratio,
        http2_ratio,
        p99_diff,
    }
}

fn per_1k(cpu: f64, requests: u64) -> f64 {
    if requests == 0 {
        f64::NAN
    } else {
        cpu * 1000.0 / requests as f64
    }
}

fn version(bin: &Path, arg: &str) -> String {
    Command::new(bin)
        .arg(arg)
        .output()
        .ok()
        .map(|o| {
            let mut s = String::from_utf8_lossy(&o.stdout).to_string();
            s += &String::from_utf8_lossy(&o.stderr);
            s.lines().next().unwrap_or("").trim().to_string()
        })
        .unwrap_or_default()
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let trellis = trellis_bench::trellis_bin(args.trellis.as_deref())?;
    let tmp;
    let dir = match &args.dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d.clone()
        }
        None => {
            tmp = tempfile::tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    let tick = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .parse::<f64>()
                .ok()
        })
        .unwrap_or(100.0);
    eprintln!(
        "{} · {} · {}",
        version(&args.nginx, "-v"),
        version(&args.haproxy, "-v"),
        version(&args.oha, "--version")
    );

    let h2 = available(&args.h2load, "nghttp2-client", "no HTTP/2 table");
    let nginx_port = free_port()?;
    let nginx_h2_port = free_port()?;
    let _nginx = start_nginx(&args.nginx, &dir, nginx_port, nginx_h2_port)?;
    let start = |round: usize| {
        start_chains(
            &args,
            &trellis,
            &dir.join(format!("round-{}", round + 1)),
            (nginx_port, nginx_h2_port),
            h2,
        )
    };
    let (results, paired) = measure_all(&args, &start, &GROUPS, &PAIRS, tick)?;
    let counted = if h2 {
        count_instructions(&args, &trellis, &dir, nginx_port)?
    } else {
        Vec::new()
    };

    print_tables(&args, &results);
    print_pairs(&args, &paired);
    print_instructions(&args, &counted);
    Ok(())
}

/// nginx reached directly, then fresh proxies for the other chains, in this order: direct,
/// trellis x1, trellis x2, haproxy x1, haproxy x2, and the controls haproxy x1 B and
/// haproxy x2 B (haproxy x1 and x2 again). Configs and logs go under `dir`.
fn start_chains(
    args: &Args,
    trellis: &Path,
    dir: &Path,
    nginx: (u16, u16),
    h2: bool,
) -> anyhow::Result<Vec<Chain>> {
    std::fs::create_dir_all(dir)?;
    let (nginx_port, nginx_h2_port) = nginx;
    let h2_of = |port: u16| h2.then_some(port);
    let mut chains = vec![Chain {
        name: "direct",
        port: nginx_port,
        h2_port: h2_of(nginx_h2_port),
        procs: Processes::default(),
    }];
    {
        let mut procs = Processes::default();
        let port = start_trellis(
            trellis,
            dir,
            "trellis1",
            Some((free_port()?, nginx_port)),
            None,
            &mut procs,
        )?;
        chains.push(Chain {
            name: "trellis x1",
            port,
            h2_port: h2_of(port),
            procs,
        });
    }
    {
        let mut procs = Processes::default();
        let inbound = start_trellis(
            trellis,
            dir,
            "trellis2-server",
            None,
            Some((free_port()?, nginx_port)),
            &mut procs,
        )?;
        let port = start_trellis(
            trellis,
            dir,
            "trellis2-client",
            Some((free_port()?, inbound)),
            None,
            &mut procs,
        )?;
        chains.push(Chain {
            name: "trellis x2",
            port,
            h2_port: h2_of(port),
            procs,
        });
    }
    for (name, file, hops) in [
        ("haproxy x1", "haproxy1", 1),
        ("haproxy x2", "haproxy2", 2),
        ("haproxy x1 B", "haproxy1-b", 1),
        ("haproxy x2 B", "haproxy2-b", 2),
    ] {
        chains.push(haproxy_chain(args, dir, name, file, hops, nginx_port, h2)?);
    }
    Ok(chains)
}

/// `hops` HAProxy processes in a row in front of nginx (1 or 2), their configs and logs named
/// after `file` (`-server` and `-client` with two).
fn haproxy_chain(
    args: &Args,
    dir: &Path,
    name: &'static str,
    file: &str,
    hops: usize,
    nginx_port: u16,
    h2: bool,
) -> anyhow::Result<Chain> {
    let mut procs = Processes::default();
    let mut to = nginx_port;
    let mut client = file.to_string();
    if hops == 2 {
        let server = free_port()?;
        let server_file = format!("{file}-server");
        start_haproxy(&args.haproxy, dir, &server_file, server, to, &mut procs)?;
        to = server;
        client = format!("{file}-client");
    }
    let port = free_port()?;
    start_haproxy(&args.haproxy, dir, &client, port, to, &mut procs)?;
    Ok(Chain {
        name,
        port,
        h2_port: h2.then_some(port),
        procs,
    })
}

/// Whether `bin --version` runs; if not, says which Debian package has it and what is skipped.
fn available(bin: &Path, package: &str, skipped: &str) -> bool {
    let found = Command::new(bin)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        eprintln!(
            "{} not found (apt-get install {package}): {skipped}",
            bin.display()
        );
    }
    found
}

/// How the counted requests are sent: HTTP/1.1 or HTTP/2, connections, requests in flight
/// on each (HTTP/1.1: pipelined).
struct CountedLoad {
    label: &'static str,
    http1: bool,
    connections: u32,
    in_flight: u32,
}

const COUNTED_LOADS: [CountedLoad; 3] = [
    // As wrk's closed loop sends: one request at a time on each connection, so every request
    // is a round of wake-ups of its own.
    CountedLoad {
        label: "HTTP/1.1, 1 in flight per conn",
        http1: true,
        connections: 8,
        in_flight: 1,
    },
    CountedLoad {
        label: "HTTP/1.1, 4 pipelined",
        http1: true,
        connections: 4,
        in_flight: 4,
    },
    CountedLoad {
        label: "HTTP/2, 4 streams",
        http1: false,
        connections: 4,
        in_flight: 4,
    },
];

/// Instructions one proxy process executes per request, by load (`COUNTED_LOADS`).
struct Counted {
    name: &'static str,
    per_request: [f64; COUNTED_LOADS.len()],
}

/// Starts one Trellis and one HAProxy in front of nginx under callgrind and counts, for each
/// of `COUNTED_LOADS`, the instructions each executes per request: the counters are zeroed
/// after a warm-up, `counted_requests` are sent with h2load, and the total is read from the
/// dump callgrind writes on request.
fn count_instructions(
    args: &Args,
    trellis: &Path,
    dir: &Path,
    nginx_port: u16,
) -> anyhow::Result<Vec<Counted>> {
    if !available(&args.valgrind, "valgrind", "no instruction count") {
        return Ok(Vec::new());
    }
    let callgrind_control = args.valgrind.with_file_name("callgrind_control");
    let mut counted = Vec::new();
    for name in ["trellis x1", "haproxy x1"] {
        let port = free_port()?;
        let out = dir.join(format!("callgrind-{}", name.replace(' ', "-")));
        std::fs::create_dir_all(&out)?;
        let mut cmd: Vec<String> = vec![
            "--tool=callgrind".into(),
            format!("--callgrind-out-file={}/callgrind.out", out.display()),
            "--dump-instr=no".into(),
            "--collect-jumps=no".into(),
        ];
        if name.starts_with("trellis") {
            let (path, _) = trellis_config(dir, "counted-trellis", Some((port, nginx_port)), None)?;
            cmd.extend([
                trellis.display().to_string(),
                "proxy".into(),
                "--config".into(),
                path.display().to_string(),
            ]);
        } else {
            let path = haproxy_config(dir, "counted-haproxy", port, nginx_port)?;
            cmd.extend([
                args.haproxy.display().to_string(),
                "-f".into(),
                path.display().to_string(),
                "-db".into(),
            ]);
        }
        let log = out.join("valgrind.log");
        let mut procs = Processes(vec![spawn(&args.valgrind, &cmd, &log)?]);
        wait_port_for(port, &mut procs, &log, Duration::from_secs(120))?;
        let pid = procs.pids()[0].to_string();
        let mut per_request = [0.0; COUNTED_LOADS.len()];
        for (i, load) in COUNTED_LOADS.iter().enumerate() {
            run_h2load_count(args, port, load, args.counted_requests)?;
            control(&callgrind_control, "-z", &pid)?;
            run_h2load_count(args, port, load, args.counted_requests)?;
            let before = dumps(&out)?;
            control(&callgrind_control, "-d", &pid)?;
            let dump = dumps(&out)?
                .into_iter()
                .find(|d| !before.contains(d))
                .context("callgrind wrote no dump")?;
            per_request[i] = total_instructions(&dump)? as f64 / args.counted_requests as f64;
        }
        counted.push(Counted { name, per_request });
    }
    Ok(counted)
}

fn control(callgrind_control: &Path, what: &str, pid: &str) -> anyhow::Result<()> {
    let st = Command::new(callgrind_control)
        .args([what, pid])
        .stdout(Stdio::null())
        .status()
        .with_context(|| format!("running {}", callgrind_control.display()))?;
    if !st.success() {
        bail!("{} {what} {pid} failed", callgrind_control.display());
    }
    Ok(())
}

fn dumps(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    Ok(std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("callgrind.out."))
        })
        .collect())
}

/// The `summary:` (or `totals:`) line of a callgrind dump: instructions executed.
fn total_instructions(dump: &Path) -> anyhow::Result<u64> {
    let text = std::fs::read_to_string(dump)?;
    text.lines()
        .find_map(|l| l.strip_prefix("summary:").or(l.strip_prefix("totals:")))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no instruction total in {}", dump.display()))
}

/// `n` requests with h2load, sent as `load` says.
fn run_h2load_count(args: &Args, port: u16, load: &CountedLoad, n: u64) -> anyhow::Result<()> {
    let mut cmd = Command::new(&args.h2load);
    if load.http1 {
        cmd.arg("--h1");
    }
    let out = cmd
        .args(["-n", &n.to_string()])
        .args(["-c", &load.connections.to_string()])
        .args(["-m", &load.in_flight.to_string()])
        .arg(format!("http://127.0.0.1:{port}/"))
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", args.h2load.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let done = format!("{n} succeeded");
    if !out.status.success() || !text.contains(&done) {
        bail!("h2load under callgrind did not get {n} answers: {text}");
    }
    Ok(())
}

fn print_instructions(args: &Args, counted: &[Counted]) {
    if counted.is_empty() {
        return;
    }
    println!(
        "\n### Instructions per request (callgrind, one proxy, {} requests per load after as many to warm up; user space incl. libc)\n",
        args.counted_requests
    );
    let mut head = "| proxy      |".to_string();
    let mut rule = "|------------|".to_string();
    for load in &COUNTED_LOADS {
        head += &format!(" {} |", load.label);
        rule += &format!("{}|", "-".repeat(load.label.len() + 2));
    }
    println!("{head}\n{rule}");
    for c in counted {
        let mut row = format!("| {:<10} |", c.name);
        for (load, n) in COUNTED_LOADS.iter().zip(c.per_request) {
            row += &format!(" {:>w$.0} |", n, w = load.label.len());
        }
        println!("{row}");
    }
}

fn print_tables(args: &Args, results: &[ChainResult]) {
    let direct = &results[0];
    println!(
        "\n### Open loop (oha, {} connections, {} s per rate, latency-corrected; medians of {} rounds), ms\n",
        args.connections,
        args.seconds,
        args.rounds.max(1)
    );
    println!(
        "| chain      |  rate | achieved | errors |    p50 |    p90 |    p99 |  p99.9 | +p50 | +p99 |"
    );
    println!(
        "|------------|-------|----------|--------|--------|--------|--------|--------|------|------|"
    );
    for (i, &rate) in args.rates.iter().enumerate() {
        for r in results {
            let o = &r.open[i];
            let added = |k: usize| {
                if std::ptr::eq(r, direct) {
                    "—".to_string()
                } else {
                    format!("{:+.3}", r.added[i][k])
                }
            };
            println!(
                "| {:<10} | {:>5} | {:>8.0} | {:>6} | {:>6.3} | {:>6.3} | {:>6.3} | {:>6.3} | {} | {} |",
                r.name,
                rate,
                o.achieved,
                o.errors,
                o.pct[0],
                o.pct[1],
                o.pct[2],
                o.pct[3],
                added(0),
                added(2)
            );
        }
    }
    println!(
        "\n### Closed loop max throughput (wrk, 1 thread, {} connections, {} s; medians of {} rounds)\n",
        args.connections,
        args.seconds,
        args.rounds.max(1)
    );
    println!("| chain      |  req/s | rounds' range   | vs direct | p99 ms |");
    println!("|------------|--------|-----------------|-----------|--------|");
    for r in results {
        println!(
            "| {:<10} | {:>6.0} | {:>6.0}–{:<6.0}   | {:>7.0} % | {:>6.3} |",
            r.name,
            r.closed.rps,
            r.closed_range.0,
            r.closed_range.1,
            100.0 * r.closed.rps / direct.closed.rps,
            r.closed.p99_ms
        );
    }
    if results.iter().all(|r| r.http2.is_some()) {
        println!(
            "\n### HTTP/2 (h2load, prior knowledge, 1 thread, {} connections x {} streams, {} s; the proxies speak HTTP/1.1 to nginx; medians of {} rounds)\n",
            args.connections,
            args.h2_streams,
            args.seconds,
            args.rounds.max(1)
        );
        println!("| chain      |  req/s | vs direct | mean ms | max ms | failed | CPU s/1k |");
        println!("|------------|--------|-----------|---------|--------|--------|----------|");
        let direct_rps = direct.http2.as_ref().map_or(f64::NAN, |h| h.rps);
        for r in results {
            if let Some(h) = &r.http2 {
                let cpu = if r.proxies == 0 {
                    "—".to_string()
                } else {
                    format!("{:.3}", h.cpu_per_1k)
                };
                println!(
                    "| {:<10} | {:>6.0} | {:>7.0} % | {:>7.3} | {:>6.2} | {:>6} | {:>8} |",
                    r.name,
                    h.rps,
                    100.0 * h.rps / direct_rps,
                    h.mean_ms,
                    h.max_ms,
                    h.failed,
                    cpu
                );
            }
        }
    }
    println!(
        "\n### Proxy CPU seconds per 1,000 requests (all proxies of the chain) and peak RSS\n"
    );
    let rates: Vec<String> = args.rates.iter().map(|r| format!("{r} rps")).collect();
    println!(
        "| chain      | proxies | {} | closed loop | peak RSS MiB at {} rps (largest proxy) |",
        rates.join(" | "),
        args.rates.first().copied().unwrap_or(0)
    );
    println!(
        "|------------|---------|{}|-------------|------|",
        rates.iter().map(|_| "------").collect::<Vec<_>>().join("|")
    );
    for r in results.iter().filter(|r| r.proxies > 0) {
        let cpu: Vec<String> = r
            .open
            .iter()
            .map(|o| format!("{:.3}", o.cpu_per_1k))
            .collect();
        println!(
            "| {:<10} | {:>7} | {} | {:>11.3} | {:.1} |",
            r.name,
            r.proxies,
            cpu.join(" | "),
            r.closed.cpu_per_1k,
            r.peak_rss_mib
        );
    }
}

/// The goals, judged pair by pair on what was measured in the same stretch of each round:
/// throughput at least HAProxy's (the median of the rounds' ratios at least 100 %) and added
/// p99 no worse (the median of the rounds' differences at most zero). A control pair gets
/// no verdict: its rows are how far apart two identical chains read in the same run.
fn print_pairs(args: &Args, pairs: &[PairResult]) {
    println!(
        "\n### Trellis against HAProxy round by round ({} rounds; the chains with as many hops measured one after another, each first equally often)\n",
        args.rounds.max(1)
    );
    println!("| chains | measure | median of the rounds | rounds' range | first ahead | goal |");
    println!("|--------|---------|----------------------|---------------|-------------|------|");
    let n = args.rounds.max(1);
    for p in pairs {
        let chains = format!("{} / {}", p.chain, p.against);
        let verdict = |met: bool| match (p.control, met) {
            (true, _) => "control",
            (false, true) => "met",
            (false, false) => "missed",
        };
        let ratio_row = |measure: &str, v: &[f64]| {
            if v.is_empty() {
                return;
            }
            let (lo, hi) = range(v);
            let med = median(v.to_vec());
            println!(
                "| {chains} | {measure} | {:.1} % | {:.1}–{:.1} % | {} of {n} | {} |",
                100.0 * med,
                100.0 * lo,
                100.0 * hi,
                v.iter().filter(|&&x| x >= 1.0).count(),
                verdict(med >= 1.0)
            );
        };
        ratio_row("closed loop req/s", &p.closed_ratio);
        ratio_row("HTTP/2 req/s", &p.http2_ratio);
        for (rate, v) in args.rates.iter().zip(&p.p99_diff) {
            let (lo, hi) = range(v);
            let med = median(v.clone());
            println!(
                "| {chains} | added p99 at {rate} rps | {med:+.3} ms | {lo:+.3} to {hi:+.3} ms | {} of {n} | {} |",
                v.iter().filter(|&&x| x <= 0.0).count(),
                verdict(med <= 0.0)
            );
        }
    }
}

/// Lowest and highest of `v`.
fn range(v: &[f64]) -> (f64, f64) {
    (
        v.iter().copied().fold(f64::INFINITY, f64::min),
        v.iter().copied().fold(f64::NEG_INFINITY, f64::max),
    )
}

#[cfg(test)]
mod tests {
    use super::{GROUPS, PAIRS, round_order};

    #[test]
    fn every_chain_takes_every_place_in_its_group_equally_often() {
        let rounds = 6;
        let orders: Vec<Vec<usize>> = (0..rounds).map(|r| round_order(r, &GROUPS)).collect();
        assert_eq!(orders[0], vec![0, 1, 3, 5, 2, 4, 6]);
        assert_eq!(orders[1], vec![0, 5, 3, 1, 6, 4, 2]);
        for o in &orders {
            let mut chains = o.clone();
            chains.sort_unstable();
            assert_eq!(chains, (0..7).collect::<Vec<_>>(), "round order {o:?}");
            assert_eq!(o[0], 0, "direct first: {o:?}");
        }
        for group in GROUPS {
            for &chain in group {
                let mut places = std::collections::BTreeMap::new();
                for o in &orders {
                    let start = group
                        .iter()
                        .map(|c| o.iter().position(|x| x == c).unwrap())
                        .min()
                        .unwrap();
                    let at = o.iter().position(|&x| x == chain).unwrap() - start;
                    *places.entry(at).or_insert(0) += 1;
                }
                let counts: Vec<usize> = places.values().copied().collect();
                assert_eq!(
                    places.len(),
                    group.len(),
                    "chain {chain} took places {places:?}"
                );
                assert!(
                    counts.iter().all(|&c| c == rounds / group.len()),
                    "chain {chain} took places {places:?}"
                );
            }
        }
        // Every compared pair: each chain measured before the other in half the rounds,
        // and in each two rounds in a row.
        for p in PAIRS {
            for two in orders.chunks(2) {
                let first: Vec<bool> = two
                    .iter()
                    .map(|o| {
                        o.iter().position(|&x| x == p.chain)
                            < o.iter().position(|&x| x == p.against)
                    })
                    .collect();
                assert_ne!(
                    first[0], first[1],
                    "pair {}/{} in {two:?}",
                    p.chain, p.against
                );
            }
        }
    }
}

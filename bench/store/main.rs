//! bench-store: a three-server Trellis cluster and a three-member etcd 3.4 cluster on
//! loopback, both fsyncing every commit, driven by the same load driver: one client
//! writing to the leader, then many clients spread over all members. Prints writes/s
//! and latency percentiles side by side.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use hdrhistogram::Histogram;
use tonic::transport::Channel;
use trellis_bench::{Processes, free_port, grpc_channel, spawn};
use trellis_raft_store::pb as store_pb;

mod etcd_pb {
    tonic::include_proto!("etcdserverpb");
}

#[derive(Parser)]
#[command(about = "Trellis's replicated store against etcd, side by side")]
struct Args {
    /// The trellis binary (default: the one built beside this benchmark).
    #[arg(long)]
    trellis: Option<PathBuf>,
    /// The etcd binary (Debian: apt-get install etcd-server).
    #[arg(long, default_value = "etcd")]
    etcd: PathBuf,
    /// Puts of the single-client run.
    #[arg(long, default_value_t = 10_000)]
    single_puts: usize,
    /// Clients of the concurrent run.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Puts of the concurrent run, over all clients.
    #[arg(long, default_value_t = 100_000)]
    concurrent_puts: usize,
    #[arg(long, default_value_t = 256)]
    value_size: usize,
    /// Where the data dirs go (default: a temporary directory under /var/tmp, on disk).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Keep the data dirs and server logs after the run (their path is printed).
    #[arg(long)]
    keep: bool,
    /// Runs of each size per system, taken in turn (trellis, etcd, trellis, ...) so a
    /// slow spell of the machine falls on both; the table shows the median rate.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// A second trellis binary to run beside the first (to compare two builds).
    #[arg(long)]
    also_trellis: Option<PathBuf>,
}

/// A started cluster: its members' client addresses, the leader's first.
struct Started {
    procs: Processes,
    leader: String,
    members: Vec<String>,
}

async fn start_trellis(bin: &Path, dir: &Path) -> anyhow::Result<Started> {
    let mut procs = Processes(Vec::new());
    let cluster = trellis_bench::start_trellis_cluster(bin, dir, &mut procs).await?;
    Ok(Started {
        procs,
        leader: cluster.leader,
        members: cluster.grpc,
    })
}

async fn start_etcd(bin: &Path, dir: &Path) -> anyhow::Result<Started> {
    let mut procs = Processes(Vec::new());
    let client: Vec<u16> = (0..3).map(|_| free_port()).collect::<Result<_, _>>()?;
    let peer: Vec<u16> = (0..3).map(|_| free_port()).collect::<Result<_, _>>()?;
    let initial = (0..3)
        .map(|i| format!("e{i}=http://127.0.0.1:{}", peer[i]))
        .collect::<Vec<_>>()
        .join(",");
    for i in 0..3 {
        let args = vec![
            "--name".to_string(),
            format!("e{i}"),
            "--data-dir".into(),
            dir.join(format!("etcd{i}")).display().to_string(),
            "--listen-client-urls".into(),
            format!("http://127.0.0.1:{}", client[i]),
            "--advertise-client-urls".into(),
            format!("http://127.0.0.1:{}", client[i]),
            "--listen-peer-urls".into(),
            format!("http://127.0.0.1:{}", peer[i]),
            "--initial-advertise-peer-urls".into(),
            format!("http://127.0.0.1:{}", peer[i]),
            "--initial-cluster".into(),
            initial.clone(),
            "--initial-cluster-state".into(),
            "new".into(),
            "--quota-backend-bytes".into(),
            (8u64 << 30).to_string(),
            "--log-level".into(),
            "warn".into(),
        ];
        procs
            .0
            .push(spawn(bin, &args, &dir.join(format!("etcd{i}.log")))?);
    }
    let members: Vec<String> = client.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut leader = None;
        let mut answered = 0;
        for m in &members {
            if let Ok(ch) = grpc_channel(m).await {
                let mut c = etcd_pb::maintenance_client::MaintenanceClient::new(ch);
                if let Ok(r) = c.status(etcd_pb::StatusRequest {}).await {
                    let r = r.into_inner();
                    answered += 1;
                    let me = r.header.map(|h| h.member_id).unwrap_or(0);
                    if r.leader != 0 && r.leader == me {
                        leader = Some(m.clone());
                    }
                }
            }
        }
        if answered == 3
            && let Some(leader) = leader
        {
            return Ok(Started {
                procs,
                leader,
                members,
            });
        }
        if Instant::now() > deadline {
            bail!(
                "the etcd cluster did not form within 60s; logs in {}",
                dir.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum System {
    Trellis,
    Etcd,
}

enum Writer {
    Trellis(store_pb::kv_client::KvClient<Channel>),
    Etcd(etcd_pb::kv_client::KvClient<Channel>),
}

impl Writer {
    async fn connect(system: System, addr: &str) -> anyhow::Result<Writer> {
        let ch = grpc_channel(addr).await?;
        Ok(match system {
            System::Trellis => Writer::Trellis(store_pb::kv_client::KvClient::new(ch)),
            System::Etcd => Writer::Etcd(etcd_pb::kv_client::KvClient::new(ch)),
        })
    }

    async fn put(&mut self, key: Vec<u8>, value: Vec<u8>) -> anyhow::Result<()> {
        match self {
            Writer::Trellis(c) => {
                c.put(store_pb::PutRequest { key, value }).await?;
            }
            Writer::Etcd(c) => {
                c.put(etcd_pb::PutRequest {
                    key,
                    value,
                    ..Default::default()
                })
                .await?;
            }
        }
        Ok(())
    }
}

struct Outcome {
    writes_per_sec: f64,
    latency: Histogram<u64>,
}

/// `clients` clients, client i on `targets[i % len]`, writing `total` puts in all.
async fn drive(
    system: System,
    targets: &[String],
    clients: usize,
    total: usize,
    value_size: usize,
    tag: &str,
) -> anyhow::Result<Outcome> {
    let mut writers = Vec::with_capacity(clients);
    for i in 0..clients {
        writers.push(Writer::connect(system, &targets[i % targets.len()]).await?);
    }
    let per_client = total / clients;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (c, mut w) in writers.into_iter().enumerate() {
        let tag = tag.to_string();
        tasks.push(tokio::spawn(async move {
            let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
            let value = vec![b'v'; value_size];
            for i in 0..per_client {
                let key = format!("bench/{tag}/{c:03}/{i:07}").into_bytes();
                let t = Instant::now();
                w.put(key, value.clone()).await?;
                h.record(u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX))?;
            }
            anyhow::Ok(h)
        }));
    }
    let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for t in tasks {
        latency.add(t.await??)?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    Ok(Outcome {
        writes_per_sec: (per_client * clients) as f64 / elapsed,
        latency,
    })
}

fn ms(us: u64) -> String {
    format!("{:.2}", us as f64 / 1000.0)
}

/// CPU seconds the cluster's processes have used so far.
fn cluster_cpu(started: &Started) -> f64 {
    started
        .procs
        .pids()
        .iter()
        .map(|p| trellis_bench::cpu_ticks(&p.to_string()))
        .sum::<f64>()
        / 100.0
}

/// All rounds of one size on one system.
struct Runs {
    rates: Vec<f64>,
    latency: Histogram<u64>,
    writes: usize,
    cpu_secs: f64,
}

impl Runs {
    fn new() -> anyhow::Result<Runs> {
        Ok(Runs {
            rates: Vec::new(),
            latency: Histogram::new_with_bounds(1, 60_000_000, 3)?,
            writes: 0,
            cpu_secs: 0.0,
        })
    }

    fn median_rate(&self) -> f64 {
        let mut r = self.rates.clone();
        r.sort_by(f64::total_cmp);
        r.get(r.len() / 2).copied().unwrap_or(0.0)
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let trellis = trellis_bench::trellis_bin(args.trellis.as_deref())?;
    if Command::new(&args.etcd).arg("--version").output().is_err() {
        bail!(
            "{} not found: apt-get install etcd-server",
            args.etcd.display()
        );
    }
    let parent = args
        .dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("/var/tmp"));
    std::fs::create_dir_all(&parent).with_context(|| format!("creating {}", parent.display()))?;
    let base = tempfile::tempdir_in(&parent)
        .with_context(|| format!("making a data dir under {}", parent.display()))?;
    if args.keep {
        eprintln!("keeping data dirs and logs in {}", base.path().display());
    }
    let mut systems: Vec<(String, System, Started)> = Vec::new();
    let mut starts: Vec<(String, System, Option<PathBuf>)> =
        vec![("trellis".into(), System::Trellis, Some(trellis))];
    if let Some(b) = &args.also_trellis {
        starts.push(("trellis B".into(), System::Trellis, Some(b.clone())));
    }
    starts.push(("etcd 3.4".into(), System::Etcd, None));
    for (name, system, bin) in starts {
        let dir = base.path().join(name.replace(' ', "-"));
        std::fs::create_dir_all(&dir)?;
        let cluster = match (system, bin) {
            (System::Trellis, Some(bin)) => start_trellis(&bin, &dir).await?,
            _ => start_etcd(&args.etcd, &dir).await?,
        };
        eprintln!("{name}: cluster up, leader {}", cluster.leader);
        drive(
            system,
            std::slice::from_ref(&cluster.leader),
            1,
            200,
            args.value_size,
            "warmup",
        )
        .await?;
        systems.push((name, system, cluster));
    }
    let sizes = [
        (
            format!("1 client x {} puts", args.single_puts),
            1,
            args.single_puts,
            true,
        ),
        (
            format!("{} clients x {} puts", args.clients, args.concurrent_puts),
            args.clients,
            args.concurrent_puts,
            false,
        ),
    ];
    let mut rows = Vec::new();
    for (run, clients, puts, to_leader) in &sizes {
        let mut runs: Vec<Runs> = (0..systems.len())
            .map(|_| Runs::new())
            .collect::<Result<_, _>>()?;
        for round in 0..args.rounds.max(1) {
            for (i, (name, system, cluster)) in systems.iter().enumerate() {
                let targets = if *to_leader {
                    std::slice::from_ref(&cluster.leader)
                } else {
                    &cluster.members[..]
                };
                let cpu_before = cluster_cpu(cluster);
                let tag = format!("r{round}-{clients}");
                let o = drive(*system, targets, *clients, *puts, args.value_size, &tag).await?;
                let r = &mut runs[i];
                r.cpu_secs += cluster_cpu(cluster) - cpu_before;
                r.writes += puts / clients * clients;
                r.rates.push(o.writes_per_sec);
                r.latency.add(o.latency)?;
                eprintln!(
                    "{name}: {run}, round {}: {:.0} writes/s",
                    round + 1,
                    o.writes_per_sec
                );
            }
        }
        for ((name, _, _), r) in systems.iter().zip(runs) {
            rows.push((run.clone(), name.clone(), r));
        }
    }
    println!(
        "store: 3 servers on loopback, fsync on, {}-byte values, gRPC put, one driver for all; \
         median of {} rounds taken in turn, latency over all rounds, CPU of the 3 servers",
        args.value_size,
        args.rounds.max(1)
    );
    println!(
        "| {:<26} | {:<9} | {:>9} | {:>7} | {:>7} | {:>8} | {:>7} | {:>13} |",
        "run", "system", "writes/s", "p50 ms", "p99 ms", "p99.9 ms", "max ms", "CPU s/1k puts"
    );
    println!(
        "|{:-<28}|{:-<11}|{:->11}|{:->9}|{:->9}|{:->10}|{:->9}|{:->15}|",
        "", "", "", "", "", "", "", ""
    );
    for (run, name, r) in &rows {
        println!(
            "| {:<26} | {:<9} | {:>9.0} | {:>7} | {:>7} | {:>8} | {:>7} | {:>13.3} |",
            run,
            name,
            r.median_rate(),
            ms(r.latency.value_at_quantile(0.50)),
            ms(r.latency.value_at_quantile(0.99)),
            ms(r.latency.value_at_quantile(0.999)),
            ms(r.latency.max()),
            r.cpu_secs * 1000.0 / r.writes.max(1) as f64,
        );
    }
    drop(systems);
    if args.keep {
        let _ = base.keep();
    }
    Ok(())
}

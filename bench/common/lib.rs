//! What every benchmark does the same way: find the `trellis` binary, pick free ports,
//! start peer programs with their output in a log file, and stop them all at the end.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tonic::transport::{Channel, Endpoint};
use trellis_raft_store::pb as store_pb;

/// Child processes, stopped when dropped: SIGTERM, then SIGKILL after 2 s, so servers get a
/// chance to shut down cleanly and nothing outlives the benchmark.
#[derive(Default)]
pub struct Processes(pub Vec<Child>);

impl Processes {
    pub fn pids(&self) -> Vec<u32> {
        self.0.iter().map(Child::id).collect()
    }

    /// Sends SIGTERM to every process, waits up to `within` for them to exit, kills what is
    /// still running, and says which did not exit cleanly (none: an empty list).
    pub fn stop(&mut self, within: Duration) -> Vec<String> {
        let mut children = std::mem::take(&mut self.0);
        for c in &children {
            if let Ok(pid) = i32::try_from(c.id()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
        }
        let deadline = Instant::now() + within;
        let mut unclean = Vec::new();
        for c in &mut children {
            loop {
                match c.try_wait() {
                    Ok(Some(status)) => {
                        if !status.success() {
                            unclean.push(format!("pid {} exited with {status}", c.id()));
                        }
                        break;
                    }
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    _ => {
                        let _ = c.kill();
                        let _ = c.wait();
                        unclean.push(format!(
                            "pid {} was still running {} s after SIGTERM",
                            c.id(),
                            within.as_secs()
                        ));
                        break;
                    }
                }
            }
        }
        unclean
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(2));
    }
}

/// A port the OS says is free now (the benchmark's peers need it on their command line).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Starts `bin ARGS` with stdout and stderr in `log`.
pub fn spawn(bin: &Path, args: &[String], log: &Path) -> anyhow::Result<Child> {
    let out = std::fs::File::create(log)?;
    Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))
}

/// The `trellis` binary: the one given, or the one built beside the benchmark.
pub fn trellis_bin(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    let bin = match given {
        Some(p) => p.to_owned(),
        None => std::env::current_exe()?
            .parent()
            .context("benchmark binary dir")?
            .join("trellis"),
    };
    if !bin.exists() {
        bail!(
            "{} not found: cargo build --release -p trellis -p trellis-bench",
            bin.display()
        );
    }
    Ok(bin)
}

/// Three `trellis server` processes on loopback forming one cluster by `--bootstrap-expect`,
/// each on ports the OS picks (read back from its `listening` line), data dirs and logs under
/// `dir`. Returns their gRPC and admin HTTP addresses.
pub fn spawn_trellis_cluster(
    bin: &Path,
    dir: &Path,
    procs: &mut Processes,
) -> anyhow::Result<(Vec<String>, Vec<String>)> {
    let (mut grpc, mut admin) = (Vec::new(), Vec::new());
    for i in 0..3 {
        let mut args = vec![
            "server".to_string(),
            "--data-dir".into(),
            dir.join(format!("trellis{i}")).display().to_string(),
            "--grpc-addr".into(),
            "127.0.0.1:0".into(),
            "--http-addr".into(),
            "127.0.0.1:0".into(),
            "--bootstrap-expect".into(),
            "3".into(),
        ];
        if let Some(first) = grpc.first() {
            args.extend(["--join".to_string(), String::clone(first)]);
        }
        let log = dir.join(format!("trellis{i}.log"));
        procs.0.push(spawn(bin, &args, &log)?);
        let child = procs.0.last_mut().context("the server just started")?;
        let (g, h) = wait_for_line(&log, child, "trellis server", |line| {
            line.starts_with("listening ")
                .then(|| Some((field(line, "grpc")?, field(line, "http")?)))
                .flatten()
        })?;
        grpc.push(g);
        admin.push(h);
    }
    Ok((grpc, admin))
}

/// Waits up to 30 s for the first line of `log` that `pick` makes something of: how a process
/// started on port 0 says where it listens.
pub fn wait_for_line<T>(
    log: &Path,
    child: &mut Child,
    what: &str,
    pick: impl Fn(&str) -> Option<T>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(found) = text.lines().find_map(&pick) {
            return Ok(found);
        }
        if let Ok(Some(status)) = child.try_wait() {
            bail!(
                "{what} exited ({status}) before saying where it listens; log in {}",
                log.display()
            );
        }
        if Instant::now() > deadline {
            bail!(
                "{what} did not say where it listens within 30 s; log in {}",
                log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The value of `key=value` among a log line's words.
pub fn field(line: &str, key: &str) -> Option<String> {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=').map(str::to_string))
}

/// A gRPC channel to `addr` (`host:port`, plain text), Nagle off.
pub async fn grpc_channel(addr: &str) -> anyhow::Result<Channel> {
    Ok(Endpoint::from_shared(format!("http://{addr}"))?
        .tcp_nodelay(true)
        .connect()
        .await?)
}

/// A started three-server cluster: the members' gRPC and admin HTTP addresses, and the
/// leader's gRPC address.
pub struct TrellisCluster {
    pub grpc: Vec<String>,
    pub admin: Vec<String>,
    pub leader: String,
}

/// Starts three `trellis server` processes (`spawn_trellis_cluster`) and waits up to 60 s
/// until they have a leader and three voters.
pub async fn start_trellis_cluster(
    bin: &Path,
    dir: &Path,
    procs: &mut Processes,
) -> anyhow::Result<TrellisCluster> {
    let (grpc, admin) = spawn_trellis_cluster(bin, dir, procs)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(ch) = grpc_channel(&grpc[0]).await {
            let mut c = store_pb::cluster_client::ClusterClient::new(ch);
            if let Ok(r) = c.members(store_pb::MembersRequest {}).await {
                let r = r.into_inner();
                if r.has_leader && r.members.iter().filter(|m| m.voter).count() == 3 {
                    let leader = r
                        .members
                        .iter()
                        .find(|m| m.node_id == r.leader_id)
                        .map(|m| m.addr.clone())
                        .context("leader not among members")?;
                    return Ok(TrellisCluster {
                        grpc,
                        admin,
                        leader,
                    });
                }
            }
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

/// utime + stime of a process (`/proc/PID/stat`; `self` for this one), in clock ticks.
pub fn cpu_ticks(pid: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state is field 3, utime 14, stime 15 (1-based in proc(5)).
    let ticks = |i: usize| {
        f.get(i - 3)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    ticks(14) + ticks(15)
}

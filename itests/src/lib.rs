//! Support for tests that run the real `trellis` binary: start servers on loopback
//! ports chosen by the OS, read back where they listen, kill them, restart them, and
//! talk to their admin API. Every wait has a deadline and fails loudly.
#![forbid(unsafe_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// The `trellis` binary built for this test run.
pub fn trellis_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("TRELLIS_BIN") {
        return PathBuf::from(p);
    }
    // Test binaries live in target/<profile>/deps; the binary one level up.
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let bin = dir.join("trellis");
    assert!(
        bin.exists(),
        "{} is missing: build it first (cargo build -p trellis), or set TRELLIS_BIN",
        bin.display()
    );
    bin
}

/// Installs the one TLS provider the HTTP client uses.
pub fn init_tls() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A `trellis server` process.
pub struct ServerProcess {
    pub data_dir: PathBuf,
    pub node_id: u64,
    pub grpc: String,
    pub http: String,
    pub args: Vec<String>,
    pub process: Running,
}

impl ServerProcess {
    /// Starts a server and waits until it prints where it listens.
    pub fn start(
        data_dir: &Path,
        grpc: &str,
        http: &str,
        extra: &[String],
    ) -> anyhow::Result<ServerProcess> {
        let mut args = vec![
            "server".to_string(),
            "--data-dir".into(),
            data_dir.display().to_string(),
            "--grpc-addr".into(),
            grpc.into(),
            "--http-addr".into(),
            http.into(),
        ];
        args.extend_from_slice(extra);
        let (child, output, line) = start_until(
            &args,
            |l| l.starts_with("listening "),
            "server did not print where it listens",
        )?;
        let field = |k: &str| {
            line.split_whitespace()
                .find_map(|kv| kv.strip_prefix(&format!("{k}=")).map(str::to_string))
                .with_context(|| format!("no {k}= in '{line}'"))
        };
        Ok(ServerProcess {
            data_dir: data_dir.to_path_buf(),
            node_id: field("node_id")?.parse()?,
            grpc: field("grpc")?,
            http: field("http")?,
            args,
            process: Running::new(child, output),
        })
    }

    /// Sends a signal (SIGSTOP freezes the process with its sockets open: a stalled peer).
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        self.process.signal(signal);
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.http, path)
    }

    /// SIGKILL: no chance to flush or say goodbye.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Starts the same server again on the same ports and data dir.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        let extra: Vec<String> = self.args[7..].to_vec();
        let again = ServerProcess::start(&self.data_dir, &self.grpc, &self.http, &extra)?;
        *self = again;
        Ok(())
    }

    pub fn log(&self) -> String {
        self.process.log()
    }
}

/// Starts `trellis ARGS` and waits (20 s at most) for the stdout line that says it runs.
fn start_until(
    args: &[String],
    ready: impl Fn(&str) -> bool,
    what: &str,
) -> anyhow::Result<(Child, Output, String)> {
    let (mut child, output, rx) = spawn_captured(args)?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if ready(&line) => return Ok((child, output, line)),
            Ok(_) => {}
            Err(_) => {
                let _ = child.kill();
                let status = child.wait().ok();
                bail!(
                    "{what} within 20s (exit: {status:?}); output:\n{}",
                    output.lock().unwrap_or_else(|p| p.into_inner()).join("\n")
                );
            }
        }
    }
}

/// Every line a process printed, stdout and stderr.
pub type Output = Arc<Mutex<Vec<String>>>;

type Captured = (Child, Output, std::sync::mpsc::Receiver<String>);

/// Starts `trellis ARGS`, keeping every line of its stdout and stderr; stdout lines are
/// also sent to the receiver as they come, for waiting on a line.
fn spawn_captured(args: &[String]) -> anyhow::Result<Captured> {
    let mut child = Command::new(trellis_bin())
        .args(args)
        .env_remove("TRELLIS_ADDR")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .with_context(|| format!("spawning trellis {}", args.first().map_or("", |a| a)))?;
    let output = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let stdout = child.stdout.take().context("stdout")?;
    let stderr = child.stderr.take().context("stderr")?;
    {
        let output = output.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                output
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(line.clone());
                let _ = tx.send(line);
            }
        });
    }
    {
        let output = output.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                output.lock().unwrap_or_else(|p| p.into_inner()).push(line);
            }
        });
    }
    Ok((child, output, rx))
}

/// A `trellis agent` process with its config file and data dir.
pub struct AgentProcess {
    pub node: String,
    pub args: Vec<String>,
    pub process: Running,
}

impl AgentProcess {
    /// Starts an agent and waits until it prints that it runs.
    pub fn start(
        node: &str,
        servers: &[String],
        data_dir: &Path,
        config: &Path,
    ) -> anyhow::Result<AgentProcess> {
        Self::start_with(node, servers, data_dir, config, &[])
    }

    /// As [`AgentProcess::start`], with more flags.
    pub fn start_with(
        node: &str,
        servers: &[String],
        data_dir: &Path,
        config: &Path,
        extra: &[&str],
    ) -> anyhow::Result<AgentProcess> {
        let mut args = vec!["agent".to_string()];
        for s in servers {
            args.extend(["--server".to_string(), s.clone()]);
        }
        args.extend([
            "--node".to_string(),
            node.to_string(),
            "--data-dir".into(),
            data_dir.display().to_string(),
            "--config".into(),
            config.display().to_string(),
        ]);
        args.extend(extra.iter().map(|s| s.to_string()));
        Self::spawn(node, args)
    }

    /// Waits for the process to exit by itself; `None` if it is still running at the deadline.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        self.process.wait_exit(within)
    }

    /// A standalone `trellis proxy --agent ADDR --config FILE`, fed by an agent. Its data dir
    /// is `<name>-data` beside the config: the process is SIGKILLed when dropped, so a
    /// temporary dir of its own would be left behind.
    pub fn sidecar(name: &str, agent: &str, config: &Path) -> anyhow::Result<AgentProcess> {
        let data_dir = config
            .parent()
            .unwrap_or(Path::new("."))
            .join(format!("{name}-data"));
        let args = vec![
            "proxy".to_string(),
            "--agent".into(),
            agent.to_string(),
            "--config".into(),
            config.display().to_string(),
            "--data-dir".into(),
            data_dir.display().to_string(),
        ];
        Self::spawn(name, args)
    }

    /// `trellis dev ARGS`, once it says the mesh is up (it prints its demo URLs then).
    pub fn dev(args: &[&str]) -> anyhow::Result<AgentProcess> {
        let mut all = vec!["dev".to_string()];
        all.extend(args.iter().map(|s| s.to_string()));
        Self::spawn("dev", all)
    }

    /// The stdout lines the process printed so far.
    pub fn stdout_lines(&self) -> Vec<String> {
        self.process.lines()
    }

    /// A `key=value` field of the line the process printed when it started.
    pub fn started_field(&self, key: &str) -> Option<String> {
        let first = self
            .process
            .lines()
            .into_iter()
            .find(|l| l.starts_with("agent ") || l.starts_with("proxy "))?;
        first
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{key}=")).map(str::to_string))
    }

    fn spawn(node: &str, args: Vec<String>) -> anyhow::Result<AgentProcess> {
        let (child, output, _) = start_until(
            &args,
            |l| {
                l.starts_with("agent ")
                    || l.starts_with("proxy ")
                    || l.starts_with("Trellis dev mesh is up")
            },
            &format!("{node} did not start"),
        )?;
        Ok(AgentProcess {
            node: node.to_string(),
            args,
            process: Running::new(child, output),
        })
    }

    /// Sends a signal (SIGSTOP freezes the process with its sockets open: a stalled peer).
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        self.process.signal(signal);
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Starts the same agent again with the same data dir and config.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        *self = Self::spawn(&self.node.clone(), self.args.clone())?;
        Ok(())
    }

    /// Where the proxy's listener `name` is bound now, from the proxy's own log line
    /// (`listening listener=NAME local=ADDR`); the newest such line wins.
    pub fn listener(&self, name: &str) -> Option<String> {
        let key = format!("listener={name} ");
        self.process
            .output
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .rev()
            .find(|l| l.contains("listening") && l.contains(&key))
            .and_then(|l| {
                l.split_whitespace()
                    .find_map(|kv| kv.strip_prefix("local=").map(str::to_string))
            })
    }

    pub fn log(&self) -> String {
        self.process.log()
    }
}

/// A started process with everything it printed; killed (SIGKILL) when dropped.
pub struct Running {
    child: Option<Child>,
    pub output: Output,
}

impl Running {
    fn new(child: Child, output: Output) -> Self {
        Running {
            child: Some(child),
            output,
        }
    }

    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        if let Some(c) = &self.child
            && let Ok(pid) = i32::try_from(c.id())
        {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal);
        }
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits for the process to exit by itself; `None` if it still runs at the deadline.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn lines(&self) -> Vec<String> {
        self.output
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn log(&self) -> String {
        self.lines().join("\n")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs `trellis ARGS` to completion with a deadline; returns (exit code, stdout, stderr).
pub fn run_trellis(
    args: &[&str],
    env: &[(&str, &str)],
    within: Duration,
) -> anyhow::Result<(i32, String, String)> {
    run_trellis_with_stdin(args, env, None, within)
}

/// As [`run_trellis`], with `stdin` written to the process's standard input (then closed).
/// `TRELLIS_ADDR` and `TRELLIS_TOKEN` are removed from the inherited environment so only
/// what the test passes reaches the binary.
pub fn run_trellis_with_stdin(
    args: &[&str],
    env: &[(&str, &str)],
    stdin: Option<&str>,
    within: Duration,
) -> anyhow::Result<(i32, String, String)> {
    let mut cmd = Command::new(trellis_bin());
    cmd.args(args)
        .env_remove("TRELLIS_ADDR")
        .env_remove("TRELLIS_TOKEN")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().context("spawning trellis")?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        let text = text.to_string();
        // A thread, so a child that does not read cannot block the test on a full pipe.
        std::thread::spawn(move || {
            use std::io::Write;
            let _ = pipe.write_all(text.as_bytes());
        });
    }
    // Readers drain both pipes as the child writes, so a long answer cannot fill a pipe
    // and stall the child until the deadline.
    let drain = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let stdout = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
    );
    let stderr = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
    );
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok((
                status.code().unwrap_or(-1),
                stdout.join().unwrap_or_default(),
                stderr.join().unwrap_or_default(),
            ));
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "trellis {args:?} did not finish within {within:?}; stdout:\n{}\nstderr:\n{}",
                stdout.join().unwrap_or_default(),
                stderr.join().unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Three servers on loopback forming a cluster by bootstrap-expect.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub servers: Vec<ServerProcess>,
}

impl Cluster {
    pub fn start(extra: &[&str]) -> anyhow::Result<Cluster> {
        let dir = tempfile::tempdir()?;
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let mut first_args = vec!["--bootstrap-expect".to_string(), "3".into()];
        first_args.extend(extra.clone());
        let first = ServerProcess::start(
            &dir.path().join("s1"),
            "127.0.0.1:0",
            "127.0.0.1:0",
            &first_args,
        )?;
        let mut servers = vec![first];
        for i in 2..=3 {
            let mut args = vec![
                "--bootstrap-expect".to_string(),
                "3".into(),
                "--join".into(),
                servers[0].grpc.clone(),
            ];
            args.extend(extra.clone());
            servers.push(ServerProcess::start(
                &dir.path().join(format!("s{i}")),
                "127.0.0.1:0",
                "127.0.0.1:0",
                &args,
            )?);
        }
        Ok(Cluster { dir, servers })
    }
}

/// Applies YAML through a server's admin API; returns the revision it was stored at.
pub async fn apply(server: &ServerProcess, yaml: &str) -> u64 {
    let r = http()
        .post(server.url("/v1/apply"))
        .body(yaml.to_string())
        .send()
        .await
        .expect("the admin API answers");
    let status = r.status();
    let index = r
        .headers()
        .get("x-trellis-index")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    assert!(
        status.is_success(),
        "apply failed: {}",
        r.text().await.unwrap_or_default()
    );
    index.expect("X-Trellis-Index on every answer")
}

/// As [`apply`], retried until it succeeds within 30 s (a cluster electing a leader).
pub async fn apply_when_possible(server: &ServerProcess, yaml: &str, what: &str) -> u64 {
    eventually(Duration::from_secs(30), what, || async {
        let r = http()
            .post(server.url("/v1/apply"))
            .body(yaml.to_string())
            .send()
            .await
            .ok()?;
        if !r.status().is_success() {
            return None;
        }
        r.headers()
            .get("x-trellis-index")?
            .to_str()
            .ok()?
            .parse::<u64>()
            .ok()
    })
    .await
}

/// An HTTP client of the admin API with short timeouts.
pub fn http() -> reqwest::Client {
    init_tls();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .connect_timeout(Duration::from_secs(2))
        .build()
        .expect("http client")
}

/// Polls `check` every 50 ms until it returns `Some`, or fails with `what` after `within`.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {within:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The admin API's view of the cluster.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Status {
    pub leader: Option<u64>,
    pub members: Vec<Member>,
}

#[derive(Debug, Clone, serde::Deserialize)]
pub struct Member {
    pub id: u64,
    pub address: String,
    pub voter: bool,
    pub leader: bool,
    pub last_index: Option<u64>,
}

pub async fn status(client: &reqwest::Client, server: &ServerProcess) -> Option<Status> {
    let r = client
        .get(server.url("/v1/operator/raft/configuration"))
        .send()
        .await
        .ok()?;
    if !r.status().is_success() {
        return None;
    }
    r.json().await.ok()
}

/// Lists every file under `dir` with its size and modification time, to show that
/// nothing in it changed.
pub fn snapshot_dir(dir: &Path) -> Vec<(PathBuf, u64, Option<std::time::SystemTime>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            let Ok(meta) = e.metadata() else { continue };
            if meta.is_dir() {
                stack.push(p.clone());
            }
            out.push((p, meta.len(), meta.modified().ok()));
        }
    }
    out.sort();
    out
}

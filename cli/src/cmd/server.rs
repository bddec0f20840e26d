//! `trellis server`.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use trellis_server::{RunningServer, ServerConfig};

#[derive(Args, Debug)]
pub struct ServerArgs {
    /// Where this server keeps its Raft log and state.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// gRPC listener for agents and the other servers.
    #[arg(long, default_value = "127.0.0.1:8502")]
    pub grpc_addr: String,
    /// Admin HTTP API listener.
    #[arg(long, default_value = "127.0.0.1:8500")]
    pub http_addr: String,
    /// The gRPC address the other servers reach this one at (default: the bound --grpc-addr).
    #[arg(long)]
    pub advertise_addr: Option<String>,
    /// Form a new cluster once this many servers see each other.
    #[arg(long, default_value_t = 0)]
    pub bootstrap_expect: u32,
    /// The gRPC address of another server, to form or join a cluster through (repeatable).
    #[arg(long, num_args = 1..)]
    pub join: Vec<String>,
    /// A fixed node id (default: a random one, kept in the data dir).
    #[arg(long)]
    pub node_id: Option<u64>,
    /// Revisions of watch history to keep before compacting.
    #[arg(long, default_value_t = 100_000)]
    pub history_revisions: u64,
    /// Applied entries between snapshots (the log before a snapshot is purged).
    #[arg(long, default_value_t = 50_000)]
    pub snapshot_every: u64,
    /// A file holding the token every admin API request must carry (x-trellis-token or
    /// Authorization: Bearer), except GET /v1/status/*. Without it the API is open.
    #[arg(long)]
    pub acl_token_file: Option<PathBuf>,
    /// How often the server pings each agent's stream; an agent silent for three of these
    /// is cut off, and an agent that hears nothing for three reconnects elsewhere.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub discovery_ping_interval: Duration,
    /// A push an agent has not answered (ACK or NACK) by then ends its stream.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    pub discovery_push_deadline: Duration,
}

impl ServerArgs {
    pub fn config(&self) -> ServerConfig {
        let mut c = ServerConfig::new(&self.data_dir);
        c.grpc_addr = self.grpc_addr.clone();
        c.http_addr = self.http_addr.clone();
        c.advertise_addr = self.advertise_addr.clone();
        c.bootstrap_expect = self.bootstrap_expect;
        c.join = self.join.clone();
        c.node_id = self.node_id;
        c.history_revisions = self.history_revisions;
        c.snapshot_every = self.snapshot_every;
        c.acl_token_file = self.acl_token_file.clone();
        c.discovery.stream.ping_interval = self.discovery_ping_interval;
        c.discovery.stream.push_deadline = self.discovery_push_deadline;
        c
    }
}

/// Prints where the server listens, then (in the background) a line once it is in a
/// cluster with a leader, and tells systemd it is ready.
pub fn announce(server: &RunningServer) {
    println!(
        "listening node_id={} grpc={} http={}",
        server.node.id(),
        server.grpc_addr,
        server.http_addr
    );
    let node = server.node.clone();
    tokio::spawn(async move {
        loop {
            if node.wait_ready(Duration::from_secs(3600)).await.is_ok() {
                let leader = node
                    .raft()
                    .ok()
                    .and_then(|r| r.metrics().borrow().current_leader);
                println!(
                    "ready node_id={} cluster={} leader={}",
                    node.id(),
                    node.cluster_id(),
                    leader.map(|l| l.to_string()).unwrap_or_default()
                );
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
                return;
            }
        }
    });
}

pub async fn run(args: ServerArgs) -> anyhow::Result<()> {
    super::init_logging();
    let server = trellis_server::start(args.config()).await?;
    announce(&server);
    super::shutdown_signal().await;
    tracing::info!("shutting down");
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    server.shutdown().await;
    Ok(())
}

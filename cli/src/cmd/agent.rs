//! `trellis agent`: the node agent under systemd (`Type=notify`).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use trellis_agent::{AgentConfig, AgentOptions, RunningAgent};

#[derive(Args, Debug)]
pub struct AgentArgs {
    /// Where the agent keeps its last accepted config (served from during outages).
    #[arg(long)]
    pub data_dir: PathBuf,
    /// The node's services and checks, and the proxy's listeners (YAML).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// This node's name in the mesh (default: the config's `node`, else the host name).
    #[arg(long)]
    pub node: Option<String>,
    /// Serve the same discovery stream here for standalone proxies of this node
    /// (`trellis proxy --agent ADDR`, e.g. a Nomad task's sidecar).
    #[arg(long)]
    pub sidecar_addr: Option<String>,
}

/// A server's gRPC address as `host:port`, whether or not it was written with a scheme.
pub fn grpc_address(s: &str) -> String {
    s.trim_start_matches("http://")
        .trim_start_matches("https://")
        .trim_end_matches('/')
        .to_owned()
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_ascii_lowercase())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

pub async fn run(args: AgentArgs, servers: Vec<String>) -> anyhow::Result<()> {
    super::init_logging();
    let config = match &args.config {
        Some(path) => AgentConfig::load(path)?,
        None => AgentConfig::default(),
    };
    let mut all: Vec<String> = servers.iter().map(|s| grpc_address(s)).collect();
    all.extend(config.servers.iter().map(|s| grpc_address(s)));
    all.dedup();
    if all.is_empty() {
        all.push("127.0.0.1:8502".to_owned());
    }
    let node = args
        .node
        .clone()
        .or_else(|| config.node.clone())
        .unwrap_or_else(host_name);
    let mut options = AgentOptions::new(config, node.clone(), all.clone(), args.data_dir.clone());
    options.sidecar_addr = args.sidecar_addr.clone();
    let agent = RunningAgent::start(options)
        .await
        .context("starting the agent")?;
    match agent.sidecar_addr() {
        Some(a) => println!("agent node={node} servers={} sidecars={a}", all.join(",")),
        None => println!("agent node={node} servers={}", all.join(",")),
    }
    let mut state = agent.state();
    tokio::spawn(async move {
        if let Ok(s) = state.wait_for(|s| !s.applied_version.is_empty()).await {
            println!("ready version={}", s.applied_version);
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
        }
    });
    super::shutdown_signal().await;
    tracing::info!("shutting down: draining the proxy");
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    let _ = tokio::time::timeout(Duration::from_secs(60), agent.shutdown()).await;
    Ok(())
}

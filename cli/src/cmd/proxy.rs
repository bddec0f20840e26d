//! `trellis proxy`: the data plane alone. From a static file (`--config FILE`), or fed by
//! the node's agent (`--agent ADDR`, as a Nomad task's sidecar runs it), in which case the
//! file gives only who the proxy is and its listeners.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use trellis_agent::config::AgentProxyConfig;
use trellis_agent::{AgentConfig, AgentOptions, RunningAgent};
use trellis_proxy::ProxyConfig;

#[derive(Args, Debug)]
pub struct ProxyArgs {
    /// The proxy's config: listeners, services with endpoints, and Istio resources (YAML or
    /// JSON). With --agent: only `node`, `listeners`, `limits`, `drainTimeout`.
    #[arg(long)]
    pub config: PathBuf,
    /// The local agent's sidecar address (`trellis agent --sidecar-addr`): routes, services
    /// and endpoints come from it, as they change.
    #[arg(long)]
    pub agent: Option<String>,
    /// With --agent: where to keep the last accepted config (default: a temporary dir).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

pub async fn run(args: ProxyArgs) -> anyhow::Result<()> {
    super::init_logging();
    let Some(agent_addr) = &args.agent else {
        trellis_proxy::run_from_file(&args.config, async {
            if let Err(e) = trellis_proxy::shutdown_signal().await {
                tracing::warn!(error = %e, "cannot listen for signals; stopping");
            }
        })
        .await?;
        return Ok(());
    };
    let file = ProxyConfig::from_file(&args.config)?;
    if !file.services.is_empty() || !file.resources.is_empty() {
        bail!(
            "{}: services and resources come from the agent with --agent; remove them from the file",
            args.config.display()
        );
    }
    let temp;
    let data_dir = match &args.data_dir {
        Some(d) => d.clone(),
        None => {
            temp = tempfile::Builder::new()
                .prefix("trellis-proxy-")
                .tempdir()?;
            temp.path().to_owned()
        }
    };
    let name = if file.node.name.is_empty() {
        "sidecar".to_owned()
    } else {
        file.node.name.clone()
    };
    let mut node = file.node.clone();
    if node.namespace.is_empty() {
        node.namespace = "default".into();
    }
    let config = AgentConfig {
        proxy: AgentProxyConfig {
            listeners: file.listeners.clone(),
            limits: file.limits.clone(),
            drain_timeout: file.drain_timeout,
            concurrency: file.concurrency,
        },
        ..AgentConfig::default()
    };
    let mut options = AgentOptions::new(
        config,
        name.clone(),
        vec![super::agent::grpc_address(agent_addr)],
        data_dir,
    );
    options.proxy_only = true;
    options.proxy_node = Some(node);
    let proxy = RunningAgent::start(options)
        .await
        .context("starting the proxy")?;
    println!("proxy node={name} agent={agent_addr}");
    super::shutdown_signal().await;
    tracing::info!("shutting down: draining");
    let _ = tokio::time::timeout(Duration::from_secs(60), proxy.shutdown()).await;
    Ok(())
}

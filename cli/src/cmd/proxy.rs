//! `trellis proxy --config FILE`: the data plane alone, from a static file, as a
//! sidecar without an agent runs it.

use std::path::PathBuf;

use clap::Args;

#[derive(Args, Debug)]
pub struct ProxyArgs {
    /// The proxy's config: listeners, services with endpoints, and Istio resources (YAML or JSON).
    #[arg(long)]
    pub config: PathBuf,
}

pub async fn run(args: ProxyArgs) -> anyhow::Result<()> {
    super::init_logging();
    trellis_proxy::run_from_file(&args.config, async {
        if let Err(e) = trellis_proxy::shutdown_signal().await {
            tracing::warn!(error = %e, "cannot listen for signals; stopping");
        }
    })
    .await?;
    Ok(())
}

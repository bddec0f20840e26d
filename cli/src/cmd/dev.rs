//! `trellis dev`: a whole mesh on this machine, for trying Trellis out.

use std::path::PathBuf;

use clap::Args;
use trellis_server::ServerConfig;

#[derive(Args, Debug)]
pub struct DevArgs {
    /// Keep state here instead of in a temporary directory that is removed on exit.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Admin HTTP API listener.
    #[arg(long, default_value = "127.0.0.1:8500")]
    pub http_addr: String,
    /// gRPC listener.
    #[arg(long, default_value = "127.0.0.1:8502")]
    pub grpc_addr: String,
}

pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    super::init_logging();
    let temp;
    let data_dir = match &args.data_dir {
        Some(d) => d.clone(),
        None => {
            temp = tempfile::Builder::new().prefix("trellis-dev-").tempdir()?;
            temp.path().join("server")
        }
    };
    let mut config = ServerConfig::new(&data_dir);
    config.grpc_addr = args.grpc_addr.clone();
    config.http_addr = args.http_addr.clone();
    config.bootstrap_expect = 1;
    let server = trellis_server::start(config).await?;
    super::server::announce(&server);
    server
        .node
        .wait_ready(std::time::Duration::from_secs(30))
        .await?;
    println!("Trellis dev mesh is up. State: {}", data_dir.display());
    println!("  admin API  http://{}", server.http_addr);
    println!("Try:");
    println!("  trellis operator raft list-peers");
    println!(
        "  curl -X PUT -d hello http://{}/v1/kv/greeting",
        server.http_addr
    );
    println!("  curl http://{}/v1/kv/greeting?raw", server.http_addr);
    super::shutdown_signal().await;
    server.shutdown().await;
    Ok(())
}

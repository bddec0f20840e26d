//! `trellis`: the one binary. Servers, agents, proxies and the operator's CLI.
#![forbid(unsafe_code)]

mod admin_client;
mod cmd;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "trellis",
    version,
    about = "A service mesh for VMs, Nomad and Kubernetes fleets"
)]
struct Cli {
    /// The admin API of any Trellis server (default: $TRELLIS_ADDR, else
    /// http://127.0.0.1:8500). For `trellis agent`: a server's gRPC address, repeatable.
    #[arg(long, global = true)]
    server: Vec<String>,

    /// The token sent to the server's admin API.
    #[arg(long, global = true, env = "TRELLIS_TOKEN", hide_env_values = true)]
    token: Option<String>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a server: one member of the Raft group that holds the mesh's state.
    Server(cmd::server::ServerArgs),
    /// Run the node agent: local services and health checks, the stream to the servers,
    /// the proxy.
    Agent(cmd::agent::AgentArgs),
    /// Run the proxy alone from a static config file.
    Proxy(cmd::proxy::ProxyArgs),
    /// Run a whole single-node mesh on this machine.
    Dev(cmd::dev::DevArgs),
    /// Create or update mesh resources from Istio YAML (files, directories, or -).
    Apply(cmd::config::ApplyArgs),
    /// Show mesh resources.
    Get(cmd::config::GetArgs),
    /// Delete mesh resources, named in files or as KIND NAME.
    Delete(cmd::config::DeleteArgs),
    /// Check files offline with Istio's rules; nothing is sent.
    Validate(cmd::config::FileArgs),
    /// Show a service with its endpoints and everything that applies to it.
    Describe(cmd::config::DescribeArgs),
    /// Cluster operations.
    Operator {
        #[command(subcommand)]
        command: cmd::operator::OperatorCommand,
    },
}

// The proxy allocates each request's future (a few KiB) and its HTTP/2 stream state; jemalloc
// serves those sizes from a thread cache where glibc's malloc searches and consolidates bins.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    // One crypto provider for every TLS user in the process.
    if rustls::crypto::ring::default_provider()
        .install_default()
        .is_err()
    {
        eprintln!("error: a TLS crypto provider was already installed");
        return ExitCode::FAILURE;
    }
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        let admin = cli
            .server
            .first()
            .cloned()
            .or_else(|| std::env::var("TRELLIS_ADDR").ok().filter(|s| !s.is_empty()))
            .unwrap_or_else(|| "http://127.0.0.1:8500".to_owned());
        let client = || admin_client::AdminClient::new(&admin, cli.token.clone());
        match cli.command {
            Command::Agent(args) => cmd::agent::run(args, cli.server.clone()).await,
            Command::Server(args) => cmd::server::run(args).await,
            Command::Proxy(args) => cmd::proxy::run(args).await,
            Command::Dev(args) => cmd::dev::run(args).await,
            Command::Validate(args) => cmd::config::validate(args).await,
            Command::Apply(args) => cmd::config::apply(&client()?, args).await,
            Command::Get(args) => cmd::config::get(&client()?, args).await,
            Command::Delete(args) => cmd::config::delete(&client()?, args).await,
            Command::Describe(args) => cmd::config::describe(&client()?, args).await,
            Command::Operator { command } => cmd::operator::run(&client()?, command).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", describe(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, each cause once: typed errors already name
/// their cause, context added on the way up does not.
fn describe(e: &anyhow::Error) -> String {
    let mut text = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}

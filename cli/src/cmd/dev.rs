//! `trellis dev`: a whole mesh on this machine, for trying Trellis out: a single-node
//! server, an agent with its proxy, and three demo workloads (`frontend`, and `reviews`
//! in versions v1 and v2) registered with health checks.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::bail;
use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::routing::get;
use clap::Args;
use tokio::net::TcpListener;
use trellis_agent::{AgentConfig, AgentOptions, RunningAgent};
use trellis_server::ServerConfig;

#[derive(Args, Debug)]
pub struct DevArgs {
    /// Keep state here instead of in a temporary directory that is removed on exit.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Admin HTTP API listener.
    #[arg(long, default_value = "127.0.0.1:8500")]
    pub http_addr: String,
    /// gRPC listener (agents and servers).
    #[arg(long, default_value = "127.0.0.1:8502")]
    pub grpc_addr: String,
    /// The proxy's admin listener (/ready, /config_dump, /stats/prometheus).
    #[arg(long, default_value = "127.0.0.1:15000")]
    pub proxy_admin_addr: String,
}

/// One demo workload: answers JSON naming itself; `frontend` also asks `reviews` through
/// the proxy and includes the answer, so a route change shows in its output.
#[derive(Clone)]
struct Demo {
    service: &'static str,
    version: &'static str,
    reviews_url: Arc<OnceLock<String>>,
    client: reqwest::Client,
}

async fn answer(State(d): State<Demo>) -> Json<serde_json::Value> {
    let mut body = serde_json::json!({ "service": d.service, "version": d.version });
    if d.service == "frontend"
        && let Some(url) = d.reviews_url.get()
    {
        let reviews = match d.client.get(url).send().await {
            Ok(r) => {
                let status = r.status().as_u16();
                match r.json::<serde_json::Value>().await {
                    Ok(v) if status == 200 => v,
                    _ => serde_json::json!({ "error": format!("reviews answered {status}") }),
                }
            }
            Err(e) => serde_json::json!({ "error": e.to_string() }),
        };
        body["reviews"] = reviews;
    }
    Json(body)
}

async fn start_demo(demo: Demo) -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let app = Router::new()
        .route("/", get(answer))
        .route("/health", get(|| async { "ok" }))
        .with_state(demo);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(port)
}

fn agent_config(frontend: u16, v1: u16, v2: u16, admin: &str) -> anyhow::Result<AgentConfig> {
    let service = |name: &str, version: &str, port: u16| {
        format!(
            "  - name: {name}\n    port: {port}\n    protocol: HTTP\n    labels: {{app: {name}, version: {version}}}\n    checks:\n      - http: http://127.0.0.1:{port}/health\n        interval: 2s\n        timeout: 1s\n"
        )
    };
    let yaml = format!(
        "node: dev\nservices:\n{}{}{}proxy:\n  listeners:\n    admin: {{bind: \"{admin}\"}}\n    upstreams:\n      - {{name: frontend, bind: \"127.0.0.1:0\", service: frontend}}\n      - {{name: reviews, bind: \"127.0.0.1:0\", service: reviews}}\n  drainTimeout: 2s\n",
        service("frontend", "v1", frontend),
        service("reviews", "v1", v1),
        service("reviews", "v2", v2),
    );
    Ok(AgentConfig::parse(
        std::path::Path::new("(trellis dev)"),
        &yaml,
    )?)
}

pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    super::init_logging();
    let temp;
    let base = match &args.data_dir {
        Some(d) => d.clone(),
        None => {
            temp = tempfile::Builder::new().prefix("trellis-dev-").tempdir()?;
            temp.path().to_owned()
        }
    };
    let mut config = ServerConfig::new(base.join("server"));
    config.grpc_addr = args.grpc_addr.clone();
    config.http_addr = args.http_addr.clone();
    config.bootstrap_expect = 1;
    let server = trellis_server::start(config).await?;
    server.node.wait_ready(Duration::from_secs(30)).await?;

    let reviews_url = Arc::new(OnceLock::new());
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    let demo = |service, version| Demo {
        service,
        version,
        reviews_url: reviews_url.clone(),
        client: client.clone(),
    };
    let frontend = start_demo(demo("frontend", "v1")).await?;
    let v1 = start_demo(demo("reviews", "v1")).await?;
    let v2 = start_demo(demo("reviews", "v2")).await?;

    let agent = RunningAgent::start(AgentOptions::new(
        agent_config(frontend, v1, v2, &args.proxy_admin_addr)?,
        "dev".into(),
        vec![server.grpc_addr.to_string()],
        base.join("agent"),
    ))
    .await?;
    agent.wait_applied(Duration::from_secs(30)).await?;
    let (front_addr, reviews_addr) = upstreams(&agent).await?;
    let _ = reviews_url.set(format!("http://{reviews_addr}/"));

    let api = format!("http://{}", server.http_addr);
    let flags = if server.http_addr.to_string() == "127.0.0.1:8500" {
        String::new()
    } else {
        format!(" --server {api}")
    };
    println!("Trellis dev mesh is up. State: {}", base.display());
    println!("admin API  {api}");
    println!("frontend  http://{front_addr}");
    println!("reviews  http://{reviews_addr}");
    println!();
    println!("Try:");
    println!(
        "  curl http://{front_addr}/          # frontend calls reviews v1 or v2 through the proxy"
    );
    println!("  trellis{flags} apply -f - <<'EOF'    # 90 % of reviews traffic to v1, 10 % to v2");
    println!("{SPLIT}");
    println!("EOF");
    println!("  for i in $(seq 20); do curl -s http://{reviews_addr}/; echo; done");
    println!("  trellis{flags} apply -f - <<'EOF'    # and half of the answers become a 503");
    println!("{FAULT}");
    println!("EOF");
    println!("  trellis{flags} get nodes");
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    super::shutdown_signal().await;
    tracing::info!("shutting down");
    agent.shutdown().await;
    server.shutdown().await;
    Ok(())
}

const SPLIT: &str = "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets:
    - {name: v1, labels: {version: v1}}
    - {name: v2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
    - route:
        - {destination: {host: reviews, subset: v1}, weight: 90}
        - {destination: {host: reviews, subset: v2}, weight: 10}";

const FAULT: &str = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
    - fault: {abort: {percentage: {value: 50}, httpStatus: 503}}
      route:
        - {destination: {host: reviews, subset: v1}, weight: 90}
        - {destination: {host: reviews, subset: v2}, weight: 10}";

/// Whether a demo answers through the proxy: its endpoints are registered and healthy.
async fn answers(addr: SocketAddr) -> bool {
    let client = reqwest::Client::new();
    client
        .get(format!("http://{addr}/health"))
        .timeout(Duration::from_secs(1))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
}

/// Waits for the demo services to be registered and healthy, and their upstream
/// listeners bound.
async fn upstreams(agent: &RunningAgent) -> anyhow::Result<(SocketAddr, SocketAddr)> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(p) = agent.proxy().await
            && let (Some(f), Some(r)) = (p.listener_addr("frontend"), p.listener_addr("reviews"))
            && answers(f).await
            && answers(r).await
        {
            return Ok((f, r));
        }
        if tokio::time::Instant::now() > deadline {
            bail!("the demo services did not reach the proxy within 30s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

//! The mesh alive: three servers, agents with their proxies, real workloads. Config applied
//! on a server reaches every proxy; health decides who takes traffic; agents ride out
//! servers dying, all of them at once, and their own restarts.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use trellis_itests::{
    AgentProcess, Cluster, ServerProcess, apply, apply_when_possible, eventually, http,
    run_trellis_with_stdin,
};

/// A workload: answers `{"version": V}` on `/`, and `/health` with 200 or 503.
struct Workload {
    addr: SocketAddr,
    healthy: Arc<AtomicBool>,
}

async fn workload(version: &'static str) -> Workload {
    use axum::http::StatusCode;
    let healthy = Arc::new(AtomicBool::new(true));
    let h = healthy.clone();
    let app = axum::Router::new()
        .route(
            "/",
            axum::routing::get(move || async move { format!("{{\"version\":\"{version}\"}}") }),
        )
        .route(
            "/slow",
            axum::routing::get(move || async move {
                tokio::time::sleep(Duration::from_millis(800)).await;
                format!("{{\"version\":\"{version}\"}}")
            }),
        )
        .route(
            "/health",
            axum::routing::get(move || {
                let ok = h.load(Ordering::SeqCst);
                async move {
                    if ok {
                        StatusCode::OK
                    } else {
                        StatusCode::SERVICE_UNAVAILABLE
                    }
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Workload { addr, healthy }
}

/// An agent config: one workload of `service` with a fast HTTP check, and an upstream
/// listener to `reviews`.
fn agent_config(dir: &Path, service: &str, version: &str, port: u16) -> std::path::PathBuf {
    let text = format!(
        "services:
  - name: {service}
    port: {port}
    protocol: HTTP
    labels: {{version: {version}}}
    checks:
      - http: http://127.0.0.1:{port}/health
        interval: 200ms
        timeout: 150ms
proxy:
  listeners:
    upstreams:
      - {{name: reviews, bind: \"127.0.0.1:0\", service: reviews}}
  drainTimeout: 1s
"
    );
    let path = dir.join(format!("{service}-{version}.yaml"));
    std::fs::write(&path, text).unwrap();
    path
}

fn grpc_addrs(cluster: &Cluster) -> Vec<String> {
    cluster.servers.iter().map(|s| s.grpc.clone()).collect()
}

#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Node {
    name: String,
    connected: bool,
    #[serde(default)]
    server: String,
    #[serde(default)]
    applied_version: String,
    #[serde(default)]
    last_nack: Option<serde_json::Value>,
}

async fn nodes(server: &ServerProcess) -> Option<Vec<Node>> {
    #[derive(serde::Deserialize)]
    struct Items {
        items: Vec<Node>,
    }
    let r = http().get(server.url("/v1/nodes")).send().await.ok()?;
    if !r.status().is_success() {
        return None;
    }
    Some(r.json::<Items>().await.ok()?.items)
}

/// Waits until every named node runs a version at or after `revision`.
async fn converged(server: &ServerProcess, names: &[&str], revision: u64, what: &str) {
    eventually(Duration::from_secs(20), what, || async {
        let nodes = nodes(server).await?;
        names
            .iter()
            .all(|n| {
                nodes.iter().any(|x| {
                    x.name == *n
                        && x.applied_version
                            .parse::<u64>()
                            .is_ok_and(|v| v >= revision)
                })
            })
            .then_some(())
    })
    .await;
}

/// Sends `n` requests through a proxy listener; counts answers per version, and failures.
async fn versions(addr: &str, n: usize) -> (usize, usize, usize) {
    trellis_itests::init_tls();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let (mut v1, mut v2, mut failed) = (0, 0, 0);
    for _ in 0..n {
        match client.get(format!("http://{addr}/")).send().await {
            Ok(r) if r.status().is_success() => match r.text().await.unwrap_or_default().as_str() {
                r#"{"version":"v1"}"# => v1 += 1,
                r#"{"version":"v2"}"# => v2 += 1,
                _ => failed += 1,
            },
            _ => failed += 1,
        }
    }
    (v1, v2, failed)
}

const SUBSETS: &str = "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets:
    - {name: v1, labels: {version: v1}}
    - {name: v2, labels: {version: v2}}
";

fn split(v1: u32, v2: u32) -> String {
    format!(
        "{SUBSETS}---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews}}
spec:
  hosts: [reviews]
  http:
    - route:
        - {{destination: {{host: reviews, subset: v1}}, weight: {v1}}}
        - {{destination: {{host: reviews, subset: v2}}, weight: {v2}}}
"
    )
}

/// Three agents: `a` runs reviews v1, `b` reviews v2, `c` a frontend; each proxy has an
/// upstream listener to reviews.
struct Mesh {
    cluster: Cluster,
    agents: Vec<AgentProcess>,
    workloads: Vec<Workload>,
}

async fn mesh(server_flags: &[&str]) -> Mesh {
    let cluster = Cluster::start(server_flags).unwrap();
    let servers = grpc_addrs(&cluster);
    let mut agents = Vec::new();
    let mut workloads = Vec::new();
    for (node, service, version) in [
        ("a", "reviews", "v1"),
        ("b", "reviews", "v2"),
        ("c", "frontend", "v1"),
    ] {
        let w = workload(version).await;
        let config = agent_config(cluster.dir.path(), service, version, w.addr.port());
        let data = cluster.dir.path().join(format!("agent-{node}"));
        agents.push(AgentProcess::start(node, &servers, &data, &config).unwrap());
        workloads.push(w);
    }
    let mesh = Mesh {
        cluster,
        agents,
        workloads,
    };
    // Every proxy knows both reviews endpoints once its upstream listener is up.
    for agent in &mesh.agents {
        eventually(
            Duration::from_secs(30),
            "the reviews upstream listener",
            || async { agent.listener("reviews") },
        )
        .await;
    }
    mesh
}

impl Mesh {
    fn upstream(&self, i: usize) -> String {
        self.agents[i].listener("reviews").unwrap()
    }

    fn names(&self) -> Vec<&str> {
        self.agents.iter().map(|a| a.node.as_str()).collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_and_health_reach_every_proxy() {
    let mesh = mesh(&[]).await;
    let s0 = &mesh.cluster.servers[0];
    let names = mesh.names();

    // Both endpoints are in every proxy before any route exists: round robin over both.
    eventually(
        Duration::from_secs(20),
        "traffic to both versions",
        || async {
            let (v1, v2, _) = versions(&mesh.upstream(2), 20).await;
            (v1 > 0 && v2 > 0).then_some(())
        },
    )
    .await;

    // A check turning critical takes the endpoint out of every proxy.
    mesh.workloads[1].healthy.store(false, Ordering::SeqCst);
    for i in 0..3 {
        eventually(Duration::from_secs(20), "v2 out of every proxy", || async {
            let (v1, v2, failed) = versions(&mesh.upstream(i), 40).await;
            (v1 == 40 && v2 == 0 && failed == 0).then_some(())
        })
        .await;
    }
    mesh.workloads[1].healthy.store(true, Ordering::SeqCst);
    eventually(Duration::from_secs(20), "v2 back once healthy", || async {
        let (_, v2, _) = versions(&mesh.upstream(2), 20).await;
        (v2 > 0).then_some(())
    })
    .await;

    // A 90/10 split applied on one server: every agent acknowledges it...
    let rev = apply(s0, &split(90, 10)).await;
    converged(
        &mesh.cluster.servers[1],
        &names,
        rev,
        "every agent on the 90/10 version",
    )
    .await;
    // ...and 2,000 requests through a proxy split 90/10 within ±3 %.
    let (v1, v2, failed) = versions(&mesh.upstream(2), 2000).await;
    assert_eq!(failed, 0, "no request may fail");
    assert!(
        (1740..=1860).contains(&v1),
        "v1 got {v1} of 2000, v2 {v2}: not 90 % ± 3 %"
    );

    // A push the proxy cannot compile is refused with its reason; traffic goes on as before.
    let bad = "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: ratings}
spec:
  host: ratings
  trafficPolicy:
    tls: {mode: ISTIO_MUTUAL}
";
    let bad_rev = apply(s0, bad).await;
    let nacked = eventually(
        Duration::from_secs(20),
        "a NACK recorded for every node",
        || async {
            let nodes = nodes(s0).await?;
            let all = names.iter().all(|n| {
                nodes.iter().any(|x| {
                    x.name == *n
                        && x.last_nack.as_ref().is_some_and(|k| {
                            k["version"].as_str().and_then(|v| v.parse::<u64>().ok())
                                >= Some(bad_rev)
                        })
                })
            });
            all.then_some(nodes)
        },
    )
    .await;
    assert!(
        nacked
            .iter()
            .all(|n| n.applied_version.parse::<u64>().unwrap() < bad_rev)
    );
    let (code, out, err) = run_trellis_with_stdin(
        &["--server", &s0.url(""), "describe", "node", "c"],
        &[],
        None,
        Duration::from_secs(20),
    )
    .unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("DestinationRule default/ratings") && out.contains("tls"),
        "describe node shows why the push was refused:\n{out}"
    );
    let (v1, v2, failed) = versions(&mesh.upstream(0), 200).await;
    assert_eq!(failed, 0);
    assert!(v1 > v2 && v2 > 0, "the old split still holds: {v1}/{v2}");

    // Removing the bad resource: the next push is accepted again.
    let r = http()
        .delete(s0.url("/v1/config/destinationrule/default/ratings"))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let fixed = r.headers()["x-trellis-index"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    converged(s0, &names, fixed, "every agent past the refused version").await;

    // SIGTERM drains: a request in flight through the agent's proxy still completes, and
    // the agent exits cleanly.
    let up = mesh.upstream(2);
    let slow = tokio::spawn(async move {
        http()
            .get(format!("http://{up}/slow"))
            .send()
            .await
            .map(|r| r.status().as_u16())
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut mesh = mesh;
    mesh.agents[2].signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(
        slow.await.unwrap().unwrap(),
        200,
        "the in-flight request finished"
    );
    let status = tokio::task::block_in_place(|| mesh.agents[2].wait_exit(Duration::from_secs(10)));
    assert!(
        status.is_some_and(|s| s.success()),
        "the agent exits 0 after draining: {status:?}"
    );
    // It left the mesh on the way out: its workload is no longer registered.
    let left = http()
        .get(mesh.cluster.servers[0].url("/v1/health/service/frontend"))
        .send()
        .await
        .unwrap()
        .json::<serde_json::Value>()
        .await
        .unwrap();
    assert_eq!(
        left["items"],
        serde_json::json!([]),
        "frontend deregistered: {left}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_ride_out_server_failures() {
    let mut mesh = mesh(&[]).await;
    let names: Vec<String> = mesh.names().iter().map(|s| s.to_string()).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let rev = apply(&mesh.cluster.servers[0], &split(50, 50)).await;
    converged(
        &mesh.cluster.servers[0],
        &names,
        rev,
        "every agent on the first split",
    )
    .await;

    // Kill the server agent `a` streams from: it moves to another and misses no change.
    let on = eventually(Duration::from_secs(20), "agent a connected", || async {
        let nodes = nodes(&mesh.cluster.servers[0]).await?;
        nodes
            .into_iter()
            .find(|n| n.name == "a" && n.connected && !n.server.is_empty())
            .map(|n| n.server)
    })
    .await;
    let killed = mesh
        .cluster
        .servers
        .iter()
        .position(|s| s.grpc == on)
        .expect("a's server is one of ours");
    mesh.cluster.servers[killed].kill();
    let alive = (killed + 1) % 3;
    let rev = apply(&mesh.cluster.servers[alive], &split(0, 100)).await;
    converged(
        &mesh.cluster.servers[alive],
        &names,
        rev,
        "every agent, a on another server",
    )
    .await;
    let (v1, v2, failed) = versions(&mesh.upstream(0), 50).await;
    assert_eq!(
        (v1, v2, failed),
        (0, 50, 0),
        "a's proxy runs the change made while it moved"
    );
    mesh.cluster.servers[killed].restart().unwrap();

    // Every server gone: the proxies keep serving what they have.
    for s in &mut mesh.cluster.servers {
        s.kill();
    }
    for i in 0..3 {
        let (_, v2, failed) = versions(&mesh.upstream(i), 50).await;
        assert_eq!((v2, failed), (50, 0), "proxy {i} serves with no server");
    }
    // An agent restarted during the outage serves from its cache.
    let before = mesh.upstream(0);
    mesh.agents[0].restart().unwrap();
    let after = eventually(
        Duration::from_secs(20),
        "a's proxy up again from its cache",
        || async { mesh.agents[0].listener("reviews") },
    )
    .await;
    assert_ne!(before, after, "a new process bound a new port");
    let (_, v2, failed) = versions(&after, 50).await;
    assert_eq!(
        (v2, failed),
        (50, 0),
        "the restarted agent serves the cached split"
    );

    // Servers back: agents reconnect by themselves and converge to the newest version.
    for s in &mut mesh.cluster.servers {
        s.restart().unwrap();
    }
    let rev = apply_when_possible(
        &mesh.cluster.servers[0],
        &split(100, 0),
        "a write after the servers came back",
    )
    .await;
    converged(
        &mesh.cluster.servers[0],
        &names,
        rev,
        "every agent on the newest version",
    )
    .await;
    let (v1, _, failed) = versions(&mesh.agents[0].listener("reviews").unwrap(), 50).await;
    assert_eq!((v1, failed), (50, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_streams_are_noticed_and_reopened() {
    use nix::sys::signal::Signal;
    // Pings every 300 ms: three silent intervals (~1 s) end a stream on either side.
    let mesh = mesh(&[
        "--discovery-ping-interval",
        "300ms",
        "--discovery-push-deadline",
        "2s",
    ])
    .await;
    let names = mesh.names();
    let s = &mesh.cluster.servers;

    // A frozen agent (its sockets open, nothing read or answered) is cut off by the server.
    mesh.agents[2].signal(Signal::SIGSTOP);
    eventually(
        Duration::from_secs(20),
        "the frozen agent c shown disconnected",
        || async {
            let nodes = nodes(&s[0]).await?;
            nodes
                .iter()
                .any(|n| n.name == "c" && !n.connected)
                .then_some(())
        },
    )
    .await;
    mesh.agents[2].signal(Signal::SIGCONT);
    let rev = apply(&s[0], &split(90, 10)).await;
    converged(&s[0], &names, rev, "c back on a new stream with the change").await;

    // A frozen server: the agent on it hears nothing, moves on, and misses no change.
    let on = eventually(Duration::from_secs(20), "agent a connected", || async {
        nodes(&s[0])
            .await?
            .into_iter()
            .find(|n| n.name == "a" && n.connected)
            .map(|n| n.server)
    })
    .await;
    let frozen = s.iter().position(|x| x.grpc == on).unwrap();
    s[frozen].signal(Signal::SIGSTOP);
    let other = &s[(frozen + 1) % 3];
    let rev = apply_when_possible(other, &split(0, 100), "a write without the frozen server").await;
    converged(
        other,
        &names,
        rev,
        "a moved off the frozen server and has the change",
    )
    .await;
    let (_, v2, failed) = versions(&mesh.upstream(0), 30).await;
    assert_eq!((v2, failed), (30, 0));
    s[frozen].signal(Signal::SIGCONT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_is_fed_by_its_agent() {
    let mut mesh = mesh(&[]).await;
    let dir = mesh.cluster.dir.path().to_owned();
    // A fourth node whose agent serves sidecars, and a standalone proxy fed by it.
    let servers = grpc_addrs(&mesh.cluster);
    let w = workload("v1").await;
    let config = agent_config(&dir, "ratings", "v1", w.addr.port());
    let agent = AgentProcess::start_with(
        "d",
        &servers,
        &dir.join("agent-d"),
        &config,
        &["--sidecar-addr", "127.0.0.1:0"],
    )
    .unwrap();
    let sidecars = agent
        .started_field("sidecars")
        .expect("the agent says where sidecars connect");
    let file = dir.join("sidecar.yaml");
    std::fs::write(
        &file,
        "node: {name: task-1, namespace: default}
listeners:
  upstreams:
    - {name: reviews, bind: \"127.0.0.1:0\", service: reviews}
",
    )
    .unwrap();
    let sidecar = AgentProcess::sidecar("task-1", &sidecars, &file).unwrap();
    let up = eventually(
        Duration::from_secs(20),
        "the sidecar's upstream listener",
        || async { sidecar.listener("reviews") },
    )
    .await;
    eventually(
        Duration::from_secs(20),
        "both versions through the sidecar",
        || async {
            let (v1, v2, _) = versions(&up, 20).await;
            (v1 > 0 && v2 > 0).then_some(())
        },
    )
    .await;
    // A route change reaches the sidecar through its agent.
    apply(&mesh.cluster.servers[0], &split(100, 0)).await;
    eventually(
        Duration::from_secs(20),
        "the sidecar follows the new route",
        || async {
            let (v1, v2, failed) = versions(&up, 30).await;
            (v1 == 30 && v2 == 0 && failed == 0).then_some(())
        },
    )
    .await;
    // With every server gone the sidecar keeps serving.
    for s in &mut mesh.cluster.servers {
        s.kill();
    }
    let (v1, _, failed) = versions(&up, 30).await;
    assert_eq!((v1, failed), (30, 0));
    drop(agent);
}

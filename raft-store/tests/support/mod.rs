//! An in-process cluster of store servers talking real gRPC on loopback, with links
//! the test can cut.

#![allow(dead_code)]

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use trellis_raft_store::{LinkControl, LinkDecision, NodeConfig, NodeId, StoreNode};

/// Which directed links are cut.
#[derive(Default)]
pub struct Links {
    cut: Mutex<HashSet<(NodeId, NodeId)>>,
}

impl Links {
    /// Cuts every link between `side` and the rest of `all`, both ways.
    pub fn isolate(&self, side: &[NodeId], all: &[NodeId]) {
        let mut cut = self.cut.lock().unwrap();
        for a in side {
            for b in all.iter().filter(|b| !side.contains(b)) {
                cut.insert((*a, *b));
                cut.insert((*b, *a));
            }
        }
    }

    pub fn heal(&self) {
        self.cut.lock().unwrap().clear();
    }
}

impl LinkControl for Links {
    fn decide(&self, from: NodeId, to: NodeId) -> LinkDecision {
        if self.cut.lock().unwrap().contains(&(from, to)) {
            LinkDecision::Drop
        } else {
            LinkDecision::Deliver
        }
    }
}

pub struct Server {
    pub id: NodeId,
    pub addr: SocketAddr,
    pub node: StoreNode,
    serving: JoinHandle<()>,
    stop: tokio::sync::oneshot::Sender<()>,
}

impl Server {
    pub async fn stop(self) {
        let _ = self.stop.send(());
        self.node.shutdown().await;
        self.serving.abort();
        let _ = self.serving.await;
    }
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub links: Arc<Links>,
    pub tune: fn(&mut NodeConfig),
}

pub const IDS: [NodeId; 3] = [1, 2, 3];

impl Cluster {
    pub fn new(tune: fn(&mut NodeConfig)) -> Self {
        Cluster {
            dir: tempfile::tempdir().expect("temp dir"),
            links: Arc::new(Links::default()),
            tune,
        }
    }

    /// Starts server `id` on `addr` (port 0 picks one), joining through `join`.
    pub async fn start(&self, id: NodeId, addr: SocketAddr, join: Vec<String>) -> Server {
        let listener = TcpListener::bind(addr).await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let mut config = NodeConfig::new(self.dir.path().join(format!("n{id}")), addr.to_string());
        config.node_id = Some(id);
        config.bootstrap_expect = 3;
        config.join = join;
        config.links = self.links.clone();
        (self.tune)(&mut config);
        // A server stopped in this process lets go of its files once its last task ends.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let mut listener = Some(listener);
        loop {
            let node = StoreNode::prepare(config.clone()).expect("prepare");
            let (raft, cluster, kv) = trellis_raft_store::services(&node);
            let incoming =
                tonic::transport::server::TcpIncoming::from(listener.take().expect("listener"))
                    .with_nodelay(Some(true));
            let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
            let serving = tokio::spawn(async move {
                let _ = tonic::transport::Server::builder()
                    .add_service(raft)
                    .add_service(cluster)
                    .add_service(kv)
                    .serve_with_incoming_shutdown(incoming, async {
                        let _ = stop_rx.await;
                    })
                    .await;
            });
            match node.start().await {
                Ok(()) => {
                    return Server {
                        id,
                        addr,
                        node,
                        serving,
                        stop: stop_tx,
                    };
                }
                Err(trellis_raft_store::Error::DataDirInUse { .. })
                    if tokio::time::Instant::now() < deadline =>
                {
                    let _ = stop_tx.send(());
                    let _ = serving.await;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    listener = Some(TcpListener::bind(addr).await.expect("rebind"));
                }
                Err(e) => panic!("server {id} did not start: {e}"),
            }
        }
    }

    /// Three servers forming a cluster by bootstrap-expect, each joining through the first.
    pub async fn start_three(&self) -> Vec<Server> {
        let first = self
            .start(IDS[0], "127.0.0.1:0".parse().unwrap(), Vec::new())
            .await;
        let join = vec![first.addr.to_string()];
        let (second, third) = tokio::join!(
            self.start(IDS[1], "127.0.0.1:0".parse().unwrap(), join.clone()),
            self.start(IDS[2], "127.0.0.1:0".parse().unwrap(), join.clone()),
        );
        let servers = vec![first, second, third];
        for s in &servers {
            s.node
                .wait_ready(Duration::from_secs(20))
                .await
                .expect("cluster formed");
        }
        servers
    }
}

/// The id of the leader all `servers` agree on, waiting up to `within`.
pub async fn agreed_leader(servers: &[&Server], within: Duration) -> NodeId {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let leaders: HashSet<Option<NodeId>> = servers
            .iter()
            .map(|s| {
                s.node
                    .raft()
                    .expect("running")
                    .metrics()
                    .borrow()
                    .current_leader
            })
            .collect();
        if leaders.len() == 1
            && let Some(Some(leader)) = leaders.into_iter().next()
            && servers.iter().any(|s| s.id == leader)
        {
            return leader;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "servers {:?} did not agree on a leader within {within:?}",
            servers.iter().map(|s| s.id).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until `server` has applied at least `index`.
pub async fn applied(server: &Server, index: u64, within: Duration) {
    server
        .node
        .raft()
        .expect("running")
        .wait(Some(within))
        .applied_index_at_least(Some(index), "catch up")
        .await
        .unwrap_or_else(|e| {
            panic!(
                "server {} did not apply index {index} within {within:?}: {e}",
                server.id
            )
        });
}

//! Starting a server: bind both listeners, check the data dir and the peers, serve.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tonic::transport::server::TcpIncoming;
use trellis_raft_store::{HistoryRetention, NodeConfig, StoreNode};

use crate::admin;
use crate::config::ServerConfig;
use crate::error::ServerError;

/// A started server. Dropping it does not stop it; call [`RunningServer::shutdown`].
pub struct RunningServer {
    pub node: StoreNode,
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    grpc: JoinHandle<()>,
    http: JoinHandle<()>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl RunningServer {
    /// Stops serving and stops Raft; the data dir keeps everything for the next start.
    pub async fn shutdown(self) {
        self.stop.send_replace(true);
        self.node.shutdown().await;
        self.http.abort();
        self.grpc.abort();
    }
}

async fn bind(flag: &'static str, addr: &str) -> Result<TcpListener, ServerError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind {
            flag,
            addr: addr.to_string(),
            source,
        })
}

/// Starts a server: returns once it serves both listeners and its store runs (it may
/// still be waiting for the other servers to form a cluster).
pub async fn start(config: ServerConfig) -> Result<RunningServer, ServerError> {
    // Read before anything binds, so a bad token file stops the server at once.
    let acl_token = match &config.acl_token_file {
        None => None,
        Some(path) => {
            let shown = path.display().to_string();
            let text =
                std::fs::read_to_string(path).map_err(|source| ServerError::AclTokenFile {
                    path: shown.clone(),
                    source,
                })?;
            Some(admin::AclToken::new(&text).ok_or(ServerError::EmptyAclToken(shown))?)
        }
    };
    let grpc_listener = bind("--grpc-addr", &config.grpc_addr).await?;
    let grpc_addr = grpc_listener
        .local_addr()
        .map_err(|source| ServerError::Bind {
            flag: "--grpc-addr",
            addr: config.grpc_addr.clone(),
            source,
        })?;
    let advertise = match &config.advertise_addr {
        Some(a) => a.clone(),
        None if grpc_addr.ip().is_unspecified() => {
            return Err(ServerError::NeedAdvertise(config.grpc_addr));
        }
        None => grpc_addr.to_string(),
    };
    let mut node_config = NodeConfig::new(&config.data_dir, advertise);
    node_config.node_id = config.node_id;
    node_config.bootstrap_expect = config.bootstrap_expect;
    node_config.join = config.join.clone();
    node_config.history = HistoryRetention {
        revisions: config.history_revisions,
    };
    node_config.snapshot_every = config.snapshot_every;
    let node = StoreNode::prepare(node_config)?;
    let http_listener = bind("--http-addr", &config.http_addr).await?;
    let http_addr = http_listener
        .local_addr()
        .map_err(|source| ServerError::Bind {
            flag: "--http-addr",
            addr: config.http_addr.clone(),
            source,
        })?;

    let (stop, stopped) = tokio::sync::watch::channel(false);
    let (raft, cluster, kv) = trellis_raft_store::services(&node);
    let discovery = crate::discovery::Discovery::start(
        node.clone(),
        grpc_addr.to_string(),
        config.discovery,
        stopped.clone(),
    );
    let discovery_service = discovery.service();
    let mut grpc_stopped = stopped.clone();
    let grpc = tokio::spawn(async move {
        let served = tonic::transport::Server::builder()
            .add_service(raft)
            .add_service(cluster)
            .add_service(kv)
            .add_service(discovery_service)
            .serve_with_incoming_shutdown(
                TcpIncoming::from(grpc_listener).with_nodelay(Some(true)),
                async move {
                    let _ = grpc_stopped.wait_for(|s| *s).await;
                },
            )
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "gRPC listener failed");
        }
    });
    node.start().await?;

    let app = admin::router(Arc::new(admin::AdminState {
        node: node.clone(),
        acl_token,
    }));
    let mut http_stopped = stopped;
    let http = tokio::spawn(async move {
        // Small answers must leave at once, not wait for Nagle's algorithm.
        let http_listener = axum::serve::ListenerExt::tap_io(http_listener, |tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let served = axum::serve(http_listener, app)
            .with_graceful_shutdown(async move {
                let _ = http_stopped.wait_for(|s| *s).await;
            })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "admin HTTP listener failed");
        }
    });
    Ok(RunningServer {
        node,
        grpc_addr,
        http_addr,
        grpc,
        http,
        stop,
    })
}

//! Discovery: the server side of the agents' streams. The mirror follows the store; each
//! stream computes its node's view from it and pushes what changed, with a version and a
//! nonce the agent answers with ACK or NACK.

pub mod mirror;
pub mod nodes;
pub mod scope;
pub mod session;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use trellis_api::discovery::{AgentMessage, ServerMessage, agent_message, discovery_server};
use trellis_raft_store::StoreNode;

pub use mirror::{Debounce, Mirror};
pub use nodes::NodeTable;
pub use session::StreamSettings;

#[derive(Debug, Clone, Copy)]
pub struct DiscoverySettings {
    pub stream: StreamSettings,
    pub debounce: Debounce,
    /// How often node status (versions applied, NACKs) is written to the store.
    pub status_every: Duration,
}

impl Default for DiscoverySettings {
    fn default() -> Self {
        DiscoverySettings {
            stream: StreamSettings::default(),
            debounce: Debounce::default(),
            status_every: Duration::from_secs(1),
        }
    }
}

#[derive(Clone)]
pub struct Discovery {
    ctx: Arc<session::Context>,
}

/// How long a new stream may take to say who it is.
const HELLO_WITHIN: Duration = Duration::from_secs(10);

impl Discovery {
    pub fn start(
        store: StoreNode,
        server: String,
        settings: DiscoverySettings,
        stop: watch::Receiver<bool>,
    ) -> Discovery {
        let mirror = Mirror::start(store.clone(), settings.debounce, stop.clone());
        let nodes = NodeTable::new(server);
        nodes.spawn_flusher(store.clone(), settings.status_every, stop);
        Discovery {
            ctx: Arc::new(session::Context {
                store,
                mirror,
                nodes,
                settings: settings.stream,
            }),
        }
    }

    pub fn service(&self) -> discovery_server::DiscoveryServer<Discovery> {
        discovery_server::DiscoveryServer::new(self.clone())
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(256 << 20)
    }
}

/// A node name as the agent sends it: the host name rules, so it fits in a store key.
pub fn check_node_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 253 {
        return Err(format!("hello.node {name:?}: must be 1 to 253 characters"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'.' | b'_'))
    {
        return Err(format!(
            "hello.node {name:?}: only a-z, 0-9, '-', '.', '_' are allowed"
        ));
    }
    Ok(())
}

#[tonic::async_trait]
impl discovery_server::Discovery for Discovery {
    type StreamStream = ReceiverStream<Result<ServerMessage, Status>>;

    async fn stream(
        &self,
        request: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let peer = request
            .remote_addr()
            .map_or_else(|| "unknown peer".to_owned(), |a| a.to_string());
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(HELLO_WITHIN, inbound.message())
            .await
            .map_err(|_| {
                Status::deadline_exceeded(format!("{peer}: no hello within {HELLO_WITHIN:?}"))
            })?
            .map_err(|s| Status::invalid_argument(format!("{peer}: {}", s.message())))?;
        let hello = match first.and_then(|m| m.kind) {
            Some(agent_message::Kind::Hello(h)) => h,
            _ => {
                return Err(Status::invalid_argument(format!(
                    "{peer}: the first message of a stream must be a hello"
                )));
            }
        };
        check_node_name(&hello.node)
            .map_err(|e| Status::invalid_argument(format!("{peer}: {e}")))?;
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(session::run(self.ctx.clone(), hello, inbound, tx));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

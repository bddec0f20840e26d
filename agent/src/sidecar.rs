//! The agent's own discovery endpoint, for standalone proxies on its node
//! (`trellis proxy --agent ADDR`, a Nomad task's sidecar): the same stream the servers
//! speak, carrying the view the agent received, so a sidecar needs no server address, and
//! keeps getting config from the agent's cache while the servers are away.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, interval_at};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use trellis_api::discovery::{
    AgentMessage, PeerHolds, Ping, Push, ServerMessage, agent_message, discovery_server,
    server_message,
};

use crate::view::View;

/// How often a sidecar's stream is pinged; three silent intervals end it.
const PING_EVERY: Duration = Duration::from_secs(5);

#[derive(Clone)]
struct LocalDiscovery {
    view: watch::Receiver<Arc<View>>,
}

/// Serves sidecars on `listener` until `stop` turns true. Returns the bound address.
pub fn serve(
    listener: TcpListener,
    view: watch::Receiver<Arc<View>>,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<SocketAddr> {
    let addr = listener.local_addr()?;
    let service = discovery_server::DiscoveryServer::new(LocalDiscovery { view })
        .max_encoding_message_size(256 << 20);
    tokio::spawn(async move {
        let served = tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                async move {
                    let _ = stop.wait_for(|s| *s).await;
                },
            )
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "sidecar discovery listener failed");
        }
    });
    Ok(addr)
}

#[tonic::async_trait]
impl discovery_server::Discovery for LocalDiscovery {
    type StreamStream = ReceiverStream<Result<ServerMessage, Status>>;

    async fn stream(
        &self,
        request: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let mut inbound = request.into_inner();
        let hello = match tokio::time::timeout(Duration::from_secs(10), inbound.message()).await {
            Ok(Ok(Some(AgentMessage {
                kind: Some(agent_message::Kind::Hello(h)),
            }))) => h,
            _ => {
                return Err(Status::invalid_argument(
                    "the first message of a stream must be a hello",
                ));
            }
        };
        let (tx, rx) = mpsc::channel(16);
        let view = self.view.clone();
        tokio::spawn(async move {
            let name = hello.node.clone();
            tracing::info!(sidecar = %name, "sidecar connected");
            if let Err(why) = feed(hello.held, view, inbound, &tx).await {
                tracing::warn!(sidecar = %name, reason = %why, "sidecar stream closed");
                let _ = tx.send(Err(Status::unavailable(why))).await;
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

async fn feed(
    held: Vec<trellis_api::discovery::Held>,
    mut view: watch::Receiver<Arc<View>>,
    mut inbound: Streaming<AgentMessage>,
    tx: &mpsc::Sender<Result<ServerMessage, Status>>,
) -> Result<(), String> {
    let mut holds = PeerHolds::from_hello(&held);
    let mut first = true;
    let mut nonce = 0u64;
    let mut pings = interval_at(Instant::now() + PING_EVERY, PING_EVERY);
    let mut last_heard = Instant::now();
    let mut seq = 0;
    let send = |kind| ServerMessage { kind: Some(kind) };
    loop {
        let current = view.borrow_and_update().clone();
        // Nothing to send before the agent itself has a view.
        if !current.version.is_empty() {
            let full = first && holds.is_empty();
            let items = current
                .items
                .iter()
                .map(|(k, i)| (k.as_str(), i.revision, i.value.as_bytes()));
            let (upserts, removals) = holds.diff_all(items, full);
            if first || !upserts.is_empty() || !removals.is_empty() {
                nonce += 1;
                let push = Push {
                    version: current.version.clone(),
                    nonce: nonce.to_string(),
                    full,
                    upserts,
                    removals,
                };
                tx.send(Ok(send(server_message::Kind::Push(push))))
                    .await
                    .map_err(|_| "the sidecar went away".to_string())?;
                first = false;
            }
        }
        tokio::select! {
            changed = view.changed() => {
                if changed.is_err() {
                    return Err("the agent is stopping".into());
                }
            }
            msg = inbound.message() => {
                last_heard = Instant::now();
                match msg {
                    Ok(Some(AgentMessage { kind: Some(agent_message::Kind::Nack(n)) })) => {
                        tracing::warn!(version = %n.version, reason = %n.reason, "a sidecar refused a push");
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => return Ok(()),
                    Err(s) => return Err(s.message().to_owned()),
                }
            }
            _ = pings.tick() => {
                if last_heard.elapsed() > PING_EVERY * 3 {
                    return Err(format!("no word from the sidecar for {:?}", last_heard.elapsed()));
                }
                seq += 1;
                let ping = Ping { seq, interval_ms: u64::try_from(PING_EVERY.as_millis()).unwrap_or(5000) };
                tx.send(Ok(send(server_message::Kind::Ping(ping))))
                    .await
                    .map_err(|_| "the sidecar went away".to_string())?;
            }
        }
    }
}

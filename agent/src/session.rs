//! The agent's side of the discovery stream: connect to a server (moving on to the next
//! with backoff and jitter when one fails), say hello with what the agent already holds,
//! apply each push to the proxy and answer ACK or NACK, send the node's registration
//! whenever its health changes, and reconnect when the server falls silent.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, sleep, sleep_until};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Endpoint;
use trellis_api::discovery::{
    Ack, AgentMessage, Hello, Nack, Pong, Registration, agent_message, discovery_client,
    server_message,
};

use crate::health::HealthReport;
use crate::run::Shared;

#[derive(Debug, Clone, Copy)]
pub struct SessionSettings {
    pub connect_timeout: Duration,
    /// Backoff between attempts grows from `backoff_min` to `backoff_max`, with full jitter.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// Assumed until the server's first ping says otherwise.
    pub ping_interval: Duration,
}

impl Default for SessionSettings {
    fn default() -> Self {
        SessionSettings {
            connect_timeout: Duration::from_secs(2),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            ping_interval: Duration::from_secs(5),
        }
    }
}

/// Runs until `stop` turns true.
pub async fn run(
    shared: Arc<Shared>,
    mut health: watch::Receiver<HealthReport>,
    mut stop: watch::Receiver<bool>,
) {
    let servers = shared.servers.clone();
    if servers.is_empty() {
        return;
    }
    // Register with real results rather than "critical, not checked yet": every check runs
    // at once, so the first full report is a moment away.
    let first_checks = Duration::from_secs(2);
    let _ = tokio::time::timeout(first_checks, health.changed()).await;
    let mut next = rand::rng().random_range(0..servers.len());
    let mut failures: u32 = 0;
    loop {
        if *stop.borrow() {
            return;
        }
        let server = &servers[next % servers.len()];
        next += 1;
        let outcome = stream(&shared, server, &mut health, &mut stop).await;
        match outcome {
            Ok(Ended::Stopped) => return,
            Ok(Ended::Served) => {
                failures = 0;
                tracing::warn!(server = %server, "stream ended; moving to the next server");
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                tracing::warn!(server = %server, error = %e, "no stream with this server");
            }
        }
        shared.set_connected(None);
        // Full jitter: agents that lost the same server do not all come back at once.
        let cap = shared
            .settings
            .backoff_min
            .saturating_mul(2u32.saturating_pow(failures.min(16)))
            .min(shared.settings.backoff_max);
        let wait = rand::rng().random_range(Duration::ZERO..=cap);
        tokio::select! {
            _ = sleep(wait) => {}
            _ = stop.changed() => return,
        }
    }
}

enum Ended {
    /// The stream delivered at least one push before it ended.
    Served,
    Stopped,
}

async fn stream(
    shared: &Shared,
    server: &str,
    health: &mut watch::Receiver<HealthReport>,
    stop: &mut watch::Receiver<bool>,
) -> Result<Ended, String> {
    let endpoint = Endpoint::from_shared(format!("http://{server}"))
        .map_err(|e| format!("{server}: not a server address: {e}"))?
        .connect_timeout(shared.settings.connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true);
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| format!("connecting: {e}"))?;
    let mut client = discovery_client::DiscoveryClient::new(channel)
        .max_decoding_message_size(256 << 20)
        .max_encoding_message_size(64 << 20);
    let (tx, rx) = mpsc::channel::<AgentMessage>(16);
    let registration = shared.registration(&health.borrow_and_update());
    let hello = Hello {
        node: shared.node.name.clone(),
        held: shared.held(),
        applied_version: shared.applied_version(),
        registration: (!shared.proxy_only).then_some(registration),
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        proxy_only: shared.proxy_only,
    };
    let send = |kind| AgentMessage { kind: Some(kind) };
    tx.send(send(agent_message::Kind::Hello(hello)))
        .await
        .map_err(|_| "stream closed".to_string())?;
    let mut inbound = client
        .stream(ReceiverStream::new(rx))
        .await
        .map_err(|s| format!("opening the stream: {}", s.message()))?
        .into_inner();
    shared.set_connected(Some(server.to_owned()));
    tracing::info!(server = %server, "stream open");

    let mut silence = shared.settings.ping_interval * 3;
    let mut last_heard = Instant::now();
    let mut served = false;
    loop {
        tokio::select! {
            msg = inbound.message() => {
                last_heard = Instant::now();
                let msg = match msg {
                    Ok(Some(m)) => m,
                    Ok(None) if served => return Ok(Ended::Served),
                    Ok(None) => return Err("the server closed the stream".into()),
                    Err(s) if served => {
                        tracing::warn!(server = %server, error = %s.message(), "stream failed");
                        return Ok(Ended::Served);
                    }
                    Err(s) => return Err(s.message().to_owned()),
                };
                match msg.kind {
                    Some(server_message::Kind::Push(push)) => {
                        served = true;
                        let answer = match shared.apply(&push).await {
                            Ok(()) => agent_message::Kind::Ack(Ack { version: push.version, nonce: push.nonce }),
                            Err(reason) => agent_message::Kind::Nack(Nack { version: push.version, nonce: push.nonce, reason }),
                        };
                        tx.send(send(answer)).await.map_err(|_| "stream closed".to_string())?;
                    }
                    Some(server_message::Kind::Ping(ping)) => {
                        if ping.interval_ms > 0 {
                            silence = Duration::from_millis(ping.interval_ms) * 3;
                        }
                        tx.send(send(agent_message::Kind::Pong(Pong { seq: ping.seq })))
                            .await
                            .map_err(|_| "stream closed".to_string())?;
                    }
                    None => {}
                }
            }
            changed = health.changed() => {
                if changed.is_err() {
                    // The checks are gone: the agent is stopping.
                    return Ok(Ended::Stopped);
                }
                let reg: Registration = shared.registration(&health.borrow_and_update());
                if shared.proxy_only {
                    continue;
                }
                tx.send(send(agent_message::Kind::Registration(reg)))
                    .await
                    .map_err(|_| "stream closed".to_string())?;
            }
            _ = sleep_until(last_heard + silence) => {
                let reason = format!("the server said nothing for {silence:?}");
                if served {
                    tracing::warn!(server = %server, "{reason}");
                    return Ok(Ended::Served);
                }
                return Err(reason);
            }
            _ = stop.changed() => {
                if !shared.proxy_only {
                    leave(server, tx, &mut inbound).await;
                }
                return Ok(Ended::Stopped);
            }
        }
    }
}

/// A clean stop takes the node's workloads out of the mesh first (as a Consul client
/// leaves on terminate), so other proxies stop sending new requests while this one drains.
/// The registration goes as an empty one; the server has written it once it ends the
/// stream after our end. A crash leaves the registration as it was.
async fn leave(
    server: &str,
    tx: mpsc::Sender<AgentMessage>,
    inbound: &mut tonic::Streaming<trellis_api::discovery::ServerMessage>,
) {
    let empty = Registration::default();
    let _ = tx
        .send(AgentMessage {
            kind: Some(agent_message::Kind::Registration(empty)),
        })
        .await;
    // Closing our side tells the server we are done; it ends its side once the
    // registration is stored.
    drop(tx);
    let until = Instant::now() + Duration::from_secs(3);
    loop {
        match tokio::time::timeout_at(until, inbound.message()).await {
            Ok(Ok(Some(_))) => continue,
            Ok(_) => {
                tracing::info!(server = %server, "left the mesh: workloads deregistered");
                return;
            }
            Err(_) => {
                tracing::warn!(server = %server, "leaving: the server did not confirm in 3s");
                return;
            }
        }
    }
}

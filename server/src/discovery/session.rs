//! One agent's stream: the first full view (or the difference from what it holds), then
//! one push per burst of changes that touch its view; ACK/NACK bookkeeping; pings both
//! ways so a stalled stream is noticed and closed; the node's registration written to the
//! store.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, mpsc};
use tokio::time::{Instant, interval_at, sleep_until};
use tonic::{Status, Streaming};
use trellis_api::discovery::{
    self as pb, AgentMessage, HealthStatus, Item, Ping, Push, Registration, ServerMessage,
    StoredEndpoint, agent_message, server_message,
};
use trellis_raft_store::{Op, StoreNode, Txn};

use super::mirror::{Changes, Mirror};
use super::nodes::NodeTable;
use super::scope::Scope;

#[derive(Debug, Clone, Copy)]
pub struct StreamSettings {
    /// How often the server pings; three silent intervals end the stream.
    pub ping_interval: Duration,
    /// A push not answered (ACK or NACK) this long ends the stream; the agent reconnects.
    pub push_deadline: Duration,
}

impl Default for StreamSettings {
    fn default() -> Self {
        StreamSettings {
            ping_interval: Duration::from_secs(5),
            push_deadline: Duration::from_secs(15),
        }
    }
}

pub struct Context {
    pub store: StoreNode,
    pub mirror: Mirror,
    pub nodes: NodeTable,
    pub settings: StreamSettings,
}

pub type Outbound = mpsc::Sender<Result<ServerMessage, Status>>;

/// Changes not yet pushed to one stream.
#[derive(Default)]
struct Pending {
    keys: BTreeSet<String>,
    /// Compare the whole view (a resync, a Sidecar change, a lagging subscriber).
    all: bool,
    revision: u64,
}

impl Pending {
    fn add(&mut self, c: &Changes) {
        self.revision = self.revision.max(c.revision);
        if c.resync || c.keys.iter().any(|k| Scope::is_scope_key(k)) {
            self.all = true;
        } else if !self.all {
            self.keys.extend(c.keys.iter().cloned());
        }
    }

    fn any(&self) -> bool {
        self.all || !self.keys.is_empty()
    }
}

struct Session {
    ctx: Arc<Context>,
    node: String,
    out: Outbound,
    /// What the agent holds (as far as this server sent or was told).
    held: pb::PeerHolds,
    namespaces: BTreeSet<String>,
    scope: Scope,
    nonce: u64,
    /// Pushes not yet answered, oldest first: (nonce, when sent).
    awaiting: std::collections::VecDeque<(u64, Instant)>,
    /// A registration not yet in the store (no leader at the time): retried.
    unwritten: Option<Registration>,
}

pub async fn run(
    ctx: Arc<Context>,
    hello: pb::Hello,
    mut inbound: Streaming<AgentMessage>,
    out: Outbound,
) {
    let node = hello.node.clone();
    ctx.nodes
        .connected(&node, &hello.agent_version, &hello.applied_version);
    tracing::info!(node = %node, held = hello.held.len(), "discovery: node connected");
    let mut session = Session {
        ctx: ctx.clone(),
        node: node.clone(),
        out,
        held: pb::PeerHolds::from_hello(&hello.held),
        namespaces: BTreeSet::new(),
        scope: Scope::default(),
        nonce: 0,
        awaiting: std::collections::VecDeque::new(),
        unwritten: None,
    };
    if let Some(reg) = hello.registration.filter(|_| !hello.proxy_only) {
        let _ = session.set_registration(reg).await;
    }
    let end = session.serve(&mut inbound).await;
    match end {
        Ok(()) => tracing::info!(node = %node, "discovery: node disconnected"),
        Err(why) => {
            tracing::warn!(node = %node, reason = %why, "discovery: stream closed");
            let _ = session.out.send(Err(Status::unavailable(why))).await;
        }
    }
    ctx.nodes.disconnected(&node);
}

impl Session {
    async fn serve(&mut self, inbound: &mut Streaming<AgentMessage>) -> Result<(), String> {
        let ctx = self.ctx.clone();
        let out = self.out.clone();
        // Subscribe before computing the first view, so no change falls in between.
        let mut changes = ctx.mirror.subscribe();
        ctx.mirror.ready().await;
        self.rescope();
        let resumed = !self.held.is_empty();
        // The first push goes even when nothing differs: it tells the agent its version.
        let first = self.diff_all(!resumed);
        let first = self.message(first.0, !resumed, first.1, first.2);
        tokio::time::timeout(ctx.settings.push_deadline, out.send(Ok(first)))
            .await
            .map_err(|_| "the agent took no first push".to_string())?
            .map_err(|_| "the agent went away".to_string())?;

        // Changes wait here while the agent is slow to read: they merge into one push
        // instead of queueing one push per burst.
        let mut pending = Pending::default();
        let every = ctx.settings.ping_interval;
        let mut pings = interval_at(Instant::now() + every, every);
        let mut last_heard = Instant::now();
        let mut seq = 0u64;
        let mut retry = Instant::now() + Duration::from_secs(3600);
        loop {
            let deadline = self
                .awaiting
                .front()
                .map(|(_, at)| *at + ctx.settings.push_deadline);
            tokio::select! {
                change = changes.recv() => match change {
                    Ok(c) => pending.add(&c),
                    Err(broadcast::error::RecvError::Lagged(_)) => pending.all = true,
                    Err(broadcast::error::RecvError::Closed) => return Err("server stopping".into()),
                },
                permit = out.reserve(), if pending.any() => {
                    let permit = permit.map_err(|_| "the agent went away".to_string())?;
                    if let Some(message) = self.take(&mut pending) {
                        permit.send(Ok(message));
                    }
                },
                msg = inbound.message() => {
                    last_heard = Instant::now();
                    match msg {
                        Ok(Some(m)) => {
                            if let Some(reg) = self.on_message(m)?
                                && self.set_registration(reg).await
                            {
                                pending.all = true;
                            }
                        }
                        Ok(None) => return Ok(()),
                        Err(s) => return Err(format!("agent stream failed: {}", s.message())),
                    }
                },
                _ = pings.tick() => {
                    if last_heard.elapsed() > every * 3 {
                        return Err(format!("no word from the agent for {:?}", last_heard.elapsed()));
                    }
                    seq += 1;
                    // A full queue means the agent reads nothing; the push deadline ends
                    // that stream, so a ping that does not fit is simply not sent.
                    let _ = out.try_send(Ok(ServerMessage {
                        kind: Some(server_message::Kind::Ping(Ping {
                            seq,
                            interval_ms: u64::try_from(every.as_millis()).unwrap_or(u64::MAX),
                        })),
                    }));
                },
                _ = sleep_until(deadline.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600))), if deadline.is_some() => {
                    return Err(format!(
                        "push {} not answered within {:?}",
                        self.awaiting.front().map_or(0, |(n, _)| *n),
                        ctx.settings.push_deadline
                    ));
                },
                _ = sleep_until(retry), if self.unwritten.is_some() => {
                    if let Some(reg) = self.unwritten.take()
                        && self.set_registration(reg).await
                    {
                        pending.all = true;
                    }
                    retry = Instant::now() + Duration::from_millis(500);
                },
            }
            if self.unwritten.is_some() && retry > Instant::now() + Duration::from_secs(1) {
                retry = Instant::now() + Duration::from_millis(500);
            }
        }
    }

    fn on_message(&mut self, m: AgentMessage) -> Result<Option<Registration>, String> {
        match m.kind {
            Some(agent_message::Kind::Ack(a)) => {
                self.answered(&a.nonce);
                self.ctx.nodes.acked(&self.node, &a.version);
            }
            Some(agent_message::Kind::Nack(n)) => {
                self.answered(&n.nonce);
                tracing::warn!(node = %self.node, version = %n.version, reason = %n.reason, "discovery: push refused");
                self.ctx.nodes.nacked(&self.node, &n.version, &n.reason);
            }
            Some(agent_message::Kind::Registration(r)) => return Ok(Some(r)),
            Some(agent_message::Kind::Pong(_)) => {}
            Some(agent_message::Kind::Hello(_)) => {
                return Err("a second hello on one stream".into());
            }
            None => {}
        }
        Ok(None)
    }

    /// Answers come in order, so an answer settles its push and every earlier one.
    fn answered(&mut self, nonce: &str) {
        if let Ok(n) = nonce.parse::<u64>() {
            while self.awaiting.front().is_some_and(|(x, _)| *x <= n) {
                self.awaiting.pop_front();
            }
        }
    }

    fn rescope(&mut self) {
        let mirror = self.ctx.mirror.read();
        self.scope = Scope::for_node(&self.namespaces, &mirror);
    }

    /// The push for what piled up, or `None` when it changes nothing the agent holds.
    fn take(&mut self, pending: &mut Pending) -> Option<ServerMessage> {
        let p = std::mem::take(pending);
        let (revision, upserts, removals) = if p.all {
            self.rescope();
            self.diff_all(false)
        } else {
            let mirror = self.ctx.mirror.read();
            let scope = &self.scope;
            let (upserts, removals) =
                self.held
                    .diff_keys(p.keys.iter().map(String::as_str), |key| {
                        mirror
                            .items
                            .get(key)
                            .filter(|_| scope.includes(key))
                            .map(|e| (e.revision, e.value.to_vec()))
                    });
            (p.revision.max(mirror.revision), upserts, removals)
        };
        if upserts.is_empty() && removals.is_empty() {
            return None;
        }
        Some(self.message(revision, false, upserts, removals))
    }

    /// Compares the whole view with what the agent holds. `full`: everything, and the
    /// agent drops the rest.
    fn diff_all(&mut self, full: bool) -> (u64, Vec<Item>, Vec<String>) {
        let mirror = self.ctx.mirror.read();
        let scope = &self.scope;
        let view = mirror
            .items
            .iter()
            .filter(|(k, _)| scope.includes(k))
            .map(|(k, e)| (k.as_str(), e.revision, &e.value[..]));
        let (upserts, removals) = self.held.diff_all(view, full);
        (mirror.revision, upserts, removals)
    }

    /// A push with the next nonce, recorded as awaiting its answer.
    fn message(
        &mut self,
        revision: u64,
        full: bool,
        upserts: Vec<Item>,
        removals: Vec<String>,
    ) -> ServerMessage {
        self.nonce += 1;
        let version = revision.to_string();
        tracing::debug!(node = %self.node, %version, upserts = upserts.len(), removals = removals.len(), full, "discovery: push");
        self.ctx.nodes.sent(&self.node, &version);
        self.awaiting.push_back((self.nonce, Instant::now()));
        ServerMessage {
            kind: Some(server_message::Kind::Push(Push {
                version,
                nonce: self.nonce.to_string(),
                full,
                upserts,
                removals,
            })),
        }
    }

    /// Writes the node's workloads as endpoints: puts what changed, deletes what the node no
    /// longer runs. Failing that (no leader), keeps it to retry. Returns whether the node's
    /// namespaces changed (and so what it may see).
    async fn set_registration(&mut self, reg: Registration) -> bool {
        let namespaces: BTreeSet<String> =
            reg.workloads.iter().map(|w| w.namespace.clone()).collect();
        let rescoped = namespaces != self.namespaces;
        if rescoped {
            self.namespaces = namespaces;
            self.rescope();
        }
        self.ctx.nodes.registered(
            &self.node,
            &reg.address,
            reg.workloads
                .iter()
                .map(|w| format!("{}/{}", w.namespace, w.name))
                .collect(),
        );
        let ops = {
            let mirror = self.ctx.mirror.read();
            let mut ops = Vec::new();
            let mut wanted = BTreeSet::new();
            for w in &reg.workloads {
                let port = u16::try_from(w.port).unwrap_or(0);
                let key = pb::endpoint_key(&w.namespace, &w.name, &self.node, port);
                let stored = StoredEndpoint {
                    node: self.node.clone(),
                    address: reg.address.clone(),
                    port,
                    protocol: w.protocol.clone(),
                    labels: w.labels.clone().into_iter().collect(),
                    service_account: w.service_account.clone(),
                    locality: reg.locality.clone(),
                    health: HealthStatus::from_pb(w.health()),
                    health_output: w.health_output.clone(),
                };
                let value = serde_json::to_vec(&stored).unwrap_or_default();
                if mirror
                    .items
                    .get(&key)
                    .is_none_or(|e| e.value[..] != value[..])
                {
                    ops.push(Op::Put {
                        key: key.clone().into_bytes(),
                        value,
                    });
                }
                wanted.insert(key);
            }
            for key in mirror
                .items
                .range(pb::ENDPOINTS_PREFIX.to_owned()..)
                .map(|(k, _)| k)
                .take_while(|k| k.starts_with(pb::ENDPOINTS_PREFIX))
            {
                if pb::parse_endpoint_key(key).is_some_and(|(_, _, n)| n == self.node)
                    && !wanted.contains(key)
                {
                    ops.push(Op::Delete {
                        key: key.clone().into_bytes(),
                    });
                }
            }
            ops
        };
        if ops.is_empty() {
            return rescoped;
        }
        let txn = Txn {
            compare: Vec::new(),
            success: ops,
            failure: Vec::new(),
        };
        if let Err(e) = self.ctx.store.txn(txn).await {
            tracing::warn!(node = %self.node, error = %e, "discovery: registration not stored yet; retrying");
            self.unwritten = Some(reg);
        }
        rescoped
    }
}

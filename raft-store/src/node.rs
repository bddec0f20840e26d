//! One store server: its data dir, its Raft instance, how it forms or joins a cluster,
//! and the key-value operations every server answers (forwarding writes to the leader).

use std::collections::{BTreeMap, BTreeSet};
use std::net::ToSocketAddrs;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers, ServerState, SnapshotPolicy};
use tokio::time::{Instant, sleep, timeout};
use tokio_stream::wrappers::ReceiverStream;

use crate::channels::Channels;
use crate::data_dir::{DataDir, LOG_FILE, STATE_FILE};
use crate::error::Error;
use crate::forward::Forwarder;
use crate::log_store::{LogOpenError, LogStore};
use crate::network::{LinkControl, Network, OpenLinks};
use crate::pb;
use crate::state_machine::{HistoryRetention, StateMachine, StateView};
use crate::types::{Command, CommandResult, KeyValue, NodeId, Raft, Txn};
use crate::watch::{self, WatchHub, WatchUpdate};

/// The name a Trellis server gives in `Hello`, to tell it from other gRPC services.
pub const PRODUCT: &str = "trellis-server";

/// gRPC metadata key marking a request another server forwarded, so it is never
/// forwarded twice.
pub(crate) const FORWARDED: &str = "x-trellis-forwarded";

/// How long a write or a linearizable read waits for a leader before giving up.
const LEADER_WAIT: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct NodeConfig {
    pub data_dir: std::path::PathBuf,
    /// Fixed node id; a random one is chosen and kept in the data dir otherwise.
    pub node_id: Option<NodeId>,
    /// The `host:port` other servers reach this server's gRPC at.
    pub advertise_addr: String,
    /// Form a new cluster once this many servers (this one included) see each other.
    pub bootstrap_expect: u32,
    /// gRPC addresses of other servers, to form or join a cluster through.
    pub join: Vec<String>,
    pub history: HistoryRetention,
    /// Build a snapshot (and purge the log before it) every this many applied entries.
    pub snapshot_every: u64,
    /// Log entries kept behind a snapshot, so a briefly lagging peer needs no snapshot.
    pub keep_behind_snapshot: u64,
    pub heartbeat: Duration,
    pub election_timeout: (Duration, Duration),
    pub links: Arc<dyn LinkControl>,
}

impl NodeConfig {
    pub fn new(data_dir: impl Into<std::path::PathBuf>, advertise_addr: impl Into<String>) -> Self {
        NodeConfig {
            data_dir: data_dir.into(),
            node_id: None,
            advertise_addr: advertise_addr.into(),
            bootstrap_expect: 0,
            join: Vec::new(),
            history: HistoryRetention::default(),
            snapshot_every: 10_000,
            keep_behind_snapshot: 1_000,
            heartbeat: Duration::from_millis(100),
            election_timeout: (Duration::from_millis(500), Duration::from_millis(1000)),
            links: Arc::new(OpenLinks),
        }
    }
}

/// A peer as `Hello` last described it.
#[derive(Debug, Clone)]
struct KnownPeer {
    addr: String,
    initialized: bool,
}

struct Running {
    raft: Raft,
    view: StateView,
    log: LogStore,
    /// Transactions waiting to be proposed; see [`run_batcher`].
    writes: tokio::sync::mpsc::Sender<PendingWrite>,
}

/// Why the leader-side batcher could not commit a transaction.
#[derive(Debug, Clone)]
enum SubmitError {
    /// This server is not the leader; the leader, when known.
    Forward(Option<BasicNode>),
    Failed(String),
}

type PendingWrite = (
    Txn,
    tokio::sync::oneshot::Sender<Result<CommandResult, SubmitError>>,
);

/// Batches proposed at once. Concurrent writers are gathered into one entry while earlier
/// ones are in flight, so a burst costs one log write and one apply per batch, not per put.
const BATCHES_IN_FLIGHT: usize = 8;
const MAX_BATCH: usize = 512;

async fn run_batcher(raft: Raft, mut queue: tokio::sync::mpsc::Receiver<PendingWrite>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(BATCHES_IN_FLIGHT));
    while let Some(first) = queue.recv().await {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(more) => batch.push(more),
                Err(_) => break,
            }
        }
        let raft = raft.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let (mut txns, waiters): (Vec<Txn>, Vec<_>) = batch.into_iter().unzip();
            let command = if txns.len() == 1 {
                Command::Txn(txns.remove(0))
            } else {
                Command::Batch(txns)
            };
            let answers: Vec<Result<CommandResult, SubmitError>> =
                match raft.client_write(command).await {
                    Ok(resp) if resp.data.batch.is_empty() => vec![Ok(resp.data)],
                    Ok(resp) => resp.data.batch.into_iter().map(Ok).collect(),
                    Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                        vec![Err(SubmitError::Forward(f.leader_node)); waiters.len()]
                    }
                    Err(e) => vec![Err(SubmitError::Failed(e.to_string())); waiters.len()],
                };
            for (waiter, answer) in waiters.into_iter().zip(answers) {
                let _ = waiter.send(answer);
            }
        });
    }
}

impl Running {
    /// Queues `txn` for the batcher; the outer error means the batcher has stopped.
    async fn submit(
        &self,
        txn: Txn,
    ) -> Result<Result<CommandResult, SubmitError>, tokio::sync::oneshot::error::RecvError> {
        let (answer, answered) = tokio::sync::oneshot::channel();
        // A stopped batcher drops the answer with the request, so the receive fails.
        let _ = self.writes.send((txn, answer)).await;
        answered.await
    }
}

struct Inner {
    id: NodeId,
    addr: String,
    data_dir: DataDir,
    config: NodeConfig,
    channels: Channels,
    cluster_id: Arc<RwLock<String>>,
    known: Mutex<BTreeMap<NodeId, KnownPeer>>,
    hub: Arc<WatchHub>,
    running: RwLock<Option<Arc<Running>>>,
    forwarder: Forwarder,
}

/// A store server. Cheap to clone; all clones are the same server.
#[derive(Clone)]
pub struct StoreNode {
    inner: Arc<Inner>,
}

/// What a membership listing says of one server.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MemberStatus {
    pub id: NodeId,
    pub address: String,
    pub voter: bool,
    pub leader: bool,
    /// The newest log index the leader knows this member holds.
    pub last_index: Option<u64>,
}

/// This server's view of the cluster.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ClusterStatus {
    pub leader: Option<NodeId>,
    pub term: u64,
    pub last_log_index: u64,
    pub applied_index: u64,
    pub members: Vec<MemberStatus>,
}

enum Probe {
    Trellis(pb::HelloResponse),
    Unreachable(String),
    Foreign(String),
}

impl StoreNode {
    /// Checks the data dir and settles this server's identity, writing nothing yet.
    pub fn prepare(config: NodeConfig) -> Result<StoreNode, Error> {
        if config.advertise_addr.to_socket_addrs().is_err() {
            return Err(Error::InvalidRequest(format!(
                "--grpc-addr {}: not a host:port this machine can resolve",
                config.advertise_addr
            )));
        }
        let data_dir = DataDir::inspect(&config.data_dir, config.node_id)?;
        Ok(StoreNode {
            inner: Arc::new(Inner {
                id: data_dir.node_id,
                addr: config.advertise_addr.clone(),
                data_dir,
                config,
                channels: Channels::default(),
                cluster_id: Arc::new(RwLock::new(String::new())),
                known: Mutex::new(BTreeMap::new()),
                hub: Arc::new(WatchHub::default()),
                running: RwLock::new(None),
                forwarder: Forwarder::default(),
            }),
        })
    }

    pub fn id(&self) -> NodeId {
        self.inner.id
    }

    pub fn addr(&self) -> &str {
        &self.inner.addr
    }

    pub fn cluster_id(&self) -> String {
        self.inner
            .cluster_id
            .read()
            .map(|c| c.clone())
            .unwrap_or_default()
    }

    fn running(&self) -> Result<Arc<Running>, Error> {
        self.inner
            .running
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| Error::NoLeader(format!("server {} is not running", self.inner.addr)))
    }

    /// This server's Raft instance, while it runs.
    pub fn raft(&self) -> Result<Raft, Error> {
        Ok(self.running()?.raft.clone())
    }

    /// Opens the store and starts Raft, after checking `--join` peers: a peer that is
    /// not a Trellis server, a node id clash or a data dir of another cluster stops the
    /// start before anything is written.
    pub async fn start(&self) -> Result<(), Error> {
        let inner = &self.inner;
        *inner.cluster_id.write().unwrap_or_else(|p| p.into_inner()) =
            inner.data_dir.cluster_id.clone();
        if !inner.config.join.is_empty() {
            self.check_join_peers().await?;
        }
        if !inner.data_dir.existing {
            inner.data_dir.create()?;
        }
        let (log, view, sm) = self.open_store()?;
        inner.data_dir.mark_current_format()?;
        if self.cluster_id().is_empty()
            && let Ok(id) = view.cluster_id()
        {
            *inner.cluster_id.write().unwrap_or_else(|p| p.into_inner()) = id;
        }
        let raft_config = openraft::Config {
            cluster_name: "trellis".into(),
            heartbeat_interval: millis(inner.config.heartbeat),
            election_timeout_min: millis(inner.config.election_timeout.0),
            election_timeout_max: millis(inner.config.election_timeout.1),
            // Large snapshots on a slow disk must not time out half-way.
            install_snapshot_timeout: 60_000,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(inner.config.snapshot_every.max(1)),
            max_in_snapshot_log_to_keep: inner.config.keep_behind_snapshot,
            snapshot_max_chunk_size: 1 << 20,
            max_payload_entries: 512,
            ..Default::default()
        }
        .validate()
        .map_err(|e| Error::InvalidRequest(format!("raft settings: {e}")))?;
        let network = Network {
            me: inner.id,
            channels: inner.channels.clone(),
            links: inner.config.links.clone(),
            cluster_id: inner.cluster_id.clone(),
        };
        let raft = Raft::new(inner.id, Arc::new(raft_config), network, log.clone(), sm)
            .await
            .map_err(|e| Error::Raft(e.to_string()))?;
        {
            let mut running = inner.running.write().unwrap_or_else(|p| p.into_inner());
            if running.is_some() {
                return Err(Error::InvalidRequest(
                    "this server was already started".into(),
                ));
            }
            let (writes, queue) = tokio::sync::mpsc::channel(4096);
            tokio::spawn(run_batcher(raft.clone(), queue));
            *running = Some(Arc::new(Running {
                raft,
                view,
                log,
                writes,
            }));
        }
        let node = self.clone();
        tokio::spawn(async move { node.form_or_join().await });
        let node = self.clone();
        tokio::spawn(async move { node.leader_duties().await });
        Ok(())
    }

    fn open_store(&self) -> Result<(LogStore, StateView, StateMachine), Error> {
        let dir = &self.inner.data_dir;
        let log_db = Arc::new(dir.open_db(LOG_FILE)?);
        let state_db = Arc::new(dir.open_db(STATE_FILE)?);
        let storage = |file: &str, e: redb::Error| Error::DataDir {
            path: dir.path.join(file),
            reason: e.to_string(),
        };
        let log = LogStore::open(log_db, &dir.path).map_err(|e| match e {
            LogOpenError::Meta(e) => storage(LOG_FILE, e),
            LogOpenError::Segments(e) => Error::DataDir {
                path: e.path,
                reason: e.reason,
            },
        })?;
        let sm = StateMachine::open(
            state_db,
            dir.path.clone(),
            self.inner.hub.clone(),
            self.inner.config.history,
        )
        .map_err(|e| storage(STATE_FILE, e))?;
        Ok((log, sm.view(), sm))
    }

    /// Waits until at least one `--join` peer answered as a Trellis server of a
    /// compatible cluster. A server with state of its own stops waiting after a few
    /// seconds: its peers may all be down, and Raft will find them when they return.
    async fn check_join_peers(&self) -> Result<(), Error> {
        let started = Instant::now();
        let mut foreign: BTreeMap<String, u32> = BTreeMap::new();
        let mut last_log = Instant::now();
        loop {
            for addr in self
                .inner
                .config
                .join
                .iter()
                .filter(|a| **a != self.inner.addr)
            {
                match self.probe(addr).await {
                    Probe::Trellis(hello) => {
                        self.check_peer(addr, &hello)?;
                        self.learn(&hello);
                        return Ok(());
                    }
                    Probe::Foreign(answer) => {
                        let seen = foreign.entry(addr.clone()).or_default();
                        *seen += 1;
                        if *seen >= 3 {
                            return Err(Error::NotATrellisServer {
                                addr: addr.clone(),
                                answer,
                            });
                        }
                    }
                    Probe::Unreachable(why) => {
                        if last_log.elapsed() > Duration::from_secs(5) {
                            tracing::info!(peer = %addr, reason = %why, "waiting for --join peer");
                            last_log = Instant::now();
                        }
                    }
                }
            }
            if self.inner.data_dir.existing && started.elapsed() > Duration::from_secs(3) {
                return Ok(());
            }
            sleep(Duration::from_millis(300)).await;
        }
    }

    fn check_peer(&self, addr: &str, hello: &pb::HelloResponse) -> Result<(), Error> {
        let me = self.inner.id;
        if let Some(peer) = &hello.me
            && peer.node_id == me
            && peer.addr != self.inner.addr
        {
            return Err(Error::NodeIdClash {
                node_id: me,
                other: format!("the server at {addr}"),
                path: self.inner.data_dir.path.clone(),
            });
        }
        if let Some(member) = hello
            .members
            .iter()
            .find(|m| m.node_id == me && m.addr != self.inner.addr)
        {
            return Err(Error::NodeIdClash {
                node_id: me,
                other: format!("cluster member {}", member.addr),
                path: self.inner.data_dir.path.clone(),
            });
        }
        let ours = self.cluster_id();
        if !ours.is_empty() && !hello.cluster_id.is_empty() && ours != hello.cluster_id {
            return Err(Error::ForeignCluster {
                path: self.inner.data_dir.path.clone(),
                ours,
                theirs: hello.cluster_id.clone(),
                peer: addr.to_string(),
            });
        }
        Ok(())
    }

    fn learn(&self, hello: &pb::HelloResponse) {
        let mut known = self.inner.known.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(me) = &hello.me {
            known.insert(
                me.node_id,
                KnownPeer {
                    addr: me.addr.clone(),
                    initialized: hello.initialized,
                },
            );
        }
        for peer in &hello.known {
            if peer.node_id != self.inner.id {
                known.entry(peer.node_id).or_insert(KnownPeer {
                    addr: peer.addr.clone(),
                    initialized: false,
                });
            }
        }
    }

    async fn probe(&self, addr: &str) -> Probe {
        match timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Probe::Unreachable(e.to_string()),
            Err(_) => return Probe::Unreachable("connect timed out".into()),
        }
        let mut client = pb::cluster_client::ClusterClient::new(self.inner.channels.get(addr));
        let mut request = tonic::Request::new(pb::HelloRequest {
            from: Some(pb::Peer {
                node_id: self.inner.id,
                addr: self.inner.addr.clone(),
            }),
            bootstrap_expect: self.inner.config.bootstrap_expect,
        });
        request.set_timeout(Duration::from_secs(5));
        match client.hello(request).await {
            Ok(r) => {
                let r = r.into_inner();
                if r.product == PRODUCT {
                    Probe::Trellis(r)
                } else {
                    Probe::Foreign(format!("it calls itself '{}'", r.product))
                }
            }
            Err(s) if s.code() == tonic::Code::FailedPrecondition => {
                Probe::Foreign(s.message().to_string())
            }
            Err(s) if s.code() == tonic::Code::Unimplemented => {
                Probe::Foreign("it speaks gRPC but has no Trellis cluster service".into())
            }
            Err(s) => Probe::Foreign(format!("no gRPC answer: {}", s.message())),
        }
    }

    /// Keeps trying to form a cluster (bootstrap-expect) or join one until this server
    /// is part of one.
    async fn form_or_join(&self) {
        let Ok(raft) = self.raft() else { return };
        let expect = self.inner.config.bootstrap_expect;
        let alone = expect <= 1 && self.inner.config.join.is_empty();
        let mut last_log = Instant::now();
        loop {
            match raft.is_initialized().await {
                Ok(true) => return,
                Ok(false) => {}
                Err(_) => return,
            }
            if alone {
                let members = BTreeMap::from([(self.inner.id, BasicNode::new(&self.inner.addr))]);
                if let Err(e) = raft.initialize(members).await {
                    tracing::debug!(error = %e, "initialize");
                }
                continue;
            }
            let mut addrs: BTreeSet<String> = self.inner.config.join.iter().cloned().collect();
            addrs.extend(
                self.inner
                    .known
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .values()
                    .map(|p| p.addr.clone()),
            );
            addrs.remove(&self.inner.addr);
            let mut joined = false;
            for addr in &addrs {
                if let Probe::Trellis(hello) = self.probe(addr).await {
                    if self.check_peer(addr, &hello).is_err() {
                        continue;
                    }
                    self.learn(&hello);
                    if hello.initialized && !joined {
                        joined = self.ask_to_join(addr).await;
                    }
                }
            }
            if !joined && expect > 1 {
                let ready: BTreeMap<NodeId, String> = {
                    let known = self.inner.known.lock().unwrap_or_else(|p| p.into_inner());
                    known
                        .iter()
                        .filter(|(_, p)| !p.initialized)
                        .map(|(id, p)| (*id, p.addr.clone()))
                        .chain([(self.inner.id, self.inner.addr.clone())])
                        .collect()
                };
                let lowest = ready.keys().next().copied();
                if ready.len() >= expect as usize && lowest == Some(self.inner.id) {
                    let members: BTreeMap<NodeId, BasicNode> = ready
                        .iter()
                        .map(|(id, addr)| (*id, BasicNode::new(addr)))
                        .collect();
                    tracing::info!(servers = ready.len(), "forming a new cluster");
                    if let Err(e) = raft.initialize(members).await {
                        tracing::debug!(error = %e, "initialize");
                    }
                } else if last_log.elapsed() > Duration::from_secs(5) {
                    tracing::info!(
                        seen = ready.len(),
                        expect,
                        "waiting for servers to form a cluster"
                    );
                    last_log = Instant::now();
                }
            }
            sleep(Duration::from_millis(300)).await;
        }
    }

    async fn ask_to_join(&self, addr: &str) -> bool {
        let mut client = pb::cluster_client::ClusterClient::new(self.inner.channels.get(addr));
        let mut request = tonic::Request::new(pb::JoinRequest {
            peer: Some(pb::Peer {
                node_id: self.inner.id,
                addr: self.inner.addr.clone(),
            }),
        });
        request.set_timeout(Duration::from_secs(30));
        match client.join(request).await {
            Ok(_) => {
                tracing::info!(via = %addr, "joined the cluster");
                true
            }
            Err(s) => {
                tracing::warn!(via = %addr, error = %s.message(), "join failed; retrying");
                false
            }
        }
    }

    /// While leader: give the cluster an id if it has none yet. Ends once the id is known:
    /// it never changes, and a task woken by every metrics change would be woken several
    /// times per write.
    async fn leader_duties(&self) {
        let Ok(raft) = self.raft() else { return };
        let mut metrics = raft.metrics();
        loop {
            if !self.cluster_id().is_empty() {
                return;
            }
            let (leader, applied) = {
                let m = metrics.borrow_and_update();
                (m.state == ServerState::Leader, m.last_applied)
            };
            if applied.is_some()
                && self.cluster_id().is_empty()
                && let Ok(running) = self.running()
                && let Ok(id) = running.view.cluster_id()
            {
                if !id.is_empty() {
                    *self
                        .inner
                        .cluster_id
                        .write()
                        .unwrap_or_else(|p| p.into_inner()) = id;
                } else if leader {
                    let new_id = format!(
                        "{:016x}{:016x}",
                        rand::random::<u64>(),
                        rand::random::<u64>()
                    );
                    if let Err(e) = raft.client_write(Command::SetClusterId(new_id)).await {
                        tracing::debug!(error = %e, "naming the cluster");
                    }
                    continue;
                }
            }
            if metrics.changed().await.is_err() {
                return;
            }
        }
    }

    fn leader_addr(&self, leader: Option<NodeId>) -> Option<String> {
        let raft = self.raft().ok()?;
        let leader = leader.or_else(|| raft.metrics().borrow().current_leader)?;
        if leader == self.inner.id {
            return None;
        }
        let metrics = raft.metrics();
        let m = metrics.borrow();
        m.membership_config
            .membership()
            .get_node(&leader)
            .map(|n| n.addr.clone())
    }

    // ---- answers to peers ----

    pub(crate) async fn hello(&self, req: pb::HelloRequest) -> Result<pb::HelloResponse, Error> {
        if let Some(from) = &req.from
            && from.node_id != 0
        {
            if from.node_id == self.inner.id && from.addr != self.inner.addr {
                return Err(Error::NodeIdClash {
                    node_id: from.node_id,
                    other: format!("the server at {}", self.inner.addr),
                    path: std::path::PathBuf::from("its data dir"),
                });
            }
            if from.addr != self.inner.addr {
                self.inner
                    .known
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry(from.node_id)
                    .or_insert(KnownPeer {
                        addr: from.addr.clone(),
                        initialized: false,
                    })
                    .addr = from.addr.clone();
            }
        }
        let (initialized, members) = match self.running() {
            Ok(r) => {
                let initialized = r.raft.is_initialized().await.unwrap_or(false);
                let metrics = r.raft.metrics();
                let m = metrics.borrow();
                let members = m
                    .membership_config
                    .membership()
                    .nodes()
                    .map(|(id, n)| pb::Peer {
                        node_id: *id,
                        addr: n.addr.clone(),
                    })
                    .collect();
                (initialized, members)
            }
            Err(_) => (false, Vec::new()),
        };
        let known = self
            .inner
            .known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(id, p)| pb::Peer {
                node_id: *id,
                addr: p.addr.clone(),
            })
            .collect();
        Ok(pb::HelloResponse {
            product: PRODUCT.into(),
            me: Some(pb::Peer {
                node_id: self.inner.id,
                addr: self.inner.addr.clone(),
            }),
            cluster_id: self.cluster_id(),
            initialized,
            known,
            members,
            bootstrap_expect: self.inner.config.bootstrap_expect,
        })
    }

    /// Takes a server in: learner first, voter once it has caught up.
    pub(crate) async fn join(&self, peer: pb::Peer, forwarded: bool) -> Result<String, Error> {
        let raft = self.raft()?;
        if raft.metrics().borrow().state != ServerState::Leader {
            let Some(addr) = self.leader_addr(None) else {
                return Err(Error::NoLeader("no leader to take the join".into()));
            };
            if forwarded {
                return Err(Error::NoLeader("leadership is moving".into()));
            }
            let mut client = pb::cluster_client::ClusterClient::new(self.inner.channels.get(&addr));
            let mut request = tonic::Request::new(pb::JoinRequest { peer: Some(peer) });
            request
                .metadata_mut()
                .insert(FORWARDED, tonic::metadata::MetadataValue::from_static("1"));
            return Ok(client.join(request).await?.into_inner().cluster_id);
        }
        {
            let metrics = raft.metrics();
            let m = metrics.borrow();
            let membership = m.membership_config.membership();
            if let Some(node) = membership.get_node(&peer.node_id) {
                if node.addr != peer.addr {
                    return Err(Error::NodeIdClash {
                        node_id: peer.node_id,
                        other: format!("cluster member {}", node.addr),
                        path: std::path::PathBuf::from("its data dir"),
                    });
                }
                if membership.voter_ids().any(|v| v == peer.node_id) {
                    return Ok(self.cluster_id());
                }
            }
        }
        raft.add_learner(peer.node_id, BasicNode::new(&peer.addr), true)
            .await
            .map_err(|e| Error::Raft(format!("adding {} as a learner: {e}", peer.addr)))?;
        raft.change_membership(
            ChangeMembers::AddVoterIds(BTreeSet::from([peer.node_id])),
            false,
        )
        .await
        .map_err(|e| Error::Raft(format!("promoting {} to voter: {e}", peer.addr)))?;
        tracing::info!(node_id = peer.node_id, addr = %peer.addr, "server joined as a voter");
        Ok(self.cluster_id())
    }

    /// Removes a server from the cluster (voter or learner).
    pub async fn remove_peer(&self, node_id: NodeId) -> Result<(), Error> {
        let raft = self.raft()?;
        if raft.metrics().borrow().state != ServerState::Leader {
            let Some(addr) = self.leader_addr(None) else {
                return Err(Error::NoLeader("no leader to remove the peer".into()));
            };
            let mut client = pb::cluster_client::ClusterClient::new(self.inner.channels.get(&addr));
            client
                .remove_peer(pb::RemovePeerRequest { node_id })
                .await?;
            return Ok(());
        }
        let (voter, present) = {
            let metrics = raft.metrics();
            let m = metrics.borrow();
            let membership = m.membership_config.membership();
            (
                membership.voter_ids().any(|v| v == node_id),
                membership.get_node(&node_id).is_some(),
            )
        };
        if !present {
            return Err(Error::InvalidRequest(format!(
                "node {node_id} is not a member of this cluster"
            )));
        }
        let change = if voter {
            ChangeMembers::RemoveVoters(BTreeSet::from([node_id]))
        } else {
            ChangeMembers::RemoveNodes(BTreeSet::from([node_id]))
        };
        raft.change_membership(change, false)
            .await
            .map_err(|e| Error::Raft(format!("removing node {node_id}: {e}")))?;
        Ok(())
    }

    /// Membership and replication status, as the leader sees it when it can be asked.
    pub async fn status(&self) -> Result<ClusterStatus, Error> {
        let raft = self.raft()?;
        if raft.metrics().borrow().state != ServerState::Leader
            && let Some(addr) = self.leader_addr(None)
        {
            let mut client = pb::cluster_client::ClusterClient::new(self.inner.channels.get(&addr));
            let mut request = tonic::Request::new(pb::MembersRequest {});
            request.set_timeout(Duration::from_secs(3));
            if let Ok(r) = client.members(request).await {
                return Ok(from_members_response(r.into_inner()));
            }
        }
        Ok(self.local_status())
    }

    pub(crate) fn local_status(&self) -> ClusterStatus {
        let Ok(raft) = self.raft() else {
            return ClusterStatus {
                leader: None,
                term: 0,
                last_log_index: 0,
                applied_index: 0,
                members: Vec::new(),
            };
        };
        let metrics = raft.metrics();
        let m = metrics.borrow();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let members = membership
            .nodes()
            .map(|(id, node)| MemberStatus {
                id: *id,
                address: node.addr.clone(),
                voter: voters.contains(id),
                leader: m.current_leader == Some(*id),
                last_index: if *id == self.inner.id {
                    m.last_log_index
                } else {
                    m.replication
                        .as_ref()
                        .and_then(|r| r.get(id).cloned().flatten())
                        .map(|l| l.index)
                },
            })
            .collect();
        ClusterStatus {
            leader: m.current_leader,
            term: m.current_term,
            last_log_index: m.last_log_index.unwrap_or(0),
            applied_index: m.last_applied.map_or(0, |l| l.index),
            members,
        }
    }

    pub(crate) async fn read_index(&self) -> Result<u64, Error> {
        let raft = self.raft()?;
        match raft.get_read_log_id().await {
            Ok((read, _)) => Ok(read.map_or(0, |l| l.index)),
            Err(e) => Err(Error::NoLeader(e.to_string())),
        }
    }

    // ---- the key-value API ----

    /// Waits until a read on this server sees every write acknowledged before the
    /// call: the leader's read index, applied here.
    pub async fn linearize(&self) -> Result<(), Error> {
        let raft = self.raft()?;
        let deadline = Instant::now() + LEADER_WAIT;
        loop {
            let err = match raft.ensure_linearizable().await {
                Ok(_) => return Ok(()),
                Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
                    match self.leader_addr(f.leader_id) {
                        Some(addr) => {
                            let mut client = pb::cluster_client::ClusterClient::new(
                                self.inner.channels.get(&addr),
                            );
                            let mut request = tonic::Request::new(pb::ReadIndexRequest {});
                            request.set_timeout(Duration::from_secs(5));
                            match client.read_index(request).await {
                                Ok(r) => {
                                    let index = r.into_inner().read_index;
                                    let left = deadline.saturating_duration_since(Instant::now());
                                    return raft
                                        .wait(Some(left))
                                        .applied_index_at_least(Some(index), "linearizable read")
                                        .await
                                        .map(|_| ())
                                        .map_err(|e| {
                                            Error::NoLeader(format!(
                                                "catching up to the leader: {e}"
                                            ))
                                        });
                                }
                                Err(s) => s.message().to_string(),
                            }
                        }
                        None => "no leader elected".to_string(),
                    }
                }
                Err(e) => e.to_string(),
            };
            if Instant::now() >= deadline {
                return Err(Error::NoLeader(err));
            }
            sleep(Duration::from_millis(50)).await;
        }
    }

    /// Commits a transaction through the leader, from any server.
    pub async fn txn(&self, txn: Txn) -> Result<CommandResult, Error> {
        self.write(txn, false).await
    }

    pub(crate) async fn write(&self, txn: Txn, forwarded: bool) -> Result<CommandResult, Error> {
        let running = self.running()?;
        let deadline = Instant::now() + LEADER_WAIT;
        loop {
            // A follower that knows the leader sends the write there at once, rather than
            // first hearing so from its own Raft.
            let answer = match self.known_leader(&running.raft).filter(|_| !forwarded) {
                Some(leader) => Ok(Err(SubmitError::Forward(Some(leader)))),
                None => running.submit(txn.clone()).await,
            };
            let err = match answer {
                Ok(Ok(result)) => return Ok(result),
                Ok(Err(SubmitError::Forward(leader))) => match (forwarded, leader) {
                    (false, Some(node)) => match self.forward(&node.addr, &txn).await {
                        Ok(result) => return Ok(result),
                        // The leader refused for a reason of its own: pass it on.
                        Err(s) if s.code() != tonic::Code::Unavailable => return Err(s.into()),
                        Err(s) => s.message().to_string(),
                    },
                    (true, _) => return Err(Error::NoLeader("leadership is moving".into())),
                    (false, None) => "no leader elected".to_string(),
                },
                Ok(Err(SubmitError::Failed(e))) => e,
                Err(_) => "this server is stopping".to_string(),
            };
            if Instant::now() >= deadline {
                return Err(Error::NoLeader(err));
            }
            sleep(Duration::from_millis(50)).await;
        }
    }

    /// The leader, when this server is a follower that knows it.
    fn known_leader(&self, raft: &Raft) -> Option<BasicNode> {
        let metrics = raft.metrics();
        let m = metrics.borrow();
        if m.state == ServerState::Leader {
            return None;
        }
        let leader = m.current_leader.filter(|l| *l != self.inner.id)?;
        m.membership_config.membership().get_node(&leader).cloned()
    }

    /// Sends a transaction to the leader, marked so it is never forwarded again.
    async fn forward(&self, leader: &str, txn: &Txn) -> Result<CommandResult, tonic::Status> {
        self.inner
            .forwarder
            .write(&self.inner.channels, leader, txn)
            .await
    }

    pub async fn put(
        &self,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
    ) -> Result<u64, Error> {
        Ok(self.txn(Txn::put(key, value)).await?.revision)
    }

    pub async fn delete(&self, key: impl Into<Vec<u8>>) -> Result<CommandResult, Error> {
        self.txn(Txn::delete(key)).await
    }

    /// One key (or every key under a prefix) with the revision it was read at.
    /// `stale` reads this server's state as it is, without asking the leader.
    pub async fn range(
        &self,
        key: &[u8],
        prefix: bool,
        limit: usize,
        stale: bool,
    ) -> Result<(u64, Vec<KeyValue>, bool), Error> {
        if !stale {
            self.linearize().await?;
        }
        let view = self.running()?.view.clone();
        let key = key.to_vec();
        tokio::task::spawn_blocking(move || view.range(&key, prefix, limit))
            .await
            .map_err(|e| Error::Storage(e.to_string()))?
    }

    pub async fn get(&self, key: &[u8]) -> Result<Option<KeyValue>, Error> {
        Ok(self.range(key, false, 0, false).await?.1.pop())
    }

    /// Every event under `prefix` from `from_revision` on (0: from now), in order.
    pub fn watch(
        &self,
        prefix: impl Into<Vec<u8>>,
        from_revision: u64,
    ) -> Result<ReceiverStream<WatchUpdate>, Error> {
        let view = self.running()?.view.clone();
        Ok(watch::start(
            view,
            self.inner.hub.clone(),
            prefix.into(),
            from_revision,
        ))
    }

    /// The revision of the newest write applied on this server, as it changes.
    pub fn revision(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.hub.revision()
    }

    /// The highest log index stored on this server.
    pub fn last_log_index(&self) -> Result<u64, Error> {
        let running = self.running()?;
        Ok(running
            .log
            .last_log_id()
            .map_err(|e| Error::Storage(e.to_string()))?
            .map_or(0, |l| l.index))
    }

    /// Waits until this server belongs to a named cluster with a known leader.
    pub async fn wait_ready(&self, within: Duration) -> Result<(), Error> {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(raft) = self.raft()
                && raft.metrics().borrow().current_leader.is_some()
                && !self.cluster_id().is_empty()
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::NoLeader(format!(
                    "not part of a cluster with a leader after {within:?}"
                )));
            }
            sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops Raft and ends every watch; from then on this server answers
    /// "unavailable" so clients move on. The data stays for the next start.
    pub async fn shutdown(&self) {
        let running = self
            .inner
            .running
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        self.inner.hub.close();
        if let Some(running) = running {
            let _ = running.raft.shutdown().await;
        }
    }
}

pub(crate) fn from_members_response(r: pb::MembersResponse) -> ClusterStatus {
    ClusterStatus {
        leader: r.has_leader.then_some(r.leader_id),
        term: r.term,
        last_log_index: r.last_log_index,
        applied_index: r.applied_index,
        members: r
            .members
            .into_iter()
            .map(|m| MemberStatus {
                id: m.node_id,
                address: m.addr,
                voter: m.voter,
                leader: m.leader,
                last_index: m.has_matched_index.then_some(m.matched_index),
            })
            .collect(),
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

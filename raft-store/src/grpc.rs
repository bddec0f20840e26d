//! The gRPC services every store server answers: Raft between servers, cluster
//! formation and membership, and the key-value API.

use std::pin::Pin;

use futures::{Stream, StreamExt};
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use tonic::{Request, Response, Status};

use crate::codec::{decode, encode};
use crate::node::{FORWARDED, StoreNode};
use crate::pb;
use crate::types::{Event, EventKind, KeyValue, NodeId, Op, Txn, TypeConfig};
use crate::watch::WatchUpdate;

/// The three services of a store server, ready to be added to a tonic router.
pub fn services(
    node: &StoreNode,
) -> (
    pb::raft_server::RaftServer<RaftService>,
    pb::cluster_server::ClusterServer<ClusterService>,
    pb::kv_server::KvServer<KvService>,
) {
    (
        pb::raft_server::RaftServer::new(RaftService { node: node.clone() })
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX),
        pb::cluster_server::ClusterServer::new(ClusterService { node: node.clone() })
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(usize::MAX),
        pb::kv_server::KvServer::new(KvService { node: node.clone() })
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(usize::MAX),
    )
}

fn forwarded<T>(req: &Request<T>) -> bool {
    req.metadata().contains_key(FORWARDED)
}

pub struct RaftService {
    node: StoreNode,
}

impl RaftService {
    fn check(&self, msg: &pb::RaftMessage) -> Result<(), Status> {
        check_cluster(&self.node, msg)
    }
}

fn check_cluster(node: &StoreNode, msg: &pb::RaftMessage) -> Result<(), Status> {
    let ours = node.cluster_id();
    if !ours.is_empty() && !msg.cluster_id.is_empty() && ours != msg.cluster_id {
        return Err(Status::failed_precondition(format!(
            "this server belongs to cluster {ours}, the message came from cluster {}",
            msg.cluster_id
        )));
    }
    Ok(())
}

async fn append_entries(node: &StoreNode, msg: pb::RaftMessage) -> Result<pb::RaftMessage, Status> {
    check_cluster(node, &msg)?;
    let req: AppendEntriesRequest<TypeConfig> = decode(&msg.payload).map_err(bad_payload)?;
    let raft = node.raft().map_err(Status::from)?;
    reply(&raft.append_entries(req).await, node.cluster_id()).map(Response::into_inner)
}

type ReplyStream = Pin<Box<dyn Stream<Item = Result<pb::RaftMessage, Status>> + Send>>;

fn reply<T: serde::Serialize>(
    value: &T,
    cluster_id: String,
) -> Result<Response<pb::RaftMessage>, Status> {
    let payload = encode(value).map_err(|e| Status::internal(e.to_string()))?;
    Ok(Response::new(pb::RaftMessage {
        cluster_id,
        payload,
    }))
}

fn bad_payload(e: crate::error::CodecError) -> Status {
    Status::invalid_argument(format!("raft message does not decode: {e}"))
}

#[tonic::async_trait]
impl pb::raft_server::Raft for RaftService {
    async fn vote(
        &self,
        request: Request<pb::RaftMessage>,
    ) -> Result<Response<pb::RaftMessage>, Status> {
        let msg = request.into_inner();
        self.check(&msg)?;
        let req: VoteRequest<NodeId> = decode(&msg.payload).map_err(bad_payload)?;
        let raft = self.node.raft().map_err(Status::from)?;
        reply(&raft.vote(req).await, self.node.cluster_id())
    }

    async fn append_entries(
        &self,
        request: Request<pb::RaftMessage>,
    ) -> Result<Response<pb::RaftMessage>, Status> {
        append_entries(&self.node, request.into_inner())
            .await
            .map(Response::new)
    }

    type AppendStreamStream = ReplyStream;

    async fn append_stream(
        &self,
        request: Request<tonic::Streaming<pb::RaftMessage>>,
    ) -> Result<Response<ReplyStream>, Status> {
        // Each request is handled as the reply stream is polled, so a message goes from
        // the connection to openraft and back without a task of its own. The first
        // error ends the stream with its status; the leader opens a new one.
        let replies = futures::stream::unfold(
            Some((request.into_inner(), self.node.clone())),
            |state| async move {
                let (mut inbound, node) = state?;
                let msg = inbound.message().await.ok()??;
                match append_entries(&node, msg).await {
                    Ok(reply) => Some((Ok(reply), Some((inbound, node)))),
                    Err(status) => Some((Err(status), None)),
                }
            },
        );
        Ok(Response::new(Box::pin(replies)))
    }

    async fn install_snapshot(
        &self,
        request: Request<pb::RaftMessage>,
    ) -> Result<Response<pb::RaftMessage>, Status> {
        let msg = request.into_inner();
        self.check(&msg)?;
        let req: InstallSnapshotRequest<TypeConfig> = decode(&msg.payload).map_err(bad_payload)?;
        let raft = self.node.raft().map_err(Status::from)?;
        reply(&raft.install_snapshot(req).await, self.node.cluster_id())
    }
}

pub struct ClusterService {
    node: StoreNode,
}

#[tonic::async_trait]
impl pb::cluster_server::Cluster for ClusterService {
    async fn hello(
        &self,
        request: Request<pb::HelloRequest>,
    ) -> Result<Response<pb::HelloResponse>, Status> {
        Ok(Response::new(self.node.hello(request.into_inner()).await?))
    }

    async fn join(
        &self,
        request: Request<pb::JoinRequest>,
    ) -> Result<Response<pb::JoinResponse>, Status> {
        let fwd = forwarded(&request);
        let peer = request
            .into_inner()
            .peer
            .ok_or_else(|| Status::invalid_argument("join: peer is required"))?;
        if peer.node_id == 0 || peer.addr.is_empty() {
            return Err(Status::invalid_argument(
                "join: peer.node_id and peer.addr are required",
            ));
        }
        let cluster_id = self.node.join(peer, fwd).await?;
        Ok(Response::new(pb::JoinResponse { cluster_id }))
    }

    async fn members(
        &self,
        _request: Request<pb::MembersRequest>,
    ) -> Result<Response<pb::MembersResponse>, Status> {
        let s = self.node.local_status();
        Ok(Response::new(pb::MembersResponse {
            has_leader: s.leader.is_some(),
            leader_id: s.leader.unwrap_or(0),
            term: s.term,
            last_log_index: s.last_log_index,
            committed_index: s.applied_index,
            applied_index: s.applied_index,
            members: s
                .members
                .into_iter()
                .map(|m| pb::Member {
                    node_id: m.id,
                    addr: m.address,
                    voter: m.voter,
                    leader: m.leader,
                    has_matched_index: m.last_index.is_some(),
                    matched_index: m.last_index.unwrap_or(0),
                })
                .collect(),
        }))
    }

    async fn remove_peer(
        &self,
        request: Request<pb::RemovePeerRequest>,
    ) -> Result<Response<pb::RemovePeerResponse>, Status> {
        self.node.remove_peer(request.into_inner().node_id).await?;
        Ok(Response::new(pb::RemovePeerResponse {}))
    }

    async fn read_index(
        &self,
        _request: Request<pb::ReadIndexRequest>,
    ) -> Result<Response<pb::ReadIndexResponse>, Status> {
        let read_index = self.node.read_index().await?;
        Ok(Response::new(pb::ReadIndexResponse { read_index }))
    }

    type ForwardStream = Pin<Box<dyn Stream<Item = Result<pb::ForwardReply, Status>> + Send>>;

    async fn forward(
        &self,
        request: Request<tonic::Streaming<pb::ForwardRequest>>,
    ) -> Result<Response<Self::ForwardStream>, Status> {
        let mut inbound = request.into_inner();
        let node = self.node.clone();
        let (replies, outbound) = tokio::sync::mpsc::channel(1024);
        // One task per stream runs every write on it: a forwarded write costs a message,
        // not a call and a task of its own. Past `FORWARDS_IN_FLIGHT` it stops reading, and
        // HTTP/2 flow control holds the follower back.
        tokio::spawn(async move {
            let mut writes = futures::stream::FuturesUnordered::new();
            let mut open = true;
            loop {
                tokio::select! {
                    msg = inbound.message(), if open && writes.len() < FORWARDS_IN_FLIGHT => {
                        match msg {
                            Ok(Some(req)) => writes.push(forwarded_write(node.clone(), req)),
                            // The follower is done with the stream, or it broke: finish what
                            // it sent, as a unary call would.
                            _ => open = false,
                        }
                    }
                    Some(reply) = writes.next(), if !writes.is_empty() => {
                        if replies.send(Ok(reply)).await.is_err() {
                            return;
                        }
                    }
                    else => return,
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(outbound),
        )))
    }
}

/// Forwarded writes the leader runs at once for one follower's stream.
const FORWARDS_IN_FLIGHT: usize = 4096;

async fn forwarded_write(node: StoreNode, req: pb::ForwardRequest) -> pb::ForwardReply {
    let result = match req.txn.map(txn_from_pb) {
        Some(Ok(txn)) => node.write(txn, true).await.map_err(Status::from),
        Some(Err(status)) => Err(status),
        None => Err(Status::invalid_argument(
            "a forwarded write without a transaction",
        )),
    };
    forward_reply(req.id, result)
}

fn forward_reply(id: u64, result: Result<crate::types::CommandResult, Status>) -> pb::ForwardReply {
    match result {
        Ok(r) => pb::ForwardReply {
            id,
            result: Some(txn_response(&r)),
            code: 0,
            message: String::new(),
        },
        Err(status) => pb::ForwardReply {
            id,
            result: None,
            code: status.code() as i32,
            message: status.message().to_string(),
        },
    }
}

fn txn_response(r: &crate::types::CommandResult) -> pb::TxnResponse {
    pb::TxnResponse {
        revision: r.revision,
        succeeded: r.succeeded,
        deleted: r.deleted,
    }
}

pub struct KvService {
    node: StoreNode,
}

pub(crate) fn kv_to_pb(kv: KeyValue) -> pb::KeyValue {
    pb::KeyValue {
        key: kv.key,
        value: kv.value,
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
    }
}

pub(crate) fn kv_from_pb(kv: pb::KeyValue) -> KeyValue {
    KeyValue {
        key: kv.key,
        value: kv.value,
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
    }
}

pub(crate) fn event_to_pb(e: Event) -> pb::Event {
    pb::Event {
        kind: match e.kind {
            EventKind::Put => pb::event::Kind::Put as i32,
            EventKind::Delete => pb::event::Kind::Delete as i32,
        },
        kv: Some(kv_to_pb(e.kv)),
    }
}

pub(crate) fn event_from_pb(e: pb::Event) -> Event {
    Event {
        kind: if e.kind == pb::event::Kind::Delete as i32 {
            EventKind::Delete
        } else {
            EventKind::Put
        },
        kv: kv_from_pb(e.kv.unwrap_or_default()),
    }
}

fn op_to_pb(op: &Op) -> pb::Op {
    pb::Op {
        op: Some(match op {
            Op::Put { key, value } => pb::op::Op::Put(pb::PutRequest {
                key: key.clone(),
                value: value.clone(),
            }),
            Op::Delete { key } => pb::op::Op::Delete(pb::DeleteRequest {
                key: key.clone(),
                prefix: false,
            }),
            Op::DeletePrefix { prefix } => pb::op::Op::Delete(pb::DeleteRequest {
                key: prefix.clone(),
                prefix: true,
            }),
        }),
    }
}

fn op_from_pb(op: pb::Op, path: &str) -> Result<Op, Status> {
    match op.op {
        Some(pb::op::Op::Put(p)) => {
            check_key(&p.key, path)?;
            Ok(Op::Put {
                key: p.key,
                value: p.value,
            })
        }
        Some(pb::op::Op::Delete(d)) if d.prefix => Ok(Op::DeletePrefix { prefix: d.key }),
        Some(pb::op::Op::Delete(d)) => {
            check_key(&d.key, path)?;
            Ok(Op::Delete { key: d.key })
        }
        None => Err(Status::invalid_argument(format!(
            "{path}: an operation is required"
        ))),
    }
}

fn check_key(key: &[u8], path: &str) -> Result<(), Status> {
    if key.is_empty() {
        return Err(Status::invalid_argument(format!(
            "{path}.key: must not be empty"
        )));
    }
    Ok(())
}

pub(crate) fn txn_to_pb(txn: &Txn) -> pb::TxnRequest {
    pb::TxnRequest {
        compare: txn
            .compare
            .iter()
            .map(|c| pb::Compare {
                key: c.key.clone(),
                mod_revision: c.mod_revision,
            })
            .collect(),
        success: txn.success.iter().map(op_to_pb).collect(),
        failure: txn.failure.iter().map(op_to_pb).collect(),
    }
}

pub(crate) fn txn_from_pb(req: pb::TxnRequest) -> Result<Txn, Status> {
    let mut compare = Vec::with_capacity(req.compare.len());
    for (i, c) in req.compare.into_iter().enumerate() {
        check_key(&c.key, &format!("compare[{i}]"))?;
        compare.push(crate::types::Compare {
            key: c.key,
            mod_revision: c.mod_revision,
        });
    }
    let success = req
        .success
        .into_iter()
        .enumerate()
        .map(|(i, op)| op_from_pb(op, &format!("success[{i}]")))
        .collect::<Result<_, _>>()?;
    let failure = req
        .failure
        .into_iter()
        .enumerate()
        .map(|(i, op)| op_from_pb(op, &format!("failure[{i}]")))
        .collect::<Result<_, _>>()?;
    Ok(Txn {
        compare,
        success,
        failure,
    })
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl pb::kv_server::Kv for KvService {
    async fn range(
        &self,
        request: Request<pb::RangeRequest>,
    ) -> Result<Response<pb::RangeResponse>, Status> {
        let req = request.into_inner();
        if !req.prefix {
            check_key(&req.key, "range")?;
        }
        let limit = usize::try_from(req.limit).unwrap_or(usize::MAX);
        let (revision, kvs, more) = self
            .node
            .range(&req.key, req.prefix, limit, req.stale)
            .await?;
        let kvs = kvs
            .into_iter()
            .map(|mut kv| {
                if req.keys_only {
                    kv.value.clear();
                }
                kv_to_pb(kv)
            })
            .collect();
        Ok(Response::new(pb::RangeResponse {
            revision,
            kvs,
            more,
        }))
    }

    async fn put(
        &self,
        request: Request<pb::PutRequest>,
    ) -> Result<Response<pb::PutResponse>, Status> {
        let fwd = forwarded(&request);
        let req = request.into_inner();
        check_key(&req.key, "put")?;
        let result = self.node.write(Txn::put(req.key, req.value), fwd).await?;
        Ok(Response::new(pb::PutResponse {
            revision: result.revision,
        }))
    }

    async fn delete(
        &self,
        request: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        let fwd = forwarded(&request);
        let req = request.into_inner();
        let txn = if req.prefix {
            Txn::delete_prefix(req.key)
        } else {
            check_key(&req.key, "delete")?;
            Txn::delete(req.key)
        };
        let result = self.node.write(txn, fwd).await?;
        Ok(Response::new(pb::DeleteResponse {
            revision: result.revision,
            deleted: result.deleted,
        }))
    }

    async fn txn(
        &self,
        request: Request<pb::TxnRequest>,
    ) -> Result<Response<pb::TxnResponse>, Status> {
        let fwd = forwarded(&request);
        let txn = txn_from_pb(request.into_inner())?;
        let result = self.node.write(txn, fwd).await?;
        Ok(Response::new(txn_response(&result)))
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let req = request.into_inner();
        let updates = self.node.watch(req.prefix, req.from_revision)?;
        let revision = self.node.revision();
        let stream = updates.map(move |update| {
            let current = *revision.borrow();
            Ok(match update {
                WatchUpdate::Events(events) => pb::WatchResponse {
                    events: events.into_iter().map(event_to_pb).collect(),
                    compacted: false,
                    compact_revision: 0,
                    revision: current,
                },
                WatchUpdate::Compacted { compact_revision } => pb::WatchResponse {
                    events: Vec::new(),
                    compacted: true,
                    compact_revision,
                    revision: current,
                },
            })
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

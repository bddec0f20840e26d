//! Raft RPCs from this server to its peers, over tonic gRPC.
//!
//! Every message passes a [`LinkControl`] first. In production it lets everything
//! through; tests use it to drop, delay or partition links between servers.

use std::sync::Arc;
use std::time::Duration;

use openraft::BasicNode;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::{Serialize, de::DeserializeOwned};

use crate::channels::Channels;
use crate::codec::{decode, encode};
use crate::pb;
use crate::types::{NodeId, TypeConfig};

/// What happens to one Raft message on its way from one server to another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkDecision {
    Deliver,
    Drop,
    Delay(Duration),
}

/// Decides the fate of every Raft message this server sends.
pub trait LinkControl: Send + Sync + 'static {
    fn decide(&self, from: NodeId, to: NodeId) -> LinkDecision;
}

/// Every message is delivered: the production setting.
#[derive(Debug, Default, Clone, Copy)]
pub struct OpenLinks;

impl LinkControl for OpenLinks {
    fn decide(&self, _from: NodeId, _to: NodeId) -> LinkDecision {
        LinkDecision::Deliver
    }
}

#[derive(Clone)]
pub struct Network {
    pub(crate) me: NodeId,
    pub(crate) channels: Channels,
    pub(crate) links: Arc<dyn LinkControl>,
    pub(crate) cluster_id: Arc<std::sync::RwLock<String>>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerLink;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Self::Network {
        PeerLink {
            net: self.clone(),
            target,
            addr: node.addr.clone(),
            append: None,
            append_unary: false,
        }
    }
}

pub struct PeerLink {
    net: Network,
    target: NodeId,
    addr: String,
    /// The AppendEntries stream to this peer, opened on first use. It is taken out while
    /// a request is on it and put back only once the reply is read, so a call that was
    /// cancelled or failed midway never leaves a reply behind for the next request.
    append: Option<AppendStream>,
    /// The peer does not know the stream (a server of an earlier release, during a
    /// rolling upgrade): AppendEntries goes to it one call at a time.
    append_unary: bool,
}

struct AppendStream {
    requests: tokio::sync::mpsc::Sender<pb::RaftMessage>,
    replies: tonic::Streaming<pb::RaftMessage>,
}

#[derive(Debug, thiserror::Error)]
#[error("link from {from} to {to} is cut")]
struct LinkCut {
    from: NodeId,
    to: NodeId,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Transport(String);

type CallError<E> = RPCError<NodeId, BasicNode, RaftError<NodeId, E>>;

impl PeerLink {
    async fn call<Req, Resp, E>(
        &mut self,
        method: RaftMethod,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, CallError<E>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        match self.net.links.decide(self.net.me, self.target) {
            LinkDecision::Deliver => {}
            LinkDecision::Drop => {
                return Err(RPCError::Unreachable(Unreachable::new(&LinkCut {
                    from: self.net.me,
                    to: self.target,
                })));
            }
            LinkDecision::Delay(d) => tokio::time::sleep(d).await,
        }
        let payload = encode(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let cluster_id = self
            .net
            .cluster_id
            .read()
            .map(|c| c.clone())
            .unwrap_or_default();
        let message = pb::RaftMessage {
            cluster_id,
            payload,
        };
        let reply = match method {
            RaftMethod::Append if !self.append_unary => {
                match tokio::time::timeout(option.hard_ttl(), self.append_on_stream(message)).await
                {
                    Ok(Err(status)) if status.code() == tonic::Code::Unimplemented => {
                        self.append_unary = true;
                        Err(status)
                    }
                    Ok(reply) => reply,
                    Err(_) => Err(tonic::Status::deadline_exceeded(format!(
                        "no reply within {:?}",
                        option.hard_ttl()
                    ))),
                }
            }
            _ => {
                let mut request = tonic::Request::new(message);
                request.set_timeout(option.hard_ttl());
                let mut client = self.client();
                match method {
                    RaftMethod::Vote => client.vote(request).await,
                    RaftMethod::Append => client.append_entries(request).await,
                    RaftMethod::Snapshot => client.install_snapshot(request).await,
                }
                .map(tonic::Response::into_inner)
            }
        };
        let reply = reply.map_err(|status| {
            let e = Transport(format!(
                "{} to {}: {}",
                method.name(),
                self.addr,
                status.message()
            ));
            match status.code() {
                tonic::Code::Unavailable
                | tonic::Code::DeadlineExceeded
                | tonic::Code::Cancelled => RPCError::Unreachable(Unreachable::new(&e)),
                _ => RPCError::Network(NetworkError::new(&e)),
            }
        })?;
        let result: Result<Resp, RaftError<NodeId, E>> =
            decode(&reply.payload).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }

    fn client(&self) -> pb::raft_client::RaftClient<tonic::transport::Channel> {
        pb::raft_client::RaftClient::new(self.net.channels.get(&self.addr))
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX)
    }

    /// Sends one AppendEntries request on this peer's stream (opening it if there is
    /// none) and reads its reply.
    async fn append_on_stream(
        &mut self,
        message: pb::RaftMessage,
    ) -> Result<pb::RaftMessage, tonic::Status> {
        let mut stream = match self.append.take() {
            Some(stream) => stream,
            None => {
                let (requests, queued) = tokio::sync::mpsc::channel(1);
                let replies = self
                    .client()
                    .append_stream(tokio_stream::wrappers::ReceiverStream::new(queued))
                    .await?
                    .into_inner();
                AppendStream { requests, replies }
            }
        };
        if stream.requests.send(message).await.is_err() {
            return Err(tonic::Status::unavailable("the append stream closed"));
        }
        match stream.replies.message().await? {
            Some(reply) => {
                self.append = Some(stream);
                Ok(reply)
            }
            None => Err(tonic::Status::unavailable(
                "the peer ended the append stream",
            )),
        }
    }
}

#[derive(Clone, Copy)]
enum RaftMethod {
    Vote,
    Append,
    Snapshot,
}

impl RaftMethod {
    fn name(self) -> &'static str {
        match self {
            RaftMethod::Vote => "vote",
            RaftMethod::Append => "append-entries",
            RaftMethod::Snapshot => "install-snapshot",
        }
    }
}

impl RaftNetwork<TypeConfig> for PeerLink {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call(RaftMethod::Append, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call(RaftMethod::Snapshot, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call(RaftMethod::Vote, &rpc, &option).await
    }
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use openraft::raft::AppendEntriesResponse;
    use openraft::{Vote, error::RaftError};
    use tokio_stream::wrappers::TcpListenerStream;
    use tonic::{Request, Response, Status};

    use super::*;

    /// A peer of an earlier release: it knows AppendEntries one call at a time, not the
    /// stream.
    #[derive(Default)]
    struct EarlierRelease {
        calls: Arc<AtomicUsize>,
        stream_attempts: Arc<AtomicUsize>,
    }

    type Replies = Pin<Box<dyn futures::Stream<Item = Result<pb::RaftMessage, Status>> + Send>>;

    #[tonic::async_trait]
    impl pb::raft_server::Raft for EarlierRelease {
        async fn vote(
            &self,
            _: Request<pb::RaftMessage>,
        ) -> Result<Response<pb::RaftMessage>, Status> {
            Err(Status::unimplemented("not in this test"))
        }

        async fn append_entries(
            &self,
            request: Request<pb::RaftMessage>,
        ) -> Result<Response<pb::RaftMessage>, Status> {
            let _: AppendEntriesRequest<TypeConfig> = decode(&request.into_inner().payload)
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
            self.calls.fetch_add(1, Ordering::SeqCst);
            let answer: Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>> =
                Ok(AppendEntriesResponse::Success);
            Ok(Response::new(pb::RaftMessage {
                cluster_id: String::new(),
                payload: encode(&answer).map_err(|e| Status::internal(e.to_string()))?,
            }))
        }

        type AppendStreamStream = Replies;

        async fn append_stream(
            &self,
            _: Request<tonic::Streaming<pb::RaftMessage>>,
        ) -> Result<Response<Replies>, Status> {
            // What tonic answers for a method the server was built without.
            self.stream_attempts.fetch_add(1, Ordering::SeqCst);
            Err(Status::unimplemented("unknown method AppendStream"))
        }

        async fn install_snapshot(
            &self,
            _: Request<pb::RaftMessage>,
        ) -> Result<Response<pb::RaftMessage>, Status> {
            Err(Status::unimplemented("not in this test"))
        }
    }

    #[tokio::test]
    async fn a_peer_without_the_stream_gets_entries_one_call_at_a_time() {
        let peer = EarlierRelease::default();
        let (calls, stream_attempts) = (peer.calls.clone(), peer.stream_attempts.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("local addr").to_string();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(pb::raft_server::RaftServer::new(peer))
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        let mut net = Network {
            me: 1,
            channels: Channels::default(),
            links: Arc::new(OpenLinks),
            cluster_id: Arc::new(std::sync::RwLock::new(String::new())),
        };
        let mut link = net.new_client(2, &BasicNode::new(addr)).await;
        let request = || AppendEntriesRequest::<TypeConfig> {
            vote: Vote::new_committed(1, 1),
            prev_log_id: None,
            entries: Vec::new(),
            leader_commit: None,
        };
        let option = RPCOption::new(Duration::from_secs(5));

        // The first try learns the peer has no stream; openraft retries a failed send.
        let first = link.append_entries(request(), option.clone()).await;
        assert!(first.is_err(), "{first:?}");
        for _ in 0..3 {
            let answer = link
                .append_entries(request(), option.clone())
                .await
                .expect("the unary call answers");
            assert!(
                matches!(answer, AppendEntriesResponse::Success),
                "{answer:?}"
            );
        }
        assert_eq!(stream_attempts.load(Ordering::SeqCst), 1);
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }
}

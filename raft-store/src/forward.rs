//! A follower's writes on their way to the leader: one long-lived stream per leader
//! (`Cluster/Forward`) carries them all, each write a message tagged with an id, each
//! reply matched back to its writer by that id. A unary call per write cost a new HTTP/2
//! stream and a task on both servers.
//!
//! A stream that ends or breaks fails the writes still waiting on it with `Unavailable`,
//! which the caller retries like any unavailable leader; the next write opens a new
//! stream. A leader that does not know the call (an earlier release, during a rolling
//! upgrade) is sent unary calls from then on.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};
use tonic::Status;

use crate::channels::Channels;
use crate::node::FORWARDED;
use crate::pb;
use crate::types::{CommandResult, Txn};

/// Writes that may be queued for one stream before senders wait.
const QUEUED: usize = 1024;

type Waiters = HashMap<u64, oneshot::Sender<Result<pb::TxnResponse, Status>>>;

/// One open stream to one leader.
struct Link {
    requests: mpsc::Sender<pb::ForwardRequest>,
    /// `None` once the stream has ended: nothing new may wait on it then.
    waiting: Arc<Mutex<Option<Waiters>>>,
    next_id: AtomicU64,
}

impl Link {
    fn waiting(&self) -> std::sync::MutexGuard<'_, Option<Waiters>> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn is_open(&self) -> bool {
        self.waiting().is_some()
    }

    async fn send(&self, txn: &Txn) -> Result<pb::TxnResponse, Status> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (answer, answered) = oneshot::channel();
        match self.waiting().as_mut() {
            Some(waiters) => waiters.insert(id, answer),
            None => return Err(ended()),
        };
        let request = pb::ForwardRequest {
            id,
            txn: Some(crate::grpc::txn_to_pb(txn)),
        };
        if self.requests.send(request).await.is_err() {
            if let Some(waiters) = self.waiting().as_mut() {
                waiters.remove(&id);
            }
            return Err(ended());
        }
        answered.await.unwrap_or_else(|_| Err(ended()))
    }
}

fn ended() -> Status {
    Status::unavailable("the forwarding stream to the leader ended")
}

/// The forwarding streams of one server, by leader address.
#[derive(Default)]
pub(crate) struct Forwarder {
    links: Mutex<HashMap<String, Arc<Link>>>,
    /// Held while a stream opens, so concurrent writes open one, not one each.
    opening: tokio::sync::Mutex<()>,
    /// Leaders that answered `Unimplemented`: they get unary calls.
    unary: Mutex<HashSet<String>>,
}

impl Forwarder {
    fn open_link(&self, addr: &str) -> Option<Arc<Link>> {
        self.links
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(addr)
            .filter(|l| l.is_open())
            .cloned()
    }

    /// Sends `txn` to the leader at `addr`, marked so it is never forwarded again.
    pub(crate) async fn write(
        &self,
        channels: &Channels,
        addr: &str,
        txn: &Txn,
    ) -> Result<CommandResult, Status> {
        let streamed = !self
            .unary
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(addr);
        if streamed {
            match self.link(channels, addr).await {
                Ok(link) => return link.send(txn).await.map(result),
                Err(status) if status.code() == tonic::Code::Unimplemented => {
                    self.unary
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(addr.to_string());
                }
                Err(status) => return Err(status),
            }
        }
        let mut client = pb::kv_client::KvClient::new(channels.get(addr))
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX);
        let mut request = tonic::Request::new(crate::grpc::txn_to_pb(txn));
        request
            .metadata_mut()
            .insert(FORWARDED, tonic::metadata::MetadataValue::from_static("1"));
        client.txn(request).await.map(|r| result(r.into_inner()))
    }

    /// The open stream to `addr`, opening one if there is none.
    async fn link(&self, channels: &Channels, addr: &str) -> Result<Arc<Link>, Status> {
        if let Some(link) = self.open_link(addr) {
            return Ok(link);
        }
        let _opening = self.opening.lock().await;
        if let Some(link) = self.open_link(addr) {
            return Ok(link);
        }
        let (requests, queued) = mpsc::channel(QUEUED);
        let mut client = pb::cluster_client::ClusterClient::new(channels.get(addr))
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX);
        let mut replies = client
            .forward(tokio_stream::wrappers::ReceiverStream::new(queued))
            .await?
            .into_inner();
        let waiting = Arc::new(Mutex::new(Some(Waiters::new())));
        let link = Arc::new(Link {
            requests,
            waiting: waiting.clone(),
            next_id: AtomicU64::new(1),
        });
        self.links
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(addr.to_string(), link.clone());
        tokio::spawn(async move {
            loop {
                let reply = match replies.message().await {
                    Ok(Some(reply)) => reply,
                    Ok(None) => break,
                    Err(status) => {
                        tracing::debug!(error = %status, "forwarding stream broke");
                        break;
                    }
                };
                let waiter = waiting
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .as_mut()
                    .and_then(|w| w.remove(&reply.id));
                if let Some(waiter) = waiter {
                    let _ = waiter.send(match (reply.code, reply.result) {
                        (0, Some(r)) => Ok(r),
                        (0, None) => Err(Status::internal("the leader's reply carried no result")),
                        (code, _) => Err(Status::new(code.into(), reply.message)),
                    });
                }
            }
            // Dropping the waiters fails each with `ended()`.
            waiting.lock().unwrap_or_else(|p| p.into_inner()).take();
        });
        Ok(link)
    }
}

fn result(r: pb::TxnResponse) -> CommandResult {
    CommandResult {
        revision: r.revision,
        succeeded: r.succeeded,
        deleted: r.deleted,
        batch: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::sync::atomic::AtomicUsize;

    use tokio_stream::wrappers::TcpListenerStream;
    use tonic::{Request, Response};

    use super::*;

    /// A leader of an earlier release: it takes forwarded writes as unary `Txn` calls and
    /// has no `Forward` stream.
    #[derive(Default)]
    struct EarlierLeader {
        txns: Arc<AtomicUsize>,
    }

    type Events = Pin<Box<dyn futures::Stream<Item = Result<pb::WatchResponse, Status>> + Send>>;

    #[tonic::async_trait]
    impl pb::kv_server::Kv for EarlierLeader {
        async fn range(
            &self,
            _: Request<pb::RangeRequest>,
        ) -> Result<Response<pb::RangeResponse>, Status> {
            Err(Status::unimplemented("not in this test"))
        }

        async fn put(
            &self,
            _: Request<pb::PutRequest>,
        ) -> Result<Response<pb::PutResponse>, Status> {
            Err(Status::unimplemented("not in this test"))
        }

        async fn delete(
            &self,
            _: Request<pb::DeleteRequest>,
        ) -> Result<Response<pb::DeleteResponse>, Status> {
            Err(Status::unimplemented("not in this test"))
        }

        async fn txn(
            &self,
            request: Request<pb::TxnRequest>,
        ) -> Result<Response<pb::TxnResponse>, Status> {
            assert!(
                request.metadata().contains_key(FORWARDED),
                "a forwarded write must be marked as such"
            );
            let n = self.txns.fetch_add(1, Ordering::SeqCst) as u64;
            Ok(Response::new(pb::TxnResponse {
                revision: 10 + n,
                succeeded: true,
                deleted: 0,
            }))
        }

        type WatchStream = Events;

        async fn watch(&self, _: Request<pb::WatchRequest>) -> Result<Response<Events>, Status> {
            Err(Status::unimplemented("not in this test"))
        }
    }

    #[tokio::test]
    async fn a_leader_without_the_stream_gets_forwarded_writes_one_call_at_a_time() {
        let leader = EarlierLeader::default();
        let txns = leader.txns.clone();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(pb::kv_server::KvServer::new(leader))
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );

        let forwarder = Forwarder::default();
        let channels = Channels::default();
        for expected in [10, 11] {
            let r = forwarder
                .write(&channels, &addr, &Txn::put("k", "v"))
                .await
                .expect("forwarded");
            assert_eq!(r.revision, expected);
        }
        assert_eq!(txns.load(Ordering::SeqCst), 2);
        assert!(forwarder.unary.lock().unwrap().contains(&addr));
    }
}

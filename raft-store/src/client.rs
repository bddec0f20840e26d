//! A gRPC client of the store that any program can use: it knows several servers and
//! moves to the next one when the one it uses stops answering.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::{Stream, StreamExt};
use tonic::Code;

use crate::channels::{Channels, endpoint};
use crate::error::Error;
use crate::grpc::{event_from_pb, kv_from_pb, txn_to_pb};
use crate::node::{ClusterStatus, from_members_response};
use crate::pb;
use crate::types::{KeyValue, Txn};
use crate::watch::WatchUpdate;

#[derive(Clone)]
pub struct StoreClient {
    addrs: Arc<Vec<String>>,
    current: Arc<AtomicUsize>,
    channels: Channels,
    /// How long one call may keep trying servers before it fails.
    pub patience: Duration,
}

/// What a transaction did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxnOutcome {
    pub revision: u64,
    pub succeeded: bool,
    pub deleted: u64,
}

fn retryable(s: &tonic::Status) -> bool {
    matches!(
        s.code(),
        Code::Unavailable | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded
    )
}

impl StoreClient {
    /// A client of the servers at these gRPC addresses (`host:port`).
    pub fn new(addrs: Vec<String>) -> Result<Self, Error> {
        if addrs.is_empty() {
            return Err(Error::InvalidRequest(
                "the store client needs at least one server address".into(),
            ));
        }
        for a in &addrs {
            endpoint(a);
        }
        Ok(StoreClient {
            addrs: Arc::new(addrs),
            current: Arc::new(AtomicUsize::new(0)),
            channels: Channels::default(),
            patience: Duration::from_secs(15),
        })
    }

    /// A client bound to exactly one server, which never moves elsewhere.
    pub fn pinned(addr: impl Into<String>) -> Result<Self, Error> {
        let mut c = Self::new(vec![addr.into()])?;
        c.patience = Duration::ZERO;
        Ok(c)
    }

    fn kv(&self, i: usize) -> pb::kv_client::KvClient<tonic::transport::Channel> {
        pb::kv_client::KvClient::new(self.channels.get(&self.addrs[i % self.addrs.len()]))
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX)
    }

    /// Runs `call` against the current server, moving on to the next on failures
    /// that another server may not have, until the client's patience runs out.
    async fn with_failover<T, F, Fut>(&self, mut call: F) -> Result<T, Error>
    where
        F: FnMut(pb::kv_client::KvClient<tonic::transport::Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<T, tonic::Status>>,
    {
        let deadline = tokio::time::Instant::now() + self.patience;
        loop {
            let i = self.current.load(Ordering::Relaxed);
            match call(self.kv(i)).await {
                Ok(v) => return Ok(v),
                Err(s) if retryable(&s) && tokio::time::Instant::now() < deadline => {
                    let _ = self.current.compare_exchange(
                        i,
                        i.wrapping_add(1),
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(s) => {
                    let addr = &self.addrs[i % self.addrs.len()];
                    return Err(Error::Peer {
                        addr: addr.clone(),
                        reason: format!("{:?}: {}", s.code(), s.message()),
                    });
                }
            }
        }
    }

    pub async fn put(
        &self,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
    ) -> Result<u64, Error> {
        let req = pb::PutRequest {
            key: key.into(),
            value: value.into(),
        };
        self.with_failover(|mut c| {
            let req = req.clone();
            async move { Ok(c.put(req).await?.into_inner().revision) }
        })
        .await
    }

    pub async fn txn(&self, txn: &Txn) -> Result<TxnOutcome, Error> {
        let req = txn_to_pb(txn);
        self.with_failover(|mut c| {
            let req = req.clone();
            async move {
                let r = c.txn(req).await?.into_inner();
                Ok(TxnOutcome {
                    revision: r.revision,
                    succeeded: r.succeeded,
                    deleted: r.deleted,
                })
            }
        })
        .await
    }

    pub async fn delete(&self, key: impl Into<Vec<u8>>, prefix: bool) -> Result<TxnOutcome, Error> {
        let req = pb::DeleteRequest {
            key: key.into(),
            prefix,
        };
        self.with_failover(|mut c| {
            let req = req.clone();
            async move {
                let r = c.delete(req).await?.into_inner();
                Ok(TxnOutcome {
                    revision: r.revision,
                    succeeded: true,
                    deleted: r.deleted,
                })
            }
        })
        .await
    }

    /// Keys under `key` (or the key itself), with the revision of the read.
    pub async fn range(
        &self,
        key: impl Into<Vec<u8>>,
        prefix: bool,
        stale: bool,
    ) -> Result<(u64, Vec<KeyValue>), Error> {
        let req = pb::RangeRequest {
            key: key.into(),
            prefix,
            stale,
            limit: 0,
            keys_only: false,
        };
        self.with_failover(|mut c| {
            let req = req.clone();
            async move {
                let r = c.range(req).await?.into_inner();
                Ok((r.revision, r.kvs.into_iter().map(kv_from_pb).collect()))
            }
        })
        .await
    }

    pub async fn get(&self, key: impl Into<Vec<u8>>) -> Result<Option<KeyValue>, Error> {
        Ok(self.range(key, false, false).await?.1.pop())
    }

    /// A watch on the current server. It ends when that server goes away; the caller
    /// resumes on another from the revision after the last event it got.
    pub async fn watch(
        &self,
        prefix: Vec<u8>,
        from_revision: u64,
    ) -> Result<impl Stream<Item = Result<WatchUpdate, Error>> + use<>, Error> {
        let req = pb::WatchRequest {
            prefix,
            from_revision,
        };
        let stream = self
            .with_failover(|mut c| {
                let req = req.clone();
                async move { Ok(c.watch(req).await?.into_inner()) }
            })
            .await?;
        Ok(stream.map(|item| {
            let r = item.map_err(Error::from)?;
            if r.compacted {
                Ok(WatchUpdate::Compacted {
                    compact_revision: r.compact_revision,
                })
            } else {
                Ok(WatchUpdate::Events(
                    r.events.into_iter().map(event_from_pb).collect(),
                ))
            }
        }))
    }

    /// The cluster's membership as the server (or its leader) reports it.
    pub async fn status(&self) -> Result<ClusterStatus, Error> {
        let i = self.current.load(Ordering::Relaxed);
        let mut c = pb::cluster_client::ClusterClient::new(
            self.channels.get(&self.addrs[i % self.addrs.len()]),
        );
        Ok(from_members_response(
            c.members(pb::MembersRequest {}).await?.into_inner(),
        ))
    }
}

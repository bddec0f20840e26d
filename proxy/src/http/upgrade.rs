//! WebSocket (HTTP/1.1 `Upgrade`): forwarded once, then both connections are spliced.

use std::sync::Arc;

use http::request::Parts;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use super::LocalError;
use crate::body::{self, Body};
use crate::cluster::ClusterRuntime;
use crate::drain::Drain;
use crate::flags::Flag;

pub async fn forward(
    cluster: &Arc<ClusterRuntime>,
    hash: Option<u64>,
    parts: Parts,
    downstream: Request<Incoming>,
    drain: &Drain,
) -> Result<Response<Body>, LocalError> {
    let mut downstream = downstream;
    let client_upgrade = hyper::upgrade::on(&mut downstream);
    let idx = cluster.choose(hash, &[]).map_err(|flag| {
        LocalError::new(StatusCode::SERVICE_UNAVAILABLE, flag, "no healthy upstream")
    })?;
    let endpoint = cluster.endpoints[idx].clone();
    let active = endpoint.start_request();
    let mut req = Request::new(body::empty());
    *req.method_mut() = parts.method.clone();
    *req.headers_mut() = parts.headers.clone();
    *req.uri_mut() = super::forward::origin_form(&parts.uri);
    super::forward::set_host(&mut req, parts.uri.authority(), &endpoint);
    let sent = cluster.pool.http1().send(&endpoint.authority, req).await;
    let mut resp = sent.map_err(|e| {
        tracing::warn!(cluster = %cluster.spec.name, error = %e, "upgrade request failed");
        LocalError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            if e.is_connect() {
                Flag::UpstreamConnectFailure
            } else {
                Flag::UpstreamConnectionTermination
            },
            "upstream connect error",
        )
    })?;
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        let (parts, incoming) = resp.into_parts();
        return Ok(Response::from_parts(parts, body::boxed(incoming)));
    }
    let server_upgrade = hyper::upgrade::on(&mut resp);
    let label = cluster.spec.name.clone();
    // On this worker, beside the two connections it joins.
    tokio::spawn(drain.track(async move {
        let _active = active;
        let (client, server) = match tokio::try_join!(client_upgrade, server_upgrade) {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!(cluster = %label, error = %e, "upgrade did not complete");
                return;
            }
        };
        let mut client = TokioIo::new(client);
        let mut server = TokioIo::new(server);
        if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut server).await {
            tracing::debug!(cluster = %label, error = %e, "upgraded connection ended");
        }
    }));
    let (parts, _) = resp.into_parts();
    Ok(Response::from_parts(parts, body::empty()))
}

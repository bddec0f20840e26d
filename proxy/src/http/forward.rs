//! Sending a request to a cluster: endpoint choice, per-try and route timeouts, retries with
//! backoff and budget, outlier reporting, connection-pool limits.

use std::error::Error as StdError;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;
use futures::future::Either;
use http::request::Parts;
use http::{Request, Response, StatusCode, Uri, Version};
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use rand::Rng;
use tokio::time::Instant;

use super::LocalError;
use super::replay::Replay;
use crate::body::{self, Body, Guarded};
use crate::cluster::endpoint::{EndpointState, Outcome};
use crate::cluster::http1::PooledBody;
use crate::cluster::pool::{ConnectTimeout, PoolOverflow, SendError};
use crate::cluster::{ClusterRuntime, RetryPermit};
use crate::config::{HttpRoute, Protocol, RetryOn};
use crate::flags::{Flag, Flags};

/// Why an attempt produced no response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    Connect,
    Overflow,
    RefusedStream,
    Reset,
    Timeout,
}

impl Failure {
    fn flag(self) -> Flag {
        match self {
            Self::Connect => Flag::UpstreamConnectFailure,
            Self::Overflow => Flag::UpstreamOverflow,
            Self::RefusedStream | Self::Reset => Flag::UpstreamConnectionTermination,
            Self::Timeout => Flag::UpstreamRequestTimeout,
        }
    }

    fn reply(self) -> LocalError {
        match self {
            Self::Connect => LocalError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                Flag::UpstreamConnectFailure,
                "upstream connect error",
            ),
            Self::Overflow => LocalError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                Flag::UpstreamOverflow,
                "upstream connection pool overflow",
            ),
            Self::RefusedStream | Self::Reset => LocalError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                Flag::UpstreamConnectionTermination,
                "upstream disconnect or reset before headers",
            ),
            Self::Timeout => LocalError::new(
                StatusCode::GATEWAY_TIMEOUT,
                Flag::UpstreamRequestTimeout,
                "upstream request timeout",
            ),
        }
    }
}

pin_project_lite::pin_project! {
    /// A response body as it comes from the upstream, over either protocol.
    #[project = UpstreamBodyProj]
    pub enum UpstreamBody {
        Http1 { #[pin] body: PooledBody },
        Http2 { #[pin] body: Incoming },
    }
}

impl HttpBody for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.project() {
            UpstreamBodyProj::Http1 { body } => body.poll_frame(cx),
            UpstreamBodyProj::Http2 { body } => body.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Http1 { body } => body.is_end_stream(),
            Self::Http2 { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Http1 { body } => body.size_hint(),
            Self::Http2 { body } => body.size_hint(),
        }
    }
}

/// Sends one request to `endpoint` on a pooled connection of this worker.
///
/// Not an `async fn`: that would keep its own copy of the request beside the one the inner
/// future holds, and every request's future is moved whole more than once.
pub fn send<'a>(
    cluster: &'a ClusterRuntime,
    endpoint: &'a EndpointState,
    req: Request<Body>,
    http2: bool,
) -> impl Future<Output = Result<Response<UpstreamBody>, Failure>> + Send + 'a {
    if http2 {
        Either::Left(
            cluster
                .pool
                .http2()
                .send(&endpoint.authority, req)
                .map(|sent| match sent {
                    Ok(resp) => Ok(resp.map(|body| UpstreamBody::Http2 { body })),
                    Err(e) => Err(classify(&e)),
                }),
        )
    } else {
        Either::Right(
            cluster
                .pool
                .http1()
                .send(&endpoint.authority, req)
                .map(|sent| match sent {
                    Ok(resp) => Ok(resp.map(|body| UpstreamBody::Http1 { body })),
                    Err(e) => Err(classify(&e)),
                }),
        )
    }
}

#[expect(
    clippy::large_enum_variant,
    reason = "made once per attempt and matched in place; boxing would allocate per request"
)]
enum Attempt {
    Response(Response<UpstreamBody>),
    Failed(Failure),
}

fn find_source<'a, T: StdError + 'static>(e: &'a (dyn StdError + 'static)) -> Option<&'a T> {
    let mut cur: Option<&'a (dyn StdError + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(t) = err.downcast_ref::<T>() {
            return Some(t);
        }
        // `io::Error::source` skips the error it wraps, so look inside explicitly.
        if let Some(inner) = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            && let Some(t) = inner.downcast_ref::<T>()
        {
            return Some(t);
        }
        cur = err.source();
    }
    None
}

fn classify(e: &SendError) -> Failure {
    // The access-log line says what the client saw; this says why.
    tracing::debug!(error = ?e, "upstream request failed");
    if find_source::<PoolOverflow>(e).is_some() {
        return Failure::Overflow;
    }
    if find_source::<ConnectTimeout>(e).is_some() || e.is_connect() {
        return Failure::Connect;
    }
    if let Some(h2) = find_source::<h2::Error>(e)
        && h2.reason() == Some(h2::Reason::REFUSED_STREAM)
    {
        return Failure::RefusedStream;
    }
    Failure::Reset
}

fn grpc_status<B>(resp: &Response<B>) -> Option<u32> {
    resp.headers()
        .get(crate::flags::GRPC_STATUS)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

fn retriable(on: &RetryOn, attempt: &Attempt) -> bool {
    match attempt {
        Attempt::Response(resp) => {
            let s = resp.status().as_u16();
            (on.five_xx && s >= 500)
                || (on.gateway_error && matches!(s, 502..=504))
                || (on.retriable_4xx && s == 409)
                || on.retriable_status_codes.contains(&s)
                || grpc_status(resp).is_some_and(|g| on.grpc_codes.contains(&g))
        }
        Attempt::Failed(f) => match f {
            Failure::Overflow => false,
            Failure::Connect => on.connect_failure || on.five_xx || on.gateway_error,
            Failure::RefusedStream => on.refused_stream || on.five_xx || on.reset,
            Failure::Reset => on.reset || on.five_xx || on.gateway_error,
            Failure::Timeout => on.five_xx || on.gateway_error || on.reset,
        },
    }
}

fn outcome(attempt: &Attempt) -> Option<Outcome> {
    match attempt {
        Attempt::Response(r) => Some(match r.status().as_u16() {
            502..=504 => Outcome::GatewayError,
            500..=599 => Outcome::ServerError,
            _ => Outcome::Success,
        }),
        Attempt::Failed(Failure::Overflow) => None,
        Attempt::Failed(_) => Some(Outcome::GatewayError),
    }
}

/// Envoy's backoff: full jitter over an exponentially growing window, capped at 10× the base.
fn backoff(base: Duration, retry: u32) -> Duration {
    let cap = base.saturating_mul(10);
    let window = base
        .saturating_mul(1u32 << retry.min(16).saturating_sub(1))
        .min(cap);
    let nanos = u64::try_from(window.as_nanos()).unwrap_or(u64::MAX);
    if nanos == 0 {
        return Duration::ZERO;
    }
    Duration::from_nanos(rand::rng().random_range(0..=nanos))
}

pin_project_lite::pin_project! {
    /// A future with an optional deadline, as one type. Awaiting `tokio::time::timeout(f)` in
    /// one branch and `f` in another would keep room for both in the request's state, which is
    /// copied whole each time it moves.
    struct Within<F> {
        #[pin]
        inner: F,
        #[pin]
        deadline: Option<tokio::time::Sleep>,
    }
}

impl<F: Future> Future for Within<F> {
    /// None when the deadline passed first.
    type Output = Option<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(out) = this.inner.poll(cx) {
            return Poll::Ready(Some(out));
        }
        match this.deadline.as_pin_mut().map(|d| d.poll(cx)) {
            Some(Poll::Ready(())) => Poll::Ready(None),
            _ => Poll::Pending,
        }
    }
}

fn within<F: Future>(deadline: Option<Instant>, inner: F) -> Within<F> {
    Within {
        inner,
        deadline: deadline.map(tokio::time::sleep_until),
    }
}

/// Whether the upstream is spoken to over HTTP/2: declared so, or following the client.
pub fn upstream_http2(protocol: Protocol, version: Version) -> bool {
    match protocol {
        Protocol::Http2 | Protocol::Grpc => true,
        Protocol::Http => false,
        _ => version == Version::HTTP_2,
    }
}

pub struct ForwardCtx<'a> {
    pub cluster: &'a Arc<ClusterRuntime>,
    pub route: &'a HttpRoute,
    pub hash: Option<u64>,
    pub max_buffered: usize,
}

/// Sends a request to the cluster and returns the response, or the error to answer with.
pub async fn forward(
    ctx: ForwardCtx<'_>,
    parts: &Parts,
    body: Body,
    flags: &mut Flags,
) -> Result<Response<Body>, LocalError> {
    let cluster = ctx.cluster;
    let route = ctx.route;
    let http2 = upstream_http2(cluster.spec.protocol, parts.version);
    let permit = cluster.try_start_request(!http2).map_err(|flag| {
        LocalError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            flag,
            "upstream request limit reached",
        )
    })?;
    let replay = Replay::new(body, ctx.max_buffered);
    let policy = &route.retry;
    // The route's timeout bounds every attempt and backoff rather than wrapping the loop in a
    // future of its own: the loop's state then lives in this future and is not copied into
    // another each time the request moves.
    let route_deadline = route.timeout.map(|t| Instant::now() + t.as_std());
    let route_timeout = |flags: &mut Flags| {
        flags.push(Flag::UpstreamRequestTimeout);
        Failure::Timeout.reply()
    };
    let mut tried: Vec<usize> = Vec::new();
    let mut retries = 0u32;
    let mut _retry_permit: Option<RetryPermit> = None;
    let (resp, active) = loop {
        // One attempt in a block of its own: what it holds is dead by the backoff's await, so
        // the request's state keeps no room for it there.
        let retry_permit = {
            let exclude: &[usize] = if policy.ignore_previous_hosts {
                &tried
            } else {
                &[]
            };
            let idx = cluster.choose(ctx.hash, exclude).map_err(|flag| {
                LocalError::new(StatusCode::SERVICE_UNAVAILABLE, flag, "no healthy upstream")
            })?;
            let endpoint = cluster.endpoints[idx].clone();
            let active = endpoint.start_request();
            let req = upstream_request(parts, replay.attempt(), &endpoint, http2);
            let try_deadline = policy.per_try_timeout.map(|t| Instant::now() + t.as_std());
            // Boxed: the exchange's future is about a kilobyte, and unboxed it was copied
            // whole into the deadline wrapper and again into this future's state (callgrind:
            // 120-230 fewer instructions per request net of the allocation). The box is made
            // first so that only what the future starts with is written into it, not the
            // whole kilobyte (see `ProxyService::call`).
            let sent = Box::into_pin(Box::write(
                Box::new_uninit(),
                send(cluster, &endpoint, req, http2),
            ));
            let attempt = match within(earliest(route_deadline, try_deadline), sent).await {
                Some(Ok(resp)) => Attempt::Response(resp),
                Some(Err(f)) => Attempt::Failed(f),
                None if passed(route_deadline) => return Err(route_timeout(flags)),
                None => Attempt::Failed(Failure::Timeout),
            };
            if let Some(o) = outcome(&attempt) {
                cluster.report(idx, o);
            }
            let wants_retry = retriable(&policy.on, &attempt);
            let may_retry = wants_retry && retries < policy.attempts && replay.can_replay();
            let retry_permit = if may_retry {
                cluster.try_start_retry()
            } else {
                None
            };
            let Some(retry_permit) = retry_permit else {
                if wants_retry && retries > 0 {
                    flags.push(Flag::UpstreamRetryLimitExceeded);
                }
                match attempt {
                    Attempt::Response(resp) => break (resp, active),
                    Attempt::Failed(f) => {
                        flags.push(f.flag());
                        return Err(f.reply());
                    }
                }
            };
            // Only a retry reads the endpoints tried: a request answered at once allocates
            // no list.
            if policy.ignore_previous_hosts {
                tried.push(idx);
            }
            retry_permit
        };
        _retry_permit = Some(retry_permit);
        retries += 1;
        tracing::debug!(cluster = %cluster.spec.name, retries, "retrying");
        let wait = Instant::now() + backoff(policy.backoff_base.as_std(), retries);
        let wait = earliest(route_deadline, Some(wait)).unwrap_or(wait);
        tokio::time::sleep_until(wait).await;
        if passed(route_deadline) {
            return Err(route_timeout(flags));
        }
    };
    let (parts, incoming) = resp.into_parts();
    // The request stays active (for balancing and limits) until its response has streamed.
    let body = body::boxed(Guarded::new(incoming, (active, permit)));
    Ok(Response::from_parts(parts, body))
}

fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn passed(deadline: Option<Instant>) -> bool {
    deadline.is_some_and(|d| Instant::now() >= d)
}

/// Headers a usual response carries, at most (server, date, type, length, caching, cookies…).
const RESPONSE_HEADERS: usize = 12;

fn upstream_request(
    parts: &Parts,
    body: Body,
    endpoint: &EndpointState,
    http2: bool,
) -> Request<Body> {
    let mut req = Request::new(body);
    *req.method_mut() = parts.method.clone();
    // hyper parses the upstream's response into this map once the request is written (it
    // keeps each sent message's emptied map); a clone has room for the request's headers
    // only, so the response's would reallocate it.
    let mut headers = http::HeaderMap::with_capacity(parts.headers.len().max(RESPONSE_HEADERS));
    headers.extend(parts.headers.iter().map(|(k, v)| (k.clone(), v.clone())));
    *req.headers_mut() = headers;
    if http2 {
        *req.uri_mut() = upstream_uri(parts, endpoint);
        *req.version_mut() = Version::HTTP_2;
    } else {
        *req.uri_mut() = origin_form(&parts.uri);
        *req.version_mut() = Version::HTTP_11;
    }
    set_host(&mut req, parts.uri.authority(), endpoint);
    req
}

/// The request line's target for HTTP/1.1: path and query only.
pub fn origin_form(uri: &Uri) -> Uri {
    match uri.path_and_query() {
        Some(pq) => Uri::from(pq.clone()),
        None => Uri::from_static("/"),
    }
}

/// An HTTP/2 client names the host in `:authority`, and an HTTP/1.1 upstream still needs a
/// `Host`; with neither, the endpoint's own `host:port`.
pub fn set_host<B>(
    req: &mut Request<B>,
    authority: Option<&http::uri::Authority>,
    endpoint: &EndpointState,
) {
    if req.headers().contains_key(http::header::HOST) {
        return;
    }
    let value = match authority {
        Some(a) => http::HeaderValue::from_str(a.as_str()),
        None => http::HeaderValue::from_str(&endpoint.authority),
    };
    if let Ok(v) = value {
        req.headers_mut().insert(http::header::HOST, v);
    }
}

/// `http://ENDPOINT/PATH?QUERY`, from parts already parsed (cheap clones) where possible.
fn upstream_uri(parts: &Parts, endpoint: &EndpointState) -> Uri {
    if let Some(authority) = &endpoint.uri_authority {
        let mut uri = http::uri::Parts::default();
        uri.scheme = Some(http::uri::Scheme::HTTP);
        uri.authority = Some(authority.clone());
        uri.path_and_query = Some(
            parts
                .uri
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")),
        );
        if let Ok(uri) = Uri::from_parts(uri) {
            return uri;
        }
    }
    let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    format!("http://{}{pq}", endpoint.authority)
        .parse::<Uri>()
        .unwrap_or_else(|_| Uri::from_static("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_stays_within_its_window() {
        let base = Duration::from_millis(25);
        for retry in 1..20 {
            assert!(backoff(base, retry) <= base * 10);
        }
        assert!(backoff(base, 1) <= base);
    }
}

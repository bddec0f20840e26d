//! The HTTP path: a hyper server per downstream connection (HTTP/1.1 and HTTP/2 prior
//! knowledge), and for each request: route, CORS, rate limit, fault, rewrite, forward.

pub mod filters;
pub mod forward;
pub mod replay;
pub mod route;
pub mod upgrade;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use http::header::{HeaderValue, SET_COOKIE};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Body as _, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rand::Rng;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::body::{self, Body};
use crate::cluster::lb::hash_of;
use crate::config::{AbortKind, HashKey, HttpRoute, LbPolicy, ListenerKind, RouteAction};
use crate::flags::{self, Flag, Flags};
use crate::metrics::RequestKey;
use crate::runtime::Runtime;
use crate::shared::{ConnInfo, Shared};

const X_REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");

/// An answer the proxy gives itself instead of an upstream's.
#[derive(Debug)]
pub struct LocalError {
    pub status: StatusCode,
    pub flag: Flag,
    pub message: String,
    pub grpc_status: Option<u32>,
    pub headers: HeaderMap,
}

impl LocalError {
    pub fn new(status: StatusCode, flag: Flag, message: impl Into<String>) -> Self {
        Self {
            status,
            flag,
            message: message.into(),
            grpc_status: None,
            headers: HeaderMap::new(),
        }
    }
}

/// Serves HTTP on one downstream connection, in the version its first bytes showed, until it
/// closes, the drain asks it to finish, or the drain deadline cuts it.
///
/// hyper's own HTTP/1 and HTTP/2 servers rather than hyper-util's `auto` one, which tells the
/// versions apart itself: the listener has peeked already, and the `auto` layer wrapped every
/// read and every poll of the connection in one more state machine (3 % of a request).
pub async fn serve<I>(io: I, http2: bool, conn: ConnInfo, shared: Arc<Shared>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let limits = shared.runtime().snapshot.limits.clone();
    let draining = shared.drain.draining();
    let service = ProxyService {
        shared,
        conn: Arc::new(conn),
    };
    let io = TokioIo::new(io);
    if http2 {
        let served = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .max_header_list_size(limits.max_header_bytes)
            .serve_connection(io, service);
        run(served, draining, |c| c.graceful_shutdown()).await;
    } else {
        let served = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout.as_std())
            .max_buf_size((limits.max_header_bytes as usize).max(8192))
            // A response's head and a small body go out in one buffer with one `write`, not
            // as an iovec per piece: 6 % less CPU per request over HTTP/1.1
            // (bench/README.md).
            .writev(false)
            .keep_alive(true)
            .serve_connection(io, service)
            .with_upgrades();
        run(served, draining, |c| c.graceful_shutdown()).await;
    }
}

/// Drives a served connection; once a drain starts, it finishes in-flight requests and
/// closes (idle keep-alive connections at once, HTTP/2 ones with GOAWAY).
async fn run<C>(served: C, draining: crate::drain::Cancelled, graceful: impl FnOnce(Pin<&mut C>))
where
    C: Future<Output = hyper::Result<()>>,
{
    tokio::pin!(served);
    let ended = tokio::select! {
        biased;
        r = served.as_mut() => r,
        _ = draining => {
            graceful(served.as_mut());
            served.await
        }
    };
    if let Err(e) = ended {
        tracing::debug!(error = %e, "downstream connection ended with an error");
    }
}

/// The proxy as hyper's service over one downstream connection. hyper's own trait rather
/// than tower's: the tower adapter clones the service and wraps the request's future in two
/// more layers for every request, and that future (several KiB) is copied at each.
pub struct ProxyService {
    shared: Arc<Shared>,
    conn: Arc<ConnInfo>,
}

impl hyper::service::Service<Request<Incoming>> for ProxyService {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        // The box is made first and the future written into it: built on the stack and then
        // boxed, the whole future (over a kilobyte, most of it room for later states) was
        // copied into memory not yet in cache, for every request.
        let future = Box::write(
            Box::new_uninit(),
            handle(self.shared.clone(), self.conn.clone(), req),
        );
        Box::into_pin(future)
    }
}

/// What one request came to, for metrics and logs.
#[derive(Default)]
struct RequestLog<'a> {
    flags: Flags,
    destination_service: &'a str,
    cluster: &'a str,
    route: &'a str,
}

/// Not an `async fn`: that would hold the request twice (as its argument and as a local)
/// for the whole exchange; here it is read first and then moved straight into `proxy`.
fn handle(
    shared: Arc<Shared>,
    conn: Arc<ConnInfo>,
    req: Request<Incoming>,
) -> impl Future<Output = Result<Response<Body>, Infallible>> + Send {
    let start = Instant::now();
    let grpc = flags::is_grpc(req.headers());
    let http2 = req.version() == http::Version::HTTP_2;
    async move {
        let rt = shared.runtime();
        let mut log = RequestLog::default();
        let mut resp = match proxy(&rt, &shared, &conn, req, &mut log).await {
            Ok(resp) => resp,
            Err(e) => {
                log.flags.push(e.flag);
                tracing::warn!(
                    listener = %conn.listener,
                    route = %log.route,
                    cluster = %log.cluster,
                    status = e.status.as_u16(),
                    flags = %log.flags,
                    "{}",
                    e.message
                );
                let mut resp =
                    flags::local_reply(e.status, &log.flags, &e.message, grpc, e.grpc_status);
                resp.headers_mut().extend(e.headers);
                resp
            }
        };
        log.flags.set_header(resp.headers_mut());
        let reporter = match rt.snapshot.listener(&conn.listener).map(|l| &l.kind) {
            Some(ListenerKind::Inbound { .. }) => "destination",
            _ => "source",
        };
        let flags = if log.flags.is_empty() {
            std::borrow::Cow::Borrowed("-")
        } else {
            std::borrow::Cow::Owned(log.flags.to_string())
        };
        let key = RequestKey {
            reporter,
            source_workload: &rt.snapshot.node.name,
            source_workload_namespace: &rt.snapshot.node.namespace,
            destination_service: log.destination_service,
            destination_cluster: log.cluster,
            request_protocol: if grpc {
                "grpc"
            } else if http2 {
                "http2"
            } else {
                "http"
            },
            response_code: resp.status().as_u16(),
            response_flags: &flags,
            // Only a gRPC response can carry one; looking up a name outside the standard set
            // hashes it byte by byte, so other requests skip it.
            grpc_response_status: if grpc {
                resp.headers()
                    .get(crate::flags::GRPC_STATUS)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
            } else {
                ""
            },
        };
        shared
            .metrics
            .observe_request(&key, start.elapsed().as_secs_f64() * 1000.0);
        Ok(resp)
    }
}

fn percent_hit(percent: f64) -> bool {
    percent >= 100.0 || (percent > 0.0 && rand::rng().random::<f64>() * 100.0 < percent)
}

/// Not an `async fn`, for the reason `handle` is not one.
fn proxy<'r>(
    rt: &'r Arc<Runtime>,
    shared: &Arc<Shared>,
    conn: &ConnInfo,
    req: Request<Incoming>,
    log: &mut RequestLog<'r>,
) -> impl Future<Output = Result<Response<Body>, LocalError>> + Send {
    let (mut parts, incoming) = req.into_parts();
    async move {
        let no_route = || LocalError::new(StatusCode::NOT_FOUND, Flag::NoRoute, "no route matched");
        let (table_key, table) = route::table(rt, conn, &parts).ok_or_else(no_route)?;
        log.destination_service = &table.host;
        let port = conn.original_dst.map_or(table.port, |d| d.port());
        // The request view borrows the head only for route and rate-limit matching; scoped so
        // the request's state keeps no room for it across the awaits below.
        let (route_idx, route, matched, limit_headers) = {
            let view = route::view(&parts, port);
            let (route_idx, route, matched) = route::select(table, &view).ok_or_else(no_route)?;
            log.route = &route.name;

            if let Some(cors) = &route.cors
                && let Some(resp) = filters::cors_preflight(cors, &parts)
            {
                return Ok(resp);
            }

            let mut limit_headers = HeaderMap::new();
            for limit in table.rate_limits.iter().chain(route.rate_limits.iter()) {
                if !limit.matches.is_empty() && !limit.matches.iter().any(|m| m.matches(&view)) {
                    continue;
                }
                let Some(bucket) = rt.bucket(&limit.name) else {
                    continue;
                };
                let decision = bucket.take();
                decision.set_headers(&mut limit_headers);
                if !decision.allowed {
                    let mut e = LocalError::new(
                        StatusCode::TOO_MANY_REQUESTS,
                        Flag::RateLimited,
                        "local rate limit exceeded",
                    );
                    e.headers = limit_headers;
                    return Err(e);
                }
            }
            (route_idx, route, matched, limit_headers)
        };

        if let Some(fault) = &route.fault {
            if let Some(d) = &fault.delay
                && percent_hit(d.percent)
            {
                log.flags.push(Flag::DelayInjected);
                tokio::time::sleep(d.delay.as_std()).await;
            }
            if let Some(a) = &fault.abort
                && percent_hit(a.percent)
            {
                let mut e = match a.kind {
                    AbortKind::HttpStatus(s) => LocalError::new(
                        StatusCode::from_u16(s).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
                        Flag::FaultInjected,
                        "fault filter abort",
                    ),
                    AbortKind::GrpcStatus(code) => {
                        let mut e = LocalError::new(
                            StatusCode::OK,
                            Flag::FaultInjected,
                            "fault filter abort",
                        );
                        e.grpc_status = Some(code);
                        e
                    }
                };
                if matches!(a.kind, AbortKind::GrpcStatus(_)) && !flags::is_grpc(&parts.headers) {
                    // A gRPC status for a plain HTTP client still needs an HTTP error.
                    e.status = StatusCode::SERVICE_UNAVAILABLE;
                }
                return Err(e);
            }
        }

        let (destinations, rewrite) = match &route.action {
            RouteAction::DirectResponse { status, body } => {
                let mut resp = filters::direct_response(*status, body.as_deref());
                route.response_headers.apply(resp.headers_mut());
                return Ok(resp);
            }
            RouteAction::Redirect(r) => {
                let authority = route::authority(&parts).to_owned();
                return Ok(filters::redirect(r, &parts, &authority));
            }
            RouteAction::Forward {
                destinations,
                rewrite,
            } => (destinations, rewrite),
        };
        // One destination, as most routes have, needs no turn of the weighted schedule (a
        // lookup by the table's name).
        let next = if destinations.len() > 1 {
            rt.next_destination(&table_key, route_idx)
        } else {
            0
        };
        let dest = destinations
            .get(next)
            .or(destinations.first())
            .ok_or_else(no_route)?;
        log.cluster = &dest.cluster;
        let cluster = rt.clusters.get(&dest.cluster).ok_or_else(|| {
            LocalError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                Flag::NoHealthyUpstream,
                "cluster not found",
            )
        })?;

        let origin = route
            .cors
            .as_ref()
            .and_then(|_| parts.headers.get(http::header::ORIGIN).cloned());
        if let Some(rw) = rewrite {
            let matched_uri = matched.and_then(|m| route.matches[m].uri.as_ref());
            if let Some(pq) =
                filters::rewrite_path(rw, matched_uri, parts.uri.path(), parts.uri.query())
                && !filters::set_path(&mut parts, &pq)
            {
                return Err(LocalError::new(
                    StatusCode::BAD_REQUEST,
                    Flag::NoRoute,
                    "rewritten path is not a valid URI",
                ));
            }
            if let Some(a) = &rw.authority
                && let Ok(v) = HeaderValue::from_str(a)
            {
                parts.headers.insert(http::header::HOST, v);
            }
        }
        let upgrade = filters::is_upgrade(&parts);
        filters::strip_hop_by_hop(&mut parts.headers, upgrade);
        parts
            .headers
            .entry(X_REQUEST_ID)
            .or_insert_with(filters::request_id);
        route.request_headers.apply(&mut parts.headers);
        dest.request_headers.apply(&mut parts.headers);

        let (hash, set_cookie) = hash_key(&cluster.spec.lb, &parts, conn);

        let mut resp = if upgrade {
            let req = Request::from_parts(parts.clone(), incoming);
            // Boxed: a WebSocket handshake is rare, and its state would otherwise enlarge the
            // future of every request.
            Box::pin(upgrade::forward(cluster, hash, parts, req, &shared.drain)).await?
        } else {
            let max_buffered = rt.snapshot.limits.max_buffered_body_bytes as usize;
            let body = mirror(rt, route, &parts, incoming, max_buffered).await;
            forward::forward(
                forward::ForwardCtx {
                    cluster,
                    route,
                    hash,
                    max_buffered,
                },
                &parts,
                body,
                &mut log.flags,
            )
            .await?
        };
        filters::strip_hop_by_hop(resp.headers_mut(), upgrade);
        dest.response_headers.apply(resp.headers_mut());
        route.response_headers.apply(resp.headers_mut());
        if let Some(cors) = &route.cors {
            filters::cors_response(cors, origin.as_ref(), resp.headers_mut());
        }
        if !limit_headers.is_empty() {
            resp.headers_mut().extend(limit_headers);
        }
        if let Some(c) = set_cookie {
            resp.headers_mut().append(SET_COOKIE, c);
        }
        Ok(resp)
    }
}

/// The consistent-hash key of a request; with a cookie key and no cookie, a new cookie is
/// made and set on the response (Envoy's behaviour with a TTL).
fn hash_key(
    lb: &LbPolicy,
    parts: &http::request::Parts,
    conn: &ConnInfo,
) -> (Option<u64>, Option<HeaderValue>) {
    let key = match lb {
        LbPolicy::RingHash { key, .. } | LbPolicy::Maglev { key, .. } => key,
        _ => return (None, None),
    };
    match key {
        HashKey::Header(name) => (
            parts
                .headers
                .get(name.as_str())
                .map(|v| hash_of(v.as_bytes())),
            None,
        ),
        HashKey::SourceIp => (Some(hash_of(conn.peer.ip().to_string().as_bytes())), None),
        HashKey::QueryParameter(name) => (
            crate::config::matcher::query_param(parts.uri.query(), name)
                .map(|v| hash_of(v.as_bytes())),
            None,
        ),
        HashKey::Cookie { name, path, ttl } => {
            let found = parts
                .headers
                .get_all(http::header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(';'))
                .filter_map(|c| c.trim().split_once('='))
                .find(|(k, _)| k == name)
                .map(|(_, v)| hash_of(v.as_bytes()));
            match (found, ttl) {
                (Some(h), _) => (Some(h), None),
                (None, Some(ttl)) => {
                    let value = format!("{:016x}", rand::rng().random::<u64>());
                    let mut cookie = format!("{name}={value}; Max-Age={}", ttl.as_std().as_secs());
                    if !path.is_empty() {
                        cookie.push_str(&format!("; Path={path}"));
                    }
                    (
                        Some(hash_of(value.as_bytes())),
                        HeaderValue::from_str(&cookie).ok(),
                    )
                }
                (None, None) => (None, None),
            }
        }
    }
}

/// Sends a copy of the request to each mirror whose percentage hits, without waiting for or
/// looking at the answer. Mirrors need the body in memory, so bodies of unknown or large size
/// are not mirrored.
async fn mirror(
    rt: &Arc<Runtime>,
    route: &HttpRoute,
    parts: &http::request::Parts,
    incoming: Incoming,
    max_buffered: usize,
) -> Body {
    let hits: Vec<&str> = route
        .mirrors
        .iter()
        .filter(|m| percent_hit(m.percent))
        .map(|m| m.cluster.as_str())
        .collect();
    let small = incoming
        .size_hint()
        .exact()
        .is_some_and(|n| n as usize <= max_buffered);
    if hits.is_empty() || !small {
        return body::boxed(incoming);
    }
    let bytes = match incoming.collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) => {
            tracing::debug!(error = %e, "client body ended early");
            return body::full(bytes::Bytes::new());
        }
    };
    for name in hits {
        let Some(cluster) = rt.clusters.get(name).cloned() else {
            continue;
        };
        let mut parts = parts.clone();
        // Envoy marks shadow traffic by suffixing the host.
        let host = route::authority(&parts).to_owned();
        let shadow = match host.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') => format!("{h}-shadow:{p}"),
            _ => format!("{host}-shadow"),
        };
        if let Ok(v) = HeaderValue::from_str(&shadow) {
            parts.headers.insert(http::header::HOST, v);
        }
        let bytes = bytes.clone();
        tokio::spawn(async move {
            let Ok(idx) = cluster.choose(None, &[]) else {
                return;
            };
            let endpoint = cluster.endpoints[idx].clone();
            let _active = endpoint.start_request();
            let http2 = forward::upstream_http2(cluster.spec.protocol, parts.version);
            let pq = parts
                .uri
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_owned();
            let mut req = Request::new(body::full(bytes));
            *req.method_mut() = parts.method.clone();
            *req.headers_mut() = parts.headers.clone();
            let target = if http2 {
                format!("http://{}{pq}", endpoint.authority)
            } else {
                pq
            };
            let Ok(uri) = target.parse() else {
                return;
            };
            *req.uri_mut() = uri;
            let sent = tokio::time::timeout(std::time::Duration::from_secs(30), async {
                if let Ok(resp) = forward::send(&cluster, &endpoint, req, http2).await {
                    let _ = resp.into_body().collect().await;
                }
            });
            let _ = sent.await;
        });
    }
    body::full(bytes)
}

//! The compiled snapshot: everything a request needs, resolved and validated ahead of time,
//! so the request path never parses, looks up resources or fails on config.
//!
//! A snapshot is immutable; the proxy swaps whole snapshots. It serialises to JSON for
//! `/config_dump`.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use serde::Serialize;
use trellis_api::Duration;

use super::matcher::{HeaderOps, RequestMatch, StringMatcher};

#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    /// Changes whenever the content does; shown in `/config_dump`.
    pub version: String,
    pub node: Node,
    pub listeners: Vec<Listener>,
    /// Keyed by [`route_key`]: `host:port`.
    pub route_tables: BTreeMap<String, RouteTable>,
    pub clusters: BTreeMap<String, Cluster>,
    /// Services by VIP and port, for the capture listener.
    pub vips: BTreeMap<String, String>,
    /// TLS routes by port, for the capture listener, which sees only an SNI.
    pub tls_by_port: BTreeMap<u16, Vec<TlsRoute>>,
    pub limits: Limits,
    pub drain_timeout: Duration,
    /// Worker threads; 0 means one per CPU. Read when the proxy starts.
    pub concurrency: u32,
    /// What was accepted but worth telling the operator.
    pub warnings: Vec<String>,
}

pub fn route_key(host: &str, port: u16) -> String {
    format!("{host}:{port}")
}

pub fn vip_key(ip: IpAddr, port: u16) -> String {
    SocketAddr::new(ip, port).to_string()
}

impl Snapshot {
    pub fn route_table(&self, host: &str, port: u16) -> Option<&RouteTable> {
        self.route_tables.get(&route_key(host, port))
    }

    pub fn listener(&self, name: &str) -> Option<&Listener> {
        self.listeners.iter().find(|l| l.name == name)
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Node {
    pub name: String,
    pub namespace: String,
    pub locality: Locality,
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Locality {
    pub region: String,
    pub zone: String,
    pub subzone: String,
}

impl Locality {
    pub fn parse(text: &str) -> Self {
        let mut parts = text.split('/');
        let mut next = || parts.next().unwrap_or_default().to_owned();
        Self {
            region: next(),
            zone: next(),
            subzone: next(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Sniffed per connection; HTTP upstream traffic uses the client's HTTP version.
    Auto,
    Http,
    Http2,
    Grpc,
    Tcp,
    Tls,
}

impl Protocol {
    pub fn is_http(self) -> bool {
        matches!(self, Self::Http | Self::Http2 | Self::Grpc)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Http => "http",
            Self::Http2 => "http2",
            Self::Grpc => "grpc",
            Self::Tcp => "tcp",
            Self::Tls => "tls",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Listener {
    pub name: String,
    pub bind: SocketAddr,
    pub kind: ListenerKind,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum ListenerKind {
    /// Everything arriving leads to one service port.
    Upstream {
        host: String,
        port: u16,
        protocol: Protocol,
        /// The key of its route table, worked out once rather than per request.
        route_key: String,
    },
    /// In front of the local workload.
    Inbound {
        cluster: String,
        /// The route table of the local service, holding RateLimits for it.
        route_key: String,
        protocol: Protocol,
    },
    /// Traffic redirected by iptables; the original destination picks the route.
    Capture,
    Admin,
    Prometheus,
}

/// How requests for one service port are routed.
#[derive(Debug, Clone, Serialize)]
pub struct RouteTable {
    pub host: String,
    pub port: u16,
    pub http: Vec<HttpRoute>,
    pub tcp: Vec<TcpRoute>,
    pub tls: Vec<TlsRoute>,
    /// Local rate limits for this host that apply to any route.
    pub rate_limits: Vec<RateLimit>,
}

#[derive(Debug, Clone, Serialize)]
pub struct HttpRoute {
    /// The route's name, or `<vs namespace>/<vs name>[<index>]`.
    pub name: String,
    /// Matches are ORed; an empty list matches everything.
    pub matches: Vec<RequestMatch>,
    pub action: RouteAction,
    pub request_headers: HeaderOps,
    pub response_headers: HeaderOps,
    pub timeout: Option<Duration>,
    pub retry: RetryPolicy,
    pub fault: Option<Fault>,
    pub mirrors: Vec<Mirror>,
    pub cors: Option<Cors>,
    pub rate_limits: Vec<RateLimit>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum RouteAction {
    Forward {
        destinations: Vec<WeightedCluster>,
        rewrite: Option<Rewrite>,
    },
    Redirect(Redirect),
    DirectResponse {
        status: u16,
        body: Option<String>,
    },
}

#[derive(Debug, Clone, Serialize)]
pub struct WeightedCluster {
    pub cluster: String,
    pub weight: u32,
    pub request_headers: HeaderOps,
    pub response_headers: HeaderOps,
}

#[derive(Debug, Clone, Serialize)]
pub struct Rewrite {
    /// Replaces the part of the path the route's prefix (or exact) match matched.
    pub uri: Option<String>,
    pub authority: Option<String>,
    pub uri_regex: Option<(StringMatcher, String)>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Redirect {
    pub uri: Option<String>,
    pub authority: Option<String>,
    pub port: Option<u16>,
    pub scheme: Option<String>,
    pub status: u16,
}

#[derive(Debug, Clone, Serialize)]
pub struct RetryPolicy {
    /// Retries after the first try; 0 disables retries.
    pub attempts: u32,
    pub per_try_timeout: Option<Duration>,
    pub on: RetryOn,
    pub backoff_base: Duration,
    pub ignore_previous_hosts: bool,
}

/// Envoy's `retry_on` conditions and gRPC status names, as Istio writes them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RetryOn {
    pub five_xx: bool,
    pub gateway_error: bool,
    pub reset: bool,
    pub connect_failure: bool,
    pub refused_stream: bool,
    pub retriable_4xx: bool,
    pub retriable_status_codes: Vec<u16>,
    /// gRPC status codes retried when they come in headers (trailers-only responses).
    pub grpc_codes: Vec<u32>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Fault {
    pub delay: Option<FaultDelay>,
    pub abort: Option<FaultAbort>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FaultDelay {
    pub delay: Duration,
    pub percent: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct FaultAbort {
    pub kind: AbortKind,
    pub percent: f64,
}

#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum AbortKind {
    HttpStatus(u16),
    GrpcStatus(u32),
}

#[derive(Debug, Clone, Serialize)]
pub struct Mirror {
    pub cluster: String,
    pub percent: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Cors {
    pub allow_origins: Vec<StringMatcher>,
    pub allow_methods: String,
    pub allow_headers: String,
    pub expose_headers: String,
    pub max_age: Option<u64>,
    pub allow_credentials: bool,
    /// Forward preflights whose origin is not allowed (Istio's default) rather than ignore CORS.
    pub forward_unmatched_preflights: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct RateLimit {
    /// `<namespace>/<name>` of the RateLimit; buckets are shared by every route it covers.
    pub name: String,
    pub matches: Vec<RequestMatch>,
    pub tokens_per_fill: u32,
    pub fill_interval: Duration,
    pub max_tokens: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct TcpRoute {
    pub matches: Vec<L4Match>,
    pub destinations: Vec<WeightedCluster>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TlsRoute {
    pub matches: Vec<TlsMatch>,
    pub destinations: Vec<WeightedCluster>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct L4Match {
    pub port: Option<u16>,
    pub destination_subnets: Vec<Subnet>,
    pub source_subnet: Option<Subnet>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct TlsMatch {
    /// Exact names or `*.suffix` wildcards.
    pub sni_hosts: Vec<String>,
    pub port: Option<u16>,
    pub destination_subnets: Vec<Subnet>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Subnet {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Subnet {
    pub fn parse(text: &str) -> Option<Self> {
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a.parse::<IpAddr>().ok()?, p.parse::<u8>().ok()?),
            None => {
                let a = text.parse::<IpAddr>().ok()?;
                (a, if a.is_ipv4() { 32 } else { 128 })
            }
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        (prefix <= max).then_some(Self { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// A set of endpoints and how to talk to them: Envoy's cluster. Each DestinationRule subset is
/// its own cluster, with its own balancing and health state, named like Istio's:
/// `outbound|9080|v1|reviews.default.svc.cluster.local`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Cluster {
    pub name: String,
    pub host: String,
    pub port: u16,
    pub subset: String,
    pub protocol: Protocol,
    /// Connect to whatever address the client meant (ServiceEntry `resolution: NONE`).
    pub passthrough: bool,
    pub endpoints: Vec<Endpoint>,
    pub lb: LbPolicy,
    pub locality_lb: Option<LocalityLb>,
    pub warmup: Option<Warmup>,
    pub pool: PoolLimits,
    pub outlier: Option<OutlierPolicy>,
    pub retry_budget: RetryBudget,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Endpoint {
    /// An IP or a DNS name, resolved when connecting.
    pub address: String,
    pub port: u16,
    pub labels: BTreeMap<String, String>,
    pub locality: Locality,
    pub weight: u32,
}

impl Endpoint {
    pub fn authority(&self) -> String {
        match self.address.parse::<IpAddr>() {
            Ok(ip) => SocketAddr::new(ip, self.port).to_string(),
            Err(_) => format!("{}:{}", self.address, self.port),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum LbPolicy {
    /// Power of two choices; Istio's default.
    LeastRequest,
    RoundRobin,
    Random,
    RingHash {
        key: HashKey,
        min_ring_size: u64,
    },
    Maglev {
        key: HashKey,
        table_size: u64,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum HashKey {
    Header(String),
    Cookie {
        name: String,
        path: String,
        ttl: Option<Duration>,
    },
    SourceIp,
    QueryParameter(String),
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LocalityLb {
    /// Labels compared, in order, to rank endpoints (Istio's `failoverPriority`).
    pub failover_priority: Vec<String>,
    /// `from` region → `to` region, used when the proxy's own region has nothing healthy.
    pub failover: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Warmup {
    pub duration: Duration,
    /// Share of its weight a fresh endpoint starts with, 0..=1.
    pub min_weight: f64,
    pub aggression: f64,
}

/// Connection-pool limits (Envoy's circuit breakers). `None` is unlimited.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PoolLimits {
    pub max_connections: Option<u32>,
    pub max_pending_requests: Option<u32>,
    pub max_requests: Option<u32>,
    pub max_requests_per_connection: Option<u32>,
    pub max_retries: Option<u32>,
    pub connect_timeout: Duration,
    pub idle_timeout: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OutlierPolicy {
    pub consecutive_5xx: Option<u32>,
    pub consecutive_gateway_errors: Option<u32>,
    pub interval: Duration,
    pub base_ejection_time: Duration,
    pub max_ejection_percent: u32,
    pub min_health_percent: u32,
}

/// Retries may add at most `percent` of the cluster's active requests, but always
/// `min_concurrency`, so that retries cannot multiply an outage.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RetryBudget {
    pub percent: f64,
    pub min_concurrency: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub max_header_bytes: u32,
    pub detection_timeout: Duration,
    pub max_buffered_body_bytes: u32,
}

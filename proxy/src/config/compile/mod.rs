//! Compiles resources and endpoints into a [`Snapshot`].
//!
//! Everything that can be wrong with config is found here, with the resource and field named,
//! so the request path has nothing left to fail on. Settings the resource model accepts but
//! this proxy does not implement are refused, never silently ignored.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, SocketAddr};

use trellis_api::networking::{
    Destination, DestinationRuleSpec, HttpMatchRequest, HttpRoute as ApiHttpRoute, Resolution,
    StringMatch, TrafficPolicy, VirtualServiceSpec,
};
use trellis_api::{Duration, Object, Resource};

use super::file::{ProtocolName, ProxyConfig};
use super::matcher::{HeaderMatch, Pattern, RequestMatch, StringMatcher};
use super::snapshot::*;
use crate::error::CompileError;

const CLUSTER_DOMAIN: &str = "svc.cluster.local";
/// Istio's default `retryOn`, plus 503 as its retriable status code.
const DEFAULT_RETRY_ON: &str =
    "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes";

type Result<T> = std::result::Result<T, CompileError>;

mod clusters;
mod listeners;
mod policy;
mod routes;
mod services;
#[cfg(test)]
mod tests;

use policy::*;

/// A service as the compiler sees it, from `services:`, a ServiceEntry or a trellis Service.
#[derive(Debug, Clone)]
struct ServiceInfo {
    host: String,
    vips: Vec<IpAddr>,
    ports: Vec<(u16, String, Protocol)>,
    /// Endpoint, and its port per service port name (empty name: single port).
    endpoints: Vec<(Endpoint, BTreeMap<String, u16>)>,
    passthrough: bool,
}

impl ServiceInfo {
    fn port_protocol(&self, port: u16) -> Option<Protocol> {
        self.ports.iter().find(|p| p.0 == port).map(|p| p.2)
    }
}

fn protocol(p: ProtocolName) -> Protocol {
    match p {
        ProtocolName::Auto => Protocol::Auto,
        ProtocolName::Http => Protocol::Http,
        ProtocolName::Http2 => Protocol::Http2,
        ProtocolName::Grpc => Protocol::Grpc,
        ProtocolName::Tcp => Protocol::Tcp,
        ProtocolName::Tls => Protocol::Tls,
    }
}

fn resource_name(kind: &str, meta: &trellis_api::ObjectMeta) -> String {
    format!("{kind} {}/{}", meta.namespace, meta.name)
}

/// `reviews` in namespace `shop` is `reviews.shop.svc.cluster.local`, as Istio reads it.
fn qualify(host: &str, namespace: &str) -> String {
    if host.contains('.') || host.starts_with('*') {
        host.to_owned()
    } else {
        format!("{host}.{namespace}.{CLUSTER_DOMAIN}")
    }
}

fn host_matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix('*') {
        Some("") => true,
        Some(suffix) => host.ends_with(suffix),
        None => pattern == host,
    }
}

struct Compiler<'a> {
    config: &'a ProxyConfig,
    node: Node,
    services: BTreeMap<String, ServiceInfo>,
    rules: Vec<(&'a trellis_api::ObjectMeta, &'a DestinationRuleSpec)>,
    clusters: BTreeMap<String, Cluster>,
    /// RateLimits that select this node's own workload by label.
    inbound_limits: Vec<RateLimit>,
    warnings: Vec<String>,
}

/// Compiles a proxy config into a snapshot.
pub fn compile(config: &ProxyConfig) -> Result<Snapshot> {
    let namespace = if config.node.namespace.is_empty() {
        trellis_api::meta::DEFAULT_NAMESPACE.to_owned()
    } else {
        config.node.namespace.clone()
    };
    let node = Node {
        name: config.node.name.clone(),
        namespace,
        locality: Locality::parse(&config.node.locality),
        labels: config.node.labels.clone(),
    };
    let mut c = Compiler {
        config,
        node,
        services: BTreeMap::new(),
        rules: Vec::new(),
        clusters: BTreeMap::new(),
        inbound_limits: Vec::new(),
        warnings: Vec::new(),
    };
    c.collect_services()?;
    c.collect_rules()?;
    c.build_clusters()?;
    let mut route_tables = c.build_route_tables()?;
    c.attach_rate_limits(&mut route_tables)?;
    let listeners = c.build_listeners(&mut route_tables)?;

    let mut vips = BTreeMap::new();
    for svc in c.services.values() {
        for ip in &svc.vips {
            for (port, _, _) in &svc.ports {
                vips.insert(vip_key(*ip, *port), svc.host.clone());
            }
        }
    }
    let mut tls_by_port: BTreeMap<u16, Vec<TlsRoute>> = BTreeMap::new();
    for table in route_tables.values() {
        tls_by_port
            .entry(table.port)
            .or_default()
            .extend(table.tls.iter().cloned());
    }
    let lim = &config.limits;
    let limits = Limits {
        header_read_timeout: lim.header_read_timeout.unwrap_or(secs(10)),
        max_header_bytes: lim.max_header_bytes.unwrap_or(60 * 1024),
        detection_timeout: lim.detection_timeout.unwrap_or(secs(1)),
        max_buffered_body_bytes: lim.max_buffered_body_bytes.unwrap_or(64 * 1024),
    };
    let mut snapshot = Snapshot {
        version: String::new(),
        node: c.node,
        listeners,
        route_tables,
        clusters: c.clusters,
        vips,
        tls_by_port,
        limits,
        drain_timeout: config.drain_timeout.unwrap_or(secs(5)),
        concurrency: config.concurrency.unwrap_or(2),
        warnings: c.warnings,
    };
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    serde_json::to_string(&snapshot)
        .unwrap_or_default()
        .hash(&mut hasher);
    snapshot.version = format!("{:016x}", hasher.finish());
    Ok(snapshot)
}

fn secs(n: u64) -> Duration {
    Duration::from_std(std::time::Duration::from_secs(n))
}

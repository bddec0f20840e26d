//! The static config format read by `trellis proxy --config FILE`, and the input the agent
//! hands to [`crate::config::compile`].
//!
//! ```yaml
//! node: {name: productpage-1, namespace: default, locality: us-east/us-east-1a}
//! listeners:
//!   admin: {bind: "127.0.0.1:15000"}
//!   inbound: {bind: "0.0.0.0:15006", service: productpage, address: "127.0.0.1:9080"}
//!   capture: {bind: "0.0.0.0:15001"}
//!   upstreams:
//!     - {name: reviews, bind: "127.0.0.1:9001", service: reviews, port: 9080}
//! services:
//!   - name: reviews
//!     ports: [{number: 9080, protocol: HTTP}]
//!     endpoints:
//!       - {address: 10.0.0.7, port: 9080, labels: {version: v1}}
//! resources:            # Istio documents as-is
//!   - apiVersion: networking.istio.io/v1
//!     kind: VirtualService
//!     ...
//! ```

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use trellis_api::{Duration, RawDocument, Resource};

use crate::error::FileError;

/// The proxy's whole input, as written in a file or assembled by the agent.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProxyConfig {
    pub node: NodeConfig,
    pub listeners: ListenersConfig,
    pub services: Vec<ServiceConfig>,
    /// Istio and Trellis documents, decoded and validated by `trellis-api`.
    pub resources: Vec<Resource>,
    pub limits: LimitsConfig,
    /// How long in-flight work may take to finish after SIGTERM. Default 5s.
    pub drain_timeout: Option<Duration>,
    /// Worker threads serving connections; 0 means one per CPU. Default 2 (Istio's
    /// `ProxyConfig.concurrency` for sidecars).
    pub concurrency: Option<u32>,
}

/// Who this proxy is: used for locality-aware load balancing and in metrics.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct NodeConfig {
    pub name: String,
    pub namespace: String,
    /// `region/zone/subzone`, each part optional.
    pub locality: String,
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct ListenersConfig {
    pub admin: Option<BindConfig>,
    /// Prometheus scrape port (Istio's 15090); metrics are also under the admin listener.
    pub prometheus: Option<BindConfig>,
    pub capture: Option<BindConfig>,
    pub inbound: Option<InboundConfig>,
    pub upstreams: Vec<UpstreamConfig>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BindConfig {
    pub bind: SocketAddr,
}

/// The listener in front of the local workload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct InboundConfig {
    pub bind: SocketAddr,
    /// Where the local workload listens.
    pub address: SocketAddr,
    /// The mesh service the workload backs, so that RateLimits for it apply here.
    #[serde(default)]
    pub service: Option<String>,
    #[serde(default)]
    pub protocol: ProtocolName,
}

/// A local port that leads to one service (Consul's `upstreams`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct UpstreamConfig {
    pub name: String,
    pub bind: SocketAddr,
    /// A service name (`reviews`, `reviews.shop`) or a host (`reviews.shop.svc.cluster.local`,
    /// a ServiceEntry host).
    pub service: String,
    /// Which port of the service; may be left out when it has only one.
    #[serde(default)]
    pub port: Option<u16>,
    /// Overrides the protocol the service port declares.
    #[serde(default)]
    pub protocol: Option<ProtocolName>,
}

/// A mesh service and its endpoints. Its host is `<name>.<namespace>.svc.cluster.local`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct ServiceConfig {
    pub name: String,
    pub namespace: String,
    /// The virtual IP the capture listener recognises the service by.
    pub vip: Option<IpAddr>,
    pub ports: Vec<ServicePortConfig>,
    pub endpoints: Vec<EndpointConfig>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct ServicePortConfig {
    pub number: u16,
    pub name: String,
    pub protocol: ProtocolName,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct EndpointConfig {
    /// An IP address, or a DNS name resolved when connecting.
    pub address: String,
    /// The endpoint's port, when the service has a single port (default: the service port).
    pub port: Option<u16>,
    /// Per service-port name, when the service has several.
    pub ports: BTreeMap<String, u16>,
    pub labels: BTreeMap<String, String>,
    pub locality: String,
    pub weight: Option<u32>,
}

/// Istio's port protocol names; anything else is refused.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProtocolName {
    #[default]
    #[serde(alias = "", alias = "auto", alias = "AUTO")]
    Auto,
    #[serde(alias = "HTTP", alias = "http")]
    Http,
    #[serde(alias = "HTTP2", alias = "http2")]
    Http2,
    #[serde(alias = "GRPC", alias = "grpc", alias = "GRPC-WEB", alias = "grpc-web")]
    Grpc,
    #[serde(
        alias = "TCP",
        alias = "tcp",
        alias = "MONGO",
        alias = "REDIS",
        alias = "MYSQL"
    )]
    Tcp,
    #[serde(alias = "TLS", alias = "tls", alias = "HTTPS", alias = "https")]
    Tls,
}

impl ProtocolName {
    /// Reads Istio's names (`HTTP`, `GRPC`, `TCP`, `HTTPS`, ...), as ServiceEntry ports write them.
    pub fn parse_istio(name: &str) -> Option<Self> {
        Some(match name.to_ascii_uppercase().as_str() {
            "" => Self::Auto,
            "HTTP" => Self::Http,
            "HTTP2" => Self::Http2,
            "GRPC" | "GRPC-WEB" => Self::Grpc,
            "TCP" | "MONGO" | "REDIS" | "MYSQL" => Self::Tcp,
            "TLS" | "HTTPS" => Self::Tls,
            _ => return None,
        })
    }
}

/// Protections of the listeners against misbehaving clients.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct LimitsConfig {
    /// A client that has not sent a whole request head by then is disconnected (slowloris).
    /// Default 10s.
    pub header_read_timeout: Option<Duration>,
    /// Largest request head accepted; larger gets `431`. Default 60 KiB, Envoy's.
    pub max_header_bytes: Option<u32>,
    /// How long protocol sniffing waits for the first bytes before treating a connection as
    /// opaque TCP (server-first protocols send nothing). Default 1s.
    pub detection_timeout: Option<Duration>,
    /// Largest request body kept in memory so that it can be retried or mirrored. Default 64 KiB.
    pub max_buffered_body_bytes: Option<u32>,
}

/// The file as written: resources stay untyped until `trellis-api` decodes them, so its
/// errors name the document and field the way `trellis apply` does.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawFile {
    #[serde(default)]
    node: NodeConfig,
    #[serde(default)]
    listeners: ListenersConfig,
    #[serde(default)]
    services: Vec<ServiceConfig>,
    #[serde(default)]
    resources: Vec<serde_json::Value>,
    #[serde(default)]
    limits: LimitsConfig,
    #[serde(default)]
    drain_timeout: Option<Duration>,
    #[serde(default)]
    concurrency: Option<u32>,
}

impl ProxyConfig {
    /// Reads a config file, YAML or JSON. Every error names the file and the field.
    pub fn from_file(path: &Path) -> Result<Self, FileError> {
        let text = std::fs::read_to_string(path).map_err(|source| FileError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_text(path, &text)
    }

    /// Reads config text; `path` only names it in errors.
    pub fn from_text(path: &Path, text: &str) -> Result<Self, FileError> {
        let path_buf: PathBuf = path.to_owned();
        let trimmed = text.trim_start();
        let raw: RawFile = if trimmed.starts_with('{') {
            let mut de = serde_json::Deserializer::from_str(text);
            serde_path_to_error::deserialize(&mut de).map_err(|e| {
                field_error(
                    &path_buf,
                    "JSON",
                    e.path().to_string(),
                    e.inner().to_string(),
                )
            })?
        } else {
            let value: serde_norway::Value =
                serde_norway::from_str(text).map_err(|e| FileError::Syntax {
                    path: path_buf.clone(),
                    format: "YAML",
                    message: e.to_string(),
                })?;
            serde_path_to_error::deserialize(value).map_err(|e| {
                field_error(
                    &path_buf,
                    "YAML",
                    e.path().to_string(),
                    e.inner().to_string(),
                )
            })?
        };
        let source = path.display().to_string();
        let mut resources = Vec::with_capacity(raw.resources.len());
        let mut errors = Vec::new();
        for (index, value) in raw.resources.into_iter().enumerate() {
            let mut id = trellis_api::DocumentId::new(format!("{source} resources"), index);
            id.index = index;
            match trellis_api::decode_document(RawDocument { id, value }) {
                Ok(doc) => resources.push(doc.resource),
                Err(e) => errors.extend(e),
            }
        }
        if !errors.is_empty() {
            return Err(FileError::Resources {
                path: path_buf,
                source: trellis_api::ParseErrors(errors),
            });
        }
        Ok(Self {
            node: raw.node,
            listeners: raw.listeners,
            services: raw.services,
            resources,
            limits: raw.limits,
            drain_timeout: raw.drain_timeout,
            concurrency: raw.concurrency,
        })
    }
}

fn field_error(path: &Path, format: &'static str, field: String, message: String) -> FileError {
    if field.is_empty() || field == "." {
        FileError::Syntax {
            path: path.to_owned(),
            format,
            message,
        }
    } else {
        FileError::Field {
            path: path.to_owned(),
            field,
            message,
        }
    }
}

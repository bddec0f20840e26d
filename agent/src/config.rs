//! The agent's config file (YAML): which servers to reach and which services run on
//! this node, with their health checks, in the shape Consul service definitions have.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::error::AgentConfigError;

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AgentConfig {
    /// This node's name in the mesh (default: the host name).
    #[serde(default)]
    pub node: Option<String>,
    /// gRPC addresses of servers (`host:port`); `--server` flags add to these.
    #[serde(default)]
    pub servers: Vec<String>,
    #[serde(default)]
    pub services: Vec<LocalService>,
    /// The address other nodes reach this node's services at (default 127.0.0.1).
    #[serde(default)]
    pub address: Option<String>,
    /// `region/zone/subzone`, for locality-aware load balancing.
    #[serde(default)]
    pub locality: String,
    /// The node's proxy: its listeners (as `trellis proxy --config` writes them), limits
    /// and drain timeout. Without it the proxy runs an admin listener only.
    #[serde(default)]
    pub proxy: AgentProxyConfig,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AgentProxyConfig {
    #[serde(default)]
    pub listeners: trellis_proxy::config::file::ListenersConfig,
    #[serde(default)]
    pub limits: trellis_proxy::config::file::LimitsConfig,
    #[serde(default)]
    pub drain_timeout: Option<trellis_api::Duration>,
    /// The proxy's worker threads; 0 means one per CPU. Default 2.
    #[serde(default)]
    pub concurrency: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LocalService {
    pub name: String,
    #[serde(default = "default_namespace")]
    pub namespace: String,
    pub port: u16,
    /// Istio's protocol names: HTTP, HTTP2, GRPC, TCP, TLS; empty means detect.
    #[serde(default)]
    pub protocol: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Consul-style tags, kept as labels `tag.<tag>: "true"` in the mesh.
    #[serde(default)]
    pub tags: Vec<String>,
    /// The identity the service runs as (the `sa` of its SPIFFE id; default: its name).
    #[serde(default)]
    pub service_account: Option<String>,
    #[serde(default)]
    pub checks: Vec<HealthCheck>,
}

fn default_namespace() -> String {
    "default".into()
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HealthCheck {
    /// An HTTP(S) URL answered with 2xx when healthy.
    #[serde(default)]
    pub http: Option<String>,
    /// A `host:port` that accepts TCP connections when healthy.
    #[serde(default)]
    pub tcp: Option<String>,
    /// A `host:port` serving the gRPC health protocol.
    #[serde(default)]
    pub grpc: Option<String>,
    /// A command and its arguments; exit 0 is healthy.
    #[serde(default)]
    pub exec: Option<Vec<String>>,
    #[serde(default = "default_interval", with = "humantime_serde_compat")]
    pub interval: Duration,
    #[serde(default = "default_timeout", with = "humantime_serde_compat")]
    pub timeout: Duration,
    /// Deregister the service when the check stays critical this long.
    #[serde(default, with = "humantime_serde_compat::option")]
    pub deregister_critical_after: Option<Duration>,
}

/// What a health check probes, once its config is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    Http(String),
    Tcp(String),
    Grpc(String),
    Exec(Vec<String>),
}

fn default_interval() -> Duration {
    Duration::from_secs(10)
}

fn default_timeout() -> Duration {
    Duration::from_secs(2)
}

/// Durations written as operators write them ("10s", "1m30s").
mod humantime_serde_compat {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(|e| {
            serde::de::Error::custom(format!(
                "'{s}' is not a duration ({e}); write e.g. 10s or 1m"
            ))
        })
    }

    pub mod option {
        use std::time::Duration;

        use serde::{Deserialize, Deserializer};

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
            let s = Option::<String>::deserialize(d)?;
            s.map(|s| {
                humantime::parse_duration(&s).map_err(|e| {
                    serde::de::Error::custom(format!(
                        "'{s}' is not a duration ({e}); write e.g. 10s or 1m"
                    ))
                })
            })
            .transpose()
        }
    }
}

impl HealthCheck {
    pub fn probe(&self) -> Option<Probe> {
        match (&self.http, &self.tcp, &self.grpc, &self.exec) {
            (Some(u), None, None, None) => Some(Probe::Http(u.clone())),
            (None, Some(a), None, None) => Some(Probe::Tcp(a.clone())),
            (None, None, Some(a), None) => Some(Probe::Grpc(a.clone())),
            (None, None, None, Some(c)) => Some(Probe::Exec(c.clone())),
            _ => None,
        }
    }
}

impl AgentConfig {
    pub fn load(path: &Path) -> Result<AgentConfig, AgentConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| AgentConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<AgentConfig, AgentConfigError> {
        let invalid = |field: String, message: String| AgentConfigError::Invalid {
            path: PathBuf::from(path),
            field,
            message,
        };
        let de = serde_norway::Deserializer::from_str(text);
        let config: AgentConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let field = e.path().to_string();
            invalid(
                if field == "." {
                    "(document)".into()
                } else {
                    field
                },
                e.into_inner().to_string(),
            )
        })?;
        config
            .validate()
            .map_err(|(field, message)| invalid(field, message))?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), (String, String)> {
        let mut seen = std::collections::BTreeSet::new();
        for (i, s) in self.services.iter().enumerate() {
            let at = |f: &str| format!("services[{i}].{f}");
            if !is_dns_label(&s.name) {
                return Err((
                    at("name"),
                    format!(
                        "'{}' must be a DNS label (a-z, 0-9, '-', at most 63)",
                        s.name
                    ),
                ));
            }
            if !is_dns_label(&s.namespace) {
                return Err((
                    at("namespace"),
                    format!("'{}' must be a DNS label", s.namespace),
                ));
            }
            if s.port == 0 {
                return Err((at("port"), "must be between 1 and 65535".into()));
            }
            if !matches!(
                s.protocol.as_str(),
                "" | "HTTP" | "HTTP2" | "GRPC" | "TCP" | "TLS" | "HTTPS"
            ) {
                return Err((
                    at("protocol"),
                    format!(
                        "'{}' must be one of HTTP, HTTP2, GRPC, TCP, TLS, HTTPS",
                        s.protocol
                    ),
                ));
            }
            // Several instances of one service may run on a node, on different ports.
            if !seen.insert((s.namespace.clone(), s.name.clone(), s.port)) {
                return Err((
                    at("port"),
                    format!(
                        "{}/{} on port {} is declared twice",
                        s.namespace, s.name, s.port
                    ),
                ));
            }
            for (j, c) in s.checks.iter().enumerate() {
                let at = |f: &str| format!("services[{i}].checks[{j}]{f}");
                if c.probe().is_none() {
                    return Err((at(""), "give exactly one of http, tcp, grpc, exec".into()));
                }
                if let Some(cmd) = &c.exec
                    && cmd.is_empty()
                {
                    return Err((at(".exec"), "needs the command to run".into()));
                }
                if c.interval.is_zero() {
                    return Err((at(".interval"), "must be more than 0".into()));
                }
                if c.timeout.is_zero() || c.timeout > c.interval {
                    return Err((
                        at(".timeout"),
                        "must be more than 0 and at most the interval".into(),
                    ));
                }
            }
        }
        Ok(())
    }
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
servers: [10.0.0.1:8502]
services:
  - name: reviews
    namespace: shop
    port: 9080
    protocol: HTTP
    labels: {version: v1}
    tags: [canary]
    serviceAccount: reviews
    checks:
      - http: http://127.0.0.1:9080/health
        interval: 5s
        timeout: 1s
        deregisterCriticalAfter: 1m
      - tcp: 127.0.0.1:9080
      - exec: [/usr/local/bin/check-reviews]
"#;

    fn parse(text: &str) -> Result<AgentConfig, AgentConfigError> {
        AgentConfig::parse(Path::new("agent.yaml"), text)
    }

    #[test]
    fn a_vm_service_with_checks_is_read() {
        let c = parse(GOOD).unwrap();
        let s = &c.services[0];
        assert_eq!(
            (s.name.as_str(), s.namespace.as_str(), s.port),
            ("reviews", "shop", 9080)
        );
        assert_eq!(s.checks[0].interval, Duration::from_secs(5));
        assert_eq!(
            s.checks[0].deregister_critical_after,
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            s.checks[1].probe(),
            Some(Probe::Tcp("127.0.0.1:9080".into()))
        );
        assert_eq!(s.checks[1].interval, Duration::from_secs(10));
    }

    #[test]
    fn errors_name_the_file_and_the_field() {
        let cases = [
            (
                GOOD.replace("port: 9080", "port: 70000"),
                "services[0].port",
            ),
            (
                GOOD.replace("interval: 5s", "interval: soon"),
                "services[0].checks[0].interval",
            ),
            (
                GOOD.replace("name: reviews", "name: Reviews"),
                "services[0].name",
            ),
            (
                GOOD.replace("protocol: HTTP", "protocol: SMTP"),
                "services[0].protocol",
            ),
            (
                GOOD.replace(
                    "      - tcp: 127.0.0.1:9080",
                    "      - tcp: 127.0.0.1:9080\n        http: http://x",
                ),
                "services[0].checks[1]",
            ),
            (
                GOOD.replace("serviceAccount", "serviceAcount"),
                "services[0]",
            ),
            (
                GOOD.replace("timeout: 1s", "timeout: 9s"),
                "services[0].checks[0].timeout",
            ),
        ];
        for (text, field) in cases {
            let err = parse(&text).unwrap_err().to_string();
            assert!(
                err.starts_with(&format!("agent.yaml: {field}")),
                "expected {field}: {err}"
            );
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for text in ["", "[", "services: 5", "\u{0}\u{1}", "services:\n  - {}"] {
            let _ = parse(text);
        }
        assert!(parse("services: 5").is_err());
    }
}

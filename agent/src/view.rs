//! The node's view as the servers push it: store keys with their revisions and values.
//! Pushes are applied to it whole; it is turned into the proxy's input here, so the proxy
//! never learns where its config came from.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::{Deserialize, Serialize};
use trellis_api::discovery::{
    ENDPOINTS_PREFIX, Item, Push, SERVICES_PREFIX, StoredEndpoint, parse_endpoint_key,
};
use trellis_api::{Resource, ResourceKey};
use trellis_proxy::ProxyConfig;
use trellis_proxy::config::file::{
    EndpointConfig, NodeConfig, ProtocolName, ServiceConfig, ServicePortConfig,
};

use crate::config::AgentProxyConfig;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViewItem {
    pub revision: u64,
    /// JSON as the store holds it.
    pub value: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct View {
    /// The version of the last push applied.
    pub version: String,
    pub items: BTreeMap<String, ViewItem>,
}

/// A service as a registry adapter stores it under `/registry/services/<ns>/<name>`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct StoredService {
    ports: Vec<ServicePortConfig>,
    vip: Option<std::net::IpAddr>,
}

impl View {
    /// Applies a push; a value that is not UTF-8 is refused before anything changes.
    pub fn apply(&mut self, push: &Push) -> Result<(), String> {
        let mut upserts = Vec::with_capacity(push.upserts.len());
        for Item {
            key,
            revision,
            value,
        } in &push.upserts
        {
            let text = String::from_utf8(value.clone())
                .map_err(|_| format!("{key}: the value is not UTF-8 text"))?;
            upserts.push((
                key.clone(),
                ViewItem {
                    revision: *revision,
                    value: text,
                },
            ));
        }
        if push.full {
            self.items.clear();
        }
        for k in &push.removals {
            self.items.remove(k);
        }
        self.items.extend(upserts);
        self.version = push.version.clone();
        Ok(())
    }

    pub fn held(&self) -> Vec<trellis_api::discovery::Held> {
        self.items
            .iter()
            .map(|(k, i)| trellis_api::discovery::Held {
                key: k.clone(),
                revision: i.revision,
            })
            .collect()
    }

    /// The proxy's whole input: the node's own listeners plus the services, endpoints and
    /// resources of the view. Critical endpoints are left out, so they take no traffic.
    /// An upstream listener whose service is not known yet is left out too (and logged):
    /// services come and go, and one missing must not stop the rest of the node's config.
    pub fn to_proxy_config(
        &self,
        node: &NodeConfig,
        proxy: &AgentProxyConfig,
    ) -> Result<ProxyConfig, String> {
        let mut services: BTreeMap<(String, String), ServiceConfig> = BTreeMap::new();
        let mut resources = Vec::new();
        for (key, item) in &self.items {
            if let Some(rest) = key.strip_prefix(SERVICES_PREFIX) {
                let Some((ns, name)) = rest.split_once('/') else {
                    return Err(format!("{key}: not a service key"));
                };
                let stored: StoredService =
                    serde_json::from_str(&item.value).map_err(|e| format!("{key}: {e}"))?;
                let svc = services
                    .entry((ns.to_owned(), name.to_owned()))
                    .or_insert_with(|| new_service(ns, name));
                svc.ports = stored.ports;
                svc.vip = stored.vip;
            } else if key.starts_with(ENDPOINTS_PREFIX) {
                let (ns, name, _) =
                    parse_endpoint_key(key).ok_or_else(|| format!("{key}: not an endpoint key"))?;
                let ep: StoredEndpoint =
                    serde_json::from_str(&item.value).map_err(|e| format!("{key}: {e}"))?;
                let svc = services
                    .entry((ns.to_owned(), name.to_owned()))
                    .or_insert_with(|| new_service(ns, name));
                // A service nobody declared takes its port from its first endpoint; the
                // others keep their own port on the endpoint.
                if svc.ports.is_empty() {
                    svc.ports.push(ServicePortConfig {
                        number: ep.port,
                        name: String::new(),
                        protocol: ProtocolName::parse_istio(&ep.protocol).unwrap_or_default(),
                    });
                }
                if ep.health.takes_traffic() {
                    svc.endpoints.push(EndpointConfig {
                        address: ep.address,
                        port: Some(ep.port),
                        ports: BTreeMap::new(),
                        labels: ep.labels,
                        locality: ep.locality,
                        weight: None,
                    });
                }
            } else if key.starts_with("/config/") {
                ResourceKey::parse_store_key(key).map_err(|e| e.to_string())?;
                let resource =
                    Resource::from_json(&item.value).map_err(|e| format!("{key}: {e}"))?;
                resources.push(resource);
            }
        }
        let mut listeners = proxy.listeners.clone();
        let known = known_hosts(&services, &resources);
        listeners.upstreams.retain(|u| {
            let found = resolves(&u.service, &node.namespace, &known);
            if !found {
                tracing::info!(upstream = %u.name, service = %u.service, "upstream waits for its service to appear");
            }
            found
        });
        Ok(ProxyConfig {
            node: node.clone(),
            listeners,
            services: services.into_values().collect(),
            resources,
            limits: proxy.limits.clone(),
            drain_timeout: proxy.drain_timeout,
            concurrency: proxy.concurrency,
        })
    }

    /// Writes the view atomically (temp file, fsync, rename): a crash leaves the old file
    /// or the new one, never half of one.
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        use std::io::Write;
        let tmp = path.with_extension("tmp");
        let bytes = serde_json::to_vec(self).map_err(std::io::Error::other)?;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }

    /// Reads a saved view; `None` when there is none.
    pub fn load(path: &Path) -> Result<Option<View>, String> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                format!(
                    "{}: not a saved view ({e}); remove it to start clean",
                    path.display()
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("{}: {e}", path.display())),
        }
    }
}

fn new_service(ns: &str, name: &str) -> ServiceConfig {
    ServiceConfig {
        name: name.to_owned(),
        namespace: ns.to_owned(),
        ..ServiceConfig::default()
    }
}

fn known_hosts(
    services: &BTreeMap<(String, String), ServiceConfig>,
    resources: &[Resource],
) -> BTreeSet<String> {
    let mut known = BTreeSet::new();
    for (ns, name) in services.keys() {
        known.insert(format!("{name}.{ns}.svc.cluster.local"));
    }
    for r in resources {
        match r {
            Resource::Service(o) => {
                known.insert(format!(
                    "{}.{}.svc.cluster.local",
                    o.metadata.name, o.metadata.namespace
                ));
            }
            Resource::ServiceEntry(o) => known.extend(o.spec.hosts.iter().cloned()),
            _ => {}
        }
    }
    known
}

/// The names an upstream may give, as the proxy resolves them: `name` (the node's
/// namespace), `name.ns`, the full host, or a ServiceEntry host.
fn resolves(service: &str, namespace: &str, known: &BTreeSet<String>) -> bool {
    let dots = service.matches('.').count();
    let fqdn = match dots {
        0 => format!("{service}.{namespace}.svc.cluster.local"),
        1 => format!("{service}.svc.cluster.local"),
        _ => service.to_owned(),
    };
    known.contains(&fqdn) || known.contains(service)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push(full: bool, upserts: &[(&str, u64, &str)], removals: &[&str]) -> Push {
        Push {
            version: "7".into(),
            nonce: "1".into(),
            full,
            upserts: upserts
                .iter()
                .map(|(k, r, v)| Item {
                    key: (*k).into(),
                    revision: *r,
                    value: v.as_bytes().to_vec(),
                })
                .collect(),
            removals: removals.iter().map(|k| (*k).to_string()).collect(),
        }
    }

    fn endpoint(node: &str, port: u16, health: &str, version: &str) -> String {
        format!(
            r#"{{"node":"{node}","address":"127.0.0.1","port":{port},"protocol":"HTTP","labels":{{"version":"{version}"}},"health":"{health}"}}"#
        )
    }

    #[test]
    fn critical_endpoints_take_no_traffic_and_upstreams_wait_for_their_service() {
        let mut view = View::default();
        let a = endpoint("a", 9001, "passing", "v1");
        let b = endpoint("b", 9002, "critical", "v2");
        view.apply(&push(
            true,
            &[
                ("/registry/endpoints/default/reviews/a:9001", 3, &a),
                ("/registry/endpoints/default/reviews/b:9002", 4, &b),
            ],
            &[],
        ))
        .unwrap();
        let proxy: AgentProxyConfig = serde_norway::from_str(
            "listeners:\n  upstreams:\n    - {name: reviews, bind: '127.0.0.1:0', service: reviews}\n    - {name: ratings, bind: '127.0.0.1:0', service: ratings}\n",
        )
        .unwrap();
        let node = NodeConfig {
            name: "n".into(),
            namespace: "default".into(),
            ..NodeConfig::default()
        };
        let cfg = view.to_proxy_config(&node, &proxy).unwrap();
        assert_eq!(cfg.services.len(), 1);
        assert_eq!(cfg.services[0].endpoints.len(), 1);
        assert_eq!(cfg.services[0].endpoints[0].port, Some(9001));
        let names: Vec<_> = cfg
            .listeners
            .upstreams
            .iter()
            .map(|u| u.name.as_str())
            .collect();
        assert_eq!(names, ["reviews"]);
        trellis_proxy::compile(&cfg).unwrap();
    }

    #[test]
    fn deltas_apply_and_a_full_push_replaces_everything() {
        let mut view = View::default();
        view.apply(&push(
            true,
            &[("/config/x/a/b", 1, "{}"), ("/k2", 2, "{}")],
            &[],
        ))
        .unwrap();
        view.apply(&push(false, &[("/k3", 3, "{}")], &["/k2"]))
            .unwrap();
        assert_eq!(
            view.items.keys().collect::<Vec<_>>(),
            ["/config/x/a/b", "/k3"]
        );
        view.apply(&push(true, &[("/k4", 4, "{}")], &[])).unwrap();
        assert_eq!(view.items.keys().collect::<Vec<_>>(), ["/k4"]);
        let bad = Push {
            upserts: vec![Item {
                key: "/k5".into(),
                revision: 5,
                value: vec![0xff],
            }],
            ..push(false, &[], &["/k4"])
        };
        assert!(view.apply(&bad).is_err());
        assert!(
            view.items.contains_key("/k4"),
            "a refused push changes nothing"
        );
    }

    #[test]
    fn a_saved_view_reads_back_and_garbage_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("view.json");
        assert_eq!(View::load(&path).unwrap(), None);
        let mut view = View::default();
        view.apply(&push(true, &[("/k", 1, "{\"a\":1}")], &[]))
            .unwrap();
        view.save(&path).unwrap();
        assert_eq!(View::load(&path).unwrap(), Some(view));
        std::fs::write(&path, b"not json").unwrap();
        let err = View::load(&path).unwrap_err();
        assert!(err.contains("view.json"), "{err}");
    }
}

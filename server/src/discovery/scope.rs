//! Which keys of the mirror a node sees. Everything the data plane compiles, narrowed by
//! namespace-wide `Sidecar` resources the way Istio narrows a workload's egress.

use std::collections::BTreeSet;

use trellis_api::discovery::{ENDPOINTS_PREFIX, SERVICES_PREFIX};
use trellis_api::{Kind, Resource, ResourceKey};

use super::mirror::MirrorState;

/// Kinds the proxy compiles. The rest are read by the servers themselves (Sidecar), or by
/// parts that receive them another way (Gateway, WorkloadEntry through the registry).
const DATA_PLANE_KINDS: [Kind; 8] = [
    Kind::VirtualService,
    Kind::DestinationRule,
    Kind::ServiceEntry,
    Kind::Service,
    Kind::RateLimit,
    Kind::AuthorizationPolicy,
    Kind::PeerAuthentication,
    Kind::RequestAuthentication,
];

#[derive(Debug, Clone, PartialEq, Eq)]
enum NamespaceMatch {
    Any,
    Exact(String),
    Nothing,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct EgressHost {
    namespace: NamespaceMatch,
    /// `*`, an exact host, or `*.suffix`.
    host: String,
}

/// What one node may see. `None` hosts: everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scope {
    egress: Option<Vec<EgressHost>>,
}

impl Scope {
    /// Istio's rule: a namespace's Sidecar without a workload selector narrows its workloads'
    /// egress. A node running workloads of several namespaces sees the union; one namespace
    /// without a Sidecar, or a node that names no namespace, sees everything.
    pub fn for_node(namespaces: &BTreeSet<String>, mirror: &MirrorState) -> Scope {
        if namespaces.is_empty() {
            return Scope::default();
        }
        let mut hosts = Vec::new();
        for ns in namespaces {
            let prefix = ResourceKey::store_prefix(Kind::Sidecar, Some(ns));
            let mut found = false;
            let sidecars = mirror
                .items
                .range(prefix.clone()..)
                .take_while(|(k, _)| k.starts_with(&prefix));
            for (_, entry) in sidecars {
                let Ok(text) = std::str::from_utf8(&entry.value) else {
                    continue;
                };
                let Ok(Resource::Sidecar(sidecar)) = Resource::from_json(text) else {
                    continue;
                };
                if sidecar.spec.workload_selector.is_some() {
                    continue;
                }
                found = true;
                for egress in &sidecar.spec.egress {
                    hosts.extend(egress.hosts.iter().filter_map(|h| parse_host(h, ns)));
                }
                break;
            }
            if !found {
                return Scope::default();
            }
        }
        Scope {
            egress: Some(hosts),
        }
    }

    /// Whether a Sidecar write may change some node's scope.
    pub fn is_scope_key(key: &str) -> bool {
        key.starts_with(&ResourceKey::store_prefix(Kind::Sidecar, None))
    }

    pub fn includes(&self, key: &str) -> bool {
        if let Some(rest) = key.strip_prefix(ENDPOINTS_PREFIX) {
            let mut parts = rest.split('/');
            return match (parts.next(), parts.next()) {
                (Some(ns), Some(svc)) => self.sees_host(ns, svc),
                _ => false,
            };
        }
        if let Some(rest) = key.strip_prefix(SERVICES_PREFIX) {
            return match rest.split_once('/') {
                Some((ns, svc)) => self.sees_host(ns, svc),
                None => false,
            };
        }
        match ResourceKey::parse_store_key(key) {
            Ok(k) => DATA_PLANE_KINDS.contains(&k.kind) && self.sees_namespace(&k.namespace),
            Err(_) => false,
        }
    }

    fn sees_namespace(&self, ns: &str) -> bool {
        match &self.egress {
            None => true,
            Some(hosts) => hosts.iter().any(|h| h.namespace.matches(ns)),
        }
    }

    fn sees_host(&self, ns: &str, service: &str) -> bool {
        let Some(hosts) = &self.egress else {
            return true;
        };
        let fqdn = format!("{service}.{ns}.svc.cluster.local");
        hosts.iter().any(|h| {
            h.namespace.matches(ns)
                && (h.host == "*"
                    || h.host == fqdn
                    || h.host
                        .strip_prefix('*')
                        .is_some_and(|suffix| fqdn.ends_with(suffix)))
        })
    }
}

impl NamespaceMatch {
    fn matches(&self, ns: &str) -> bool {
        match self {
            NamespaceMatch::Any => true,
            NamespaceMatch::Exact(n) => n == ns,
            NamespaceMatch::Nothing => false,
        }
    }
}

/// `namespace/host` as Sidecar egress writes it: `*/`, `./` (the Sidecar's own), `~/` (none).
fn parse_host(text: &str, own: &str) -> Option<EgressHost> {
    let (ns, host) = text.split_once('/')?;
    let namespace = match ns {
        "*" => NamespaceMatch::Any,
        "." => NamespaceMatch::Exact(own.to_owned()),
        "~" => NamespaceMatch::Nothing,
        other => NamespaceMatch::Exact(other.to_owned()),
    };
    Some(EgressHost {
        namespace,
        host: host.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::mirror::Entry;

    fn mirror_with(items: &[(&str, &str)]) -> MirrorState {
        let mut m = MirrorState::default();
        for (k, v) in items {
            m.items.insert(
                (*k).to_owned(),
                Entry {
                    revision: 1,
                    value: bytes::Bytes::from(v.to_string()),
                },
            );
        }
        m
    }

    const SIDECAR: &str = r#"{"apiVersion":"networking.istio.io/v1","kind":"Sidecar",
        "metadata":{"name":"default","namespace":"shop"},
        "spec":{"egress":[{"hosts":["./*","istio-system/*","billing/payments.billing.svc.cluster.local"]}]}}"#;

    #[test]
    fn a_namespace_sidecar_narrows_what_its_workloads_see() {
        let m = mirror_with(&[("/config/sidecar/shop/default", SIDECAR)]);
        let scope = Scope::for_node(&BTreeSet::from(["shop".to_owned()]), &m);
        assert!(scope.includes("/registry/endpoints/shop/reviews/vm-1:80"));
        assert!(scope.includes("/registry/endpoints/billing/payments/vm-2:80"));
        assert!(!scope.includes("/registry/endpoints/billing/ledger/vm-2:80"));
        assert!(!scope.includes("/registry/endpoints/other/x/vm-3:80"));
        assert!(scope.includes("/config/virtualservice/shop/reviews"));
        assert!(!scope.includes("/config/virtualservice/other/x"));
        // Read by the servers, never pushed.
        assert!(!scope.includes("/config/sidecar/shop/default"));
    }

    #[test]
    fn without_a_sidecar_a_node_sees_everything_the_proxy_compiles() {
        let m = mirror_with(&[("/config/sidecar/shop/default", SIDECAR)]);
        let scope = Scope::for_node(&BTreeSet::from(["shop".into(), "web".into()]), &m);
        assert!(scope.includes("/registry/endpoints/other/x/vm-3:80"));
        assert!(scope.includes("/config/destinationrule/other/x"));
        assert!(!scope.includes("/config/gateway/other/x"));
        assert!(!scope.includes("/nodes/vm-1"));
        let none = Scope::for_node(&BTreeSet::new(), &m);
        assert!(none.includes("/registry/services/a/b"));
    }
}

//! The discovery protocol between servers, agents and standalone proxies: generated
//! tonic code, and the store-key layout both ends read a view with.

#[allow(clippy::all, clippy::pedantic, missing_docs)]
mod pb {
    tonic::include_proto!("trellis.discovery.v1");
}

pub use pb::*;

/// Where each node's workloads are kept: `/registry/endpoints/<ns>/<service>/<node>:<port>`
/// (a node may run several instances of one service, on different ports).
pub const ENDPOINTS_PREFIX: &str = "/registry/endpoints/";
/// Services declared by registry adapters: `/registry/services/<ns>/<name>`.
pub const SERVICES_PREFIX: &str = "/registry/services/";
/// What each node runs and reports: `/nodes/<name>`.
pub const NODES_PREFIX: &str = "/nodes/";

pub fn endpoint_key(namespace: &str, service: &str, node: &str, port: u16) -> String {
    format!("{ENDPOINTS_PREFIX}{namespace}/{service}/{node}:{port}")
}

/// `(namespace, service, node)` of an endpoint key.
pub fn parse_endpoint_key(key: &str) -> Option<(&str, &str, &str)> {
    let mut parts = key.strip_prefix(ENDPOINTS_PREFIX)?.split('/');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(ns), Some(svc), Some(id), None) if !ns.is_empty() && !svc.is_empty() => {
            let node = id.rsplit_once(':').map_or(id, |(n, _)| n);
            (!node.is_empty()).then_some((ns, svc, node))
        }
        _ => None,
    }
}

/// What a stream's peer holds, key → revision, and how to bring it up to a view.
#[derive(Debug, Clone, Default)]
pub struct PeerHolds {
    revisions: std::collections::HashMap<String, u64>,
}

impl PeerHolds {
    /// What the peer said in its hello.
    pub fn from_hello(held: &[pb::Held]) -> Self {
        PeerHolds {
            revisions: held.iter().map(|h| (h.key.clone(), h.revision)).collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.revisions.is_empty()
    }

    /// The push that turns what the peer holds into `view` (every item of the view the peer
    /// should have: key, revision, value), and records that it now holds it. `full`: send
    /// every item and have the peer drop the rest.
    pub fn diff_all<'a>(
        &mut self,
        view: impl Iterator<Item = (&'a str, u64, &'a [u8])>,
        full: bool,
    ) -> (Vec<Item>, Vec<String>) {
        let mut upserts = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (key, revision, value) in view {
            seen.insert(key);
            if full || self.revisions.get(key) != Some(&revision) {
                upserts.push(Item {
                    key: key.to_owned(),
                    revision,
                    value: value.to_vec(),
                });
            }
        }
        let removals: Vec<String> = if full {
            Vec::new()
        } else {
            self.revisions
                .keys()
                .filter(|k| !seen.contains(k.as_str()))
                .cloned()
                .collect()
        };
        if full {
            self.revisions.clear();
        }
        for k in &removals {
            self.revisions.remove(k);
        }
        for i in &upserts {
            self.revisions.insert(i.key.clone(), i.revision);
        }
        (upserts, removals)
    }

    /// The same for a few keys that changed: `now(key)` is the key's item in the view, or
    /// `None` when the peer should not have it (any more).
    pub fn diff_keys<'a>(
        &mut self,
        keys: impl Iterator<Item = &'a str>,
        now: impl Fn(&str) -> Option<(u64, Vec<u8>)>,
    ) -> (Vec<Item>, Vec<String>) {
        let mut upserts = Vec::new();
        let mut removals = Vec::new();
        for key in keys {
            match (now(key), self.revisions.get(key)) {
                (Some((rev, _)), Some(held)) if *held == rev => {}
                (Some((revision, value)), _) => {
                    self.revisions.insert(key.to_owned(), revision);
                    upserts.push(Item {
                        key: key.to_owned(),
                        revision,
                        value,
                    });
                }
                (None, Some(_)) => {
                    self.revisions.remove(key);
                    removals.push(key.to_owned());
                }
                (None, None) => {}
            }
        }
        (upserts, removals)
    }
}

/// A workload as the store keeps it under its endpoint key.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredEndpoint {
    pub node: String,
    pub address: String,
    pub port: u16,
    #[serde(default)]
    pub protocol: String,
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub service_account: String,
    #[serde(default)]
    pub locality: String,
    pub health: HealthStatus,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub health_output: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthStatus {
    Passing,
    Warning,
    Critical,
}

impl HealthStatus {
    /// Warning still takes traffic, as in Consul's default; critical does not.
    pub fn takes_traffic(self) -> bool {
        !matches!(self, HealthStatus::Critical)
    }

    pub fn from_pb(h: Health) -> Self {
        match h {
            Health::Passing => HealthStatus::Passing,
            Health::Warning => HealthStatus::Warning,
            Health::Critical | Health::Unknown => HealthStatus::Critical,
        }
    }
}

/// What a server records for each node, under `/nodes/<name>`.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatus {
    pub name: String,
    #[serde(default)]
    pub address: String,
    /// The server the node's stream is on ("" when none).
    #[serde(default)]
    pub server: String,
    pub connected: bool,
    /// The last version the node acknowledged.
    #[serde(default)]
    pub applied_version: String,
    /// The last version sent to it.
    #[serde(default)]
    pub sent_version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_nack: Option<NackRecord>,
    /// Seconds since the Unix epoch.
    #[serde(default)]
    pub last_seen: u64,
    #[serde(default)]
    pub workloads: Vec<String>,
    #[serde(default)]
    pub agent_version: String,
}

#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NackRecord {
    pub version: String,
    pub reason: String,
    pub at: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_gets_only_what_it_lacks_and_loses_what_went() {
        let mut held = PeerHolds::from_hello(&[
            pb::Held {
                key: "/a".into(),
                revision: 1,
            },
            pb::Held {
                key: "/b".into(),
                revision: 2,
            },
            pb::Held {
                key: "/gone".into(),
                revision: 3,
            },
        ]);
        let view: Vec<(&str, u64, &[u8])> =
            vec![("/a", 1, b"a"), ("/b", 5, b"b"), ("/new", 6, b"n")];
        let (up, rm) = held.diff_all(view.iter().copied(), false);
        let keys: Vec<_> = up.iter().map(|i| i.key.as_str()).collect();
        assert_eq!(keys.len(), 2);
        assert!(keys.contains(&"/b") && keys.contains(&"/new"));
        assert_eq!(rm, ["/gone"]);
        // Nothing differs any more.
        let (up, rm) = held.diff_all(view.iter().copied(), false);
        assert!(up.is_empty() && rm.is_empty());
        let (up, rm) = held.diff_keys(["/a", "/b", "/x"].into_iter(), |k| match k {
            "/a" => Some((9, b"a9".to_vec())),
            "/b" => None,
            _ => None,
        });
        assert_eq!((up.len(), up[0].revision), (1, 9));
        assert_eq!(rm, ["/b"]);
        let (up, _) = held.diff_all(view.iter().copied(), true);
        assert_eq!(up.len(), 3, "full sends everything");
    }

    #[test]
    fn endpoint_keys_round_trip_and_refuse_other_shapes() {
        let k = endpoint_key("shop", "reviews", "vm-1", 9080);
        assert_eq!(k, "/registry/endpoints/shop/reviews/vm-1:9080");
        assert_eq!(parse_endpoint_key(&k), Some(("shop", "reviews", "vm-1")));
        for bad in [
            "/registry/endpoints/shop/reviews",
            "/registry/endpoints/shop/reviews/vm-1/x",
            "/registry/endpoints//reviews/vm-1",
            "/registry/endpoints/shop/reviews/:80",
            "/config/virtualservice/a/b",
        ] {
            assert_eq!(parse_endpoint_key(bad), None, "{bad}");
        }
    }
}

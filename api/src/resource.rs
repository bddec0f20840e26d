//! Every kind the mesh stores, and how a resource is named and keyed in the store.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

use crate::error::{ConfigError, DocumentId};
use crate::meta::{Object, ObjectMeta};
use crate::networking::{
    DestinationRuleSpec, GatewaySpec, ServiceEntrySpec, SidecarSpec, VirtualServiceSpec,
    WorkloadEntrySpec, WorkloadGroupSpec,
};
use crate::security::{AuthorizationPolicySpec, PeerAuthenticationSpec, RequestAuthenticationSpec};
use crate::trellis::{RateLimitSpec, ServiceSpec};

pub const NETWORKING_GROUP: &str = "networking.istio.io";
pub const SECURITY_GROUP: &str = "security.istio.io";
pub const TRELLIS_GROUP: &str = "trellis.dev";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    VirtualService,
    DestinationRule,
    Gateway,
    ServiceEntry,
    WorkloadEntry,
    WorkloadGroup,
    Sidecar,
    PeerAuthentication,
    AuthorizationPolicy,
    RequestAuthentication,
    Service,
    RateLimit,
}

impl Kind {
    pub const ALL: [Kind; 12] = [
        Kind::VirtualService,
        Kind::DestinationRule,
        Kind::Gateway,
        Kind::ServiceEntry,
        Kind::WorkloadEntry,
        Kind::WorkloadGroup,
        Kind::Sidecar,
        Kind::PeerAuthentication,
        Kind::AuthorizationPolicy,
        Kind::RequestAuthentication,
        Kind::Service,
        Kind::RateLimit,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            Self::VirtualService => "VirtualService",
            Self::DestinationRule => "DestinationRule",
            Self::Gateway => "Gateway",
            Self::ServiceEntry => "ServiceEntry",
            Self::WorkloadEntry => "WorkloadEntry",
            Self::WorkloadGroup => "WorkloadGroup",
            Self::Sidecar => "Sidecar",
            Self::PeerAuthentication => "PeerAuthentication",
            Self::AuthorizationPolicy => "AuthorizationPolicy",
            Self::RequestAuthentication => "RequestAuthentication",
            Self::Service => "Service",
            Self::RateLimit => "RateLimit",
        }
    }

    pub fn group(&self) -> &'static str {
        match self {
            Self::VirtualService
            | Self::DestinationRule
            | Self::Gateway
            | Self::ServiceEntry
            | Self::WorkloadEntry
            | Self::WorkloadGroup
            | Self::Sidecar => NETWORKING_GROUP,
            Self::PeerAuthentication | Self::AuthorizationPolicy | Self::RequestAuthentication => {
                SECURITY_GROUP
            }
            Self::Service | Self::RateLimit => TRELLIS_GROUP,
        }
    }

    /// The API versions read for this kind, newest first.
    pub fn versions(&self) -> &'static [&'static str] {
        match self.group() {
            NETWORKING_GROUP => &["v1", "v1beta1", "v1alpha3"],
            SECURITY_GROUP => &["v1", "v1beta1"],
            _ => &["v1"],
        }
    }

    /// The `apiVersion` written when the mesh itself produces a resource.
    pub fn preferred_api_version(&self) -> String {
        format!("{}/{}", self.group(), self.versions()[0])
    }

    /// The lower-case name used in store keys: `/config/<kind>/<namespace>/<name>`.
    pub fn store_name(&self) -> String {
        self.as_str().to_ascii_lowercase()
    }

    /// Istio refuses these without a spec; for the security kinds an absent spec is meaningful
    /// (an empty AuthorizationPolicy denies everything), so they may omit it.
    pub fn requires_spec(&self) -> bool {
        self.group() != SECURITY_GROUP
    }

    /// The kind for an `apiVersion` and `kind` pair, if the mesh reads that pair.
    pub fn from_api(api_version: &str, kind: &str) -> Option<Kind> {
        let (group, version) = api_version.split_once('/')?;
        Self::ALL
            .into_iter()
            .find(|k| k.as_str() == kind && k.group() == group && k.versions().contains(&version))
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown kind {0:?}")]
pub struct UnknownKindName(pub String);

impl FromStr for Kind {
    type Err = UnknownKindName;

    /// Accepts `VirtualService` and the store's `virtualservice`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| UnknownKindName(s.to_owned()))
    }
}

/// A resource of any kind the mesh stores.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[expect(
    clippy::large_enum_variant,
    reason = "resources are few and long-lived; boxing every variant would only add indirection"
)]
#[serde(untagged)]
pub enum Resource {
    VirtualService(Object<VirtualServiceSpec>),
    DestinationRule(Object<DestinationRuleSpec>),
    Gateway(Object<GatewaySpec>),
    ServiceEntry(Object<ServiceEntrySpec>),
    WorkloadEntry(Object<WorkloadEntrySpec>),
    WorkloadGroup(Object<WorkloadGroupSpec>),
    Sidecar(Object<SidecarSpec>),
    PeerAuthentication(Object<PeerAuthenticationSpec>),
    AuthorizationPolicy(Object<AuthorizationPolicySpec>),
    RequestAuthentication(Object<RequestAuthenticationSpec>),
    Service(Object<ServiceSpec>),
    RateLimit(Object<RateLimitSpec>),
}

/// Calls `$body` with `$o` bound to the inner `Object<_>` whatever the kind.
macro_rules! with_object {
    ($res:expr, $o:ident => $body:expr) => {
        match $res {
            Resource::VirtualService($o) => $body,
            Resource::DestinationRule($o) => $body,
            Resource::Gateway($o) => $body,
            Resource::ServiceEntry($o) => $body,
            Resource::WorkloadEntry($o) => $body,
            Resource::WorkloadGroup($o) => $body,
            Resource::Sidecar($o) => $body,
            Resource::PeerAuthentication($o) => $body,
            Resource::AuthorizationPolicy($o) => $body,
            Resource::RequestAuthentication($o) => $body,
            Resource::Service($o) => $body,
            Resource::RateLimit($o) => $body,
        }
    };
}

impl Resource {
    pub fn kind(&self) -> Kind {
        match self {
            Self::VirtualService(_) => Kind::VirtualService,
            Self::DestinationRule(_) => Kind::DestinationRule,
            Self::Gateway(_) => Kind::Gateway,
            Self::ServiceEntry(_) => Kind::ServiceEntry,
            Self::WorkloadEntry(_) => Kind::WorkloadEntry,
            Self::WorkloadGroup(_) => Kind::WorkloadGroup,
            Self::Sidecar(_) => Kind::Sidecar,
            Self::PeerAuthentication(_) => Kind::PeerAuthentication,
            Self::AuthorizationPolicy(_) => Kind::AuthorizationPolicy,
            Self::RequestAuthentication(_) => Kind::RequestAuthentication,
            Self::Service(_) => Kind::Service,
            Self::RateLimit(_) => Kind::RateLimit,
        }
    }

    pub fn api_version(&self) -> &str {
        with_object!(self, o => &o.api_version)
    }

    pub fn metadata(&self) -> &ObjectMeta {
        with_object!(self, o => &o.metadata)
    }

    pub fn metadata_mut(&mut self) -> &mut ObjectMeta {
        with_object!(self, o => &mut o.metadata)
    }

    pub fn key(&self) -> ResourceKey {
        let meta = self.metadata();
        ResourceKey {
            kind: self.kind(),
            namespace: meta.namespace.clone(),
            name: meta.name.clone(),
        }
    }

    pub fn store_key(&self) -> String {
        self.key().store_key()
    }

    /// The stored form: the resource as JSON with absent optional fields left out.
    pub fn to_json(&self) -> String {
        let mut value = match serde_json::to_value(self) {
            Ok(v) => v,
            // Every field is a string, number, bool, list or string-keyed map, which
            // serde_json always represents; keep the type honest without a panic path.
            Err(e) => serde_json::Value::String(e.to_string()),
        };
        prune_nulls(&mut value);
        value.to_string()
    }

    /// Reads the stored form back. The same decoding as for operator input, so a stored
    /// resource can never hold something `apply` would have refused to parse.
    pub fn from_json(text: &str) -> Result<Resource, ConfigError> {
        let doc = Box::new(DocumentId::new("stored resource", 0));
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| ConfigError::Syntax {
                doc: doc.clone(),
                message: e.to_string(),
            })?;
        crate::document::decode_resource(*doc, value).map(|(r, _)| r)
    }
}

fn prune_nulls(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            map.retain(|_, v| !v.is_null());
            map.values_mut().for_each(prune_nulls);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(prune_nulls),
        _ => {}
    }
}

/// Names one resource: unique per kind within a namespace.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourceKey {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreKeyError {
    #[error("store key {0:?} is not of the form /config/<kind>/<namespace>/<name>")]
    Shape(String),
    #[error("store key {key:?}: {source}")]
    Kind {
        key: String,
        source: UnknownKindName,
    },
}

impl ResourceKey {
    pub fn new(kind: Kind, namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            kind,
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// `/config/<kind>/<namespace>/<name>`, kind in lower case.
    pub fn store_key(&self) -> String {
        format!(
            "/config/{}/{}/{}",
            self.kind.store_name(),
            self.namespace,
            self.name
        )
    }

    /// The prefix that lists a kind, or a kind in one namespace: `/config/<kind>/[<ns>/]`.
    /// It ends with `/` so that namespace `dev` does not also list `dev2`.
    pub fn store_prefix(kind: Kind, namespace: Option<&str>) -> String {
        match namespace {
            Some(ns) => format!("/config/{}/{ns}/", kind.store_name()),
            None => format!("/config/{}/", kind.store_name()),
        }
    }

    pub fn parse_store_key(key: &str) -> Result<Self, StoreKeyError> {
        let shape = || StoreKeyError::Shape(key.to_owned());
        let rest = key.strip_prefix("/config/").ok_or_else(shape)?;
        let mut parts = rest.split('/');
        let (Some(kind), Some(namespace), Some(name), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(shape());
        };
        if namespace.is_empty() || name.is_empty() {
            return Err(shape());
        }
        let kind = kind.parse().map_err(|source| StoreKeyError::Kind {
            key: key.to_owned(),
            source,
        })?;
        Ok(Self::new(kind, namespace, name))
    }
}

impl fmt::Display for ResourceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_keys_round_trip() {
        let key = ResourceKey::new(Kind::AuthorizationPolicy, "shop", "deny-all");
        assert_eq!(key.store_key(), "/config/authorizationpolicy/shop/deny-all");
        assert_eq!(ResourceKey::parse_store_key(&key.store_key()).unwrap(), key);
        assert_eq!(
            ResourceKey::store_prefix(Kind::Gateway, Some("shop")),
            "/config/gateway/shop/"
        );
        for bad in [
            "/config/gateway/shop",
            "/nodes/x",
            "/config/nope/a/b",
            "/config/gateway//b",
            "/config/gateway/a/b/c",
        ] {
            assert!(ResourceKey::parse_store_key(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn kinds_know_their_versions() {
        assert_eq!(
            Kind::from_api("networking.istio.io/v1alpha3", "Sidecar"),
            Some(Kind::Sidecar)
        );
        assert_eq!(
            Kind::from_api("security.istio.io/v1alpha3", "PeerAuthentication"),
            None
        );
        assert_eq!(
            Kind::from_api("trellis.dev/v1", "RateLimit"),
            Some(Kind::RateLimit)
        );
        assert_eq!(
            "virtualservice".parse::<Kind>().unwrap(),
            Kind::VirtualService
        );
        assert_eq!(Kind::Service.preferred_api_version(), "trellis.dev/v1");
    }
}

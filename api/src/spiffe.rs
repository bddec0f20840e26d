//! Workload identity: `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    trust_domain: String,
    namespace: String,
    service_account: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeIdError {
    #[error("{0:?} is not a SPIFFE id: it must start with spiffe://")]
    Scheme(String),
    #[error(
        "{0:?} is not a workload SPIFFE id: expected spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>"
    )]
    Shape(String),
    #[error(
        "invalid trust domain {0:?}: only lower-case letters, digits, '.', '-' and '_' are allowed"
    )]
    TrustDomain(String),
    #[error(
        "invalid {what} {value:?}: must be 1-63 lower-case letters, digits or '-', starting and ending with a letter or digit"
    )]
    Segment { what: &'static str, value: String },
}

impl SpiffeId {
    pub fn new(
        trust_domain: &str,
        namespace: &str,
        service_account: &str,
    ) -> Result<Self, SpiffeIdError> {
        if trust_domain.is_empty()
            || trust_domain.len() > 255
            || !trust_domain.chars().all(|c| {
                c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_')
            })
        {
            return Err(SpiffeIdError::TrustDomain(trust_domain.to_owned()));
        }
        check_segment("namespace", namespace)?;
        check_service_account(service_account)?;
        Ok(Self {
            trust_domain: trust_domain.to_owned(),
            namespace: namespace.to_owned(),
            service_account: service_account.to_owned(),
        })
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn service_account(&self) -> &str {
        &self.service_account
    }
}

fn check_segment(what: &'static str, value: &str) -> Result<(), SpiffeIdError> {
    let ok = !value.is_empty()
        && value.len() <= 63
        && value
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !value.starts_with('-')
        && !value.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(SpiffeIdError::Segment {
            what,
            value: value.to_owned(),
        })
    }
}

/// Kubernetes service account names are DNS subdomains, so they may contain dots.
fn check_service_account(value: &str) -> Result<(), SpiffeIdError> {
    let ok = !value.is_empty()
        && value.len() <= 253
        && value
            .split('.')
            .all(|label| check_segment("", label).is_ok());
    if ok {
        Ok(())
    } else {
        Err(SpiffeIdError::Segment {
            what: "service account",
            value: value.to_owned(),
        })
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let rest = s
            .strip_prefix("spiffe://")
            .ok_or_else(|| SpiffeIdError::Scheme(s.to_owned()))?;
        let parts: Vec<&str> = rest.split('/').collect();
        match parts.as_slice() {
            [td, "ns", ns, "sa", sa] => Self::new(td, ns, sa),
            _ => Err(SpiffeIdError::Shape(s.to_owned())),
        }
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

impl Serialize for SpiffeId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for SpiffeId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let id: SpiffeId = "spiffe://cluster.local/ns/default/sa/bookinfo-reviews"
            .parse()
            .unwrap();
        assert_eq!(id.trust_domain(), "cluster.local");
        assert_eq!(id.namespace(), "default");
        assert_eq!(id.service_account(), "bookinfo-reviews");
        assert_eq!(
            id.to_string(),
            "spiffe://cluster.local/ns/default/sa/bookinfo-reviews"
        );
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(serde_json::from_str::<SpiffeId>(&json).unwrap(), id);
    }

    #[test]
    fn refuses_malformed_ids_with_reasons() {
        assert!(matches!(
            "http://cluster.local/ns/a/sa/b".parse::<SpiffeId>(),
            Err(SpiffeIdError::Scheme(_))
        ));
        assert!(matches!(
            "spiffe://cluster.local/ns/a".parse::<SpiffeId>(),
            Err(SpiffeIdError::Shape(_))
        ));
        assert!(matches!(
            "spiffe://cluster.local/ns/a/sa/b/extra".parse::<SpiffeId>(),
            Err(SpiffeIdError::Shape(_))
        ));
        assert!(matches!(
            "spiffe://Cluster.Local/ns/a/sa/b".parse::<SpiffeId>(),
            Err(SpiffeIdError::TrustDomain(_))
        ));
        assert!(matches!(
            "spiffe://cluster.local/ns/-a/sa/b".parse::<SpiffeId>(),
            Err(SpiffeIdError::Segment {
                what: "namespace",
                ..
            })
        ));
        assert!(matches!(
            "spiffe://cluster.local/ns/a/sa/".parse::<SpiffeId>(),
            Err(SpiffeIdError::Segment { .. })
        ));
        assert!("spiffe:///ns/a/sa/b".parse::<SpiffeId>().is_err());
    }
}

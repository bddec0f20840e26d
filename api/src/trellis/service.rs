//! `Service`: a mesh service declared directly, for fleets with no Kubernetes or Consul to
//! discover it from.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct ServiceSpec {
    pub ports: Vec<ServicePort>,
    /// Labels of the workloads that back the service.
    pub labels: BTreeMap<String, String>,
    /// The identity its workloads run as: the `sa` of their SPIFFE id.
    pub service_account: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct ServicePort {
    pub name: String,
    pub number: u32,
    /// Same names as Istio ports (`HTTP`, `GRPC`, `TCP`, ...); empty means detect.
    pub protocol: String,
    /// The port the workload listens on, when it differs from `number`.
    pub target_port: u32,
}

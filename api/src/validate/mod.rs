//! Istio's validation rules (its `pkg/config/validation` and the checks in its CRD schemas),
//! ported so that what Istio refuses, Trellis refuses, with the same field paths.

mod destination_rule;
mod gateway;
pub(crate) mod names;
mod security;
mod service_entry;
mod sidecar;
mod trellis;
mod unenforced;
mod virtual_service;
mod workload;

use std::fmt;

use crate::error::Warning;
use crate::meta::ObjectMeta;
use crate::path::FieldPath;
use crate::resource::Resource;

/// A rule a resource breaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub path: FieldPath,
    pub message: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_root() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Everything validation found about one resource.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    pub errors: Vec<Violation>,
    pub warnings: Vec<Warning>,
}

impl Report {
    pub fn is_valid(&self) -> bool {
        self.errors.is_empty()
    }

    pub(crate) fn error(&mut self, path: &FieldPath, message: impl Into<String>) {
        self.errors.push(names::violation(path, message));
    }

    pub(crate) fn warn(&mut self, path: &FieldPath, message: impl Into<String>) {
        self.warnings.push(Warning {
            path: path.clone(),
            message: message.into(),
        });
    }

    pub(crate) fn check(&mut self, path: &FieldPath, result: Result<(), String>) {
        if let Err(message) = result {
            self.error(path, message);
        }
    }
}

/// Checks a resource against the mesh's rules.
pub fn validate(resource: &Resource) -> Report {
    let mut report = Report::default();
    validate_metadata(&mut report, resource.metadata());
    let spec = FieldPath::root().field("spec");
    let namespace = resource.metadata().namespace.as_str();
    let name = resource.metadata().name.as_str();
    let r = &mut report;
    match resource {
        Resource::VirtualService(o) => virtual_service::validate(r, &spec, namespace, &o.spec),
        Resource::DestinationRule(o) => destination_rule::validate(r, &spec, namespace, &o.spec),
        Resource::Gateway(o) => gateway::validate(r, &spec, name, &o.spec),
        Resource::ServiceEntry(o) => service_entry::validate(r, &spec, namespace, &o.spec),
        Resource::WorkloadEntry(o) => workload::validate_entry(r, &spec, &o.spec),
        Resource::WorkloadGroup(o) => workload::validate_group(r, &spec, &o.spec),
        Resource::Sidecar(o) => sidecar::validate(r, &spec, namespace, &o.spec),
        Resource::PeerAuthentication(o) => {
            security::validate_peer_authentication(r, &spec, &o.spec)
        }
        Resource::AuthorizationPolicy(o) => {
            security::validate_authorization_policy(r, &spec, namespace, &o.spec)
        }
        Resource::RequestAuthentication(o) => {
            security::validate_request_authentication(r, &spec, namespace, &o.spec)
        }
        Resource::Service(o) => trellis::validate_service(r, &spec, &o.spec),
        Resource::RateLimit(o) => trellis::validate_rate_limit(r, &spec, &o.spec),
    }
    unenforced::warn(&mut report, resource);
    report
}

fn validate_metadata(report: &mut Report, meta: &ObjectMeta) {
    let path = FieldPath::root().field("metadata");
    if meta.name.is_empty() {
        report.error(&path.field("name"), "Required value");
    } else if !names::is_dns1123_subdomain(&meta.name) {
        report.error(
            &path.field("name"),
            format!(
                "invalid name {:?}: must be lower-case letters, digits, '-' and '.', starting and ending with a letter or digit",
                meta.name
            ),
        );
    }
    if !names::is_lowercase_dns1123_label(&meta.namespace) {
        report.error(
            &path.field("namespace"),
            format!(
                "invalid namespace {:?}: must be a lower-case DNS label",
                meta.namespace
            ),
        );
    }
    names::validate_labels(report, &path.field("labels"), &meta.labels);
}

/// Durations where Istio wants at least a millisecond, at millisecond precision.
pub(crate) fn validate_duration_ms(
    report: &mut Report,
    path: &FieldPath,
    d: &crate::duration::Duration,
) {
    let d = d.as_std();
    if d < std::time::Duration::from_millis(1) {
        report.error(path, "duration must be greater than 1ms");
    } else if !d.subsec_nanos().is_multiple_of(1_000_000) {
        report.error(path, "only durations to ms precision are supported");
    }
}

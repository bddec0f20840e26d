//! WorkloadEntry and WorkloadGroup rules; ServiceEntry endpoints are WorkloadEntries too.

use super::Report;
use super::names::{self, validate_labels, validate_port};
use crate::networking::{ReadinessProbe, WorkloadEntrySpec, WorkloadGroupSpec};
use crate::path::FieldPath;

const UNIX_PREFIX: &str = "unix://";

pub(super) fn validate_entry(r: &mut Report, spec: &FieldPath, we: &WorkloadEntrySpec) {
    validate_workload(r, spec, we, None, true);
}

/// `service_ports` are the port names of the ServiceEntry an endpoint belongs to, if any.
pub(super) fn validate_workload(
    r: &mut Report,
    at: &FieldPath,
    we: &WorkloadEntrySpec,
    service_ports: Option<&[&str]>,
    allow_fqdn: bool,
) {
    let addr = we.address.as_str();
    if addr.is_empty() {
        if we.network.is_empty() {
            r.error(&at.field("address"), "Address is required");
        } else {
            r.warn(
                &at.field("address"),
                "address is unset with network set; this workload will only be reachable via cross-network gateways",
            );
        }
    } else if let Some(path) = addr.strip_prefix(UNIX_PREFIX) {
        if path.ends_with('/') {
            r.error(&at.field("address"), "UDS may not be a dir");
        } else if !path.starts_with('/') && !path.starts_with('@') {
            r.error(
                &at.field("address"),
                "UDS must be an absolute path or abstract socket",
            );
        }
        if !we.ports.is_empty() {
            r.error(&at.field("ports"), "UDS may not include ports");
        }
        if service_ports.is_some_and(|p| p.len() != 1) {
            r.error(
                &at.field("address"),
                "exactly 1 service port required for unix endpoints",
            );
        }
    } else if names::parse_ip(addr).is_none() {
        if !allow_fqdn {
            r.error(
                &at.field("address"),
                format!("endpoint address {addr:?} is not a valid IP address"),
            );
        } else if names::validate_fqdn(addr).is_err() {
            r.error(
                &at.field("address"),
                format!("endpoint address {addr:?} is not a valid FQDN or an IP address"),
            );
        }
    }
    for (name, port) in &we.ports {
        let p = at.field("ports").field(name);
        if let Some(known) = service_ports
            && !known.contains(&name.as_str())
        {
            r.error(
                &p,
                format!("endpoint port {name} is not defined by the service entry"),
            );
        }
        if let Err(e) = names::validate_port_name(name) {
            r.error(&p, format!("Invalid value: {e}"));
        }
        r.check(&p, validate_port(*port));
    }
    validate_labels(r, &at.field("labels"), &we.labels);
    if !we.service_account.is_empty() && !names::is_dns1123_subdomain(&we.service_account) {
        r.error(
            &at.field("serviceAccount"),
            format!("invalid service account name {:?}", we.service_account),
        );
    }
    if !we.locality.is_empty() && we.locality.split('/').any(str::is_empty) {
        r.error(
            &at.field("locality"),
            format!(
                "locality {:?} must be region/zone/subzone without empty parts",
                we.locality
            ),
        );
    }
}

pub(super) fn validate_group(r: &mut Report, spec: &FieldPath, wg: &WorkloadGroupSpec) {
    if let Some(meta) = &wg.metadata {
        validate_labels(r, &spec.field("metadata").field("labels"), &meta.labels);
    }
    if let Some(t) = &wg.template {
        // Each workload brings its own address when it registers, so the template need not.
        let mut template = t.clone();
        if template.address.is_empty() {
            template.address = "0.0.0.0".to_owned();
        }
        validate_workload(r, &spec.field("template"), &template, None, true);
    }
    if let Some(p) = &wg.probe {
        validate_probe(r, &spec.field("probe"), p);
    }
}

fn validate_probe(r: &mut Report, at: &FieldPath, p: &ReadinessProbe) {
    for (field, v) in [
        ("initialDelaySeconds", p.initial_delay_seconds),
        ("timeoutSeconds", p.timeout_seconds),
        ("periodSeconds", p.period_seconds),
        ("successThreshold", p.success_threshold),
        ("failureThreshold", p.failure_threshold),
    ] {
        if v < 0 {
            r.error(&at.field(field), format!("{field} must be non-negative"));
        }
    }
    let methods = [
        p.http_get.is_some(),
        p.tcp_socket.is_some(),
        p.exec.is_some(),
        p.grpc.is_some(),
    ];
    match methods.iter().filter(|b| **b).count() {
        0 => r.error(at, "probe must set one of httpGet, tcpSocket, exec or grpc"),
        1 => {}
        _ => r.error(
            at,
            "probe may set only one of httpGet, tcpSocket, exec or grpc",
        ),
    }
    if let Some(h) = &p.http_get {
        let hp = at.field("httpGet");
        r.check(&hp.field("port"), validate_port(h.port));
        if !h.scheme.is_empty() && h.scheme != "HTTP" && h.scheme != "HTTPS" {
            r.error(
                &hp.field("scheme"),
                "httpGet.scheme must be one of \"HTTP\", \"HTTPS\"",
            );
        }
        for (i, header) in h.http_headers.iter().enumerate() {
            let name = &header.name;
            let ok = !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            if !ok {
                r.error(
                    &hp.field("httpHeaders").index(i).field("name"),
                    format!("{name:?} should match '^[-_A-Za-z0-9]+$'"),
                );
            }
        }
    }
    if let Some(t) = &p.tcp_socket {
        r.check(&at.field("tcpSocket").field("port"), validate_port(t.port));
    }
    if let Some(e) = &p.exec
        && e.command.is_empty()
    {
        r.error(
            &at.field("exec").field("command"),
            "exec.command is required",
        );
    }
    if let Some(g) = &p.grpc {
        r.check(&at.field("grpc").field("port"), validate_port(g.port));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn run(we: WorkloadEntrySpec) -> Vec<String> {
        let mut r = Report::default();
        validate_entry(&mut r, &FieldPath::from("spec"), &we);
        r.errors.iter().map(|e| e.to_string()).collect()
    }

    #[test]
    fn unix_addresses() {
        let uds = |a: &str| WorkloadEntrySpec {
            address: a.into(),
            ..Default::default()
        };
        assert!(run(uds("unix:///var/run/app.sock")).is_empty());
        assert!(run(uds("unix://@abstract")).is_empty());
        assert!(run(uds("unix:///dir/"))[0].contains("UDS may not be a dir"));
        assert!(run(uds("unix://relative"))[0].contains("absolute path or abstract socket"));
    }

    #[test]
    fn address_ports_and_names() {
        assert!(run(WorkloadEntrySpec::default())[0].contains("Address is required"));
        let mut ports = BTreeMap::new();
        ports.insert("@".to_owned(), 80);
        ports.insert("http".to_owned(), 99999);
        let errs = run(WorkloadEntrySpec {
            address: "1.1.1.1".into(),
            ports,
            ..Default::default()
        });
        assert!(
            errs.iter()
                .any(|e| e.starts_with("spec.ports[\"@\"]: Invalid value")),
            "{errs:?}"
        );
        assert!(
            errs.iter()
                .any(|e| e.starts_with("spec.ports.http: port must be between 1-65535")),
            "{errs:?}"
        );
        assert!(
            run(WorkloadEntrySpec {
                address: "not a host!".into(),
                ..Default::default()
            })[0]
                .contains("not a valid FQDN")
        );
    }
}

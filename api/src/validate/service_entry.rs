//! ServiceEntry rules.

use super::names::{
    self, Protocol, validate_export_to, validate_ip_subnet, validate_port, validate_port_name,
    validate_protocol, validate_wildcard_domain,
};
use super::{Report, workload};
use crate::networking::{Resolution, ServiceEntrySpec};
use crate::path::FieldPath;

pub(super) fn validate(r: &mut Report, spec: &FieldPath, namespace: &str, se: &ServiceEntrySpec) {
    if se.workload_selector.is_some() && !se.endpoints.is_empty() {
        r.error(spec, "only one of WorkloadSelector or Endpoints can be set");
    }
    if let Some(sel) = &se.workload_selector {
        names::validate_selector_labels(
            r,
            &spec.field("workloadSelector").field("labels"),
            &sel.labels,
        );
    }
    if se.hosts.is_empty() {
        r.error(&spec.field("hosts"), "Required value");
    }
    for (i, host) in se.hosts.iter().enumerate() {
        let at = spec.field("hosts").index(i);
        if host == "*" {
            r.error(&at, "hostname cannot be wildcard");
        } else {
            r.check(&at, validate_wildcard_domain(host));
        }
    }
    let resolution = se.resolution.unwrap_or_default();
    let mut cidr_found = false;
    for (i, address) in se.addresses.iter().enumerate() {
        cidr_found |= address.contains('/');
        r.check(
            &spec.field("addresses").index(i),
            validate_ip_subnet(address),
        );
    }
    if cidr_found && !matches!(resolution, Resolution::None | Resolution::Static) {
        r.error(
            &spec.field("addresses"),
            "CIDR addresses are allowed only for NONE/STATIC resolution types",
        );
    }

    let mut names_seen: Vec<&str> = Vec::new();
    let mut numbers_seen: Vec<u32> = Vec::new();
    for (i, port) in se.ports.iter().enumerate() {
        let at = spec.field("ports").index(i);
        if names_seen.contains(&port.name.as_str()) {
            r.error(
                &at.field("name"),
                format!("Duplicate value: port name {:?}", port.name),
            );
        }
        names_seen.push(&port.name);
        if numbers_seen.contains(&port.number) {
            r.error(&at.field("number"), "port number cannot be duplicated");
        }
        numbers_seen.push(port.number);
        if port.target_port != 0 {
            r.check(&at.field("targetPort"), validate_port(port.target_port));
        }
        r.check(&at.field("name"), validate_port_name(&port.name));
        r.check(&at.field("protocol"), validate_protocol(&port.protocol));
        r.check(&at.field("number"), validate_port(port.number));
    }

    let endpoints = spec.field("endpoints");
    match resolution {
        Resolution::None => {
            if !se.endpoints.is_empty() {
                r.error(&endpoints, "NONE mode cannot set endpoints");
            }
            if se.workload_selector.is_some() {
                r.warn(
                    &spec.field("workloadSelector"),
                    "workloadSelector should not be set when resolution mode is NONE",
                );
            }
        }
        Resolution::Static => {
            for (i, ep) in se.endpoints.iter().enumerate() {
                workload::validate_workload(r, &endpoints.index(i), ep, Some(&names_seen), false);
            }
        }
        Resolution::Dns | Resolution::DnsRoundRobin => {
            if se.endpoints.is_empty() {
                for (i, host) in se.hosts.iter().enumerate() {
                    if host != "*" && names::validate_fqdn(host).is_err() {
                        r.error(
                            &spec.field("hosts").index(i),
                            format!(
                                "hosts must be FQDN if no endpoints are provided for resolution mode {}",
                                resolution.as_str()
                            ),
                        );
                    }
                }
            }
            if resolution == Resolution::DnsRoundRobin && se.endpoints.len() > 1 {
                r.error(
                    &endpoints,
                    "DNS_ROUND_ROBIN mode cannot have multiple endpoints",
                );
            }
            for (i, ep) in se.endpoints.iter().enumerate() {
                workload::validate_workload(r, &endpoints.index(i), ep, Some(&names_seen), true);
            }
            let tcp = se
                .ports
                .iter()
                .any(|p| Protocol::parse(&p.protocol).is_tcp());
            if !se.addresses.is_empty() && tcp && se.hosts.len() > 1 {
                r.warn(
                    &spec.field("hosts"),
                    "service entry can not have more than one host specified simultaneously with address and tcp port",
                );
            }
        }
        Resolution::DynamicDns => {
            if !se.endpoints.is_empty() {
                r.error(&endpoints, "DYNAMIC_DNS mode cannot set endpoints");
            }
            if se.hosts.iter().any(|h| !h.starts_with("*.")) {
                r.error(
                    &spec.field("hosts"),
                    "DYNAMIC_DNS mode requires wildcard hosts",
                );
            }
        }
    }

    if resolution != Resolution::None && se.hosts.len() > 1 {
        let distinguishable = se.ports.iter().all(|p| {
            let protocol = Protocol::parse(&p.protocol);
            protocol.is_http() || protocol.is_tls()
        });
        if !distinguishable {
            r.warn(
                &spec.field("hosts"),
                "multiple hosts provided with non-HTTP, non-TLS ports",
            );
        }
    }
    validate_export_to(r, &spec.field("exportTo"), namespace, &se.export_to, true);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::networking::{Port, WorkloadEntrySpec};

    fn run(se: &ServiceEntrySpec) -> Vec<String> {
        let mut r = Report::default();
        validate(&mut r, &FieldPath::from("spec"), "default", se);
        r.errors.iter().map(|e| e.to_string()).collect()
    }

    fn port(name: &str, number: u32) -> Port {
        Port {
            name: name.into(),
            number,
            ..Default::default()
        }
    }

    #[test]
    fn ports_must_be_unique_and_in_range() {
        let errs = run(&ServiceEntrySpec {
            hosts: vec!["example.com".into()],
            ports: vec![port("a", 1), port("a", 1), port("b", 99999)],
            ..Default::default()
        });
        let joined = errs.join("\n");
        assert!(joined.contains("spec.ports[1].name: Duplicate value"));
        assert!(joined.contains("spec.ports[1].number: port number cannot be duplicated"));
        assert!(joined.contains("spec.ports[2].number: port must be between 1-65535"));
    }

    #[test]
    fn resolution_rules() {
        let ep = |a: &str| WorkloadEntrySpec {
            address: a.into(),
            ..Default::default()
        };
        let base = ServiceEntrySpec {
            hosts: vec!["example.com".into()],
            ..Default::default()
        };
        let errs = run(&ServiceEntrySpec {
            endpoints: vec![ep("1.2.3.4")],
            ..base.clone()
        });
        assert!(errs[0].contains("NONE mode cannot set endpoints"));
        let errs = run(&ServiceEntrySpec {
            resolution: Some(Resolution::DnsRoundRobin),
            endpoints: vec![ep("a.example.com"), ep("b.example.com")],
            ..base.clone()
        });
        assert!(errs[0].contains("cannot have multiple endpoints"));
        let errs = run(&ServiceEntrySpec {
            resolution: Some(Resolution::Static),
            endpoints: vec![ep("a.example.com")],
            ..base.clone()
        });
        assert!(errs[0].contains("is not a valid IP address"), "{errs:?}");
        let errs = run(&ServiceEntrySpec {
            resolution: Some(Resolution::Dns),
            addresses: vec!["10.0.0.0/8".into()],
            ..base
        });
        assert!(errs[0].contains("CIDR addresses are allowed only"));
        assert!(run(&ServiceEntrySpec::default())[0].contains("spec.hosts: Required value"));
    }
}

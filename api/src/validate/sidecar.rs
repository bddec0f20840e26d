//! Sidecar rules.

use super::Report;
use super::destination_rule::validate_connection_pool;
use super::gateway::{validate_namespace_slash_host, validate_server_tls};
use super::names::{
    self, Protocol, validate_ip, validate_port, validate_port_name, validate_protocol,
    validate_unix_address,
};
use super::virtual_service::validate_destination;
use crate::networking::{CaptureMode, OutboundMode, Port, ServerTlsMode, SidecarSpec};
use crate::path::FieldPath;

const UNIX_PREFIX: &str = "unix://";

pub(super) fn validate(r: &mut Report, spec: &FieldPath, namespace: &str, sc: &SidecarSpec) {
    if let Some(sel) = &sc.workload_selector {
        names::validate_selector_labels(
            r,
            &spec.field("workloadSelector").field("labels"),
            &sel.labels,
        );
    }
    if sc.egress.is_empty()
        && sc.ingress.is_empty()
        && sc.outbound_traffic_policy.is_none()
        && sc.inbound_connection_pool.is_none()
    {
        r.error(spec, "sidecar: empty configuration provided");
    }

    let mut ports: Vec<u32> = Vec::new();
    for (i, ing) in sc.ingress.iter().enumerate() {
        let at = spec.field("ingress").index(i);
        let Some(port) = &ing.port else {
            r.error(
                &at.field("port"),
                "sidecar: port is required for ingress listeners",
            );
            continue;
        };
        if port.target_port > 0 {
            r.warn(
                &at.field("port").field("targetPort"),
                "targetPort has no impact on Sidecars",
            );
        }
        validate_listener_port(r, &at.field("port"), port);
        if !ing.bind.is_empty() {
            r.check(&at.field("bind"), validate_ip(&ing.bind));
        }
        if ports.contains(&port.number) {
            r.error(
                &at.field("port"),
                "sidecar: ports on IP bound listeners must be unique",
            );
        }
        ports.push(port.number);
        if !ing.default_endpoint.is_empty() {
            validate_default_endpoint(r, &at.field("defaultEndpoint"), &ing.default_endpoint);
        }
        if let Some(tls) = &ing.tls {
            let tp = at.field("tls");
            if !tls.subject_alt_names.is_empty() {
                r.error(
                    &tp.field("subjectAltNames"),
                    "sidecar: subjectAltNames is not supported in ingress tls",
                );
            }
            if tls.https_redirect {
                r.error(
                    &tp.field("httpsRedirect"),
                    "sidecar: httpsRedirect is not supported",
                );
            }
            if !tls.credential_name.is_empty() {
                r.error(
                    &tp.field("credentialName"),
                    "sidecar: credentialName is not currently supported",
                );
            }
            if matches!(
                tls.mode,
                ServerTlsMode::IstioMutual | ServerTlsMode::AutoPassthrough
            ) {
                r.error(&tp.field("mode"), "configuration is invalid: cannot set mode to ISTIO_MUTUAL or AUTO_PASSTHROUGH in sidecar ingress tls");
            }
            if !Protocol::parse(&port.protocol).is_tls() {
                r.error(
                    &tp,
                    "server cannot have TLS settings for non HTTPS/TLS ports",
                );
            }
            validate_server_tls(r, &tp, tls);
        }
        if let Some(cp) = &ing.connection_pool {
            validate_connection_pool(r, &at.field("connectionPool"), cp);
        }
    }

    let mut ports: Vec<u32> = Vec::new();
    let mut sockets: Vec<&str> = Vec::new();
    let mut catch_all_found = false;
    for (i, eg) in sc.egress.iter().enumerate() {
        let at = spec.field("egress").index(i);
        match &eg.port {
            None => {
                // Only one listener may catch everything else, and it must come last.
                if catch_all_found {
                    r.error(
                        &at,
                        "sidecar: egress can have only one listener with empty port",
                    );
                    continue;
                }
                if i == sc.egress.len() - 1 {
                    catch_all_found = true;
                } else {
                    r.error(&at, "sidecar: the egress listener with empty port should be the last listener in the list");
                }
            }
            Some(port) => {
                let pp = at.field("port");
                if port.target_port > 0 {
                    r.warn(
                        &pp.field("targetPort"),
                        "targetPort has no impact on Sidecars",
                    );
                }
                if !port.name.is_empty() {
                    r.check(&pp.field("name"), validate_port_name(&port.name));
                }
                r.check(&pp.field("protocol"), validate_protocol(&port.protocol));
                if port.number == 0 {
                    match eg.bind.strip_prefix(UNIX_PREFIX) {
                        None => r.error(&at.field("bind"), "sidecar: ports with 0 value must have a unix domain socket bind address"),
                        Some(path) => r.check(&at.field("bind"), validate_unix_address(path)),
                    }
                    if !matches!(eg.capture_mode, CaptureMode::Default | CaptureMode::None) {
                        r.error(&at.field("captureMode"), "sidecar: captureMode must be DEFAULT/NONE for unix domain socket listeners");
                    }
                    if sockets.contains(&eg.bind.as_str()) {
                        r.error(
                            &at.field("bind"),
                            "sidecar: unix domain socket values for listeners must be unique",
                        );
                    }
                    sockets.push(&eg.bind);
                } else {
                    r.check(&pp.field("number"), validate_port(port.number));
                    if !eg.bind.is_empty() {
                        r.check(&at.field("bind"), validate_ip(&eg.bind));
                    }
                    if ports.contains(&port.number) {
                        r.error(&pp, "sidecar: ports on IP bound listeners must be unique");
                    }
                    ports.push(port.number);
                }
            }
        }
        if eg.hosts.is_empty() {
            r.error(
                &at.field("hosts"),
                "sidecar: egress listener must contain at least one host",
            );
        }
        let mut seen: Vec<(String, &str)> = Vec::new();
        for (j, host) in eg.hosts.iter().enumerate() {
            let hp = at.field("hosts").index(j);
            if let Some((ns, svc)) = host.split_once('/') {
                let ns = if ns == "." {
                    namespace.to_owned()
                } else {
                    ns.to_owned()
                };
                let dup = seen
                    .iter()
                    .any(|(n, s)| *n == ns && (*s == svc || *s == "*" || svc == "*"));
                if dup {
                    r.warn(&hp, format!("duplicated egress host: {host}"));
                }
                seen.push((ns, svc));
            }
            validate_namespace_slash_host(r, &hp, host, false);
        }
    }

    if let Some(tp) = &sc.outbound_traffic_policy
        && let Some(proxy) = &tp.egress_proxy
    {
        let at = spec.field("outboundTrafficPolicy").field("egressProxy");
        if tp.mode != OutboundMode::AllowAny {
            r.error(&at, "sidecar: egress_proxy must be set only with ALLOW_ANY outbound_traffic_policy mode");
        }
        r.check(&at.field("host"), names::validate_fqdn(&proxy.host));
        if proxy.port.is_none() {
            r.error(
                &at.field("port"),
                "sidecar: egress_proxy port must be non-nil",
            );
        }
        validate_destination(r, &at, proxy);
    }
    if let Some(cp) = &sc.inbound_connection_pool {
        validate_connection_pool(r, &spec.field("inboundConnectionPool"), cp);
    }
}

fn validate_listener_port(r: &mut Report, at: &FieldPath, port: &Port) {
    if !port.name.is_empty() {
        r.check(&at.field("name"), validate_port_name(&port.name));
    }
    r.check(&at.field("protocol"), validate_protocol(&port.protocol));
    r.check(&at.field("number"), validate_port(port.number));
}

/// `127.0.0.1:<port>`, `0.0.0.0:<port>`, `[::1]:<port>`, `[::]:<port>`, `:<port>` or a socket.
fn validate_default_endpoint(r: &mut Report, at: &FieldPath, endpoint: &str) {
    if let Some(path) = endpoint.strip_prefix(UNIX_PREFIX) {
        r.check(at, validate_unix_address(path));
        return;
    }
    let Some((host, port)) = endpoint.rsplit_once(':') else {
        r.error(
            at,
            format!("sidecar: defaultEndpoint {endpoint:?} is missing a port"),
        );
        return;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if !["", "127.0.0.1", "0.0.0.0", "::1", "::"].contains(&host) {
        r.error(
            at,
            "sidecar: defaultEndpoint must be of form 127.0.0.1:<port>,0.0.0.0:<port>,[::1]:port,[::]:port,unix://filepath, or unset",
        );
    }
    match port.parse::<u32>() {
        Ok(p) => r.check(at, validate_port(p)),
        Err(_) => r.error(
            at,
            format!("sidecar: defaultEndpoint port ({port}) is not a number"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::networking::{EgressListener, IngressListener};

    fn run(sc: &SidecarSpec) -> Vec<String> {
        let mut r = Report::default();
        validate(&mut r, &FieldPath::from("spec"), "default", sc);
        r.errors.iter().map(|e| e.to_string()).collect()
    }

    #[test]
    fn empty_sidecar_is_refused() {
        assert!(run(&SidecarSpec::default())[0].contains("empty configuration"));
    }

    #[test]
    fn egress_catch_all_must_be_last() {
        let catch_all = EgressListener {
            hosts: vec!["*/*".into()],
            ..Default::default()
        };
        let errs = run(&SidecarSpec {
            egress: vec![catch_all.clone(), catch_all],
            ..Default::default()
        });
        assert!(errs[0].contains("should be the last listener"), "{errs:?}");
    }

    #[test]
    fn ingress_needs_port_and_good_endpoint() {
        let errs = run(&SidecarSpec {
            ingress: vec![
                IngressListener::default(),
                IngressListener {
                    port: Some(Port {
                        number: 80,
                        protocol: "HTTP".into(),
                        name: "http".into(),
                        target_port: 0,
                    }),
                    default_endpoint: "10.0.0.1:abc".into(),
                    ..Default::default()
                },
            ],
            ..Default::default()
        });
        let joined = errs.join("\n");
        assert!(joined.contains("port is required for ingress listeners"));
        assert!(joined.contains("defaultEndpoint must be of form"));
        assert!(joined.contains("is not a number"));
    }

    #[test]
    fn egress_hosts_need_namespace() {
        let errs = run(&SidecarSpec {
            egress: vec![EgressListener {
                hosts: vec!["reviews".into()],
                ..Default::default()
            }],
            ..Default::default()
        });
        assert_eq!(
            errs,
            vec!["spec.egress[0].hosts[0]: host must be of form namespace/dnsName"]
        );
    }
}

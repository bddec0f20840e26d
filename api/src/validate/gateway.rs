//! Gateway rules, and the server-side TLS rules Sidecar ingress shares.

use super::Report;
use super::names::{self, Protocol, validate_port, validate_wildcard_domain};
use crate::networking::{GatewaySpec, Port, Server, ServerTlsMode, ServerTlsSettings};
use crate::path::FieldPath;

pub(super) fn validate(r: &mut Report, spec: &FieldPath, name: &str, gw: &GatewaySpec) {
    // Gateways are referred to as `<namespace>/<name>`, so a dot in the name is ambiguous.
    if !names::is_dns1123_label(name) {
        r.error(
            &FieldPath::from("metadata.name"),
            format!("invalid gateway name: {name:?}"),
        );
    }
    if gw.servers.is_empty() {
        r.error(
            &spec.field("servers"),
            "gateway must have at least one server",
        );
    }
    let mut port_names: Vec<&str> = Vec::new();
    for (i, server) in gw.servers.iter().enumerate() {
        let at = spec.field("servers").index(i);
        validate_server(r, &at, server);
        if let Some(port) = &server.port {
            if port_names.contains(&port.name.as_str()) {
                r.error(
                    &at.field("port").field("name"),
                    format!(
                        "port names in servers must be unique: duplicate name {}",
                        port.name
                    ),
                );
            }
            port_names.push(&port.name);
        }
    }
    names::validate_selector_labels(r, &spec.field("selector"), &gw.selector);
}

fn validate_server(r: &mut Report, at: &FieldPath, server: &Server) {
    if server.hosts.is_empty() {
        r.error(
            &at.field("hosts"),
            "server config must contain at least one host",
        );
    }
    for (i, host) in server.hosts.iter().enumerate() {
        validate_namespace_slash_host(r, &at.field("hosts").index(i), host, true);
    }
    let port_ok = match &server.port {
        None => {
            r.error(&at.field("port"), "port is required");
            false
        }
        Some(port) => validate_server_port(r, &at.field("port"), port),
    };
    if !server.bind.is_empty()
        && names::parse_ip(&server.bind).is_none()
        && !server.bind.starts_with("unix://")
    {
        r.error(
            &at.field("bind"),
            format!("{} is not a valid IP or unix:// address", server.bind),
        );
    }
    if let Some(tls) = &server.tls {
        validate_server_tls(r, &at.field("tls"), tls);
    }
    if port_ok && let Some(port) = &server.port {
        let protocol = Protocol::parse(&port.protocol);
        match &server.tls {
            None if protocol.is_tls() => r.error(
                &at.field("tls"),
                "server must have TLS settings for HTTPS/TLS protocols",
            ),
            Some(tls) if !protocol.is_tls() => {
                // A plain HTTP server may carry TLS settings only to redirect to HTTPS.
                let redirect_only = tls.https_redirect
                    && tls.mode == ServerTlsMode::Passthrough
                    && tls.ca_certificates.is_empty()
                    && tls.private_key.is_empty()
                    && tls.server_certificate.is_empty();
                if !protocol.is_http() {
                    r.error(
                        &at.field("tls"),
                        "server cannot have TLS settings for non HTTPS/TLS ports",
                    );
                } else if !redirect_only {
                    r.error(
                        &at.field("tls"),
                        "server cannot have TLS settings for plain text HTTP ports",
                    );
                }
            }
            _ => {}
        }
    }
}

fn validate_server_port(r: &mut Report, at: &FieldPath, port: &Port) -> bool {
    let before = r.errors.len();
    if Protocol::parse(&port.protocol) == Protocol::Unsupported {
        r.error(
            &at.field("protocol"),
            format!(
                "invalid protocol {:?}, supported protocols are HTTP, HTTP2, GRPC, GRPC-WEB, MONGO, REDIS, MYSQL, TCP",
                port.protocol
            ),
        );
    }
    if port.number > 0 {
        r.check(&at.field("number"), validate_port(port.number));
    }
    if port.target_port != 0 {
        r.warn(
            &at.field("targetPort"),
            "targetPort is deprecated and has no effect on gateways",
        );
    }
    if port.name.is_empty() {
        r.error(&at.field("name"), "port name must be set");
    }
    r.errors.len() == before
}

/// `namespace/host` as gateways and sidecars name hosts; gateways still accept a bare host.
pub(super) fn validate_namespace_slash_host(
    r: &mut Report,
    at: &FieldPath,
    host: &str,
    is_gateway: bool,
) {
    let Some((ns, dns)) = host.split_once('/') else {
        if is_gateway {
            r.check(at, validate_wildcard_domain(host));
        } else {
            r.error(at, "host must be of form namespace/dnsName");
        }
        return;
    };
    if ns.is_empty() || dns.is_empty() {
        r.error(
            at,
            "config namespace and dnsName in host entry cannot be empty",
        );
        return;
    }
    let special = if is_gateway {
        &["*", "."][..]
    } else {
        &["*", ".", "~"][..]
    };
    if !special.contains(&ns) && !names::is_dns1123_label(ns) {
        let owner = if is_gateway { "gateway" } else { "sidecar" };
        r.error(at, format!("invalid namespace value {ns:?} in {owner}"));
    }
    r.check(at, validate_wildcard_domain(dns));
}

pub(super) fn validate_server_tls(r: &mut Report, at: &FieldPath, tls: &ServerTlsSettings) {
    if tls.min_protocol_version > tls.max_protocol_version
        && tls.max_protocol_version != Default::default()
    {
        r.error(at, "TLS min version cannot be greater than max version");
    }
    if tls.mode == ServerTlsMode::IstioMutual {
        for (field, value, what) in [
            (
                "serverCertificate",
                &tls.server_certificate,
                "server certificate",
            ),
            ("privateKey", &tls.private_key, "private key"),
            ("caCertificates", &tls.ca_certificates, "CA bundle"),
        ] {
            if !value.is_empty() {
                r.error(
                    &at.field(field),
                    format!("ISTIO_MUTUAL TLS cannot have associated {what}"),
                );
            }
        }
        if !tls.credential_name.is_empty() {
            r.error(
                &at.field("credentialName"),
                "ISTIO_MUTUAL TLS cannot have associated credentialName",
            );
        }
        return;
    }
    let needs_certs = matches!(
        tls.mode,
        ServerTlsMode::Simple | ServerTlsMode::Mutual | ServerTlsMode::OptionalMutual
    );
    if !needs_certs {
        return;
    }
    let sources = [
        !tls.credential_name.is_empty(),
        !tls.credential_names.is_empty(),
        !tls.tls_certificates.is_empty(),
        !tls.server_certificate.is_empty() || !tls.private_key.is_empty(),
    ];
    if sources.iter().filter(|b| **b).count() > 1 {
        r.error(
            at,
            "only one of credentialName, credentialNames, tlsCertificates or serverCertificate/privateKey may be set",
        );
    }
    // Certificates fetched by name (SDS) carry their own key and CA.
    if !tls.credential_name.is_empty() || !tls.credential_names.is_empty() {
        return;
    }
    let mode = match tls.mode {
        ServerTlsMode::Simple => "SIMPLE",
        ServerTlsMode::Mutual => "MUTUAL",
        _ => "OPTIONAL_MUTUAL",
    };
    for (i, cert) in tls.tls_certificates.iter().enumerate() {
        let cp = at.field("tlsCertificates").index(i);
        if cert.server_certificate.is_empty() {
            r.error(
                &cp.field("serverCertificate"),
                format!("{mode} TLS requires a server certificate"),
            );
        }
        if cert.private_key.is_empty() {
            r.error(
                &cp.field("privateKey"),
                format!("{mode} TLS requires a private key"),
            );
        }
    }
    if tls.tls_certificates.is_empty() {
        if tls.server_certificate.is_empty() {
            r.error(
                &at.field("serverCertificate"),
                format!("{mode} TLS requires a server certificate"),
            );
        }
        if tls.private_key.is_empty() {
            r.error(
                &at.field("privateKey"),
                format!("{mode} TLS requires a private key"),
            );
        }
    }
    if tls.mode != ServerTlsMode::Simple
        && tls.ca_certificates.is_empty()
        && tls
            .tls_certificates
            .iter()
            .all(|c| c.ca_certificates.is_empty())
    {
        r.error(
            &at.field("caCertificates"),
            format!("{mode} TLS requires a client CA bundle"),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(protocol: &str, tls: Option<ServerTlsSettings>) -> Server {
        Server {
            port: Some(Port {
                number: 443,
                protocol: protocol.into(),
                name: "p".into(),
                target_port: 0,
            }),
            hosts: vec!["*.example.com".into()],
            tls,
            ..Default::default()
        }
    }

    fn run(name: &str, gw: &GatewaySpec) -> Vec<String> {
        let mut r = Report::default();
        validate(&mut r, &FieldPath::from("spec"), name, gw);
        r.errors.iter().map(|e| e.to_string()).collect()
    }

    #[test]
    fn https_needs_tls_and_simple_needs_certs() {
        let errs = run(
            "gw",
            &GatewaySpec {
                servers: vec![server("HTTPS", None)],
                ..Default::default()
            },
        );
        assert_eq!(
            errs,
            vec!["spec.servers[0].tls: server must have TLS settings for HTTPS/TLS protocols"]
        );
        let errs = run(
            "gw",
            &GatewaySpec {
                servers: vec![server(
                    "HTTPS",
                    Some(ServerTlsSettings {
                        mode: ServerTlsMode::Simple,
                        ..Default::default()
                    }),
                )],
                ..Default::default()
            },
        );
        assert_eq!(errs.len(), 2, "{errs:?}");
        let errs = run(
            "gw",
            &GatewaySpec {
                servers: vec![server(
                    "HTTPS",
                    Some(ServerTlsSettings {
                        mode: ServerTlsMode::Simple,
                        credential_name: "cert".into(),
                        ..Default::default()
                    }),
                )],
                ..Default::default()
            },
        );
        assert!(errs.is_empty(), "{errs:?}");
    }

    #[test]
    fn http_server_may_only_redirect() {
        let redirect = ServerTlsSettings {
            https_redirect: true,
            ..Default::default()
        };
        assert!(
            run(
                "gw",
                &GatewaySpec {
                    servers: vec![server("HTTP", Some(redirect))],
                    ..Default::default()
                }
            )
            .is_empty()
        );
        let errs = run(
            "gw",
            &GatewaySpec {
                servers: vec![server("TCP", Some(ServerTlsSettings::default()))],
                ..Default::default()
            },
        );
        assert!(errs[0].contains("non HTTPS/TLS ports"), "{errs:?}");
    }

    #[test]
    fn names_ports_and_hosts() {
        let mut s = server("HTTP", None);
        s.hosts = vec!["bad_ns!/a.com".into(), "/x".into()];
        let errs = run(
            "my.gw",
            &GatewaySpec {
                servers: vec![s.clone(), s],
                ..Default::default()
            },
        );
        let joined = errs.join("\n");
        assert!(joined.contains("invalid gateway name"));
        assert!(joined.contains("invalid namespace value"));
        assert!(joined.contains("cannot be empty"));
        assert!(joined.contains("port names in servers must be unique"));
        assert!(run("gw", &GatewaySpec::default())[0].contains("at least one server"));
    }
}

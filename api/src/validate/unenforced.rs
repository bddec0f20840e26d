//! Settings the mesh reads and stores but whose behaviour the data plane does not implement
//! yet. Accepting them silently would let an operator believe they are in force, so each one
//! found becomes a warning naming its path.

use super::Report;
use super::names::Protocol;
use crate::networking::{LoadBalancerSettings, Port, ServerTlsSettings, TrafficPolicy};
use crate::path::FieldPath;
use crate::resource::Resource;
use crate::security::AuthorizationAction;

const NOT_YET: &str = "accepted, but the Trellis data plane does not enforce this setting yet";

pub(super) fn warn(r: &mut Report, resource: &Resource) {
    let spec = FieldPath::root().field("spec");
    match resource {
        Resource::DestinationRule(o) => {
            if let Some(tp) = &o.spec.traffic_policy {
                traffic_policy(r, &spec.field("trafficPolicy"), tp);
            }
            for (i, s) in o.spec.subsets.iter().enumerate() {
                if let Some(tp) = &s.traffic_policy {
                    traffic_policy(
                        r,
                        &spec.field("subsets").index(i).field("trafficPolicy"),
                        tp,
                    );
                }
            }
        }
        Resource::Gateway(o) => {
            for (i, s) in o.spec.servers.iter().enumerate() {
                let at = spec.field("servers").index(i);
                if let Some(p) = &s.port {
                    port(r, &at.field("port"), p);
                }
                if let Some(tls) = &s.tls {
                    server_tls(r, &at.field("tls"), tls);
                }
            }
        }
        Resource::ServiceEntry(o) => {
            for (i, p) in o.spec.ports.iter().enumerate() {
                port(r, &spec.field("ports").index(i), p);
            }
        }
        Resource::VirtualService(o) => {
            for (i, h) in o.spec.http.iter().enumerate() {
                for (j, m) in h.matches.iter().enumerate() {
                    if !m.stat_prefix.is_empty() {
                        r.warn(
                            &spec
                                .field("http")
                                .index(i)
                                .field("match")
                                .index(j)
                                .field("statPrefix"),
                            NOT_YET,
                        );
                    }
                }
            }
        }
        Resource::Sidecar(o) => {
            for (i, l) in o.spec.ingress.iter().enumerate() {
                if let Some(tls) = &l.tls {
                    server_tls(r, &spec.field("ingress").index(i).field("tls"), tls);
                }
            }
        }
        Resource::AuthorizationPolicy(o) => {
            if o.spec.action == AuthorizationAction::Custom {
                r.warn(&spec.field("action"), NOT_YET);
            }
            for (i, rule) in o.spec.rules.iter().enumerate() {
                for (j, c) in rule.when.iter().enumerate() {
                    if c.key.starts_with("experimental.envoy.filters.") {
                        r.warn(
                            &spec
                                .field("rules")
                                .index(i)
                                .field("when")
                                .index(j)
                                .field("key"),
                            NOT_YET,
                        );
                    }
                }
            }
        }
        _ => {}
    }
}

fn traffic_policy(r: &mut Report, at: &FieldPath, tp: &TrafficPolicy) {
    if tp.tunnel.is_some() {
        r.warn(&at.field("tunnel"), NOT_YET);
    }
    if tp.proxy_protocol.is_some() {
        r.warn(&at.field("proxyProtocol"), NOT_YET);
    }
    if tp.retry_budget.is_some() {
        r.warn(&at.field("retryBudget"), NOT_YET);
    }
    if let Some(lb) = &tp.load_balancer {
        load_balancer(r, &at.field("loadBalancer"), lb);
    }
    if let Some(tls) = &tp.tls
        && !tls.ca_crl.is_empty()
    {
        r.warn(&at.field("tls").field("caCrl"), NOT_YET);
    }
    for (i, pl) in tp.port_level_settings.iter().enumerate() {
        if let Some(lb) = &pl.load_balancer {
            load_balancer(
                r,
                &at.field("portLevelSettings").index(i).field("loadBalancer"),
                lb,
            );
        }
    }
}

fn load_balancer(r: &mut Report, at: &FieldPath, lb: &LoadBalancerSettings) {
    if lb.warmup.is_some() {
        r.warn(&at.field("warmup"), NOT_YET);
    }
    if lb.warmup_duration_secs.is_some() {
        r.warn(&at.field("warmupDurationSecs"), NOT_YET);
    }
    if let Some(ch) = &lb.consistent_hash
        && ch.maglev.is_some()
    {
        r.warn(&at.field("consistentHash").field("maglev"), NOT_YET);
    }
}

fn port(r: &mut Report, at: &FieldPath, p: &Port) {
    if matches!(
        Protocol::parse(&p.protocol),
        Protocol::Mongo | Protocol::Redis | Protocol::Mysql | Protocol::Udp
    ) {
        r.warn(
            &at.field("protocol"),
            format!("{}: traffic is proxied as plain TCP; {NOT_YET}", p.protocol),
        );
    }
}

fn server_tls(r: &mut Report, at: &FieldPath, tls: &ServerTlsSettings) {
    for (field, set) in [
        (
            "verifyCertificateSpki",
            !tls.verify_certificate_spki.is_empty(),
        ),
        (
            "verifyCertificateHash",
            !tls.verify_certificate_hash.is_empty(),
        ),
        ("caCrl", !tls.ca_crl.is_empty()),
    ] {
        if set {
            r.warn(&at.field(field), NOT_YET);
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::parse_documents;

    #[test]
    fn unimplemented_settings_become_warnings() {
        let text = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: r}\nspec:\n  host: reviews\n  trafficPolicy:\n    proxyProtocol: {version: V2}\n    loadBalancer:\n      warmup: {duration: 10s}\n";
        let docs = parse_documents("dr.yaml", text).unwrap();
        let paths: Vec<&str> = docs[0].warnings.iter().map(|w| w.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "spec.trafficPolicy.proxyProtocol",
                "spec.trafficPolicy.loadBalancer.warmup"
            ]
        );
    }
}

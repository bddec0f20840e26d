//! DestinationRule rules, and the traffic-policy rules Sidecar shares.

use super::names::{
    self, validate_export_to, validate_labels, validate_port, validate_wildcard_domain,
};
use super::{Report, validate_duration_ms};
use crate::networking::{
    ClientTlsMode, ClientTlsSettings, ConnectionPoolSettings, DestinationRuleSpec, H2UpgradePolicy,
    LoadBalancerSettings, LocalityLoadBalancerSetting, OutlierDetection, PortTrafficPolicy,
    TrafficPolicy, TunnelSettings,
};
use crate::path::FieldPath;

pub(super) fn validate(
    r: &mut Report,
    spec: &FieldPath,
    namespace: &str,
    dr: &DestinationRuleSpec,
) {
    if dr.host.is_empty() {
        r.error(&spec.field("host"), "Required value");
    } else {
        r.check(&spec.field("host"), validate_wildcard_domain(&dr.host));
    }
    if let Some(tp) = &dr.traffic_policy {
        validate_traffic_policy(r, &spec.field("trafficPolicy"), tp);
    }
    let mut seen: Vec<&str> = Vec::new();
    for (i, subset) in dr.subsets.iter().enumerate() {
        let at = spec.field("subsets").index(i);
        if subset.name.is_empty() {
            r.error(&at.field("name"), "subset name cannot be empty");
        } else if !names::is_dns1123_label(&subset.name) {
            r.error(
                &at.field("name"),
                format!("subset name is invalid: {}", subset.name),
            );
        }
        if seen.contains(&subset.name.as_str()) {
            r.error(
                &at.field("name"),
                format!("duplicate subset names: {}", subset.name),
            );
        }
        seen.push(&subset.name);
        validate_labels(r, &at.field("labels"), &subset.labels);
        if let Some(tp) = &subset.traffic_policy {
            validate_traffic_policy(r, &at.field("trafficPolicy"), tp);
        }
    }
    validate_export_to(r, &spec.field("exportTo"), namespace, &dr.export_to, false);
    if let Some(sel) = &dr.workload_selector {
        names::validate_selector_labels(
            r,
            &spec.field("workloadSelector").field("matchLabels"),
            &sel.match_labels,
        );
    }
}

fn validate_traffic_policy(r: &mut Report, at: &FieldPath, tp: &TrafficPolicy) {
    if tp.outlier_detection.is_none()
        && tp.connection_pool.is_none()
        && tp.load_balancer.is_none()
        && tp.tls.is_none()
        && tp.port_level_settings.is_empty()
        && tp.tunnel.is_none()
        && tp.proxy_protocol.is_none()
        && tp.retry_budget.is_none()
    {
        r.error(at, "traffic policy must have at least one field");
    }
    if tp.tunnel.is_some() && tp.proxy_protocol.is_some() {
        r.error(
            at,
            "tunnel and proxyProtocol must not be specified at the same time",
        );
    }
    if let Some(o) = &tp.outlier_detection {
        validate_outlier_detection(r, &at.field("outlierDetection"), o);
    }
    if let Some(c) = &tp.connection_pool {
        validate_connection_pool(r, &at.field("connectionPool"), c);
    }
    if let Some(lb) = &tp.load_balancer {
        validate_load_balancer(r, &at.field("loadBalancer"), lb);
    }
    if let Some(tls) = &tp.tls {
        validate_client_tls(r, &at.field("tls"), tls);
    }
    for (i, pl) in tp.port_level_settings.iter().enumerate() {
        validate_port_traffic_policy(r, &at.field("portLevelSettings").index(i), pl);
    }
    if let Some(t) = &tp.tunnel {
        validate_tunnel(r, &at.field("tunnel"), t);
    }
    if let Some(budget) = &tp.retry_budget
        && let Some(p) = budget.percent
        && !(0.0..=100.0).contains(&p)
    {
        r.error(
            &at.field("retryBudget").field("percent"),
            "must be between 0 and 100",
        );
    }
}

fn validate_port_traffic_policy(r: &mut Report, at: &FieldPath, pl: &PortTrafficPolicy) {
    match &pl.port {
        None => r.error(&at.field("port"), "portTrafficPolicy must have valid port"),
        Some(p) => r.check(&at.field("port").field("number"), validate_port(p.number)),
    }
    if pl.outlier_detection.is_none()
        && pl.connection_pool.is_none()
        && pl.load_balancer.is_none()
        && pl.tls.is_none()
    {
        r.error(at, "port traffic policy must have at least one field");
    }
    if let Some(o) = &pl.outlier_detection {
        validate_outlier_detection(r, &at.field("outlierDetection"), o);
    }
    if let Some(c) = &pl.connection_pool {
        validate_connection_pool(r, &at.field("connectionPool"), c);
    }
    if let Some(lb) = &pl.load_balancer {
        validate_load_balancer(r, &at.field("loadBalancer"), lb);
    }
    if let Some(tls) = &pl.tls {
        validate_client_tls(r, &at.field("tls"), tls);
    }
}

fn validate_outlier_detection(r: &mut Report, at: &FieldPath, o: &OutlierDetection) {
    if let Some(d) = &o.base_ejection_time {
        validate_duration_ms(r, &at.field("baseEjectionTime"), d);
    }
    if o.consecutive_errors != 0 {
        r.warn(
            &at.field("consecutiveErrors"),
            "outlier detection consecutive errors is deprecated, use consecutiveGatewayErrors or consecutive5xxErrors instead",
        );
    }
    if let Some(d) = &o.interval {
        validate_duration_ms(r, &at.field("interval"), d);
    }
    for (field, v) in [
        ("maxEjectionPercent", o.max_ejection_percent),
        ("minHealthPercent", o.min_health_percent),
    ] {
        if !(0..=100).contains(&v) {
            r.error(
                &at.field(field),
                format!("percentage {v} is not in range 0..100"),
            );
        }
    }
}

pub(super) fn validate_connection_pool(r: &mut Report, at: &FieldPath, c: &ConnectionPoolSettings) {
    if c.http.is_none() && c.tcp.is_none() {
        r.error(at, "connection pool must have at least one field");
    }
    if let Some(h) = &c.http {
        let hp = at.field("http");
        for (field, v) in [
            ("http1MaxPendingRequests", h.http1_max_pending_requests),
            ("http2MaxRequests", h.http2_max_requests),
            ("maxRequestsPerConnection", h.max_requests_per_connection),
            ("maxRetries", h.max_retries),
            ("maxConcurrentStreams", h.max_concurrent_streams),
        ] {
            if v < 0 {
                r.error(&hp.field(field), "must be non-negative");
            }
        }
        if let Some(d) = &h.idle_timeout {
            validate_duration_ms(r, &hp.field("idleTimeout"), d);
        }
        if h.h2_upgrade_policy == Some(H2UpgradePolicy::Upgrade) && h.use_client_protocol {
            r.error(
                &hp.field("useClientProtocol"),
                "use client protocol must not be true when H2UpgradePolicy is UPGRADE",
            );
        }
        if let Some(ka) = &h.http2_keep_alive {
            let kp = hp.field("http2KeepAlive");
            if let Some(d) = &ka.interval {
                validate_duration_ms(r, &kp.field("interval"), d);
            }
            if let Some(d) = &ka.timeout {
                validate_duration_ms(r, &kp.field("timeout"), d);
            }
        }
    }
    if let Some(t) = &c.tcp {
        let tp = at.field("tcp");
        if t.max_connections < 0 {
            r.error(
                &tp.field("maxConnections"),
                "max connections must be non-negative",
            );
        }
        for (field, d) in [
            ("connectTimeout", &t.connect_timeout),
            ("maxConnectionDuration", &t.max_connection_duration),
            ("idleTimeout", &t.idle_timeout),
        ] {
            if let Some(d) = d {
                validate_duration_ms(r, &tp.field(field), d);
            }
        }
        if let Some(ka) = &t.tcp_keepalive {
            let kp = tp.field("tcpKeepalive");
            if let Some(d) = &ka.time {
                validate_duration_ms(r, &kp.field("time"), d);
            }
            if let Some(d) = &ka.interval {
                validate_duration_ms(r, &kp.field("interval"), d);
            }
        }
    }
}

fn is_prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    let mut i = 2u64;
    while i.saturating_mul(i) <= n {
        if n.is_multiple_of(i) {
            return false;
        }
        i += 1;
    }
    true
}

fn validate_load_balancer(r: &mut Report, at: &FieldPath, lb: &LoadBalancerSettings) {
    if lb.simple.is_some() && lb.consistent_hash.is_some() {
        r.error(at, "only one of simple or consistentHash may be set");
    }
    if let Some(ch) = &lb.consistent_hash {
        let cp = at.field("consistentHash");
        let keys = [
            ch.http_header_name.is_some(),
            ch.http_cookie.is_some(),
            ch.use_source_ip.is_some(),
            ch.http_query_parameter_name.is_some(),
        ];
        if keys.iter().filter(|b| **b).count() > 1 {
            r.error(
                &cp,
                "only one of httpHeaderName, httpCookie, useSourceIp or httpQueryParameterName may be set",
            );
        }
        if let Some(cookie) = &ch.http_cookie
            && cookie.name.is_empty()
        {
            r.error(
                &cp.field("httpCookie").field("name"),
                "name required for HttpCookie",
            );
        }
        if ch.ring_hash.is_some() && ch.maglev.is_some() {
            r.error(&cp, "only one of ringHash or maglev may be set");
        }
        if ch.minimum_ring_size != 0 && (ch.ring_hash.is_some() || ch.maglev.is_some()) {
            r.error(
                &cp,
                "only one of MinimumRingSize or Maglev/Ringhash can be specified",
            );
        }
        if let Some(m) = &ch.maglev {
            let tp = cp.field("maglev").field("tableSize");
            if m.table_size == 0 {
                r.error(&tp, "tableSize must be set for maglev");
            } else if !is_prime(m.table_size) {
                r.error(&tp, "tableSize must be a prime number for maglev");
            }
        }
    }
    if let Some(l) = &lb.locality_lb_setting {
        validate_locality_lb(r, &at.field("localityLbSetting"), l);
    }
    if let Some(d) = &lb.warmup_duration_secs {
        validate_duration_ms(r, &at.field("warmupDurationSecs"), d);
    }
    if let Some(w) = &lb.warmup {
        let wp = at.field("warmup");
        if lb.warmup_duration_secs.is_some() {
            r.error(&wp, "only one of warmupDurationSecs or warmup may be set");
        }
        match &w.duration {
            None => r.error(&wp.field("duration"), "Required value"),
            Some(d) => validate_duration_ms(r, &wp.field("duration"), d),
        }
        if let Some(p) = w.minimum_percent
            && !(0.0..=100.0).contains(&p)
        {
            r.error(
                &wp.field("minimumPercent"),
                format!("Invalid value: {p}: must be between 0 and 100"),
            );
        }
        if let Some(a) = w.aggression
            && !(a >= 1.0 && a.is_finite())
        {
            r.error(
                &wp.field("aggression"),
                format!("Invalid value: {a}: must be at least 1"),
            );
        }
    }
}

fn validate_locality_lb(r: &mut Report, at: &FieldPath, l: &LocalityLoadBalancerSetting) {
    if !l.distribute.is_empty() && !l.failover.is_empty() {
        r.error(
            at,
            "can not simultaneously specify 'distribute' and 'failover'",
        );
    }
    if !l.failover.is_empty() {
        for (i, label) in l.failover_priority.iter().enumerate() {
            if matches!(
                label.as_str(),
                "topology.kubernetes.io/region"
                    | "topology.kubernetes.io/zone"
                    | "topology.istio.io/subzone"
            ) {
                r.error(
                    &at.field("failoverPriority").index(i),
                    format!(
                        "can not simultaneously set 'failover' and topology label '{label}' in 'failover_priority'"
                    ),
                );
            }
        }
    }
    let mut sources = Vec::new();
    for (i, d) in l.distribute.iter().enumerate() {
        let dp = at.field("distribute").index(i);
        sources.push(d.from.clone());
        let mut total: u64 = 0;
        for (loc, weight) in &d.to {
            if *weight == 0 || *weight > 100 {
                r.error(
                    &dp.field("to").field(loc),
                    "locality weight must be in range [1, 100]",
                );
            }
            total += u64::from(*weight);
        }
        if total != 100 {
            r.error(
                &dp.field("to"),
                format!("total locality weight {total} != 100"),
            );
        }
        let dests: Vec<String> = d.to.keys().cloned().collect();
        validate_localities(r, &dp.field("to"), &dests);
    }
    validate_localities(r, &at.field("distribute"), &sources);
    for (i, f) in l.failover.iter().enumerate() {
        let fp = at.field("failover").index(i);
        if f.from == f.to {
            r.error(
                &fp,
                "locality lb failover settings must specify different regions",
            );
        }
        if f.from.contains('/') || f.to.contains('/') {
            r.error(&fp, "locality lb failover only specify region");
        }
        if f.from.contains('*') || f.to.contains('*') {
            r.error(
                &fp,
                "locality lb failover region should not contain '*' wildcard",
            );
        }
    }
}

/// Localities are `region/zone/subzone`, with an optional trailing `*`; no two may overlap.
fn validate_localities(r: &mut Report, at: &FieldPath, localities: &[String]) {
    let mut seen: Vec<Vec<&str>> = Vec::new();
    for locality in localities {
        let stars = locality.matches('*').count();
        if stars > 0 && (stars > 1 || !locality.ends_with('*')) {
            r.error(
                at,
                format!("locality {locality} wildcard '*' number can not exceed 1 and must be in the end"),
            );
            continue;
        }
        let parts: Vec<&str> = locality.split('/').collect();
        if parts.len() > 3 || parts.iter().any(|p| p.is_empty()) {
            r.error(
                at,
                format!("locality {locality} must not contain empty region/zone/subzone info"),
            );
            continue;
        }
        let covers = |a: &[&str], b: &[&str]| {
            a.iter().zip(b.iter()).all(|(x, y)| *x == "*" || x == y)
                && (a.len() <= b.len() || a.last() == Some(&"*"))
        };
        if seen.iter().any(|s| covers(s, &parts) || covers(&parts, s)) {
            r.error(
                at,
                format!("locality {locality} overlap with previous specified ones"),
            );
        }
        seen.push(parts);
    }
}

fn validate_client_tls(r: &mut Report, at: &FieldPath, tls: &ClientTlsSettings) {
    if matches!(tls.mode, ClientTlsMode::Simple | ClientTlsMode::Mutual)
        && !tls.credential_name.is_empty()
    {
        if !tls.client_certificate.is_empty()
            || !tls.ca_certificates.is_empty()
            || !tls.private_key.is_empty()
            || !tls.ca_crl.is_empty()
        {
            r.error(
                at,
                "cannot specify client certificates or CA certificate or CA CRL If credentialName is set",
            );
        }
        return;
    }
    if tls.mode == ClientTlsMode::Mutual {
        if tls.client_certificate.is_empty() {
            r.error(
                &at.field("clientCertificate"),
                "client certificate required for mutual tls",
            );
        }
        if tls.private_key.is_empty() {
            r.error(
                &at.field("privateKey"),
                "private key required for mutual tls",
            );
        }
    }
}

fn validate_tunnel(r: &mut Report, at: &FieldPath, t: &TunnelSettings) {
    if !t.protocol.is_empty() && t.protocol != "CONNECT" && t.protocol != "POST" {
        r.error(
            &at.field("protocol"),
            "tunnel protocol must be \"CONNECT\" or \"POST\"",
        );
    }
    if let (Err(fqdn), Err(ip)) = (
        names::validate_fqdn(&t.target_host),
        names::validate_ip(&t.target_host),
    ) {
        r.error(
            &at.field("targetHost"),
            format!("tunnel target host must be valid FQDN or IP address: {fqdn}; {ip}"),
        );
    }
    if let Err(e) = validate_port(t.target_port) {
        r.error(
            &at.field("targetPort"),
            format!("tunnel target port is invalid: {e}"),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::networking::{
        ConsistentHashLb, LocalityDistribute, MagLev, Subset, WarmupConfiguration,
    };
    use std::collections::BTreeMap;

    fn run(dr: &DestinationRuleSpec) -> Vec<String> {
        let mut r = Report::default();
        validate(&mut r, &FieldPath::from("spec"), "default", dr);
        r.errors.iter().map(|e| e.to_string()).collect()
    }

    fn with_lb(lb: LoadBalancerSettings) -> DestinationRuleSpec {
        DestinationRuleSpec {
            host: "reviews".into(),
            traffic_policy: Some(TrafficPolicy {
                load_balancer: Some(lb),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn empty_policy_and_missing_host() {
        let errs = run(&DestinationRuleSpec {
            traffic_policy: Some(TrafficPolicy::default()),
            ..Default::default()
        });
        assert!(
            errs.contains(&"spec.host: Required value".to_owned()),
            "{errs:?}"
        );
        assert!(
            errs.iter()
                .any(|e| e.contains("traffic policy must have at least one field"))
        );
    }

    #[test]
    fn warmup_bounds() {
        let errs = run(&with_lb(LoadBalancerSettings {
            warmup: Some(WarmupConfiguration {
                duration: None,
                minimum_percent: Some(150.0),
                aggression: Some(-0.1),
            }),
            ..Default::default()
        }));
        let joined = errs.join("\n");
        assert!(joined.contains("spec.trafficPolicy.loadBalancer.warmup.duration: Required value"));
        assert!(
            joined.contains("spec.trafficPolicy.loadBalancer.warmup.minimumPercent: Invalid value")
        );
        assert!(
            joined.contains("spec.trafficPolicy.loadBalancer.warmup.aggression: Invalid value")
        );
    }

    #[test]
    fn maglev_table_must_be_prime() {
        let errs = run(&with_lb(LoadBalancerSettings {
            consistent_hash: Some(ConsistentHashLb {
                maglev: Some(MagLev { table_size: 100 }),
                ..Default::default()
            }),
            ..Default::default()
        }));
        assert!(errs[0].contains("prime"), "{errs:?}");
        assert!(is_prime(65537));
    }

    #[test]
    fn locality_weights_add_to_100() {
        let mut to = BTreeMap::new();
        to.insert("us-east/*".to_owned(), 60);
        to.insert("us-west/*".to_owned(), 30);
        let errs = run(&with_lb(LoadBalancerSettings {
            locality_lb_setting: Some(LocalityLoadBalancerSetting {
                distribute: vec![LocalityDistribute {
                    from: "us-east/zone1/*".into(),
                    to,
                }],
                ..Default::default()
            }),
            ..Default::default()
        }));
        assert!(
            errs.iter()
                .any(|e| e.contains("total locality weight 90 != 100")),
            "{errs:?}"
        );
    }

    #[test]
    fn duplicate_subsets() {
        let s = Subset {
            name: "v1".into(),
            ..Default::default()
        };
        let errs = run(&DestinationRuleSpec {
            host: "reviews".into(),
            subsets: vec![s.clone(), s],
            ..Default::default()
        });
        assert_eq!(
            errs,
            vec!["spec.subsets[1].name: duplicate subset names: v1".to_owned()]
        );
    }
}

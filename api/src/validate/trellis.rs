//! Rules for the Trellis kinds.

use super::names::{
    self, validate_port, validate_port_name, validate_protocol, validate_wildcard_domain,
};
use super::{Report, validate_duration_ms};
use crate::path::FieldPath;
use crate::trellis::{RateLimitSpec, ServiceSpec};

pub(super) fn validate_service(r: &mut Report, spec: &FieldPath, svc: &ServiceSpec) {
    if svc.ports.is_empty() {
        r.error(
            &spec.field("ports"),
            "a service must have at least one port",
        );
    }
    let mut names_seen: Vec<&str> = Vec::new();
    let mut numbers_seen: Vec<u32> = Vec::new();
    for (i, port) in svc.ports.iter().enumerate() {
        let at = spec.field("ports").index(i);
        if port.name.is_empty() {
            // Routes and policies pick ports by number, but metrics label them by name.
            if svc.ports.len() > 1 {
                r.error(
                    &at.field("name"),
                    "port name is required when a service has several ports",
                );
            }
        } else {
            r.check(&at.field("name"), validate_port_name(&port.name));
            if names_seen.contains(&port.name.as_str()) {
                r.error(
                    &at.field("name"),
                    format!("Duplicate value: port name {:?}", port.name),
                );
            }
            names_seen.push(&port.name);
        }
        r.check(&at.field("number"), validate_port(port.number));
        if numbers_seen.contains(&port.number) {
            r.error(&at.field("number"), "port number cannot be duplicated");
        }
        numbers_seen.push(port.number);
        r.check(&at.field("protocol"), validate_protocol(&port.protocol));
        if port.target_port != 0 {
            r.check(&at.field("targetPort"), validate_port(port.target_port));
        }
    }
    names::validate_labels(r, &spec.field("labels"), &svc.labels);
    if !svc.service_account.is_empty() && !names::is_dns1123_subdomain(&svc.service_account) {
        r.error(
            &spec.field("serviceAccount"),
            format!("invalid service account name {:?}", svc.service_account),
        );
    }
}

pub(super) fn validate_rate_limit(r: &mut Report, spec: &FieldPath, rl: &RateLimitSpec) {
    match (rl.host.is_empty(), &rl.selector) {
        (true, None) => r.error(spec, "one of host or selector is required"),
        (false, Some(_)) => r.error(spec, "only one of host or selector can be set"),
        _ => {}
    }
    if !rl.host.is_empty() {
        if rl.host == "*" {
            r.error(&spec.field("host"), "host cannot be wildcard");
        } else {
            r.check(&spec.field("host"), validate_wildcard_domain(&rl.host));
        }
    }
    if let Some(sel) = &rl.selector {
        if sel.match_labels.is_empty() {
            r.error(
                &spec.field("selector").field("matchLabels"),
                "Required value",
            );
        }
        names::validate_selector_labels(
            r,
            &spec.field("selector").field("matchLabels"),
            &sel.match_labels,
        );
    }
    if rl.route.contains(char::is_whitespace) {
        r.error(
            &spec.field("route"),
            format!("invalid route name {:?}", rl.route),
        );
    }
    for (i, m) in rl.matches.iter().enumerate() {
        if let Some(re) = m.uri.as_ref().and_then(|u| u.regex.as_ref()) {
            r.check(
                &spec.field("match").index(i).field("uri").field("regex"),
                names::validate_regex(re),
            );
        }
    }

    let simple = rl.requests_per_unit.is_some() || rl.unit.is_some();
    let bucket = rl.tokens_per_fill.is_some() || rl.fill_interval.is_some();
    match (simple, bucket) {
        (true, true) => r.error(
            spec,
            "set either requestsPerUnit and unit, or tokensPerFill and fillInterval, not both",
        ),
        (false, false) => r.error(
            spec,
            "a rate limit needs requestsPerUnit and unit, or tokensPerFill and fillInterval",
        ),
        (true, false) => {
            if rl.unit.is_none() {
                r.error(&spec.field("unit"), "Required value");
            }
            match rl.requests_per_unit {
                None => r.error(&spec.field("requestsPerUnit"), "Required value"),
                Some(0) => r.error(&spec.field("requestsPerUnit"), "must be at least 1"),
                Some(_) => {}
            }
        }
        (false, true) => {
            match rl.tokens_per_fill {
                None => r.error(&spec.field("tokensPerFill"), "Required value"),
                Some(0) => r.error(&spec.field("tokensPerFill"), "must be at least 1"),
                Some(_) => {}
            }
            match &rl.fill_interval {
                None => r.error(&spec.field("fillInterval"), "Required value"),
                Some(d) => validate_duration_ms(r, &spec.field("fillInterval"), d),
            }
        }
    }
    if let Some(max) = rl.max_tokens {
        let fill = rl.tokens_per_fill.or(rl.requests_per_unit).unwrap_or(0);
        if max == 0 {
            r.error(&spec.field("maxTokens"), "must be at least 1");
        } else if max < fill {
            r.error(
                &spec.field("maxTokens"),
                format!("must be at least the tokens added per fill ({fill})"),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trellis::{RateUnit, ServicePort};

    fn rl_errors(rl: &RateLimitSpec) -> Vec<String> {
        let mut r = Report::default();
        validate_rate_limit(&mut r, &FieldPath::from("spec"), rl);
        r.errors.iter().map(|e| e.to_string()).collect()
    }

    #[test]
    fn rate_limit_bucket_forms() {
        let ok = RateLimitSpec {
            host: "reviews.default.svc.cluster.local".into(),
            requests_per_unit: Some(100),
            unit: Some(RateUnit::Minute),
            ..Default::default()
        };
        assert!(rl_errors(&ok).is_empty());
        let bucket = ok.token_bucket().unwrap();
        assert_eq!(bucket.tokens_per_fill, 100);
        assert_eq!(bucket.fill_interval.as_std().as_secs(), 60);

        let both = RateLimitSpec {
            tokens_per_fill: Some(1),
            ..ok.clone()
        };
        assert!(rl_errors(&both)[0].contains("not both"));
        assert!(both.token_bucket().is_none());

        let neither = RateLimitSpec {
            host: "reviews".into(),
            ..Default::default()
        };
        assert!(rl_errors(&neither)[0].contains("needs requestsPerUnit"));

        let small_max = RateLimitSpec {
            max_tokens: Some(10),
            ..ok
        };
        assert!(rl_errors(&small_max)[0].contains("spec.maxTokens"));
        assert!(rl_errors(&RateLimitSpec::default())[0].contains("one of host or selector"));
    }

    #[test]
    fn service_ports() {
        let mut r = Report::default();
        validate_service(
            &mut r,
            &FieldPath::from("spec"),
            &ServiceSpec {
                ports: vec![
                    ServicePort {
                        name: "http".into(),
                        number: 80,
                        protocol: "HTTP".into(),
                        target_port: 8080,
                    },
                    ServicePort {
                        name: "http".into(),
                        number: 0,
                        protocol: "SMTP".into(),
                        target_port: 0,
                    },
                ],
                ..Default::default()
            },
        );
        let e: Vec<String> = r.errors.iter().map(|e| e.to_string()).collect();
        assert_eq!(e.len(), 3, "{e:?}");
    }
}

//! PeerAuthentication, AuthorizationPolicy and RequestAuthentication rules.

use super::Report;
use super::names::{self, PORT_RANGE, validate_header_name, validate_ip_subnet};
use crate::path::FieldPath;
use crate::security::{
    AuthorizationAction, AuthorizationPolicySpec, JwtRule, Operation, PeerAuthenticationSpec,
    RequestAuthenticationSpec, Source,
};
use crate::selector::{PolicyTargetReference, WorkloadSelector};

const GROUP_PATTERN: &str = r"^$|^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
const KIND_PATTERN: &str = r"^[a-zA-Z]([-a-zA-Z0-9]*[a-zA-Z0-9])?$";
const HEADER_PATTERN: &str = "^[-_A-Za-z0-9]+$";

/// What a policy may be attached to, as (group, kind).
const TARGET_KINDS: &[(&str, &str)] = &[
    ("", "Service"),
    ("core", "Service"),
    ("gateway.networking.k8s.io", "Gateway"),
    ("gateway.networking.k8s.io", "GatewayClass"),
    ("networking.istio.io", "ServiceEntry"),
];

pub(super) fn validate_peer_authentication(
    r: &mut Report,
    spec: &FieldPath,
    pa: &PeerAuthenticationSpec,
) {
    if let Some(sel) = &pa.selector {
        validate_selector(r, &spec.field("selector"), sel);
    }
    let Some(ports) = &pa.port_level_mtls else {
        return;
    };
    let at = spec.field("portLevelMtls");
    // Port numbers only mean something for a known set of workloads.
    if pa
        .selector
        .as_ref()
        .is_none_or(|s| s.match_labels.is_empty())
    {
        r.error(spec, "portLevelMtls requires selector");
    }
    if ports.is_empty() {
        r.error(&at, "should have at least 1 properties");
    }
    for key in ports.keys() {
        match key.parse::<u64>() {
            Err(_) => r.error(
                &at.field(key),
                format!("type conversion error from string {key:?} to port number"),
            ),
            Ok(p) if !(1..=65535).contains(&p) => {
                r.error(&at.field(key), format!("{PORT_RANGE}, got {p}"))
            }
            Ok(_) => {}
        }
    }
}

fn validate_selector(r: &mut Report, at: &FieldPath, sel: &WorkloadSelector) {
    names::validate_selector_labels(r, &at.field("matchLabels"), &sel.match_labels);
}

fn validate_targets(
    r: &mut Report,
    spec: &FieldPath,
    namespace: &str,
    selector: Option<&WorkloadSelector>,
    target_ref: Option<&PolicyTargetReference>,
    target_refs: &[PolicyTargetReference],
) {
    let set = [
        selector.is_some(),
        target_ref.is_some(),
        !target_refs.is_empty(),
    ];
    if set.iter().filter(|b| **b).count() > 1 {
        r.error(spec, "only one of targetRefs or selector can be set");
    }
    if let Some(sel) = selector {
        validate_selector(r, &spec.field("selector"), sel);
    }
    if let Some(t) = target_ref {
        validate_target_ref(r, &spec.field("targetRef"), namespace, t);
    }
    for (i, t) in target_refs.iter().enumerate() {
        validate_target_ref(r, &spec.field("targetRefs").index(i), namespace, t);
    }
}

fn matches_pattern(pattern: &str, value: &str) -> bool {
    use std::sync::LazyLock;
    static GROUP: LazyLock<Option<regex::Regex>> =
        LazyLock::new(|| regex::Regex::new(GROUP_PATTERN).ok());
    static KIND: LazyLock<Option<regex::Regex>> =
        LazyLock::new(|| regex::Regex::new(KIND_PATTERN).ok());
    let re = if pattern == GROUP_PATTERN {
        &GROUP
    } else {
        &KIND
    };
    re.as_ref().is_some_and(|re| re.is_match(value))
}

fn validate_target_ref(r: &mut Report, at: &FieldPath, namespace: &str, t: &PolicyTargetReference) {
    if t.name.is_empty() {
        r.error(&at.field("name"), "Required value");
    } else if t.name.len() > 253 {
        r.error(
            &at.field("name"),
            "name may not be longer than 253 characters",
        );
    }
    let group_ok = t.group.len() <= 253 && matches_pattern(GROUP_PATTERN, &t.group);
    if !group_ok {
        r.error(
            &at.field("group"),
            format!("{:?} should match '{GROUP_PATTERN}'", t.group),
        );
    }
    let kind_ok =
        !t.kind.is_empty() && t.kind.len() <= 63 && matches_pattern(KIND_PATTERN, &t.kind);
    if !kind_ok {
        r.error(
            &at.field("kind"),
            format!("{:?} should match '{KIND_PATTERN}'", t.kind),
        );
    }
    if group_ok && kind_ok && !TARGET_KINDS.contains(&(t.group.as_str(), t.kind.as_str())) {
        r.error(
            at,
            "support kinds are core/Service, networking.istio.io/ServiceEntry, gateway.networking.k8s.io/Gateway, gateway.networking.k8s.io/GatewayClass",
        );
    }
    if !t.namespace.is_empty() && t.namespace != namespace {
        r.error(
            &at.field("namespace"),
            "cross namespace referencing is not currently supported",
        );
    }
}

pub(super) fn validate_authorization_policy(
    r: &mut Report,
    spec: &FieldPath,
    namespace: &str,
    ap: &AuthorizationPolicySpec,
) {
    validate_targets(
        r,
        spec,
        namespace,
        ap.selector.as_ref(),
        ap.target_ref.as_ref(),
        &ap.target_refs,
    );
    if ap.action == AuthorizationAction::Custom {
        if ap.provider.as_ref().is_none_or(|p| p.name.is_empty()) {
            r.error(
                &spec.field("provider"),
                "must specify provider when using CUSTOM action",
            );
        }
    } else if ap.provider.is_some() {
        r.error(
            &spec.field("provider"),
            "provider can only be used with CUSTOM action",
        );
    }
    for (i, rule) in ap.rules.iter().enumerate() {
        let at = spec.field("rules").index(i);
        clauses(
            r,
            &at,
            i,
            ("from", "source"),
            rule.from.as_deref(),
            |f| f.source.as_ref(),
            validate_source,
        );
        clauses(
            r,
            &at,
            i,
            ("to", "operation"),
            rule.to.as_deref(),
            |t| t.operation.as_ref(),
            validate_operation,
        );
        for (j, c) in rule.when.iter().enumerate() {
            let cp = at.field("when").index(j);
            if c.key.is_empty() {
                r.error(&cp.field("key"), "`key` must not be empty");
                continue;
            }
            if c.values.is_empty() && c.not_values.is_empty() {
                r.error(
                    &cp,
                    format!(
                        "at least one of `values` or `notValues` must be set for key {}",
                        c.key
                    ),
                );
                continue;
            }
            validate_condition(r, &cp.field("key"), &c.key, &c.values, &c.not_values);
        }
    }
}

/// `from` and `to` read the same way in Istio: when present, a non-empty list whose every
/// element holds its one field (`source`, `operation`), which is then checked.
fn clauses<C, T>(
    r: &mut Report,
    at: &FieldPath,
    rule: usize,
    (list, inner): (&str, &str),
    items: Option<&[C]>,
    get: impl Fn(&C) -> Option<&T>,
    check: fn(&mut Report, &FieldPath, usize, &T),
) {
    let Some(items) = items else {
        return;
    };
    if items.is_empty() {
        r.error(
            &at.field(list),
            format!("`{list}` must not be empty, found at rule {rule}"),
        );
    }
    for (j, item) in items.iter().enumerate() {
        let path = at.field(list).index(j).field(inner);
        match get(item) {
            None => r.error(
                &path,
                format!("`{list}.{inner}` must not be nil, found at rule {rule}"),
            ),
            Some(v) => check(r, &path, rule, v),
        }
    }
}

fn validate_source(r: &mut Report, at: &FieldPath, rule: usize, src: &Source) {
    let lists = src.lists();
    if lists.iter().all(|(_, l)| l.is_empty()) {
        r.error(
            at,
            format!("`from.source` must not be empty, found at rule {rule}"),
        );
    }
    for (field, list) in lists {
        for (i, v) in list.iter().enumerate() {
            if v.is_empty() {
                r.error(
                    &at.field(field).index(i),
                    format!("empty value not allowed, found in {field}"),
                );
            }
        }
    }
    for (field, list) in [
        ("ipBlocks", &src.ip_blocks),
        ("notIpBlocks", &src.not_ip_blocks),
        ("remoteIpBlocks", &src.remote_ip_blocks),
        ("notRemoteIpBlocks", &src.not_remote_ip_blocks),
    ] {
        for (i, v) in list.iter().enumerate() {
            if !v.is_empty() {
                r.check(&at.field(field).index(i), validate_ip_subnet(v));
            }
        }
    }
    let has_accounts = !src.service_accounts.is_empty() || !src.not_service_accounts.is_empty();
    let has_identities = !src.principals.is_empty()
        || !src.not_principals.is_empty()
        || !src.namespaces.is_empty()
        || !src.not_namespaces.is_empty();
    if has_accounts && has_identities {
        r.error(
            at,
            "Cannot set serviceAccounts with namespaces or principals",
        );
    }
    for (field, list) in [
        ("serviceAccounts", &src.service_accounts),
        ("notServiceAccounts", &src.not_service_accounts),
    ] {
        for (i, sa) in list.iter().enumerate() {
            let ok = sa.len() <= 320
                && match sa.split_once('/') {
                    Some((ns, name)) => {
                        names::is_lowercase_dns1123_label(ns) && names::is_dns1123_subdomain(name)
                    }
                    None => names::is_dns1123_subdomain(sa),
                };
            if !sa.is_empty() && !ok {
                r.error(
                    &at.field(field).index(i),
                    format!("service account {sa:?} must be <name> or <namespace>/<name>"),
                );
            }
        }
    }
}

fn validate_operation(r: &mut Report, at: &FieldPath, rule: usize, op: &Operation) {
    let lists = op.lists();
    if lists.iter().all(|(_, l)| l.is_empty()) {
        r.error(
            at,
            format!("`to.operation` must not be empty, found at rule {rule}"),
        );
    }
    for (field, list) in lists {
        for (i, v) in list.iter().enumerate() {
            if v.is_empty() {
                r.error(
                    &at.field(field).index(i),
                    format!("empty value not allowed, found in {field}"),
                );
            }
        }
    }
    for (field, list) in [("ports", &op.ports), ("notPorts", &op.not_ports)] {
        for (i, p) in list.iter().enumerate() {
            if !p.is_empty() && !is_port_string(p) {
                r.error(&at.field(field).index(i), format!("invalid port: {p:?}"));
            }
        }
    }
    for (field, list) in [("paths", &op.paths), ("notPaths", &op.not_paths)] {
        for (i, p) in list.iter().enumerate() {
            if let Err(e) = validate_path_template(p) {
                r.error(&at.field(field).index(i), e);
            }
        }
    }
}

fn is_port_string(p: &str) -> bool {
    p.parse::<u32>().is_ok_and(|n| n <= 65535)
}

/// `{*}` matches one path segment and `{**}` any number; other braces are not supported.
fn validate_path_template(path: &str) -> Result<(), String> {
    if !path.contains(['{', '}']) {
        return Ok(());
    }
    let mut globs = 0;
    for segment in path.split('/') {
        match segment {
            "{*}" => {}
            "{**}" => globs += 1,
            s if s.contains(['{', '}']) => {
                return Err(format!(
                    "invalid or unsupported path {path:?}: only whole segments {{*}} and {{**}} are supported"
                ));
            }
            _ => {}
        }
    }
    if globs > 1 {
        return Err(format!(
            "invalid path {path:?}: {{**}} may appear only once"
        ));
    }
    if path.contains('*') && path.replace("{*}", "").replace("{**}", "").contains('*') {
        return Err(format!(
            "invalid path {path:?}: a path template cannot also use * prefix or suffix matching"
        ));
    }
    Ok(())
}

/// `name[...]` where the bracketed part is not empty.
fn is_map_key(key: &str, prefix: &str) -> bool {
    key.strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix('['))
        .is_some_and(|rest| rest.len() > 1 && rest.ends_with(']'))
}

fn validate_condition(
    r: &mut Report,
    at: &FieldPath,
    key: &str,
    values: &[String],
    not_values: &[String],
) {
    let all = values.iter().chain(not_values);
    let check_ips = |r: &mut Report| {
        for v in values.iter().chain(not_values) {
            if let Err(e) = validate_ip_subnet(v) {
                r.error(at, e);
            }
        }
    };
    match key {
        "source.ip" | "remote.ip" | "destination.ip" => check_ips(r),
        "destination.port" => {
            for v in all {
                if !is_port_string(v) {
                    r.error(at, format!("invalid port: {v:?}"));
                }
            }
        }
        "source.namespace"
        | "source.principal"
        | "source.serviceAccount"
        | "source.trustDomain"
        | "request.auth.principal"
        | "request.auth.audiences"
        | "request.auth.presenter"
        | "connection.sni" => {}
        k if k.starts_with("request.headers") => {
            if !is_map_key(k, "request.headers") {
                r.error(at, format!("invalid key: {k}"));
            }
        }
        k if k.starts_with("request.auth.claims") => {
            if !is_map_key(k, "request.auth.claims") {
                r.error(at, format!("invalid key: {k}"));
            }
        }
        k if k.starts_with("experimental.envoy.filters.") => {
            if !k.ends_with(']') || !k.contains('[') {
                r.error(at, format!("invalid key: {k}"));
            }
        }
        k => r.error(at, format!("unknown attribute: {k}")),
    }
}

pub(super) fn validate_request_authentication(
    r: &mut Report,
    spec: &FieldPath,
    namespace: &str,
    ra: &RequestAuthenticationSpec,
) {
    validate_targets(
        r,
        spec,
        namespace,
        ra.selector.as_ref(),
        ra.target_ref.as_ref(),
        &ra.target_refs,
    );
    for (i, rule) in ra.jwt_rules.iter().enumerate() {
        validate_jwt_rule(r, &spec.field("jwtRules").index(i), rule);
    }
}

const AT_LEAST_ONE_CHAR: &str = "should be at least 1 chars long";

fn validate_jwt_rule(r: &mut Report, at: &FieldPath, rule: &JwtRule) {
    if rule.issuer.is_empty() {
        r.error(&at.field("issuer"), "issuer must be set");
    }
    for (field, list) in [
        ("audiences", &rule.audiences),
        ("fromParams", &rule.from_params),
        ("fromCookies", &rule.from_cookies),
        ("spaceDelimitedClaims", &rule.space_delimited_claims),
    ] {
        for (i, v) in list.iter().enumerate() {
            if v.is_empty() {
                r.error(&at.field(field).index(i), AT_LEAST_ONE_CHAR);
            }
        }
    }
    if !rule.jwks_uri.is_empty() {
        r.check(&at.field("jwksUri"), validate_jwks_uri(&rule.jwks_uri));
    }
    if !rule.jwks.is_empty() && !rule.jwks_uri.is_empty() {
        r.warn(
            &at.field("jwks"),
            "jwks and jwksUri are both set; jwks is used",
        );
    }
    for (i, h) in rule.from_headers.iter().enumerate() {
        let hp = at.field("fromHeaders").index(i).field("name");
        if h.name.is_empty() {
            r.error(&hp, AT_LEAST_ONE_CHAR);
        } else {
            r.check(&hp, validate_header_name(&h.name));
        }
    }
    for (i, c) in rule.output_claim_to_headers.iter().enumerate() {
        let cp = at.field("outputClaimToHeaders").index(i);
        if c.claim.is_empty() {
            r.error(&cp.field("claim"), AT_LEAST_ONE_CHAR);
        }
        if c.header.is_empty() {
            r.error(&cp.field("header"), AT_LEAST_ONE_CHAR);
        } else if !c
            .header
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_')
        {
            r.error(
                &cp.field("header"),
                format!("{:?} should match '{HEADER_PATTERN}'", c.header),
            );
        }
    }
    if !rule.output_payload_to_header.is_empty() {
        r.check(
            &at.field("outputPayloadToHeader"),
            validate_header_name(&rule.output_payload_to_header),
        );
    }
    if let Some(t) = &rule.timeout
        && t.as_std() < std::time::Duration::from_millis(1)
    {
        r.error(
            &at.field("timeout"),
            "must be a valid duration greater than 1ms",
        );
    }
}

fn validate_jwks_uri(uri: &str) -> Result<(), String> {
    let Some((scheme, rest)) = uri.split_once("://") else {
        return Err(format!("url must have scheme: {uri:?}"));
    };
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return Err(format!("URI scheme {scheme:?} is not supported"));
    }
    let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if host.is_empty() {
        return Err(format!("url must have a host: {uri:?}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::security::{ClaimToHeader, Condition, MutualTls, Rule, RuleFrom};
    use std::collections::BTreeMap;

    fn errs(r: Report) -> Vec<String> {
        r.errors.iter().map(|e| e.to_string()).collect()
    }

    #[test]
    fn port_level_mtls_needs_selector_and_numeric_ports() {
        let mut ports = BTreeMap::new();
        ports.insert("acd".to_owned(), MutualTls::default());
        ports.insert("0".to_owned(), MutualTls::default());
        let mut r = Report::default();
        validate_peer_authentication(
            &mut r,
            &FieldPath::from("spec"),
            &PeerAuthenticationSpec {
                port_level_mtls: Some(ports),
                ..Default::default()
            },
        );
        let e = errs(r).join("\n");
        assert!(e.contains("spec: portLevelMtls requires selector"), "{e}");
        assert!(
            e.contains("type conversion error from string \"acd\""),
            "{e}"
        );
        assert!(
            e.contains("spec.portLevelMtls[\"0\"]: port must be between 1-65535"),
            "{e}"
        );
    }

    #[test]
    fn authorization_rules() {
        let mut r = Report::default();
        validate_authorization_policy(
            &mut r,
            &FieldPath::from("spec"),
            "default",
            &AuthorizationPolicySpec {
                rules: vec![Rule {
                    from: Some(vec![RuleFrom {
                        source: Some(Source {
                            service_accounts: vec!["ns/sa".into()],
                            namespaces: vec!["ns".into()],
                            ip_blocks: vec!["300.0.0.1".into()],
                            ..Default::default()
                        }),
                    }]),
                    to: Some(vec![]),
                    when: vec![Condition {
                        key: "bogus.key".into(),
                        values: vec!["x".into()],
                        not_values: vec![],
                    }],
                }],
                action: AuthorizationAction::Custom,
                ..Default::default()
            },
        );
        let e = errs(r).join("\n");
        for needle in [
            "Cannot set serviceAccounts with namespaces or principals",
            "spec.rules[0].from[0].source.ipBlocks[0]: 300.0.0.1 is not a valid IP",
            "`to` must not be empty",
            "unknown attribute: bogus.key",
            "must specify provider when using CUSTOM action",
        ] {
            assert!(e.contains(needle), "{needle} missing from {e}");
        }
    }

    #[test]
    fn jwt_rules() {
        let mut r = Report::default();
        validate_request_authentication(
            &mut r,
            &FieldPath::from("spec"),
            "default",
            &RequestAuthenticationSpec {
                jwt_rules: vec![JwtRule {
                    jwks_uri: "example.com/jwks".into(),
                    audiences: vec!["".into()],
                    output_claim_to_headers: vec![ClaimToHeader {
                        header: ":authority".into(),
                        claim: "sub".into(),
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            },
        );
        let e = errs(r).join("\n");
        assert!(e.contains("issuer must be set"));
        assert!(e.contains("url must have scheme"));
        assert!(e.contains("spec.jwtRules[0].audiences[0]: should be at least 1 chars long"));
        assert!(e.contains(
            "spec.jwtRules[0].outputClaimToHeaders[0].header: \":authority\" should match"
        ));
    }

    #[test]
    fn target_refs() {
        let mut r = Report::default();
        let bad = PolicyTargetReference {
            group: "__".into(),
            kind: "Service".into(),
            name: String::new(),
            namespace: "other".into(),
        };
        validate_request_authentication(
            &mut r,
            &FieldPath::from("spec"),
            "default",
            &RequestAuthenticationSpec {
                target_ref: Some(bad),
                selector: Some(WorkloadSelector::default()),
                ..Default::default()
            },
        );
        let e = errs(r).join("\n");
        assert!(e.contains("only one of targetRefs or selector can be set"));
        assert!(e.contains("spec.targetRef.name: Required value"));
        assert!(e.contains("spec.targetRef.group: \"__\" should match"));
        assert!(e.contains("cross namespace referencing is not currently supported"));
    }

    #[test]
    fn path_templates() {
        assert!(validate_path_template("/{**}/path/template").is_ok());
        assert!(validate_path_template("/path/{*}").is_ok());
        assert!(validate_path_template("/a/{x}").is_err());
        assert!(validate_path_template("/{**}/{**}").is_err());
    }
}

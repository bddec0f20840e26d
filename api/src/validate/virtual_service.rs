//! VirtualService rules.

use std::collections::BTreeMap;

use super::names::{
    self, hosts_overlap, validate_export_to, validate_fqdn, validate_header_name,
    validate_header_value, validate_ip_subnet, validate_labels, validate_match_header_name,
    validate_port, validate_regex, validate_wildcard_domain,
};
use super::{Report, validate_duration_ms};
use crate::networking::{
    CorsPolicy, Destination, HeaderOperations, Headers, HttpDirectResponse, HttpFaultInjection,
    HttpMatchRequest, HttpRedirect, HttpRetry, HttpRewrite, HttpRoute, HttpRouteDestination,
    L4MatchAttributes, Percent, RouteDestination, StringMatch, TlsMatchAttributes,
    VirtualServiceSpec,
};
use crate::path::FieldPath;

const MESH_GATEWAY: &str = "mesh";

const RETRY_ON: &[&str] = &[
    "5xx",
    "gateway-error",
    "reset",
    "reset-before-request",
    "connect-failure",
    "envoy-ratelimited",
    "retriable-4xx",
    "refused-stream",
    "retriable-status-codes",
    "retriable-headers",
    "http3-post-connect-failure",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
];

const HTTP_METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "CONNECT", "OPTIONS", "TRACE",
];

/// Larger bodies are copied into every proxy's config; Istio draws the line at 1 MiB.
const MAX_DIRECT_RESPONSE_BODY: usize = 1024 * 1024;

pub(super) fn validate(r: &mut Report, spec: &FieldPath, namespace: &str, vs: &VirtualServiceSpec) {
    // A VirtualService without hosts is a delegate: it is only reachable from another one.
    let delegate = vs.hosts.is_empty();
    if delegate {
        if !vs.gateways.is_empty() {
            r.error(
                &spec.field("gateways"),
                "delegate virtual service must have no gateways specified",
            );
        }
        if !vs.tls.is_empty() {
            r.error(
                &spec.field("tls"),
                "delegate virtual service must have no tls route specified",
            );
        }
        if !vs.tcp.is_empty() {
            r.error(
                &spec.field("tcp"),
                "delegate virtual service must have no tcp route specified",
            );
        }
    }

    let mut applies_to_mesh = vs.gateways.is_empty();
    for (i, gw) in vs.gateways.iter().enumerate() {
        validate_gateway_name(r, &spec.field("gateways").index(i), gw);
        if gw == MESH_GATEWAY {
            applies_to_mesh = true;
        }
    }

    let mut all_hosts_valid = true;
    for (i, host) in vs.hosts.iter().enumerate() {
        let at = spec.field("hosts").index(i);
        if let Err(e) = validate_wildcard_domain(host) {
            if names::parse_ip(host).is_none() {
                r.error(&at, e);
                all_hosts_valid = false;
            }
        } else if applies_to_mesh && host == "*" {
            r.error(
                &at,
                "wildcard host * is not allowed for virtual services bound to the mesh gateway",
            );
            all_hosts_valid = false;
        }
    }
    if all_hosts_valid {
        for i in 0..vs.hosts.len() {
            for j in i + 1..vs.hosts.len() {
                if hosts_overlap(&vs.hosts[i], &vs.hosts[j]) {
                    r.error(
                        &spec.field("hosts").index(j),
                        format!(
                            "duplicate hosts in virtual service: {} & {}",
                            vs.hosts[i], vs.hosts[j]
                        ),
                    );
                }
            }
        }
    }

    if vs.http.is_empty() && vs.tcp.is_empty() && vs.tls.is_empty() {
        r.error(spec, "http, tcp or tls must be provided in virtual service");
    }

    let mut route_names: Vec<&str> = Vec::new();
    for (i, route) in vs.http.iter().enumerate() {
        let at = spec.field("http").index(i);
        if !route.name.is_empty() {
            if route_names.contains(&route.name.as_str()) {
                r.warn(
                    &at.field("name"),
                    format!("duplicate route name {:?}", route.name),
                );
            }
            route_names.push(&route.name);
        }
        validate_http_route(r, &at, route, delegate);
        if i + 1 < vs.http.len() && is_catch_all(route) {
            r.warn(
                &at,
                "this route matches every request, so the routes after it are never used",
            );
        }
    }
    for (i, route) in vs.tls.iter().enumerate() {
        let at = spec.field("tls").index(i);
        if route.matches.is_empty() {
            r.error(
                &at.field("match"),
                "TLS route must have at least one match condition",
            );
        }
        for (j, m) in route.matches.iter().enumerate() {
            validate_tls_match(r, &at.field("match").index(j), m, &vs.hosts);
        }
        if route.route.is_empty() {
            r.error(&at.field("route"), "TLS route is required");
        }
        validate_route_destinations(r, &at.field("route"), &route.route);
    }
    for (i, route) in vs.tcp.iter().enumerate() {
        let at = spec.field("tcp").index(i);
        for (j, m) in route.matches.iter().enumerate() {
            validate_l4_match(r, &at.field("match").index(j), m);
        }
        if route.route.is_empty() {
            r.error(&at.field("route"), "TCP route is required");
        }
        validate_route_destinations(r, &at.field("route"), &route.route);
    }
    validate_export_to(r, &spec.field("exportTo"), namespace, &vs.export_to, false);
}

fn is_catch_all(route: &HttpRoute) -> bool {
    route.matches.is_empty()
        || route.matches.iter().any(|m| {
            let uri_all = m
                .uri
                .as_ref()
                .is_none_or(|u| u.prefix.as_deref() == Some("/") || is_empty_match(u));
            uri_all
                && m.scheme.is_none()
                && m.method.is_none()
                && m.authority.is_none()
                && m.headers.is_empty()
                && m.port == 0
                && m.source_labels.is_empty()
                && m.gateways.is_empty()
                && m.query_params.is_empty()
                && m.without_headers.is_empty()
                && m.source_namespace.is_empty()
        })
}

fn is_empty_match(m: &StringMatch) -> bool {
    m.exact.is_none() && m.prefix.is_none() && m.regex.is_none()
}

/// `<namespace>/<name>`, the legacy `<name>.<namespace>...` form, or `mesh`.
pub(super) fn validate_gateway_name(r: &mut Report, at: &FieldPath, gw: &str) {
    match gw.split_once('/') {
        None => {
            if let Some((name, ns)) = gw.split_once('.') {
                let ns = ns.split('.').next().unwrap_or(ns);
                r.warn(
                    at,
                    format!(
                        "using legacy gatewayName format {gw:?}; prefer the <namespace>/<name> format: \"{ns}/{name}\""
                    ),
                );
            }
            r.check(at, validate_fqdn(gw));
        }
        Some((ns, name)) => {
            if ns.is_empty() || name.is_empty() {
                r.error(at, "config namespace and gateway name cannot be empty");
                return;
            }
            if !names::is_dns1123_label(ns) {
                r.error(at, format!("invalid value for namespace: {ns:?}"));
            }
            if !names::is_dns1123_label(name) {
                r.error(at, format!("invalid value for gateway name: {name:?}"));
            }
        }
    }
}

fn validate_http_route(r: &mut Report, at: &FieldPath, h: &HttpRoute, delegate: bool) {
    if delegate && h.delegate.is_some() {
        r.error(
            &at.field("delegate"),
            "delegate virtual service cannot itself delegate",
        );
    }
    if let Some(d) = &h.delegate {
        let dp = at.field("delegate");
        if d.name.is_empty() {
            r.error(&dp.field("name"), "delegate name is required");
        } else if !names::is_dns1123_subdomain(&d.name) {
            r.error(
                &dp.field("name"),
                format!("invalid delegate name {:?}", d.name),
            );
        }
        if !d.namespace.is_empty() && !names::is_lowercase_dns1123_label(&d.namespace) {
            r.error(
                &dp.field("namespace"),
                format!("invalid delegate namespace {:?}", d.namespace),
            );
        }
        if !h.route.is_empty() {
            r.error(
                &at.field("route"),
                "HTTP route must not be set when delegate is set",
            );
        }
        if h.redirect.is_some() {
            r.error(
                &at.field("redirect"),
                "HTTP redirect must not be set when delegate is set",
            );
        }
        if h.direct_response.is_some() {
            r.error(
                &at.field("directResponse"),
                "HTTP direct response must not be set when delegate is set",
            );
        }
    }

    // What a route does with a request: exactly one way.
    if h.redirect.is_some() {
        if !h.route.is_empty() {
            r.error(at, "HTTP route cannot contain both route and redirect");
        }
        if h.fault.is_some() {
            r.error(at, "HTTP route cannot contain both fault and redirect");
        }
        if h.rewrite.is_some() {
            r.error(
                at,
                "HTTP route rule cannot contain both rewrite and redirect",
            );
        }
        if h.direct_response.is_some() {
            r.error(
                at,
                "HTTP route cannot contain both redirect and direct response",
            );
        }
    }
    if h.direct_response.is_some() {
        if !h.route.is_empty() {
            r.error(
                at,
                "HTTP route cannot contain both route and direct response",
            );
        }
        if h.fault.is_some() {
            r.error(
                at,
                "HTTP route cannot contain both fault and direct response",
            );
        }
        if h.rewrite.is_some() {
            r.error(
                at,
                "HTTP route rule cannot contain both rewrite and direct response",
            );
        }
    }
    if h.redirect.is_none()
        && h.direct_response.is_none()
        && h.route.is_empty()
        && h.delegate.is_none()
    {
        r.error(
            at,
            "HTTP route, redirect, direct response or delegate is required",
        );
    }

    for (i, m) in h.matches.iter().enumerate() {
        validate_http_match(r, &at.field("match").index(i), m);
    }
    if let Some(headers) = &h.headers {
        validate_headers(r, &at.field("headers"), headers);
    }
    if let Some(cors) = &h.cors_policy {
        validate_cors(r, &at.field("corsPolicy"), cors);
    }
    if let Some(fault) = &h.fault {
        validate_fault(r, &at.field("fault"), fault);
    }
    if let Some(p) = h.mirror_percent {
        r.warn(
            &at.field("mirrorPercent"),
            "mirrorPercent is deprecated; use mirrorPercentage",
        );
        if p > 100 {
            r.error(
                &at.field("mirrorPercent"),
                format!("mirror_percent must have a max value of 100 (it has {p})"),
            );
        }
    }
    if let Some(p) = &h.mirror_percentage {
        r.check(
            &at.field("mirrorPercentage").field("value"),
            validate_percentage(p),
        );
    }
    if h.mirror.is_some() && !h.mirrors.is_empty() {
        r.error(at, "`mirror` and `mirrors` cannot both be set");
    }
    if let Some(m) = &h.mirror {
        validate_destination(r, &at.field("mirror"), m);
    }
    for (i, m) in h.mirrors.iter().enumerate() {
        let mp = at.field("mirrors").index(i);
        match &m.destination {
            Some(d) => validate_destination(r, &mp.field("destination"), d),
            None => r.error(&mp.field("destination"), "Required value"),
        }
        if let Some(p) = &m.percentage {
            r.check(
                &mp.field("percentage").field("value"),
                validate_percentage(p),
            );
        }
    }
    if let Some(redirect) = &h.redirect {
        validate_redirect(r, &at.field("redirect"), redirect);
    }
    if let Some(dr) = &h.direct_response {
        validate_direct_response(r, &at.field("directResponse"), dr);
    }
    if let Some(retries) = &h.retries {
        validate_retry(r, &at.field("retries"), retries);
    }
    if let Some(rewrite) = &h.rewrite {
        validate_rewrite(r, &at.field("rewrite"), rewrite, h.headers.as_ref());
    }
    validate_http_route_destinations(r, &at.field("route"), &h.route);
    if h.websocket_upgrade.is_some() {
        r.warn(
            &at.field("websocketUpgrade"),
            "websocketUpgrade is obsolete and has no effect: WebSocket upgrades are always allowed",
        );
    }
    if let Some(t) = &h.timeout
        && !t.as_std().is_zero()
    {
        validate_duration_ms(r, &at.field("timeout"), t);
    }
}

fn validate_string_match(r: &mut Report, at: &FieldPath, m: &StringMatch) {
    let set = [m.exact.is_some(), m.prefix.is_some(), m.regex.is_some()]
        .iter()
        .filter(|b| **b)
        .count();
    if set > 1 {
        r.error(at, "only one of exact, prefix or regex may be set");
    }
    if let Some(re) = &m.regex {
        r.check(&at.field("regex"), validate_regex(re));
    }
}

fn validate_http_match(r: &mut Report, at: &FieldPath, m: &HttpMatchRequest) {
    for (field, value) in [
        ("uri", &m.uri),
        ("scheme", &m.scheme),
        ("method", &m.method),
        ("authority", &m.authority),
    ] {
        if let Some(v) = value {
            validate_string_match(r, &at.field(field), v);
        }
    }
    validate_match_map(r, &at.field("headers"), &m.headers, true);
    validate_match_map(r, &at.field("withoutHeaders"), &m.without_headers, true);
    validate_match_map(r, &at.field("queryParams"), &m.query_params, false);
    if m.port != 0 {
        r.check(&at.field("port"), validate_port(m.port));
    }
    validate_labels(r, &at.field("sourceLabels"), &m.source_labels);
    for (i, gw) in m.gateways.iter().enumerate() {
        validate_gateway_name(r, &at.field("gateways").index(i), gw);
    }
    if !m.source_namespace.is_empty() && !names::is_dns1123_label(&m.source_namespace) {
        r.error(
            &at.field("sourceNamespace"),
            format!("sourceNamespace match {} is invalid", m.source_namespace),
        );
    }
}

fn validate_match_map(
    r: &mut Report,
    at: &FieldPath,
    map: &BTreeMap<String, StringMatch>,
    headers: bool,
) {
    for (name, m) in map {
        let p = at.field(name);
        if headers {
            r.check(&p, validate_match_header_name(name));
        } else if name.is_empty() {
            r.error(&p, "query parameter name cannot be empty");
        }
        validate_string_match(r, &p, m);
    }
}

fn validate_header_operations(r: &mut Report, at: &FieldPath, ops: &HeaderOperations) {
    for (field, map) in [("set", &ops.set), ("add", &ops.add)] {
        for (name, value) in map {
            let p = at.field(field).field(name);
            r.check(&p, validate_header_name(name));
            r.check(&p, validate_header_value(value));
        }
    }
    for (i, name) in ops.remove.iter().enumerate() {
        r.check(&at.field("remove").index(i), validate_header_name(name));
    }
}

fn validate_headers(r: &mut Report, at: &FieldPath, h: &Headers) {
    if let Some(ops) = &h.request {
        validate_header_operations(r, &at.field("request"), ops);
    }
    if let Some(ops) = &h.response {
        validate_header_operations(r, &at.field("response"), ops);
    }
}

fn validate_cors(r: &mut Report, at: &FieldPath, c: &CorsPolicy) {
    if !c.allow_origin.is_empty() {
        r.warn(
            &at.field("allowOrigin"),
            "allowOrigin is deprecated; use allowOrigins",
        );
    }
    for (i, origin) in c.allow_origins.iter().enumerate() {
        let p = at.field("allowOrigins").index(i);
        if is_empty_match(origin) {
            r.error(&p, "an allowed origin must set exact, prefix or regex");
        }
        validate_string_match(r, &p, origin);
    }
    for (i, method) in c.allow_methods.iter().enumerate() {
        if !HTTP_METHODS.contains(&method.as_str()) {
            r.error(
                &at.field("allowMethods").index(i),
                format!("{method:?} is not a supported HTTP method"),
            );
        }
    }
    for (field, list) in [
        ("allowHeaders", &c.allow_headers),
        ("exposeHeaders", &c.expose_headers),
    ] {
        for (i, h) in list.iter().enumerate() {
            // `*` is how CORS says "any header".
            if h != "*" {
                r.check(&at.field(field).index(i), validate_header_name(h));
            }
        }
    }
    if let Some(max_age) = &c.max_age {
        validate_duration_ms(r, &at.field("maxAge"), max_age);
        if max_age.as_std().subsec_nanos() != 0 {
            r.error(
                &at.field("maxAge"),
                "max_age duration is accurate only to seconds precision",
            );
        }
    }
}

fn validate_percentage(p: &Percent) -> Result<(), String> {
    let v = p.value;
    if !(0.0..=100.0).contains(&v) || (v > 0.0 && v < 0.0001) {
        Err(format!(
            "percentage {v} is neither 0.0, nor in range [0.0001, 100.0]"
        ))
    } else {
        Ok(())
    }
}

fn validate_fault(r: &mut Report, at: &FieldPath, f: &HttpFaultInjection) {
    if f.abort.is_none() && f.delay.is_none() {
        r.error(at, "HTTP fault injection must have an abort and/or a delay");
    }
    if let Some(abort) = &f.abort {
        let p = at.field("abort");
        if let Some(pct) = &abort.percentage {
            r.check(
                &p.field("percentage").field("value"),
                validate_percentage(pct),
            );
        }
        let kinds = [
            abort.http_status.is_some(),
            abort.grpc_status.is_some(),
            abort.http2_error.is_some(),
        ];
        match kinds.iter().filter(|b| **b).count() {
            0 => r.error(
                &p,
                "abort must set one of httpStatus, grpcStatus or http2Error",
            ),
            1 => {}
            _ => r.error(
                &p,
                "abort may set only one of httpStatus, grpcStatus or http2Error",
            ),
        }
        if let Some(status) = abort.http_status
            && !(200..=599).contains(&status)
        {
            r.error(
                &p.field("httpStatus"),
                format!("HTTP status {status} is not in range 200-599"),
            );
        }
        if let Some(grpc) = &abort.grpc_status
            && grpc.is_empty()
        {
            r.error(&p.field("grpcStatus"), "grpcStatus cannot be empty");
        }
        if abort.http2_error.is_some() {
            r.error(
                &p.field("http2Error"),
                "HTTP/2 abort fault injection not supported yet",
            );
        }
    }
    if let Some(delay) = &f.delay {
        let p = at.field("delay");
        if let Some(pct) = &delay.percentage {
            r.check(
                &p.field("percentage").field("value"),
                validate_percentage(pct),
            );
        }
        if let Some(pct) = delay.percent {
            r.warn(&p.field("percent"), "percent is deprecated; use percentage");
            if !(0..=100).contains(&pct) {
                r.error(
                    &p.field("percent"),
                    format!("percentage {pct} is not in range 0..100"),
                );
            }
        }
        match (&delay.fixed_delay, &delay.exponential_delay) {
            (Some(d), None) => validate_duration_ms(r, &p.field("fixedDelay"), d),
            (None, Some(d)) => {
                validate_duration_ms(r, &p.field("exponentialDelay"), d);
                r.error(
                    &p.field("exponentialDelay"),
                    "exponentialDelay not supported yet",
                );
            }
            (None, None) => r.error(&p, "delay must set fixedDelay or exponentialDelay"),
            (Some(_), Some(_)) => r.error(
                &p,
                "delay may set only one of fixedDelay or exponentialDelay",
            ),
        }
    }
}

pub(super) fn validate_destination(r: &mut Report, at: &FieldPath, d: &Destination) {
    if d.host == "*" {
        r.error(
            &at.field("host"),
            format!("invalid destination host {}", d.host),
        );
    } else {
        r.check(&at.field("host"), validate_wildcard_domain(&d.host));
    }
    if !d.subset.is_empty() && !names::is_dns1123_label(&d.subset) {
        r.error(
            &at.field("subset"),
            format!("subset name is invalid: {}", d.subset),
        );
    }
    if let Some(port) = &d.port
        && port.number != 0
    {
        r.check(
            &at.field("port").field("number"),
            validate_port(port.number),
        );
    }
}

fn validate_redirect(r: &mut Report, at: &FieldPath, red: &HttpRedirect) {
    if red.uri.is_empty()
        && red.authority.is_empty()
        && red.port.is_none()
        && red.derive_port.is_none()
        && red.scheme.is_empty()
    {
        r.error(at, "redirect must specify URI, authority, scheme, or port");
    }
    if red.port.is_some() && red.derive_port.is_some() {
        r.error(at, "redirect may set only one of port or derivePort");
    }
    if red.redirect_code != 0 && !(300..=399).contains(&red.redirect_code) {
        r.error(
            &at.field("redirectCode"),
            format!(
                "{} is not a valid redirect code, must be 3xx",
                red.redirect_code
            ),
        );
    }
    if !red.scheme.is_empty() && red.scheme != "http" && red.scheme != "https" {
        r.error(
            &at.field("scheme"),
            "invalid redirect scheme, must be \"http\" or \"https\"",
        );
    }
    if let Some(port) = red.port {
        r.check(&at.field("port"), validate_port(port));
    }
}

fn validate_direct_response(r: &mut Report, at: &FieldPath, dr: &HttpDirectResponse) {
    if !(200..=599).contains(&dr.status) {
        r.error(
            &at.field("status"),
            format!("status {} is not in range 200-599", dr.status),
        );
    }
    if let Some(body) = &dr.body {
        let size = match (&body.string, &body.bytes) {
            (Some(_), Some(_)) => {
                r.error(
                    &at.field("body"),
                    "body may set only one of string or bytes",
                );
                0
            }
            (Some(s), None) => s.len(),
            (None, Some(b)) => b.len() / 4 * 3,
            (None, None) => 0,
        };
        if size > MAX_DIRECT_RESPONSE_BODY {
            r.error(
                &at.field("body"),
                format!(
                    "large direct_responses may impact control plane performance, must be less than {MAX_DIRECT_RESPONSE_BODY} bytes"
                ),
            );
        }
    }
}

fn validate_retry(r: &mut Report, at: &FieldPath, retry: &HttpRetry) {
    if retry.attempts < 0 {
        r.error(&at.field("attempts"), "attempts cannot be negative");
    }
    if retry.attempts == 0
        && (retry.per_try_timeout.is_some()
            || !retry.retry_on.is_empty()
            || retry.retry_remote_localities.is_some())
    {
        r.warn(
            at,
            "http retry policy configured when attempts are set to 0 (disabled)",
        );
    }
    if let Some(t) = &retry.per_try_timeout {
        validate_duration_ms(r, &at.field("perTryTimeout"), t);
    }
    if let Some(t) = &retry.backoff {
        validate_duration_ms(r, &at.field("backoff"), t);
    }
    if !retry.retry_on.is_empty() {
        for policy in retry.retry_on.split(',') {
            let policy = policy.trim();
            match policy.parse::<u16>() {
                Ok(code) if !(100..=599).contains(&code) => r.error(
                    &at.field("retryOn"),
                    format!("{policy:?} is not a valid HTTP status code"),
                ),
                Ok(_) => {}
                Err(_) if RETRY_ON.contains(&policy) => {}
                Err(_) => r.error(
                    &at.field("retryOn"),
                    format!("{policy:?} is not a valid retryOn policy"),
                ),
            }
        }
    }
}

fn validate_rewrite(r: &mut Report, at: &FieldPath, rw: &HttpRewrite, headers: Option<&Headers>) {
    if !rw.uri.is_empty() && rw.uri_regex_rewrite.is_some() {
        r.error(at, "rewrite may only contain one of URI or UriRegexRewrite");
    }
    if rw.uri.is_empty() && rw.uri_regex_rewrite.is_none() && rw.authority.is_empty() {
        r.error(
            at,
            "rewrite must specify at least one of URI, UriRegexRewrite, or authority. Only one of URI or UriRegexRewrite may be specified",
        );
    }
    if let Some(re) = &rw.uri_regex_rewrite {
        let p = at.field("uriRegexRewrite");
        if re.pattern.is_empty() {
            r.error(
                &p.field("match"),
                "UriRegexRewrite requires Match to be set",
            );
        } else {
            r.check(&p.field("match"), validate_regex(&re.pattern));
        }
    }
    if !rw.authority.is_empty()
        && let Some(req) = headers.and_then(|h| h.request.as_ref())
    {
        let sets_host = req
            .set
            .keys()
            .chain(req.add.keys())
            .any(|k| k.eq_ignore_ascii_case("host") || k == ":authority");
        if sets_host {
            r.error(
                &at.field("authority"),
                "authority rewrite is set; headers cannot also set :authority or host",
            );
        }
    }
}

fn validate_weight(r: &mut Report, at: &FieldPath, weight: i32) {
    if !(0..=100).contains(&weight) {
        r.error(at, "must be between 0 and 100");
    }
}

fn check_total_weight(r: &mut Report, at: &FieldPath, count: usize, total: i64) {
    if count > 1 && total == 0 {
        r.error(at, "total destination weight = 0");
    } else if count > 1 && total != 100 {
        r.warn(
            at,
            format!("destination weights add up to {total}, not 100; they are used as relative proportions"),
        );
    }
}

fn validate_http_route_destinations(
    r: &mut Report,
    at: &FieldPath,
    routes: &[HttpRouteDestination],
) {
    let mut total: i64 = 0;
    for (i, rd) in routes.iter().enumerate() {
        let p = at.index(i);
        match &rd.destination {
            Some(d) => validate_destination(r, &p.field("destination"), d),
            None => r.error(&p.field("destination"), "destination is required"),
        }
        if let Some(h) = &rd.headers {
            validate_headers(r, &p.field("headers"), h);
        }
        validate_weight(r, &p.field("weight"), rd.weight);
        total += i64::from(rd.weight);
    }
    check_total_weight(r, at, routes.len(), total);
}

fn validate_route_destinations(r: &mut Report, at: &FieldPath, routes: &[RouteDestination]) {
    let mut total: i64 = 0;
    for (i, rd) in routes.iter().enumerate() {
        let p = at.index(i);
        match &rd.destination {
            Some(d) => validate_destination(r, &p.field("destination"), d),
            None => r.error(&p.field("destination"), "destination is required"),
        }
        validate_weight(r, &p.field("weight"), rd.weight);
        total += i64::from(rd.weight);
    }
    check_total_weight(r, at, routes.len(), total);
}

fn validate_tls_match(r: &mut Report, at: &FieldPath, m: &TlsMatchAttributes, hosts: &[String]) {
    if m.sni_hosts.is_empty() {
        r.error(
            &at.field("sniHosts"),
            "TLS match must have at least one SNI host",
        );
    }
    for (i, sni) in m.sni_hosts.iter().enumerate() {
        let p = at.field("sniHosts").index(i);
        if let Err(e) = validate_wildcard_domain(sni) {
            if names::parse_ip(sni).is_none() {
                r.error(&p, e);
            }
            continue;
        }
        if !hosts.iter().any(|h| names::host_subset_of(sni, h)) {
            r.error(
                &p,
                format!(
                    "SNI host {sni:?} is not a compatible subset of any of the virtual service hosts: [{}]",
                    hosts.join(", ")
                ),
            );
        }
    }
    for (i, subnet) in m.destination_subnets.iter().enumerate() {
        r.check(
            &at.field("destinationSubnets").index(i),
            validate_ip_subnet(subnet),
        );
    }
    if m.port != 0 {
        r.check(&at.field("port"), validate_port(m.port));
    }
    validate_labels(r, &at.field("sourceLabels"), &m.source_labels);
    for (i, gw) in m.gateways.iter().enumerate() {
        validate_gateway_name(r, &at.field("gateways").index(i), gw);
    }
    if !m.source_namespace.is_empty() && !names::is_dns1123_label(&m.source_namespace) {
        r.error(
            &at.field("sourceNamespace"),
            format!("sourceNamespace match {} is invalid", m.source_namespace),
        );
    }
}

fn validate_l4_match(r: &mut Report, at: &FieldPath, m: &L4MatchAttributes) {
    for (i, subnet) in m.destination_subnets.iter().enumerate() {
        r.check(
            &at.field("destinationSubnets").index(i),
            validate_ip_subnet(subnet),
        );
    }
    if !m.source_subnet.is_empty() {
        r.check(
            &at.field("sourceSubnet"),
            validate_ip_subnet(&m.source_subnet),
        );
    }
    if m.port != 0 {
        r.check(&at.field("port"), validate_port(m.port));
    }
    validate_labels(r, &at.field("sourceLabels"), &m.source_labels);
    for (i, gw) in m.gateways.iter().enumerate() {
        validate_gateway_name(r, &at.field("gateways").index(i), gw);
    }
    if !m.source_namespace.is_empty() && !names::is_dns1123_label(&m.source_namespace) {
        r.error(
            &at.field("sourceNamespace"),
            format!("sourceNamespace match {} is invalid", m.source_namespace),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::networking::PortSelector;

    fn route_to(host: &str, weight: i32) -> HttpRouteDestination {
        HttpRouteDestination {
            destination: Some(Destination {
                host: host.into(),
                ..Default::default()
            }),
            weight,
            headers: None,
        }
    }

    fn vs(http: Vec<HttpRoute>) -> VirtualServiceSpec {
        VirtualServiceSpec {
            hosts: vec!["reviews".into()],
            http,
            ..Default::default()
        }
    }

    fn run(spec: &VirtualServiceSpec) -> Report {
        let mut r = Report::default();
        validate(&mut r, &FieldPath::from("spec"), "default", spec);
        r
    }

    fn paths(r: &Report) -> Vec<String> {
        r.errors.iter().map(|e| e.to_string()).collect()
    }

    #[test]
    fn weight_out_of_range_names_its_path() {
        let r = run(&vs(vec![HttpRoute {
            route: vec![route_to("a", 50), route_to("b", 150)],
            ..Default::default()
        }]));
        assert!(
            paths(&r)
                .contains(&"spec.http[0].route[1].weight: must be between 0 and 100".to_owned()),
            "{:?}",
            paths(&r)
        );
    }

    #[test]
    fn weights_not_summing_to_100_warn_and_zero_total_fails() {
        let r = run(&vs(vec![HttpRoute {
            route: vec![route_to("a", 1), route_to("b", 1)],
            ..Default::default()
        }]));
        assert!(r.errors.is_empty(), "{:?}", paths(&r));
        assert_eq!(r.warnings.len(), 1);
        let r = run(&vs(vec![HttpRoute {
            route: vec![route_to("a", 0), route_to("b", 0)],
            ..Default::default()
        }]));
        assert!(paths(&r)[0].contains("total destination weight = 0"));
    }

    #[test]
    fn route_needs_an_action() {
        let r = run(&vs(vec![HttpRoute::default()]));
        assert!(
            paths(&r)[0].contains("HTTP route, redirect, direct response or delegate is required")
        );
    }

    #[test]
    fn bad_regex_and_two_match_kinds() {
        let r = run(&vs(vec![HttpRoute {
            matches: vec![HttpMatchRequest {
                uri: Some(StringMatch {
                    regex: Some("(?<=x)".into()),
                    prefix: Some("/".into()),
                    exact: None,
                }),
                ..Default::default()
            }],
            route: vec![route_to("a", 0)],
            ..Default::default()
        }]));
        let p = paths(&r);
        assert!(
            p.iter()
                .any(|e| e.starts_with("spec.http[0].match[0].uri.regex: ")),
            "{p:?}"
        );
        assert!(
            p.iter()
                .any(|e| e.starts_with("spec.http[0].match[0].uri: only one")),
            "{p:?}"
        );
    }

    #[test]
    fn mesh_wildcard_host_and_duplicates() {
        let spec = VirtualServiceSpec {
            hosts: vec!["*".into()],
            http: vec![HttpRoute {
                route: vec![route_to("a", 0)],
                ..Default::default()
            }],
            ..Default::default()
        };
        assert!(paths(&run(&spec))[0].contains("wildcard host * is not allowed"));
        let spec = VirtualServiceSpec {
            hosts: vec!["*.foo.com".into(), "a.foo.com".into()],
            ..spec
        };
        assert!(
            paths(&run(&spec))
                .iter()
                .any(|e| e.contains("duplicate hosts"))
        );
    }

    #[test]
    fn redirect_retry_fault_rules() {
        let r = run(&vs(vec![HttpRoute {
            redirect: Some(HttpRedirect {
                redirect_code: 200,
                ..Default::default()
            }),
            retries: Some(HttpRetry {
                attempts: -1,
                retry_on: "5xx,bogus".into(),
                ..Default::default()
            }),
            fault: Some(HttpFaultInjection::default()),
            ..Default::default()
        }]));
        let p = paths(&r).join("\n");
        for needle in [
            "redirect must specify URI",
            "200 is not a valid redirect code",
            "attempts cannot be negative",
            "\"bogus\" is not a valid retryOn policy",
            "must have an abort and/or a delay",
            "both fault and redirect",
        ] {
            assert!(p.contains(needle), "{needle} missing from {p}");
        }
    }

    #[test]
    fn destination_port_and_subset() {
        let mut r = Report::default();
        validate_destination(
            &mut r,
            &FieldPath::from("d"),
            &Destination {
                host: "*".into(),
                subset: "Bad_Subset".into(),
                port: Some(PortSelector { number: 70000 }),
            },
        );
        assert_eq!(r.errors.len(), 3, "{:?}", r.errors);
    }
}

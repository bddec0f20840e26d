//! Rules for the small strings every kind is full of: host names, labels, addresses, ports,
//! protocols. Each returns the message Istio gives, so an operator searching for it finds
//! the Istio documentation too.

use std::net::IpAddr;

use super::{Report, Violation};
use crate::path::FieldPath;

pub(crate) const PORT_RANGE: &str = "port must be between 1-65535";

pub(crate) fn validate_port(port: u32) -> Result<(), String> {
    if (1..=65535).contains(&port) {
        Ok(())
    } else {
        Err(format!("{PORT_RANGE}, got {port}"))
    }
}

/// RFC 1123 label. Istio allows upper case in host names, so this does too.
pub(crate) fn is_dns1123_label(s: &str) -> bool {
    let bytes = s.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'-')
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
}

/// Kubernetes object names and namespaces are lower case.
pub(crate) fn is_lowercase_dns1123_label(s: &str) -> bool {
    is_dns1123_label(s) && !s.bytes().any(|b| b.is_ascii_uppercase())
}

pub(crate) fn is_dns1123_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_lowercase_dns1123_label)
}

/// `*`, `*foo`, `*-foo` or a plain label: a wildcard may only stand first.
fn is_wildcard_label(s: &str) -> bool {
    if s == "*" {
        return true;
    }
    if s.len() > 63 {
        return false;
    }
    let rest = s
        .strip_prefix("*-")
        .or_else(|| s.strip_prefix('*'))
        .unwrap_or(s);
    is_dns1123_label(rest)
}

fn check_dns1123_preconditions(name: &str) -> Result<(), String> {
    if name.len() > 255 {
        return Err(format!("domain name {name:?} too long (max 255)"));
    }
    if name.is_empty() {
        return Err("empty domain name not allowed".to_owned());
    }
    Ok(())
}

fn validate_dns1123_labels(domain: &str) -> Result<(), String> {
    let parts: Vec<&str> = domain.split('.').collect();
    let tld = parts[parts.len() - 1];
    if !tld.is_empty() && tld.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "domain name {domain:?} invalid (top level domain {tld:?} cannot be all-numeric)"
        ));
    }
    for (i, label) in parts.iter().enumerate() {
        // A trailing dot (`istio.io.`) is an unambiguous absolute name.
        if i == parts.len() - 1 && label.is_empty() && i > 0 {
            return Ok(());
        }
        if !is_dns1123_label(label) {
            return Err(format!(
                "domain name {domain:?} invalid (label {label:?} invalid)"
            ));
        }
    }
    Ok(())
}

pub(crate) fn validate_fqdn(fqdn: &str) -> Result<(), String> {
    check_dns1123_preconditions(fqdn)?;
    validate_dns1123_labels(fqdn)
}

/// A domain that may start with a wildcard label: `*.example.com`, `*`, `reviews`.
pub(crate) fn validate_wildcard_domain(domain: &str) -> Result<(), String> {
    check_dns1123_preconditions(domain)?;
    let (first, rest) = match domain.split_once('.') {
        Some((first, rest)) => (first, Some(rest)),
        None => (domain, None),
    };
    if !is_wildcard_label(first) {
        return Err(format!(
            "domain name {domain:?} invalid (label {first:?} invalid)"
        ));
    }
    match rest {
        Some(rest) => validate_dns1123_labels(rest),
        None => Ok(()),
    }
}

pub(crate) fn parse_ip(s: &str) -> Option<IpAddr> {
    s.parse().ok()
}

pub(crate) fn validate_ip(s: &str) -> Result<(), String> {
    parse_ip(s)
        .map(|_| ())
        .ok_or_else(|| format!("{s} is not a valid IP"))
}

/// An address (`1.2.3.4`, `2001:db8::1`) or a CIDR block (`10.0.0.0/8`).
pub(crate) fn validate_ip_subnet(s: &str) -> Result<(), String> {
    match s.split_once('/') {
        Some((ip, bits)) => {
            let ok = match (parse_ip(ip), bits.parse::<u8>()) {
                (Some(IpAddr::V4(_)), Ok(b)) => b <= 32,
                (Some(IpAddr::V6(_)), Ok(b)) => b <= 128,
                _ => false,
            };
            if ok && !bits.starts_with('+') {
                Ok(())
            } else {
                Err(format!("{s} is not a valid CIDR block"))
            }
        }
        None => validate_ip(s),
    }
}

pub(crate) fn validate_unix_address(addr: &str) -> Result<(), String> {
    if addr.is_empty() {
        return Err("unix address must not be empty".to_owned());
    }
    if addr.starts_with('@') {
        return Ok(());
    }
    if !addr.starts_with('/') || addr.ends_with('/') {
        return Err(format!("{addr} is not an absolute path to a file"));
    }
    Ok(())
}

/// Kubernetes label keys: an optional DNS-subdomain prefix and `/`, then a name of at most 63
/// characters of letters, digits, `-`, `_`, `.`, starting and ending alphanumeric.
pub(crate) fn is_label_key(key: &str) -> bool {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    prefix.is_none_or(is_dns1123_subdomain) && !name.is_empty() && is_label_value(name)
}

pub(crate) fn is_label_value(value: &str) -> bool {
    let b = value.as_bytes();
    b.is_empty()
        || (b.len() <= 63
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric())
}

pub(crate) fn validate_labels<'a>(
    report: &mut Report,
    path: &FieldPath,
    labels: impl IntoIterator<Item = (&'a String, &'a String)>,
) {
    for (k, v) in labels {
        if !is_label_key(k) {
            report.error(&path.field(k), format!("invalid label key: {k:?}"));
        } else if !is_label_value(v) {
            report.error(&path.field(k), format!("invalid label value: {v:?}"));
        }
    }
}

/// Selectors pick workloads by exact labels; a `*` would silently match nothing.
pub(crate) fn validate_selector_labels<'a>(
    report: &mut Report,
    path: &FieldPath,
    labels: impl IntoIterator<Item = (&'a String, &'a String)>,
) {
    for (k, v) in labels {
        let at = path.field(k);
        if k.is_empty() {
            report.error(&at, "empty key is not supported in selector");
        } else if k.contains('*') || v.contains('*') {
            report.error(&at, format!("wildcard is not supported in selector: {k:?}"));
        } else if !is_label_key(k) {
            report.error(&at, format!("invalid label key: {k:?}"));
        } else if !is_label_value(v) {
            report.error(&at, format!("invalid label value: {v:?}"));
        }
    }
}

pub(crate) fn validate_port_name(name: &str) -> Result<(), String> {
    if is_dns1123_label(name) {
        Ok(())
    } else {
        Err(format!("invalid port name: {name:?}"))
    }
}

/// The protocols Istio knows for a port. Anything else is refused where a protocol is named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocol {
    Tcp,
    Udp,
    Grpc,
    GrpcWeb,
    Http,
    HttpProxy,
    Http2,
    Https,
    Tls,
    Mongo,
    Redis,
    Mysql,
    Unsupported,
}

impl Protocol {
    pub(crate) fn parse(s: &str) -> Self {
        match s.to_ascii_lowercase().as_str() {
            "tcp" => Self::Tcp,
            "udp" => Self::Udp,
            "grpc" => Self::Grpc,
            "grpc-web" => Self::GrpcWeb,
            "http" => Self::Http,
            "http_proxy" => Self::HttpProxy,
            "http2" => Self::Http2,
            "https" => Self::Https,
            "tls" => Self::Tls,
            "mongo" => Self::Mongo,
            "redis" => Self::Redis,
            "mysql" => Self::Mysql,
            _ => Self::Unsupported,
        }
    }

    pub(crate) fn is_http(&self) -> bool {
        matches!(
            self,
            Self::Http | Self::Http2 | Self::Grpc | Self::GrpcWeb | Self::HttpProxy
        )
    }

    pub(crate) fn is_tls(&self) -> bool {
        matches!(self, Self::Https | Self::Tls)
    }

    pub(crate) fn is_tcp(&self) -> bool {
        matches!(
            self,
            Self::Tcp | Self::Https | Self::Tls | Self::Mongo | Self::Redis | Self::Mysql
        )
    }
}

/// An empty protocol asks for protocol detection, which is always allowed.
pub(crate) fn validate_protocol(protocol: &str) -> Result<(), String> {
    if !protocol.is_empty() && Protocol::parse(protocol) == Protocol::Unsupported {
        Err(format!("{protocol:?} is not a valid protocol"))
    } else {
        Ok(())
    }
}

/// Whether two host names can name the same host: equal, or a wildcard covering the other.
pub(crate) fn hosts_overlap(a: &str, b: &str) -> bool {
    host_matches(a, b) || host_matches(b, a)
}

/// Whether `pattern` (possibly `*.x` or `*`) covers `host`.
fn host_matches(pattern: &str, host: &str) -> bool {
    if pattern == host || pattern == "*" {
        return true;
    }
    match pattern.strip_prefix('*') {
        Some(suffix) => {
            host.ends_with(suffix)
                || host
                    .strip_prefix('*')
                    .is_some_and(|hs| hs.ends_with(suffix))
        }
        None => false,
    }
}

/// Whether every host `a` names is also named by `b`.
pub(crate) fn host_subset_of(a: &str, b: &str) -> bool {
    if a == b || b == "*" {
        return true;
    }
    match (a.strip_prefix('*'), b.strip_prefix('*')) {
        (_, None) => false,
        (None, Some(suffix)) => a.ends_with(suffix),
        (Some(sa), Some(sb)) => sa.ends_with(sb),
    }
}

/// `exportTo`: `.` (this namespace), `*` (all), `~` (nobody, ServiceEntry only) or namespaces.
pub(crate) fn validate_export_to(
    report: &mut Report,
    path: &FieldPath,
    namespace: &str,
    export_to: &[String],
    is_service_entry: bool,
) {
    let mut seen: Vec<&str> = Vec::new();
    for (i, e) in export_to.iter().enumerate() {
        let at = path.index(i);
        let key = if e == "." { namespace } else { e.as_str() };
        if seen.contains(&key) {
            if key != e {
                report.error(
                    &at,
                    format!("duplicate entries in exportTo: . and current namespace {namespace}"),
                );
            } else {
                report.error(&at, format!("duplicate entries in exportTo for entry {e}"));
            }
            continue;
        }
        seen.push(key);
        let ok = match e.as_str() {
            "." | "*" => true,
            "~" => is_service_entry,
            ns => is_lowercase_dns1123_label(ns),
        };
        if !ok {
            report.error(
                &at,
                format!("exportTo {e:?} is not a valid namespace, \".\", \"*\" or \"~\""),
            );
        }
    }
    if export_to.len() > 1 {
        if export_to.iter().any(|e| e == "*") {
            report.error(
                path,
                "cannot have both public (*) and non-public exportTo values for a resource",
            );
        }
        if export_to.iter().any(|e| e == "~") {
            report.error(
                path,
                "if ~ is specified in exportTo, nothing else can be specified",
            );
        }
    }
}

/// HTTP header names are RFC 7230 tokens.
pub(crate) fn validate_header_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("header name cannot be empty".to_owned());
    }
    let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if name.chars().all(token) {
        Ok(())
    } else {
        Err(format!("invalid header name: {name:?}"))
    }
}

/// A match may name a pseudo-header (`:authority`) or a JWT claim (`@request.auth.claims.x`).
pub(crate) fn validate_match_header_name(name: &str) -> Result<(), String> {
    if let Some(claim) = name.strip_prefix("@request.auth.claims") {
        return if claim.is_empty() || claim == "." {
            Err(format!("invalid JWT claim header {name:?}"))
        } else {
            Ok(())
        };
    }
    validate_header_name(name.strip_prefix(':').unwrap_or(name))
}

/// Header values set by the proxy may not contain line breaks (header injection).
pub(crate) fn validate_header_value(value: &str) -> Result<(), String> {
    if value.contains(['\r', '\n', '\0']) {
        Err(format!("invalid header value: {value:?}"))
    } else {
        Ok(())
    }
}

/// Checks a regex with the RE2-compatible engine the proxy uses.
pub(crate) fn validate_regex(re: &str) -> Result<(), String> {
    if re.is_empty() {
        return Err("regex string match should not be empty".to_owned());
    }
    regex::Regex::new(re).map(|_| ()).map_err(|e| {
        format!(
            "{re:?}: {}; Trellis, like Istio, uses RE2 regex syntax",
            e.to_string()
                .lines()
                .last()
                .unwrap_or("invalid regex")
                .trim()
        )
    })
}

pub(crate) fn violation(path: &FieldPath, message: impl Into<String>) -> Violation {
    Violation {
        path: path.clone(),
        message: message.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_domains() {
        for ok in [
            "*",
            "*.example.com",
            "reviews",
            "*x",
            "a.b.c",
            "istio.io.",
            "*-x.foo",
        ] {
            assert!(validate_wildcard_domain(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "a.*.com",
            "foo*",
            "-a.com",
            "a..b",
            "example.123",
            "a_b.com",
        ] {
            assert!(validate_wildcard_domain(bad).is_err(), "{bad}");
        }
        assert!(validate_fqdn("*.example.com").is_err());
        assert!(validate_fqdn(&"a".repeat(256)).is_err());
    }

    #[test]
    fn ip_and_cidr() {
        assert!(validate_ip_subnet("1.2.3.4").is_ok());
        assert!(validate_ip_subnet("1.2.3.4/16").is_ok());
        assert!(validate_ip_subnet("2001:db8::/32").is_ok());
        assert!(validate_ip_subnet("001:db8::").is_ok());
        assert!(validate_ip_subnet("1.2.3.4/99").is_err());
        assert!(validate_ip_subnet("1.2.3.4/").is_err());
        assert!(validate_ip_subnet("nope").is_err());
    }

    #[test]
    fn hosts_cover_each_other() {
        assert!(hosts_overlap("*.foo.com", "bar.foo.com"));
        assert!(hosts_overlap("a.com", "a.com"));
        assert!(!hosts_overlap("a.com", "b.com"));
        assert!(host_subset_of("a.foo.com", "*.foo.com"));
        assert!(!host_subset_of("*.foo.com", "a.foo.com"));
        assert!(host_subset_of("*.a.foo.com", "*.foo.com"));
    }

    #[test]
    fn labels_and_ports() {
        assert!(is_label_key("app"));
        assert!(is_label_key("app.kubernetes.io/name"));
        assert!(!is_label_key("*"));
        assert!(!is_label_key(""));
        assert!(is_label_value(""));
        assert!(!is_label_value("-x"));
        assert!(validate_port(0).is_err());
        assert!(validate_port(65536).unwrap_err().contains(PORT_RANGE));
        assert!(validate_protocol("").is_ok());
        assert!(validate_protocol("grpc-web").is_ok());
        assert!(validate_protocol("carrier-pigeon").is_err());
    }

    #[test]
    fn regexes_are_re2() {
        assert!(validate_regex("^/api/v[0-9]+").is_ok());
        assert!(validate_regex("(?=lookahead)").is_err());
        assert!(validate_regex("").is_err());
    }

    #[test]
    fn export_to_rules() {
        let path = FieldPath::from("spec.exportTo");
        let check = |list: &[&str], se: bool| {
            let mut r = Report::default();
            let list: Vec<String> = list.iter().map(|s| s.to_string()).collect();
            validate_export_to(&mut r, &path, "ns", &list, se);
            r.errors.len()
        };
        assert_eq!(check(&[".", "foo"], false), 0);
        assert_eq!(check(&[".", "ns"], false), 1);
        assert_eq!(check(&["*", "foo"], false), 1);
        assert_eq!(check(&["~"], false), 1);
        assert_eq!(check(&["~"], true), 0);
        assert_eq!(check(&["Bad_NS"], false), 1);
    }
}

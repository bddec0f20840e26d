//! Compiled request matchers and header operations. Regexes are compiled once, when the
//! snapshot is built, with RE2 semantics anchored at both ends as Envoy's `safe_regex` is.

use std::fmt;

use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Method};
use serde::{Serialize, Serializer};

#[derive(Clone)]
pub struct Pattern(pub regex::Regex);

impl Pattern {
    /// Anchored: Istio's `regex` must match the whole value.
    pub fn full(text: &str) -> Result<Self, regex::Error> {
        regex::Regex::new(&format!("^(?:{text})$")).map(Self)
    }

    /// Unanchored: for `uriRegexRewrite`, which replaces every match.
    pub fn partial(text: &str) -> Result<Self, regex::Error> {
        regex::Regex::new(text).map(Self)
    }
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0.as_str())
    }
}

impl Serialize for Pattern {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.0.as_str())
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum StringMatcher {
    /// Istio's empty StringMatch: the value must be present, anything goes.
    Present,
    Exact(String),
    Prefix(String),
    Regex(Pattern),
}

impl StringMatcher {
    pub fn matches(&self, value: &str) -> bool {
        match self {
            Self::Present => true,
            Self::Exact(e) => value == e,
            Self::Prefix(p) => value.starts_with(p.as_str()),
            Self::Regex(r) => r.0.is_match(value),
        }
    }

    fn matches_ignore_case(&self, value: &str) -> bool {
        match self {
            Self::Present => true,
            Self::Exact(e) => value.eq_ignore_ascii_case(e),
            Self::Prefix(p) => value
                .get(..p.len())
                .is_some_and(|head| head.eq_ignore_ascii_case(p)),
            Self::Regex(r) => r.0.is_match(value),
        }
    }
}

fn ser_name<S: Serializer>(name: &HeaderName, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(name.as_str())
}

fn ser_names<S: Serializer>(names: &[HeaderName], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(names.iter().map(HeaderName::as_str))
}

fn ser_pairs<S: Serializer>(pairs: &[(HeaderName, HeaderValue)], s: S) -> Result<S::Ok, S::Error> {
    s.collect_map(
        pairs
            .iter()
            .map(|(k, v)| (k.as_str(), String::from_utf8_lossy(v.as_bytes()))),
    )
}

#[derive(Debug, Clone, Serialize)]
pub struct HeaderMatch {
    #[serde(serialize_with = "ser_name")]
    pub name: HeaderName,
    pub matcher: StringMatcher,
}

/// One `match` block of a VirtualService HTTP route: every condition must hold.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RequestMatch {
    pub uri: Option<StringMatcher>,
    pub ignore_uri_case: bool,
    pub scheme: Option<StringMatcher>,
    pub method: Option<StringMatcher>,
    pub authority: Option<StringMatcher>,
    pub headers: Vec<HeaderMatch>,
    pub without_headers: Vec<HeaderMatch>,
    pub query_params: Vec<(String, StringMatcher)>,
    pub port: Option<u16>,
}

/// What a request looks like to the matchers, computed once per request.
pub struct RequestView<'a> {
    pub method: &'a Method,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub scheme: &'a str,
    pub authority: &'a str,
    pub headers: &'a HeaderMap,
    pub port: u16,
}

impl RequestMatch {
    pub fn matches(&self, req: &RequestView<'_>) -> bool {
        if let Some(uri) = &self.uri {
            let ok = if self.ignore_uri_case {
                uri.matches_ignore_case(req.path)
            } else {
                uri.matches(req.path)
            };
            if !ok {
                return false;
            }
        }
        if let Some(m) = &self.method
            && !m.matches(req.method.as_str())
        {
            return false;
        }
        if let Some(m) = &self.scheme
            && !m.matches(req.scheme)
        {
            return false;
        }
        if let Some(m) = &self.authority
            && !m.matches(req.authority)
        {
            return false;
        }
        if let Some(p) = self.port
            && p != req.port
        {
            return false;
        }
        for h in &self.headers {
            if !header_matches(req.headers, h) {
                return false;
            }
        }
        for h in &self.without_headers {
            if header_matches(req.headers, h) {
                return false;
            }
        }
        for (name, m) in &self.query_params {
            match query_param(req.query, name) {
                Some(v) if m.matches(&v) => {}
                _ => return false,
            }
        }
        true
    }
}

fn header_matches(headers: &HeaderMap, h: &HeaderMatch) -> bool {
    headers
        .get_all(&h.name)
        .iter()
        .any(|v| v.to_str().is_ok_and(|v| h.matcher.matches(v)))
}

/// The first value of a query parameter, percent-decoded.
pub fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    let query = query?;
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if percent_decode(k) == name {
            return Some(percent_decode(v));
        }
    }
    None
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Istio's `headers.request` / `headers.response`: set, add, remove.
#[derive(Debug, Clone, Default, Serialize)]
pub struct HeaderOps {
    #[serde(serialize_with = "ser_pairs")]
    pub set: Vec<(HeaderName, HeaderValue)>,
    #[serde(serialize_with = "ser_pairs")]
    pub add: Vec<(HeaderName, HeaderValue)>,
    #[serde(serialize_with = "ser_names")]
    pub remove: Vec<HeaderName>,
}

impl HeaderOps {
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }

    /// Envoy's order: remove, then set (replace), then add (append).
    pub fn apply(&self, headers: &mut HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.add {
            headers.append(name.clone(), value.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_params_are_decoded() {
        assert_eq!(
            query_param(Some("a=1&user=j%20son&x"), "user").as_deref(),
            Some("j son")
        );
        assert_eq!(query_param(Some("x"), "x").as_deref(), Some(""));
        assert_eq!(query_param(Some("a=%zz%"), "a").as_deref(), Some("%zz%"));
        assert_eq!(query_param(None, "a"), None);
    }

    #[test]
    fn regex_is_anchored() {
        let m = StringMatcher::Regex(Pattern::full("/v[0-9]+").unwrap());
        assert!(m.matches("/v12"));
        assert!(!m.matches("/v12/x"));
    }
}

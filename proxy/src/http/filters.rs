//! The per-route steps around forwarding: CORS, rewrite, redirect, direct responses and
//! hop-by-hop header hygiene.

use http::header::{self, HeaderName, HeaderValue};
use http::request::Parts;
use http::{HeaderMap, Method, Response, StatusCode, Uri};

use crate::body::{self, Body};
use crate::config::matcher::StringMatcher;
use crate::config::{Cors, Redirect, Rewrite};

/// Headers that describe one connection, not the request: never forwarded.
const HOP_BY_HOP_COUNT: usize = 6;
const HOP_BY_HOP: [HeaderName; HOP_BY_HOP_COUNT] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::EXPECT,
];

pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // One pass over the few names present notes which hop-by-hop ones occur; only those are
    // then removed, each removal hashing its name. A response nearly always carries
    // `connection: keep-alive` and nothing else of the kind, a request rarely any.
    let mut present = [false; HOP_BY_HOP_COUNT];
    let mut te = false;
    for name in headers.keys() {
        if *name == header::TE {
            te = true;
        } else if let Some(i) = HOP_BY_HOP.iter().position(|h| h == name) {
            present[i] = true;
        }
    }
    let plain = |v: &HeaderValue| {
        v.as_bytes().eq_ignore_ascii_case(b"keep-alive")
            || v.as_bytes().eq_ignore_ascii_case(b"close")
    };
    if present[0] && !headers.get_all(header::CONNECTION).iter().all(plain) {
        // Headers listed in `Connection` are hop-by-hop too. Tokens naming a header removed
        // anyway, or `close`, are skipped.
        let listed: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|t| {
                !t.eq_ignore_ascii_case("close")
                    && !HOP_BY_HOP
                        .iter()
                        .any(|h| t.eq_ignore_ascii_case(h.as_str()))
            })
            .filter(|t| headers.contains_key(*t))
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
            .collect();
        for name in listed {
            headers.remove(name);
        }
    }
    for (name, _) in HOP_BY_HOP.iter().zip(present).filter(|(_, p)| *p) {
        if keep_upgrade && (*name == header::CONNECTION || *name == header::UPGRADE) {
            continue;
        }
        headers.remove(name);
    }
    if !te {
        return;
    }
    // `te: trailers` is how gRPC says it understands trailers; anything else is hop-by-hop.
    let te_trailers = headers
        .get(header::TE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
        });
    headers.remove(header::TE);
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

pub fn is_upgrade(parts: &Parts) -> bool {
    parts.version == http::Version::HTTP_11
        && parts.headers.contains_key(header::UPGRADE)
        && parts
            .headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
}

fn origin_allowed(cors: &Cors, origin: &str) -> bool {
    cors.allow_origins.iter().any(|m| m.matches(origin))
}

/// Answers a CORS preflight for an allowed origin; `None` lets the request go on.
pub fn cors_preflight(cors: &Cors, parts: &Parts) -> Option<Response<Body>> {
    if parts.method != Method::OPTIONS
        || !parts.headers.contains_key("access-control-request-method")
    {
        return None;
    }
    let origin = parts.headers.get(header::ORIGIN)?.to_str().ok()?;
    let mut resp = Response::new(body::empty());
    if !origin_allowed(cors, origin) {
        if cors.forward_unmatched_preflights {
            return None;
        }
        return Some(resp);
    }
    let h = resp.headers_mut();
    insert(h, "access-control-allow-origin", origin);
    insert(h, "access-control-allow-methods", &cors.allow_methods);
    insert(h, "access-control-allow-headers", &cors.allow_headers);
    if let Some(age) = cors.max_age {
        insert(h, "access-control-max-age", &age.to_string());
    }
    if cors.allow_credentials {
        insert(h, "access-control-allow-credentials", "true");
    }
    Some(resp)
}

/// Adds the CORS headers of an actual (non-preflight) request from an allowed origin.
pub fn cors_response(cors: &Cors, origin: Option<&HeaderValue>, headers: &mut HeaderMap) {
    let Some(origin) = origin.and_then(|o| o.to_str().ok()) else {
        return;
    };
    if !origin_allowed(cors, origin) {
        return;
    }
    insert(headers, "access-control-allow-origin", origin);
    insert(
        headers,
        "access-control-expose-headers",
        &cors.expose_headers,
    );
    if cors.allow_credentials {
        insert(headers, "access-control-allow-credentials", "true");
    }
}

fn insert(headers: &mut HeaderMap, name: &'static str, value: &str) {
    if value.is_empty() {
        return;
    }
    if let Ok(v) = HeaderValue::from_str(value) {
        headers.insert(name, v);
    }
}

/// Envoy's prefix rewrite: the part the route matched is replaced; the query stays.
pub fn rewrite_path(
    rewrite: &Rewrite,
    matched: Option<&StringMatcher>,
    path: &str,
    query: Option<&str>,
) -> Option<String> {
    let new_path = if let Some((StringMatcher::Regex(re), with)) = &rewrite.uri_regex {
        re.0.replace_all(path, with.as_str()).into_owned()
    } else if let Some(uri) = &rewrite.uri {
        match matched {
            Some(StringMatcher::Prefix(p)) => {
                let rest = path.get(p.len()..).unwrap_or("");
                format!("{uri}{rest}")
            }
            Some(StringMatcher::Exact(_)) | Some(StringMatcher::Regex(_)) => uri.clone(),
            _ => format!("{uri}{}", path.strip_prefix('/').unwrap_or(path)),
        }
    } else {
        return None;
    };
    let new_path = if new_path.starts_with('/') {
        new_path
    } else {
        format!("/{new_path}")
    };
    Some(match query {
        Some(q) => format!("{new_path}?{q}"),
        None => new_path,
    })
}

pub fn set_path(parts: &mut Parts, path_and_query: &str) -> bool {
    let mut uri = parts.uri.clone().into_parts();
    match path_and_query.parse() {
        Ok(pq) => uri.path_and_query = Some(pq),
        Err(_) => return false,
    }
    match Uri::from_parts(uri) {
        Ok(u) => {
            parts.uri = u;
            true
        }
        Err(_) => false,
    }
}

pub fn redirect(r: &Redirect, parts: &Parts, authority: &str) -> Response<Body> {
    let scheme = r
        .scheme
        .as_deref()
        .or(parts.uri.scheme_str())
        .unwrap_or("http");
    let host = r.authority.as_deref().unwrap_or(authority);
    let host = match r.port {
        Some(p) => format!("{}:{p}", host.rsplit_once(':').map_or(host, |(h, _)| h)),
        None => host.to_owned(),
    };
    let path = match &r.uri {
        Some(u) if u.contains('?') => u.clone(),
        Some(u) => match parts.uri.query() {
            Some(q) => format!("{u}?{q}"),
            None => u.clone(),
        },
        None => parts
            .uri
            .path_and_query()
            .map_or("/".to_owned(), |p| p.as_str().to_owned()),
    };
    let mut resp = Response::new(body::empty());
    *resp.status_mut() = StatusCode::from_u16(r.status).unwrap_or(StatusCode::MOVED_PERMANENTLY);
    insert(
        resp.headers_mut(),
        "location",
        &format!("{scheme}://{host}{path}"),
    );
    resp
}

pub fn direct_response(status: u16, body_text: Option<&str>) -> Response<Body> {
    let mut resp = Response::new(match body_text {
        Some(b) => body::full(b.to_owned()),
        None => body::empty(),
    });
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    if body_text.is_some() {
        resp.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    }
    resp
}

/// A fresh `x-request-id` as Envoy makes it (and tools that read Istio's access logs and
/// traces expect): a random (version 4) UUID in its hyphenated form.
pub fn request_id() -> HeaderValue {
    let id = uuid::Builder::from_random_bytes(rand::random::<u128>().to_le_bytes()).into_uuid();
    let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let text = id.hyphenated().encode_lower(&mut text);
    HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_distinct_version_4_uuids() {
        let a = request_id();
        let b = request_id();
        assert_ne!(a, b);
        for id in [a, b] {
            let parsed = uuid::Uuid::parse_str(id.to_str().unwrap()).unwrap();
            assert_eq!(parsed.get_version_num(), 4);
            assert_eq!(id.to_str().unwrap(), parsed.hyphenated().to_string());
        }
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| (HeaderName::from_static(k), HeaderValue::from_static(v)))
            .collect()
    }

    #[test]
    fn hop_by_hop_headers_and_those_named_in_connection_are_stripped() {
        let mut h = headers(&[
            ("connection", "Keep-Alive, X-Hop , close"),
            ("keep-alive", "timeout=5"),
            ("x-hop", "1"),
            ("x-end", "2"),
            ("transfer-encoding", "chunked"),
            ("te", "gzip, trailers"),
        ]);
        strip_hop_by_hop(&mut h, false);
        let mut left: Vec<_> = h
            .iter()
            .map(|(k, v)| (k.as_str(), v.to_str().unwrap()))
            .collect();
        left.sort_unstable();
        assert_eq!(left, [("te", "trailers"), ("x-end", "2")]);
    }

    #[test]
    fn an_upgrade_keeps_its_connection_and_upgrade_headers() {
        let mut h = headers(&[
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("te", "gzip"),
        ]);
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h.get("upgrade").unwrap(), "websocket");
        assert_eq!(h.get("connection").unwrap(), "Upgrade");
        assert!(h.get("te").is_none());
    }

    fn rw(uri: &str) -> Rewrite {
        Rewrite {
            uri: Some(uri.into()),
            authority: None,
            uri_regex: None,
        }
    }

    #[test]
    fn prefix_rewrite_keeps_the_rest_and_the_query() {
        let m = StringMatcher::Prefix("/api/v1".into());
        assert_eq!(
            rewrite_path(&rw("/v2"), Some(&m), "/api/v1/users", Some("a=1")).as_deref(),
            Some("/v2/users?a=1")
        );
        let m = StringMatcher::Exact("/old".into());
        assert_eq!(
            rewrite_path(&rw("/new"), Some(&m), "/old", None).as_deref(),
            Some("/new")
        );
    }
}

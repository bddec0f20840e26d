//! Picking the route table (by listener, original destination or Host) and the route in it.

use std::borrow::Cow;

use http::request::Parts;

use crate::config::matcher::RequestView;
use crate::config::{HttpRoute, ListenerKind, RouteTable, route_key, vip_key};
use crate::runtime::Runtime;
use crate::shared::ConnInfo;

/// The authority a request names: `Host` when present (HTTP/1, and what this proxy sends
/// upstream over HTTP/2), else the URI's.
pub fn authority(parts: &Parts) -> &str {
    parts
        .headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| parts.uri.authority().map(|a| a.as_str()))
        .unwrap_or("")
}

fn split_host_port(authority: &str) -> (&str, Option<u16>) {
    if let Some(rest) = authority.strip_prefix('[') {
        // [v6]:port
        return match rest.split_once(']') {
            Some((h, p)) => (h, p.strip_prefix(':').and_then(|p| p.parse().ok())),
            None => (authority, None),
        };
    }
    match authority.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => (h, p.parse().ok()),
        _ => (authority, None),
    }
}

/// The route table for a request, and its key.
pub fn table<'a>(
    rt: &'a Runtime,
    conn: &ConnInfo,
    parts: &Parts,
) -> Option<(Cow<'a, str>, &'a RouteTable)> {
    let snap = &rt.snapshot;
    let key: Cow<'a, str> = match &snap.listener(&conn.listener)?.kind {
        ListenerKind::Upstream { route_key, .. } => Cow::Borrowed(route_key),
        ListenerKind::Inbound { route_key, .. } => conn
            .original_dst
            .map(|d| format!("inbound|{}", d.port()))
            .filter(|k| snap.route_tables.contains_key(k))
            .map_or(Cow::Borrowed(route_key.as_str()), Cow::Owned),
        ListenerKind::Capture => {
            let by_vip = conn.original_dst.and_then(|d| {
                snap.vips
                    .get(&vip_key(d.ip(), d.port()))
                    .map(|h| (h, d.port()))
            });
            Cow::Owned(match by_vip {
                Some((host, port)) => route_key(host, port),
                None => {
                    let (host, port) = split_host_port(authority(parts));
                    let port = port.or(conn.original_dst.map(|d| d.port())).unwrap_or(80);
                    let candidates = [
                        route_key(host, port),
                        route_key(
                            &format!("{host}.{}.svc.cluster.local", snap.node.namespace),
                            port,
                        ),
                        route_key(&format!("{host}.svc.cluster.local"), port),
                    ];
                    candidates
                        .into_iter()
                        .find(|k| snap.route_tables.contains_key(k))?
                }
            })
        }
        ListenerKind::Admin | ListenerKind::Prometheus => return None,
    };
    snap.route_tables.get(key.as_ref()).map(|t| (key, t))
}

pub fn view<'a>(parts: &'a Parts, port: u16) -> RequestView<'a> {
    RequestView {
        method: &parts.method,
        path: parts.uri.path(),
        query: parts.uri.query(),
        scheme: parts.uri.scheme_str().unwrap_or("http"),
        authority: authority(parts),
        headers: &parts.headers,
        port,
    }
}

/// The first route whose matches accept the request, with the index of the match that did
/// (`None` when the route has no matches).
pub fn select<'a>(
    table: &'a RouteTable,
    view: &RequestView<'_>,
) -> Option<(usize, &'a HttpRoute, Option<usize>)> {
    table.http.iter().enumerate().find_map(|(i, r)| {
        if r.matches.is_empty() {
            return Some((i, r, None));
        }
        r.matches
            .iter()
            .position(|m| m.matches(view))
            .map(|m| (i, r, Some(m)))
    })
}

#[cfg(test)]
mod tests {
    use super::split_host_port;

    #[test]
    fn splits_authorities() {
        assert_eq!(split_host_port("a.b:80"), ("a.b", Some(80)));
        assert_eq!(split_host_port("a.b"), ("a.b", None));
        assert_eq!(split_host_port("[::1]:8080"), ("::1", Some(8080)));
        assert_eq!(split_host_port("[::1]"), ("::1", None));
    }
}

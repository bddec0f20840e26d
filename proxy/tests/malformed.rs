//! Bad input from the network or a file: clean errors, never a hang or a panic.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::Response;
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use trellis_proxy::{FileError, ProxyConfig, compile};

fn http_service(port: u16, extra: &str) -> String {
    format!(
        r#"
listeners:
  upstreams: [{{name: up, bind: "127.0.0.1:0", service: web}}]
services:
  - name: web
    ports: [{{number: 80, protocol: HTTP}}]
    endpoints: [{{address: 127.0.0.1, port: {port}}}]
{extra}
"#
    )
}

#[tokio::test]
async fn garbage_request_gets_400() {
    let up = upstream("web").await;
    let proxy = start_proxy(&http_service(up.port(), "")).await;
    let out = raw_exchange(
        addr(&proxy, "up"),
        b"GET / HTTP/1.1\r\nHost x\r\n\r\n",
        "\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out:?}");
    let out = raw_exchange(
        addr(&proxy, "up"),
        b"\x01\x02\x03 nonsense\r\n\r\n",
        "\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 400") || out.is_empty(), "{out:?}");
    assert_eq!(up.hits(), 0);
}

#[tokio::test]
async fn oversize_headers_get_431() {
    let up = upstream("web").await;
    let proxy = start_proxy(&http_service(up.port(), "limits: {maxHeaderBytes: 8192}")).await;
    let big = "a".repeat(20_000);
    let req = format!("GET / HTTP/1.1\r\nHost: web\r\nx-big: {big}\r\n\r\n");
    let out = raw_exchange(addr(&proxy, "up"), req.as_bytes(), "\r\n\r\n").await;
    assert!(out.starts_with("HTTP/1.1 431"), "{out:?}");
    assert_eq!(up.hits(), 0);
}

#[tokio::test]
async fn slowloris_client_is_disconnected() {
    let up = upstream("web").await;
    let proxy = start_proxy(&http_service(
        up.port(),
        "limits: {headerReadTimeout: 200ms}",
    ))
    .await;
    let mut s = TcpStream::connect(addr(&proxy, "up")).await.unwrap();
    stall_a_head(&mut s, "the proxy to close a stalled client").await;
    assert_eq!(up.hits(), 0);
}

/// The kernel's timer on the proxy's end of the connection `client` → `listener`, as
/// /proc/net/tcp shows it: its kind (2 is keepalive) and the seconds until it fires.
fn proxy_end_timer(listener: SocketAddr, client: SocketAddr) -> Option<(u8, f64)> {
    // /proc/net/tcp writes an IPv4 address as the in-memory u32 and the port as a number.
    let hex = |a: SocketAddr| match a {
        SocketAddr::V4(v4) => format!(
            "{:08X}:{:04X}",
            u32::from_le_bytes(v4.ip().octets()),
            v4.port()
        ),
        SocketAddr::V6(_) => String::new(),
    };
    let (local, remote) = (hex(listener), hex(client));
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.get(1) != Some(&local.as_str()) || f.get(2) != Some(&remote.as_str()) {
            return None;
        }
        let (kind, when) = f.get(5)?.split_once(':')?;
        // In clock ticks, which the kernel shows user space at 100 a second (USER_HZ).
        let ticks = u64::from_str_radix(when, 16).ok()?;
        Some((u8::from_str_radix(kind, 16).ok()?, ticks as f64 / 100.0))
    })
}

#[tokio::test]
async fn a_client_that_goes_silent_is_probed_within_30_seconds() {
    // A client whose host vanished sends nothing, not even a FIN; only keepalive probes
    // find it. The kernel arms their timer on the proxy's end of every accepted connection.
    let up = upstream("web").await;
    let proxy = start_proxy(&http_service(up.port(), "")).await;
    let listener = addr(&proxy, "up");
    let s = TcpStream::connect(listener).await.unwrap();
    let client = s.local_addr().unwrap();
    eventually(
        "a keepalive timer due within 30 s on the proxy's end",
        || matches!(proxy_end_timer(listener, client), Some((2, secs)) if secs <= 30.0),
    )
    .await;
    drop(s);
}

/// Sends the start of a request head and never finishes it: the proxy must close the
/// connection by itself, at most with a 408.
async fn stall_a_head(s: &mut TcpStream, what: &str) {
    s.write_all(b"GET / HTTP/1.1\r\nHost: web\r\nx-slow: ")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let read = within(what, s.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf);
    assert!(
        read.is_err() || text.is_empty() || text.starts_with("HTTP/1.1 408"),
        "{text:?}"
    );
}

/// The header read timeout counts from the start of each head on a connection. The first
/// request here spends most of the timeout upstream; the client then pauses for half the
/// timeout before its second request, which must still be served: its head has a timeout of
/// its own, not what was left of the first one's. A third head that stalls is cut off.
#[tokio::test]
async fn header_read_timeout_starts_afresh_for_each_request() {
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = hits.clone();
    let up = serve_http(Arc::new(move |_req| {
        let n = counted.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            if n == 0 {
                tokio::time::sleep(Duration::from_millis(1500)).await;
            }
            Response::new(Full::new(Bytes::from(format!("answer {n};"))))
        })
    }))
    .await;
    let proxy = start_proxy(&http_service(up.port(), "limits: {headerReadTimeout: 2s}")).await;
    let mut s = TcpStream::connect(addr(&proxy, "up")).await.unwrap();
    let request = b"GET / HTTP/1.1\r\nHost: web\r\n\r\n";
    let mut seen = Vec::new();
    for n in 0..2 {
        if n == 1 {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        s.write_all(request).await.unwrap();
        let marker = format!("answer {n};");
        within("the proxy's answer on the kept-alive connection", async {
            let mut buf = [0u8; 4096];
            while !String::from_utf8_lossy(&seen).contains(&marker) {
                let read = s.read(&mut buf).await.unwrap();
                assert!(
                    read > 0,
                    "connection closed before answer {n}: {:?}",
                    String::from_utf8_lossy(&seen)
                );
                seen.extend_from_slice(&buf[..read]);
            }
        })
        .await;
    }
    assert_eq!(hits.load(Ordering::SeqCst), 2);
    // A third head that never ends is still cut off once its own timeout passes.
    stall_a_head(&mut s, "the proxy to close a stalled third head").await;
    assert_eq!(hits.load(Ordering::SeqCst), 2);
}

/// An upstream that answers with a head promising 100 bytes, sends 10, and resets.
async fn truncating_upstream(before_headers: bool) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                if !before_headers {
                    let _ = s
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789")
                        .await;
                }
                // Reset rather than close, as a crashed upstream would.
                let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
                drop(s);
            });
        }
    });
    port
}

#[tokio::test]
async fn upstream_reset_mid_body_is_a_clean_error() {
    let port = truncating_upstream(false).await;
    let proxy = start_proxy(&http_service(port, "")).await;
    let c = client();
    let req = http::Request::get(format!("http://{}/", addr(&proxy, "up")))
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let resp = within("head", c.request(req)).await.expect("head arrives");
    assert_eq!(resp.status().as_u16(), 200);
    use http_body_util::BodyExt;
    let body = within("body to fail, not hang", resp.into_body().collect()).await;
    assert!(body.is_err(), "a truncated body must not look complete");
}

#[tokio::test]
async fn upstream_reset_before_headers_is_503_uc() {
    let port = truncating_upstream(true).await;
    let extra = r#"resources:
  - apiVersion: networking.istio.io/v1
    kind: VirtualService
    metadata: {name: web}
    spec:
      hosts: [web]
      http:
        - retries: {attempts: 0}
          route: [{destination: {host: web}}]
"#;
    let proxy = start_proxy(&http_service(port, extra)).await;
    let r = get(&client(), addr(&proxy, "up"), "/").await;
    assert_eq!(r.status.as_u16(), 503);
    assert_eq!(r.flags(), "UC");
}

fn load(text: &str) -> Result<trellis_proxy::Snapshot, String> {
    let path = Path::new("/etc/trellis/proxy.yaml");
    let config = ProxyConfig::from_text(path, text).map_err(|e| e.to_string())?;
    compile(&config).map_err(|e| e.to_string())
}

#[test]
fn bad_config_files_name_the_file_and_the_field() {
    let e = load("listeners:\n  upstream: []\n").unwrap_err();
    assert!(e.starts_with("/etc/trellis/proxy.yaml: listeners"), "{e}");
    assert!(e.contains("unknown field `upstream`"), "{e}");

    let e = load("listeners: [1, 2\n").unwrap_err();
    assert!(e.contains("/etc/trellis/proxy.yaml: invalid YAML"), "{e}");

    let e =
        load("services:\n  - name: web\n    ports: [{number: 80, protocol: SMTP}]\n").unwrap_err();
    assert!(e.contains("services[0].ports[0].protocol"), "{e}");

    let e = load(
        r#"
services: [{name: web, ports: [{number: 80, protocol: HTTP}]}]
resources:
  - apiVersion: networking.istio.io/v1
    kind: VirtualService
    metadata: {name: web}
    spec:
      hosts: [web]
      http: [{route: [{destination: {host: web, subset: v9}}]}]
"#,
    )
    .unwrap_err();
    assert!(
        e.contains("VirtualService default/web: spec.http[0].route[0].destination.subset"),
        "{e}"
    );

    let e = load(
        r#"
resources:
  - apiVersion: networking.istio.io/v1
    kind: VirtualService
    metadata: {name: web}
    spec:
      hosts: [web]
      http: [{route: [{destination: {host: web}, wieght: 5}]}]
"#,
    )
    .unwrap_err();
    assert!(e.contains("spec.http[0].route[0].wieght"), "{e}");
    assert!(e.contains("did you mean `weight`"), "{e}");

    let e = load(
        r#"
services: [{name: web, ports: [{number: 80, protocol: HTTP}]}]
resources:
  - apiVersion: networking.istio.io/v1
    kind: DestinationRule
    metadata: {name: web}
    spec: {host: web, trafficPolicy: {tls: {mode: ISTIO_MUTUAL}}}
"#,
    )
    .unwrap_err();
    assert!(
        e.contains("DestinationRule default/web: spec.trafficPolicy.tls.mode"),
        "{e}"
    );
    assert!(e.contains("not supported"), "{e}");

    let e = load("listeners:\n  upstreams: [{name: x, bind: \"127.0.0.1:0\", service: nowhere}]\n")
        .unwrap_err();
    assert!(e.contains("listeners.upstreams[0].service"), "{e}");
}

#[test]
fn a_missing_file_is_a_read_error() {
    let e = trellis_proxy::load_file(Path::new("/nonexistent/proxy.yaml")).unwrap_err();
    assert!(matches!(e, FileError::Read { .. }));
    assert!(
        e.to_string()
            .starts_with("/nonexistent/proxy.yaml: cannot read")
    );
}

#[test]
fn json_config_is_read_too() {
    let snap =
        load(r#"{"services": [{"name": "web", "ports": [{"number": 80, "protocol": "HTTP"}]}]}"#)
            .expect("JSON config");
    assert!(
        snap.clusters
            .contains_key("outbound|80||web.default.svc.cluster.local")
    );
    let e = load(r#"{"services": [{"nmae": "web"}]}"#).unwrap_err();
    assert!(e.contains("services[0]"), "{e}");
}

#[test]
fn the_example_config_compiles() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/proxy.yaml");
    let snap = trellis_proxy::load_file(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(snap.listeners.len(), 6);
    assert!(snap.route_tables.contains_key("inbound|9080"));
    assert_eq!(
        snap.vips["10.96.0.20:9080"],
        "reviews.default.svc.cluster.local"
    );
    assert!(
        snap.clusters
            .contains_key("outbound|9080|v3|reviews.default.svc.cluster.local")
    );
}

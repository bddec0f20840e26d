//! HTTP/2, gRPC, WebSocket, TCP, TLS SNI and protocol sniffing through real sockets.

mod common;

use std::sync::Arc;

use bytes::Bytes;
use common::*;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn service(name: &str, protocol: &str, port: u16, listener_protocol: &str) -> String {
    format!(
        r#"
listeners:
  upstreams: [{{name: up, bind: "127.0.0.1:0", service: {name}{listener_protocol}}}]
services:
  - name: {name}
    ports: [{{number: 80, protocol: {protocol}}}]
    endpoints: [{{address: 127.0.0.1, port: {port}}}]
"#
    )
}

#[tokio::test]
async fn http2_prior_knowledge_on_both_sides() {
    let up = upstream("h2").await;
    let proxy = start_proxy(&service("grpcish", "HTTP2", up.port(), "")).await;
    let r = get(&h2_client(), addr(&proxy, "up"), "/x").await;
    assert_eq!(r.status.as_u16(), 200);
    assert_eq!(r.body, "h2");
    assert_eq!(
        r.header("x-version"),
        "HTTP/2.0",
        "the upstream was spoken to over HTTP/2"
    );
}

/// An HTTP/1.1 upstream that answers every request with a chunked body and hop-by-hop
/// headers of four kinds, one of them named only in `Connection`.
async fn hop_by_hop_upstream() -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                loop {
                    let Ok(n) = s.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    head.extend_from_slice(&buf[..n]);
                    if head.windows(4).any(|w| w == b"\r\n\r\n") {
                        head.clear();
                        let answer = b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Hop\r\n\
                            Keep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\n\
                            X-Hop: only-for-this-hop\r\nX-Kept: yes\r\n\
                            Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
                        if s.write_all(answer).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    a
}

#[tokio::test]
async fn http2_client_gets_an_http1_response_without_its_hop_by_hop_headers() {
    // HTTP/2 forbids connection-specific headers: one passed through would make the
    // response unsendable, and the client would see its stream reset instead.
    let up = hop_by_hop_upstream().await;
    let proxy = start_proxy(&service("legacy", "HTTP", up.port(), "")).await;
    for _ in 0..3 {
        let r = get(&h2_client(), addr(&proxy, "up"), "/x").await;
        assert_eq!(r.status.as_u16(), 200);
        assert_eq!(r.body, "hello");
        assert_eq!(r.header("x-kept"), "yes", "an end-to-end header stays");
        for name in [
            "connection",
            "keep-alive",
            "proxy-connection",
            "transfer-encoding",
            "x-hop",
        ] {
            assert!(
                r.headers.get(name).is_none(),
                "{name} reached the HTTP/2 client: {:?}",
                r.headers
            );
        }
    }
}

#[tokio::test]
async fn http1_client_to_http2_upstream_keeps_the_host() {
    let up = upstream("h2").await;
    let proxy = start_proxy(&service("grpcish", "HTTP2", up.port(), "")).await;
    let r = get_with(
        &client(),
        addr(&proxy, "up"),
        "/x",
        &[("host", "grpcish.example")],
    )
    .await;
    assert_eq!(r.header("x-version"), "HTTP/2.0");
    assert_eq!(r.header("x-host"), "grpcish.example");
}

async fn health_client(
    addr: std::net::SocketAddr,
) -> tonic_health::pb::health_client::HealthClient<tonic::transport::Channel> {
    let channel = within(
        "gRPC connect",
        tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .expect("endpoint")
            .connect(),
    )
    .await
    .expect("connect");
    tonic_health::pb::health_client::HealthClient::new(channel)
}

async fn grpc_health_server() -> std::net::SocketAddr {
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("shop.Cart", tonic_health::ServingStatus::Serving)
        .await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await;
    });
    addr
}

#[tokio::test]
async fn grpc_unary_call_with_trailers_through_the_proxy() {
    use tonic_health::pb::HealthCheckRequest;
    let server = grpc_health_server().await;
    let proxy = start_proxy(&service("cart", "GRPC", server.port(), "")).await;
    let mut client = health_client(addr(&proxy, "up")).await;
    let resp = within(
        "check",
        client.check(HealthCheckRequest {
            service: "shop.Cart".into(),
        }),
    )
    .await
    .expect("grpc call");
    assert_eq!(resp.into_inner().status, 1, "SERVING");
    // grpc-status NOT_FOUND arrives in a trailers-only response and must reach the client.
    let err = within(
        "check",
        client.check(HealthCheckRequest {
            service: "nope".into(),
        }),
    )
    .await
    .expect_err("unknown service");
    assert_eq!(err.code(), tonic::Code::NotFound);
}

/// A gRPC client ends each request with an empty DATA frame carrying END_STREAM. Forwarded
/// as an empty frame *without* END_STREAM, each call would count against h2's limit of 100
/// such frames per connection, and the upstream would close the shared connection with
/// GOAWAY(ENHANCE_YOUR_CALM) under the calls in flight.
#[tokio::test]
async fn grpc_calls_past_a_hundred_on_one_upstream_connection_all_succeed() {
    use tonic_health::pb::HealthCheckRequest;
    let server = grpc_health_server().await;
    let proxy = start_proxy(&service("cart", "GRPC", server.port(), "")).await;
    let mut client = health_client(addr(&proxy, "up")).await;
    let mut failed = Vec::new();
    for i in 0..250 {
        let r = within(
            "check",
            client.check(HealthCheckRequest {
                service: "shop.Cart".into(),
            }),
        )
        .await;
        if let Err(e) = r {
            failed.push(format!("call {i}: {e}"));
        }
    }
    assert!(failed.is_empty(), "failed calls: {failed:?}");
}

#[tokio::test]
async fn grpc_fault_abort_is_a_grpc_status() {
    use tonic_health::pb::HealthCheckRequest;
    let server = grpc_health_server().await;
    let yaml = service("cart", "GRPC", server.port(), "")
        + r#"resources:
  - apiVersion: networking.istio.io/v1
    kind: VirtualService
    metadata: {name: cart}
    spec:
      hosts: [cart]
      http:
        - fault: {abort: {grpcStatus: UNAVAILABLE, percentage: {value: 100}}}
          route: [{destination: {host: cart}}]
"#;
    let proxy = start_proxy(&yaml).await;
    let mut client = health_client(addr(&proxy, "up")).await;
    let err = within(
        "check",
        client.check(HealthCheckRequest {
            service: "shop.Cart".into(),
        }),
    )
    .await
    .expect_err("aborted");
    assert_eq!(err.code(), tonic::Code::Unavailable);
}

async fn websocket_echo() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(s).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

pub async fn ws_connect(
    addr: std::net::SocketAddr,
) -> tokio_tungstenite::WebSocketStream<TcpStream> {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (ws, resp) = within(
        "websocket handshake",
        tokio_tungstenite::client_async(format!("ws://{addr}/chat"), stream),
    )
    .await
    .expect("handshake");
    assert_eq!(resp.status().as_u16(), 101);
    ws
}

#[tokio::test]
async fn websocket_upgrade_is_spliced() {
    use tokio_tungstenite::tungstenite::Message;
    let echo = websocket_echo().await;
    let proxy = start_proxy(&service("chat", "HTTP", echo.port(), "")).await;
    let mut ws = ws_connect(addr(&proxy, "up")).await;
    for i in 0..5 {
        ws.send(Message::text(format!("hello {i}"))).await.unwrap();
        let got = within("echo", ws.next())
            .await
            .expect("open")
            .expect("message");
        assert_eq!(got.into_text().unwrap().as_str(), format!("hello {i}"));
    }
}

#[tokio::test]
async fn raw_tcp_is_proxied() {
    let echo = tcp_echo(b"").await;
    let proxy = start_proxy(&service("redis", "TCP", echo.port(), "")).await;
    let mut s = TcpStream::connect(addr(&proxy, "up")).await.unwrap();
    s.write_all(b"PING\r\n").await.unwrap();
    let mut buf = [0u8; 6];
    within("echo", s.read_exact(&mut buf)).await.unwrap();
    assert_eq!(&buf, b"PING\r\n");
}

fn inbound(local: std::net::SocketAddr) -> String {
    format!(
        r#"
listeners:
  inbound: {{bind: "127.0.0.1:0", address: "{local}"}}
limits: {{detectionTimeout: 200ms}}
"#
    )
}

#[tokio::test]
async fn inbound_sniffs_http1_http2_and_tcp() {
    let http = upstream("app").await;
    let proxy = start_proxy(&inbound(http.addr)).await;
    let a = addr(&proxy, "inbound");
    let r = get(&client(), a, "/").await;
    assert_eq!(r.body, "app");
    assert!(
        !r.header("x-req-x-request-id").is_empty(),
        "went through the HTTP path"
    );
    let r = get(&h2_client(), a, "/").await;
    assert_eq!(r.body, "app");
    assert_eq!(r.header("x-version"), "HTTP/2.0");

    let echo = tcp_echo(b"").await;
    let proxy = start_proxy(&inbound(echo)).await;
    let mut s = TcpStream::connect(addr(&proxy, "inbound")).await.unwrap();
    s.write_all(b"\x00\x01binary").await.unwrap();
    let mut buf = [0u8; 8];
    within("echo", s.read_exact(&mut buf)).await.unwrap();
    assert_eq!(&buf, b"\x00\x01binary");
}

#[tokio::test]
async fn server_first_protocol_is_tcp_after_detection_timeout() {
    let banner = tcp_echo(b"220 smtp ready\r\n").await;
    let proxy = start_proxy(&inbound(banner)).await;
    let mut s = TcpStream::connect(addr(&proxy, "inbound")).await.unwrap();
    let mut buf = [0u8; 16];
    within("banner", s.read_exact(&mut buf)).await.unwrap();
    assert_eq!(&buf, b"220 smtp ready\r\n");
}

fn client_hello(sni: &str) -> Vec<u8> {
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(rustls::RootCertStore::empty())
    .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(sni.to_owned()).unwrap();
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).unwrap();
    }
    out
}

#[tokio::test]
async fn tls_routes_by_sni_and_passes_bytes_through() {
    let a = tcp_echo(b"A").await;
    let b = tcp_echo(b"B").await;
    let yaml = format!(
        r#"
listeners:
  upstreams: [{{name: egress, bind: "127.0.0.1:0", service: a.example, port: 443}}]
resources:
  - apiVersion: networking.istio.io/v1
    kind: ServiceEntry
    metadata: {{name: a}}
    spec:
      hosts: [a.example]
      ports: [{{number: 443, name: tls, protocol: TLS}}]
      resolution: STATIC
      endpoints: [{{address: 127.0.0.1, ports: {{tls: {}}}}}]
  - apiVersion: networking.istio.io/v1
    kind: ServiceEntry
    metadata: {{name: b}}
    spec:
      hosts: [b.example]
      ports: [{{number: 443, name: tls, protocol: TLS}}]
      resolution: STATIC
      endpoints: [{{address: 127.0.0.1, ports: {{tls: {}}}}}]
  - apiVersion: networking.istio.io/v1
    kind: VirtualService
    metadata: {{name: sni}}
    spec:
      hosts: ["*.example"]
      tls:
        - match: [{{sniHosts: [a.example]}}]
          route: [{{destination: {{host: a.example}}}}]
        - match: [{{sniHosts: [b.example]}}]
          route: [{{destination: {{host: b.example}}}}]
"#,
        a.port(),
        b.port()
    );
    let proxy = start_proxy(&yaml).await;
    for (sni, banner) in [("b.example", b'B'), ("a.example", b'A')] {
        let hello = client_hello(sni);
        let mut s = TcpStream::connect(addr(&proxy, "egress")).await.unwrap();
        s.write_all(&hello).await.unwrap();
        let mut got = vec![0u8; hello.len() + 1];
        within("banner and echo", s.read_exact(&mut got))
            .await
            .unwrap();
        assert_eq!(got[0], banner, "{sni}");
        assert_eq!(
            &got[1..],
            &hello[..],
            "the ClientHello passed through untouched"
        );
    }
}

#[tokio::test]
async fn chunked_body_with_expect_continue_is_forwarded() {
    let echo_body = body_echo().await;
    let proxy = start_proxy(&service("upload", "HTTP", echo_body.port(), "")).await;
    let a = addr(&proxy, "up");
    let out = within("exchange", async {
        let mut s = TcpStream::connect(a).await.unwrap();
        s.write_all(b"POST /u HTTP/1.1\r\nHost: upload\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n").await.unwrap();
        let mut buf = vec![0u8; 1024];
        let n = s.read(&mut buf).await.unwrap();
        let interim = String::from_utf8_lossy(&buf[..n]).into_owned();
        assert!(interim.starts_with("HTTP/1.1 100 Continue"), "{interim}");
        s.write_all(b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n").await.unwrap();
        let mut out = Vec::new();
        loop {
            let n = s.read(&mut buf).await.unwrap();
            out.extend_from_slice(&buf[..n]);
            if n == 0 || String::from_utf8_lossy(&out).contains("hello world") {
                break;
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    })
    .await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains("hello world"), "{out}");
}

#[tokio::test]
async fn keep_alive_serves_many_requests_on_one_connection() {
    let up = upstream("ka").await;
    let proxy = start_proxy(&service("ka", "HTTP", up.port(), "")).await;
    let a = addr(&proxy, "up");
    let mut s = TcpStream::connect(a).await.unwrap();
    for _ in 0..3 {
        s.write_all(b"GET / HTTP/1.1\r\nHost: ka\r\n\r\n")
            .await
            .unwrap();
        let mut buf = vec![0u8; 4096];
        let n = within("response", s.read(&mut buf)).await.unwrap();
        let text = String::from_utf8_lossy(&buf[..n]);
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert!(text.ends_with("ka"), "{text}");
    }
    let _ = Bytes::new();
}

/// An HTTP/1.1 upstream that answers the first request on each connection with
/// `Connection: close` and then holds the connection open without reading from it again, so
/// a request sent on it after all would never be answered. Returns its address and a count
/// of the connections it accepted.
async fn closing_upstream() -> (std::net::SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap();
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: Close\r\n\r\nok";
                if s.write_all(answer).await.is_err() {
                    return;
                }
                tokio::time::sleep(DEADLINE * 2).await;
            });
        }
    });
    (a, accepted)
}

#[tokio::test]
async fn an_upstream_connection_answered_with_connection_close_is_not_reused() {
    let (up, accepted) = closing_upstream().await;
    let proxy = start_proxy(&service("closing", "HTTP", up.port(), "")).await;
    let c = client();
    for i in 1..=3 {
        let r = get(&c, addr(&proxy, "up"), "/x").await;
        assert_eq!(r.status.as_u16(), 200, "request {i}: {:?}", r.headers);
        assert_eq!(r.body, "ok", "request {i}");
        assert_eq!(
            accepted.load(std::sync::atomic::Ordering::SeqCst),
            i,
            "request {i} went over a connection of its own"
        );
    }
}

/// Reads HTTP/1.1 responses with a `content-length` off `s` until `count` have come; returns
/// each one's status line and body.
async fn read_responses(s: &mut TcpStream, count: usize) -> Vec<(String, Vec<u8>)> {
    let mut raw = Vec::new();
    let mut out = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    while out.len() < count {
        let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "connection closed after {} responses", out.len());
            raw.extend_from_slice(&buf[..n]);
            continue;
        };
        let head = String::from_utf8_lossy(&raw[..end]).into_owned();
        let length: usize = head
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse().ok())?
            })
            .unwrap_or_else(|| panic!("no content-length in {head}"));
        if raw.len() < end + 4 + length {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "connection closed inside response {}", out.len());
            raw.extend_from_slice(&buf[..n]);
            continue;
        }
        let body = raw[end + 4..end + 4 + length].to_vec();
        raw.drain(..end + 4 + length);
        out.push((head.lines().next().unwrap_or_default().to_owned(), body));
    }
    out
}

#[tokio::test]
async fn pipelined_requests_with_bodies_come_back_whole_and_in_order() {
    // Requests written back to back in one go, bodies from a few bytes to several times the
    // proxy's 8 KiB read buffer: some arrive together in one read, some split across reads,
    // and each response's body is still being written out when the next request is read.
    let echo_body = body_echo().await;
    let proxy = start_proxy(&service("upload", "HTTP", echo_body.port(), "")).await;
    let sizes = [
        1, 17, 300, 8_000, 8_192, 9_000, 2, 40_000, 5, 16_385, 100, 3,
    ];
    let bodies: Vec<Vec<u8>> = sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| {
            let mut b = format!("{i}:").into_bytes();
            b.extend((0..n).map(|j| b'a' + ((i + j) % 26) as u8));
            b
        })
        .collect();
    let mut wire = Vec::new();
    for (i, b) in bodies.iter().enumerate() {
        wire.extend_from_slice(
            format!(
                "POST /p{i} HTTP/1.1\r\nHost: upload\r\nContent-Length: {}\r\n\r\n",
                b.len()
            )
            .as_bytes(),
        );
        wire.extend_from_slice(b);
    }
    let mut s = TcpStream::connect(addr(&proxy, "up")).await.unwrap();
    let responses = within("pipelined responses", async {
        s.write_all(&wire).await.unwrap();
        read_responses(&mut s, bodies.len()).await
    })
    .await;
    for (i, ((status, body), sent)) in responses.iter().zip(&bodies).enumerate() {
        assert!(status.starts_with("HTTP/1.1 200"), "response {i}: {status}");
        assert!(
            body == sent,
            "response {i} came back with {} bytes starting {:?}, not the {} sent",
            body.len(),
            String::from_utf8_lossy(&body[..body.len().min(12)]),
            sent.len()
        );
    }
}

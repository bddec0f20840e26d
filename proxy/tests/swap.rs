//! Atomic snapshot swaps: new requests see new routes at once; nothing in flight is lost.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::*;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

fn route_to(subset: &str) -> String {
    format!(
        r#"  - apiVersion: networking.istio.io/v1
    kind: VirtualService
    metadata: {{name: reviews}}
    spec:
      hosts: [reviews]
      http:
        - route: [{{destination: {{host: reviews, subset: {subset}}}}}]
"#
    )
}

#[tokio::test]
async fn new_requests_see_new_routes_at_once_even_on_open_connections() {
    let v1 = upstream("v1").await;
    let v2 = upstream("v2").await;
    let proxy = start_proxy(&reviews_yaml(&v1, &v2, &route_to("v1"))).await;
    let a = addr(&proxy, "reviews");
    let h1 = client();
    let h2 = h2_client();
    assert_eq!(get(&h1, a, "/").await.body, "v1");
    assert_eq!(get(&h2, a, "/").await.body, "v1");
    proxy
        .swap(snapshot(&reviews_yaml(&v1, &v2, &route_to("v2"))))
        .await
        .expect("swap");
    // Same pooled keep-alive and HTTP/2 connections, new routes.
    assert_eq!(get(&h1, a, "/").await.body, "v2");
    assert_eq!(get(&h2, a, "/").await.body, "v2");
    assert_eq!(
        addr(&proxy, "reviews"),
        a,
        "an unchanged listener keeps its socket"
    );
}

#[tokio::test]
async fn websocket_session_survives_swaps() {
    let echo = {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let Ok(mut ws) = tokio_tungstenite::accept_async(s).await else {
                        return;
                    };
                    while let Some(Ok(m)) = ws.next().await {
                        if m.is_text() && ws.send(m).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    };
    let other = upstream("other").await;
    let yaml = |port: u16| {
        format!(
            r#"
listeners:
  upstreams: [{{name: chat, bind: "127.0.0.1:0", service: chat}}]
services:
  - name: chat
    ports: [{{number: 80, protocol: HTTP}}]
    endpoints: [{{address: 127.0.0.1, port: {port}}}]
"#
        )
    };
    let proxy = start_proxy(&yaml(echo.port())).await;
    let a = addr(&proxy, "chat");
    let stream = TcpStream::connect(a).await.unwrap();
    let (mut ws, _) = within(
        "handshake",
        tokio_tungstenite::client_async(format!("ws://{a}/"), stream),
    )
    .await
    .unwrap();
    for i in 0..10 {
        // Every other message, move the service somewhere else entirely.
        let port = if i % 2 == 0 {
            other.port()
        } else {
            echo.port()
        };
        proxy.swap(snapshot(&yaml(port))).await.expect("swap");
        ws.send(Message::text(format!("m{i}"))).await.unwrap();
        let got = within("echo", ws.next())
            .await
            .expect("open")
            .expect("message");
        assert_eq!(got.into_text().unwrap().as_str(), format!("m{i}"));
    }
    assert_eq!(other.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swaps_under_load_lose_nothing() {
    let v1 = upstream("v1").await;
    let v2 = upstream("v2").await;
    let weighted = |w1: u32| {
        format!(
            r#"  - apiVersion: networking.istio.io/v1
    kind: VirtualService
    metadata: {{name: reviews}}
    spec:
      hosts: [reviews]
      http:
        - retries: {{attempts: 0}}
          route:
            - {{destination: {{host: reviews, subset: v1}}, weight: {w1}}}
            - {{destination: {{host: reviews, subset: v2}}, weight: {}}}
"#,
            100 - w1
        )
    };
    let proxy = start_proxy(&reviews_yaml(&v1, &v2, &weighted(100))).await;
    let a = addr(&proxy, "reviews");
    let done = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for w in 0..16 {
        let done = done.clone();
        // Half the workers share HTTP/2 connections, half use HTTP/1.1 keep-alive.
        let c = if w % 2 == 0 { client() } else { h2_client() };
        workers.push(tokio::spawn(async move {
            let mut bad = Vec::new();
            for _ in 0..125 {
                let r = get(&c, a, "/").await;
                if r.status.as_u16() != 200 || !(r.body == "v1" || r.body == "v2") {
                    bad.push(format!("{} {} {}", r.status, r.flags(), r.body));
                }
                done.fetch_add(1, Ordering::SeqCst);
            }
            bad
        }));
    }
    let mut swaps = 0;
    while done.load(Ordering::SeqCst) < 2000 && swaps < 200 {
        let w1 = [0, 50, 100, 20][swaps % 4];
        proxy
            .swap(snapshot(&reviews_yaml(&v1, &v2, &weighted(w1))))
            .await
            .expect("swap");
        swaps += 1;
        tokio::task::yield_now().await;
    }
    let mut failures = Vec::new();
    for w in workers {
        failures.extend(within("workers", w).await.expect("worker"));
    }
    assert!(
        failures.is_empty(),
        "{} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert_eq!(done.load(Ordering::SeqCst), 2000);
    assert!(swaps > 1, "swaps happened during the load");
    assert_eq!(v1.hits() + v2.hits(), 2000);
}

#[tokio::test]
async fn tcp_connection_outlives_the_removal_of_its_listener() {
    let echo = tcp_echo(b"").await;
    let with_listener = format!(
        r#"
listeners:
  admin: {{bind: "127.0.0.1:0"}}
  upstreams: [{{name: db, bind: "127.0.0.1:0", service: db}}]
services:
  - name: db
    ports: [{{number: 5432, protocol: TCP}}]
    endpoints: [{{address: 127.0.0.1, port: {}}}]
"#,
        echo.port()
    );
    let proxy = start_proxy(&with_listener).await;
    let a = addr(&proxy, "db");
    let mut s = TcpStream::connect(a).await.unwrap();
    s.write_all(b"one").await.unwrap();
    let mut buf = [0u8; 3];
    within("echo", s.read_exact(&mut buf)).await.unwrap();
    let without = with_listener.replace(
        "  upstreams: [{name: db, bind: \"127.0.0.1:0\", service: db}]\n",
        "",
    );
    proxy.swap(snapshot(&without)).await.expect("swap");
    assert!(proxy.listener_addr("db").is_none());
    s.write_all(b"two").await.unwrap();
    within("echo after swap", s.read_exact(&mut buf))
        .await
        .unwrap();
    assert_eq!(&buf, b"two");
}

#[tokio::test]
async fn a_swap_that_cannot_bind_changes_nothing() {
    let v1 = upstream("v1").await;
    let v2 = upstream("v2").await;
    let proxy = start_proxy(&reviews_yaml(&v1, &v2, &route_to("v1"))).await;
    let a = addr(&proxy, "reviews");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let bad = reviews_yaml(&v1, &v2, &route_to("v2")).replace(
        "  upstreams:",
        &format!(
            "  capture: {{bind: \"{}\"}}\n  upstreams:",
            taken.local_addr().unwrap()
        ),
    );
    let err = proxy.swap(snapshot(&bad)).await.expect_err("port in use");
    assert!(err.to_string().contains("listener capture"), "{err}");
    assert_eq!(
        get(&client(), a, "/").await.body,
        "v1",
        "the old snapshot stays in force"
    );
}

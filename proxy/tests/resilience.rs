//! Retries, timeouts, outlier detection, connection-pool limits, faults, rate limits and
//! locality failover, against real upstreams.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::Response;
use http_body_util::Full;

fn one_service(endpoints: &[u16], extra: &str) -> String {
    let eps: Vec<String> = endpoints
        .iter()
        .map(|p| format!("{{address: 127.0.0.1, port: {p}}}"))
        .collect();
    format!(
        r#"
listeners:
  upstreams: [{{name: svc, bind: "127.0.0.1:0", service: svc}}]
services:
  - name: svc
    ports: [{{number: 80, protocol: HTTP}}]
    endpoints: [{}]
resources:
{extra}
"#,
        eps.join(", ")
    )
}

fn vs(http: &str) -> String {
    format!(
        r#"  - apiVersion: networking.istio.io/v1
    kind: VirtualService
    metadata: {{name: svc}}
    spec:
      hosts: [svc]
      http:
{http}"#
    )
}

fn dr(policy: &str) -> String {
    format!(
        r#"  - apiVersion: networking.istio.io/v1
    kind: DestinationRule
    metadata: {{name: svc}}
    spec:
      host: svc
      trafficPolicy:
{policy}"#
    )
}

#[tokio::test]
async fn retries_recover_from_an_upstream_that_fails_twice() {
    let up = upstream_with("flaky", |n| if n < 2 { 503 } else { 200 }).await;
    let extra = vs(
        r#"        - retries: {attempts: 3, retryOn: 5xx, backoff: 1ms}
          route: [{destination: {host: svc}}]
"#,
    );
    let proxy = start_proxy(&one_service(&[up.port()], &extra)).await;
    let r = get(&client(), addr(&proxy, "svc"), "/").await;
    assert_eq!(r.status.as_u16(), 200);
    assert_eq!(up.hits(), 3);
}

#[tokio::test]
async fn istio_default_retries_503_twice() {
    let up = upstream_with("flaky", |n| if n < 2 { 503 } else { 200 }).await;
    let proxy = start_proxy(&one_service(&[up.port()], "")).await;
    let r = get(&client(), addr(&proxy, "svc"), "/").await;
    assert_eq!(r.status.as_u16(), 200);
    assert_eq!(up.hits(), 3, "1 try + Istio's default 2 retries");
}

#[tokio::test]
async fn exhausted_retries_return_the_last_answer_flagged_urx() {
    let up = upstream_with("down", |_| 503).await;
    let extra = vs(
        r#"        - retries: {attempts: 2, retryOn: "gateway-error", backoff: 1ms}
          route: [{destination: {host: svc}}]
"#,
    );
    let proxy = start_proxy(&one_service(&[up.port()], &extra)).await;
    let r = get(&client(), addr(&proxy, "svc"), "/").await;
    assert_eq!(r.status.as_u16(), 503);
    assert_eq!(r.flags(), "URX");
    assert_eq!(up.hits(), 3);
}

#[tokio::test]
async fn retries_move_to_another_endpoint_after_connect_failure() {
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let up = upstream("alive").await;
    let proxy = start_proxy(&one_service(&[closed, up.port()], "")).await;
    let a = addr(&proxy, "svc");
    let c = client();
    for _ in 0..10 {
        let r = get(&c, a, "/").await;
        assert_eq!(
            r.status.as_u16(),
            200,
            "connect-failure is retried by default"
        );
    }
}

#[tokio::test]
async fn connect_failure_without_retries_is_503_uf() {
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let extra = vs(r#"        - retries: {attempts: 0}
          route: [{destination: {host: svc}}]
"#);
    let proxy = start_proxy(&one_service(&[closed], &extra)).await;
    let r = get(&client(), addr(&proxy, "svc"), "/").await;
    assert_eq!(r.status.as_u16(), 503);
    assert_eq!(r.flags(), "UF");
}

/// An upstream that never answers until the test ends.
async fn black_hole(count: Arc<AtomicUsize>) -> std::net::SocketAddr {
    serve_http(Arc::new(move |_req| {
        count.fetch_add(1, Ordering::SeqCst);
        Box::pin(async {
            std::future::pending::<()>().await;
            Response::new(Full::new(Bytes::new()))
        })
    }))
    .await
}

#[tokio::test]
async fn route_timeout_is_504_ut() {
    let seen = Arc::new(AtomicUsize::new(0));
    let hole = black_hole(seen.clone()).await;
    let extra = vs(r#"        - timeout: 100ms
          route: [{destination: {host: svc}}]
"#);
    let proxy = start_proxy(&one_service(&[hole.port()], &extra)).await;
    let r = get(&client(), addr(&proxy, "svc"), "/").await;
    assert_eq!(r.status.as_u16(), 504);
    assert_eq!(r.flags(), "UT");
}

#[tokio::test]
async fn per_try_timeout_is_retried_on_the_next_endpoint() {
    let seen = Arc::new(AtomicUsize::new(0));
    let hole = black_hole(seen.clone()).await;
    let good = upstream("good").await;
    let extra = vs(
        r#"        - retries: {attempts: 2, perTryTimeout: 100ms, retryOn: "5xx", backoff: 1ms}
          route: [{destination: {host: svc}}]
"#,
    ) + &dr("        loadBalancer: {simple: ROUND_ROBIN}\n");
    let proxy = start_proxy(&one_service(&[hole.port(), good.port()], &extra)).await;
    let a = addr(&proxy, "svc");
    let c = client();
    for _ in 0..4 {
        let r = get(&c, a, "/").await;
        assert_eq!(r.status.as_u16(), 200);
        assert_eq!(r.body, "good");
    }
    assert!(
        seen.load(Ordering::SeqCst) >= 1,
        "round robin sent some first tries to the hole"
    );
}

#[tokio::test]
async fn ejected_endpoint_gets_no_traffic_until_its_ejection_ends() {
    let bad = upstream_with("bad", |_| 500).await;
    let good = upstream("good").await;
    let extra = vs(r#"        - retries: {attempts: 0}
          route: [{destination: {host: svc}}]
"#) + &dr(r#"        loadBalancer: {simple: ROUND_ROBIN}
        outlierDetection: {consecutive5xxErrors: 1, interval: 50ms, baseEjectionTime: 2s, maxEjectionPercent: 50}
"#);
    let proxy = start_proxy(&one_service(&[bad.port(), good.port()], &extra)).await;
    let a = addr(&proxy, "svc");
    let c = client();
    // Round robin reaches the bad endpoint within two requests; its first 500 ejects it.
    let mut ejected_at = None;
    for _ in 0..2 {
        // Taken before the request, so it is never later than the ejection itself.
        let sent_at = Instant::now();
        let r = get(&c, a, "/").await;
        if r.status.as_u16() == 500 {
            ejected_at = Some(sent_at);
            break;
        }
    }
    let ejected_at = ejected_at.expect("the bad endpoint answered");
    assert_eq!(bad.hits(), 1);
    // A few dozen requests take far less than the 2 s ejection.
    for _ in 0..40 {
        let r = get(&c, a, "/").await;
        assert_eq!(r.body, "good", "an ejected endpoint must get nothing");
    }
    assert_eq!(bad.hits(), 1);
    // After the ejection ends the endpoint is back in rotation.
    within("the ejection to end", async {
        while bad.hits() == 1 {
            get(&c, a, "/").await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(ejected_at.elapsed() >= Duration::from_secs(2));
}

/// With the pool's one slot taken by a request the upstream holds, the next request is
/// refused at once with 503 `UO`; the held one still completes.
async fn second_request_overflows(extra: &str) {
    let (slow, release, arrived) = serve_held("slow").await;
    let proxy = start_proxy(&one_service(&[slow.port()], extra)).await;
    let a = addr(&proxy, "svc");
    let c = client();
    let first = tokio::spawn({
        let c = c.clone();
        async move { get(&c, a, "/").await }
    });
    eventually("the first request reaches the upstream", || {
        arrived.load(Ordering::SeqCst) == 1
    })
    .await;
    let second = get(&c, a, "/").await;
    assert_eq!(second.status.as_u16(), 503);
    assert_eq!(second.flags(), "UO");
    release.notify_one();
    let first = within("first request", first).await.unwrap();
    assert_eq!(first.status.as_u16(), 200);
}

#[tokio::test]
async fn exceeding_http2_max_requests_is_503_uo() {
    second_request_overflows(&dr(
        "        connectionPool: {http: {http2MaxRequests: 1}}\n",
    ))
    .await;
}

#[tokio::test]
async fn exceeding_max_connections_is_503_uo() {
    let extra = vs(r#"        - retries: {attempts: 0}
          route: [{destination: {host: svc}}]
"#) + &dr("        connectionPool: {tcp: {maxConnections: 1}}\n");
    second_request_overflows(&extra).await;
}

#[tokio::test]
async fn fault_abort_and_delay_are_flagged() {
    let up = upstream("up").await;
    let extra = vs(r#"        - match: [{uri: {prefix: /abort}}]
          fault: {abort: {httpStatus: 418, percentage: {value: 100}}}
          route: [{destination: {host: svc}}]
        - match: [{uri: {prefix: /delay}}]
          fault: {delay: {fixedDelay: 5ms, percentage: {value: 100}}}
          route: [{destination: {host: svc}}]
        - match: [{uri: {prefix: /never}}]
          fault: {abort: {httpStatus: 500, percentage: {value: 0}}}
          route: [{destination: {host: svc}}]
"#);
    let proxy = start_proxy(&one_service(&[up.port()], &extra)).await;
    let a = addr(&proxy, "svc");
    let c = client();
    let r = get(&c, a, "/abort").await;
    assert_eq!(r.status.as_u16(), 418);
    assert_eq!(r.flags(), "FI");
    assert_eq!(up.hits(), 0);
    let r = get(&c, a, "/delay").await;
    assert_eq!(r.status.as_u16(), 200);
    assert_eq!(r.flags(), "DI");
    let r = get(&c, a, "/never").await;
    assert_eq!(r.status.as_u16(), 200);
    assert_eq!(r.flags(), "");
}

#[tokio::test]
async fn local_rate_limit_answers_429_with_ratelimit_headers() {
    let up = upstream("up").await;
    let extra = r#"  - apiVersion: trellis.dev/v1
    kind: RateLimit
    metadata: {name: svc-limit}
    spec:
      host: svc
      requestsPerUnit: 2
      unit: HOUR
"#;
    let proxy = start_proxy(&one_service(&[up.port()], extra)).await;
    let a = addr(&proxy, "svc");
    let c = client();
    for left in ["1", "0"] {
        let r = get(&c, a, "/").await;
        assert_eq!(r.status.as_u16(), 200);
        assert_eq!(r.header("x-ratelimit-remaining"), left);
    }
    let r = get(&c, a, "/").await;
    assert_eq!(r.status.as_u16(), 429);
    assert_eq!(r.flags(), "RL");
    assert_eq!(r.header("x-ratelimit-limit"), "2");
    assert_eq!(r.header("x-ratelimit-remaining"), "0");
    assert!(!r.header("x-ratelimit-reset").is_empty());
    assert_eq!(up.hits(), 2);
}

#[tokio::test]
async fn rate_limit_for_one_named_route_only() {
    let up = upstream("up").await;
    let extra = vs(r#"        - name: login
          match: [{uri: {prefix: /login}}]
          route: [{destination: {host: svc}}]
        - route: [{destination: {host: svc}}]
"#) + r#"  - apiVersion: trellis.dev/v1
    kind: RateLimit
    metadata: {name: login-limit}
    spec: {host: svc, route: login, tokensPerFill: 1, fillInterval: 1h}
"#;
    let proxy = start_proxy(&one_service(&[up.port()], &extra)).await;
    let a = addr(&proxy, "svc");
    let c = client();
    assert_eq!(get(&c, a, "/login").await.status.as_u16(), 200);
    assert_eq!(get(&c, a, "/login").await.status.as_u16(), 429);
    for _ in 0..5 {
        assert_eq!(get(&c, a, "/other").await.status.as_u16(), 200);
    }
}

#[tokio::test]
async fn locality_failover_prefers_the_local_zone_until_it_is_ejected() {
    let local_down = Arc::new(AtomicBool::new(false));
    let flag = local_down.clone();
    let local = upstream_with("local", move |_| {
        if flag.load(Ordering::SeqCst) {
            503
        } else {
            200
        }
    })
    .await;
    let remote = upstream("remote").await;
    let yaml = format!(
        r#"
node: {{name: web-1, locality: us-east/zone-a}}
listeners:
  upstreams: [{{name: svc, bind: "127.0.0.1:0", service: svc}}]
services:
  - name: svc
    ports: [{{number: 80, protocol: HTTP}}]
    endpoints:
      - {{address: 127.0.0.1, port: {}, locality: us-east/zone-a}}
      - {{address: 127.0.0.1, port: {}, locality: eu-west/zone-b}}
resources:
  - apiVersion: networking.istio.io/v1
    kind: DestinationRule
    metadata: {{name: svc}}
    spec:
      host: svc
      trafficPolicy:
        loadBalancer:
          localityLbSetting: {{enabled: true, failover: [{{from: us-east, to: eu-west}}]}}
        outlierDetection: {{consecutive5xxErrors: 1, interval: 1s, baseEjectionTime: 1m, maxEjectionPercent: 100}}
"#,
        local.port(),
        remote.port()
    );
    let proxy = start_proxy(&yaml).await;
    let a = addr(&proxy, "svc");
    let c = client();
    for _ in 0..20 {
        assert_eq!(get(&c, a, "/").await.body, "local");
    }
    local_down.store(true, Ordering::SeqCst);
    // The first failure ejects the local endpoint; Istio's default retry then fails over.
    let r = get(&c, a, "/").await;
    assert_eq!(r.body, "remote", "retried on the remote locality");
    for _ in 0..20 {
        assert_eq!(get(&c, a, "/").await.body, "remote");
    }
}

#[tokio::test]
async fn warming_endpoint_starts_with_a_smaller_share() {
    // Two endpoints, one declared later: with a long warm-up and a 10% floor, the newcomer
    // gets fewer requests than the established one.
    let old = upstream("old").await;
    let new = upstream("new").await;
    let base = |eps: &str| {
        format!(
            r#"
listeners:
  upstreams: [{{name: svc, bind: "127.0.0.1:0", service: svc}}]
services:
  - name: svc
    ports: [{{number: 80, protocol: HTTP}}]
    endpoints: [{eps}]
resources:
  - apiVersion: networking.istio.io/v1
    kind: DestinationRule
    metadata: {{name: svc}}
    spec:
      host: svc
      trafficPolicy:
        loadBalancer: {{simple: RANDOM, warmup: {{duration: 1h, minimumPercent: 10}}}}
"#
        )
    };
    let one = base(&format!("{{address: 127.0.0.1, port: {}}}", old.port()));
    let proxy = start_proxy(&one).await;
    // Endpoints the cluster starts with are warm; one that joins later warms up.
    let two = base(&format!(
        "{{address: 127.0.0.1, port: {}}}, {{address: 127.0.0.1, port: {}}}",
        old.port(),
        new.port()
    ));
    proxy.swap(snapshot(&two)).await.expect("swap");
    let seen = tally(&client(), addr(&proxy, "svc"), "/", 400).await;
    let n_new = seen.get("200 new").copied().unwrap_or(0);
    let n_old = seen.get("200 old").copied().unwrap_or(0);
    assert_eq!(n_new + n_old, 400);
    assert!(
        n_new > 0,
        "a warming endpoint still gets some traffic: {seen:?}"
    );
    // At its 10 % floor the newcomer's expected share is about 9 %.
    assert!(
        n_new < n_old,
        "a warming endpoint gets less than a warm one: {seen:?}"
    );
}

#[tokio::test]
async fn a_service_without_endpoints_is_503_uh() {
    let yaml = r#"
listeners:
  upstreams: [{name: svc, bind: "127.0.0.1:0", service: svc}]
services:
  - name: svc
    ports: [{number: 80, protocol: HTTP}]
"#;
    let proxy = start_proxy(yaml).await;
    let r = get(&client(), addr(&proxy, "svc"), "/").await;
    assert_eq!(r.status.as_u16(), 503);
    assert_eq!(r.flags(), "UH");
}

#[tokio::test]
async fn retried_requests_resend_their_body() {
    let seen = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let s2 = seen.clone();
    let up = serve_http(Arc::new(
        move |req: http::Request<hyper::body::Incoming>| {
            let seen = s2.clone();
            Box::pin(async move {
                let body = request_body(req).await;
                let n = {
                    let mut v = seen.lock().unwrap();
                    v.push(String::from_utf8_lossy(&body).into_owned());
                    v.len()
                };
                let mut resp = Response::new(Full::new(Bytes::from(format!("attempt {n}"))));
                if n < 3 {
                    *resp.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
                }
                resp
            })
        },
    ))
    .await;
    let extra = vs(
        r#"        - retries: {attempts: 3, retryOn: 5xx, backoff: 1ms}
          route: [{destination: {host: svc}}]
"#,
    );
    let proxy = start_proxy(&one_service(&[up.port()], &extra)).await;
    let payload = "x".repeat(10_000);
    for c in [client(), h2_client()] {
        seen.lock().unwrap().clear();
        let req = http::Request::post(format!("http://{}/upload", addr(&proxy, "svc")))
            .body(Full::new(Bytes::from(payload.clone())))
            .unwrap();
        let r = send(&c, req).await;
        assert_eq!(r.status.as_u16(), 200);
        assert_eq!(r.body, "attempt 3");
        let bodies = seen.lock().unwrap().clone();
        assert_eq!(bodies.len(), 3);
        assert!(
            bodies.iter().all(|b| *b == payload),
            "every attempt carried the whole body"
        );
    }
}

#[tokio::test]
async fn grpc_unavailable_is_retried_by_default() {
    let calls = Arc::new(AtomicUsize::new(0));
    let c2 = calls.clone();
    let up = serve_http(Arc::new(move |_req| {
        let n = c2.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            // Trailers-only responses: the status is in the headers.
            let code = if n < 2 { "14" } else { "0" };
            Response::builder()
                .header("content-type", "application/grpc")
                .header("grpc-status", code)
                .body(Full::new(Bytes::new()))
                .unwrap()
        })
    }))
    .await;
    let yaml = format!(
        r#"
listeners:
  upstreams: [{{name: svc, bind: "127.0.0.1:0", service: svc}}]
services:
  - name: svc
    ports: [{{number: 80, protocol: GRPC}}]
    endpoints: [{{address: 127.0.0.1, port: {}}}]
"#,
        up.port()
    );
    let proxy = start_proxy(&yaml).await;
    let req = http::Request::post(format!("http://{}/pkg.Svc/Call", addr(&proxy, "svc")))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(Bytes::from_static(b"\0\0\0\0\0")))
        .unwrap();
    let r = send(&h2_client(), req).await;
    assert_eq!(r.header("grpc-status"), "0");
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

//! VirtualService routing through real sockets against real HTTP servers.

mod common;

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::Full;

fn vs(spec: &str) -> String {
    format!(
        r#"  - apiVersion: networking.istio.io/v1
    kind: VirtualService
    metadata: {{name: reviews}}
    spec:
      hosts: [reviews]
{spec}"#
    )
}

#[tokio::test]
async fn matches_uri_headers_query_method_and_without_headers() {
    let v1 = upstream("v1").await;
    let v2 = upstream("v2").await;
    let extra = vs(r#"      http:
        - name: exact
          match: [{uri: {exact: /exact}}]
          route: [{destination: {host: reviews, subset: v2}}]
        - name: regex
          match: [{uri: {regex: "/items/[0-9]+"}}]
          route: [{destination: {host: reviews, subset: v2}}]
        - name: header
          match: [{headers: {end-user: {exact: jason}}}]
          route: [{destination: {host: reviews, subset: v2}}]
        - name: query
          match: [{queryParams: {canary: {exact: "yes"}}}]
          route: [{destination: {host: reviews, subset: v2}}]
        - name: method
          match: [{method: {exact: DELETE}}]
          route: [{destination: {host: reviews, subset: v2}}]
        - name: without
          match: [{uri: {prefix: /w}, withoutHeaders: {x-stable: {}}}]
          route: [{destination: {host: reviews, subset: v2}}]
        - name: authority
          match: [{authority: {prefix: canary.}}]
          route: [{destination: {host: reviews, subset: v2}}]
        - name: rest
          route: [{destination: {host: reviews, subset: v1}}]
"#);
    let proxy = start_proxy(&reviews_yaml(&v1, &v2, &extra)).await;
    let a = addr(&proxy, "reviews");
    let c = client();
    assert_eq!(get(&c, a, "/exact").await.body, "v2");
    assert_eq!(get(&c, a, "/exact/not").await.body, "v1");
    assert_eq!(get(&c, a, "/items/42").await.body, "v2");
    assert_eq!(get(&c, a, "/items/42x").await.body, "v1");
    assert_eq!(
        get_with(&c, a, "/", &[("end-user", "jason")]).await.body,
        "v2"
    );
    assert_eq!(
        get_with(&c, a, "/", &[("end-user", "bob")]).await.body,
        "v1"
    );
    assert_eq!(get(&c, a, "/q?x=1&canary=yes").await.body, "v2");
    assert_eq!(get(&c, a, "/q?canary=no").await.body, "v1");
    let del = Request::delete(format!("http://{a}/"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(send(&c, del).await.body, "v2");
    assert_eq!(
        get_with(&c, a, "/", &[("host", "canary.reviews")])
            .await
            .body,
        "v2"
    );
    assert_eq!(get(&c, a, "/w").await.body, "v2");
    assert_eq!(get_with(&c, a, "/w", &[("x-stable", "1")]).await.body, "v1");
}

#[tokio::test]
async fn weights_hold_within_3_percent_over_2000_requests() {
    let v1 = upstream("v1").await;
    let v2 = upstream("v2").await;
    let extra = vs(r#"      http:
        - route:
            - {destination: {host: reviews, subset: v1}, weight: 80}
            - {destination: {host: reviews, subset: v2}, weight: 20}
"#);
    let proxy = start_proxy(&reviews_yaml(&v1, &v2, &extra)).await;
    let a = addr(&proxy, "reviews");
    let seen = tally(&client(), a, "/", 2000).await;
    let v1n = seen.get("200 v1").copied().unwrap_or(0) as f64;
    let v2n = seen.get("200 v2").copied().unwrap_or(0) as f64;
    assert_eq!(v1n + v2n, 2000.0, "{seen:?}");
    assert!((v1n / 2000.0 - 0.80).abs() <= 0.03, "{seen:?}");
    assert!((v2n / 2000.0 - 0.20).abs() <= 0.03, "{seen:?}");
}

#[tokio::test]
async fn rewrites_redirects_direct_responses_and_header_operations() {
    let v1 = upstream("v1").await;
    let v2 = upstream("v2").await;
    let extra = vs(r#"      http:
        - match: [{uri: {prefix: /api/v1}}]
          rewrite: {uri: /v2, authority: ratings.internal}
          route: [{destination: {host: reviews, subset: v1}}]
        - match: [{uri: {exact: /old}}]
          redirect: {uri: /new, authority: example.com, redirectCode: 308}
        - match: [{uri: {exact: /teapot}}]
          directResponse: {status: 418, body: {string: "short and stout"}}
        - headers:
            request:
              set: {x-route: set}
              add: {x-added: one}
              remove: [x-secret]
            response:
              set: {x-served-by: trellis}
              remove: [x-upstream]
          route:
            - destination: {host: reviews, subset: v2}
              headers: {request: {set: {x-dest: v2}}}
"#);
    let proxy = start_proxy(&reviews_yaml(&v1, &v2, &extra)).await;
    let a = addr(&proxy, "reviews");
    let c = client();

    let r = get(&c, a, "/api/v1/users?id=7").await;
    assert_eq!(r.body, "v1");
    assert_eq!(r.header("x-path"), "/v2/users?id=7");
    assert_eq!(r.header("x-host"), "ratings.internal");

    let r = get(&c, a, "/old?q=1").await;
    assert_eq!(r.status.as_u16(), 308);
    assert_eq!(r.header("location"), "http://example.com/new?q=1");

    let r = get(&c, a, "/teapot").await;
    assert_eq!(r.status.as_u16(), 418);
    assert_eq!(r.body, "short and stout");

    let r = get_with(&c, a, "/x", &[("x-secret", "s"), ("x-route", "client")]).await;
    assert_eq!(r.body, "v2");
    assert_eq!(r.header("x-req-x-route"), "set");
    assert_eq!(r.header("x-req-x-added"), "one");
    assert_eq!(r.header("x-req-x-dest"), "v2");
    assert_eq!(r.header("x-req-x-secret"), "");
    assert_eq!(r.header("x-served-by"), "trellis");
    assert_eq!(r.header("x-upstream"), "");
}

#[tokio::test]
async fn no_route_is_404_with_nr_flag() {
    let v1 = upstream("v1").await;
    let v2 = upstream("v2").await;
    let extra = vs(r#"      http:
        - match: [{uri: {prefix: /only}}]
          route: [{destination: {host: reviews, subset: v1}}]
"#);
    let proxy = start_proxy(&reviews_yaml(&v1, &v2, &extra)).await;
    let r = get(&client(), addr(&proxy, "reviews"), "/elsewhere").await;
    assert_eq!(r.status.as_u16(), 404);
    assert_eq!(r.flags(), "NR");
    assert_eq!(v1.hits() + v2.hits(), 0);
}

#[tokio::test]
async fn cors_preflight_is_answered_and_responses_carry_cors_headers() {
    let v1 = upstream("v1").await;
    let v2 = upstream("v2").await;
    let extra = vs(r#"      http:
        - corsPolicy:
            allowOrigins: [{exact: "https://shop.example"}]
            allowMethods: [GET, POST]
            allowHeaders: [x-token]
            exposeHeaders: [x-upstream]
            maxAge: 24h
            allowCredentials: true
          route: [{destination: {host: reviews, subset: v1}}]
"#);
    let proxy = start_proxy(&reviews_yaml(&v1, &v2, &extra)).await;
    let a = addr(&proxy, "reviews");
    let c = client();
    let pre = Request::options(format!("http://{a}/cart"))
        .header("origin", "https://shop.example")
        .header("access-control-request-method", "POST")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let r = send(&c, pre).await;
    assert_eq!(r.status.as_u16(), 200);
    assert_eq!(
        r.header("access-control-allow-origin"),
        "https://shop.example"
    );
    assert_eq!(r.header("access-control-allow-methods"), "GET,POST");
    assert_eq!(r.header("access-control-max-age"), "86400");
    assert_eq!(
        v1.hits(),
        0,
        "an allowed preflight is answered by the proxy"
    );

    let r = get_with(&c, a, "/cart", &[("origin", "https://shop.example")]).await;
    assert_eq!(
        r.header("access-control-allow-origin"),
        "https://shop.example"
    );
    assert_eq!(r.header("access-control-expose-headers"), "x-upstream");
    let r = get_with(&c, a, "/cart", &[("origin", "https://evil.example")]).await;
    assert_eq!(r.header("access-control-allow-origin"), "");
}

#[tokio::test]
async fn mirror_sends_a_shadow_copy() {
    let v1 = upstream("v1").await;
    let v2 = upstream("v2").await;
    let extra = vs(r#"      http:
        - route: [{destination: {host: reviews, subset: v1}}]
          mirror: {host: reviews, subset: v2}
          mirrorPercentage: {value: 100}
"#);
    let proxy = start_proxy(&reviews_yaml(&v1, &v2, &extra)).await;
    let r = get(&client(), addr(&proxy, "reviews"), "/m").await;
    assert_eq!(r.body, "v1");
    eventually("mirror receives the copy", || v2.hits() == 1).await;
}

#[tokio::test]
async fn consistent_hash_keeps_a_key_on_one_endpoint() {
    for ring in [
        "ringHash: {minimumRingSize: 1024}",
        "maglev: {tableSize: 65537}",
    ] {
        let v1 = upstream("a").await;
        let v2 = upstream("b").await;
        let v3 = upstream("c").await;
        let yaml = format!(
            r#"
listeners:
  upstreams: [{{name: cart, bind: "127.0.0.1:0", service: cart}}]
services:
  - name: cart
    ports: [{{number: 80, protocol: HTTP}}]
    endpoints:
      - {{address: 127.0.0.1, port: {}}}
      - {{address: 127.0.0.1, port: {}}}
      - {{address: 127.0.0.1, port: {}}}
resources:
  - apiVersion: networking.istio.io/v1
    kind: DestinationRule
    metadata: {{name: cart}}
    spec:
      host: cart
      trafficPolicy:
        loadBalancer:
          consistentHash: {{httpHeaderName: x-user, {ring}}}
"#,
            v1.port(),
            v2.port(),
            v3.port()
        );
        let proxy = start_proxy(&yaml).await;
        let a = addr(&proxy, "cart");
        let c = client();
        let mut owners = std::collections::BTreeSet::new();
        for user in 0..40 {
            let u = format!("user-{user}");
            let first = get_with(&c, a, "/", &[("x-user", &u)]).await.body;
            for _ in 0..5 {
                assert_eq!(
                    get_with(&c, a, "/", &[("x-user", &u)]).await.body,
                    first,
                    "{ring}"
                );
            }
            owners.insert(first);
        }
        assert!(owners.len() > 1, "{ring}: every key landed on one endpoint");
    }
}

#[tokio::test]
async fn round_robin_and_random_spread_over_endpoints() {
    for lb in ["ROUND_ROBIN", "RANDOM", "LEAST_REQUEST"] {
        let ups = [
            upstream("a").await,
            upstream("b").await,
            upstream("c").await,
        ];
        let yaml = format!(
            r#"
listeners:
  upstreams: [{{name: cart, bind: "127.0.0.1:0", service: cart}}]
services:
  - name: cart
    ports: [{{number: 80, protocol: HTTP}}]
    endpoints: [{{address: 127.0.0.1, port: {}}}, {{address: 127.0.0.1, port: {}}}, {{address: 127.0.0.1, port: {}}}]
resources:
  - apiVersion: networking.istio.io/v1
    kind: DestinationRule
    metadata: {{name: cart}}
    spec:
      host: cart
      trafficPolicy: {{loadBalancer: {{simple: {lb}}}}}
"#,
            ups[0].port(),
            ups[1].port(),
            ups[2].port()
        );
        let proxy = start_proxy(&yaml).await;
        let seen = tally(&client(), addr(&proxy, "cart"), "/", 300).await;
        assert_eq!(seen.len(), 3, "{lb}: {seen:?}");
        if lb == "ROUND_ROBIN" {
            assert!(seen.values().all(|n| *n == 100), "{lb}: {seen:?}");
        }
    }
}

#[tokio::test]
async fn service_entry_hosts_are_destinations() {
    let api = upstream("external").await;
    let yaml = format!(
        r#"
listeners:
  upstreams: [{{name: payments, bind: "127.0.0.1:0", service: api.payments.example, port: 8443}}]
resources:
  - apiVersion: networking.istio.io/v1
    kind: ServiceEntry
    metadata: {{name: payments}}
    spec:
      hosts: [api.payments.example]
      ports: [{{number: 8443, name: http, protocol: HTTP}}]
      resolution: STATIC
      endpoints: [{{address: 127.0.0.1, ports: {{http: {}}}}}]
  - apiVersion: networking.istio.io/v1
    kind: VirtualService
    metadata: {{name: payments}}
    spec:
      hosts: [api.payments.example]
      http:
        - timeout: 5s
          route: [{{destination: {{host: api.payments.example}}}}]
"#,
        api.port()
    );
    let proxy = start_proxy(&yaml).await;
    let r = get(&client(), addr(&proxy, "payments"), "/charge").await;
    assert_eq!(r.status.as_u16(), 200);
    assert_eq!(r.body, "external");
}

#[tokio::test]
async fn capture_listener_routes_by_host_when_not_redirected() {
    let v1 = upstream("v1").await;
    let v2 = upstream("v2").await;
    let yaml = reviews_yaml(&v1, &v2, "").replace(
        "  upstreams:",
        "  capture: {bind: \"127.0.0.1:0\"}\n  upstreams:",
    );
    let proxy = start_proxy(&yaml).await;
    let a = addr(&proxy, "capture");
    let c = client();
    let r = get_with(&c, a, "/", &[("host", "reviews:9080")]).await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.body);
    let r = get_with(
        &c,
        a,
        "/",
        &[("host", "reviews.default.svc.cluster.local:9080")],
    )
    .await;
    assert_eq!(r.status.as_u16(), 200);
    let r = get_with(&c, a, "/", &[("host", "unknown:9080")]).await;
    assert_eq!(r.status.as_u16(), 404);
    assert_eq!(r.flags(), "NR");
}

#[tokio::test]
async fn admin_serves_ready_config_dump_clusters_and_istio_metrics() {
    let v1 = upstream("v1").await;
    let v2 = upstream("v2").await;
    let proxy = start_proxy(&reviews_yaml(&v1, &v2, "")).await;
    let c = client();
    get(&c, addr(&proxy, "reviews"), "/").await;
    let admin = addr(&proxy, "admin");
    let r = get(&c, admin, "/ready").await;
    assert_eq!(r.status.as_u16(), 200);
    let r = get(&c, admin, "/config_dump").await;
    let dump: serde_json::Value = serde_json::from_str(&r.body).expect("config_dump is JSON");
    assert!(dump["clusters"]["outbound|9080|v1|reviews.default.svc.cluster.local"].is_object());
    let r = get(&c, admin, "/clusters").await;
    assert!(
        r.body
            .contains("outbound|9080|v2|reviews.default.svc.cluster.local")
    );
    let r = get(&c, admin, "/stats/prometheus").await;
    assert!(r.body.contains("istio_requests_total{"), "{}", r.body);
    assert!(r.body.contains("response_code=\"200\""));
    assert!(
        r.body
            .contains("istio_request_duration_milliseconds_bucket")
    );
}

//! The compiler's own tests: defaults, naming, refusals.

use std::path::Path;

use super::*;

fn compile_yaml(yaml: &str) -> Result<Snapshot> {
    let config = ProxyConfig::from_text(Path::new("t.yaml"), yaml).expect("parses");
    compile(&config)
}

const BASE: &str = r#"
services:
  - name: reviews
    namespace: shop
    ports: [{number: 9080, protocol: HTTP}]
    endpoints:
      - {address: 10.0.0.1, labels: {version: v1}}
      - {address: 10.0.0.2, port: 9999, labels: {version: v2}}
"#;

#[test]
fn istio_defaults_apply_when_config_is_silent() {
    let snap = compile_yaml(BASE).unwrap();
    let table = snap
        .route_table("reviews.shop.svc.cluster.local", 9080)
        .unwrap();
    let retry = &table.http[0].retry;
    assert_eq!(retry.attempts, 2);
    assert!(retry.on.connect_failure && retry.on.refused_stream);
    assert_eq!(retry.on.retriable_status_codes, vec![503]);
    assert_eq!(retry.on.grpc_codes, vec![14, 1], "unavailable, cancelled");
    let cluster = &snap.clusters["outbound|9080||reviews.shop.svc.cluster.local"];
    let o = cluster.outlier.as_ref().unwrap();
    assert_eq!(o.consecutive_5xx, Some(5));
    assert_eq!(o.base_ejection_time.as_std().as_secs(), 30);
    assert_eq!(o.max_ejection_percent, 10);
    assert_eq!(cluster.lb, LbPolicy::LeastRequest);
    assert_eq!(
        cluster.endpoints[0].port, 9080,
        "defaults to the service port"
    );
    assert_eq!(cluster.endpoints[1].port, 9999);
}

#[test]
fn subsets_become_clusters_and_short_hosts_are_qualified() {
    let yaml = format!(
        "{BASE}resources:
  - apiVersion: networking.istio.io/v1beta1
    kind: DestinationRule
    metadata: {{name: reviews, namespace: shop}}
    spec:
      host: reviews
      trafficPolicy: {{loadBalancer: {{simple: ROUND_ROBIN}}}}
      subsets:
        - {{name: v2, labels: {{version: v2}}, trafficPolicy: {{loadBalancer: {{simple: RANDOM}}}}}}
  - apiVersion: networking.istio.io/v1alpha3
    kind: VirtualService
    metadata: {{name: reviews, namespace: shop}}
    spec:
      hosts: [reviews]
      http: [{{route: [{{destination: {{host: reviews, subset: v2}}}}]}}]
"
    );
    let snap = compile_yaml(&yaml).unwrap();
    let v2 = &snap.clusters["outbound|9080|v2|reviews.shop.svc.cluster.local"];
    assert_eq!(v2.endpoints.len(), 1);
    assert_eq!(v2.lb, LbPolicy::Random, "the subset's policy wins");
    let all = &snap.clusters["outbound|9080||reviews.shop.svc.cluster.local"];
    assert_eq!(all.lb, LbPolicy::RoundRobin);
    let table = snap
        .route_table("reviews.shop.svc.cluster.local", 9080)
        .unwrap();
    match &table.http[0].action {
        RouteAction::Forward { destinations, .. } => {
            assert_eq!(
                destinations[0].cluster,
                "outbound|9080|v2|reviews.shop.svc.cluster.local"
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn unimplemented_settings_are_refused_by_name() {
    let yaml = format!(
        "{BASE}resources:
  - apiVersion: networking.istio.io/v1
    kind: VirtualService
    metadata: {{name: reviews, namespace: shop}}
    spec:
      hosts: [reviews]
      http: [{{retries: {{attempts: 1, retryRemoteLocalities: true}}, route: [{{destination: {{host: reviews}}}}]}}]
"
    );
    let e = compile_yaml(&yaml).unwrap_err();
    assert!(matches!(e, CompileError::Unsupported { .. }), "{e}");
    assert!(
        e.to_string()
            .contains("spec.http[0].retries.retryRemoteLocalities"),
        "{e}"
    );

    let yaml = format!(
        "{BASE}resources:
  - apiVersion: security.istio.io/v1
    kind: AuthorizationPolicy
    metadata: {{name: deny, namespace: shop}}
    spec: {{}}
"
    );
    let e = compile_yaml(&yaml).unwrap_err();
    assert!(
        e.to_string().contains("AuthorizationPolicy shop/deny"),
        "{e}"
    );
}

#[test]
fn source_labels_are_decided_for_this_node() {
    let yaml = format!(
        "node: {{name: a, namespace: shop, labels: {{app: web}}}}
{BASE}resources:
  - apiVersion: networking.istio.io/v1
    kind: VirtualService
    metadata: {{name: reviews, namespace: shop}}
    spec:
      hosts: [reviews]
      http:
        - match: [{{sourceLabels: {{app: batch}}}}]
          route: [{{destination: {{host: reviews}}}}]
        - match: [{{sourceLabels: {{app: web}}, uri: {{prefix: /web}}}}]
          route: [{{destination: {{host: reviews}}}}]
"
    );
    let snap = compile_yaml(&yaml).unwrap();
    let table = snap
        .route_table("reviews.shop.svc.cluster.local", 9080)
        .unwrap();
    assert_eq!(
        table.http.len(),
        1,
        "the batch-only route never applies here"
    );
}

#[test]
fn inbound_gets_a_cluster_per_port_of_the_local_service() {
    let yaml = "
node: {namespace: shop}
listeners:
  inbound: {bind: \"127.0.0.1:15006\", service: reviews, address: \"127.0.0.1:9080\"}
services:
  - name: reviews
    ports: [{number: 9080, protocol: HTTP}, {number: 9443, protocol: TCP}]
";
    let snap = compile_yaml(yaml).unwrap();
    assert_eq!(snap.clusters["inbound|9443||"].endpoints[0].port, 9443);
    assert_eq!(snap.clusters["inbound|9443||"].protocol, Protocol::Tcp);
    assert!(snap.route_tables.contains_key("inbound|9080"));
}

#[test]
fn retry_on_reads_envoy_conditions_grpc_codes_and_status_numbers() {
    let on = parse_retry_on("5xx,reset,deadline-exceeded,resource-exhausted,409").unwrap();
    assert!(on.five_xx && on.reset);
    assert_eq!(on.grpc_codes, vec![4, 8]);
    assert_eq!(on.retriable_status_codes, vec![409]);
    assert!(parse_retry_on("sometimes").is_err());
}

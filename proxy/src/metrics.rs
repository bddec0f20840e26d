//! Prometheus metrics under Istio's names, so existing dashboards and alerts work unchanged.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub reporter: &'static str,
    pub source_workload: String,
    pub source_workload_namespace: String,
    pub destination_service: String,
    pub destination_cluster: String,
    pub request_protocol: &'static str,
    pub response_code: u16,
    pub response_flags: String,
    pub grpc_response_status: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TcpLabels {
    pub reporter: &'static str,
    pub source_workload: String,
    pub destination_service: String,
    pub destination_cluster: String,
    pub response_flags: String,
}

pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub request_duration: Family<RequestLabels, Histogram>,
    pub tcp_opened: Family<TcpLabels, Counter>,
    pub tcp_closed: Family<TcpLabels, Counter>,
    pub tcp_sent: Family<TcpLabels, Counter>,
    pub tcp_received: Family<TcpLabels, Counter>,
    pub config_swaps: Counter,
    pub downstream_connections: Gauge,
}

/// Istio's buckets for `istio_request_duration_milliseconds`.
const DURATION_BUCKETS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let request_duration = Family::<RequestLabels, Histogram>::new_with_constructor(
            duration_histogram as fn() -> Histogram,
        );
        let tcp_opened = Family::<TcpLabels, Counter>::default();
        let tcp_closed = Family::<TcpLabels, Counter>::default();
        let tcp_sent = Family::<TcpLabels, Counter>::default();
        let tcp_received = Family::<TcpLabels, Counter>::default();
        let config_swaps = Counter::default();
        let downstream_connections = Gauge::default();
        // prometheus-client appends `_total` to counters itself.
        registry.register("istio_requests", "Requests proxied", requests.clone());
        registry.register(
            "istio_request_duration_milliseconds",
            "Time to the response head, in milliseconds",
            request_duration.clone(),
        );
        registry.register(
            "istio_tcp_connections_opened",
            "TCP connections opened",
            tcp_opened.clone(),
        );
        registry.register(
            "istio_tcp_connections_closed",
            "TCP connections closed",
            tcp_closed.clone(),
        );
        registry.register(
            "istio_tcp_sent_bytes",
            "Bytes sent to the client on TCP connections",
            tcp_sent.clone(),
        );
        registry.register(
            "istio_tcp_received_bytes",
            "Bytes received from the client on TCP connections",
            tcp_received.clone(),
        );
        registry.register(
            "trellis_proxy_config_swaps",
            "Snapshots swapped in",
            config_swaps.clone(),
        );
        registry.register(
            "trellis_proxy_downstream_connections",
            "Open downstream connections",
            downstream_connections.clone(),
        );
        Self {
            registry,
            requests,
            request_duration,
            tcp_opened,
            tcp_closed,
            tcp_sent,
            tcp_received,
            config_swaps,
            downstream_connections,
        }
    }
}

impl Metrics {
    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

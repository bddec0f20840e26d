//! Prometheus metrics under Istio's names, so existing dashboards and alerts work unchanged.

use std::hash::BuildHasher;
use std::sync::Mutex;

use foldhash::{HashMap, HashMapExt};
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

/// The labels of one request, borrowed from what the request already holds.
#[derive(Hash)]
pub struct RequestKey<'a> {
    pub reporter: &'static str,
    pub source_workload: &'a str,
    pub source_workload_namespace: &'a str,
    pub destination_service: &'a str,
    pub destination_cluster: &'a str,
    pub request_protocol: &'static str,
    pub response_code: u16,
    pub response_flags: &'a str,
    pub grpc_response_status: &'a str,
}

impl RequestKey<'_> {
    fn is(&self, l: &RequestLabels) -> bool {
        self.reporter == l.reporter
            && self.response_code == l.response_code
            && self.request_protocol == l.request_protocol
            && self.destination_cluster == l.destination_cluster
            && self.destination_service == l.destination_service
            && self.response_flags == l.response_flags
            && self.grpc_response_status == l.grpc_response_status
            && self.source_workload == l.source_workload
            && self.source_workload_namespace == l.source_workload_namespace
    }

    fn to_labels(&self) -> RequestLabels {
        RequestLabels {
            reporter: self.reporter,
            source_workload: self.source_workload.to_owned(),
            source_workload_namespace: self.source_workload_namespace.to_owned(),
            destination_service: self.destination_service.to_owned(),
            destination_cluster: self.destination_cluster.to_owned(),
            request_protocol: self.request_protocol,
            response_code: self.response_code,
            response_flags: self.response_flags.to_owned(),
            grpc_response_status: self.grpc_response_status.to_owned(),
        }
    }
}

/// A label set's counter and histogram (each shares its value with the family's).
struct RequestSeries {
    labels: RequestLabels,
    requests: Counter,
    duration: Histogram,
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
    /// Every request label set seen so far, by a fast hash of the borrowed labels: a
    /// request then neither builds label strings nor hashes them for each family (nor
    /// hashes that hash again with SipHash: std's default hasher cost 150 instructions here).
    request_series: Mutex<HashMap<u64, Vec<RequestSeries>>>,
    series_hash: foldhash::fast::RandomState,
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
            request_series: Mutex::new(HashMap::new()),
            series_hash: foldhash::fast::RandomState::default(),
        }
    }
}

impl Metrics {
    /// Counts one request and the time to its response head.
    pub fn observe_request(&self, key: &RequestKey<'_>, millis: f64) {
        let hash = self.series_hash.hash_one(key);
        let mut series = self
            .request_series
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let same_hash = series.entry(hash).or_default();
        let index = match same_hash.iter().position(|s| key.is(&s.labels)) {
            Some(i) => i,
            None => {
                let labels = key.to_labels();
                let requests = self.requests.get_or_create(&labels).clone();
                let duration = self.request_duration.get_or_create(&labels).clone();
                same_hash.push(RequestSeries {
                    labels,
                    requests,
                    duration,
                });
                same_hash.len() - 1
            }
        };
        let s = &same_hash[index];
        s.requests.inc();
        s.duration.observe(millis);
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(code: u16, flags: &str) -> RequestKey<'_> {
        RequestKey {
            reporter: "source",
            source_workload: "web",
            source_workload_namespace: "default",
            destination_service: "reviews",
            destination_cluster: "outbound|9080|v1|reviews",
            request_protocol: "http",
            response_code: code,
            response_flags: flags,
            grpc_response_status: "",
        }
    }

    fn sample<'a>(text: &'a str, name: &str, code: &str) -> Option<&'a str> {
        text.lines()
            .find(|l| l.starts_with(name) && l.contains(&format!("response_code=\"{code}\"")))
            .and_then(|l| l.rsplit(' ').next())
    }

    #[test]
    fn each_label_set_counts_its_own_requests_and_durations() {
        let metrics = Metrics::default();
        for _ in 0..3 {
            metrics.observe_request(&key(200, "-"), 2.0);
        }
        metrics.observe_request(&key(503, "UO"), 7.0);
        let text = metrics.encode();
        assert_eq!(
            sample(&text, "istio_requests_total{", "200"),
            Some("3"),
            "{text}"
        );
        assert_eq!(
            sample(&text, "istio_requests_total{", "503"),
            Some("1"),
            "{text}"
        );
        assert_eq!(
            sample(&text, "istio_request_duration_milliseconds_count{", "200"),
            Some("3"),
            "{text}"
        );
        assert_eq!(
            sample(&text, "istio_request_duration_milliseconds_sum{", "503"),
            Some("7.0"),
            "{text}"
        );
        assert!(
            text.contains("response_flags=\"UO\"") && text.contains("response_flags=\"-\""),
            "{text}"
        );
    }
}

//! Turning Istio's per-route and per-destination settings (retries, faults, CORS, headers,
//! load balancing, connection pools, outlier detection) into their compiled form.

use std::collections::BTreeMap;

use http::header::{HeaderName, HeaderValue};
use trellis_api::Duration;
use trellis_api::networking::{
    ClientTlsMode, ConnectionPoolSettings, HeaderOperations, Headers, HttpMatchRequest,
    LoadBalancerSettings, OutlierDetection, SimpleLb, StringMatch, TrafficPolicy,
};
use trellis_api::trellis::RateLimitSpec;

use super::{DEFAULT_RETRY_ON, Result, secs};
use crate::config::matcher::{HeaderOps, Pattern, RequestMatch, StringMatcher};
use crate::config::snapshot::*;
use crate::error::CompileError;

pub(super) fn weighted(cluster: &str, weight: u32) -> WeightedCluster {
    WeightedCluster {
        cluster: cluster.to_owned(),
        weight,
        request_headers: HeaderOps::default(),
        response_headers: HeaderOps::default(),
    }
}

pub(super) fn default_retry() -> RetryPolicy {
    let mut on = parse_retry_on(DEFAULT_RETRY_ON).unwrap_or_default();
    on.retriable_status_codes = vec![503];
    RetryPolicy {
        attempts: 2,
        per_try_timeout: None,
        on,
        backoff_base: Duration::from_millis(25),
        ignore_previous_hosts: true,
    }
}

pub(super) fn default_route(cluster: &str) -> HttpRoute {
    HttpRoute {
        name: "default".into(),
        matches: Vec::new(),
        action: RouteAction::Forward {
            destinations: vec![weighted(cluster, 100)],
            rewrite: None,
        },
        request_headers: HeaderOps::default(),
        response_headers: HeaderOps::default(),
        timeout: None,
        retry: default_retry(),
        fault: None,
        mirrors: Vec::new(),
        cors: None,
        rate_limits: Vec::new(),
    }
}

pub(super) fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_owned())
}

pub(super) fn port_u16(name: &str, path: &str, port: u32) -> Result<u16> {
    u16::try_from(port).ok().filter(|p| *p > 0).ok_or_else(|| {
        CompileError::invalid(name, path, format!("port {port} is not in 1..=65535"))
    })
}

pub(super) fn opt_port(name: &str, path: &str, port: u32) -> Result<Option<u16>> {
    if port == 0 {
        Ok(None)
    } else {
        port_u16(name, path, port).map(Some)
    }
}

pub(super) fn status(name: &str, path: &str, code: u32) -> Result<u16> {
    u16::try_from(code)
        .ok()
        .filter(|c| (100..=599).contains(c))
        .ok_or_else(|| CompileError::invalid(name, path, format!("{code} is not an HTTP status")))
}

pub(super) fn subnets(name: &str, path: &str, list: &[String]) -> Result<Vec<Subnet>> {
    list.iter()
        .enumerate()
        .map(|(i, s)| {
            Subnet::parse(s).ok_or_else(|| {
                CompileError::invalid(
                    name,
                    format!("{path}[{i}]"),
                    format!("{s:?} is not an IP or CIDR"),
                )
            })
        })
        .collect()
}

pub(super) fn string_matcher(name: &str, path: &str, s: &StringMatch) -> Result<StringMatcher> {
    Ok(match (&s.exact, &s.prefix, &s.regex) {
        (Some(e), _, _) => StringMatcher::Exact(e.clone()),
        (_, Some(p), _) => StringMatcher::Prefix(p.clone()),
        (_, _, Some(r)) => StringMatcher::Regex(
            Pattern::full(r)
                .map_err(|e| CompileError::invalid(name, format!("{path}.regex"), e.to_string()))?,
        ),
        _ => StringMatcher::Present,
    })
}

pub(super) fn header_name(name: &str, path: &str, h: &str) -> Result<HeaderName> {
    HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes())
        .map_err(|_| CompileError::invalid(name, path, format!("{h:?} is not a valid header name")))
}

pub(super) fn header_ops(
    name: &str,
    path: &str,
    headers: Option<&Headers>,
) -> Result<(HeaderOps, HeaderOps)> {
    let ops = |field: &str, o: Option<&HeaderOperations>| -> Result<HeaderOps> {
        let Some(o) = o else {
            return Ok(HeaderOps::default());
        };
        let at = format!("{path}.{field}");
        let pairs = |kind: &str,
                     map: &BTreeMap<String, String>|
         -> Result<Vec<(HeaderName, HeaderValue)>> {
            map.iter()
                .map(|(k, v)| {
                    let p = format!("{at}.{kind}.{k}");
                    let value = HeaderValue::from_str(v)
                        .map_err(|_| CompileError::invalid(name, &p, "not a valid header value"))?;
                    Ok((header_name(name, &p, k)?, value))
                })
                .collect()
        };
        Ok(HeaderOps {
            set: pairs("set", &o.set)?,
            add: pairs("add", &o.add)?,
            remove: o
                .remove
                .iter()
                .enumerate()
                .map(|(i, h)| header_name(name, &format!("{at}.remove[{i}]"), h))
                .collect::<Result<_>>()?,
        })
    };
    Ok((
        ops("request", headers.and_then(|h| h.request.as_ref()))?,
        ops("response", headers.and_then(|h| h.response.as_ref()))?,
    ))
}

/// gRPC status names as Istio's `retryOn` and `grpcStatus` write them.
pub(super) fn grpc_code(name: &str) -> Option<u32> {
    const NAMES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    let upper = name.trim().to_ascii_uppercase().replace('-', "_");
    if let Ok(n) = upper.parse::<u32>() {
        return (n < 17).then_some(n);
    }
    NAMES
        .iter()
        .position(|n| *n == upper)
        .and_then(|i| u32::try_from(i).ok())
}

pub(super) fn parse_retry_on(text: &str) -> std::result::Result<RetryOn, String> {
    let mut on = RetryOn::default();
    for cond in text.split(',').map(str::trim).filter(|c| !c.is_empty()) {
        match cond {
            "5xx" => on.five_xx = true,
            "gateway-error" => on.gateway_error = true,
            "reset" => on.reset = true,
            "connect-failure" => on.connect_failure = true,
            "refused-stream" => on.refused_stream = true,
            "retriable-4xx" => on.retriable_4xx = true,
            "retriable-status-codes" => {}
            other => {
                if let Ok(code) = other.parse::<u16>() {
                    on.retriable_status_codes.push(code);
                } else if let Some(code) =
                    grpc_code(other).filter(|_| other.chars().any(|c| c.is_alphabetic()))
                {
                    on.grpc_codes.push(code);
                } else {
                    return Err(format!("unknown retry condition {other:?}"));
                }
            }
        }
    }
    Ok(on)
}

pub(super) fn retry_policy(
    name: &str,
    path: &str,
    r: Option<&trellis_api::networking::HttpRetry>,
) -> Result<RetryPolicy> {
    let mut policy = default_retry();
    let Some(r) = r else { return Ok(policy) };
    policy.attempts = u32::try_from(r.attempts).unwrap_or(0);
    policy.per_try_timeout = r.per_try_timeout.filter(|t| !t.as_std().is_zero());
    if !r.retry_on.is_empty() {
        let mut on = parse_retry_on(&r.retry_on)
            .map_err(|m| CompileError::invalid(name, format!("{path}.retryOn"), m))?;
        if r.retry_on
            .split(',')
            .any(|c| c.trim() == "retriable-status-codes")
            && on.retriable_status_codes.is_empty()
        {
            on.retriable_status_codes.push(503);
        }
        policy.on = on;
    }
    if let Some(b) = r.backoff {
        policy.backoff_base = b;
    }
    if let Some(ignore) = r.retry_ignore_previous_hosts {
        policy.ignore_previous_hosts = ignore;
    }
    if r.retry_remote_localities.is_some() {
        return Err(CompileError::unsupported(
            name,
            format!("{path}.retryRemoteLocalities"),
            "retryRemoteLocalities",
        ));
    }
    Ok(policy)
}

pub(super) fn fault(
    name: &str,
    path: &str,
    f: Option<&trellis_api::networking::HttpFaultInjection>,
) -> Result<Option<Fault>> {
    let Some(f) = f else { return Ok(None) };
    let delay = match &f.delay {
        None => None,
        Some(d) => {
            if d.exponential_delay.is_some() {
                return Err(CompileError::unsupported(
                    name,
                    format!("{path}.delay.exponentialDelay"),
                    "exponentialDelay",
                ));
            }
            let Some(delay) = d.fixed_delay else {
                return Err(CompileError::invalid(
                    name,
                    format!("{path}.delay.fixedDelay"),
                    "Required value",
                ));
            };
            let percent = d
                .percentage
                .as_ref()
                .map(|p| p.value)
                .or(d.percent.map(f64::from))
                .unwrap_or(100.0);
            Some(FaultDelay { delay, percent })
        }
    };
    let abort = match &f.abort {
        None => None,
        Some(a) => {
            if a.http2_error.is_some() {
                return Err(CompileError::unsupported(
                    name,
                    format!("{path}.abort.http2Error"),
                    "http2Error",
                ));
            }
            let kind = match (&a.http_status, &a.grpc_status) {
                (Some(s), _) => AbortKind::HttpStatus(status(
                    name,
                    &format!("{path}.abort.httpStatus"),
                    u32::try_from(*s).unwrap_or(0),
                )?),
                (None, Some(g)) => AbortKind::GrpcStatus(grpc_code(g).ok_or_else(|| {
                    CompileError::invalid(
                        name,
                        format!("{path}.abort.grpcStatus"),
                        format!("unknown gRPC status {g:?}"),
                    )
                })?),
                (None, None) => {
                    return Err(CompileError::invalid(
                        name,
                        format!("{path}.abort.httpStatus"),
                        "Required value",
                    ));
                }
            };
            Some(FaultAbort {
                kind,
                percent: a.percentage.as_ref().map(|p| p.value).unwrap_or(100.0),
            })
        }
    };
    Ok(Some(Fault { delay, abort }))
}

pub(super) fn cors(
    name: &str,
    path: &str,
    c: Option<&trellis_api::networking::CorsPolicy>,
) -> Result<Option<Cors>> {
    use trellis_api::networking::UnmatchedPreflights;
    let Some(c) = c else { return Ok(None) };
    let mut allow_origins = Vec::new();
    for o in &c.allow_origin {
        allow_origins.push(if o == "*" {
            StringMatcher::Present
        } else {
            StringMatcher::Exact(o.clone())
        });
    }
    for (i, o) in c.allow_origins.iter().enumerate() {
        allow_origins.push(string_matcher(
            name,
            &format!("{path}.allowOrigins[{i}]"),
            o,
        )?);
    }
    Ok(Some(Cors {
        allow_origins,
        allow_methods: c.allow_methods.join(","),
        allow_headers: c.allow_headers.join(","),
        expose_headers: c.expose_headers.join(","),
        max_age: c.max_age.map(|d| d.as_std().as_secs()),
        allow_credentials: c.allow_credentials.unwrap_or(false),
        forward_unmatched_preflights: c.unmatched_preflights != Some(UnmatchedPreflights::Ignore),
    }))
}

pub(super) fn rate_limit(
    name: &str,
    meta: &trellis_api::ObjectMeta,
    spec: &RateLimitSpec,
    mut matcher: impl FnMut(&str, &HttpMatchRequest) -> Result<Option<RequestMatch>>,
) -> Result<RateLimit> {
    let bucket = spec.token_bucket().ok_or_else(|| {
        CompileError::invalid(
            name,
            "spec",
            "give requestsPerUnit and unit, or tokensPerFill and fillInterval",
        )
    })?;
    if bucket.tokens_per_fill == 0 || bucket.fill_interval.as_std().is_zero() {
        return Err(CompileError::invalid(
            name,
            "spec.tokensPerFill",
            "the bucket must refill",
        ));
    }
    let mut matches = Vec::new();
    for (i, m) in spec.matches.iter().enumerate() {
        if let Some(rm) = matcher(&format!("spec.match[{i}]"), m)? {
            matches.push(rm);
        }
    }
    Ok(RateLimit {
        name: format!("{}/{}", meta.namespace, meta.name),
        matches,
        tokens_per_fill: bucket.tokens_per_fill,
        fill_interval: bucket.fill_interval,
        max_tokens: bucket.max_tokens.max(1),
    })
}

/// Istio merges a subset's traffic policy over the rule's, one setting at a time.
pub(super) fn merge_policy(
    base: Option<&TrafficPolicy>,
    subset: Option<&TrafficPolicy>,
) -> Option<TrafficPolicy> {
    match (base, subset) {
        (None, None) => None,
        (Some(b), None) => Some(b.clone()),
        (None, Some(s)) => Some(s.clone()),
        (Some(b), Some(s)) => Some(TrafficPolicy {
            load_balancer: s.load_balancer.clone().or_else(|| b.load_balancer.clone()),
            connection_pool: s
                .connection_pool
                .clone()
                .or_else(|| b.connection_pool.clone()),
            outlier_detection: s
                .outlier_detection
                .clone()
                .or_else(|| b.outlier_detection.clone()),
            tls: s.tls.clone().or_else(|| b.tls.clone()),
            port_level_settings: if s.port_level_settings.is_empty() {
                b.port_level_settings.clone()
            } else {
                s.port_level_settings.clone()
            },
            tunnel: s.tunnel.clone().or_else(|| b.tunnel.clone()),
            proxy_protocol: s
                .proxy_protocol
                .clone()
                .or_else(|| b.proxy_protocol.clone()),
            retry_budget: s.retry_budget.clone().or_else(|| b.retry_budget.clone()),
        }),
    }
}

/// Connection-pool knobs that tune rather than change behaviour: accepted, with a warning
/// that names them, while the proxy does not enforce them yet.
pub(super) fn pool_warnings(
    name: &str,
    path: &str,
    cp: &ConnectionPoolSettings,
    warnings: &mut Vec<String>,
) {
    let mut not_yet = Vec::new();
    if let Some(tcp) = &cp.tcp {
        if tcp.tcp_keepalive.is_some() {
            not_yet.push("tcp.tcpKeepalive");
        }
        if tcp.max_connection_duration.is_some() {
            not_yet.push("tcp.maxConnectionDuration");
        }
    }
    if let Some(http) = &cp.http {
        if http.max_requests_per_connection > 1 {
            not_yet.push("http.maxRequestsPerConnection above 1");
        }
        if http.max_concurrent_streams > 0 {
            not_yet.push("http.maxConcurrentStreams");
        }
        if http.http2_keep_alive.is_some() {
            not_yet.push("http.http2KeepAlive");
        }
    }
    for what in not_yet {
        warnings.push(format!(
            "{name}: {path}.{what}: accepted, but the Trellis proxy does not enforce it yet"
        ));
    }
}

/// Refuses what the proxy does not do yet, naming the field.
pub(super) fn check_traffic_policy(name: &str, path: &str, tp: &TrafficPolicy) -> Result<()> {
    let tls_ok = |t: &Option<trellis_api::networking::ClientTlsSettings>| {
        t.as_ref().is_none_or(|t| t.mode == ClientTlsMode::Disable)
    };
    if !tls_ok(&tp.tls) {
        return Err(CompileError::unsupported(
            name,
            format!("{path}.tls.mode"),
            "client TLS (SIMPLE, MUTUAL, ISTIO_MUTUAL)",
        ));
    }
    if tp.tunnel.is_some() {
        return Err(CompileError::unsupported(
            name,
            format!("{path}.tunnel"),
            "tunnel",
        ));
    }
    if tp.proxy_protocol.is_some() {
        return Err(CompileError::unsupported(
            name,
            format!("{path}.proxyProtocol"),
            "PROXY protocol",
        ));
    }
    let lb = |at: String, lb: &Option<LoadBalancerSettings>| -> Result<()> {
        let Some(lb) = lb else { return Ok(()) };
        if lb.simple == Some(SimpleLb::Passthrough) {
            return Err(CompileError::unsupported(
                name,
                format!("{at}.simple"),
                "PASSTHROUGH load balancing",
            ));
        }
        if let Some(l) = &lb.locality_lb_setting
            && !l.distribute.is_empty()
        {
            return Err(CompileError::unsupported(
                name,
                format!("{at}.localityLbSetting.distribute"),
                "locality weight distribution",
            ));
        }
        Ok(())
    };
    lb(format!("{path}.loadBalancer"), &tp.load_balancer)?;
    for (i, p) in tp.port_level_settings.iter().enumerate() {
        let at = format!("{path}.portLevelSettings[{i}]");
        lb(format!("{at}.loadBalancer"), &p.load_balancer)?;
        if !tls_ok(&p.tls) {
            return Err(CompileError::unsupported(
                name,
                format!("{at}.tls.mode"),
                "client TLS (SIMPLE, MUTUAL, ISTIO_MUTUAL)",
            ));
        }
    }
    Ok(())
}

pub(super) type LbParts = (LbPolicy, Option<LocalityLb>, Option<Warmup>);

pub(super) fn lb_policy(
    name: &str,
    lb: Option<&LoadBalancerSettings>,
    has_outlier: bool,
) -> Result<LbParts> {
    let Some(lb) = lb else {
        return Ok((LbPolicy::LeastRequest, None, None));
    };
    let policy = if let Some(ch) = &lb.consistent_hash {
        let key = if let Some(h) = &ch.http_header_name {
            HashKey::Header(h.to_ascii_lowercase())
        } else if let Some(c) = &ch.http_cookie {
            HashKey::Cookie {
                name: c.name.clone(),
                path: c.path.clone(),
                ttl: c.ttl,
            }
        } else if ch.use_source_ip == Some(true) {
            HashKey::SourceIp
        } else if let Some(q) = &ch.http_query_parameter_name {
            HashKey::QueryParameter(q.clone())
        } else {
            return Err(CompileError::invalid(
                name,
                "spec.trafficPolicy.loadBalancer.consistentHash",
                "say what to hash: httpHeaderName, httpCookie, useSourceIp or httpQueryParameterName",
            ));
        };
        match &ch.maglev {
            Some(m) => LbPolicy::Maglev {
                key,
                table_size: if m.table_size == 0 {
                    65537
                } else {
                    m.table_size.min(5_000_011)
                },
            },
            None => {
                let min = ch
                    .ring_hash
                    .as_ref()
                    .map(|r| r.minimum_ring_size)
                    .filter(|n| *n > 0)
                    .unwrap_or(ch.minimum_ring_size);
                LbPolicy::RingHash {
                    key,
                    min_ring_size: if min == 0 { 1024 } else { min.min(8_388_608) },
                }
            }
        }
    } else {
        match lb.simple {
            Some(SimpleLb::RoundRobin) => LbPolicy::RoundRobin,
            Some(SimpleLb::Random) => LbPolicy::Random,
            _ => LbPolicy::LeastRequest,
        }
    };
    // Istio turns locality balancing on only with outlier detection, which tells it what is
    // unhealthy enough to fail over from.
    let locality = lb.locality_lb_setting.as_ref().and_then(|l| {
        (l.enabled != Some(false) && has_outlier).then(|| LocalityLb {
            failover_priority: l.failover_priority.clone(),
            failover: l
                .failover
                .iter()
                .map(|f| (f.from.clone(), f.to.clone()))
                .collect(),
        })
    });
    let warmup = match (&lb.warmup, lb.warmup_duration_secs) {
        (Some(w), _) => w.duration.map(|d| Warmup {
            duration: d,
            min_weight: w.minimum_percent.unwrap_or(10.0).clamp(0.0, 100.0) / 100.0,
            aggression: w.aggression.unwrap_or(1.0).max(1.0),
        }),
        (None, Some(d)) => Some(Warmup {
            duration: d,
            min_weight: 0.1,
            aggression: 1.0,
        }),
        _ => None,
    };
    Ok((policy, locality, warmup))
}

pub(super) fn positive(n: i32) -> Option<u32> {
    u32::try_from(n).ok().filter(|n| *n > 0)
}

/// Returns the limits and whether HTTP/1 upstreams are to be upgraded to HTTP/2.
pub(super) fn pool_limits(p: Option<&ConnectionPoolSettings>) -> (PoolLimits, bool) {
    let tcp = p.and_then(|p| p.tcp.as_ref());
    let http = p.and_then(|p| p.http.as_ref());
    let limits = PoolLimits {
        max_connections: tcp.and_then(|t| positive(t.max_connections)),
        max_pending_requests: http.and_then(|h| positive(h.http1_max_pending_requests)),
        max_requests: http.and_then(|h| positive(h.http2_max_requests)),
        max_requests_per_connection: http.and_then(|h| positive(h.max_requests_per_connection)),
        max_retries: http.and_then(|h| positive(h.max_retries)),
        connect_timeout: tcp.and_then(|t| t.connect_timeout).unwrap_or(secs(10)),
        idle_timeout: http
            .and_then(|h| h.idle_timeout)
            .or(tcp.and_then(|t| t.idle_timeout)),
    };
    let upgrade = http.and_then(|h| h.h2_upgrade_policy)
        == Some(trellis_api::networking::H2UpgradePolicy::Upgrade);
    (limits, upgrade)
}

/// DESIGN §4: with nothing said, 5 consecutive 5xx eject for 30 s, at most 10 % of a pool.
pub(super) fn outlier_policy(o: Option<&OutlierDetection>) -> Option<OutlierPolicy> {
    let Some(o) = o else {
        return Some(OutlierPolicy {
            consecutive_5xx: Some(5),
            consecutive_gateway_errors: None,
            interval: secs(10),
            base_ejection_time: secs(30),
            max_ejection_percent: 10,
            min_health_percent: 0,
        });
    };
    let consecutive_5xx = match o.consecutive_5xx_errors {
        Some(0) => None,
        Some(n) => Some(n),
        None => Some(5),
    };
    let gateway = o
        .consecutive_gateway_errors
        .filter(|n| *n > 0)
        .or(u32::try_from(o.consecutive_errors).ok().filter(|n| *n > 0));
    Some(OutlierPolicy {
        consecutive_5xx,
        consecutive_gateway_errors: gateway,
        interval: o.interval.unwrap_or(secs(10)),
        base_ejection_time: o.base_ejection_time.unwrap_or(secs(30)),
        max_ejection_percent: u32::try_from(o.max_ejection_percent)
            .ok()
            .filter(|p| *p > 0)
            .unwrap_or(10)
            .min(100),
        min_health_percent: u32::try_from(o.min_health_percent).unwrap_or(0).min(100),
    })
}

//! A cluster's live side: endpoints with their health, the balancer, the connection pool and
//! the counters that enforce connection-pool limits and the retry budget.

pub mod endpoint;
pub mod http1;
pub mod http2;
pub mod lb;
pub mod pool;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use endpoint::{EndpointState, Outcome};
use lb::Balancer;
use pool::Pool;

use crate::config::{Cluster, Node};
use crate::flags::Flag;

#[derive(Debug, Default)]
pub struct Counters {
    active_requests: AtomicUsize,
    active_retries: AtomicUsize,
}

pub struct ClusterRuntime {
    pub spec: Cluster,
    pub endpoints: Vec<Arc<EndpointState>>,
    /// `0..endpoints.len()`: the candidates when every endpoint may take the request.
    every_endpoint: Vec<usize>,
    balancer: Balancer,
    pub pool: Arc<Pool>,
    counters: Arc<Counters>,
    node: Node,
}

impl ClusterRuntime {
    /// Builds the live side of `spec`, keeping what `old` knew about the same endpoints;
    /// `workers` pools of upstream connections, one per worker thread.
    pub fn new(spec: Cluster, old: Option<&ClusterRuntime>, node: &Node, workers: usize) -> Self {
        let previous: HashMap<&str, &Arc<EndpointState>> = old
            .map(|o| {
                o.endpoints
                    .iter()
                    .map(|e| (e.authority.as_str(), e))
                    .collect()
            })
            .unwrap_or_default();
        let endpoints = spec
            .endpoints
            .iter()
            .map(|e| match previous.get(e.authority().as_str()) {
                Some(prev) if prev.endpoint == *e => Arc::clone(prev),
                Some(prev) => Arc::new(prev.renewed(e.clone())),
                None => Arc::new(EndpointState::new(e.clone(), old.is_some())),
            })
            .collect::<Vec<_>>();
        let pool = match old {
            Some(o) if o.pool.limits == spec.pool && o.pool.workers() == workers => o.pool.clone(),
            _ => Arc::new(Pool::new(&spec.pool, workers)),
        };
        let counters = old.map(|o| o.counters.clone()).unwrap_or_default();
        Self {
            balancer: Balancer::new(&spec),
            spec,
            every_endpoint: (0..endpoints.len()).collect(),
            endpoints,
            pool,
            counters,
            node: node.clone(),
        }
    }

    /// Picks an endpoint: ejected ones are out, the best locality priority wins, hosts tried
    /// before are avoided when others remain.
    pub fn choose(&self, hash: Option<u64>, exclude: &[usize]) -> Result<usize, Flag> {
        let n = self.endpoints.len();
        if n == 0 {
            return Err(Flag::NoHealthyUpstream);
        }
        // The usual case: nothing ejected, no locality, nothing to avoid, no warmup.
        if exclude.is_empty()
            && self.spec.locality_lb.is_none()
            && self.spec.warmup.is_none()
            && !self.endpoints.iter().any(|e| e.may_be_ejected())
        {
            return Ok(self
                .balancer
                .pick(&self.endpoints, &self.every_endpoint, hash, &|_| 1.0));
        }
        let now = Instant::now();
        let mut candidates: Vec<usize> = (0..n)
            .filter(|i| !self.endpoints[*i].is_ejected(now))
            .collect();
        if let Some(o) = &self.spec.outlier
            && o.min_health_percent > 0
            && candidates.len() * 100 < n * o.min_health_percent as usize
        {
            // Too few healthy: outlier detection steps aside rather than overload the rest.
            candidates = (0..n).collect();
        }
        if candidates.is_empty() {
            return Err(Flag::NoHealthyUpstream);
        }
        if let Some(loc) = &self.spec.locality_lb {
            let prio: Vec<usize> = candidates
                .iter()
                .map(|i| {
                    lb::priority(
                        loc,
                        &self.node.locality,
                        &self.node.labels,
                        &self.endpoints[*i],
                    )
                })
                .collect();
            if let Some(best) = prio.iter().min().copied() {
                candidates = candidates
                    .iter()
                    .zip(prio)
                    .filter(|(_, p)| *p == best)
                    .map(|(i, _)| *i)
                    .collect();
            }
        }
        if !exclude.is_empty() {
            let fresh: Vec<usize> = candidates
                .iter()
                .copied()
                .filter(|i| !exclude.contains(i))
                .collect();
            if !fresh.is_empty() {
                candidates = fresh;
            }
        }
        let warm = |e: &EndpointState| match &self.spec.warmup {
            Some(w) => lb::warmth(e, w, now),
            None => 1.0,
        };
        Ok(self
            .balancer
            .pick(&self.endpoints, &candidates, hash, &warm))
    }

    /// Tells outlier detection how an attempt on an endpoint went.
    pub fn report(&self, idx: usize, outcome: Outcome) {
        let (Some(policy), Some(ep)) = (&self.spec.outlier, self.endpoints.get(idx)) else {
            return;
        };
        if !ep.record(outcome, policy) {
            return;
        }
        let now = Instant::now();
        let n = self.endpoints.len();
        let ejected = self.endpoints.iter().filter(|e| e.is_ejected(now)).count();
        // Envoy ejects while the ejected share is below the maximum, so at least one host can
        // always be ejected.
        if ejected * 100 < n * policy.max_ejection_percent as usize {
            let length = ep.eject(policy, now);
            tracing::warn!(
                cluster = %self.spec.name,
                endpoint = %ep.authority,
                ?length,
                "outlier detection ejected endpoint"
            );
        }
    }

    /// Counts a request against `http2MaxRequests` (and, for HTTP/1, `maxConnections` plus
    /// `http1MaxPendingRequests`).
    pub fn try_start_request(&self, http1: bool) -> Result<RequestPermit, Flag> {
        let limits = &self.spec.pool;
        let mut cap = limits.max_requests.map(|n| n as usize);
        if http1 && let (Some(c), Some(p)) = (limits.max_connections, limits.max_pending_requests) {
            let h1 = c as usize + p as usize;
            cap = Some(cap.map_or(h1, |x| x.min(h1)));
        }
        let now = self.counters.active_requests.fetch_add(1, Ordering::AcqRel) + 1;
        let permit = RequestPermit(self.counters.clone());
        if cap.is_some_and(|cap| now > cap) {
            return Err(Flag::UpstreamOverflow);
        }
        Ok(permit)
    }

    /// A retry is allowed while retries in flight stay within the budget (a share of active
    /// requests, at least `minRetryConcurrency`) and `maxRetries`.
    pub fn try_start_retry(&self) -> Option<RetryPermit> {
        let budget = &self.spec.retry_budget;
        let active = self.counters.active_requests.load(Ordering::Acquire) as f64;
        let allowed = ((budget.percent / 100.0) * active).floor() as usize;
        let allowed = allowed.max(budget.min_concurrency as usize);
        let allowed = match self.spec.pool.max_retries {
            Some(m) => allowed.min(m as usize),
            None => allowed,
        };
        let now = self.counters.active_retries.fetch_add(1, Ordering::AcqRel) + 1;
        let permit = RetryPermit(self.counters.clone());
        (now <= allowed).then_some(permit)
    }
}

pub struct RequestPermit(Arc<Counters>);

impl Drop for RequestPermit {
    fn drop(&mut self) {
        self.0.active_requests.fetch_sub(1, Ordering::AcqRel);
    }
}

pub struct RetryPermit(Arc<Counters>);

impl Drop for RetryPermit {
    fn drop(&mut self) {
        self.0.active_retries.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use super::*;
    use crate::config::{
        Endpoint, LbPolicy, Locality, OutlierPolicy, PoolLimits, Protocol, RetryBudget,
    };

    pub(crate) fn cluster(n: u16, lb: LbPolicy) -> Cluster {
        Cluster {
            name: "outbound|80||svc".into(),
            host: "svc".into(),
            port: 80,
            subset: String::new(),
            protocol: Protocol::Http,
            passthrough: false,
            endpoints: (0..n)
                .map(|i| Endpoint {
                    address: "127.0.0.1".into(),
                    port: 10_000 + i,
                    labels: BTreeMap::new(),
                    locality: Locality::default(),
                    weight: 1,
                })
                .collect(),
            lb,
            locality_lb: None,
            warmup: None,
            pool: PoolLimits {
                connect_timeout: trellis_api::Duration::from_millis(1000),
                ..PoolLimits::default()
            },
            outlier: Some(OutlierPolicy {
                consecutive_5xx: Some(1),
                consecutive_gateway_errors: None,
                interval: trellis_api::Duration::from_millis(10_000),
                base_ejection_time: trellis_api::Duration::from_millis(30_000),
                max_ejection_percent: 10,
                min_health_percent: 0,
            }),
            retry_budget: RetryBudget {
                percent: 20.0,
                min_concurrency: 3,
            },
        }
    }

    fn runtime(spec: Cluster) -> ClusterRuntime {
        ClusterRuntime::new(spec, None, &Node::default(), 1)
    }

    #[test]
    fn retry_budget_allows_min_concurrency_then_a_share_of_active_requests() {
        let c = runtime(cluster(1, LbPolicy::RoundRobin));
        let held: Vec<_> = (0..3)
            .map(|_| c.try_start_retry().expect("within minimum"))
            .collect();
        assert!(
            c.try_start_retry().is_none(),
            "a fourth concurrent retry exceeds the budget"
        );
        drop(held);
        // With 50 requests active, 20 % allows 10 concurrent retries.
        let active: Vec<_> = (0..50)
            .map(|_| c.try_start_request(false).unwrap())
            .collect();
        let retries: Vec<_> = (0..10)
            .map(|_| c.try_start_retry().expect("within 20 %"))
            .collect();
        assert!(c.try_start_retry().is_none());
        drop((active, retries));
    }

    #[test]
    fn max_retries_caps_the_budget() {
        let mut spec = cluster(1, LbPolicy::RoundRobin);
        spec.pool.max_retries = Some(1);
        let c = runtime(spec);
        let first = c.try_start_retry();
        assert!(first.is_some());
        assert!(c.try_start_retry().is_none());
    }

    #[test]
    fn request_limit_counts_in_flight_requests() {
        let mut spec = cluster(1, LbPolicy::RoundRobin);
        spec.pool.max_requests = Some(2);
        let c = runtime(spec);
        let a = c.try_start_request(false).unwrap();
        let _b = c.try_start_request(false).unwrap();
        assert_eq!(
            c.try_start_request(false).err(),
            Some(Flag::UpstreamOverflow)
        );
        drop(a);
        assert!(c.try_start_request(false).is_ok());
    }

    #[test]
    fn ejection_respects_max_ejection_percent_and_grows_on_repeat() {
        let c = runtime(cluster(10, LbPolicy::RoundRobin));
        c.report(0, Outcome::ServerError);
        c.report(1, Outcome::ServerError);
        let now = Instant::now();
        assert!(c.endpoints[0].is_ejected(now));
        assert!(
            !c.endpoints[1].is_ejected(now),
            "10 % of 10 endpoints is one"
        );

        let policy = c.spec.outlier.clone().unwrap();
        let ep = &c.endpoints[2];
        let first = ep.eject(&policy, now);
        let second = ep.eject(&policy, now);
        assert_eq!(first, Duration::from_secs(30));
        assert_eq!(second, Duration::from_secs(60));
    }

    #[test]
    fn all_ejected_is_no_healthy_upstream() {
        let mut spec = cluster(1, LbPolicy::RoundRobin);
        if let Some(o) = spec.outlier.as_mut() {
            o.max_ejection_percent = 100;
        }
        let c = runtime(spec);
        c.report(0, Outcome::GatewayError);
        assert_eq!(c.choose(None, &[]), Err(Flag::NoHealthyUpstream));
    }

    #[test]
    fn choose_avoids_hosts_already_tried() {
        let c = runtime(cluster(3, LbPolicy::LeastRequest));
        for _ in 0..50 {
            let i = c.choose(None, &[0, 1]).unwrap();
            assert_eq!(i, 2);
        }
        // When every host was tried, any may be tried again.
        assert!(c.choose(None, &[0, 1, 2]).is_ok());
    }

    #[test]
    fn maglev_shares_are_near_equal_and_ring_hash_moves_few_keys() {
        use crate::config::HashKey;
        let spec = cluster(
            3,
            LbPolicy::Maglev {
                key: HashKey::SourceIp,
                table_size: 65537,
            },
        );
        let c = runtime(spec);
        let mut counts = [0usize; 3];
        for k in 0..30_000u64 {
            let all = [0, 1, 2];
            counts[c
                .choose(Some(lb::hash_of(&k.to_le_bytes())), &[])
                .unwrap_or(all[0])] += 1;
        }
        assert!(counts.iter().all(|n| *n > 8_000), "{counts:?}");

        let ring = |n| {
            runtime(cluster(
                n,
                LbPolicy::RingHash {
                    key: HashKey::SourceIp,
                    min_ring_size: 1024,
                },
            ))
        };
        let (four, three) = (ring(4), ring(3));
        let mut moved = 0;
        for k in 0..10_000u64 {
            let h = Some(lb::hash_of(&k.to_le_bytes()));
            let before = four.choose(h, &[]).unwrap();
            let after = three.choose(h, &[]).unwrap();
            if before != 3 && before != after {
                moved += 1;
            }
        }
        // Ring hash scales points per endpoint with the endpoint count (as Envoy does), so
        // a few keys of remaining endpoints move too; far from a full reshuffle.
        assert!(
            moved < 1_500,
            "{moved} of 10000 keys moved between remaining endpoints"
        );
    }
}

//! The live counterpart of a snapshot: clusters with their health and pools, rate-limit
//! buckets, weighted-route schedules. Built from a snapshot and the previous runtime, so a
//! swap keeps endpoint health, pooled connections and bucket levels of what did not change.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

// Looked up on every request by keys from the proxy's own config, which need no defence
// against flooding: foldhash, not SipHash (3 % of the instructions of a request).
use foldhash::{HashMap, HashMapExt};

use crate::cluster::ClusterRuntime;
use crate::config::{RateLimit, Snapshot, WeightedCluster};
use crate::ratelimit::TokenBucket;

pub struct Runtime {
    pub snapshot: Arc<Snapshot>,
    pub clusters: HashMap<String, Arc<ClusterRuntime>>,
    buckets: HashMap<String, Arc<TokenBucket>>,
    /// Per route table, per HTTP route: the weighted-destination schedule.
    schedules: HashMap<String, Vec<Schedule>>,
}

impl Runtime {
    /// `workers`: how many worker threads keep upstream connections of their own.
    pub fn new(snapshot: Arc<Snapshot>, old: Option<&Runtime>, workers: usize) -> Self {
        let clusters = snapshot
            .clusters
            .iter()
            .map(|(name, spec)| {
                let prev = old.and_then(|o| o.clusters.get(name)).map(|c| c.as_ref());
                (
                    name.clone(),
                    Arc::new(ClusterRuntime::new(
                        spec.clone(),
                        prev,
                        &snapshot.node,
                        workers,
                    )),
                )
            })
            .collect();
        let mut buckets: HashMap<String, Arc<TokenBucket>> = HashMap::new();
        let mut add_bucket = |l: &RateLimit| {
            if buckets.contains_key(&l.name) {
                return;
            }
            let bucket = match old.and_then(|o| o.buckets.get(&l.name)) {
                Some(b) if b.same_shape(l) => b.clone(),
                _ => Arc::new(TokenBucket::new(l)),
            };
            buckets.insert(l.name.clone(), bucket);
        };
        let mut schedules = HashMap::new();
        for (key, table) in &snapshot.route_tables {
            table.rate_limits.iter().for_each(&mut add_bucket);
            let mut per_route = Vec::with_capacity(table.http.len());
            for route in &table.http {
                route.rate_limits.iter().for_each(&mut add_bucket);
                per_route.push(match &route.action {
                    crate::config::RouteAction::Forward { destinations, .. } => {
                        Schedule::new(destinations)
                    }
                    _ => Schedule::default(),
                });
            }
            schedules.insert(key.clone(), per_route);
        }
        Self {
            snapshot,
            clusters,
            buckets,
            schedules,
        }
    }

    pub fn bucket(&self, name: &str) -> Option<&TokenBucket> {
        self.buckets.get(name).map(|b| b.as_ref())
    }

    /// The index of the weighted destination the next request of this route goes to.
    pub fn next_destination(&self, table: &str, route: usize) -> usize {
        self.schedules
            .get(table)
            .and_then(|s| s.get(route))
            .map_or(0, Schedule::next)
    }
}

/// Smooth weighted round robin (nginx's), laid out once: weights are followed exactly over
/// each cycle and destinations interleave rather than come in runs.
#[derive(Default)]
pub struct Schedule {
    order: Vec<u16>,
    cursor: AtomicUsize,
}

const MAX_SCHEDULE: u64 = 10_000;

impl Schedule {
    pub fn new(destinations: &[WeightedCluster]) -> Self {
        if destinations.len() <= 1 {
            return Self::default();
        }
        let mut weights: Vec<u64> = destinations.iter().map(|d| u64::from(d.weight)).collect();
        let g = weights.iter().copied().fold(0, gcd);
        if g > 1 {
            weights.iter_mut().for_each(|w| *w /= g);
        }
        let mut total: u64 = weights.iter().sum();
        if total > MAX_SCHEDULE {
            // Keep proportions at a bounded length; a weight never rounds to nothing.
            weights
                .iter_mut()
                .for_each(|w| *w = (*w * MAX_SCHEDULE / total).max(1));
            total = weights.iter().sum();
        }
        let mut current = vec![0i64; weights.len()];
        let mut order = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
        let total_i = i64::try_from(total).unwrap_or(i64::MAX);
        for _ in 0..total {
            let mut best = 0;
            for (i, w) in weights.iter().enumerate() {
                current[i] += i64::try_from(*w).unwrap_or(0);
                if current[i] > current[best] {
                    best = i;
                }
            }
            current[best] -= total_i;
            order.push(u16::try_from(best).unwrap_or(0));
        }
        Self {
            order,
            cursor: AtomicUsize::new(0),
        }
    }

    fn next(&self) -> usize {
        if self.order.is_empty() {
            return 0;
        }
        let n = self.cursor.fetch_add(1, Ordering::Relaxed);
        usize::from(self.order[n % self.order.len()])
    }
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::matcher::HeaderOps;

    fn dest(weight: u32) -> WeightedCluster {
        WeightedCluster {
            cluster: String::new(),
            weight,
            request_headers: HeaderOps::default(),
            response_headers: HeaderOps::default(),
        }
    }

    #[test]
    fn schedule_follows_weights_exactly_and_interleaves() {
        let s = Schedule::new(&[dest(80), dest(20)]);
        let picks: Vec<usize> = (0..100).map(|_| s.next()).collect();
        assert_eq!(picks.iter().filter(|p| **p == 1).count(), 20);
        assert!(
            !picks.windows(2).any(|w| w == [1, 1]),
            "the light destination never runs twice"
        );
        let s = Schedule::new(&[dest(1), dest(1), dest(1)]);
        let picks: Vec<usize> = (0..3).map(|_| s.next()).collect();
        assert_eq!(picks, vec![0, 1, 2]);
    }
}

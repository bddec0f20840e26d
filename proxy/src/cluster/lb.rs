//! Load balancing: least-request (power of two choices), round robin, random, ring hash and
//! Maglev; with outlier ejections, locality priorities and warm-up applied first.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use rand::Rng;

use super::endpoint::EndpointState;
use crate::config::{Cluster, LbPolicy, Locality, LocalityLb};

pub fn hash_of(value: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    value.hash(&mut h);
    h.finish()
}

pub struct Balancer {
    policy: LbPolicy,
    cursor: AtomicUsize,
    /// For ring hash: (point, endpoint index), sorted. For Maglev: the lookup table.
    ring: Vec<(u64, usize)>,
    table: Vec<usize>,
}

impl Balancer {
    pub fn new(cluster: &Cluster) -> Self {
        let n = cluster.endpoints.len();
        let mut ring = Vec::new();
        let mut table = Vec::new();
        match &cluster.lb {
            LbPolicy::RingHash { min_ring_size, .. } if n > 0 => {
                let total_weight: u64 = cluster.endpoints.iter().map(|e| u64::from(e.weight)).sum();
                let size = (*min_ring_size).max(n as u64);
                for (i, e) in cluster.endpoints.iter().enumerate() {
                    let share = (size * u64::from(e.weight)).div_ceil(total_weight.max(1));
                    for k in 0..share.max(1) {
                        ring.push((hash_of(format!("{}_{k}", e.authority()).as_bytes()), i));
                    }
                }
                ring.sort_unstable();
            }
            LbPolicy::Maglev { table_size, .. } if n > 0 => {
                table = maglev_table(cluster, usize::try_from(*table_size).unwrap_or(65537));
            }
            _ => {}
        }
        Self {
            policy: cluster.lb.clone(),
            cursor: AtomicUsize::new(0),
            ring,
            table,
        }
    }

    /// Picks an endpoint among `candidates` (indexes into `endpoints`, never empty).
    pub fn pick(
        &self,
        endpoints: &[Arc<EndpointState>],
        candidates: &[usize],
        hash: Option<u64>,
        warm: &dyn Fn(&EndpointState) -> f64,
    ) -> usize {
        let weight =
            |i: usize| f64::from(endpoints[i].endpoint.weight.max(1)) * warm(&endpoints[i]);
        match (&self.policy, hash) {
            (LbPolicy::RingHash { .. }, Some(h)) if !self.ring.is_empty() => {
                let start = self.ring.partition_point(|(p, _)| *p < h);
                for k in 0..self.ring.len() {
                    let idx = self.ring[(start + k) % self.ring.len()].1;
                    if candidates.contains(&idx) {
                        return idx;
                    }
                }
                candidates[0]
            }
            (LbPolicy::Maglev { .. }, Some(h)) if !self.table.is_empty() => {
                let len = self.table.len() as u64;
                for k in 0..len.min(64) {
                    let idx = self.table[usize::try_from(
                        (h.wrapping_add(k.wrapping_mul(0x9E37_79B9))) % len,
                    )
                    .unwrap_or(0)];
                    if candidates.contains(&idx) {
                        return idx;
                    }
                }
                candidates[0]
            }
            (LbPolicy::RoundRobin, _) => {
                let n = self.cursor.fetch_add(1, Ordering::Relaxed);
                let idx = candidates[n % candidates.len()];
                // A warming endpoint takes its turn only in proportion to its warmth.
                let w = warm(&endpoints[idx]);
                if w < 1.0 && rand::rng().random::<f64>() > w {
                    return candidates[(n + 1) % candidates.len()];
                }
                idx
            }
            (LbPolicy::Random, _) | (_, None) if !matches!(self.policy, LbPolicy::LeastRequest) => {
                weighted_random(candidates, &weight)
            }
            _ => {
                // Power of two choices: the less loaded (per unit of weight) of two random picks.
                if candidates.len() == 1 {
                    return candidates[0];
                }
                let mut rng = rand::rng();
                let a = candidates[rng.random_range(0..candidates.len())];
                let mut b = candidates[rng.random_range(0..candidates.len() - 1)];
                if b == a {
                    b = candidates[candidates.len() - 1];
                }
                let load = |i: usize| (endpoints[i].active() as f64 + 1.0) / weight(i);
                if load(b) < load(a) { b } else { a }
            }
        }
    }
}

fn weighted_random(candidates: &[usize], weight: &dyn Fn(usize) -> f64) -> usize {
    let total: f64 = candidates.iter().map(|i| weight(*i)).sum();
    let mut point = rand::rng().random::<f64>() * total;
    for i in candidates {
        point -= weight(*i);
        if point <= 0.0 {
            return *i;
        }
    }
    candidates[candidates.len() - 1]
}

/// The Maglev lookup table (Eisenbud et al., 2016): each endpoint fills slots along its own
/// permutation, in turns, so that every endpoint gets a near-equal share and a change of
/// endpoints moves few slots.
fn maglev_table(cluster: &Cluster, size: usize) -> Vec<usize> {
    let size = size.max(1);
    let n = cluster.endpoints.len();
    let perms: Vec<(usize, usize)> = cluster
        .endpoints
        .iter()
        .map(|e| {
            let name = e.authority();
            let offset =
                usize::try_from(hash_of(format!("{name}#o").as_bytes()) % size as u64).unwrap_or(0);
            let skip =
                usize::try_from(hash_of(format!("{name}#s").as_bytes()) % (size as u64 - 1).max(1))
                    .unwrap_or(0)
                    + 1;
            (offset, skip)
        })
        .collect();
    let mut next = vec![0usize; n];
    let mut table = vec![usize::MAX; size];
    let mut filled = 0;
    'outer: loop {
        for i in 0..n {
            // Weighted: an endpoint of weight w takes w turns per round.
            for _ in 0..cluster.endpoints[i].weight.max(1) {
                let (offset, skip) = perms[i];
                let mut c = (offset + next[i] * skip) % size;
                let mut guard = 0;
                while table[c] != usize::MAX {
                    next[i] += 1;
                    c = (offset + next[i] * skip) % size;
                    guard += 1;
                    if guard > size {
                        break 'outer;
                    }
                }
                table[c] = i;
                next[i] += 1;
                filled += 1;
                if filled == size {
                    break 'outer;
                }
            }
        }
    }
    for slot in &mut table {
        if *slot == usize::MAX {
            *slot = 0;
        }
    }
    table
}

/// Istio's locality priority: 0 for the same region/zone/subzone, then widening; with
/// `failoverPriority`, the number of leading labels that match the proxy's own.
pub fn priority(
    lb: &LocalityLb,
    own: &Locality,
    own_labels: &std::collections::BTreeMap<String, String>,
    ep: &EndpointState,
) -> usize {
    if !lb.failover_priority.is_empty() {
        let matching = lb
            .failover_priority
            .iter()
            .take_while(|label| {
                let label = label.split('=').next().unwrap_or_default();
                ep.endpoint.labels.contains_key(label)
                    && ep.endpoint.labels.get(label) == own_labels.get(label)
            })
            .count();
        return lb.failover_priority.len() - matching;
    }
    let l = &ep.endpoint.locality;
    if l.region != own.region {
        // An explicit failover target ranks right after the own region.
        if lb
            .failover
            .iter()
            .any(|(from, to)| *from == own.region && *to == l.region)
        {
            return 3;
        }
        return 4;
    }
    if l.zone != own.zone {
        return 2;
    }
    if l.subzone != own.subzone {
        return 1;
    }
    0
}

/// How much of its weight a new endpoint gets: Envoy's slow start,
/// `max(min_weight, (age / duration) ^ (1 / aggression))`.
pub fn warmth(ep: &EndpointState, warmup: &crate::config::Warmup, now: Instant) -> f64 {
    let Some(since) = ep.warming_since else {
        return 1.0;
    };
    let age = now.saturating_duration_since(since).as_secs_f64();
    let duration = warmup.duration.as_std().as_secs_f64();
    if duration <= 0.0 || age >= duration {
        return 1.0;
    }
    (age / duration)
        .powf(1.0 / warmup.aggression)
        .max(warmup.min_weight)
        .max(0.01)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::config::Endpoint;

    fn ep(locality: &str, labels: &[(&str, &str)]) -> EndpointState {
        EndpointState::new(
            Endpoint {
                address: "127.0.0.1".into(),
                port: 1,
                labels: labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                locality: Locality::parse(locality),
                weight: 1,
            },
            false,
        )
    }

    #[test]
    fn locality_priority_widens_from_subzone_to_region() {
        let lb = LocalityLb {
            failover_priority: Vec::new(),
            failover: vec![("us-east".into(), "eu-west".into())],
        };
        let own = Locality::parse("us-east/a/1");
        let none = BTreeMap::new();
        let p = |l: &str| priority(&lb, &own, &none, &ep(l, &[]));
        assert_eq!(p("us-east/a/1"), 0);
        assert_eq!(p("us-east/a/2"), 1);
        assert_eq!(p("us-east/b/1"), 2);
        assert_eq!(p("eu-west/c/1"), 3, "the named failover region");
        assert_eq!(p("ap-south/c/1"), 4);
    }

    #[test]
    fn failover_priority_ranks_by_leading_matching_labels() {
        let lb = LocalityLb {
            failover_priority: vec!["topology.istio.io/network".into(), "zone".into()],
            failover: Vec::new(),
        };
        let own: BTreeMap<String, String> = [("topology.istio.io/network", "n1"), ("zone", "z1")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let loc = Locality::default();
        let p = |labels: &[(&str, &str)]| priority(&lb, &loc, &own, &ep("", labels));
        assert_eq!(p(&[("topology.istio.io/network", "n1"), ("zone", "z1")]), 0);
        assert_eq!(p(&[("topology.istio.io/network", "n1"), ("zone", "z2")]), 1);
        assert_eq!(p(&[("topology.istio.io/network", "n2"), ("zone", "z1")]), 2);
    }

    #[test]
    fn warmth_grows_from_the_floor() {
        let w = crate::config::Warmup {
            duration: trellis_api::Duration::from_millis(10_000),
            min_weight: 0.1,
            aggression: 1.0,
        };
        let mut e = ep("", &[]);
        let start = Instant::now();
        e.warming_since = Some(start);
        assert!((warmth(&e, &w, start) - 0.1).abs() < 1e-9);
        let half = warmth(&e, &w, start + std::time::Duration::from_secs(5));
        assert!((half - 0.5).abs() < 1e-9);
        assert_eq!(
            warmth(&e, &w, start + std::time::Duration::from_secs(11)),
            1.0
        );
        e.warming_since = None;
        assert_eq!(warmth(&e, &w, start), 1.0);
    }
}

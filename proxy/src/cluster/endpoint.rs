//! One endpoint's live state: requests in flight, consecutive errors, ejections. It survives
//! snapshot swaps, so a swap neither forgets an ejection nor restarts a warm-up.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::config::{Endpoint, OutlierPolicy};

#[derive(Debug)]
pub struct EndpointState {
    pub endpoint: Endpoint,
    /// `ip:port` or `name:port`: what the connector dials.
    pub authority: String,
    /// The same, parsed once for the URIs of requests sent to it.
    pub uri_authority: Option<http::uri::Authority>,
    /// When the endpoint joined a cluster that already existed: it warms up from then.
    /// Endpoints present when the cluster is first built start warm, as there is nothing
    /// already warm to spare them from.
    pub warming_since: Option<Instant>,
    active: AtomicUsize,
    consecutive_5xx: AtomicU32,
    consecutive_gateway: AtomicU32,
    ejected: AtomicBool,
    ejection: Mutex<Ejection>,
}

#[derive(Debug, Default)]
struct Ejection {
    until: Option<Instant>,
    /// How many times in a row it was ejected: each ejection lasts `base * times`.
    times: u32,
    last_end: Option<Instant>,
}

/// What an attempt on an endpoint came to, for outlier detection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// A 5xx that is not a gateway error.
    ServerError,
    /// 502, 503, 504, a connect failure, a reset or a timeout.
    GatewayError,
}

impl EndpointState {
    pub fn new(endpoint: Endpoint, warming: bool) -> Self {
        let authority = endpoint.authority();
        Self {
            uri_authority: authority.parse().ok(),
            authority,
            endpoint,
            warming_since: warming.then(Instant::now),
            active: AtomicUsize::new(0),
            consecutive_5xx: AtomicU32::new(0),
            consecutive_gateway: AtomicU32::new(0),
            ejected: AtomicBool::new(false),
            ejection: Mutex::new(Ejection::default()),
        }
    }

    /// Carries live state over to a new spec of the same endpoint (labels or weight changed).
    pub fn renewed(&self, endpoint: Endpoint) -> Self {
        let ejection = self.ejection.lock().map(|e| Ejection {
            until: e.until,
            times: e.times,
            last_end: e.last_end,
        });
        let authority = endpoint.authority();
        Self {
            uri_authority: authority.parse().ok(),
            authority,
            endpoint,
            warming_since: self.warming_since,
            active: AtomicUsize::new(self.active()),
            consecutive_5xx: AtomicU32::new(self.consecutive_5xx.load(Ordering::Relaxed)),
            consecutive_gateway: AtomicU32::new(self.consecutive_gateway.load(Ordering::Relaxed)),
            ejected: AtomicBool::new(self.ejected.load(Ordering::Relaxed)),
            ejection: Mutex::new(ejection.unwrap_or_default()),
        }
    }

    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    pub fn start_request(self: &std::sync::Arc<Self>) -> ActiveGuard {
        self.active.fetch_add(1, Ordering::Relaxed);
        ActiveGuard(self.clone())
    }

    /// False when the endpoint is surely not ejected; true when it was ejected and its
    /// ejection may not be over yet (ask [`Self::is_ejected`]).
    pub fn may_be_ejected(&self) -> bool {
        self.ejected.load(Ordering::Relaxed)
    }

    /// Whether the endpoint is ejected now; an ejection whose time is up ends here.
    pub fn is_ejected(&self, now: Instant) -> bool {
        if !self.ejected.load(Ordering::Relaxed) {
            return false;
        }
        let Ok(mut e) = self.ejection.lock() else {
            return false;
        };
        match e.until {
            Some(until) if now < until => true,
            _ => {
                e.until = None;
                e.last_end = Some(now);
                self.ejected.store(false, Ordering::Relaxed);
                false
            }
        }
    }

    /// Counts an outcome; returns true when it crosses an ejection threshold.
    pub fn record(&self, outcome: Outcome, policy: &OutlierPolicy) -> bool {
        match outcome {
            Outcome::Success => {
                self.consecutive_5xx.store(0, Ordering::Relaxed);
                self.consecutive_gateway.store(0, Ordering::Relaxed);
                false
            }
            Outcome::ServerError | Outcome::GatewayError => {
                let n5 = self.consecutive_5xx.fetch_add(1, Ordering::Relaxed) + 1;
                let ngw = if outcome == Outcome::GatewayError {
                    self.consecutive_gateway.fetch_add(1, Ordering::Relaxed) + 1
                } else {
                    self.consecutive_gateway.store(0, Ordering::Relaxed);
                    0
                };
                policy.consecutive_5xx.is_some_and(|t| n5 >= t)
                    || policy.consecutive_gateway_errors.is_some_and(|t| ngw >= t)
            }
        }
    }

    /// Ejects for `base * times`, where repeated ejections grow and quiet intervals shrink it.
    pub fn eject(&self, policy: &OutlierPolicy, now: Instant) -> Duration {
        self.consecutive_5xx.store(0, Ordering::Relaxed);
        self.consecutive_gateway.store(0, Ordering::Relaxed);
        let Ok(mut e) = self.ejection.lock() else {
            return Duration::ZERO;
        };
        let interval = policy.interval.as_std().max(Duration::from_millis(1));
        if let Some(end) = e.last_end {
            let quiet = now.saturating_duration_since(end).as_nanos() / interval.as_nanos();
            e.times = e
                .times
                .saturating_sub(u32::try_from(quiet).unwrap_or(u32::MAX));
        }
        e.times = e.times.saturating_add(1);
        let length = policy.base_ejection_time.as_std().saturating_mul(e.times);
        e.until = Some(now + length);
        self.ejected.store(true, Ordering::Relaxed);
        length
    }
}

/// Counts a request as active on its endpoint until dropped.
#[derive(Debug)]
pub struct ActiveGuard(std::sync::Arc<EndpointState>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

//! Local rate limiting: a token bucket per `RateLimit`, shared by every route it covers.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::HeaderMap;
use http::header::HeaderValue;

use crate::config::RateLimit;

#[derive(Debug)]
pub struct TokenBucket {
    tokens_per_fill: u64,
    fill_interval: Duration,
    max_tokens: u64,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    tokens: u64,
    last_fill: Instant,
}

/// What a bucket said about one request, for the `x-ratelimit-*` headers.
#[derive(Debug, Clone, Copy)]
pub struct Decision {
    pub allowed: bool,
    pub limit: u64,
    pub remaining: u64,
    pub reset: Duration,
}

impl TokenBucket {
    pub fn new(limit: &RateLimit) -> Self {
        Self {
            tokens_per_fill: u64::from(limit.tokens_per_fill),
            fill_interval: limit.fill_interval.as_std().max(Duration::from_millis(1)),
            max_tokens: u64::from(limit.max_tokens),
            state: Mutex::new(State {
                tokens: u64::from(limit.max_tokens),
                last_fill: Instant::now(),
            }),
        }
    }

    pub fn same_shape(&self, limit: &RateLimit) -> bool {
        self.tokens_per_fill == u64::from(limit.tokens_per_fill)
            && self.fill_interval == limit.fill_interval.as_std().max(Duration::from_millis(1))
            && self.max_tokens == u64::from(limit.max_tokens)
    }

    pub fn take(&self) -> Decision {
        let now = Instant::now();
        let Ok(mut s) = self.state.lock() else {
            // A poisoned lock means a panic elsewhere; failing open keeps traffic flowing.
            return Decision {
                allowed: true,
                limit: self.max_tokens,
                remaining: 0,
                reset: Duration::ZERO,
            };
        };
        let elapsed = now.saturating_duration_since(s.last_fill);
        let fills = elapsed.as_nanos() / self.fill_interval.as_nanos();
        if fills > 0 {
            let add = u64::try_from(fills)
                .unwrap_or(u64::MAX)
                .saturating_mul(self.tokens_per_fill);
            s.tokens = s.tokens.saturating_add(add).min(self.max_tokens);
            let advance = self
                .fill_interval
                .saturating_mul(u32::try_from(fills).unwrap_or(u32::MAX));
            s.last_fill += advance.min(elapsed);
        }
        let reset = (s.last_fill + self.fill_interval).saturating_duration_since(now);
        let allowed = s.tokens > 0;
        if allowed {
            s.tokens -= 1;
        }
        Decision {
            allowed,
            limit: self.max_tokens,
            remaining: s.tokens,
            reset,
        }
    }
}

impl Decision {
    pub fn set_headers(&self, headers: &mut HeaderMap) {
        headers.insert("x-ratelimit-limit", HeaderValue::from(self.limit));
        headers.insert("x-ratelimit-remaining", HeaderValue::from(self.remaining));
        headers.insert(
            "x-ratelimit-reset",
            HeaderValue::from(self.reset.as_secs_f64().ceil() as u64),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_empties_and_reports_what_is_left() {
        let limit = RateLimit {
            name: "ns/rl".into(),
            matches: Vec::new(),
            tokens_per_fill: 3,
            fill_interval: trellis_api::Duration::from_millis(3_600_000),
            max_tokens: 3,
        };
        let b = TokenBucket::new(&limit);
        let left: Vec<u64> = (0..3).map(|_| b.take().remaining).collect();
        assert_eq!(left, vec![2, 1, 0]);
        let d = b.take();
        assert!(!d.allowed);
        assert_eq!(d.limit, 3);
        assert!(b.same_shape(&limit));
    }
}

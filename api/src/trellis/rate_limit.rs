//! `RateLimit`: a token bucket in front of a service, optionally for one route only.
//!
//! The bucket is written either the simple way (`requestsPerUnit` per `unit`) or the Envoy
//! way (`tokensPerFill` every `fillInterval`, holding at most `maxTokens`).

use serde::{Deserialize, Serialize};

use crate::duration::Duration;
use crate::networking::HttpMatchRequest;
use crate::selector::WorkloadSelector;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct RateLimitSpec {
    /// The service host the limit protects, as a VirtualService would name it.
    pub host: String,
    /// Or the workloads it protects, by label.
    pub selector: Option<WorkloadSelector>,
    /// Only requests of this named VirtualService HTTP route.
    pub route: String,
    /// Only requests that match, in VirtualService match syntax.
    #[serde(rename = "match")]
    pub matches: Vec<HttpMatchRequest>,
    pub requests_per_unit: Option<u32>,
    pub unit: Option<RateUnit>,
    pub tokens_per_fill: Option<u32>,
    pub fill_interval: Option<Duration>,
    pub max_tokens: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RateUnit {
    Second,
    Minute,
    Hour,
    Day,
}

impl RateUnit {
    pub fn as_duration(&self) -> Duration {
        let secs = match self {
            Self::Second => 1,
            Self::Minute => 60,
            Self::Hour => 3_600,
            Self::Day => 86_400,
        };
        Duration::from_std(std::time::Duration::from_secs(secs))
    }
}

/// The bucket either way of writing it comes down to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenBucket {
    pub tokens_per_fill: u32,
    pub fill_interval: Duration,
    pub max_tokens: u32,
}

impl RateLimitSpec {
    /// `None` when the spec does not describe a bucket; validation reports why.
    pub fn token_bucket(&self) -> Option<TokenBucket> {
        match (
            self.requests_per_unit,
            self.unit,
            self.tokens_per_fill,
            self.fill_interval,
        ) {
            (Some(n), Some(unit), None, None) => Some(TokenBucket {
                tokens_per_fill: n,
                fill_interval: unit.as_duration(),
                max_tokens: self.max_tokens.unwrap_or(n),
            }),
            (None, None, Some(n), Some(interval)) => Some(TokenBucket {
                tokens_per_fill: n,
                fill_interval: interval,
                max_tokens: self.max_tokens.unwrap_or(n),
            }),
            _ => None,
        }
    }
}

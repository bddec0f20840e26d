//! Envoy's response flags, and the responses the proxy makes itself.
//!
//! Every error the proxy makes (no route, overflow, ejection, timeout, fault, rate limit) is a
//! clear status with its flag in `x-trellis-response-flags`, the same flag in metrics, and a
//! log line. A gRPC client gets a trailers-only response with the matching `grpc-status`.

use std::fmt;

use http::header::{CONTENT_TYPE, HeaderValue};
use http::{HeaderMap, Response, StatusCode};

use crate::body::{self, Body};

pub const FLAGS_HEADER: &str = "x-trellis-response-flags";
/// Named once: a lookup by `&str` parses the name again on every request.
pub const GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Flag {
    /// No route matched.
    NoRoute,
    /// No healthy endpoint.
    NoHealthyUpstream,
    /// Could not connect to the endpoint.
    UpstreamConnectFailure,
    /// The endpoint closed the connection before answering.
    UpstreamConnectionTermination,
    /// The endpoint reset the stream.
    UpstreamRemoteReset,
    /// A connection-pool limit was exceeded.
    UpstreamOverflow,
    /// The route or per-try timeout expired.
    UpstreamRequestTimeout,
    /// Retries were used up.
    UpstreamRetryLimitExceeded,
    /// A fault-injection abort.
    FaultInjected,
    /// A fault-injection delay.
    DelayInjected,
    /// A local rate limit.
    RateLimited,
    /// The client went away.
    DownstreamConnectionTermination,
}

impl Flag {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoRoute => "NR",
            Self::NoHealthyUpstream => "UH",
            Self::UpstreamConnectFailure => "UF",
            Self::UpstreamConnectionTermination => "UC",
            Self::UpstreamRemoteReset => "UR",
            Self::UpstreamOverflow => "UO",
            Self::UpstreamRequestTimeout => "UT",
            Self::UpstreamRetryLimitExceeded => "URX",
            Self::FaultInjected => "FI",
            Self::DelayInjected => "DI",
            Self::RateLimited => "RL",
            Self::DownstreamConnectionTermination => "DC",
        }
    }
}

/// The flags of one request, in the order they happened.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Flags(Vec<Flag>);

impl Flags {
    pub fn push(&mut self, flag: Flag) {
        if !self.0.contains(&flag) {
            self.0.push(flag);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, flag: Flag) -> bool {
        self.0.contains(&flag)
    }

    pub fn set_header(&self, headers: &mut HeaderMap) {
        if self.is_empty() {
            return;
        }
        if let Ok(v) = HeaderValue::from_str(&self.to_string()) {
            headers.insert(FLAGS_HEADER, v);
        }
    }
}

impl fmt::Display for Flags {
    /// `-` when empty, as Envoy's access log writes it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("-");
        }
        for (i, flag) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            f.write_str(flag.as_str())?;
        }
        Ok(())
    }
}

/// Envoy's mapping of an HTTP status to the gRPC status a client should see.
pub fn grpc_status_for(status: StatusCode) -> u32 {
    match status.as_u16() {
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502 | 503 | 504 => 14,
        _ => 2,
    }
}

pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

/// A response the proxy makes itself.
pub fn local_reply(
    status: StatusCode,
    flags: &Flags,
    message: &str,
    grpc: bool,
    grpc_status: Option<u32>,
) -> Response<Body> {
    let mut resp = if grpc {
        let code = grpc_status.unwrap_or_else(|| grpc_status_for(status));
        let mut r = Response::new(body::empty());
        let h = r.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        h.insert(GRPC_STATUS, HeaderValue::from(code));
        if let Ok(v) = HeaderValue::from_str(message) {
            h.insert("grpc-message", v);
        }
        r
    } else {
        let mut r = Response::new(body::full(format!("{message}\n")));
        *r.status_mut() = status;
        r.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        r
    };
    flags.set_header(resp.headers_mut());
    resp
}

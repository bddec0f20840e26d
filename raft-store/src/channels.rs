//! One lazily connected gRPC channel per peer address, shared by every caller.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

#[derive(Clone, Default)]
pub struct Channels {
    by_addr: Arc<Mutex<HashMap<String, Channel>>>,
}

impl Channels {
    pub fn get(&self, addr: &str) -> Channel {
        let mut map = self.by_addr.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(addr.to_string())
            .or_insert_with(|| endpoint(addr).connect_lazy())
            .clone()
    }
}

/// A gRPC endpoint for `host:port` or a full URL.
pub fn endpoint(addr: &str) -> Endpoint {
    let uri = if addr.contains("://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    };
    // The address comes from our own membership or a flag already checked to parse;
    // a malformed one still must not panic, so fall back to an endpoint that fails.
    Endpoint::from_shared(uri)
        .unwrap_or_else(|_| Endpoint::from_static("http://invalid.invalid:1"))
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true)
}

//! Listeners: binding, accepting, and handing each connection to the path its listener
//! kind and sniffed protocol call for. A swap reconciles the set: new listeners are bound
//! before the swap, removed ones stop accepting while their connections carry on.

pub mod capture;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::config::{ListenerKind, Protocol, Snapshot, vip_key};
use crate::detect::{self, Detected};
use crate::error::ProxyError;
use crate::shared::{ConnInfo, Shared};
use crate::tcp::{self, Target};
use crate::{admin, http, sni};

struct Running {
    bind: SocketAddr,
    local: SocketAddr,
    stop: CancellationToken,
    /// Admin and Prometheus keep answering during a drain, so `/ready` can say so.
    admin: bool,
}

/// Sockets bound for a snapshot but not yet accepting.
pub struct Bound(Vec<(String, SocketAddr, TcpListener)>);

pub struct Listeners {
    running: Mutex<HashMap<String, Running>>,
}

impl Listeners {
    pub fn new() -> Self {
        Self {
            running: Mutex::new(HashMap::new()),
        }
    }

    pub fn addr(&self, name: &str) -> Option<SocketAddr> {
        self.running.lock().ok()?.get(name).map(|r| r.local)
    }

    /// Binds what the snapshot adds or moves. Nothing changes if any bind fails.
    pub async fn bind(&self, snapshot: &Snapshot) -> Result<Bound, ProxyError> {
        let wanted: Vec<_> = {
            let running = self.running.lock().map_err(|_| poisoned())?;
            snapshot
                .listeners
                .iter()
                .filter(|l| running.get(&l.name).is_none_or(|r| r.bind != l.bind))
                .map(|l| (l.name.clone(), l.bind))
                .collect()
        };
        let mut bound = Vec::new();
        for (name, addr) in wanted {
            let listener = listen(addr).map_err(|source| ProxyError::Bind {
                name: name.clone(),
                addr,
                source,
            })?;
            bound.push((name, addr, listener));
        }
        Ok(Bound(bound))
    }

    /// Starts accepting on what was bound and stops listeners the snapshot no longer has.
    pub fn activate(&self, bound: Bound, snapshot: &Snapshot, shared: &Arc<Shared>) {
        let Ok(mut running) = self.running.lock() else {
            return;
        };
        for (name, bind, listener) in bound.0 {
            let Ok(local) = listener.local_addr() else {
                continue;
            };
            let stop = CancellationToken::new();
            let admin = snapshot
                .listener(&name)
                .is_some_and(|l| matches!(l.kind, ListenerKind::Admin | ListenerKind::Prometheus));
            let entry = Running {
                bind,
                local,
                stop: stop.clone(),
                admin,
            };
            if let Some(old) = running.insert(name.clone(), entry) {
                old.stop.cancel();
            }
            tracing::info!(listener = %name, %local, "listening");
            tokio::spawn(accept_loop(listener, name, shared.clone(), stop, admin));
        }
        running.retain(|name, r| {
            let keep = snapshot.listener(name).is_some();
            if !keep {
                tracing::info!(listener = %name, "listener removed; open connections carry on");
                r.stop.cancel();
            }
            keep
        });
    }

    /// Stops accepting traffic; admin listeners stay up.
    pub fn stop_traffic(&self) {
        if let Ok(running) = self.running.lock() {
            running
                .values()
                .filter(|r| !r.admin)
                .for_each(|r| r.stop.cancel());
        }
    }

    pub fn stop_all(&self) {
        if let Ok(running) = self.running.lock() {
            running.values().for_each(|r| r.stop.cancel());
        }
    }
}

impl Default for Listeners {
    fn default() -> Self {
        Self::new()
    }
}

/// A listening socket whose queue of connections not yet accepted is as long as the system
/// allows (`net.core.somaxconn`), as Envoy's and HAProxy's are. The usual default of 128
/// overflows when a client-side proxy opens hundreds of connections at once, and each
/// connection over the limit then waits for a SYN retransmit: a full second.
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // A restarted proxy can bind while its old connections sit in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    // The kernel caps this at somaxconn.
    socket.listen(65_535)
}

fn poisoned() -> ProxyError {
    ProxyError::Bind {
        name: "listeners".into(),
        addr: SocketAddr::from(([0, 0, 0, 0], 0)),
        source: std::io::Error::other("listener table lock poisoned"),
    }
}

async fn accept_loop(
    listener: TcpListener,
    name: String,
    shared: Arc<Shared>,
    stop: CancellationToken,
    admin: bool,
) {
    let draining = shared.drain.draining_token();
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = draining.cancelled(), if !admin => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let shared2 = shared.clone();
                    let name = name.clone();
                    if admin {
                        // Not counted by the drain: a scraper's keep-alive must not hold it
                        // up. Served where it was accepted, off the workers.
                        tokio::spawn(async move {
                            connection(stream, peer, name, shared2).await;
                        });
                        continue;
                    }
                    // The socket moves to a worker's runtime: it is registered there, inside
                    // the job, so its reads and writes wake that worker alone.
                    let stream = match stream.into_std() {
                        Ok(s) => s,
                        Err(e) => {
                            tracing::warn!(listener = %name, error = %e, "cannot hand a connection to a worker");
                            continue;
                        }
                    };
                    let work = async move {
                        let Ok(stream) = TcpStream::from_std(stream) else {
                            return;
                        };
                        shared2.metrics.downstream_connections.inc();
                        connection(stream, peer, name, shared2.clone()).await;
                        shared2.metrics.downstream_connections.dec();
                    };
                    shared.workers.spawn(shared.drain.track(work));
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(listener = %name, error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    }
}

/// A client whose host went away never closes its connection. The kernel's keepalive probes
/// find it (the first after 30 s without traffic, then every 10 s, three unanswered and the
/// connection is reset), whatever the listener serves, as Linkerd does on its accepted
/// connections. HTTP/2 PINGs did this before for HTTP/2 alone, at the cost of a lock and a
/// clock read on every frame.
fn downstream_keepalive() -> socket2::TcpKeepalive {
    socket2::TcpKeepalive::new()
        .with_time(std::time::Duration::from_secs(30))
        .with_interval(std::time::Duration::from_secs(10))
        .with_retries(3)
}

async fn connection(stream: TcpStream, peer: SocketAddr, name: String, shared: Arc<Shared>) {
    let rt = shared.runtime();
    let Some(listener) = rt.snapshot.listener(&name).cloned() else {
        return;
    };
    let Ok(local) = stream.local_addr() else {
        return;
    };
    let _ = stream.set_nodelay(true);
    let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&downstream_keepalive());
    let original_dst = match listener.kind {
        ListenerKind::Capture | ListenerKind::Inbound { .. } => capture::original_dst(&stream),
        _ => None,
    };
    let conn = ConnInfo {
        listener: name,
        peer,
        local,
        original_dst,
    };
    let detection = rt.snapshot.limits.detection_timeout.as_std();
    let header_read = rt.snapshot.limits.header_read_timeout.as_std();
    match listener.kind {
        ListenerKind::Admin => admin::serve(stream, shared.clone(), false).await,
        ListenerKind::Prometheus => admin::serve(stream, shared.clone(), true).await,
        ListenerKind::Upstream {
            host,
            port,
            protocol,
            ..
        } => {
            let Some(table) = rt.snapshot.route_table(&host, port) else {
                return;
            };
            let detected = match protocol {
                Protocol::Http | Protocol::Http2 | Protocol::Grpc => {
                    detect::http_version(&stream, header_read).await
                }
                Protocol::Tcp => Detected::Tcp,
                Protocol::Tls => Detected::Tls,
                Protocol::Auto => detect::sniff(&stream, detection).await,
            };
            match detected {
                Detected::Http1 => http::serve(stream, false, conn, shared).await,
                Detected::Http2 => http::serve(stream, true, conn, shared).await,
                Detected::Tls => {
                    let name = sni::peek_sni(&stream, detection).await;
                    let target = Target::Routes {
                        table,
                        sni: name.as_deref(),
                    };
                    tcp::proxy(stream, conn, shared.clone(), target).await;
                }
                Detected::Tcp => {
                    tcp::proxy(
                        stream,
                        conn,
                        shared.clone(),
                        Target::Routes { table, sni: None },
                    )
                    .await;
                }
                Detected::Closed => {}
            }
        }
        ListenerKind::Inbound {
            cluster, protocol, ..
        } => {
            let detected = match protocol {
                Protocol::Http | Protocol::Http2 | Protocol::Grpc => {
                    detect::http_version(&stream, header_read).await
                }
                Protocol::Tcp | Protocol::Tls => Detected::Tcp,
                Protocol::Auto => detect::sniff(&stream, detection).await,
            };
            match detected {
                Detected::Http1 => http::serve(stream, false, conn, shared).await,
                Detected::Http2 => http::serve(stream, true, conn, shared).await,
                // Without mTLS termination yet, TLS to the workload passes through as TCP.
                Detected::Tls | Detected::Tcp => {
                    let cluster = conn
                        .original_dst
                        .map(|d| format!("inbound|{}||", d.port()))
                        .filter(|c| rt.snapshot.clusters.contains_key(c))
                        .unwrap_or(cluster);
                    tcp::proxy(stream, conn, shared.clone(), Target::Cluster(cluster)).await;
                }
                Detected::Closed => {}
            }
        }
        ListenerKind::Capture => {
            let detected = detect::sniff(&stream, detection).await;
            let table = conn.original_dst.and_then(|d| {
                rt.snapshot
                    .vips
                    .get(&vip_key(d.ip(), d.port()))
                    .and_then(|host| rt.snapshot.route_table(host, d.port()))
            });
            match detected {
                Detected::Http1 => http::serve(stream, false, conn, shared).await,
                Detected::Http2 => http::serve(stream, true, conn, shared).await,
                Detected::Tls => {
                    let name = sni::peek_sni(&stream, detection).await;
                    let port = conn.original_dst.map(|d| d.port()).unwrap_or(443);
                    let target = match (table, name.as_deref(), rt.snapshot.tls_by_port.get(&port))
                    {
                        (Some(table), sni, _) => Target::Routes { table, sni },
                        (None, Some(sni), Some(routes)) => Target::TlsRoutes { routes, sni },
                        _ => match conn.original_dst {
                            Some(d) => Target::Passthrough(d),
                            None => return,
                        },
                    };
                    tcp::proxy(stream, conn.clone(), shared.clone(), target).await;
                }
                Detected::Tcp => {
                    let target = match (table, conn.original_dst) {
                        (Some(table), _) => Target::Routes { table, sni: None },
                        (None, Some(d)) => Target::Passthrough(d),
                        (None, None) => return,
                    };
                    tcp::proxy(stream, conn.clone(), shared.clone(), target).await;
                }
                Detected::Closed => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hundreds_of_connections_wait_in_the_queue_before_being_accepted() {
        const CONNECTIONS: usize = 600;
        let somaxconn: usize = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        if somaxconn <= CONNECTIONS {
            eprintln!("skipped: net.core.somaxconn is {somaxconn}, not above {CONNECTIONS}");
            return;
        }
        let listener = listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        // Nothing accepts: every connection must fit in the queue. One that does not is
        // dropped and retried by the kernel, and never completes while nothing accepts.
        let connects = (0..CONNECTIONS).map(|_| TcpStream::connect(addr));
        let all = tokio::time::timeout(
            std::time::Duration::from_secs(20),
            futures::future::try_join_all(connects),
        )
        .await
        .expect("connections beyond the listen queue never completed")
        .unwrap();
        assert_eq!(all.len(), CONNECTIONS);
        drop(listener);
    }
}

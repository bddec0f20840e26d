//! Opaque TCP and TLS passthrough: pick a route by port, subnet or SNI, connect to an
//! endpoint (another one if the first refuses), and copy bytes both ways.

use std::net::SocketAddr;
use std::sync::Arc;

use rand::Rng;
use tokio::net::TcpStream;

use crate::cluster::ClusterRuntime;
use crate::cluster::endpoint::Outcome;
use crate::config::{RouteTable, TlsRoute, WeightedCluster};
use crate::flags::{Flag, Flags};
use crate::metrics::TcpLabels;
use crate::shared::{ConnInfo, Shared};

/// Where a TCP connection goes.
pub enum Target<'a> {
    Routes {
        table: &'a RouteTable,
        sni: Option<&'a str>,
    },
    TlsRoutes {
        routes: &'a [TlsRoute],
        sni: &'a str,
    },
    Cluster(String),
    /// Straight to the address the client meant (capture with no route for it).
    Passthrough(SocketAddr),
}

fn sni_matches(pattern: &str, sni: &str) -> bool {
    match pattern.strip_prefix('*') {
        Some(suffix) => sni.ends_with(suffix),
        None => pattern.eq_ignore_ascii_case(sni),
    }
}

fn pick(destinations: &[WeightedCluster]) -> Option<&WeightedCluster> {
    let total: u64 = destinations.iter().map(|d| u64::from(d.weight)).sum();
    if total == 0 {
        return destinations.first();
    }
    let mut point = rand::rng().random_range(0..total);
    destinations.iter().find(|d| {
        let w = u64::from(d.weight);
        if point < w {
            true
        } else {
            point -= w;
            false
        }
    })
}

fn tls_route<'a>(
    routes: &'a [TlsRoute],
    sni: &str,
    conn: &ConnInfo,
) -> Option<&'a WeightedCluster> {
    routes
        .iter()
        .find(|r| {
            r.matches.iter().any(|m| {
                m.sni_hosts.iter().any(|h| sni_matches(h, sni))
                    && (m.destination_subnets.is_empty()
                        || conn.original_dst.is_some_and(|d| {
                            m.destination_subnets.iter().any(|s| s.contains(d.ip()))
                        }))
            })
        })
        .and_then(|r| pick(&r.destinations))
}

fn tcp_cluster(table: &RouteTable, sni: Option<&str>, conn: &ConnInfo) -> Option<String> {
    if let Some(sni) = sni
        && let Some(d) = tls_route(&table.tls, sni, conn)
    {
        return Some(d.cluster.clone());
    }
    let dst = conn.original_dst;
    table
        .tcp
        .iter()
        .find(|r| {
            r.matches.is_empty()
                || r.matches.iter().any(|m| {
                    m.port.is_none_or(|p| dst.is_none_or(|d| d.port() == p))
                        && (m.destination_subnets.is_empty()
                            || dst.is_some_and(|d| {
                                m.destination_subnets.iter().any(|s| s.contains(d.ip()))
                            }))
                        && m.source_subnet.is_none_or(|s| s.contains(conn.peer.ip()))
                })
        })
        .and_then(|r| pick(&r.destinations))
        .map(|d| d.cluster.clone())
}

/// Connects to an endpoint of the cluster, trying a second one if the first fails.
async fn connect(cluster: &Arc<ClusterRuntime>) -> Result<TcpStream, Flag> {
    let mut tried = Vec::new();
    let mut last = Flag::NoHealthyUpstream;
    for _ in 0..2 {
        let idx = cluster.choose(None, &tried)?;
        tried.push(idx);
        let ep = &cluster.endpoints[idx];
        match cluster.pool.connector.connect(&ep.authority).await {
            Ok(conn) => {
                cluster.report(idx, Outcome::Success);
                return Ok(conn.stream);
            }
            Err(e)
                if e.get_ref()
                    .is_some_and(|i| i.is::<crate::cluster::pool::PoolOverflow>()) =>
            {
                return Err(Flag::UpstreamOverflow);
            }
            Err(e) => {
                tracing::debug!(endpoint = %ep.authority, error = %e, "TCP connect failed");
                cluster.report(idx, Outcome::GatewayError);
                last = Flag::UpstreamConnectFailure;
            }
        }
    }
    Err(last)
}

pub async fn proxy(
    mut downstream: TcpStream,
    conn: ConnInfo,
    shared: Arc<Shared>,
    target: Target<'_>,
) {
    let rt = shared.runtime();
    let (cluster_name, host) = match &target {
        Target::Routes { table, sni } => (tcp_cluster(table, *sni, &conn), table.host.clone()),
        Target::TlsRoutes { routes, sni } => (
            tls_route(routes, sni, &conn).map(|d| d.cluster.clone()),
            (*sni).to_owned(),
        ),
        Target::Cluster(c) => (Some(c.clone()), String::new()),
        Target::Passthrough(addr) => (None, addr.to_string()),
    };
    let mut flags = Flags::default();
    let mut labels = TcpLabels {
        reporter: "source",
        source_workload: rt.snapshot.node.name.clone(),
        destination_service: host,
        destination_cluster: cluster_name
            .clone()
            .unwrap_or_else(|| "PassthroughCluster".into()),
        response_flags: String::new(),
    };
    let upstream = match (
        &target,
        cluster_name.as_ref().and_then(|c| rt.clusters.get(c)),
    ) {
        (Target::Passthrough(addr), _) => TcpStream::connect(addr)
            .await
            .map_err(|_| Flag::UpstreamConnectFailure),
        (_, Some(cluster)) => connect(cluster).await,
        (_, None) => Err(Flag::NoRoute),
    };
    let mut upstream = match upstream {
        Ok(u) => u,
        Err(flag) => {
            flags.push(flag);
            labels.response_flags = flags.to_string();
            tracing::warn!(listener = %conn.listener, peer = %conn.peer, flags = %flags, "TCP connection refused: no upstream");
            shared.metrics.tcp_opened.get_or_create(&labels).inc();
            shared.metrics.tcp_closed.get_or_create(&labels).inc();
            return;
        }
    };
    let _ = upstream.set_nodelay(true);
    labels.response_flags = flags.to_string();
    shared.metrics.tcp_opened.get_or_create(&labels).inc();
    let result = tokio::io::copy_bidirectional(&mut downstream, &mut upstream).await;
    match result {
        Ok((from_client, from_upstream)) => {
            shared
                .metrics
                .tcp_received
                .get_or_create(&labels)
                .inc_by(from_client);
            shared
                .metrics
                .tcp_sent
                .get_or_create(&labels)
                .inc_by(from_upstream);
        }
        Err(e) => tracing::debug!(error = %e, "TCP connection ended with an error"),
    }
    shared.metrics.tcp_closed.get_or_create(&labels).inc();
}

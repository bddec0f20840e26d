//! The listeners a config asks for, and the inbound clusters behind the inbound listener.

use super::*;

impl Compiler<'_> {
    pub(super) fn build_listeners(
        &mut self,
        tables: &mut BTreeMap<String, RouteTable>,
    ) -> Result<Vec<Listener>> {
        let cfg = &self.config.listeners;
        let mut out = Vec::new();
        if let Some(a) = &cfg.admin {
            out.push(Listener {
                name: "admin".into(),
                bind: a.bind,
                kind: ListenerKind::Admin,
            });
        }
        if let Some(a) = &cfg.prometheus {
            out.push(Listener {
                name: "prometheus".into(),
                bind: a.bind,
                kind: ListenerKind::Prometheus,
            });
        }
        if let Some(a) = &cfg.capture {
            out.push(Listener {
                name: "capture".into(),
                bind: a.bind,
                kind: ListenerKind::Capture,
            });
        }
        if let Some(inb) = &cfg.inbound {
            let port = inb.address.port();
            let cluster = format!("inbound|{port}||");
            let mut limits = std::mem::take(&mut self.inbound_limits);
            let mut host = String::new();
            if let Some(svc) = &inb.service {
                let info = self
                    .resolve_host(svc, &self.node.namespace)
                    .ok_or_else(|| {
                        CompileError::invalid(
                            "config",
                            "listeners.inbound.service",
                            format!("no service {svc:?} is declared"),
                        )
                    })?;
                host = info.host.clone();
                for t in tables.values().filter(|t| t.host == host) {
                    for l in &t.rate_limits {
                        if !limits.iter().any(|x| x.name == l.name) {
                            limits.push(l.clone());
                        }
                    }
                }
            }
            let proto = protocol(inb.protocol);
            // With capture, traffic arrives for any port of the local service; each gets its
            // own cluster and table, picked by the original destination port.
            let mut ports = vec![(port, proto)];
            if let Some(info) = inb
                .service
                .as_ref()
                .and_then(|s| self.resolve_host(s, &self.node.namespace))
            {
                for (p, _, pp) in &info.ports {
                    if *p != port {
                        ports.push((*p, if *pp == Protocol::Auto { proto } else { *pp }));
                    }
                }
            }
            for (p, pp) in ports {
                let name = format!("inbound|{p}||");
                self.clusters.insert(
                    name.clone(),
                    Cluster {
                        name: name.clone(),
                        host: host.clone(),
                        port: p,
                        subset: String::new(),
                        protocol: pp,
                        passthrough: false,
                        endpoints: vec![Endpoint {
                            address: inb.address.ip().to_string(),
                            port: p,
                            labels: BTreeMap::new(),
                            locality: Locality::default(),
                            weight: 1,
                        }],
                        lb: LbPolicy::RoundRobin,
                        locality_lb: None,
                        warmup: None,
                        pool: pool_limits(None).0,
                        outlier: None,
                        retry_budget: RetryBudget {
                            percent: 20.0,
                            min_concurrency: 3,
                        },
                    },
                );
                let mut route = default_route(&name);
                // The calling proxy retries; retrying here too would multiply attempts.
                route.retry.attempts = 0;
                tables.insert(
                    format!("inbound|{p}"),
                    RouteTable {
                        host: host.clone(),
                        port: p,
                        http: vec![route],
                        tcp: vec![TcpRoute {
                            matches: Vec::new(),
                            destinations: vec![weighted(&name, 100)],
                        }],
                        tls: Vec::new(),
                        rate_limits: limits.clone(),
                    },
                );
            }
            let key = format!("inbound|{port}");
            out.push(Listener {
                name: "inbound".into(),
                bind: inb.bind,
                kind: ListenerKind::Inbound {
                    cluster,
                    route_key: key,
                    protocol: proto,
                },
            });
        }
        for (i, up) in cfg.upstreams.iter().enumerate() {
            let at = format!("listeners.upstreams[{i}]");
            let info = self
                .resolve_host(&up.service, &self.node.namespace)
                .ok_or_else(|| {
                    CompileError::invalid(
                        "config",
                        format!("{at}.service"),
                        format!(
                            "no service or ServiceEntry has host or name {:?}",
                            up.service
                        ),
                    )
                })?;
            let port = match up.port {
                Some(p) => p,
                None if info.ports.len() == 1 => info.ports[0].0,
                None => {
                    return Err(CompileError::invalid(
                        "config",
                        format!("{at}.port"),
                        format!("{} has {} ports; say which", info.host, info.ports.len()),
                    ));
                }
            };
            let Some(declared) = info.port_protocol(port) else {
                return Err(CompileError::invalid(
                    "config",
                    format!("{at}.port"),
                    format!("{} has no port {port}", info.host),
                ));
            };
            out.push(Listener {
                name: up.name.clone(),
                bind: up.bind,
                kind: ListenerKind::Upstream {
                    host: info.host.clone(),
                    port,
                    protocol: up.protocol.map(protocol).unwrap_or(declared),
                    route_key: crate::config::route_key(&info.host, port),
                },
            });
        }
        let mut names = BTreeSet::new();
        let mut binds: BTreeSet<SocketAddr> = BTreeSet::new();
        for l in &out {
            if !names.insert(l.name.clone()) {
                return Err(CompileError::invalid(
                    "config",
                    "listeners",
                    format!("two listeners are named {:?}", l.name),
                ));
            }
            if l.bind.port() != 0 && !binds.insert(l.bind) {
                return Err(CompileError::invalid(
                    "config",
                    "listeners",
                    format!("two listeners bind {}", l.bind),
                ));
            }
        }
        Ok(out)
    }
}

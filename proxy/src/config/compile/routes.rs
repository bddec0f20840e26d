//! VirtualServices into route tables, and RateLimits onto them.

use super::*;

impl Compiler<'_> {
    pub(super) fn build_route_tables(&mut self) -> Result<BTreeMap<String, RouteTable>> {
        let vss: Vec<(&trellis_api::ObjectMeta, &VirtualServiceSpec)> = self
            .config
            .resources
            .iter()
            .filter_map(|r| match r {
                Resource::VirtualService(o) => Some((&o.metadata, &o.spec)),
                _ => None,
            })
            .filter(|(_, vs)| vs.gateways.is_empty() || vs.gateways.iter().any(|g| g == "mesh"))
            .collect();
        for (meta, vs) in &vss {
            let name = resource_name("VirtualService", meta);
            for (i, h) in vs.http.iter().enumerate() {
                if h.delegate.is_some() {
                    return Err(CompileError::unsupported(
                        &name,
                        format!("spec.http[{i}].delegate"),
                        "route delegation",
                    ));
                }
            }
        }
        let mut tables = BTreeMap::new();
        let services: Vec<ServiceInfo> = self.services.values().cloned().collect();
        for svc in &services {
            // An exact host beats a wildcard, a longer wildcard beats a shorter one.
            let vs = vss
                .iter()
                .filter_map(|(m, vs)| {
                    vs.hosts
                        .iter()
                        .map(|h| qualify(h, &m.namespace))
                        .filter(|h| host_matches(h, &svc.host))
                        .map(|h| (if h == svc.host { usize::MAX } else { h.len() }, *m, *vs))
                        .max_by_key(|x| x.0)
                })
                .max_by_key(|x| x.0)
                .map(|(_, m, vs)| (m, vs));
            for (port, _, _) in &svc.ports {
                let mut table = RouteTable {
                    host: svc.host.clone(),
                    port: *port,
                    http: Vec::new(),
                    tcp: Vec::new(),
                    tls: Vec::new(),
                    rate_limits: Vec::new(),
                };
                if let Some((meta, spec)) = vs {
                    self.compile_vs(&mut table, svc, meta, spec)?;
                }
                if vs.is_none_or(|(_, s)| s.http.is_empty()) {
                    let cluster = format!("outbound|{port}||{}", svc.host);
                    table.http.push(default_route(&cluster));
                }
                if vs.is_none_or(|(_, s)| s.tcp.is_empty()) {
                    table.tcp.push(TcpRoute {
                        matches: Vec::new(),
                        destinations: vec![weighted(
                            &format!("outbound|{port}||{}", svc.host),
                            100,
                        )],
                    });
                }
                tables.insert(route_key(&svc.host, *port), table);
            }
        }
        Ok(tables)
    }

    pub(super) fn compile_vs(
        &self,
        table: &mut RouteTable,
        svc: &ServiceInfo,
        meta: &trellis_api::ObjectMeta,
        vs: &VirtualServiceSpec,
    ) -> Result<()> {
        let name = resource_name("VirtualService", meta);
        for (i, route) in vs.http.iter().enumerate() {
            let path = format!("spec.http[{i}]");
            let mut matches = Vec::new();
            let mut any_applies = route.matches.is_empty();
            for (j, m) in route.matches.iter().enumerate() {
                if let Some(rm) =
                    self.request_match(&name, &format!("{path}.match[{j}]"), m, Some(table.port))?
                {
                    matches.push(rm);
                    any_applies = true;
                }
            }
            if !any_applies {
                continue;
            }
            table
                .http
                .push(self.http_route(&name, &path, meta, route, svc, table.port, matches)?);
        }
        for (i, route) in vs.tcp.iter().enumerate() {
            let path = format!("spec.tcp[{i}]");
            let mut matches = Vec::new();
            for (j, m) in route.matches.iter().enumerate() {
                let at = format!("{path}.match[{j}]");
                let scope = L4Scope {
                    gateways: &m.gateways,
                    source_labels: &m.source_labels,
                    source_namespace: &m.source_namespace,
                    port: m.port,
                };
                let Some(port) = self.l4_match_applies(&name, &at, scope, table.port)? else {
                    continue;
                };
                matches.push(L4Match {
                    port,
                    destination_subnets: subnets(
                        &name,
                        &format!("{path}.match[{j}].destinationSubnets"),
                        &m.destination_subnets,
                    )?,
                    source_subnet: if m.source_subnet.is_empty() {
                        None
                    } else {
                        Some(Subnet::parse(&m.source_subnet).ok_or_else(|| {
                            CompileError::invalid(
                                &name,
                                format!("{path}.match[{j}].sourceSubnet"),
                                "not a CIDR",
                            )
                        })?)
                    },
                });
            }
            if !route.matches.is_empty() && matches.is_empty() {
                continue;
            }
            let destinations =
                self.l4_destinations(&name, &path, meta, &route.route, svc, table.port)?;
            table.tcp.push(TcpRoute {
                matches,
                destinations,
            });
        }
        for (i, route) in vs.tls.iter().enumerate() {
            let path = format!("spec.tls[{i}]");
            let mut matches = Vec::new();
            for (j, m) in route.matches.iter().enumerate() {
                let at = format!("{path}.match[{j}]");
                let scope = L4Scope {
                    gateways: &m.gateways,
                    source_labels: &m.source_labels,
                    source_namespace: &m.source_namespace,
                    port: m.port,
                };
                let Some(port) = self.l4_match_applies(&name, &at, scope, table.port)? else {
                    continue;
                };
                matches.push(TlsMatch {
                    sni_hosts: m
                        .sni_hosts
                        .iter()
                        .map(|h| qualify(h, &meta.namespace))
                        .collect(),
                    port,
                    destination_subnets: subnets(
                        &name,
                        &format!("{path}.match[{j}].destinationSubnets"),
                        &m.destination_subnets,
                    )?,
                });
            }
            if matches.is_empty() {
                continue;
            }
            let destinations =
                self.l4_destinations(&name, &path, meta, &route.route, svc, table.port)?;
            table.tls.push(TlsRoute {
                matches,
                destinations,
            });
        }
        Ok(())
    }

    /// Whether a TCP or TLS match is for this proxy on this port: the mesh gateway, this
    /// node as the source, the table's port. `Some(port)` (the match's own port, if it names
    /// one) when it is.
    fn l4_match_applies(
        &self,
        name: &str,
        at: &str,
        m: L4Scope<'_>,
        table_port: u16,
    ) -> Result<Option<Option<u16>>> {
        if !m.gateways.is_empty() && !m.gateways.iter().any(|g| g == "mesh") {
            return Ok(None);
        }
        if !self.source_applies(m.source_labels, m.source_namespace) {
            return Ok(None);
        }
        let port = opt_port(name, &format!("{at}.port"), m.port)?;
        Ok(port.is_none_or(|p| p == table_port).then_some(port))
    }

    pub(super) fn source_applies(
        &self,
        labels: &BTreeMap<String, String>,
        namespace: &str,
    ) -> bool {
        // The source of every request through this proxy is this node, so source matches are
        // decided here, once.
        labels
            .iter()
            .all(|(k, v)| self.node.labels.get(k) == Some(v))
            && (namespace.is_empty() || namespace == self.node.namespace)
    }

    pub(super) fn request_match(
        &self,
        name: &str,
        path: &str,
        m: &HttpMatchRequest,
        port: Option<u16>,
    ) -> Result<Option<RequestMatch>> {
        if !m.gateways.is_empty() && !m.gateways.iter().any(|g| g == "mesh") {
            return Ok(None);
        }
        if !self.source_applies(&m.source_labels, &m.source_namespace) {
            return Ok(None);
        }
        let mport = opt_port(name, &format!("{path}.port"), m.port)?;
        if let (Some(want), Some(port)) = (mport, port)
            && want != port
        {
            return Ok(None);
        }
        let sm = |field: &str, s: &Option<StringMatch>| -> Result<Option<StringMatcher>> {
            s.as_ref()
                .map(|s| string_matcher(name, &format!("{path}.{field}"), s))
                .transpose()
        };
        let headers =
            |field: &str, map: &BTreeMap<String, StringMatch>| -> Result<Vec<HeaderMatch>> {
                map.iter()
                    .map(|(k, v)| {
                        let at = format!("{path}.{field}.{k}");
                        Ok(HeaderMatch {
                            name: header_name(name, &at, k)?,
                            matcher: string_matcher(name, &at, v)?,
                        })
                    })
                    .collect()
            };
        let mut query_params = Vec::new();
        for (k, v) in &m.query_params {
            query_params.push((
                k.clone(),
                string_matcher(name, &format!("{path}.queryParams.{k}"), v)?,
            ));
        }
        let uri = sm("uri", &m.uri)?;
        Ok(Some(RequestMatch {
            uri: if m.ignore_uri_case {
                uri.map(|u| match u {
                    StringMatcher::Exact(e) => StringMatcher::Exact(e.to_ascii_lowercase()),
                    StringMatcher::Prefix(p) => StringMatcher::Prefix(p.to_ascii_lowercase()),
                    other => other,
                })
            } else {
                uri
            },
            ignore_uri_case: m.ignore_uri_case,
            scheme: sm("scheme", &m.scheme)?,
            method: sm("method", &m.method)?,
            authority: sm("authority", &m.authority)?,
            headers: headers("headers", &m.headers)?,
            without_headers: headers("withoutHeaders", &m.without_headers)?,
            query_params,
            port: mport,
        }))
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn http_route(
        &self,
        name: &str,
        path: &str,
        meta: &trellis_api::ObjectMeta,
        r: &ApiHttpRoute,
        svc: &ServiceInfo,
        port: u16,
        matches: Vec<RequestMatch>,
    ) -> Result<HttpRoute> {
        let action = if let Some(d) = &r.direct_response {
            let body = match &d.body {
                Some(b) if b.bytes.is_some() => {
                    return Err(CompileError::unsupported(
                        name,
                        format!("{path}.directResponse.body.bytes"),
                        "a base64 body",
                    ));
                }
                Some(b) => b.string.clone(),
                None => None,
            };
            RouteAction::DirectResponse {
                status: status(name, &format!("{path}.directResponse.status"), d.status)?,
                body,
            }
        } else if let Some(rd) = &r.redirect {
            RouteAction::Redirect(Redirect {
                uri: non_empty(&rd.uri),
                authority: non_empty(&rd.authority),
                port: rd
                    .port
                    .map(|p| port_u16(name, &format!("{path}.redirect.port"), p))
                    .transpose()?,
                scheme: non_empty(&rd.scheme),
                status: if rd.redirect_code == 0 {
                    301
                } else {
                    status(
                        name,
                        &format!("{path}.redirect.redirectCode"),
                        rd.redirect_code,
                    )?
                },
            })
        } else {
            let mut destinations = Vec::new();
            let all_zero = r.route.iter().all(|d| d.weight == 0);
            for (k, d) in r.route.iter().enumerate() {
                let at = format!("{path}.route[{k}]");
                let Some(dest) = &d.destination else {
                    return Err(CompileError::invalid(
                        name,
                        format!("{at}.destination"),
                        "Required value",
                    ));
                };
                let cluster = self.destination_cluster(
                    name,
                    &format!("{at}.destination"),
                    meta,
                    dest,
                    svc,
                    port,
                )?;
                let (req, resp) = header_ops(name, &format!("{at}.headers"), d.headers.as_ref())?;
                let weight = if all_zero {
                    1
                } else {
                    u32::try_from(d.weight).unwrap_or(0)
                };
                if weight == 0 {
                    continue;
                }
                destinations.push(WeightedCluster {
                    cluster,
                    weight,
                    request_headers: req,
                    response_headers: resp,
                });
            }
            if destinations.is_empty() {
                return Err(CompileError::invalid(
                    name,
                    format!("{path}.route"),
                    "a route needs a destination, a redirect or a directResponse",
                ));
            }
            let rewrite = match &r.rewrite {
                None => None,
                Some(rw) => Some(Rewrite {
                    uri: non_empty(&rw.uri),
                    authority: non_empty(&rw.authority),
                    uri_regex: match &rw.uri_regex_rewrite {
                        None => None,
                        Some(rr) => Some((
                            StringMatcher::Regex(Pattern::partial(&rr.pattern).map_err(|e| {
                                CompileError::invalid(
                                    name,
                                    format!("{path}.rewrite.uriRegexRewrite.match"),
                                    e.to_string(),
                                )
                            })?),
                            rr.rewrite.clone(),
                        )),
                    },
                }),
            };
            RouteAction::Forward {
                destinations,
                rewrite,
            }
        };
        let (request_headers, response_headers) =
            header_ops(name, &format!("{path}.headers"), r.headers.as_ref())?;
        let mut mirrors = Vec::new();
        if let Some(m) = &r.mirror {
            let percent = r
                .mirror_percentage
                .as_ref()
                .map(|p| p.value)
                .or(r.mirror_percent.map(f64::from))
                .unwrap_or(100.0);
            mirrors.push(Mirror {
                cluster: self.destination_cluster(
                    name,
                    &format!("{path}.mirror"),
                    meta,
                    m,
                    svc,
                    port,
                )?,
                percent,
            });
        }
        for (k, m) in r.mirrors.iter().enumerate() {
            let Some(dest) = &m.destination else {
                return Err(CompileError::invalid(
                    name,
                    format!("{path}.mirrors[{k}].destination"),
                    "Required value",
                ));
            };
            mirrors.push(Mirror {
                cluster: self.destination_cluster(
                    name,
                    &format!("{path}.mirrors[{k}].destination"),
                    meta,
                    dest,
                    svc,
                    port,
                )?,
                percent: m.percentage.as_ref().map(|p| p.value).unwrap_or(100.0),
            });
        }
        Ok(HttpRoute {
            name: if r.name.is_empty() {
                format!(
                    "{}/{}[{}]",
                    meta.namespace,
                    meta.name,
                    path.trim_start_matches("spec.http[").trim_end_matches(']')
                )
            } else {
                r.name.clone()
            },
            matches,
            action,
            request_headers,
            response_headers,
            timeout: r.timeout.filter(|t| !t.as_std().is_zero()),
            retry: retry_policy(name, &format!("{path}.retries"), r.retries.as_ref())?,
            fault: fault(name, &format!("{path}.fault"), r.fault.as_ref())?,
            mirrors,
            cors: cors(name, &format!("{path}.corsPolicy"), r.cors_policy.as_ref())?,
            rate_limits: Vec::new(),
        })
    }

    pub(super) fn l4_destinations(
        &self,
        name: &str,
        path: &str,
        meta: &trellis_api::ObjectMeta,
        route: &[trellis_api::networking::RouteDestination],
        svc: &ServiceInfo,
        port: u16,
    ) -> Result<Vec<WeightedCluster>> {
        let all_zero = route.iter().all(|d| d.weight == 0);
        let mut out = Vec::new();
        for (k, d) in route.iter().enumerate() {
            let at = format!("{path}.route[{k}].destination");
            let Some(dest) = &d.destination else {
                return Err(CompileError::invalid(name, at, "Required value"));
            };
            let cluster = self.destination_cluster(name, &at, meta, dest, svc, port)?;
            let weight = if all_zero {
                1
            } else {
                u32::try_from(d.weight).unwrap_or(0)
            };
            if weight > 0 {
                out.push(weighted(&cluster, weight));
            }
        }
        if out.is_empty() {
            return Err(CompileError::invalid(
                name,
                format!("{path}.route"),
                "Required value",
            ));
        }
        Ok(out)
    }

    pub(super) fn destination_cluster(
        &self,
        name: &str,
        path: &str,
        meta: &trellis_api::ObjectMeta,
        dest: &Destination,
        svc: &ServiceInfo,
        port: u16,
    ) -> Result<String> {
        let target = self
            .resolve_host(&dest.host, &meta.namespace)
            .ok_or_else(|| {
                CompileError::invalid(
                    name,
                    format!("{path}.host"),
                    format!("no service or ServiceEntry has host {:?}", dest.host),
                )
            })?;
        let dport = match &dest.port {
            Some(p) => port_u16(name, &format!("{path}.port.number"), p.number)?,
            None if target.ports.len() == 1 => target.ports[0].0,
            None if target.host == svc.host || target.port_protocol(port).is_some() => port,
            None => {
                return Err(CompileError::invalid(
                    name,
                    format!("{path}.port"),
                    format!("{} has several ports; say which", target.host),
                ));
            }
        };
        if target.port_protocol(dport).is_none() {
            return Err(CompileError::invalid(
                name,
                format!("{path}.port.number"),
                format!("{} has no port {dport}", target.host),
            ));
        }
        let cluster = format!("outbound|{dport}|{}|{}", dest.subset, target.host);
        if !self.clusters.contains_key(&cluster) {
            return Err(CompileError::invalid(
                name,
                format!("{path}.subset"),
                format!(
                    "no DestinationRule defines subset {:?} of {}",
                    dest.subset, target.host
                ),
            ));
        }
        Ok(cluster)
    }

    pub(super) fn attach_rate_limits(
        &mut self,
        tables: &mut BTreeMap<String, RouteTable>,
    ) -> Result<()> {
        for res in &self.config.resources {
            let Resource::RateLimit(o) = res else {
                continue;
            };
            let name = resource_name("RateLimit", &o.metadata);
            let limit = rate_limit(&name, &o.metadata, &o.spec, |p, m| {
                self.request_match(&name, p, m, None)
            })?;
            if o.spec.host.is_empty() {
                // A selector-only limit protects the local workload: the inbound table.
                if let Some(sel) = &o.spec.selector
                    && sel
                        .match_labels
                        .iter()
                        .all(|(k, v)| self.node.labels.get(k) == Some(v))
                {
                    self.inbound_limits.push(limit);
                }
                continue;
            }
            let host = qualify(&o.spec.host, &o.metadata.namespace);
            let mut found = false;
            for table in tables.values_mut().filter(|t| t.host == host) {
                found = true;
                if o.spec.route.is_empty() {
                    table.rate_limits.push(limit.clone());
                } else {
                    for r in table.http.iter_mut().filter(|r| r.name == o.spec.route) {
                        r.rate_limits.push(limit.clone());
                    }
                }
            }
            if !found {
                return Err(CompileError::invalid(
                    &name,
                    "spec.host",
                    format!("no service or ServiceEntry has host {host:?}"),
                ));
            }
        }
        Ok(())
    }
}

/// The fields TCP and TLS matches share that decide whether a match is for this proxy.
struct L4Scope<'a> {
    gateways: &'a [String],
    source_labels: &'a BTreeMap<String, String>,
    source_namespace: &'a str,
    port: u32,
}

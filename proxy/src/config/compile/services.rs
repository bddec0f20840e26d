//! Services from `services:`, ServiceEntries and trellis Services: hosts, ports, VIPs and
//! endpoints.

use super::*;

impl Compiler<'_> {
    pub(super) fn collect_services(&mut self) -> Result<()> {
        for (i, svc) in self.config.services.iter().enumerate() {
            let section = format!("services[{i}]");
            if svc.name.is_empty() {
                return Err(CompileError::invalid(
                    "config",
                    format!("{section}.name"),
                    "Required value",
                ));
            }
            let ns = if svc.namespace.is_empty() {
                self.node.namespace.clone()
            } else {
                svc.namespace.clone()
            };
            let host = qualify(&svc.name, &ns);
            let mut ports = Vec::new();
            for (j, p) in svc.ports.iter().enumerate() {
                if p.number == 0 {
                    return Err(CompileError::invalid(
                        "config",
                        format!("{section}.ports[{j}].number"),
                        "must be 1..=65535",
                    ));
                }
                ports.push((p.number, p.name.clone(), protocol(p.protocol)));
            }
            let mut endpoints = Vec::new();
            for (j, e) in svc.endpoints.iter().enumerate() {
                if e.address.is_empty() {
                    return Err(CompileError::invalid(
                        "config",
                        format!("{section}.endpoints[{j}].address"),
                        "Required value",
                    ));
                }
                let mut port_map = e.ports.clone();
                if let Some(p) = e.port {
                    port_map.insert(String::new(), p);
                }
                endpoints.push((
                    Endpoint {
                        address: e.address.clone(),
                        port: 0,
                        labels: e.labels.clone(),
                        locality: Locality::parse(&e.locality),
                        weight: e.weight.unwrap_or(1).max(1),
                    },
                    port_map,
                ));
            }
            let info = ServiceInfo {
                host: host.clone(),
                vips: svc.vip.into_iter().collect(),
                ports,
                endpoints,
                passthrough: false,
            };
            if self.services.insert(host.clone(), info).is_some() {
                return Err(CompileError::invalid(
                    "config",
                    format!("{section}.name"),
                    format!("service {host} is declared twice"),
                ));
            }
        }
        for res in &self.config.resources {
            match res {
                Resource::ServiceEntry(o) => self.service_entry(o)?,
                Resource::Service(o) => {
                    let host = qualify(&o.metadata.name, &o.metadata.namespace);
                    let entry = self.services.entry(host.clone()).or_insert(ServiceInfo {
                        host,
                        vips: Vec::new(),
                        ports: Vec::new(),
                        endpoints: Vec::new(),
                        passthrough: false,
                    });
                    let name = resource_name("Service", &o.metadata);
                    for (j, p) in o.spec.ports.iter().enumerate() {
                        let number = port_u16(&name, &format!("spec.ports[{j}].number"), p.number)?;
                        if entry.ports.iter().any(|x| x.0 == number) {
                            continue;
                        }
                        let proto = ProtocolName::parse_istio(&p.protocol).ok_or_else(|| {
                            CompileError::invalid(
                                &name,
                                format!("spec.ports[{j}].protocol"),
                                format!("unknown protocol {:?}", p.protocol),
                            )
                        })?;
                        entry.ports.push((number, p.name.clone(), protocol(proto)));
                    }
                }
                Resource::VirtualService(_)
                | Resource::DestinationRule(_)
                | Resource::RateLimit(_) => {}
                other => {
                    return Err(CompileError::unsupported(
                        resource_name(other.kind().as_str(), other.metadata()),
                        "kind",
                        format!("the {} kind", other.kind()),
                    ));
                }
            }
        }
        Ok(())
    }

    pub(super) fn service_entry(
        &mut self,
        o: &Object<trellis_api::networking::ServiceEntrySpec>,
    ) -> Result<()> {
        let name = resource_name("ServiceEntry", &o.metadata);
        let spec = &o.spec;
        if spec.workload_selector.is_some() {
            return Err(CompileError::unsupported(
                &name,
                "spec.workloadSelector",
                "selecting WorkloadEntries",
            ));
        }
        let resolution = spec.resolution.unwrap_or_default();
        if resolution == Resolution::DynamicDns {
            return Err(CompileError::unsupported(
                &name,
                "spec.resolution",
                "DYNAMIC_DNS resolution",
            ));
        }
        let mut ports = Vec::new();
        for (j, p) in spec.ports.iter().enumerate() {
            let number = port_u16(&name, &format!("spec.ports[{j}].number"), p.number)?;
            let proto = ProtocolName::parse_istio(&p.protocol).ok_or_else(|| {
                CompileError::invalid(
                    &name,
                    format!("spec.ports[{j}].protocol"),
                    format!("unknown protocol {:?}", p.protocol),
                )
            })?;
            ports.push((number, p.name.clone(), protocol(proto)));
        }
        let mut vips = Vec::new();
        for a in &spec.addresses {
            if let Ok(ip) = a.parse::<IpAddr>() {
                vips.push(ip);
            }
        }
        for (h, host) in spec.hosts.iter().enumerate() {
            let mut endpoints = Vec::new();
            for (j, e) in spec.endpoints.iter().enumerate() {
                let mut port_map = BTreeMap::new();
                for (pname, p) in &e.ports {
                    port_map.insert(
                        pname.clone(),
                        port_u16(&name, &format!("spec.endpoints[{j}].ports.{pname}"), *p)?,
                    );
                }
                endpoints.push((
                    Endpoint {
                        address: e.address.clone(),
                        port: 0,
                        labels: e.labels.clone(),
                        locality: Locality::parse(&e.locality),
                        weight: e.weight.max(1),
                    },
                    port_map,
                ));
            }
            if endpoints.is_empty() && resolution == Resolution::Dns && !host.starts_with('*') {
                // A DNS entry without endpoints means "the host itself".
                endpoints.push((
                    Endpoint {
                        address: host.clone(),
                        port: 0,
                        labels: BTreeMap::new(),
                        locality: Locality::default(),
                        weight: 1,
                    },
                    BTreeMap::new(),
                ));
            }
            let info = ServiceInfo {
                host: host.clone(),
                vips: vips.clone(),
                ports: ports.clone(),
                endpoints,
                passthrough: resolution == Resolution::None,
            };
            if self.services.contains_key(host) {
                self.warnings.push(format!(
                    "{name}: spec.hosts[{h}]: {host} is already declared; this entry is ignored"
                ));
                continue;
            }
            self.services.insert(host.clone(), info);
        }
        Ok(())
    }

    pub(super) fn resolve_host(&self, host: &str, namespace: &str) -> Option<&ServiceInfo> {
        self.services
            .get(host)
            .or_else(|| self.services.get(&qualify(host, namespace)))
            .or_else(|| {
                // `reviews.shop` written for `reviews.shop.svc.cluster.local`.
                self.services.get(&format!("{host}.{CLUSTER_DOMAIN}"))
            })
    }
}

//! DestinationRules and the clusters they shape: one per service port, one more per subset.

use super::*;

impl<'a> Compiler<'a> {
    pub(super) fn collect_rules(&mut self) -> Result<()> {
        let mut rules: Vec<_> = self
            .config
            .resources
            .iter()
            .filter_map(|r| match r {
                Resource::DestinationRule(o) => Some((&o.metadata, &o.spec)),
                _ => None,
            })
            .collect();
        // Istio looks in the proxy's namespace first, then the service's.
        let own = self.node.namespace.clone();
        rules.sort_by_key(|(m, _)| m.namespace != own);
        for (meta, spec) in &rules {
            let rname = resource_name("DestinationRule", meta);
            let mut policies: Vec<(String, &TrafficPolicy)> = Vec::new();
            if let Some(tp) = &spec.traffic_policy {
                policies.push(("spec.trafficPolicy".to_owned(), tp));
            }
            for (i, s) in spec.subsets.iter().enumerate() {
                if let Some(tp) = &s.traffic_policy {
                    policies.push((format!("spec.subsets[{i}].trafficPolicy"), tp));
                }
            }
            for (at, tp) in &policies {
                if let Some(cp) = &tp.connection_pool {
                    pool_warnings(
                        &rname,
                        &format!("{at}.connectionPool"),
                        cp,
                        &mut self.warnings,
                    );
                }
                for (k, p) in tp.port_level_settings.iter().enumerate() {
                    if let Some(cp) = &p.connection_pool {
                        pool_warnings(
                            &rname,
                            &format!("{at}.portLevelSettings[{k}].connectionPool"),
                            cp,
                            &mut self.warnings,
                        );
                    }
                }
            }
            if let Some(tp) = &spec.traffic_policy {
                check_traffic_policy(
                    &resource_name("DestinationRule", meta),
                    "spec.trafficPolicy",
                    tp,
                )?;
            }
            for (i, s) in spec.subsets.iter().enumerate() {
                if let Some(tp) = &s.traffic_policy {
                    check_traffic_policy(
                        &resource_name("DestinationRule", meta),
                        &format!("spec.subsets[{i}].trafficPolicy"),
                        tp,
                    )?;
                }
            }
        }
        self.rules = rules;
        Ok(())
    }

    /// The DestinationRule for a host: an exact host beats a wildcard.
    pub(super) fn rule_for(
        &self,
        host: &str,
    ) -> Option<(&'a trellis_api::ObjectMeta, &'a DestinationRuleSpec)> {
        let exact = self
            .rules
            .iter()
            .find(|(m, r)| qualify(&r.host, &m.namespace) == host);
        exact
            .or_else(|| {
                self.rules
                    .iter()
                    .filter(|(m, r)| host_matches(&qualify(&r.host, &m.namespace), host))
                    .max_by_key(|(_, r)| r.host.len())
            })
            .copied()
    }

    pub(super) fn build_clusters(&mut self) -> Result<()> {
        let services: Vec<ServiceInfo> = self.services.values().cloned().collect();
        for svc in &services {
            let rule = self.rule_for(&svc.host);
            for (port, port_name, proto) in &svc.ports {
                let base_policy = rule.and_then(|(_, r)| r.traffic_policy.as_ref());
                let name = format!("outbound|{port}||{}", svc.host);
                let rname = rule
                    .map(|(m, _)| resource_name("DestinationRule", m))
                    .unwrap_or_default();
                let cluster = self.cluster(
                    &name,
                    svc,
                    *port,
                    port_name,
                    *proto,
                    "",
                    None,
                    base_policy,
                    &rname,
                )?;
                self.clusters.insert(name, cluster);
                if let Some((_, r)) = rule {
                    for s in &r.subsets {
                        let name = format!("outbound|{port}|{}|{}", s.name, svc.host);
                        let cluster = self.cluster(
                            &name,
                            svc,
                            *port,
                            port_name,
                            *proto,
                            &s.name,
                            Some(&s.labels),
                            merge_policy(base_policy, s.traffic_policy.as_ref()).as_ref(),
                            &rname,
                        )?;
                        self.clusters.insert(name, cluster);
                    }
                }
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn cluster(
        &self,
        name: &str,
        svc: &ServiceInfo,
        port: u16,
        port_name: &str,
        proto: Protocol,
        subset: &str,
        labels: Option<&BTreeMap<String, String>>,
        policy: Option<&TrafficPolicy>,
        rule_name: &str,
    ) -> Result<Cluster> {
        let mut endpoints = Vec::new();
        for (e, ports) in &svc.endpoints {
            if let Some(labels) = labels
                && !labels.iter().all(|(k, v)| e.labels.get(k) == Some(v))
            {
                continue;
            }
            let p = ports
                .get(port_name)
                .or_else(|| (svc.ports.len() == 1).then(|| ports.get("")).flatten())
                .copied()
                .unwrap_or(port);
            let mut e = e.clone();
            e.port = p;
            endpoints.push(e);
        }
        let port_policy = policy.and_then(|tp| {
            tp.port_level_settings
                .iter()
                .find(|p| p.port.as_ref().is_some_and(|s| s.number == u32::from(port)))
        });
        let lb_settings = port_policy
            .and_then(|p| p.load_balancer.as_ref())
            .or_else(|| policy.and_then(|p| p.load_balancer.as_ref()));
        let pool_settings = port_policy
            .and_then(|p| p.connection_pool.as_ref())
            .or_else(|| policy.and_then(|p| p.connection_pool.as_ref()));
        let outlier_settings = port_policy
            .and_then(|p| p.outlier_detection.as_ref())
            .or_else(|| policy.and_then(|p| p.outlier_detection.as_ref()));
        let (lb, locality_lb, warmup) =
            lb_policy(rule_name, lb_settings, outlier_settings.is_some())?;
        let (pool, upgrade_h2) = pool_limits(pool_settings);
        let outlier = outlier_policy(outlier_settings);
        let budget = policy.and_then(|p| p.retry_budget.as_ref());
        let retry_budget = RetryBudget {
            percent: budget.and_then(|b| b.percent).unwrap_or(20.0),
            min_concurrency: budget
                .map(|b| b.min_retry_concurrency)
                .filter(|n| *n > 0)
                .unwrap_or(3),
        };
        Ok(Cluster {
            name: name.to_owned(),
            host: svc.host.clone(),
            port,
            subset: subset.to_owned(),
            protocol: if upgrade_h2 && proto == Protocol::Http {
                Protocol::Http2
            } else {
                proto
            },
            passthrough: svc.passthrough,
            endpoints,
            lb,
            locality_lb,
            warmup,
            pool,
            outlier,
            retry_budget,
        })
    }
}

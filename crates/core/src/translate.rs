//! What TailscaleGateways add to Envoy Gateway's translation, planned from the cache; the merge
//! itself is [`crate::envoy::merge_translation`].
//!
//! For each TailscaleGateway we expose the TailscaleServices of its tailnets: one cluster per
//! service (`tailscale/<ns>/<service>`) and, in every virtual host of the route configurations of
//! the Gateway it references, one prefix route (`/tailscale/{service}/` by default) in front of
//! Envoy Gateway's own routes. The merge replaces our own earlier output instead of adding to it,
//! so running it on its own result changes nothing.

use std::sync::Arc;
use std::time::Duration;

use crate::api::{ExposedServiceStatus, RouteGeneration, TailscaleGateway, TailscaleServices};
use crate::backends::{self as backend, Placement};
use crate::envoy::{GENERATED_PREFIX, GatewayTarget, GeneratedRoute, Plan, cluster_name, expand_prefix, new_cluster};
use crate::index::Index;
use crate::selector::Selector;
use crate::validate::DEFAULT_PATH_PREFIX;
use crate::{FieldPath, ObjectKey, duration};

fn effective_generation<'a>(
    tailnet: Option<&'a RouteGeneration>,
    gateway: Option<&'a RouteGeneration>,
) -> (String, Option<Duration>) {
    let prefix = tailnet
        .and_then(|g| g.path_prefix.clone())
        .or_else(|| gateway.and_then(|g| g.path_prefix.clone()))
        .unwrap_or_else(|| DEFAULT_PATH_PREFIX.to_string());
    let timeout = tailnet
        .and_then(|g| g.timeout.as_deref())
        .or_else(|| gateway.and_then(|g| g.timeout.as_deref()))
        .and_then(|t| duration::parse(t).ok());
    (prefix, timeout)
}

/// The services a gateway exposes, each with its tailnet and route settings.
fn exposed(idx: &Index, gw: &TailscaleGateway) -> Vec<(Arc<TailscaleServices>, String, String, Option<Duration>)> {
    let ns = gw.metadata.namespace.clone().unwrap_or_default();
    let gw_gen = gw.spec.route_generation.as_ref();
    let mut out = Vec::new();
    for (key, svc) in idx.all_services().filter(|(k, _)| k.namespace == ns) {
        let selected: Vec<_> = idx.selected_endpoints(key).filter_map(|k| idx.endpoints(k).cloned()).collect();
        let tailnet = backend::services_tailnet(svc, &selected).unwrap_or_default();
        if gw.spec.tailnets.is_empty() {
            let (prefix, timeout) = effective_generation(None, gw_gen);
            out.push((svc.clone(), tailnet, prefix, timeout));
            continue;
        }
        let labels = svc.metadata.labels.clone().unwrap_or_default();
        let entry = gw.spec.tailnets.iter().find(|t| {
            t.name == tailnet
                && t.service_selector.as_ref().is_none_or(|s| {
                    Selector::from_label_selector(s, &FieldPath::new("serviceSelector"))
                        .is_ok_and(|sel| sel.matches(&labels))
                })
        });
        if let Some(t) = entry {
            let (prefix, timeout) = effective_generation(t.route_generation.as_ref(), gw_gen);
            out.push((svc.clone(), tailnet, prefix, timeout));
        }
    }
    out
}

/// Plans the clusters and routes of every TailscaleGateway in the cache.
pub fn plan(idx: &Index, place: &Placement, connect_timeout: Duration) -> Plan {
    let mut plan = Plan::default();
    for (gw_key, gw) in idx.gateways() {
        let gw_ns = gw.spec.gateway_ref.namespace.clone().unwrap_or_else(|| gw_key.namespace.clone());
        let target = GatewayTarget {
            prefix: format!("{gw_ns}/{}/", gw.spec.gateway_ref.name),
            listener: gw.spec.gateway_ref.section_name.clone(),
        };
        let mut routes = Vec::new();
        for (svc, tailnet, template, timeout) in exposed(idx, gw) {
            let svc_key = ObjectKey::of(&svc.metadata);
            let name = cluster_name(&svc_key);
            let backend = backend::resolve_services(idx, &svc, place, None);
            routes.push(GeneratedRoute {
                name: format!("{GENERATED_PREFIX}{}/{}/{}", gw_key.namespace, gw_key.name, svc_key.name),
                prefix: expand_prefix(&template, &svc_key.name, &tailnet),
                cluster: name.clone(),
                host_rewrite: backend.vip_dns_name.clone(),
                timeout,
                service: svc_key.name.clone(),
                tailnet,
            });
            plan.clusters.entry(name.clone()).or_insert_with(|| new_cluster(&name, &backend, connect_timeout));
        }
        routes.sort_by(|a, b| b.prefix.len().cmp(&a.prefix.len()).then_with(|| a.name.cmp(&b.name)));
        plan.routes.push((target, routes));
    }
    plan
}

/// Status rows for a gateway: what it exposes, where, through which cluster.
pub fn exposed_services(idx: &Index, gw: &TailscaleGateway) -> Vec<ExposedServiceStatus> {
    exposed(idx, gw)
        .into_iter()
        .map(|(svc, tailnet, template, _)| {
            let key = ObjectKey::of(&svc.metadata);
            ExposedServiceStatus {
                path_prefix: expand_prefix(&template, &key.name, &tailnet),
                cluster: cluster_name(&key),
                name: key.name,
                tailnet,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    use envoy_types::pb::envoy::config::route::v3::{Route, RouteConfiguration, VirtualHost};
    use serde_json::json;

    use super::*;
    use crate::Resource;
    use crate::api::API_VERSION;
    use crate::envoy::merge_translation;
    use crate::index::Index;

    fn res(v: serde_json::Value) -> Resource {
        Resource::from_value(v).expect("building the resource")
    }

    fn index() -> Index {
        let mut c = Index::with_event_log(10);
        c.apply(res(json!({"apiVersion": API_VERSION, "kind": "TailscaleEndpoints",
            "metadata": {"name": "east", "namespace": "apps", "labels": {"tier": "web"}},
            "spec": {"tailnet": "corp"}, "status": {"devices": [{"hostname": "east-0", "online": true}]}})));
        for (name, labels) in [("web", json!({"expose": "yes"})), ("api", json!({"expose": "no"}))] {
            c.apply(res(json!({"apiVersion": API_VERSION, "kind": "TailscaleServices",
                "metadata": {"name": name, "namespace": "apps", "labels": labels},
                "spec": {"selector": {"matchLabels": {"tier": "web"}}, "vipService": {"ports": ["tcp:80"]}},
                "status": {"vipService": {"dnsName": format!("{name}.tail1.ts.net")}}})));
        }
        c.apply(res(json!({"apiVersion": API_VERSION, "kind": "TailscaleGateway",
            "metadata": {"name": "tsgw", "namespace": "apps"},
            "spec": {"gatewayRef": {"name": "eg", "namespace": "gw"},
                     "tailnets": [{"name": "corp", "serviceSelector": {"matchLabels": {"expose": "yes"}},
                                   "routeGeneration": {"pathPrefix": "/{tailnet}/{service}/", "timeout": "30s"}}]}})));
        c
    }

    fn route_config(name: &str) -> RouteConfiguration {
        RouteConfiguration {
            name: name.into(),
            virtual_hosts: vec![VirtualHost {
                name: format!("{name}/www"),
                domains: vec!["*".into()],
                routes: vec![Route { name: "httproute/gw/site/rule/0/match/0".into(), ..Default::default() }],
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn plan_exposes_selected_services_with_expanded_prefixes() {
        let idx = index();
        let plan = plan(&idx, &Placement::default(), Duration::from_secs(5));
        assert_eq!(plan.clusters.keys().collect::<Vec<_>>(), vec!["tailscale/apps/web"]);
        let (target, routes) = &plan.routes[0];
        assert!(target.matches("gw/eg/http") && !target.matches("gw/other/http") && !target.matches("apps/eg/http"));
        assert_eq!(routes.len(), 1);
        assert_eq!(routes[0].prefix, "/corp/web/");
        assert_eq!(routes[0].host_rewrite.as_deref(), Some("web.tail1.ts.net"));
        assert_eq!(routes[0].timeout, Some(Duration::from_secs(30)));
        let gw = idx.gateway(&ObjectKey::new("apps", "tsgw")).cloned().unwrap_or_else(|| panic!("gw"));
        let status = exposed_services(&idx, &gw);
        assert_eq!(status[0].path_prefix, "/corp/web/");
        assert_eq!(status[0].cluster, "tailscale/apps/web");
    }

    #[test]
    fn apply_is_idempotent_and_leaves_others_alone() {
        let idx = index();
        let mut clusters = vec![Cluster { name: "httproute/gw/site/rule/0".into(), ..Default::default() }];
        let mut routes = vec![route_config("gw/eg/http"), route_config("other/gw/http")];
        let untouched = routes[1].clone();
        let p = || plan(&idx, &Placement::default(), Duration::from_secs(5));
        merge_translation(p(), &mut clusters, &mut routes);
        assert_eq!(clusters.len(), 2);
        assert_eq!(routes[0].virtual_hosts[0].routes.len(), 2);
        assert_eq!(routes[0].virtual_hosts[0].routes[0].name, "tailscale/apps/tsgw/web");
        assert_eq!(routes[1], untouched);
        let (c1, r1) = (clusters.clone(), routes.clone());
        merge_translation(p(), &mut clusters, &mut routes);
        assert_eq!((clusters, routes), (c1, r1));
    }

    #[test]
    fn stale_generated_resources_are_dropped() {
        let empty = Index::with_event_log(10);
        let mut clusters = vec![Cluster { name: "tailscale/apps/gone".into(), ..Default::default() }];
        let mut routes = vec![route_config("gw/eg/http")];
        routes[0].virtual_hosts[0]
            .routes
            .insert(0, Route { name: "tailscale/apps/tsgw/gone".into(), ..Default::default() });
        merge_translation(plan(&empty, &Placement::default(), Duration::from_secs(5)), &mut clusters, &mut routes);
        assert!(clusters.is_empty());
        assert_eq!(routes[0].virtual_hosts[0].routes.len(), 1);
    }
}

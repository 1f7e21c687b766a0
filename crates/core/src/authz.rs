//! How Envoy enforces TailscaleRoutePolicies, added to Envoy Gateway's translation: every Envoy
//! route a policy holds names the policy in per-route `ext_authz` settings, the HTTP connection
//! managers serving those routes get an `ext_authz` filter (disabled unless a route enables it)
//! calling our server, and a cluster reaches our server. Running it on its own output changes
//! nothing; routes no policy holds any more lose their settings.
//!
//! Which policy holds a route: the policy on its HTTPRoute/GRPCRoute, else on a TailscaleServices
//! it sends to, else on its Gateway (listener): the most specific wins, and of several policies
//! on one target the oldest ([`crate::policy::standings`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
use envoy_types::pb::envoy::config::core::v3::{
    Address, GrpcService, Http2ProtocolOptions, SocketAddress, TransportSocket, address, grpc_service, socket_address,
    transport_socket,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
};
use envoy_types::pb::envoy::config::listener::v3::{Filter, Listener, filter};
use envoy_types::pb::envoy::config::route::v3::{FilterConfig, Route, RouteConfiguration, route, route_action};
use envoy_types::pb::envoy::extensions::filters::http::ext_authz::v3::{
    CheckSettings, ExtAuthz, ExtAuthzPerRoute, ext_authz, ext_authz_per_route,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, http_connection_manager, http_filter,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::UpstreamTlsContext;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{HttpProtocolOptions, http_protocol_options};
use envoy_types::pb::envoy::r#type::v3::{HttpStatus, StatusCode};
use envoy_types::pb::google::protobuf::Any;
use prost::{Message, Name};

use crate::ObjectKey;
use crate::api::{GROUP, PolicyTargetRef};
use crate::dataplane::GATEWAY_API_GROUP;
use crate::envoy::{cluster_name, pb_duration};
use crate::index::Index;
use crate::policy::{Standing, standings};
use crate::routes::RouteKind;

/// Our ext_authz filter's name in the connection managers, and the key of its per-route settings
/// (distinct from an ext_authz Envoy Gateway adds for a SecurityPolicy).
pub const FILTER_NAME: &str = "envoy.filters.http.ext_authz/tailscale-gateway";
/// The cluster through which Envoy reaches our authorization service.
pub const CLUSTER_NAME: &str = "tailscale/route-policy-authz";
/// The `context_extensions` key naming the policy (`namespace/name`) on a route.
pub const POLICY_CONTEXT_KEY: &str = "tailscale-gateway-policy";
const HCM_FILTER: &str = "envoy.filters.network.http_connection_manager";
const ROUTER_FILTER: &str = "envoy.filters.http.router";
/// How long Envoy waits for a decision before failing the request closed (503).
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(1);

/// Where Envoy reaches our authorization service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthzAddress {
    /// DNS name or IP (in a cluster, our extension Service's name).
    pub host: String,
    /// gRPC port (the extension's).
    pub port: u16,
    /// Whether the port speaks TLS (`--xds-tls-cert`): Envoy then encrypts, with `host` as SNI,
    /// without verifying our certificate (it has no CA for it).
    pub tls: bool,
}

/// Name prefix of the routes that carry a rule's `backendRef` (`<prefix><ns>/<policy>/<rule>`).
pub const REROUTE_ROUTE_PREFIX: &str = "tailscale/policy-route/";

/// What route policies add to one translation.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PolicyPlan {
    /// The policy holding each Envoy route, by route configuration and route name (Envoy Gateway
    /// gives a route attached to two listeners the same name in both).
    pub holders: BTreeMap<(String, String), ObjectKey>,
    /// Per holding policy, the rules that send requests to another backend.
    pub reroutes: BTreeMap<ObjectKey, Vec<Reroute>>,
}

/// A rule's `backendRef`: where its requests go instead.
#[derive(Clone, Debug, PartialEq)]
pub struct Reroute {
    /// The rule's index (the value of [`crate::policy::REROUTE_HEADER`] ends with it).
    pub rule: usize,
    /// The TailscaleServices' cluster (`tailscale/<ns>/<service>`, as a TailscaleGateway's).
    pub cluster: Cluster,
    /// The VIP's DNS name, for the Host header.
    pub host_rewrite: Option<String>,
}

/// Plans route policies for a translation: who holds which route, and the clusters of the
/// backends their rules send to (those naming a TailscaleServices that is not there are left out,
/// and their requests stay on the route).
pub fn plan(
    idx: &Index,
    route_configs: &[RouteConfiguration],
    place: &crate::dataplane::Placement,
    connect_timeout: Duration,
) -> PolicyPlan {
    let holders = holders(idx, route_configs);
    let mut reroutes: BTreeMap<ObjectKey, Vec<Reroute>> = BTreeMap::new();
    for key in holders.values() {
        if reroutes.contains_key(key) {
            continue;
        }
        let Some((_, policy)) = idx.route_policies().find(|(k, _)| *k == key) else { continue };
        let mut list = Vec::new();
        for (i, rule) in policy.spec.rules.iter().enumerate() {
            let Some(b) = rule.action.backend_ref.as_ref().filter(|_| rule.action.type_ == "Allow") else { continue };
            let svc_key = ObjectKey::new(&key.namespace, &b.name);
            let Some(svc) = idx.services(&svc_key) else { continue };
            let backend = crate::backends::resolve_services(idx, svc, place, None);
            let cluster = crate::envoy::new_cluster(&cluster_name(&svc_key), &backend, connect_timeout);
            list.push(Reroute { rule: i, cluster, host_rewrite: backend.vip_dns_name.clone() });
        }
        reroutes.insert(key.clone(), list);
    }
    reroutes.retain(|_, l| !l.is_empty());
    PolicyPlan { holders, reroutes }
}

/// The policy holding each Envoy route, by route name, for the routes of `route_configs`.
fn holders(idx: &Index, route_configs: &[RouteConfiguration]) -> BTreeMap<(String, String), ObjectKey> {
    // Routes in this translation exist even before our own watch has seen them.
    let translated: BTreeSet<(String, String, String)> = route_configs
        .iter()
        .flat_map(|rc| rc.virtual_hosts.iter().flat_map(|vh| &vh.routes))
        .filter_map(|r| route_object(&r.name))
        .map(|(kind, ns, name)| (kind.to_string(), ns.to_string(), name.to_string()))
        .collect();
    let held = held_targets(idx, &translated);
    if held.is_empty() {
        return BTreeMap::new();
    }
    let mut out = BTreeMap::new();
    for rc in route_configs {
        let ours = |r: &&Route| !r.name.starts_with(REROUTE_ROUTE_PREFIX);
        for route in rc.virtual_hosts.iter().flat_map(|vh| vh.routes.iter().filter(ours)) {
            if let Some(policy) = holder(idx, &held, &rc.name, route) {
                out.insert((rc.name.clone(), route.name.clone()), policy);
            }
        }
    }
    out
}

/// The route object (kind, namespace, name) an Envoy Gateway route name comes from
/// (`httproute/<ns>/<name>/rule/<i>/match/<j>/<host>`).
fn route_object(route_name: &str) -> Option<(&'static str, &str, &str)> {
    let mut parts = route_name.splitn(4, '/');
    let kind = match parts.next()? {
        "httproute" => "HTTPRoute",
        "grpcroute" => "GRPCRoute",
        _ => return None,
    };
    Some((kind, parts.next()?, parts.next()?))
}

/// Targets (namespace, kind, name, section) held by a policy, with the policy.
type Held = BTreeMap<(String, String, String, Option<String>), ObjectKey>;

fn held_targets(idx: &Index, translated: &BTreeSet<(String, String, String)>) -> Held {
    let policies: Vec<_> = idx.route_policies().map(|(_, p)| p.as_ref()).collect();
    let mut held = Held::new();
    let exists = |ns: &str, t: &PolicyTargetRef| {
        target_exists(idx, ns, t) || translated.contains(&(t.kind.clone(), ns.to_string(), t.name.clone()))
    };
    for (policy, targets) in standings(policies, exists) {
        for (t, standing) in targets {
            if standing == Standing::Accepted {
                held.insert(
                    (policy.namespace.clone(), t.kind.clone(), t.name.clone(), t.section_name.clone()),
                    policy.clone(),
                );
            }
        }
    }
    held
}

/// Whether a policy's target is there, as far as the cache knows: routes and TailscaleServices
/// from the cache; a Gateway is taken to exist (the cache does not hold Gateways; Envoy
/// Gateway's route configurations name the ones it serves).
pub fn target_exists(idx: &Index, namespace: &str, t: &PolicyTargetRef) -> bool {
    let key = ObjectKey::new(namespace, &t.name);
    match (t.group.as_str(), t.kind.as_str()) {
        (GATEWAY_API_GROUP, "HTTPRoute") => idx.route_known(RouteKind::Http, &key),
        (GATEWAY_API_GROUP, "GRPCRoute") => idx.route_known(RouteKind::Grpc, &key),
        (GATEWAY_API_GROUP, "Gateway") => true,
        (GROUP, "TailscaleServices") => idx.services(&key).is_some(),
        _ => false,
    }
}

/// The policy holding one Envoy route of route configuration `rc_name`, most specific first.
fn holder(idx: &Index, held: &Held, rc_name: &str, route: &Route) -> Option<ObjectKey> {
    let find = |ns: &str, kind: &str, name: &str, section: Option<&str>| {
        held.get(&(ns.to_string(), kind.to_string(), name.to_string(), section.map(str::to_string))).cloned()
    };
    if let Some(p) = route_object(&route.name).and_then(|(kind, ns, name)| find(ns, kind, name, None)) {
        return Some(p);
    }
    for cluster in route_clusters(route) {
        for svc in services_of_cluster(idx, &cluster) {
            if let Some(p) = find(&svc.namespace, "TailscaleServices", &svc.name, None) {
                return Some(p);
            }
        }
    }
    // `<ns>/<gateway>/<listener>`, as Envoy Gateway names route configurations.
    let mut parts = rc_name.splitn(3, '/');
    let (ns, gateway, listener) = (parts.next()?, parts.next()?, parts.next());
    listener.and_then(|l| find(ns, "Gateway", gateway, Some(l))).or_else(|| find(ns, "Gateway", gateway, None))
}

/// The clusters a route sends to.
fn route_clusters(route: &Route) -> Vec<String> {
    let Some(route::Action::Route(action)) = &route.action else { return Vec::new() };
    match &action.cluster_specifier {
        Some(route_action::ClusterSpecifier::Cluster(c)) => vec![c.clone()],
        Some(route_action::ClusterSpecifier::WeightedClusters(w)) => {
            w.clusters.iter().map(|c| c.name.clone()).collect()
        }
        _ => Vec::new(),
    }
}

/// The TailscaleServices behind a cluster: the backendRefs of a route rule's cluster, or the
/// service of a TailscaleGateway's generated cluster.
fn services_of_cluster(idx: &Index, cluster: &str) -> Vec<ObjectKey> {
    if let Some(backends) = idx.rule_backends(cluster) {
        return backends
            .iter()
            .filter(|b| b.kind == "TailscaleServices")
            .map(|b| ObjectKey::new(&b.namespace, &b.name))
            .collect();
    }
    idx.all_services().map(|(k, _)| k).filter(|k| cluster_name(k) == cluster).cloned().collect()
}

/// Applies `plan` to a translation in place: per-route settings on held routes (and off the
/// others), in front of each virtual host the routes of its policies' `backendRef`s, the filter
/// in the connection managers of route configurations with a held route, and the clusters (ours
/// to `address` while any route is held, and the `backendRef`s').
pub fn enforce(
    plan: &PolicyPlan,
    address: &AuthzAddress,
    listeners: &mut [Listener],
    route_configs: &mut [RouteConfiguration],
    clusters: &mut Vec<Cluster>,
) {
    let mut enforcing: Vec<String> = Vec::new();
    for rc in route_configs.iter_mut() {
        let mut any = false;
        for vh in &mut rc.virtual_hosts {
            let routes = std::mem::take(&mut vh.routes);
            for mut route in routes.into_iter().filter(|r| !r.name.starts_with(REROUTE_ROUTE_PREFIX)) {
                route.typed_per_filter_config.remove(FILTER_NAME);
                if let Some(policy) = plan.holders.get(&(rc.name.clone(), route.name.clone())) {
                    route.typed_per_filter_config.insert(FILTER_NAME.to_string(), per_route(policy));
                    any = true;
                    let reroutes = plan.reroutes.get(policy).into_iter().flatten();
                    vh.routes.extend(reroutes.map(|r| reroute_route(policy, r, &route)));
                }
                vh.routes.push(route);
            }
        }
        if any {
            enforcing.push(rc.name.clone());
        }
    }
    for r in plan.reroutes.values().flatten() {
        match clusters.iter_mut().find(|c| c.name == r.cluster.name) {
            Some(c) => *c = r.cluster.clone(),
            None => clusters.push(r.cluster.clone()),
        }
    }
    for listener in listeners.iter_mut() {
        let chains = listener.filter_chains.iter_mut().chain(listener.default_filter_chain.as_mut());
        for filter in chains.flat_map(|c| c.filters.iter_mut()) {
            set_filter(filter, &enforcing);
        }
    }
    clusters.retain(|c| c.name != CLUSTER_NAME);
    if !enforcing.is_empty() {
        clusters.push(authz_cluster(address));
    }
}

/// The route, in front of `held`, that takes `held`'s requests to a rule's `backendRef` once our
/// answer set the header naming it: `held`'s match and action with the header required and the
/// backend's cluster and Host. Our filter is on for it too, so a client's own copy of the header
/// is judged, and removed unless the rule matches (Envoy then picks `held` again).
fn reroute_route(policy: &ObjectKey, r: &Reroute, held: &Route) -> Route {
    use envoy_types::pb::envoy::config::route::v3::{HeaderMatcher, RouteAction, header_matcher};
    use envoy_types::pb::envoy::r#type::matcher::v3::{StringMatcher, string_matcher};
    let value = format!("{policy}/{}", r.rule);
    let header = HeaderMatcher {
        name: crate::policy::REROUTE_HEADER.to_string(),
        header_match_specifier: Some(header_matcher::HeaderMatchSpecifier::StringMatch(StringMatcher {
            match_pattern: Some(string_matcher::MatchPattern::Exact(value.clone())),
            ..StringMatcher::default()
        })),
        ..HeaderMatcher::default()
    };
    // Everything of the held route (its other filters' settings, Envoy Gateway's authentication
    // among them, header changes, metadata) is kept: only the name, the match and the backend differ.
    let mut route = held.clone();
    let mut matches = held.r#match.clone().unwrap_or_default();
    matches.headers.push(header);
    let mut action = match &held.action {
        Some(route::Action::Route(a)) => a.clone(),
        _ => RouteAction::default(),
    };
    action.cluster_specifier = Some(route_action::ClusterSpecifier::Cluster(r.cluster.name.clone()));
    action.host_rewrite_specifier = r.host_rewrite.clone().map(route_action::HostRewriteSpecifier::HostRewriteLiteral);
    route.name = format!("{REROUTE_ROUTE_PREFIX}{value}/{}", held.name);
    route.r#match = Some(matches);
    route.action = Some(route::Action::Route(action));
    route.typed_per_filter_config.insert(FILTER_NAME.to_string(), per_route(policy));
    route
}

/// The per-route settings that turn our filter on for a route and name its policy.
pub fn per_route(policy: &ObjectKey) -> Any {
    let settings = ExtAuthzPerRoute {
        r#override: Some(ext_authz_per_route::Override::CheckSettings(CheckSettings {
            context_extensions: HashMap::from([(POLICY_CONTEXT_KEY.to_string(), policy.to_string())]),
            ..CheckSettings::default()
        })),
    };
    let config = FilterConfig { config: Some(to_any(&settings)), is_optional: false, disabled: false };
    to_any(&config)
}

/// Adds our filter (before the router) to a connection manager serving one of `enforcing`, and
/// takes it out of the others.
fn set_filter(filter: &mut Filter, enforcing: &[String]) {
    if filter.name != HCM_FILTER {
        return;
    }
    let Some(filter::ConfigType::TypedConfig(any)) = &mut filter.config_type else { return };
    let Ok(mut hcm) = HttpConnectionManager::decode(any.value.as_slice()) else { return };
    let serves = match &hcm.route_specifier {
        Some(http_connection_manager::RouteSpecifier::Rds(rds)) => enforcing.contains(&rds.route_config_name),
        Some(http_connection_manager::RouteSpecifier::RouteConfig(rc)) => enforcing.contains(&rc.name),
        _ => false,
    };
    let had = hcm.http_filters.iter().any(|f| f.name == FILTER_NAME);
    if serves == had {
        return;
    }
    hcm.http_filters.retain(|f| f.name != FILTER_NAME);
    if serves {
        let at = hcm.http_filters.iter().position(|f| f.name == ROUTER_FILTER).unwrap_or(hcm.http_filters.len());
        hcm.http_filters.insert(at, http_filter());
    }
    *any = to_any(&hcm);
}

/// Our ext_authz filter: disabled unless a route turns it on, failing closed.
pub fn http_filter() -> HttpFilter {
    let config = ExtAuthz {
        transport_api_version: 2, // V3
        failure_mode_allow: false,
        // A rule's backendRef is reached through a header our answer sets: pick the route again.
        clear_route_cache: true,
        status_on_error: Some(HttpStatus { code: StatusCode::ServiceUnavailable as i32 }),
        services: Some(ext_authz::Services::GrpcService(GrpcService {
            timeout: Some(pb_duration(CHECK_TIMEOUT)),
            target_specifier: Some(grpc_service::TargetSpecifier::EnvoyGrpc(grpc_service::EnvoyGrpc {
                cluster_name: CLUSTER_NAME.to_string(),
                ..grpc_service::EnvoyGrpc::default()
            })),
            ..GrpcService::default()
        })),
        ..ExtAuthz::default()
    };
    HttpFilter {
        name: FILTER_NAME.to_string(),
        disabled: true,
        config_type: Some(http_filter::ConfigType::TypedConfig(to_any(&config))),
        ..HttpFilter::default()
    }
}

/// The cluster to our authorization service (gRPC: HTTP/2).
pub fn authz_cluster(address: &AuthzAddress) -> Cluster {
    let endpoint = LbEndpoint {
        host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
            address: Some(Address {
                address: Some(address::Address::SocketAddress(SocketAddress {
                    address: address.host.clone(),
                    port_specifier: Some(socket_address::PortSpecifier::PortValue(u32::from(address.port))),
                    ..SocketAddress::default()
                })),
            }),
            ..Endpoint::default()
        })),
        ..LbEndpoint::default()
    };
    let http2 = HttpProtocolOptions {
        upstream_protocol_options: Some(http_protocol_options::UpstreamProtocolOptions::ExplicitHttpConfig(
            http_protocol_options::ExplicitHttpConfig {
                protocol_config: Some(
                    http_protocol_options::explicit_http_config::ProtocolConfig::Http2ProtocolOptions(
                        Http2ProtocolOptions::default(),
                    ),
                ),
            },
        )),
        ..HttpProtocolOptions::default()
    };
    let ip = address.host.parse::<std::net::IpAddr>().is_ok();
    let kind = if ip { cluster::DiscoveryType::Static } else { cluster::DiscoveryType::StrictDns };
    let transport_socket = address.tls.then(|| {
        let context = UpstreamTlsContext { sni: address.host.clone(), ..UpstreamTlsContext::default() };
        TransportSocket {
            name: "envoy.transport_sockets.tls".into(),
            config_type: Some(transport_socket::ConfigType::TypedConfig(to_any(&context))),
        }
    });
    Cluster {
        name: CLUSTER_NAME.to_string(),
        transport_socket,
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(kind as i32)),
        connect_timeout: Some(pb_duration(CHECK_TIMEOUT)),
        load_assignment: Some(ClusterLoadAssignment {
            cluster_name: CLUSTER_NAME.to_string(),
            endpoints: vec![LocalityLbEndpoints { lb_endpoints: vec![endpoint], ..LocalityLbEndpoints::default() }],
            ..ClusterLoadAssignment::default()
        }),
        typed_extension_protocol_options: HashMap::from([(
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions".to_string(),
            to_any(&http2),
        )]),
        ..Cluster::default()
    }
}

fn to_any<M: Message + Name>(m: &M) -> Any {
    Any { type_url: M::type_url(), value: m.encode_to_vec() }
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::config::listener::v3::FilterChain;
    use envoy_types::pb::envoy::config::route::v3::{RouteAction, VirtualHost};
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::Rds;
    use serde_json::json;

    use super::*;
    use crate::Resource;

    fn route(name: &str, cluster: &str) -> Route {
        Route {
            name: name.into(),
            action: Some(route::Action::Route(RouteAction {
                cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(cluster.into())),
                ..RouteAction::default()
            })),
            ..Route::default()
        }
    }

    fn route_config(name: &str, routes: Vec<Route>) -> RouteConfiguration {
        RouteConfiguration {
            name: name.into(),
            virtual_hosts: vec![VirtualHost { name: "vh".into(), routes, ..VirtualHost::default() }],
            ..RouteConfiguration::default()
        }
    }

    fn listener(rds: &str) -> Listener {
        let hcm = HttpConnectionManager {
            route_specifier: Some(http_connection_manager::RouteSpecifier::Rds(Rds {
                route_config_name: rds.into(),
                ..Rds::default()
            })),
            http_filters: vec![HttpFilter { name: ROUTER_FILTER.into(), ..HttpFilter::default() }],
            ..HttpConnectionManager::default()
        };
        Listener {
            name: rds.into(),
            filter_chains: vec![FilterChain {
                filters: vec![Filter {
                    name: HCM_FILTER.into(),
                    config_type: Some(filter::ConfigType::TypedConfig(to_any(&hcm))),
                }],
                ..FilterChain::default()
            }],
            ..Listener::default()
        }
    }

    fn filters(l: &Listener) -> Vec<(String, bool)> {
        let Some(filter::ConfigType::TypedConfig(any)) = &l.filter_chains[0].filters[0].config_type else {
            return Vec::new();
        };
        let hcm = HttpConnectionManager::decode(any.value.as_slice()).expect("an HCM");
        hcm.http_filters.iter().map(|f| (f.name.clone(), f.disabled)).collect()
    }

    fn policy(name: &str, created: &str, target: serde_json::Value) -> Resource {
        Resource::from_value(json!({"apiVersion": "gateway.tailscale.com/v1alpha1", "kind": "TailscaleRoutePolicy",
            "metadata": {"name": name, "namespace": "default", "creationTimestamp": created},
            "spec": {"targetRefs": [target], "defaultAction": "Deny"}}))
        .expect("a policy")
    }

    /// An index with HTTPRoutes `web` (to TailscaleServices `web-service`) and `plain`, and
    /// policies on the route, the service and the Gateway's `http` listener.
    fn index() -> Index {
        let mut idx = Index::default();
        idx.apply(
            Resource::from_value(json!({"apiVersion": "gateway.tailscale.com/v1alpha1", "kind": "TailscaleServices",
                "metadata": {"name": "web-service", "namespace": "default"},
                "spec": {"selector": {"matchLabels": {"a": "b"}}, "vipService": {"ports": ["tcp:80"]}}}))
            .expect("a service"),
        );
        for (name, backend) in [
            (
                "web",
                json!({"group": "gateway.tailscale.com", "kind": "TailscaleServices", "name": "web-service", "port": 80}),
            ),
            ("plain", json!({"name": "plain", "port": 80})),
            ("other", json!({"group": "gateway.tailscale.com", "kind": "TailscaleServices", "name": "web-service"})),
        ] {
            idx.apply_route(
                RouteKind::Http,
                &json!({"metadata": {"name": name, "namespace": "default"},
                "spec": {"rules": [{"backendRefs": [backend]}]}}),
            );
        }
        let gw = |section: &str| json!({"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "eg", "sectionName": section});
        idx.apply(policy(
            "on-route",
            "2026-01-01T00:00:00Z",
            json!({"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "web"}),
        ));
        idx.apply(policy(
            "on-service",
            "2026-01-01T00:00:00Z",
            json!({"group": "gateway.tailscale.com", "kind": "TailscaleServices", "name": "web-service"}),
        ));
        idx.apply(policy("on-listener", "2026-01-01T00:00:00Z", gw("http")));
        // Younger than on-route, on the same target: conflicted, holds nothing.
        idx.apply(policy(
            "late",
            "2026-06-01T00:00:00Z",
            json!({"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "web"}),
        ));
        idx
    }

    #[test]
    fn the_most_specific_accepted_policy_holds_a_route() {
        let idx = index();
        let rcs = vec![
            route_config(
                "default/eg/http",
                vec![
                    route("httproute/default/web/rule/0/match/0/www_example_com", "httproute/default/web/rule/0"),
                    route("httproute/default/other/rule/0/match/0/x", "httproute/default/other/rule/0"),
                    route("httproute/default/plain/rule/0/match/0/x", "httproute/default/plain/rule/0"),
                ],
            ),
            route_config(
                "default/eg/https",
                vec![
                    route("httproute/default/plain/rule/0/match/0/y", "httproute/default/plain/rule/0"),
                    // The same route on another listener: same name, other route configuration.
                    route("httproute/default/plain/rule/0/match/0/x", "httproute/default/plain/rule/0"),
                    // A route our watch has not seen yet, but Envoy Gateway translated.
                    route("httproute/default/fresh/rule/0/match/0/z", "httproute/default/fresh/rule/0"),
                ],
            ),
        ];
        let mut idx = idx;
        let fresh = json!({"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "fresh"});
        idx.apply(policy("on-fresh", "2026-01-01T00:00:00Z", fresh));
        let held = holders(&idx, &rcs);
        let p = |n: &str| ObjectKey::new("default", n);
        let at = |rc: &str, route: &str| held.get(&(rc.to_string(), route.to_string())).cloned();
        assert_eq!(at("default/eg/http", "httproute/default/web/rule/0/match/0/www_example_com"), Some(p("on-route")));
        assert_eq!(at("default/eg/http", "httproute/default/other/rule/0/match/0/x"), Some(p("on-service")));
        assert_eq!(at("default/eg/http", "httproute/default/plain/rule/0/match/0/x"), Some(p("on-listener")));
        assert_eq!(at("default/eg/https", "httproute/default/plain/rule/0/match/0/y"), None, "another listener");
        assert_eq!(at("default/eg/https", "httproute/default/plain/rule/0/match/0/x"), None, "keyed by listener too");
        assert_eq!(at("default/eg/https", "httproute/default/fresh/rule/0/match/0/z"), Some(p("on-fresh")));
    }

    #[test]
    fn enforcement_is_idempotent_and_undone_when_no_policy_holds() {
        let idx = index();
        let mut rcs = vec![
            route_config(
                "default/eg/http",
                vec![route("httproute/default/web/rule/0/match/0/w", "httproute/default/web/rule/0")],
            ),
            route_config("default/eg/https", vec![route("httproute/default/plain/rule/0/match/0/y", "c")]),
        ];
        let mut listeners = vec![listener("default/eg/http"), listener("default/eg/https")];
        let mut clusters = Vec::new();
        let address = AuthzAddress {
            host: "tailscale-gateway-xds.tailscale-gateway.svc.cluster.local".into(),
            port: 5005,
            tls: false,
        };
        let held = plan(&idx, &rcs, &Default::default(), Duration::from_secs(5));
        enforce(&held, &address, &mut listeners, &mut rcs, &mut clusters);
        let first = (listeners.clone(), rcs.clone(), clusters.clone());
        assert_eq!(filters(&listeners[0]), vec![(FILTER_NAME.to_string(), true), (ROUTER_FILTER.to_string(), false)]);
        assert_eq!(filters(&listeners[1]), vec![(ROUTER_FILTER.to_string(), false)], "no held route there");
        let per_route = &rcs[0].virtual_hosts[0].routes[0].typed_per_filter_config[FILTER_NAME];
        let config = FilterConfig::decode(per_route.value.as_slice()).expect("a FilterConfig");
        assert!(!config.disabled, "the route turns the filter on");
        let settings = ExtAuthzPerRoute::decode(config.config.expect("settings").value.as_slice()).expect("settings");
        let Some(ext_authz_per_route::Override::CheckSettings(s)) = settings.r#override else { panic!("no settings") };
        assert_eq!(s.context_extensions[POLICY_CONTEXT_KEY], "default/on-route");
        assert_eq!(clusters.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), [CLUSTER_NAME]);
        // Again on its own output: nothing changes.
        enforce(&held, &address, &mut listeners, &mut rcs, &mut clusters);
        assert_eq!((listeners.clone(), rcs.clone(), clusters.clone()), first);
        // No policy any more: everything of ours goes.
        enforce(&PolicyPlan::default(), &address, &mut listeners, &mut rcs, &mut clusters);
        assert_eq!(filters(&listeners[0]), vec![(ROUTER_FILTER.to_string(), false)]);
        assert!(rcs[0].virtual_hosts[0].routes[0].typed_per_filter_config.is_empty());
        assert!(clusters.is_empty());
    }

    #[test]
    fn a_rules_backend_ref_gets_a_route_in_front_of_the_held_one() {
        let mut idx = index();
        idx.apply(
            Resource::from_value(json!({"apiVersion": "gateway.tailscale.com/v1alpha1", "kind": "TailscaleServices",
                "metadata": {"name": "canary", "namespace": "default"},
                "spec": {"selector": {"matchLabels": {"a": "c"}}, "vipService": {"ports": ["tcp:80"]}}}))
            .expect("a service"),
        );
        idx.apply(
            Resource::from_value(
                json!({"apiVersion": "gateway.tailscale.com/v1alpha1", "kind": "TailscaleRoutePolicy",
                "metadata": {"name": "on-route", "namespace": "default", "creationTimestamp": "2026-01-01T00:00:00Z"},
                "spec": {"targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "web"}],
                    "rules": [{"matches": [{"headers": [{"name": "x-canary", "value": "1"}]}],
                               "action": {"type": "Allow", "backendRef": {"name": "canary"}}},
                              {"action": {"type": "Allow", "backendRef": {"name": "missing"}}}]}}),
            )
            .expect("a policy"),
        );
        let held_name = "httproute/default/web/rule/0/match/0/w";
        let mut rcs = vec![route_config("default/eg/http", vec![route(held_name, "httproute/default/web/rule/0")])];
        let (mut listeners, mut clusters) = (vec![listener("default/eg/http")], Vec::new());
        let address = AuthzAddress { host: "127.0.0.1".into(), port: 5005, tls: false };
        let p = plan(&idx, &rcs, &Default::default(), Duration::from_secs(5));
        let reroutes = &p.reroutes[&ObjectKey::new("default", "on-route")];
        assert_eq!(reroutes.iter().map(|r| r.rule).collect::<Vec<_>>(), [0], "a missing backend is left out");
        enforce(&p, &address, &mut listeners, &mut rcs, &mut clusters);
        let names: Vec<&str> = rcs[0].virtual_hosts[0].routes.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, [format!("{REROUTE_ROUTE_PREFIX}default/on-route/0/{held_name}").as_str(), held_name]);
        let front = &rcs[0].virtual_hosts[0].routes[0];
        let header = &front.r#match.as_ref().expect("a match").headers[0];
        assert_eq!(header.name, crate::policy::REROUTE_HEADER);
        assert_eq!(route_clusters(front), ["tailscale/default/canary"]);
        assert!(front.typed_per_filter_config.contains_key(FILTER_NAME), "a forged header is judged too");
        let mut cluster_names: Vec<&str> = clusters.iter().map(|c| c.name.as_str()).collect();
        cluster_names.sort();
        assert_eq!(cluster_names, ["tailscale/default/canary", CLUSTER_NAME]);
        let once = (rcs.clone(), clusters.clone());
        enforce(&p, &address, &mut listeners, &mut rcs, &mut clusters);
        assert_eq!((rcs, clusters), once, "idempotent");
    }
}

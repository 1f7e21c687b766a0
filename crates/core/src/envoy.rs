//! Pure builders of Envoy configuration for our resources: the cluster of a route backend, the
//! routes a TailscaleGateway generates, and the merge of those into Envoy Gateway's translation.
//! No I/O: the xDS face resolves objects against the cache into [`Backend`]s and calls these.
//!
//! Envoy Gateway hands us an empty cluster for a custom backendRef (usually EDS with nothing
//! behind it). We turn it into a STRICT_DNS cluster over stable Service DNS names: priority 0 is
//! the backend this cluster publishes on the VIP, reached directly (no tailnet hop); priority 1 is
//! the VIP through our egress proxies, which reach whichever cluster serves it. Priorities are
//! fixed by the path, never by device status: Envoy Gateway re-translates a backend only when its
//! generation changes, so health that changes at run time is left to Envoy's active health checks
//! and outlier detection, which move traffic to priority 1 when priority 0 fails.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::{Cluster, OutlierDetection, cluster};
use envoy_types::pb::envoy::config::core::v3::{
    Address, DataSource, HealthCheck, Locality, Metadata, SocketAddress, TransportSocket, address, data_source,
    health_check, socket_address, transport_socket,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, endpoint, lb_endpoint,
};
use envoy_types::pb::envoy::config::route::v3::{
    Route, RouteAction, RouteConfiguration, RouteMatch, route, route_action, route_match,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, SubjectAltNameMatcher, UpstreamTlsContext, common_tls_context,
    subject_alt_name_matcher,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{StringMatcher, string_matcher};
use envoy_types::pb::google::protobuf::{Any, Struct, Value as ProtoValue, value};
use envoy_types::pb::google::protobuf::{Duration as PbDuration, UInt32Value};
use prost::Message;

use super::{Kind, ObjectKey};

/// How an upstream is reached, in failover order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Path {
    /// The backend this cluster publishes on the VIP, directly: priority 0.
    Direct,
    /// The VIP through the egress proxies (any cluster that serves it): priority 1.
    Tailnet,
}

/// One address a backend's traffic can go to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upstream {
    /// What it is, shown as the locality's sub-zone (`web` for a Service, the egress
    /// TailscaleEndpoints' name for the tailnet path).
    pub name: String,
    /// Stable DNS name (`<svc>.<ns>.svc.<domain>`).
    pub host: String,
    /// Port.
    pub port: u32,
    /// How it is reached.
    pub path: Path,
    /// Region label, if any.
    pub region: Option<String>,
    /// Speak TLS to it with this SNI (and verify the certificate for that name): the VIP port is
    /// served as HTTPS by the proxies, which terminate TLS with the VIP's MagicDNS certificate.
    pub tls_sni: Option<String>,
}

/// Active HTTP health check settings, with defaults filled in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheckSettings {
    /// Request path.
    pub path: String,
    /// Time between checks.
    pub interval: Duration,
    /// Timeout of one check.
    pub timeout: Duration,
    /// Failures before unhealthy.
    pub unhealthy_threshold: u32,
    /// Successes before healthy again.
    pub healthy_threshold: u32,
}

/// A resolved backend: everything needed to build its Envoy cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backend {
    /// TailscaleServices or TailscaleEndpoints.
    pub kind: Kind,
    /// The object.
    pub key: ObjectKey,
    /// Where traffic can go, direct ones first.
    pub upstreams: Vec<Upstream>,
    /// MagicDNS name of the VIP service (`web.tail8eff9.ts.net`), when known.
    pub vip_dns_name: Option<String>,
    /// One of [`STRATEGIES`](crate::validate::STRATEGIES) when the object sets one; `None`
    /// keeps Envoy Gateway's load-balancing policy (a BackendTrafficPolicy's).
    pub strategy: Option<String>,
    /// Active health checking, when the spec asks for it.
    pub health_check: Option<HealthCheckSettings>,
    /// The backendRef's weight among the rule's backends of our kinds (Gateway API's, default 1).
    pub weight: u32,
}

/// Default connect timeout for clusters that arrive without one.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A protobuf duration.
pub fn pb_duration(d: Duration) -> PbDuration {
    PbDuration { seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX), nanos: d.subsec_nanos() as i32 }
}

/// Envoy's LB policy for one of our strategy names (round robin for anything else).
pub fn lb_policy(strategy: &str) -> cluster::LbPolicy {
    match strategy {
        "least-request" => cluster::LbPolicy::LeastRequest,
        "random" => cluster::LbPolicy::Random,
        "ring-hash" => cluster::LbPolicy::RingHash,
        "maglev" => cluster::LbPolicy::Maglev,
        _ => cluster::LbPolicy::RoundRobin,
    }
}

/// An active HTTP health check.
pub fn health_check(hc: &HealthCheckSettings, host: Option<&str>) -> HealthCheck {
    HealthCheck {
        timeout: Some(pb_duration(hc.timeout)),
        interval: Some(pb_duration(hc.interval)),
        unhealthy_threshold: Some(UInt32Value { value: hc.unhealthy_threshold }),
        healthy_threshold: Some(UInt32Value { value: hc.healthy_threshold }),
        health_checker: Some(health_check::HealthChecker::HttpHealthCheck(health_check::HttpHealthCheck {
            path: hc.path.clone(),
            host: host.unwrap_or_default().to_string(),
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// Endpoint metadata key (under `envoy.transport_socket_match`) the TLS socket matches read.
pub const TLS_MATCH_KEY: &str = "tailscale-gateway.sni";
/// Where Envoy's images keep the system CA bundle (Envoy Gateway's canonical path).
pub const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

fn lb_endpoint(host: &str, port: u32, health_host: Option<&str>, sni: Option<&str>) -> LbEndpoint {
    LbEndpoint {
        metadata: sni.map(|sni| Metadata {
            filter_metadata: [("envoy.transport_socket_match".to_string(), string_struct(TLS_MATCH_KEY, sni))].into(),
            ..Default::default()
        }),
        host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
            address: Some(Address {
                address: Some(address::Address::SocketAddress(SocketAddress {
                    address: host.to_string(),
                    port_specifier: Some(socket_address::PortSpecifier::PortValue(port)),
                    ..Default::default()
                })),
            }),
            hostname: host.to_string(),
            // Each backend's health checks carry its own VIP name, whatever the cluster says.
            health_check_config: health_host
                .map(|h| endpoint::HealthCheckConfig { hostname: h.to_string(), ..Default::default() }),
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// The load assignment of a cluster over `backends`: one locality per upstream, priority by
/// [`Path`] (levels without upstreams left out, so priorities stay contiguous from 0 as Envoy
/// expects), the same host:port listed once. Every locality weighs its backend's weight (its
/// backendRef's): Envoy Gateway's default policy is locality-weighted, and there a locality
/// without a weight gets no traffic at all. A backend of weight 0 gets no locality.
pub fn load_assignment(cluster_name: &str, backends: &[Backend]) -> ClusterLoadAssignment {
    let mut by_path: BTreeMap<Path, Vec<(&Upstream, &Backend)>> = BTreeMap::new();
    let mut seen = BTreeSet::new();
    for b in backends.iter().filter(|b| b.weight > 0) {
        for u in &b.upstreams {
            if seen.insert((u.host.as_str(), u.port)) {
                by_path.entry(u.path).or_default().push((u, b));
            }
        }
    }
    let endpoints = by_path
        .into_values()
        .enumerate()
        .flat_map(|(priority, ups)| {
            ups.into_iter().map(move |(u, b)| LocalityLbEndpoints {
                locality: Some(Locality {
                    region: u.region.clone().unwrap_or_default(),
                    sub_zone: u.name.clone(),
                    ..Default::default()
                }),
                lb_endpoints: vec![lb_endpoint(&u.host, u.port, b.vip_dns_name.as_deref(), u.tls_sni.as_deref())],
                load_balancing_weight: Some(UInt32Value { value: b.weight }),
                priority: priority as u32,
                ..Default::default()
            })
        })
        .collect();
    ClusterLoadAssignment { cluster_name: cluster_name.to_string(), endpoints, ..Default::default() }
}

fn string_struct(key: &str, value: &str) -> Struct {
    Struct {
        fields: [(key.to_string(), ProtoValue { kind: Some(value::Kind::StringValue(value.to_string())) })].into(),
    }
}

/// A TLS transport socket to `sni`, verifying the server's certificate for that name against
/// the system CAs (the tailnet's MagicDNS certificates are publicly trusted).
pub fn tls_transport_socket(sni: &str) -> TransportSocket {
    let context = UpstreamTlsContext {
        sni: sni.to_string(),
        common_tls_context: Some(CommonTlsContext {
            validation_context_type: Some(common_tls_context::ValidationContextType::ValidationContext(
                CertificateValidationContext {
                    trusted_ca: Some(DataSource {
                        specifier: Some(data_source::Specifier::Filename(SYSTEM_CA_BUNDLE.into())),
                        ..Default::default()
                    }),
                    match_typed_subject_alt_names: vec![SubjectAltNameMatcher {
                        san_type: subject_alt_name_matcher::SanType::Dns as i32,
                        matcher: Some(StringMatcher {
                            match_pattern: Some(string_matcher::MatchPattern::Exact(sni.to_string())),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }],
                    ..Default::default()
                },
            )),
            ..Default::default()
        }),
        ..Default::default()
    };
    TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(Any {
            type_url: "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext".into(),
            value: context.encode_to_vec(),
        })),
    }
}

/// One transport socket match per SNI the upstreams ask for (endpoints without one keep the
/// cluster's own transport socket, plain unless Envoy Gateway set one).
fn tls_matches(backends: &[Backend]) -> Vec<cluster::TransportSocketMatch> {
    let snis: BTreeSet<&str> =
        backends.iter().flat_map(|b| &b.upstreams).filter_map(|u| u.tls_sni.as_deref()).collect();
    snis.into_iter()
        .map(|sni| cluster::TransportSocketMatch {
            name: format!("tailscale-tls-{sni}"),
            r#match: Some(string_struct(TLS_MATCH_KEY, sni)),
            transport_socket: Some(tls_transport_socket(sni)),
        })
        .collect()
}

/// Passive health checking when Envoy Gateway sent none: five consecutive 5xx or connection
/// failures eject a host for 30 s (growing with repeats), up to all of a priority, so traffic
/// moves on to the next priority while the first one fails.
pub fn outlier_detection() -> OutlierDetection {
    OutlierDetection {
        consecutive_5xx: Some(UInt32Value { value: 5 }),
        consecutive_gateway_failure: Some(UInt32Value { value: 5 }),
        interval: Some(pb_duration(Duration::from_secs(10))),
        base_ejection_time: Some(pb_duration(Duration::from_secs(30))),
        max_ejection_percent: Some(UInt32Value { value: 100 }),
        ..Default::default()
    }
}

/// Turns `cluster` into a working cluster for `backends` (the first one's load balancing and
/// health check settings win). Leaves the name and everything Envoy Gateway set that we do not
/// own (circuit breakers, TLS, buffer limits, its connect timeout, its load-balancing policy
/// unless the object sets a strategy, its outlier detection) as they were.
pub fn fill_cluster(cluster: &mut Cluster, backends: &[Backend], connect_timeout: Duration) {
    let Some(first) = backends.first() else { return };
    let assignment = load_assignment(&cluster.name, backends);
    let discovery = if assignment.endpoints.is_empty() {
        cluster::DiscoveryType::Static
    } else {
        cluster::DiscoveryType::StrictDns
    };
    cluster.cluster_discovery_type = Some(cluster::ClusterDiscoveryType::Type(discovery as i32));
    cluster.eds_cluster_config = None;
    if backends.len() > 1 {
        // Locality weights carry the backendRefs' weights (as Envoy Gateway does for its own).
        let common = cluster.common_lb_config.get_or_insert_with(Default::default);
        common.locality_config_specifier =
            Some(cluster::common_lb_config::LocalityConfigSpecifier::LocalityWeightedLbConfig(Default::default()));
    }
    cluster.load_assignment = Some(assignment);
    cluster.transport_socket_matches.retain(|m| !m.name.starts_with("tailscale-tls-"));
    cluster.transport_socket_matches.extend(tls_matches(backends));
    if let Some(strategy) = &first.strategy {
        cluster.lb_policy = lb_policy(strategy) as i32;
        // A typed policy would override lb_policy.
        cluster.load_balancing_policy = None;
    }
    if let Some(hc) = &first.health_check {
        cluster.health_checks = vec![health_check(hc, first.vip_dns_name.as_deref())];
    }
    if cluster.outlier_detection.is_none() {
        cluster.outlier_detection = Some(outlier_detection());
    }
    if cluster.connect_timeout.is_none() {
        cluster.connect_timeout = Some(pb_duration(connect_timeout));
    }
}

/// A fresh cluster for `backend` (the clusters PostTranslateModify adds for TailscaleGateways).
pub fn new_cluster(name: &str, backend: &Backend, connect_timeout: Duration) -> Cluster {
    let mut c = Cluster { name: name.to_string(), ..Default::default() };
    fill_cluster(&mut c, std::slice::from_ref(backend), connect_timeout);
    c
}

/// Name prefix of every cluster and route we generate; anything else is Envoy Gateway's.
pub const GENERATED_PREFIX: &str = "tailscale/";

/// Cluster name of a TailscaleServices exposed by a gateway.
pub fn cluster_name(svc: &ObjectKey) -> String {
    format!("{GENERATED_PREFIX}{}/{}", svc.namespace, svc.name)
}

/// Expands `{service}` and `{tailnet}` in a path prefix template.
pub fn expand_prefix(template: &str, service: &str, tailnet: &str) -> String {
    template.replace("{service}", service).replace("{tailnet}", tailnet)
}

/// One generated route.
#[derive(Clone, Debug, PartialEq)]
pub struct GeneratedRoute {
    /// Envoy route name.
    pub name: String,
    /// Path prefix matched.
    pub prefix: String,
    /// Cluster routed to.
    pub cluster: String,
    /// Host header rewrite (the VIP DNS name), when known.
    pub host_rewrite: Option<String>,
    /// Route timeout.
    pub timeout: Option<Duration>,
    /// Service and tailnet, for status.
    pub service: String,
    /// Tailnet of the service.
    pub tailnet: String,
}

impl GeneratedRoute {
    /// The Envoy route.
    pub fn to_route(&self) -> Route {
        Route {
            name: self.name.clone(),
            r#match: Some(RouteMatch {
                path_specifier: Some(route_match::PathSpecifier::Prefix(self.prefix.clone())),
                ..Default::default()
            }),
            action: Some(route::Action::Route(RouteAction {
                cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(self.cluster.clone())),
                prefix_rewrite: "/".into(),
                host_rewrite_specifier: self
                    .host_rewrite
                    .clone()
                    .map(route_action::HostRewriteSpecifier::HostRewriteLiteral),
                timeout: self.timeout.map(pb_duration),
                ..Default::default()
            })),
            ..Default::default()
        }
    }
}

/// Which route configurations of Envoy Gateway a TailscaleGateway adds routes to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayTarget {
    /// `<namespace>/<gateway>/`: Envoy Gateway names route configurations after listeners.
    pub prefix: String,
    /// The listener (sectionName), when one is named.
    pub listener: Option<String>,
}

impl GatewayTarget {
    /// Whether a route configuration belongs to the targeted Gateway (and listener).
    pub fn matches(&self, route_config: &str) -> bool {
        match route_config.strip_prefix(&self.prefix) {
            Some(rest) => self.listener.as_deref().is_none_or(|l| rest == l),
            None => false,
        }
    }
}

/// Everything one call of PostTranslateModify adds.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    /// Clusters by name.
    pub clusters: BTreeMap<String, Cluster>,
    /// Per gateway target, its routes (most specific prefix first).
    pub routes: Vec<(GatewayTarget, Vec<GeneratedRoute>)>,
}

/// Adds the plan to Envoy Gateway's lists in place: our clusters replace same-named ones (or are
/// appended), stale generated clusters go, and in each targeted virtual host our routes replace
/// earlier generated ones at the front. Unrelated resources are not touched.
pub fn merge_translation(plan: Plan, clusters: &mut Vec<Cluster>, route_configs: &mut [RouteConfiguration]) {
    let mut ours = plan.clusters;
    clusters.retain(|c| !c.name.starts_with(GENERATED_PREFIX) || ours.contains_key(&c.name));
    let mut index: HashMap<String, usize> = HashMap::new();
    for (i, c) in clusters.iter().enumerate() {
        if c.name.starts_with(GENERATED_PREFIX) {
            index.insert(c.name.clone(), i);
        }
    }
    for (name, cluster) in std::mem::take(&mut ours) {
        match index.get(&name) {
            Some(&i) => clusters[i] = cluster,
            None => clusters.push(cluster),
        }
    }
    for rc in route_configs.iter_mut() {
        let targeted: Vec<&GeneratedRoute> =
            plan.routes.iter().filter(|(t, _)| t.matches(&rc.name)).flat_map(|(_, r)| r.iter()).collect();
        let has_ours = rc.virtual_hosts.iter().any(|vh| vh.routes.iter().any(|r| r.name.starts_with(GENERATED_PREFIX)));
        if targeted.is_empty() && !has_ours {
            continue;
        }
        let mut generated: Vec<Route> = targeted.iter().map(|r| r.to_route()).collect();
        let mut seen = HashSet::new();
        generated.retain(|r| seen.insert(r.name.clone()));
        for vh in &mut rc.virtual_hosts {
            vh.routes.retain(|r| !r.name.starts_with(GENERATED_PREFIX));
            vh.routes.splice(0..0, generated.iter().cloned());
        }
    }
}

/// Sets the Host rewrite of a route to the VIP DNS name when every one of our backends agrees on
/// one; other actions and routes without our backends are left alone.
pub fn rewrite_route_host(route: &mut Route, backends: &[Backend]) {
    let mut names = backends.iter().filter_map(|b| b.vip_dns_name.as_deref());
    let Some(dns) = names.next() else { return };
    if names.any(|n| n != dns) {
        return;
    }
    if let Some(route::Action::Route(action)) = &mut route.action {
        action.host_rewrite_specifier = Some(route_action::HostRewriteSpecifier::HostRewriteLiteral(dns.to_string()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream(name: &str, path: Path) -> Upstream {
        Upstream {
            name: name.into(),
            host: format!("{name}.default.svc.cluster.local"),
            port: if path == Path::Direct { 8080 } else { 3417 },
            path,
            region: None,
            tls_sni: None,
        }
    }

    fn backend(upstreams: Vec<Upstream>) -> Backend {
        Backend {
            kind: Kind::Services,
            key: ObjectKey::new("default", "web"),
            upstreams,
            vip_dns_name: Some("web.tail8eff9.ts.net".into()),
            strategy: Some("maglev".into()),
            health_check: Some(HealthCheckSettings {
                path: "/health".into(),
                interval: Duration::from_secs(10),
                timeout: Duration::from_secs(5),
                unhealthy_threshold: 3,
                healthy_threshold: 2,
            }),
            weight: 1,
        }
    }

    fn priorities(c: &Cluster) -> Vec<(String, u32)> {
        c.load_assignment
            .iter()
            .flat_map(|a| &a.endpoints)
            .map(|l| (l.locality.as_ref().map(|l| l.sub_zone.clone()).unwrap_or_default(), l.priority))
            .collect()
    }

    #[test]
    fn direct_first_tailnet_second_and_contiguous() {
        let b = backend(vec![upstream("egress-a", Path::Tailnet), upstream("web", Path::Direct)]);
        let mut c = Cluster { name: "httproute/default/web/rule/0".into(), ..Default::default() };
        c.eds_cluster_config = Some(Default::default());
        fill_cluster(&mut c, std::slice::from_ref(&b), DEFAULT_CONNECT_TIMEOUT);
        assert_eq!(priorities(&c), vec![("web".into(), 0), ("egress-a".into(), 1)]);
        assert_eq!(
            c.cluster_discovery_type,
            Some(cluster::ClusterDiscoveryType::Type(cluster::DiscoveryType::StrictDns as i32))
        );
        assert!(c.eds_cluster_config.is_none());
        assert_eq!(c.lb_policy, cluster::LbPolicy::Maglev as i32);
        assert_eq!(c.connect_timeout, Some(PbDuration { seconds: 5, nanos: 0 }));
        assert_eq!(c.health_checks.len(), 1);
        assert_eq!(c.outlier_detection, Some(outlier_detection()));

        // Only the tailnet path: it becomes priority 0.
        let mut c2 = Cluster::default();
        fill_cluster(&mut c2, &[backend(vec![upstream("egress-a", Path::Tailnet)])], DEFAULT_CONNECT_TIMEOUT);
        assert_eq!(priorities(&c2), vec![("egress-a".into(), 0)]);

        // Refilling is idempotent.
        let before = c.clone();
        fill_cluster(&mut c, &[b], DEFAULT_CONNECT_TIMEOUT);
        assert_eq!(c, before);
    }

    #[test]
    fn several_backends_keep_their_weights_and_their_own_health_check_host() {
        let web =
            Backend { weight: 3, ..backend(vec![upstream("web", Path::Direct), upstream("egress-a", Path::Tailnet)]) };
        let mut api = backend(vec![upstream("api", Path::Direct)]);
        api.vip_dns_name = Some("api.tail8eff9.ts.net".into());
        let off = Backend { weight: 0, ..backend(vec![upstream("off", Path::Direct)]) };
        let mut c = Cluster::default();
        fill_cluster(&mut c, &[web, api, off], DEFAULT_CONNECT_TIMEOUT);
        let got: Vec<(String, u32, Option<u32>, String)> = c
            .load_assignment
            .iter()
            .flat_map(|a| &a.endpoints)
            .map(|l| {
                let host = match &l.lb_endpoints[0].host_identifier {
                    Some(lb_endpoint::HostIdentifier::Endpoint(e)) => {
                        e.health_check_config.as_ref().map(|h| h.hostname.clone()).unwrap_or_default()
                    }
                    _ => String::new(),
                };
                let zone = l.locality.as_ref().map(|z| z.sub_zone.clone()).unwrap_or_default();
                (zone, l.priority, l.load_balancing_weight.map(|w| w.value), host)
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("web".into(), 0, Some(3), "web.tail8eff9.ts.net".into()),
                ("api".into(), 0, Some(1), "api.tail8eff9.ts.net".into()),
                ("egress-a".into(), 1, Some(3), "web.tail8eff9.ts.net".into()),
            ],
            "weights per backend, weight 0 left out, each backend's health checks ask for its own VIP"
        );
        assert!(matches!(
            c.common_lb_config.and_then(|l| l.locality_config_specifier),
            Some(cluster::common_lb_config::LocalityConfigSpecifier::LocalityWeightedLbConfig(_))
        ));
    }

    #[test]
    fn https_vip_ports_through_the_tailnet_speak_tls_to_the_vip_name() {
        let tailnet = Upstream { tls_sni: Some("web.tail8eff9.ts.net".into()), ..upstream("egress-a", Path::Tailnet) };
        let mut c = Cluster::default();
        fill_cluster(&mut c, &[backend(vec![upstream("web", Path::Direct), tailnet])], DEFAULT_CONNECT_TIMEOUT);
        assert_eq!(c.transport_socket_matches.len(), 1);
        let m = &c.transport_socket_matches[0];
        assert_eq!(m.r#match, Some(string_struct(TLS_MATCH_KEY, "web.tail8eff9.ts.net")));
        let Some(transport_socket::ConfigType::TypedConfig(any)) =
            m.transport_socket.as_ref().and_then(|t| t.config_type.clone())
        else {
            panic!("typed TLS config")
        };
        let ctx = UpstreamTlsContext::decode(any.value.as_slice()).unwrap_or_default();
        assert_eq!(ctx.sni, "web.tail8eff9.ts.net");
        let metas: Vec<bool> =
            c.load_assignment.iter().flat_map(|a| &a.endpoints).map(|l| l.lb_endpoints[0].metadata.is_some()).collect();
        assert_eq!(metas, vec![false, true], "the direct Service stays plain, the tailnet path matches TLS");
        let before = c.clone();
        fill_cluster(&mut c, &[backend(vec![])], DEFAULT_CONNECT_TIMEOUT);
        assert!(c.transport_socket_matches.is_empty(), "our matches are replaced, not piled up: {before:?}");
    }

    #[test]
    fn envoy_gateways_policies_are_kept_unless_the_object_sets_one() {
        use envoy_types::pb::envoy::config::cluster::v3::LoadBalancingPolicy;
        let eg_policy = LoadBalancingPolicy { policies: vec![Default::default()] };
        let eg_outlier = OutlierDetection { consecutive_5xx: Some(UInt32Value { value: 2 }), ..Default::default() };
        let sent = Cluster {
            load_balancing_policy: Some(eg_policy.clone()),
            outlier_detection: Some(eg_outlier.clone()),
            ..Default::default()
        };
        let mut kept = sent.clone();
        let unset = Backend { strategy: None, ..backend(vec![upstream("web", Path::Direct)]) };
        fill_cluster(&mut kept, &[unset], DEFAULT_CONNECT_TIMEOUT);
        assert_eq!(kept.load_balancing_policy, Some(eg_policy));
        // Envoy Gateway's default policy is locality-weighted least-request (observed, v1.9.1):
        // there a locality without a weight gets no load, so every one carries its weight.
        let weights: Vec<Option<u32>> = kept
            .load_assignment
            .iter()
            .flat_map(|a| &a.endpoints)
            .map(|l| l.load_balancing_weight.as_ref().map(|w| w.value))
            .collect();
        assert_eq!(weights, vec![Some(1)]);
        assert_eq!(kept.outlier_detection, Some(eg_outlier), "a BackendTrafficPolicy's passive health check stays");
        let mut ours = sent;
        fill_cluster(&mut ours, &[backend(vec![upstream("web", Path::Direct)])], DEFAULT_CONNECT_TIMEOUT);
        assert_eq!(ours.load_balancing_policy, None, "the object's strategy wins");
        assert_eq!(ours.lb_policy, cluster::LbPolicy::Maglev as i32);
    }

    #[test]
    fn no_targets_gives_an_empty_static_cluster_and_keeps_connect_timeout() {
        let mut c = Cluster { connect_timeout: Some(PbDuration { seconds: 10, nanos: 0 }), ..Default::default() };
        fill_cluster(&mut c, &[backend(vec![])], DEFAULT_CONNECT_TIMEOUT);
        assert_eq!(
            c.cluster_discovery_type,
            Some(cluster::ClusterDiscoveryType::Type(cluster::DiscoveryType::Static as i32))
        );
        assert_eq!(c.load_assignment.map(|a| a.endpoints.len()), Some(0));
        assert_eq!(c.connect_timeout, Some(PbDuration { seconds: 10, nanos: 0 }));
    }

    #[test]
    fn strategies_map_to_lb_policies() {
        for (s, p) in [
            ("round-robin", cluster::LbPolicy::RoundRobin),
            ("least-request", cluster::LbPolicy::LeastRequest),
            ("random", cluster::LbPolicy::Random),
            ("ring-hash", cluster::LbPolicy::RingHash),
            ("maglev", cluster::LbPolicy::Maglev),
        ] {
            assert_eq!(lb_policy(s), p, "{s}");
        }
        for s in crate::validate::STRATEGIES {
            assert_ne!(lb_policy(s) == cluster::LbPolicy::RoundRobin, *s != "round-robin", "{s} is mapped");
        }
    }
}

#[cfg(test)]
mod merge_tests {
    use envoy_types::pb::envoy::config::route::v3::VirtualHost;

    use super::*;

    fn generated(name: &str, prefix: &str) -> GeneratedRoute {
        GeneratedRoute {
            name: name.into(),
            prefix: prefix.into(),
            cluster: "tailscale/apps/web".into(),
            host_rewrite: Some("web.tail1.ts.net".into()),
            timeout: Some(Duration::from_secs(30)),
            service: "web".into(),
            tailnet: "corp".into(),
        }
    }

    fn rc(name: &str) -> RouteConfiguration {
        RouteConfiguration {
            name: name.into(),
            virtual_hosts: vec![VirtualHost {
                name: "vh".into(),
                routes: vec![Route { name: "httproute/x".into(), ..Default::default() }],
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn gateway_targets_match_listeners() {
        let any = GatewayTarget { prefix: "gw/eg/".into(), listener: None };
        let one = GatewayTarget { prefix: "gw/eg/".into(), listener: Some("https".into()) };
        assert!(any.matches("gw/eg/http") && any.matches("gw/eg/https"));
        assert!(one.matches("gw/eg/https") && !one.matches("gw/eg/http"));
        assert!(!any.matches("gw/eg2/http"));
        assert_eq!(expand_prefix("/{tailnet}/{service}/", "web", "corp"), "/corp/web/");
        assert_eq!(cluster_name(&ObjectKey::new("apps", "web")), "tailscale/apps/web");
    }

    #[test]
    fn merge_puts_routes_first_dedups_and_replaces_clusters_in_place() {
        let mut plan = Plan::default();
        let c = Cluster {
            name: "tailscale/apps/web".into(),
            connect_timeout: Some(pb_duration(Duration::from_secs(1))),
            ..Default::default()
        };
        plan.clusters.insert(c.name.clone(), c.clone());
        let target = GatewayTarget { prefix: "gw/eg/".into(), listener: None };
        // Two gateways adding the same route name: it appears once.
        plan.routes.push((target.clone(), vec![generated("tailscale/apps/tsgw/web", "/tailscale/web/")]));
        plan.routes.push((target, vec![generated("tailscale/apps/tsgw/web", "/tailscale/web/")]));
        let mut clusters = vec![
            Cluster { name: "tailscale/apps/web".into(), ..Default::default() },
            Cluster { name: "httproute/a".into(), ..Default::default() },
        ];
        let mut rcs = vec![rc("gw/eg/http")];
        merge_translation(plan, &mut clusters, &mut rcs);
        assert_eq!(clusters[0], c, "replaced in place");
        assert_eq!(clusters[1].name, "httproute/a");
        let names: Vec<&str> = rcs[0].virtual_hosts[0].routes.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, vec!["tailscale/apps/tsgw/web", "httproute/x"]);
        match &rcs[0].virtual_hosts[0].routes[0].action {
            Some(route::Action::Route(a)) => {
                assert_eq!(a.timeout, Some(pb_duration(Duration::from_secs(30))));
                assert_eq!(
                    a.host_rewrite_specifier,
                    Some(route_action::HostRewriteSpecifier::HostRewriteLiteral("web.tail1.ts.net".into()))
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn host_rewrite_needs_one_agreed_vip_name_and_a_route_action() {
        let backend = |dns: Option<&str>| Backend {
            kind: Kind::Services,
            key: ObjectKey::new("a", "b"),
            upstreams: vec![],
            vip_dns_name: dns.map(str::to_string),
            strategy: None,
            health_check: None,
            weight: 1,
        };
        let route = generated("r", "/").to_route();
        let mut r = route.clone();
        rewrite_route_host(&mut r, &[backend(Some("x.ts.net")), backend(Some("y.ts.net"))]);
        assert_eq!(r, route, "disagreeing backends: unchanged");
        rewrite_route_host(&mut r, &[backend(None)]);
        assert_eq!(r, route, "no VIP name: unchanged");
        rewrite_route_host(&mut r, &[backend(Some("x.ts.net"))]);
        assert_ne!(r, route);
        let mut direct =
            Route { action: Some(route::Action::DirectResponse(Default::default())), ..Default::default() };
        let before = direct.clone();
        rewrite_route_host(&mut direct, &[backend(Some("x.ts.net"))]);
        assert_eq!(direct, before, "only route actions are rewritten");
    }
}

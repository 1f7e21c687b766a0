//! The Envoy Gateway extension server over a real socket, called by a tonic client the way Envoy
//! Gateway calls it.

mod util;

use std::net::SocketAddr;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
use envoy_types::pb::envoy::config::core::v3::{
    AggregatedConfigSource, ConfigSource, address, config_source, health_check, socket_address,
};
use envoy_types::pb::envoy::config::endpoint::v3::{ClusterLoadAssignment, lb_endpoint};
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::{
    Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost, route, route_action, route_match,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
use envoy_types::pb::google::protobuf::{Duration as PbDuration, UInt32Value};
use prost::Message;
use serde_json::{Value, json};
use tailscale_gateway::cache::Cache;
use tailscale_gateway::core::routes::RouteKind;
use tailscale_gateway::core::{Kind, ObjectKey, Resource};
use tailscale_gateway::xds::backend::Placement;
use tailscale_gateway::xds::pb::envoy_gateway_extension_client::EnvoyGatewayExtensionClient;
use tailscale_gateway::xds::pb::*;
use tailscale_gateway::xds::{HookSettings, SERVICE_NAME, TlsFiles, XdsMetrics, XdsOptions, serve_listener};
use tokio_util::sync::{CancellationToken, DropGuard};
use tonic::transport::Channel;

const API: &str = "gateway.tailscale.com/v1alpha1";

fn res(v: Value) -> Resource {
    Resource::from_value(v).expect("building the resource")
}

fn endpoints(name: &str, region: &str, online: &[bool], connection_type: &str) -> Value {
    let devices: Vec<Value> = online
        .iter()
        .enumerate()
        .map(|(i, o)| {
            json!({"hostname": format!("{name}-{i}"), "tailscaleIP": format!("100.64.0.{i}"),
                   "nodeID": format!("n{name}{i}"), "connected": o, "online": o})
        })
        .collect();
    json!({"apiVersion": API, "kind": "TailscaleEndpoints",
        "metadata": {"name": name, "namespace": "default", "generation": 1,
                     "labels": {"service-type": "web", "environment": "production", "region": region}},
        "spec": {"tailnet": "company-tailnet", "tags": ["tag:k8s-proxy"],
                 "proxy": {"replicas": online.len(), "connectionType": connection_type},
                 "ports": [{"port": 80, "protocol": "TCP"}, {"port": 443, "protocol": "TCP"}]},
        "status": {"devices": devices,
                   "statefulSets": [{"name": name, "namespace": "default", "replicas": online.len(),
                                     "readyReplicas": online.len(), "service": format!("{name}-svc")}]}})
}

/// A TailscaleServices exactly as Envoy Gateway puts it in `unstructured_bytes`: the whole
/// unstructured object, server-set metadata and status included.
fn web_service_json() -> Value {
    json!({
        "apiVersion": API, "kind": "TailscaleServices",
        "metadata": {
            "name": "web-service", "namespace": "default", "generation": 3,
            "resourceVersion": "48213", "uid": "6d0c5a0e-3f5e-4c1b-9d7e-2b1f0b4c9a11",
            "creationTimestamp": "2025-06-25T10:25:00Z",
            "labels": {"app.kubernetes.io/managed-by": "tailscale-gateway"},
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{\"apiVersion\":\"gateway.tailscale.com/v1alpha1\"}\n"},
            "managedFields": [{"apiVersion": API, "fieldsType": "FieldsV1", "manager": "kubectl-client-side-apply",
                               "operation": "Update", "time": "2025-06-25T10:25:00Z",
                               "fieldsV1": {"f:spec": {"f:selector": {}, "f:vipService": {}}}}]
        },
        "spec": {
            "selector": {"matchLabels": {"service-type": "web", "environment": "production"}},
            "vipService": {"name": "svc:web-service", "ports": ["tcp:80", "tcp:443"], "tags": ["tag:web-service"]},
            "serve": [{"port": 80, "protocol": "HTTP", "backendRef": {"name": "web", "port": 8080}}],
            "loadBalancing": {"strategy": "least-request",
                              "healthCheck": {"path": "/health", "interval": "10s", "timeout": "2s",
                                              "unhealthyThreshold": 4, "healthyThreshold": 1}}
        },
        "status": {
            "selectedEndpoints": [{"name": "web-proxy-east", "machines": ["web-proxy-east-0", "web-proxy-east-1"]}],
            "vipService": {"name": "svc:web-service", "addresses": ["100.100.100.50"],
                           "dnsName": "web-service.tail8eff9.ts.net", "backendCount": 2, "healthyBackends": 2}
        }
    })
}

fn fill_cache(cache: &Cache) {
    cache.apply(res(json!({"apiVersion": API, "kind": "TailscaleTailnet", "metadata": {"name": "company-tailnet"},
        "spec": {"oauthSecretRef": {"name": "oauth"}},
        "status": {"tailnetInfo": {"name": "company-tailnet", "magicDNSSuffix": "tail8eff9.ts.net"}}})));
    cache.apply(res(endpoints("web-proxy-east", "east", &[true, true], "ingress")));
    cache.apply(res(endpoints("web-proxy-west", "west", &[true], "egress")));
    cache.apply(res(endpoints("web-proxy-east-b", "east", &[false, false], "bidirectional")));
    cache.apply(res(web_service_json()));
    cache.apply(res(json!({"apiVersion": API, "kind": "TailscaleGateway",
        "metadata": {"name": "tailnet-gw", "namespace": "default"},
        "spec": {"gatewayRef": {"name": "eg"}, "tailnets": [{"name": "company-tailnet"}]}})));
    for kind in Kind::ALL {
        cache.mark_synced(kind);
    }
}

struct Running {
    addr: SocketAddr,
    metrics: XdsMetrics,
    /// Cancels the server's token when dropped (with [`Running::stop`] or with the test).
    stop: Option<DropGuard>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    async fn client(&self) -> EnvoyGatewayExtensionClient<Channel> {
        EnvoyGatewayExtensionClient::connect(format!("http://{}", self.addr))
            .await
            .expect("connecting to the extension server")
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20)
    }

    async fn stop(mut self) {
        drop(self.stop.take());
        tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .unwrap_or_else(|_| panic!("server did not stop"))
            .expect("joining the server task");
    }
}

async fn start_with(cache: Cache, tls: Option<TlsFiles>) -> Running {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("binding a listener");
    let addr = listener.local_addr().expect("reading the listener's address");
    let metrics = XdsMetrics::default();
    let opts = XdsOptions {
        addr,
        tls,
        hooks: HookSettings {
            placement: Placement { local_region: Some("east".into()), ..Placement::default() },
            ..HookSettings::default()
        },
        ..XdsOptions::default()
    };
    let stop = CancellationToken::new();
    let (m, token) = (metrics.clone(), stop.clone());
    let task = tokio::spawn(async move {
        serve_listener(listener, cache, opts, m, token).await.expect("serving the extension");
    });
    Running { addr, metrics, stop: Some(stop.drop_guard()), task }
}

async fn start() -> Running {
    let cache = Cache::new(100);
    fill_cache(&cache);
    start_with(cache, None).await
}

/// The empty cluster Envoy Gateway builds for a custom backendRef.
fn eg_cluster(name: &str) -> Cluster {
    Cluster {
        name: name.into(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(cluster::DiscoveryType::Eds as i32)),
        eds_cluster_config: Some(cluster::EdsClusterConfig {
            service_name: name.into(),
            eds_config: Some(ConfigSource {
                resource_api_version: 2,
                config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(
                    AggregatedConfigSource::default(),
                )),
                ..Default::default()
            }),
        }),
        connect_timeout: Some(PbDuration { seconds: 10, nanos: 0 }),
        lb_policy: cluster::LbPolicy::LeastRequest as i32,
        per_connection_buffer_limit_bytes: Some(UInt32Value { value: 32768 }),
        ..Default::default()
    }
}

fn ext(v: &Value) -> ExtensionResource {
    ExtensionResource { unstructured_bytes: serde_json::to_vec(v).expect("serializing the extension resource") }
}

fn cluster_request(c: Cluster, resources: Vec<ExtensionResource>) -> PostClusterModifyRequest {
    PostClusterModifyRequest {
        cluster: Some(c),
        post_cluster_context: Some(PostClusterExtensionContext { backend_extension_resources: resources }),
    }
}

/// (host, port, priority, region) of every endpoint, in order.
fn endpoints_of(la: &ClusterLoadAssignment) -> Vec<(String, u32, u32, String)> {
    la.endpoints
        .iter()
        .flat_map(|l| {
            l.lb_endpoints.iter().map(move |e| {
                let Some(lb_endpoint::HostIdentifier::Endpoint(ep)) = &e.host_identifier else {
                    panic!("endpoint without address")
                };
                let Some(address::Address::SocketAddress(sa)) = ep.address.as_ref().and_then(|a| a.address.as_ref())
                else {
                    panic!("not a socket address")
                };
                let Some(socket_address::PortSpecifier::PortValue(port)) = sa.port_specifier else { panic!("no port") };
                (sa.address.clone(), port, l.priority, l.locality.clone().unwrap_or_default().region)
            })
        })
        .collect()
}

#[tokio::test]
async fn cluster_for_tailscale_services_gets_endpoints_priorities_health_checks_and_lb() {
    let server = start().await;
    let mut client = server.client().await;
    let resp = client
        .post_cluster_modify(cluster_request(
            eg_cluster("httproute/default/web/rule/0"),
            vec![ext(&web_service_json())],
        ))
        .await
        .expect("calling PostClusterModify")
        .into_inner();
    let c = resp.cluster.unwrap_or_else(|| panic!("no cluster"));
    assert_eq!(c.name, "httproute/default/web/rule/0");
    assert_eq!(
        c.cluster_discovery_type,
        Some(cluster::ClusterDiscoveryType::Type(cluster::DiscoveryType::StrictDns as i32))
    );
    assert!(c.eds_cluster_config.is_none(), "a DNS cluster must not keep eds_cluster_config");
    let la = c.load_assignment.clone().unwrap_or_else(|| panic!("no load assignment"));
    assert_eq!(la.cluster_name, "httproute/default/web/rule/0");
    // The match ports the reconciler writes into each egress proxy's config for web-service:80.
    let cache = Cache::new(10);
    fill_cache(&cache);
    let match_port = |ep: &str| {
        let plan = cache.read().proxy_plan(&ObjectKey::new("default", ep), &Placement::default()).unwrap_or_default();
        u32::from(plan.match_ports[&("web-service".to_string(), 80)])
    };
    assert_eq!(
        endpoints_of(&la),
        vec![
            ("web.default.svc.cluster.local".into(), 8080, 0, "east".into()),
            ("web-proxy-east-b-svc.default.svc.cluster.local".into(), match_port("web-proxy-east-b"), 1, "east".into()),
            ("web-proxy-west-svc.default.svc.cluster.local".into(), match_port("web-proxy-west"), 1, "west".into()),
        ],
        "the Service published on the VIP's port directly, then the VIP through every egress proxy; \
         device health does not move priorities (Envoy Gateway would freeze them)"
    );
    assert!(c.outlier_detection.is_some(), "passive health checking moves traffic to priority 1");
    assert_eq!(c.lb_policy, cluster::LbPolicy::LeastRequest as i32);
    assert_eq!(c.health_checks.len(), 1);
    let hc = &c.health_checks[0];
    assert_eq!(hc.interval, Some(PbDuration { seconds: 10, nanos: 0 }));
    assert_eq!(hc.timeout, Some(PbDuration { seconds: 2, nanos: 0 }));
    assert_eq!(hc.unhealthy_threshold, Some(UInt32Value { value: 4 }));
    assert_eq!(hc.healthy_threshold, Some(UInt32Value { value: 1 }));
    match &hc.health_checker {
        Some(health_check::HealthChecker::HttpHealthCheck(h)) => {
            assert_eq!(h.path, "/health");
            assert_eq!(h.host, "web-service.tail8eff9.ts.net");
        }
        other => panic!("want an HTTP health check, got {other:?}"),
    }
    assert_eq!(c.connect_timeout, Some(PbDuration { seconds: 10, nanos: 0 }), "Envoy Gateway's timeout is kept");
    assert_eq!(c.per_connection_buffer_limit_bytes, Some(UInt32Value { value: 32768 }), "unrelated fields kept");

    // Same input, same output: Envoy Gateway may call again at any time.
    let again = client
        .post_cluster_modify(cluster_request(c.clone(), vec![ext(&web_service_json())]))
        .await
        .expect("calling PostClusterModify again")
        .into_inner();
    assert_eq!(again.cluster, Some(c));
    assert_eq!(server.metrics.calls("PostClusterModify"), 2);
    server.stop().await;
}

#[tokio::test]
async fn the_routes_backend_port_and_weights_are_used() {
    let cache = Cache::new(100);
    fill_cache(&cache);
    let mut api = web_service_json();
    api["metadata"]["name"] = json!("api-service");
    api["spec"]["vipService"] = json!({"name": "svc:api-service", "ports": ["tcp:8080"]});
    api["spec"]["serve"] = json!([{"port": 8080, "backendRef": {"name": "api", "port": 9090}}]);
    api["status"]["vipService"] = json!({"name": "svc:api-service", "dnsName": "api-service.tail8eff9.ts.net"});
    cache.apply(res(api.clone()));
    let mut web = web_service_json();
    web["spec"]["serve"] = json!([{"port": 80, "backendRef": {"name": "web", "port": 8080}},
                                  {"port": 443, "protocol": "HTTPS", "backendRef": {"name": "web", "port": 8443}}]);
    cache.apply(res(web.clone()));
    // As Envoy Gateway would have it: the route names port 443 and weights 3:1; it sends neither.
    cache.apply_route(
        RouteKind::Http,
        &json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": "split", "namespace": "default"},
            "spec": {"rules": [{"backendRefs": [
                {"group": "gateway.tailscale.com", "kind": "TailscaleServices", "name": "web-service", "port": 443, "weight": 3},
                {"group": "gateway.tailscale.com", "kind": "TailscaleServices", "name": "api-service", "port": 8080, "weight": 1}]}]}}),
    );
    let match_port = |ep: &str, svc: &str, port: u16| {
        let plan = cache.read().proxy_plan(&ObjectKey::new("default", ep), &Placement::default()).unwrap_or_default();
        u32::from(plan.match_ports[&(svc.to_string(), port)])
    };
    let west_443 = match_port("web-proxy-west", "web-service", 443);
    let server = start_with(cache.clone(), None).await;
    let mut client = server.client().await;
    let c = client
        .post_cluster_modify(cluster_request(eg_cluster("httproute/default/split/rule/0"), vec![ext(&web), ext(&api)]))
        .await
        .expect("calling PostClusterModify for the split route")
        .into_inner()
        .cluster
        .unwrap_or_else(|| panic!("no cluster"));
    let la = c.load_assignment.clone().unwrap_or_default();
    let got: Vec<(String, u32, u32, Option<u32>)> = la
        .endpoints
        .iter()
        .zip(endpoints_of(&la))
        .map(|(l, (host, port, priority, _))| (host, port, priority, l.load_balancing_weight.map(|w| w.value)))
        .collect();
    assert!(
        got.contains(&("web.default.svc.cluster.local".into(), 8443, 0, Some(3))),
        "port 443 of the VIP, not the first (80): {got:?}"
    );
    assert!(got.contains(&("api.default.svc.cluster.local".into(), 9090, 0, Some(1))), "{got:?}");
    assert!(got.contains(&("web-proxy-west-svc.default.svc.cluster.local".into(), west_443, 1, Some(3))), "{got:?}");
    assert!(c.common_lb_config.and_then(|l| l.locality_config_specifier).is_some(), "locality-weighted");
    let tls: Vec<&str> = c.transport_socket_matches.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(
        tls,
        ["tailscale-tls-web-service.tail8eff9.ts.net"],
        "port 443 is served as HTTPS: TLS through the tailnet"
    );

    // An unknown route (or none, in a cluster without Gateway API): the first VIP port, weight 1.
    let c = client
        .post_cluster_modify(cluster_request(eg_cluster("httproute/default/other/rule/0"), vec![ext(&web)]))
        .await
        .expect("calling PostClusterModify for an unknown route")
        .into_inner()
        .cluster
        .unwrap_or_else(|| panic!("no cluster"));
    let hosts = endpoints_of(&c.load_assignment.unwrap_or_default());
    assert_eq!(hosts[0], ("web.default.svc.cluster.local".into(), 8080, 0, "east".into()));
    server.stop().await;
}

#[tokio::test]
async fn cluster_for_tailscale_endpoints_and_new_cluster_connect_timeout() {
    let server = start().await;
    let mut client = server.client().await;
    let mut bare = eg_cluster("httproute/default/east/rule/0/backend/1");
    bare.connect_timeout = None;
    let resp = client
        .post_cluster_modify(cluster_request(
            bare,
            vec![ext(&endpoints("web-proxy-east", "east", &[true, true], "ingress"))],
        ))
        .await
        .expect("calling PostClusterModify with a bare cluster")
        .into_inner();
    let c = resp.cluster.unwrap_or_else(|| panic!("no cluster"));
    let la = c.load_assignment.clone().unwrap_or_default();
    assert_eq!(endpoints_of(&la), vec![("web-proxy-east-svc.default.svc.cluster.local".into(), 80, 0, "east".into())]);
    assert_eq!(c.lb_policy, cluster::LbPolicy::LeastRequest as i32, "Envoy Gateway's policy is kept");
    assert!(c.health_checks.is_empty());
    assert_eq!(c.connect_timeout, Some(PbDuration { seconds: 5, nanos: 0 }));
    server.stop().await;
}

#[tokio::test]
async fn bad_resources_leave_the_cluster_unchanged_and_are_counted() {
    let server = start().await;
    let mut client = server.client().await;
    let original = eg_cluster("httproute/default/web/rule/0");
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "default"}});
    let broken = json!({"apiVersion": API, "kind": "TailscaleServices", "metadata": {"name": "x"},
                        "spec": {"selector": "not-a-selector"}});
    for resources in [
        vec![ExtensionResource { unstructured_bytes: b"{\"apiVersion\": truncated".to_vec() }],
        vec![ext(&pod)],
        vec![ext(&broken)],
    ] {
        let resp = client
            .post_cluster_modify(cluster_request(original.clone(), resources))
            .await
            .expect("a bad object must not fail the call")
            .into_inner();
        let back = resp.cluster.unwrap_or_else(|| panic!("no cluster"));
        assert_eq!(back.encode_to_vec(), original.encode_to_vec(), "byte-identical");
    }
    assert_eq!(server.metrics.errors("PostClusterModify", "unparseable"), 1);
    assert_eq!(server.metrics.errors("PostClusterModify", "unknown_kind"), 1);
    assert_eq!(server.metrics.errors("PostClusterModify", "invalid"), 1);

    // One bad object next to a good one: the good one still builds the cluster.
    let resp = client
        .post_cluster_modify(cluster_request(original.clone(), vec![ext(&pod), ext(&web_service_json())]))
        .await
        .expect("calling PostClusterModify with a bad object next to a good one")
        .into_inner();
    let c = resp.cluster.unwrap_or_default();
    assert_eq!(c.load_assignment.map(|l| l.endpoints.len()), Some(3));
    assert_eq!(server.metrics.errors("PostClusterModify", "unknown_kind"), 2);

    // A request without a cluster is answered with none (Envoy Gateway keeps its own).
    let resp = client
        .post_cluster_modify(PostClusterModifyRequest::default())
        .await
        .expect("calling PostClusterModify without a cluster")
        .into_inner();
    assert!(resp.cluster.is_none());
    server.stop().await;
}

fn eg_route(name: &str, cluster: &str) -> Route {
    Route {
        name: name.into(),
        r#match: Some(RouteMatch {
            path_specifier: Some(route_match::PathSpecifier::Prefix("/".into())),
            ..Default::default()
        }),
        action: Some(route::Action::Route(RouteAction {
            cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(cluster.into())),
            ..Default::default()
        })),
        ..Default::default()
    }
}

#[tokio::test]
async fn route_gets_vip_host_rewrite_only_with_our_backends() {
    let server = start().await;
    let mut client = server.client().await;
    let route = eg_route("httproute/default/web/rule/0/match/0/www_example_com", "httproute/default/web/rule/0");
    let ours = client
        .post_route_modify(PostRouteModifyRequest {
            route: Some(route.clone()),
            post_route_context: Some(PostRouteExtensionContext {
                extension_resources: vec![ext(&web_service_json())],
                hostnames: vec!["www.example.com".into()],
                extension_policies: vec![],
            }),
        })
        .await
        .expect("calling PostRouteModify with our extension resource")
        .into_inner()
        .route
        .unwrap_or_default();
    match &ours.action {
        Some(route::Action::Route(a)) => assert_eq!(
            a.host_rewrite_specifier,
            Some(route_action::HostRewriteSpecifier::HostRewriteLiteral("web-service.tail8eff9.ts.net".into()))
        ),
        other => panic!("{other:?}"),
    }
    let theirs = client
        .post_route_modify(PostRouteModifyRequest {
            route: Some(route.clone()),
            post_route_context: Some(PostRouteExtensionContext::default()),
        })
        .await
        .expect("calling PostRouteModify without extension resources")
        .into_inner()
        .route
        .unwrap_or_default();
    assert_eq!(theirs.encode_to_vec(), route.encode_to_vec());
    server.stop().await;
}

fn route_config(name: &str, routes: Vec<Route>) -> RouteConfiguration {
    RouteConfiguration {
        name: name.into(),
        virtual_hosts: vec![VirtualHost {
            name: format!("{name}/www_example_com"),
            domains: vec!["www.example.com".into()],
            routes,
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn translate_request() -> PostTranslateModifyRequest {
    PostTranslateModifyRequest {
        post_translate_context: Some(PostTranslateExtensionContext::default()),
        clusters: vec![
            eg_cluster("httproute/default/site/rule/0"),
            eg_cluster("httproute/other/api/rule/0"),
            Cluster { name: "prometheus_stats".into(), ..Default::default() },
        ],
        secrets: vec![Secret { name: "default/eg-tls".into(), ..Default::default() }],
        listeners: vec![Listener { name: "default/eg/http".into(), ..Default::default() }],
        routes: vec![
            route_config(
                "default/eg/http",
                vec![eg_route("httproute/default/site/rule/0/match/0", "httproute/default/site/rule/0")],
            ),
            route_config(
                "other/gw/http",
                vec![eg_route("httproute/other/api/rule/0/match/0", "httproute/other/api/rule/0")],
            ),
        ],
    }
}

#[tokio::test]
async fn translate_adds_gateway_routes_and_clusters_and_is_idempotent() {
    let server = start().await;
    let mut client = server.client().await;
    let req = translate_request();
    let resp = client.post_translate_modify(req.clone()).await.expect("calling PostTranslateModify").into_inner();

    // Everything received comes back, unrelated resources byte-identical and in order.
    for (i, c) in req.clusters.iter().enumerate() {
        assert_eq!(resp.clusters[i].encode_to_vec(), c.encode_to_vec(), "cluster {}", c.name);
    }
    assert_eq!(resp.secrets, req.secrets);
    assert_eq!(resp.listeners, req.listeners);
    assert_eq!(resp.routes[1].encode_to_vec(), req.routes[1].encode_to_vec(), "another Gateway's routes");

    // Plus ours.
    let names: Vec<&str> = resp.clusters.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names.len(), 4);
    assert_eq!(names[3], "tailscale/default/web-service");
    let ours = &resp.clusters[3];
    assert_eq!(
        ours.cluster_discovery_type,
        Some(cluster::ClusterDiscoveryType::Type(cluster::DiscoveryType::StrictDns as i32))
    );
    assert_eq!(endpoints_of(ours.load_assignment.as_ref().unwrap_or(&Default::default())).len(), 3);
    let vh = &resp.routes[0].virtual_hosts[0];
    assert_eq!(vh.routes.len(), 2);
    assert_eq!(vh.routes[1], req.routes[0].virtual_hosts[0].routes[0], "Envoy Gateway's route stays, after ours");
    let r = &vh.routes[0];
    assert_eq!(r.name, "tailscale/default/tailnet-gw/web-service");
    assert_eq!(
        r.r#match.as_ref().and_then(|m| m.path_specifier.clone()),
        Some(route_match::PathSpecifier::Prefix("/tailscale/web-service/".into()))
    );
    match &r.action {
        Some(route::Action::Route(a)) => {
            assert_eq!(a.cluster_specifier, Some(route_action::ClusterSpecifier::Cluster(ours.name.clone())));
            assert_eq!(a.prefix_rewrite, "/");
        }
        other => panic!("{other:?}"),
    }

    // Running on its own output changes nothing.
    let again = client
        .post_translate_modify(PostTranslateModifyRequest {
            post_translate_context: None,
            clusters: resp.clusters.clone(),
            secrets: resp.secrets.clone(),
            listeners: resp.listeners.clone(),
            routes: resp.routes.clone(),
        })
        .await
        .expect("calling PostTranslateModify on its own output")
        .into_inner();
    assert_eq!(again.encode_to_vec(), resp.encode_to_vec());
    let mut unique: Vec<&str> = again.clusters.iter().map(|c| c.name.as_str()).collect();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), again.clusters.len(), "no duplicate cluster names");
    server.stop().await;
}

#[tokio::test]
async fn pass_through_hooks_return_their_input() {
    let server = start().await;
    let mut client = server.client().await;
    let vh = route_config("default/eg/http", vec![eg_route("r", "c")]).virtual_hosts.remove(0);
    let got = client
        .post_virtual_host_modify(PostVirtualHostModifyRequest {
            virtual_host: Some(vh.clone()),
            post_virtual_host_context: None,
        })
        .await
        .expect("calling PostVirtualHostModify")
        .into_inner();
    assert_eq!(got.virtual_host, Some(vh));
    let listener = Listener { name: "default/eg/http".into(), ..Default::default() };
    let got = client
        .post_http_listener_modify(PostHttpListenerModifyRequest {
            listener: Some(listener.clone()),
            post_listener_context: None,
        })
        .await
        .expect("calling PostHTTPListenerModify")
        .into_inner();
    assert_eq!(got.listener, Some(listener));
    let la = ClusterLoadAssignment { cluster_name: "httproute/default/site/rule/0".into(), ..Default::default() };
    let got = client
        .post_endpoints_modify(PostEndpointsModifyRequest {
            load_assignment: Some(la.clone()),
            post_endpoints_context: None,
        })
        .await
        .expect("calling PostEndpointsModify")
        .into_inner();
    assert_eq!(got.load_assignment, Some(la));
    for hook in ["PostVirtualHostModify", "PostHTTPListenerModify", "PostEndpointsModify"] {
        assert_eq!(server.metrics.calls(hook), 1, "{hook}");
    }
    server.stop().await;
}

#[tokio::test]
async fn large_translations_fit_the_default_message_size() {
    let server = start().await;
    let mut client = server.client().await;
    let mut req = translate_request();
    // ~6 MiB, above gRPC's usual 4 MiB default.
    let long = "x".repeat(1000);
    req.clusters
        .extend((0..6000).map(|i| Cluster { name: format!("httproute/bulk/{i}/{long}"), ..Default::default() }));
    assert!(req.encoded_len() > 6_000_000);
    let resp = client
        .post_translate_modify(req.clone())
        .await
        .expect("calling PostTranslateModify with a request over 6 MB")
        .into_inner();
    assert_eq!(resp.clusters.len(), req.clusters.len() + 1);
    server.stop().await;
}

#[tokio::test]
async fn health_reports_serving_once_the_cache_is_synced() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let cache = Cache::new(10);
    let server = start_with(cache.clone(), None).await;
    let channel = Channel::from_shared(format!("http://{}", server.addr))
        .expect("parsing the channel address")
        .connect()
        .await
        .expect("connecting to the health service");
    let mut health = HealthClient::new(channel);
    let status = |h: &mut HealthClient<Channel>| {
        let mut h = h.clone();
        async move {
            h.check(HealthCheckRequest { service: SERVICE_NAME.into() })
                .await
                .expect("calling the health check")
                .into_inner()
                .status
        }
    };
    assert_eq!(status(&mut health).await, ServingStatus::NotServing as i32);
    for kind in Kind::ALL {
        cache.mark_synced(kind);
    }
    let mut serving = false;
    for _ in 0..50 {
        if status(&mut health).await == ServingStatus::Serving as i32 {
            serving = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(serving, "health never reported SERVING after sync");
    server.stop().await;
}

/// A tonic channel to the server over TLS, trusting `ca`, with an optional client certificate.
async fn tls_channel(
    addr: SocketAddr,
    ca: &tailscale_gateway::pki::Ca,
    client: Option<&tailscale_gateway::pki::CertPair>,
) -> Result<Channel, tonic::transport::Error> {
    use tonic::transport::{Certificate, ClientTlsConfig, Identity};
    let mut tls =
        ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&ca.pair().cert_pem)).domain_name("localhost");
    if let Some(pair) = client {
        tls = tls.identity(Identity::from_pem(&pair.cert_pem, &pair.key_pem));
    }
    Channel::from_shared(format!("https://127.0.0.1:{}", addr.port()))
        .expect("parsing the channel address")
        .tls_config(tls)?
        .connect()
        .await
}

/// PostClusterModify for the web service: Ok when it resolves, the gRPC error otherwise.
async fn modify_web(channel: Channel) -> Result<usize, tonic::Status> {
    let resp = EnvoyGatewayExtensionClient::new(channel)
        .post_cluster_modify(cluster_request(
            eg_cluster("httproute/default/web/rule/0"),
            vec![ext(&web_service_json())],
        ))
        .await?
        .into_inner();
    Ok(resp.cluster.and_then(|c| c.load_assignment).map_or(0, |l| l.endpoints.len()))
}

/// The serving certificate a new TLS connection gets (ALPN h2, as gRPC clients offer).
async fn served_cert(addr: SocketAddr, ca: &tailscale_gateway::pki::Ca) -> Vec<u8> {
    use rustls::pki_types::ServerName;
    let mut cfg = std::sync::Arc::unwrap_or_clone(util::client_config(&[&ca.pair().cert_pem], None));
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connecting to the server");
    let name = ServerName::try_from("localhost").expect("parsing the server name localhost");
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
        .connect(name, tcp)
        .await
        .expect("completing the TLS handshake");
    let (_, session) = tls.get_ref();
    assert_eq!(session.alpn_protocol(), Some(&b"h2"[..]), "gRPC needs HTTP/2 by ALPN");
    session.peer_certificates().and_then(|c| c.first()).map(|c| c.to_vec()).unwrap_or_default()
}

fn der(pem: &str) -> Vec<u8> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    CertificateDer::from_pem_slice(pem.as_bytes()).expect("parsing the certificate PEM").to_vec()
}

#[tokio::test]
async fn serves_over_tls_and_picks_up_a_rotated_certificate() {
    use tailscale_gateway::pki::Ca;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().expect("creating a temporary directory");
    let ca = Ca::generate("xds test ca").expect("generating the xDS test CA");
    let first = ca.issue_server(&["localhost".to_string()]).expect("issuing the first serving certificate");
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::write(&cert, &first.cert_pem).expect("writing tls.crt");
    std::fs::write(&key, &first.key_pem).expect("writing tls.key");
    let cache = Cache::new(10);
    fill_cache(&cache);
    let files = TlsFiles { reload_interval: Duration::from_millis(50), ..TlsFiles::new(&cert, &key) };
    let server = start_with(cache, Some(files)).await;
    assert_eq!(served_cert(server.addr, &ca).await, der(&first.cert_pem));
    let open = tls_channel(server.addr, &ca, None).await.expect("opening a TLS channel");
    assert_eq!(modify_web(open.clone()).await.expect("modifying the web cluster"), 3);

    // Rotated in place, key first (a reader may see a half-updated pair and must keep the old one).
    let second = ca.issue_server(&["localhost".to_string()]).expect("issuing the second serving certificate");
    std::fs::write(&key, &second.key_pem).expect("writing the new tls.key");
    std::fs::write(&cert, &second.cert_pem).expect("writing the new tls.crt");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while served_cert(server.addr, &ca).await != der(&second.cert_pem) {
        assert!(tokio::time::Instant::now() < deadline, "the rotated certificate was never served");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    // The connection opened before the rotation keeps working, and new ones work too.
    assert_eq!(
        modify_web(open).await.expect("modifying the web cluster over the connection opened before the rotation"),
        3
    );
    let fresh = tls_channel(server.addr, &ca, None).await.expect("opening a TLS channel after the rotation");
    assert_eq!(modify_web(fresh).await.expect("modifying the web cluster over a fresh connection"), 3);
    server.stop().await;
}

#[tokio::test]
async fn with_a_client_ca_only_clients_it_signed_get_in_and_the_ca_reloads() {
    use tailscale_gateway::pki::Ca;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().expect("creating a temporary directory");
    let ca = Ca::generate("xds test ca").expect("generating the xDS test CA");
    let clients = Ca::generate("envoy gateway clients").expect("generating the client CA");
    let stranger = Ca::generate("someone else").expect("generating a stranger CA");
    let pair = ca.issue_server(&["localhost".to_string()]).expect("issuing the serving certificate");
    let (cert, key, client_ca) = (dir.path().join("tls.crt"), dir.path().join("tls.key"), dir.path().join("ca.crt"));
    std::fs::write(&cert, &pair.cert_pem).expect("writing tls.crt");
    std::fs::write(&key, &pair.key_pem).expect("writing tls.key");
    std::fs::write(&client_ca, &clients.pair().cert_pem).expect("writing the client CA");
    let cache = Cache::new(10);
    fill_cache(&cache);
    let files = TlsFiles {
        client_ca: Some(client_ca.clone()),
        reload_interval: Duration::from_millis(50),
        ..TlsFiles::new(&cert, &key)
    };
    let server = start_with(cache, Some(files)).await;

    let envoy_gateway =
        clients.issue_client("envoy-gateway", &[]).expect("issuing the envoy-gateway client certificate");
    let ok = tls_channel(server.addr, &ca, Some(&envoy_gateway))
        .await
        .expect("opening a TLS channel with the client certificate");
    assert_eq!(modify_web(ok).await.expect("modifying the web cluster"), 3);

    // No certificate, or one from another CA: the handshake or the first call fails.
    let forged =
        stranger.issue_client("envoy-gateway", &[]).expect("issuing a forged client certificate from a stranger CA");
    for client in [None, Some(&forged)] {
        let refused = match tls_channel(server.addr, &ca, client).await {
            Err(_) => true,
            Ok(channel) => modify_web(channel).await.is_err(),
        };
        assert!(refused, "a client without a certificate from the client CA got in");
    }
    // The server is still serving after refusing them.
    let again =
        tls_channel(server.addr, &ca, Some(&envoy_gateway)).await.expect("opening a TLS channel after the refusals");
    assert_eq!(modify_web(again.clone()).await.expect("modifying the web cluster after the refusals"), 3);

    // The client CA rotates in place: its clients get in without a restart, the old CA's do not,
    // and a connection made before the rotation keeps working.
    let refused = |client: tailscale_gateway::pki::CertPair| {
        let ca = &ca;
        async move {
            match tls_channel(server.addr, ca, Some(&client)).await {
                Err(_) => true,
                Ok(channel) => modify_web(channel).await.is_err(),
            }
        }
    };
    std::fs::write(&client_ca, "half-written").expect("writing a half-written client CA");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!refused(envoy_gateway.clone()).await, "an unusable CA file replaced the bundle in use");
    std::fs::write(&client_ca, &stranger.pair().cert_pem).expect("replacing the client CA with the stranger's");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while refused(forged.clone()).await {
        assert!(tokio::time::Instant::now() < deadline, "the rotated client CA was never used");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(refused(envoy_gateway.clone()).await, "a client of the replaced CA still got in");
    assert_eq!(
        modify_web(again).await.expect("modifying the web cluster over the connection opened before the CA change"),
        3
    );
    server.stop().await;
}

fn yaml_docs(file: &str) -> Vec<Value> {
    let path = format!("{}/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    text.split("\n---\n")
        .map(|doc| serde_saphyr::from_str::<Value>(doc).unwrap_or_else(|e| panic!("{path}: {e}")))
        .collect()
}

#[test]
fn envoy_gateway_example_matches_what_the_server_serves() {
    let cm = &yaml_docs("examples/envoy-gateway/envoy-gateway-config.yaml")[0];
    let inner = cm.pointer("/data/envoy-gateway.yaml").and_then(Value::as_str).unwrap_or_else(|| panic!("no config"));
    let eg: Value = serde_saphyr::from_str(inner).expect("parsing the inner envoy-gateway.yaml");
    let em = eg.get("extensionManager").unwrap_or_else(|| panic!("no extensionManager"));
    let kinds: Vec<&str> = em["backendResources"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["group"] == "gateway.tailscale.com" && r["version"] == "v1alpha1")
        .filter_map(|r| r["kind"].as_str())
        .collect();
    assert_eq!(kinds, vec!["TailscaleServices", "TailscaleEndpoints"]);
    let hooks: Vec<&str> = em
        .pointer("/hooks/xdsTranslator/post")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    for h in ["Route", "VirtualHost", "HTTPListener", "Translation", "Cluster"] {
        assert!(hooks.contains(&h), "hook {h} missing");
    }
    assert_eq!(em.pointer("/hooks/xdsTranslator/translation/route/includeAll"), Some(&json!(true)));
    let port = em.pointer("/service/fqdn/port").and_then(Value::as_u64);
    assert_eq!(port, Some(u64::from(XdsOptions::default().addr.port())));
    let host = em.pointer("/service/fqdn/hostname").and_then(Value::as_str).unwrap_or_default();
    // The Service Envoy Gateway dials is the install's own (deploy/), not a copy.
    let svc = &yaml_docs("deploy/xds-service.yaml")[0];
    let svc_host = format!(
        "{}.{}.svc.cluster.local",
        svc.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default(),
        svc.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or_default()
    );
    assert_eq!(host, svc_host, "extensionManager points at the example Service");
    let rbac = yaml_docs("examples/envoy-gateway/rbac.yaml");
    let resources = rbac[0].pointer("/rules/0/resources").cloned().unwrap_or_default();
    assert_eq!(resources, json!(["tailscaleservices", "tailscaleendpoints", "tailscaleroutepolicies"]));
    // Route policies: Envoy Gateway watches them (and translates again on a change).
    let policies: Vec<&str> = em
        .pointer("/policyResources")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|r| r["group"] == "gateway.tailscale.com" && r["version"] == "v1alpha1")
        .filter_map(|r| r["kind"].as_str())
        .collect();
    assert_eq!(policies, vec!["TailscaleRoutePolicy"]);
    let routes = yaml_docs("examples/envoy-gateway/httproute.yaml");
    assert_eq!(routes[0].pointer("/spec/rules/0/backendRefs/0/kind"), Some(&json!("TailscaleServices")));
    assert_eq!(routes[0].pointer("/spec/rules/0/backendRefs/0/group"), Some(&json!("gateway.tailscale.com")));
}

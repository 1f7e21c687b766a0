//! The extension's decoded-size estimate (`xds::limits::decoded_size`) against what prost really
//! allocates: an upper bound for every shape of call, hostile or not, and close enough for Envoy
//! Gateway's real calls that `--xds-max-decoded-size` does not refuse them. One test in its own
//! binary, since it counts the process's allocations.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
use envoy_types::pb::envoy::config::core::v3::{HealthCheck, Metadata};
use envoy_types::pb::envoy::config::route::v3::{
    RetryPolicy, Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost, route, route_action, route_match,
};
use envoy_types::pb::google::protobuf::{Duration as PbDuration, Struct, UInt32Value, Value, value};
use prost::Message;
use tailscale_gateway::xds::limits::decoded_size;
use tailscale_gateway::xds::pb::{PostClusterModifyRequest, PostTranslateModifyRequest};

/// Counts live heap bytes and their peak.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is passed on to the system allocator unchanged; only counters are added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        PEAK.fetch_max(live, Ordering::Relaxed);
        // SAFETY: the caller's layout, as GlobalAlloc::alloc requires.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: ptr came from alloc/realloc with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let live = LIVE.fetch_add(new_size, Ordering::Relaxed) + new_size;
        PEAK.fetch_max(live, Ordering::Relaxed);
        // SAFETY: as GlobalAlloc::realloc requires, passed on.
        let out = unsafe { System.realloc(ptr, layout, new_size) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        out
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The peak heap bytes decoding `wire` as `M` takes, with the decoded message alive at the end.
fn decode_peak<M: Message + Default>(wire: &[u8]) -> usize {
    let before = LIVE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let decoded = M::decode(wire).expect("decoding the request");
    let peak = PEAK.load(Ordering::Relaxed) - before;
    drop(decoded);
    peak
}

fn eg_cluster(i: usize) -> Cluster {
    let name = format!("httproute/ns-{}/route-{i}/rule/0", i % 20);
    Cluster {
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(cluster::DiscoveryType::Eds as i32)),
        eds_cluster_config: Some(cluster::EdsClusterConfig { service_name: name.clone(), eds_config: None }),
        name,
        connect_timeout: Some(PbDuration { seconds: 10, nanos: 0 }),
        lb_policy: cluster::LbPolicy::LeastRequest as i32,
        per_connection_buffer_limit_bytes: Some(UInt32Value { value: 32768 }),
        ..Cluster::default()
    }
}

fn eg_route(l: usize, r: usize) -> Route {
    Route {
        name: format!("httproute/ns/route-{l}-{r}/rule/0/match/0"),
        r#match: Some(RouteMatch {
            path_specifier: Some(route_match::PathSpecifier::Prefix(format!("/app-{r}/"))),
            ..RouteMatch::default()
        }),
        action: Some(route::Action::Route(RouteAction {
            cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(format!("httproute/ns/route-{r}/rule/0"))),
            retry_policy: Some(RetryPolicy {
                retry_on: "5xx".into(),
                retriable_status_codes: vec![502, 503],
                ..RetryPolicy::default()
            }),
            ..RouteAction::default()
        })),
        ..Route::default()
    }
}

/// A PostTranslateModify shaped like Envoy Gateway's: 1,000 clusters, 10 route configurations of
/// 100 routes.
fn realistic() -> PostTranslateModifyRequest {
    PostTranslateModifyRequest {
        clusters: (0..1000).map(eg_cluster).collect(),
        routes: (0..10)
            .map(|l| RouteConfiguration {
                name: format!("gw/other-{l}/http"),
                virtual_hosts: vec![VirtualHost {
                    name: format!("vh-{l}"),
                    domains: vec![format!("host-{l}.example.com")],
                    routes: (0..100).map(|r| eg_route(l, r)).collect(),
                    ..VirtualHost::default()
                }],
                ..RouteConfiguration::default()
            })
            .collect(),
        ..PostTranslateModifyRequest::default()
    }
}

fn cluster_call(cluster: Cluster) -> Vec<u8> {
    PostClusterModifyRequest { cluster: Some(cluster), post_cluster_context: None }.encode_to_vec()
}

#[test]
fn the_estimate_bounds_what_decoding_allocates() {
    let metadata = Metadata {
        filter_metadata: (0..20_000)
            .map(|i| {
                let fields = [("k".to_string(), Value { kind: Some(value::Kind::StringValue(String::new())) })];
                (format!("{i}"), Struct { fields: fields.into_iter().collect() })
            })
            .collect(),
        ..Metadata::default()
    };
    let cases: Vec<(&str, &str, Vec<u8>)> = vec![
        ("Envoy Gateway's shape: 1,000 clusters, 1,000 routes", "PostTranslateModify", realistic().encode_to_vec()),
        (
            "100,000 empty health checks",
            "PostClusterModify",
            cluster_call(Cluster { health_checks: vec![HealthCheck::default(); 100_000], ..Cluster::default() }),
        ),
        (
            "20,000 metadata entries",
            "PostClusterModify",
            cluster_call(Cluster { metadata: Some(metadata), ..Cluster::default() }),
        ),
        (
            "200,000 empty domains",
            "PostTranslateModify",
            PostTranslateModifyRequest {
                routes: vec![RouteConfiguration {
                    virtual_hosts: vec![VirtualHost {
                        domains: vec![String::new(); 200_000],
                        ..VirtualHost::default()
                    }],
                    ..RouteConfiguration::default()
                }],
                ..PostTranslateModifyRequest::default()
            }
            .encode_to_vec(),
        ),
        (
            "one route retrying on 1,000,000 status codes",
            "PostTranslateModify",
            PostTranslateModifyRequest {
                routes: vec![RouteConfiguration {
                    virtual_hosts: vec![VirtualHost {
                        routes: vec![Route {
                            action: Some(route::Action::Route(RouteAction {
                                retry_policy: Some(RetryPolicy {
                                    retriable_status_codes: vec![1; 1_000_000],
                                    ..RetryPolicy::default()
                                }),
                                ..RouteAction::default()
                            })),
                            ..Route::default()
                        }],
                        ..VirtualHost::default()
                    }],
                    ..RouteConfiguration::default()
                }],
                ..PostTranslateModifyRequest::default()
            }
            .encode_to_vec(),
        ),
    ];
    for (what, method, wire) in cases {
        let estimate = decoded_size(method, &wire, usize::MAX).expect("a request with a schema");
        let peak = match method {
            "PostTranslateModify" => decode_peak::<PostTranslateModifyRequest>(&wire),
            _ => decode_peak::<PostClusterModifyRequest>(&wire),
        };
        eprintln!(
            "{what}: {} bytes on the wire, {peak} allocated decoding, estimate {estimate} ({:.2} × allocated)",
            wire.len(),
            estimate as f64 / peak as f64
        );
        assert!(estimate >= peak, "{what}: estimate {estimate} below the {peak} bytes decoding allocated");
        assert!(estimate <= 4 * peak, "{what}: estimate {estimate} more than 4 × the {peak} bytes decoding allocated");
    }
}

//! Pure builder: fills an Envoy cluster from resolved [`Backend`]s.
//!
//! Envoy Gateway hands us an empty cluster for a custom backendRef (usually EDS with nothing
//! behind it). We turn it into a STRICT_DNS cluster over the proxies' Service DNS names, which
//! stay stable while devices come and go: Envoy Gateway re-translates a backend resource only when
//! its generation changes, so device IPs would go stale. Failover uses priorities:
//! healthy local, then healthy remote, then unhealthy local, then unhealthy remote, with empty
//! levels left out so priorities stay contiguous from 0 as Envoy expects.

use std::collections::BTreeMap;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
use envoy_types::pb::envoy::config::core::v3::{
    Address, HealthCheck, Locality, SocketAddress, address, health_check, socket_address,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
};
use envoy_types::pb::google::protobuf::{Duration as PbDuration, UInt32Value};

use super::backend::{Backend, HealthCheckSettings, Target};

/// Default connect timeout for clusters that arrive without one.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Failover tier of a target, in priority order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Tier {
    /// Devices online, same region: priority 0.
    HealthyLocal,
    /// Devices online, another region: priority 1.
    HealthyRemote,
    /// No device online, same region: priority 2.
    UnhealthyLocal,
    /// No device online, another region: last resort.
    UnhealthyRemote,
}

impl Tier {
    /// The tier of a target as of now.
    pub fn of(t: &Target) -> Self {
        match (t.healthy > 0, t.remote) {
            (true, false) => Tier::HealthyLocal,
            (true, true) => Tier::HealthyRemote,
            (false, false) => Tier::UnhealthyLocal,
            (false, true) => Tier::UnhealthyRemote,
        }
    }
}

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

fn lb_endpoint(host: &str, port: u32) -> LbEndpoint {
    LbEndpoint {
        host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
            address: Some(Address {
                address: Some(address::Address::SocketAddress(SocketAddress {
                    address: host.to_string(),
                    port_specifier: Some(socket_address::PortSpecifier::PortValue(port)),
                    ..Default::default()
                })),
            }),
            hostname: host.to_string(),
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// The load assignment of a cluster over `backends`: one locality per target, priorities by
/// [`Tier`], the same host:port listed once.
pub fn load_assignment(cluster_name: &str, backends: &[Backend]) -> ClusterLoadAssignment {
    let mut by_tier: BTreeMap<Tier, Vec<(&Target, u32)>> = BTreeMap::new();
    let mut seen = std::collections::BTreeSet::new();
    for b in backends {
        for t in &b.targets {
            if seen.insert((t.host.as_str(), b.port)) {
                by_tier.entry(Tier::of(t)).or_default().push((t, b.port));
            }
        }
    }
    let endpoints = by_tier
        .into_values()
        .enumerate()
        .flat_map(|(priority, targets)| {
            targets.into_iter().map(move |(t, port)| LocalityLbEndpoints {
                locality: Some(Locality {
                    region: t.region.clone().unwrap_or_default(),
                    sub_zone: t.endpoints.clone(),
                    ..Default::default()
                }),
                lb_endpoints: vec![lb_endpoint(&t.host, port)],
                priority: priority as u32,
                ..Default::default()
            })
        })
        .collect();
    ClusterLoadAssignment { cluster_name: cluster_name.to_string(), endpoints, ..Default::default() }
}

/// Turns `cluster` into a working cluster for `backends` (the first one's load balancing and
/// health check settings win). Leaves the name and everything Envoy Gateway set that we do not
/// own (circuit breakers, TLS, buffer limits, its connect timeout) as they were.
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
    cluster.load_assignment = Some(assignment);
    cluster.lb_policy = lb_policy(&first.strategy) as i32;
    // A typed policy would override lb_policy.
    cluster.load_balancing_policy = None;
    if let Some(hc) = &first.health_check {
        cluster.health_checks = vec![health_check(hc, first.vip_dns_name.as_deref())];
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::{Kind, ObjectKey};

    fn target(name: &str, healthy: usize, remote: bool) -> Target {
        Target {
            endpoints: name.into(),
            host: format!("{name}.default.svc.cluster.local"),
            region: Some(if remote { "west" } else { "east" }.into()),
            remote,
            devices: 2,
            healthy,
        }
    }

    fn backend(targets: Vec<Target>) -> Backend {
        Backend {
            kind: Kind::Services,
            key: ObjectKey::new("default", "web"),
            port: 443,
            targets,
            vip_dns_name: Some("web.tail8eff9.ts.net".into()),
            strategy: "maglev".into(),
            health_check: Some(HealthCheckSettings {
                path: "/health".into(),
                interval: Duration::from_secs(10),
                timeout: Duration::from_secs(5),
                unhealthy_threshold: 3,
                healthy_threshold: 2,
            }),
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
    fn priorities_follow_failover_order_and_stay_contiguous() {
        let b = backend(vec![target("a-down", 0, false), target("b-remote", 1, true), target("c-up", 2, false)]);
        let mut c = Cluster { name: "httproute/default/web/rule/0".into(), ..Default::default() };
        c.eds_cluster_config = Some(Default::default());
        fill_cluster(&mut c, std::slice::from_ref(&b), DEFAULT_CONNECT_TIMEOUT);
        assert_eq!(priorities(&c), vec![("c-up".into(), 0), ("b-remote".into(), 1), ("a-down".into(), 2)]);
        assert_eq!(
            c.cluster_discovery_type,
            Some(cluster::ClusterDiscoveryType::Type(cluster::DiscoveryType::StrictDns as i32))
        );
        assert!(c.eds_cluster_config.is_none());
        assert_eq!(c.lb_policy, cluster::LbPolicy::Maglev as i32);
        assert_eq!(c.connect_timeout, Some(PbDuration { seconds: 5, nanos: 0 }));
        assert_eq!(c.health_checks.len(), 1);

        // Only unhealthy local ones: they become priority 0.
        let mut c2 = Cluster::default();
        fill_cluster(&mut c2, &[backend(vec![target("a-down", 0, false)])], DEFAULT_CONNECT_TIMEOUT);
        assert_eq!(priorities(&c2), vec![("a-down".into(), 0)]);

        // Refilling is idempotent.
        let before = c.clone();
        fill_cluster(&mut c, &[b], DEFAULT_CONNECT_TIMEOUT);
        assert_eq!(c, before);
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
        for s in crate::core::validate::STRATEGIES {
            assert_ne!(lb_policy(s) == cluster::LbPolicy::RoundRobin, *s != "round-robin", "{s} is mapped");
        }
    }
}

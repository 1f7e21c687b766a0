//! What a TailscaleServices or TailscaleEndpoints used as a route backend resolves to right now:
//! the proxy Services to send traffic to, their health and region, the port, the VIP DNS name and
//! the load-balancing settings. Resolution reads the shared cache; turning a [`Backend`] into an
//! Envoy cluster is the pure job of [`crate::envoy`].

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::api::{TailscaleEndpoints, TailscaleServices};
use crate::dataplane::{self, BackendKind, ConnectionType};
use crate::envoy::{Backend, HealthCheckSettings, Path, Upstream};
use crate::index::Index;
use crate::routes::RouteBackend;
use crate::selector::Selector;
use crate::validate::{DEFAULT_HEALTH_INTERVAL, STRATEGIES};
use crate::{FieldPath, Kind, ObjectKey, Resource, duration, names, resource::ParseError};

/// Labels read for the region of a TailscaleEndpoints, in order.
pub const REGION_LABELS: &[&str] = &["topology.kubernetes.io/region", "region"];
/// Default health-check timeout.
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(5);
/// Default health-check path.
pub const DEFAULT_HEALTH_PATH: &str = "/health";
/// Default failed checks before a backend is unhealthy.
pub const DEFAULT_UNHEALTHY_THRESHOLD: u32 = 3;
/// Default passed checks before a backend is healthy again.
pub const DEFAULT_HEALTHY_THRESHOLD: u32 = 2;

pub use crate::dataplane::Placement;

/// Why an extension resource was not turned into a backend.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum BadResource {
    /// The bytes are not a JSON object.
    #[error("not a JSON object: {0}")]
    Unparseable(String),
    /// Some other group's object, or a kind of ours that is not a backend.
    #[error("{0} is not a TailscaleServices or TailscaleEndpoints")]
    Unknown(String),
    /// One of ours that does not deserialize.
    #[error("invalid {kind}: {detail}")]
    Invalid {
        /// Its kind.
        kind: String,
        /// What is wrong.
        detail: String,
    },
}

impl BadResource {
    /// Short label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            BadResource::Unparseable(_) => "unparseable",
            BadResource::Unknown(_) => "unknown_kind",
            BadResource::Invalid { .. } => "invalid",
        }
    }
}

/// A backend object as Envoy Gateway sent it.
#[derive(Clone, Debug, PartialEq)]
pub enum BackendObject {
    /// A TailscaleServices.
    Services(Box<TailscaleServices>),
    /// A TailscaleEndpoints.
    Endpoints(Box<TailscaleEndpoints>),
}

/// A stable identity of an object's bytes for "log once per object": kind, namespace, name and
/// resourceVersion when the bytes are JSON, else a hash of the bytes.
pub fn identity(bytes: &[u8]) -> String {
    if let Ok(v) = serde_json::from_slice::<Value>(bytes) {
        let s = |p: &str| v.pointer(p).and_then(Value::as_str).unwrap_or_default().to_string();
        if v.is_object() {
            return format!(
                "{}/{}/{}@{}",
                s("/kind"),
                s("/metadata/namespace"),
                s("/metadata/name"),
                s("/metadata/resourceVersion")
            );
        }
    }
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    format!("bytes:{:016x}", h.finish())
}

/// Parses `ExtensionResource.unstructured_bytes` into one of our backend kinds.
pub fn parse_backend(bytes: &[u8]) -> Result<BackendObject, BadResource> {
    let value: Value = serde_json::from_slice(bytes).map_err(|e| BadResource::Unparseable(e.to_string()))?;
    if !value.is_object() {
        return Err(BadResource::Unparseable("top-level value is not an object".into()));
    }
    match Resource::from_value(value) {
        Ok(Resource::Services(s)) => Ok(BackendObject::Services(Box::new(s))),
        Ok(Resource::Endpoints(e)) => Ok(BackendObject::Endpoints(Box::new(e))),
        Ok(other) => Err(BadResource::Unknown(other.kind().to_string())),
        Err(ParseError::NotOurs { api_version, kind }) => Err(BadResource::Unknown(format!("{api_version}/{kind}"))),
        Err(ParseError::Invalid(e)) => Err(BadResource::Invalid { kind: "object".into(), detail: e.to_string() }),
    }
}

fn region_of(ep: &TailscaleEndpoints) -> Option<String> {
    let labels = ep.metadata.labels.as_ref()?;
    REGION_LABELS.iter().find_map(|k| labels.get(*k)).filter(|r| !r.is_empty()).cloned()
}

fn first_tcp_port(ep: &TailscaleEndpoints) -> Option<u32> {
    ep.spec
        .ports
        .iter()
        .find(|p| p.protocol.as_deref().is_none_or(|pr| pr.eq_ignore_ascii_case("TCP")))
        .and_then(|p| u32::try_from(p.port).ok())
        .filter(|p| (1..=65535).contains(p))
}

/// The stable DNS name of a TailscaleEndpoints' proxy Service.
fn proxy_host(ep: &TailscaleEndpoints, place: &Placement) -> String {
    let namespace = ep.metadata.namespace.as_deref().unwrap_or("default");
    let service = names::proxy_service_name(ep.metadata.name.as_deref().unwrap_or_default());
    format!("{service}.{namespace}.svc.{}", place.cluster_domain)
}

/// The VIP port a backendRef to `svc` is sent to: the port the backendRef asks for when it is one
/// of the VIP's single TCP ports (read from the route, since Envoy Gateway does not send it),
/// else the VIP's first single TCP port.
pub fn backend_port(svc: &TailscaleServices, asked: Option<u16>) -> Option<u16> {
    let ports = dataplane::vip_tcp_ports(svc);
    asked.filter(|p| ports.contains(p)).or_else(|| ports.first().copied())
}

/// The backendRef of the route rule that names `obj`, among `rule` (the rule's backendRefs of
/// our kinds, when the route is known).
pub fn backend_ref<'a>(rule: Option<&'a [RouteBackend]>, kind: Kind, key: &ObjectKey) -> Option<&'a RouteBackend> {
    rule?.iter().find(|r| r.kind == kind.name() && r.name == key.name && r.namespace == key.namespace)
}

/// Priority 0: the Service this cluster publishes on `port` of the VIP, reached directly. A
/// served Gateway is not: that would send Envoy's traffic back into Envoy.
fn direct_upstream(svc: &TailscaleServices, port: u16, place: &Placement) -> Option<Upstream> {
    let entry = svc.spec.serve.iter().find(|s| s.port == i32::from(port))?;
    if BackendKind::of(&entry.backend_ref) != Ok(BackendKind::Service) {
        return None;
    }
    let ns = svc.metadata.namespace.as_deref().unwrap_or("default");
    let address = dataplane::backend_address(&entry.backend_ref, ns, place).ok()?;
    let (host, port) = address.rsplit_once(':')?;
    Some(Upstream {
        name: entry.backend_ref.name.clone(),
        host: host.to_string(),
        port: port.parse().ok()?,
        path: Path::Direct,
        region: place.local_region.clone(),
        tls_sni: None,
    })
}

/// Priority 1: the VIP through each selected egress-capable TailscaleEndpoints, at the match
/// port its proxies forward to the VIP's `port` (the same allocation the reconciler wrote).
fn tailnet_upstreams(
    idx: &Index,
    svc: &TailscaleServices,
    selected: &[Arc<TailscaleEndpoints>],
    port: u16,
    place: &Placement,
) -> Vec<Upstream> {
    let name = svc.metadata.name.clone().unwrap_or_default();
    // A port this cluster serves as HTTPS is HTTPS wherever the VIP is served (one spec, shared).
    let https = svc.spec.serve.iter().any(|s| s.port == i32::from(port) && s.protocol.as_deref() == Some("HTTPS"));
    let sni = https.then(|| idx.vip_dns_name(svc)).flatten();
    let mut out: Vec<Upstream> = selected
        .iter()
        .filter(|ep| ConnectionType::of(ep).egress())
        .filter_map(|ep| {
            let plan = idx.proxy_plan(&ObjectKey::of(&ep.metadata), place)?;
            let match_port = *plan.match_ports.get(&(name.clone(), port))?;
            Some(Upstream {
                name: ep.metadata.name.clone().unwrap_or_default(),
                host: proxy_host(ep, place),
                port: u32::from(match_port),
                path: Path::Tailnet,
                region: region_of(ep),
                tls_sni: sni.clone(),
            })
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

fn health_check(svc: &TailscaleServices) -> Option<HealthCheckSettings> {
    let hc = svc.spec.load_balancing.as_ref()?.health_check.as_ref()?;
    let dur = |v: Option<&str>, default: Duration| {
        v.and_then(|s| duration::parse(s).ok()).filter(|d| *d >= Duration::from_secs(1)).unwrap_or(default)
    };
    let threshold =
        |v: Option<i32>, default: u32| v.and_then(|n| u32::try_from(n).ok()).filter(|n| *n >= 1).unwrap_or(default);
    let default_interval = duration::parse(DEFAULT_HEALTH_INTERVAL).unwrap_or(Duration::from_secs(10));
    Some(HealthCheckSettings {
        path: hc.path.clone().filter(|p| p.starts_with('/')).unwrap_or_else(|| DEFAULT_HEALTH_PATH.into()),
        interval: dur(hc.interval.as_deref(), default_interval),
        timeout: dur(hc.timeout.as_deref(), DEFAULT_HEALTH_TIMEOUT),
        unhealthy_threshold: threshold(hc.unhealthy_threshold, DEFAULT_UNHEALTHY_THRESHOLD),
        healthy_threshold: threshold(hc.healthy_threshold, DEFAULT_HEALTHY_THRESHOLD),
    })
}

fn strategy(svc: &TailscaleServices) -> Option<String> {
    svc.spec.load_balancing.as_ref()?.strategy.clone().filter(|s| STRATEGIES.contains(&s.as_str()))
}

/// The TailscaleEndpoints a TailscaleServices selects: the cache's selection when the cache holds
/// the same spec, else the object's own selector evaluated over the cached endpoints.
fn selected(idx: &Index, svc: &TailscaleServices) -> Vec<Arc<TailscaleEndpoints>> {
    let key = ObjectKey::of(&svc.metadata);
    if idx.services(&key).is_some_and(|c| c.spec == svc.spec) {
        return idx.selected_endpoints(&key).filter_map(|k| idx.endpoints(k).cloned()).collect();
    }
    let Some(selector) = svc
        .spec
        .selector
        .as_ref()
        .and_then(|s| Selector::from_label_selector(s, &FieldPath::new("spec.selector")).ok())
    else {
        return Vec::new();
    };
    let empty = Default::default();
    idx.all_endpoints()
        .filter(|(k, e)| k.namespace == key.namespace && selector.matches(e.metadata.labels.as_ref().unwrap_or(&empty)))
        .map(|(_, e)| e.clone())
        .collect()
}

/// The tailnet of a TailscaleServices: its own, else that of the first endpoints it selects.
pub fn services_tailnet(svc: &TailscaleServices, selected: &[Arc<TailscaleEndpoints>]) -> Option<String> {
    svc.spec.tailnet.clone().or_else(|| selected.first().map(|e| e.spec.tailnet.clone()))
}

/// Resolves a TailscaleServices against the cache: the backend it publishes here (priority 0)
/// and the VIP through the egress proxies it selects (priority 1), on the VIP port `wanted`
/// asks for ([`backend_port`]) and with its weight.
pub fn resolve_services(
    idx: &Index,
    svc: &TailscaleServices,
    place: &Placement,
    wanted: Option<&RouteBackend>,
) -> Backend {
    let selected = selected(idx, svc);
    let mut upstreams = Vec::new();
    if let Some(port) = backend_port(svc, wanted.and_then(|w| w.port)) {
        upstreams.extend(direct_upstream(svc, port, place));
        upstreams.extend(tailnet_upstreams(idx, svc, &selected, port, place));
    }
    Backend {
        kind: Kind::Services,
        key: ObjectKey::of(&svc.metadata),
        upstreams,
        vip_dns_name: idx.vip_dns_name(svc),
        strategy: strategy(svc),
        health_check: health_check(svc),
        weight: wanted.map_or(1, |w| w.weight),
    }
}

/// The egress target of a TailscaleEndpoints a backendRef reaches: the first of its
/// `egressTargets` with the port asked for (else the first target's first port), through its
/// proxies at that port's match port.
fn egress_target_upstream(
    idx: &Index,
    ep: &TailscaleEndpoints,
    place: &Placement,
    asked: Option<u16>,
) -> Option<Upstream> {
    if !ConnectionType::of(ep).egress() {
        return None;
    }
    let targets = &ep.spec.egress_targets;
    let has = |t: &crate::api::EgressTargetSpec, p: u16| t.ports.contains(&i32::from(p));
    let (target, port) = asked
        .and_then(|p| targets.iter().find(|t| has(t, p)).map(|t| (t, p)))
        .or_else(|| targets.first().and_then(|t| Some((t, u16::try_from(*t.ports.first()?).ok()?))))?;
    let plan = idx.proxy_plan(&ObjectKey::of(&ep.metadata), place)?;
    let match_port = *plan.match_ports.get(&(dataplane::own_target_key(&target.name), port))?;
    Some(Upstream {
        name: format!("{}/{}", ep.metadata.name.as_deref().unwrap_or_default(), target.name),
        host: proxy_host(ep, place),
        port: u32::from(match_port),
        path: Path::Tailnet,
        region: region_of(ep),
        tls_sni: None,
    })
}

/// Resolves a TailscaleEndpoints used directly as a backend: with `egressTargets`, the target
/// with the backendRef's port through its egress proxies; else its proxies' Service on the port
/// the backendRef asks for when it is one of the spec's, else its first TCP port.
pub fn resolve_endpoints(
    idx: &Index,
    ep: &TailscaleEndpoints,
    place: &Placement,
    wanted: Option<&RouteBackend>,
) -> Backend {
    if let Some(upstream) = egress_target_upstream(idx, ep, place, wanted.and_then(|w| w.port)) {
        return Backend {
            kind: Kind::Endpoints,
            key: ObjectKey::of(&ep.metadata),
            upstreams: vec![upstream],
            vip_dns_name: None,
            strategy: None,
            health_check: None,
            weight: wanted.map_or(1, |w| w.weight),
        };
    }
    let asked =
        wanted.and_then(|w| w.port).map(u32::from).filter(|p| ep.spec.ports.iter().any(|q| q.port as u32 == *p));
    let upstreams = asked
        .or_else(|| first_tcp_port(ep))
        .map(|port| Upstream {
            name: ep.metadata.name.clone().unwrap_or_default(),
            host: proxy_host(ep, place),
            port,
            path: Path::Direct,
            region: region_of(ep),
            tls_sni: None,
        })
        .into_iter()
        .collect();
    Backend {
        kind: Kind::Endpoints,
        key: ObjectKey::of(&ep.metadata),
        upstreams,
        vip_dns_name: None,
        strategy: None,
        health_check: None,
        weight: wanted.map_or(1, |w| w.weight),
    }
}

/// Resolves a parsed backend object; `rule` is the route rule's backendRefs of our kinds, when the
/// route is known.
pub fn resolve(idx: &Index, obj: &BackendObject, place: &Placement, rule: Option<&[RouteBackend]>) -> Backend {
    match obj {
        BackendObject::Services(s) => {
            let wanted = backend_ref(rule, Kind::Services, &ObjectKey::of(&s.metadata));
            resolve_services(idx, s, place, wanted)
        }
        BackendObject::Endpoints(e) => {
            resolve_endpoints(idx, e, place, backend_ref(rule, Kind::Endpoints, &ObjectKey::of(&e.metadata)))
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::api::API_VERSION;
    use crate::index::Index;

    fn res(v: Value) -> Resource {
        Resource::from_value(v).expect("building the resource")
    }

    fn endpoints(name: &str, region: &str, connection_type: &str) -> Resource {
        res(json!({"apiVersion": API_VERSION, "kind": "TailscaleEndpoints",
            "metadata": {"name": name, "namespace": "default", "labels": {"service-type": "web", "region": region}},
            "spec": {"tailnet": "corp", "proxy": {"connectionType": connection_type}}}))
    }

    fn web_service(status: Value) -> TailscaleServices {
        match res(json!({"apiVersion": API_VERSION, "kind": "TailscaleServices",
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"selector": {"matchLabels": {"service-type": "web"}},
                     "vipService": {"ports": ["udp:53", "tcp:443"]},
                     "serve": [{"port": 443, "protocol": "HTTPS", "backendRef": {"name": "web", "port": 8080}}],
                     "loadBalancing": {"strategy": "least-request", "healthCheck": {"path": "/healthz", "interval": "3s"}}},
            "status": status}))
        {
            Resource::Services(s) => s,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn services_resolve_to_the_direct_backend_then_the_vip_through_egress_proxies() {
        let mut idx = Index::with_event_log(10);
        idx.apply(endpoints("east", "east", "bidirectional"));
        idx.apply(endpoints("west", "west", "ingress"));
        idx.apply(endpoints("wide", "west", "egress"));
        idx.apply(res(json!({"apiVersion": API_VERSION, "kind": "TailscaleTailnet", "metadata": {"name": "corp"},
            "spec": {"oauthSecretRef": {"name": "s"}},
            "status": {"tailnetInfo": {"name": "corp", "magicDNSSuffix": "tail8eff9.ts.net"}}})));
        let web = web_service(json!({"vipService": {"name": "svc:web"}}));
        idx.apply(Resource::Services(web.clone()));
        let place = Placement::default();
        let b = resolve_services(&idx, &web, &place, None);
        assert_eq!(b.vip_dns_name.as_deref(), Some("web.tail8eff9.ts.net"));
        assert_eq!(b.strategy.as_deref(), Some("least-request"));
        let hc = b.health_check.clone().unwrap_or_else(|| panic!("health check"));
        assert_eq!(
            (hc.path.as_str(), hc.interval, hc.timeout),
            ("/healthz", Duration::from_secs(3), DEFAULT_HEALTH_TIMEOUT)
        );
        let match_port = |ep: &str| {
            let plan = idx.proxy_plan(&ObjectKey::new("default", ep), &place).unwrap_or_default();
            u32::from(plan.match_ports[&("web".to_string(), 443)])
        };
        let got: Vec<(&str, String, Path)> =
            b.upstreams.iter().map(|u| (u.name.as_str(), format!("{}:{}", u.host, u.port), u.path)).collect();
        assert_eq!(
            got,
            vec![
                ("web", "web.default.svc.cluster.local:8080".to_string(), Path::Direct),
                ("east", format!("east-svc.default.svc.cluster.local:{}", match_port("east")), Path::Tailnet),
                ("wide", format!("wide-svc.default.svc.cluster.local:{}", match_port("wide")), Path::Tailnet),
            ],
            "ingress-only proxies carry no egress"
        );
    }

    #[test]
    fn bad_bytes_are_classified() {
        assert!(matches!(parse_backend(b"{not json"), Err(BadResource::Unparseable(_))));
        assert!(matches!(parse_backend(b"[1]"), Err(BadResource::Unparseable(_))));
        let pod = br#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p"}}"#;
        assert_eq!(parse_backend(pod).map_err(|e| e.reason()), Err("unknown_kind"));
        let bad = br#"{"apiVersion":"gateway.tailscale.com/v1alpha1","kind":"TailscaleEndpoints","metadata":{"name":"e"},"spec":{"tailnet":5}}"#;
        assert_eq!(parse_backend(bad).map_err(|e| e.reason()), Err("invalid"));
        assert_eq!(identity(pod), "Pod//p@");
        assert!(identity(b"\x00\x01").starts_with("bytes:"));
    }

    #[test]
    fn endpoints_with_egress_targets_reach_the_target_with_the_asked_port() {
        let mut idx = Index::with_event_log(10);
        let ep = res(json!({"apiVersion": API_VERSION, "kind": "TailscaleEndpoints",
            "metadata": {"name": "out", "namespace": "default"},
            "spec": {"tailnet": "corp", "proxy": {"connectionType": "egress"},
                     "egressTargets": [{"name": "db", "fqdn": "db.tail1.ts.net", "ports": [5432]},
                                       {"name": "cache", "ip": "100.64.0.9", "ports": [6379]}]}}));
        idx.apply(ep.clone());
        let Resource::Endpoints(ep) = ep else { panic!("endpoints") };
        let plan = idx.proxy_plan(&ObjectKey::new("default", "out"), &Placement::default()).unwrap_or_default();
        let wanted = RouteBackend {
            kind: "TailscaleEndpoints".into(),
            name: "out".into(),
            namespace: "default".into(),
            port: Some(6379),
            weight: 1,
        };
        let b = resolve_endpoints(&idx, &ep, &Placement::default(), Some(&wanted));
        let u = &b.upstreams[0];
        assert_eq!(
            (u.name.as_str(), u.host.as_str(), u.path),
            ("out/cache", "out-svc.default.svc.cluster.local", Path::Tailnet)
        );
        assert_eq!(u.port, u32::from(plan.match_ports[&("target.cache".to_string(), 6379)]));
        let first = resolve_endpoints(&idx, &ep, &Placement::default(), None);
        assert_eq!(first.upstreams[0].name, "out/db", "no port asked: the first target");
    }

    #[test]
    fn a_service_this_cluster_does_not_publish_goes_through_the_tailnet_only() {
        let mut idx = Index::with_event_log(10);
        idx.apply(endpoints("east", "east", "egress"));
        let mut web = web_service(json!({"vipService": {"name": "svc:web", "dnsName": "web.tail1.ts.net"}}));
        web.spec.serve.clear();
        web.spec.load_balancing = None;
        idx.apply(Resource::Services(web.clone()));
        let b = resolve_services(&idx, &web, &Placement::default(), None);
        assert_eq!(b.upstreams.iter().map(|u| u.path).collect::<Vec<_>>(), vec![Path::Tailnet]);
        assert_eq!(b.strategy, None, "no strategy: Envoy Gateway's policy stays");
        // Not in the cache yet: selected by its own selector, but no match port is allocated.
        let mut other = Index::with_event_log(10);
        other.apply(endpoints("east", "east", "egress"));
        assert!(resolve_services(&other, &web, &Placement::default(), None).upstreams.is_empty());
    }
}

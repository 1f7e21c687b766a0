//! What a TailscaleServices or TailscaleEndpoints used as a route backend resolves to right now:
//! the proxy Services to send traffic to, their health and region, the port, the VIP DNS name and
//! the load-balancing settings. Resolution reads the shared cache; turning a [`Backend`] into an
//! Envoy cluster is the pure job of [`crate::core::envoy`].

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::api::{TailscaleEndpoints, TailscaleServices};
use crate::cache::Index;
use crate::core::envoy::{Backend, HealthCheckSettings, Target};
use crate::core::selector::Selector;
use crate::core::validate::{DEFAULT_HEALTH_INTERVAL, DEFAULT_STRATEGY, STRATEGIES};
use crate::core::views::{self, Device};
use crate::core::{FieldPath, Kind, ObjectKey, Resource, duration, names, resource::ParseError};

/// Labels read for the region of a TailscaleEndpoints, in order.
pub const REGION_LABELS: &[&str] = &["topology.kubernetes.io/region", "region"];
/// Port used when neither the VIP service nor the endpoints name a TCP port.
pub const DEFAULT_PORT: u32 = 80;
/// Default health-check timeout.
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(5);
/// Default health-check path.
pub const DEFAULT_HEALTH_PATH: &str = "/health";
/// Default failed checks before a backend is unhealthy.
pub const DEFAULT_UNHEALTHY_THRESHOLD: u32 = 3;
/// Default passed checks before a backend is healthy again.
pub const DEFAULT_HEALTHY_THRESHOLD: u32 = 2;

/// Where this installation runs, for naming proxy Services and telling local from remote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    /// Kubernetes cluster DNS domain (`cluster.local`).
    pub cluster_domain: String,
    /// Region of the Envoy fleet; endpoints in another region are remote. `None`: all are local.
    pub local_region: Option<String>,
}

impl Default for Placement {
    fn default() -> Self {
        Self { cluster_domain: "cluster.local".into(), local_region: None }
    }
}

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

/// Name of the Service in front of a TailscaleEndpoints' proxies: the one the reconciler creates
/// ([`crate::core::names::proxy_service_name`]).
pub fn proxy_service_name(ep: &TailscaleEndpoints) -> String {
    crate::core::names::proxy_service_name(ep.metadata.name.as_deref().unwrap_or_default())
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

fn vip_tcp_port(svc: &TailscaleServices) -> Option<u32> {
    let vip = svc.spec.vip_service.as_ref()?;
    vip.ports
        .iter()
        .filter_map(|p| names::vip_port(p).ok())
        .find(|p| p.protocol == names::Protocol::Tcp)
        .map(|p| u32::from(p.from))
}

/// The target for one TailscaleEndpoints; `cached` devices are used when the object is the
/// cache's own, else its status is overlaid with live data here.
fn target_of(ep: &TailscaleEndpoints, cached: Option<Vec<Arc<Device>>>, idx: &Index, place: &Placement) -> Target {
    let (devices, healthy) = match cached {
        Some(d) => (d.len(), d.iter().filter(|d| d.online).count()),
        None => {
            let d = views::devices_of(ep, idx.live_devices(&ep.spec.tailnet));
            (d.len(), d.iter().filter(|d| d.online).count())
        }
    };
    let namespace = ep.metadata.namespace.as_deref().unwrap_or("default");
    let region = region_of(ep);
    let remote = match (&place.local_region, &region) {
        (Some(local), Some(r)) => local != r,
        _ => false,
    };
    Target {
        endpoints: ep.metadata.name.clone().unwrap_or_default(),
        host: format!("{}.{namespace}.svc.{}", proxy_service_name(ep), place.cluster_domain),
        region,
        remote,
        devices,
        healthy,
    }
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

fn strategy(svc: &TailscaleServices) -> String {
    svc.spec
        .load_balancing
        .as_ref()
        .and_then(|lb| lb.strategy.as_deref())
        .filter(|s| STRATEGIES.contains(s))
        .unwrap_or(DEFAULT_STRATEGY)
        .to_string()
}

/// The TailscaleEndpoints a TailscaleServices selects: the cache's selection when the cache holds
/// the same spec, else the object's own selector evaluated over the cached endpoints.
/// A selected TailscaleEndpoints with the cache's devices of it.
type SelectedEndpoints = (Arc<TailscaleEndpoints>, Option<Vec<Arc<Device>>>);

fn selected(idx: &Index, svc: &TailscaleServices) -> Vec<SelectedEndpoints> {
    let key = ObjectKey::of(&svc.metadata);
    if idx.services(&key).is_some_and(|c| c.spec == svc.spec) {
        return idx
            .selected_endpoints(&key)
            .filter_map(|k| idx.endpoints(k).map(|e| (e.clone(), Some(idx.devices_of(k)))))
            .collect();
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
        .map(|(k, e)| (e.clone(), Some(idx.devices_of(k))))
        .collect()
}

/// The MagicDNS name of a TailscaleServices' VIP service: from its status, else built from the
/// VIP name and the tailnet's discovered MagicDNS suffix.
pub fn vip_dns_name(idx: &Index, svc: &TailscaleServices, tailnet: Option<&str>) -> Option<String> {
    if let Some(dns) = svc.status.as_ref().and_then(|s| s.vip_service.as_ref()).and_then(|v| v.dns_name.clone()) {
        return Some(dns.trim_end_matches('.').to_string()).filter(|d| !d.is_empty());
    }
    let vip = crate::core::resource::vip_service_name(svc)?;
    let label = vip.strip_prefix("svc:")?;
    let suffix = idx.tailnet(tailnet?)?.status.as_ref()?.tailnet_info.as_ref()?.magic_dns_suffix.clone()?;
    Some(format!("{label}.{}", suffix.trim_matches('.')))
}

/// The tailnet of a TailscaleServices: its own, else that of the first endpoints it selects.
pub fn services_tailnet(svc: &TailscaleServices, selected: &[Arc<TailscaleEndpoints>]) -> Option<String> {
    svc.spec.tailnet.clone().or_else(|| selected.first().map(|e| e.spec.tailnet.clone()))
}

/// Resolves a TailscaleServices against the cache.
pub fn resolve_services(idx: &Index, svc: &TailscaleServices, place: &Placement) -> Backend {
    let selected = selected(idx, svc);
    let endpoints: Vec<Arc<TailscaleEndpoints>> = selected.iter().map(|(e, _)| e.clone()).collect();
    let port = vip_tcp_port(svc).or_else(|| endpoints.iter().find_map(|e| first_tcp_port(e))).unwrap_or(DEFAULT_PORT);
    let tailnet = services_tailnet(svc, &endpoints);
    let mut targets: Vec<Target> = selected.into_iter().map(|(e, d)| target_of(&e, d, idx, place)).collect();
    targets.sort_by(|a, b| a.endpoints.cmp(&b.endpoints));
    Backend {
        kind: Kind::Services,
        key: ObjectKey::of(&svc.metadata),
        port,
        targets,
        vip_dns_name: vip_dns_name(idx, svc, tailnet.as_deref()),
        strategy: strategy(svc),
        health_check: health_check(svc),
    }
}

/// Resolves a TailscaleEndpoints used directly as a backend.
pub fn resolve_endpoints(idx: &Index, ep: &TailscaleEndpoints, place: &Placement) -> Backend {
    let key = ObjectKey::of(&ep.metadata);
    let cached = idx.endpoints(&key).filter(|c| c.spec == ep.spec).map(|_| idx.devices_of(&key));
    Backend {
        kind: Kind::Endpoints,
        port: first_tcp_port(ep).unwrap_or(DEFAULT_PORT),
        targets: vec![target_of(ep, cached, idx, place)],
        key,
        vip_dns_name: None,
        strategy: DEFAULT_STRATEGY.to_string(),
        health_check: None,
    }
}

/// Resolves a parsed backend object.
pub fn resolve(idx: &Index, obj: &BackendObject, place: &Placement) -> Backend {
    match obj {
        BackendObject::Services(s) => resolve_services(idx, s, place),
        BackendObject::Endpoints(e) => resolve_endpoints(idx, e, place),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::api::API_VERSION;
    use crate::cache::Cache;

    fn res(v: Value) -> Resource {
        Resource::from_value(v).unwrap_or_else(|e| panic!("{e}"))
    }

    fn endpoints(name: &str, region: &str, online: &[bool]) -> Resource {
        let devices: Vec<Value> =
            online.iter().enumerate().map(|(i, o)| json!({"hostname": format!("{name}-{i}"), "online": o})).collect();
        res(json!({"apiVersion": API_VERSION, "kind": "TailscaleEndpoints",
            "metadata": {"name": name, "namespace": "default", "labels": {"service-type": "web", "region": region}},
            "spec": {"tailnet": "corp", "ports": [{"port": 8080, "protocol": "TCP"}]},
            "status": {"devices": devices}}))
    }

    fn web_service() -> TailscaleServices {
        match res(json!({"apiVersion": API_VERSION, "kind": "TailscaleServices",
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"selector": {"matchLabels": {"service-type": "web"}},
                     "vipService": {"ports": ["udp:53", "tcp:443"]},
                     "loadBalancing": {"strategy": "least-request", "healthCheck": {"path": "/healthz", "interval": "3s"}}}}))
        {
            Resource::Services(s) => s,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn services_resolve_to_proxy_services_with_health_and_region() {
        let cache = Cache::new(10);
        cache.apply(endpoints("east", "east", &[true, false]));
        cache.apply(endpoints("west", "west", &[false]));
        cache.apply(res(json!({"apiVersion": API_VERSION, "kind": "TailscaleTailnet", "metadata": {"name": "corp"},
            "spec": {"oauthSecretRef": {"name": "s"}},
            "status": {"tailnetInfo": {"name": "corp", "magicDNSSuffix": "tail8eff9.ts.net"}}})));
        let place = Placement { local_region: Some("east".into()), ..Placement::default() };
        let b = resolve_services(&cache.read(), &web_service(), &place);
        assert_eq!(b.port, 443, "first TCP VIP port");
        assert_eq!(b.vip_dns_name.as_deref(), Some("web.tail8eff9.ts.net"));
        assert_eq!(b.strategy, "least-request");
        let hc = b.health_check.unwrap_or_else(|| panic!("health check"));
        assert_eq!(
            (hc.path.as_str(), hc.interval, hc.timeout),
            ("/healthz", Duration::from_secs(3), DEFAULT_HEALTH_TIMEOUT)
        );
        let t: Vec<(&str, &str, bool, usize)> =
            b.targets.iter().map(|t| (t.endpoints.as_str(), t.host.as_str(), t.remote, t.healthy)).collect();
        assert_eq!(
            t,
            vec![
                ("east", "east-svc.default.svc.cluster.local", false, 1),
                ("west", "west-svc.default.svc.cluster.local", true, 0)
            ]
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
    fn uncached_services_select_by_their_own_selector() {
        let cache = Cache::new(10);
        cache.apply(endpoints("east", "east", &[true]));
        let b = resolve_services(&cache.read(), &web_service(), &Placement::default());
        assert_eq!(b.targets.len(), 1);
        assert_eq!(b.vip_dns_name, None, "no tailnet status, no DNS name");
        assert!(!b.targets[0].remote, "no local region: everything is local");
    }
}

//! The data plane the proxies carry, as plain functions: what an ingress proxy serves for each
//! VIP service (tailscaled's serve config), which tailnet targets an egress proxy forwards and on
//! which match ports (containerboot's egress-services config), and where a serve `backendRef`
//! points in the cluster. The reconciler writes these into the proxies' ConfigMap; the xDS face
//! points Envoy at the same addresses and match ports. One rule each, used by both.
//!
//! The shapes follow tailscale.com's own types (`ipn.ServeConfig`, `kube/egressservices`); a Go
//! program decodes them with those types in strict mode in the test suite.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value, json};

use super::names;
use super::validate::DEFAULT_CONNECTION_TYPE;
use crate::api::{ServeBackendRef, ServePort, TailscaleEndpoints, TailscaleServices};

/// Where the proxies' ConfigMap is mounted.
pub const PROXIES_DIR: &str = "/etc/proxies";
/// Key (file) of the serve config in the proxies' ConfigMap (`TS_SERVE_CONFIG`).
pub const SERVE_CONFIG_KEY: &str = "serve-config.json";
/// Key (file) of the egress config (`TS_EGRESS_PROXIES_CONFIG_PATH` names the folder; containerboot
/// reads this file in it).
pub const EGRESS_CONFIG_KEY: &str = "egress-services";
/// Ports on the egress proxies that match a tailnet target's port (as upstream, 3000–3999).
pub const MATCH_PORTS: std::ops::RangeInclusive<u16> = 3000..=3999;
/// The Gateway API group.
pub const GATEWAY_API_GROUP: &str = "gateway.networking.k8s.io";
/// Default namespace of Envoy Gateway's controller, where it creates each Gateway's Service.
pub const DEFAULT_ENVOY_GATEWAY_NAMESPACE: &str = "envoy-gateway-system";

/// Where this installation runs: how in-cluster names are built and what counts as local.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    /// Kubernetes cluster DNS domain (`cluster.local`).
    pub cluster_domain: String,
    /// Region of the Envoy fleet; endpoints in another region are remote. `None`: all are local.
    pub local_region: Option<String>,
    /// Namespace of Envoy Gateway's controller (its Gateways' Services live there).
    pub envoy_gateway_namespace: String,
}

impl Default for Placement {
    fn default() -> Self {
        Self {
            cluster_domain: "cluster.local".into(),
            local_region: None,
            envoy_gateway_namespace: DEFAULT_ENVOY_GATEWAY_NAMESPACE.into(),
        }
    }
}

/// Which way a TailscaleEndpoints' proxies carry traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectionType {
    /// From the tailnet into the cluster: they publish VIP services (userspace, unprivileged).
    Ingress,
    /// From the cluster into the tailnet (kernel networking, privileged).
    Egress,
    /// Both.
    Bidirectional,
}

impl ConnectionType {
    /// The connection type of a TailscaleEndpoints (spec, or the default).
    pub fn of(ep: &TailscaleEndpoints) -> Self {
        let value = ep.spec.proxy.as_ref().and_then(|p| p.connection_type.as_deref());
        match value.unwrap_or(DEFAULT_CONNECTION_TYPE) {
            "egress" => Self::Egress,
            "bidirectional" => Self::Bidirectional,
            _ => Self::Ingress,
        }
    }

    /// As the API spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ingress => "ingress",
            Self::Egress => "egress",
            Self::Bidirectional => "bidirectional",
        }
    }

    /// Whether the proxies publish VIP services.
    pub fn ingress(self) -> bool {
        self != Self::Egress
    }

    /// Whether the proxies forward to tailnet targets (and so need kernel networking).
    pub fn egress(self) -> bool {
        self != Self::Ingress
    }
}

/// How a VIP port is served.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ServeProtocol {
    /// Forward the TCP connection to the backend.
    Tcp,
    /// Proxy HTTP to the backend.
    Http,
    /// Terminate TLS with the VIP's MagicDNS certificate, proxy HTTP to the backend.
    Https,
}

impl ServeProtocol {
    /// Names as the API spells them.
    pub const NAMES: &[&str] = &["TCP", "HTTP", "HTTPS"];
    /// The default when a serve entry names none.
    pub const DEFAULT: &str = "TCP";

    /// Parses an API value (`None`: the default).
    pub fn parse(s: Option<&str>) -> Option<Self> {
        match s.unwrap_or(Self::DEFAULT) {
            "TCP" => Some(Self::Tcp),
            "HTTP" => Some(Self::Http),
            "HTTPS" => Some(Self::Https),
            _ => None,
        }
    }

    /// Whether the proxy speaks HTTP (and so needs the VIP's DNS name for its web handler).
    pub fn is_web(self) -> bool {
        self != Self::Tcp
    }
}

/// The kind a serve `backendRef` names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendKind {
    /// A core Service.
    Service,
    /// A Gateway API Gateway run by Envoy Gateway.
    Gateway,
}

impl BackendKind {
    /// The kind of a reference, or why it is not one we serve. A missing group is the kind's
    /// own (as the mutating webhook fills it).
    pub fn of(r: &ServeBackendRef) -> Result<Self, String> {
        let kind = r.kind.as_deref().unwrap_or("Service");
        let default_group = if kind == "Gateway" { GATEWAY_API_GROUP } else { "" };
        match (r.group.as_deref().unwrap_or(default_group), kind) {
            ("" | "core", "Service") => Ok(Self::Service),
            (GATEWAY_API_GROUP, "Gateway") => Ok(Self::Gateway),
            (g, k @ ("Service" | "Gateway")) => Err(format!(
                "group {g:?} does not serve kind {k}: want \"\" for Service or \"{GATEWAY_API_GROUP}\" for Gateway"
            )),
            (_, k) => Err(format!("kind {k:?} cannot be served: want Service or Gateway")),
        }
    }
}

/// Name of the Service Envoy Gateway creates for a Gateway (its default, one Envoy fleet per
/// Gateway in the controller's namespace): `envoy-<ns>-<name>-<first 8 hex of sha256("ns/name")>`,
/// the namespaced name cut to 48 characters.
pub fn envoy_service_name(gateway_namespace: &str, gateway_name: &str) -> String {
    let ns_name = format!("{gateway_namespace}/{gateway_name}");
    let digest = ring::digest::digest(&ring::digest::SHA256, ns_name.as_bytes());
    let hex: String = digest.as_ref().iter().take(4).map(|b| format!("{b:02x}")).collect();
    let flat = ns_name.replace('/', "-");
    let base = match flat.get(..48) {
        Some(cut) if flat.len() > 48 => cut.strip_suffix('-').unwrap_or(cut),
        _ => flat.as_str(),
    };
    format!("envoy-{base}-{hex}")
}

/// The in-cluster `host:port` a serve entry forwards to: the Service's DNS name, or for a Gateway
/// the DNS name of the Service Envoy Gateway runs it behind. `namespace` is the TailscaleServices';
/// a reference into another namespace is refused here too, not only at admission, so an object
/// that got past the webhook (stored before it, or read in local mode) exposes nothing of another
/// namespace.
pub fn backend_address(r: &ServeBackendRef, namespace: &str, place: &Placement) -> Result<String, String> {
    let ns = namespace;
    if let Some(other) = r.namespace.as_deref().filter(|other| *other != namespace) {
        return Err(format!("namespace {other:?} is not this object's ({namespace:?})"));
    }
    let port =
        u16::try_from(r.port).ok().filter(|p| *p > 0).ok_or_else(|| format!("port {} is not 1-65535", r.port))?;
    let (service, service_ns) = match BackendKind::of(r)? {
        BackendKind::Service => (r.name.clone(), ns.to_string()),
        BackendKind::Gateway => (envoy_service_name(ns, &r.name), place.envoy_gateway_namespace.clone()),
    };
    Ok(format!("{service}.{service_ns}.svc.{}:{port}", place.cluster_domain))
}

/// One served VIP port, resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServedPort {
    /// VIP port.
    pub port: u16,
    /// How it is served.
    pub protocol: ServeProtocol,
    /// `host:port` of the backend.
    pub target: String,
}

/// What one VIP service serves from this cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VipServe {
    /// `svc:NAME`.
    pub vip: String,
    /// The VIP's MagicDNS name (`web.tail1234.ts.net`), needed by HTTP and HTTPS ports.
    pub dns_name: Option<String>,
    /// Served ports, by port.
    pub ports: Vec<ServedPort>,
    /// Application capabilities the web handlers pass on (`Tailscale-App-Capabilities`): those
    /// route policies match on.
    pub accept_app_caps: Vec<String>,
}

impl VipServe {
    /// Whether every port can be written into a serve config now (web ports need the DNS name).
    pub fn complete(&self) -> bool {
        self.dns_name.is_some() || self.ports.iter().all(|p| !p.protocol.is_web())
    }
}

/// The serve entries of a TailscaleServices, resolved; entries that do not resolve (refused by
/// validation) are left out.
pub fn served_ports(svc: &TailscaleServices, place: &Placement) -> Vec<ServedPort> {
    let ns = svc.metadata.namespace.as_deref().unwrap_or("default");
    let mut ports: Vec<ServedPort> = svc
        .spec
        .serve
        .iter()
        .filter_map(|s: &ServePort| {
            Some(ServedPort {
                port: u16::try_from(s.port).ok().filter(|p| *p > 0)?,
                protocol: ServeProtocol::parse(s.protocol.as_deref())?,
                target: backend_address(&s.backend_ref, ns, place).ok()?,
            })
        })
        .collect();
    ports.sort_by_key(|p| p.port);
    ports.dedup_by_key(|p| p.port);
    ports
}

/// tailscaled's serve config (`ipn.ServeConfig`) for the VIP services a proxy serves: per VIP,
/// a TCP handler per port (`TCPForward`, or `HTTP`/`HTTPS` with a web handler on
/// `<dns name>:<port>` proxying to the backend). VIPs that are not [`VipServe::complete`] are
/// left out (they are not advertised either).
pub fn serve_config(vips: &[VipServe]) -> Value {
    let mut services = Map::new();
    for v in vips.iter().filter(|v| v.complete() && !v.ports.is_empty()) {
        let mut tcp = Map::new();
        let mut web = Map::new();
        for p in &v.ports {
            let handler = match p.protocol {
                ServeProtocol::Tcp => json!({"TCPForward": p.target}),
                ServeProtocol::Http => json!({"HTTP": true}),
                ServeProtocol::Https => json!({"HTTPS": true}),
            };
            tcp.insert(p.port.to_string(), handler);
            if let (true, Some(dns)) = (p.protocol.is_web(), &v.dns_name) {
                let mut handler = json!({"Proxy": format!("http://{}", p.target)});
                if !v.accept_app_caps.is_empty() {
                    handler["AcceptAppCaps"] = json!(v.accept_app_caps);
                }
                web.insert(format!("{dns}:{}", p.port), json!({"Handlers": {"/": handler}}));
            }
        }
        let mut entry = Map::new();
        entry.insert("TCP".into(), Value::Object(tcp));
        if !web.is_empty() {
            entry.insert("Web".into(), Value::Object(web));
        }
        services.insert(v.vip.clone(), Value::Object(entry));
    }
    json!({"Services": services})
}

/// The serve config to write when the proxies must keep serving `keep` (VIPs still advertised by
/// some replica) although the plan dropped them: their entries are carried over from `previous`
/// (the config in place), so an advertised VIP never loses its handler.
pub fn serve_config_keeping(vips: &[VipServe], previous: Option<&str>, keep: &BTreeSet<String>) -> Value {
    let mut config = serve_config(vips);
    let old: Option<Value> = previous.and_then(|p| serde_json::from_str(p).ok());
    let old_services = old.as_ref().and_then(|o| o.get("Services")).and_then(Value::as_object);
    if let (Some(Value::Object(services)), Some(old_services)) = (config.get_mut("Services"), old_services) {
        for vip in keep {
            if let (false, Some(entry)) = (services.contains_key(vip), old_services.get(vip)) {
                services.insert(vip.clone(), entry.clone());
            }
        }
    }
    config
}

/// The VIP services a serve config (as stored in a ConfigMap) serves.
pub fn served_vips(serve_config: &str) -> BTreeSet<String> {
    serde_json::from_str::<Value>(serve_config)
        .ok()
        .and_then(|v| v.get("Services").and_then(Value::as_object).map(|m| m.keys().cloned().collect()))
        .unwrap_or_default()
}

/// A tailnet target the egress proxies forward to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EgressTarget {
    /// Key of the target in the egress config (the TailscaleServices' name, or
    /// [`own_target_key`] of a TailscaleEndpoints' own target).
    pub name: String,
    /// MagicDNS name of the target (a VIP service's name resolves to its addresses), or its
    /// Tailscale IP when `by_ip`.
    pub fqdn: String,
    /// Target TCP ports.
    pub ports: Vec<u16>,
    /// `fqdn` is a Tailscale IP.
    pub by_ip: bool,
}

/// Match ports of a target: `(target name, target port) -> match port`.
pub type MatchPorts = BTreeMap<(String, u16), u16>;

fn fnv1a(s: &str) -> u32 {
    s.bytes().fold(0x811c_9dc5u32, |h, b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193))
}

/// Allocates a match port in [`MATCH_PORTS`] for every target port, skipping `reserved` (the
/// proxies' own ports). A port's first choice is a hash of target and port, so adding or
/// removing one target rarely moves another's; collisions probe upward in name order. Ports
/// beyond the range's capacity are left out.
pub fn match_ports(targets: &[EgressTarget], reserved: &BTreeSet<u16>) -> MatchPorts {
    let span = u32::from(MATCH_PORTS.end() - MATCH_PORTS.start()) + 1;
    let mut wanted: Vec<(&str, u16)> =
        targets.iter().flat_map(|t| t.ports.iter().map(move |p| (t.name.as_str(), *p))).collect();
    wanted.sort_unstable();
    wanted.dedup();
    let mut used: BTreeSet<u16> = reserved.clone();
    let mut out = MatchPorts::new();
    for (name, port) in wanted {
        let first = fnv1a(&format!("{name}/{port}")) % span;
        let free = (0..span)
            .map(|i| MATCH_PORTS.start() + ((first + i) % span) as u16)
            .find(|candidate| !used.contains(candidate));
        if let Some(m) = free {
            used.insert(m);
            out.insert((name.to_string(), port), m);
        }
    }
    out
}

/// containerboot's egress config (`egressservices.Configs`): per target, its FQDN and the
/// match-to-target port mappings.
pub fn egress_config(targets: &[EgressTarget], ports: &MatchPorts) -> Value {
    let mut out = Map::new();
    for t in targets {
        let mappings: Vec<Value> = t
            .ports
            .iter()
            .filter_map(|p| ports.get(&(t.name.clone(), *p)).map(|m| (m, p)))
            .map(|(m, p)| json!({"protocol": "tcp", "matchPort": m, "targetPort": p}))
            .collect();
        if mappings.is_empty() {
            continue;
        }
        let target = if t.by_ip { json!({"ip": t.fqdn, "fqdn": ""}) } else { json!({"ip": "", "fqdn": t.fqdn}) };
        out.insert(t.name.clone(), json!({"healthCheckEndpoint": "", "tailnetTarget": target, "ports": mappings}));
    }
    Value::Object(out)
}

/// The single TCP ports of a TailscaleServices' VIP, in spec order (ranges are not forwarded by
/// egress proxies).
pub fn vip_tcp_ports(svc: &TailscaleServices) -> Vec<u16> {
    let Some(vip) = &svc.spec.vip_service else { return Vec::new() };
    let mut out = Vec::new();
    for p in vip.ports.iter().filter_map(|p| names::vip_port(p).ok()) {
        if p.protocol == names::Protocol::Tcp && p.from == p.to && !out.contains(&p.from) {
            out.push(p.from);
        }
    }
    out
}

/// A TailscaleServices selecting some proxies, with what the cache knows of its VIP.
#[derive(Clone, Copy, Debug)]
pub struct Selecting<'a> {
    /// The object.
    pub services: &'a TailscaleServices,
    /// Its VIP's MagicDNS name, when known.
    pub dns_name: Option<&'a str>,
}

impl Selecting<'_> {
    /// Whether the VIP service exists in the tailnet (the reconciler wrote its name to status).
    fn vip_exists(&self) -> bool {
        self.services.status.as_ref().and_then(|s| s.vip_service.as_ref()).and_then(|v| v.name.as_ref()).is_some()
    }
}

/// Everything one TailscaleEndpoints' proxies carry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProxyPlan {
    /// VIP services they publish (ingress), by VIP name.
    pub serve: Vec<VipServe>,
    /// Tailnet targets they forward to (egress), by name.
    pub egress: Vec<EgressTarget>,
    /// Match port of every egress target port.
    pub match_ports: MatchPorts,
}

impl ProxyPlan {
    /// The VIPs that can be advertised once their serve config is in place.
    pub fn servable(&self) -> BTreeSet<String> {
        self.serve.iter().filter(|v| v.complete() && !v.ports.is_empty()).map(|v| v.vip.clone()).collect()
    }

    /// The MagicDNS names whose certificate the replicas share (VIPs with an HTTPS port): replica
    /// 0 issues and renews it into a Secret of that name, the others read it from there.
    pub fn cert_domains(&self) -> BTreeSet<String> {
        self.serve
            .iter()
            .filter(|v| v.ports.iter().any(|p| p.protocol == ServeProtocol::Https))
            .filter_map(|v| v.dns_name.clone())
            .collect()
    }

    /// What a registered replica advertises: the servable VIPs whose serve config is in place
    /// (`served_now`), and, for a VIP served over HTTPS only, whose shared certificate exists
    /// (`certs_ready`, by domain), so that no client is sent to a replica without a certificate
    /// (as upstream's HA Ingress waits).
    pub fn advertisable(&self, served_now: &BTreeSet<String>, certs_ready: &BTreeSet<String>) -> Vec<String> {
        let servable = self.servable();
        self.serve
            .iter()
            .filter(|v| servable.contains(&v.vip) && served_now.contains(&v.vip))
            .filter(|v| {
                let https_only = v.ports.iter().all(|p| p.protocol == ServeProtocol::Https);
                !https_only || v.dns_name.as_ref().is_some_and(|d| certs_ready.contains(d))
            })
            .map(|v| v.vip.clone())
            .collect()
    }
}

/// Prefix of the egress config keys of a TailscaleEndpoints' own targets. The TailscaleServices'
/// keys are their names, DNS labels without dots, so the two never collide.
pub const OWN_TARGET_PREFIX: &str = "target.";

/// The egress config key of one of a TailscaleEndpoints' own targets.
pub fn own_target_key(name: &str) -> String {
    format!("{OWN_TARGET_PREFIX}{name}")
}

fn own_target(t: &crate::api::EgressTargetSpec) -> Option<EgressTarget> {
    let ports: Vec<u16> = t.ports.iter().filter_map(|p| u16::try_from(*p).ok()).filter(|p| *p > 0).collect();
    let address = t.fqdn.clone().or_else(|| t.ip.clone())?;
    (!ports.is_empty()).then(|| EgressTarget {
        name: own_target_key(&t.name),
        fqdn: address,
        ports,
        by_ip: t.ip.is_some(),
    })
}

/// The plan of one TailscaleEndpoints from the TailscaleServices that select it: ingress proxies
/// publish each existing VIP that has serve entries; egress proxies forward to each VIP whose
/// DNS name is known, on its single TCP ports.
pub fn proxy_plan(ep: &TailscaleEndpoints, selecting: &[Selecting<'_>], place: &Placement) -> ProxyPlan {
    let ct = ConnectionType::of(ep);
    let mut plan = ProxyPlan::default();
    for s in selecting {
        let Some(vip) = super::resource::vip_service_name(s.services) else { continue };
        if ct.ingress() && s.vip_exists() && !s.services.spec.serve.is_empty() {
            plan.serve.push(VipServe {
                vip: vip.clone(),
                dns_name: s.dns_name.map(str::to_string),
                ports: served_ports(s.services, place),
                accept_app_caps: Vec::new(),
            });
        }
        if let (true, Some(dns)) = (ct.egress(), s.dns_name) {
            let ports = vip_tcp_ports(s.services);
            if !ports.is_empty() {
                let name = s.services.metadata.name.clone().unwrap_or_default();
                plan.egress.push(EgressTarget { name, fqdn: dns.to_string(), ports, by_ip: false });
            }
        }
    }
    if ct.egress() {
        plan.egress.extend(ep.spec.egress_targets.iter().filter_map(own_target));
    }
    plan.serve.sort_by(|a, b| a.vip.cmp(&b.vip));
    plan.serve.dedup_by(|a, b| a.vip == b.vip);
    plan.egress.sort_by(|a, b| a.name.cmp(&b.name));
    let reserved: BTreeSet<u16> = ep.spec.ports.iter().filter_map(|p| u16::try_from(p.port).ok()).collect();
    plan.match_ports = match_ports(&plan.egress, &reserved);
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(kind: Option<&str>, group: Option<&str>, name: &str, port: i32) -> ServeBackendRef {
        ServeBackendRef {
            group: group.map(str::to_string),
            kind: kind.map(str::to_string),
            name: name.into(),
            namespace: None,
            port,
        }
    }

    #[test]
    fn envoy_service_names_match_envoy_gateway() {
        // Envoy Gateway v1.9.1, internal/utils.GetHashedName: sha256("default/eg") starts e41e7b31.
        let digest = ring::digest::digest(&ring::digest::SHA256, b"default/eg");
        assert_eq!(hex(digest.as_ref())[..8], *"e41e7b31");
        assert_eq!(envoy_service_name("default", "eg"), "envoy-default-eg-e41e7b31");
        let long = envoy_service_name("a-very-long-namespace-name-here", "and-a-gateway-name-that-is-long");
        assert_eq!(long, "envoy-a-very-long-namespace-name-here-and-a-gateway-na-c1bff616");
        // Cut at 48 characters, one trailing hyphen dropped (as Go's strings.TrimSuffix).
        let name = format!("{}-tail", "a".repeat(44));
        let d = ring::digest::digest(&ring::digest::SHA256, format!("ns/{name}").as_bytes());
        assert_eq!(envoy_service_name("ns", &name), format!("envoy-ns-{}-{}", "a".repeat(44), &hex(d.as_ref())[..8]));
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn backend_addresses() {
        let place = Placement::default();
        assert_eq!(
            backend_address(&backend(None, None, "web", 8080), "apps", &place),
            Ok("web.apps.svc.cluster.local:8080".into())
        );
        assert_eq!(
            backend_address(&backend(Some("Gateway"), Some(GATEWAY_API_GROUP), "eg", 443), "default", &place),
            Ok("envoy-default-eg-e41e7b31.envoy-gateway-system.svc.cluster.local:443".into())
        );
        assert!(backend_address(&backend(Some("Gateway"), None, "eg", 443), "d", &place).is_ok(), "the kind's group");
        assert!(backend_address(&backend(Some("Gateway"), Some(""), "eg", 443), "d", &place).is_err());
        assert!(backend_address(&backend(Some("Pod"), None, "p", 1), "d", &place).is_err());
        assert!(backend_address(&backend(None, None, "web", 0), "d", &place).is_err());
        let elsewhere = ServeBackendRef { namespace: Some("kube-system".into()), ..backend(None, None, "web", 80) };
        assert!(backend_address(&elsewhere, "d", &place).is_err(), "never another namespace's Service");
        let same = ServeBackendRef { namespace: Some("d".into()), ..backend(None, None, "web", 80) };
        assert_eq!(backend_address(&same, "d", &place), Ok("web.d.svc.cluster.local:80".into()));
    }

    #[test]
    fn serve_config_per_protocol() {
        let vip = VipServe {
            vip: "svc:web".into(),
            dns_name: Some("web.tail1.ts.net".into()),
            ports: vec![
                ServedPort { port: 443, protocol: ServeProtocol::Https, target: "web.d.svc.cluster.local:8080".into() },
                ServedPort { port: 5432, protocol: ServeProtocol::Tcp, target: "db.d.svc.cluster.local:5432".into() },
            ],
            accept_app_caps: Vec::new(),
        };
        assert_eq!(
            serve_config(std::slice::from_ref(&vip)),
            json!({"Services": {"svc:web": {
                "TCP": {"443": {"HTTPS": true}, "5432": {"TCPForward": "db.d.svc.cluster.local:5432"}},
                "Web": {"web.tail1.ts.net:443": {"Handlers": {"/": {"Proxy": "http://web.d.svc.cluster.local:8080"}}}}}}})
        );
        // Route policies' capabilities are passed on by the web handlers.
        let with_caps = VipServe { accept_app_caps: vec!["example.com/cap/admin".into()], ..vip.clone() };
        assert_eq!(
            serve_config(&[with_caps])["Services"]["svc:web"]["Web"]["web.tail1.ts.net:443"]["Handlers"]["/"],
            json!({"Proxy": "http://web.d.svc.cluster.local:8080", "AcceptAppCaps": ["example.com/cap/admin"]})
        );
        let unknown_dns = VipServe { dns_name: None, ..vip };
        assert!(!unknown_dns.complete());
        assert_eq!(serve_config(&[unknown_dns]), json!({"Services": {}}), "web ports wait for the DNS name");
        assert_eq!(
            served_vips(
                &serve_config(&[VipServe {
                    vip: "svc:db".into(),
                    dns_name: None,
                    ports: vec![ServedPort { port: 1, protocol: ServeProtocol::Tcp, target: "x:1".into() }],
                    accept_app_caps: Vec::new(),
                }])
                .to_string()
            ),
            BTreeSet::from(["svc:db".to_string()])
        );
        assert!(served_vips("not json").is_empty());
    }

    #[test]
    fn plans_follow_the_connection_type() {
        let ep = |ct: &str| -> TailscaleEndpoints {
            serde_json::from_value(json!({"apiVersion": "gateway.tailscale.com/v1alpha1", "kind": "TailscaleEndpoints",
                "metadata": {"name": "e", "namespace": "d"},
                "spec": {"tailnet": "t", "proxy": {"connectionType": ct}, "ports": [{"port": 3000}],
                         "egressTargets": [{"name": "db", "ip": "100.64.0.7", "ports": [5432]}]}}))
            .expect("parsing the TailscaleEndpoints")
        };
        let svc: TailscaleServices = serde_json::from_value(json!({"apiVersion": "gateway.tailscale.com/v1alpha1",
            "kind": "TailscaleServices", "metadata": {"name": "web", "namespace": "d"},
            "spec": {"vipService": {"ports": ["tcp:80", "tcp:9000-9010"]},
                     "serve": [{"port": 80, "protocol": "HTTP", "backendRef": {"name": "web", "port": 8080}}]},
            "status": {"vipService": {"name": "svc:web"}}}))
        .expect("parsing the TailscaleServices");
        let selecting = [Selecting { services: &svc, dns_name: Some("web.tail1.ts.net") }];
        let place = Placement::default();
        let ingress = proxy_plan(&ep("ingress"), &selecting, &place);
        assert_eq!(ingress.servable(), BTreeSet::from(["svc:web".to_string()]));
        assert!(ingress.egress.is_empty() && ingress.match_ports.is_empty());
        let egress = proxy_plan(&ep("egress"), &selecting, &place);
        assert!(egress.serve.is_empty(), "egress proxies publish nothing");
        let names: Vec<(&str, &[u16])> = egress.egress.iter().map(|t| (t.name.as_str(), t.ports.as_slice())).collect();
        assert_eq!(names, vec![("target.db", &[5432][..]), ("web", &[80][..])], "the range is not forwarded");
        assert!(!egress.match_ports.values().any(|p| *p == 3000), "the spec's own ports are reserved");
        let cfg = egress_config(&egress.egress, &egress.match_ports);
        assert_eq!(cfg["target.db"]["tailnetTarget"], json!({"ip": "100.64.0.7", "fqdn": ""}));
        let both = proxy_plan(&ep("bidirectional"), &selecting, &place);
        assert_eq!((both.serve.len(), both.egress.len()), (1, 2));
        // Without the VIP's DNS name nothing can be forwarded to it, and web ports cannot be served.
        let unknown = [Selecting { services: &svc, dns_name: None }];
        let plan = proxy_plan(&ep("bidirectional"), &unknown, &place);
        assert!(plan.servable().is_empty());
        assert_eq!(plan.egress.len(), 1, "only the own target");
    }

    #[test]
    fn https_only_vips_wait_for_their_shared_certificate() {
        let port = |p: u16, protocol| ServedPort { port: p, protocol, target: "web.d.svc.cluster.local:8080".into() };
        let vip = |name: &str, ports: Vec<ServedPort>| VipServe {
            vip: format!("svc:{name}"),
            dns_name: Some(format!("{name}.tail1.ts.net")),
            ports,
            accept_app_caps: Vec::new(),
        };
        let plan = ProxyPlan {
            serve: vec![
                vip("both", vec![port(80, ServeProtocol::Http), port(443, ServeProtocol::Https)]),
                vip("secure", vec![port(443, ServeProtocol::Https)]),
                vip("tcp", vec![port(5432, ServeProtocol::Tcp)]),
            ],
            ..ProxyPlan::default()
        };
        assert_eq!(
            plan.cert_domains(),
            BTreeSet::from(["both.tail1.ts.net".to_string(), "secure.tail1.ts.net".to_string()])
        );
        let served: BTreeSet<String> = ["svc:both", "svc:secure", "svc:tcp"].map(String::from).into();
        assert_eq!(plan.advertisable(&served, &BTreeSet::new()), ["svc:both", "svc:tcp"]);
        let certs = BTreeSet::from(["secure.tail1.ts.net".to_string()]);
        assert_eq!(plan.advertisable(&served, &certs), ["svc:both", "svc:secure", "svc:tcp"]);
        let only_tcp = BTreeSet::from(["svc:tcp".to_string()]);
        assert_eq!(plan.advertisable(&only_tcp, &certs), ["svc:tcp"], "not before the serve config is in place");
    }

    #[test]
    fn match_ports_are_stable_unique_and_avoid_reserved() {
        let t = |name: &str, ports: &[u16]| EgressTarget {
            name: name.into(),
            fqdn: format!("{name}.tail1.ts.net"),
            ports: ports.to_vec(),
            by_ip: false,
        };
        let one = vec![t("web", &[80, 443]), t("api", &[8080])];
        let a = match_ports(&one, &BTreeSet::new());
        assert_eq!(a.len(), 3);
        assert_eq!(a.values().collect::<BTreeSet<_>>().len(), 3, "unique");
        assert!(a.values().all(|p| MATCH_PORTS.contains(p)));
        let mut more = one.clone();
        more.push(t("db", &[5432]));
        let b = match_ports(&more, &BTreeSet::new());
        for (k, v) in &a {
            assert_eq!(b.get(k), Some(v), "adding a target keeps {k:?}");
        }
        let reserved: BTreeSet<u16> = a.values().copied().collect();
        let c = match_ports(&one, &reserved);
        assert!(c.values().all(|p| !reserved.contains(p)));
        let cfg = egress_config(&one, &a);
        assert_eq!(cfg["web"]["tailnetTarget"], json!({"ip": "", "fqdn": "web.tail1.ts.net"}));
        assert_eq!(cfg["web"]["ports"].as_array().map(Vec::len), Some(2));
        assert_eq!(cfg["api"]["ports"][0]["matchPort"], json!(a[&("api".to_string(), 8080)]));
        // The range is finite: a 1001st port gets none rather than a duplicate.
        let many =
            vec![EgressTarget { name: "m".into(), fqdn: "m.t".into(), ports: (1..=1001).collect(), by_ip: false }];
        assert_eq!(match_ports(&many, &BTreeSet::new()).len(), 1000);
    }
}

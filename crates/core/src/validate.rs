//! Validation of our resources: one small `Validate` impl per spec for single-object rules, and
//! [`review`] which adds metadata, update and cross-object rules through a [`ClusterView`].
//!
//! Every rule reports into a list, so a denial names every bad field at once.

use std::collections::BTreeSet;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::dataplane::{BackendKind, ServeProtocol};
use super::{
    FieldError, FieldPath, Kind, ObjectKey, Resource, duration, names, resource::vip_service_name,
    selector::validate_label_selector,
};
use crate::api::{
    EndpointTemplate, HealthCheck, LoadBalancing, PortSpec, ProxySpec, RouteGeneration, ServePort,
    TailscaleEndpointsSpec, TailscaleGatewaySpec, TailscaleServices, TailscaleServicesSpec, TailscaleTailnetSpec,
    VipServiceSpec,
};

/// Load-balancing strategies we translate to Envoy.
pub const STRATEGIES: &[&str] = &["round-robin", "least-request", "random", "ring-hash", "maglev"];
/// Default load-balancing strategy.
pub const DEFAULT_STRATEGY: &str = "round-robin";
/// Proxy connection types.
pub const CONNECTION_TYPES: &[&str] = &["ingress", "egress", "bidirectional"];
/// Default proxy connection type.
/// Default proxy connection type: ingress proxies run in userspace and need no privileges; egress
/// (and bidirectional) proxies need kernel networking and a privileged container.
pub const DEFAULT_CONNECTION_TYPE: &str = "ingress";
/// Port protocols of TailscaleEndpoints.
pub const PORT_PROTOCOLS: &[&str] = &["TCP", "UDP"];
/// Most proxy replicas one TailscaleEndpoints may ask for.
pub const MAX_REPLICAS: i32 = 100;
/// Default proxy replicas.
pub const DEFAULT_REPLICAS: i32 = 2;
/// Default health-check interval.
pub const DEFAULT_HEALTH_INTERVAL: &str = "10s";
/// Default route path prefix of a TailscaleGateway.
pub const DEFAULT_PATH_PREFIX: &str = "/tailscale/{service}/";
/// Default Tailscale API URL.
pub const DEFAULT_API_URL: &str = "https://api.tailscale.com";
/// Most VIP ports or tags on one object.
pub const MAX_LIST: usize = 64;

/// What cross-object rules need to know about the rest of the cluster. The cache implements it
/// in the server; `check` implements it over the files it was given.
pub trait ClusterView {
    /// Whether a TailscaleTailnet of that name exists.
    fn tailnet_exists(&self, name: &str) -> bool;
    /// The TailscaleServices claiming a VIP service name.
    fn vip_claimants(&self, vip: &str) -> Vec<ObjectKey>;
}

/// A view with no other objects (single-object checks only).
pub struct NoCluster;

impl ClusterView for NoCluster {
    fn tailnet_exists(&self, _: &str) -> bool {
        true
    }
    fn vip_claimants(&self, _: &str) -> Vec<ObjectKey> {
        Vec::new()
    }
}

/// The outcome of validating one object.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Verdict {
    /// Denials.
    pub errors: Vec<FieldError>,
    /// Accepted, but worth telling the user (shown by kubectl as `Warning:`).
    pub warnings: Vec<String>,
}

impl Verdict {
    /// Whether the object is accepted.
    pub fn allowed(&self) -> bool {
        self.errors.is_empty()
    }
}

/// Single-object rules of a spec.
pub trait Validate {
    /// Appends every violation under `path`.
    fn validate(&self, path: &FieldPath<'_>, errs: &mut Vec<FieldError>);
}

/// Validates an object as admission does: metadata, spec, immutable fields against `old` (on
/// UPDATE), and cross-object rules against `view`.
pub fn review(res: &Resource, old: Option<&Resource>, view: &dyn ClusterView) -> Verdict {
    let mut v = Verdict::default();
    validate_meta(res.meta(), res.kind(), &mut v.errors);
    let spec = FieldPath::new("spec");
    match res {
        Resource::Tailnet(t) => t.spec.validate(&spec, &mut v.errors),
        Resource::Endpoints(e) => {
            e.spec.validate(&spec, &mut v.errors);
            warn_missing_tailnet(&e.spec.tailnet, &spec.child("tailnet"), view, &mut v.warnings);
        }
        Resource::Services(s) => {
            s.spec.validate(&spec, &mut v.errors);
            review_services(s, old, view, &mut v);
        }
        Resource::RoutePolicy(p) => v.errors.extend(crate::policy::validate(&p.spec)),
        Resource::Gateway(g) => {
            g.spec.validate(&spec, &mut v.errors);
            for (i, t) in g.spec.tailnets.iter().enumerate() {
                warn_missing_tailnet(&t.name, &spec.child("tailnets").index(i).child("name"), view, &mut v.warnings);
            }
        }
    }
    v
}

fn warn_missing_tailnet(name: &str, path: &FieldPath<'_>, view: &dyn ClusterView, warnings: &mut Vec<String>) {
    if !name.is_empty() && !view.tailnet_exists(name) {
        warnings.push(format!(
            "{path}: TailscaleTailnet {name:?} does not exist (yet); devices will not join until it does"
        ));
    }
}

fn review_services(s: &TailscaleServices, old: Option<&Resource>, view: &dyn ClusterView, v: &mut Verdict) {
    let spec = FieldPath::new("spec");
    let vip_path = spec.child("vipService");
    let name_path = vip_path.child("name");
    // This object itself, compared without copying its key.
    let is_me = |k: &ObjectKey| {
        s.metadata.name.as_deref() == Some(k.name.as_str())
            && s.metadata.namespace.as_deref().unwrap_or_default() == k.namespace
    };
    let vip = vip_service_name(s);
    match &vip {
        None => v.errors.push(FieldError::required(
            &name_path,
            format!(
                "metadata.name {:?} is not a DNS label, so it cannot name the VIP service: set spec.vipService.name to \"svc:NAME\"",
                s.metadata.name.clone().unwrap_or_default()
            ),
        )),
        Some(vip) => {
            let others: Vec<String> =
                view.vip_claimants(vip).into_iter().filter(|k| !is_me(k)).map(|k| k.to_string()).collect();
            if !others.is_empty() {
                v.errors.push(FieldError::duplicate(
                    &name_path,
                    vip,
                    format!(
                        "already claimed by TailscaleServices {}; a VIP service name may be claimed by one TailscaleServices in the cluster",
                        others.join(", ")
                    ),
                ));
            }
        }
    }
    if let Some(Resource::Services(old)) = old {
        let before = vip_service_name(old);
        if before.is_some() && before != vip {
            v.errors.push(FieldError::invalid(
                &name_path,
                vip.unwrap_or_default(),
                format!(
                    "field is immutable: this TailscaleServices owns VIP service {:?}; to rename it, create a new TailscaleServices and delete this one",
                    before.unwrap_or_default()
                ),
            ));
        }
    }
    match &s.spec.selector {
        Some(sel)
            if sel.match_labels.as_ref().is_none_or(|m| m.is_empty())
                && sel.match_expressions.as_ref().is_none_or(|m| m.is_empty()) =>
        {
            v.warnings.push("spec.selector is empty and selects every TailscaleEndpoints in the namespace".to_string());
        }
        _ => {}
    }
    if let Some(t) = &s.spec.tailnet {
        warn_missing_tailnet(t, &FieldPath::new("spec").child("tailnet"), view, &mut v.warnings);
    }
    let own_ns = s.metadata.namespace.as_deref().unwrap_or("default");
    for (i, entry) in s.spec.serve.iter().enumerate() {
        if let Some(ns) = entry.backend_ref.namespace.as_deref().filter(|ns| *ns != own_ns) {
            v.errors.push(FieldError::invalid(
                &spec.child("serve").index(i).child("backendRef").child("namespace"),
                ns,
                format!("only this object's namespace ({own_ns:?}) is supported: a cross-namespace reference would need a ReferenceGrant"),
            ));
        }
    }
}

fn validate_meta(meta: &ObjectMeta, kind: Kind, errs: &mut Vec<FieldError>) {
    let p = FieldPath::new("metadata");
    match meta.name.as_deref() {
        Some(name) if !name.is_empty() => {
            if let Err(e) = names::dns_subdomain(name) {
                errs.push(FieldError::invalid(&p.child("name"), name, e));
            }
        }
        _ if meta.generate_name.is_some() => {}
        _ => errs.push(FieldError::required(&p.child("name"), "name or generateName is required")),
    }
    if kind.namespaced()
        && let Some(ns) = meta.namespace.as_deref().filter(|ns| !ns.is_empty())
        && let Err(e) = names::dns_label(ns)
    {
        errs.push(FieldError::invalid(&p.child("namespace"), ns, e));
    }
    for (k, val) in meta.labels.iter().flatten() {
        if let Err(e) = names::label_key(k) {
            errs.push(FieldError::invalid(&p.child("labels"), k, e));
        }
        if let Err(e) = names::label_value(val) {
            errs.push(FieldError::invalid(&p.child("labels").key(k), val, e));
        }
    }
}

/// Checks a list of Tailscale tags: syntax and duplicates.
fn validate_tags(tags: &[String], path: &FieldPath<'_>, errs: &mut Vec<FieldError>) {
    if tags.len() > MAX_LIST {
        errs.push(FieldError::too_many(path, tags.len(), MAX_LIST));
    }
    let mut seen = BTreeSet::new();
    for (i, t) in tags.iter().enumerate() {
        if let Err(e) = names::tag(t) {
            errs.push(FieldError::invalid(&path.index(i), t, e));
        } else if !seen.insert(t.as_str()) {
            errs.push(FieldError::duplicate(&path.index(i), t, "each tag may appear once"));
        }
    }
}

/// A reference to another object by name.
fn validate_object_name(name: &str, path: &FieldPath<'_>, what: &str, errs: &mut Vec<FieldError>) {
    if name.is_empty() {
        errs.push(FieldError::required(path, format!("must name a {what}")));
    } else if let Err(e) = names::dns_subdomain(name) {
        errs.push(FieldError::invalid(path, name, e));
    }
}

fn validate_duration(value: &str, path: &FieldPath<'_>, errs: &mut Vec<FieldError>) {
    match duration::parse(value) {
        Ok(d) if d.as_secs_f64() >= 1.0 => {}
        Ok(_) => errs.push(FieldError::invalid(path, value, "want a duration of at least 1s, e.g. \"10s\"")),
        Err(e) => {
            errs.push(FieldError::invalid(path, value, format!("want a duration such as \"10s\" or \"1m30s\": {e}")))
        }
    }
}

impl Validate for TailscaleTailnetSpec {
    fn validate(&self, path: &FieldPath<'_>, errs: &mut Vec<FieldError>) {
        if let Some(t) = &self.tailnet
            && (t.is_empty() || t.chars().any(|c| c.is_whitespace() || c == '/'))
        {
            errs.push(FieldError::invalid(
                &path.child("tailnet"),
                t,
                "want a tailnet name (e.g. \"example.com\" or \"tail8eff9.ts.net\") or \"-\" for the OAuth client's tailnet",
            ));
        }
        let sp = path.child("oauthSecretRef");
        validate_object_name(
            &self.oauth_secret_ref.name,
            &sp.child("name"),
            "Secret with client_id and client_secret",
            errs,
        );
        if let Some(ns) = &self.oauth_secret_ref.namespace
            && let Err(e) = names::dns_label(ns)
        {
            errs.push(FieldError::invalid(&sp.child("namespace"), ns, e));
        }
        if let Some(url) = &self.api_url {
            let host = url.strip_prefix("https://").or_else(|| url.strip_prefix("http://"));
            if host.is_none_or(|h| h.is_empty() || h.starts_with('/') || h.contains(char::is_whitespace)) {
                errs.push(FieldError::invalid(
                    &path.child("apiURL"),
                    url,
                    "want an http(s) URL such as \"https://api.tailscale.com\"",
                ));
            }
        }
        validate_tags(&self.tags, &path.child("tags"), errs);
    }
}

impl Validate for ProxySpec {
    fn validate(&self, path: &FieldPath<'_>, errs: &mut Vec<FieldError>) {
        if let Some(r) = self.replicas
            && !(0..=MAX_REPLICAS).contains(&r)
        {
            errs.push(FieldError::invalid(&path.child("replicas"), r, format!("want 0 to {MAX_REPLICAS}")));
        }
        if let Some(c) = &self.connection_type
            && !CONNECTION_TYPES.contains(&c.as_str())
        {
            errs.push(FieldError::not_supported(&path.child("connectionType"), c, CONNECTION_TYPES));
        }
        if let Some(image) = &self.image
            && (image.is_empty() || image.contains(char::is_whitespace))
        {
            errs.push(FieldError::invalid(&path.child("image"), image, "want a container image reference"));
        }
    }
}

/// Ports of a TailscaleEndpoints (or its template): range, protocol, uniqueness.
fn validate_ports(ports: &[PortSpec], path: &FieldPath<'_>, errs: &mut Vec<FieldError>) {
    let mut seen = BTreeSet::new();
    for (i, p) in ports.iter().enumerate() {
        let pp = path.index(i);
        if !(1..=65535).contains(&p.port) {
            errs.push(FieldError::invalid(&pp.child("port"), p.port, "want 1 to 65535"));
        }
        let proto = p.protocol.as_deref().unwrap_or("TCP");
        if !PORT_PROTOCOLS.contains(&proto) {
            errs.push(FieldError::not_supported(&pp.child("protocol"), proto, PORT_PROTOCOLS));
        }
        if !seen.insert((p.port, proto)) {
            errs.push(FieldError::duplicate(
                &pp,
                format!("{}/{proto}", p.port),
                "each port and protocol may appear once",
            ));
        }
        if let Some(name) = &p.name
            && let Err(e) = names::dns_label(name)
        {
            errs.push(FieldError::invalid(&pp.child("name"), name, e));
        }
    }
}

impl Validate for TailscaleEndpointsSpec {
    fn validate(&self, path: &FieldPath<'_>, errs: &mut Vec<FieldError>) {
        validate_object_name(&self.tailnet, &path.child("tailnet"), "TailscaleTailnet", errs);
        validate_tags(&self.tags, &path.child("tags"), errs);
        if let Some(proxy) = &self.proxy {
            proxy.validate(&path.child("proxy"), errs);
        }
        validate_ports(&self.ports, &path.child("ports"), errs);
        validate_egress_targets(self, &path.child("egressTargets"), errs);
    }
}

/// Egress targets: unique DNS-label names, exactly one of a MagicDNS name or a Tailscale IP, TCP
/// ports, and proxies that do egress.
fn validate_egress_targets(spec: &TailscaleEndpointsSpec, path: &FieldPath<'_>, errs: &mut Vec<FieldError>) {
    if spec.egress_targets.len() > MAX_LIST {
        errs.push(FieldError::too_many(path, spec.egress_targets.len(), MAX_LIST));
    }
    let egress = spec.proxy.as_ref().and_then(|p| p.connection_type.as_deref()).unwrap_or(DEFAULT_CONNECTION_TYPE);
    if !spec.egress_targets.is_empty() && egress == "ingress" {
        errs.push(FieldError::invalid(
            &FieldPath::new("spec").child("proxy").child("connectionType"),
            egress,
            "ingress proxies forward nothing to the tailnet: spec.egressTargets needs connectionType egress or bidirectional",
        ));
    }
    let mut names = BTreeSet::new();
    for (i, t) in spec.egress_targets.iter().enumerate() {
        let tp = path.index(i);
        if let Err(e) = names::dns_label(&t.name) {
            errs.push(FieldError::invalid(&tp.child("name"), &t.name, e));
        } else if !names.insert(t.name.as_str()) {
            errs.push(FieldError::duplicate(&tp.child("name"), &t.name, "target names must be unique"));
        }
        match (&t.fqdn, &t.ip) {
            (Some(fqdn), None) => {
                if names::dns_subdomain(fqdn).is_err() || !fqdn.contains('.') {
                    errs.push(FieldError::invalid(
                        &tp.child("fqdn"),
                        fqdn,
                        "want a MagicDNS name such as \"db.tail1234.ts.net\"",
                    ));
                }
            }
            (None, Some(ip)) => {
                if ip.parse::<std::net::IpAddr>().is_err() {
                    errs.push(FieldError::invalid(&tp.child("ip"), ip, "want a Tailscale IP such as 100.64.0.1"));
                }
            }
            _ => errs.push(FieldError::required(&tp.child("fqdn"), "set exactly one of fqdn and ip")),
        }
        let pp = tp.child("ports");
        if t.ports.is_empty() {
            errs.push(FieldError::required(&pp, "list the TCP ports to forward, e.g. [5432]"));
        }
        let mut seen = BTreeSet::new();
        for (j, port) in t.ports.iter().enumerate() {
            if !(1..=65535).contains(port) {
                errs.push(FieldError::invalid(&pp.index(j), port, "want 1 to 65535"));
            } else if !seen.insert(*port) {
                errs.push(FieldError::duplicate(&pp.index(j), port, "each port is forwarded once"));
            }
        }
    }
}

impl Validate for VipServiceSpec {
    fn validate(&self, path: &FieldPath<'_>, errs: &mut Vec<FieldError>) {
        if let Some(name) = &self.name
            && let Err(e) = names::vip_service_name(name)
        {
            errs.push(FieldError::invalid(&path.child("name"), name, e));
        }
        let pp = path.child("ports");
        if self.ports.is_empty() {
            errs.push(FieldError::required(&pp, "list the ports the VIP service accepts, e.g. [\"tcp:443\"]"));
        }
        if self.ports.len() > MAX_LIST {
            errs.push(FieldError::too_many(&pp, self.ports.len(), MAX_LIST));
        }
        let mut parsed: Vec<names::VipPort> = Vec::new();
        for (i, p) in self.ports.iter().enumerate() {
            match names::vip_port(p) {
                Err(e) => errs.push(FieldError::invalid(&pp.index(i), p, e)),
                Ok(port) => {
                    if let Some(j) = parsed.iter().position(|q| q.overlaps(&port)) {
                        errs.push(FieldError::duplicate(
                            &pp.index(i),
                            p,
                            format!("overlaps {:?} at index {j}", self.ports[j]),
                        ));
                    }
                    parsed.push(port);
                }
            }
        }
        validate_tags(&self.tags, &path.child("tags"), errs);
    }
}

impl Validate for HealthCheck {
    fn validate(&self, path: &FieldPath<'_>, errs: &mut Vec<FieldError>) {
        if let Some(p) = &self.path
            && (!p.starts_with('/') || p.contains(char::is_whitespace))
        {
            errs.push(FieldError::invalid(
                &path.child("path"),
                p,
                "want an HTTP path starting with \"/\", e.g. \"/health\"",
            ));
        }
        if let Some(i) = &self.interval {
            validate_duration(i, &path.child("interval"), errs);
        }
        if let Some(t) = &self.timeout {
            validate_duration(t, &path.child("timeout"), errs);
        }
        for (name, v) in
            [("healthyThreshold", self.healthy_threshold), ("unhealthyThreshold", self.unhealthy_threshold)]
        {
            if let Some(n) = v
                && !(1..=100).contains(&n)
            {
                errs.push(FieldError::invalid(&path.child(name), n, "want 1 to 100"));
            }
        }
    }
}

impl Validate for LoadBalancing {
    fn validate(&self, path: &FieldPath<'_>, errs: &mut Vec<FieldError>) {
        if let Some(s) = &self.strategy
            && !STRATEGIES.contains(&s.as_str())
        {
            errs.push(FieldError::not_supported(&path.child("strategy"), s, STRATEGIES));
        }
        if let Some(hc) = &self.health_check {
            hc.validate(&path.child("healthCheck"), errs);
        }
    }
}

impl Validate for EndpointTemplate {
    fn validate(&self, path: &FieldPath<'_>, errs: &mut Vec<FieldError>) {
        validate_object_name(&self.tailnet, &path.child("tailnet"), "TailscaleTailnet", errs);
        for (k, v) in &self.labels {
            if let Err(e) = names::label_key(k) {
                errs.push(FieldError::invalid(&path.child("labels"), k, e));
            }
            if let Err(e) = names::label_value(v) {
                errs.push(FieldError::invalid(&path.child("labels").key(k), v, e));
            }
        }
        validate_tags(&self.tags, &path.child("tags"), errs);
        if let Some(proxy) = &self.proxy {
            proxy.validate(&path.child("proxy"), errs);
        }
        validate_ports(&self.ports, &path.child("ports"), errs);
    }
}

impl Validate for TailscaleServicesSpec {
    fn validate(&self, path: &FieldPath<'_>, errs: &mut Vec<FieldError>) {
        match &self.selector {
            Some(sel) => validate_label_selector(sel, &path.child("selector"), errs),
            None if self.endpoint_template.is_none() => errs.push(FieldError::required(
                &path.child("selector"),
                "a label selector for TailscaleEndpoints, e.g. {matchLabels: {service-type: web}}, is required unless spec.endpointTemplate is given",
            )),
            None => {}
        }
        if let Some(t) = &self.tailnet {
            validate_object_name(t, &path.child("tailnet"), "TailscaleTailnet", errs);
        }
        match &self.vip_service {
            Some(vip) => vip.validate(&path.child("vipService"), errs),
            None => errs.push(FieldError::required(
                &path.child("vipService").child("ports"),
                "list the ports the VIP service accepts, e.g. [\"tcp:443\"]",
            )),
        }
        if let Some(lb) = &self.load_balancing {
            lb.validate(&path.child("loadBalancing"), errs);
        }
        if let Some(t) = &self.endpoint_template {
            t.validate(&path.child("endpointTemplate"), errs);
            let egress_only = t.proxy.as_ref().and_then(|p| p.connection_type.as_deref()) == Some("egress");
            if egress_only && !self.serve.is_empty() {
                errs.push(FieldError::invalid(
                    &path.child("endpointTemplate").child("proxy").child("connectionType"),
                    "egress",
                    "egress proxies do not publish VIP services: spec.serve needs ingress or bidirectional proxies",
                ));
            }
        }
        validate_serve(self, &path.child("serve"), errs);
    }
}

/// Serve entries: one per VIP port, each on a TCP port of the VIP, with a backend we can reach.
fn validate_serve(spec: &TailscaleServicesSpec, path: &FieldPath<'_>, errs: &mut Vec<FieldError>) {
    if spec.serve.len() > MAX_LIST {
        errs.push(FieldError::too_many(path, spec.serve.len(), MAX_LIST));
    }
    let vip_ports: Vec<names::VipPort> = spec
        .vip_service
        .iter()
        .flat_map(|v| v.ports.iter())
        .filter_map(|p| names::vip_port(p).ok())
        .filter(|p| p.protocol == names::Protocol::Tcp)
        .collect();
    let mut seen = BTreeSet::new();
    for (i, entry) in spec.serve.iter().enumerate() {
        let ep = path.index(i);
        validate_serve_port(entry, &vip_ports, &ep, errs);
        if !seen.insert(entry.port) {
            errs.push(FieldError::duplicate(&ep.child("port"), entry.port, "each VIP port is served once"));
        }
    }
}

fn validate_serve_port(
    entry: &ServePort,
    vip_ports: &[names::VipPort],
    path: &FieldPath<'_>,
    errs: &mut Vec<FieldError>,
) {
    let port = u16::try_from(entry.port).ok().filter(|p| *p > 0);
    match port {
        None => errs.push(FieldError::invalid(&path.child("port"), entry.port, "want 1 to 65535")),
        Some(p) if !vip_ports.iter().any(|v| v.from <= p && p <= v.to) => errs.push(FieldError::invalid(
            &path.child("port"),
            p,
            format!("not a TCP port of spec.vipService.ports: add \"tcp:{p}\" there"),
        )),
        Some(_) => {}
    }
    if let Some(proto) = &entry.protocol
        && ServeProtocol::parse(Some(proto)).is_none()
    {
        errs.push(FieldError::not_supported(&path.child("protocol"), proto, ServeProtocol::NAMES));
    }
    let bp = path.child("backendRef");
    let r = &entry.backend_ref;
    match BackendKind::of(r) {
        Err(e) => {
            let field = if matches!(r.kind.as_deref(), None | Some("Service" | "Gateway")) { "group" } else { "kind" };
            let value = if field == "group" { r.group.clone() } else { r.kind.clone() };
            errs.push(FieldError::invalid(&bp.child(field), value.unwrap_or_default(), e));
        }
        Ok(BackendKind::Service) => {
            if let Err(e) = names::dns_label(&r.name) {
                errs.push(FieldError::invalid(&bp.child("name"), &r.name, e));
            }
        }
        Ok(BackendKind::Gateway) => {
            if let Err(e) = names::dns_subdomain(&r.name) {
                errs.push(FieldError::invalid(&bp.child("name"), &r.name, e));
            }
        }
    }
    if !(1..=65535).contains(&r.port) {
        errs.push(FieldError::invalid(&bp.child("port"), r.port, "want 1 to 65535"));
    }
}

/// Checks a route path prefix template: starts with `/`, only `{service}` and `{tailnet}`.
fn validate_path_prefix(prefix: &str, path: &FieldPath<'_>, errs: &mut Vec<FieldError>) {
    let want =
        "want an absolute path such as \"/tailscale/{service}/\"; the variables {service} and {tailnet} are expanded";
    let mut rest = prefix;
    let mut ok = prefix.starts_with('/') && !prefix.contains(|c: char| c.is_whitespace() || c == '?' || c == '#');
    while ok && let Some(open) = rest.find('{') {
        let after = &rest[open..];
        match after.find('}') {
            Some(close) if matches!(&after[..=close], "{service}" | "{tailnet}") => rest = &after[close + 1..],
            _ => ok = false,
        }
    }
    if ok && rest.contains('}') {
        ok = false;
    }
    if !ok {
        errs.push(FieldError::invalid(path, prefix, want));
    }
}

impl Validate for RouteGeneration {
    fn validate(&self, path: &FieldPath<'_>, errs: &mut Vec<FieldError>) {
        if let Some(p) = &self.path_prefix {
            validate_path_prefix(p, &path.child("pathPrefix"), errs);
        }
        if let Some(t) = &self.timeout {
            validate_duration(t, &path.child("timeout"), errs);
        }
    }
}

impl Validate for TailscaleGatewaySpec {
    fn validate(&self, path: &FieldPath<'_>, errs: &mut Vec<FieldError>) {
        let gp = path.child("gatewayRef");
        validate_object_name(&self.gateway_ref.name, &gp.child("name"), "Gateway (gateway.networking.k8s.io)", errs);
        if let Some(ns) = &self.gateway_ref.namespace
            && let Err(e) = names::dns_label(ns)
        {
            errs.push(FieldError::invalid(&gp.child("namespace"), ns, e));
        }
        let tp = path.child("tailnets");
        if self.tailnets.is_empty() {
            errs.push(FieldError::required(
                &tp,
                "list at least one TailscaleTailnet to expose, e.g. [{name: company-tailnet}]",
            ));
        }
        let mut seen = BTreeSet::new();
        for (i, t) in self.tailnets.iter().enumerate() {
            let p = tp.index(i);
            validate_object_name(&t.name, &p.child("name"), "TailscaleTailnet", errs);
            if !t.name.is_empty() && !seen.insert(t.name.as_str()) {
                errs.push(FieldError::duplicate(&p.child("name"), &t.name, "each tailnet may appear once"));
            }
            if let Some(sel) = &t.service_selector {
                validate_label_selector(sel, &p.child("serviceSelector"), errs);
            }
            if let Some(rg) = &t.route_generation {
                rg.validate(&p.child("routeGeneration"), errs);
            }
        }
        if let Some(rg) = &self.route_generation {
            rg.validate(&path.child("routeGeneration"), errs);
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::api::API_VERSION;

    struct View {
        tailnets: Vec<&'static str>,
        claims: Vec<(&'static str, ObjectKey)>,
    }

    impl ClusterView for View {
        fn tailnet_exists(&self, name: &str) -> bool {
            self.tailnets.contains(&name)
        }
        fn vip_claimants(&self, vip: &str) -> Vec<ObjectKey> {
            self.claims.iter().filter(|(v, _)| *v == vip).map(|(_, k)| k.clone()).collect()
        }
    }

    fn res(v: serde_json::Value) -> Resource {
        Resource::from_value(v).expect("building the resource")
    }

    fn services(spec: serde_json::Value) -> Resource {
        res(json!({"apiVersion": API_VERSION, "kind": "TailscaleServices",
            "metadata": {"name": "web", "namespace": "default"}, "spec": spec}))
    }

    fn errors(r: &Resource) -> Vec<String> {
        review(r, None, &NoCluster).errors.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn valid_services_pass() {
        let r = services(json!({
            "selector": {"matchLabels": {"service-type": "web"}},
            "vipService": {"name": "svc:web", "ports": ["tcp:80", "tcp:8000-8080", "udp:53"], "tags": ["tag:web"]},
            "loadBalancing": {"strategy": "least-request", "healthCheck": {"path": "/health", "interval": "10s", "timeout": "1s"}}
        }));
        assert_eq!(errors(&r), Vec::<String>::new());
    }

    #[test]
    fn every_bad_services_field_is_reported_at_once() {
        let r = services(json!({
            "selector": {"matchExpressions": [{"key": "a", "operator": "Near"}]},
            "vipService": {"name": "svc:Web", "ports": ["tcp:80", "http:80", "tcp:80", "tcp:70000"], "tags": ["web"]},
            "loadBalancing": {"strategy": "fastest", "healthCheck": {"path": "health", "interval": "500ms", "timeout": "soon"}}
        }));
        let e = errors(&r);
        let expect = [
            "spec.selector.matchExpressions[0].operator: Unsupported value: \"Near\"",
            "spec.vipService.name: Invalid value: \"svc:Web\"",
            "spec.vipService.ports[1]: Invalid value: \"http:80\": want \"tcp:PORT\", \"udp:PORT\" or \"tcp:FROM-TO\"",
            "spec.vipService.ports[2]: Duplicate value: \"tcp:80\"",
            "spec.vipService.ports[3]: Invalid value: \"tcp:70000\"",
            "spec.vipService.tags[0]: Invalid value: \"web\"",
            "spec.loadBalancing.strategy: Unsupported value: \"fastest\"",
            "spec.loadBalancing.healthCheck.path: Invalid value: \"health\"",
            "spec.loadBalancing.healthCheck.interval: Invalid value: \"500ms\": want a duration of at least 1s",
            "spec.loadBalancing.healthCheck.timeout: Invalid value: \"soon\"",
        ];
        for want in expect {
            assert!(e.iter().any(|got| got.starts_with(want)), "missing {want:?} in {e:#?}");
        }
        assert_eq!(e.len(), expect.len(), "{e:#?}");
    }

    #[test]
    fn selector_required_unless_template() {
        let r = services(json!({"vipService": {"ports": ["tcp:80"]}}));
        assert!(errors(&r).iter().any(|e| e.starts_with("spec.selector: Required value")));
        let t = services(
            json!({"vipService": {"ports": ["tcp:80"]}, "endpointTemplate": {"tailnet": "t", "tags": ["tag:x"]}}),
        );
        assert_eq!(errors(&t), Vec::<String>::new());
        let bad_t = services(
            json!({"vipService": {"ports": ["tcp:80"]}, "endpointTemplate": {"tailnet": "", "ports": [{"port": 0}]}}),
        );
        let e = errors(&bad_t);
        assert!(e.iter().any(|e| e.starts_with("spec.endpointTemplate.tailnet: Required value")), "{e:?}");
        assert!(e.iter().any(|e| e.starts_with("spec.endpointTemplate.ports[0].port: Invalid value: \"0\"")), "{e:?}");
    }

    #[test]
    fn vip_name_conflict_and_immutability() {
        let r = services(json!({"selector": {"matchLabels": {"a": "b"}}, "vipService": {"ports": ["tcp:80"]}}));
        let view = View {
            tailnets: vec![],
            claims: vec![("svc:web", ObjectKey::new("other", "web")), ("svc:web", ObjectKey::new("default", "web"))],
        };
        let v = review(&r, None, &view);
        assert_eq!(v.errors.len(), 1, "{:?}", v.errors);
        assert!(v.errors[0].to_string().contains("already claimed by TailscaleServices other/web"), "{}", v.errors[0]);

        let old = services(
            json!({"selector": {"matchLabels": {"a": "b"}}, "vipService": {"name": "svc:old", "ports": ["tcp:80"]}}),
        );
        let v = review(&r, Some(&old), &NoCluster);
        assert!(
            v.errors.iter().any(|e| e
                .to_string()
                .starts_with("spec.vipService.name: Invalid value: \"svc:web\": field is immutable")),
            "{:?}",
            v.errors
        );
        let same = review(&old, Some(&old), &NoCluster);
        assert!(same.allowed(), "{:?}", same.errors);
    }

    #[test]
    fn endpoints_rules() {
        let ok = res(json!({"apiVersion": API_VERSION, "kind": "TailscaleEndpoints", "metadata": {"name": "e"},
            "spec": {"tailnet": "t", "tags": ["tag:a"], "proxy": {"replicas": 2, "connectionType": "ingress"}, "ports": [{"port": 80}, {"port": 80, "protocol": "UDP"}]}}));
        assert_eq!(errors(&ok), Vec::<String>::new());
        let v = review(&ok, None, &View { tailnets: vec![], claims: vec![] });
        assert!(v.allowed());
        assert!(v.warnings.iter().any(|w| w.contains("TailscaleTailnet \"t\" does not exist")), "{:?}", v.warnings);

        let bad = res(json!({"apiVersion": API_VERSION, "kind": "TailscaleEndpoints", "metadata": {"name": "e"},
            "spec": {"tailnet": "", "tags": ["tag:a", "tag:a"], "proxy": {"replicas": 101, "connectionType": "sideways"},
                     "ports": [{"port": 80}, {"port": 80, "protocol": "TCP"}, {"port": 0, "protocol": "SCTP"}]}}));
        let e = errors(&bad);
        for want in [
            "spec.tailnet: Required value",
            "spec.tags[1]: Duplicate value: \"tag:a\"",
            "spec.proxy.replicas: Invalid value: \"101\"",
            "spec.proxy.connectionType: Unsupported value: \"sideways\"",
            "spec.ports[1]: Duplicate value: \"80/TCP\"",
            "spec.ports[2].port: Invalid value: \"0\"",
            "spec.ports[2].protocol: Unsupported value: \"SCTP\"",
        ] {
            assert!(e.iter().any(|got| got.starts_with(want)), "missing {want:?} in {e:#?}");
        }
        assert_eq!(e.len(), 7, "{e:#?}");

        let targets = |ct: &str| {
            res(json!({"apiVersion": API_VERSION, "kind": "TailscaleEndpoints", "metadata": {"name": "e"},
                "spec": {"tailnet": "t", "proxy": {"connectionType": ct}, "egressTargets": [
                    {"name": "db", "fqdn": "db.tail1.ts.net", "ports": [5432]},
                    {"name": "db", "ip": "not-an-ip", "ports": [0, 80, 80]},
                    {"name": "Bad_Name", "fqdn": "nodots", "ip": "100.64.0.1", "ports": []}]}}))
        };
        let e = errors(&targets("egress"));
        for want in [
            "spec.egressTargets[1].name: Duplicate value: \"db\"",
            "spec.egressTargets[1].ip: Invalid value: \"not-an-ip\"",
            "spec.egressTargets[1].ports[0]: Invalid value: \"0\"",
            "spec.egressTargets[1].ports[2]: Duplicate value: \"80\"",
            "spec.egressTargets[2].name: Invalid value: \"Bad_Name\"",
            "spec.egressTargets[2].fqdn: Required value: set exactly one of fqdn and ip",
            "spec.egressTargets[2].ports: Required value",
        ] {
            assert!(e.iter().any(|got| got.starts_with(want)), "missing {want:?} in {e:#?}");
        }
        assert_eq!(e.len(), 7, "{e:#?}");
        let e = errors(&targets("ingress"));
        assert!(
            e.iter().any(|got| got
                .starts_with("spec.proxy.connectionType: Invalid value: \"ingress\": ingress proxies forward nothing")),
            "{e:#?}"
        );
    }

    #[test]
    fn tailnet_and_gateway_rules() {
        let bad_tn = res(json!({"apiVersion": API_VERSION, "kind": "TailscaleTailnet", "metadata": {"name": "t"},
            "spec": {"tailnet": "has space", "oauthSecretRef": {"name": ""}, "apiURL": "ftp://x", "tags": ["nope"]}}));
        let e = errors(&bad_tn);
        assert_eq!(e.len(), 4, "{e:#?}");
        let ok_tn = res(json!({"apiVersion": API_VERSION, "kind": "TailscaleTailnet", "metadata": {"name": "t"},
            "spec": {"oauthSecretRef": {"name": "ts-oauth", "namespace": "tailscale"}}}));
        assert_eq!(errors(&ok_tn), Vec::<String>::new());

        let gw = res(
            json!({"apiVersion": API_VERSION, "kind": "TailscaleGateway", "metadata": {"name": "g", "namespace": "default"},
            "spec": {"gatewayRef": {"name": "eg"}, "tailnets": [{"name": "t"}, {"name": "t"}],
                     "routeGeneration": {"pathPrefix": "/ts/{svc}/", "timeout": "x"}}}),
        );
        let e = errors(&gw);
        for want in [
            "spec.tailnets[1].name: Duplicate value",
            "spec.routeGeneration.pathPrefix: Invalid value: \"/ts/{svc}/\"",
            "spec.routeGeneration.timeout: Invalid value: \"x\"",
        ] {
            assert!(e.iter().any(|got| got.starts_with(want)), "missing {want:?} in {e:#?}");
        }
        let mut errs = Vec::new();
        validate_path_prefix("/tailscale/{tailnet}/{service}/", &FieldPath::new("p"), &mut errs);
        validate_path_prefix("/x/", &FieldPath::new("p"), &mut errs);
        assert!(errs.is_empty(), "{errs:?}");
        validate_path_prefix("x/", &FieldPath::new("p"), &mut errs);
        validate_path_prefix("/a}", &FieldPath::new("p"), &mut errs);
        assert_eq!(errs.len(), 2);
    }

    #[test]
    fn metadata_rules() {
        let r = res(json!({"apiVersion": API_VERSION, "kind": "TailscaleServices",
            "metadata": {"name": "Bad_Name", "labels": {"ok": "has space"}},
            "spec": {"selector": {"matchLabels": {"a": "b"}}, "vipService": {"name": "svc:x", "ports": ["tcp:1"]}}}));
        let e = errors(&r);
        assert!(e.iter().any(|e| e.starts_with("metadata.name: Invalid value: \"Bad_Name\"")), "{e:?}");
        assert!(e.iter().any(|e| e.starts_with("metadata.labels[ok]: Invalid value: \"has space\"")), "{e:?}");
    }
}

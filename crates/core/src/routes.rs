//! What Envoy Gateway does not tell the extension: which port and weight each backendRef of a
//! route rule asks for. Envoy Gateway names the cluster of rule `i` of a route
//! `<kind>/<namespace>/<name>/rule/<i>` and sends the extension only that cluster and the objects
//! the rule's backendRefs name, so the extension reads the routes themselves (watched in a
//! cluster, from the folder in local mode) and looks the rule up by the cluster's name.

use serde_json::Value;

use super::dataplane::GATEWAY_API_GROUP;
use crate::api::GROUP;
use crate::{FieldError, FieldPath};

/// Route kinds whose backendRefs Envoy Gateway hands to the extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RouteKind {
    /// `HTTPRoute`.
    Http,
    /// `GRPCRoute`.
    Grpc,
}

impl RouteKind {
    /// Both kinds.
    pub const ALL: [RouteKind; 2] = [RouteKind::Http, RouteKind::Grpc];

    /// The Kubernetes kind.
    pub fn kind(self) -> &'static str {
        match self {
            RouteKind::Http => "HTTPRoute",
            RouteKind::Grpc => "GRPCRoute",
        }
    }

    /// The resource (plural) name.
    pub fn plural(self) -> &'static str {
        match self {
            RouteKind::Http => "httproutes",
            RouteKind::Grpc => "grpcroutes",
        }
    }

    /// The kind of a Gateway API object, when it is a route kind we read.
    pub fn of(api_version: &str, kind: &str) -> Option<Self> {
        let (group, _) = api_version.split_once('/')?;
        if group != GATEWAY_API_GROUP {
            return None;
        }
        RouteKind::ALL.into_iter().find(|k| k.kind() == kind)
    }
}

/// Gateway API route kinds Envoy Gateway translates without handing their backends to its
/// extensions. In v1.9.1 (`internal/gatewayapi/route.go`) the TCPRoute, TLSRoute and UDPRoute
/// translations drop the resource of a custom backend (`processBackendRef` returns it, they
/// discard it), so no hook sees it: the route is Accepted, its refs Resolved, and its cluster
/// has no endpoints. Traffic would vanish without a word, so these routes may not name our kinds.
pub const UNHANDED_ROUTE_KINDS: [&str; 3] = ["TCPRoute", "TLSRoute", "UDPRoute"];

/// Why a route may not be admitted as it is: one error per backendRef naming our group in a
/// route of a kind in [`UNHANDED_ROUTE_KINDS`], at the backendRef's field. Empty for every other
/// object, and for such a route without one. The webhook, `check` and local mode all ask this.
pub fn refused_backend_refs(api_version: &str, kind: &str, route: &Value) -> Vec<FieldError> {
    let gateway_api = api_version.split_once('/').is_some_and(|(group, _)| group == GATEWAY_API_GROUP);
    if !gateway_api || !UNHANDED_ROUTE_KINDS.contains(&kind) {
        return Vec::new();
    }
    let rules = route.pointer("/spec/rules").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    let (spec, mut errors) = (FieldPath::new("spec"), Vec::new());
    let rules_path = spec.child("rules");
    for (i, rule) in rules.iter().enumerate() {
        let refs = rule.get("backendRefs").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
        let rule_path = rules_path.index(i);
        let refs_path = rule_path.child("backendRefs");
        for (j, r) in refs.iter().enumerate() {
            if r.get("group").and_then(Value::as_str) != Some(GROUP) {
                continue;
            }
            let target = r.get("kind").and_then(Value::as_str).unwrap_or("object");
            let name = r.get("name").and_then(Value::as_str).unwrap_or_default();
            errors.push(FieldError::forbidden(
                &refs_path.index(j),
                format!(
                    "{target} {name:?}: Envoy Gateway hands only HTTPRoute and GRPCRoute backends to \
                     tailscale-gateway; a {kind} to it would be accepted and carry no traffic (its \
                     cluster gets no endpoints). Route it with an HTTPRoute or GRPCRoute"
                ),
            ));
        }
    }
    errors
}

/// One backendRef of a rule that names one of our kinds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteBackend {
    /// `TailscaleServices` or `TailscaleEndpoints`.
    pub kind: String,
    /// Object name.
    pub name: String,
    /// Object namespace (the route's when the backendRef names none).
    pub namespace: String,
    /// The port asked for, when given.
    pub port: Option<u16>,
    /// Gateway API weight (default 1; 0 sends no traffic).
    pub weight: u32,
}

/// Envoy Gateway's cluster name for rule `rule` of a route.
pub fn rule_cluster_name(kind: RouteKind, namespace: &str, name: &str, rule: usize) -> String {
    format!("{}/{namespace}/{name}/rule/{rule}", kind.kind().to_ascii_lowercase())
}

/// The backendRefs of our kinds in every rule of a route object, by the rule's cluster name.
/// Rules without one are left out; backendRefs that do not parse are skipped.
pub fn rule_backends(kind: RouteKind, route: &Value) -> Vec<(String, Vec<RouteBackend>)> {
    let s = |v: &Value, p: &str| v.pointer(p).and_then(Value::as_str).map(str::to_string);
    let namespace = s(route, "/metadata/namespace").unwrap_or_else(|| "default".into());
    let name = s(route, "/metadata/name").unwrap_or_default();
    let rules = route.pointer("/spec/rules").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    let mut out = Vec::new();
    for (i, rule) in rules.iter().enumerate() {
        let refs = rule.get("backendRefs").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
        let ours: Vec<RouteBackend> = refs
            .iter()
            .filter(|r| s(r, "/group").as_deref() == Some(GROUP))
            .filter_map(|r| {
                Some(RouteBackend {
                    kind: s(r, "/kind")?,
                    name: s(r, "/name")?,
                    namespace: s(r, "/namespace").unwrap_or_else(|| namespace.clone()),
                    port: r.get("port").and_then(Value::as_u64).and_then(|p| u16::try_from(p).ok()),
                    weight: r.get("weight").and_then(Value::as_u64).map_or(1, |w| u32::try_from(w).unwrap_or(u32::MAX)),
                })
            })
            .collect();
        if !ours.is_empty() {
            out.push((rule_cluster_name(kind, &namespace, &name, i), ours));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn rules_are_keyed_by_envoy_gateways_cluster_names() {
        let route = json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": "web", "namespace": "apps"},
            "spec": {"rules": [
                {"backendRefs": [{"name": "plain-service", "port": 80}]},
                {"backendRefs": [
                    {"group": "gateway.tailscale.com", "kind": "TailscaleServices", "name": "web", "port": 443, "weight": 3},
                    {"group": "gateway.tailscale.com", "kind": "TailscaleServices", "name": "api", "namespace": "other"},
                    {"group": "gateway.tailscale.com", "name": "no-kind"}]}]}});
        assert_eq!(RouteKind::of("gateway.networking.k8s.io/v1", "HTTPRoute"), Some(RouteKind::Http));
        assert_eq!(RouteKind::of("gateway.networking.k8s.io/v1", "TCPRoute"), None);
        assert_eq!(RouteKind::of("v1", "HTTPRoute"), None);
        assert_eq!(
            rule_backends(RouteKind::Http, &route),
            vec![(
                "httproute/apps/web/rule/1".to_string(),
                vec![
                    RouteBackend {
                        kind: "TailscaleServices".into(),
                        name: "web".into(),
                        namespace: "apps".into(),
                        port: Some(443),
                        weight: 3
                    },
                    RouteBackend {
                        kind: "TailscaleServices".into(),
                        name: "api".into(),
                        namespace: "other".into(),
                        port: None,
                        weight: 1
                    },
                ]
            )]
        );
        assert_eq!(rule_cluster_name(RouteKind::Grpc, "a", "b", 0), "grpcroute/a/b/rule/0");
        assert!(rule_backends(RouteKind::Grpc, &json!({"spec": "garbage"})).is_empty());
    }

    #[test]
    fn routes_envoy_gateway_keeps_from_the_extension_may_not_name_our_kinds() {
        let route = json!({"spec": {"rules": [
            {"backendRefs": [{"name": "db", "port": 5432}]},
            {"backendRefs": [
                {"name": "plain", "port": 1},
                {"group": "gateway.tailscale.com", "kind": "TailscaleServices", "name": "db", "port": 5432}]}]}});
        for kind in UNHANDED_ROUTE_KINDS {
            let errors = refused_backend_refs("gateway.networking.k8s.io/v1alpha2", kind, &route);
            let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
            assert_eq!(text.len(), 1, "{text:?}");
            assert!(
                text[0].starts_with(&format!(
                    "spec.rules[1].backendRefs[1]: Forbidden: TailscaleServices \"db\": Envoy Gateway hands only \
                     HTTPRoute and GRPCRoute backends to tailscale-gateway; a {kind} to it"
                )),
                "{text:?}"
            );
        }
        for (api_version, kind) in [
            ("gateway.networking.k8s.io/v1", "HTTPRoute"),
            ("gateway.networking.k8s.io/v1", "GRPCRoute"),
            ("example.com/v1", "TCPRoute"),
        ] {
            assert!(refused_backend_refs(api_version, kind, &route).is_empty(), "{kind} of {api_version}");
        }
        let garbage = json!({"spec": {"rules": "no"}});
        assert!(refused_backend_refs("gateway.networking.k8s.io/v1alpha2", "TCPRoute", &garbage).is_empty());
    }
}

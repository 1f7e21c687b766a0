use kube_derive::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::Condition;

/// Identity-aware rules for the requests Envoy sends along Gateway API routes: who may call
/// what, matched on the caller's tailnet identity (as the ingress proxies learn it from
/// tailscaled) and on the request, with actions to allow, deny, change headers, or set the
/// route's timeout and retries. A Gateway API policy: `targetRefs` name what it attaches to.
///
/// Envoy asks the server about each request on a targeted route (ext_authz), so a policy change
/// applies to the next request.
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[x_kube(crates(kube_core = "::kube_core"))]
#[kube(
    crates(kube_core = "::kube_core", kube = "::kube_derive"),
    group = "gateway.tailscale.com",
    version = "v1alpha1",
    kind = "TailscaleRoutePolicy",
    namespaced,
    shortname = "tsrp",
    category = "tailscale",
    derive = "PartialEq",
    derive = "Default",
    status = "TailscaleRoutePolicyStatus",
    printcolumn(name = "TARGETS", type_ = "string", json_path = ".spec.targetRefs[*].name"),
    printcolumn(name = "DEFAULT", type_ = "string", json_path = ".spec.defaultAction"),
    printcolumn(
        name = "ACCEPTED",
        type_ = "string",
        json_path = ".status.ancestors[?(@.controllerName==\"gateway.tailscale.com/tailscale-gateway\")].conditions[?(@.type==\"Accepted\")].reason"
    ),
    printcolumn(name = "AGE", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct TailscaleRoutePolicySpec {
    /// What the policy attaches to: a Gateway, an HTTPRoute or GRPCRoute
    /// (`gateway.networking.k8s.io`), or a TailscaleServices (`gateway.tailscale.com`), in the
    /// policy's namespace. `sectionName` picks a Gateway listener.
    #[serde(default)]
    #[schemars(length(max = 16))]
    pub target_refs: Vec<PolicyTargetRef>,
    /// Evaluated in order: the first rule with a matching `matches` entry decides.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub rules: Vec<PolicyRule>,
    /// `Allow` (default) or `Deny`: what happens to a request no rule matches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self in ['Allow', 'Deny']").message("defaultAction must be Allow or Deny"))]
    pub default_action: Option<String>,
}

/// A local policy target reference, as Gateway API's `LocalPolicyTargetReferenceWithSectionName`.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[x_kube(crates(kube_core = "::kube_core"))]
#[serde(rename_all = "camelCase")]
pub struct PolicyTargetRef {
    /// API group of the target.
    pub group: String,
    /// Kind of the target.
    pub kind: String,
    /// Name of the target, in the policy's namespace.
    pub name: String,
    /// A listener of a Gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub section_name: Option<String>,
}

/// One rule: any of `matches` (all of one entry's conditions) selects `action`. A rule without
/// matches applies to every request.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[x_kube(crates(kube_core = "::kube_core"))]
#[serde(rename_all = "camelCase")]
pub struct PolicyRule {
    /// A name for logs, metrics and denials (a DNS label).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Alternatives: the rule applies when one of them matches.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub matches: Vec<PolicyMatch>,
    /// What happens to a matching request.
    pub action: PolicyAction,
}

/// Conditions that must all hold.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[x_kube(crates(kube_core = "::kube_core"))]
#[serde(rename_all = "camelCase")]
pub struct PolicyMatch {
    /// Who is calling, as the tailnet says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<IdentityMatch>,
    /// The request path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathMatch>,
    /// The HTTP method (`GET`, `POST`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Request headers that must have these exact values (names are case-insensitive).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderMatch>,
}

/// The caller's tailnet identity. Within a field any value matches; across fields all must.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[x_kube(crates(kube_core = "::kube_core"))]
#[serde(rename_all = "camelCase")]
pub struct IdentityMatch {
    /// Login names of tailnet users (`alice@example.com`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<String>,
    /// Application capabilities granted to the caller by the tailnet policy
    /// (`example.com/cap/admin`): how groups, tags and devices are matched, through grants.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub capabilities: Vec<String>,
}

/// A path condition.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[x_kube(crates(kube_core = "::kube_core"))]
#[serde(rename_all = "camelCase")]
pub struct PathMatch {
    /// `PathPrefix` (default: whole segments, as Gateway API) or `Exact`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<String>,
    /// An absolute path.
    pub value: String,
}

/// A header condition.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[x_kube(crates(kube_core = "::kube_core"))]
#[serde(rename_all = "camelCase")]
pub struct HeaderMatch {
    /// Header name.
    pub name: String,
    /// Exact value.
    pub value: String,
}

/// What a rule does.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[x_kube(crates(kube_core = "::kube_core"))]
#[serde(rename_all = "camelCase")]
pub struct PolicyAction {
    /// `Allow` or `Deny`.
    #[serde(rename = "type")]
    #[schemars(length(max = 5))]
    #[x_kube(validation = Rule::new("self in ['Allow', 'Deny']").message("action type must be Allow or Deny"))]
    pub type_: String,
    /// For `Deny`: the answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deny: Option<DenyAction>,
    /// For `Allow`: headers to set, add or remove on the way to the backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_headers: Option<HeaderModifier>,
    /// For `Allow`: the route's timeout (a Go duration).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// For `Allow`: retries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryAction>,
    /// For `Allow`: send the request to this TailscaleServices (in the policy's namespace)
    /// instead of the route's own backends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_ref: Option<PolicyBackendRef>,
}

/// Another of our backends.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[x_kube(crates(kube_core = "::kube_core"))]
#[serde(rename_all = "camelCase")]
pub struct PolicyBackendRef {
    /// `gateway.tailscale.com` (default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// `TailscaleServices` (default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Name, in the policy's namespace.
    pub name: String,
}

/// A denial's answer.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[x_kube(crates(kube_core = "::kube_core"))]
#[serde(rename_all = "camelCase")]
pub struct DenyAction {
    /// HTTP status, 400-599 (default 403).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_code: Option<i32>,
    /// The response body, for the caller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Header changes, as Gateway API's `HTTPHeaderFilter`.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[x_kube(crates(kube_core = "::kube_core"))]
#[serde(rename_all = "camelCase")]
pub struct HeaderModifier {
    /// Replace or create these headers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub set: Vec<HeaderValue>,
    /// Append these values.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub add: Vec<HeaderValue>,
    /// Remove these headers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

/// A header name and value.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq)]
#[x_kube(crates(kube_core = "::kube_core"))]
#[serde(rename_all = "camelCase")]
pub struct HeaderValue {
    /// Header name.
    pub name: String,
    /// Header value.
    pub value: String,
}

/// Retries of an allowed request.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[x_kube(crates(kube_core = "::kube_core"))]
#[serde(rename_all = "camelCase")]
pub struct RetryAction {
    /// Retries after the first attempt, 1-10.
    pub attempts: i32,
    /// Timeout of each attempt (a Go duration).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try_timeout: Option<String>,
    /// Envoy retry conditions (`5xx`, `reset`, `connect-failure`, ...); default `5xx,reset,connect-failure`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub on: Vec<String>,
}

/// Observed state: per target, as Gateway API's `PolicyStatus`.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[x_kube(crates(kube_core = "::kube_core"))]
#[serde(rename_all = "camelCase")]
pub struct TailscaleRoutePolicyStatus {
    /// One entry per target.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ancestors: Vec<PolicyAncestorStatus>,
}

/// What a status entry is about: Gateway API's `ParentReference`.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq)]
#[x_kube(crates(kube_core = "::kube_core"))]
#[serde(rename_all = "camelCase")]
pub struct AncestorRef {
    /// API group.
    #[serde(default)]
    pub group: String,
    /// Kind.
    #[serde(default)]
    pub kind: String,
    /// Name.
    pub name: String,
    /// Namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Listener or section.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub section_name: Option<String>,
    /// Port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i32>,
}

/// The policy's state on one target.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[x_kube(crates(kube_core = "::kube_core"))]
#[serde(rename_all = "camelCase")]
pub struct PolicyAncestorStatus {
    /// The target (ours), or the Gateway Envoy Gateway attached the policy through (its entries).
    pub ancestor_ref: AncestorRef,
    /// Who wrote this entry.
    pub controller_name: String,
    /// `Accepted`: True, or False with reason `Conflicted`, `TargetNotFound` or `Invalid`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

use kube_derive::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::Condition;

/// Ties an Envoy Gateway `Gateway` to tailnets and generates routes to TailscaleServices.
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[x_kube(crates(kube_core = "::kube_core"))]
#[kube(
    crates(kube_core = "::kube_core", kube = "::kube_derive"),
    group = "gateway.tailscale.com",
    version = "v1alpha1",
    kind = "TailscaleGateway",
    namespaced,
    shortname = "tsgw",
    category = "tailscale",
    derive = "PartialEq",
    derive = "Default",
    status = "TailscaleGatewayStatus",
    printcolumn(name = "GATEWAY", type_ = "string", json_path = ".spec.gatewayRef.name"),
    printcolumn(name = "SERVICES", type_ = "integer", json_path = ".status.serviceCount"),
    printcolumn(name = "READY", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "AGE", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct TailscaleGatewaySpec {
    /// The Envoy Gateway `Gateway` (gateway.networking.k8s.io) this attaches to.
    pub gateway_ref: GatewayRef,
    /// Tailnets whose services this gateway exposes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tailnets: Vec<GatewayTailnet>,
    /// How routes are generated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route_generation: Option<RouteGeneration>,
}

/// Reference to a Gateway API `Gateway`.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[x_kube(crates(kube_core = "::kube_core"))]
#[serde(rename_all = "camelCase")]
pub struct GatewayRef {
    /// Gateway name.
    pub name: String,
    /// Gateway namespace; defaults to this object's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Optional listener (section) name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub section_name: Option<String>,
}

/// A tailnet exposed through the gateway.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[x_kube(crates(kube_core = "::kube_core"))]
#[serde(rename_all = "camelCase")]
pub struct GatewayTailnet {
    /// TailscaleTailnet name.
    pub name: String,
    /// Which TailscaleServices (in this namespace) to expose. Empty selects all of the tailnet's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_selector: Option<super::LabelSelector>,
    /// Overrides the gateway-wide route generation for this tailnet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route_generation: Option<RouteGeneration>,
}

/// Route generation settings.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[x_kube(crates(kube_core = "::kube_core"))]
#[serde(rename_all = "camelCase")]
pub struct RouteGeneration {
    /// Path prefix of generated routes; `{service}` and `{tailnet}` are expanded.
    /// Defaults to `/tailscale/{service}/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    /// Route timeout, a duration (e.g. `30s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
}

/// Observed state of a TailscaleGateway.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[x_kube(crates(kube_core = "::kube_core"))]
#[serde(rename_all = "camelCase")]
pub struct TailscaleGatewayStatus {
    /// `Ready` and friends.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Services the gateway exposes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<ExposedServiceStatus>,
    /// Number of exposed services (for printer columns).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_count: Option<i32>,
    /// Generation the status was computed for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// A service exposed through the gateway.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[x_kube(crates(kube_core = "::kube_core"))]
#[serde(rename_all = "camelCase")]
pub struct ExposedServiceStatus {
    /// TailscaleServices name.
    pub name: String,
    /// Tailnet.
    pub tailnet: String,
    /// Generated path prefix.
    pub path_prefix: String,
    /// Envoy cluster name.
    pub cluster: String,
}

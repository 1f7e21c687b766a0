use std::collections::BTreeMap;

use kube_derive::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::{Condition, LabelSelector, PortSpec, ProxySpec};

/// A service in the tailnet: selects TailscaleEndpoints by label like a Service selects Pods and
/// owns a Tailscale VIP service (`svc:NAME`).
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[x_kube(crates(kube_core = "::kube_core"))]
#[kube(
    crates(kube_core = "::kube_core", kube = "::kube_derive"),
    group = "gateway.tailscale.com",
    version = "v1alpha1",
    kind = "TailscaleServices",
    plural = "tailscaleservices",
    namespaced,
    shortname = "tssvc",
    category = "tailscale",
    derive = "PartialEq",
    derive = "Default",
    status = "TailscaleServicesStatus",
    printcolumn(name = "VIP", type_ = "string", json_path = ".status.vipService.name"),
    printcolumn(name = "ENDPOINTS", type_ = "integer", json_path = ".status.endpointCount"),
    printcolumn(name = "HEALTHY", type_ = "integer", json_path = ".status.vipService.healthyBackends"),
    printcolumn(name = "DNS", type_ = "string", json_path = ".status.vipService.dnsName", priority = 1),
    printcolumn(
        name = "PUBLISHED",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Published\")].status",
        priority = 1
    ),
    printcolumn(name = "AGE", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
// On the spec, not the object: kube-derive does not pass the crate paths on to the object's schema.
#[x_kube(validation = Rule::new("has(self.selector) || has(self.endpointTemplate)").message("spec.selector is required unless spec.endpointTemplate is given"))]
#[serde(rename_all = "camelCase")]
pub struct TailscaleServicesSpec {
    /// Selects TailscaleEndpoints in the same namespace by label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
    /// TailscaleTailnet of the VIP service. Defaults to the tailnet of the selected endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tailnet: Option<String>,
    /// The Tailscale VIP service this resource owns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vip_service: Option<VipServiceSpec>,
    /// How traffic is spread over the selected endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancing: Option<LoadBalancing>,
    /// Provision a TailscaleEndpoints from this template when none matches the selector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_template: Option<Box<EndpointTemplate>>,
    /// What this cluster publishes on the VIP service, one entry per VIP port. The selected
    /// ingress proxies accept the VIP's connections on these ports and forward them to the
    /// backend; they advertise the VIP only while at least one entry is served. Empty: this
    /// cluster only reaches the VIP (through egress proxies) and another cluster publishes it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    #[x_kube(validation = Rule::new("self.all(s, self.exists_one(t, t.port == s.port))").message("serve ports must be unique"))]
    pub serve: Vec<ServePort>,
}

/// What the VIP service serves on one of its TCP ports.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[x_kube(crates(kube_core = "::kube_core"))]
#[serde(rename_all = "camelCase")]
pub struct ServePort {
    /// The VIP port, one of `vipService.ports` (TCP).
    #[x_kube(validation = Rule::new("self >= 1 && self <= 65535").message("port must be between 1 and 65535"))]
    pub port: i32,
    /// `TCP` (default): forward the connection as it is (`tailscale serve --tcp`); `HTTP`: proxy
    /// HTTP; `HTTPS`: terminate TLS with the tailnet's MagicDNS certificate for the VIP's name
    /// (HTTPS must be enabled in the tailnet) and proxy HTTP to the backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self in ['TCP', 'HTTP', 'HTTPS']").message("protocol must be TCP, HTTP or HTTPS"))]
    pub protocol: Option<String>,
    /// Where the traffic goes: a Service, or a Gateway of Envoy Gateway (its Envoy Service).
    pub backend_ref: ServeBackendRef,
}

/// A backend in this cluster, shaped like Gateway API's `BackendObjectReference`.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[x_kube(crates(kube_core = "::kube_core"))]
#[serde(rename_all = "camelCase")]
pub struct ServeBackendRef {
    /// `""` (core, default) for a Service, `gateway.networking.k8s.io` for a Gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// `Service` (default) or `Gateway`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Name of the Service or Gateway.
    pub name: String,
    /// Namespace; defaults to this object's. Only this object's namespace is accepted (a
    /// cross-namespace reference would need a ReferenceGrant).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The Service port, or the Gateway listener's port.
    #[x_kube(validation = Rule::new("self >= 1 && self <= 65535").message("port must be between 1 and 65535"))]
    pub port: i32,
}

/// A Tailscale VIP service.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[x_kube(crates(kube_core = "::kube_core"))]
#[serde(rename_all = "camelCase")]
pub struct VipServiceSpec {
    /// `svc:` + a DNS label. Defaults to `svc:<metadata.name>`. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self == oldSelf").message("vipService.name is immutable"))]
    pub name: Option<String>,
    /// `tcp:PORT`, `udp:PORT` or `tcp:FROM-TO`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<String>,
    /// Tags of the VIP service (`tag:NAME`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Free-form comment stored on the VIP service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

/// Load balancing across the selected endpoints.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[x_kube(crates(kube_core = "::kube_core"))]
#[serde(rename_all = "camelCase")]
pub struct LoadBalancing {
    /// One of `round-robin` (default), `least-request`, `random`, `ring-hash`, `maglev`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<String>,
    /// Active health checking of the backends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
}

/// Active HTTP health check.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[x_kube(crates(kube_core = "::kube_core"))]
#[serde(rename_all = "camelCase")]
pub struct HealthCheck {
    /// HTTP path, starting with `/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Interval between checks, a duration of at least 1s (default `10s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    /// Timeout of one check, a duration of at least 1s (default `5s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// Failed checks before a backend is unhealthy (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unhealthy_threshold: Option<i32>,
    /// Passed checks before a backend is healthy again (default 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy_threshold: Option<i32>,
}

/// Template of an auto-provisioned TailscaleEndpoints.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[x_kube(crates(kube_core = "::kube_core"))]
#[serde(rename_all = "camelCase")]
pub struct EndpointTemplate {
    /// TailscaleTailnet the devices join.
    pub tailnet: String,
    /// Extra labels; the selector's matchLabels are always added.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Device tags.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Proxy settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<Box<ProxySpec>>,
    /// Ports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortSpec>,
}

/// Observed state of a TailscaleServices.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[x_kube(crates(kube_core = "::kube_core"))]
#[serde(rename_all = "camelCase")]
pub struct TailscaleServicesStatus {
    /// `Ready`, `VIPServiceReady` and friends.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The TailscaleEndpoints the selector matches.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub selected_endpoints: Vec<SelectedEndpointsStatus>,
    /// Number of selected TailscaleEndpoints (for printer columns).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_count: Option<i32>,
    /// The VIP service as the Tailscale API reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vip_service: Option<VipServiceStatus>,
    /// Generation the status was computed for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// One selected TailscaleEndpoints.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[x_kube(crates(kube_core = "::kube_core"))]
#[serde(rename_all = "camelCase")]
pub struct SelectedEndpointsStatus {
    /// TailscaleEndpoints name.
    pub name: String,
    /// Device hostnames.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub machines: Vec<String>,
    /// Devices online.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy_machines: Option<i32>,
}

/// VIP service state.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[x_kube(crates(kube_core = "::kube_core"))]
#[serde(rename_all = "camelCase")]
pub struct VipServiceStatus {
    /// `svc:NAME`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Addresses the tailnet allocated.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<String>,
    /// `<service>.<magicDNSSuffix>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_name: Option<String>,
    /// Backend devices.
    #[serde(default)]
    pub backend_count: i32,
    /// Backend devices online.
    #[serde(default)]
    pub healthy_backends: i32,
}

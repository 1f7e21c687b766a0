use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Affinity, ResourceRequirements, Toleration};
use kube_derive::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::Condition;

/// Machines in a tailnet: Tailscale proxies run as a StatefulSet, one device per replica.
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[x_kube(crates(kube_core = "::kube_core"))]
#[kube(
    crates(kube_core = "::kube_core", kube = "::kube_derive"),
    group = "gateway.tailscale.com",
    version = "v1alpha1",
    kind = "TailscaleEndpoints",
    plural = "tailscaleendpoints",
    namespaced,
    shortname = "tsep",
    category = "tailscale",
    derive = "PartialEq",
    derive = "Default",
    status = "TailscaleEndpointsStatus",
    printcolumn(name = "TAILNET", type_ = "string", json_path = ".spec.tailnet"),
    printcolumn(name = "REPLICAS", type_ = "integer", json_path = ".spec.proxy.replicas"),
    printcolumn(name = "DEVICES", type_ = "integer", json_path = ".status.deviceCount"),
    printcolumn(name = "READY", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "AGE", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct TailscaleEndpointsSpec {
    /// Name of the TailscaleTailnet the devices join.
    #[x_kube(validation = Rule::new("self != ''").message("tailnet must name a TailscaleTailnet"))]
    pub tailnet: String,
    /// Tags for the devices (`tag:NAME`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// How the proxies run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<Box<ProxySpec>>,
    /// Ports the proxies serve (at most 128).
    // The bound lets kube-apiserver accept the uniqueness rule, which is quadratic: without
    // maxItems its estimated cost is over the budget and the CRD is refused. A port without
    // `protocol` is TCP (CEL has no value for an absent field).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 128))]
    #[x_kube(validation = Rule::new("self.all(p, self.exists_one(q, q.port == p.port && (has(q.protocol) ? q.protocol : 'TCP') == (has(p.protocol) ? p.protocol : 'TCP')))").message("ports must be unique"))]
    pub ports: Vec<PortSpec>,
    /// Tailnet targets the egress proxies forward to (besides the VIP services of the
    /// TailscaleServices that select them): a device or a Tailscale service by MagicDNS name, or
    /// a device by Tailscale IP. A backendRef to this TailscaleEndpoints reaches the target that
    /// has the backendRef's port. Needs `connectionType` egress or bidirectional.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub egress_targets: Vec<EgressTargetSpec>,
}

/// A tailnet target of egress proxies.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[x_kube(crates(kube_core = "::kube_core"))]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.fqdn) != has(self.ip)").message("set exactly one of fqdn and ip"))]
pub struct EgressTargetSpec {
    /// A DNS label, unique in the list.
    pub name: String,
    /// MagicDNS name of a device (`db.tail1234.ts.net`) or of a Tailscale service
    /// (`NAME.tail1234.ts.net`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fqdn: Option<String>,
    /// Tailscale IP of a device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    /// TCP ports forwarded to the target.
    #[schemars(length(min = 1, max = 64))]
    pub ports: Vec<i32>,
}

/// How the Tailscale proxies of a TailscaleEndpoints run.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[x_kube(crates(kube_core = "::kube_core"))]
#[serde(rename_all = "camelCase")]
pub struct ProxySpec {
    /// Number of proxy replicas (devices). Defaults to 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 0 && self <= 100").message("replicas must be between 0 and 100"))]
    pub replicas: Option<i32>,
    /// `ingress`, `egress` or `bidirectional` (default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self in ['ingress', 'egress', 'bidirectional']").message("connectionType must be ingress, egress or bidirectional"))]
    pub connection_type: Option<String>,
    /// Proxy container image. Defaults to the server's `--proxy-image`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Container resources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Pod node selector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<BTreeMap<String, String>>,
    /// Pod tolerations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerations: Option<Vec<Toleration>>,
    /// Pod affinity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
}

/// A port served by the proxies.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[x_kube(crates(kube_core = "::kube_core"))]
#[serde(rename_all = "camelCase")]
pub struct PortSpec {
    /// Optional port name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Port number, 1-65535.
    #[x_kube(validation = Rule::new("self >= 1 && self <= 65535").message("port must be between 1 and 65535"))]
    pub port: i32,
    /// `TCP` (default) or `UDP`.
    // maxLength bounds the string comparisons of the ports uniqueness rule (CEL cost budget).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16))]
    pub protocol: Option<String>,
}

/// Observed state of a TailscaleEndpoints.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[x_kube(crates(kube_core = "::kube_core"))]
#[serde(rename_all = "camelCase")]
pub struct TailscaleEndpointsStatus {
    /// `Ready` is true when the number of devices equals the desired replicas.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// One entry per proxy device.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<DeviceStatus>,
    /// Number of devices (for printer columns).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_count: Option<i32>,
    /// StatefulSets running the proxies.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stateful_sets: Vec<StatefulSetStatus>,
    /// Generation the status was computed for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// A proxy device in the tailnet.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[x_kube(crates(kube_core = "::kube_core"))]
#[serde(rename_all = "camelCase")]
pub struct DeviceStatus {
    /// Device hostname (the pod name).
    pub hostname: String,
    /// First Tailscale IP.
    #[serde(rename = "tailscaleIP", default, skip_serializing_if = "Option::is_none")]
    pub tailscale_ip: Option<String>,
    /// All Tailscale addresses.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<String>,
    /// MagicDNS name.
    #[serde(rename = "tailscaleFQDN", default, skip_serializing_if = "Option::is_none")]
    pub tailscale_fqdn: Option<String>,
    /// Stable node ID.
    #[serde(rename = "nodeID", default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
    /// Pod that runs the device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stateful_set_pod: Option<String>,
    /// Connected to the control plane.
    #[serde(default)]
    pub connected: bool,
    /// Online in the tailnet.
    #[serde(default)]
    pub online: bool,
    /// Last time the control plane saw the device (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<String>,
    /// Device tags.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Operating system reported by the device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os: Option<String>,
    /// Tailscale client version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_version: Option<String>,
}

/// A StatefulSet running proxies.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[x_kube(crates(kube_core = "::kube_core"))]
#[serde(rename_all = "camelCase")]
pub struct StatefulSetStatus {
    /// StatefulSet name.
    pub name: String,
    /// StatefulSet namespace.
    pub namespace: String,
    /// Connection type of its proxies.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub type_: Option<String>,
    /// Desired replicas.
    #[serde(default)]
    pub replicas: i32,
    /// Ready replicas.
    #[serde(default)]
    pub ready_replicas: i32,
    /// Service in front of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// Creation time (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
}

use kube_derive::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::Condition;

/// Which tailnet to join and how to reach the Tailscale API for it.
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[x_kube(crates(kube_core = "::kube_core"))]
#[kube(
    crates(kube_core = "::kube_core", kube = "::kube_derive"),
    group = "gateway.tailscale.com",
    version = "v1alpha1",
    kind = "TailscaleTailnet",
    shortname = "tstailnet",
    category = "tailscale",
    derive = "PartialEq",
    derive = "Default",
    status = "TailscaleTailnetStatus",
    printcolumn(name = "TAILNET", type_ = "string", json_path = ".status.tailnetInfo.name"),
    printcolumn(name = "MAGICDNS", type_ = "string", json_path = ".status.tailnetInfo.magicDNSSuffix"),
    printcolumn(name = "READY", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "AGE", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct TailscaleTailnetSpec {
    /// Tailnet name, or `-` (the default) for the tailnet the OAuth client belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tailnet: Option<String>,
    /// Secret holding the OAuth client credentials (`client_id`, `client_secret`).
    pub oauth_secret_ref: SecretRef,
    /// Base URL of the Tailscale API. Defaults to `https://api.tailscale.com`.
    #[serde(default, rename = "apiURL", skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.startsWith('https://') || self.startsWith('http://')").message("apiURL must be an http(s) URL"))]
    pub api_url: Option<String>,
    /// Tags applied to devices created for this tailnet when a resource names none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
}

/// Reference to a Secret with OAuth client credentials.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[x_kube(crates(kube_core = "::kube_core"))]
#[serde(rename_all = "camelCase")]
pub struct SecretRef {
    /// Secret name.
    pub name: String,
    /// Secret namespace. Defaults to the namespace the server runs in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// Observed state of a tailnet.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[x_kube(crates(kube_core = "::kube_core"))]
#[serde(rename_all = "camelCase")]
pub struct TailscaleTailnetStatus {
    /// `Ready` is true once the credentials work and the tailnet was discovered.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// What the Tailscale API told us about the tailnet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tailnet_info: Option<TailnetInfo>,
    /// Generation the status was computed for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// Discovered facts about a tailnet.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[x_kube(crates(kube_core = "::kube_core"))]
#[serde(rename_all = "camelCase")]
pub struct TailnetInfo {
    /// The tailnet's name.
    pub name: String,
    /// MagicDNS suffix, e.g. `tail8eff9.ts.net`. VIP DNS names are `<service>.<suffix>`.
    #[serde(rename = "magicDNSSuffix", default, skip_serializing_if = "Option::is_none")]
    pub magic_dns_suffix: Option<String>,
}

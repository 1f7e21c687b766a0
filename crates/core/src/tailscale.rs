//! The Tailscale API v2's wire models, as far as we use them: devices, VIP services and auth
//! keys, plain data that the builders and the cache's views read. The client that fetches them
//! (and the trait the reconciler is written against) is the main crate's `tailscale` module.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A device as `GET /api/v2/tailnet/{tailnet}/devices?fields=all` returns it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Device {
    /// Legacy device ID, used in `/api/v2/device/{id}`.
    pub id: String,
    /// Stable node ID (`n...`), what a proxy writes as `device_id` into its state Secret.
    pub node_id: String,
    /// MagicDNS FQDN, e.g. `web-proxy-east-0.tail8eff9.ts.net`.
    pub name: String,
    /// Short hostname.
    pub hostname: String,
    /// Tailscale IPv4 and IPv6 addresses.
    pub addresses: Vec<String>,
    /// ACL tags.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Authorized to join the tailnet.
    pub authorized: bool,
    /// Last seen by the control plane (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<String>,
    /// Connected to the control plane now.
    pub connected_to_control: bool,
    /// Operating system.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub os: Option<String>,
    /// Tailscale client version.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_version: Option<String>,
    /// Created (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// Key expiry (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
    /// Ephemeral node.
    pub is_ephemeral: bool,
    /// Owning user.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// A client update is available.
    pub update_available: bool,
}

impl Device {
    /// The cache's view of this device.
    pub fn to_live(&self) -> crate::views::LiveDevice {
        crate::views::LiveDevice {
            id: self.id.clone(),
            node_id: self.node_id.clone(),
            name: self.name.clone(),
            hostname: self.hostname.clone(),
            addresses: self.addresses.clone(),
            tags: self.tags.clone(),
            connected_to_control: self.connected_to_control,
            last_seen: self.last_seen.clone(),
            os: self.os.clone(),
            client_version: self.client_version.clone(),
            created: self.created.clone(),
        }
    }
}

/// A VIP service (`/api/v2/tailnet/{tailnet}/vip-services/{name}`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct VipService {
    /// `svc:NAME`.
    pub name: String,
    /// Allocated addresses. Empty on create; an update must resend the existing ones.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub addrs: Vec<String>,
    /// Free-form comment.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub comment: String,
    /// Annotations; ownership is recorded here.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Ports, e.g. `tcp:443`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<String>,
    /// ACL tags.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
}

/// What to ask for when creating an auth key (`POST /api/v2/tailnet/{tailnet}/keys`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AuthKeyRequest {
    /// Tags the key's devices get.
    pub tags: Vec<String>,
    /// Usable more than once (we always ask for `false`).
    pub reusable: bool,
    /// Devices are ephemeral.
    pub ephemeral: bool,
    /// Devices need no approval.
    pub preauthorized: bool,
    /// Shown in the admin console.
    pub description: String,
    /// Key lifetime.
    pub expiry: Option<Duration>,
}

/// A freshly created auth key. `Debug` never prints the key.
#[derive(Clone, PartialEq)]
pub struct AuthKey {
    /// Key ID.
    pub id: String,
    /// The secret key (`tskey-auth-...`). Never log it.
    pub key: String,
    /// Expiry (RFC 3339).
    pub expires: Option<String>,
}

impl std::fmt::Debug for AuthKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthKey")
            .field("id", &self.id)
            .field("key", &"<redacted>")
            .field("expires", &self.expires)
            .finish()
    }
}

/// The MagicDNS suffix of a tailnet, read off a device FQDN (`host.tail8eff9.ts.net.` ->
/// `tail8eff9.ts.net`). The suffix is discovered, never hard-coded.
pub fn magic_dns_suffix(fqdn: &str) -> Option<String> {
    let fqdn = fqdn.trim_end_matches('.');
    let (_, suffix) = fqdn.split_once('.')?;
    (!suffix.is_empty()).then(|| suffix.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suffix_from_fqdn() {
        assert_eq!(magic_dns_suffix("web-0.tail8eff9.ts.net."), Some("tail8eff9.ts.net".into()));
        assert_eq!(magic_dns_suffix("web-0"), None);
    }

    #[test]
    fn auth_key_debug_redacts() {
        let k = AuthKey { id: "k1".into(), key: "tskey-auth-secret".into(), expires: None };
        assert!(!format!("{k:?}").contains("secret"));
    }

    #[test]
    fn device_json_round_trip() {
        let json = r#"{"id":"123","nodeId":"nABC","name":"a.tail1.ts.net","hostname":"a","addresses":["100.64.0.1"],
            "authorized":true,"connectedToControl":true,"lastSeen":"2025-06-25T10:30:00Z","os":"linux","extra":1}"#;
        let d: Device = serde_json::from_str(json).expect("parsing the device JSON");
        assert_eq!(d.node_id, "nABC");
        assert!(d.connected_to_control);
        assert_eq!(d.to_live().addresses, vec!["100.64.0.1".to_string()]);
    }
}

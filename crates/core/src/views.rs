//! Derived read views served by the aggregated API: devices and selections. They are computed by
//! the cache once per change from TailscaleEndpoints status, live Tailscale API data and
//! TailscaleServices selectors, never per request.

use crate::api::{DeviceStatus, TailscaleEndpoints, TailscaleServices};

/// Live device data from the Tailscale API (`GET /api/v2/tailnet/{tailnet}/devices?fields=all`),
/// written into the cache by the reconciler.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LiveDevice {
    /// Legacy numeric device ID (used in `/api/v2/device/{id}`).
    pub id: String,
    /// Stable node ID (`nXXXX`), matches the state Secret's `device_id`.
    pub node_id: String,
    /// MagicDNS FQDN.
    pub name: String,
    /// Short hostname.
    pub hostname: String,
    /// Tailscale addresses.
    pub addresses: Vec<String>,
    /// ACL tags.
    pub tags: Vec<String>,
    /// Connected to the control plane right now.
    pub connected_to_control: bool,
    /// Last seen (RFC 3339).
    pub last_seen: Option<String>,
    /// Operating system.
    pub os: Option<String>,
    /// Client version.
    pub client_version: Option<String>,
    /// Created (RFC 3339).
    pub created: Option<String>,
}

/// One device backing a TailscaleEndpoints: the `TailscaleDevice` of the aggregated API.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Device {
    /// Namespace of the owning TailscaleEndpoints.
    pub namespace: String,
    /// Device hostname, which is also the object name.
    pub name: String,
    /// Owning TailscaleEndpoints.
    pub endpoints: String,
    /// TailscaleTailnet.
    pub tailnet: String,
    /// Tailscale addresses.
    pub addresses: Vec<String>,
    /// MagicDNS FQDN.
    pub fqdn: Option<String>,
    /// Stable node ID.
    pub node_id: Option<String>,
    /// Online in the tailnet.
    pub online: bool,
    /// Connected to the control plane.
    pub connected: bool,
    /// Last seen (RFC 3339).
    pub last_seen: Option<String>,
    /// ACL tags.
    pub tags: Vec<String>,
    /// Operating system.
    pub os: Option<String>,
    /// Client version.
    pub client_version: Option<String>,
    /// Pod running the device.
    pub pod: Option<String>,
    /// Creation time (RFC 3339): the device's, else its TailscaleEndpoints'.
    pub created: Option<String>,
    /// Labels (copied from the TailscaleEndpoints, for `-l`).
    pub labels: std::collections::BTreeMap<String, String>,
}

fn created_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Option<String> {
    meta.creation_timestamp.as_ref().map(|t| t.0.to_string())
}

/// The devices of one TailscaleEndpoints: its status devices, overlaid with live API data found by
/// node ID (or hostname when the status has no node ID yet).
pub fn devices_of(ep: &TailscaleEndpoints, live: &[LiveDevice]) -> Vec<Device> {
    let namespace = ep.metadata.namespace.clone().unwrap_or_default();
    let endpoints = ep.metadata.name.clone().unwrap_or_default();
    let status_devices: &[DeviceStatus] = ep.status.as_ref().map(|s| s.devices.as_slice()).unwrap_or_default();
    status_devices
        .iter()
        .map(|d| {
            let live = live.iter().find(|l| match &d.node_id {
                Some(id) => &l.node_id == id,
                None => l.hostname == d.hostname,
            });
            let mut addresses = d.addresses.clone();
            if addresses.is_empty() {
                addresses.extend(d.tailscale_ip.clone());
            }
            let mut dev = Device {
                namespace: namespace.clone(),
                name: d.hostname.clone(),
                endpoints: endpoints.clone(),
                tailnet: ep.spec.tailnet.clone(),
                addresses,
                fqdn: d.tailscale_fqdn.clone(),
                node_id: d.node_id.clone(),
                online: d.online,
                connected: d.connected,
                last_seen: d.last_seen.clone(),
                tags: d.tags.clone(),
                os: d.os.clone(),
                client_version: d.client_version.clone(),
                pod: d.stateful_set_pod.clone(),
                created: created_of(&ep.metadata),
                labels: ep.metadata.labels.clone().unwrap_or_default(),
            };
            if let Some(l) = live {
                dev.node_id = Some(l.node_id.clone());
                if !l.addresses.is_empty() {
                    dev.addresses = l.addresses.clone();
                }
                if !l.name.is_empty() {
                    dev.fqdn = Some(l.name.trim_end_matches('.').to_string());
                }
                dev.online = l.connected_to_control;
                dev.connected = l.connected_to_control;
                dev.last_seen = l.last_seen.clone().or(dev.last_seen);
                dev.tags = l.tags.clone();
                dev.os = l.os.clone().or(dev.os);
                dev.client_version = l.client_version.clone().or(dev.client_version);
                dev.created = l.created.clone().or(dev.created);
            }
            dev
        })
        .collect()
}

/// One TailscaleEndpoints as selected by a TailscaleServices.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SelectedEndpoint {
    /// TailscaleEndpoints name.
    pub name: String,
    /// Device hostnames.
    pub machines: Vec<String>,
    /// Devices online.
    pub healthy: usize,
}

/// What one TailscaleServices selects now: the `SelectedEndpoints` of the aggregated API.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Selection {
    /// Namespace.
    pub namespace: String,
    /// TailscaleServices name.
    pub name: String,
    /// VIP service name, when one can be derived.
    pub vip_service: Option<String>,
    /// VIP addresses from the TailscaleServices status.
    pub vip_addresses: Vec<String>,
    /// VIP DNS name from the TailscaleServices status.
    pub vip_dns_name: Option<String>,
    /// Selected endpoints, by name.
    pub endpoints: Vec<SelectedEndpoint>,
    /// Creation time of the TailscaleServices (RFC 3339).
    pub created: Option<String>,
    /// Labels of the TailscaleServices.
    pub labels: std::collections::BTreeMap<String, String>,
}

impl Selection {
    /// Total machines across selected endpoints.
    pub fn machine_count(&self) -> usize {
        self.endpoints.iter().map(|e| e.machines.len()).sum()
    }

    /// Machines online across selected endpoints.
    pub fn healthy_count(&self) -> usize {
        self.endpoints.iter().map(|e| e.healthy).sum()
    }
}

/// Builds the selection view of a service from the endpoints it selects and their devices.
pub fn selection_of(svc: &TailscaleServices, selected: &[(&TailscaleEndpoints, &[Device])]) -> Selection {
    let vip = svc.status.as_ref().and_then(|s| s.vip_service.as_ref());
    Selection {
        namespace: svc.metadata.namespace.clone().unwrap_or_default(),
        name: svc.metadata.name.clone().unwrap_or_default(),
        vip_service: super::resource::vip_service_name(svc),
        vip_addresses: vip.map(|v| v.addresses.clone()).unwrap_or_default(),
        vip_dns_name: vip.and_then(|v| v.dns_name.clone()),
        endpoints: selected
            .iter()
            .map(|(ep, devices)| SelectedEndpoint {
                name: ep.metadata.name.clone().unwrap_or_default(),
                machines: devices.iter().map(|d| d.name.clone()).collect(),
                healthy: devices.iter().filter(|d| d.online).count(),
            })
            .collect(),
        created: created_of(&svc.metadata),
        labels: svc.metadata.labels.clone().unwrap_or_default(),
    }
}

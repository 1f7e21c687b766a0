//! The kinds the aggregated API serves, as plain functions over the cache: how an object renders
//! as JSON, which fields a `fieldSelector` may name, and the Table columns and cells kubectl
//! prints. One trait, [`View`], lets every handler (get, list, watch, tables, discovery, OpenAPI)
//! be written once for every kind: the two views of `tailnet.gateway.tailscale.com` here, and in
//! local mode our four CRD kinds ([`super::crd`]).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock};

use serde::Serialize;
use serde_json::{Value, json};

use crate::cache::{Index, Stored, ViewObject};
use crate::core::ObjectKey;
use crate::core::views::{Device, SelectedEndpoint, Selection};

/// API group of the aggregated API (distinct from the CRD group so an APIService can own it).
pub const GROUP: &str = "tailnet.gateway.tailscale.com";
/// The only version served.
pub const VERSION: &str = "v1alpha1";
/// `group/version`, as written in `apiVersion`.
pub const GROUP_VERSION: &str = "tailnet.gateway.tailscale.com/v1alpha1";
/// Category both kinds belong to, so `kubectl get tailscale` lists them with the CRDs.
pub const CATEGORY: &str = "tailscale";

/// One Table column, as in `meta.k8s.io/v1` `TableColumnDefinition`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Column {
    /// Header (kubectl upper-cases it).
    pub name: String,
    /// OpenAPI type of the cells (`date` for a CRD's age columns, as kube-apiserver says).
    #[serde(rename = "type")]
    pub type_: String,
    /// OpenAPI format (`name` marks the name column).
    pub format: String,
    /// What the column shows.
    pub description: String,
    /// 0 = always shown, 1 and more only with `-o wide`.
    pub priority: i32,
}

/// What a served kind is: group, names, scope, columns and selectable fields. Built once per
/// kind (for CRD kinds from the CRDs themselves) and kept for the life of the process.
#[derive(Clone, Debug)]
pub struct KindInfo {
    /// API group.
    pub group: &'static str,
    /// Version.
    pub version: &'static str,
    /// `group/version`, as written in `apiVersion`.
    pub api_version: &'static str,
    /// `kind`.
    pub kind: String,
    /// `kind` of a list.
    pub list_kind: String,
    /// Resource name in URLs.
    pub plural: String,
    /// Singular resource name.
    pub singular: String,
    /// Short names for kubectl.
    pub short_names: Vec<String>,
    /// Categories (`kubectl get tailscale`).
    pub categories: Vec<String>,
    /// Whether objects live in namespaces.
    pub namespaced: bool,
    /// What the kind is, for `kubectl explain`.
    pub description: String,
    /// Table columns, name first.
    pub columns: Vec<Column>,
    /// Field paths a `fieldSelector` may name (besides `metadata.name` and `metadata.namespace`).
    pub fields: &'static [&'static str],
}

/// One Table cell, borrowing from the view where it can (tables of 10k rows stay cheap).
#[derive(Clone, Debug, PartialEq)]
pub enum Cell<'a> {
    /// Text borrowed from the object.
    Str(&'a str),
    /// Computed text (joined lists).
    Text(String),
    /// A boolean column.
    Bool(bool),
    /// An integer column.
    Int(usize),
    /// The time since an RFC 3339 timestamp (`<unknown>` without a valid one). It depends on when
    /// the table is rendered, so it serializes only after [`Cell::at`].
    Age(Option<&'a str>),
    /// The time since a parsed timestamp (a CRD's `date` column); serializes only after [`Cell::at`].
    Since(jiff::Timestamp),
    /// A number (a CRD's `integer` or `number` column).
    Number(serde_json::Number),
    /// No value (kubectl prints `<none>`).
    Null,
}

impl<'a> Cell<'a> {
    /// The cell as rendered at `now`: ages become text, everything else is unchanged.
    pub fn at(self, now: jiff::Timestamp) -> Cell<'a> {
        match self {
            Cell::Age(t) => Cell::Text(age(t, now)),
            Cell::Since(t) => Cell::Text(age_since(Some(t), now)),
            c => c,
        }
    }
}

impl Serialize for Cell<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Cell::Str(s) => serializer.serialize_str(s),
            Cell::Text(s) => serializer.serialize_str(s),
            Cell::Bool(b) => serializer.serialize_bool(*b),
            Cell::Int(n) => n.serialize(serializer),
            Cell::Number(n) => n.serialize(serializer),
            Cell::Null => serializer.serialize_unit(),
            Cell::Age(_) | Cell::Since(_) => {
                Err(serde::ser::Error::custom("an age cell serializes only once rendered at a time"))
            }
        }
    }
}

impl PartialEq<&str> for Cell<'_> {
    fn eq(&self, other: &&str) -> bool {
        match self {
            Cell::Str(s) => s == other,
            Cell::Text(s) => s == other,
            _ => false,
        }
    }
}

/// A Table column.
pub fn col(name: &str, type_: &str, description: &str, priority: i32) -> Column {
    Column { name: name.into(), type_: type_.into(), format: String::new(), description: description.into(), priority }
}

/// The name column every table starts with (as kube-apiserver words it).
pub fn name_column() -> Column {
    Column { format: "name".into(), ..col("Name", "string", "Name must be unique within a namespace.", 0) }
}

fn age_column() -> Column {
    col("Age", "string", "Time since the object was created (CreationTimestamp in metadata).", 0)
}

/// Labels or annotations of an object that has none.
pub static NO_LABELS: BTreeMap<String, String> = BTreeMap::new();

/// A kind served read-only: one of the aggregated API's views, or (local mode) one of our CRDs.
pub trait View: Send + Sync + Sized + 'static {
    /// Group, names, scope, columns and selectable fields of the kind.
    fn info() -> &'static KindInfo;

    /// The JSON of everything except `apiVersion`, `kind` and `metadata`.
    type Body<'a>: Serialize
    where
        Self: 'a;

    /// Namespace.
    fn namespace(&self) -> &str;
    /// Name.
    fn name(&self) -> &str;
    /// Labels, matched by `labelSelector`.
    fn labels(&self) -> &BTreeMap<String, String>;
    /// Annotations.
    fn annotations(&self) -> &BTreeMap<String, String> {
        &NO_LABELS
    }
    /// Creation time (RFC 3339).
    fn created(&self) -> Option<Cow<'_, str>>;
    /// The value of one of [`View::FIELDS`].
    fn field(&self, path: &str) -> Option<String>;
    /// Table cells, one per column; cells that depend on the time are [`Cell::Age`].
    fn cells(&self) -> Vec<Cell<'_>>;
    /// `spec` and `status`.
    fn body(&self) -> Self::Body<'_>;
    /// OpenAPI properties of `spec` and `status`.
    fn schema_properties() -> Value;
    /// Objects in a namespace or all of them, ordered by namespace and name.
    fn list(index: &Index, namespace: Option<&str>) -> Vec<Stored<Self>>;
    /// One object.
    fn get(index: &Index, key: &ObjectKey) -> Option<Stored<Self>>;
    /// The object of a cache event, when it is of this kind.
    fn of_event(object: &ViewObject) -> Option<&Arc<Self>>;

    /// The value of any supported field, including `metadata.name` and `metadata.namespace`;
    /// `None` for an unsupported field.
    fn field_value(&self, path: &str) -> Option<String> {
        match path {
            "metadata.name" => Some(self.name().to_string()),
            "metadata.namespace" => Some(self.namespace().to_string()),
            p if Self::info().fields.contains(&p) => self.field(p),
            _ => None,
        }
    }
}

/// `metadata` of a served object.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Meta<'a> {
    /// Name.
    pub name: &'a str,
    /// Namespace (none for a cluster-scoped kind).
    #[serde(skip_serializing_if = "str::is_empty")]
    pub namespace: &'a str,
    /// Stable identity: [`uid`] of kind, namespace and name.
    pub uid: String,
    /// Cache revision of the object's last change.
    pub resource_version: String,
    /// Creation time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub creation_timestamp: Option<Cow<'a, str>>,
    /// Labels.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: &'a BTreeMap<String, String>,
    /// Annotations.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: &'a BTreeMap<String, String>,
}

impl<'a> Meta<'a> {
    /// The metadata of `object` at `revision`.
    pub fn of<T: View>(object: &'a T, revision: u64) -> Self {
        let info = T::info();
        Meta {
            name: object.name(),
            namespace: object.namespace(),
            uid: uid(info.group, &info.kind, object.namespace(), object.name()),
            resource_version: revision.to_string(),
            creation_timestamp: object.created(),
            labels: object.labels(),
            annotations: object.annotations(),
        }
    }
}

/// A deterministic `metadata.uid` in UUID form: the 128-bit FNV-1a hash of group, kind,
/// namespace and name, with the version (8: custom, RFC 9562) and variant bits set. The same
/// object gets the same uid on every start and reload; different objects get different ones
/// (fields are separated by a byte no name contains).
pub fn uid(group: &str, kind: &str, namespace: &str, name: &str) -> String {
    const OFFSET: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
    const PRIME: u128 = 0x0000_0000_0100_0000_0000_0000_0000_013b;
    let mut h = OFFSET;
    for (i, part) in [group, kind, namespace, name].iter().enumerate() {
        if i > 0 {
            h = (h ^ 0xff).wrapping_mul(PRIME);
        }
        for b in part.bytes() {
            h = (h ^ u128::from(b)).wrapping_mul(PRIME);
        }
    }
    let h = (h & !(0xf << 76) | (0x8 << 76)) & !(0x3 << 62) | (0x2 << 62);
    let hex = format!("{h:032x}");
    format!("{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..])
}

/// A full object: `apiVersion`, `kind`, `metadata`, then the kind's body. Responses are written
/// from memoized pieces ([`super::render`]), byte for byte as this serializes.
#[derive(Serialize)]
#[serde(rename_all = "camelCase", bound = "")]
pub struct Object<'a, T: View> {
    api_version: &'static str,
    kind: &'static str,
    metadata: Meta<'a>,
    #[serde(flatten)]
    body: T::Body<'a>,
}

impl<'a, T: View> Object<'a, T> {
    /// Renders `object` at `revision`.
    pub fn new(object: &'a T, revision: u64) -> Self {
        let info = T::info();
        Object {
            api_version: info.api_version,
            kind: &info.kind,
            metadata: Meta::of(object, revision),
            body: object.body(),
        }
    }
}

/// `PartialObjectMetadata`: what Tables carry per row by default, and what metadata-only
/// clients (the garbage collector) ask for.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PartialObject<'a> {
    api_version: &'static str,
    kind: &'static str,
    metadata: Meta<'a>,
}

impl<'a> PartialObject<'a> {
    /// The metadata-only form of `object` at `revision`.
    pub fn new<T: View>(object: &'a T, revision: u64) -> Self {
        PartialObject {
            api_version: "meta.k8s.io/v1",
            kind: "PartialObjectMetadata",
            metadata: Meta::of(object, revision),
        }
    }
}

/// Human-readable age, in the style kubectl prints (`45s`, `5m30s`, `3h`, `2d4h`, `3y`).
pub fn human_duration(d: jiff::SignedDuration) -> String {
    let secs = d.as_secs();
    if secs < -1 {
        return "<invalid>".into();
    }
    let secs = secs.max(0);
    if secs < 120 {
        return format!("{secs}s");
    }
    let minutes = secs / 60;
    if minutes < 10 {
        let s = secs % 60;
        return if s == 0 { format!("{minutes}m") } else { format!("{minutes}m{s}s") };
    }
    if minutes < 180 {
        return format!("{minutes}m");
    }
    let hours = minutes / 60;
    if hours < 8 {
        let m = minutes % 60;
        return if m == 0 { format!("{hours}h") } else { format!("{hours}h{m}m") };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    let days = hours / 24;
    if hours < 24 * 8 {
        let h = hours % 24;
        return if h == 0 { format!("{days}d") } else { format!("{days}d{h}h") };
    }
    if hours < 24 * 365 * 2 {
        return format!("{days}d");
    }
    let years = days / 365;
    if hours < 24 * 365 * 8 {
        let dy = days % 365;
        return if dy == 0 { format!("{years}y") } else { format!("{years}y{dy}d") };
    }
    format!("{years}y")
}

/// The age of an RFC 3339 timestamp at `now`, or `<unknown>`.
pub fn age(timestamp: Option<&str>, now: jiff::Timestamp) -> String {
    age_since(timestamp.and_then(|t| t.parse::<jiff::Timestamp>().ok()), now)
}

/// The age of a parsed timestamp at `now`, or `<unknown>`.
pub fn age_since(since: Option<jiff::Timestamp>, now: jiff::Timestamp) -> String {
    match since {
        Some(t) => human_duration(now.duration_since(t)),
        None => "<unknown>".into(),
    }
}

fn joined(items: &[String]) -> Cell<'_> {
    match items {
        [] => Cell::Str("<none>"),
        [one] => Cell::Str(one),
        many => Cell::Text(many.join(",")),
    }
}

fn or_none(v: &Option<String>) -> Cell<'_> {
    Cell::Str(v.as_deref().unwrap_or("<none>"))
}

/// The address shown in the IP column: the first IPv4 address, else the first address.
pub fn primary_ip(addresses: &[String]) -> Option<&str> {
    addresses.iter().find(|a| !a.contains(':')).or_else(|| addresses.first()).map(String::as_str)
}

// ---------------------------------------------------------------------------------------------
// TailscaleDevice

/// `spec` of a TailscaleDevice: what the device is and where it belongs.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceSpec<'a> {
    hostname: &'a str,
    tailnet: &'a str,
    endpoints: &'a str,
    #[serde(rename = "nodeID", skip_serializing_if = "Option::is_none")]
    node_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pod: Option<&'a str>,
}

/// `status` of a TailscaleDevice: what the tailnet says about it now.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceStatus<'a> {
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    addresses: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    fqdn: Option<&'a str>,
    online: bool,
    connected: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_seen: Option<&'a str>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    tags: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    os: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_version: Option<&'a str>,
}

/// Body of a TailscaleDevice.
#[derive(Serialize)]
pub struct DeviceBody<'a> {
    spec: DeviceSpec<'a>,
    status: DeviceStatus<'a>,
}

/// Names and columns shared by both views of `tailnet.gateway.tailscale.com`.
fn view_info(kind: &str, plural: &str, short_names: &[&str], description: &str) -> KindInfo {
    KindInfo {
        group: GROUP,
        version: VERSION,
        api_version: GROUP_VERSION,
        kind: kind.into(),
        list_kind: format!("{kind}List"),
        plural: plural.into(),
        singular: kind.to_ascii_lowercase(),
        short_names: short_names.iter().map(|s| s.to_string()).collect(),
        categories: vec![CATEGORY.into()],
        namespaced: true,
        description: description.into(),
        columns: Vec::new(),
        fields: &[],
    }
}

static DEVICE_INFO: LazyLock<KindInfo> = LazyLock::new(|| KindInfo {
    columns: vec![
        name_column(),
        col("Endpoints", "string", "The TailscaleEndpoints the device belongs to.", 0),
        col("Tailnet", "string", "The TailscaleTailnet the device joined.", 0),
        col("IP", "string", "The device's Tailscale IPv4 address (else its first address).", 0),
        col("Online", "boolean", "Whether the device is connected to the tailnet now.", 0),
        col(
            "Last Seen",
            "string",
            "Time since the device was last seen by the control plane; \"now\" while it is online.",
            0,
        ),
        age_column(),
        col("FQDN", "string", "MagicDNS name of the device.", 1),
        col("Node ID", "string", "Stable Tailscale node ID.", 1),
        col("Tags", "string", "ACL tags of the device.", 1),
        col("Pod", "string", "The proxy Pod running the device.", 1),
    ],
    fields: &[
        "spec.hostname",
        "spec.tailnet",
        "spec.endpoints",
        "spec.nodeID",
        "spec.pod",
        "status.online",
        "status.connected",
        "status.os",
        "status.fqdn",
    ],
    ..view_info(
        "TailscaleDevice",
        "tailscaledevices",
        &["tsdev"],
        "TailscaleDevice is a read-only view of one Tailscale device (machine) backing a TailscaleEndpoints in the \
         same namespace, with its tailnet addresses and connection state.",
    )
});

impl View for Device {
    fn info() -> &'static KindInfo {
        &DEVICE_INFO
    }

    type Body<'a> = DeviceBody<'a>;

    fn namespace(&self) -> &str {
        &self.namespace
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn labels(&self) -> &BTreeMap<String, String> {
        &self.labels
    }

    fn created(&self) -> Option<Cow<'_, str>> {
        self.created.as_deref().map(Cow::Borrowed)
    }

    fn field(&self, path: &str) -> Option<String> {
        Some(match path {
            "spec.hostname" => self.name.clone(),
            "spec.tailnet" => self.tailnet.clone(),
            "spec.endpoints" => self.endpoints.clone(),
            "spec.nodeID" => self.node_id.clone().unwrap_or_default(),
            "spec.pod" => self.pod.clone().unwrap_or_default(),
            "status.online" => self.online.to_string(),
            "status.connected" => self.connected.to_string(),
            "status.os" => self.os.clone().unwrap_or_default(),
            "status.fqdn" => self.fqdn.clone().unwrap_or_default(),
            _ => return None,
        })
    }

    fn cells(&self) -> Vec<Cell<'_>> {
        vec![
            Cell::Str(&self.name),
            Cell::Str(&self.endpoints),
            Cell::Str(&self.tailnet),
            Cell::Str(primary_ip(&self.addresses).unwrap_or("<none>")),
            Cell::Bool(self.online),
            // An online device is being seen now (as Tailscale's console says "Connected"); its
            // lastSeen is when the control plane last recorded it, which can lag by days.
            if self.online { Cell::Str("now") } else { Cell::Age(self.last_seen.as_deref()) },
            Cell::Age(self.created.as_deref()),
            or_none(&self.fqdn),
            or_none(&self.node_id),
            joined(&self.tags),
            or_none(&self.pod),
        ]
    }

    fn body(&self) -> DeviceBody<'_> {
        DeviceBody {
            spec: DeviceSpec {
                hostname: &self.name,
                tailnet: &self.tailnet,
                endpoints: &self.endpoints,
                node_id: self.node_id.as_deref(),
                pod: self.pod.as_deref(),
            },
            status: DeviceStatus {
                addresses: &self.addresses,
                fqdn: self.fqdn.as_deref(),
                online: self.online,
                connected: self.connected,
                last_seen: self.last_seen.as_deref(),
                tags: &self.tags,
                os: self.os.as_deref(),
                client_version: self.client_version.as_deref(),
            },
        }
    }

    fn schema_properties() -> Value {
        let s = |d: &str| json!({"type": "string", "description": d});
        json!({
            "spec": {"type": "object", "description": "What the device is and which objects it belongs to.",
                "properties": {
                    "hostname": s("Device hostname in the tailnet; also the object's name."),
                    "tailnet": s("Name of the TailscaleTailnet the device joined."),
                    "endpoints": s("Name of the TailscaleEndpoints (same namespace) the device backs."),
                    "nodeID": s("Stable Tailscale node ID (nXXXX)."),
                    "pod": s("Name of the proxy Pod running the device."),
                }},
            "status": {"type": "object", "description": "What the tailnet reports about the device now.",
                "properties": {
                    "addresses": {"type": "array", "items": {"type": "string"},
                        "description": "Tailscale IPv4 and IPv6 addresses."},
                    "fqdn": s("MagicDNS name of the device."),
                    "online": {"type": "boolean", "description": "Whether the device is online in the tailnet."},
                    "connected": {"type": "boolean", "description": "Whether the device is connected to the control plane."},
                    "lastSeen": {"type": "string", "format": "date-time",
                        "description": "When the control plane last saw the device (RFC 3339)."},
                    "tags": {"type": "array", "items": {"type": "string"}, "description": "ACL tags (tag:NAME)."},
                    "os": s("Operating system."),
                    "clientVersion": s("Tailscale client version."),
                }},
        })
    }

    fn list(index: &Index, namespace: Option<&str>) -> Vec<Stored<Self>> {
        index.devices(namespace)
    }

    fn get(index: &Index, key: &ObjectKey) -> Option<Stored<Self>> {
        index.device(key)
    }

    fn of_event(object: &ViewObject) -> Option<&Arc<Self>> {
        match object {
            ViewObject::Device(d) => Some(d),
            _ => None,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// SelectedEndpoints

/// One selected TailscaleEndpoints in a SelectedEndpoints.
#[derive(Serialize)]
pub struct SelectedEndpointOut<'a> {
    name: &'a str,
    machines: &'a [String],
    healthy: usize,
}

/// The VIP service of a SelectedEndpoints.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VipOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    addresses: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    dns_name: Option<&'a str>,
}

/// `status` of a SelectedEndpoints.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SelectionStatus<'a> {
    vip_service: VipOut<'a>,
    endpoints: Vec<SelectedEndpointOut<'a>>,
    machine_count: usize,
    healthy_count: usize,
}

/// Body of a SelectedEndpoints.
#[derive(Serialize)]
pub struct SelectionBody<'a> {
    status: SelectionStatus<'a>,
}

fn endpoint_names(endpoints: &[SelectedEndpoint]) -> Vec<String> {
    endpoints.iter().map(|e| e.name.clone()).collect()
}

static SELECTION_INFO: LazyLock<KindInfo> = LazyLock::new(|| KindInfo {
    singular: "selectedendpoints".into(),
    columns: vec![
        name_column(),
        col("Endpoints", "string", "The TailscaleEndpoints the selector matches.", 0),
        col("Machines", "integer", "Devices across the selected endpoints.", 0),
        col("Healthy", "integer", "Devices online across the selected endpoints.", 0),
        col("VIP", "string", "Addresses of the VIP service (else its name).", 0),
        age_column(),
    ],
    fields: &["status.vipService.name"],
    ..view_info(
        "SelectedEndpoints",
        "selectedendpoints",
        &[],
        "SelectedEndpoints is a read-only view, named after a TailscaleServices, of the TailscaleEndpoints its \
         selector matches now, their machines, how many are healthy, and the VIP service.",
    )
});

impl View for Selection {
    fn info() -> &'static KindInfo {
        &SELECTION_INFO
    }

    type Body<'a> = SelectionBody<'a>;

    fn namespace(&self) -> &str {
        &self.namespace
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn labels(&self) -> &BTreeMap<String, String> {
        &self.labels
    }

    fn created(&self) -> Option<Cow<'_, str>> {
        self.created.as_deref().map(Cow::Borrowed)
    }

    fn field(&self, path: &str) -> Option<String> {
        match path {
            "status.vipService.name" => Some(self.vip_service.clone().unwrap_or_default()),
            _ => None,
        }
    }

    fn cells(&self) -> Vec<Cell<'_>> {
        let vip = if !self.vip_addresses.is_empty() {
            self.vip_addresses.join(",")
        } else {
            self.vip_service.clone().map_or_else(|| "<none>".into(), |n| format!("{n} (pending)"))
        };
        let endpoints =
            if self.endpoints.is_empty() { "<none>".into() } else { endpoint_names(&self.endpoints).join(",") };
        vec![
            Cell::Str(&self.name),
            Cell::Text(endpoints),
            Cell::Int(self.machine_count()),
            Cell::Int(self.healthy_count()),
            Cell::Text(vip),
            Cell::Age(self.created.as_deref()),
        ]
    }

    fn body(&self) -> SelectionBody<'_> {
        SelectionBody {
            status: SelectionStatus {
                vip_service: VipOut {
                    name: self.vip_service.as_deref(),
                    addresses: &self.vip_addresses,
                    dns_name: self.vip_dns_name.as_deref(),
                },
                endpoints: self
                    .endpoints
                    .iter()
                    .map(|e| SelectedEndpointOut { name: &e.name, machines: &e.machines, healthy: e.healthy })
                    .collect(),
                machine_count: self.machine_count(),
                healthy_count: self.healthy_count(),
            },
        }
    }

    fn schema_properties() -> Value {
        json!({
            "status": {"type": "object", "description": "What the TailscaleServices of the same name selects now.",
                "properties": {
                    "vipService": {"type": "object", "description": "The VIP service the selected machines back.",
                        "properties": {
                            "name": {"type": "string", "description": "VIP service name (svc:NAME)."},
                            "addresses": {"type": "array", "items": {"type": "string"},
                                "description": "VIP addresses allocated by the tailnet."},
                            "dnsName": {"type": "string", "description": "MagicDNS name of the VIP service."},
                        }},
                    "endpoints": {"type": "array", "description": "Selected TailscaleEndpoints.",
                        "items": {"type": "object", "properties": {
                            "name": {"type": "string", "description": "TailscaleEndpoints name."},
                            "machines": {"type": "array", "items": {"type": "string"},
                                "description": "Hostnames of its devices."},
                            "healthy": {"type": "integer", "description": "How many of its devices are online."},
                        }}},
                    "machineCount": {"type": "integer", "description": "Devices across the selected endpoints."},
                    "healthyCount": {"type": "integer", "description": "Devices online across the selected endpoints."},
                }},
        })
    }

    fn list(index: &Index, namespace: Option<&str>) -> Vec<Stored<Self>> {
        index.selections(namespace)
    }

    fn get(index: &Index, key: &ObjectKey) -> Option<Stored<Self>> {
        index.selection(key)
    }

    fn of_event(object: &ViewObject) -> Option<&Arc<Self>> {
        match object {
            ViewObject::Selection(s) => Some(s),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device() -> Device {
        Device {
            namespace: "default".into(),
            name: "web-0".into(),
            endpoints: "web".into(),
            tailnet: "corp".into(),
            addresses: vec!["fd7a::1".into(), "100.64.0.1".into()],
            fqdn: Some("web-0.tail1.ts.net".into()),
            node_id: Some("n1".into()),
            online: true,
            connected: true,
            last_seen: Some("2025-06-25T10:30:00Z".into()),
            tags: vec!["tag:a".into(), "tag:b".into()],
            pod: Some("web-0".into()),
            created: Some("2025-06-25T10:00:00Z".into()),
            labels: BTreeMap::from([("env".into(), "prod".into())]),
            ..Device::default()
        }
    }

    #[test]
    fn an_online_device_is_seen_now_and_an_offline_one_says_since_when() {
        let now: jiff::Timestamp = "2026-12-07T00:00:00Z".parse().expect("parsing the timestamp");
        fn last_seen(d: &Device, now: jiff::Timestamp) -> Option<Cell<'_>> {
            d.cells().into_iter().nth(5).map(|c| c.at(now))
        }
        let online = device();
        assert_eq!(last_seen(&online, now), Some(Cell::Str("now")), "never `true` next to a year-old time");
        let offline = Device { online: false, ..device() };
        assert_eq!(last_seen(&offline, now), Some(Cell::Text("529d".into())));
    }

    #[test]
    fn human_durations_match_kubectl_style() {
        let d = jiff::SignedDuration::from_secs;
        assert_eq!(human_duration(d(-5)), "<invalid>");
        assert_eq!(human_duration(d(0)), "0s");
        assert_eq!(human_duration(d(119)), "119s");
        assert_eq!(human_duration(d(330)), "5m30s");
        assert_eq!(human_duration(d(600)), "10m");
        assert_eq!(human_duration(d(3 * 3600 + 600)), "3h10m");
        assert_eq!(human_duration(d(30 * 3600)), "30h");
        assert_eq!(human_duration(d(3 * 86400 + 3600)), "3d1h");
        assert_eq!(human_duration(d(100 * 86400)), "100d");
        assert_eq!(human_duration(d(3 * 365 * 86400 + 86400)), "3y1d");
        assert_eq!(human_duration(d(10 * 365 * 86400)), "10y");
    }

    #[test]
    fn uids_are_deterministic_unique_uuids() {
        let a = uid(GROUP, "TailscaleDevice", "default", "web-0");
        assert_eq!(a, uid(GROUP, "TailscaleDevice", "default", "web-0"));
        assert_eq!(a.split('-').map(str::len).collect::<Vec<_>>(), [8, 4, 4, 4, 12]);
        assert!(a.chars().all(|c| c == '-' || c.is_ascii_hexdigit()));
        assert_eq!(&a[14..15], "8", "version 8 (custom): {a}");
        assert!(matches!(&a[19..20], "8" | "9" | "a" | "b"), "RFC 9562 variant: {a}");
        let others = [
            uid(GROUP, "SelectedEndpoints", "default", "web-0"),
            uid(GROUP, "TailscaleDevice", "staging", "web-0"),
            uid(GROUP, "TailscaleDevice", "default", "web-1"),
            uid(GROUP, "TailscaleDevice", "defaultweb-0", ""),
            uid(GROUP, "TailscaleDevice", "", "defaultweb-0"),
            uid("gateway.tailscale.com", "TailscaleDevice", "default", "web-0"),
        ];
        let all: std::collections::BTreeSet<&String> = others.iter().chain([&a]).collect();
        assert_eq!(all.len(), others.len() + 1);
        let dev = device();
        let v = serde_json::to_value(Object::new(&dev, 1)).unwrap_or_default();
        assert_eq!(v["metadata"]["uid"], uid(GROUP, "TailscaleDevice", "default", "web-0"));
    }

    #[test]
    fn device_renders_as_kubernetes_object() {
        let dev = device();
        let v = serde_json::to_value(Object::new(&dev, 42)).unwrap_or_default();
        assert_eq!(v["apiVersion"], GROUP_VERSION);
        assert_eq!(v["kind"], "TailscaleDevice");
        assert_eq!(v["metadata"]["resourceVersion"], "42");
        assert_eq!(v["metadata"]["labels"]["env"], "prod");
        assert_eq!(v["spec"]["nodeID"], "n1");
        assert_eq!(v["status"]["addresses"][1], "100.64.0.1");
        assert_eq!(v["status"]["lastSeen"], "2025-06-25T10:30:00Z");
        let partial = serde_json::to_value(PartialObject::new(&dev, 42)).unwrap_or_default();
        assert_eq!(partial["kind"], "PartialObjectMetadata");
        assert!(partial.get("spec").is_none());
    }

    #[test]
    fn device_cells_line_up_with_columns() {
        let now: jiff::Timestamp = "2025-06-25T10:35:00Z".parse().expect("parsing the timestamp");
        let dev = device();
        let cells: Vec<Cell<'_>> = dev.cells().into_iter().map(|c| c.at(now)).collect();
        assert_eq!(cells.len(), Device::info().columns.len());
        assert_eq!(cells[3], "100.64.0.1");
        assert_eq!(cells[4], Cell::Bool(true));
        assert_eq!(cells[5], "now", "online");
        assert_eq!(cells[6], "35m");
        assert_eq!(cells[9], "tag:a,tag:b");
        assert_eq!(Device::info().columns.iter().filter(|c| c.priority == 1).count(), 4);
    }

    #[test]
    fn device_fields_for_selectors() {
        let dev = device();
        assert_eq!(dev.field_value("metadata.name").as_deref(), Some("web-0"));
        assert_eq!(dev.field_value("status.online").as_deref(), Some("true"));
        assert_eq!(dev.field_value("spec.tailnet").as_deref(), Some("corp"));
        assert_eq!(dev.field_value("status.bogus"), None);
    }

    #[test]
    fn selection_cells_and_body() {
        let sel = Selection {
            namespace: "default".into(),
            name: "web".into(),
            vip_service: Some("svc:web".into()),
            endpoints: vec![
                SelectedEndpoint { name: "east".into(), machines: vec!["e-0".into(), "e-1".into()], healthy: 2 },
                SelectedEndpoint { name: "west".into(), machines: vec!["w-0".into()], healthy: 0 },
            ],
            ..Selection::default()
        };
        let cells: Vec<Cell<'_>> = sel.cells().into_iter().map(|c| c.at(jiff::Timestamp::UNIX_EPOCH)).collect();
        assert_eq!(cells.len(), Selection::info().columns.len());
        assert_eq!(cells[1], "east,west");
        assert_eq!(cells[2], Cell::Int(3));
        assert_eq!(cells[3], Cell::Int(2));
        assert_eq!(cells[4], "svc:web (pending)");
        assert_eq!(cells[5], "<unknown>");
        let v = serde_json::to_value(Object::new(&sel, 7)).unwrap_or_default();
        assert_eq!(v["status"]["machineCount"], 3);
        assert_eq!(v["status"]["endpoints"][0]["machines"][1], "e-1");
        assert_eq!(sel.field_value("status.vipService.name").as_deref(), Some("svc:web"));
    }
}

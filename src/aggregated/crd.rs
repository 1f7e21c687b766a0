//! Our four CRD kinds (`gateway.tailscale.com/v1alpha1`) as [`View`]s, so that local mode, where
//! no kube-apiserver serves them, answers for them with the same machinery as for the aggregated
//! views. Everything a kind looks like (names, short names, categories, scope, printer columns,
//! schema) is read from [`crate::api::crds()`], never restated here.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Serialize;
use serde_json::Value;

use super::columns::{self, JsonPath};
use super::resources::{Cell, Column, KindInfo, NO_LABELS, View, name_column};
use crate::api::{TailscaleEndpoints, TailscaleGateway, TailscaleRoutePolicy, TailscaleServices, TailscaleTailnet};
use crate::cache::{Index, Stored, ViewObject};
use crate::core::ObjectKey;

/// One printer column: where its value is and what type it has.
#[derive(Debug)]
struct Printer {
    path: Option<JsonPath>,
    type_: String,
}

/// A CRD kind as served: its info, printer columns and schema properties.
#[derive(Debug)]
pub struct CrdKind {
    /// Names, scope and Table columns.
    pub info: KindInfo,
    printers: Vec<Printer>,
    properties: Value,
}

/// The kind a CRD defines, from its served version.
pub fn crd_kind(crd: &CustomResourceDefinition) -> CrdKind {
    let names = &crd.spec.names;
    let version = crd.spec.versions.iter().find(|v| v.served).or(crd.spec.versions.first());
    let schema = version
        .and_then(|v| v.schema.as_ref())
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .and_then(|s| serde_json::to_value(s).ok())
        .unwrap_or(Value::Null);
    let printer_columns = version.and_then(|v| v.additional_printer_columns.clone()).unwrap_or_default();
    let mut columns = vec![name_column()];
    let mut printers = Vec::new();
    for c in &printer_columns {
        columns.push(Column {
            name: c.name.clone(),
            type_: c.type_.clone(),
            format: c.format.clone().unwrap_or_default(),
            description: c
                .description
                .clone()
                .unwrap_or_else(|| format!("Custom resource definition column (in JSONPath format): {}", c.json_path)),
            priority: c.priority.unwrap_or(0),
        });
        let path = JsonPath::parse(&c.json_path).ok();
        printers.push(Printer { path, type_: c.type_.clone() });
    }
    let info = KindInfo {
        group: crate::api::GROUP,
        version: crate::api::VERSION,
        api_version: crate::api::API_VERSION,
        kind: names.kind.clone(),
        list_kind: names.list_kind.clone().unwrap_or_else(|| format!("{}List", names.kind)),
        plural: names.plural.clone(),
        singular: names.singular.clone().unwrap_or_else(|| names.kind.to_ascii_lowercase()),
        short_names: names.short_names.clone().unwrap_or_default(),
        categories: names.categories.clone().unwrap_or_default(),
        namespaced: crd.spec.scope == "Namespaced",
        description: description(&schema),
        columns,
        fields: &[],
    };
    CrdKind { info, printers, properties: schema.get("properties").cloned().unwrap_or(Value::Null) }
}

/// The kind's description: the schema's, unless it is kube-derive's placeholder, then the spec's.
fn description(schema: &Value) -> String {
    let text = |v: &Value| v.get("description").and_then(Value::as_str).map(str::to_string);
    match text(schema) {
        Some(d) if !d.starts_with("Auto-generated derived type") => d,
        _ => schema.pointer("/properties/spec").and_then(text).unwrap_or_default(),
    }
}

impl CrdKind {
    /// Table cells of `object` (its JSON, `name` its name): the name, then each printer column.
    pub fn cells<'a>(&self, name: &'a str, object: &Value) -> Vec<Cell<'a>> {
        let mut cells = vec![Cell::Str(name)];
        for p in &self.printers {
            let found = p.path.as_ref().map(|path| path.find(object)).unwrap_or_default();
            cells.push(columns::cell(&p.type_, &found));
        }
        cells
    }
}

/// Our CRD kinds in the order of [`crate::api::crds()`].
static CRDS: LazyLock<Vec<CrdKind>> = LazyLock::new(|| crate::api::crds().iter().map(crd_kind).collect());

/// One of our CRD types, as stored in the cache.
pub trait Crd: kube::Resource<DynamicType = ()> + Serialize + Send + Sync + Sized + 'static {
    /// Position of its CRD in [`crate::api::crds()`].
    const INDEX: usize;
    /// Objects in a namespace or all of them, ordered by namespace and name.
    fn entries(index: &Index, namespace: Option<&str>) -> Vec<Stored<Self>>;
    /// One object.
    fn entry(index: &Index, key: &ObjectKey) -> Option<Stored<Self>>;
    /// The object of a cache event, when it is of this kind.
    fn of_event(object: &ViewObject) -> Option<&Arc<Self>>;
}

fn crd_of<T: Crd>() -> &'static CrdKind {
    &CRDS[T::INDEX]
}

fn meta<T: Crd>(object: &T) -> &ObjectMeta {
    kube::Resource::meta(object)
}

/// `spec` and `status` (and anything else the type adds) of an object, as JSON.
fn body_of<T: Crd>(object: &T) -> Value {
    let mut v = serde_json::to_value(object).unwrap_or(Value::Null);
    if let Value::Object(o) = &mut v {
        for key in ["apiVersion", "kind", "metadata"] {
            o.remove(key);
        }
    }
    v
}

/// RFC 3339 in seconds, as Kubernetes writes `metav1.Time`.
fn rfc3339(t: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time) -> String {
    t.0.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

impl<T: Crd> View for T {
    fn info() -> &'static KindInfo {
        &crd_of::<T>().info
    }

    type Body<'a> = Value;

    fn namespace(&self) -> &str {
        meta(self).namespace.as_deref().unwrap_or_default()
    }

    fn name(&self) -> &str {
        meta(self).name.as_deref().unwrap_or_default()
    }

    fn labels(&self) -> &BTreeMap<String, String> {
        meta(self).labels.as_ref().unwrap_or(&NO_LABELS)
    }

    fn annotations(&self) -> &BTreeMap<String, String> {
        meta(self).annotations.as_ref().unwrap_or(&NO_LABELS)
    }

    fn created(&self) -> Option<Cow<'_, str>> {
        meta(self).creation_timestamp.as_ref().map(|t| Cow::Owned(rfc3339(t)))
    }

    fn field(&self, _path: &str) -> Option<String> {
        None
    }

    fn cells(&self) -> Vec<Cell<'_>> {
        // The printer columns see the object as kube-apiserver stores it, metadata included.
        let mut object = body_of(self);
        if let (Value::Object(o), Ok(m)) = (&mut object, serde_json::to_value(meta(self))) {
            o.insert("metadata".into(), m);
        }
        crd_of::<T>().cells(View::name(self), &object)
    }

    fn body(&self) -> Value {
        body_of(self)
    }

    fn schema_properties() -> Value {
        crd_of::<T>().properties.clone()
    }

    fn list(index: &Index, namespace: Option<&str>) -> Vec<Stored<Self>> {
        T::entries(index, namespace)
    }

    fn get(index: &Index, key: &ObjectKey) -> Option<Stored<Self>> {
        T::entry(index, key)
    }

    fn of_event(object: &ViewObject) -> Option<&Arc<Self>> {
        <T as Crd>::of_event(object)
    }
}

impl Crd for TailscaleTailnet {
    const INDEX: usize = 0;

    fn entries(index: &Index, namespace: Option<&str>) -> Vec<Stored<Self>> {
        index.tailnet_entries(namespace)
    }

    fn entry(index: &Index, key: &ObjectKey) -> Option<Stored<Self>> {
        index.tailnet_entry(key)
    }

    fn of_event(object: &ViewObject) -> Option<&Arc<Self>> {
        if let ViewObject::Tailnet(o) = object { Some(o) } else { None }
    }
}

impl Crd for TailscaleEndpoints {
    const INDEX: usize = 1;

    fn entries(index: &Index, namespace: Option<&str>) -> Vec<Stored<Self>> {
        index.endpoints_entries(namespace)
    }

    fn entry(index: &Index, key: &ObjectKey) -> Option<Stored<Self>> {
        index.endpoints_entry(key)
    }

    fn of_event(object: &ViewObject) -> Option<&Arc<Self>> {
        if let ViewObject::Endpoints(o) = object { Some(o) } else { None }
    }
}

impl Crd for TailscaleServices {
    const INDEX: usize = 2;

    fn entries(index: &Index, namespace: Option<&str>) -> Vec<Stored<Self>> {
        index.services_entries(namespace)
    }

    fn entry(index: &Index, key: &ObjectKey) -> Option<Stored<Self>> {
        index.services_entry(key)
    }

    fn of_event(object: &ViewObject) -> Option<&Arc<Self>> {
        if let ViewObject::Services(o) = object { Some(o) } else { None }
    }
}

impl Crd for TailscaleGateway {
    const INDEX: usize = 3;

    fn entries(index: &Index, namespace: Option<&str>) -> Vec<Stored<Self>> {
        index.gateway_entries(namespace)
    }

    fn entry(index: &Index, key: &ObjectKey) -> Option<Stored<Self>> {
        index.gateway_entry(key)
    }

    fn of_event(object: &ViewObject) -> Option<&Arc<Self>> {
        if let ViewObject::Gateway(o) = object { Some(o) } else { None }
    }
}

impl Crd for TailscaleRoutePolicy {
    const INDEX: usize = 4;

    fn entries(index: &Index, namespace: Option<&str>) -> Vec<Stored<Self>> {
        index.route_policy_entries(namespace)
    }

    fn entry(index: &Index, key: &ObjectKey) -> Option<Stored<Self>> {
        index.route_policy_entry(key)
    }

    fn of_event(object: &ViewObject) -> Option<&Arc<Self>> {
        if let ViewObject::RoutePolicy(o) = object { Some(o) } else { None }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_come_from_the_crds_in_order() {
        for (i, crd) in crate::api::crds().iter().enumerate() {
            assert_eq!(CRDS[i].info.kind, crd.spec.names.kind);
        }
        assert_eq!(TailscaleTailnet::info().kind, "TailscaleTailnet");
        assert_eq!(TailscaleEndpoints::info().kind, "TailscaleEndpoints");
        assert_eq!(TailscaleServices::info().kind, "TailscaleServices");
        assert_eq!(TailscaleGateway::info().kind, "TailscaleGateway");
        assert!(!TailscaleTailnet::info().namespaced && TailscaleServices::info().namespaced);
        assert_eq!(TailscaleEndpoints::info().short_names, vec!["tsep".to_string()]);
        assert_eq!(TailscaleServices::info().categories, vec!["tailscale".to_string()]);
        assert!(TailscaleServices::info().description.starts_with("A service in the tailnet"));
        for kind in CRDS.iter() {
            assert!(
                kind.printers.iter().all(|p| p.path.is_some()),
                "{}: a printer column does not parse",
                kind.info.kind
            );
        }
    }

    #[test]
    fn columns_and_cells_follow_the_printer_columns() {
        let svc: TailscaleServices = serde_json::from_value(serde_json::json!({
            "apiVersion": "gateway.tailscale.com/v1alpha1", "kind": "TailscaleServices",
            "metadata": {"name": "web", "namespace": "default", "creationTimestamp": "2025-06-25T10:00:00Z"},
            "spec": {"selector": {"matchLabels": {"app": "web"}}},
            "status": {"endpointCount": 2, "vipService": {"name": "svc:web", "backendCount": 3, "healthyBackends": 1}}
        }))
        .expect("parsing the TailscaleServices");
        let names: Vec<&str> = TailscaleServices::info().columns.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["Name", "VIP", "ENDPOINTS", "HEALTHY", "DNS", "PUBLISHED", "AGE"]);
        assert_eq!(TailscaleServices::info().columns[4].priority, 1);
        let now: jiff::Timestamp = "2025-06-25T10:30:00Z".parse().expect("parsing the timestamp");
        let cells: Vec<Cell<'_>> = svc.cells().into_iter().map(|c| c.at(now)).collect();
        assert_eq!(cells[0], "web");
        assert_eq!(cells[1], "svc:web");
        assert_eq!(cells[2], Cell::Number(2.into()));
        assert_eq!(cells[3], Cell::Number(1.into()));
        assert_eq!(cells[4], Cell::Null);
        assert_eq!(cells[5], Cell::Null, "no Published condition yet");
        assert_eq!(cells[6], "30m");
        let body = svc.body();
        assert!(body.get("metadata").is_none() && body["status"]["endpointCount"] == 2);
        assert_eq!(View::created(&svc).as_deref(), Some("2025-06-25T10:00:00Z"));
    }

    #[test]
    fn ready_conditions_fill_the_ready_column() {
        let tn: TailscaleTailnet = serde_json::from_value(serde_json::json!({
            "apiVersion": "gateway.tailscale.com/v1alpha1", "kind": "TailscaleTailnet",
            "metadata": {"name": "corp"},
            "spec": {"oauthSecretRef": {"name": "s"}},
            "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "Ok", "message": "",
                "lastTransitionTime": "2025-06-25T10:00:00Z"}], "tailnetInfo": {"name": "corp.com"}}
        }))
        .expect("parsing the TailscaleTailnet");
        let cells = tn.cells();
        assert_eq!(cells[1], "corp.com");
        assert_eq!(cells[2], Cell::Null);
        assert_eq!(cells[3], "True");
        assert_eq!(cells[4], Cell::Null, "no creationTimestamp: no age");
    }
}

//! Discovery and OpenAPI documents, as plain functions: what kubectl reads to map `tsdev` to a
//! resource (`/api`, `/apis`, `/apis/<g>`, `/apis/<g>/<v>`), and the schemas kube-apiserver
//! aggregates and `kubectl explain` renders (`/openapi/v2`, `/openapi/v3`).
//!
//! Discovery is served in the legacy (non-aggregated) form only: a client asking for
//! `apidiscovery.k8s.io` `APIGroupDiscoveryList` gets plain `application/json` and falls back
//! to the per-group documents, which is what client-go does when an aggregated server lacks it.

use serde_json::{Map, Value, json};

use super::resources::{CATEGORY, GROUP, GROUP_VERSION, VERSION, View};
use crate::core::views::{Device, Selection};

const OBJECT_META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta";
const LIST_META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.ListMeta";
/// Prefix of our definition names (reverse-DNS of the group, as Kubernetes names them).
const DEF_PREFIX: &str = "com.tailscale.gateway.tailnet.v1alpha1";

/// The verbs both kinds support: read-only.
pub const VERBS: &[&str] = &["get", "list", "watch"];

fn group_version_entry() -> Value {
    json!({"groupVersion": GROUP_VERSION, "version": VERSION})
}

/// `/api`: we serve no core group; an empty version list makes clients skip it.
pub fn api_versions() -> Value {
    json!({"kind": "APIVersions", "versions": [], "serverAddressByClientCIDRs": []})
}

/// `/apis/<group>`.
pub fn api_group() -> Value {
    json!({"kind": "APIGroup", "apiVersion": "v1", "name": GROUP,
        "versions": [group_version_entry()], "preferredVersion": group_version_entry()})
}

/// `/apis`: our one group.
pub fn api_group_list() -> Value {
    let mut g = api_group();
    if let Some(o) = g.as_object_mut() {
        o.remove("kind");
        o.remove("apiVersion");
    }
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": [g]})
}

fn resource_entry<T: View>() -> Value {
    json!({
        "name": T::PLURAL,
        "singularName": T::SINGULAR,
        "namespaced": true,
        "kind": T::KIND,
        "verbs": VERBS,
        "shortNames": T::SHORT_NAMES,
        "categories": [CATEGORY],
    })
}

/// `/apis/<group>/<version>`: the resources, their verbs, short names and categories.
pub fn api_resource_list() -> Value {
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": GROUP_VERSION,
        "resources": [resource_entry::<Device>(), resource_entry::<Selection>()]})
}

fn gvk(kind: &str) -> Value {
    json!([{"group": GROUP, "version": VERSION, "kind": kind}])
}

fn type_meta_properties(kind_doc: &str) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert(
        "apiVersion".into(),
        json!({"type": "string", "description": "APIVersion defines the versioned schema of this representation of an object."}),
    );
    m.insert("kind".into(), json!({"type": "string", "description": kind_doc}));
    m
}

fn object_schema<T: View>(refs: &str) -> Value {
    let mut props =
        type_meta_properties("Kind is a string value representing the REST resource this object represents.");
    props.insert(
        "metadata".into(),
        json!({"$ref": format!("{refs}{OBJECT_META}"), "description": "Standard object's metadata."}),
    );
    if let Value::Object(extra) = T::schema_properties() {
        props.extend(extra);
    }
    json!({"type": "object", "description": T::DESCRIPTION, "properties": props,
        "x-kubernetes-group-version-kind": gvk(T::KIND)})
}

fn list_schema<T: View>(refs: &str) -> Value {
    let mut props =
        type_meta_properties("Kind is a string value representing the REST resource this object represents.");
    props.insert(
        "metadata".into(),
        json!({"$ref": format!("{refs}{LIST_META}"), "description": "Standard list metadata."}),
    );
    props.insert(
        "items".into(),
        json!({"type": "array", "description": format!("List of {}.", T::PLURAL),
            "items": {"$ref": format!("{refs}{DEF_PREFIX}.{}", T::KIND)}}),
    );
    json!({"type": "object", "description": format!("{} is a list of {}.", T::LIST_KIND, T::KIND),
        "required": ["items"], "properties": props, "x-kubernetes-group-version-kind": gvk(T::LIST_KIND)})
}

fn meta_schemas() -> [(String, Value); 2] {
    let s = |d: &str| json!({"type": "string", "description": d});
    let object_meta = json!({"type": "object",
    "description": "ObjectMeta is metadata that all persisted resources must have.",
    "properties": {
        "name": s("Name must be unique within a namespace."),
        "namespace": s("Namespace defines the space within which each name must be unique."),
        "labels": {"type": "object", "additionalProperties": {"type": "string"},
            "description": "Map of string keys and values that can be used to organize and categorize objects."},
        "resourceVersion": s("An opaque value that represents the internal version of this object."),
        "creationTimestamp": {"type": "string", "format": "date-time",
            "description": "CreationTimestamp is a timestamp representing the server time when this object was created."},
    }});
    let list_meta = json!({"type": "object",
    "description": "ListMeta describes metadata that synthetic resources must have.",
    "properties": {
        "resourceVersion": s("String that identifies the server's internal version of this object."),
        "continue": s("Set when the list is paged: pass it as continue to get the next page."),
        "remainingItemCount": {"type": "integer", "format": "int64",
            "description": "Number of subsequent items in the list which are not included in this list response."},
    }});
    [(OBJECT_META.to_string(), object_meta), (LIST_META.to_string(), list_meta)]
}

/// Every schema, with `$ref`s under `refs` (`#/definitions/` for v2, `#/components/schemas/`
/// for v3).
pub fn schemas(refs: &str) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert(format!("{DEF_PREFIX}.{}", Device::KIND), object_schema::<Device>(refs));
    m.insert(format!("{DEF_PREFIX}.{}", Device::LIST_KIND), list_schema::<Device>(refs));
    m.insert(format!("{DEF_PREFIX}.{}", Selection::KIND), object_schema::<Selection>(refs));
    m.insert(format!("{DEF_PREFIX}.{}", Selection::LIST_KIND), list_schema::<Selection>(refs));
    m.extend(meta_schemas());
    m
}

fn operation<T: View>(action: &str, response: String, v3: bool) -> Value {
    let schema = json!({"$ref": response});
    let ok = if v3 {
        json!({"description": "OK", "content": {"application/json": {"schema": schema}}})
    } else {
        json!({"description": "OK", "schema": schema})
    };
    let verb = if action == "list" { "list" } else { "read" };
    json!({"get": {
        "description": format!("{action} {}", T::KIND),
        "operationId": format!("{verb}{}{}", T::KIND, if action == "list" { "List" } else { "" }),
        "responses": {"200": ok},
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": {"group": GROUP, "version": VERSION, "kind": T::KIND},
    }})
}

fn paths_of<T: View>(refs: &str, v3: bool, paths: &mut Map<String, Value>) {
    let base = format!("/apis/{GROUP_VERSION}");
    let list = format!("{refs}{DEF_PREFIX}.{}", T::LIST_KIND);
    let one = format!("{refs}{DEF_PREFIX}.{}", T::KIND);
    paths.insert(format!("{base}/{}", T::PLURAL), operation::<T>("list", list.clone(), v3));
    paths.insert(format!("{base}/namespaces/{{namespace}}/{}", T::PLURAL), operation::<T>("list", list, v3));
    paths.insert(format!("{base}/namespaces/{{namespace}}/{}/{{name}}", T::PLURAL), operation::<T>("get", one, v3));
}

/// The read operations of both kinds, each tagged with its group-version-kind (what
/// `kubectl explain` uses to find a resource's schema).
pub fn paths(refs: &str, v3: bool) -> Map<String, Value> {
    let mut m = Map::new();
    paths_of::<Device>(refs, v3, &mut m);
    paths_of::<Selection>(refs, v3, &mut m);
    m
}

fn info() -> Value {
    json!({"title": "tailscale-gateway aggregated API", "version": VERSION})
}

/// `/openapi/v2` (JSON; kube-apiserver's aggregator merges it into the cluster's document).
pub fn openapi_v2() -> Value {
    json!({"swagger": "2.0", "info": info(), "paths": paths("#/definitions/", false),
        "definitions": schemas("#/definitions/")})
}

/// `/openapi/v3/apis/<group>/<version>`.
pub fn openapi_v3_group_version() -> Value {
    json!({"openapi": "3.0.0", "info": info(), "paths": paths("#/components/schemas/", true),
        "components": {"schemas": schemas("#/components/schemas/")}})
}

/// `/openapi/v3`: where each group-version document lives, with a content hash so clients can
/// cache it.
pub fn openapi_v3_root(hash: &str) -> Value {
    let path = format!("apis/{GROUP_VERSION}");
    json!({"paths": {path.clone(): {"serverRelativeURL": format!("/openapi/v3/{path}?hash={hash}")}}})
}

/// A stable content hash (FNV-1a 64) for `hash=` query parameters and ETags.
pub fn content_hash(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016X}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_list_has_verbs_short_names_and_categories() {
        let v = api_resource_list();
        assert_eq!(v["groupVersion"], GROUP_VERSION);
        let devices = &v["resources"][0];
        assert_eq!(devices["name"], "tailscaledevices");
        assert_eq!(devices["kind"], "TailscaleDevice");
        assert_eq!(devices["shortNames"][0], "tsdev");
        assert_eq!(devices["categories"][0], "tailscale");
        assert_eq!(devices["verbs"], json!(["get", "list", "watch"]));
        assert_eq!(v["resources"][1]["name"], "selectedendpoints");
        assert_eq!(api_group_list()["groups"][0]["preferredVersion"]["groupVersion"], GROUP_VERSION);
        assert_eq!(api_versions()["versions"], json!([]));
    }

    #[test]
    fn openapi_documents_resolve_their_refs() {
        for (doc, refs, defs) in [
            (openapi_v2(), "#/definitions/", "/definitions"),
            (openapi_v3_group_version(), "#/components/schemas/", "/components/schemas"),
        ] {
            let text = doc.to_string();
            let defs = doc.pointer(defs).and_then(Value::as_object).cloned().unwrap_or_default();
            for r in text.split("\"$ref\":\"").skip(1) {
                let name = r.split('"').next().unwrap_or_default().trim_start_matches(refs);
                assert!(defs.contains_key(name), "unresolved $ref {name}");
            }
            let dev = &defs["com.tailscale.gateway.tailnet.v1alpha1.TailscaleDevice"];
            assert_eq!(dev["x-kubernetes-group-version-kind"][0]["kind"], "TailscaleDevice");
            assert_eq!(dev["properties"]["status"]["properties"]["online"]["type"], "boolean");
            let op = &doc["paths"]["/apis/tailnet.gateway.tailscale.com/v1alpha1/namespaces/{namespace}/tailscaledevices"]
                ["get"];
            assert_eq!(op["x-kubernetes-group-version-kind"]["kind"], "TailscaleDevice");
        }
        let root = openapi_v3_root("ABC");
        assert_eq!(
            root["paths"]["apis/tailnet.gateway.tailscale.com/v1alpha1"]["serverRelativeURL"],
            "/openapi/v3/apis/tailnet.gateway.tailscale.com/v1alpha1?hash=ABC"
        );
        assert_eq!(content_hash(b"a"), content_hash(b"a"));
        assert_ne!(content_hash(b"a"), content_hash(b"b"));
    }
}

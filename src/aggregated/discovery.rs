//! Discovery and OpenAPI documents, as plain functions: what kubectl reads to map `tsdev` to a
//! resource (`/api`, `/apis`, `/apis/<g>`, `/apis/<g>/<v>`), and the schemas kube-apiserver
//! aggregates and `kubectl explain` renders (`/openapi/v2`, `/openapi/v3`).
//!
//! Discovery is served in the legacy (non-aggregated) form only: a client asking for
//! `apidiscovery.k8s.io` `APIGroupDiscoveryList` gets plain `application/json` and falls back
//! to the per-group documents, which is what client-go does when an aggregated server lacks it.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    APIGroup, APIGroupList, APIResource, APIResourceList, APIVersions, GroupVersionForDiscovery,
};
use serde_json::{Map, Value, json};

use super::request::{ApiGroup, KindFn, ResourceKind};
use super::resources::{KindInfo, View};

const OBJECT_META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta";
const LIST_META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.ListMeta";

/// The verbs every kind supports: read-only.
pub const VERBS: &[&str] = &["get", "list", "watch"];

/// Prefix of a group's definition names (reverse-DNS of the group, as Kubernetes names them):
/// `com.tailscale.gateway.tailnet.v1alpha1`, `com.tailscale.gateway.v1alpha1`.
fn def_prefix(info: &KindInfo) -> String {
    let reversed: Vec<&str> = info.group.split('.').rev().collect();
    format!("{}.{}", reversed.join("."), info.version)
}

fn definition(info: &KindInfo, kind: &str) -> String {
    format!("{}.{kind}", def_prefix(info))
}

fn group_version_entry(group: ApiGroup) -> GroupVersionForDiscovery {
    GroupVersionForDiscovery { group_version: group.group_version().into(), version: group.version().into() }
}

/// `/api`: we serve no core group; an empty version list makes clients skip it.
pub fn api_versions() -> APIVersions {
    APIVersions { versions: Vec::new(), server_address_by_client_cidrs: Vec::new() }
}

/// `/apis/<group>`.
pub fn api_group(group: ApiGroup) -> APIGroup {
    APIGroup {
        name: group.name().into(),
        versions: vec![group_version_entry(group)],
        preferred_version: Some(group_version_entry(group)),
        server_address_by_client_cidrs: None,
    }
}

/// `/apis`: the groups served.
pub fn api_group_list(groups: &[ApiGroup]) -> APIGroupList {
    APIGroupList { groups: groups.iter().map(|g| api_group(*g)).collect() }
}

fn resource_entry(info: &KindInfo) -> APIResource {
    APIResource {
        name: info.plural.clone(),
        singular_name: info.singular.clone(),
        namespaced: info.namespaced,
        kind: info.kind.clone(),
        verbs: VERBS.iter().map(|v| v.to_string()).collect(),
        short_names: Some(info.short_names.clone()),
        categories: Some(info.categories.clone()),
        ..APIResource::default()
    }
}

/// `/apis/<group>/<version>`: the resources, their verbs, short names and categories.
pub fn api_resource_list(group: ApiGroup) -> APIResourceList {
    APIResourceList {
        group_version: group.group_version().into(),
        resources: group.kinds().map(|k| resource_entry(k.info())).collect(),
    }
}

fn gvk(info: &KindInfo, kind: &str) -> Value {
    json!([{"group": info.group, "version": info.version, "kind": kind}])
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
    let info = T::info();
    let mut props =
        type_meta_properties("Kind is a string value representing the REST resource this object represents.");
    props.insert(
        "metadata".into(),
        json!({"$ref": format!("{refs}{OBJECT_META}"), "description": "Standard object's metadata."}),
    );
    if let Value::Object(extra) = T::schema_properties() {
        props.extend(extra);
    }
    json!({"type": "object", "description": info.description, "properties": props,
        "x-kubernetes-group-version-kind": gvk(info, &info.kind)})
}

fn list_schema(info: &KindInfo, refs: &str) -> Value {
    let mut props =
        type_meta_properties("Kind is a string value representing the REST resource this object represents.");
    props.insert(
        "metadata".into(),
        json!({"$ref": format!("{refs}{LIST_META}"), "description": "Standard list metadata."}),
    );
    props.insert(
        "items".into(),
        json!({"type": "array", "description": format!("List of {}.", info.plural),
            "items": {"$ref": format!("{refs}{}", definition(info, &info.kind))}}),
    );
    json!({"type": "object", "description": format!("{} is a list of {}.", info.list_kind, info.kind),
        "required": ["items"], "properties": props, "x-kubernetes-group-version-kind": gvk(info, &info.list_kind)})
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

/// A kind's object and list schemas, added to a map.
struct SchemasOf<'a> {
    refs: &'a str,
    into: &'a mut Map<String, Value>,
}

impl KindFn for SchemasOf<'_> {
    type Out = ();
    fn call<T: View>(self) {
        let info = T::info();
        self.into.insert(definition(info, &info.kind), object_schema::<T>(self.refs));
        self.into.insert(definition(info, &info.list_kind), list_schema(info, self.refs));
    }
}

/// Every schema of `kinds`, with `$ref`s under `refs` (`#/definitions/` for v2,
/// `#/components/schemas/` for v3).
pub fn schemas(refs: &str, kinds: &[ResourceKind]) -> Map<String, Value> {
    let mut m = Map::new();
    for kind in kinds {
        kind.with(SchemasOf { refs, into: &mut m });
    }
    m.extend(meta_schemas());
    m
}

fn operation(info: &KindInfo, action: &str, response: String, v3: bool) -> Value {
    let schema = json!({"$ref": response});
    let ok = if v3 {
        json!({"description": "OK", "content": {"application/json": {"schema": schema}}})
    } else {
        json!({"description": "OK", "schema": schema})
    };
    let verb = if action == "list" { "list" } else { "read" };
    let kind = &info.kind;
    json!({"get": {
        "description": format!("{action} {kind}"),
        "operationId": format!("{verb}{kind}{}", if action == "list" { "List" } else { "" }),
        "responses": {"200": ok},
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": {"group": info.group, "version": info.version, "kind": kind},
    }})
}

fn paths_of(info: &KindInfo, refs: &str, v3: bool, paths: &mut Map<String, Value>) {
    let base = format!("/apis/{}", info.api_version);
    let list = format!("{refs}{}", definition(info, &info.list_kind));
    let one = format!("{refs}{}", definition(info, &info.kind));
    let plural = &info.plural;
    paths.insert(format!("{base}/{plural}"), operation(info, "list", list.clone(), v3));
    if info.namespaced {
        paths.insert(format!("{base}/namespaces/{{namespace}}/{plural}"), operation(info, "list", list, v3));
        paths.insert(format!("{base}/namespaces/{{namespace}}/{plural}/{{name}}"), operation(info, "get", one, v3));
    } else {
        paths.insert(format!("{base}/{plural}/{{name}}"), operation(info, "get", one, v3));
    }
}

/// The read operations of `kinds`, each tagged with its group-version-kind (what
/// `kubectl explain` uses to find a resource's schema).
pub fn paths(refs: &str, v3: bool, kinds: &[ResourceKind]) -> Map<String, Value> {
    let mut m = Map::new();
    for kind in kinds {
        paths_of(kind.info(), refs, v3, &mut m);
    }
    m
}

fn info() -> Value {
    json!({"title": "tailscale-gateway aggregated API", "version": "v1alpha1"})
}

fn kinds_of(groups: &[ApiGroup]) -> Vec<ResourceKind> {
    groups.iter().flat_map(|g| g.kinds()).collect()
}

/// `/openapi/v2` of the groups served (JSON; kube-apiserver's aggregator merges it into the
/// cluster's document).
pub fn openapi_v2(groups: &[ApiGroup]) -> Value {
    let kinds = kinds_of(groups);
    json!({"swagger": "2.0", "info": info(), "paths": paths("#/definitions/", false, &kinds),
        "definitions": schemas("#/definitions/", &kinds)})
}

/// `/openapi/v3/apis/<group>/<version>`.
pub fn openapi_v3_group_version(group: ApiGroup) -> Value {
    let kinds = kinds_of(&[group]);
    json!({"openapi": "3.0.0", "info": info(), "paths": paths("#/components/schemas/", true, &kinds),
        "components": {"schemas": schemas("#/components/schemas/", &kinds)}})
}

/// `/openapi/v3`: where each group-version document lives, with a content hash so clients can
/// cache it.
pub fn openapi_v3_root(documents: &[(ApiGroup, String)]) -> Value {
    let mut paths = Map::new();
    for (group, hash) in documents {
        let path = format!("apis/{}", group.group_version());
        paths.insert(path.clone(), json!({"serverRelativeURL": format!("/openapi/v3/{path}?hash={hash}")}));
    }
    json!({"paths": paths})
}

/// The minor version `/version` reports when the client does not tell its own: the Kubernetes
/// API this server is compiled against (k8s-openapi's `v1_33`).
pub const DEFAULT_MINOR: u32 = 33;

/// The `major.minor` a client-go User-Agent names (`kubectl/v1.31.2 (linux/amd64) kubernetes/…`,
/// `kubectl.1.27/v1.27.16 …`), when it is a 1.x version.
pub fn client_minor(user_agent: &str) -> Option<u32> {
    let product = user_agent.split_whitespace().next()?;
    let version = product.rsplit_once('/')?.1.strip_prefix('v')?;
    let mut parts = version.split('.');
    if parts.next()? != "1" {
        return None;
    }
    let minor = parts.next()?;
    let digits = minor.find(|c: char| !c.is_ascii_digit()).map_or(minor, |end| &minor[..end]);
    digits.parse().ok()
}

/// `/version`, as kube-apiserver answers it (`version.Info`).
///
/// kubectl 1.28 and newer print "WARNING: version difference between client (1.x) and server
/// (1.y) exceeds the supported minor version skew of +/-1" when the minors differ by more than
/// one, and no single version is within one of every kubectl from 1.27 to 1.33. There is no
/// kube-apiserver behind local mode whose version could be reported, and what this server
/// answers (discovery, OpenAPI v2 and v3, Tables, watches) is the same for every client, so it
/// reports the minor version of the client asking, read from its User-Agent, else
/// [`DEFAULT_MINOR`]. The version must stay semantic (`vMAJOR.MINOR.PATCH`): kubectl fails
/// `kubectl version` on one it cannot parse. The build metadata (`+tailscale-gateway.<version>`)
/// says what answered.
pub fn version_info(user_agent: Option<&str>) -> Value {
    let minor = user_agent.and_then(client_minor).unwrap_or(DEFAULT_MINOR);
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    json!({
        "major": "1",
        "minor": minor.to_string(),
        "gitVersion": format!("v1.{minor}.0+tailscale-gateway.{}", env!("CARGO_PKG_VERSION")),
        "gitCommit": "",
        "gitTreeState": "",
        "buildDate": "",
        "goVersion": "",
        "compiler": "rustc",
        "platform": format!("{}/{arch}", std::env::consts::OS),
    })
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
    use crate::aggregated::resources::GROUP_VERSION;

    /// A discovery document as clients read it.
    fn as_json(doc: impl serde::Serialize) -> Value {
        serde_json::to_value(doc).expect("serializing a discovery document")
    }

    #[test]
    fn resource_list_has_verbs_short_names_and_categories() {
        let v = as_json(api_resource_list(ApiGroup::Tailnet));
        assert_eq!(v["kind"], "APIResourceList");
        assert_eq!(v["apiVersion"], "v1");
        assert_eq!(v["groupVersion"], GROUP_VERSION);
        let devices = &v["resources"][0];
        assert_eq!(devices["name"], "tailscaledevices");
        assert_eq!(devices["kind"], "TailscaleDevice");
        assert_eq!(devices["shortNames"][0], "tsdev");
        assert_eq!(devices["categories"][0], "tailscale");
        assert_eq!(devices["verbs"], json!(["get", "list", "watch"]));
        assert_eq!(v["resources"][1]["name"], "selectedendpoints");
        assert_eq!(v["resources"].as_array().map(Vec::len), Some(2));
        let groups = as_json(api_group_list(&[ApiGroup::Tailnet]));
        assert_eq!(groups["kind"], "APIGroupList");
        assert_eq!(groups["groups"][0]["preferredVersion"]["groupVersion"], GROUP_VERSION);
        assert_eq!(groups["groups"].as_array().map(Vec::len), Some(1));
        let versions = as_json(api_versions());
        assert_eq!((versions["kind"].as_str(), &versions["versions"]), (Some("APIVersions"), &json!([])));
    }

    #[test]
    fn openapi_documents_resolve_their_refs() {
        for (doc, refs, defs) in [
            (openapi_v2(&[ApiGroup::Tailnet]), "#/definitions/", "/definitions"),
            (openapi_v3_group_version(ApiGroup::Tailnet), "#/components/schemas/", "/components/schemas"),
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
        let root = openapi_v3_root(&[(ApiGroup::Tailnet, "ABC".into())]);
        assert_eq!(
            root["paths"]["apis/tailnet.gateway.tailscale.com/v1alpha1"]["serverRelativeURL"],
            "/openapi/v3/apis/tailnet.gateway.tailscale.com/v1alpha1?hash=ABC"
        );
        assert_eq!(content_hash(b"a"), content_hash(b"a"));
        assert_ne!(content_hash(b"a"), content_hash(b"b"));
    }

    #[test]
    fn crd_group_documents_come_from_the_crds() {
        let v = as_json(api_resource_list(ApiGroup::Crds));
        assert_eq!(v["groupVersion"], "gateway.tailscale.com/v1alpha1");
        let tailnets = &v["resources"][0];
        assert_eq!(tailnets["name"], "tailscaletailnets");
        assert_eq!(tailnets["namespaced"], false);
        assert_eq!(tailnets["shortNames"], json!(["tstailnet"]));
        assert_eq!(v["resources"][2]["shortNames"], json!(["tssvc"]));
        assert_eq!(v["resources"][2]["categories"], json!(["tailscale"]));
        let doc = openapi_v3_group_version(ApiGroup::Crds);
        let svc = &doc["components"]["schemas"]["com.tailscale.gateway.v1alpha1.TailscaleServices"];
        assert!(svc["properties"]["spec"]["properties"]["vipService"].is_object());
        assert!(svc["properties"]["status"].is_object());
        let paths = doc["paths"].as_object().cloned().unwrap_or_default();
        assert!(paths.contains_key("/apis/gateway.tailscale.com/v1alpha1/tailscaletailnets/{name}"));
        assert!(paths.contains_key("/apis/gateway.tailscale.com/v1alpha1/namespaces/{namespace}/tailscaleservices"));
        let both = openapi_v2(&[ApiGroup::Tailnet, ApiGroup::Crds]);
        assert!(both["definitions"]["com.tailscale.gateway.v1alpha1.TailscaleGatewayList"].is_object());
        assert!(both["definitions"]["com.tailscale.gateway.tailnet.v1alpha1.TailscaleDevice"].is_object());
    }

    #[test]
    fn version_follows_the_client_within_skew() {
        assert_eq!(client_minor("kubectl/v1.31.2 (linux/amd64) kubernetes/abc"), Some(31));
        assert_eq!(client_minor("kubectl.1.27/v1.27.16 (linux/amd64) kubernetes/abc"), Some(27));
        assert_eq!(client_minor("kubectl/v1.32.4-dispatcher (linux/amd64) kubernetes/abc"), Some(32));
        assert_eq!(client_minor("curl/8.5.0"), None);
        assert_eq!(client_minor("Go-http-client/1.1"), None);
        let v = version_info(Some("kubectl/v1.28.0 (linux/amd64) kubernetes/abc"));
        assert_eq!(v["minor"], "28");
        assert!(v["gitVersion"].as_str().unwrap_or_default().starts_with("v1.28.0+tailscale-gateway."));
        assert_eq!(version_info(None)["minor"], DEFAULT_MINOR.to_string());
    }
}

//! Unknown fields: what `kubectl apply` rejects and serde silently ignores.
//!
//! Since Kubernetes 1.27, `kubectl apply` asks for strict field validation, and kube-apiserver
//! rejects a custom resource with a field its CRD schema does not declare
//! (`unknown field "spec.prots"`). Deserialization into our types drops such fields, so without
//! this check the `check` CLI and local mode would accept a typo the cluster refuses.
//!
//! The walk follows kube-apiserver's pruning of custom resources: the `openAPIV3Schema` of our
//! served version decides which keys an object may have, and `metadata` is checked against
//! ObjectMeta. It only looks at field names; types and values are the validator's business.

use std::collections::BTreeSet;
use std::sync::LazyLock;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    JSONSchemaProps, JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
};
use serde_json::Value;

use super::Kind;
use crate::api::{VERSION, crds};

/// The `openAPIV3Schema` of each kind's [`VERSION`], built once from the CRDs
/// `tailscale-gateway crds` prints.
static SCHEMAS: LazyLock<Vec<(Kind, JSONSchemaProps)>> = LazyLock::new(|| {
    crds()
        .into_iter()
        .filter_map(|crd| {
            let kind = Kind::from_name(&crd.spec.names.kind)?;
            let version = crd.spec.versions.into_iter().find(|v| v.name == VERSION)?;
            Some((kind, version.schema?.open_api_v3_schema?))
        })
        .collect()
});

/// What every top-level object (and every `x-kubernetes-embedded-resource`) may carry besides
/// its schema's properties: `apiVersion`, `kind` and an ObjectMeta `metadata`. Our CRD schemas
/// do not declare these; kube-apiserver handles them itself.
static OBJECT: LazyLock<JSONSchemaProps> =
    LazyLock::new(|| object([("apiVersion", typed("string")), ("kind", typed("string")), ("metadata", object_meta())]));

/// Fields of ObjectMeta with a scalar value, as kube-apiserver decodes `metadata`.
const OBJECT_META_SCALARS: [(&str, &str); 10] = [
    ("creationTimestamp", "string"),
    ("deletionGracePeriodSeconds", "integer"),
    ("deletionTimestamp", "string"),
    ("generateName", "string"),
    ("generation", "integer"),
    ("name", "string"),
    ("namespace", "string"),
    ("resourceVersion", "string"),
    ("selfLink", "string"),
    ("uid", "string"),
];

/// Fields of an `ownerReferences` item.
const OWNER_REFERENCE_FIELDS: [(&str, &str); 6] = [
    ("apiVersion", "string"),
    ("blockOwnerDeletion", "boolean"),
    ("controller", "boolean"),
    ("kind", "string"),
    ("name", "string"),
    ("uid", "string"),
];

/// Scalar fields of a `managedFields` item (`fieldsV1` holds arbitrary content).
const MANAGED_FIELDS_SCALARS: [(&str, &str); 6] = [
    ("apiVersion", "string"),
    ("fieldsType", "string"),
    ("manager", "string"),
    ("operation", "string"),
    ("subresource", "string"),
    ("time", "string"),
];

fn typed(type_: &str) -> JSONSchemaProps {
    JSONSchemaProps { type_: Some(type_.to_string()), ..Default::default() }
}

fn object<'a>(properties: impl IntoIterator<Item = (&'a str, JSONSchemaProps)>) -> JSONSchemaProps {
    JSONSchemaProps {
        properties: Some(properties.into_iter().map(|(k, v)| (k.to_string(), v)).collect()),
        ..typed("object")
    }
}

fn list_of(items: JSONSchemaProps) -> JSONSchemaProps {
    JSONSchemaProps { items: Some(JSONSchemaPropsOrArray::Schema(Box::new(items))), ..typed("array") }
}

fn map_of(values: JSONSchemaProps) -> JSONSchemaProps {
    JSONSchemaProps { additional_properties: Some(JSONSchemaPropsOrBool::Schema(Box::new(values))), ..typed("object") }
}

fn scalars<'a>(fields: &'a [(&'a str, &'a str)]) -> impl Iterator<Item = (&'a str, JSONSchemaProps)> {
    fields.iter().map(|(name, type_)| (*name, typed(type_)))
}

fn object_meta() -> JSONSchemaProps {
    let owner_reference = object(scalars(&OWNER_REFERENCE_FIELDS));
    let fields_v1 = JSONSchemaProps { x_kubernetes_preserve_unknown_fields: Some(true), ..typed("object") };
    let managed_fields_entry = object(scalars(&MANAGED_FIELDS_SCALARS).chain([("fieldsV1", fields_v1)]));
    object(scalars(&OBJECT_META_SCALARS).chain([
        ("annotations", map_of(typed("string"))),
        ("finalizers", list_of(typed("string"))),
        ("labels", map_of(typed("string"))),
        ("managedFields", list_of(managed_fields_entry)),
        ("ownerReferences", list_of(owner_reference)),
    ]))
}

/// The `openAPIV3Schema` this module checks objects of `kind` against, if the CRD has one.
fn schema(kind: Kind) -> Option<&'static JSONSchemaProps> {
    SCHEMAS.iter().find(|(k, _)| *k == kind).map(|(_, s)| s)
}

/// Paths of the fields in `object` that the CRD schema of `kind` does not declare, as kubectl
/// prints them in `unknown field "…"`: dotted keys with list indexes in brackets, e.g.
/// `spec.prots`, `spec.selector.matchLabel`, `spec.ports[1].protocl`, `metadata.lables`.
///
/// Top-level `apiVersion`, `kind` and `metadata` are always allowed; `metadata` is checked
/// against ObjectMeta. Keys of maps (`labels`, `matchLabels`, any `additionalProperties`) are
/// free, but their values are checked. Only the outermost unknown key of a subtree is reported,
/// as kube-apiserver does. Paths come in depth-first order (keys in the order `serde_json`
/// keeps them, list items by index), each once. A value that is not a JSON object has no
/// fields to report.
pub fn unknown_fields(kind: Kind, object: &Value) -> Vec<String> {
    match schema(kind) {
        Some(root) if object.is_object() => walk(vec![root, &*OBJECT], object),
        _ => Vec::new(),
    }
}

/// One step of the walk. An explicit stack instead of recursion: no input nests deep enough to
/// overflow it.
enum Step<'v, 's> {
    /// Check `value` at `path` against every schema in the list (none: nothing is declared).
    Visit(String, &'v Value, Vec<&'s JSONSchemaProps>),
    /// Report `path` as unknown.
    Unknown(String),
}

/// Adds `schema` and, recursively, its `allOf`/`anyOf`/`oneOf` branches to `out`, plus the
/// implicit `apiVersion`/`kind`/`metadata` of an embedded resource. The walk treats them as a
/// union: a key is known when any of them declares it. (kube-apiserver's structural schemas
/// keep properties out of these junctors; the union only matters for schemas it would not
/// accept, and it can only make the check more lenient.)
fn expand<'s>(schema: &'s JSONSchemaProps, out: &mut Vec<&'s JSONSchemaProps>) {
    let mut pending = vec![schema];
    while let Some(s) = pending.pop() {
        out.push(s);
        if s.x_kubernetes_embedded_resource == Some(true) {
            out.push(&OBJECT);
        }
        for branches in [&s.all_of, &s.any_of, &s.one_of].into_iter().flatten() {
            pending.extend(branches.iter().rev());
        }
    }
}

fn child_path(path: &str, key: &str) -> String {
    if path.is_empty() { key.to_string() } else { format!("{path}.{key}") }
}

fn walk(roots: Vec<&JSONSchemaProps>, value: &Value) -> Vec<String> {
    let mut found = Vec::new();
    let mut seen = BTreeSet::new();
    let mut stack = vec![Step::Visit(String::new(), value, roots)];
    while let Some(step) = stack.pop() {
        let (path, value, given) = match step {
            Step::Unknown(path) => {
                if seen.insert(path.clone()) {
                    found.push(path);
                }
                continue;
            }
            Step::Visit(path, value, given) => (path, value, given),
        };
        let mut schemas = Vec::with_capacity(given.len());
        for s in given {
            expand(s, &mut schemas);
        }
        // Anything goes below `x-kubernetes-preserve-unknown-fields` except inside declared fields.
        let preserve = schemas.iter().any(|s| s.x_kubernetes_preserve_unknown_fields == Some(true));
        // Children are pushed last-first so that they are popped in order.
        let mut children = Vec::new();
        match value {
            Value::Object(map) => {
                for (key, child) in map {
                    let path = child_path(&path, key);
                    let declared: Vec<_> =
                        schemas.iter().filter_map(|s| s.properties.as_ref()?.get(key.as_str())).collect();
                    if !declared.is_empty() {
                        children.push(Step::Visit(path, child, declared));
                        continue;
                    }
                    let mut any_value = preserve;
                    let mut values = Vec::new();
                    for s in &schemas {
                        match &s.additional_properties {
                            Some(JSONSchemaPropsOrBool::Schema(v)) => values.push(&**v),
                            Some(JSONSchemaPropsOrBool::Bool(true)) => any_value = true,
                            Some(JSONSchemaPropsOrBool::Bool(false)) | None => {}
                        }
                    }
                    if !values.is_empty() && !any_value {
                        children.push(Step::Visit(path, child, values));
                    } else if values.is_empty() && !any_value {
                        children.push(Step::Unknown(path));
                    }
                }
            }
            Value::Array(items) => {
                if preserve && schemas.iter().all(|s| s.items.is_none()) {
                    continue;
                }
                for (i, child) in items.iter().enumerate() {
                    let item_schemas = schemas
                        .iter()
                        .filter_map(|s| match s.items.as_ref()? {
                            JSONSchemaPropsOrArray::Schema(item) => Some(&**item),
                            JSONSchemaPropsOrArray::Schemas(tuple) => tuple.get(i),
                        })
                        .collect();
                    children.push(Step::Visit(format!("{path}[{i}]"), child, item_schemas));
                }
            }
            Value::Null | Value::Bool(_) | Value::Number(_) | Value::String(_) => {}
        }
        stack.extend(children.into_iter().rev());
    }
    found
}

#[cfg(test)]
mod tests {

    use serde_json::json;

    use super::*;

    fn check(kind: Kind, object: Value) -> Vec<String> {
        unknown_fields(kind, &object)
    }

    #[test]
    fn every_kind_has_a_schema_with_spec_and_status() {
        for kind in Kind::ALL {
            let root = schema(kind).unwrap_or_else(|| panic!("no schema for {kind}"));
            let properties = root.properties.as_ref().unwrap_or_else(|| panic!("{kind}: no properties"));
            assert!(properties.contains_key("spec"), "{kind}");
            assert!(properties.contains_key("status"), "{kind}");
        }
    }

    #[test]
    fn endpoints_typos() {
        let object = json!({
            "apiVersion": "gateway.tailscale.com/v1alpha1",
            "kind": "TailscaleEndpoints",
            "metadata": {"name": "e", "namespace": "default", "lables": {"a": "b"}},
            "spec": {
                "tailnet": "t",
                "prots": [{"port": 80}],
                "ports": [{"port": 80, "protocol": "TCP"}, {"port": 81, "protocl": "TCP"}],
                "proxy": {"replica": 2, "resources": {"limit": {"cpu": "1"}}},
            },
            "status": {"devices": [{"hostname": "h"}, {"hostnme": "h"}], "deviceCnt": 1},
        });
        assert_eq!(
            check(Kind::Endpoints, object),
            [
                "metadata.lables",
                "spec.ports[1].protocl",
                "spec.prots",
                "spec.proxy.replica",
                "spec.proxy.resources.limit",
                "status.deviceCnt",
                "status.devices[1].hostnme",
            ]
        );
    }

    #[test]
    fn services_typos() {
        let object = json!({
            "apiVersion": "gateway.tailscale.com/v1alpha1",
            "kind": "TailscaleServices",
            "metadata": {"name": "s"},
            "spec": {
                "selector": {
                    "matchLabel": {"app": "web"},
                    "matchExpressions": [
                        {"key": "region", "operator": "In", "values": ["east"]},
                        {"key": "tier", "operater": "Exists"},
                    ],
                },
                "vipService": {"portz": ["tcp:80"], "ports": [{"foo": 1}]},
                "loadBalancing": {"healthCheck": {"path": "/health", "intervl": "10s"}},
                "endpointTemplate": {"proxy": {"affinity": {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                    {"topologyKey": "zone", "labelSelector": {"matchLabels": {"a": "b"}, "matchLabel": {}}},
                ]}}}},
            },
        });
        assert_eq!(
            check(Kind::Services, object),
            [
                "spec.endpointTemplate.proxy.affinity.podAffinity.requiredDuringSchedulingIgnoredDuringExecution[0]\
                 .labelSelector.matchLabel",
                "spec.loadBalancing.healthCheck.intervl",
                "spec.selector.matchExpressions[1].operater",
                "spec.selector.matchLabel",
                "spec.vipService.ports[0].foo",
                "spec.vipService.portz",
            ]
        );
    }

    #[test]
    fn tailnet_typos() {
        let object = json!({
            "apiVersion": "gateway.tailscale.com/v1alpha1",
            "kind": "TailscaleTailnet",
            "metadata": {"name": "t"},
            "specs": {},
            "spec": {"oauthSecretRef": {"nme": "s"}, "apiUrl": "https://x"},
            "status": {"tailnetInfo": {"magicDnsSuffix": "x"}, "conditions": [{"type": "Ready", "stauts": "True"}]},
        });
        assert_eq!(
            check(Kind::Tailnet, object),
            [
                "spec.apiUrl",
                "spec.oauthSecretRef.nme",
                "specs",
                "status.conditions[0].stauts",
                "status.tailnetInfo.magicDnsSuffix",
            ]
        );
    }

    #[test]
    fn gateway_typos() {
        let object = json!({
            "apiVersion": "gateway.tailscale.com/v1alpha1",
            "kind": "TailscaleGateway",
            "metadata": {"name": "g", "namespace": "default"},
            "spec": {
                "gatewayRef": {"name": "eg", "namepace": "x"},
                "tailnets": [{"name": "t", "serviceSelector": {"matchLabel": {"a": "b"}}, "routeGeneration": {"timout": "1s"}}],
                "routeGeneration": {"pathPrefix": "/ts/{service}/"},
            },
            "status": {"services": [{"name": "s", "cluser": "c"}]},
        });
        assert_eq!(
            check(Kind::Gateway, object),
            [
                "spec.gatewayRef.namepace",
                "spec.tailnets[0].routeGeneration.timout",
                "spec.tailnets[0].serviceSelector.matchLabel",
                "status.services[0].cluser",
            ]
        );
    }

    #[test]
    fn map_keys_are_free_but_map_values_are_checked() {
        let object = json!({
            "metadata": {
                "name": "e",
                "labels": {"anything.example.com/at-all": "x", "spec": "y"},
                "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"},
            },
            "spec": {
                "tailnet": "t",
                "proxy": {
                    "nodeSelector": {"kubernetes.io/os": "linux", "whatever": "x"},
                    "resources": {"limits": {"cpu": "1", "example.com/gpu": 2}, "requests": {"memory": "1Gi"}},
                    "affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                        {"weight": 1, "podAffinityTerm": {"topologyKey": "zone", "labelSelector": {"matchLabels": {"z": "q"}}}},
                    ]}},
                },
            },
        });
        assert_eq!(check(Kind::Endpoints, object), Vec::<String>::new());
        let services = json!({
            "spec": {
                "selector": {"matchLabels": {"any-key": "v", "matchLabel": "v"}},
                "endpointTemplate": {"labels": {"free": "form"}, "proxy": {"resources": {"requests": {"cpu": {"x": 1}}}}},
            },
        });
        // Keys of a map are free; an object where a Quantity goes has no declared fields.
        assert_eq!(check(Kind::Services, services), ["spec.endpointTemplate.proxy.resources.requests.cpu.x"]);
    }

    #[test]
    fn metadata_is_checked_against_object_meta() {
        let object = json!({
            "apiVersion": "gateway.tailscale.com/v1alpha1",
            "kind": "TailscaleTailnet",
            "metadata": {
                "name": "t", "generateName": "t-", "namespace": "", "uid": "u", "resourceVersion": "1",
                "generation": 2, "creationTimestamp": "2025-01-01T00:00:00Z", "deletionTimestamp": null,
                "deletionGracePeriodSeconds": 30, "selfLink": "/x", "finalizers": ["a/b"],
                "labels": {"a": "b"}, "annotations": {"c": "d"},
                "ownerReferences": [{"apiVersion": "v1", "kind": "Secret", "name": "s", "uid": "u",
                                     "controller": true, "blockOwnerDeletion": false}],
                "managedFields": [{"manager": "kubectl", "operation": "Apply", "apiVersion": "v1",
                                   "time": "2025-01-01T00:00:00Z", "fieldsType": "FieldsV1", "subresource": "",
                                   "fieldsV1": {"f:spec": {"f:tags": {}, ".": {}}}}],
            },
            "spec": {"oauthSecretRef": {"name": "s"}},
        });
        assert_eq!(check(Kind::Tailnet, object), Vec::<String>::new());
        let typos = json!({
            "metadata": {"name": "t", "lables": {}, "nameSpace": "x", "ownerReferences": [{"kind": "S", "nme": "s"}],
                         "managedFields": [{"manger": "m", "fieldsV1": {"anything": 1}}]},
        });
        assert_eq!(
            check(Kind::Gateway, typos),
            [
                "metadata.lables",
                "metadata.managedFields[0].manger",
                "metadata.nameSpace",
                "metadata.ownerReferences[0].nme"
            ]
        );
    }

    /// Guards the hand-written ObjectMeta field lists against the Kubernetes version we build with.
    #[test]
    fn object_meta_fields_match_k8s_openapi() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ManagedFieldsEntry, ObjectMeta, OwnerReference};
        fn upstream<T: schemars::JsonSchema>() -> BTreeSet<String> {
            let schema = schemars::schema_for!(T);
            let properties = schema.get("properties").and_then(Value::as_object);
            properties.unwrap_or_else(|| panic!("no properties")).keys().cloned().collect()
        }
        fn ours(schema: &JSONSchemaProps) -> BTreeSet<String> {
            schema.properties.as_ref().unwrap_or_else(|| panic!("no properties")).keys().cloned().collect()
        }
        fn item(schema: &JSONSchemaProps) -> &JSONSchemaProps {
            match &schema.items {
                Some(JSONSchemaPropsOrArray::Schema(s)) => s,
                other => panic!("not a list: {other:?}"),
            }
        }
        let meta = object_meta();
        assert_eq!(ours(&meta), upstream::<ObjectMeta>());
        let properties = meta.properties.as_ref().unwrap_or_else(|| panic!("no properties"));
        assert_eq!(ours(item(&properties["ownerReferences"])), upstream::<OwnerReference>());
        assert_eq!(ours(item(&properties["managedFields"])), upstream::<ManagedFieldsEntry>());
    }

    #[test]
    fn only_the_outermost_unknown_key_is_reported_and_paths_are_in_order() {
        let object = json!({
            "spec": {
                "ports": [{"port": 1}, {"x": 1}, {}, {}, {}, {}, {}, {}, {}, {}, {"x": {"y": {"z": 1}}}],
                "tags": [[[{"deep": 1}]]],
                "typo": {"nested": {"more": 1}},
            },
        });
        assert_eq!(
            check(Kind::Endpoints, object),
            ["spec.ports[1].x", "spec.ports[10].x", "spec.tags[0][0][0].deep", "spec.typo"]
        );
    }

    #[test]
    fn values_that_are_not_objects_have_nothing_to_report() {
        for value in [json!(null), json!("TailscaleTailnet"), json!(42), json!([{"spec": {"x": 1}}]), json!({})] {
            assert_eq!(unknown_fields(Kind::Tailnet, &value), Vec::<String>::new(), "{value}");
        }
        let odd = json!({"apiVersion": 1, "kind": {}, "metadata": "x", "spec": null, "status": [1]});
        // Wrong types are the validator's business: scalars and empty containers declare no fields.
        assert_eq!(check(Kind::Tailnet, odd), Vec::<String>::new());
    }

    /// Constructs our generated schemas do not use, on a hand-written schema.
    #[test]
    fn junctors_preserve_unknown_fields_and_additional_properties() {
        let schema = JSONSchemaProps {
            all_of: Some(vec![object([("fromAllOf", typed("string"))])]),
            any_of: Some(vec![JSONSchemaProps {
                one_of: Some(vec![object([("nested", typed("string"))])]),
                ..Default::default()
            }]),
            ..object([
                (
                    "kept",
                    JSONSchemaProps {
                        x_kubernetes_preserve_unknown_fields: Some(true),
                        ..object([("inner", object([]))])
                    },
                ),
                ("map", map_of(object([("value", typed("string"))]))),
                (
                    "open",
                    JSONSchemaProps {
                        additional_properties: Some(JSONSchemaPropsOrBool::Bool(true)),
                        ..typed("object")
                    },
                ),
                (
                    "closed",
                    JSONSchemaProps {
                        additional_properties: Some(JSONSchemaPropsOrBool::Bool(false)),
                        ..object([("a", typed("string"))])
                    },
                ),
                (
                    "tuple",
                    JSONSchemaProps {
                        items: Some(JSONSchemaPropsOrArray::Schemas(vec![object([("first", typed("string"))])])),
                        ..typed("array")
                    },
                ),
                (
                    "embedded",
                    JSONSchemaProps { x_kubernetes_embedded_resource: Some(true), ..object([("spec", object([]))]) },
                ),
            ])
        };
        let value = json!({
            "fromAllOf": "a", "nested": "b", "nope": 1,
            "kept": {"whatever": {"x": 1}, "inner": {"bad": 1}},
            "map": {"any": {"value": "v"}, "other": {"valu": "v"}},
            "open": {"x": {"y": 1}},
            "closed": {"a": "x", "b": "y"},
            "tuple": [{"first": "x", "second": "y"}, {"beyond": 1}],
            "embedded": {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "lables": {}}, "spec": {}, "extra": 1},
        });
        assert_eq!(
            walk(vec![&schema], &value),
            [
                "closed.b",
                "embedded.extra",
                "embedded.metadata.lables",
                "kept.inner.bad",
                "map.other.valu",
                "nope",
                "tuple[0].second",
                "tuple[1].beyond",
            ]
        );
    }
}

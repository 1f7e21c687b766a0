//! Defaulting for the mutating webhook: a JSON Patch computed over the raw object, so fields we
//! do not know survive untouched. Applying the patch and asking again yields no operations.

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, PatchOperation};
use serde_json::{Map, Value, json};

use super::dataplane::{GATEWAY_API_GROUP, ServeProtocol};
use super::{Kind, names};
use crate::api::{MANAGED_BY_LABEL, MANAGED_BY_VALUE};
use crate::validate::{
    DEFAULT_API_URL, DEFAULT_CONNECTION_TYPE, DEFAULT_HEALTH_INTERVAL, DEFAULT_PATH_PREFIX, DEFAULT_REPLICAS,
};

/// Collects `add` operations, creating missing parent objects on the way. Each operation is also
/// applied to a working copy so a later default sees the parents an earlier one created.
struct Patch {
    doc: Value,
    ops: Vec<PatchOperation>,
}

impl Patch {
    /// Ensures `path` holds a value, adding `value` (wrapped in any missing parents) otherwise.
    fn default(&mut self, path: &[&str], value: Value) {
        let mut cur = &self.doc;
        for (depth, key) in path.iter().enumerate() {
            // Array elements are addressed by index; a missing one is not created.
            let next = match cur {
                Value::Array(items) => match key.parse::<usize>().ok().and_then(|i| items.get(i)) {
                    Some(item) => Some(item),
                    None => return,
                },
                _ => cur.get(key),
            };
            match next {
                Some(Value::Null) | None => {
                    // Wrap the value in the parents that are missing below this depth.
                    let wrapped = path[depth + 1..].iter().rev().fold(value, |acc, k| {
                        let mut m = Map::new();
                        m.insert((*k).to_string(), acc);
                        Value::Object(m)
                    });
                    let ptr = PointerBuf::from_tokens(path[..=depth].iter().copied());
                    let op = PatchOperation::Add(AddOperation { path: ptr, value: wrapped });
                    // The parent exists (we walked it), so applying cannot fail; if it somehow
                    // did, the op is still valid against the submitted object.
                    let _ = json_patch::patch(&mut self.doc, std::slice::from_ref(&op));
                    self.ops.push(op);
                    return;
                }
                Some(next) if next.is_object() || next.is_array() || depth + 1 == path.len() => cur = next,
                // A non-object where we need to descend: leave it for validation to report.
                Some(_) => return,
            }
        }
    }
}

/// The defaulting patch for one of our objects (`raw` is the object as submitted).
pub fn patch(kind: Kind, raw: &Value) -> Vec<PatchOperation> {
    let mut p = Patch { doc: raw.clone(), ops: Vec::new() };
    p.default(&["metadata", "labels", MANAGED_BY_LABEL], json!(MANAGED_BY_VALUE));
    let has = |path: &[&str]| {
        path.iter()
            .try_fold(raw, |v, k| match v {
                Value::Array(items) => k.parse::<usize>().ok().and_then(|i| items.get(i)),
                _ => v.get(k),
            })
            .is_some_and(|v| !v.is_null())
    };
    match kind {
        Kind::Tailnet => {
            p.default(&["spec", "tailnet"], json!("-"));
            p.default(&["spec", "apiURL"], json!(DEFAULT_API_URL));
        }
        Kind::Endpoints => {
            p.default(&["spec", "proxy", "replicas"], json!(DEFAULT_REPLICAS));
            p.default(&["spec", "proxy", "connectionType"], json!(DEFAULT_CONNECTION_TYPE));
        }
        Kind::Services => {
            let name = raw.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default();
            if names::dns_label(name).is_ok() {
                p.default(&["spec", "vipService", "name"], json!(format!("svc:{name}")));
            }
            if has(&["spec", "loadBalancing", "healthCheck"]) {
                p.default(&["spec", "loadBalancing", "healthCheck", "interval"], json!(DEFAULT_HEALTH_INTERVAL));
            }
            let serve = raw.pointer("/spec/serve").and_then(Value::as_array).map_or(0, Vec::len);
            for i in 0..serve {
                let i = i.to_string();
                p.default(&["spec", "serve", &i, "protocol"], json!(ServeProtocol::DEFAULT));
                if has(&["spec", "serve", &i, "backendRef"]) {
                    let kind = raw.pointer(&format!("/spec/serve/{i}/backendRef/kind")).and_then(Value::as_str);
                    let group = if kind == Some("Gateway") { GATEWAY_API_GROUP } else { "" };
                    p.default(&["spec", "serve", &i, "backendRef", "group"], json!(group));
                    p.default(&["spec", "serve", &i, "backendRef", "kind"], json!("Service"));
                }
            }
        }
        Kind::Gateway => {
            p.default(&["spec", "routeGeneration", "pathPrefix"], json!(DEFAULT_PATH_PREFIX));
        }
        Kind::RoutePolicy => {
            p.default(&["spec", "defaultAction"], json!("Allow"));
            let targets = raw.pointer("/spec/targetRefs").and_then(Value::as_array).map_or(0, Vec::len);
            for i in 0..targets {
                let i = i.to_string();
                let kind = raw.pointer(&format!("/spec/targetRefs/{i}/kind")).and_then(Value::as_str);
                let group = if kind == Some("TailscaleServices") { crate::api::GROUP } else { GATEWAY_API_GROUP };
                p.default(&["spec", "targetRefs", &i, "group"], json!(group));
            }
        }
    }
    p.ops
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apply(doc: &Value, ops: Vec<PatchOperation>) -> Value {
        let mut d = doc.clone();
        json_patch::patch(&mut d, &json_patch::Patch(ops)).expect("applying the JSON patch");
        d
    }

    #[test]
    fn services_defaults_are_filled_once() {
        let raw = json!({"apiVersion": "gateway.tailscale.com/v1alpha1", "kind": "TailscaleServices",
            "metadata": {"name": "web", "labels": {"a": "b"}},
            "spec": {"selector": {"matchLabels": {"a": "b"}}, "vipService": {"ports": ["tcp:80"]},
                     "loadBalancing": {"healthCheck": {"path": "/h"}}, "unknownField": 1,
                     "serve": [{"port": 80, "backendRef": {"name": "web", "port": 8080}},
                               {"port": 443, "protocol": "HTTPS", "backendRef": {"kind": "Gateway", "name": "eg", "port": 443}},
                               "not an object"]}});
        let ops = patch(Kind::Services, &raw);
        assert_eq!(ops.len(), 7, "{ops:?}");
        let out = apply(&raw, ops);
        assert_eq!(out.pointer("/spec/vipService/name"), Some(&json!("svc:web")));
        assert_eq!(out.pointer("/spec/loadBalancing/strategy"), None, "Envoy Gateway's policy stays unless set");
        assert_eq!(out.pointer("/spec/serve/0/protocol"), Some(&json!("TCP")));
        assert_eq!(
            out.pointer("/spec/serve/0/backendRef"),
            Some(&json!({"group": "", "kind": "Service", "name": "web", "port": 8080}))
        );
        assert_eq!(out.pointer("/spec/serve/1/protocol"), Some(&json!("HTTPS")));
        assert_eq!(out.pointer("/spec/serve/1/backendRef/kind"), Some(&json!("Gateway")), "kept");
        assert_eq!(out.pointer("/spec/serve/1/backendRef/group"), Some(&json!(GATEWAY_API_GROUP)), "the kind's group");
        assert_eq!(out.pointer("/spec/serve/2"), Some(&json!("not an object")), "left for validation");
        assert_eq!(out.pointer("/spec/loadBalancing/healthCheck/interval"), Some(&json!("10s")));
        assert_eq!(out.pointer("/metadata/labels/app.kubernetes.io~1managed-by"), Some(&json!("tailscale-gateway")));
        assert_eq!(out.pointer("/spec/unknownField"), Some(&json!(1)));
        assert_eq!(patch(Kind::Services, &out), Vec::new(), "idempotent");
    }

    #[test]
    fn missing_parents_are_created_and_user_values_kept() {
        let raw = json!({"metadata": {"name": "e", "labels": {"app.kubernetes.io/managed-by": "Helm"}}, "spec": {"tailnet": "t"}});
        let out = apply(&raw, patch(Kind::Endpoints, &raw));
        assert_eq!(out.pointer("/spec/proxy"), Some(&json!({"replicas": 2, "connectionType": "ingress"})));
        assert_eq!(out.pointer("/metadata/labels/app.kubernetes.io~1managed-by"), Some(&json!("Helm")));
        assert_eq!(patch(Kind::Endpoints, &out), Vec::new());

        let no_meta_labels = json!({"metadata": {"name": "Not.A.Label"}, "spec": {}});
        let out = apply(&no_meta_labels, patch(Kind::Services, &no_meta_labels));
        assert_eq!(
            out.pointer("/metadata/labels"),
            Some(&json!({"app.kubernetes.io/managed-by": "tailscale-gateway"}))
        );
        assert_eq!(out.pointer("/spec/vipService"), None, "no VIP name defaulted from an invalid label");
    }

    #[test]
    fn scalar_in_the_way_is_left_for_validation() {
        let raw = json!({"metadata": {"name": "g", "labels": {"app.kubernetes.io/managed-by": "x"}}, "spec": {"routeGeneration": "oops"}});
        assert_eq!(patch(Kind::Gateway, &raw), Vec::new());
    }
}

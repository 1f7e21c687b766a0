//! Pure rules of auto-provisioning: the TailscaleEndpoints a TailscaleServices'
//! `endpointTemplate` asks for, which endpoints a TailscaleServices effectively selects, and which
//! auto-provisioned endpoints nobody selects any more.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::ObjectKey;
use crate::api::{
    AUTO_PROVISIONED_ANNOTATION, MANAGED_BY_LABEL, MANAGED_BY_VALUE, TailscaleEndpoints, TailscaleEndpointsSpec,
    TailscaleServices,
};
use crate::index::Index;
use crate::proxies::owner_reference;
use crate::selector::Selector;

/// Label naming the TailscaleServices an endpoints was provisioned for.
pub const PROVISIONED_FOR_LABEL: &str = "tailscale-gateway.com/provisioned-for";

/// Name of the TailscaleEndpoints auto-provisioned for a TailscaleServices.
pub fn auto_endpoints_name(service: &str) -> String {
    format!("{service}-endpoints")
}

/// Whether an endpoints object was created from a template.
pub fn is_auto_provisioned(ep: &TailscaleEndpoints) -> bool {
    ep.metadata.annotations.as_ref().and_then(|a| a.get(AUTO_PROVISIONED_ANNOTATION)).is_some_and(|v| v == "true")
}

fn owner_service(ep: &TailscaleEndpoints) -> Option<&str> {
    ep.metadata.owner_references.as_ref()?.iter().find(|o| o.kind == "TailscaleServices").map(|o| o.name.as_str())
}

/// The TailscaleEndpoints built from `svc.spec.endpointTemplate`: annotated as auto-provisioned,
/// owned by the TailscaleServices, labelled with the template's labels plus the selector's
/// `matchLabels` so the selector picks it.
pub fn auto_provisioned_endpoints(svc: &TailscaleServices) -> Option<TailscaleEndpoints> {
    let template = svc.spec.endpoint_template.as_ref()?;
    let svc_name = svc.metadata.name.clone()?;
    let mut labels = template.labels.clone();
    if let Some(ml) = svc.spec.selector.as_ref().and_then(|s| s.match_labels.as_ref()) {
        labels.extend(ml.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    labels.insert(PROVISIONED_FOR_LABEL.into(), svc_name.clone());
    labels.insert(MANAGED_BY_LABEL.into(), MANAGED_BY_VALUE.into());
    Some(TailscaleEndpoints {
        metadata: ObjectMeta {
            name: Some(auto_endpoints_name(&svc_name)),
            namespace: svc.metadata.namespace.clone(),
            labels: Some(labels),
            annotations: Some(BTreeMap::from([(AUTO_PROVISIONED_ANNOTATION.into(), "true".into())])),
            owner_references: owner_reference(svc).map(|o| vec![o]),
            ..ObjectMeta::default()
        },
        spec: TailscaleEndpointsSpec {
            tailnet: template.tailnet.clone(),
            tags: template.tags.clone(),
            proxy: template.proxy.clone(),
            ports: template.ports.clone(),
            egress_targets: Vec::new(),
        },
        status: None,
    })
}

/// Whether the selector of `svc` would pick `ep` (a service without a selector picks what was
/// provisioned for it). Guards against provisioning something that is deleted as unselected.
pub fn selects(svc: &TailscaleServices, ep: &TailscaleEndpoints) -> bool {
    let empty = BTreeMap::new();
    let labels = ep.metadata.labels.as_ref().unwrap_or(&empty);
    match svc.spec.selector.as_ref() {
        None => owner_service(ep) == svc.metadata.name.as_deref() && is_auto_provisioned(ep),
        Some(sel) => {
            Selector::from_label_selector(sel, &crate::FieldPath::new("spec.selector")).is_ok_and(|s| s.matches(labels))
        }
    }
}

/// The endpoints a TailscaleServices uses: the cache's selection, or for a service without a
/// selector, the endpoints provisioned for it.
pub fn effective_selection(idx: &Index, svc_key: &ObjectKey) -> Vec<ObjectKey> {
    let Some(svc) = idx.services(svc_key) else { return Vec::new() };
    if svc.spec.selector.is_some() {
        return idx.selected_endpoints(svc_key).cloned().collect();
    }
    idx.all_endpoints()
        .filter(|(k, ep)| k.namespace == svc_key.namespace && selects(svc, ep))
        .map(|(k, _)| k.clone())
        .collect()
}

/// Auto-provisioned endpoints in `namespace` that no TailscaleServices uses any more.
pub fn orphaned_auto_provisioned(idx: &Index, namespace: &str) -> Vec<ObjectKey> {
    idx.all_endpoints()
        .filter(|(k, ep)| k.namespace == namespace && is_auto_provisioned(ep))
        .filter(|(k, ep)| {
            idx.selecting_services(k).next().is_none()
                && !owner_service(ep).is_some_and(|owner| {
                    idx.services(&ObjectKey::new(namespace, owner))
                        .is_some_and(|svc| svc.spec.selector.is_none() && selects(svc, ep))
                })
        })
        .map(|(k, _)| k.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::Resource;
    use crate::index::Index;

    fn svc(name: &str, spec: serde_json::Value) -> TailscaleServices {
        serde_json::from_value(json!({"apiVersion": "gateway.tailscale.com/v1alpha1", "kind": "TailscaleServices",
            "metadata": {"name": name, "namespace": "prod", "uid": format!("uid-{name}")}, "spec": spec}))
        .expect("parsing the TailscaleServices")
    }

    fn template() -> serde_json::Value {
        json!({"tailnet": "corp", "labels": {"team": "a"}, "tags": ["tag:web"], "proxy": {"replicas": 1},
               "ports": [{"port": 443}]})
    }

    #[test]
    fn template_builds_selected_owned_annotated_endpoints() {
        let s = svc("web", json!({"selector": {"matchLabels": {"app": "web"}}, "endpointTemplate": template()}));
        let ep = auto_provisioned_endpoints(&s).unwrap_or_else(|| panic!("endpoints"));
        assert_eq!(ep.metadata.name.as_deref(), Some("web-endpoints"));
        assert_eq!(ep.metadata.namespace.as_deref(), Some("prod"));
        assert!(is_auto_provisioned(&ep));
        let labels = ep.metadata.labels.clone().unwrap_or_default();
        assert_eq!(labels["app"], "web");
        assert_eq!(labels["team"], "a");
        let owner = &ep.metadata.owner_references.clone().unwrap_or_default()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str()),
            ("TailscaleServices", "web", "uid-web")
        );
        assert_eq!(ep.spec.tailnet, "corp");
        assert_eq!(ep.spec.ports[0].port, 443);
        assert!(selects(&s, &ep));
        assert!(auto_provisioned_endpoints(&svc("x", json!({"selector": {}}))).is_none());
        // A selector the template's labels cannot satisfy is detected.
        let strict = svc(
            "web",
            json!({"selector": {"matchLabels": {"app": "web"},
            "matchExpressions": [{"key": "tier", "operator": "Exists"}]}, "endpointTemplate": template()}),
        );
        let ep2 = auto_provisioned_endpoints(&strict).unwrap_or_else(|| panic!("endpoints"));
        assert!(!selects(&strict, &ep2));
    }

    #[test]
    fn orphans_are_unselected_auto_provisioned_endpoints() {
        let mut idx = Index::with_event_log(100);
        let with_selector =
            svc("web", json!({"selector": {"matchLabels": {"app": "web"}}, "endpointTemplate": template()}));
        let without = svc("api", json!({"endpointTemplate": template()}));
        let ep_web = auto_provisioned_endpoints(&with_selector).unwrap_or_else(|| panic!("web"));
        let ep_api = auto_provisioned_endpoints(&without).unwrap_or_else(|| panic!("api"));
        let mut manual = ep_web.clone();
        manual.metadata.name = Some("manual".into());
        manual.metadata.annotations = None;
        manual.metadata.labels = None;
        for r in [
            Resource::Services(with_selector.clone()),
            Resource::Services(without.clone()),
            Resource::Endpoints(ep_web.clone()),
            Resource::Endpoints(ep_api.clone()),
            Resource::Endpoints(manual),
        ] {
            idx.apply(r);
        }
        assert!(orphaned_auto_provisioned(&idx, "prod").is_empty(), "both are in use");
        assert_eq!(
            effective_selection(&idx, &ObjectKey::new("prod", "api")),
            vec![ObjectKey::new("prod", "api-endpoints")]
        );
        assert_eq!(
            effective_selection(&idx, &ObjectKey::new("prod", "web")),
            vec![ObjectKey::new("prod", "web-endpoints")]
        );
        // The selector changes: web-endpoints is no longer selected and becomes an orphan; the
        // hand-made one is never touched.
        let mut changed = with_selector;
        changed.spec.selector = serde_json::from_value(json!({"matchLabels": {"app": "other"}})).ok();
        idx.apply(Resource::Services(changed));
        idx.delete(crate::Kind::Services, &ObjectKey::new("prod", "api"));
        let mut orphans = orphaned_auto_provisioned(&idx, "prod");
        orphans.sort();
        assert_eq!(orphans, vec![ObjectKey::new("prod", "api-endpoints"), ObjectKey::new("prod", "web-endpoints")]);
        assert!(orphaned_auto_provisioned(&idx, "other").is_empty());
    }
}

//! `tailscale-gateway render -f PATH...`: the Kubernetes objects the reconciler would create for
//! some resources, computed without a cluster by the same pure builders the controllers use, so
//! CI can review them. Auth keys are placeholders. The data plane is shown as it is once the
//! VIP services exist and the replicas are registered: every VIP service a TailscaleServices
//! names is taken to exist (its MagicDNS name from its status, else from its tailnet's status,
//! else `<name>.<tailnet>.ts.net`), each replica advertises what its proxies serve.

use serde::Serialize;
use serde_json::Value;

use crate::api::{TailscaleEndpoints, TailscaleServices};
use crate::cache::Cache;
use crate::core::dataplane::{self, Placement};
use crate::core::selector::Selector;
use crate::core::{ObjectKey, Resource};
use crate::reconciler::{builders, provision};

/// What `render` needs besides the resources.
#[derive(Clone, Debug)]
pub struct RenderOptions {
    /// Namespace of namespaced resources that name none.
    pub namespace: String,
    /// Default proxy image (the server's `--proxy-image`).
    pub proxy_image: String,
    /// Cluster domain and Envoy Gateway's namespace.
    pub placement: Placement,
}

impl Default for RenderOptions {
    fn default() -> Self {
        Self {
            namespace: "default".into(),
            proxy_image: crate::reconciler::Config::default().proxy_image,
            placement: Placement::default(),
        }
    }
}

/// A TailscaleServices as it is once its VIP service exists: a VIP name and MagicDNS name in
/// its status when it has none.
fn with_vip(mut svc: TailscaleServices, resources: &[Resource]) -> TailscaleServices {
    let Some(vip) = crate::core::resource::vip_service_name(&svc) else { return svc };
    let status = svc.status.get_or_insert_with(Default::default);
    let v = status.vip_service.get_or_insert_with(Default::default);
    v.name.get_or_insert_with(|| vip.clone());
    if v.dns_name.is_none() {
        let tailnet =
            svc.spec.tailnet.clone().or_else(|| svc.spec.endpoint_template.as_ref().map(|t| t.tailnet.clone()));
        let suffix = resources.iter().find_map(|r| match r {
            Resource::Tailnet(t) if Some(t.metadata.name.as_deref().unwrap_or_default()) == tailnet.as_deref() => {
                t.status.as_ref()?.tailnet_info.as_ref()?.magic_dns_suffix.clone()
            }
            _ => None,
        });
        let suffix = suffix.unwrap_or_else(|| format!("{}.ts.net", tailnet.as_deref().unwrap_or("tailnet")));
        v.dns_name = Some(format!("{}.{suffix}", vip.trim_start_matches("svc:")));
    }
    svc
}

fn push<T: Serialize>(out: &mut Vec<Value>, obj: &T) {
    match serde_json::to_value(obj) {
        Ok(v) => out.push(readable(v)),
        Err(e) => tracing::warn!(error = %e, "cannot encode a rendered object"),
    }
}

/// A Secret's `data` as `stringData` (decoded text), so a review in CI reads what the proxies
/// get; values that are not UTF-8 text stay in `data`. The API server takes either form. Auth keys
/// are placeholders here, never real keys.
fn readable(mut obj: Value) -> Value {
    use base64::Engine;
    if obj["kind"] != "Secret" {
        return obj;
    }
    let Some(Value::Object(data)) = obj.as_object_mut().and_then(|o| o.remove("data")) else { return obj };
    let (mut text, mut binary) = (serde_json::Map::new(), serde_json::Map::new());
    for (key, value) in data {
        let decoded = value
            .as_str()
            .and_then(|b64| base64::engine::general_purpose::STANDARD.decode(b64).ok())
            .and_then(|bytes| String::from_utf8(bytes).ok());
        match decoded {
            Some(t) => text.insert(key, Value::String(t)),
            None => binary.insert(key, value),
        };
    }
    if !binary.is_empty() {
        obj["data"] = Value::Object(binary);
    }
    if !text.is_empty() {
        obj["stringData"] = Value::Object(text);
    }
    obj
}

fn selects_any(svc: &TailscaleServices, endpoints: &[TailscaleEndpoints]) -> bool {
    let Some(sel) = svc.spec.selector.as_ref() else { return false };
    let Ok(sel) = Selector::from_label_selector(sel, &crate::core::FieldPath::new("spec.selector")) else {
        return false;
    };
    let empty = Default::default();
    endpoints.iter().any(|e| {
        e.metadata.namespace == svc.metadata.namespace && sel.matches(e.metadata.labels.as_ref().unwrap_or(&empty))
    })
}

/// The objects the reconciler would create for `resources`: auto-provisioned TailscaleEndpoints
/// first, then per TailscaleEndpoints its ServiceAccount, Role, RoleBinding, data-plane
/// ConfigMap, per-replica config and state Secrets, StatefulSet and Service. Pure; same input, same output.
pub fn render(resources: &[Resource], opts: &RenderOptions) -> Vec<Value> {
    let mut resources: Vec<Resource> = resources.to_vec();
    for r in &mut resources {
        r.default_namespace(&opts.namespace);
    }
    let mut endpoints: Vec<TailscaleEndpoints> = resources
        .iter()
        .filter_map(|r| match r {
            Resource::Endpoints(e) => Some(e.clone()),
            _ => None,
        })
        .collect();
    let mut out = Vec::new();
    for r in &resources {
        if let Resource::Services(svc) = r
            && !selects_any(svc, &endpoints)
            && let Some(ep) = provision::auto_provisioned_endpoints(svc)
        {
            push(&mut out, &ep);
            endpoints.push(ep);
        }
    }
    endpoints.sort_by(|a, b| (&a.metadata.namespace, &a.metadata.name).cmp(&(&b.metadata.namespace, &b.metadata.name)));
    let cache = Cache::new(0);
    for r in &resources {
        match r {
            Resource::Services(s) => cache.apply(Resource::Services(with_vip(s.clone(), &resources))),
            Resource::Endpoints(_) => {}
            other => cache.apply(other.clone()),
        }
    }
    for ep in &endpoints {
        cache.apply(Resource::Endpoints(ep.clone()));
    }
    for ep in &endpoints {
        let name = ep.metadata.name.clone().unwrap_or_default();
        let plan = cache.read().proxy_plan(&ObjectKey::of(&ep.metadata), &opts.placement).unwrap_or_default();
        let advertise: Vec<String> = plan.servable().into_iter().collect();
        push(&mut out, &builders::service_account(ep));
        push(&mut out, &builders::role(ep, &plan.cert_domains()));
        push(&mut out, &builders::role_binding(ep));
        push(&mut out, &builders::config_map(ep, &plan, &dataplane::serve_config(&plan.serve)));
        for domain in plan.cert_domains() {
            push(&mut out, &builders::cert_secret(ep, &domain));
        }
        for i in 0..builders::replicas(ep) {
            let key = Some(builders::AUTH_KEY_PLACEHOLDER.into());
            let config = builders::tailscaled_config(&name, i, key, &advertise);
            match builders::config_secret(ep, i, &config) {
                Ok(secret) => push(&mut out, &secret),
                Err(e) => tracing::warn!(error = %e, "cannot encode a config secret"),
            }
            push(&mut out, &builders::state_secret(ep, i));
        }
        push(&mut out, &builders::stateful_set(ep, &opts.proxy_image));
        push(&mut out, &builders::service(ep, &plan));
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn res(v: Value) -> Resource {
        Resource::from_value(v).expect("building the resource")
    }

    #[test]
    fn renders_proxies_and_auto_provisioned_endpoints() {
        let input = vec![
            res(json!({"apiVersion": "gateway.tailscale.com/v1alpha1", "kind": "TailscaleEndpoints",
                "metadata": {"name": "east", "labels": {"app": "web"}},
                "spec": {"tailnet": "corp", "proxy": {"replicas": 2}, "ports": [{"port": 80}]}})),
            res(json!({"apiVersion": "gateway.tailscale.com/v1alpha1", "kind": "TailscaleServices",
                "metadata": {"name": "web"}, "spec": {"selector": {"matchLabels": {"app": "web"}},
                "endpointTemplate": {"tailnet": "corp"}}})),
            res(json!({"apiVersion": "gateway.tailscale.com/v1alpha1", "kind": "TailscaleServices",
                "metadata": {"name": "api", "namespace": "apps"}, "spec": {"selector": {"matchLabels": {"app": "api"}},
                "endpointTemplate": {"tailnet": "corp", "proxy": {"replicas": 1}}}})),
        ];
        let out = render(
            &input,
            &RenderOptions { namespace: "prod".into(), proxy_image: "ts:1".into(), ..RenderOptions::default() },
        );
        let kinds: Vec<String> = out
            .iter()
            .map(|o| {
                format!(
                    "{}/{}/{}",
                    o["kind"].as_str().unwrap_or(""),
                    o["metadata"]["namespace"].as_str().unwrap_or(""),
                    o["metadata"]["name"].as_str().unwrap_or("")
                )
            })
            .collect();
        assert_eq!(
            kinds,
            vec![
                "TailscaleEndpoints/apps/api-endpoints",
                "ServiceAccount/apps/api-endpoints",
                "Role/apps/api-endpoints",
                "RoleBinding/apps/api-endpoints",
                "ConfigMap/apps/api-endpoints-proxies",
                "Secret/apps/api-endpoints-0-config",
                "Secret/apps/api-endpoints-0",
                "StatefulSet/apps/api-endpoints",
                "Service/apps/api-endpoints-svc",
                "ServiceAccount/prod/east",
                "Role/prod/east",
                "RoleBinding/prod/east",
                "ConfigMap/prod/east-proxies",
                "Secret/prod/east-0-config",
                "Secret/prod/east-0",
                "Secret/prod/east-1-config",
                "Secret/prod/east-1",
                "StatefulSet/prod/east",
                "Service/prod/east-svc",
            ],
            "web selects east, so nothing is provisioned for it"
        );
        let sts = out
            .iter()
            .find(|o| o["kind"] == "StatefulSet" && o["metadata"]["name"] == "east")
            .unwrap_or_else(|| panic!("sts"));
        assert_eq!(sts["spec"]["template"]["spec"]["containers"][0]["image"], "ts:1");
        assert!(sts["metadata"].get("ownerReferences").is_none(), "no UIDs without a cluster");
        let cfg = out.iter().find(|o| o["metadata"]["name"] == "east-1-config").unwrap_or_else(|| panic!("config"));
        assert!(cfg.get("data").is_none(), "printed decoded, as stringData: {cfg}");
        let hujson: Value =
            serde_json::from_str(cfg["stringData"]["cap-107.hujson"].as_str().unwrap_or("")).unwrap_or_default();
        assert_eq!(hujson["AuthKey"], builders::AUTH_KEY_PLACEHOLDER, "auth keys stay placeholders");
        assert_eq!(hujson["Hostname"], "east-1");
        assert_eq!(render(&input, &RenderOptions::default()).len(), out.len(), "deterministic shape");
    }

    #[test]
    fn secrets_print_text_as_string_data_and_keep_binary_data() {
        let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"},
            "data": {"text": "aGVsbG8=", "binary": "/w=="}});
        let readable = readable(secret);
        assert_eq!(readable["stringData"], json!({"text": "hello"}));
        assert_eq!(readable["data"], json!({"binary": "/w=="}));
        let other = json!({"kind": "ConfigMap", "data": {"a": "aGVsbG8="}});
        assert_eq!(super::readable(other.clone()), other, "only Secrets");
    }
}

//! Cache-driven triggers: after every cache change, which objects must be reconciled again.
//!
//! - A TailscaleServices whose selection view changed (endpoints joined or left, e.g. after a
//!   label change on a TailscaleEndpoints it selected before or selects now; machines or health
//!   changed).
//! - A TailscaleEndpoints whose devices changed (live data refreshed), whose advertised VIP
//!   services changed (a selecting TailscaleServices' VIP service became ready, or the selection
//!   changed), or whose data plane changed (a `serve` entry, a VIP's DNS name, an egress target).
//!
//! [`Snapshot`] and [`diff`] are pure; [`run`] feeds the controllers' `reconcile_on` streams.

use std::collections::{BTreeMap, BTreeSet};

use kube::runtime::reflector::ObjectRef;
use tokio::sync::mpsc::UnboundedSender;
use tokio_util::sync::CancellationToken;

use crate::api::{TailscaleEndpoints, TailscaleServices};
use crate::cache::{Cache, Index};
use crate::core::ObjectKey;
use crate::core::dataplane::{Placement, ProxyPlan};
use crate::core::resource::vip_service_name;

/// What the triggers compare between two cache states.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    /// Selection view revision per TailscaleServices.
    pub selections: BTreeMap<ObjectKey, u64>,
    /// Newest device view revision per TailscaleEndpoints.
    pub devices: BTreeMap<ObjectKey, u64>,
    /// Ready VIP services selecting each TailscaleEndpoints.
    pub advertised: BTreeMap<ObjectKey, BTreeSet<String>>,
    /// What each TailscaleEndpoints' proxies carry (serve config, egress targets): a `serve`
    /// entry, a VIP's DNS name or an egress target that changes rewrites their ConfigMap.
    pub plans: BTreeMap<ObjectKey, ProxyPlan>,
    /// The MagicDNS name of each TailscaleServices' VIP as the cache can tell it (from its status,
    /// else its tailnet's suffix): learning the suffix fills `status.vipService.dnsName` at once.
    pub dns_names: BTreeMap<ObjectKey, Option<String>>,
}

/// Takes a snapshot of the index.
pub fn snapshot(idx: &Index) -> Snapshot {
    let selections = idx
        .selections(None)
        .into_iter()
        .map(|s| (ObjectKey::new(&s.object.namespace, &s.object.name), s.revision))
        .collect();
    let mut devices: BTreeMap<ObjectKey, u64> = BTreeMap::new();
    for d in idx.devices(None) {
        let e = devices.entry(ObjectKey::new(&d.object.namespace, &d.object.endpoints)).or_default();
        *e = (*e).max(d.revision);
    }
    let mut advertised: BTreeMap<ObjectKey, BTreeSet<String>> = BTreeMap::new();
    for (svc_key, svc) in idx.all_services() {
        let ready = svc.status.as_ref().and_then(|s| s.vip_service.as_ref()).and_then(|v| v.name.as_ref()).is_some();
        let Some(vip) = vip_service_name(svc).filter(|_| ready) else { continue };
        for ep in idx.selected_endpoints(svc_key) {
            advertised.entry(ep.clone()).or_default().insert(vip.clone());
        }
    }
    let place = Placement::default();
    let plans = idx.all_endpoints().filter_map(|(k, _)| Some((k.clone(), idx.proxy_plan(k, &place)?))).collect();
    let dns_names = idx.all_services().map(|(k, s)| (k.clone(), idx.vip_dns_name(s))).collect();
    Snapshot { selections, devices, advertised, plans, dns_names }
}

/// Objects to reconcile again.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Triggers {
    /// TailscaleEndpoints.
    pub endpoints: BTreeSet<ObjectKey>,
    /// TailscaleServices.
    pub services: BTreeSet<ObjectKey>,
}

fn changed_keys<V: PartialEq>(
    old: &BTreeMap<ObjectKey, V>,
    new: &BTreeMap<ObjectKey, V>,
) -> impl Iterator<Item = ObjectKey> {
    let added_or_changed = new.iter().filter(|(k, v)| old.get(*k) != Some(*v)).map(|(k, _)| k.clone());
    let removed = old.keys().filter(|k| !new.contains_key(*k)).cloned();
    added_or_changed.chain(removed).collect::<Vec<_>>().into_iter()
}

/// What changed between two snapshots.
pub fn diff(old: &Snapshot, new: &Snapshot) -> Triggers {
    Triggers {
        services: changed_keys(&old.selections, &new.selections)
            .chain(changed_keys(&old.dns_names, &new.dns_names))
            .collect(),
        endpoints: changed_keys(&old.devices, &new.devices)
            .chain(changed_keys(&old.advertised, &new.advertised))
            .chain(changed_keys(&old.plans, &new.plans))
            .collect(),
    }
}

/// Watches the cache and sends the objects to reconcile again, until `stop`.
pub async fn run(
    cache: Cache,
    endpoints: UnboundedSender<ObjectRef<TailscaleEndpoints>>,
    services: UnboundedSender<ObjectRef<TailscaleServices>>,
    stop: CancellationToken,
) {
    let mut rx = cache.subscribe();
    let mut last = snapshot(&cache.read());
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            r = rx.changed() => if r.is_err() { return },
        }
        // Coalesce bursts (a reflector relist, a device refresh) into one diff.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        rx.borrow_and_update();
        let next = snapshot(&cache.read());
        let t = diff(&last, &next);
        last = next;
        for k in t.endpoints {
            if endpoints.send(ObjectRef::new(&k.name).within(&k.namespace)).is_err() {
                return;
            }
        }
        for k in t.services {
            if services.send(ObjectRef::new(&k.name).within(&k.namespace)).is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::core::Resource;

    fn ep(name: &str, labels: serde_json::Value, devices: &[&str]) -> Resource {
        let devs: Vec<_> = devices.iter().map(|d| json!({"hostname": d, "nodeID": format!("n-{d}")})).collect();
        Resource::from_value(json!({"apiVersion": "gateway.tailscale.com/v1alpha1", "kind": "TailscaleEndpoints",
            "metadata": {"name": name, "namespace": "ns", "labels": labels}, "spec": {"tailnet": "t"},
            "status": {"devices": devs}}))
        .expect("building the TailscaleEndpoints resource")
    }

    fn svc(name: &str, selector: serde_json::Value, vip_ready: bool) -> Resource {
        let status = if vip_ready { json!({"vipService": {"name": format!("svc:{name}")}}) } else { json!({}) };
        Resource::from_value(json!({"apiVersion": "gateway.tailscale.com/v1alpha1", "kind": "TailscaleServices",
            "metadata": {"name": name, "namespace": "ns"}, "spec": {"selector": {"matchLabels": selector}},
            "status": status}))
        .expect("building the TailscaleServices resource")
    }

    fn keys(names: &[&str]) -> BTreeSet<ObjectKey> {
        names.iter().map(|n| ObjectKey::new("ns", *n)).collect()
    }

    #[test]
    fn label_change_triggers_services_selecting_before_and_after() {
        let cache = Cache::new(1000);
        cache.apply(svc("web", json!({"app": "web"}), true));
        cache.apply(svc("api", json!({"app": "api"}), true));
        cache.apply(svc("db", json!({"app": "db"}), true));
        cache.apply(ep("e", json!({"app": "web"}), &["e-0"]));
        let before = snapshot(&cache.read());
        assert_eq!(before.advertised[&ObjectKey::new("ns", "e")], BTreeSet::from(["svc:web".to_string()]));
        // Relabel: web loses it, api gains it; db is untouched.
        cache.apply(ep("e", json!({"app": "api"}), &["e-0"]));
        let after = snapshot(&cache.read());
        let t = diff(&before, &after);
        assert_eq!(t.services, keys(&["api", "web"]));
        assert_eq!(t.endpoints, keys(&["e"]), "advertised services changed");
        assert_eq!(diff(&after, &snapshot(&cache.read())), Triggers::default(), "no change, no trigger");
    }

    #[test]
    fn vip_readiness_and_device_changes_trigger_endpoints() {
        let cache = Cache::new(1000);
        cache.apply(svc("web", json!({"app": "web"}), false));
        cache.apply(ep("e", json!({"app": "web"}), &["e-0"]));
        cache.apply(ep("other", json!({"app": "x"}), &["o-0"]));
        let s0 = snapshot(&cache.read());
        cache.apply(svc("web", json!({"app": "web"}), true));
        let s1 = snapshot(&cache.read());
        assert_eq!(diff(&s0, &s1).endpoints, keys(&["e"]));
        cache.set_live_devices(
            "t",
            vec![crate::core::views::LiveDevice {
                node_id: "n-o-0".into(),
                hostname: "o-0".into(),
                connected_to_control: true,
                ..Default::default()
            }],
        );
        let s2 = snapshot(&cache.read());
        let t = diff(&s1, &s2);
        assert_eq!(t.endpoints, keys(&["other"]));
        assert!(t.services.is_empty(), "other is selected by nobody");
    }

    #[test]
    fn a_serve_change_reconciles_the_proxies_that_publish_it() {
        let cache = crate::cache::Cache::new(10);
        cache.apply(ep("e", json!({"app": "web"}), &[]));
        let with_serve = |port: i32| {
            Resource::from_value(json!({"apiVersion": "gateway.tailscale.com/v1alpha1", "kind": "TailscaleServices",
                "metadata": {"name": "web", "namespace": "ns"},
                "spec": {"selector": {"matchLabels": {"app": "web"}}, "vipService": {"ports": ["tcp:80", "tcp:81"]},
                         "serve": [{"port": port, "backendRef": {"name": "web", "port": 8080}}]},
                "status": {"vipService": {"name": "svc:web"}}}))
            .expect("building the TailscaleServices resource")
        };
        cache.apply(with_serve(80));
        let before = snapshot(&cache.read());
        cache.apply(with_serve(81));
        let t = diff(&before, &snapshot(&cache.read()));
        assert_eq!(t.endpoints, BTreeSet::from([ObjectKey::new("ns", "e")]));
    }

    #[test]
    fn learning_the_tailnets_suffix_reconciles_its_services() {
        let cache = crate::cache::Cache::new(10);
        let mut web = svc("web", json!({"app": "web"}), true);
        if let Resource::Services(s) = &mut web {
            s.spec.tailnet = Some("t".into());
        }
        cache.apply(web);
        let tailnet = |suffix: Option<&str>| {
            Resource::from_value(json!({"apiVersion": "gateway.tailscale.com/v1alpha1", "kind": "TailscaleTailnet",
                "metadata": {"name": "t"}, "spec": {"oauthSecretRef": {"name": "s"}},
                "status": {"tailnetInfo": {"name": "t", "magicDNSSuffix": suffix}}}))
            .expect("building the TailscaleTailnet resource")
        };
        cache.apply(tailnet(None));
        let before = snapshot(&cache.read());
        cache.apply(tailnet(Some("tail1.ts.net")));
        let t = diff(&before, &snapshot(&cache.read()));
        assert_eq!(t.services, BTreeSet::from([ObjectKey::new("ns", "web")]));
    }
}

//! Pure rules of a TailscaleServices' VIP service: the body we want, ownership, and the
//! multi-cluster registry of DESIGN.md §3, kept in the VIP service's annotations.
//!
//! Several installations (clusters) may share one VIP service. The first creates it and is its
//! owner; others attach as consumers; each refreshes its `lastSeen` at most every
//! [`HEARTBEAT`]; consumers unseen for [`CONSUMER_TTL`] are dropped; the service is deleted
//! only when the last consumer detaches. A VIP service without our registry belongs to someone
//! else (the Tailscale operator, a human) and is never adopted.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::ObjectKey;
use crate::tailscale::VipService;

/// Annotation holding the registry JSON.
pub const REGISTRY_ANNOTATION: &str = "gateway.tailscale.com/service-registry";
/// Annotation naming the owning cluster.
pub const OWNER_ANNOTATION: &str = "gateway.tailscale.com/owner-operator";
/// Annotation with the number of consumers.
pub const CONSUMER_COUNT_ANNOTATION: &str = "gateway.tailscale.com/consumer-count";
/// Annotation with the time the registry last changed.
pub const LAST_UPDATED_ANNOTATION: &str = "gateway.tailscale.com/last-updated";
/// Annotation with the registry schema version.
pub const SCHEMA_VERSION_ANNOTATION: &str = "gateway.tailscale.com/schema-version";
/// Current registry schema version.
pub const SCHEMA_VERSION: &str = "1";
/// Consumers not seen for this long are dropped.
pub const CONSUMER_TTL: Duration = Duration::from_secs(30 * 60);
/// A consumer refreshes its `lastSeen` when it is older than this (well under the TTL), so a
/// steady reconcile within the interval writes nothing.
pub const HEARTBEAT: Duration = Duration::from_secs(10 * 60);

/// Who we are when touching a VIP service: our cluster and the TailscaleServices claiming it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// Cluster ID of this installation.
    pub cluster: String,
    /// The TailscaleServices.
    pub service: ObjectKey,
}

/// One cluster using the VIP service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Consumer {
    /// `namespace/name` of the TailscaleServices in that cluster.
    pub service: String,
    /// Last heartbeat (RFC 3339).
    pub last_seen: String,
}

/// The registry in the `service-registry` annotation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Registry {
    /// Cluster whose spec (ports, tags, comment) the VIP service follows.
    pub owner_cluster: String,
    /// Consumers by cluster ID.
    pub consumers: BTreeMap<String, Consumer>,
}

impl Registry {
    /// Reads the registry off a VIP service: `Ok(None)` when it has none (not ours), `Err` when
    /// it is unreadable.
    pub fn of(svc: &VipService) -> Result<Option<Self>, String> {
        match svc.annotations.get(REGISTRY_ANNOTATION) {
            None => Ok(None),
            Some(raw) => {
                serde_json::from_str(raw).map(Some).map_err(|e| format!("unreadable {REGISTRY_ANNOTATION}: {e}"))
            }
        }
    }

    /// Drops consumers unseen for [`CONSUMER_TTL`] (except `keep`), and hands ownership to the
    /// first remaining consumer when the owner is gone.
    pub fn prune(&mut self, now: Timestamp, keep: &str) {
        self.consumers.retain(|cluster, c| cluster == keep || !is_older_than(&c.last_seen, now, CONSUMER_TTL));
        self.fix_owner();
    }

    fn fix_owner(&mut self) {
        if !self.consumers.contains_key(&self.owner_cluster)
            && let Some(first) = self.consumers.keys().next()
        {
            self.owner_cluster = first.clone();
        }
    }

    fn write_into(&self, annotations: &mut BTreeMap<String, String>) {
        annotations.insert(REGISTRY_ANNOTATION.into(), serde_json::to_string(self).unwrap_or_default());
        annotations.insert(OWNER_ANNOTATION.into(), self.owner_cluster.clone());
        annotations.insert(CONSUMER_COUNT_ANNOTATION.into(), self.consumers.len().to_string());
        annotations.insert(SCHEMA_VERSION_ANNOTATION.into(), SCHEMA_VERSION.into());
    }
}

/// Whether an RFC 3339 time is more than `age` before `now` (unparseable times count as old).
fn is_older_than(time: &str, now: Timestamp, age: Duration) -> bool {
    match time.parse::<Timestamp>() {
        Ok(t) => now.duration_since(t).as_secs() > age.as_secs() as i64,
        Err(_) => true,
    }
}

/// The VIP service a TailscaleServices asks for.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Desired {
    /// `svc:NAME`.
    pub name: String,
    /// Ports (`tcp:443`).
    pub ports: Vec<String>,
    /// ACL tags.
    pub tags: Vec<String>,
    /// Comment.
    pub comment: String,
}

/// What to do to attach a TailscaleServices to its VIP service.
#[derive(Clone, Debug, PartialEq)]
pub enum AttachPlan {
    /// It already is as we want it.
    Unchanged,
    /// PUT this body (create, or update resending `addrs`).
    Put(VipService),
    /// Someone else owns the service: leave it alone.
    Foreign(String),
}

/// What to do when a TailscaleServices goes away.
#[derive(Clone, Debug, PartialEq)]
pub enum DetachPlan {
    /// Nothing of ours is there.
    Nothing,
    /// We were the last consumer: delete the VIP service.
    Delete,
    /// Other consumers remain: PUT the registry without us.
    Put(VipService),
}

fn comment_for(me: &Identity) -> String {
    format!("managed by tailscale-gateway for {} in cluster {}", me.service, me.cluster)
}

/// Plans attaching `me` to the VIP service `existing` (`None`: it does not exist yet).
pub fn plan_attach(existing: Option<&VipService>, desired: &Desired, me: &Identity, now: Timestamp) -> AttachPlan {
    let now_s = now.to_string();
    let me_entry = Consumer { service: me.service.to_string(), last_seen: now_s.clone() };
    let Some(existing) = existing else {
        let registry =
            Registry { owner_cluster: me.cluster.clone(), consumers: BTreeMap::from([(me.cluster.clone(), me_entry)]) };
        let mut annotations = BTreeMap::new();
        registry.write_into(&mut annotations);
        annotations.insert(LAST_UPDATED_ANNOTATION.into(), now_s);
        return AttachPlan::Put(VipService {
            name: desired.name.clone(),
            addrs: Vec::new(),
            comment: if desired.comment.is_empty() { comment_for(me) } else { desired.comment.clone() },
            annotations,
            ports: desired.ports.clone(),
            tags: desired.tags.clone(),
        });
    };
    let mut registry = match Registry::of(existing) {
        Ok(Some(r)) => r,
        Ok(None) => {
            return AttachPlan::Foreign(format!(
                "VIP service {} exists and is not managed by tailscale-gateway",
                existing.name
            ));
        }
        Err(e) => return AttachPlan::Foreign(e),
    };
    registry.prune(now, &me.cluster);
    match registry.consumers.get(&me.cluster) {
        Some(c) if c.service != me_entry.service && !is_older_than(&c.last_seen, now, CONSUMER_TTL) => {
            return AttachPlan::Foreign(format!(
                "VIP service {} is claimed by {} in this cluster",
                existing.name, c.service
            ));
        }
        Some(c) if c.service == me_entry.service && !is_older_than(&c.last_seen, now, HEARTBEAT) => {}
        _ => {
            registry.consumers.insert(me.cluster.clone(), me_entry);
        }
    }
    if registry.owner_cluster.is_empty() || !registry.consumers.contains_key(&registry.owner_cluster) {
        registry.owner_cluster = me.cluster.clone();
    }
    let mut body = existing.clone();
    if registry.owner_cluster == me.cluster {
        body.ports = desired.ports.clone();
        body.tags = desired.tags.clone();
        body.comment = if desired.comment.is_empty() { comment_for(me) } else { desired.comment.clone() };
    }
    registry.write_into(&mut body.annotations);
    if body == *existing {
        return AttachPlan::Unchanged;
    }
    body.annotations.insert(LAST_UPDATED_ANNOTATION.into(), now_s);
    // `addrs` stay as they were: an update must resend them.
    AttachPlan::Put(body)
}

/// Plans detaching `me` from the VIP service `existing`.
pub fn plan_detach(existing: Option<&VipService>, me: &Identity, now: Timestamp) -> DetachPlan {
    let Some(existing) = existing else { return DetachPlan::Nothing };
    let Ok(Some(mut registry)) = Registry::of(existing) else { return DetachPlan::Nothing };
    match registry.consumers.get(&me.cluster) {
        Some(c) if c.service == me.service.to_string() => {}
        // Another TailscaleServices of this cluster holds it, or we never attached.
        _ => return DetachPlan::Nothing,
    }
    registry.consumers.remove(&me.cluster);
    registry.prune(now, "");
    if registry.consumers.is_empty() {
        return DetachPlan::Delete;
    }
    let mut body = existing.clone();
    registry.write_into(&mut body.annotations);
    body.annotations.insert(LAST_UPDATED_ANNOTATION.into(), now.to_string());
    DetachPlan::Put(body)
}

/// The DNS name of a VIP service: `<name without svc:>.<magicDNSSuffix>`.
pub fn dns_name(vip: &str, magic_dns_suffix: Option<&str>) -> Option<String> {
    let label = vip.strip_prefix("svc:").unwrap_or(vip);
    magic_dns_suffix.filter(|s| !s.is_empty()).map(|s| format!("{label}.{s}"))
}

/// The VIP service whose DNS name is `dns_name`: the inverse of [`dns_name`] (`svc:` plus the
/// first label). Shared certificate Secrets are named after the domain, so a Secret left by a VIP
/// no longer served here names its VIP this way.
pub fn of_dns_name(dns_name: &str) -> String {
    format!("svc:{}", dns_name.split('.').next().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_names_and_back() {
        let name = dns_name("svc:web-service", Some("tail8eff9.ts.net")).expect("a DNS name");
        assert_eq!(name, "web-service.tail8eff9.ts.net");
        assert_eq!(of_dns_name(&name), "svc:web-service");
        assert_eq!(dns_name("svc:web", Some("")), None);
    }

    fn t(s: &str) -> Timestamp {
        s.parse().expect("parsing the timestamp")
    }

    fn me(cluster: &str) -> Identity {
        Identity { cluster: cluster.into(), service: ObjectKey::new("prod", "web") }
    }

    fn desired() -> Desired {
        Desired {
            name: "svc:web".into(),
            ports: vec!["tcp:443".into()],
            tags: vec!["tag:web".into()],
            comment: String::new(),
        }
    }

    fn put(plan: AttachPlan) -> VipService {
        match plan {
            AttachPlan::Put(b) => b,
            other => panic!("expected Put, got {other:?}"),
        }
    }

    /// What the API does with a PUT: keep or allocate addresses.
    fn stored(mut body: VipService) -> VipService {
        if body.addrs.is_empty() {
            body.addrs = vec!["100.100.100.50".into(), "fd7a:115c:a1e0::50".into()];
        }
        body
    }

    #[test]
    fn create_records_owner_and_consumer() {
        let now = t("2025-06-25T10:00:00Z");
        let body = put(plan_attach(None, &desired(), &me("c1"), now));
        assert_eq!(body.name, "svc:web");
        assert!(body.addrs.is_empty(), "addresses are allocated by the API");
        assert_eq!(body.ports, vec!["tcp:443"]);
        assert_eq!(body.tags, vec!["tag:web"]);
        assert_eq!(body.annotations[OWNER_ANNOTATION], "c1");
        assert_eq!(body.annotations[CONSUMER_COUNT_ANNOTATION], "1");
        assert_eq!(body.annotations[SCHEMA_VERSION_ANNOTATION], "1");
        assert_eq!(body.annotations[LAST_UPDATED_ANNOTATION], "2025-06-25T10:00:00Z");
        let reg = Registry::of(&body).expect("reading the registry annotations").unwrap_or_else(|| panic!("registry"));
        assert_eq!(reg.consumers["c1"].service, "prod/web");
        assert!(body.comment.contains("prod/web"));
    }

    #[test]
    fn steady_state_within_heartbeat_is_unchanged_and_update_resends_addrs() {
        let now = t("2025-06-25T10:00:00Z");
        let live = stored(put(plan_attach(None, &desired(), &me("c1"), now)));
        assert_eq!(
            plan_attach(Some(&live), &desired(), &me("c1"), now + Duration::from_secs(300)),
            AttachPlan::Unchanged
        );
        // Heartbeat due: only lastSeen moves, addrs are resent.
        let later = now + Duration::from_secs(11 * 60);
        let body = put(plan_attach(Some(&live), &desired(), &me("c1"), later));
        assert_eq!(body.addrs, live.addrs);
        // Spec change by the owner: ports follow, addrs resent.
        let mut d = desired();
        d.ports.push("tcp:80".into());
        let body = put(plan_attach(Some(&live), &d, &me("c1"), now));
        assert_eq!(body.ports, vec!["tcp:443", "tcp:80"]);
        assert_eq!(body.addrs, live.addrs);
    }

    #[test]
    fn never_adopts_foreign_services() {
        let now = t("2025-06-25T10:00:00Z");
        let foreign = VipService {
            name: "svc:web".into(),
            annotations: BTreeMap::from([("tailscale.com/owner-references".into(), "{}".into())]),
            ..VipService::default()
        };
        assert!(matches!(plan_attach(Some(&foreign), &desired(), &me("c1"), now), AttachPlan::Foreign(_)));
        assert_eq!(plan_detach(Some(&foreign), &me("c1"), now), DetachPlan::Nothing);
        let mut broken = foreign.clone();
        broken.annotations.insert(REGISTRY_ANNOTATION.into(), "not json".into());
        assert!(matches!(plan_attach(Some(&broken), &desired(), &me("c1"), now), AttachPlan::Foreign(_)));
        // Another TailscaleServices of the same cluster holds it.
        let live = stored(put(plan_attach(None, &desired(), &me("c1"), now)));
        let other = Identity { cluster: "c1".into(), service: ObjectKey::new("dev", "web") };
        assert!(
            matches!(plan_attach(Some(&live), &desired(), &other, now), AttachPlan::Foreign(m) if m.contains("prod/web"))
        );
        assert_eq!(plan_detach(Some(&live), &other, now), DetachPlan::Nothing);
    }

    #[test]
    fn second_cluster_attaches_without_taking_over_the_spec() {
        let now = t("2025-06-25T10:00:00Z");
        let live = stored(put(plan_attach(None, &desired(), &me("c1"), now)));
        let mut theirs = desired();
        theirs.ports = vec!["tcp:8443".into()];
        let body = put(plan_attach(Some(&live), &theirs, &me("c2"), now));
        assert_eq!(body.ports, vec!["tcp:443"], "the owner's spec stays");
        assert_eq!(body.addrs, live.addrs);
        assert_eq!(body.annotations[OWNER_ANNOTATION], "c1");
        assert_eq!(body.annotations[CONSUMER_COUNT_ANNOTATION], "2");
        // The owner detaches: c2 remains and becomes owner; the service is kept.
        let shared = stored(body);
        let after = match plan_detach(Some(&shared), &me("c1"), now) {
            DetachPlan::Put(b) => b,
            other => panic!("{other:?}"),
        };
        assert_eq!(after.annotations[OWNER_ANNOTATION], "c2");
        assert_eq!(after.annotations[CONSUMER_COUNT_ANNOTATION], "1");
        assert_eq!(after.addrs, live.addrs);
        // The last consumer detaches: delete.
        assert_eq!(plan_detach(Some(&stored(after)), &me("c2"), now), DetachPlan::Delete);
        assert_eq!(plan_detach(None, &me("c2"), now), DetachPlan::Nothing);
    }

    #[test]
    fn stale_consumers_are_dropped() {
        let t0 = t("2025-06-25T10:00:00Z");
        let live = stored(put(plan_attach(None, &desired(), &me("c1"), t0)));
        let shared = stored(put(plan_attach(Some(&live), &desired(), &me("c2"), t0)));
        // 31 minutes later c1 has not been seen: c2's heartbeat drops it and takes ownership.
        let t1 = t0 + Duration::from_secs(31 * 60);
        let body = put(plan_attach(Some(&shared), &desired(), &me("c2"), t1));
        let reg = Registry::of(&body).expect("reading the registry annotations").unwrap_or_else(|| panic!("registry"));
        assert_eq!(reg.consumers.keys().collect::<Vec<_>>(), vec!["c2"]);
        assert_eq!(reg.owner_cluster, "c2");
        // And c2 leaving with only stale c1 left deletes it.
        assert_eq!(plan_detach(Some(&shared), &me("c2"), t1), DetachPlan::Delete);
    }

    #[test]
    fn dns_names_use_the_discovered_suffix() {
        assert_eq!(dns_name("svc:web", Some("tail8eff9.ts.net")).as_deref(), Some("web.tail8eff9.ts.net"));
        assert_eq!(dns_name("svc:web", None), None);
    }
}

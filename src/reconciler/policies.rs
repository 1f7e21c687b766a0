//! Status of TailscaleRoutePolicies: per target, whether the policy holds it (`Accepted`), an
//! older policy does (`Conflicted`), it is not there (`TargetNotFound`) or the spec is `Invalid`.
//! Standings depend on every policy and on the targets, so all of them are worked out together
//! from the cache ([`crate::core::policy::standings`], the rule the extension enforces by), on
//! every cache change and every [`RESYNC`] (routes do not move the cache's revision), and only
//! statuses that differ are written.

use std::sync::Arc;
use std::time::Duration;

use kube::Api;
use tokio_util::sync::CancellationToken;

use super::{Context, apply_status};
use crate::api::{TailscaleRoutePolicy, TailscaleRoutePolicyStatus};
use crate::core::authz::target_exists;
use crate::core::conditions::now_seconds;
use crate::core::policy::{self, standings};

/// How often standings are recomputed without a cache change.
pub const RESYNC: Duration = Duration::from_secs(10);

/// Writes policy statuses until `stop`.
pub async fn run(ctx: Arc<Context>, stop: CancellationToken) {
    let mut changes = ctx.cache.subscribe();
    loop {
        if let Err(error) = sync(&ctx).await {
            tracing::warn!(error = %crate::errors::Chain(&error), "writing route policy status failed; retrying");
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = changes.changed() => tokio::time::sleep(Duration::from_millis(200)).await,
            _ = tokio::time::sleep(RESYNC) => {}
        }
    }
}

/// The status each policy should have now, for those whose stored status differs.
pub fn outdated(idx: &crate::core::index::Index) -> Vec<(Arc<TailscaleRoutePolicy>, TailscaleRoutePolicyStatus)> {
    let policies: Vec<Arc<TailscaleRoutePolicy>> = idx.route_policies().map(|(_, p)| p.clone()).collect();
    let all = standings(policies.iter().map(Arc::as_ref), |ns, t| target_exists(idx, ns, t));
    let now = now_seconds();
    policies
        .into_iter()
        .filter_map(|p| {
            let key = crate::core::ObjectKey::of(&p.metadata);
            let desired = policy::status(&p, all.get(&key).map(Vec::as_slice).unwrap_or_default(), now);
            (p.status.as_ref() != Some(&desired)).then_some((p, desired))
        })
        .collect()
}

async fn sync(ctx: &Context) -> Result<(), super::Error> {
    let work = outdated(&ctx.cache.read());
    for (policy, status) in work {
        let ns = policy.metadata.namespace.clone().unwrap_or_default();
        let api: Api<TailscaleRoutePolicy> = Api::namespaced(ctx.client.clone(), &ns);
        apply_status(ctx, &api, &policy, policy.status.as_ref(), &status).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::core::Resource;
    use crate::core::index::Index;
    use crate::core::routes::RouteKind;

    fn policy(name: &str, created: &str, route: &str) -> Resource {
        Resource::from_value(json!({"apiVersion": "gateway.tailscale.com/v1alpha1", "kind": "TailscaleRoutePolicy",
            "metadata": {"name": name, "namespace": "apps", "creationTimestamp": created, "generation": 1},
            "spec": {"targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": route}]}}))
        .expect("a policy")
    }

    fn reasons(work: &[(Arc<TailscaleRoutePolicy>, TailscaleRoutePolicyStatus)]) -> Vec<(String, String)> {
        work.iter()
            .map(|(p, s)| {
                let ours = s.ancestors.iter().find(|a| a.controller_name == policy::CONTROLLER_NAME);
                let reason = ours.map(|a| a.conditions[0].reason.clone()).unwrap_or_default();
                (p.metadata.name.clone().unwrap_or_default(), reason)
            })
            .collect()
    }

    #[test]
    fn statuses_follow_targets_and_age_and_settle() {
        let mut idx = Index::default();
        idx.apply(policy("first", "2026-01-01T00:00:00Z", "web"));
        idx.apply(policy("second", "2026-02-01T00:00:00Z", "web"));
        let work = outdated(&idx);
        assert_eq!(
            reasons(&work),
            [("first".to_string(), "TargetNotFound".to_string()), ("second".to_string(), "TargetNotFound".to_string())]
        );
        idx.apply_route(RouteKind::Http, &json!({"metadata": {"name": "web", "namespace": "apps"}, "spec": {}}));
        let work = outdated(&idx);
        assert_eq!(
            reasons(&work),
            [("first".to_string(), "Accepted".to_string()), ("second".to_string(), "Conflicted".to_string())]
        );
        // Written back (as the API server would store them), nothing is outdated any more.
        for (p, status) in work {
            let mut stored = (*p).clone();
            stored.status = Some(status);
            idx.apply(Resource::RoutePolicy(stored));
        }
        assert!(outdated(&idx).is_empty());
    }
}

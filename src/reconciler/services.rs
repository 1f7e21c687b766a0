//! TailscaleServices controller: selection from the shared cache, auto-provisioning from
//! `endpointTemplate` and cleanup of unused auto-provisioned endpoints, the VIP service (create,
//! update resending `addrs`, attach/detach across clusters, never adopting someone else's), and
//! the status with the VIP DNS name from the tailnet's discovered MagicDNS suffix.

use std::sync::Arc;

use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Event as Finalizer, finalizer};

use super::builders::{self, VipOutcome};
use super::vip::{self, AttachPlan, DetachPlan, Identity};
use super::{Context, Error, TailnetHandle, apply_status, delete_if_exists, ensure, instrumented, provision, status};
use crate::api::{SelectedEndpointsStatus, TailscaleEndpoints, TailscaleServices};
use crate::core::ObjectKey;
use crate::core::resource::vip_service_name;

/// Finalizer guarding the detach (or deletion) of the VIP service.
pub const FINALIZER: &str = "gateway.tailscale.com/vip-service";
const CONTROLLER: &str = "services";

/// Reconciles one TailscaleServices.
pub async fn reconcile(svc: Arc<TailscaleServices>, ctx: Arc<Context>) -> Result<Action, Error> {
    let key = ObjectKey::of(&svc.metadata);
    let ns = svc.namespace().ok_or_else(|| Error::Invalid("TailscaleServices without a namespace".into()))?;
    let api: Api<TailscaleServices> = Api::namespaced(ctx.client.clone(), &ns);
    let c: &Context = &ctx;
    instrumented(c, CONTROLLER, key.to_string(), async {
        finalizer(&api, FINALIZER, svc, |event| async move {
            match event {
                Finalizer::Apply(svc) => apply(&svc, c).await,
                Finalizer::Cleanup(svc) => cleanup(&svc, c).await,
            }
        })
        .await
        .map_err(Error::from_finalizer)
    })
    .await
}

/// Requeues a failed object with per-object exponential backoff. The status is left as it was.
pub fn error_policy(svc: Arc<TailscaleServices>, _error: &Error, ctx: Arc<Context>) -> Action {
    Action::requeue(ctx.backoff(CONTROLLER, ObjectKey::of(&svc.metadata).to_string()))
}

fn identity(ctx: &Context, svc: &TailscaleServices) -> Identity {
    Identity { cluster: ctx.config.cluster_id.clone(), service: ObjectKey::of(&svc.metadata) }
}

/// The tailnet of the VIP service: the spec's, else that of the selected endpoints, else the
/// template's.
fn tailnet_of(svc: &TailscaleServices, selected: &[Arc<TailscaleEndpoints>]) -> Option<String> {
    svc.spec
        .tailnet
        .clone()
        .or_else(|| selected.first().map(|e| e.spec.tailnet.clone()))
        .or_else(|| svc.spec.endpoint_template.as_ref().map(|t| t.tailnet.clone()))
        .filter(|t| !t.is_empty())
}

/// The VIP service we want: spec ports, else the selected endpoints' ports; spec tags, else the
/// tailnet's default tags.
fn desired_vip(
    ctx: &Context,
    svc: &TailscaleServices,
    name: String,
    selected: &[Arc<TailscaleEndpoints>],
    tailnet: &str,
) -> vip::Desired {
    let spec = svc.spec.vip_service.clone().unwrap_or_default();
    let ports = if spec.ports.is_empty() {
        let mut p: Vec<String> = selected
            .iter()
            .flat_map(|e| e.spec.ports.iter())
            .map(|p| format!("{}:{}", p.protocol.as_deref().unwrap_or("TCP").to_ascii_lowercase(), p.port))
            .collect();
        p.sort();
        p.dedup();
        p
    } else {
        spec.ports
    };
    let tags = if spec.tags.is_empty() {
        ctx.cache.read().tailnet(tailnet).map(|t| t.spec.tags.clone()).unwrap_or_default()
    } else {
        spec.tags
    };
    vip::Desired { name, ports, tags, comment: spec.comment.unwrap_or_default() }
}

async fn apply(svc: &TailscaleServices, ctx: &Context) -> Result<Action, Error> {
    let key = ObjectKey::of(&svc.metadata);
    let ns = key.namespace.clone();
    let endpoints_api: Api<TailscaleEndpoints> = Api::namespaced(ctx.client.clone(), &ns);

    // Selection and auto-provisioning.
    let (selected, orphans, synced) = {
        let idx = ctx.cache.read();
        let sel: Vec<Arc<TailscaleEndpoints>> =
            provision::effective_selection(&idx, &key).iter().filter_map(|k| idx.endpoints(k).cloned()).collect();
        (sel, provision::orphaned_auto_provisioned(&idx, &ns), idx.synced())
    };
    provision_endpoints(ctx, svc, &selected, &endpoints_api).await?;
    // Only with a complete cache: before that every endpoints object looks unselected.
    if synced {
        deprovision_endpoints(ctx, svc, orphans, &endpoints_api).await?;
    }

    let selected_status = selected_status(ctx, &selected);
    let tailnet = tailnet_of(svc, &selected);
    let suffix = tailnet.as_deref().and_then(|t| magic_dns_suffix(ctx, t));
    let outcome = match (vip_service_name(svc), tailnet) {
        (None, _) => VipOutcome::Pending("InvalidName", "no VIP service name: set spec.vipService.name".into()),
        (_, None) => {
            VipOutcome::Pending("NoTailnet", "no tailnet: set spec.tailnet or select TailscaleEndpoints".into())
        }
        (Some(name), Some(tailnet)) => match ctx.tailnet_api(&tailnet).await {
            Err(e @ (Error::TailnetNotFound(_) | Error::Credentials { .. })) => {
                VipOutcome::Pending("TailnetNotReady", e.to_string())
            }
            Err(e) => return Err(e),
            Ok(handle) => attach_vip(ctx, svc, &handle, name, &tailnet, &selected).await?,
        },
    };
    let proxies = builders::SelectedProxies::of(&selected);
    let new_status =
        builders::services_status(svc, selected_status, &proxies, &outcome, suffix.as_deref(), status::now_seconds());
    apply_status(
        ctx,
        &Api::<TailscaleServices>::namespaced(ctx.client.clone(), &svc.namespace().unwrap_or_default()),
        svc,
        svc.status.as_ref(),
        &new_status,
    )
    .await?;
    let requeue = match outcome {
        VipOutcome::Pending(..) => std::time::Duration::from_secs(60),
        _ => ctx.config.requeue.min(vip::HEARTBEAT),
    };
    Ok(Action::requeue(requeue))
}

/// Creates (or updates) the TailscaleEndpoints of `endpointTemplate`, unless the selector picks
/// other endpoints too; says so when the template's labels do not satisfy the selector.
async fn provision_endpoints(
    ctx: &Context,
    svc: &TailscaleServices,
    selected: &[Arc<TailscaleEndpoints>],
    endpoints_api: &Api<TailscaleEndpoints>,
) -> Result<(), Error> {
    let Some(desired) = provision::auto_provisioned_endpoints(svc) else { return Ok(()) };
    let only_ours = selected.iter().all(|e| e.metadata.name == desired.metadata.name);
    if !only_ours {
        return Ok(());
    }
    if provision::selects(svc, &desired) {
        let current = ctx.cache.read().endpoints(&ObjectKey::of(&desired.metadata)).cloned();
        if ensure(ctx, endpoints_api, current.as_deref(), &desired).await?.is_some() && current.is_none() {
            let name = desired.name_any();
            ctx.event(
                svc,
                false,
                "EndpointsProvisioned",
                format!("created TailscaleEndpoints {name} from the template"),
            )
            .await;
        }
    } else {
        ctx.event(
            svc,
            true,
            "TemplateNotSelected",
            "the endpointTemplate's labels do not satisfy the selector; nothing provisioned".into(),
        )
        .await;
    }
    Ok(())
}

/// Deletes the auto-provisioned TailscaleEndpoints in the namespace that nothing selects any more.
async fn deprovision_endpoints(
    ctx: &Context,
    svc: &TailscaleServices,
    orphans: Vec<ObjectKey>,
    endpoints_api: &Api<TailscaleEndpoints>,
) -> Result<(), Error> {
    for orphan in orphans {
        // Already gone (the cache trails the API server): nothing to tell.
        if !delete_if_exists(endpoints_api, &orphan.name).await? {
            continue;
        }
        tracing::info!(endpoints = %orphan, "deleted auto-provisioned endpoints nothing selects");
        ctx.event(
            svc,
            false,
            "EndpointsDeprovisioned",
            format!("deleted unused auto-provisioned TailscaleEndpoints {}", orphan.name),
        )
        .await;
    }
    Ok(())
}

/// Creates or updates the VIP service `name` in `tailnet` as [`vip::plan_attach`] says, never
/// taking over one another cluster or object owns.
async fn attach_vip(
    ctx: &Context,
    svc: &TailscaleServices,
    handle: &TailnetHandle,
    name: String,
    tailnet: &str,
    selected: &[Arc<TailscaleEndpoints>],
) -> Result<VipOutcome, Error> {
    let key = ObjectKey::of(&svc.metadata);
    let desired = desired_vip(ctx, svc, name.clone(), selected, tailnet);
    let existing = handle.api.get_vip_service(&name).await?;
    Ok(match vip::plan_attach(existing.as_ref(), &desired, &identity(ctx, svc), status::now_seconds()) {
        AttachPlan::Unchanged => VipOutcome::Ready(existing.unwrap_or_default()),
        AttachPlan::Put(body) => {
            handle.api.put_vip_service(&body).await?;
            let verb = if existing.is_some() { "updated" } else { "created" };
            tracing::info!(service = %key, vip = %name, tailnet = %tailnet, "{verb} VIP service");
            if existing.is_none() {
                ctx.event(svc, false, "VIPServiceCreated", format!("created {name} in tailnet {tailnet}")).await;
            }
            // The API allocates addresses on create: read them back.
            VipOutcome::Ready(handle.api.get_vip_service(&name).await?.unwrap_or(body))
        }
        AttachPlan::Foreign(msg) => {
            let was_foreign = svc.status.as_ref().is_some_and(|s| {
                s.conditions.iter().any(|c| c.type_ == status::VIP_SERVICE_READY && c.reason == "OwnedByAnother")
            });
            if !was_foreign {
                ctx.event(svc, true, "VIPServiceOwnedByAnother", msg.clone()).await;
            }
            VipOutcome::Foreign(msg)
        }
    })
}

fn magic_dns_suffix(ctx: &Context, tailnet: &str) -> Option<String> {
    ctx.cache.read().tailnet(tailnet)?.status.as_ref()?.tailnet_info.as_ref()?.magic_dns_suffix.clone()
}

fn selected_status(ctx: &Context, selected: &[Arc<TailscaleEndpoints>]) -> Vec<SelectedEndpointsStatus> {
    let idx = ctx.cache.read();
    selected
        .iter()
        .map(|ep| {
            let devices = idx.devices_of(&ObjectKey::of(&ep.metadata));
            SelectedEndpointsStatus {
                name: ep.name_any(),
                machines: devices.iter().map(|d| d.name.clone()).collect(),
                healthy_machines: Some(devices.iter().filter(|d| d.online).count() as i32),
            }
        })
        .collect()
}

async fn cleanup(svc: &TailscaleServices, ctx: &Context) -> Result<Action, Error> {
    let key = ObjectKey::of(&svc.metadata);
    let selected: Vec<Arc<TailscaleEndpoints>> = {
        let idx = ctx.cache.read();
        provision::effective_selection(&idx, &key).iter().filter_map(|k| idx.endpoints(k).cloned()).collect()
    };
    let (Some(name), Some(tailnet)) = (vip_service_name(svc), tailnet_of(svc, &selected)) else {
        return Ok(Action::await_change());
    };
    let handle = match ctx.tailnet_api(&tailnet).await {
        Ok(h) => h,
        Err(e @ (Error::TailnetNotFound(_) | Error::Credentials { .. })) => {
            ctx.event(svc, true, "VIPServiceNotDetached", format!("cannot reach the tailnet: {e}")).await;
            return Ok(Action::await_change());
        }
        Err(e) => return Err(e),
    };
    let existing = handle.api.get_vip_service(&name).await?;
    match vip::plan_detach(existing.as_ref(), &identity(ctx, svc), status::now_seconds()) {
        DetachPlan::Nothing => {}
        DetachPlan::Delete => {
            handle.api.delete_vip_service(&name).await?;
            tracing::info!(service = %key, vip = %name, "deleted VIP service (no consumer left)");
        }
        DetachPlan::Put(body) => {
            handle.api.put_vip_service(&body).await?;
            tracing::info!(service = %key, vip = %name, "detached from shared VIP service");
        }
    }
    Ok(Action::await_change())
}

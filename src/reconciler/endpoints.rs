//! TailscaleEndpoints controller: proxies (ServiceAccount, Role, RoleBinding, StatefulSet,
//! Service, per-replica config and state Secrets), auth keys for unregistered replicas, device
//! status from state Secrets joined with the tailnet's cached device list, scale-down and
//! deletion removing devices from the tailnet.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Event as Finalizer, finalizer};

use super::builders::{self, DeviceState, ObservedStatefulSet};
use super::owned::{self, OwnedStores, Tombstones};
use super::status::{self, Desired, READY};
use super::{Context, Error, TailnetHandle, apply_status, delete_if_exists, ensure, instrumented};
use crate::api::{TailscaleEndpoints, TailscaleEndpointsStatus};
use crate::core::ObjectKey;
use crate::core::dataplane::{self, ConnectionType, ProxyPlan, SERVE_CONFIG_KEY};
use crate::tailscale::{AuthKeyRequest, Device};

/// Finalizer guarding the removal of the proxies' devices from the tailnet.
pub const FINALIZER: &str = "gateway.tailscale.com/tailnet-devices";
const CONTROLLER: &str = "endpoints";

/// Reconciles one TailscaleEndpoints.
pub async fn reconcile(ep: Arc<TailscaleEndpoints>, ctx: Arc<Context>) -> Result<Action, Error> {
    let key = ObjectKey::of(&ep.metadata);
    let ns = ep.namespace().ok_or_else(|| Error::Invalid("TailscaleEndpoints without a namespace".into()))?;
    let api: Api<TailscaleEndpoints> = Api::namespaced(ctx.client.clone(), &ns);
    let c: &Context = &ctx;
    instrumented(c, CONTROLLER, key.to_string(), async {
        finalizer(&api, FINALIZER, ep, |event| async move {
            match event {
                Finalizer::Apply(ep) => apply(&ep, c).await,
                Finalizer::Cleanup(ep) => cleanup(&ep, c).await,
            }
        })
        .await
        .map_err(Error::from_finalizer)
    })
    .await
}

/// Requeues a failed object with per-object exponential backoff. The status is left as it was.
pub fn error_policy(ep: Arc<TailscaleEndpoints>, _error: &Error, ctx: Arc<Context>) -> Action {
    Action::requeue(ctx.backoff(CONTROLLER, ObjectKey::of(&ep.metadata).to_string()))
}

/// What exists in the cluster for one TailscaleEndpoints, as the owned-object stores have it.
struct Observed {
    service_account: Option<Arc<ServiceAccount>>,
    role: Option<Arc<Role>>,
    role_binding: Option<Arc<RoleBinding>>,
    service: Option<Arc<Service>>,
    stateful_set: Option<Arc<StatefulSet>>,
    /// Config Secrets by replica.
    config: BTreeMap<i32, Arc<Secret>>,
    /// State Secrets by replica.
    state: BTreeMap<i32, Arc<Secret>>,
    /// The data-plane ConfigMap.
    config_map: Option<Arc<ConfigMap>>,
    /// Shared certificate Secrets of HTTPS VIPs, by name (the domain).
    certs: BTreeMap<String, Arc<Secret>>,
}

/// Reads what exists from the stores: no request to the API server. Secrets this replica deleted
/// are absent even while a store still shows them.
fn observe(stores: &OwnedStores, deleted: &Tombstones, ns: &str, name: &str) -> Result<Observed, Error> {
    if !stores.is_ready() {
        return Err(Error::NotSynced);
    }
    deleted.prune(&stores.secrets);
    let mut config = BTreeMap::new();
    let mut state = BTreeMap::new();
    let mut certs = BTreeMap::new();
    let live = stores
        .secrets_of(ns, name)
        .into_iter()
        .filter(|s| !s.metadata.uid.as_deref().is_some_and(|u| deleted.contains(u)));
    for s in live {
        if builders::is_cert_secret(&s) {
            certs.insert(s.name_any(), s);
            continue;
        }
        match (builders::replica_index(&s), builders::is_config_secret(&s)) {
            (Some(i), Some(true)) => {
                config.insert(i, s);
            }
            (Some(i), Some(false)) => {
                state.insert(i, s);
            }
            _ => {}
        }
    }
    Ok(Observed {
        service_account: owned::get(&stores.service_accounts, ns, name),
        role: owned::get(&stores.roles, ns, name),
        role_binding: owned::get(&stores.role_bindings, ns, name),
        service: owned::get(&stores.services, ns, &builders::proxy_service_name(name)),
        stateful_set: owned::get(&stores.stateful_sets, ns, name),
        config,
        state,
        config_map: owned::get(&stores.config_maps, ns, &builders::proxies_config_map_name(name)),
        certs,
    })
}

/// The proxies' data plane for this reconcile: the ConfigMap to apply, and the VIPs a registered
/// replica advertises. A VIP is advertised only once the ConfigMap in place serves it, and an
/// advertised VIP keeps its serve entry until no replica advertises it any more, so there is no
/// moment where a replica advertises a VIP it would drop connections for.
struct DataPlane {
    config_map: ConfigMap,
    advertise: Vec<String>,
    plan: ProxyPlan,
    /// Domains whose shared certificate Secret must exist.
    cert_domains: BTreeSet<String>,
    /// The VIPs some replica advertises now (from the observed config Secrets).
    advertised_now: BTreeSet<String>,
}

fn data_plane(ep: &TailscaleEndpoints, ctx: &Context, key: &ObjectKey, observed: &Observed) -> DataPlane {
    let plan = ctx.cache.read().proxy_plan(key, &ctx.config.placement).unwrap_or_default();
    let in_place = observed.config_map.as_ref().and_then(|c| c.data.as_ref()?.get(SERVE_CONFIG_KEY).cloned());
    let served_now = in_place.as_deref().map(dataplane::served_vips).unwrap_or_default();
    let advertised_now: BTreeSet<String> =
        observed.config.values().flat_map(|s| builders::advertised_services(s)).collect();
    let certs_ready: BTreeSet<String> =
        observed.certs.iter().filter(|(_, s)| builders::has_certificate(s)).map(|(d, _)| d.clone()).collect();
    let advertise =
        if ConnectionType::of(ep).ingress() { plan.advertisable(&served_now, &certs_ready) } else { Vec::new() };
    let serve = dataplane::serve_config_keeping(&plan.serve, in_place.as_deref(), &advertised_now);
    let cert_domains = plan.cert_domains();
    DataPlane { config_map: builders::config_map(ep, &plan, &serve), advertise, plan, cert_domains, advertised_now }
}

async fn apply(ep: &TailscaleEndpoints, ctx: &Context) -> Result<Action, Error> {
    let name = ep.name_any();
    let ns = ep.namespace().unwrap_or_default();
    let key = ObjectKey::new(&ns, &name);
    let handle = match ctx.tailnet_api(&ep.spec.tailnet).await {
        Ok(h) => h,
        Err(e @ (Error::TailnetNotFound(_) | Error::Credentials { .. })) => {
            return not_ready(ep, ctx, "TailnetNotReady", e.to_string()).await;
        }
        Err(e) => return Err(e),
    };
    let observed = observe(&ctx.owned(), &ctx.deleted, &ns, &name)?;
    let mut created = Vec::new();
    let service_account = builders::service_account(ep);
    let applied =
        ensure(ctx, &Api::namespaced(ctx.client.clone(), &ns), observed.service_account.as_deref(), &service_account)
            .await?;
    if applied.is_some() && observed.service_account.is_none() {
        created.push("ServiceAccount");
    }
    let dp = data_plane(ep, ctx, &key, &observed);
    ensure_access_and_config(ctx, ep, &observed, &dp).await?;
    // Per-replica Secrets before the StatefulSet, so new pods find their config.
    let states = ensure_replica_secrets(ctx, ep, &handle, &observed, &dp.advertise).await?;
    let sts_facts = ensure_proxies(ctx, ep, &observed, &dp.plan, &mut created).await?;
    if !created.is_empty() {
        let replicas = builders::replicas(ep);
        ctx.event(ep, false, "ProxiesCreated", format!("created {} for {replicas} proxies", created.join(", "))).await;
    }
    scale_down(ctx, ep, &handle, &observed).await?;

    let live = ctx.devices(&handle).await?;
    let devices = states.iter().filter_map(|(i, st)| builders::device_status(&name, *i, st, &live)).collect();
    let new_status = builders::endpoints_status(ep, devices, sts_facts.as_ref(), status::now_seconds());
    apply_status(
        ctx,
        &Api::<TailscaleEndpoints>::namespaced(ctx.client.clone(), &ep.namespace().unwrap_or_default()),
        ep,
        ep.status.as_ref(),
        &new_status,
    )
    .await?;
    Ok(Action::requeue(ctx.config.requeue))
}

/// The proxies' Role (the certificate Secrets that exist and those about to), RoleBinding,
/// data-plane ConfigMap (before the StatefulSet: pods do not start without it) and certificate
/// Secrets.
async fn ensure_access_and_config(
    ctx: &Context,
    ep: &TailscaleEndpoints,
    observed: &Observed,
    dp: &DataPlane,
) -> Result<(), Error> {
    let ns = ep.namespace().unwrap_or_default();
    let c = ctx.client.clone();
    // The proxies may read and write the certificate Secrets that exist and those about to.
    let role_domains: BTreeSet<String> = dp.cert_domains.iter().chain(observed.certs.keys()).cloned().collect();
    let role = builders::role(ep, &role_domains);
    ensure(ctx, &Api::namespaced(c.clone(), &ns), observed.role.as_deref(), &role).await?;
    ensure(ctx, &Api::namespaced(c.clone(), &ns), observed.role_binding.as_deref(), &builders::role_binding(ep))
        .await?;
    // The ConfigMap before the StatefulSet: pods do not start without it.
    ensure(ctx, &Api::namespaced(c, &ns), observed.config_map.as_deref(), &dp.config_map).await?;
    ensure_cert_secrets(ctx, ep, observed, dp).await
}

/// Each replica's config Secret (with an auth key minted for a replica that has neither one nor
/// a device; `advertise` only for registered ones) and state Secret; returns each replica's
/// device state.
async fn ensure_replica_secrets(
    ctx: &Context,
    ep: &TailscaleEndpoints,
    handle: &TailnetHandle,
    observed: &Observed,
    advertise: &[String],
) -> Result<Vec<(i32, DeviceState)>, Error> {
    let name = ep.name_any();
    let replicas = builders::replicas(ep);
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ep.namespace().unwrap_or_default());
    let mut states: Vec<(i32, DeviceState)> = Vec::with_capacity(replicas as usize);
    for i in 0..replicas {
        let mut config_secret = observed.config.get(&i).cloned();
        let mut state_secret = observed.state.get(&i).cloned();
        let mut state = state_secret.as_deref().map(builders::device_state).unwrap_or_default();
        let mut auth_key = config_secret.as_deref().and_then(builders::existing_auth_key);
        if auth_key.is_none() && state.node_id.is_none() {
            // The stores trail the API server: a key written or a device registered a moment
            // ago may not be in them yet. Ask before minting a key the replica does not need.
            config_secret = secrets.get_opt(&builders::config_secret_name(&name, i)).await?.map(Arc::new);
            state_secret = secrets.get_opt(&builders::state_secret_name(&name, i)).await?.map(Arc::new);
            state = state_secret.as_deref().map(builders::device_state).unwrap_or_default();
            auth_key = config_secret.as_deref().and_then(builders::existing_auth_key);
        }
        let registered = state.node_id.is_some();
        if auth_key.is_none() && !registered {
            let key = handle.api.create_auth_key(&auth_key_request(ep, ctx, i)).await?;
            tracing::info!(endpoints = %key_of(ep), replica = i, key_id = %key.id, "created auth key");
            auth_key = Some(key.key);
        }
        let config = builders::tailscaled_config(&name, i, auth_key, if registered { advertise } else { &[] });
        ensure(ctx, &secrets, config_secret.as_deref(), &builders::config_secret(ep, i, &config)?).await?;
        ensure(ctx, &secrets, state_secret.as_deref(), &builders::state_secret(ep, i)).await?;
        states.push((i, state));
    }
    Ok(states)
}

/// The StatefulSet (noted in `created` when new) and the proxies' Service; returns what the
/// StatefulSet's status says, for the object's status.
async fn ensure_proxies(
    ctx: &Context,
    ep: &TailscaleEndpoints,
    observed: &Observed,
    plan: &ProxyPlan,
    created: &mut Vec<&'static str>,
) -> Result<Option<ObservedStatefulSet>, Error> {
    let ns = ep.namespace().unwrap_or_default();
    let c = ctx.client.clone();
    let sts = builders::stateful_set(ep, &ctx.config.proxy_image);
    let applied = ensure(ctx, &Api::namespaced(c.clone(), &ns), observed.stateful_set.as_deref(), &sts).await?;
    if applied.is_some() && observed.stateful_set.is_none() {
        created.push("StatefulSet");
    }
    let sts_facts = applied.as_ref().or(observed.stateful_set.as_deref()).map(ObservedStatefulSet::of);
    ensure(ctx, &Api::namespaced(c, &ns), observed.service.as_deref(), &builders::service(ep, plan)).await?;
    Ok(sts_facts)
}

/// Scale-down: remove surplus devices from the tailnet, then their Secrets. The stores say
/// whether there is any; what there is comes from the API server, so a device that registered
/// a moment ago is not missed (its state Secret is the only record of its node ID).
async fn scale_down(
    ctx: &Context,
    ep: &TailscaleEndpoints,
    handle: &TailnetHandle,
    observed: &Observed,
) -> Result<(), Error> {
    let name = ep.name_any();
    let replicas = builders::replicas(ep);
    let stored_surplus = observed.config.keys().chain(observed.state.keys()).any(|i| *i >= replicas);
    if !stored_surplus {
        return Ok(());
    }
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ep.namespace().unwrap_or_default());
    let live = secrets.list(&ListParams::default().labels(&format!("{}={name}", builders::ENDPOINTS_LABEL))).await?;
    let surplus: Vec<&Secret> =
        live.items.iter().filter(|s| builders::replica_index(s).is_some_and(|i| i >= replicas)).collect();
    let node_ids: Vec<String> = surplus
        .iter()
        .filter(|s| builders::is_config_secret(s) == Some(false))
        .filter_map(|s| builders::device_state(s).node_id)
        .collect();
    delete_devices(ctx, handle, &node_ids).await?;
    let mut deleted = false;
    for s in &surplus {
        if delete_if_exists(&secrets, &s.name_any()).await? {
            deleted = true;
            if let Some(uid) = &s.metadata.uid {
                ctx.deleted.add(uid);
            }
        }
    }
    // A store that has not seen the deletions yet repeats this; the Event is for the first time.
    if deleted {
        let note = format!("removed {} surplus devices from the tailnet", node_ids.len());
        ctx.event(ep, false, "ScaledDown", note).await;
    }
    Ok(())
}

/// Creates the shared certificate Secret of each HTTPS VIP the proxies serve (empty: replica 0
/// fills it), and deletes those of VIPs no longer served here once no replica advertises them.
async fn ensure_cert_secrets(
    ctx: &Context,
    ep: &TailscaleEndpoints,
    observed: &Observed,
    dp: &DataPlane,
) -> Result<(), Error> {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ep.namespace().unwrap_or_default());
    for domain in &dp.cert_domains {
        ensure(ctx, &secrets, observed.certs.get(domain).map(|s| s.as_ref()), &builders::cert_secret(ep, domain))
            .await?;
    }
    let still_served: BTreeSet<String> = dp.plan.serve.iter().filter_map(|v| v.dns_name.clone()).collect();
    for (domain, secret) in &observed.certs {
        let vip = crate::core::vip::of_dns_name(domain);
        if dp.cert_domains.contains(domain) || still_served.contains(domain) || dp.advertised_now.contains(&vip) {
            continue;
        }
        if delete_if_exists(&secrets, domain).await?
            && let Some(uid) = &secret.metadata.uid
        {
            ctx.deleted.add(uid);
        }
    }
    Ok(())
}

fn key_of(ep: &TailscaleEndpoints) -> ObjectKey {
    ObjectKey::of(&ep.metadata)
}

fn auth_key_request(ep: &TailscaleEndpoints, ctx: &Context, i: i32) -> AuthKeyRequest {
    let tags = if ep.spec.tags.is_empty() {
        ctx.cache.read().tailnet(&ep.spec.tailnet).map(|t| t.spec.tags.clone()).unwrap_or_default()
    } else {
        ep.spec.tags.clone()
    };
    let mut description = format!("tailscale-gateway {}-{i}", ep.name_any());
    description.truncate(50);
    AuthKeyRequest { tags, reusable: false, ephemeral: false, preauthorized: true, description, expiry: None }
}

/// Sets `Ready=False` with `reason`, keeping the rest of the last known status.
async fn not_ready(ep: &TailscaleEndpoints, ctx: &Context, reason: &str, message: String) -> Result<Action, Error> {
    let mut s: TailscaleEndpointsStatus = ep.status.clone().unwrap_or_default();
    let ready = status::condition(
        Desired { type_: READY, ok: false, reason, message },
        ep.metadata.generation,
        status::now_seconds(),
        &s.conditions,
    );
    s.conditions.retain(|c| c.type_ != READY);
    s.conditions.push(ready);
    apply_status(
        ctx,
        &Api::<TailscaleEndpoints>::namespaced(ctx.client.clone(), &ep.namespace().unwrap_or_default()),
        ep,
        ep.status.as_ref(),
        &s,
    )
    .await?;
    Ok(Action::requeue(std::time::Duration::from_secs(60)))
}

/// Deletes devices by node ID, looking up their API IDs in the cached list.
async fn delete_devices(ctx: &Context, handle: &TailnetHandle, node_ids: &[String]) -> Result<(), Error> {
    if node_ids.is_empty() {
        return Ok(());
    }
    let live = ctx.devices(handle).await?;
    for node_id in node_ids {
        let id = live.iter().find(|d: &&Device| &d.node_id == node_id).map(|d| d.id.clone());
        if let Some(id) = id {
            handle.api.delete_device(&id).await?;
            tracing::info!(tailnet = %handle.name, node_id = %node_id, "deleted device");
        }
    }
    ctx.forget_devices(handle, node_ids).await;
    Ok(())
}

async fn cleanup(ep: &TailscaleEndpoints, ctx: &Context) -> Result<Action, Error> {
    let handle = match ctx.tailnet_api(&ep.spec.tailnet).await {
        Ok(h) => h,
        Err(e @ (Error::TailnetNotFound(_) | Error::Credentials { .. })) => {
            ctx.event(ep, true, "DevicesNotRemoved", format!("cannot remove devices from the tailnet: {e}")).await;
            return Ok(Action::await_change());
        }
        Err(e) => return Err(e),
    };
    let ns = ep.namespace().unwrap_or_default();
    let secrets = Api::<Secret>::namespaced(ctx.client.clone(), &ns)
        .list(&ListParams::default().labels(&format!("{}={}", builders::ENDPOINTS_LABEL, ep.name_any())))
        .await?;
    let node_ids: Vec<String> = secrets
        .items
        .iter()
        .filter(|s| builders::is_config_secret(s) == Some(false))
        .filter_map(|s| builders::device_state(s).node_id)
        .collect();
    match delete_devices(ctx, &handle, &node_ids).await {
        Ok(()) => {}
        Err(Error::Tailscale(e)) if !e.is_transient() => {
            ctx.event(ep, true, "DevicesNotRemoved", format!("cannot remove devices from the tailnet: {e}")).await;
        }
        Err(e) => return Err(e),
    }
    tracing::info!(endpoints = %key_of(ep), devices = node_ids.len(), "removed devices of deleted endpoints");
    Ok(Action::await_change())
}

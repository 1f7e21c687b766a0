//! TailscaleTailnet controller: checks the OAuth credentials, refreshes the tailnet's device list
//! (the one fetch per refresh interval every other controller reuses), discovers the tailnet
//! name and MagicDNS suffix, and reports `Ready`.

use std::sync::Arc;

use kube::ResourceExt;
use kube::runtime::controller::Action;

use super::status::{self, Desired, READY};
use super::{Context, Error, apply_status, instrumented};
use crate::api::{TailnetInfo, TailscaleTailnet, TailscaleTailnetStatus};
use crate::core::ObjectKey;
use crate::tailscale::{ApiError, Device, magic_dns_suffix};

const CONTROLLER: &str = "tailnet";

/// Reconciles one TailscaleTailnet.
pub async fn reconcile(tailnet: Arc<TailscaleTailnet>, ctx: Arc<Context>) -> Result<Action, Error> {
    let key = ObjectKey::cluster(tailnet.name_any());
    instrumented(&ctx, CONTROLLER, key.to_string(), apply(&tailnet, &ctx)).await
}

/// Requeues a failed object with per-object exponential backoff. The status is left as it was.
pub fn error_policy(tailnet: Arc<TailscaleTailnet>, _error: &Error, ctx: Arc<Context>) -> Action {
    Action::requeue(ctx.backoff(CONTROLLER, tailnet.name_any()))
}

/// What the device list tells about the tailnet: its name (the spec's unless `-`, else the
/// MagicDNS suffix), and the suffix read off device FQDNs (kept from the last status when no
/// device has one).
pub fn tailnet_info(tailnet: &TailscaleTailnet, devices: &[Device]) -> TailnetInfo {
    let previous = tailnet.status.as_ref().and_then(|s| s.tailnet_info.clone());
    let suffix = devices
        .iter()
        .find_map(|d| magic_dns_suffix(&d.name))
        .or_else(|| previous.as_ref().and_then(|p| p.magic_dns_suffix.clone()));
    let name = match tailnet.spec.tailnet.as_deref() {
        Some(t) if !t.is_empty() && t != "-" => t.to_string(),
        _ => suffix.clone().unwrap_or_else(|| "-".to_string()),
    };
    TailnetInfo { name, magic_dns_suffix: suffix }
}

/// The status for a tailnet: Ready with discovered info, or not ready with a reason.
pub fn tailnet_status(
    tailnet: &TailscaleTailnet,
    outcome: Result<TailnetInfo, (&str, String)>,
    now: k8s_openapi::jiff::Timestamp,
) -> TailscaleTailnetStatus {
    let previous = tailnet.status.clone().unwrap_or_default();
    let (desired, info) = match outcome {
        Ok(info) => {
            let message = match &info.magic_dns_suffix {
                Some(s) => format!("credentials valid; MagicDNS suffix {s}"),
                None => "credentials valid; MagicDNS suffix not yet known (no device in the tailnet)".to_string(),
            };
            (Desired { type_: READY, ok: true, reason: "Connected", message }, Some(info))
        }
        Err((reason, message)) => (Desired { type_: READY, ok: false, reason, message }, previous.tailnet_info.clone()),
    };
    TailscaleTailnetStatus {
        conditions: vec![status::condition(desired, tailnet.metadata.generation, now, &previous.conditions)],
        tailnet_info: info,
        observed_generation: tailnet.metadata.generation,
    }
}

async fn apply(tailnet: &TailscaleTailnet, ctx: &Context) -> Result<Action, Error> {
    let outcome = match ctx.connect(tailnet).await {
        Err(Error::Credentials { secret, reason }) => {
            Err(("InvalidCredentials", format!("OAuth secret {secret}: {reason}")))
        }
        Err(Error::Tailscale(ApiError::Unauthorized(m))) => Err(("InvalidCredentials", m)),
        Err(e) => return Err(e),
        Ok(handle) => match ctx.devices(&handle).await {
            Ok(devices) => Ok(tailnet_info(tailnet, &devices)),
            Err(ApiError::Unauthorized(m)) => {
                Err(("InvalidCredentials", format!("the Tailscale API rejected the credentials: {m}")))
            }
            // Transient: keep the last known status and retry with backoff.
            Err(e) => return Err(e.into()),
        },
    };
    let ok = outcome.is_ok();
    if let Err((_, message)) = &outcome {
        let was_failing = tailnet
            .status
            .as_ref()
            .is_some_and(|s| s.conditions.iter().any(|c| c.type_ == READY && c.status == "False"));
        if !was_failing {
            ctx.event(tailnet, true, "InvalidCredentials", message.clone()).await;
        }
        ctx.forget_tailnet(&tailnet.name_any());
    }
    let new_status = tailnet_status(tailnet, outcome, status::now_seconds());
    apply_status(
        ctx,
        &kube::Api::<TailscaleTailnet>::all(ctx.client.clone()),
        tailnet,
        tailnet.status.as_ref(),
        &new_status,
    )
    .await?;
    // While healthy, requeue on the device refresh interval: this keeps the live device list
    // (and so the aggregated API and endpoints status) fresh.
    Ok(Action::requeue(if ok { ctx.config.device_refresh } else { std::time::Duration::from_secs(60) }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{SecretRef, TailscaleTailnetSpec};

    fn tn(name: Option<&str>) -> TailscaleTailnet {
        TailscaleTailnet::new(
            "corp",
            TailscaleTailnetSpec {
                tailnet: name.map(str::to_string),
                oauth_secret_ref: SecretRef { name: "oauth".into(), namespace: None },
                api_url: None,
                tags: vec![],
            },
        )
    }

    #[test]
    fn info_is_discovered_from_device_fqdns() {
        let dev = Device { name: "a.tail8eff9.ts.net.".into(), ..Device::default() };
        let info = tailnet_info(&tn(Some("-")), std::slice::from_ref(&dev));
        assert_eq!(info.magic_dns_suffix.as_deref(), Some("tail8eff9.ts.net"));
        assert_eq!(info.name, "tail8eff9.ts.net");
        assert_eq!(tailnet_info(&tn(Some("example.com")), &[dev]).name, "example.com");
        let unknown = tailnet_info(&tn(None), &[]);
        assert_eq!(unknown.magic_dns_suffix, None);
        assert_eq!(unknown.name, "-");
    }

    #[test]
    fn failure_keeps_the_discovered_info() {
        let now = "2025-06-25T10:00:00Z".parse().expect("parsing the timestamp");
        let mut t = tn(Some("-"));
        let info = TailnetInfo { name: "x".into(), magic_dns_suffix: Some("tail1.ts.net".into()) };
        let ok = tailnet_status(&t, Ok(info.clone()), now);
        assert_eq!(ok.conditions[0].status, "True");
        t.status = Some(ok);
        let bad = tailnet_status(&t, Err(("InvalidCredentials", "nope".into())), now);
        assert_eq!(bad.conditions[0].status, "False");
        assert_eq!(bad.conditions[0].reason, "InvalidCredentials");
        assert_eq!(bad.tailnet_info, Some(info));
    }
}

//! The admission face: `POST /validate` and `POST /mutate` speaking AdmissionReview
//! `admission.k8s.io/v1`. Parsing and responding live here; the rules are the core's
//! ([`crate::core::validate::review`], [`crate::core::defaults::patch`]) and cross-object checks
//! read the shared cache.

use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use http::{StatusCode, header};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

use crate::cache::Cache;
use crate::core::field::summarize;
use crate::core::resource::ParseError;
use crate::core::validate::{ClusterView, review};
use crate::core::{Kind, Resource, defaults};
use crate::metrics::{AdmissionLabels, AdmissionMetrics};
use crate::server::status::status_response;

/// Largest AdmissionReview body we read (kube-apiserver's own limit is 3 MiB per object).
pub const MAX_BODY: usize = 3 * 1024 * 1024;
/// How long a client may take to send the body.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);
const REVIEW_API_VERSION: &str = "admission.k8s.io/v1";

/// Which webhook a request is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Webhook {
    /// `/validate`.
    Validate,
    /// `/mutate`.
    Mutate,
}

impl Webhook {
    fn label(self) -> &'static str {
        match self {
            Webhook::Validate => "validate",
            Webhook::Mutate => "mutate",
        }
    }
}

/// Shared state of the admission handlers.
#[derive(Clone)]
pub struct Admission {
    /// The shared cache, for cross-object rules.
    pub cache: Cache,
    /// Metrics.
    pub metrics: AdmissionMetrics,
}

/// `group/version/kind` of the reviewed object.
#[derive(Debug, Default, Deserialize)]
pub struct GroupVersionKind {
    /// API group.
    #[serde(default)]
    pub group: String,
    /// Version.
    #[serde(default)]
    pub version: String,
    /// Kind.
    #[serde(default)]
    pub kind: String,
}

/// The part of `AdmissionRequest` we use.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionRequest {
    /// Echoed in the response.
    pub uid: String,
    /// Kind of the object.
    #[serde(default)]
    pub kind: GroupVersionKind,
    /// Subresource (`status`, ...), if any.
    #[serde(default)]
    pub sub_resource: Option<String>,
    /// Namespace of the request.
    #[serde(default)]
    pub namespace: Option<String>,
    /// CREATE, UPDATE, DELETE or CONNECT.
    #[serde(default)]
    pub operation: String,
    /// The object as it would be stored (kept as raw JSON and parsed once, into the type we need).
    #[serde(default)]
    pub object: Option<Box<RawValue>>,
    /// The stored object (UPDATE).
    #[serde(default)]
    pub old_object: Option<Box<RawValue>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AdmissionReview {
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    kind: String,
    request: Option<AdmissionRequest>,
}

/// The answer to one review, before serialization.
#[derive(Debug, Default, PartialEq)]
pub struct Decision {
    /// Whether the request may proceed.
    pub allowed: bool,
    /// Denial message (kube-apiserver style, naming every bad field).
    pub message: Option<String>,
    /// JSON Patch to apply (mutation).
    pub patch: Option<Vec<json_patch::PatchOperation>>,
    /// Warnings shown by kubectl.
    pub warnings: Vec<String>,
}

impl Decision {
    fn allow() -> Self {
        Self { allowed: true, ..Self::default() }
    }

    fn deny(message: String) -> Self {
        Self { allowed: false, message: Some(message), ..Self::default() }
    }

    fn verdict(&self) -> &'static str {
        match (self.allowed, &self.patch) {
            (false, _) => "denied",
            (true, Some(_)) => "patched",
            (true, None) => "allowed",
        }
    }
}

/// Our kind, if the request is about one of our objects.
fn our_kind(req: &AdmissionRequest) -> Option<Kind> {
    (req.kind.group == crate::api::GROUP).then(|| Kind::from_name(&req.kind.kind)).flatten()
}

/// Parses the request's object, putting it in the request's namespace as kube-apiserver does.
fn parse_object(raw: Option<&RawValue>, req: &AdmissionRequest) -> Option<Result<Resource, ParseError>> {
    let raw = raw.filter(|r| r.get() != "null")?.get();
    // kube-apiserver sends the object in the version the request names; with one version served,
    // the request's kind decides the type and the object's own apiVersion/kind need no pre-pass.
    let mut res = match our_kind(req) {
        Some(kind) if req.kind.version == crate::api::VERSION => Resource::from_json_as(kind, raw),
        _ => Resource::from_json(raw),
    };
    if let Ok(r) = &mut res {
        r.default_namespace(req.namespace.as_deref().unwrap_or_default());
    }
    Some(res)
}

/// Decides a validating review. Pure apart from reading `view`.
pub fn validate(req: &AdmissionRequest, view: &dyn ClusterView) -> Decision {
    let Some(kind) = our_kind(req) else { return Decision::allow() };
    if !matches!(req.operation.as_str(), "CREATE" | "UPDATE") || req.sub_resource.is_some() {
        return Decision::allow();
    }
    let Some(parsed) = parse_object(req.object.as_deref(), req) else {
        return Decision::deny(format!("{kind}: the AdmissionReview request carries no object"));
    };
    let res = match parsed {
        Ok(res) => res,
        Err(ParseError::Invalid(e)) => return Decision::deny(summarize(kind.name(), "", &[e])),
        Err(e @ ParseError::NotOurs { .. }) => return Decision::deny(e.to_string()),
    };
    // Never block an object on its way out (finalizer removal after a rule change).
    if res.meta().deletion_timestamp.is_some() {
        return Decision::allow();
    }
    let old = parse_object(req.old_object.as_deref(), req).and_then(Result::ok);
    let verdict = review(&res, old.as_ref(), view);
    let name = res.meta().name.clone().or_else(|| res.meta().generate_name.clone()).unwrap_or_default();
    Decision {
        allowed: verdict.allowed(),
        message: (!verdict.allowed()).then(|| summarize(kind.name(), &name, &verdict.errors)),
        patch: None,
        warnings: verdict.warnings,
    }
}

/// Decides a mutating review: defaults as a JSON Patch, none when already defaulted.
pub fn mutate(req: &AdmissionRequest) -> Decision {
    let Some(kind) = our_kind(req) else { return Decision::allow() };
    if !matches!(req.operation.as_str(), "CREATE" | "UPDATE") || req.sub_resource.is_some() {
        return Decision::allow();
    }
    let object: Option<Value> = req.object.as_deref().and_then(|raw| serde_json::from_str(raw.get()).ok());
    let Some(object) = object.filter(Value::is_object) else { return Decision::allow() };
    let ops = defaults::patch(kind, &object);
    Decision { allowed: true, patch: (!ops.is_empty()).then_some(ops), ..Decision::default() }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ResponseStatus<'a> {
    code: u16,
    reason: &'static str,
    message: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct AdmissionResponse<'a> {
    uid: &'a str,
    allowed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<ResponseStatus<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch: Option<String>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    warnings: &'a [String],
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ReviewOut<'a> {
    api_version: &'static str,
    kind: &'static str,
    response: AdmissionResponse<'a>,
}

fn respond(uid: &str, d: &Decision) -> Result<Vec<u8>, serde_json::Error> {
    let patch = match &d.patch {
        Some(ops) => Some(base64::engine::general_purpose::STANDARD.encode(serde_json::to_vec(ops)?)),
        None => None,
    };
    let out = ReviewOut {
        api_version: REVIEW_API_VERSION,
        kind: "AdmissionReview",
        response: AdmissionResponse {
            uid,
            allowed: d.allowed,
            status: d.message.as_deref().map(|message| ResponseStatus { code: 422, reason: "Invalid", message }),
            patch_type: patch.as_ref().map(|_| "JSONPatch"),
            patch,
            warnings: &d.warnings,
        },
    };
    serde_json::to_vec(&out)
}

/// Reads a JSON body of at most [`MAX_BODY`] bytes, answering 413/415/400/408 with a `Status`.
pub async fn read_json_body(req: Request) -> Result<bytes::Bytes, Response> {
    let (parts, body) = req.into_parts();
    let content_type = parts.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let mime = content_type.split(';').next().unwrap_or_default().trim();
    if !mime.eq_ignore_ascii_case("application/json") {
        return Err(status_response(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("unsupported content type {content_type:?}: want \"application/json\""),
        ));
    }
    let too_large = || {
        status_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body is larger than the limit of {MAX_BODY} bytes"),
        )
    };
    let declared = parts.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return Err(too_large());
    }
    match tokio::time::timeout(BODY_TIMEOUT, Limited::new(body, MAX_BODY).collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => Err(too_large()),
        Ok(Err(e)) => Err(status_response(StatusCode::BAD_REQUEST, format!("reading request body: {e}"))),
        Err(_) => Err(status_response(StatusCode::REQUEST_TIMEOUT, "timed out reading the request body")),
    }
}

fn parse_review(body: &[u8]) -> Result<AdmissionRequest, String> {
    let review: AdmissionReview =
        serde_json::from_slice(body).map_err(|e| format!("malformed AdmissionReview: {e}"))?;
    if review.api_version != REVIEW_API_VERSION || review.kind != "AdmissionReview" {
        return Err(format!(
            "unsupported review {:?}/{:?}: want apiVersion \"{REVIEW_API_VERSION}\" and kind \"AdmissionReview\"",
            review.api_version, review.kind
        ));
    }
    review.request.ok_or_else(|| "AdmissionReview has no request".to_string())
}

/// Handles one review over HTTP.
pub async fn handle(state: &Admission, webhook: Webhook, req: Request) -> Response {
    let started = Instant::now();
    let count = |kind: &'static str, verdict: &'static str| {
        state.metrics.requests.get_or_create(&AdmissionLabels { webhook: webhook.label(), kind, verdict }).inc();
    };
    let body = match read_json_body(req).await {
        Ok(b) => b,
        Err(resp) => {
            count("-", "error");
            return resp;
        }
    };
    let request = match parse_review(&body) {
        Ok(r) => r,
        Err(message) => {
            count("-", "error");
            return status_response(StatusCode::BAD_REQUEST, message);
        }
    };
    let decision = match webhook {
        Webhook::Validate => validate(&request, &*state.cache.read()),
        Webhook::Mutate => mutate(&request),
    };
    let kind = our_kind(&request).map_or("other", Kind::name);
    if !decision.allowed {
        tracing::info!(
            webhook = webhook.label(),
            kind,
            uid = request.uid,
            message = decision.message.as_deref().unwrap_or_default(),
            "denied"
        );
    }
    let response = match respond(&request.uid, &decision) {
        Ok(bytes) => ([(header::CONTENT_TYPE, "application/json")], bytes).into_response(),
        Err(e) => status_response(StatusCode::INTERNAL_SERVER_ERROR, format!("encoding response: {e}")),
    };
    let labels = AdmissionLabels { webhook: webhook.label(), kind, verdict: decision.verdict() };
    state.metrics.duration.get_or_create(&labels).observe(started.elapsed().as_secs_f64());
    state.metrics.requests.get_or_create(&labels).inc();
    response
}

/// Axum handler for `POST /validate`.
pub async fn validate_handler(State(state): State<Admission>, req: Request) -> Response {
    handle(&state, Webhook::Validate, req).await
}

/// Axum handler for `POST /mutate`.
pub async fn mutate_handler(State(state): State<Admission>, req: Request) -> Response {
    handle(&state, Webhook::Mutate, req).await
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::core::validate::NoCluster;

    fn request(op: &str, object: Value) -> AdmissionRequest {
        let text = json!({
            "uid": "u1", "kind": {"group": "gateway.tailscale.com", "version": "v1alpha1", "kind": object["kind"]},
            "namespace": "default", "operation": op, "object": object
        })
        .to_string();
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn foreign_kinds_and_deletes_are_allowed() {
        let mut r =
            request("CREATE", json!({"kind": "TailscaleServices", "apiVersion": "gateway.tailscale.com/v1alpha1"}));
        r.kind.group = "apps".into();
        assert_eq!(validate(&r, &NoCluster), Decision::allow());
        let d = request("DELETE", json!({"kind": "TailscaleServices"}));
        assert_eq!(validate(&d, &NoCluster), Decision::allow());
        assert_eq!(mutate(&d), Decision::allow());
    }

    #[test]
    fn denial_names_the_field() {
        let r = request(
            "CREATE",
            json!({"apiVersion": "gateway.tailscale.com/v1alpha1", "kind": "TailscaleServices",
            "metadata": {"name": "web"}, "spec": {"selector": {"matchLabels": {"a": "b"}}, "vipService": {"ports": ["http:80"]}}}),
        );
        let d = validate(&r, &NoCluster);
        assert!(!d.allowed);
        let msg = d.message.unwrap_or_default();
        assert!(
            msg.starts_with(
                "TailscaleServices \"web\" is invalid: spec.vipService.ports[0]: Invalid value: \"http:80\""
            ),
            "{msg}"
        );
    }

    #[test]
    fn response_shape() {
        let d = Decision {
            allowed: true,
            patch: Some(defaults::patch(Kind::Gateway, &json!({"metadata": {}}))),
            ..Decision::default()
        };
        let out: Value = serde_json::from_slice(&respond("u1", &d).unwrap_or_default()).unwrap_or_default();
        assert_eq!(out["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(out["response"]["uid"], "u1");
        assert_eq!(out["response"]["patchType"], "JSONPatch");
        let raw = base64::engine::general_purpose::STANDARD
            .decode(out["response"]["patch"].as_str().unwrap_or_default())
            .unwrap_or_default();
        let ops: Value = serde_json::from_slice(&raw).unwrap_or_default();
        assert_eq!(ops[0]["op"], "add");
    }
}

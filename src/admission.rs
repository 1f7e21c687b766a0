//! The admission face: `POST /validate` and `POST /mutate` speaking AdmissionReview
//! `admission.k8s.io/v1`. Parsing and responding live here; the rules are the core's
//! ([`crate::core::validate::review`], [`crate::core::defaults::patch`]) and cross-object checks
//! read the shared cache.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use http::{StatusCode, header};
use http_body_util::BodyExt;
use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::Value;
use serde_json::value::RawValue;

use crate::cache::Cache;
use crate::core::field::summarize;
use crate::core::resource::ParseError;
use crate::core::resource::ValidationSeed;
use crate::core::validate::{ClusterView, review};
use crate::core::{Kind, Resource, defaults, routes};
use crate::metrics::AdmissionMetrics;
use crate::metrics::admission_labels as labels;
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
        labels::WEBHOOKS[self.index()]
    }

    /// Position in `metrics::admission_labels::WEBHOOKS`.
    fn index(self) -> usize {
        match self {
            Webhook::Validate => labels::VALIDATE,
            Webhook::Mutate => labels::MUTATE,
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
    /// When set (`--webhook-client-ca`), reviews are answered only on connections whose client
    /// certificate chains to this CA: kube-apiserver's, configured in its admission
    /// configuration's kubeconfig for our webhooks.
    pub client_ca: Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>,
}

impl Admission {
    /// Admission over `cache`, answering any client that reaches the port.
    pub fn new(cache: Cache, metrics: AdmissionMetrics) -> Self {
        Self { cache, metrics, client_ca: None }
    }

    /// Whether the request may be answered: no client CA configured, or a client certificate
    /// that chains to it (checked with the aggregated API's verifier: one rule for both).
    fn caller_allowed<B>(&self, req: &http::Request<B>) -> bool {
        let Some(ca) = &self.client_ca else { return true };
        req.extensions()
            .get::<crate::server::PeerCerts>()
            .is_some_and(|certs| crate::aggregated::auth::chain_verifies(ca.as_ref(), certs))
    }
}

/// `group/version/kind` of the reviewed object.
#[derive(Debug, Default, Deserialize)]
pub struct GroupVersionKind<'a> {
    /// API group.
    #[serde(default, borrow)]
    pub group: Cow<'a, str>,
    /// Version.
    #[serde(default, borrow)]
    pub version: Cow<'a, str>,
    /// Kind.
    #[serde(default, borrow)]
    pub kind: Cow<'a, str>,
}

/// The request's object (or old object).
#[derive(Debug, Default)]
pub enum Payload<'a> {
    /// Not sent, or `null`.
    #[default]
    Absent,
    /// The JSON text, not parsed yet (a kind we do not own, the mutating webhook, which patches
    /// the JSON as sent, or an object that failed to parse in the review's pass).
    Raw(&'a RawValue),
    /// Parsed into our type in the same pass as the review.
    Parsed(Box<Resource>),
}

/// The part of `AdmissionRequest` we use, borrowed from the request body: strings without
/// escapes and the objects' JSON text are not copied.
#[derive(Debug)]
pub struct AdmissionRequest<'a> {
    /// Echoed in the response.
    pub uid: Cow<'a, str>,
    /// Kind of the object.
    pub kind: GroupVersionKind<'a>,
    /// Subresource (`status`, ...), if any.
    pub sub_resource: Option<Cow<'a, str>>,
    /// Namespace of the request.
    pub namespace: Option<Cow<'a, str>>,
    /// CREATE, UPDATE, DELETE or CONNECT.
    pub operation: Cow<'a, str>,
    /// The object as it would be stored.
    pub object: Payload<'a>,
    /// The stored object (UPDATE, DELETE).
    pub old_object: Payload<'a>,
}

impl AdmissionRequest<'_> {
    /// Our kind, if the request is about one of our objects in the version we serve: the type
    /// its objects are parsed into.
    fn typed_kind(&self) -> Option<Kind> {
        our_kind(self).filter(|_| self.kind.version == crate::api::VERSION)
    }
}

/// A string borrowed from the input when it has no escapes.
#[derive(Deserialize)]
struct Text<'a>(#[serde(borrow)] Cow<'a, str>);

/// Deserializes an `AdmissionRequest`. With `typed`, an object of our kind is parsed straight
/// into its type while the review is read (kube-apiserver sends `kind` before `object`); an
/// object met before its kind, or any object without `typed`, is kept as raw JSON.
#[derive(Clone, Copy)]
struct RequestSeed {
    typed: bool,
}

impl<'de> DeserializeSeed<'de> for RequestSeed {
    type Value = AdmissionRequest<'de>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for RequestSeed {
    type Value = AdmissionRequest<'de>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an AdmissionRequest object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        #[derive(Deserialize)]
        #[serde(field_identifier, rename_all = "camelCase")]
        enum Field {
            Uid,
            Kind,
            SubResource,
            Namespace,
            Operation,
            Object,
            OldObject,
            #[serde(other)]
            Other,
        }
        let mut uid: Option<Cow<'de, str>> = None;
        let mut req = AdmissionRequest {
            uid: Cow::Borrowed(""),
            kind: GroupVersionKind::default(),
            sub_resource: None,
            namespace: None,
            operation: Cow::Borrowed(""),
            object: Payload::Absent,
            old_object: Payload::Absent,
        };
        while let Some(field) = map.next_key::<Field>()? {
            match field {
                Field::Uid => uid = Some(map.next_value::<Text<'de>>()?.0),
                Field::Kind => req.kind = map.next_value()?,
                Field::SubResource => req.sub_resource = map.next_value::<Option<Text<'de>>>()?.map(|t| t.0),
                Field::Namespace => req.namespace = map.next_value::<Option<Text<'de>>>()?.map(|t| t.0),
                Field::Operation => {
                    req.operation = map.next_value::<Option<Text<'de>>>()?.map(|t| t.0).unwrap_or_default()
                }
                Field::Object | Field::OldObject => {
                    let payload = match req.typed_kind().filter(|_| self.typed) {
                        Some(kind) => map.next_value_seed(PayloadSeed(kind))?,
                        None => map.next_value::<Option<&'de RawValue>>()?.map_or(Payload::Absent, Payload::Raw),
                    };
                    if matches!(field, Field::Object) {
                        req.object = payload;
                    } else {
                        req.old_object = payload;
                    }
                }
                Field::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        req.uid = uid.ok_or_else(|| de::Error::missing_field("uid"))?;
        Ok(req)
    }
}

/// An object of a known kind, or `null`.
struct PayloadSeed(Kind);

impl<'de> DeserializeSeed<'de> for PayloadSeed {
    type Value = Payload<'de>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_option(self)
    }
}

impl<'de> Visitor<'de> for PayloadSeed {
    type Value = Payload<'de>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "a {} object or null", self.0)
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Payload::Absent)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Payload::Absent)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        ValidationSeed(self.0).deserialize(d).map(|r| Payload::Parsed(Box::new(r)))
    }
}

/// Deserializes an `AdmissionReview`; see [`RequestSeed`].
struct ReviewSeed {
    typed: bool,
}

/// What [`ReviewSeed`] reads.
struct AdmissionReview<'a> {
    api_version: Cow<'a, str>,
    kind: Cow<'a, str>,
    request: Option<AdmissionRequest<'a>>,
}

impl<'de> Visitor<'de> for ReviewSeed {
    type Value = AdmissionReview<'de>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an AdmissionReview object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        #[derive(Deserialize)]
        #[serde(field_identifier, rename_all = "camelCase")]
        enum Field {
            ApiVersion,
            Kind,
            Request,
            #[serde(other)]
            Other,
        }
        /// `request`, which may be `null`.
        struct OptionalRequest(RequestSeed);
        impl<'de> DeserializeSeed<'de> for OptionalRequest {
            type Value = Option<AdmissionRequest<'de>>;
            fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
                d.deserialize_option(self)
            }
        }
        impl<'de> Visitor<'de> for OptionalRequest {
            type Value = Option<AdmissionRequest<'de>>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an AdmissionRequest object or null")
            }
            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(None)
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(None)
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
                self.0.deserialize(d).map(Some)
            }
        }
        let mut review = AdmissionReview { api_version: Cow::Borrowed(""), kind: Cow::Borrowed(""), request: None };
        while let Some(field) = map.next_key::<Field>()? {
            match field {
                Field::ApiVersion => review.api_version = map.next_value::<Text<'de>>()?.0,
                Field::Kind => review.kind = map.next_value::<Text<'de>>()?.0,
                Field::Request => {
                    review.request = map.next_value_seed(OptionalRequest(RequestSeed { typed: self.typed }))?
                }
                Field::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(review)
    }
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

    /// Position of the verdict (`allowed`, `denied`, `patched`) in `metrics::admission_labels`.
    fn verdict_index(&self) -> usize {
        match (self.allowed, &self.patch) {
            (true, None) => labels::ALLOWED,
            (false, _) => labels::DENIED,
            (true, Some(_)) => labels::PATCHED,
        }
    }
}

/// Our kind, if the request is about one of our objects.
fn our_kind(req: &AdmissionRequest<'_>) -> Option<Kind> {
    (req.kind.group == crate::api::GROUP).then(|| Kind::from_name(&req.kind.kind)).flatten()
}

/// The request's object as our type: parsed in the review's pass already, or parsed now from
/// its raw JSON (naming the failing field), put in the request's namespace as kube-apiserver does.
fn resolve<'r>(payload: &'r Payload<'_>, req: &AdmissionRequest<'_>) -> Option<Result<Cow<'r, Resource>, ParseError>> {
    let raw = match payload {
        Payload::Absent => return None,
        Payload::Parsed(res) => return Some(Ok(Cow::Borrowed(&**res))),
        Payload::Raw(raw) => raw.get(),
    };
    // kube-apiserver sends the object in the version the request names; with one version served,
    // the request's kind decides the type and the object's own apiVersion/kind need no pre-pass.
    let mut res = match req.typed_kind() {
        Some(kind) => Resource::from_json_as(kind, raw),
        None => Resource::from_json(raw),
    };
    if let Ok(r) = &mut res {
        r.default_namespace(req.namespace.as_deref().unwrap_or_default());
    }
    Some(res.map(Cow::Owned))
}

/// `metadata.name` (or `generateName`) of an object kept raw because it does not fit its type,
/// for naming it in the denial.
fn raw_name(payload: &Payload<'_>) -> String {
    #[derive(Deserialize, Default)]
    #[serde(default, rename_all = "camelCase")]
    struct Meta {
        name: Option<String>,
        generate_name: Option<String>,
    }
    #[derive(Deserialize, Default)]
    #[serde(default)]
    struct Named {
        metadata: Meta,
    }
    let Payload::Raw(raw) = payload else { return String::new() };
    let meta = serde_json::from_str::<Named>(raw.get()).unwrap_or_default().metadata;
    meta.name.or(meta.generate_name).unwrap_or_default()
}

/// Decides a validating review. Pure apart from reading `view`.
pub fn validate(req: &AdmissionRequest<'_>, view: &dyn ClusterView) -> Decision {
    let Some(kind) = our_kind(req) else { return validate_route(req) };
    if !matches!(&*req.operation, "CREATE" | "UPDATE") || req.sub_resource.is_some() {
        return Decision::allow();
    }
    let Some(parsed) = resolve(&req.object, req) else {
        return Decision::deny(format!("{kind}: the AdmissionReview request carries no object"));
    };
    let res = match parsed {
        Ok(res) => res,
        Err(ParseError::Invalid(e)) => return Decision::deny(summarize(kind.name(), &raw_name(&req.object), &[e])),
        Err(e @ ParseError::NotOurs { .. }) => return Decision::deny(e.to_string()),
    };
    // Never block an object on its way out (finalizer removal after a rule change).
    if res.meta().deletion_timestamp.is_some() {
        return Decision::allow();
    }
    let old = resolve(&req.old_object, req).and_then(Result::ok);
    let verdict = review(&res, old.as_deref(), view);
    let name = || res.meta().name.as_deref().or(res.meta().generate_name.as_deref()).unwrap_or_default();
    Decision {
        allowed: verdict.allowed(),
        message: (!verdict.allowed()).then(|| summarize(kind.name(), name(), &verdict.errors)),
        patch: None,
        warnings: verdict.warnings,
    }
}

/// Decides a review of another group's object: a Gateway API route whose backends Envoy Gateway
/// would not hand to us is denied when it names our kinds ([`routes::refused_backend_refs`]);
/// everything else is not ours to judge.
fn validate_route(req: &AdmissionRequest<'_>) -> Decision {
    let (Payload::Raw(raw), "CREATE" | "UPDATE", None) = (&req.object, &*req.operation, &req.sub_resource) else {
        return Decision::allow();
    };
    if !routes::UNHANDED_ROUTE_KINDS.contains(&&*req.kind.kind) {
        return Decision::allow();
    }
    let Ok(route) = serde_json::from_str::<Value>(raw.get()) else { return Decision::allow() };
    let api_version = format!("{}/{}", req.kind.group, req.kind.version);
    let errors = routes::refused_backend_refs(&api_version, &req.kind.kind, &route);
    if errors.is_empty() {
        return Decision::allow();
    }
    let name = route.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default();
    Decision::deny(summarize(&req.kind.kind, name, &errors))
}

/// Decides a mutating review: defaults as a JSON Patch, none when already defaulted.
pub fn mutate(req: &AdmissionRequest<'_>) -> Decision {
    let Some(kind) = our_kind(req) else { return Decision::allow() };
    if !matches!(&*req.operation, "CREATE" | "UPDATE") || req.sub_resource.is_some() {
        return Decision::allow();
    }
    let object: Option<Value> = match &req.object {
        Payload::Absent => None,
        Payload::Raw(raw) => serde_json::from_str(raw.get()).ok(),
        Payload::Parsed(res) => res.to_json_value().ok(),
    };
    let Some(object) = object.filter(Value::is_object) else { return Decision::allow() };
    let ops = defaults::patch(kind, &object);
    Decision { allowed: true, patch: (!ops.is_empty()).then_some(ops), ..Decision::default() }
}

/// Encodes the AdmissionReview answering `uid` with `d`. The envelope is constant text written
/// as is; only the strings we carry go through JSON escaping.
pub fn respond(uid: &str, d: &Decision) -> Result<Vec<u8>, serde_json::Error> {
    let patch = match &d.patch {
        Some(ops) => Some(base64::engine::general_purpose::STANDARD.encode(serde_json::to_vec(ops)?)),
        None => None,
    };
    let extra = d.message.as_ref().map_or(0, |m| m.len() + 64)
        + patch.as_ref().map_or(0, |p| p.len() + 32)
        + d.warnings.iter().map(|w| w.len() + 3).sum::<usize>();
    let mut out = Vec::with_capacity(RESPONSE_HEAD.len() + uid.len() + 24 + extra);
    out.extend_from_slice(RESPONSE_HEAD.as_bytes());
    serde_json::to_writer(&mut out, uid)?;
    out.extend_from_slice(if d.allowed { b",\"allowed\":true" } else { b",\"allowed\":false" });
    if let Some(message) = &d.message {
        out.extend_from_slice(br#","status":{"code":422,"reason":"Invalid","message":"#);
        serde_json::to_writer(&mut out, message)?;
        out.push(b'}');
    }
    if let Some(patch) = &patch {
        // The base64 alphabet needs no escaping.
        out.extend_from_slice(br#","patchType":"JSONPatch","patch":""#);
        out.extend_from_slice(patch.as_bytes());
        out.push(b'"');
    }
    if !d.warnings.is_empty() {
        out.extend_from_slice(br#","warnings":"#);
        serde_json::to_writer(&mut out, &d.warnings)?;
    }
    out.extend_from_slice(b"}}");
    Ok(out)
}

/// The start of every response, up to the uid's value.
const RESPONSE_HEAD: &str = r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","response":{"uid":"#;

/// Reads a JSON body of at most [`MAX_BODY`] bytes, answering 413/415/400/408 with a `Status`.
pub async fn read_json_body<B>(req: http::Request<B>) -> Result<bytes::Bytes, Response>
where
    B: hyper::body::Body<Data = bytes::Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    read_json_body_within(req, BODY_TIMEOUT).await
}

async fn read_json_body_within<B>(req: http::Request<B>, body_timeout: Duration) -> Result<bytes::Bytes, Response>
where
    B: hyper::body::Body<Data = bytes::Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (parts, body) = req.into_parts();
    let mut body = std::pin::pin!(body);
    let declared = parts.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let content_type = parts.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let mime = content_type.split(';').next().unwrap_or_default().trim();
    if !mime.eq_ignore_ascii_case("application/json") {
        let refused = status_response(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("unsupported content type {content_type:?}: want \"application/json\""),
        );
        // Read what the client sends anyway (within the limits) before answering: an HTTP/2
        // stream answered mid-upload is reset, and some clients (curl 7.88) then lose the answer.
        if declared.is_none_or(|n| n <= MAX_BODY as u64) {
            drain(body.as_mut(), MAX_BODY as u64, body_timeout).await;
        }
        return Err(refused);
    }
    let too_large = || {
        status_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body is larger than the limit of {MAX_BODY} bytes"),
        )
    };
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return Err(refuse_unread(parts.version, body.as_mut(), declared, too_large(), body_timeout).await);
    }
    let read = {
        let mut read = std::pin::pin!(read_all(body.as_mut(), MAX_BODY));
        // A review's body has usually arrived with its headers: only a body still on its way gets
        // a timer.
        match futures::poll!(read.as_mut()) {
            std::task::Poll::Ready(result) => Ok(result),
            std::task::Poll::Pending => tokio::time::timeout(body_timeout, read).await,
        }
    };
    match read {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(ReadError::TooLarge)) => {
            Err(refuse_unread(parts.version, body.as_mut(), declared, too_large(), body_timeout).await)
        }
        Ok(Err(ReadError::Body(e))) => {
            Err(status_response(StatusCode::BAD_REQUEST, format!("reading request body: {}", e.into())))
        }
        Err(_) => Err(closing(status_response(StatusCode::REQUEST_TIMEOUT, "timed out reading the request body"))),
    }
}

/// The most of a refused HTTP/2 upload that is read (and dropped) so that its answer arrives.
const DRAIN_LIMIT: u64 = 64 * 1024 * 1024;

/// Answers `resp` to a request whose body will not be read. HTTP/1 closes the connection, and says
/// so (`Connection: close`), so the client does not send its next request into a closing socket.
/// HTTP/2 reads and drops the rest of the upload (up to [`DRAIN_LIMIT`], within `within`): a
/// stream answered mid-upload is reset, and clients such as curl then lose the answer.
async fn refuse_unread<B>(
    version: http::Version,
    body: std::pin::Pin<&mut B>,
    declared: Option<u64>,
    resp: Response,
    within: Duration,
) -> Response
where
    B: hyper::body::Body<Data = bytes::Bytes>,
{
    if version != http::Version::HTTP_2 {
        return closing(resp);
    }
    if declared.is_none_or(|n| n <= DRAIN_LIMIT) {
        drain(body, DRAIN_LIMIT, within).await;
    }
    resp
}

/// `resp` with `Connection: close` (HTTP/1: the server closes the connection after it).
fn closing(mut resp: Response) -> Response {
    resp.headers_mut().insert(header::CONNECTION, http::HeaderValue::from_static("close"));
    resp
}

/// Reads and drops a body's frames, up to `limit` bytes and for at most `within`.
async fn drain<B: hyper::body::Body<Data = bytes::Bytes>>(
    mut body: std::pin::Pin<&mut B>,
    limit: u64,
    within: Duration,
) {
    let _ = tokio::time::timeout(within, async {
        let mut seen = 0u64;
        while let Some(Ok(frame)) = body.frame().await {
            seen += frame.data_ref().map_or(0, |d| d.len() as u64);
            if seen > limit {
                break;
            }
        }
    })
    .await;
}

/// Why a body could not be read.
enum ReadError<E> {
    /// Longer than the limit.
    TooLarge,
    /// The body failed.
    Body(E),
}

/// Reads a body's data frames, at most `limit` bytes; a body that comes in one frame is returned as
/// is, not copied.
async fn read_all<B: hyper::body::Body<Data = bytes::Bytes>>(
    mut body: std::pin::Pin<&mut B>,
    limit: usize,
) -> Result<bytes::Bytes, ReadError<B::Error>> {
    let mut first: Option<bytes::Bytes> = None;
    let mut rest: Vec<u8> = Vec::new();
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.map_err(ReadError::Body)?.into_data() else { continue }; // trailers
        seen += data.len();
        if seen > limit {
            return Err(ReadError::TooLarge);
        }
        match &first {
            None => first = Some(data),
            Some(head) => {
                if rest.is_empty() {
                    rest.extend_from_slice(head);
                }
                rest.extend_from_slice(&data);
            }
        }
    }
    Ok(if rest.is_empty() { first.unwrap_or_default() } else { rest.into() })
}

/// Parses an AdmissionReview body, borrowing from it; the error is the message of a 400. With
/// `typed`, an object of our kind is parsed into its type in the same pass (what validation
/// wants); without, objects stay raw JSON (what mutation patches).
pub fn parse_review(body: &[u8], typed: bool) -> Result<AdmissionRequest<'_>, String> {
    let text = std::str::from_utf8(body).map_err(|e| format!("malformed AdmissionReview: {e}"))?;
    let parse = |typed: bool| {
        let mut de = serde_json::Deserializer::from_str(text);
        let review = de.deserialize_map(ReviewSeed { typed })?;
        de.end().map(|()| review)
    };
    // An object that does not fit its type fails the one-pass parse; the review is then read
    // again with the object kept raw, so validation can name the bad field.
    let review = match parse(typed) {
        Err(_) if typed => parse(false),
        other => other,
    }
    .map_err(|e| format!("malformed AdmissionReview: {e}"))?;
    if review.api_version != REVIEW_API_VERSION || review.kind != "AdmissionReview" {
        return Err(format!(
            "unsupported review {:?}/{:?}: want apiVersion \"{REVIEW_API_VERSION}\" and kind \"AdmissionReview\"",
            review.api_version, review.kind
        ));
    }
    let mut request = review.request.ok_or_else(|| "AdmissionReview has no request".to_string())?;
    let AdmissionRequest { namespace, object, old_object, .. } = &mut request;
    for payload in [object, old_object] {
        if let Payload::Parsed(res) = payload {
            res.default_namespace(namespace.as_deref().unwrap_or_default());
        }
    }
    Ok(request)
}

/// Handles one review over HTTP.
pub async fn handle<B>(state: &Admission, webhook: Webhook, req: http::Request<B>) -> Response
where
    B: hyper::body::Body<Data = bytes::Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let started = Instant::now();
    if !state.caller_allowed(&req) {
        state.metrics.observe(webhook.index(), labels::KIND_NONE, labels::ERROR, None);
        let mut resp = status_response(
            StatusCode::UNAUTHORIZED,
            "a client certificate signed by the CA of --webhook-client-ca is required",
        );
        // The body is left unread: the connection cannot be reused.
        resp.headers_mut().insert(http::header::CONNECTION, http::HeaderValue::from_static("close"));
        return resp;
    }
    let body = match read_json_body(req).await {
        Ok(b) => b,
        Err(resp) => {
            state.metrics.observe(webhook.index(), labels::KIND_NONE, labels::ERROR, None);
            return resp;
        }
    };
    let request = match parse_review(&body, webhook == Webhook::Validate) {
        Ok(r) => r,
        Err(message) => {
            state.metrics.observe(webhook.index(), labels::KIND_NONE, labels::ERROR, None);
            return status_response(StatusCode::BAD_REQUEST, message);
        }
    };
    let decision = match webhook {
        Webhook::Validate => validate(&request, &*state.cache.read()),
        Webhook::Mutate => mutate(&request),
    };
    let our = our_kind(&request);
    let kind = our.map_or("other", Kind::name);
    // Each denial is counted in the metrics; the log says at most one a second (a caller could
    // send thousands), with how many it left out.
    static DENIALS: crate::errors::Throttle = crate::errors::Throttle::every(std::time::Duration::from_secs(1));
    if let Some(left_out) = (!decision.allowed).then(|| DENIALS.allow()).flatten() {
        tracing::info!(
            webhook = webhook.label(),
            kind,
            uid = %crate::errors::Clipped(&request.uid),
            reason = %crate::errors::Clipped(decision.message.as_deref().unwrap_or_default()),
            left_out,
            "denied"
        );
    }
    let response = match respond(&request.uid, &decision) {
        Ok(bytes) => ([(header::CONTENT_TYPE, "application/json")], bytes).into_response(),
        Err(e) => status_response(StatusCode::INTERNAL_SERVER_ERROR, format!("encoding response: {e}")),
    };
    let kind_index = our.map_or(labels::KIND_OTHER, |k| k as usize);
    state.metrics.observe(webhook.index(), kind_index, decision.verdict_index(), Some(started.elapsed().as_secs_f64()));
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

    fn review_text(op: &str, group: &str, object: Value) -> &'static [u8] {
        let text = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
            "uid": "u1", "kind": {"group": group, "version": "v1alpha1", "kind": object["kind"]},
            "namespace": "default", "operation": op, "object": object
        }})
        .to_string();
        Box::leak(text.into_boxed_str()).as_bytes()
    }

    /// A request as the validating webhook reads it (objects of our kinds parsed in one pass).
    fn request(op: &str, object: Value) -> AdmissionRequest<'static> {
        parse_review(review_text(op, "gateway.tailscale.com", object), true).expect("parsing the AdmissionReview")
    }

    #[test]
    fn foreign_kinds_and_deletes_are_allowed() {
        let object = json!({"kind": "TailscaleServices", "apiVersion": "gateway.tailscale.com/v1alpha1"});
        let r = parse_review(review_text("CREATE", "apps", object), true)
            .expect("parsing an AdmissionReview of a foreign kind");
        assert!(matches!(r.object, Payload::Raw(_)), "{:?}", r.object);
        assert_eq!(validate(&r, &NoCluster), Decision::allow());
        let d = request("DELETE", json!({"kind": "TailscaleServices"}));
        assert_eq!(validate(&d, &NoCluster), Decision::allow());
        assert_eq!(mutate(&d), Decision::allow());
    }

    #[test]
    fn routes_whose_backends_envoy_gateway_keeps_from_us_may_not_name_our_kinds() {
        let route = |kind: &str, group: &str| {
            json!({"apiVersion": "gateway.networking.k8s.io/v1alpha2", "kind": kind, "metadata": {"name": "db"},
                "spec": {"rules": [{"backendRefs": [{"group": group, "kind": "TailscaleServices", "name": "db", "port": 5432}]}]}})
        };
        let review = |op: &str, object: Value| {
            parse_review(review_text(op, "gateway.networking.k8s.io", object), true).expect("parsing the review")
        };
        let d = validate(&review("CREATE", route("TCPRoute", "gateway.tailscale.com")), &NoCluster);
        assert!(!d.allowed);
        let message = d.message.unwrap_or_default();
        assert!(
            message.starts_with(
                "TCPRoute \"db\" is invalid: spec.rules[0].backendRefs[0]: Forbidden: TailscaleServices \"db\""
            ),
            "{message}"
        );
        assert!(validate(&review("UPDATE", route("UDPRoute", "gateway.tailscale.com")), &NoCluster).message.is_some());
        for allowed in [
            review("CREATE", route("TCPRoute", "")),
            review("CREATE", route("HTTPRoute", "gateway.tailscale.com")),
            review("DELETE", route("TLSRoute", "gateway.tailscale.com")),
        ] {
            assert_eq!(validate(&allowed, &NoCluster), Decision::allow());
        }
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
    fn objects_are_parsed_in_the_reviews_pass_and_defaulted_into_its_namespace() {
        let object = json!({"apiVersion": "gateway.tailscale.com/v1alpha1", "kind": "TailscaleEndpoints",
            "metadata": {"name": "e"}, "spec": {"tailnet": "t"}});
        let r = request("CREATE", object.clone());
        match &r.object {
            Payload::Parsed(res) => assert_eq!(res.meta().namespace.as_deref(), Some("default")),
            other => panic!("{other:?}"),
        }
        // Without `typed` (the mutating webhook), the object stays the JSON that was sent.
        let raw = parse_review(review_text("CREATE", "gateway.tailscale.com", object), false)
            .expect("parsing the AdmissionReview untyped");
        assert!(matches!(raw.object, Payload::Raw(o) if o.get().contains("\"tailnet\":\"t\"")), "{:?}", raw.object);
        // An object sent before its kind is kept raw and parsed when validated.
        let late_kind = br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u2",
            "object":{"apiVersion":"gateway.tailscale.com/v1alpha1","kind":"TailscaleEndpoints","metadata":{"name":"e"},"spec":{"tailnet":"t","proxy":{"replicas":1000}}},
            "kind":{"group":"gateway.tailscale.com","version":"v1alpha1","kind":"TailscaleEndpoints"},"operation":"CREATE","namespace":"ns"}}"#;
        let r = parse_review(late_kind, true).expect("parsing an AdmissionReview whose kind comes after the object");
        assert!(matches!(r.object, Payload::Raw(_)), "{:?}", r.object);
        let d = validate(&r, &NoCluster);
        assert!(!d.allowed && d.message.as_deref().unwrap_or_default().contains("spec.proxy.replicas"), "{d:?}");
    }

    #[test]
    fn an_object_that_does_not_fit_its_type_is_denied_naming_the_field() {
        let object = json!({"apiVersion": "gateway.tailscale.com/v1alpha1", "kind": "TailscaleEndpoints",
            "metadata": {"name": "e"}, "spec": {"tailnet": "t", "proxy": {"replicas": "two"}}});
        let r = request("CREATE", object);
        assert!(matches!(r.object, Payload::Raw(_)), "{:?}", r.object);
        let d = validate(&r, &NoCluster);
        assert!(!d.allowed);
        let msg = d.message.unwrap_or_default();
        assert_eq!(
            msg,
            r#"TailscaleEndpoints "e" is invalid: spec.proxy.replicas: Invalid value: invalid type: string "two", expected an integer"#,
            "named, with no position in JSON the user never wrote and no Rust type"
        );
    }

    #[test]
    fn an_object_on_its_way_out_is_not_blocked() {
        let object = json!({"apiVersion": "gateway.tailscale.com/v1alpha1", "kind": "TailscaleEndpoints",
            "metadata": {"name": "e", "deletionTimestamp": "2026-11-22T07:00:00Z", "finalizers": ["x"],
                "managedFields": [{"manager": "m", "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {}}}]},
            "spec": {"tailnet": "", "proxy": {"replicas": 1000}}});
        let r = request("UPDATE", object);
        assert!(matches!(r.object, Payload::Parsed(_)), "{:?}", r.object);
        assert_eq!(validate(&r, &NoCluster), Decision::allow());
    }

    #[test]
    fn malformed_reviews_are_errors() {
        let cases: [(&[u8], &str); 5] = [
            (b"{", "malformed AdmissionReview"),
            (b"\xff", "malformed AdmissionReview"),
            (
                br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"kind":{}}}"#,
                "missing field `uid`",
            ),
            (br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":null}"#, "has no request"),
            (
                br#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":{"uid":"u"}}"#,
                "unsupported review",
            ),
        ];
        for (body, want) in cases {
            match parse_review(body, true) {
                Err(e) => assert!(e.contains(want), "{e} does not contain {want}"),
                Ok(r) => panic!("{r:?}"),
            }
        }
    }

    #[tokio::test]
    async fn bodies_are_read_whole_whatever_their_framing() {
        use http_body_util::StreamBody;
        let frames = |parts: &[&'static str]| {
            let frames: Vec<Result<hyper::body::Frame<bytes::Bytes>, std::convert::Infallible>> =
                parts.iter().map(|p| Ok(hyper::body::Frame::data(bytes::Bytes::from_static(p.as_bytes())))).collect();
            StreamBody::new(futures::stream::iter(frames))
        };
        for parts in [&[][..], &["{}"], &["", "{", "", "}"], &["{\"a\":", "1", "}"]] {
            let got = read_all(std::pin::pin!(frames(parts)), MAX_BODY).await.unwrap_or_default();
            assert_eq!(got, parts.concat().as_bytes(), "{parts:?}");
        }
        let one = bytes::Bytes::from_static(b"{\"one\":1}");
        let got = read_all(std::pin::pin!(http_body_util::Full::new(one.clone())), MAX_BODY).await.unwrap_or_default();
        assert_eq!(got.as_ptr(), one.as_ptr(), "a one-frame body is not copied");
    }

    #[tokio::test]
    async fn a_refused_content_type_still_reads_the_upload_unless_it_is_too_large() {
        use futures::StreamExt;
        use std::sync::Arc;
        use std::sync::atomic::{AtomicUsize, Ordering};
        let run = |content_length: Option<String>| async move {
            let read = Arc::new(AtomicUsize::new(0));
            let counter = read.clone();
            let frames = futures::stream::iter(["{", "\"a\":1", "}"]).map(move |p| {
                counter.fetch_add(1, Ordering::SeqCst);
                Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(bytes::Bytes::from_static(p.as_bytes())))
            });
            let mut req = http::Request::builder().header(header::CONTENT_TYPE, "text/plain");
            if let Some(n) = content_length {
                req = req.header(header::CONTENT_LENGTH, n);
            }
            let req = req.body(http_body_util::StreamBody::new(frames)).expect("building the request");
            let status = match read_json_body_within(req, Duration::from_secs(5)).await {
                Err(resp) => resp.status(),
                Ok(_) => StatusCode::OK,
            };
            (status, read.load(Ordering::SeqCst))
        };
        assert_eq!(run(None).await, (StatusCode::UNSUPPORTED_MEDIA_TYPE, 3), "read to the end, then refused");
        assert_eq!(run(Some("7".into())).await, (StatusCode::UNSUPPORTED_MEDIA_TYPE, 3));
        let huge = (MAX_BODY + 1).to_string();
        assert_eq!(run(Some(huge)).await, (StatusCode::UNSUPPORTED_MEDIA_TYPE, 0), "too large to be worth reading");
    }

    #[tokio::test]
    async fn a_body_that_stops_coming_times_out() {
        let stalled = http_body_util::StreamBody::new(futures::stream::pending::<
            Result<hyper::body::Frame<bytes::Bytes>, std::convert::Infallible>,
        >());
        let req = http::Request::builder()
            .header(header::CONTENT_TYPE, "application/json")
            .body(stalled)
            .expect("building the stalled request");
        match read_json_body_within(req, Duration::from_millis(50)).await {
            Err(resp) => assert_eq!(resp.status(), StatusCode::REQUEST_TIMEOUT),
            Ok(body) => panic!("{body:?}"),
        }
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

    #[test]
    fn responses_are_json_whatever_the_strings_carry() {
        let denied = Decision {
            allowed: false,
            message: Some("spec.vipService.ports[1]: Invalid value: \"http:80\"\n\\ \u{1}".into()),
            warnings: vec!["a \"quoted\" warning".into(), "second".into()],
            ..Decision::default()
        };
        let uid = "odd \"uid\" \\";
        let out: Value = serde_json::from_slice(&respond(uid, &denied).unwrap_or_default()).unwrap_or_default();
        assert_eq!(
            out,
            json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": {
                "uid": uid, "allowed": false,
                "status": {"code": 422, "reason": "Invalid", "message": denied.message},
                "warnings": denied.warnings}})
        );
        let allowed: Value =
            serde_json::from_slice(&respond("u2", &Decision::allow()).unwrap_or_default()).unwrap_or_default();
        assert_eq!(
            allowed,
            json!({"apiVersion": REVIEW_API_VERSION, "kind": "AdmissionReview", "response": {"uid": "u2", "allowed": true}})
        );
    }
}

//! The aggregated API face: group `tailnet.gateway.tailscale.com/v1alpha1`, read-only
//! `tailscaledevices` and `selectedendpoints`, served from the shared cache on the HTTPS server.
//! In a cluster kube-apiserver proxies to it through an APIService; in local mode kubectl talks
//! to it directly, so it also answers the discovery, OpenAPI and `/version` requests kubectl
//! makes, and serves our four CRD kinds (`gateway.tailscale.com/v1alpha1`) read-only from the
//! same cache, which in a cluster kube-apiserver serves itself.
//!
//! This module only parses, checks access, and responds; what the objects, tables, selectors and
//! documents look like is in the pure submodules.

pub mod auth;
pub mod columns;
pub mod crd;
pub mod discovery;
pub mod openapi_proto;
pub mod render;
pub mod request;
pub mod resources;
pub mod watch;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Query, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use http::{HeaderValue, Method, StatusCode, header};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use self::auth::{Attributes, Auth, ResourceRequest};
use self::request::{ApiGroup, Format, KindFn, ListOptions, Target, negotiate, verb};
use self::resources::View;
use crate::cache::Cache;
use crate::core::ObjectKey;
use crate::metrics::AggregatedMetrics;
use crate::server::PeerCerts;
use crate::server::status::status_response;

/// How often watchers that allow bookmarks get one.
pub const DEFAULT_BOOKMARK_EVERY: Duration = Duration::from_secs(30);

/// Everything the handlers share.
#[derive(Clone)]
pub struct AggregatedApi {
    cache: Cache,
    auth: Auth,
    /// Whether the CRD group is served too (local mode).
    crds: bool,
    docs: Arc<Docs>,
    bookmark_every: Duration,
    stop: CancellationToken,
    metrics: AggregatedMetrics,
}

/// Discovery and OpenAPI documents of one group.
struct GroupDocs {
    group: ApiGroup,
    api_group: Vec<u8>,
    resources: Vec<u8>,
    openapi_v3: Vec<u8>,
    openapi_v3_hash: String,
}

/// Pre-serialized discovery and OpenAPI documents (they never change while running).
struct Docs {
    api: Vec<u8>,
    group_list: Vec<u8>,
    groups: Vec<GroupDocs>,
    openapi_v2: Vec<u8>,
    openapi_v2_protobuf: Vec<u8>,
    openapi_v3_root: Vec<u8>,
}

fn bytes(v: impl serde::Serialize) -> Vec<u8> {
    serde_json::to_vec(&v).unwrap_or_default()
}

impl Docs {
    fn build(groups: &[ApiGroup]) -> Self {
        let groups_docs: Vec<GroupDocs> = groups
            .iter()
            .map(|&group| {
                let openapi_v3 = bytes(discovery::openapi_v3_group_version(group));
                GroupDocs {
                    group,
                    api_group: bytes(discovery::api_group(group)),
                    resources: bytes(discovery::api_resource_list(group)),
                    openapi_v3_hash: discovery::content_hash(&openapi_v3),
                    openapi_v3,
                }
            })
            .collect();
        let hashes: Vec<(ApiGroup, String)> =
            groups_docs.iter().map(|g| (g.group, g.openapi_v3_hash.clone())).collect();
        let openapi_v2 = discovery::openapi_v2(groups);
        Docs {
            api: bytes(discovery::api_versions()),
            group_list: bytes(discovery::api_group_list(groups)),
            groups: groups_docs,
            openapi_v2_protobuf: openapi_proto::encode(&openapi_v2),
            openapi_v2: bytes(openapi_v2),
            openapi_v3_root: bytes(discovery::openapi_v3_root(&hashes)),
        }
    }

    fn of(&self, group: ApiGroup) -> Option<&GroupDocs> {
        self.groups.iter().find(|g| g.group == group)
    }
}

impl AggregatedApi {
    /// Serves `cache` with `auth`; watches end when `stop` is cancelled.
    pub fn new(cache: Cache, auth: Auth, stop: CancellationToken) -> Self {
        Self {
            cache,
            auth,
            crds: false,
            docs: Arc::new(Docs::build(&[ApiGroup::Tailnet])),
            bookmark_every: DEFAULT_BOOKMARK_EVERY,
            stop,
            metrics: AggregatedMetrics::default(),
        }
    }

    /// Counts requests and open watches into `metrics` (registered by the caller).
    pub fn with_metrics(mut self, metrics: AggregatedMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Serves our four CRD kinds too (group `gateway.tailscale.com`), read-only from the cache:
    /// local mode, where no kube-apiserver serves them. Changes of those kinds are logged from
    /// now on, for their watchers.
    pub fn with_crds(mut self) -> Self {
        self.cache.log_resource_events();
        self.crds = true;
        self.docs = Arc::new(Docs::build(&[ApiGroup::Tailnet, ApiGroup::Crds]));
        self
    }

    /// Overrides the bookmark interval (tests).
    pub fn with_bookmark_interval(mut self, every: Duration) -> Self {
        self.bookmark_every = every;
        self
    }
}

/// The aggregated API routes, to merge into the HTTPS router.
pub fn router(api: AggregatedApi) -> Router {
    Router::new()
        .route("/api", any(dispatch))
        .route("/api/{*rest}", any(dispatch))
        .route("/apis", any(dispatch))
        .route("/apis/{*rest}", any(dispatch))
        .route("/openapi/v2", any(dispatch))
        .route("/openapi/v3", any(dispatch))
        .route("/openapi/v3/{*rest}", any(dispatch))
        .route("/version", any(dispatch))
        .with_state(api)
}

fn json_response(body: Vec<u8>) -> Response {
    let mut resp = Body::from(body).into_response();
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

fn not_found() -> Response {
    status_response(StatusCode::NOT_FOUND, "the server could not find the requested resource")
}

fn method_not_allowed(group: ApiGroup) -> Response {
    let hint = match group {
        ApiGroup::Tailnet => "",
        ApiGroup::Crds => " here (local mode serves the manifests' objects: edit the files instead)",
    };
    let mut resp = status_response(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("the server does not allow this method on the requested resource: {} is read-only{hint}", group.name()),
    );
    resp.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
    resp
}

fn attributes(target: &Target, verb: String, path: &str) -> Attributes {
    let resource = match target {
        Target::Collection { resource, namespace, .. } => Some(ResourceRequest {
            namespace: namespace.clone().unwrap_or_default(),
            resource: resource.clone(),
            name: String::new(),
            subresource: String::new(),
        }),
        Target::Object { resource, namespace, name, subresource, .. } => Some(ResourceRequest {
            namespace: namespace.clone(),
            resource: resource.clone(),
            name: name.clone(),
            subresource: subresource.clone().unwrap_or_default(),
        }),
        _ => None,
    };
    Attributes { verb, resource, path: path.to_string() }
}

/// The `resource` label of a request: one of ours, or `-`.
fn resource_label(target: &Target) -> &'static str {
    match target {
        Target::Collection { group, resource, .. } | Target::Object { group, resource, .. } => {
            Target::kind_of(*group, resource).map_or("-", |k| k.info().plural.as_str())
        }
        _ => "-",
    }
}

async fn dispatch(State(api): State<AggregatedApi>, req: Request) -> Response {
    let started = std::time::Instant::now();
    let (parts, _body) = req.into_parts();
    let path = parts.uri.path().to_string();
    let target = Target::parse(&path, api.crds);
    let query: Vec<(String, String)> =
        Query::<Vec<(String, String)>>::try_from_uri(&parts.uri).map(|q| q.0).unwrap_or_default();
    let watch = query.iter().any(|(k, v)| k == "watch" && matches!(v.as_str(), "true" | "1" | "True"));
    let attrs = attributes(&target, verb(&parts.method, &target, watch), &path);
    let (verb, resource) = (AggregatedMetrics::verb_label(&attrs.verb), resource_label(&target));
    let resp = answer(&api, parts, target, query, attrs).await;
    api.metrics.observe(verb, resource, resp.status().as_u16(), started.elapsed().as_secs_f64());
    resp
}

async fn answer(
    api: &AggregatedApi,
    parts: http::request::Parts,
    target: Target,
    query: Vec<(String, String)>,
    attrs: Attributes,
) -> Response {
    let path = &attrs.path;
    let certs = parts.extensions.get::<PeerCerts>().cloned().unwrap_or_default();
    let user = match api.auth.check(&certs, &parts.headers, &attrs).await {
        Ok(user) => user,
        Err(e) => {
            let code = e.status();
            // Anyone who reaches the port can cause this: at most one line a second.
            static REFUSED: crate::errors::Throttle = crate::errors::Throttle::every(std::time::Duration::from_secs(1));
            if let Some(left_out) = REFUSED.allow() {
                let path = crate::errors::Clipped(path);
                let error = e.to_string();
                let error = crate::errors::Clipped(&error);
                tracing::info!(%path, verb = %attrs.verb, status = code.as_u16(), %error, left_out, "aggregated API request refused");
            }
            return status_response(code, e.to_string());
        }
    };
    tracing::debug!(path, verb = %attrs.verb, user = %user.username, "aggregated API request");
    let read = matches!(parts.method, Method::GET | Method::HEAD);
    let accept = parts.headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let docs = &api.docs;
    let doc = |bytes: &Vec<u8>, group| if read { json_response(bytes.clone()) } else { method_not_allowed(group) };
    match &target {
        Target::LegacyApi => doc(&docs.api, ApiGroup::Tailnet),
        Target::GroupList => doc(&docs.group_list, ApiGroup::Tailnet),
        Target::Group(g) => docs.of(*g).map_or_else(not_found, |d| doc(&d.api_group, *g)),
        Target::GroupVersion(g) => docs.of(*g).map_or_else(not_found, |d| doc(&d.resources, *g)),
        Target::Version => {
            let agent = parts.headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok());
            doc(&bytes(discovery::version_info(agent)), ApiGroup::Tailnet)
        }
        Target::OpenApiV2 => {
            let mut resp = if read && openapi_proto::wants_protobuf(accept) {
                let mut resp = Body::from(docs.openapi_v2_protobuf.clone()).into_response();
                resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(openapi_proto::PROTOBUF));
                resp
            } else {
                doc(&docs.openapi_v2, ApiGroup::Tailnet)
            };
            resp.headers_mut().insert(header::VARY, HeaderValue::from_static("Accept"));
            resp
        }
        Target::OpenApiV3 => doc(&docs.openapi_v3_root, ApiGroup::Tailnet),
        Target::OpenApiV3GroupVersion(g) => {
            let Some(d) = docs.of(*g) else { return not_found() };
            let mut resp = doc(&d.openapi_v3, *g);
            if let Ok(etag) = HeaderValue::from_str(&format!("\"{}\"", d.openapi_v3_hash)) {
                resp.headers_mut().insert(header::ETAG, etag);
            }
            resp
        }
        Target::NotFound => not_found(),
        Target::Collection { group, resource, .. } | Target::Object { group, resource, .. } => {
            let Some(kind) = Target::kind_of(*group, resource) else { return not_found() };
            kind.with(Serve { api, group: *group, target: &target, query: &query, accept, read })
        }
    }
}

/// A resource request, once its kind is known.
struct Serve<'a> {
    api: &'a AggregatedApi,
    group: ApiGroup,
    target: &'a Target,
    query: &'a [(String, String)],
    accept: Option<&'a str>,
    read: bool,
}

impl KindFn for Serve<'_> {
    type Out = Response;

    fn call<T: View>(self) -> Response {
        let namespaced = T::info().namespaced;
        match self.target {
            // A cluster-scoped kind has no namespaced paths, and the other way round.
            Target::Collection { namespace: Some(_), .. } if !namespaced => not_found(),
            Target::Object { namespace, subresource, .. }
                if subresource.is_some() || namespace.is_empty() == namespaced =>
            {
                not_found()
            }
            _ if !self.read => method_not_allowed(self.group),
            Target::Collection { namespace, .. } => {
                collection::<T>(self.api, namespace.clone(), self.query, self.accept)
            }
            Target::Object { namespace, name, .. } => {
                object::<T>(self.api, &ObjectKey::new(namespace.clone(), name.clone()), self.query, self.accept)
            }
            _ => not_found(),
        }
    }
}

/// Reads list options and the representation; the error is the status to answer with.
fn options<T: View>(
    query: &[(String, String)],
    accept: Option<&str>,
) -> Result<(ListOptions, Format), (StatusCode, String)> {
    let opts = ListOptions::from_query(query).map_err(|m| (StatusCode::BAD_REQUEST, m))?;
    opts.fields.check::<T>().map_err(|m| (StatusCode::BAD_REQUEST, m))?;
    let format = negotiate(accept).map_err(|e| (StatusCode::NOT_ACCEPTABLE, e.to_string()))?;
    Ok((opts, format))
}

fn collection<T: View>(
    api: &AggregatedApi,
    namespace: Option<String>,
    query: &[(String, String)],
    accept: Option<&str>,
) -> Response {
    let (opts, format) = match options::<T>(query, accept) {
        Ok(o) => o,
        Err((code, message)) => return status_response(code, message),
    };
    if opts.watch {
        let spec =
            watch::WatchSpec { namespace, opts, format, bookmark_every: api.bookmark_every, stop: api.stop.clone() };
        return match watch::start::<T>(&api.cache, spec) {
            Ok(rx) => {
                // Counted as open for as long as the response body lives.
                let open = api.metrics.watch_opened(T::info().plural.as_str());
                let events = ReceiverStream::new(rx).map(move |event| {
                    let _open = &open;
                    event
                });
                let mut resp = Body::from_stream(events).into_response();
                resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
                resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache, private"));
                resp
            }
            Err(e) => status_response(e.status(), e.to_string()),
        };
    }
    let (snapshot, revision) = {
        let index = api.cache.read();
        (T::list(&index, namespace.as_deref()), index.revision())
    };
    let page = render::select_page(snapshot, &opts);
    json_response(render::list_body(&page, revision, format, opts.include, jiff::Timestamp::now()))
}

fn object<T: View>(api: &AggregatedApi, key: &ObjectKey, query: &[(String, String)], accept: Option<&str>) -> Response {
    let (opts, format) = match options::<T>(query, accept) {
        Ok(o) => o,
        Err((code, message)) => return status_response(code, message),
    };
    let found = T::get(&api.cache.read(), key);
    match found {
        Some(s) => json_response(render::object_body(&s, format, opts.include, jiff::Timestamp::now())),
        None => {
            let info = T::info();
            let body_message = format!("{}.{} \"{}\" not found", info.plural, info.group, key.name);
            let mut body = crate::server::status::status_body(StatusCode::NOT_FOUND, &body_message);
            body["details"] = serde_json::json!({"name": key.name, "group": info.group, "kind": info.plural});
            let mut resp = (StatusCode::NOT_FOUND, body.to_string()).into_response();
            resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            resp
        }
    }
}

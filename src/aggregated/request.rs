//! Reading a request the way kube-apiserver does, as plain functions: which resource a path
//! names (also what authorization is asked about), the verb, list and watch options from the
//! query, field selectors, continue tokens and content negotiation from `Accept`.

use std::time::Duration;

use base64::Engine;
use http::Method;

use super::resources::{GROUP, VERSION, View};
use crate::core::ObjectKey;
use crate::core::selector::Selector;

/// An API group this server answers for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApiGroup {
    /// `tailnet.gateway.tailscale.com`: the aggregated views, always.
    Tailnet,
    /// `gateway.tailscale.com`: our CRD kinds, in local mode only (in a cluster kube-apiserver
    /// serves them and proxies only the tailnet group to us).
    Crds,
}

impl ApiGroup {
    /// Group name.
    pub fn name(self) -> &'static str {
        match self {
            ApiGroup::Tailnet => GROUP,
            ApiGroup::Crds => crate::api::GROUP,
        }
    }

    /// The one version served.
    pub fn version(self) -> &'static str {
        match self {
            ApiGroup::Tailnet => VERSION,
            ApiGroup::Crds => crate::api::VERSION,
        }
    }

    /// `group/version`.
    pub fn group_version(self) -> &'static str {
        match self {
            ApiGroup::Tailnet => super::resources::GROUP_VERSION,
            ApiGroup::Crds => crate::api::API_VERSION,
        }
    }

    /// The kinds of the group.
    pub fn kinds(self) -> impl Iterator<Item = ResourceKind> {
        ResourceKind::ALL.into_iter().filter(move |k| k.group() == self)
    }
}

/// Every kind served, by resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResourceKind {
    /// `tailscaledevices`.
    Devices,
    /// `selectedendpoints`.
    Selections,
    /// `tailscaletailnets` (local mode).
    Tailnets,
    /// `tailscaleendpoints` (local mode).
    Endpoints,
    /// `tailscaleservices` (local mode).
    Services,
    /// `tailscalegateways` (local mode).
    Gateways,
    /// `tailscaleroutepolicies` (local mode).
    RoutePolicies,
}

/// Something done with a kind's [`View`] type: how a handler written once over `T: View` is
/// called for a [`ResourceKind`] known only at run time.
pub trait KindFn {
    /// What it gives.
    type Out;
    /// Does it for `T`.
    fn call<T: View>(self) -> Self::Out;
}

struct InfoOf;

impl KindFn for InfoOf {
    type Out = &'static super::resources::KindInfo;
    fn call<T: View>(self) -> Self::Out {
        T::info()
    }
}

impl ResourceKind {
    /// Every kind, the aggregated views first.
    pub const ALL: [ResourceKind; 7] = [
        ResourceKind::Devices,
        ResourceKind::Selections,
        ResourceKind::Tailnets,
        ResourceKind::Endpoints,
        ResourceKind::Services,
        ResourceKind::Gateways,
        ResourceKind::RoutePolicies,
    ];

    /// Calls `f` with the kind's [`View`] type.
    pub fn with<F: KindFn>(self, f: F) -> F::Out {
        use crate::api::{
            TailscaleEndpoints, TailscaleGateway, TailscaleRoutePolicy, TailscaleServices, TailscaleTailnet,
        };
        use crate::core::views::{Device, Selection};
        match self {
            ResourceKind::Devices => f.call::<Device>(),
            ResourceKind::Selections => f.call::<Selection>(),
            ResourceKind::Tailnets => f.call::<TailscaleTailnet>(),
            ResourceKind::Endpoints => f.call::<TailscaleEndpoints>(),
            ResourceKind::Services => f.call::<TailscaleServices>(),
            ResourceKind::Gateways => f.call::<TailscaleGateway>(),
            ResourceKind::RoutePolicies => f.call::<TailscaleRoutePolicy>(),
        }
    }

    /// Names, scope and columns of the kind.
    pub fn info(self) -> &'static super::resources::KindInfo {
        self.with(InfoOf)
    }

    /// The group the kind belongs to.
    pub fn group(self) -> ApiGroup {
        match self {
            ResourceKind::Devices | ResourceKind::Selections => ApiGroup::Tailnet,
            _ => ApiGroup::Crds,
        }
    }
}

/// What a request path names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// `/api`: the legacy core group, which we do not serve (empty version list).
    LegacyApi,
    /// `/apis`.
    GroupList,
    /// `/apis/<one of our groups>`.
    Group(ApiGroup),
    /// `/apis/<group>/<version>`: resource discovery and the aggregator's probe.
    GroupVersion(ApiGroup),
    /// A resource collection, in one namespace or all.
    Collection {
        /// The group of the path.
        group: ApiGroup,
        /// Resource name as written in the URL (may be unknown).
        resource: String,
        /// Namespace, or `None` for all namespaces.
        namespace: Option<String>,
    },
    /// One object.
    Object {
        /// The group of the path.
        group: ApiGroup,
        /// Resource name as written in the URL (may be unknown).
        resource: String,
        /// Namespace; empty when the path had none.
        namespace: String,
        /// Object name.
        name: String,
        /// Subresource, if any (none are served).
        subresource: Option<String>,
    },
    /// `/openapi/v2`.
    OpenApiV2,
    /// `/openapi/v3`.
    OpenApiV3,
    /// `/openapi/v3/apis/<group>/<version>`.
    OpenApiV3GroupVersion(ApiGroup),
    /// `/version`.
    Version,
    /// Anything else.
    NotFound,
}

impl Target {
    /// Reads a URL path; the CRD group is known only when `crds` (local mode).
    pub fn parse(path: &str, crds: bool) -> Target {
        let segs: Vec<&str> = path.trim_matches('/').split('/').filter(|s| !s.is_empty()).collect();
        let group = |g: &str| {
            [ApiGroup::Tailnet, ApiGroup::Crds].into_iter().find(|a| a.name() == g && (crds || *a == ApiGroup::Tailnet))
        };
        let version = |g: &str, v: &str| group(g).filter(|a| a.version() == v);
        match segs.as_slice() {
            ["api"] => Target::LegacyApi,
            ["apis"] => Target::GroupList,
            ["version"] => Target::Version,
            ["apis", g] => group(g).map_or(Target::NotFound, Target::Group),
            ["apis", g, v] => version(g, v).map_or(Target::NotFound, Target::GroupVersion),
            ["apis", g, v, rest @ ..] => version(g, v).map_or(Target::NotFound, |a| Self::resource_path(a, rest)),
            ["openapi", "v2"] => Target::OpenApiV2,
            ["openapi", "v3"] => Target::OpenApiV3,
            ["openapi", "v3", "apis", g, v] => version(g, v).map_or(Target::NotFound, Target::OpenApiV3GroupVersion),
            _ => Target::NotFound,
        }
    }

    fn resource_path(group: ApiGroup, rest: &[&str]) -> Target {
        let s = |x: &&str| x.to_string();
        let object = |ns: &str, resource, name, subresource| Target::Object {
            group,
            resource,
            namespace: ns.to_string(),
            name,
            subresource,
        };
        match rest {
            ["namespaces", ns, resource] => Target::Collection { group, resource: s(resource), namespace: Some(s(ns)) },
            ["namespaces", ns, resource, name] => object(ns, s(resource), s(name), None),
            ["namespaces", ns, resource, name, sub] => object(ns, s(resource), s(name), Some(s(sub))),
            [resource] => Target::Collection { group, resource: s(resource), namespace: None },
            [resource, name] => object("", s(resource), s(name), None),
            [resource, name, sub] => object("", s(resource), s(name), Some(s(sub))),
            _ => Target::NotFound,
        }
    }

    /// The served kind a resource name of `group` means (plural only, as kube-apiserver).
    pub fn kind_of(group: ApiGroup, resource: &str) -> Option<ResourceKind> {
        group.kinds().find(|k| k.info().plural == resource)
    }
}

/// The Kubernetes verb of a request, as authorization sees it.
pub fn verb(method: &Method, target: &Target, watch: bool) -> String {
    let resource_verb = |collection: bool| match *method {
        Method::GET | Method::HEAD if collection && watch => "watch",
        Method::GET | Method::HEAD if collection => "list",
        Method::GET | Method::HEAD => "get",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE if collection => "deletecollection",
        Method::DELETE => "delete",
        _ => "",
    };
    let v = match target {
        Target::Collection { .. } => resource_verb(true),
        Target::Object { .. } => resource_verb(false),
        _ => "",
    };
    if v.is_empty() { method.as_str().to_ascii_lowercase() } else { v.to_string() }
}

/// One `fieldSelector` term.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldRequirement {
    /// Field path (`status.online`).
    pub field: String,
    /// Value compared with.
    pub value: String,
    /// `=`/`==` when true, `!=` when false.
    pub equals: bool,
}

/// A parsed `fieldSelector`: every term must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldSelector(pub Vec<FieldRequirement>);

/// Splits on unescaped `sep`, keeping escapes for the next stage.
fn split_unescaped(s: &str, sep: char) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut escaped = false;
    for c in s.chars() {
        if escaped {
            if let Some(last) = out.last_mut() {
                last.push('\\');
                last.push(c);
            }
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == sep {
            out.push(String::new());
        } else if let Some(last) = out.last_mut() {
            last.push(c);
        }
    }
    out
}

fn unescape(s: &str) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some(e @ ('\\' | ',' | '=' | '!')) => out.push(e),
                Some(e) => return Err(format!("invalid escape sequence \\{e} in field selector")),
                None => return Err("field selector ends with an unfinished escape".into()),
            }
        } else {
            out.push(c);
        }
    }
    Ok(out)
}

impl FieldSelector {
    /// Parses `a=b,c!=d` (with `\` escapes, as kube-apiserver accepts).
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut reqs = Vec::new();
        for term in split_unescaped(s, ',') {
            if term.trim().is_empty() {
                continue;
            }
            // Find the first unescaped operator.
            let bytes: Vec<char> = term.chars().collect();
            let mut i = 0;
            let mut found = None;
            while i < bytes.len() {
                match bytes[i] {
                    '\\' => i += 2,
                    '!' if bytes.get(i + 1) == Some(&'=') => {
                        found = Some((i, 2, false));
                        break;
                    }
                    '=' if bytes.get(i + 1) == Some(&'=') => {
                        found = Some((i, 2, true));
                        break;
                    }
                    '=' => {
                        found = Some((i, 1, true));
                        break;
                    }
                    _ => i += 1,
                }
            }
            let Some((at, len, equals)) = found else {
                return Err(format!("invalid field selector term {term:?}: want field=value or field!=value"));
            };
            let field: String = bytes[..at].iter().collect();
            let value: String = bytes[at + len..].iter().collect();
            reqs.push(FieldRequirement { field: unescape(field.trim())?, value: unescape(value.trim())?, equals });
        }
        Ok(Self(reqs))
    }

    /// Fails with kube-apiserver's message when a term names a field `T` does not support.
    pub fn check<T: View>(&self) -> Result<(), String> {
        let fields = T::info().fields;
        for r in &self.0 {
            let supported =
                r.field == "metadata.name" || r.field == "metadata.namespace" || fields.contains(&r.field.as_str());
            if !supported {
                let all = ["metadata.name", "metadata.namespace"].iter().chain(fields).copied().collect::<Vec<_>>();
                return Err(format!("field label not supported: {} (supported: {})", r.field, all.join(", ")));
            }
        }
        Ok(())
    }

    /// Whether `object` satisfies every term (unsupported fields never match).
    pub fn matches<T: View>(&self, object: &T) -> bool {
        self.0.iter().all(|r| match object.field_value(&r.field) {
            Some(v) => (v == r.value) == r.equals,
            None => false,
        })
    }

    /// Whether there is no term.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// List and watch options from the query string.
#[derive(Clone, Debug, Default)]
pub struct ListOptions {
    /// `labelSelector`.
    pub labels: Selector,
    /// `fieldSelector`.
    pub fields: FieldSelector,
    /// `limit` (0 = none).
    pub limit: usize,
    /// `continue`: the last key of the previous page.
    pub continue_after: Option<ObjectKey>,
    /// `watch=true`.
    pub watch: bool,
    /// `resourceVersion`.
    pub resource_version: Option<String>,
    /// `allowWatchBookmarks=true`.
    pub allow_bookmarks: bool,
    /// `sendInitialEvents=true`.
    pub send_initial_events: bool,
    /// `timeoutSeconds`.
    pub timeout: Option<Duration>,
    /// `includeObject` for Tables.
    pub include: IncludeObject,
}

/// The longest a watch lasts: a larger `timeoutSeconds` is clamped to it, and a watch that names
/// none ends then too (kube-apiserver ends watches after 30 to 60 minutes by default); clients
/// reconnect from their last resourceVersion.
pub const MAX_WATCH: Duration = Duration::from_secs(3600);

fn truthy(v: &str) -> bool {
    matches!(v, "true" | "1" | "True")
}

impl ListOptions {
    /// Reads the options from query pairs; the error is a message for a 400.
    pub fn from_query(pairs: &[(String, String)]) -> Result<Self, String> {
        let mut o = ListOptions::default();
        for (k, v) in pairs {
            match k.as_str() {
                "labelSelector" => {
                    o.labels = Selector::parse(v).map_err(|e| format!("unable to parse labelSelector: {e}"))?
                }
                "fieldSelector" => {
                    o.fields = FieldSelector::parse(v).map_err(|e| format!("unable to parse fieldSelector: {e}"))?
                }
                "limit" => {
                    o.limit = v.parse::<i64>().map_err(|_| format!("limit: invalid value {v:?}"))?.max(0) as usize
                }
                "continue" if !v.is_empty() => o.continue_after = Some(decode_continue(v)?),
                "watch" => o.watch = truthy(v),
                "resourceVersion" if !v.is_empty() => o.resource_version = Some(v.clone()),
                "allowWatchBookmarks" => o.allow_bookmarks = truthy(v),
                "sendInitialEvents" => o.send_initial_events = truthy(v),
                "timeoutSeconds" => {
                    let secs = v.parse::<u64>().map_err(|_| format!("timeoutSeconds: invalid value {v:?}"))?;
                    o.timeout = Some(Duration::from_secs(secs).min(MAX_WATCH));
                }
                "includeObject" => o.include = IncludeObject::parse(v)?,
                _ => {}
            }
        }
        Ok(o)
    }

    /// Whether `object` passes the label and field selectors.
    pub fn matches<T: View>(&self, object: &T) -> bool {
        self.labels.matches(object.labels()) && self.fields.matches(object)
    }

    /// Whether a selector may hide objects (so watchers must track what they were sent).
    pub fn filters(&self) -> bool {
        !self.labels.is_empty() || !self.fields.is_empty()
    }
}

/// Encodes the last key of a page as an opaque `continue` token.
pub fn encode_continue(key: &ObjectKey) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{}/{}", key.namespace, key.name))
}

/// Decodes a `continue` token.
pub fn decode_continue(token: &str) -> Result<ObjectKey, String> {
    let bad = || format!("invalid continue token {token:?}");
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token).map_err(|_| bad())?;
    let text = String::from_utf8(raw).map_err(|_| bad())?;
    let (ns, name) = text.split_once('/').ok_or_else(bad)?;
    Ok(ObjectKey::new(ns, name))
}

/// What a Table row carries besides its cells (`includeObject`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum IncludeObject {
    /// Nothing.
    None,
    /// `PartialObjectMetadata` (the default).
    #[default]
    Metadata,
    /// The full object.
    Object,
}

impl IncludeObject {
    fn parse(v: &str) -> Result<Self, String> {
        match v {
            "None" => Ok(Self::None),
            "Metadata" | "" => Ok(Self::Metadata),
            "Object" => Ok(Self::Object),
            other => Err(format!("includeObject: unsupported value {other:?} (None, Metadata, Object)")),
        }
    }
}

/// The representation negotiated from `Accept`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Plain objects and lists.
    Json,
    /// `meta.k8s.io` Table, in the given version (`v1` or `v1beta1`).
    Table(&'static str),
    /// `PartialObjectMetadata(List)`, in the given version.
    Metadata(&'static str),
}

/// No representation in `Accept` is one we can produce.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("none of the accepted media types ({0}) is supported: use application/json")]
pub struct NotAcceptable(pub String);

/// Picks the first media range in `Accept` we can serve (clients list them by preference).
pub fn negotiate(accept: Option<&str>) -> Result<Format, NotAcceptable> {
    let Some(accept) = accept.filter(|a| !a.trim().is_empty()) else { return Ok(Format::Json) };
    for range in accept.split(',') {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or_default().to_ascii_lowercase();
        if !matches!(media.as_str(), "application/json" | "application/*" | "*/*") {
            continue;
        }
        let (mut as_, mut g, mut v) = (None, None, None);
        for p in parts {
            if let Some((k, val)) = p.split_once('=') {
                match k.trim() {
                    "as" => as_ = Some(val.trim()),
                    "g" => g = Some(val.trim()),
                    "v" => v = Some(val.trim()),
                    _ => {}
                }
            }
        }
        let version = match v {
            Some("v1") => "v1",
            Some("v1beta1") => "v1beta1",
            _ => "",
        };
        match (as_, g) {
            (None, _) => return Ok(Format::Json),
            (Some("Table"), Some("meta.k8s.io")) if !version.is_empty() => return Ok(Format::Table(version)),
            (Some("PartialObjectMetadata" | "PartialObjectMetadataList"), Some("meta.k8s.io"))
                if !version.is_empty() =>
            {
                return Ok(Format::Metadata(version));
            }
            _ => continue,
        }
    }
    Err(NotAcceptable(accept.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_huge_watch_timeout_is_clamped_not_overflowed() {
        let q =
            |v: &str| vec![("watch".to_string(), "true".to_string()), ("timeoutSeconds".to_string(), v.to_string())];
        let huge = ListOptions::from_query(&q("9223372036854775807")).expect("parsing a huge watch timeout");
        assert_eq!(huge.timeout, Some(MAX_WATCH));
        let short = ListOptions::from_query(&q("5")).expect("parsing a short watch timeout");
        assert_eq!(short.timeout, Some(Duration::from_secs(5)));
        // Adding the clamped timeout to now cannot overflow.
        let _ = tokio::time::Instant::now() + huge.timeout.unwrap_or_default();
    }
    use crate::core::views::{Device, Selection};

    #[test]
    fn paths_name_targets() {
        let parse = |p| Target::parse(p, false);
        let tailnet = ApiGroup::Tailnet;
        assert_eq!(parse("/api"), Target::LegacyApi);
        assert_eq!(parse("/apis"), Target::GroupList);
        assert_eq!(parse("/version"), Target::Version);
        assert_eq!(parse("/apis/tailnet.gateway.tailscale.com"), Target::Group(tailnet));
        assert_eq!(parse("/apis/tailnet.gateway.tailscale.com/v1alpha1"), Target::GroupVersion(tailnet));
        assert_eq!(parse("/apis/tailnet.gateway.tailscale.com/v2"), Target::NotFound);
        assert_eq!(parse("/apis/apps/v1"), Target::NotFound);
        assert_eq!(
            parse("/apis/tailnet.gateway.tailscale.com/v1alpha1/tailscaledevices"),
            Target::Collection { group: tailnet, resource: "tailscaledevices".into(), namespace: None }
        );
        assert_eq!(
            parse("/apis/tailnet.gateway.tailscale.com/v1alpha1/namespaces/ns/tailscaledevices/d"),
            Target::Object {
                group: tailnet,
                resource: "tailscaledevices".into(),
                namespace: "ns".into(),
                name: "d".into(),
                subresource: None
            }
        );
        assert_eq!(
            parse("/openapi/v3/apis/tailnet.gateway.tailscale.com/v1alpha1"),
            Target::OpenApiV3GroupVersion(tailnet)
        );
        assert_eq!(Target::kind_of(tailnet, "tailscaledevices"), Some(ResourceKind::Devices));
        assert_eq!(Target::kind_of(tailnet, "tsdev"), None);
        assert_eq!(Target::kind_of(tailnet, "tailscaleservices"), None);
    }

    #[test]
    fn the_crd_group_is_known_only_in_local_mode() {
        let crds = ApiGroup::Crds;
        assert_eq!(Target::parse("/apis/gateway.tailscale.com/v1alpha1", false), Target::NotFound);
        assert_eq!(Target::parse("/apis/gateway.tailscale.com", false), Target::NotFound);
        assert_eq!(Target::parse("/apis/gateway.tailscale.com/v1alpha1/tailscaleservices", false), Target::NotFound);
        assert_eq!(Target::parse("/apis/gateway.tailscale.com/v1alpha1", true), Target::GroupVersion(crds));
        assert_eq!(
            Target::parse("/apis/gateway.tailscale.com/v1alpha1/tailscaletailnets/corp", true),
            Target::Object {
                group: crds,
                resource: "tailscaletailnets".into(),
                namespace: String::new(),
                name: "corp".into(),
                subresource: None
            }
        );
        assert_eq!(Target::kind_of(crds, "tailscaleservices"), Some(ResourceKind::Services));
        assert_eq!(Target::kind_of(crds, "tailscaletailnets"), Some(ResourceKind::Tailnets));
        assert_eq!(Target::kind_of(crds, "tailscaledevices"), None);
        assert_eq!(ApiGroup::Crds.kinds().count(), 5);
    }

    #[test]
    fn verbs_follow_kube_apiserver() {
        let group = ApiGroup::Tailnet;
        let coll = Target::Collection { group, resource: "x".into(), namespace: None };
        let obj =
            Target::Object { group, resource: "x".into(), namespace: "n".into(), name: "a".into(), subresource: None };
        assert_eq!(verb(&Method::GET, &coll, false), "list");
        assert_eq!(verb(&Method::GET, &coll, true), "watch");
        assert_eq!(verb(&Method::GET, &obj, false), "get");
        assert_eq!(verb(&Method::DELETE, &coll, false), "deletecollection");
        assert_eq!(verb(&Method::PATCH, &obj, false), "patch");
        assert_eq!(verb(&Method::GET, &Target::GroupVersion(group), false), "get");
    }

    #[test]
    fn field_selectors_parse_check_and_match() {
        let fs = FieldSelector::parse("status.online=true,metadata.name!=a\\,b").unwrap_or_default();
        assert_eq!(fs.0.len(), 2);
        assert_eq!(fs.0[1], FieldRequirement { field: "metadata.name".into(), value: "a,b".into(), equals: false });
        assert!(fs.check::<Device>().is_ok());
        assert!(fs.check::<Selection>().is_err_and(|e| e.contains("field label not supported: status.online")));
        let dev = Device { name: "x".into(), online: true, ..Device::default() };
        assert!(fs.matches(&dev));
        let off = Device { name: "x".into(), online: false, ..Device::default() };
        assert!(!fs.matches(&off));
        assert!(FieldSelector::parse("nonsense").is_err());
        assert_eq!(FieldSelector::parse("spec.tailnet==t").map(|f| f.0[0].value.clone()), Ok("t".into()));
    }

    #[test]
    fn continue_tokens_round_trip() {
        let key = ObjectKey::new("default", "web-0");
        assert_eq!(decode_continue(&encode_continue(&key)), Ok(key));
        assert!(decode_continue("!!!").is_err());
    }

    #[test]
    fn list_options_from_query() {
        let q = |pairs: &[(&str, &str)]| pairs.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect::<Vec<_>>();
        let o = ListOptions::from_query(&q(&[
            ("labelSelector", "env=prod"),
            ("limit", "500"),
            ("watch", "1"),
            ("resourceVersion", "12"),
            ("includeObject", "Object"),
        ]))
        .expect("parsing the list options");
        assert_eq!(o.limit, 500);
        assert!(o.watch && o.filters());
        assert_eq!(o.resource_version.as_deref(), Some("12"));
        assert_eq!(o.include, IncludeObject::Object);
        assert!(ListOptions::from_query(&q(&[("labelSelector", "a in (")])).is_err());
        assert!(ListOptions::from_query(&q(&[("includeObject", "All")])).is_err());
    }

    #[test]
    fn accept_negotiation() {
        let kubectl = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";
        assert_eq!(negotiate(Some(kubectl)), Ok(Format::Table("v1")));
        assert_eq!(negotiate(None), Ok(Format::Json));
        assert_eq!(negotiate(Some("*/*")), Ok(Format::Json));
        let discovery = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json";
        assert_eq!(negotiate(Some(discovery)), Ok(Format::Json));
        let gc = "application/vnd.kubernetes.protobuf;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json";
        assert_eq!(negotiate(Some(gc)), Ok(Format::Metadata("v1")));
        assert!(negotiate(Some("application/vnd.kubernetes.protobuf")).is_err());
    }
}

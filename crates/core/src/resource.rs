//! One enum over our four kinds, so code that handles "any of our objects" (admission, the
//! loader, the cache) is written once.

use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::Value;

use super::{FieldError, FieldPath, names};
use crate::api::{
    API_VERSION, TailscaleEndpoints, TailscaleGateway, TailscaleRoutePolicy, TailscaleServices, TailscaleTailnet,
};

/// Our resource kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// TailscaleTailnet (cluster-scoped).
    Tailnet,
    /// TailscaleEndpoints.
    Endpoints,
    /// TailscaleServices.
    Services,
    /// TailscaleGateway.
    Gateway,
    /// TailscaleRoutePolicy.
    RoutePolicy,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 5] = [Kind::Tailnet, Kind::Endpoints, Kind::Services, Kind::Gateway, Kind::RoutePolicy];

    /// The `kind` string.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Tailnet => "TailscaleTailnet",
            Kind::Endpoints => "TailscaleEndpoints",
            Kind::Services => "TailscaleServices",
            Kind::Gateway => "TailscaleGateway",
            Kind::RoutePolicy => "TailscaleRoutePolicy",
        }
    }

    /// Looks a kind up by its `kind` string.
    pub fn from_name(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == s)
    }

    /// Whether objects of this kind live in a namespace.
    pub fn namespaced(self) -> bool {
        self != Kind::Tailnet
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Namespace and name of an object; the namespace is empty for cluster-scoped objects.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct ObjectKey {
    /// Namespace, or empty.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl ObjectKey {
    /// A namespaced key.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self { namespace: namespace.into(), name: name.into() }
    }

    /// A cluster-scoped key.
    pub fn cluster(name: impl Into<String>) -> Self {
        Self { namespace: String::new(), name: name.into() }
    }

    /// The key of an object's metadata.
    pub fn of(meta: &ObjectMeta) -> Self {
        Self::new(meta.namespace.clone().unwrap_or_default(), meta.name.clone().unwrap_or_default())
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() { f.write_str(&self.name) } else { write!(f, "{}/{}", self.namespace, self.name) }
    }
}

/// Any of our objects. Variants differ in size, but values are moved, not copied around in bulk.
#[derive(Clone, Debug, PartialEq)]
#[allow(clippy::large_enum_variant)]
pub enum Resource {
    /// A TailscaleTailnet.
    Tailnet(TailscaleTailnet),
    /// A TailscaleEndpoints.
    Endpoints(TailscaleEndpoints),
    /// A TailscaleServices.
    Services(TailscaleServices),
    /// A TailscaleGateway.
    Gateway(TailscaleGateway),
    /// A TailscaleRoutePolicy.
    RoutePolicy(TailscaleRoutePolicy),
}

/// Why a JSON document is not one of our objects.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ParseError {
    /// Another group's object: not for us to judge.
    #[error("{api_version}/{kind} is not a gateway.tailscale.com/v1alpha1 kind")]
    NotOurs {
        /// Its apiVersion.
        api_version: String,
        /// Its kind.
        kind: String,
    },
    /// One of ours, but it does not deserialize.
    #[error("{0}")]
    Invalid(FieldError),
}

impl Resource {
    /// Parses a JSON object of one of our kinds. Deserialization errors name the field.
    pub fn from_value(value: Value) -> Result<Self, ParseError> {
        let api_version = value.get("apiVersion").and_then(Value::as_str).unwrap_or_default();
        let kind_name = value.get("kind").and_then(Value::as_str).unwrap_or_default();
        let kind = Self::our_kind(api_version, kind_name)?;
        Self::from_json_as(kind, &value.to_string())
    }

    /// Parses one of our objects straight from JSON text, without an intermediate `Value` (the
    /// admission hot path).
    pub fn from_json(json: &str) -> Result<Self, ParseError> {
        #[derive(serde::Deserialize)]
        struct TypeMeta<'a> {
            #[serde(rename = "apiVersion", borrow, default)]
            api_version: std::borrow::Cow<'a, str>,
            #[serde(borrow, default)]
            kind: std::borrow::Cow<'a, str>,
        }
        let meta: TypeMeta<'_> = serde_json::from_str(json).map_err(|e| {
            ParseError::Invalid(FieldError {
                path: String::from("(root)"),
                kind: super::field::ErrorType::Invalid,
                value: None,
                detail: e.to_string(),
            })
        })?;
        let kind = Self::our_kind(&meta.api_version, &meta.kind)?;
        Self::from_json_as(kind, json)
    }

    /// Which of our kinds `apiVersion`/`kind` name, or why none.
    fn our_kind(api_version: &str, kind_name: &str) -> Result<Kind, ParseError> {
        if api_version != API_VERSION {
            if api_version.starts_with(&format!("{}/", crate::api::GROUP)) {
                return Err(ParseError::Invalid(FieldError::not_supported(
                    &FieldPath::new("apiVersion"),
                    api_version,
                    &[API_VERSION],
                )));
            }
            return Err(ParseError::NotOurs { api_version: api_version.to_string(), kind: kind_name.to_string() });
        }
        Kind::from_name(kind_name).ok_or_else(|| {
            let supported: Vec<&str> = Kind::ALL.iter().map(|k| k.name()).collect();
            ParseError::Invalid(FieldError::not_supported(&FieldPath::new("kind"), kind_name, &supported))
        })
    }

    /// Deserializes JSON text known to be of `kind` (an AdmissionReview names the kind of its
    /// object), skipping the `apiVersion`/`kind` pre-pass of [`Resource::from_json`]. The common
    /// case takes serde_json's fast path; only a document that fails is parsed again with path
    /// tracking, to name the failing field.
    pub fn from_json_as(kind: Kind, json: &str) -> Result<Self, ParseError> {
        use serde::de::DeserializeSeed;
        let fast = || {
            let mut de = serde_json::Deserializer::from_str(json);
            let res = KindSeed(kind).deserialize(&mut de)?;
            de.end().map(|()| res)
        };
        fast().or_else(|_| {
            let mut track = serde_path_to_error::Track::new();
            let mut de = serde_json::Deserializer::from_str(json);
            let tracked = serde_path_to_error::Deserializer::new(&mut de, &mut track);
            let result = KindSeed(kind).deserialize(tracked).and_then(|res| de.end().map(|()| res));
            result.map_err(|e| {
                let path = track.path().to_string();
                let path = if path == "." { String::from("(root)") } else { path };
                ParseError::Invalid(FieldError {
                    path,
                    kind: super::field::ErrorType::Invalid,
                    value: None,
                    detail: type_error_detail(&e),
                })
            })
        })
    }

    /// The object as a JSON value.
    pub fn to_json_value(&self) -> serde_json::Result<Value> {
        match self {
            Resource::Tailnet(o) => serde_json::to_value(o),
            Resource::Endpoints(o) => serde_json::to_value(o),
            Resource::Services(o) => serde_json::to_value(o),
            Resource::Gateway(o) => serde_json::to_value(o),
            Resource::RoutePolicy(o) => serde_json::to_value(o),
        }
    }

    /// The object's kind.
    pub fn kind(&self) -> Kind {
        match self {
            Resource::Tailnet(_) => Kind::Tailnet,
            Resource::Endpoints(_) => Kind::Endpoints,
            Resource::Services(_) => Kind::Services,
            Resource::Gateway(_) => Kind::Gateway,
            Resource::RoutePolicy(_) => Kind::RoutePolicy,
        }
    }

    /// The object's metadata.
    pub fn meta(&self) -> &ObjectMeta {
        match self {
            Resource::Tailnet(o) => &o.metadata,
            Resource::Endpoints(o) => &o.metadata,
            Resource::Services(o) => &o.metadata,
            Resource::Gateway(o) => &o.metadata,
            Resource::RoutePolicy(o) => &o.metadata,
        }
    }

    /// The object's metadata, mutably.
    pub fn meta_mut(&mut self) -> &mut ObjectMeta {
        match self {
            Resource::Tailnet(o) => &mut o.metadata,
            Resource::Endpoints(o) => &mut o.metadata,
            Resource::Services(o) => &mut o.metadata,
            Resource::Gateway(o) => &mut o.metadata,
            Resource::RoutePolicy(o) => &mut o.metadata,
        }
    }

    /// Namespace and name.
    pub fn key(&self) -> ObjectKey {
        ObjectKey::of(self.meta())
    }

    /// Puts a namespaced object without a namespace into `namespace`, and clears the namespace
    /// of a cluster-scoped one (what kube-apiserver does on create).
    pub fn default_namespace(&mut self, namespace: &str) {
        let namespaced = self.kind().namespaced();
        let meta = self.meta_mut();
        if !namespaced {
            meta.namespace = None;
        } else if meta.namespace.as_deref().unwrap_or_default().is_empty() {
            meta.namespace = Some(namespace.to_string());
        }
    }
}

/// Deserializes one of our objects of a known kind, in full, from any deserializer
/// ([`Resource::from_json_as`] and its path-tracking retry use it).
#[derive(Clone, Copy, Debug)]
pub struct KindSeed(pub Kind);

impl<'de> serde::de::DeserializeSeed<'de> for KindSeed {
    type Value = Resource;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Resource, D::Error> {
        use serde::Deserialize;
        Ok(match self.0 {
            Kind::Tailnet => Resource::Tailnet(TailscaleTailnet::deserialize(d)?),
            Kind::Endpoints => Resource::Endpoints(TailscaleEndpoints::deserialize(d)?),
            Kind::Services => Resource::Services(TailscaleServices::deserialize(d)?),
            Kind::Gateway => Resource::Gateway(TailscaleGateway::deserialize(d)?),
            Kind::RoutePolicy => Resource::RoutePolicy(TailscaleRoutePolicy::deserialize(d)?),
        })
    }
}

/// Deserializes one of our objects for judging it, not storing it: like [`KindSeed`], but
/// `metadata` keeps only what the rules read (name, generateName, namespace, labels,
/// deletionTimestamp) and `status` is skipped. Bulky parts of a stored object (managedFields,
/// annotations such as kubectl's last-applied-configuration, status) are scanned, not built.
/// kube-apiserver has checked those parts against the schema before any webhook sees them.
#[derive(Clone, Copy, Debug)]
pub struct ValidationSeed(pub Kind);

impl<'de> serde::de::DeserializeSeed<'de> for ValidationSeed {
    type Value = Resource;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Resource, D::Error> {
        fn parts<'de, S: serde::Deserialize<'de>, D: serde::Deserializer<'de>>(
            d: D,
        ) -> Result<(ObjectMeta, S), D::Error> {
            d.deserialize_map(Parts(std::marker::PhantomData))
        }
        Ok(match self.0 {
            Kind::Tailnet => parts(d).map(|(metadata, spec)| TailscaleTailnet { metadata, spec, status: None })?.into(),
            Kind::Endpoints => {
                parts(d).map(|(metadata, spec)| TailscaleEndpoints { metadata, spec, status: None })?.into()
            }
            Kind::Services => {
                parts(d).map(|(metadata, spec)| TailscaleServices { metadata, spec, status: None })?.into()
            }
            Kind::Gateway => parts(d).map(|(metadata, spec)| TailscaleGateway { metadata, spec, status: None })?.into(),
            Kind::RoutePolicy => {
                parts(d).map(|(metadata, spec)| TailscaleRoutePolicy { metadata, spec, status: None })?.into()
            }
        })
    }
}

/// The `metadata` and `spec` of an object, other top-level fields skipped. Both are required,
/// as in the full types, so a document missing either fails here as it would there.
struct Parts<S>(std::marker::PhantomData<S>);

impl<'de, S: serde::Deserialize<'de>> serde::de::Visitor<'de> for Parts<S> {
    type Value = (ObjectMeta, S);

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object with metadata and spec")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        use serde::de::Error;
        #[derive(serde::Deserialize)]
        #[serde(field_identifier, rename_all = "camelCase")]
        enum Field {
            Metadata,
            Spec,
            #[serde(other)]
            Other,
        }
        /// The metadata the rules read; everything else in `metadata` is skipped.
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct SlimMeta {
            #[serde(default)]
            name: Option<String>,
            #[serde(default)]
            generate_name: Option<String>,
            #[serde(default)]
            namespace: Option<String>,
            #[serde(default)]
            labels: Option<std::collections::BTreeMap<String, String>>,
            #[serde(default)]
            deletion_timestamp: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
        }
        let (mut meta, mut spec) = (None, None);
        while let Some(field) = map.next_key::<Field>()? {
            match field {
                Field::Metadata => {
                    let m: SlimMeta = map.next_value()?;
                    meta = Some(ObjectMeta {
                        name: m.name,
                        generate_name: m.generate_name,
                        namespace: m.namespace,
                        labels: m.labels,
                        deletion_timestamp: m.deletion_timestamp,
                        ..ObjectMeta::default()
                    });
                }
                Field::Spec => spec = Some(map.next_value::<S>()?),
                Field::Other => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
        }
        Ok((
            meta.ok_or_else(|| A::Error::missing_field("metadata"))?,
            spec.ok_or_else(|| A::Error::missing_field("spec"))?,
        ))
    }
}

/// The VIP service name a TailscaleServices owns: `spec.vipService.name`, or `svc:<name>` when
/// unset and the object name is a DNS label.
pub fn vip_service_name(svc: &TailscaleServices) -> Option<String> {
    if let Some(name) = svc.spec.vip_service.as_ref().and_then(|v| v.name.clone()) {
        return Some(name);
    }
    let name = svc.metadata.name.as_deref()?;
    names::dns_label(name).ok()?;
    Some(format!("svc:{name}"))
}

impl From<TailscaleTailnet> for Resource {
    fn from(o: TailscaleTailnet) -> Self {
        Resource::Tailnet(o)
    }
}

impl From<TailscaleEndpoints> for Resource {
    fn from(o: TailscaleEndpoints) -> Self {
        Resource::Endpoints(o)
    }
}

impl From<TailscaleServices> for Resource {
    fn from(o: TailscaleServices) -> Self {
        Resource::Services(o)
    }
}

impl From<TailscaleGateway> for Resource {
    fn from(o: TailscaleGateway) -> Self {
        Resource::Gateway(o)
    }
}

impl From<TailscaleRoutePolicy> for Resource {
    fn from(o: TailscaleRoutePolicy) -> Self {
        Resource::RoutePolicy(o)
    }
}

/// serde's message for a value that does not fit its type, in a manifest author's words: no
/// position (it would count in the JSON text, not in the user's YAML) and no Rust type names.
fn type_error_detail(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let at = format!(" at line {} column {}", e.line(), e.column());
    let text = text.strip_suffix(&at).unwrap_or(&text);
    let mut out = text.to_string();
    // `expected struct LoadBalancing` names a Rust type: say what it is instead.
    while let Some(at) = out.find("expected struct ") {
        let name_start = at + "expected struct ".len();
        let name_end =
            out[name_start..].find(|c: char| !(c.is_alphanumeric() || c == '_')).map_or(out.len(), |n| name_start + n);
        out.replace_range(at..name_end, "expected an object");
    }
    for (rust, words) in [
        ("expected i32", "expected an integer"),
        ("expected i64", "expected an integer"),
        ("expected u8", "expected an integer from 0 to 255"),
        ("expected u16", "expected an integer from 0 to 65535"),
        ("expected u32", "expected a non-negative integer"),
        ("expected u64", "expected a non-negative integer"),
        ("expected f64", "expected a number"),
        ("expected f32", "expected a number"),
        ("expected a sequence", "expected a list"),
        ("expected a map", "expected an object"),
    ] {
        out = out.replace(rust, words);
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn type_errors_are_worded_for_manifest_authors() {
        let detail = |object: serde_json::Value| match Resource::from_json_as(Kind::Services, &object.to_string()) {
            Err(ParseError::Invalid(e)) => (e.path, e.detail),
            other => panic!("expected a type error, got {other:?}"),
        };
        let base = |spec: serde_json::Value| {
            json!({"apiVersion": "gateway.tailscale.com/v1alpha1", "kind": "TailscaleServices",
                   "metadata": {"name": "s"}, "spec": spec})
        };
        let (path, text) = detail(base(json!({"loadBalancing": "round-robin"})));
        assert_eq!(path, "spec.loadBalancing");
        assert_eq!(text, r#"invalid type: string "round-robin", expected an object"#);
        let (path, text) = detail(base(json!({"vipService": {"ports": "tcp:80"}})));
        assert_eq!(
            (path.as_str(), text.as_str()),
            ("spec.vipService.ports", r#"invalid type: string "tcp:80", expected a list"#)
        );
        let (_, text) = detail(base(json!({"loadBalancing": {"healthCheck": {"unhealthyThreshold": "three"}}})));
        assert_eq!(text, r#"invalid type: string "three", expected an integer"#);
    }

    #[test]
    fn the_validation_seed_keeps_what_the_rules_read() {
        use serde::de::DeserializeSeed;
        let text = json!({
            "apiVersion": API_VERSION, "kind": "TailscaleServices",
            "metadata": {
                "name": "web", "namespace": "apps", "labels": {"a": "b"}, "uid": "1234",
                "deletionTimestamp": "2026-11-22T07:00:00Z", "resourceVersion": "42", "finalizers": ["x"],
                "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{\"big\":true}"},
                "managedFields": [{"manager": "kubectl", "operation": "Apply", "fieldsType": "FieldsV1",
                    "fieldsV1": {"f:spec": {"f:selector": {}}}}]
            },
            "spec": {"selector": {"matchLabels": {"app": "web"}}, "vipService": {"ports": ["tcp:80"]}},
            "status": {"endpointCount": 3}
        })
        .to_string();
        let slim = ValidationSeed(Kind::Services).deserialize(&mut serde_json::Deserializer::from_str(&text));
        let full = Resource::from_json_as(Kind::Services, &text);
        let (Ok(Resource::Services(slim)), Ok(Resource::Services(full))) = (slim, full) else {
            panic!("both parse as TailscaleServices")
        };
        assert_eq!(slim.spec, full.spec);
        assert_eq!(slim.status, None);
        let (s, f) = (&slim.metadata, &full.metadata);
        assert_eq!((&s.name, &s.namespace, &s.labels), (&f.name, &f.namespace, &f.labels));
        assert_eq!(s.deletion_timestamp, f.deletion_timestamp);
        assert!(s.deletion_timestamp.is_some());
        assert!(s.managed_fields.is_none() && s.annotations.is_none() && s.uid.is_none());
        // Missing spec fails, as it does for the full type.
        let no_spec = json!({"apiVersion": API_VERSION, "kind": "TailscaleServices", "metadata": {"name": "x"}});
        let r =
            ValidationSeed(Kind::Services).deserialize(&mut serde_json::Deserializer::from_str(&no_spec.to_string()));
        assert!(r.is_err());
    }

    #[test]
    fn parses_our_kinds_and_names_bad_fields() {
        let ok = Resource::from_value(json!({
            "apiVersion": API_VERSION, "kind": "TailscaleEndpoints",
            "metadata": {"name": "e"}, "spec": {"tailnet": "t"}
        }));
        assert!(matches!(ok, Ok(Resource::Endpoints(_))));
        let other = Resource::from_value(json!({"apiVersion": "v1", "kind": "Pod"}));
        assert!(matches!(other, Err(ParseError::NotOurs { .. })));
        let bad = Resource::from_value(json!({
            "apiVersion": API_VERSION, "kind": "TailscaleEndpoints",
            "metadata": {"name": "e"}, "spec": {"tailnet": "t", "proxy": {"replicas": "two"}}
        }));
        match bad {
            Err(ParseError::Invalid(e)) => assert_eq!(e.path.as_str(), "spec.proxy.replicas", "{e}"),
            other => panic!("{other:?}"),
        }
        let text = r#"{"apiVersion":"gateway.tailscale.com/v1alpha1","kind":"TailscaleEndpoints","metadata":{"name":"e"},"spec":{"tailnet":"t","ports":[{"port":"x"}]}}"#;
        match Resource::from_json(text) {
            Err(ParseError::Invalid(e)) => assert_eq!(e.path.as_str(), "spec.ports[0].port", "{e}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(Resource::from_json(r#"{"apiVersion":"v1","kind":"Pod"}"#), Err(ParseError::NotOurs { .. })));
        let wrong_kind = Resource::from_value(json!({"apiVersion": API_VERSION, "kind": "TailscaleThing"}));
        assert!(matches!(wrong_kind, Err(ParseError::Invalid(e)) if e.path.as_str() == "kind"));
    }
}

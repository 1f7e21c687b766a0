//! TailscaleRoutePolicy: what a policy says (validation), what it decides for one request
//! (evaluation), and which policy holds a target when several claim it (oldest wins, as Gateway
//! API specifies). Plain functions over plain types: the webhook, the status writer and the
//! per-request decision all call these.
//!
//! **Identity.** The ingress proxies' tailscaled (serve) sets `Tailscale-User-Login` for callers
//! that are users (not tagged devices) and `Tailscale-App-Capabilities` (a JSON object of the
//! application capabilities the tailnet policy grants the caller, among those the serve config
//! accepts); it deletes any client-sent copy first. Groups, tags and single devices are matched
//! through grants of application capabilities, as Tailscale's own identity-aware apps do. A
//! request that did not come through an ingress proxy carries no trustworthy identity: the
//! caller of [`decide`] says whether it did, and identity headers of an untrusted request are
//! ignored and reported for removal ([`Verdict::strip`]), so a forged header neither matches nor
//! reaches the backend.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::api::{PolicyAction, PolicyMatch, PolicyTargetRef, TailscaleRoutePolicy, TailscaleRoutePolicySpec};
use crate::dataplane::GATEWAY_API_GROUP;
use crate::{FieldError, FieldPath, ObjectKey, duration, names};

/// The login header serve sets (lower case, as HTTP/2 and Envoy carry header names).
pub const USER_LOGIN_HEADER: &str = "tailscale-user-login";
/// The application capabilities header serve sets.
pub const APP_CAPABILITIES_HEADER: &str = "tailscale-app-capabilities";
/// Every identity header serve sets or clears: removed from requests that did not come through
/// an ingress proxy.
pub const IDENTITY_HEADERS: [&str; 6] = [
    USER_LOGIN_HEADER,
    "tailscale-user-name",
    "tailscale-user-profile-pic",
    "tailscale-headers-info",
    "tailscale-funnel-request",
    APP_CAPABILITIES_HEADER,
];

/// The kinds a policy may target, by group.
pub const TARGET_KINDS: [(&str, &str); 4] = [
    (GATEWAY_API_GROUP, "Gateway"),
    (GATEWAY_API_GROUP, "HTTPRoute"),
    (GATEWAY_API_GROUP, "GRPCRoute"),
    (crate::api::GROUP, "TailscaleServices"),
];

const ACTIONS: [&str; 2] = ["Allow", "Deny"];
const PATH_TYPES: [&str; 2] = ["PathPrefix", "Exact"];
const METHODS: [&str; 9] = ["GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"];
/// Envoy's HTTP retry conditions a policy may name.
const RETRY_ON: [&str; 8] = [
    "5xx",
    "gateway-error",
    "reset",
    "connect-failure",
    "retriable-4xx",
    "refused-stream",
    "retriable-status-codes",
    "http3-post-connect-failure",
];
/// Limits that keep one policy's evaluation cheap per request.
const MAX_TARGETS: usize = 16;
const MAX_RULES: usize = 64;
const MAX_MATCHES: usize = 16;
const MAX_VALUES: usize = 64;

/// Every problem of a policy's spec, each at its field.
pub fn validate(spec: &TailscaleRoutePolicySpec) -> Vec<FieldError> {
    let root = FieldPath::new("spec");
    let mut errors = Vec::new();
    let targets = root.child("targetRefs");
    if spec.target_refs.is_empty() {
        errors.push(FieldError::required(&targets, "at least one target"));
    }
    if spec.target_refs.len() > MAX_TARGETS {
        errors.push(FieldError::too_many(&targets, spec.target_refs.len(), MAX_TARGETS));
    }
    for (i, t) in spec.target_refs.iter().enumerate() {
        let path = targets.index(i);
        validate_target(t, &path, &mut errors);
        if spec.target_refs[..i].contains(t) {
            errors.push(FieldError::duplicate(&path, format!("{}/{}", t.kind, t.name), "named twice"));
        }
    }
    let rules = root.child("rules");
    if spec.rules.len() > MAX_RULES {
        errors.push(FieldError::too_many(&rules, spec.rules.len(), MAX_RULES));
    }
    for (i, rule) in spec.rules.iter().enumerate() {
        let path = rules.index(i);
        if let Some(name) = &rule.name
            && let Err(e) = names::dns_label(name)
        {
            errors.push(FieldError::invalid(&path.child("name"), name, e));
        }
        let matches = path.child("matches");
        if rule.matches.len() > MAX_MATCHES {
            errors.push(FieldError::too_many(&matches, rule.matches.len(), MAX_MATCHES));
        }
        for (j, m) in rule.matches.iter().enumerate() {
            validate_match(m, &matches.index(j), &mut errors);
        }
        validate_action(&rule.action, &path.child("action"), &mut errors);
    }
    if let Some(d) = &spec.default_action
        && !ACTIONS.contains(&d.as_str())
    {
        errors.push(FieldError::not_supported(&root.child("defaultAction"), d, &ACTIONS));
    }
    errors
}

fn validate_target(t: &PolicyTargetRef, path: &FieldPath<'_>, errors: &mut Vec<FieldError>) {
    if !TARGET_KINDS.contains(&(t.group.as_str(), t.kind.as_str())) {
        let supported: Vec<String> = TARGET_KINDS.iter().map(|(g, k)| format!("{k}.{g}")).collect();
        let supported: Vec<&str> = supported.iter().map(String::as_str).collect();
        errors.push(FieldError::not_supported(&path.child("kind"), format!("{}.{}", t.kind, t.group), &supported));
    }
    if let Err(e) = names::dns_subdomain(&t.name) {
        errors.push(FieldError::invalid(&path.child("name"), &t.name, e));
    }
    if let Some(section) = &t.section_name {
        if t.kind != "Gateway" {
            errors.push(FieldError::forbidden(
                &path.child("sectionName"),
                "only a Gateway's listener can be targeted alone (Envoy Gateway's routes do not carry rule names)",
            ));
        } else if let Err(e) = names::dns_label(section) {
            errors.push(FieldError::invalid(&path.child("sectionName"), section, e));
        }
    }
}

fn validate_match(m: &PolicyMatch, path: &FieldPath<'_>, errors: &mut Vec<FieldError>) {
    if let Some(id) = &m.identity {
        let id_path = path.child("identity");
        if id.users.is_empty() && id.capabilities.is_empty() {
            errors.push(FieldError::required(&id_path, "users or capabilities"));
        }
        let users = id_path.child("users");
        if id.users.len() > MAX_VALUES {
            errors.push(FieldError::too_many(&users, id.users.len(), MAX_VALUES));
        }
        for (i, u) in id.users.iter().enumerate() {
            if u.is_empty() || !u.is_ascii() || u.chars().any(|c| c.is_ascii_control() || c == ' ') {
                errors.push(FieldError::invalid(&users.index(i), u, "a tailnet login name (user@example.com)"));
            }
        }
        let caps = id_path.child("capabilities");
        if id.capabilities.len() > MAX_VALUES {
            errors.push(FieldError::too_many(&caps, id.capabilities.len(), MAX_VALUES));
        }
        for (i, c) in id.capabilities.iter().enumerate() {
            if !capability_name(c) {
                errors.push(FieldError::invalid(
                    &caps.index(i),
                    c,
                    "an application capability: a domain, then a path (example.com/cap/admin)",
                ));
            }
        }
    }
    if let Some(p) = &m.path {
        let ty = p.type_.as_deref().unwrap_or("PathPrefix");
        if !PATH_TYPES.contains(&ty) {
            errors.push(FieldError::not_supported(&path.child("path").child("type"), ty, &PATH_TYPES));
        }
        if !p.value.starts_with('/') || p.value.contains(['?', '#']) || p.value.chars().any(|c| c.is_ascii_control()) {
            errors.push(FieldError::invalid(
                &path.child("path").child("value"),
                &p.value,
                "an absolute path without query",
            ));
        }
    }
    if let Some(method) = &m.method
        && !METHODS.contains(&method.as_str())
    {
        errors.push(FieldError::not_supported(&path.child("method"), method, &METHODS));
    }
    let headers = path.child("headers");
    if m.headers.len() > MAX_VALUES {
        errors.push(FieldError::too_many(&headers, m.headers.len(), MAX_VALUES));
    }
    for (i, h) in m.headers.iter().enumerate() {
        let hp = headers.index(i);
        if !header_name(&h.name) {
            errors.push(FieldError::invalid(&hp.child("name"), &h.name, "an HTTP header name"));
        } else if IDENTITY_HEADERS.contains(&h.name.to_ascii_lowercase().as_str()) {
            errors.push(FieldError::forbidden(&hp.child("name"), "identity is matched with `identity`, not a header"));
        }
    }
}

fn validate_action(a: &PolicyAction, path: &FieldPath<'_>, errors: &mut Vec<FieldError>) {
    if !ACTIONS.contains(&a.type_.as_str()) {
        errors.push(FieldError::not_supported(&path.child("type"), &a.type_, &ACTIONS));
        return;
    }
    let deny = a.type_ == "Deny";
    if let Some(d) = &a.deny {
        if !deny {
            errors.push(FieldError::forbidden(&path.child("deny"), "only with type Deny"));
        }
        if let Some(code) = d.status_code
            && !(400..=599).contains(&code)
        {
            errors.push(FieldError::invalid(&path.child("deny").child("statusCode"), code, "400-599"));
        }
    }
    let allow_only: [(&str, bool); 4] = [
        ("requestHeaders", a.request_headers.is_some()),
        ("timeout", a.timeout.is_some()),
        ("retry", a.retry.is_some()),
        ("backendRef", a.backend_ref.is_some()),
    ];
    for (field, set) in allow_only {
        if deny && set {
            errors.push(FieldError::forbidden(&path.child(field), "only with type Allow"));
        }
    }
    if let Some(h) = &a.request_headers {
        let hp = path.child("requestHeaders");
        let detail = format!(
            "an HTTP header name that routing does not depend on: not Host, an identity header, {REROUTE_HEADER} or x-envoy-*"
        );
        for (field, list) in [("set", &h.set), ("add", &h.add)] {
            let fp = hp.child(field);
            for (i, v) in list.iter().enumerate().filter(|(_, v)| !modifiable_header(&v.name)) {
                errors.push(FieldError::invalid(&fp.index(i).child("name"), &v.name, detail.clone()));
            }
        }
        let fp = hp.child("remove");
        for (i, name) in h.remove.iter().enumerate().filter(|(_, n)| !modifiable_header(n)) {
            errors.push(FieldError::invalid(&fp.index(i), name, detail.clone()));
        }
    }
    if let Some(t) = &a.timeout
        && let Err(e) = duration::parse(t)
    {
        errors.push(FieldError::invalid(&path.child("timeout"), t, e.to_string()));
    }
    if let Some(b) = &a.backend_ref {
        let bp = path.child("backendRef");
        if let Some(g) = b.group.as_deref().filter(|g| *g != crate::api::GROUP) {
            errors.push(FieldError::not_supported(&bp.child("group"), g, &[crate::api::GROUP]));
        }
        if let Some(k) = b.kind.as_deref().filter(|k| *k != "TailscaleServices") {
            errors.push(FieldError::not_supported(&bp.child("kind"), k, &["TailscaleServices"]));
        }
        if let Err(e) = names::dns_subdomain(&b.name) {
            errors.push(FieldError::invalid(&bp.child("name"), &b.name, e));
        }
    }
    if let Some(r) = &a.retry {
        let rp = path.child("retry");
        if !(1..=10).contains(&r.attempts) {
            errors.push(FieldError::invalid(&rp.child("attempts"), r.attempts, "1-10"));
        }
        if let Some(t) = &r.per_try_timeout
            && let Err(e) = duration::parse(t)
        {
            errors.push(FieldError::invalid(&rp.child("perTryTimeout"), t, e.to_string()));
        }
        for (i, on) in r.on.iter().enumerate() {
            if !RETRY_ON.contains(&on.as_str()) {
                errors.push(FieldError::not_supported(&rp.child("on").index(i), on, &RETRY_ON));
            }
        }
    }
}

/// Whether a rule may set, add or remove this header. Envoy picks the route again after our answer
/// (for `backendRef`), so headers routing depends on stay as the client (or serve) sent them.
fn modifiable_header(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    header_name(name)
        && lower != "host"
        && lower != REROUTE_HEADER
        && !lower.starts_with("x-envoy-")
        && !IDENTITY_HEADERS.contains(&lower.as_str())
}

/// An RFC 9110 token, as header names are.
fn header_name(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// `domain/path`, as tailcfg.PeerCapability names are.
fn capability_name(s: &str) -> bool {
    let Some((domain, rest)) = s.split_once('/') else { return false };
    names::dns_subdomain(domain).is_ok()
        && domain.contains('.')
        && !rest.is_empty()
        && rest.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~/".contains(&b))
}

/// A request as the policy sees it: header names in lower case.
#[derive(Clone, Debug, Default)]
pub struct Request<'a> {
    /// The path, without the query.
    pub path: &'a str,
    /// The method.
    pub method: &'a str,
    /// Headers by lower-case name.
    pub headers: BTreeMap<String, &'a str>,
    /// Whether the request came through one of our ingress proxies, so its identity headers are
    /// serve's own.
    pub via_ingress_proxy: bool,
}

impl Request<'_> {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).copied()
    }

    /// The caller's login, when trusted.
    fn login(&self) -> Option<&str> {
        self.via_ingress_proxy.then(|| self.header(USER_LOGIN_HEADER)).flatten()
    }

    /// The caller's application capabilities, when trusted and well-formed.
    fn capabilities(&self) -> Vec<String> {
        let Some(raw) = self.via_ingress_proxy.then(|| self.header(APP_CAPABILITIES_HEADER)).flatten() else {
            return Vec::new();
        };
        match serde_json::from_str::<Value>(raw) {
            Ok(Value::Object(map)) => map.keys().cloned().collect(),
            _ => Vec::new(),
        }
    }
}

/// What a policy decides for one request.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Verdict {
    /// Let it through.
    pub allow: bool,
    /// The rule that decided (its name, or `rules[i]`), or None for the default action.
    pub rule: Option<String>,
    /// For a denial: status and body.
    pub status: u16,
    /// For a denial: the body.
    pub reason: String,
    /// Headers to set (replacing) on the way to the backend.
    pub set: Vec<(String, String)>,
    /// Headers to append.
    pub add: Vec<(String, String)>,
    /// Headers to remove: the rule's, and every identity header of an untrusted request.
    pub strip: Vec<String>,
    /// The rule's timeout for the whole request.
    pub timeout: Option<std::time::Duration>,
    /// The rule's retries: attempts, per-try timeout, conditions.
    pub retry: Option<(u32, Option<std::time::Duration>, Vec<String>)>,
    /// The index of the rule whose `backendRef` the request goes to instead of the route's.
    pub reroute: Option<usize>,
}

/// The request header through which an authorization answer sends a request to a rule's
/// `backendRef`: `<namespace>/<policy>/<rule index>`, matched by a route of ours in front of the
/// virtual host's own (Envoy picks the route again after the answer). A client's copy is always
/// removed or replaced.
pub const REROUTE_HEADER: &str = "x-tailscale-gateway-route";

/// Envoy's retry conditions when a rule names none.
pub const DEFAULT_RETRY_ON: &str = "5xx,reset,connect-failure";

impl Verdict {
    /// The request headers through which Envoy's router takes a timeout and retries decided per
    /// request (`x-envoy-upstream-rq-timeout-ms`, `x-envoy-max-retries`, `x-envoy-retry-on`,
    /// `x-envoy-upstream-rq-per-try-timeout-ms`): set by the authorization answer, after Envoy has
    /// removed any a client sent, so only the policy's reach the router.
    pub fn envoy_headers(&self) -> Vec<(String, String)> {
        let ms = |d: std::time::Duration| d.as_millis().to_string();
        let mut out = Vec::new();
        if let Some(t) = self.timeout {
            out.push(("x-envoy-upstream-rq-timeout-ms".to_string(), ms(t)));
        }
        if let Some((attempts, per_try, on)) = &self.retry {
            out.push(("x-envoy-max-retries".to_string(), attempts.to_string()));
            let on = if on.is_empty() { DEFAULT_RETRY_ON.to_string() } else { on.join(",") };
            out.push(("x-envoy-retry-on".to_string(), on));
            if let Some(t) = per_try {
                out.push(("x-envoy-upstream-rq-per-try-timeout-ms".to_string(), ms(*t)));
            }
        }
        out
    }
}

/// What a policy that does not validate (stored past the webhook) decides: every request on its
/// targets is denied, as an authorization rule that cannot be read must not let anything through.
pub fn invalid_verdict() -> Verdict {
    Verdict {
        allow: false,
        status: 403,
        reason: String::from("denied: the route policy is invalid (see its status)"),
        ..Verdict::default()
    }
}

/// The first rule of `spec` that matches `req` decides; `defaultAction` otherwise.
pub fn decide(spec: &TailscaleRoutePolicySpec, req: &Request<'_>) -> Verdict {
    let untrusted: Vec<String> = if req.via_ingress_proxy {
        Vec::new()
    } else {
        IDENTITY_HEADERS.iter().filter(|h| req.headers.contains_key(**h)).map(|h| h.to_string()).collect()
    };
    let caps = req.capabilities();
    let hit = spec
        .rules
        .iter()
        .enumerate()
        .find(|(_, r)| r.matches.is_empty() || r.matches.iter().any(|m| matches(m, req, &caps)));
    let mut verdict = match hit {
        Some((i, rule)) => {
            let name = rule.name.clone().unwrap_or_else(|| format!("rules[{i}]"));
            let mut v = act(&rule.action, Some(name));
            v.reroute = (v.allow && rule.action.backend_ref.is_some()).then_some(i);
            v
        }
        None if spec.default_action.as_deref() == Some("Deny") => Verdict {
            allow: false,
            rule: None,
            status: 403,
            reason: String::from("denied by the route policy's default action"),
            ..Verdict::default()
        },
        None => Verdict { allow: true, ..Verdict::default() },
    };
    verdict.strip.extend(untrusted);
    verdict
}

fn act(action: &PolicyAction, rule: Option<String>) -> Verdict {
    if action.type_ == "Deny" {
        let deny = action.deny.clone().unwrap_or_default();
        let status = deny.status_code.and_then(|c| u16::try_from(c).ok()).unwrap_or(403);
        let reason =
            deny.reason.unwrap_or_else(|| format!("denied by route policy rule {}", rule.as_deref().unwrap_or("")));
        return Verdict { allow: false, rule, status, reason, ..Verdict::default() };
    }
    let h = action.request_headers.clone().unwrap_or_default();
    let pairs =
        |v: Vec<crate::api::HeaderValue>| v.into_iter().map(|h| (h.name.to_ascii_lowercase(), h.value)).collect();
    let parse = |t: &Option<String>| t.as_deref().and_then(|t| duration::parse(t).ok());
    Verdict {
        allow: true,
        rule,
        set: pairs(h.set),
        add: pairs(h.add),
        strip: h.remove.into_iter().map(|n| n.to_ascii_lowercase()).collect(),
        timeout: parse(&action.timeout),
        retry: action
            .retry
            .as_ref()
            .map(|r| (u32::try_from(r.attempts).unwrap_or(1), parse(&r.per_try_timeout), r.on.clone())),
        ..Verdict::default()
    }
}

fn matches(m: &PolicyMatch, req: &Request<'_>, caps: &[String]) -> bool {
    if let Some(id) = &m.identity {
        let user_ok = id.users.is_empty() || req.login().is_some_and(|l| id.users.iter().any(|u| u == l));
        let caps_ok = id.capabilities.is_empty() || id.capabilities.iter().any(|c| caps.contains(c));
        if !(user_ok && caps_ok) {
            return false;
        }
    }
    if let Some(p) = &m.path {
        let ok = match p.type_.as_deref().unwrap_or("PathPrefix") {
            "Exact" => req.path == p.value,
            _ => path_prefix(req.path, &p.value),
        };
        if !ok {
            return false;
        }
    }
    if m.method.as_deref().is_some_and(|method| method != req.method) {
        return false;
    }
    m.headers.iter().all(|h| req.header(&h.name.to_ascii_lowercase()) == Some(h.value.as_str()))
}

/// Gateway API's `PathPrefix`: whole segments (`/api` matches `/api` and `/api/x`, not `/apix`).
fn path_prefix(path: &str, prefix: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    prefix.is_empty() || path == prefix || path.strip_prefix(prefix).is_some_and(|rest| rest.starts_with('/'))
}

/// How a target stands with one policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Standing {
    /// The policy holds the target.
    Accepted,
    /// An older policy holds it.
    Conflicted {
        /// The policy that holds the target.
        winner: ObjectKey,
    },
    /// No such object.
    TargetNotFound,
}

/// Every policy's standing on each of its targets. Of the policies naming one target, the
/// oldest (by creation time, then namespace/name) holds it, as Gateway API specifies for
/// conflicting policies; `exists` says whether a target is there.
pub fn standings<'a>(
    policies: impl IntoIterator<Item = &'a TailscaleRoutePolicy>,
    exists: impl Fn(&str, &PolicyTargetRef) -> bool,
) -> BTreeMap<ObjectKey, Vec<(PolicyTargetRef, Standing)>> {
    let mut by_age: Vec<&TailscaleRoutePolicy> = policies.into_iter().collect();
    by_age.sort_by(|a, b| {
        let time = |p: &TailscaleRoutePolicy| p.metadata.creation_timestamp.as_ref().map(|t| t.0);
        time(a).cmp(&time(b)).then_with(|| ObjectKey::of(&a.metadata).cmp(&ObjectKey::of(&b.metadata)))
    });
    let mut holders: BTreeMap<(String, PolicyTargetRef), ObjectKey> = BTreeMap::new();
    let mut out: BTreeMap<ObjectKey, Vec<(PolicyTargetRef, Standing)>> = BTreeMap::new();
    for p in by_age {
        let key = ObjectKey::of(&p.metadata);
        for t in &p.spec.target_refs {
            let standing = if !exists(&key.namespace, t) {
                Standing::TargetNotFound
            } else {
                match holders.entry((key.namespace.clone(), t.clone())) {
                    std::collections::btree_map::Entry::Occupied(e) => Standing::Conflicted { winner: e.get().clone() },
                    std::collections::btree_map::Entry::Vacant(e) => {
                        e.insert(key.clone());
                        Standing::Accepted
                    }
                }
            };
            out.entry(key.clone()).or_default().push((t.clone(), standing));
        }
    }
    out
}

/// The `controllerName` of our entries in a policy's status.
pub const CONTROLLER_NAME: &str = "gateway.tailscale.com/tailscale-gateway";

/// A policy's status: per target, `Accepted` True, or False with reason `Conflicted` (naming the
/// policy that holds the target), `TargetNotFound` or `Invalid` (the spec's errors). Conditions
/// keep their transition time from `previous` while unchanged. Entries of other controllers
/// (Envoy Gateway writes its own for the routes and Gateways it attaches the policy to) are kept.
pub fn status(
    policy: &TailscaleRoutePolicy,
    standings: &[(PolicyTargetRef, Standing)],
    now: k8s_openapi::jiff::Timestamp,
) -> crate::api::TailscaleRoutePolicyStatus {
    use crate::api::PolicyAncestorStatus;
    use crate::conditions::{Desired, condition};
    let errors = validate(&policy.spec);
    let previous = policy.status.as_ref().map(|s| s.ancestors.as_slice()).unwrap_or_default();
    let ancestors: Vec<PolicyAncestorStatus> = standings
        .iter()
        .map(|(target, standing)| {
            let (ok, reason, message) = match standing {
                _ if !errors.is_empty() => (
                    false,
                    "Invalid",
                    format!(
                        "{}; requests on its targets are denied until it is fixed",
                        crate::field::summarize(
                            "TailscaleRoutePolicy",
                            policy.metadata.name.as_deref().unwrap_or_default(),
                            &errors,
                        )
                    ),
                ),
                Standing::Accepted => (true, "Accepted", format!("enforced on {} {}", target.kind, target.name)),
                Standing::Conflicted { winner } => (
                    false,
                    "Conflicted",
                    format!("{} {} is held by the older TailscaleRoutePolicy {winner}", target.kind, target.name),
                ),
                Standing::TargetNotFound => {
                    (false, "TargetNotFound", format!("{} {} does not exist (yet)", target.kind, target.name))
                }
            };
            let before: &[crate::api::Condition] = previous
                .iter()
                .find(|a| a.ancestor_ref == ancestor_ref(policy, target) && a.controller_name == CONTROLLER_NAME)
                .map(|a| a.conditions.as_slice())
                .unwrap_or_default();
            let accepted =
                condition(Desired { type_: "Accepted", ok, reason, message }, policy.metadata.generation, now, before);
            PolicyAncestorStatus {
                ancestor_ref: ancestor_ref(policy, target),
                controller_name: CONTROLLER_NAME.to_string(),
                conditions: vec![accepted],
            }
        })
        .collect();
    let others = previous.iter().filter(|a| a.controller_name != CONTROLLER_NAME).cloned();
    crate::api::TailscaleRoutePolicyStatus { ancestors: others.chain(ancestors).collect() }
}

/// Our status entry's reference to a target (in the policy's namespace).
fn ancestor_ref(policy: &TailscaleRoutePolicy, t: &PolicyTargetRef) -> crate::api::AncestorRef {
    crate::api::AncestorRef {
        group: t.group.clone(),
        kind: t.kind.clone(),
        name: t.name.clone(),
        namespace: policy.metadata.namespace.clone(),
        section_name: t.section_name.clone(),
        port: None,
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
    use serde_json::json;

    use super::*;

    fn spec(v: Value) -> TailscaleRoutePolicySpec {
        serde_json::from_value(v).expect("a policy spec")
    }

    fn admins() -> TailscaleRoutePolicySpec {
        spec(json!({
            "targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "web"}],
            "rules": [
                {"name": "admins", "matches": [
                    {"identity": {"users": ["alice@example.com"]}, "path": {"value": "/admin"}},
                    {"identity": {"capabilities": ["example.com/cap/admin"]}, "path": {"value": "/admin"}}],
                 "action": {"type": "Allow", "requestHeaders": {"set": [{"name": "X-Role", "value": "admin"}]},
                            "timeout": "30s"}},
                {"matches": [{"path": {"value": "/admin"}}],
                 "action": {"type": "Deny", "deny": {"reason": "admins only"}}},
                {"matches": [{"method": "DELETE"}], "action": {"type": "Deny", "deny": {"statusCode": 405}}}
            ],
            "defaultAction": "Allow"
        }))
    }

    fn request<'a>(path: &'a str, method: &'a str, headers: &[(&str, &'a str)], via: bool) -> Request<'a> {
        Request {
            path,
            method,
            headers: headers.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            via_ingress_proxy: via,
        }
    }

    #[test]
    fn the_first_matching_rule_decides() {
        let p = admins();
        assert!(validate(&p).is_empty(), "{:?}", validate(&p));
        let alice = [(USER_LOGIN_HEADER, "alice@example.com")];
        let v = decide(&p, &request("/admin/users", "GET", &alice, true));
        assert!(v.allow);
        assert_eq!(v.rule.as_deref(), Some("admins"));
        assert_eq!(v.set, vec![("x-role".to_string(), "admin".to_string())]);
        assert_eq!(v.envoy_headers(), vec![("x-envoy-upstream-rq-timeout-ms".to_string(), "30000".to_string())]);
        let bob = [(USER_LOGIN_HEADER, "bob@example.com")];
        let v = decide(&p, &request("/admin", "GET", &bob, true));
        assert_eq!(
            (v.allow, v.status, v.reason.as_str(), v.rule.as_deref()),
            (false, 403, "admins only", Some("rules[1]"))
        );
        // Whole segments: /administrator is not under /admin.
        assert!(decide(&p, &request("/administrator", "GET", &bob, true)).allow);
        let v = decide(&p, &request("/x", "DELETE", &bob, true));
        assert_eq!((v.allow, v.status), (false, 405));
        // A capability granted by the tailnet policy (a group or a tag, through a grant).
        let caps = [(APP_CAPABILITIES_HEADER, r#"{"example.com/cap/admin":[{}]}"#)];
        assert!(decide(&p, &request("/admin", "GET", &caps, true)).allow);
        let garbage = [(APP_CAPABILITIES_HEADER, "not json")];
        assert!(!decide(&p, &request("/admin", "GET", &garbage, true)).allow);
    }

    #[test]
    fn identity_that_did_not_come_through_an_ingress_proxy_is_ignored_and_stripped() {
        let p = admins();
        let forged = [(USER_LOGIN_HEADER, "alice@example.com"), ("tailscale-user-name", "Alice")];
        let v = decide(&p, &request("/admin", "GET", &forged, false));
        assert!(!v.allow, "a forged login must not match");
        let v = decide(&p, &request("/public", "GET", &forged, false));
        assert!(v.allow);
        assert_eq!(v.strip, vec![USER_LOGIN_HEADER.to_string(), "tailscale-user-name".to_string()]);
        assert!(decide(&p, &request("/public", "GET", &forged, true)).strip.is_empty());
    }

    #[test]
    fn the_crd_has_kubectl_columns_and_a_status_subresource() {
        use kube_core::CustomResourceExt;
        let crd = TailscaleRoutePolicy::crd();
        assert_eq!(crd.metadata.name.as_deref(), Some("tailscaleroutepolicies.gateway.tailscale.com"));
        let version = &crd.spec.versions[0];
        let columns: Vec<&str> = version.additional_printer_columns.iter().flatten().map(|c| c.name.as_str()).collect();
        assert_eq!(columns, ["TARGETS", "DEFAULT", "ACCEPTED", "AGE"]);
        assert!(version.subresources.as_ref().is_some_and(|s| s.status.is_some()));
        assert_eq!(crd.spec.names.short_names, Some(vec!["tsrp".to_string()]));
    }

    #[test]
    fn a_rule_can_send_requests_to_another_backend() {
        let p = spec(json!({
            "targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "web"}],
            "rules": [{"matches": [{"headers": [{"name": "X-Canary", "value": "1"}]}],
                       "action": {"type": "Allow", "backendRef": {"name": "web-canary"}}}]}));
        assert!(validate(&p).is_empty(), "{:?}", validate(&p));
        assert_eq!(decide(&p, &request("/", "GET", &[("x-canary", "1")], false)).reroute, Some(0));
        assert_eq!(decide(&p, &request("/", "GET", &[], false)).reroute, None);
        let bad = spec(json!({
            "targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "web"}],
            "rules": [{"action": {"type": "Deny", "backendRef": {"kind": "Service", "group": "", "name": "x"}}}]}));
        let errors: Vec<String> = validate(&bad).iter().map(ToString::to_string).collect();
        for want in [
            "spec.rules[0].action.backendRef: Forbidden: only with type Allow",
            "spec.rules[0].action.backendRef.group: Unsupported value: \"\"",
            "spec.rules[0].action.backendRef.kind: Unsupported value: \"Service\"",
        ] {
            assert!(errors.iter().any(|e| e.starts_with(want)), "{want:?} not in {errors:#?}");
        }
    }

    #[test]
    fn default_deny() {
        let mut p = admins();
        p.default_action = Some("Deny".into());
        let v = decide(&p, &request("/public", "GET", &[], true));
        assert_eq!((v.allow, v.status, v.rule), (false, 403, None));
    }

    #[test]
    fn every_bad_field_is_named() {
        let p = spec(json!({
            "targetRefs": [
                {"group": "apps", "kind": "Deployment", "name": "web"},
                {"group": "gateway.tailscale.com", "kind": "TailscaleServices", "name": "Bad_Name", "sectionName": "x"},
                {"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "web", "sectionName": "rule-1"},
                {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "eg", "sectionName": "http"}],
            "rules": [
                {"name": "Not A Label", "matches": [
                    {"identity": {}, "path": {"type": "Regex", "value": "admin"}, "method": "FETCH",
                     "headers": [{"name": "Tailscale-User-Login", "value": "x"}, {"name": "bad name", "value": "x"}]}],
                 "action": {"type": "Deny", "timeout": "5s", "deny": {"statusCode": 200}}},
                {"matches": [{"identity": {"capabilities": ["admin"], "users": ["a b"]}}],
                 "action": {"type": "Allow", "retry": {"attempts": 0, "perTryTimeout": "soon", "on": ["always"]},
                            "requestHeaders": {"set": [{"name": "Tailscale-User-Login", "value": "x"}],
                                               "remove": ["X-Fine", "Host", "x-envoy-max-retries"]}}},
                {"action": {"type": "Maybe"}}],
            "defaultAction": "Perhaps"
        }));
        let errors: Vec<String> = validate(&p).iter().map(ToString::to_string).collect();
        for want in [
            "spec.targetRefs[0].kind: Unsupported value: \"Deployment.apps\"",
            "spec.targetRefs[1].name: Invalid value: \"Bad_Name\"",
            "spec.targetRefs[1].sectionName: Forbidden",
            "spec.targetRefs[2].sectionName: Forbidden: only a Gateway's listener",
            "spec.rules[0].name: Invalid value: \"Not A Label\"",
            "spec.rules[0].matches[0].identity: Required value",
            "spec.rules[0].matches[0].path.type: Unsupported value: \"Regex\"",
            "spec.rules[0].matches[0].path.value: Invalid value: \"admin\"",
            "spec.rules[0].matches[0].method: Unsupported value: \"FETCH\"",
            "spec.rules[0].matches[0].headers[0].name: Forbidden",
            "spec.rules[0].matches[0].headers[1].name: Invalid value: \"bad name\"",
            "spec.rules[0].action.deny.statusCode: Invalid value: \"200\"",
            "spec.rules[0].action.timeout: Forbidden",
            "spec.rules[1].matches[0].identity.users[0]: Invalid value: \"a b\"",
            "spec.rules[1].matches[0].identity.capabilities[0]: Invalid value: \"admin\"",
            "spec.rules[1].action.retry.attempts: Invalid value: \"0\"",
            "spec.rules[1].action.retry.perTryTimeout: Invalid value: \"soon\"",
            "spec.rules[1].action.retry.on[0]: Unsupported value: \"always\"",
            "spec.rules[1].action.requestHeaders.set[0].name: Invalid value: \"Tailscale-User-Login\"",
            "spec.rules[1].action.requestHeaders.remove[1]: Invalid value: \"Host\"",
            "spec.rules[1].action.requestHeaders.remove[2]: Invalid value: \"x-envoy-max-retries\"",
            "spec.rules[2].action.type: Unsupported value: \"Maybe\"",
            "spec.defaultAction: Unsupported value: \"Perhaps\"",
        ] {
            assert!(errors.iter().any(|e| e.starts_with(want)), "{want:?} not in {errors:#?}");
        }
        assert!(!errors.iter().any(|e| e.starts_with("spec.targetRefs[3]")), "a Gateway listener is fine: {errors:#?}");
        let empty = spec(json!({}));
        let errors: Vec<String> = validate(&empty).iter().map(ToString::to_string).collect();
        assert_eq!(errors, ["spec.targetRefs: Required value: at least one target"]);
    }

    #[test]
    fn the_oldest_policy_holds_a_target() {
        let policy = |name: &str, secs: i64, targets: &[&str]| TailscaleRoutePolicy {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("apps".into()),
                creation_timestamp: Some(Time(k8s_openapi::jiff::Timestamp::from_second(secs).expect("a timestamp"))),
                ..ObjectMeta::default()
            },
            spec: spec(json!({"targetRefs": targets.iter().map(|t| json!(
                {"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": t})).collect::<Vec<_>>()})),
            status: None,
        };
        let (old, new, lonely) =
            (policy("zz-old", 10, &["web"]), policy("aa-new", 20, &["web", "api"]), policy("x", 5, &["gone"]));
        let got = standings([&new, &old, &lonely], |ns, t| ns == "apps" && t.name != "gone");
        let route = |name: &str| PolicyTargetRef {
            group: GATEWAY_API_GROUP.into(),
            kind: "HTTPRoute".into(),
            name: name.into(),
            section_name: None,
        };
        assert_eq!(got[&ObjectKey::new("apps", "zz-old")], vec![(route("web"), Standing::Accepted)]);
        assert_eq!(
            got[&ObjectKey::new("apps", "aa-new")],
            vec![
                (route("web"), Standing::Conflicted { winner: ObjectKey::new("apps", "zz-old") }),
                (route("api"), Standing::Accepted)
            ]
        );
        assert_eq!(got[&ObjectKey::new("apps", "x")], vec![(route("gone"), Standing::TargetNotFound)]);
        let now = k8s_openapi::jiff::Timestamp::from_second(100).expect("a timestamp");
        let s = status(&new, &got[&ObjectKey::new("apps", "aa-new")], now);
        let reasons: Vec<(&str, &str, &str)> = s
            .ancestors
            .iter()
            .map(|a| (a.ancestor_ref.name.as_str(), a.conditions[0].status.as_str(), a.conditions[0].reason.as_str()))
            .collect();
        assert_eq!(reasons, [("web", "False", "Conflicted"), ("api", "True", "Accepted")]);
        assert!(s.ancestors[0].conditions[0].message.contains("apps/zz-old"), "{s:?}");
        assert_eq!(s.ancestors[0].controller_name, CONTROLLER_NAME);
    }
}

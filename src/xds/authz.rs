//! Envoy's external authorization service (`envoy.service.auth.v3.Authorization`) for
//! TailscaleRoutePolicies: Envoy asks about each request on a route a policy targets, naming the
//! policy in the route's `context_extensions`; the answer comes from the policy as the cache has
//! it now ([`crate::core::policy::decide`]), so a policy change applies to the next request.
//!
//! A request's identity headers are trusted only when it came straight from one of our ingress
//! proxies (its source address is one of their pods'); on any other request they are ignored and
//! removed before it goes on.

use std::net::IpAddr;

use envoy_types::ext_authz::v3::pb::{
    Authorization, CheckRequest, CheckResponse, DeniedHttpResponse, HeaderAppendAction, HeaderValue, HeaderValueOption,
    HttpResponse, HttpStatus, OkHttpResponse,
};
use envoy_types::pb::google::rpc;
use tonic::{Request, Response, Status};

use crate::cache::Cache;
use crate::core::ObjectKey;
use crate::core::authz::POLICY_CONTEXT_KEY;
use crate::core::policy::{self, Verdict};

/// gRPC status codes of the answer (google.rpc.Code).
const OK: i32 = 0;
const PERMISSION_DENIED: i32 = 7;

/// The authorization service over the shared cache.
#[derive(Clone)]
pub struct AuthzService {
    cache: Cache,
    metrics: super::XdsMetrics,
}

impl AuthzService {
    /// A service reading `cache`.
    pub fn new(cache: Cache, metrics: super::XdsMetrics) -> Self {
        Self { cache, metrics }
    }

    /// The decision for one check request, and whether its identity was believed.
    pub fn decide(&self, req: &CheckRequest) -> (Verdict, bool) {
        let attrs = req.attributes.as_ref();
        let http = attrs.and_then(|a| a.request.as_ref()).and_then(|r| r.http.as_ref());
        let source =
            attrs.and_then(|a| a.source.as_ref()).and_then(|s| s.address.as_ref()).and_then(|a| match &a.address {
                Some(envoy_types::pb::envoy::config::core::v3::address::Address::SocketAddress(s)) => {
                    s.address.parse::<IpAddr>().ok()
                }
                _ => None,
            });
        let policy_key = attrs
            .and_then(|a| a.context_extensions.get(POLICY_CONTEXT_KEY))
            .and_then(|k| k.split_once('/'))
            .map(|(ns, name)| ObjectKey::new(ns, name));
        let idx = self.cache.read();
        let via_ingress_proxy = source.is_some_and(|ip| idx.is_ingress_proxy(ip));
        let (path, method) = http.map_or(("", ""), |h| (h.path.as_str(), h.method.as_str()));
        let request = policy::Request {
            path: path.split(['?', '#']).next().unwrap_or_default(),
            method,
            headers: http
                .map(|h| h.headers.iter().map(|(k, v)| (k.to_ascii_lowercase(), v.as_str())).collect())
                .unwrap_or_default(),
            via_ingress_proxy,
        };
        let stored = policy_key.as_ref().and_then(|k| idx.route_policy_entry(k));
        let spec = stored.as_ref().map(|s| &s.object.spec);
        let mut verdict = match spec {
            // Before the cache has loaded, a missing policy proves nothing: fail closed.
            _ if !idx.synced() => policy::Verdict {
                allow: false,
                status: 503,
                reason: String::from("route policies are not loaded yet; try again"),
                ..policy::Verdict::default()
            },
            Some(spec) if !policy::validate(spec).is_empty() => policy::invalid_verdict(),
            Some(spec) => policy::decide(spec, &request),
            // The policy was deleted since Envoy Gateway last translated: nothing to enforce but
            // the removal of untrusted identity headers.
            None => policy::decide(&Default::default(), &request),
        };
        // Only our answer names the backend a rule sends to; a client's copy goes.
        match (verdict.reroute, &policy_key) {
            (Some(rule), Some(key)) if verdict.allow => {
                verdict.set.push((policy::REROUTE_HEADER.to_string(), format!("{key}/{rule}")));
            }
            _ if request.headers.contains_key(policy::REROUTE_HEADER) => {
                verdict.strip.push(policy::REROUTE_HEADER.to_string());
            }
            _ => {}
        }
        (verdict, via_ingress_proxy)
    }
}

/// Envoy's answer for a verdict.
pub fn check_response(v: &Verdict) -> CheckResponse {
    let header = |(name, value): &(String, String), action: HeaderAppendAction| HeaderValueOption {
        header: Some(HeaderValue { key: name.clone(), value: value.clone(), ..HeaderValue::default() }),
        append_action: action as i32,
        ..HeaderValueOption::default()
    };
    if v.allow {
        let mut headers: Vec<HeaderValueOption> =
            v.set.iter().map(|h| header(h, HeaderAppendAction::OverwriteIfExistsOrAdd)).collect();
        headers.extend(v.add.iter().map(|h| header(h, HeaderAppendAction::AppendIfExistsOrAdd)));
        headers.extend(v.envoy_headers().iter().map(|h| header(h, HeaderAppendAction::OverwriteIfExistsOrAdd)));
        let ok = OkHttpResponse { headers, headers_to_remove: v.strip.clone(), ..OkHttpResponse::default() };
        return CheckResponse {
            status: Some(rpc::Status { code: OK, ..rpc::Status::default() }),
            http_response: Some(HttpResponse::OkResponse(ok)),
            ..CheckResponse::default()
        };
    }
    let content_type = ("content-type".to_string(), "text/plain; charset=utf-8".to_string());
    let denied = DeniedHttpResponse {
        status: Some(HttpStatus { code: i32::from(v.status) }),
        headers: vec![header(&content_type, HeaderAppendAction::OverwriteIfExistsOrAdd)],
        body: format!("{}\n", v.reason),
    };
    CheckResponse {
        status: Some(rpc::Status { code: PERMISSION_DENIED, message: v.reason.clone(), ..rpc::Status::default() }),
        http_response: Some(HttpResponse::DeniedResponse(denied)),
        ..CheckResponse::default()
    }
}

#[tonic::async_trait]
impl Authorization for AuthzService {
    async fn check(&self, request: Request<CheckRequest>) -> Result<Response<CheckResponse>, Status> {
        let start = std::time::Instant::now();
        let (verdict, via_ingress_proxy) = self.decide(request.get_ref());
        self.metrics.decision(verdict.allow, via_ingress_proxy);
        self.metrics.observe("Check", start.elapsed());
        if !verdict.allow {
            tracing::debug!(rule = ?verdict.rule, status = verdict.status, "route policy denied a request");
        }
        Ok(Response::new(check_response(&verdict)))
    }
}

/// Check requests as Envoy sends them, for tests and benchmarks.
#[cfg(any(test, feature = "test-util"))]
pub mod testing {
    use envoy_types::pb::envoy::config::core::v3::{Address, SocketAddress, address, socket_address};
    use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest, attribute_context};

    use super::POLICY_CONTEXT_KEY;

    /// A Check for `method path` from `source` with `headers`, on a route whose settings name
    /// `policy` (`namespace/name`).
    pub fn check_request(
        policy: &str,
        source: &str,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> CheckRequest {
        CheckRequest {
            attributes: Some(AttributeContext {
                source: Some(attribute_context::Peer {
                    address: Some(Address {
                        address: Some(address::Address::SocketAddress(SocketAddress {
                            address: source.into(),
                            port_specifier: Some(socket_address::PortSpecifier::PortValue(40000)),
                            ..SocketAddress::default()
                        })),
                    }),
                    ..attribute_context::Peer::default()
                }),
                request: Some(attribute_context::Request {
                    http: Some(attribute_context::HttpRequest {
                        method: method.into(),
                        path: path.into(),
                        headers: headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
                        ..attribute_context::HttpRequest::default()
                    }),
                    ..attribute_context::Request::default()
                }),
                context_extensions: [(POLICY_CONTEXT_KEY.to_string(), policy.to_string())].into(),
                ..AttributeContext::default()
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::core::Resource;

    fn request(source: &str, path: &str, headers: &[(&str, &str)]) -> CheckRequest {
        testing::check_request("apps/p", source, "GET", path, headers)
    }

    fn service(spec: serde_json::Value) -> AuthzService {
        let cache = Cache::default();
        cache.apply(
            Resource::from_value(
                json!({"apiVersion": "gateway.tailscale.com/v1alpha1", "kind": "TailscaleRoutePolicy",
                "metadata": {"name": "p", "namespace": "apps"}, "spec": spec}),
            )
            .expect("a policy"),
        );
        cache.set_ingress_pod(ObjectKey::new("apps", "proxy-0"), vec!["10.0.0.7".parse().expect("an IP")]);
        for kind in crate::core::Kind::ALL {
            cache.mark_synced(kind);
        }
        AuthzService::new(cache, super::super::XdsMetrics::default())
    }

    #[test]
    fn answers_as_envoy_expects() {
        let svc = service(json!({
            "targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "web"}],
            "rules": [{"matches": [{"identity": {"users": ["alice@example.com"]}}],
                       "action": {"type": "Allow", "backendRef": {"name": "canary"}}}],
            "defaultAction": "Deny"}));
        let alice = [("tailscale-user-login", "alice@example.com")];
        let (v, trusted) = svc.decide(&request("10.0.0.7", "/x?y=1", &alice));
        assert!(v.allow && trusted);
        assert!(v.set.contains(&(policy::REROUTE_HEADER.to_string(), "apps/p/0".to_string())), "{v:?}");
        let (v, trusted) = svc.decide(&request(
            "10.0.0.8",
            "/x",
            &[("tailscale-user-login", "alice@example.com"), (policy::REROUTE_HEADER, "apps/p/0")],
        ));
        assert!(!v.allow && !trusted, "forged identity from elsewhere: the default denies");
        let answer = check_response(&v);
        let Some(HttpResponse::DeniedResponse(denied)) = answer.http_response else { panic!("{answer:?}") };
        assert_eq!(denied.status.map(|s| s.code), Some(403));
        assert_eq!(answer.status.map(|s| s.code), Some(PERMISSION_DENIED));
    }

    #[test]
    fn nothing_is_allowed_before_the_cache_has_loaded() {
        let svc = AuthzService::new(Cache::default(), super::super::XdsMetrics::default());
        let (v, _) = svc.decide(&request("10.0.0.7", "/", &[]));
        assert_eq!((v.allow, v.status), (false, 503));
    }

    #[test]
    fn an_invalid_policy_denies_everything() {
        let svc = service(json!({"targetRefs": [], "defaultAction": "Allow"}));
        let (v, _) = svc.decide(&request("10.0.0.7", "/", &[]));
        assert!(!v.allow, "fails closed");
        assert!(v.reason.contains("invalid"), "{v:?}");
    }
}

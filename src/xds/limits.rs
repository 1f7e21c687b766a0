//! Limits on what one extension call may make the server hold, checked on the wire bytes before
//! anything is decoded.
//!
//! Protobuf decoding amplifies: an empty `Cluster` is 2 bytes on the wire and 3,360 bytes once
//! decoded, so a 2 MB PostTranslateModify of 1,000,000 empty clusters used to cost 14 s and 5 GB.
//! The lists that amplify most (clusters, listeners, route configurations, virtual hosts, routes,
//! filter chains, locality and endpoint lists, secrets, extension resources) are counted by walking
//! the message's tags along their known field paths, which costs a few milliseconds per megabyte
//! and allocates nothing, and a call over the limit is refused with `RESOURCE_EXHAUSTED` naming
//! the list, its count and the flag. Calls are also bounded in number: at most
//! `max_concurrent_calls` bodies are buffered and decoded at once, the others wait their turn.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::future::BoxFuture;
use http_body_util::BodyExt;
use tokio::sync::Semaphore;
use tonic::Status;
use tonic::body::Body;
use tonic::server::NamedService;

/// Default largest number of elements in any one list of a call (`--xds-max-resources-per-call`).
pub const DEFAULT_MAX_RESOURCES: usize = 20_000;
/// Default number of extension calls decoded and served at once (`--xds-max-concurrent-calls`).
pub const DEFAULT_MAX_CONCURRENT_CALLS: usize = 8;

/// A list the limit applies to, and where it sits in a message: each entry is a field number,
/// the list's name when that field is a counted list, and the fields counted inside it.
struct Field {
    number: u32,
    counted: Option<&'static str>,
    inside: &'static [Field],
}

const fn list(number: u32, name: &'static str, inside: &'static [Field]) -> Field {
    Field { number, counted: Some(name), inside }
}

const fn within(number: u32, inside: &'static [Field]) -> Field {
    Field { number, counted: None, inside }
}

// envoy.config.* field numbers (envoy-types' generated code) and ours (src/xds/proto/extension/).
const ENDPOINTS: &[Field] = &[list(2, "locality endpoint groups", &[list(2, "endpoints", &[])])];
const CLUSTER: &[Field] = &[within(33, ENDPOINTS)];
const LISTENER: &[Field] = &[list(3, "filter chains", &[])];
const VIRTUAL_HOST: &[Field] = &[list(3, "routes", &[])];
const ROUTE_CONFIGURATION: &[Field] = &[list(2, "virtual hosts", VIRTUAL_HOST)];
const CONTEXT: &[Field] = &[list(1, "extension resources", &[]), list(3, "extension policies", &[])];

/// The counted lists of each method's request.
fn request_fields(method: &str) -> Option<&'static [Field]> {
    const TRANSLATE: &[Field] = &[
        within(1, CONTEXT),
        list(2, "clusters", CLUSTER),
        list(3, "secrets", &[]),
        list(4, "listeners", LISTENER),
        list(5, "route configurations", ROUTE_CONFIGURATION),
    ];
    const CLUSTER_MODIFY: &[Field] = &[within(1, CLUSTER), within(2, CONTEXT)];
    const ROUTE_MODIFY: &[Field] = &[within(2, CONTEXT)];
    const LISTENER_MODIFY: &[Field] = &[within(1, LISTENER), within(2, CONTEXT)];
    const VIRTUAL_HOST_MODIFY: &[Field] = &[within(1, VIRTUAL_HOST)];
    const ENDPOINTS_MODIFY: &[Field] = &[within(1, ENDPOINTS)];
    Some(match method {
        "PostTranslateModify" => TRANSLATE,
        "PostClusterModify" => CLUSTER_MODIFY,
        "PostRouteModify" => ROUTE_MODIFY,
        "PostHTTPListenerModify" => LISTENER_MODIFY,
        "PostVirtualHostModify" => VIRTUAL_HOST_MODIFY,
        "PostEndpointsModify" => ENDPOINTS_MODIFY,
        _ => return None,
    })
}

/// A protobuf varint at `buf[*at..]`, advancing `at`; `None` when malformed or cut short.
fn varint(buf: &[u8], at: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *buf.get(*at)?;
        *at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            return Some(value);
        }
    }
    None
}

/// Adds the elements of the counted lists in `msg` (a protobuf message) to `counts`. Walks tags
/// only; stops quietly at malformed input, which the decoder then refuses with its own error.
fn count(msg: &[u8], fields: &'static [Field], counts: &mut Vec<(&'static str, usize)>) {
    let mut at = 0;
    while at < msg.len() {
        let Some(tag) = varint(msg, &mut at) else { return };
        let (number, wire) = (tag >> 3, tag & 7);
        let skip = match wire {
            0 => match varint(msg, &mut at) {
                Some(_) => 0,
                None => return,
            },
            1 => 8,
            5 => 4,
            2 => {
                let Some(len) = varint(msg, &mut at).and_then(|l| usize::try_from(l).ok()) else { return };
                let Some(payload) = at.checked_add(len).and_then(|end| msg.get(at..end)) else { return };
                if let Some(field) = fields.iter().find(|f| u64::from(f.number) == number) {
                    if let Some(name) = field.counted {
                        match counts.iter_mut().find(|(n, _)| *n == name) {
                            Some((_, c)) => *c += 1,
                            None => counts.push((name, 1)),
                        }
                    }
                    if !field.inside.is_empty() {
                        count(payload, field.inside, counts);
                    }
                }
                len
            }
            // Groups (3, 4) are not in these messages; anything else is malformed.
            _ => return,
        };
        at = match at.checked_add(skip) {
            Some(next) if next <= msg.len() => next,
            _ => return,
        };
    }
}

/// The counted lists of a `method` request whose protobuf encoding is `msg`, in the order first
/// seen. Empty for methods without lists.
pub fn list_sizes(method: &str, msg: &[u8]) -> Vec<(&'static str, usize)> {
    let mut counts = Vec::new();
    if let Some(fields) = request_fields(method) {
        count(msg, fields, &mut counts);
    }
    counts
}

/// Checks one gRPC request body (5-byte frame header, then the message) of `method` against
/// `max_resources`. A compressed or malformed frame passes: the decoder refuses it.
pub fn check(method: &str, body: &[u8], max_resources: usize) -> Result<(), Status> {
    let Some((&[0, a, b, c, d], msg)) = body.split_first_chunk::<5>() else { return Ok(()) };
    let len = u32::from_be_bytes([a, b, c, d]) as usize;
    let msg = msg.get(..len).unwrap_or(msg);
    match list_sizes(method, msg).into_iter().find(|(_, n)| *n > max_resources) {
        Some((name, n)) => Err(Status::resource_exhausted(format!(
            "{method} carries {n} {name}: more than --xds-max-resources-per-call ({max_resources}) allows in one call"
        ))),
        None => Ok(()),
    }
}

/// Limits for one server.
#[derive(Debug)]
pub struct CallLimits {
    /// Largest element count of any one list in a call.
    pub max_resources: usize,
    /// Largest message, in bytes (the body is collected up to this plus its frame header).
    pub max_message_size: usize,
    /// Permits for calls being decoded and served.
    calls: Arc<Semaphore>,
}

impl CallLimits {
    /// Limits of `max_resources` per list, `max_message_size` bytes and `max_concurrent_calls` at once.
    pub fn new(max_resources: usize, max_message_size: usize, max_concurrent_calls: usize) -> Arc<Self> {
        Arc::new(Self { max_resources, max_message_size, calls: Arc::new(Semaphore::new(max_concurrent_calls.max(1))) })
    }
}

/// The extension service behind [`CallLimits`].
#[derive(Clone)]
pub struct Limited<S> {
    inner: S,
    limits: Arc<CallLimits>,
}

impl<S> Limited<S> {
    /// `inner` behind `limits`.
    pub fn new(inner: S, limits: Arc<CallLimits>) -> Self {
        Self { inner, limits }
    }
}

impl<S: NamedService> NamedService for Limited<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> tower::Service<http::Request<Body>> for Limited<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<http::Response<Body>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        // The service that was polled ready serves this call; a clone takes its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let limits = self.limits.clone();
        Box::pin(async move {
            let method = req.uri().path().rsplit('/').next().unwrap_or_default().to_string();
            let Ok(_permit) = limits.calls.clone().acquire_owned().await else {
                return Ok(Status::unavailable("shutting down").into_http());
            };
            if request_fields(&method).is_none() {
                return inner.call(req).await;
            }
            let (parts, body) = req.into_parts();
            // Header and message; more is refused here rather than buffered.
            let most = limits.max_message_size.saturating_add(5);
            let bytes: Bytes = match http_body_util::Limited::new(body, most).collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(error) => {
                    let too_big = error.downcast_ref::<http_body_util::LengthLimitError>().is_some();
                    return Ok(match too_big {
                        true => Status::resource_exhausted(format!(
                            "{method}: message larger than --xds-max-message-size ({} bytes)",
                            limits.max_message_size
                        )),
                        false => Status::cancelled(format!("{method}: reading the request failed")),
                    }
                    .into_http());
                }
            };
            if let Err(status) = check(&method, &bytes, limits.max_resources) {
                tracing::warn!(hook = %method, error = status.message(), "extension call refused");
                return Ok(status.into_http());
            }
            let req = http::Request::from_parts(parts, Body::new(http_body_util::Full::new(bytes)));
            inner.call(req).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    use envoy_types::pb::envoy::config::endpoint::v3::{ClusterLoadAssignment, LbEndpoint, LocalityLbEndpoints};
    use envoy_types::pb::envoy::config::route::v3::{Route, RouteConfiguration, VirtualHost};
    use prost::Message;

    use crate::xds::pb::{
        ExtensionResource, PostClusterExtensionContext, PostClusterModifyRequest, PostTranslateExtensionContext,
        PostTranslateModifyRequest,
    };

    fn framed(msg: &impl Message) -> Vec<u8> {
        let bytes = msg.encode_to_vec();
        let mut out = vec![0];
        out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
        out.extend_from_slice(&bytes);
        out
    }

    #[test]
    fn lists_are_counted_along_their_paths() {
        let vhost = VirtualHost { name: "v".into(), routes: vec![Route::default(); 3], ..VirtualHost::default() };
        let req = PostTranslateModifyRequest {
            post_translate_context: Some(PostTranslateExtensionContext {
                extension_resources: vec![ExtensionResource::default(); 2],
            }),
            clusters: vec![
                Cluster {
                    load_assignment: Some(ClusterLoadAssignment {
                        endpoints: vec![LocalityLbEndpoints {
                            lb_endpoints: vec![LbEndpoint::default(); 4],
                            ..LocalityLbEndpoints::default()
                        }],
                        ..ClusterLoadAssignment::default()
                    }),
                    ..Cluster::default()
                },
                Cluster::default(),
            ],
            routes: vec![RouteConfiguration { virtual_hosts: vec![vhost.clone(), vhost], ..Default::default() }],
            ..PostTranslateModifyRequest::default()
        };
        let mut sizes = list_sizes("PostTranslateModify", &req.encode_to_vec());
        sizes.sort();
        assert_eq!(
            sizes,
            vec![
                ("clusters", 2),
                ("endpoints", 4),
                ("extension resources", 2),
                ("locality endpoint groups", 1),
                ("route configurations", 1),
                ("routes", 6),
                ("virtual hosts", 2),
            ]
        );
        assert!(check("PostTranslateModify", &framed(&req), 6).is_ok());
        let refused = check("PostTranslateModify", &framed(&req), 5).err().map(|s| (s.code(), s.message().to_string()));
        let Some((code, message)) = refused else { panic!("6 routes passed a limit of 5") };
        assert_eq!(code, tonic::Code::ResourceExhausted);
        assert!(message.contains("6 routes") && message.contains("--xds-max-resources-per-call (5)"), "{message}");
    }

    #[test]
    fn a_million_empty_clusters_are_refused_from_the_wire_bytes() {
        let msg = b"\x12\x00".repeat(1_000_000);
        let mut body = vec![0];
        body.extend_from_slice(&(msg.len() as u32).to_be_bytes());
        body.extend_from_slice(&msg);
        let started = std::time::Instant::now();
        let refused = check("PostTranslateModify", &body, DEFAULT_MAX_RESOURCES).err().map(|s| s.message().to_string());
        assert!(refused.as_deref().is_some_and(|m| m.contains("1000000 clusters")), "{refused:?}");
        assert!(started.elapsed() < std::time::Duration::from_secs(1), "{:?}", started.elapsed());
    }

    #[test]
    fn extension_resources_of_a_cluster_call_are_counted() {
        let req = PostClusterModifyRequest {
            cluster: Some(Cluster::default()),
            post_cluster_context: Some(PostClusterExtensionContext {
                backend_extension_resources: vec![ExtensionResource::default(); 11],
            }),
        };
        let refused = check("PostClusterModify", &framed(&req), 10).err().map(|s| s.message().to_string());
        assert!(refused.as_deref().is_some_and(|m| m.contains("11 extension resources")), "{refused:?}");
    }

    #[test]
    fn malformed_or_compressed_bodies_are_left_to_the_decoder() {
        for body in [
            &b""[..],
            b"\x00\x00\x00\x00\x03\x12\xff\xff",
            b"\x01\x00\x00\x00\x02\x12\x00",
            b"\x00\x00\x00\x00\x01\x07",
        ] {
            assert!(check("PostTranslateModify", body, 0).is_ok(), "{body:?}");
        }
        assert!(check("Unknown", b"\x00\x00\x00\x00\x02\x12\x00", 0).is_ok());
    }
}

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
//!
//! Counting those lists is not enough: any other repeated field (a cluster's health checks, a
//! route's headers to add, metadata maps) amplifies too. So every call's decoded size is also
//! estimated before decoding, by walking the whole message with a schema generated from the protos
//! (`generated/wire_schema.rs`): each message on the wire costs its Rust type's size, each string
//! or bytes field its length plus a `String`, each repeated number its width, and an element of a
//! list three times its size (a `Vec` grows by doubling, and while it moves the old buffer is still
//! held). The estimate is an upper bound (a message field that prost keeps inline is counted again,
//! a singular field sent twice is counted twice; `tests/decoded_size.rs` checks it against a
//! counting allocator) and a call above `--xds-max-decoded-size` is refused with `RESOURCE_EXHAUSTED`.

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
/// Default largest estimated decoded size of one call, in bytes (`--xds-max-decoded-size`).
pub const DEFAULT_MAX_DECODED_SIZE: usize = 512 << 20;

/// What a field holds once decoded.
#[derive(Clone, Copy, Debug)]
enum Held {
    /// A message, by its index in [`schema::MESSAGES`].
    Message(usize),
    /// A list (or map) of those messages.
    Messages(usize),
    /// A string or bytes.
    Bytes,
    /// A list of strings or bytes.
    Strings,
    /// A list of numbers of this many bytes each.
    Scalars(usize),
}

/// What an element of a list may take for its slot in the list: a `Vec` (or a map) doubles its
/// capacity as it grows, and holds the old buffer while moving to the new one.
const LIST_SLOT: usize = 3;

/// A message type: its size in Rust and its fields that allocate, sorted by field number.
struct Message {
    size: usize,
    fields: &'static [(u32, Held)],
}

/// A map's entry: a key and a value in a hash map's slot (the value's own message, if any, is
/// counted where it is reached).
const MAP_ENTRY: usize = 2 * size_of::<String>() + 16;

/// The depth prost stops decoding at.
const MAX_DEPTH: u32 = 100;

mod schema {
    use super::{Held, MAP_ENTRY, Message};
    include!("generated/wire_schema.rs");
}

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

/// One field of a protobuf message on the wire: its number, wire type and, for a
/// length-delimited field, its payload (empty for the other wire types).
struct WireField<'a> {
    number: u64,
    wire: u64,
    payload: &'a [u8],
}

/// The fields of `msg` in order, read from their tags without decoding anything. Ends quietly at
/// malformed input (and at groups, which these messages do not use): the decoder refuses it.
fn wire_fields(msg: &[u8]) -> impl Iterator<Item = WireField<'_>> {
    let mut at = 0;
    std::iter::from_fn(move || {
        if at >= msg.len() {
            return None;
        }
        let tag = varint(msg, &mut at)?;
        let (number, wire) = (tag >> 3, tag & 7);
        let len = match wire {
            0 => varint(msg, &mut at).map(|_| 0)?,
            1 => 8,
            5 => 4,
            2 => varint(msg, &mut at).and_then(|l| usize::try_from(l).ok())?,
            _ => return None,
        };
        let end = at.checked_add(len).filter(|end| *end <= msg.len())?;
        let payload = if wire == 2 { &msg[at..end] } else { &[][..] };
        at = end;
        Some(WireField { number, wire, payload })
    })
}

/// Adds the elements of the counted lists in `msg` (a protobuf message) to `counts`.
fn count(msg: &[u8], fields: &'static [Field], counts: &mut Vec<(&'static str, usize)>) {
    for WireField { number, wire, payload } in wire_fields(msg) {
        let Some(field) = fields.iter().find(|f| u64::from(f.number) == number && wire == 2) else { continue };
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
}

/// Adds to `total` what the fields of `msg`, a message of type `ty`, would allocate when decoded
/// (the message's own size is its holder's to count), and stops as soon as it passes `most`.
fn add_decoded(msg: &[u8], ty: &Message, depth: u32, most: usize, total: &mut usize) {
    if depth >= MAX_DEPTH {
        return;
    }
    for WireField { number, wire, payload } in wire_fields(msg) {
        if *total > most {
            return;
        }
        let held = u32::try_from(number)
            .ok()
            .and_then(|n| ty.fields.binary_search_by_key(&n, |(number, _)| *number).ok())
            .map(|i| ty.fields[i].1);
        let len = payload.len();
        let add = match (held, wire) {
            (Some(Held::Message(i) | Held::Messages(i)), 2) => {
                let inner = &schema::MESSAGES[i];
                add_decoded(payload, inner, depth + 1, most, total);
                match held {
                    Some(Held::Messages(_)) => LIST_SLOT * inner.size,
                    _ => inner.size,
                }
            }
            (Some(Held::Bytes), 2) => size_of::<String>() + len,
            (Some(Held::Strings), 2) => LIST_SLOT * size_of::<String>() + len,
            // Packed: at least one byte per number.
            (Some(Held::Scalars(width)), 2) => len.saturating_mul(LIST_SLOT * width),
            (Some(Held::Scalars(width)), _) => LIST_SLOT * width,
            _ => 0,
        };
        *total = total.saturating_add(add);
    }
}

/// An upper bound of what decoding the `method` request `msg` would allocate, in bytes; `None`
/// for methods without a request schema. Stops counting once past `most`.
pub fn decoded_size(method: &str, msg: &[u8], most: usize) -> Option<usize> {
    let ty = &schema::MESSAGES[schema::REQUESTS.iter().position(|r| *r == method)?];
    let mut total = ty.size;
    add_decoded(msg, ty, 0, most, &mut total);
    Some(total)
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
/// `max_resources` per list and `max_decoded` bytes once decoded, and returns the decoded-size
/// estimate. A compressed or malformed frame passes with 0: the decoder refuses it.
pub fn check(method: &str, body: &[u8], max_resources: usize, max_decoded: usize) -> Result<usize, Status> {
    let Some((&[0, a, b, c, d], msg)) = body.split_first_chunk::<5>() else { return Ok(0) };
    let len = u32::from_be_bytes([a, b, c, d]) as usize;
    let msg = msg.get(..len).unwrap_or(msg);
    if let Some((name, n)) = list_sizes(method, msg).into_iter().find(|(_, n)| *n > max_resources) {
        return Err(Status::resource_exhausted(format!(
            "{method} carries {n} {name}: more than --xds-max-resources-per-call ({max_resources}) allows in one call"
        )));
    }
    let size = decoded_size(method, msg, max_decoded).unwrap_or(0);
    if size > max_decoded {
        return Err(Status::resource_exhausted(format!(
            "{method}: {len} bytes that would take more than {} MiB decoded, above --xds-max-decoded-size ({} MiB)",
            size >> 20,
            max_decoded >> 20
        )));
    }
    Ok(size)
}

/// Limits for one server.
#[derive(Debug)]
pub struct CallLimits {
    /// Largest element count of any one list in a call.
    pub max_resources: usize,
    /// Largest message, in bytes (the body is collected up to this plus its frame header).
    pub max_message_size: usize,
    /// Largest decoded size of the calls in flight together, in bytes.
    pub max_decoded_size: usize,
    /// Permits for calls being decoded and served.
    calls: Arc<Semaphore>,
    /// The decoded size of the calls in flight, in KiB permits, of `total_kib`.
    decoded_kib: Arc<Semaphore>,
    total_kib: u32,
}

impl CallLimits {
    /// The limits `opts` names.
    pub fn new(opts: &super::XdsOptions) -> Arc<Self> {
        let total_kib = u32::try_from(opts.max_decoded_size >> 10).unwrap_or(u32::MAX).max(1);
        Arc::new(Self {
            max_resources: opts.max_resources_per_call,
            max_message_size: opts.max_message_size,
            max_decoded_size: opts.max_decoded_size,
            calls: Arc::new(Semaphore::new(opts.max_concurrent_calls.max(1))),
            decoded_kib: Arc::new(Semaphore::new(total_kib as usize)),
            total_kib,
        })
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
            let size = match check(&method, &bytes, limits.max_resources, limits.max_decoded_size) {
                Ok(size) => size,
                Err(status) => {
                    static THROTTLE: crate::errors::Throttle = crate::errors::Throttle::new();
                    match THROTTLE.allow() {
                        Some(left_out) => {
                            tracing::warn!(hook = %method, error = status.message(), left_out, "extension call refused")
                        }
                        None => tracing::debug!(hook = %method, error = status.message(), "extension call refused"),
                    }
                    return Ok(status.into_http());
                }
            };
            // Held until the answer is built: calls that together would decode to more wait.
            let kib = u32::try_from(size.div_ceil(1024)).unwrap_or(u32::MAX).clamp(1, limits.total_kib);
            let Ok(_decoded) = limits.decoded_kib.clone().acquire_many_owned(kib).await else {
                return Ok(Status::unavailable("shutting down").into_http());
            };
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
        assert!(check("PostTranslateModify", &framed(&req), 6, DEFAULT_MAX_DECODED_SIZE).is_ok());
        let refused = check("PostTranslateModify", &framed(&req), 5, DEFAULT_MAX_DECODED_SIZE)
            .err()
            .map(|s| (s.code(), s.message().to_string()));
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
        let refused = check("PostTranslateModify", &body, DEFAULT_MAX_RESOURCES, DEFAULT_MAX_DECODED_SIZE)
            .err()
            .map(|s| s.message().to_string());
        assert!(refused.as_deref().is_some_and(|m| m.contains("1000000 clusters")), "{refused:?}");
    }

    #[test]
    fn extension_resources_of_a_cluster_call_are_counted() {
        let req = PostClusterModifyRequest {
            cluster: Some(Cluster::default()),
            post_cluster_context: Some(PostClusterExtensionContext {
                backend_extension_resources: vec![ExtensionResource::default(); 11],
            }),
        };
        let refused = check("PostClusterModify", &framed(&req), 10, DEFAULT_MAX_DECODED_SIZE)
            .err()
            .map(|s| s.message().to_string());
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
            assert!(check("PostTranslateModify", body, 0, DEFAULT_MAX_DECODED_SIZE).is_ok(), "{body:?}");
        }
        assert!(check("Unknown", b"\x00\x00\x00\x00\x02\x12\x00", 0, 0).is_ok());
    }

    #[test]
    fn uncounted_lists_are_bounded_by_the_decoded_size() {
        use envoy_types::pb::envoy::config::core::v3::HealthCheck;
        // 8 is Cluster.health_checks: 4 million empty ones in one 16 MiB cluster.
        let mut cluster = Vec::new();
        for _ in 0..4_000_000 {
            cluster.extend_from_slice(b"\x42\x00");
        }
        let mut msg = vec![0x12];
        let mut len = cluster.len() as u64;
        while len >= 0x80 {
            msg.push((len as u8) | 0x80);
            len >>= 7;
        }
        msg.push(len as u8);
        msg.extend_from_slice(&cluster);
        let most = DEFAULT_MAX_DECODED_SIZE;
        let size = decoded_size("PostTranslateModify", &msg, most);
        assert!(size.is_some_and(|s| s > most), "{size:?}");
        // Without a limit the walk counts every one.
        let all = decoded_size("PostTranslateModify", &msg, usize::MAX);
        assert!(all.is_some_and(|s| s >= 4_000_000 * size_of::<HealthCheck>()), "{all:?}");
        let mut body = vec![0];
        body.extend_from_slice(&(msg.len() as u32).to_be_bytes());
        body.extend_from_slice(&msg);
        let refused = check("PostTranslateModify", &body, DEFAULT_MAX_RESOURCES, most).err();
        let message = refused.map(|s| s.message().to_string()).unwrap_or_default();
        assert!(message.contains("--xds-max-decoded-size (512 MiB)"), "{message}");
    }

    #[test]
    fn strings_maps_and_packed_numbers_count() {
        use envoy_types::pb::envoy::config::core::v3::Metadata;
        let cluster = Cluster {
            name: "x".repeat(1000),
            metadata: Some(Metadata {
                filter_metadata: (0..10).map(|i| (format!("k{i}"), Default::default())).collect(),
                ..Metadata::default()
            }),
            ..Cluster::default()
        };
        let req = PostClusterModifyRequest { cluster: Some(cluster), post_cluster_context: None };
        let size = decoded_size("PostClusterModify", &req.encode_to_vec(), usize::MAX).unwrap_or_default();
        let floor = size_of::<PostClusterModifyRequest>() + size_of::<Cluster>() + 1000 + 10 * MAP_ENTRY;
        assert!(size >= floor, "{size} < {floor}");
        assert_eq!(decoded_size("Unknown", b"", usize::MAX), None);
    }
}

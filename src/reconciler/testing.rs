//! In-memory doubles for exercising the reconciler without a cluster or a tailnet: a
//! [`MemoryTailscale`] implementing [`TailscaleApi`] with injectable 429/5xx faults and call
//! counters, and a [`FakeKube`] API server that records every request and keeps objects in memory.
//!
//! Controller tests plug [`FakeKube::serve`] behind `tower_test::mock::pair`; the benchmark uses
//! [`fake_client`]. Nothing here talks to the network.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};

use kube::runtime::reflector::store::Writer;

use super::owned::{self, OwnedWriters};
use super::{ApiFactory, OAuthCredentials, builders};
use crate::api::TailscaleTailnet;
use crate::tailscale::fake::{Refusal, Tailnet};
use crate::tailscale::{ApiError, ApiFuture, AuthKey, AuthKeyRequest, Device, TailscaleApi, VipService};

/// A fault to inject into the next matching call.
#[derive(Clone, Debug)]
struct Fault {
    op: Option<&'static str>,
    status: u16,
    /// Perform the call, then report the error (a response lost on the way back).
    after_effect: bool,
}

/// State of a [`MemoryTailscale`], open for tests to arrange and inspect.
#[derive(Debug, Default)]
pub struct MemoryState {
    /// The tailnet, the same model the HTTP fake keeps (with the real API's rules).
    pub tailnet: Tailnet,
    /// Calls per operation.
    pub calls: BTreeMap<&'static str, u64>,
    faults: VecDeque<Fault>,
}

/// An in-memory tailnet behind the [`TailscaleApi`] trait: [`Tailnet`], the model and rules
/// [`FakeTailscale`](crate::tailscale::fake::FakeTailscale) serves over HTTP, with injectable
/// faults and call counts.
#[derive(Debug, Default)]
pub struct MemoryTailscale {
    state: Mutex<MemoryState>,
}

impl MemoryTailscale {
    /// Locks the state for arranging or inspecting.
    pub fn state(&self) -> std::sync::MutexGuard<'_, MemoryState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes the next `times` calls of `op` (any op when `None`) fail with HTTP `status`.
    pub fn fail_next(&self, op: Option<&'static str>, status: u16, times: usize) {
        let mut s = self.state();
        for _ in 0..times {
            s.faults.push_back(Fault { op, status, after_effect: false });
        }
    }

    /// Makes the next call of `op` take effect but answer HTTP `status`.
    pub fn fail_after_effect(&self, op: &'static str, status: u16) {
        self.state().faults.push_back(Fault { op: Some(op), status, after_effect: true });
    }

    /// Calls of one operation so far.
    pub fn calls(&self, op: &str) -> u64 {
        self.state().calls.get(op).copied().unwrap_or(0)
    }

    /// All calls so far.
    pub fn total_calls(&self) -> u64 {
        self.state().calls.values().sum()
    }

    /// Adds a device (what a proxy does when it logs in).
    pub fn add_device(&self, device: Device) {
        self.state().tailnet.add_device(device);
    }

    fn call<T>(
        &self,
        op: &'static str,
        f: impl FnOnce(&mut MemoryState) -> Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        let mut s = self.state();
        *s.calls.entry(op).or_default() += 1;
        let fault = match s.faults.iter().position(|f| f.op.is_none_or(|o| o == op)) {
            Some(i) => s.faults.remove(i),
            None => None,
        };
        let error = |status: u16| ApiError::Status {
            method: "CALL".into(),
            path: op.into(),
            status,
            message: "injected fault".into(),
        };
        match fault {
            Some(fault) if !fault.after_effect => Err(error(fault.status)),
            Some(fault) => {
                f(&mut s)?;
                Err(error(fault.status))
            }
            None => f(&mut s),
        }
    }
}

fn ready<'a, T: Send + 'a>(r: Result<T, ApiError>) -> ApiFuture<'a, T> {
    Box::pin(std::future::ready(r))
}

impl TailscaleApi for MemoryTailscale {
    fn list_devices(&self) -> ApiFuture<'_, Vec<Device>> {
        ready(self.call("list_devices", |s| Ok(s.tailnet.devices.values().cloned().collect())))
    }

    fn get_device<'a>(&'a self, id: &'a str) -> ApiFuture<'a, Option<Device>> {
        ready(self.call("get_device", |s| Ok(s.tailnet.device(id).cloned())))
    }

    fn delete_device<'a>(&'a self, id: &'a str) -> ApiFuture<'a, ()> {
        // A missing device is already deleted: the trait's contract, as the client maps a 404.
        ready(self.call("delete_device", |s| {
            s.tailnet.remove_device(id);
            Ok(())
        }))
    }

    fn create_auth_key<'a>(&'a self, req: &'a AuthKeyRequest) -> ApiFuture<'a, AuthKey> {
        ready(self.call("create_auth_key", |s| {
            let issued = s.tailnet.create_auth_key(req.clone()).map_err(|r| refused("POST", "keys", r))?;
            Ok(AuthKey { id: issued.id, key: issued.key, expires: None })
        }))
    }

    fn list_vip_services(&self) -> ApiFuture<'_, Vec<VipService>> {
        ready(self.call("list_vip_services", |s| Ok(s.tailnet.vip_services.values().cloned().collect())))
    }

    fn get_vip_service<'a>(&'a self, name: &'a str) -> ApiFuture<'a, Option<VipService>> {
        ready(self.call("get_vip_service", |s| Ok(s.tailnet.vip_services.get(name).cloned())))
    }

    fn put_vip_service<'a>(&'a self, svc: &'a VipService) -> ApiFuture<'a, ()> {
        ready(self.call("put_vip_service", |s| {
            let path = format!("vip-services/{}", svc.name);
            s.tailnet.put_vip_service(&svc.name, svc.clone()).map(|_| ()).map_err(|r| refused("PUT", &path, r))
        }))
    }

    fn delete_vip_service<'a>(&'a self, name: &'a str) -> ApiFuture<'a, ()> {
        ready(self.call("delete_vip_service", |s| {
            s.tailnet.vip_services.remove(name);
            Ok(())
        }))
    }
}

/// The error the client reports for a call the [`Tailnet`] refused.
fn refused(method: &str, path: &str, (status, message): Refusal) -> ApiError {
    ApiError::Status { method: method.into(), path: path.into(), status, message: message.into() }
}

/// An [`ApiFactory`] handing out one [`MemoryTailscale`] per tailnet name.
#[derive(Default)]
pub struct MemoryFactory {
    tailnets: Mutex<HashMap<String, Arc<MemoryTailscale>>>,
}

impl MemoryFactory {
    /// The in-memory tailnet behind the TailscaleTailnet named `name`.
    pub fn tailnet(&self, name: &str) -> Arc<MemoryTailscale> {
        self.tailnets.lock().unwrap_or_else(|p| p.into_inner()).entry(name.to_string()).or_default().clone()
    }
}

impl ApiFactory for MemoryFactory {
    fn build(&self, tailnet: &TailscaleTailnet, _: OAuthCredentials) -> Result<Arc<dyn TailscaleApi>, ApiError> {
        let name = tailnet.metadata.name.clone().unwrap_or_default();
        Ok(self.tailnet(&name))
    }
}

/// One request the fake API server received.
#[derive(Clone, Debug, PartialEq)]
pub struct Recorded {
    /// HTTP method.
    pub method: String,
    /// Path without the query.
    pub path: String,
    /// Query string.
    pub query: String,
    /// `Content-Type`.
    pub content_type: String,
    /// JSON body, if any.
    pub body: Option<Value>,
}

impl Recorded {
    /// Whether the request changes something.
    pub fn is_write(&self) -> bool {
        self.method != "GET"
    }

    /// Whether it is a Kubernetes Event (not a managed object).
    pub fn is_event(&self) -> bool {
        self.path.contains("/events")
    }
}

#[derive(Default)]
struct KubeState {
    objects: BTreeMap<String, Value>,
    requests: Vec<Recorded>,
    revision: u64,
}

/// A minimal in-memory Kubernetes API server: GET/LIST (with label selectors), POST, PATCH
/// (apply, merge, JSON patch; status subresource), DELETE. Good enough to observe exactly what
/// the controllers send.
#[derive(Default)]
pub struct FakeKube {
    state: Mutex<KubeState>,
}

struct Target {
    /// Collection path (`/api/v1/namespaces/ns/secrets`).
    collection: String,
    name: Option<String>,
    subresource: Option<String>,
}

fn parse_path(path: &str) -> Option<Target> {
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let (prefix_len, rest) = match *segs.first()? {
        "api" => (2, &segs[2.min(segs.len())..]),
        "apis" => (3, &segs[3.min(segs.len())..]),
        _ => return None,
    };
    let coll_len = if rest.first() == Some(&"namespaces") && rest.len() >= 3 { 3 } else { 1 };
    if rest.len() < coll_len {
        return None;
    }
    Some(Target {
        collection: format!("/{}", segs[..prefix_len + coll_len].join("/")),
        name: rest.get(coll_len).map(|s| s.to_string()),
        subresource: rest.get(coll_len + 1).map(|s| s.to_string()),
    })
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                match u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16) {
                    Ok(v) => {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn query_param(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|kv| kv.split_once('=').filter(|(k, _)| *k == key).map(|(_, v)| percent_decode(v)))
}

fn labels_match(obj: &Value, selector: &str) -> bool {
    let labels = obj.pointer("/metadata/labels");
    selector.split(',').filter(|s| !s.is_empty()).all(|req| match req.split_once('=') {
        Some((k, v)) => labels.and_then(|l| l.get(k.trim_end_matches('='))).and_then(Value::as_str) == Some(v),
        None => labels.and_then(|l| l.get(req)).is_some(),
    })
}

fn status_body(code: u16, reason: &str, message: String) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

/// Merges `patch` into `base`: objects recursively, everything else replaced.
fn deep_merge(base: &mut Value, patch: &Value) {
    match (base, patch) {
        (Value::Object(b), Value::Object(p)) => {
            for (k, v) in p {
                match b.get_mut(k) {
                    Some(existing) if existing.is_object() && v.is_object() => deep_merge(existing, v),
                    _ => {
                        b.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (b, p) => *b = p.clone(),
    }
}

impl FakeKube {
    /// An empty server.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, KubeState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stores an object as if created by someone else (path is its collection path).
    pub fn insert(&self, collection: &str, obj: Value) {
        let name = obj.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default().to_string();
        let mut s = self.lock();
        s.revision += 1;
        let mut obj = obj;
        let rev = s.revision.to_string();
        if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
            m.insert("resourceVersion".into(), json!(rev));
            m.entry("uid").or_insert(json!(format!("uid-{name}")));
            m.entry("creationTimestamp").or_insert(json!("2025-06-25T10:00:00Z"));
        }
        s.objects.insert(format!("{collection}/{name}"), obj);
    }

    /// An object by its full path.
    pub fn get(&self, path: &str) -> Option<Value> {
        self.lock().objects.get(path).cloned()
    }

    /// Every object of one resource (by its plural, e.g. `secrets`), in every namespace.
    pub fn list_all(&self, plural: &str) -> Vec<Value> {
        self.lock()
            .objects
            .iter()
            .filter(|(path, _)| {
                parse_path(path).is_some_and(|t| {
                    t.collection.ends_with(&format!("/{plural}")) && t.name.is_some() && t.subresource.is_none()
                })
            })
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.lock().requests.clone()
    }

    /// Returns and forgets the requests so far.
    pub fn take_requests(&self) -> Vec<Recorded> {
        std::mem::take(&mut self.lock().requests)
    }

    /// Answers one request.
    pub async fn serve<B>(&self, req: Request<B>) -> Response<kube::client::Body>
    where
        B: hyper::body::Body,
        B::Error: std::fmt::Debug,
    {
        let (parts, body) = req.into_parts();
        let bytes = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        let body: Option<Value> = if bytes.is_empty() { None } else { serde_json::from_slice(&bytes).ok() };
        let content_type =
            parts.headers.get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
        let rec = Recorded {
            method: parts.method.to_string(),
            path: parts.uri.path().to_string(),
            query: parts.uri.query().unwrap_or_default().to_string(),
            content_type,
            body,
        };
        let (code, value) = self.handle(&rec);
        self.lock().requests.push(rec);
        let bytes = serde_json::to_vec(&value).unwrap_or_default();
        let mut resp = Response::new(kube::client::Body::from(bytes));
        *resp.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        resp
    }

    // long: the fake API server's routing table, one match arm per method and path shape.
    fn handle(&self, rec: &Recorded) -> (u16, Value) {
        let Some(t) = parse_path(&rec.path) else {
            return (404, status_body(404, "NotFound", format!("no route {}", rec.path)));
        };
        let mut s = self.lock();
        let not_found = |what: &str| (404, status_body(404, "NotFound", format!("{what} not found")));
        match (rec.method.as_str(), &t.name) {
            ("GET", None) => {
                let selector = query_param(&rec.query, "labelSelector").unwrap_or_default();
                let prefix = format!("{}/", t.collection);
                let items: Vec<Value> = s
                    .objects
                    .range(prefix.clone()..)
                    .take_while(|(k, _)| k.starts_with(&prefix))
                    .filter(|(k, _)| !k[prefix.len()..].contains('/'))
                    .filter(|(_, v)| labels_match(v, &selector))
                    .map(|(_, v)| v.clone())
                    .collect();
                (
                    200,
                    json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": s.revision.to_string()}, "items": items}),
                )
            }
            ("GET", Some(name)) => match s.objects.get(&format!("{}/{name}", t.collection)) {
                Some(o) => (200, o.clone()),
                None => not_found(name),
            },
            ("POST", _) => {
                let mut obj = rec.body.clone().unwrap_or(json!({}));
                let name = obj
                    .pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .unwrap_or_else(|| format!("generated-{}", s.revision + 1));
                s.revision += 1;
                let rev = s.revision;
                if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
                    m.insert("name".into(), json!(name));
                    m.insert("resourceVersion".into(), json!(rev.to_string()));
                }
                s.objects.insert(format!("{}/{name}", t.collection), obj.clone());
                (201, obj)
            }
            ("DELETE", Some(name)) => match s.objects.remove(&format!("{}/{name}", t.collection)) {
                Some(o) => (200, o),
                None => not_found(name),
            },
            ("PATCH", Some(name)) => {
                let key = format!("{}/{name}", t.collection);
                let patch = rec.body.clone().unwrap_or(json!({}));
                let existing = s.objects.get(&key).cloned();
                let is_status = t.subresource.as_deref() == Some("status");
                let mut obj = match (existing, rec.content_type.as_str()) {
                    (None, ct) if ct.starts_with("application/apply-patch") && !is_status => {
                        let mut o = patch.clone();
                        if let Some(m) = o.get_mut("metadata").and_then(Value::as_object_mut) {
                            m.insert("uid".into(), json!(format!("uid-{name}")));
                            m.insert("creationTimestamp".into(), json!("2025-06-25T10:00:00Z"));
                            m.insert("generation".into(), json!(1));
                        }
                        o
                    }
                    (None, _) => return not_found(name),
                    (Some(mut o), ct) if ct.starts_with("application/apply-patch") => {
                        if is_status {
                            o["status"] = patch.get("status").cloned().unwrap_or(Value::Null);
                        } else {
                            for (k, v) in patch.as_object().into_iter().flatten() {
                                if k == "metadata" {
                                    deep_merge(&mut o["metadata"], v);
                                } else {
                                    o[k] = v.clone();
                                }
                            }
                        }
                        o
                    }
                    (Some(mut o), ct) if ct.starts_with("application/json-patch") => {
                        let ops: json_patch::Patch = match serde_json::from_value(patch) {
                            Ok(p) => p,
                            Err(e) => return (400, status_body(400, "BadRequest", e.to_string())),
                        };
                        if let Err(e) = json_patch::patch(&mut o, &ops) {
                            return (422, status_body(422, "Invalid", e.to_string()));
                        }
                        o
                    }
                    (Some(mut o), _) => {
                        json_patch::merge(&mut o, &patch);
                        o
                    }
                };
                s.revision += 1;
                let rev = s.revision;
                if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
                    m.insert("resourceVersion".into(), json!(rev.to_string()));
                }
                s.objects.insert(key, obj.clone());
                (200, obj)
            }
            _ => (405, status_body(405, "MethodNotAllowed", format!("{} {}", rec.method, rec.path))),
        }
    }
}

/// Refills `writers`' stores with the owned objects `fake` holds now (those carrying the
/// endpoints label), as reflectors that have caught up would.
pub fn sync_owned(fake: &FakeKube, writers: &mut OwnedWriters) {
    fn fill<K>(fake: &FakeKube, writer: &mut Writer<K>)
    where
        K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + 'static,
    {
        let objects = fake
            .list_all(&K::plural(&()))
            .into_iter()
            .filter(|o| labels_match(o, builders::ENDPOINTS_LABEL))
            .filter_map(|o| serde_json::from_value::<K>(o).ok());
        owned::relist(writer, objects);
    }
    fill(fake, &mut writers.service_accounts);
    fill(fake, &mut writers.roles);
    fill(fake, &mut writers.role_bindings);
    fill(fake, &mut writers.services);
    fill(fake, &mut writers.stateful_sets);
    fill(fake, &mut writers.secrets);
    fill(fake, &mut writers.config_maps);
}

/// A `kube::Client` answered by `fake` (no sockets).
pub fn fake_client(fake: Arc<FakeKube>) -> kube::Client {
    let svc = tower::service_fn(move |req: Request<kube::client::Body>| {
        let fake = fake.clone();
        async move { Ok::<_, Infallible>(fake.serve(req).await) }
    });
    kube::Client::new(svc, "default")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_selectors() {
        let t = parse_path("/api/v1/namespaces/ns/secrets/a").unwrap_or_else(|| panic!("path"));
        assert_eq!((t.collection.as_str(), t.name.as_deref()), ("/api/v1/namespaces/ns/secrets", Some("a")));
        let t = parse_path("/apis/gateway.tailscale.com/v1alpha1/tailscaletailnets/corp/status")
            .unwrap_or_else(|| panic!("path"));
        assert_eq!(t.collection, "/apis/gateway.tailscale.com/v1alpha1/tailscaletailnets");
        assert_eq!(t.subresource.as_deref(), Some("status"));
        assert_eq!(query_param("a=1&labelSelector=x%3Dy%2Cz", "labelSelector").as_deref(), Some("x=y,z"));
        let obj = json!({"metadata": {"labels": {"x": "y", "z": ""}}});
        assert!(labels_match(&obj, "x=y,z"));
        assert!(!labels_match(&obj, "x=w"));
    }

    #[tokio::test]
    async fn memory_tailscale_faults_and_addrs() {
        let ts = MemoryTailscale::default();
        ts.fail_next(Some("get_vip_service"), 429, 1);
        assert!(ts.get_vip_service("svc:a").await.is_err_and(|e| e.is_transient()));
        assert!(ts.get_vip_service("svc:a").await.is_ok());
        let body = VipService { name: "svc:a".into(), ..VipService::default() };
        ts.put_vip_service(&body).await.expect("putting the VIP service");
        let created = ts.get_vip_service("svc:a").await.ok().flatten().unwrap_or_else(|| panic!("created"));
        assert_eq!(created.addrs.len(), 2);
        assert!(ts.put_vip_service(&body).await.is_err(), "an update must resend addrs");
        assert!(ts.put_vip_service(&created).await.is_ok());
        assert_eq!(ts.calls("put_vip_service"), 3);
    }
}

//! Leader election on a `coordination.k8s.io/v1` Lease, so that of several replicas only one
//! runs the reconciler while all of them serve webhooks, the aggregated API and xDS.
//!
//! The rules follow client-go's: take the Lease when it is absent, released (no holder), or not
//! renewed for its `leaseDurationSeconds`; renew it periodically while holding it; clear the
//! holder on shutdown. Expiry is judged by how long *this* replica has seen the Lease unchanged
//! (its resourceVersion), not by comparing the holder's `renewTime` with our clock, so clock skew
//! between nodes cannot cause an early takeover. Every write carries the resourceVersion it was
//! based on, so when two replicas race the API server accepts one write and rejects the other
//! with 409 Conflict: two replicas never both win.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::PostParams;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// Leader election settings.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    /// Namespace of the Lease (usually our own).
    pub namespace: String,
    /// Lease name, e.g. `tailscale-gateway-reconciler`.
    pub name: String,
    /// This replica's identity (the pod name); unique among replicas.
    pub identity: String,
    /// How long a holder keeps the Lease without renewing (`leaseDurationSeconds`).
    pub lease_duration: Duration,
    /// How often the holder renews.
    pub renew_interval: Duration,
    /// How often a non-holder checks whether it can take over.
    pub retry_interval: Duration,
    /// A holder that could not renew for this long stops leading (shorter than
    /// `lease_duration`, so it stops before anyone else may start).
    pub renew_deadline: Duration,
}

impl LeaseConfig {
    /// Settings with the usual timings: 15s lease, renew every 5s, retry every 2s, step down
    /// after 10s without a successful renewal.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>, identity: impl Into<String>) -> Self {
        LeaseConfig {
            namespace: namespace.into(),
            name: name.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_interval: Duration::from_secs(5),
            retry_interval: Duration::from_secs(2),
            renew_deadline: Duration::from_secs(10),
        }
    }
}

/// Errors talking to the API server about the Lease.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// A Kubernetes API call failed (other than losing a race, which is not an error).
    #[error("lease {namespace}/{name}: {operation} failed: {source}")]
    Kube {
        /// Lease namespace.
        namespace: String,
        /// Lease name.
        name: String,
        /// `get`, `create` or `replace`.
        operation: &'static str,
        /// The client error.
        #[source]
        source: kube::Error,
    },
}

/// Competes for one Lease; the reconciler runs while this replica holds it.
pub struct LeaderElector {
    api: Api<Lease>,
    cfg: LeaseConfig,
    /// The Lease's resourceVersion when we last saw it change, and when that was.
    observed: Option<(String, Instant)>,
}

impl std::fmt::Debug for LeaderElector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaderElector").field("cfg", &self.cfg).finish_non_exhaustive()
    }
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(status) if status.code == 409)
}

fn duration_secs(d: Duration) -> i32 {
    i32::try_from(d.as_secs().max(1)).unwrap_or(i32::MAX)
}

impl LeaderElector {
    /// An elector for the Lease `cfg.namespace/cfg.name`.
    pub fn new(client: kube::Client, cfg: LeaseConfig) -> Self {
        LeaderElector { api: Api::namespaced(client, &cfg.namespace), cfg, observed: None }
    }

    /// The settings.
    pub fn config(&self) -> &LeaseConfig {
        &self.cfg
    }

    fn error(&self, operation: &'static str, source: kube::Error) -> LeaseError {
        LeaseError::Kube { namespace: self.cfg.namespace.clone(), name: self.cfg.name.clone(), operation, source }
    }

    /// When we first saw the Lease in its current version.
    fn observe(&mut self, lease: &Lease) -> Instant {
        let version = lease.metadata.resource_version.clone().unwrap_or_default();
        match &self.observed {
            Some((seen, at)) if *seen == version => *at,
            _ => {
                let now = Instant::now();
                self.observed = Some((version, now));
                now
            }
        }
    }

    /// One round: create, renew or take over the Lease as the rules allow. `Ok(true)` means we
    /// hold it now; `Ok(false)` that someone else does (including losing a race with 409).
    pub async fn try_acquire_or_renew(&mut self) -> Result<bool, LeaseError> {
        let now = MicroTime(Timestamp::now());
        let me = self.cfg.identity.clone();
        let Some(lease) = self.api.get_opt(&self.cfg.name).await.map_err(|e| self.error("get", e))? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.cfg.name.clone()),
                    namespace: Some(self.cfg.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(me),
                    lease_duration_seconds: Some(duration_secs(self.cfg.lease_duration)),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return self.write("create", lease, true).await;
        };

        let observed_at = self.observe(&lease);
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.as_deref().filter(|h| !h.is_empty());
        let held_for = spec
            .lease_duration_seconds
            .and_then(|s| u64::try_from(s).ok())
            .map(Duration::from_secs)
            .unwrap_or(self.cfg.lease_duration);
        let mut next = lease.clone();
        let mut new_spec = spec.clone();
        match holder {
            Some(h) if h == me => {
                new_spec.renew_time = Some(now);
            }
            Some(h) if observed_at.elapsed() < held_for => {
                debug!(lease = %self.cfg.name, holder = h, "lease held by another replica");
                return Ok(false);
            }
            previous => {
                info!(lease = %self.cfg.name, previous_holder = previous.unwrap_or(""), "taking over lease");
                new_spec.holder_identity = Some(me);
                new_spec.acquire_time = Some(now.clone());
                new_spec.renew_time = Some(now);
                new_spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0).saturating_add(1));
            }
        }
        new_spec.lease_duration_seconds = Some(duration_secs(self.cfg.lease_duration));
        next.spec = Some(new_spec);
        self.write("replace", next, false).await
    }

    /// Creates or replaces the Lease; a 409 means another replica won.
    async fn write(&mut self, operation: &'static str, lease: Lease, create: bool) -> Result<bool, LeaseError> {
        let pp = PostParams::default();
        let written = if create {
            self.api.create(&pp, &lease).await
        } else {
            self.api.replace(&self.cfg.name, &pp, &lease).await
        };
        match written {
            Ok(lease) => {
                self.observe(&lease);
                Ok(true)
            }
            Err(e) if is_conflict(&e) => {
                debug!(lease = %self.cfg.name, operation, "lost the race for the lease");
                Ok(false)
            }
            Err(e) => Err(self.error(operation, e)),
        }
    }

    /// Gives the Lease up if we hold it, so another replica takes over at once instead of after
    /// expiry. Returns whether we held it.
    pub async fn release(&mut self) -> Result<bool, LeaseError> {
        let Some(mut lease) = self.api.get_opt(&self.cfg.name).await.map_err(|e| self.error("get", e))? else {
            return Ok(false);
        };
        let Some(spec) = lease.spec.as_mut() else {
            return Ok(false);
        };
        if spec.holder_identity.as_deref() != Some(self.cfg.identity.as_str()) {
            return Ok(false);
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        match self.api.replace(&self.cfg.name, &PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            // Someone changed it since we read it: it is not ours to release any more.
            Err(e) if is_conflict(&e) => Ok(false),
            Err(e) => Err(self.error("replace", e)),
        }
    }

    /// Competes for the Lease until `stop` is cancelled, publishing "this replica leads" on
    /// `is_leader` (the reconciler runs only while it is `true`). A leader that cannot renew for
    /// `renew_deadline` publishes `false`. On shutdown it publishes `false` first, then
    /// releases the Lease.
    pub async fn run(mut self, is_leader: watch::Sender<bool>, stop: CancellationToken) {
        let mut last_renewed: Option<Instant> = None;
        loop {
            let round = tokio::select! {
                () = stop.cancelled() => break,
                r = self.try_acquire_or_renew() => r,
            };
            let leading = match round {
                Ok(true) => {
                    last_renewed = Some(Instant::now());
                    true
                }
                Ok(false) => {
                    last_renewed = None;
                    false
                }
                Err(error) => {
                    let keep = last_renewed.is_some_and(|t| t.elapsed() < self.cfg.renew_deadline);
                    warn!(error = %crate::errors::Chain(&error), still_leading = keep, "leader election round failed");
                    if !keep {
                        last_renewed = None;
                    }
                    keep
                }
            };
            let changed = is_leader.send_if_modified(|current| {
                let changed = *current != leading;
                *current = leading;
                changed
            });
            if changed {
                info!(lease = %self.cfg.name, identity = %self.cfg.identity, leading, "leadership changed");
            }
            let wait = if leading { self.cfg.renew_interval } else { self.cfg.retry_interval };
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(wait) => {}
            }
        }
        // Stop reconciling before anyone else may start.
        is_leader.send_replace(false);
        match self.release().await {
            Ok(true) => info!(lease = %self.cfg.name, "released lease"),
            Ok(false) => {}
            Err(error) => {
                warn!(error = %crate::errors::Chain(&error), "could not release lease; it expires on its own")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{Method, Request, Response, StatusCode};
    use kube::client::Body;
    use serde_json::json;
    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex};
    use tower_test::mock;

    const PATH: &str = "/apis/coordination.k8s.io/v1/namespaces/gw/leases/reconciler";
    const COLLECTION: &str = "/apis/coordination.k8s.io/v1/namespaces/gw/leases";

    /// One expected request and the answer to give.
    struct Exchange {
        method: Method,
        path: &'static str,
        /// Checks the request body (a Lease for writes).
        check: Box<dyn Fn(&serde_json::Value) + Send>,
        status: StatusCode,
        answer: serde_json::Value,
    }

    fn exchange(
        method: Method,
        path: &'static str,
        check: impl Fn(&serde_json::Value) + Send + 'static,
        status: StatusCode,
        answer: serde_json::Value,
    ) -> Exchange {
        Exchange { method, path, check: Box::new(check), status, answer }
    }

    fn no_body(_: &serde_json::Value) {}

    fn not_found() -> serde_json::Value {
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404,
               "message": "leases.coordination.k8s.io \"reconciler\" not found"})
    }

    fn conflict() -> serde_json::Value {
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Conflict", "code": 409,
               "message": "the object has been modified; please apply your changes to the latest version"})
    }

    fn lease(holder: Option<&str>, rv: &str, transitions: i32) -> serde_json::Value {
        json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
               "metadata": {"name": "reconciler", "namespace": "gw", "resourceVersion": rv},
               "spec": {"holderIdentity": holder, "leaseDurationSeconds": 1,
                        "acquireTime": "2025-06-25T10:00:00.000000Z", "renewTime": "2025-06-25T10:00:00.000000Z",
                        "leaseTransitions": transitions}})
    }

    /// A kube client backed by a mock API server that serves `script` in order, asserting each
    /// request; the returned handle finishes when the script is used up.
    fn mock_client(script: Vec<Exchange>) -> (kube::Client, tokio::task::JoinHandle<()>) {
        let (service, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
        let task = tokio::spawn(async move {
            let mut script: VecDeque<Exchange> = script.into();
            while let Some(step) = script.pop_front() {
                let (req, send) = handle
                    .next_request()
                    .await
                    .unwrap_or_else(|| panic!("expected {} {}, the client stopped", step.method, step.path));
                assert_eq!((req.method(), req.uri().path()), (&step.method, step.path));
                let bytes = req.into_body().collect_bytes().await.expect("reading the request body");
                let body: serde_json::Value = if bytes.is_empty() {
                    serde_json::Value::Null
                } else {
                    serde_json::from_slice(&bytes).expect("parsing the request body")
                };
                (step.check)(&body);
                let answer = serde_json::to_vec(&step.answer).expect("serializing the scripted answer");
                send.send_response(
                    Response::builder()
                        .status(step.status)
                        .header("content-type", "application/json")
                        .body(Body::from(answer))
                        .expect("building the scripted response"),
                );
            }
        });
        (kube::Client::new(service, "default"), task)
    }

    fn config(identity: &str) -> LeaseConfig {
        let mut cfg = LeaseConfig::new("gw", "reconciler", identity);
        cfg.lease_duration = Duration::from_millis(300);
        cfg.renew_interval = Duration::from_millis(50);
        cfg.retry_interval = Duration::from_millis(50);
        cfg.renew_deadline = Duration::from_millis(200);
        cfg
    }

    fn holder(body: &serde_json::Value) -> Option<&str> {
        body["spec"]["holderIdentity"].as_str()
    }

    async fn finish(task: tokio::task::JoinHandle<()>) {
        task.await.expect("joining the mock API server task");
    }

    #[tokio::test]
    async fn acquires_an_absent_lease_by_creating_it() {
        let (client, server) = mock_client(vec![
            exchange(Method::GET, PATH, no_body, StatusCode::NOT_FOUND, not_found()),
            exchange(
                Method::POST,
                COLLECTION,
                |b| {
                    assert_eq!(holder(b), Some("pod-a"));
                    assert_eq!(b["metadata"]["name"], "reconciler");
                    assert_eq!(b["spec"]["leaseTransitions"], 0);
                    assert!(b["spec"]["renewTime"].is_string() && b["spec"]["acquireTime"].is_string());
                },
                StatusCode::CREATED,
                lease(Some("pod-a"), "1", 0),
            ),
        ]);
        let mut a = LeaderElector::new(client, config("pod-a"));
        assert!(a.try_acquire_or_renew().await.expect("acquiring the lease"));
        finish(server).await;
    }

    #[tokio::test]
    async fn renews_a_held_lease_with_its_resource_version() {
        let (client, server) = mock_client(vec![
            exchange(Method::GET, PATH, no_body, StatusCode::OK, lease(Some("pod-a"), "7", 2)),
            exchange(
                Method::PUT,
                PATH,
                |b| {
                    assert_eq!(holder(b), Some("pod-a"));
                    assert_eq!(b["metadata"]["resourceVersion"], "7", "optimistic concurrency");
                    assert_eq!(b["spec"]["leaseTransitions"], 2, "a renewal is no transition");
                    assert_eq!(b["spec"]["acquireTime"], "2025-06-25T10:00:00.000000Z", "kept on renewal");
                    assert_ne!(b["spec"]["renewTime"], "2025-06-25T10:00:00.000000Z", "renewTime moves");
                },
                StatusCode::OK,
                lease(Some("pod-a"), "8", 2),
            ),
        ]);
        let mut a = LeaderElector::new(client, config("pod-a"));
        assert!(a.try_acquire_or_renew().await.expect("renewing the lease"));
        finish(server).await;
    }

    #[tokio::test]
    async fn takes_over_only_after_the_lease_expired() {
        let (client, server) = mock_client(vec![
            // Held by pod-a: wait.
            exchange(Method::GET, PATH, no_body, StatusCode::OK, lease(Some("pod-a"), "5", 0)),
            // pod-a renewed meanwhile (new version): the clock starts again.
            exchange(Method::GET, PATH, no_body, StatusCode::OK, lease(Some("pod-a"), "6", 0)),
            // Unchanged for longer than its duration: take over.
            exchange(Method::GET, PATH, no_body, StatusCode::OK, lease(Some("pod-a"), "6", 0)),
            exchange(
                Method::PUT,
                PATH,
                |b| {
                    assert_eq!(holder(b), Some("pod-b"));
                    assert_eq!(b["metadata"]["resourceVersion"], "6");
                    assert_eq!(b["spec"]["leaseTransitions"], 1);
                    assert_ne!(b["spec"]["acquireTime"], "2025-06-25T10:00:00.000000Z");
                },
                StatusCode::OK,
                lease(Some("pod-b"), "7", 1),
            ),
        ]);
        let mut b = LeaderElector::new(client, config("pod-b"));
        assert!(!b.try_acquire_or_renew().await.expect("trying to take over the held lease"));
        // Longer than the lease's own duration (1s), but the lease changed: still held.
        tokio::time::pause();
        tokio::time::advance(Duration::from_millis(1100)).await;
        assert!(!b.try_acquire_or_renew().await.expect("trying to take over the changed lease"));
        tokio::time::advance(Duration::from_millis(1100)).await;
        assert!(b.try_acquire_or_renew().await.expect("taking over the expired lease"));
        finish(server).await;
    }

    #[tokio::test]
    async fn a_released_lease_is_taken_at_once() {
        let (client, server) = mock_client(vec![
            exchange(Method::GET, PATH, no_body, StatusCode::OK, lease(None, "9", 3)),
            exchange(
                Method::PUT,
                PATH,
                |b| {
                    assert_eq!(holder(b), Some("pod-b"));
                    assert_eq!(b["spec"]["leaseTransitions"], 4);
                },
                StatusCode::OK,
                lease(Some("pod-b"), "10", 4),
            ),
        ]);
        let mut b = LeaderElector::new(client, config("pod-b"));
        assert!(b.try_acquire_or_renew().await.expect("taking the released lease"));
        finish(server).await;
    }

    #[tokio::test]
    async fn losing_a_race_is_not_leading() {
        let (client, server) = mock_client(vec![
            // Both saw no lease; the other replica's create landed first.
            exchange(Method::GET, PATH, no_body, StatusCode::NOT_FOUND, not_found()),
            exchange(
                Method::POST,
                COLLECTION,
                |b| assert_eq!(holder(b), Some("pod-b")),
                StatusCode::CONFLICT,
                json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "AlreadyExists", "code": 409}),
            ),
            // A released lease, but the other replica's replace landed first.
            exchange(Method::GET, PATH, no_body, StatusCode::OK, lease(None, "3", 1)),
            exchange(Method::PUT, PATH, |b| assert_eq!(holder(b), Some("pod-b")), StatusCode::CONFLICT, conflict()),
        ]);
        let mut b = LeaderElector::new(client, config("pod-b"));
        assert!(!b.try_acquire_or_renew().await.expect("trying to acquire the lease in a lost race"));
        assert!(!b.try_acquire_or_renew().await.expect("trying to acquire the lease again after the lost race"));
        finish(server).await;
    }

    #[tokio::test]
    async fn other_api_errors_are_reported() {
        let (client, server) = mock_client(vec![exchange(
            Method::GET,
            PATH,
            no_body,
            StatusCode::FORBIDDEN,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Forbidden", "code": 403,
                   "message": "leases.coordination.k8s.io is forbidden"}),
        )]);
        let mut a = LeaderElector::new(client, config("pod-a"));
        let err = a.try_acquire_or_renew().await.err().unwrap_or_else(|| panic!("403 must fail"));
        assert!(err.to_string().starts_with("lease gw/reconciler: get failed"), "{err}");
        finish(server).await;
    }

    // Paused clock: the timers fire in a fixed order however loaded the machine is.
    #[tokio::test(start_paused = true)]
    async fn run_leads_renews_and_releases_on_shutdown() {
        let (client, server) = mock_client(vec![
            exchange(Method::GET, PATH, no_body, StatusCode::NOT_FOUND, not_found()),
            exchange(
                Method::POST,
                COLLECTION,
                |b| assert_eq!(holder(b), Some("pod-a")),
                StatusCode::CREATED,
                lease(Some("pod-a"), "1", 0),
            ),
            exchange(Method::GET, PATH, no_body, StatusCode::OK, lease(Some("pod-a"), "1", 0)),
            exchange(
                Method::PUT,
                PATH,
                |b| assert_eq!((holder(b), &b["metadata"]["resourceVersion"]), (Some("pod-a"), &json!("1"))),
                StatusCode::OK,
                lease(Some("pod-a"), "2", 0),
            ),
            // Release on shutdown: the holder is cleared.
            exchange(Method::GET, PATH, no_body, StatusCode::OK, lease(Some("pod-a"), "2", 0)),
            exchange(
                Method::PUT,
                PATH,
                |b| {
                    assert_eq!(holder(b), None, "holderIdentity cleared");
                    assert_eq!(b["metadata"]["resourceVersion"], "2");
                    assert_eq!(b["spec"]["leaseDurationSeconds"], 1);
                },
                StatusCode::OK,
                lease(None, "3", 0),
            ),
        ]);
        let (tx, mut rx) = watch::channel(false);
        let stop = CancellationToken::new();
        let elector = LeaderElector::new(client, config("pod-a"));
        let running = tokio::spawn(elector.run(tx, stop.clone()));
        rx.wait_for(|leading| *leading).await.expect("waiting to lead");
        // Let one renewal happen (renew interval 50ms), then shut down.
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert!(*rx.borrow(), "still leading after renewing");
        stop.cancel();
        running.await.expect("joining the elector task");
        assert!(!*rx.borrow_and_update(), "not leading after shutdown");
        finish(server).await;
    }

    // Paused clock: the timers fire in a fixed order however loaded the machine is.
    #[tokio::test(start_paused = true)]
    async fn a_leader_that_loses_the_lease_steps_down() {
        let (client, server) = mock_client(vec![
            exchange(Method::GET, PATH, no_body, StatusCode::OK, lease(Some("pod-a"), "4", 0)),
            exchange(
                Method::PUT,
                PATH,
                |b| assert_eq!(holder(b), Some("pod-a")),
                StatusCode::OK,
                lease(Some("pod-a"), "5", 0),
            ),
            // Renewal loses a race: another replica wrote the lease.
            exchange(Method::GET, PATH, no_body, StatusCode::OK, lease(Some("pod-a"), "5", 0)),
            exchange(Method::PUT, PATH, |b| assert_eq!(holder(b), Some("pod-a")), StatusCode::CONFLICT, conflict()),
            // Shutdown: pod-b holds it now, nothing to release.
            exchange(Method::GET, PATH, no_body, StatusCode::OK, lease(Some("pod-b"), "6", 1)),
        ]);
        let mut cfg = config("pod-a");
        cfg.retry_interval = Duration::from_secs(60); // no further rounds once stepped down
        let (tx, mut rx) = watch::channel(false);
        let stop = CancellationToken::new();
        let running = tokio::spawn(LeaderElector::new(client, cfg).run(tx, stop.clone()));
        rx.wait_for(|leading| *leading).await.expect("waiting to lead");
        rx.wait_for(|leading| !*leading).await.expect("waiting to step down");
        stop.cancel();
        running.await.expect("joining the elector task");
        finish(server).await;
    }

    /// A mock API server holding one Lease with real optimistic concurrency: creates of an
    /// existing Lease and replaces with a stale resourceVersion get 409.
    fn lease_server(store: Arc<Mutex<Option<serde_json::Value>>>) -> kube::Client {
        let (service, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
        tokio::spawn(async move {
            while let Some((req, send)) = handle.next_request().await {
                let (method, path) = (req.method().clone(), req.uri().path().to_string());
                let bytes = req.into_body().collect_bytes().await.expect("reading the request body");
                let (status, answer) = {
                    let mut current = store.lock().unwrap_or_else(|e| e.into_inner());
                    let mut body: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
                    match (method.as_str(), path.as_str(), current.as_mut()) {
                        ("GET", PATH, Some(lease)) => (StatusCode::OK, lease.clone()),
                        ("GET", PATH, None) => (StatusCode::NOT_FOUND, not_found()),
                        ("POST", COLLECTION, Some(_)) => (StatusCode::CONFLICT, conflict()),
                        ("POST", COLLECTION, None) => {
                            body["metadata"]["resourceVersion"] = json!("1");
                            *current = Some(body.clone());
                            (StatusCode::CREATED, body)
                        }
                        ("PUT", PATH, Some(lease)) => {
                            let rv = lease["metadata"]["resourceVersion"].as_str().unwrap_or("0").to_string();
                            if body["metadata"]["resourceVersion"].as_str() != Some(rv.as_str()) {
                                (StatusCode::CONFLICT, conflict())
                            } else {
                                let next = rv.parse::<u64>().unwrap_or(0) + 1;
                                body["metadata"]["resourceVersion"] = json!(next.to_string());
                                *lease = body.clone();
                                (StatusCode::OK, body)
                            }
                        }
                        other => panic!("unexpected request {other:?}"),
                    }
                };
                let answer = serde_json::to_vec(&answer).expect("serializing the answer");
                send.send_response(
                    Response::builder().status(status).body(Body::from(answer)).expect("building the response"),
                );
            }
        });
        kube::Client::new(service, "default")
    }

    fn stored_holder(store: &Arc<Mutex<Option<serde_json::Value>>>) -> Option<String> {
        let current = store.lock().unwrap_or_else(|e| e.into_inner());
        current.as_ref().and_then(|l| holder(l).map(str::to_string))
    }

    #[tokio::test(start_paused = true)]
    async fn two_instances_one_leader_takeover_after_expiry_and_races() {
        let store = Arc::new(Mutex::new(None));
        let mut a = LeaderElector::new(lease_server(store.clone()), config("pod-a"));
        let mut b = LeaderElector::new(lease_server(store.clone()), config("pod-b"));
        let step = |r: Result<bool, LeaseError>| r.expect("trying to acquire or renew the lease");

        assert!(step(a.try_acquire_or_renew().await), "a creates the lease");
        assert!(!step(b.try_acquire_or_renew().await));
        tokio::time::advance(Duration::from_millis(600)).await;
        assert!(step(a.try_acquire_or_renew().await), "a renews");
        tokio::time::advance(Duration::from_millis(600)).await;
        // 1.2s since b first looked, but a renewed in between: not expired for b.
        assert!(!step(b.try_acquire_or_renew().await));

        // a stops renewing (crashed). The stored duration is 1s (whole seconds).
        tokio::time::advance(Duration::from_millis(1100)).await;
        assert!(step(b.try_acquire_or_renew().await), "b takes over after expiry");
        assert_eq!(stored_holder(&store).as_deref(), Some("pod-b"));
        assert!(!step(a.try_acquire_or_renew().await), "a comes back and finds b leading");

        // b releases; both race for the free lease: exactly one wins.
        assert!(step(b.release().await));
        assert_eq!(stored_holder(&store), None);
        let (ra, rb) = tokio::join!(a.try_acquire_or_renew(), b.try_acquire_or_renew());
        let (ra, rb) = (step(ra), step(rb));
        assert!(ra ^ rb, "exactly one winner: a={ra} b={rb}");
        let winner = if ra { "pod-a" } else { "pod-b" };
        assert_eq!(stored_holder(&store).as_deref(), Some(winner));
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_of_the_leader_hands_over_to_the_other_replica() {
        let store = Arc::new(Mutex::new(None));
        let (tx_a, mut rx_a) = watch::channel(false);
        let (tx_b, mut rx_b) = watch::channel(false);
        let (stop_a, stop_b) = (CancellationToken::new(), CancellationToken::new());
        let a =
            tokio::spawn(LeaderElector::new(lease_server(store.clone()), config("pod-a")).run(tx_a, stop_a.clone()));
        rx_a.wait_for(|l| *l).await.expect("waiting for pod-a to lead");
        let b =
            tokio::spawn(LeaderElector::new(lease_server(store.clone()), config("pod-b")).run(tx_b, stop_b.clone()));
        // Several renew and retry rounds: a keeps leading, b waits.
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(*rx_a.borrow() && !*rx_b.borrow());

        stop_a.cancel();
        a.await.expect("joining pod-a's elector task");
        assert!(!*rx_a.borrow_and_update());
        // Released, so b takes over on its next round, well before the lease would expire.
        let before = Instant::now();
        rx_b.wait_for(|l| *l).await.expect("waiting for pod-b to take over");
        assert!(before.elapsed() <= config("pod-b").retry_interval);
        assert_eq!(stored_holder(&store).as_deref(), Some("pod-b"));

        stop_b.cancel();
        b.await.expect("joining pod-b's elector task");
        assert_eq!(stored_holder(&store), None, "released on shutdown");
    }
}

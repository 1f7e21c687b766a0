//! The real Envoy Gateway control plane (the pinned build, out of cluster) against a real
//! kube-apiserver calls our extension: an HTTPRoute to a TailscaleServices is Accepted with its
//! refs resolved, our hooks are called, and the xDS Envoy Gateway serves (read over ADS, as an
//! Envoy would) holds the cluster our PostClusterModify filled and the routes and cluster of a
//! TailscaleGateway. A TCPRoute to our kind shows why such routes are refused (Envoy Gateway
//! accepts it, builds a cluster without endpoints and calls no hook), and our validating webhook,
//! registered on the real kube-apiserver, refuses the next one. Ignored in plain `cargo test`: `hack/test.sh` builds the pinned control plane
//! (hack/control-plane.sh) and runs it too; without the binaries it panics, naming the script.
//!
//! How Envoy Gateway runs here: provider Kubernetes, as in a cluster, with the admin kubeconfig.
//! It reads its xDS server's certificates from the fixed path `/certs`, so it runs in a user and
//! mount namespace chrooted into a directory of its own (`unshare --map-root-user --root`; no
//! privileges needed), which holds the binary, the certificates, its configuration and a
//! kubeconfig. Its listeners are fixed ports on the host's network (xDS 18000, health 8081,
//! metrics 19001): one Envoy Gateway per machine at a time, so this file has one test.
//!
//! Between Envoy Gateway and our server sits a recording gRPC proxy in this test (bytes forwarded
//! unchanged both ways), so the test can show and check what Envoy Gateway really sends.

mod util;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::{Buf, BufMut, Bytes};
use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
use envoy_types::pb::envoy::config::core::v3::{Node, address, socket_address};
use envoy_types::pb::envoy::config::endpoint::v3::{ClusterLoadAssignment, lb_endpoint};
use envoy_types::pb::envoy::config::listener::v3::{Listener, filter};
use envoy_types::pb::envoy::config::route::v3::{
    FilterConfig, Route, RouteConfiguration, route, route_action, route_match,
};
use envoy_types::pb::envoy::extensions::filters::http::ext_authz::v3::{
    CheckSettings, ExtAuthzPerRoute, ext_authz_per_route,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::google::protobuf::Any;
use prost::Message;
use serde_json::{Value, json};
use tailscale_gateway::core::authz;
use tailscale_gateway::pki::Ca;
use tailscale_gateway::xds::pb::{self, PostClusterModifyRequest, PostClusterModifyResponse};
use util::cluster::{ControlPlane, Process, free_port};

/// Envoy Gateway's xDS port (`bootstrap.DefaultXdsServerPort`, not configurable).
const EG_XDS_PORT: u16 = 18000;
/// The Gateway, its namespace and listener (the examples' `eg` in `envoy-gateway-system`).
const EG_NAMESPACE: &str = "envoy-gateway-system";
/// The route configuration Envoy Gateway builds for the Gateway's listener `http`.
const ROUTE_CONFIG: &str = "envoy-gateway-system/eg/http";
/// The cluster Envoy Gateway builds for rule 0 of HTTPRoute `default/web`.
const ROUTE_CLUSTER: &str = "httproute/default/web/rule/0";
const CLUSTER_TYPE: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
const ROUTE_TYPE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
const ENDPOINTS_TYPE: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
const LISTENER_TYPE: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
const TIMEOUT: Duration = Duration::from_secs(120);

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn apply(cp: &ControlPlane, doc: &Value, extra: &[&str]) {
    let mut args = vec!["apply", "--server-side", "-f", "-"];
    args.extend_from_slice(extra);
    let out = cp.kubectl_output(&args, Some(&doc.to_string()));
    assert!(out.status.success(), "kubectl apply {extra:?} failed: {}\n{doc:#}", stderr(&out));
}

/// Applies `doc`, then its `status` through the status subresource.
fn apply_with_status(cp: &ControlPlane, doc: &Value) {
    apply(cp, doc, &[]);
    apply(cp, doc, &["--subresource=status"]);
}

/// Envoy Gateway's CRDs, written by `hack/control-plane.sh envoy-gateway` beside its binary.
fn envoy_gateway_crds() -> PathBuf {
    let version = util::cluster::versions()["ENVOY_GATEWAY_VERSION"].clone();
    let path = util::cluster::bin_dir().join(format!("envoy-gateway-crds-{version}.yaml"));
    assert!(path.is_file(), "{} is missing: {}", path.display(), util::cluster::BUILD_HINT);
    path
}

/// Installs our CRDs and Envoy Gateway's (Gateway API experimental channel and its own), waits
/// until all are Established.
fn install_crds(cp: &ControlPlane) {
    cp.kubectl_ok(&["apply", "--server-side", "-k", &root().join("crds").display().to_string()]);
    cp.kubectl_ok(&["apply", "--server-side", "-f", &envoy_gateway_crds().display().to_string()]);
    let names = cp.kubectl_ok(&["get", "crd", "-o", "jsonpath={.items[*].metadata.name}"]);
    let names: Vec<&str> = names.split_whitespace().collect();
    for want in ["httproutes.gateway.networking.k8s.io", "tailscaleservices.gateway.tailscale.com"] {
        assert!(names.contains(&want), "{want} not installed: {names:?}");
    }
    cp.wait_established(&names);
}

/// The objects of the scenario: a tailnet with its MagicDNS suffix, ingress and egress
/// endpoints, the web service served here on VIP port 80, the Gateway `eg`, an HTTPRoute to the
/// service and a TailscaleGateway on `eg`.
fn apply_scenario(cp: &ControlPlane) {
    cp.kubectl_ok(&["create", "namespace", EG_NAMESPACE]);
    let ts = "gateway.tailscale.com/v1alpha1";
    apply_with_status(
        cp,
        &json!({"apiVersion": ts, "kind": "TailscaleTailnet", "metadata": {"name": "company-tailnet"},
            "spec": {"tailnet": "-", "oauthSecretRef": {"name": "tailscale-oauth", "namespace": "tailscale-gateway"}},
            "status": {"tailnetInfo": {"name": "company.com", "magicDNSSuffix": "tail8eff9.ts.net"}}}),
    );
    for (name, connection_type) in [("web-proxy-east", "ingress"), ("web-proxy-west", "egress")] {
        apply(
            cp,
            &json!({"apiVersion": ts, "kind": "TailscaleEndpoints",
                "metadata": {"name": name, "namespace": "default", "labels": {"service-type": "web"}},
                "spec": {"tailnet": "company-tailnet", "tags": ["tag:k8s-proxy"],
                    "proxy": {"replicas": 1, "connectionType": connection_type}}}),
            &[],
        );
    }
    apply_with_status(
        cp,
        &json!({"apiVersion": ts, "kind": "TailscaleServices", "metadata": {"name": "web-service", "namespace": "default"},
            "spec": {"selector": {"matchLabels": {"service-type": "web"}},
                "vipService": {"name": "svc:web-service", "ports": ["tcp:80"]},
                "serve": [{"port": 80, "protocol": "HTTP", "backendRef": {"name": "web", "port": 8080}}]},
            "status": {"vipService": {"name": "svc:web-service", "addresses": ["100.100.100.50"],
                "dnsName": "web-service.tail8eff9.ts.net"}}}),
    );
    let gw = "gateway.networking.k8s.io/v1";
    apply(
        cp,
        &json!({"apiVersion": gw, "kind": "GatewayClass", "metadata": {"name": "eg"},
            "spec": {"controllerName": "gateway.envoyproxy.io/gatewayclass-controller"}}),
        &[],
    );
    apply(
        cp,
        &json!({"apiVersion": gw, "kind": "Gateway", "metadata": {"name": "eg", "namespace": EG_NAMESPACE},
            "spec": {"gatewayClassName": "eg", "listeners": [
                {"name": "http", "protocol": "HTTP", "port": 80, "allowedRoutes": {"namespaces": {"from": "All"}}},
                {"name": "postgres", "protocol": "TCP", "port": 5432, "allowedRoutes": {"namespaces": {"from": "All"}}}]}}),
        &[],
    );
    // A TCPRoute to our kind, stored before our webhook is registered (as on a cluster where it
    // came first): what Envoy Gateway makes of it is checked in `tcp_routes_are_refused`.
    apply(cp, &tcp_route(TCP_ROUTE), &[]);
    // The example HTTPRoute, as the README tells users to apply it.
    let route = root().join("examples/envoy-gateway/httproute.yaml");
    cp.kubectl_ok(&["apply", "--server-side", "-f", &route.display().to_string()]);
    apply(
        cp,
        &json!({"apiVersion": ts, "kind": "TailscaleGateway", "metadata": {"name": "company-gateway", "namespace": "default"},
            "spec": {"gatewayRef": {"name": "eg", "namespace": EG_NAMESPACE},
                "tailnets": [{"name": "company-tailnet", "serviceSelector": {}}],
                "routeGeneration": {"pathPrefix": "/tailscale/{service}/", "timeout": "30s"}}}),
        &[],
    );
}

/// The TCPRoute stored before our webhook, and Envoy Gateway's cluster for it.
const TCP_ROUTE: &str = "database";
const TCP_ROUTE_CLUSTER: &str = "tcproute/default/database/rule/-1";

/// A TCPRoute `name` on the Gateway's TCP listener to the TailscaleServices `web-service`.
fn tcp_route(name: &str) -> Value {
    json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "TCPRoute",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"parentRefs": [{"name": "eg", "namespace": EG_NAMESPACE, "sectionName": "postgres"}],
            "rules": [{"backendRefs": [{"group": "gateway.tailscale.com", "kind": "TailscaleServices",
                "name": "web-service", "port": 80}]}]}})
}

/// Our server from the built binary, in cluster mode without the reconciler, extension on `xds`.
fn start_server(cp: &ControlPlane, https: u16, xds: u16) -> Process {
    let dir = cp.dir().join("gateway");
    std::fs::create_dir_all(&dir).expect("creating the gateway directory");
    let ca = Ca::generate("tsgw-test-serving-ca").expect("generating the serving CA");
    let serving = ca.issue_server(&["127.0.0.1".to_string()]).expect("issuing the serving certificate");
    std::fs::write(dir.join("tls.crt"), &serving.cert_pem).expect("writing tls.crt");
    std::fs::write(dir.join("tls.key"), &serving.key_pem).expect("writing tls.key");
    std::fs::write(dir.join("ca.crt"), &ca.pair().cert_pem).expect("writing ca.crt");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tailscale-gateway"));
    cmd.arg("serve")
        .arg(format!("--listen=127.0.0.1:{https}"))
        .arg(format!("--xds-addr=127.0.0.1:{xds}"))
        .arg(format!("--tls-cert-file={}", dir.join("tls.crt").display()))
        .arg(format!("--tls-key-file={}", dir.join("tls.key").display()))
        .args(["--no-reconciler", "--self-managed-certs=false"])
        .env("KUBECONFIG", &cp.kubeconfig)
        .env("RUST_LOG", "info,tailscale_gateway=debug");
    let mut server = Process::spawn("tailscale-gateway", cmd, dir.join("server.log"));
    // Envoy Gateway translates a route once and again only on a change: our cache must be full
    // before its first call, or the cluster would stay as an empty cache made it.
    wait_until("our extension's cache synced", || {
        server.assert_running();
        server.log().contains("xds: cache synced")
    });
    server
}

fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    while !ok() {
        assert!(Instant::now() < deadline, "{what}: not after {TIMEOUT:?}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

// ---- The recording proxy between Envoy Gateway and our server -----------------------------------

/// A gRPC codec that passes message bytes through untouched.
#[derive(Clone, Copy, Default)]
struct Raw;

impl tonic::codec::Codec for Raw {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl tonic::codec::Encoder for Raw {
    type Item = Bytes;
    type Error = tonic::Status;
    fn encode(&mut self, item: Bytes, dst: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put(item);
        Ok(())
    }
}

impl tonic::codec::Decoder for Raw {
    type Item = Bytes;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<Bytes>, tonic::Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// One call Envoy Gateway made: the method, the request and our answer, as bytes on the wire.
#[derive(Clone, Debug)]
struct Call {
    method: String,
    request: Bytes,
    response: Result<Bytes, String>,
}

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send>>;
const BIG: usize = 256 * 1024 * 1024;

/// Every method of the extension service, forwarded to `upstream` and recorded in `calls`.
#[derive(Clone)]
struct Tap {
    upstream: tonic::transport::Channel,
    calls: Arc<Mutex<Vec<Call>>>,
}

impl tonic::server::NamedService for Tap {
    const NAME: &'static str = tailscale_gateway::xds::SERVICE_NAME;
}

impl tower::Service<http::Request<tonic::body::Body>> for Tap {
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let forward = Forward { tap: self.clone(), path: req.uri().path().to_string() };
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(Raw).max_decoding_message_size(BIG).max_encoding_message_size(BIG);
            Ok(grpc.unary(forward, req).await)
        })
    }
}

struct Forward {
    tap: Tap,
    path: String,
}

impl tonic::server::UnaryService<Bytes> for Forward {
    type Response = Bytes;
    type Future = BoxFuture<Result<tonic::Response<Bytes>, tonic::Status>>;

    fn call(&mut self, request: tonic::Request<Bytes>) -> Self::Future {
        let (tap, path) = (self.tap.clone(), self.path.clone());
        Box::pin(async move {
            let body = request.into_inner();
            let mut client = tonic::client::Grpc::new(tap.upstream.clone())
                .max_decoding_message_size(BIG)
                .max_encoding_message_size(BIG);
            let method = path.rsplit('/').next().unwrap_or_default().to_string();
            let answer = async {
                client.ready().await.map_err(|e| tonic::Status::unavailable(e.to_string()))?;
                let path = http::uri::PathAndQuery::try_from(path.as_str())
                    .map_err(|e| tonic::Status::internal(e.to_string()))?;
                client.unary(tonic::Request::new(body.clone()), path, Raw).await
            }
            .await;
            let response = answer.as_ref().map(|r| r.get_ref().clone()).map_err(|s| s.to_string());
            tap.calls.lock().unwrap_or_else(|e| e.into_inner()).push(Call { method, request: body, response });
            answer
        })
    }
}

/// Starts the recording proxy on a free port, forwarding to our extension on `upstream`.
fn start_tap(rt: &tokio::runtime::Runtime, upstream: u16) -> (u16, Arc<Mutex<Vec<Call>>>) {
    let calls = Arc::new(Mutex::new(Vec::new()));
    let _guard = rt.enter();
    let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{upstream}"))
        .expect("parsing the extension's upstream address")
        .connect_lazy();
    let tap = Tap { upstream: channel, calls: calls.clone() };
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).expect("binding the recording proxy");
    let port = listener.local_addr().expect("reading the recording proxy's address").port();
    rt.spawn(async move {
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let served = tonic::transport::Server::builder().add_service(tap).serve_with_incoming(incoming).await;
        if let Err(e) = served {
            eprintln!("recording proxy stopped: {e}");
        }
    });
    (port, calls)
}

// ---- Envoy Gateway ------------------------------------------------------------------------------

/// Envoy Gateway's own configuration: provider Kubernetes (leader election and the topology
/// injector's webhook off), the extension on `extension_port` of loopback, plain gRPC.
fn envoy_gateway_config(extension_port: u16, admin_port: u16) -> Value {
    let backend = |kind: &str| json!({"group": "gateway.tailscale.com", "version": "v1alpha1", "kind": kind});
    json!({
        "apiVersion": "gateway.envoyproxy.io/v1alpha1",
        "kind": "EnvoyGateway",
        "provider": {"type": "Kubernetes", "kubernetes": {
            "leaderElection": {"disable": true},
            "proxyTopologyInjector": {"disabled": true}}},
        "gateway": {"controllerName": "gateway.envoyproxy.io/gatewayclass-controller"},
        "admin": {"address": {"host": "127.0.0.1", "port": admin_port}},
        "logging": {"level": {"default": "info"}},
        "extensionManager": {
            "backendResources": [backend("TailscaleServices"), backend("TailscaleEndpoints")],
            "policyResources": [backend("TailscaleRoutePolicy")],
            "hooks": {"xdsTranslator": {
                "post": ["Route", "VirtualHost", "HTTPListener", "Translation", "Cluster"],
                "translation": {"route": {"includeAll": true}, "listener": {"includeAll": true}}}},
            "service": {"ip": {"address": "127.0.0.1", "port": extension_port}},
            "failOpen": false,
            "maxMessageSize": "64Mi"
        }
    })
}

/// The certificates of Envoy Gateway's xDS server (mutual TLS) and of our ADS client.
struct XdsPki {
    ca_pem: String,
    client_cert: String,
    client_key: String,
}

/// Lays out Envoy Gateway's root directory and starts it in it.
fn start_envoy_gateway(cp: &ControlPlane, extension_port: u16) -> (Process, XdsPki) {
    let bin = util::cluster::binary("envoy-gateway", "ENVOY_GATEWAY_VERSION");
    let root = cp.dir().join("envoy-gateway-root");
    for dir in ["certs", "tmp", "home"] {
        std::fs::create_dir_all(root.join(dir)).expect("creating the Envoy Gateway root directories");
    }
    let write = |rel: &str, text: &str| {
        std::fs::write(root.join(rel), text).unwrap_or_else(|e| panic!("{rel}: {e}"));
    };
    // The binary inside the root: a hard link when the cache is on the same file system.
    let inside = root.join("envoy-gateway");
    if std::fs::hard_link(&bin, &inside).is_err() {
        std::fs::copy(&bin, &inside).unwrap_or_else(|e| panic!("copying {}: {e}", bin.display()));
    }
    let ca = Ca::generate("tsgw-test-envoy-gateway-ca").expect("generating the Envoy Gateway CA");
    let names = ["envoy-gateway", "localhost", "127.0.0.1"].map(String::from);
    let serving = ca.issue_server(&names).expect("issuing the Envoy Gateway serving certificate");
    let client = ca.issue_client("envoy", &[]).expect("issuing Envoy's client certificate");
    write("certs/ca.crt", &ca.pair().cert_pem);
    write("certs/tls.crt", &serving.cert_pem);
    write("certs/tls.key", &serving.key_pem);
    write("config.yaml", &envoy_gateway_config(extension_port, free_port()).to_string());
    write("kubeconfig", &embedded_kubeconfig(cp).to_string());
    let mut cmd = Command::new("unshare");
    cmd.args(["--user", "--map-root-user", "--mount"])
        .arg(format!("--root={}", root.display()))
        .args(["/envoy-gateway", "server", "--config-path=/config.yaml"])
        .env_clear()
        .env("KUBECONFIG", "/kubeconfig")
        .env("HOME", "/home")
        .env("TMPDIR", "/tmp")
        .env("ENVOY_GATEWAY_NAMESPACE", EG_NAMESPACE);
    let process = Process::spawn("envoy-gateway", cmd, cp.dir().join("envoy-gateway.log"));
    let pki = XdsPki { ca_pem: ca.pair().cert_pem.clone(), client_cert: client.cert_pem, client_key: client.key_pem };
    (process, pki)
}

/// The admin kubeconfig with its certificates inline (the files are outside Envoy Gateway's root).
fn embedded_kubeconfig(cp: &ControlPlane) -> Value {
    let b64 = |p: &Path| {
        let bytes = std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        base64::engine::general_purpose::STANDARD.encode(bytes)
    };
    let f = &cp.files;
    json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "test", "cluster": {"server": cp.server, "certificate-authority-data": b64(&f.ca)}}],
        "users": [{"name": "admin", "user": {"client-certificate-data": b64(&f.admin_cert), "client-key-data": b64(&f.admin_key)}}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "admin"}}],
        "current-context": "test",
    })
}

// ---- Reading Envoy Gateway's xDS as an Envoy would ------------------------------------------------

/// One state-of-the-world ADS request for `type_url` (all resources when `names` is empty) as a
/// proxy of Gateway `eg`; the first response's resources, or None when none came in time.
async fn ads_fetch(pki: &XdsPki, type_url: &str, names: &[&str]) -> Option<Vec<Any>> {
    // Envoy Gateway may answer a request for resources it has none of with nothing at all, not
    // even the stream's headers: bound the whole exchange.
    tokio::time::timeout(Duration::from_secs(5), ads_fetch_once(pki, type_url, names)).await.ok()?
}

async fn ads_fetch_once(pki: &XdsPki, type_url: &str, names: &[&str]) -> Option<Vec<Any>> {
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(&pki.ca_pem))
        .identity(tonic::transport::Identity::from_pem(&pki.client_cert, &pki.client_key))
        .domain_name("envoy-gateway");
    let channel = tonic::transport::Endpoint::from_shared(format!("https://127.0.0.1:{EG_XDS_PORT}"))
        .ok()?
        .tls_config(tls)
        .ok()?
        .connect()
        .await
        .ok()?;
    let mut client = AggregatedDiscoveryServiceClient::new(channel).max_decoding_message_size(BIG);
    let request = DiscoveryRequest {
        // Envoy Gateway keys its snapshots by the node's cluster: the Gateway's namespace/name.
        node: Some(Node { id: "tsgw-test-envoy".into(), cluster: format!("{EG_NAMESPACE}/eg"), ..Default::default() }),
        type_url: type_url.into(),
        resource_names: names.iter().map(|n| n.to_string()).collect(),
        ..Default::default()
    };
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(request).await.ok()?;
    let mut stream =
        client.stream_aggregated_resources(tokio_stream::wrappers::ReceiverStream::new(rx)).await.ok()?.into_inner();
    let response = tokio::time::timeout(Duration::from_secs(3), stream.message()).await.ok()?.ok()??;
    drop(tx);
    Some(response.resources)
}

fn decode<M: Message + Default>(any: &Any) -> M {
    M::decode(any.value.as_slice()).unwrap_or_else(|e| panic!("{}: {e}", any.type_url))
}

/// Envoy Gateway's clusters once `ready` holds for them (polled over ADS).
fn clusters_when(
    rt: &tokio::runtime::Runtime,
    pki: &XdsPki,
    eg: &mut Process,
    ready: impl Fn(&BTreeMap<String, Cluster>) -> bool,
) -> BTreeMap<String, Cluster> {
    let deadline = Instant::now() + TIMEOUT;
    let mut last = BTreeMap::new();
    loop {
        eg.assert_running();
        if let Some(resources) = rt.block_on(ads_fetch(pki, CLUSTER_TYPE, &[])) {
            last = resources.iter().map(decode::<Cluster>).map(|c| (c.name.clone(), c)).collect();
            if ready(&last) {
                return last;
            }
        }
        assert!(
            Instant::now() < deadline,
            "Envoy Gateway's clusters never got there: {:?}\n{}",
            last.keys().collect::<Vec<_>>(),
            eg.log_tail()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn route_configuration(rt: &tokio::runtime::Runtime, pki: &XdsPki, eg: &mut Process) -> RouteConfiguration {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        eg.assert_running();
        let got = rt.block_on(ads_fetch(pki, ROUTE_TYPE, &[ROUTE_CONFIG])).unwrap_or_default();
        if let Some(rc) = got.iter().map(decode::<RouteConfiguration>).find(|rc| rc.name == ROUTE_CONFIG) {
            return rc;
        }
        assert!(Instant::now() < deadline, "no route configuration {ROUTE_CONFIG}:\n{}", eg.log_tail());
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn endpoints_by_priority(c: &Cluster) -> Vec<(u32, Vec<String>)> {
    let assignment = c.load_assignment.as_ref().unwrap_or_else(|| panic!("{} has no load assignment", c.name));
    assignment
        .endpoints
        .iter()
        .map(|l| {
            let hosts = l
                .lb_endpoints
                .iter()
                .filter_map(|e| match &e.host_identifier {
                    Some(lb_endpoint::HostIdentifier::Endpoint(ep)) => ep.address.as_ref(),
                    _ => None,
                })
                .filter_map(|a| match &a.address {
                    Some(address::Address::SocketAddress(s)) => Some(match s.port_specifier {
                        Some(socket_address::PortSpecifier::PortValue(p)) => format!("{}:{p}", s.address),
                        _ => s.address.clone(),
                    }),
                    _ => None,
                })
                .collect();
            (l.priority, hosts)
        })
        .collect()
}

fn discovery_type(c: &Cluster) -> Option<cluster::DiscoveryType> {
    match c.cluster_discovery_type {
        Some(cluster::ClusterDiscoveryType::Type(t)) => cluster::DiscoveryType::try_from(t).ok(),
        _ => None,
    }
}

/// The HTTPRoute's condition `type` on its (only) parent.
fn route_condition(cp: &ControlPlane, type_: &str) -> Option<String> {
    let out = cp.kubectl_output(&["get", "httproute", "web", "-n", "default", "-o", "json"], None);
    let route: Value = serde_json::from_slice(&out.stdout).ok()?;
    let conditions = route.pointer("/status/parents/0/conditions")?.as_array()?;
    let c = conditions.iter().find(|c| c["type"] == type_)?;
    Some(format!("{}/{}", c["status"].as_str()?, c["reason"].as_str().unwrap_or_default()))
}

/// Our server's metrics over HTTPS. In a cluster `/metrics` is authorized by kube-apiserver (a
/// SubjectAccessReview for GET /metrics), so the request comes as kube-apiserver's front proxy
/// would send it, for a user in `system:masters`.
fn metrics(cp: &ControlPlane, https: u16) -> String {
    let f = &cp.files;
    let out = Command::new("curl")
        .args(["-sSk", "--max-time", "10", "--cert"])
        .arg(&f.proxy_client_cert)
        .arg("--key")
        .arg(&f.proxy_client_key)
        .args(["-H", "X-Remote-User: metrics-test", "-H", "X-Remote-Group: system:masters"])
        .arg(format!("https://127.0.0.1:{https}/metrics"))
        .output()
        .expect("running curl");
    assert!(out.status.success(), "GET /metrics: {}", stderr(&out));
    stdout(&out)
}

fn metric(text: &str, line_prefix: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(line_prefix).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no {line_prefix} in:\n{text}"))
}

/// The length of `bytes` re-encoded from what `M` decodes of them (shorter when fields unknown
/// to `M` were dropped).
fn known_len<M: Message + Default>(bytes: &Bytes) -> usize {
    M::decode(bytes.clone()).expect("decoding the recorded message").encoded_len()
}

/// The load-balancing policies of `c`, one line each, typed configs decoded where we know them.
fn lb_policies(c: &Cluster) -> Vec<String> {
    use envoy_types::pb::envoy::extensions::load_balancing_policies::least_request::v3::LeastRequest;
    let policies = c.load_balancing_policy.iter().flat_map(|p| &p.policies);
    policies
        .filter_map(|p| p.typed_extension_config.as_ref())
        .map(|t| match &t.typed_config {
            Some(any) if any.type_url.ends_with(".LeastRequest") => {
                format!("{}: {:?}", t.name, decode::<LeastRequest>(any))
            }
            Some(any) => format!("{}: {} ({} bytes)", t.name, any.type_url, any.value.len()),
            None => t.name.clone(),
        })
        .collect()
}

/// Whether `c`'s typed load-balancing policy weights localities (then a locality without a
/// `load_balancing_weight` gets no load at all, as Envoy documents for LocalityLbEndpoints).
fn locality_weighted(c: &Cluster) -> bool {
    use envoy_types::pb::envoy::extensions::load_balancing_policies::common::v3::locality_lb_config::LocalityConfigSpecifier;
    use envoy_types::pb::envoy::extensions::load_balancing_policies::least_request::v3::LeastRequest;
    let typed = c.load_balancing_policy.iter().flat_map(|p| &p.policies).filter_map(|p| {
        let any = p.typed_extension_config.as_ref()?.typed_config.as_ref()?;
        any.type_url.ends_with(".LeastRequest").then(|| decode::<LeastRequest>(any))
    });
    let common = c.common_lb_config.as_ref().and_then(|l| l.locality_config_specifier.as_ref());
    typed
        .filter_map(|lr| lr.locality_lb_config.and_then(|l| l.locality_config_specifier))
        .any(|s| matches!(s, LocalityConfigSpecifier::LocalityWeightedLbConfig(_)))
        || matches!(common, Some(cluster::common_lb_config::LocalityConfigSpecifier::LocalityWeightedLbConfig(_)))
}

/// What Envoy Gateway sent to PostClusterModify for our route's cluster, printed for the reader
/// (the full request with `TSGW_DUMP_XDS=1`) and checked for fields our protos do not know.
fn report_post_cluster_modify(calls: &[Call]) -> PostClusterModifyRequest {
    let methods: BTreeMap<&str, usize> = calls.iter().fold(BTreeMap::new(), |mut m, c| {
        *m.entry(c.method.as_str()).or_default() += 1;
        m
    });
    eprintln!("Envoy Gateway's calls through the recording proxy: {methods:?}");
    // Every request of every hook decodes with our protos to exactly the bytes Envoy Gateway sent:
    // no field we lack (a backendRef port, a weight) is dropped on the way in.
    for call in calls {
        let known = match call.method.as_str() {
            "PostRouteModify" => known_len::<pb::PostRouteModifyRequest>(&call.request),
            "PostVirtualHostModify" => known_len::<pb::PostVirtualHostModifyRequest>(&call.request),
            "PostHTTPListenerModify" => known_len::<pb::PostHttpListenerModifyRequest>(&call.request),
            "PostClusterModify" => known_len::<pb::PostClusterModifyRequest>(&call.request),
            "PostEndpointsModify" => known_len::<pb::PostEndpointsModifyRequest>(&call.request),
            "PostTranslateModify" => known_len::<pb::PostTranslateModifyRequest>(&call.request),
            other => panic!("Envoy Gateway called {other}, which our service lacks"),
        };
        assert_eq!(known, call.request.len(), "{} carries fields our protos do not know", call.method);
        assert!(call.response.is_ok(), "our {} failed: {:?}", call.method, call.response);
    }
    for call in calls.iter().filter(|c| c.method == "PostRouteModify") {
        let r = pb::PostRouteModifyRequest::decode(call.request.clone())
            .expect("decoding a recorded PostRouteModify request");
        let route = r.route.unwrap_or_default();
        let kinds: Vec<String> = r
            .post_route_context
            .iter()
            .flat_map(|c| &c.extension_resources)
            .filter_map(|e| serde_json::from_slice::<Value>(&e.unstructured_bytes).ok())
            .map(|v| {
                format!(
                    "{}/{}",
                    v["kind"].as_str().unwrap_or_default(),
                    v["metadata"]["name"].as_str().unwrap_or_default()
                )
            })
            .collect();
        eprintln!("PostRouteModify {}: action {:?}, extension resources {kinds:?}", route.name, route.action);
    }
    let ours: Vec<&Call> = calls
        .iter()
        .filter(|c| c.method == "PostClusterModify")
        .filter(|c| {
            PostClusterModifyRequest::decode(c.request.clone())
                .is_ok_and(|r| r.cluster.is_some_and(|cl| cl.name == ROUTE_CLUSTER))
        })
        .collect();
    let call = ours.last().unwrap_or_else(|| panic!("no PostClusterModify for {ROUTE_CLUSTER}: {methods:?}"));
    let request = PostClusterModifyRequest::decode(call.request.clone())
        .expect("decoding the recorded PostClusterModify request");
    let c = request.cluster.clone().unwrap_or_default();
    eprintln!("PostClusterModify for {ROUTE_CLUSTER} ({} call(s), {} bytes):", ours.len(), call.request.len());
    eprintln!("  type {:?}, eds_cluster_config {:?}", discovery_type(&c), c.eds_cluster_config);
    eprintln!("  load_assignment {:?}", c.load_assignment);
    eprintln!(
        "  connect_timeout {:?}, per_connection_buffer_limit_bytes {:?}",
        c.connect_timeout, c.per_connection_buffer_limit_bytes
    );
    eprintln!("  lb_policy {:?}, common_lb_config {:?}", cluster::LbPolicy::try_from(c.lb_policy), c.common_lb_config);
    eprintln!("  load_balancing_policy {:?} (locality weighted: {})", lb_policies(&c), locality_weighted(&c));
    eprintln!("  circuit_breakers {:?}", c.circuit_breakers);
    eprintln!("  outlier_detection {:?}, health_checks {:?}", c.outlier_detection, c.health_checks);
    eprintln!("  metadata {:?}", c.metadata);
    for (i, res) in request.post_cluster_context.iter().flat_map(|c| &c.backend_extension_resources).enumerate() {
        eprintln!("  backend_extension_resources[{i}]: {}", String::from_utf8_lossy(&res.unstructured_bytes));
    }
    let answer = match &call.response {
        Ok(bytes) => PostClusterModifyResponse::decode(bytes.clone()).expect("decoding our PostClusterModify response"),
        Err(status) => panic!("our PostClusterModify failed: {status}"),
    };
    if std::env::var_os("TSGW_DUMP_XDS").is_some() {
        eprintln!("full request:\n{request:#?}\nour answer:\n{answer:#?}");
    }
    request
}

#[test]
#[ignore = "needs the real control plane and Envoy Gateway: run hack/test.sh"]
fn real_envoy_gateway_calls_the_extension() {
    let started = Instant::now();
    // Missing binaries fail here, naming the build script, before anything starts.
    util::cluster::binary("envoy-gateway", "ENVOY_GATEWAY_VERSION");
    envoy_gateway_crds();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("building the tokio runtime");
    let cp = ControlPlane::start();
    install_crds(&cp);
    apply_scenario(&cp);

    let [https, xds] = util::cluster::free_ports();
    let mut server = start_server(&cp, https, xds);
    let (tap_port, calls) = start_tap(&rt, xds);
    let (mut eg, pki) = start_envoy_gateway(&cp, tap_port);

    // 1. Envoy Gateway accepted the route and resolved the TailscaleServices backendRef.
    wait_until("HTTPRoute web Accepted and ResolvedRefs", || {
        eg.assert_running();
        route_condition(&cp, "Accepted").is_some_and(|s| s.starts_with("True"))
            && route_condition(&cp, "ResolvedRefs").is_some_and(|s| s.starts_with("True"))
    });

    // 2. The xDS it would serve: our route's cluster filled by PostClusterModify, and the
    //    TailscaleGateway's cluster added by PostTranslateModify.
    let tailscale_cluster = "tailscale/default/web-service";
    let clusters = clusters_when(&rt, &pki, &mut eg, |c| {
        c.get(ROUTE_CLUSTER).is_some_and(|c| discovery_type(c) == Some(cluster::DiscoveryType::StrictDns))
            && c.contains_key(tailscale_cluster)
    });
    let route_cluster = &clusters[ROUTE_CLUSTER];
    let levels = endpoints_by_priority(route_cluster);
    assert_eq!(levels.len(), 2, "two priorities: {levels:?}");
    assert_eq!(levels[0], (0, vec!["web.default.svc.cluster.local:8080".to_string()]), "{levels:?}");
    let (priority, hosts) = &levels[1];
    assert_eq!(*priority, 1, "{levels:?}");
    assert_eq!(hosts.len(), 1, "{levels:?}");
    let (host, port) = hosts[0].rsplit_once(':').unwrap_or_else(|| panic!("{hosts:?}"));
    assert_eq!(host, "web-proxy-west-svc.default.svc.cluster.local", "the egress endpoints only: {levels:?}");
    let port: u16 = port.parse().expect("parsing the endpoint port");
    assert!((3000..=3999).contains(&port), "match port {port}");
    assert_eq!(
        route_cluster.outlier_detection,
        Some(tailscale_gateway::core::envoy::outlier_detection()),
        "our outlier detection (Envoy Gateway sent none)"
    );
    assert!(route_cluster.eds_cluster_config.is_none(), "{route_cluster:#?}");
    // Envoy Gateway's default policy (kept: the service sets no strategy) weights localities:
    // least_request with locality_weighted_lb_config. Envoy gives a locality without a
    // load_balancing_weight no load at all, so every locality needs one (Envoy Gateway's own EDS
    // sets 1, or the backendRef's weight).
    if locality_weighted(route_cluster) {
        let assignment = route_cluster.load_assignment.as_ref().unwrap_or_else(|| panic!("no load assignment"));
        let unweighted: Vec<String> = assignment
            .endpoints
            .iter()
            .filter(|l| l.load_balancing_weight.is_none_or(|w| w.value == 0))
            .map(|l| format!("priority {} {:?}", l.priority, l.locality.as_ref().map(|l| &l.sub_zone)))
            .collect();
        assert!(
            unweighted.is_empty(),
            "locality-weighted LB policy {:?}, but localities without load_balancing_weight get no traffic: {unweighted:?}",
            lb_policies(route_cluster)
        );
    }
    eprintln!(
        "cluster {ROUTE_CLUSTER} as Envoy Gateway serves it: {:?} {levels:?}, load_balancing_policy {:?} (locality weighted: {})",
        discovery_type(route_cluster),
        lb_policies(route_cluster),
        locality_weighted(route_cluster),
    );

    let rc = route_configuration(&rt, &pki, &mut eg);
    let ours: Vec<(String, String)> = rc
        .virtual_hosts
        .iter()
        .flat_map(|vh| &vh.routes)
        .filter_map(|r| {
            let prefix = match r.r#match.as_ref()?.path_specifier.as_ref()? {
                route_match::PathSpecifier::Prefix(p) => p.clone(),
                _ => return None,
            };
            let cluster = match r.action.as_ref()? {
                route::Action::Route(a) => match a.cluster_specifier.as_ref()? {
                    route_action::ClusterSpecifier::Cluster(c) => c.clone(),
                    _ => return None,
                },
                _ => return None,
            };
            Some((prefix, cluster))
        })
        .filter(|(prefix, _)| prefix.starts_with("/tailscale/"))
        .collect();
    assert!(
        ours.contains(&("/tailscale/web-service/".to_string(), tailscale_cluster.to_string())),
        "the TailscaleGateway's route in {ROUTE_CONFIG}: {ours:?}\n{rc:#?}"
    );
    let tailscale = &clusters[tailscale_cluster];
    assert!(!endpoints_by_priority(tailscale).is_empty(), "{tailscale:#?}");

    // 3. Our hooks were called (our own metrics) and answered without errors.
    let text = metrics(&cp, https);
    for hook in ["PostClusterModify", "PostTranslateModify", "PostRouteModify"] {
        let n = metric(&text, &format!("tailscale_gateway_xds_hook_calls_total{{hook=\"{hook}\"}}"));
        assert!(n >= 1.0, "{hook} never called:\n{text}");
    }
    assert!(!text.contains("tailscale_gateway_xds_hook_errors_total{"), "hook errors:\n{text}");

    // 4. What Envoy Gateway sent for the route's cluster.
    let recorded = calls.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let request = report_post_cluster_modify(&recorded);
    let sent = request.cluster.unwrap_or_default();
    assert_eq!(discovery_type(&sent), Some(cluster::DiscoveryType::Eds), "Envoy Gateway sends an EDS cluster");
    let resources = request.post_cluster_context.map(|c| c.backend_extension_resources).unwrap_or_default();
    assert_eq!(resources.len(), 1, "one backendRef, one extension resource");
    let object: Value =
        serde_json::from_slice(&resources[0].unstructured_bytes).expect("parsing the backend extension resource");
    assert_eq!(
        (object["kind"].as_str(), object["metadata"]["name"].as_str()),
        (Some("TailscaleServices"), Some("web-service"))
    );

    // 5. Route kinds whose backends Envoy Gateway keeps from us: refused by our webhook.
    tcp_routes_are_refused(&cp, &rt, &pki, &mut eg, &recorded, https);

    // 6. A route policy: Envoy Gateway translates again, our PostTranslateModify turns Envoy's
    //    authorization on for the policy's route, and our authorization service decides.
    route_policy_is_enforced(&cp, &rt, &pki, &mut eg, xds);
    let text = metrics(&cp, https);
    for (verdict, via) in [("denied", "false"), ("allowed", "true"), ("allowed", "false")] {
        let series = format!(
            "tailscale_gateway_route_policy_decisions_total{{verdict=\"{verdict}\",via_ingress_proxy=\"{via}\"}}"
        );
        assert!(metric(&text, &series) >= 1.0, "{series} not counted:\n{text}");
    }

    server.assert_running();
    eg.assert_running();
    eprintln!("real Envoy Gateway test done in {:.1}s", started.elapsed().as_secs_f64());
}

/// The TCPRoute's condition `type` on its (only) parent.
fn tcp_route_condition(cp: &ControlPlane, type_: &str) -> Option<String> {
    let out = cp.kubectl_output(&["get", "tcproute", TCP_ROUTE, "-n", "default", "-o", "json"], None);
    let route: Value = serde_json::from_slice(&out.stdout).ok()?;
    let conditions = route.pointer("/status/parents/0/conditions")?.as_array()?;
    let c = conditions.iter().find(|c| c["type"] == type_)?;
    Some(format!("{}/{}", c["status"].as_str()?, c["reason"].as_str().unwrap_or_default()))
}

/// Why TCPRoutes (like TLSRoutes and UDPRoutes) may not name our kinds, shown on the real Envoy
/// Gateway: it accepts the route stored before our webhook, resolves its ref, builds its cluster
/// with no endpoints and never calls a hook with our object. Then, with our validating webhook
/// registered, kube-apiserver refuses a new one, naming the field.
fn tcp_routes_are_refused(
    cp: &ControlPlane,
    rt: &tokio::runtime::Runtime,
    pki: &XdsPki,
    eg: &mut Process,
    recorded: &[Call],
    https: u16,
) {
    wait_until("TCPRoute database Accepted", || {
        eg.assert_running();
        tcp_route_condition(cp, "Accepted").is_some()
    });
    let (accepted, resolved) = (tcp_route_condition(cp, "Accepted"), tcp_route_condition(cp, "ResolvedRefs"));
    eprintln!("TCPRoute {TCP_ROUTE} to a TailscaleServices: Accepted {accepted:?}, ResolvedRefs {resolved:?}");
    assert!(accepted.as_deref().is_some_and(|s| s.starts_with("True")), "{accepted:?}");
    assert!(resolved.as_deref().is_some_and(|s| s.starts_with("True")), "nothing tells the user: {resolved:?}");
    let clusters = clusters_when(rt, pki, eg, |c| c.contains_key(TCP_ROUTE_CLUSTER));
    let cluster = &clusters[TCP_ROUTE_CLUSTER];
    let endpoints = rt.block_on(ads_fetch(pki, ENDPOINTS_TYPE, &[TCP_ROUTE_CLUSTER])).unwrap_or_default();
    let hosts: usize = endpoints
        .iter()
        .map(decode::<ClusterLoadAssignment>)
        .filter(|a| a.cluster_name == TCP_ROUTE_CLUSTER)
        .flat_map(|a| a.endpoints)
        .map(|l| l.lb_endpoints.len())
        .sum::<usize>()
        + cluster.load_assignment.iter().flat_map(|a| &a.endpoints).map(|l| l.lb_endpoints.len()).sum::<usize>();
    eprintln!("its cluster {TCP_ROUTE_CLUSTER}: {:?}, {hosts} endpoint(s)", discovery_type(cluster));
    assert_eq!(hosts, 0, "{cluster:#?}");
    let hooked = recorded.iter().filter(|c| c.method == "PostClusterModify").any(|c| {
        PostClusterModifyRequest::decode(c.request.clone())
            .is_ok_and(|r| r.cluster.is_some_and(|cl| cl.name == TCP_ROUTE_CLUSTER))
    });
    assert!(!hooked, "Envoy Gateway handed {TCP_ROUTE_CLUSTER} to the extension after all");

    let dir = cp.dir().join("gateway");
    let ca = std::fs::read(dir.join("ca.crt")).expect("reading our server's CA");
    let text =
        std::fs::read_to_string(root().join("webhooks/validating.yaml")).expect("reading webhooks/validating.yaml");
    let mut config: Value = serde_saphyr::from_str(&text).expect("parsing webhooks/validating.yaml");
    let ca_bundle = base64::engine::general_purpose::STANDARD.encode(ca);
    for hook in config["webhooks"].as_array_mut().expect("webhooks/validating.yaml has webhooks") {
        hook["clientConfig"] = json!({"url": format!("https://127.0.0.1:{https}/validate"), "caBundle": ca_bundle});
    }
    apply(cp, &config, &[]);
    let deadline = Instant::now() + TIMEOUT;
    let denied = loop {
        let out =
            cp.kubectl_output(&["apply", "--dry-run=server", "-f", "-"], Some(&tcp_route("database-2").to_string()));
        if !out.status.success() {
            break stderr(&out);
        }
        assert!(Instant::now() < deadline, "a TCPRoute to a TailscaleServices was never refused");
        std::thread::sleep(Duration::from_millis(250));
    };
    eprintln!("kubectl apply of a second TCPRoute: {denied}");
    for want in [
        "admission webhook \"validate-routes.gateway.tailscale.com\" denied the request",
        "TCPRoute \"database-2\" is invalid: spec.rules[0].backendRefs[0]: Forbidden: TailscaleServices \"web-service\"",
        "Envoy Gateway hands only HTTPRoute and GRPCRoute backends to tailscale-gateway",
    ] {
        assert!(denied.contains(want), "{want:?} not in: {denied}");
    }
}

/// The per-route authorization settings of the HTTPRoute `web`'s Envoy route, once there.
fn policy_settings(rt: &tokio::runtime::Runtime, pki: &XdsPki, eg: &mut Process) -> (Route, CheckSettings) {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let rc = route_configuration(rt, pki, eg);
        let route =
            rc.virtual_hosts.iter().flat_map(|vh| &vh.routes).find(|r| r.name.starts_with("httproute/default/web/"));
        if let Some(any) = route.and_then(|r| r.typed_per_filter_config.get(authz::FILTER_NAME)) {
            let config = FilterConfig::decode(any.value.as_slice()).expect("decoding the FilterConfig");
            assert!(!config.disabled, "the route must turn the filter on");
            let per_route = ExtAuthzPerRoute::decode(config.config.expect("per-route settings").value.as_slice())
                .expect("decoding ExtAuthzPerRoute");
            let Some(ext_authz_per_route::Override::CheckSettings(settings)) = per_route.r#override else {
                panic!("no check settings: {per_route:?}")
            };
            return (route.cloned().unwrap_or_default(), settings);
        }
        assert!(Instant::now() < deadline, "the policy never reached the route:\n{rc:#?}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// One check as Envoy would send it for `path`, from `source`, with `headers`, naming the policy
/// the served route's settings name.
fn check_request(settings: &CheckSettings, source: &str, path: &str, headers: &[(&str, &str)]) -> CheckRequest {
    let policy = settings.context_extensions.get(authz::POLICY_CONTEXT_KEY).map(String::as_str).unwrap_or_default();
    tailscale_gateway::xds::authz::testing::check_request(policy, source, "GET", path, headers)
}

/// What our authorization service answers: (allowed, status, body, headers set, headers removed).
fn check(
    rt: &tokio::runtime::Runtime,
    xds: u16,
    request: CheckRequest,
) -> (bool, i32, String, Vec<(String, String)>, Vec<String>) {
    use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
    use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
    let answer = rt.block_on(async {
        let mut client = AuthorizationClient::connect(format!("http://127.0.0.1:{xds}"))
            .await
            .expect("connecting to our authorization service");
        client.check(request).await.expect("Check").into_inner()
    });
    match answer.http_response {
        Some(HttpResponse::OkResponse(ok)) => {
            let set =
                ok.headers.iter().filter_map(|h| h.header.as_ref()).map(|h| (h.key.clone(), h.value.clone())).collect();
            (true, 200, String::new(), set, ok.headers_to_remove)
        }
        Some(HttpResponse::DeniedResponse(d)) => {
            (false, d.status.map_or(0, |s| s.code), d.body, Vec::new(), Vec::new())
        }
        other => panic!("no HTTP answer: {other:?}"),
    }
}

/// The example policy on the HTTPRoute `web`, through the real Envoy Gateway: our webhook admits
/// it, Envoy Gateway translates again (the policy kind is one of its extension `resources`), and
/// the xDS it serves has our ext_authz filter in the Gateway's connection manager, the route's
/// settings naming the policy and the cluster to our server. Our authorization service then
/// decides as Envoy would ask it: identity is believed only from an ingress proxy's pod (a Pod
/// with its labels and IP, stored in the real kube-apiserver and watched by our server).
fn route_policy_is_enforced(cp: &ControlPlane, rt: &tokio::runtime::Runtime, pki: &XdsPki, eg: &mut Process, xds: u16) {
    let policy = root().join("examples/envoy-gateway/route-policy.yaml");
    cp.kubectl_ok(&["apply", "--server-side", "-f", &policy.display().to_string()]);
    let (route, settings) = policy_settings(rt, pki, eg);
    eprintln!("route {} carries {:?}", route.name, settings.context_extensions);
    assert_eq!(
        settings.context_extensions.get(authz::POLICY_CONTEXT_KEY).map(String::as_str),
        Some("default/web-admin")
    );
    let listeners = rt.block_on(ads_fetch(pki, LISTENER_TYPE, &[])).unwrap_or_default();
    let filters: Vec<(String, bool)> = listeners
        .iter()
        .map(decode::<Listener>)
        .flat_map(|l| l.filter_chains.into_iter().chain(l.default_filter_chain))
        .flat_map(|c| c.filters)
        .filter_map(|f| match f.config_type {
            Some(filter::ConfigType::TypedConfig(any)) if f.name == "envoy.filters.network.http_connection_manager" => {
                HttpConnectionManager::decode(any.value.as_slice()).ok()
            }
            _ => None,
        })
        .flat_map(|hcm| hcm.http_filters)
        .map(|f| (f.name, f.disabled))
        .collect();
    eprintln!("HTTP filters Envoy Gateway serves: {filters:?}");
    let ours = filters.iter().position(|(n, _)| n == authz::FILTER_NAME).expect("our ext_authz filter in the listener");
    assert!(filters[ours].1, "disabled by default, on for the policy's routes");
    assert_eq!(filters.get(ours + 1).map(|(n, _)| n.as_str()), Some("envoy.filters.http.router"), "{filters:?}");
    let clusters = clusters_when(rt, pki, eg, |c| c.contains_key(authz::CLUSTER_NAME));
    let endpoints = endpoints_by_priority(&clusters[authz::CLUSTER_NAME]);
    eprintln!("cluster {}: {endpoints:?}", authz::CLUSTER_NAME);

    // An ingress proxy's pod, as the reconciler's StatefulSet would make it (no kubelet here:
    // its IP is written through the status subresource).
    let pod = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web-proxy-east-0", "namespace": "default",
            "labels": {"tailscale-gateway.com/endpoints": "web-proxy-east", "tailscale-gateway.com/connection-type": "ingress"}},
        "spec": {"containers": [{"name": "tailscale", "image": "tailscale/tailscale:stable"}]},
        "status": {"podIP": "10.1.2.3", "podIPs": [{"ip": "10.1.2.3"}]}});
    // (No kube-controller-manager here to make the namespace's default ServiceAccount.)
    apply(
        cp,
        &json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default", "namespace": "default"}}),
        &[],
    );
    apply_with_status(cp, &pod);
    let admin = [("tailscale-app-capabilities", r#"{"example.com/cap/web-admin":[{}]}"#)];
    // The same request from elsewhere in the cluster: the forged capability is not believed.
    let (allowed, status, body, _, _) = check(rt, xds, check_request(&settings, "10.9.9.9", "/admin/users", &admin));
    assert_eq!((allowed, status, body.trim()), (false, 403, "/admin is for the platform team"));
    // Through the ingress proxy (once our server has seen its pod): allowed, with the rule's header and timeout.
    let deadline = Instant::now() + TIMEOUT;
    let (set, removed) = loop {
        let (allowed, _, _, set, removed) =
            check(rt, xds, check_request(&settings, "10.1.2.3", "/admin/users?x=1", &admin));
        if allowed {
            break (set, removed);
        }
        assert!(Instant::now() < deadline, "the ingress proxy's pod was never trusted");
        std::thread::sleep(Duration::from_millis(250));
    };
    assert!(set.contains(&("x-web-role".to_string(), "admin".to_string())), "{set:?}");
    assert!(set.contains(&("x-envoy-upstream-rq-timeout-ms".to_string(), "30000".to_string())), "{set:?}");
    assert!(removed.is_empty(), "{removed:?}");
    // A forged login elsewhere: allowed by the default action, the header removed on the way.
    let forged = [("tailscale-user-login", "alice@example.com"), ("x-tailscale-gateway-route", "default/web-admin/0")];
    let (allowed, _, _, _, removed) = check(rt, xds, check_request(&settings, "10.9.9.9", "/", &forged));
    assert!(allowed);
    assert_eq!(removed, ["tailscale-user-login", "x-tailscale-gateway-route"], "forged identity and routing");
}

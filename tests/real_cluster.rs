//! Against a real kube-apiserver (and etcd), started and stopped by each test on loopback: the
//! install manifests are accepted, the CRDs' schemas and CEL rules work, and kube-apiserver calls
//! our admission webhooks. Ignored in plain `cargo test`: `hack/test.sh` builds the pinned control
//! plane (hack/control-plane.sh) and runs these too; without the binaries they panic, naming the
//! script.

mod util;

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};
use tailscale_gateway::pki::Ca;
use util::cluster::{ControlPlane, Process, free_port};

const CRDS: [&str; 4] = [
    "tailscaletailnets.gateway.tailscale.com",
    "tailscaleendpoints.gateway.tailscale.com",
    "tailscaleservices.gateway.tailscale.com",
    "tailscalegateways.gateway.tailscale.com",
];

#[test]
fn versions_pin_every_component() {
    let versions = util::cluster::versions();
    for key in ["ETCD_VERSION", "KUBERNETES_VERSION", "ENVOY_GATEWAY_VERSION", "HELM_VERSION"] {
        let v = versions.get(key).unwrap_or_else(|| panic!("versions.env lacks {key}"));
        assert!(v.starts_with('v') && v.split('.').count() == 3, "{key}={v} is no vMAJOR.MINOR.PATCH");
    }
}

#[test]
#[should_panic(expected = "is missing: run hack/control-plane.sh")]
fn a_missing_binary_fails_naming_the_build_script() {
    let empty = tempfile::tempdir().expect("creating an empty temporary directory");
    util::cluster::binary_in(empty.path(), "kube-apiserver", "KUBERNETES_VERSION");
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn path(rel: &str) -> String {
    root().join(rel).display().to_string()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Server-side applies the CRDs and waits until each is Established.
fn install_crds(cp: &ControlPlane) {
    let out = cp.kubectl_ok(&["apply", "--server-side", "-k", &path("crds")]);
    for crd in CRDS {
        assert!(
            out.contains(&format!("customresourcedefinition.apiextensions.k8s.io/{crd} serverside-applied")),
            "{out}"
        );
    }
    cp.wait_established(&CRDS);
}

/// The objects kustomization `dir` renders, as kubectl names them (`kind.group/name`).
fn rendered_names(cp: &ControlPlane, dir: &str) -> Vec<String> {
    let out = cp.kubectl_ok(&["apply", "-k", &path(dir), "--dry-run=client", "-o", "name"]);
    out.lines().map(str::to_string).collect()
}

/// `kubectl apply --server-side --dry-run=server -k dir`: every object the kustomization renders
/// is accepted by the server.
fn server_dry_run(cp: &ControlPlane, dir: &str) {
    let out = cp.kubectl_ok(&["apply", "--server-side", "--dry-run=server", "-k", &path(dir)]);
    let names = rendered_names(cp, dir);
    assert!(!names.is_empty(), "{dir} renders nothing");
    for name in &names {
        assert!(
            out.contains(&format!("{name} serverside-applied (server dry run)")),
            "{dir}: {name} missing in:\n{out}"
        );
    }
    assert_eq!(out.lines().count(), names.len(), "{dir}: one line per object:\n{out}");
}

fn apply_stdin(cp: &ControlPlane, doc: &Value, extra: &[&str]) -> Output {
    let mut args = vec!["apply", "--server-side", "-f", "-"];
    args.extend_from_slice(extra);
    cp.kubectl_output(&args, Some(&doc.to_string()))
}

fn apply_ok(cp: &ControlPlane, doc: &Value) -> String {
    let out = apply_stdin(cp, doc, &[]);
    assert!(out.status.success(), "apply failed: {}\n{doc:#}", stderr(&out));
    stdout(&out)
}

#[test]
#[ignore = "needs the real control plane: run hack/test.sh"]
fn install_manifests_are_accepted_by_a_real_apiserver() {
    let cp = ControlPlane::start();
    install_crds(&cp);
    // Namespaced objects need their namespace to exist, even in a dry run.
    cp.kubectl_ok(&["apply", "--server-side", "-f", &path("deploy/namespace.yaml")]);
    for dir in ["webhooks", "apiservice", "deploy"] {
        server_dry_run(&cp, dir);
    }
    // certs/ adds cert-manager objects: the server knows their kinds only with cert-manager's
    // CRDs, for which a stand-in without schema is installed here.
    apply_ok(&cp, &util::cert_manager_stand_in());
    cp.wait_established(&["certificates.cert-manager.io", "issuers.cert-manager.io"]);
    server_dry_run(&cp, "certs");
}

#[test]
#[ignore = "needs the real control plane: run hack/test.sh"]
fn crd_schemas_and_cel_rules_hold_on_a_real_apiserver() {
    let cp = ControlPlane::start();
    install_crds(&cp);
    cp.kubectl_ok(&["create", "namespace", "staging"]);
    // Every valid example is accepted by the schemas and CEL rules alone (no webhook here).
    for file in ["tailnets.yaml", "endpoints-east.yaml", "endpoints-west.yaml", "services.yaml", "gateway.yaml"] {
        let out = cp.kubectl_output(&["apply", "--server-side", "-f", &path(&format!("examples/{file}"))], None);
        assert!(out.status.success(), "examples/{file} refused by the CRDs: {}", stderr(&out));
    }
    let listed = cp.kubectl_ok(&["get", "tailscaleservices", "-A", "-o", "name"]);
    assert_eq!(listed.lines().count(), 3, "{listed}");
    // A CEL rule of the CRD itself refuses an object (so the rules compiled and run).
    let out = cp.kubectl_output(
        &["apply", "--server-side", "-f", &path("tests/manifests/invalid/missing-selector.yaml")],
        None,
    );
    assert!(!out.status.success(), "missing-selector.yaml was accepted");
    assert!(
        stderr(&out).contains("spec.selector is required unless spec.endpointTemplate is given"),
        "{}",
        stderr(&out)
    );
    // The transition rule: vipService.name cannot change.
    let renamed = json!({"apiVersion": "gateway.tailscale.com/v1alpha1", "kind": "TailscaleServices",
        "metadata": {"name": "web-service", "namespace": "default"},
        "spec": {"vipService": {"name": "svc:renamed"}}});
    let out = apply_stdin(&cp, &renamed, &["--force-conflicts"]);
    assert!(!out.status.success(), "vipService.name changed");
    assert!(stderr(&out).contains("vipService.name is immutable"), "{}", stderr(&out));
}

/// Our server, run from the built binary in cluster mode against the control plane.
struct Gateway {
    process: Process,
    url: String,
    port: u16,
    ca_pem: String,
    /// `ca_pem` as a file.
    ca_file: PathBuf,
}

impl Gateway {
    /// Starts `tailscale-gateway serve` with a serving certificate for 127.0.0.1 from a fresh
    /// CA, the admin kubeconfig, and no reconciler; waits until `/readyz` passes.
    fn start(cp: &ControlPlane) -> Gateway {
        Gateway::start_with_names(cp, &[])
    }

    /// [`Gateway::start`] with `extra` DNS names in the serving certificate (the aggregator
    /// checks the name `SERVICE.NAMESPACE.svc` of the APIService's Service).
    fn start_with_names(cp: &ControlPlane, extra: &[&str]) -> Gateway {
        let dir = cp.dir().join("gateway");
        std::fs::create_dir_all(&dir).expect("creating the gateway directory");
        let ca = Ca::generate("tsgw-test-webhook-ca").expect("generating the webhook CA");
        let mut names = vec!["127.0.0.1".to_string(), "localhost".to_string()];
        names.extend(extra.iter().map(|n| n.to_string()));
        let serving = ca.issue_server(&names).expect("issuing the serving certificate");
        let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
        std::fs::write(&cert, &serving.cert_pem).expect("writing tls.crt");
        std::fs::write(&key, &serving.key_pem).expect("writing tls.key");
        std::fs::write(dir.join("ca.crt"), &ca.pair().cert_pem).expect("writing ca.crt");
        let port = free_port();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tailscale-gateway"));
        cmd.arg("serve")
            .arg(format!("--listen=127.0.0.1:{port}"))
            .arg("--xds-addr=127.0.0.1:0")
            .arg(format!("--tls-cert-file={}", cert.display()))
            .arg(format!("--tls-key-file={}", key.display()))
            .args(["--no-reconciler", "--self-managed-certs=false"])
            .env("KUBECONFIG", &cp.kubeconfig)
            .env("RUST_LOG", "info");
        let process = Process::spawn("tailscale-gateway", cmd, dir.join("server.log"));
        let mut gw = Gateway {
            process,
            url: format!("https://127.0.0.1:{port}"),
            port,
            ca_pem: ca.pair().cert_pem.clone(),
            ca_file: dir.join("ca.crt"),
        };
        gw.wait_ready(cp);
        gw
    }

    fn wait_ready(&mut self, cp: &ControlPlane) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let ca_flag = format!("--certificate-authority={}", self.ca_file.display());
        loop {
            self.process.assert_running();
            let out = cp.kubectl_output(&["--server", &self.url, &ca_flag, "get", "--raw", "/readyz"], None);
            if out.status.success() && stdout(&out).trim() == "ok" {
                return;
            }
            assert!(Instant::now() < deadline, "tailscale-gateway not ready:\n{}", self.process.log_tail());
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// `webhooks/FILE` with `clientConfig` pointed at this server by URL (a loopback address is
    /// refused in a Service's Endpoints) and our CA as caBundle.
    fn webhook_configuration(&self, file: &str, path: &str) -> Value {
        let text =
            std::fs::read_to_string(root().join("webhooks").join(file)).expect("reading the webhook configuration");
        let mut doc: Value = serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("webhooks/{file}: {e}"));
        let ca_bundle = base64::engine::general_purpose::STANDARD.encode(&self.ca_pem);
        let hooks = doc["webhooks"].as_array_mut().unwrap_or_else(|| panic!("webhooks/{file} has no webhooks"));
        for hook in hooks {
            hook["clientConfig"] = json!({"url": format!("{}{path}", self.url), "caBundle": ca_bundle});
        }
        doc
    }
}

fn services(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "gateway.tailscale.com/v1alpha1", "kind": "TailscaleServices",
        "metadata": {"name": name, "namespace": "default"}, "spec": spec})
}

fn cluster_with_webhooks() -> (ControlPlane, Gateway) {
    let cp = ControlPlane::start();
    install_crds(&cp);
    let gw = Gateway::start(&cp);
    apply_ok(&cp, &gw.webhook_configuration("validating.yaml", "/validate"));
    apply_ok(&cp, &gw.webhook_configuration("mutating.yaml", "/mutate"));
    (cp, gw)
}

/// Server-side dry runs of `doc` until the mutating webhook is in force (it fails open, so an
/// object admitted before kube-apiserver has loaded its configuration comes back unchanged).
fn dry_run_until_mutated(cp: &ControlPlane, doc: &Value, pointer: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = apply_stdin(cp, doc, &["--dry-run=server", "-o", "json"]);
        assert!(out.status.success(), "dry run refused: {}", stderr(&out));
        let admitted: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", stdout(&out)));
        if admitted.pointer(pointer).is_some() {
            return;
        }
        assert!(Instant::now() < deadline, "the mutating webhook never set {pointer}: {admitted:#}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Applies `doc` until the webhooks are in force: right after registration kube-apiserver may
/// not call a new webhook yet, so a first object can slip past it.
fn apply_denied(cp: &ControlPlane, doc: &Value) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = apply_stdin(cp, doc, &["--dry-run=server"]);
        if !out.status.success() {
            return stderr(&out);
        }
        assert!(Instant::now() < deadline, "never denied: {doc:#}\n{}", stdout(&out));
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
#[ignore = "needs the real control plane: run hack/test.sh"]
fn webhooks_are_called_by_a_real_apiserver() {
    let (cp, mut gw) = cluster_with_webhooks();
    let bad = services(
        "bad",
        json!({
            "selector": {"matchExpressions": [{"key": "a", "operator": "Near"}]},
            "vipService": {"name": "svc:Web", "ports": ["tcp:80", "http:80", "tcp:80", "tcp:70000"], "tags": ["web"]},
            "loadBalancing": {"strategy": "fastest", "healthCheck": {"path": "health", "interval": "500ms", "timeout": "soon"}},
            "serve": [{"port": 8443, "backendRef": {"kind": "Pod", "name": "web", "port": 80}},
                      {"port": 80, "backendRef": {"name": "web", "namespace": "elsewhere", "port": 80}}]
        }),
    );
    let err = apply_denied(&cp, &bad);
    assert!(err.contains("admission webhook \"validate.gateway.tailscale.com\" denied the request"), "{err}");
    for field in [
        "spec.selector.matchExpressions[0].operator: Unsupported value: \"Near\"",
        "spec.vipService.name: Invalid value: \"svc:Web\"",
        "spec.vipService.ports[1]: Invalid value: \"http:80\"",
        "spec.vipService.ports[2]: Duplicate value: \"tcp:80\"",
        "spec.vipService.ports[3]: Invalid value: \"tcp:70000\"",
        "spec.vipService.tags[0]: Invalid value: \"web\"",
        "spec.loadBalancing.strategy: Unsupported value: \"fastest\"",
        "spec.loadBalancing.healthCheck.path: Invalid value: \"health\"",
        "spec.loadBalancing.healthCheck.interval: Invalid value: \"500ms\"",
        "spec.loadBalancing.healthCheck.timeout: Invalid value: \"soon\"",
        "spec.serve[0].port: Invalid value: \"8443\": not a TCP port of spec.vipService.ports",
        "spec.serve[0].backendRef.kind: Invalid value: \"Pod\"",
        "spec.serve[1].backendRef.namespace: Invalid value: \"elsewhere\"",
    ] {
        assert!(err.contains(field), "kubectl's output lacks {field:?}:\n{err}");
    }
    // Now that the webhook is in force, a real (not dry-run) apply is denied the same way.
    let out = apply_stdin(&cp, &bad, &[]);
    assert!(!out.status.success(), "the bad object was applied");
    assert!(
        stderr(&out).contains("spec.loadBalancing.healthCheck.timeout: Invalid value: \"soon\""),
        "{}",
        stderr(&out)
    );
    let listed = cp.kubectl_ok(&["get", "tailscaleservices", "-o", "name"]);
    assert!(listed.trim().is_empty(), "a denied object was stored: {listed}");

    let good = services(
        "defaults-me",
        json!({"selector": {"matchLabels": {"app": "web"}}, "vipService": {"ports": ["tcp:443"]},
            "loadBalancing": {"healthCheck": {"path": "/healthz"}},
            "serve": [{"port": 443, "backendRef": {"kind": "Gateway", "name": "eg", "port": 443}}]}),
    );
    dry_run_until_mutated(&cp, &good, "/spec/vipService/name");
    apply_ok(&cp, &good);
    let stored: Value =
        serde_json::from_str(&cp.kubectl_ok(&["get", "tailscaleservices", "defaults-me", "-o", "json"]))
            .expect("parsing the stored TailscaleServices");
    assert_eq!(stored.pointer("/spec/vipService/name"), Some(&json!("svc:defaults-me")), "{stored:#}");
    assert_eq!(stored.pointer("/spec/loadBalancing/strategy"), None, "Envoy Gateway's policy is kept: {stored:#}");
    assert_eq!(
        stored.pointer("/spec/serve/0"),
        Some(&json!({"port": 443, "protocol": "TCP",
            "backendRef": {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "eg", "port": 443}})),
        "{stored:#}"
    );
    assert_eq!(stored.pointer("/spec/loadBalancing/healthCheck/interval"), Some(&json!("10s")), "{stored:#}");
    assert_eq!(
        stored.pointer("/metadata/labels/app.kubernetes.io~1managed-by"),
        Some(&json!("tailscale-gateway")),
        "{stored:#}"
    );
    gw.process.assert_running();

    // UPDATE is validated too: a bad strategy on the stored object is refused.
    let mut worse = good.clone();
    worse["spec"]["loadBalancing"]["strategy"] = json!("fastest");
    let err = apply_denied(&cp, &worse);
    assert!(err.contains("spec.loadBalancing.strategy: Unsupported value: \"fastest\""), "{err}");

    // A cross-object rule: another object claiming the same VIP name is refused through the
    // shared cache, which the server fills by watching the real apiserver.
    let thief = services(
        "thief",
        json!({"selector": {"matchLabels": {"app": "x"}}, "vipService": {"name": "svc:defaults-me", "ports": ["tcp:80"]}}),
    );
    let err = apply_denied(&cp, &thief);
    assert!(
        err.contains("spec.vipService.name: Duplicate value: \"svc:defaults-me\": already claimed by TailscaleServices default/defaults-me"),
        "{err}"
    );
}

#[test]
#[ignore = "needs the real control plane: run hack/test.sh"]
fn controller_manager_collects_garbage() {
    let mut cp = ControlPlane::start();
    cp.start_controller_manager();
    cp.kubectl_ok(&["create", "configmap", "owner"]);
    let uid = cp.kubectl_ok(&["get", "configmap", "owner", "-o", "jsonpath={.metadata.uid}"]);
    assert!(!uid.is_empty(), "owner has no uid");
    let dependent = json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "dependent", "namespace": "default",
            "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": uid}]}});
    apply_ok(&cp, &dependent);
    cp.kubectl_ok(&["delete", "configmap", "owner", "--wait=true"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while cp.kubectl_output(&["get", "configmap", "dependent"], None).status.success() {
        cp.assert_running();
        assert!(Instant::now() < deadline, "the garbage collector left the dependent ConfigMap");
        std::thread::sleep(Duration::from_millis(250));
    }
}

const APISERVICE: &str = "v1alpha1.tailnet.gateway.tailscale.com";
const DEVICES: &str = "/apis/tailnet.gateway.tailscale.com/v1alpha1/tailscaledevices";

/// `apiservice/apiservice.yaml` pointed at `gw` on loopback: its Service becomes an ExternalName
/// `localhost` with the server's port (kube-apiserver dials it as `--enable-aggregator-routing=false`
/// allows), and the caBundle is our CA.
fn apiservice_objects(gw: &Gateway) -> Value {
    let text =
        std::fs::read_to_string(root().join("apiservice/apiservice.yaml")).expect("reading apiservice/apiservice.yaml");
    let mut apiservice: Value = serde_saphyr::from_str(&text).expect("parsing apiservice/apiservice.yaml");
    apiservice["spec"]["service"]["port"] = json!(gw.port);
    apiservice["spec"]["caBundle"] = json!(base64::engine::general_purpose::STANDARD.encode(&gw.ca_pem));
    let service_ref = apiservice["spec"]["service"].clone();
    let service = json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": service_ref["name"], "namespace": service_ref["namespace"]},
        "spec": {"type": "ExternalName", "externalName": "localhost",
            "ports": [{"name": "https", "port": gw.port, "protocol": "TCP"}]}});
    json!({"apiVersion": "v1", "kind": "List", "items": [service, apiservice]})
}

/// Applies the example tailnets, endpoints and services, then the endpoints' status (where the
/// devices are) through the status subresource.
fn apply_examples_with_status(cp: &ControlPlane) {
    cp.kubectl_ok(&["create", "namespace", "staging"]);
    for file in ["tailnets.yaml", "endpoints-east.yaml", "endpoints-west.yaml", "services.yaml"] {
        cp.kubectl_ok(&["apply", "--server-side", "-f", &path(&format!("examples/{file}"))]);
    }
    for file in ["endpoints-east.yaml", "endpoints-west.yaml"] {
        let out = cp.kubectl_ok(&[
            "apply",
            "--server-side",
            "--subresource=status",
            "-f",
            &path(&format!("examples/{file}")),
        ]);
        assert!(out.contains("serverside-applied"), "{out}");
    }
    let stored =
        cp.kubectl_ok(&["get", "tailscaleendpoints", "web-proxy-west", "-o", "jsonpath={.status.deviceCount}"]);
    assert_eq!(stored, "2", "the status subresource did not take the devices");
}

/// `kubectl args` until it succeeds (the aggregator, RBAC aggregation and our cache all catch up
/// asynchronously); returns its stdout.
fn kubectl_eventually(cp: &ControlPlane, args: &[&str], want: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = cp.kubectl_output(args, None);
        if out.status.success() && want(&stdout(&out)) {
            return stdout(&out);
        }
        assert!(
            Instant::now() < deadline,
            "kubectl {args:?} never gave what was wanted:\n{}{}",
            stdout(&out),
            stderr(&out)
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn lines_with<'a>(out: &'a str, needle: &str) -> Vec<&'a str> {
    out.lines().filter(|l| l.contains(needle)).collect()
}

/// A request straight to our HTTPS port with curl: HTTP status and body.
fn curl(gw: &Gateway, path: &str, args: &[&str]) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20", "-w", "\n%{http_code}", "--cacert"])
        .arg(&gw.ca_file)
        .args(args)
        .arg(format!("{}{path}", gw.url))
        .output()
        .expect("running curl");
    let text = stdout(&out);
    let (body, code) = text.rsplit_once('\n').unwrap_or_else(|| panic!("curl: {text}{}", stderr(&out)));
    (code.trim().parse().unwrap_or_else(|e| panic!("curl status {code:?}: {e}; {}", stderr(&out))), body.to_string())
}

#[test]
#[ignore = "needs the real control plane: run hack/test.sh"]
fn aggregated_api_through_the_real_aggregator() {
    let mut cp = ControlPlane::start();
    // ClusterRole aggregation (our tailscale-gateway:view into view) is kube-controller-manager's.
    cp.start_controller_manager();
    install_crds(&cp);
    cp.kubectl_ok(&["apply", "--server-side", "-f", &path("deploy/namespace.yaml")]);
    cp.kubectl_ok(&["apply", "--server-side", "-f", &path("deploy/rbac.yaml")]);
    let mut gw = Gateway::start_with_names(&cp, &["tailscale-gateway.tailscale-gateway.svc"]);
    apply_ok(&cp, &apiservice_objects(&gw));
    let waited = cp.kubectl_output(
        &["wait", "--for=condition=Available", "--timeout=60s", &format!("apiservice/{APISERVICE}")],
        None,
    );
    assert!(
        waited.status.success(),
        "the APIService never became Available: {}\n{}",
        stderr(&waited),
        cp.kubectl_ok(&["get", "apiservice", APISERVICE, "-o", "yaml"])
    );
    apply_examples_with_status(&cp);

    // Through kube-apiserver, which authenticates, authorizes and proxies with its front-proxy
    // client certificate; our server trusts the headers only on such a connection.
    let all = kubectl_eventually(&cp, &["get", "tailscaledevices", "-A"], |o| o.lines().count() == 7);
    let header = all.lines().next().unwrap_or_default();
    for col in ["NAMESPACE", "NAME", "ENDPOINTS", "TAILNET", "IP", "ONLINE", "LAST SEEN", "AGE"] {
        assert!(header.contains(col), "missing column {col}:\n{all}");
    }
    assert!(!header.contains("FQDN"), "FQDN is a wide column:\n{all}");
    for device in ["web-proxy-east-0", "web-proxy-east-1", "api-proxy-east-0", "web-proxy-west-0", "web-proxy-west-1"] {
        let line = lines_with(&all, device);
        assert_eq!(line.len(), 1, "{device}:\n{all}");
        assert!(line[0].starts_with("default"), "{all}");
    }
    assert!(lines_with(&all, "web-proxy-staging-0")[0].starts_with("staging"), "{all}");
    assert!(lines_with(&all, "web-proxy-west-1")[0].contains("false"), "{all}");
    assert!(lines_with(&all, "web-proxy-east-0")[0].contains("100.68.203.214"), "{all}");

    let wide = cp.kubectl_ok(&["get", "tsdev", "-o", "wide"]);
    for col in ["FQDN", "NODE ID", "TAGS", "POD"] {
        assert!(wide.lines().next().unwrap_or_default().contains(col), "wide lacks {col}:\n{wide}");
    }
    assert!(lines_with(&wide, "web-proxy-east-0")[0].contains("web-proxy-east-0.tail8eff9.ts.net"), "{wide}");

    let yaml = cp.kubectl_ok(&["get", "tailscaledevice", "web-proxy-east-0", "-o", "yaml"]);
    for needle in [
        "apiVersion: tailnet.gateway.tailscale.com/v1alpha1",
        "kind: TailscaleDevice",
        "namespace: default",
        "resourceVersion:",
        "nodeID: n123456789abcdef",
        "region: east",
    ] {
        assert!(yaml.contains(needle), "-o yaml lacks {needle}:\n{yaml}");
    }

    let west = cp.kubectl_ok(&["get", "tsdev", "-l", "region=west", "-o", "name"]);
    assert_eq!(
        west.lines().collect::<Vec<_>>(),
        [
            "tailscaledevice.tailnet.gateway.tailscale.com/web-proxy-west-0",
            "tailscaledevice.tailnet.gateway.tailscale.com/web-proxy-west-1"
        ],
        "{west}"
    );
    let api = cp.kubectl_ok(&["get", "tsdev", "-l", "service-type=api,region in (east)", "-o", "name"]);
    assert_eq!(api.trim(), "tailscaledevice.tailnet.gateway.tailscale.com/api-proxy-east-0", "{api}");
    let none = cp.kubectl_output(&["get", "tsdev", "-l", "region=north"], None);
    assert!(none.status.success() && stdout(&none).is_empty(), "{}{}", stdout(&none), stderr(&none));
    assert!(stderr(&none).contains("No resources found in default namespace."), "{}", stderr(&none));
    let err = cp.kubectl_output(&["get", "tsdev", "nope"], None);
    assert!(!err.status.success(), "a missing device was found");
    assert!(
        stderr(&err).contains("tailscaledevices.tailnet.gateway.tailscale.com \"nope\" not found"),
        "{}",
        stderr(&err)
    );

    let selected = cp.kubectl_ok(&["get", "selectedendpoints"]);
    for col in ["NAME", "ENDPOINTS", "MACHINES", "HEALTHY", "VIP", "AGE"] {
        assert!(
            selected.lines().next().unwrap_or_default().contains(col),
            "selectedendpoints lacks {col}:\n{selected}"
        );
    }
    assert_eq!(lines_with(&selected, "web-service").len(), 1, "{selected}");
    assert_eq!(lines_with(&selected, "api-service").len(), 1, "{selected}");
    let staging = cp.kubectl_ok(&["get", "selectedendpoints", "-n", "staging", "-o", "name"]);
    assert_eq!(staging.trim(), "selectedendpoints.tailnet.gateway.tailscale.com/web-staging", "{staging}");

    // explain reads the OpenAPI that kube-apiserver aggregated from ours.
    let explain = kubectl_eventually(&cp, &["explain", "tailscaledevices"], |o| o.contains("TailscaleDevice"));
    for needle in
        ["KIND:", "VERSION:", "v1alpha1", "TailscaleDevice is a read-only view of one Tailscale device", "status"]
    {
        assert!(explain.contains(needle), "explain lacks {needle:?}:\n{explain}");
    }
    let field = cp.kubectl_ok(&["explain", "tsdev.status.online"]);
    assert!(field.contains("online <boolean>"), "{field}");

    watch_sees_a_status_change(&cp);
    rbac_and_front_proxy_authentication(&mut cp, &gw);
    gw.process.assert_running();
}

/// `kubectl get tsdev -w` through the aggregator streams a change of a TailscaleEndpoints' status.
fn watch_sees_a_status_change(cp: &ControlPlane) {
    use std::io::BufRead;
    let mut child = cp
        .kubectl()
        .args(["get", "tsdev", "-w"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawning kubectl get tsdev -w");
    let out = child.stdout.take().unwrap_or_else(|| panic!("no stdout"));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let next = |what: &str| {
        rx.recv_timeout(Duration::from_secs(30)).unwrap_or_else(|e| panic!("kubectl -w: no {what} within 30s: {e}"))
    };
    // Header and the five devices of namespace default.
    for i in 0..6 {
        next(&format!("line {i} of the initial list"));
    }
    let text = std::fs::read_to_string(root().join("examples/endpoints-west.yaml"))
        .expect("reading examples/endpoints-west.yaml");
    let flipped = text.replace("connected: false, online: false", "connected: true, online: true");
    assert_ne!(flipped, text, "test fixture changed: cannot flip web-proxy-west-1");
    let out = cp.kubectl_output(&["apply", "--server-side", "--subresource=status", "-f", "-"], Some(&flipped));
    assert!(out.status.success(), "{}", stderr(&out));
    let event = loop {
        let line = next("event after the status change");
        if line.contains("web-proxy-west-1") {
            break line;
        }
    };
    assert!(event.contains("true") && !event.contains("false"), "web-proxy-west-1 should now be online: {event}");
    let _ = child.kill();
    let _ = child.wait();
}

/// Authorization is the user's RBAC (delegated to kube-apiserver with SubjectAccessReviews), and
/// front-proxy headers count only on a connection with the front-proxy client certificate.
fn rbac_and_front_proxy_authentication(cp: &mut ControlPlane, gw: &Gateway) {
    // `view` has our resources through the aggregated ClusterRole tailscale-gateway:view.
    cp.kubectl_ok(&["create", "clusterrolebinding", "alice-view", "--clusterrole=view", "--user=alice"]);
    let listed =
        kubectl_eventually(cp, &["get", "tsdev", "-A", "--as=alice", "-o", "name"], |o| o.lines().count() == 6);
    assert!(listed.contains("tailscaledevice.tailnet.gateway.tailscale.com/web-proxy-east-0"), "{listed}");
    let view = cp.kubectl_ok(&["get", "clusterrole", "view", "-o", "json"]);
    assert!(view.contains("tailscaledevices"), "view did not aggregate tailscale-gateway:view:\n{view}");
    let out = cp.kubectl_output(&["get", "tsdev", "-A", "--as=mallory"], None);
    assert!(!out.status.success(), "a user without RBAC listed devices: {}", stdout(&out));
    assert!(
        stderr(&out).contains("Error from server (Forbidden)")
            && stderr(&out).contains(
                "User \"mallory\" cannot list resource \"tailscaledevices\" in API group \"tailnet.gateway.tailscale.com\" at the cluster scope"
            ),
        "{}",
        stderr(&out)
    );

    // Straight to our port. The front-proxy headers without its client certificate: 401.
    let forged = ["-H", "X-Remote-User: alice", "-H", "X-Remote-Group: system:masters"];
    let (code, body) = curl(gw, DEVICES, &forged);
    assert_eq!(code, 401, "forged X-Remote-User accepted:\n{body}");
    assert!(body.contains("\"reason\":\"Unauthorized\""), "{body}");
    // With kube-apiserver's front-proxy client certificate, the headers name the user, and our
    // server asks kube-apiserver (SubjectAccessReview) whether that user may.
    let f = &cp.files;
    let (cert, key) = (f.proxy_client_cert.display().to_string(), f.proxy_client_key.display().to_string());
    let proxied =
        |user: &str| curl(gw, DEVICES, &["--cert", &cert, "--key", &key, "-H", &format!("X-Remote-User: {user}")]);
    let (code, body) = proxied("alice");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("web-proxy-east-0"), "{body}");
    let (code, body) = proxied("mallory");
    assert_eq!(code, 403, "{body}");
    assert!(
        body.contains("\"reason\":\"Forbidden\"")
            && body.contains("User \\\"mallory\\\" cannot list resource \\\"tailscaledevices\\\""),
        "{body}"
    );
    // /metrics: the same delegated authorization, as a non-resource URL (GET /metrics), the way
    // kube-apiserver and metrics-server authorize theirs.
    cp.kubectl_ok(&["create", "clusterrole", "metrics-reader", "--verb=get", "--non-resource-url=/metrics"]);
    cp.kubectl_ok(&["create", "clusterrolebinding", "prom-metrics", "--clusterrole=metrics-reader", "--user=prom"]);
    let (code, body) = curl(gw, "/metrics", &[]);
    assert_eq!(code, 401, "/metrics without credentials:\n{body}");
    let metrics =
        |user: &str| curl(gw, "/metrics", &["--cert", &cert, "--key", &key, "-H", &format!("X-Remote-User: {user}")]);
    let (code, body) = metrics("mallory");
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("cannot get path \\\"/metrics\\\""), "{body}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let (code, body) = metrics("prom");
        if code == 200 {
            assert!(body.ends_with("# EOF\n") || body.ends_with("# EOF"), "{body}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "prom, allowed GET /metrics, got {code}: {body}");
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

/// `tailscale-gateway serve` in cluster mode with `args` (no serving certificate given: the
/// self-managed default), logging to `NAME.log`; returns the process and its HTTPS port.
fn spawn_server(cp: &ControlPlane, name: &str, args: &[&str]) -> (Process, u16) {
    let port = free_port();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tailscale-gateway"));
    cmd.arg("serve")
        .arg(format!("--listen=127.0.0.1:{port}"))
        .arg("--xds-addr=127.0.0.1:0")
        .args(args)
        .env("KUBECONFIG", &cp.kubeconfig)
        .env("RUST_LOG", "info,tailscale_gateway=debug");
    (Process::spawn(name, cmd, cp.dir().join(format!("{name}.log"))), port)
}

/// Waits until the server on `port` answers `/readyz` with `ok` (TLS unverified: which CA signed
/// the certificate is what the caller checks).
fn wait_server_ready(server: &mut Process, port: u16) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        server.assert_running();
        let out = Command::new("curl")
            .args(["-sk", "--max-time", "5"])
            .arg(format!("https://127.0.0.1:{port}/readyz"))
            .output()
            .expect("running curl");
        if stdout(&out).trim() == "ok" {
            return;
        }
        assert!(Instant::now() < deadline, "server on {port} not ready:\n{}", server.log_tail());
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// `key` of the Secret's data, decoded.
fn secret_value(cp: &ControlPlane, namespace: &str, name: &str, key: &str) -> String {
    let secret: Value = serde_json::from_str(&cp.kubectl_ok(&["get", "secret", name, "-n", namespace, "-o", "json"]))
        .expect("parsing the Secret");
    let b64 = secret["data"][key].as_str().unwrap_or_else(|| panic!("secret {name} has no {key}: {secret:#}"));
    let bytes = base64::engine::general_purpose::STANDARD.decode(b64).expect("decoding the Secret value as base64");
    String::from_utf8(bytes).expect("decoding the Secret value as UTF-8")
}

/// The caBundles (base64, as stored) of our two webhook configurations' webhooks (two validating:
/// our kinds and the routes Envoy Gateway keeps from us; one mutating) and of the APIService.
fn published_ca_bundles(cp: &ControlPlane) -> Vec<String> {
    let mut bundles = Vec::new();
    for kind in ["validatingwebhookconfiguration", "mutatingwebhookconfiguration"] {
        let jsonpath = "jsonpath={range .webhooks[*]}{.clientConfig.caBundle}{\"\\n\"}{end}";
        let out = cp.kubectl_ok(&["get", kind, "tailscale-gateway", "-o", jsonpath]);
        bundles.extend(out.lines().map(str::to_string));
    }
    bundles.push(cp.kubectl_ok(&["get", "apiservice", APISERVICE, "-o", "jsonpath={.spec.caBundle}"]));
    bundles
}

#[test]
#[ignore = "needs the real control plane: run hack/test.sh"]
fn self_managed_certificates_are_shared_and_published() {
    let cp = ControlPlane::start();
    install_crds(&cp);
    cp.kubectl_ok(&["apply", "--server-side", "-f", &path("deploy/namespace.yaml")]);
    // Our registrations as shipped: no caBundle anywhere.
    cp.kubectl_ok(&["apply", "--server-side", "-k", &path("webhooks")]);
    cp.kubectl_ok(&["apply", "--server-side", "-k", &path("apiservice")]);
    let before = published_ca_bundles(&cp);
    assert_eq!(before.len(), 4, "three webhooks and the APIService: {before:?}");
    assert!(before.iter().all(String::is_empty), "caBundle set before any server ran: {before:?}");

    // Two replicas racing at start for the one Secret.
    let args = ["--no-reconciler", "--namespace=tailscale-gateway"];
    let (mut a, port_a) = spawn_server(&cp, "replica-a", &args);
    let (mut b, port_b) = spawn_server(&cp, "replica-b", &args);
    wait_server_ready(&mut a, port_a);
    wait_server_ready(&mut b, port_b);

    let written: usize = [&a, &b].iter().map(|p| p.log().matches("certificate secret written").count()).sum();
    assert_eq!(written, 1, "the Secret was written {written} times:\n{}\n{}", a.log_tail(), b.log_tail());
    let ca = secret_value(&cp, "tailscale-gateway", "tailscale-gateway-tls", "ca.crt");
    let bundle = secret_value(&cp, "tailscale-gateway", "tailscale-gateway-tls", "ca-bundle.crt");
    assert!(bundle.contains(ca.trim()), "the bundle lacks the signing CA");
    let ca_file = cp.dir().join("self-managed-ca.crt");
    std::fs::write(&ca_file, &ca).expect("writing self-managed-ca.crt");
    // Both serve a certificate from the Secret's CA, for the Service's DNS name.
    let host = "tailscale-gateway.tailscale-gateway.svc";
    for port in [port_a, port_b] {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "10", "--cacert"])
            .arg(&ca_file)
            .arg("--resolve")
            .arg(format!("{host}:{port}:127.0.0.1"))
            .arg(format!("https://{host}:{port}/readyz"))
            .output()
            .expect("running curl");
        assert_eq!(stdout(&out).trim(), "ok", "replica on {port} with the Secret's CA: {}", stderr(&out));
    }

    // The caBundle of every registration is patched to the Secret's bundle.
    let want = base64::engine::general_purpose::STANDARD.encode(&bundle);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let bundles = published_ca_bundles(&cp);
        if bundles.len() == 4 && bundles.iter().all(|b| *b == want) {
            break;
        }
        assert!(Instant::now() < deadline, "caBundles not published: {bundles:?}\n{}\n{}", a.log_tail(), b.log_tail());
        std::thread::sleep(Duration::from_millis(250));
    }
    a.assert_running();
    b.assert_running();
}

/// `spec.holderIdentity` of our leader Lease, if it exists.
fn lease_holder(cp: &ControlPlane) -> Option<String> {
    let out = cp.kubectl_output(
        &[
            "get",
            "lease",
            "tailscale-gateway-reconciler",
            "-n",
            "tailscale-gateway",
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ],
        None,
    );
    out.status.success().then(|| stdout(&out)).filter(|h| !h.is_empty())
}

/// A MicroTime field of our leader Lease's spec.
fn lease_time(cp: &ControlPlane, field: &str) -> time::OffsetDateTime {
    let jsonpath = format!("jsonpath={{.spec.{field}}}");
    let text =
        cp.kubectl_ok(&["get", "lease", "tailscale-gateway-reconciler", "-n", "tailscale-gateway", "-o", &jsonpath]);
    time::OffsetDateTime::parse(&text, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|e| panic!("Lease {field} {text:?}: {e}"))
}

#[test]
#[ignore = "needs the real control plane: run hack/test.sh"]
fn leader_election_hands_over_a_real_lease() {
    let cp = ControlPlane::start();
    install_crds(&cp);
    cp.kubectl_ok(&["apply", "--server-side", "-f", &path("deploy/namespace.yaml")]);
    let timings = [
        "--lease-duration=3s",
        "--lease-renew-interval=1s",
        "--lease-retry-interval=500ms",
        "--lease-renew-deadline=2s",
    ];
    let mut replicas = Vec::new();
    for name in ["replica-a", "replica-b"] {
        let mut args = vec!["--namespace=tailscale-gateway", "--self-managed-certs=false"];
        let pod = format!("--pod-name={name}");
        args.push(&pod);
        args.extend(timings);
        let (process, port) = spawn_server(&cp, name, &args);
        replicas.push((name, process, port));
    }
    for (_, process, port) in &mut replicas {
        wait_server_ready(process, *port);
    }

    // Exactly one holds the Lease, and it stays so while both run.
    let deadline = Instant::now() + Duration::from_secs(30);
    let holder = loop {
        if let Some(h) = lease_holder(&cp) {
            break h;
        }
        assert!(Instant::now() < deadline, "no replica took the Lease");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(holder == "replica-a" || holder == "replica-b", "holder {holder:?}");
    let lease: Value = serde_json::from_str(&cp.kubectl_ok(&[
        "get",
        "lease",
        "tailscale-gateway-reconciler",
        "-n",
        "tailscale-gateway",
        "-o",
        "json",
    ]))
    .expect("parsing the reconciler Lease");
    assert_eq!(lease["spec"]["leaseDurationSeconds"], 3, "{lease:#}");
    let transitions = lease["spec"]["leaseTransitions"].as_i64().unwrap_or_default();
    for _ in 0..20 {
        assert_eq!(lease_holder(&cp).as_deref(), Some(holder.as_str()), "the Lease changed hands while both ran");
        std::thread::sleep(Duration::from_millis(250));
    }
    let leading: Vec<&str> =
        replicas.iter().filter(|(_, p, _)| p.log().contains("leading=true")).map(|(name, _, _)| *name).collect();
    assert_eq!(leading, [holder.as_str()], "exactly the holder leads");

    // Kill the holder (no release): the other takes over once the Lease expires.
    let index = replicas.iter().position(|(name, _, _)| *name == holder).unwrap_or_else(|| panic!("no {holder}"));
    let (_, killed, _) = replicas.remove(index);
    drop(killed);
    let killed_at = Instant::now();
    let last_renewal = lease_time(&cp, "renewTime");
    let (survivor, mut process, _) = replicas.pop().unwrap_or_else(|| panic!("no second replica"));
    let deadline = killed_at + Duration::from_secs(30);
    while lease_holder(&cp).as_deref() != Some(survivor) {
        process.assert_running();
        assert!(Instant::now() < deadline, "{survivor} never took over:\n{}", process.log_tail());
        std::thread::sleep(Duration::from_millis(50));
    }
    let handover = killed_at.elapsed();
    eprintln!("handover to {survivor} after {handover:?}");
    // Never early: the survivor takes the Lease only once the holder's last renewal is a full
    // lease duration old. And soon after: it judges expiry from when it saw that renewal (at
    // most one retry interval after it) and checks every retry interval, so it takes over
    // within the lease duration plus two retry intervals of the last renewal (plus the time of
    // its API calls).
    let acquired = lease_time(&cp, "acquireTime");
    let gap = acquired - last_renewal;
    assert!(gap >= time::Duration::seconds(3), "taken over {gap} after the last renewal: before the Lease expired");
    assert!(gap <= time::Duration::milliseconds(4500), "taken over {gap} after the last renewal");
    assert!(handover <= Duration::from_millis(4500), "handover took {handover:?} after the kill");
    let after = cp.kubectl_ok(&[
        "get",
        "lease",
        "tailscale-gateway-reconciler",
        "-n",
        "tailscale-gateway",
        "-o",
        "jsonpath={.spec.leaseTransitions}",
    ]);
    assert_eq!(after, (transitions + 1).to_string(), "leaseTransitions");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !process.log().contains("leading=true") {
        assert!(Instant::now() < deadline, "{survivor} holds the Lease but does not lead:\n{}", process.log_tail());
        std::thread::sleep(Duration::from_millis(100));
    }
    route_policy_status_is_written(&cp, &mut process);
}

/// The leader writes each TailscaleRoutePolicy's status per target: the oldest policy on a
/// target is Accepted, a younger one Conflicted, a missing target TargetNotFound; `kubectl get
/// tsrp` shows them.
fn route_policy_status_is_written(cp: &ControlPlane, leader: &mut Process) {
    apply_ok(
        cp,
        &services("policed", json!({"selector": {"matchLabels": {"app": "x"}}, "vipService": {"ports": ["tcp:80"]}})),
    );
    let policy = |name: &str, target: &str| {
        json!({"apiVersion": "gateway.tailscale.com/v1alpha1", "kind": "TailscaleRoutePolicy",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"targetRefs": [{"group": "gateway.tailscale.com", "kind": "TailscaleServices", "name": target}],
                "defaultAction": "Deny"}})
    };
    apply_ok(cp, &policy("older", "policed"));
    std::thread::sleep(Duration::from_millis(1100)); // creation timestamps have whole seconds
    apply_ok(cp, &policy("younger", "policed"));
    apply_ok(cp, &policy("orphan", "nowhere"));
    let want = [("older", "Accepted"), ("younger", "Conflicted"), ("orphan", "TargetNotFound")];
    for (name, reason) in want {
        get_until(cp, leader, &["tailscaleroutepolicy", name], |p| {
            p.pointer("/status/ancestors/0/conditions/0/reason") == Some(&json!(reason))
        });
    }
    let table = cp.kubectl_ok(&["get", "tsrp"]);
    eprintln!("{table}");
    for (name, reason) in want {
        assert!(table.lines().any(|l| l.starts_with(name) && l.contains(reason)), "{name} {reason} not in:\n{table}");
    }
    let younger: Value =
        serde_json::from_str(&cp.kubectl_ok(&["get", "tsrp", "younger", "-o", "json"])).expect("parsing the policy");
    let message =
        younger.pointer("/status/ancestors/0/conditions/0/message").and_then(Value::as_str).unwrap_or_default();
    assert!(message.contains("held by the older TailscaleRoutePolicy default/older"), "{message}");
}

/// `kubectl get ... -o json` as a Value.
fn get_json(cp: &ControlPlane, args: &[&str]) -> Value {
    let mut all = vec!["get"];
    all.extend_from_slice(args);
    all.extend(["-o", "json"]);
    serde_json::from_str(&cp.kubectl_ok(&all)).expect("parsing kubectl get's JSON output")
}

/// Polls `kubectl get ARGS -o json` until `want` holds; returns the object.
fn get_until(cp: &ControlPlane, server: &mut Process, args: &[&str], want: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut all = vec!["get"];
        all.extend_from_slice(args);
        all.extend(["-o", "json"]);
        let out = cp.kubectl_output(&all, None);
        if out.status.success() {
            let v: Value = serde_json::from_slice(&out.stdout).expect("parsing kubectl get's JSON output");
            if want(&v) {
                return v;
            }
        }
        server.assert_running();
        assert!(
            Instant::now() < deadline,
            "kubectl get {args:?} never as wanted:\n{}{}\n{}",
            stdout(&out),
            stderr(&out),
            server.log_tail()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn condition<'a>(obj: &'a Value, type_: &str) -> Option<&'a Value> {
    obj.pointer("/status/conditions")?.as_array()?.iter().find(|c| c["type"] == type_)
}

#[test]
#[ignore = "needs the real control plane: run hack/test.sh"]
fn reconciler_creates_owned_objects_on_a_real_apiserver() {
    use tailscale_gateway::tailscale::fake::FakeTailscale;
    let rt = tokio::runtime::Runtime::new().expect("building the tokio runtime");
    let fake = rt.block_on(FakeTailscale::start()).expect("starting the fake Tailscale API");
    let creds = fake.client_config();

    let cp = ControlPlane::start();
    install_crds(&cp);
    cp.kubectl_ok(&["apply", "--server-side", "-f", &path("deploy/namespace.yaml")]);
    let oauth = json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "tailscale-oauth", "namespace": "tailscale-gateway"},
        "stringData": {"client_id": creds.client_id, "client_secret": creds.client_secret}});
    apply_ok(&cp, &oauth);
    let tailnet = json!({"apiVersion": "gateway.tailscale.com/v1alpha1", "kind": "TailscaleTailnet",
        "metadata": {"name": "fake-tailnet"},
        "spec": {"tailnet": "-", "apiURL": fake.url(),
            "oauthSecretRef": {"name": "tailscale-oauth", "namespace": "tailscale-gateway"}, "tags": ["tag:k8s-proxy"]}});
    apply_ok(&cp, &tailnet);
    let endpoints = json!({"apiVersion": "gateway.tailscale.com/v1alpha1", "kind": "TailscaleEndpoints",
        "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"}},
        "spec": {"tailnet": "fake-tailnet", "tags": ["tag:k8s-proxy"], "proxy": {"replicas": 2},
            "ports": [{"port": 80, "protocol": "TCP"}]}});
    apply_ok(&cp, &endpoints);
    let uid = cp.kubectl_ok(&["get", "tailscaleendpoints", "web", "-o", "jsonpath={.metadata.uid}"]);

    let args = [
        "--namespace=tailscale-gateway",
        "--self-managed-certs=false",
        "--pod-name=reconciler-0",
        "--device-refresh=2s",
    ];
    let (mut server, port) = spawn_server(&cp, "reconciler", &args);
    wait_server_ready(&mut server, port);

    // The tailnet is checked against the (fake) Tailscale API.
    let t = get_until(&cp, &mut server, &["tailscaletailnet", "fake-tailnet"], |t| {
        condition(t, "Ready").is_some_and(|c| c["status"] == "True")
    });
    assert_eq!(condition(&t, "Ready").map(|c| &c["reason"]), Some(&json!("Connected")), "{t:#}");

    // Every owned object exists, owned by the TailscaleEndpoints as its controller.
    let owned = [
        ("serviceaccount", "web".to_string()),
        ("role.rbac.authorization.k8s.io", "web".to_string()),
        ("rolebinding.rbac.authorization.k8s.io", "web".to_string()),
        ("statefulset", "web".to_string()),
        ("service", "web-svc".to_string()),
        ("secret", "web-0-config".to_string()),
        ("secret", "web-1-config".to_string()),
        ("secret", "web-0".to_string()),
        ("secret", "web-1".to_string()),
    ];
    for (kind, name) in &owned {
        let obj = get_until(&cp, &mut server, &[kind, name, "-n", "default"], |_| true);
        let refs = obj.pointer("/metadata/ownerReferences").cloned().unwrap_or_default();
        assert_eq!(
            refs,
            json!([{"apiVersion": "gateway.tailscale.com/v1alpha1", "kind": "TailscaleEndpoints", "name": "web",
                "uid": uid, "controller": true, "blockOwnerDeletion": true}]),
            "{kind}/{name}"
        );
    }
    let sts = get_json(&cp, &["statefulset", "web"]);
    assert_eq!(sts["spec"]["replicas"], 2, "{sts:#}");
    assert_eq!(sts["spec"]["serviceName"], "web-svc", "{sts:#}");

    // Status: no kubelet runs the proxies, so no device joins: not Ready, waiting for 2.
    let ep = get_until(&cp, &mut server, &["tailscaleendpoints", "web"], |e| condition(e, "Ready").is_some());
    let ready = condition(&ep, "Ready").cloned().unwrap_or_default();
    assert_eq!(ready["status"], "False", "{ep:#}");
    assert_eq!(ready["reason"], "WaitingForDevices", "{ep:#}");
    assert_eq!(ready["message"], "0/2 devices registered in the tailnet", "{ep:#}");
    assert_eq!(ready["observedGeneration"], ep["metadata"]["generation"], "{ep:#}");
    assert_eq!(ep["status"]["deviceCount"], 0, "{ep:#}");
    assert_eq!(ep["status"]["statefulSets"][0]["name"], "web", "{ep:#}");
    assert_eq!(ep["status"]["statefulSets"][0]["service"], "web-svc", "{ep:#}");
    assert_eq!(ep["metadata"]["finalizers"], json!(["gateway.tailscale.com/tailnet-devices"]), "{ep:#}");
    // One auth key per replica was minted from the (fake) Tailscale API with the object's tags.
    let keys = fake.auth_keys();
    assert_eq!(keys.len(), 2, "{keys:?}");
    for key in &keys {
        assert_eq!(key.request.tags, ["tag:k8s-proxy"], "{keys:?}");
        assert!(!key.request.reusable && key.request.preauthorized, "{keys:?}");
    }
    // ... and each landed in its replica's config Secret.
    let configs: String = ["web-0-config", "web-1-config"]
        .iter()
        .flat_map(|name| {
            let secret = get_json(&cp, &["secret", name]);
            let data = secret["data"].as_object().cloned().unwrap_or_default();
            data.values()
                .filter_map(|v| v.as_str().map(str::to_string))
                .map(|b64| base64::engine::general_purpose::STANDARD.decode(b64).unwrap_or_default())
                .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
                .collect::<Vec<_>>()
        })
        .collect();
    for key in &keys {
        assert_eq!(
            configs.matches(key.key.as_str()).count(),
            1,
            "auth key {} not in exactly one config Secret",
            key.id
        );
    }

    // A deleted StatefulSet comes back.
    let old_uid = sts["metadata"]["uid"].clone();
    cp.kubectl_ok(&["delete", "statefulset", "web", "--wait=false"]);
    let back = get_until(&cp, &mut server, &["statefulset", "web"], |s| s["metadata"]["uid"] != old_uid);
    assert_eq!(back["spec"]["replicas"], 2, "{back:#}");

    // The proxies join the tailnet (no kubelet runs them: the test does what they would, register
    // with the tailnet and record the device in their state Secret): Ready 2/2.
    let mut registered = Vec::new();
    for i in 0..2 {
        let device = fake.register_device(&format!("web-{i}"), &["tag:k8s-proxy"]);
        let state = json!({"stringData": {"device_id": device.node_id, "device_fqdn": format!("{}.", device.name),
            "device_ips": serde_json::to_string(&device.addresses).unwrap_or_default()}});
        cp.kubectl_ok(&["patch", "secret", &format!("web-{i}"), "--type=merge", "-p", &state.to_string()]);
        registered.push(device);
    }
    let ep = get_until(&cp, &mut server, &["tailscaleendpoints", "web"], |e| {
        condition(e, "Ready").is_some_and(|c| c["status"] == "True")
    });
    assert_eq!(condition(&ep, "Ready").map(|c| &c["reason"]), Some(&json!("DevicesReady")), "{ep:#}");
    assert_eq!(ep["status"]["deviceCount"], 2, "{ep:#}");
    let hostnames: Vec<&Value> =
        ep["status"]["devices"].as_array().into_iter().flatten().map(|d| &d["hostname"]).collect();
    assert_eq!(hostnames, [&json!("web-0"), &json!("web-1")], "{ep:#}");

    // The data plane: a TailscaleServices publishing the Service "web" on its VIP's port 80. The
    // VIP service is created in the (fake) tailnet, the proxies' ConfigMap serves it, and then
    // (not before) the registered replicas advertise it.
    let published = json!({"apiVersion": "gateway.tailscale.com/v1alpha1", "kind": "TailscaleServices",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"selector": {"matchLabels": {"app": "web"}}, "vipService": {"ports": ["tcp:80"]},
            "serve": [{"port": 80, "protocol": "HTTP", "backendRef": {"name": "web", "port": 8080}}]}});
    apply_ok(&cp, &published);
    // The DNS name needs the tailnet's MagicDNS suffix, read off device names (devices joined
    // just now): it follows within a device refresh.
    let svc = get_until(&cp, &mut server, &["tailscaleservices", "web"], |s| {
        condition(s, "Published").is_some_and(|c| c["status"] == "True")
            && s["status"]["vipService"]["dnsName"].as_str().is_some()
    });
    assert_eq!(svc["status"]["vipService"]["name"], "svc:web", "{svc:#}");
    let dns = svc["status"]["vipService"]["dnsName"].as_str().unwrap_or_default().to_string();
    assert!(dns.starts_with("web."), "{svc:#}");
    let cm = get_until(&cp, &mut server, &["configmap", "web-proxies"], |c| {
        c["data"]["serve-config.json"].as_str().is_some_and(|t| t.contains("svc:web"))
    });
    let serve: Value = serde_json::from_str(cm["data"]["serve-config.json"].as_str().unwrap_or_default())
        .expect("parsing serve-config.json");
    assert_eq!(
        serve,
        json!({"Services": {"svc:web": {"TCP": {"80": {"HTTP": true}},
            "Web": {format!("{dns}:80"): {"Handlers": {"/": {"Proxy": "http://web.default.svc.cluster.local:8080"}}}}}}}),
        "{cm:#}"
    );
    let advertised = |name: &str| -> Value {
        let secret = get_json(&cp, &["secret", name]);
        let raw = secret["data"]["cap-107.hujson"].as_str().unwrap_or_default();
        let text = base64::engine::general_purpose::STANDARD.decode(raw).unwrap_or_default();
        serde_json::from_slice::<Value>(&text).unwrap_or_default()["AdvertiseServices"].clone()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while advertised("web-0-config") != json!(["svc:web"]) || advertised("web-1-config") != json!(["svc:web"]) {
        assert!(Instant::now() < deadline, "never advertised:\n{}", server.log_tail());
        std::thread::sleep(Duration::from_millis(250));
    }
    let sts = get_json(&cp, &["statefulset", "web"]);
    let env = sts["spec"]["template"]["spec"]["containers"][0]["env"].to_string();
    assert!(env.contains("TS_SERVE_CONFIG") && env.contains("TS_EXPERIMENTAL_SERVICE_AUTO_ADVERTISEMENT"), "{env}");

    // Steady state: once everything is in place, the server writes nothing (counted from
    // kube-apiserver's audit log; the leader Lease's renewals aside).
    // Our server names itself: the StatefulSet was written with its User-Agent.
    let agent = json!(tailscale_gateway::runtime::KUBE_USER_AGENT);
    let sts_writers: Vec<Value> = cp
        .audit_events()
        .iter()
        .filter(|e| e["objectRef"]["resource"] == "statefulsets" && e["verb"] != "get" && e["verb"] != "list")
        .filter(|e| e["verb"] != "watch")
        .map(|e| e["userAgent"].clone())
        .collect();
    assert!(sts_writers.contains(&agent), "the StatefulSet's writers: {sts_writers:?}");
    let writes = |events: &[Value]| -> Vec<String> {
        events
            .iter()
            .filter(|e| e["userAgent"] == agent)
            .filter(|e| ["create", "update", "patch", "delete"].contains(&e["verb"].as_str().unwrap_or_default()))
            .filter(|e| e["objectRef"]["resource"] != "leases")
            .map(|e| format!("{} {}", e["verb"], e["requestURI"]))
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let (quiet_from, settled) = loop {
        let before = cp.audit_events().len();
        std::thread::sleep(Duration::from_secs(3));
        let events = cp.audit_events();
        if writes(&events[before..]).is_empty() {
            break (before, events.len());
        }
        assert!(Instant::now() < deadline, "still writing: {:?}", writes(&events[before..]));
    };
    assert!(!writes(&cp.audit_events()[..quiet_from]).is_empty(), "the audit log shows none of the server's writes");
    std::thread::sleep(Duration::from_secs(10));
    let events = cp.audit_events();
    assert_eq!(writes(&events[settled..]), Vec::<String>::new(), "writes in the steady state");

    // Scale down to one replica: the StatefulSet follows and the surplus Secrets go.
    cp.kubectl_ok(&[
        "patch",
        "tailscaleendpoints",
        "web",
        "--type=merge",
        "-p",
        r#"{"spec":{"proxy":{"replicas":1}}}"#,
    ]);
    get_until(&cp, &mut server, &["statefulset", "web"], |s| s["spec"]["replicas"] == 1);
    for name in ["web-1-config", "web-1"] {
        let deadline = Instant::now() + Duration::from_secs(30);
        while cp.kubectl_output(&["get", "secret", name], None).status.success() {
            assert!(Instant::now() < deadline, "secret {name} survived the scale-down:\n{}", server.log_tail());
            std::thread::sleep(Duration::from_millis(250));
        }
    }
    assert!(cp.kubectl_output(&["get", "secret", "web-0-config"], None).status.success(), "web-0-config went too");
    // ... and the surplus device left the tailnet.
    let ids =
        |devices: Vec<tailscale_gateway::tailscale::Device>| devices.into_iter().map(|d| d.id).collect::<Vec<_>>();
    assert_eq!(ids(fake.devices()), [registered[0].id.clone()], "devices after the scale-down");

    // Deleting the TailscaleEndpoints: the reconciler's finalizer lets it go.
    let out = cp.kubectl_output(&["delete", "tailscaleendpoints", "web", "--timeout=60s"], None);
    assert!(out.status.success(), "{}\n{}", stderr(&out), server.log_tail());
    let gone = cp.kubectl_output(&["get", "tailscaleendpoints", "web"], None);
    assert!(!gone.status.success(), "still there: {}", stdout(&gone));
    assert_eq!(ids(fake.devices()), Vec::<String>::new(), "devices after the delete");
    server.assert_running();
    drop(rt);
}

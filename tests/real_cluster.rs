//! Against a real kube-apiserver (and etcd), started and stopped by each test on loopback: the
//! install manifests are accepted, the CRDs' schemas and CEL rules work, and kube-apiserver calls
//! our admission webhooks. Ignored in plain `cargo test`: `hack/test.sh` builds the pinned control
//! plane (hack/control-plane.sh) and runs these too; without the binaries they panic, naming the
//! script.

mod util;

use std::path::{Path, PathBuf};
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
    for key in ["ETCD_VERSION", "KUBERNETES_VERSION", "ENVOY_GATEWAY_VERSION"] {
        let v = versions.get(key).unwrap_or_else(|| panic!("versions.env lacks {key}"));
        assert!(v.starts_with('v') && v.split('.').count() == 3, "{key}={v} is no vMAJOR.MINOR.PATCH");
    }
}

#[test]
#[should_panic(expected = "is missing: run hack/control-plane.sh")]
fn a_missing_binary_fails_naming_the_build_script() {
    let empty = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
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
    let names: Vec<String> = CRDS.iter().map(|c| format!("crd/{c}")).collect();
    let mut args = vec!["wait", "--for=condition=Established", "--timeout=60s"];
    args.extend(names.iter().map(String::as_str));
    let waited = cp.kubectl_ok(&args);
    assert_eq!(waited.matches("condition met").count(), CRDS.len(), "{waited}");
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

/// A minimal stand-in for cert-manager's Certificate and Issuer CRDs: the kinds exist, their
/// contents go unchecked (cert-manager's own schemas are not vendored here).
fn cert_manager_stand_in() -> Value {
    let crd = |kind: &str, plural: &str| {
        json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": format!("{plural}.cert-manager.io")},
            "spec": {"group": "cert-manager.io", "scope": "Namespaced",
                "names": {"kind": kind, "plural": plural, "singular": kind.to_lowercase(), "listKind": format!("{kind}List")},
                "versions": [{"name": "v1", "served": true, "storage": true,
                    "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}]}})
    };
    json!({"apiVersion": "v1", "kind": "List", "items": [crd("Certificate", "certificates"), crd("Issuer", "issuers")]})
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
    apply_ok(&cp, &cert_manager_stand_in());
    cp.kubectl_ok(&["wait", "--for=condition=Established", "--timeout=60s", "crd/certificates.cert-manager.io"]);
    cp.kubectl_ok(&["wait", "--for=condition=Established", "--timeout=60s", "crd/issuers.cert-manager.io"]);
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
    ca_pem: String,
}

impl Gateway {
    /// Starts `tailscale-gateway serve` with a serving certificate for 127.0.0.1 from a fresh
    /// CA, the admin kubeconfig, and no reconciler; waits until `/readyz` passes.
    fn start(cp: &ControlPlane) -> Gateway {
        let dir = cp.dir().join("gateway");
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        let ca = Ca::generate("tsgw-test-webhook-ca").unwrap_or_else(|e| panic!("{e}"));
        let serving = ca.issue_server(&["127.0.0.1".into(), "localhost".into()]).unwrap_or_else(|e| panic!("{e}"));
        let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
        std::fs::write(&cert, &serving.cert_pem).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(&key, &serving.key_pem).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(dir.join("ca.crt"), &ca.pair().cert_pem).unwrap_or_else(|e| panic!("{e}"));
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
        let mut gw = Gateway { process, url: format!("https://127.0.0.1:{port}"), ca_pem: ca.pair().cert_pem.clone() };
        gw.wait_ready(cp, &dir.join("ca.crt"));
        gw
    }

    fn wait_ready(&mut self, cp: &ControlPlane, ca: &Path) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let ca_flag = format!("--certificate-authority={}", ca.display());
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
        let text = std::fs::read_to_string(root().join("webhooks").join(file)).unwrap_or_else(|e| panic!("{e}"));
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
            "loadBalancing": {"strategy": "fastest", "healthCheck": {"path": "health", "interval": "500ms", "timeout": "soon"}}
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
            "loadBalancing": {"healthCheck": {"path": "/healthz"}}}),
    );
    dry_run_until_mutated(&cp, &good, "/spec/vipService/name");
    apply_ok(&cp, &good);
    let stored: Value =
        serde_json::from_str(&cp.kubectl_ok(&["get", "tailscaleservices", "defaults-me", "-o", "json"]))
            .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(stored.pointer("/spec/vipService/name"), Some(&json!("svc:defaults-me")), "{stored:#}");
    assert_eq!(stored.pointer("/spec/loadBalancing/strategy"), Some(&json!("round-robin")), "{stored:#}");
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

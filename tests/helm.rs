//! The Helm chart in `charts/tailscale-gateway/`: its generated files (RBAC from the table in
//! `src/rbac.rs`, the CRDs from the Rust types) are current and its version is the crate's; with
//! the pinned helm (built by `hack/control-plane.sh`), `helm lint` passes, the default values render
//! exactly the objects of `deploy/` and `certificates.mode=certManager` those of `certs/`, the other
//! values change what they say, what it renders is accepted by a real kube-apiserver (server-side
//! apply), and `helm install`, `upgrade` and `uninstall` work against one.
//! The helm tests are ignored in plain `cargo test`: `hack/test.sh` builds helm and runs them; without
//! the binary they panic, naming the script.

mod util;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use serde_json::{Value, json};
use tailscale_gateway::{api, install, rbac};
use util::cluster::ControlPlane;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn chart() -> PathBuf {
    root().join("charts/tailscale-gateway")
}

/// `expected` against the checked-in file at `rel`, rewritten instead with `TSGW_UPDATE_CHART=1`.
fn check_generated(rel: &str, expected: &str) {
    let path = root().join(rel);
    if std::env::var_os("TSGW_UPDATE_CHART").is_some() {
        std::fs::write(&path, expected).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        return;
    }
    let checked_in = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    assert!(
        checked_in == expected,
        "{rel} is stale: run `TSGW_UPDATE_CHART=1 cargo test --test helm generated` and commit the result"
    );
}

#[test]
fn generated_chart_files_are_current() {
    check_generated(rbac::HELM_TEMPLATE_PATH, &rbac::helm_template());
    let crds = api::crds_yaml().expect("generating the CRDs");
    check_generated("charts/tailscale-gateway/files/crds.yaml", &crds);
}

#[test]
fn the_chart_version_is_the_crate_version() {
    let text = std::fs::read_to_string(chart().join("Chart.yaml")).expect("reading Chart.yaml");
    let chart: Value = serde_saphyr::from_str(&text).expect("parsing Chart.yaml");
    assert_eq!(chart["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(chart["appVersion"], env!("CARGO_PKG_VERSION"));
    assert_eq!(format!("ghcr.io/tailscale-gateway/tailscale-gateway:v{}", env!("CARGO_PKG_VERSION")), install::IMAGE);
}

// ---- with helm ------------------------------------------------------------------------------

/// The pinned helm, with its configuration and caches in a scratch folder.
struct Helm {
    bin: PathBuf,
    home: tempfile::TempDir,
}

impl Helm {
    fn new() -> Helm {
        let bin = util::cluster::binary("helm", "HELM_VERSION");
        Helm { bin, home: tempfile::tempdir().expect("creating helm's temporary home") }
    }

    fn run(&self, args: &[&str]) -> Output {
        let h = self.home.path();
        Command::new(&self.bin)
            .args(args)
            .env("HELM_CONFIG_HOME", h.join("config"))
            .env("HELM_CACHE_HOME", h.join("cache"))
            .env("HELM_DATA_HOME", h.join("data"))
            .env_remove("KUBECONFIG")
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", self.bin.display()))
    }

    /// `helm template` of the chart with `--set` for each of `sets`: the YAML it prints.
    fn template_text(&self, sets: &[&str]) -> String {
        let chart = chart().display().to_string();
        let mut args = vec!["template", "tailscale-gateway", chart.as_str()];
        for s in sets {
            args.extend(["--set", s]);
        }
        let out = self.run(&args);
        assert!(out.status.success(), "helm {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn template(&self, sets: &[&str]) -> Vec<Value> {
        parse(&self.template_text(sets), "helm template")
    }
}

fn parse(text: &str, what: &str) -> Vec<Value> {
    serde_saphyr::from_multiple::<Value>(text)
        .unwrap_or_else(|e| panic!("{what}: {e}"))
        .into_iter()
        .filter(|d| !d.is_null())
        .collect()
}

fn kustomize(dir: &str) -> Vec<Value> {
    let out = Command::new(util::cluster::kubectl_binary())
        .args(["kustomize", &root().join(dir).to_string_lossy()])
        .output()
        .expect("running kubectl kustomize");
    assert!(out.status.success(), "kubectl kustomize {dir}: {}", String::from_utf8_lossy(&out.stderr));
    parse(&String::from_utf8_lossy(&out.stdout), dir)
}

/// The objects by `apiVersion kind namespace/name`, with RBAC rules in a canonical form (one
/// sorted entry per group, resource, verb and names), since the generated template and the
/// hand-written deploy/rbac.yaml group them differently.
fn by_identity(docs: Vec<Value>) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for mut d in docs {
        let key = format!(
            "{} {} {}/{}",
            d["apiVersion"].as_str().unwrap_or_default(),
            d["kind"].as_str().unwrap_or_default(),
            d["metadata"]["namespace"].as_str().unwrap_or_default(),
            d["metadata"]["name"].as_str().unwrap_or_default()
        );
        if d["kind"] == "ClusterRole" || d["kind"] == "Role" {
            d["rules"] = json!(util::expand_rules(&d["rules"]).into_iter().collect::<Vec<_>>());
        }
        assert!(out.insert(key.clone(), d).is_none(), "{key} twice");
    }
    out
}

/// Asserts the two sets of objects are equal, naming each object that differs.
fn assert_same_objects(helm: Vec<Value>, kustomize: Vec<Value>, what: &str) {
    let (h, k) = (by_identity(helm), by_identity(kustomize));
    let hk: BTreeSet<&String> = h.keys().collect();
    let kk: BTreeSet<&String> = k.keys().collect();
    assert_eq!(hk, kk, "{what}: the chart renders other objects than kustomize");
    let mut diffs = Vec::new();
    for (key, hv) in &h {
        if hv != &k[key] {
            diffs.push(format!("{key}:\n helm: {hv}\n kustomize: {}", k[key]));
        }
    }
    assert!(diffs.is_empty(), "{what}: {} objects differ:\n{}", diffs.len(), diffs.join("\n"));
}

#[test]
#[ignore = "needs hack/control-plane.sh's helm: run hack/test.sh"]
fn helm_lint_passes() {
    let helm = Helm::new();
    let chart = chart().display().to_string();
    for extra in [&[][..], &["--set", "certificates.mode=certManager"][..]] {
        let mut args = vec!["lint", "--strict", chart.as_str()];
        args.extend_from_slice(extra);
        let out = helm.run(&args);
        let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "helm {args:?}:\n{text}");
        assert!(text.contains("0 chart(s) failed"), "{text}");
    }
}

#[test]
#[ignore = "needs hack/control-plane.sh's helm: run hack/test.sh"]
fn default_values_render_the_objects_of_deploy() {
    let helm = Helm::new();
    assert_same_objects(helm.template(&[]), kustomize("deploy"), "default values vs deploy/");
}

#[test]
#[ignore = "needs hack/control-plane.sh's helm: run hack/test.sh"]
fn cert_manager_values_render_the_objects_of_certs() {
    let helm = Helm::new();
    let rendered = helm.template(&["certificates.mode=certManager"]);
    assert_same_objects(rendered, kustomize("certs"), "certificates.mode=certManager vs certs/");
}

#[test]
#[ignore = "needs hack/control-plane.sh's helm: run hack/test.sh"]
fn values_change_what_they_name() {
    let helm = Helm::new();
    let docs = by_identity(helm.template(&[
        "image.repository=registry.example.com/tsgw",
        "image.tag=dev",
        "replicas=3",
        "proxyImage=registry.example.com/tailscale:v1.90.0",
        "resources.requests.cpu=200m",
        "xds.service.port=15005",
        "xds.service.type=LoadBalancer",
        "certificates.mode=certManager",
        "certificates.certManager.issuerRef.kind=ClusterIssuer",
        "certificates.certManager.issuerRef.name=corp-ca",
    ]));
    let ns = install::NAMESPACE;
    let dep = &docs[&format!("apps/v1 Deployment {ns}/tailscale-gateway")];
    assert_eq!(dep["spec"]["replicas"], 3);
    let c = &dep["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["image"], "registry.example.com/tsgw:dev");
    assert_eq!(c["resources"]["requests"]["cpu"], "200m");
    let args: Vec<&str> = c["args"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    assert!(args.contains(&"--proxy-image=registry.example.com/tailscale:v1.90.0"), "{args:?}");
    let xds = &docs[&format!("v1 Service {ns}/{}", install::XDS_SERVICE_NAME)];
    assert_eq!((&xds["spec"]["type"], &xds["spec"]["ports"][0]["port"]), (&json!("LoadBalancer"), &json!(15005)));
    // With an issuer of one's own, no private CA is created.
    let cert = &docs[&format!("cert-manager.io/v1 Certificate {ns}/tailscale-gateway-serving")];
    assert_eq!(cert["spec"]["issuerRef"], json!({"kind": "ClusterIssuer", "name": "corp-ca"}));
    assert!(!docs.keys().any(|k| k.contains("Issuer")), "{:?}", docs.keys());

    // One replica: no PodDisruptionBudget (it would block every drain).
    let one = by_identity(helm.template(&["replicas=1"]));
    assert!(!one.keys().any(|k| k.contains("PodDisruptionBudget")));
    // Another namespace moves every namespaced object and every reference to it.
    let text = helm.template_text(&["namespace.name=gw-system"]);
    assert!(!text.contains(&format!("namespace: {ns}\n")), "{text}");
    let moved = by_identity(parse(&text, "helm template"));
    assert!(moved.contains_key("v1 Namespace /gw-system"));
    // An unknown certificate mode fails the render, naming the value.
    let out = helm.run(&["template", "x", &chart().display().to_string(), "--set", "certificates.mode=acme"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("certificates.mode must be selfManaged or certManager"));
}

/// `kubectl apply --server-side -f -` of `text` (plus `extra`), which must succeed; its stdout.
fn apply(cp: &ControlPlane, text: &str, extra: &[&str]) -> String {
    let mut args = vec!["apply", "--server-side", "-f", "-"];
    args.extend_from_slice(extra);
    let out = cp.kubectl_output(&args, Some(text));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "kubectl {args:?}: {}\n{stdout}", String::from_utf8_lossy(&out.stderr));
    stdout
}

/// The documents of `text` split into (all but the Deployments, the Deployments), as JSON streams.
fn split_deployments(text: &str) -> (String, String) {
    let (mut rest, mut deployments) = (String::new(), String::new());
    for d in parse(text, "helm template") {
        let target = if d["kind"] == "Deployment" { &mut deployments } else { &mut rest };
        target.push_str("---\n");
        target.push_str(&d.to_string());
        target.push('\n');
    }
    (rest, deployments)
}

#[test]
#[ignore = "needs hack/control-plane.sh's helm and the real control plane: run hack/test.sh"]
fn the_chart_installs_on_a_real_apiserver() {
    let helm = Helm::new();
    let cp = ControlPlane::start();
    // cert-manager's kinds, for the certManager variant.
    apply(&cp, &util::cert_manager_stand_in().to_string(), &[]);
    cp.wait_established(&["certificates.cert-manager.io", "issuers.cert-manager.io"]);
    for sets in [&[][..], &["certificates.mode=certManager"][..]] {
        let text = helm.template_text(sets);
        let objects = parse(&text, "helm template").len();
        // Everything for real but the Deployment (no kubelet runs its pods: a server-side dry run).
        let (rest, deployments) = split_deployments(&text);
        let out = apply(&cp, &rest, &[]);
        let applied = out.lines().filter(|l| l.ends_with(" serverside-applied")).count();
        let dry = apply(&cp, &deployments, &["--dry-run=server"]);
        assert_eq!(dry.lines().filter(|l| l.ends_with("serverside-applied (server dry run)")).count(), 1, "{dry}");
        assert_eq!(applied + 1, objects, "{sets:?}: every object applied:\n{out}");
    }
    cp.wait_established(&[
        "tailscaletailnets.gateway.tailscale.com",
        "tailscaleendpoints.gateway.tailscale.com",
        "tailscaleservices.gateway.tailscale.com",
        "tailscalegateways.gateway.tailscale.com",
    ]);
    let ns = install::NAMESPACE;
    let inject = cp.kubectl_ok(&[
        "get",
        "validatingwebhookconfiguration",
        install::WEBHOOK_CONFIG_NAME,
        "-o",
        "jsonpath={.metadata.annotations.cert-manager\\.io/inject-ca-from}",
    ]);
    assert_eq!(inject, format!("{ns}/tailscale-gateway-serving"));
    cp.kubectl_ok(&["get", "-n", ns, "certificate/tailscale-gateway-serving", "serviceaccount/tailscale-gateway"]);
}

#[test]
#[ignore = "needs hack/control-plane.sh's helm and the real control plane: run hack/test.sh"]
fn helm_install_and_uninstall_on_a_real_apiserver() {
    let helm = Helm::new();
    let cp = ControlPlane::start();
    let kubeconfig = cp.kubeconfig.display().to_string();
    let chart = chart().display().to_string();
    let run = |args: &[&str]| {
        let mut all = vec!["--kubeconfig", kubeconfig.as_str()];
        all.extend_from_slice(args);
        let out = helm.run(&all);
        let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "helm {args:?}:\n{text}");
        text
    };
    // The release record in `default`; the chart creates its own namespace.
    let out = run(&["install", "tsgw", &chart, "--namespace", "default"]);
    assert!(out.contains("STATUS: deployed"), "{out}");
    let ns = install::NAMESPACE;
    cp.kubectl_ok(&["get", "namespace", ns]);
    cp.kubectl_ok(&[
        "get",
        "-n",
        ns,
        "deployment/tailscale-gateway",
        "service/tailscale-gateway-xds",
        "role/tailscale-gateway",
    ]);
    cp.kubectl_ok(&["get", "apiservice", install::APISERVICE_NAME]);
    // An upgrade changes what the values say.
    run(&["upgrade", "tsgw", &chart, "--namespace", "default", "--set", "replicas=3,image.tag=dev"]);
    let got = cp.kubectl_ok(&[
        "get",
        "-n",
        ns,
        "deployment/tailscale-gateway",
        "-o",
        "jsonpath={.spec.replicas} {.spec.template.spec.containers[0].image}",
    ]);
    assert_eq!(got, "3 ghcr.io/tailscale-gateway/tailscale-gateway:dev");
    // (No --wait: without kube-controller-manager the namespace stays Terminating.)
    run(&["uninstall", "tsgw", "--namespace", "default"]);
    let out = cp.kubectl_output(&["get", "clusterrole", install::APP_NAME], None);
    assert!(!out.status.success(), "the ClusterRole outlived the release");
}

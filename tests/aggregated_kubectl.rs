//! Real kubectl against local mode: the server runs in-process on a copy of `examples/`, kubectl
//! uses the generated kubeconfig (mutual TLS with the admin certificate). Runs the installed
//! kubectl and every Google Cloud SDK versioned binary present (1.27 to 1.33); fails when no
//! kubectl is installed, so a machine without one cannot pass it silently.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tailscale_gateway::runtime::{self, ServeArgs};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const SDK: &str = "/usr/lib/google-cloud-sdk/bin";

fn kubectls() -> Vec<PathBuf> {
    let mut found = Vec::new();
    if let Some(path) = std::env::var_os("PATH")
        && let Some(k) = std::env::split_paths(&path).map(|d| d.join("kubectl")).find(|p| p.is_file())
    {
        found.push(k);
    }
    // Every supported minor version that is installed beside the default one.
    for v in ["1.27", "1.28", "1.29", "1.30", "1.31", "1.33"] {
        let p = Path::new(SDK).join(format!("kubectl.{v}"));
        if p.is_file() {
            found.push(p);
        }
    }
    found
}

struct Kubectl<'a> {
    bin: &'a Path,
    kubeconfig: &'a Path,
    cache_dir: PathBuf,
}

impl Kubectl<'_> {
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(self.bin);
        cmd.arg("--kubeconfig").arg(self.kubeconfig).arg("--cache-dir").arg(&self.cache_dir).args(args);
        cmd.env("HOME", &self.cache_dir).kill_on_drop(true);
        cmd
    }

    async fn run(&self, args: &[&str]) -> String {
        let out = tokio::time::timeout(Duration::from_secs(60), self.command(args).output())
            .await
            .unwrap_or_else(|_| panic!("kubectl {args:?} timed out"))
            .unwrap_or_else(|e| panic!("running {}: {e}", self.bin.display()));
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{} {args:?} failed: {stderr}\n{stdout}", self.bin.display());
        stdout
    }

    /// Runs a command that must succeed; returns stdout and stderr.
    async fn run_both(&self, args: &[&str]) -> (String, String) {
        let out = self.command(args).output().await.expect("running kubectl");
        let (stdout, stderr) =
            (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
        assert!(out.status.success(), "{} {args:?} failed: {stderr}\n{stdout}", self.bin.display());
        (stdout, stderr)
    }

    async fn fails(&self, args: &[&str]) -> String {
        let out = self.command(args).output().await.expect("running kubectl");
        assert!(!out.status.success(), "kubectl {args:?} should fail");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// Major.minor of the client, e.g. 27 for 1.27.
    async fn minor(&self) -> u32 {
        let out = self.run(&["version", "--client", "-o", "json"]).await;
        let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
        v["clientVersion"]["minor"].as_str().and_then(|m| m.trim_end_matches('+').parse().ok()).unwrap_or(0)
    }
}

fn copy_examples(to: &Path) {
    let from = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    for entry in std::fs::read_dir(&from).expect("reading the examples directory").flatten() {
        let p = entry.path();
        if p.extension().is_some_and(|e| e == "yaml") {
            std::fs::copy(&p, to.join(entry.file_name())).unwrap_or_else(|e| panic!("copying {}: {e}", p.display()));
        }
    }
}

fn lines_with<'a>(out: &'a str, needle: &str) -> Vec<&'a str> {
    out.lines().filter(|l| l.contains(needle)).collect()
}

/// The next line of a `kubectl get -w` that mentions `needle`, within 20 s.
async fn line_with(lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>, needle: &str) -> String {
    let found = tokio::time::timeout(Duration::from_secs(20), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains(needle) {
                return line;
            }
        }
        String::new()
    });
    found.await.unwrap_or_else(|_| panic!("kubectl -w printed no line with {needle:?} within 20s"))
}

/// Our CRD kinds, served read-only by local mode.
async fn exercise_crds(k: &Kubectl<'_>, dir: &Path) {
    crd_tables(k).await;
    crd_objects(k).await;
    crd_watch(k, dir).await;
}

/// Tables with the CRDs' printer columns, short names, the category, discovery.
async fn crd_tables(k: &Kubectl<'_>) {
    let svc = k.run(&["get", "tailscaleservices", "-A"]).await;
    let header = svc.lines().next().unwrap_or_default();
    for col in ["NAMESPACE", "NAME", "VIP", "ENDPOINTS", "HEALTHY", "AGE"] {
        assert!(header.contains(col), "tailscaleservices lacks column {col}:\n{svc}");
    }
    assert!(!header.contains("DNS"), "DNS is a priority-1 column:\n{svc}");
    let web = lines_with(&svc, "web-service");
    assert!(web[0].contains("svc:web-service") && web[0].contains(" 3 "), "printer columns of web-service:\n{svc}");
    assert!(lines_with(&svc, "web-staging")[0].starts_with("staging"), "{svc}");
    let wide = k.run(&["get", "tssvc", "-o", "wide"]).await;
    assert!(wide.contains("DNS") && wide.contains("web-service.tail8eff9.ts.net"), "{wide}");

    // Short names, from the CRDs.
    let tsep = k.run(&["get", "tsep"]).await;
    for col in ["TAILNET", "REPLICAS", "DEVICES", "READY"] {
        assert!(tsep.lines().next().unwrap_or_default().contains(col), "tsep lacks {col}:\n{tsep}");
    }
    assert!(lines_with(&tsep, "web-proxy-west")[0].contains("company-tailnet"), "{tsep}");
    let tailnets = k.run(&["get", "tstailnet"]).await;
    assert!(lines_with(&tailnets, "company-tailnet")[0].contains("tail8eff9.ts.net"), "{tailnets}");
    let gateways = k.run(&["get", "tsgw", "-A"]).await;
    assert!(gateways.contains("company-gateway"), "{gateways}");

    let all = k.run(&["get", "tailscale", "-A", "-o", "name"]).await;
    for needle in [
        "tailscaletailnet.gateway.tailscale.com/company-tailnet",
        "tailscaleendpoints.gateway.tailscale.com/web-proxy-east",
        "tailscaleservices.gateway.tailscale.com/web-service",
        "tailscalegateway.gateway.tailscale.com/company-gateway",
        "tailscaledevice.tailnet.gateway.tailscale.com/web-proxy-east-0",
    ] {
        assert!(all.contains(needle), "get tailscale -A lacks {needle}:\n{all}");
    }
    let resources = k.run(&["api-resources", "--api-group", "gateway.tailscale.com"]).await;
    for needle in ["tailscaletailnets", "tstailnet", "tailscaleservices", "tssvc", "tsep", "tsgw"] {
        assert!(resources.contains(needle), "api-resources lacks {needle}:\n{resources}");
    }
}

/// Whole objects (status included), selectors, describe, explain, version, refused writes.
async fn crd_objects(k: &Kubectl<'_>) {
    let yaml = k.run(&["get", "tssvc", "web-service", "-o", "yaml"]).await;
    for needle in [
        "apiVersion: gateway.tailscale.com/v1alpha1",
        "kind: TailscaleServices",
        "uid: ",
        "resourceVersion:",
        "status:",
        "dnsName: web-service.tail8eff9.ts.net",
        "healthyBackends: 3",
    ] {
        assert!(yaml.contains(needle), "yaml lacks {needle}:\n{yaml}");
    }
    let json = k.run(&["get", "tstailnet", "company-tailnet", "-o", "json"]).await;
    let tailnet: serde_json::Value = serde_json::from_str(&json).unwrap_or_default();
    assert_eq!(tailnet["status"]["tailnetInfo"]["magicDNSSuffix"], "tail8eff9.ts.net", "{json}");
    let by_field = k.run(&["get", "tssvc", "-A", "--field-selector", "metadata.namespace=staging", "-o", "name"]).await;
    assert_eq!(by_field.trim(), "tailscaleservices.gateway.tailscale.com/web-staging");

    let describe = k.run(&["describe", "tailscaleservices", "web-service"]).await;
    for needle in
        ["Name:         web-service", "Kind:         TailscaleServices", "Status:", "UID:", "Healthy Backends:  3"]
    {
        assert!(describe.contains(needle), "describe lacks {needle:?}:\n{describe}");
    }
    let explain = k.run(&["explain", "tailscaleservices.spec"]).await;
    for needle in ["FIELD: spec <Object>", "vipService", "selector", "Selects TailscaleEndpoints in the same namespace"]
    {
        assert!(explain.contains(needle), "explain tailscaleservices.spec lacks {needle:?}:\n{explain}");
    }

    let (version, warnings) = k.run_both(&["version"]).await;
    assert!(version.contains("Server") && version.contains("tailscale-gateway"), "{version}");
    // (kubectl 1.27 also warns that its default output format is deprecated.)
    assert!(!warnings.contains("version skew"), "kubectl version warned about skew: {warnings}");

    let err = k.fails(&["delete", "tssvc", "web-service"]).await;
    assert!(err.contains("MethodNotAllowed") && err.contains("read-only"), "{err}");
    let err = k.fails(&["label", "tsep", "web-proxy-east", "x=y"]).await;
    assert!(err.contains("MethodNotAllowed"), "{err}");
}

/// `get -w` of a CRD kind sees an edit of its file.
async fn crd_watch(k: &Kubectl<'_>, dir: &Path) {
    let mut child = k
        .command(&["get", "tssvc", "-w"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawning kubectl get tssvc -w");
    let stdout = child.stdout.take().unwrap_or_else(|| panic!("no stdout"));
    let mut lines = BufReader::new(stdout).lines();
    line_with(&mut lines, "web-service").await;
    let file = dir.join("services.yaml");
    let text = std::fs::read_to_string(&file).expect("reading services.yaml");
    let edited = text.replace("healthyBackends: 3}", "healthyBackends: 4}");
    assert_ne!(edited, text, "test fixture changed: cannot edit web-service's status");
    std::fs::write(&file, edited).expect("writing the edited services.yaml");
    let event = line_with(&mut lines, "web-service").await;
    assert!(event.contains(" 4 "), "web-service should now have 4 healthy backends: {event}");
    let _ = child.kill().await;
}

async fn exercise(k: &Kubectl<'_>, dir: &Path) {
    let minor = k.minor().await;
    eprintln!("kubectl {} (1.{minor})", k.bin.display());

    let out = k.run(&["get", "tailscaledevices"]).await;
    let header = out.lines().next().unwrap_or_default();
    for col in ["NAME", "ENDPOINTS", "TAILNET", "IP", "ONLINE", "LAST SEEN", "AGE"] {
        assert!(header.contains(col), "missing column {col}: {header}");
    }
    assert!(!header.contains("FQDN"));
    assert_eq!(out.lines().count(), 6, "5 devices in default:\n{out}");
    assert!(lines_with(&out, "web-proxy-west-1")[0].contains("false"));

    let all = k.run(&["get", "tsdev", "-A"]).await;
    assert!(all.lines().next().unwrap_or_default().starts_with("NAMESPACE"));
    assert!(lines_with(&all, "web-proxy-staging-0")[0].starts_with("staging"));

    let wide = k.run(&["get", "tsdev", "-o", "wide"]).await;
    for col in ["FQDN", "NODE ID", "TAGS", "POD"] {
        assert!(wide.lines().next().unwrap_or_default().contains(col), "wide lacks {col}");
    }
    assert!(wide.contains("web-proxy-east-0.tail8eff9.ts.net"));

    let yaml = k.run(&["get", "tailscaledevice", "web-proxy-east-0", "-o", "yaml"]).await;
    for needle in [
        "apiVersion: tailnet.gateway.tailscale.com/v1alpha1",
        "kind: TailscaleDevice",
        "resourceVersion:",
        "nodeID: n123456789abcdef",
    ] {
        assert!(yaml.contains(needle), "yaml lacks {needle}:\n{yaml}");
    }

    let one = k.run(&["get", "tailscaledevice", "web-proxy-east-0"]).await;
    assert_eq!(one.lines().count(), 2);

    let west = k.run(&["get", "tsdev", "-l", "region=west"]).await;
    assert_eq!(west.lines().count(), 3, "{west}");
    let offline = k.run(&["get", "tsdev", "-A", "--field-selector", "status.online=false"]).await;
    assert_eq!(offline.lines().count(), 2, "{offline}");
    assert!(offline.contains("web-proxy-west-1"));
    let staging = k.run(&["get", "tsdev", "-A", "--field-selector", "spec.tailnet=staging-tailnet"]).await;
    assert_eq!(staging.lines().count(), 2, "{staging}");
    let err = k.fails(&["get", "tsdev", "--field-selector", "spec.bogus=1"]).await;
    assert!(err.contains("field label not supported"), "{err}");
    let err = k.fails(&["get", "tsdev", "nope"]).await;
    assert!(err.contains("NotFound") || err.contains("not found"), "{err}");

    let sel = k.run(&["get", "selectedendpoints"]).await;
    for col in ["NAME", "ENDPOINTS", "MACHINES", "HEALTHY", "VIP", "AGE"] {
        assert!(sel.lines().next().unwrap_or_default().contains(col), "selectedendpoints lacks {col}");
    }
    assert!(lines_with(&sel, "web-service")[0].contains("100.100.100.50"));

    let names = k.run(&["get", "tailscale", "-A", "-o", "name"]).await;
    assert!(names.contains("tailscaledevice.tailnet.gateway.tailscale.com/web-proxy-east-0"), "{names}");

    // Every version explains: 1.29 and newer from OpenAPI v3 (JSON), 1.27 and 1.28 from OpenAPI
    // v2 as gnostic protobuf.
    let explain = k.run(&["explain", "tailscaledevices"]).await;
    for needle in [
        "KIND:",
        "TailscaleDevice",
        "VERSION:",
        "v1alpha1",
        "TailscaleDevice is a read-only view of one Tailscale device",
        "metadata",
        "Standard object's metadata.",
        "spec",
        "What the device is and which objects it belongs to.",
        "status",
        "What the tailnet reports about the device now.",
    ] {
        assert!(explain.contains(needle), "explain tailscaledevices lacks {needle:?}:\n{explain}");
    }
    let status = k.run(&["explain", "tailscaledevices.status"]).await;
    for needle in [
        "FIELD: status <Object>",
        "online",
        "Whether the device is online in the tailnet.",
        "addresses",
        "<[]string>",
        "Tailscale IPv4 and IPv6 addresses.",
        "lastSeen",
    ] {
        assert!(status.contains(needle), "explain tailscaledevices.status lacks {needle:?}:\n{status}");
    }
    let field = k.run(&["explain", "tsdev.status.online"]).await;
    assert!(field.contains("online <boolean>"), "{field}");
    let sel = k.run(&["explain", "selectedendpoints"]).await;
    for needle in ["SelectedEndpoints", "status", "What the TailscaleServices of the same name selects now."] {
        assert!(sel.contains(needle), "explain selectedendpoints lacks {needle:?}:\n{sel}");
    }

    // get -w sees a change made to a file in the local directory.
    let mut child = k
        .command(&["get", "tsdev", "-w"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawning kubectl get tsdev -w");
    let stdout = child.stdout.take().unwrap_or_else(|| panic!("no stdout"));
    let mut lines = BufReader::new(stdout).lines();
    let mut seen = 0;
    while seen < 6 {
        let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line()).await;
        let line = line.unwrap_or_else(|_| panic!("kubectl -w printed no initial list")).ok().flatten();
        assert!(line.is_some(), "kubectl -w ended early");
        seen += 1;
    }
    let file = dir.join("endpoints-west.yaml");
    let text = std::fs::read_to_string(&file).expect("reading endpoints-west.yaml");
    let flipped = text.replace("connected: false, online: false", "connected: true, online: true");
    assert_ne!(flipped, text, "test fixture changed: cannot flip web-proxy-west-1");
    std::fs::write(&file, flipped).expect("writing the flipped endpoints-west.yaml");
    let event = tokio::time::timeout(Duration::from_secs(20), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains("web-proxy-west-1") {
                return line;
            }
        }
        String::new()
    })
    .await
    .unwrap_or_else(|_| panic!("kubectl -w saw no event within 20s of the file change"));
    assert!(event.contains("true"), "web-proxy-west-1 should now be online: {event}");
    let _ = child.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_against_local_mode() {
    let bins = kubectls();
    assert!(!bins.is_empty(), "no kubectl on PATH or in {SDK}: this test needs one (install kubectl)");
    // A fresh server and copy of the examples per kubectl, since each run edits a file.
    for bin in &bins {
        let tmp = tempfile::tempdir().expect("creating a temporary directory");
        let dir = tmp.path().join("manifests");
        std::fs::create_dir_all(&dir).expect("creating the manifests directory");
        copy_examples(&dir);
        let addr = "127.0.0.1:0".parse().expect("parsing the listen address");
        let running =
            runtime::start(ServeArgs::local(&dir, tmp.path().join("state"), addr)).await.expect("starting local mode");
        let kubeconfig = running.kubeconfig.clone().unwrap_or_else(|| panic!("local mode wrote no kubeconfig"));
        let k = Kubectl { bin, kubeconfig: &kubeconfig, cache_dir: tmp.path().join("cache") };
        exercise_crds(&k, &dir).await;
        exercise(&k, &dir).await;
        running.shutdown().await;
    }
}

/// `metadata.uid` is the same for the same object after a restart (and differs between objects).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uids_are_stable_across_restarts() {
    let bins = kubectls();
    let bin = bins.first().unwrap_or_else(|| panic!("no kubectl on PATH or in {SDK}: this test needs one"));
    let tmp = tempfile::tempdir().expect("creating a temporary directory");
    let dir = tmp.path().join("manifests");
    std::fs::create_dir_all(&dir).expect("creating the manifests directory");
    copy_examples(&dir);
    let uids = || async {
        let addr = "127.0.0.1:0".parse().expect("parsing the listen address");
        let running =
            runtime::start(ServeArgs::local(&dir, tmp.path().join("state"), addr)).await.expect("starting local mode");
        let kubeconfig = running.kubeconfig.clone().unwrap_or_else(|| panic!("no kubeconfig"));
        let k = Kubectl { bin, kubeconfig: &kubeconfig, cache_dir: tmp.path().join("cache") };
        let columns = "custom-columns=NAME:.metadata.name,UID:.metadata.uid";
        let mut out = String::new();
        for kind in ["tailscaleservices", "tailscaletailnets", "tailscaledevices", "selectedendpoints"] {
            out.push_str(&k.run(&["get", kind, "-A", "-o", columns, "--no-headers"]).await);
        }
        running.shutdown().await;
        out
    };
    let first = uids().await;
    let second = uids().await;
    assert_eq!(first, second, "uids changed across a restart");
    let values: Vec<&str> = first.lines().filter_map(|l| l.split_whitespace().nth(1)).collect();
    assert!(values.len() >= 10, "{first}");
    for uid in &values {
        let groups: Vec<usize> = uid.split('-').map(str::len).collect();
        assert_eq!(groups, [8, 4, 4, 4, 12], "not a UUID: {uid}");
    }
    let unique: std::collections::BTreeSet<&&str> = values.iter().collect();
    assert_eq!(unique.len(), values.len(), "uids repeat:\n{first}");
}

//! A real control plane for tests: etcd and kube-apiserver (and, on request,
//! kube-controller-manager) on free loopback ports, with certificates made here, started by
//! [`ControlPlane::start`] and killed, with their children, on drop. The binaries are the pinned
//! ones `hack/control-plane.sh` builds into `${TSGW_CACHE:-$HOME/.cache/tailscale-gateway}/bin/`
//! (versions in `hack/control-plane/versions.env`); a missing binary is a panic naming that script.

use std::collections::BTreeMap;
use std::fs::File;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use tailscale_gateway::pki::{Ca, CertPair};

/// What the panic for a missing binary tells the reader to run.
pub const BUILD_HINT: &str =
    "run hack/control-plane.sh (or hack/test.sh, which runs it) to build the real control plane";

/// How long a component may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(90);

/// The pinned versions, from `hack/control-plane/versions.env` (KEY=VALUE lines).
pub fn versions() -> BTreeMap<String, String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("hack/control-plane/versions.env");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// Where `hack/control-plane.sh` puts the binaries.
pub fn bin_dir() -> PathBuf {
    match std::env::var_os("TSGW_CACHE") {
        Some(cache) => PathBuf::from(cache).join("bin"),
        None => {
            let home = std::env::var_os("HOME").unwrap_or_else(|| panic!("neither TSGW_CACHE nor HOME is set"));
            PathBuf::from(home).join(".cache/tailscale-gateway/bin")
        }
    }
}

/// The cached binary `name` at the version `versions.env` pins under `version_key`; panics
/// naming the build script when it is missing.
pub fn binary(name: &str, version_key: &str) -> PathBuf {
    binary_in(&bin_dir(), name, version_key)
}

/// [`binary`] in the folder `bin`.
pub fn binary_in(bin: &Path, name: &str, version_key: &str) -> PathBuf {
    let versions = versions();
    let version = versions.get(version_key).unwrap_or_else(|| panic!("versions.env has no {version_key}"));
    let path = bin.join(format!("{name}-{version}"));
    assert!(path.is_file(), "{} is missing: {BUILD_HINT}", path.display());
    path
}

/// The kubectl the tests drive: the Google Cloud SDK's 1.33 (one minor below the pinned
/// kube-apiserver, within the supported skew) when installed, else `kubectl` on PATH.
pub fn kubectl_binary() -> PathBuf {
    let sdk = Path::new("/usr/lib/google-cloud-sdk/bin/kubectl.1.33");
    if sdk.is_file() { sdk.to_path_buf() } else { PathBuf::from("kubectl") }
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    let [port] = free_ports();
    port
}

/// `N` distinct loopback ports that were free a moment ago (all held open until all are chosen).
pub fn free_ports<const N: usize>() -> [u16; N] {
    let listeners: [TcpListener; N] =
        std::array::from_fn(|_| TcpListener::bind("127.0.0.1:0").expect("binding a free port"));
    listeners.map(|l| l.local_addr().expect("reading a free port's address").port())
}

/// A child process in its own process group, its output in a log file; the group is killed on drop.
pub struct Process {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Process {
    /// Spawns `cmd` in a new process group, stdout and stderr to `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: PathBuf) -> Process {
        let out = File::create(&log).unwrap_or_else(|e| panic!("{}: {e}", log.display()));
        let err = out.try_clone().expect("cloning the log file handle for stderr");
        cmd.stdin(Stdio::null()).stdout(out).stderr(err).process_group(0);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("starting {name} ({:?}): {e}", cmd.get_program()));
        Process { name: name.to_string(), child, log }
    }

    /// The last lines of the log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// The log's tail when the process exited because its port was taken meanwhile (ports are
    /// chosen free, then released, then bound by the process: another may bind one in between).
    pub fn lost_its_port(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(_)) => {
                let tail = self.log_tail();
                tail.contains("address already in use").then_some(tail)
            }
            _ => None,
        }
    }

    /// Panics with the log when the process has exited.
    pub fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("{} exited ({status}):\n{}", self.name, self.log_tail());
        }
    }

    /// Whole log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).stderr(Stdio::null()).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The certificates and keys of one control plane, written as PEM files into its directory.
pub struct Pki {
    /// Cluster CA: signs the apiserver's serving cert and client certs (`--client-ca-file`).
    pub ca: Ca,
    /// Front-proxy CA (`--requestheader-client-ca-file`).
    pub front_proxy_ca: Ca,
}

/// File paths of the PKI material.
pub struct PkiFiles {
    pub ca: PathBuf,
    pub serving_cert: PathBuf,
    pub serving_key: PathBuf,
    pub admin_cert: PathBuf,
    pub admin_key: PathBuf,
    pub front_proxy_ca: PathBuf,
    pub proxy_client_cert: PathBuf,
    pub proxy_client_key: PathBuf,
    pub sa_public: PathBuf,
    pub sa_private: PathBuf,
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    path
}

fn write_pair(dir: &Path, stem: &str, pair: &CertPair) -> (PathBuf, PathBuf) {
    (write(dir, &format!("{stem}.crt"), &pair.cert_pem), write(dir, &format!("{stem}.key"), &pair.key_pem))
}

impl Pki {
    /// Generates every certificate the control plane needs and writes them under `dir`.
    pub fn generate(dir: &Path) -> (Pki, PkiFiles) {
        let ca = Ca::generate("tsgw-test-cluster-ca").expect("generating the cluster CA");
        let front_proxy_ca = Ca::generate("tsgw-test-front-proxy-ca").expect("generating the front-proxy CA");
        let names: Vec<String> =
            ["127.0.0.1", "localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "10.0.0.1"]
                .map(String::from)
                .to_vec();
        let serving = ca.issue_server(&names).expect("issuing the kube-apiserver serving certificate");
        let admin =
            ca.issue_client("tsgw-test-admin", &["system:masters"]).expect("issuing the admin client certificate");
        let proxy =
            front_proxy_ca.issue_client("front-proxy-client", &[]).expect("issuing the front-proxy client certificate");
        let sa = rcgen::KeyPair::generate().expect("generating the service-account key");
        let (serving_cert, serving_key) = write_pair(dir, "apiserver", &serving);
        let (admin_cert, admin_key) = write_pair(dir, "admin", &admin);
        let (proxy_client_cert, proxy_client_key) = write_pair(dir, "front-proxy-client", &proxy);
        let files = PkiFiles {
            ca: write(dir, "ca.crt", &ca.pair().cert_pem),
            serving_cert,
            serving_key,
            admin_cert,
            admin_key,
            front_proxy_ca: write(dir, "front-proxy-ca.crt", &front_proxy_ca.pair().cert_pem),
            proxy_client_cert,
            proxy_client_key,
            sa_public: write(dir, "sa.pub", &sa.public_key_pem()),
            sa_private: write(dir, "sa.key", &sa.serialize_pem()),
        };
        (Pki { ca, front_proxy_ca }, files)
    }
}

/// etcd, kube-apiserver and optionally kube-controller-manager, on loopback.
pub struct ControlPlane {
    /// Kubeconfig of the admin user (group system:masters).
    pub kubeconfig: PathBuf,
    /// `https://127.0.0.1:PORT`.
    pub server: String,
    /// etcd's client URL, `http://127.0.0.1:PORT` (for an aggregated API server beside kube-apiserver).
    pub etcd_url: String,
    pub pki: Pki,
    pub files: PkiFiles,
    // Dropped in reverse order of start: the controller manager, the apiserver, then etcd.
    processes: Vec<Process>,
    // Last: the directory outlives the processes writing into it.
    dir: tempfile::TempDir,
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        while let Some(p) = self.processes.pop() {
            drop(p);
        }
    }
}

impl ControlPlane {
    /// Starts etcd and kube-apiserver and waits until the apiserver's `/readyz` passes.
    pub fn start() -> ControlPlane {
        let etcd_bin = binary("etcd", "ETCD_VERSION");
        let apiserver_bin = binary("kube-apiserver", "KUBERNETES_VERSION");
        let dir = tempfile::Builder::new()
            .prefix("tsgw-cluster-")
            .tempdir()
            .expect("creating the cluster's temporary directory");
        let (pki, files) = Pki::generate(dir.path());
        let started = Instant::now();
        let mut cp = ControlPlane {
            kubeconfig: PathBuf::new(),
            server: String::new(),
            etcd_url: String::new(),
            pki,
            files,
            processes: Vec::new(),
            dir,
        };
        for attempt in 1..=3 {
            // Stops what the last attempt started (etcd last, as a drop would), and its data.
            while cp.processes.pop().is_some() {}
            let _ = std::fs::remove_dir_all(cp.dir.path().join("etcd"));
            let (etcd, etcd_url) = start_etcd(&etcd_bin, cp.dir.path());
            let port = free_port();
            let apiserver = start_apiserver(&apiserver_bin, cp.dir.path(), &cp.files, &etcd_url, port);
            cp.server = format!("https://127.0.0.1:{port}");
            cp.kubeconfig = write_kubeconfig(cp.dir.path(), "kubeconfig", &cp.server, &cp.files);
            cp.etcd_url = etcd_url;
            cp.processes = vec![etcd, apiserver];
            match cp.wait_ready() {
                None => break,
                Some(log) if attempt < 3 => eprintln!("a port was taken before it was bound; starting again:\n{log}"),
                Some(log) => panic!("a port was taken before it was bound, three times:\n{log}"),
            }
        }
        eprintln!("control plane at {} ready in {:.1}s", cp.server, started.elapsed().as_secs_f64());
        cp
    }

    /// The directory holding certificates, kubeconfig and logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A kubectl command against this control plane as the admin user.
    pub fn kubectl(&self) -> Command {
        let mut cmd = Command::new(kubectl_binary());
        cmd.arg("--kubeconfig").arg(&self.kubeconfig).arg("--cache-dir").arg(self.dir.path().join("kubectl-cache"));
        cmd
    }

    /// Runs kubectl with `args` (and `stdin`, when given) and returns its output.
    pub fn kubectl_output(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut cmd = self.kubectl();
        cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
        cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("running {}: {e}", kubectl_binary().display()));
        if let Some(text) = stdin {
            use std::io::Write;
            let mut pipe = child.stdin.take().unwrap_or_else(|| panic!("no stdin"));
            pipe.write_all(text.as_bytes()).expect("writing kubectl's stdin");
        }
        child.wait_with_output().unwrap_or_else(|e| panic!("kubectl {args:?}: {e}"))
    }

    /// Runs kubectl and returns stdout; panics with stderr when it fails.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl_output(args, None);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "kubectl {args:?} failed:\n{}\n{stdout}", String::from_utf8_lossy(&out.stderr));
        stdout
    }

    /// Panics with the log of any component that has exited.
    pub fn assert_running(&mut self) {
        for p in &mut self.processes {
            p.assert_running();
        }
    }

    /// Waits for `/readyz`; `Some(log)` when a component lost its port before binding it (the
    /// caller starts again), a panic on any other failure.
    fn wait_ready(&mut self) -> Option<String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(log) = self.processes.iter_mut().find_map(Process::lost_its_port) {
                return Some(log);
            }
            self.assert_running();
            let out = self.kubectl_output(&["get", "--raw", "/readyz"], None);
            if out.status.success() {
                return None;
            }
            if Instant::now() > deadline {
                let log = self.processes.last().map(Process::log_tail).unwrap_or_default();
                panic!("kube-apiserver not ready after {READY_TIMEOUT:?}:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Starts kube-controller-manager (garbage collection, ServiceAccounts and their tokens, ...)
    /// and waits until it works: the `default` ServiceAccount of namespace `default` exists.
    pub fn start_controller_manager(&mut self) {
        let bin = binary("kube-controller-manager", "KUBERNETES_VERSION");
        let f = &self.files;
        let mut cmd = Command::new(bin);
        cmd.arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .args(["--bind-address=127.0.0.1", "--secure-port=0", "--leader-elect=false"])
            .arg("--controllers=*,-nodeipam,-nodelifecycle,-cloud-node-lifecycle,-service-lb-controller")
            .arg(format!("--service-account-private-key-file={}", f.sa_private.display()))
            .arg(format!("--root-ca-file={}", f.ca.display()))
            .arg("--use-service-account-credentials=false");
        let log = self.dir.path().join("kube-controller-manager.log");
        self.processes.push(Process::spawn("kube-controller-manager", cmd, log));
        self.wait_for(
            "the default ServiceAccount (made by kube-controller-manager)",
            &["get", "serviceaccount", "default", "-n", "default"],
        );
    }

    /// Waits until `kubectl args` succeeds.
    pub fn wait_for(&mut self, what: &str, args: &[&str]) {
        let deadline = Instant::now() + READY_TIMEOUT;
        while !self.kubectl_output(args, None).status.success() {
            self.assert_running();
            let last = self.processes.last().map(Process::log_tail).unwrap_or_default();
            assert!(Instant::now() < deadline, "no {what} after {READY_TIMEOUT:?}:\n{last}");
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Waits until every CRD in `names` is Established. Polled rather than `kubectl wait`, which
    /// fails outright ("accessor error: <nil>") when it reads a CRD before it has any conditions.
    pub fn wait_established(&self, names: &[&str]) {
        let deadline = Instant::now() + READY_TIMEOUT;
        for name in names {
            let jsonpath = r#"jsonpath={.status.conditions[?(@.type=="Established")].status}"#;
            loop {
                let out = self.kubectl_output(&["get", "crd", name, "-o", jsonpath], None);
                if String::from_utf8_lossy(&out.stdout).trim() == "True" {
                    break;
                }
                assert!(Instant::now() < deadline, "CRD {name} not Established after {READY_TIMEOUT:?}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    /// kube-apiserver's audit events so far (`--audit-log-path`, level Metadata, one per
    /// answered request).
    pub fn audit_events(&self) -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(self.dir.path().join("audit.log")).unwrap_or_default();
        text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
    }

    /// The log of component `name` (e.g. "kube-apiserver").
    pub fn log(&self, name: &str) -> String {
        self.processes.iter().find(|p| p.name == name).map(Process::log).unwrap_or_default()
    }
}

fn start_etcd(bin: &Path, dir: &Path) -> (Process, String) {
    let [client, peer] = free_ports();
    let client_url = format!("http://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let mut cmd = Command::new(bin);
    cmd.arg(format!("--data-dir={}", dir.join("etcd").display()))
        .arg("--name=tsgw-test")
        .arg(format!("--listen-client-urls={client_url}"))
        .arg(format!("--advertise-client-urls={client_url}"))
        .arg(format!("--listen-peer-urls={peer_url}"))
        .arg(format!("--initial-advertise-peer-urls={peer_url}"))
        .arg(format!("--initial-cluster=tsgw-test={peer_url}"))
        .args(["--unsafe-no-fsync", "--log-level=warn"]);
    (Process::spawn("etcd", cmd, dir.join("etcd.log")), client_url)
}

/// Every request's metadata (who, user agent, verb, object) once answered, one JSON line each.
const AUDIT_POLICY: &str = r#"{"apiVersion": "audit.k8s.io/v1", "kind": "Policy",
 "omitStages": ["RequestReceived", "ResponseStarted"], "rules": [{"level": "Metadata"}]}"#;

fn start_apiserver(bin: &Path, dir: &Path, f: &PkiFiles, etcd_url: &str, port: u16) -> Process {
    let file = |flag: &str, p: &Path| format!("--{flag}={}", p.display());
    let policy = write(dir, "audit-policy.json", AUDIT_POLICY);
    let mut cmd = Command::new(bin);
    cmd.arg(format!("--etcd-servers={etcd_url}"))
        .args(["--bind-address=127.0.0.1", "--advertise-address=127.0.0.1"])
        .arg(format!("--secure-port={port}"))
        .arg(file("cert-dir", &dir.join("apiserver-certs")))
        .arg(file("tls-cert-file", &f.serving_cert))
        .arg(file("tls-private-key-file", &f.serving_key))
        .arg(file("client-ca-file", &f.ca))
        .args(["--authorization-mode=RBAC", "--enable-aggregator-routing=false"])
        .arg(file("service-account-key-file", &f.sa_public))
        .arg(file("service-account-signing-key-file", &f.sa_private))
        .arg("--service-account-issuer=https://kubernetes.default.svc.cluster.local")
        .arg("--service-cluster-ip-range=10.0.0.0/24")
        .arg(file("requestheader-client-ca-file", &f.front_proxy_ca))
        .args(["--requestheader-allowed-names=front-proxy-client", "--requestheader-username-headers=X-Remote-User"])
        .args(["--requestheader-group-headers=X-Remote-Group", "--requestheader-extra-headers-prefix=X-Remote-Extra-"])
        .arg(file("proxy-client-cert-file", &f.proxy_client_cert))
        .arg(file("proxy-client-key-file", &f.proxy_client_key))
        .arg(file("audit-policy-file", &policy))
        .arg(file("audit-log-path", &dir.join("audit.log")))
        .args(["--audit-log-mode=blocking", "--allow-privileged=true", "--profiling=false", "--v=1"]);
    Process::spawn("kube-apiserver", cmd, dir.join("kube-apiserver.log"))
}

/// Writes a kubeconfig for the admin user (JSON, which kubeconfig loaders read as YAML).
fn write_kubeconfig(dir: &Path, name: &str, server: &str, f: &PkiFiles) -> PathBuf {
    let config = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "test", "cluster": {"server": server, "certificate-authority": f.ca}}],
        "users": [{"name": "admin", "user": {"client-certificate": f.admin_cert, "client-key": f.admin_key}}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "admin", "namespace": "default"}}],
        "current-context": "test",
    });
    write(dir, name, &serde_json::to_string_pretty(&config).expect("serializing the kubeconfig"))
}

//! Local mode: run every face without a cluster. Objects come from a folder of manifests that is
//! re-read when it changes; certificates (CA, serving, admin client) and a kubeconfig for
//! `kubectl` are created in a state directory and reused on the next start.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use tokio_util::sync::CancellationToken;

use crate::cache::Cache;
use crate::core::routes::RouteKind;
use crate::core::{Kind, ObjectKey, Resource};
use crate::manifest::{self, LastGood, Severity};
use crate::pki::{Ca, CertPair};

/// Certificates of a local-mode server.
#[derive(Clone, Debug)]
pub struct LocalPki {
    /// The CA that signs both the serving and the client certificate.
    pub ca: CertPair,
    /// Serving certificate (SANs localhost, 127.0.0.1, ::1 and any extra).
    pub serving: CertPair,
    /// Admin client certificate (CN=admin, O=system:masters) used by the kubeconfig.
    pub client: CertPair,
}

/// Errors preparing local mode.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    /// Filesystem.
    #[error("{path}: {source}")]
    Io {
        /// Path.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// Certificates.
    #[error(transparent)]
    Pki(#[from] crate::pki::PkiError),
    /// Kubeconfig serialization.
    #[error("writing kubeconfig: {0}")]
    Kubeconfig(String),
    /// Another local-mode server holds the state directory.
    #[error(
        "another `serve --local` is using the state directory {} ({holder}): stop it, or give this one \
         its own with --state-dir DIR", state_dir.display()
    )]
    Busy {
        /// The directory.
        state_dir: PathBuf,
        /// What the lock file says of its holder.
        holder: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> LocalError + '_ {
    move |source| LocalError::Io { path: path.to_path_buf(), source }
}

fn read_pair(dir: &Path, name: &str) -> Option<CertPair> {
    let cert_pem = std::fs::read_to_string(dir.join(format!("{name}.crt"))).ok()?;
    let key_pem = std::fs::read_to_string(dir.join(format!("{name}.key"))).ok()?;
    Some(CertPair { cert_pem, key_pem })
}

fn write_private(path: &Path, content: &str) -> Result<(), LocalError> {
    std::fs::write(path, content).map_err(io(path))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io(path))?;
    }
    Ok(())
}

fn write_pair(dir: &Path, name: &str, pair: &CertPair) -> Result<(), LocalError> {
    let cert = dir.join(format!("{name}.crt"));
    std::fs::write(&cert, &pair.cert_pem).map_err(io(&cert))?;
    write_private(&dir.join(format!("{name}.key")), &pair.key_pem)
}

/// A state directory held by this server: a second local-mode server on the same directory would
/// rewrite its kubeconfig to another port, so it refuses to start instead. Released on drop (and
/// by the kernel when the process ends, however it ends).
#[derive(Debug)]
pub struct StateLock {
    _file: std::fs::File,
}

/// Takes the state directory for this process, creating it; `owner` (e.g. the listen address) is
/// written into the lock file so a second server can say which one holds it.
pub fn lock_state_dir(state_dir: &Path, owner: &str) -> Result<StateLock, LocalError> {
    use std::io::Write;
    std::fs::create_dir_all(state_dir).map_err(io(state_dir))?;
    let path = state_dir.join("lock");
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io(&path))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let holder = std::fs::read_to_string(&path).unwrap_or_default();
            return Err(LocalError::Busy { state_dir: state_dir.to_path_buf(), holder: holder.trim().to_string() });
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(io(&path)(e)),
    }
    file.set_len(0).map_err(io(&path))?;
    writeln!(file, "pid {} serving {owner}", std::process::id()).map_err(io(&path))?;
    Ok(StateLock { _file: file })
}

/// Loads the state directory's certificates, creating what is missing. The serving certificate is
/// re-issued when the requested SANs change (recorded in `sans.txt`).
pub fn ensure_pki(state_dir: &Path, extra_sans: &[String]) -> Result<LocalPki, LocalError> {
    std::fs::create_dir_all(state_dir).map_err(io(state_dir))?;
    let mut sans: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
    sans.extend(extra_sans.iter().cloned());
    let sans_file = state_dir.join("sans.txt");
    let sans_text = sans.join("\n");
    let (ca, fresh_ca) = match read_pair(state_dir, "ca").map(Ca::from_pem) {
        Some(Ok(ca)) => (ca, false),
        _ => {
            let ca = Ca::generate("tailscale-gateway local CA")?;
            write_pair(state_dir, "ca", ca.pair())?;
            (ca, true)
        }
    };
    let same_sans = std::fs::read_to_string(&sans_file).is_ok_and(|s| s == sans_text);
    let serving = match read_pair(state_dir, "tls") {
        Some(p) if !fresh_ca && same_sans => p,
        _ => {
            let p = ca.issue_server(&sans)?;
            write_pair(state_dir, "tls", &p)?;
            std::fs::write(&sans_file, &sans_text).map_err(io(&sans_file))?;
            p
        }
    };
    let client = match read_pair(state_dir, "client") {
        Some(p) if !fresh_ca => p,
        _ => {
            let p = ca.issue_client("admin", &["system:masters"])?;
            write_pair(state_dir, "client", &p)?;
            p
        }
    };
    Ok(LocalPki { ca: ca.pair().clone(), serving, client })
}

/// Writes `kubeconfig` into the state directory: cluster at `server`, admin client certificate.
pub fn write_kubeconfig(state_dir: &Path, server: &str, pki: &LocalPki) -> Result<PathBuf, LocalError> {
    use base64::Engine;
    use kube::config::{AuthInfo, Cluster, Context, Kubeconfig, NamedAuthInfo, NamedCluster, NamedContext};
    const CLUSTER: &str = "tailscale-gateway-local";
    const USER: &str = "tailscale-gateway-admin";
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let config = Kubeconfig {
        api_version: Some("v1".into()),
        kind: Some("Config".into()),
        clusters: vec![NamedCluster {
            name: CLUSTER.into(),
            cluster: Some(Cluster {
                server: Some(server.into()),
                certificate_authority_data: Some(b64(&pki.ca.cert_pem)),
                ..Cluster::default()
            }),
            ..NamedCluster::default()
        }],
        auth_infos: vec![NamedAuthInfo {
            name: USER.into(),
            auth_info: Some(AuthInfo {
                client_certificate_data: Some(b64(&pki.client.cert_pem)),
                client_key_data: Some(b64(&pki.client.key_pem).into()),
                ..AuthInfo::default()
            }),
            ..NamedAuthInfo::default()
        }],
        contexts: vec![NamedContext {
            name: CLUSTER.into(),
            context: Some(Context {
                cluster: CLUSTER.into(),
                user: Some(USER.into()),
                namespace: Some("default".into()),
                ..Context::default()
            }),
            ..NamedContext::default()
        }],
        current_context: Some(CLUSTER.into()),
        ..Kubeconfig::default()
    };
    let text = serde_saphyr::to_string(&config).map_err(|e| LocalError::Kubeconfig(e.to_string()))?;
    let path = state_dir.join("kubeconfig");
    write_private(&path, &text)?;
    Ok(path)
}

/// Summary of one load of the local folder.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LoadSummary {
    /// Objects loaded into the cache.
    pub objects: usize,
    /// Documents skipped because they failed to parse or validate.
    pub rejected: usize,
    /// Problems logged by this load: those the previous load did not have.
    pub reported: usize,
}

/// A folder of manifests served in local mode, with what earlier loads of it left: the last
/// valid version of every document, and when each object was first seen.
#[derive(Debug)]
pub struct LocalDir {
    dir: PathBuf,
    last_good: LastGood,
    first_seen: HashMap<(Kind, ObjectKey), Time>,
    /// Problems of the last load, so a reload logs only what is new.
    reported: BTreeSet<manifest::Problem>,
}

impl LocalDir {
    /// A folder not loaded yet.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into(), last_good: LastGood::new(), first_seen: HashMap::new(), reported: BTreeSet::new() }
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Loads the folder into the cache, replacing what an earlier load put there. Bad documents
    /// are logged with file and document index; one that had a valid version before keeps it
    /// (as a cluster keeps an object whose update it rejects), the others are skipped. An
    /// object's `creationTimestamp`, unless its manifest sets one, is when this server first saw
    /// it, so AGE counts from then and an edit elsewhere in its file changes nothing about it.
    pub fn load(&mut self, cache: &Cache) -> LoadSummary {
        self.load_at(cache, jiff::Timestamp::now())
    }

    fn load_at(&mut self, cache: &Cache, now: jiff::Timestamp) -> LoadSummary {
        let loaded = manifest::load_keeping(std::slice::from_ref(&self.dir), "default", &self.last_good);
        let mut summary = LoadSummary::default();
        let mut unchanged = 0;
        for p in &loaded.problems {
            if p.severity == Severity::Error {
                summary.rejected += 1;
            }
            // Said once: a reload repeats only what changed.
            if self.reported.contains(p) {
                unchanged += 1;
                continue;
            }
            summary.reported += 1;
            let (file, document) = (p.source.path.display(), p.source.document);
            // The line of the problem when known, else where the document starts.
            let line = p.at.map_or(p.source.line, |(line, _)| line);
            match p.severity {
                Severity::Error => tracing::warn!(%file, line, document, error = %p.message, "rejected document"),
                Severity::Warning => {
                    tracing::info!(%file, line, document, warning = %p.message, "document accepted with a warning")
                }
            }
        }
        if unchanged > 0 {
            tracing::debug!(unchanged, "problems reported before are still there");
        }
        self.reported = loaded.problems.iter().cloned().collect();
        let now = Time(now.round(jiff::Unit::Second).unwrap_or(now));
        let mut first_seen = HashMap::with_capacity(loaded.resources.len());
        let mut last_good = LastGood::new();
        let mut shared_slots = BTreeSet::new();
        let mut by_kind: Vec<Vec<Resource>> = vec![Vec::new(); Kind::ALL.len()];
        for (source, mut res) in loaded.resources {
            let id = (res.kind(), res.key());
            let seen = self.first_seen.get(&id).cloned().unwrap_or_else(|| now.clone());
            let meta = res.meta_mut();
            if meta.creation_timestamp.is_none() {
                meta.creation_timestamp = Some(seen.clone());
            }
            first_seen.insert(id, seen);
            // A `kind: List` document holds several objects in one slot: which one a broken
            // version was cannot be told, so such slots keep nothing.
            let slot = (source.path, source.document);
            if shared_slots.contains(&slot) || last_good.contains_key(&slot) {
                last_good.remove(&slot);
                shared_slots.insert(slot);
            } else {
                last_good.insert(slot, res.clone());
            }
            if let Some(i) = Kind::ALL.iter().position(|k| *k == res.kind()) {
                by_kind[i].push(res);
            }
        }
        // Objects no longer in any manifest are forgotten: back later, they are new again.
        self.first_seen = first_seen;
        self.last_good = last_good;
        for (kind, objects) in Kind::ALL.into_iter().zip(by_kind) {
            summary.objects += objects.len();
            cache.reset(kind, objects);
        }
        for kind in RouteKind::ALL {
            let routes: Vec<serde_json::Value> =
                loaded.routes.iter().filter(|(k, _)| *k == kind).map(|(_, r)| r.clone()).collect();
            cache.reset_routes(kind, &routes);
        }
        summary
    }
}

/// A cheap fingerprint of a folder: every manifest's path, size and modification time.
fn fingerprint(dir: &Path) -> Vec<(PathBuf, u64, Option<SystemTime>)> {
    manifest::collect_files(&[dir.to_path_buf()])
        .files
        .into_iter()
        .map(|p| {
            let meta = std::fs::metadata(&p).ok();
            let len = meta.as_ref().map_or(0, |m| m.len());
            let mtime = meta.and_then(|m| m.modified().ok());
            (p, len, mtime)
        })
        .collect()
}

/// Reloads `dir` into the cache whenever a manifest is added, removed or changed.
pub async fn watch_dir(cache: Cache, mut dir: LocalDir, every: Duration, stop: CancellationToken) {
    let mut last = fingerprint(dir.path());
    crate::poll::every(every, &stop, || {
        let now = fingerprint(dir.path());
        if now != last {
            let summary = dir.load(&cache);
            tracing::info!(dir = %dir.path().display(), objects = summary.objects, rejected = summary.rejected, "reloaded local manifests");
            last = now;
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_in_the_folder_give_backend_ports_and_weights() {
        let dir = tempfile::tempdir().expect("temp dir");
        let route = |port: u16| {
            format!(
                "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: web}}\nspec:\n  rules:\n  \
                 - backendRefs: [{{group: gateway.tailscale.com, kind: TailscaleServices, name: web, port: {port}, weight: 2}}]\n"
            )
        };
        std::fs::write(dir.path().join("route.yaml"), route(443)).expect("writing");
        let cache = Cache::default();
        let mut local = LocalDir::new(dir.path());
        local.load(&cache);
        let port = |cache: &Cache| {
            cache.read().rule_backends("httproute/default/web/rule/0").map(|r| (r[0].port, r[0].weight))
        };
        assert_eq!(port(&cache), Some((Some(443), 2)), "namespace defaulted, port and weight read");
        std::fs::write(dir.path().join("route.yaml"), route(80)).expect("writing");
        local.load(&cache);
        assert_eq!(port(&cache), Some((Some(80), 2)), "an edit replaces the rule");
        std::fs::remove_file(dir.path().join("route.yaml")).expect("removing");
        local.load(&cache);
        assert_eq!(port(&cache), None, "a removed route is forgotten");
    }

    #[test]
    fn a_second_server_on_the_same_state_dir_is_refused_with_who_holds_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let first = lock_state_dir(dir.path(), "https://127.0.0.1:8443").expect("the first server takes the directory");
        let second = lock_state_dir(dir.path(), "https://127.0.0.1:9443").expect_err("the second is refused");
        let text = second.to_string();
        assert!(text.contains("another `serve --local` is using the state directory"), "{text}");
        assert!(text.contains("serving https://127.0.0.1:8443") && text.contains("--state-dir"), "{text}");
        drop(first);
        lock_state_dir(dir.path(), "https://127.0.0.1:9443").expect("free again once the first one stops");
    }

    const TAILNET: &str = "apiVersion: gateway.tailscale.com/v1alpha1\nkind: TailscaleTailnet\nmetadata: {name: corp}\nspec: {oauthSecretRef: {name: oauth}}\n";

    fn services(name: &str, vip: &str, strategy: &str) -> String {
        format!(
            "apiVersion: gateway.tailscale.com/v1alpha1\nkind: TailscaleServices\nmetadata: {{name: {name}}}\nspec:\n  selector: {{matchLabels: {{app: web}}}}\n  vipService: {{name: \"svc:{vip}\", ports: [\"tcp:443\"]}}\n  loadBalancing: {{strategy: {strategy}}}\n"
        )
    }

    fn at(seconds: i64) -> jiff::Timestamp {
        jiff::Timestamp::from_second(1_800_000_000 + seconds).expect("building the timestamp")
    }

    fn created(cache: &Cache, name: &str) -> Option<jiff::Timestamp> {
        let idx = cache.read();
        idx.services(&ObjectKey::new("default", name))?.metadata.creation_timestamp.as_ref().map(|t| t.0)
    }

    fn strategy(cache: &Cache, name: &str) -> Option<String> {
        let idx = cache.read();
        idx.services(&ObjectKey::new("default", name))?.spec.load_balancing.as_ref()?.strategy.clone()
    }

    #[cfg(unix)]
    #[test]
    fn fifos_devices_and_huge_files_are_not_read_and_the_rest_loads() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("svc.yaml"), services("web", "web", "round-robin")).expect("writing");
        let fifo = dir.path().join("x.yaml");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status().expect("running mkfifo");
        assert!(made.success());
        std::os::unix::fs::symlink("/dev/zero", dir.path().join("z.yaml")).expect("a link to /dev/zero");
        let huge = std::fs::File::create(dir.path().join("huge.yaml")).expect("creating");
        huge.set_len(manifest::MAX_MANIFEST_BYTES + 1).expect("a sparse file over the limit");
        let cache = Cache::default();
        let mut local = LocalDir::new(dir.path());
        // On a thread, so a regression (blocking on the FIFO) fails the test instead of hanging it.
        let (tx, rx) = std::sync::mpsc::channel();
        let loader = cache.clone();
        std::thread::spawn(move || {
            let summary = local.load(&loader);
            let _ = tx.send(summary);
        });
        let summary = rx.recv_timeout(Duration::from_secs(10)).expect("the load finishes: a FIFO is never opened");
        assert_eq!((summary.objects, summary.rejected), (1, 1), "web loads; the huge file is refused");
        let loaded = manifest::load(&[dir.path().to_path_buf()], "default");
        let said: Vec<String> = loaded.problems.iter().map(ToString::to_string).collect();
        for want in [
            "x.yaml: warning: not a regular file (a FIFO): skipped",
            "z.yaml: warning: not a regular file (a device): skipped",
            "huge.yaml: error: larger than the limit",
        ] {
            assert!(said.iter().any(|p| p.contains(want)), "{want:?} in {said:?}");
        }
    }

    #[cfg(unix)]
    #[test]
    fn a_failed_read_keeps_the_last_valid_objects_and_their_claims() {
        let dir = tempfile::tempdir().expect("temp dir");
        let folder = dir.path().join("manifests");
        std::fs::create_dir_all(folder.join("sub")).expect("creating folders");
        let real = dir.path().join("real.yaml");
        std::fs::write(&real, services("linked", "linked", "round-robin")).expect("writing");
        std::os::unix::fs::symlink(&real, folder.join("link.yaml")).expect("a link");
        std::fs::write(folder.join("sub/web.yaml"), services("web", "web", "round-robin")).expect("writing");
        let cache = Cache::default();
        let mut local = LocalDir::new(&folder);
        assert_eq!(local.load(&cache).objects, 2);
        let claims_web = |cache: &Cache| cache.read().services(&ObjectKey::new("default", "web")).is_some();

        // The link dangles: its object stays, and so does its VIP claim against a new copy.
        std::fs::remove_file(&real).expect("removing the link's target");
        std::fs::write(folder.join("copy.yaml"), services("copy", "linked", "round-robin")).expect("writing");
        let summary = local.load(&cache);
        assert_eq!(summary.objects, 2, "linked and web stay");
        assert!(cache.read().services(&ObjectKey::new("default", "linked")).is_some());
        assert!(cache.read().services(&ObjectKey::new("default", "copy")).is_none(), "the duplicate VIP is refused");
        let loaded = manifest::load_keeping(std::slice::from_ref(&folder), "default", &local.last_good);
        assert!(
            loaded
                .problems
                .iter()
                .any(|p| p.to_string().contains("link.yaml: error: no such file or directory; still serving")),
            "{:?}",
            loaded.problems
        );

        // A subfolder that cannot be listed keeps what was under it.
        std::fs::remove_file(folder.join("copy.yaml")).expect("removing the copy");
        let sub = folder.join("sub");
        std::fs::set_permissions(&sub, std::os::unix::fs::PermissionsExt::from_mode(0o000)).expect("chmod");
        let unreadable = std::fs::read_dir(&sub).is_err(); // root reads it anyway
        local.load(&cache);
        std::fs::set_permissions(&sub, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod back");
        assert!(claims_web(&cache), "web stays (unreadable folder: {unreadable})");

        // The whole folder briefly gone: everything is kept until it is back.
        let moved = dir.path().join("moved");
        std::fs::rename(&folder, &moved).expect("moving the folder away");
        let summary = local.load(&cache);
        std::fs::rename(&moved, &folder).expect("moving it back");
        assert_eq!(summary.objects, 2, "nothing dropped while the folder is away");
        assert!(claims_web(&cache));
    }

    #[test]
    fn objects_are_as_old_as_this_server_has_known_them() {
        let dir = tempfile::tempdir().expect("creating a temporary directory");
        let write = |text: String| std::fs::write(dir.path().join("svc.yaml"), text).expect("writing svc.yaml");
        write(format!("{}---\n{TAILNET}", services("a", "a", "round-robin")));
        let cache = Cache::default();
        let mut local = LocalDir::new(dir.path());
        local.load_at(&cache, at(0));
        assert_eq!(created(&cache, "a"), Some(at(0)));

        // An edit of `a`, and a new object `b` in the same file.
        write(format!("{}---\n{}", services("a", "a", "least-request"), services("b", "b", "round-robin")));
        let before = cache.read().revision();
        local.load_at(&cache, at(60));
        assert!(cache.read().revision() > before);
        assert_eq!(strategy(&cache, "a").as_deref(), Some("least-request"));
        assert_eq!((created(&cache, "a"), created(&cache, "b")), (Some(at(0)), Some(at(60))));

        // A reload with nothing changed changes nothing, not even the cache's revision.
        let before = cache.read().revision();
        local.load_at(&cache, at(120));
        assert_eq!(cache.read().revision(), before);

        // Gone and back: new again.
        write(services("b", "b", "round-robin"));
        local.load_at(&cache, at(180));
        assert_eq!(created(&cache, "a"), None);
        write(format!("{}---\n{}", services("a", "a", "least-request"), services("b", "b", "round-robin")));
        local.load_at(&cache, at(240));
        assert_eq!((created(&cache, "a"), created(&cache, "b")), (Some(at(240)), Some(at(60))));
    }

    #[test]
    fn a_document_that_turns_bad_keeps_its_last_valid_version_and_its_claims() {
        let dir = tempfile::tempdir().expect("creating a temporary directory");
        let main = dir.path().join("services.yaml");
        std::fs::create_dir_all(dir.path().join("more")).expect("creating the more directory");
        std::fs::write(&main, services("web", "web", "round-robin")).expect("writing services.yaml");
        // A deeper file claiming the same VIP name: rejected while `web` holds it.
        std::fs::write(dir.path().join("more/copy.yaml"), services("copy", "web", "round-robin"))
            .expect("writing more/copy.yaml");
        let cache = Cache::default();
        let mut local = LocalDir::new(dir.path());
        assert_eq!(local.load(&cache), LoadSummary { objects: 1, rejected: 1, reported: 1 });

        for bad in [
            services("web", "web", "round-robn"),                     // fails a rule
            services("web", "web", "[round-robin]"),                  // fails its type
            "kind: TailscaleServices\nmetadata: {name: web\n".into(), // fails YAML
        ] {
            std::fs::write(&main, bad).expect("writing a bad services.yaml");
            let summary = local.load(&cache);
            assert_eq!(
                (summary.objects, summary.rejected, summary.reported),
                (1, 2, 1),
                "the bad update and the copy are rejected; only the new problem is logged"
            );
            assert_eq!(strategy(&cache, "web").as_deref(), Some("round-robin"), "the last valid version is served");
            assert!(cache.read().services(&ObjectKey::new("default", "copy")).is_none(), "and keeps its VIP name");
            let loaded = manifest::load_keeping(&[dir.path().to_path_buf()], "default", &local.last_good);
            assert!(
                loaded.problems.iter().any(|p| p.message.ends_with("still serving its last valid version")),
                "{:?}",
                loaded.problems
            );
        }

        // Removing the document is a deletion: the copy may have the name now.
        std::fs::write(&main, TAILNET).expect("replacing services.yaml with the tailnet only");
        assert_eq!(local.load(&cache), LoadSummary { objects: 2, rejected: 0, reported: 0 });
        assert!(cache.read().services(&ObjectKey::new("default", "web")).is_none());
        assert_eq!(strategy(&cache, "copy").as_deref(), Some("round-robin"));
    }

    #[test]
    fn a_kept_version_is_always_the_same_object_and_never_shadows_a_fresh_one() {
        let dir = tempfile::tempdir().expect("creating a temporary directory");
        let file = dir.path().join("s.yaml");
        let write = |path: &Path, text: String| std::fs::write(path, text).expect("writing a manifest");
        let names = |cache: &Cache| {
            let idx = cache.read();
            idx.all_services().map(|(k, _)| k.name.clone()).collect::<Vec<_>>()
        };
        let a_and_b = || format!("{}---\n{}", services("a", "a", "round-robin"), services("b", "b", "round-robin"));
        write(&file, a_and_b());
        let cache = Cache::default();
        let mut local = LocalDir::new(dir.path());
        local.load(&cache);
        assert_eq!(names(&cache), ["a", "b"]);

        // `a` removed, `b` moved up and misspelt: `a` is not served in `b`'s place.
        write(&file, services("b", "b", "round-robin").replace("selector:", "selectr:"));
        let summary = local.load(&cache);
        assert_eq!((summary.objects, summary.rejected), (0, 1));
        assert!(names(&cache).is_empty(), "{:?}", names(&cache));

        // A document whose YAML breaks while its object moved to another file: the fresh copy wins.
        write(&file, a_and_b());
        local.load(&cache);
        write(&file, format!("kind: [\n---\n{}", services("b", "b", "round-robin")));
        write(&dir.path().join("moved.yaml"), services("a", "a", "least-request"));
        let summary = local.load(&cache);
        assert_eq!((summary.objects, summary.rejected), (2, 1), "the YAML error only");
        assert_eq!(strategy(&cache, "a").as_deref(), Some("least-request"));

        // Several objects in one `kind: List` document: no guessing which one broke.
        std::fs::remove_file(dir.path().join("moved.yaml")).expect("removing moved.yaml");
        let item = |name: &str, strategy: &str| {
            serde_json::json!({"apiVersion": "gateway.tailscale.com/v1alpha1", "kind": "TailscaleServices",
                "metadata": {"name": name}, "spec": {"selector": {"matchLabels": {"app": "web"}},
                "vipService": {"name": format!("svc:{name}"), "ports": ["tcp:443"]}, "loadBalancing": {"strategy": strategy}}})
        };
        let list = |a: &str| serde_json::json!({"apiVersion": "v1", "kind": "List", "items": [item("a", a), item("b", "random")]});
        write(&file, list("round-robin").to_string());
        local.load(&cache);
        assert_eq!(names(&cache), ["a", "b"]);
        write(&file, list("round-robn").to_string());
        local.load(&cache);
        assert_eq!(names(&cache), ["b"], "the bad item is skipped; the good one is not mistaken for it");
        assert_eq!(strategy(&cache, "b").as_deref(), Some("random"));
    }

    #[test]
    fn without_a_valid_past_a_bad_document_is_only_skipped() {
        let dir = tempfile::tempdir().expect("creating a temporary directory");
        std::fs::write(dir.path().join("s.yaml"), services("web", "web", "round-robn")).expect("writing s.yaml");
        let cache = Cache::default();
        let mut local = LocalDir::new(dir.path());
        assert_eq!(local.load(&cache), LoadSummary { objects: 0, rejected: 1, reported: 1 });
        assert_eq!(local.load(&cache).reported, 0, "an unchanged problem is not logged again");
        let loaded = manifest::load_keeping(&[dir.path().to_path_buf()], "default", &local.last_good);
        assert!(loaded.problems.iter().all(|p| !p.message.contains("still serving")), "{:?}", loaded.problems);
    }
}

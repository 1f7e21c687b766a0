//! Local mode: run every face without a cluster. Objects come from a folder of manifests that is
//! re-read when it changes; certificates (CA, serving, admin client) and a kubeconfig for
//! `kubectl` are created in a state directory and reused on the next start.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use crate::cache::Cache;
use crate::core::{Kind, Resource};
use crate::manifest::{self, Severity};
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
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let config = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "tailscale-gateway-local", "cluster": {
            "server": server, "certificate-authority-data": b64(&pki.ca.cert_pem)}}],
        "users": [{"name": "tailscale-gateway-admin", "user": {
            "client-certificate-data": b64(&pki.client.cert_pem), "client-key-data": b64(&pki.client.key_pem)}}],
        "contexts": [{"name": "tailscale-gateway-local", "context": {
            "cluster": "tailscale-gateway-local", "user": "tailscale-gateway-admin", "namespace": "default"}}],
        "current-context": "tailscale-gateway-local",
        "preferences": {},
    });
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
}

/// Loads `dir` into the cache, replacing what an earlier load put there. Bad documents are
/// logged with file and document index and skipped.
pub fn load_dir(cache: &Cache, dir: &Path) -> LoadSummary {
    let loaded = manifest::load(&[dir.to_path_buf()], "default");
    let mut summary = LoadSummary::default();
    for p in &loaded.problems {
        match p.severity {
            Severity::Error => {
                summary.rejected += 1;
                tracing::warn!(file = %p.source.path.display(), document = p.source.document, message = %p.message, "skipped invalid document");
            }
            Severity::Warning => {
                tracing::info!(file = %p.source.path.display(), document = p.source.document, message = %p.message, "warning")
            }
        }
    }
    let mut by_kind: Vec<Vec<Resource>> = vec![Vec::new(); Kind::ALL.len()];
    for (source, mut res) in loaded.resources {
        let meta = res.meta_mut();
        if meta.creation_timestamp.is_none() {
            // Stable across reloads of an unchanged file, so AGE columns make sense.
            let modified = std::fs::metadata(&source.path).and_then(|m| m.modified()).unwrap_or(SystemTime::UNIX_EPOCH);
            meta.creation_timestamp = jiff::Timestamp::try_from(modified).ok().map(|t| {
                k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(t.round(jiff::Unit::Second).unwrap_or(t))
            });
        }
        if let Some(i) = Kind::ALL.iter().position(|k| *k == res.kind()) {
            by_kind[i].push(res);
        }
    }
    for (kind, objects) in Kind::ALL.into_iter().zip(by_kind) {
        summary.objects += objects.len();
        cache.reset(kind, objects);
    }
    summary
}

/// A cheap fingerprint of a folder: every manifest's path, size and modification time.
fn fingerprint(dir: &Path) -> Vec<(PathBuf, u64, Option<SystemTime>)> {
    manifest::collect_files(&[dir.to_path_buf()])
        .unwrap_or_default()
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
pub async fn watch_dir(cache: Cache, dir: PathBuf, every: Duration, stop: CancellationToken) {
    let mut last = fingerprint(&dir);
    crate::poll::every(every, &stop, || {
        let now = fingerprint(&dir);
        if now != last {
            let summary = load_dir(&cache, &dir);
            tracing::info!(dir = %dir.display(), objects = summary.objects, rejected = summary.rejected, "reloaded local manifests");
            last = now;
        }
    })
    .await;
}

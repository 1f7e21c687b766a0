//! What the reconciler generates for the Tailscale proxies, loaded by tailscale.com's own code:
//! every example's tailscaled config files through `ipn/conffile.Load` (the loader tailscaled runs,
//! unknown fields refused), and the proxy container's environment against containerboot's contract
//! (hack/control-plane/tsconfig-check). Ignored in plain `cargo test`: `hack/test.sh` builds the
//! checker with the pinned tailscale.com and runs these.

mod util;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// What `render examples/` prints.
fn rendered() -> Vec<Value> {
    let examples = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/examples"));
    let loaded = tailscale_gateway::manifest::load(&[examples], "default");
    assert!(!loaded.has_errors(), "{:?}", loaded.problems);
    let resources: Vec<_> = loaded.resources.into_iter().map(|(_, r)| r).collect();
    tailscale_gateway::render::render(&resources, &Default::default())
}

/// Runs the checker on files of `kind`; its exit status and output.
fn check(kind: &str, files: &[PathBuf]) -> (bool, String) {
    let checker = util::cluster::binary("tsconfig-check", "TAILSCALE_VERSION");
    let out = Command::new(checker).arg(kind).args(files).output().expect("running tsconfig-check");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("writing a file for the checker");
    path
}

#[test]
#[ignore = "needs hack/control-plane.sh's tsconfig-check: run hack/test.sh"]
fn every_generated_tailscaled_config_loads_with_tailscaleds_own_loader() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut files = Vec::new();
    for secret in rendered().iter().filter(|o| o["kind"] == "Secret") {
        for (key, text) in secret["stringData"].as_object().into_iter().flatten() {
            if key.ends_with(".hujson") {
                let name = format!("{}-{key}", secret["metadata"]["name"].as_str().unwrap_or_default());
                files.push(write(dir.path(), &name, text.as_str().unwrap_or_default()));
            }
        }
    }
    assert!(files.len() >= 5, "one config per replica of every example: {files:?}");
    let (ok, out) = check("tailscaled", &files);
    assert!(ok, "{out}");
    assert_eq!(out.lines().filter(|l| l.ends_with(": ok")).count(), files.len(), "{out}");
    // The loader is strict: a field tailscaled does not know is refused.
    let typo = write(dir.path(), "typo.hujson", r#"{"Version": "alpha0", "Hostname": "a", "AuthKye": "k"}"#);
    let (ok, out) = check("tailscaled", &[typo]);
    assert!(!ok && out.contains("AuthKye"), "{out}");
}

#[test]
#[ignore = "needs hack/control-plane.sh's tsconfig-check: run hack/test.sh"]
fn every_proxy_container_env_keeps_containerboots_contract() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut files = Vec::new();
    for sts in rendered().iter().filter(|o| o["kind"] == "StatefulSet") {
        for c in sts["spec"]["template"]["spec"]["containers"].as_array().into_iter().flatten() {
            let name = format!(
                "{}-{}.json",
                sts["metadata"]["name"].as_str().unwrap_or_default(),
                c["name"].as_str().unwrap_or_default()
            );
            files.push(write(dir.path(), &name, &c["env"].to_string()));
        }
    }
    assert!(files.len() >= 3, "{files:?}");
    let (ok, out) = check("env", &files);
    assert!(ok, "{out}");
    // And the contract is checked: an auth key in env next to the config dir is refused.
    let both = write(
        dir.path(),
        "both.json",
        r#"[{"name": "TS_EXPERIMENTAL_VERSIONED_CONFIG_DIR", "value": "/etc/tsconfig/p"},
            {"name": "TS_KUBE_SECRET", "value": "p"}, {"name": "TS_AUTHKEY", "value": "k"}]"#,
    );
    let (ok, out) = check("env", &[both]);
    assert!(!ok && out.contains("TS_AUTHKEY must not be set"), "{out}");
}

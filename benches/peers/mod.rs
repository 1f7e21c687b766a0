//! The benchmarks' peers: what users would run instead of ours, built from the Go module proxy by
//! `hack/bench-peers.sh` (which reuses the binaries cached in `~/.cache/tailscale-gateway/bin`).
//! A bench that cannot build its peer stops with the script's error: it never runs without it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// Builds (or reuses) the peer `name` (`controller-runtime-webhook`, `sample-apiserver`) and
/// returns its binary; panics when the build fails.
pub fn build(name: &str, version_key: &str) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    println!("==> hack/bench-peers.sh {name}");
    let status = Command::new("bash")
        .arg(root.join("hack/bench-peers.sh"))
        .arg(name)
        .status()
        .expect("running hack/bench-peers.sh (needs bash)");
    assert!(status.success(), "hack/bench-peers.sh {name} failed ({status}): the bench does not run without its peer");
    let versions = std::fs::read_to_string(root.join("hack/bench-peers/versions.env"))
        .expect("reading hack/bench-peers/versions.env");
    let version = versions
        .lines()
        .filter_map(|l| l.trim().split_once('='))
        .find(|(k, _)| *k == version_key)
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_else(|| panic!("hack/bench-peers/versions.env has no {version_key}"));
    let path = super::util::cluster::bin_dir().join(format!("{name}-{version}"));
    assert!(path.is_file(), "{} is missing after hack/bench-peers.sh", path.display());
    path
}

/// VmRSS and VmHWM of process `pid` ("self" for this one), in KiB.
pub fn memory(pid: &str) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

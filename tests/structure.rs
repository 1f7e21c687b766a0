//! The structure the compiler cannot see by itself: the pure core (`crates/core`) depends on no
//! runtime, HTTP, gRPC or Kubernetes client crate, so no I/O can creep into it.

use std::process::Command;

/// Crates that do I/O (or exist to): none may be a dependency of the core.
const IO_CRATES: &[&str] = &[
    "tokio",
    "tokio-util",
    "tokio-stream",
    "tokio-rustls",
    "hyper",
    "hyper-util",
    "axum",
    "tonic",
    "tonic-health",
    "reqwest",
    "kube",
    "kube-client",
    "kube-runtime",
    "rustls",
    "tower",
    "tracing",
];

#[test]
fn the_core_crate_depends_on_no_io_crate() {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--offline", "--locked", "--no-deps"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("running cargo metadata");
    assert!(out.status.success(), "cargo metadata failed: {}", String::from_utf8_lossy(&out.stderr));
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).expect("parsing cargo metadata's JSON");
    let core = meta["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == "tailscale-gateway-core")
        .expect("tailscale-gateway-core is a workspace member");
    let deps: Vec<&str> =
        core["dependencies"].as_array().into_iter().flatten().filter_map(|d| d["name"].as_str()).collect();
    assert!(deps.contains(&"kube-core"), "the core's dependencies as read: {deps:?}");
    let io: Vec<&&str> = deps.iter().filter(|d| IO_CRATES.contains(d)).collect();
    assert!(io.is_empty(), "the pure core depends on I/O crates {io:?}: move that code into a face");
}

//! The protobuf code under `src/` is generated from our `.proto` files and committed, so a build
//! needs neither `protoc` nor the sources of `envoy-types` (a plain `cargo build` on a fresh machine
//! downloads only what it compiles). This test generates it again and fails when the committed copy
//! is stale; `UPDATE_GENERATED=1 cargo test --test generated_protos` rewrites it.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Folders of the `envoy-types` source tree that hold import roots.
const ENVOY_INCLUDE_ROOTS: &[&str] = &[
    "proto/data-plane-api",
    "proto/xds",
    "proto/protoc-gen-validate",
    "proto/googleapis",
    "proto/cel-spec/proto",
    "proto/opentelemetry-proto",
    "proto/client_model",
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Where the `envoy-types` crate's sources are, as cargo reports them (tests have every
/// dependency downloaded, so `--offline` holds here).
fn envoy_types_dir() -> PathBuf {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--offline", "--locked", "--filter-platform", &host()])
        .current_dir(root())
        .output()
        .expect("running cargo metadata");
    assert!(out.status.success(), "cargo metadata failed: {}", String::from_utf8_lossy(&out.stderr));
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).expect("cargo metadata's JSON");
    let manifest = meta["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == "envoy-types")
        .and_then(|p| p["manifest_path"].as_str())
        .expect("envoy-types among the dependencies");
    Path::new(manifest).parent().expect("envoy-types' folder").to_path_buf()
}

/// The host's target triple (tests run on the host), as rustc reports it.
fn host() -> String {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let out = Command::new(rustc).arg("-vV").output().expect("running rustc -vV");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines().find_map(|l| l.strip_prefix("host: ")).expect("rustc -vV names the host").to_string()
}

/// Generates into a fresh folder and returns it.
fn generate() -> tempfile::TempDir {
    let out = tempfile::tempdir().expect("temp dir");
    let envoy = envoy_types_dir();
    let mut includes = vec![root().join("src/xds")];
    includes.extend(ENVOY_INCLUDE_ROOTS.iter().map(|r| envoy.join(r)).filter(|p| p.is_dir()));
    let fds = protox::Compiler::new(&includes)
        .expect("proto include roots")
        .include_imports(true)
        .include_source_info(true)
        .open_files(["proto/extension/context.proto", "proto/extension/service.proto"])
        .expect("compiling the extension protos")
        .file_descriptor_set();
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .out_dir(out.path())
        .extern_path(".envoy", "::envoy_types::pb::envoy")
        .extern_path(".xds", "::envoy_types::pb::xds")
        .extern_path(".udpa", "::envoy_types::pb::udpa")
        .extern_path(".validate", "::envoy_types::pb::validate")
        .compile_fds(fds)
        .expect("generating the extension code");
    let fds = protox::Compiler::new([root().join("src/aggregated/proto")])
        .expect("proto include root")
        .include_source_info(true)
        .open_files(["openapiv2.proto"])
        .expect("compiling openapiv2.proto")
        .file_descriptor_set();
    tonic_prost_build::configure()
        .build_server(false)
        .build_client(false)
        .out_dir(out.path())
        .compile_fds(fds)
        .expect("generating the OpenAPI v2 code");
    out
}

#[test]
fn committed_protobuf_code_matches_the_protos() {
    let fresh = generate();
    let pairs = [
        ("envoygateway.extension.rs", "src/xds/generated/envoygateway.extension.rs"),
        ("openapi.v2.rs", "src/aggregated/generated/openapi.v2.rs"),
    ];
    let update = std::env::var_os("UPDATE_GENERATED").is_some();
    let mut stale = Vec::new();
    for (generated, committed) in pairs {
        let want = std::fs::read_to_string(fresh.path().join(generated)).expect("generated file");
        let path = root().join(committed);
        if update {
            std::fs::write(&path, &want).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        } else if std::fs::read_to_string(&path).ok().as_deref() != Some(want.as_str()) {
            stale.push(committed);
        }
    }
    assert!(
        stale.is_empty(),
        "stale generated code: {stale:?}; run `UPDATE_GENERATED=1 cargo test --test generated_protos` and commit"
    );
}

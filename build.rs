//! Compiles the Envoy Gateway extension API (`src/xds/proto/extension/*.proto`) and our subset of
//! gnostic's OpenAPI v2 messages (`src/aggregated/proto/openapiv2.proto`) with `protox`, so no system
//! `protoc` is needed. Envoy's own messages are not generated here: they map to the `envoy-types`
//! crate, whose published sources also carry the `.proto` files we import.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Our protos, relative to [`PROTO_ROOT`] so that imports read `proto/extension/...` as upstream's do.
const PROTOS: &[&str] = &["proto/extension/context.proto", "proto/extension/service.proto"];
/// Include root of our protos.
const PROTO_ROOT: &str = "src/xds";

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

/// The OpenAPI v2 protobuf messages served on `/openapi/v2` (plain messages, no imports).
const OPENAPI_PROTO: &str = "openapiv2.proto";
/// Include root of [`OPENAPI_PROTO`].
const OPENAPI_PROTO_ROOT: &str = "src/aggregated/proto";

type BoxError = Box<dyn std::error::Error>;

/// Where the `envoy-types` crate's sources are: `ENVOY_TYPES_DIR` when set, else asked of cargo.
fn envoy_types_dir() -> Result<PathBuf, BoxError> {
    println!("cargo:rerun-if-env-changed=ENVOY_TYPES_DIR");
    if let Some(dir) = std::env::var_os("ENVOY_TYPES_DIR") {
        return Ok(PathBuf::from(dir));
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR").ok_or("CARGO_MANIFEST_DIR is not set")?;
    let target = std::env::var("TARGET")?;
    let out = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--offline", "--locked", "--filter-platform", &target])
        .current_dir(&manifest_dir)
        .output()?;
    if !out.status.success() {
        return Err(format!("cargo metadata failed: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let manifest = meta["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == "envoy-types")
        .and_then(|p| p["manifest_path"].as_str())
        .ok_or("envoy-types is not among the dependencies reported by cargo metadata")?;
    Ok(Path::new(manifest).parent().ok_or("envoy-types manifest has no parent folder")?.to_path_buf())
}

fn main() -> Result<(), BoxError> {
    for p in PROTOS {
        println!("cargo:rerun-if-changed={PROTO_ROOT}/{p}");
    }
    let envoy = envoy_types_dir()?;
    let mut includes: Vec<PathBuf> = vec![PathBuf::from(PROTO_ROOT)];
    includes.extend(ENVOY_INCLUDE_ROOTS.iter().map(|r| envoy.join(r)).filter(|p| p.is_dir()));
    let fds = protox::Compiler::new(&includes)?
        .include_imports(true)
        .include_source_info(true)
        .open_files(PROTOS)?
        .file_descriptor_set();
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .extern_path(".envoy", "::envoy_types::pb::envoy")
        .extern_path(".xds", "::envoy_types::pb::xds")
        .extern_path(".udpa", "::envoy_types::pb::udpa")
        .extern_path(".validate", "::envoy_types::pb::validate")
        .compile_fds(fds)?;

    println!("cargo:rerun-if-changed={OPENAPI_PROTO_ROOT}/{OPENAPI_PROTO}");
    let fds = protox::Compiler::new([OPENAPI_PROTO_ROOT])?
        .include_source_info(true)
        .open_files([OPENAPI_PROTO])?
        .file_descriptor_set();
    tonic_prost_build::configure().build_server(false).build_client(false).compile_fds(fds)?;
    Ok(())
}

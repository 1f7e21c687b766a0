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
    let schema = wire_schema(&fds);
    std::fs::write(out.path().join("wire_schema.rs"), schema).expect("writing wire_schema.rs");
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
        ("wire_schema.rs", "src/xds/generated/wire_schema.rs"),
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

/// The extension's request messages, whose decoded size `src/xds/limits.rs` estimates.
const REQUESTS: &[&str] = &[
    "PostTranslateModifyRequest",
    "PostClusterModifyRequest",
    "PostRouteModifyRequest",
    "PostHTTPListenerModifyRequest",
    "PostVirtualHostModifyRequest",
    "PostEndpointsModifyRequest",
];

/// A message type as prost names it in Rust, or `None` for a map entry (prost makes it a
/// `HashMap` entry, not a type).
struct Found<'a> {
    message: &'a prost_types::DescriptorProto,
    rust: Option<String>,
}

/// Every message type of `fds` by full name (`.package.Outer.Inner`).
fn messages(fds: &prost_types::FileDescriptorSet) -> std::collections::BTreeMap<String, Found<'_>> {
    use heck::{ToSnakeCase, ToUpperCamelCase};
    fn snake(s: &str) -> String {
        let s = s.to_snake_case();
        match s.as_str() {
            "self" | "super" | "crate" => format!("{s}_"),
            _ if syn_keyword(&s) => format!("r#{s}"),
            _ => s,
        }
    }
    fn camel(s: &str) -> String {
        match s.to_upper_camel_case() {
            s if s == "Self" => "Self_".to_string(),
            s => s,
        }
    }
    fn walk<'a>(
        prefix: &str,
        rust_mods: &str,
        list: &'a [prost_types::DescriptorProto],
        out: &mut std::collections::BTreeMap<String, Found<'a>>,
    ) {
        for message in list {
            let name = message.name();
            let full = format!("{prefix}.{name}");
            let map_entry = message.options.as_ref().is_some_and(|o| o.map_entry());
            let rust = (!map_entry).then(|| format!("{rust_mods}::{}", camel(name)));
            walk(&full, &format!("{rust_mods}::{}", snake(name)), &message.nested_type, out);
            out.insert(full, Found { message, rust });
        }
    }
    let mut out = std::collections::BTreeMap::new();
    for file in &fds.file {
        let package = file.package();
        let root = match package {
            "envoygateway.extension" => "crate::xds::pb".to_string(),
            _ => std::iter::once("::envoy_types::pb".to_string())
                .chain(package.split('.').map(snake))
                .collect::<Vec<_>>()
                .join("::"),
        };
        walk(&format!(".{package}"), &root, &file.message_type, &mut out);
    }
    out
}

/// Rust's strict and reserved keywords that prost escapes as raw identifiers.
fn syn_keyword(s: &str) -> bool {
    const KEYWORDS: &[&str] = &[
        "as", "break", "const", "continue", "else", "enum", "false", "fn", "for", "if", "impl", "in", "let", "loop",
        "match", "mod", "move", "mut", "pub", "ref", "return", "static", "struct", "trait", "true", "type", "unsafe",
        "use", "where", "while", "abstract", "become", "box", "do", "final", "macro", "override", "priv", "typeof",
        "unsized", "virtual", "yield", "async", "await", "dyn", "try", "gen",
    ];
    KEYWORDS.contains(&s)
}

/// `src/xds/generated/wire_schema.rs`: every message type reachable from the extension's requests,
/// with its Rust size and the fields that allocate when decoded (messages, strings, bytes).
fn wire_schema(fds: &prost_types::FileDescriptorSet) -> String {
    use prost_types::field_descriptor_proto::{Label, Type};
    use std::fmt::Write;
    let all = messages(fds);
    let mut order: Vec<String> = REQUESTS.iter().map(|r| format!(".envoygateway.extension.{r}")).collect();
    let mut index: std::collections::HashMap<String, usize> =
        order.iter().enumerate().map(|(i, n)| (n.clone(), i)).collect();
    let mut entries = Vec::new();
    let mut next = 0;
    while next < order.len() {
        let name = order[next].clone();
        next += 1;
        let found = all.get(&name).unwrap_or_else(|| panic!("message {name} not in the descriptors"));
        let mut fields: Vec<(i32, String)> = Vec::new();
        for field in &found.message.field {
            let kind = match field.r#type() {
                Type::Message | Type::Group => {
                    let target = field.type_name().to_string();
                    let at = *index.entry(target.clone()).or_insert_with(|| {
                        order.push(target);
                        order.len() - 1
                    });
                    match field.label() {
                        Label::Repeated => format!("Held::Messages({at})"),
                        _ => format!("Held::Message({at})"),
                    }
                }
                Type::String | Type::Bytes if field.label() == Label::Repeated => "Held::Strings".to_string(),
                Type::String | Type::Bytes => "Held::Bytes".to_string(),
                _ if field.label() != Label::Repeated => continue,
                Type::Bool => "Held::Scalars(1)".to_string(),
                Type::Double | Type::Int64 | Type::Uint64 | Type::Sint64 | Type::Fixed64 | Type::Sfixed64 => {
                    "Held::Scalars(8)".to_string()
                }
                _ => "Held::Scalars(4)".to_string(),
            };
            fields.push((field.number(), kind));
        }
        fields.sort();
        let size = match &found.rust {
            Some(rust) => format!("size_of::<{rust}>()"),
            None => "MAP_ENTRY".to_string(),
        };
        let fields = fields.iter().map(|(n, k)| format!("({n}, {k})")).collect::<Vec<_>>().join(", ");
        entries.push(format!("    // {}\n    Message {{ size: {size}, fields: &[{fields}] }},\n", &name[1..]));
    }
    let mut out = String::from(
        "// @generated by tests/generated_protos.rs from the extension's protos and envoy-types' own: every\n\
         // message type reachable from the extension's requests, in the order first reached (the requests\n\
         // first, as `REQUESTS` lists them), with its size in Rust and the fields that allocate when decoded.\n\n",
    );
    let _ = writeln!(out, "/// The requests' method names, in the order of their entries in [`MESSAGES`].");
    let _ = writeln!(out, "pub(super) const REQUESTS: &[&str] = &[");
    for r in REQUESTS {
        let _ = writeln!(out, "    {:?},", r.trim_end_matches("Request"));
    }
    let _ = writeln!(out, "];\n\n/// The message types.\npub(super) const MESSAGES: &[Message] = &[");
    for e in entries {
        out.push_str(&e);
    }
    out.push_str("];\n");
    out
}

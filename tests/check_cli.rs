//! `tailscale-gateway check` as a CI pipeline runs it.

use std::process::Command;

fn check(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tailscale-gateway"))
        .arg("check")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap_or_else(|e| panic!("running check: {e}"));
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn valid_examples_pass() {
    let files = [
        "examples/tailnets.yaml",
        "examples/endpoints-east.yaml",
        "examples/endpoints-west.yaml",
        "examples/services.yaml",
        "examples/gateway.yaml",
    ];
    let mut args = Vec::new();
    for f in files {
        args.extend(["-f", f]);
    }
    let (code, out) = check(&args);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("0 rejected"), "{out}");
}

#[test]
fn every_invalid_example_is_rejected_with_its_field() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/invalid");
    let mut files: Vec<_> =
        std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{e}")).filter_map(|e| e.ok()).map(|e| e.path()).collect();
    files.sort();
    assert!(files.len() >= 8, "one example per rule family");
    for f in files {
        let path = f.to_string_lossy().into_owned();
        let (code, out) = check(&["-f", &path]);
        assert_eq!(code, 1, "{path} should be rejected:\n{out}");
        assert!(
            out.contains("error: ") && out.contains(": Invalid value")
                || out.contains(": Required value")
                || out.contains(": Unsupported value")
                || out.contains(": Duplicate value")
                || out.contains(": Unknown field"),
            "{path}: {out}"
        );
    }
}

#[test]
fn missing_path_is_an_error() {
    let (code, out) = check(&["-f", "does/not/exist.yaml"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("No such file"), "{out}");
}

#[test]
fn a_missing_path_is_named_and_the_others_still_load() {
    let (code, out) = check(&["-f", "does/not/exist/", "-f", "examples/tailnets.yaml"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("does/not/exist/: error: No such file"), "the path alone, no document index: {out}");
    assert!(out.contains("1 file(s): 2 valid object(s), 1 rejected"), "{out}");
}

#[test]
fn standard_input_is_read_with_dash() {
    use std::io::Write;
    let run = |input: &str| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tailscale-gateway"))
            .args(["check", "-f", "-"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("running check: {e}"));
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(input.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
        }
        let out = child.wait_with_output().unwrap_or_else(|e| panic!("{e}"));
        (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let good = std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/tailnets.yaml"))
        .unwrap_or_else(|e| panic!("{e}"));
    let (code, out) = run(&good);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("1 file(s): 2 valid object(s), 0 rejected"), "{out}");
    let (code, out) = run(
        "apiVersion: gateway.tailscale.com/v1alpha1\nkind: TailscaleEndpoints\nmetadata: {name: x}\nspec: {tailnet: corp, proxy: {connectionType: sideways}}\n",
    );
    assert_eq!(code, 1, "{out}");
    assert!(out.starts_with("<stdin> (document 1): error: "), "{out}");
}

#[test]
fn misspelt_fields_are_rejected_as_kubectl_apply_would() {
    let (code, out) = check(&["-f", "examples/invalid/unknown-field.yaml"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("TailscaleEndpoints \"default/typo-endpoints\" is invalid: [spec.ports[0].protocl: Unknown field: TailscaleEndpoints gateway.tailscale.com/v1alpha1 has no such field, spec.prots: Unknown field"),
        "{out}"
    );
}

#[test]
fn paths_may_also_be_given_without_f() {
    let (code, out) = check(&["examples/tailnets.yaml", "-f", "examples/gateway.yaml"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("2 file(s)"), "{out}");
}

#[test]
fn serve_without_a_cluster_says_why_once() {
    let home = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let out = Command::new(env!("CARGO_BIN_EXE_tailscale-gateway"))
        .args(["serve", "--listen", "127.0.0.1:0", "--xds-addr", "127.0.0.1:0"])
        .env("HOME", home.path())
        .env("KUBECONFIG", home.path().join("missing-kubeconfig"))
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KUBERNETES_SERVICE_PORT")
        .output()
        .unwrap_or_else(|e| panic!("running serve: {e}"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("use --local DIR to run without a cluster"), "{err}");
    assert_eq!(err.matches("missing-kubeconfig").count(), 1, "each cause once: {err}");
}

//! `tailscale-gateway check` as a CI pipeline runs it.

use std::process::Command;

fn check(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tailscale-gateway"))
        .arg("check")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("running tailscale-gateway check");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn valid_examples_pass() {
    // The whole folder, as `serve --local examples/` and `render examples/` read it: it holds only
    // working setups (the rejected manifests live in tests/manifests/invalid/).
    let (code, out) = check(&["examples/"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(" 0 rejected, 0 warning(s)"), "{out}");
    assert!(out.contains("0 rejected"), "{out}");
}

#[test]
fn every_invalid_example_is_rejected_with_its_field() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/manifests/invalid");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("reading tests/manifests/invalid")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .collect();
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
                || out.contains(": Unknown field")
                || out.contains(": Forbidden"),
            "{path}: {out}"
        );
    }
}

#[test]
fn missing_path_is_an_error() {
    let (code, out) = check(&["-f", "does/not/exist.yaml"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("does/not/exist.yaml: error: no such file or directory\n"), "no Rust error codes: {out}");
    assert!(out.contains("0 rejected") && out.contains("1 path(s) not read"), "{out}");
}

#[test]
fn a_missing_path_is_named_and_the_others_still_load() {
    let (code, out) = check(&["-f", "does/not/exist/", "-f", "examples/tailnets.yaml"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("does/not/exist/: error: no such file or directory"),
        "the path alone, no document index: {out}"
    );
    assert!(out.contains("1 file(s): 2 valid object(s), 0 rejected") && out.contains("1 path(s) not read"), "{out}");
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
            .expect("spawning tailscale-gateway check -f -");
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(input.as_bytes()).expect("writing the manifest to check's stdin");
        }
        let out = child.wait_with_output().expect("waiting for tailscale-gateway check");
        (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let good = std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/tailnets.yaml"))
        .expect("reading examples/tailnets.yaml");
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
    let (code, out) = check(&["-f", "tests/manifests/invalid/unknown-field.yaml"]);
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
    let home = tempfile::tempdir().expect("creating a temporary HOME");
    let out = Command::new(env!("CARGO_BIN_EXE_tailscale-gateway"))
        .args(["serve", "--listen", "127.0.0.1:0", "--xds-addr", "127.0.0.1:0"])
        .env("HOME", home.path())
        .env("KUBECONFIG", home.path().join("missing-kubeconfig"))
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KUBERNETES_SERVICE_PORT")
        .output()
        .expect("running tailscale-gateway serve");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("use --local DIR to run without a cluster"), "{err}");
    assert_eq!(err.matches("missing-kubeconfig").count(), 1, "each cause once: {err}");
}

#[test]
fn yaml_errors_point_at_the_files_line_and_column() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("two.yaml");
    let text = "# a comment\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n---\n\n# second\napiVersion: v1\nkind: ConfigMap\n metadata: [\n";
    std::fs::write(&file, text).expect("writing the manifest");
    let (code, out) = check(&["-f", file.to_str().expect("utf-8 path")]);
    assert_eq!(code, 1, "{out}");
    let want = format!("{}:11:10 (document 2): error: YAML: ", file.display());
    assert!(out.contains(&want), "file line and column of the error, want {want:?} in: {out}");
    for rust in ["Option<", "String>", "-->", "<input>"] {
        assert!(!out.contains(rust), "no Rust type names or snippets ({rust}): {out}");
    }
}

#[test]
fn a_bare_check_shows_how_to_name_files() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tailscale-gateway"))
        .arg("check")
        .output()
        .expect("running tailscale-gateway check");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("check [-n NAMESPACE] [-f] PATH...") && err.contains("check -f -"), "{err}");
}

#[test]
fn a_closed_pipe_ends_the_output_quietly() {
    use std::io::Read;
    use std::process::{Command, Stdio};
    for args in [&["crds"][..], &["render", "examples/"][..]] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tailscale-gateway"))
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting tailscale-gateway");
        // Read one byte, then go away as `head -c1` does.
        let mut stdout = child.stdout.take().expect("stdout");
        let mut byte = [0u8; 1];
        stdout.read_exact(&mut byte).expect("some output");
        drop(stdout);
        let out = child.wait_with_output().expect("waiting for tailscale-gateway");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{args:?}: {:?} {err}", out.status);
        assert!(!err.contains("Broken pipe") && !err.contains("panicked"), "{args:?}: {err}");
    }
}

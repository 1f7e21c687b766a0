//! The proxies' pods against a real kube-apiserver's PodSecurity admission, for what `render`
//! produces for every example: ingress proxies (userspace) are admitted where the `restricted`
//! level is enforced; egress proxies (kernel networking) are refused under `baseline` and admitted
//! under `privileged`, as the README says. Ignored in
//! plain `cargo test`: `hack/test.sh` builds the control plane and runs it.

mod util;

use serde_json::{Value, json};
use util::cluster::ControlPlane;

/// Every StatefulSet `render examples/` prints.
fn rendered_stateful_sets() -> Vec<Value> {
    let loaded = tailscale_gateway::manifest::load(
        &[std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/examples"))],
        "default",
    );
    assert!(!loaded.has_errors(), "{:?}", loaded.problems);
    let resources: Vec<_> = loaded.resources.into_iter().map(|(_, r)| r).collect();
    let objects = tailscale_gateway::render::render(&resources, &Default::default());
    let sets: Vec<Value> = objects.into_iter().filter(|o| o["kind"] == "StatefulSet").collect();
    assert!(!sets.is_empty(), "the examples render proxies");
    sets
}

/// The pod the StatefulSet controller would make from `sts`, in `namespace`.
fn pod_of(sts: &Value, namespace: &str) -> Value {
    let template = &sts["spec"]["template"];
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("{}-0", sts["metadata"]["name"].as_str().unwrap_or_default()),
                     "namespace": namespace, "labels": template["metadata"]["labels"]},
        "spec": template["spec"]})
}

/// Applies `pod` with a server-side dry run (PodSecurity enforces on Pods, and there is no
/// kubelet): whether it was admitted, and what the server said.
fn admit(cp: &ControlPlane, pod: &Value) -> (bool, String) {
    // The ServiceAccount admission plugin wants the pod's account to exist.
    let account = json!({"apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": {"name": pod["spec"]["serviceAccountName"], "namespace": pod["metadata"]["namespace"]}});
    let out = cp.kubectl_output(&["apply", "-f", "-"], Some(&account.to_string()));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = cp.kubectl_output(&["apply", "--dry-run=server", "-f", "-"], Some(&pod.to_string()));
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
}

#[test]
#[ignore = "needs the real control plane: run hack/test.sh"]
fn ingress_proxies_run_under_restricted_and_egress_proxies_need_privileged() {
    let cp = ControlPlane::start();
    for level in ["restricted", "baseline", "privileged"] {
        let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": level,
            "labels": {"pod-security.kubernetes.io/enforce": level,
                       "pod-security.kubernetes.io/enforce-version": "latest"}}});
        let out = cp.kubectl_output(&["apply", "-f", "-"], Some(&ns.to_string()));
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let (mut ingress, mut egress) = (0, 0);
    for sts in rendered_stateful_sets() {
        let mode = sts["spec"]["template"]["metadata"]["labels"]["tailscale-gateway.com/connection-type"].clone();
        let name = sts["metadata"]["name"].clone();
        if mode == "ingress" {
            let (ok, text) = admit(&cp, &pod_of(&sts, "restricted"));
            assert!(ok, "{name}: refused under restricted: {text}");
            assert!(!text.contains("Warning"), "{name}: admitted with warnings: {text}");
            ingress += 1;
        } else {
            let (ok, text) = admit(&cp, &pod_of(&sts, "baseline"));
            assert!(!ok && text.contains("violates PodSecurity \"baseline:latest\""), "{name} ({mode}): {text}");
            assert!(text.contains("privileged"), "{name}: the refusal names privileged: {text}");
            let (ok, text) = admit(&cp, &pod_of(&sts, "privileged"));
            assert!(ok, "{name} ({mode}): refused under privileged: {text}");
            egress += 1;
        }
    }
    assert!(ingress >= 3 && egress >= 1, "ingress {ingress}, egress {egress}");
}

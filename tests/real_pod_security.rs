//! The proxies' pods against a real kube-apiserver's PodSecurity admission: what `render` produces
//! for every example is admitted into a namespace that enforces the `restricted` level. Ignored in
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

#[test]
#[ignore = "needs the real control plane: run hack/test.sh"]
fn proxy_pods_are_admitted_under_pod_security_restricted() {
    let cp = ControlPlane::start();
    let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "restricted",
        "labels": {"pod-security.kubernetes.io/enforce": "restricted",
                   "pod-security.kubernetes.io/enforce-version": "latest"}}});
    let out = cp.kubectl_output(&["apply", "-f", "-"], Some(&ns.to_string()));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut checked = 0;
    let mut account_name = Value::Null;
    for sts in rendered_stateful_sets() {
        // PodSecurity only warns about workload objects; it enforces on Pods: make the pod the
        // StatefulSet controller would make, and have the server admit it (dry run: no kubelet).
        let template = &sts["spec"]["template"];
        // The ServiceAccount admission plugin wants the pod's account to exist.
        let account = json!({"apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": template["spec"]["serviceAccountName"], "namespace": "restricted"}});
        let out = cp.kubectl_output(&["apply", "-f", "-"], Some(&account.to_string()));
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        account_name = template["spec"]["serviceAccountName"].clone();
        let pod = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": format!("{}-0", sts["metadata"]["name"].as_str().unwrap_or_default()),
                         "namespace": "restricted", "labels": template["metadata"]["labels"]},
            "spec": template["spec"]});
        let out = cp.kubectl_output(&["apply", "--dry-run=server", "-f", "-"], Some(&pod.to_string()));
        let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{}: refused under restricted: {text}", pod["metadata"]["name"]);
        assert!(!text.contains("Warning"), "{}: admitted with warnings: {text}", pod["metadata"]["name"]);
        checked += 1;
    }
    // The check can fail: a privileged pod is refused by the same namespace.
    let privileged = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "privileged", "namespace": "restricted"},
        "spec": {"serviceAccountName": account_name,
                 "containers": [{"name": "c", "image": "busybox", "securityContext": {"privileged": true}}]}});
    let out = cp.kubectl_output(&["apply", "--dry-run=server", "-f", "-"], Some(&privileged.to_string()));
    assert!(!out.status.success(), "PodSecurity enforces in this namespace");
    let refused = String::from_utf8_lossy(&out.stderr);
    assert!(refused.contains("violates PodSecurity \"restricted:latest\""), "{refused}");
    assert!(checked >= 3, "{checked}");
}

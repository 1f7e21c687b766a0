//! `tailscale-gateway render`, and the reconciler's HTTPS client factory against the fake
//! Tailscale API server.

use std::process::Command;

use tailscale_gateway::reconciler::{ApiFactory, HttpsApiFactory, OAuthCredentials};
use tailscale_gateway::tailscale::fake::FakeTailscale;

#[test]
fn render_prints_what_the_reconciler_would_create() {
    let out = Command::new(env!("CARGO_BIN_EXE_tailscale-gateway"))
        .args(["render", "-f", "examples/endpoints-east.yaml", "-f", "examples/services.yaml"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("running tailscale-gateway render");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "kind: StatefulSet",
        "name: web-proxy-east",
        "kind: Service",
        "name: web-proxy-east-svc",
        "kind: Secret",
        "name: web-proxy-east-0-config",
    ] {
        assert!(text.contains(needle), "render output lacks {needle:?}");
    }
    assert!(!text.contains("tskey-"), "no real auth key is ever rendered");

    let bad = Command::new(env!("CARGO_BIN_EXE_tailscale-gateway"))
        .args(["render", "-f", "tests/manifests/invalid/bad-endpoints.yaml"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("running tailscale-gateway render on an invalid file");
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("spec.tailnet: Required value"));

    // Nothing to render is said, not silent.
    let none = Command::new(env!("CARGO_BIN_EXE_tailscale-gateway"))
        .args(["render", "examples/tailnets.yaml"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("running tailscale-gateway render on a file with nothing to render");
    assert!(none.status.success());
    assert!(none.stdout.is_empty());
    assert!(String::from_utf8_lossy(&none.stderr).contains("nothing to render"), "{none:?}");
}

#[tokio::test]
async fn https_factory_talks_to_the_api_named_by_the_tailnet() {
    let fake = FakeTailscale::start().await.expect("starting the fake Tailscale API");
    fake.register_device("web-proxy-east-0", &["tag:k8s-proxy"]);
    let cfg = fake.client_config();
    let tailnet: tailscale_gateway::api::TailscaleTailnet = serde_json::from_value(serde_json::json!({
        "apiVersion": "gateway.tailscale.com/v1alpha1", "kind": "TailscaleTailnet", "metadata": {"name": "t"},
        "spec": {"oauthSecretRef": {"name": "oauth"}, "apiURL": format!("{}/", fake.url())}
    }))
    .expect("parsing the TailscaleTailnet");
    let api = HttpsApiFactory
        .build(
            &tailnet,
            OAuthCredentials { client_id: cfg.client_id.clone(), client_secret: cfg.client_secret.clone() },
        )
        .expect("building the Tailscale API client");
    let devices = api.list_devices().await.expect("listing devices through the built client");
    assert_eq!(devices.len(), 1);
    assert_eq!(devices[0].hostname, "web-proxy-east-0");

    let wrong = HttpsApiFactory
        .build(&tailnet, OAuthCredentials { client_id: cfg.client_id, client_secret: "wrong".into() })
        .expect("building the Tailscale API client with a wrong secret");
    let err = wrong.list_devices().await.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains("rejected the credentials"), "{err}");
}

//! Regression tests of the hostile-input review (issue 17), against the real binary: peer-controlled
//! strings are clipped in logs.

mod util;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use tailscale_gateway::xds::pb::envoy_gateway_extension_client::EnvoyGatewayExtensionClient;
use tailscale_gateway::xds::pb::{ExtensionResource, PostClusterExtensionContext, PostClusterModifyRequest};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_10_mib_kind_in_a_grpc_call_makes_a_short_log_line() {
    let dir = tempfile::tempdir().expect("temp dir");
    let manifests = dir.path().join("manifests");
    std::fs::create_dir_all(&manifests).expect("creating the folder");
    util::copy_examples(&manifests);
    let [https, xds] = util::cluster::free_ports();
    let server = Command::new(env!("CARGO_BIN_EXE_tailscale-gateway"))
        .args(["serve", "--local"])
        .arg(&manifests)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .args(["--listen", &format!("127.0.0.1:{https}"), "--xds-addr", &format!("127.0.0.1:{xds}")])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting serve");
    let mut server = util::KillOnDrop(server);
    let mut client = None;
    for _ in 0..100 {
        if let Ok(c) = EnvoyGatewayExtensionClient::connect(format!("http://127.0.0.1:{xds}")).await {
            client = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut client = client.expect("the extension server answers");
    let kind = "K".repeat(10 * 1024 * 1024);
    let object =
        format!(r#"{{"apiVersion":"gateway.tailscale.com/v1alpha1","kind":"{kind}","metadata":{{"name":"x"}}}}"#);
    let request = PostClusterModifyRequest {
        cluster: Some(Cluster { name: "c".into(), ..Cluster::default() }),
        post_cluster_context: Some(PostClusterExtensionContext {
            backend_extension_resources: vec![ExtensionResource { unstructured_bytes: object.into_bytes() }],
        }),
    };
    // With a 20 MiB log line to write, the server stalled on its own stderr: time-boxed, so that fails.
    tokio::time::timeout(Duration::from_secs(20), client.post_cluster_modify(request))
        .await
        .expect("answered in time")
        .expect("a bad object does not fail the call");
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.0.kill().expect("stopping serve");
    let mut log = String::new();
    server.0.stderr.take().expect("stderr").read_to_string(&mut log).expect("serve's log");
    let warning =
        log.lines().find(|l| l.contains("extension resource left unchanged")).expect("the bad object is logged");
    assert!(warning.contains(" bytes)"), "the clipped text says how long it was: {warning}");
    let longest = log.lines().map(str::len).max().unwrap_or_default();
    assert!(longest < 2048, "a log line of {longest} bytes");
}

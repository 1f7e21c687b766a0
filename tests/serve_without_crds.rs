//! `serve` against a cluster that lacks our CustomResourceDefinitions: one message per missing CRD
//! naming it and the command that installs it, no Rust debug dumps of API errors, readiness false,
//! and the server keeps running (retrying with backoff) instead of exiting.

mod util;

use std::convert::Infallible;
use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tailscale_gateway::core::Kind;

/// An API server that knows no resource at all: every request is a 404 `Status`, as
/// kube-apiserver answers for a group nobody installed.
async fn empty_api_server() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("binding the fake API server");
    let addr = listener.local_addr().expect("its address");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = service_fn(|_req| async {
                    let body = r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"the server could not find the requested resource","reason":"NotFound","details":{},"code":404}"#;
                    let resp = hyper::Response::builder()
                        .status(404)
                        .header("content-type", "application/json")
                        .body(Full::new(Bytes::from_static(body.as_bytes())))
                        .expect("a response");
                    Ok::<_, Infallible>(resp)
                });
                let _ = http1::Builder::new().serve_connection(TokioIo::new(tcp), service).await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_crds_are_named_once_with_the_install_command_and_the_server_is_not_ready() {
    let api = empty_api_server().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let kubeconfig = dir.path().join("kubeconfig");
    let config = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: http://{api}\nusers:\n- name: u\n  user:\n    token: t\ncontexts:\n- name: c\n  context:\n    cluster: c\n    user: u\ncurrent-context: c\n"
    );
    std::fs::write(&kubeconfig, config).expect("writing the kubeconfig");
    let ca = tailscale_gateway::pki::Ca::generate("test CA").expect("a CA");
    let pair = ca.issue_server(&["localhost".into(), "127.0.0.1".into()]).expect("a serving certificate");
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::write(&cert, &pair.cert_pem).expect("writing the certificate");
    std::fs::write(&key, &pair.key_pem).expect("writing the key");
    let port = util::cluster::free_port();
    let listen = format!("127.0.0.1:{port}");
    let child = Command::new(env!("CARGO_BIN_EXE_tailscale-gateway"))
        .args(["serve", "--listen", &listen, "--xds-addr", "127.0.0.1:0", "--self-managed-certs=false"])
        .arg("--tls-cert-file")
        .arg(&cert)
        .arg("--tls-key-file")
        .arg(&key)
        .env("KUBECONFIG", &kubeconfig)
        .env("RUST_LOG", "info")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting serve");
    let mut child = util::KillOnDrop(child);

    // Let the watchers fail and retry a few times.
    let cfg = util::client_config(&[&ca.pair().cert_pem], None);
    let mut ready = None;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if std::net::TcpStream::connect(&listen).is_ok() {
            let mut conn = util::Conn::open(listen.parse().expect("address"), cfg.clone()).await;
            ready = Some(conn.get("/readyz").await.status);
            break;
        }
    }
    assert_eq!(ready, Some(503), "not ready while the CRDs are missing");
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(child.0.try_wait().expect("polling serve").is_none(), "serve keeps running, retrying");
    child.0.kill().expect("stopping serve");
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.0.stderr.take().expect("stderr"), &mut err).expect("serve's log");
    for kind in Kind::ALL {
        let crd = tailscale_gateway::api::crd_name(kind);
        let lines =
            err.lines().filter(|l| l.contains(&format!("CustomResourceDefinition {crd} is not installed"))).count();
        assert_eq!(lines, 1, "{crd} named once, however often the watch is retried:\n{err}");
    }
    assert!(err.contains("kubectl apply --server-side -k crds/"), "{err}");
    for dump in ["Status {", "ApiError", "Some(", "self_link"] {
        assert!(!err.contains(dump), "no Rust debug dump ({dump}) in:\n{err}");
    }
}

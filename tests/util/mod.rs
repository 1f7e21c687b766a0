//! Helpers for tests over real sockets: a rustls client that holds one connection, and servers
//! started in-process on 127.0.0.1:0.
#![allow(dead_code)]

pub mod cluster;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// A TLS client config trusting the PEM CAs given, optionally presenting a client cert.
pub fn client_config(ca_pems: &[&str], client: Option<(&str, &str)>) -> Arc<rustls::ClientConfig> {
    let provider = tailscale_gateway::server::tls::provider();
    let mut roots = rustls::RootCertStore::empty();
    for pem in ca_pems {
        for c in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            roots.add(c.expect("parsing a CA PEM")).expect("adding a CA to the root store");
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("selecting the default TLS protocol versions")
        .with_root_certificates(roots);
    let cfg = match client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert.as_bytes())
                .collect::<Result<_, _>>()
                .expect("parsing the client certificate chain");
            let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("parsing the client key");
            builder.with_client_auth_cert(chain, key).expect("setting the client certificate")
        }
    };
    Arc::new(cfg)
}

/// One kept-alive HTTP/1.1 connection over TLS.
pub struct Conn {
    sender: SendRequest<Full<Bytes>>,
    /// The server's leaf certificate on this connection.
    pub server_cert: CertificateDer<'static>,
}

/// Response status, content type and body.
pub struct Resp {
    pub status: u16,
    pub content_type: String,
    pub body: Vec<u8>,
    pub headers: http::HeaderMap,
}

impl Resp {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("response is not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

impl Conn {
    /// Connects and completes the TLS handshake.
    pub async fn open(addr: SocketAddr, cfg: Arc<rustls::ClientConfig>) -> Conn {
        let tcp = TcpStream::connect(addr).await.unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        let name = ServerName::try_from("localhost").expect("parsing the server name localhost");
        let tls = TlsConnector::from(cfg).connect(name, tcp).await.expect("completing the TLS handshake");
        let server_cert = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first().cloned())
            .unwrap_or_else(|| panic!("no server cert"));
        let (sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.expect("completing the HTTP/1 handshake");
        tokio::spawn(conn);
        Conn { sender, server_cert }
    }

    /// Sends a request on this connection.
    pub async fn request(&mut self, method: &str, path: &str, content_type: Option<&str>, body: Vec<u8>) -> Resp {
        let mut req = hyper::Request::builder().method(method).uri(path).header("host", "localhost");
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        let req = req.body(Full::new(Bytes::from(body))).expect("building the request");
        self.sender.ready().await.expect("waiting for the connection to be ready");
        let resp = self.sender.send_request(req).await.unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = resp.status().as_u16();
        let content_type =
            resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.expect("reading the response body").to_bytes().to_vec();
        Resp { status, content_type, body, headers }
    }

    /// POSTs JSON.
    pub async fn post_json(&mut self, path: &str, body: &serde_json::Value) -> Resp {
        self.request("POST", path, Some("application/json"), serde_json::to_vec(body).unwrap_or_default()).await
    }

    /// GETs a path.
    pub async fn get(&mut self, path: &str) -> Resp {
        self.request("GET", path, None, Vec::new()).await
    }

    /// GETs a path asking for the media type `accept` (as kubectl asks for a Table).
    pub async fn get_accept(&mut self, path: &str, accept: &str) -> Resp {
        let req = hyper::Request::get(path)
            .header("host", "localhost")
            .header("accept", accept)
            .body(Full::new(Bytes::new()))
            .expect("building a GET request");
        self.sender.ready().await.expect("connection not ready");
        let resp = self.sender.send_request(req).await.expect("sending a GET request");
        let status = resp.status().as_u16();
        let content_type =
            resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.expect("reading a response body").to_bytes().to_vec();
        Resp { status, content_type, body, headers }
    }
}

/// Copies the examples (valid ones only) into `dir`.
pub fn copy_examples(dir: &Path) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    for entry in std::fs::read_dir(&src).expect("reading the examples directory") {
        let entry = entry.expect("reading an examples directory entry");
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) == Some("yaml") {
            std::fs::copy(&path, dir.join(entry.file_name())).expect("copying an example");
        }
    }
}

/// An AdmissionReview for one object.
pub fn review(operation: &str, object: serde_json::Value, old: Option<serde_json::Value>) -> serde_json::Value {
    let kind = object["kind"].as_str().unwrap_or_default().to_string();
    let namespace = object.pointer("/metadata/namespace").and_then(|v| v.as_str()).unwrap_or("default").to_string();
    serde_json::json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": {"group": "gateway.tailscale.com", "version": "v1alpha1", "kind": kind},
            "resource": {"group": "gateway.tailscale.com", "version": "v1alpha1", "resource": format!("{}", kind.to_lowercase())},
            "namespace": namespace,
            "operation": operation,
            "userInfo": {"username": "admin"},
            "object": object,
            "oldObject": old,
            "dryRun": false
        }
    })
}

/// A child process killed when the test ends, however it ends.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A plain-HTTP GET of `path` on a fresh connection (`Connection: close`): the whole response as text.
pub async fn plain_get(addr: SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = TcpStream::connect(addr).await.unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    tcp.write_all(request.as_bytes()).await.expect("sending the request");
    let mut out = String::new();
    tcp.read_to_string(&mut out).await.expect("reading the response");
    out
}

/// (group, resource, verb, resourceNames) granted by a list of RBAC rules, one entry each: the
/// canonical form two manifests that group rules differently are compared in.
pub fn expand_rules(rules: &serde_json::Value) -> std::collections::BTreeSet<(String, String, String, Vec<String>)> {
    let strs = |v: &serde_json::Value| -> Vec<String> {
        v.as_array().into_iter().flatten().filter_map(serde_json::Value::as_str).map(str::to_string).collect()
    };
    let mut out = std::collections::BTreeSet::new();
    for r in rules.as_array().into_iter().flatten() {
        let mut names = strs(&r["resourceNames"]);
        names.sort();
        for g in strs(&r["apiGroups"]) {
            for res in strs(&r["resources"]) {
                for v in strs(&r["verbs"]) {
                    out.insert((g.clone(), res.clone(), v, names.clone()));
                }
            }
        }
    }
    out
}

/// A minimal stand-in for cert-manager's Certificate and Issuer CRDs: the kinds exist, their
/// contents go unchecked (cert-manager's own schemas are not vendored here).
pub fn cert_manager_stand_in() -> serde_json::Value {
    let crd = |kind: &str, plural: &str| {
        serde_json::json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": format!("{plural}.cert-manager.io")},
            "spec": {"group": "cert-manager.io", "scope": "Namespaced",
                "names": {"kind": kind, "plural": plural, "singular": kind.to_lowercase(), "listKind": format!("{kind}List")},
                "versions": [{"name": "v1", "served": true, "storage": true,
                    "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}]}})
    };
    serde_json::json!({"apiVersion": "v1", "kind": "List", "items": [crd("Certificate", "certificates"), crd("Issuer", "issuers")]})
}

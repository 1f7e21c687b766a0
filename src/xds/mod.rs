//! The Envoy Gateway extension server: TailscaleServices and TailscaleEndpoints as route backends,
//! and TailscaleGateways as generated routes, served as Envoy Gateway's
//! `envoygateway.extension.EnvoyGatewayExtension` gRPC service over the shared cache.
//!
//! - [`backend`]: what one of our objects resolves to now (proxy Services, health, region, port).
//! - [`crate::core::envoy`]: the pure builders (cluster, generated routes, translation merge).
//! - [`translate`]: plans the clusters and routes TailscaleGateways add to a translation.
//! - [`service`]: the gRPC hooks; [`serve`] / [`serve_listener`] run them with the health service.
//! - [`authz`]: Envoy's external authorization for TailscaleRoutePolicies, on the same port.

pub mod authz;
pub mod limits;
pub mod metrics;
pub mod service;
/// Resolving our backend objects and planning the TailscaleGateways' routes are pure: the core's.
pub use crate::core::{backends as backend, translate};

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;
use tonic_health::ServingStatus;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

use crate::server::tls::{self as server_tls, CertStore, TlsError};

pub use metrics::XdsMetrics;
pub use service::{ExtensionService, HookSettings, PolicySource};

/// Generated code of the `envoygateway.extension` protobuf package (server and client).
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod pb {
    include!("generated/envoygateway.extension.rs");
}

/// Full gRPC service name, as Envoy Gateway calls it and as the health service reports it.
pub const SERVICE_NAME: &str = "envoygateway.extension.EnvoyGatewayExtension";
/// Default listen address (Envoy Gateway's examples use port 5005).
pub const DEFAULT_ADDR: &str = "0.0.0.0:5005";
/// Default largest message accepted or sent: four times Envoy Gateway's own default (4 MiB), which
/// a large translation outgrows; Envoy Gateway's `maxMessageSize` must not exceed it.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 16 * 1024 * 1024;
/// Default largest number of open connections to the extension port (`--xds-max-connections`).
pub const DEFAULT_MAX_CONNECTIONS: usize = 256;
/// How long an extension connection lives before the server asks the client to reconnect.
pub const MAX_CONNECTION_AGE: Duration = Duration::from_secs(300);
/// How long calls in flight on a connection past its age get to finish.
pub const MAX_CONNECTION_AGE_GRACE: Duration = Duration::from_secs(60);

/// PEM files for serving TLS. The certificate and key are re-read every `reload_interval` and a
/// changed pair is served to new connections (cert-manager and kubelet rotate mounted Secrets
/// in place); open connections keep their session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// Serving certificate chain.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
    /// CA bundle that client certificates must chain to (then required; reloaded like the
    /// certificate); `None` asks for none.
    pub client_ca: Option<PathBuf>,
    /// How often the certificate and key files are checked for a new pair.
    pub reload_interval: Duration,
}

impl TlsFiles {
    /// A certificate and key, no client certificates, checked for changes every 2 s.
    pub fn new(cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        Self { cert: cert.into(), key: key.into(), client_ca: None, reload_interval: Duration::from_secs(2) }
    }
}

/// How the extension server runs.
#[derive(Clone, Debug)]
pub struct XdsOptions {
    /// Listen address.
    pub addr: SocketAddr,
    /// TLS, or plain gRPC when `None`.
    pub tls: Option<TlsFiles>,
    /// Largest gRPC message decoded or encoded.
    pub max_message_size: usize,
    /// Largest number of elements in any one list of a call ([`limits`]).
    pub max_resources_per_call: usize,
    /// Calls decoded and served at once; more wait.
    pub max_concurrent_calls: usize,
    /// Estimated decoded bytes of the calls in flight together ([`limits`]); one call above it is
    /// refused, calls that together exceed it wait.
    pub max_decoded_size: usize,
    /// Open connections; more are closed as soon as they are accepted.
    pub max_connections: usize,
    /// What the hooks need to know.
    pub hooks: HookSettings,
}

impl Default for XdsOptions {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([0, 0, 0, 0], 5005)),
            tls: None,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            max_resources_per_call: limits::DEFAULT_MAX_RESOURCES,
            max_concurrent_calls: limits::DEFAULT_MAX_CONCURRENT_CALLS,
            max_decoded_size: limits::DEFAULT_MAX_DECODED_SIZE,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            hooks: HookSettings::default(),
        }
    }
}

/// Why the extension server could not run.
#[derive(Debug, thiserror::Error)]
pub enum XdsError {
    /// A TLS file could not be read.
    #[error("reading {path}: {error}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why (in the message, not a separate source, so it is printed once).
        error: std::io::Error,
    },
    /// TLS files did not hold a usable certificate and key, or CA.
    #[error("{files}: {error}")]
    Tls {
        /// The files.
        files: String,
        /// Why (in the message, not a separate source, so it is printed once).
        error: TlsError,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    TlsSetup(#[from] rustls::Error),
    /// The listen address could not be bound.
    #[error("binding {addr}: {error}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why (in the message, not a separate source, so it is printed once).
        error: std::io::Error,
    },
    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

fn read(path: &PathBuf) -> Result<Vec<u8>, XdsError> {
    std::fs::read(path).map_err(|error| XdsError::Read { path: path.clone(), error })
}

/// What serving TLS needs: the rustls configuration and the two things in it that the files
/// can change while serving.
pub struct XdsTls {
    /// rustls configuration for gRPC (HTTP/2 by ALPN).
    pub config: Arc<rustls::ServerConfig>,
    /// The serving certificate, swapped when the certificate and key files change.
    pub store: Arc<CertStore>,
    /// Client-certificate verification, swapped when the client CA file changes.
    pub client_ca: Option<Arc<ClientCa>>,
}

/// Loads the TLS files: the serving certificate into a store that can be swapped while
/// serving, and with a client CA, a verifier (also swappable) that requires client certificates
/// chaining to it.
pub fn tls_config(files: &TlsFiles) -> Result<XdsTls, XdsError> {
    let pair = format!("{} and {}", files.cert.display(), files.key.display());
    let key = server_tls::certified_key(&read(&files.cert)?, &read(&files.key)?)
        .map_err(|error| XdsError::Tls { files: pair, error })?;
    let store = CertStore::new(key);
    let provider = server_tls::provider();
    let client_ca = match &files.client_ca {
        Some(ca) => {
            let pem = read(ca)?;
            let verifier = ClientCa::verifier(&pem, &provider)
                .map_err(|error| XdsError::Tls { files: ca.display().to_string(), error })?;
            Some(Arc::new(ClientCa { current: std::sync::RwLock::new((pem, verifier)) }))
        }
        None => None,
    };
    let verifier: Arc<dyn ClientCertVerifier> = match &client_ca {
        Some(ca) => ca.clone(),
        None => rustls::server::WebPkiClientVerifier::no_client_auth(),
    };
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(store.clone());
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(XdsTls { config: Arc::new(config), store, client_ca })
}

/// Requires client certificates chaining to a CA bundle that can be replaced while serving
/// (a CA rotation ships a bundle holding both the old and the new CA, then the new one alone).
/// Sends no CA hints: the extension's only client has one certificate.
#[derive(Debug)]
pub struct ClientCa {
    /// The PEM the current verifier was built from, and the verifier.
    current: std::sync::RwLock<(Vec<u8>, Arc<dyn ClientCertVerifier>)>,
}

impl ClientCa {
    fn verifier(pem: &[u8], provider: &Arc<CryptoProvider>) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in server_tls::ca_certs(pem)? {
            roots.add(cert).map_err(|e| TlsError::Pem(format!("client CA: {e}")))?;
        }
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .map_err(|e| TlsError::Pem(format!("client CA: {e}")))
    }

    fn get(&self) -> Arc<dyn ClientCertVerifier> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).1.clone()
    }

    /// Replaces the verifier when `pem` differs from the bundle in use; an unusable bundle is
    /// refused and the current one kept. Returns whether the verifier changed.
    pub fn update(&self, pem: Vec<u8>) -> Result<bool, TlsError> {
        if self.current.read().unwrap_or_else(|p| p.into_inner()).0 == pem {
            return Ok(false);
        }
        let verifier = Self::verifier(&pem, &server_tls::provider())?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = (pem, verifier);
        Ok(true)
    }

    /// Polls `path` every `every` until `stop` and applies what changed.
    async fn reload_on_change(self: Arc<Self>, path: PathBuf, every: Duration, stop: CancellationToken) {
        // The last content refused, so a file that stays broken is reported once, not every look.
        let mut refused: Option<Vec<u8>> = None;
        crate::poll::every(every, &stop, || {
            let Ok(pem) = std::fs::read(&path) else { return };
            if refused.as_ref() == Some(&pem) {
                return;
            }
            match self.update(pem.clone()) {
                Ok(true) => tracing::info!(ca = %path.display(), "xds: client CA reloaded"),
                Ok(false) => {}
                // Half-written, or not a CA: the bundle in use stays; a change is tried again.
                Err(error) => {
                    tracing::warn!(ca = %path.display(), %error, "xds: client CA not reloaded");
                    refused = Some(pem);
                }
            }
        })
        .await;
    }
}

impl ClientCertVerifier for ClientCa {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.get().verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.get().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.get().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.get().supported_verify_schemes()
    }
}

/// TLS connections accepted on `listener` until `stop`: each handshake runs in a task of its own
/// (a slow or failed client holds up nobody) and only completed ones are handed on.
fn tls_incoming(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    slots: crate::server::Slots,
    stop: CancellationToken,
) -> tokio_stream::wrappers::ReceiverStream<Result<crate::server::Held<TlsStream<TcpStream>>, std::io::Error>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    tokio::spawn(async move {
        while let Some((tcp, peer)) = crate::server::accept(&listener, &stop).await {
            let Some(slot) = slots.take(peer) else { continue };
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                let timeout = crate::server::DEFAULT_HANDSHAKE_TIMEOUT;
                if let Some(tls) = crate::server::handshake(&acceptor, tcp, peer, timeout).await {
                    let _ = tx.send(Ok(crate::server::Held::new(tls, slot))).await;
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// Plain TCP connections accepted on `listener` until `stop`, at most as many open as `slots` has.
fn tcp_incoming(
    listener: TcpListener,
    slots: crate::server::Slots,
    stop: CancellationToken,
) -> tokio_stream::wrappers::ReceiverStream<Result<crate::server::Held<TcpStream>, std::io::Error>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        while let Some((tcp, peer)) = crate::server::accept(&listener, &stop).await {
            let Some(slot) = slots.take(peer) else { continue };
            if tx.send(Ok(crate::server::Held::new(tcp, slot))).await.is_err() {
                return;
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// Binds `opts.addr` and serves until `stop` is cancelled.
pub async fn serve(
    cache: crate::cache::Cache,
    opts: XdsOptions,
    metrics: XdsMetrics,
    stop: CancellationToken,
) -> Result<(), XdsError> {
    let listener = TcpListener::bind(opts.addr).await.map_err(|error| XdsError::Bind { addr: opts.addr, error })?;
    serve_listener(listener, cache, opts, metrics, stop).await
}

/// Reports the extension service SERVING on `reporter` once `cache` has loaded every kind.
async fn serving_once_synced(cache: crate::cache::Cache, reporter: tonic_health::server::HealthReporter) {
    let mut synced = cache.subscribe();
    loop {
        if cache.synced() {
            reporter.set_service_status(SERVICE_NAME, ServingStatus::Serving).await;
            tracing::info!("xds: cache synced, extension service serving");
            return;
        }
        // The cache bumps its revision when a kind becomes synced, so a change notification
        // is all there is to wait for.
        if synced.changed().await.is_err() {
            return;
        }
    }
}

fn log_listening(local: Option<SocketAddr>, opts: &XdsOptions) {
    let addr = local.map_or_else(|| "unknown".to_string(), |a| a.to_string());
    tracing::info!(
        %addr,
        tls = opts.tls.is_some(),
        max_message_size = opts.max_message_size,
        max_resources_per_call = opts.max_resources_per_call,
        max_concurrent_calls = opts.max_concurrent_calls,
        max_decoded_size = opts.max_decoded_size,
        max_connections = opts.max_connections,
        "extension server listening"
    );
}

/// Serves the extension service and the gRPC health service on an already bound listener until
/// `stop` is cancelled. Health reports NOT_SERVING for the extension service until the cache has
/// loaded every kind, so a probe does not route Envoy Gateway to a replica that would answer from
/// an empty cache.
pub async fn serve_listener(
    listener: TcpListener,
    cache: crate::cache::Cache,
    opts: XdsOptions,
    metrics: XdsMetrics,
    stop: CancellationToken,
) -> Result<(), XdsError> {
    let local = listener.local_addr().ok();
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_service_status(SERVICE_NAME, ServingStatus::NotServing).await;
    let health_task = tokio::spawn(serving_once_synced(cache.clone(), reporter));
    let authz = envoy_types::ext_authz::v3::pb::AuthorizationServer::new(authz::AuthzService::new(
        cache.clone(),
        metrics.clone(),
    ))
    .max_decoding_message_size(opts.max_message_size);
    let svc = pb::envoy_gateway_extension_server::EnvoyGatewayExtensionServer::new(ExtensionService::new(
        cache,
        opts.hooks.clone(),
        metrics,
    ))
    .max_decoding_message_size(opts.max_message_size)
    .max_encoding_message_size(opts.max_message_size);
    let call_limits = limits::CallLimits::new(&opts);
    let svc = limits::Limited::new(svc, call_limits);
    // A connection holds one of --xds-max-connections slots: one that never speaks (or a peer that
    // just sits on it) gives it back after MAX_CONNECTION_AGE; Envoy Gateway's client reconnects
    // on the GOAWAY, and calls in flight get MAX_CONNECTION_AGE_GRACE to finish.
    let router = Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .max_concurrent_streams(Some(100))
        .max_connection_age(MAX_CONNECTION_AGE)
        .max_connection_age_grace(MAX_CONNECTION_AGE_GRACE)
        .add_service(health)
        .add_service(authz)
        .add_service(svc);
    log_listening(local, &opts);
    let slots = crate::server::Slots::new(opts.max_connections, "--xds-max-connections");
    // Stops the accept loop (and, with TLS, the reloaders) when serving ends: after `stop`, once
    // tonic has finished its graceful shutdown.
    let accepting = CancellationToken::new();
    let _accepting = accepting.clone().drop_guard();
    let shutdown = stop.cancelled_owned();
    let result = match &opts.tls {
        None => router.serve_with_incoming_shutdown(tcp_incoming(listener, slots, accepting), shutdown).await,
        Some(files) => {
            let tls = match tls_config(files) {
                Ok(tls) => tls,
                Err(e) => {
                    health_task.abort();
                    return Err(e);
                }
            };
            tokio::spawn(server_tls::reload_on_change(
                tls.store,
                files.cert.clone(),
                files.key.clone(),
                files.reload_interval,
                accepting.clone(),
            ));
            if let (Some(client_ca), Some(path)) = (tls.client_ca, &files.client_ca) {
                tokio::spawn(client_ca.reload_on_change(path.clone(), files.reload_interval, accepting.clone()));
            }
            router.serve_with_incoming_shutdown(tls_incoming(listener, tls.config, slots, accepting), shutdown).await
        }
    };
    health_task.abort();
    result.map_err(XdsError::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unusable_tls_files_are_named_in_the_error() {
        let dir = tempfile::tempdir().expect("creating a temporary directory");
        let ca = crate::pki::Ca::generate("xds unit ca").expect("generating the CA");
        let pair = ca.issue_server(&["localhost".to_string()]).expect("issuing the serving certificate");
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).expect("writing a TLS file");
            path
        };
        let (cert, key, junk) =
            (write("tls.crt", &pair.cert_pem), write("tls.key", &pair.key_pem), write("junk.pem", "not PEM"));
        assert!(tls_config(&TlsFiles::new(&cert, &key)).is_ok());
        assert!(tls_config(&TlsFiles { client_ca: Some(cert.clone()), ..TlsFiles::new(&cert, &key) }).is_ok());

        let err = |files: TlsFiles| match tls_config(&files) {
            Ok(_) => panic!("{files:?} was accepted"),
            Err(e) => e.to_string(),
        };
        let missing = dir.path().join("missing.crt");
        assert!(err(TlsFiles::new(&missing, &key)).contains("missing.crt"));
        assert!(err(TlsFiles::new(&junk, &key)).contains("junk.pem"));
        let bad_key = err(TlsFiles::new(&cert, &junk));
        assert!(bad_key.contains("junk.pem") && bad_key.contains("private key"), "{bad_key}");
        let bad_ca = err(TlsFiles { client_ca: Some(junk.clone()), ..TlsFiles::new(&cert, &key) });
        assert!(bad_ca.contains("junk.pem") && bad_ca.contains("CA"), "{bad_ca}");
    }

    #[test]
    fn the_client_ca_changes_only_for_a_different_usable_bundle() {
        let dir = tempfile::tempdir().expect("creating a temporary directory");
        let (one, two) = (crate::pki::Ca::generate("one"), crate::pki::Ca::generate("two"));
        let (Ok(one), Ok(two)) = (one, two) else { panic!("CAs") };
        let server = one.issue_server(&["localhost".to_string()]).expect("issuing the serving certificate");
        let path = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).expect("writing a TLS file");
            p
        };
        let files = TlsFiles {
            client_ca: Some(path("ca.crt", &one.pair().cert_pem)),
            ..TlsFiles::new(path("tls.crt", &server.cert_pem), path("tls.key", &server.key_pem))
        };
        let tls = tls_config(&files).expect("building the TLS config");
        let Some(ca) = tls.client_ca else { panic!("no client CA verifier") };
        assert!(matches!(ca.update(one.pair().cert_pem.clone().into_bytes()), Ok(false)), "same bundle");
        assert!(ca.update(b"not PEM".to_vec()).is_err());
        let both = format!("{}{}", one.pair().cert_pem, two.pair().cert_pem);
        assert!(matches!(ca.update(both.into_bytes()), Ok(true)), "a bundle with the new CA added");
        assert!(tls_config(&TlsFiles::new(&files.cert, &files.key)).is_ok_and(|t| t.client_ca.is_none()));
    }
}

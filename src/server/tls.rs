//! TLS for the HTTPS server: a serving certificate that can be swapped while running (files
//! reloaded on change, open connections keep their session), and optional client certificates.
//! The Envoy Gateway extension server serves from the same kind of swappable store.
//!
//! Client certificates are requested but not required, and only proof of key possession is
//! checked during the handshake. Which CA a chain must lead to depends on what the request wants
//! (front-proxy headers need the requestheader CA, direct users the client CA), so chains are
//! verified per request by the aggregated API, as kube-apiserver does.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime, pem::PemObject};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, ServerConfig, SignatureScheme};
use tokio_util::sync::CancellationToken;

/// Errors loading a certificate.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// File could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// Which file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// PEM did not hold what we need.
    #[error("{0}")]
    Pem(String),
    /// rustls refused the key.
    #[error("unusable private key: {0}")]
    Key(#[from] rustls::Error),
}

/// The process-wide crypto provider (ring), installed once.
pub fn provider() -> Arc<CryptoProvider> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    CryptoProvider::get_default().cloned().unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()))
}

/// A PEM error in words: rustls prints markers and lines as byte arrays (`[45, 45, ...]`).
fn pem_error(e: &rustls::pki_types::pem::Error) -> String {
    use rustls::pki_types::pem::Error;
    match e {
        Error::MissingSectionEnd { end_marker } => {
            format!("no \"-----END {}-----\" line", String::from_utf8_lossy(end_marker))
        }
        Error::IllegalSectionStart { line } => {
            format!("illegal section start {:?}", crate::errors::clip(&String::from_utf8_lossy(line)))
        }
        other => other.to_string(),
    }
}

/// Parses a PEM certificate chain and private key into a signing key for rustls.
pub fn certified_key(cert_pem: &[u8], key_pem: &[u8]) -> Result<CertifiedKey, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Pem(format!("certificate PEM: {}", pem_error(&e))))?;
    if chain.is_empty() {
        return Err(TlsError::Pem("certificate PEM holds no CERTIFICATE block".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| TlsError::Pem(format!("private key PEM: {}", pem_error(&e))))?;
    Ok(CertifiedKey::from_der(chain, key, &provider())?)
}

/// Parses PEM CA certificates (for client-certificate verification).
pub fn ca_certs(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Pem(format!("CA PEM: {}", pem_error(&e))))?;
    if certs.is_empty() {
        return Err(TlsError::Pem("CA PEM holds no CERTIFICATE block".into()));
    }
    Ok(certs)
}

/// The current serving certificate; swapped atomically on reload.
#[derive(Debug)]
pub struct CertStore {
    current: RwLock<Arc<CertifiedKey>>,
}

impl CertStore {
    /// A store serving `key`.
    pub fn new(key: CertifiedKey) -> Arc<Self> {
        Arc::new(Self { current: RwLock::new(Arc::new(key)) })
    }

    /// Replaces the certificate; new handshakes use it, established sessions are unaffected.
    pub fn replace(&self, key: CertifiedKey) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(key);
    }

    /// The certificate new handshakes get.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// Reads a certificate/key file pair.
pub fn load_files(cert: &Path, key: &Path) -> Result<(Vec<u8>, Vec<u8>), TlsError> {
    let read = |p: &Path| std::fs::read(p).map_err(|source| TlsError::Read { path: p.to_path_buf(), source });
    Ok((read(cert)?, read(key)?))
}

/// Polls the certificate files and swaps the served certificate when their content changes.
/// A half-written or broken pair is logged and the previous certificate kept. The first
/// look compares the files with what `store` serves, so a rotation between loading the store and
/// starting this task is not missed.
pub async fn reload_on_change(
    store: Arc<CertStore>,
    cert: PathBuf,
    key: PathBuf,
    every: Duration,
    stop: CancellationToken,
) {
    // What was applied last, and what was refused last (so a pair that stays broken is
    // reported once, not every look).
    type Pair = (Vec<u8>, Vec<u8>);
    let (mut last, mut refused): (Option<Pair>, Option<Pair>) = (None, None);
    crate::poll::every(every, &stop, || {
        let Ok(now) = load_files(&cert, &key) else { return };
        if last.as_ref() == Some(&now) || refused.as_ref() == Some(&now) {
            return;
        }
        match certified_key(&now.0, &now.1) {
            Ok(k) if k.cert == store.current().cert => last = Some(now),
            Ok(k) => {
                store.replace(k);
                tracing::info!(cert = %cert.display(), "serving certificate reloaded");
                last = Some(now);
            }
            // Typically the cert was written before the key: the key's change is tried again.
            Err(error) => {
                tracing::warn!(cert = %cert.display(), %error, "serving certificate not reloaded");
                refused = Some(now);
            }
        }
    })
    .await;
}

/// Requests a client certificate and checks the handshake signature, leaving chain verification
/// to the request handler (see module docs).
#[derive(Debug)]
struct RequestClientCert {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for RequestClientCert {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The server's rustls configuration: certificates from `store`, optional client certificates,
/// HTTP/2 and HTTP/1.1 by ALPN.
pub fn server_config(store: Arc<CertStore>) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = provider();
    let verifier = Arc::new(RequestClientCert { algorithms: provider.signature_verification_algorithms });
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(store);
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_errors_name_markers_in_text_not_bytes() {
        let e = ca_certs(b"-----BEGIN CERTIFICATE-----\nMIIB\n").err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("no \"-----END CERTIFICATE-----\" line"), "{e}");
        assert!(!e.contains("[45, 45"), "{e}");
    }

    #[tokio::test]
    async fn a_rotation_before_the_reloader_starts_is_not_missed() {
        let dir = tempfile::tempdir().expect("creating a temporary directory");
        let ca = crate::pki::Ca::generate("reload test ca").expect("generating the CA");
        let issue = || ca.issue_server(&["localhost".to_string()]).expect("issuing a serving certificate");
        let (loaded, rotated) = (issue(), issue());
        let store = CertStore::new(
            certified_key(loaded.cert_pem.as_bytes(), loaded.key_pem.as_bytes())
                .expect("loading the first certificate"),
        );
        // The files already hold the next pair when the reloader starts.
        let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        std::fs::write(&cert, &rotated.cert_pem).expect("writing the rotated tls.crt");
        std::fs::write(&key, &rotated.key_pem).expect("writing the rotated tls.key");
        let stop = CancellationToken::new();
        let task = tokio::spawn(reload_on_change(store.clone(), cert, key, Duration::from_millis(10), stop.clone()));
        let want = certified_key(rotated.cert_pem.as_bytes(), rotated.key_pem.as_bytes())
            .expect("loading the rotated certificate");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while store.current().cert != want.cert {
            assert!(tokio::time::Instant::now() < deadline, "the rotated pair was never served");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        stop.cancel();
        task.await.expect("joining the reloader task");
    }
}

//! The HTTPS server shared by the admission webhooks and the aggregated API: accepts TLS
//! connections, serves HTTP/1.1 and HTTP/2, tags each request with the client's certificate
//! chain, and drains open connections on shutdown.

pub mod status;
pub mod tls;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use rustls::ServerConfig;
use rustls::pki_types::CertificateDer;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;
use tower::{Service, ServiceExt};

/// The client certificate chain of the connection a request arrived on. In the extensions of
/// requests on connections that presented one; absent otherwise.
#[derive(Clone, Debug, Default)]
pub struct PeerCerts(pub Arc<[CertificateDer<'static>]>);

impl PeerCerts {
    /// The leaf certificate, if any.
    pub fn leaf(&self) -> Option<&CertificateDer<'static>> {
        self.0.first()
    }
}

/// How long a client may take to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long open connections get to finish after shutdown starts.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(15);

/// The next connection on `listener` (with Nagle off), or `None` once `stop` is cancelled.
/// Failed accepts (EMFILE and friends) are logged and retried after a pause instead of spinning.
pub(crate) async fn accept(listener: &TcpListener, stop: &CancellationToken) -> Option<(TcpStream, SocketAddr)> {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return None,
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    let _ = tcp.set_nodelay(true);
                    return Some((tcp, peer));
                }
                Err(error) => {
                    let listener = listener.local_addr().map_or_else(|_| "unknown".to_string(), |a| a.to_string());
                    tracing::warn!(%error, %listener, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}

/// The TLS handshake on `tcp`, given [`HANDSHAKE_TIMEOUT`]; a failure is logged (at debug: it is
/// the client's) and gives `None`.
pub(crate) async fn handshake(
    acceptor: &TlsAcceptor,
    tcp: TcpStream,
    peer: SocketAddr,
) -> Option<TlsStream<TcpStream>> {
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => Some(tls),
        Ok(Err(error)) => {
            tracing::debug!(%peer, %error, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out");
            None
        }
    }
}

/// Serves `app` over TLS on `listener` until `stop` is cancelled, then drains connections.
/// Requests on connections that presented a client certificate carry it as [`PeerCerts`].
pub async fn serve<S>(listener: TcpListener, tls: Arc<ServerConfig>, app: S, stop: CancellationToken)
where
    S: Service<hyper::Request<Incoming>, Response = axum::response::Response, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let acceptor = TlsAcceptor::from(tls);
    let graceful = GracefulShutdown::new();
    let mut builder = Builder::new(TokioExecutor::new());
    builder.http1().keep_alive(true);
    builder.http2().max_concurrent_streams(250);
    let builder = Arc::new(builder);
    while let Some((tcp, peer)) = accept(&listener, &stop).await {
        let acceptor = acceptor.clone();
        let app = app.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let Some(tls) = handshake(&acceptor, tcp, peer).await else { return };
            // No certificate, no extension: requests without one (the webhooks') skip the
            // extensions map altogether.
            let peer_certs =
                tls.get_ref().1.peer_certificates().filter(|c| !c.is_empty()).map(|c| PeerCerts(Arc::from(c)));
            let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
                if let Some(certs) = &peer_certs {
                    req.extensions_mut().insert(certs.clone());
                }
                app.clone().oneshot(req)
            });
            // No upgrades: nothing we serve switches protocols (watches are chunked responses).
            let conn = builder.serve_connection(TokioIo::new(tls), service);
            if let Err(error) = watcher.watch(conn.into_owned()).await {
                tracing::debug!(%peer, %error, "connection closed with error");
            }
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => tracing::info!("HTTPS connections drained"),
        _ = tokio::time::sleep(DRAIN_TIMEOUT) => tracing::warn!("HTTPS drain timed out; closing remaining connections"),
    }
}

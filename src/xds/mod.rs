//! The Envoy Gateway extension server: TailscaleServices and TailscaleEndpoints as route backends,
//! and TailscaleGateways as generated routes, served as Envoy Gateway's
//! `envoygateway.extension.EnvoyGatewayExtension` gRPC service over the shared cache.
//!
//! - [`backend`]: what one of our objects resolves to now (proxy Services, health, region, port).
//! - [`crate::core::envoy`]: the pure builders (cluster, generated routes, translation merge).
//! - [`translate`]: plans the clusters and routes TailscaleGateways add to a translation.
//! - [`service`]: the gRPC hooks; [`serve`] / [`serve_on`] run them with the health service.

pub mod backend;
pub mod metrics;
pub mod service;
pub mod translate;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tokio::net::TcpListener;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic_health::ServingStatus;

pub use metrics::XdsMetrics;
pub use service::{ExtensionService, HookSettings};

/// Generated code of the `envoygateway.extension` protobuf package (server and client).
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("envoygateway.extension");
}

/// Full gRPC service name, as Envoy Gateway calls it and as the health service reports it.
pub const SERVICE_NAME: &str = "envoygateway.extension.EnvoyGatewayExtension";
/// Default listen address (Envoy Gateway's examples use port 5005).
pub const DEFAULT_ADDR: &str = "0.0.0.0:5005";
/// Default largest message accepted or sent: a full translation of a big cluster is large, and
/// Envoy Gateway's `maxMessageSize` must not exceed it.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 256 * 1024 * 1024;

/// PEM files for serving TLS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// Serving certificate chain.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
    /// CA that client certificates must chain to; `None` accepts any client.
    pub client_ca: Option<PathBuf>,
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
    /// What the hooks need to know.
    pub hooks: HookSettings,
}

impl Default for XdsOptions {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([0, 0, 0, 0], 5005)),
            tls: None,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            hooks: HookSettings::default(),
        }
    }
}

/// Why the extension server could not run.
#[derive(Debug, thiserror::Error)]
pub enum XdsError {
    /// A TLS file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The listen address could not be bound.
    #[error("binding {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

fn read(path: &PathBuf) -> Result<Vec<u8>, XdsError> {
    std::fs::read(path).map_err(|source| XdsError::Read { path: path.clone(), source })
}

/// Builds the server TLS configuration from PEM files.
pub fn tls_config(files: &TlsFiles) -> Result<ServerTlsConfig, XdsError> {
    let mut tls = ServerTlsConfig::new().identity(Identity::from_pem(read(&files.cert)?, read(&files.key)?));
    if let Some(ca) = &files.client_ca {
        tls = tls.client_ca_root(Certificate::from_pem(read(ca)?));
    }
    Ok(tls)
}

/// Binds `opts.addr` and serves until `shutdown` completes.
pub async fn serve(
    cache: crate::cache::Cache,
    opts: XdsOptions,
    metrics: XdsMetrics,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), XdsError> {
    let listener = TcpListener::bind(opts.addr).await.map_err(|source| XdsError::Bind { addr: opts.addr, source })?;
    serve_on(listener, cache, opts, metrics, shutdown).await
}

/// Serves the extension service and the gRPC health service on an already bound listener until
/// `shutdown` completes. Health reports NOT_SERVING for the extension service until the cache has
/// loaded every kind, so a probe does not route Envoy Gateway to a replica that would answer from
/// an empty cache.
pub async fn serve_on(
    listener: TcpListener,
    cache: crate::cache::Cache,
    opts: XdsOptions,
    metrics: XdsMetrics,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), XdsError> {
    let local = listener.local_addr().ok();
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_service_status(SERVICE_NAME, ServingStatus::NotServing).await;
    let mut synced = cache.subscribe();
    let sync_cache = cache.clone();
    let health_task = tokio::spawn(async move {
        loop {
            if sync_cache.synced() {
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
    });
    let svc = pb::envoy_gateway_extension_server::EnvoyGatewayExtensionServer::new(ExtensionService::new(
        cache,
        opts.hooks.clone(),
        metrics,
    ))
    .max_decoding_message_size(opts.max_message_size)
    .max_encoding_message_size(opts.max_message_size);
    let mut builder = Server::builder().http2_keepalive_interval(Some(Duration::from_secs(30)));
    if let Some(files) = &opts.tls {
        builder = builder.tls_config(tls_config(files)?)?;
    }
    tracing::info!(addr = ?local, tls = opts.tls.is_some(), max_message_size = opts.max_message_size, "xds: extension server listening");
    let result = builder
        .add_service(health)
        .add_service(svc)
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown,
        )
        .await;
    health_task.abort();
    result.map_err(XdsError::from)
}

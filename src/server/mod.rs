//! The HTTPS server shared by the admission webhooks and the aggregated API: accepts TLS
//! connections, serves HTTP/1.1 and HTTP/2, tags each request with the client's certificate
//! chain, and drains open connections on shutdown. Also the plain-HTTP health listener.
//!
//! Every listener holds a fixed number of connection slots ([`Slots`]): a connection accepted
//! when all are taken is closed at once (accepting it keeps the kernel's backlog and `accept`
//! healthy; closing it keeps file descriptors for the slots that are allowed, the cache's own file
//! and API I/O and the other listeners). Connections are timed: the TLS handshake, the first
//! request's headers (and every HTTP/1 request's headers), and idleness between requests.

pub mod status;
pub mod tls;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use rustls::ServerConfig;
use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
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

/// Default largest number of open HTTPS connections (`--max-connections`).
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
/// Default time a client has to finish the TLS handshake (`--tls-handshake-timeout`).
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default time a client has to send its first request's headers, counted from the end of the
/// handshake (`--header-read-timeout`); later requests on a kept-alive connection have the idle
/// timeout to arrive in full.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Default time a connection with no request in flight stays open (`--idle-timeout`): longer
/// than Go clients keep idle connections (90 s), so they close first.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// Open connections the health listener holds: probes open one at a time.
pub const HEALTH_MAX_CONNECTIONS: usize = 64;
/// How long open connections get to finish after shutdown starts, or after they were asked to
/// close for being idle.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(15);

/// Limits of one listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Open connections; more are closed as soon as they are accepted.
    pub max_connections: usize,
    /// TLS handshake (HTTPS only).
    pub handshake_timeout: Duration,
    /// Headers of a request; the first request's counted from when the connection is ready.
    pub header_read_timeout: Duration,
    /// No request in flight.
    pub idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
        }
    }
}

impl Limits {
    /// The health listener's: few connections, short timeouts.
    pub fn health() -> Self {
        Self {
            max_connections: HEALTH_MAX_CONNECTIONS,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            header_read_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(30),
        }
    }
}

/// The open-connection slots of one listener. A connection holds its slot until it closes.
#[derive(Clone, Debug)]
pub struct Slots {
    free: Arc<Semaphore>,
    max: usize,
    flag: &'static str,
    refused: Arc<AtomicU64>,
    warned: Arc<crate::errors::Throttle>,
}

impl Slots {
    /// `max` slots; `flag` names the limit in warnings.
    pub fn new(max: usize, flag: &'static str) -> Self {
        let max = max.clamp(1, Semaphore::MAX_PERMITS);
        Self { free: Arc::new(Semaphore::new(max)), max, flag, refused: Arc::default(), warned: Arc::default() }
    }

    /// A slot for a connection from `peer`, or `None` when every slot is taken: the caller drops
    /// the connection, which closes it. Refusals are logged at most every 10 s, with their count.
    pub fn take(&self, peer: SocketAddr) -> Option<OwnedSemaphorePermit> {
        if let Ok(slot) = self.free.clone().try_acquire_owned() {
            return Some(slot);
        }
        let refused = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
        if self.warned.allow().is_some() {
            tracing::warn!(
                %peer,
                open = self.max,
                refused_total = refused,
                "connection limit reached ({} {}): closing new connections until some close",
                self.flag,
                self.max
            );
        }
        None
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.max - self.free.available_permits()
    }

    /// Connections closed at once because every slot was taken, since start.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Resolves once every connection has closed.
    async fn all_closed(&self) {
        let _ = self.free.acquire_many(u32::try_from(self.max).unwrap_or(u32::MAX)).await;
    }
}

/// A connection and the slot it holds (released when the connection is dropped).
#[derive(Debug)]
pub struct Held<T> {
    io: T,
    _slot: OwnedSemaphorePermit,
}

impl<T> Held<T> {
    /// `io` holding `slot`.
    pub fn new(io: T, slot: OwnedSemaphorePermit) -> Self {
        Self { io, _slot: slot }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Held<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Held<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

impl<T: tonic::transport::server::Connected> tonic::transport::server::Connected for Held<T> {
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

/// Raises this process's soft open-file limit to the hard limit (as Go programs do at start) and
/// returns the soft limit then in force, or `None` where there is none to read.
pub fn raise_open_file_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
        let limit = getrlimit(Resource::Nofile);
        match (limit.current, limit.maximum) {
            (Some(current), Some(maximum)) if current < maximum => {
                match setrlimit(Resource::Nofile, Rlimit { current: Some(maximum), maximum: Some(maximum) }) {
                    Ok(()) => Some(maximum),
                    Err(_) => Some(current),
                }
            }
            (Some(current), _) => Some(current),
            (None, _) => None,
        }
    }
    #[cfg(not(unix))]
    None
}

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
                    static THROTTLE: crate::errors::Throttle = crate::errors::Throttle::new();
                    if let Some(left_out) = THROTTLE.allow() {
                        tracing::warn!(%error, %listener, left_out, "accept failed");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}

/// The TLS handshake on `tcp`, given `timeout`; a failure is logged (at debug: it is the
/// client's) and gives `None`.
pub(crate) async fn handshake(
    acceptor: &TlsAcceptor,
    tcp: TcpStream,
    peer: SocketAddr,
    timeout: Duration,
) -> Option<TlsStream<TcpStream>> {
    match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
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

/// Requests in flight on one connection, and how many it has started.
#[derive(Clone, Copy, Default)]
struct Activity {
    in_flight: usize,
    started: u64,
}

/// Marks a request in flight until dropped: with its response body, so a streamed response (a
/// watch) keeps its connection busy until the last byte.
struct InFlight(Arc<watch::Sender<Activity>>);

impl InFlight {
    fn start(activity: &Arc<watch::Sender<Activity>>) -> Self {
        activity.send_modify(|a| {
            a.in_flight += 1;
            a.started += 1;
        });
        Self(activity.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.send_modify(|a| a.in_flight = a.in_flight.saturating_sub(1));
    }
}

/// A response body that keeps its request [`InFlight`] while it is being sent.
struct TrackedBody {
    body: axum::body::Body,
    _in_flight: InFlight,
}

impl hyper::body::Body for TrackedBody {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// Resolves once the connection has had no request in flight for `first` (before its first
/// request) or `idle` (after).
async fn idle(activity: &mut watch::Receiver<Activity>, first: Duration, idle: Duration) {
    loop {
        let Ok(now) = activity.wait_for(|a| a.in_flight == 0).await.map(|a| *a) else {
            return std::future::pending().await;
        };
        let wait = if now.started == 0 { first } else { idle };
        tokio::select! {
            _ = tokio::time::sleep(wait) => return,
            changed = activity.changed() => if changed.is_err() { return std::future::pending().await },
        }
    }
}

/// The HTTP/1.1 and HTTP/2 connection builder for `limits`.
fn builder(limits: &Limits) -> Arc<Builder<TokioExecutor>> {
    let mut builder = Builder::new(TokioExecutor::new());
    // hyper starts HTTP/1's header timer as soon as it waits for the next request, so on a
    // kept-alive connection it is the idle timeout too: give it the longer of the two. The first
    // request's deadline is `header_read_timeout`, kept by `serve_connection` for both protocols.
    let h1_header_timeout = limits.header_read_timeout.max(limits.idle_timeout);
    builder.http1().keep_alive(true).timer(TokioTimer::new()).header_read_timeout(h1_header_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(250)
        .keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(20));
    Arc::new(builder)
}

/// Serves `app` on one connection until it closes, closing it when it has been idle too long
/// (or never sent a request) and draining it when `stop` is cancelled. `peer_certs` are added to
/// every request's extensions.
async fn serve_connection<I, S>(
    io: I,
    peer: SocketAddr,
    app: S,
    peer_certs: Option<PeerCerts>,
    builder: &Builder<TokioExecutor>,
    limits: &Limits,
    stop: &CancellationToken,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Service<hyper::Request<Incoming>, Response = axum::response::Response, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let activity = Arc::new(watch::Sender::new(Activity::default()));
    let mut watching = activity.subscribe();
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        if let Some(certs) = &peer_certs {
            req.extensions_mut().insert(certs.clone());
        }
        let in_flight = InFlight::start(&activity);
        let call = app.clone().oneshot(req);
        async move {
            let resp = call.await?;
            Ok::<_, Infallible>(resp.map(|body| axum::body::Body::new(TrackedBody { body, _in_flight: in_flight })))
        }
    });
    // No upgrades: nothing we serve switches protocols (watches are chunked responses).
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    let mut closing: Option<Pin<Box<tokio::time::Sleep>>> = None;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(%peer, %error, "connection closed with error");
                }
                return;
            }
            _ = stop.cancelled(), if closing.is_none() => {
                conn.as_mut().graceful_shutdown();
                closing = Some(Box::pin(tokio::time::sleep(DRAIN_TIMEOUT)));
            }
            _ = idle(&mut watching, limits.header_read_timeout, limits.idle_timeout), if closing.is_none() => {
                tracing::debug!(%peer, "closing an idle connection");
                conn.as_mut().graceful_shutdown();
                closing = Some(Box::pin(tokio::time::sleep(DRAIN_TIMEOUT)));
            }
            _ = async { closing.as_mut().expect("armed").await }, if closing.is_some() => return,
        }
    }
}

/// Serves `app` over TLS on `listener` until `stop` is cancelled, then drains connections.
/// Requests on connections that presented a client certificate carry it as [`PeerCerts`].
pub async fn serve<S>(listener: TcpListener, tls: Arc<ServerConfig>, app: S, limits: Limits, stop: CancellationToken)
where
    S: Service<hyper::Request<Incoming>, Response = axum::response::Response, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let acceptor = TlsAcceptor::from(tls);
    let slots = Slots::new(limits.max_connections, "--max-connections");
    let builder = builder(&limits);
    while let Some((tcp, peer)) = accept(&listener, &stop).await {
        let Some(slot) = slots.take(peer) else { continue };
        let (acceptor, app, builder, stop) = (acceptor.clone(), app.clone(), builder.clone(), stop.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let Some(tls) = handshake(&acceptor, tcp, peer, limits.handshake_timeout).await else { return };
            // No certificate, no extension: requests without one (the webhooks') skip the
            // extensions map altogether.
            let peer_certs =
                tls.get_ref().1.peer_certificates().filter(|c| !c.is_empty()).map(|c| PeerCerts(Arc::from(c)));
            serve_connection(tls, peer, app, peer_certs, &builder, &limits, &stop).await;
        });
    }
    drop(listener);
    drain(&slots, "HTTPS").await;
}

/// Serves `app` over plain HTTP on `listener` until `stop` is cancelled (the health listener).
pub async fn serve_plain<S>(listener: TcpListener, app: S, limits: Limits, stop: CancellationToken)
where
    S: Service<hyper::Request<Incoming>, Response = axum::response::Response, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let slots = Slots::new(limits.max_connections, "health listener");
    let builder = builder(&limits);
    while let Some((tcp, peer)) = accept(&listener, &stop).await {
        let Some(slot) = slots.take(peer) else { continue };
        let (app, builder, stop) = (app.clone(), builder.clone(), stop.clone());
        tokio::spawn(async move {
            let _slot = slot;
            serve_connection(tcp, peer, app, None, &builder, &limits, &stop).await;
        });
    }
    drop(listener);
    drain(&slots, "health").await;
}

async fn drain(slots: &Slots, what: &str) {
    tokio::select! {
        _ = slots.all_closed() => tracing::info!("{what} connections drained"),
        _ = tokio::time::sleep(DRAIN_TIMEOUT) => tracing::warn!("{what} drain timed out; closing remaining connections"),
    }
}

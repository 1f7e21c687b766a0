//! The Tailscale API v2, as far as we use it: the [`TailscaleApi`] trait the
//! reconciler is written against (its wire models are the core's `tailscale` module). [`client`]
//! implements it over HTTPS; tests implement it in
//! memory or point the real client at a local server that follows the public API.

use std::future::Future;
use std::pin::Pin;

pub mod client;
#[cfg(any(test, feature = "test-util"))]
pub mod fake;

pub use crate::core::tailscale::{AuthKey, AuthKeyRequest, Device, VipService, magic_dns_suffix};

/// Errors from the Tailscale API.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The API answered with an error status after retries.
    #[error("tailscale API {method} {path}: HTTP {status}: {message}")]
    Status {
        /// HTTP method.
        method: String,
        /// Request path (never with secrets).
        path: String,
        /// HTTP status code.
        status: u16,
        /// The API's message.
        message: String,
    },
    /// Credentials were rejected (HTTP 401/403 on the token or a call).
    #[error("tailscale API rejected the credentials: {0}")]
    Unauthorized(String),
    /// Transport failure or timeout after retries.
    #[error("tailscale API unreachable: {0}")]
    Transport(String),
    /// The API answered something we could not parse.
    #[error("tailscale API returned an unexpected body: {0}")]
    Decode(String),
}

impl ApiError {
    /// Whether a later retry might succeed (429, 5xx, transport).
    pub fn is_transient(&self) -> bool {
        match self {
            ApiError::Status { status, .. } => *status == 429 || *status >= 500,
            ApiError::Transport(_) => true,
            ApiError::Unauthorized(_) | ApiError::Decode(_) => false,
        }
    }
}

/// Boxed future returned by [`TailscaleApi`] methods (keeps the trait object-safe).
pub type ApiFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, ApiError>> + Send + 'a>>;

/// The Tailscale API for one tailnet. Object-safe so the reconciler holds `Arc<dyn TailscaleApi>`
/// per TailscaleTailnet and tests substitute an in-memory implementation.
pub trait TailscaleApi: Send + Sync {
    /// All devices of the tailnet, with all fields.
    fn list_devices(&self) -> ApiFuture<'_, Vec<Device>>;
    /// One device by its legacy ID; `None` when it does not exist.
    fn get_device<'a>(&'a self, id: &'a str) -> ApiFuture<'a, Option<Device>>;
    /// Deletes a device; deleting a missing device succeeds.
    fn delete_device<'a>(&'a self, id: &'a str) -> ApiFuture<'a, ()>;
    /// Creates an auth key.
    fn create_auth_key<'a>(&'a self, req: &'a AuthKeyRequest) -> ApiFuture<'a, AuthKey>;
    /// All VIP services of the tailnet.
    fn list_vip_services(&self) -> ApiFuture<'_, Vec<VipService>>;
    /// One VIP service; `None` when it does not exist.
    fn get_vip_service<'a>(&'a self, name: &'a str) -> ApiFuture<'a, Option<VipService>>;
    /// Creates or replaces a VIP service (resend `addrs` when updating).
    fn put_vip_service<'a>(&'a self, svc: &'a VipService) -> ApiFuture<'a, ()>;
    /// Deletes a VIP service; deleting a missing one succeeds.
    fn delete_vip_service<'a>(&'a self, name: &'a str) -> ApiFuture<'a, ()>;
}

//! tailscale-gateway: one binary, one shared cache, four faces (admission webhooks, aggregated
//! API, reconciler, Envoy Gateway extension) over a pure core.
#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]

pub mod admission;
pub mod aggregated;
pub mod cache;
pub mod check;
pub mod errors;
pub mod install;
pub mod lease;
pub mod local;
pub mod manifest;
pub mod metrics;
pub mod pki;
pub mod poll;
pub mod rbac;
pub mod reconciler;
pub mod render;
pub mod runtime;
pub mod selfcert;
pub mod server;
pub mod tailscale;
pub mod xds;

/// The pure core (`crates/core`): its own crate, so the compiler keeps it free of I/O. Its
/// resource types are `crate::api`; the rest is `crate::core`.
pub use tailscale_gateway_core as core;
pub use tailscale_gateway_core::api;

//! tailscale-gateway: one binary, one shared cache, four faces (admission webhooks, aggregated
//! API, reconciler, Envoy Gateway extension) over a pure core.
#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]

pub mod api;
pub mod cache;
pub mod core;
pub mod reconciler;
pub mod render;
pub mod tailscale;

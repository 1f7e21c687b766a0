//! The pure core of tailscale-gateway: its resource types, and the rules and builders over plain
//! types, with no I/O.
//!
//! The admission webhook, the `check` CLI, the local-mode loader, the cache, the reconciler and the
//! xDS service all call these functions, so a rule lives in exactly one place. This is a crate of
//! its own so that the compiler keeps it pure: it depends on no runtime, HTTP, gRPC or Kubernetes
//! client crate (see its `Cargo.toml`).
#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]

pub mod api;
pub mod authz;
pub mod backends;
pub mod conditions;
pub mod dataplane;
pub mod defaults;
pub mod duration;
pub mod envoy;
pub mod field;
pub mod index;
pub mod names;
pub mod policy;
pub mod provision;
pub mod proxies;
pub mod resource;
pub mod routes;
pub mod selector;
pub mod tailscale;
pub mod translate;
pub mod unknown;
pub mod validate;
pub mod views;
pub mod vip;

pub use field::{FieldError, FieldPath};
pub use resource::{Kind, ObjectKey, Resource};

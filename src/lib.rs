//! edge-enrich: an IoT telemetry edge function.
//!
//! The core (everything but the `workers` adapter) is plain Rust: parsing, validation,
//! calibration, enrichment, batching policy and sink encoding. Host adapters are chosen by
//! target so that no host SDK reaches the core:
//! - `wasm32-unknown-unknown`: Cloudflare Workers (`worker` crate), see `workers`.
//! - `wasm32-wasip2`: Fermyon Spin and any wasi:http P3 host (`spin-sdk` crate), see `spin`;
//!   the `spin` feature selects the Spin flavour (variables, key-value) over the portable one.

pub mod api;
pub mod auth;
pub mod batch;
pub mod body;
pub mod calibration;
pub mod config;
pub mod cors;
pub mod enrich;
pub mod host;
pub mod ids;
pub mod log;
pub mod problem;
pub mod profile_cache;
pub mod query;
pub mod rate_limit;
pub mod reading;
pub mod sink;
pub mod spill;
pub mod workload;

#[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
pub mod workers;

#[cfg(all(target_os = "wasi", target_env = "p2"))]
pub mod spin;

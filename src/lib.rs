//! edge-enrich: an IoT telemetry edge function.
//!
//! The core (everything but the `workers` adapter) is plain Rust: parsing, validation,
//! calibration, enrichment, batching policy and sink encoding. Host adapters are chosen by
//! target so that no host SDK reaches the core:
//! - `wasm32-unknown-unknown`: Cloudflare Workers (`worker` crate), see [`workers`].

pub mod api;
pub mod batch;
pub mod body;
pub mod calibration;
pub mod config;
pub mod enrich;
pub mod host;
pub mod ids;
pub mod problem;
pub mod query;
pub mod reading;
pub mod sink;

#[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
pub mod workers;

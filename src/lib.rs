//! edge-enrich: an IoT telemetry edge function.
//!
//! A hexagon: a host-agnostic core that builds and tests natively, and thin host adapters.
//! - `domain`: readings, calibration, enrichment, ids.
//! - `http`: the API a device sees: routing, limits, credentials, bodies, problem documents.
//! - `delivery`: batching to the collector, retries, what a batch looks like on the wire.
//! - `ports`: the traits through which a host supplies configuration, time and storage.
//! - `config`, `log`: settings as loaded and validated; structured log lines.
//! - `hosts`: the Cloudflare Workers and Spin / wasi:http adapters, each compiled only for its
//!   own target, so no host SDK type reaches the core.

// Outside tests nothing may panic on a `None` or an `Err`: the few `expect`s say why they cannot.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod config;
pub mod delivery;
pub mod domain;
pub mod hosts;
pub mod http;
pub mod log;
pub mod ports;
pub mod workload;

//! edge-enrich: an IoT telemetry edge function.
//!
//! A hexagon: a host-agnostic core that builds and tests natively, and thin host adapters.
//! Layers, each naming only those above it in this list (`tests/layers.rs` keeps it so):
//! - `domain`: readings, calibration, enrichment, ids; errors in domain terms.
//! - `ports`, `log`: the traits through which a host supplies time, entropy, storage, outbound
//!   HTTP and logging, naming only domain types; structured log lines.
//! - `application`: delivery to the collector (the outbox engine, the shared outbox, batches on
//!   the wire) and the profile cache.
//! - `http`: the API a device sees: the request pipeline, routing, limits, credentials, bodies,
//!   and problem documents, the one place where an error becomes a status.
//! - `config`: settings as loaded and validated, and each part's policy built from them.
//! - `hosts`: the Cloudflare Workers and Spin / wasi:http adapters, each compiled only for its
//!   own target, so no host SDK type reaches the core.

// No unsafe code anywhere in the crate, host adapters included (the SDK macros' own expansions
// are theirs).
#![forbid(unsafe_code)]
// Outside tests nothing may panic on a `None` or an `Err`: the few `expect`s say why they cannot.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod application;
pub mod config;
pub mod domain;
pub mod hosts;
pub mod http;
pub mod log;
pub mod ports;

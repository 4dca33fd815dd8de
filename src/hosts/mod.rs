//! Host adapters, one per platform, chosen by target so that no host SDK reaches the core:
//! - `wasm32-unknown-unknown`: Cloudflare Workers (`worker` crate), see `workers`;
//! - `wasm32-wasip2`: Fermyon Spin and any wasi:http P3 host (`spin-sdk` crate), see `spin`; the
//!   `spin` cargo feature selects the Spin flavour (variables, key-value) over the portable one;
//! - every target: `memory`, no platform, the pipeline over ports in memory.

#[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
pub mod workers;

#[cfg(all(target_os = "wasi", target_env = "p2"))]
pub mod spin;

/// The in-memory host that tests, fuzz targets and benches drive the pipeline through.
pub mod memory;

// The Workers RPC body format is pure: built natively as well, so that its tests run with the
// rest (the adapter itself needs a Workers runtime).
#[cfg(all(test, not(target_arch = "wasm32")))]
#[path = "workers/wire.rs"]
mod workers_wire;

// Likewise the Spin key-value gate.
#[cfg(all(test, not(target_arch = "wasm32")))]
#[path = "spin/kv_gate.rs"]
mod spin_kv_gate;

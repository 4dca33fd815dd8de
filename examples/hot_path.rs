//! Times the core's hot path where it runs: build for wasm32-wasip1 and run under wasmtime
//! (`cargo xtask bench` does), or natively for comparison. Prints one JSON line of ns/reading.

use std::hint::black_box;
use std::time::Instant;

#[path = "../benches/support/workload.rs"]
mod workload;
use workload::Fixture;

fn per_reading_ns(
    iterations: u32,
    readings_per_iteration: u32,
    mut work: impl FnMut() -> usize,
) -> f64 {
    for _ in 0..iterations / 10 + 1 {
        black_box(work()); // warm up
    }
    let start = Instant::now();
    for _ in 0..iterations {
        black_box(work());
    }
    start.elapsed().as_nanos() as f64 / f64::from(iterations * readings_per_iteration)
}

fn main() {
    let f = Fixture::new();
    let get = per_reading_ns(20_000, 1, || f.get());
    let post = per_reading_ns(200, 500, || f.post_500());
    let encode = per_reading_ns(20_000, 50, || f.encode_batch_50());
    println!(
        "{{\"target\":\"{}\",\"get_ns_per_reading\":{get:.0},\"post_ndjson_500_ns_per_reading\":{post:.0},\"encode_json_batch_ns_per_reading\":{encode:.0}}}",
        if cfg!(target_family = "wasm") { "wasm32-wasip1 (wasmtime)" } else { "native" }
    );
}

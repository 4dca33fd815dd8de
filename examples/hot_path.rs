//! Times the core's hot path where it runs: build for wasm32-wasip1 and run under wasmtime
//! (`cargo xtask bench` does), or natively for comparison. Prints one JSON line of ns/reading.

use std::hint::black_box;
use std::time::Instant;

use edge_enrich::{sink, workload};

fn per_reading_ns(iterations: u32, readings_per_iteration: u32, mut work: impl FnMut()) -> f64 {
    for _ in 0..iterations / 10 + 1 {
        work(); // warm up
    }
    let start = Instant::now();
    for _ in 0..iterations {
        work();
    }
    start.elapsed().as_nanos() as f64 / f64::from(iterations * readings_per_iteration)
}

fn main() {
    let settings = workload::settings();
    let edge = workload::edge(&settings);
    let body = workload::ndjson_body(500);
    let (_, readings) = workload::handle(
        &settings,
        &edge,
        "POST",
        "",
        Some("application/x-ndjson"),
        body.as_bytes(),
    );
    assert_eq!(readings.len(), 500, "the workload must be accepted");

    let get = per_reading_ns(20_000, 1, || {
        black_box(workload::handle(
            &settings,
            &edge,
            "GET",
            black_box(workload::GET_QUERY),
            None,
            b"",
        ));
    });
    let post = per_reading_ns(200, 500, || {
        black_box(workload::handle(
            &settings,
            &edge,
            "POST",
            "",
            Some("application/x-ndjson"),
            black_box(body.as_bytes()),
        ));
    });
    let encode = per_reading_ns(20_000, 50, || {
        black_box(sink::encode_json_batch(
            "batch",
            "node",
            1,
            readings[..50].iter().map(String::as_str),
        ));
    });
    println!(
        "{{\"target\":\"{}\",\"get_ns_per_reading\":{get:.0},\"post_ndjson_500_ns_per_reading\":{post:.0},\"encode_json_batch_ns_per_reading\":{encode:.0}}}",
        if cfg!(target_family = "wasm") { "wasm32-wasip1 (wasmtime)" } else { "native" }
    );
}

//! Native cost of the core: `cargo bench --bench core`. The same work inside wasm is timed by
//! `examples/hot_path.rs` under wasmtime; `cargo xtask bench` runs both and reports ns/reading.

#[cfg(target_arch = "wasm32")]
fn main() {} // Criterion is native-only; the wasm figure comes from examples/hot_path.rs

#[cfg(not(target_arch = "wasm32"))]
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

// The fixture, shared with examples/hot_path.rs; not part of the library.
#[cfg(not(target_arch = "wasm32"))]
#[path = "support/workload.rs"]
mod workload;

#[cfg(not(target_arch = "wasm32"))]
fn core(c: &mut Criterion) {
    let fixture = workload::Fixture::new();
    let mut group = c.benchmark_group("core");
    for (name, readings, work) in [
        (
            "get_one_reading",
            1,
            workload::Fixture::get as fn(&_) -> usize,
        ),
        ("post_ndjson_500", 500, workload::Fixture::post_500),
        (
            "encode_json_batch_50",
            50,
            workload::Fixture::encode_batch_50,
        ),
    ] {
        group.throughput(Throughput::Elements(readings));
        group.bench_function(name, |b| b.iter(|| work(&fixture)));
    }
    group.finish();
}

#[cfg(not(target_arch = "wasm32"))]
criterion_group!(benches, core);
#[cfg(not(target_arch = "wasm32"))]
criterion_main!(benches);

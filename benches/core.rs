//! Native cost of the core: `cargo bench --bench core`. The same work inside wasm is timed by
//! `examples/hot_path.rs` under wasmtime; `cargo xtask bench` runs both and reports ns/reading.

#[cfg(target_arch = "wasm32")]
fn main() {} // Criterion is native-only; the wasm figure comes from examples/hot_path.rs

#[cfg(not(target_arch = "wasm32"))]
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
#[cfg(not(target_arch = "wasm32"))]
use edge_enrich::{sink, workload};

#[cfg(not(target_arch = "wasm32"))]
fn core(c: &mut Criterion) {
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
    assert_eq!(readings.len(), 500);

    let mut group = c.benchmark_group("core");
    group.throughput(Throughput::Elements(1));
    group.bench_function("get_one_reading", |b| {
        b.iter(|| workload::handle(&settings, &edge, "GET", workload::GET_QUERY, None, b""))
    });
    group.throughput(Throughput::Elements(500));
    group.bench_function("post_ndjson_500", |b| {
        b.iter(|| {
            workload::handle(
                &settings,
                &edge,
                "POST",
                "",
                Some("application/x-ndjson"),
                body.as_bytes(),
            )
        })
    });
    group.throughput(Throughput::Elements(50));
    group.bench_function("encode_json_batch_50", |b| {
        b.iter(|| {
            sink::encode_json_batch(
                "batch",
                "node",
                1,
                readings[..50].iter().map(String::as_str),
            )
        })
    });
    group.finish();
}

#[cfg(not(target_arch = "wasm32"))]
criterion_group!(benches, core);
#[cfg(not(target_arch = "wasm32"))]
criterion_main!(benches);

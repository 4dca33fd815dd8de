//! Parsing costs time linear in the body, whatever its shape (issue: a reading's unknown keys
//! were checked with a linear scan each, quadratic in a body of many keys). For adversarial
//! shapes from 1 KiB to the largest `MAX_BODY_BYTES`, the time per byte at each size must stay
//! within a constant factor of the best time per byte at that size or below (it may fall, where a
//! body is refused early; it must not grow): a quadratic parse at 10 MiB is thousands of times
//! slower per byte than at 1 KiB, so the bound is far from noise.
//! The best of a few runs is taken, and the token check's pre-scan is timed with the parse.

use std::time::{Duration, Instant};

use edge_enrich::http::body::{first_device_id, parse_readings, BodyFormat};

const MAX_BODY_BYTES: usize = 10 * 1024 * 1024;
const MAX_READINGS: usize = 10_000;
/// Per-byte time of any size may be at most this many times the best per-byte time.
const FACTOR: f64 = 12.0;

/// Bodies of about `size` bytes, one per adversarial shape.
fn shapes(size: usize) -> Vec<(&'static str, BodyFormat, Vec<u8>)> {
    let fill = |head: &str, unit: &dyn Fn(usize) -> String, tail: &str| {
        let mut s = String::from(head);
        let mut i = 0;
        while s.len() + tail.len() < size {
            s.push_str(&unit(i));
            i += 1;
        }
        s.push_str(tail);
        s.into_bytes()
    };
    vec![
        (
            "one object, many distinct keys",
            BodyFormat::Json,
            fill(
                r#"{"device_id":"a","temp":1"#,
                &|i| format!(",\"k{i}\":0"),
                "}",
            ),
        ),
        (
            "many readings, each with many keys",
            BodyFormat::Json,
            fill(
                "[",
                &|i| {
                    let keys: String = (0..30).map(|k| format!(",\"k{k}\":{i}")).collect();
                    format!(
                        "{}{{\"device_id\":\"a\",\"temp\":1{keys}}}",
                        if i == 0 { "" } else { "," }
                    )
                },
                "]",
            ),
        ),
        (
            "an array of empty objects",
            BodyFormat::Json,
            fill("[{}", &|_| ",{}".into(), "]"),
        ),
        (
            "a reading holding an array of empty objects",
            BodyFormat::Json,
            fill(
                r#"[{"device_id":"a","temp":1,"x":[{}"#,
                &|_| ",{}".into(),
                "]}]",
            ),
        ),
        (
            "one long string",
            BodyFormat::Json,
            fill(
                r#"{"device_id":"a","temp":1,"note":""#,
                &|_| "x\\\"".into(),
                "\"}",
            ),
        ),
        (
            "many numbers",
            BodyFormat::Json,
            fill(
                r#"{"device_id":"a","temp":1,"v":[0"#,
                &|i| format!(",{i}.5e-3"),
                "]}",
            ),
        ),
        (
            "NDJSON lines of many keys",
            BodyFormat::Ndjson,
            fill(
                "",
                &|i| {
                    let keys: String = (0..30).map(|k| format!(",\"k{k}\":{i}")).collect();
                    format!("{{\"temp\":1{keys},\"device_id\":\"a\"}}\n")
                },
                "",
            ),
        ),
    ]
}

fn best_of(runs: usize, f: impl Fn()) -> Duration {
    (0..runs)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .min()
        .unwrap()
}

#[test]
fn parse_time_per_byte_is_bounded_from_1_kib_to_max_body_bytes() {
    let sizes = [1024, 64 * 1024, MAX_BODY_BYTES];
    for (name, ..) in shapes(1024) {
        let mut per_byte = Vec::new();
        for &size in &sizes {
            let (_, format, body) = shapes(size).into_iter().find(|(n, ..)| *n == name).unwrap();
            let runs = if size >= 1024 * 1024 { 2 } else { 5 };
            let t = best_of(runs, || {
                let _ = std::hint::black_box(first_device_id(&body, format));
                let _ = std::hint::black_box(parse_readings(&body, format, MAX_READINGS));
            });
            per_byte.push((size, t.as_secs_f64() / body.len() as f64, t));
        }
        let mut best = f64::INFINITY;
        for (size, ns, t) in &per_byte {
            best = best.min(*ns);
            eprintln!("{name:40} {size:>9} B: {t:>10.2?} ({:.1} ns/B)", ns * 1e9);
            assert!(
                *ns <= best * FACTOR,
                "{name}: {size} B took {t:?}, {:.1}x the best time per byte",
                ns / best
            );
        }
    }
}

//! `cargo xtask bench`: every figure measured side by side in one run on this machine, on the
//! real runtimes, over loopback; printed as one table and written to `bench/results.json`.
//! Targets are reported as met / not met, never asserted: benches measure, tests assert.
//! `scripts/bench.sh` installs and builds what this needs, then runs it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::harness::*;

/// Each load run of a full bench.
const FULL_RUN_DURATION: Duration = Duration::from_secs(20);

pub struct Options {
    pub duration: Duration,
    pub connections: Vec<u32>,
    pub only: Option<String>,
}

impl Options {
    pub fn parse(args: &[String]) -> Result<Self, String> {
        let mut o = Options {
            duration: FULL_RUN_DURATION,
            connections: vec![100, 10],
            only: None,
        };
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
            match flag.as_str() {
                "--duration" => {
                    o.duration =
                        Duration::from_secs(value.parse().map_err(|e| format!("--duration: {e}"))?)
                }
                "--connections" => {
                    o.connections = value
                        .split(',')
                        .map(|c| c.parse().map_err(|e| format!("--connections: {e}")))
                        .collect::<Result<_, _>>()?
                }
                "--only" => o.only = Some(value.clone()),
                _ => return Err(format!("unknown flag {flag}")),
            }
        }
        Ok(o)
    }

    fn wants(&self, section: &str) -> bool {
        self.only.as_deref().is_none_or(|o| o == section)
    }

    /// One Workers runtime alone (`--only workerd`, `--only wrangler-dev`), or both.
    fn wants_runtime(&self, runtime: &str) -> bool {
        self.only
            .as_deref()
            .is_none_or(|o| o == "workers" || o == runtime)
    }
}

const GET_PATH: &str = "/v1/readings?device_id=bench-1&temp=21.5&unit=C";
const ADMIN: &str = "bench-admin-token";
/// `wasmtime serve`'s default --max-instance-reuse-count for WASIp3 components such as ours
/// (wasmtime-cli 48).
const WASMTIME_REUSE_COUNT: usize = 128;

/// A setting's default as the service documents it (`config::KEYS`), which the bench runs with.
fn default_of(key: &str) -> usize {
    edge_enrich::config::KEYS
        .iter()
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or_else(|| panic!("config::KEYS has no numeric default for {key}"))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn sh(cmd: &str) -> String {
    let out = Command::new("sh")
        .args(["-c", cmd])
        .current_dir(repo_root())
        .output()
        .expect("sh");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// One oha run: requests per second, latency percentiles in ms, and answers that were not 2xx.
fn load(url: &str, connections: u32, duration: Duration) -> Value {
    let out = Command::new("oha")
        .args([
            "--no-tui",
            "--wait-ongoing-requests-after-deadline",
            "--stats-success-breakdown",
            "--output-format",
            "json",
            "-z",
            &format!("{}s", duration.as_secs()),
            "-c",
            &connections.to_string(),
            url,
        ])
        .output()
        .expect("run oha (scripts/bench.sh installs it)");
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("oha output ({e}): {}", String::from_utf8_lossy(&out.stderr)));
    // oha's percentiles of all answers, or (with --stats-success-breakdown) of the 2xx ones.
    let ms = |set: &str, p: &str| v[set][p].as_f64().map(|s| s * 1000.0);
    let statuses = v["statusCodeDistribution"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    let total: u64 = statuses.values().filter_map(Value::as_u64).sum();
    let ok: u64 = statuses
        .iter()
        .filter(|(k, _)| k.starts_with('2'))
        .filter_map(|(_, n)| n.as_u64())
        .sum();
    let errors: u64 = v["errorDistribution"]
        .as_object()
        .map(|m| m.values().filter_map(Value::as_u64).sum())
        .unwrap_or(0);
    let rps = v["summary"]["requestsPerSec"].as_f64().unwrap_or(0.0);
    json!({
        "connections": connections,
        "rps": rps.round(),
        // What an ingest function is for: a 503 is answered fast and accepts nothing, so the
        // ratios compare requests answered 2xx per second.
        "ok_rps": if total == 0 { 0.0 } else { (rps * ok as f64 / total as f64).round() },
        "p50_ms": ms("latencyPercentiles", "p50"), "p99_ms": ms("latencyPercentiles", "p99"),
        // Latency of the 2xx answers alone, which the p99 targets compare: a peer that answers
        // most requests with a fast 503 has a low p99 overall.
        "ok_p99_ms": ms("latencyPercentilesSuccessful", "p99"),
        "max_ms": v["summary"]["slowest"].as_f64().map(|s| s * 1000.0),
        "responses": total, "non_2xx": total - ok, "errors": errors,
    })
}

/// What the collector saw of readings received since `since_ms`, once they stopped arriving.
fn delivery(collector: &Collector, since_ms: u64, requests_before: u64, expected: u64) -> Value {
    let url = format!("{}/delivery?since_ms={since_ms}", collector.url());
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = get(&url).json();
    while Instant::now() < deadline && last["readings"].as_u64().unwrap_or(0) < expected {
        std::thread::sleep(Duration::from_millis(250));
        last = get(&url).json();
    }
    let readings = last["readings"].as_u64().unwrap_or(0);
    let requests = last["requests"].as_u64().unwrap_or(0) - requests_before;
    json!({
        "readings": readings,
        "delivered_all_accepted": readings >= expected,
        "collector_requests_per_1000": if readings > 0 { (requests as f64 * 1000.0 / readings as f64 * 10.0).round() / 10.0 } else { 0.0 },
        "readings_per_batch": if last["batches"].as_u64().unwrap_or(0) > 0 { (readings as f64 / last["batches"].as_f64().unwrap_or(1.0) * 10.0).round() / 10.0 } else { 0.0 },
        "lag_p50_ms": last["lag_ms"]["p50"], "lag_p99_ms": last["lag_ms"]["p99"], "lag_max_ms": last["lag_ms"]["max"],
    })
}

fn admin_stats(base: &str) -> Value {
    ureq::get(&format!("{base}/admin/stats"))
        .set("authorization", &format!("Bearer {ADMIN}"))
        .call()
        .ok()
        .and_then(|r| r.into_string().ok())
        .and_then(|s| serde_json::from_str::<Value>(&s).ok())
        .map(|v| v["batchers"][0].clone())
        .unwrap_or(Value::Null)
}

/// Runs the load at each connection count against a started host; `delivers` hosts are also
/// checked at the collector.
fn measure(
    name: &str,
    base: &str,
    delivers: bool,
    admin: bool,
    collector: &Collector,
    o: &Options,
) -> Vec<Value> {
    let url = format!("{base}{GET_PATH}");
    let _ = load(&url, 10, Duration::from_secs(2)); // warm up isolates, JIT and connections
    std::thread::sleep(Duration::from_millis(800));
    let mut rows = Vec::new();
    for &c in &o.connections {
        let since = now_ms();
        let before = get(&format!("{}/delivery?since_ms={since}", collector.url())).json()
            ["requests"]
            .as_u64()
            .unwrap_or(0);
        let stats_before = if admin {
            admin_stats(base)
        } else {
            Value::Null
        };
        let mut row = load(&url, c, o.duration);
        if delivers {
            let accepted =
                row["responses"].as_u64().unwrap_or(0) - row["non_2xx"].as_u64().unwrap_or(0);
            row["delivery"] = delivery(collector, since, before, accepted);
        }
        if admin {
            let after = admin_stats(base);
            let calls = after["billed"]["requests"]["accept_calls"]
                .as_f64()
                .unwrap_or(0.0)
                - stats_before["billed"]["requests"]["accept_calls"]
                    .as_f64()
                    .unwrap_or(0.0);
            let readings = after["accepted_readings"].as_f64().unwrap_or(0.0)
                - stats_before["accepted_readings"].as_f64().unwrap_or(0.0);
            if readings > 0.0 {
                row["batcher_calls_per_1000"] = json!((calls * 1000.0 / readings).round());
            }
        }
        row["name"] = json!(name);
        eprintln!("  {name} c={c}: {row}");
        rows.push(row);
    }
    rows
}

fn edge_vars(collector: &Collector) -> Vec<(String, String)> {
    vec![
        ("COLLECTOR_URL".into(), collector.ingest_url()),
        ("EDGE_NODE".into(), "bench".into()),
        ("ADMIN_TOKEN".into(), ADMIN.into()),
        // The load comes from one device id, and the JS peer has no device auth: compare like
        // with like. The rate limiter still runs (and is paid for), with a limit never reached.
        ("AUTH_MODE".into(), "off".into()),
        ("RATE_LIMIT_READINGS_PER_S".into(), "1000000".into()),
        ("RATE_LIMIT_BURST".into(), "1000000".into()),
        (
            "CALIBRATION_PROFILES".into(),
            std::fs::read_to_string(repo_root().join("profiles/calibration.json"))
                .unwrap_or_default(),
        ),
    ]
}

fn workers_section(o: &Options, collector: &Collector, dir: &Path) -> Value {
    let root = repo_root();
    let peers = [
        ("edge-enrich", root.join("build/entry.mjs"), true),
        (
            "hello-rust",
            root.join("bench/peers/hello/build/index.js"),
            false,
        ),
        ("js-peer", root.join("bench/peers/js-worker/index.js"), true),
    ];
    let mut out = json!({});
    for runtime in ["wrangler-dev", "workerd"] {
        if !o.wants_runtime(runtime) {
            continue;
        }
        let mut rows = Vec::new();
        let mut startup = json!({});
        for (name, main_js, delivers) in &peers {
            let spec = WorkerSpec {
                main_js: main_js.clone(),
                vars: edge_vars(collector),
                batcher: *delivers,
            };
            let scratch_dir = dir.join(format!("{runtime}-{name}"));
            std::fs::create_dir_all(&scratch_dir).expect("scratch");
            let admin = *name == "edge-enrich";
            if runtime == "wrangler-dev" {
                let host = WorkersHost::start_worker(&scratch_dir, spec);
                startup[*name] = json!(host.startup.as_millis());
                rows.extend(measure(name, &host.url(""), *delivers, admin, collector, o));
            } else {
                let host = LocalServer::workerd(&scratch_dir, &spec);
                startup[*name] = json!(host.startup.as_millis());
                rows.extend(measure(name, &host.url(""), *delivers, admin, collector, o));
            }
        }
        out[runtime] = json!({ "runs": rows, "startup_ms": startup });
    }
    out
}

fn wasmtime_section(o: &Options, collector: &Collector, dir: &Path) -> Value {
    let root = repo_root();
    let components = [
        (
            "edge-enrich",
            root.join("target/components/edge_enrich_wasi_http.wasm"),
            true,
        ),
        (
            "hello-component",
            root.join("target/wasm32-wasip2/component/hello_peer.wasm"),
            false,
        ),
    ];
    let mut out = json!({});
    for (mode, one) in [("reuse", false), ("one-instance-per-request", true)] {
        let mut rows = Vec::new();
        let mut startup = json!({});
        for (name, component, delivers) in &components {
            let scratch_dir = dir.join(format!("wasmtime-{mode}-{name}"));
            std::fs::create_dir_all(&scratch_dir).expect("scratch");
            let vars = edge_vars(collector);
            let env: Vec<(&str, &str)> =
                vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let host = LocalServer::wasmtime(&scratch_dir, component, &env, one);
            startup[*name] = json!(host.startup.as_millis());
            rows.extend(measure(name, &host.url(""), *delivers, false, collector, o));
        }
        out[mode] = json!({ "runs": rows, "startup_ms": startup });
    }
    out
}

fn core_section() -> Value {
    let root = repo_root();
    let wasm = Command::new("wasmtime")
        .arg(root.join("target/wasm32-wasip1/release/examples/hot_path.wasm"))
        .output()
        .expect("wasmtime run");
    let native = Command::new(root.join("target/release/examples/hot_path"))
        .output()
        .expect("native hot_path");
    let parse = |o: &std::process::Output| {
        serde_json::from_slice::<Value>(&o.stdout).unwrap_or(Value::Null)
    };
    let criterion = |name: &str, readings: f64| {
        let path = root.join(format!("target/criterion/core/{name}/new/estimates.json"));
        std::fs::read_to_string(path)
            .ok()
            .and_then(|s| serde_json::from_str::<Value>(&s).ok())
            .and_then(|v| v["mean"]["point_estimate"].as_f64())
            .map(|ns| (ns / readings).round())
    };
    json!({
        "wasm": parse(&wasm),
        "native": parse(&native),
        "criterion_native_ns_per_reading": {
            "get_one_reading": criterion("get_one_reading", 1.0),
            "post_ndjson_500": criterion("post_ndjson_500", 500.0),
            "encode_json_batch_50": criterion("encode_json_batch_50", 50.0),
        },
    })
}

fn sizes_section() -> Value {
    let root = repo_root();
    let dry = sh("node_modules/.bin/wrangler deploy --dry-run --outdir target/bench/dist 2>&1 | grep 'Total Upload'");
    // "Total Upload: 740.60 KiB / gzip: 286.73 KiB"
    let nums: Vec<f64> = dry
        .split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .filter_map(|t| t.parse().ok())
        .collect();
    let file = |p: &str| {
        let path = root.join(p);
        json!({
            "bytes": std::fs::metadata(&path).map(|m| m.len()).ok(),
            "gzip_bytes": sh(&format!("gzip -9c {} | wc -c", path.display())).parse::<u64>().ok(),
        })
    };
    json!({
        "worker_upload_kib": nums.first(), "worker_upload_gzip_kib": nums.get(1),
        "spin_component": file("target/components/edge_enrich_spin.wasm"),
        "wasi_http_component": file("target/components/edge_enrich_wasi_http.wasm"),
        "hello_worker_wasm": file("bench/peers/hello/build/index_bg.wasm"),
        "hello_component": file("target/wasm32-wasip2/component/hello_peer.wasm"),
    })
}

fn find<'a>(runs: &'a Value, name: &str, c: u32) -> Option<&'a Value> {
    runs["runs"]
        .as_array()?
        .iter()
        .find(|r| r["name"] == name && r["connections"] == c)
}

struct Target {
    what: String,
    value: String,
    met: bool,
}

fn targets(r: &Value, o: &Options) -> Vec<Target> {
    let mut t = Vec::new();
    let mut check = |what: String, value: String, met: bool| t.push(Target { what, value, met });
    let f = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    let mut hosts: Vec<(String, &Value, &str)> = Vec::new();
    for rt in ["wrangler-dev", "workerd"] {
        hosts.push((rt.to_owned(), &r["workers"][rt], "hello-rust"));
    }
    for mode in ["reuse", "one-instance-per-request"] {
        hosts.push((
            format!("wasmtime {mode}"),
            &r["wasmtime"][mode],
            "hello-component",
        ));
    }
    for (host, runs, floor) in &hosts {
        for &c in &o.connections {
            let (Some(e), Some(fl)) = (find(runs, "edge-enrich", c), find(runs, floor, c)) else {
                continue;
            };
            check(
                format!("{host} c={c}: 0 non-2xx"),
                format!("{}", e["non_2xx"]),
                e["non_2xx"] == 0 && e["errors"] == 0,
            );
            let ratio = f(&e["ok_rps"]) / f(&fl["ok_rps"]);
            check(
                format!("{host} c={c}: 2xx rps >= 0.9x floor"),
                format!("{ratio:.2}x ({} vs {})", e["ok_rps"], fl["ok_rps"]),
                ratio >= 0.9,
            );
            let p99 = f(&e["ok_p99_ms"]) / f(&fl["ok_p99_ms"]);
            check(
                format!("{host} c={c}: 2xx p99 <= 1.2x floor"),
                format!(
                    "{p99:.2}x ({:.1} vs {:.1} ms)",
                    f(&e["ok_p99_ms"]),
                    f(&fl["ok_p99_ms"])
                ),
                p99 <= 1.2,
            );
            if let Some(js) = find(runs, "js-peer", c) {
                let vs = f(&e["ok_rps"]) / f(&js["ok_rps"]);
                let met = vs >= 1.0 && f(&e["ok_p99_ms"]) <= f(&js["ok_p99_ms"]);
                check(
                    format!("{host} c={c}: >= JS peer 2xx rps at <= its 2xx p99"),
                    format!(
                        "{vs:.2}x 2xx rps, 2xx p99 {:.1} vs {:.1} ms",
                        f(&e["ok_p99_ms"]),
                        f(&js["ok_p99_ms"])
                    ),
                    met,
                );
            }
            if let Some(d) = e.get("delivery") {
                let per = f(&d["collector_requests_per_1000"]);
                // Memory batches cannot outlive their instance: with one reading per request,
                // each instance's last batch is partial, whatever the policy.
                let floor = match host.as_str() {
                    "wasmtime reuse" => format!(
                        " (host floor {:.1}: wasmtime retires a WASIp3 instance after {WASMTIME_REUSE_COUNT} requests)",
                        WASMTIME_REUSE_COUNT.div_ceil(default_of("FLUSH_MAX_ITEMS")) as f64
                            * 1000.0
                            / WASMTIME_REUSE_COUNT as f64
                    ),
                    "wasmtime one-instance-per-request" => " (host floor 1000: one reading per instance)".into(),
                    _ => String::new(),
                };
                check(
                    format!("{host} c={c}: <= 21 collector requests / 1000 readings"),
                    format!("{per}{floor}"),
                    per <= 21.0,
                );
                let lag = f(&d["lag_p99_ms"]);
                check(
                    format!("{host} c={c}: delivery p99 <= max age + 100 ms"),
                    format!("{lag} ms"),
                    lag <= default_of("FLUSH_INTERVAL_MS") as f64 + 100.0,
                );
                check(
                    format!("{host} c={c}: every accepted reading delivered"),
                    format!("{}", d["readings"]),
                    d["delivered_all_accepted"] == true,
                );
            }
        }
    }
    // A partial run (--only) leaves the other sections null: no verdict on what was not run.
    let wasm_get = f(&r["core"]["wasm"]["get_ns_per_reading"]);
    if !wasm_get.is_nan() {
        check(
            "enrichment path in wasm <= 20 us/reading".into(),
            format!(
                "{:.1} us (GET), {:.1} us (500-reading POST)",
                wasm_get / 1000.0,
                f(&r["core"]["wasm"]["post_ndjson_500_ns_per_reading"]) / 1000.0
            ),
            wasm_get <= 20_000.0,
        );
    }
    let gz = f(&r["sizes"]["worker_upload_gzip_kib"]);
    if !gz.is_nan() {
        check(
            "Worker upload <= 250 KB gzip".into(),
            format!("{gz} KiB"),
            gz * 1.024 <= 250.0,
        );
    }
    let spin = f(&r["sizes"]["spin_component"]["bytes"]);
    if !spin.is_nan() {
        check(
            "Spin component <= 500 KB".into(),
            format!("{:.0} KB", spin / 1000.0),
            spin <= 500_000.0,
        );
    }
    t
}

fn print_table(r: &Value, o: &Options) {
    println!("\n{:<26} {:<17} {:>5} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7}  delivery (req/1000, rd/batch, lag p50/p99 ms)", "host", "handler", "conns", "rps", "2xx rps", "p50 ms", "p99 ms", "2xx p99", "max ms", "non2xx");
    let mut sections: Vec<(String, &Value)> = Vec::new();
    for rt in ["wrangler-dev", "workerd"] {
        sections.push((format!("workers/{rt}"), &r["workers"][rt]));
    }
    for mode in ["reuse", "one-instance-per-request"] {
        sections.push((format!("wasmtime/{mode}"), &r["wasmtime"][mode]));
    }
    for (host, runs) in sections {
        for row in runs["runs"].as_array().into_iter().flatten() {
            let n = |k: &str| {
                row[k]
                    .as_f64()
                    .map(|v| format!("{v:.1}"))
                    .unwrap_or_else(|| "-".into())
            };
            let d = &row["delivery"];
            let delivery = if d.is_object() {
                format!(
                    "{}, {}, {}/{}{}",
                    d["collector_requests_per_1000"],
                    d["readings_per_batch"],
                    d["lag_p50_ms"],
                    d["lag_p99_ms"],
                    row.get("batcher_calls_per_1000")
                        .map(|b| format!("; DO calls/1000: {b}"))
                        .unwrap_or_default()
                )
            } else {
                String::new()
            };
            println!(
                "{:<26} {:<17} {:>5} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7}  {delivery}",
                host,
                row["name"].as_str().unwrap_or("?"),
                row["connections"],
                n("rps"),
                n("ok_rps"),
                n("p50_ms"),
                n("p99_ms"),
                n("ok_p99_ms"),
                n("max_ms"),
                row["non_2xx"]
            );
        }
        println!(
            "{:<26} start-up to first 200 (ms): {}",
            "", runs["startup_ms"]
        );
    }
    let c = &r["core"];
    println!(
        "\ncore ns/reading: wasm {} | native {} | criterion {}",
        c["wasm"], c["native"], c["criterion_native_ns_per_reading"]
    );
    println!("sizes: {}", r["sizes"]);
    println!("\ntargets:");
    for t in targets(r, o) {
        println!(
            "  [{}] {:<58} {}",
            if t.met { "met" } else { "NOT met" },
            t.what,
            t.value
        );
    }
}

pub fn run(o: &Options) {
    let root = repo_root();
    let dir = root.join("target/bench");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("bench dir");
    let mut results = json!({
        "generated_at_ms": now_ms(),
        "command": format!("scripts/bench.sh --duration {} --connections {}", o.duration.as_secs(), o.connections.iter().map(u32::to_string).collect::<Vec<_>>().join(",")),
        "machine": { "cpus": sh("nproc"), "kernel": sh("uname -r"), "wasmtime": sh("wasmtime --version"), "wrangler": sh("node_modules/.bin/wrangler --version"), "oha": sh("oha --version") },
    });
    if o.wants("core") {
        eprintln!("core cost ...");
        results["core"] = core_section();
    }
    if o.wants("sizes") {
        eprintln!("sizes ...");
        results["sizes"] = sizes_section();
    }
    let collector_dir: PathBuf = dir.join("collector");
    std::fs::create_dir_all(&collector_dir).expect("collector dir");
    let collector = Collector::start(&collector_dir);
    if o.wants_runtime("workerd") || o.wants_runtime("wrangler-dev") {
        eprintln!("load on workerd (wrangler dev and workerd direct) ...");
        results["workers"] = workers_section(o, &collector, &dir);
    }
    if o.wants("wasmtime") {
        eprintln!("load on wasmtime serve ...");
        results["wasmtime"] = wasmtime_section(o, &collector, &dir);
    }
    results["targets"] = targets(&results, o)
        .into_iter()
        .map(|t| json!({ "target": t.what, "value": t.value, "met": t.met }))
        .collect();
    print_table(&results, o);
    // A partial run (--only, --duration) is written beside the full one, never over it: the
    // committed bench/results.json stays one whole run.
    let name = if o.only.is_some() || o.duration != FULL_RUN_DURATION || o.connections != [100, 10]
    {
        "bench/results-partial.json"
    } else {
        "bench/results.json"
    };
    let out = root.join(name);
    std::fs::write(
        &out,
        serde_json::to_string_pretty(&results).unwrap_or_default(),
    )
    .expect("write results");
    println!("\nwrote {}", out.display());
}

#[cfg(test)]
mod tests {
    use super::default_of;

    #[test]
    fn the_defaults_the_targets_use_are_documented_numbers() {
        assert!(default_of("FLUSH_MAX_ITEMS") > 0);
        assert!(default_of("FLUSH_INTERVAL_MS") > 0);
    }
}

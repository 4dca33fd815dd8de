//! `cargo xtask bench`: every figure measured side by side in one run on this machine, on the
//! real runtimes, over loopback; printed as one table and written to `bench/results.json`.
//! Targets are reported as met / not met, never asserted: benches measure, tests assert.
//! `scripts/bench.sh` installs and builds what this needs, then runs it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::de::DeserializeOwned;
use serde_json::json;

mod figures;
mod fleet_scale;
pub mod readme;
mod targets;

use crate::harness::*;
use figures::*;
use targets::{targets, Verdict};

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
const ADMIN: &str = "bench-admin-token-of-32-bytes-or-more";
/// `wasmtime serve`'s default --max-instance-reuse-count for WASIp3 components such as ours
/// (wasmtime-cli 48).
const WASMTIME_REUSE_COUNT: usize = 128;

/// A setting's default as the service documents it (`config::KEYS`), which the bench runs with.
fn default_of(key: &str) -> usize {
    match edge_enrich::config::key(key).map(|k| k.kind) {
        Some(edge_enrich::config::Kind::Integer { default, .. }) => default as usize,
        _ => panic!("config::KEYS has no integer default for {key}"),
    }
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
fn load(url: &str, connections: u32, duration: Duration) -> LoadRow {
    load_with(&[], url, connections, duration)
}

/// `load` with more oha flags (`--rand-regex-url`: the URL is a regex, expanded per request).
fn load_with(flags: &[&str], url: &str, connections: u32, duration: Duration) -> LoadRow {
    let out = Command::new("oha")
        .args(flags)
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
    let v: OhaReport = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("oha output ({e}): {}", String::from_utf8_lossy(&out.stderr)));
    let ms = |s: Option<f64>| s.map(|s| s * 1000.0);
    let total: u64 = v.status_code_distribution.values().sum();
    let ok: u64 = v
        .status_code_distribution
        .iter()
        .filter(|(k, _)| k.starts_with('2'))
        .map(|(_, n)| n)
        .sum();
    let rps = v.summary.requests_per_sec.unwrap_or(0.0);
    LoadRow {
        connections,
        rps: rps.round(),
        // What an ingest function is for: a 503 is answered fast and accepts nothing, so the
        // ratios compare requests answered 2xx per second.
        ok_rps: if total == 0 {
            0.0
        } else {
            (rps * ok as f64 / total as f64).round()
        },
        p50_ms: ms(v.latency_percentiles.p50),
        p99_ms: ms(v.latency_percentiles.p99),
        // Latency of the 2xx answers alone, which the p99 targets compare: a peer that answers
        // most requests with a fast 503 has a low p99 overall.
        ok_p99_ms: ms(v.latency_percentiles_successful.p99),
        max_ms: ms(v.summary.slowest),
        responses: total,
        non_2xx: total - ok,
        errors: v.error_distribution.values().sum(),
        ..LoadRow::default()
    }
}

/// A JSON document of another program, read into the fields the bench uses.
fn read_json<T: DeserializeOwned + Default>(body: &str) -> T {
    serde_json::from_str(body).unwrap_or_default()
}

fn collector_delivery(collector: &Collector, since_ms: u64) -> CollectorDelivery {
    let url = format!("{}/delivery?since_ms={since_ms}", collector.url());
    read_json(&get(&url).body)
}

/// What the collector saw of readings received since `since_ms`, once they stopped arriving.
fn delivery(collector: &Collector, since_ms: u64, requests_before: u64, expected: u64) -> Delivery {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = collector_delivery(collector, since_ms);
    while Instant::now() < deadline && last.readings < expected {
        std::thread::sleep(Duration::from_millis(250));
        last = collector_delivery(collector, since_ms);
    }
    let readings = last.readings;
    let requests = last.requests.saturating_sub(requests_before);
    let tenths = |x: f64| (x * 10.0).round() / 10.0;
    Delivery {
        readings,
        delivered_all_accepted: readings >= expected,
        collector_requests_per_1000: if readings > 0 {
            tenths(requests as f64 * 1000.0 / readings as f64)
        } else {
            0.0
        },
        readings_per_batch: if last.batches > 0 {
            tenths(readings as f64 / last.batches as f64)
        } else {
            0.0
        },
        lag_p50_ms: last.lag_ms.p50,
        lag_p99_ms: last.lag_ms.p99,
        lag_max_ms: last.lag_ms.max,
        transit_p50_ms: last.transit_ms.p50,
    }
}

fn admin_doc<T: DeserializeOwned + Default>(base: &str) -> T {
    ureq::get(&format!("{base}/admin/stats"))
        .set("authorization", &format!("Bearer {ADMIN}"))
        .call()
        .ok()
        .and_then(|r| r.into_string().ok())
        .map(|s| read_json(&s))
        .unwrap_or_default()
}

/// `measure` on a running host, with its start-up time noted under `name`.
fn measure_host(
    name: &str,
    host: &dyn EdgeHost,
    delivers: bool,
    admin: bool,
    collector: &Collector,
    o: &Options,
    runs: &mut HostRuns,
) {
    runs.startup_ms
        .insert(name.to_owned(), host.startup().as_millis() as u64);
    let cpu = || host.cpu_ms();
    let rows = measure(name, &host.base_url(), delivers, admin, &cpu, collector, o);
    runs.runs.extend(rows);
}

/// Runs the load at each connection count against a started host; `delivers` hosts are also
/// checked at the collector, and `admin` ones (Workers) report what their Durable Object was
/// billed for.
fn measure(
    name: &str,
    base: &str,
    delivers: bool,
    admin: bool,
    cpu_ms: &dyn Fn() -> f64,
    collector: &Collector,
    o: &Options,
) -> Vec<LoadRow> {
    let url = format!("{base}{GET_PATH}");
    let _ = load(&url, 10, Duration::from_secs(2)); // warm up isolates, JIT and connections
    std::thread::sleep(Duration::from_millis(800));
    let mut rows = Vec::new();
    for &c in &o.connections {
        let since = now_ms();
        let before = collector_delivery(collector, since).requests;
        let stats_before = admin.then(|| admin_doc::<WorkersAdminStats>(base));
        let cpu_before = cpu_ms();
        let mut row = load(&url, c, o.duration);
        row.name = name.to_owned();
        if row.responses > 0 {
            let per_request = (cpu_ms() - cpu_before) / row.responses as f64;
            row.cpu_ms_per_request = Some((per_request * 1000.0).round() / 1000.0);
        }
        if delivers {
            row.delivery = Some(delivery(collector, since, before, row.accepted()));
        }
        if let Some(before) = stats_before {
            let after = admin_doc::<WorkersAdminStats>(base);
            billing(&mut row, &before, &after, o.duration);
        }
        eprintln!(
            "  {name} c={c}: {}",
            serde_json::to_string(&row).unwrap_or_default()
        );
        rows.push(row);
    }
    rows
}

/// What the Durable Object was billed for between two `/admin/stats`, per 1,000 readings, and
/// what that costs.
fn billing(
    row: &mut LoadRow,
    before: &WorkersAdminStats,
    after: &WorkersAdminStats,
    run: Duration,
) {
    let (Some(b), Some(a)) = (before.batchers.first(), after.batchers.first()) else {
        return;
    };
    let readings = a.accepted_readings - b.accepted_readings;
    if readings <= 0.0 {
        return;
    }
    let per_1000 = |v: f64| (v * 10_000.0 / readings).round() / 10.0;
    let (rb, ra) = (&b.billed.requests, &a.billed.requests);
    let (sb, sa) = (&b.billed.storage, &a.billed.storage);
    let accept_calls = per_1000(ra.accept_calls - rb.accept_calls);
    let alarm_runs = per_1000(ra.alarm_runs - rb.alarm_runs);
    row.billed_per_1000_readings = Some(Billed {
        do_requests: per_1000(ra.accept_calls - rb.accept_calls + ra.alarm_runs - rb.alarm_runs),
        accept_calls,
        alarm_runs,
        alarms_set: per_1000(ra.alarms_set - rb.alarms_set),
        rows_written: per_1000(sa.rows_written - sb.rows_written),
        rows_read: per_1000(sa.rows_read - sb.rows_read),
    });
    row.usd_per_million_readings = cost_per_million_readings(row, run);
    // The answering isolate's group-commit call time (ms, moving average): one Durable Object
    // call's round trip, RPC and its one-row write.
    row.do_call_ms = after.isolate_lanes.values().find_map(|l| l.typical_call_ms);
}

/// Cloudflare's published prices, with the date they were read (bench/prices.json).
fn prices() -> Prices {
    let path = repo_root().join("bench/prices.json");
    std::fs::read_to_string(&path)
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or_else(|| panic!("{} is missing or not a price list", path.display()))
}

/// What a million GET readings cost on Cloudflare at this run's rates: one Worker request and
/// its CPU each, the Durable Object's requests, rows and duration (see bench/prices.json for
/// the prices and what is assumed). None without the counts.
fn cost_per_million_readings(row: &LoadRow, run: Duration) -> Option<Cost> {
    let p = prices();
    let price = &p.usd_per_million;
    let b = row.billed_per_1000_readings.as_ref()?;
    let cpu_ms = row.cpu_ms_per_request?;
    let readings = row.accepted() as f64;
    // Per reading, in US dollars; then per million, rounded to 1/10,000 of a dollar.
    let gb_s = p.do_memory_gb * run.as_secs_f64() / readings;
    let usd = |per_million: f64, count: f64| per_million * count;
    let round = |usd: f64| (usd * 10_000.0).round() / 10_000.0;
    let parts = [
        usd(price.worker_requests, 1.0),
        usd(price.worker_cpu_ms, cpu_ms),
        usd(price.do_requests, b.do_requests / 1000.0),
        usd(
            price.do_rows_written,
            (b.rows_written + b.alarms_set) / 1000.0,
        ),
        usd(price.do_rows_read, b.rows_read / 1000.0),
        usd(price.do_gb_s, gb_s),
    ];
    Some(Cost {
        worker_requests: round(parts[0]),
        worker_cpu: round(parts[1]),
        do_requests: round(parts[2]),
        do_rows_written: round(parts[3]),
        do_rows_read: round(parts[4]),
        do_duration: round(parts[5]),
        total: round(parts.iter().sum()),
        prices_read_on: p.read_on,
    })
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

fn workers_section(o: &Options, collector: &Collector, dir: &Path) -> Workers {
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
    let mut out = Workers::default();
    for runtime in ["wrangler-dev", "workerd"] {
        if !o.wants_runtime(runtime) {
            continue;
        }
        let mut runs = HostRuns::default();
        for (name, main_js, delivers) in &peers {
            let spec = WorkerSpec {
                main_js: main_js.clone(),
                vars: edge_vars(collector),
                batcher: *delivers,
                assets: (*name == "edge-enrich").then(|| repo_root().join("openapi")),
            };
            let scratch_dir = dir.join(format!("{runtime}-{name}"));
            std::fs::create_dir_all(&scratch_dir).expect("scratch");
            // Both delivering Workers report what their Durable Object is billed for.
            let host: Box<dyn EdgeHost> = if runtime == "wrangler-dev" {
                Box::new(WorkersHost::start_worker(&scratch_dir, spec))
            } else {
                Box::new(LocalServer::workerd(&scratch_dir, &spec))
            };
            measure_host(
                name,
                host.as_ref(),
                *delivers,
                *delivers,
                collector,
                o,
                &mut runs,
            );
        }
        match runtime {
            "wrangler-dev" => out.wrangler_dev = Some(runs),
            _ => out.workerd = Some(runs),
        }
    }
    out
}

fn wasmtime_section(o: &Options, collector: &Collector, dir: &Path) -> Wasmtime {
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
    let mut out = Wasmtime::default();
    for (mode, one) in [("reuse", false), ("one-instance-per-request", true)] {
        let mut runs = HostRuns::default();
        for (name, component, delivers) in &components {
            let scratch_dir = dir.join(format!("wasmtime-{mode}-{name}"));
            std::fs::create_dir_all(&scratch_dir).expect("scratch");
            let vars = edge_vars(collector);
            let env: Vec<(&str, &str)> =
                vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let host = LocalServer::wasmtime(&scratch_dir, component, &env, one);
            measure_host(name, &host, *delivers, false, collector, o, &mut runs);
        }
        if one {
            out.one_instance_per_request = Some(runs);
        } else {
            out.reuse = Some(runs);
        }
    }
    out
}

/// Devices the registry bench reads, each first unseen (cold), then cached (warm).
const REGISTRY_DEVICES: usize = 200;
const REGISTRY_SECRET: &str = "bench-registry-master-secret-0123456789";
const REGISTRY_AUDIENCE: &str = "https://bench.edge";
const REGISTRY_D: [u8; 32] = [0x42; 32];

/// Latency percentiles (ms) of `samples`.
fn percentiles(mut samples: Vec<f64>) -> Percentiles {
    samples.sort_by(f64::total_cmp);
    let at = |q: f64| {
        let ms = samples[((samples.len() - 1) as f64 * q).round() as usize];
        (ms * 100.0).round() / 100.0
    };
    Percentiles {
        n: samples.len(),
        p50_ms: at(0.5),
        p90_ms: at(0.9),
        p99_ms: at(0.99),
    }
}

/// Two GETs per device, back to back on one keep-alive connection, timed at the client: the
/// first for a device the edge has not seen (cold: its record read, its token's signature
/// checked), the second right after it (warm: both cached, on the same isolate or instance).
/// Every answer must be a 200 (a refused reading would time a shorter path).
fn timed_gets(base: &str, devices: &[String], auth: &dyn Fn(&str) -> String) -> ColdWarm {
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(30))
        .build();
    let (mut cold, mut warm) = (Vec::new(), Vec::new());
    for d in devices {
        for samples in [&mut cold, &mut warm] {
            let url = format!("{base}/v1/readings?device_id={d}&temp=21.5");
            let started = Instant::now();
            let r = agent.get(&url).set("authorization", &auth(d)).call();
            samples.push(started.elapsed().as_secs_f64() * 1000.0);
            match r {
                Ok(r) if r.status() == 200 => {}
                Ok(r) => panic!("registry bench: {} for {d}", r.status()),
                Err(e) => panic!("registry bench: {d}: {e}"),
            }
        }
    }
    ColdWarm {
        cold: percentiles(cold),
        warm: percentiles(warm),
    }
}

/// The registry's cost on the hot path (issue #21): a device's first request (its record read
/// from the store: cold) against later ones (cached: warm) and against the registry off, with
/// derived tokens; then device JWTs (an ES256 check per request: WebCrypto on Workers, p256 in
/// the component on wasmtime). Workers reads KV (`wrangler dev`, local KV); the portable
/// flavour has no store and reads its `REGISTRY` variable.
fn registry_section(collector: &Collector, dir: &Path) -> Registry {
    use edge_enrich::domain::device::to_base64url;
    use edge_enrich::http::{auth::MasterSecret, jwt};
    let devices: Vec<String> = (0..REGISTRY_DEVICES).map(|i| format!("reg-{i}")).collect();
    let (x, y) = jwt::public_point(&REGISTRY_D).expect("key");
    let record = format!(
        r#"{{"status":"active","tags":{{"site":"bench"}},"key_version":1,"keys":[{{"kid":"k1","alg":"ES256","x":"{}","y":"{}"}}]}}"#,
        to_base64url(&x),
        to_base64url(&y)
    );
    let secret = MasterSecret::new(REGISTRY_SECRET).expect("secret");
    let v0 = |d: &str| format!("Bearer {}", secret.device_key_v(d, 0));
    let v1 = |d: &str| format!("Bearer {}", secret.device_key_v(d, 1));
    // One token per device, signed once and re-sent, as a device does for its lifetime.
    let now = now_ms() / 1000;
    let tokens: std::collections::HashMap<String, String> = devices
        .iter()
        .map(|d| {
            let claims = json!({"sub": d, "aud": REGISTRY_AUDIENCE, "iat": now, "exp": now + 3600});
            let t = jwt::sign(&REGISTRY_D, "k1", &claims.to_string()).expect("token");
            (d.clone(), format!("Bearer {t}"))
        })
        .collect();
    let token = |d: &str| tokens[d].clone();
    let vars = |mode: &str, registry: &str| -> Vec<(String, String)> {
        let mut v = edge_vars(collector);
        v.retain(|(k, _)| k != "AUTH_MODE");
        v.extend([
            ("AUTH_SECRET".into(), REGISTRY_SECRET.into()),
            ("REGISTRY_TTL_S".into(), "3600".into()),
            ("JWT_AUDIENCE".into(), REGISTRY_AUDIENCE.into()),
        ]);
        match mode {
            "off" => v.extend([
                ("AUTH_MODE".into(), "token".into()),
                ("REGISTRY_MODE".into(), "off".into()),
            ]),
            "jwt" => v.extend([
                ("AUTH_MODE".into(), "jwt".into()),
                ("REGISTRY_MODE".into(), "required".into()),
            ]),
            _ => v.extend([
                ("AUTH_MODE".into(), "token".into()),
                ("REGISTRY_MODE".into(), "required".into()),
            ]),
        }
        if !registry.is_empty() {
            v.push(("REGISTRY".into(), registry.into()));
        }
        v
    };
    let mut out = Registry {
        devices: REGISTRY_DEVICES,
        ..Registry::default()
    };

    // wrangler dev: records in the local DEVICES namespace, one bulk write.
    let pairs: Vec<(String, String)> = devices
        .iter()
        .map(|d| (format!("device/{d}"), record.clone()))
        .collect();
    for mode in ["off", "token", "jwt"] {
        let scratch_dir = dir.join(format!("registry-wrangler-dev-{mode}"));
        std::fs::create_dir_all(&scratch_dir).expect("scratch");
        let spec = WorkerSpec {
            main_js: repo_root().join("build/entry.mjs"),
            vars: vars(mode, ""),
            batcher: true,
            assets: Some(repo_root().join("openapi")),
        };
        let host = WorkersHost::start_worker(&scratch_dir, spec);
        host.kv_bulk_put("DEVICES", &pairs);
        let base = host.url("");
        let auth: &dyn Fn(&str) -> String = match mode {
            "off" => &v0,
            "token" => &v1,
            _ => &token,
        };
        out.wrangler_dev
            .insert(mode, timed_gets(&base, &devices, auth));
    }

    // wasmtime serve, portable flavour: the records in its REGISTRY variable.
    let registry = format!(
        "{{{}}}",
        devices
            .iter()
            .map(|d| format!("\"{d}\":{record}"))
            .collect::<Vec<_>>()
            .join(",")
    );
    let component = repo_root().join("target/components/edge_enrich_wasi_http.wasm");
    for mode in ["off", "token", "jwt"] {
        let scratch_dir = dir.join(format!("registry-wasmtime-{mode}"));
        std::fs::create_dir_all(&scratch_dir).expect("scratch");
        let vars = vars(mode, if mode == "off" { "" } else { &registry });
        let env: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let host = LocalServer::wasmtime(&scratch_dir, &component, &env, false);
        let base = host.base_url();
        let auth: &dyn Fn(&str) -> String = match mode {
            "off" => &v0,
            "token" => &v1,
            _ => &token,
        };
        out.wasmtime.insert(mode, timed_gets(&base, &devices, auth));
    }
    out
}

/// How long the one-connection latency is measured.
const ONE_CONNECTION_RUN: Duration = Duration::from_secs(5);

/// The spin flavour against a hello-world component under a real `spin up`, when a Spin CLI is
/// there; then what one 500-reading NDJSON POST asks of key-value before its answer.
fn spin_section(o: &Options, collector: &Collector, dir: &Path) -> Spin {
    let Some(cli) = spin_cli() else {
        eprintln!("  SKIPPED: no Spin CLI (set SPIN=/path/to/spin)");
        return Spin::Skipped {
            skipped: "no Spin CLI".into(),
        };
    };
    let root = repo_root();
    let hello_dir = dir.join("spin-hello-component");
    std::fs::create_dir_all(&hello_dir).expect("scratch");
    let hello_manifest = hello_dir.join("spin.toml");
    std::fs::write(
        &hello_manifest,
        format!(
            "spin_manifest_version = 2\n[application]\nname = \"hello\"\n[[trigger.http]]\nroute = \"/...\"\ncomponent = \"hello\"\n[component.hello]\nsource = {}\n",
            serde_json::to_string(&root.join("target/wasm32-wasip2/component/hello_peer.wasm").display().to_string()).expect("path")
        ),
    )
    .expect("hello manifest");
    let vars = edge_vars(collector);
    let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut run = SpinRun {
        version: sh(&format!("{} --version", cli.display())),
        ..SpinRun::default()
    };
    {
        let edge_dir = dir.join("spin-edge-enrich");
        std::fs::create_dir_all(&edge_dir).expect("scratch");
        let host = SpinHost::start(&edge_dir, &vars);
        measure_host(
            "edge-enrich",
            &host,
            true,
            false,
            collector,
            o,
            &mut run.load,
        );
        run.instances_started
            .insert("edge-enrich".into(), instances_started(&host));
        // One keep-alive connection sending one reading at a time: a device or gateway that
        // keeps its connection (the latency a chunked answer once stalled by ~40 ms).
        run.one_connection.insert(
            "edge-enrich".into(),
            load(&host.url(GET_PATH), 1, ONE_CONNECTION_RUN),
        );
    }
    // A/B: the previous release's component (scripts/build-baseline.sh REV), same load, same
    // `spin up`, same run.
    if let Some(baseline) = std::env::var_os("BENCH_SPIN_BASELINE").map(std::path::PathBuf::from) {
        let manifest = baseline.join("spin.toml");
        if manifest.exists() {
            let edge_dir = dir.join("spin-baseline");
            std::fs::create_dir_all(&edge_dir).expect("scratch");
            let host = SpinHost::start_app(&edge_dir, &manifest, &vars, &[]);
            let name = format!(
                "baseline {}",
                std::fs::read_to_string(baseline.join("REV"))
                    .unwrap_or_default()
                    .trim()
            );
            measure_host(&name, &host, true, false, collector, o, &mut run.load);
            run.instances_started.insert(name, instances_started(&host));
        } else {
            eprintln!("  SKIPPED baseline: {} is missing", manifest.display());
        }
    }
    // The same load with Spin's state (its SQLite key-value file) on a tmpfs: no fsync, so
    // the difference is what the disk costs, and the rest is the design's.
    let tmpfs = Path::new("/dev/shm");
    if tmpfs.is_dir() {
        let edge_dir = tmpfs.join("edge-enrich-bench-spin");
        let _ = std::fs::remove_dir_all(&edge_dir);
        std::fs::create_dir_all(&edge_dir).expect("scratch on tmpfs");
        let host = SpinHost::start(&edge_dir, &vars);
        let name = "edge-enrich (state on tmpfs)";
        measure_host(name, &host, true, false, collector, o, &mut run.load);
        run.instances_started
            .insert(name.into(), instances_started(&host));
        drop(host);
        let _ = std::fs::remove_dir_all(&edge_dir);
    }
    {
        let host = SpinHost::start_app(&hello_dir, &hello_manifest, &[], &[]);
        measure_host(
            "hello-component",
            &host,
            false,
            false,
            collector,
            o,
            &mut run.load,
        );
        run.one_connection.insert(
            "hello-component".into(),
            load(&host.url("/"), 1, ONE_CONNECTION_RUN),
        );
    }
    run.durable_per_post_500 = spin_durable_per_post(collector, dir);
    Spin::Ran(Box::new(run))
}
/// Instances a `spin up` started so far (each logs `instance_started` once).
fn instances_started(host: &SpinHost) -> usize {
    host.component_log().matches("\"instance_started\"").count()
}

/// 20 NDJSON POSTs of 500 readings, one after the other (one instance serves them), then what
/// that instance asked of its durable stores on the request path: without and with the rate
/// limit.
fn spin_durable_per_post(collector: &Collector, dir: &Path) -> DurablePerPost {
    let body: String = (0..500)
        .map(|i| {
            format!(
                "{{\"device_id\":\"bench-post\",\"temp\":{}.5,\"seq\":{i}}}\n",
                i % 40
            )
        })
        .collect();
    let mut out = DurablePerPost::default();
    for (limited, rate) in [(false, "0"), (true, "1000000")] {
        let label = if limited {
            "rate_limit_on"
        } else {
            "rate_limit_off"
        };
        let scratch_dir = dir.join(format!("spin-kv-{label}"));
        std::fs::create_dir_all(&scratch_dir).expect("scratch");
        let ingest = collector.ingest_url();
        let host = SpinHost::start(
            &scratch_dir,
            &[
                ("COLLECTOR_URL", &ingest),
                ("AUTH_MODE", "off"),
                ("ADMIN_TOKEN", ADMIN),
                ("RATE_LIMIT_READINGS_PER_S", rate),
                ("RATE_LIMIT_BURST", "1000000"),
            ],
        );
        for _ in 0..20 {
            let r = post(&host.url("/v1/readings"), "application/x-ndjson", &body);
            assert_eq!(r.status, 200, "{}", r.body);
        }
        let stats: SpinAdminStats = admin_doc(&host.base_url());
        let requests = stats.appended_requests;
        let per = |n: Option<u64>| {
            n.filter(|_| requests > 0)
                .map(|n| n as f64 / requests as f64)
        };
        let calls = DurableCalls {
            requests_seen_by_instance: requests,
            sqlite_statements_per_request: per(stats.sqlite.request_path.statements),
            key_value_writes_per_request: per(stats.key_value.request_path.set),
            key_value_reads_per_request: per(stats.key_value.request_path.get),
            background_sqlite_statements: stats.sqlite.background.statements,
        };
        if limited {
            out.rate_limit_on = calls;
        } else {
            out.rate_limit_off = calls;
        }
    }
    out
}

fn core_section() -> Core {
    let root = repo_root();
    let wasm = Command::new("wasmtime")
        .arg(root.join("target/wasm32-wasip1/release/examples/hot_path.wasm"))
        .output()
        .expect("wasmtime run");
    let native = Command::new(root.join("target/release/examples/hot_path"))
        .output()
        .expect("native hot_path");
    let parse = |o: &std::process::Output| serde_json::from_slice::<HotPath>(&o.stdout).ok();
    let criterion = |name: &str, readings: f64| {
        #[derive(serde::Deserialize)]
        struct Estimates {
            mean: Estimate,
        }
        #[derive(serde::Deserialize)]
        struct Estimate {
            point_estimate: f64,
        }
        let path = root.join(format!("target/criterion/core/{name}/new/estimates.json"));
        std::fs::read_to_string(path)
            .ok()
            .and_then(|s| serde_json::from_str::<Estimates>(&s).ok())
            .map(|e| (e.mean.point_estimate / readings).round())
    };
    Core {
        wasm: parse(&wasm),
        native: parse(&native),
        criterion_native_ns_per_reading: [
            ("get_one_reading", criterion("get_one_reading", 1.0)),
            ("post_ndjson_500", criterion("post_ndjson_500", 500.0)),
            (
                "encode_json_batch_50",
                criterion("encode_json_batch_50", 50.0),
            ),
        ]
        .into(),
    }
}

fn sizes_section() -> Sizes {
    let root = repo_root();
    let dry = sh("node_modules/.bin/wrangler deploy --dry-run --outdir target/bench/dist 2>&1 | grep 'Total Upload'");
    // "Total Upload: 740.60 KiB / gzip: 286.73 KiB"
    let nums: Vec<f64> = dry
        .split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .filter_map(|t| t.parse().ok())
        .collect();
    let file = |p: &str| {
        let path = root.join(p);
        FileSize {
            bytes: std::fs::metadata(&path).map(|m| m.len()).ok(),
            gzip_bytes: sh(&format!("gzip -9c {} | wc -c", path.display()))
                .parse()
                .ok(),
        }
    };
    Sizes {
        worker_upload_kib: nums.first().copied(),
        worker_upload_gzip_kib: nums.get(1).copied(),
        spin_component: file("target/components/edge_enrich_spin.wasm"),
        wasi_http_component: file("target/components/edge_enrich_wasi_http.wasm"),
        hello_worker_wasm: file("bench/peers/hello/build/index_bg.wasm"),
        hello_component: file("target/wasm32-wasip2/component/hello_peer.wasm"),
    }
}

fn print_table(r: &Results, o: &Options) {
    let opt = |v: Option<f64>| v.map_or_else(|| "-".into(), |v| format!("{v}"));
    println!("\n{:<33} {:<17} {:>5} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7}  delivery (req/1000, rd/batch, lag p50/p99 ms, transit p50 ms)", "host", "handler", "conns", "rps", "2xx rps", "p50 ms", "p99 ms", "2xx p99", "max ms", "non2xx");
    let mut billing = Vec::new();
    for (host, _, runs) in r.host_runs() {
        for row in &runs.runs {
            let n = |v: Option<f64>| v.map_or_else(|| "-".into(), |v| format!("{v:.1}"));
            let delivery = match &row.delivery {
                Some(d) => format!(
                    "{}, {}, {}/{}, {}",
                    d.collector_requests_per_1000,
                    d.readings_per_batch,
                    opt(d.lag_p50_ms),
                    opt(d.lag_p99_ms),
                    opt(d.transit_p50_ms),
                ),
                None => String::new(),
            };
            if let Some(b) = &row.billed_per_1000_readings {
                billing.push(format!(
                    "  {:<20} {:<12} c={:<4} DO requests {:>6} ({} accept calls + {} alarm runs), rows written {:>6} + {} setAlarm, rows read {:>6}; CPU {} ms/request; DO call {} ms; ${} per million readings {}",
                    host,
                    row.name,
                    row.connections,
                    b.do_requests,
                    b.accept_calls,
                    b.alarm_runs,
                    b.rows_written,
                    b.alarms_set,
                    b.rows_read,
                    opt(row.cpu_ms_per_request),
                    opt(row.do_call_ms),
                    opt(row.usd_per_million_readings.as_ref().map(|c| c.total)),
                    serde_json::to_string(&row.usd_per_million_readings).unwrap_or_default()
                ));
            }
            println!(
                "{:<33} {:<17} {:>5} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7}  {delivery}",
                host,
                row.name,
                row.connections,
                n(Some(row.rps)),
                n(Some(row.ok_rps)),
                n(row.p50_ms),
                n(row.p99_ms),
                n(row.ok_p99_ms),
                n(row.max_ms),
                row.non_2xx
            );
        }
        println!(
            "{:<33} start-up to first 200 (ms): {:?}",
            "", runs.startup_ms
        );
    }
    if !billing.is_empty() {
        println!(
            "\nwhat Cloudflare bills, per 1000 readings (prices of {}, bench/prices.json):",
            prices().read_on
        );
        for line in billing {
            println!("{line}");
        }
    }
    if let Some(spin) = r.spin_run() {
        println!(
            "spin: durable calls per 500-reading POST: {}\nspin: instances started per host: {:?}",
            serde_json::to_string(&spin.durable_per_post_500).unwrap_or_default(),
            spin.instances_started
        );
    }
    if let Some(fleet) = &r.fleet {
        println!(
            "\nfleet: c={}, {}\n  {:<8} {:>9} {:>10} {:>9} {:>9} {:>10} {:>10} {:>9}  per 1000 readings",
            fleet.connections, fleet.how, "host", "devices", "fill rd/s", "2xx rps", "2xx p99", "RSS MiB", "buckets", "forgot"
        );
        for (host, runs) in [("workerd", &fleet.workerd), ("spin", &fleet.spin)] {
            let Some(runs) = runs else { continue };
            for row in &runs.rows {
                let billed = match (&row.load.billed_per_1000_readings, row.sqlite_statements_per_request) {
                    (Some(b), _) => format!(
                        "DO requests {}, rows written {} + {} setAlarm, rows read {}; ${} per million",
                        b.do_requests, b.rows_written, b.alarms_set, b.rows_read,
                        opt(row.load.usd_per_million_readings.as_ref().map(|c| c.total))
                    ),
                    (None, Some(s)) => format!("{:.0} SQLite statements (answering instance)", s * 1000.0),
                    _ => "-".into(),
                };
                let billed = format!(
                    "{billed}; collector CPU {} ms/request",
                    opt(row.collector_cpu_ms_per_request)
                );
                println!(
                    "  {:<8} {:>9} {:>10} {:>9} {:>9} {:>10.1} {:>10} {:>9}  {billed}",
                    host,
                    row.devices,
                    row.fill_readings_per_s,
                    row.load.ok_rps,
                    opt(row.load.ok_p99_ms.map(|p| (p * 10.0).round() / 10.0)),
                    row.rss_kib as f64 / 1024.0,
                    row.buckets_tracked
                        .or(row.rate_bucket_rows.map(|n| n as usize))
                        .map_or("-".into(), |n| n.to_string()),
                    row.buckets_forgotten_unrefilled
                        .map_or("-".into(), |n| n.to_string()),
                );
            }
            println!(
                "  {host}: {} bytes of resident memory per device held",
                opt(runs.bytes_per_tracked_device)
            );
        }
    }
    if let Some(registry) = &r.registry {
        println!("\nregistry: client latency p50 / p99 (ms), one keep-alive connection, {} devices each first unseen (cold), then cached (warm):", registry.devices);
        for (host, modes) in [
            ("wrangler-dev", &registry.wrangler_dev),
            ("wasmtime", &registry.wasmtime),
        ] {
            for (mode, row) in modes {
                println!(
                    "  {host:<13} {mode:<6} cold {} / {}   warm {} / {}",
                    row.cold.p50_ms, row.cold.p99_ms, row.warm.p50_ms, row.warm.p99_ms
                );
            }
        }
    }
    if let Some(c) = &r.core {
        println!(
            "\ncore ns/reading: wasm {} | native {} | criterion {:?}",
            serde_json::to_string(&c.wasm).unwrap_or_default(),
            serde_json::to_string(&c.native).unwrap_or_default(),
            c.criterion_native_ns_per_reading
        );
    }
    if let Some(sizes) = &r.sizes {
        println!(
            "sizes: {}",
            serde_json::to_string(sizes).unwrap_or_default()
        );
    }
    println!("\ntargets:");
    for t in targets(r, o) {
        println!("  [{}] {:<58} {}", t.verdict.as_str(), t.what, t.value);
    }
}

pub fn run(o: &Options) {
    let root = repo_root();
    let dir = root.join("target/bench");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("bench dir");
    let mut results = Results {
        generated_at_ms: now_ms(),
        command: format!(
            "scripts/bench.sh --duration {} --connections {}{}",
            o.duration.as_secs(),
            o.connections
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(","),
            o.only
                .as_deref()
                .map(|s| format!(" --only {s}"))
                .unwrap_or_default()
        ),
        machine: [
            ("cpus", sh("nproc")),
            ("kernel", sh("uname -r")),
            ("wasmtime", sh("wasmtime --version")),
            ("wrangler", sh("node_modules/.bin/wrangler --version")),
            ("oha", sh("oha --version")),
        ]
        .into(),
        ..Results::default()
    };
    if o.wants("core") {
        eprintln!("core cost ...");
        results.core = Some(core_section());
    }
    if o.wants("sizes") {
        eprintln!("sizes ...");
        results.sizes = Some(sizes_section());
    }
    let collector_dir: PathBuf = dir.join("collector");
    std::fs::create_dir_all(&collector_dir).expect("collector dir");
    let collector = Collector::start(&collector_dir);
    if o.wants_runtime("workerd") || o.wants_runtime("wrangler-dev") {
        eprintln!("load on workerd (wrangler dev and workerd direct) ...");
        results.workers = Some(workers_section(o, &collector, &dir));
    }
    if o.wants("wasmtime") {
        eprintln!("load on wasmtime serve ...");
        results.wasmtime = Some(wasmtime_section(o, &collector, &dir));
    }
    if o.wants("registry") {
        eprintln!("registry reads, cold and warm ...");
        results.registry = Some(registry_section(&collector, &dir));
    }
    if o.wants("spin") {
        eprintln!("load on spin up ...");
        results.spin = Some(spin_section(o, &collector, &dir));
    }
    if o.wants("fleet") {
        eprintln!("fleet: 1,000 to 1,000,000 devices on workerd and spin up ...");
        results.fleet = Some(fleet_scale::fleet_section(o, &dir));
    }
    results.targets = targets(&results, o)
        .into_iter()
        .map(|t| TargetRow {
            target: t.what,
            value: t.value,
            met: t.verdict == Verdict::Met,
            verdict: t.verdict.as_str(),
        })
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
    if name == "bench/results.json" {
        match write_readme_figures() {
            Ok(()) => println!("wrote README.md's figures"),
            Err(e) => eprintln!("README.md's figures not written: {e}"),
        }
    }
}

/// `cargo xtask readme-figures`, and after a full run: README.md's figures block rendered
/// again from the committed `bench/results.json`.
pub fn write_readme_figures() -> Result<(), String> {
    let root = repo_root();
    let results = std::fs::read_to_string(root.join("bench/results.json"))
        .map_err(|e| format!("bench/results.json: {e}"))?;
    let results: serde_json::Value =
        serde_json::from_str(&results).map_err(|e| format!("bench/results.json: {e}"))?;
    let path = root.join("README.md");
    let readme = std::fs::read_to_string(&path).map_err(|e| format!("README.md: {e}"))?;
    let updated = readme::splice(&readme, &readme::render(&results))?;
    std::fs::write(&path, updated).map_err(|e| format!("README.md: {e}"))
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

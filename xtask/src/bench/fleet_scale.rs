//! The fleet phase: the same GET load from 1,000, 100,000 and 1,000,000 distinct devices, on
//! workerd and on Spin, to show that per-device state costs the same per request at any fleet
//! size (issue #33). Each fleet is sent, not pre-filled: before its load, every device of it
//! not yet seen posts one reading (500 devices per NDJSON POST, four senders), so the edge
//! holds state for the whole fleet, up to its bounds; once the edge has delivered the fill, the
//! load picks a device of the fleet at random for every request (oha `--rand-regex-url`). Auth
//! and the registry are off, as in the probe the issue quotes; the rate limit is on at its
//! defaults, never reached.

use std::path::Path;
use std::time::{Duration, Instant};

use super::figures::{Fleet, FleetHost, FleetRow, LoadRow, SpinAdminStats, WorkersAdminStats};
use super::{admin_doc, billing, edge_vars, load_with, Options};
use crate::harness::*;

pub const FLEETS: [usize; 3] = [1_000, 100_000, 1_000_000];
/// Readings per fill POST: the default `MAX_READINGS_PER_REQUEST`.
const FILL_BATCH: usize = 500;
const FILL_SENDERS: usize = 4;
const CONNECTIONS: u32 = 100;

/// The zero-padded id of device `i`, so that a fleet of 10^k devices is one regex.
fn device(i: usize) -> String {
    format!("fleet-{i:07}")
}

/// The load's URL, a regex oha expands per request: any device of the first `fleet`. Literal
/// dots and `?` go in classes (`[.]`): oha 1.16 mangles a backslash escape (`--dump-urls`
/// shows `http://0.0.0.127/...`) and every request then fails before it is sent.
fn fleet_url(base: &str, fleet: usize) -> String {
    let digits = fleet.ilog10() as usize;
    let escaped = base.replace('.', "[.]");
    format!(
        "{escaped}/v1/readings[?]device_id=fleet-{}[0-9]{{{digits}}}&temp=21[.]5",
        "0".repeat(7 - digits)
    )
}

/// Posts one reading for each device in `from..to`; a 503 (backlog full) is sent again after
/// its Retry-After, as a device would. Returns readings per second.
fn fill(base: &str, from: usize, to: usize) -> f64 {
    let started = Instant::now();
    let url = format!("{base}/v1/readings");
    let chunks: Vec<(usize, usize)> = (from..to)
        .step_by(FILL_BATCH)
        .map(|s| (s, (s + FILL_BATCH).min(to)))
        .collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..FILL_SENDERS {
            s.spawn(|| loop {
                let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(&(a, b)) = chunks.get(n) else {
                    break;
                };
                let body: String = (a..b)
                    .map(|i| format!("{{\"device_id\":\"{}\",\"temp\":20.5}}\n", device(i)))
                    .collect();
                loop {
                    let r = post(&url, "application/x-ndjson", &body);
                    if r.status == 200 {
                        break;
                    }
                    assert_eq!(r.status, 503, "fill: {}", r.body);
                    let wait = r.header("retry-after").and_then(|v| v.parse().ok());
                    std::thread::sleep(Duration::from_secs(wait.unwrap_or(1)));
                }
            });
        }
    });
    ((to - from) as f64 / started.elapsed().as_secs_f64()).round()
}

/// The load over a fleet, with the runtime's CPU time per request.
fn fleet_load(o: &Options, base: &str, fleet: usize, cpu_ms: &dyn Fn() -> f64) -> LoadRow {
    let cpu_before = cpu_ms();
    let mut row = load_with(
        &["--rand-regex-url"],
        &fleet_url(base, fleet),
        CONNECTIONS,
        o.duration,
    );
    if row.responses > 0 {
        let per_request = (cpu_ms() - cpu_before) / row.responses as f64;
        row.cpu_ms_per_request = Some((per_request * 1000.0).round() / 1000.0);
    }
    row
}

/// The vars of the fleet phase: the bench's, with room for a fill's backlog and the default
/// rate limit (5 readings/s, a burst of 500), so that every device's bucket is state that
/// stays: one refills in 100 s, and the load spends at most a few hundred of its tokens.
fn vars(collector: &Collector) -> Vec<(String, String)> {
    let mut vars: Vec<(String, String)> = edge_vars(collector)
        .into_iter()
        .filter(|(k, _)| !k.starts_with("RATE_LIMIT_"))
        .collect();
    vars.push(("MAX_BACKLOG".into(), "100000".into()));
    vars.push(("RATE_LIMIT_READINGS_PER_S".into(), "5".into()));
    vars.push(("RATE_LIMIT_BURST".into(), "500".into()));
    vars
}

fn workerd(o: &Options, collector: &mut Collector, dir: &Path) -> FleetHost {
    let scratch = dir.join("fleet-workerd");
    std::fs::create_dir_all(&scratch).expect("scratch");
    let spec = WorkerSpec {
        main_js: repo_root().join("build/entry.mjs"),
        vars: vars(collector),
        batcher: true,
        assets: None,
    };
    let host = LocalServer::workerd(&scratch, &spec);
    let base = host.url("");
    fleets("workerd", &base, collector, &|| host.rss_kib(), |fleet| {
        let before = admin_doc::<WorkersAdminStats>(&base);
        let mut load = fleet_load(o, &base, fleet, &|| host.cpu_ms());
        let after = admin_doc::<WorkersAdminStats>(&base);
        billing(&mut load, &before, &after, o.duration);
        let buckets = after.batchers.first().and_then(|b| b.rate_limit.clone());
        FleetRow {
            buckets_tracked: buckets.as_ref().map(|b| b.tracked),
            buckets_forgotten_unrefilled: buckets.as_ref().map(|b| b.forgotten_unrefilled),
            load,
            ..FleetRow::default()
        }
    })
}

fn spin(o: &Options, collector: &mut Collector, dir: &Path) -> Option<FleetHost> {
    spin_cli()?;
    let scratch = dir.join("fleet-spin");
    std::fs::create_dir_all(&scratch).expect("scratch");
    let vars = vars(collector);
    let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let host = SpinHost::start(&scratch, &vars);
    let base = host.url("");
    Some(fleets(
        "spin",
        &base,
        collector,
        &|| host.rss_kib(),
        |fleet| {
            let load = fleet_load(o, &base, fleet, &|| host.cpu_ms());
            // The answering instance's own counts (every instance counts its own statements).
            let stats: SpinAdminStats = admin_doc(&base);
            let per_request = stats
                .sqlite
                .request_path
                .statements
                .filter(|_| stats.appended_requests > 0)
                .map(|n| (n as f64 / stats.appended_requests as f64 * 100.0).round() / 100.0);
            let rows = rusqlite::Connection::open(host.sqlite_db())
                .and_then(|db| db.query_row("SELECT count(*) FROM rate_buckets", [], |r| r.get(0)))
                .ok();
            FleetRow {
                sqlite_statements_per_request: per_request,
                rate_bucket_rows: rows,
                load,
                ..FleetRow::default()
            }
        },
    ))
}

/// Waits until the edge holds nothing: a fill of 900,000 readings takes the collector some
/// seconds to take, and a load measured meanwhile would share the host with that delivery.
fn settle(host: &str, base: &str) {
    let started = Instant::now();
    let pending = || {
        let doc: serde_json::Value = admin_doc(base);
        match doc["batchers"].as_array() {
            Some(batchers) => batchers.iter().filter_map(|b| b["pending"].as_u64()).sum(),
            None => doc["shared_outbox"]["pending"].as_u64().unwrap_or(u64::MAX),
        }
    };
    while pending() > 0 && started.elapsed() < Duration::from_secs(180) {
        std::thread::sleep(Duration::from_millis(500));
    }
    eprintln!(
        "  fleet {host}: the fill delivered {:.1} s after it was sent",
        started.elapsed().as_secs_f64()
    );
    std::thread::sleep(Duration::from_secs(2)); // and the store's checkpoint after it
}

/// Each fleet in turn on one host: its new devices sent, then `measure(fleet)`, with the fill
/// rate and the runtime's memory added to the row it returns.
fn fleets(
    host: &str,
    base: &str,
    collector: &mut Collector,
    rss_kib: &dyn Fn() -> u64,
    mut measure: impl FnMut(usize) -> FleetRow,
) -> FleetHost {
    let mut out = FleetHost::default();
    let mut seen = 0;
    for fleet in FLEETS {
        let fill_readings_per_s = fill(base, seen, fleet);
        seen = fleet;
        settle(host, base);
        // Each fleet's load against an empty collector: its tables grow with every reading
        // stored, and it shares the cores with the edge.
        collector.fresh();
        let collector_before = collector.cpu_ms();
        let measured = measure(fleet);
        let collector_cpu = collector.cpu_ms() - collector_before;
        let collector_cpu_ms_per_request = (measured.load.responses > 0)
            .then(|| (collector_cpu / measured.load.responses as f64 * 1000.0).round() / 1000.0);
        let row = FleetRow {
            devices: fleet,
            fill_readings_per_s,
            rss_kib: rss_kib(), // after the load, as the fleet's state then stands
            collector_cpu_ms_per_request,
            ..measured
        };
        eprintln!(
            "  fleet {host} {fleet}: {}",
            serde_json::to_string(&row).unwrap_or_default()
        );
        out.rows.push(row);
    }
    out.bytes_per_tracked_device = bytes_per_tracked(&out);
    out
}

/// The runtime's memory growth from the smallest fleet to the largest, per device it holds
/// state for then (buckets tracked in memory; on Spin they are rows in SQLite, and the
/// figure is what the instances grew by per device).
fn bytes_per_tracked(host: &FleetHost) -> Option<f64> {
    let (first, last) = (host.rows.first()?, host.rows.last()?);
    let tracked = |r: &FleetRow| r.buckets_tracked.unwrap_or(r.devices) as f64;
    let devices = tracked(last) - tracked(first);
    (devices > 0.0).then(|| {
        let grown = last.rss_kib as f64 - first.rss_kib as f64;
        (grown * 1024.0 / devices).round()
    })
}

/// The phase, with its own collector (emptied before each load).
pub fn fleet_section(o: &Options, dir: &Path) -> Fleet {
    let collector_dir = dir.join("fleet-collector");
    std::fs::create_dir_all(&collector_dir).expect("collector dir");
    let mut collector = Collector::start(&collector_dir);
    Fleet {
        workerd: Some(workerd(o, &mut collector, dir)),
        spin: spin(o, &mut collector, dir),
        connections: CONNECTIONS,
        how: "each fleet sent: one NDJSON reading per new device (500 per POST), delivered, \
              then GETs from a random device of the fleet to an emptied collector"
            .into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fleet_is_one_regex_over_its_padded_ids() {
        assert_eq!(
            fleet_url("http://127.0.0.1:80", 1000),
            "http://127[.]0[.]0[.]1:80/v1/readings[?]device_id=fleet-0000[0-9]{3}&temp=21[.]5"
        );
        assert_eq!(device(999), "fleet-0000999");
        assert!(fleet_url("", 1_000_000).contains("fleet-0[0-9]{6}"));
    }
}

//! The targets a bench run is judged against: met, not met, or missing (a figure the target
//! reads was not measured). Reported, never asserted: benches measure, tests assert.

use super::figures::{LoadRow, Results};
use super::{default_of, Options, WASMTIME_REUSE_COUNT};

pub struct Target {
    pub what: String,
    pub value: String,
    pub verdict: Verdict,
}

/// A target's verdict. `Missing`: a figure it reads is not in the results (a section that did
/// not run, or a figure the run could not take), reported as such rather than computed as NaN
/// and "not met".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Met,
    NotMet,
    Missing,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Met => "met",
            Self::NotMet => "NOT met",
            Self::Missing => "MISSING",
        }
    }
}

/// Collects verdicts; `f` reads an optional figure, and one that is absent marks the next
/// verdict `Missing`.
#[derive(Default)]
struct Judge {
    missing: std::cell::Cell<bool>,
    out: Vec<Target>,
}

impl Judge {
    fn f(&self, figure: Option<f64>) -> f64 {
        figure.unwrap_or_else(|| {
            self.missing.set(true);
            f64::NAN
        })
    }

    fn check(&mut self, what: String, value: String, met: bool) {
        let verdict = match (self.missing.replace(false), met) {
            (true, _) => Verdict::Missing,
            (false, true) => Verdict::Met,
            (false, false) => Verdict::NotMet,
        };
        self.out.push(Target {
            what,
            value,
            verdict,
        })
    }
}

fn opt(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v}"))
}

pub fn targets(r: &Results, o: &Options) -> Vec<Target> {
    let mut j = Judge::default();
    for (host, floor, runs) in r.host_runs() {
        for &c in &o.connections {
            let (Some(e), Some(fl)) = (runs.find("edge-enrich", c), runs.find(floor, c)) else {
                continue;
            };
            against_floor(&mut j, host, c, e, fl, runs.find("js-peer", c));
        }
    }
    // What Cloudflare bills, at load on workerd (100 connections, the measure).
    if let Some(e) = r
        .workers
        .as_ref()
        .and_then(|w| w.workerd.as_ref())
        .and_then(|runs| runs.find("edge-enrich", 100))
    {
        let b = e.billed_per_1000_readings.as_ref();
        let rows = j.f(b.map(|b| b.rows_written + b.alarms_set));
        j.check(
            "workerd c=100: <= 50 DO rows written / 1000 readings".into(),
            match b {
                Some(b) => format!(
                    "{rows:.1} ({} SQL rows + {} setAlarm)",
                    b.rows_written, b.alarms_set
                ),
                None => "-".into(),
            },
            rows <= 50.0,
        );
        let requests = j.f(b.map(|b| b.do_requests));
        j.check(
            "workerd c=100: <= 50 DO requests / 1000 readings".into(),
            match b {
                Some(b) => format!(
                    "{} ({} accept calls + {} alarm runs)",
                    b.do_requests, b.accept_calls, b.alarm_runs
                ),
                None => "-".into(),
            },
            requests <= 50.0,
        );
        let usd = j.f(e.usd_per_million_readings.as_ref().map(|c| c.total));
        j.check(
            "workerd c=100: <= $0.35 per million GET readings".into(),
            format!("${usd:.4} (Worker request floor $0.30)"),
            usd <= 0.35,
        );
    }
    if let Some(spin) = r.spin_run() {
        spin_targets(&mut j, spin, o);
    }
    if let Some(fleet) = &r.fleet {
        let hosts = [("workerd", &fleet.workerd), ("spin", &fleet.spin)];
        for (host, runs) in hosts {
            let Some(runs) = runs else { continue };
            // A fleet's load answered with errors measures nothing (e.g. a mangled URL).
            for row in &runs.rows {
                j.check(
                    format!("{host} fleet {}: 0 non-2xx", row.devices),
                    format!("{} of {}", row.load.non_2xx, row.load.responses),
                    row.load.non_2xx == 0 && row.load.responses > 0,
                );
            }
            let (small, large) = (runs.find(1_000), runs.find(1_000_000));
            let rps = |r: Option<&super::figures::FleetRow>| r.map(|r| r.load.ok_rps);
            let p99 = |r: Option<&super::figures::FleetRow>| r.and_then(|r| r.load.ok_p99_ms);
            let (a, b) = (j.f(rps(small)), j.f(rps(large)));
            j.check(
                format!("{host} fleet: 1,000,000 devices >= 0.9x the requests/s of 1,000"),
                format!("{b} vs {a} ({:.2}x)", b / a),
                b >= 0.9 * a,
            );
            let (a, b) = (j.f(p99(small)), j.f(p99(large)));
            j.check(
                format!("{host} fleet: 1,000,000 devices p99 <= 1.5x that of 1,000"),
                format!("{b:.1} vs {a:.1} ms ({:.2}x)", b / a),
                b <= 1.5 * a,
            );
        }
    }
    // A partial run (--only) leaves the other sections out: no verdict on what was not run.
    if let Some(core) = &r.core {
        let wasm = core.wasm.as_ref();
        let get = j.f(wasm.map(|w| w.get_ns_per_reading));
        j.check(
            "enrichment path in wasm <= 20 us/reading".into(),
            format!(
                "{:.1} us (GET), {} us (500-reading POST)",
                get / 1000.0,
                opt(wasm.map(|w| w.post_ndjson_500_ns_per_reading / 1000.0))
            ),
            get <= 20_000.0,
        );
    }
    if let Some(sizes) = &r.sizes {
        let gz = j.f(sizes.worker_upload_gzip_kib);
        j.check(
            "Worker upload <= 250 KB gzip".into(),
            format!("{gz} KiB"),
            gz * 1.024 <= 250.0,
        );
        let spin = j.f(sizes.spin_component.bytes.map(|b| b as f64));
        j.check(
            "Spin component <= 500 KB".into(),
            format!("{:.0} KB", spin / 1000.0),
            spin <= 500_000.0,
        );
    }
    j.out
}

/// The generic targets of a host's edge-enrich run against its floor (the hello handler) and,
/// where there is one, the JS peer.
fn against_floor(
    j: &mut Judge,
    host: &str,
    c: u32,
    e: &LoadRow,
    fl: &LoadRow,
    js: Option<&LoadRow>,
) {
    j.check(
        format!("{host} c={c}: 0 non-2xx"),
        format!("{}", e.non_2xx),
        e.non_2xx == 0 && e.errors == 0,
    );
    let ratio = e.ok_rps / fl.ok_rps;
    j.check(
        format!("{host} c={c}: 2xx rps >= 0.9x floor"),
        format!("{ratio:.2}x ({} vs {})", e.ok_rps, fl.ok_rps),
        ratio >= 0.9,
    );
    let (ours, floor) = (j.f(e.ok_p99_ms), j.f(fl.ok_p99_ms));
    j.check(
        format!("{host} c={c}: 2xx p99 <= 1.2x floor"),
        format!("{:.2}x ({ours:.1} vs {floor:.1} ms)", ours / floor),
        ours / floor <= 1.2,
    );
    if let Some(js) = js {
        let vs = e.ok_rps / js.ok_rps;
        let (ours, theirs) = (j.f(e.ok_p99_ms), j.f(js.ok_p99_ms));
        j.check(
            format!("{host} c={c}: >= JS peer 2xx rps at <= its 2xx p99"),
            format!("{vs:.2}x 2xx rps, 2xx p99 {ours:.1} vs {theirs:.1} ms"),
            vs >= 1.0 && ours <= theirs,
        );
    }
    let Some(d) = &e.delivery else { return };
    let per = d.collector_requests_per_1000;
    // Memory batches cannot outlive their instance: with one reading per request, each
    // instance's last batch is partial, whatever the policy.
    let floor = match host {
        "wasmtime reuse" => format!(
            " (host floor {:.1}: wasmtime retires a WASIp3 instance after {WASMTIME_REUSE_COUNT} requests)",
            WASMTIME_REUSE_COUNT.div_ceil(default_of("FLUSH_MAX_ITEMS")) as f64 * 1000.0
                / WASMTIME_REUSE_COUNT as f64
        ),
        "wasmtime one-instance-per-request" => " (host floor 1000: one reading per instance)".into(),
        _ => String::new(),
    };
    j.check(
        format!("{host} c={c}: <= 21 collector requests / 1000 readings"),
        format!("{per}{floor}"),
        per <= 21.0,
    );
    let lag = j.f(d.lag_p99_ms);
    j.check(
        format!("{host} c={c}: delivery p99 <= max age + 100 ms"),
        format!("{lag} ms"),
        lag <= default_of("FLUSH_INTERVAL_MS") as f64 + 100.0,
    );
    j.check(
        format!("{host} c={c}: every accepted reading delivered"),
        format!("{}", d.readings),
        d.delivered_all_accepted,
    );
}

/// The targets for the spin flavour at load (#19), beside the generic ones.
fn spin_targets(j: &mut Judge, spin: &super::figures::SpinRun, o: &Options) {
    let (off, on) = (
        &spin.durable_per_post_500.rate_limit_off,
        &spin.durable_per_post_500.rate_limit_on,
    );
    let writes = |j: &Judge, v: &super::figures::DurableCalls| {
        j.f(v.sqlite_statements_per_request) + j.f(v.key_value_writes_per_request)
    };
    let (w_off, w_on) = (writes(j, off), writes(j, on));
    j.check(
        "spin: durable statements per accepted request: 1, 2 with the rate limit".into(),
        format!(
            "rate limit off: {} SQLite statements + {} key-value writes; on: {} + {} (per 500-reading POST)",
            opt(off.sqlite_statements_per_request),
            opt(off.key_value_writes_per_request),
            opt(on.sqlite_statements_per_request),
            opt(on.key_value_writes_per_request)
        ),
        w_off <= 1.0 && w_on <= 2.0,
    );
    for &c in &o.connections {
        let (Some(e), Some(hello)) = (
            spin.load.find("edge-enrich", c),
            spin.load.find("hello-component", c),
        ) else {
            continue;
        };
        let limit = if c >= 100 { 50.0 } else { 20.0 };
        let p99 = j.f(e.ok_p99_ms);
        j.check(
            format!("spin up c={c}: 2xx p99 <= {limit} ms"),
            format!("{p99:.1} ms"),
            p99 <= limit,
        );
        let per_batch = j.f(e.delivery.as_ref().map(|d| d.readings_per_batch));
        j.check(
            format!("spin up c={c}: >= 40 readings per collector request"),
            format!("{per_batch}"),
            per_batch >= 40.0,
        );
        let ratio = e.ok_rps / hello.ok_rps;
        j.check(
            format!("spin up c={c}: 2xx rps >= 0.2x the hello component (stretch 0.4x)"),
            format!("{ratio:.3}x ({} vs {})", e.ok_rps, hello.ok_rps),
            ratio >= 0.2,
        );
        let baseline = spin
            .load
            .runs
            .iter()
            .find(|row| row.connections == c && row.name.starts_with("baseline"));
        if let Some(b) = baseline {
            let x = e.ok_rps / b.ok_rps;
            j.check(
                format!("spin up c={c}: 2xx rps >= 10x the previous release (same run)"),
                format!("{x:.1}x ({} vs {} for {})", e.ok_rps, b.ok_rps, b.name),
                x >= 10.0,
            );
        }
    }
    if let Some(one) = spin.one_connection.get("edge-enrich") {
        let p50 = j.f(one.p50_ms);
        let hello = spin
            .one_connection
            .get("hello-component")
            .and_then(|h| h.p50_ms);
        j.check(
            "spin: p50 <= 5 ms on one keep-alive connection, one reading at a time".into(),
            format!(
                "p50 {p50:.2} ms, p99 {} ms, {} rps (hello component: p50 {} ms)",
                opt(one.ok_p99_ms),
                one.ok_rps,
                opt(hello)
            ),
            p50 <= 5.0,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::super::figures::{HostRuns, LoadRow, Results, Workers};
    use super::*;
    use std::time::Duration;

    fn row(name: &str, ok_rps: f64, ok_p99_ms: Option<f64>) -> LoadRow {
        LoadRow {
            name: name.into(),
            connections: 100,
            ok_rps,
            ok_p99_ms,
            ..LoadRow::default()
        }
    }

    /// A figure a target reads that was not measured is reported as missing, not as a NaN
    /// that is "not met"; the figures that are there are judged as usual.
    #[test]
    fn a_missing_figure_is_reported_missing() {
        let r = Results {
            workers: Some(Workers {
                workerd: Some(HostRuns {
                    runs: vec![
                        row("edge-enrich", 1000.0, None),
                        row("hello-rust", 1000.0, Some(5.0)),
                    ],
                    ..HostRuns::default()
                }),
                ..Workers::default()
            }),
            ..Results::default()
        };
        let o = Options {
            duration: Duration::from_secs(1),
            connections: vec![100],
            only: Some("workerd".into()),
        };
        let all = targets(&r, &o);
        let verdict = |what: &str| {
            all.iter()
                .find(|t| t.what.contains(what))
                .map(|t| t.verdict)
                .unwrap_or_else(|| panic!("no target {what}"))
        };
        assert_eq!(verdict("2xx p99 <= 1.2x floor"), Verdict::Missing);
        assert_eq!(verdict("2xx rps >= 0.9x floor"), Verdict::Met);
        assert_eq!(verdict("0 non-2xx"), Verdict::Met);
        // No billing figures were taken: missing, not "not met".
        assert_eq!(verdict("DO requests"), Verdict::Missing);
    }

    #[test]
    fn a_section_that_did_not_run_has_no_verdicts() {
        let o = Options {
            duration: Duration::from_secs(1),
            connections: vec![100, 10],
            only: None,
        };
        assert!(targets(&Results::default(), &o).is_empty());
    }
}

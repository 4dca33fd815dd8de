//! The spin flavour (`spin.toml`, key-value outbox) under a real Spin CLI (`spin up`) against the
//! real reference collector and a real InfluxDB. Run by `scripts/test.sh` when a Spin CLI is
//! there (`SPIN=...`, else `../shared/tools/spin`):
//! `cargo test --test e2e_spin -- --ignored --test-threads=1`.

#![cfg(not(target_arch = "wasm32"))] // drives host processes; nothing to run inside wasm

mod support;

use std::time::{Duration, Instant};

use support::scenario::{standard_behaviour, Edge};
use support::traffic::Traffic;
use support::*;

fn spin_up(dir: &std::path::Path, vars: &[(&str, &str)]) -> SpinHost {
    SpinHost::start(dir, vars)
}

/// Answers on one keep-alive connection are framed by their length: Spin's HTTP server does not
/// set TCP_NODELAY, so a chunked answer's last chunk waited for the client's delayed ACK.
#[test]
#[ignore = "end-to-end: needs the built component, the collector and a Spin CLI (scripts/test.sh)"]
fn keep_alive_answers_are_framed_by_length() {
    let dir = scratch("spin-keep-alive");
    let collector = Collector::start(&dir);
    let host = spin_up(
        &dir,
        &[
            ("COLLECTOR_URL", &collector.ingest_url()),
            ("AUTH_MODE", "off"),
        ],
    );
    let accepted = support::scenario::keep_alive_answers_are_framed_by_length(&host.url(""));
    assert_eq!(accepted.len(), 7);
    collector.assert_stored_exactly(&accepted, Duration::from_secs(10));
}

/// The rate limit under concurrency: one device's bucket of 20, sixty concurrent requests of
/// one reading each, on as many instances as Spin starts for them: exactly 20 admitted, the
/// other 40 refused with 429 (the bucket is one atomic statement in Spin's SQLite, not a
/// key-value read and write that concurrent requests could interleave).
#[test]
#[ignore = "end-to-end: needs the built component, the collector and a Spin CLI (scripts/test.sh)"]
fn the_rate_limit_admits_exactly_the_bucket_under_concurrency() {
    let dir = scratch("spin-rate-limit");
    let collector = Collector::start(&dir);
    let host = spin_up(
        &dir,
        &[
            ("COLLECTOR_URL", &collector.ingest_url()),
            ("AUTH_MODE", "off"),
            ("MAX_READINGS_PER_REQUEST", "20"),
            ("RATE_LIMIT_BURST", "20"),
            // A token every 1,000 s: none earned while the test runs.
            ("RATE_LIMIT_READINGS_PER_S", "0.001"),
        ],
    );
    let base = host.url("");
    let threads: Vec<_> = (0..60)
        .map(|i| {
            let url = format!("{base}/v1/readings?device_id=hot&temp={i}");
            std::thread::spawn(move || get(&url).status)
        })
        .collect();
    let statuses: Vec<u16> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let admitted = statuses.iter().filter(|s| **s == 200).count();
    let limited = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!((admitted, limited), (20, 40), "{statuses:?}");
    // Another device has its own bucket.
    assert_eq!(
        get(&host.url("/v1/readings?device_id=cold&temp=1")).status,
        200
    );
    // What was admitted is delivered.
    wait_for(
        Duration::from_secs(20),
        "the admitted readings at the collector",
        || (collector.readings_of("hot").len() == 20).then_some(()),
    );
}

/// The behaviour every host shows (tests/support/scenario.rs), then a dead letter.
#[test]
#[ignore = "end-to-end: needs the built component, the collector and a Spin CLI (scripts/test.sh)"]
fn standard_behaviour_and_a_dead_letter() {
    let dir = scratch("spin-standard");
    let mut collector = Collector::start(&dir);
    let host = spin_up(
        &dir,
        &[
            ("COLLECTOR_URL", &collector.ingest_url()),
            ("AUTH_MODE", "off"),
            ("EDGE_NODE", "spin-node"),
        ],
    );
    let log = || host.log_text();
    let edge = Edge {
        base: host.url(""),
        platform: "spin",
        node: "spin-node",
        log: &log,
    };
    let mut accepted = standard_behaviour(&edge, &mut collector);

    // A batch the collector refuses for good is parked under `dead/` in key-value, not
    // retried; what comes after it is delivered.
    collector.set_faults(serde_json::json!({"refuse_devices": ["doomed"], "refuse_status": 400}));
    let doomed = accepted_ids(&get(&host.url("/v1/readings?device_id=doomed&temp=1"))).remove(0);
    wait_for(Duration::from_secs(10), "the stored dead letter", || {
        host.kv_keys("dead/")
            .iter()
            .any(|k| host.kv_get(k).is_some_and(|v| v.contains(&doomed)))
            .then_some(())
    });
    assert!(collector.readings_of("doomed").is_empty());
    accepted.extend(accepted_ids(&get(
        &host.url("/v1/readings?device_id=after-doomed&temp=2")
    )));
    collector.assert_stored_exactly(&accepted, Duration::from_secs(10));
}

#[test]
#[ignore = "needs the built artifacts and a Spin CLI; run by scripts/test.sh"]
fn hostile_inputs_in_token_and_hmac_mode() {
    support::hostile::in_both_modes("spin", spin_up);
}

#[test]
#[ignore = "needs the built artifacts, influxd and a Spin CLI; run by scripts/test.sh"]
fn ndjson_and_influx_sinks() {
    support::sinks::ndjson_and_influx("spin", spin_up);
}

/// `spin up` killed with SIGKILL while batches are on their way (the collector answers slowly),
/// then started again on the same state directory: every acknowledged reading arrives.
#[test]
#[ignore = "end-to-end: needs the built component, the collector and a Spin CLI (scripts/test.sh)"]
fn sigkill_mid_stream_and_restart_loses_nothing() {
    let dir = scratch("spin-sigkill");
    let collector = Collector::start(&dir);
    let mut host = spin_up(
        &dir,
        &[
            ("COLLECTOR_URL", &collector.ingest_url()),
            ("AUTH_MODE", "off"),
            ("ADMIN_TOKEN", "spin-admin-token-of-32-bytes-or-more"),
        ],
    );
    let mut traffic = Traffic::new(&host.url(""), 50, 40);
    collector.set_faults(serde_json::json!({"delay_ms": 400}));
    traffic.run_for(Duration::from_secs(5));
    host.crash_and_restart();
    let restarted = Instant::now();
    collector.set_faults(serde_json::json!({}));
    traffic.run_for(Duration::from_secs(3));
    let last = traffic
        .until_delivered(
            &collector,
            Duration::from_millis(250),
            Duration::from_secs(60),
        )
        .unwrap_or_else(|| {
            panic!(
                "not every acknowledged reading arrived:\n{}",
                host.log_text()
            )
        });
    eprintln!(
        "{} acknowledged readings; restart to the last delivery: {:.1} s",
        traffic.accepted.len(),
        since_ms(restarted, last)
    );
    collector.assert_stored_exactly(&traffic.accepted, Duration::from_secs(5));
    assert!(
        traffic.errors_since(restarted).is_empty(),
        "requests went unanswered after the restart: {:?}",
        traffic.errors_since(restarted)
    );
    // The admin API describes the instance that answers, with what it asked of key-value.
    let admin = |path: &str| -> serde_json::Value {
        ureq::get(&host.url(path))
            .set(
                "authorization",
                "Bearer spin-admin-token-of-32-bytes-or-more",
            )
            .call()
            .expect("admin answer")
            .into_json()
            .expect("JSON")
    };
    let stats = admin("/admin/stats");
    assert_eq!(stats["scope"], "instance", "{stats}");
    assert!(
        stats["key_value"]["request_path"]["set"].is_u64(),
        "{stats}"
    );
    assert!(admin("/admin/dead-letters")["dead_letters"].is_array());
}

/// The case of the issue: the collector goes down, `spin up` is killed and restarted during the
/// outage, and the collector comes back. Every acknowledged reading arrives; requests are answered
/// throughout; nothing is left stranded in key-value.
#[test]
#[ignore = "end-to-end: needs the built component, the collector and a Spin CLI (scripts/test.sh)"]
fn restart_during_a_collector_outage_loses_nothing() {
    let dir = scratch("spin-outage-restart");
    let mut collector = Collector::start(&dir);
    let mut host = spin_up(
        &dir,
        &[
            ("COLLECTOR_URL", &collector.ingest_url()),
            ("AUTH_MODE", "off"),
            ("RATE_LIMIT_READINGS_PER_S", "0"),
        ],
    );
    let mut traffic = Traffic::new(&host.url(""), 200, 40);
    traffic.run_for(Duration::from_secs(3));
    collector.stop();
    traffic.run_for(Duration::from_secs(7));
    eprintln!("{}", traffic.progress("collector down"));
    host.crash_and_restart();
    let restarted = Instant::now();
    traffic.run_for(Duration::from_secs(10));
    eprintln!("{}", traffic.progress("restarted during the outage"));
    collector.resume();
    let back = Instant::now();
    traffic.run_for(Duration::from_secs(5));
    let last = traffic
        .until_delivered(
            &collector,
            Duration::from_millis(250),
            Duration::from_secs(90),
        )
        .unwrap_or_else(|| {
            let stored = collector.stored_ids();
            let missing = traffic.accepted.difference(&stored).count();
            panic!(
                "{missing} of {} acknowledged readings never arrived:\n{}",
                traffic.accepted.len(),
                host.log_text()
            )
        });
    eprintln!(
        "{} acknowledged readings ({} refused); collector back to the last delivery: {:.1} s, restart to it: {:.1} s",
        traffic.accepted.len(),
        traffic.refused,
        since_ms(back, last),
        since_ms(restarted, last)
    );
    collector.assert_stored_exactly(&traffic.accepted, Duration::from_secs(5));
    assert!(
        traffic.errors_since(restarted).is_empty(),
        "requests went unanswered after the restart: {:?}",
        traffic.errors_since(restarted)
    );
    // Whatever was delivered is trimmed: once traffic has run past the grace period and
    // stopped, no segment is left behind in key-value.
    traffic.run_for(Duration::from_secs(7));
    wait_for(
        Duration::from_secs(10),
        "an empty outbox in key-value",
        || {
            let left = host.kv_keys(edge_enrich::delivery::kv_store::SEGMENT_PREFIX);
            left.is_empty().then_some(())
        },
    );
    collector.assert_stored_exactly(&traffic.accepted, Duration::from_secs(10));
}

/// Calibration profiles from the key-value store: a write under `calibration` is in use within
/// the TTL without a restart, and an invalid one changes nothing.
#[test]
#[ignore = "end-to-end: needs the built component, the collector and a Spin CLI (scripts/test.sh)"]
fn profiles_from_key_value_take_effect_without_restart() {
    let dir = scratch("spin-kv-profiles");
    let collector = Collector::start(&dir);
    let host = spin_up(
        &dir,
        &[
            ("COLLECTOR_URL", &collector.ingest_url()),
            ("AUTH_MODE", "off"),
            ("PROFILES_TTL_S", "1"),
        ],
    );
    let calibration = || {
        let r = get(&host.url("/v1/readings?device_id=kv-dev-1&temp=20"));
        assert_eq!(r.status, 200, "{}", r.body);
        let v = r.json();
        (
            v["temp_c"].as_f64().unwrap(),
            v["calibration"]["version"].as_u64(),
            v["profiles_version"].as_u64().unwrap(),
        )
    };
    assert_eq!(calibration(), (20.0, None, 1));
    host.kv_set(
        "calibration",
        r#"{"version":7,"profiles":[{"match":"kv-*","gain":1.0,"offset":1.5,"version":41}]}"#,
    );
    wait_for(Duration::from_secs(20), "the stored profile in use", || {
        (calibration() == (21.5, Some(41), 7)).then_some(())
    });
    let health = get(&host.url("/healthz")).json();
    assert_eq!(health["config"]["profiles"]["source"], "key-value store");
    host.kv_set(
        "calibration",
        r#"{"version":9,"profiles":[{"match":"kv-*","gain":-1,"version":43}]}"#,
    );
    // Ingest goes on: an instance that had the good set keeps it; one started since has only
    // the deployment's. Nothing of the invalid document is ever used.
    std::thread::sleep(Duration::from_secs(3));
    for _ in 0..20 {
        let seen = calibration();
        assert!(
            seen == (21.5, Some(41), 7) || seen == (20.0, None, 1),
            "an invalid write is never used: {seen:?}"
        );
    }
}

/// Milliseconds from `start` to the Unix time `unix_ms`, in seconds.
fn since_ms(start: Instant, unix_ms: u64) -> f64 {
    let start_unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
        - start.elapsed().as_millis() as u64;
    unix_ms.saturating_sub(start_unix_ms) as f64 / 1000.0
}

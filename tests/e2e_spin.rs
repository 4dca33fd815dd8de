//! The spin flavour (`spin.toml`, the shared outbox in Spin's SQLite) under a real Spin CLI
//! (`spin up`) against the real reference collector and a real InfluxDB. Run by `scripts/test.sh` when a Spin CLI is
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

/// The app's backlog bound, checked inside the append's one statement (the `outbox_append`
/// trigger): with the collector failing every batch, readings pile up to `MAX_BACKLOG`; the
/// request that would pass it is answered 503 `backlog-full` with a `Retry-After` and stores
/// nothing, and what was accepted is delivered once the collector is back.
#[test]
#[ignore = "end-to-end: needs the built component, the collector and a Spin CLI (scripts/test.sh)"]
fn a_full_backlog_refuses_the_request_whole_and_keeps_what_it_holds() {
    let dir = scratch("spin-backlog");
    let collector = Collector::start(&dir);
    collector.set_faults(serde_json::json!({"fail_rate": 1.0, "fail_status": 503}));
    let host = spin_up(
        &dir,
        &[
            ("COLLECTOR_URL", &collector.ingest_url()),
            ("AUTH_MODE", "off"),
            ("MAX_BACKLOG", "6"),
            ("MAX_READINGS_PER_REQUEST", "6"),
        ],
    );
    let mut accepted = std::collections::BTreeSet::new();
    for i in 0..6 {
        accepted.extend(accepted_ids(&get(
            &host.url(&format!("/v1/readings?device_id=pile&temp={i}"))
        )));
    }
    assert_eq!(accepted.len(), 6);
    let full = get(&host.url("/v1/readings?device_id=over&temp=1"));
    assert_backlog_full(&full);
    assert_eq!(host.outbox_rows(), 6, "the refused request stored nothing");
    collector.set_faults(serde_json::json!({}));
    collector.assert_stored_exactly(&accepted, Duration::from_secs(30));
    assert!(collector.readings_of("over").is_empty());
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

    // A batch the collector refuses for good is kept as a dead letter in the database, not
    // retried; what comes after it is delivered.
    collector.set_faults(serde_json::json!({"refuse_devices": ["doomed"], "refuse_status": 400}));
    let doomed = accepted_ids(&get(&host.url("/v1/readings?device_id=doomed&temp=1"))).remove(0);
    wait_for(Duration::from_secs(10), "the stored dead letter", || {
        host.dead_letter_bodies()
            .iter()
            .any(|body| body.contains(&doomed))
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
    // The admin API describes the instance that answers, with the statements it ran, and the
    // shared outbox as every instance sees it.
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
        stats["sqlite"]["request_path"]["statements"].is_u64(),
        "{stats}"
    );
    assert!(stats["shared_outbox"]["pending"].is_i64(), "{stats}");
    assert!(admin("/admin/dead-letters")["dead_letters"].is_array());
    // Delivered rows are deleted. A claim the SIGKILL cut off (sent, not yet deleted) keeps its
    // rows until its lease expires; then the next claim takes them again: with traffic going
    // on, the table empties within the lease, and nothing arrives that was not accepted.
    wait_for(
        Duration::from_secs(45),
        "an empty outbox table once the cut-off claim's lease expired",
        || {
            traffic.send_one();
            std::thread::sleep(Duration::from_millis(500));
            (host.outbox_rows() == 0).then_some(())
        },
    );
    collector.assert_stored_exactly(&traffic.accepted, Duration::from_secs(10));
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
    // Delivered rows are deleted: nothing is left in the outbox table.
    wait_for(Duration::from_secs(10), "an empty outbox table", || {
        (host.outbox_rows() == 0).then_some(())
    });
    // Once, apart from batches whose lease expired while they were being sent.
    let stats = collector.stats();
    let duplicates = stats["duplicates"].as_u64().unwrap_or(0);
    let readings = traffic.accepted.len() as u64;
    eprintln!(
        "duplicates: {duplicates} of {readings} readings ({} batches, {} batch retries)",
        stats["batches"], stats["batch_retries"]
    );
    assert!(
        duplicates * 100 <= readings,
        "{duplicates} of {readings} readings arrived twice (more than 1%)"
    );
}

/// Two `spin up` on one SQLite database (two hosts sharing one store, as a fleet shares a libSQL
/// database), both under load: every acknowledged reading arrives once, batches are cut across
/// both hosts' readings, and both deliver.
#[test]
#[ignore = "end-to-end: needs the built component, the collector and a Spin CLI (scripts/test.sh)"]
fn two_spin_up_on_one_database_share_one_outbox() {
    let dir = scratch("spin-two-hosts");
    let collector = Collector::start(&dir);
    let db = dir.join("shared-outbox.db");
    let vars = |node: &'static str| {
        vec![
            ("COLLECTOR_URL", collector.ingest_url()),
            ("AUTH_MODE", "off".to_owned()),
            ("RATE_LIMIT_READINGS_PER_S", "0".to_owned()),
            ("EDGE_NODE", node.to_owned()),
        ]
    };
    let start = |name: &str, node: &'static str| {
        let dir = dir.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let vars = vars(node);
        let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
        SpinHost::start_sharing(&dir, &db, &vars)
    };
    let (a, b) = (start("a", "node-a"), start("b", "node-b"));
    // Four senders per host, 100 requests a second each.
    let accepted: Vec<std::collections::BTreeSet<String>> = std::thread::scope(|s| {
        let senders: Vec<_> = [&a, &b]
            .iter()
            .flat_map(|host| (0..4).map(move |_| host.url("")))
            .map(|url| {
                s.spawn(move || {
                    let mut traffic = Traffic::new(&url, 50, 100);
                    traffic.run_for(Duration::from_secs(6));
                    assert!(traffic.errors.is_empty(), "{:?}", traffic.errors);
                    traffic.accepted
                })
            })
            .collect();
        senders.into_iter().map(|t| t.join().unwrap()).collect()
    });
    let accepted: std::collections::BTreeSet<String> = accepted.into_iter().flatten().collect();
    collector.assert_stored_exactly(&accepted, Duration::from_secs(30));
    let stats = collector.stats();
    let batches = stats["batches"].as_u64().unwrap();
    let per_batch = accepted.len() as f64 / batches as f64;
    let delivered_by =
        |host: &SpinHost| host.component_log().matches("\"flush_delivered\"").count();
    let (by_a, by_b) = (delivered_by(&a), delivered_by(&b));
    eprintln!(
        "{} readings in {batches} batches ({per_batch:.1} a batch); delivered by a: {by_a}, b: {by_b}; duplicates {}",
        accepted.len(),
        stats["duplicates"]
    );
    assert_eq!(stats["duplicates"].as_u64(), Some(0), "{stats}");
    assert_eq!(stats["batch_retries"].as_u64(), Some(0), "{stats}");
    assert!(per_batch >= 40.0, "batches are not full: {per_batch:.1}");
    assert!(
        by_a > 0 && by_b > 0,
        "both hosts deliver: a {by_a}, b {by_b}"
    );
    assert_eq!(
        (by_a + by_b) as u64,
        batches,
        "each batch sent by one host, once"
    );
    assert_eq!(a.outbox_rows(), 0);
}

/// A deliverer killed while it holds a lease (the collector holds its batch for 3 s): its batch
/// stays claimed until the lease expires, then the other host delivers it.
#[test]
#[ignore = "end-to-end: needs the built component, the collector and a Spin CLI (scripts/test.sh)"]
fn a_deliverer_killed_while_holding_a_lease_is_replaced_after_the_lease() {
    let dir = scratch("spin-lease");
    let collector = Collector::start(&dir);
    let db = dir.join("shared-outbox.db");
    let vars = [
        ("COLLECTOR_URL", collector.ingest_url()),
        ("AUTH_MODE", "off".to_owned()),
        ("RATE_LIMIT_READINGS_PER_S", "0".to_owned()),
    ];
    let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let start = |name: &str| {
        let dir = dir.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        SpinHost::start_sharing(&dir, &db, &vars)
    };
    let (mut a, b) = (start("a"), start("b"));
    // The batch is held 3 s, then refused (never stored): its deliverer dies meanwhile.
    collector.set_faults(serde_json::json!({"delay_ms": 3000, "fail_first": 1}));
    let mut traffic = Traffic::new(&a.url(""), 10, 20);
    traffic.send_one();
    let id = traffic
        .accepted
        .iter()
        .next()
        .cloned()
        .expect("one reading accepted");
    // The reading is due after FLUSH_INTERVAL_MS; its batch is then at the collector for 3 s.
    std::thread::sleep(Duration::from_millis(1_000));
    a.crash();
    let killed = Instant::now();
    collector.set_faults(serde_json::json!({}));
    assert_eq!(b.outbox_rows(), 1, "the claimed row stays in the table");
    // Host b's requests look for work nobody delivers; the row is free once the lease expires.
    let mut traffic_b = Traffic::new(&b.url(""), 10, 20);
    traffic_b.accepted.insert(id.clone());
    let last = traffic_b
        .until_delivered(
            &collector,
            Duration::from_millis(500),
            Duration::from_secs(60),
        )
        .expect("host b delivered the batch whose deliverer died");
    assert!(collector.stored_ids().contains(&id));
    let after = since_ms(killed, last);
    eprintln!("delivered by the other host {after:.1} s after the deliverer died");
    assert!(
        after >= 10.0,
        "taken before the lease expired ({after:.1} s)"
    );
    collector.assert_stored_exactly(&traffic_b.accepted, Duration::from_secs(10));
}

/// A sparse fleet: one reading and then no device traffic at all. On Spin delivery runs only
/// while requests arrive, and this reading is stranded by `spin up` restarting during a
/// collector outage: nothing delivers it until the heartbeat the README gives a sparse fleet
/// (`POST /admin/deliver` with the admin token, every 30 s) calls the app, and then it arrives.
#[test]
#[ignore = "end-to-end: needs the built component, the collector and a Spin CLI (scripts/test.sh)"]
fn a_sparse_fleet_is_delivered_by_its_heartbeat_alone() {
    const ADMIN: &str = "Bearer spin-admin-token-of-32-bytes-or-more";
    let dir = scratch("spin-sparse");
    let mut collector = Collector::start(&dir);
    collector.stop();
    let mut host = spin_up(
        &dir,
        &[
            ("COLLECTOR_URL", &collector.ingest_url()),
            ("AUTH_MODE", "off"),
            ("ADMIN_TOKEN", "spin-admin-token-of-32-bytes-or-more"),
            ("RETRY_MAX_MS", "1000"),
        ],
    );
    let reading = get(&host.url("/v1/readings?device_id=sparse-1&temp=20.5"));
    assert_eq!(reading.status, 200, "{}", reading.body);
    let id = reading.json()["id"].as_str().unwrap().to_owned();
    // Flushed, refused by the dead collector, given back with a backoff of at most a second.
    std::thread::sleep(Duration::from_secs(2));
    host.crash_and_restart();
    collector.resume();
    std::thread::sleep(Duration::from_secs(5));
    assert!(
        !collector.stored_ids().contains(&id),
        "delivered with no request at all: then the README's heartbeat is not needed"
    );
    assert_eq!(
        host.outbox_rows(),
        1,
        "the reading waits in the shared outbox"
    );
    let beat = Instant::now();
    let answer = ureq::post(&host.url("/admin/deliver"))
        .set("authorization", ADMIN)
        .call()
        .expect("heartbeat answered")
        .into_json::<serde_json::Value>()
        .unwrap();
    assert_eq!(answer["started"], true, "{answer}");
    assert_eq!(answer["shared_outbox"]["pending"], 1, "{answer}");
    collector.assert_stored_exactly(&[id].into(), Duration::from_secs(10));
    eprintln!(
        "stranded reading delivered {:.1} s after one heartbeat",
        beat.elapsed().as_secs_f64()
    );
    let deleted = Instant::now();
    while host.outbox_rows() > 0 && deleted.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(host.outbox_rows(), 0, "delivered rows are deleted");
}

/// A state directory written by the previous release (its outbox in key-value, one key per
/// request): the new release moves those segments into the SQLite outbox and delivers them.
#[test]
#[ignore = "end-to-end: needs the built component, the collector and a Spin CLI (scripts/test.sh)"]
fn segments_of_the_previous_release_in_key_value_are_delivered() {
    let dir = scratch("spin-import");
    let collector = Collector::start(&dir);
    let mut host = spin_up(
        &dir,
        &[
            ("COLLECTOR_URL", &collector.ingest_url()),
            ("AUTH_MODE", "off"),
        ],
    );
    let template = get(&host.url("/v1/readings?device_id=old-release&temp=20")).json();
    let mut expected: std::collections::BTreeSet<String> =
        [template["id"].as_str().unwrap().to_owned()].into();
    host.crash();
    // What the previous release left: two segments, as its `outbox/...` keys.
    let doc = |id: &str| {
        let mut reading = template.clone();
        reading["id"] = id.into();
        reading.to_string()
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    for (n, ids) in [["old-1", "old-2"], ["old-3", "old-4"]].iter().enumerate() {
        let text = format!("node-old\n{}\n{}", doc(ids[0]), doc(ids[1]));
        let key = edge_enrich::application::delivery::legacy_kv::segment_key(
            now - 60_000,
            &format!("seg-{n}"),
        );
        host.kv_set(&key, &text);
        expected.extend(ids.iter().map(|i| (*i).to_owned()));
    }
    // As if the database had never seen the import.
    let db = rusqlite::Connection::open(host.state_dir().join("sqlite_db.db")).unwrap();
    db.execute_batch("PRAGMA user_version = 1; DELETE FROM outbox_meta")
        .unwrap();
    drop(db);
    host.crash_and_restart();
    let mut traffic = Traffic::new(&host.url(""), 5, 10);
    traffic
        .until_delivered(
            &collector,
            Duration::from_millis(250),
            Duration::from_secs(30),
        )
        .expect("delivered");
    expected.extend(traffic.accepted.iter().cloned());
    collector.assert_stored_exactly(&expected, Duration::from_secs(10));
    assert!(
        host.kv_keys(edge_enrich::application::delivery::legacy_kv::SEGMENT_PREFIX)
            .is_empty(),
        "imported keys are deleted"
    );
    assert!(host.log_text().contains("outbox_imported"));
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

/// The device registry in Spin's key-value store `default`, written while `spin up` runs:
/// the same suite as on workerd (token mode with a rotation and revocation; ES256 JWTs).
#[test]
#[ignore = "needs the built artifacts; run by scripts/test.sh"]
fn device_registry_revocation_rotation_and_jwt() {
    support::registry::on_a_host_with_a_store(
        "spin",
        spin_up,
        |host: &SpinHost, key: &str, value: &str| host.kv_set(key, value),
    );
}

/// One device's readings make the collector answer 500: the rest are delivered, the refused
/// ones given up one by one into `/admin/dead-letters` after `DEAD_LETTER_AFTER_S`.
#[test]
#[ignore = "end-to-end: needs the built component, the collector and a Spin CLI (scripts/test.sh)"]
fn a_batch_the_collector_chokes_on_holds_back_nothing() {
    support::scenario::choking_collector_on("spin-choke", spin_up, |doc| {
        doc["dead_letters"].as_array().cloned().unwrap_or_default()
    });
}

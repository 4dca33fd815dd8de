//! The Worker under real workerd (`wrangler dev`) against the real reference collector.
//! Run by `scripts/test.sh`, which builds both first:
//! `cargo test --test e2e_workers -- --ignored --test-threads=1`.

#![cfg(not(target_arch = "wasm32"))] // drives host processes; nothing to run inside wasm

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use support::scenario::{standard_behaviour, Edge};
use support::*;

#[test]
#[ignore = "end-to-end: needs the built Worker, the collector and wrangler (scripts/test.sh)"]
fn enriched_answers_problems_delivery_and_a_collector_outage() {
    let dir = scratch("workers-main");
    let mut collector = Collector::start(&dir);
    let host = WorkersHost::start(
        &dir,
        &[
            ("COLLECTOR_URL", &collector.ingest_url()),
            ("AUTH_MODE", "off"),
            ("EDGE_NODE", "e2e-node"),
        ],
    );
    let log = || host.log_text();
    let edge = Edge {
        base: host.url(""),
        platform: "cloudflare-workers",
        node: "e2e-node",
        log: &log,
    };
    let mut accepted = standard_behaviour(&edge, &mut collector);
    accepted.extend(support::scenario::keep_alive_answers_are_framed_by_length(
        &edge.base,
    ));
    collector.assert_stored_exactly(&accepted, Duration::from_secs(20));
}

#[test]
#[ignore = "end-to-end: needs the built Worker, the collector and wrangler (scripts/test.sh)"]
fn backlog_bound_dead_letters_and_a_crash_mid_stream() {
    let dir = scratch("workers-durable");
    let collector = Collector::start(&dir);
    let mut host = WorkersHost::start(
        &dir,
        &[
            ("COLLECTOR_URL", &collector.ingest_url()),
            ("AUTH_MODE", "off"),
            ("ADMIN_TOKEN", "e2e-admin-token-of-32-bytes-or-more"),
            ("MAX_READINGS_PER_REQUEST", "50"),
            ("MAX_BACKLOG", "100"),
            ("RETRY_MAX_MS", "1000"),
        ],
    );
    let base = host.url(""); // the port survives restarts
    let admin = |path: &str| {
        let mut req = ureq::get(&format!("{base}{path}")).set(
            "authorization",
            "Bearer e2e-admin-token-of-32-bytes-or-more",
        );
        req = req.timeout(Duration::from_secs(20));
        let r = req.call().expect("admin answer");
        serde_json::from_str::<serde_json::Value>(&r.into_string().unwrap()).unwrap()
    };
    let mut accepted = BTreeSet::new();
    let fifty = |tag: &str| {
        (0..50)
            .map(|i| format!(r#"{{"device_id":"{tag}-{}","temp":{i}}}"#, i % 5))
            .collect::<Vec<_>>()
            .join("\n")
    };

    // A batch the collector refuses for good (400) goes to the dead-letter store, not round
    // and round; the admin endpoint lists it.
    collector.set_faults(serde_json::json!({"refuse_devices": ["doomed"], "refuse_status": 400}));
    let r = get(&host.url("/v1/readings?device_id=doomed&temp=1"));
    let doomed = accepted_ids(&r).remove(0);
    let letters = wait_for(Duration::from_secs(10), "a dead letter", || {
        let v = admin("/admin/dead-letters");
        let list = v["batchers"][0]["dead_letters"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        (!list.is_empty()).then_some(list)
    });
    assert_eq!(letters[0]["status"], 400);
    assert_eq!(letters[0]["body"]["readings"][0]["id"], doomed.as_str());
    assert!(collector.readings_of("doomed").is_empty());

    // The collector fails every request: readings pile up durably up to MAX_BACKLOG, then
    // ingest answers 503 with Retry-After and accepts nothing of that request.
    collector.set_faults(serde_json::json!({"fail_rate": 1.0, "fail_status": 503}));
    for tag in ["a", "b"] {
        let r = post(
            &host.url("/v1/readings"),
            "application/x-ndjson",
            &fifty(tag),
        );
        accepted.extend(accepted_ids(&r));
    }
    let full = post(
        &host.url("/v1/readings"),
        "application/x-ndjson",
        &fifty("c"),
    );
    assert_backlog_full(&full);
    let stats = admin("/admin/stats");
    assert_eq!(stats["batchers"][0]["pending"], 100);
    assert!(stats["batchers"][0]["failed_attempts"].as_u64().unwrap() >= 1);

    // Crash workerd mid-stream (SIGKILL), start it again on the same persisted state, keep
    // sending: nothing that was acknowledged before the crash is lost.
    host.crash_and_restart();
    collector.set_faults(serde_json::json!({}));
    // Like a device: on 503, wait Retry-After and send again. The batcher must drain the
    // full backlog it had before the crash for these to get in.
    for i in 0..20 {
        let url = host.url(&format!("/v1/readings?device_id=after-{}&temp={i}", i % 2));
        let r = wait_for(Duration::from_secs(30), "ingest to accept again", || {
            let r = get(&url);
            if r.status == 503 {
                let secs = r
                    .header("retry-after")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(1);
                std::thread::sleep(Duration::from_secs(secs));
                return None;
            }
            Some(r)
        });
        accepted.extend(accepted_ids(&r));
    }
    collector.assert_stored_exactly(&accepted, Duration::from_secs(30));
    assert!(
        collector.readings_of("c-0").is_empty(),
        "a refused request left nothing behind"
    );
    assert_eq!(admin("/admin/stats")["batchers"][0]["pending"], 0);
}

#[test]
#[ignore = "end-to-end: needs the built Worker, the collector and wrangler (scripts/test.sh)"]
fn concurrent_requests_share_batcher_calls_and_lose_nothing() {
    let dir = scratch("workers-concurrent");
    let collector = Collector::start(&dir);
    let host = WorkersHost::start(
        &dir,
        &[
            ("COLLECTOR_URL", &collector.ingest_url()),
            ("AUTH_MODE", "off"),
            ("ADMIN_TOKEN", "e2e-admin-token-of-32-bytes-or-more"),
        ],
    );
    let base = host.url("");
    // 16 clients at once, 40 requests each: requests in flight together are grouped into
    // shared Durable Object calls, and each must still get its own 200 and its own readings.
    let ids: BTreeSet<String> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..16)
            .map(|t| {
                let base = base.clone();
                s.spawn(move || {
                    let mut mine = Vec::new();
                    for i in 0..40 {
                        let r = get(&format!(
                            "{base}/v1/readings?device_id=c-{t}&temp={i}&seq={i}"
                        ));
                        let v = r.json();
                        assert_eq!(
                            (v["device_id"].as_str(), v["seq"].as_u64()),
                            (Some(format!("c-{t}").as_str()), Some(i))
                        );
                        mine.extend(accepted_ids(&r));
                    }
                    mine
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("client thread"))
            .collect()
    });
    assert_eq!(ids.len(), 640);
    collector.assert_stored_exactly(&ids, Duration::from_secs(30));
    let stats: serde_json::Value = ureq::get(&format!("{base}/admin/stats"))
        .set(
            "authorization",
            "Bearer e2e-admin-token-of-32-bytes-or-more",
        )
        .call()
        .expect("admin stats")
        .into_json()
        .expect("json");
    let calls = stats["batchers"][0]["billed"]["requests"]["accept_calls"]
        .as_u64()
        .unwrap();
    assert_eq!(stats["batchers"][0]["accepted_readings"], 640);
    // Storage is written per call, not per reading: a row for each call's segment (a free row
    // reused, nothing deleted), and per delivery round at most the watermark and one rewrite.
    let rows_written = stats["batchers"][0]["billed"]["storage"]["rows_written"]
        .as_u64()
        .unwrap();
    let batches = stats["batchers"][0]["flushed_batches"].as_u64().unwrap();
    assert!(
        rows_written <= calls + 2 * batches,
        "{rows_written} rows written for {calls} calls and {batches} batches"
    );
    assert!(
        calls <= 640,
        "at most one batcher call per request ({calls})"
    );
    // Regression guard: requests must never be resumed in another request's context.
    let log = host.log_text();
    assert!(
        !log.contains("on behalf of a different request"),
        "cross-request I/O:\n{log}"
    );
    assert!(
        !log.contains("code had hung"),
        "a request was cancelled as hung:\n{log}"
    );
    eprintln!("640 concurrent readings took {calls} batcher calls and {rows_written} rows written");
}

/// The hostile-input suite (tests/support/hostile.rs) in `token` and in `hmac` mode, each on a
/// fresh host and collector: every case its documented 4xx, the runtime healthy throughout,
/// every accepted reading stored exactly once, no secret in any answer or log.
#[test]
#[ignore = "needs the built artifacts; run by scripts/test.sh"]
fn hostile_inputs_in_token_and_hmac_mode() {
    support::hostile::in_both_modes("workers", WorkersHost::start);
}

/// The `ndjson` sink into the reference collector and the `influx` sink into a real InfluxDB.
#[test]
#[ignore = "needs the built artifacts and influxd; run by scripts/test.sh"]
fn ndjson_and_influx_sinks() {
    support::sinks::ndjson_and_influx("workers", WorkersHost::start);
}

/// schemathesis (PyPI) against the running Worker with the document it serves: no 5xx, and
/// every answer's status, content type and body match the OpenAPI contract.
#[test]
#[ignore = "needs the built artifacts and schemathesis; run by scripts/test.sh"]
fn openapi_contract_checked_by_schemathesis() {
    let dir = scratch("workers-schemathesis");
    let collector = Collector::start(&dir);
    let ingest = collector.ingest_url();
    let vars = vec![
        ("COLLECTOR_URL", ingest.as_str()),
        ("AUTH_MODE", "off"),
        ("RATE_LIMIT_READINGS_PER_S", "0"),
        ("ADMIN_TOKEN", "schemathesis-admin-token-32-bytes-plus"),
    ];
    let host = WorkersHost::start(&dir, &vars);
    let served = get(&host.url("/openapi.json"));
    assert_eq!(
        served.json(),
        serde_json::from_str::<serde_json::Value>(edge_enrich::http::routes::OPENAPI).unwrap()
    );
    let out = std::process::Command::new("schemathesis")
        .args(["run", &host.url("/openapi.json")])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,response_headers_conformance",
            "--max-examples",
            "40",
            "--seed",
            "1",
            "--workers",
            "2",
            "--no-color",
            // The admin operations too (device auth is off here, so readings ignore it).
            "--header",
            "Authorization: Bearer schemathesis-admin-token-32-bytes-plus",
        ])
        .env("SCHEMATHESIS_HOOKS", "")
        .current_dir(&dir) // its example cache stays in the scratch directory
        .output()
        .expect("schemathesis is installed by scripts/setup.sh");
    let report = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(dir.join("schemathesis.txt"), &report).unwrap();
    assert!(
        out.status.success(),
        "schemathesis found contract violations:\n{report}"
    );
    // Its requests were real: some readings were accepted and delivered.
    assert!(
        report.contains("passed") || report.contains("Passed"),
        "{report}"
    );
}

/// Calibration profiles from the `PROFILES` KV namespace: `wrangler kv key put`, then `cargo
/// xtask profiles put --local`, change the calibration without a redeploy, within the cache
/// TTL, and a bad write changes nothing.
#[test]
#[ignore = "needs the built artifacts; run by scripts/test.sh"]
fn profiles_from_workers_kv_take_effect_without_redeploy() {
    let dir = scratch("workers-kv-profiles");
    let collector = Collector::start(&dir);
    let ingest = collector.ingest_url();
    let vars = vec![
        ("COLLECTOR_URL", ingest.as_str()),
        ("AUTH_MODE", "off"),
        ("PROFILES_TTL_S", "1"),
    ];
    let host = WorkersHost::start(&dir, &vars);
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
    // No key yet: the embedded profiles (set version 1; no match for kv-*: identity).
    assert_eq!(calibration(), (20.0, None, 1));
    host.kv_put(
        "PROFILES",
        "calibration",
        r#"{"version":7,"profiles":[{"match":"kv-*","gain":1.0,"offset":1.5,"version":41}]}"#,
    );
    wait_for(Duration::from_secs(60), "the KV profile in use", || {
        (calibration() == (21.5, Some(41), 7)).then_some(())
    });
    // The fleet command, as the README gives it for the dev server's own state.
    let file = dir.join("profiles-v8.json");
    std::fs::write(
        &file,
        r#"{"version":8,"profiles":[{"match":"kv-*","gain":1.0,"offset":-2,"version":42}]}"#,
    )
    .unwrap();
    let (state, config) = host.local_state();
    let path = |p: &std::path::Path| p.to_string_lossy().into_owned();
    xtask::fleet::profiles(&[
        "put".into(),
        path(&file),
        "--local".into(),
        "--persist-to".into(),
        path(&state),
        "--config".into(),
        path(&config),
    ])
    .expect("cargo xtask profiles put --local");
    wait_for(
        Duration::from_secs(60),
        "the updated KV profile in use",
        || (calibration() == (18.0, Some(42), 8)).then_some(()),
    );
    // An invalid document keeps version 42 in use.
    host.kv_put(
        "PROFILES",
        "calibration",
        r#"{"version":9,"profiles":[{"match":"kv-*","gain":-1,"version":43}]}"#,
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(calibration(), (18.0, Some(42), 8));
    let health = get(&host.url("/healthz")).json();
    assert_eq!(health["config"]["profiles"]["source"], "key-value store");
}

/// The device registry in the `DEVICES` KV namespace, written with `wrangler kv key put` while
/// the Worker runs: tags, key versions, a master-secret rotation, required mode, revocation
/// and re-enabling within the TTL; then ES256 device JWTs and their hostile cases.
#[test]
#[ignore = "needs the built artifacts; run by scripts/test.sh"]
fn device_registry_revocation_rotation_and_jwt() {
    support::registry::on_a_host_with_a_store(
        "workers",
        WorkersHost::start,
        |host: &WorkersHost, key: &str, value: &str| host.kv_put("DEVICES", key, value),
    );
}

/// One device's readings make the collector answer 500: the rest are delivered, the refused
/// ones given up one by one into `/admin/dead-letters` after `DEAD_LETTER_AFTER_S`.
#[test]
#[ignore = "end-to-end: needs the built Worker, the collector and wrangler (scripts/test.sh)"]
fn a_batch_the_collector_chokes_on_holds_back_nothing() {
    support::scenario::choking_collector_on("workers-choke", WorkersHost::start, |doc| {
        doc["batchers"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|b| b["dead_letters"].as_array().cloned().unwrap_or_default())
            .collect()
    });
}

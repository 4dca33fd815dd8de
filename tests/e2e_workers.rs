//! The Worker under real workerd (`wrangler dev`) against the real reference collector.
//! Run by `scripts/test.sh`, which builds both first:
//! `cargo test --test e2e_workers -- --ignored --test-threads=1`.

#![cfg(not(target_arch = "wasm32"))] // drives host processes; nothing to run inside wasm

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use support::*;

const MAX_AGE_MS: u64 = 200;

fn reading_url(host: &WorkersHost, query: &str) -> String {
    host.url(&format!("/v1/readings?{query}"))
}

#[test]
#[ignore = "end-to-end: needs the built Worker, the collector and wrangler (scripts/test.sh)"]
fn enriched_answers_problems_delivery_and_a_collector_outage() {
    let dir = scratch("workers-main");
    let mut collector = Collector::start(&dir);
    let host = WorkersHost::start(
        &dir,
        &[
            ("COLLECTOR_URL", &collector.ingest_url()),
            ("EDGE_NODE", "e2e-node"),
        ],
    );
    let mut accepted = BTreeSet::new();

    // GET: one enriched reading, with the headers the API promises.
    let r = get(&reading_url(
        &host,
        "device_id=abc&temp=74.3&unit=F&ts=1700000000000&seq=9",
    ));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert!(r.header("x-request-id").is_some_and(|v| v.len() == 36));
    assert!(r
        .header("server-timing")
        .is_some_and(|v| v.starts_with("handler;dur=")));
    let v = r.json();
    assert_eq!(v["device_id"], "abc");
    assert_eq!(v["temp_c"], 23.5);
    assert_eq!(v["raw"], serde_json::json!({"value": 74.3, "unit": "F"}));
    assert!(v["calibration"].is_null());
    assert_eq!(v["edge"]["node"], "e2e-node");
    assert_eq!(v["edge"]["platform"], "cloudflare-workers");
    assert_eq!(
        (v["ts"].as_u64(), v["seq"].as_u64()),
        (Some(1_700_000_000_000), Some(9))
    );
    accepted.extend(accepted_ids(&r));

    // A calibrated device (embedded profiles: greenhouse-* gain 1.02 offset 0.1).
    let r = get(&reading_url(&host, "device_id=greenhouse-3&temp=20"));
    let v = r.json();
    assert_eq!(v["temp_c"], 20.5);
    assert_eq!(v["calibration"]["profile"], "greenhouse-*");
    assert_eq!(v["calibration"]["version"], 2);
    accepted.extend(accepted_ids(&r));

    // POST: JSON object, JSON array, NDJSON: always an array back.
    let r = post(
        &host.url("/v1/readings"),
        "application/json",
        r#"{"device_id":"p1","temp":10}"#,
    );
    assert_eq!(r.json().as_array().map(Vec::len), Some(1));
    accepted.extend(accepted_ids(&r));
    let batch: Vec<String> = (0..120)
        .map(|i| {
            format!(
                r#"{{"device_id":"bulk-{}","temp":{}.5,"unit":"C","seq":{i}}}"#,
                i % 7,
                i % 40
            )
        })
        .collect();
    let r = post(
        &host.url("/v1/readings"),
        "application/json",
        &format!("[{}]", batch.join(",")),
    );
    assert_eq!(accepted_ids(&r).len(), 120);
    accepted.extend(accepted_ids(&r));
    let r = post(
        &host.url("/v1/readings"),
        "application/x-ndjson",
        &(batch[..30].join("\n") + "\n"),
    );
    assert_eq!(accepted_ids(&r).len(), 30);
    accepted.extend(accepted_ids(&r));

    // Bad input: a clear problem document each, and nothing of it reaches the collector.
    let bad: Vec<(&str, &str, Option<&str>, &str, u16)> = vec![
        ("GET", "/v1/readings?temp=1", None, "", 400),
        ("GET", "/v1/readings?device_id=a&temp=abc", None, "", 400),
        (
            "GET",
            "/v1/readings?device_id=a&temp=1&temp=2",
            None,
            "",
            400,
        ),
        (
            "GET",
            "/v1/readings?device_id=bad%20id&temp=1",
            None,
            "",
            400,
        ),
        ("GET", "/v1/readings?device_id=a&temp=NaN", None, "", 422),
        ("GET", "/v1/readings?device_id=a&temp=1e309", None, "", 422),
        (
            "GET",
            "/v1/readings?device_id=a&temp=-1&unit=K",
            None,
            "",
            422,
        ),
        ("POST", "/v1/readings", Some("text/plain"), "hello", 415),
        ("POST", "/v1/readings", Some("application/json"), "{", 400),
        (
            "POST",
            "/v1/readings",
            Some("application/json"),
            r#"[{"device_id":"ok","temp":1},{"device_id":"x","temp":-999}]"#,
            422,
        ),
        (
            "POST",
            "/v1/readings",
            Some("application/x-ndjson"),
            "{\"device_id\":\"a\",\"temp\":1}\n{\"device_id\":\"b\",\"te",
            400,
        ),
        ("DELETE", "/v1/readings", None, "", 405),
        ("GET", "/nowhere", None, "", 404),
        ("GET", "/admin/dead-letters", None, "", 403),
    ];
    for (method, path, ct, body, status) in bad {
        let r = try_request(
            method,
            &host.url(path),
            ct,
            (!body.is_empty()).then_some(body.as_bytes()),
        )
        .expect("answer");
        let doc = assert_problem(&r, status);
        assert!(
            doc["instance"]
                .as_str()
                .is_some_and(|i| i.ends_with(r.header("x-request-id").unwrap_or("?"))),
            "{doc}"
        );
    }
    let r = try_request("PUT", &host.url("/v1/readings"), None, None).unwrap();
    assert_eq!(r.header("allow"), Some("GET, POST"));
    let too_big = format!(
        "[{}]",
        vec![r#"{"device_id":"big","temp":1}"#; 10_000].join(",")
    );
    assert_problem(
        &post(&host.url("/v1/readings"), "application/json", &too_big),
        413,
    );
    let doc = assert_problem(
        &post(
            &host.url("/v1/readings"),
            "application/json",
            r#"[{"device_id":"ok","temp":1},{"temp":"warm"}]"#,
        ),
        400,
    );
    assert_eq!(doc["errors"][0]["index"], 1);

    collector.assert_stored_exactly(&accepted, Duration::from_secs(20));
    assert!(collector.readings_of("ok").is_empty() && collector.readings_of("big").is_empty());

    // A lone reading with no further traffic arrives within max age + 1 s.
    std::thread::sleep(Duration::from_millis(500));
    let sent = Instant::now();
    let r = get(&reading_url(&host, "device_id=lone-1&temp=5"));
    let id = accepted_ids(&r).remove(0);
    accepted.insert(id.clone());
    let stored = wait_for(Duration::from_secs(10), "the lone reading", || {
        collector.readings_of("lone-1").into_iter().next()
    });
    let waited = sent.elapsed();
    let lag = stored["stored_at_ms"].as_u64().unwrap() - stored["received_at_ms"].as_u64().unwrap();
    assert_eq!(stored["id"], id.as_str());
    assert!(
        lag <= MAX_AGE_MS + 1_000,
        "stored {lag} ms after it was received"
    );
    assert!(
        waited <= Duration::from_millis(MAX_AGE_MS + 1_000),
        "arrived after {waited:?}"
    );

    // The collector is down for 30 s: ingest keeps answering 200 from durable storage, and
    // everything arrives once the collector is back.
    collector.stop();
    let outage = Instant::now();
    let mut during = 0;
    while outage.elapsed() < Duration::from_secs(30) {
        let r = get(&reading_url(
            &host,
            &format!("device_id=outage-{}&temp=1.5&seq={during}", during % 3),
        ));
        accepted.extend(accepted_ids(&r));
        during += 1;
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(during > 50);
    collector.resume();
    collector.assert_stored_exactly(&accepted, Duration::from_secs(30));
    let stats = collector.stats();
    assert_eq!(stats["readings"].as_u64(), Some(accepted.len() as u64));
    assert!(
        host.log_text().contains("flush_retry"),
        "the batcher should have logged its retries"
    );
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
            ("ADMIN_TOKEN", "e2e-admin-token"),
            ("MAX_READINGS_PER_REQUEST", "50"),
            ("MAX_BACKLOG", "100"),
            ("RETRY_MAX_MS", "1000"),
        ],
    );
    let base = host.url(""); // the port survives restarts
    let admin = |path: &str| {
        let mut req =
            ureq::get(&format!("{base}{path}")).set("authorization", "Bearer e2e-admin-token");
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
    collector.set_faults(serde_json::json!({"fail_first": 1, "fail_status": 400}));
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
    let doc = assert_problem(&full, 503);
    assert_eq!(doc["type"], "urn:edge-enrich:problem:backlog-full");
    assert!(full
        .header("retry-after")
        .and_then(|v| v.parse::<u32>().ok())
        .is_some_and(|s| s >= 1));
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

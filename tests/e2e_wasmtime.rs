//! The portable wasi:http component (the Spin build's twin) under real `wasmtime serve`
//! against the real reference collector, with instance reuse on (wasmtime's default) and off.
//! Run by `scripts/test.sh`: `cargo test --test e2e_wasmtime -- --ignored --test-threads=1`.

#![cfg(not(target_arch = "wasm32"))] // drives host processes; nothing to run inside wasm

mod support;

use std::time::Duration;

use support::scenario::{standard_behaviour, Edge};
use support::*;

fn component() -> std::path::PathBuf {
    repo_root().join("target/components/edge_enrich_wasi_http.wasm")
}

fn run(one_instance_per_request: bool) {
    let name = if one_instance_per_request {
        "wasmtime-one-instance"
    } else {
        "wasmtime-reuse"
    };
    let dir = scratch(name);
    let mut collector = Collector::start(&dir);
    let host = LocalServer::wasmtime(
        &dir,
        &component(),
        &[
            ("COLLECTOR_URL", &collector.ingest_url()),
            ("AUTH_MODE", "off"),
            ("EDGE_NODE", "wt-node"),
        ],
        one_instance_per_request,
    );
    let log = || host.log_text();
    let edge = Edge {
        base: host.url(""),
        platform: "wasi-http",
        node: "wt-node",
        log: &log,
    };
    let mut accepted = standard_behaviour(&edge, &mut collector);
    accepted.extend(support::scenario::keep_alive_answers_are_framed_by_length(
        &edge.base,
    ));

    // A batch the collector refuses for good is dead-lettered (logged), not retried forever,
    // and does not block what comes after it.
    collector.set_faults(serde_json::json!({"refuse_devices": ["doomed"], "refuse_status": 400}));
    let doomed = accepted_ids(&get(&host.url("/v1/readings?device_id=doomed&temp=1")));
    wait_for(
        Duration::from_secs(10),
        "the dead letter in the log",
        || host.log_text().contains("flush_dead_letter").then_some(()),
    );
    assert!(collector.readings_of("doomed").is_empty());
    accepted.extend(accepted_ids(&get(
        &host.url("/v1/readings?device_id=after-doomed&temp=2")
    )));
    collector.assert_stored_exactly(&accepted, Duration::from_secs(10));
    assert!(!doomed.is_empty());

    // The collector stops listening for 2 s (connections refused, not answered): readings
    // accepted meanwhile are retried and arrive once it listens again.
    collector.set_faults(serde_json::json!({"refuse_for_ms": 2000}));
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        try_request("GET", &format!("{}/stats", collector.url()), None, None).is_err(),
        "the collector should refuse connections"
    );
    for i in 0..5 {
        accepted.extend(accepted_ids(&get(
            &host.url(&format!("/v1/readings?device_id=refused-{i}&temp={i}"))
        )));
    }
    collector.assert_stored_exactly(&accepted, Duration::from_secs(20));
}

#[test]
#[ignore = "end-to-end: needs the built component, the collector and wasmtime (scripts/test.sh)"]
fn wasi_http_component_with_instance_reuse() {
    run(false);
}

#[test]
#[ignore = "end-to-end: needs the built component, the collector and wasmtime (scripts/test.sh)"]
fn wasi_http_component_with_one_instance_per_request() {
    run(true);
}

/// The hostile-input suite (tests/support/hostile.rs) in `token` and in `hmac` mode, each on a
/// fresh host and collector: every case its documented 4xx, the runtime healthy throughout,
/// every accepted reading stored exactly once, no secret in any answer or log.
#[test]
#[ignore = "needs the built artifacts; run by scripts/test.sh"]
fn hostile_inputs_in_token_and_hmac_mode() {
    support::hostile::in_both_modes("wasmtime", |dir, vars| {
        LocalServer::wasmtime(dir, &component(), vars, false)
    });
}

/// The `ndjson` sink into the reference collector and the `influx` sink into a real InfluxDB.
#[test]
#[ignore = "needs the built artifacts and influxd; run by scripts/test.sh"]
fn ndjson_and_influx_sinks() {
    support::sinks::ndjson_and_influx("wasmtime", |dir, vars| {
        LocalServer::wasmtime(dir, &component(), vars, false)
    });
}

/// The device simulator (`cargo xtask sim`) in `hmac` mode against the component, with its
/// collector check: every reading it was told was accepted is stored exactly once.
#[test]
#[ignore = "needs the built artifacts; run by scripts/test.sh"]
fn device_simulator_with_signatures_and_collector_check() {
    let dir = scratch("wasmtime-simulator");
    let collector = Collector::start(&dir);
    let ingest = collector.ingest_url();
    let secret = "simulator-master-secret-0123456789abcdef";
    let vars = vec![
        ("COLLECTOR_URL", ingest.as_str()),
        ("AUTH_MODE", "hmac"),
        ("AUTH_SECRET", secret),
        // wasmtime serve passes no Host to the component: signatures name the configured one.
        ("HMAC_HOST", "sim.edge.test"),
    ];
    let host = LocalServer::wasmtime(&dir, &component(), &vars, false);
    std::env::set_var("AUTH_SECRET", secret);
    let options = xtask::sim::Options::parse(
        &[
            "--url",
            &host.url(""),
            "--devices",
            "12",
            "--rate",
            "150",
            "--duration",
            "3",
            "--auth",
            "hmac",
            "--sign-host",
            "sim.edge.test",
            "--check",
            &collector.url(),
        ]
        .map(String::from),
    )
    .unwrap();
    xtask::sim::run(&options).expect("every accepted reading stored exactly once");
    assert!(collector.stats()["readings"].as_u64().unwrap() >= 300);
}

/// The portable flavour's registry (the `REGISTRY` variable) with ES256 device JWTs, verified
/// by RustCrypto p256 inside the component: the good token, high S, a disabled device and every
/// hostile case; only the accepted readings reach the collector.
#[test]
#[ignore = "end-to-end: needs the built component and the collector (scripts/test.sh)"]
fn registry_and_jwt_in_the_portable_flavour() {
    let dir = scratch("wasmtime-registry-jwt");
    let collector = Collector::start(&dir);
    let registry = support::registry::jwt_registry_var();
    let mut vars = support::registry::jwt_vars();
    let ingest = collector.ingest_url();
    vars.push(("COLLECTOR_URL", &ingest));
    vars.push(("REGISTRY", &registry));
    let host = LocalServer::wasmtime(&dir, &component(), &vars, false);
    let accepted = support::registry::jwt_cases(&host.url(""));
    collector.assert_stored_exactly(&accepted, Duration::from_secs(20));
    assert!(collector
        .readings_of("jwt-a")
        .iter()
        .all(|v| v["device"]["tags"]["auth"] == "jwt"));
}

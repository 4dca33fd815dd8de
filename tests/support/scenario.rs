//! The behaviour every host must show, run against any running edge (Workers under workerd,
//! the wasi:http component under wasmtime serve): one function, so the hosts cannot drift.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use super::*;

/// How to reach the edge under test and what it should say about itself.
pub struct Edge<'a> {
    pub base: String,
    pub platform: &'a str,
    pub node: &'a str,
    /// The host's log so far, to check what the batcher reported.
    pub log: &'a dyn Fn() -> String,
}

impl Edge<'_> {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

pub const MAX_AGE_MS: u64 = 200;

/// Enriched answers, problem documents, exactly-once storage, a lone reading within max age
/// + 1 s, and a 30 s collector outage with nothing lost. Returns the ids accepted.
pub fn standard_behaviour(edge: &Edge<'_>, collector: &mut Collector) -> BTreeSet<String> {
    let mut accepted = BTreeSet::new();

    // GET: one enriched reading, with the headers the API promises.
    let r = get(&edge.url("/v1/readings?device_id=abc&temp=74.3&unit=F&ts=1700000000000&seq=9"));
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
    assert_eq!(v["edge"]["node"], edge.node);
    assert_eq!(v["edge"]["platform"], edge.platform);
    assert!(v["received_at_ms"]
        .as_u64()
        .is_some_and(|t| t > 1_700_000_000_000));
    assert_eq!(
        (v["ts"].as_u64(), v["seq"].as_u64()),
        (Some(1_700_000_000_000), Some(9))
    );
    accepted.extend(accepted_ids(&r));

    // A calibrated device (embedded profiles: greenhouse-* gain 1.02 offset 0.1).
    let r = get(&edge.url("/v1/readings?device_id=greenhouse-3&temp=20"));
    let v = r.json();
    assert_eq!(v["temp_c"], 20.5);
    assert_eq!(v["calibration"]["profile"], "greenhouse-*");
    assert_eq!(v["calibration"]["version"], 2);
    accepted.extend(accepted_ids(&r));

    // POST: JSON object, JSON array, NDJSON: always an array back, in order.
    let r = post(
        &edge.url("/v1/readings"),
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
        &edge.url("/v1/readings"),
        "application/json",
        &format!("[{}]", batch.join(",")),
    );
    let ids = accepted_ids(&r);
    assert_eq!(ids.len(), 120);
    assert_eq!(r.json()[119]["seq"], 119);
    accepted.extend(ids);
    let r = post(
        &edge.url("/v1/readings"),
        "application/x-ndjson",
        &(batch[..30].join("\n") + "\n"),
    );
    assert_eq!(accepted_ids(&r).len(), 30);
    accepted.extend(accepted_ids(&r));

    // Bad input: a clear problem document each, and nothing of it reaches the collector.
    type Case<'a> = (&'a str, &'a str, Option<&'a str>, &'a str, u16);
    let bad: Vec<Case<'_>> = vec![
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
            &edge.url(path),
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
    let r = try_request("PUT", &edge.url("/v1/readings"), None, None).unwrap();
    assert_eq!(r.header("allow"), Some("GET, POST, OPTIONS"));
    let too_big = format!(
        "[{}]",
        vec![r#"{"device_id":"big","temp":1}"#; 10_000].join(",")
    );
    assert_problem(
        &post(&edge.url("/v1/readings"), "application/json", &too_big),
        413,
    );
    let doc = assert_problem(
        &post(
            &edge.url("/v1/readings"),
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
    let id = accepted_ids(&get(&edge.url("/v1/readings?device_id=lone-1&temp=5"))).remove(0);
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

    // The collector is down for 30 s: ingest keeps answering 200, and everything arrives
    // once the collector is back.
    collector.stop();
    let outage = Instant::now();
    let mut during = 0;
    while outage.elapsed() < Duration::from_secs(30) {
        let r = get(&edge.url(&format!(
            "/v1/readings?device_id=outage-{}&temp=1.5&seq={during}",
            during % 3
        )));
        accepted.extend(accepted_ids(&r));
        during += 1;
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(during > 50);
    collector.resume();
    collector.assert_stored_exactly(&accepted, Duration::from_secs(30));
    assert!(
        (edge.log)().contains("flush_retry"),
        "the batcher should have logged its retries"
    );
    accepted
}

/// Several requests on one keep-alive connection, as gateways and devices that keep their
/// connection send them: every answer is framed by its `Content-Length` (never chunked: see
/// `hosts/spin/mod.rs`, a chunked answer stalls ~40 ms on Spin), a 204 carries no body, and
/// the connection serves them all. Prints each answer's time; returns the ids of the readings
/// it had accepted.
pub fn keep_alive_answers_are_framed_by_length(base: &str) -> BTreeSet<String> {
    let host = base.trim_start_matches("http://");
    let request = |method: &str, target: &str, extra: &str, body: &str| {
        format!(
            "{method} {target} HTTP/1.1\r\nhost: {host}\r\n{extra}content-length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    };
    let mut requests = Vec::new();
    for i in 0..5 {
        requests.push(request(
            "GET",
            &format!("/v1/readings?device_id=keep-alive&temp={i}.5"),
            "",
            "",
        ));
    }
    requests.push(request("GET", "/v1/readings?device_id=keep-alive", "", ""));
    requests.push(request(
        "POST",
        "/v1/readings?device_id=keep-alive",
        "content-type: application/json\r\n",
        r#"[{"device_id":"keep-alive","temp":1},{"device_id":"keep-alive","temp":2}]"#,
    ));
    requests.push(request("GET", "/healthz", "", ""));
    requests.push(request("GET", "/openapi.json", "", ""));
    requests.push(request("GET", "/nowhere", "", ""));
    requests.push(request("OPTIONS", "/v1/readings", "", ""));
    let answers = keep_alive(base, &requests).expect("one keep-alive connection serves them all");
    let mut times = Vec::new();
    for (n, (r, took)) in answers.iter().enumerate() {
        times.push(format!("{}:{:.1}", r.status, took.as_secs_f64() * 1000.0));
        assert!(
            r.header("transfer-encoding").is_none(),
            "answer {n} ({}) is chunked: {:?}",
            r.status,
            r.headers
        );
        if r.status == 204 {
            assert!(r.body.is_empty());
            continue;
        }
        let length: usize = r
            .header("content-length")
            .unwrap_or_else(|| panic!("answer {n} ({}) has no Content-Length", r.status))
            .parse()
            .unwrap();
        assert_eq!(length, r.body.len(), "answer {n}");
    }
    let statuses: Vec<u16> = answers.iter().map(|(r, _)| r.status).collect();
    assert_eq!(
        statuses,
        [200, 200, 200, 200, 200, 400, 200, 200, 200, 404, 204]
    );
    eprintln!(
        "one keep-alive connection, status:ms per answer: {}",
        times.join(" ")
    );
    answers
        .iter()
        .filter(|(r, _)| r.status == 200 && r.body.contains("\"keep-alive\""))
        .flat_map(|(r, _)| accepted_ids(r))
        .collect()
}

/// Settings for [`a_choking_collector_holds_back_nothing`]: isolated readings are given up after
/// 5 s, and backoffs stay short, so that the scenario ends in well under a minute.
pub const CHOKE_VARS: &[(&str, &str)] = &[("DEAD_LETTER_AFTER_S", "5"), ("RETRY_MAX_MS", "1000")];
pub const CHOKE_GIVE_UP: Duration = Duration::from_secs(5);
const CHOKE_ADMIN: &str = "choke-admin-token-of-32-bytes-or-more";

/// Starts a host with [`CHOKE_VARS`] through `start(dir, vars)` and runs
/// [`a_choking_collector_holds_back_nothing`]; `letters` picks the dead letters out of the
/// host's `/admin/dead-letters` document.
pub fn choking_collector_on<H: EdgeHost>(
    name: &str,
    start: impl FnOnce(&std::path::Path, &[(&str, &str)]) -> H,
    letters: impl Fn(serde_json::Value) -> Vec<serde_json::Value>,
) {
    let dir = scratch(name);
    let collector = Collector::start(&dir);
    let ingest = collector.ingest_url();
    let mut vars = vec![
        ("COLLECTOR_URL", ingest.as_str()),
        ("AUTH_MODE", "off"),
        ("ADMIN_TOKEN", CHOKE_ADMIN),
    ];
    vars.extend_from_slice(CHOKE_VARS);
    let host = start(&dir, &vars);
    let base = host.base_url();
    let dead_letters = || {
        let doc = ureq::get(&format!("{base}/admin/dead-letters"))
            .set("authorization", &format!("Bearer {CHOKE_ADMIN}"))
            .timeout(Duration::from_secs(20))
            .call()
            .expect("admin answer")
            .into_json()
            .expect("JSON");
        letters(doc)
    };
    let delivered = a_choking_collector_holds_back_nothing(&base, &collector, &dead_letters);
    assert_eq!(delivered.len(), 190);
}

/// A collector that answers 500 to every batch holding one device's reading and 200 to the
/// rest (at 557087d such a batch was retried without end, and held back every other: after
/// 60 s, 0 of the other 190 readings had arrived on Spin). 20 devices send 10 readings each,
/// at once, so that batches mix them: every other reading arrives within the flush age plus a
/// few backoffs; the choking device's readings are isolated, each retried alone, and after
/// the give-up time listed by `dead_letters` (the host's `/admin/dead-letters`), one each,
/// never stored. One more device trickles readings meanwhile (on Spin delivery runs only while
/// requests arrive). The host must run with [`CHOKE_VARS`].
pub fn a_choking_collector_holds_back_nothing(
    base: &str,
    collector: &Collector,
    dead_letters: &dyn Fn() -> Vec<serde_json::Value>,
) -> BTreeSet<String> {
    let dead_before: BTreeSet<String> = dead_letters()
        .iter()
        .filter_map(|l| Some(l["batch_id"].as_str()?.to_owned()))
        .collect();
    collector.set_faults(serde_json::json!({"refuse_devices": ["choker"], "refuse_status": 500}));
    let started = Instant::now();
    let sent: Vec<(String, Vec<String>)> = std::thread::scope(|s| {
        let senders: Vec<_> = (0..20)
            .map(|t| {
                s.spawn(move || {
                    let device = if t == 0 {
                        "choker".to_owned()
                    } else {
                        format!("steady-{t}")
                    };
                    let ids = (0..10)
                        .flat_map(|n| {
                            let r = get(&format!("{base}/v1/readings?device_id={device}&temp={n}"));
                            accepted_ids(&r)
                        })
                        .collect::<Vec<_>>();
                    (device, ids)
                })
            })
            .collect();
        senders.into_iter().map(|t| t.join().unwrap()).collect()
    });
    let (choked, others): (Vec<_>, Vec<_>) = sent.into_iter().partition(|(d, _)| d == "choker");
    let choked: BTreeSet<String> = choked.into_iter().flat_map(|(_, ids)| ids).collect();
    let others: BTreeSet<String> = others.into_iter().flat_map(|(_, ids)| ids).collect();
    assert_eq!((choked.len(), others.len()), (10, 190));
    // A trickle from one more device while waiting, as a fleet sends: Spin runs delivery only
    // while requests arrive.
    let trickle = std::cell::RefCell::new(BTreeSet::new());
    let send_trickle = || {
        let r = get(&format!("{base}/v1/readings?device_id=trickle&temp=1"));
        trickle.borrow_mut().extend(accepted_ids(&r));
    };
    wait_for(Duration::from_secs(30), "the other 190 readings", || {
        send_trickle();
        let stored = collector.try_stored_ids().ok()?;
        others.is_subset(&stored).then_some(())
    });
    eprintln!(
        "the other 190 readings stored {:?} after the first was sent",
        started.elapsed()
    );
    let letters = wait_for(
        CHOKE_GIVE_UP + Duration::from_secs(30),
        "the choking device's readings in /admin/dead-letters",
        || {
            send_trickle();
            let new: Vec<serde_json::Value> = dead_letters()
                .into_iter()
                .filter(|l| {
                    l["batch_id"]
                        .as_str()
                        .is_some_and(|id| !dead_before.contains(id))
                })
                .collect();
            let ids: BTreeSet<String> = new
                .iter()
                .flat_map(|l| {
                    l["body"]["readings"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default()
                })
                .filter_map(|r| Some(r["id"].as_str()?.to_owned()))
                .collect();
            (ids == choked).then_some(new)
        },
    );
    assert!(
        started.elapsed() >= CHOKE_GIVE_UP,
        "given up after {:?}, before the stated bound",
        started.elapsed()
    );
    eprintln!(
        "the choking device's 10 readings dead-lettered {:?} after the first was sent",
        started.elapsed()
    );
    for l in &letters {
        assert_eq!(l["status"], 500, "{l}");
        assert_eq!(l["readings"], 1, "given up one reading at a time: {l}");
    }
    assert!(collector.readings_of("choker").is_empty());
    collector.set_faults(serde_json::json!({}));
    let mut delivered = others.clone();
    delivered.extend(trickle.into_inner());
    collector.assert_stored_exactly(&delivered, Duration::from_secs(30));
    others
}

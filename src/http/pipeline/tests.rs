//! The pipeline natively, against a fake host configured as each real one: the Worker, the
//! spin flavour and the portable wasi:http flavour. Same bytes in, same bytes out, except what
//! `host_specific` names: the platform tag (in answers and readings), the node name, and how
//! much of a refused body the host drains.

use std::cell::Cell;
use std::rc::Rc;

use super::*;
use crate::hosts::memory::MemoryHost;
use crate::http::auth::{sign, MasterSecret, SignedParts};
use crate::ports::testing::run;
use crate::ports::BodyBroken;

const SECRET: &str = "pipeline-test-master-secret-0123456789";

/// The three hosts, as their adapters configure the pipeline: the in-memory host, whose accept
/// is the real use case over the outbox and buckets every in-memory host keeps, tagged and
/// draining as each real one.
fn all_hosts(vars: &[(&str, &str)]) -> Vec<MemoryHost> {
    let mut kv = vars.to_vec();
    kv.extend_from_slice(&[
        ("COLLECTOR_URL", "http://127.0.0.1:1/ingest"),
        ("AUTH_MODE", "token"),
        ("AUTH_SECRET", SECRET),
        ("ADMIN_TOKEN", "admin-token-admin-token-admin-token"),
        ("MAX_BODY_BYTES", "2048"),
        ("MAX_URL_BYTES", "512"),
        ("CORS_ALLOWED_ORIGINS", "https://app.example.com"),
    ]);
    [
        ("cloudflare-workers", 0),
        ("spin", 4 * 1024 * 1024),
        ("wasi-http", 4 * 1024 * 1024),
    ]
    .into_iter()
    .map(|(platform, drain_limit)| {
        let mut host = MemoryHost::new(&kv, 1_800_000_000_000);
        host.platform = platform;
        host.drain_limit = drain_limit;
        host
    })
    .collect()
}

/// A body in chunks; it can also break, or be declared and never come.
#[derive(Clone, Default)]
struct FakeBody {
    chunks: Vec<Vec<u8>>,
    broken: bool,
    withheld: bool,
    read: Rc<Cell<usize>>,
}

impl BodyStream for FakeBody {
    type Chunk = Vec<u8>;
    async fn next_chunk(&mut self) -> Option<Result<Vec<u8>, BodyBroken>> {
        if self.withheld {
            return std::future::pending().await;
        }
        if self.chunks.is_empty() {
            return self.broken.then_some(Err(BodyBroken));
        }
        let chunk = self.chunks.remove(0);
        self.read.set(self.read.get() + chunk.len());
        Some(Ok(chunk))
    }
}

fn body(bytes: &[u8]) -> FakeBody {
    FakeBody {
        chunks: bytes.chunks(512).map(<[u8]>::to_vec).collect(),
        ..FakeBody::default()
    }
}

fn token(device: &str) -> String {
    format!(
        "Bearer {}",
        MasterSecret::new(SECRET).unwrap().device_key(device)
    )
}

fn request(
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: FakeBody,
) -> Request<FakeBody> {
    let mut b = Request::builder().method(method).uri(target);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(body).unwrap()
}

/// An answer with what differs by host taken out: status, sorted headers, normalized body.
type Seen = (u16, Vec<(String, String)>, String);
/// method, target, headers, body
type Case<'a> = (&'a str, String, Vec<(&'a str, String)>, Vec<u8>);

/// The one place host differences are named: the platform tag, the node name derived from it,
/// request ids and reading ids, and the handler time. Everything else must be equal.
fn host_specific(answer: &Answer, platform: &str) -> Seen {
    let mut headers: Vec<(String, String)> = answer
        .headers()
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "x-request-id" | "server-timing"))
        .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("?").to_owned()))
        .collect();
    headers.sort();
    let mut text = answer.body().replace(platform, "<platform>");
    if let Some(id) = answer::header(answer, "x-request-id") {
        text = text.replace(id, "<request-id>");
    }
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
    scrub(&mut v);
    (answer.status().as_u16(), headers, v.to_string())
}

fn scrub(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => {
            for key in ["id"] {
                if m.contains_key(key) {
                    m.insert(key.into(), "<id>".into());
                }
            }
            m.values_mut().for_each(scrub);
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(scrub),
        _ => {}
    }
}

fn on_every_host(hosts: &[MemoryHost], make: impl Fn() -> Request<FakeBody>) -> Vec<Seen> {
    hosts
        .iter()
        .map(|h| {
            let facts = EdgeFacts::default();
            let answer = run(handle(h, make(), facts));
            host_specific(&answer, h.platform)
        })
        .collect()
}

#[test]
fn same_bytes_in_same_bytes_out_on_every_host() {
    let hosts = all_hosts(&[("EDGE_NODE", "node-1")]);
    let readings = br#"[{"device_id":"d1","temp":20.5},{"device_id":"d1","temp":70,"unit":"F"}]"#;
    let h = token("d1");
    let json = "application/json";
    let cases: Vec<Case<'_>> = vec![
        (
            "GET",
            "/v1/readings?device_id=d1&temp=20".into(),
            vec![("authorization", h.clone())],
            vec![],
        ),
        (
            "POST",
            "/v1/readings".into(),
            vec![("authorization", h.clone()), ("content-type", json.into())],
            readings.to_vec(),
        ),
        (
            "GET",
            "/v1/readings?device_id=d1&temp=NaN".into(),
            vec![("authorization", h.clone())],
            vec![],
        ),
        (
            "GET",
            "/v1/readings?device_id=d2&temp=1".into(),
            vec![("authorization", h.clone())],
            vec![],
        ),
        (
            "GET",
            "/v1/readings?device_id=d1&temp=1".into(),
            vec![],
            vec![],
        ),
        (
            "POST",
            "/v1/readings".into(),
            vec![
                ("authorization", h.clone()),
                ("content-type", "text/plain".into()),
            ],
            b"x".to_vec(),
        ),
        (
            "POST",
            "/v1/readings".into(),
            vec![("authorization", h.clone()), ("content-type", json.into())],
            br#"{"device_id":"d1","temp":1,"x":1,"x":2}"#.to_vec(),
        ),
        (
            "POST",
            "/v1/readings".into(),
            vec![("authorization", h.clone()), ("content-type", json.into())],
            vec![b' '; 3000],
        ),
        ("PUT", "/v1/readings".into(), vec![], b"{}".to_vec()),
        ("GET", "/nowhere".into(), vec![], vec![]),
        (
            "GET",
            format!("/v1/readings?x={}", "y".repeat(600)),
            vec![],
            vec![],
        ),
        ("GET", "/healthz".into(), vec![], vec![]),
        (
            "GET",
            "/admin/stats".into(),
            vec![(
                "authorization",
                "Bearer admin-token-admin-token-admin-token".into(),
            )],
            vec![],
        ),
        (
            "GET",
            "/admin/stats".into(),
            vec![("authorization", h.clone())],
            vec![],
        ),
        (
            "OPTIONS",
            "/v1/readings".into(),
            vec![
                ("origin", "https://app.example.com".into()),
                ("access-control-request-method", "POST".into()),
            ],
            vec![],
        ),
        (
            "GET",
            "/v1/readings?device_id=d1&temp=2".into(),
            vec![
                ("authorization", h.clone()),
                ("origin", "https://app.example.com".into()),
            ],
            vec![],
        ),
    ];
    for (method, target, headers, bytes) in &cases {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let answers = on_every_host(&hosts, || request(method, target, &headers, body(bytes)));
        assert!(
            answers.windows(2).all(|w| w[0] == w[1]),
            "{method} {target:.60}: hosts disagree: {answers:#?}"
        );
        let (status, headers, _) = &answers[0];
        let has = |name: &str| headers.iter().any(|(k, _)| k == name);
        assert!(has("cache-control"), "{method} {target:.60}");
        if *status >= 400 {
            assert!(headers.contains(&("content-type".into(), "application/problem+json".into())));
        }
    }
    // Each host accepted the same readings (3 per host: a GET, a POST of two, a CORS GET).
    for h in &hosts {
        assert_eq!(h.accepted().len(), 4, "{}", h.platform);
    }
}

#[test]
fn the_request_line_and_headers_are_answered_before_any_body_byte() {
    for host in all_hosts(&[]) {
        let h = token("d1");
        // A long URL with a large declared body: 414, not 413, and the body is not read, even
        // when it never comes.
        let withheld = FakeBody {
            withheld: true,
            ..FakeBody::default()
        };
        let long = format!("/v1/readings?x={}", "y".repeat(600));
        let a = run(handle(
            &host,
            request(
                "POST",
                &long,
                &[("content-length", "1000000")],
                withheld.clone(),
            ),
            EdgeFacts::default(),
        ));
        assert_eq!(a.status(), 414, "{}", host.platform);
        assert_eq!(withheld.read.get(), 0);
        // A declared length over MAX_BODY_BYTES: 413 from the header alone; a host that must
        // drain reads a bounded amount and drops it, none keeps it.
        let big = body(&vec![b'x'; 8192]);
        let a = run(handle(
            &host,
            request(
                "POST",
                "/v1/readings",
                &[
                    ("authorization", &h),
                    ("content-type", "application/json"),
                    ("content-length", "8192"),
                ],
                big.clone(),
            ),
            EdgeFacts::default(),
        ));
        assert_eq!(a.status(), 413, "{}", host.platform);
        assert_eq!(
            big.read.get() > 0,
            host.drain_limit > 0,
            "{}: drained {} bytes",
            host.platform,
            big.read.get()
        );
        // Wrong credentials on a POST: 401 before the body.
        let unread = body(br#"{"device_id":"d1","temp":1}"#);
        let a = run(handle(
            &host,
            request(
                "POST",
                "/v1/readings",
                &[("content-type", "application/json")],
                unread.clone(),
            ),
            EdgeFacts::default(),
        ));
        assert_eq!(a.status(), 401);
        assert!(host.drain_limit > 0 || unread.read.get() == 0);
    }
}

#[test]
fn a_body_past_the_limit_is_refused_without_keeping_it_and_a_broken_one_is_a_400() {
    for host in all_hosts(&[]) {
        let h = token("d1");
        let headers = [
            ("authorization", h.as_str()),
            ("content-type", "application/json"),
        ];
        // No declared length (chunked): read up to the limit, then refused.
        let a = run(handle(
            &host,
            request("POST", "/v1/readings", &headers, body(&vec![b' '; 5000])),
            EdgeFacts::default(),
        ));
        assert_eq!(a.status(), 413, "{}", host.platform);
        let broken = FakeBody {
            chunks: vec![b"{\"device_id\":".to_vec()],
            broken: true,
            ..FakeBody::default()
        };
        let a = run(handle(
            &host,
            request("POST", "/v1/readings", &headers, broken),
            EdgeFacts::default(),
        ));
        assert_eq!(
            a.status(),
            400,
            "{}: a broken stream is the request's fault",
            host.platform
        );
        assert!(a.body().contains("could not be read"));
    }
}

#[test]
fn a_signature_is_checked_over_the_body_it_was_made_for() {
    for host in all_hosts(&[("AUTH_MODE", "hmac")]) {
        let key = MasterSecret::new(SECRET).unwrap().device_key("s1");
        let signed_body = br#"{"device_id":"s1","temp":21.5}"#;
        let parts = SignedParts {
            method: "POST",
            host: "",
            path: "/v1/readings",
            query: "",
            content_type: "application/json",
            body: signed_body,
            device_hint: None,
        };
        let header = sign(&key, "s1", &parts, 1_800_000_000);
        let post = |bytes: &[u8]| {
            let req = request(
                "POST",
                "/v1/readings",
                &[
                    ("authorization", &header),
                    ("content-type", "application/json"),
                ],
                body(bytes),
            );
            run(handle(&host, req, EdgeFacts::default()))
                .status()
                .as_u16()
        };
        assert_eq!(post(signed_body), 200, "{}", host.platform);
        assert_eq!(post(br#"{"device_id":"s1","temp":99.5}"#), 401);
    }
}

/// Through the real accept use case: a full backlog is a 503 with `Retry-After` and costs the
/// device no token; a device over its bucket is a 429 with `Retry-After`.
#[test]
fn the_accept_use_case_answers_backlog_full_and_rate_limited() {
    let vars = [
        ("MAX_READINGS_PER_REQUEST", "2"),
        ("MAX_BACKLOG", "3"),
        ("RATE_LIMIT_READINGS_PER_S", "1"),
        ("RATE_LIMIT_BURST", "2"),
    ];
    for host in all_hosts(&vars) {
        let get = |device: &str| {
            let req = request(
                "GET",
                &format!("/v1/readings?device_id={device}&temp=1"),
                &[("authorization", &token(device))],
                FakeBody::default(),
            );
            run(handle(&host, req, EdgeFacts::default()))
        };
        for device in ["d1", "d2", "d4"] {
            assert_eq!(get(device).status(), 200);
        }
        // The backlog (3) is full: nothing delivers in this fake.
        for _ in 0..3 {
            let a = get("d3");
            assert_eq!(a.status(), 503, "{}", host.platform);
            assert!(answer::header(&a, "retry-after").is_some());
        }
        // d3 paid nothing for those refusals: its bucket of 2 is whole once there is room (a
        // fresh outbox stands for one that delivered).
        host.take_accepted();
        assert_eq!(get("d3").status(), 200);
        assert_eq!(get("d3").status(), 200);
        let limited = get("d3");
        assert_eq!(limited.status(), 429, "{}", host.platform);
        assert!(answer::header(&limited, "retry-after").is_some());
    }
}

#[test]
fn edge_facts_and_timing_reach_the_answer() {
    let host = all_hosts(&[]).remove(0);
    let req = request(
        "GET",
        "/v1/readings?device_id=d1&temp=1",
        &[("authorization", &token("d1"))],
        FakeBody::default(),
    );
    let facts = EdgeFacts {
        colo: Some("DFW".into()),
        country: Some("US".into()),
        region: None,
        client: None,
    };
    let a = run(handle(&host, req, facts));
    let v: serde_json::Value = serde_json::from_str(a.body()).unwrap();
    assert_eq!(v["edge"]["colo"], "DFW");
    assert_eq!(v["edge"]["node"], "cf-dfw");
    assert!(answer::header(&a, "server-timing").is_some_and(|t| t.starts_with("handler;dur=")));
    assert_eq!(answer::header(&a, "x-request-id").map(str::len), Some(36));
}

/// At 557087d every request, a 404 or a 401 included, ran the host's work after the answer
/// (on Spin: a delivery claim, which takes the database's write lock), so an unauthenticated
/// flood contended with every append. Now only requests whose credentials held do.
#[test]
fn only_requests_whose_credentials_held_run_the_work_after_the_answer() {
    for h in all_hosts(&[]) {
        let send = |target: &str, auth: &str| {
            run(handle(
                &h,
                request(
                    "GET",
                    target,
                    &[("authorization", auth)],
                    FakeBody::default(),
                ),
                EdgeFacts::default(),
            ))
            .status()
        };
        assert_eq!(send("/nowhere", ""), 404);
        assert_eq!(send("/v1/readings?device_id=a1&temp=1", "Bearer junk"), 401);
        assert_eq!(send("/v1/readings?device_id=a1&temp=1", &token("a2")), 401);
        assert_eq!(send("/admin/stats", "Bearer wrong"), 401);
        assert_eq!(h.afters.get(), 0, "{}", h.platform);
        assert_eq!(send("/v1/readings?device_id=a1&temp=1", &token("a1")), 200);
        let admin = "Bearer admin-token-admin-token-admin-token";
        assert_eq!(send("/admin/stats", admin), 200);
        assert_eq!(h.afters.get(), 2, "{}", h.platform);
    }
}

#[test]
fn server_timing_has_one_decimal() {
    assert_eq!(server_timing(1.24), "handler;dur=1.2");
    assert_eq!(server_timing(12.06), "handler;dur=12.1");
    assert_eq!(server_timing(-3.0), "handler;dur=0.0");
}

mod registry {
    //! The device registry through the pipeline: read once per request before the body,
    //! cached, and its say (tags, revocation, required, key versions, JWT keys) on every host.

    use super::*;

    fn put(hosts: &[MemoryHost], device: &str, record: &str) {
        for h in hosts {
            h.records
                .borrow_mut()
                .insert(format!("device/{device}"), record.to_owned());
        }
    }

    fn later(hosts: &[MemoryHost], ms: u64) {
        for h in hosts {
            h.now.set(h.now.get() + ms);
        }
    }

    fn get(h: &MemoryHost, device: &str, auth: &str) -> Answer {
        let target = format!("/v1/readings?device_id={device}&temp=20");
        run(handle(
            h,
            request("GET", &target, &[("authorization", auth)], body(b"")),
            EdgeFacts::default(),
        ))
    }

    fn problem_type(a: &Answer) -> String {
        let v: serde_json::Value = serde_json::from_str(a.body()).unwrap();
        v["type"].as_str().unwrap_or("").to_owned()
    }

    #[test]
    fn tags_revocation_and_reenabling_within_the_ttl() {
        let hosts = all_hosts(&[("REGISTRY_MODE", "optional"), ("REGISTRY_TTL_S", "60")]);
        put(
            &hosts,
            "reg-1",
            r#"{"status":"active","tags":{"site":"fra-1"}}"#,
        );
        for h in &hosts {
            let a = get(h, "reg-1", &token("reg-1"));
            assert_eq!(a.status(), 200, "{}", a.body());
            let v: serde_json::Value = serde_json::from_str(a.body()).unwrap();
            assert_eq!(v["device"]["tags"]["site"], "fra-1");
            assert_eq!(v["device"]["key_version"], 0);
            // A device without a record is admitted, untagged, in optional mode.
            let a = get(h, "reg-none", &token("reg-none"));
            assert_eq!(a.status(), 200);
            assert!(!a.body().contains("\"device\""));
        }
        // Revoked: seen once the cached record is older than the TTL, not before.
        put(&hosts, "reg-1", r#"{"status":"disabled"}"#);
        for h in &hosts {
            let reads = h.record_reads.get();
            assert_eq!(get(h, "reg-1", &token("reg-1")).status(), 200, "cached");
            assert_eq!(h.record_reads.get(), reads, "no store read within the TTL");
        }
        later(&hosts, 60_000);
        for h in &hosts {
            let before = h.accepted().len();
            let a = get(h, "reg-1", &token("reg-1"));
            assert_eq!(a.status(), 403);
            assert_eq!(problem_type(&a), "urn:edge-enrich:problem:device-disabled");
            assert_eq!(h.accepted().len(), before, "nothing accepted");
            // Credentials are checked first: a wrong token learns nothing of the record.
            assert_eq!(get(h, "reg-1", &token("someone-else")).status(), 401);
        }
        put(&hosts, "reg-1", r#"{"status":"active"}"#);
        later(&hosts, 60_000);
        for h in &hosts {
            assert_eq!(get(h, "reg-1", &token("reg-1")).status(), 200);
        }
    }

    fn get_from(h: &MemoryHost, client: Option<&str>, device: &str, auth: &str) -> Answer {
        let target = format!("/v1/readings?device_id={device}&temp=20");
        let facts = EdgeFacts {
            client: client.map(str::to_owned),
            ..EdgeFacts::default()
        };
        run(handle(
            h,
            request("GET", &target, &[("authorization", auth)], body(b"")),
            facts,
        ))
    }

    /// At 557087d `optional` mode admitted a device whose record could not be read with
    /// nothing cached, or did not parse: a disabled device got in on a fresh isolate whenever
    /// the store failed. Now either is a 503, in both modes, and nothing is accepted.
    #[test]
    fn optional_mode_refuses_a_device_it_cannot_look_up() {
        let hosts = all_hosts(&[("REGISTRY_MODE", "optional")]);
        put(&hosts, "opt-bad", r#"{"status":"stolen-at-site-7"}"#);
        for h in &hosts {
            h.registry_down.set(true);
            let a = get(h, "opt-1", &token("opt-1"));
            assert_eq!(a.status(), 503, "{}", a.body());
            assert_eq!(
                problem_type(&a),
                "urn:edge-enrich:problem:registry-unavailable"
            );
            assert!(answer::header(&a, "retry-after").is_some());
            h.registry_down.set(false);
            let a = get(h, "opt-bad", &token("opt-bad"));
            assert_eq!(a.status(), 503, "{}", a.body());
            assert!(!a.body().contains("stolen"), "the record is not quoted");
            assert!(h.accepted().is_empty());
            // A device without a record is still admitted, untagged.
            assert_eq!(get(h, "opt-none", &token("opt-none")).status(), 200);
        }
    }

    /// At 557087d junk tokens bought a registry read each, for any made-up id, without limit,
    /// and each cached answer pushed real devices out. Now a sender's failures are budgeted:
    /// past the burst it is answered 429 before the registry is read, and what its failed
    /// requests read is never cached.
    #[test]
    fn a_sender_out_of_failures_is_refused_before_the_registry_is_read() {
        use crate::http::sender_budget::FAILURES_BURST;
        let hosts = all_hosts(&[("REGISTRY_MODE", "optional")]);
        let junk = format!("Bearer {}", "0".repeat(64));
        let attacker = Some("198.51.100.9");
        for h in &hosts {
            for i in 0..FAILURES_BURST as u32 {
                let a = get_from(h, attacker, &format!("made-up-{i}"), &junk);
                assert_eq!(a.status(), 401, "{}", a.body());
            }
            assert_eq!(h.record_reads.get(), FAILURES_BURST as u32);
            assert_eq!(h.state().registry.borrow().len(), 0, "no junk was cached");
            let a = get_from(h, attacker, "made-up-next", &junk);
            assert_eq!(a.status(), 429, "{}", a.body());
            assert_eq!(
                problem_type(&a),
                "urn:edge-enrich:problem:too-many-failures"
            );
            assert_eq!(answer::header(&a, "retry-after"), Some("2"));
            assert_eq!(h.record_reads.get(), FAILURES_BURST as u32, "nothing read");
            // Another sender, and a device whose credentials hold, are served as ever.
            let a = get_from(h, Some("198.51.100.10"), "real-1", &token("real-1"));
            assert_eq!(a.status(), 200, "{}", a.body());
            assert_eq!(h.state().registry.borrow().len(), 1, "real-1 is cached");
            // Where the host names no sender there is no budget to spend.
            for _ in 0..40 {
                assert_eq!(get_from(h, None, "made-up-x", &junk).status(), 401);
            }
        }
    }

    #[test]
    fn required_mode_refuses_unknown_devices_and_a_failed_store() {
        let hosts = all_hosts(&[("REGISTRY_MODE", "required")]);
        put(&hosts, "req-1", r#"{"status":"active"}"#);
        for h in &hosts {
            assert_eq!(get(h, "req-1", &token("req-1")).status(), 200);
            let a = get(h, "req-2", &token("req-2"));
            assert_eq!(a.status(), 403);
            assert_eq!(problem_type(&a), "urn:edge-enrich:problem:unknown-device");
        }
        for h in &hosts {
            h.registry_down.set(true);
            let a = get(h, "req-3", &token("req-3"));
            assert_eq!(a.status(), 503, "{}", a.body());
            assert_eq!(
                problem_type(&a),
                "urn:edge-enrich:problem:registry-unavailable"
            );
            // A cached record outlives a failed read.
            later(std::slice::from_ref(h), 120_000);
            assert_eq!(get(h, "req-1", &token("req-1")).status(), 200);
        }
    }

    #[test]
    fn the_record_is_read_before_the_body_and_once_per_request() {
        let hosts = all_hosts(&[("REGISTRY_MODE", "optional")]);
        put(&hosts, "once-1", r#"{"status":"active","key_version":2}"#);
        let v2 = format!(
            "Bearer {}",
            MasterSecret::new(SECRET).unwrap().device_key_v("once-1", 2)
        );
        let batch = br#"[{"device_id":"once-1","temp":1},{"device_id":"once-1","temp":2}]"#;
        for h in &hosts {
            // Named before the body: a v0 token for a v2 device is refused unread.
            let sent = body(batch);
            let read = sent.read.clone();
            let a = run(handle(
                h,
                request(
                    "POST",
                    "/v1/readings?device_id=once-1",
                    &[
                        ("authorization", &token("once-1")),
                        ("content-type", "application/json"),
                    ],
                    sent,
                ),
                EdgeFacts::default(),
            ));
            assert_eq!(a.status(), 401);
            assert_eq!(read.get(), 0, "the body was not read");
            // Named only in the body: found by the pre-scan, read once, key version 2.
            let reads = h.record_reads.get();
            let a = run(handle(
                h,
                request(
                    "POST",
                    "/v1/readings",
                    &[("authorization", &v2), ("content-type", "application/json")],
                    body(batch),
                ),
                EdgeFacts::default(),
            ));
            assert_eq!(a.status(), 200, "{}", a.body());
            assert!(a.body().contains("\"key_version\":2"));
            assert!(h.record_reads.get() <= reads + 1);
        }
    }

    #[test]
    fn with_a_registry_a_request_carries_one_device() {
        let hosts = all_hosts(&[("REGISTRY_MODE", "optional"), ("AUTH_MODE", "off")]);
        let mixed = br#"[{"device_id":"m-1","temp":1},{"device_id":"m-2","temp":2}]"#;
        for h in &hosts {
            let a = run(handle(
                h,
                request(
                    "POST",
                    "/v1/readings",
                    &[("content-type", "application/json")],
                    body(mixed),
                ),
                EdgeFacts::default(),
            ));
            assert_eq!(a.status(), 400, "{}", a.body());
            assert!(a.body().contains("one device_id"));
        }
    }

    /// Device JWTs, verified in software (natively the host's default).
    #[cfg(not(all(target_arch = "wasm32", target_os = "unknown")))]
    mod jwt {
        use super::*;
        use crate::domain::device::to_base64url;

        const D: [u8; 32] = [5; 32];

        fn jwt_hosts() -> Vec<MemoryHost> {
            let hosts = all_hosts(&[
                ("AUTH_MODE", "jwt"),
                ("JWT_AUDIENCE", "https://edge.test"),
                ("REGISTRY_MODE", "required"),
            ]);
            let (x, y) = crate::http::jwt::public_point(&D).unwrap();
            put(
                &hosts,
                "jwt-1",
                &format!(
                    r#"{{"status":"active","keys":[{{"kid":"k1","alg":"ES256","x":"{}","y":"{}"}}]}}"#,
                    to_base64url(&x),
                    to_base64url(&y)
                ),
            );
            hosts
        }

        fn jwt(sub: &str, aud: &str, iat: u64, exp: u64) -> String {
            let claims = serde_json::json!({"sub": sub, "aud": aud, "iat": iat, "exp": exp});
            format!(
                "Bearer {}",
                crate::http::jwt::sign(&D, "k1", &claims.to_string()).unwrap()
            )
        }

        #[test]
        fn jwt_devices_through_the_pipeline() {
            let hosts = jwt_hosts();
            let now = 1_800_000_000;
            for h in &hosts {
                let a = get(
                    h,
                    "jwt-1",
                    &jwt("jwt-1", "https://edge.test", now, now + 600),
                );
                assert_eq!(a.status(), 200, "{}", a.body());
                // The same token again: its signature is not checked again on this instance.
                let checked = h.signatures_checked.get();
                let same = jwt("jwt-1", "https://edge.test", now, now + 600);
                assert_eq!(get(h, "jwt-1", &same).status(), 200);
                assert_eq!(get(h, "jwt-1", &same).status(), 200);
                assert!(h.signatures_checked.get() <= checked + 1);
                // An altered signature is checked (and refused) every time: only valid ones are kept.
                let mut altered = same.clone();
                let last = altered.pop().unwrap();
                altered.push(if last == 'A' { 'B' } else { 'A' });
                let checked_before = h.signatures_checked.get();
                assert_eq!(get(h, "jwt-1", &altered).status(), 401);
                assert_eq!(get(h, "jwt-1", &altered).status(), 401);
                assert_eq!(h.signatures_checked.get(), checked_before + 2);
                // At 557087d an unknown kid, or a device without a record, was refused without
                // a check while a known kid with a bad signature cost one (~4 ms in wasm): the
                // time told which kids and devices were registered. Now each costs one check
                // and all three answer alike.
                let claims = |sub: &str| {
                    serde_json::json!({"sub": sub, "aud": "https://edge.test", "iat": now, "exp": now + 600})
                        .to_string()
                };
                let other_kid = format!(
                    "Bearer {}",
                    crate::http::jwt::sign(&D, "k9", &claims("jwt-1")).unwrap()
                );
                let unknown = format!(
                    "Bearer {}",
                    crate::http::jwt::sign(&D, "k1", &claims("jwt-nobody")).unwrap()
                );
                let known_bad = get(h, "jwt-1", &altered);
                for (auth, device) in [(&other_kid, "jwt-1"), (&unknown, "jwt-nobody")] {
                    let checked = h.signatures_checked.get();
                    let a = get(h, device, auth);
                    assert_eq!(h.signatures_checked.get(), checked + 1, "{device}");
                    assert_eq!(a.status(), 401);
                    let detail = |a: &Answer| {
                        serde_json::from_str::<serde_json::Value>(a.body()).unwrap()["detail"]
                            .clone()
                    };
                    assert_eq!(detail(&a), detail(&known_bad));
                }
                let before = h.accepted().len();
                for (bad, why) in [
                    (jwt("jwt-1", "https://other", now, now + 600), "wrong aud"),
                    (
                        jwt("jwt-1", "https://edge.test", now - 7200, now - 3600),
                        "expired",
                    ),
                    (
                        jwt("jwt-1", "https://edge.test", now, now + 90_000),
                        "lifetime",
                    ),
                    (token("jwt-1"), "a derived token"),
                ] {
                    let a = get(h, "jwt-1", &bad);
                    assert_eq!(a.status(), 401, "{why}: {}", a.body());
                    assert!(answer::header(&a, "www-authenticate").is_some());
                }
                // A valid token of jwt-1 cannot send for another device.
                let a = get(
                    h,
                    "jwt-2",
                    &jwt("jwt-1", "https://edge.test", now, now + 600),
                );
                assert_eq!(a.status(), 403, "{}", a.body());
                assert_eq!(h.accepted().len(), before, "nothing accepted");
            }
        }
    }
}

use super::*;
use crate::domain::enrich::StoredReading;
use crate::hosts::memory::MemoryHost;
use crate::http::answer::header as answer_header;
use crate::http::deployment::{ApiDocument, HostConventions};
use crate::ports::Pairs;

const DEFAULTS: [(&str, &str); 3] = [
    ("COLLECTOR_URL", "http://127.0.0.1:1/ingest"),
    ("AUTH_MODE", "off"),
    ("EDGE_NODE", "test-node"),
];

fn settings(extra: &[(&str, &str)]) -> Deployment {
    // The first pair with a key wins: the test's own settings before the defaults.
    let mut kv = extra.to_vec();
    kv.extend_from_slice(&DEFAULTS);
    crate::config::Settings::load(&Pairs(&kv)).deployment(HostConventions::serving(
        ApiDocument::Served(OPENAPI),
        "settings",
    ))
}

fn head(method: &str, path: &str, query: &str, headers: &[(&str, &str)]) -> Parts {
    let target = if query.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{query}")
    };
    request_head(method, &target, headers).expect("a valid request head")
}

/// What became of a request, as the tests ask: answered, accepted (the answer, and the
/// readings the host's outbox took), or an admin query answered.
#[derive(Debug)]
enum Action {
    Respond(Answer),
    Accept(Taken),
    Admin(AdminQuery),
}

#[derive(Debug)]
struct Taken {
    answer: Answer,
    readings: Vec<StoredReading>,
}

impl Taken {
    fn answer(&self) -> &Answer {
        &self.answer
    }
}

/// One request through the production driver (`pipeline::handle`) on the in-memory host.
fn decide_on(host: MemoryHost, parts: &Parts, body: &[u8]) -> Action {
    let request = http::Request::from_parts(parts.clone(), body.to_vec());
    let answer = host.serve(request);
    let readings = host.take_accepted();
    if !readings.is_empty() {
        return Action::Accept(Taken { answer, readings });
    }
    if answer.status() == 200 && parts.uri.path().starts_with("/admin/") {
        let doc: serde_json::Value = serde_json::from_str(answer.body()).unwrap();
        let query = match doc["query"].as_str() {
            Some("Stats") => AdminQuery::Stats,
            Some("DeadLetters") => AdminQuery::DeadLetters,
            Some("Deliver") => AdminQuery::Deliver,
            other => panic!("an admin answer names its query: {other:?}"),
        };
        return Action::Admin(query);
    }
    Action::Respond(answer)
}

fn host_for(s: &Deployment, now_ms: u64) -> MemoryHost {
    MemoryHost::new(&DEFAULTS, now_ms).with_deployment(s.clone())
}

fn decide_at(s: &Deployment, parts: &Parts, body: &[u8], now_ms: u64) -> Action {
    decide_on(host_for(s, now_ms), parts, body)
}

fn run(
    s: &Deployment,
    method: &str,
    path: &str,
    query: &str,
    ct: Option<&str>,
    body: &str,
) -> Action {
    let headers: Vec<(&str, &str)> = ct.map(|c| ("content-type", c)).into_iter().collect();
    decide_at(
        s,
        &head(method, path, query, &headers),
        body.as_bytes(),
        1_700_000_000_000,
    )
}

fn status(a: &Action) -> u16 {
    match a {
        Action::Respond(r) => r.status().as_u16(),
        Action::Accept(a) => a.answer.status().as_u16(),
        Action::Admin(_) => 0,
    }
}

fn problem_body(a: &Action) -> serde_json::Value {
    match a {
        Action::Respond(r) => {
            assert_eq!(
                answer_header(r, "content-type"),
                Some("application/problem+json")
            );
            serde_json::from_str(r.body()).unwrap()
        }
        other => panic!("expected a problem, got {other:?}"),
    }
}

/// The table of bad inputs the issue asks for: every one a clear 4xx problem document.
#[test]
fn bad_input_table() {
    let s = settings(&[
        ("MAX_READINGS_PER_REQUEST", "3"),
        ("MAX_BODY_BYTES", "2048"),
    ]);
    let j = Some("application/json");
    let nd = Some("application/x-ndjson");
    let big = "x".repeat(3000);
    let long_id = format!("device_id={}&temp=1", "a".repeat(129));
    let four = r#"[{"device_id":"a","temp":1},{"device_id":"a","temp":1},{"device_id":"a","temp":1},{"device_id":"a","temp":1}]"#;
    /// method, path, query, content type, body, expected status
    type Case<'a> = (&'a str, &'a str, &'a str, Option<&'a str>, &'a str, u16);
    #[rustfmt::skip]
    let cases: Vec<Case<'_>> = vec![
        ("GET", "/v1/readings", "", None, "", 400),
        ("GET", "/v1/readings", "device_id=a", None, "", 400),
        ("GET", "/v1/readings", "temp=1", None, "", 400),
        ("GET", "/v1/readings", "device_id=&temp=1", None, "", 400),
        ("GET", "/v1/readings", "device_id=a%20b&temp=1", None, "", 400),
        ("GET", "/v1/readings", "device_id=a&temp=abc", None, "", 400),
        ("GET", "/v1/readings", "device_id=a&temp=", None, "", 400),
        ("GET", "/v1/readings", "device_id=a&temp=0x10", None, "", 400),
        ("GET", "/v1/readings", "device_id=a&temp=NaN", None, "", 422),
        ("GET", "/v1/readings", "device_id=a&temp=inf", None, "", 422),
        ("GET", "/v1/readings", "device_id=a&temp=1e309", None, "", 422),
        ("GET", "/v1/readings", "device_id=a&temp=-274", None, "", 422),
        ("GET", "/v1/readings", "device_id=a&temp=-1&unit=K", None, "", 422),
        ("GET", "/v1/readings", "device_id=a&temp=-460&unit=F", None, "", 422),
        ("GET", "/v1/readings", "device_id=a&temp=1&unit=X", None, "", 400),
        ("GET", "/v1/readings", "device_id=a&temp=1&temp=2", None, "", 400),
        ("GET", "/v1/readings", "device_id=a&device_id=b&temp=2", None, "", 400),
        ("GET", "/v1/readings", "device_id=a&temp=1&ts=-5", None, "", 400),
        ("GET", "/v1/readings", "device_id=a&temp=1&ts=99999999999999999999", None, "", 400),
        ("GET", "/v1/readings", "device_id=a&temp=1&seq=1.5", None, "", 400),
        ("GET", "/v1/readings", "device_id=%ff&temp=1", None, "", 400),
        ("GET", "/v1/readings", "device_id=%zz&temp=1", None, "", 400),
        ("GET", "/v1/readings", &long_id, None, "", 400),
        ("POST", "/v1/readings", "", None, "{}", 415),
        ("POST", "/v1/readings", "", Some("text/plain"), "{}", 415),
        ("POST", "/v1/readings", "", Some("application/json; charset=latin1"), "{}", 415),
        ("POST", "/v1/readings", "", j, "", 400),
        ("POST", "/v1/readings", "", j, "[]", 400),
        ("POST", "/v1/readings", "", j, "{", 400),
        ("POST", "/v1/readings", "", j, "42", 400),
        ("POST", "/v1/readings", "", j, "[1,2]", 400),
        ("POST", "/v1/readings", "", j, r#"{"device_id":"a"}"#, 400),
        ("POST", "/v1/readings", "", j, r#"{"device_id":"a","temp":"20"}"#, 400),
        ("POST", "/v1/readings", "", j, r#"{"device_id":7,"temp":20}"#, 400),
        ("POST", "/v1/readings", "", j, r#"{"device_id":"a","temp":null}"#, 400),
        ("POST", "/v1/readings", "", j, r#"{"device_id":"a","temp":1,"temp":2}"#, 400),
        ("POST", "/v1/readings", "", j, r#"{"device_id":"a","temp":1,"note":1,"note":2}"#, 400),
        ("POST", "/v1/readings", "", j, r#"{"device_id":"a","temp":1e400}"#, 422),
        ("POST", "/v1/readings", "", j, r#"{"device_id":"a","temp":-300}"#, 422),
        ("POST", "/v1/readings", "", j, four, 413),
        ("POST", "/v1/readings", "", j, &big, 413),
        ("POST", "/v1/readings", "", nd, "{\"device_id\":\"a\",\"temp\":1}\n{\"device", 400),
        ("POST", "/v1/readings", "", nd, "\n\n", 400),
        ("PUT", "/v1/readings", "", None, "", 405),
        ("DELETE", "/v1/readings", "", None, "", 405),
        ("POST", "/healthz", "", None, "", 405),
        ("GET", "/nope", "", None, "", 404),
        ("GET", "/v1/readings/x", "", None, "", 404),
        ("GET", "/admin/stats", "", None, "", 403),
        ("GET", "/admin/other", "", None, "", 404),
    ];
    assert!(cases.len() >= 30);
    for (method, path, query, ct, body, expected) in cases {
        let action = run(&s, method, path, query, ct, body);
        assert_eq!(
            status(&action),
            expected,
            "{method} {path}?{query} body={body:.60}"
        );
        let doc = problem_body(&action);
        assert_eq!(doc["status"], expected);
        assert!(doc["type"]
            .as_str()
            .unwrap()
            .starts_with("urn:edge-enrich:problem:"));
        let Action::Respond(answer) = &action else {
            unreachable!()
        };
        let id = answer_header(answer, "x-request-id").unwrap();
        assert_eq!(doc["instance"], format!("urn:edge-enrich:request:{id}"));
        assert!(!doc["detail"].as_str().unwrap().is_empty());
    }
}

#[test]
fn method_not_allowed_names_allow() {
    let Action::Respond(r) = run(&settings(&[]), "PUT", "/v1/readings", "", None, "") else {
        panic!()
    };
    assert_eq!(answer_header(&r, "allow"), Some("GET, POST, OPTIONS"));
}

#[test]
fn get_accepts_one_reading() {
    let a = run(
        &settings(&[]),
        "GET",
        "/v1/readings",
        "device_id=abc&temp=74.3&unit=F",
        None,
        "",
    );
    let Action::Accept(acc) = a else {
        panic!("{a:?}")
    };
    assert_eq!(acc.readings.len(), 1);
    let v: serde_json::Value = serde_json::from_str(acc.answer().body()).unwrap();
    assert_eq!(v["temp_c"], 23.5);
    assert_eq!(v["edge"]["node"], "test-node");
}

#[test]
fn post_answers_an_array() {
    let a = run(
        &settings(&[]),
        "POST",
        "/v1/readings",
        "",
        Some("application/json"),
        r#"{"device_id":"a","temp":20}"#,
    );
    let Action::Accept(acc) = a else {
        panic!("{a:?}")
    };
    let v: serde_json::Value = serde_json::from_str(acc.answer().body()).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 1);
}

#[test]
fn misconfiguration_refuses_ingest_and_shows_in_health() {
    let s =
        crate::config::Settings::load(&Pairs(&[("FLUSH_MAX_ITEMS", "x"), ("AUTH_MODE", "off")]))
            .deployment(HostConventions::serving(
                ApiDocument::Served(OPENAPI),
                "settings",
            ));
    let a = run(&s, "GET", "/v1/readings", "device_id=a&temp=1", None, "");
    assert_eq!(status(&a), 503);
    let Action::Respond(h) = run(&s, "GET", "/healthz", "", None, "") else {
        panic!()
    };
    assert_eq!(h.status(), 503);
    let v: serde_json::Value = serde_json::from_str(h.body()).unwrap();
    assert_eq!(v["config"]["valid"], false);
    assert_eq!(v["config"]["errors"].as_array().unwrap().len(), 2);
}

#[test]
fn health_says_how_the_registry_is_read_and_never_a_record() {
    let health = |extra: &[(&str, &str)]| {
        let s = settings(extra);
        let Action::Respond(h) = run(&s, "GET", "/healthz", "", None, "") else {
            panic!()
        };
        let v: serde_json::Value = serde_json::from_str(h.body()).unwrap();
        v["config"]["registry"].clone()
    };
    assert_eq!(
        health(&[]),
        serde_json::json!({"mode": "off", "source": null, "ttl_s": 60})
    );
    assert_eq!(
        health(&[("REGISTRY_MODE", "required"), ("REGISTRY_TTL_S", "5")]),
        serde_json::json!({"mode": "required", "source": "key-value store", "ttl_s": 5})
    );
    let fixed = health(&[
        ("REGISTRY_MODE", "optional"),
        (
            "REGISTRY",
            r#"{"secret-device":{"status":"active","tags":{"site":"hidden"}}}"#,
        ),
    ]);
    assert_eq!(fixed["source"], "REGISTRY");
    assert!(!fixed.to_string().contains("hidden") && !fixed.to_string().contains("secret-device"));
}

#[test]
fn admin_requires_the_token() {
    let s = settings(&[("ADMIN_TOKEN", "s3cret-s3cret-s3cret-s3cret-s3cret")]);
    let admin = |method: &str, path: &str, auth: Option<&str>| {
        let headers: Vec<(&str, &str)> = auth.map(|a| ("authorization", a)).into_iter().collect();
        decide_at(&s, &head(method, path, "", &headers), b"", 0)
    };
    let token = Some("Bearer s3cret-s3cret-s3cret-s3cret-s3cret");
    assert!(matches!(
        admin("GET", "/admin/dead-letters", token),
        Action::Admin(AdminQuery::DeadLetters)
    ));
    assert_eq!(
        status(&admin(
            "GET",
            "/admin/dead-letters",
            Some("Bearer s3cret-s3cret-s3cret-s3cret-s3cre")
        )),
        401
    );
    assert_eq!(status(&admin("GET", "/admin/dead-letters", None)), 401);
    // The heartbeat is an action: POST only, with the same token.
    assert!(matches!(
        admin("POST", "/admin/deliver", token),
        Action::Admin(AdminQuery::Deliver)
    ));
    assert_eq!(
        status(&admin("POST", "/admin/deliver", Some("Bearer nope"))),
        401
    );
    assert_eq!(status(&admin("GET", "/admin/deliver", token)), 405);
    assert_eq!(status(&admin("POST", "/admin/stats", token)), 405);
    // A token shorter than 32 bytes is a configuration fault, not a weak admin API.
    let weak = settings(&[("ADMIN_TOKEN", "s3cret")]);
    assert!(weak.policy.is_err());
}

const SECRET: &str = "an-api-test-secret-of-32-bytes-or-more";
const NOW: u64 = 1_700_000_000_000;

#[test]
fn device_credentials_gate_ingest_before_the_body_is_parsed() {
    let s = settings(&[("AUTH_MODE", "token"), ("AUTH_SECRET", SECRET)]);
    let token = crate::http::auth::MasterSecret::new(SECRET)
        .unwrap()
        .device_key("dev-1");
    let bearer = format!("Bearer {token}");
    let get = |query: &str, auth: Option<&str>| {
        let headers: Vec<(&str, &str)> = auth.map(|a| ("authorization", a)).into_iter().collect();
        decide_at(&s, &head("GET", READINGS_PATH, query, &headers), b"", NOW)
    };
    assert!(matches!(
        get("device_id=dev-1&temp=20", Some(&bearer)),
        Action::Accept(_)
    ));
    // Another device's readings with this token; no token; garbage body without a token.
    assert_eq!(status(&get("device_id=dev-2&temp=20", Some(&bearer))), 401);
    let a = get("device_id=dev-1&temp=20", None);
    assert_eq!(status(&a), 401);
    let Action::Respond(r) = a else { panic!() };
    assert!(answer_header(&r, "www-authenticate").is_some_and(|v| v.starts_with("Bearer")));
    assert!(!r.body().contains(&token));
    let garbage = head(
        "POST",
        READINGS_PATH,
        "",
        &[("content-type", "application/json")],
    );
    assert_eq!(status(&decide_at(&s, &garbage, b"{{{{ not json", NOW)), 401);
    let mixed = br#"[{"device_id":"dev-1","temp":1},{"device_id":"dev-2","temp":1}]"#;
    let post = head(
        "POST",
        READINGS_PATH,
        "",
        &[
            ("content-type", "application/json"),
            ("authorization", &bearer),
        ],
    );
    assert_eq!(status(&decide_at(&s, &post, mixed, NOW)), 403);

    // A POST naming its device in the query: the token is checked before the body is looked
    // at, so a wrong token on a broken body is a 401, never a 400 (no parse happened).
    let named = |auth: &str| {
        head(
            "POST",
            READINGS_PATH,
            "device_id=dev-1",
            &[
                ("content-type", "application/json"),
                ("authorization", auth),
            ],
        )
    };
    let wrong = format!("Bearer {}", "ab".repeat(32));
    assert_eq!(
        status(&decide_at(&s, &named(&wrong), b"{{{{ not json", NOW)),
        401
    );
    assert_eq!(
        status(&decide_at(&s, &named(&bearer), b"{{{{ not json", NOW)),
        400
    );
    assert!(matches!(
        decide_at(
            &s,
            &named(&bearer),
            br#"{"device_id":"dev-1","temp":1}"#,
            NOW
        ),
        Action::Accept(_)
    ));
    assert_eq!(status(&decide_at(&s, &named(&bearer), mixed, NOW)), 403);
    // Without the query: the body's first device_id, found without parsing. A broken body
    // after it is still a 401 with a wrong token.
    let old = |auth: &str| {
        head(
            "POST",
            READINGS_PATH,
            "",
            &[
                ("content-type", "application/json"),
                ("authorization", auth),
            ],
        )
    };
    let broken_after = br#"[{"note":"\"device_id\":\"dev-2\"","device_id":"dev-1","temp":1},{{{"#;
    assert_eq!(status(&decide_at(&s, &old(&wrong), broken_after, NOW)), 401);
    assert_eq!(
        status(&decide_at(&s, &old(&bearer), broken_after, NOW)),
        400
    );
    // A repeated or invalid device_id in a POST's query is refused before anything else.
    for query in ["device_id=dev-1&device_id=dev-2", "device_id=a%20b"] {
        let p = head(
            "POST",
            READINGS_PATH,
            query,
            &[
                ("content-type", "application/json"),
                ("authorization", &bearer),
            ],
        );
        assert_eq!(status(&decide_at(&s, &p, b"", NOW)), 400, "{query}");
    }
}

#[test]
fn signed_requests_verify_against_the_exact_request() {
    let s = settings(&[("AUTH_MODE", "hmac"), ("AUTH_SECRET", SECRET)]);
    let key = crate::http::auth::MasterSecret::new(SECRET)
        .unwrap()
        .device_key("dev-1");
    let body = br#"{"device_id":"dev-1","temp":21.5}"#;
    let parts = SignedParts {
        method: "POST",
        host: "",
        path: READINGS_PATH,
        query: "",
        content_type: "application/json",
        body,
        device_hint: None,
    };
    let signature = crate::http::auth::sign(&key, "dev-1", &parts, 1_700_000_000);
    let post = head(
        "POST",
        READINGS_PATH,
        "",
        &[
            ("content-type", "application/json"),
            ("authorization", &signature),
        ],
    );
    assert!(matches!(decide_at(&s, &post, body, NOW), Action::Accept(_)));
    assert_eq!(
        status(&decide_at(
            &s,
            &post,
            br#"{"device_id":"dev-1","temp":99}"#,
            NOW
        )),
        401
    );
}

#[test]
fn limits_are_checked_first() {
    let s = settings(&[("MAX_URL_BYTES", "256"), ("MAX_HEADER_BYTES", "1024")]);
    let long = format!("device_id=a&temp=1&x={}", "y".repeat(300));
    assert_eq!(status(&run(&s, "GET", READINGS_PATH, &long, None, "")), 414);
    let padding = "p".repeat(2000);
    let padded = head(
        "GET",
        READINGS_PATH,
        "device_id=a&temp=1",
        &[("x-padding", &padding)],
    );
    assert_eq!(status(&decide_at(&s, &padded, b"", NOW)), 431);
    let deep = format!("{}{}", "[".repeat(50), "]".repeat(50));
    let doc = problem_body(&run(
        &s,
        "POST",
        READINGS_PATH,
        "",
        Some("application/json"),
        &deep,
    ));
    assert!(doc["detail"].as_str().unwrap().contains("nests deeper"));
}

/// What the request line and headers settle is settled before the body: a long URL with a big
/// declared body is a 414, an oversized declared length a 413, a wrong media type a 415.
#[test]
fn the_plan_needs_no_body() {
    let s = settings(&[("MAX_URL_BYTES", "256"), ("MAX_BODY_BYTES", "2048")]);
    let plan_of = |parts: &Parts| plan(parts, &s, NOW).map(|_| ()).map_err(|p| p.status());
    let long = format!("/v1/readings?x={}", "y".repeat(300));
    let huge = "10000000";
    let declared = |target: &str, ct: &str| {
        request_head(
            "POST",
            target,
            &[("content-length", huge), ("content-type", ct)],
        )
        .unwrap()
    };
    assert_eq!(plan_of(&declared(&long, "application/json")), Err(414));
    assert_eq!(
        plan_of(&declared(READINGS_PATH, "application/json")),
        Err(413)
    );
    let small = request_head(
        "POST",
        READINGS_PATH,
        &[("content-length", "10"), ("content-type", "text/plain")],
    )
    .unwrap();
    assert_eq!(plan_of(&small), Err(415));
    let fine = request_head(
        "POST",
        READINGS_PATH,
        &[
            ("content-length", "10"),
            ("content-type", "application/json"),
        ],
    )
    .unwrap();
    assert_eq!(plan_of(&fine), Ok(()));
}

#[test]
fn cors_preflight_and_answers() {
    let s = settings(&[("CORS_ALLOWED_ORIGINS", "https://app.example.com")]);
    let preflight_from = |origin: &str| {
        let headers = [
            ("origin", origin),
            ("access-control-request-method", "POST"),
            ("access-control-request-headers", "content-type"),
        ];
        let Action::Respond(r) =
            decide_at(&s, &head("OPTIONS", READINGS_PATH, "", &headers), b"", NOW)
        else {
            panic!()
        };
        r
    };
    let r = preflight_from("https://app.example.com");
    assert_eq!(r.status(), 204);
    assert_eq!(
        r.headers()
            .get_all("access-control-allow-origin")
            .iter()
            .count(),
        1
    );
    let r = preflight_from("https://evil.example");
    assert!(r
        .headers()
        .keys()
        .all(|k| !k.as_str().starts_with("access-control-")));
}

/// Randomness a test fixes, or a CSPRNG that fails.
struct FixedEntropy(Option<u8>);
impl crate::ports::Entropy for FixedEntropy {
    fn fill(&self, buf: &mut [u8]) -> Result<(), crate::ports::EntropyUnavailable> {
        let byte = self.0.ok_or(crate::ports::EntropyUnavailable)?;
        buf.fill(byte);
        Ok(())
    }
}

#[test]
fn reading_ids_come_from_the_hosts_entropy_and_its_failure_is_the_edges_fault() {
    let s = settings(&[]);
    let parts = head("GET", READINGS_PATH, "device_id=a&temp=1", &[]);
    let decide_with = |entropy: FixedEntropy| {
        let host = host_for(&s, 0x0189_abcd_ef01).with_entropy(entropy);
        decide_on(host, &parts, b"")
    };
    let Action::Accept(accepted) = decide_with(FixedEntropy(Some(0xff))) else {
        panic!("accepted");
    };
    let reading: serde_json::Value = serde_json::from_str(accepted.readings[0].as_str()).unwrap();
    assert_eq!(reading["id"], "0189abcd-ef01-7fff-bfff-ffffffffffff");
    let Action::Respond(answer) = decide_with(FixedEntropy(None)) else {
        panic!("refused");
    };
    assert_eq!(
        answer.status(),
        500,
        "no entropy is never the device's fault"
    );
}

#[test]
fn the_api_document_is_served_by_whoever_the_host_says() {
    let served = settings(&[]);
    let doc = run(&served, "GET", OPENAPI_PATH, "", None, "");
    match &doc {
        Action::Respond(r) => {
            assert_eq!(r.status(), 200);
            assert_eq!(r.body(), OPENAPI);
        }
        _ => panic!("the document is an answer"),
    }
    // Workers: the platform answers from its static assets; a request that reaches the
    // function anyway finds nothing, and a wrong method is still told which one to use.
    let asset = Deployment {
        api_document: ApiDocument::StaticAsset,
        ..served
    };
    let missing = run(&asset, "GET", OPENAPI_PATH, "", None, "");
    assert_eq!(status(&missing), 404);
    assert_eq!(
        problem_body(&missing)["type"],
        "urn:edge-enrich:problem:not-found"
    );
    assert_eq!(
        status(&run(&asset, "POST", OPENAPI_PATH, "", None, "")),
        405
    );
}

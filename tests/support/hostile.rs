//! The hostile-input suite, run against any host: requests written byte for byte (bad encodings,
//! huge numbers, duplicate keys, 10 MB bodies, header injection, forged credentials...). Each
//! must get its documented status and problem type; the runtime must stay healthy; a valid
//! reading is sent before every case, and at the end every reading ever accepted must be at the
//! collector exactly once (and nothing else). Secrets never show in answers or logs.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use edge_enrich::hosts::memory::MemoryHost;
use edge_enrich::http::auth::{sign_version, MasterSecret, SignatureVersion, SignedParts};

use super::*;

pub const SECRET: &str = "hostile-suite-master-secret-0123456789";
pub const ADMIN_TOKEN: &str = "hostile-admin-token-of-32-bytes-or-more";
pub const ALLOWED_ORIGIN: &str = "https://dash.example.com";
/// Small limits, so each is reachable with a modest request.
pub const MAX_READINGS: usize = 20;

/// The host `hmac` signatures name: the deployment's `HMAC_HOST` (wasmtime serve passes no
/// `Host` to a component, so the suite configures one on every host).
pub const HMAC_HOST: &str = "edge.hostile.test";
/// In place of a host to sign: the address the request is sent to.
const TO_ADDRESS: &str = "(the address it is sent to)";

/// The host settings the suite expects (besides COLLECTOR_URL); `mode` is `token` or `hmac`.
pub fn vars(mode: &'static str) -> Vec<(&'static str, &'static str)> {
    let hmac_host = (mode == "hmac").then_some(("HMAC_HOST", HMAC_HOST));
    let mut vars = vec![
        ("AUTH_MODE", mode),
        ("AUTH_SECRET", SECRET),
        ("ADMIN_TOKEN", ADMIN_TOKEN),
        ("CORS_ALLOWED_ORIGINS", ALLOWED_ORIGIN),
        ("MAX_READINGS_PER_REQUEST", "20"),
        ("RATE_LIMIT_READINGS_PER_S", "0.5"),
        ("RATE_LIMIT_BURST", "20"),
    ];
    vars.extend(hmac_host);
    vars
}

fn key(device: &str) -> String {
    MasterSecret::new(SECRET).unwrap().device_key(device)
}

fn bearer(device: &str) -> String {
    format!("Bearer {}", key(device))
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A body of about `bytes` bytes: one reading of device `h` with many distinct unknown keys
/// (the shape that was quadratic to parse).
fn many_keys(bytes: usize) -> String {
    let mut s = String::from(r#"{"device_id":"h","temp":1"#);
    let mut i = 0;
    while s.len() + 16 < bytes {
        s.push_str(&format!(",\"k{i}\":0"));
        i += 1;
    }
    s.push('}');
    s
}

/// One request, byte for byte. `Content-Length` is added from the body unless given.
struct Raw {
    method: &'static str,
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// Signed when written, once the host it goes to is known (v2 signs the host).
    signing: Option<Signing>,
    /// What is sent in place of the signed parts (a request changed after signing).
    tampered: Tampered,
}

#[derive(Default)]
struct Tampered {
    target: Option<String>,
    body: Option<Vec<u8>>,
    content_type: Option<String>,
}

struct Signing {
    device: String,
    key: String,
    timestamp: u64,
    version: SignatureVersion,
    host: Option<String>,
}

impl Raw {
    fn new(method: &'static str, target: impl Into<String>) -> Self {
        Self {
            method,
            target: target.into(),
            headers: Vec::new(),
            body: Vec::new(),
            signing: None,
            tampered: Tampered::default(),
        }
    }
    fn get(query: &str) -> Self {
        Self::new("GET", format!("/v1/readings?{query}"))
    }
    fn post(content_type: &str, body: impl Into<Vec<u8>>) -> Self {
        Self::new("POST", "/v1/readings")
            .header("content-type", content_type)
            .body(body)
    }
    /// A POST that names its device in the query (checked before the body is read).
    fn post_as(device: &str, content_type: &str, body: impl Into<Vec<u8>>) -> Self {
        Self::new("POST", format!("/v1/readings?device_id={device}"))
            .header("content-type", content_type)
            .body(body)
    }
    fn json(body: impl Into<Vec<u8>>) -> Self {
        Self::post("application/json", body)
    }
    fn header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.to_owned(), value.into()));
        self
    }
    fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }
    fn auth(self, device: &str) -> Self {
        self.header("authorization", bearer(device))
    }
    /// Signs the request as `device` with `device_key` at `timestamp` (hmac mode), for
    /// `HMAC_HOST`, when it is written.
    fn signed_with(self, device: &str, device_key: &str, timestamp: u64) -> Self {
        self.signed_as(device, device_key, timestamp, SignatureVersion::V2, None)
    }
    /// Signed as `signed_with`, in `version`, for `host` (None: `HMAC_HOST`; `TO_ADDRESS`: the
    /// address it is sent to).
    fn signed_as(
        mut self,
        device: &str,
        device_key: &str,
        timestamp: u64,
        version: SignatureVersion,
        host: Option<&str>,
    ) -> Self {
        self.signing = Some(Signing {
            device: device.to_owned(),
            key: device_key.to_owned(),
            timestamp,
            version,
            host: host.map(str::to_owned),
        });
        self
    }
    fn signed(self, device: &str) -> Self {
        let k = key(device);
        self.signed_with(device, &k, now_s())
    }
    fn bytes(&self, base: &str) -> Vec<u8> {
        let host = base.trim_start_matches("http://");
        let mut headers = self.headers.clone();
        if let Some(s) = &self.signing {
            let (path, query) = self.target.split_once('?').unwrap_or((&self.target, ""));
            let content_type = headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
                .map_or("", |(_, v)| v.as_str());
            let parts = SignedParts {
                method: self.method,
                host: match s.host.as_deref() {
                    None => HMAC_HOST,
                    Some(TO_ADDRESS) => host,
                    Some(other) => other,
                },
                path,
                query,
                content_type,
                body: &self.body,
                device_hint: None,
            };
            let header = sign_version(&s.key, &s.device, &parts, s.version, s.timestamp);
            headers.push(("authorization".into(), header));
        }
        let target = self.tampered.target.as_ref().unwrap_or(&self.target);
        let body = self.tampered.body.as_ref().unwrap_or(&self.body);
        let mut out = format!("{} {target} HTTP/1.1\r\nhost: {host}\r\n", self.method);
        if let Some(ct) = &self.tampered.content_type {
            for (k, v) in headers.iter_mut() {
                if k.eq_ignore_ascii_case("content-type") {
                    *v = ct.clone();
                }
            }
        }
        let mut has_length = false;
        for (k, v) in &headers {
            has_length |= k.eq_ignore_ascii_case("content-length");
            out.push_str(&format!("{k}: {v}\r\n"));
        }
        if !has_length && (self.method == "POST" || !body.is_empty()) {
            out.push_str(&format!("content-length: {}\r\n", body.len()));
        }
        out.push_str("connection: close\r\n\r\n");
        let mut bytes = out.into_bytes();
        bytes.extend_from_slice(body);
        bytes
    }
}

/// What a case must get back.
enum Expect {
    /// A problem document with this status (its type is checked against the status).
    Problem(u16),
    /// Accepted: 200 with the readings' ids (they join the set that must reach the collector).
    Accepted,
    /// A CORS preflight: 204, with or without `Access-Control-Allow-Origin`.
    Preflight { allowed: bool },
}

struct Case {
    name: &'static str,
    request: Raw,
    expect: Expect,
}

fn case(name: &'static str, request: Raw, expect: Expect) -> Case {
    Case {
        name,
        request,
        expect,
    }
}

fn problem_type(status: u16) -> &'static str {
    match status {
        400 => "invalid-request",
        401 => "unauthorized",
        403 => "forbidden",
        404 => "not-found",
        405 => "method-not-allowed",
        413 => "payload-too-large",
        414 => "uri-too-long",
        415 => "unsupported-media-type",
        422 => "unprocessable-reading",
        429 => "rate-limited",
        431 => "headers-too-large",
        other => panic!("no problem type documented for {other}"),
    }
}

fn readings(device: &str, n: usize) -> String {
    let items: Vec<String> = (0..n)
        .map(|i| {
            format!(
                r#"{{"device_id":"{device}","temp":{}.5,"seq":{i}}}"#,
                20 + i
            )
        })
        .collect();
    format!("[{}]", items.join(","))
}

/// Cases for `token` mode: every request carries device `h`'s token unless the case is about
/// credentials, so each reaches the check it is about.
fn token_cases() -> Vec<Case> {
    use Expect::*;
    let g = |q: &str| Raw::get(q).auth("h");
    let j = |b: &str| Raw::post_as("h", "application/json", b.to_owned()).auth("h");
    let nd = |b: &str| Raw::post_as("h", "application/x-ndjson", b.to_owned()).auth("h");
    // An older client: the device only in the body (found by a pre-scan, then parsed).
    let old = |b: &str| Raw::json(b.to_owned()).auth("h");
    let wrong_token = format!("Bearer {}", "ab".repeat(32));
    let long_id = "x".repeat(129);
    let mut cases = vec![
        // Query strings.
        case("no parameters", g(""), Problem(400)),
        case("device_id only", g("device_id=h"), Problem(400)),
        case("temp only", g("temp=1"), Problem(400)),
        case("empty device_id", g("device_id=&temp=1"), Problem(400)),
        case(
            "space in device_id",
            g("device_id=h%20x&temp=1"),
            Problem(400),
        ),
        case("temp not a number", g("device_id=h&temp=abc"), Problem(400)),
        case("temp empty", g("device_id=h&temp="), Problem(400)),
        case("temp in hex", g("device_id=h&temp=0x10"), Problem(400)),
        case("temp NaN", g("device_id=h&temp=NaN"), Problem(422)),
        case("temp inf", g("device_id=h&temp=inf"), Problem(422)),
        case(
            "temp -infinity",
            g("device_id=h&temp=-infinity"),
            Problem(422),
        ),
        case("temp 1e309", g("device_id=h&temp=1e309"), Problem(422)),
        case("temp -1e309", g("device_id=h&temp=-1e309"), Problem(422)),
        case(
            "below absolute zero",
            g("device_id=h&temp=-274"),
            Problem(422),
        ),
        case(
            "negative kelvin",
            g("device_id=h&temp=-1&unit=K"),
            Problem(422),
        ),
        case(
            "F overflowing in C",
            g("device_id=h&temp=1.7976931348623157e308&unit=F"),
            Problem(422),
        ),
        case("unknown unit", g("device_id=h&temp=1&unit=X"), Problem(400)),
        case(
            "repeated temp",
            g("device_id=h&temp=1&temp=2"),
            Problem(400),
        ),
        case(
            "repeated device_id",
            g("device_id=h&device_id=i&temp=2"),
            Problem(400),
        ),
        case("negative ts", g("device_id=h&temp=1&ts=-5"), Problem(400)),
        case(
            "ts beyond u64",
            g("device_id=h&temp=1&ts=18446744073709551616"),
            Problem(400),
        ),
        case(
            "fractional seq",
            g("device_id=h&temp=1&seq=1.5"),
            Problem(400),
        ),
        case(
            "invalid UTF-8 escape",
            g("device_id=%ff%fe&temp=1"),
            Problem(400),
        ),
        case(
            "broken percent escape",
            g("device_id=%zz&temp=1"),
            Problem(400),
        ),
        case(
            "device_id of 129 chars",
            g(&format!("device_id={long_id}&temp=1")),
            Problem(400),
        ),
        case(
            "URL of 10 kB",
            g(&format!("device_id={}&temp=1", "y".repeat(10_000))),
            Problem(414),
        ),
        case(
            "CRLF injection in query",
            g("device_id=h%0d%0aSet-Cookie:%20pwn=1&temp=1"),
            Problem(400),
        ),
        case(
            "minus zero is a value",
            g("device_id=h&temp=-0&unit=C"),
            Accepted,
        ),
        // Bodies.
        case(
            "no content type",
            Raw::new("POST", "/v1/readings")
                .auth("h")
                .body(readings("h", 1)),
            Problem(415),
        ),
        case(
            "text/plain",
            Raw::post("text/plain", readings("h", 1)).auth("h"),
            Problem(415),
        ),
        case(
            "latin1 charset",
            Raw::post("application/json; charset=latin1", readings("h", 1)).auth("h"),
            Problem(415),
        ),
        case(
            "form encoding",
            Raw::post("application/x-www-form-urlencoded", "device_id=h&temp=1").auth("h"),
            Problem(415),
        ),
        case("empty body", j(""), Problem(400)),
        case("empty array", j("[]"), Problem(400)),
        case("unclosed object", j("{"), Problem(400)),
        case("bare number", j("42"), Problem(400)),
        case("array of numbers", j("[1,2]"), Problem(400)),
        case("missing temp", j(r#"{"device_id":"h"}"#), Problem(400)),
        case(
            "temp as string",
            j(r#"{"device_id":"h","temp":"20"}"#),
            Problem(400),
        ),
        case(
            "device_id as number",
            j(r#"{"device_id":7,"temp":20}"#),
            Problem(400),
        ),
        case(
            "temp null",
            j(r#"{"device_id":"h","temp":null}"#),
            Problem(400),
        ),
        case(
            "duplicate keys",
            j(r#"{"device_id":"h","temp":1,"temp":2}"#),
            Problem(400),
        ),
        case(
            "JSON NaN literal",
            j(r#"{"device_id":"h","temp":NaN}"#),
            Problem(400),
        ),
        case(
            "1e400 in JSON",
            j(r#"{"device_id":"h","temp":1e400}"#),
            Problem(422),
        ),
        case(
            "-300 C in JSON",
            j(r#"{"device_id":"h","temp":-300}"#),
            Problem(422),
        ),
        case(
            "invalid UTF-8 in body",
            Raw::post_as(
                "h",
                "application/json",
                b"{\"device_id\":\"h\xff\",\"temp\":1}".to_vec(),
            )
            .auth("h"),
            Problem(400),
        ),
        case(
            "UTF-16 body",
            Raw::post_as(
                "h",
                "application/json",
                "\u{feff}{\"device_id\":\"h\",\"temp\":1}"
                    .encode_utf16()
                    .flat_map(u16::to_le_bytes)
                    .collect::<Vec<u8>>(),
            )
            .auth("h"),
            Problem(400),
        ),
        case(
            "truncated NDJSON",
            nd("{\"device_id\":\"h\",\"temp\":1}\n{\"device"),
            Problem(400),
        ),
        case("blank NDJSON", nd("\n\n\n"), Problem(400)),
        case(
            "nesting 1000 deep",
            j(&format!("{}{}", "[".repeat(1000), "]".repeat(1000))),
            Problem(400),
        ),
        case(
            "21 readings (limit 20)",
            j(&readings("h", 21)),
            Problem(413),
        ),
        case(
            "body of 300 kB",
            j(&format!("[{}]", " ".repeat(300_000))),
            Problem(413),
        ),
        case(
            "body of 10 MB",
            j(&"x".repeat(10 * 1024 * 1024)),
            Problem(413),
        ),
        case(
            "device_id of 129 chars in JSON",
            j(&format!(r#"{{"device_id":"{long_id}","temp":1}}"#)),
            Problem(400),
        ),
        case(
            "CRLF injection in JSON device_id",
            j(r#"{"device_id":"h\r\nSet-Cookie: pwn=1","temp":1}"#),
            Problem(400),
        ),
        case(
            "one bad reading refuses the batch",
            j(r#"[{"device_id":"h","temp":1},{"device_id":"h","temp":-999}]"#),
            Problem(422),
        ),
        case(
            "ts past what sinks store (2286)",
            j(r#"{"device_id":"h","temp":1,"ts":9999999999999}"#),
            Problem(400),
        ),
        case(
            "ts past what sinks store, in a query",
            g("device_id=h&temp=1&ts=9223372036855"),
            Problem(400),
        ),
        case(
            "33 unknown fields",
            j(&format!(
                r#"{{"device_id":"h","temp":1{}}}"#,
                (0..33).map(|i| format!(",\"x{i}\":1")).collect::<String>()
            )),
            Problem(400),
        ),
        case(
            "21 empty objects (limit 20), the rest unparseable",
            j(&format!("[{},{{{{{{", vec!["{}"; 21].join(","))),
            Problem(413),
        ),
        // Quadratic parsing before authentication (the review's first finding): a 250 kB body
        // of distinct keys. Its answer's handler time is printed (see `run_suite`).
        case(
            "250 kB of keys, wrong token, device named",
            Raw::post_as("h", "application/json", many_keys(250_000))
                .header("authorization", wrong_token.clone()),
            Problem(401),
        ),
        case(
            "250 kB of keys, wrong token, device in the body",
            Raw::json(many_keys(250_000)).header("authorization", wrong_token.clone()),
            Problem(401),
        ),
        case(
            "250 kB of keys, right token",
            j(&many_keys(250_000)),
            Problem(400),
        ),
        case(
            "older client: device only in the body",
            old(r#"[{"device_id":"h","temp":22.5},{"device_id":"h","temp":23}]"#),
            Accepted,
        ),
        case(
            "older client: body naming no device",
            old(r#"[{"temp":1}]"#),
            Problem(401),
        ),
        case(
            "older client: another device's token",
            Raw::json(r#"{"device_id":"h","temp":1}"#).auth("other"),
            Problem(401),
        ),
        case(
            "device named twice in a POST's query",
            Raw::post_as("h&device_id=h", "application/json", readings("h", 1)).auth("h"),
            Problem(400),
        ),
        case(
            "device named in the query, another in the body",
            j(r#"{"device_id":"victim","temp":1}"#),
            Problem(403),
        ),
        // Requests as a whole.
        case(
            "headers of 10 kB",
            g("device_id=h&temp=1").header("x-padding", "p".repeat(10_000)),
            Problem(431),
        ),
        case(
            "PUT",
            Raw::new("PUT", "/v1/readings").auth("h").body("{}"),
            Problem(405),
        ),
        case(
            "DELETE",
            Raw::new("DELETE", "/v1/readings").auth("h"),
            Problem(405),
        ),
        case(
            "unknown path",
            Raw::new("GET", "/v1/readingz?device_id=h&temp=1"),
            Problem(404),
        ),
        case(
            "admin without token",
            Raw::new("GET", "/admin/stats"),
            Problem(401),
        ),
        case(
            "admin with a device token",
            Raw::new("GET", "/admin/stats").header("authorization", bearer("h")),
            Problem(401),
        ),
        // Credentials.
        case(
            "no Authorization",
            Raw::get("device_id=h&temp=1"),
            Problem(401),
        ),
        case(
            "malformed bearer",
            Raw::get("device_id=h&temp=1").header("authorization", "Bearer xyz"),
            Problem(401),
        ),
        case(
            "Basic credentials",
            Raw::get("device_id=h&temp=1").header("authorization", "Basic aDpwYXNz"),
            Problem(401),
        ),
        case(
            "another device's token",
            Raw::get("device_id=h&temp=1").auth("other"),
            Problem(401),
        ),
        case(
            "forged token (right shape)",
            Raw::get("device_id=h&temp=1")
                .header("authorization", format!("Bearer {}", "ab".repeat(32))),
            Problem(401),
        ),
        case(
            "own token, another device's readings too",
            j(r#"[{"device_id":"h","temp":1},{"device_id":"victim","temp":1}]"#),
            Problem(403),
        ),
        case(
            "admin token, one byte short",
            Raw::new("GET", "/admin/stats").header(
                "authorization",
                format!("Bearer {}", &ADMIN_TOKEN[..ADMIN_TOKEN.len() - 1]),
            ),
            Problem(401),
        ),
        case(
            "admin token as device token",
            Raw::get("device_id=h&temp=1").header("authorization", format!("Bearer {ADMIN_TOKEN}")),
            Problem(401),
        ),
        // Rate limit: a full burst is accepted, the next reading is not.
        case(
            "full burst",
            Raw::json(readings("flood", MAX_READINGS)).auth("flood"),
            Accepted,
        ),
        case(
            "over the rate limit",
            Raw::get("device_id=flood&temp=1").auth("flood"),
            Problem(429),
        ),
        // CORS.
        case(
            "preflight from an allowed origin",
            Raw::new("OPTIONS", "/v1/readings")
                .header("origin", ALLOWED_ORIGIN)
                .header("access-control-request-method", "POST")
                .header(
                    "access-control-request-headers",
                    "content-type, authorization",
                ),
            Preflight { allowed: true },
        ),
        case(
            "preflight from another origin",
            Raw::new("OPTIONS", "/v1/readings")
                .header("origin", "https://evil.example")
                .header("access-control-request-method", "POST"),
            Preflight { allowed: false },
        ),
    ];
    // A valid reading from a browser on the allowed origin gets CORS headers (checked below).
    cases.push(case(
        "reading from the allowed origin",
        Raw::get("device_id=browser-1&temp=19.5")
            .auth("browser-1")
            .header("origin", ALLOWED_ORIGIN),
        Accepted,
    ));
    cases
}

/// Cases for `hmac` mode: signatures over method, path, query, body digest and time.
fn hmac_cases() -> Vec<Case> {
    use Expect::*;
    let body = r#"{"device_id":"s1","temp":21.5}"#;
    let k1 = key("s1");
    let now = now_s();
    let mut tampered = Raw::json(body).signed("s1");
    tampered.tampered.body = Some(br#"{"device_id":"s1","temp":99.5}"#.to_vec());
    let mut query_tampered = Raw::get("device_id=s1&temp=1").signed("s1");
    query_tampered.tampered.target = Some("/v1/readings?device_id=s1&temp=2".into());
    let truncated_header = Raw::get("device_id=s1&temp=1").header(
        "authorization",
        format!("EE-HMAC-SHA256 device_id=s1,timestamp={now}"),
    );
    vec![
        case(
            "signed GET",
            Raw::get("device_id=s1&temp=20.5").signed("s1"),
            Accepted,
        ),
        case("signed POST", Raw::json(body).signed("s1"), Accepted),
        case("unsigned", Raw::get("device_id=s1&temp=1"), Problem(401)),
        case(
            "bearer token in hmac mode",
            Raw::get("device_id=s1&temp=1").auth("s1"),
            Problem(401),
        ),
        case(
            "expired signature",
            Raw::json(body).signed_with("s1", &k1, now - 400),
            Problem(401),
        ),
        case(
            "signature from the future",
            Raw::json(body).signed_with("s1", &k1, now + 400),
            Problem(401),
        ),
        case(
            "forged signature",
            Raw::json(body).signed_with("s1", &"0".repeat(64), now),
            Problem(401),
        ),
        case(
            "another device's key",
            Raw::json(body).signed_with("s1", &key("s2"), now),
            Problem(401),
        ),
        case("body changed after signing", tampered, Problem(401)),
        case("query changed after signing", query_tampered, Problem(401)),
        case(
            "signature missing from header",
            truncated_header,
            Problem(401),
        ),
        case(
            "signed by s1, readings of s2",
            Raw::json(r#"{"device_id":"s2","temp":1}"#).signed("s1"),
            Problem(403),
        ),
        // Version 2 binds the host and the content type: a request signed for another
        // deployment sharing the secret (staging) does not replay here.
        case(
            "signed for another host",
            Raw::json(body).signed_as(
                "s1",
                &k1,
                now,
                SignatureVersion::V2,
                Some("staging.example.com"),
            ),
            Problem(401),
        ),
        case(
            "signed for the address it was sent to, not HMAC_HOST",
            Raw::json(body).signed_as("s1", &k1, now, SignatureVersion::V2, Some(TO_ADDRESS)),
            Problem(401),
        ),
        case(
            "content type changed after signing",
            {
                let mut r = Raw::post("application/x-ndjson", body).signed("s1");
                r.tampered.content_type = Some("application/json".into());
                r
            },
            Problem(401),
        ),
        case(
            "version-1 signature (no window configured)",
            Raw::json(body).signed_as("s1", &k1, now, SignatureVersion::V1, None),
            Problem(401),
        ),
        case(
            "unknown signature version",
            Raw::get("device_id=s1&temp=1").header(
                "authorization",
                format!(
                    "EE-HMAC-SHA256 v=9,device_id=s1,timestamp={now},signature={}",
                    "0".repeat(64)
                ),
            ),
            Problem(401),
        ),
    ]
}

/// A valid reading from its own device, sent before every case.
fn valid(mode: &str, n: usize) -> Raw {
    reading_of(mode, &format!("ok-{n}"), n)
}

/// Runs every case of `mode` (`token` or `hmac`) against the edge at `base`, then checks the
/// collector and the host's log. Returns how many cases ran.
pub fn run_suite(
    base: &str,
    mode: &'static str,
    collector: &Collector,
    log: &dyn Fn() -> String,
    core: &MemoryHost,
) -> usize {
    let cases = if mode == "hmac" {
        hmac_cases()
    } else {
        token_cases()
    };
    let secrets: Vec<String> = [SECRET.to_owned(), ADMIN_TOKEN.to_owned()]
        .into_iter()
        .chain(["h", "flood", "s1", "other"].map(key))
        .collect();
    let mut accepted = BTreeSet::new();
    let mut compared = 0;
    for (n, c) in cases.iter().enumerate() {
        let before = raw_request(base, valid(mode, n).bytes(base))
            .unwrap_or_else(|e| panic!("valid reading before {:?}: {e}", c.name));
        accepted.extend(accepted_ids(&before));

        let bytes = c.request.bytes(base);
        let r =
            raw_request(base, bytes.clone()).unwrap_or_else(|e| panic!("case {:?}: {e}", c.name));
        let context = format!("case {:?}: {} {}", c.name, r.status, r.body);
        match c.expect {
            Expect::Problem(status) => {
                assert_eq!(r.status, status, "{context}");
                let doc = assert_problem(&r, status);
                compared += usize::from(answered_as_the_core_does(core, &bytes, &doc, &context));
                assert_eq!(
                    doc["type"],
                    format!("urn:edge-enrich:problem:{}", problem_type(status)),
                    "{context}"
                );
                match status {
                    401 => assert!(r.header("www-authenticate").is_some(), "{context}"),
                    405 => assert!(r.header("allow").is_some(), "{context}"),
                    429 => assert!(
                        r.header("retry-after")
                            .and_then(|v| v.parse::<u32>().ok())
                            .is_some_and(|s| s >= 1),
                        "{context}"
                    ),
                    _ => {}
                }
            }
            Expect::Accepted => {
                accepted.extend(accepted_ids(&r));
                if c.name.contains("minus zero") {
                    assert_eq!(r.json()["temp_c"].to_string(), "0.0", "{context}");
                }
                if c.name.contains("allowed origin") {
                    assert_eq!(
                        r.header("access-control-allow-origin"),
                        Some(ALLOWED_ORIGIN),
                        "{context}"
                    );
                    assert!(
                        r.header("vary").is_some_and(|v| v.contains("Origin")),
                        "{context}"
                    );
                }
            }
            Expect::Preflight { allowed } => {
                assert_eq!(r.status, 204, "{context}");
                assert_eq!(
                    r.header("access-control-allow-origin").is_some(),
                    allowed,
                    "{context} {:?}",
                    r.headers
                );
                assert!(
                    r.header("vary").is_some_and(|v| v.contains("Origin")),
                    "{context}"
                );
            }
        }
        if c.name.starts_with("250 kB") {
            eprintln!(
                "{mode}: {:?} answered {} with {}",
                c.name,
                r.status,
                r.header("server-timing").unwrap_or("no server-timing")
            );
        }
        // Injection attempts never become headers; secrets never appear in an answer.
        assert!(r.header("set-cookie").is_none(), "{context}");
        for s in &secrets {
            assert!(
                !r.body.contains(s.as_str()),
                "{context}: a secret in the answer"
            );
        }
        // The runtime is still healthy.
        let health = raw_request(base, Raw::new("GET", "/healthz").bytes(base))
            .unwrap_or_else(|e| panic!("health after {:?}: {e}", c.name));
        assert_eq!(
            health.status, 200,
            "health after {:?}: {}",
            c.name, health.body
        );
    }
    // Every refusal the core's driver judges alone is answered by this host as it answers it.
    eprintln!("{mode}: {compared} refusals answered as the core's driver answers them");
    assert!(
        compared >= 10,
        "only {compared} refusals compared with the core's driver"
    );
    collector_refusals(base, mode, collector, log, &mut accepted);
    // Everything accepted, before, between and after the hostile cases, arrives exactly once,
    // and nothing from a refused request (or a reading the collector refused) arrives at all.
    collector.assert_stored_exactly(&accepted, Duration::from_secs(30));
    let log = log();
    for s in &secrets {
        assert!(!log.contains(s.as_str()), "a secret in the host's log");
    }
    cases.len()
}

/// A request as written on the wire, for the in-memory host: `None` when the `http` crate
/// cannot hold it (the runtime's own parser judges those).
fn parse_raw(bytes: &[u8]) -> Option<http::Request<Vec<u8>>> {
    let (head, body) = split_head(bytes)?;
    let head = std::str::from_utf8(head).ok()?;
    let mut lines = head.split("\r\n");
    let mut line = lines.next()?.split(' ');
    let (method, target) = (line.next()?, line.next()?);
    let mut builder = http::Request::builder().method(method).uri(target);
    for header in lines {
        let (name, value) = header.split_once(':')?;
        builder = builder.header(name.trim(), value.trim());
    }
    builder.body(body.to_vec()).ok()
}

/// Whether the host's problem document `seen` for the request `bytes` is the one the core's
/// driver gives (`pipeline::handle` on the in-memory host with the same settings): the same
/// type, title, status, detail and field errors. Refusals that depend on what the host holds
/// (rate limits, backlog, failure budgets, which see the sender's address) are not compared;
/// nor is a request the `http` crate cannot hold. Returns whether it compared.
fn answered_as_the_core_does(
    core: &MemoryHost,
    bytes: &[u8],
    seen: &serde_json::Value,
    context: &str,
) -> bool {
    let status = seen["status"].as_u64().unwrap_or(0);
    if matches!(status, 429 | 503) {
        return false;
    }
    let Some(request) = parse_raw(bytes) else {
        return false;
    };
    core.now.set(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64,
    );
    let answer = core.serve(request);
    core.take_accepted();
    let expected: serde_json::Value =
        serde_json::from_str(answer.body()).unwrap_or(serde_json::Value::Null);
    // A 431's detail counts the header bytes the runtime hands on, which differ by runtime
    // (wasmtime drops `host` and `connection`); its type, title and status do not.
    let members: &[&str] = if status == 431 {
        &["type", "title", "status"]
    } else {
        &["type", "title", "status", "detail", "errors"]
    };
    for member in members {
        assert_eq!(
            seen[*member], expected[*member],
            "{context}: `{member}` differs from the core driver's answer"
        );
    }
    true
}

/// Lines of the host's log with this event.
fn events<'a>(log: &'a str, event: &str) -> Vec<&'a str> {
    let needle = format!("\"event\":\"{event}\"");
    log.lines().filter(|l| l.contains(&needle)).collect()
}

/// The dead letters logged, by batch id (a host may capture a line twice: Spin writes the
/// component's output to its terminal and to its log file).
pub fn dead_letter_lines(log: &str) -> std::collections::BTreeMap<String, String> {
    events(log, "flush_dead_letter")
        .into_iter()
        .filter_map(|l| {
            // wrangler wraps a line in a level marker and colour codes: the object is inside.
            let json = &l[l.find('{')?..=l.rfind('}')?];
            let v: serde_json::Value = serde_json::from_str(json).ok()?;
            Some((v["batch_id"].as_str()?.to_owned(), l.to_owned()))
        })
        .collect()
}

/// Waits (30 s at most) for at least `n` dead letters logged besides those in `before`, and
/// returns their log lines.
pub fn await_dead_letters(
    log: &dyn Fn() -> String,
    before: &std::collections::BTreeMap<String, String>,
    n: usize,
) -> Vec<String> {
    wait_for(
        Duration::from_secs(30),
        "the refused readings dead-lettered",
        || {
            let dead: Vec<String> = dead_letter_lines(&log())
                .into_iter()
                .filter(|(id, _)| !before.contains_key(id))
                .map(|(_, line)| line)
                .collect();
            (dead.len() >= n).then_some(dead)
        },
    )
}

/// A reading of `device`, authenticated as the suite's `mode` wants.
fn reading_of(mode: &str, device: &str, n: usize) -> Raw {
    let r = Raw::get(&format!("device_id={device}&temp={n}.25&seq={n}"));
    if mode == "hmac" {
        r.signed(device)
    } else {
        r.auth(device)
    }
}

/// What the collector refuses must not take anything else with it:
/// - one device's readings refused (400, as InfluxDB refuses a write with one bad point),
///   sent concurrently with ten other devices' readings so that batches mix them: every
///   other reading arrives, and each refused reading is dead-lettered alone;
/// - the collector refusing the edge (401, a rotated token): retried, never dead-lettered.
fn collector_refusals(
    base: &str,
    mode: &str,
    collector: &Collector,
    log: &dyn Fn() -> String,
    accepted: &mut BTreeSet<String>,
) {
    let dead_before = dead_letter_lines(&log());
    collector.set_faults(serde_json::json!({"refuse_devices": ["poison"], "refuse_status": 400}));
    let per_device = 8;
    let threads: Vec<_> = (0..11)
        .map(|t| {
            let base = base.to_owned();
            let mode = mode.to_owned();
            std::thread::spawn(move || {
                let device = if t == 10 {
                    "poison".to_owned()
                } else {
                    format!("mix-{t}")
                };
                (0..per_device)
                    .flat_map(|n| {
                        let r = raw_request(&base, reading_of(&mode, &device, n).bytes(&base))
                            .unwrap_or_else(|e| panic!("{device} {n}: {e}"));
                        accepted_ids(&r)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut poisoned = Vec::new();
    for (t, handle) in threads.into_iter().enumerate() {
        let ids = handle.join().unwrap();
        if t == 10 {
            poisoned = ids;
        } else {
            accepted.extend(ids);
        }
    }
    assert_eq!(poisoned.len(), per_device);
    collector.assert_stored_exactly(accepted, Duration::from_secs(30));
    let lines = await_dead_letters(log, &dead_before, per_device);
    assert_eq!(
        lines.len(),
        per_device,
        "one dead letter per refused reading: {lines:#?}"
    );
    for l in &lines {
        assert!(
            l.contains("\"readings\":\"1\""),
            "a dead letter of more than the refused reading: {l}"
        );
    }
    assert!(
        !events(&log(), "flush_refused_split").is_empty(),
        "mixed batches were split"
    );

    // The collector refuses the edge itself three times: retried until it takes the readings.
    let faults_before = events(&log(), "collector_misconfigured").len();
    collector.set_faults(serde_json::json!({"fail_first": 3, "fail_status": 401}));
    for n in 0..3 {
        let r = raw_request(base, reading_of(mode, "after-401", n).bytes(base)).unwrap();
        accepted.extend(accepted_ids(&r));
    }
    collector.assert_stored_exactly(accepted, Duration::from_secs(30));
    assert!(events(&log(), "collector_misconfigured").len() > faults_before);
    assert_eq!(
        dead_letter_lines(&log()).len(),
        dead_before.len() + per_device,
        "a 401 from the collector is never a dead letter"
    );
}

/// A deployment whose settings are wrong answers 503 and lists what is wrong by name and rule,
/// never by value: not a collector URL's credentials, not a secret's length.
pub fn misconfigured<H: EdgeHost>(name: &str, start: impl Fn(&Path, &[(&str, &str)]) -> H) {
    let dir = scratch(&format!("{name}-misconfigured"));
    let values = [
        (
            "COLLECTOR_URL",
            "http://edge-user:pa55w0rd-in-url@127.0.0.1:9/write?db=edge",
        ),
        ("SINK_FORMAT", "influx"),
        ("AUTH_MODE", "token"),
        ("AUTH_SECRET", "short-secret-29-bytes-long-xx"),
        ("ADMIN_TOKEN", "short-admin-token"),
        ("MAX_BODY_BYTES", "123456789012"),
    ];
    let host = start(&dir, &values);
    let base = host.base_url();
    let health = raw_request(&base, Raw::new("GET", "/healthz").bytes(&base)).unwrap();
    assert_eq!(health.status, 503, "{}", health.body);
    let ingest = raw_request(&base, Raw::get("device_id=h&temp=1").bytes(&base)).unwrap();
    assert_eq!(ingest.status, 503, "{}", ingest.body);
    // And says where this host's settings go: a newcomer's first reading names the file or
    // the variables to set (Workers' .dev.vars, Spin variables, the environment).
    let detail = ingest.json()["detail"].as_str().unwrap_or("").to_owned();
    assert!(
        [
            ".dev.vars.example",
            "SPIN_VARIABLE_AUTH_SECRET",
            "wasmtime serve --env"
        ]
        .iter()
        .any(|hint| detail.contains(hint)),
        "no hint of where settings go: {detail}"
    );
    for answer in [&health, &ingest] {
        for key in [
            "COLLECTOR_URL",
            "AUTH_SECRET",
            "ADMIN_TOKEN",
            "MAX_BODY_BYTES",
        ] {
            assert!(
                answer.body.contains(key),
                "{key} not named: {}",
                answer.body
            );
        }
        for secret in [
            "pa55w0rd-in-url",
            "edge-user",
            "short-secret",
            "short-admin-token",
            "123456789012",
            "(got",
        ] {
            assert!(
                !answer.body.contains(secret),
                "{secret:?} echoed: {}",
                answer.body
            );
        }
    }
}

/// The suite in `token` and in `hmac` mode, each on a fresh host (`start(dir, vars)`, named
/// `<name>-hostile-<mode>`) and collector; at least 60 cases in all.
pub fn in_both_modes<H: EdgeHost>(name: &str, start: impl Fn(&Path, &[(&str, &str)]) -> H) {
    let mut total = 0;
    for mode in ["token", "hmac"] {
        let dir = scratch(&format!("{name}-hostile-{mode}"));
        let collector = Collector::start(&dir);
        let ingest = collector.ingest_url();
        let mut vars = vars(mode);
        vars.push(("COLLECTOR_URL", &ingest));
        let host = start(&dir, &vars);
        let core = MemoryHost::new(&vars, 0);
        let cases = run_suite(&host.base_url(), mode, &collector, &|| host.log(), &core);
        eprintln!("{mode}: {cases} hostile cases passed");
        total += cases;
    }
    assert!(total >= 60, "only {total} hostile cases");
    misconfigured(name, &start);
}

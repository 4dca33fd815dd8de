//! The HTTP API, independent of any host: a request in, an [`Action`] out. A host adapter
//! turns its platform's request into [`HttpRequest`], performs the action (handing accepted
//! readings to its batcher, answering admin queries from its store) and sends the response.

use crate::config::Settings;
use crate::domain::enrich::{enrich_all, EdgeInfo, EnrichedReading};
use crate::domain::ids::IdSource;
use crate::domain::reading::FieldIssue;
use crate::http::auth::SignedParts;
use crate::http::body::{parse_readings, BodyFormat};
use crate::http::problem::{Problem, ProblemType};
use crate::http::query::parse_reading_query;

pub const READINGS_PATH: &str = "/v1/readings";
pub const HEALTH_PATH: &str = "/healthz";
pub const ADMIN_PREFIX: &str = "/admin/";
pub const OPENAPI_PATH: &str = "/openapi.json";

/// The API contract (OpenAPI 3.1), served at [`OPENAPI_PATH`]; `tests/openapi.rs` keeps it in
/// step with this router and schemathesis checks the running Worker against it.
pub const OPENAPI: &str = include_str!("../../openapi/openapi.json");

/// Every route and its methods, as the router below serves them.
pub const ROUTES: &[(&str, &[&str])] = &[
    (READINGS_PATH, &["GET", "POST", "OPTIONS"]),
    (HEALTH_PATH, &["GET"]),
    (OPENAPI_PATH, &["GET"]),
    ("/admin/stats", &["GET"]),
    ("/admin/dead-letters", &["GET"]),
];

pub struct HttpRequest<'a> {
    pub method: &'a str,
    pub path: &'a str,
    /// Exactly as sent, without the leading `?`.
    pub query: &'a str,
    pub content_type: Option<&'a str>,
    pub authorization: Option<&'a str>,
    pub origin: Option<&'a str>,
    /// `Access-Control-Request-Method` and `-Headers` of a CORS preflight.
    pub preflight_method: Option<&'a str>,
    pub preflight_headers: Option<&'a str>,
    /// Total size of the request's header names and values.
    pub header_bytes: usize,
    pub body: &'a [u8],
}

impl<'a> HttpRequest<'a> {
    /// A request with no headers beyond those given, for tests and benches.
    pub fn new(method: &'a str, path: &'a str, query: &'a str, body: &'a [u8]) -> Self {
        Self {
            method,
            path,
            query,
            content_type: None,
            authorization: None,
            origin: None,
            preflight_method: None,
            preflight_headers: None,
            header_bytes: 0,
            body,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
}

impl HttpResponse {
    pub fn json(status: u16, body: String) -> Self {
        Self {
            status,
            headers: vec![("content-type", "application/json".into())],
            body,
        }
    }

    pub fn problem(problem: &Problem, request_id: &str) -> Self {
        let problem = problem.clone().with_instance(request_id);
        let mut headers = vec![("content-type", "application/problem+json".to_owned())];
        if let Some(s) = problem.retry_after_s() {
            headers.push(("retry-after", s.to_string()));
        }
        if let Some(allow) = problem.allow() {
            headers.push(("allow", allow.to_owned()));
        }
        if problem.status() == 401 {
            let challenge = problem.challenge().unwrap_or("Bearer");
            headers.push(("www-authenticate", challenge.to_owned()));
        }
        Self {
            status: problem.status(),
            headers,
            body: problem.to_json(),
        }
    }

    /// Headers every answer carries. `handler_ms` is the handler's own time as the host's
    /// clock sees it (on Workers the clock only advances across I/O). `cors` comes from
    /// [`Settings::cors_headers`]; a preflight answer already carries its own.
    pub fn finish(
        mut self,
        request_id: &str,
        handler_ms: f64,
        cors: Vec<(&'static str, String)>,
    ) -> Self {
        if !self.headers.iter().any(|(k, _)| *k == "vary") {
            self.headers.extend(cors);
        }
        self.headers.push(("x-request-id", request_id.to_owned()));
        self.headers.push(("cache-control", "no-store".to_owned()));
        self.headers.push((
            "server-timing",
            format!("handler;dur={:.1}", handler_ms.max(0.0)),
        ));
        self
    }
}

/// Everything the handler needs to know about this request's surroundings.
pub struct RequestContext<'a> {
    pub settings: &'a Settings,
    /// Profiles from the host's key-value store, when it has some: they replace the
    /// deployment's (see `profile_cache`).
    pub stored_profiles: Option<&'a crate::domain::calibration::Profiles>,
    pub edge: &'a EdgeInfo,
    pub now_ms: u64,
    pub request_id: &'a str,
}

/// What the host must do next.
#[derive(Debug)]
pub enum Action {
    Respond(HttpResponse),
    /// Hand these readings to the batcher; answer `accepted.response()` once it acknowledged,
    /// or a 503 problem if it did not.
    Accept(Accepted),
    /// An authenticated admin query for the host's batcher state.
    Admin(AdminQuery),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminQuery {
    Stats,
    DeadLetters,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    One,
    Many,
}

/// Readings that passed validation and enrichment and now wait for the batcher's acknowledgement.
#[derive(Debug)]
pub struct Accepted {
    pub readings: Vec<EnrichedReading>,
    /// The first reading's device id: hosts that shard their batcher route the whole request
    /// by it, so a request is stored by exactly one batcher (accepted or refused whole).
    pub shard_key: String,
    pub received_at_ms: u64,
    /// Readings per device, for the host's rate limiter.
    pub device_costs: Vec<(String, u32)>,
    shape: Shape,
}

impl Accepted {
    pub fn response(&self) -> HttpResponse {
        let body = match self.shape {
            Shape::One => self
                .readings
                .first()
                .map(|r| r.json.clone())
                .unwrap_or_default(),
            Shape::Many => {
                let len = self
                    .readings
                    .iter()
                    .map(|r| r.json.len() + 1)
                    .sum::<usize>()
                    + 2;
                let mut s = String::with_capacity(len);
                s.push('[');
                for (i, r) in self.readings.iter().enumerate() {
                    if i > 0 {
                        s.push(',');
                    }
                    s.push_str(&r.json);
                }
                s.push(']');
                s
            }
        };
        HttpResponse::json(200, body)
    }
}

pub fn handle(req: &HttpRequest<'_>, ctx: &RequestContext<'_>) -> Action {
    match route(req, ctx) {
        Ok(action) => action,
        Err(problem) => Action::Respond(HttpResponse::problem(&problem, ctx.request_id)),
    }
}

fn route(req: &HttpRequest<'_>, ctx: &RequestContext<'_>) -> Result<Action, Problem> {
    check_request_size(req, ctx.settings)?;
    match (req.path, req.method) {
        (READINGS_PATH, "GET" | "POST") => {
            let (config, _) = ctx.settings.ready()?;
            let signed = SignedParts {
                method: req.method,
                path: req.path,
                query: req.query,
                body: req.body,
            };
            // Credentials first: an unauthenticated body is never parsed.
            let credential = config
                .auth
                .verify_request(&signed, req.authorization, ctx.now_ms)?;
            let (readings, shape) = if req.method == "GET" {
                (vec![parse_query(req.query)?], Shape::One)
            } else {
                if req.body.len() > config.max_body_bytes {
                    return Err(Problem::payload_too_large(config.max_body_bytes));
                }
                let format = BodyFormat::from_content_type(req.content_type)?;
                let readings = parse_readings(req.body, format, config.max_readings_per_request)?;
                (readings, Shape::Many)
            };
            let devices = readings.iter().map(|r| r.device_id.as_str());
            config.auth.authorize_devices(&credential, devices)?;
            ingest(readings, shape, ctx)
        }
        (READINGS_PATH, "OPTIONS") => Ok(Action::Respond(preflight(req, ctx.settings))),
        (READINGS_PATH, _) => Err(Problem::method_not_allowed(READINGS_ALLOW)),
        (HEALTH_PATH, "GET") => Ok(Action::Respond(health(ctx))),
        (HEALTH_PATH | OPENAPI_PATH, _) if req.method != "GET" => {
            Err(Problem::method_not_allowed("GET"))
        }
        (OPENAPI_PATH, _) => Ok(Action::Respond(HttpResponse::json(200, OPENAPI.to_owned()))),
        (path, method) if path.starts_with(ADMIN_PREFIX) => {
            let query = match &path[ADMIN_PREFIX.len()..] {
                "stats" => AdminQuery::Stats,
                "dead-letters" => AdminQuery::DeadLetters,
                _ => return Err(Problem::not_found(path)),
            };
            if method != "GET" {
                return Err(Problem::method_not_allowed("GET"));
            }
            authorize_admin(ctx.settings, req.authorization)?;
            Ok(Action::Admin(query))
        }
        (path, _) => Err(Problem::not_found(path)),
    }
}

const READINGS_ALLOW: &str = "GET, POST, OPTIONS";

/// URL and header limits, checked before anything else is looked at.
fn check_request_size(req: &HttpRequest<'_>, settings: &Settings) -> Result<(), Problem> {
    let (max_url, max_headers) = settings.request_limits();
    let url_len = req.path.len() + 1 + req.query.len();
    if url_len > max_url {
        return Err(Problem::new(
            ProblemType::UriTooLong,
            format!("the request target is {url_len} bytes; the limit is {max_url}"),
        ));
    }
    if req.header_bytes > max_headers {
        return Err(Problem::new(
            ProblemType::HeadersTooLarge,
            format!(
                "the request headers total {} bytes; the limit is {max_headers}",
                req.header_bytes
            ),
        ));
    }
    Ok(())
}

fn parse_query(query: &str) -> Result<crate::domain::reading::Reading, Problem> {
    parse_reading_query(query).map_err(|issues| {
        let kind = FieldIssue::problem_type(&issues);
        let errors: Vec<_> = issues
            .into_iter()
            .map(|i| i.into_field_error(None))
            .collect();
        Problem::new(
            kind,
            format!("the reading has {} invalid field(s)", errors.len()),
        )
        .with_errors(errors)
    })
}

/// `OPTIONS /v1/readings`: a CORS preflight, or a plain capability query.
fn preflight(req: &HttpRequest<'_>, settings: &Settings) -> HttpResponse {
    let mut headers = match &settings.config {
        Ok(config) if req.preflight_method.is_some() => {
            config
                .cors
                .preflight_headers(req.origin, req.preflight_method, req.preflight_headers)
        }
        _ => Vec::new(),
    };
    headers.push(("allow", READINGS_ALLOW.to_owned()));
    HttpResponse {
        status: 204,
        headers,
        body: String::new(),
    }
}

fn ingest(
    readings: Vec<crate::domain::reading::Reading>,
    shape: Shape,
    ctx: &RequestContext<'_>,
) -> Result<Action, Problem> {
    let (_, deployed) = ctx.settings.ready()?;
    let profiles = ctx.stored_profiles.unwrap_or(deployed);
    let mut ids = IdSource::new(ctx.now_ms, readings.len()).map_err(|_| Problem::internal())?;
    let shard_key = readings
        .first()
        .map(|r| r.device_id.as_str().to_owned())
        .unwrap_or_default();
    let device_costs =
        crate::http::rate_limit::costs(readings.iter().map(|r| r.device_id.as_str()))
            .into_iter()
            .map(|(d, n)| (d.to_owned(), n))
            .collect();
    let enriched =
        enrich_all(&readings, profiles, ctx.edge, ctx.now_ms, &mut ids).map_err(|errors| {
            Problem::new(
                ProblemType::UnprocessableReading,
                "a calibrated value is out of range; nothing was accepted",
            )
            .with_errors(errors)
        })?;
    Ok(Action::Accept(Accepted {
        readings: enriched,
        shard_key,
        received_at_ms: ctx.now_ms,
        device_costs,
        shape,
    }))
}

fn health(ctx: &RequestContext<'_>) -> HttpResponse {
    let (settings, edge) = (ctx.settings, ctx.edge);
    let errors = settings.errors();
    let (source, count) = match ctx.stored_profiles {
        Some(p) => ("key-value store", Some(p.len())),
        None => (
            settings.profile_source.as_str(),
            settings.profiles.as_ref().map(|p| p.len()).ok(),
        ),
    };
    let valid = errors.is_empty();
    let body = serde_json::json!({
        "status": if valid { "ok" } else { "misconfigured" },
        "platform": edge.platform,
        "node": edge.node,
        "config": {
            "valid": valid,
            "errors": errors,
            "profiles": { "source": source, "count": count },
        },
        "version": env!("CARGO_PKG_VERSION"),
    });
    HttpResponse::json(if valid { 200 } else { 503 }, body.to_string())
}

fn authorize_admin(settings: &Settings, authorization: Option<&str>) -> Result<(), Problem> {
    let Some(expected) = settings
        .config
        .as_ref()
        .ok()
        .and_then(|c| c.admin_token.as_deref())
    else {
        return Err(Problem::new(
            ProblemType::Forbidden,
            "the admin API is disabled: set the ADMIN_TOKEN secret",
        ));
    };
    let given = authorization
        .and_then(|h| h.strip_prefix("Bearer "))
        .unwrap_or("");
    if constant_time_eq(given.as_bytes(), expected.as_bytes()) {
        Ok(())
    } else {
        Err(Problem::new(
            ProblemType::Unauthorized,
            "a valid admin bearer token is required",
        ))
    }
}

/// Compares without an early exit (`subtle`, as for device credentials), so timing does not
/// reveal how much of a token matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    bool::from(a.ct_eq(b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::Pairs;

    fn settings(extra: &[(&str, &str)]) -> Settings {
        // The first pair with a key wins: the test's own settings before the defaults.
        let mut kv = extra.to_vec();
        kv.extend_from_slice(&[
            ("COLLECTOR_URL", "http://127.0.0.1:1/ingest"),
            ("AUTH_MODE", "off"),
        ]);
        Settings::load(&Pairs(&kv))
    }

    fn edge() -> EdgeInfo {
        EdgeInfo::new(Some("test-node"), None, None, None, "test")
    }

    fn run(
        settings: &Settings,
        method: &str,
        path: &str,
        query: &str,
        ct: Option<&str>,
        body: &str,
    ) -> Action {
        let edge = edge();
        let ctx = RequestContext {
            settings,
            stored_profiles: None,
            edge: &edge,
            now_ms: 1_700_000_000_000,
            request_id: "req-1",
        };
        let req = HttpRequest {
            content_type: ct,
            ..HttpRequest::new(method, path, query, body.as_bytes())
        };
        handle(&req, &ctx)
    }

    fn status(a: &Action) -> u16 {
        match a {
            Action::Respond(r) => r.status,
            Action::Accept(a) => a.response().status,
            Action::Admin(_) => 0,
        }
    }

    fn problem_body(a: &Action) -> serde_json::Value {
        match a {
            Action::Respond(r) => {
                assert!(r
                    .headers
                    .iter()
                    .any(|(k, v)| *k == "content-type" && v == "application/problem+json"));
                serde_json::from_str(&r.body).unwrap()
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
            assert_eq!(doc["instance"], "urn:edge-enrich:request:req-1");
            assert!(!doc["detail"].as_str().unwrap().is_empty());
        }
    }

    #[test]
    fn method_not_allowed_names_allow() {
        let a = run(&settings(&[]), "PUT", "/v1/readings", "", None, "");
        let Action::Respond(r) = a else { panic!() };
        assert!(r
            .headers
            .contains(&("allow", "GET, POST, OPTIONS".to_owned())));
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
        assert_eq!(acc.shard_key, "abc");
        let r = acc.response().finish("req-1", 0.25, Vec::new());
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(v["temp_c"], 23.5);
        assert_eq!(v["edge"]["node"], "test-node");
        assert!(r
            .headers
            .contains(&("cache-control", "no-store".to_owned())));
        assert!(r.headers.contains(&("x-request-id", "req-1".to_owned())));
        assert!(
            r.headers
                .contains(&("server-timing", "handler;dur=0.2".to_owned()))
                || r.headers
                    .contains(&("server-timing", "handler;dur=0.3".to_owned()))
        );
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
        let v: serde_json::Value = serde_json::from_str(&acc.response().body).unwrap();
        assert_eq!(v.as_array().unwrap().len(), 1);
    }

    #[test]
    fn misconfiguration_refuses_ingest_and_shows_in_health() {
        let s = Settings::load(&Pairs(&[("FLUSH_MAX_ITEMS", "x"), ("AUTH_MODE", "off")]));
        let a = run(&s, "GET", "/v1/readings", "device_id=a&temp=1", None, "");
        assert_eq!(status(&a), 503);
        let Action::Respond(h) = run(&s, "GET", "/healthz", "", None, "") else {
            panic!()
        };
        assert_eq!(h.status, 503);
        let v: serde_json::Value = serde_json::from_str(&h.body).unwrap();
        assert_eq!(v["config"]["valid"], false);
        assert_eq!(v["config"]["errors"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn admin_requires_the_token() {
        let s = settings(&[("ADMIN_TOKEN", "s3cret")]);
        let edge = edge();
        let ctx = RequestContext {
            settings: &s,
            stored_profiles: None,
            edge: &edge,
            now_ms: 0,
            request_id: "r",
        };
        let mk = |auth| HttpRequest {
            authorization: auth,
            ..HttpRequest::new("GET", "/admin/dead-letters", "", b"")
        };
        assert!(matches!(
            handle(&mk(Some("Bearer s3cret")), &ctx),
            Action::Admin(AdminQuery::DeadLetters)
        ));
        assert_eq!(status(&handle(&mk(Some("Bearer s3cre")), &ctx)), 401);
        assert_eq!(status(&handle(&mk(None), &ctx)), 401);
        assert!(!constant_time_eq(b"ab", b"abc"));
        assert!(constant_time_eq(b"abc", b"abc"));
    }

    const SECRET: &str = "an-api-test-secret-of-32-bytes-or-more";

    fn ctx_run(s: &Settings, req: &HttpRequest<'_>) -> Action {
        let edge = edge();
        let ctx = RequestContext {
            settings: s,
            stored_profiles: None,
            edge: &edge,
            now_ms: 1_700_000_000_000,
            request_id: "req-1",
        };
        handle(req, &ctx)
    }

    #[test]
    fn device_credentials_gate_ingest_before_the_body_is_parsed() {
        let s = settings(&[("AUTH_MODE", "token"), ("AUTH_SECRET", SECRET)]);
        let token = crate::http::auth::MasterSecret::new(SECRET)
            .unwrap()
            .device_key("dev-1");
        let bearer = format!("Bearer {token}");
        let get = |query, auth| HttpRequest {
            authorization: auth,
            ..HttpRequest::new("GET", READINGS_PATH, query, b"")
        };
        assert!(matches!(
            ctx_run(&s, &get("device_id=dev-1&temp=20", Some(&bearer))),
            Action::Accept(_)
        ));
        // Another device's readings with this token; no token; garbage body without a token.
        assert_eq!(
            status(&ctx_run(&s, &get("device_id=dev-2&temp=20", Some(&bearer)))),
            401
        );
        let a = ctx_run(&s, &get("device_id=dev-1&temp=20", None));
        assert_eq!(status(&a), 401);
        let Action::Respond(r) = a else { panic!() };
        assert!(r
            .headers
            .iter()
            .any(|(k, v)| *k == "www-authenticate" && v.starts_with("Bearer")));
        assert!(!r.body.contains(&token));
        let post = HttpRequest {
            content_type: Some("application/json"),
            ..HttpRequest::new("POST", READINGS_PATH, "", b"{{{{ not json")
        };
        assert_eq!(status(&ctx_run(&s, &post)), 401);
        let mixed = br#"[{"device_id":"dev-1","temp":1},{"device_id":"dev-2","temp":1}]"#;
        let post = HttpRequest {
            content_type: Some("application/json"),
            authorization: Some(&bearer),
            ..HttpRequest::new("POST", READINGS_PATH, "", mixed)
        };
        assert_eq!(status(&ctx_run(&s, &post)), 403);
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
            path: READINGS_PATH,
            query: "",
            body,
        };
        let header = crate::http::auth::sign(&key, "dev-1", &parts, 1_700_000_000);
        let post = |body: &'static [u8]| HttpRequest {
            content_type: Some("application/json"),
            authorization: Some(&header),
            ..HttpRequest::new("POST", READINGS_PATH, "", body)
        };
        assert!(matches!(ctx_run(&s, &post(body)), Action::Accept(_)));
        assert_eq!(
            status(&ctx_run(&s, &post(br#"{"device_id":"dev-1","temp":99}"#))),
            401
        );
    }

    #[test]
    fn limits_are_checked_first() {
        let s = settings(&[("MAX_URL_BYTES", "256"), ("MAX_HEADER_BYTES", "1024")]);
        let long = format!("device_id=a&temp=1&x={}", "y".repeat(300));
        assert_eq!(
            status(&ctx_run(
                &s,
                &HttpRequest::new("GET", READINGS_PATH, &long, b"")
            )),
            414
        );
        let req = HttpRequest {
            header_bytes: 2000,
            ..HttpRequest::new("GET", READINGS_PATH, "device_id=a&temp=1", b"")
        };
        assert_eq!(status(&ctx_run(&s, &req)), 431);
        let deep = format!("{}{}", "[".repeat(50), "]".repeat(50));
        let req = HttpRequest {
            content_type: Some("application/json"),
            ..HttpRequest::new("POST", READINGS_PATH, "", deep.as_bytes())
        };
        let doc = problem_body(&ctx_run(&s, &req));
        assert!(doc["detail"].as_str().unwrap().contains("nests deeper"));
    }

    #[test]
    fn cors_preflight_and_answers() {
        let s = settings(&[("CORS_ALLOWED_ORIGINS", "https://app.example.com")]);
        let req = HttpRequest {
            origin: Some("https://app.example.com"),
            preflight_method: Some("POST"),
            preflight_headers: Some("content-type"),
            ..HttpRequest::new("OPTIONS", READINGS_PATH, "", b"")
        };
        let Action::Respond(r) = ctx_run(&s, &req) else {
            panic!()
        };
        assert_eq!(r.status, 204);
        let r = r.finish(
            "req-1",
            0.0,
            s.cors_headers(Some("https://app.example.com")),
        );
        let acao: Vec<_> = r
            .headers
            .iter()
            .filter(|(k, _)| *k == "access-control-allow-origin")
            .collect();
        assert_eq!(acao.len(), 1, "{:?}", r.headers);
        let evil = HttpRequest {
            origin: Some("https://evil.example"),
            ..req
        };
        let Action::Respond(r) = ctx_run(&s, &evil) else {
            panic!()
        };
        assert!(r
            .headers
            .iter()
            .all(|(k, _)| !k.starts_with("access-control-")));
        let answer = HttpResponse::json(200, "{}".into()).finish(
            "r",
            0.0,
            s.cors_headers(Some("https://app.example.com")),
        );
        assert!(answer.headers.contains(&(
            "access-control-allow-origin",
            "https://app.example.com".to_owned()
        )));
    }
}

//! The HTTP API, independent of any host: a request in, an [`Action`] out. A host adapter
//! turns its platform's request into [`HttpRequest`], performs the action (handing accepted
//! readings to its batcher, answering admin queries from its store) and sends the response.

use crate::body::{parse_readings, BodyFormat};
use crate::config::Settings;
use crate::enrich::{enrich_all, EdgeInfo, EnrichedReading};
use crate::ids::IdSource;
use crate::problem::{Problem, ProblemType};
use crate::query::parse_reading_query;
use crate::reading::FieldIssue;

pub const READINGS_PATH: &str = "/v1/readings";
pub const HEALTH_PATH: &str = "/healthz";
pub const ADMIN_PREFIX: &str = "/admin/";

pub struct HttpRequest<'a> {
    pub method: &'a str,
    pub path: &'a str,
    /// Without the leading `?`.
    pub query: &'a str,
    pub content_type: Option<&'a str>,
    pub authorization: Option<&'a str>,
    pub body: &'a [u8],
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
            headers.push(("www-authenticate", "Bearer".to_owned()));
        }
        Self {
            status: problem.status(),
            headers,
            body: problem.to_json(),
        }
    }

    /// Headers every answer carries. `handler_ms` is the handler's own time as the host's
    /// clock sees it (on Workers the clock only advances across I/O).
    pub fn finish(mut self, request_id: &str, handler_ms: f64) -> Self {
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
    match (req.path, req.method) {
        (READINGS_PATH, "GET") => {
            ctx.settings.ready()?;
            let reading = parse_reading_query(req.query).map_err(|issues| {
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
            })?;
            ingest(vec![reading], Shape::One, ctx)
        }
        (READINGS_PATH, "POST") => {
            let (config, _) = ctx.settings.ready()?;
            if req.body.len() > config.max_body_bytes {
                return Err(Problem::payload_too_large(config.max_body_bytes));
            }
            let format = BodyFormat::from_content_type(req.content_type)?;
            let readings = parse_readings(req.body, format, config.max_readings_per_request)?;
            ingest(readings, Shape::Many, ctx)
        }
        (READINGS_PATH, _) => Err(Problem::method_not_allowed("GET, POST")),
        (HEALTH_PATH, "GET") => Ok(Action::Respond(health(ctx.settings, ctx.edge))),
        (HEALTH_PATH, _) => Err(Problem::method_not_allowed("GET")),
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

fn ingest(
    readings: Vec<crate::reading::Reading>,
    shape: Shape,
    ctx: &RequestContext<'_>,
) -> Result<Action, Problem> {
    let (_, profiles) = ctx.settings.ready()?;
    let mut ids = IdSource::new(ctx.now_ms, readings.len()).map_err(|_| Problem::internal())?;
    let shard_key = readings
        .first()
        .map(|r| r.device_id.as_str().to_owned())
        .unwrap_or_default();
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
        shape,
    }))
}

fn health(settings: &Settings, edge: &EdgeInfo) -> HttpResponse {
    let errors = settings.errors();
    let valid = errors.is_empty();
    let body = serde_json::json!({
        "status": if valid { "ok" } else { "misconfigured" },
        "platform": edge.platform,
        "node": edge.node,
        "config": {
            "valid": valid,
            "errors": errors,
            "profiles": {
                "source": settings.profile_source.as_str(),
                "count": settings.profiles.as_ref().map(|p| p.len()).ok(),
            },
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

/// Compares without an early exit, so timing does not reveal how much of a token matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = (a.len() ^ b.len()) as u8 | u8::from(a.len() != b.len());
    for (i, &x) in a.iter().enumerate() {
        diff |= x ^ b.get(i).copied().unwrap_or(0);
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::Pairs;

    fn settings(extra: &[(&str, &str)]) -> Settings {
        let mut kv = vec![("COLLECTOR_URL", "http://127.0.0.1:1/ingest")];
        kv.extend_from_slice(extra);
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
            edge: &edge,
            now_ms: 1_700_000_000_000,
            request_id: "req-1",
        };
        let req = HttpRequest {
            method,
            path,
            query,
            content_type: ct,
            authorization: None,
            body: body.as_bytes(),
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
        assert!(r.headers.contains(&("allow", "GET, POST".to_owned())));
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
        let r = acc.response().finish("req-1", 0.25);
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
        let s = Settings::load(&Pairs(&[("FLUSH_MAX_ITEMS", "x")]));
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
            edge: &edge,
            now_ms: 0,
            request_id: "r",
        };
        let mk = |auth| HttpRequest {
            method: "GET",
            path: "/admin/dead-letters",
            query: "",
            content_type: None,
            authorization: auth,
            body: b"",
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
}

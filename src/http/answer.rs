//! Answers, as the `http` crate's responses with a text body: what every host sends back.

use http::header::{HeaderName, HeaderValue, ALLOW, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{Response, StatusCode};

use crate::http::problem::Problem;

pub type Answer = Response<String>;

/// A status the core produced; the problem types and routes only use valid ones.
fn status(code: u16) -> StatusCode {
    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// Adds `name: value`; a value that is not a valid header value (never produced by the core,
/// which writes ASCII) is left out rather than sent broken.
pub fn add_header(answer: &mut Answer, name: &'static str, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        answer
            .headers_mut()
            .append(HeaderName::from_static(name), value);
    }
}

pub fn json(code: u16, body: String) -> Answer {
    let mut answer = Response::new(body);
    *answer.status_mut() = status(code);
    answer
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    answer
}

pub fn empty(code: u16, headers: &[(&'static str, String)]) -> Answer {
    let mut answer = Response::new(String::new());
    *answer.status_mut() = status(code);
    for (name, value) in headers {
        add_header(&mut answer, name, value);
    }
    answer
}

/// A problem document with the headers its kind calls for.
pub fn problem(problem: &Problem, request_id: &str) -> Answer {
    let problem = problem.clone().with_instance(request_id);
    let mut answer = Response::new(problem.to_json());
    *answer.status_mut() = status(problem.status());
    let headers = answer.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    if let Some(s) = problem.retry_after_s() {
        headers.insert(RETRY_AFTER, HeaderValue::from(s));
    }
    if let Some(allow) = problem.allow() {
        headers.insert(ALLOW, HeaderValue::from_static(allow));
    }
    if problem.status() == 401 {
        let challenge = problem.challenge().unwrap_or("Bearer");
        headers.insert(WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
    }
    answer
}

/// The answer's headers as (lower-case name, value) pairs: for tests and logs.
pub fn header<'a>(answer: &'a Answer, name: &str) -> Option<&'a str> {
    answer.headers().get(name).and_then(|v| v.to_str().ok())
}

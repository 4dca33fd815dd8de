//! Plain HTTP to the edge and the collector (ureq), and what an answer must look like.

use std::time::Duration;

#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(30))
        .build()
}

fn into_resp(r: Result<ureq::Response, ureq::Error>) -> Result<Resp, String> {
    let r = match r {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => return Err(e.to_string()),
    };
    let status = r.status();
    let headers = r
        .headers_names()
        .into_iter()
        .filter_map(|n| r.header(&n).map(|v| (n.clone(), v.to_owned())))
        .collect();
    let body = r.into_string().map_err(|e| e.to_string())?;
    Ok(Resp {
        status,
        headers,
        body,
    })
}

pub fn try_request(
    method: &str,
    url: &str,
    content_type: Option<&str>,
    body: Option<&[u8]>,
) -> Result<Resp, String> {
    let mut req = agent().request(method, url);
    if let Some(ct) = content_type {
        req = req.set("content-type", ct);
    }
    into_resp(match body {
        Some(b) => req.send_bytes(b),
        None => req.call(),
    })
}

pub fn get(url: &str) -> Resp {
    try_request("GET", url, None, None).unwrap_or_else(|e| panic!("GET {url}: {e}"))
}

pub fn post(url: &str, content_type: &str, body: &str) -> Resp {
    try_request("POST", url, Some(content_type), Some(body.as_bytes()))
        .unwrap_or_else(|e| panic!("POST {url}: {e}"))
}

/// Ids of the readings in a 200 answer (one object for GET, an array for POST).
pub fn accepted_ids(resp: &Resp) -> Vec<String> {
    assert_eq!(resp.status, 200, "{}", resp.body);
    let v = resp.json();
    let items = match v.as_array() {
        Some(a) => a.clone(),
        None => vec![v],
    };
    items
        .iter()
        .map(|r| r["id"].as_str().expect("id").to_owned())
        .collect()
}

/// A 503 `backlog-full` problem document with a `Retry-After` of at least a second.
pub fn assert_backlog_full(resp: &Resp) {
    let doc = assert_problem(resp, 503);
    assert_eq!(doc["type"], "urn:edge-enrich:problem:backlog-full");
    assert!(resp
        .header("retry-after")
        .and_then(|v| v.parse::<u32>().ok())
        .is_some_and(|s| s >= 1));
}

pub fn assert_problem(resp: &Resp, status: u16) -> serde_json::Value {
    assert_eq!(resp.status, status, "{}", resp.body);
    assert_eq!(
        resp.header("content-type"),
        Some("application/problem+json"),
        "{}",
        resp.body
    );
    let doc = resp.json();
    assert_eq!(doc["status"].as_u64(), Some(u64::from(status)));
    assert!(
        doc["type"]
            .as_str()
            .is_some_and(|t| t.starts_with("urn:edge-enrich:problem:")),
        "{doc}"
    );
    assert!(
        doc["title"].is_string() && doc["detail"].is_string(),
        "{doc}"
    );
    doc
}

//! Representative requests for the benchmarks (`benches/core.rs` natively and
//! `examples/hot_path.rs` inside wasm), so both time exactly the same work. Included by path
//! from both; not part of the library.

use edge_enrich::hosts::memory::MemoryHost;
use edge_enrich::http::routes;
use http::request::Parts;

pub const GET_QUERY: &str = "device_id=greenhouse-12&temp=74.3&unit=F&ts=1700000000000&seq=42";

/// The in-memory host the benches drive the production pipeline through.
pub fn host() -> MemoryHost {
    MemoryHost::new(
        &[
            ("COLLECTOR_URL", "http://127.0.0.1:1/ingest"),
            ("EDGE_NODE", "bench-node"),
            // The 500-reading body mixes devices, as a gateway's would: no device credentials.
            ("AUTH_MODE", "off"),
            // The same devices' readings millions of times a second: any limit would refuse
            // them, and the benches would time refusals.
            ("RATE_LIMIT_READINGS_PER_S", "0"),
        ],
        1_795_000_000_000,
    )
}

/// `n` readings in mixed units and devices, one per line.
pub fn ndjson_body(n: usize) -> String {
    let units = ["C", "F", "K", "c"];
    let mut body = String::new();
    for i in 0..n {
        let value = match i % 4 {
            1 => 60.0 + (i % 30) as f64 * 0.7,
            2 => 280.0 + (i % 20) as f64 * 0.3,
            _ => 15.0 + (i % 25) as f64 * 0.4,
        };
        let device = match i % 3 {
            0 => format!("greenhouse-{}", i % 17),
            1 => format!("lab-ref-0{}", i % 2),
            _ => format!("sensor-{i}"),
        };
        body.push_str(&format!(
            "{{\"device_id\":\"{device}\",\"temp\":{value},\"unit\":\"{}\",\"ts\":{},\"seq\":{i}}}\n",
            units[i % 4],
            1_700_000_000_000u64 + i as u64
        ));
    }
    body
}

/// The head of a readings request, built once per fixture (hosts build it from their own
/// request; its parsing is theirs, not the core's).
pub fn head(method: &str, query: &str, content_type: Option<&str>) -> Parts {
    let target = if query.is_empty() {
        routes::READINGS_PATH.to_owned()
    } else {
        format!("{}?{query}", routes::READINGS_PATH)
    };
    let headers: Vec<(&str, &str)> = content_type
        .map(|c| ("content-type", c))
        .into_iter()
        .collect();
    routes::request_head(method, &target, &headers).unwrap_or_else(|| {
        // The fixture's own requests are valid; a bad one is refused like any other (404).
        let mut parts = http::Request::new(()).into_parts().0;
        parts.uri = http::Uri::from_static("/invalid");
        parts
    })
}

/// One request through the production driver (`http::pipeline::handle`): limits, routing,
/// validation, calibration, enrichment, the accept use case into the host's outbox, and the
/// answer with its headers. Returns the answer's length (so nothing is optimized away) and the
/// readings accepted (the outbox is emptied, as if delivered).
pub fn handle(host: &MemoryHost, head: &Parts, body: &[u8]) -> (usize, Vec<String>) {
    let answer = host.serve(http::Request::from_parts(head.clone(), body.to_vec()));
    let accepted = host.take_accepted();
    (
        answer.body().len(),
        accepted.iter().map(|r| r.as_str().to_owned()).collect(),
    )
}

/// Everything the benchmarks time, built once: the host, the two request heads, a
/// 500-reading NDJSON body and the 500 enriched readings it yields (for batch encoding).
pub struct Fixture {
    pub host: MemoryHost,
    get_head: Parts,
    post_head: Parts,
    pub ndjson_500: String,
    pub readings: Vec<String>,
}

impl Fixture {
    pub fn new() -> Self {
        let host = host();
        let ndjson_500 = ndjson_body(500);
        let get_head = head("GET", GET_QUERY, None);
        let post_head = head("POST", "", Some("application/x-ndjson"));
        let (_, readings) = handle(&host, &post_head, ndjson_500.as_bytes());
        assert_eq!(
            readings.len(),
            500,
            "the benchmark workload must be accepted"
        );
        Self {
            host,
            get_head,
            post_head,
            ndjson_500,
            readings,
        }
    }

    pub fn get(&self) -> usize {
        handle(&self.host, &self.get_head, b"").0
    }

    pub fn post_500(&self) -> usize {
        handle(&self.host, &self.post_head, self.ndjson_500.as_bytes()).0
    }

    pub fn encode_batch_50(&self) -> usize {
        edge_enrich::application::delivery::sink::encode_json_batch(
            "batch",
            "node",
            1,
            self.readings[..50].iter().map(String::as_str),
        )
        .len()
    }
}

impl Default for Fixture {
    fn default() -> Self {
        Self::new()
    }
}

//! Representative requests for the benchmarks (`benches/core.rs` natively and
//! `examples/hot_path.rs` inside wasm), so both time exactly the same work.
#![doc(hidden)]

use crate::config::Settings;
use crate::domain::enrich::EdgeInfo;
use crate::http::routes::{self, Action, HttpRequest, RequestContext};
use crate::ports::Pairs;

pub const GET_QUERY: &str = "device_id=greenhouse-12&temp=74.3&unit=F&ts=1700000000000&seq=42";

pub fn settings() -> Settings {
    Settings::load(&Pairs(&[
        ("COLLECTOR_URL", "http://127.0.0.1:1/ingest"),
        ("EDGE_NODE", "bench-node"),
        // The 500-reading body mixes devices, as a gateway's would: no device credentials.
        ("AUTH_MODE", "off"),
    ]))
}

pub fn edge(settings: &Settings) -> EdgeInfo {
    EdgeInfo::new(
        settings.edge_node(),
        Some("DFW".into()),
        Some("US".into()),
        Some("Texas".into()),
        "bench",
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

/// One request through validation, calibration, enrichment and answer serialization, as the
/// host adapters run it. Returns the answer's length (so nothing is optimized away) and the
/// readings accepted.
pub fn handle(
    settings: &Settings,
    edge: &EdgeInfo,
    method: &str,
    query: &str,
    content_type: Option<&str>,
    body: &[u8],
) -> (usize, Vec<String>) {
    let request = HttpRequest {
        content_type,
        ..HttpRequest::new(method, routes::READINGS_PATH, query, body)
    };
    let ctx = RequestContext {
        settings,
        stored_profiles: None,
        edge,
        now_ms: 1_795_000_000_000,
        request_id: "bench",
    };
    match routes::handle(&request, &ctx) {
        Action::Accept(accepted) => {
            let answer = accepted.response();
            (
                answer.body.len(),
                accepted.readings.into_iter().map(|r| r.json).collect(),
            )
        }
        Action::Respond(answer) => (answer.body.len(), Vec::new()),
        Action::Admin(_) => (0, Vec::new()),
    }
}

/// Everything the benchmarks time, built once: settings, node tags, a 500-reading NDJSON body and
/// the 500 enriched readings it yields (for batch encoding).
pub struct Fixture {
    pub settings: Settings,
    pub edge: EdgeInfo,
    pub ndjson_500: String,
    pub readings: Vec<String>,
}

impl Fixture {
    pub fn new() -> Self {
        let settings = settings();
        let edge = edge(&settings);
        let ndjson_500 = ndjson_body(500);
        let (_, readings) = handle(
            &settings,
            &edge,
            "POST",
            "",
            Some("application/x-ndjson"),
            ndjson_500.as_bytes(),
        );
        assert_eq!(
            readings.len(),
            500,
            "the benchmark workload must be accepted"
        );
        Self {
            settings,
            edge,
            ndjson_500,
            readings,
        }
    }

    pub fn get(&self) -> usize {
        handle(&self.settings, &self.edge, "GET", GET_QUERY, None, b"").0
    }

    pub fn post_500(&self) -> usize {
        handle(
            &self.settings,
            &self.edge,
            "POST",
            "",
            Some("application/x-ndjson"),
            self.ndjson_500.as_bytes(),
        )
        .0
    }

    pub fn encode_batch_50(&self) -> usize {
        crate::delivery::sink::encode_json_batch(
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

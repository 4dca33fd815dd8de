//! Representative requests for the benchmarks (`benches/core.rs` natively and
//! `examples/hot_path.rs` inside wasm), so both time exactly the same work. Included by path
//! from both; not part of the library.

use edge_enrich::config::Settings;
use edge_enrich::domain::enrich::EdgeInfo;
use edge_enrich::http::deployment::{ApiDocument, Deployment, HostConventions};
use http::request::Parts;

use edge_enrich::http::routes::{self, Action, RequestContext};
use edge_enrich::ports::Pairs;

pub const GET_QUERY: &str = "device_id=greenhouse-12&temp=74.3&unit=F&ts=1700000000000&seq=42";

pub fn settings() -> Deployment {
    Settings::load(&Pairs(&[
        ("COLLECTOR_URL", "http://127.0.0.1:1/ingest"),
        ("EDGE_NODE", "bench-node"),
        // The 500-reading body mixes devices, as a gateway's would: no device credentials.
        ("AUTH_MODE", "off"),
    ]))
    .deployment(HostConventions::serving(
        ApiDocument::Served(routes::OPENAPI),
        "settings",
    ))
}

pub fn edge(settings: &Deployment) -> EdgeInfo {
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

/// One request through validation, calibration, enrichment and answer serialization, as the
/// pipeline runs it between the host's body and its outbox. Returns the answer's length (so
/// nothing is optimized away) and the readings accepted.
pub fn handle(
    settings: &Deployment,
    edge: &EdgeInfo,
    head: &Parts,
    body: &[u8],
) -> (usize, Vec<String>) {
    let ctx = RequestContext {
        settings,
        stored_profiles: None,
        edge,
        now_ms: 1_795_000_000_000,
        request_id: "bench",
        entropy: &edge_enrich::ports::SystemEntropy,
        registration: &edge_enrich::application::registry::Registration::Off,
    };
    match routes::decide(head, body, &ctx) {
        Action::Accept(accepted) => {
            let answer = accepted.answer();
            (
                answer.body().len(),
                accepted
                    .readings
                    .into_iter()
                    .map(|r| r.json.into_string())
                    .collect(),
            )
        }
        Action::Respond(answer) => (answer.body().len(), Vec::new()),
        Action::Admin(_) => (0, Vec::new()),
    }
}

/// Everything the benchmarks time, built once: settings, node tags, the two request heads, a
/// 500-reading NDJSON body and the 500 enriched readings it yields (for batch encoding).
pub struct Fixture {
    pub settings: Deployment,
    pub edge: EdgeInfo,
    get_head: Parts,
    post_head: Parts,
    pub ndjson_500: String,
    pub readings: Vec<String>,
}

impl Fixture {
    pub fn new() -> Self {
        let settings = settings();
        let edge = edge(&settings);
        let ndjson_500 = ndjson_body(500);
        let get_head = head("GET", GET_QUERY, None);
        let post_head = head("POST", "", Some("application/x-ndjson"));
        let (_, readings) = handle(&settings, &edge, &post_head, ndjson_500.as_bytes());
        assert_eq!(
            readings.len(),
            500,
            "the benchmark workload must be accepted"
        );
        Self {
            settings,
            edge,
            get_head,
            post_head,
            ndjson_500,
            readings,
        }
    }

    pub fn get(&self) -> usize {
        handle(&self.settings, &self.edge, &self.get_head, b"").0
    }

    pub fn post_500(&self) -> usize {
        handle(
            &self.settings,
            &self.edge,
            &self.post_head,
            self.ndjson_500.as_bytes(),
        )
        .0
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

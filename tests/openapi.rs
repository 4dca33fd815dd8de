//! The OpenAPI document (openapi/openapi.json, served at /openapi.json) stays in step with the
//! code: the same routes and methods, the same query parameters, every problem type, and an
//! enriched reading and a problem document produced by the core fit their schemas. (The test
//! command also runs schemathesis against the running Worker with this document.)

#![cfg(not(target_arch = "wasm32"))]

use std::collections::BTreeSet;

use edge_enrich::hosts::memory::MemoryHost;
use edge_enrich::http::answer::Answer;
use edge_enrich::http::problem::ProblemType;
use edge_enrich::http::routes::{self, ROUTES};
use serde_json::Value;

fn doc() -> Value {
    serde_json::from_str(routes::OPENAPI).expect("the OpenAPI document is JSON")
}

fn schema<'a>(doc: &'a Value, name: &str) -> &'a Value {
    &doc["components"]["schemas"][name]
}

/// One request through the production driver, on the in-memory host.
fn run(method: &str, query: &str) -> Answer {
    let host = MemoryHost::new(
        &[
            ("COLLECTOR_URL", "http://127.0.0.1:1/ingest"),
            ("AUTH_MODE", "off"),
            ("EDGE_NODE", "n"),
        ],
        1_700_000_000_000,
    );
    let target = format!("{}?{query}", routes::READINGS_PATH);
    let request = http::Request::builder()
        .method(method)
        .uri(target)
        .body(Vec::new())
        .expect("a valid request");
    host.serve(request)
}

/// The keys of `value` are allowed by `schema` and include every required one.
fn fits(value: &Value, schema: &Value, what: &str) {
    let keys: BTreeSet<&str> = value
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let properties: BTreeSet<&str> = schema["properties"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let required: BTreeSet<&str> = schema["required"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        keys.is_subset(&properties),
        "{what}: {keys:?} not all in {properties:?}"
    );
    assert!(
        required.is_subset(&keys),
        "{what}: {required:?} not all in {keys:?}"
    );
}

#[test]
fn routes_and_methods_match_the_router() {
    let doc = doc();
    assert_eq!(doc["openapi"], "3.1.0");
    let documented: BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, ops)| {
            ops.as_object()
                .unwrap()
                .keys()
                .map(move |m| (path.clone(), m.to_ascii_uppercase()))
        })
        .collect();
    let served: BTreeSet<(String, String)> = ROUTES
        .iter()
        .flat_map(|(path, methods)| {
            methods
                .iter()
                .map(move |m| (path.to_string(), m.to_string()))
        })
        .collect();
    assert_eq!(documented, served);
}

#[test]
fn query_parameters_match_the_parser() {
    let doc = doc();
    let documented: BTreeSet<&str> = doc["paths"]["/v1/readings"]["get"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    let parsed: BTreeSet<&str> = edge_enrich::http::query::KNOWN.into_iter().collect();
    assert_eq!(documented, parsed);
    let body: BTreeSet<&str> = schema(&doc, "Reading")["properties"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(body, parsed, "a JSON reading has the same fields");
}

#[test]
fn every_problem_type_is_documented() {
    let doc = doc();
    let documented: BTreeSet<&str> = schema(&doc, "Problem")["properties"]["type"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let all: BTreeSet<&str> = ProblemType::ALL.iter().map(|k| k.uri()).collect();
    assert_eq!(documented, all);
    // Every status a problem can carry has a documented response.
    for kind in ProblemType::ALL {
        let name = format!("Problem{}", kind.status());
        assert!(
            doc["components"]["responses"].get(&name).is_some(),
            "no response {name} for {}",
            kind.uri()
        );
    }
}

#[test]
fn answers_fit_their_schemas() {
    let doc = doc();
    let accepted = run("GET", "device_id=lab-ref-01&temp=70&unit=F&ts=5&seq=1");
    assert_eq!(accepted.status(), 200, "a valid reading is accepted");
    let reading: Value = serde_json::from_str(accepted.body()).unwrap();
    let enriched = schema(&doc, "EnrichedReading");
    fits(&reading, enriched, "EnrichedReading");
    fits(&reading["edge"], &enriched["properties"]["edge"], "edge");
    fits(&reading["raw"], &enriched["properties"]["raw"], "raw");
    fits(
        &reading["calibration"],
        &enriched["properties"]["calibration"]["oneOf"][1],
        "calibration",
    );
    let problem = run("GET", "device_id=a&temp=NaN");
    assert_eq!(problem.status(), 422, "NaN is refused");
    let problem: Value = serde_json::from_str(problem.body()).unwrap();
    fits(&problem, schema(&doc, "Problem"), "Problem");
    fits(
        &problem["errors"][0],
        &schema(&doc, "Problem")["properties"]["errors"]["items"],
        "Problem.errors[]",
    );
}

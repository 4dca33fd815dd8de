//! What every fuzz target checks, shared with `tests/regressions.rs`, which replays each input
//! ever saved under `regressions/<target>/` (crashes turned into regression cases).
//!
//! Beyond "never panics", each check asserts the contract: bad input is a 4xx problem document
//! (valid JSON with the RFC 9457 members), good input yields finite, calibrated readings.

use edge_enrich::domain::calibration::Profiles;
use edge_enrich::domain::reading::{DeviceId, Temperature, Unit};
use edge_enrich::hosts::memory::MemoryHost;
use edge_enrich::http::body::{parse_readings, BodyFormat};
use edge_enrich::http::query::parse_reading_query;
use edge_enrich::http::routes;

/// One target's checks over one input.
pub type Check = fn(&[u8]);

pub const TARGETS: &[(&str, Check)] = &[
    ("query", query),
    ("registry_and_jwt", registry_and_jwt),
    ("body_json", body_json),
    ("body_ndjson", body_ndjson),
    ("calibration_profiles", calibration_profiles),
];

const MAX_READINGS: usize = 50;

const SETTINGS: &[(&str, &str)] = &[
    ("COLLECTOR_URL", "http://127.0.0.1:1/ingest"),
    ("AUTH_MODE", "off"),
    ("MAX_READINGS_PER_REQUEST", "50"),
    ("RATE_LIMIT_BURST", "50"),
];

/// Runs one request through the production driver (`pipeline::handle`, on the in-memory host)
/// and checks the answer's shape, and the readings the outbox took.
fn through_api(method: &str, query: &str, content_type: Option<&str>, body: &[u8]) {
    let host = MemoryHost::new(SETTINGS, 1_700_000_000_000);
    let mut request = http::Request::builder()
        .method(method)
        .uri(format!("{}?{query}", routes::READINGS_PATH));
    if let Some(c) = content_type {
        request = request.header("content-type", c);
    }
    // A target that is not a valid request URI never reaches the edge: the runtime refuses it.
    let Ok(request) = request.body(body.to_vec()) else {
        return;
    };
    let answer = host.serve(request);
    let status = answer.status().as_u16();
    let accepted = host.take_accepted();
    if status == 200 {
        assert!(!accepted.is_empty() && accepted.len() <= MAX_READINGS);
        for r in &accepted {
            let doc: serde_json::Value =
                serde_json::from_str(r.as_str()).expect("an enriched reading is JSON");
            let temp_c = doc["temp_c"].as_f64().expect("temp_c is a number");
            assert!(temp_c.is_finite());
            DeviceId::parse(doc["device_id"].as_str().unwrap()).expect("a valid device id");
        }
        serde_json::from_str::<serde_json::Value>(answer.body()).expect("the answer is JSON");
    } else {
        assert!((400..500).contains(&status), "status {status}");
        assert!(accepted.is_empty(), "a refused request stores nothing");
        let doc: serde_json::Value =
            serde_json::from_str(answer.body()).expect("a problem document is JSON");
        assert_eq!(doc["status"], status);
        assert!(doc["type"]
            .as_str()
            .unwrap()
            .starts_with("urn:edge-enrich:problem:"));
        assert!(!doc["detail"].as_str().unwrap().is_empty());
    }
}

pub fn query(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match parse_reading_query(text) {
        Ok(reading) => {
            assert!(reading.temp.celsius().is_finite());
            assert!(reading.temp.celsius() >= -273.15 - 1e-6);
        }
        Err(issues) => assert!(!issues.is_empty()),
    }
    through_api("GET", text, None, b"");
}

fn body(data: &[u8], format: BodyFormat, content_type: &str) {
    match parse_readings(data, format, MAX_READINGS) {
        Ok(readings) => {
            assert!(!readings.is_empty() && readings.len() <= MAX_READINGS);
            for r in &readings {
                assert!(r.temp.celsius().is_finite());
            }
        }
        Err(problem) => assert!((400..500).contains(&problem.status())),
    }
    through_api("POST", "", Some(content_type), data);
}

pub fn body_json(data: &[u8]) {
    body(data, BodyFormat::Json, "application/json");
}

pub fn body_ndjson(data: &[u8]) {
    body(data, BodyFormat::Ndjson, "application/x-ndjson");
}

pub fn calibration_profiles(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Profiles::parse(text) {
        Ok(profiles) => {
            for device in ["a", "lab-01", "greenhouse-7", "x:y.z"] {
                let device = DeviceId::parse(device).unwrap();
                for (value, unit) in [
                    (20.0, Unit::Celsius),
                    (-459.67, Unit::Fahrenheit),
                    (1e6, Unit::Kelvin),
                ] {
                    let temp = Temperature::new(value, unit).unwrap();
                    if let Ok((c, _)) = profiles.calibrate(&device, temp) {
                        assert!(c.is_finite());
                    }
                }
            }
        }
        Err(errors) => assert!(!errors.is_empty() && errors.iter().all(|e| !e.is_empty())),
    }
}

/// A registry record and a device JWT, both from the same bytes: a record parses within its
/// bounds or names its fault; a token is judged without panicking, and one that passes its
/// checks names a valid device and only verifies with the key that signed it.
pub fn registry_and_jwt(data: &[u8]) {
    use edge_enrich::domain::device::{DeviceRecord, MAX_KEYS, MAX_TAGS};
    use edge_enrich::http::jwt;
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match DeviceRecord::parse(text) {
        Ok(r) => assert!(r.tags.len() <= MAX_TAGS && r.keys.len() <= MAX_KEYS),
        Err(fault) => assert!(!fault.is_empty()),
    }
    const NOW: u64 = 1_800_000_000;
    if let Ok(token) = jwt::parse(text, "fuzz-aud", NOW) {
        assert!(DeviceId::parse(token.device().as_str()).is_ok());
        assert!(text.len() <= jwt::MAX_TOKEN_BYTES);
        let record = DeviceRecord::parse(
            r#"{"status":"active","keys":[{"kid":"k1","alg":"ES256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}"#,
        )
        .unwrap();
        // RFC 7515 A.3's key: no fuzzed input can carry a signature it made.
        let _ = token.verify(Some(&record), NOW);
    }
}

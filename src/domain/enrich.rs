//! Enrichment: calibration result + node tags + server time + id, serialized once.
//! The JSON text made here is what the device gets back and, byte for byte, what the
//! collector receives.

use serde::Serialize;

use std::collections::BTreeMap;
use std::rc::Rc;

use crate::domain::calibration::{self, Profiles};
use crate::domain::device::DeviceRecord;
use crate::domain::ids::IdSource;
use crate::domain::reading::Reading;

/// Where a reading was handled. `colo`/`country`/`region` come from the host's request
/// metadata and are null when the host has none (e.g. locally).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EdgeInfo {
    pub node: String,
    pub colo: Option<String>,
    pub country: Option<String>,
    pub region: Option<String>,
    pub platform: &'static str,
}

impl EdgeInfo {
    /// `EDGE_NODE` wins; otherwise the node is named after the colo (`cf-dfw`), else `local`.
    pub fn new(
        configured_node: Option<&str>,
        colo: Option<String>,
        country: Option<String>,
        region: Option<String>,
        platform: &'static str,
    ) -> Self {
        let node = match (configured_node, colo.as_deref()) {
            (Some(n), _) if !n.is_empty() => n.to_owned(),
            (_, Some(c)) if !c.is_empty() => {
                format!("{}-{}", node_prefix(platform), c.to_ascii_lowercase())
            }
            _ => String::from("local"),
        };
        Self {
            node,
            colo,
            country,
            region,
            platform,
        }
    }
}

fn node_prefix(platform: &str) -> &'static str {
    match platform {
        "cloudflare-workers" => "cf",
        _ => "edge",
    }
}

#[derive(Serialize)]
struct Enriched<'a> {
    id: &'a str,
    device_id: &'a str,
    temp_c: f64,
    raw: Raw,
    calibration: Option<CalibrationTag<'a>>,
    /// The version of the profile set in force, calibrated or not.
    profiles_version: u32,
    edge: &'a EdgeInfo,
    /// The device's registry record, when there is one: its tags and key version.
    #[serde(skip_serializing_if = "Option::is_none")]
    device: Option<DeviceTags<'a>>,
    received_at_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    ts: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seq: Option<u64>,
}

#[derive(Serialize)]
struct DeviceTags<'a> {
    tags: &'a BTreeMap<String, String>,
    key_version: u32,
}

#[derive(Serialize)]
struct Raw {
    value: f64,
    unit: &'static str,
}

#[derive(Serialize)]
struct CalibrationTag<'a> {
    profile: &'a str,
    version: u32,
    gain: f64,
    offset: f64,
}

/// One enriched reading: its id and its JSON text.
#[derive(Debug, Clone, PartialEq)]
pub struct EnrichedReading {
    pub id: String,
    pub json: EnrichedJson,
}

/// The JSON text of an enriched reading, as the device gets it back and the collector receives
/// it: one object on one line (serde_json's compact form), starting with `{`. Only
/// [`enrich_all`] makes one, so code holding one needs no check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrichedJson(String);

impl EnrichedJson {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

/// An enriched reading as the outbox holds, stores and sends it: an [`EnrichedJson`]'s text,
/// shared (a batch, a segment and a retry hold the same text without copying it). Made from an
/// `EnrichedJson`, or from text a store or the host's own RPC gives back, which only ever holds
/// what was written from one of these (`from_store`): so a batch can be built by joining them
/// with commas and a segment with newlines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredReading(Rc<str>);

impl StoredReading {
    /// Text written from a `StoredReading` and read back: from the host's store, or from its
    /// RPC between an isolate and its Durable Object.
    pub fn from_store(text: &str) -> Self {
        debug_assert!(
            text.starts_with('{') && text.ends_with('}') && !text.contains('\n'),
            "not a stored reading: {text}"
        );
        Self(Rc::from(text))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<&EnrichedJson> for StoredReading {
    fn from(json: &EnrichedJson) -> Self {
        Self(Rc::from(json.as_str()))
    }
}

/// Why a request's readings could not be enriched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnrichError {
    /// Calibrated values out of range, by reading index: the device's fault.
    OutOfRange(Vec<(usize, crate::domain::reading::FieldIssue)>),
    /// Fewer ids were drawn than readings: the edge's fault, never the device's.
    IdsExhausted,
}

/// Calibrates every reading first and only then assigns ids, so a request is accepted whole
/// or refused whole (a calibrated value can still overflow: reported per index as 422).
/// `device` is the registry record of the request's one device, when it has one: its
/// calibration takes precedence over the profiles, and its tags are joined on.
pub fn enrich_all(
    readings: &[Reading],
    profiles: &Profiles,
    device: Option<&DeviceRecord>,
    edge: &EdgeInfo,
    received_at_ms: u64,
    ids: &mut IdSource,
) -> Result<Vec<EnrichedReading>, EnrichError> {
    let mut calibrated = Vec::with_capacity(readings.len());
    let mut issues = Vec::new();
    for (index, r) in readings.iter().enumerate() {
        let result = match device.and_then(|d| d.calibration.as_ref()) {
            Some(own) => calibration::apply(Some(own), r.temp),
            None => profiles.calibrate(&r.device_id, r.temp),
        };
        match result {
            Ok(c) => calibrated.push(c),
            Err(issue) => issues.push((index, issue)),
        }
    }
    if !issues.is_empty() {
        return Err(EnrichError::OutOfRange(issues));
    }
    let mut out = Vec::with_capacity(readings.len());
    for (r, (temp_c, profile)) in readings.iter().zip(calibrated) {
        let Some(id) = ids.next_id() else {
            return Err(EnrichError::IdsExhausted);
        };
        let doc = Enriched {
            id: &id,
            device_id: r.device_id.as_str(),
            temp_c,
            raw: Raw {
                value: r.temp.value(),
                unit: r.temp.unit().symbol(),
            },
            calibration: profile.map(|p| CalibrationTag {
                profile: &p.pattern,
                version: p.version,
                gain: p.gain,
                offset: p.offset,
            }),
            profiles_version: profiles.version(),
            edge,
            device: device.map(|d| DeviceTags {
                tags: &d.tags,
                key_version: d.key_version,
            }),
            received_at_ms,
            ts: r.ts,
            seq: r.seq,
        };
        // Only strings and finite numbers: serialization cannot fail.
        let json = serde_json::to_string(&doc).unwrap_or_default();
        out.push(EnrichedReading {
            id,
            json: EnrichedJson(json),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::query::parse_reading_query;

    #[test]
    fn node_naming() {
        assert_eq!(
            EdgeInfo::new(
                Some("n1"),
                Some("DFW".into()),
                None,
                None,
                "cloudflare-workers"
            )
            .node,
            "n1"
        );
        assert_eq!(
            EdgeInfo::new(None, Some("DFW".into()), None, None, "cloudflare-workers").node,
            "cf-dfw"
        );
        assert_eq!(
            EdgeInfo::new(Some(""), None, None, None, "spin").node,
            "local"
        );
    }

    #[test]
    fn enriched_document_shape() {
        let profiles =
            Profiles::parse(r#"[{"match":"lab-*","gain":1.0,"offset":-0.5,"version":4}]"#).unwrap();
        let edge = EdgeInfo::new(Some("n1"), None, None, None, "cloudflare-workers");
        let readings = vec![
            parse_reading_query("device_id=lab-1&temp=74.3&unit=F&ts=5&seq=6").unwrap(),
            parse_reading_query("device_id=other&temp=-0.04").unwrap(),
        ];
        let mut ids = IdSource::new(1_700_000_000_000, (0..20).collect());
        let out = enrich_all(
            &readings,
            &profiles,
            None,
            &edge,
            1_700_000_000_123,
            &mut ids,
        )
        .unwrap();
        let v: serde_json::Value = serde_json::from_str(out[0].json.as_str()).unwrap();
        assert_eq!(v["id"], out[0].id.as_str());
        assert_eq!(v["device_id"], "lab-1");
        assert_eq!(v["temp_c"], 23.0);
        assert_eq!(v["raw"], serde_json::json!({"value": 74.3, "unit": "F"}));
        assert_eq!(
            v["calibration"],
            serde_json::json!({"profile": "lab-*", "version": 4, "gain": 1.0, "offset": -0.5})
        );
        assert_eq!(
            v["edge"],
            serde_json::json!({"node": "n1", "colo": null, "country": null, "region": null, "platform": "cloudflare-workers"})
        );
        assert_eq!(v["received_at_ms"], 1_700_000_000_123u64);
        assert_eq!((v["ts"].as_u64(), v["seq"].as_u64()), (Some(5), Some(6)));
        let w: serde_json::Value = serde_json::from_str(out[1].json.as_str()).unwrap();
        assert!(w["calibration"].is_null());
        assert_eq!(w["temp_c"], 0.0);
        assert!(w.get("ts").is_none());
        assert_ne!(out[0].id, out[1].id);
        assert!(v.get("device").is_none(), "no record, no device member");
    }

    #[test]
    fn a_registry_record_calibrates_and_tags() {
        let profiles =
            Profiles::parse(r#"[{"match":"lab-*","gain":1.0,"offset":-0.5,"version":4}]"#).unwrap();
        let record = DeviceRecord::parse(
            r#"{"status":"active","tags":{"site":"fra-1","floor":"3"},"key_version":2,
                "calibration":{"offset":1.0,"version":9}}"#,
        )
        .unwrap();
        let edge = EdgeInfo::new(Some("n1"), None, None, None, "spin");
        let readings = vec![parse_reading_query("device_id=lab-1&temp=20").unwrap()];
        let mut ids = IdSource::new(1, (0..10).collect());
        let out = enrich_all(&readings, &profiles, Some(&record), &edge, 2, &mut ids).unwrap();
        let v: serde_json::Value = serde_json::from_str(out[0].json.as_str()).unwrap();
        assert_eq!(v["temp_c"], 21.0, "the record's calibration, not lab-*");
        assert_eq!(v["calibration"]["profile"], "registry");
        assert_eq!(v["calibration"]["version"], 9);
        assert_eq!(
            v["device"],
            serde_json::json!({"tags": {"floor": "3", "site": "fra-1"}, "key_version": 2})
        );
    }
}

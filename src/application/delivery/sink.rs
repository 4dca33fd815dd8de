//! What the collector receives, in the format the deployment chose (`SINK_FORMAT`). All formats
//! share the batching, retries and `Idempotency-Key: <batch_id>`; only the body differs.
//! - `json`: `{"batch_id":…,"edge_node":…,"sent_at_ms":…,"readings":[…]}`, the readings verbatim
//!   as enriched (no re-parsing, no re-serializing).
//! - `ndjson`: the readings verbatim, one per line.
//! - `influx`: InfluxDB line protocol (InfluxDB, VictoriaMetrics, Telegraf), one point per
//!   reading: `temperature,colo=…,device_id=…,edge_node=… temp_c=…,raw=… <ms>`, timed by the
//!   device's `ts` when it sent one, else by `received_at_ms`. (A series holds one point per
//!   millisecond: two readings of one device at the same time and node collapse into one, the
//!   database's own rule; it also makes a retried batch harmless.) The registry tags named by
//!   `INFLUX_TAG_KEYS` become tags too, when a reading carries them.

use serde::Deserialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkFormat {
    Json,
    Ndjson,
    Influx,
}

impl SinkFormat {
    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "json" => Some(Self::Json),
            "ndjson" => Some(Self::Ndjson),
            "influx" => Some(Self::Influx),
            _ => None,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Self::Json => JSON_CONTENT_TYPE,
            Self::Ndjson => "application/x-ndjson",
            Self::Influx => "text/plain; charset=utf-8",
        }
    }
}

pub const JSON_CONTENT_TYPE: &str = "application/json";
pub const INFLUX_MEASUREMENT: &str = "temperature";

/// A batch body in `format`. Fails only if a stored reading is not an enriched reading document
/// (which the edge never stores): the host then dead-letters the batch rather than drop it.
pub fn encode_batch<'a>(
    format: SinkFormat,
    tag_keys: &[String],
    batch_id: &str,
    edge_node: &str,
    sent_at_ms: u64,
    readings: impl IntoIterator<Item = &'a str>,
) -> Result<String, String> {
    match format {
        SinkFormat::Json => Ok(encode_json_batch(batch_id, edge_node, sent_at_ms, readings)),
        SinkFormat::Ndjson => {
            let mut out = String::with_capacity(256);
            for r in readings {
                out.push_str(r);
                out.push('\n');
            }
            Ok(out)
        }
        SinkFormat::Influx => {
            let mut out = String::with_capacity(256);
            for (i, r) in readings.into_iter().enumerate() {
                push_influx_line(&mut out, r, tag_keys)
                    .map_err(|e| format!("readings[{i}]: {e}"))?;
            }
            Ok(out)
        }
    }
}

/// `{"batch_id":…,"edge_node":…,"sent_at_ms":…,"readings":[…]}`.
pub fn encode_json_batch<'a>(
    batch_id: &str,
    edge_node: &str,
    sent_at_ms: u64,
    readings: impl IntoIterator<Item = &'a str>,
) -> String {
    let mut out = String::with_capacity(256);
    out.push_str("{\"batch_id\":");
    push_json_string(&mut out, batch_id);
    out.push_str(",\"edge_node\":");
    push_json_string(&mut out, edge_node);
    out.push_str(",\"sent_at_ms\":");
    out.push_str(&sent_at_ms.to_string());
    out.push_str(",\"readings\":[");
    for (i, r) in readings.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(r);
    }
    out.push_str("]}");
    out
}

fn push_json_string(out: &mut String, s: &str) {
    out.push_str(&serde_json::to_string(s).unwrap_or_else(|_| String::from("\"\"")));
}

/// The fields of an enriched reading a line-protocol point needs.
#[derive(Deserialize)]
struct PointView<'a> {
    #[serde(borrow)]
    device_id: std::borrow::Cow<'a, str>,
    temp_c: f64,
    raw: RawView,
    edge: EdgeView<'a>,
    received_at_ms: u64,
    ts: Option<u64>,
    #[serde(borrow, default)]
    device: Option<DeviceView<'a>>,
}

#[derive(Deserialize)]
struct DeviceView<'a> {
    #[serde(borrow)]
    tags: std::collections::BTreeMap<std::borrow::Cow<'a, str>, std::borrow::Cow<'a, str>>,
}

#[derive(Deserialize)]
struct RawView {
    value: f64,
}

#[derive(Deserialize)]
struct EdgeView<'a> {
    #[serde(borrow)]
    node: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    colo: Option<std::borrow::Cow<'a, str>>,
}

fn push_influx_line(out: &mut String, reading: &str, tag_keys: &[String]) -> Result<(), String> {
    let p: PointView<'_> = serde_json::from_str(reading).map_err(|e| e.to_string())?;
    out.push_str(INFLUX_MEASUREMENT);
    // Tags sorted by key (what InfluxDB stores and indexes fastest); an absent colo is no tag.
    // (`INFLUX_TAG_KEYS` may not name colo, device_id or edge_node: config refuses it.)
    let mut tags: Vec<(&str, &str)> = Vec::with_capacity(3 + tag_keys.len());
    if let Some(colo) = p.edge.colo.as_deref().filter(|c| !c.is_empty()) {
        tags.push(("colo", colo));
    }
    tags.push(("device_id", &p.device_id));
    tags.push(("edge_node", &p.edge.node));
    if let Some(device) = &p.device {
        for key in tag_keys {
            if let Some(value) = device.tags.get(key.as_str()) {
                tags.push((key, value));
            }
        }
    }
    tags.sort_unstable_by_key(|(k, _)| *k);
    for (key, value) in tags {
        push_tag(out, key, value);
    }
    out.push_str(" temp_c=");
    push_float(out, p.temp_c);
    out.push_str(",raw=");
    push_float(out, p.raw.value);
    out.push(' ');
    out.push_str(&p.ts.unwrap_or(p.received_at_ms).to_string());
    out.push('\n');
    Ok(())
}

fn push_tag(out: &mut String, key: &str, value: &str) {
    out.push(',');
    out.push_str(key);
    out.push('=');
    push_tag_value(out, value);
}

/// Line-protocol escaping for tag keys and values: comma, equals sign and space take a
/// backslash; a newline cannot be escaped and becomes a space-free placeholder.
pub fn push_tag_value(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            ',' | '=' | ' ' => {
                out.push('\\');
                out.push(c);
            }
            '\n' | '\r' => out.push_str("\\ "),
            '\\' => out.push_str("\\\\"),
            _ => out.push(c),
        }
    }
}

/// A float field: always with a decimal point or exponent, so InfluxDB types it as a float
/// even when the value is whole (a field's type is fixed by its first write). Formatted by
/// serde_json (ryu), which writes `24.0`, not by `f64`'s `Display` (some 30 KB of tables).
fn push_float(out: &mut String, value: f64) {
    let text = serde_json::to_string(&value).unwrap_or_else(|_| String::from("0.0"));
    out.push_str(&text);
    if !text.contains(['.', 'e', 'E']) {
        out.push_str(".0");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const READING: &str = r#"{"id":"x","device_id":"greenhouse-1","temp_c":24.0,"raw":{"value":75.2,"unit":"F"},"calibration":null,"edge":{"node":"cf-dfw","colo":"DFW","country":"US","region":null,"platform":"cloudflare-workers"},"received_at_ms":1700000000123}"#;

    #[test]
    fn envelope_is_valid_json_with_readings_verbatim() {
        let body = encode_json_batch(
            "b\"1",
            "cf-dfw",
            42,
            [r#"{"id":"x","temp_c":1.5}"#, r#"{"id":"y"}"#],
        );
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["batch_id"], "b\"1");
        assert_eq!(v["edge_node"], "cf-dfw");
        assert_eq!(v["sent_at_ms"], 42);
        assert_eq!(v["readings"][0]["temp_c"], 1.5);
        assert_eq!(v["readings"][1]["id"], "y");
        let empty: serde_json::Value =
            serde_json::from_str(&encode_json_batch("b", "n", 0, [])).unwrap();
        assert_eq!(empty["readings"], serde_json::json!([]));
    }

    #[test]
    fn ndjson_is_one_reading_per_line() {
        let body = encode_batch(SinkFormat::Ndjson, &[], "b", "n", 0, [READING, READING]).unwrap();
        assert_eq!(body, format!("{READING}\n{READING}\n"));
    }

    #[test]
    fn influx_line_protocol() {
        let body = encode_batch(SinkFormat::Influx, &[], "b", "n", 0, [READING]).unwrap();
        assert_eq!(
            body,
            "temperature,colo=DFW,device_id=greenhouse-1,edge_node=cf-dfw temp_c=24.0,raw=75.2 1700000000123\n"
        );
        // No colo (local runs): no colo tag.
        let local = READING.replace(r#""colo":"DFW""#, r#""colo":null"#);
        let body = encode_batch(SinkFormat::Influx, &[], "b", "n", 0, [local.as_str()]).unwrap();
        assert!(body.starts_with("temperature,device_id=greenhouse-1,edge_node=cf-dfw "));
        // The device's own time, when it sent one.
        let timed = READING.replace(
            r#""received_at_ms":1700000000123"#,
            r#""received_at_ms":1700000000123,"ts":1699999999000"#,
        );
        let body = encode_batch(SinkFormat::Influx, &[], "b", "n", 0, [timed.as_str()]).unwrap();
        assert!(body.ends_with(" 1699999999000\n"), "{body}");
        // A document that is not an enriched reading fails the batch (the host dead-letters it).
        assert!(encode_batch(SinkFormat::Influx, &[], "b", "n", 0, ["{}"]).is_err());
    }

    #[test]
    fn influx_takes_the_chosen_registry_tags_in_key_order() {
        let tagged = READING.replacen(
            "\"received_at_ms\"",
            "\"device\":{\"tags\":{\"site\":\"fra 1\",\"zone\":\"b\",\"owner\":\"x\"},\"key_version\":0},\"received_at_ms\"",
            1,
        );
        assert!(tagged.contains("\"device\""), "{tagged}");
        let keys = vec!["site".to_owned(), "zone".to_owned(), "missing".to_owned()];
        let body = encode_batch(SinkFormat::Influx, &keys, "b", "n", 0, [tagged.as_str()]).unwrap();
        assert!(
            body.starts_with(
                "temperature,colo=DFW,device_id=greenhouse-1,edge_node=cf-dfw,site=fra\\ 1,zone=b temp_c="
            ),
            "{body}"
        );
        assert!(!body.contains("owner"), "only the chosen keys: {body}");
        // Chosen keys on a reading without a record: no extra tags.
        let plain = encode_batch(SinkFormat::Influx, &keys, "b", "n", 0, [READING]).unwrap();
        assert!(!plain.contains("site="), "{plain}");
    }

    #[test]
    fn tag_values_are_escaped() {
        let mut out = String::new();
        push_tag_value(&mut out, r"a b,c=d\e");
        assert_eq!(out, r"a\ b\,c\=d\\e");
    }

    #[test]
    fn formats_and_content_types() {
        assert_eq!(SinkFormat::parse("influx"), Some(SinkFormat::Influx));
        assert_eq!(SinkFormat::parse("csv"), None);
        assert_eq!(SinkFormat::Ndjson.content_type(), "application/x-ndjson");
    }
}

//! What the collector receives: the batch envelope, built from readings already serialized at
//! enrichment time (no re-parsing, no re-serializing).

/// `{"batch_id":…,"edge_node":…,"sent_at_ms":…,"readings":[…]}`; sent with
/// `Idempotency-Key: <batch_id>` so a collector can recognise a retried batch.
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

pub const JSON_CONTENT_TYPE: &str = "application/json";

fn push_json_string(out: &mut String, s: &str) {
    out.push_str(&serde_json::to_string(s).unwrap_or_else(|_| String::from("\"\"")));
}

#[cfg(test)]
mod tests {
    use super::*;

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
}

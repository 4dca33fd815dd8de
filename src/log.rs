//! Structured log lines: one JSON object per line with `level`, `event`, `request_id` and
//! fields, which Workers Logs and Spin's log capture index cleanly. Never pass secrets.
#![forbid(unsafe_code)]

pub fn line(level: &str, event: &str, request_id: &str, fields: &[(&str, &str)]) -> String {
    let mut obj = serde_json::Map::new();
    obj.insert("level".into(), level.into());
    obj.insert("event".into(), event.into());
    if !request_id.is_empty() {
        obj.insert("request_id".into(), request_id.into());
    }
    for (k, v) in fields {
        obj.insert((*k).into(), (*v).into());
    }
    serde_json::Value::Object(obj).to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn one_json_object_per_line() {
        let l = super::line(
            "warn",
            "flush_retry",
            "r1",
            &[("detail", "a \"quoted\"\nline")],
        );
        assert!(!l.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&l).unwrap();
        assert_eq!(
            (
                v["level"].as_str(),
                v["event"].as_str(),
                v["request_id"].as_str()
            ),
            (Some("warn"), Some("flush_retry"), Some("r1"))
        );
    }
}

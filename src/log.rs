//! Structured log lines: one JSON object per line with `level`, `event` and fields (a
//! request's own lines carry its `request_id` first), which Workers Logs and Spin's log capture
//! index cleanly. Never pass secrets.
#![forbid(unsafe_code)]

pub fn line(level: &str, event: &str, fields: &[(&str, &str)]) -> String {
    let mut obj = serde_json::Map::new();
    obj.insert("level".into(), level.into());
    obj.insert("event".into(), event.into());
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
            &[("request_id", "r1"), ("detail", "a \"quoted\"\nline")],
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

//! Structured log lines: one JSON object per line with `level`, `event` and fields (a
//! request's own lines carry its `request_id` first), which Workers Logs and Spin's log capture
//! index cleanly. Never pass secrets.

pub fn line(level: &str, event: &str, fields: &[(&str, &str)]) -> String {
    serde_json::to_string(&Line {
        level,
        event,
        fields,
    })
    .unwrap_or_default()
}

/// Written as a map in the order given, with no `serde_json::Value` (a sorted map, and its
/// code in the Worker's upload) in between.
struct Line<'a> {
    level: &'a str,
    event: &'a str,
    fields: &'a [(&'a str, &'a str)],
}

impl serde::Serialize for Line<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let head = [("level", self.level), ("event", self.event)];
        serializer.collect_map(head.iter().chain(self.fields).map(|(k, v)| (k, v)))
    }
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
        assert!(
            l.starts_with(r#"{"level":"warn","event":"flush_retry","request_id":"r1","#),
            "{l}"
        );
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

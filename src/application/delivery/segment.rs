//! A segment as a store keeps it: the node that accepted it on the first line, then its readings,
//! one enriched reading per line (a reading document is compact JSON, never a raw newline, and a
//! node name never holds one). One record per segment in any store, whatever its size.

use crate::domain::enrich::StoredReading;

pub fn encode(node: &str, readings: &[StoredReading]) -> String {
    let mut text =
        String::with_capacity(node.len() + readings.iter().map(|r| r.len() + 1).sum::<usize>());
    text.push_str(node);
    for r in readings {
        text.push('\n');
        text.push_str(r.as_str());
    }
    text
}

/// The node and the readings of an encoded segment.
pub fn decode(text: &str) -> (String, Vec<StoredReading>) {
    let (node, readings) = text.split_once('\n').unwrap_or((text, ""));
    (
        node.to_owned(),
        readings
            .split('\n')
            .filter(|l| !l.is_empty())
            .map(StoredReading::from_store)
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use crate::domain::enrich::StoredReading;

    #[test]
    fn round_trips() {
        let readings = vec![
            StoredReading::from_store(r#"{"id":"a"}"#),
            StoredReading::from_store(r#"{"id":"b"}"#),
        ];
        let text = super::encode("node-1", &readings);
        assert_eq!(text, "node-1\n{\"id\":\"a\"}\n{\"id\":\"b\"}");
        assert_eq!(super::decode(&text), ("node-1".to_owned(), readings));
        assert_eq!(super::decode("node-1"), ("node-1".to_owned(), Vec::new()));
    }
}

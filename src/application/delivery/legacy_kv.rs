//! The outbox of releases before the shared SQLite outbox, as they left it in Spin's key-value
//! store: one key per accepted request, `outbox/<received_at_ms, 15 digits>/<segment id>`,
//! holding the segment as `segment::encode` writes it, and from older releases one key per
//! reading, `pending/<received_at_ms>/<id>`. Read once per database, when the shared outbox
//! imports them (`shared_outbox::SharedOutbox::import_key_value`); nothing writes them any more.

use crate::application::delivery::segment;
use crate::domain::enrich::StoredReading;
use crate::ports::StoredSegment;

pub const SEGMENT_PREFIX: &str = "outbox/";
pub const LEGACY_PREFIX: &str = "pending/";

pub fn segment_key(received_at_ms: u64, id: &str) -> String {
    format!("{SEGMENT_PREFIX}{received_at_ms:015}/{id}")
}

/// The receive time in a segment (or older) key; `None` for any other key.
pub fn received_at(key: &str) -> Option<u64> {
    let rest = key
        .strip_prefix(SEGMENT_PREFIX)
        .or_else(|| key.strip_prefix(LEGACY_PREFIX))?;
    rest.split_once('/')?.0.parse().ok()
}

/// A stored value back as a segment; a `pending/` key holds one bare reading. `None` for keys
/// that are not segments (profiles, dead letters, hints).
pub fn decode(key: &str, value: &[u8], default_node: &str) -> Option<StoredSegment<String>> {
    let text = std::str::from_utf8(value).ok()?;
    let received_at_ms = received_at(key)?;
    let (node, readings) = if key.starts_with(LEGACY_PREFIX) {
        (
            default_node.to_owned(),
            vec![StoredReading::from_store(text)],
        )
    } else {
        segment::decode(text)
    };
    Some(StoredSegment {
        key: key.to_owned(),
        received_at_ms,
        node,
        readings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_say_their_age_and_other_keys_are_not_segments() {
        let key = segment_key(1_700_000_000_123, "abc");
        assert_eq!(key, "outbox/001700000000123/abc");
        assert_eq!(received_at(&key), Some(1_700_000_000_123));
        assert_eq!(
            received_at("pending/1700000000000/x"),
            Some(1_700_000_000_000)
        );
        assert_eq!(received_at("dead/3"), None);
        assert!(decode("calibration", b"{}", "n").is_none());
        let s = decode(&key, b"node-7\n{\"id\":\"a\"}\n{\"id\":\"b\"}", "n").unwrap();
        assert_eq!((s.node.as_str(), s.readings.len()), ("node-7", 2));
        let p = decode("pending/5/x", b"{\"id\":\"c\"}", "local").unwrap();
        assert_eq!((p.node.as_str(), p.received_at_ms), ("local", 5));
    }
}

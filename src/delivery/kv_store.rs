//! The outbox in a key-value store shared by many instances (Spin key-value): one key per
//! accepted request, `outbox/<received_at_ms, 15 digits>/<segment id>`, holding the segment as
//! `segment::encode` writes it. A key is written by the instance that accepted the request, or
//! by whoever recovers it; instances never read-modify-write a shared value.
//!
//! Recovery: an instance finding keys older than `SPILL_GRACE_MS` that it does not hold takes
//! them as orphans of an instance that is gone (see `find_orphans`).
//!
//! Dead letters are a ring of `policy::DEAD_LETTERS_KEPT` slots, `dead/<slot>`, and a head key
//! counting the letters ever kept, so that keeping and listing them never lists keys: the
//! newest letter overwrites the oldest, and letters past `DEAD_LETTER_MAX_AGE_MS` are not
//! listed. (Two instances keeping a letter at the same instant may take the same slot: one of
//! the two is lost. Dead letters are rare, and are logged in full when made.)

use std::rc::Rc;

use crate::delivery::policy::{DEAD_LETTERS_KEPT, DEAD_LETTER_MAX_AGE_MS};
use crate::delivery::segment;
use crate::domain::ids;
use crate::ports::{DeadLetter, KeyValue, OutboxStore, SegmentAppend, StoreError, StoredSegment};

pub const SEGMENT_PREFIX: &str = "outbox/";
pub const DEAD_PREFIX: &str = "dead/";
/// How many dead letters were ever kept: the next slot is this modulo `DEAD_LETTERS_KEPT`.
pub const DEAD_HEAD_KEY: &str = "dead-head";
/// Readings spilled one key each by earlier releases (`pending/<received_at_ms>/<id>`): still
/// recovered, as one-reading segments.
pub const LEGACY_PREFIX: &str = "pending/";
/// When some instance last listed the keys for orphans (Unix ms): a hint, so that a fleet of
/// instances lists about once per `SCAN_EVERY_MS` rather than each on its own. Losing a race on
/// it only means one more listing.
pub const SCAN_HINT_KEY: &str = "outbox-scan";

pub struct KvOutboxStore<K> {
    pub kv: K,
}

pub fn segment_key(received_at_ms: u64, id: &str) -> String {
    format!("{SEGMENT_PREFIX}{received_at_ms:015}/{id}")
}

/// The receive time in a segment (or legacy) key, which says its age without fetching it.
pub fn received_at(key: &str) -> Option<u64> {
    let rest = key
        .strip_prefix(SEGMENT_PREFIX)
        .or_else(|| key.strip_prefix(LEGACY_PREFIX))?;
    rest.split_once('/')?.0.parse().ok()
}

/// A stored value back as a segment; a legacy key holds one bare reading.
fn decode(key: &str, value: &[u8], default_node: &str) -> Option<StoredSegment<String>> {
    let text = std::str::from_utf8(value).ok()?;
    let received_at_ms = received_at(key)?;
    let (node, readings) = if key.starts_with(LEGACY_PREFIX) {
        (default_node.to_owned(), vec![Rc::from(text)])
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

impl<K: KeyValue> OutboxStore for KvOutboxStore<K> {
    type Key = String;

    async fn trim(
        &self,
        key: &String,
        settled: usize,
        node: &str,
        readings: &[Rc<str>],
    ) -> Result<(), StoreError> {
        if settled >= readings.len() {
            return self.kv.delete(key).await;
        }
        // This segment's own key, rewritten with the rest of its readings (once per round). If
        // another instance recovered and removed it meanwhile, this brings back readings that
        // were delivered: a duplicate later, never a loss.
        self.kv
            .set(key, segment::encode(node, &readings[settled..]).as_bytes())
            .await
    }

    async fn dead_letter(&self, letter: &DeadLetter) -> Result<u64, StoreError> {
        let body: serde_json::Value =
            serde_json::from_str(&letter.body).unwrap_or(serde_json::Value::Null);
        let doc = serde_json::json!({
            "batch_id": letter.batch_id,
            "failed_at_ms": letter.failed_at_ms,
            "status": letter.status,
            "detail": letter.detail,
            "readings": letter.readings,
            "body": body,
        });
        let head = self.dead_head().await?;
        let slot = head % DEAD_LETTERS_KEPT as u64;
        self.kv
            .set(&format!("{DEAD_PREFIX}{slot}"), doc.to_string().as_bytes())
            .await?;
        self.kv
            .set(DEAD_HEAD_KEY, (head + 1).to_string().as_bytes())
            .await?;
        // The ring was full: the oldest letter was overwritten.
        Ok(u64::from(head >= DEAD_LETTERS_KEPT as u64))
    }
}

impl<K: KeyValue> SegmentAppend for KvOutboxStore<K> {
    async fn append(
        &self,
        received_at_ms: u64,
        node: &str,
        readings: &[Rc<str>],
    ) -> Result<String, StoreError> {
        let id = ids::new_id(received_at_ms)
            .map_err(|_| StoreError("no entropy for a segment id".into()))?;
        let key = segment_key(received_at_ms, &id);
        self.kv
            .set(&key, segment::encode(node, readings).as_bytes())
            .await?;
        Ok(key)
    }
}

impl<K: KeyValue> KvOutboxStore<K> {
    /// Segments older than `grace_ms` that `held` does not claim: their instance is gone. At
    /// most `max_readings` readings, oldest first. One listing, then one read per segment.
    pub async fn find_orphans(
        &self,
        now_ms: u64,
        grace_ms: u64,
        held: impl Fn(&str) -> bool,
        max_readings: usize,
        default_node: &str,
    ) -> Result<Vec<StoredSegment<String>>, StoreError> {
        let mut candidates: Vec<(u64, String)> = self
            .kv
            .keys()
            .await?
            .into_iter()
            .filter_map(|key| {
                let at = received_at(&key)?;
                (at.saturating_add(grace_ms) <= now_ms && !held(&key)).then_some((at, key))
            })
            .collect();
        candidates.sort();
        let mut found = Vec::new();
        let mut readings = 0;
        for (_, key) in candidates {
            if readings >= max_readings {
                break;
            }
            // Another instance may have delivered and removed it meanwhile: skip, not fail.
            if let Some(segment) = self
                .kv
                .get(&key)
                .await?
                .and_then(|v| decode(&key, &v, default_node))
            {
                readings += segment.readings.len();
                found.push(segment);
            }
        }
        Ok(found)
    }

    /// Whether this instance should list the keys now, by the fleet-wide hint: true (and the
    /// hint moved to now) when no instance has listed in the last `every_ms`.
    pub async fn claim_scan(&self, now_ms: u64, every_ms: u64) -> Result<bool, StoreError> {
        let last = self
            .kv
            .get(SCAN_HINT_KEY)
            .await?
            .and_then(|v| String::from_utf8(v).ok())
            .and_then(|t| t.parse::<u64>().ok())
            .unwrap_or(0);
        if now_ms.saturating_sub(last) < every_ms {
            return Ok(false);
        }
        self.kv
            .set(SCAN_HINT_KEY, now_ms.to_string().as_bytes())
            .await?;
        Ok(true)
    }

    async fn dead_head(&self) -> Result<u64, StoreError> {
        Ok(self
            .kv
            .get(DEAD_HEAD_KEY)
            .await?
            .and_then(|v| String::from_utf8(v).ok())
            .and_then(|t| t.parse().ok())
            .unwrap_or(0))
    }

    /// The newest dead letters (at most `limit`, none older than `DEAD_LETTER_MAX_AGE_MS`), as
    /// JSON documents: one read for the head, then one per slot, newest first.
    pub async fn dead_letters(&self, limit: usize, now_ms: u64) -> Result<Vec<String>, StoreError> {
        let head = self.dead_head().await?;
        let oldest = now_ms.saturating_sub(DEAD_LETTER_MAX_AGE_MS);
        let mut out = Vec::new();
        for n in (0..head).rev().take(limit.min(DEAD_LETTERS_KEPT)) {
            let key = format!("{DEAD_PREFIX}{}", n % DEAD_LETTERS_KEPT as u64);
            let Some(text) = self
                .kv
                .get(&key)
                .await?
                .and_then(|v| String::from_utf8(v).ok())
            else {
                continue;
            };
            let failed_at = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v["failed_at_ms"].as_u64())
                .unwrap_or(0);
            if failed_at >= oldest {
                out.push(text);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::testing::{run, MemoryKv};

    fn readings(ids: &[&str]) -> Vec<Rc<str>> {
        ids.iter()
            .map(|i| Rc::from(format!(r#"{{"id":"{i}"}}"#)))
            .collect()
    }

    #[test]
    fn keys_say_their_age() {
        let key = segment_key(1_700_000_000_000, "abc");
        assert_eq!(key, "outbox/001700000000000/abc");
        assert_eq!(received_at(&key), Some(1_700_000_000_000));
        assert_eq!(received_at("pending/000000000000005/x"), Some(5));
        assert_eq!(received_at("dead/x"), None);
        assert!(segment_key(999, "z") < segment_key(1_000, "a"));
    }

    #[test]
    fn one_key_per_segment_trimmed_in_place_and_removed() {
        let store = KvOutboxStore {
            kv: MemoryKv::default(),
        };
        let all = readings(&["a", "b", "c"]);
        let key = run(store.append(1_000, "node-1", &all)).unwrap();
        assert_eq!(store.kv.map.borrow().len(), 1);
        run(store.trim(&key, 2, "node-1", &all)).unwrap();
        let left = run(store.find_orphans(10_000, 5_000, |_| false, 100, "d")).unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].node, "node-1");
        assert_eq!(left[0].readings, readings(&["c"]));
        run(store.trim(&key, 3, "node-1", &all)).unwrap();
        assert!(store.kv.map.borrow().is_empty());
    }

    #[test]
    fn orphans_are_old_unheld_segments_oldest_first_up_to_a_bound() {
        let store = KvOutboxStore {
            kv: MemoryKv::default(),
        };
        let old = run(store.append(1_000, "n", &readings(&["a", "b"]))).unwrap();
        run(store.append(2_000, "n", &readings(&["c"]))).unwrap();
        run(store.append(9_000, "n", &readings(&["d"]))).unwrap();
        run(store.kv.set("pending/000000000001500/e", br#"{"id":"e"}"#)).unwrap();
        run(store.kv.set("ratelimit/dev", b"1@2")).unwrap();
        let found = run(store.find_orphans(10_000, 5_000, |_| false, 100, "d")).unwrap();
        let at: Vec<u64> = found.iter().map(|s| s.received_at_ms).collect();
        assert_eq!(
            at,
            [1_000, 1_500, 2_000],
            "9 s is within the grace; others are not segments"
        );
        let held = run(store.find_orphans(10_000, 5_000, |k| k == old, 100, "d")).unwrap();
        assert_eq!(held.len(), 2);
        let bounded = run(store.find_orphans(10_000, 5_000, |_| false, 2, "d")).unwrap();
        assert_eq!(
            bounded.len(),
            1,
            "the first segment already holds two readings"
        );
    }

    #[test]
    fn the_scan_hint_lets_one_listing_through_per_interval() {
        let store = KvOutboxStore {
            kv: MemoryKv::default(),
        };
        assert!(run(store.claim_scan(10_000, 3_000)).unwrap());
        assert!(!run(store.claim_scan(12_999, 3_000)).unwrap());
        assert!(run(store.claim_scan(13_000, 3_000)).unwrap());
    }

    #[test]
    fn dead_letters_are_kept_as_json() {
        let store = KvOutboxStore {
            kv: MemoryKv::default(),
        };
        let letter = DeadLetter {
            batch_id: "b1".into(),
            failed_at_ms: 5,
            status: 400,
            detail: "no".into(),
            readings: 1,
            body: r#"{"batch_id":"b1","readings":[{"id":"a"}]}"#.into(),
        };
        assert_eq!(run(store.dead_letter(&letter)).unwrap(), 0);
        let kept = run(store.dead_letters(10, 5)).unwrap();
        let v: serde_json::Value = serde_json::from_str(&kept[0]).unwrap();
        assert_eq!(
            (
                v["status"].as_u64(),
                v["body"]["readings"][0]["id"].as_str()
            ),
            (Some(400), Some("a"))
        );
        // Past their age they are not listed.
        assert!(run(store.dead_letters(10, 5 + DEAD_LETTER_MAX_AGE_MS + 1))
            .unwrap()
            .is_empty());
    }

    #[test]
    fn dead_letters_are_a_bounded_ring_newest_first() {
        let store = KvOutboxStore {
            kv: MemoryKv::default(),
        };
        let extra = 3;
        let mut dropped = 0;
        for n in 0..DEAD_LETTERS_KEPT + extra {
            let letter = DeadLetter {
                batch_id: format!("b{n}"),
                failed_at_ms: 1_000 + n as u64,
                status: 422,
                detail: String::new(),
                readings: 1,
                body: "{}".into(),
            };
            dropped += run(store.dead_letter(&letter)).unwrap();
        }
        assert_eq!(
            dropped, extra as u64,
            "each letter past the bound drops one"
        );
        let dead_keys = store
            .kv
            .map
            .borrow()
            .keys()
            .filter(|k| k.starts_with(DEAD_PREFIX))
            .count();
        assert_eq!(dead_keys, DEAD_LETTERS_KEPT);
        let listed = run(store.dead_letters(2, 2_000)).unwrap();
        let ids: Vec<String> = listed
            .iter()
            .map(|t| {
                serde_json::from_str::<serde_json::Value>(t).unwrap()["batch_id"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        let newest = DEAD_LETTERS_KEPT + extra - 1;
        assert_eq!(ids, [format!("b{newest}"), format!("b{}", newest - 1)]);
    }
}

//! Durable spill for hosts whose instances may vanish after one request (Spin): every accepted
//! reading is written to key-value under its own key before the device gets its 200, deleted
//! once the collector has it, and re-sent by any instance that finds it older than a grace
//! period (its instance crashed). One key per reading: no read-modify-write, so concurrent
//! instances never race on a shared value.

use crate::domain::enrich::EnrichedReading;
pub use crate::ports::KeyValue;

pub const PENDING_PREFIX: &str = "pending/";
pub const DEAD_PREFIX: &str = "dead/";

/// `pending/<received_at_ms, 15 digits>/<id>`: sorts by age, and the age is readable without
/// fetching the value.
pub fn pending_key(received_at_ms: u64, id: &str) -> String {
    format!("{PENDING_PREFIX}{received_at_ms:015}/{id}")
}

pub fn parse_pending_key(key: &str) -> Option<(u64, &str)> {
    let rest = key.strip_prefix(PENDING_PREFIX)?;
    let (ts, id) = rest.split_once('/')?;
    Some((ts.parse().ok()?, id))
}

/// A reading found in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spilled {
    pub id: String,
    pub received_at_ms: u64,
    pub json: String,
}

/// Writes every reading; if any write fails, removes those already written and fails, so the
/// request can be refused whole (503) without leaving half of it behind.
pub async fn record<K: KeyValue>(
    kv: &K,
    received_at_ms: u64,
    readings: &[EnrichedReading],
) -> Result<(), String> {
    for (n, r) in readings.iter().enumerate() {
        if let Err(e) = kv
            .set(&pending_key(received_at_ms, &r.id), r.json.as_bytes())
            .await
        {
            for done in &readings[..n] {
                let _ = kv.delete(&pending_key(received_at_ms, &done.id)).await;
            }
            return Err(e.0);
        }
    }
    Ok(())
}

/// Forgets delivered readings. A failed delete only means a duplicate later (the collector
/// removes it by id), so failures are counted, not fatal.
pub async fn release<K: KeyValue>(
    kv: &K,
    delivered: impl IntoIterator<Item = (u64, &str)>,
) -> usize {
    let mut failed = 0;
    for (received_at_ms, id) in delivered {
        if kv.delete(&pending_key(received_at_ms, id)).await.is_err() {
            failed += 1;
        }
    }
    failed
}

/// Parks a batch the collector refused for good under `dead/<batch_id>` and forgets its readings.
pub async fn dead_letter<K: KeyValue>(
    kv: &K,
    batch_id: &str,
    body: &str,
    readings: impl IntoIterator<Item = (u64, &str)>,
) -> Result<(), String> {
    kv.set(&format!("{DEAD_PREFIX}{batch_id}"), body.as_bytes())
        .await
        .map_err(|e| e.0)?;
    release(kv, readings).await;
    Ok(())
}

/// Readings older than `grace_ms` that this instance does not hold: their instance is gone.
/// At most `limit`, oldest first.
pub async fn orphans<K: KeyValue>(
    kv: &K,
    now_ms: u64,
    grace_ms: u64,
    held: impl Fn(&str) -> bool,
    limit: usize,
) -> Result<Vec<Spilled>, String> {
    let mut candidates: Vec<(u64, String, String)> = kv
        .keys()
        .await
        .map_err(|e| e.0)?
        .into_iter()
        .filter_map(|key| {
            let (ts, id) = parse_pending_key(&key)?;
            (ts.saturating_add(grace_ms) <= now_ms && !held(id))
                .then(|| (ts, id.to_owned(), key.clone()))
        })
        .collect();
    candidates.sort();
    let mut found = Vec::new();
    for (received_at_ms, id, key) in candidates.into_iter().take(limit) {
        // Another instance may have delivered and deleted it meanwhile: skip, don't fail.
        if let Some(bytes) = kv.get(&key).await.map_err(|e| e.0)? {
            if let Ok(json) = String::from_utf8(bytes) {
                found.push(Spilled {
                    id,
                    received_at_ms,
                    json,
                });
            }
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::testing::{run, MemoryKv};

    fn reading(id: &str) -> EnrichedReading {
        EnrichedReading {
            id: id.into(),
            json: format!("{{\"id\":\"{id}\"}}"),
        }
    }

    #[test]
    fn keys_round_trip_and_sort_by_age() {
        let k = pending_key(1_700_000_000_000, "abc");
        assert_eq!(k, "pending/001700000000000/abc");
        assert_eq!(parse_pending_key(&k), Some((1_700_000_000_000, "abc")));
        assert!(pending_key(999, "z") < pending_key(1_000, "a"));
        assert_eq!(parse_pending_key("dead/x"), None);
    }

    #[test]
    fn record_release_and_recover_orphans() {
        let kv = MemoryKv::default();
        run(record(&kv, 1_000, &[reading("a"), reading("b")])).unwrap();
        run(record(&kv, 9_000, &[reading("c")])).unwrap();
        // At 10 s with a 5 s grace, a and b are orphans unless this instance holds them.
        let found = run(orphans(&kv, 10_000, 5_000, |_| false, 10)).unwrap();
        assert_eq!(
            found.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert_eq!(found[0].json, "{\"id\":\"a\"}");
        assert_eq!(found[0].received_at_ms, 1_000);
        let held = run(orphans(&kv, 10_000, 5_000, |id| id == "a", 10)).unwrap();
        assert_eq!(held.len(), 1);
        assert_eq!(
            run(orphans(&kv, 10_000, 5_000, |_| false, 1))
                .unwrap()
                .len(),
            1
        );
        assert_eq!(run(release(&kv, [(1_000, "a"), (1_000, "b")])), 0);
        assert!(run(orphans(&kv, 10_000, 5_000, |_| false, 10))
            .unwrap()
            .is_empty());
        assert_eq!(kv.map.borrow().len(), 1, "c is still pending");
    }

    #[test]
    fn a_failed_write_leaves_nothing_behind() {
        let kv = MemoryKv {
            fail_on: Some("/c"),
            ..MemoryKv::default()
        };
        assert!(run(record(&kv, 1, &[reading("a"), reading("b"), reading("c")])).is_err());
        assert!(kv.map.borrow().is_empty());
    }

    #[test]
    fn dead_letters_are_parked_and_released() {
        let kv = MemoryKv::default();
        run(record(&kv, 5, &[reading("a")])).unwrap();
        run(dead_letter(&kv, "batch-1", "{\"readings\":[]}", [(5, "a")])).unwrap();
        let keys: Vec<_> = kv.map.borrow().keys().cloned().collect();
        assert_eq!(keys, ["dead/batch-1"]);
    }
}

//! SQLite storage: readings de-duplicated by their `id`, batches counted by `batch_id`.

use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

pub struct Store {
    conn: Connection,
}

/// The envelope an edge node sends (`src/sink.rs` in the edge crate).
#[derive(Deserialize)]
pub struct Batch<'a> {
    pub batch_id: String,
    pub edge_node: String,
    pub sent_at_ms: u64,
    #[serde(borrow)]
    pub readings: Vec<&'a RawValue>,
}

/// The fields the collector indexes; the whole reading is kept verbatim as `doc`.
#[derive(Deserialize)]
pub struct ReadingKeys {
    id: String,
    device_id: String,
    temp_c: f64,
    received_at_ms: u64,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Stored {
    pub stored: usize,
    pub duplicates: usize,
}

/// Why a batch was not stored.
#[derive(Debug, PartialEq, Eq)]
pub enum InsertError {
    /// A reading is not one this collector can store: the batch's fault (400), named by its
    /// place and, when it has one, its id.
    Reading {
        index: usize,
        id: Option<String>,
        detail: String,
    },
    /// The database failed: the collector's fault (503, retry).
    Storage(String),
}

#[derive(Debug, Serialize)]
pub struct Stats {
    pub batches: u64,
    pub batch_retries: u64,
    pub readings: u64,
    pub duplicates: u64,
    pub devices: u64,
}

impl Store {
    pub fn open(path: &Path) -> rusqlite::Result<Self> {
        let conn = Connection::open(path)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = NORMAL;
             CREATE TABLE IF NOT EXISTS readings (
                 id TEXT PRIMARY KEY,
                 device_id TEXT NOT NULL,
                 temp_c REAL NOT NULL,
                 received_at_ms INTEGER NOT NULL,
                 stored_at_ms INTEGER NOT NULL,
                 batch_id TEXT NOT NULL,
                 edge_node TEXT NOT NULL,
                 doc TEXT NOT NULL
             );
             CREATE INDEX IF NOT EXISTS readings_device ON readings (device_id, received_at_ms);
             CREATE TABLE IF NOT EXISTS batches (
                 batch_id TEXT PRIMARY KEY,
                 edge_node TEXT NOT NULL,
                 sent_at_ms INTEGER NOT NULL,
                 first_seen_ms INTEGER NOT NULL,
                 deliveries INTEGER NOT NULL,
                 readings INTEGER NOT NULL
             );
             CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);",
        )?;
        Ok(Self { conn })
    }

    /// Stores a batch in one transaction. A reading whose id is already stored counts as a
    /// duplicate and is not stored again (at-least-once delivery, exactly-once storage).
    pub fn insert(&mut self, batch: &Batch<'_>, now_ms: u64) -> Result<Stored, InsertError> {
        let keys = check(batch)?;
        self.store(batch, keys, now_ms)
            .map_err(InsertError::Storage)
    }

    fn store(
        &mut self,
        batch: &Batch<'_>,
        keys: Vec<(ReadingKeys, &str)>,
        now_ms: u64,
    ) -> Result<Stored, String> {
        let tx = self.conn.transaction().map_err(|e| e.to_string())?;
        let mut stored = 0;
        {
            let mut stmt = tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO readings
                     (id, device_id, temp_c, received_at_ms, stored_at_ms, batch_id, edge_node, doc)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                )
                .map_err(|e| e.to_string())?;
            for (k, doc) in &keys {
                stored += stmt
                    .execute(params![
                        k.id,
                        k.device_id,
                        k.temp_c,
                        k.received_at_ms as i64,
                        now_ms as i64,
                        batch.batch_id,
                        batch.edge_node,
                        doc
                    ])
                    .map_err(|e| e.to_string())?;
            }
        }
        let duplicates = keys.len() - stored;
        tx.execute(
            "INSERT INTO batches (batch_id, edge_node, sent_at_ms, first_seen_ms, deliveries, readings)
             VALUES (?1, ?2, ?3, ?4, 1, ?5)
             ON CONFLICT (batch_id) DO UPDATE SET deliveries = deliveries + 1",
            params![batch.batch_id, batch.edge_node, batch.sent_at_ms as i64, now_ms as i64, keys.len() as i64],
        )
        .map_err(|e| e.to_string())?;
        tx.execute(
            "INSERT INTO counters (name, value) VALUES ('duplicates', ?1)
             ON CONFLICT (name) DO UPDATE SET value = value + ?1",
            params![duplicates as i64],
        )
        .map_err(|e| e.to_string())?;
        tx.commit().map_err(|e| e.to_string())?;
        Ok(Stored { stored, duplicates })
    }

    /// The same database for reading, on a connection of its own: in WAL mode its queries wait
    /// for no write, and writes wait for none of them.
    pub fn reader(path: &Path) -> rusqlite::Result<Self> {
        let conn = Connection::open(path)?;
        conn.execute_batch("PRAGMA query_only = ON;")?;
        Ok(Self { conn })
    }

    pub fn stats(&self) -> rusqlite::Result<Stats> {
        let count = |sql: &str| {
            self.conn
                .query_row(sql, [], |r| r.get::<_, i64>(0))
                .map(|v| v as u64)
        };
        Ok(Stats {
            batches: count("SELECT COUNT(*) FROM batches")?,
            batch_retries: count("SELECT COALESCE(SUM(deliveries - 1), 0) FROM batches")?,
            readings: count("SELECT COUNT(*) FROM readings")?,
            duplicates: self
                .conn
                .query_row(
                    "SELECT value FROM counters WHERE name = 'duplicates'",
                    [],
                    |r| r.get::<_, i64>(0),
                )
                .optional()?
                .unwrap_or(0) as u64,
            devices: count("SELECT COUNT(DISTINCT device_id) FROM readings")?,
        })
    }

    /// Delivery lag (stored − received at the edge) of readings received since `since_ms`:
    /// count and p50/p99/max in ms, nearest-rank; and the transit of their batches (first seen
    /// here − `sent_at_ms`, the edge's clock: meaningful when both run on one machine), the part
    /// of the lag between the edge's send and this collector's reading of the whole body.
    pub fn delivery(&self, since_ms: u64) -> rusqlite::Result<serde_json::Value> {
        let column = |sql: &str| -> rusqlite::Result<Vec<i64>> {
            let mut stmt = self.conn.prepare_cached(sql)?;
            let values = stmt
                .query_map(params![since_ms as i64], |r| r.get(0))?
                .collect();
            values
        };
        let lags = column(
            "SELECT stored_at_ms - received_at_ms FROM readings WHERE received_at_ms >= ?1 ORDER BY 1",
        )?;
        let transits = column(
            "SELECT first_seen_ms - sent_at_ms FROM batches WHERE batch_id IN \
             (SELECT batch_id FROM readings WHERE received_at_ms >= ?1) ORDER BY 1",
        )?;
        let rank = |values: &[i64], q: f64| {
            values
                .get(((q * values.len() as f64).ceil() as usize).saturating_sub(1))
                .copied()
        };
        Ok(serde_json::json!({
            "readings": lags.len(),
            // A stored reading's batch is in `batches` (one transaction): one transit per batch.
            "batches": transits.len(),
            "lag_ms": { "p50": rank(&lags, 0.50), "p99": rank(&lags, 0.99), "max": lags.last() },
            "transit_ms": {
                "p50": rank(&transits, 0.50), "p99": rank(&transits, 0.99), "max": transits.last(),
            },
        }))
    }

    /// Stored readings (optionally of one device), oldest first, each with `stored_at_ms`.
    pub fn readings(
        &self,
        device_id: Option<&str>,
        limit: u32,
    ) -> rusqlite::Result<Vec<serde_json::Value>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT doc, stored_at_ms, batch_id FROM readings
             WHERE ?1 IS NULL OR device_id = ?1
             ORDER BY received_at_ms, id LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![device_id, limit], |r| {
            let doc: String = r.get(0)?;
            let stored_at: i64 = r.get(1)?;
            let batch_id: String = r.get(2)?;
            Ok((doc, stored_at, batch_id))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (doc, stored_at, batch_id) = row?;
            let mut v: serde_json::Value =
                serde_json::from_str(&doc).unwrap_or(serde_json::Value::Null);
            if let Some(obj) = v.as_object_mut() {
                obj.insert("stored_at_ms".into(), stored_at.into());
                obj.insert("batch_id".into(), batch_id.into());
            }
            out.push(v);
        }
        Ok(out)
    }
}

/// Every reading of `batch` as this collector stores it, or the first that is not.
pub fn check<'a>(batch: &'a Batch<'_>) -> Result<Vec<(ReadingKeys, &'a str)>, InsertError> {
    let mut keys = Vec::with_capacity(batch.readings.len());
    for (index, raw) in batch.readings.iter().enumerate() {
        match serde_json::from_str::<ReadingKeys>(raw.get()) {
            Ok(k) => keys.push((k, raw.get())),
            Err(e) => {
                #[derive(Deserialize)]
                struct Id {
                    id: Option<String>,
                }
                let id = serde_json::from_str::<Id>(raw.get())
                    .ok()
                    .and_then(|i| i.id);
                return Err(InsertError::Reading {
                    index,
                    id,
                    detail: e.to_string(),
                });
            }
        }
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dedupes_by_reading_id_and_survives_reopen() {
        let dir = std::env::temp_dir().join(format!("collector-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.sqlite");
        let _ = std::fs::remove_file(&path);
        let body = r#"{"batch_id":"b1","edge_node":"n","sent_at_ms":1,"readings":[
            {"id":"r1","device_id":"d","temp_c":1.5,"received_at_ms":10},
            {"id":"r2","device_id":"d","temp_c":2.5,"received_at_ms":11}]}"#;
        let batch: Batch<'_> = serde_json::from_str(body).unwrap();
        {
            let mut s = Store::open(&path).unwrap();
            assert_eq!(
                s.insert(&batch, 100).unwrap(),
                Stored {
                    stored: 2,
                    duplicates: 0
                }
            );
            assert_eq!(
                s.insert(&batch, 101).unwrap(),
                Stored {
                    stored: 0,
                    duplicates: 2
                }
            );
        }
        let s = Store::open(&path).unwrap();
        let st = s.stats().unwrap();
        assert_eq!(
            (st.batches, st.batch_retries, st.readings, st.duplicates),
            (1, 1, 2, 2)
        );
        let d = s.delivery(0).unwrap();
        assert_eq!(
            (d["readings"].as_u64(), d["batches"].as_u64()),
            (Some(2), Some(1))
        );
        assert_eq!(d["lag_ms"]["p50"], 89); // stored at 100, received at 10 and 11: lags 89, 90
        assert_eq!(d["lag_ms"]["max"], 90);
        assert_eq!(d["transit_ms"]["p50"], 99); // sent at 1, first seen at 100
        assert_eq!(s.delivery(11).unwrap()["readings"], 1);
        let rows = s.readings(Some("d"), 10).unwrap();
        assert_eq!(rows[1]["temp_c"], 2.5);
        assert_eq!(rows[0]["stored_at_ms"], 100);
        assert!(s.readings(Some("other"), 10).unwrap().is_empty());
        let bad: Batch<'_> = serde_json::from_str(
            r#"{"batch_id":"b2","edge_node":"n","sent_at_ms":1,"readings":[{"id":"x"}]}"#,
        )
        .unwrap();
        let mut s = s;
        assert!(matches!(
            s.insert(&bad, 1),
            Err(InsertError::Reading { index: 0, id: Some(ref id), .. }) if id == "x"
        ));
    }
}

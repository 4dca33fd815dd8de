//! The Batcher's outbox store: its Durable Object's SQLite, one row per accepted segment (a
//! group-commit call's readings, `segment::encode`d into one text column). Cloudflare bills
//! SQLite-backed Durable Objects by rows written, so the layout is chosen for it: the key is
//! the rowid (no index to keep up), a segment costs one row to insert and one to delete, and a
//! partly delivered one is rewritten in place (one row), never one row per reading. Every
//! statement's rows read and written are counted from its cursor, for `/admin/stats`.

use std::cell::Cell;
use std::rc::Rc;

use serde::{Deserialize, Serialize};
use worker::{SqlCursor, SqlStorage, SqlStorageValue};

use crate::delivery::segment;
use crate::ports::{DeadLetter, OutboxStore, StoreError, StoredSegment};

const SCHEMA: [&str; 2] = [
    "CREATE TABLE IF NOT EXISTS outbox (
        seq INTEGER PRIMARY KEY,
        received_at_ms INTEGER NOT NULL,
        segment TEXT NOT NULL)",
    // Rare (a collector refusing batches for good): a plain rowid table, newest listed first.
    "CREATE TABLE IF NOT EXISTS dead_letters (
        batch_id TEXT NOT NULL,
        failed_at_ms INTEGER NOT NULL,
        status INTEGER NOT NULL,
        detail TEXT NOT NULL,
        readings INTEGER NOT NULL,
        body TEXT NOT NULL)",
];
const DEAD_LETTERS_LISTED: i64 = 100;

/// Rows read and written: what Cloudflare bills for this object's storage.
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct RowCounts {
    pub rows_read: u64,
    pub rows_written: u64,
}

pub struct SqlOutboxStore {
    sql: SqlStorage,
    last_seq: Cell<i64>,
    counts: Cell<RowCounts>,
}

#[derive(Deserialize)]
struct SegmentRow {
    seq: f64,
    received_at_ms: f64,
    segment: String,
}

#[derive(Deserialize)]
struct LegacyRow {
    received_at_ms: f64,
    doc: String,
}

#[derive(Deserialize, Serialize)]
struct DeadLetterRow {
    batch_id: String,
    failed_at_ms: f64,
    status: f64,
    detail: String,
    readings: f64,
    body: String,
}

fn err(e: worker::Error) -> StoreError {
    StoreError(e.to_string())
}

impl SqlOutboxStore {
    /// Opens the store: creates its tables and moves readings an earlier release kept one row
    /// each (table `pending`) into one segment. Returns the store and every segment it holds.
    pub fn open(
        sql: SqlStorage,
        default_node: &str,
    ) -> Result<(Self, Vec<StoredSegment<i64>>), StoreError> {
        let store = Self {
            sql,
            last_seq: Cell::new(0),
            counts: Cell::new(RowCounts::default()),
        };
        for statement in SCHEMA {
            store.exec(statement, None)?;
        }
        store.migrate_legacy(default_node)?;
        let rows: Vec<SegmentRow> = store.query(
            "SELECT seq, received_at_ms, segment FROM outbox ORDER BY seq",
            None,
        )?;
        let segments = rows
            .into_iter()
            .map(|r| {
                let (node, readings) = segment::decode(&r.segment);
                store.last_seq.set(store.last_seq.get().max(r.seq as i64));
                StoredSegment {
                    key: r.seq as i64,
                    received_at_ms: r.received_at_ms as u64,
                    node,
                    readings,
                }
            })
            .collect();
        Ok((store, segments))
    }

    pub fn counts(&self) -> RowCounts {
        self.counts.get()
    }

    fn tally(&self, cursor: &SqlCursor) {
        let mut c = self.counts.get();
        c.rows_read += cursor.rows_read() as u64;
        c.rows_written += cursor.rows_written() as u64;
        self.counts.set(c);
    }

    fn exec(&self, query: &str, binds: Option<Vec<SqlStorageValue>>) -> Result<(), StoreError> {
        let cursor = self.sql.exec(query, binds).map_err(err)?;
        self.tally(&cursor);
        Ok(())
    }

    fn query<T: serde::de::DeserializeOwned>(
        &self,
        query: &str,
        binds: Option<Vec<SqlStorageValue>>,
    ) -> Result<Vec<T>, StoreError> {
        let cursor = self.sql.exec(query, binds).map_err(err)?;
        let rows = cursor.to_array().map_err(err)?;
        self.tally(&cursor);
        Ok(rows)
    }

    fn migrate_legacy(&self, default_node: &str) -> Result<(), StoreError> {
        #[derive(Deserialize)]
        struct Name {
            #[allow(dead_code)]
            name: String,
        }
        let legacy: Vec<Name> = self.query(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'pending'",
            None,
        )?;
        if legacy.is_empty() {
            return Ok(());
        }
        let rows: Vec<LegacyRow> =
            self.query("SELECT received_at_ms, doc FROM pending ORDER BY seq", None)?;
        if let Some(first) = rows.first() {
            let readings: Vec<Rc<str>> = rows.iter().map(|r| Rc::from(r.doc.as_str())).collect();
            self.exec(
                "INSERT INTO outbox (received_at_ms, segment) VALUES (?, ?)",
                Some(vec![
                    SqlStorageValue::Integer(first.received_at_ms as i64),
                    segment::encode(default_node, &readings).into(),
                ]),
            )?;
        }
        for table in ["pending", "counters", "meta"] {
            self.exec(&format!("DROP TABLE IF EXISTS {table}"), None)?;
        }
        Ok(())
    }

    /// The last dead letters, newest first, as JSON.
    pub fn dead_letters(&self) -> Result<Vec<serde_json::Value>, StoreError> {
        let rows: Vec<DeadLetterRow> = self.query(
            "SELECT batch_id, failed_at_ms, status, detail, readings, body FROM dead_letters ORDER BY failed_at_ms DESC LIMIT ?",
            Some(vec![SqlStorageValue::Integer(DEAD_LETTERS_LISTED)]),
        )?;
        Ok(rows
            .into_iter()
            .map(|d| {
                serde_json::json!({
                    "batch_id": d.batch_id,
                    "failed_at_ms": d.failed_at_ms as u64,
                    "status": d.status as u16,
                    "detail": d.detail,
                    "readings": d.readings as u64,
                    "body": serde_json::from_str::<serde_json::Value>(&d.body).unwrap_or_default(),
                })
            })
            .collect())
    }
}

impl OutboxStore for SqlOutboxStore {
    type Key = i64;

    async fn append(
        &self,
        received_at_ms: u64,
        node: &str,
        readings: &[Rc<str>],
    ) -> Result<i64, StoreError> {
        let seq = self.last_seq.get() + 1;
        self.exec(
            "INSERT INTO outbox (seq, received_at_ms, segment) VALUES (?, ?, ?)",
            Some(vec![
                SqlStorageValue::Integer(seq),
                SqlStorageValue::Integer(received_at_ms as i64),
                segment::encode(node, readings).into(),
            ]),
        )?;
        self.last_seq.set(seq);
        Ok(seq)
    }

    async fn trim(
        &self,
        key: &i64,
        settled: usize,
        node: &str,
        readings: &[Rc<str>],
    ) -> Result<(), StoreError> {
        if settled >= readings.len() {
            return self.exec(
                "DELETE FROM outbox WHERE seq = ?",
                Some(vec![SqlStorageValue::Integer(*key)]),
            );
        }
        self.exec(
            "UPDATE outbox SET segment = ? WHERE seq = ?",
            Some(vec![
                segment::encode(node, &readings[settled..]).into(),
                SqlStorageValue::Integer(*key),
            ]),
        )
    }

    async fn dead_letter(&self, letter: &DeadLetter) -> Result<(), StoreError> {
        self.exec(
            "INSERT INTO dead_letters (batch_id, failed_at_ms, status, detail, readings, body) VALUES (?, ?, ?, ?, ?, ?)",
            Some(vec![
                letter.batch_id.as_str().into(),
                SqlStorageValue::Integer(letter.failed_at_ms as i64),
                SqlStorageValue::Integer(i64::from(letter.status)),
                letter.detail.as_str().into(),
                SqlStorageValue::Integer(letter.readings as i64),
                letter.body.as_str().into(),
            ]),
        )
    }
}

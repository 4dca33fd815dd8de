//! The Batcher's outbox store: its Durable Object's SQLite, one row per accepted segment (a
//! group-commit call's readings, `segment::encode`d into one text column). Cloudflare bills
//! SQLite-backed Durable Objects by rows written, so the layout is chosen for it: the key is
//! the rowid (no index to keep up); rows are slots (`delivery::slots`): a new segment overwrites
//! the row of a delivered one (one row written), what is delivered is recorded as a watermark
//! (one row, every 16 segments or when idle), and a large segment partly delivered is rewritten
//! in place (one row); never a row per reading, nor a delete per segment. Every statement's rows read and written
//! are counted from its cursor, for `/admin/stats`.

use std::cell::{Cell, RefCell};

use serde::Serialize;
use serde_json::value::RawValue;
use worker::{SqlCursor, SqlStorage, SqlStorageValue};

use crate::application::delivery::policy::{DEAD_LETTERS_KEPT, DEAD_LETTER_MAX_AGE_MS};
use crate::application::delivery::segment;
use crate::application::delivery::slots::{Placement, SlotKey, Slots};
use crate::domain::enrich::StoredReading;
use crate::ports::{DeadLetter, OutboxStore, SegmentAppend, StoreError, StoredSegment, Trim};

const SCHEMA: [&str; 3] = [
    "CREATE TABLE IF NOT EXISTS segments (
        slot INTEGER PRIMARY KEY,
        seq INTEGER NOT NULL,
        received_at_ms INTEGER NOT NULL,
        segment TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS segments_settled (
        id INTEGER PRIMARY KEY,
        settled_below INTEGER NOT NULL)",
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
    slots: RefCell<Slots>,
    counts: Cell<RowCounts>,
}

/// A row as the cursor's raw values, in the SELECT's column order. Read by position rather
/// than through serde: `SqlCursor::to_array` deserializes each row with serde_wasm_bindgen,
/// a visitor per row type in the upload (some 3 KB gzip for these five queries).
struct Row(Vec<SqlStorageValue>);

impl Row {
    fn int(&self, column: usize) -> Result<i64, StoreError> {
        match self.0.get(column) {
            Some(SqlStorageValue::Integer(n)) => Ok(*n),
            Some(SqlStorageValue::Float(n)) => Ok(*n as i64),
            _ => Err(Self::shape(column, "an integer")),
        }
    }

    fn text(&mut self, column: usize) -> Result<String, StoreError> {
        match self.0.get_mut(column) {
            Some(SqlStorageValue::String(s)) => Ok(std::mem::take(s)),
            _ => Err(Self::shape(column, "text")),
        }
    }

    fn shape(column: usize, want: &str) -> StoreError {
        StoreError(format!("column {column} of a stored row is not {want}"))
    }
}

struct SegmentRow {
    slot: i64,
    seq: i64,
    received_at_ms: i64,
    segment: String,
}

/// A dead letter as `/admin/dead-letters` lists it.
#[derive(Serialize)]
pub struct DeadLetterView {
    batch_id: String,
    failed_at_ms: u64,
    status: Option<u16>,
    detail: String,
    readings: u64,
    body: Option<Box<RawValue>>,
}

fn err(e: worker::Error) -> StoreError {
    StoreError(e.to_string())
}

impl SqlOutboxStore {
    /// Opens the store: creates its tables and moves readings an earlier release kept one row
    /// each (table `pending`) into one segment. Returns the store and every segment it holds
    /// that is not settled.
    pub fn open(
        sql: SqlStorage,
        default_node: &str,
    ) -> Result<(Self, Vec<StoredSegment<SlotKey>>), StoreError> {
        let store = Self {
            sql,
            slots: RefCell::new(Slots::default()),
            counts: Cell::new(RowCounts::default()),
        };
        for statement in SCHEMA {
            store.exec(statement, None)?;
        }
        let marks = store.query(
            "SELECT settled_below FROM segments_settled WHERE id = 1",
            None,
            |r| r.int(0),
        )?;
        let settled_below = marks.first().copied().unwrap_or(0);
        // One scan reads every row (free ones too: the book needs their slots), oldest first.
        let rows = store.query(
            "SELECT slot, seq, received_at_ms, segment FROM segments ORDER BY seq",
            None,
            |mut r| {
                Ok(SegmentRow {
                    slot: r.int(0)?,
                    seq: r.int(1)?,
                    received_at_ms: r.int(2)?,
                    segment: r.text(3)?,
                })
            },
        )?;
        let key = |r: &SegmentRow| SlotKey {
            slot: r.slot,
            seq: r.seq,
        };
        let slots = Slots::load(rows.iter().map(key), settled_below);
        let settled_below = slots.settled_below();
        *store.slots.borrow_mut() = slots;
        let mut segments: Vec<StoredSegment<SlotKey>> = rows
            .iter()
            .filter(|r| r.seq >= settled_below)
            .map(|r| {
                let (node, readings) = segment::decode(&r.segment);
                StoredSegment {
                    key: key(r),
                    received_at_ms: r.received_at_ms as u64,
                    node,
                    readings,
                }
            })
            .collect();
        segments.extend(store.migrate_legacy(default_node)?);
        Ok((store, segments))
    }

    /// Writes a segment into a free row or a new one.
    fn write_segment(
        &self,
        received_at_ms: u64,
        node: &str,
        readings: &[StoredReading],
    ) -> Result<SlotKey, StoreError> {
        let placement = self.slots.borrow_mut().place();
        let key = placement.key();
        let text = segment::encode(node, readings);
        let written = match placement {
            Placement::Reuse(_) => self.exec(
                "UPDATE segments SET seq = ?, received_at_ms = ?, segment = ? WHERE slot = ?",
                Some(vec![
                    SqlStorageValue::Integer(key.seq),
                    SqlStorageValue::Integer(received_at_ms as i64),
                    text.into(),
                    SqlStorageValue::Integer(key.slot),
                ]),
            ),
            Placement::Insert(_) => self.exec(
                "INSERT INTO segments (slot, seq, received_at_ms, segment) VALUES (?, ?, ?, ?)",
                Some(vec![
                    SqlStorageValue::Integer(key.slot),
                    SqlStorageValue::Integer(key.seq),
                    SqlStorageValue::Integer(received_at_ms as i64),
                    text.into(),
                ]),
            ),
        };
        match written {
            Ok(()) => {
                self.slots.borrow_mut().written(key);
                Ok(key)
            }
            Err(e) => {
                self.slots.borrow_mut().not_written(placement);
                Err(e)
            }
        }
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
        self.rows_written_by(query, binds).map(drop)
    }

    /// Runs a statement; the rows it wrote.
    fn rows_written_by(
        &self,
        query: &str,
        binds: Option<Vec<SqlStorageValue>>,
    ) -> Result<u64, StoreError> {
        let cursor = self.sql.exec(query, binds).map_err(err)?;
        self.tally(&cursor);
        Ok(cursor.rows_written() as u64)
    }

    /// Runs a query; each row read by `read`.
    fn query<T>(
        &self,
        query: &str,
        binds: Option<Vec<SqlStorageValue>>,
        read: impl Fn(Row) -> Result<T, StoreError>,
    ) -> Result<Vec<T>, StoreError> {
        let cursor = self.sql.exec(query, binds).map_err(err)?;
        let rows = cursor
            .raw()
            .map(|row| read(Row(row.map_err(err)?)))
            .collect::<Result<Vec<T>, StoreError>>()?;
        self.tally(&cursor);
        Ok(rows)
    }

    fn migrate_legacy(
        &self,
        default_node: &str,
    ) -> Result<Option<StoredSegment<SlotKey>>, StoreError> {
        let legacy = self.query(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'pending'",
            None,
            |_| Ok(()),
        )?;
        if legacy.is_empty() {
            return Ok(None);
        }
        let rows = self.query(
            "SELECT received_at_ms, doc FROM pending ORDER BY seq",
            None,
            |mut r| Ok((r.int(0)?, r.text(1)?)),
        )?;
        let mut moved = None;
        if let Some(first) = rows.first() {
            let readings: Vec<StoredReading> = rows
                .iter()
                .map(|(_, doc)| StoredReading::from_store(doc))
                .collect();
            let received_at_ms = first.0 as u64;
            let key = self.write_segment(received_at_ms, default_node, &readings)?;
            moved = Some(StoredSegment {
                key,
                received_at_ms,
                node: default_node.to_owned(),
                readings,
            });
        }
        for table in ["pending", "counters", "meta"] {
            self.exec(&format!("DROP TABLE IF EXISTS {table}"), None)?;
        }
        Ok(moved)
    }

    /// The last dead letters, newest first.
    pub fn dead_letters(&self) -> Result<Vec<DeadLetterView>, StoreError> {
        self.query(
            "SELECT batch_id, failed_at_ms, status, detail, readings, body FROM dead_letters ORDER BY failed_at_ms DESC LIMIT ?",
            Some(vec![SqlStorageValue::Integer(DEAD_LETTERS_LISTED)]),
            |mut r| {
                let status = r.int(2)?;
                Ok(DeadLetterView {
                    batch_id: r.text(0)?,
                    failed_at_ms: r.int(1)? as u64,
                    // 0 is how this table, made NOT NULL by an earlier release, keeps "none".
                    status: (status > 0).then_some(status as u16),
                    detail: r.text(3)?,
                    readings: r.int(4)? as u64,
                    // The batch as sent when it is JSON (json and ndjson of one line), else null.
                    body: RawValue::from_string(r.text(5)?).ok(),
                })
            },
        )
    }
}

impl OutboxStore for SqlOutboxStore {
    type Key = SlotKey;

    /// A settled segment's row is only marked free (the next segment overwrites it, and the
    /// watermark records it); a large one partly settled is rewritten with the rest.
    async fn trim(&self, trim: &Trim<SlotKey>) -> Result<(), StoreError> {
        let (key, settled, node, readings) = (&trim.key, trim.settled, &*trim.node, &trim.readings);
        if settled >= readings.len() {
            self.slots.borrow_mut().settled(*key);
            return Ok(());
        }
        self.exec(
            "UPDATE segments SET segment = ? WHERE slot = ? AND seq = ?",
            Some(vec![
                segment::encode(node, &readings[settled..]).into(),
                SqlStorageValue::Integer(key.slot),
                SqlStorageValue::Integer(key.seq),
            ]),
        )
    }

    async fn end_round(&self, idle: bool) -> Result<(), StoreError> {
        let Some(mark) = self.slots.borrow_mut().watermark_to_write(idle) else {
            return Ok(());
        };
        self.exec(
            "INSERT INTO segments_settled (id, settled_below) VALUES (1, ?) ON CONFLICT (id) DO UPDATE SET settled_below = excluded.settled_below",
            Some(vec![SqlStorageValue::Integer(mark)]),
        )
    }

    /// One row for the letter; then, in one statement, the rows past the bounds (older than
    /// the age, or beyond the newest `DEAD_LETTERS_KEPT`) are deleted. Its rows written are
    /// the letters dropped (the table has no index, so no row is counted twice).
    async fn dead_letter(&self, letter: &DeadLetter) -> Result<u64, StoreError> {
        self.exec(
            "INSERT INTO dead_letters (batch_id, failed_at_ms, status, detail, readings, body) VALUES (?, ?, ?, ?, ?, ?)",
            Some(vec![
                letter.batch_id.as_str().into(),
                SqlStorageValue::Integer(letter.failed_at_ms as i64),
                SqlStorageValue::Integer(letter.status.map_or(0, i64::from)),
                letter.detail.as_str().into(),
                SqlStorageValue::Integer(letter.readings as i64),
                letter.body.as_str().into(),
            ]),
        )?;
        self.rows_written_by(
            "DELETE FROM dead_letters WHERE failed_at_ms < ? OR rowid IN (SELECT rowid FROM dead_letters ORDER BY rowid DESC LIMIT -1 OFFSET ?)",
            Some(vec![
                SqlStorageValue::Integer(
                    letter.failed_at_ms.saturating_sub(DEAD_LETTER_MAX_AGE_MS) as i64,
                ),
                SqlStorageValue::Integer(DEAD_LETTERS_KEPT as i64),
            ]),
        )
    }
}

impl SegmentAppend for SqlOutboxStore {
    async fn append(
        &self,
        received_at_ms: u64,
        node: &str,
        readings: &[StoredReading],
    ) -> Result<SlotKey, StoreError> {
        self.write_segment(received_at_ms, node, readings)
    }
}

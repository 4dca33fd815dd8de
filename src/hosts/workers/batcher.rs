//! The `Batcher` Durable Object: the durable half of the delivery promise on Workers.
//!
//! - `accept` (a Workers RPC method, see `accept_rpc`) writes the readings to the object's SQLite
//!   storage and answers only then
//!   (the output gate holds the answer until the write is durable), so a 2xx to the device
//!   means the reading survives isolate eviction and `wrangler dev` restarts.
//! - An alarm flushes at max age or at max items; the batch keeps its id across retries
//!   (`Idempotency-Key`), failures back off exponentially with jitter, and a batch the
//!   collector refuses for good (4xx other than 408/429) moves to the dead-letter table.
//! - The backlog is bounded: past `MAX_BACKLOG` pending readings, `accept` refuses.
//! - Per-device rate limits are enforced here, per request section (see `wire`).

use std::cell::{Cell, RefCell};

use serde::Deserialize;
use wasm_bindgen::prelude::wasm_bindgen;
use wasm_bindgen::JsValue;
use worker::{
    durable_object, DurableObject, Env, Fetch, Headers, Method, Request, RequestInit, Response,
    ScheduledTime, SqlStorage, SqlStorageValue, State,
};

use super::{log, now_ms, settings, wire};
use crate::config::Config;
use crate::delivery::policy::{verdict, FlushAt, FlushPolicy, RetryPolicy, Verdict};
use crate::delivery::sink::{encode_batch, encode_json_batch};
use crate::domain::ids;
use crate::http::rate_limit::MemoryBuckets;

/// Durable Object SQL allows 100 bound parameters per statement: 2 per row.
const ROWS_PER_INSERT: usize = 50;
/// One alarm run delivers batches for at most this long, then yields to a fresh alarm.
const ALARM_BUDGET_MS: u64 = 10_000;
const COLLECTOR_TIMEOUT_MS: u64 = 10_000;
/// Batches one alarm sends concurrently, so delivery keeps up with a busy colo.
const SENDS_IN_FLIGHT: usize = 4;
const DEAD_LETTERS_LISTED: i64 = 100;

const SCHEMA: [&str; 5] = [
    "CREATE TABLE IF NOT EXISTS pending (
        seq INTEGER PRIMARY KEY,
        received_at_ms INTEGER NOT NULL,
        doc TEXT NOT NULL,
        batch_id TEXT)",
    "CREATE INDEX IF NOT EXISTS pending_batch ON pending (batch_id)",
    "CREATE TABLE IF NOT EXISTS dead_letters (
        batch_id TEXT PRIMARY KEY,
        failed_at_ms INTEGER NOT NULL,
        status INTEGER NOT NULL,
        detail TEXT NOT NULL,
        readings INTEGER NOT NULL,
        body TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
];

#[durable_object]
pub struct Batcher {
    state: State,
    env: Env,
    sql: SqlStorage,
    // The object is the only writer of its storage, so these mirror it in memory and spare
    // every accept a COUNT(*) over the backlog and a storage round trip for the alarm.
    pending: Cell<usize>,
    failures: Cell<u32>,
    /// `Some(t)`: an alarm is set for t; `None`: none is. Unknown until first asked.
    alarm: Cell<Option<Option<u64>>>,
    edge_node: RefCell<Option<String>>,
    /// Per-device rate limits (token buckets), made on first use.
    buckets: RefCell<Option<MemoryBuckets>>,
}

#[derive(Deserialize)]
struct Backlog {
    n: f64,
    oldest: Option<f64>,
}

#[derive(Deserialize)]
struct BatchIdRow {
    batch_id: String,
}

#[derive(Deserialize)]
struct DocRow {
    doc: String,
}

#[derive(Deserialize)]
struct Value {
    value: f64,
}

#[derive(Deserialize)]
struct TextValue {
    value: String,
}

#[derive(Deserialize, serde::Serialize)]
struct DeadLetter {
    batch_id: String,
    failed_at_ms: f64,
    status: f64,
    detail: String,
    readings: f64,
    body: String,
}

struct PendingBatch {
    id: String,
    docs: Vec<DocRow>,
}

/// What one delivery attempt came back with: an HTTP status, or none for a network fault.
struct Attempt {
    status: Option<u16>,
    detail: String,
}

impl DurableObject for Batcher {
    fn new(state: State, env: Env) -> Self {
        let sql = state.storage().sql();
        for statement in SCHEMA {
            if let Err(e) = sql.exec(statement, None) {
                log::error("batcher_schema_failed", "", &[("error", &e.to_string())]);
            }
        }
        let pending = sql
            .exec("SELECT COUNT(*) AS value FROM pending", None)
            .and_then(|c| c.one::<Value>())
            .map(|v| v.value as usize)
            .unwrap_or(0);
        let failures = sql
            .exec(
                "SELECT value FROM counters WHERE name = 'consecutive_failures'",
                None,
            )
            .and_then(|c| c.to_array::<Value>())
            .ok()
            .and_then(|rows| rows.first().map(|r| r.value as u32))
            .unwrap_or(0);
        Self {
            state,
            env,
            sql,
            pending: Cell::new(pending),
            failures: Cell::new(failures),
            alarm: Cell::new(None),
            edge_node: RefCell::new(None),
            buckets: RefCell::new(None),
        }
    }

    async fn fetch(&self, req: Request) -> worker::Result<Response> {
        let path = req.path();
        match (req.method(), path.as_str()) {
            (Method::Get, "/stats") => self.stats().await,
            (Method::Get, "/dead-letters") => self.dead_letters(),
            _ => Response::error("not found", 404),
        }
    }

    async fn alarm(&self) -> worker::Result<Response> {
        self.alarm.set(Some(None)); // this alarm has fired; none is set until we set one
                                    // Errors are handled here, not thrown: a thrown alarm is retried by the runtime on its
                                    // own schedule, and we want ours (capped backoff) instead.
        if let Err(e) = self.flush().await {
            log::error("flush_failed", "", &[("error", &e.to_string())]);
            let _ = self.set_alarm_at(now_ms() + 1_000).await;
        }
        Response::ok("")
    }
}

/// Workers RPC: the group-commit call. A fetch builds a Request, Headers and a Response on both
/// sides of every call, and the Durable Object hop is most of a request's cost on Workers.
/// (`src/workers/entry.mjs` makes the exported class derive from `DurableObject`, which the
/// runtime requires before it serves RPC.)
#[wasm_bindgen]
impl Batcher {
    #[wasm_bindgen(js_name = accept)]
    pub async fn accept_rpc(&self, node: String, body: String) -> Result<JsValue, JsValue> {
        let reply = self
            .accept(&node, &body)
            .await
            .map_err(|e| JsValue::from_str(&e.to_string()))?;
        serde_json::to_string(&reply)
            .map(|json| JsValue::from_str(&json))
            .map_err(|e| JsValue::from_str(&e.to_string()))
    }
}

impl Batcher {
    fn config(&self) -> Result<Config, String> {
        settings(&self.env).config.clone().map_err(|e| e.join("; "))
    }

    async fn accept(&self, node: &str, body: &str) -> worker::Result<wire::AcceptReply> {
        let config = match self.config() {
            Ok(c) => c,
            Err(detail) => return Ok(wire::AcceptReply::Refused { detail }),
        };
        let sections = wire::decode_sections(body);
        let total: usize = sections.iter().map(|s| s.docs.len()).sum();
        let now = now_ms();
        let pending = self.pending.get();
        // The backlog bound is checked before any rate-limit tokens are taken, so a refused
        // call costs no device anything.
        if pending + total > config.max_backlog {
            self.bump("backlog_refusals", 1)?;
            // A full backlog must still drain: make sure a flush or retry alarm is set even if
            // the runtime lost it (e.g. a restart), since this refusal writes nothing new.
            self.schedule(&config, now).await?;
            let detail = format!("the delivery backlog holds {pending} readings (limit {}); the collector may be down", config.max_backlog);
            return Ok(wire::AcceptReply::BacklogFull {
                retry_after_s: config.backlog_retry_after_s(),
                detail,
            });
        }
        let mut answer = wire::AcceptAnswer::default();
        let mut lines: Vec<&str> = Vec::with_capacity(total);
        for (index, section) in sections.iter().enumerate() {
            match self.admit(&config, &section.costs, now) {
                Ok(()) => lines.extend_from_slice(&section.docs),
                Err(retry_after_s) => answer.limited.push((index, retry_after_s)),
            }
        }
        if !answer.limited.is_empty() {
            self.bump("rate_limited_requests", answer.limited.len() as i64)?;
        }
        // No await between these writes: the runtime commits them as one implicit transaction.
        for chunk in lines.chunks(ROWS_PER_INSERT) {
            let placeholders = vec!["(?, ?)"; chunk.len()].join(", ");
            let mut binds = Vec::with_capacity(chunk.len() * 2);
            for doc in chunk {
                binds.push(SqlStorageValue::Integer(now as i64));
                binds.push(SqlStorageValue::String((*doc).to_owned()));
            }
            self.sql.exec(
                &format!("INSERT INTO pending (received_at_ms, doc) VALUES {placeholders}"),
                binds,
            )?;
        }
        self.pending.set(pending + lines.len());
        if self.edge_node.replace(Some(node.to_owned())).as_deref() != Some(node) {
            self.sql.exec(
                "INSERT INTO meta (name, value) VALUES ('edge_node', ?) ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                vec![node.into()],
            )?;
        }
        // One statement for both counters: every exec is a crossing into the runtime.
        self.sql.exec(
            "INSERT INTO counters (name, value) VALUES ('accepted_readings', ?), ('accept_calls', 1) \
             ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
            vec![SqlStorageValue::Integer(lines.len() as i64)],
        )?;
        if !lines.is_empty() {
            self.schedule(&config, now).await?;
        }
        answer.accepted = lines.len();
        answer.backlog = pending + lines.len();
        Ok(wire::AcceptReply::Accepted(answer))
    }

    /// Charges one request's readings to its devices' token buckets, all or none. The buckets
    /// live in this object's memory: exact for the devices it serves while it stays loaded; an
    /// evicted object starts with full buckets (the limit then errs towards admitting).
    fn admit(&self, config: &Config, costs: &[(&str, u32)], now: u64) -> Result<(), u32> {
        let Some(limit) = config.rate_limit else {
            return Ok(());
        };
        MemoryBuckets::admit_in(&mut self.buckets.borrow_mut(), limit, costs, now)
    }

    /// Makes sure an alarm will fire when the policy says the next flush is due. During a
    /// backoff the retry alarm stands: new traffic must not hammer a failing collector.
    async fn schedule(&self, config: &Config, now: u64) -> worker::Result<()> {
        let existing = match self.alarm.get() {
            Some(known) => known,
            None => {
                let at = self
                    .state
                    .storage()
                    .get_alarm()
                    .await?
                    .map(|t| t.max(0) as u64);
                self.alarm.set(Some(at));
                at
            }
        };
        let failures = self.failures.get();
        let pending = self.pending.get();
        let wanted = if failures > 0 {
            existing
                .is_none()
                .then(|| now + retry_policy(config).delay_ms(failures, js_sys::Math::random()))
        } else if pending == 0 {
            None
        } else if pending >= config.flush_max_items {
            // A full batch is pending (or one formed earlier is in flight): flush now.
            Some(now)
        } else if existing.is_some() && self.in_flight()?.is_none() {
            // Fewer than a batch, none in flight, and an alarm is already set for the oldest
            // one's max age: nothing newer can make it due earlier. (Spares a COUNT over the
            // backlog on every accept.)
            None
        } else {
            match self.due(config, now)? {
                FlushAt::Idle => None,
                FlushAt::Now => Some(now),
                FlushAt::At(t) => Some(t),
            }
        };
        match (wanted, existing) {
            (Some(w), Some(e)) if e <= w => Ok(()),
            (Some(w), _) => self.set_alarm_at(w).await,
            (None, _) => Ok(()),
        }
    }

    async fn set_alarm_at(&self, unix_ms: u64) -> worker::Result<()> {
        let when = ScheduledTime::new(js_sys::Date::new(&JsValue::from_f64(unix_ms as f64)));
        self.state.storage().set_alarm(when).await?;
        self.alarm.set(Some(Some(unix_ms)));
        Ok(())
    }

    fn due(&self, config: &Config, now: u64) -> worker::Result<FlushAt> {
        if self.in_flight()?.is_some() {
            return Ok(FlushAt::Now);
        }
        self.unassigned_due(config, now)
    }

    /// When the readings not yet in any batch are due, by the flush policy.
    fn unassigned_due(&self, config: &Config, now: u64) -> worker::Result<FlushAt> {
        let backlog: Backlog = self
            .sql
            .exec("SELECT COUNT(*) AS n, MIN(received_at_ms) AS oldest FROM pending WHERE batch_id IS NULL", None)?
            .one()?;
        Ok(flush_policy(config).next_flush(
            backlog.n as usize,
            backlog.oldest.map(|t| t as u64),
            now,
        ))
    }

    async fn flush(&self) -> worker::Result<()> {
        let config = match self.config() {
            Ok(c) => c,
            Err(e) => {
                // Keep everything; try again once the deployment is fixed.
                log::error("flush_misconfigured", "", &[("error", &e)]);
                return self.set_alarm_at(now_ms() + 60_000).await;
            }
        };
        let started = now_ms();
        loop {
            let batches = self.next_batches(&config)?;
            if batches.is_empty() {
                break;
            }
            let attempts =
                futures_util::future::join_all(batches.iter().map(|b| self.send(&config, b))).await;
            let mut retry_in = None;
            for (batch, attempt) in batches.iter().zip(attempts) {
                if let Some(delay) = self.settle(&config, batch, attempt)? {
                    retry_in = Some(delay);
                }
            }
            if let Some(delay) = retry_in {
                return self.set_alarm_at(now_ms() + delay).await;
            }
            if now_ms().saturating_sub(started) > ALARM_BUDGET_MS {
                return self.set_alarm_at(now_ms()).await;
            }
        }
        match self.due(&config, now_ms())? {
            FlushAt::Idle => Ok(()),
            FlushAt::Now => self.set_alarm_at(now_ms()).await,
            FlushAt::At(t) => self.set_alarm_at(t).await,
        }
    }

    /// Removes a batch that is done with (delivered or dead-lettered); the collector answered,
    /// so the failure streak ends.
    fn forget(&self, batch: &PendingBatch) -> worker::Result<()> {
        self.sql.exec(
            "DELETE FROM pending WHERE batch_id = ?",
            vec![batch.id.as_str().into()],
        )?;
        self.pending
            .set(self.pending.get().saturating_sub(batch.docs.len()));
        self.set_failures(0)
    }

    /// Applies one delivery attempt's verdict to its batch; `Some(delay)` asks for a retry.
    fn settle(
        &self,
        config: &Config,
        batch: &PendingBatch,
        attempt: Attempt,
    ) -> worker::Result<Option<u64>> {
        match verdict(attempt.status) {
            Verdict::Delivered => {
                self.forget(batch)?;
                self.bump("flushed_batches", 1)?;
                self.bump("flushed_readings", batch.docs.len() as i64)?;
                log::info(
                    "flush_delivered",
                    "",
                    &[
                        ("batch_id", &batch.id),
                        ("readings", &batch.docs.len().to_string()),
                    ],
                );
            }
            Verdict::Retry => {
                let failures = self.failures.get() + 1;
                self.set_failures(failures)?;
                self.bump("failed_attempts", 1)?;
                let delay = retry_policy(config).delay_ms(failures, js_sys::Math::random());
                let status = attempt
                    .status
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| "network".into());
                log::warn(
                    "flush_retry",
                    "",
                    &[
                        ("batch_id", &batch.id),
                        ("status", &status),
                        ("detail", &attempt.detail),
                        ("retry_in_ms", &delay.to_string()),
                    ],
                );
                return Ok(Some(delay));
            }
            Verdict::DeadLetter => {
                let body = encode_json_batch(
                    &batch.id,
                    &self.edge_node()?,
                    now_ms(),
                    batch.docs.iter().map(|d| d.doc.as_str()),
                );
                self.sql.exec(
                "INSERT OR REPLACE INTO dead_letters (batch_id, failed_at_ms, status, detail, readings, body) VALUES (?, ?, ?, ?, ?, ?)",
                vec![
                    batch.id.as_str().into(),
                    SqlStorageValue::Integer(now_ms() as i64),
                    SqlStorageValue::Integer(i64::from(attempt.status.unwrap_or(0))),
                    attempt.detail.as_str().into(),
                    SqlStorageValue::Integer(batch.docs.len() as i64),
                    body.into(),
                ],
            )?;
                self.forget(batch)?;
                self.bump("dead_letter_batches", 1)?;
                log::error(
                    "flush_dead_letter",
                    "",
                    &[
                        ("batch_id", &batch.id),
                        ("status", &attempt.status.unwrap_or(0).to_string()),
                        ("detail", &attempt.detail),
                    ],
                );
            }
        }
        Ok(None)
    }

    fn in_flight(&self) -> worker::Result<Option<String>> {
        let rows: Vec<BatchIdRow> = self
            .sql
            .exec(
                "SELECT batch_id FROM pending WHERE batch_id IS NOT NULL ORDER BY seq LIMIT 1",
                None,
            )?
            .to_array()?;
        Ok(rows.into_iter().next().map(|r| r.batch_id))
    }

    /// Up to `SENDS_IN_FLIGHT` batches to send together: batches formed earlier but not yet
    /// delivered go first, under their original ids; then new batches of the oldest readings,
    /// while the policy says one is due.
    fn next_batches(&self, config: &Config) -> worker::Result<Vec<PendingBatch>> {
        let mut ids: Vec<String> = self
            .sql
            .exec(
                "SELECT batch_id FROM pending WHERE batch_id IS NOT NULL GROUP BY batch_id ORDER BY MIN(seq) LIMIT ?",
                vec![SqlStorageValue::Integer(SENDS_IN_FLIGHT as i64)],
            )?
            .to_array::<BatchIdRow>()?
            .into_iter()
            .map(|r| r.batch_id)
            .collect();
        while ids.len() < SENDS_IN_FLIGHT && self.unassigned_due(config, now_ms())? == FlushAt::Now
        {
            let id = ids::new_id(now_ms())
                .map_err(|_| worker::Error::RustError("no entropy for a batch id".into()))?;
            self.sql.exec(
                "UPDATE pending SET batch_id = ? WHERE seq IN (SELECT seq FROM pending WHERE batch_id IS NULL ORDER BY seq LIMIT ?)",
                vec![id.as_str().into(), SqlStorageValue::Integer(config.flush_max_items as i64)],
            )?;
            ids.push(id);
        }
        let mut batches = Vec::with_capacity(ids.len());
        for id in ids {
            let docs: Vec<DocRow> = self
                .sql
                .exec(
                    "SELECT doc FROM pending WHERE batch_id = ? ORDER BY seq",
                    vec![id.as_str().into()],
                )?
                .to_array()?;
            if !docs.is_empty() {
                batches.push(PendingBatch { id, docs });
            }
        }
        Ok(batches)
    }

    async fn send(&self, config: &Config, batch: &PendingBatch) -> Attempt {
        match self.try_send(config, batch).await {
            Ok(attempt) => attempt,
            Err(e) => Attempt {
                status: None,
                detail: e.to_string(),
            },
        }
    }

    async fn try_send(&self, config: &Config, batch: &PendingBatch) -> worker::Result<Attempt> {
        let encoded = encode_batch(
            config.sink_format,
            &batch.id,
            &self.edge_node()?,
            now_ms(),
            batch.docs.iter().map(|d| d.doc.as_str()),
        );
        let body = match encoded {
            Ok(body) => body,
            // Not a reading document: a permanent fault, so the batch is dead-lettered (kept).
            Err(e) => {
                return Ok(Attempt {
                    status: Some(400),
                    detail: format!("the batch could not be encoded for the sink: {e}"),
                })
            }
        };
        let headers = Headers::new();
        headers.set("content-type", config.sink_format.content_type())?;
        headers.set("idempotency-key", &batch.id)?;
        if let Some(token) = &config.collector_token {
            headers.set("authorization", &format!("Bearer {token}"))?;
        }
        let mut init = RequestInit::new();
        init.with_method(Method::Post)
            .with_headers(headers)
            .with_body(Some(JsValue::from_str(&body)));
        let request = Request::new_with_init(&config.collector_url, &init)?;
        let fetch = Fetch::Request(request);
        let send = Box::pin(fetch.send());
        let timeout = Box::pin(worker::Delay::from(std::time::Duration::from_millis(
            COLLECTOR_TIMEOUT_MS,
        )));
        let outcome = futures_util::future::select(send, timeout).await;
        let attempt = match outcome {
            futures_util::future::Either::Left((answer, _)) => {
                let mut answer = answer?;
                let status = answer.status_code();
                let detail = if (200..300).contains(&status) {
                    String::new()
                } else {
                    answer
                        .text()
                        .await
                        .unwrap_or_default()
                        .chars()
                        .take(500)
                        .collect()
                };
                Ok(Attempt {
                    status: Some(status),
                    detail,
                })
            }
            futures_util::future::Either::Right(_) => Ok(Attempt {
                status: None,
                detail: format!("no answer within {COLLECTOR_TIMEOUT_MS} ms"),
            }),
        };
        attempt
    }

    fn edge_node(&self) -> worker::Result<String> {
        let rows: Vec<TextValue> = self
            .sql
            .exec("SELECT value FROM meta WHERE name = 'edge_node'", None)?
            .to_array()?;
        Ok(rows
            .into_iter()
            .next()
            .map(|r| r.value)
            .unwrap_or_else(|| String::from("local")))
    }

    fn pending_count(&self) -> worker::Result<usize> {
        let v: Value = self
            .sql
            .exec("SELECT COUNT(*) AS value FROM pending", None)?
            .one()?;
        Ok(v.value as usize)
    }

    fn counter(&self, name: &str) -> worker::Result<i64> {
        let rows: Vec<Value> = self
            .sql
            .exec(
                "SELECT value FROM counters WHERE name = ?",
                vec![name.into()],
            )?
            .to_array()?;
        Ok(rows.first().map(|r| r.value as i64).unwrap_or(0))
    }

    fn set_failures(&self, failures: u32) -> worker::Result<()> {
        if self.failures.replace(failures) != failures {
            self.set_counter("consecutive_failures", i64::from(failures))?;
        }
        Ok(())
    }

    fn set_counter(&self, name: &str, value: i64) -> worker::Result<()> {
        self.write_counter(name, value, "excluded.value")
    }

    fn bump(&self, name: &str, by: i64) -> worker::Result<()> {
        self.write_counter(name, by, "value + excluded.value")
    }

    /// Upserts a counter; `update` is the SQL for its new value on conflict.
    fn write_counter(&self, name: &str, value: i64, update: &str) -> worker::Result<()> {
        self.sql.exec(
            &format!("INSERT INTO counters (name, value) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = {update}"),
            vec![name.into(), SqlStorageValue::Integer(value)],
        )?;
        Ok(())
    }

    async fn stats(&self) -> worker::Result<Response> {
        let mut doc = serde_json::Map::new();
        for name in [
            "accepted_readings",
            "accept_calls",
            "flushed_batches",
            "flushed_readings",
            "failed_attempts",
            "dead_letter_batches",
            "backlog_refusals",
            "rate_limited_requests",
            "consecutive_failures",
        ] {
            doc.insert(name.into(), self.counter(name)?.into());
        }
        doc.insert("pending".into(), self.pending_count()?.into());
        doc.insert("in_flight_batch".into(), self.in_flight()?.into());
        doc.insert(
            "next_alarm_ms".into(),
            self.state.storage().get_alarm().await?.into(),
        );
        Response::from_json(&serde_json::Value::Object(doc))
    }

    fn dead_letters(&self) -> worker::Result<Response> {
        let rows: Vec<DeadLetter> = self
            .sql
            .exec(
                "SELECT batch_id, failed_at_ms, status, detail, readings, body FROM dead_letters ORDER BY failed_at_ms DESC LIMIT ?",
                vec![SqlStorageValue::Integer(DEAD_LETTERS_LISTED)],
            )?
            .to_array()?;
        let list: Vec<serde_json::Value> = rows
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
            .collect();
        Response::from_json(&serde_json::json!({ "dead_letters": list }))
    }
}

fn flush_policy(config: &Config) -> FlushPolicy {
    FlushPolicy {
        max_items: config.flush_max_items,
        max_age_ms: config.flush_interval_ms,
    }
}

fn retry_policy(config: &Config) -> RetryPolicy {
    RetryPolicy {
        base_ms: config.retry_base_ms,
        max_ms: config.retry_max_ms,
    }
}

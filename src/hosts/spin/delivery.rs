//! Per-instance batching and delivery on Spin / wasi:http.
//!
//! Readings wait in the instance's memory; one spawned task per instance flushes them at max
//! items or max age, after the answer has been sent, and keeps the instance alive until its
//! queue is empty (retrying with backoff while the collector is down). In the spin flavour the
//! key-value spill (see `crate::delivery::spill`) makes them survive the instance.

use std::cell::RefCell;
use std::collections::{HashSet, VecDeque};
use std::time::Duration;

use bytes::Bytes;
use spin_sdk::http::body::IncomingBodyExt;
use spin_sdk::http::FullBody;

use super::{emit, now_ms};
use crate::config::Config;
use crate::delivery::policy::{verdict, FlushAt, FlushPolicy, MemoryBatcher, RetryPolicy, Verdict};
use crate::delivery::sink::encode_batch;
use crate::domain::ids;
use crate::http::problem::Problem;
#[cfg(feature = "spin")]
use crate::http::problem::ProblemType;
use crate::http::routes::Accepted;
use crate::ports::Clock;

const COLLECTOR_TIMEOUT: Duration = Duration::from_secs(10);
const DEAD_LETTERS_KEPT: usize = 20;
#[cfg(feature = "spin")]
const ORPHAN_SCAN_EVERY_MS: u64 = 1_000;

struct WallClock;

impl Clock for WallClock {
    fn now_ms(&self) -> u64 {
        now_ms()
    }
}

#[derive(Clone)]
struct Pending {
    id: String,
    /// Part of the reading's spill key (spin flavour).
    #[cfg_attr(not(feature = "spin"), allow(dead_code))]
    received_at_ms: u64,
    json: String,
}

#[derive(Default, Clone, Copy, serde::Serialize)]
struct Counters {
    accepted_readings: u64,
    flushed_batches: u64,
    flushed_readings: u64,
    failed_attempts: u64,
    dead_letter_batches: u64,
    backlog_refusals: u64,
    recovered_readings: u64,
}

/// What this instance holds. Single-threaded: borrowed only between awaits, never across one.
struct Instance {
    queue: MemoryBatcher<Pending>,
    /// A batch that failed and waits for its retry, under the same batch id.
    in_flight: Option<(String, Vec<Pending>)>,
    held: HashSet<String>,
    capacity: usize,
    flusher_running: bool,
    failures: u32,
    counters: Counters,
    dead_letters: VecDeque<serde_json::Value>,
    #[cfg(feature = "spin")]
    last_orphan_scan_ms: u64,
}

thread_local! {
    static INSTANCE: RefCell<Option<Instance>> = const { RefCell::new(None) };
}

fn with<T>(config: &Config, f: impl FnOnce(&mut Instance) -> T) -> T {
    INSTANCE.with(|cell| {
        let mut slot = cell.borrow_mut();
        let instance = slot.get_or_insert_with(|| Instance {
            queue: MemoryBatcher::new(
                FlushPolicy {
                    max_items: config.flush_max_items,
                    max_age_ms: config.flush_interval_ms,
                },
                config.max_backlog,
            ),
            in_flight: None,
            held: HashSet::new(),
            capacity: config.max_backlog,
            flusher_running: false,
            failures: 0,
            counters: Counters::default(),
            dead_letters: VecDeque::new(),
            #[cfg(feature = "spin")]
            last_orphan_scan_ms: 0,
        });
        f(instance)
    })
}

impl Instance {
    fn backlog(&self) -> usize {
        self.queue.len() + self.in_flight.as_ref().map_or(0, |(_, b)| b.len())
    }

    /// A batch is done with (delivered or dead-lettered): the collector answered, so the
    /// failure streak ends, and its readings are no longer held here.
    fn forget(&mut self, batch: &[Pending]) {
        self.failures = 0;
        for p in batch {
            self.held.remove(&p.id);
        }
    }

    fn hold(&mut self, items: Vec<Pending>) -> Result<(), ()> {
        if self.backlog() + items.len() > self.capacity {
            return Err(());
        }
        self.held.extend(items.iter().map(|p| p.id.clone()));
        self.queue
            .push(&WallClock, items.into_iter())
            .map_err(|_| ())
    }
}

fn backlog_full(config: &Config) -> Problem {
    Problem::backlog_full(
        config.backlog_retry_after_s(),
        format!(
            "this instance holds {} undelivered readings; the collector may be down",
            config.max_backlog
        ),
    )
}

/// Takes the readings into this instance's batch (and, in the spin flavour, into key-value
/// first) and makes sure the flusher runs. Never waits for the collector.
pub async fn accept(config: &Config, node: &str, accepted: &Accepted) -> Result<(), Problem> {
    let n = accepted.readings.len();
    if with(config, |i| i.backlog() + n > i.capacity) {
        with(config, |i| i.counters.backlog_refusals += 1);
        return Err(backlog_full(config));
    }
    #[cfg(feature = "spin")]
    {
        let store = super::kv::open().await.map_err(spill_unavailable)?;
        crate::delivery::spill::record(&store, accepted.received_at_ms, &accepted.readings)
            .await
            .map_err(spill_unavailable)?;
    }
    let items: Vec<Pending> = accepted
        .readings
        .iter()
        .map(|r| Pending {
            id: r.id.clone(),
            received_at_ms: accepted.received_at_ms,
            json: r.json.clone(),
        })
        .collect();
    if with(config, |i| i.hold(items)).is_err() {
        // Filled up by a concurrent request while we wrote to key-value.
        #[cfg(feature = "spin")]
        if let Ok(store) = super::kv::open().await {
            crate::delivery::spill::release(
                &store,
                accepted
                    .readings
                    .iter()
                    .map(|r| (accepted.received_at_ms, r.id.as_str())),
            )
            .await;
        }
        return Err(backlog_full(config));
    }
    with(config, |i| i.counters.accepted_readings += n as u64);
    start_flusher(config, node);
    Ok(())
}

#[cfg(feature = "spin")]
fn spill_unavailable(e: String) -> Problem {
    emit("error", "spill_failed", "", &[("error", &e)]);
    Problem::new(
        ProblemType::UpstreamUnavailable,
        "the key-value store is unavailable; nothing was accepted",
    )
    .with_retry_after(1)
}

fn start_flusher(config: &Config, node: &str) {
    let start = with(config, |i| !std::mem::replace(&mut i.flusher_running, true));
    if start {
        let (config, node) = (config.clone(), node.to_owned());
        spin_sdk::wasip3::spawn(async move { flush_loop(&config, &node).await });
    }
}

enum Step {
    Send(String, Vec<Pending>),
    Wait(u64),
    Done,
}

async fn flush_loop(config: &Config, node: &str) {
    let retry = RetryPolicy {
        base_ms: config.retry_base_ms,
        max_ms: config.retry_max_ms,
    };
    loop {
        #[cfg(feature = "spin")]
        recover_orphans(config).await;
        let step = with(config, |i| {
            if let Some((id, batch)) = i.in_flight.take() {
                return Step::Send(id, batch);
            }
            match i.queue.next_look(&WallClock) {
                FlushAt::Now => Step::Send(
                    ids::new_id(now_ms()).unwrap_or_else(|_| format!("batch-{}", now_ms())),
                    i.queue.take_batch(),
                ),
                FlushAt::At(t) => Step::Wait(t.saturating_sub(now_ms())),
                FlushAt::Idle => {
                    i.flusher_running = false;
                    Step::Done
                }
            }
        });
        let (batch_id, batch) = match step {
            Step::Done => return,
            Step::Wait(ms) => {
                spin_sdk::time::sleep(Duration::from_millis(ms.max(1))).await;
                continue;
            }
            Step::Send(id, batch) => (id, batch),
        };
        let docs = || batch.iter().map(|p| p.json.as_str());
        let (status, detail) =
            match encode_batch(config.sink_format, &batch_id, node, now_ms(), docs()) {
                Ok(body) => send(config, &batch_id, body).await,
                // Not a reading document: a permanent fault; the batch is dead-lettered (kept).
                Err(e) => (
                    Some(400),
                    format!("the batch could not be encoded for the sink: {e}"),
                ),
            };
        match verdict(status) {
            Verdict::Delivered => {
                with(config, |i| {
                    i.forget(&batch);
                    i.counters.flushed_batches += 1;
                    i.counters.flushed_readings += batch.len() as u64;
                });
                #[cfg(feature = "spin")]
                if let Ok(store) = super::kv::open().await {
                    crate::delivery::spill::release(
                        &store,
                        batch.iter().map(|p| (p.received_at_ms, p.id.as_str())),
                    )
                    .await;
                }
                emit(
                    "info",
                    "flush_delivered",
                    "",
                    &[
                        ("batch_id", &batch_id),
                        ("readings", &batch.len().to_string()),
                    ],
                );
            }
            Verdict::Retry => {
                let failures = with(config, |i| {
                    i.failures += 1;
                    i.counters.failed_attempts += 1;
                    i.failures
                });
                let delay = retry.delay_ms(failures, jitter());
                let shown = status
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| "network".into());
                emit(
                    "warn",
                    "flush_retry",
                    "",
                    &[
                        ("batch_id", &batch_id),
                        ("status", &shown),
                        ("detail", &detail),
                        ("retry_in_ms", &delay.to_string()),
                    ],
                );
                with(config, |i| i.in_flight = Some((batch_id, batch)));
                spin_sdk::time::sleep(Duration::from_millis(delay)).await;
            }
            Verdict::DeadLetter => {
                let status = status.unwrap_or(0);
                emit(
                    "error",
                    "flush_dead_letter",
                    "",
                    &[
                        ("batch_id", &batch_id),
                        ("status", &status.to_string()),
                        ("detail", &detail),
                    ],
                );
                #[cfg(feature = "spin")]
                if let Ok(store) = super::kv::open().await {
                    // Kept as the JSON envelope whatever the sink format: readable and replayable.
                    let body =
                        crate::delivery::sink::encode_json_batch(&batch_id, node, now_ms(), docs());
                    let _ = crate::delivery::spill::dead_letter(
                        &store,
                        &batch_id,
                        &body,
                        batch.iter().map(|p| (p.received_at_ms, p.id.as_str())),
                    )
                    .await;
                }
                with(config, |i| {
                    i.forget(&batch);
                    i.counters.dead_letter_batches += 1;
                    if i.dead_letters.len() == DEAD_LETTERS_KEPT {
                        i.dead_letters.pop_front();
                    }
                    i.dead_letters.push_back(serde_json::json!({
                        "batch_id": batch_id, "failed_at_ms": now_ms(), "status": status,
                        "detail": detail, "readings": batch.len(),
                    }));
                });
            }
        }
    }
}

/// Re-sends spilled readings whose instance is gone (older than the grace period and not held
/// here). Several instances may pick up the same orphan: at least once, deduplicated by id.
#[cfg(feature = "spin")]
async fn recover_orphans(config: &Config) {
    let now = now_ms();
    let (due, room) = with(config, |i| {
        let due = now.saturating_sub(i.last_orphan_scan_ms) >= ORPHAN_SCAN_EVERY_MS;
        if due {
            i.last_orphan_scan_ms = now;
        }
        (due, i.capacity.saturating_sub(i.backlog()))
    });
    if !due || room == 0 {
        return;
    }
    let Ok(store) = super::kv::open().await else {
        return;
    };
    let held: HashSet<String> = with(config, |i| i.held.clone());
    match crate::delivery::spill::orphans(
        &store,
        now,
        config.spill_grace_ms,
        |id| held.contains(id),
        room,
    )
    .await
    {
        Ok(found) if !found.is_empty() => {
            let n = found.len();
            let items = found
                .into_iter()
                .map(|s| Pending {
                    id: s.id,
                    received_at_ms: s.received_at_ms,
                    json: s.json,
                })
                .collect();
            if with(config, |i| i.hold(items)).is_ok() {
                with(config, |i| i.counters.recovered_readings += n as u64);
                emit(
                    "warn",
                    "spill_recovered",
                    "",
                    &[("readings", &n.to_string())],
                );
            }
        }
        Ok(_) => {}
        Err(e) => emit("error", "spill_scan_failed", "", &[("error", &e)]),
    }
}

fn jitter() -> f64 {
    let mut b = [0u8; 2];
    getrandom::fill(&mut b)
        .map(|_| f64::from(u16::from_le_bytes(b)) / 65_536.0)
        .unwrap_or(0.5)
}

/// One POST to the collector: its status (None for a network fault or timeout) and, when it
/// is not 2xx, what it said.
async fn send(config: &Config, batch_id: &str, body: String) -> (Option<u16>, String) {
    let mut builder = http::Request::post(config.collector_url.as_str())
        .header("content-type", config.sink_format.content_type())
        .header("idempotency-key", batch_id);
    if let Some(token) = &config.collector_token {
        builder = builder.header("authorization", format!("Bearer {token}"));
    }
    let request = match builder.body(FullBody::new(Bytes::from(body))) {
        Ok(r) => r,
        Err(e) => return (None, e.to_string()),
    };
    let sending = Box::pin(spin_sdk::http::send(request));
    let timeout = Box::pin(spin_sdk::time::sleep(COLLECTOR_TIMEOUT));
    let outcome = futures_util::future::select(sending, timeout).await;
    match outcome {
        futures_util::future::Either::Left((Ok(answer), _)) => {
            let status = answer.status().as_u16();
            if (200..300).contains(&status) {
                (Some(status), String::new())
            } else {
                let text = answer
                    .into_body()
                    .bytes()
                    .await
                    .map(|b| String::from_utf8_lossy(&b).chars().take(500).collect())
                    .unwrap_or_default();
                (Some(status), text)
            }
        }
        futures_util::future::Either::Left((Err(code), _)) => (None, format!("{code:?}")),
        futures_util::future::Either::Right(_) => (
            None,
            format!("no answer within {} ms", COLLECTOR_TIMEOUT.as_millis()),
        ),
    }
}

/// This instance's view: on Spin/wasi:http every instance batches on its own.
pub fn stats() -> serde_json::Value {
    INSTANCE.with(|cell| match cell.borrow().as_ref() {
        None => serde_json::json!({ "scope": "instance", "pending": 0, "in_flight": 0 }),
        Some(i) => {
            let mut v = serde_json::to_value(i.counters).unwrap_or_default();
            v["scope"] = "instance".into();
            v["pending"] = i.queue.len().into();
            v["in_flight"] = i.in_flight.as_ref().map_or(0, |(_, b)| b.len()).into();
            v["consecutive_failures"] = i.failures.into();
            v["flusher_running"] = i.flusher_running.into();
            v
        }
    })
}

/// The admin view of dead letters, as JSON text: this instance's recent ones and, in the spin
/// flavour, the batch bodies parked in key-value (passed through verbatim, not re-parsed).
pub async fn dead_letters() -> String {
    let recent: Vec<serde_json::Value> = INSTANCE.with(|cell| {
        cell.borrow()
            .as_ref()
            .map(|i| i.dead_letters.iter().cloned().collect())
            .unwrap_or_default()
    });
    let recent = serde_json::to_string(&recent).unwrap_or_else(|_| "[]".into());
    #[cfg(feature = "spin")]
    {
        use crate::delivery::spill::KeyValue;
        let mut stored = Vec::new();
        if let Ok(store) = super::kv::open().await {
            let keys = store.keys().await.unwrap_or_default();
            for key in keys
                .iter()
                .filter(|k| k.starts_with(crate::delivery::spill::DEAD_PREFIX))
                .take(100)
            {
                if let Ok(Some(body)) = store.get(key).await {
                    if let Ok(text) = String::from_utf8(body) {
                        stored.push(text);
                    }
                }
            }
        }
        format!(
            "{{\"dead_letters\":{recent},\"stored\":[{}]}}",
            stored.join(",")
        )
    }
    #[cfg(not(feature = "spin"))]
    format!("{{\"dead_letters\":{recent},\"note\":\"the portable flavour keeps dead letters in instance memory only (and logs them)\"}}")
}

//! The instance's outbox on Spin / wasi:http: the core's engine (`delivery::outbox`) with this
//! host's ports. Accepted segments are appended to the store (spin flavour: one key-value key
//! per request; portable flavour: memory only) before the answer; one spawned task per instance
//! runs the delivery rounds after the answer has been sent, and ends when nothing is held.
//!
//! Spin keeps an instance, and its tasks, alive while that task runs (seen under Spin 4.1: a
//! flusher retrying against a dead collector kept logging for minutes after the instance's last
//! request), but may retire it at any time after, and nothing survives `spin up` going down.
//! So in the spin flavour an instance also recovers orphans: segments older than
//! `SPILL_GRACE_MS` that no live instance of its own holds. It looks when it starts, when its
//! deliveries recover after failing, again at once while the last look was cut short by its
//! bound, and otherwise every `RECOVERY_LOOK_EVERY_MS`; it never recovers while its own
//! deliveries fail (it could not deliver them either, and fresh readings need the room).

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use spin_sdk::http::body::IncomingBodyExt;
use spin_sdk::http::FullBody;

use super::{emit, now_ms};
use crate::config::Config;
use crate::delivery::outbox::{
    append_reserved, deliver_round, Delivery, Next, Outbox, OutboxConfig, SinkTarget, Wakeups,
};
use crate::http::problem::{Problem, ProblemType};
use crate::http::routes::Accepted;
use crate::ports::{
    Clock, Collector, CollectorAnswer, CollectorRequest, Level, Log, OutboxStore, SystemEntropy,
    Timer, TransportError,
};

#[cfg(feature = "spin")]
use super::kv::{self, SpinKv};
#[cfg(feature = "spin")]
use crate::delivery::kv_store::KvOutboxStore;

#[cfg(feature = "spin")]
type Store = KvOutboxStore<SpinKv>;
#[cfg(not(feature = "spin"))]
type Store = crate::delivery::outbox::MemoryStore;
type Key = <Store as OutboxStore>::Key;

/// Readings one look takes at most: 40 batches at the default size.
#[cfg(feature = "spin")]
const RECOVER_READINGS: usize = 2_000;
/// A fleet lists its keys for orphans about this often (see `kv_store::SCAN_HINT_KEY`).
#[cfg(feature = "spin")]
const SCAN_EVERY_MS: u64 = 2_000;
/// How often an instance looks when nothing suggests it should.
#[cfg(feature = "spin")]
const RECOVERY_LOOK_EVERY_MS: u64 = 30_000;

struct Instance {
    outbox: RefCell<Outbox<Key>>,
    store: Store,
    sink: SinkTarget,
    #[cfg_attr(not(feature = "spin"), allow(dead_code))]
    config: Config,
    /// When to look for orphans next (spin flavour), and whether deliveries were failing.
    #[cfg(feature = "spin")]
    recovery: RefCell<Recovery>,
}

#[cfg(feature = "spin")]
struct Recovery {
    next_look_ms: u64,
    was_healthy: bool,
}

thread_local! {
    static INSTANCE: RefCell<Option<Rc<Instance>>> = const { RefCell::new(None) };
}

async fn instance(config: &Config) -> Result<Rc<Instance>, Problem> {
    if let Some(i) = INSTANCE.with(|c| c.borrow().clone()) {
        return Ok(i);
    }
    #[cfg(feature = "spin")]
    let store = KvOutboxStore {
        kv: kv::open(kv::Path::Background)
            .await
            .map_err(store_unavailable)?,
    };
    #[cfg(not(feature = "spin"))]
    let store = Store::default();
    let made = Rc::new(Instance {
        outbox: RefCell::new(Outbox::new(
            OutboxConfig::from_config(config, Wakeups::Polled),
            now_ms(),
        )),
        store,
        sink: SinkTarget::from_config(config),
        config: config.clone(),
        #[cfg(feature = "spin")]
        recovery: RefCell::new(Recovery {
            next_look_ms: 0,
            was_healthy: true,
        }),
    });
    Ok(INSTANCE.with(|c| c.borrow_mut().get_or_insert(made).clone()))
}

fn store_unavailable(e: crate::ports::StoreError) -> Problem {
    emit("error", "outbox_store_failed", "", &[("error", &e.0)]);
    Problem::new(
        ProblemType::UpstreamUnavailable,
        "the key-value store is unavailable; nothing was accepted",
    )
    .with_retry_after(1)
}

/// Takes one request's readings: room in the backlog, one write to the store, then the queue;
/// makes sure the flusher runs. Never waits for the collector.
pub async fn accept(config: &Config, node: &str, accepted: &Accepted) -> Result<(), Problem> {
    let inst = instance(config).await?;
    let readings: Vec<Rc<str>> = accepted
        .readings
        .iter()
        .map(|r| Rc::from(r.json.as_str()))
        .collect();
    let reservation = inst
        .outbox
        .borrow_mut()
        .reserve(readings.len())
        .map_err(|full| {
            Problem::backlog_full(
                full.retry_after_s,
                format!(
                    "this instance holds {} undelivered readings (limit {}); the collector may be down",
                    full.held, full.limit
                ),
            )
        })?;
    let at = accepted.received_at_ms;
    #[cfg(feature = "spin")]
    let appended = match kv::open(kv::Path::Request).await {
        Ok(kv) => {
            let store = KvOutboxStore { kv };
            append_reserved(&inst.outbox, &store, reservation, at, node, readings).await
        }
        Err(e) => {
            inst.outbox.borrow_mut().release(reservation);
            Err(e)
        }
    };
    #[cfg(not(feature = "spin"))]
    let appended =
        append_reserved(&inst.outbox, &inst.store, reservation, at, node, readings).await;
    if appended.map_err(store_unavailable)? {
        spawn_flusher(inst);
    }
    Ok(())
}

/// Any request: in the spin flavour, starts the flusher when it is time to look for orphans
/// and none runs, so recovery goes on whenever traffic arrives (a health check included).
pub async fn nudge(config: &Config) {
    #[cfg(feature = "spin")]
    if let Ok(inst) = instance(config).await {
        let due = inst.recovery.borrow().next_look_ms <= now_ms();
        if due && inst.outbox.borrow_mut().start_driver() {
            spawn_flusher(inst);
        }
    }
    #[cfg(not(feature = "spin"))]
    let _ = config;
}

fn spawn_flusher(inst: Rc<Instance>) {
    spin_sdk::wasip3::spawn(async move { flush_loop(&inst).await });
}

async fn flush_loop(inst: &Instance) {
    let delivery = Delivery {
        store: &inst.store,
        collector: &SpinCollector,
        timer: &SpinTimer,
        clock: &WallClock,
        entropy: &SystemEntropy,
        log: &SpinLog,
        sink: &inst.sink,
    };
    loop {
        #[cfg(feature = "spin")]
        recover(inst).await;
        match deliver_round(&inst.outbox, &delivery).await {
            Next::At(at) => SpinTimer.sleep_ms(at.saturating_sub(now_ms()).max(1)).await,
            Next::Idle => return,
        }
    }
}

/// Looks for orphans when it is time to (see the module comment) and queues what it finds.
#[cfg(feature = "spin")]
async fn recover(inst: &Instance) {
    let now = now_ms();
    let (healthy, pending, held) = {
        let outbox = inst.outbox.borrow();
        (outbox.is_healthy(), outbox.pending(), outbox.keys())
    };
    {
        let mut r = inst.recovery.borrow_mut();
        if healthy && !r.was_healthy {
            r.next_look_ms = now; // the collector answers again: orphans may be waiting
        }
        r.was_healthy = healthy;
        let room = pending + RECOVER_READINGS <= inst.config.max_backlog / 2;
        if !healthy || !room || r.next_look_ms > now {
            return;
        }
        r.next_look_ms = now + RECOVERY_LOOK_EVERY_MS;
    }
    match inst.store.claim_scan(now, SCAN_EVERY_MS).await {
        Ok(true) => {}
        Ok(false) => return,
        Err(e) => {
            emit("error", "outbox_scan_failed", "", &[("error", &e.0)]);
            return;
        }
    }
    let held: std::collections::HashSet<String> = held.into_iter().collect();
    let node = inst.config.edge_node.as_deref().unwrap_or("local");
    let found = inst
        .store
        .find_orphans(
            now,
            inst.config.spill_grace_ms,
            |k| held.contains(k),
            RECOVER_READINGS,
            node,
        )
        .await;
    match found {
        Ok(found) if !found.is_empty() => {
            let segments = found.len().to_string();
            let readings: usize = found.iter().map(|s| s.readings.len()).sum();
            if readings >= RECOVER_READINGS {
                inst.recovery.borrow_mut().next_look_ms = now; // more remain: look again soon
            }
            inst.outbox.borrow_mut().restore(found);
            emit(
                "warn",
                "outbox_recovered",
                "",
                &[("segments", &segments), ("readings", &readings.to_string())],
            );
        }
        Ok(_) => {}
        Err(e) => emit("error", "outbox_scan_failed", "", &[("error", &e.0)]),
    }
}

/// This instance's view: on Spin / wasi:http every instance batches on its own.
pub fn stats() -> serde_json::Value {
    let mut v = INSTANCE.with(|c| match c.borrow().as_ref() {
        Some(i) => i.outbox.borrow().stats_json(),
        None => serde_json::json!({ "pending": 0 }),
    });
    v["scope"] = "instance".into();
    #[cfg(feature = "spin")]
    {
        let (request, background) = kv::counts();
        v["key_value"] = serde_json::json!({ "request_path": request, "background": background });
        v["sqlite"] =
            serde_json::json!({ "request_path": { "statements": super::limiter::statements() } });
    }
    v
}

/// The admin view of dead letters, as JSON text.
pub async fn dead_letters(config: &Config) -> String {
    let Ok(inst) = instance(config).await else {
        return "{\"dead_letters\":[]}".into();
    };
    #[cfg(feature = "spin")]
    {
        // Stored documents, passed through verbatim.
        let stored = inst
            .store
            .dead_letters(100, super::now_ms())
            .await
            .unwrap_or_default();
        format!("{{\"dead_letters\":[{}]}}", stored.join(","))
    }
    #[cfg(not(feature = "spin"))]
    {
        let letters: Vec<serde_json::Value> = inst
            .store
            .dead_letters()
            .into_iter()
            .map(|d| {
                serde_json::json!({
                    "batch_id": d.batch_id, "failed_at_ms": d.failed_at_ms, "status": d.status,
                    "detail": d.detail, "readings": d.readings,
                    "body": serde_json::from_str::<serde_json::Value>(&d.body).unwrap_or_default(),
                })
            })
            .collect();
        serde_json::json!({
            "dead_letters": letters,
            "note": "the portable flavour keeps the last dead letters in instance memory only (and logs them)",
        })
        .to_string()
    }
}

struct WallClock;

impl Clock for WallClock {
    fn now_ms(&self) -> u64 {
        now_ms()
    }
}

struct SpinTimer;

impl Timer for SpinTimer {
    async fn sleep_ms(&self, ms: u64) {
        spin_sdk::time::sleep(Duration::from_millis(ms)).await;
    }
}

struct SpinLog;

impl Log for SpinLog {
    fn emit(&self, level: Level, event: &str, fields: &[(&str, &str)]) {
        emit(level.as_str(), event, "", fields);
    }
}

/// Outbound HTTP through wasi:http (Spin checks it against `allowed_outbound_hosts`).
struct SpinCollector;

impl Collector for SpinCollector {
    async fn post(&self, r: CollectorRequest<'_>) -> Result<CollectorAnswer, TransportError> {
        let mut builder = http::Request::post(r.url)
            .header("content-type", r.content_type)
            .header("idempotency-key", r.idempotency_key);
        if let Some(token) = r.token {
            builder = builder.header("authorization", format!("Bearer {token}"));
        }
        let request = builder
            .body(FullBody::new(Bytes::from(r.body)))
            .map_err(|e| TransportError(e.to_string()))?;
        let answer = spin_sdk::http::send(request)
            .await
            .map_err(|code| TransportError(format!("{code:?}")))?;
        let status = answer.status().as_u16();
        if !CollectorAnswer::wants_body(status) {
            return Ok(CollectorAnswer::new(status, ""));
        }
        let body = answer.into_body().bytes().await.unwrap_or_default();
        Ok(CollectorAnswer::new(
            status,
            &String::from_utf8_lossy(&body),
        ))
    }
}

//! The `Batcher` Durable Object: the core's outbox engine (`delivery::outbox`) with this host's
//! ports, one object per colo (and shard).
//!
//! - `accept` (a Workers RPC method, see `accept_rpc`) takes one group-commit call through the
//!   core's accept use case (`application::admission`): the backlog bound, then each request's
//!   rate limit, then one row with every admitted reading (`sql_store`), then the alarm. The output gate holds the answer until that write is durable, so a 2xx to the
//!   device means the reading survives eviction and restarts.
//! - An alarm runs delivery rounds while batches are due, and waits in place when the next is
//!   due within `ALARM_LINGER_MS` (one billed alarm for many rounds, up to `ALARM_BUDGET_MS`),
//!   then sets itself for the next one.
//! - The constructor reads the table back: after an eviction the queue is rebuilt from it.
//!
//! What Cloudflare bills for it is counted here: the object's requests (accept calls, alarm
//! runs) and its storage rows read and written (from every statement's cursor), in `/stats`.

use std::cell::{Cell, RefCell};

use wasm_bindgen::prelude::wasm_bindgen;
use wasm_bindgen::JsValue;
use worker::{
    durable_object, web_sys, DurableObject, Env, Fetch, Headers, Method, Request, Response,
    ScheduledTime, State,
};

use super::sql_store::{DeadLetterView, RowCounts, SqlOutboxStore};
use super::{log, now_ms, settings, wire, WorkersTimer};
use crate::application::admission::{self, Admitted, InMemory, Refused, Section};
use crate::application::delivery::outbox::{
    deliver_round, Delivery, Next, Outbox, OutboxReport, SinkTarget, Wakeups,
};
use crate::application::delivery::slots::SlotKey;
use crate::application::rate_limit::{BucketStats, MemoryBuckets, MAX_TRACKED_DEVICES};
use crate::application::recent::Fingerprints;
use crate::domain::enrich::StoredReading;
use crate::ports::{
    Clock, Collector, CollectorAnswer, CollectorRequest, SystemEntropy, Timer, TransportError,
};

/// One alarm runs delivery rounds for at most this long, then yields to a fresh alarm.
const ALARM_BUDGET_MS: u64 = 10_000;
/// When the next round is due this soon, the alarm waits for it rather than ending and setting a
/// new alarm: each alarm run is a billed request and each setAlarm a write, and under steady
/// traffic the next batch is always less than a max age away.
const ALARM_LINGER_MS: u64 = 250;
/// How often a lingering alarm looks again, so a batch that fills meanwhile leaves soon.
const ALARM_POLL_MS: u64 = 10;

/// The object's billed requests so far.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
struct Requests {
    accept_calls: u64,
    alarm_runs: u64,
    alarms_set: u64,
}

/// What needs a valid configuration: the engine, where batches go, and the per-device rate
/// limits (token buckets in this object's memory, when the limit is on).
struct Engine {
    outbox: RefCell<Outbox<SlotKey>>,
    sink: SinkTarget,
    buckets: Option<RefCell<MemoryBuckets>>,
}

#[durable_object]
pub struct Batcher {
    state: State,
    store: Option<SqlOutboxStore>,
    /// None while the deployment's configuration is invalid: accept refuses, nothing is lost.
    engine: Option<Engine>,
    setup_error: Option<String>,
    /// `Some(t)`: an alarm is set for t; `None`: none is. Unknown until first asked.
    alarm: Cell<Option<Option<u64>>>,
    /// Whether an alarm handler is running its rounds (it schedules what comes next itself).
    alarm_running: Cell<bool>,
    requests: Cell<Requests>,
}

impl DurableObject for Batcher {
    fn new(state: State, env: Env) -> Self {
        let settings = settings(&env);
        let node = settings.edge_node().unwrap_or("local").to_owned();
        let (store, segments, mut setup_error) =
            match SqlOutboxStore::open(state.storage().sql(), &node) {
                Ok((store, segments)) => (Some(store), segments, None),
                Err(e) => (None, Vec::new(), Some(format!("storage: {e}"))),
            };
        let engine = match settings.config.as_ref() {
            Ok(config) => {
                let mut outbox = Outbox::new(config.outbox(Wakeups::OnArrival), now_ms());
                // After an eviction or a restart: the queue comes back from the table.
                let _ = outbox.restore(segments);
                Some(Engine {
                    outbox: RefCell::new(outbox),
                    sink: config.sink(),
                    buckets: config.rate_limit.map(|limit| {
                        let fingerprints = Fingerprints::new(&SystemEntropy);
                        RefCell::new(MemoryBuckets::new(limit, MAX_TRACKED_DEVICES, fingerprints))
                    }),
                })
            }
            Err(errors) => {
                setup_error.get_or_insert_with(|| {
                    errors
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("; ")
                });
                None
            }
        };
        if let Some(e) = &setup_error {
            log::error("batcher_not_ready", &[("error", e)]);
        }
        Self {
            state,
            store,
            engine,
            setup_error,
            alarm: Cell::new(None),
            alarm_running: Cell::new(false),
            requests: Cell::new(Requests::default()),
        }
    }

    async fn fetch(&self, req: Request) -> worker::Result<Response> {
        let url = req.inner().url();
        let target = super::target(&url);
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        // Who asked for it: the Worker's admin route passes the name it called this object by.
        let batcher = query.strip_prefix("batcher=");
        match (req.method(), path) {
            (Method::Get, "/stats") => self.stats(batcher).await,
            (Method::Get, "/dead-letters") => {
                let dead_letters = match &self.store {
                    Some(store) => store.dead_letters().map_err(store_error)?,
                    None => Vec::new(),
                };
                #[derive(serde::Serialize)]
                struct Listing<'a> {
                    batcher: Option<&'a str>,
                    dead_letters: Vec<DeadLetterView>,
                }
                Response::from_json(&Listing {
                    batcher,
                    dead_letters,
                })
            }
            // The alarm delivers without any traffic; this only brings it forward to now.
            (Method::Get, "/deliver") => {
                self.schedule(now_ms()).await?;
                #[derive(serde::Serialize)]
                struct Deliver<'a> {
                    batcher: Option<&'a str>,
                    alarm: &'static str,
                }
                Response::from_json(&Deliver {
                    batcher,
                    alarm: "now",
                })
            }
            _ => Response::error("not found", 404),
        }
    }

    async fn alarm(&self) -> worker::Result<Response> {
        self.alarm.set(Some(None)); // this alarm has fired; none is set until one is set
        self.count(|r| r.alarm_runs += 1);
        let (Some(engine), Some(store)) = (&self.engine, &self.store) else {
            // Keep everything; try again once the deployment is fixed.
            log::error("flush_misconfigured", &[]);
            return self
                .set_alarm_at(now_ms() + 60_000)
                .await
                .map(|()| Response::ok(""))?;
        };
        // Errors are handled in the engine, not thrown: a thrown alarm is retried by the runtime
        // on its own schedule, and the engine's backoff applies instead.
        self.alarm_running.set(true);
        let started = now_ms();
        let next = loop {
            let next = deliver_round(&engine.outbox, &self.delivery(engine, store)).await;
            let now = now_ms();
            match next {
                _ if now.saturating_sub(started) >= ALARM_BUDGET_MS => break next,
                Next::At(at) if at <= now => continue,
                Next::At(at) if at - now <= ALARM_LINGER_MS => {
                    WorkersTimer.sleep_ms((at - now).min(ALARM_POLL_MS)).await;
                }
                other => break other,
            }
        };
        self.alarm_running.set(false);
        if let Next::At(at) = next {
            self.schedule(at).await?;
        }
        Response::ok("")
    }
}

/// Workers RPC: the group-commit call. A fetch builds a Request, Headers and a Response on both
/// sides of every call, and the Durable Object hop is most of a request's cost on Workers.
/// (`src/hosts/workers/entry.mjs` makes the exported class derive from `DurableObject`, which
/// the runtime requires before it serves RPC.)
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

fn store_error(e: crate::ports::StoreError) -> worker::Error {
    worker::Error::RustError(e.0)
}

impl Batcher {
    fn count(&self, f: impl FnOnce(&mut Requests)) {
        let mut r = self.requests.get();
        f(&mut r);
        self.requests.set(r);
    }

    fn delivery<'a>(
        &self,
        engine: &'a Engine,
        store: &'a SqlOutboxStore,
    ) -> Delivery<'a, SqlOutboxStore, WorkersCollector, WorkersTimer> {
        Delivery {
            store,
            collector: &WorkersCollector,
            timer: &WorkersTimer,
            clock: &WorkersClock,
            entropy: &SystemEntropy,
            log: &log::Console,
            sink: &engine.sink,
        }
    }

    async fn accept(&self, node: &str, body: &str) -> worker::Result<wire::AcceptReply> {
        self.count(|r| r.accept_calls += 1);
        let (Some(engine), Some(store)) = (&self.engine, &self.store) else {
            let detail = self.setup_error.clone().unwrap_or_default();
            return Ok(wire::AcceptReply::Refused { detail });
        };
        let sections: Vec<Section> = wire::decode_sections(body)
            .into_iter()
            .map(|s| Section {
                costs: s.costs.iter().map(|(d, n)| ((*d).to_owned(), *n)).collect(),
                readings: s
                    .docs
                    .iter()
                    .map(|d| StoredReading::from_store(d))
                    .collect(),
            })
            .collect();
        let now = now_ms();
        let buckets = engine.buckets.as_ref();
        let ports = InMemory::new(&engine.outbox, buckets, store, node);
        // One row for the whole call, made durable before the answer: the runtime's output
        // gate holds the answer until the write is done.
        let verdicts = admission::accept(&ports, &sections, now).await;
        let accepted = matches!(&verdicts, Ok(v) if v.contains(&Admitted::Accepted));
        // Accepted readings need an alarm; so does a full backlog, which must still drain
        // even if the runtime lost the alarm (e.g. a restart), since it writes nothing new.
        let full = matches!(&verdicts, Err(Refused::BacklogFull(_)));
        if (accepted && !self.alarm_running.get()) || full {
            let next = engine.outbox.borrow().next_wake(now);
            if let Some(at) = next {
                self.schedule(at).await?;
            }
        }
        let readings: Vec<usize> = sections.iter().map(|s| s.readings.len()).collect();
        let backlog = engine.outbox.borrow().pending();
        Ok(wire::AcceptReply::of(verdicts, &readings, backlog))
    }

    /// Makes sure an alarm fires by `at`: sets one when none is set, or one set later.
    async fn schedule(&self, at: u64) -> worker::Result<()> {
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
        match existing {
            Some(e) if e <= at => Ok(()),
            _ => self.set_alarm_at(at).await,
        }
    }

    async fn set_alarm_at(&self, unix_ms: u64) -> worker::Result<()> {
        // Recorded before the await: a call that starts meanwhile sees it (and only ever moves
        // it earlier), and the runtime applies the calls in order.
        self.alarm.set(Some(Some(unix_ms)));
        self.count(|r| r.alarms_set += 1);
        let when = ScheduledTime::new(js_sys::Date::new(&JsValue::from_f64(unix_ms as f64)));
        self.state.storage().set_alarm(when).await
    }

    async fn stats(&self, batcher: Option<&str>) -> worker::Result<Response> {
        // Typed rather than a `serde_json::Value`, whose maps and visitors cost the upload
        // some 2 KB gzip for this and the dead letters.
        #[derive(serde::Serialize)]
        struct Billed {
            requests: Requests,
            storage: RowCounts,
        }
        #[derive(serde::Serialize)]
        struct Stats<'a> {
            batcher: Option<&'a str>,
            #[serde(flatten)]
            outbox: Option<OutboxReport<'a>>,
            /// Present when there is no engine: why (or null).
            #[serde(skip_serializing_if = "Option::is_none")]
            error: Option<Option<&'a str>>,
            billed: Billed,
            next_alarm_ms: Option<i64>,
            /// The token buckets this object keeps (`null` with the rate limit off).
            rate_limit: Option<BucketStats>,
        }
        let next_alarm_ms = self.state.storage().get_alarm().await?;
        let outbox = self.engine.as_ref().map(|e| e.outbox.borrow());
        Response::from_json(&Stats {
            batcher,
            outbox: outbox.as_ref().map(|o| o.report()),
            error: self.engine.is_none().then_some(self.setup_error.as_deref()),
            billed: Billed {
                requests: self.requests.get(),
                storage: self.store.as_ref().map(|s| s.counts()).unwrap_or_default(),
            },
            next_alarm_ms,
            rate_limit: self
                .engine
                .as_ref()
                .and_then(|e| e.buckets.as_ref())
                .map(|b| b.borrow().stats()),
        })
    }
}

struct WorkersClock;

impl Clock for WorkersClock {
    fn now_ms(&self) -> u64 {
        now_ms()
    }
}

/// Outbound `fetch` from the object.
struct WorkersCollector;

impl WorkersCollector {
    async fn try_post(&self, r: CollectorRequest<'_>) -> worker::Result<CollectorAnswer> {
        let headers = Headers::new();
        headers.set("content-type", r.content_type)?;
        headers.set("idempotency-key", r.idempotency_key)?;
        if let Some(token) = r.token {
            headers.set("authorization", &format!("Bearer {token}"))?;
        }
        // web_sys's RequestInit, not worker's: the latter's conversion carries the whole `cf`
        // options object (image resizing and more) through serde, some 5 KB of the gzip upload.
        let init = web_sys::RequestInit::new();
        init.set_method("POST");
        init.set_headers(headers.as_ref());
        init.set_body(&JsValue::from_str(&r.body));
        let request = web_sys::Request::new_with_str_and_init(r.url, &init)?;
        let mut answer = Fetch::Request(request.into()).send().await?;
        let status = answer.status_code();
        if !CollectorAnswer::wants_body(status) {
            return Ok(CollectorAnswer::new(status, ""));
        }
        Ok(CollectorAnswer::new(
            status,
            &answer.text().await.unwrap_or_default(),
        ))
    }
}

impl Collector for WorkersCollector {
    async fn post(&self, r: CollectorRequest<'_>) -> Result<CollectorAnswer, TransportError> {
        self.try_post(r)
            .await
            .map_err(|e| TransportError(e.to_string()))
    }
}

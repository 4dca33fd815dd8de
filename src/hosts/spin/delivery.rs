//! The outbox on Spin / wasi:http: the core's delivery engine with this host's ports.
//!
//! - **spin flavour**: the outbox every instance of the app shares, in Spin's SQLite database
//!   (`delivery::shared_outbox`). A request's readings are one statement before its answer;
//!   the instance whose request fills a batch, or whose reading comes due, claims and delivers
//!   it after answering, in a task spawned for that (it ends when nothing is due or held).
//! - **portable flavour**: no store; each instance's outbox is its memory (`Outbox` with the
//!   `MemoryStore`), delivered by its own task. Readings an instance holds when it ends are lost.
//!
//! Spin keeps an instance, and its tasks, alive while a task runs, but may retire it at any
//! time after; nothing of an instance survives `spin up` going down. In the spin flavour that
//! costs nothing accepted: the rows stay in the database.

use bytes::Bytes;
use spin_sdk::http::body::IncomingBodyExt;
use spin_sdk::http::FullBody;

use super::{now_ms, SpinTimer};
use crate::application::delivery::outbox::{Delivery, SinkTarget};
use crate::ports::{
    Clock, Collector, CollectorAnswer, CollectorRequest, SystemEntropy, TransportError,
};

pub use flavour::{accept, dead_letters, deliver_now, nudge, stats};

fn delivery<'a, S>(
    store: &'a S,
    sink: &'a SinkTarget,
) -> Delivery<'a, S, SpinCollector, SpinTimer> {
    Delivery {
        store,
        collector: &SpinCollector,
        timer: &SpinTimer,
        clock: &WallClock,
        entropy: &SystemEntropy,
        log: &super::StdoutLog,
        sink,
    }
}

#[cfg(feature = "spin")]
mod flavour {
    use std::cell::RefCell;
    use std::rc::Rc;

    use std::cell::Cell;

    use super::{delivery, SpinTimer};
    use crate::application::admission::{self, Admitted, AtomicAppend, Refused, Section, Verdict};
    use crate::application::delivery::outbox::{BacklogFull, SinkTarget, Wakeups};
    use crate::application::delivery::shared_outbox::{
        AppendGroup, Appended, NotAppended, Request, SharedDriver, SharedOutbox,
    };
    use crate::application::rate_limit;
    use crate::config::Config;
    use crate::hosts::spin::database::{self, Path, SpinSql};
    use crate::hosts::spin::now_ms;
    use crate::ports::StoreError;

    /// What an instance keeps: its handle on the shared outbox (the claims it holds) and its
    /// driver.
    struct Instance {
        store: SharedOutbox<SpinSql>,
        driver: SharedDriver,
        appends: AppendGroup,
        sink: SinkTarget,
    }

    thread_local! {
        static INSTANCE: RefCell<Option<Rc<Instance>>> = const { RefCell::new(None) };
    }

    async fn instance(config: &Config) -> Result<Rc<Instance>, StoreError> {
        if let Some(i) = INSTANCE.with(|c| c.borrow().clone()) {
            return Ok(i);
        }
        let db = database::open(Path::Background);
        let made = Rc::new(Instance {
            store: SharedOutbox::new(db),
            driver: SharedDriver::new(
                &config.outbox(Wakeups::Polled),
                now_ms(),
                config
                    .rate_limit
                    .map(|l| rate_limit::sql::full_after_ms(&l)),
            ),
            appends: AppendGroup::default(),
            sink: config.sink(),
        });
        Ok(INSTANCE.with(|c| c.borrow_mut().get_or_insert(made).clone()))
    }

    /// One request's readings through the accept use case's atomic append: one statement
    /// checks the app's backlog, takes the tokens and inserts the rows, shared with the
    /// instance's concurrent requests (`AppendGroup`). Delivery starts when the driver wants it.
    pub async fn accept(
        config: &Config,
        node: &str,
        section: &Section,
        received_at_ms: u64,
    ) -> Verdict {
        let inst = instance(config).await?;
        let ports = Atomic {
            inst: &inst,
            config,
            node: node.into(),
            appended: Cell::new(None),
        };
        let verdict = admission::accept_atomic(&ports, section, received_at_ms).await;
        if let Some(appended) = ports.appended.take() {
            if inst.driver.appended(appended, received_at_ms) {
                spawn_driver(inst.clone());
            }
        }
        verdict
    }

    struct Atomic<'a> {
        inst: &'a Instance,
        config: &'a Config,
        node: Rc<str>,
        appended: Cell<Option<Appended>>,
    }

    impl AtomicAppend for Atomic<'_> {
        async fn append(&self, received_at_ms: u64, section: &Section) -> Verdict {
            let db = database::open(Path::Request);
            let limit = self.config.rate_limit;
            let request = Request {
                received_at_ms,
                node: self.node.clone(),
                readings: section.readings.clone(),
                charge: limit.map(|l| rate_limit::sql::charge(&l, &section.costs)),
            };
            let appended = self
                .inst
                .appends
                .append(
                    &SharedOutbox::new(db.clone()),
                    &SpinTimer,
                    &super::WallClock,
                    request,
                    self.config.max_backlog,
                )
                .await?;
            match appended {
                Ok(appended) => {
                    self.appended.set(Some(appended));
                    Ok(Admitted::Accepted)
                }
                Err(NotAppended::RateLimited) => {
                    let retry_after_s = match limit {
                        Some(limit) => {
                            let costs = &section.costs;
                            rate_limit::sql::retry_after(&db, &limit, costs, received_at_ms).await?
                        }
                        None => 1,
                    };
                    Ok(Admitted::RateLimited { retry_after_s })
                }
                Err(NotAppended::BacklogFull) => Err(Refused::BacklogFull(BacklogFull {
                    limit: self.config.max_backlog,
                    retry_after_s: self.config.backlog_retry_after_s(),
                })),
            }
        }
    }

    /// Any request: an instance looks for rows nobody delivers on its first request and then
    /// every `LOOK_EVERY_MS` (after a restart, those of instances that are gone).
    pub async fn nudge(config: &Config) {
        if let Ok(inst) = instance(config).await {
            if inst.driver.nudge(now_ms()) {
                spawn_driver(inst);
            }
        }
    }

    /// `POST /admin/deliver`: this instance looks for rows no one is delivering (any
    /// instance's, after a restart, or set aside by one that ended) and delivers them after
    /// answering; its driver then runs until nothing is due or held.
    pub async fn deliver_now(config: &Config) -> String {
        let Ok(inst) = instance(config).await else {
            return serde_json::json!({ "scope": "app", "started": false }).to_string();
        };
        let now = now_ms();
        let started = inst.driver.look_now(now);
        let outbox = inst
            .store
            .summary(now)
            .await
            .unwrap_or_else(|e| serde_json::json!({ "error": e.0 }));
        if started {
            spawn_driver(inst);
        }
        serde_json::json!({ "scope": "app", "started": started, "shared_outbox": outbox })
            .to_string()
    }

    fn spawn_driver(inst: Rc<Instance>) {
        spin_sdk::wasip3::spawn(async move {
            inst.driver.run(&delivery(&inst.store, &inst.sink)).await;
        });
    }

    /// This instance's deliveries, the shared table as every instance sees it, and the
    /// statements this instance ran.
    pub async fn stats(config: &Config) -> serde_json::Value {
        let Ok(inst) = instance(config).await else {
            return serde_json::json!({ "scope": "instance" });
        };
        let mut v = inst.driver.stats_json();
        v["scope"] = "instance".into();
        v["shared_outbox"] = inst
            .store
            .summary(now_ms())
            .await
            .unwrap_or_else(|e| serde_json::json!({ "error": e.0 }));
        v["append_groups"] = inst.appends.stats_json();
        let (request, background) = database::statements();
        v["sqlite"] = serde_json::json!({
            "request_path": { "statements": request },
            "background": { "statements": background },
            "locked_tries": database::locked_tries(),
        });
        let (request, background) = crate::hosts::spin::kv::counts();
        v["key_value"] = serde_json::json!({ "request_path": request, "background": background });
        v
    }

    /// The admin view of dead letters, as JSON text.
    pub async fn dead_letters(config: &Config) -> String {
        let Ok(inst) = instance(config).await else {
            return "{\"dead_letters\":[]}".into();
        };
        let letters = inst
            .store
            .dead_letters(100, now_ms())
            .await
            .unwrap_or_default();
        serde_json::json!({ "dead_letters": letters }).to_string()
    }
}

#[cfg(not(feature = "spin"))]
mod flavour {
    use std::cell::RefCell;
    use std::rc::Rc;

    use super::{delivery, SpinTimer};
    use crate::application::admission::{self, InMemory, Section, Verdict};
    use crate::application::delivery::outbox::{
        deliver_round, MemoryStore, Next, Outbox, SinkTarget, Wakeups,
    };
    use crate::application::rate_limit::{MemoryBuckets, MAX_TRACKED_DEVICES};
    use crate::application::recent::Fingerprints;
    use crate::config::Config;
    use crate::hosts::spin::now_ms;
    use crate::ports::{SystemEntropy, Timer};

    /// What an instance keeps: its outbox, and its devices' token buckets. There is no store,
    /// so the limit is exact while one instance serves a device, and none at all when every
    /// request gets a fresh instance. (The spin flavour's append takes the tokens in Spin's
    /// SQLite database, in its own statement.)
    struct Instance {
        outbox: RefCell<Outbox<u64>>,
        store: MemoryStore,
        sink: SinkTarget,
        buckets: Option<RefCell<MemoryBuckets>>,
    }

    thread_local! {
        static INSTANCE: RefCell<Option<Rc<Instance>>> = const { RefCell::new(None) };
    }

    fn instance(config: &Config) -> Rc<Instance> {
        INSTANCE.with(|c| {
            c.borrow_mut()
                .get_or_insert_with(|| {
                    Rc::new(Instance {
                        outbox: RefCell::new(Outbox::new(config.outbox(Wakeups::Polled), now_ms())),
                        store: MemoryStore::default(),
                        sink: config.sink(),
                        buckets: config.rate_limit.map(|limit| {
                            let fingerprints = Fingerprints::new(&SystemEntropy);
                            RefCell::new(MemoryBuckets::new(
                                limit,
                                MAX_TRACKED_DEVICES,
                                fingerprints,
                            ))
                        }),
                    })
                })
                .clone()
        })
    }

    /// One request's readings through the accept use case's reserve-and-charge protocol:
    /// room in this instance's backlog, buckets and outbox in its memory, and its own delivery
    /// task started when the outbox wants one.
    pub async fn accept(
        config: &Config,
        node: &str,
        section: &Section,
        received_at_ms: u64,
    ) -> Verdict {
        let inst = instance(config);
        let ports = InMemory::new(&inst.outbox, inst.buckets.as_ref(), &inst.store, node);
        let verdict = admission::accept_one(&ports, section, received_at_ms).await;
        if ports.start_delivery.get() {
            let inst = inst.clone();
            spin_sdk::wasip3::spawn(async move {
                let d = delivery(&inst.store, &inst.sink);
                loop {
                    match deliver_round(&inst.outbox, &d).await {
                        Next::At(at) => {
                            SpinTimer.sleep_ms(at.saturating_sub(now_ms()).max(1)).await
                        }
                        Next::Idle => return,
                    }
                }
            });
        }
        verdict
    }

    pub async fn nudge(_config: &Config) {}

    /// Nothing to look for: an instance's own task delivers what its memory holds.
    pub async fn deliver_now(config: &Config) -> String {
        let pending = instance(config).outbox.borrow().pending();
        serde_json::json!({ "scope": "instance", "started": false, "pending": pending }).to_string()
    }

    pub async fn stats(config: &Config) -> serde_json::Value {
        let inst = instance(config);
        let mut v = inst.outbox.borrow().stats_json();
        v["scope"] = "instance".into();
        v["rate_limit"] = match &inst.buckets {
            Some(b) => serde_json::to_value(b.borrow().stats()).unwrap_or_default(),
            None => serde_json::Value::Null,
        };
        v
    }

    pub async fn dead_letters(config: &Config) -> String {
        let letters: Vec<serde_json::Value> = instance(config)
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

/// Outbound HTTP through wasi:http (Spin checks it against `allowed_outbound_hosts`).
struct SpinCollector;

impl Collector for SpinCollector {
    async fn post(&self, r: CollectorRequest<'_>) -> Result<CollectorAnswer, TransportError> {
        // Spin's outbound sockets have no `TCP_NODELAY`, and its HTTP client writes the head,
        // then the body: on a kept-alive connection Nagle held the body until the collector's
        // delayed ACK of the head, ~40 ms on every batch (strace: two sendto calls; the
        // collector saw each batch 44 ms after it was sent, p50). `Expect: 100-continue` makes
        // the collector answer the head at once (its `100 Continue` carries the ACK), so the
        // body leaves: 1 ms. A length frames the body, so no last chunk waits the same way. A
        // server that ignores the expectation still reads the body, which is sent regardless.
        let mut builder = http::Request::post(r.url)
            .header("content-type", r.content_type)
            .header("content-length", r.body.len())
            .header("expect", "100-continue")
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

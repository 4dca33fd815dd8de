//! The shared outbox on a real SQLite file, with several instances (each its own connection and
//! driver) and the engine's fake collector, clock and entropy. A crash is an instance dropped
//! at a chosen point; its claims stay in the table until their lease expires.

use std::cell::{Cell, RefCell};
use std::collections::BTreeSet;

use super::*;
use crate::application::delivery::outbox::tests::{
    id_of, Events, FakeClock, FakeCollector, FakeEntropy, NoTimeout,
};
use crate::application::delivery::outbox::{SinkTarget, Wakeups};
use crate::application::delivery::policy::RetryPolicy;
use crate::application::delivery::sink::SinkFormat;
use crate::domain::enrich::StoredReading;
use crate::ports::testing::{run, MemoryKv};
use crate::ports::Clock;

/// `spin:sqlite` as the tests see it: a rusqlite connection to a file.
pub(crate) struct Db {
    conn: rusqlite::Connection,
    /// Makes every statement fail, as a store that is down.
    pub(crate) fail: Cell<bool>,
    pub(crate) statements: Cell<u64>,
}

impl Db {
    pub(crate) fn open(path: &std::path::Path) -> Self {
        Self {
            conn: rusqlite::Connection::open(path).unwrap(),
            fail: Cell::new(false),
            statements: Cell::new(0),
        }
    }
}

impl Sql for Db {
    async fn execute(
        &self,
        statement: &str,
        params: Vec<SqlValue>,
    ) -> Result<Vec<Vec<SqlValue>>, StoreError> {
        use rusqlite::types::{Value, ValueRef};
        if self.fail.get() {
            return Err(StoreError("database is locked".into()));
        }
        self.statements.set(self.statements.get() + 1);
        let err = |e: rusqlite::Error| StoreError(e.to_string());
        let mut stmt = self.conn.prepare_cached(statement).map_err(err)?;
        let columns = stmt.column_count();
        let params = params.into_iter().map(|v| match v {
            SqlValue::Null => Value::Null,
            SqlValue::Integer(n) => Value::Integer(n),
            SqlValue::Real(x) => Value::Real(x),
            SqlValue::Text(t) => Value::Text(t),
        });
        let mut rows = stmt
            .query(rusqlite::params_from_iter(params))
            .map_err(err)?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().map_err(err)? {
            let mut values = Vec::with_capacity(columns);
            for i in 0..columns {
                values.push(match row.get_ref(i).map_err(err)? {
                    ValueRef::Integer(n) => SqlValue::Integer(n),
                    ValueRef::Real(x) => SqlValue::Real(x),
                    ValueRef::Text(t) => SqlValue::Text(String::from_utf8_lossy(t).into()),
                    ValueRef::Null | ValueRef::Blob(_) => SqlValue::Null,
                });
            }
            out.push(values);
        }
        Ok(out)
    }
}

const T0: u64 = 1_800_000_000_000;
const MAX_ITEMS: usize = 5;
const MAX_AGE: u64 = 200;

fn outbox_config() -> OutboxConfig {
    OutboxConfig {
        flush: FlushPolicy {
            max_items: MAX_ITEMS,
            max_age_ms: MAX_AGE,
        },
        retry: RetryPolicy {
            base_ms: 200,
            max_ms: 5_000,
        },
        max_backlog: 100,
        backlog_retry_after_s: 5,
        wakeups: Wakeups::Polled,
        give_up_ms: 300_000,
        node: "node-1".into(),
    }
}

struct Instance {
    store: SharedOutbox<Db>,
    driver: SharedDriver,
}

/// An app: one database file, one collector, one clock, and the instances that come and go.
struct App {
    path: std::path::PathBuf,
    clock: FakeClock,
    entropy: FakeEntropy,
    collector: FakeCollector,
    events: Events,
    sink: SinkTarget,
    acknowledged: RefCell<BTreeSet<String>>,
    next_reading: Cell<u64>,
}

impl App {
    fn new(name: &str) -> Self {
        let path =
            std::env::temp_dir().join(format!("shared-outbox-{name}-{}.db", std::process::id()));
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
        Self {
            path,
            clock: FakeClock(Cell::new(T0)),
            entropy: FakeEntropy(Cell::new(1)),
            collector: FakeCollector::default(),
            events: Events::default(),
            sink: SinkTarget {
                format: SinkFormat::Json,
                url: "http://collector/ingest".into(),
                token: None,
                tag_keys: Vec::new(),
            },
            acknowledged: RefCell::new(BTreeSet::new()),
            next_reading: Cell::new(0),
        }
    }

    fn instance(&self) -> Instance {
        let store = SharedOutbox::new(Db::open(&self.path));
        run(store.prepare()).unwrap();
        Instance {
            store,
            driver: SharedDriver::new(&outbox_config(), self.clock.now_ms(), None),
        }
    }

    fn readings(&self, n: usize) -> Vec<StoredReading> {
        (0..n)
            .map(|_| {
                self.next_reading.set(self.next_reading.get() + 1);
                StoredReading::from_store(&format!(
                    r#"{{"id":"r{}","temp_c":1.5}}"#,
                    self.next_reading.get()
                ))
            })
            .collect()
    }

    /// A request of `n` new readings, received at `T0`, for an `AppendGroup`.
    fn request(&self, n: usize) -> Request {
        Request {
            received_at_ms: T0,
            node: "node-1".into(),
            readings: self.readings(n),
            charge: None,
        }
    }

    /// A request of `n` readings on `instance`, as the host's accept path runs it. Returns
    /// whether it was acknowledged.
    fn accept(&self, instance: &Instance, n: usize) -> bool {
        let readings = self.readings(n);
        let now = self.clock.now_ms();
        let request = Request {
            received_at_ms: now,
            node: "node-1".into(),
            readings: readings.clone(),
            charge: None,
        };
        let appended = run(instance.store.append(request, 100));
        let Ok(Ok(appended)) = appended else {
            return false;
        };
        instance.driver.appended(appended, now);
        self.acknowledged
            .borrow_mut()
            .extend(readings.iter().map(|r| id_of(r.as_str())));
        true
    }

    fn step(&self, instance: &Instance) -> Option<u64> {
        let d = Delivery {
            store: &instance.store,
            collector: &self.collector,
            timer: &NoTimeout,
            clock: &self.clock,
            entropy: &self.entropy,
            log: &self.events,
            sink: &self.sink,
        };
        run(instance.driver.step(&d))
    }

    /// Steps every instance, moving the clock to the earliest wake-up, until all are idle.
    fn drain(&self, instances: &[&Instance]) {
        for _ in 0..10_000 {
            let next = instances.iter().filter_map(|i| self.step(i)).min();
            match next {
                None => return,
                Some(at) => self.clock.0.set(self.clock.now_ms().max(at)),
            }
        }
        panic!("the instances never went idle");
    }

    fn tick(&self, ms: u64) {
        self.clock.0.set(self.clock.now_ms() + ms);
    }

    /// Sizes of the batches the collector stored, in order.
    fn batch_sizes(&self) -> Vec<usize> {
        self.collector.sizes.borrow().clone()
    }

    fn pending(&self) -> i64 {
        let db = Db::open(&self.path);
        let summary = run(SharedOutbox::new(db).summary(self.clock.now_ms())).unwrap();
        summary["pending"].as_i64().unwrap()
    }

    /// The promise: every acknowledged reading arrived, and nothing else did.
    fn assert_all_delivered(&self) {
        let stored = self.collector.stored_set();
        let acknowledged = self.acknowledged.borrow();
        let missing: Vec<_> = acknowledged.difference(&stored).collect();
        assert!(missing.is_empty(), "lost: {missing:?}");
        assert!(
            stored.is_subset(&acknowledged),
            "sent what was never accepted"
        );
        assert_eq!(self.pending(), 0, "rows left in the table");
    }
}

#[test]
fn a_batch_boundary_is_found_from_the_sequence_numbers() {
    let at = |first, last| Appended {
        first_seq: first,
        last_seq: last,
    };
    assert!(at(5, 5).fills_a_batch(5));
    assert!(!at(6, 9).fills_a_batch(5));
    assert!(at(6, 10).fills_a_batch(5));
    assert!(at(1, 12).fills_a_batch(5));
    assert!(!at(1, 4).fills_a_batch(5));
}

#[test]
fn batches_are_cut_across_instances_and_full() {
    let app = App::new("across");
    let (a, b, c) = (app.instance(), app.instance(), app.instance());
    // Three instances take one reading per request in turn, as Spin spreads requests.
    for i in 0..20 {
        let instance = [&a, &b, &c][i % 3];
        assert!(app.accept(instance, 1));
        // Each steps after its answer: only the one whose row completes a batch claims.
        app.step(instance);
        app.tick(1);
    }
    assert_eq!(app.batch_sizes(), vec![5, 5, 5, 5]);
    app.assert_all_delivered();
    assert_eq!(app.collector.duplicates(), 0);
}

#[test]
fn a_lone_reading_is_delivered_by_its_instance_once_it_is_due() {
    let app = App::new("lone");
    let a = app.instance();
    assert!(app.accept(&a, 1));
    let due = app
        .step(&a)
        .expect("the driver waits for the reading's age");
    assert_eq!(due, T0 + MAX_AGE);
    assert!(app.batch_sizes().is_empty(), "sent before it was due");
    app.clock.0.set(due);
    app.step(&a);
    assert_eq!(app.batch_sizes(), vec![1]);
    assert_eq!(app.step(&a), None, "the driver stops when nothing is held");
    app.assert_all_delivered();
}

#[test]
fn a_claim_is_exclusive_until_its_lease_expires_then_another_delivers_it() {
    let app = App::new("lease");
    let (a, b) = (app.instance(), app.instance());
    assert!(app.accept(&a, 5));
    // `a` claims the full batch and crashes before the answer (its send never returns).
    let claimed = run(a
        .store
        .claim("claim-a", app.clock.now_ms(), a_flush(), 4, 0))
    .unwrap();
    assert_eq!(claimed.readings, 5);
    drop(a);
    app.tick(MAX_AGE + 1);
    assert!(b.driver.nudge(app.clock.now_ms()));
    app.step(&b);
    assert!(app.batch_sizes().is_empty(), "claimed while the lease ran");
    app.tick(LEASE_MS.max(LOOK_EVERY_MS));
    assert!(b.driver.nudge(app.clock.now_ms()));
    app.drain(&[&b]);
    assert_eq!(app.batch_sizes(), vec![5]);
    app.assert_all_delivered();
}

fn a_flush() -> FlushPolicy {
    outbox_config().flush
}

#[test]
fn a_failed_batch_is_released_with_backoff_and_nothing_new_goes_out_meanwhile() {
    let app = App::new("retry");
    let (a, b) = (app.instance(), app.instance());
    app.collector.answer(&[Err(()), Err(()), Ok(503)]);
    assert!(app.accept(&a, 5));
    app.step(&a); // claims, fails, releases
    assert_eq!(app.collector.attempts.borrow().len(), 1);
    assert_eq!(app.pending(), 5, "released, not lost");
    // Another instance fills a batch meanwhile: it must not send while the first waits.
    assert!(app.accept(&b, 5));
    app.step(&b);
    assert_eq!(
        app.collector.attempts.borrow().len(),
        1,
        "a new batch went out while a released one waited for its retry"
    );
    app.drain(&[&a, &b]);
    // After a second backoff in a row the probe is half a batch (see `Outbox::probe_size`).
    assert_eq!(app.batch_sizes(), vec![2, 3, 5]);
    let attempts = app.collector.attempts.borrow().len();
    assert_eq!(attempts, 6, "three failures, then three deliveries");
    app.assert_all_delivered();
    assert_eq!(app.collector.duplicates(), 0);
    // The backoff grew with the attempts: at least 100, then 200 ms (equal jitter).
    assert!(app.clock.now_ms() - T0 >= 100 + 200);
}

#[test]
fn a_refused_reading_is_dead_lettered_alone_and_kept_in_the_table() {
    let app = App::new("refused");
    let a = app.instance();
    app.collector.poisoned.borrow_mut().insert("r3".into());
    assert!(app.accept(&a, 5));
    app.drain(&[&a]);
    let letters = run(a.store.dead_letters(10, app.clock.now_ms())).unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0]["readings"], 1);
    assert_eq!(letters[0]["body"]["readings"][0]["id"], "r3");
    let stored = app.collector.stored_set();
    assert_eq!(stored.len(), 4);
    assert!(!stored.contains("r3"));
    assert_eq!(app.pending(), 0);
}

#[test]
fn the_backlog_bound_refuses_whole_requests() {
    let app = App::new("backlog");
    let a = app.instance();
    app.collector.answer(&[Err(()); 50]);
    assert!(app.accept(&a, 60));
    assert!(app.accept(&a, 40));
    assert!(!app.accept(&a, 1), "over the bound of 100");
    assert_eq!(app.pending(), 100);
}

#[test]
fn a_store_that_fails_refuses_the_request_and_the_driver_retries_its_claim() {
    let app = App::new("failing");
    let a = app.instance();
    a.store.db.fail.set(true);
    assert!(!app.accept(&a, 1));
    a.store.db.fail.set(false);
    assert!(app.accept(&a, 1));
    a.store.db.fail.set(true);
    app.tick(MAX_AGE);
    let next = app.step(&a).expect("tries again");
    assert!(app
        .events
        .0
        .borrow()
        .iter()
        .any(|e| e == "outbox_claim_failed"));
    a.store.db.fail.set(false);
    app.clock.0.set(next);
    app.drain(&[&a]);
    app.assert_all_delivered();
}

/// The append and the read of a claim return one row each however many readings they carry:
/// Spin hands a statement's rows to the guest four at a time, and keeps the statement open (a
/// write's lock held) until the last is taken (see `sql::APPEND_VIEW`).
#[test]
fn the_append_and_the_claim_read_return_one_row_however_many_readings() {
    let app = App::new("one-row");
    let a = app.instance();
    let rows: Vec<(u64, &str, String, Option<()>)> = (0..12)
        .map(|i| (T0, "node-1", format!(r#"{{"id":"r{i}"}}"#), None))
        .collect();
    let params = vec![
        SqlValue::Text(serde_json::to_string(&rows).unwrap()),
        count(100),
    ];
    let returned = run(a.store.db.execute(sql::APPEND, params)).unwrap();
    assert_eq!(
        returned,
        vec![vec![SqlValue::Integer(12)]],
        "the last row's seq"
    );
    let flush = FlushPolicy {
        max_items: 12,
        max_age_ms: MAX_AGE,
    };
    let claimed = run(a.store.claim("t", T0, flush, 1, 0)).unwrap();
    assert_eq!(claimed.readings, 12);
    let read = run(a
        .store
        .db
        .execute(sql::CLAIMED, vec![SqlValue::Text("t".into())]))
    .unwrap();
    assert_eq!(read.len(), 1, "one row: {read:?}");
    let docs: Vec<&str> = claimed.segments[0]
        .readings
        .iter()
        .map(StoredReading::as_str)
        .collect();
    assert_eq!(docs[0], r#"{"id":"r0"}"#, "as stored, in order");
    assert_eq!(docs[11], r#"{"id":"r11"}"#);
}

#[test]
fn the_request_path_costs_one_statement_and_a_batch_three() {
    let app = App::new("costs");
    let a = app.instance();
    let before = a.store.db.statements.get();
    for _ in 0..4 {
        assert!(app.accept(&a, 1));
    }
    assert_eq!(a.store.db.statements.get() - before, 4);
    assert!(app.accept(&a, 1));
    app.step(&a);
    // The fifth request's append, then the claim, its rows read back, and one delete.
    assert_eq!(a.store.db.statements.get() - before, 8);
    app.assert_all_delivered();
}

#[test]
fn segments_of_the_previous_release_in_key_value_are_imported_once() {
    use crate::application::delivery::{legacy_kv, segment};
    use crate::ports::KeyValue;

    let app = App::new("import");
    let kv = MemoryKv::default();
    let old = app.readings(7);
    let (first, rest) = old.split_at(6);
    let key = legacy_kv::segment_key(T0 - 5_000, "seg-1");
    run(kv.set(&key, segment::encode("old-node", first).as_bytes())).unwrap();
    // A reading of an even older release, one key each.
    run(kv.set("pending/1799999990000/x", rest[0].as_str().as_bytes())).unwrap();
    run(kv.set("calibration", b"{}")).unwrap();
    app.acknowledged
        .borrow_mut()
        .extend(old.iter().map(|r| id_of(r.as_str())));
    let a = app.instance();
    let imported = run(a.store.import_key_value(&kv, T0, "local")).unwrap();
    assert_eq!(imported, 7);
    let left: Vec<String> = kv.map.borrow().keys().cloned().collect();
    assert_eq!(
        left,
        vec!["calibration".to_owned()],
        "segment keys left behind"
    );
    let prepared = run(a.store.prepare()).unwrap();
    assert_eq!(prepared.found, sql::VERSION_CURRENT);
    assert!(!prepared.import, "imported once: not again");
    assert!(a.driver.nudge(T0));
    app.drain(&[&a]);
    // At 557087d an envelope named its first row's node. Rows of several nodes (the even
    // older reading is `local`'s) now share full batches, each naming the node that sent it;
    // every reading names its own.
    assert_eq!(app.batch_sizes(), vec![5, 2]);
    assert_eq!(*app.collector.nodes.borrow(), vec!["node-1", "node-1"]);
    app.assert_all_delivered();
}

/// Random traffic over several instances that come and go, crash while holding claims, and a
/// collector that fails at random: every acknowledged reading arrives; duplicates come only
/// from claims a crash cut off.
#[test]
fn random_instances_crashes_and_failures_lose_nothing() {
    for seed in 0..60u64 {
        let app = App::new(&format!("random-{seed}"));
        let mut rng = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        let mut next = move |n: u64| {
            rng = rng
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (rng >> 33) % n
        };
        let mut instances: Vec<Instance> = (0..3).map(|_| app.instance()).collect();
        let (mut crashes, mut cut_off) = (0, 0);
        let mut stepped = vec![T0; instances.len()];
        for _ in 0..120 {
            // A live driver that holds readings runs at least every POLL_MS (its claims' leases
            // renewed as it goes): here, at least every 5 s. One that stops is a crash, below.
            for (i, instance) in instances.iter().enumerate() {
                let holds = instance.driver.outbox.borrow().pending() > 0;
                if holds && app.clock.now_ms() - stepped[i] > 5_000 {
                    app.step(instance);
                    stepped[i] = app.clock.now_ms();
                }
            }
            match next(10) {
                0..=4 => {
                    let i = next(instances.len() as u64) as usize;
                    app.accept(&instances[i], 1 + next(7) as usize);
                }
                5 | 6 => {
                    let i = next(instances.len() as u64) as usize;
                    app.step(&instances[i]);
                    stepped[i] = app.clock.now_ms();
                }
                7 => app.tick(next(300)),
                8 => {
                    let answers: Vec<Result<u16, ()>> = (0..next(3))
                        .map(|_| if next(2) == 0 { Err(()) } else { Ok(503) })
                        .collect();
                    app.collector.answer(&answers);
                }
                _ => {
                    // An instance crashes and a new one starts. It may hold a claim (which
                    // stays leased), and may have sent it before the crash cut the answer off.
                    let i = next(instances.len() as u64) as usize;
                    if next(2) == 0 {
                        let token = format!("crashed-{crashes}");
                        let now = app.clock.now_ms();
                        let claim = run(instances[i].store.claim(&token, now, a_flush(), 1, 0));
                        let claimed = claim.unwrap().segments;
                        if next(2) == 0 {
                            for segment in &claimed {
                                cut_off += segment.readings.len();
                                let docs = segment.readings.iter().map(StoredReading::as_str);
                                let body = crate::application::delivery::sink::encode_json_batch(
                                    &token, "node-1", now, docs,
                                );
                                let request = crate::ports::CollectorRequest {
                                    url: "http://collector/ingest",
                                    content_type: "application/json",
                                    idempotency_key: &token,
                                    token: None,
                                    body,
                                };
                                let _ = run(app.collector.post(request));
                            }
                        }
                    }
                    instances[i] = app.instance();
                    stepped[i] = app.clock.now_ms();
                    crashes += 1;
                }
            }
        }
        // The live drivers finish what they hold; then long enough passes for the leases of
        // the crashed ones to end and for every instance to look again.
        app.drain(&instances.iter().collect::<Vec<_>>());
        app.tick(LEASE_MS.max(LOOK_EVERY_MS) + 1);
        for i in &instances {
            i.driver.nudge(app.clock.now_ms());
        }
        let refs: Vec<&Instance> = instances.iter().collect();
        app.drain(&refs);
        app.assert_all_delivered();
        assert!(
            app.collector.duplicates() <= cut_off,
            "seed {seed}: {} duplicates, but crashes cut off only {cut_off} sent readings",
            app.collector.duplicates()
        );
    }
}

/// A request that fills a batch leaves younger rows behind; they are still claimed when they
/// come due, even though an older reading of the same instance came due (and went) first.
#[test]
fn rows_left_behind_by_a_full_batch_are_claimed_when_they_come_due() {
    let app = App::new("left-behind");
    let a = app.instance();
    assert!(app.accept(&a, 1));
    app.tick(100);
    assert!(app.accept(&a, 8)); // rows 2..=9: fills the batch of rows 1..=5
    app.step(&a);
    assert_eq!(app.batch_sizes(), vec![5]);
    app.drain(&[&a]);
    assert_eq!(app.batch_sizes(), vec![5, 4]);
    app.assert_all_delivered();
    assert!(
        app.clock.now_ms() <= T0 + 100 + MAX_AGE,
        "the rest went when it came due"
    );
}

/// Under load an instance's requests mostly land in batches that other instances fill: the
/// request that fills a batch claims every row up to it, wherever they came from, so an
/// instance that has since seen the table pass that batch claims nothing when its own older
/// requests come due (one claim per request, at every instance, was most of the database's
/// work at load). Its newer rows still come due and go.
#[test]
fn requests_in_a_batch_another_instance_filled_need_no_claim_of_their_own() {
    let app = App::new("filled-elsewhere");
    let (a, b) = (app.instance(), app.instance());
    assert!(app.accept(&a, 3)); // rows 1..=3
    assert!(app.accept(&b, 3)); // rows 4..=6: fills the batch of rows 1..=5
    app.step(&b);
    assert_eq!(app.batch_sizes(), vec![5], "b took a's rows with its own");
    app.tick(50);
    assert!(app.accept(&a, 1)); // row 7: a now knows rows up to 5 are in a full batch
    let before = a.store.db.statements.get();
    app.clock.0.set(T0 + MAX_AGE); // a's first request is due
    app.step(&a);
    assert_eq!(
        a.store.db.statements.get(),
        before,
        "no claim for rows another instance's claim took"
    );
    app.drain(&[&a, &b]);
    assert_eq!(app.batch_sizes(), vec![5, 2]);
    app.assert_all_delivered();
    assert!(
        app.clock.now_ms() <= T0 + 50 + MAX_AGE,
        "row 7 went when it came due"
    );
}

/// Yields once, as a host call that waits on the database would.
struct YieldOnce(bool);
impl std::future::Future for YieldOnce {
    type Output = ();
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        if std::mem::replace(&mut self.0, true) {
            std::task::Poll::Ready(())
        } else {
            cx.waker().wake_by_ref();
            std::task::Poll::Pending
        }
    }
}

/// The database behind a host call: every statement waits a turn first.
struct SlowDb(Db);
impl Sql for SlowDb {
    async fn execute(
        &self,
        statement: &str,
        params: Vec<SqlValue>,
    ) -> Result<Vec<Vec<SqlValue>>, StoreError> {
        YieldOnce(false).await;
        self.0.execute(statement, params).await
    }
}

struct YieldTimer;
impl Timer for YieldTimer {
    async fn sleep_ms(&self, _ms: u64) {
        YieldOnce(false).await
    }
}

/// Polls until done, as a single-threaded host does.
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    loop {
        if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
    }
}

/// A clock that moves 5 ms each time it is read: every statement takes 5 ms, as when the write
/// lock is contended.
struct Contended(Cell<u64>);
impl Clock for Contended {
    fn now_ms(&self) -> u64 {
        self.0.set(self.0.get() + 5);
        self.0.get()
    }
}

/// An instance's group that has seen a slow statement (one reading appended, taking 5 ms), and
/// the clock that keeps its statements slow.
fn contended_group(app: &App, store: &SharedOutbox<SlowDb>) -> (AppendGroup, Contended) {
    let group = AppendGroup::default();
    let clock = Contended(Cell::new(T0));
    block_on(group.append(store, &YieldTimer, &clock, app.request(1), 100))
        .unwrap()
        .unwrap();
    (group, clock)
}

/// `requests` arriving together on one instance's `group`, polled as one host task each.
fn append_concurrently(
    clock: &impl Clock,
    group: &AppendGroup,
    store: &SharedOutbox<SlowDb>,
    requests: &[Request],
) -> Vec<AppendResult> {
    block_on(futures_util::future::join_all(requests.iter().map(|r| {
        group.append(store, &YieldTimer, clock, r.clone(), 100)
    })))
}

/// Every request got its own rows, in order, from `first` on; the next free sequence number.
fn assert_consecutive(requests: &[Request], results: &[AppendResult], first: i64) -> i64 {
    let mut next = first;
    for (request, result) in requests.iter().zip(results) {
        let appended = result.as_ref().unwrap().as_ref().unwrap();
        assert_eq!(appended.first_seq, next);
        assert_eq!(appended.last_seq, next + request.readings.len() as i64 - 1);
        next = appended.last_seq + 1;
    }
    next
}

#[test]
fn concurrent_requests_of_an_instance_share_one_statement_while_statements_are_slow() {
    let app = App::new("group");
    let _tables = app.instance();
    let store = SharedOutbox::new(SlowDb(Db::open(&app.path)));
    let (group, clock) = contended_group(&app, &store);
    let requests: Vec<Request> = (0..10).map(|i| app.request(1 + i % 3)).collect();
    let results = append_concurrently(&clock, &group, &store, &requests);
    // Every request got its own rows, in order, and fewer statements ran than requests.
    let next = assert_consecutive(&requests, &results, 2);
    let stats = group.stats_json();
    assert_eq!(stats["requests"], 1 + 10);
    assert!(stats["statements"].as_u64().unwrap() < 1 + 10, "{stats}");
    // A group that would pass the bound is refused whole, and leaves nothing behind.
    let refused = block_on(group.append(&store, &YieldTimer, &clock, app.request(90), 100));
    assert_eq!(refused, Ok(Err(NotAppended::BacklogFull)));
    assert_eq!(app.pending(), next - 1);
}

/// While statements are quick, a request does not wait for another's: each writes its own at
/// once (a group's answers would leave in one burst; see `AppendGroup`).
#[test]
fn concurrent_requests_each_write_at_once_while_statements_are_quick() {
    let app = App::new("no-group");
    let _tables = app.instance();
    let store = SharedOutbox::new(SlowDb(Db::open(&app.path)));
    let group = AppendGroup::default();
    let requests: Vec<Request> = (0..10).map(|i| app.request(1 + i % 3)).collect();
    // The app's clock stands still: every statement takes no time.
    let results = append_concurrently(&app.clock, &group, &store, &requests);
    let next = assert_consecutive(&requests, &results, 1);
    let stats = group.stats_json();
    assert_eq!(stats["requests"], 10);
    assert_eq!(stats["statements"], 10, "{stats}");
    assert_eq!(stats["looks"], 0, "nobody waited: {stats}");
    assert_eq!(app.pending(), next - 1);
}

/// A request whose statement is dropped mid-way (its client went away) does not leave the
/// instance's group stuck: a request that waited behind it writes next, and a request the
/// dropped statement carried gets an error, never a hang.
#[test]
fn a_writer_dropped_mid_statement_hands_the_group_on() {
    use std::future::Future;
    use std::task::{Context, Waker};
    let app = App::new("group-drop");
    let _tables = app.instance();
    let store = SharedOutbox::new(SlowDb(Db::open(&app.path)));
    let (group, clock) = contended_group(&app, &store);
    let append = |n| group.append(&store, &YieldTimer, &clock, app.request(n), 100);
    let mut cx = Context::from_waker(Waker::noop());
    let mut first = Box::pin(append(2));
    assert!(
        first.as_mut().poll(&mut cx).is_pending(),
        "writing, in the database"
    );
    let mut second = Box::pin(append(3));
    assert!(
        second.as_mut().poll(&mut cx).is_pending(),
        "waiting behind it"
    );
    drop(first);
    // It finds the group free, and writes its own statement.
    let appended = block_on(second).unwrap().unwrap();
    assert_eq!(appended.last_seq - appended.first_seq + 1, 3);
    let after = block_on(append(1)).unwrap().unwrap();
    assert_eq!(after.last_seq, appended.last_seq + 1);

    // A statement that carries another request is dropped: that request gets an error.
    let mut writer = Box::pin(append(1));
    assert!(writer.as_mut().poll(&mut cx).is_pending());
    let mut rider = Box::pin(append(1));
    let mut next_writer = Box::pin(append(1));
    assert!(rider.as_mut().poll(&mut cx).is_pending());
    assert!(next_writer.as_mut().poll(&mut cx).is_pending());
    block_on(writer).unwrap().unwrap();
    assert!(
        next_writer.as_mut().poll(&mut cx).is_pending(),
        "writing the rider's statement and its own"
    );
    drop(next_writer);
    assert!(block_on(rider).is_err(), "its outcome is unknown: an error");
    block_on(append(1)).unwrap().unwrap();
    assert_eq!(group.held(), (0, 0));
}

/// At 557087d a request dropped while another's statement carried it (its client went away)
/// left its result in the group for ever; one dropped before any statement took it was still
/// written. Now neither leaves anything behind.
#[test]
fn a_waiting_request_dropped_leaves_nothing_in_the_group() {
    use std::future::Future;
    use std::task::{Context, Waker};
    let app = App::new("group-waiter-drop");
    let _tables = app.instance();
    let store = SharedOutbox::new(SlowDb(Db::open(&app.path)));
    let (group, clock) = contended_group(&app, &store);
    let append = |n| group.append(&store, &YieldTimer, &clock, app.request(n), 100);
    let mut cx = Context::from_waker(Waker::noop());
    // Carried by the writer's statement, then dropped before it looks for its result.
    let mut writer = Box::pin(append(1));
    assert!(writer.as_mut().poll(&mut cx).is_pending());
    let mut carried = Box::pin(append(2));
    assert!(carried.as_mut().poll(&mut cx).is_pending());
    let mut next_writer = Box::pin(append(1));
    assert!(next_writer.as_mut().poll(&mut cx).is_pending());
    block_on(writer).unwrap().unwrap();
    assert!(next_writer.as_mut().poll(&mut cx).is_pending());
    let mut late = Box::pin(append(3));
    assert!(late.as_mut().poll(&mut cx).is_pending(), "waits behind");
    drop(carried);
    drop(late); // never taken by a statement: not written
    block_on(next_writer).unwrap().unwrap();
    assert_eq!(group.held(), (0, 0));
    let pending = app.pending();
    assert_eq!(pending, 1 + 1 + 2 + 1, "the late request was not written");
}

/// 2 readings a second, 10 at once.
const LIMIT: crate::application::rate_limit::RateLimit =
    crate::application::rate_limit::RateLimit {
        per_s: 2.0,
        burst: 10.0,
    };

impl App {
    /// A request of one reading per entry of `devices`, received now, that takes its tokens in
    /// its append.
    fn charged(&self, devices: &[&str]) -> Request {
        let costs: Vec<(String, u32)> =
            crate::application::rate_limit::costs(devices.iter().copied())
                .into_iter()
                .map(|(d, n)| (d.to_owned(), n))
                .collect();
        Request {
            received_at_ms: self.clock.now_ms(),
            node: "node-1".into(),
            readings: self.readings(devices.len()),
            charge: Some(crate::application::rate_limit::sql::charge(&LIMIT, &costs)),
        }
    }

    fn tokens(&self, device: &str) -> Option<f64> {
        let c = rusqlite::Connection::open(&self.path).unwrap();
        c.query_row(
            "SELECT tokens FROM rate_buckets WHERE device = ?1",
            [device],
            |r| r.get(0),
        )
        .ok()
    }
}

/// The rate limit costs the request path no statement of its own: the append takes the
/// tokens, atomically with the rows, across every instance on the database.
#[test]
fn the_append_takes_the_rate_limit_in_its_own_statement() {
    let app = App::new("charged");
    let (a, b) = (app.instance(), app.instance());
    let before = a.store.db.statements.get() + b.store.db.statements.get();
    // A burst of 10, taken from two instances in turn: exactly 10, then refused.
    let admitted = (0..30)
        .filter(|i| {
            let on = if i % 2 == 0 { &a } else { &b };
            matches!(run(on.store.append(app.charged(&["d"]), 100)), Ok(Ok(_)))
        })
        .count();
    assert_eq!(admitted, 10);
    let after = a.store.db.statements.get() + b.store.db.statements.get();
    assert_eq!(after - before, 30, "one statement per request");
    assert_eq!(app.pending(), 10, "a refused request inserted nothing");
    assert_eq!(app.tokens("d"), Some(0.0));
    // It says when it would fit: 3 readings at 2 a second, 2 s.
    let costs = [("d".to_owned(), 3)];
    let wait = run(crate::application::rate_limit::sql::retry_after(
        &a.store.db,
        &LIMIT,
        &costs,
        app.clock.now_ms(),
    ));
    assert_eq!(wait, Ok(2));
    // A second later two more fit, not three.
    app.tick(1_000);
    let refused = run(a.store.append(app.charged(&["d", "d", "d"]), 100));
    assert_eq!(refused, Ok(Err(NotAppended::RateLimited)));
    assert!(matches!(
        run(a.store.append(app.charged(&["d", "e"]), 100)),
        Ok(Ok(_))
    ));
    // A request of several devices is taken whole or not at all: `d` has one token left, so
    // `f` is not charged for the refused request.
    assert_eq!(
        run(a.store.append(app.charged(&["f", "d", "d"]), 100)),
        Ok(Err(NotAppended::RateLimited))
    );
    assert_eq!(
        app.tokens("f"),
        None,
        "no bucket taken for a refused request"
    );
    // A full backlog refuses before any token is taken.
    let pending = app.pending() as usize;
    assert_eq!(
        run(a.store.append(app.charged(&["g"]), pending)),
        Ok(Err(NotAppended::BacklogFull))
    );
    assert_eq!(app.tokens("g"), None);
    // A clock that went back earns nothing.
    app.clock.0.set(T0 - 60_000);
    assert_eq!(
        run(a.store.append(app.charged(&["d", "d"]), 100)),
        Ok(Err(NotAppended::RateLimited))
    );
}

/// An instance's concurrent requests share a statement; one of them over its bucket makes the
/// statement take nothing, and each is then appended alone: only that one is refused.
#[test]
fn a_limited_request_in_a_group_is_refused_alone() {
    let app = App::new("charged-group");
    let _tables = app.instance();
    let store = SharedOutbox::new(SlowDb(Db::open(&app.path)));
    let (group, clock) = contended_group(&app, &store);
    // `x` spends its burst first.
    let burst: Vec<&str> = vec!["x"; 10];
    assert!(matches!(
        block_on(store.append(app.charged(&burst), 100)),
        Ok(Ok(_))
    ));
    let requests = [
        app.charged(&["y"]),
        app.charged(&["x"]),
        app.charged(&["z", "z"]),
        app.charged(&["y"]),
    ];
    let results = append_concurrently(&clock, &group, &store, &requests);
    let verdicts: Vec<_> = results
        .iter()
        .map(|r| r.as_ref().map(|a| a.map(|_| ())))
        .collect();
    assert_eq!(
        verdicts,
        [
            Ok(Ok(())),
            Ok(Err(NotAppended::RateLimited)),
            Ok(Ok(())),
            Ok(Ok(()))
        ]
    );
    assert_eq!(app.pending(), 1 + 10 + 4);
    assert_eq!(app.tokens("y"), Some(8.0));
    assert_eq!(app.tokens("z"), Some(8.0));
    assert_eq!(app.tokens("x"), Some(0.0));
}

/// The schema release 2 made (commit cc8271b, the first shared outbox), frozen here: a test
/// that built the "earlier" database from today's statements could not see what an upgrade
/// misses. No `charge` column, no `outbox_claimed` index, no buckets, and a dead letter's
/// `status` NOT NULL.
const RELEASE_2: &[&str] = &[
    "PRAGMA journal_mode=WAL",
    "CREATE TABLE IF NOT EXISTS outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, \
     received_at_ms INTEGER NOT NULL, node TEXT NOT NULL, doc TEXT NOT NULL, claim TEXT, \
     lease_until_ms INTEGER NOT NULL DEFAULT 0, attempts INTEGER NOT NULL DEFAULT 0)",
    "CREATE INDEX IF NOT EXISTS outbox_retrying ON outbox (lease_until_ms) WHERE attempts > 0",
    "CREATE TABLE IF NOT EXISTS dead_letters (id INTEGER PRIMARY KEY AUTOINCREMENT, \
     batch_id TEXT NOT NULL, failed_at_ms INTEGER NOT NULL, status INTEGER NOT NULL, \
     detail TEXT NOT NULL, readings INTEGER NOT NULL, body TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS outbox_meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL) \
     WITHOUT ROWID",
    "INSERT INTO dead_letters (batch_id, failed_at_ms, status, detail, readings, body) \
     VALUES ('old-letter', 1799999999000, 400, 'bad', 1, '{}')",
];

/// What release 3 added on top (commit f785aff: the rate limit in the append): the `charge`
/// column, its trigger, the buckets, and the `outbox_claimed` index. No append view.
const RELEASE_3: &[&str] = &[
    "CREATE INDEX IF NOT EXISTS outbox_claimed ON outbox (claim) WHERE claim IS NOT NULL",
    "CREATE TABLE IF NOT EXISTS rate_buckets (device TEXT PRIMARY KEY, tokens REAL NOT NULL, \
     updated_ms INTEGER NOT NULL) WITHOUT ROWID",
    "ALTER TABLE outbox ADD COLUMN charge TEXT",
    sql::CHARGE,
];

/// A database as an earlier release left it: `statements`, one row pending and schema
/// `version`.
fn an_earlier_database(app: &App, statements: &[&str], version: i64) -> rusqlite::Connection {
    let c = rusqlite::Connection::open(&app.path).unwrap();
    for statement in statements {
        c.execute_batch(statement).unwrap();
    }
    c.execute_batch(&format!(
        "PRAGMA user_version = {version}; \
         INSERT INTO outbox (received_at_ms, node, doc) VALUES (1, 'n', '{{\"id\":\"old\"}}')"
    ))
    .unwrap();
    c
}

/// Every object the current schema has, by type and name.
fn schema_objects(app: &App) -> Vec<(String, String)> {
    let c = rusqlite::Connection::open(&app.path).unwrap();
    let mut stmt = c
        .prepare(
            "SELECT type, name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' ORDER BY 1, 2",
        )
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// At 557087d an instance upgrading a database of release 2 ran only the steps after it, so
/// objects added to the first schema later (the `outbox_claimed` index) never reached it, and
/// the dead-letter table kept its NOT NULL `status`, which a batch that cannot be encoded has
/// none of. Now every object is made if missing, and the upgraded database is the same as a
/// fresh one.
#[test]
fn a_database_of_release_2_is_upgraded_to_the_same_schema_as_a_fresh_one() {
    let fresh = App::new("upgrade-fresh");
    drop(fresh.instance());
    let app = App::new("upgrade-2");
    drop(an_earlier_database(&app, RELEASE_2, 2));
    let a = SharedOutbox::new(Db::open(&app.path));
    let prepared = run(a.prepare()).unwrap();
    assert_eq!((prepared.found, prepared.import), (2, false));
    assert_eq!(schema_objects(&app), schema_objects(&fresh));
    let again = run(SharedOutbox::new(Db::open(&app.path)).prepare()).unwrap();
    assert_eq!(again.found, sql::VERSION_CURRENT, "once is enough");
    assert!(matches!(run(a.append(app.charged(&["d"]), 100)), Ok(Ok(_))));
    assert_eq!(app.tokens("d"), Some(9.0));
    assert_eq!(app.pending(), 2, "its row kept");
    // A dead letter without a status, and the old one kept.
    let letter = DeadLetter {
        batch_id: "unencodable".into(),
        failed_at_ms: T0,
        status: None,
        detail: String::new(),
        readings: 1,
        body: "{}".into(),
    };
    run(a.dead_letter(&letter)).unwrap();
    let letters = run(a.dead_letters(10, T0)).unwrap();
    assert_eq!(letters.len(), 2);
    let c = rusqlite::Connection::open(&app.path).unwrap();
    let kept: i64 = c
        .query_row("SELECT count(*) FROM dead_letters", [], |r| r.get(0))
        .unwrap();
    assert_eq!(kept, 2);
}

/// A database of release 3 (the rate limit in the append, no view) gets what came after.
#[test]
fn a_database_of_release_3_gets_the_append_view_and_the_isolated_table() {
    let fresh = App::new("upgrade-fresh-3");
    drop(fresh.instance());
    let app = App::new("upgrade-3");
    let statements: Vec<&str> = RELEASE_2.iter().chain(RELEASE_3).copied().collect();
    drop(an_earlier_database(&app, &statements, 3));
    let a = SharedOutbox::new(Db::open(&app.path));
    let prepared = run(a.prepare()).unwrap();
    assert_eq!(
        (prepared.found, prepared.import),
        (3, false),
        "imported already"
    );
    assert_eq!(schema_objects(&app), schema_objects(&fresh));
    let appended = run(a.append(app.charged(&["d", "d"]), 100))
        .unwrap()
        .unwrap();
    assert_eq!((appended.first_seq, appended.last_seq), (2, 3));
    assert_eq!(app.tokens("d"), Some(8.0));
    assert_eq!(app.pending(), 3);
}

/// At 557087d the schema version was read outside the upgrade's transaction: an instance that
/// read an old version, then waited while another upgraded, set the version back and ran the
/// steps again. Now the version is read under the write lock, and only ever set to current.
#[test]
fn an_upgrade_that_finds_another_done_under_the_lock_leaves_it_alone() {
    let app = App::new("upgrade-race");
    drop(an_earlier_database(&app, RELEASE_2, 2));
    let slow = SharedOutbox::new(Db::open(&app.path));
    // The slow instance read version 2 before the fast one upgraded...
    assert_eq!(run(slow.version()).unwrap(), 2);
    let fast = SharedOutbox::new(Db::open(&app.path));
    run(fast.prepare()).unwrap();
    // ...and only now takes the lock: it finds the upgrade done.
    run(slow.db.execute("BEGIN IMMEDIATE", Vec::new())).unwrap();
    assert_eq!(run(slow.upgrade()).unwrap(), sql::VERSION_CURRENT);
    run(slow.db.execute("COMMIT", Vec::new())).unwrap();
    assert_eq!(run(slow.version()).unwrap(), sql::VERSION_CURRENT);
}

//! The outbox against fakes behind its ports: a store, a collector, a clock, entropy. A crash is
//! the outbox dropped at a chosen point and a new one restored from the store, as after an
//! evicted Durable Object or a killed Spin. Every test checks the two halves of the promise:
//! every acknowledged reading reaches the collector, and nothing reaches it that was not
//! appended; the only duplicates are those of a batch whose answer a crash cut off.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

use super::*;
use crate::application::delivery::policy::{FlushPolicy, RetryPolicy};
use crate::domain::enrich::StoredReading;
use crate::ports::testing::run;
use crate::ports::{CollectorAnswer, EntropyUnavailable, StoreError, TransportError, Trim};

// ---- fakes ----------------------------------------------------------------------------------

pub(crate) struct FakeClock(pub(crate) Cell<u64>);
impl Clock for FakeClock {
    fn now_ms(&self) -> u64 {
        self.0.get()
    }
}

/// Deterministic bytes (splitmix64), with no short cycle: ids drawn in one millisecond stay
/// distinct.
pub(crate) struct FakeEntropy(pub(crate) Cell<u64>);
impl Entropy for FakeEntropy {
    fn fill(&self, buf: &mut [u8]) -> Result<(), EntropyUnavailable> {
        for chunk in buf.chunks_mut(8) {
            let mut z = self.0.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
            self.0.set(z);
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            chunk.copy_from_slice(&z.to_le_bytes()[..chunk.len()]);
        }
        Ok(())
    }
}

/// Never fires: the fake collector always answers at once.
pub(crate) struct NoTimeout;
impl Timer for NoTimeout {
    async fn sleep_ms(&self, _ms: u64) {
        std::future::pending::<()>().await
    }
}

#[derive(Default)]
pub(crate) struct Events(pub(crate) RefCell<Vec<String>>);
impl Log for Events {
    fn emit(&self, _level: Level, event: &str, _fields: &[(&str, &str)]) {
        self.0.borrow_mut().push(event.to_owned());
    }
}

/// A collector with scripted answers (200 when the script runs out) that records what it got.
#[derive(Default)]
pub(crate) struct FakeCollector {
    pub(crate) script: RefCell<VecDeque<Result<u16, ()>>>,
    /// Reading ids of every batch answered 2xx, in order, duplicates included.
    pub(crate) stored: RefCell<Vec<String>>,
    /// Every batch id seen, per attempt.
    pub(crate) attempts: RefCell<Vec<String>>,
    /// Readings of every batch answered 2xx, in order.
    pub(crate) sizes: RefCell<Vec<usize>>,
    /// The `edge_node` of every batch answered 2xx, in order.
    pub(crate) nodes: RefCell<Vec<String>>,
    /// Readings it refuses: a batch holding one is answered 400 whole (as InfluxDB refuses a
    /// write with one bad point).
    pub(crate) poisoned: RefCell<BTreeSet<String>>,
    /// Readings it chokes on: a batch holding one is answered 500 (a collector bug).
    pub(crate) choking: RefCell<BTreeSet<String>>,
}

impl FakeCollector {
    pub(crate) fn answer(&self, answers: &[Result<u16, ()>]) {
        self.script.borrow_mut().extend(answers.iter().copied());
    }
    pub(crate) fn stored_set(&self) -> BTreeSet<String> {
        self.stored.borrow().iter().cloned().collect()
    }
    pub(crate) fn duplicates(&self) -> usize {
        self.stored.borrow().len() - self.stored_set().len()
    }
}

impl Collector for FakeCollector {
    async fn post(&self, request: CollectorRequest<'_>) -> Result<CollectorAnswer, TransportError> {
        self.attempts
            .borrow_mut()
            .push(request.idempotency_key.to_owned());
        let v: serde_json::Value = serde_json::from_str(&request.body).unwrap();
        let ids: Vec<String> = v["readings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_str().unwrap().to_owned())
            .collect();
        let poisoned = ids.iter().any(|id| self.poisoned.borrow().contains(id));
        let chokes = ids.iter().any(|id| self.choking.borrow().contains(id));
        let answer = self.script.borrow_mut().pop_front().unwrap_or(Ok(200));
        let answer = match answer {
            Ok(200..=299) if poisoned => Ok(400),
            Ok(200..=299) if chokes => Ok(500),
            other => other,
        };
        match answer {
            Err(()) => Err(TransportError("connection refused".into())),
            Ok(status) => {
                if (200..300).contains(&status) {
                    self.sizes.borrow_mut().push(ids.len());
                    let node = v["edge_node"].as_str().unwrap_or_default().to_owned();
                    self.nodes.borrow_mut().push(node);
                    self.stored.borrow_mut().extend(ids);
                }
                Ok(CollectorAnswer {
                    status,
                    detail: String::new(),
                })
            }
        }
    }
}

#[derive(Clone, Debug)]
struct Row {
    received_at_ms: u64,
    node: String,
    readings: Vec<StoredReading>,
    settled: usize,
}

/// A store like a Durable Object's table: a row per segment with how far it is settled.
#[derive(Default)]
struct FakeStore {
    rows: RefCell<BTreeMap<u64, Row>>,
    next: Cell<u64>,
    dead: RefCell<Vec<DeadLetter>>,
    fail_appends: Cell<bool>,
    fail_trims: Cell<bool>,
    fail_dead_letters: Cell<bool>,
    /// Writes of any kind: what a host bills.
    writes: Cell<u64>,
}

impl FakeStore {
    /// What a restarted host reads back.
    fn load(&self) -> Vec<StoredSegment<u64>> {
        self.rows
            .borrow()
            .iter()
            .map(|(k, r)| StoredSegment {
                key: *k,
                received_at_ms: r.received_at_ms,
                node: r.node.clone(),
                readings: r.readings[r.settled..].to_vec(),
            })
            .collect()
    }
    fn pending(&self) -> usize {
        self.rows
            .borrow()
            .values()
            .map(|r| r.readings.len() - r.settled)
            .sum()
    }
}

impl OutboxStore for FakeStore {
    type Key = u64;
    async fn trim(&self, trim: &Trim<u64>) -> Result<(), StoreError> {
        let (key, settled, readings) = (&trim.key, trim.settled, &trim.readings);
        if self.fail_trims.get() {
            return Err(StoreError("disk full".into()));
        }
        self.writes.set(self.writes.get() + 1);
        let mut rows = self.rows.borrow_mut();
        if settled == readings.len() {
            rows.remove(key);
        } else if let Some(row) = rows.get_mut(key) {
            row.settled = row.settled.max(settled);
        }
        Ok(())
    }
    async fn dead_letter(&self, letter: &DeadLetter) -> Result<u64, StoreError> {
        if self.fail_dead_letters.get() {
            return Err(StoreError("disk full".into()));
        }
        self.writes.set(self.writes.get() + 1);
        self.dead.borrow_mut().push(letter.clone());
        Ok(0)
    }
}

impl SegmentAppend for FakeStore {
    async fn append(
        &self,
        received_at_ms: u64,
        node: &str,
        readings: &[StoredReading],
    ) -> Result<u64, StoreError> {
        if self.fail_appends.get() {
            return Err(StoreError("disk full".into()));
        }
        self.writes.set(self.writes.get() + 1);
        let key = self.next.get() + 1;
        self.next.set(key);
        self.rows.borrow_mut().insert(
            key,
            Row {
                received_at_ms,
                node: node.to_owned(),
                readings: readings.to_vec(),
                settled: 0,
            },
        );
        Ok(key)
    }
}

// ---- a host around the engine ---------------------------------------------------------------

const T0: u64 = 1_800_000_000_000;

struct Host {
    clock: FakeClock,
    entropy: FakeEntropy,
    store: FakeStore,
    collector: FakeCollector,
    events: Events,
    sink: SinkTarget,
    outbox: RefCell<Outbox<u64>>,
    /// Every reading acknowledged to a device.
    acknowledged: BTreeSet<String>,
    next_reading: u64,
}

fn config(max_items: usize, wakeups: Wakeups) -> OutboxConfig {
    OutboxConfig {
        flush: FlushPolicy {
            max_items,
            max_age_ms: 200,
        },
        retry: RetryPolicy {
            base_ms: 200,
            max_ms: 5_000,
        },
        max_backlog: 10_000,
        backlog_retry_after_s: 5,
        wakeups,
        give_up_ms: 300_000,
        node: "node-1".into(),
    }
}

impl Host {
    fn new(max_items: usize) -> Self {
        Self::with(config(max_items, Wakeups::OnArrival))
    }

    fn with(config: OutboxConfig) -> Self {
        Self {
            clock: FakeClock(Cell::new(T0)),
            entropy: FakeEntropy(Cell::new(1)),
            store: FakeStore::default(),
            collector: FakeCollector::default(),
            events: Events::default(),
            sink: SinkTarget {
                format: SinkFormat::Json,
                url: "http://collector/ingest".into(),
                token: None,
                tag_keys: Vec::new(),
            },
            outbox: RefCell::new(Outbox::new(config, T0)),
            acknowledged: BTreeSet::new(),
            next_reading: 0,
        }
    }

    fn readings(&mut self, n: usize) -> Vec<StoredReading> {
        (0..n)
            .map(|_| {
                self.next_reading += 1;
                StoredReading::from_store(&format!(
                    r#"{{"id":"r{}","temp_c":1.5}}"#,
                    self.next_reading
                ))
            })
            .collect()
    }

    /// A request with `n` readings, as a host's accept path runs it: reserve, append, queue,
    /// answer. Returns whether it was acknowledged.
    fn accept(&mut self, n: usize) -> bool {
        let readings = self.readings(n);
        let now = self.clock.now_ms();
        let Ok(reservation) = self.outbox.borrow_mut().reserve(n) else {
            return false;
        };
        let appended = append_reserved(
            &self.outbox,
            &self.store,
            reservation,
            now,
            "node-1",
            readings.clone(),
        );
        if run(appended).is_err() {
            return false;
        }
        self.acknowledged
            .extend(readings.iter().map(|r| id_of(r.as_str())));
        true
    }

    fn round(&self) -> Next {
        let d = Delivery {
            store: &self.store,
            collector: &self.collector,
            timer: &NoTimeout,
            clock: &self.clock,
            entropy: &self.entropy,
            log: &self.events,
            sink: &self.sink,
        };
        run(deliver_round(&self.outbox, &d))
    }

    /// Runs rounds, moving the clock to each wake-up, until the outbox is idle.
    fn drain(&self) {
        for _ in 0..10_000 {
            match self.round() {
                Next::Idle => return,
                Next::At(at) => self.clock.0.set(self.clock.0.get().max(at)),
            }
        }
        panic!("the outbox never went idle");
    }

    /// Memory is lost; the host comes back and reads its store.
    fn crash_and_restore(&self) {
        let fresh = Outbox::new(self.outbox.borrow().config().clone(), self.clock.now_ms());
        *self.outbox.borrow_mut() = fresh;
        self.outbox.borrow_mut().restore(self.store.load());
    }

    fn tick(&self, ms: u64) {
        self.clock.0.set(self.clock.0.get() + ms);
    }

    /// The promise: every acknowledged reading arrived, or (refused by the collector, or
    /// choked on until given up) is alone in a dead letter; nothing arrived that was not
    /// appended.
    fn assert_delivered(&self) {
        let stored = self.collector.stored_set();
        let poisoned: BTreeSet<String> = self
            .collector
            .poisoned
            .borrow()
            .union(&self.collector.choking.borrow())
            .cloned()
            .collect();
        let missing: Vec<_> = self
            .acknowledged
            .difference(&stored)
            .filter(|id| !poisoned.contains(*id))
            .collect();
        assert!(missing.is_empty(), "lost: {missing:?}");
        // Dead letters hold only refused readings, and every refused reading that did not
        // arrive (it may have, before it was poisoned) is in one.
        let dead: BTreeSet<String> = self.dead_lettered().into_iter().collect();
        let refused: BTreeSet<String> =
            self.acknowledged.intersection(&poisoned).cloned().collect();
        assert!(
            dead.is_subset(&refused),
            "dead-lettered a reading the collector took"
        );
        let undelivered: BTreeSet<String> = refused.difference(&stored).cloned().collect();
        assert!(undelivered.is_subset(&dead), "a refused reading vanished");
        let issued: BTreeSet<String> = (1..=self.next_reading).map(|n| format!("r{n}")).collect();
        assert!(stored.is_subset(&issued), "sent what was never appended");
    }
}

impl Host {
    /// The reading ids of every dead letter kept; each letter holds exactly one reading.
    fn dead_lettered(&self) -> Vec<String> {
        self.store
            .dead
            .borrow()
            .iter()
            .flat_map(|d| {
                let body: serde_json::Value = serde_json::from_str(&d.body).unwrap();
                let readings = body["readings"].as_array().unwrap().clone();
                assert_eq!(readings.len(), d.readings);
                readings
                    .into_iter()
                    .map(|r| r["id"].as_str().unwrap().to_owned())
            })
            .collect()
    }
}

pub(crate) fn id_of(reading: &str) -> String {
    serde_json::from_str::<serde_json::Value>(reading).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

// ---- tests ----------------------------------------------------------------------------------

#[test]
fn a_batch_spans_several_segments_and_each_costs_two_writes() {
    let mut h = Host::new(50);
    for _ in 0..10 {
        assert!(h.accept(10));
    }
    h.drain();
    h.assert_delivered();
    assert_eq!(h.collector.attempts.borrow().len(), 2, "two full batches");
    assert_eq!(h.collector.duplicates(), 0);
    assert_eq!(h.store.pending(), 0);
    assert_eq!(
        h.store.writes.get(),
        20,
        "an append and a removal per segment"
    );
}

#[test]
fn segments_that_straddle_batch_boundaries_cost_no_partial_trims() {
    // 60-reading segments, 50-reading batches, 200 readings a round: every round ends inside a
    // segment, with less than a batch of it settled.
    let mut h = Host::new(50);
    for _ in 0..10 {
        assert!(h.accept(60));
    }
    h.drain();
    h.assert_delivered();
    assert_eq!(h.collector.duplicates(), 0);
    assert_eq!(
        h.store.writes.get(),
        20,
        "an append and a removal per segment, nothing between"
    );
}

#[test]
fn a_segment_larger_than_a_batch_is_trimmed_as_it_goes_not_per_reading() {
    let mut h = Host::new(50);
    assert!(h.accept(500));
    assert!(matches!(h.round(), Next::At(_)));
    assert_eq!(
        h.collector.stored.borrow().len(),
        200,
        "four batches in flight"
    );
    assert_eq!(h.store.pending(), 300, "the store knows 200 are settled");
    h.drain();
    h.assert_delivered();
    // One append, two partial trims, one removal: not 500 of anything.
    assert_eq!(h.store.writes.get(), 4);
    assert_eq!(h.collector.duplicates(), 0);
}

#[test]
fn a_crash_after_a_partial_trim_sends_only_what_was_not_settled() {
    let mut h = Host::new(50);
    assert!(h.accept(500));
    h.round();
    h.crash_and_restore();
    assert_eq!(h.outbox.borrow().pending(), 300);
    h.drain();
    h.assert_delivered();
    assert_eq!(h.collector.duplicates(), 0);
    assert_eq!(h.store.pending(), 0);
    assert_eq!(h.outbox.borrow().stats().recovered_readings, 300);
}

#[test]
fn a_crash_after_the_append_and_before_the_answer_still_delivers() {
    let mut h = Host::new(50);
    assert!(h.accept(3));
    // A request whose readings were appended, but the host died before it answered: the
    // device saw no 2xx (it will send again), and these readings are delivered anyway, the
    // documented at-least-once case of a durable hand-off.
    let unanswered = h.readings(2);
    run(h.store.append(T0, "node-1", &unanswered)).unwrap();
    h.crash_and_restore();
    h.drain();
    h.assert_delivered();
    for r in &unanswered {
        assert!(h.collector.stored_set().contains(&id_of(r.as_str())));
    }
}

#[test]
fn a_crash_after_a_send_and_before_its_trim_sends_that_batch_again() {
    let mut h = Host::new(50);
    for _ in 0..3 {
        assert!(h.accept(20));
    }
    // The collector stores the batch, but the host dies before the answer is settled.
    let Due::Send(attempts) = h.outbox.borrow_mut().take_due(T0, &h.entropy) else {
        panic!("a full batch is due")
    };
    let d = Delivery {
        store: &h.store,
        collector: &h.collector,
        timer: &NoTimeout,
        clock: &h.clock,
        entropy: &h.entropy,
        log: &h.events,
        sink: &h.sink,
    };
    let sent = attempts.iter().map(|a| a.readings.len()).sum::<usize>();
    for a in &attempts {
        run(send(a, &d));
    }
    h.crash_and_restore();
    h.tick(1_000);
    h.drain();
    h.assert_delivered();
    assert_eq!(
        h.collector.duplicates(),
        sent,
        "exactly the readings of the interrupted batch come twice"
    );
    assert_eq!(h.store.pending(), 0);
}

#[test]
fn a_crash_during_a_dead_letter_keeps_the_batch_and_never_delivers_it() {
    let mut h = Host::new(50);
    assert!(h.accept(1));
    // The collector refuses for good, and the host dies before it kept the dead letter.
    h.collector.answer(&[Ok(400)]);
    h.store.fail_dead_letters.set(true);
    h.tick(300);
    h.round();
    assert!(h.store.dead.borrow().is_empty());
    assert_eq!(
        h.store.pending(),
        1,
        "a dead letter that was not kept drops nothing"
    );
    h.crash_and_restore();
    h.store.fail_dead_letters.set(false);
    h.collector.answer(&[Ok(400)]);
    h.tick(300);
    h.drain();
    let dead = h.store.dead.borrow();
    assert_eq!(dead.len(), 1);
    assert_eq!((dead[0].status, dead[0].readings), (Some(400), 1));
    let body: serde_json::Value = serde_json::from_str(&dead[0].body).unwrap();
    assert_eq!(body["readings"].as_array().unwrap().len(), 1);
    assert!(
        h.collector.stored_set().is_empty(),
        "a refused batch is never delivered"
    );
    assert_eq!(
        h.store.pending(),
        0,
        "a kept dead letter settles its readings"
    );
}

#[test]
fn a_crash_after_the_dead_letter_and_before_the_trim_only_repeats_the_dead_letter() {
    let mut h = Host::new(50);
    assert!(h.accept(1));
    h.collector.answer(&[Ok(400), Ok(400)]);
    h.store.fail_trims.set(true);
    h.tick(300);
    h.round();
    assert_eq!(h.store.dead.borrow().len(), 1);
    h.crash_and_restore();
    h.store.fail_trims.set(false);
    h.tick(300);
    h.drain();
    assert_eq!(
        h.store.dead.borrow().len(),
        2,
        "kept twice, never delivered"
    );
    assert!(h.collector.stored_set().is_empty());
    assert_eq!(h.store.pending(), 0);
}

#[test]
fn a_store_that_fails_on_append_refuses_the_request_and_holds_nothing() {
    let mut h = Host::new(50);
    h.store.fail_appends.set(true);
    assert!(!h.accept(10));
    assert_eq!(h.outbox.borrow().pending(), 0);
    // The reservation was given back: the whole backlog is still available.
    let full = h.outbox.borrow().config().max_backlog;
    let r = h
        .outbox
        .borrow_mut()
        .reserve(full)
        .expect("room for a full backlog");
    h.outbox.borrow_mut().release(r);
    h.store.fail_appends.set(false);
    assert!(h.accept(10));
    h.drain();
    h.assert_delivered();
    assert_eq!(
        h.collector.stored.borrow().len(),
        10,
        "nothing of the refused request"
    );
}

#[test]
fn a_store_that_fails_on_trim_costs_duplicates_after_a_crash_never_readings() {
    let mut h = Host::new(50);
    assert!(h.accept(50));
    h.store.fail_trims.set(true);
    h.drain();
    assert_eq!(h.outbox.borrow().stats().store_failures, 1);
    assert!(h
        .events
        .0
        .borrow()
        .contains(&"outbox_trim_failed".to_owned()));
    h.store.fail_trims.set(false);
    h.crash_and_restore();
    h.drain();
    h.assert_delivered();
    assert_eq!(h.collector.duplicates(), 50);
    assert_eq!(h.store.pending(), 0);
}

#[test]
fn retries_keep_the_batch_id_back_off_and_are_not_cut_short_by_traffic() {
    let mut h = Host::new(50);
    assert!(h.accept(50));
    h.collector.answer(&[Err(()), Ok(503), Ok(503)]);
    let Next::At(first_retry) = h.round() else {
        panic!()
    };
    assert!(first_retry >= T0 + 100, "backoff after the first failure");
    // New readings arrive during the backoff: nothing is sent before the retry time.
    assert!(h.accept(50));
    assert!(matches!(h.round(), Next::At(at) if at == first_retry));
    assert_eq!(h.collector.attempts.borrow().len(), 1);
    // After the backoff, one probe: the failed batch under its id. It fails, so another batch
    // is probed at once (the collector might only be choking on the first); it fails too, and
    // the backoff grows.
    h.clock.0.set(first_retry);
    assert!(matches!(h.round(), Next::At(at) if at == first_retry));
    assert!(matches!(h.round(), Next::At(at) if at >= first_retry + 200));
    {
        let attempts = h.collector.attempts.borrow();
        assert_eq!(attempts.len(), 3);
        assert_eq!(attempts[1], attempts[0], "a retry keeps its batch id");
        assert_ne!(
            attempts[2], attempts[0],
            "the second probe is another batch"
        );
    }
    h.drain();
    h.assert_delivered();
    // After the second backoff in a row the probe is half the batch, under new ids.
    assert_eq!(h.collector.sizes.borrow()[0], 25);
    let stats = h.outbox.borrow().stats().clone();
    assert_eq!(stats.failed_attempts, 3);
    assert!(stats.probes >= 3, "{stats:?}");
    assert_eq!((stats.isolated_batches, stats.split_batches), (0, 0));
    assert!(h.outbox.borrow().is_healthy());
}

/// A collector down for every batch gets one batch at a time: after each backoff at most two
/// probes, one after the other, never the whole backlog at once.
#[test]
fn a_collector_that_is_down_gets_one_batch_at_a_time() {
    let mut h = Host::new(10);
    for _ in 0..8 {
        assert!(h.accept(10));
    }
    h.collector.answer(&[Ok(503); 4]);
    h.round(); // four batches in flight, all refused: the collector looks down
    assert_eq!(h.collector.attempts.borrow().len(), 4);
    for _ in 0..20 {
        h.collector.answer(&[Ok(503)]);
        let sent = h.collector.attempts.borrow().len();
        let Next::At(at) = h.round() else { panic!() };
        assert!(
            h.collector.attempts.borrow().len() <= sent + 1,
            "one at a time"
        );
        h.clock.0.set(at.max(h.clock.now_ms()));
    }
    assert!(
        h.dead_lettered().is_empty(),
        "an outage dead-letters nothing"
    );
    h.drain();
    h.assert_delivered();
}

/// At 557087d a batch the collector kept answering 500 held back every other: it was retried
/// with no cap, and nothing else went out meanwhile. Now, while other batches are delivered,
/// the failing batch is split until the failing reading is alone, which is retried on its own
/// backoff and, once it has failed that way for the give-up time, kept as a dead letter.
#[test]
fn a_batch_the_collector_chokes_on_is_isolated_and_given_up_alone() {
    let mut h = Host::with(OutboxConfig {
        give_up_ms: 30_000,
        ..config(10, Wakeups::OnArrival)
    });
    assert!(h.accept(5));
    assert!(h.accept(1)); // r6: the collector answers 500 to any batch holding it
    assert!(h.accept(34));
    h.collector.choking.borrow_mut().insert("r6".into());
    h.tick(300);
    // Traffic keeps coming (other devices): every one of those readings is delivered.
    for _ in 0..60 {
        assert!(h.accept(3));
        h.tick(1_000);
        let _ = h.round();
        let _ = h.round();
    }
    h.tick(1_000);
    h.drain();
    h.assert_delivered();
    let stored = h.collector.stored_set();
    assert!(!stored.contains("r6"));
    assert_eq!(
        stored.len() as u64,
        h.next_reading - 1,
        "all but r6 delivered"
    );
    assert_eq!(h.dead_lettered(), ["r6"]);
    let letter = h.store.dead.borrow()[0].clone();
    assert_eq!(letter.status, Some(500));
    let stats = h.outbox.borrow().stats().clone();
    assert_eq!(stats.given_up_readings, 1);
    assert!(stats.isolated_batches >= 1, "{stats:?}");
    assert!(h.outbox.borrow().is_healthy(), "never taken for an outage");
    assert_eq!(h.store.pending(), 0);
}

/// The collector chokes on one device whose readings are spread over every batch: no batch is
/// ever delivered whole, so at first it looks down. Each backoff halves the probe, a probe
/// without the device's readings gets through, and from then on the failing batches are
/// isolated: every other reading is delivered, the device's are given up.
#[test]
fn a_device_in_every_batch_is_found_by_smaller_probes() {
    let mut h = Host::with(OutboxConfig {
        give_up_ms: 20_000,
        ..config(10, Wakeups::OnArrival)
    });
    for _ in 0..4 {
        assert!(h.accept(9));
        assert!(h.accept(1)); // r10, r20, r30, r40: one in every batch
    }
    for id in ["r10", "r20", "r30", "r40"] {
        h.collector.choking.borrow_mut().insert(id.into());
    }
    h.tick(300);
    for _ in 0..400 {
        match h.round() {
            Next::Idle => break,
            Next::At(at) => h.clock.0.set(h.clock.now_ms().max(at).max(T0 + 300)),
        }
        h.tick(50);
    }
    h.assert_delivered();
    assert_eq!(h.collector.stored_set().len(), 36, "every other reading");
    let mut dead = h.dead_lettered();
    dead.sort();
    assert_eq!(dead, ["r10", "r20", "r30", "r40"]);
    assert!(
        h.clock.now_ms() - T0 < 60_000,
        "found within the give-up time and backoffs"
    );
}

/// An isolated reading is given up only while the collector answers: during an outage its
/// clock runs, but nothing is dead-lettered.
#[test]
fn an_isolated_reading_is_not_given_up_while_the_collector_is_down() {
    let mut h = Host::with(OutboxConfig {
        give_up_ms: 5_000,
        ..config(10, Wakeups::OnArrival)
    });
    assert!(h.accept(10));
    h.collector.choking.borrow_mut().insert("r1".into());
    assert!(h.accept(10));
    h.tick(300);
    h.round(); // r1's batch fails while the other is delivered: isolated and split
    assert_eq!(h.outbox.borrow().stats().isolated_batches, 1);
    // The collector goes away altogether, for longer than the give-up time.
    for _ in 0..40 {
        h.collector.answer(&[Err(()); 4]);
        h.tick(500);
        h.round();
    }
    assert!(h.dead_lettered().is_empty());
    h.collector.choking.borrow_mut().clear();
    h.drain();
    h.assert_delivered();
    assert!(h.collector.stored_set().contains("r1"));
}

#[test]
fn a_collector_that_never_answers_times_out_and_is_retried() {
    struct Hangs;
    impl Collector for Hangs {
        async fn post(&self, _: CollectorRequest<'_>) -> Result<CollectorAnswer, TransportError> {
            std::future::pending().await
        }
    }
    struct Fires;
    impl Timer for Fires {
        async fn sleep_ms(&self, _ms: u64) {}
    }
    let mut h = Host::new(50);
    assert!(h.accept(50));
    let d = Delivery {
        store: &h.store,
        collector: &Hangs,
        timer: &Fires,
        clock: &h.clock,
        entropy: &h.entropy,
        log: &h.events,
        sink: &h.sink,
    };
    assert!(matches!(run(deliver_round(&h.outbox, &d)), Next::At(_)));
    assert!(!h.outbox.borrow().is_healthy());
    assert_eq!(h.store.pending(), 50);
    h.tick(10_000);
    h.drain();
    h.assert_delivered();
}

#[test]
fn the_backlog_bound_refuses_whole_requests_with_retry_after() {
    let mut h = Host::with(OutboxConfig {
        max_backlog: 100,
        ..config(50, Wakeups::OnArrival)
    });
    h.collector.answer(&[Err(())]);
    assert!(h.accept(60));
    h.round();
    assert!(h.accept(40));
    let refusal = h.outbox.borrow_mut().reserve(1).unwrap_err();
    assert_eq!(
        refusal,
        BacklogFull {
            limit: 100,
            retry_after_s: 5
        }
    );
    assert!(!h.accept(1));
    assert_eq!(h.outbox.borrow().stats().backlog_refusals, 2);
    h.tick(60_000);
    h.drain();
    h.assert_delivered();
    assert!(h.accept(100), "room again once delivered");
}

#[test]
fn flush_timing_on_arrival_hosts() {
    let mut h = Host::new(50);
    assert_eq!(h.outbox.borrow().next_wake(T0), None);
    assert!(h.accept(1));
    assert_eq!(h.outbox.borrow().next_wake(T0), Some(T0 + 200), "max age");
    assert!(h.accept(49));
    assert_eq!(
        h.outbox.borrow().next_wake(T0),
        Some(T0),
        "a full batch: now"
    );
}

#[test]
fn polled_hosts_flush_a_lone_request_soon_and_look_by_arrival_rate() {
    let mut h = Host::with(config(50, Wakeups::Polled));
    assert!(h.accept(1));
    assert_eq!(
        h.outbox.borrow().next_wake(T0),
        Some(T0 + LONE_REQUEST_WAIT_MS),
        "one request so far: a short wait for a second"
    );
    // One reading a ms for 10 ms: 40 more expected in 40 ms.
    for _ in 1..10 {
        h.tick(1);
        assert!(h.accept(1));
    }
    h.tick(1);
    assert_eq!(h.outbox.borrow().next_wake(T0 + 10), Some(T0 + 50));
    // Traffic stops: each look expects the batch later, and max age bounds it.
    assert_eq!(h.outbox.borrow().next_wake(T0 + 50), Some(T0 + 200));
}

#[test]
fn a_driver_that_went_idle_is_started_again_by_the_next_push() {
    let mut h = Host::new(50);
    let r = h.outbox.borrow_mut().reserve(1).unwrap();
    let one = h.readings(1);
    assert!(
        h.outbox.borrow_mut().push(r, 1, T0, "n", one),
        "first: start one"
    );
    let r = h.outbox.borrow_mut().reserve(1).unwrap();
    let one = h.readings(1);
    assert!(!h.outbox.borrow_mut().push(r, 2, T0, "n", one), "it runs");
    h.drain();
    let r = h.outbox.borrow_mut().reserve(1).unwrap();
    let one = h.readings(1);
    assert!(h.outbox.borrow_mut().push(r, 3, T0, "n", one), "it stopped");
}

#[test]
fn restore_skips_segments_already_held() {
    let mut h = Host::new(50);
    assert!(h.accept(5));
    h.outbox.borrow_mut().restore(h.store.load());
    assert_eq!(h.outbox.borrow().pending(), 5, "not twice");
    h.drain();
    assert_eq!(h.collector.duplicates(), 0);
}

#[test]
fn a_refused_reading_is_isolated_and_only_it_is_dead_lettered() {
    let mut h = Host::new(50);
    // Two requests of other devices around one poisoned reading, all in one batch of 50.
    assert!(h.accept(20));
    assert!(h.accept(1));
    assert!(h.accept(29));
    h.collector.poisoned.borrow_mut().insert("r21".into());
    h.tick(300);
    h.drain();
    h.assert_delivered();
    assert_eq!(h.dead_lettered(), ["r21"]);
    assert_eq!(h.collector.stored_set().len(), 49);
    let stats = h.outbox.borrow().stats().clone();
    assert!(
        stats.split_batches >= 6,
        "halving 50 to 1 takes at least 6 splits"
    );
    assert_eq!(
        (stats.dead_letter_batches, stats.dead_letter_readings),
        (1, 1)
    );
    assert_eq!(
        stats.failed_attempts, 0,
        "a split is no failure: no backoff"
    );
    assert_eq!(h.store.pending(), 0);
    assert!(h
        .events
        .0
        .borrow()
        .iter()
        .any(|e| e == "flush_refused_split"));
}

#[test]
fn a_collector_refusing_the_edge_is_retried_with_backoff_never_dead_lettered() {
    for status in [401, 403, 404] {
        let mut h = Host::new(50);
        assert!(h.accept(10));
        h.collector.answer(&[Ok(status), Ok(status), Ok(status)]);
        h.tick(300);
        assert!(
            matches!(h.round(), Next::At(at) if at > h.clock.now_ms()),
            "backs off"
        );
        h.drain();
        h.assert_delivered();
        assert_eq!(h.collector.stored_set().len(), 10);
        assert!(
            h.store.dead.borrow().is_empty(),
            "{status}: never a dead letter"
        );
        assert_eq!(h.outbox.borrow().stats().config_faults, 3);
        assert!(h
            .events
            .0
            .borrow()
            .iter()
            .any(|e| e == "collector_misconfigured"));
    }
}

#[test]
fn the_memory_store_keeps_a_bounded_number_of_dead_letters() {
    let store = MemoryStore::default();
    let letter = |n: u64, at: u64| DeadLetter {
        batch_id: format!("b{n}"),
        failed_at_ms: at,
        status: Some(422),
        detail: String::new(),
        readings: 1,
        body: "{}".into(),
    };
    let mut dropped = 0;
    for n in 0..MEMORY_DEAD_LETTERS as u64 + 5 {
        dropped += run(store.dead_letter(&letter(n, T0 + n))).unwrap();
    }
    assert_eq!(dropped, 5);
    assert_eq!(store.dead_letters().len(), MEMORY_DEAD_LETTERS);
    assert_eq!(
        store.dead_letters()[0].batch_id,
        "b5",
        "the oldest went first"
    );
    // A letter past the age bound goes when the next one is kept.
    let later = T0 + crate::application::delivery::policy::DEAD_LETTER_MAX_AGE_MS + 100;
    assert_eq!(
        run(store.dead_letter(&letter(99, later))).unwrap(),
        MEMORY_DEAD_LETTERS as u64
    );
    assert_eq!(store.dead_letters().len(), 1);
}

/// Random traffic, collector faults and crashes at every point of a round: the promise holds
/// after each seed, and duplicates only ever come from interrupted batches.
#[test]
fn random_faults_and_crashes_never_lose_an_acknowledged_reading() {
    for seed in 1..=200u64 {
        let mut rng = seed;
        let mut next = move |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        let mut h = Host::new(1 + next(60) as usize);
        for _ in 0..60 {
            match next(10) {
                0..=4 => {
                    let n = 1 + next(120) as usize;
                    h.accept(n);
                }
                5 => h.collector.answer(&[Err(())]),
                6 => h.collector.answer(&[Ok(503)]),
                7 => h.crash_and_restore(),
                8 if next(4) == 0 => {
                    // A reading the collector will refuse, or a rotated collector token.
                    if next(2) == 0 && h.next_reading > 0 {
                        let id = format!("r{}", 1 + next(h.next_reading));
                        h.collector.poisoned.borrow_mut().insert(id);
                    } else {
                        h.collector.answer(&[Ok(401)]);
                    }
                }
                _ => {
                    h.tick(next(400));
                    h.round();
                }
            }
        }
        h.tick(60_000);
        h.drain();
        h.assert_delivered();
        assert_eq!(h.store.pending(), 0, "seed {seed}: the store drained");
    }
}

//! The outbox: the one delivery engine of every host.
//!
//! Accepted readings arrive as **segments**: the readings of one accepted request (or, on
//! Workers, of one group-commit call). The host's store makes a segment durable with one write
//! before the device gets its 2xx ([`OutboxStore::append`]); the segment then waits in memory.
//! Batches of up to `FLUSH_MAX_ITEMS` readings are cut from the queue in order, across segment
//! boundaries, when a batch is full or the oldest reading reaches `FLUSH_INTERVAL_MS`, and sent
//! through the [`Collector`] port, up to [`SENDS_IN_FLIGHT`] at once. Each answer settles its
//! batch:
//! - delivered: its readings are settled;
//! - retryable (no answer, timeout, 408, 429, 5xx), or a configuration fault (401, 403, 404, any
//!   other status; counted and logged as an error):
//!   - while the collector takes other batches (one was delivered in the same round, or since
//!     this batch last failed), the batch is **isolated**: split in halves sent again at once,
//!     until the failing readings are alone; a lone one is retried on its own backoff, never
//!     holding the rest back, and once it has been failing that way for `DEAD_LETTER_AFTER_S`
//!     with the collector still answering, it becomes a dead letter;
//!   - otherwise the collector looks down: the whole outbox backs off (capped exponential, with
//!     jitter; new traffic does not cut it short), then **probes** with one batch at a time: the
//!     oldest, and if it fails another (a different batch, or a new one), so that a batch the
//!     collector chokes on cannot pass for an outage; two failed probes back off again, and one
//!     delivered ends the outage;
//! - refused for what it holds (400, 413, 422, or a reading that cannot be encoded): split in
//!   halves sent again at once, until the refused readings are alone; a lone refused reading
//!   becomes a dead letter in the store, and is settled. Dead letters are bounded by the store.
//!
//! Settled readings are trimmed from the store once per round and segment: a segment whose
//! readings are all settled is removed; a partly settled one is rewritten with the rest once
//! more than a batch of it has been settled since (so a segment never costs a record per
//! reading, and one that merely straddles a batch boundary costs none: a crash then sends at
//! most a batch of its readings again). The store is read back ([`Outbox::restore`])
//! only after memory was lost: an evicted Durable Object, a crashed Spin instance.
//!
//! Guarantee: every reading of an appended segment is sent until it is settled. A crash between a
//! send and its trim sends those readings again (at least once; collectors deduplicate by reading
//! id). After a restore a retried batch gets a new batch id.
//!
//! The engine itself is synchronous state; [`deliver_round`] is the async part, the same for
//! every host, and never holds a borrow across an await, so requests keep appending while a
//! round waits on the collector.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::ops::Range;
use std::rc::Rc;

use serde::Serialize;

use crate::application::delivery::policy::{
    verdict, FlushPolicy, RetryPolicy, Verdict, LONE_REQUEST_WAIT_MS, MIN_LOOK_AHEAD_MS,
};
use crate::application::delivery::sink::{encode_batch, encode_json_batch, SinkFormat};
use crate::domain::enrich::StoredReading;
use crate::domain::ids;
use crate::ports::{
    Clock, Collector, CollectorRequest, DeadLetter, Entropy, IsolatedReading, Level, Log,
    OutboxStore, Secret, SegmentAppend, StoreError, StoredSegment, Timer, Trim,
};

/// Batches one round sends at once, so delivery keeps up with a busy colo or instance.
pub const SENDS_IN_FLIGHT: usize = 4;
/// A collector that has not answered by then counts as not answering.
pub const COLLECTOR_TIMEOUT_MS: u64 = 10_000;

/// How the host's delivery driver learns that work is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wakeups {
    /// The host schedules it when work arrives: a Durable Object sets its alarm on accept.
    OnArrival,
    /// Nothing can wake it: a wasi:http instance's flusher task runs in the component-model
    /// task of the request that started it, and a later request cannot wake it (that needs
    /// wit-bindgen's `inter-task-wakeup`). It looks again when a full batch is expected at the
    /// instance's arrival rate, and an instance that has served one request so far flushes
    /// after `LONE_REQUEST_WAIT_MS` (a host may run one request per instance).
    Polled,
}

#[derive(Debug, Clone, PartialEq)]
pub struct OutboxConfig {
    pub flush: FlushPolicy,
    pub retry: RetryPolicy,
    pub max_backlog: usize,
    pub backlog_retry_after_s: u32,
    pub wakeups: Wakeups,
    /// How long an isolated reading is retried on its own before it becomes a dead letter
    /// (`DEAD_LETTER_AFTER_S`); 0: for ever.
    pub give_up_ms: u64,
    /// The node that sends (`EDGE_NODE`, else `local`): every envelope names it. Each reading
    /// names the node that received it (`edge.node`), so a batch of a database several nodes
    /// share needs no cut at node boundaries, and goes out full.
    pub node: Rc<str>,
}

/// Where batches go and in what shape.
#[derive(Debug, Clone, PartialEq)]
pub struct SinkTarget {
    pub format: SinkFormat,
    pub url: String,
    pub token: Option<Secret>,
    /// Registry tags that become Influx tags (`INFLUX_TAG_KEYS`).
    pub tag_keys: Vec<String>,
}

/// The backlog is at `MAX_BACKLOG`: the request is refused with 503 and this `Retry-After`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BacklogFull {
    pub limit: usize,
    pub retry_after_s: u32,
}

/// Room for one request's readings, taken before its segment is appended (an append can wait
/// on the store while other requests come in), and given back by `push` or `release`.
#[derive(Debug)]
#[must_use = "a reservation must be pushed or released"]
pub struct Reservation(usize);

/// Counters since this outbox was made (an isolate or instance's life).
#[derive(Debug, Default, Clone, Serialize)]
pub struct OutboxStats {
    pub since_ms: u64,
    pub accepted_segments: u64,
    pub accepted_readings: u64,
    pub backlog_refusals: u64,
    pub flushed_batches: u64,
    pub flushed_readings: u64,
    pub failed_attempts: u64,
    pub dead_letter_batches: u64,
    pub dead_letter_readings: u64,
    /// Dead letters the store dropped to stay within its bounds (oldest first).
    pub dead_letters_dropped: u64,
    /// Batches split because the collector refused what they held.
    pub split_batches: u64,
    /// Batches isolated: failing with a retryable status while the collector took others.
    pub isolated_batches: u64,
    /// Isolated readings given up after `DEAD_LETTER_AFTER_S` (among the dead letters).
    pub given_up_readings: u64,
    /// Batches sent alone to tell whether the collector is down (after a backoff).
    pub probes: u64,
    /// Attempts the collector refused as a configuration fault (401, 403, 404...).
    pub config_faults: u64,
    pub recovered_segments: u64,
    pub recovered_readings: u64,
    /// Segments and readings claimed from a shared outbox (`delivery::shared_outbox`).
    pub claimed_segments: u64,
    pub claimed_readings: u64,
    pub store_failures: u64,
}

/// What `/admin/stats` shows of an outbox: its counters, then its state.
#[derive(Debug, Serialize)]
pub struct OutboxReport<'a> {
    #[serde(flatten)]
    pub stats: &'a OutboxStats,
    pub pending: usize,
    pub in_flight_batches: usize,
    /// Readings retried on their own (see `isolated_batches`), held in this outbox.
    pub isolated_readings: usize,
    pub consecutive_failures: u32,
    pub retry_at_ms: Option<u64>,
}

struct Entry<K> {
    key: K,
    node: Rc<str>,
    readings: Vec<StoredReading>,
    /// Readings [0, cut) are in batches.
    cut: usize,
    settled: Vec<bool>,
    settled_count: usize,
    /// The settled prefix the store has been told of, and (for a store that trims rows) which
    /// settled readings it has been told of.
    trimmed: usize,
    told: Vec<bool>,
}

/// Entries are kept in age order (received time, then arrival), so restored old segments go
/// out first.
type EntryId = (u64, u64);

struct Flight {
    id: String,
    parts: Vec<(EntryId, Range<usize>)>,
    readings: usize,
    sending: bool,
    /// Retryable failures of this batch, or of the batch it was split from.
    failures: u32,
    last_failed_ms: Option<u64>,
    /// Since when the collector has failed this batch (or the one it was split from) while
    /// taking others: then it goes alone, on its own backoff (see the module comment).
    isolated: Option<Isolation>,
    /// A lone isolated reading that failed this round, for a store that keeps such readings
    /// apart (`isolated_waiting`).
    to_set_aside: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Isolation {
    since_ms: u64,
    /// When a lone isolated reading is due again.
    retry_at_ms: u64,
}

impl Flight {
    fn new(id: String, parts: Vec<(EntryId, Range<usize>)>) -> Self {
        Self {
            id,
            readings: parts.iter().map(|(_, r)| r.len()).sum(),
            parts,
            sending: false,
            failures: 0,
            last_failed_ms: None,
            isolated: None,
            to_set_aside: false,
        }
    }

    /// Whether the next round may send it: not under way, and if isolated, due.
    fn is_due(&self, now: u64) -> bool {
        !self.sending && self.isolated.is_none_or(|i| i.retry_at_ms <= now)
    }
}

/// One batch to send now.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub batch_id: String,
    pub node: Rc<str>,
    pub readings: Vec<StoredReading>,
}

/// What an attempt came back with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Answered {
        status: u16,
        detail: String,
    },
    NoAnswer(String),
    /// A stored document is not an enriched reading (the edge never stores one): permanent.
    Unencodable(String),
}

impl Outcome {
    fn verdict(&self) -> Verdict {
        match self {
            Self::Answered { status, .. } => verdict(Some(*status)),
            Self::NoAnswer(_) => verdict(None),
            Self::Unencodable(_) => Verdict::Refused,
        }
    }

    fn status(&self) -> Option<u16> {
        match self {
            Self::Answered { status, .. } => Some(*status),
            _ => None,
        }
    }

    fn detail(&self) -> &str {
        match self {
            Self::Answered { detail, .. } | Self::NoAnswer(detail) | Self::Unencodable(detail) => {
                detail
            }
        }
    }
}

/// What the driver should do now.
#[derive(Debug)]
pub enum Due {
    Send(Vec<Attempt>),
    /// Nothing before this Unix ms.
    At(u64),
    /// Nothing is held; the driver may stop.
    Idle,
}

/// When the driver should run again after a round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    At(u64),
    Idle,
}

#[derive(Debug, Default)]
struct Arrivals {
    segments: u64,
    first_ms: u64,
    readings: u64,
}

pub struct Outbox<K> {
    config: OutboxConfig,
    entries: BTreeMap<EntryId, Entry<K>>,
    next_seq: u64,
    /// Batches cut and not yet settled, oldest first: at most `SENDS_IN_FLIGHT` that are not
    /// isolated, and the isolated ones.
    flights: VecDeque<Flight>,
    /// Readings not yet in a batch.
    unbatched: usize,
    /// Readings held and not yet settled, and readings reserved by requests still appending.
    held: usize,
    reserved: usize,
    /// Backoffs in a row while the collector looks down (0: it does not), and when sending
    /// may resume.
    failures: u32,
    retry_at: Option<u64>,
    /// This round: a batch failed with no sign the collector is up; one was delivered.
    round_failed: bool,
    round_delivered: bool,
    /// While the collector looks down: the batches probed since the last backoff.
    probed: Vec<String>,
    /// When a batch was last delivered: evidence the collector is up.
    last_delivered_ms: Option<u64>,
    /// Entries whose settled prefix may have grown this round.
    touched: BTreeSet<EntryId>,
    /// Whether the host's delivery driver runs (a flusher task): see `push`.
    driver: bool,
    arrivals: Arrivals,
    stats: OutboxStats,
}

impl<K: Clone + PartialEq> Outbox<K> {
    pub fn new(config: OutboxConfig, now_ms: u64) -> Self {
        Self {
            config,
            entries: BTreeMap::new(),
            next_seq: 0,
            flights: VecDeque::new(),
            unbatched: 0,
            held: 0,
            reserved: 0,
            failures: 0,
            retry_at: None,
            round_failed: false,
            round_delivered: false,
            probed: Vec::new(),
            last_delivered_ms: None,
            touched: BTreeSet::new(),
            driver: false,
            arrivals: Arrivals::default(),
            stats: OutboxStats {
                since_ms: now_ms,
                ..OutboxStats::default()
            },
        }
    }

    pub fn config(&self) -> &OutboxConfig {
        &self.config
    }

    /// Takes room for `n` readings, or refuses: the one backlog bound of every host.
    pub fn reserve(&mut self, n: usize) -> Result<Reservation, BacklogFull> {
        if self.held + self.reserved + n > self.config.max_backlog {
            self.stats.backlog_refusals += 1;
            return Err(BacklogFull {
                limit: self.config.max_backlog,
                retry_after_s: self.config.backlog_retry_after_s,
            });
        }
        self.reserved += n;
        Ok(Reservation(n))
    }

    /// Gives back room that was not used (the append failed, or the request was refused).
    pub fn release(&mut self, reservation: Reservation) {
        self.reserved = self.reserved.saturating_sub(reservation.0);
    }

    /// Queues a segment the store has made durable under `key`. True when the host must start
    /// its delivery driver (none is running).
    pub fn push(
        &mut self,
        reservation: Reservation,
        key: K,
        received_at_ms: u64,
        node: &str,
        readings: Vec<StoredReading>,
    ) -> bool {
        self.release(reservation);
        let n = readings.len() as u64;
        if self.arrivals.segments == 0 {
            self.arrivals.first_ms = received_at_ms;
        }
        self.arrivals.segments += 1;
        self.arrivals.readings += n;
        self.stats.accepted_segments += 1;
        self.stats.accepted_readings += n;
        self.insert(key, received_at_ms, node.into(), readings);
        !std::mem::replace(&mut self.driver, true)
    }

    /// Segments read back from the store after memory was lost, except those held already.
    /// True when the host must start its delivery driver.
    pub fn restore(&mut self, segments: Vec<StoredSegment<K>>) -> bool {
        let (taken, readings) = self.insert_new(segments);
        self.stats.recovered_segments += taken;
        self.stats.recovered_readings += readings;
        self.held > 0 && !std::mem::replace(&mut self.driver, true)
    }

    /// Segments claimed from a shared outbox, to be delivered by this instance. `attempts`: how
    /// often any of them failed before, so that the next failure backs off further.
    pub fn hold(&mut self, segments: Vec<StoredSegment<K>>, attempts: u32) {
        let (taken, readings) = self.insert_new(segments);
        self.stats.claimed_segments += taken;
        self.stats.claimed_readings += readings;
        self.failures = self.failures.max(attempts);
    }

    /// Queues the segments not held already and not empty: how many, and their readings.
    fn insert_new(&mut self, segments: Vec<StoredSegment<K>>) -> (u64, u64) {
        let (mut taken, mut readings) = (0, 0);
        for s in segments {
            if s.readings.is_empty() || self.holds(&s.key) {
                continue;
            }
            taken += 1;
            readings += s.readings.len() as u64;
            self.insert(s.key, s.received_at_ms, s.node.into(), s.readings);
        }
        (taken, readings)
    }

    /// Gives up every segment held, for another attempt by whoever claims them next (a shared
    /// outbox after a failed round): each key with which of its readings are settled. The
    /// backoff stays, so this outbox claims nothing before `retry_at`.
    pub fn release_all(&mut self) -> Vec<(K, Vec<bool>)> {
        self.flights.clear();
        self.touched.clear();
        self.unbatched = 0;
        self.held = 0;
        std::mem::take(&mut self.entries)
            .into_values()
            .map(|e| (e.key, e.settled))
            .collect()
    }

    /// When sending may resume after a failure.
    pub fn retry_at(&self) -> Option<u64> {
        self.retry_at
    }

    fn insert(&mut self, key: K, received_at_ms: u64, node: Rc<str>, readings: Vec<StoredReading>) {
        let n = readings.len();
        self.held += n;
        self.unbatched += n;
        self.next_seq += 1;
        self.entries.insert(
            (received_at_ms, self.next_seq),
            Entry {
                key,
                node,
                settled: vec![false; n],
                told: vec![false; n],
                readings,
                cut: 0,
                settled_count: 0,
                trimmed: 0,
            },
        );
    }

    pub fn holds(&self, key: &K) -> bool {
        self.entries.values().any(|e| &e.key == key)
    }

    /// Readings held and not yet settled.
    pub fn pending(&self) -> usize {
        self.held
    }

    /// True while no delivery is failing: the collector answered the last round (or none ran).
    pub fn is_healthy(&self) -> bool {
        self.failures == 0
    }

    pub fn stats(&self) -> &OutboxStats {
        &self.stats
    }

    /// A store operation failed (counted; the engine keeps going).
    pub fn note_store_failure(&mut self) {
        self.stats.store_failures += 1;
    }

    /// Live state and counters, for `/admin/stats`.
    /// The counters and the state now, for the admin API.
    pub fn report(&self) -> OutboxReport<'_> {
        OutboxReport {
            stats: &self.stats,
            pending: self.held,
            in_flight_batches: self.batches_in_flight(),
            isolated_readings: self
                .flights
                .iter()
                .filter(|f| f.isolated.is_some())
                .map(|f| f.readings)
                .sum(),
            consecutive_failures: self.failures,
            retry_at_ms: self.retry_at,
        }
    }

    pub fn stats_json(&self) -> serde_json::Value {
        serde_json::to_value(self.report()).unwrap_or_default()
    }

    fn oldest_unbatched(&self) -> Option<u64> {
        self.entries
            .iter()
            .find(|(_, e)| e.cut < e.readings.len())
            .map(|((received_at_ms, _), _)| *received_at_ms)
    }

    /// When new readings should go out by the flush policy (and the wakeup rules).
    fn batch_due_at(&self, now: u64) -> Option<u64> {
        let oldest = self.oldest_unbatched()?;
        let flush = self.config.flush;
        if self.unbatched >= flush.max_items {
            return Some(now);
        }
        let due = oldest.saturating_add(flush.max_age_ms);
        if self.config.wakeups == Wakeups::OnArrival {
            return Some(due);
        }
        // Polled: see `Wakeups::Polled`.
        let a = &self.arrivals;
        if a.segments <= 1 {
            return Some(due.min(a.first_ms.saturating_add(LONE_REQUEST_WAIT_MS)));
        }
        let elapsed_ms = now.saturating_sub(a.first_ms).max(1) as f64;
        let per_ms = a.readings as f64 / elapsed_ms;
        let missing = flush.max_items.saturating_sub(self.unbatched) as f64;
        let full_in_ms = (missing / per_ms).ceil() as u64;
        Some(due.min(now.saturating_add(full_in_ms.max(MIN_LOOK_AHEAD_MS))))
    }

    /// When the driver should run next, or None when nothing is held.
    pub fn next_wake(&self, now: u64) -> Option<u64> {
        let flights = self
            .flights
            .iter()
            .filter(|f| !f.sending)
            .map(|f| f.isolated.map_or(now, |i| i.retry_at_ms.max(now)))
            .min();
        let work = match (flights, self.batch_due_at(now)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }?;
        Some(self.retry_at.map_or(work, |r| work.max(r)))
    }

    /// When the driver should run again; `Idle` records that it stops, in the same step in
    /// which it decides to (see [`take_due`](Self::take_due)).
    pub fn next_after_round(&mut self, now: u64) -> Next {
        match self.next_wake(now) {
            Some(at) => Next::At(at),
            None => {
                self.driver = false;
                Next::Idle
            }
        }
    }

    /// Whether the collector looks down (see the module comment): sending is one probe at a
    /// time.
    fn probing(&self) -> bool {
        self.failures > 0
    }

    /// Batches cut that are not isolated: what `SENDS_IN_FLIGHT` bounds.
    fn batches_in_flight(&self) -> usize {
        self.flights.iter().filter(|f| f.isolated.is_none()).count()
    }

    /// The batches to send now. While the collector looks down, one probe (see the module
    /// comment); else every batch due (retries under their ids, isolated readings on their
    /// own backoff), then new ones while a batch is due. `Idle` also records that the driver
    /// stops, in the same step in which it decides to, so a `push` right after starts a new one.
    pub fn take_due(&mut self, now: u64, entropy: &dyn Entropy) -> Due {
        if let Some(at) = self.retry_at.filter(|at| *at > now) {
            return Due::At(at);
        }
        let mut attempts = Vec::new();
        if self.probing() {
            if let Some(probe) = self.next_probe(now, entropy) {
                self.stats.probes += 1;
                self.flights[probe].sending = true;
                self.probed.push(self.flights[probe].id.clone());
                attempts.push(self.attempt_of(&self.flights[probe]));
                return Due::Send(attempts);
            }
            // Nothing left to probe with but isolated readings: they go on their own backoff.
            self.failures = 0;
            self.probed.clear();
        }
        let mut isolated = 0;
        for i in 0..self.flights.len() {
            let flight = &self.flights[i];
            if !flight.is_due(now) || (flight.isolated.is_some() && isolated == SENDS_IN_FLIGHT) {
                continue;
            }
            isolated += usize::from(flight.isolated.is_some());
            self.flights[i].sending = true;
            attempts.push(self.attempt_of(&self.flights[i]));
        }
        while self.batches_in_flight() < SENDS_IN_FLIGHT
            && self.batch_due_at(now).is_some_and(|at| at <= now)
        {
            let mut flight = self.cut(now, entropy);
            flight.sending = true;
            attempts.push(self.attempt_of(&flight));
            self.flights.push_back(flight);
        }
        if !attempts.is_empty() {
            return Due::Send(attempts);
        }
        match self.next_wake(now) {
            Some(at) => Due::At(at),
            None => {
                self.driver = false;
                Due::Idle
            }
        }
    }

    /// The batch to probe with: the oldest not isolated and not probed since the last backoff,
    /// else a new one cut now (when readings wait and there is room); at most
    /// [`probe_size`](Self::probe_size) readings of it.
    fn next_probe(&mut self, now: u64, entropy: &dyn Entropy) -> Option<usize> {
        let size = self.probe_size();
        let waiting = self
            .flights
            .iter()
            .position(|f| !f.sending && f.isolated.is_none() && !self.probed.contains(&f.id));
        let index = match waiting {
            Some(i) => i,
            None if self.unbatched > 0 && self.batches_in_flight() < SENDS_IN_FLIGHT => {
                let flight = self.cut(now, entropy);
                self.flights.push_back(flight);
                self.flights.len() - 1
            }
            None => return None,
        };
        if self.flights[index].readings > size {
            self.split_at(index, size, now, None, entropy);
        }
        Some(index)
    }

    /// Half a batch more after each backoff in a row: a collector that chokes on something in
    /// every batch (one device's readings, spread over all of them) is soon sent a probe
    /// without it, and once one is delivered the rest is isolated batch by batch. A collector
    /// that is really down gets small probes, one at a time. The size follows the failures,
    /// which a shared outbox keeps with its rows, so it holds across instances.
    fn probe_size(&self) -> usize {
        (self.config.flush.max_items >> self.failures.saturating_sub(1).min(31)).max(1)
    }

    fn attempt_of(&self, flight: &Flight) -> Attempt {
        let mut readings = Vec::with_capacity(flight.readings);
        for (id, range) in &flight.parts {
            if let Some(e) = self.entries.get(id) {
                readings.extend(e.readings[range.clone()].iter().cloned());
            }
        }
        Attempt {
            batch_id: flight.id.clone(),
            node: self.config.node.clone(),
            readings,
        }
    }

    /// Cuts the next batch from the oldest unbatched readings, across segments.
    fn cut(&mut self, now: u64, entropy: &dyn Entropy) -> Flight {
        let mut left = self.config.flush.max_items;
        let mut parts = Vec::new();
        for (id, e) in self.entries.iter_mut() {
            if left == 0 {
                break;
            }
            let take = (e.readings.len() - e.cut).min(left);
            if take == 0 {
                continue;
            }
            parts.push((*id, e.cut..e.cut + take));
            e.cut += take;
            left -= take;
        }
        self.unbatched -= self.config.flush.max_items - left;
        self.next_seq += 1;
        Flight::new(batch_id(now, self.next_seq, entropy), parts)
    }

    /// Applies an attempt's outcome; `delivered_in_round`: another batch of the same round was
    /// delivered (the collector is up). A refused lone reading, or an isolated one given up,
    /// returns the dead letter to keep: the driver writes it, then calls
    /// [`dead_lettered`](Self::dead_lettered) (or, if the write failed,
    /// [`dead_letter_failed`](Self::dead_letter_failed)).
    pub fn settle(
        &mut self,
        batch_id: &str,
        outcome: &Outcome,
        now: u64,
        delivered_in_round: bool,
        entropy: &dyn Entropy,
    ) -> Option<DeadLetter> {
        let index = self.flights.iter().position(|f| f.id == batch_id)?;
        match outcome.verdict() {
            Verdict::Delivered => {
                let flight = self.flights.remove(index)?;
                self.stats.flushed_batches += 1;
                self.stats.flushed_readings += flight.readings as u64;
                self.last_delivered_ms = Some(now);
                self.round_delivered = true;
                self.settle_parts(&flight);
                None
            }
            verdict @ (Verdict::Retry | Verdict::Misconfigured) => {
                if verdict == Verdict::Misconfigured {
                    self.stats.config_faults += 1;
                }
                self.stats.failed_attempts += 1;
                let last_delivered = self.last_delivered_ms;
                let (probing, retry, give_up) =
                    (self.probing(), self.config.retry, self.config.give_up_ms);
                let flight = &mut self.flights[index];
                flight.sending = false;
                // The collector took something else meanwhile: it is this batch it fails.
                let up = delivered_in_round
                    || flight
                        .last_failed_ms
                        .is_some_and(|t| last_delivered.is_some_and(|d| d > t));
                flight.failures += 1;
                flight.last_failed_ms = Some(now);
                let Some(since) = flight.isolated.map(|i| i.since_ms).or(up.then_some(now)) else {
                    self.round_failed = true;
                    return None;
                };
                let newly = flight.isolated.is_none();
                if flight.readings > 1 {
                    self.stats.isolated_batches += u64::from(newly);
                    let half = flight.readings / 2;
                    self.split_at(index, half, now, Some(since), entropy);
                    return None;
                }
                let answered = matches!(outcome, Outcome::Answered { .. });
                if give_up > 0 && answered && !probing && now - since >= give_up {
                    return Some(self.dead_letter_of(index, outcome, now));
                }
                let delay = retry.delay_ms(flight.failures, jitter(entropy));
                flight.isolated = Some(Isolation {
                    since_ms: since,
                    retry_at_ms: now + delay,
                });
                flight.to_set_aside = true;
                self.stats.isolated_batches += u64::from(newly);
                None
            }
            Verdict::Refused if self.flights[index].readings > 1 => {
                let isolated = self.flights[index].isolated.map(|i| i.since_ms);
                let half = self.flights[index].readings / 2;
                self.split_at(index, half, now, isolated, entropy);
                self.stats.split_batches += 1;
                None
            }
            Verdict::Refused => Some(self.dead_letter_of(index, outcome, now)),
        }
    }

    fn dead_letter_of(&self, index: usize, outcome: &Outcome, now: u64) -> DeadLetter {
        let flight = &self.flights[index];
        let attempt = self.attempt_of(flight);
        DeadLetter {
            batch_id: flight.id.clone(),
            failed_at_ms: now,
            status: outcome.status(),
            detail: outcome.detail().to_owned(),
            readings: flight.readings,
            body: encode_json_batch(
                &flight.id,
                &self.config.node,
                now,
                attempt.readings.iter().map(StoredReading::as_str),
            ),
        }
    }

    /// Replaces the flight at `index` by two: its first `first` readings and the rest, each
    /// under a new id and due at once (a split is no failure of the collector: no backoff); an
    /// isolated batch's parts stay isolated since the same time.
    fn split_at(
        &mut self,
        index: usize,
        first: usize,
        now: u64,
        isolated: Option<u64>,
        entropy: &dyn Entropy,
    ) {
        let Some(flight) = self.flights.remove(index) else {
            return;
        };
        let mut left = first;
        let (mut first, mut second) = (Vec::new(), Vec::new());
        for (id, range) in &flight.parts {
            let take = range.len().min(left);
            if take > 0 {
                first.push((*id, range.start..range.start + take));
            }
            if take < range.len() {
                second.push((*id, range.start + take..range.end));
            }
            left -= take;
        }
        let mut half = |parts: Vec<(EntryId, Range<usize>)>| {
            self.next_seq += 1;
            let mut half = Flight::new(batch_id(now, self.next_seq, entropy), parts);
            half.failures = flight.failures;
            half.last_failed_ms = flight.last_failed_ms;
            half.isolated = isolated.map(|since_ms| Isolation {
                since_ms,
                retry_at_ms: now,
            });
            half
        };
        let (first, second) = (half(first), half(second));
        self.flights.insert(index, second);
        self.flights.insert(index, first);
    }

    /// The dead letter of `batch_id` is kept (the store dropped `dropped` older ones to stay in
    /// its bounds): its readings are settled.
    pub fn dead_lettered(&mut self, batch_id: &str, dropped: u64) {
        self.stats.dead_letters_dropped += dropped;
        if let Some(index) = self.flights.iter().position(|f| f.id == batch_id) {
            if let Some(flight) = self.flights.remove(index) {
                self.stats.dead_letter_batches += 1;
                self.stats.dead_letter_readings += flight.readings as u64;
                if flight.isolated.is_some() {
                    self.stats.given_up_readings += flight.readings as u64;
                }
                self.settle_parts(&flight);
            }
        }
    }

    /// The dead letter could not be kept: the batch stays and is tried again after a backoff,
    /// rather than its readings being dropped.
    pub fn dead_letter_failed(&mut self, batch_id: &str) {
        if let Some(f) = self.flights.iter_mut().find(|f| f.id == batch_id) {
            f.sending = false;
        }
        self.stats.store_failures += 1;
        self.round_failed = true;
    }

    fn settle_parts(&mut self, flight: &Flight) {
        for (id, range) in &flight.parts {
            if let Some(e) = self.entries.get_mut(id) {
                for i in range.clone() {
                    if !std::mem::replace(&mut e.settled[i], true) {
                        e.settled_count += 1;
                        self.held -= 1;
                    }
                }
                self.touched.insert(*id);
            }
        }
    }

    /// Lone isolated readings waiting for their own retry, for a store that keeps them apart
    /// (`OutboxStore::keeps_isolated`): each is moved there, then
    /// [`isolated_moved`](Self::isolated_moved).
    pub fn isolated_waiting(&self) -> Vec<IsolatedReading<K>> {
        self.flights
            .iter()
            .filter(|f| f.to_set_aside && !f.sending && f.readings == 1)
            .filter_map(|f| {
                let isolation = f.isolated?;
                let (id, range) = f.parts.first()?;
                let entry = self.entries.get(id)?;
                Some(IsolatedReading {
                    batch_id: f.id.clone(),
                    key: entry.key.clone(),
                    index: range.start,
                    received_at_ms: id.0,
                    node: entry.node.to_string(),
                    reading: entry.readings.get(range.start)?.clone(),
                    since_ms: isolation.since_ms,
                    failures: f.failures,
                    last_failed_ms: f.last_failed_ms.unwrap_or(isolation.since_ms),
                    retry_at_ms: isolation.retry_at_ms,
                })
            })
            .collect()
    }

    /// The store keeps the isolated reading of `batch_id` now: it is settled here.
    pub fn isolated_moved(&mut self, batch_id: &str) {
        if let Some(index) = self.flights.iter().position(|f| f.id == batch_id) {
            if let Some(flight) = self.flights.remove(index) {
                self.settle_parts(&flight);
            }
        }
    }

    /// Isolated readings claimed back from a store that keeps them apart: each is one flight,
    /// isolated since when it was first, due now.
    pub fn hold_isolated(&mut self, readings: Vec<IsolatedReading<K>>, now: u64) {
        for r in readings {
            if self.holds(&r.key) {
                continue;
            }
            self.stats.claimed_segments += 1;
            self.stats.claimed_readings += 1;
            self.insert(
                r.key,
                r.received_at_ms,
                r.node.as_str().into(),
                vec![r.reading],
            );
            let id = (r.received_at_ms, self.next_seq);
            if let Some(e) = self.entries.get_mut(&id) {
                e.cut = 1;
            }
            self.unbatched -= 1;
            let mut flight = Flight::new(r.batch_id, vec![(id, 0..1)]);
            flight.failures = r.failures;
            flight.last_failed_ms = Some(r.last_failed_ms);
            flight.isolated = Some(Isolation {
                since_ms: r.since_ms,
                retry_at_ms: now,
            });
            self.flights.push_back(flight);
        }
    }

    /// Ends a round: backs off or probes on as the module comment says, and returns the store
    /// updates the round owes, one per touched segment (fully settled segments leave memory
    /// here).
    pub fn finish_round(&mut self, now: u64, jitter: f64, by_row: bool) -> Vec<Trim<K>> {
        let failed = std::mem::take(&mut self.round_failed);
        let delivered = std::mem::take(&mut self.round_delivered);
        if delivered {
            self.failures = 0;
            self.retry_at = None;
            self.probed.clear();
        } else if failed {
            let probed_out = self.probed.len() >= 2 || !self.can_probe_again();
            if !self.probing() || probed_out {
                self.failures += 1;
                self.retry_at = Some(now + self.config.retry.delay_ms(self.failures, jitter));
                self.probed.clear();
            } else {
                self.retry_at = None; // the next probe, at once
            }
        }
        let mut trims = Vec::new();
        for id in std::mem::take(&mut self.touched) {
            let Some(e) = self.entries.get_mut(&id) else {
                continue;
            };
            let prefix = e.settled.iter().take_while(|s| **s).count();
            let whole = prefix == e.readings.len();
            let rows: Vec<usize> = if by_row {
                (0..e.readings.len())
                    .filter(|i| e.settled[*i] && !std::mem::replace(&mut e.told[*i], true))
                    .collect()
            } else {
                Vec::new()
            };
            let due = if by_row {
                !rows.is_empty()
            } else {
                whole || prefix - e.trimmed > self.config.flush.max_items
            };
            if !due {
                continue;
            }
            e.trimmed = prefix;
            let trim = Trim {
                key: e.key.clone(),
                settled: prefix,
                node: e.node.clone(),
                readings: e.readings.clone(),
                rows,
                whole,
            };
            if whole {
                self.entries.remove(&id);
            }
            trims.push(trim);
        }
        trims
    }

    /// Whether another batch than those probed since the last backoff could be probed.
    fn can_probe_again(&self) -> bool {
        self.flights
            .iter()
            .any(|f| f.isolated.is_none() && !self.probed.contains(&f.id))
            || (self.unbatched > 0 && self.batches_in_flight() < SENDS_IN_FLIGHT)
    }
}

/// A UUIDv7; without entropy, still unique within this outbox (its time and sequence number).
fn batch_id(now: u64, seq: u64, entropy: &dyn Entropy) -> String {
    let mut rand = [0u8; 10];
    match entropy.fill(&mut rand) {
        Ok(()) => ids::uuid_v7(now, rand),
        Err(_) => format!("batch-{now}-{seq}"),
    }
}

/// A number in [0, 1) for the retry jitter.
fn jitter(entropy: &dyn Entropy) -> f64 {
    let mut b = [0u8; 2];
    match entropy.fill(&mut b) {
        Ok(()) => f64::from(u16::from_le_bytes(b)) / 65_536.0,
        Err(_) => 0.5,
    }
}

/// The ports a delivery round uses.
pub struct Delivery<'a, S, C, T> {
    pub store: &'a S,
    pub collector: &'a C,
    pub timer: &'a T,
    pub clock: &'a dyn Clock,
    pub entropy: &'a dyn Entropy,
    pub log: &'a dyn Log,
    pub sink: &'a SinkTarget,
}

/// Makes reserved readings durable, then queues them: one `append` to the store (before the
/// device's answer), and the reservation given back if that write fails, so a refused request
/// holds no room. `Ok(true)` when the host must start its delivery driver.
pub async fn append_reserved<K, S>(
    outbox: &RefCell<Outbox<K>>,
    store: &S,
    reservation: Reservation,
    received_at_ms: u64,
    node: &str,
    readings: Vec<StoredReading>,
) -> Result<bool, StoreError>
where
    K: Clone + PartialEq,
    S: SegmentAppend<Key = K>,
{
    match store.append(received_at_ms, node, &readings).await {
        Ok(key) => Ok(outbox
            .borrow_mut()
            .push(reservation, key, received_at_ms, node, readings)),
        Err(e) => {
            outbox.borrow_mut().release(reservation);
            Err(e)
        }
    }
}

/// One delivery round, the same on every host: sends what is due (up to `SENDS_IN_FLIGHT`
/// batches at once), settles each answer, keeps dead letters, trims the store, and says when to
/// run again. Requests keep appending meanwhile: no borrow of `outbox` is held across an await.
pub async fn deliver_round<K, S, C, T>(
    outbox: &RefCell<Outbox<K>>,
    d: &Delivery<'_, S, C, T>,
) -> Next
where
    K: Clone + PartialEq,
    S: OutboxStore<Key = K>,
    C: Collector,
    T: Timer,
{
    let attempts = match outbox.borrow_mut().take_due(d.clock.now_ms(), d.entropy) {
        Due::Send(attempts) => attempts,
        Due::At(at) => return Next::At(at),
        Due::Idle => return Next::Idle,
    };
    let outcomes = futures_util::future::join_all(attempts.iter().map(|a| send(a, d))).await;
    let delivered = outcomes.iter().any(|o| o.verdict() == Verdict::Delivered);
    for (attempt, outcome) in attempts.iter().zip(outcomes) {
        let now = d.clock.now_ms();
        let letter =
            outbox
                .borrow_mut()
                .settle(&attempt.batch_id, &outcome, now, delivered, d.entropy);
        log_outcome(d.log, attempt, &outcome);
        if let Some(letter) = letter {
            match d.store.dead_letter(&letter).await {
                Ok(dropped) => {
                    if dropped > 0 {
                        let n = dropped.to_string();
                        d.log
                            .emit(Level::Warn, "dead_letters_dropped", &[("count", &n)]);
                    }
                    outbox
                        .borrow_mut()
                        .dead_lettered(&attempt.batch_id, dropped)
                }
                Err(e) => {
                    d.log.emit(
                        Level::Error,
                        "dead_letter_store_failed",
                        &[("batch_id", &attempt.batch_id), ("error", &e.0)],
                    );
                    outbox.borrow_mut().dead_letter_failed(&attempt.batch_id);
                }
            }
        }
    }
    if d.store.keeps_isolated() {
        let waiting = outbox.borrow().isolated_waiting();
        for reading in waiting {
            match d.store.isolate(&reading).await {
                Ok(()) => outbox.borrow_mut().isolated_moved(&reading.batch_id),
                Err(e) => {
                    // It stays here, retried on its own backoff; moved on a later round.
                    d.log
                        .emit(Level::Warn, "outbox_isolate_failed", &[("error", &e.0)]);
                    outbox.borrow_mut().note_store_failure();
                }
            }
        }
    }
    let trims =
        outbox
            .borrow_mut()
            .finish_round(d.clock.now_ms(), jitter(d.entropy), d.store.trims_rows());
    for t in trims {
        if let Err(e) = d.store.trim(&t).await {
            // The segment stays in the store: after a restore its readings go out again (a
            // duplicate the collector drops by id), never a loss.
            d.log
                .emit(Level::Warn, "outbox_trim_failed", &[("error", &e.0)]);
            outbox.borrow_mut().note_store_failure();
        }
    }
    let idle = outbox.borrow().pending() == 0;
    if let Err(e) = d.store.end_round(idle).await {
        d.log
            .emit(Level::Warn, "outbox_trim_failed", &[("error", &e.0)]);
        outbox.borrow_mut().note_store_failure();
    }
    outbox.borrow_mut().next_after_round(d.clock.now_ms())
}

async fn send<S, C: Collector, T: Timer>(attempt: &Attempt, d: &Delivery<'_, S, C, T>) -> Outcome {
    let docs = attempt.readings.iter().map(StoredReading::as_str);
    let body = match encode_batch(
        d.sink.format,
        &d.sink.tag_keys,
        &attempt.batch_id,
        &attempt.node,
        d.clock.now_ms(),
        docs,
    ) {
        Ok(body) => body,
        Err(e) => {
            return Outcome::Unencodable(format!(
                "the batch could not be encoded for the sink: {e}"
            ))
        }
    };
    let request = CollectorRequest {
        url: &d.sink.url,
        content_type: d.sink.format.content_type(),
        idempotency_key: &attempt.batch_id,
        token: d.sink.token.as_ref().map(Secret::expose),
        body,
    };
    let post = std::pin::pin!(d.collector.post(request));
    let timeout = std::pin::pin!(d.timer.sleep_ms(COLLECTOR_TIMEOUT_MS));
    match futures_util::future::select(post, timeout).await {
        futures_util::future::Either::Left((Ok(answer), _)) => Outcome::Answered {
            status: answer.status,
            detail: answer.detail,
        },
        futures_util::future::Either::Left((Err(e), _)) => Outcome::NoAnswer(e.0),
        futures_util::future::Either::Right(_) => {
            Outcome::NoAnswer(format!("no answer within {COLLECTOR_TIMEOUT_MS} ms"))
        }
    }
}

fn log_outcome(log: &dyn Log, attempt: &Attempt, outcome: &Outcome) {
    let readings = attempt.readings.len().to_string();
    let status = match outcome {
        Outcome::Answered { status, .. } => status.to_string(),
        _ => "none".to_owned(),
    };
    let fields = [
        ("batch_id", attempt.batch_id.as_str()),
        ("readings", readings.as_str()),
        ("status", status.as_str()),
        ("detail", outcome.detail()),
    ];
    match outcome.verdict() {
        Verdict::Delivered => log.emit(Level::Info, "flush_delivered", &fields[..3]),
        Verdict::Retry => log.emit(Level::Warn, "flush_retry", &fields),
        Verdict::Misconfigured => log.emit(Level::Error, "collector_misconfigured", &fields),
        Verdict::Refused if attempt.readings.len() > 1 => {
            log.emit(Level::Warn, "flush_refused_split", &fields)
        }
        Verdict::Refused => log.emit(Level::Error, "flush_dead_letter", &fields),
    }
}

/// The store of a host that keeps nothing beyond memory (the portable wasi:http flavour): the
/// outbox is the whole state, and dead letters are the last few, in memory.
#[derive(Default)]
pub struct MemoryStore {
    next: std::cell::Cell<u64>,
    dead: RefCell<VecDeque<DeadLetter>>,
}

/// Dead letters a `MemoryStore` keeps.
pub const MEMORY_DEAD_LETTERS: usize = 20;

impl MemoryStore {
    pub fn dead_letters(&self) -> Vec<DeadLetter> {
        self.dead.borrow().iter().cloned().collect()
    }
}

impl OutboxStore for MemoryStore {
    type Key = u64;

    async fn trim(&self, _trim: &Trim<u64>) -> Result<(), crate::ports::StoreError> {
        Ok(())
    }

    async fn dead_letter(&self, letter: &DeadLetter) -> Result<u64, crate::ports::StoreError> {
        let mut dead = self.dead.borrow_mut();
        let before = dead.len();
        let oldest = letter
            .failed_at_ms
            .saturating_sub(crate::application::delivery::policy::DEAD_LETTER_MAX_AGE_MS);
        dead.retain(|d| d.failed_at_ms >= oldest);
        if dead.len() == MEMORY_DEAD_LETTERS {
            dead.pop_front();
        }
        let dropped = (before - dead.len()) as u64;
        dead.push_back(letter.clone());
        Ok(dropped)
    }
}

impl SegmentAppend for MemoryStore {
    async fn append(
        &self,
        _received_at_ms: u64,
        _node: &str,
        _readings: &[StoredReading],
    ) -> Result<u64, crate::ports::StoreError> {
        let key = self.next.get() + 1;
        self.next.set(key);
        Ok(key)
    }
}

#[cfg(test)]
pub(crate) mod tests;

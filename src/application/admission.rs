//! The accept use case, the same on every host: the readings of one call (a request, or on
//! Workers the requests one group-commit call carries, each a *section*) are admitted whole or
//! refused whole, before any answer, in whichever of two protocols the host's store speaks:
//!
//! - **Reserve and charge** ([`Reserving`], driven by [`accept`]): the backlog and the token
//!   buckets are in memory beside an append-only store (Workers' batcher, the portable flavour,
//!   the in-memory host; all through [`InMemory`]).
//!   1. **room** in the backlog for every reading of the call, or the whole call is refused
//!      (`BacklogFull`) before any device pays a token;
//!   2. **the rate limit**, per section: a section over its devices' buckets is refused alone;
//!   3. **one durable append** of every admitted reading; if it fails, the tokens go back.
//! - **Atomic append** ([`AtomicAppend`], driven by [`accept_atomic`]): one write checks the
//!   backlog, takes the section's tokens and appends it (Spin's shared SQLite outbox, one
//!   statement per request), so a refused write keeps nothing and nothing is refunded.
//!
//! Either way the host gets typed verdicts ([`Admitted`], [`Refused`]), wakes its delivery when
//! something was accepted, and decides nothing else: `http::problem` alone turns a verdict into
//! a status and a document.

use std::cell::{Cell, RefCell};

use crate::application::delivery::outbox::{append_reserved, BacklogFull, Outbox, Reservation};
use crate::application::rate_limit::MemoryBuckets;
use crate::domain::enrich::StoredReading;
use crate::ports::{SegmentAppend, StoreError};

/// One request's readings and what they cost each device.
#[derive(Debug, Clone, PartialEq)]
pub struct Section {
    pub costs: Vec<(String, u32)>,
    pub readings: Vec<StoredReading>,
}

impl Section {
    /// The readings of several sections, in order, for one append.
    pub fn readings_of(sections: &[&Section]) -> Vec<StoredReading> {
        sections
            .iter()
            .flat_map(|s| s.readings.iter().cloned())
            .collect()
    }

    fn costs(&self) -> Vec<(&str, u32)> {
        self.costs.iter().map(|(d, n)| (d.as_str(), *n)).collect()
    }
}

/// What became of a section of an admitted call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admitted {
    Accepted,
    RateLimited { retry_after_s: u32 },
}

/// The whole call was refused; nothing of it was stored and no token was kept.
#[derive(Debug, Clone, PartialEq)]
pub enum Refused {
    BacklogFull(BacklogFull),
    /// The outbox (or the rate limit's store) could not take the readings now: worth a retry.
    Unavailable(Unavailable),
    /// The outbox answered something this edge cannot read (a fault, not the client's).
    Fault(String),
}

/// Why the outbox could not take a call.
#[derive(Debug, Clone, PartialEq)]
pub enum Unavailable {
    /// Its store failed.
    Store(StoreError),
    /// It could not be reached (Workers: the batcher's Durable Object).
    Unreachable(String),
    /// It did not answer within the wait limit (Workers' group commit).
    TimedOut,
}

impl Refused {
    /// What the log should say of a refusal whose cause the client is not told.
    pub fn cause(&self) -> Option<&str> {
        match self {
            Self::Unavailable(Unavailable::Store(e)) => Some(&e.0),
            Self::Unavailable(Unavailable::Unreachable(cause)) | Self::Fault(cause) => Some(cause),
            Self::Unavailable(Unavailable::TimedOut) => Some("no answer within the wait limit"),
            Self::BacklogFull(_) => None,
        }
    }
}

impl From<StoreError> for Refused {
    fn from(e: StoreError) -> Self {
        Self::Unavailable(Unavailable::Store(e))
    }
}

/// The verdict on one request.
pub type Verdict = Result<Admitted, Refused>;

/// The reserve-and-charge protocol: what [`accept`] needs of a host whose backlog and buckets
/// are in memory. [`InMemory`] is the implementation every such host uses.
#[allow(async_fn_in_trait)] // hosts are single-threaded
pub trait Reserving {
    /// Room taken in the backlog until the append.
    type Room;
    fn reserve(&self, readings: usize) -> Result<Self::Room, BacklogFull>;
    fn release(&self, room: Self::Room);
    /// Takes one section's tokens, or says in how many seconds they would be there.
    fn charge(&self, costs: &[(&str, u32)], now_ms: u64) -> Result<(), u32>;
    /// Gives back tokens a refused call had taken.
    fn refund(&self, costs: &[(&str, u32)]);
    /// Makes the readings durable, in one write.
    async fn append(
        &self,
        room: Self::Room,
        received_at_ms: u64,
        readings: Vec<StoredReading>,
    ) -> Result<(), StoreError>;
}

/// The atomic-append protocol: one write that checks the backlog, takes the section's tokens
/// and appends its readings, or does none of it.
#[allow(async_fn_in_trait)] // hosts are single-threaded
pub trait AtomicAppend {
    async fn append(&self, received_at_ms: u64, section: &Section) -> Verdict;
}

/// Admits one call's sections in the reserve-and-charge order (see the module comment).
pub async fn accept<P: Reserving>(
    ports: &P,
    sections: &[Section],
    now_ms: u64,
) -> Result<Vec<Admitted>, Refused> {
    let total = sections.iter().map(|s| s.readings.len()).sum();
    let room = ports.reserve(total).map_err(Refused::BacklogFull)?;
    let mut verdicts = Vec::with_capacity(sections.len());
    let mut charged: Vec<&Section> = Vec::new();
    for section in sections {
        match ports.charge(&section.costs(), now_ms) {
            Ok(()) => {
                charged.push(section);
                verdicts.push(Admitted::Accepted);
            }
            Err(retry_after_s) => verdicts.push(Admitted::RateLimited { retry_after_s }),
        }
    }
    if charged.is_empty() {
        ports.release(room);
        return Ok(verdicts);
    }
    if let Err(e) = ports
        .append(room, now_ms, Section::readings_of(&charged))
        .await
    {
        for section in charged {
            ports.refund(&section.costs());
        }
        return Err(e.into());
    }
    Ok(verdicts)
}

/// [`accept`] for a call of one request: its verdict.
pub async fn accept_one<P: Reserving>(ports: &P, section: &Section, now_ms: u64) -> Verdict {
    let verdicts = accept(ports, std::slice::from_ref(section), now_ms).await?;
    verdicts
        .first()
        .copied()
        .ok_or_else(|| Refused::Fault("no verdict for the request".into()))
}

/// Admits one request's section in one atomic write (see the module comment).
pub async fn accept_atomic<P: AtomicAppend>(ports: &P, section: &Section, now_ms: u64) -> Verdict {
    ports.append(now_ms, section).await
}

/// The reserve-and-charge protocol over an outbox and token buckets in memory, appending to
/// `store` (the batcher's SQLite table on Workers, a `MemoryStore` elsewhere).
pub struct InMemory<'a, K, S> {
    pub outbox: &'a RefCell<Outbox<K>>,
    /// `None` without a rate limit.
    pub buckets: Option<&'a RefCell<MemoryBuckets>>,
    pub store: &'a S,
    /// The node the readings came in at (kept with their segment).
    pub node: &'a str,
    /// Set by an append after which the outbox wants a delivery round started (`Outbox::push`).
    pub start_delivery: Cell<bool>,
}

impl<'a, K, S> InMemory<'a, K, S> {
    pub fn new(
        outbox: &'a RefCell<Outbox<K>>,
        buckets: Option<&'a RefCell<MemoryBuckets>>,
        store: &'a S,
        node: &'a str,
    ) -> Self {
        Self {
            outbox,
            buckets,
            store,
            node,
            start_delivery: Cell::new(false),
        }
    }
}

impl<K, S> Reserving for InMemory<'_, K, S>
where
    K: Clone + PartialEq,
    S: SegmentAppend<Key = K>,
{
    type Room = Reservation;

    fn reserve(&self, readings: usize) -> Result<Reservation, BacklogFull> {
        self.outbox.borrow_mut().reserve(readings)
    }

    fn release(&self, room: Reservation) {
        self.outbox.borrow_mut().release(room);
    }

    /// The buckets are exact for the devices this memory serves while it lasts; memory that
    /// is gone starts with full buckets (the limit then errs towards admitting).
    fn charge(&self, costs: &[(&str, u32)], now_ms: u64) -> Result<(), u32> {
        match self.buckets {
            Some(buckets) => buckets.borrow_mut().admit(costs, now_ms),
            None => Ok(()),
        }
    }

    fn refund(&self, costs: &[(&str, u32)]) {
        if let Some(buckets) = self.buckets {
            buckets.borrow_mut().refund(costs);
        }
    }

    async fn append(
        &self,
        room: Reservation,
        received_at_ms: u64,
        readings: Vec<StoredReading>,
    ) -> Result<(), StoreError> {
        let start = append_reserved(
            self.outbox,
            self.store,
            room,
            received_at_ms,
            self.node,
            readings,
        )
        .await?;
        if start {
            self.start_delivery.set(true);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;
    use crate::application::delivery::outbox::{MemoryStore, OutboxConfig, Wakeups};
    use crate::application::delivery::policy::{FlushPolicy, RetryPolicy};
    use crate::application::rate_limit::RateLimit;
    use crate::application::recent::tests::fingerprints;
    use crate::ports::testing::run;

    /// Records every call, in order; the fields decide the answers.
    #[derive(Default)]
    struct Fake {
        calls: RefCell<Vec<String>>,
        room: usize,
        limited: Vec<&'static str>,
        append_fails: bool,
    }

    fn full() -> BacklogFull {
        BacklogFull {
            limit: 10,
            retry_after_s: 5,
        }
    }

    impl Reserving for Fake {
        type Room = usize;
        fn reserve(&self, readings: usize) -> Result<usize, BacklogFull> {
            self.calls.borrow_mut().push(format!("reserve {readings}"));
            if readings > self.room {
                return Err(full());
            }
            Ok(readings)
        }
        fn release(&self, room: usize) {
            self.calls.borrow_mut().push(format!("release {room}"));
        }
        fn charge(&self, costs: &[(&str, u32)], _: u64) -> Result<(), u32> {
            self.calls
                .borrow_mut()
                .push(format!("charge {}", costs[0].0));
            if self.limited.contains(&costs[0].0) {
                Err(3)
            } else {
                Ok(())
            }
        }
        fn refund(&self, costs: &[(&str, u32)]) {
            self.calls
                .borrow_mut()
                .push(format!("refund {}", costs[0].0));
        }
        async fn append(
            &self,
            _room: usize,
            _at: u64,
            readings: Vec<StoredReading>,
        ) -> Result<(), StoreError> {
            self.calls
                .borrow_mut()
                .push(format!("append {}", readings.len()));
            if self.append_fails {
                return Err(StoreError("down".into()));
            }
            Ok(())
        }
    }

    fn section(device: &str, n: usize) -> Section {
        Section {
            costs: vec![(device.to_owned(), n as u32)],
            readings: (0..n)
                .map(|i| StoredReading::from_store(&format!("{{\"id\":\"{device}-{i}\"}}")))
                .collect(),
        }
    }

    fn calls(fake: &Fake) -> Vec<String> {
        fake.calls.borrow().clone()
    }

    #[test]
    fn room_then_tokens_then_one_append() {
        let fake = Fake {
            room: 10,
            limited: vec!["b"],
            ..Fake::default()
        };
        let verdicts = run(accept(
            &fake,
            &[section("a", 2), section("b", 1), section("c", 3)],
            0,
        ));
        assert_eq!(
            verdicts,
            Ok(vec![
                Admitted::Accepted,
                Admitted::RateLimited { retry_after_s: 3 },
                Admitted::Accepted
            ])
        );
        assert_eq!(
            calls(&fake),
            ["reserve 6", "charge a", "charge b", "charge c", "append 5"]
        );
    }

    #[test]
    fn a_full_backlog_costs_no_device_a_token() {
        let fake = Fake {
            room: 2,
            ..Fake::default()
        };
        assert_eq!(
            run(accept(&fake, &[section("a", 3)], 0)),
            Err(Refused::BacklogFull(full()))
        );
        assert_eq!(calls(&fake), ["reserve 3"]);
    }

    #[test]
    fn a_failed_append_refuses_the_call_and_keeps_no_token() {
        let fake = Fake {
            room: 10,
            append_fails: true,
            limited: vec!["b"],
            ..Fake::default()
        };
        assert!(matches!(
            run(accept(&fake, &[section("a", 1), section("b", 1)], 0)),
            Err(Refused::Unavailable(Unavailable::Store(_)))
        ));
        assert_eq!(
            calls(&fake),
            ["reserve 2", "charge a", "charge b", "append 1", "refund a"]
        );
    }

    #[test]
    fn a_call_whose_every_section_is_limited_stores_nothing() {
        let fake = Fake {
            room: 10,
            limited: vec!["a"],
            ..Fake::default()
        };
        assert_eq!(
            run(accept(&fake, &[section("a", 1)], 0)),
            Ok(vec![Admitted::RateLimited { retry_after_s: 3 }])
        );
        assert_eq!(calls(&fake), ["reserve 1", "charge a", "release 1"]);
    }

    fn outbox(max_backlog: usize) -> RefCell<Outbox<u64>> {
        let config = OutboxConfig {
            flush: FlushPolicy {
                max_items: 50,
                max_age_ms: 200,
            },
            retry: RetryPolicy {
                base_ms: 200,
                max_ms: 5_000,
            },
            max_backlog,
            backlog_retry_after_s: 5,
            wakeups: Wakeups::Polled,
            give_up_ms: 0,
            node: "node-1".into(),
        };
        RefCell::new(Outbox::new(config, 0))
    }

    #[test]
    fn in_memory_holds_room_tokens_and_readings() {
        let outbox = outbox(5);
        let limit = RateLimit {
            per_s: 1.0,
            burst: 3.0,
        };
        let buckets = RefCell::new(MemoryBuckets::new(limit, 100, fingerprints()));
        let store = MemoryStore::default();
        let ports = InMemory::new(&outbox, Some(&buckets), &store, "node-1");
        let verdicts = run(accept(&ports, &[section("a", 2), section("b", 1)], 0));
        assert_eq!(verdicts, Ok(vec![Admitted::Accepted; 2]));
        assert_eq!(outbox.borrow().pending(), 3);
        assert!(
            ports.start_delivery.get(),
            "the first readings start delivery"
        );
        // Device a has one token left of its burst of three, then none.
        let verdicts = run(accept(&ports, &[section("a", 1)], 0));
        assert_eq!(verdicts, Ok(vec![Admitted::Accepted]));
        let verdicts = run(accept(&ports, &[section("a", 1)], 0));
        assert_eq!(
            verdicts,
            Ok(vec![Admitted::RateLimited { retry_after_s: 1 }])
        );
        assert_eq!(
            outbox.borrow().pending(),
            4,
            "a refused section's room is given back"
        );
        // Room for no more than five readings in all.
        assert_eq!(
            run(accept(&ports, &[section("c", 2)], 0)),
            Err(Refused::BacklogFull(BacklogFull {
                limit: 5,
                retry_after_s: 5
            }))
        );
        assert_eq!(outbox.borrow().pending(), 4);
    }

    #[test]
    fn in_memory_without_a_limit_charges_nothing() {
        let outbox = outbox(100);
        let store = MemoryStore::default();
        let ports = InMemory::new(&outbox, None, &store, "node-1");
        for _ in 0..10 {
            let verdicts = run(accept(&ports, &[section("a", 5)], 0));
            assert_eq!(verdicts, Ok(vec![Admitted::Accepted]));
        }
        assert_eq!(outbox.borrow().pending(), 50);
    }
}

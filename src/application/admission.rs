//! The accept use case, the same on every host: the readings of one call (a request, or on
//! Workers the requests one group-commit call carries, each a *section*) are admitted in one
//! order:
//!
//! 1. **room** in the backlog for all of them, or the whole call is refused (`BacklogFull`)
//!    before any device pays a token;
//! 2. **the rate limit**, per section: a section over its devices' buckets is refused alone;
//! 3. **one durable append** of every admitted reading, before any answer; a store that checks
//!    the backlog itself (the shared SQLite outbox) may still refuse here, and the tokens are
//!    then given back;
//! 4. **wake** delivery.
//!
//! A store that keeps the buckets beside the readings takes steps 2 and 3 in one atomic write
//! ([`Charging::InAppend`]: the shared SQLite outbox, one statement per request): it checks the
//! backlog before any token, and a refused write keeps no token, so nothing is refunded.
//!
//! The host supplies the parts ([`AdmissionPorts`]) and decides nothing; what a refusal means
//! on the wire is `http`'s business.

use crate::application::delivery::outbox::BacklogFull;
use crate::domain::enrich::StoredReading;
use crate::ports::StoreError;

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
    /// A store (the outbox's or the rate limit's) failed.
    Unavailable(StoreError),
}

/// Where a host takes a section's tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Charging {
    /// `charge` before the append, `refund` if the append then fails: the buckets are not in
    /// the readings' store (an object's or an instance's memory).
    BeforeAppend,
    /// In the append's own atomic write, beside the readings; `charge` and `refund` are not
    /// called.
    InAppend,
}

/// What the use case needs of a host.
#[allow(async_fn_in_trait)] // hosts are single-threaded
pub trait AdmissionPorts {
    /// Room taken in the backlog until the append.
    type Room;
    fn reserve(&self, readings: usize) -> Result<Self::Room, BacklogFull>;
    fn release(&self, room: Self::Room);
    fn charging(&self) -> Charging {
        Charging::BeforeAppend
    }
    /// Takes one section's tokens: `Ok(Err(retry_after_s))` when they are not there.
    async fn charge(
        &self,
        costs: &[(&str, u32)],
        now_ms: u64,
    ) -> Result<Result<(), u32>, StoreError>;
    /// Gives back tokens a refused call had taken.
    async fn refund(&self, costs: &[(&str, u32)], now_ms: u64);
    /// Makes the sections' readings durable, in one write, and says what became of each
    /// section (all `Accepted`, unless the store charges them itself and a section's buckets
    /// are short); `Ok(Err(_))` when the store's own backlog bound refused them all.
    async fn append(
        &self,
        room: Self::Room,
        received_at_ms: u64,
        sections: &[&Section],
    ) -> Result<Result<Vec<Admitted>, BacklogFull>, StoreError>;
    /// Delivery has work.
    async fn wake(&self);
}

fn costs_of(section: &Section) -> Vec<(&str, u32)> {
    section
        .costs
        .iter()
        .map(|(d, n)| (d.as_str(), *n))
        .collect()
}

async fn refund_all<P: AdmissionPorts>(ports: &P, charged: &[&Section], now_ms: u64) {
    for section in charged {
        ports.refund(&costs_of(section), now_ms).await;
    }
}

/// Admits one call's sections in the one order (see the module comment).
pub async fn accept<P: AdmissionPorts>(
    ports: &P,
    sections: &[Section],
    now_ms: u64,
) -> Result<Vec<Admitted>, Refused> {
    let total = sections.iter().map(|s| s.readings.len()).sum();
    let room = ports.reserve(total).map_err(Refused::BacklogFull)?;
    // Each section's verdict; `None` for the sections that go to the append.
    let mut verdicts: Vec<Option<Admitted>> = vec![None; sections.len()];
    let mut charged: Vec<&Section> = Vec::new();
    match ports.charging() {
        Charging::InAppend => {}
        Charging::BeforeAppend => {
            for (section, verdict) in sections.iter().zip(verdicts.iter_mut()) {
                match ports.charge(&costs_of(section), now_ms).await {
                    Ok(Ok(())) => charged.push(section),
                    Ok(Err(retry_after_s)) => {
                        *verdict = Some(Admitted::RateLimited { retry_after_s })
                    }
                    Err(e) => {
                        ports.release(room);
                        refund_all(ports, &charged, now_ms).await;
                        return Err(Refused::Unavailable(e));
                    }
                }
            }
        }
    }
    let appending: Vec<&Section> = sections
        .iter()
        .zip(&verdicts)
        .filter(|(_, v)| v.is_none())
        .map(|(s, _)| s)
        .collect();
    if appending.is_empty() {
        ports.release(room);
        return Ok(verdicts.into_iter().flatten().collect());
    }
    let appended = match ports.append(room, now_ms, &appending).await {
        Ok(Ok(appended)) if appended.len() == appending.len() => appended,
        Ok(Ok(_)) => {
            // Readings may be stored: a 503 is safe (at least once), an unknown 2xx is not.
            let e = StoreError("the store answered for other sections".into());
            return Err(Refused::Unavailable(e));
        }
        Ok(Err(full)) => {
            refund_all(ports, &charged, now_ms).await;
            return Err(Refused::BacklogFull(full));
        }
        Err(e) => {
            refund_all(ports, &charged, now_ms).await;
            return Err(Refused::Unavailable(e));
        }
    };
    if appended.contains(&Admitted::Accepted) {
        ports.wake().await;
    }
    let mut appended = appended.into_iter();
    Ok(verdicts
        .into_iter()
        // As many appended verdicts as `None`s: checked above.
        .map(|v| v.or_else(|| appended.next()).unwrap_or(Admitted::Accepted))
        .collect())
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;
    use crate::ports::testing::run;

    /// Records every call, in order; `script` decides the answers.
    #[derive(Default)]
    struct Fake {
        calls: RefCell<Vec<String>>,
        room: usize,
        limited: Vec<&'static str>,
        charge_fails: bool,
        append_full: bool,
        append_fails: bool,
        /// The store charges in its append (`limited` then refused there).
        charges_in_append: bool,
    }

    fn full() -> BacklogFull {
        BacklogFull {
            held: 10,
            limit: 10,
            retry_after_s: 5,
        }
    }

    impl AdmissionPorts for Fake {
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
        fn charging(&self) -> Charging {
            if self.charges_in_append {
                Charging::InAppend
            } else {
                Charging::BeforeAppend
            }
        }
        async fn charge(
            &self,
            costs: &[(&str, u32)],
            _: u64,
        ) -> Result<Result<(), u32>, StoreError> {
            self.calls
                .borrow_mut()
                .push(format!("charge {}", costs[0].0));
            if self.charge_fails {
                return Err(StoreError("down".into()));
            }
            Ok(if self.limited.contains(&costs[0].0) {
                Err(3)
            } else {
                Ok(())
            })
        }
        async fn refund(&self, costs: &[(&str, u32)], _: u64) {
            self.calls
                .borrow_mut()
                .push(format!("refund {}", costs[0].0));
        }
        async fn append(
            &self,
            _room: usize,
            _at: u64,
            sections: &[&Section],
        ) -> Result<Result<Vec<Admitted>, BacklogFull>, StoreError> {
            let readings: usize = sections.iter().map(|s| s.readings.len()).sum();
            self.calls.borrow_mut().push(format!("append {readings}"));
            if self.append_fails {
                return Err(StoreError("down".into()));
            }
            if self.append_full {
                return Ok(Err(full()));
            }
            Ok(Ok(sections
                .iter()
                .map(|s| {
                    let device = s.costs[0].0.as_str();
                    if self.charges_in_append && self.limited.contains(&device) {
                        Admitted::RateLimited { retry_after_s: 4 }
                    } else {
                        Admitted::Accepted
                    }
                })
                .collect()))
        }
        async fn wake(&self) {
            self.calls.borrow_mut().push("wake".into());
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
    fn room_then_tokens_then_one_append_then_wake() {
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
            [
                "reserve 6",
                "charge a",
                "charge b",
                "charge c",
                "append 5",
                "wake"
            ]
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
    fn a_store_that_bounds_at_the_append_gives_the_tokens_back() {
        let fake = Fake {
            room: 10,
            append_full: true,
            ..Fake::default()
        };
        assert_eq!(
            run(accept(&fake, &[section("a", 1), section("b", 1)], 0)),
            Err(Refused::BacklogFull(full()))
        );
        assert_eq!(
            calls(&fake),
            [
                "reserve 2",
                "charge a",
                "charge b",
                "append 2",
                "refund a",
                "refund b"
            ]
        );
    }

    #[test]
    fn failures_refuse_the_call_and_keep_no_token() {
        let fake = Fake {
            room: 10,
            append_fails: true,
            ..Fake::default()
        };
        assert!(matches!(
            run(accept(&fake, &[section("a", 1)], 0)),
            Err(Refused::Unavailable(_))
        ));
        assert_eq!(
            calls(&fake),
            ["reserve 1", "charge a", "append 1", "refund a"]
        );
        let fake = Fake {
            room: 10,
            charge_fails: true,
            ..Fake::default()
        };
        assert!(matches!(
            run(accept(&fake, &[section("a", 1)], 0)),
            Err(Refused::Unavailable(_))
        ));
        assert_eq!(calls(&fake), ["reserve 1", "charge a", "release 1"]);
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

    #[test]
    fn a_store_that_charges_in_its_append_gets_every_section_and_no_charge_or_refund() {
        let fake = Fake {
            room: 10,
            limited: vec!["b"],
            charges_in_append: true,
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
                Admitted::RateLimited { retry_after_s: 4 },
                Admitted::Accepted
            ])
        );
        assert_eq!(calls(&fake), ["reserve 6", "append 6", "wake"]);
        // Every section over its buckets: nothing to deliver, nothing woken.
        let fake = Fake {
            room: 10,
            limited: vec!["a"],
            charges_in_append: true,
            ..Fake::default()
        };
        assert_eq!(
            run(accept(&fake, &[section("a", 1)], 0)),
            Ok(vec![Admitted::RateLimited { retry_after_s: 4 }])
        );
        assert_eq!(calls(&fake), ["reserve 1", "append 1"]);
        // A full backlog there refunds nothing: no token was taken.
        let fake = Fake {
            room: 10,
            append_full: true,
            charges_in_append: true,
            ..Fake::default()
        };
        assert_eq!(
            run(accept(&fake, &[section("a", 1)], 0)),
            Err(Refused::BacklogFull(full()))
        );
        assert_eq!(calls(&fake), ["reserve 1", "append 1"]);
    }
}

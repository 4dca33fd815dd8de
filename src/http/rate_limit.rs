//! Per-device token buckets: each device may send `per_s` readings a second on average and up
//! to `burst` at once. A request costs one token per reading of each device it carries and is
//! admitted or refused whole. Hosts decide where the buckets live (a Durable Object's memory,
//! Spin's SQLite database, an instance's memory); the arithmetic is here.

use std::collections::HashMap;

use crate::http::problem::{Problem, ProblemType};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    /// Readings per second each device earns.
    pub per_s: f64,
    /// Bucket size: the most readings a device may send at once.
    pub burst: f64,
}

/// One device's bucket.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bucket {
    pub tokens: f64,
    pub updated_ms: u64,
}

impl Bucket {
    pub fn full(limit: &RateLimit, now_ms: u64) -> Self {
        Self {
            tokens: limit.burst,
            updated_ms: now_ms,
        }
    }

    /// Tokens earned since the last update, capped at the burst. A clock that went back
    /// earns nothing rather than panicking or going negative.
    fn refilled(self, limit: &RateLimit, now_ms: u64) -> Self {
        let earned = now_ms.saturating_sub(self.updated_ms) as f64 / 1000.0 * limit.per_s;
        Self {
            tokens: (self.tokens + earned).min(limit.burst),
            updated_ms: now_ms.max(self.updated_ms),
        }
    }
}

/// What one request costs: readings per device, in order of first appearance.
pub fn costs<'a>(devices: impl Iterator<Item = &'a str>) -> Vec<(&'a str, u32)> {
    let mut costs: Vec<(&str, u32)> = Vec::new();
    for device in devices {
        match costs.iter_mut().find(|(d, _)| *d == device) {
            Some((_, n)) => *n += 1,
            None => costs.push((device, 1)),
        }
    }
    costs
}

/// Takes `cost` tokens from each bucket, all or none. `buckets[i]` belongs to `costs[i]`; on
/// refusal they are left untouched and the answer is the seconds until the request would fit.
pub fn admit(
    limit: &RateLimit,
    buckets: &mut [Bucket],
    costs: &[u32],
    now_ms: u64,
) -> Result<(), u32> {
    let refilled: Vec<Bucket> = buckets.iter().map(|b| b.refilled(limit, now_ms)).collect();
    let mut wait_s: f64 = 0.0;
    for (bucket, &cost) in refilled.iter().zip(costs) {
        let missing = f64::from(cost) - bucket.tokens;
        if missing > 0.0 {
            wait_s = wait_s.max(missing / limit.per_s);
        }
    }
    if wait_s > 0.0 {
        return Err(wait_s.ceil().clamp(1.0, 86_400.0) as u32);
    }
    for ((slot, mut bucket), &cost) in buckets.iter_mut().zip(refilled).zip(costs) {
        bucket.tokens -= f64::from(cost);
        *slot = bucket;
    }
    Ok(())
}

pub fn limited(retry_after_s: u32, limit: &RateLimit) -> Problem {
    Problem::new(
        ProblemType::RateLimited,
        format!(
            "a device may send {} readings per second (bursts of {}); nothing was accepted",
            decimal(limit.per_s),
            decimal(limit.burst)
        ),
    )
    .with_retry_after(retry_after_s)
}

/// A number as text through serde_json's shortest round-trip formatting (ryu), not `f64`'s
/// `Display`, whose formatting tables would add some 30 KB to the Worker for two messages.
pub(crate) fn decimal(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        (x as i64).to_string()
    } else {
        serde_json::to_string(&x).unwrap_or_default()
    }
}

/// Devices whose buckets a host keeps in memory; beyond this, only buckets still refilling are
/// kept, and a new device is admitted untracked (the limit errs towards admitting).
pub const MAX_TRACKED_DEVICES: usize = 100_000;

/// Buckets in memory, for hosts that keep them there. Bounded: past `max_devices` the
/// buckets that have refilled completely (indistinguishable from new ones) are dropped.
#[derive(Debug)]
pub struct MemoryBuckets {
    limit: RateLimit,
    max_devices: usize,
    buckets: HashMap<String, Bucket>,
}

impl MemoryBuckets {
    pub fn new(limit: RateLimit, max_devices: usize) -> Self {
        Self {
            limit,
            max_devices,
            buckets: HashMap::new(),
        }
    }

    /// Admits against the buckets a host keeps in `slot`: made on first use (with
    /// [`MAX_TRACKED_DEVICES`]), and afresh if the configured limit changed.
    pub fn admit_in(
        slot: &mut Option<Self>,
        limit: RateLimit,
        costs: &[(&str, u32)],
        now_ms: u64,
    ) -> Result<(), u32> {
        let buckets = match slot {
            Some(b) if b.limit == limit => b,
            _ => slot.insert(Self::new(limit, MAX_TRACKED_DEVICES)),
        };
        buckets.admit(costs, now_ms)
    }

    pub fn admit(&mut self, costs: &[(&str, u32)], now_ms: u64) -> Result<(), u32> {
        let limit = self.limit;
        let mut current: Vec<Bucket> = costs
            .iter()
            .map(|(d, _)| {
                self.buckets
                    .get(*d)
                    .copied()
                    .unwrap_or_else(|| Bucket::full(&limit, now_ms))
            })
            .collect();
        let amounts: Vec<u32> = costs.iter().map(|(_, n)| *n).collect();
        admit(&limit, &mut current, &amounts, now_ms)?;
        if self.buckets.len() + costs.len() > self.max_devices {
            self.buckets
                .retain(|_, b| b.refilled(&limit, now_ms).tokens < limit.burst);
        }
        for ((device, _), bucket) in costs.iter().zip(current) {
            if self.buckets.len() < self.max_devices || self.buckets.contains_key(*device) {
                self.buckets.insert((*device).to_owned(), bucket);
            }
        }
        Ok(())
    }

    /// Gives back tokens taken by a call that was then refused (capped at the burst).
    pub fn refund(&mut self, costs: &[(&str, u32)]) {
        let burst = self.limit.burst;
        for (device, n) in costs {
            if let Some(b) = self.buckets.get_mut(*device) {
                b.tokens = (b.tokens + f64::from(*n)).min(burst);
            }
        }
    }
}

/// Buckets in a SQLite database shared by every instance of an app (Spin's `spin:sqlite`, table
/// `rate_buckets`): the append takes a request's tokens in its own statement, atomically
/// across every connection and process on the file (`shared_outbox::sql::CHARGE`: the
/// arithmetic of `Bucket::refilled` and `admit`, in SQL); here is what is read and cleaned up
/// beside it.
pub mod sql {

    /// A refused device's bucket (`tokens`, `updated_ms`), to say when it would fit.
    pub const BUCKET: &str = "SELECT tokens, updated_ms FROM rate_buckets WHERE device = ?1";

    /// Buckets not touched since `?1` are full again, the same as no bucket: forgotten, so the
    /// table holds the devices of the last refill period, not every device ever seen.
    pub const FORGET_FULL: &str = "DELETE FROM rate_buckets WHERE updated_ms < ?1";

    /// How long a bucket takes to refill completely: after that, `FORGET_FULL` may drop it.
    pub fn full_after_ms(limit: &super::RateLimit) -> u64 {
        (limit.burst / limit.per_s * 1000.0).ceil() as u64
    }

    use std::cell::Cell;

    use super::{Bucket, RateLimit};
    use crate::application::delivery::shared_outbox::Charge;
    use crate::ports::{Sql, SqlValue, StoreError};

    /// How often an instance forgets the buckets that are full again.
    const FORGET_EVERY_MS: u64 = 300_000;

    /// What a request's readings cost (its section's readings per device), for its append to
    /// take.
    pub fn charge(limit: &RateLimit, costs: &[(String, u32)]) -> Charge {
        Charge {
            costs: costs.to_vec(),
            per_s: limit.per_s,
            burst: limit.burst,
        }
    }

    /// Seconds until a request its append refused for its buckets would fit: a read, only on
    /// that path (a bucket gone meanwhile is full: 1 s).
    pub async fn retry_after<D: Sql>(
        db: &D,
        limit: &RateLimit,
        costs: &[(String, u32)],
        now_ms: u64,
    ) -> Result<u32, StoreError> {
        let mut wait = 1;
        for (device, cost) in costs {
            let found = db
                .execute(BUCKET, vec![SqlValue::Text(device.clone())])
                .await?;
            let mut bucket = [found
                .first()
                .and_then(|r| {
                    Some(Bucket {
                        tokens: r.first()?.as_f64()?,
                        updated_ms: u64::try_from(r.get(1)?.as_i64()?).ok()?,
                    })
                })
                .unwrap_or_else(|| Bucket::full(limit, now_ms))];
            if let Err(s) = super::admit(limit, &mut bucket, &[*cost], now_ms) {
                wait = wait.max(s);
            }
        }
        Ok(wait)
    }

    /// One instance's cleaning of the shared buckets.
    #[derive(Debug, Default)]
    pub struct Forgetting {
        forgotten_at: Cell<u64>,
    }

    impl Forgetting {
        pub const fn new() -> Self {
            Self {
                forgotten_at: Cell::new(0),
            }
        }

        /// Every `FORGET_EVERY_MS` an instance drops the buckets that are full again, so the
        /// table holds the devices of the last refill period. An instance's first request
        /// only starts the clock: most instances serve a few requests and go, and the request
        /// path stays one statement. A failure only leaves them for next time.
        pub async fn tick<D: Sql>(&self, db: &D, limit: &RateLimit, now_ms: u64) {
            let last = self.forgotten_at.get();
            if last == 0 {
                self.forgotten_at.set(now_ms);
                return;
            }
            if now_ms.saturating_sub(last) < FORGET_EVERY_MS {
                return;
            }
            self.forgotten_at.set(now_ms);
            let before = now_ms.saturating_sub(full_after_ms(limit));
            let _ = db
                .execute(FORGET_FULL, vec![SqlValue::Integer(before as i64)])
                .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: RateLimit = RateLimit {
        per_s: 2.0,
        burst: 10.0,
    };

    #[test]
    fn burst_then_rate() {
        let mut m = MemoryBuckets::new(LIMIT, 100);
        assert!(m.admit(&[("a", 10)], 0).is_ok());
        assert_eq!(m.admit(&[("a", 1)], 0), Err(1));
        assert_eq!(m.admit(&[("a", 4)], 0), Err(2));
        // Another device has its own bucket.
        assert!(m.admit(&[("b", 10)], 0).is_ok());
        // Half a second earns one reading.
        assert!(m.admit(&[("a", 1)], 500).is_ok());
        assert!(m.admit(&[("a", 1)], 500).is_err());
        // Refill is capped at the burst.
        assert!(m.admit(&[("a", 10)], 3_600_000).is_ok());
        assert!(m.admit(&[("a", 1)], 3_600_000).is_err());
    }

    #[test]
    fn a_request_is_admitted_whole_or_not_at_all() {
        let mut m = MemoryBuckets::new(LIMIT, 100);
        assert!(m.admit(&[("a", 9)], 0).is_ok());
        assert!(m.admit(&[("b", 5), ("a", 5)], 0).is_err());
        // b was not charged for the refused request.
        assert!(m.admit(&[("b", 10)], 0).is_ok());
    }

    #[test]
    fn costs_count_readings_per_device() {
        assert_eq!(
            costs(["a", "b", "a", "a"].into_iter()),
            vec![("a", 3), ("b", 1)]
        );
    }

    #[test]
    fn clock_going_back_is_harmless_and_memory_is_bounded() {
        let mut m = MemoryBuckets::new(LIMIT, 2);
        assert!(m.admit(&[("a", 10)], 10_000).is_ok());
        assert!(m.admit(&[("a", 1)], 0).is_err());
        assert!(m.admit(&[("b", 1)], 0).is_ok());
        assert!(m.admit(&[("c", 1)], 0).is_ok());
        assert!(m.buckets.len() <= 2);
    }
}

//! Per-device token buckets: each device may send `per_s` readings a second on average and up
//! to `burst` at once. A request costs one token per reading of each device it carries and is
//! admitted or refused whole. Hosts decide where the buckets live (a Durable Object's memory,
//! Spin's SQLite database, an instance's memory); the arithmetic is here, and what a refusal
//! looks like on the wire is `http::problem`'s.

use crate::application::recent::{Fingerprints, Recent};

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
    pub fn refilled(self, limit: &RateLimit, now_ms: u64) -> Self {
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

/// A number as text through serde_json's shortest round-trip formatting (ryu), not `f64`'s
/// `Display`, whose formatting tables would add some 30 KB to the Worker for two messages.
pub fn decimal(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        (x as i64).to_string()
    } else {
        serde_json::to_string(&x).unwrap_or_default()
    }
}

/// Devices whose buckets one batcher or instance keeps: the 250,000 most recently charged. A
/// bucket older than a full refill (`burst / per_s`, 100 s by default) is full again and the same
/// as none, so forgetting it changes nothing; one forgotten before (more than this many devices
/// charged within one refill period) starts full again, and is counted.
pub const MAX_TRACKED_DEVICES: usize = 250_000;

/// What a [`MemoryBuckets`] holds and has forgotten, for `/admin/stats`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct BucketStats {
    pub tracked: usize,
    pub capacity: usize,
    /// Buckets forgotten to make room while not yet full again: those devices' limits restarted.
    pub forgotten_unrefilled: u64,
}

/// Buckets in memory, for hosts that keep them there (a Durable Object, an instance): the most
/// recently charged devices' buckets (see [`crate::application::recent`]), O(1) per device
/// charged, bounded by the capacity.
#[derive(Debug)]
pub struct MemoryBuckets {
    limit: RateLimit,
    buckets: Recent<Bucket>,
    forgotten_unrefilled: u64,
}

impl MemoryBuckets {
    pub fn new(limit: RateLimit, capacity: usize, fingerprints: Fingerprints) -> Self {
        Self {
            limit,
            buckets: Recent::new(capacity, fingerprints),
            forgotten_unrefilled: 0,
        }
    }

    pub fn limit(&self) -> &RateLimit {
        &self.limit
    }

    /// Takes each device's readings from its bucket, all or none: `Err(seconds)` until the
    /// request would fit.
    pub fn admit(&mut self, costs: &[(&str, u32)], now_ms: u64) -> Result<(), u32> {
        let limit = self.limit;
        let keys: Vec<u64> = costs
            .iter()
            .map(|(d, _)| self.buckets.fingerprint(d))
            .collect();
        let mut current: Vec<Bucket> = keys
            .iter()
            .map(|k| {
                self.buckets
                    .get_mut_by(*k)
                    .map(|b| *b)
                    .unwrap_or_else(|| Bucket::full(&limit, now_ms))
            })
            .collect();
        let amounts: Vec<u32> = costs.iter().map(|(_, n)| *n).collect();
        admit(&limit, &mut current, &amounts, now_ms)?;
        for (key, bucket) in keys.into_iter().zip(current) {
            if let Some(forgotten) = self.buckets.insert_by(key, bucket) {
                if forgotten.refilled(&limit, now_ms).tokens < limit.burst {
                    self.forgotten_unrefilled += 1;
                }
            }
        }
        Ok(())
    }

    /// Gives back tokens taken by a call that was then refused (capped at the burst).
    pub fn refund(&mut self, costs: &[(&str, u32)]) {
        let burst = self.limit.burst;
        for (device, n) in costs {
            if let Some(b) = self.buckets.get_mut(device) {
                b.tokens = (b.tokens + f64::from(*n)).min(burst);
            }
        }
    }

    pub fn stats(&self) -> BucketStats {
        BucketStats {
            tracked: self.buckets.len(),
            capacity: self.buckets.capacity(),
            forgotten_unrefilled: self.forgotten_unrefilled,
        }
    }

    /// Bytes of memory one tracked device takes (the map's entry and its bucket).
    pub fn bytes_per_device() -> usize {
        Recent::<Bucket>::bytes_per_entry()
    }
}

pub mod sql {
    //! Buckets in a SQLite database shared by every instance of an app (Spin's `spin:sqlite`,
    //! table `rate_buckets`): the append takes a request's tokens in its own statement,
    //! atomically across every connection and process on the file
    //! (`shared_outbox::sql::CHARGE`: the arithmetic of `Bucket::refilled` and `admit`, in
    //! SQL); here is what is read and cleaned up beside it.

    use super::{Bucket, RateLimit};
    use crate::application::delivery::shared_outbox::Charge;
    use crate::ports::{Sql, SqlValue, StoreError};

    /// A refused device's bucket (`tokens`, `updated_ms`), to say when it would fit.
    pub const BUCKET: &str = "SELECT tokens, updated_ms FROM rate_buckets WHERE device = ?1";

    /// ?1 a time, ?2 how many: buckets not charged since ?1 are full again, the same as no
    /// bucket, and up to ?2 of them go, oldest first, found through `rate_buckets_updated` (no
    /// scan of the table). So the table holds the devices of about the last refill period.
    pub const FORGET_FULL: &str = "DELETE FROM rate_buckets WHERE device IN \
         (SELECT device FROM rate_buckets WHERE updated_ms < ?1 ORDER BY updated_ms LIMIT ?2) \
         RETURNING 1";
    /// Buckets one `FORGET_FULL` may delete: a short statement, whatever the fleet.
    pub const FORGET_BATCH: usize = 500;

    /// How long a bucket takes to refill completely: after that, `FORGET_FULL` may drop it.
    pub fn full_after_ms(limit: &RateLimit) -> u64 {
        (limit.burst / limit.per_s * 1000.0).ceil() as u64
    }

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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::application::recent::tests::fingerprints;

    const LIMIT: RateLimit = RateLimit {
        per_s: 2.0,
        burst: 10.0,
    };

    #[test]
    fn burst_then_rate() {
        let mut m = MemoryBuckets::new(LIMIT, 100, fingerprints());
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
        let mut m = MemoryBuckets::new(LIMIT, 100, fingerprints());
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
        let mut m = MemoryBuckets::new(LIMIT, 2, fingerprints());
        assert!(m.admit(&[("a", 10)], 10_000).is_ok());
        assert!(m.admit(&[("a", 1)], 0).is_err());
        assert!(m.admit(&[("b", 1)], 0).is_ok());
        assert!(m.admit(&[("c", 1)], 0).is_ok());
        assert_eq!(m.stats().tracked, 2);
    }

    /// At 557087d a device that arrived once the map was full of buckets still refilling was
    /// admitted untracked, that is without any limit. Now every charged device is tracked; the
    /// least recently charged is forgotten instead, and counted when its bucket was not full.
    #[test]
    fn a_device_past_the_capacity_is_still_limited() {
        let mut m = MemoryBuckets::new(LIMIT, 2, fingerprints());
        assert!(m.admit(&[("a", 10)], 0).is_ok());
        assert!(m.admit(&[("b", 10)], 0).is_ok());
        assert!(m.admit(&[("c", 10)], 0).is_ok());
        assert_eq!(m.admit(&[("c", 1)], 0), Err(1), "c is limited");
        assert_eq!(
            m.stats(),
            BucketStats {
                tracked: 2,
                capacity: 2,
                forgotten_unrefilled: 1
            }
        );
        // A bucket that is full again is forgotten without a count: it was the same as none.
        assert!(m.admit(&[("d", 1)], 60_000).is_ok());
        assert_eq!(m.stats().forgotten_unrefilled, 1);
    }
}

//! Batching and delivery policy, free of any storage or host: when to flush, how long to back
//! off after a failure, and what a collector's answer means for the batch.

use std::collections::VecDeque;

use crate::ports::Clock;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlushPolicy {
    pub max_items: usize,
    pub max_age_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushAt {
    /// Nothing is pending.
    Idle,
    Now,
    /// Unix ms at which the oldest pending reading reaches max age.
    At(u64),
}

impl FlushPolicy {
    pub fn next_flush(
        &self,
        pending: usize,
        oldest_received_ms: Option<u64>,
        now_ms: u64,
    ) -> FlushAt {
        match oldest_received_ms {
            None => FlushAt::Idle,
            Some(_) if pending == 0 => FlushAt::Idle,
            Some(_) if pending >= self.max_items => FlushAt::Now,
            Some(oldest) => {
                let due = oldest.saturating_add(self.max_age_ms);
                if due <= now_ms {
                    FlushAt::Now
                } else {
                    FlushAt::At(due)
                }
            }
        }
    }
}

/// Capped exponential backoff with "equal jitter": half the step is fixed so retries never
/// bunch at zero, half is random so edges that failed together do not retry together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub base_ms: u64,
    pub max_ms: u64,
}

impl RetryPolicy {
    /// Delay before retry number `failures` (1 = after the first failure); `jitter` in [0, 1).
    pub fn delay_ms(&self, failures: u32, jitter: f64) -> u64 {
        let exp = failures.saturating_sub(1).min(32);
        let step = self.base_ms.saturating_mul(1u64 << exp).min(self.max_ms);
        let jitter = jitter.clamp(0.0, 1.0);
        step / 2 + ((step - step / 2) as f64 * jitter) as u64
    }
}

/// What a collector's answer means for the batch that was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Delivered,
    /// Transient (network error, 408, 429, 5xx): keep the batch and try again later.
    Retry,
    /// The collector refuses this batch for good (other 4xx, unexpected 1xx/3xx): park it in
    /// the dead-letter store instead of retrying forever.
    DeadLetter,
}

pub fn verdict(status: Option<u16>) -> Verdict {
    match status {
        None => Verdict::Retry,
        Some(200..=299) => Verdict::Delivered,
        Some(408 | 429) | Some(500..=599) => Verdict::Retry,
        Some(_) => Verdict::DeadLetter,
    }
}

/// The backlog is at its bound: the caller should answer 503 with this Retry-After.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BacklogFull {
    pub retry_after_s: u32,
}

/// How long an instance that has taken one request's readings waits for a second request
/// before it flushes, instead of the full max age. A wasi:http host may run one request per
/// instance (Spin does; so does `wasmtime serve --max-instance-reuse-count 1`), and such an
/// instance holds its memory and a slot of the host's instance pool until its batch is sent:
/// waiting out max age there only delays delivery and, under load, exhausts the pool. Until
/// a second request arrives the instance has no evidence that it is reused.
pub const LONE_REQUEST_WAIT_MS: u64 = 20;

/// The shortest sleep `MemoryBatcher::next_look` asks for ahead of a flush that is not yet due.
pub const MIN_LOOK_AHEAD_MS: u64 = 2;

/// An in-memory batch queue for hosts whose instance owns its batch (Spin, wasi:http).
/// Items keep their arrival order; a failed batch goes back to the front.
#[derive(Debug)]
pub struct MemoryBatcher<T> {
    queue: VecDeque<(u64, T)>,
    policy: FlushPolicy,
    capacity: usize,
    /// Pushes so far (one per request) and when the first came: see `LONE_REQUEST_WAIT_MS`.
    pushes: u64,
    first_push_ms: u64,
    /// Items pushed so far: with `first_push_ms`, this instance's arrival rate.
    received: u64,
}

impl<T> MemoryBatcher<T> {
    pub fn new(policy: FlushPolicy, capacity: usize) -> Self {
        Self {
            queue: VecDeque::new(),
            policy,
            capacity,
            pushes: 0,
            first_push_ms: 0,
            received: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Accepts all items (one request's readings) or none.
    pub fn push(
        &mut self,
        clock: &dyn Clock,
        items: impl ExactSizeIterator<Item = T>,
    ) -> Result<(), BacklogFull> {
        if self.queue.len() + items.len() > self.capacity {
            let retry_after_s = (self.policy.max_age_ms / 1000).max(1) as u32;
            return Err(BacklogFull { retry_after_s });
        }
        let now = clock.now_ms();
        self.received += items.len() as u64;
        self.queue.extend(items.map(|i| (now, i)));
        if self.pushes == 0 {
            self.first_push_ms = now;
        }
        self.pushes += 1;
        Ok(())
    }

    pub fn next_flush(&self, clock: &dyn Clock) -> FlushAt {
        let now = clock.now_ms();
        let at = self
            .policy
            .next_flush(self.queue.len(), self.queue.front().map(|(t, _)| *t), now);
        match at {
            FlushAt::At(due) if self.pushes == 1 => {
                let lone_due = self.first_push_ms.saturating_add(LONE_REQUEST_WAIT_MS);
                if lone_due <= now {
                    FlushAt::Now
                } else {
                    FlushAt::At(due.min(lone_due))
                }
            }
            other => other,
        }
    }

    /// When the flusher should look again: when a flush is due, or sooner when readings arrive
    /// fast enough that a full batch should be waiting by then. A flusher asleep until max age
    /// is not woken by the request that fills its batch (a task runs in the component-model
    /// task of the request that spawned it, and waking it from another request's task needs
    /// wit-bindgen's `inter-task-wakeup`, which hosts may not support), so it wakes by the
    /// arrival rate instead: at load a full batch leaves within about `MIN_LOOK_AHEAD_MS` of
    /// filling, and a quiet instance sleeps until max age as before.
    pub fn next_look(&self, clock: &dyn Clock) -> FlushAt {
        let now = clock.now_ms();
        match self.next_flush(clock) {
            FlushAt::At(due) if self.pushes > 1 => {
                let elapsed_ms = now.saturating_sub(self.first_push_ms).max(1) as f64;
                let per_ms = self.received as f64 / elapsed_ms;
                let missing = self.policy.max_items.saturating_sub(self.queue.len()) as f64;
                let full_in_ms = (missing / per_ms).ceil() as u64;
                FlushAt::At(due.min(now.saturating_add(full_in_ms.max(MIN_LOOK_AHEAD_MS))))
            }
            other => other,
        }
    }

    /// Removes and returns the oldest batch (at most `max_items`).
    pub fn take_batch(&mut self) -> Vec<T> {
        let n = self.queue.len().min(self.policy.max_items);
        self.queue.drain(..n).map(|(_, item)| item).collect()
    }

    /// Puts a batch that could not be delivered back at the front, keeping its original age.
    pub fn restore(&mut self, received_at_ms: u64, batch: Vec<T>) {
        for item in batch.into_iter().rev() {
            self.queue.push_front((received_at_ms, item));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    struct FakeClock(Cell<u64>);
    impl Clock for FakeClock {
        fn now_ms(&self) -> u64 {
            self.0.get()
        }
    }

    const POLICY: FlushPolicy = FlushPolicy {
        max_items: 3,
        max_age_ms: 200,
    };

    #[test]
    fn flush_by_age_or_count() {
        assert_eq!(POLICY.next_flush(0, None, 1000), FlushAt::Idle);
        assert_eq!(POLICY.next_flush(1, Some(1000), 1000), FlushAt::At(1200));
        assert_eq!(POLICY.next_flush(1, Some(1000), 1199), FlushAt::At(1200));
        assert_eq!(POLICY.next_flush(1, Some(1000), 1200), FlushAt::Now);
        assert_eq!(POLICY.next_flush(3, Some(1000), 1000), FlushAt::Now);
    }

    #[test]
    fn a_lone_request_is_flushed_soon_and_a_second_restores_max_age() {
        let clock = FakeClock(Cell::new(10_000));
        let mut b = MemoryBatcher::new(POLICY, 5);
        b.push(&clock, [1].into_iter()).unwrap();
        assert_eq!(
            b.next_flush(&clock),
            FlushAt::At(10_000 + LONE_REQUEST_WAIT_MS)
        );
        clock.0.set(10_000 + LONE_REQUEST_WAIT_MS);
        assert_eq!(b.next_flush(&clock), FlushAt::Now);
        // A second request within the wait: this instance is reused, max age applies again.
        clock.0.set(10_005);
        b.push(&clock, [2].into_iter()).unwrap();
        clock.0.set(10_000 + LONE_REQUEST_WAIT_MS);
        assert_eq!(b.next_flush(&clock), FlushAt::At(10_200));
        // ... also to what comes after the first batch has gone.
        assert_eq!(b.take_batch(), vec![1, 2]);
        b.push(&clock, [3].into_iter()).unwrap();
        assert_eq!(
            b.next_flush(&clock),
            FlushAt::At(10_000 + LONE_REQUEST_WAIT_MS + 200)
        );
    }

    #[test]
    fn the_flusher_looks_again_when_a_full_batch_is_expected() {
        let clock = FakeClock(Cell::new(10_000));
        let policy = FlushPolicy {
            max_items: 50,
            max_age_ms: 200,
        };
        let mut b = MemoryBatcher::new(policy, 1_000);
        b.push(&clock, [0].into_iter()).unwrap();
        assert_eq!(
            b.next_look(&clock),
            b.next_flush(&clock),
            "one request: the lone-request wait, nothing sooner"
        );
        // One reading per ms: 10 here after 10 ms, 40 more expected in 40 ms.
        for i in 1..10 {
            clock.0.set(10_000 + i);
            b.push(&clock, [i].into_iter()).unwrap();
        }
        clock.0.set(10_010);
        assert_eq!(b.next_flush(&clock), FlushAt::At(10_200));
        assert_eq!(b.next_look(&clock), FlushAt::At(10_050));
        // Traffic stops: each look expects the batch later, and max age bounds it.
        clock.0.set(10_020);
        assert_eq!(b.next_look(&clock), FlushAt::At(10_100));
        clock.0.set(10_050);
        assert_eq!(b.next_look(&clock), FlushAt::At(10_200));
        // A full batch is due at once, as before.
        for i in 10..50 {
            b.push(&clock, [i].into_iter()).unwrap();
        }
        assert_eq!(b.next_look(&clock), FlushAt::Now);
    }

    #[test]
    fn a_fast_stream_is_looked_at_no_sooner_than_the_minimum() {
        let clock = FakeClock(Cell::new(10_000));
        let mut b = MemoryBatcher::new(POLICY, 1_000);
        b.push(&clock, [1].into_iter()).unwrap();
        b.push(&clock, [2].into_iter()).unwrap();
        assert_eq!(b.next_look(&clock), FlushAt::At(10_000 + MIN_LOOK_AHEAD_MS));
        b.push(&clock, [3].into_iter()).unwrap();
        assert_eq!(b.next_look(&clock), FlushAt::Now);
    }

    #[test]
    fn memory_batcher_with_fake_clock() {
        let clock = FakeClock(Cell::new(10_000));
        let mut b = MemoryBatcher::new(POLICY, 5);
        assert_eq!(b.next_flush(&clock), FlushAt::Idle);
        b.push(&clock, ["y"].into_iter()).unwrap();
        assert_eq!(
            b.next_flush(&clock),
            FlushAt::At(10_000 + LONE_REQUEST_WAIT_MS),
            "one request so far: a short wait for a second"
        );
        clock.0.set(10_010);
        b.push(&clock, ["z"].into_iter()).unwrap();
        assert_eq!(b.next_flush(&clock), FlushAt::At(10_200));
        assert_eq!(b.take_batch(), vec!["y", "z"]);
        b.push(&clock, ["a", "b"].into_iter()).unwrap();
        assert_eq!(b.next_flush(&clock), FlushAt::At(10_210));
        clock.0.set(10_100);
        b.push(&clock, ["c"].into_iter()).unwrap();
        assert_eq!(
            b.next_flush(&clock),
            FlushAt::Now,
            "full batch flushes at once"
        );
        assert_eq!(
            b.push(&clock, ["d", "e", "f"].into_iter()),
            Err(BacklogFull { retry_after_s: 1 })
        );
        assert_eq!(b.len(), 3, "a refused push leaves the queue intact");
        let batch = b.take_batch();
        assert_eq!(batch, vec!["a", "b", "c"]);
        assert_eq!(b.next_flush(&clock), FlushAt::Idle);
        b.restore(10_000, batch);
        assert_eq!(b.next_flush(&clock), FlushAt::Now);
        clock.0.set(10_150);
        b.push(&clock, ["d"].into_iter()).unwrap();
        assert_eq!(b.take_batch(), vec!["a", "b", "c"]);
        assert_eq!(b.next_flush(&clock), FlushAt::At(10_350));
    }

    #[test]
    fn backoff_is_capped_exponential_with_jitter() {
        let r = RetryPolicy {
            base_ms: 200,
            max_ms: 5_000,
        };
        assert_eq!(r.delay_ms(1, 0.0), 100);
        assert_eq!(r.delay_ms(1, 0.999), 199);
        assert_eq!(r.delay_ms(2, 0.0), 200);
        assert_eq!(r.delay_ms(3, 0.5), 600);
        assert_eq!(r.delay_ms(10, 0.0), 2_500);
        assert_eq!(r.delay_ms(u32::MAX, 1.0), 5_000);
    }

    #[test]
    fn verdicts() {
        assert_eq!(verdict(Some(200)), Verdict::Delivered);
        assert_eq!(verdict(Some(204)), Verdict::Delivered);
        assert_eq!(verdict(None), Verdict::Retry);
        assert_eq!(verdict(Some(408)), Verdict::Retry);
        assert_eq!(verdict(Some(429)), Verdict::Retry);
        assert_eq!(verdict(Some(503)), Verdict::Retry);
        assert_eq!(verdict(Some(400)), Verdict::DeadLetter);
        assert_eq!(verdict(Some(401)), Verdict::DeadLetter);
        assert_eq!(verdict(Some(301)), Verdict::DeadLetter);
    }
}

//! Delivery policy, free of any storage or host: how big and how old a batch may get, how long
//! to back off after a failure, and what a collector's answer means for the batch.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlushPolicy {
    pub max_items: usize,
    pub max_age_ms: u64,
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
    /// The collector refuses what the batch holds (400, 413, 422: a bad point, too large): the
    /// batch is split in halves and each sent again, until the refused readings are alone; only
    /// a lone refused reading becomes a dead letter. One device's bad reading never takes other
    /// devices' readings with it.
    Refused,
    /// The collector refuses the edge, not the batch (401, 403, 404, and any other status: a
    /// rotated token, a wrong URL): a configuration fault. Retried with backoff like `Retry`,
    /// counted and logged as an error, never dead-lettered.
    Misconfigured,
}

pub fn verdict(status: Option<u16>) -> Verdict {
    match status {
        None => Verdict::Retry,
        Some(200..=299) => Verdict::Delivered,
        Some(408 | 429) | Some(500..=599) => Verdict::Retry,
        Some(400 | 413 | 422) => Verdict::Refused,
        Some(_) => Verdict::Misconfigured,
    }
}

/// Dead letters a store keeps (each host's store enforces both bounds when it keeps one): at
/// most this many, the oldest dropped first, and none older than `DEAD_LETTER_MAX_AGE_MS`.
/// Dropped letters are counted (`dead_letters_dropped`) and logged.
pub const DEAD_LETTERS_KEPT: usize = 1_000;
pub const DEAD_LETTER_MAX_AGE_MS: u64 = 7 * 24 * 3_600_000;

/// How long an instance that has taken one request's readings waits for a second request
/// before it flushes, instead of the full max age. A wasi:http host may run one request per
/// instance (Spin does; so does `wasmtime serve --max-instance-reuse-count 1`), and such an
/// instance holds its memory and a slot of the host's instance pool until its batch is sent:
/// waiting out max age there only delays delivery and, under load, exhausts the pool. Until
/// a second request arrives the instance has no evidence that it is reused.
pub const LONE_REQUEST_WAIT_MS: u64 = 20;

/// The shortest look-ahead of a polled driver (`outbox::Wakeups::Polled`) before a flush is due.
pub const MIN_LOOK_AHEAD_MS: u64 = 2;

#[cfg(test)]
mod tests {
    use super::*;

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
        for refused in [400, 413, 422] {
            assert_eq!(verdict(Some(refused)), Verdict::Refused);
        }
        for misconfigured in [401, 403, 404, 405, 415, 301, 100] {
            assert_eq!(verdict(Some(misconfigured)), Verdict::Misconfigured);
        }
    }
}

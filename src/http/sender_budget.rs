//! What an unauthenticated sender may buy: a budget of failed credentials per client address
//! (where the host says which: Workers `CF-Connecting-IP`, Spin `spin-client-addr`). Every
//! request whose credentials fail (a 401), and every signature check that does not verify,
//! takes one from its sender's budget; a sender with none left is refused with 429 before the
//! registry is read or a signature checked, so junk credentials buy at most
//! [`FAILURES_BURST`] store reads or signature checks at once, and one per
//! [`FAILURE_REFILL_S`] seconds after. Valid credentials cost nothing.
//!
//! Per isolate or instance and in memory (a sender that reaches many isolates has a budget on
//! each), for the [`MAX_SENDERS`] most recent senders.

use crate::application::rate_limit::{Bucket, RateLimit};
use crate::application::recent::{Fingerprints, Recent};

/// Failures a sender may have at once, and how often it earns one more.
pub const FAILURES_BURST: f64 = 32.0;
pub const FAILURE_REFILL_S: f64 = 2.0;
/// Senders tracked; the least recently failing beyond it are forgotten.
pub const MAX_SENDERS: usize = 10_000;

const BUDGET: RateLimit = RateLimit {
    per_s: 1.0 / FAILURE_REFILL_S,
    burst: FAILURES_BURST,
};

/// Per sender, the failures left (see the module comment).
#[derive(Debug)]
pub struct SenderBudgets {
    budgets: Recent<Bucket>,
}

impl SenderBudgets {
    pub fn new(fingerprints: Fingerprints) -> Self {
        Self {
            budgets: Recent::new(MAX_SENDERS, fingerprints),
        }
    }

    /// `Err(seconds)` until `sender` may fail once more.
    pub fn check(&mut self, sender: &str, now_ms: u64) -> Result<(), u32> {
        let Some(bucket) = self.budgets.get_mut(sender) else {
            return Ok(());
        };
        let refilled = bucket.refilled(&BUDGET, now_ms);
        if refilled.tokens >= 1.0 {
            return Ok(());
        }
        let wait_s = (1.0 - refilled.tokens) / BUDGET.per_s;
        Err(wait_s.ceil().clamp(1.0, 3_600.0) as u32)
    }

    /// One failure of `sender`'s.
    pub fn charge(&mut self, sender: &str, now_ms: u64) {
        let bucket = self
            .budgets
            .get_mut(sender)
            .map(|b| b.refilled(&BUDGET, now_ms))
            .unwrap_or_else(|| Bucket::full(&BUDGET, now_ms));
        let spent = Bucket {
            tokens: (bucket.tokens - 1.0).max(0.0),
            updated_ms: bucket.updated_ms,
        };
        self.budgets.insert(sender, spent);
    }

    pub fn len(&self) -> usize {
        self.budgets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.budgets.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::application::recent::tests::fingerprints;

    #[test]
    fn a_sender_may_fail_a_burst_then_one_per_refill() {
        let mut b = SenderBudgets::new(fingerprints());
        for _ in 0..FAILURES_BURST as u32 {
            assert!(b.check("198.51.100.7", 0).is_ok());
            b.charge("198.51.100.7", 0);
        }
        assert_eq!(b.check("198.51.100.7", 0), Err(2));
        // Another sender has its own budget.
        assert!(b.check("198.51.100.8", 0).is_ok());
        // One refill period earns one failure.
        assert!(b.check("198.51.100.7", 2_000).is_ok());
        b.charge("198.51.100.7", 2_000);
        assert!(b.check("198.51.100.7", 2_000).is_err());
        assert_eq!(b.len(), 1, "a sender that never failed is not tracked");
    }
}

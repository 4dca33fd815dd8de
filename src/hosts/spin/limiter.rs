//! Per-device rate limits in the portable flavour, as the accept use case charges and refunds
//! them: it has no store, so the buckets live in the instance's memory: exact while one
//! instance serves a device, no limit at all when every request gets a fresh instance. (The
//! spin flavour's append takes the tokens in Spin's SQLite database, in its own statement.)

use std::cell::RefCell;

use crate::http::rate_limit::{MemoryBuckets, RateLimit};

thread_local! {
    static BUCKETS: RefCell<Option<MemoryBuckets>> = const { RefCell::new(None) };
}

/// Takes the tokens of one request, or says in how many seconds it would fit.
pub fn charge(limit: Option<RateLimit>, costs: &[(&str, u32)], now_ms: u64) -> Result<(), u32> {
    match limit {
        Some(limit) => BUCKETS
            .with(|slot| MemoryBuckets::admit_in(&mut slot.borrow_mut(), limit, costs, now_ms)),
        None => Ok(()),
    }
}

/// Gives back the tokens of a request that was then refused.
pub fn refund(limit: Option<RateLimit>, costs: &[(&str, u32)]) {
    if limit.is_some() {
        BUCKETS.with(|slot| {
            if let Some(buckets) = slot.borrow_mut().as_mut() {
                buckets.refund(costs);
            }
        });
    }
}

//! Per-device rate limits on Spin / wasi:http. The spin flavour keeps each device's bucket in
//! the key-value store, shared by all instances (approximate under concurrent requests of one
//! device: see `rate_limit::admit_in_store`). The portable flavour has no store and keeps
//! buckets in the instance's memory: exact while one instance serves a device, no limit at all
//! when every request gets a fresh instance.

use crate::config::Config;
use crate::http::problem::{Problem, ProblemType};
use crate::http::rate_limit::{self, RateLimit};
use crate::http::routes::Accepted;
use crate::ports::StoreError;

pub async fn admit(config: &Config, accepted: &Accepted, now_ms: u64) -> Result<(), Problem> {
    let Some(limit) = config.rate_limit else {
        return Ok(());
    };
    let costs: Vec<(&str, u32)> = accepted
        .device_costs
        .iter()
        .map(|(d, n)| (d.as_str(), *n))
        .collect();
    match admit_costs(&limit, &costs, now_ms).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(retry_after_s)) => Err(rate_limit::limited(retry_after_s, &limit)),
        Err(e) => {
            super::emit("error", "rate_limit_store_failed", "", &[("error", &e.0)]);
            Err(Problem::new(
                ProblemType::UpstreamUnavailable,
                "the rate-limit store is unavailable; nothing was accepted",
            )
            .with_retry_after(1))
        }
    }
}

#[cfg(feature = "spin")]
async fn admit_costs(
    limit: &RateLimit,
    costs: &[(&str, u32)],
    now_ms: u64,
) -> Result<Result<(), u32>, StoreError> {
    let store = super::kv::open(super::kv::Path::Request).await?;
    rate_limit::admit_in_store(&store, limit, costs, now_ms).await
}

#[cfg(not(feature = "spin"))]
async fn admit_costs(
    limit: &RateLimit,
    costs: &[(&str, u32)],
    now_ms: u64,
) -> Result<Result<(), u32>, StoreError> {
    use std::cell::RefCell;

    use crate::http::rate_limit::MemoryBuckets;

    thread_local! {
        static BUCKETS: RefCell<Option<MemoryBuckets>> = const { RefCell::new(None) };
    }
    Ok(BUCKETS.with(|slot| MemoryBuckets::admit_in(&mut slot.borrow_mut(), *limit, costs, now_ms)))
}

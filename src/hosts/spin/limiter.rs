//! Per-device rate limits on Spin / wasi:http. The spin flavour keeps the buckets in Spin's
//! SQLite database `default`, shared by every instance (and by every `spin up` on the same
//! file): one statement per device decides and takes, atomically (`rate_limit::sql`), so
//! concurrent requests of one device are admitted exactly as its bucket allows. Spin runs a
//! statement on a blocking pool, so the instance stays free for other requests meanwhile. The
//! portable flavour has no store and keeps buckets in the instance's memory: exact while one
//! instance serves a device, no limit at all when every request gets a fresh instance.

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
    use std::rc::Rc;

    use super::database::{self, Path};
    use crate::http::rate_limit::sql::SqlBuckets;

    thread_local! {
        static BUCKETS: Rc<SqlBuckets> = Rc::new(SqlBuckets::new());
    }
    let buckets = BUCKETS.with(Rc::clone);
    let shared = database::open(Path::Request).await?;
    buckets
        .admit(&shared, database::open_own, limit, costs, now_ms)
        .await
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

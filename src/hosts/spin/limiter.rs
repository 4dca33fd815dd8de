//! Per-device rate limits on Spin / wasi:http, as the accept use case charges and refunds them.
//! The spin flavour keeps the buckets in Spin's SQLite database `default`, shared by every
//! instance (and by every `spin up` on the same file): one statement per device decides and
//! takes, atomically (`rate_limit::sql`), so concurrent requests of one device are admitted
//! exactly as its bucket allows. The portable flavour has no store and keeps buckets in the
//! instance's memory: exact while one instance serves a device, no limit at all when every
//! request gets a fresh instance.

use crate::http::rate_limit::RateLimit;
use crate::ports::StoreError;

#[cfg(feature = "spin")]
mod store {
    use std::rc::Rc;

    use crate::hosts::spin::database::{self, Path};
    use crate::http::rate_limit::sql::SqlBuckets;
    use crate::http::rate_limit::RateLimit;
    use crate::ports::StoreError;

    thread_local! {
        static BUCKETS: Rc<SqlBuckets> = Rc::new(SqlBuckets::new());
    }

    pub async fn charge(
        limit: &RateLimit,
        costs: &[(&str, u32)],
        now_ms: u64,
    ) -> Result<Result<(), u32>, StoreError> {
        let buckets = BUCKETS.with(Rc::clone);
        let shared = database::open(Path::Request).await?;
        buckets
            .admit(&shared, database::open_own, limit, costs, now_ms)
            .await
    }

    pub async fn refund(limit: &RateLimit, costs: &[(&str, u32)]) {
        let buckets = BUCKETS.with(Rc::clone);
        if let Ok(db) = database::open(Path::Request).await {
            buckets.refund(&db, limit, costs).await;
        }
    }
}

#[cfg(not(feature = "spin"))]
mod store {
    use std::cell::RefCell;

    use crate::http::rate_limit::{MemoryBuckets, RateLimit};
    use crate::ports::StoreError;

    thread_local! {
        static BUCKETS: RefCell<Option<MemoryBuckets>> = const { RefCell::new(None) };
    }

    pub async fn charge(
        limit: &RateLimit,
        costs: &[(&str, u32)],
        now_ms: u64,
    ) -> Result<Result<(), u32>, StoreError> {
        Ok(BUCKETS
            .with(|slot| MemoryBuckets::admit_in(&mut slot.borrow_mut(), *limit, costs, now_ms)))
    }

    pub async fn refund(_limit: &RateLimit, costs: &[(&str, u32)]) {
        BUCKETS.with(|slot| {
            if let Some(buckets) = slot.borrow_mut().as_mut() {
                buckets.refund(costs);
            }
        });
    }
}

/// Takes the tokens of one request, or says in how many seconds it would fit.
pub async fn charge(
    limit: Option<RateLimit>,
    costs: &[(&str, u32)],
    now_ms: u64,
) -> Result<Result<(), u32>, StoreError> {
    match limit {
        Some(limit) => store::charge(&limit, costs, now_ms).await,
        None => Ok(Ok(())),
    }
}

/// Gives back the tokens of a request that was then refused.
pub async fn refund(limit: Option<RateLimit>, costs: &[(&str, u32)]) {
    if let Some(limit) = limit {
        store::refund(&limit, costs).await;
    }
}

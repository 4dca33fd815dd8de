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
    sql_buckets::admit(limit, costs, now_ms).await
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

/// SQLite statements run on the request path since this instance started (`/admin/stats`;
/// the connection's set-up, once per instance, is not counted).
#[cfg(feature = "spin")]
pub fn statements() -> u64 {
    sql_buckets::STATEMENTS.with(std::cell::Cell::get)
}

#[cfg(feature = "spin")]
mod sql_buckets {
    use std::cell::{Cell, RefCell};
    use std::rc::Rc;

    use spin_sdk::sqlite::{Connection, Value};

    use crate::http::rate_limit::{self, sql, Bucket, RateLimit};
    use crate::ports::StoreError;

    /// How often an instance forgets the buckets that are full again.
    const FORGET_EVERY_MS: u64 = 300_000;

    thread_local! {
        // One connection per instance, opened on first use.
        static DB: RefCell<Option<Rc<Connection>>> = const { RefCell::new(None) };
        static FORGOTTEN_AT: Cell<u64> = const { Cell::new(0) };
        pub(super) static STATEMENTS: Cell<u64> = const { Cell::new(0) };
    }

    fn error(e: spin_sdk::sqlite::Error) -> StoreError {
        StoreError(format!("sqlite: {e:?}"))
    }

    /// Runs one statement of the request path (counted) and reads its rows to the end.
    async fn rows(
        db: &Connection,
        statement: &str,
        params: Vec<Value>,
    ) -> Result<Vec<spin_sdk::sqlite::RowResult>, StoreError> {
        STATEMENTS.with(|n| n.set(n.get() + 1));
        setup_rows(db, statement, params).await
    }

    /// Runs one statement and reads its rows to the end (as the interface requires).
    async fn setup_rows(
        db: &Connection,
        statement: &str,
        params: Vec<Value>,
    ) -> Result<Vec<spin_sdk::sqlite::RowResult>, StoreError> {
        db.execute(statement, params)
            .await
            .map_err(error)?
            .collect()
            .await
            .map_err(error)
    }

    /// The instance's connection. The first one sets the file up: WAL (kept in the file: a
    /// commit appends to the log, and readers do not wait for the writer), `synchronous=NORMAL`
    /// (the log is synced at checkpoints, not at every commit: a power cut may give a device
    /// back the tokens of its last requests, never lose a reading), and the table.
    async fn connection() -> Result<Rc<Connection>, StoreError> {
        if let Some(db) = DB.with(|d| d.borrow().clone()) {
            return Ok(db);
        }
        let db = Connection::open_default().await.map_err(error)?;
        for setup in [
            "PRAGMA journal_mode=WAL",
            "PRAGMA synchronous=NORMAL",
            sql::SCHEMA,
        ] {
            setup_rows(&db, setup, Vec::new()).await?;
        }
        let db = Rc::new(db);
        Ok(DB.with(|d| d.borrow_mut().get_or_insert(db).clone()))
    }

    fn take_params(limit: &RateLimit, device: &str, cost: u32, now_ms: u64) -> Vec<Value> {
        vec![
            Value::Text(device.to_owned()),
            Value::Integer(i64::from(cost)),
            Value::Integer(now_ms as i64),
            Value::Real(limit.per_s),
            Value::Real(limit.burst),
        ]
    }

    /// One statement per device; a request of several devices (possible only with
    /// `AUTH_MODE=off`) takes them in one transaction on a connection of its own, all or none.
    pub(super) async fn admit(
        limit: &RateLimit,
        costs: &[(&str, u32)],
        now_ms: u64,
    ) -> Result<Result<(), u32>, StoreError> {
        let shared = connection().await?;
        let own;
        let db: &Connection = if costs.len() > 1 {
            own = Connection::open_default().await.map_err(error)?;
            rows(&own, "BEGIN IMMEDIATE", Vec::new()).await?;
            &own
        } else {
            &shared
        };
        let mut refused = None;
        for &(device, cost) in costs {
            let taken = rows(db, sql::TAKE, take_params(limit, device, cost, now_ms)).await?;
            if taken.is_empty() {
                refused = Some((device, cost));
                break;
            }
        }
        if costs.len() > 1 {
            let end = if refused.is_some() {
                "ROLLBACK"
            } else {
                "COMMIT"
            };
            rows(db, end, Vec::new()).await?;
        }
        let Some((device, cost)) = refused else {
            forget_full_buckets(&shared, limit, now_ms).await;
            return Ok(Ok(()));
        };
        // Refused: when would it fit? (A read, only off the admitted path.)
        let found = rows(&shared, sql::BUCKET, vec![Value::Text(device.to_owned())]).await?;
        let mut bucket = [found
            .first()
            .and_then(|r| {
                Some(Bucket {
                    tokens: r.get::<f64>(0)?,
                    updated_ms: u64::try_from(r.get::<i64>(1)?).ok()?,
                })
            })
            .unwrap_or_else(|| Bucket::full(limit, now_ms))];
        Ok(Err(rate_limit::admit(limit, &mut bucket, &[cost], now_ms)
            .err()
            .unwrap_or(1)))
    }

    /// Every `FORGET_EVERY_MS` an instance drops the buckets that are full again, so the table
    /// holds the devices of the last refill period. A failure only leaves them for next time.
    async fn forget_full_buckets(db: &Connection, limit: &RateLimit, now_ms: u64) {
        let last = FORGOTTEN_AT.with(Cell::get);
        if last == 0 {
            // An instance's first request only starts the clock: most instances serve a few
            // requests and go, and the request path stays one statement.
            FORGOTTEN_AT.with(|t| t.set(now_ms));
            return;
        }
        if now_ms.saturating_sub(last) < FORGET_EVERY_MS {
            return;
        }
        FORGOTTEN_AT.with(|t| t.set(now_ms));
        let before = now_ms.saturating_sub(sql::full_after_ms(limit));
        let _ = rows(db, sql::FORGET_FULL, vec![Value::Integer(before as i64)]).await;
    }
}

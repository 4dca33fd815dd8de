//! The outbox every instance of an app shares, in one SQLite database (Spin's `spin:sqlite`;
//! one file under `spin up`, a libSQL database for a fleet): the accepted readings wait as rows,
//! and batches are cut across every instance's readings, so a batch is full however many
//! instances the host runs.
//!
//! - **Accept**: one statement per accepted request, before its 2xx ([`SharedOutbox::append`]):
//!   a row per reading, inserted only if the backlog has room; with the rate limit on, the same
//!   statement takes the request's tokens (a trigger, `sql::CHARGE`), all or none.
//! - **Claim**: a batch is due when `FLUSH_MAX_ITEMS` readings wait, or the oldest has waited
//!   `FLUSH_INTERVAL_MS`. One statement claims up to [`SENDS_IN_FLIGHT`] due batches under a
//!   lease ([`LEASE_MS`]): it marks the rows with a claim token and a lease expiry, atomically
//!   across every connection and process on the database, so two instances never claim the
//!   same row while its lease runs. A claim that ends in a crash is claimed again once its lease
//!   has expired.
//! - **Settle**: the claimed rows go through the one delivery engine (`outbox`): delivered rows
//!   are deleted, a refused reading is dead-lettered alone, and after a failed round the rows
//!   still held are released with the backoff as their new lease, and their attempt count
//!   raised. While any released batch waits for its retry, or is being sent again, nobody cuts a
//!   new batch: a collector that is down gets one batch at a time from the whole app.
//! - **Who delivers**: the instance whose request fills a batch (its rows cross a multiple of
//!   `FLUSH_MAX_ITEMS` in the table's sequence), and the instance whose reading is the oldest
//!   waiting when `FLUSH_INTERVAL_MS` has passed, claim after answering ([`SharedDriver`]).
//!   Nothing lists keys or scans the table.
//!
//! Guarantee: every reading whose request got a 2xx is in the table until it is delivered or
//! dead-lettered. A batch is sent again only after its holder failed or crashed, or its lease
//! expired while it was being sent (at least once; collectors deduplicate by reading id).

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use crate::application::delivery::outbox::{
    deliver_round, Delivery, Outbox, OutboxConfig, COLLECTOR_TIMEOUT_MS, SENDS_IN_FLIGHT,
};
use crate::application::delivery::policy::{
    FlushPolicy, DEAD_LETTERS_KEPT, DEAD_LETTER_MAX_AGE_MS,
};
use crate::application::rate_limit::sql as rate_limit_sql;
use crate::domain::enrich::StoredReading;
use crate::domain::ids;
use crate::ports::{
    Clock, Collector, DeadLetter, Entropy, IsolatedReading, KeyValue, Level, OutboxStore, Sql,
    SqlValue, StoreError, StoredSegment, Timer, Trim,
};

/// How long a claim is held before anyone may claim its rows again: longer than a send may
/// take (`COLLECTOR_TIMEOUT_MS`) with room for the settling statements.
pub const LEASE_MS: u64 = COLLECTOR_TIMEOUT_MS + 10_000;
/// An instance with traffic looks for work nobody is delivering (rows left by a crash or a
/// restart) on its first request and then this often, even when it accepts nothing itself.
pub const LOOK_EVERY_MS: u64 = 30_000;
/// While readings wait, a driver looks this often whether a request of its instance filled a
/// batch (a request cannot wake another request's task on wasi:http: see `Wakeups::Polled`).
pub const POLL_MS: u64 = 20;

/// The statements, checked against a real SQLite in the tests.
pub mod sql {
    /// `PRAGMA user_version` of the current schema. Earlier releases left 1 to 4 (and 2 or
    /// more only once their key-value segments were imported); an instance that finds less
    /// than this brings the database up to date in one transaction ([`MIGRATE`]), with the
    /// version read inside it, so two instances never undo each other's upgrade.
    pub const VERSION_CURRENT: i64 = 5;
    /// The first version whose database holds no more key-value segments to import.
    pub const VERSION_IMPORTED: i64 = 2;

    /// Before the upgrade's transaction (a journal mode cannot change inside one). WAL is kept
    /// in the file: a commit appends to the log, and readers do not wait for the writer.
    pub const WAL: &str = "PRAGMA journal_mode=WAL";
    pub const VERSION: &str = "SELECT user_version FROM pragma_user_version";

    /// Every object of the current schema, each made if missing, so that an upgrade from any
    /// earlier version leaves the same database as a fresh start (the columns an old table
    /// lacks are added before: [`HAS_CHARGE`], [`ADD_CHARGE`]; a dead-letter table whose
    /// `status` is NOT NULL is rebuilt: [`DEAD_LETTERS_STATUS_NOT_NULL`]).
    pub const MIGRATE: &[&str] = &[
        "CREATE TABLE IF NOT EXISTS outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, \
         received_at_ms INTEGER NOT NULL, node TEXT NOT NULL, doc TEXT NOT NULL, claim TEXT, \
         lease_until_ms INTEGER NOT NULL DEFAULT 0, attempts INTEGER NOT NULL DEFAULT 0, \
         charge TEXT)",
        // Only rows that failed before: what the retry gate in CLAIM looks up.
        "CREATE INDEX IF NOT EXISTS outbox_retrying ON outbox (lease_until_ms) WHERE attempts > 0",
        // Only claimed rows: how a claim reads its rows back.
        "CREATE INDEX IF NOT EXISTS outbox_claimed ON outbox (claim) WHERE claim IS NOT NULL",
        "CREATE TABLE IF NOT EXISTS dead_letters (id INTEGER PRIMARY KEY AUTOINCREMENT, \
         batch_id TEXT NOT NULL, failed_at_ms INTEGER NOT NULL, status INTEGER, \
         detail TEXT NOT NULL, readings INTEGER NOT NULL, body TEXT NOT NULL)",
        "CREATE TABLE IF NOT EXISTS outbox_meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL) \
         WITHOUT ROWID",
        // The rate limit's buckets: charged by `CHARGE`, read by `rate_limit::sql`; the index
        // finds the ones that are full again without a scan (`FORGET_FULL`).
        "CREATE TABLE IF NOT EXISTS rate_buckets (device TEXT PRIMARY KEY, tokens REAL NOT NULL, \
         updated_ms INTEGER NOT NULL) WITHOUT ROWID",
        "CREATE INDEX IF NOT EXISTS rate_buckets_updated ON rate_buckets (updated_ms)",
        // Readings the collector keeps failing while it takes others, each retried alone on its
        // own backoff (its lease) until given up: apart from `outbox`, so that one held for
        // minutes holds back no claim, no gate and no backlog.
        "CREATE TABLE IF NOT EXISTS outbox_isolated (id INTEGER PRIMARY KEY AUTOINCREMENT, \
         received_at_ms INTEGER NOT NULL, node TEXT NOT NULL, doc TEXT NOT NULL, \
         since_ms INTEGER NOT NULL, failures INTEGER NOT NULL, last_failed_ms INTEGER NOT NULL, \
         lease_until_ms INTEGER NOT NULL, claim TEXT)",
        "CREATE INDEX IF NOT EXISTS outbox_isolated_due ON outbox_isolated (lease_until_ms)",
        CHARGE,
        APPEND_VIEW,
        APPEND_ROWS,
    ];

    /// Whether the dead-letter table is release 2's, whose `status` may not be NULL (a batch
    /// that could not be encoded has none).
    pub const DEAD_LETTERS_STATUS_NOT_NULL: &str =
        "SELECT count(*) FROM pragma_table_info('dead_letters') WHERE name = 'status' AND \"notnull\"";
    pub const REBUILD_DEAD_LETTERS: &[&str] = &[
        "ALTER TABLE dead_letters RENAME TO dead_letters_release_2",
        "CREATE TABLE dead_letters (id INTEGER PRIMARY KEY AUTOINCREMENT, \
         batch_id TEXT NOT NULL, failed_at_ms INTEGER NOT NULL, status INTEGER, \
         detail TEXT NOT NULL, readings INTEGER NOT NULL, body TEXT NOT NULL)",
        "INSERT INTO dead_letters SELECT * FROM dead_letters_release_2",
        "DROP TABLE dead_letters_release_2",
    ];

    /// The key-value segments of the release before the shared outbox were imported (or there
    /// were none to import): a row.
    pub const IMPORTED: &str = "SELECT value FROM outbox_meta WHERE name = 'kv_imported'";
    pub const MARK_IMPORTED: &str = "INSERT INTO outbox_meta (name, value) \
         VALUES ('kv_imported', 1) ON CONFLICT (name) DO NOTHING";

    /// Whether the outbox has its `charge` column yet (a table of release 2 has not).
    pub const HAS_CHARGE: &str =
        "SELECT count(*) FROM pragma_table_info('outbox') WHERE name = 'charge'";
    pub const ADD_CHARGE: &str = "ALTER TABLE outbox ADD COLUMN charge TEXT";

    /// What `CHARGE` raises when a bucket is short: the whole statement is undone.
    pub const RATE_LIMITED: &str = "edge-enrich: rate limited";

    /// The rate limit, in the append's own statement: a row whose `charge` is `[device, cost,
    /// now_ms, per_s, burst]` takes `cost` tokens from the device's bucket (refilled at
    /// `per_s` up to `burst`; a device seen first starts full), or aborts the statement when
    /// they are not there, so a request's readings and its tokens are committed together or
    /// not at all. A request carries one charge per device, on as many of its rows.
    pub const CHARGE: &str = "CREATE TRIGGER IF NOT EXISTS outbox_charge AFTER INSERT ON outbox \
         WHEN NEW.charge IS NOT NULL BEGIN \
           SELECT RAISE(ABORT, 'edge-enrich: rate limited') FROM rate_buckets \
           WHERE device = json_extract(NEW.charge, '$[0]') \
             AND min(json_extract(NEW.charge, '$[4]'), tokens + max(0, \
                 json_extract(NEW.charge, '$[2]') - updated_ms) / 1000.0 \
                 * json_extract(NEW.charge, '$[3]')) < json_extract(NEW.charge, '$[1]'); \
           INSERT INTO rate_buckets (device, tokens, updated_ms) VALUES \
             (json_extract(NEW.charge, '$[0]'), \
              json_extract(NEW.charge, '$[4]') - json_extract(NEW.charge, '$[1]'), \
              json_extract(NEW.charge, '$[2]')) \
           ON CONFLICT (device) DO UPDATE SET \
             tokens = min(json_extract(NEW.charge, '$[4]'), tokens + max(0, \
                 json_extract(NEW.charge, '$[2]') - updated_ms) / 1000.0 \
                 * json_extract(NEW.charge, '$[3]')) - json_extract(NEW.charge, '$[1]'), \
             updated_ms = max(updated_ms, json_extract(NEW.charge, '$[2]')); \
         END";

    /// What `APPEND_ROWS` raises when the backlog would pass its bound: nothing is inserted.
    pub const BACKLOG_FULL: &str = "edge-enrich: backlog full";

    /// The append is an insert into this view, which `APPEND_ROWS` carries out, so that it
    /// returns one row however many readings it inserts. An `INSERT … RETURNING` on the table
    /// returns a row per reading, and Spin streams a statement's rows to the guest four at a
    /// time while the statement, and with it the write lock, stays open: a group of more than
    /// four readings held the lock for the instance's turns at reading them.
    pub const APPEND_VIEW: &str =
        "CREATE VIEW IF NOT EXISTS outbox_append AS SELECT NULL AS rows, NULL AS bound";

    /// `rows`: the readings of one or more requests as a JSON array of `[received_at_ms,
    /// node, reading, charge]` (charge: see `CHARGE`, or null); `bound`: the backlog bound.
    /// Inserts all or nothing: nothing, and `BACKLOG_FULL`, when the rows held (counted as the
    /// span of their sequence numbers, an upper bound found in two index lookups) would pass
    /// the bound, before any token is taken; `RATE_LIMITED` when a bucket is short. The rows
    /// get consecutive sequence numbers, in order.
    pub const APPEND_ROWS: &str = "CREATE TRIGGER IF NOT EXISTS outbox_append_rows \
         INSTEAD OF INSERT ON outbox_append BEGIN \
           SELECT RAISE(ABORT, 'edge-enrich: backlog full') \
           WHERE coalesce((SELECT max(seq) FROM outbox) - (SELECT min(seq) FROM outbox) + 1, 0) \
                 + json_array_length(NEW.rows) > NEW.bound; \
           INSERT INTO outbox (received_at_ms, node, doc, charge) \
           SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), \
                  json_extract(value, '$[2]'), json_extract(value, '$[3]') \
           FROM json_each(NEW.rows) ORDER BY key; \
         END";

    /// ?1 rows, ?2 bound (see `APPEND_ROWS`): the last row's sequence number.
    pub const APPEND: &str = "INSERT INTO outbox_append (rows, bound) VALUES (?1, ?2) \
         RETURNING (SELECT max(seq) FROM outbox)";

    /// The previous release's segments, with their own receive time: no bound.
    pub const IMPORT: &str = "INSERT INTO outbox (received_at_ms, node, doc) \
         SELECT ?1, ?2, value FROM json_each(?3) ORDER BY key";

    /// ?1 claim token, ?2 now, ?3 lease, ?4 batch size, ?5 batches, ?6 max age, ?7 a sequence
    /// number the claimer saw fill a batch (0: none). Takes the oldest unleased rows, up to ?5
    /// batches: whole batches, as many more rows as fill the batches that hold every row ?6
    /// old (so a reading that is due goes in a batch as full as the table allows), and every
    /// row up to ?7 (so a filled batch leaves nothing of it behind, and the other instances
    /// may count on it: `SharedDriver::appended`); nothing while a batch waits for its retry or
    /// is being sent again. Returns no
    /// rows, so the write lock is given back as soon as the rows are marked: the claimed
    /// readings are read afterwards (`CLAIMED`), which in WAL mode blocks no writer.
    pub const CLAIM: &str = "WITH free AS (\
           SELECT seq, received_at_ms FROM outbox WHERE lease_until_ms <= ?2 \
           ORDER BY seq LIMIT ?4 * ?5), \
         take AS (SELECT min(count(*), max(count(*) / ?4 * ?4, \
           (coalesce(sum(received_at_ms <= ?2 - ?6), 0) + ?4 - 1) / ?4 * ?4, \
           coalesce(sum(seq <= ?7), 0))) AS n FROM free) \
         UPDATE outbox SET claim = ?1, lease_until_ms = ?2 + ?3 \
         WHERE seq IN (SELECT seq FROM free ORDER BY seq LIMIT (SELECT n FROM take)) \
           AND NOT EXISTS (SELECT 1 FROM outbox WHERE attempts > 0 AND lease_until_ms > ?2)";

    /// ?1 claim token: the rows it holds, as one JSON array of `[seq, received_at_ms, node,
    /// doc, attempts]` in one row (see `APPEND_VIEW`: a row each would keep the read open
    /// while the instance takes them four at a time).
    pub const CLAIMED: &str = "SELECT json_group_array(json_array(seq, received_at_ms, node, \
         doc, attempts)) FROM outbox WHERE claim = ?1";

    /// ?1 the settled rows' sequence numbers as a JSON array.
    /// ?1 claim token, ?2 the settled rows' sequence numbers as a JSON array. Only rows still
    /// under this claim: a holder whose lease expired cannot delete rows another claim took.
    pub const DELETE: &str = "DELETE FROM outbox WHERE claim = ?1 \
         AND seq IN (SELECT value FROM json_each(?2))";

    /// ?1 claim token, ?2 when they may be claimed again, ?3 the rows as a JSON array. Only
    /// rows still under this claim: a holder whose lease expired cannot undo a newer claim.
    pub const RELEASE: &str = "UPDATE outbox SET claim = NULL, lease_until_ms = ?2, \
         attempts = attempts + 1 WHERE claim = ?1 AND seq IN (SELECT value FROM json_each(?3))";

    pub const DEAD_LETTER: &str = "INSERT INTO dead_letters \
         (batch_id, failed_at_ms, status, detail, readings, body) VALUES (?1, ?2, ?3, ?4, ?5, ?6)";
    /// ?1 letters kept, ?2 the oldest failure kept.
    pub const DEAD_LETTERS_BOUND: &str = "DELETE FROM dead_letters \
         WHERE id <= (SELECT max(id) FROM dead_letters) - ?1 OR failed_at_ms < ?2 RETURNING id";
    pub const DEAD_LETTERS: &str = "SELECT batch_id, failed_at_ms, status, detail, readings, body \
         FROM dead_letters WHERE failed_at_ms >= ?2 ORDER BY id DESC LIMIT ?1";

    /// ?1 now: rows held, rows under a lease, the oldest receive time.
    pub const SUMMARY: &str = "SELECT count(*), coalesce(sum(lease_until_ms > ?1), 0), \
         min(received_at_ms) FROM outbox";

    /// ?1 claim token, ?2 the new lease end: a holder still at work on its claim keeps it.
    pub const RENEW: &str = "UPDATE outbox SET lease_until_ms = ?2 WHERE claim = ?1";
    pub const RENEW_ISOLATED: &str =
        "UPDATE outbox_isolated SET lease_until_ms = ?2 WHERE claim = ?1";

    /// ?1 received_at_ms, ?2 node, ?3 doc, ?4 since, ?5 failures, ?6 last failure, ?7 when due.
    pub const ISOLATE: &str = "INSERT INTO outbox_isolated \
         (received_at_ms, node, doc, since_ms, failures, last_failed_ms, lease_until_ms) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)";
    /// ?1 id, ?2 claim token, ?3 failures, ?4 last failure, ?5 when due: an isolated row
    /// claimed back and failed again waits once more (only under the claim that holds it).
    pub const ISOLATE_AGAIN: &str = "UPDATE outbox_isolated SET claim = NULL, failures = ?3, \
         last_failed_ms = ?4, lease_until_ms = ?5 WHERE id = ?1 AND claim = ?2";
    /// ?1 claim token, ?2 now, ?3 lease, ?4 how many: the isolated rows due, oldest due first.
    /// One row each (the few it takes: at most `SENDS_IN_FLIGHT`).
    pub const CLAIM_ISOLATED: &str = "UPDATE outbox_isolated SET claim = ?1, \
         lease_until_ms = ?2 + ?3 WHERE id IN (SELECT id FROM outbox_isolated \
         WHERE lease_until_ms <= ?2 ORDER BY lease_until_ms LIMIT ?4) \
         RETURNING id, received_at_ms, node, doc, since_ms, failures, last_failed_ms";
    /// ?1 id, ?2 the claim that holds it.
    pub const DELETE_ISOLATED: &str = "DELETE FROM outbox_isolated WHERE id = ?1 AND claim = ?2";
    /// ?1 claim token, ?2 when due again: after a failed round, an isolated row held goes back.
    pub const RELEASE_ISOLATED: &str = "UPDATE outbox_isolated SET claim = NULL, \
         lease_until_ms = ?2, failures = failures + 1 WHERE claim = ?1";

    /// ?1 now, ?2 how often: a row for the one instance whose turn it is to do a chore named
    /// ?3 (the clock is the database's, shared by every instance, however short-lived).
    pub const CHORE_DUE: &str = "INSERT INTO outbox_meta (name, value) VALUES (?3, ?1) \
         ON CONFLICT (name) DO UPDATE SET value = excluded.value \
         WHERE outbox_meta.value <= ?1 - ?2 RETURNING value";

    /// ?1 now, ?2 how long an import may take: true (a row) for the one instance that may import.
    pub const IMPORT_LEASE: &str =
        "INSERT INTO outbox_meta (name, value) VALUES ('kv_import', ?1) \
         ON CONFLICT (name) DO UPDATE SET value = excluded.value \
         WHERE outbox_meta.value <= ?1 - ?2 RETURNING value";
}

/// Where one request's rows landed in the table's sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub first_seq: i64,
    pub last_seq: i64,
}

impl Appended {
    /// True when these rows cross a multiple of the batch size: the request that makes a batch
    /// full (counted over every instance's rows) claims it.
    pub fn fills_a_batch(&self, max_items: usize) -> bool {
        self.whole_batches_end(max_items) >= self.first_seq
    }

    /// The last row of the last whole batch up to these rows (a multiple of the batch size):
    /// every row up to it is in a full batch.
    pub fn whole_batches_end(&self, max_items: usize) -> i64 {
        let max = max_items.max(1) as i64;
        self.last_seq.div_euclid(max) * max
    }
}

/// One accepted request's readings, as appended.
#[derive(Debug, Clone)]
pub struct Request {
    pub received_at_ms: u64,
    pub node: Rc<str>,
    pub readings: Vec<StoredReading>,
    /// With the rate limit on.
    pub charge: Option<Charge>,
}

/// What a request's readings cost its devices' buckets, taken by its append (`sql::CHARGE`).
#[derive(Debug, Clone, PartialEq)]
pub struct Charge {
    /// Readings per device.
    pub costs: Vec<(String, u32)>,
    pub per_s: f64,
    pub burst: f64,
}

/// Why a request's rows were not inserted (nothing of it was, and it took no token).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotAppended {
    /// The app's backlog bound.
    BacklogFull,
    /// A bucket of its devices is short.
    RateLimited,
}

/// What one claim took.
#[derive(Debug, Default)]
pub struct Claimed {
    pub segments: Vec<StoredSegment<Held>>,
    pub readings: usize,
    /// The most failed attempts among the rows.
    pub attempts: u32,
}

/// What the engine holds of the shared outbox: the rows one claim took of one node (a batch
/// envelope names one node, so a claim of rows from several nodes is one part each), or one
/// isolated row.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Held {
    Claim { token: Rc<str>, part: u32 },
    Isolated { id: i64, token: Rc<str> },
}

/// The shared outbox on a database, as the engine's store. It remembers the rows of each claim
/// part it holds, to settle them by sequence number, and when its claims' leases end.
pub struct SharedOutbox<D> {
    pub db: D,
    parts: RefCell<HashMap<Held, Vec<i64>>>,
    /// Each claim token held, and when its lease ends.
    leases: RefCell<HashMap<Rc<str>, u64>>,
    /// When the isolated readings this instance set aside are due: its driver comes back for
    /// them then.
    pub isolated_due: RefCell<Vec<u64>>,
}

fn seqs_json(seqs: &[i64]) -> String {
    serde_json::to_string(seqs).unwrap_or_else(|_| "[]".into())
}

fn int(row: &[SqlValue], i: usize) -> Result<i64, StoreError> {
    row.get(i)
        .and_then(SqlValue::as_i64)
        .ok_or_else(|| StoreError(format!("column {i}: not an integer")))
}

fn text(row: &[SqlValue], i: usize) -> Result<&str, StoreError> {
    row.get(i)
        .and_then(SqlValue::as_text)
        .ok_or_else(|| StoreError(format!("column {i}: not text")))
}

fn count(n: u64) -> SqlValue {
    SqlValue::Integer(i64::try_from(n).unwrap_or(i64::MAX))
}

fn ms(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

/// What [`SharedOutbox::prepare`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prepared {
    /// The schema version the database had.
    pub found: i64,
    /// Key-value segments of the release before the shared outbox may still wait to be
    /// imported ([`SharedOutbox::import_key_value`]).
    pub import: bool,
}

impl<D: Sql> SharedOutbox<D> {
    pub fn new(db: D) -> Self {
        Self {
            db,
            parts: RefCell::new(HashMap::new()),
            leases: RefCell::new(HashMap::new()),
            isolated_due: RefCell::new(Vec::new()),
        }
    }

    async fn version(&self) -> Result<i64, StoreError> {
        let rows = self.db.execute(sql::VERSION, Vec::new()).await?;
        Ok(rows.first().map(|r| int(r, 0)).transpose()?.unwrap_or(0))
    }

    /// Brings the database to the current schema (once per database: instances starting
    /// together all may call it; the first upgrades, under the write lock, and the others find
    /// it done) and says whether key-value segments may still wait to be imported. Once per
    /// instance; `db` must be the caller's own connection.
    pub async fn prepare(&self) -> Result<Prepared, StoreError> {
        let mut found = self.version().await?;
        if found < sql::VERSION_CURRENT {
            self.db.execute(sql::WAL, Vec::new()).await?;
            self.db.execute("BEGIN IMMEDIATE", Vec::new()).await?;
            let upgraded = self.upgrade().await;
            let end = if upgraded.is_ok() {
                "COMMIT"
            } else {
                "ROLLBACK"
            };
            self.db.execute(end, Vec::new()).await?;
            found = upgraded?;
        }
        let imported = !self.db.execute(sql::IMPORTED, Vec::new()).await?.is_empty();
        Ok(Prepared {
            found,
            import: !imported,
        })
    }

    /// The upgrade, in the caller's transaction: the version as found under the lock.
    async fn upgrade(&self) -> Result<i64, StoreError> {
        let found = self.version().await?;
        if found >= sql::VERSION_CURRENT {
            return Ok(found); // another instance was first
        }
        let exists = |table: &str| {
            format!("SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = '{table}'")
        };
        let one =
            |rows: Vec<Vec<SqlValue>>| rows.first().and_then(|r| r.first()?.as_i64()) == Some(1);
        if one(self.db.execute(&exists("outbox"), Vec::new()).await?)
            && !one(self.db.execute(sql::HAS_CHARGE, Vec::new()).await?)
        {
            self.db.execute(sql::ADD_CHARGE, Vec::new()).await?;
        }
        if one(self
            .db
            .execute(sql::DEAD_LETTERS_STATUS_NOT_NULL, Vec::new())
            .await?)
        {
            for statement in sql::REBUILD_DEAD_LETTERS {
                self.db.execute(statement, Vec::new()).await?;
            }
        }
        for statement in sql::MIGRATE {
            self.db.execute(statement, Vec::new()).await?;
        }
        if found >= sql::VERSION_IMPORTED {
            self.db.execute(sql::MARK_IMPORTED, Vec::new()).await?;
        }
        let set = format!("PRAGMA user_version = {}", sql::VERSION_CURRENT);
        self.db.execute(&set, Vec::new()).await?;
        Ok(found)
    }

    /// Moves the segments a previous release kept in the key-value store (one key each, see
    /// `legacy_kv`) into the table, with their receive times, then deletes their keys; done once
    /// per database, by one instance at a time. A crash between an insert and its key's delete
    /// sends that segment twice, never loses it. Returns the readings imported.
    pub async fn import_key_value<K: KeyValue>(
        &self,
        kv: &K,
        now_ms: u64,
        default_node: &str,
    ) -> Result<usize, StoreError> {
        let lease = vec![count(now_ms), count(LEASE_MS * 4)];
        if self.db.execute(sql::IMPORT_LEASE, lease).await?.is_empty() {
            return Ok(0); // another instance is at it
        }
        let mut imported = 0;
        for key in kv.keys().await? {
            let Some(value) = kv.get(&key).await? else {
                continue;
            };
            let Some(segment) =
                crate::application::delivery::legacy_kv::decode(&key, &value, default_node)
            else {
                continue;
            };
            let docs: Vec<&str> = segment.readings.iter().map(StoredReading::as_str).collect();
            let params = vec![
                count(segment.received_at_ms),
                SqlValue::Text(segment.node.clone()),
                SqlValue::Text(serde_json::to_string(&docs).unwrap_or_default()),
            ];
            self.db.execute(sql::IMPORT, params).await?;
            kv.delete(&key).await?;
            imported += docs.len();
        }
        self.db.execute(sql::MARK_IMPORTED, Vec::new()).await?;
        Ok(imported)
    }

    /// One request's readings (and, with the rate limit on, its tokens), in one statement,
    /// before its answer.
    pub async fn append(&self, request: Request, max_backlog: usize) -> AppendResult {
        let group = [request];
        self.append_group(&group, max_backlog)
            .await
            .pop()
            .unwrap_or_else(|| Err(StoreError("no result".into())))
    }

    /// Several requests' readings, in one statement, and a result for each: all appended, or
    /// none when the backlog would pass `max_backlog`. When a request's bucket is short the
    /// statement takes nothing, and each request is then appended alone, so only the limited
    /// ones are refused (more statements, only while some device is over its limit).
    pub async fn append_group(
        &self,
        requests: &[Request],
        max_backlog: usize,
    ) -> Vec<AppendResult> {
        match self.insert(requests, max_backlog).await {
            Ok(Some(appended)) => appended.into_iter().map(Ok).collect(),
            Ok(None) if requests.len() == 1 => vec![Ok(Err(NotAppended::RateLimited))],
            Ok(None) => {
                let mut each = Vec::with_capacity(requests.len());
                for request in requests {
                    each.push(
                        match self
                            .insert(std::slice::from_ref(request), max_backlog)
                            .await
                        {
                            Ok(Some(mut one)) => {
                                Ok(one.pop().unwrap_or(Err(NotAppended::BacklogFull)))
                            }
                            Ok(None) => Ok(Err(NotAppended::RateLimited)),
                            Err(e) => Err(e),
                        },
                    );
                }
                each
            }
            Err(e) => requests.iter().map(|_| Err(e.clone())).collect(),
        }
    }

    /// One `APPEND` statement: a result per request, or `None` when a bucket was short.
    async fn insert(
        &self,
        requests: &[Request],
        max_backlog: usize,
    ) -> Result<Option<Vec<Result<Appended, NotAppended>>>, StoreError> {
        type Charged<'a> = (&'a str, u32, u64, f64, f64);
        let mut rows: Vec<(u64, &str, &str, Option<Charged>)> = Vec::new();
        for r in requests {
            let costs = r.charge.as_ref().map_or(&[][..], |c| &c.costs[..]);
            if costs.len() > r.readings.len() {
                return Err(StoreError("more charges than readings".into()));
            }
            for (i, doc) in r.readings.iter().enumerate() {
                // A request's charges ride on its first rows, one device each.
                let charge = r.charge.as_ref().and_then(|c| {
                    let (device, cost) = costs.get(i)?;
                    Some((device.as_str(), *cost, r.received_at_ms, c.per_s, c.burst))
                });
                rows.push((r.received_at_ms, &*r.node, doc.as_str(), charge));
            }
        }
        let params = vec![
            SqlValue::Text(serde_json::to_string(&rows).map_err(|e| StoreError(e.to_string()))?),
            count(max_backlog as u64),
        ];
        let full = || {
            Ok(Some(
                requests
                    .iter()
                    .map(|_| Err(NotAppended::BacklogFull))
                    .collect(),
            ))
        };
        if rows.is_empty() {
            return full();
        }
        let returned = match self.db.execute(sql::APPEND, params).await {
            Err(e) if e.0.contains(sql::RATE_LIMITED) => return Ok(None),
            Err(e) if e.0.contains(sql::BACKLOG_FULL) => return full(),
            other => other?,
        };
        // The rows' sequence numbers are consecutive, ending at the one returned.
        let last = returned
            .first()
            .map(|r| int(r, 0))
            .transpose()?
            .ok_or_else(|| StoreError("the append returned nothing".into()))?;
        let first = last + 1 - rows.len() as i64;
        let seq = |i: usize| first + i.min(rows.len() - 1) as i64;
        let mut at = 0;
        Ok(Some(
            requests
                .iter()
                .map(|r| {
                    let n = r.readings.len().max(1);
                    let appended = Appended {
                        first_seq: seq(at),
                        last_seq: seq(at + n - 1),
                    };
                    at += r.readings.len();
                    Ok(appended)
                })
                .collect(),
        ))
    }

    /// Claims up to `batches` due batches under `token` (see `sql::CLAIM`); nothing when none
    /// is due. The rows come back as one segment per run of one node's rows.
    pub async fn claim(
        &self,
        token: &str,
        now_ms: u64,
        flush: FlushPolicy,
        batches: usize,
        through_seq: i64,
    ) -> Result<Claimed, StoreError> {
        let params = vec![
            SqlValue::Text(token.to_owned()),
            count(now_ms),
            count(LEASE_MS),
            count(flush.max_items as u64),
            count(batches as u64),
            count(flush.max_age_ms),
            SqlValue::Integer(through_seq),
        ];
        self.db.execute(sql::CLAIM, params).await?;
        let rows = self
            .db
            .execute(sql::CLAIMED, vec![SqlValue::Text(token.to_owned())])
            .await?;
        let json = rows.first().map(|row| text(row, 0)).transpose()?;
        let mut taken: Vec<(i64, i64, String, String, i64)> = match json {
            Some(json) => {
                serde_json::from_str(json).map_err(|e| StoreError(format!("claimed rows: {e}")))?
            }
            None => Vec::new(),
        };
        if taken.is_empty() {
            return Ok(Claimed::default());
        }
        taken.sort_unstable_by_key(|t| t.0);
        let token: Rc<str> = token.into();
        self.leases
            .borrow_mut()
            .insert(token.clone(), now_ms + LEASE_MS);
        let mut segments: Vec<StoredSegment<Held>> = Vec::new();
        let mut parts = self.parts.borrow_mut();
        for row in &taken {
            let same_node = segments.last().is_some_and(|s| s.node == row.2);
            if !same_node {
                let key = Held::Claim {
                    token: token.clone(),
                    part: segments.len() as u32,
                };
                parts.insert(key.clone(), Vec::new());
                segments.push(StoredSegment {
                    key,
                    received_at_ms: ms(row.1),
                    node: row.2.clone(),
                    readings: Vec::new(),
                });
            }
            if let Some(segment) = segments.last_mut() {
                segment.received_at_ms = segment.received_at_ms.min(ms(row.1));
                segment.readings.push(StoredReading::from_store(&row.3));
                if let Some(seqs) = parts.get_mut(&segment.key) {
                    seqs.push(row.0);
                }
            }
        }
        let attempts = taken.iter().map(|t| t.4).max().unwrap_or(0);
        Ok(Claimed {
            readings: taken.len(),
            segments,
            attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
        })
    }

    /// Claims up to `n` isolated readings that are due (see `sql::CLAIM_ISOLATED`).
    pub async fn claim_isolated(
        &self,
        token: &str,
        now_ms: u64,
        n: usize,
    ) -> Result<Vec<IsolatedReading<Held>>, StoreError> {
        let params = vec![
            SqlValue::Text(token.to_owned()),
            count(now_ms),
            count(LEASE_MS),
            count(n as u64),
        ];
        let rows = self.db.execute(sql::CLAIM_ISOLATED, params).await?;
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let token: Rc<str> = token.into();
        self.leases
            .borrow_mut()
            .insert(token.clone(), now_ms + LEASE_MS);
        rows.iter()
            .map(|r| {
                let id = int(r, 0)?;
                self.parts.borrow_mut().insert(
                    Held::Isolated {
                        id,
                        token: token.clone(),
                    },
                    vec![id],
                );
                Ok(IsolatedReading {
                    batch_id: format!("{token}-{id}"),
                    key: Held::Isolated {
                        id,
                        token: token.clone(),
                    },
                    index: 0,
                    received_at_ms: ms(int(r, 1)?),
                    node: text(r, 2)?.to_owned(),
                    reading: StoredReading::from_store(text(r, 3)?),
                    since_ms: ms(int(r, 4)?),
                    failures: u32::try_from(int(r, 5)?).unwrap_or(u32::MAX),
                    last_failed_ms: ms(int(r, 6)?),
                    retry_at_ms: now_ms,
                })
            })
            .collect()
    }

    /// Extends the leases of the claims this instance holds that would end before a round
    /// starting now could finish (a split cascade can work one claim for several sends), so
    /// that no other instance claims them meanwhile. A statement per claim, only when due.
    pub async fn renew(&self, now_ms: u64) -> Result<(), StoreError> {
        let due: Vec<Rc<str>> = self
            .leases
            .borrow()
            .iter()
            .filter(|(_, until)| **until < now_ms + COLLECTOR_TIMEOUT_MS * 3 / 2)
            .map(|(token, _)| token.clone())
            .collect();
        for token in due {
            let until = now_ms + LEASE_MS;
            let isolated = self
                .parts
                .borrow()
                .keys()
                .all(|k| !matches!(k, Held::Claim { token: t, .. } if *t == token));
            let statement = if isolated {
                sql::RENEW_ISOLATED
            } else {
                sql::RENEW
            };
            let params = vec![SqlValue::Text(token.to_string()), count(until)];
            self.db.execute(statement, params).await?;
            self.leases.borrow_mut().insert(token, until);
        }
        Ok(())
    }

    /// The claims this instance is done with are forgotten, with their leases.
    fn forget_done(&self) {
        let parts = self.parts.borrow();
        self.leases.borrow_mut().retain(|token, _| {
            parts.keys().any(|k| match k {
                Held::Claim { token: t, .. } | Held::Isolated { token: t, .. } => t == token,
            })
        });
    }

    /// Gives a claim part back after a failed round: the settled rows are deleted, the rest
    /// wait until `until_ms` with one more attempt counted.
    pub async fn release(
        &self,
        key: &Held,
        settled: &[bool],
        until_ms: u64,
    ) -> Result<(), StoreError> {
        let seqs = self.parts.borrow_mut().remove(key);
        let result = self.release_rows(key, seqs, settled, until_ms).await;
        self.forget_done();
        result
    }

    async fn release_rows(
        &self,
        key: &Held,
        seqs: Option<Vec<i64>>,
        settled: &[bool],
        until_ms: u64,
    ) -> Result<(), StoreError> {
        match key {
            Held::Isolated { id, token } => {
                let statement = if settled.first().copied().unwrap_or(false) {
                    let params = vec![SqlValue::Integer(*id), SqlValue::Text(token.to_string())];
                    self.db.execute(sql::DELETE_ISOLATED, params)
                } else {
                    let params = vec![SqlValue::Text(token.to_string()), count(until_ms)];
                    self.db.execute(sql::RELEASE_ISOLATED, params)
                };
                statement.await.map(|_| ())
            }
            Held::Claim { token, .. } => {
                let Some(seqs) = seqs else {
                    return Ok(());
                };
                let mut done = Vec::new();
                let mut open = Vec::new();
                for (i, seq) in seqs.iter().enumerate() {
                    if settled.get(i).copied().unwrap_or(false) {
                        done.push(*seq);
                    } else {
                        open.push(*seq);
                    }
                }
                if !done.is_empty() {
                    let params = vec![
                        SqlValue::Text(token.to_string()),
                        SqlValue::Text(seqs_json(&done)),
                    ];
                    self.db.execute(sql::DELETE, params).await?;
                }
                if !open.is_empty() {
                    let params = vec![
                        SqlValue::Text(token.to_string()),
                        count(until_ms),
                        SqlValue::Text(seqs_json(&open)),
                    ];
                    self.db.execute(sql::RELEASE, params).await?;
                }
                Ok(())
            }
        }
    }

    /// Forgets, in one bounded statement, up to `FORGET_BATCH` rate-limit buckets not charged
    /// since `before_ms` (full again, the same as none), oldest first, through their index:
    /// never a scan of the table. How many went.
    pub async fn forget_full_buckets(&self, before_ms: u64) -> Result<usize, StoreError> {
        let params = vec![count(before_ms), count(rate_limit_sql::FORGET_BATCH as u64)];
        let gone = self.db.execute(rate_limit_sql::FORGET_FULL, params).await?;
        Ok(gone.len())
    }

    /// Whether it is this instance's turn for the chore `name`, done once per `every_ms` by
    /// whichever instance asks first (the database's clock: see `sql::CHORE_DUE`).
    pub async fn chore_due(
        &self,
        name: &str,
        now_ms: u64,
        every_ms: u64,
    ) -> Result<bool, StoreError> {
        let params = vec![
            count(now_ms),
            count(every_ms),
            SqlValue::Text(name.to_owned()),
        ];
        Ok(!self.db.execute(sql::CHORE_DUE, params).await?.is_empty())
    }

    /// Dead letters, newest first, as stored JSON documents.
    pub async fn dead_letters(
        &self,
        limit: usize,
        now_ms: u64,
    ) -> Result<Vec<serde_json::Value>, StoreError> {
        let oldest = now_ms.saturating_sub(DEAD_LETTER_MAX_AGE_MS);
        let rows = self
            .db
            .execute(sql::DEAD_LETTERS, vec![count(limit as u64), count(oldest)])
            .await?;
        rows.iter()
            .map(|r| {
                Ok(serde_json::json!({
                    "batch_id": text(r, 0)?, "failed_at_ms": int(r, 1)?,
                    "status": r.get(2).and_then(SqlValue::as_i64),
                    "detail": text(r, 3)?, "readings": int(r, 4)?,
                    "body": serde_json::from_str::<serde_json::Value>(text(r, 5)?).unwrap_or_default(),
                }))
            })
            .collect()
    }

    /// The table as every instance sees it, for `/admin/stats`.
    pub async fn summary(&self, now_ms: u64) -> Result<serde_json::Value, StoreError> {
        let rows = self.db.execute(sql::SUMMARY, vec![count(now_ms)]).await?;
        let row = rows
            .first()
            .ok_or_else(|| StoreError("no summary".into()))?;
        Ok(serde_json::json!({
            "pending": int(row, 0)?,
            "leased": int(row, 1)?,
            "oldest_received_at_ms": row.get(2).and_then(SqlValue::as_i64),
        }))
    }
}

impl<D: Sql> OutboxStore for SharedOutbox<D> {
    type Key = Held;

    /// The rows settled this round are deleted (not only a settled prefix: a reading held back
    /// by an isolated one before it must not be sent twice after a crash).
    async fn trim(&self, trim: &Trim<Held>) -> Result<(), StoreError> {
        let (statement, params) = {
            let parts = self.parts.borrow();
            let Some(seqs) = parts.get(&trim.key) else {
                return Ok(()); // given back already (an isolated row that failed again)
            };
            match &trim.key {
                Held::Isolated { id, token } => (
                    sql::DELETE_ISOLATED,
                    vec![SqlValue::Integer(*id), SqlValue::Text(token.to_string())],
                ),
                Held::Claim { token, .. } => {
                    let rows: Vec<i64> = trim
                        .rows
                        .iter()
                        .filter_map(|i| seqs.get(*i).copied())
                        .collect();
                    let params = vec![
                        SqlValue::Text(token.to_string()),
                        SqlValue::Text(seqs_json(&rows)),
                    ];
                    (sql::DELETE, params)
                }
            }
        };
        self.db.execute(statement, params).await?;
        if trim.whole {
            self.parts.borrow_mut().remove(&trim.key);
            self.forget_done();
        }
        Ok(())
    }

    fn trims_rows(&self) -> bool {
        true
    }

    fn keeps_isolated(&self) -> bool {
        true
    }

    /// A reading of a claim goes to `outbox_isolated` (its row in `outbox` is deleted when the
    /// engine trims it as settled); an isolated row that failed again waits there once more.
    async fn isolate(&self, r: &IsolatedReading<Held>) -> Result<(), StoreError> {
        self.isolated_due.borrow_mut().push(r.retry_at_ms);
        match &r.key {
            Held::Claim { .. } => {
                let params = vec![
                    count(r.received_at_ms),
                    SqlValue::Text(r.node.clone()),
                    SqlValue::Text(r.reading.as_str().to_owned()),
                    count(r.since_ms),
                    count(u64::from(r.failures)),
                    count(r.last_failed_ms),
                    count(r.retry_at_ms),
                ];
                self.db.execute(sql::ISOLATE, params).await?;
            }
            Held::Isolated { id, token } => {
                let params = vec![
                    SqlValue::Integer(*id),
                    SqlValue::Text(token.to_string()),
                    count(u64::from(r.failures)),
                    count(r.last_failed_ms),
                    count(r.retry_at_ms),
                ];
                self.db.execute(sql::ISOLATE_AGAIN, params).await?;
                self.parts.borrow_mut().remove(&r.key);
                self.forget_done();
            }
        }
        Ok(())
    }

    async fn dead_letter(&self, letter: &DeadLetter) -> Result<u64, StoreError> {
        let params = vec![
            SqlValue::Text(letter.batch_id.clone()),
            count(letter.failed_at_ms),
            letter
                .status
                .map_or(SqlValue::Null, |s| count(u64::from(s))),
            SqlValue::Text(letter.detail.clone()),
            count(letter.readings as u64),
            SqlValue::Text(letter.body.clone()),
        ];
        self.db.execute(sql::DEAD_LETTER, params).await?;
        let oldest = letter.failed_at_ms.saturating_sub(DEAD_LETTER_MAX_AGE_MS);
        let bound = vec![count(DEAD_LETTERS_KEPT as u64), count(oldest)];
        Ok(self.db.execute(sql::DEAD_LETTERS_BOUND, bound).await?.len() as u64)
    }
}

/// What one request's append came to.
pub type AppendResult = Result<Result<Appended, NotAppended>, StoreError>;

/// An instance's concurrent requests appended together while the write lock is contended: one
/// statement, one commit, for every request that arrived while the previous statement ran.
/// Commits are what SQLite serialises across every instance and process on the file, so under
/// contention fewer of them shorten everyone's wait for the lock. A request that finds no
/// statement running writes at once (with whatever else waits); the others look for their
/// result when the running statement should be about done: after half the group's typical
/// statement time, then a quarter of it, never more often than every `GROUP_POLL_MS` (a writer
/// cannot wake them: on wasi:http a task waking another request's task needs wit-bindgen's
/// `inter-task-wakeup`).
///
/// While statements are quick (typically under [`GROUP_WHEN_STATEMENT_MS`]: the lock is
/// free), a request that finds one running writes its own at once instead. A group's
/// requests are answered in one burst, and Spin's HTTP server, which does not set
/// `TCP_NODELAY`, then writes some of those answers' heads before their bodies are handed
/// over: the body leaves in a second write that waits for the client's delayed ACK, ~40 ms.
/// Measured at 10 connections under `spin up`: with groups 2 % of answers left in two writes
/// (p99 46 ms); writing at once, p99 13–15 ms, at the same throughput.
#[derive(Debug, Default)]
pub struct AppendGroup {
    waiting: RefCell<Vec<(u64, Request)>>,
    done: RefCell<HashMap<u64, AppendResult>>,
    /// The tickets of requests still waiting for their result: a result is kept only for
    /// one of these (a request dropped meanwhile, its client gone, leaves nothing behind).
    live: RefCell<std::collections::HashSet<u64>>,
    next_ticket: std::cell::Cell<u64>,
    writing: std::cell::Cell<bool>,
    /// Statements written, and the requests they carried.
    written: std::cell::Cell<(u64, u64)>,
    /// A moving average of the statements' time, in ms.
    typical_ms: std::cell::Cell<f64>,
    /// Looks for a result by requests that waited.
    looks: std::cell::Cell<u64>,
}

/// How often a request waiting on another's statement looks for its result.
pub const GROUP_POLL_MS: u64 = 1;
/// Below this typical statement time a request does not wait for a running statement: it
/// writes its own (see [`AppendGroup`]). Slower statements mean a contended write lock, where
/// fewer commits pay (the measurements: `docs/performance.md`, Spin).
pub const GROUP_WHEN_STATEMENT_MS: f64 = 2.0;

/// The writer's duty, even if its request is dropped mid-statement (a client gone): the
/// requests it carried learn that their outcome is unknown, and the group is free again, so
/// that one of those waiting writes next.
struct Writing<'a> {
    group: &'a AppendGroup,
    /// The writer's own ticket: nobody is left to ask for its result.
    own: u64,
    tickets: Vec<u64>,
}

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        let mut done = self.group.done.borrow_mut();
        let live = self.group.live.borrow();
        for t in self
            .tickets
            .drain(..)
            .filter(|t| *t != self.own && live.contains(t))
        {
            done.entry(t).or_insert_with(|| {
                Err(StoreError(
                    "the statement carrying this request was cancelled".into(),
                ))
            });
        }
        drop(done);
        self.group.writing.set(false);
    }
}

/// A request waiting in the group, even if it is dropped (its client gone): its request is
/// taken out if no statement took it yet, and any result kept for it goes.
struct Waiting<'a> {
    group: &'a AppendGroup,
    ticket: u64,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.group.live.borrow_mut().remove(&self.ticket);
        self.group.done.borrow_mut().remove(&self.ticket);
        self.group
            .waiting
            .borrow_mut()
            .retain(|(t, _)| *t != self.ticket);
    }
}

impl AppendGroup {
    pub async fn append<D: Sql, T: Timer, C: Clock>(
        &self,
        store: &SharedOutbox<D>,
        timer: &T,
        clock: &C,
        request: Request,
        max_backlog: usize,
    ) -> AppendResult {
        if self.writing.get() && self.typical_ms.get() < GROUP_WHEN_STATEMENT_MS {
            return self
                .timed(clock, 1, store.append(request, max_backlog))
                .await;
        }
        let ticket = self.next_ticket.get();
        self.next_ticket.set(ticket + 1);
        self.waiting.borrow_mut().push((ticket, request));
        self.live.borrow_mut().insert(ticket);
        let _waiting = Waiting {
            group: self,
            ticket,
        };
        let mut first_look = true;
        loop {
            if let Some(result) = self.done.borrow_mut().remove(&ticket) {
                return result;
            }
            if !self.writing.replace(true) {
                let (tickets, requests): (Vec<u64>, Vec<Request>) =
                    std::mem::take(&mut *self.waiting.borrow_mut())
                        .into_iter()
                        .unzip();
                let mut writing = Writing {
                    group: self,
                    own: ticket,
                    tickets,
                };
                let result = self
                    .timed(
                        clock,
                        requests.len(),
                        store.append_group(&requests, max_backlog),
                    )
                    .await;
                let mut done = self.done.borrow_mut();
                let live = self.live.borrow();
                let mut results = result.into_iter();
                // Any ticket left without a result gets an error when `writing` drops.
                writing.tickets.retain(|t| match results.next() {
                    Some(one) => {
                        if live.contains(t) {
                            done.insert(*t, one);
                        }
                        false
                    }
                    None => true,
                });
                drop(live);
                drop(done);
                drop(writing);
                continue;
            }
            let share = if std::mem::replace(&mut first_look, false) {
                2.0
            } else {
                4.0
            };
            let wait = (self.typical_ms.get() / share) as u64;
            self.looks.set(self.looks.get() + 1);
            timer.sleep_ms(wait.max(GROUP_POLL_MS)).await;
        }
    }

    /// Runs one statement carrying `requests`, counted, and its time kept in the moving average.
    async fn timed<C: Clock, R>(
        &self,
        clock: &C,
        requests: usize,
        statement: impl std::future::Future<Output = R>,
    ) -> R {
        let started = clock.now_ms();
        let result = statement.await;
        let took = clock.now_ms().saturating_sub(started) as f64;
        let (statements, carried) = self.written.get();
        // The first statement sets the average: an instance started under load groups at once.
        self.typical_ms.set(if statements == 0 {
            took
        } else {
            0.8 * self.typical_ms.get() + 0.2 * took
        });
        self.written
            .set((statements + 1, carried + requests as u64));
        result
    }

    /// Results kept for requests that have not taken them yet, and requests waiting.
    #[cfg(all(test, not(target_arch = "wasm32")))]
    fn held(&self) -> (usize, usize) {
        (self.done.borrow().len(), self.waiting.borrow().len())
    }

    /// Statements written and the requests they carried, for `/admin/stats`.
    pub fn stats_json(&self) -> serde_json::Value {
        let (statements, requests) = self.written.get();
        serde_json::json!({
            "statements": statements,
            "requests": requests,
            "typical_statement_ms": (self.typical_ms.get() * 10.0).round() / 10.0,
            "looks": self.looks.get(),
        })
    }
}

/// When an instance's driver should claim.
#[derive(Debug, Default)]
struct Wake {
    running: bool,
    /// A request of this instance filled a batch, or it is time to look (see `LOOK_EVERY_MS`).
    claim_now: bool,
    /// The last row of the last batch a request of this instance filled: its claim takes every
    /// row up to it.
    claim_through: i64,
    /// This instance's requests whose rows no claim may have taken yet (a claim takes every row
    /// past the max age, and whole batches of younger ones): when each was received (it is due
    /// at that time plus the max age) and its last row's sequence number. Oldest first; one
    /// entry per request, bounded by `DUES_KEPT`.
    unclaimed: std::collections::VecDeque<(u64, i64)>,
    /// A claim failed, or rows were given back: look again then.
    retry_at: Option<u64>,
    next_look_ms: u64,
    /// When an isolated reading is due (those this instance set aside, earliest first, or the
    /// periodic look's now).
    isolated: std::collections::BTreeSet<u64>,
    /// When this instance may next ask whether housekeeping is due.
    next_chore_ms: u64,
}

/// Receive times a driver keeps; past it the oldest are forgotten (a later one still comes due
/// and its claim takes them).
const DUES_KEPT: usize = 1_024;

impl Wake {
    fn isolated_at(&self) -> Option<u64> {
        self.isolated.first().copied()
    }

    /// Isolated readings this instance set aside, due at these times.
    fn isolated_due(&mut self, due: Vec<u64>) {
        self.isolated.extend(due);
        while self.isolated.len() > DUES_KEPT {
            self.isolated.pop_last(); // a later one: the periodic look finds it
        }
    }

    /// A claim of isolated readings at `now` took what was due; `more`: it took all it could.
    fn isolated_claimed(&mut self, now: u64, more: bool) {
        self.isolated = self.isolated.split_off(&(now + 1));
        if more {
            self.isolated.insert(now);
        }
    }

    fn due_at(&self, max_age_ms: u64) -> Option<u64> {
        let due = self
            .unclaimed
            .front()
            .map(|(t, _)| t.saturating_add(max_age_ms));
        match (due, self.retry_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// One instance's delivery from the shared outbox: what it claimed, held in the engine, and
/// when it should claim next.
pub struct SharedDriver {
    outbox: RefCell<Outbox<Held>>,
    wake: RefCell<Wake>,
    flush: FlushPolicy,
    /// With the rate limit on: how long a bucket takes to refill, after which the chore of
    /// forgetting it may (see `SharedOutbox::forget_full_buckets`).
    buckets_full_after_ms: Option<u64>,
    /// Requests and readings this instance appended.
    appended: std::cell::Cell<(u64, u64)>,
}

/// How often the app forgets rate-limit buckets that are full again (whichever instance runs
/// first after the period, on the database's clock), and how many statements one pass may take.
pub const FORGET_BUCKETS_EVERY_MS: u64 = 60_000;
const FORGET_PASSES: usize = 20;

impl SharedDriver {
    /// `config`: the deployment's outbox settings (its flush policy decides when a batch is due
    /// in the table; what is claimed is due at once). `buckets_full_after_ms`: with the rate
    /// limit on, its refill time (`rate_limit::sql::full_after_ms`).
    pub fn new(config: &OutboxConfig, now_ms: u64, buckets_full_after_ms: Option<u64>) -> Self {
        let mut held = config.clone();
        held.flush.max_age_ms = 0;
        held.max_backlog = usize::MAX;
        Self {
            outbox: RefCell::new(Outbox::new(held, now_ms)),
            wake: RefCell::new(Wake::default()),
            flush: config.flush,
            buckets_full_after_ms,
            appended: std::cell::Cell::new((0, 0)),
        }
    }

    /// A request's rows are in the table. True when the host must start the driver.
    pub fn appended(&self, appended: Appended, received_at_ms: u64) -> bool {
        let (requests, readings) = self.appended.get();
        let rows = (appended.last_seq - appended.first_seq + 1).max(0) as u64;
        self.appended.set((requests + 1, readings + rows));
        let mut wake = self.wake.borrow_mut();
        // Rows up to the last whole batch below this request's last row are in full batches,
        // each claimed at once, with every row before it, by the request that filled it (on
        // whichever instance; `sql::CLAIM`): this instance's earlier requests there need no
        // claim of their own when they come due. Under load that is nearly all of them, so due
        // claims are for quiet times, not one per request.
        let whole = appended.whole_batches_end(self.flush.max_items);
        if appended.fills_a_batch(self.flush.max_items) {
            wake.claim_now = true;
            wake.claim_through = wake.claim_through.max(whole);
        }
        while wake
            .unclaimed
            .front()
            .is_some_and(|(_, last)| *last <= whole)
        {
            wake.unclaimed.pop_front();
        }
        if wake.unclaimed.len() == DUES_KEPT {
            wake.unclaimed.pop_front();
        }
        if appended.last_seq > whole {
            wake.unclaimed
                .push_back((received_at_ms, appended.last_seq));
        }
        let work = wake.claim_now || !wake.unclaimed.is_empty();
        work && !std::mem::replace(&mut wake.running, true)
    }

    /// Any request: on an instance's first, and then every `LOOK_EVERY_MS`, it looks for rows
    /// nobody is delivering. True when the host must start the driver.
    pub fn nudge(&self, now_ms: u64) -> bool {
        if now_ms < self.wake.borrow().next_look_ms {
            return false;
        }
        self.look_now(now_ms)
    }

    /// Look now, whenever this instance last looked (an operator's `POST /admin/deliver`: a
    /// sparse fleet's heartbeat). True when the host must start the driver.
    pub fn look_now(&self, now_ms: u64) -> bool {
        let mut wake = self.wake.borrow_mut();
        wake.next_look_ms = now_ms.saturating_add(LOOK_EVERY_MS);
        wake.claim_now = true;
        wake.isolated.insert(now_ms);
        !std::mem::replace(&mut wake.running, true)
    }

    /// Counters and state of this instance: what it appended, and its deliveries.
    pub fn stats_json(&self) -> serde_json::Value {
        let mut v = self.outbox.borrow().stats_json();
        let (requests, readings) = self.appended.get();
        v["appended_requests"] = requests.into();
        v["appended_readings"] = readings.into();
        v
    }

    /// Claims, delivers and settles until nothing is due or held; then the driver stops (the
    /// next `appended` or `nudge` that returns true starts it again).
    pub async fn run<D, C, T>(&self, d: &Delivery<'_, SharedOutbox<D>, C, T>)
    where
        D: Sql,
        C: Collector,
        T: Timer,
    {
        while let Some(at) = self.step(d).await {
            let wait = at.saturating_sub(d.clock.now_ms()).clamp(1, POLL_MS);
            d.timer.sleep_ms(wait).await;
        }
    }

    /// One pass: claims if this instance should, delivers what it holds, gives it back after a
    /// failure. Returns when to pass again, or `None` when the driver stops (recorded here).
    pub async fn step<D, C, T>(&self, d: &Delivery<'_, SharedOutbox<D>, C, T>) -> Option<u64>
    where
        D: Sql,
        C: Collector,
        T: Timer,
    {
        let now = d.clock.now_ms();
        self.chores(d, now).await;
        if self.should_claim(now) {
            self.claim(d, now).await;
        }
        if self.should_claim_isolated(now) {
            self.claim_isolated(d, now).await;
        }
        if self.outbox.borrow().pending() > 0 {
            // A split cascade can work one claim for several sends: keep it ours meanwhile.
            if let Err(e) = d.store.renew(now).await {
                d.log
                    .emit(Level::Warn, "outbox_renew_failed", &[("error", &e.0)]);
                self.outbox.borrow_mut().note_store_failure();
            }
            deliver_round(&self.outbox, d).await;
            let due = std::mem::take(&mut *d.store.isolated_due.borrow_mut());
            self.wake.borrow_mut().isolated_due(due);
            // Backing off: what is held goes back to the table until then (a failed probe with
            // another to try keeps it, to probe with the next batch at once).
            let now = d.clock.now_ms();
            if self.outbox.borrow().retry_at().is_some_and(|r| r > now) {
                self.release_all(d).await;
            }
        }
        self.next_wake(d.clock.now_ms())
    }

    fn should_claim(&self, now: u64) -> bool {
        let outbox = self.outbox.borrow();
        let wake = self.wake.borrow();
        outbox.pending() == 0
            && outbox.retry_at().is_none_or(|r| r <= now)
            && (wake.claim_now || wake.due_at(self.flush.max_age_ms).is_some_and(|t| t <= now))
    }

    fn should_claim_isolated(&self, now: u64) -> bool {
        let outbox = self.outbox.borrow();
        outbox.retry_at().is_none_or(|r| r <= now)
            && self.wake.borrow().isolated_at().is_some_and(|t| t <= now)
    }

    /// The app's housekeeping, off every request's path, on the database's clock: forgetting
    /// rate-limit buckets that are full again, once a minute by whichever instance comes
    /// first, in a few bounded statements. A failure only leaves it for next time.
    async fn chores<D: Sql, C, T>(&self, d: &Delivery<'_, SharedOutbox<D>, C, T>, now: u64) {
        let Some(full_after_ms) = self.buckets_full_after_ms else {
            return;
        };
        {
            let mut wake = self.wake.borrow_mut();
            if now < wake.next_chore_ms {
                return;
            }
            wake.next_chore_ms = now.saturating_add(FORGET_BUCKETS_EVERY_MS);
        }
        let due = d
            .store
            .chore_due("forget_buckets", now, FORGET_BUCKETS_EVERY_MS)
            .await;
        if !matches!(due, Ok(true)) {
            return;
        }
        let before = now.saturating_sub(full_after_ms);
        for _ in 0..FORGET_PASSES {
            match d.store.forget_full_buckets(before).await {
                Ok(n) if n == rate_limit_sql::FORGET_BATCH => continue,
                Ok(_) => break,
                Err(e) => {
                    d.log
                        .emit(Level::Warn, "buckets_not_forgotten", &[("error", &e.0)]);
                    break;
                }
            }
        }
    }

    async fn claim<D: Sql, C, T>(&self, d: &Delivery<'_, SharedOutbox<D>, C, T>, now: u64) {
        let through = {
            // Whatever is past the max age now is taken by this claim (or by the next one, if
            // this one fills every send and sets `claim_now` again).
            let mut wake = self.wake.borrow_mut();
            wake.claim_now = false;
            wake.retry_at = None;
            let age = self.flush.max_age_ms;
            while wake.unclaimed.front().is_some_and(|(t, _)| t + age <= now) {
                wake.unclaimed.pop_front();
            }
            wake.claim_through
        };
        let token = claim_token(now, d.entropy);
        match d
            .store
            .claim(&token, now, self.flush, SENDS_IN_FLIGHT, through)
            .await
        {
            Ok(claimed) => {
                if claimed.readings >= self.flush.max_items * SENDS_IN_FLIGHT {
                    self.wake.borrow_mut().claim_now = true; // more may be waiting
                }
                self.outbox
                    .borrow_mut()
                    .hold(claimed.segments, claimed.attempts);
            }
            Err(e) => {
                d.log
                    .emit(Level::Error, "outbox_claim_failed", &[("error", &e.0)]);
                self.outbox.borrow_mut().note_store_failure();
                let retry = now.saturating_add(self.outbox.borrow().config().retry.base_ms);
                self.wake.borrow_mut().retry_at = Some(retry);
            }
        }
    }

    /// Isolated readings that are due, each sent alone (see `delivery::outbox`).
    async fn claim_isolated<D: Sql, C, T>(
        &self,
        d: &Delivery<'_, SharedOutbox<D>, C, T>,
        now: u64,
    ) {
        let token = claim_token(now, d.entropy);
        match d.store.claim_isolated(&token, now, SENDS_IN_FLIGHT).await {
            Ok(readings) => {
                // All it asked for: more may be due now. Else the next this instance set aside
                // (other instances' come back by the periodic look).
                let more = readings.len() == SENDS_IN_FLIGHT;
                self.wake.borrow_mut().isolated_claimed(now, more);
                self.outbox.borrow_mut().hold_isolated(readings, now);
            }
            Err(e) => {
                d.log
                    .emit(Level::Error, "outbox_claim_failed", &[("error", &e.0)]);
                self.outbox.borrow_mut().note_store_failure();
                let retry = now.saturating_add(self.outbox.borrow().config().retry.base_ms);
                self.wake.borrow_mut().isolated.insert(retry);
            }
        }
    }

    /// After a failed round: everything held goes back to the table with the backoff as its
    /// lease, and this instance comes back for it then (another may come first).
    async fn release_all<D: Sql, C, T>(&self, d: &Delivery<'_, SharedOutbox<D>, C, T>) {
        let (released, until) = {
            let mut outbox = self.outbox.borrow_mut();
            let until = outbox.retry_at().unwrap_or_else(|| d.clock.now_ms());
            (outbox.release_all(), until)
        };
        let isolated = released
            .iter()
            .any(|(key, _)| matches!(key, Held::Isolated { .. }));
        for (key, settled) in released {
            if let Err(e) = d.store.release(&key, &settled, until).await {
                // The rows stay leased to this claim until LEASE_MS: later, never lost.
                d.log
                    .emit(Level::Warn, "outbox_release_failed", &[("error", &e.0)]);
                self.outbox.borrow_mut().note_store_failure();
            }
        }
        let mut wake = self.wake.borrow_mut();
        wake.retry_at = Some(wake.retry_at.map_or(until, |t| t.min(until)));
        if isolated {
            wake.isolated.insert(until);
        }
    }

    /// When to run next; `None` stops the driver, recorded in the same step.
    fn next_wake(&self, now: u64) -> Option<u64> {
        let outbox = self.outbox.borrow();
        let mut wake = self.wake.borrow_mut();
        let held = if outbox.pending() > 0 {
            outbox.next_wake(now)
        } else {
            None
        };
        // A claim waits for this instance's own backoff as well.
        let claim = if wake.claim_now {
            Some(now)
        } else {
            wake.due_at(self.flush.max_age_ms)
        };
        let claim = match (claim, wake.isolated_at()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
        .map(|t| outbox.retry_at().map_or(t, |r| t.max(r)));
        let next = match (held, claim) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if next.is_none() {
            wake.running = false;
        }
        next
    }
}

/// A claim's token: unique among every instance's claims.
fn claim_token(now: u64, entropy: &dyn Entropy) -> String {
    let mut rand = [0u8; 10];
    match entropy.fill(&mut rand) {
        Ok(()) => ids::uuid_v7(now, rand),
        // Harmless if two collide: every statement on a claim also names its rows.
        Err(_) => format!("claim-{now}"),
    }
}

// On a real SQLite (rusqlite), which the wasm targets do not build.
#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests;

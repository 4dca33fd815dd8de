//! The app's SQLite database `default` (`sqlite_databases` in spin.toml) behind the core's `Sql`
//! port: the shared outbox and the rate-limit buckets live in it.
//!
//! Two connections per instance, each opened on first use: one for the request path, one for
//! delivery (claims, deletes, dead letters). Spin runs a connection's statements one at a time,
//! each on a blocking pool (`spawn_blocking`), so the instance's event loop stays free and Spin
//! can route further requests to it meanwhile; with two, a delivery statement never queues
//! behind the instance's appends, nor an append behind a delivery. Only the delivery connection
//! checkpoints the write-ahead log: a checkpoint syncs the file (~10 ms on a disk), and on the
//! request connection the commit that ran it, and every statement of the instance queued
//! behind it, would wait that long before their answers. On first use an instance also makes
//! the database ready (tables, once per file; the previous release's key-value segments, once
//! per file).

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::thread::LocalKey;
use std::time::Duration;

use spin_sdk::sqlite::{Connection, Value};

use crate::application::delivery::shared_outbox::{sql, SharedOutbox};
use crate::ports::{Sql, SqlValue, StoreError};

type Slot = RefCell<Option<Rc<Connection>>>;

thread_local! {
    static REQUEST_DB: Slot = const { RefCell::new(None) };
    static DELIVERY_DB: Slot = const { RefCell::new(None) };
    /// The tables are made and the previous release's segments imported (by this instance).
    static READY: Cell<bool> = const { Cell::new(false) };
    /// Statements run while answering requests, and by the instance's delivery driver.
    static REQUEST_PATH: Cell<u64> = const { Cell::new(0) };
    static BACKGROUND: Cell<u64> = const { Cell::new(0) };
    /// Tries that found the database locked by another connection's write.
    static LOCKED_TRIES: Cell<u64> = const { Cell::new(0) };
}

/// Which connection a handle's statements go to, and which counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    Request,
    Background,
}

/// A handle on one of the instance's connections, opened when its first statement runs.
#[derive(Clone)]
pub struct SpinSql(Handle);

#[derive(Clone)]
enum Handle {
    /// The instance's connection for this path, counted.
    Path(Path),
    /// The connection being made ready: not counted.
    Setup(Rc<Connection>),
}

/// Statements so far on the request path and in the background (`/admin/stats`).
pub fn statements() -> (u64, u64) {
    (REQUEST_PATH.with(Cell::get), BACKGROUND.with(Cell::get))
}

/// Tries so far that found the database locked and waited `BUSY_RETRY` (`/admin/stats`).
pub fn locked_tries() -> u64 {
    LOCKED_TRIES.with(Cell::get)
}

fn error(e: spin_sdk::sqlite::Error) -> StoreError {
    StoreError(format!("sqlite: {e:?}"))
}

/// A handle on the instance's connection for `path` (nothing is opened yet).
pub fn open(path: Path) -> SpinSql {
    SpinSql(Handle::Path(path))
}

/// The instance's connection for `path`, opened and made ready on first use.
/// `synchronous=NORMAL` is per connection: in WAL mode the log is synced at checkpoints, not at
/// every commit, so a power cut may lose the last commits of the host (a crash of `spin up`
/// loses none).
async fn connection(path: Path) -> Result<Rc<Connection>, StoreError> {
    if let Some(conn) = opened(path) {
        return Ok(conn);
    }
    let conn = Rc::new(Connection::open_default().await.map_err(error)?);
    let setup = SpinSql(Handle::Setup(conn.clone()));
    setup
        .execute("PRAGMA synchronous=NORMAL", Vec::new())
        .await?;
    setup.execute("PRAGMA busy_timeout=0", Vec::new()).await?;
    if path == Path::Request {
        setup
            .execute("PRAGMA wal_autocheckpoint=0", Vec::new())
            .await?;
    }
    if !READY.with(Cell::get) {
        let outbox = SharedOutbox::new(setup.clone());
        let prepared = outbox.prepare().await?;
        if prepared.found < sql::VERSION_CURRENT {
            let found = prepared.found.to_string();
            super::emit(
                "info",
                "outbox_schema_upgraded",
                &[("from_version", &found)],
            );
        }
        if prepared.import {
            import_key_value(&outbox).await;
        }
        if !READY.with(|r| r.replace(true)) {
            // One line per instance: how many instances a load ran on is counted from these.
            super::emit("info", "instance_started", &[]);
        }
    }
    Ok(slot(path).with(|d| d.borrow_mut().get_or_insert(conn).clone()))
}

fn slot(path: Path) -> &'static LocalKey<Slot> {
    match path {
        Path::Background => &DELIVERY_DB,
        Path::Request => &REQUEST_DB,
    }
}

fn opened(path: Path) -> Option<Rc<Connection>> {
    slot(path).with(|d| d.borrow().clone())
}

/// Moves the segments a previous release kept in the key-value store into the outbox table.
/// A failure is logged; the next instance to start tries again.
async fn import_key_value(outbox: &SharedOutbox<SpinSql>) {
    let kv = match super::kv::open(super::kv::Path::Background).await {
        Ok(kv) => kv,
        Err(e) => {
            super::emit("error", "outbox_import_failed", &[("error", &e.0)]);
            return;
        }
    };
    match outbox.import_key_value(&kv, super::now_ms(), "local").await {
        Ok(0) => {}
        Ok(n) => super::emit("warn", "outbox_imported", &[("readings", &n.to_string())]),
        Err(e) => super::emit("error", "outbox_import_failed", &[("error", &e.0)]),
    }
}

/// How long a statement waits for another connection's write to end, trying again every
/// `BUSY_RETRY`. SQLite's own busy handler (rusqlite's 5 s, which Spin keeps) sleeps 1, 2, 5,
/// 10, 15, 20, 25, 25, 25, 50, 50, 100 ms between tries, and whoever tries first after a commit
/// wins: under load a statement that lost a few times waits tens of ms for a lock held well
/// under one. So the connection runs with `busy_timeout=0`, and a busy statement sleeps here,
/// asynchronously (the instance stays free), for a millisecond at a time.
const BUSY_RETRY: Duration = Duration::from_millis(1);
const BUSY_GIVE_UP: Duration = Duration::from_secs(5);

impl SpinSql {
    async fn run_waiting_for_lock(
        &self,
        statement: &str,
        params: Vec<Value>,
    ) -> Result<Vec<spin_sdk::sqlite::RowResult>, StoreError> {
        let conn = match &self.0 {
            Handle::Setup(conn) => conn.clone(),
            Handle::Path(path) => match opened(*path) {
                Some(conn) => conn,
                // Boxed: making a connection ready runs statements through this very function.
                None => Box::pin(connection(*path)).await?,
            },
        };
        let mut waited = Duration::ZERO;
        loop {
            // Every row is read, then the statement's end awaited, as the interface requires.
            let run = async {
                conn.execute(statement, params.clone())
                    .await?
                    .collect()
                    .await
            };
            match run.await {
                Err(spin_sdk::sqlite::Error::Io(e))
                    if e.contains("database is locked") && waited < BUSY_GIVE_UP =>
                {
                    LOCKED_TRIES.with(|n| n.set(n.get() + 1));
                    spin_sdk::time::sleep(BUSY_RETRY).await;
                    waited += BUSY_RETRY;
                }
                other => return other.map_err(error),
            }
        }
    }
}

impl Sql for SpinSql {
    async fn execute(
        &self,
        statement: &str,
        params: Vec<SqlValue>,
    ) -> Result<Vec<Vec<SqlValue>>, StoreError> {
        match self.0 {
            Handle::Path(Path::Request) => REQUEST_PATH.with(|n| n.set(n.get() + 1)),
            Handle::Path(Path::Background) => BACKGROUND.with(|n| n.set(n.get() + 1)),
            Handle::Setup(_) => {}
        }
        let params: Vec<Value> = params
            .into_iter()
            .map(|v| match v {
                SqlValue::Null => Value::Null,
                SqlValue::Integer(n) => Value::Integer(n),
                SqlValue::Real(x) => Value::Real(x),
                SqlValue::Text(t) => Value::Text(t),
            })
            .collect();
        let rows = self.run_waiting_for_lock(statement, params).await?;
        Ok(rows
            .into_iter()
            .map(|row| {
                row.values
                    .iter()
                    .map(|v| match v {
                        Value::Integer(n) => SqlValue::Integer(*n),
                        Value::Real(x) => SqlValue::Real(*x),
                        Value::Text(t) => SqlValue::Text(t.clone()),
                        Value::Null | Value::Blob(_) => SqlValue::Null,
                    })
                    .collect()
            })
            .collect())
    }
}

//! The app's SQLite database `default` (`sqlite_databases` in spin.toml) behind the core's `Sql`
//! port: the shared outbox and the rate-limit buckets live in it.
//!
//! One connection per instance, opened on first use. Spin runs each statement on a blocking
//! pool (`spawn_blocking`), so the instance's event loop stays free and Spin can route further
//! requests to it meanwhile. On first use an instance also makes the database ready (tables,
//! once per file; the previous release's key-value segments, once per file).

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

use spin_sdk::sqlite::{Connection, Value};

use crate::application::delivery::shared_outbox::{sql, SharedOutbox};
use crate::ports::{Sql, SqlValue, StoreError};

thread_local! {
    static DB: RefCell<Option<Rc<Connection>>> = const { RefCell::new(None) };
    /// Statements run while answering requests, and by the instance's delivery driver.
    static REQUEST_PATH: Cell<u64> = const { Cell::new(0) };
    static BACKGROUND: Cell<u64> = const { Cell::new(0) };
    /// Tries that found the database locked by another connection's write.
    static LOCKED_TRIES: Cell<u64> = const { Cell::new(0) };
}

/// Which counter a handle's statements go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    Request,
    Background,
    /// Making the database ready: once per instance, not counted.
    Setup,
}

/// The instance's connection, counted by `path`.
#[derive(Clone)]
pub struct SpinSql {
    conn: Rc<Connection>,
    path: Path,
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

/// The instance's connection, made ready on first use. `synchronous=NORMAL` is per connection:
/// in WAL mode the log is synced at checkpoints, not at every commit, so a power cut may lose
/// the last commits of the host (a crash of `spin up` loses none).
pub async fn open(path: Path) -> Result<SpinSql, StoreError> {
    if let Some(conn) = DB.with(|d| d.borrow().clone()) {
        return Ok(SpinSql { conn, path });
    }
    let conn = Rc::new(Connection::open_default().await.map_err(error)?);
    let setup = SpinSql {
        conn: conn.clone(),
        path: Path::Setup,
    };
    setup
        .execute("PRAGMA synchronous=NORMAL", Vec::new())
        .await?;
    setup.execute("PRAGMA busy_timeout=0", Vec::new()).await?;
    let outbox = SharedOutbox::new(setup.clone());
    let version = outbox.prepare().await?;
    if version < sql::VERSION_IMPORTED {
        import_key_value(&outbox).await;
    }
    let (conn, first) = DB.with(|d| match &mut *d.borrow_mut() {
        Some(kept) => (kept.clone(), false),
        empty => (empty.insert(conn).clone(), true),
    });
    if first {
        // One line per instance: how many instances a load ran on is counted from these.
        super::emit("info", "instance_started", &[]);
    }
    Ok(SpinSql { conn, path })
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
        let mut waited = Duration::ZERO;
        loop {
            // Every row is read, then the statement's end awaited, as the interface requires.
            let run = async {
                self.conn
                    .execute(statement, params.clone())
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
        match self.path {
            Path::Request => REQUEST_PATH.with(|n| n.set(n.get() + 1)),
            Path::Background => BACKGROUND.with(|n| n.set(n.get() + 1)),
            Path::Setup => {}
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

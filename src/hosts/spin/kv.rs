//! The Spin key-value store `default` (declared in spin.toml) behind the core's `KeyValue` port.
//!
//! Listing keys never runs beside another key-value call of the same instance. Measured under
//! Spin 4.1 with its SQLite store: a `get-keys` stream still being read while another task of
//! the instance calls `set` wedges the instance, and every request Spin routes to it times out
//! (issue #12: a recovery scan listing keys beside requests writing theirs). So every call goes
//! through one gate per instance: a listing waits until no call is in flight and holds the others
//! back until it has read the whole stream. The gate polls with short sleeps rather than waking
//! waiters, since a task cannot wake another request's task (see `Wakeups::Polled`).

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use serde::Serialize;
use spin_sdk::key_value::Store;

use crate::ports::{KeyValue, StoreError};

/// Key-value calls so far, by kind: on a hosted store each is a billed, networked round trip.
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct KvCounts {
    pub get: u64,
    pub set: u64,
    pub delete: u64,
    pub list: u64,
}

#[derive(Default)]
struct Gate {
    in_flight: Cell<usize>,
    listing: Cell<bool>,
}

thread_local! {
    static STORE: RefCell<Option<Rc<Store>>> = const { RefCell::new(None) };
    static GATE: Gate = Gate::default();
    /// Calls made while answering requests, and by the background flusher.
    static REQUEST_PATH: Cell<KvCounts> = Cell::new(KvCounts::default());
    static BACKGROUND: Cell<KvCounts> = Cell::new(KvCounts::default());
}

/// Which counters a handle's calls go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    Request,
    Background,
}

/// The instance's store, opened once.
pub struct SpinKv {
    store: Rc<Store>,
    path: Path,
}

pub async fn open(path: Path) -> Result<SpinKv, StoreError> {
    if let Some(store) = STORE.with(|s| s.borrow().clone()) {
        return Ok(SpinKv { store, path });
    }
    let store = Rc::new(
        Store::open_default()
            .await
            .map_err(|e| StoreError(format!("key-value store `default`: {e:?}")))?,
    );
    STORE.with(|s| *s.borrow_mut() = Some(store.clone()));
    Ok(SpinKv { store, path })
}

/// What the instance's request path and background work have called so far.
pub fn counts() -> (KvCounts, KvCounts) {
    (REQUEST_PATH.with(Cell::get), BACKGROUND.with(Cell::get))
}

async fn pause() {
    crate::ports::Timer::sleep_ms(&super::SpinTimer, 1).await;
}

impl SpinKv {
    fn count(&self, kind: impl Fn(&mut KvCounts)) {
        let slot = match self.path {
            Path::Request => &REQUEST_PATH,
            Path::Background => &BACKGROUND,
        };
        slot.with(|c| {
            let mut counts = c.get();
            kind(&mut counts);
            c.set(counts);
        });
    }

    /// Runs one call once no listing is under way.
    async fn call<T, F: std::future::Future<Output = T>>(&self, f: impl FnOnce() -> F) -> T {
        while GATE.with(|g| g.listing.get()) {
            pause().await;
        }
        GATE.with(|g| g.in_flight.set(g.in_flight.get() + 1));
        let out = f().await;
        GATE.with(|g| g.in_flight.set(g.in_flight.get() - 1));
        out
    }
}

impl KeyValue for SpinKv {
    async fn set(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.count(|c| c.set += 1);
        self.call(|| self.store.set(key, value))
            .await
            .map_err(|e| StoreError(format!("{e:?}")))
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.count(|c| c.get += 1);
        self.call(|| self.store.get(key))
            .await
            .map_err(|e| StoreError(format!("{e:?}")))
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.count(|c| c.delete += 1);
        self.call(|| self.store.delete(key))
            .await
            .map_err(|e| StoreError(format!("{e:?}")))
    }

    /// Every key; alone in the instance (see the module comment).
    async fn keys(&self) -> Result<Vec<String>, StoreError> {
        self.count(|c| c.list += 1);
        while GATE.with(|g| g.listing.replace(true)) {
            pause().await; // another listing is under way
        }
        while GATE.with(|g| g.in_flight.get()) > 0 {
            pause().await;
        }
        let keys = self.store.get_keys().await.collect().await;
        GATE.with(|g| g.listing.set(false));
        keys.map_err(|e| StoreError(format!("{e:?}")))
    }
}

//! The Spin key-value store `default` (declared in spin.toml) behind the core's `KeyValue` port.
//! Every call goes through the instance's gate (`kv_gate`): a listing never runs beside another
//! call.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use serde::Serialize;
use spin_sdk::key_value::Store;

use super::kv_gate::Gate;
use super::SpinTimer;
use crate::ports::{KeyValue, StoreError};

/// Key-value calls so far, by kind: on a hosted store each is a billed, networked round trip.
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct KvCounts {
    pub get: u64,
    pub set: u64,
    pub delete: u64,
    pub list: u64,
}

/// The instance's store and its gate.
struct Opened {
    store: Store,
    gate: Gate,
}

thread_local! {
    static STORE: RefCell<Option<Rc<Opened>>> = const { RefCell::new(None) };
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
    opened: Rc<Opened>,
    path: Path,
}

pub async fn open(path: Path) -> Result<SpinKv, StoreError> {
    if let Some(opened) = STORE.with(|s| s.borrow().clone()) {
        return Ok(SpinKv { opened, path });
    }
    let store = Store::open_default()
        .await
        .map_err(|e| StoreError(format!("key-value store `default`: {e:?}")))?;
    let opened = Rc::new(Opened {
        store,
        gate: Gate::default(),
    });
    STORE.with(|s| *s.borrow_mut() = Some(opened.clone()));
    Ok(SpinKv { opened, path })
}

/// What the instance's request path and background work have called so far.
pub fn counts() -> (KvCounts, KvCounts) {
    (REQUEST_PATH.with(Cell::get), BACKGROUND.with(Cell::get))
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
}

impl KeyValue for SpinKv {
    async fn set(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.count(|c| c.set += 1);
        let store = &self.opened.store;
        self.opened
            .gate
            .call(&SpinTimer, || store.set(key, value))
            .await
            .map_err(|e| StoreError(format!("{e:?}")))
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.count(|c| c.get += 1);
        let store = &self.opened.store;
        self.opened
            .gate
            .call(&SpinTimer, || store.get(key))
            .await
            .map_err(|e| StoreError(format!("{e:?}")))
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.count(|c| c.delete += 1);
        let store = &self.opened.store;
        self.opened
            .gate
            .call(&SpinTimer, || store.delete(key))
            .await
            .map_err(|e| StoreError(format!("{e:?}")))
    }

    /// Every key; alone in the instance (see the module comment).
    async fn keys(&self) -> Result<Vec<String>, StoreError> {
        self.count(|c| c.list += 1);
        let store = &self.opened.store;
        let keys = self
            .opened
            .gate
            .list(&SpinTimer, || async {
                store.get_keys().await.collect().await
            })
            .await;
        keys.map_err(|e| StoreError(format!("{e:?}")))
    }
}

//! The Spin key-value store `default` (declared in spin.toml) behind the core's `KeyValue`.

use spin_sdk::key_value::Store;

use crate::delivery::spill::KeyValue;

pub struct SpinStore(Store);

pub async fn open() -> Result<SpinStore, String> {
    Store::open_default()
        .await
        .map(SpinStore)
        .map_err(|e| format!("key-value store `default`: {e:?}"))
}

impl KeyValue for SpinStore {
    async fn set(&self, key: &str, value: &[u8]) -> Result<(), String> {
        self.0.set(key, value).await.map_err(|e| format!("{e:?}"))
    }
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
        self.0.get(key).await.map_err(|e| format!("{e:?}"))
    }
    async fn delete(&self, key: &str) -> Result<(), String> {
        self.0.delete(key).await.map_err(|e| format!("{e:?}"))
    }
    async fn keys(&self) -> Result<Vec<String>, String> {
        self.0
            .get_keys()
            .await
            .collect()
            .await
            .map_err(|e| format!("{e:?}"))
    }
}

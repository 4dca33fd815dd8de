//! The small seams through which a host reaches the core. The core never names a host SDK.

/// Deployment configuration by key (wrangler `[vars]`/secrets, Spin variables, environment).
pub trait ConfigSource {
    fn get(&self, key: &str) -> Option<String>;
}

impl ConfigSource for std::collections::HashMap<String, String> {
    fn get(&self, key: &str) -> Option<String> {
        std::collections::HashMap::get(self, key).cloned()
    }
}

/// Fixed key/value pairs: for tests and for hosts whose configuration is a plain list.
pub struct Pairs<'a>(pub &'a [(&'a str, &'a str)]);

impl ConfigSource for Pairs<'_> {
    fn get(&self, key: &str) -> Option<String> {
        self.0
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| (*v).to_owned())
    }
}

/// Wall-clock time in Unix milliseconds. Hosts supply it; tests use a fake.
pub trait Clock {
    fn now_ms(&self) -> u64;
}

/// The few key-value operations the core needs from a host's store (Spin key-value): the spill
/// and stored rate-limit buckets.
#[allow(async_fn_in_trait)] // instances are single-threaded: no Send bound wanted
pub trait KeyValue {
    async fn set(&self, key: &str, value: &[u8]) -> Result<(), String>;
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, String>;
    async fn delete(&self, key: &str) -> Result<(), String>;
    async fn keys(&self) -> Result<Vec<String>, String>;
}

#[cfg(test)]
pub mod testing {
    use super::KeyValue;
    use std::cell::RefCell;
    use std::collections::BTreeMap;
    use std::future::Future;

    /// An in-memory store; `fail_on` makes writes of matching keys fail.
    #[derive(Default)]
    pub struct MemoryKv {
        pub map: RefCell<BTreeMap<String, Vec<u8>>>,
        pub fail_on: Option<&'static str>,
    }

    impl KeyValue for MemoryKv {
        async fn set(&self, key: &str, value: &[u8]) -> Result<(), String> {
            if self.fail_on.is_some_and(|f| key.contains(f)) {
                return Err("store unavailable".into());
            }
            self.map.borrow_mut().insert(key.into(), value.into());
            Ok(())
        }
        async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
            Ok(self.map.borrow().get(key).cloned())
        }
        async fn delete(&self, key: &str) -> Result<(), String> {
            self.map.borrow_mut().remove(key);
            Ok(())
        }
        async fn keys(&self) -> Result<Vec<String>, String> {
            Ok(self.map.borrow().keys().cloned().collect())
        }
    }

    /// These futures never wait on anything, so one poll completes them.
    pub fn run<F: Future>(f: F) -> F::Output {
        let mut f = std::pin::pin!(f);
        match f
            .as_mut()
            .poll(&mut std::task::Context::from_waker(std::task::Waker::noop()))
        {
            std::task::Poll::Ready(v) => v,
            std::task::Poll::Pending => panic!("an in-memory store never waits"),
        }
    }
}

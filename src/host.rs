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

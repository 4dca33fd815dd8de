//! Calibration profiles from the host's key-value store (a Workers KV namespace, Spin
//! key-value), so a profile change needs no redeploy. The request pipeline calls [`refreshed`]:
//! when the cache is due it reads the value under [`PROFILES_KEY`] through the host and keeps
//! it if it parses. The cache keeps the last good set, so a bad write or a failed read never
//! stops ingest: the edge keeps calibrating with what it had (or the deployment's own profiles)
//! and logs `profiles_not_updated` with the reason.

use std::cell::RefCell;
use std::future::Future;
use std::rc::Rc;

use crate::domain::calibration::Profiles;
use crate::ports::StoreError;

/// The key whose value is the profile document (the same JSON as `CALIBRATION_PROFILES`).
pub const PROFILES_KEY: &str = "calibration";

#[derive(Debug)]
pub struct ProfileCache {
    ttl_ms: u64,
    /// The last good set from the store; None: the key is absent (use the deployment's).
    profiles: Option<Rc<Profiles>>,
    fetched_at_ms: Option<u64>,
    error: Option<String>,
}

impl ProfileCache {
    pub fn new(ttl_ms: u64) -> Self {
        Self {
            ttl_ms,
            profiles: None,
            fetched_at_ms: None,
            error: None,
        }
    }

    /// True when the store should be read again (never read, or older than the TTL).
    pub fn is_due(&self, now_ms: u64) -> bool {
        self.fetched_at_ms
            .is_none_or(|at| now_ms.saturating_sub(at) >= self.ttl_ms)
    }

    /// Like [`is_due`](Self::is_due), and if so marks the read as started, so that requests
    /// arriving while it is under way do not read too.
    pub fn claim_refresh(&mut self, now_ms: u64) -> bool {
        let due = self.is_due(now_ms);
        if due {
            self.fetched_at_ms = Some(now_ms);
        }
        due
    }

    /// Takes what the store returned: `Ok(Some(json))`, `Ok(None)` for an absent key, or the
    /// read's error. A document that does not parse keeps the previous set.
    pub fn store(&mut self, fetched: Result<Option<String>, StoreError>, now_ms: u64) {
        self.fetched_at_ms = Some(now_ms);
        match fetched {
            Ok(None) => {
                self.profiles = None;
                self.error = None;
            }
            Ok(Some(json)) => match Profiles::parse(&json) {
                Ok(p) => {
                    self.profiles = Some(Rc::new(p));
                    self.error = None;
                }
                Err(errors) => {
                    self.error = Some(format!(
                        "key {PROFILES_KEY:?} is invalid, the previous profiles stay in use: {}",
                        errors.join("; ")
                    ))
                }
            },
            Err(e) => {
                self.error = Some(format!(
                    "key {PROFILES_KEY:?} could not be read, the previous profiles stay in use: {e}"
                ))
            }
        }
    }

    /// The store's profiles, if it has any.
    pub fn current(&self) -> Option<Rc<Profiles>> {
        self.profiles.clone()
    }

    pub fn error(&self) -> Option<&str> {
        self.error.as_deref()
    }
}

/// The store's profiles for a request at `now_ms`. When the cache in `slot` is due, `read`
/// fetches the value under [`PROFILES_KEY`] (the slot is not borrowed across the read); a
/// refresh that kept the previous set reports why through `on_error`, for the host's log.
pub async fn refreshed<Fut>(
    slot: &RefCell<Option<ProfileCache>>,
    ttl_ms: u64,
    now_ms: u64,
    read: impl FnOnce() -> Fut,
    on_error: impl FnOnce(&str),
) -> Option<Rc<Profiles>>
where
    Fut: Future<Output = Result<Option<String>, StoreError>>,
{
    let due = slot
        .borrow_mut()
        .get_or_insert_with(|| ProfileCache::new(ttl_ms))
        .claim_refresh(now_ms);
    if due {
        let fetched = read().await;
        if let Some(cache) = slot.borrow_mut().as_mut() {
            cache.store(fetched, now_ms);
            if let Some(error) = cache.error() {
                on_error(error);
            }
        }
    }
    let current = slot.borrow().as_ref().and_then(ProfileCache::current);
    current
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::testing::run;

    #[test]
    fn refreshed_reads_only_when_due_and_reports_a_kept_set() {
        let slot = RefCell::new(None);
        let read = |value: &'static str| move || async move { Ok(Some(value.to_owned())) };
        let no_error = |e: &str| panic!("unexpected: {e}");
        let p = run(refreshed(&slot, 10_000, 0, read(ONE), no_error)).unwrap();
        assert_eq!(p.lookup("abc").unwrap().version, 7);
        // Within the TTL the store is not read at all.
        let unread = || async { panic!("read before the TTL ran out") };
        assert!(run(refreshed(&slot, 10_000, 9_999, unread, no_error)).is_some());
        // After it, a bad document is reported and the previous set stays.
        let mut reported = String::new();
        let bad = read(r#"[{"match":"a*","gain":0,"version":8}]"#);
        let p = run(refreshed(&slot, 10_000, 10_000, bad, |e| {
            reported = e.to_owned()
        }));
        assert_eq!(p.unwrap().lookup("abc").unwrap().version, 7);
        assert!(reported.contains("gain"), "{reported}");
    }

    const ONE: &str = r#"[{"match":"a*","gain":2,"version":7}]"#;

    #[test]
    fn refreshes_after_the_ttl_and_keeps_the_last_good_set() {
        let mut c = ProfileCache::new(30_000);
        assert!(c.is_due(0));
        assert!(c.claim_refresh(0) && !c.claim_refresh(1));
        c.store(Ok(Some(ONE.into())), 1_000);
        assert!(!c.is_due(30_999));
        assert!(c.is_due(31_000));
        assert_eq!(c.current().unwrap().lookup("abc").unwrap().version, 7);
        // A bad write keeps version 7 in use and says why.
        c.store(
            Ok(Some(r#"[{"match":"a*","gain":-1,"version":8}]"#.into())),
            31_000,
        );
        assert_eq!(c.current().unwrap().lookup("abc").unwrap().version, 7);
        assert!(c.error().unwrap().contains("gain"));
        // So does a failed read; a deleted key falls back to the deployment's profiles.
        c.store(Err(StoreError("timeout".into())), 62_000);
        assert!(c.current().is_some() && c.error().unwrap().contains("timeout"));
        c.store(Ok(None), 93_000);
        assert!(c.current().is_none() && c.error().is_none());
    }
}

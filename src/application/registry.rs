//! The device registry as the request path reads it: one record per device (`device/<id>` in
//! the host's key-value store, or the deployment's static `REGISTRY`), read at most once per
//! request and cached per isolate/instance for the registry TTL, unknown ids included (a
//! negative entry), so a device's steady traffic costs no store read at all. The cache holds
//! the [`MAX_ENTRIES`] most recently used devices (`application::recent`).
//!
//! A record that does not parse is reported and ignored: the last good one stays in use. A
//! failed read keeps a cached record past its TTL. With nothing cached, either is an error the
//! caller answers with 503, whatever the registry mode: a device whose record says `disabled`
//! is never admitted because its record could not be read or parsed.

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::rc::Rc;

use crate::application::recent::{Fingerprints, Recent};

use crate::domain::device::DeviceRecord;
use crate::domain::reading::DeviceId;
use crate::domain::unquoted::unquoted;
use crate::ports::StoreError;

/// The key-value key of a device's record.
pub fn record_key(device: &DeviceId) -> String {
    format!("device/{}", device.as_str())
}

/// How the registry takes part in admission (`REGISTRY_MODE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegistryMode {
    /// Not read: every authenticated device may send, with no tags (the default).
    Off,
    /// A record, when there is one, adds tags and calibration, may disable the device and sets
    /// its key version; devices without one are admitted as with `Off`.
    Optional,
    /// Only devices with a record are admitted.
    Required,
}

impl RegistryMode {
    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "off" => Some(Self::Off),
            "optional" => Some(Self::Optional),
            "required" => Some(Self::Required),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Off => "off",
            Self::Optional => "optional",
            Self::Required => "required",
        }
    }
}

/// What the registry says of the request's device.
#[derive(Debug, Clone, PartialEq)]
pub enum Registration {
    /// The registry is off.
    Off,
    Unknown(DeviceId),
    Known(DeviceId, Rc<DeviceRecord>),
}

impl Registration {
    /// The record of `device`, if this registration is about it and there is one.
    pub fn record_for(&self, device: &DeviceId) -> Option<&DeviceRecord> {
        match self {
            Self::Known(d, r) if d == device => Some(r),
            _ => None,
        }
    }

    /// The device looked up, unless the registry is off.
    pub fn device(&self) -> Option<&DeviceId> {
        match self {
            Self::Off => None,
            Self::Unknown(d) | Self::Known(d, _) => Some(d),
        }
    }
}

/// Entries kept per isolate/instance: the most recently used 100,000 devices (known or not).
/// A device past them costs one store read on its next request, never more; nothing ever
/// clears the cache whole.
pub const MAX_ENTRIES: usize = 100_000;

#[derive(Debug, Clone)]
struct Entry {
    fetched_at_ms: u64,
    record: Option<Rc<DeviceRecord>>,
}

/// The records of the devices seen lately, per isolate/instance (see the module comment).
#[derive(Debug)]
pub struct RegistryCache {
    entries: Recent<Entry>,
}

/// Why a device's registration could not be told: the request is refused (503) in either
/// registry mode, so that a device the registry disables is never admitted on a guess.
#[derive(Debug, Clone, PartialEq)]
pub enum LookupError {
    /// The store failed, and nothing is cached for the device.
    Unavailable(StoreError),
    /// The record does not parse, and no earlier good one is cached.
    Invalid(String),
}

impl std::fmt::Display for LookupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unavailable(e) => write!(f, "the store failed: {e}"),
            Self::Invalid(why) => write!(f, "the record is invalid: {why}"),
        }
    }
}

/// A lookup's answer, and what it read from the store (if it read), to be kept in the cache
/// with [`RegistryCache::remember`] once the request's credentials have held: a sender with
/// made-up ids and junk credentials then never pushes real devices out of the cache.
#[derive(Debug)]
pub struct Looked {
    pub registration: Registration,
    pub fetched: Option<Fetched>,
}

/// A record (or its absence) read from the store, not yet cached.
#[derive(Debug)]
pub struct Fetched {
    device: DeviceId,
    entry: Entry,
}

impl RegistryCache {
    pub fn new(capacity: usize, fingerprints: Fingerprints) -> Self {
        Self {
            entries: Recent::new(capacity, fingerprints),
        }
    }

    fn fresh(
        &mut self,
        device: &DeviceId,
        ttl_ms: u64,
        now_ms: u64,
    ) -> Option<Option<Rc<DeviceRecord>>> {
        self.entries
            .get_mut(device.as_str())
            .filter(|e| now_ms.saturating_sub(e.fetched_at_ms) < ttl_ms)
            .map(|e| e.record.clone())
    }

    fn last(&self, device: &DeviceId) -> Option<Option<Rc<DeviceRecord>>> {
        self.entries.peek(device.as_str()).map(|e| e.record.clone())
    }

    /// Keeps what a lookup read.
    pub fn remember(&mut self, fetched: Fetched) {
        self.entries.insert(fetched.device.as_str(), fetched.entry);
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes one entry takes, not counting its record (absent for an unknown device).
    pub fn bytes_per_entry() -> usize {
        Recent::<Entry>::bytes_per_entry()
    }
}

/// The registration of `device` at `now_ms`: from `cache` while fresh, else by `read` (the
/// record's text under [`record_key`], `Ok(None)` when absent). A bad record or a failed read
/// that kept a cached one is reported through `on_error`; with nothing cached it is an error.
pub async fn lookup<Fut>(
    cache: &RefCell<RegistryCache>,
    device: &DeviceId,
    ttl_ms: u64,
    now_ms: u64,
    read: impl FnOnce() -> Fut,
    on_error: impl FnOnce(&str),
) -> Result<Looked, LookupError>
where
    Fut: Future<Output = Result<Option<String>, StoreError>>,
{
    let cached = cache.borrow_mut().fresh(device, ttl_ms, now_ms);
    let (record, fetched) = match cached {
        Some(record) => (record, None),
        None => {
            let fetched = read().await;
            let last = cache.borrow().last(device);
            let record = match fetched {
                Ok(None) => None,
                Ok(Some(text)) => match DeviceRecord::parse(&text) {
                    Ok(r) => Some(Rc::new(r)),
                    Err(why) => match last {
                        Some(record) => {
                            on_error(&format!(
                                "the record of {} is invalid and is ignored (the last good one stays): {why}",
                                device.as_str()
                            ));
                            record
                        }
                        None => return Err(LookupError::Invalid(why)),
                    },
                },
                Err(e) => match last {
                    Some(record) => {
                        on_error(&format!(
                            "the record of {} could not be read, the cached one stays: {e}",
                            device.as_str()
                        ));
                        record
                    }
                    None => return Err(LookupError::Unavailable(e)),
                },
            };
            let entry = Entry {
                fetched_at_ms: now_ms,
                record: record.clone(),
            };
            let fetched = Fetched {
                device: device.clone(),
                entry,
            };
            (record, Some(fetched))
        }
    };
    let registration = match record {
        Some(r) => Registration::Known(device.clone(), r),
        None => Registration::Unknown(device.clone()),
    };
    Ok(Looked {
        registration,
        fetched,
    })
}

/// Where `part` (a slice of `text`) starts, as `line L column C`.
fn position(text: &str, part: &str) -> String {
    let offset = (part.as_ptr() as usize)
        .saturating_sub(text.as_ptr() as usize)
        .min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = offset - before.rfind('\n').map_or(0, |n| n + 1) + 1;
    format!("line {line} column {column}")
}

/// A registry given whole in the deployment's configuration (`REGISTRY`): for hosts without a
/// key-value store (the portable wasi:http flavour) and for tests.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StaticRegistry(HashMap<String, Rc<DeviceRecord>>);

impl StaticRegistry {
    /// `{"<device id>": <record>, ...}`; every bad entry is reported by where its record
    /// starts (line and column), never by its id or what it holds: the faults are public.
    pub fn parse(json: &str) -> Result<Self, Vec<String>> {
        let raw: HashMap<String, &serde_json::value::RawValue> = serde_json::from_str(json)
            .map_err(|e| {
                vec![format!(
                    "must be a JSON object of device records: {}",
                    unquoted(&e.to_string())
                )]
            })?;
        let mut errors = Vec::new();
        let mut records = HashMap::with_capacity(raw.len());
        for (id, value) in raw {
            let at = position(json, value.get());
            if let Err(issue) = DeviceId::parse(&id) {
                errors.push(format!("the entry at {at}: its device id {}", issue.detail));
                continue;
            }
            match DeviceRecord::parse(value.get()) {
                Ok(r) => {
                    records.insert(id, Rc::new(r));
                }
                Err(why) => errors.push(format!("the entry at {at}: {why}")),
            }
        }
        if errors.is_empty() {
            Ok(Self(records))
        } else {
            errors.sort_unstable();
            Err(errors)
        }
    }

    pub fn registration(&self, device: &DeviceId) -> Registration {
        match self.0.get(device.as_str()) {
            Some(r) => Registration::Known(device.clone(), r.clone()),
            None => Registration::Unknown(device.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::testing::run;
    use std::cell::Cell;

    fn cache(capacity: usize) -> RefCell<RegistryCache> {
        RefCell::new(RegistryCache::new(
            capacity,
            crate::application::recent::tests::fingerprints(),
        ))
    }

    fn id(s: &str) -> DeviceId {
        DeviceId::parse(s).unwrap()
    }

    const ACTIVE: &str = r#"{"status":"active","tags":{"site":"a"}}"#;
    const DISABLED: &str = r#"{"status":"disabled"}"#;

    /// Looks `device` up at `now`, counting reads (`value` is what the store holds), and keeps
    /// what was read, as the pipeline does once the request's credentials held.
    fn look(
        cache: &RefCell<RegistryCache>,
        device: &str,
        now: u64,
        value: Result<Option<&str>, &str>,
        reads: &Cell<u32>,
        errors: &RefCell<Vec<String>>,
    ) -> Result<Registration, LookupError> {
        let looked = look_only(cache, device, now, value, reads, errors)?;
        if let Some(fetched) = looked.fetched {
            cache.borrow_mut().remember(fetched);
        }
        Ok(looked.registration)
    }

    fn look_only(
        cache: &RefCell<RegistryCache>,
        device: &str,
        now: u64,
        value: Result<Option<&str>, &str>,
        reads: &Cell<u32>,
        errors: &RefCell<Vec<String>>,
    ) -> Result<Looked, LookupError> {
        let read = || async {
            reads.set(reads.get() + 1);
            value
                .map(|v| v.map(str::to_owned))
                .map_err(|e| StoreError(e.to_owned()))
        };
        run(lookup(cache, &id(device), 60_000, now, read, |e| {
            errors.borrow_mut().push(e.to_owned())
        }))
    }

    #[test]
    fn cached_for_the_ttl_unknown_ids_included() {
        let (c, reads, errors) = (cache(100), Cell::new(0), RefCell::new(Vec::new()));
        let r = look(&c, "c1", 0, Ok(Some(ACTIVE)), &reads, &errors).unwrap();
        assert_eq!(r.record_for(&id("c1")).unwrap().tags["site"], "a");
        assert!(r.record_for(&id("other")).is_none());
        // Within the TTL the store is not read, whatever it now holds.
        look(&c, "c1", 59_999, Ok(Some(DISABLED)), &reads, &errors).unwrap();
        assert_eq!(reads.get(), 1);
        // After it, the new record (a revocation) is seen.
        let r = look(&c, "c1", 60_000, Ok(Some(DISABLED)), &reads, &errors).unwrap();
        assert!(!r.record_for(&id("c1")).unwrap().is_active());
        // An unknown id is cached too.
        assert_eq!(
            look(&c, "c2", 0, Ok(None), &reads, &errors).unwrap(),
            Registration::Unknown(id("c2"))
        );
        look(&c, "c2", 1_000, Ok(Some(ACTIVE)), &reads, &errors).unwrap();
        assert_eq!(reads.get(), 3);
        assert!(errors.borrow().is_empty());
    }

    #[test]
    fn a_bad_record_or_a_failed_read_keeps_the_last_good_one() {
        let (c, reads, errors) = (cache(100), Cell::new(0), RefCell::new(Vec::new()));
        look(&c, "b1", 0, Ok(Some(ACTIVE)), &reads, &errors).unwrap();
        let bad = Ok(Some(r#"{"stauts":"disabled"}"#));
        let r = look(&c, "b1", 60_000, bad, &reads, &errors).unwrap();
        assert!(r.record_for(&id("b1")).unwrap().is_active());
        assert!(
            errors.borrow()[0].contains("invalid"),
            "{:?}",
            errors.borrow()
        );
        let r = look(&c, "b1", 120_000, Err("timeout"), &reads, &errors).unwrap();
        assert!(r.record_for(&id("b1")).is_some());
        assert!(errors.borrow()[1].contains("timeout"));
    }

    /// At 557087d a record that did not parse, with nothing cached, made the device unknown,
    /// and `optional` mode admitted an unknown device: a disabled device whose record an
    /// operator mistyped was let in. Now nothing cached and no good record is an error, as a
    /// failed read is.
    #[test]
    fn with_nothing_cached_a_bad_record_or_a_failed_read_is_an_error() {
        let (c, reads, errors) = (cache(100), Cell::new(0), RefCell::new(Vec::new()));
        let bad = Ok(Some(r#"{"status":"stolen"}"#));
        assert!(matches!(
            look(&c, "b2", 0, bad, &reads, &errors),
            Err(LookupError::Invalid(_))
        ));
        assert!(matches!(
            look(&c, "b3", 0, Err("down"), &reads, &errors),
            Err(LookupError::Unavailable(_))
        ));
        assert!(c.borrow().is_empty(), "nothing is cached from a failure");
    }

    /// At 557087d the cache was cleared whole at its bound, so past 10,000 devices nearly every
    /// request read the store. Now the least recently used device is forgotten, one at a time.
    #[test]
    fn the_cache_forgets_the_least_recently_used_and_never_clears() {
        let (c, reads, errors) = (cache(3), Cell::new(0), RefCell::new(Vec::new()));
        for d in ["d1", "d2", "d3"] {
            look(&c, d, 0, Ok(None), &reads, &errors).unwrap();
        }
        look(&c, "d1", 1, Ok(None), &reads, &errors).unwrap(); // d2 is now the oldest
        look(&c, "d4", 2, Ok(None), &reads, &errors).unwrap();
        assert_eq!((c.borrow().len(), reads.get()), (3, 4));
        for d in ["d1", "d3", "d4"] {
            look(&c, d, 3, Ok(None), &reads, &errors).unwrap();
        }
        assert_eq!(reads.get(), 4, "d1, d3 and d4 are still cached");
        look(&c, "d2", 3, Ok(None), &reads, &errors).unwrap();
        assert_eq!(reads.get(), 5, "d2 was forgotten");
    }

    /// What a request read is cached only if the pipeline keeps it (its credentials held): a
    /// flood of made-up ids with junk tokens does not push real devices out.
    #[test]
    fn a_lookup_not_remembered_leaves_the_cache_as_it_was() {
        let (c, reads, errors) = (cache(2), Cell::new(0), RefCell::new(Vec::new()));
        look(&c, "real", 0, Ok(Some(ACTIVE)), &reads, &errors).unwrap();
        for i in 0..10 {
            let junk = format!("junk-{i}");
            look_only(&c, &junk, 1, Ok(None), &reads, &errors).unwrap();
        }
        assert_eq!(c.borrow().len(), 1);
        look(&c, "real", 2, Ok(Some(ACTIVE)), &reads, &errors).unwrap();
        assert_eq!(reads.get(), 11, "real was served from the cache");
    }

    #[test]
    fn a_static_registry_reports_each_bad_entry() {
        let reg = StaticRegistry::parse(&format!(r#"{{"s1":{ACTIVE},"s2":{DISABLED}}}"#)).unwrap();
        assert!(reg
            .registration(&id("s1"))
            .record_for(&id("s1"))
            .unwrap()
            .is_active());
        assert_eq!(reg.registration(&id("s3")), Registration::Unknown(id("s3")));
        let errors = StaticRegistry::parse(r#"{"a b":{"status":"active"},"s1":{"status":"x"}}"#)
            .unwrap_err();
        assert_eq!(errors.len(), 2, "{errors:?}");
        // At 557087d the faults quoted the ids and serde's `unknown variant `x``: public text
        // (`/healthz`). Now each names where its entry starts, and no value.
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with("the entry at line 1 column 8: its device id")),
            "{errors:?}"
        );
        let secretive = StaticRegistry::parse(r#"{"d1":{"status":"stolen-at-site-7"}}"#)
            .unwrap_err()
            .join("; ");
        assert!(
            !secretive.contains("stolen") && !secretive.contains("d1"),
            "{secretive}"
        );
        assert!(StaticRegistry::parse("[]").is_err());
    }
}

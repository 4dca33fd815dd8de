//! The device registry as the request path reads it: one record per device (`device/<id>` in
//! the host's key-value store, or the deployment's static `REGISTRY`), read at most once per
//! request and cached per isolate/instance for the registry TTL, unknown ids included (a
//! negative entry), so a device's steady traffic costs no store read at all.
//!
//! A record that does not parse is reported and ignored: the last good one stays in use (or,
//! with none, the device counts as unknown). A failed read keeps a cached record past its TTL;
//! with nothing cached it is the caller's to answer (503).

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::rc::Rc;
use std::thread::LocalKey;

use crate::domain::device::DeviceRecord;
use crate::domain::reading::DeviceId;
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

/// Entries kept per isolate/instance. At the bound, expired entries go first, then all of them
/// (a flood of ids costs reads, never unbounded memory).
pub const MAX_ENTRIES: usize = 10_000;

#[derive(Debug)]
struct Entry {
    fetched_at_ms: u64,
    record: Option<Rc<DeviceRecord>>,
}

#[derive(Debug, Default)]
pub struct RegistryCache {
    entries: HashMap<String, Entry>,
}

pub type RegistrySlot = RefCell<RegistryCache>;

impl RegistryCache {
    fn fresh(
        &self,
        device: &DeviceId,
        ttl_ms: u64,
        now_ms: u64,
    ) -> Option<Option<Rc<DeviceRecord>>> {
        self.entries
            .get(device.as_str())
            .filter(|e| now_ms.saturating_sub(e.fetched_at_ms) < ttl_ms)
            .map(|e| e.record.clone())
    }

    fn put(
        &mut self,
        device: &DeviceId,
        ttl_ms: u64,
        now_ms: u64,
        record: Option<Rc<DeviceRecord>>,
    ) {
        if self.entries.len() >= MAX_ENTRIES && !self.entries.contains_key(device.as_str()) {
            self.entries
                .retain(|_, e| now_ms.saturating_sub(e.fetched_at_ms) < ttl_ms);
            if self.entries.len() >= MAX_ENTRIES {
                self.entries.clear();
            }
        }
        self.entries.insert(
            device.as_str().to_owned(),
            Entry {
                fetched_at_ms: now_ms,
                record,
            },
        );
    }

    fn last(&self, device: &DeviceId) -> Option<Option<Rc<DeviceRecord>>> {
        self.entries.get(device.as_str()).map(|e| e.record.clone())
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The registration of `device` at `now_ms`: from the cache in `slot` while fresh, else by
/// `read` (the record's text under [`record_key`], `Ok(None)` when absent). A bad record or a
/// failed read that kept a cached one is reported through `on_error`.
pub async fn lookup<Fut>(
    slot: &'static LocalKey<RegistrySlot>,
    device: &DeviceId,
    ttl_ms: u64,
    now_ms: u64,
    read: impl FnOnce() -> Fut,
    on_error: impl FnOnce(&str),
) -> Result<Registration, StoreError>
where
    Fut: Future<Output = Result<Option<String>, StoreError>>,
{
    let cached = slot.with(|c| c.borrow().fresh(device, ttl_ms, now_ms));
    let record = match cached {
        Some(record) => record,
        None => {
            let fetched = read().await;
            let last = slot.with(|c| c.borrow().last(device));
            let record = match fetched {
                Ok(None) => None,
                Ok(Some(text)) => match DeviceRecord::parse(&text) {
                    Ok(r) => Some(Rc::new(r)),
                    Err(why) => {
                        on_error(&format!(
                            "the record of {} is invalid and is ignored (the last good one stays): {why}",
                            device.as_str()
                        ));
                        last.flatten()
                    }
                },
                Err(e) => match last {
                    Some(record) => {
                        on_error(&format!(
                            "the record of {} could not be read, the cached one stays: {e}",
                            device.as_str()
                        ));
                        record
                    }
                    None => return Err(e),
                },
            };
            slot.with(|c| c.borrow_mut().put(device, ttl_ms, now_ms, record.clone()));
            record
        }
    };
    Ok(match record {
        Some(r) => Registration::Known(device.clone(), r),
        None => Registration::Unknown(device.clone()),
    })
}

/// A registry given whole in the deployment's configuration (`REGISTRY`): for hosts without a
/// key-value store (the portable wasi:http flavour) and for tests.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StaticRegistry(HashMap<String, Rc<DeviceRecord>>);

impl StaticRegistry {
    /// `{"<device id>": <record>, ...}`; every bad entry is reported by its id.
    pub fn parse(json: &str) -> Result<Self, Vec<String>> {
        let raw: HashMap<String, &serde_json::value::RawValue> = serde_json::from_str(json)
            .map_err(|e| vec![format!("must be a JSON object of device records: {e}")])?;
        let mut errors = Vec::new();
        let mut records = HashMap::with_capacity(raw.len());
        for (id, value) in raw {
            if let Err(issue) = DeviceId::parse(&id) {
                errors.push(format!("{id:?}: {}", issue.detail));
                continue;
            }
            match DeviceRecord::parse(value.get()) {
                Ok(r) => {
                    records.insert(id, Rc::new(r));
                }
                Err(why) => errors.push(format!("{id}: {why}")),
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

    thread_local! {
        static SLOT: RegistrySlot = RefCell::new(RegistryCache::default());
    }

    fn id(s: &str) -> DeviceId {
        DeviceId::parse(s).unwrap()
    }

    const ACTIVE: &str = r#"{"status":"active","tags":{"site":"a"}}"#;
    const DISABLED: &str = r#"{"status":"disabled"}"#;

    /// Looks `device` up at `now`, counting reads; `value` is what the store holds.
    fn look(
        device: &str,
        now: u64,
        value: Result<Option<&str>, &str>,
        reads: &Cell<u32>,
        errors: &RefCell<Vec<String>>,
    ) -> Result<Registration, StoreError> {
        let read = || async {
            reads.set(reads.get() + 1);
            value
                .map(|v| v.map(str::to_owned))
                .map_err(|e| StoreError(e.to_owned()))
        };
        run(lookup(&SLOT, &id(device), 60_000, now, read, |e| {
            errors.borrow_mut().push(e.to_owned())
        }))
    }

    #[test]
    fn cached_for_the_ttl_unknown_ids_included() {
        let (reads, errors) = (Cell::new(0), RefCell::new(Vec::new()));
        let r = look("c1", 0, Ok(Some(ACTIVE)), &reads, &errors).unwrap();
        assert_eq!(r.record_for(&id("c1")).unwrap().tags["site"], "a");
        assert!(r.record_for(&id("other")).is_none());
        // Within the TTL the store is not read, whatever it now holds.
        look("c1", 59_999, Ok(Some(DISABLED)), &reads, &errors).unwrap();
        assert_eq!(reads.get(), 1);
        // After it, the new record (a revocation) is seen.
        let r = look("c1", 60_000, Ok(Some(DISABLED)), &reads, &errors).unwrap();
        assert!(!r.record_for(&id("c1")).unwrap().is_active());
        // An unknown id is cached too.
        assert_eq!(
            look("c2", 0, Ok(None), &reads, &errors).unwrap(),
            Registration::Unknown(id("c2"))
        );
        look("c2", 1_000, Ok(Some(ACTIVE)), &reads, &errors).unwrap();
        assert_eq!(reads.get(), 3);
        assert!(errors.borrow().is_empty());
    }

    #[test]
    fn a_bad_record_or_a_failed_read_keeps_the_last_good_one() {
        let (reads, errors) = (Cell::new(0), RefCell::new(Vec::new()));
        look("b1", 0, Ok(Some(ACTIVE)), &reads, &errors).unwrap();
        let r = look(
            "b1",
            60_000,
            Ok(Some(r#"{"stauts":"disabled"}"#)),
            &reads,
            &errors,
        )
        .unwrap();
        assert!(r.record_for(&id("b1")).unwrap().is_active());
        assert!(
            errors.borrow()[0].contains("invalid"),
            "{:?}",
            errors.borrow()
        );
        let r = look("b1", 120_000, Err("timeout"), &reads, &errors).unwrap();
        assert!(r.record_for(&id("b1")).is_some());
        assert!(errors.borrow()[1].contains("timeout"));
        // Nothing cached: a bad record is an unknown device, a failed read the caller's error.
        let r = look("b2", 0, Ok(Some("{")), &reads, &errors).unwrap();
        assert_eq!(r, Registration::Unknown(id("b2")));
        assert!(look("b3", 0, Err("down"), &reads, &errors).is_err());
    }

    #[test]
    fn the_cache_is_bounded() {
        let mut cache = RegistryCache::default();
        for i in 0..MAX_ENTRIES + 5 {
            cache.put(&id(&format!("d{i}")), 1_000, 0, None);
        }
        assert!(cache.len() <= MAX_ENTRIES);
        assert!(!cache.is_empty());
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
        assert!(StaticRegistry::parse("[]").is_err());
    }
}

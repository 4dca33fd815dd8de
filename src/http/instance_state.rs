//! What one isolate or instance keeps between requests: the profiles read from the host's
//! store, the device records seen lately, the signatures verified, and the senders whose
//! credentials failed. One value per isolate or instance, owned by the host adapter and lent
//! to the pipeline (`Host::state`); every part is bounded (`application::recent`).

use std::cell::RefCell;

use crate::application::profile_cache::ProfileCache;
use crate::application::recent::Fingerprints;
use crate::application::registry::{self, RegistryCache};
use crate::http::jwt::VerifiedSignatures;
use crate::http::sender_budget::SenderBudgets;
use crate::ports::Entropy;

#[derive(Debug)]
pub struct InstanceState {
    pub(crate) profiles: RefCell<Option<ProfileCache>>,
    pub(crate) registry: RefCell<RegistryCache>,
    pub(crate) signatures: RefCell<VerifiedSignatures>,
    pub(crate) senders: RefCell<SenderBudgets>,
}

impl InstanceState {
    /// Empty, its maps keyed from `entropy` (see `application::recent::Fingerprints`).
    pub fn new(entropy: &dyn Entropy) -> Self {
        let fingerprints = Fingerprints::new(entropy);
        Self {
            profiles: RefCell::new(None),
            registry: RefCell::new(RegistryCache::new(registry::MAX_ENTRIES, fingerprints)),
            signatures: RefCell::new(VerifiedSignatures::new(fingerprints)),
            senders: RefCell::new(SenderBudgets::new(fingerprints)),
        }
    }

    /// How many entries each part holds, for `/admin/stats`.
    pub fn sizes(&self) -> StateSizes {
        StateSizes {
            registry_entries: self.registry.borrow().len(),
            verified_signatures: self.signatures.borrow().len(),
            failing_senders: self.senders.borrow().len(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct StateSizes {
    pub registry_entries: usize,
    pub verified_signatures: usize,
    pub failing_senders: usize,
}

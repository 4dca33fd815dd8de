//! The in-memory host: the one request driver (`http::pipeline::handle`) over ports that keep
//! everything in memory. It serves no platform; it is what the native tests, the fuzz targets,
//! the benches and the OpenAPI contract run requests through, so that they drive the path
//! production runs, down to the accept use case over `admission::InMemory` (as the portable
//! flavour's instances and the Workers batcher do).
//!
//! Built for every target; on Workers' (where only the adapter can verify a signature, with
//! WebCrypto) it verifies none.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

use http::Request;

use crate::application::admission::{self, InMemory, Refused, Verdict};
use crate::application::delivery::outbox::{MemoryStore, Outbox, Wakeups};
use crate::application::rate_limit::{MemoryBuckets, MAX_TRACKED_DEVICES};
use crate::application::recent::Fingerprints;
use crate::config::Settings;
use crate::domain::enrich::{EdgeInfo, StoredReading};
use crate::domain::reading::DeviceId;
use crate::http::answer::Answer;
use crate::http::deployment::{ApiDocument, Deployment, HostConventions};
use crate::http::instance_state::InstanceState;
use crate::http::pipeline::{self, Host};
use crate::http::problem::Problem;
use crate::http::routes::{self, Accepted, AdminQuery};
use crate::ports::{
    BodyBroken, BodyStream, Clock, EdgeFacts, Entropy, Es256Check, Level, Log, Pairs, StoreError,
    SystemEntropy, Timer,
};

/// The platform tag this host puts in answers and readings unless told otherwise.
pub const PLATFORM: &str = "memory";

/// Where the in-memory host keeps accepted readings: an outbox nothing delivers from.
struct Backlog {
    outbox: RefCell<Outbox<u64>>,
    store: MemoryStore,
    buckets: Option<RefCell<MemoryBuckets>>,
}

/// A host whose stores are fields: settings from pairs, a registry and profiles it is given, a
/// clock that moves only when told.
pub struct MemoryHost {
    /// The platform tag in answers and readings (`edge.platform`).
    pub platform: &'static str,
    /// Bytes of a refused body read and dropped before the answer (see `pipeline`).
    pub drain_limit: usize,
    deployment: Rc<Deployment>,
    backlog: Option<Backlog>,
    state: InstanceState,
    /// Readings the accept use case took, in order, until `take_accepted`.
    accepted: RefCell<Vec<StoredReading>>,
    /// The registry in the host's key-value store: `device/<id>` to its record's text.
    pub records: RefCell<HashMap<String, String>>,
    /// The profile document in the host's key-value store.
    pub stored_profiles: RefCell<Option<String>>,
    /// Reads of the registry store; while `registry_down`, each fails.
    pub record_reads: Cell<u32>,
    pub registry_down: Cell<bool>,
    /// The clock, in ms since the epoch.
    pub now: Cell<u64>,
    /// ES256 signatures verified (the software check of every host but Workers).
    pub signatures_checked: Cell<u32>,
    /// Calls of `Host::after`.
    pub afters: Cell<u32>,
    /// The events logged, in order.
    pub events: RefCell<Vec<String>>,
    /// Randomness for ids: the system's unless a test fixes it.
    entropy: Box<dyn Entropy>,
}

impl MemoryHost {
    /// A host with these settings (`KEY`, value) at `now_ms`.
    pub fn new(vars: &[(&str, &str)], now_ms: u64) -> Self {
        let settings = Settings::load(&Pairs(vars));
        let deployment = Rc::new(settings.deployment(HostConventions::serving(
            ApiDocument::Served(routes::OPENAPI),
            "settings",
        )));
        let backlog = settings.config.as_ref().ok().map(|c| Backlog {
            outbox: RefCell::new(Outbox::new(c.outbox(Wakeups::Polled), now_ms)),
            store: MemoryStore::default(),
            buckets: c.rate_limit.map(|limit| {
                let fingerprints = Fingerprints::new(&SystemEntropy);
                RefCell::new(MemoryBuckets::new(limit, MAX_TRACKED_DEVICES, fingerprints))
            }),
        });
        Self {
            platform: PLATFORM,
            drain_limit: 0,
            deployment,
            backlog,
            state: InstanceState::new(&SystemEntropy),
            accepted: RefCell::default(),
            records: RefCell::default(),
            stored_profiles: RefCell::default(),
            record_reads: Cell::new(0),
            registry_down: Cell::new(false),
            now: Cell::new(now_ms),
            signatures_checked: Cell::new(0),
            afters: Cell::new(0),
            events: RefCell::default(),
            entropy: Box::new(SystemEntropy),
        }
    }

    /// The same host with a deployment built elsewhere (a test's variant of one); the backlog
    /// keeps the settings `new` was given.
    pub fn with_deployment(mut self, deployment: Deployment) -> Self {
        self.deployment = Rc::new(deployment);
        self
    }

    /// The same host drawing ids from `entropy`.
    pub fn with_entropy(mut self, entropy: impl Entropy + 'static) -> Self {
        self.entropy = Box::new(entropy);
        self
    }

    /// Answers one request whose body is in hand, as the driver answers it on every host.
    pub fn serve(&self, request: Request<Vec<u8>>) -> Answer {
        self.serve_from(request, EdgeFacts::default())
    }

    /// `serve`, with what the platform says of where the request came in.
    pub fn serve_from(&self, request: Request<Vec<u8>>, facts: EdgeFacts) -> Answer {
        let request = request.map(|bytes| BodyInHand(Some(bytes)));
        complete(pipeline::handle(self, request, facts))
    }

    /// The readings accepted since the last call, in order; the outbox is emptied with them
    /// (as if delivered), so that a long run holds no more than one request's worth.
    pub fn take_accepted(&self) -> Vec<StoredReading> {
        if let Some(b) = &self.backlog {
            let config = b.outbox.borrow().config().clone();
            *b.outbox.borrow_mut() = Outbox::new(config, self.now.get());
        }
        std::mem::take(&mut self.accepted.borrow_mut())
    }

    /// The readings accepted since the last `take_accepted`.
    pub fn accepted(&self) -> std::cell::Ref<'_, Vec<StoredReading>> {
        self.accepted.borrow()
    }

    /// Readings the outbox holds.
    pub fn pending(&self) -> usize {
        self.backlog
            .as_ref()
            .map_or(0, |b| b.outbox.borrow().pending())
    }
}

/// Runs a future of this host to its end. Nothing here waits on I/O (sleeps end at once), so
/// one poll completes it; a future that does not complete is a fault of this host.
fn complete<F: std::future::Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match f.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(v) => v,
        // Only a body stream that never ends could wait, and a body in hand ends.
        std::task::Poll::Pending => unreachable!("the in-memory host never waits"),
    }
}

/// A request body that is all in hand.
pub struct BodyInHand(Option<Vec<u8>>);

impl BodyStream for BodyInHand {
    type Chunk = Vec<u8>;
    async fn next_chunk(&mut self) -> Option<Result<Vec<u8>, BodyBroken>> {
        self.0.take().filter(|b| !b.is_empty()).map(Ok)
    }
}

impl Clock for MemoryHost {
    fn now_ms(&self) -> u64 {
        self.now.get()
    }
}

impl Timer for MemoryHost {
    async fn sleep_ms(&self, _ms: u64) {}
}

impl Log for MemoryHost {
    fn emit(&self, _: Level, event: &str, _: &[(&str, &str)]) {
        self.events.borrow_mut().push(event.to_owned());
    }
}

impl Host for MemoryHost {
    fn platform(&self) -> &'static str {
        self.platform
    }
    fn state(&self) -> &InstanceState {
        &self.state
    }
    fn entropy(&self) -> &dyn Entropy {
        self.entropy.as_ref()
    }
    fn drain_limit(&self) -> usize {
        self.drain_limit
    }
    async fn deployment(&self) -> Rc<Deployment> {
        self.deployment.clone()
    }
    fn timer_ms(&self) -> f64 {
        0.0
    }
    async fn read_stored_profiles(&self) -> Result<Option<String>, StoreError> {
        Ok(self.stored_profiles.borrow().clone())
    }
    async fn read_device_record(&self, device: &DeviceId) -> Result<Option<String>, StoreError> {
        self.record_reads.set(self.record_reads.get() + 1);
        if self.registry_down.get() {
            return Err(StoreError("the registry store is down".into()));
        }
        let key = crate::application::registry::record_key(device);
        Ok(self.records.borrow().get(&key).cloned())
    }
    async fn accept(&self, edge: &EdgeInfo, accepted: &Accepted) -> Verdict {
        let Some(b) = &self.backlog else {
            return Err(Refused::Fault("the configuration is invalid".into()));
        };
        let section = accepted.section();
        let ports = InMemory::new(&b.outbox, b.buckets.as_ref(), &b.store, &edge.node);
        let verdict = admission::accept_one(&ports, &section, accepted.received_at_ms).await;
        if verdict == Ok(admission::Admitted::Accepted) {
            self.accepted.borrow_mut().extend(section.readings);
        }
        verdict
    }
    #[cfg(not(all(target_arch = "wasm32", target_os = "unknown")))]
    async fn verify_es256(&self, check: &Es256Check<'_>) -> bool {
        self.signatures_checked
            .set(self.signatures_checked.get() + 1);
        crate::http::jwt::verify_es256(check)
    }
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    async fn verify_es256(&self, _: &Es256Check<'_>) -> bool {
        false
    }
    async fn admin(&self, _: &EdgeInfo, query: AdminQuery) -> Result<String, Problem> {
        let outbox = match &self.backlog {
            Some(b) => b.outbox.borrow().stats_json(),
            None => serde_json::Value::Null,
        };
        let view = serde_json::json!({
            "scope": "memory",
            "query": format!("{query:?}"),
            "outbox": outbox,
            "instance_state": self.state.sizes(),
        });
        Ok(view.to_string())
    }
    async fn after(&self) {
        self.afters.set(self.afters.get() + 1);
    }
}

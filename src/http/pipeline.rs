//! The one request path of every host: an `http::Request` whose body the host streams, a
//! [`Host`] for everything platform-specific, an `http::Response` back. Request ids, the order
//! of checks, the body limit, routing, credentials, validation, enrichment, the hand-off to the
//! outbox, admin answers, error mapping, CORS and timing headers are all here, once.
//!
//! Order: everything the request line and headers settle is decided before a byte of the body
//! is read (`routes::plan`); then at most `MAX_BODY_BYTES` of the body are read; then the rest
//! (`routes::ingest`) and the host's acceptance.
//!
//! The drain: a refused request's body is not read, but a host whose runtime closes a
//! connection with an unread body (wasmtime serve, Spin: hyper resets it, and a client still
//! sending sees the reset, not its 4xx) reads and drops up to [`Host::drain_limit`] bytes of it
//! first, for at most [`DRAIN_WAIT_MS`]. Workers needs none (its runtime delivers the answer to
//! a client that is still sending). A 414 or 431 is never drained: its answer goes at once.

use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_LENGTH, ORIGIN, TRANSFER_ENCODING, VARY};
use http::request::Parts;
use http::Request;

use std::rc::Rc;

use crate::application::admission::Verdict;
use crate::application::profile_cache;
use crate::application::registry::{self, Fetched, Registration, RegistryMode};
use crate::domain::calibration::Profiles;
use crate::domain::enrich::EdgeInfo;
use crate::domain::ids;
use crate::domain::reading::DeviceId;
use crate::http::answer::{self, Answer};
use crate::http::auth::AuthMode;
use crate::http::deployment::{Deployment, Policy, RegistryPolicy};
use crate::http::instance_state::InstanceState;
use crate::http::jwt::VerifiedSignatures;
use crate::http::problem::{self, Problem, ProblemType};
use crate::http::routes::{self, Accepted, AdminQuery, Ingest, Plan, RequestContext};
use crate::ports::{
    BodyStream, Clock, EdgeFacts, Entropy, Es256Check, Level, Log, StoreError, SystemEntropy, Timer,
};

/// Everything the request pipeline needs of a host: its clock and timer (the `Clock` and
/// `Timer` ports, as the delivery engine uses them), its deployment, its per-request log, its
/// profile and registry stores, its signature check, its outbox hand-off and its admin views.
// Hosts are single-threaded (an isolate, an instance): no Send wanted of these futures.
#[allow(async_fn_in_trait)]
pub trait Host: Clock + Timer + Log {
    /// The platform tag in answers and readings (`edge.platform`).
    fn platform(&self) -> &'static str;
    /// What this isolate or instance keeps between requests (caches, failure budgets): one
    /// value, owned by the adapter.
    fn state(&self) -> &InstanceState;
    /// Randomness for ids: the host's CSPRNG unless a host (or a test) says otherwise.
    fn entropy(&self) -> &dyn Entropy {
        &SystemEntropy
    }
    /// Bytes of a refused body the host reads and drops before answering, so that a client
    /// still sending hears the answer rather than a reset (see `pipeline`).
    fn drain_limit(&self) -> usize;
    /// What the pipeline needs of the deployment (built by `config` from its settings), once
    /// per isolate or instance.
    async fn deployment(&self) -> Rc<Deployment>;
    /// Milliseconds on the clock `Server-Timing` reports (Workers' only advances across I/O).
    fn timer_ms(&self) -> f64;
    /// The profile document under `application::profile_cache::PROFILES_KEY` in the host's
    /// key-value store: `Ok(None)` when the key is absent or the host has no such store. The
    /// pipeline decides when to read (at most every `PROFILES_TTL_S`) and keeps the last good set.
    async fn read_stored_profiles(&self) -> Result<Option<String>, StoreError>;
    /// The registry record of `device` (the JSON under `application::registry::record_key`)
    /// in the host's key-value store: `Ok(None)` when absent or the host has no such store.
    /// The pipeline caches it for the registry TTL.
    async fn read_device_record(&self, device: &DeviceId) -> Result<Option<String>, StoreError> {
        let _ = device;
        Ok(None)
    }
    /// Takes accepted readings into the outbox through the accept use case
    /// (`application::admission`, rate limits included): `Ok(Accepted)` once they are as
    /// durable as the host makes them. The verdict is typed; `http::problem` answers it.
    async fn accept(&self, edge: &EdgeInfo, accepted: &Accepted) -> Verdict;
    /// Whether an ES256 signature verifies (a device JWT). Natively and on wasi hosts: in
    /// software (`http::jwt::verify_es256`); Workers checks it with WebCrypto.
    #[cfg(not(all(target_arch = "wasm32", target_os = "unknown")))]
    async fn verify_es256(&self, check: &Es256Check<'_>) -> bool {
        crate::http::jwt::verify_es256(check)
    }
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    async fn verify_es256(&self, check: &Es256Check<'_>) -> bool;
    /// An admin query's answer, as JSON text.
    async fn admin(&self, edge: &EdgeInfo, query: AdminQuery) -> Result<String, Problem>;
    /// Work after the answer to a request whose credentials held (or that needed none: a
    /// deployment with authentication off) is decided (Spin: keep its recovery going). Never
    /// for a request an unauthenticated sender could send (a 401, a 404), which must buy
    /// nothing. Nothing by default.
    async fn after(&self) {}
}

/// A log line about one request: the port's line with the request's id as its first field.
fn log_request(
    log: &impl Log,
    level: Level,
    event: &str,
    request_id: &str,
    fields: &[(&str, &str)],
) {
    let mut all = Vec::with_capacity(fields.len() + 1);
    if !request_id.is_empty() {
        all.push(("request_id", request_id));
    }
    all.extend_from_slice(fields);
    log.emit(level, event, &all);
}

/// How long a drain may wait for a body that is declared but does not come.
pub const DRAIN_WAIT_MS: u64 = 1_000;

/// Answers one request.
pub async fn handle<H: Host, B: BodyStream>(
    host: &H,
    request: Request<B>,
    facts: EdgeFacts,
) -> Answer {
    let started = host.timer_ms();
    let now = host.now_ms();
    let request_id = request_id(host.entropy(), now);
    let settings = host.deployment().await;
    let (parts, mut body) = request.into_parts();
    let client = facts.client;
    let edge = EdgeInfo::new(
        settings.edge_node(),
        facts.colo,
        facts.country,
        facts.region,
        host.platform(),
    );
    let request = Incoming {
        parts: &parts,
        client: client.as_deref(),
        edge: &edge,
        now,
        request_id: &request_id,
        authenticated: std::cell::Cell::new(false),
    };
    let outcome = serve(host, &settings, &request, &mut body).await;
    let answer = match outcome {
        Ok(answer) => answer,
        Err(refusal) => {
            if refusal.drain && declares_body(&parts) {
                drain(host, &mut body).await;
            }
            answer::problem(&refusal.problem, &request_id)
        }
    };
    if request.authenticated.get() {
        host.after().await;
    }
    finish(
        answer,
        &settings,
        &parts,
        &request_id,
        host.timer_ms() - started,
    )
}

/// The answer to a request the host could not even turn into an `http::Request` (a target or
/// header the `http` crate refuses): a 400 with the headers every answer carries.
pub async fn unreadable<H: Host>(host: &H, detail: &str) -> Answer {
    let now = host.now_ms();
    let request_id = request_id(host.entropy(), now);
    let settings = host.deployment().await;
    let problem = Problem::new(
        ProblemType::InvalidRequest,
        format!("the request could not be read: {detail}"),
    );
    let parts = Request::new(()).into_parts().0;
    finish(
        answer::problem(&problem, &request_id),
        &settings,
        &parts,
        &request_id,
        0.0,
    )
}

/// A UUIDv7 for the request (`x-request-id`, log lines), or a marker when entropy failed.
fn request_id(entropy: &dyn Entropy, now: u64) -> String {
    let mut random = vec![0u8; ids::BYTES_PER_ID];
    if entropy.fill(&mut random).is_err() {
        return String::from("no-entropy");
    }
    ids::IdSource::new(now, random)
        .next_id()
        .unwrap_or_else(|| String::from("no-entropy"))
}

/// A problem, and whether the body may still be coming (see the module comment).
struct Refusal {
    problem: Problem,
    drain: bool,
}

impl From<Problem> for Refusal {
    fn from(problem: Problem) -> Self {
        let drain = !matches!(
            problem.kind(),
            ProblemType::UriTooLong | ProblemType::HeadersTooLarge
        );
        Self { problem, drain }
    }
}

/// After the body was read: nothing left to drain.
fn read_already(problem: Problem) -> Refusal {
    Refusal {
        problem,
        drain: false,
    }
}

/// The deployment, once found ready: its policy and profiles, checked once per request.
#[derive(Clone, Copy)]
struct Ready<'a> {
    settings: &'a Deployment,
    policy: &'a Policy,
    profiles: &'a Profiles,
}

/// One request as the pipeline sees it once its head is read.
struct Incoming<'a> {
    parts: &'a Parts,
    /// The sender's address, where the host says (see `http::sender_budget`).
    client: Option<&'a str>,
    edge: &'a EdgeInfo,
    now: u64,
    request_id: &'a str,
    /// The request's credentials held (a device's, or the admin token).
    authenticated: std::cell::Cell<bool>,
}

async fn serve<H: Host, B: BodyStream>(
    host: &H,
    settings: &Deployment,
    request: &Incoming<'_>,
    body: &mut B,
) -> Result<Answer, Refusal> {
    let now = request.now;
    match routes::plan(request.parts, settings, now)? {
        Plan::Answer(answer) => Ok(answer),
        Plan::Health => {
            let stored = stored_profiles(host, settings, now, request.request_id).await;
            Ok(routes::health(settings, request.edge, stored.as_deref()))
        }
        Plan::Admin(query) => {
            request.authenticated.set(true);
            let json = host.admin(request.edge, query).await?;
            Ok(answer::json(200, json))
        }
        Plan::Readings(ingest) => {
            let (config, profiles) = settings.ready()?;
            let state = host.state();
            // A sender out of failed credentials is refused before it can buy anything.
            let sender = request
                .client
                .filter(|_| config.auth.mode() != AuthMode::Off);
            if let Some(sender) = sender {
                let budget = state.senders.borrow_mut().check(sender, now);
                budget.map_err(Problem::too_many_failures)?;
            }
            let mut fetched = Vec::new();
            let mut held = false;
            let ready = Ready {
                settings,
                policy: config,
                profiles,
            };
            let outcome =
                readings(host, &ready, request, body, ingest, &mut fetched, &mut held).await;
            let unauthenticated = matches!(
                &outcome,
                Err(refusal) if refusal.problem.kind() == ProblemType::Unauthorized
            );
            if unauthenticated {
                if let Some(sender) = sender {
                    state.senders.borrow_mut().charge(sender, now);
                }
            } else if held {
                request.authenticated.set(true);
                // Records read for credentials that held are kept; made-up ids behind junk
                // credentials never push real devices out of the cache.
                let mut cache = state.registry.borrow_mut();
                for f in fetched {
                    cache.remember(f);
                }
            }
            outcome
        }
    }
}

/// Readings: the registry record of the device the request claims and every credential check
/// that needs no body, then the body, then validation, enrichment and the host's acceptance.
/// What the registry was read for goes to `fetched`, and `held` says whether the credentials
/// held, for the caller to cache it.
async fn readings<H: Host, B: BodyStream>(
    host: &H,
    ready: &Ready<'_>,
    request: &Incoming<'_>,
    body: &mut B,
    mut ingest: Ingest<'_>,
    fetched: &mut Vec<Fetched>,
    held: &mut bool,
) -> Result<Answer, Refusal> {
    let Ready {
        settings,
        policy: config,
        profiles,
    } = *ready;
    let (now, request_id) = (request.now, request.request_id);
    let mut registration = match ingest.claimed_device() {
        Some(device) => {
            registered(host, &config.registry, device, now, request_id, fetched).await?
        }
        None => Registration::Off,
    };
    ingest.check_before_body(config, &registration)?;
    if let Some(check) = ingest.signature_check(&registration, now) {
        let valid = verified(host, &check, now).await;
        ingest.signature_checked(check.holds(valid))?;
    }
    let bytes = if ingest.reads_body() {
        read_body(body, ingest.limit).await?
    } else {
        Vec::new()
    };
    // Named only in the body: found by the pre-scan, and only when there is a registry.
    if registration == Registration::Off && config.registry.mode != RegistryMode::Off {
        if let Some(device) = ingest.device_in_body(&bytes) {
            registration = registered(host, &config.registry, &device, now, request_id, fetched)
                .await
                .map_err(read_already)?;
        }
    }
    let stored = stored_profiles(host, settings, now, request_id).await;
    let ctx = RequestContext {
        settings,
        policy: config,
        profiles,
        stored_profiles: stored.as_deref(),
        edge: request.edge,
        now_ms: now,
        request_id,
        entropy: host.entropy(),
        registration: &registration,
    };
    let authenticated =
        routes::authenticate(request.parts, ingest, &bytes, &ctx).map_err(read_already)?;
    *held = true;
    let accepted =
        routes::ingest(request.parts, authenticated, &bytes, &ctx).map_err(read_already)?;
    let verdict = host.accept(request.edge, &accepted).await;
    if let Err(problem) = problem::of_verdict(&verdict, config.rate_limit.as_ref()) {
        let cause = verdict.as_ref().err().and_then(|r| r.cause());
        let (level, mut fields) = match cause {
            Some(cause) => (Level::Error, vec![("cause", cause)]),
            None => (Level::Warn, Vec::new()),
        };
        fields.push(("detail", problem.detail()));
        log_request(host, level, "ingest_refused", request_id, &fields);
        return Err(read_already(problem));
    }
    Ok(accepted.answer())
}

/// The host's verification of a JWT's signature, remembered per isolate or instance (a check
/// that verified once always does; a decoy's never is).
async fn verified<H: Host>(
    host: &H,
    check: &crate::http::auth::SignatureCheck<'_>,
    now: u64,
) -> bool {
    let signatures = &host.state().signatures;
    let digest = VerifiedSignatures::digest(&check.check);
    if !check.is_decoy() && signatures.borrow_mut().contains(&digest, now / 1000) {
        return true;
    }
    let valid = host.verify_es256(&check.check).await;
    if valid && !check.is_decoy() {
        signatures.borrow_mut().insert(digest, check.expires_s);
    }
    valid
}

/// What the registry says of `device`: its static records, else the host's store through the
/// per-instance cache (what a read fetched goes to `fetched`). A record that cannot be read or
/// parsed, with nothing cached, refuses the request (503) in either mode, and is logged.
async fn registered<H: Host>(
    host: &H,
    policy: &RegistryPolicy,
    device: &DeviceId,
    now: u64,
    request_id: &str,
    fetched: &mut Vec<Fetched>,
) -> Result<Registration, Problem> {
    if policy.mode == RegistryMode::Off {
        return Ok(Registration::Off);
    }
    if let Some(fixed) = &policy.fixed {
        return Ok(fixed.registration(device));
    }
    let report = |detail: &str| {
        log_request(
            host,
            Level::Warn,
            "registry_record_kept",
            request_id,
            &[("detail", detail)],
        )
    };
    let read = || host.read_device_record(device);
    let cache = &host.state().registry;
    match registry::lookup(cache, device, policy.ttl_ms, now, read, report).await {
        Ok(looked) => {
            fetched.extend(looked.fetched);
            Ok(looked.registration)
        }
        Err(e) => {
            let detail = e.to_string();
            log_request(
                host,
                Level::Error,
                "registry_unavailable",
                request_id,
                &[("device_id", device.as_str()), ("detail", &detail)],
            );
            Err(Problem::new(
                ProblemType::RegistryUnavailable,
                "the device registry could not be read; retry shortly",
            )
            .with_retry_after(1))
        }
    }
}

/// The host's stored profiles, read again at most every `PROFILES_TTL_S`; a refresh that kept
/// the previous set (a bad document, a failed read) is logged.
async fn stored_profiles<H: Host>(
    host: &H,
    settings: &Deployment,
    now: u64,
    request_id: &str,
) -> Option<Rc<Profiles>> {
    let kept = |error: &str| {
        log_request(
            host,
            Level::Warn,
            "profiles_not_updated",
            request_id,
            &[("detail", error)],
        )
    };
    let ttl = settings.profiles_ttl_ms;
    profile_cache::refreshed(
        &host.state().profiles,
        ttl,
        now,
        || host.read_stored_profiles(),
        kept,
    )
    .await
}

/// The body, at most `limit` bytes of it. Past the limit it is refused (and drained as the
/// host needs); a stream that breaks is the client's request failing, a 400.
async fn read_body<B: BodyStream>(body: &mut B, limit: usize) -> Result<Vec<u8>, Refusal> {
    let mut bytes = Vec::new();
    while let Some(chunk) = body.next_chunk().await {
        let chunk = chunk.map_err(|_| {
            read_already(Problem::new(
                ProblemType::InvalidRequest,
                "the request body could not be read",
            ))
        })?;
        let chunk = chunk.as_ref();
        if bytes.len() + chunk.len() > limit {
            return Err(Problem::payload_too_large(limit).into());
        }
        bytes.extend_from_slice(chunk);
    }
    Ok(bytes)
}

fn declares_body(parts: &Parts) -> bool {
    parts.headers.contains_key(TRANSFER_ENCODING)
        || routes::header(parts, CONTENT_LENGTH).is_some_and(|v| v.trim() != "0")
}

/// Reads and drops what is left of the body, up to the host's drain limit and `DRAIN_WAIT_MS`.
async fn drain<H: Host, B: BodyStream>(host: &H, body: &mut B) {
    let limit = host.drain_limit();
    if limit == 0 {
        return;
    }
    let read = async {
        let mut seen = 0;
        while seen <= limit {
            match body.next_chunk().await {
                Some(Ok(chunk)) => seen += chunk.as_ref().len(),
                _ => break,
            }
        }
    };
    let read = std::pin::pin!(read);
    let wait = std::pin::pin!(host.sleep_ms(DRAIN_WAIT_MS));
    futures_util::future::select(read, wait).await;
}

/// The headers every answer carries: CORS (a preflight carries its own), the request id, no
/// caching, and the handler's time as the host's clock saw it.
fn finish(
    mut answer: Answer,
    settings: &Deployment,
    parts: &Parts,
    request_id: &str,
    handler_ms: f64,
) -> Answer {
    if !answer.headers().contains_key(VARY) {
        for (name, value) in settings.cors_headers(routes::header(parts, ORIGIN)) {
            answer::add_header(&mut answer, name, &value);
        }
    }
    answer::add_header(&mut answer, "x-request-id", request_id);
    answer
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    answer::add_header(&mut answer, "server-timing", &server_timing(handler_ms));
    answer
}

/// `handler;dur=<ms, one decimal>`, formatted without `f64`'s `Display` (whose tables are some
/// 14 KB of the Worker).
fn server_timing(handler_ms: f64) -> String {
    let tenths = (handler_ms.max(0.0) * 10.0).round() as u64;
    format!("handler;dur={}.{}", tenths / 10, tenths % 10)
}

#[cfg(test)]
mod tests;

//! Fermyon Spin and portable wasi:http adapter (`target_os = "wasi"`, a WASI P3 component).
//!
//! Two flavours from one source, chosen by the `spin` cargo feature:
//! - **spin** (`spin.toml`): configuration from Spin variables (secrets as secret variables),
//!   the outbox and rate limits in Spin's SQLite database `default`, shared by every instance,
//!   profiles in the key-value store `default`;
//! - **portable** (default): configuration from environment variables, memory only; runs on any
//!   wasi:http P3 host, `wasmtime serve` included.
//!
//! The handler converts: the incoming request (already an `http::Request`) gets a body stream
//! the pipeline can read, and the pipeline's answer becomes the outgoing response. Everything in
//! between is the core's request pipeline, with this file's [`Component`] as its host; the
//! outbox's driver is in `delivery`.

#[cfg(feature = "spin")]
mod database;
mod delivery;
#[cfg(feature = "spin")]
mod kv;
#[cfg(feature = "spin")]
mod kv_gate;

use std::cell::OnceCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use spin_sdk::http::body::IncomingBodyExt;
use spin_sdk::http::{FullBody, Request};

use crate::application::admission::{Refused, Verdict};
use crate::config::{Config, Settings, KEYS};
use crate::domain::enrich::EdgeInfo;
use crate::http::answer::Answer;
use crate::http::deployment::{ApiDocument, Deployment, HostConventions};
use crate::http::instance_state::InstanceState;
use crate::http::pipeline::{self, Host};
use crate::http::problem::Problem;
use crate::http::routes::{Accepted, AdminQuery};
use crate::log;
use crate::ports::{BodyBroken, BodyStream, EdgeFacts, Level, Log, StoreError, SystemEntropy};

#[cfg(feature = "spin")]
pub const PLATFORM: &str = "spin";
#[cfg(not(feature = "spin"))]
pub const PLATFORM: &str = "wasi-http";

/// A refused body is read (and dropped) up to this size before the answer: wasmtime and Spin
/// close a connection whose body is unread, and a client still sending would see a reset, not
/// its 413 (see `http::pipeline`).
const DRAIN_LIMIT: usize = 4 * 1024 * 1024;

/// The settings and what the pipeline needs of them, parsed once per instance.
struct Loaded {
    settings: Settings,
    deployment: Rc<Deployment>,
}

thread_local! {
    // An instance never outlives its deployment's configuration.
    static LOADED: OnceCell<Rc<Loaded>> = const { OnceCell::new() };
}

impl Loaded {
    /// The configuration, or a 500: the pipeline answers a misconfigured deployment before it
    /// calls the host, so this is never the device's fault.
    fn config(&self) -> Result<&Config, Problem> {
        self.settings
            .config
            .as_ref()
            .map_err(|_| Problem::internal())
    }
}

#[cfg(feature = "spin")]
const SETTINGS_HELP: &str = "set Spin variables (`spin up --variable auth_secret=...`, SPIN_VARIABLE_AUTH_SECRET, or the deployment's variables provider)";
#[cfg(not(feature = "spin"))]
const SETTINGS_HELP: &str =
    "set environment variables (`wasmtime serve --env AUTH_SECRET=...`, or the host's own)";
const CONVENTIONS: HostConventions = HostConventions::serving(
    ApiDocument::Served(crate::http::routes::OPENAPI),
    SETTINGS_HELP,
);

async fn loaded() -> Rc<Loaded> {
    if let Some(l) = LOADED.with(|c| c.get().cloned()) {
        return l;
    }
    let settings = Settings::load(&load_config().await);
    let made = Rc::new(Loaded {
        deployment: Rc::new(settings.deployment(CONVENTIONS)),
        settings,
    });
    LOADED.with(|c| c.get_or_init(|| made).clone())
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The one way this host waits: a `wasi:clocks` sleep.
pub(crate) struct SpinTimer;

impl crate::ports::Timer for SpinTimer {
    async fn sleep_ms(&self, ms: u64) {
        spin_sdk::time::sleep(Duration::from_millis(ms)).await;
    }
}

pub(crate) fn emit(level: &str, event: &str, fields: &[(&str, &str)]) {
    // stdout is what both wasmtime serve and Spin capture per component.
    println!("{}", log::line(level, event, fields));
}

/// Spin variables are lower-case (`collector_url`); the environment uses the upper-case names.
#[cfg(feature = "spin")]
async fn load_config() -> HashMap<String, String> {
    let mut vars = HashMap::new();
    for key in KEYS.iter().filter(|k| !k.workers_only) {
        if let Ok(value) = spin_sdk::variables::get(key.name.to_ascii_lowercase()).await {
            vars.insert(key.name.to_owned(), value);
        }
    }
    vars
}

#[cfg(not(feature = "spin"))]
async fn load_config() -> HashMap<String, String> {
    KEYS.iter()
        .filter_map(|k| std::env::var(k.name).ok().map(|v| (k.name.to_owned(), v)))
        .collect()
}

#[spin_sdk::http_service]
async fn handle(req: Request) -> http::Response<FullBody<Bytes>> {
    let (parts, body) = req.into_parts();
    let facts = EdgeFacts {
        client: client_address(&parts.headers),
        // wasi:http carries no other edge metadata: the node comes from EDGE_NODE.
        ..EdgeFacts::default()
    };
    let request = http::Request::from_parts(parts, ComponentBody(body.stream()));
    let answer = pipeline::handle(&Component::new(), request, facts).await;
    framed_by_length(answer).map(|body| FullBody::new(Bytes::from(body)))
}

/// The sender's address as Spin gives it (`spin-client-addr`, `IP:port`; Spin appends its own
/// after any a client sent, so the last one is Spin's). wasmtime serve gives none.
fn client_address(headers: &http::HeaderMap) -> Option<String> {
    let addr = headers.get_all("spin-client-addr").iter().next_back()?;
    let addr: std::net::SocketAddr = addr.to_str().ok()?.parse().ok()?;
    Some(addr.ip().to_string())
}

/// The answer with a `Content-Length` (none on a 204 or 304, which have no body to frame).
/// Without one the host sends the answer chunked, and Spin's HTTP server does not set
/// `TCP_NODELAY`: the last chunk, alone in its own small write, waits for the client's delayed
/// ACK, about 40 ms on every keep-alive connection. An answer framed by its length leaves at once.
fn framed_by_length(mut answer: Answer) -> Answer {
    let status = answer.status().as_u16();
    if status != 204 && status != 304 {
        let length = http::HeaderValue::from(answer.body().len());
        answer
            .headers_mut()
            .insert(http::header::CONTENT_LENGTH, length);
    }
    answer
}

struct ComponentBody<S>(S);

impl<S, E> BodyStream for ComponentBody<S>
where
    S: futures_util::Stream<Item = Result<Bytes, E>> + Unpin,
{
    type Chunk = Bytes;

    async fn next_chunk(&mut self) -> Option<Result<Bytes, BodyBroken>> {
        self.0.next().await.map(|c| c.map_err(|_| BodyBroken))
    }
}

/// The pipeline's host on Spin / wasi:http.
struct Component {
    state: Rc<InstanceState>,
}

thread_local! {
    // The instance's own state: the handler is a free function, so what an instance keeps
    // between requests can only live here.
    static STATE: OnceCell<Rc<InstanceState>> = const { OnceCell::new() };
}

impl Component {
    fn new() -> Self {
        let state = STATE.with(|cell| {
            cell.get_or_init(|| Rc::new(InstanceState::new(&SystemEntropy)))
                .clone()
        });
        Self { state }
    }
}

/// A value of the key-value store `default` as text, on the request's path. The portable
/// flavour has no store: nothing there.
async fn read_text(key: &str) -> Result<Option<String>, StoreError> {
    #[cfg(feature = "spin")]
    {
        use crate::ports::KeyValue;

        let store = kv::open(kv::Path::Request).await?;
        let value = store.get(key).await?;
        Ok(value.map(|bytes| String::from_utf8_lossy(&bytes).into_owned()))
    }
    #[cfg(not(feature = "spin"))]
    {
        let _ = key;
        Ok(None)
    }
}

impl crate::ports::Clock for Component {
    fn now_ms(&self) -> u64 {
        now_ms()
    }
}

impl crate::ports::Timer for Component {
    async fn sleep_ms(&self, ms: u64) {
        SpinTimer.sleep_ms(ms).await;
    }
}

/// Log lines go to stdout, which both wasmtime serve and Spin capture per component.
pub(crate) struct StdoutLog;

impl Log for StdoutLog {
    fn emit(&self, level: Level, event: &str, fields: &[(&str, &str)]) {
        emit(level.as_str(), event, fields);
    }
}

impl Log for Component {
    fn emit(&self, level: Level, event: &str, fields: &[(&str, &str)]) {
        StdoutLog.emit(level, event, fields);
    }
}

impl Host for Component {
    fn platform(&self) -> &'static str {
        PLATFORM
    }

    fn state(&self) -> &InstanceState {
        &self.state
    }

    fn drain_limit(&self) -> usize {
        DRAIN_LIMIT
    }

    async fn deployment(&self) -> Rc<Deployment> {
        loaded().await.deployment.clone()
    }

    fn timer_ms(&self) -> f64 {
        thread_local! {
            static START: std::time::Instant = std::time::Instant::now();
        }
        START.with(|s| s.elapsed().as_secs_f64() * 1000.0)
    }

    /// Spin flavour: the key-value store `default`, key `calibration` (an instance that lives
    /// past `PROFILES_TTL_S` reads it again; a fresh one reads once). Portable flavour: no store;
    /// the deployment's profiles apply.
    async fn read_stored_profiles(&self) -> Result<Option<String>, StoreError> {
        read_text(crate::application::profile_cache::PROFILES_KEY).await
    }

    /// Spin flavour: the key-value store `default`, key `device/<id>`. Portable flavour: no
    /// store (its registry is the `REGISTRY` variable).
    async fn read_device_record(
        &self,
        device: &crate::domain::reading::DeviceId,
    ) -> Result<Option<String>, StoreError> {
        read_text(&crate::application::registry::record_key(device)).await
    }

    async fn accept(&self, edge: &EdgeInfo, accepted: &Accepted) -> Verdict {
        let loaded = loaded().await;
        let Ok(config) = loaded.settings.config.as_ref() else {
            return Err(Refused::Fault("the configuration is invalid".into()));
        };
        let section = accepted.section();
        delivery::accept(config, &edge.node, &section, accepted.received_at_ms).await
    }

    async fn admin(&self, _edge: &EdgeInfo, query: AdminQuery) -> Result<String, Problem> {
        let loaded = loaded().await;
        let config = loaded.config()?;
        match query {
            AdminQuery::Stats => {
                let mut stats = delivery::stats(config).await;
                stats["instance_state"] =
                    serde_json::to_value(self.state.sizes()).unwrap_or_default();
                Ok(stats.to_string())
            }
            AdminQuery::DeadLetters => Ok(delivery::dead_letters(config).await),
            AdminQuery::Deliver => Ok(delivery::deliver_now(config).await),
        }
    }

    async fn after(&self) {
        let loaded = loaded().await;
        if let Ok(config) = loaded.settings.config.as_ref() {
            delivery::nudge(config).await;
        }
    }
}

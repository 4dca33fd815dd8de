//! Cloudflare Workers adapter (`wasm32-unknown-unknown` only).
//!
//! The fetch handler converts: the platform's request into an `http::Request` whose body streams
//! from the platform's, the `cf` object into edge facts, the pipeline's `http::Response` back.
//! Everything in between is the core's request pipeline (`crate::http::pipeline`), with this
//! file's [`Worker`] as its host: settings from `[vars]` and secrets, profiles from the
//! `PROFILES` KV namespace, accepted readings handed to a [`Batcher`] Durable Object
//! (`batcher_client`), which keeps them durably (`sql_store`) and delivers them (`batcher`).

mod batcher;
mod batcher_client;
mod group_commit;
mod log;
mod sql_store;
mod webcrypto;
mod wire;

use std::cell::OnceCell;
use std::rc::Rc;
use std::time::Duration;

use futures_util::StreamExt;
use http::{HeaderName, HeaderValue};
use wasm_bindgen::JsValue;
use worker::{event, ByteStream, Context, Env, Headers, Request, Response};

pub use batcher::Batcher;

use crate::application::admission::Verdict;
use crate::application::profile_cache::PROFILES_KEY;
use crate::config::Settings;
use crate::domain::enrich::EdgeInfo;
use crate::http::answer::Answer;
use crate::http::deployment::{ApiDocument, Deployment, HostConventions};
use crate::http::instance_state::InstanceState;
use crate::http::pipeline::{self, Host};
use crate::http::problem::Problem;
use crate::http::routes::{Accepted, AdminQuery};
use crate::ports::{
    BodyBroken, BodyStream, ConfigSource, EdgeFacts, Level, StoreError, SystemEntropy,
};

pub const PLATFORM: &str = "cloudflare-workers";
/// Optional KV namespace holding calibration profiles under `profile_cache::PROFILES_KEY`.
const PROFILES_BINDING: &str = "PROFILES";
/// Optional KV namespace holding the device registry (`device/<id>`).
const DEVICES_BINDING: &str = "DEVICES";
/// Workers KV caches a read at the edge for at least this long (its minimum `cacheTtl`).
const KV_CACHE_TTL_S: u64 = 30;

thread_local! {
    // The isolate's own state: `#[event(fetch)]` is a free function, so what an isolate keeps
    // between requests can only live here. Vars and secrets are fixed for an isolate's life:
    // parsed once.
    static SETTINGS: OnceCell<Rc<Settings>> = const { OnceCell::new() };
    static DEPLOYMENT: OnceCell<Rc<Deployment>> = const { OnceCell::new() };
    static STATE: OnceCell<Rc<InstanceState>> = const { OnceCell::new() };
}

/// What this isolate keeps between requests (caches, failure budgets), made on first use.
fn isolate_state() -> Rc<InstanceState> {
    STATE.with(|cell| {
        cell.get_or_init(|| Rc::new(InstanceState::new(&SystemEntropy)))
            .clone()
    })
}

pub(crate) fn settings(env: &Env) -> Rc<Settings> {
    SETTINGS.with(|cell| {
        cell.get_or_init(|| Rc::new(Settings::load(&EnvConfig(env))))
            .clone()
    })
}

/// Workers serves the API document as a static asset; settings are wrangler vars and secrets.
const CONVENTIONS: HostConventions = HostConventions::serving(
    ApiDocument::StaticAsset,
    "set vars in wrangler.toml and secrets with `npx wrangler secret put NAME` (under `wrangler dev`: a .dev.vars file, see .dev.vars.example)",
);

/// What the pipeline needs of the settings, built once per isolate.
fn deployment(env: &Env) -> Rc<Deployment> {
    DEPLOYMENT.with(|cell| {
        cell.get_or_init(|| Rc::new(settings(env).deployment(CONVENTIONS)))
            .clone()
    })
}

/// wrangler `[vars]` and secrets. A var given as a TOML table/array (e.g. the calibration
/// profiles) arrives as a JS object and is read back as JSON text.
struct EnvConfig<'a>(&'a Env);

impl ConfigSource for EnvConfig<'_> {
    fn get(&self, key: &str) -> Option<String> {
        let value = js_sys::Reflect::get(self.0, &JsValue::from_str(key)).ok()?;
        if value.is_undefined() || value.is_null() {
            return None;
        }
        if let Some(s) = value.as_string() {
            return Some(s);
        }
        js_sys::JSON::stringify(&value).ok()?.as_string()
    }
}

pub(crate) fn now_ms() -> u64 {
    js_sys::Date::now() as u64
}

/// The one way this host waits: a Workers `Delay` (a timer of the request or alarm it runs in).
pub(crate) struct WorkersTimer;

impl crate::ports::Timer for WorkersTimer {
    async fn sleep_ms(&self, ms: u64) {
        worker::Delay::from(Duration::from_millis(ms)).await;
    }
}

#[event(start)]
fn start() {
    console_error_panic_hook::set_once();
}

#[event(fetch)]
async fn fetch(req: Request, env: Env, _ctx: Context) -> worker::Result<Response> {
    let host = Worker {
        env: &env,
        state: isolate_state(),
    };
    let facts = edge_facts(&req);
    let answer = match to_http(req) {
        Ok(request) => pipeline::handle(&host, request, facts).await,
        Err(detail) => pipeline::unreadable(&host, &detail).await,
    };
    to_worker_response(answer)
}

/// The platform's request as an `http::Request`; the body is read only when the pipeline asks.
fn to_http(req: Request) -> Result<http::Request<WorkerBody>, String> {
    let mut builder = http::Request::builder()
        .method(req.method().as_ref())
        .uri(target(&req.inner().url()));
    if let Some(headers) = builder.headers_mut() {
        for (name, value) in req.headers().entries() {
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_bytes(value.as_bytes()),
            ) {
                headers.append(name, value);
            }
        }
    }
    builder
        .body(WorkerBody::Unread(req))
        .map_err(|e| e.to_string())
}

/// The path and query of the runtime's URL (already parsed and serialized by it), without
/// parsing it again with the `url` crate (some 17 KB of the Worker).
pub(crate) fn target(url: &str) -> &str {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    url[after_scheme..]
        .find('/')
        .map_or("/", |i| &url[after_scheme + i..])
}

/// The request body, opened as a stream on the first read.
enum WorkerBody {
    Unread(Request),
    Reading(ByteStream),
    Done,
}

impl BodyStream for WorkerBody {
    type Chunk = Vec<u8>;

    async fn next_chunk(&mut self) -> Option<Result<Vec<u8>, BodyBroken>> {
        if let Self::Unread(req) = self {
            *self = match req.stream() {
                Ok(stream) => Self::Reading(stream),
                Err(_) => Self::Done, // no body at all
            };
        }
        let Self::Reading(stream) = self else {
            return None;
        };
        stream
            .next()
            .await
            .map(|chunk| chunk.map_err(|_| BodyBroken))
    }
}

/// Node tags from the request's `cf` object, which is absent or a placeholder locally. Read
/// through `Reflect` rather than `worker::Cf`, whose getters unwrap a missing field.
fn edge_facts(req: &Request) -> EdgeFacts {
    let cf = js_sys::Reflect::get(req.inner(), &JsValue::from_str("cf"))
        .ok()
        .filter(|v| v.is_object());
    let field = |name: &str| {
        cf.as_ref()
            .and_then(|o| js_sys::Reflect::get(o, &JsValue::from_str(name)).ok())
            .and_then(|v| v.as_string())
            .filter(|s| !s.is_empty())
    };
    // Cloudflare sets it from the connection, replacing any a client sent.
    let client = req.headers().get("cf-connecting-ip").ok().flatten();
    EdgeFacts {
        colo: field("colo"),
        country: field("country"),
        region: field("region"),
        client,
    }
}

fn to_worker_response(answer: Answer) -> worker::Result<Response> {
    let (parts, body) = answer.into_parts();
    let headers = Headers::new();
    for (name, value) in &parts.headers {
        if let Ok(value) = value.to_str() {
            headers.append(name.as_str(), value)?;
        }
    }
    Ok(Response::ok(body)?
        .with_status(parts.status.as_u16())
        .with_headers(headers))
}

/// The pipeline's host on Workers.
struct Worker<'a> {
    env: &'a Env,
    state: Rc<InstanceState>,
}

impl Worker<'_> {
    /// `key` of the KV namespace `binding`, behind KV's edge cache; nothing without the binding.
    async fn read_kv_text(&self, binding: &str, key: &str) -> Result<Option<String>, StoreError> {
        let Ok(kv) = self.env.kv(binding) else {
            return Ok(None);
        };
        kv.get(key)
            .cache_ttl(KV_CACHE_TTL_S)
            .text()
            .await
            .map_err(|e| StoreError(e.to_string()))
    }
}

impl crate::ports::Clock for Worker<'_> {
    fn now_ms(&self) -> u64 {
        now_ms()
    }
}

impl crate::ports::Timer for Worker<'_> {
    async fn sleep_ms(&self, ms: u64) {
        WorkersTimer.sleep_ms(ms).await;
    }
}

impl Host for Worker<'_> {
    fn platform(&self) -> &'static str {
        PLATFORM
    }

    fn state(&self) -> &InstanceState {
        &self.state
    }

    /// None: the runtime delivers an early answer to a client that is still sending.
    fn drain_limit(&self) -> usize {
        0
    }

    async fn deployment(&self) -> Rc<Deployment> {
        deployment(self.env)
    }

    fn timer_ms(&self) -> f64 {
        js_sys::Date::now()
    }

    /// The `PROFILES` KV namespace (behind KV's own edge cache, so with the pipeline's TTL a
    /// `wrangler kv key put` shows within about a minute). Without the binding, or without the
    /// key, the deployment's own profiles apply.
    async fn read_stored_profiles(&self) -> Result<Option<String>, StoreError> {
        self.read_kv_text(PROFILES_BINDING, PROFILES_KEY).await
    }

    /// WebCrypto; a key it refuses (not on the curve) does not verify.
    async fn verify_es256(&self, check: &crate::ports::Es256Check<'_>) -> bool {
        match webcrypto::verify_es256(check).await {
            Ok(valid) => valid,
            Err(e) => {
                log::at(
                    Level::Warn,
                    "jwt_key_refused",
                    &[("error", &format!("{e:?}"))],
                );
                false
            }
        }
    }

    /// The `DEVICES` KV namespace, key `device/<id>`, behind KV's edge cache (so a change shows
    /// within `REGISTRY_TTL_S` + about a minute). Without the binding: no record.
    async fn read_device_record(
        &self,
        device: &crate::domain::reading::DeviceId,
    ) -> Result<Option<String>, StoreError> {
        let key = crate::application::registry::record_key(device);
        self.read_kv_text(DEVICES_BINDING, &key).await
    }

    /// Waits only for the batcher's durable acceptance (rate limits included), never for the
    /// collector.
    async fn accept(&self, edge: &EdgeInfo, accepted: &Accepted) -> Verdict {
        batcher_client::hand_to_batcher(self.env, &settings(self.env), edge, accepted).await
    }

    async fn admin(&self, edge: &EdgeInfo, query: AdminQuery) -> Result<String, Problem> {
        let sizes = self.state.sizes();
        batcher_client::admin(self.env, &settings(self.env), edge, query, sizes)
            .await
            .map_err(|e| {
                log::error("admin_failed", &[("error", &e.to_string())]);
                Problem::internal()
            })
    }
}

impl crate::ports::Log for Worker<'_> {
    fn emit(&self, level: Level, event: &str, fields: &[(&str, &str)]) {
        log::at(level, event, fields);
    }
}

//! Cloudflare Workers adapter (`wasm32-unknown-unknown` only).
//!
//! The fetch handler is thin: it turns the platform request into [`crate::http::routes::HttpRequest`],
//! lets the core decide, and hands accepted readings to a [`Batcher`] Durable Object, which
//! stores them durably before the device gets its 200 and delivers them to the collector.

mod batcher;
mod group_commit;
mod log;
mod sql_store;
mod wire;

use std::cell::{OnceCell, RefCell};
use std::rc::Rc;

use futures_util::StreamExt;
use wasm_bindgen::prelude::wasm_bindgen;
use wasm_bindgen::JsValue;
use worker::{event, Context, Env, Headers, Method, Request, RequestInit, Response};

pub use batcher::Batcher;

use crate::config::Settings;
use crate::domain::calibration::Profiles;
use crate::domain::enrich::EdgeInfo;
use crate::domain::ids;
use crate::domain::profile_cache::{self, CacheSlot, PROFILES_KEY};
use crate::http::body::LimitedBody;
use crate::http::problem::{Problem, ProblemType};
use crate::http::routes::{
    self, Accepted, Action, AdminQuery, HttpRequest, HttpResponse, RequestContext,
};
use crate::ports::ConfigSource;

pub const PLATFORM: &str = "cloudflare-workers";
const BATCHER_BINDING: &str = "BATCHER";
/// Optional KV namespace holding calibration profiles under `profile_cache::PROFILES_KEY`.
const PROFILES_BINDING: &str = "PROFILES";
/// Workers KV caches a read at the edge for at least this long (its minimum `cacheTtl`).
const KV_CACHE_TTL_S: u64 = 30;

thread_local! {
    // Vars and secrets are fixed for an isolate's life: parse them once.
    static SETTINGS: OnceCell<Rc<Settings>> = const { OnceCell::new() };
    static PROFILE_CACHE: CacheSlot = const { RefCell::new(None) };
}

pub(crate) fn settings(env: &Env) -> Rc<Settings> {
    SETTINGS.with(|cell| {
        cell.get_or_init(|| Rc::new(Settings::load(&EnvConfig(env))))
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

#[event(start)]
fn start() {
    console_error_panic_hook::set_once();
}

#[event(fetch)]
async fn fetch(req: Request, env: Env, _ctx: Context) -> worker::Result<Response> {
    let started = js_sys::Date::now();
    let request_id = ids::new_id(started as u64).unwrap_or_else(|_| String::from("no-entropy"));
    let settings = settings(&env);
    let headers = HeaderView::read(req.headers());
    let cors = settings.cors_headers(headers.origin.as_deref());
    let answer = match serve(req, &headers, &env, &settings, started as u64, &request_id).await {
        Ok(answer) => answer,
        Err(e) => {
            log::error("request_failed", &request_id, &[("error", &e.to_string())]);
            HttpResponse::problem(&Problem::internal(), &request_id)
        }
    };
    to_worker_response(answer.finish(&request_id, js_sys::Date::now() - started, cors))
}

/// The request headers the core looks at, and the size of all of them.
struct HeaderView {
    content_type: Option<String>,
    authorization: Option<String>,
    origin: Option<String>,
    preflight_method: Option<String>,
    preflight_headers: Option<String>,
    total_bytes: usize,
}

impl HeaderView {
    /// One pass over the headers (one crossing into JS per header rather than per lookup).
    fn read(headers: &Headers) -> Self {
        let mut view = Self {
            content_type: None,
            authorization: None,
            origin: None,
            preflight_method: None,
            preflight_headers: None,
            total_bytes: 0,
        };
        for (name, value) in headers.entries() {
            view.total_bytes += name.len() + value.len() + 4;
            let slot = match name.as_str() {
                "content-type" => &mut view.content_type,
                "authorization" => &mut view.authorization,
                "origin" => &mut view.origin,
                "access-control-request-method" => &mut view.preflight_method,
                "access-control-request-headers" => &mut view.preflight_headers,
                _ => continue,
            };
            *slot = Some(value);
        }
        view
    }
}

async fn serve(
    mut req: Request,
    headers: &HeaderView,
    env: &Env,
    settings: &Settings,
    now_ms: u64,
    request_id: &str,
) -> worker::Result<HttpResponse> {
    let url = req.url()?;
    let method = req.method();
    let edge = edge_info(&req, settings);
    let path = url.path();
    let stored = if path == routes::READINGS_PATH || path == routes::HEALTH_PATH {
        stored_profiles(env, settings, now_ms, request_id).await
    } else {
        None
    };
    let body = if method == Method::Post && url.path() == routes::READINGS_PATH {
        match read_body(&mut req, settings.max_body_bytes()).await? {
            Ok(body) => body,
            Err(problem) => return Ok(HttpResponse::problem(&problem, request_id)),
        }
    } else {
        Vec::new()
    };
    let request = HttpRequest {
        method: method.as_ref(),
        path: url.path(),
        query: url.query().unwrap_or(""),
        content_type: headers.content_type.as_deref(),
        authorization: headers.authorization.as_deref(),
        origin: headers.origin.as_deref(),
        preflight_method: headers.preflight_method.as_deref(),
        preflight_headers: headers.preflight_headers.as_deref(),
        header_bytes: headers.total_bytes,
        body: &body,
    };
    let ctx = RequestContext {
        settings,
        stored_profiles: stored.as_deref(),
        edge: &edge,
        now_ms,
        request_id,
    };
    Ok(match routes::handle(&request, &ctx) {
        Action::Respond(answer) => answer,
        Action::Accept(accepted) => match hand_to_batcher(env, settings, &edge, &accepted).await {
            Ok(()) => accepted.response(),
            Err(problem) => {
                log::warn(
                    "ingest_refused",
                    request_id,
                    &[("detail", problem.detail())],
                );
                HttpResponse::problem(&problem, request_id)
            }
        },
        Action::Admin(query) => admin(env, settings, &edge, query).await?,
    })
}

/// Profiles from the `PROFILES` KV namespace, read again at most every `PROFILES_TTL_S` per
/// isolate (plus KV's own edge cache), so `wrangler kv key put` shows within about a minute.
/// Without the binding, or without the key, the deployment's own profiles apply.
async fn stored_profiles(
    env: &Env,
    settings: &Settings,
    now: u64,
    request_id: &str,
) -> Option<Rc<Profiles>> {
    let kv = env.kv(PROFILES_BINDING).ok()?;
    let read = || async move {
        kv.get(PROFILES_KEY)
            .cache_ttl(KV_CACHE_TTL_S)
            .text()
            .await
            .map_err(|e| e.to_string())
    };
    let log_kept =
        |error: &str| log::warn("profiles_not_updated", request_id, &[("detail", error)]);
    profile_cache::refreshed(
        &PROFILE_CACHE,
        settings.profiles_ttl_ms(),
        now,
        read,
        log_kept,
    )
    .await
}

/// Reads the body up to `limit` bytes; a larger one is refused at once, before it is buffered
/// (the Workers runtime still delivers the 413 to a client that is sending).
async fn read_body(req: &mut Request, limit: usize) -> worker::Result<Result<Vec<u8>, Problem>> {
    let declared = req
        .headers()
        .get("content-length")?
        .and_then(|v| v.parse::<usize>().ok());
    let mut body = match LimitedBody::new(limit, limit, declared) {
        Ok(body) => body,
        Err(problem) => return Ok(Err(problem)),
    };
    let mut stream = req.stream()?;
    while let Some(chunk) = stream.next().await {
        if !body.push(&chunk?) {
            break;
        }
    }
    Ok(body.finish())
}

/// Node tags from the request's `cf` object, which is absent or a placeholder locally. Read
/// through `Reflect` rather than `worker::Cf`, whose getters unwrap a missing field.
fn edge_info(req: &Request, settings: &Settings) -> EdgeInfo {
    let cf = js_sys::Reflect::get(req.inner(), &JsValue::from_str("cf"))
        .ok()
        .filter(|v| v.is_object());
    let field = |name: &str| {
        cf.as_ref()
            .and_then(|o| js_sys::Reflect::get(o, &JsValue::from_str(name)).ok())
            .and_then(|v| v.as_string())
            .filter(|s| !s.is_empty())
    };
    EdgeInfo::new(
        settings.edge_node(),
        field("colo"),
        field("country"),
        field("region"),
        PLATFORM,
    )
}

/// How many batchers (Durable Objects) each colo has.
fn shard_count(settings: &Settings) -> u32 {
    settings
        .config
        .as_ref()
        .map(|c| c.batcher_shards)
        .unwrap_or(1)
        .max(1)
}

/// The name of one batcher: its colo and shard number.
fn batcher_name(edge: &EdgeInfo, shard: u32) -> String {
    format!("{}:{shard}", edge.colo.as_deref().unwrap_or("local"))
}

/// The shard that owns a request's readings, chosen by its first device id with FNV-1a: stable
/// across isolates and releases, unlike std's randomly seeded hasher.
fn shard_of(shard_key: &str, shards: u32) -> u32 {
    let hash = shard_key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    (hash % u64::from(shards.max(1))) as u32
}

fn batcher_request(
    path: &str,
    method: Method,
    body: Option<String>,
    headers: Headers,
) -> worker::Result<Request> {
    let mut init = RequestInit::new();
    init.with_method(method)
        .with_headers(headers)
        .with_body(body.map(|b| JsValue::from_str(&b)));
    Request::new_with_init(&format!("https://batcher.internal{path}"), &init)
}

/// Waits only for the batcher's durable acceptance, never for the collector. Concurrent
/// requests in this isolate share one Durable Object call (see `group_commit`).
async fn hand_to_batcher(
    env: &Env,
    settings: &Settings,
    edge: &EdgeInfo,
    accepted: &Accepted,
) -> Result<(), Problem> {
    let name = batcher_name(edge, shard_of(&accepted.shard_key, shard_count(settings)));
    let body = wire::encode_section(accepted);
    let send = |body, sections| call_batcher(env, settings, &name, &edge.node, body, sections);
    group_commit::submit(&name, body, accepted.readings.len(), send).await
}

#[wasm_bindgen]
extern "C" {
    /// A `Batcher` stub seen through Workers RPC (see `batcher::Batcher::accept_rpc`).
    type BatcherRpc;
    #[wasm_bindgen(method, catch)]
    fn accept(this: &BatcherRpc, node: &str, body: &str) -> Result<js_sys::Promise, JsValue>;
}

/// One `accept` call to a batcher with one or more requests' sections; an outcome per section.
async fn call_batcher(
    env: &Env,
    settings: &Settings,
    name: &str,
    node: &str,
    body: String,
    sections: usize,
) -> group_commit::GroupOutcome {
    let unavailable = |error: String| {
        log::error("batcher_unreachable", "", &[("error", &error)]);
        Problem::new(
            ProblemType::UpstreamUnavailable,
            "the batcher could not be reached; nothing was accepted",
        )
        .with_retry_after(1)
    };
    let js_error = |e: JsValue| e.as_string().unwrap_or_else(|| format!("{e:?}"));
    let stub = env
        .durable_object(BATCHER_BINDING)
        .and_then(|ns| ns.get_by_name(name))
        .map_err(|e| unavailable(e.to_string()))?
        .into_rpc::<BatcherRpc>();
    let call = stub
        .accept(node, &body)
        .map_err(|e| unavailable(js_error(e)))?;
    let reply = wasm_bindgen_futures::JsFuture::from(call)
        .await
        .map_err(|e| unavailable(js_error(e)))?
        .as_string()
        .ok_or_else(|| unavailable("the batcher answered something other than text".into()))?;
    match serde_json::from_str(&reply) {
        Ok(wire::AcceptReply::Accepted(answer)) => {
            let mut outcomes = vec![Ok(()); sections];
            let limit = settings.config.as_ref().ok().and_then(|c| c.rate_limit);
            for (index, retry_after_s) in answer.limited {
                if let (Some(slot), Some(limit)) = (outcomes.get_mut(index), limit.as_ref()) {
                    *slot = Err(crate::http::rate_limit::limited(retry_after_s, limit));
                }
            }
            Ok(outcomes)
        }
        Ok(wire::AcceptReply::BacklogFull {
            retry_after_s,
            detail,
        }) => Err(Problem::backlog_full(retry_after_s, detail)),
        Ok(wire::AcceptReply::Refused { detail }) => {
            log::error("batcher_refused", "", &[("detail", &detail)]);
            Err(Problem::internal())
        }
        Err(e) => {
            log::error("batcher_refused", "", &[("detail", &e.to_string())]);
            Err(Problem::internal())
        }
    }
}

/// Admin queries fan out to every shard of this colo's batchers.
async fn admin(
    env: &Env,
    settings: &Settings,
    edge: &EdgeInfo,
    query: AdminQuery,
) -> worker::Result<HttpResponse> {
    let path = match query {
        AdminQuery::Stats => "/stats",
        AdminQuery::DeadLetters => "/dead-letters",
    };
    let ns = env.durable_object(BATCHER_BINDING)?;
    let mut batchers = Vec::new();
    for shard in 0..shard_count(settings) {
        let name = batcher_name(edge, shard);
        let mut answer = ns
            .get_by_name(&name)?
            .fetch_with_request(batcher_request(path, Method::Get, None, Headers::new())?)
            .await?;
        let mut doc: serde_json::Value =
            serde_json::from_str(&answer.text().await?).unwrap_or_default();
        doc["batcher"] = name.into();
        batchers.push(doc);
    }
    Ok(HttpResponse::json(
        200,
        serde_json::json!({ "batchers": batchers }).to_string(),
    ))
}

fn to_worker_response(answer: HttpResponse) -> worker::Result<Response> {
    let headers = Headers::new();
    for (name, value) in &answer.headers {
        headers.set(name, value)?;
    }
    Ok(Response::ok(answer.body)?
        .with_status(answer.status)
        .with_headers(headers))
}

//! Fermyon Spin and portable wasi:http adapter (`target_os = "wasi"`, a WASI P3 component).
//!
//! Two flavours from one source, chosen by the `spin` cargo feature:
//! - **spin** (`spin.toml`): configuration from Spin variables (secrets as secret variables),
//!   each accepted reading also written to the Spin key-value store `default` before the answer.
//! - **portable** (default): configuration from environment variables, memory only; runs on any
//!   wasi:http P3 host, `wasmtime serve` included.
//!
//! An instance may serve one request or many, and may end right after one, so readings batch in
//! the instance's memory and a spawned task flushes them after the answer has been sent.

mod delivery;
#[cfg(feature = "spin")]
mod kv;
mod limiter;

use std::cell::OnceCell;
use std::collections::HashMap;
use std::rc::Rc;

use bytes::Bytes;
use futures_util::StreamExt;
use spin_sdk::http::body::IncomingBodyExt;
use spin_sdk::http::{FullBody, Request};

use crate::config::{Settings, KEYS};
use crate::domain::calibration::Profiles;
use crate::domain::enrich::EdgeInfo;
use crate::domain::ids;
use crate::http::body::LimitedBody;
use crate::http::problem::Problem;
use crate::http::routes::{self, Action, AdminQuery, HttpRequest, HttpResponse, RequestContext};
use crate::log;

#[cfg(feature = "spin")]
pub const PLATFORM: &str = "spin";
#[cfg(not(feature = "spin"))]
pub const PLATFORM: &str = "wasi-http";

thread_local! {
    // Parsed once per instance; an instance never outlives its deployment's configuration.
    static SETTINGS: OnceCell<Rc<Settings>> = const { OnceCell::new() };
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub(crate) fn emit(level: &str, event: &str, request_id: &str, fields: &[(&str, &str)]) {
    // stdout is what both wasmtime serve and Spin capture per component.
    println!("{}", log::line(level, event, request_id, fields));
}

/// Spin variables are lower-case (`collector_url`); the environment uses the upper-case names.
#[cfg(feature = "spin")]
async fn load_config() -> HashMap<String, String> {
    let mut vars = HashMap::new();
    for (key, _) in KEYS {
        if let Ok(value) = spin_sdk::variables::get(key.to_ascii_lowercase()).await {
            vars.insert((*key).to_owned(), value);
        }
    }
    vars
}

#[cfg(not(feature = "spin"))]
async fn load_config() -> HashMap<String, String> {
    KEYS.iter()
        .filter_map(|(key, _)| std::env::var(key).ok().map(|v| ((*key).to_owned(), v)))
        .collect()
}

async fn settings() -> Rc<Settings> {
    if let Some(s) = SETTINGS.with(|c| c.get().cloned()) {
        return s;
    }
    let loaded = Rc::new(Settings::load(&load_config().await));
    SETTINGS.with(|c| c.get_or_init(|| loaded).clone())
}

#[spin_sdk::http_service]
async fn handle(req: Request) -> http::Response<FullBody<Bytes>> {
    let started = std::time::Instant::now();
    let now = now_ms();
    let request_id = ids::new_id(now).unwrap_or_else(|_| String::from("no-entropy"));
    let settings = settings().await;
    let cors = settings.cors_headers(req.headers().get("origin").and_then(|v| v.to_str().ok()));
    let answer = serve(req, &settings, now, &request_id).await;
    if let Ok(config) = settings.config.as_ref() {
        delivery::nudge(config).await;
    }
    let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
    to_response(answer.finish(&request_id, elapsed_ms, cors))
}

async fn serve(req: Request, settings: &Settings, now: u64, request_id: &str) -> HttpResponse {
    let edge = EdgeInfo::new(settings.edge_node(), None, None, None, PLATFORM);
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let content_type = header("content-type");
    let authorization = header("authorization");
    let origin = header("origin");
    let preflight_method = header("access-control-request-method");
    let preflight_headers = header("access-control-request-headers");
    let header_bytes = req
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    let method = req.method().as_str().to_owned();
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    let body = if method == "POST" && path == routes::READINGS_PATH {
        match read_body(req, settings.max_body_bytes()).await {
            Ok(body) => body,
            Err(problem) => return HttpResponse::problem(&problem, request_id),
        }
    } else {
        Vec::new()
    };
    let request = HttpRequest {
        method: &method,
        path: &path,
        query: &query,
        content_type: content_type.as_deref(),
        authorization: authorization.as_deref(),
        origin: origin.as_deref(),
        preflight_method: preflight_method.as_deref(),
        preflight_headers: preflight_headers.as_deref(),
        header_bytes,
        body: &body,
    };
    let stored = stored_profiles(settings, now, request_id).await;
    let ctx = RequestContext {
        settings,
        stored_profiles: stored.as_deref(),
        edge: &edge,
        now_ms: now,
        request_id,
    };
    match routes::handle(&request, &ctx) {
        Action::Respond(answer) => answer,
        Action::Accept(accepted) => {
            let Ok(config) = settings.config.as_ref() else {
                return HttpResponse::problem(&Problem::internal(), request_id);
            };
            let admitted = match limiter::admit(config, &accepted, now).await {
                Ok(()) => delivery::accept(config, &edge.node, &accepted).await,
                Err(limited) => Err(limited),
            };
            match admitted {
                Ok(()) => accepted.response(),
                Err(problem) => {
                    emit(
                        "warn",
                        "ingest_refused",
                        request_id,
                        &[("detail", problem.detail())],
                    );
                    HttpResponse::problem(&problem, request_id)
                }
            }
        }
        Action::Admin(AdminQuery::Stats) => HttpResponse::json(200, delivery::stats().to_string()),
        Action::Admin(AdminQuery::DeadLetters) => match settings.config.as_ref() {
            Ok(config) => HttpResponse::json(200, delivery::dead_letters(config).await),
            Err(_) => HttpResponse::problem(&Problem::internal(), request_id),
        },
    }
}

/// Spin flavour: profiles from the key-value store `default` (key `calibration`), read again at
/// most every `PROFILES_TTL_S` by an instance that lives that long (a fresh instance reads once).
#[cfg(feature = "spin")]
async fn stored_profiles(settings: &Settings, now: u64, request_id: &str) -> Option<Rc<Profiles>> {
    use std::cell::RefCell;

    use crate::domain::profile_cache::{self, CacheSlot, PROFILES_KEY};
    use crate::ports::KeyValue;

    thread_local! {
        static CACHE: CacheSlot = const { RefCell::new(None) };
    }
    let read = || async {
        let store = kv::open(kv::Path::Request).await.map_err(|e| e.0)?;
        let value = store.get(PROFILES_KEY).await.map_err(|e| e.0)?;
        Ok(value.map(|bytes| String::from_utf8_lossy(&bytes).into_owned()))
    };
    let log_kept = |error: &str| {
        emit(
            "warn",
            "profiles_not_updated",
            request_id,
            &[("detail", error)],
        )
    };
    profile_cache::refreshed(&CACHE, settings.profiles_ttl_ms(), now, read, log_kept).await
}

/// Portable flavour: no key-value store; the deployment's profiles apply.
#[cfg(not(feature = "spin"))]
async fn stored_profiles(_: &Settings, _: u64, _: &str) -> Option<Rc<Profiles>> {
    None
}

/// Bodies up to this size are read to the end even when refused: wasmtime closes the
/// connection on an unread body, and the client, still sending, would see a reset, not its 413.
const DRAIN_LIMIT: usize = 4 * 1024 * 1024;

async fn read_body(req: Request, limit: usize) -> Result<Vec<u8>, Problem> {
    let declared = req
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let mut body = LimitedBody::new(limit, DRAIN_LIMIT, declared)?;
    let mut stream = req.into_body().stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|_| {
            Problem::new(
                crate::http::problem::ProblemType::InvalidRequest,
                "the request body could not be read",
            )
        })?;
        if !body.push(&chunk) {
            break;
        }
    }
    body.finish()
}

fn to_response(answer: HttpResponse) -> http::Response<FullBody<Bytes>> {
    let mut builder = http::Response::builder().status(answer.status);
    for (name, value) in &answer.headers {
        builder = builder.header(*name, value.as_str());
    }
    builder
        .body(FullBody::new(Bytes::from(answer.body)))
        .unwrap_or_else(|_| {
            // Only reachable with an invalid header value, which the core never produces.
            let mut fallback =
                http::Response::new(FullBody::new(Bytes::from_static(b"internal error")));
            *fallback.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
            fallback
        })
}

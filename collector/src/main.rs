//! edge-enrich reference collector.
//!
//! `POST /ingest` stores a batch envelope in SQLite (data survives restarts) and de-duplicates
//! readings by `id`; `GET /stats` and `GET /readings?device_id=` show what arrived;
//! `POST /faults` (only with `--test-faults`) or the `--fail-*` flags inject failures for tests.
//! With a token (`--token` or `COLLECTOR_TOKEN`, at least 32 bytes) every route needs
//! `Authorization: Bearer`, compared in constant time over SHA-256 digests; without one it
//! listens on loopback only. A reading it cannot store is answered 400 naming it (the edge
//! isolates it and keeps it as a dead letter); a storage fault 503 (retry), never a 4xx, which
//! an edge takes as its batch's fault. SQLite runs off the async workers, and the read routes
//! use a connection of their own, so they never hold back ingest.

mod store;

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Query, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use store::{Batch, InsertError, Store};

/// Shortest token accepted, as the edge's own secrets.
const MIN_TOKEN_LEN: usize = 32;

const USAGE: &str =
    "usage: edge-enrich-collector [--addr 127.0.0.1:0] [--db collector.sqlite] [--token T]
    [--port-file F] [--fail-first N] [--fail-rate 0..1] [--fail-status 503] [--delay-ms N]
    [--test-faults]

Prints `listening on http://ADDR` once bound. Endpoints: POST /ingest, GET /stats,
GET /readings?device_id=&limit=, GET /delivery?since_ms= (lag and transit percentiles), and with
--test-faults POST /faults {fail_first, fail_rate, fail_status, delay_ms, refuse_for_ms,
refuse_devices, refuse_status}. With --token T (or COLLECTOR_TOKEN) every endpoint needs
`Authorization: Bearer T`.";

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Faults {
    /// Answer `fail_status` to the next N ingest requests.
    #[serde(default)]
    fail_first: u64,
    /// Answer `fail_status` to this fraction of ingest requests.
    #[serde(default)]
    fail_rate: f64,
    #[serde(default = "default_fail_status")]
    fail_status: u16,
    /// Wait this long before answering each ingest request.
    #[serde(default)]
    delay_ms: u64,
    /// Stop listening (connections are refused) for this long, then listen again.
    #[serde(default)]
    refuse_for_ms: u64,
    /// Refuse, with `refuse_status`, any batch holding a reading of one of these devices (as
    /// InfluxDB refuses a whole write for one bad point).
    #[serde(default)]
    refuse_devices: Vec<String>,
    #[serde(default = "default_refuse_status")]
    refuse_status: u16,
}

fn default_fail_status() -> u16 {
    503
}

fn default_refuse_status() -> u16 {
    400
}

struct App {
    /// Ingest's connection, and the read routes' own.
    store: Mutex<Store>,
    reader: Mutex<Store>,
    faults: Mutex<Faults>,
    /// The SHA-256 digest of the token every request must carry, if one is set.
    token: Option<[u8; 32]>,
    requests: AtomicU64,
    injected_failures: AtomicU64,
    refuse: mpsc::UnboundedSender<u64>,
}

struct Args {
    addr: SocketAddr,
    db: PathBuf,
    token: Option<String>,
    port_file: Option<PathBuf>,
    faults: Faults,
    test_faults: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        addr: "127.0.0.1:0".parse().map_err(|e| format!("{e}"))?,
        db: PathBuf::from("collector.sqlite"),
        token: None,
        port_file: None,
        faults: Faults {
            fail_status: 503,
            refuse_status: 400,
            ..Faults::default()
        },
        test_faults: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--help" || flag == "-h" {
            return Err(USAGE.to_owned());
        }
        if flag == "--test-faults" {
            args.test_faults = true;
            continue;
        }
        let value = it
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n\n{USAGE}"))?;
        let bad = |e: &dyn std::fmt::Display| format!("{flag} {value:?}: {e}");
        match flag.as_str() {
            "--addr" => args.addr = value.parse().map_err(|e| bad(&e))?,
            "--db" => args.db = PathBuf::from(&value),
            "--token" => args.token = Some(value),
            "--port-file" => args.port_file = Some(PathBuf::from(&value)),
            "--fail-first" => args.faults.fail_first = value.parse().map_err(|e| bad(&e))?,
            "--fail-rate" => args.faults.fail_rate = value.parse().map_err(|e| bad(&e))?,
            "--fail-status" => args.faults.fail_status = value.parse().map_err(|e| bad(&e))?,
            "--delay-ms" => args.faults.delay_ms = value.parse().map_err(|e| bad(&e))?,
            _ => return Err(format!("unknown flag {flag}\n\n{USAGE}")),
        }
    }
    if let Ok(token) = std::env::var("COLLECTOR_TOKEN") {
        if !token.is_empty() && args.token.is_none() {
            args.token = Some(token);
        }
    }
    match &args.token {
        Some(t) if t.len() < MIN_TOKEN_LEN => {
            return Err(format!("the token must be at least {MIN_TOKEN_LEN} bytes"))
        }
        None if !args.addr.ip().is_loopback() => {
            return Err(format!(
                "listening on {} needs a token (--token or COLLECTOR_TOKEN, at least {MIN_TOKEN_LEN} bytes); without one only a loopback address is allowed",
                args.addr
            ))
        }
        _ => {}
    }
    Ok(args)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn problem(status: StatusCode, detail: impl Into<String>) -> Response {
    let body = serde_json::json!({
        "type": "about:blank",
        "title": status.canonical_reason().unwrap_or("Error"),
        "status": status.as_u16(),
        "detail": detail.into(),
    });
    (
        status,
        [("content-type", "application/problem+json")],
        body.to_string(),
    )
        .into_response()
}

fn digest(token: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(token.as_bytes()).into()
}

/// The token check of every route, as one layer over the router: a request without the token
/// is answered 401 before any handler runs. The given token is hashed and the digests compared
/// in constant time: neither its length nor a matching prefix shows in timing.
async fn require_token(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    use subtle::ConstantTimeEq;
    let Some(expected) = app.token.as_ref() else {
        return next.run(request).await;
    };
    let given = request
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if bool::from(digest(given).ct_eq(expected)) {
        next.run(request).await
    } else {
        problem(StatusCode::UNAUTHORIZED, "a valid bearer token is required")
    }
}

async fn ingest(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Response {
    app.requests.fetch_add(1, Ordering::Relaxed);
    let (delay, fail) = {
        let mut f = app.faults.lock().unwrap_or_else(|p| p.into_inner());
        let fail = if f.fail_first > 0 {
            f.fail_first -= 1;
            true
        } else {
            f.fail_rate > 0.0 && fastrand::f64() < f.fail_rate
        };
        (f.delay_ms, fail.then_some(f.fail_status))
    };
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    if let Some(status) = fail {
        app.injected_failures.fetch_add(1, Ordering::Relaxed);
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        return problem(status, "injected failure");
    }
    let text = match std::str::from_utf8(&body) {
        Ok(t) => t,
        Err(_) => return problem(StatusCode::BAD_REQUEST, "body is not UTF-8"),
    };
    let key = headers.get("idempotency-key").and_then(|v| v.to_str().ok());
    let ndjson = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-ndjson"));
    let parsed = if ndjson {
        // The ndjson sink: readings one per line; the batch is named by its Idempotency-Key.
        let Some(batch_id) = key else {
            return problem(
                StatusCode::BAD_REQUEST,
                "an NDJSON batch needs an Idempotency-Key",
            );
        };
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(serde_json::from_str)
            .collect::<Result<Vec<_>, _>>()
            .map(|readings| Batch {
                batch_id: batch_id.to_owned(),
                edge_node: String::new(),
                sent_at_ms: now_ms(),
                readings,
            })
    } else {
        serde_json::from_str(text)
    };
    let batch: Batch<'_> = match parsed {
        Ok(b) => b,
        Err(e) => {
            return problem(
                StatusCode::BAD_REQUEST,
                format!("not a batch envelope or NDJSON readings: {e}"),
            )
        }
    };
    if key.is_some_and(|k| k != batch.batch_id) {
        return problem(
            StatusCode::BAD_REQUEST,
            "Idempotency-Key does not match batch_id",
        );
    }
    let refused = {
        let f = app.faults.lock().unwrap_or_else(|p| p.into_inner());
        let holds_refused = !f.refuse_devices.is_empty()
            && batch.readings.iter().any(|r| {
                serde_json::from_str::<serde_json::Value>(r.get())
                    .ok()
                    .and_then(|v| v["device_id"].as_str().map(str::to_owned))
                    .is_some_and(|d| f.refuse_devices.contains(&d))
            });
        holds_refused.then_some(f.refuse_status)
    };
    if let Some(status) = refused {
        app.injected_failures.fetch_add(1, Ordering::Relaxed);
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
        return problem(
            status,
            "injected: the batch holds a refused device's reading",
        );
    }
    // Judged before anything is stored: a reading this collector cannot store is the batch's
    // fault, named, so that the edge isolates it (a 503 would be retried for ever).
    if let Err(InsertError::Reading { index, id, detail }) = store::check(&batch) {
        let named = id.map_or(String::new(), |id| format!(" (id {id})"));
        return problem(
            StatusCode::BAD_REQUEST,
            format!("readings[{index}]{named} cannot be stored: {detail}"),
        );
    }
    let body = body.clone();
    let key = key.map(str::to_owned);
    let result = blocking(&app, move |app| {
        let text = std::str::from_utf8(&body).map_err(|e| InsertError::Storage(e.to_string()))?;
        let batch = reparse(text, key.as_deref(), ndjson)?;
        app.store
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(&batch, now_ms())
    })
    .await;
    match result {
        Ok(Ok(stored)) => Json(stored).into_response(),
        Ok(Err(InsertError::Reading { index, detail, .. })) => problem(
            StatusCode::BAD_REQUEST,
            format!("readings[{index}] cannot be stored: {detail}"),
        ),
        // A storage fault is the collector's, not the batch's: the edge must retry it.
        Ok(Err(InsertError::Storage(e))) | Err(e) => problem(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

/// The batch again, from its text, inside the blocking task (a `Batch` borrows its text).
fn reparse<'a>(text: &'a str, key: Option<&str>, ndjson: bool) -> Result<Batch<'a>, InsertError> {
    let bad = |e: serde_json::Error| InsertError::Storage(e.to_string());
    if ndjson {
        let readings = text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(serde_json::from_str)
            .collect::<Result<Vec<_>, _>>()
            .map_err(bad)?;
        Ok(Batch {
            batch_id: key.unwrap_or_default().to_owned(),
            edge_node: String::new(),
            sent_at_ms: now_ms(),
            readings,
        })
    } else {
        serde_json::from_str(text).map_err(bad)
    }
}

/// Runs `f` on tokio's blocking pool: SQLite calls never stall the async workers.
async fn blocking<T: Send + 'static>(
    app: &Arc<App>,
    f: impl FnOnce(&App) -> T + Send + 'static,
) -> Result<T, String> {
    let app = app.clone();
    tokio::task::spawn_blocking(move || f(&app))
        .await
        .map_err(|e| format!("the storage task failed: {e}"))
}

async fn stats(State(app): State<Arc<App>>) -> Response {
    let stats = blocking(&app, |app| {
        app.reader
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .stats()
            .map_err(|e| e.to_string())
    })
    .await
    .and_then(|r| r);
    match stats {
        Ok(s) => {
            let mut v = serde_json::to_value(s).unwrap_or_default();
            v["requests"] = app.requests.load(Ordering::Relaxed).into();
            v["injected_failures"] = app.injected_failures.load(Ordering::Relaxed).into();
            Json(v).into_response()
        }
        Err(e) => problem(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

#[derive(Deserialize)]
struct ReadingsQuery {
    device_id: Option<String>,
    limit: Option<u32>,
}

async fn readings(State(app): State<Arc<App>>, Query(q): Query<ReadingsQuery>) -> Response {
    let rows = blocking(&app, move |app| {
        app.reader
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .readings(q.device_id.as_deref(), q.limit.unwrap_or(100_000))
            .map_err(|e| e.to_string())
    })
    .await
    .and_then(|r| r);
    match rows {
        Ok(rows) => Json(rows).into_response(),
        Err(e) => problem(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

#[derive(Deserialize)]
struct DeliveryQuery {
    since_ms: Option<u64>,
}

async fn delivery(State(app): State<Arc<App>>, Query(q): Query<DeliveryQuery>) -> Response {
    let since = q.since_ms.unwrap_or(0);
    let result = blocking(&app, move |app| {
        app.reader
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .delivery(since)
            .map_err(|e| e.to_string())
    })
    .await
    .and_then(|r| r);
    match result {
        Ok(mut v) => {
            v["requests"] = app.requests.load(Ordering::Relaxed).into();
            Json(v).into_response()
        }
        Err(e) => problem(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

async fn set_faults(State(app): State<Arc<App>>, body: Bytes) -> Response {
    let faults: Faults = match serde_json::from_slice(&body) {
        Ok(f) => f,
        Err(e) => return problem(StatusCode::BAD_REQUEST, e.to_string()),
    };
    if faults.refuse_for_ms > 0 {
        let _ = app.refuse.send(faults.refuse_for_ms);
    }
    *app.faults.lock().unwrap_or_else(|p| p.into_inner()) = faults;
    StatusCode::NO_CONTENT.into_response()
}

#[tokio::main]
async fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(msg) => {
            eprintln!("{msg}");
            std::process::exit(2);
        }
    };
    let store = match Store::open(&args.db) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("cannot open {}: {e}", args.db.display());
            std::process::exit(1);
        }
    };
    let reader = match Store::reader(&args.db) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("cannot open {}: {e}", args.db.display());
            std::process::exit(1);
        }
    };
    let (refuse_tx, mut refuse_rx) = mpsc::unbounded_channel();
    let app = Arc::new(App {
        store: Mutex::new(store),
        reader: Mutex::new(reader),
        faults: Mutex::new(args.faults),
        token: args.token.as_deref().map(digest),
        requests: AtomicU64::new(0),
        injected_failures: AtomicU64::new(0),
        refuse: refuse_tx,
    });
    let mut router = Router::new()
        .route("/ingest", post(ingest))
        .route("/stats", get(stats))
        .route("/readings", get(readings))
        .route("/delivery", get(delivery));
    // Fault injection can make every edge dead-letter or stall: only for tests, by choice.
    if args.test_faults {
        router = router.route("/faults", post(set_faults));
    }
    let router = router
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            require_token,
        ))
        .layer(DefaultBodyLimit::max(64 * 1024 * 1024))
        .with_state(app);

    let mut addr = args.addr;
    let mut announced = false;
    loop {
        let listener = match bind(addr).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("cannot listen on {addr}: {e}");
                std::process::exit(1);
            }
        };
        addr = listener.local_addr().unwrap_or(addr);
        if !announced {
            println!("listening on http://{addr}");
            if let Some(pf) = &args.port_file {
                let _ = std::fs::write(pf, addr.port().to_string());
            }
            announced = true;
        }
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(
            axum::serve(listener, router.clone())
                .with_graceful_shutdown(async {
                    let _ = stop_rx.await;
                })
                .into_future(),
        );
        tokio::select! {
            _ = shutdown_signal() => return,
            pause = refuse_rx.recv() => {
                let pause = pause.unwrap_or(0);
                let _ = stop_tx.send(());
                let abort = server.abort_handle();
                if tokio::time::timeout(Duration::from_secs(2), server).await.is_err() {
                    abort.abort();
                }
                eprintln!("refusing connections for {pause} ms");
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
        }
    }
}

async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let mut last = None;
    for _ in 0..50 {
        match TcpListener::bind(addr).await {
            Ok(l) => return Ok(l),
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("bind failed")))
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return ctrl_c.await.unwrap_or(()),
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

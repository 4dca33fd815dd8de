//! The small seams through which a host reaches the core: configuration, time, entropy, storage,
//! outbound HTTP and logging. The core never names a host SDK; each host adapter implements
//! these, and the native tests implement them with fakes.
#![allow(async_fn_in_trait)] // hosts are single-threaded (an isolate, an instance): no Send wanted

use std::fmt;

use crate::domain::enrich::StoredReading;

/// Deployment configuration by key (wrangler `[vars]`/secrets, Spin variables, environment).
pub trait ConfigSource {
    fn get(&self, key: &str) -> Option<String>;
}

impl ConfigSource for std::collections::HashMap<String, String> {
    fn get(&self, key: &str) -> Option<String> {
        std::collections::HashMap::get(self, key).cloned()
    }
}

/// Fixed key/value pairs: for tests and for hosts whose configuration is a plain list.
pub struct Pairs<'a>(pub &'a [(&'a str, &'a str)]);

impl ConfigSource for Pairs<'_> {
    fn get(&self, key: &str) -> Option<String> {
        self.0
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| (*v).to_owned())
    }
}

/// A secret value (the collector's token): its `Debug` shows nothing, so it cannot leak through
/// a log of the configuration or of a delivery.
#[derive(Clone, PartialEq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Self {
        Self(value)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// Wall-clock time in Unix milliseconds. Hosts supply it; tests use a fake.
pub trait Clock {
    fn now_ms(&self) -> u64;
}

/// Waiting: a Workers `Delay`, a WASI monotonic-clock sleep.
pub trait Timer {
    async fn sleep_ms(&self, ms: u64);
}

/// The host's CSPRNG could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntropyUnavailable;

/// Randomness for ids and retry jitter.
pub trait Entropy {
    fn fill(&self, buf: &mut [u8]) -> Result<(), EntropyUnavailable>;
}

/// An ES256 signature to check (ECDSA over P-256 with SHA-256, RFC 7518): the public key as
/// SEC1 uncompressed bytes (`04 || x || y`), the signed bytes, and `r || s`. Hosts check it
/// with their native crypto where they have one (Workers: WebCrypto), else in software.
#[derive(Debug, Clone, Copy)]
pub struct Es256Check<'a> {
    pub public_key: [u8; 65],
    pub message: &'a [u8],
    pub signature: [u8; 64],
}

/// The host's CSPRNG through `getrandom` (JavaScript's `crypto.getRandomValues` on Workers,
/// `wasi:random` on wasi hosts, the OS natively).
pub struct SystemEntropy;

impl Entropy for SystemEntropy {
    fn fill(&self, buf: &mut [u8]) -> Result<(), EntropyUnavailable> {
        // getRandomValues refuses more than 65536 bytes per call.
        for chunk in buf.chunks_mut(65_536) {
            getrandom::fill(chunk).map_err(|_| EntropyUnavailable)?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Info,
    Warn,
    Error,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Info => "info",
            Self::Warn => "warn",
            Self::Error => "error",
        }
    }
}

/// Structured log events (see `crate::log`): the host decides where the line goes.
pub trait Log {
    fn emit(&self, level: Level, event: &str, fields: &[(&str, &str)]);
}

/// What a storage backend said when an operation failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreError(pub String);

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The few key-value operations the core needs from a host's store (Spin key-value): the
/// outbox's segments, rate-limit buckets and profiles.
pub trait KeyValue {
    async fn set(&self, key: &str, value: &[u8]) -> Result<(), StoreError>;
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError>;
    async fn delete(&self, key: &str) -> Result<(), StoreError>;
    async fn keys(&self) -> Result<Vec<String>, StoreError>;
}

/// A value bound into, or read out of, a SQL statement.
#[derive(Debug, Clone, PartialEq)]
pub enum SqlValue {
    Null,
    Integer(i64),
    Real(f64),
    Text(String),
}

impl SqlValue {
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Self::Integer(n) => Some(*n),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Self::Real(x) => Some(*x),
            Self::Integer(n) => Some(*n as f64),
            _ => None,
        }
    }

    pub fn as_text(&self) -> Option<&str> {
        match self {
            Self::Text(t) => Some(t),
            _ => None,
        }
    }
}

/// A SQLite database every instance of an app shares (Spin's `spin:sqlite`): one statement per
/// call, committed on its own unless the caller began a transaction, its rows read to the end.
pub trait Sql {
    async fn execute(
        &self,
        statement: &str,
        params: Vec<SqlValue>,
    ) -> Result<Vec<Vec<SqlValue>>, StoreError>;
}

/// One accepted segment as a store gives it back after memory was lost.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredSegment<K> {
    pub key: K,
    pub received_at_ms: u64,
    /// The node that accepted it, named in the batch envelope.
    pub node: String,
    /// Its readings not yet delivered or dead-lettered, in order.
    pub readings: Vec<StoredReading>,
}

/// A batch the collector refused for good, as kept for an operator to inspect and replay.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    pub batch_id: String,
    pub failed_at_ms: u64,
    /// The collector's status; `None` when it never answered one (the batch could not even
    /// be encoded).
    pub status: Option<u16>,
    pub detail: String,
    pub readings: usize,
    /// The batch as a JSON envelope, whatever the sink format: readable and replayable.
    pub body: String,
}

/// A reading the collector keeps failing with a retryable answer while it takes other batches
/// (`delivery::outbox`): retried alone, on its own backoff, until given up.
#[derive(Debug, Clone, PartialEq)]
pub struct IsolatedReading<K> {
    /// The batch it is sent as (alone).
    pub batch_id: String,
    /// The segment it belongs to, and its place there.
    pub key: K,
    pub index: usize,
    pub received_at_ms: u64,
    pub node: String,
    pub reading: StoredReading,
    /// When it was first isolated, its failures so far and the last, and when it is due again.
    pub since_ms: u64,
    pub failures: u32,
    pub last_failed_ms: u64,
    pub retry_at_ms: u64,
}

/// What a delivery round settled of one segment.
#[derive(Debug, Clone, PartialEq)]
pub struct Trim<K> {
    pub key: K,
    /// The first `settled` of `readings` (all the segment held when appended or restored) are
    /// settled.
    pub settled: usize,
    pub node: std::rc::Rc<str>,
    pub readings: Vec<StoredReading>,
    /// For a store that [`trims_rows`](OutboxStore::trims_rows): the readings (by index)
    /// settled since it was last told, whether or not they are a prefix.
    pub rows: Vec<usize>,
    /// Every reading of the segment is settled: it leaves the engine.
    pub whole: bool,
}

/// Where the outbox settles what it holds: trims delivered readings and keeps dead letters. A
/// Durable Object's SQLite (a row per segment), the shared SQLite outbox of a Spin app (a row
/// per reading, claimed in batches: `delivery::shared_outbox`), or nowhere (memory only).
pub trait OutboxStore {
    type Key: Clone + PartialEq + fmt::Debug;

    /// Some of a segment's readings are delivered or dead-lettered (see [`Trim`]): the store
    /// keeps the rest, or removes the segment when all are.
    async fn trim(&self, trim: &Trim<Self::Key>) -> Result<(), StoreError>;

    /// Whether the store keeps a record per reading (the shared SQLite outbox) rather than per
    /// segment: it is then told each round which readings were settled ([`Trim::rows`]), not
    /// only once a segment's settled prefix has grown by a batch.
    fn trims_rows(&self) -> bool {
        false
    }

    /// Keeps a batch the collector refused for good; called before its readings are trimmed.
    /// The store keeps at most `policy::DEAD_LETTERS_KEPT` letters, none older than
    /// `policy::DEAD_LETTER_MAX_AGE_MS` before `letter.failed_at_ms`, and returns how many
    /// older ones it dropped to stay within those bounds.
    async fn dead_letter(&self, letter: &DeadLetter) -> Result<u64, StoreError>;

    /// Whether this store keeps isolated readings apart ([`isolate`](Self::isolate)) rather than
    /// leaving them in the engine's memory: a store whose readings are claimed from a shared
    /// table, where one held for minutes would hold its claim (and the backlog) with it.
    fn keeps_isolated(&self) -> bool {
        false
    }

    /// Keeps an isolated reading apart until it is due again (called only when
    /// [`keeps_isolated`](Self::keeps_isolated)); the engine then counts it as settled.
    async fn isolate(&self, _reading: &IsolatedReading<Self::Key>) -> Result<(), StoreError> {
        Ok(())
    }

    /// A delivery round's trims are done; `idle`: nothing is held any more. A store that records
    /// what is settled now and then rather than per segment (see `delivery::slots`) may write it
    /// now. Nothing to do by default.
    async fn end_round(&self, _idle: bool) -> Result<(), StoreError> {
        Ok(())
    }
}

/// A store the accepting isolate or instance appends its own segments to, and delivers from
/// itself: written once per accepted segment, trimmed as its readings are settled, read back
/// only after memory was lost.
pub trait SegmentAppend: OutboxStore {
    /// Makes a segment durable; called before the device gets its 2xx.
    async fn append(
        &self,
        received_at_ms: u64,
        node: &str,
        readings: &[StoredReading],
    ) -> Result<Self::Key, StoreError>;
}

/// One POST to the collector.
#[derive(Debug, Clone, PartialEq)]
pub struct CollectorRequest<'a> {
    pub url: &'a str,
    pub content_type: &'static str,
    /// The batch id: the same on every retry of the batch.
    pub idempotency_key: &'a str,
    /// Sent as `Authorization: Bearer …`.
    pub token: Option<&'a str>,
    pub body: String,
}

/// The collector's answer: its status and, when it is not 2xx, the start of what it said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CollectorAnswer {
    pub status: u16,
    pub detail: String,
}

impl CollectorAnswer {
    /// How much of a refusal's body is kept (in logs and dead letters).
    pub const DETAIL_CHARS: usize = 500;

    /// Whether an answer with this status is worth reading: only a refusal's body is kept.
    pub fn wants_body(status: u16) -> bool {
        !(200..300).contains(&status)
    }

    /// An answer, keeping the start of what the collector said.
    pub fn new(status: u16, body: &str) -> Self {
        Self {
            status,
            detail: body.chars().take(Self::DETAIL_CHARS).collect(),
        }
    }
}

/// The request got no answer (connection refused, DNS, reset...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransportError(pub String);

/// Outbound HTTP to the collector (Workers `fetch`, `wasi:http` outgoing handler).
pub trait Collector {
    async fn post(&self, request: CollectorRequest<'_>) -> Result<CollectorAnswer, TransportError>;
}

/// A request body as the host streams it.
pub trait BodyStream {
    type Chunk: AsRef<[u8]>;
    /// The next chunk, `None` at the end, or `Err` when the stream broke.
    async fn next_chunk(&mut self) -> Option<Result<Self::Chunk, BodyBroken>>;
}

/// The request body could not be read to its end (the client went away, the stream failed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyBroken;

/// What the host's platform knows of where the request came in; `None` where it does not say
/// (locally, or on hosts without such metadata).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EdgeFacts {
    pub colo: Option<String>,
    pub country: Option<String>,
    pub region: Option<String>,
    /// The address the request came from, as the platform (never the client) says: Workers'
    /// `CF-Connecting-IP`, Spin's `spin-client-addr`.
    pub client: Option<String>,
}

#[cfg(test)]
pub mod testing {
    use super::{KeyValue, StoreError};
    use std::cell::RefCell;
    use std::collections::BTreeMap;
    use std::future::Future;

    /// An in-memory store; `fail_on` makes writes of matching keys fail.
    #[derive(Default)]
    pub struct MemoryKv {
        pub map: RefCell<BTreeMap<String, Vec<u8>>>,
        pub fail_on: Option<&'static str>,
    }

    impl KeyValue for MemoryKv {
        async fn set(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
            if self.fail_on.is_some_and(|f| key.contains(f)) {
                return Err(StoreError("store unavailable".into()));
            }
            self.map.borrow_mut().insert(key.into(), value.into());
            Ok(())
        }
        async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
            Ok(self.map.borrow().get(key).cloned())
        }
        async fn delete(&self, key: &str) -> Result<(), StoreError> {
            self.map.borrow_mut().remove(key);
            Ok(())
        }
        async fn keys(&self) -> Result<Vec<String>, StoreError> {
            Ok(self.map.borrow().keys().cloned().collect())
        }
    }

    /// These futures never wait on anything, so one poll completes them.
    pub fn run<F: Future>(f: F) -> F::Output {
        let mut f = std::pin::pin!(f);
        match f
            .as_mut()
            .poll(&mut std::task::Context::from_waker(std::task::Waker::noop()))
        {
            std::task::Poll::Ready(v) => v,
            std::task::Poll::Pending => panic!("an in-memory store never waits"),
        }
    }
}

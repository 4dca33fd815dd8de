//! The bench's figures as types. A run writes them to `bench/results.json` and judges its
//! targets from them; a figure that a section can leave out is an `Option`, so a target reads
//! it as missing rather than as NaN, and a renamed field fails to compile.
//!
//! The documents the bench reads from other programs (oha's report, the collector's
//! `/delivery`, the edge's `/admin/stats`) are typed here too, each with only the fields used.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One whole bench run.
#[derive(Debug, Default, Serialize)]
pub struct Results {
    pub generated_at_ms: u64,
    pub command: String,
    pub machine: BTreeMap<&'static str, String>,
    pub core: Option<Core>,
    pub sizes: Option<Sizes>,
    pub workers: Option<Workers>,
    pub wasmtime: Option<Wasmtime>,
    pub registry: Option<Registry>,
    pub spin: Option<Spin>,
    pub fleet: Option<Fleet>,
    pub targets: Vec<TargetRow>,
}

impl Results {
    /// The spin section, when it ran.
    pub fn spin_run(&self) -> Option<&SpinRun> {
        match &self.spin {
            Some(Spin::Ran(run)) => Some(run),
            _ => None,
        }
    }

    /// Every host's load runs that were measured, by name, with the hello-world handler each
    /// is compared against.
    pub fn host_runs(&self) -> Vec<(&'static str, &'static str, &HostRuns)> {
        let workers = self.workers.as_ref();
        let wasmtime = self.wasmtime.as_ref();
        [
            (
                "wrangler-dev",
                "hello-rust",
                workers.and_then(|w| w.wrangler_dev.as_ref()),
            ),
            (
                "workerd",
                "hello-rust",
                workers.and_then(|w| w.workerd.as_ref()),
            ),
            (
                "wasmtime reuse",
                "hello-component",
                wasmtime.and_then(|w| w.reuse.as_ref()),
            ),
            (
                "wasmtime one-instance-per-request",
                "hello-component",
                wasmtime.and_then(|w| w.one_instance_per_request.as_ref()),
            ),
            (
                "spin up",
                "hello-component",
                self.spin_run().map(|s| &s.load),
            ),
        ]
        .into_iter()
        .filter_map(|(host, floor, runs)| Some((host, floor, runs?)))
        .collect()
    }
}

/// One load run (oha) against one handler at one connection count.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LoadRow {
    pub name: String,
    pub connections: u32,
    pub rps: f64,
    /// Requests answered 2xx per second: a 503 is fast and accepts nothing.
    pub ok_rps: f64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// The 2xx answers' p99, which the p99 targets compare.
    pub ok_p99_ms: Option<f64>,
    pub max_ms: Option<f64>,
    pub responses: u64,
    pub non_2xx: u64,
    pub errors: u64,
    pub cpu_ms_per_request: Option<f64>,
    pub delivery: Option<Delivery>,
    /// Workers only: what the Durable Object was billed for.
    pub billed_per_1000_readings: Option<Billed>,
    pub usd_per_million_readings: Option<Cost>,
    pub do_call_ms: Option<f64>,
}

impl LoadRow {
    pub fn accepted(&self) -> u64 {
        self.responses - self.non_2xx
    }
}

/// What the collector received of one run's readings.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Delivery {
    pub readings: u64,
    pub delivered_all_accepted: bool,
    pub collector_requests_per_1000: f64,
    pub readings_per_batch: f64,
    pub lag_p50_ms: Option<f64>,
    pub lag_p99_ms: Option<f64>,
    pub lag_max_ms: Option<f64>,
    /// Of the lag: a batch's transit from the edge's send to the collector's reading it.
    pub transit_p50_ms: Option<f64>,
}

/// Durable Object requests and storage rows per 1,000 readings.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Billed {
    pub do_requests: f64,
    pub accept_calls: f64,
    pub alarm_runs: f64,
    pub alarms_set: f64,
    pub rows_written: f64,
    pub rows_read: f64,
}

/// US dollars per million readings, by what Cloudflare bills.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Cost {
    pub worker_requests: f64,
    pub worker_cpu: f64,
    pub do_requests: f64,
    pub do_rows_written: f64,
    pub do_rows_read: f64,
    pub do_duration: f64,
    pub total: f64,
    pub prices_read_on: String,
}

/// The runs of several handlers on one host, with each one's start-up time.
#[derive(Debug, Default, Serialize)]
pub struct HostRuns {
    pub runs: Vec<LoadRow>,
    pub startup_ms: BTreeMap<String, u64>,
}

impl HostRuns {
    pub fn find(&self, name: &str, connections: u32) -> Option<&LoadRow> {
        self.runs
            .iter()
            .find(|r| r.name == name && r.connections == connections)
    }
}

#[derive(Debug, Default, Serialize)]
pub struct Workers {
    #[serde(rename = "wrangler-dev")]
    pub wrangler_dev: Option<HostRuns>,
    pub workerd: Option<HostRuns>,
}

#[derive(Debug, Default, Serialize)]
pub struct Wasmtime {
    pub reuse: Option<HostRuns>,
    #[serde(rename = "one-instance-per-request")]
    pub one_instance_per_request: Option<HostRuns>,
}

/// The spin flavour under a real `spin up`, or why it did not run.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Spin {
    Skipped { skipped: String },
    Ran(Box<SpinRun>),
}

#[derive(Debug, Default, Serialize)]
pub struct SpinRun {
    pub version: String,
    #[serde(flatten)]
    pub load: HostRuns,
    /// One keep-alive connection, one reading at a time, by handler.
    pub one_connection: BTreeMap<String, LoadRow>,
    /// Instances each host started over its whole load.
    pub instances_started: BTreeMap<String, usize>,
    pub durable_per_post_500: DurablePerPost,
}

#[derive(Debug, Default, Serialize)]
pub struct DurablePerPost {
    pub rate_limit_off: DurableCalls,
    pub rate_limit_on: DurableCalls,
}

/// What one instance asked of its durable stores per 500-reading POST, on the request path.
#[derive(Debug, Default, Serialize)]
pub struct DurableCalls {
    pub requests_seen_by_instance: u64,
    pub sqlite_statements_per_request: Option<f64>,
    pub key_value_writes_per_request: Option<f64>,
    pub key_value_reads_per_request: Option<f64>,
    pub background_sqlite_statements: Option<u64>,
}

/// Client latency of a device's first request (cold) and the one after it (warm), by host and
/// credential mode.
#[derive(Debug, Default, Serialize)]
pub struct Registry {
    pub devices: usize,
    #[serde(rename = "wrangler-dev")]
    pub wrangler_dev: BTreeMap<&'static str, ColdWarm>,
    pub wasmtime: BTreeMap<&'static str, ColdWarm>,
}

#[derive(Debug, Serialize)]
pub struct ColdWarm {
    pub cold: Percentiles,
    pub warm: Percentiles,
}

#[derive(Debug, Serialize)]
pub struct Percentiles {
    pub n: usize,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
}

/// The enrichment path's cost per reading, from `examples/hot_path.rs` and criterion.
#[derive(Debug, Default, Serialize)]
pub struct Core {
    pub wasm: Option<HotPath>,
    pub native: Option<HotPath>,
    pub criterion_native_ns_per_reading: BTreeMap<&'static str, Option<f64>>,
}

/// What `examples/hot_path.rs` prints.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HotPath {
    pub target: String,
    pub get_ns_per_reading: f64,
    pub post_ndjson_500_ns_per_reading: f64,
    pub encode_json_batch_ns_per_reading: f64,
}

#[derive(Debug, Default, Serialize)]
pub struct Sizes {
    pub worker_upload_kib: Option<f64>,
    pub worker_upload_gzip_kib: Option<f64>,
    pub spin_component: FileSize,
    pub wasi_http_component: FileSize,
    pub hello_worker_wasm: FileSize,
    pub hello_component: FileSize,
}

#[derive(Debug, Default, Serialize)]
pub struct FileSize {
    pub bytes: Option<u64>,
    pub gzip_bytes: Option<u64>,
}

#[derive(Debug, Serialize)]
pub struct TargetRow {
    pub target: String,
    pub value: String,
    pub met: bool,
    pub verdict: &'static str,
}

// Documents of other programs, read with only the fields used.

/// oha's `--output-format json` report.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OhaReport {
    #[serde(default)]
    pub summary: OhaSummary,
    #[serde(default)]
    pub latency_percentiles: OhaPercentiles,
    /// With `--stats-success-breakdown`: the 2xx answers alone.
    #[serde(default)]
    pub latency_percentiles_successful: OhaPercentiles,
    #[serde(default)]
    pub status_code_distribution: BTreeMap<String, u64>,
    #[serde(default)]
    pub error_distribution: BTreeMap<String, u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OhaSummary {
    pub requests_per_sec: Option<f64>,
    pub slowest: Option<f64>,
}

/// Seconds.
#[derive(Debug, Default, Deserialize)]
pub struct OhaPercentiles {
    pub p50: Option<f64>,
    pub p99: Option<f64>,
}

/// The reference collector's `/delivery?since_ms=`.
#[derive(Debug, Default, Deserialize)]
pub struct CollectorDelivery {
    #[serde(default)]
    pub readings: u64,
    #[serde(default)]
    pub batches: u64,
    #[serde(default)]
    pub requests: u64,
    #[serde(default)]
    pub lag_ms: CollectorLag,
    /// Of the lag, a batch's time between the edge's send and the collector's reading it.
    #[serde(default)]
    pub transit_ms: CollectorLag,
}

#[derive(Debug, Default, Deserialize)]
pub struct CollectorLag {
    pub p50: Option<f64>,
    pub p99: Option<f64>,
    pub max: Option<f64>,
}

/// The Workers flavour's `/admin/stats`: its Batcher's counters and the answering isolate's
/// group-commit lanes.
#[derive(Debug, Default, Deserialize)]
pub struct WorkersAdminStats {
    #[serde(default)]
    pub batchers: Vec<BatcherStats>,
    #[serde(default)]
    pub isolate_lanes: BTreeMap<String, LaneStats>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct BatcherStats {
    #[serde(default)]
    pub accepted_readings: f64,
    #[serde(default)]
    pub rate_limit: Option<BucketStats>,
    #[serde(default)]
    pub billed: BilledCounters,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct BilledCounters {
    #[serde(default)]
    pub requests: RequestCounters,
    #[serde(default)]
    pub storage: StorageCounters,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct RequestCounters {
    #[serde(default)]
    pub accept_calls: f64,
    #[serde(default)]
    pub alarm_runs: f64,
    #[serde(default)]
    pub alarms_set: f64,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct StorageCounters {
    #[serde(default)]
    pub rows_written: f64,
    #[serde(default)]
    pub rows_read: f64,
}

#[derive(Debug, Default, Deserialize)]
pub struct LaneStats {
    pub typical_call_ms: Option<f64>,
}

/// The spin flavour's `/admin/stats`: its instance's durable calls.
#[derive(Debug, Default, Deserialize)]
pub struct SpinAdminStats {
    #[serde(default)]
    pub appended_requests: u64,
    #[serde(default)]
    pub sqlite: SqliteCounts,
    #[serde(default)]
    pub key_value: KeyValueCounts,
}

#[derive(Debug, Default, Deserialize)]
pub struct SqliteCounts {
    #[serde(default)]
    pub request_path: StatementCount,
    #[serde(default)]
    pub background: StatementCount,
}

#[derive(Debug, Default, Deserialize)]
pub struct StatementCount {
    pub statements: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
pub struct KeyValueCounts {
    #[serde(default)]
    pub request_path: KeyValueCalls,
}

#[derive(Debug, Default, Deserialize)]
pub struct KeyValueCalls {
    pub set: Option<u64>,
    pub get: Option<u64>,
}

/// bench/prices.json: Cloudflare's published prices, and when they were read.
#[derive(Debug, Deserialize)]
pub struct Prices {
    pub read_on: String,
    pub usd_per_million: PricesPerMillion,
    pub do_memory_gb: f64,
}

#[derive(Debug, Deserialize)]
pub struct PricesPerMillion {
    pub worker_requests: f64,
    pub worker_cpu_ms: f64,
    pub do_requests: f64,
    pub do_rows_written: f64,
    pub do_rows_read: f64,
    pub do_gb_s: f64,
}

/// A batcher's token buckets (`/admin/stats`).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct BucketStats {
    pub tracked: usize,
    pub capacity: usize,
    pub forgotten_unrefilled: u64,
}

/// The fleet phase (`fleet_scale`).
#[derive(Debug, Default, Serialize)]
pub struct Fleet {
    pub how: String,
    pub connections: u32,
    pub workerd: Option<FleetHost>,
    /// None without a Spin CLI.
    pub spin: Option<FleetHost>,
}

#[derive(Debug, Default, Serialize)]
pub struct FleetHost {
    pub rows: Vec<FleetRow>,
    /// The runtime's growth in resident memory from the smallest fleet to the largest, per
    /// device it then held state for.
    pub bytes_per_tracked_device: Option<f64>,
}

impl FleetHost {
    pub fn find(&self, devices: usize) -> Option<&FleetRow> {
        self.rows.iter().find(|r| r.devices == devices)
    }
}

#[derive(Debug, Default, Serialize)]
pub struct FleetRow {
    pub devices: usize,
    pub fill_readings_per_s: f64,
    pub rss_kib: u64,
    /// workerd: buckets in the batcher's memory (bounded), and those forgotten before full.
    pub buckets_tracked: Option<usize>,
    pub buckets_forgotten_unrefilled: Option<u64>,
    /// Spin: statements per request on the answering instance, and bucket rows in SQLite.
    pub sqlite_statements_per_request: Option<f64>,
    pub rate_bucket_rows: Option<u64>,
    /// The collector's CPU per request of the load (it shares the machine's cores).
    pub collector_cpu_ms_per_request: Option<f64>,
    pub load: LoadRow,
}

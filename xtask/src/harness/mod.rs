//! Real processes (the reference collector, `wrangler dev`/workerd, `wasmtime serve`, `spin up`,
//! InfluxDB) on 127.0.0.1 with ports picked at run time, and plain HTTP between them. Shared by
//! the end-to-end tests and the benchmark driver. One module per concern:
//! - `process`: child processes and the runtimes that serve on a loopback port;
//! - `client`, `raw_http`: HTTP through a client library, and byte for byte;
//! - `collector`, `influx`: the servers that receive batches;
//! - `workerd`, `wasmtime`, `spin`: the edge runtimes.

mod client;
mod collector;
mod influx;
mod process;
mod raw_http;
mod spin;
mod wasmtime;
mod workerd;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use client::*;
pub use collector::Collector;
pub use influx::Influx;
pub use process::{LocalServer, Proc};
pub use raw_http::{keep_alive, raw_request, split_head};
pub use spin::{spin_cli, SpinHost};
pub use workerd::{WorkerSpec, WorkersHost, COMPATIBILITY_DATE};

pub fn repo_root() -> PathBuf {
    // xtask/ sits at the repository root.
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// A fresh scratch folder for one test under `target/e2e/`.
pub fn scratch(name: &str) -> PathBuf {
    let dir = repo_root().join("target").join("e2e").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Whether a `/healthz` answer is the edge's own: 200, or 503 for a deployment whose settings
/// are wrong (a host started with wrong settings on purpose is up all the same).
pub fn edge_answered(r: &Resp) -> bool {
    r.status == 200 || (r.status == 503 && r.body.contains("\"misconfigured\""))
}

/// Polls `check` until it returns Some or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = check() {
            return v;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A running edge host, whichever runtime: what host-independent test suites need of it.
pub trait EdgeHost {
    /// `http://127.0.0.1:PORT`.
    fn base_url(&self) -> String;
    fn log(&self) -> String;
    /// CPU time (ms) the runtime has used so far (the runtime itself, not a proxy in front).
    fn cpu_ms(&self) -> f64;
    /// From spawning the runtime to its first 200.
    fn startup(&self) -> Duration;
}

impl EdgeHost for WorkersHost {
    fn base_url(&self) -> String {
        self.url("")
    }
    fn log(&self) -> String {
        self.log_text()
    }
    fn cpu_ms(&self) -> f64 {
        self.workerd_cpu_ms()
    }
    fn startup(&self) -> Duration {
        self.startup
    }
}

impl EdgeHost for LocalServer {
    fn base_url(&self) -> String {
        self.url("")
    }
    fn cpu_ms(&self) -> f64 {
        LocalServer::cpu_ms(self)
    }
    fn startup(&self) -> Duration {
        self.startup
    }
    fn log(&self) -> String {
        self.log_text()
    }
}

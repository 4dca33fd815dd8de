//! Real processes (the reference collector, `wrangler dev`/workerd, `wasmtime serve`) on
//! 127.0.0.1 with ports picked at run time, and plain HTTP between them. Shared by the
//! end-to-end tests and the benchmark driver.

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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

/// A child process in its own process group, killed (with its children) on drop.
pub struct Proc {
    child: Child,
    pub log: PathBuf,
    killed: bool,
}

impl Proc {
    pub fn spawn(mut cmd: Command, log: PathBuf) -> Self {
        let out = std::fs::File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        cmd.stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        Self {
            child,
            log,
            killed: false,
        }
    }

    /// SIGKILL to the whole group: a crash, not a shutdown.
    pub fn kill(&mut self) {
        if std::mem::replace(&mut self.killed, true) {
            return;
        }
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.wait();
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(30))
        .build()
}

fn into_resp(r: Result<ureq::Response, ureq::Error>) -> Result<Resp, String> {
    let r = match r {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => return Err(e.to_string()),
    };
    let status = r.status();
    let headers = r
        .headers_names()
        .into_iter()
        .filter_map(|n| r.header(&n).map(|v| (n.clone(), v.to_owned())))
        .collect();
    let body = r.into_string().map_err(|e| e.to_string())?;
    Ok(Resp {
        status,
        headers,
        body,
    })
}

pub fn try_request(
    method: &str,
    url: &str,
    content_type: Option<&str>,
    body: Option<&[u8]>,
) -> Result<Resp, String> {
    let mut req = agent().request(method, url);
    if let Some(ct) = content_type {
        req = req.set("content-type", ct);
    }
    into_resp(match body {
        Some(b) => req.send_bytes(b),
        None => req.call(),
    })
}

pub fn get(url: &str) -> Resp {
    try_request("GET", url, None, None).unwrap_or_else(|e| panic!("GET {url}: {e}"))
}

pub fn post(url: &str, content_type: &str, body: &str) -> Resp {
    try_request("POST", url, Some(content_type), Some(body.as_bytes()))
        .unwrap_or_else(|e| panic!("POST {url}: {e}"))
}

/// The project's reference collector, on a fixed port so it can be stopped and started again
/// with its SQLite file (an outage, not a new collector).
pub struct Collector {
    pub port: u16,
    db: PathBuf,
    dir: PathBuf,
    proc: Option<Proc>,
    starts: u32,
}

impl Collector {
    pub fn start(dir: &Path) -> Self {
        let mut c = Self {
            port: free_port(),
            db: dir.join("collector.sqlite"),
            dir: dir.to_owned(),
            proc: None,
            starts: 0,
        };
        c.resume();
        c
    }

    pub fn binary() -> PathBuf {
        std::env::var_os("EDGE_ENRICH_COLLECTOR_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo_root().join("target/debug/edge-enrich-collector"))
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn ingest_url(&self) -> String {
        format!("{}/ingest", self.url())
    }

    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
    }

    pub fn resume(&mut self) {
        let bin = Self::binary();
        assert!(
            bin.exists(),
            "{} is missing: build it with `cargo build -p edge-enrich-collector`",
            bin.display()
        );
        let mut cmd = Command::new(bin);
        cmd.args(["--addr", &format!("127.0.0.1:{}", self.port), "--db"])
            .arg(&self.db);
        self.starts += 1;
        self.proc = Some(Proc::spawn(
            cmd,
            self.dir.join(format!("collector-{}.log", self.starts)),
        ));
        let stats = format!("{}/stats", self.url());
        wait_for(Duration::from_secs(20), "the collector to listen", || {
            try_request("GET", &stats, None, None).ok()
        });
    }

    pub fn stats(&self) -> serde_json::Value {
        get(&format!("{}/stats", self.url())).json()
    }

    pub fn stored_ids(&self) -> BTreeSet<String> {
        self.try_stored_ids()
            .unwrap_or_else(|e| panic!("collector readings: {e}"))
    }

    /// The stored ids, or why the collector could not be asked (e.g. it refuses connections).
    pub fn try_stored_ids(&self) -> Result<BTreeSet<String>, String> {
        let r = try_request("GET", &format!("{}/readings", self.url()), None, None)?;
        let rows: serde_json::Value = serde_json::from_str(&r.body).map_err(|e| e.to_string())?;
        let rows = rows.as_array().ok_or("not an array")?;
        Ok(rows
            .iter()
            .filter_map(|r| r["id"].as_str().map(str::to_owned))
            .collect())
    }

    pub fn readings_of(&self, device_id: &str) -> Vec<serde_json::Value> {
        get(&format!("{}/readings?device_id={device_id}", self.url()))
            .json()
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    pub fn set_faults(&self, faults: serde_json::Value) {
        let r = post(
            &format!("{}/faults", self.url()),
            "application/json",
            &faults.to_string(),
        );
        assert_eq!(r.status, 204, "{}", r.body);
    }

    /// Waits until every id in `ids` is stored, and checks that nothing else was.
    pub fn assert_stored_exactly(&self, ids: &BTreeSet<String>, timeout: Duration) {
        wait_for(timeout, "every accepted reading at the collector", || {
            // While the collector is down or refusing, keep waiting.
            let stored = self.try_stored_ids().ok()?;
            ids.is_subset(&stored).then_some(())
        });
        let stored = self.stored_ids();
        let extra: Vec<_> = stored.difference(ids).collect();
        assert!(
            extra.is_empty(),
            "the collector holds readings nobody was told were accepted: {extra:?}"
        );
        assert_eq!(
            self.stats()["readings"].as_u64(),
            Some(ids.len() as u64),
            "each id stored once"
        );
    }
}

/// Ids of the readings in a 200 answer (one object for GET, an array for POST).
pub fn accepted_ids(resp: &Resp) -> Vec<String> {
    assert_eq!(resp.status, 200, "{}", resp.body);
    let v = resp.json();
    let items = match v.as_array() {
        Some(a) => a.clone(),
        None => vec![v],
    };
    items
        .iter()
        .map(|r| r["id"].as_str().expect("id").to_owned())
        .collect()
}

pub fn assert_problem(resp: &Resp, status: u16) -> serde_json::Value {
    assert_eq!(resp.status, status, "{}", resp.body);
    assert_eq!(
        resp.header("content-type"),
        Some("application/problem+json"),
        "{}",
        resp.body
    );
    let doc = resp.json();
    assert_eq!(doc["status"].as_u64(), Some(u64::from(status)));
    assert!(
        doc["type"]
            .as_str()
            .is_some_and(|t| t.starts_with("urn:edge-enrich:problem:")),
        "{doc}"
    );
    assert!(
        doc["title"].is_string() && doc["detail"].is_string(),
        "{doc}"
    );
    doc
}

/// A Worker to run: its entry module (with `index.js` and `index_bg.wasm` beside it for Rust
/// workers), its vars, and whether it binds the `Batcher` Durable Object as `BATCHER`.
#[derive(Clone)]
pub struct WorkerSpec {
    pub main_js: PathBuf,
    pub vars: Vec<(String, String)>,
    pub batcher: bool,
}

impl WorkerSpec {
    /// edge-enrich as built by `scripts/build-worker.sh` into `build/`.
    pub fn edge_enrich(vars: &[(&str, &str)]) -> Self {
        Self {
            main_js: repo_root().join("build/entry.mjs"),
            vars: vars
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            batcher: true,
        }
    }
}

/// `wrangler dev` (workerd behind wrangler's dev proxy) running a prebuilt Worker, with a
/// generated config so that starting it does not rebuild. State persists in `state` across
/// restarts.
pub struct WorkersHost {
    pub port: u16,
    dir: PathBuf,
    spec: WorkerSpec,
    proc: Option<Proc>,
    starts: u32,
    /// Time from spawning wrangler to the first 200 from `/healthz` (or `/`).
    pub startup: Duration,
}

impl WorkersHost {
    pub fn start(dir: &Path, vars: &[(&str, &str)]) -> Self {
        Self::start_worker(dir, WorkerSpec::edge_enrich(vars))
    }

    pub fn start_worker(dir: &Path, spec: WorkerSpec) -> Self {
        assert!(
            spec.main_js.exists(),
            "{} is missing: build the Worker first (scripts/build-worker.sh)",
            spec.main_js.display()
        );
        let mut host = Self {
            port: free_port(),
            dir: dir.to_owned(),
            spec,
            proc: None,
            starts: 0,
            startup: Duration::ZERO,
        };
        host.launch();
        host
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn write_config(&self) -> PathBuf {
        let mut config = format!(
            "name = \"edge-enrich-local\"\nmain = {}\ncompatibility_date = \"{COMPATIBILITY_DATE}\"\n\n[vars]\n",
            toml_string(&self.spec.main_js.display().to_string()),
        );
        for (k, v) in &self.spec.vars {
            config.push_str(&format!("{k} = {}\n", toml_string(v)));
        }
        if self.spec.batcher {
            config.push_str(
                "\n[[durable_objects.bindings]]\nname = \"BATCHER\"\nclass_name = \"Batcher\"\n\n\
                 [[migrations]]\ntag = \"v1\"\nnew_sqlite_classes = [\"Batcher\"]\n\n\
                 [[kv_namespaces]]\nbinding = \"PROFILES\"\nid = \"edge-enrich-local-profiles\"\n",
            );
        }
        let path = self.dir.join("wrangler.toml");
        std::fs::write(&path, config).expect("write wrangler config");
        path
    }

    fn launch(&mut self) {
        let config = self.write_config();
        let wrangler = repo_root().join("node_modules/.bin/wrangler");
        assert!(
            wrangler.exists(),
            "wrangler is missing: run scripts/setup.sh (npm ci)"
        );
        let mut cmd = Command::new(wrangler);
        cmd.current_dir(&self.dir)
            .env("WRANGLER_SEND_METRICS", "false")
            .env("NO_COLOR", "1")
            .args(["dev", "--config"])
            .arg(&config)
            .args([
                "--ip",
                "127.0.0.1",
                "--port",
                &self.port.to_string(),
                "--inspector-port",
                &free_port().to_string(),
            ])
            .args(["--persist-to"])
            .arg(self.dir.join("state"))
            .args([
                "--show-interactive-dev-session=false",
                "--log-level",
                "info",
            ]);
        self.starts += 1;
        let started = Instant::now();
        self.proc = Some(Proc::spawn(
            cmd,
            self.dir.join(format!("wrangler-{}.log", self.starts)),
        ));
        let health = self.url("/healthz");
        let proc = self.proc.as_ref().expect("proc");
        wait_for(
            Duration::from_secs(120),
            "wrangler dev to serve /healthz",
            || match try_request("GET", &health, None, None) {
                Ok(r) if r.status == 200 => Some(()),
                _ => {
                    let log = proc.log_text();
                    assert!(
                        !log.contains("ERROR") || log.contains("Ready on"),
                        "wrangler failed:\n{log}"
                    );
                    None
                }
            },
        );
        self.startup = started.elapsed();
    }

    /// `wrangler kv key put --local` into the running dev session's persisted KV namespace.
    pub fn kv_put(&self, binding: &str, key: &str, value: &str) {
        let out = Command::new(repo_root().join("node_modules/.bin/wrangler"))
            .current_dir(&self.dir)
            .env("WRANGLER_SEND_METRICS", "false")
            .args(["kv", "key", "put", "--config"])
            .arg(self.dir.join("wrangler.toml"))
            .args(["--binding", binding, "--local", "--persist-to"])
            .arg(self.dir.join("state"))
            .args([key, value])
            .output()
            .expect("wrangler kv key put");
        assert!(
            out.status.success(),
            "wrangler kv key put: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Kills workerd and wrangler without a chance to clean up, then starts them again on the
    /// same port with the same persisted state.
    pub fn crash_and_restart(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
        self.launch();
    }

    pub fn log_text(&self) -> String {
        self.proc.as_ref().map(|p| p.log_text()).unwrap_or_default()
    }
}

pub const COMPATIBILITY_DATE: &str = "2026-04-01";

/// A runtime serving on a loopback port picked at run time, started and waited for until its
/// `/healthz` answers 200.
pub struct LocalServer {
    pub port: u16,
    proc: Proc,
    /// Time from spawning the process to its first 200.
    pub startup: Duration,
}

impl LocalServer {
    fn serve(cmd: Command, log: PathBuf, port: u16, what: &str) -> Self {
        let started = Instant::now();
        let proc = Proc::spawn(cmd, log);
        let health = format!("http://127.0.0.1:{port}/healthz");
        wait_for(Duration::from_secs(60), what, || {
            try_request("GET", &health, None, None)
                .ok()
                .filter(|r| r.status == 200)
        });
        Self {
            port,
            proc,
            startup: started.elapsed(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn log_text(&self) -> String {
        self.proc.log_text()
    }

    /// The `workerd` binary that the wrangler npm package ships, run directly with a generated
    /// Cap'n Proto config: no dev proxy in front, so it shows what the runtime itself costs.
    pub fn workerd(dir: &Path, spec: &WorkerSpec) -> Self {
        let workerd = repo_root().join("node_modules/@cloudflare/workerd-linux-64/bin/workerd");
        assert!(
            workerd.exists(),
            "workerd is missing: run scripts/setup.sh (npm ci)"
        );
        // embed paths are relative to the config: copy the modules next to it, under their own
        // names (an entry module imports its siblings by name). The first module is the main one.
        let main = spec
            .main_js
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("worker.js");
        let mut names = vec![(main, "esModule")];
        for sibling in [("index.js", "esModule"), ("index_bg.wasm", "wasm")] {
            if sibling.0 != main && spec.main_js.with_file_name(sibling.0).exists() {
                names.push(sibling);
            }
        }
        let mut modules = Vec::new();
        for (name, kind) in names {
            std::fs::copy(spec.main_js.with_file_name(name), dir.join(name)).expect("copy module");
            let name = capnp_string(name);
            modules.push(format!("(name = {name}, {kind} = embed {name})"));
        }
        let modules = modules.join(", ");
        let mut bindings: Vec<String> = spec
            .vars
            .iter()
            .map(|(k, v)| format!("(name = {}, text = {})", capnp_string(k), capnp_string(v)))
            .collect();
        let mut durable = String::new();
        if spec.batcher {
            bindings.push("(name = \"BATCHER\", durableObjectNamespace = \"Batcher\")".into());
            durable = "durableObjectNamespaces = [(className = \"Batcher\", uniqueKey = \"edge-enrich-batcher\", enableSql = true)],\n  \
                       durableObjectStorage = (localDisk = \"do-storage\"),"
                .into();
        }
        std::fs::create_dir_all(dir.join("do-storage")).expect("storage dir");
        let port = free_port();
        let config = format!(
            r#"using Workerd = import "/workerd/workerd.capnp";

const config :Workerd.Config = (
  services = [
    (name = "main", worker = .worker),
    (name = "loopback", network = (allow = ["public", "private", "local"])),
    (name = "do-storage", disk = (path = {storage}, writable = true)),
  ],
  sockets = [(name = "http", address = "127.0.0.1:{port}", http = (), service = "main")],
);

const worker :Workerd.Worker = (
  modules = [{modules}],
  compatibilityDate = "{COMPATIBILITY_DATE}",
  bindings = [{bindings}],
  {durable}
  globalOutbound = "loopback",
);
"#,
            storage = capnp_string(&dir.join("do-storage").display().to_string()),
            bindings = bindings.join(", "),
        );
        let path = dir.join("workerd.capnp");
        std::fs::write(&path, config).expect("write workerd config");
        let mut cmd = Command::new(workerd);
        cmd.current_dir(dir)
            .args(["serve", "--experimental"])
            .arg(&path);
        Self::serve(
            cmd,
            dir.join("workerd.log"),
            port,
            "workerd to answer /healthz",
        )
    }

    /// `wasmtime serve` running a wasi:http component, configured through `--env`.
    /// `one_instance_per_request` adds `--max-instance-reuse-count 1`; otherwise wasmtime reuses
    /// instances (its default), which the component must not rely on either way.
    pub fn wasmtime(
        dir: &Path,
        component: &Path,
        env: &[(&str, &str)],
        one_instance_per_request: bool,
    ) -> Self {
        assert!(
            component.exists(),
            "{} is missing: run scripts/build-components.sh",
            component.display()
        );
        let port = free_port();
        let mut cmd = Command::new("wasmtime");
        cmd.args(["serve", "-Scli", "--addr", &format!("127.0.0.1:{port}")]);
        if one_instance_per_request {
            cmd.args(["--max-instance-reuse-count", "1"]);
        }
        for (k, v) in env {
            cmd.arg("--env").arg(format!("{k}={v}"));
        }
        cmd.arg(component);
        let mode = if one_instance_per_request {
            "one"
        } else {
            "reuse"
        };
        Self::serve(
            cmd,
            dir.join(format!("wasmtime-{mode}.log")),
            port,
            "wasmtime serve to answer /healthz",
        )
    }
}

fn capnp_string(s: &str) -> String {
    serde_json::to_string(s).expect("string") // JSON string escapes are valid Cap'n Proto text
}

fn toml_string(s: &str) -> String {
    serde_json::to_string(s).expect("string") // a JSON string is a valid TOML basic string
}

/// Sends `request` (a whole HTTP/1.1 request, byte for byte, as no client library would) to
/// `base` (`http://127.0.0.1:PORT`) and reads the answer until the server closes. The body is
/// written from another thread, so a server that answers before reading it all (a 413) is heard
/// even if the rest of the write then fails.
pub fn raw_request(base: &str, request: Vec<u8>) -> Result<Resp, String> {
    use std::io::{Read, Write};
    let addr = base.trim_start_matches("http://").trim_end_matches('/');
    let stream = std::net::TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    let mut writer = stream.try_clone().map_err(|e| e.to_string())?;
    let sender = std::thread::spawn(move || {
        for chunk in request.chunks(64 * 1024) {
            if writer.write_all(chunk).is_err() {
                return;
            }
        }
        let _ = writer.flush();
    });
    let mut raw = Vec::new();
    let mut reader = stream;
    let mut buf = [0u8; 64 * 1024];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                raw.extend_from_slice(&buf[..n]);
                if response_complete(&raw) {
                    break;
                }
            }
            // A reset after a complete answer (the server stopped reading the body) is fine.
            Err(_) if response_complete(&raw) => break,
            Err(e) => return Err(format!("read: {e} after {} bytes", raw.len())),
        }
    }
    let _ = reader.shutdown(std::net::Shutdown::Both);
    let _ = sender.join();
    parse_response(&raw)
}

fn split_head(raw: &[u8]) -> Option<(&[u8], &[u8])> {
    let at = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    Some((&raw[..at], &raw[at + 4..]))
}

fn response_complete(raw: &[u8]) -> bool {
    let Some((head, body)) = split_head(raw) else {
        return false;
    };
    let head = String::from_utf8_lossy(head).to_ascii_lowercase();
    if let Some(len) = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
    {
        return body.len() >= len;
    }
    if head.contains("transfer-encoding: chunked") {
        return body.ends_with(b"0\r\n\r\n");
    }
    false
}

fn parse_response(raw: &[u8]) -> Result<Resp, String> {
    let (head, body) = split_head(raw).ok_or_else(|| {
        format!(
            "no complete answer ({} bytes): {:?}",
            raw.len(),
            String::from_utf8_lossy(raw)
        )
    })?;
    let head = String::from_utf8_lossy(head);
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line in {head:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_vec()
    };
    Ok(Resp {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(at) = body.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(
            String::from_utf8_lossy(&body[..at])
                .split(';')
                .next()
                .unwrap_or("")
                .trim(),
            16,
        )
        .unwrap_or(0);
        if size == 0 {
            break;
        }
        let start = at + 2;
        let end = (start + size).min(body.len());
        out.extend_from_slice(&body[start..end]);
        body = &body[(end + 2).min(body.len())..];
    }
    out
}

/// A real InfluxDB 1.x server (Debian's `influxdb` package, installed by scripts/setup.sh) on
/// free loopback ports, with its data in the test's scratch directory and database `edge`.
pub struct Influx {
    pub port: u16,
    _proc: Proc,
}

impl Influx {
    pub const DATABASE: &'static str = "edge";

    pub fn start(dir: &Path) -> Self {
        let (http, rpc) = (free_port(), free_port());
        let data = dir.join("influxdb");
        let config = format!(
            "reporting-disabled = true\nbind-address = \"127.0.0.1:{rpc}\"\n\
             [meta]\n  dir = \"{meta}\"\n\
             [data]\n  dir = \"{d}\"\n  wal-dir = \"{wal}\"\n  query-log-enabled = false\n\
             [monitor]\n  store-enabled = false\n\
             [http]\n  bind-address = \"127.0.0.1:{http}\"\n  log-enabled = false\n",
            meta = data.join("meta").display(),
            d = data.join("data").display(),
            wal = data.join("wal").display(),
        );
        let config_path = dir.join("influxdb.conf");
        std::fs::write(&config_path, config).expect("influxdb config");
        let mut cmd = Command::new("influxd");
        cmd.arg("-config").arg(&config_path);
        let proc = Proc::spawn(cmd, dir.join("influxd.log"));
        let influx = Self {
            port: http,
            _proc: proc,
        };
        wait_for(Duration::from_secs(30), "influxd to answer /ping", || {
            ureq::get(&format!("{}/ping", influx.url()))
                .call()
                .ok()
                .map(|_| ())
        });
        influx.query(&format!("CREATE DATABASE {}", Self::DATABASE));
        influx
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The write endpoint an edge posts line protocol to.
    pub fn write_url(&self) -> String {
        format!("{}/write?db={}&precision=ms", self.url(), Self::DATABASE)
    }

    /// An InfluxQL query; times in epoch milliseconds.
    pub fn query(&self, q: &str) -> serde_json::Value {
        ureq::post(&format!("{}/query", self.url()))
            .query("db", Self::DATABASE)
            .query("epoch", "ms")
            .send_form(&[("q", q)])
            .unwrap_or_else(|e| panic!("InfluxQL {q:?}: {e}"))
            .into_json()
            .expect("InfluxDB answers JSON")
    }

    /// Rows of `SELECT ... FROM temperature`, each as a column-name → value map.
    pub fn rows(&self, q: &str) -> Vec<serde_json::Map<String, serde_json::Value>> {
        let answer = self.query(q);
        let Some(series) = answer["results"][0]["series"].as_array() else {
            return Vec::new();
        };
        let mut rows = Vec::new();
        for s in series {
            let columns: Vec<String> = s["columns"]
                .as_array()
                .map(|c| {
                    c.iter()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            for values in s["values"].as_array().into_iter().flatten() {
                let row = columns
                    .iter()
                    .cloned()
                    .zip(values.as_array().cloned().unwrap_or_default())
                    .collect();
                rows.push(row);
            }
        }
        rows
    }
}

/// A running edge host, whichever runtime: what host-independent test suites need of it.
pub trait EdgeHost {
    /// `http://127.0.0.1:PORT`.
    fn base_url(&self) -> String;
    fn log(&self) -> String;
}

impl EdgeHost for WorkersHost {
    fn base_url(&self) -> String {
        self.url("")
    }
    fn log(&self) -> String {
        self.log_text()
    }
}

impl EdgeHost for LocalServer {
    fn base_url(&self) -> String {
        self.url("")
    }
    fn log(&self) -> String {
        self.log_text()
    }
}

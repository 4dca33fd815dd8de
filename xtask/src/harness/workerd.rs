//! Workers runtimes: `wrangler dev` (workerd behind its dev proxy) and the `workerd` binary run
//! directly with a generated Cap'n Proto config.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::*;

/// A Worker to run: its entry module (with `index.js` and `index_bg.wasm` beside it for Rust
/// workers), its vars, and whether it binds the `Batcher` Durable Object as `BATCHER`.
#[derive(Clone)]
pub struct WorkerSpec {
    pub main_js: PathBuf,
    pub vars: Vec<(String, String)>,
    pub batcher: bool,
    /// A static-assets directory served in front of the Worker, as wrangler.toml's `[assets]`
    /// (`wrangler dev` only: workerd run directly has no asset layer).
    pub assets: Option<PathBuf>,
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
            assets: Some(repo_root().join("openapi")),
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
        if let Some(assets) = &self.spec.assets {
            config.push_str(&format!(
                "\n[assets]\ndirectory = {}\n",
                toml_string(&assets.display().to_string())
            ));
        }
        if self.spec.batcher {
            config.push_str(
                "\n[[durable_objects.bindings]]\nname = \"BATCHER\"\nclass_name = \"Batcher\"\n\n\
                 [[migrations]]\ntag = \"v1\"\nnew_sqlite_classes = [\"Batcher\"]\n\n\
                 [[kv_namespaces]]\nbinding = \"PROFILES\"\nid = \"edge-enrich-local-profiles\"\n\n\
                 [[kv_namespaces]]\nbinding = \"DEVICES\"\nid = \"edge-enrich-local-devices\"\n",
            );
        }
        let path = self.dir.join("wrangler.toml");
        std::fs::write(&path, config).expect("write wrangler config");
        path
    }

    /// Starts wrangler dev and waits for `/healthz`. workerd sometimes fails to start when a
    /// port it was given was taken meanwhile (ports are picked free, then bound by another
    /// process): then it is started again, up to three times, on fresh ports (keeping the
    /// edge's port once it has been reached, so a restart keeps its URL).
    fn launch(&mut self) {
        let first_start = self.starts == 0;
        for attempt in 1..=3 {
            match self.try_launch() {
                Ok(()) => return,
                Err(log) if attempt < 3 => {
                    eprintln!(
                        "wrangler dev did not start (attempt {attempt}), trying again:\n{log}"
                    );
                    if let Some(mut p) = self.proc.take() {
                        p.kill();
                    }
                    if first_start {
                        self.port = free_port();
                    }
                    std::thread::sleep(Duration::from_secs(1));
                }
                Err(log) => panic!("wrangler failed:\n{log}"),
            }
        }
    }

    fn try_launch(&mut self) -> Result<(), String> {
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
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            match try_request("GET", &health, None, None) {
                Ok(r) if edge_answered(&r) => break,
                _ => {
                    let log = proc.log_text();
                    if log.contains("ERROR") && !log.contains("Ready on") {
                        return Err(log);
                    }
                    if Instant::now() > deadline {
                        return Err(format!("no /healthz answer within 120 s\n{log}"));
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
        self.startup = started.elapsed();
        Ok(())
    }

    /// Where this dev session persists its state (its `--persist-to`), and its config: what
    /// `cargo xtask devices|profiles --local --persist-to DIR --config FILE` write to.
    pub fn local_state(&self) -> (PathBuf, PathBuf) {
        (self.dir.join("state"), self.dir.join("wrangler.toml"))
    }

    /// `wrangler kv key put --local` into the running dev session's persisted KV namespace.
    pub fn kv_put(&self, binding: &str, key: &str, value: &str) {
        self.wrangler_kv(&["key", "put"], binding, &[key, value]);
    }

    /// `wrangler kv bulk put --local` of `(key, value)` pairs, one wrangler call for all.
    pub fn kv_bulk_put(&self, binding: &str, pairs: &[(String, String)]) {
        let file = self.dir.join(format!("bulk-{binding}.json"));
        let doc: Vec<serde_json::Value> = pairs
            .iter()
            .map(|(k, v)| serde_json::json!({"key": k, "value": v}))
            .collect();
        std::fs::write(&file, serde_json::Value::Array(doc).to_string()).expect("bulk file");
        self.wrangler_kv(&["bulk", "put"], binding, &[&file.to_string_lossy()]);
    }

    /// `wrangler kv <command> --binding <binding> --local` on this session's state, then `tail`.
    fn wrangler_kv(&self, command: &[&str], binding: &str, tail: &[&str]) {
        let what = format!("wrangler kv {}", command.join(" "));
        let out = Command::new(repo_root().join("node_modules/.bin/wrangler"))
            .current_dir(&self.dir)
            .env("WRANGLER_SEND_METRICS", "false")
            .arg("kv")
            .args(command)
            .arg("--config")
            .arg(self.dir.join("wrangler.toml"))
            .args(["--binding", binding, "--local", "--persist-to"])
            .arg(self.dir.join("state"))
            .args(tail)
            .output()
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(
            out.status.success(),
            "{what}: {}{}",
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

    /// CPU time (ms) workerd has used so far (not wrangler's Node proxy).
    pub fn workerd_cpu_ms(&self) -> f64 {
        self.proc
            .as_ref()
            .map(|p| p.group_cpu_ms(Some("workerd")))
            .unwrap_or(0.0)
    }
}

pub const COMPATIBILITY_DATE: &str = "2026-04-01";

impl LocalServer {
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
}

fn capnp_string(s: &str) -> String {
    serde_json::to_string(s).expect("string") // JSON string escapes are valid Cap'n Proto text
}

fn toml_string(s: &str) -> String {
    serde_json::to_string(s).expect("string") // a JSON string is a valid TOML basic string
}

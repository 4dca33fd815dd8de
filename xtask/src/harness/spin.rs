//! `spin up`: a real Spin CLI running the spin flavour from `spin.toml`, with its state directory
//! (the SQLite database of the outbox, the key-value store's file, the component's logs) kept
//! across restarts.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::*;

/// The Spin CLI the tests use: `$SPIN` if set, else the one this workplace provides in
/// `../shared/tools/spin` (Spin is on no package registry). None on a machine with neither.
pub fn spin_cli() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("SPIN").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(path));
    }
    let shared = repo_root().join("../shared/tools/spin");
    shared.exists().then_some(shared)
}

pub struct SpinHost {
    pub port: u16,
    dir: PathBuf,
    /// The application: edge-enrich's `spin.toml`, or another (the bench's hello floor).
    manifest: PathBuf,
    variables: Vec<(String, String)>,
    args: Vec<String>,
    proc: Option<Proc>,
    starts: u32,
    /// The SQLite database `default`: in the state directory, or one several hosts share.
    sqlite_db: PathBuf,
    /// Time from spawning `spin up` to the first 200 from `/healthz`.
    pub startup: Duration,
}

impl SpinHost {
    /// `vars` use the Workers names (`COLLECTOR_URL`, `AUTH_MODE`, ...), as for the other hosts;
    /// they become the Spin application's variables.
    pub fn start(dir: &Path, vars: &[(&str, &str)]) -> Self {
        Self::start_with(dir, vars, &[])
    }

    /// As `start`, with extra `spin up` arguments (e.g. `--max-instance-reuse-count 1`).
    pub fn start_with(dir: &Path, vars: &[(&str, &str)], args: &[&str]) -> Self {
        Self::start_app(dir, &repo_root().join("spin.toml"), vars, args)
    }

    /// Another Spin application (its manifest) on the same terms.
    pub fn start_app(dir: &Path, manifest: &Path, vars: &[(&str, &str)], args: &[&str]) -> Self {
        let mut host = Self::start_app_later(dir, manifest, vars, args);
        host.launch();
        host
    }

    /// As `start`, with the SQLite database `default` at `db` (a runtime-config file in `dir`
    /// says so): several `spin up` given the same `db` share one outbox, as hosts sharing a
    /// libSQL database would.
    pub fn start_sharing(dir: &Path, db: &Path, vars: &[(&str, &str)]) -> Self {
        let config = dir.join("runtime-config.toml");
        let text = format!(
            "[sqlite_database.default]\ntype = \"spin\"\npath = {:?}\n",
            db.display().to_string()
        );
        std::fs::write(&config, text).expect("write the runtime config");
        let config = config.display().to_string();
        let mut host = Self::start_app_later(
            dir,
            &repo_root().join("spin.toml"),
            vars,
            &["--runtime-config-file", &config],
        );
        host.sqlite_db = db.to_owned();
        host.launch();
        host
    }

    fn start_app_later(dir: &Path, manifest: &Path, vars: &[(&str, &str)], args: &[&str]) -> Self {
        Self {
            port: free_port(),
            dir: dir.to_owned(),
            manifest: manifest.to_owned(),
            variables: spin_variables(vars),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            proc: None,
            starts: 0,
            sqlite_db: dir.join("spin-state").join("sqlite_db.db"),
            startup: Duration::ZERO,
        }
    }

    /// Rows in the shared outbox: readings accepted and not yet delivered (0 before the table
    /// exists).
    pub fn outbox_rows(&self) -> i64 {
        let Ok(db) = rusqlite::Connection::open(&self.sqlite_db) else {
            return 0;
        };
        db.busy_timeout(Duration::from_secs(5))
            .expect("busy timeout");
        db.query_row("SELECT count(*) FROM outbox", [], |row| row.get(0))
            .unwrap_or(0)
    }

    /// The bodies of the dead letters kept in the shared outbox's database.
    pub fn dead_letter_bodies(&self) -> Vec<String> {
        let Ok(db) = rusqlite::Connection::open(&self.sqlite_db) else {
            return Vec::new();
        };
        db.busy_timeout(Duration::from_secs(5))
            .expect("busy timeout");
        let Ok(mut stmt) = db.prepare("SELECT body FROM dead_letters ORDER BY id") else {
            return Vec::new();
        };
        stmt.query_map([], |row| row.get::<_, String>(0))
            .map(|rows| rows.flatten().collect())
            .unwrap_or_default()
    }

    /// What the component wrote to stdout, across restarts (Spin also echoes it to its own
    /// output, which `log_text` includes).
    pub fn component_log(&self) -> String {
        std::fs::read_to_string(self.state_dir().join("logs/edge-enrich_stdout.txt"))
            .unwrap_or_default()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("spin-state")
    }

    /// Spin's default key-value store (`default`): SQLite, table `spin_key_value`.
    pub fn key_value_db(&self) -> PathBuf {
        self.state_dir().join("sqlite_key_value.db")
    }

    fn launch(&mut self) {
        let cli = spin_cli().expect("no Spin CLI: set SPIN or provide ../shared/tools/spin");
        let component = repo_root().join("target/components/edge_enrich_spin.wasm");
        assert!(
            self.manifest != repo_root().join("spin.toml") || component.exists(),
            "{} is missing: run scripts/build-components.sh",
            component.display()
        );
        let mut cmd = Command::new(cli);
        cmd.current_dir(&self.dir)
            .arg("up")
            .arg("--from")
            .arg(&self.manifest)
            .args(["--listen", &format!("127.0.0.1:{}", self.port)])
            .arg("--state-dir")
            .arg(self.state_dir())
            .args(&self.args);
        for (k, v) in &self.variables {
            cmd.arg("--variable").arg(format!("{k}={v}"));
        }
        self.starts += 1;
        let started = Instant::now();
        self.proc = Some(Proc::spawn(
            cmd,
            self.dir.join(format!("spin-{}.log", self.starts)),
        ));
        let health = self.url("/healthz");
        let proc = self.proc.as_ref().expect("proc");
        wait_for(
            Duration::from_secs(60),
            "spin up to serve /healthz",
            || match try_request("GET", &health, None, None) {
                Ok(r) if edge_answered(&r) => Some(()),
                _ => {
                    let log = proc.log_text();
                    assert!(!log.contains("Error:"), "spin up failed:\n{log}");
                    None
                }
            },
        );
        self.startup = started.elapsed();
    }

    /// Writes `key` in the application's key-value store `default`, as `spin up --key-value`
    /// or a deployment tool would, while the application runs.
    pub fn kv_set(&self, key: &str, value: &str) {
        let db = rusqlite::Connection::open(self.key_value_db()).expect("open Spin's key-value db");
        db.busy_timeout(Duration::from_secs(5))
            .expect("busy timeout");
        db.execute(
            "INSERT INTO spin_key_value (store, key, value) VALUES ('default', ?1, ?2)
             ON CONFLICT (store, key) DO UPDATE SET value = excluded.value",
            rusqlite::params![key, value.as_bytes()],
        )
        .expect("write Spin's key-value db");
    }

    /// The value of `key` in the store `default`, as text.
    pub fn kv_get(&self, key: &str) -> Option<String> {
        let db = rusqlite::Connection::open(self.key_value_db()).expect("open Spin's key-value db");
        db.busy_timeout(Duration::from_secs(5))
            .expect("busy timeout");
        db.query_row(
            "SELECT value FROM spin_key_value WHERE store = 'default' AND key = ?1",
            [key],
            |row| row.get::<_, Vec<u8>>(0),
        )
        .ok()
        .map(|v| String::from_utf8_lossy(&v).into_owned())
    }

    /// The keys of the store `default` that start with `prefix`.
    pub fn kv_keys(&self, prefix: &str) -> Vec<String> {
        let db = rusqlite::Connection::open(self.key_value_db()).expect("open Spin's key-value db");
        db.busy_timeout(Duration::from_secs(5))
            .expect("busy timeout");
        let mut stmt = db
            .prepare("SELECT key FROM spin_key_value WHERE store = 'default' AND substr(key, 1, length(?1)) = ?1 ORDER BY key")
            .expect("query Spin's key-value db");
        let keys = stmt
            .query_map([prefix], |row| row.get::<_, String>(0))
            .expect("query Spin's key-value db")
            .collect::<Result<Vec<_>, _>>()
            .expect("keys");
        keys
    }

    /// SIGKILL to `spin up` (no chance to clean up), then a new `spin up` on the same port
    /// and state directory.
    pub fn crash_and_restart(&mut self) {
        self.crash();
        self.launch();
    }

    /// SIGKILL to `spin up`, leaving it down.
    pub fn crash(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
    }

    /// Resident memory (KiB) of `spin up` now.
    pub fn rss_kib(&self) -> u64 {
        self.proc.as_ref().map(|p| p.group_rss_kib()).unwrap_or(0)
    }

    /// The SQLite database `default` the app runs on.
    pub fn sqlite_db(&self) -> &Path {
        &self.sqlite_db
    }

    /// CPU time (ms) `spin up` has used so far.
    pub fn cpu_ms(&self) -> f64 {
        self.proc
            .as_ref()
            .map(|p| p.group_cpu_ms(None))
            .unwrap_or(0.0)
    }

    /// Spin's own output of every start, then what the component wrote to its log files.
    pub fn log_text(&self) -> String {
        let mut text = String::new();
        for n in 1..=self.starts {
            text.push_str(
                &std::fs::read_to_string(self.dir.join(format!("spin-{n}.log")))
                    .unwrap_or_default(),
            );
        }
        if let Ok(entries) = std::fs::read_dir(self.state_dir().join("logs")) {
            for entry in entries.flatten() {
                text.push_str(&std::fs::read_to_string(entry.path()).unwrap_or_default());
            }
        }
        text
    }
}

/// The Workers-style settings as the Spin application's variables: lower-case names, and
/// `COLLECTOR_URL` split into `collector_origin` (which `allowed_outbound_hosts` permits) and
/// `collector_path`.
fn spin_variables(vars: &[(&str, &str)]) -> Vec<(String, String)> {
    vars.iter()
        .flat_map(|(k, v)| {
            if *k == "COLLECTOR_URL" {
                let after_scheme = v.find("://").map_or(0, |i| i + 3);
                let split = v[after_scheme..]
                    .find('/')
                    .map_or(v.len(), |i| after_scheme + i);
                vec![
                    ("collector_origin".to_owned(), v[..split].to_owned()),
                    ("collector_path".to_owned(), v[split..].to_owned()),
                ]
            } else {
                vec![(k.to_ascii_lowercase(), (*v).to_owned())]
            }
        })
        .collect()
}

impl EdgeHost for SpinHost {
    fn base_url(&self) -> String {
        self.url("")
    }
    fn log(&self) -> String {
        self.log_text()
    }
    fn cpu_ms(&self) -> f64 {
        SpinHost::cpu_ms(self)
    }
    fn startup(&self) -> Duration {
        self.startup
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn collector_url_becomes_origin_and_path() {
        let v = super::spin_variables(&[
            (
                "COLLECTOR_URL",
                "http://127.0.0.1:9/write?db=edge&precision=ms",
            ),
            ("AUTH_MODE", "off"),
        ]);
        assert_eq!(
            v,
            [
                ("collector_origin".into(), "http://127.0.0.1:9".into()),
                (
                    "collector_path".into(),
                    "/write?db=edge&precision=ms".into()
                ),
                ("auth_mode".into(), "off".into()),
            ]
        );
    }
}

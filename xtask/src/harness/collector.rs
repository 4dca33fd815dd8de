//! The project's reference collector as a real process.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::*;

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
            .arg(&self.db)
            .arg("--test-faults");
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

    /// Restarted on the same port with an empty store: a load then measures the edge, not a
    /// collector whose tables earlier phases filled.
    pub fn fresh(&mut self) {
        self.stop();
        for suffix in ["", "-wal", "-shm"] {
            let mut path = self.db.clone().into_os_string();
            path.push(suffix);
            let _ = std::fs::remove_file(path);
        }
        self.resume();
    }

    /// CPU time (ms) the collector process has used.
    pub fn cpu_ms(&self) -> f64 {
        self.proc.as_ref().map_or(0.0, |p| p.group_cpu_ms(None))
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

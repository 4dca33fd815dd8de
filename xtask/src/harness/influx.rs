//! A real InfluxDB 1.x server for the `influx` sink's end-to-end test.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use super::*;

/// A real InfluxDB 1.x server (Debian's `influxdb` package, installed by scripts/setup.sh) on
/// free loopback ports, with its data in the test's scratch directory and database `edge`,
/// whose retention is one hour: a point older than that is refused (as a device with a reset
/// clock would send one), with a 400 for the whole write.
pub struct Influx {
    pub port: u16,
    _proc: Proc,
}

impl Influx {
    pub const DATABASE: &'static str = "edge";
    /// The database's retention policy (InfluxDB's shortest).
    pub const RETENTION: &'static str = "1h";

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
        influx.query(&format!(
            "CREATE DATABASE {} WITH DURATION {}",
            Self::DATABASE,
            Self::RETENTION
        ));
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

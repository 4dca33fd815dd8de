//! The collector as a process, over real HTTP on loopback: with a token every route is closed
//! to a request without it, fault injection exists only with `--test-faults`, and a refused
//! device's reading takes its whole batch (what the edge's splitting is tested against).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};

struct Collector {
    child: Child,
    addr: String,
    _dir: TempDir,
}

struct TempDir(std::path::PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Collector {
    fn start(extra: &[&str]) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "collector-routes-{}-{}",
            std::process::id(),
            extra.join("_").replace(['-', ' '], "")
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_edge-enrich-collector"))
            .args(["--addr", "127.0.0.1:0", "--db"])
            .arg(dir.join("c.sqlite"))
            .args(extra)
            .env_remove("COLLECTOR_TOKEN")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("listening on http://")
            .unwrap()
            .to_owned();
        Self {
            child,
            addr,
            _dir: TempDir(dir),
        }
    }

    /// Status and body of one request.
    fn call(&self, method: &str, path: &str, token: Option<&str>, body: &str) -> (u16, String) {
        let mut s = TcpStream::connect(&self.addr).unwrap();
        let auth = token.map_or(String::new(), |t| format!("authorization: Bearer {t}\r\n"));
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nhost: {}\r\n{auth}content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            self.addr,
            body.len()
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        let status = out[9..12].parse().unwrap();
        let body = out.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_owned();
        (status, body)
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn batch(id: &str, devices: &[&str]) -> String {
    let readings: Vec<String> = devices
        .iter()
        .enumerate()
        .map(|(i, d)| {
            format!(r#"{{"id":"{id}-{i}","device_id":"{d}","temp_c":1.0,"received_at_ms":1}}"#)
        })
        .collect();
    format!(
        r#"{{"batch_id":"{id}","edge_node":"n","sent_at_ms":1,"readings":[{}]}}"#,
        readings.join(",")
    )
}

#[test]
fn a_token_closes_every_route() {
    let token = "collector-token-0123456789-0123456789";
    let c = Collector::start(&["--token", token, "--test-faults"]);
    let routes = [
        ("POST", "/ingest", batch("b1", &["a"])),
        ("GET", "/stats", String::new()),
        ("GET", "/readings", String::new()),
        ("GET", "/delivery", String::new()),
        ("POST", "/faults", "{}".to_owned()),
    ];
    for (method, path, body) in &routes {
        for wrong in [
            None,
            Some("collector-token-0123456789-012345678"),
            Some("x"),
        ] {
            let (status, _) = c.call(method, path, wrong, body);
            assert_eq!(status, 401, "{method} {path} with {wrong:?}");
        }
        let (status, text) = c.call(method, path, Some(token), body);
        assert!(
            status == 200 || status == 204,
            "{method} {path}: {status} {text}"
        );
    }
}

#[test]
fn faults_exist_only_for_tests() {
    let c = Collector::start(&[]);
    assert_eq!(
        c.call("POST", "/faults", None, r#"{"fail_first":9}"#).0,
        404
    );
    assert_eq!(c.call("POST", "/ingest", None, &batch("b1", &["a"])).0, 200);
}

#[test]
fn a_refused_device_takes_its_whole_batch() {
    let c = Collector::start(&["--test-faults"]);
    let set = c.call(
        "POST",
        "/faults",
        None,
        r#"{"refuse_devices":["bad"],"refuse_status":422}"#,
    );
    assert_eq!(set.0, 204);
    assert_eq!(
        c.call("POST", "/ingest", None, &batch("b1", &["ok", "bad", "ok"]))
            .0,
        422
    );
    assert_eq!(
        c.call("POST", "/ingest", None, &batch("b2", &["ok", "ok"]))
            .0,
        200
    );
    let (_, stats) = c.call("GET", "/stats", None, "");
    let stats: serde_json::Value = serde_json::from_str(&stats).unwrap();
    assert_eq!(
        stats["readings"], 2,
        "nothing of the refused batch was stored"
    );
}

/// At 557087d a reading the collector could not store was answered 503, which every edge
/// retries for ever: one bad reading held back all. Now it is a 400 that names the reading, and
/// nothing of the batch is stored.
#[test]
fn a_reading_it_cannot_store_is_refused_by_name() {
    let c = Collector::start(&[]);
    let body = r#"{"batch_id":"b1","edge_node":"n","sent_at_ms":1,"readings":[
        {"id":"fine","device_id":"d","temp_c":1.0,"received_at_ms":1},
        {"id":"odd-one","device_id":"d","temp_c":"warm","received_at_ms":1}]}"#;
    let (status, text) = c.call("POST", "/ingest", None, body);
    assert_eq!(status, 400, "{text}");
    assert!(
        text.contains("readings[1]") && text.contains("odd-one"),
        "{text}"
    );
    let (_, stats) = c.call("GET", "/stats", None, "");
    let stats: serde_json::Value = serde_json::from_str(&stats).unwrap();
    assert_eq!(stats["readings"], 0);
}

/// At 557087d any token was accepted, however short, and none was needed on any address. Now a
/// token has at least 32 bytes, and without one the collector listens on loopback only.
#[test]
fn a_short_token_or_an_open_address_without_one_is_refused() {
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_edge-enrich-collector"))
            .args(args)
            .env_remove("COLLECTOR_TOKEN")
            .output()
            .unwrap()
    };
    let short = run(&["--addr", "127.0.0.1:0", "--token", "short"]);
    assert_eq!(short.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&short.stderr).contains("at least 32 bytes"));
    let open = run(&["--addr", "0.0.0.0:0"]);
    assert_eq!(open.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&open.stderr).contains("needs a token"));
}

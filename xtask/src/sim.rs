//! `cargo xtask sim`: simulated devices against any edge URL, local or deployed.
//!
//! Each device has its own drifting temperature (a slow random walk around a base, plus a daily
//! swing) and reports in its own unit (C, F or K); every fifth device batches its readings as
//! NDJSON POSTs, the others send one GET per reading. With `--auth token|hmac` and
//! `AUTH_SECRET` in the environment, each device authenticates with its derived key. A progress
//! line runs while it sends; a summary (sent, accepted, rejected by status, latency
//! percentiles) closes. `--check COLLECTOR` then asks the reference collector whether every
//! accepted reading arrived exactly once.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use edge_enrich::http::auth::{sign, MasterSecret, SignedParts};

pub struct Options {
    pub url: String,
    pub devices: usize,
    /// Readings per second, all devices together.
    pub rate: f64,
    pub duration: Duration,
    pub auth: Option<String>,
    pub check: Option<String>,
    pub threads: usize,
    /// The host `hmac` signatures name (the deployment's `HMAC_HOST`); default: the URL's.
    pub sign_host: Option<String>,
}

impl Options {
    pub fn parse(args: &[String]) -> Result<Self, String> {
        let mut o = Self {
            url: "http://127.0.0.1:8787".into(),
            devices: 10,
            rate: 20.0,
            duration: Duration::from_secs(10),
            auth: None,
            check: None,
            threads: 8,
            sign_host: None,
        };
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            let mut value = || it.next().cloned().ok_or(format!("{flag} needs a value"));
            let number = |v: String| {
                v.parse::<f64>()
                    .map_err(|_| format!("{flag}: not a number: {v}"))
            };
            match flag.as_str() {
                "--url" => o.url = value()?.trim_end_matches('/').to_owned(),
                "--devices" => o.devices = number(value()?)?.max(1.0) as usize,
                "--rate" => o.rate = number(value()?)?.max(0.1),
                "--duration" => o.duration = Duration::from_secs_f64(number(value()?)?.max(0.1)),
                "--threads" => o.threads = number(value()?)?.clamp(1.0, 256.0) as usize,
                "--auth" => match value()?.as_str() {
                    m @ ("token" | "hmac") => o.auth = Some(m.to_owned()),
                    "off" => o.auth = None,
                    m => return Err(format!("--auth: token, hmac or off (got {m})")),
                },
                "--check" => o.check = Some(value()?.trim_end_matches('/').to_owned()),
                "--sign-host" => o.sign_host = Some(value()?),
                other => return Err(format!("unknown option {other}")),
            }
        }
        Ok(o)
    }
}

/// A small xorshift generator: the simulation needs variety, not cryptographic randomness.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed | 1)
    }
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

struct Device {
    id: String,
    unit: &'static str,
    base_c: f64,
    drift_c: f64,
    seq: u64,
    batches: bool,
    key: Option<String>,
}

impl Device {
    /// The next reading, in the device's unit, with two decimals like a real sensor.
    fn read(&mut self, rng: &mut Rng, now_ms: u64) -> f64 {
        self.drift_c = (self.drift_c + (rng.next() - 0.5) * 0.2).clamp(-5.0, 5.0);
        let day = (now_ms % 86_400_000) as f64 / 86_400_000.0;
        let celsius = self.base_c + self.drift_c + 3.0 * (day * std::f64::consts::TAU).sin();
        let value = match self.unit {
            "F" => celsius * 9.0 / 5.0 + 32.0,
            "K" => celsius + 273.15,
            _ => celsius,
        };
        (value * 100.0).round() / 100.0
    }
}

#[derive(Default)]
struct Tally {
    sent: AtomicU64,
    accepted: AtomicU64,
    rejected: Mutex<BTreeMap<u16, u64>>,
    errors: AtomicU64,
    latencies_us: Mutex<Vec<u64>>,
    ids: Mutex<BTreeSet<String>>,
}

const NDJSON: &str = "application/x-ndjson";

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub fn run(o: &Options) -> Result<(), String> {
    let secret = match &o.auth {
        Some(_) => Some(MasterSecret::new(
            &std::env::var("AUTH_SECRET")
                .map_err(|_| "--auth needs AUTH_SECRET in the environment")?,
        )?),
        None => None,
    };
    let run_id = format!("{:04x}", now_ms() % 0x10000);
    let mut rng = Rng::new(now_ms());
    let devices: Vec<Device> = (0..o.devices)
        .map(|n| {
            let id = format!("sim-{run_id}-{n}");
            Device {
                key: secret.as_ref().map(|s| s.device_key(&id)),
                id,
                unit: ["C", "F", "K"][n % 3],
                base_c: 15.0 + rng.next() * 15.0,
                drift_c: 0.0,
                seq: 0,
                batches: n % 5 == 4,
            }
        })
        .collect();
    eprintln!(
        "sim {run_id}: {} devices, {} readings/s for {:.0} s against {}{}",
        o.devices,
        o.rate,
        o.duration.as_secs_f64(),
        o.url,
        o.auth
            .as_deref()
            .map(|m| format!(" (auth {m})"))
            .unwrap_or_default()
    );
    let tally = Arc::new(Tally::default());
    let started = Instant::now();
    let total = (o.rate * o.duration.as_secs_f64()).round() as u64;
    // Devices are dealt to threads; each thread paces its own share of the rate.
    let threads = o.threads.min(o.devices);
    let mut shares: Vec<Vec<Device>> = (0..threads).map(|_| Vec::new()).collect();
    for (i, d) in devices.into_iter().enumerate() {
        shares[i % threads].push(d);
    }
    let handles: Vec<_> = shares
        .into_iter()
        .enumerate()
        .map(|(t, mut share)| {
            let tally = tally.clone();
            let url = o.url.clone();
            let sign_host = o.sign_host.clone().unwrap_or_else(|| {
                let rest = url.split_once("://").map_or(url.as_str(), |(_, r)| r);
                rest.split('/').next().unwrap_or(rest).to_owned()
            });
            let mode = o.auth.clone();
            let per_thread_rate = o.rate * share.len() as f64 / o.devices as f64;
            let duration = o.duration;
            std::thread::spawn(move || {
                let agent = ureq::AgentBuilder::new()
                    .timeout(Duration::from_secs(10))
                    .build();
                let mut rng = Rng::new(now_ms() ^ ((t as u64 + 1) * 0x9e37_79b9));
                let interval = Duration::from_secs_f64(1.0 / per_thread_rate.max(0.001));
                let mut next = Instant::now();
                let mut k = 0usize;
                while started.elapsed() < duration {
                    let len = share.len();
                    let device = &mut share[k % len];
                    k += 1;
                    let n = if device.batches { 5 } else { 1 };
                    let to = Target {
                        url: &url,
                        sign_host: &sign_host,
                    };
                    send(&agent, &to, mode.as_deref(), device, n, &mut rng, &tally);
                    next += interval * n as u32;
                    if let Some(wait) = next.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                }
            })
        })
        .collect();
    while handles.iter().any(|h| !h.is_finished()) {
        progress(&tally, total, started);
        std::thread::sleep(Duration::from_millis(250));
    }
    for h in handles {
        let _ = h.join();
    }
    progress(&tally, total, started);
    eprintln!();
    summary(&tally, started.elapsed());
    if let Some(collector) = &o.check {
        check(collector, &run_id, o.devices, &tally)?;
    }
    Ok(())
}

/// Where requests go, and the host their signatures name.
struct Target<'a> {
    url: &'a str,
    sign_host: &'a str,
}

fn send(
    agent: &ureq::Agent,
    to: &Target<'_>,
    mode: Option<&str>,
    device: &mut Device,
    n: usize,
    rng: &mut Rng,
    tally: &Tally,
) {
    let now = now_ms();
    let (method, target, body) = if n == 1 {
        device.seq += 1;
        let temp = device.read(rng, now);
        let target = format!(
            "/v1/readings?device_id={}&temp={temp}&unit={}&ts={now}&seq={}",
            device.id, device.unit, device.seq
        );
        ("GET", target, String::new())
    } else {
        let mut body = String::new();
        for i in 0..n {
            device.seq += 1;
            let temp = device.read(rng, now);
            let ts = now - (n - 1 - i) as u64 * 1000; // a batch of the last n seconds
            body.push_str(&format!(
                "{{\"device_id\":\"{}\",\"temp\":{temp},\"unit\":\"{}\",\"ts\":{ts},\"seq\":{}}}\n",
                device.id, device.unit, device.seq
            ));
        }
        // Named in the query, so that the edge checks the token before it reads the body.
        (
            "POST",
            format!("/v1/readings?device_id={}", device.id),
            body,
        )
    };
    let mut request = agent.request(method, &format!("{}{target}", to.url));
    if let (Some(mode), Some(key)) = (mode, device.key.as_deref()) {
        let header = if mode == "hmac" {
            let (path, query) = target.split_once('?').unwrap_or((&target, ""));
            let parts = SignedParts {
                method,
                host: to.sign_host,
                path,
                query,
                content_type: if method == "POST" { NDJSON } else { "" },
                body: body.as_bytes(),
                device_hint: None,
            };
            sign(key, &device.id, &parts, now / 1000)
        } else {
            format!("Bearer {key}")
        };
        request = request.set("authorization", &header);
    }
    tally.sent.fetch_add(n as u64, Ordering::Relaxed);
    let started = Instant::now();
    let answer = if method == "GET" {
        request.call()
    } else {
        request.set("content-type", NDJSON).send_string(&body)
    };
    let micros = started.elapsed().as_micros() as u64;
    tally.latencies_us.lock().unwrap().push(micros);
    match answer {
        Ok(r) => {
            let text = r.into_string().unwrap_or_default();
            let ids = ids_of(&text);
            tally
                .accepted
                .fetch_add(ids.len() as u64, Ordering::Relaxed);
            tally.ids.lock().unwrap().extend(ids);
        }
        Err(ureq::Error::Status(status, _)) => {
            *tally.rejected.lock().unwrap().entry(status).or_default() += n as u64;
        }
        Err(_) => {
            tally.errors.fetch_add(n as u64, Ordering::Relaxed);
        }
    }
}

fn ids_of(answer: &str) -> Vec<String> {
    let value: serde_json::Value = serde_json::from_str(answer).unwrap_or_default();
    let items = match value.as_array() {
        Some(a) => a.clone(),
        None => vec![value],
    };
    items
        .iter()
        .filter_map(|r| r["id"].as_str().map(str::to_owned))
        .collect()
}

fn progress(tally: &Tally, total: u64, started: Instant) {
    let sent = tally.sent.load(Ordering::Relaxed);
    let rejected: u64 = tally.rejected.lock().unwrap().values().sum();
    let width = 30;
    let done = ((sent as f64 / total.max(1) as f64) * width as f64).min(width as f64) as usize;
    eprint!(
        "\r[{}{}] {:>6}/{total} sent  {:>6} accepted  {:>5} rejected  {:>4} errors  {:>5.1}s",
        "=".repeat(done),
        " ".repeat(width - done),
        sent,
        tally.accepted.load(Ordering::Relaxed),
        rejected,
        tally.errors.load(Ordering::Relaxed),
        started.elapsed().as_secs_f64()
    );
    let _ = std::io::stderr().flush();
}

fn summary(tally: &Tally, elapsed: Duration) {
    let mut lat = tally.latencies_us.lock().unwrap().clone();
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p).ceil() as usize).saturating_sub(1))
            .map(|us| format!("{:.1} ms", *us as f64 / 1000.0))
            .unwrap_or_else(|| "-".into())
    };
    let rejected = tally.rejected.lock().unwrap();
    let by_status: Vec<String> = rejected.iter().map(|(s, n)| format!("{s}: {n}")).collect();
    println!("readings sent      {}", tally.sent.load(Ordering::Relaxed));
    println!(
        "accepted           {}",
        tally.accepted.load(Ordering::Relaxed)
    );
    println!(
        "rejected           {} {}",
        rejected.values().sum::<u64>(),
        if by_status.is_empty() {
            String::new()
        } else {
            format!("({})", by_status.join(", "))
        }
    );
    println!(
        "transport errors   {}",
        tally.errors.load(Ordering::Relaxed)
    );
    println!(
        "requests           {} in {:.1} s ({:.1}/s)",
        lat.len(),
        elapsed.as_secs_f64(),
        lat.len() as f64 / elapsed.as_secs_f64().max(0.001)
    );
    println!(
        "latency            p50 {}  p90 {}  p99 {}  max {}",
        pct(0.50),
        pct(0.90),
        pct(0.99),
        pct(1.0)
    );
}

/// Waits (up to 30 s) until the collector holds every accepted reading of this run, then
/// reports missing and unexpected ids. Exactly once: the collector keeps one row per id, so a
/// reading stored is stored once; duplicate deliveries it absorbed are reported from its stats.
fn check(collector: &str, run_id: &str, devices: usize, tally: &Tally) -> Result<(), String> {
    let accepted = tally.ids.lock().unwrap().clone();
    let deadline = Instant::now() + Duration::from_secs(30);
    let stored = loop {
        let mut stored = BTreeSet::new();
        for n in 0..devices {
            let url = format!("{collector}/readings?device_id=sim-{run_id}-{n}&limit=1000000");
            let rows: serde_json::Value = ureq::get(&url)
                .call()
                .map_err(|e| format!("collector {url}: {e}"))?
                .into_json()
                .map_err(|e| e.to_string())?;
            for row in rows.as_array().into_iter().flatten() {
                let id = row["doc"]["id"].as_str().or(row["id"].as_str());
                if let Some(id) = id {
                    stored.insert(id.to_owned());
                }
            }
        }
        if accepted.is_subset(&stored) || Instant::now() > deadline {
            break stored;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    let missing = accepted.difference(&stored).count();
    let unexpected = stored.difference(&accepted).count();
    let stats: serde_json::Value = ureq::get(&format!("{collector}/stats"))
        .call()
        .ok()
        .and_then(|r| r.into_json().ok())
        .unwrap_or_default();
    println!(
        "collector check    {} accepted, {} stored, {missing} missing, {unexpected} unexpected (duplicate deliveries absorbed by the collector, all runs: {})",
        accepted.len(),
        stored.len(),
        stats["duplicates"]
    );
    if missing == 0 && unexpected == 0 {
        println!("exactly once       yes");
        Ok(())
    } else {
        Err(format!(
            "{missing} accepted readings missing, {unexpected} unexpected at the collector"
        ))
    }
}

//! Steady device traffic for the fault scenarios: many devices, mostly GETs and now and then an
//! NDJSON batch, sent at about a given rate with a short client timeout, as a fleet would. What
//! was acknowledged is kept, and so is every failed attempt, with when it happened.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use super::*;

pub struct Traffic {
    base: String,
    devices: usize,
    interval: Duration,
    sent: u64,
    /// Ids of every reading answered 200: what must reach the collector.
    pub accepted: BTreeSet<String>,
    /// Requests answered with something other than 200 (e.g. a 503 while a store is down).
    pub refused: u64,
    /// Requests that got no answer at all (refused connection, timeout), with when.
    pub errors: Vec<(Instant, String)>,
}

impl Traffic {
    /// `devices` devices sending `per_s` requests a second in all.
    pub fn new(base: &str, devices: usize, per_s: u32) -> Self {
        Self {
            base: base.to_owned(),
            devices,
            interval: Duration::from_secs(1) / per_s.max(1),
            sent: 0,
            accepted: BTreeSet::new(),
            refused: 0,
            errors: Vec::new(),
        }
    }

    /// One request: every tenth an NDJSON POST of 5 readings of one device, else a GET.
    pub fn send_one(&mut self) {
        let n = self.sent;
        self.sent += 1;
        let device = format!("fleet-{}", n as usize % self.devices);
        let agent = ureq::AgentBuilder::new()
            .timeout(Duration::from_secs(3))
            .build();
        let answer = if n % 10 == 9 {
            let body: String = (0..5)
                .map(|i| format!("{{\"device_id\":\"{device}\",\"temp\":{i}.5,\"seq\":{n}}}\n"))
                .collect();
            agent
                .post(&format!("{}/v1/readings", self.base))
                .set("content-type", "application/x-ndjson")
                .send_string(&body)
        } else {
            agent
                .get(&format!(
                    "{}/v1/readings?device_id={device}&temp={}.25&seq={n}",
                    self.base,
                    n % 40
                ))
                .call()
        };
        match answer {
            Ok(r) => {
                let body = r.into_string().unwrap_or_default();
                let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
                let items = v.as_array().cloned().unwrap_or_else(|| vec![v]);
                for item in items {
                    if let Some(id) = item["id"].as_str() {
                        self.accepted.insert(id.to_owned());
                    }
                }
            }
            Err(ureq::Error::Status(..)) => self.refused += 1,
            Err(e) => self.errors.push((Instant::now(), e.to_string())),
        }
    }

    /// Sends at the configured rate for `duration`.
    pub fn run_for(&mut self, duration: Duration) {
        let start = Instant::now();
        while start.elapsed() < duration {
            let next = Instant::now() + self.interval;
            self.send_one();
            if let Some(rest) = next.checked_duration_since(Instant::now()) {
                std::thread::sleep(rest);
            }
        }
    }

    /// Keeps a trickle of traffic going (one request every `every`) until every acknowledged
    /// reading is at the collector, or `timeout` passes; returns when the last one was stored
    /// (the collector's `stored_at_ms`), or None on timeout. The trickle matters on hosts that
    /// only run code when a request arrives (Spin): it is what a fleet provides anyway.
    pub fn until_delivered(
        &mut self,
        collector: &Collector,
        every: Duration,
        timeout: Duration,
    ) -> Option<u64> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            // Sent before the first look: a host that runs code only when a reading arrives
            // delivers nothing, old rows included, before one does.
            self.send_one();
            std::thread::sleep(every);
            if let Ok(stored) = collector.try_stored_ids() {
                if self.accepted.is_subset(&stored) {
                    return Some(last_stored_at(collector));
                }
            }
        }
        None
    }

    /// A line on what was sent so far, for the test's output.
    pub fn progress(&self, phase: &str) -> String {
        format!(
            "{phase}: {} requests, {} readings acknowledged, {} refused, {} unanswered",
            self.sent,
            self.accepted.len(),
            self.refused,
            self.errors.len()
        )
    }

    /// Errors after `since`: requests that got no answer while the host was meant to be up.
    pub fn errors_since(&self, since: Instant) -> Vec<&str> {
        self.errors
            .iter()
            .filter(|(at, _)| *at >= since)
            .map(|(_, e)| e.as_str())
            .collect()
    }
}

/// The latest `stored_at_ms` of any reading at the collector.
pub fn last_stored_at(collector: &Collector) -> u64 {
    get(&format!("{}/readings?limit=1000000", collector.url()))
        .json()
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["stored_at_ms"].as_u64())
        .max()
        .unwrap_or(0)
}

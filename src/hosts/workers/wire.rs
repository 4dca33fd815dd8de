//! The `accept` call (Workers RPC) between a Worker and its batcher. The body is a sequence of
//! sections, one per request: a line `#device=count device=count ...` (what the request costs
//! each device's rate limit) and then its enriched readings, one JSON document per line. Device
//! ids never hold `=`, spaces or `#`, and a reading document always starts with `{`.

use serde::{Deserialize, Serialize};

use crate::http::routes::Accepted;

/// One request's section of an `accept` body.
pub fn encode_section(accepted: &Accepted) -> String {
    let docs: usize = accepted.readings.iter().map(|r| r.json.len() + 1).sum();
    let mut body = String::with_capacity(docs + 16 * accepted.device_costs.len() + 2);
    body.push('#');
    for (i, (device, count)) in accepted.device_costs.iter().enumerate() {
        if i > 0 {
            body.push(' ');
        }
        body.push_str(device);
        body.push('=');
        body.push_str(&count.to_string());
    }
    body.push('\n');
    for r in &accepted.readings {
        body.push_str(r.json.as_str());
        body.push('\n');
    }
    body
}

pub struct Section<'a> {
    pub costs: Vec<(&'a str, u32)>,
    pub docs: Vec<&'a str>,
}

pub fn decode_sections(body: &str) -> Vec<Section<'_>> {
    let mut sections: Vec<Section<'_>> = Vec::new();
    for line in body.split('\n').filter(|l| !l.is_empty()) {
        match line.strip_prefix('#') {
            Some(header) => sections.push(Section {
                costs: header
                    .split(' ')
                    .filter_map(|pair| {
                        let (device, count) = pair.split_once('=')?;
                        Some((device, count.parse().ok()?))
                    })
                    .collect(),
                docs: Vec::new(),
            }),
            None => match sections.last_mut() {
                Some(section) => section.docs.push(line),
                // Readings before any header: a section without rate-limit costs.
                None => sections.push(Section {
                    costs: Vec::new(),
                    docs: vec![line],
                }),
            },
        }
    }
    sections
}

/// The batcher's answer to `accept`, as JSON (the RPC passes one string each way).
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum AcceptReply {
    Accepted(AcceptAnswer),
    /// Nothing was stored: the delivery backlog is full.
    BacklogFull {
        retry_after_s: u32,
        detail: String,
    },
    /// Nothing was stored: the batcher cannot work (e.g. its configuration is invalid).
    Refused {
        detail: String,
    },
}

/// What the batcher stored, and which sections (by index) it refused because a device was over
/// its rate limit, with the seconds until they would fit.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct AcceptAnswer {
    pub accepted: usize,
    pub backlog: usize,
    pub limited: Vec<(usize, u32)>,
}

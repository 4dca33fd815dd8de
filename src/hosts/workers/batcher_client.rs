//! The Worker's side of its batchers: which shard takes a request, the group-commit call by
//! Workers RPC (see `group_commit`), each request's verdict from the batcher's answer, and the
//! admin queries that fan out to every shard.

use serde_json::value::RawValue;
use wasm_bindgen::prelude::wasm_bindgen;
use wasm_bindgen::JsValue;
use worker::Env;

use super::{group_commit, wire};
use crate::application::admission::{Refused, Unavailable, Verdict};
use crate::config::Settings;
use crate::domain::enrich::EdgeInfo;
use crate::http::instance_state::StateSizes;
use crate::http::routes::{Accepted, AdminQuery};

const BATCHER_BINDING: &str = "BATCHER";

/// How many batchers (Durable Objects) each colo has.
fn shard_count(settings: &Settings) -> u32 {
    settings
        .config
        .as_ref()
        .map(|c| c.batcher_shards)
        .unwrap_or(1)
        .max(1)
}

/// The name of one batcher: its colo and shard number.
fn batcher_name(edge: &EdgeInfo, shard: u32) -> String {
    format!("{}:{shard}", edge.colo.as_deref().unwrap_or("local"))
}

/// The shard that owns a request's readings, chosen by its first device id with FNV-1a: stable
/// across isolates and releases, unlike std's randomly seeded hasher.
fn shard_of(shard_key: &str, shards: u32) -> u32 {
    let hash = shard_key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    (hash % u64::from(shards.max(1))) as u32
}

/// Waits only for the batcher's durable acceptance, never for the collector. Concurrent
/// requests in this isolate share one Durable Object call (see `group_commit`).
pub async fn hand_to_batcher(
    env: &Env,
    settings: &Settings,
    edge: &EdgeInfo,
    accepted: &Accepted,
) -> Verdict {
    let name = batcher_name(edge, shard_of(&accepted.shard_key, shard_count(settings)));
    let body = wire::encode_section(
        &accepted.device_costs,
        accepted.readings.iter().map(|r| r.json.as_str()),
    );
    let send = |body, sections| call_batcher(env, &name, &edge.node, body, sections);
    group_commit::submit(&name, body, accepted.readings.len(), send).await
}

#[wasm_bindgen]
extern "C" {
    /// A `Batcher` stub seen through Workers RPC (see `batcher::Batcher::accept_rpc`).
    type BatcherRpc;
    #[wasm_bindgen(method, catch)]
    fn accept(this: &BatcherRpc, node: &str, body: &str) -> Result<js_sys::Promise, JsValue>;
}

/// One `accept` call to a batcher with one or more requests' sections: a verdict per section.
async fn call_batcher(
    env: &Env,
    name: &str,
    node: &str,
    body: String,
    sections: usize,
) -> group_commit::GroupOutcome {
    let unreachable = |cause: String| Refused::Unavailable(Unavailable::Unreachable(cause));
    let js_error = |e: JsValue| e.as_string().unwrap_or_else(|| format!("{e:?}"));
    let stub = env
        .durable_object(BATCHER_BINDING)
        .and_then(|ns| ns.get_by_name(name))
        .map_err(|e| unreachable(e.to_string()))?
        .into_rpc::<BatcherRpc>();
    let call = stub
        .accept(node, &body)
        .map_err(|e| unreachable(js_error(e)))?;
    let reply = wasm_bindgen_futures::JsFuture::from(call)
        .await
        .map_err(|e| unreachable(js_error(e)))?
        .as_string()
        .ok_or_else(|| Refused::Fault("the batcher answered something other than text".into()))?;
    serde_json::from_str::<wire::AcceptReply>(&reply)
        .map_err(|e| Refused::Fault(e.to_string()))?
        .verdicts(sections)
}

/// Admin queries fan out to every shard of this colo's batchers.
pub async fn admin(
    env: &Env,
    settings: &Settings,
    edge: &EdgeInfo,
    query: AdminQuery,
    isolate: StateSizes,
) -> worker::Result<String> {
    let path = match query {
        AdminQuery::Stats => "/stats",
        AdminQuery::DeadLetters => "/dead-letters",
        AdminQuery::Deliver => "/deliver",
    };
    let ns = env.durable_object(BATCHER_BINDING)?;
    let mut batchers = Vec::new();
    for shard in 0..shard_count(settings) {
        let name = batcher_name(edge, shard);
        // The batcher names itself in its answer, which is passed on as it is.
        let mut answer = ns
            .get_by_name(&name)?
            .fetch_with_str(&format!("https://batcher.internal{path}?batcher={name}"))
            .await?;
        let doc = RawValue::from_string(answer.text().await?);
        batchers.push(doc.unwrap_or_else(|_| RawValue::NULL.to_owned()));
    }
    #[derive(serde::Serialize)]
    struct Admin {
        batchers: Vec<Box<RawValue>>,
        /// The group-commit lanes of the isolate that answered (an isolate's own view).
        isolate_lanes: group_commit::LaneStats,
        /// What the isolate that answered keeps between requests.
        isolate_state: StateSizes,
    }
    Ok(serde_json::to_string(&Admin {
        batchers,
        isolate_lanes: group_commit::lane_stats(),
        isolate_state: isolate,
    })?)
}

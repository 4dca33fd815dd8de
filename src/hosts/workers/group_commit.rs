//! Group commit: concurrent requests in one isolate share one call to their batcher.
//!
//! Per batcher ("lane") at most one call is in flight. A request joins the lane's open group if
//! there is one; otherwise it opens a group and owns it. The owner waits until the lane is free,
//! takes the group and sends it; every member then reads the shared outcome. Requests arriving
//! while a call is in flight gather in the next group, so under load one Durable Object call
//! carries many requests, and a request on an idle lane is sent at once.
//!
//! A group's body is a sequence of sections, one per request (see `hand_to_batcher`), and the
//! call answers each section on its own: a request refused by its device's rate limit does not
//! refuse the others in its group.
//!
//! Workers rules shape the waiting. A request may only be resumed by its own events: a promise
//! resolved by another request resumes its waiter in that other request's context, where its
//! I/O fails ("Cannot perform I/O on behalf of a different request"). So nobody wakes anybody:
//! each waiting request polls the shared state on its own timers (which are also pending I/O of
//! its own, so the runtime does not cancel it as hung), and each call is made by its group's
//! owner, a request that is still waiting for it. Waiters sleep until the lane's call is due to
//! end (its start plus the lane's typical call time), then poll every millisecond: a fixed
//! backoff (1, 2, 4, 8 ms) woke a waiter up to 8 ms after its answer was there, and left the
//! lane idle as long while the next group's owner slept.

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::rc::Rc;
use std::time::Duration;

use crate::http::problem::{Problem, ProblemType};

/// A group larger than this is not joined: the request makes its own call instead.
const MAX_GROUP_READINGS: usize = 2_000;
/// How long a request waits for its group's call before answering 503 itself; a lane whose call
/// has been out longer than this is considered lost and freed.
const WAIT_LIMIT_MS: f64 = 20_000.0;
/// Polling: never sooner than this, never later than `MAX_POLL_MS` after the last look.
const MIN_POLL_MS: f64 = 1.0;
const MAX_POLL_MS: f64 = 8.0;
/// A lane's first estimate of its call time, before it has timed one (a Durable Object round
/// trip is a few ms), and how much each timed call moves the estimate.
const FIRST_CALL_MS: f64 = 2.0;
const CALL_MS_WEIGHT: f64 = 0.2;
/// Calls on a lane start at least this far apart: per request of the last group, within
/// [MIN, MAX]. Each call is one storage commit in the batcher, a fixed cost whatever the
/// group's size. Calls by RPC take about a millisecond, and back to back they shrank groups to
/// ~1.4 requests until the commits saturated the object (p99 81 ms on workerd at 10
/// connections); under heavy load quick calls meant more commits and the object's flushes fell
/// behind. Spaced by the load they carry, groups grow with it instead.
const CALL_SPACING_PER_REQUEST_MS: f64 = 0.15;
const MIN_CALL_SPACING_MS: f64 = 1.0;
const MAX_CALL_SPACING_MS: f64 = 10.0;

/// One request's answer.
pub type Outcome = Result<(), Problem>;
/// One call's answer: an outcome per section, or one failure for all.
pub type GroupOutcome = Result<Vec<Outcome>, Problem>;
type Shared = Rc<RefCell<Option<GroupOutcome>>>;

struct Group {
    opened_at: f64,
    /// Newline-terminated reading documents (NDJSON), in arrival order.
    body: String,
    readings: usize,
    sections: usize,
    outcome: Shared,
}

struct Lane {
    /// Since when (Unix ms) a call is in flight; None when the lane is free.
    busy_since: Option<f64>,
    /// The earliest (Unix ms) the next call may start.
    next_call_at: f64,
    /// The group being gathered; its owner sends it once the lane is free.
    open: Option<Group>,
    /// Moving average of this lane's call times (ms): when the call in flight should end.
    typical_call_ms: f64,
    /// Calls made and the requests they carried, for `lane_stats`.
    calls: u64,
    requests: u64,
}

impl Default for Lane {
    fn default() -> Self {
        Lane {
            busy_since: None,
            next_call_at: 0.0,
            open: None,
            typical_call_ms: FIRST_CALL_MS,
            calls: 0,
            requests: 0,
        }
    }
}

impl Lane {
    /// How long a waiter sleeps before its next look: until the call in flight is due to end
    /// and the next may start, within [MIN_POLL_MS, MAX_POLL_MS].
    fn next_look_ms(&self, now: f64) -> u64 {
        let call_ends = self
            .busy_since
            .map_or(now, |since| since + self.typical_call_ms);
        let due_in = call_ends.max(self.next_call_at) - now;
        due_in.clamp(MIN_POLL_MS, MAX_POLL_MS).ceil() as u64
    }

    /// Whether the owner of the open group may send it now.
    fn may_call(&self, now: f64) -> bool {
        self.busy_since.is_none() && now >= self.next_call_at
    }

    fn call_ended(&mut self, now: f64) {
        if let Some(since) = self.busy_since.take() {
            self.typical_call_ms += CALL_MS_WEIGHT * ((now - since) - self.typical_call_ms);
        }
    }
}

thread_local! {
    static LANES: RefCell<HashMap<String, Lane>> = RefCell::new(HashMap::new());
}

/// This isolate's lanes: calls, requests carried, and the moving average of a call's round trip
/// (RPC plus the batcher's one-row write), for `/admin/stats`.
pub fn lane_stats() -> serde_json::Value {
    LANES.with(|lanes| {
        let lanes = lanes.borrow();
        let mut out = serde_json::Map::new();
        for (name, l) in lanes.iter() {
            out.insert(
                name.clone(),
                serde_json::json!({
                    "calls": l.calls,
                    "requests": l.requests,
                    "typical_call_ms": (l.typical_call_ms * 100.0).round() / 100.0,
                }),
            );
        }
        serde_json::Value::Object(out)
    })
}

fn with_lane<T>(name: &str, f: impl FnOnce(&mut Lane) -> T) -> T {
    LANES.with(|lanes| f(lanes.borrow_mut().entry(name.to_owned()).or_default()))
}

fn timed_out() -> Problem {
    Problem::new(
        ProblemType::UpstreamUnavailable,
        "the batcher did not answer in time; retry",
    )
    .with_retry_after(1)
}

async fn sleep_ms(ms: u64) {
    worker::Delay::from(Duration::from_millis(ms)).await;
}

enum Role {
    Owner(Shared),
    /// A member and its section's index in the group.
    Member(Shared, usize),
    Alone(String),
}

/// Sends `body` (one section of `readings` documents) to batcher `lane` together with the
/// sections of concurrent requests; `send(body, sections)` performs one call.
pub async fn submit<F, Fut>(lane: &str, body: String, readings: usize, send: F) -> Outcome
where
    F: Fn(String, usize) -> Fut,
    Fut: Future<Output = GroupOutcome>,
{
    let started = js_sys::Date::now();
    let role = with_lane(lane, |l| {
        // An open group this old lost its owner (e.g. its request was cancelled): fail it.
        if l.open
            .as_ref()
            .is_some_and(|g| started - g.opened_at > WAIT_LIMIT_MS)
        {
            if let Some(stale) = l.open.take() {
                *stale.outcome.borrow_mut() = Some(Err(timed_out()));
            }
        }
        open_or_join(l, body, readings, started)
    });
    let (outcome, section) = match role {
        Role::Alone(body) => return section_outcome(&send(body, 1).await, 0),
        Role::Member(outcome, section) => (outcome, section),
        Role::Owner(outcome) => {
            own(lane, &send, started, &outcome).await;
            (outcome, 0)
        }
    };
    loop {
        if let Some(result) = outcome.borrow().as_ref() {
            return section_outcome(result, section);
        }
        let now = js_sys::Date::now();
        if now - started > WAIT_LIMIT_MS {
            return Err(timed_out());
        }
        sleep_ms(with_lane(lane, |l| l.next_look_ms(now))).await;
    }
}

fn section_outcome(group: &GroupOutcome, section: usize) -> Outcome {
    match group {
        // Fewer answers than sections sent would be a batcher fault: refuse, never assume.
        Ok(sections) => sections
            .get(section)
            .cloned()
            .unwrap_or_else(|| Err(Problem::internal())),
        Err(problem) => Err(problem.clone()),
    }
}

fn open_or_join(l: &mut Lane, body: String, readings: usize, now: f64) -> Role {
    match l.open.as_mut() {
        Some(group) if group.readings + readings > MAX_GROUP_READINGS => Role::Alone(body),
        Some(group) => {
            group.body.push_str(&body);
            group.readings += readings;
            group.sections += 1;
            Role::Member(group.outcome.clone(), group.sections - 1)
        }
        None => {
            let outcome = Shared::default();
            l.open = Some(Group {
                opened_at: now,
                body,
                readings,
                sections: 1,
                outcome: outcome.clone(),
            });
            Role::Owner(outcome)
        }
    }
}

/// The owner of the open group: waits for a free lane, sends the group, publishes the outcome.
async fn own<F, Fut>(lane: &str, send: &F, started: f64, outcome: &Shared)
where
    F: Fn(String, usize) -> Fut,
    Fut: Future<Output = GroupOutcome>,
{
    // A free lane is taken at once (calls spaced as above); requests arriving meanwhile join
    // the next group.
    let mut wait = 0;
    let group = loop {
        if wait > 0 {
            sleep_ms(wait).await;
        }
        if outcome.borrow().is_some() {
            return; // our group was failed as stale by a later request: nothing left to send
        }
        let now = js_sys::Date::now();
        let taken = with_lane(lane, |l| {
            if l.busy_since
                .is_some_and(|since| now - since > WAIT_LIMIT_MS)
            {
                l.busy_since = None; // its call was lost (e.g. its request was cancelled)
            }
            if !l.may_call(now) {
                return None;
            }
            let group = l.open.take()?;
            l.busy_since = Some(now);
            l.calls += 1;
            l.requests += group.sections as u64;
            l.next_call_at = now
                + (group.sections as f64 * CALL_SPACING_PER_REQUEST_MS)
                    .clamp(MIN_CALL_SPACING_MS, MAX_CALL_SPACING_MS);
            Some(group)
        });
        if let Some(group) = taken {
            break group;
        }
        if now - started > WAIT_LIMIT_MS {
            // Give up: close this group so nobody else joins it; its members read the failure.
            with_lane(lane, |l| {
                if let Some(group) = l.open.take() {
                    *group.outcome.borrow_mut() = Some(Err(timed_out()));
                }
            });
            return;
        }
        wait = with_lane(lane, |l| l.next_look_ms(now));
    };
    let answer = send(group.body, group.sections).await;
    *group.outcome.borrow_mut() = Some(answer);
    let ended = js_sys::Date::now();
    with_lane(lane, |l| l.call_ended(ended));
}

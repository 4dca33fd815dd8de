//! Group commit on Workers: concurrent requests in one isolate share one call to their batcher.
//! The lane protocol (who owns a group, when a call may start, when to look again) is the
//! core's, without I/O (`application::group_commit`); this file supplies the clock, the sleeps
//! and the call.
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
//! owner, a request that is still waiting for it.

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;

use crate::application::admission::{Admitted, Refused, Unavailable, Verdict};
use crate::application::group_commit::{Lane, Role, Shared, WAIT_LIMIT_MS};

/// One call's answer: a verdict per section, or one refusal for all.
pub type GroupOutcome = Result<Vec<Admitted>, Refused>;

thread_local! {
    static LANES: RefCell<HashMap<String, Lane<GroupOutcome>>> = RefCell::new(HashMap::new());
}

/// This isolate's lanes: calls, requests carried, and the moving average of a call's round trip
/// (RPC plus the batcher's one-row write), for `/admin/stats`.
pub fn lane_stats() -> LaneStats {
    LANES.with(|lanes| {
        LaneStats(
            lanes
                .borrow()
                .iter()
                .map(|(name, l)| {
                    let stats = LaneCounts {
                        calls: l.calls,
                        requests: l.requests,
                        typical_call_ms: (l.typical_call_ms * 100.0).round() / 100.0,
                    };
                    (name.clone(), stats)
                })
                .collect(),
        )
    })
}

/// Each lane by its batcher's name, as a JSON object.
pub struct LaneStats(Vec<(String, LaneCounts)>);

#[derive(serde::Serialize)]
pub struct LaneCounts {
    calls: u64,
    requests: u64,
    typical_call_ms: f64,
}

impl serde::Serialize for LaneStats {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().map(|(name, counts)| (name, counts)))
    }
}

fn with_lane<T>(name: &str, f: impl FnOnce(&mut Lane<GroupOutcome>) -> T) -> T {
    LANES.with(|lanes| f(lanes.borrow_mut().entry(name.to_owned()).or_default()))
}

fn timed_out() -> Refused {
    Refused::Unavailable(Unavailable::TimedOut)
}

async fn sleep_ms(ms: u64) {
    crate::ports::Timer::sleep_ms(&super::WorkersTimer, ms).await;
}

/// Sends `body` (one section of `readings` documents) to batcher `lane` together with the
/// sections of concurrent requests; `send(body, sections)` performs one call.
pub async fn submit<F, Fut>(lane: &str, body: String, readings: usize, send: F) -> Verdict
where
    F: Fn(String, usize) -> Fut,
    Fut: Future<Output = GroupOutcome>,
{
    let started = js_sys::Date::now();
    let role = with_lane(lane, |l| {
        l.arrive(body, readings, started, || Err(timed_out()))
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

fn section_outcome(group: &GroupOutcome, section: usize) -> Verdict {
    match group {
        // Fewer answers than sections sent would be a batcher fault: refuse, never assume.
        Ok(sections) => sections
            .get(section)
            .copied()
            .ok_or_else(|| Refused::Fault("no verdict for this section".into())),
        Err(refused) => Err(refused.clone()),
    }
}

/// The owner of the open group: waits for a free lane, sends the group, publishes the outcome.
async fn own<F, Fut>(lane: &str, send: &F, started: f64, outcome: &Shared<GroupOutcome>)
where
    F: Fn(String, usize) -> Fut,
    Fut: Future<Output = GroupOutcome>,
{
    let mut wait = 0;
    let group = loop {
        if wait > 0 {
            sleep_ms(wait).await;
        }
        if outcome.borrow().is_some() {
            return; // our group was failed as stale by a later request: nothing left to send
        }
        let now = js_sys::Date::now();
        if let Some(group) = with_lane(lane, |l| l.take_for_call(now)) {
            break group;
        }
        if now - started > WAIT_LIMIT_MS {
            // Give up: close this group so nobody else joins it; its members read the failure.
            with_lane(lane, |l| l.give_up(Err(timed_out())));
            return;
        }
        wait = with_lane(lane, |l| l.next_look_ms(now));
    };
    let answer = send(group.body, group.sections).await;
    *group.outcome.borrow_mut() = Some(answer);
    let ended = js_sys::Date::now();
    with_lane(lane, |l| l.call_ended(ended));
}

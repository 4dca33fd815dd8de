//! Group commit: concurrent requests in one isolate share one call to their batcher.
//!
//! Per batcher ("lane") at most one call is in flight. The first request to find the lane idle
//! leads: it yields one event-loop turn (a zero-delay timer) so that requests already queued in
//! this isolate can join its group, then sends the group. A request that finds a call in flight
//! either joins the next group as a waiter or, if there is none yet, becomes that group's
//! leader-elect; when the call in flight returns, its leader answers its waiters and tells the
//! leader-elect to send the next group.
//!
//! Workers rules shape the waiting: every wait is on a JS promise that the waiting request
//! created itself (so the runtime resumes it in its own request context, where its answer must
//! be built), raced against its own timer (pending I/O of its own, so the runtime does not
//! cancel it as hung), and every call is made by a request that is still waiting for it.

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::rc::Rc;
use std::time::Duration;

use futures_util::future::{select, Either};
use wasm_bindgen::JsValue;
use wasm_bindgen_futures::JsFuture;

use crate::problem::{Problem, ProblemType};

/// A group larger than this is not joined: the request makes its own call instead.
const MAX_GROUP_READINGS: usize = 2_000;
/// How long a request waits for its group's call before answering 503 itself; a lane whose call
/// has been out longer than this is considered lost and reset.
const WAIT_LIMIT: Duration = Duration::from_secs(20);

type Outcome = Result<(), Problem>;

#[derive(Default)]
struct Group {
    /// Newline-terminated reading documents (NDJSON), in arrival order.
    body: String,
    readings: usize,
    /// Resolve functions of the members' own promises.
    waiters: Vec<js_sys::Function>,
    outcome: Rc<RefCell<Option<Outcome>>>,
}

#[derive(Default)]
struct Lane {
    /// Since when (Unix ms) a group is being gathered or sent; None when idle.
    busy_since: Option<f64>,
    next: Option<Group>,
    /// The resolve function of the next group's leader-elect.
    next_leader: Option<js_sys::Function>,
}

thread_local! {
    static LANES: RefCell<HashMap<String, Lane>> = RefCell::new(HashMap::new());
}

/// A promise this request owns, and the function that resolves it.
fn signal() -> (js_sys::Promise, js_sys::Function) {
    let mut resolve = None;
    let promise = js_sys::Promise::new(&mut |res, _rej| resolve = Some(res));
    (
        promise,
        resolve.unwrap_or_else(|| js_sys::Function::new_no_args("")),
    )
}

/// Waits for this request's own promise, or its own timer.
async fn wait(promise: js_sys::Promise) -> bool {
    let woken = Box::pin(JsFuture::from(promise));
    let timer = Box::pin(worker::Delay::from(WAIT_LIMIT));
    matches!(select(woken, timer).await, Either::Left(_))
}

fn timed_out() -> Problem {
    Problem::new(
        ProblemType::UpstreamUnavailable,
        "the batcher did not answer in time; retry",
    )
    .with_retry_after(1)
}

enum Role {
    Lead,
    LeaderElect(js_sys::Promise),
    Wait(js_sys::Promise, Rc<RefCell<Option<Outcome>>>),
    Alone(String),
}

/// Sends `body` (NDJSON of `readings` documents) to batcher `lane` together with the readings
/// of concurrent requests; `send` performs one call.
pub async fn submit<F, Fut>(lane: &str, body: String, readings: usize, send: F) -> Outcome
where
    F: Fn(String) -> Fut,
    Fut: Future<Output = Outcome>,
{
    let now = js_sys::Date::now();
    let role = LANES.with(|lanes| {
        let mut lanes = lanes.borrow_mut();
        let lane = lanes.entry(lane.to_owned()).or_default();
        if lane
            .busy_since
            .is_some_and(|since| now - since > WAIT_LIMIT.as_millis() as f64)
        {
            *lane = Lane::default(); // its call was lost (e.g. its request was cancelled)
        }
        if lane.busy_since.is_none() {
            lane.busy_since = Some(now);
            lane.next = Some(Group {
                body,
                readings,
                ..Group::default()
            });
            return Role::Lead;
        }
        let opening = lane.next.is_none();
        let group = lane.next.get_or_insert_with(Group::default);
        if group.readings + readings > MAX_GROUP_READINGS {
            return Role::Alone(body);
        }
        group.body.push_str(&body);
        group.readings += readings;
        let (promise, resolve) = signal();
        if opening {
            lane.next_leader = Some(resolve);
            Role::LeaderElect(promise)
        } else {
            group.waiters.push(resolve);
            Role::Wait(promise, group.outcome.clone())
        }
    });
    match role {
        Role::Alone(body) => send(body).await,
        Role::Lead => {
            // One timer turn for requests already queued in this isolate to join.
            worker::Delay::from(Duration::ZERO).await;
            lead(lane, &send).await
        }
        Role::LeaderElect(promise) => {
            if !wait(promise).await {
                return Err(timed_out());
            }
            lead(lane, &send).await
        }
        Role::Wait(promise, outcome) => {
            if !wait(promise).await {
                return Err(timed_out());
            }
            let result = outcome.borrow().clone();
            result.unwrap_or_else(|| Err(timed_out()))
        }
    }
}

/// Takes the lane's gathered group, sends it, answers its members, and wakes the next leader.
async fn lead<F, Fut>(lane: &str, send: &F) -> Outcome
where
    F: Fn(String) -> Fut,
    Fut: Future<Output = Outcome>,
{
    let group = LANES
        .with(|lanes| lanes.borrow_mut().get_mut(lane).and_then(|l| l.next.take()))
        .unwrap_or_default();
    let outcome = if group.body.is_empty() {
        Ok(())
    } else {
        send(group.body).await
    };
    *group.outcome.borrow_mut() = Some(outcome.clone());
    for resolve in &group.waiters {
        let _ = resolve.call0(&JsValue::NULL);
    }
    LANES.with(|lanes| {
        let mut lanes = lanes.borrow_mut();
        let Some(lane) = lanes.get_mut(lane) else {
            return;
        };
        match lane.next_leader.take() {
            Some(resolve) => {
                lane.busy_since = Some(js_sys::Date::now());
                let _ = resolve.call0(&JsValue::NULL);
            }
            None => lane.busy_since = None,
        }
    });
    outcome
}

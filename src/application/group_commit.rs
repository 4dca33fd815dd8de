//! Group commit's lane protocol, without I/O: concurrent requests of one isolate share one call
//! to their batcher (the Workers adapter, `hosts/workers/group_commit.rs`, supplies the clock,
//! the sleeps and the call itself).
//!
//! Per batcher ("lane") at most one call is in flight. A request joins the lane's open group if
//! there is one; otherwise it opens a group and owns it. The owner waits until the lane is free,
//! takes the group and sends it; every member then reads the shared outcome. Requests arriving
//! while a call is in flight gather in the next group, so under load one call carries many
//! requests, and a request on an idle lane is sent at once.
//!
//! Nobody wakes anybody (on Workers a promise resolved by another request resumes its waiter in
//! that request's context, where its I/O fails): waiters poll, sleeping until the lane's call is
//! due to end (its start plus the lane's typical call time), within [`MIN_POLL_MS`,
//! `MAX_POLL_MS`].

use std::cell::RefCell;
use std::rc::Rc;

/// A group larger than this is not joined: the request makes its own call instead.
pub const MAX_GROUP_READINGS: usize = 2_000;
/// How long a request waits for its group's call before giving up; a lane whose call has been
/// out longer than this is considered lost and freed, and an open group this old lost its owner.
pub const WAIT_LIMIT_MS: f64 = 20_000.0;
/// Polling: never sooner than this, never later than `MAX_POLL_MS` after the last look.
pub const MIN_POLL_MS: f64 = 1.0;
pub const MAX_POLL_MS: f64 = 8.0;
/// A lane's first estimate of its call time, before it has timed one (a Durable Object round
/// trip is a few ms), and how much each timed call moves the estimate.
const FIRST_CALL_MS: f64 = 2.0;
const CALL_MS_WEIGHT: f64 = 0.2;
/// Calls on a lane start at least this far apart: per request of the last group, within
/// [MIN, MAX]. Each call is one storage commit in the batcher, a fixed cost whatever the
/// group's size. Back to back, calls by RPC (about a millisecond) shrank groups to ~1.4
/// requests until the commits saturated the object (p99 81 ms on workerd at 10 connections);
/// spaced by the load they carry, groups grow with it instead.
const CALL_SPACING_PER_REQUEST_MS: f64 = 0.15;
const MIN_CALL_SPACING_MS: f64 = 1.0;
const MAX_CALL_SPACING_MS: f64 = 10.0;

/// Where a group's outcome appears for its members.
pub type Shared<O> = Rc<RefCell<Option<O>>>;

/// The requests one call will carry.
pub struct Group<O> {
    pub opened_at: f64,
    /// Newline-terminated reading documents (NDJSON), in arrival order.
    pub body: String,
    pub readings: usize,
    pub sections: usize,
    pub outcome: Shared<O>,
}

/// What a request is to its lane.
pub enum Role<O> {
    /// It opened the group: it sends it once the lane is free.
    Owner(Shared<O>),
    /// It joined a group, as this section.
    Member(Shared<O>, usize),
    /// The open group is too large to join: it makes its own call with its body.
    Alone(String),
}

/// One batcher's lane in this isolate.
pub struct Lane<O> {
    /// Since when (Unix ms) a call is in flight; None when the lane is free.
    busy_since: Option<f64>,
    /// The earliest (Unix ms) the next call may start.
    next_call_at: f64,
    /// The group being gathered; its owner sends it once the lane is free.
    open: Option<Group<O>>,
    /// Moving average of this lane's call times (ms): when the call in flight should end.
    pub typical_call_ms: f64,
    /// Calls made and the requests they carried.
    pub calls: u64,
    pub requests: u64,
}

impl<O> Default for Lane<O> {
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

impl<O> Lane<O> {
    /// A request arrives with `body` (one section of `readings` documents): it joins the open
    /// group, opens one, or goes alone. An open group older than `WAIT_LIMIT_MS` lost its owner
    /// (its request was cancelled): it is failed with `stale()` first.
    pub fn arrive(
        &mut self,
        body: String,
        readings: usize,
        now: f64,
        stale: impl FnOnce() -> O,
    ) -> Role<O> {
        if self
            .open
            .as_ref()
            .is_some_and(|g| now - g.opened_at > WAIT_LIMIT_MS)
        {
            if let Some(group) = self.open.take() {
                *group.outcome.borrow_mut() = Some(stale());
            }
        }
        match self.open.as_mut() {
            Some(group) if group.readings + readings > MAX_GROUP_READINGS => Role::Alone(body),
            Some(group) => {
                group.body.push_str(&body);
                group.readings += readings;
                group.sections += 1;
                Role::Member(group.outcome.clone(), group.sections - 1)
            }
            None => {
                let outcome = Shared::default();
                self.open = Some(Group {
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

    /// The owner's look: the open group to send now, if the lane is free and the spacing since
    /// the last call has passed (a call out longer than `WAIT_LIMIT_MS` is taken as lost). The
    /// lane is then busy until [`call_ended`](Self::call_ended).
    pub fn take_for_call(&mut self, now: f64) -> Option<Group<O>> {
        if self
            .busy_since
            .is_some_and(|since| now - since > WAIT_LIMIT_MS)
        {
            self.busy_since = None;
        }
        if self.busy_since.is_some() || now < self.next_call_at {
            return None;
        }
        let group = self.open.take()?;
        self.busy_since = Some(now);
        self.calls += 1;
        self.requests += group.sections as u64;
        self.next_call_at = now
            + (group.sections as f64 * CALL_SPACING_PER_REQUEST_MS)
                .clamp(MIN_CALL_SPACING_MS, MAX_CALL_SPACING_MS);
        Some(group)
    }

    /// The owner gives up waiting: the open group is closed so nobody else joins it, and its
    /// members read `outcome`.
    pub fn give_up(&mut self, outcome: O) {
        if let Some(group) = self.open.take() {
            *group.outcome.borrow_mut() = Some(outcome);
        }
    }

    /// The call in flight answered: the lane is free, and the call time feeds the estimate.
    pub fn call_ended(&mut self, now: f64) {
        if let Some(since) = self.busy_since.take() {
            self.typical_call_ms += CALL_MS_WEIGHT * ((now - since) - self.typical_call_ms);
        }
    }

    /// How long a waiter sleeps before its next look: until the call in flight is due to end
    /// and the next may start, within [`MIN_POLL_MS`, `MAX_POLL_MS`].
    pub fn next_look_ms(&self, now: f64) -> u64 {
        let call_ends = self
            .busy_since
            .map_or(now, |since| since + self.typical_call_ms);
        let due_in = call_ends.max(self.next_call_at) - now;
        due_in.clamp(MIN_POLL_MS, MAX_POLL_MS).ceil() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestLane = Lane<&'static str>;

    fn owner(role: Role<&'static str>) -> Shared<&'static str> {
        match role {
            Role::Owner(shared) => shared,
            _ => panic!("expected to own the group"),
        }
    }

    #[test]
    fn the_first_request_owns_and_later_ones_join_until_the_call_is_taken() {
        let mut lane = TestLane::default();
        let shared = owner(lane.arrive("a\n".into(), 1, 0.0, || "stale"));
        let Role::Member(joined, 1) = lane.arrive("b\n".into(), 2, 0.5, || "stale") else {
            panic!("expected to join as section 1");
        };
        assert!(Rc::ptr_eq(&shared, &joined));
        let group = lane
            .take_for_call(1.0)
            .expect("a free lane is taken at once");
        assert_eq!(
            (group.body.as_str(), group.readings, group.sections),
            ("a\nb\n", 3, 2)
        );
        // While the call is out, arrivals gather in the next group, which waits for the lane.
        let next = owner(lane.arrive("c\n".into(), 1, 1.5, || "stale"));
        assert!(lane.take_for_call(2.0).is_none(), "the lane is busy");
        lane.call_ended(4.0);
        assert!(
            lane.take_for_call(4.0).is_some(),
            "spacing of 1 ms has passed"
        );
        assert!(next.borrow().is_none());
        assert_eq!((lane.calls, lane.requests), (2, 3));
    }

    #[test]
    fn calls_are_spaced_by_the_load_they_carry() {
        let mut lane = TestLane::default();
        let _ = owner(lane.arrive("x\n".into(), 1, 0.0, || "stale"));
        for _ in 1..40 {
            let _ = lane.arrive("x\n".into(), 1, 0.0, || "stale");
        }
        assert!(lane.take_for_call(0.0).is_some());
        lane.call_ended(1.0);
        let _ = owner(lane.arrive("y\n".into(), 1, 1.0, || "stale"));
        // 40 requests x 0.15 ms = 6 ms after the last call started.
        assert!(lane.take_for_call(5.9).is_none());
        assert!(lane.take_for_call(6.0).is_some());
        lane.call_ended(7.0);
        // One request: the minimum of 1 ms; a huge group: at most 10 ms.
        let mut big = TestLane::default();
        let _ = big.arrive("z\n".into(), 1, 0.0, || "stale");
        for _ in 0..1_000 {
            let _ = big.arrive("z\n".into(), 1, 0.0, || "stale");
        }
        let _ = big.take_for_call(0.0);
        big.call_ended(0.5);
        let _ = big.arrive("w\n".into(), 1, 0.5, || "stale");
        assert!(big.take_for_call(9.9).is_none());
        assert!(big.take_for_call(10.0).is_some());
    }

    #[test]
    fn a_group_whose_owner_is_gone_is_failed_by_the_next_arrival() {
        let mut lane = TestLane::default();
        let lost = owner(lane.arrive("a\n".into(), 1, 0.0, || "stale"));
        // The owner's request was cancelled: nobody takes the group. 20 s later:
        let fresh = owner(lane.arrive("b\n".into(), 1, WAIT_LIMIT_MS + 1.0, || "stale"));
        assert_eq!(*lost.borrow(), Some("stale"));
        assert!(fresh.borrow().is_none());
        assert!(!Rc::ptr_eq(&lost, &fresh));
    }

    #[test]
    fn a_lost_call_frees_the_lane_after_the_wait_limit() {
        let mut lane = TestLane::default();
        let _ = lane.arrive("a\n".into(), 1, 0.0, || "stale");
        let _ = lane.take_for_call(0.0); // its answer never comes
        let _ = owner(lane.arrive("b\n".into(), 1, 1.0, || "stale"));
        assert!(lane.take_for_call(100.0).is_none());
        assert!(lane.take_for_call(WAIT_LIMIT_MS + 1.0).is_some());
    }

    #[test]
    fn a_full_group_is_not_joined_and_giving_up_fails_the_members() {
        let mut lane = TestLane::default();
        let shared = owner(lane.arrive("a\n".into(), MAX_GROUP_READINGS, 0.0, || "stale"));
        assert!(matches!(
            lane.arrive("b\n".into(), 1, 0.0, || "stale"),
            Role::Alone(_)
        ));
        lane.give_up("timed out");
        assert_eq!(*shared.borrow(), Some("timed out"));
    }

    #[test]
    fn waiters_look_when_the_call_should_end_within_bounds() {
        let mut lane = TestLane::default();
        assert_eq!(lane.next_look_ms(0.0), 1, "an idle lane: the minimum");
        let _ = lane.arrive("a\n".into(), 1, 0.0, || "stale");
        let _ = lane.take_for_call(0.0);
        assert_eq!(
            lane.next_look_ms(0.0),
            2,
            "the first estimate of a call: 2 ms"
        );
        lane.call_ended(50.0);
        assert!(lane.typical_call_ms > 2.0, "a slow call moves the estimate");
        let _ = lane.arrive("b\n".into(), 1, 50.0, || "stale");
        let _ = lane.take_for_call(51.0);
        assert_eq!(lane.next_look_ms(51.0), 8, "never later than the maximum");
    }
}

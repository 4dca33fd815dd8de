//! Listing keys never runs beside another key-value call of the same instance. Measured under
//! Spin 4.1 with its SQLite store: a `get-keys` stream still being read while another task of
//! the instance calls `set` wedges the instance, and every request Spin routes to it times out
//! (issue #12: a recovery scan listing keys beside requests writing theirs). So every call goes
//! through one gate per instance: a listing waits until no call is in flight and holds the
//! others back until it has read the whole stream. The gate polls with short sleeps rather than
//! waking waiters, since a task cannot wake another request's task (see `Wakeups::Polled`).
//!
//! Cancellation-safe: a call or listing dropped mid-way (its request's client gone) leaves the
//! gate as it found it (at 557087d a dropped `get` left the count raised, and every later
//! listing waited for ever).

use std::cell::Cell;
use std::future::Future;

use crate::ports::Timer;

/// How long a call waits between looks at the gate.
const PAUSE_MS: u64 = 1;

#[derive(Debug, Default)]
pub struct Gate {
    in_flight: Cell<usize>,
    listing: Cell<bool>,
}

/// A call in flight, until dropped.
struct InFlight<'a>(&'a Gate);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.set(self.0.in_flight.get() - 1);
    }
}

/// The listing under way, until dropped.
struct Listing<'a>(&'a Gate);

impl Drop for Listing<'_> {
    fn drop(&mut self) {
        self.0.listing.set(false);
    }
}

impl Gate {
    /// Runs one call once no listing is under way.
    pub async fn call<T, F: Future<Output = T>>(
        &self,
        timer: &impl Timer,
        f: impl FnOnce() -> F,
    ) -> T {
        while self.listing.get() {
            timer.sleep_ms(PAUSE_MS).await;
        }
        self.in_flight.set(self.in_flight.get() + 1);
        let _in_flight = InFlight(self);
        f().await
    }

    /// Runs a listing alone: after the calls in flight, before any other.
    pub async fn list<T, F: Future<Output = T>>(
        &self,
        timer: &impl Timer,
        f: impl FnOnce() -> F,
    ) -> T {
        while self.listing.replace(true) {
            timer.sleep_ms(PAUSE_MS).await; // another listing is under way
        }
        let _listing = Listing(self);
        while self.in_flight.get() > 0 {
            timer.sleep_ms(PAUSE_MS).await;
        }
        f().await
    }

    /// Calls in flight, and whether a listing is under way.
    #[cfg(test)]
    pub fn state(&self) -> (usize, bool) {
        (self.in_flight.get(), self.listing.get())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::{Context, Poll, Waker};

    struct Yield;
    impl Timer for Yield {
        async fn sleep_ms(&self, _ms: u64) {
            let mut once = false;
            std::future::poll_fn(|cx| {
                if std::mem::replace(&mut once, true) {
                    Poll::Ready(())
                } else {
                    cx.waker().wake_by_ref();
                    Poll::Pending
                }
            })
            .await
        }
    }

    /// A dropped call or listing leaves the gate free: the next listing and the next call run.
    #[test]
    fn a_call_or_listing_dropped_mid_way_leaves_the_gate_free() {
        let gate = Gate::default();
        let mut cx = Context::from_waker(Waker::noop());
        let mut get = Box::pin(gate.call(&Yield, std::future::pending::<()>));
        assert!(get.as_mut().poll(&mut cx).is_pending());
        assert_eq!(gate.state(), (1, false));
        drop(get);
        assert_eq!(gate.state(), (0, false), "the dropped call is not counted");
        let mut list = Box::pin(gate.list(&Yield, std::future::pending::<()>));
        assert!(list.as_mut().poll(&mut cx).is_pending());
        assert_eq!(gate.state(), (0, true));
        drop(list);
        assert_eq!(
            gate.state(),
            (0, false),
            "the dropped listing holds nothing back"
        );
        let listed = crate::ports::testing::run(gate.list(&Yield, || async { 7 }));
        assert_eq!(listed, 7);
    }
}

//! Waiting for slots on this replica's lanes: `pace` reserves a slot on each lane in
//! order and sleeps until it, bounded by the wait a request may make and by the limiter's
//! closing time (`Closing`); `Queued` counts the requests waiting.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::lane::Lane;
use crate::{Scope, Throttled};

/// The limiter's closing time as the lanes see it ([`Limiter::close_at`]).
pub(crate) struct Closing(watch::Receiver<Option<Instant>>);

impl Closing {
    /// The closing time as `closing` sends it.
    pub(crate) fn new(closing: watch::Receiver<Option<Instant>>) -> Closing {
        Closing(closing)
    }

    /// `max_wait` from `now`, cut short by the closing time.
    pub(crate) fn budget(&self, now: Instant, max_wait: Duration) -> Duration {
        match *self.0.borrow() {
            Some(last) => max_wait.min(last.saturating_duration_since(now)),
            None => max_wait,
        }
    }

    /// Resolves once the closing time is set before `slot`; never if it is not.
    pub(crate) async fn before(&self, slot: Instant) {
        let mut closing = self.0.clone();
        if closing
            .wait_for(|at| at.is_some_and(|last| last < slot))
            .await
            .is_err()
        {
            // The limiter is gone: nothing will close.
            std::future::pending::<()>().await;
        }
    }
}

/// Reserves a slot on each lane in order, sleeping until each; refuses at once when any
/// lane is already further behind than `max_wait` or the closing time, and, while waiting,
/// as soon as the limiter closes before the slot.
pub(crate) async fn pace(
    lanes: &[(&Lane, NonZeroU32)],
    max_wait: Duration,
    waiting: &AtomicUsize,
    closing: &Closing,
) -> Result<(), Throttled> {
    pace_from(lanes, Instant::now(), max_wait, waiting, closing).await
}

/// `pace`, with no slot before `from` (now or later): those who wait for `from` take their
/// places in line, in the order they came, before it.
pub(crate) async fn pace_from(
    lanes: &[(&Lane, NonZeroU32)],
    from: Instant,
    max_wait: Duration,
    waiting: &AtomicUsize,
    closing: &Closing,
) -> Result<(), Throttled> {
    let start = Instant::now();
    let ahead = from.saturating_duration_since(start);
    let budget = closing.budget(start, max_wait).saturating_sub(ahead);
    if let Some(refused) = furthest_behind(lanes, from, budget) {
        return Err(later(refused, ahead));
    }
    let _waiting = Queued::enter(waiting);
    for (lane, cost) in lanes {
        let now = Instant::now();
        let at = now.max(from);
        let budget = closing.budget(now, max_wait.saturating_sub(now - start));
        let ticket = lane
            .reserve(at, budget.saturating_sub(at - now), *cost)
            .map_err(|throttled| later(throttled, at - now))?;
        // A timer, even one already due, costs a tick (~1 ms): sleep only when waiting.
        if ticket.slot > now {
            until(ticket.slot, lane.scope, closing).await?;
        }
        ticket.used();
    }
    Ok(())
}

/// Of the lanes already too far behind for a slot from `from` within `budget`, the one
/// furthest behind: its wait is the one a retry must sit out (a caller told to come back
/// when the API's own lane frees would meet the app lane still full).
fn furthest_behind(
    lanes: &[(&Lane, NonZeroU32)],
    from: Instant,
    budget: Duration,
) -> Option<Throttled> {
    lanes
        .iter()
        .filter_map(|(lane, _)| lane.predict(from, budget).err())
        .max_by_key(|throttled| throttled.retry_after)
}

/// `throttled`, its wait counted `by` later.
fn later(throttled: Throttled, by: Duration) -> Throttled {
    Throttled {
        retry_after: throttled.retry_after + by,
        ..throttled
    }
}

/// Sleeps until `slot` of a lane of `scope`; refused as soon as the limiter closes before it.
async fn until(slot: Instant, scope: Scope, closing: &Closing) -> Result<(), Throttled> {
    tokio::select! {
        () = tokio::time::sleep_until(slot) => Ok(()),
        () = closing.before(slot) => Err(Throttled {
            scope,
            retry_after: slot.saturating_duration_since(Instant::now()),
        }),
    }
}

/// Counts a request as waiting for its turn for as long as it lives.
pub(crate) struct Queued<'a>(&'a AtomicUsize);

impl<'a> Queued<'a> {
    pub(crate) fn enter(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Self(count)
    }
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

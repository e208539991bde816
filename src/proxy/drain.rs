//! What a drain means for the request path: once `timgate::run` starts one, every request is
//! answered before the drain's deadline, none is cut off without a word.
//!
//! Two moments follow from the deadline. The *cut*, a little before it (a tenth of
//! `drain_timeout_ms`, at most `GRACE`): whatever still runs then is answered 503, leaving
//! time to write that answer. The *last turn*, one whole attempt (connect and upstream
//! timeouts) before the cut: a turn later than that could not be sure to finish, so a request
//! waiting for one is answered 503 at once, and a retry that would start later is not made.

use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::task::{Poll, Waker};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// The most time kept at the end of a drain for writing the answers of what it cuts.
const GRACE: Duration = Duration::from_millis(500);

/// The drain, as the request path sees it.
pub(super) struct Drain {
    /// The drain's deadline, once one has started.
    deadline: Mutex<Option<Instant>>,
    /// Wakes whatever waits for a drain to start.
    begun: Notify,
    /// Kept before the deadline for writing answers.
    grace: Duration,
    /// The longest one attempt can take.
    attempt: Duration,
    /// Requests the drain cut (answered 503 at the cut, or dropped unanswered).
    cut: AtomicUsize,
}

impl Drain {
    /// A drain of `timeout` (`server.drain_timeout_ms`), for attempts that take at most
    /// `attempt`.
    pub(super) fn new(timeout: Duration, attempt: Duration) -> Drain {
        Drain {
            deadline: Mutex::new(None),
            begun: Notify::new(),
            grace: (timeout / 10).min(GRACE),
            attempt,
            cut: AtomicUsize::new(0),
        }
    }

    /// Counts one request cut by the drain.
    pub(super) fn cut_one(&self) {
        self.cut.fetch_add(1, Ordering::Relaxed);
    }

    /// How many requests the drain has cut so far.
    pub(super) fn requests_cut(&self) -> usize {
        self.cut.load(Ordering::Relaxed)
    }

    /// The drain has started; everything must be answered by `deadline`.
    pub(super) fn start(&self, deadline: Instant) {
        // Stored before the wake-up: whoever is woken finds it.
        *self.deadline.lock().unwrap_or_else(PoisonError::into_inner) = Some(deadline);
        self.begun.notify_waiters();
    }

    /// The drain's deadline, once one has started.
    fn deadline(&self) -> Option<Instant> {
        *self.deadline.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The last moment a turn is worth having, once a drain has started.
    pub(super) fn last_turn(&self) -> Option<Instant> {
        Some(self.last_turn_of(self.deadline()?))
    }

    /// Whether a turn at `slot` would come after the last turn of a drain under way.
    pub(super) fn too_late(&self, slot: Instant) -> bool {
        self.last_turn().is_some_and(|last| slot > last)
    }

    /// Whether the drain has reached its cut: a request still running now is being cut.
    pub(super) fn over(&self) -> bool {
        self.deadline()
            .is_some_and(|deadline| Instant::now() >= self.cut_of(deadline))
    }

    /// Resolves at the last turn of a drain, never when there is none.
    pub(super) async fn past_last_turn(&self) {
        let deadline = self.started().await;
        tokio::time::sleep_until(self.last_turn_of(deadline)).await;
    }

    /// Resolves at the cut of a drain, never when there is none.
    pub(super) async fn cut(&self) {
        let deadline = self.started().await;
        tokio::time::sleep_until(self.cut_of(deadline)).await;
    }

    /// The deadline of a drain once it has started. Every request waits for this beside its
    /// work and is polled again at each of that work's wake-ups: a poll by the task that is
    /// already registered only looks at the deadline (a watch channel's wait cost some 290
    /// instructions a poll, about 1,000 a request).
    async fn started(&self) -> Instant {
        // Made before the deadline is first looked at: a drain that starts after this wakes it.
        let mut begun = pin!(self.begun.notified());
        let mut registered: Option<Waker> = None;
        std::future::poll_fn(|cx| {
            if let Some(deadline) = self.deadline() {
                return Poll::Ready(deadline);
            }
            if registered.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                return Poll::Pending;
            }
            match begun.as_mut().poll(cx) {
                Poll::Ready(()) => self.deadline().map_or(Poll::Pending, Poll::Ready),
                Poll::Pending => {
                    registered = Some(cx.waker().clone());
                    Poll::Pending
                }
            }
        })
        .await
    }

    fn cut_of(&self, deadline: Instant) -> Instant {
        deadline.checked_sub(self.grace).unwrap_or(deadline)
    }

    fn last_turn_of(&self, deadline: Instant) -> Instant {
        let cut = self.cut_of(deadline);
        cut.checked_sub(self.attempt).unwrap_or(cut)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_last_turn_leaves_one_attempt_and_the_grace_before_the_deadline() {
        let drain = Drain::new(Duration::from_secs(20), Duration::from_secs(7));
        assert_eq!(drain.last_turn(), None);
        assert!(!drain.over());
        let start = Instant::now();
        drain.start(start + Duration::from_secs(20));
        assert_eq!(
            drain.last_turn(),
            Some(start + Duration::from_millis(12_500))
        );
        drain.past_last_turn().await;
        assert_eq!(Instant::now(), start + Duration::from_millis(12_500));
        assert!(!drain.over());
        drain.cut().await;
        assert_eq!(Instant::now(), start + Duration::from_millis(19_500));
        assert!(drain.over());
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_already_waiting_is_woken_when_the_drain_starts() {
        let drain = Drain::new(Duration::from_secs(20), Duration::from_secs(7));
        let start = Instant::now();
        let mut cut = std::pin::pin!(drain.cut());
        // Polled twice before the drain starts, as a request is at each wake-up of its work.
        for _ in 0..2 {
            tokio::select! {
                biased;
                () = &mut cut => panic!("cut before any drain"),
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
        drain.start(Instant::now() + Duration::from_secs(20));
        cut.await;
        assert_eq!(Instant::now(), start + Duration::from_millis(21_500));
    }

    #[tokio::test(start_paused = true)]
    async fn a_short_drain_keeps_a_tenth_for_its_answers() {
        let drain = Drain::new(Duration::from_secs(2), Duration::from_secs(7));
        let start = Instant::now();
        drain.start(start + Duration::from_secs(2));
        drain.cut().await;
        assert_eq!(Instant::now(), start + Duration::from_millis(1_800));
        // No turn can finish in time: a waiting request is answered at once.
        assert!(drain.last_turn().unwrap() <= start);
    }
}

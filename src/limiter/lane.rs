//! One limit: GCRA pacing that hands out slots in arrival order, and the governor guard that
//! every send must pass at the moment it happens (see the parent module for the guarantee).

use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::Duration;

use governor::clock::{Clock, Reference};
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use tokio::time::Instant;

use super::{GUARD, PACE, SLOWDOWN, Scope, Throttled};

/// Passes every lane's send-time guard at one instant; any refusal waits and starts over.
/// A cell a guard admitted for a send that then waited is never reused, so real sends are
/// always a subset of what each guard admitted.
pub(super) async fn guard(lanes: &[&Lane]) {
    'again: loop {
        for lane in lanes {
            if let Err(not_until) = lane.guard.check() {
                let wait = not_until.wait_time_from(TokioClock.now());
                tokio::time::sleep(wait).await;
                continue 'again;
            }
        }
        return;
    }
}

/// Passes every lane's guard now, or says how long to wait (cells admitted before a refusal
/// are not reused, as in `guard`).
pub(super) fn try_guard(lanes: &[&Lane]) -> Result<(), Duration> {
    for lane in lanes {
        lane.guard
            .check()
            .map_err(|not_until| not_until.wait_time_from(TokioClock.now()))?;
    }
    Ok(())
}

type Guard = RateLimiter<NotKeyed, InMemoryState, TokioClock, NoOpMiddleware<TokioInstant>>;

/// One limit: its pacing state and its send-time guard.
pub(super) struct Lane {
    pub(super) scope: Scope,
    interval: Duration,
    pace: Mutex<Pace>,
    guard: Guard,
}

/// GCRA virtual-scheduling state: the theoretical arrival time of the next request.
struct Pace {
    tat: Instant,
    slow_until: Option<Instant>,
}

/// A reserved slot; returns itself to the lane if dropped unused while still the last one.
pub(super) struct Ticket<'a> {
    lane: &'a Lane,
    pub(super) slot: Instant,
    before: Instant,
    after: Instant,
    used: bool,
}

impl Ticket<'_> {
    pub(super) fn used(mut self) {
        self.used = true;
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        if !self.used {
            let mut pace = self.lane.lock();
            if pace.tat == self.after {
                pace.tat = self.before;
            }
        }
    }
}

impl Lane {
    pub(super) fn new(scope: Scope, limit: NonZeroU32) -> Lane {
        let per = |share: f64| Duration::from_secs_f64(1.0 / (f64::from(limit.get()) * share));
        let refill = (f64::from(limit.get()) * GUARD).floor() as u32;
        let burst = NonZeroU32::new(limit.get() - refill).expect("floor(0.97 L) < L for L ≥ 1");
        let quota = Quota::with_period(per(GUARD))
            .expect("a positive limit gives a positive period")
            .allow_burst(burst);
        Lane {
            scope,
            interval: per(PACE),
            pace: Mutex::new(Pace {
                tat: Instant::now(),
                slow_until: None,
            }),
            guard: RateLimiter::direct_with_clock(quota, TokioClock),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pace> {
        self.pace
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Refuses when the next free slot is already beyond `max_wait` from `now`.
    pub(super) fn predict(&self, now: Instant, max_wait: Duration) -> Result<(), Throttled> {
        let wait = self.lock().tat.saturating_duration_since(now);
        self.check(wait, max_wait)
    }

    fn check(&self, wait: Duration, max_wait: Duration) -> Result<(), Throttled> {
        if wait > max_wait {
            return Err(Throttled {
                scope: self.scope,
                retry_after: wait,
            });
        }
        Ok(())
    }

    /// Takes the next free slot at or after `now`, unless it is more than `max_wait` away.
    pub(super) fn reserve(
        &self,
        now: Instant,
        max_wait: Duration,
    ) -> Result<Ticket<'_>, Throttled> {
        let mut pace = self.lock();
        let slot = pace.tat.max(now);
        self.check(slot - now, max_wait)?;
        let slowed = pace.slow_until.is_some_and(|until| now < until);
        let interval = if slowed {
            self.interval * 2
        } else {
            self.interval
        };
        let before = pace.tat;
        pace.tat = slot + interval;
        Ok(Ticket {
            lane: self,
            slot,
            before,
            after: pace.tat,
            used: false,
        })
    }

    pub(super) fn slow_down(&self, now: Instant) {
        let mut pace = self.lock();
        pace.slow_until = Some(now + SLOWDOWN);
        // Leave a gap before the next slot as well, so the pause starts now.
        pace.tat = pace.tat.max(now) + self.interval * 2;
    }
}

/// governor's view of tokio's clock, so that paused test time drives the guard too.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TokioClock;

/// A tokio instant as governor measures it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct TokioInstant(Instant);

impl std::ops::Add<Nanos> for TokioInstant {
    type Output = TokioInstant;

    fn add(self, other: Nanos) -> TokioInstant {
        TokioInstant(self.0 + Duration::from(other))
    }
}

impl Reference for TokioInstant {
    fn duration_since(&self, earlier: Self) -> Nanos {
        self.0.saturating_duration_since(earlier.0).into()
    }

    fn saturating_sub(&self, duration: Nanos) -> Self {
        TokioInstant(self.0.checked_sub(duration.into()).unwrap_or(self.0))
    }
}

impl Clock for TokioClock {
    type Instant = TokioInstant;

    fn now(&self) -> TokioInstant {
        TokioInstant(Instant::now())
    }
}

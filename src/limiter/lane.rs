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
pub(super) async fn guard(lanes: &[(&Lane, NonZeroU32)]) {
    'again: loop {
        for (lane, cost) in lanes {
            if let Err(wait) = lane.admit(*cost) {
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
        lane.admit(NonZeroU32::MIN)?;
    }
    Ok(())
}

type Guard = RateLimiter<NotKeyed, InMemoryState, TokioClock, NoOpMiddleware<TokioInstant>>;

/// One limit: its pacing state and its send-time guard.
pub(super) struct Lane {
    pub(super) scope: Scope,
    /// Pacing time per unit.
    interval: Duration,
    /// Guard refill time per unit.
    refill: Duration,
    /// The most units one request may cost: the guard's burst.
    largest: NonZeroU32,
    pace: Mutex<Pace>,
    guard: Guard,
}

/// GCRA virtual-scheduling state: the theoretical arrival time of the next request.
struct Pace {
    tat: Instant,
    slow_until: Option<Instant>,
    /// When the guard is full again after the last send it admitted.
    guard_full: Instant,
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
    /// A lane of `limit` calls a second.
    pub(super) fn new(scope: Scope, limit: NonZeroU32) -> Lane {
        Lane::of(scope, limit, Duration::from_secs(1), NonZeroU32::MIN)
    }

    /// A lane of `limit` units per `period`, for requests of at most `largest` units.
    ///
    /// The guard is GCRA with burst b = max(L − floor(0.97 L), largest) and refill L − b per
    /// period: at most b + (L − b) = L units in any closed window of one period. With unit
    /// costs that is the rate 0.97 L; a larger b (a request may cost up to `largest`) lowers
    /// the refill, and pacing follows it at 0.96 / 0.97 of it, so the guard only bites on
    /// jitter. `largest` must be under L / 2 (the configuration sees to it).
    pub(super) fn of(
        scope: Scope,
        limit: NonZeroU32,
        period: Duration,
        largest: NonZeroU32,
    ) -> Lane {
        let units = f64::from(limit.get());
        let unit_burst = limit.get() - (units * GUARD).floor() as u32;
        let burst = NonZeroU32::new(unit_burst.max(largest.get()).min(limit.get() - 1).max(1))
            .unwrap_or(NonZeroU32::MIN);
        let (guard_rate, pace_rate) = if burst.get() == unit_burst {
            (units * GUARD, units * PACE)
        } else {
            let rate = f64::from(limit.get() - burst.get());
            (rate, rate * PACE / GUARD)
        };
        let refill = period.div_f64(guard_rate);
        let quota = Quota::with_period(refill)
            .expect("a positive limit gives a positive period")
            .allow_burst(burst);
        let now = Instant::now();
        Lane {
            scope,
            interval: period.div_f64(pace_rate),
            refill,
            largest: burst,
            pace: Mutex::new(Pace {
                tat: now,
                slow_until: None,
                guard_full: now,
            }),
            guard: RateLimiter::direct_with_clock(quota, TokioClock),
        }
    }

    /// Passes the guard with `cost` units now, or says how long to wait.
    fn admit(&self, cost: NonZeroU32) -> Result<(), Duration> {
        let checked = if cost == NonZeroU32::MIN {
            self.guard.check()
        } else {
            // `reserve` refused any cost over the burst; `min` keeps this total anyway.
            match self.guard.check_n(cost.min(self.largest)) {
                Ok(checked) => checked,
                Err(_) => self.guard.check(),
            }
        };
        checked.map_err(|not_until| not_until.wait_time_from(TokioClock.now()))?;
        let now = Instant::now();
        let mut pace = self.lock();
        pace.guard_full = pace.guard_full.max(now) + self.refill * cost.get();
        Ok(())
    }

    /// Whether the lane is as a fresh one would be at `now`: nothing reserved ahead, not
    /// slowed, its guard full. Such a lane may be handed to another key.
    pub(super) fn is_fresh(&self, now: Instant) -> bool {
        let pace = self.lock();
        pace.tat <= now && pace.guard_full <= now && pace.slow_until.is_none_or(|t| t <= now)
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
        cost: NonZeroU32,
    ) -> Result<Ticket<'_>, Throttled> {
        if cost > self.largest {
            return Err(Throttled {
                scope: self.scope,
                retry_after: self.interval * cost.get(),
            });
        }
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
        pace.tat = slot + interval * cost.get();
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

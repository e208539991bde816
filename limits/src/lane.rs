//! One limit: GCRA pacing that hands out slots in arrival order, and the governor guard that
//! every send must pass at the moment it happens (`limits/ARGUMENT.md` §1 for the guarantee).
//!
//! # A limit that changes on reload
//! A reload that keeps a lane's limit keeps the lane itself (no fresh burst). One that changes
//! it makes a *successor* ([`Lane::succeed`]) at the moment T of the switch: from then on every
//! reservation and send on the old lane is made on the successor, queued requests keeping
//! their place. For `TRANSITION` after T the successor admits a send only if the old guard
//! admits it too (a raise) or not at all (a cut); why no window then holds more than the
//! limit is in `limits/ARGUMENT.md` §3. The predecessor is let go once its transition is over.

use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use governor::clock::{Clock, Reference};
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use tokio::time::Instant;

use super::{GUARD, PACE, SLOWDOWN, SPREAD, Scope, Throttled};
use crate::timing::TRANSITION;

/// Passes every lane's send-time guard at one instant, in arrival order, by `by` at the
/// latest: each lane's gate is taken first (a fair queue, so the sends that wait behind a
/// guard go in the order they came), then any refusal waits and starts over. A send whose
/// wait would end after `by` is refused at once (`Throttled`, with the wait), so no request
/// waits at the guard longer than its turn allowed. A cell a guard admitted for a send that
/// then waited is never reused, so real sends are always a subset of what each guard admitted.
pub(super) async fn guard(lanes: &[(&Lane, NonZeroU32)], by: Instant) -> Result<(), Throttled> {
    let mut gates = Vec::with_capacity(lanes.len());
    for (lane, _) in lanes {
        gates.push(lane.gate(by).await?);
    }
    loop {
        match admit_all(lanes.iter().copied()) {
            Ok(()) => return Ok(()),
            Err((lane, wait)) => wait_until_by(lane, wait, by).await?,
        }
    }
}

/// Sleeps `wait` for `lane`'s guard, or refuses at once when that would end after `by`.
pub(super) async fn wait_until_by(
    lane: &Lane,
    wait: Duration,
    by: Instant,
) -> Result<(), Throttled> {
    if Instant::now() + wait > by {
        return Err(lane.refusal(wait));
    }
    tokio::time::sleep(wait).await;
    Ok(())
}

/// Passes every lane's guard now at its cost, or says how long to wait; also refused while
/// another send waits at a lane's gate, which goes first (cells admitted before a refusal
/// are not reused, as in `guard`).
pub(super) fn try_guard<'a>(
    lanes: impl IntoIterator<Item = (&'a Lane, NonZeroU32)> + Clone,
) -> Result<(), Duration> {
    let mut gates = Vec::new();
    for (lane, _) in lanes.clone() {
        let lane = lane.newest();
        gates.push(lane.gate.try_lock().map_err(|_| lane.refill)?);
    }
    admit_all(lanes).map_err(|(_, wait)| wait)
}

/// Passes every lane's guard now at its cost, or names the lane that refused and its wait.
pub(super) fn admit_all<'a>(
    lanes: impl IntoIterator<Item = (&'a Lane, NonZeroU32)>,
) -> Result<(), (&'a Lane, Duration)> {
    for (lane, cost) in lanes {
        lane.newest().admit(cost).map_err(|wait| (lane, wait))?;
    }
    Ok(())
}

type Guard = RateLimiter<NotKeyed, InMemoryState, TokioClock, NoOpMiddleware<TokioInstant>>;

/// One limit: its pacing state and its send-time guard.
pub(super) struct Lane {
    pub(super) scope: Scope,
    /// Units per period this lane allows.
    pub(super) limit: NonZeroU32,
    /// Pacing time per unit.
    interval: Duration,
    /// Guard refill time per unit.
    refill: Duration,
    /// The most units one request may cost: the guard's burst.
    largest: NonZeroU32,
    pace: Mutex<Pace>,
    guard: Guard,
    /// Taken by a send for as long as it waits at the guard: sends wait in a fair queue.
    gate: tokio::sync::Mutex<()>,
    /// The lane that replaced this one when a reload changed its limit.
    successor: OnceLock<Arc<Lane>>,
    /// The lane this one replaced, during the transition after the switch.
    transition: Mutex<Option<Transition>>,
}

/// The guards' window after a reload changed a lane's limit (see the module's documentation).
struct Transition {
    /// The lane replaced.
    from: Arc<Lane>,
    /// The end of the transition: the switch plus `TRANSITION`.
    until: Instant,
    /// Whether the limit was raised (or kept), rather than lowered.
    raised: bool,
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
    /// The guard is GCRA over the window W = P + `SPREAD` of period P, with burst
    /// b = max(L − floor(0.97 L × W / P), min(2, L − floor(0.97 L)), largest), refilling
    /// L − b per W: at most b + (L − b) = L units in any closed window W. With unit costs
    /// that is the rate 0.97 L per P; a larger b (kept at 2 where a window of P would give
    /// 2, or a request may cost up to `largest`) lowers the refill, and pacing follows it at
    /// 0.96 / 0.97 of it, so the guard only bites on jitter. `largest` must be under L / 2
    /// (the configuration sees to it). `fleet/script.lua`'s `shape` is the same, except that it does
    /// not keep b at 2: there a lane of 34–173 units a second has b = 1.
    pub(super) fn of(
        scope: Scope,
        limit: NonZeroU32,
        period: Duration,
        largest: NonZeroU32,
    ) -> Lane {
        let window = period + SPREAD;
        // How many cells a refill of one per `refill` adds within a closed window.
        let refilled = |refill: Duration| {
            u32::try_from(window.as_nanos() / refill.as_nanos().max(1)).unwrap_or(u32::MAX)
        };
        let units = f64::from(limit.get());
        let unit_refill = period.div_f64(units * GUARD);
        let unit_burst = limit.get().saturating_sub(refilled(unit_refill));
        // A burst of 2 tolerates a send one refill early: timers wake on whole milliseconds,
        // so without it the guard would hold back paced sends, out of order. A lane whose
        // one-period burst is 2 or more keeps that (L ≥ 34 a second), paying with its refill.
        let tolerant = (limit.get() - (units * GUARD).floor() as u32).min(2);
        let burst = unit_burst.max(tolerant).max(largest.get());
        let burst = NonZeroU32::new(burst.min(limit.get() - 1).max(1)).unwrap_or(NonZeroU32::MIN);
        let refill = if burst.get() <= unit_burst {
            unit_refill
        } else {
            // L − b cells per window, rounded up to whole nanoseconds so no more fit.
            let nanos = window
                .as_nanos()
                .div_ceil(u128::from(limit.get() - burst.get()));
            Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
        };
        debug_assert!(burst.get() + refilled(refill) <= limit.get());
        let quota = Quota::with_period(refill)
            .expect("a positive limit gives a positive period")
            .allow_burst(burst);
        let now = Instant::now();
        Lane {
            scope,
            limit,
            interval: refill.mul_f64(GUARD / PACE),
            refill,
            largest: burst,
            pace: Mutex::new(Pace {
                tat: now,
                slow_until: None,
                guard_full: now,
            }),
            guard: RateLimiter::direct_with_clock(quota, TokioClock),
            gate: tokio::sync::Mutex::new(()),
            successor: OnceLock::new(),
            transition: Mutex::new(None),
        }
    }

    /// The lane that takes over from `old` now, at `limit`: `old`'s queue and slow-down carry
    /// over, and from now on every turn and send on `old` is made on the new lane.
    pub(super) fn succeed(old: &Arc<Lane>, limit: NonZeroU32) -> Arc<Lane> {
        let old = old.newest_arc();
        let now = Instant::now();
        let lane = Lane::new(old.scope, limit);
        {
            let carried = old.lock();
            let mut pace = lane.lock();
            pace.tat = carried.tat.max(now);
            pace.slow_until = carried.slow_until;
        }
        old.let_go_of_past(now);
        *lane.lock_transition() = Some(Transition {
            from: old.clone(),
            until: now + TRANSITION,
            raised: limit >= old.limit,
        });
        let lane = Arc::new(lane);
        // `old` is the newest lane, so it has no successor yet.
        let _ = old.successor.set(lane.clone());
        lane
    }

    /// The lane that serves this one's turns now: itself, or the last of its successors.
    pub(super) fn newest(&self) -> &Lane {
        let mut lane = self;
        while let Some(next) = lane.successor.get() {
            lane = next;
        }
        lane
    }

    fn newest_arc(self: &Arc<Lane>) -> Arc<Lane> {
        let mut lane = self.clone();
        while let Some(next) = lane.successor.get().cloned() {
            lane = next;
        }
        lane
    }

    fn lock_transition(&self) -> std::sync::MutexGuard<'_, Option<Transition>> {
        self.transition
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Drops the predecessor once the transition is over, so no chain of lanes is kept.
    fn let_go_of_past(&self, now: Instant) {
        let mut transition = self.lock_transition();
        if transition.as_ref().is_some_and(|t| now > t.until) {
            *transition = None;
        }
    }

    /// Passes the guard with `cost` units now, within its transition's rule; else how long to
    /// wait before asking again. A cell admitted before a refusal is not reused.
    fn admit(&self, cost: NonZeroU32) -> Result<(), Duration> {
        let now = Instant::now();
        self.let_go_of_past(now);
        let during = self
            .lock_transition()
            .as_ref()
            .map(|t| (t.from.clone(), t.until, t.raised));
        if let Some((from, until, raised)) = during {
            if !raised {
                // Strictly after the transition's end: a tick past it.
                return Err(until - now + Duration::from_millis(1));
            }
            from.admit(cost)?;
        }
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
        let mut pace = self.lock();
        pace.guard_full = pace.guard_full.max(now) + self.refill * cost.get();
        Ok(())
    }

    /// The most units one request may cost on this lane (its guard's burst).
    pub(super) fn largest(&self) -> NonZeroU32 {
        self.newest().largest
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
        let lane = self.newest();
        let wait = lane.lock().tat.saturating_duration_since(now);
        lane.check(wait, max_wait)
    }

    /// Takes this lane's gate (see `guard`), waiting in line no later than `by`.
    pub(super) async fn gate(
        &self,
        by: Instant,
    ) -> Result<tokio::sync::MutexGuard<'_, ()>, Throttled> {
        let lane = self.newest();
        // A free gate is taken without making a timer. `try_lock` fails while others queue
        // for the gate (tokio's mutex hands a freed gate to its first waiter), so the order
        // of the queue holds.
        if let Ok(open) = lane.gate.try_lock() {
            return Ok(open);
        }
        tokio::time::timeout_at(by, lane.gate.lock())
            .await
            .map_err(|_| lane.refusal(lane.refill))
    }

    /// A refusal by this lane, whose room comes in `wait`.
    pub(super) fn refusal(&self, wait: Duration) -> Throttled {
        Throttled {
            scope: self.scope,
            retry_after: wait,
        }
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
        let lane = self.newest();
        if cost > lane.largest {
            return Err(Throttled {
                scope: lane.scope,
                retry_after: lane.interval * cost.get(),
            });
        }
        let mut pace = lane.lock();
        let slot = pace.tat.max(now);
        lane.check(slot - now, max_wait)?;
        let slowed = pace.slow_until.is_some_and(|until| now < until);
        let interval = if slowed {
            lane.interval * 2
        } else {
            lane.interval
        };
        let before = pace.tat;
        pace.tat = slot + interval * cost.get();
        Ok(Ticket {
            lane,
            slot,
            before,
            after: pace.tat,
            used: false,
        })
    }

    pub(super) fn slow_down(&self, now: Instant) {
        let lane = self.newest();
        let mut pace = lane.lock();
        pace.slow_until = Some(now + SLOWDOWN);
        // Leave a gap before the next slot as well, so the pause starts now.
        pace.tat = pace.tat.max(now) + lane.interval * 2;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(n: u32) -> NonZeroU32 {
        NonZeroU32::new(n).unwrap()
    }

    #[test]
    fn every_shape_holds_its_limit_in_its_window_and_paces_under_its_guard() {
        let (second, minute) = (Duration::from_secs(1), Duration::from_secs(60));
        for (period, largest) in [(second, 1), (minute, 1), (minute, 100), (minute, 500)] {
            for units in (2 * largest + 1).max(1)..=2_500 {
                let lane = Lane::of(Scope::App, limit(units), period, limit(largest));
                let window = (period + SPREAD).as_nanos();
                let refilled = window / lane.refill.as_nanos();
                let burst = u128::from(lane.largest.get());
                let at = format!("{units} per {period:?}, largest {largest}");
                assert!(burst + refilled <= u128::from(units), "{at}");
                assert!(lane.largest.get() >= largest.min(units - 1).max(1), "{at}");
                assert!(
                    lane.interval > lane.refill,
                    "{at}: pacing outruns the guard"
                );
                // The rate given up for the window and the burst: 0.96 L paced, 0.909 L at
                // worst (34 a second, where the burst of 2 is kept).
                let paced = period.as_secs_f64() / lane.interval.as_secs_f64();
                assert!(
                    paced >= 0.9 * f64::from(units - lane.largest.get()),
                    "{at}: {paced}"
                );
            }
        }
    }

    /// Whether every closed window of one second and `SPREAD` (the guards' window) holding a
    /// send of `after` holds at most `most` sends of `before` and `after` together.
    fn windows_with_new_sends_hold(before: &[Instant], after: &[Instant], most: usize) -> bool {
        let all: Vec<Instant> = before.iter().chain(after).copied().collect();
        let count =
            |from: Instant, to: Instant| all.iter().filter(move |t| from <= **t && **t <= to);
        let second = Duration::from_secs(1) + SPREAD;
        let ending = after.iter().map(|t| (*t - second, *t));
        let starting = all.iter().map(|t| (*t, *t + second));
        ending
            .chain(starting)
            .filter(|(from, to)| after.iter().any(|t| from <= t && t <= to))
            .all(|(from, to)| count(from, to).count() <= most)
    }

    /// Sends as fast as the guard admits for `secs`, taking turns between `lanes`.
    async fn flood(lanes: &[&Lane], secs: u64) -> Vec<Instant> {
        let end = Instant::now() + Duration::from_secs(secs);
        let mut times = Vec::new();
        for i in 0.. {
            if Instant::now() >= end {
                break;
            }
            guard(
                &[(lanes[i % lanes.len()], NonZeroU32::MIN)],
                end + Duration::from_secs(60),
            )
            .await
            .unwrap();
            times.push(Instant::now());
        }
        times
    }

    #[tokio::test(start_paused = true)]
    async fn a_changed_limit_keeps_the_new_one_in_every_second_with_a_new_send() {
        for (from, to) in [
            (100, 200),
            (200, 100),
            (10, 11),
            (11, 10),
            (1000, 7),
            (7, 1000),
        ] {
            let old = Arc::new(Lane::new(Scope::App, limit(from)));
            let before = flood(&[&old], 2).await;
            let new = Lane::succeed(&old, limit(to));
            // Requests of the old configuration still send through `old`.
            let after = flood(&[&old, &new], 3).await;
            assert!(
                windows_with_new_sends_hold(&before, &after, to as usize),
                "{from} -> {to}"
            );
            // And once the transition is over, the new limit is used.
            let settled: Vec<Instant> = after
                .iter()
                .copied()
                .filter(|t| *t > after[0] + Duration::from_secs(1))
                .collect();
            let last_second = settled
                .iter()
                .filter(|t| **t + Duration::from_secs(1) > *settled.last().unwrap())
                .count();
            // The guard refills at 0.97 L, or a little less where its window and its
            // burst of 2 take more (0.956 L at 100/s).
            assert!(
                last_second >= (to as usize * 93) / 100,
                "{from} -> {to}: {last_second}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_successor_takes_over_the_queue() {
        let old = Arc::new(Lane::new(Scope::App, limit(10)));
        let now = Instant::now();
        for _ in 0..5 {
            old.reserve(now, Duration::from_secs(10), NonZeroU32::MIN)
                .unwrap()
                .used();
        }
        let new = Lane::succeed(&old, limit(20));
        let next = new
            .reserve(now, Duration::from_secs(10), NonZeroU32::MIN)
            .unwrap();
        // Five slots at 9.6/s were taken: the next one is behind them, not at once.
        assert!(
            next.slot >= now + Duration::from_millis(520),
            "{:?}",
            next.slot - now
        );
        let via_old = old
            .reserve(now, Duration::from_secs(10), NonZeroU32::MIN)
            .unwrap();
        assert!(
            via_old.slot > next.slot,
            "the old lane's turns are made on the new one"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn sends_held_back_by_the_guard_go_in_arrival_order_and_none_past_its_bound() {
        // Twenty sends reach a guard of 10/s at once, as paced sends do after the process
        // was stopped for a while; each may wait 500 ms at most.
        let lane = Arc::new(Lane::new(Scope::App, limit(10)));
        let start = Instant::now();
        let by = start + Duration::from_millis(500);
        let mut sends = Vec::new();
        for i in 0..20 {
            let lane = lane.clone();
            sends.push(tokio::spawn(async move {
                let answer = guard(&[(&lane, NonZeroU32::MIN)], by).await;
                (i, answer, Instant::now())
            }));
            tokio::task::yield_now().await;
        }
        let mut admitted = Vec::new();
        let mut refused = Vec::new();
        for send in sends {
            let (i, answer, at) = send.await.unwrap();
            assert!(at <= by, "send {i} answered {:?} after its bound", at - by);
            match answer {
                Ok(()) => admitted.push((at, i)),
                Err(throttled) => refused.push((i, throttled)),
            }
        }
        // Those admitted went in the order they came, and were the first to come; the
        // others were refused, saying when the guard has room.
        admitted.sort();
        let order: Vec<usize> = admitted.iter().map(|(_, i)| *i).collect();
        assert_eq!(order, (0..admitted.len()).collect::<Vec<_>>());
        assert!((4..=8).contains(&admitted.len()), "{order:?}");
        assert_eq!(admitted.len() + refused.len(), 20);
        assert!(refused.iter().all(|(_, t)| t.retry_after > Duration::ZERO));
    }
}

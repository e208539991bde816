//! One app's part of the fleet: the replicas that serve the app, and its calls to Redis.
//!
//! Membership and claims are kept per app (`{key_prefix}:members:<sdkappid>` and
//! `{key_prefix}:claims:<sdkappid>`), not per `key_prefix`: the replicas that share an
//! app's lanes are exactly the ones that serve the app, so a lapsed member is subtracted
//! only from the lanes of the apps it serves, and a replica's claim (its fallback share)
//! is a part of its apps' limits alone. Two deployments that serve different apps on one
//! Redis, with the default prefix too, never change each other's lanes; two that serve the
//! same app share its limit, as they must, since Tencent counts it once. Every script call
//! carries one app's membership keys and lanes, so a replica's turns and guards go to
//! Redis in batches per app (`batch`), and it beats once per app it serves.
//!
//! A group lives as long as some app's lanes hold it (a reload that keeps the app keeps
//! the group); dropped, it gives its claims back in Redis, as a replica does on shutdown.
//! The state machine of the replica as a whole (shared, leaving, fallback) stays in
//! [`Fleet`]: Redis is reached, or lost, by the replica, not by one app.

use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::{FromRedisValue, ToSingleRedisArg};
use tokio::time::Instant;

use super::batch::{self, Kind, Wait};
use super::link::Call;
use super::mode::{Guarded, Guarding, Naming};
use super::{Ask, BEAT, FRESH, Fleet, MILLION, Reservation, TICK, WINDOW, unreachable_reply};
use crate::lane::Lane;
use crate::{Closing, Scope, Throttled};

/// One app's part of the fleet (see the module's documentation).
pub struct Group {
    pub(super) fleet: Arc<Fleet>,
    /// The members, claims and epoch keys, passed first to every call of this app.
    pub(super) common: [String; 3],
    /// This replica's claim on the app's limits and the app's member count.
    claim: Mutex<Claim>,
    /// Turns and guards waiting to go to Redis together.
    pub(super) turns: batch::Batches,
    pub(super) guards: batch::Batches,
}

/// A shared turn's first call, answered (`Group::begin`).
pub(crate) enum Begun {
    /// Every lane reserved, with no wait: the turn is granted now. `true`: the send-time
    /// guard passed in the same call, fresh.
    Granted(bool),
    /// The rest of the turn, to wait for (`Group::finish`).
    Underway(Underway),
    /// Redis is gone: use the fallback.
    Lost,
}

/// A shared turn past its first call, its slot still to come (`Group::finish`).
pub(crate) struct Underway {
    start: Instant,
    max_wait: Duration,
    next: Step,
}

/// What one turn call did.
enum Step {
    /// The first `n` lanes asked reserved, their slot `wait` after `asked`.
    Reserved {
        reservation: Reservation,
        n: usize,
        asked: Instant,
        wait: Duration,
    },
    /// No capacity now: members whose heartbeat lapsed hold all of it.
    Empty(Scope),
}

/// A turn call's refusal by lane `-n` (counted from 1) of `left`: no capacity now (`told` <
/// 0: members whose heartbeat lapsed hold all of it, this replica itself until its first
/// live beat; that passes with a beat), or a wait longer than the turn takes (`told` µs).
fn refused(left: &[Ask], n: i64, told: i64) -> Result<Step, Throttled> {
    // A reply naming no lane of this ask is not Redis's script talking.
    let scope = usize::try_from(n.unsigned_abs() - 1)
        .ok()
        .and_then(|at| left.get(at))
        .ok_or_else(unreachable_reply)?
        .scope;
    if told < 0 {
        return Ok(Step::Empty(scope));
    }
    Err(Throttled {
        scope,
        retry_after: Duration::from_micros(told as u64),
    })
}

/// Sleeps until a slot Redis reserved `wait` after `asked`. Redis's wait counts from when it
/// ran the script, somewhere in the round trip: counted from the ask, the slot comes at
/// most one round trip early. A wait under a timer tick is not slept: tokio's timer would
/// make it a whole tick (1 ms or more) on every turn that was merely behind another by
/// microseconds. Early is safe: the send-time guard in Redis, not pacing, keeps the limit.
/// A drain that closes the limiter before the slot refuses the wait at once, as a local
/// lane does (the reservation is given back when its holder drops it).
async fn until_slot(
    asked: Instant,
    wait: Duration,
    scope: Scope,
    closing: &Closing,
) -> Result<(), Throttled> {
    let wait = wait.saturating_sub(asked.elapsed());
    if wait < TICK {
        return Ok(());
    }
    let slot = Instant::now() + wait;
    tokio::select! {
        () = tokio::time::sleep(wait) => Ok(()),
        () = closing.before(slot) => Err(Throttled {
            scope,
            retry_after: wait,
        }),
    }
}

/// A turn that found no capacity (lapsed members hold it all) asks again after a beat,
/// while its budget allows and no drain closes the limiter first.
async fn again_after_beat(
    scope: Scope,
    start: Instant,
    max_wait: Duration,
    closing: &Closing,
) -> Result<(), Throttled> {
    if BEAT < max_wait.saturating_sub(start.elapsed()) {
        let again = Instant::now() + BEAT;
        tokio::select! {
            () = tokio::time::sleep_until(again) => return Ok(()),
            () = closing.before(again) => {}
        }
    }
    Err(Throttled {
        scope,
        retry_after: WINDOW,
    })
}

/// What this replica holds of one app's limits.
#[derive(Clone, Copy)]
pub(super) struct Claim {
    /// The claim it may spend in fallback (millionths).
    pub(super) held: u32,
    /// How many members Redis last reported for the app (lapsed included).
    pub(super) members: u32,
    /// Since when this app's beats find the member name held by another process.
    pub(super) naming: Naming,
}

impl Group {
    /// The group of one app, its claim at first 1/`replicas` of its limits.
    pub(super) fn new(fleet: Arc<Fleet>, sdkappid: u64, replicas: NonZeroU32) -> Group {
        let tag = &fleet.tag;
        let common = [
            format!("{tag}:members:{sdkappid}"),
            format!("{tag}:claims:{sdkappid}"),
            format!("{tag}:epoch"),
        ];
        Group {
            fleet,
            common,
            claim: Mutex::new(Claim {
                held: MILLION / replicas.get(),
                members: replicas.get(),
                naming: Naming::default(),
            }),
            turns: batch::Batches::default(),
            guards: batch::Batches::default(),
        }
    }

    pub(super) fn claim(&self) -> std::sync::MutexGuard<'_, Claim> {
        self.claim
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A call of `op` on this app's keys (its membership, its claims, the epoch) and then
    /// `keys`; its arguments follow.
    pub(super) fn prepare<'a>(
        &'a self,
        op: &str,
        keys: impl IntoIterator<Item = &'a str, IntoIter: Clone>,
    ) -> Call {
        let keys = self.common.iter().map(String::as_str).chain(keys);
        Call::new(self.fleet.link.script(), op, keys)
    }

    /// One script call of this app.
    pub(super) async fn call<'a, T: FromRedisValue>(
        &'a self,
        op: &str,
        keys: impl IntoIterator<Item = &'a str, IntoIter: Clone>,
        args: &[impl ToSingleRedisArg],
    ) -> Result<T, String> {
        let mut call = self.prepare(op, keys);
        for arg in args {
            call.arg(arg);
        }
        self.fleet.call(call).await
    }

    /// This replica's fallback share of `limit`, none once cut off for longer than `RETAIN`.
    pub(crate) fn share(&self, limit: NonZeroU32) -> Option<NonZeroU32> {
        let retained = self.fleet.lock().retained(Instant::now());
        let held = self.claim().held;
        let share = u64::from(limit.get()) * u64::from(held) / u64::from(MILLION);
        NonZeroU32::new(u32::try_from(share).unwrap_or(0)).filter(|_| retained)
    }

    /// The Redis key of one lane (`Fleet::key`).
    pub(crate) fn key(&self, sdkappid: u64, api: Option<&str>) -> String {
        self.fleet.key(sdkappid, api)
    }

    /// The Redis key of a quota's lane (`Fleet::quota_key`).
    pub(crate) fn quota_key(
        &self,
        sdkappid: u64,
        api: &str,
        index: usize,
        key: Option<&str>,
    ) -> String {
        self.fleet.quota_key(sdkappid, api, index, key)
    }

    /// Where turns are taken now (`Fleet::fallback_in`).
    pub(crate) fn fallback_in(&self) -> Option<Duration> {
        self.fleet.fallback_in()
    }

    /// `Fleet::fallback_period`.
    pub(crate) fn fallback_period(&self, period: Duration) -> (u64, Duration) {
        self.fleet.fallback_period(period)
    }

    /// `Fleet::fallback_send`.
    pub(crate) async fn fallback_send(
        &self,
        lanes: &[(&Lane, NonZeroU32, Duration)],
        by: Instant,
    ) -> Result<bool, Throttled> {
        self.fleet.fallback_send(lanes, by).await
    }

    /// A shared turn on `asks` (narrowest first), both phases: `Ok(true)` once granted,
    /// `Ok(false)` when Redis is gone (use the fallback).
    pub(crate) async fn turn(
        self: &Arc<Self>,
        asks: &[Ask],
        max_wait: Duration,
        closing: &Closing,
    ) -> Result<bool, Throttled> {
        match self.begin(asks, max_wait, false).await? {
            Begun::Granted(_) => Ok(true),
            Begun::Underway(underway) => self.finish(asks, underway, closing).await,
            Begun::Lost => Ok(false),
        }
    }

    /// A shared turn's first phase: one call that asks every lane, and, when the request
    /// holds a `ready` connection, the send-time guard too should the turn need no wait.
    pub(crate) async fn begin(
        self: &Arc<Self>,
        asks: &[Ask],
        max_wait: Duration,
        ready: bool,
    ) -> Result<Begun, Throttled> {
        let start = Instant::now();
        let Some((next, guarded)) = self.call_turn(asks, max_wait, ready).await? else {
            return Ok(Begun::Lost);
        };
        match next {
            Step::Reserved {
                mut reservation,
                n,
                asked,
                wait,
            } if n == asks.len() && wait.saturating_sub(asked.elapsed()) < TICK => {
                reservation.used = true;
                Ok(Begun::Granted(guarded))
            }
            next => Ok(Begun::Underway(Underway {
                start,
                max_wait,
                next,
            })),
        }
    }

    /// A shared turn's second phase: waits for the slot its first call reserved, and asks
    /// for the lanes left, until every lane is reserved (`Ok(true)`) or Redis is gone
    /// (`Ok(false)`). Reservations made before a refusal are given back.
    pub(crate) async fn finish(
        self: &Arc<Self>,
        asks: &[Ask],
        underway: Underway,
        closing: &Closing,
    ) -> Result<bool, Throttled> {
        let Underway {
            start,
            max_wait,
            mut next,
        } = underway;
        let (mut reserved, mut from) = (Vec::new(), 0);
        loop {
            match next {
                Step::Reserved {
                    reservation,
                    n,
                    asked,
                    wait,
                } => {
                    until_slot(asked, wait, asks[from].scope, closing).await?;
                    reserved.push(reservation);
                    from += n;
                }
                Step::Empty(scope) => again_after_beat(scope, start, max_wait, closing).await?,
            }
            if from == asks.len() {
                for reservation in &mut reserved {
                    reservation.used = true;
                }
                return Ok(true);
            }
            let budget = max_wait.saturating_sub(start.elapsed());
            next = match self.call_turn(&asks[from..], budget, false).await? {
                Some((step, _)) => step,
                None => return Ok(false),
            };
        }
    }

    /// One turn call for `left`, read: `None` when Redis is gone (counted as lost). With
    /// `guard_too`, whether the guard passed in the same call, answered fresh.
    async fn call_turn(
        self: &Arc<Self>,
        left: &[Ask],
        budget: Duration,
        guard_too: bool,
    ) -> Result<Option<(Step, bool)>, Throttled> {
        let asked = Instant::now();
        // In whole milliseconds (refusing at most one early), so that the asks of concurrent
        // requests read alike and go to Redis as one (`batch`).
        let wait = Wait {
            longest: budget.as_millis() as u64 * 1000,
            guard_too,
        };
        match self.ask(Kind::Turns, Some(wait), left).await {
            Ok(answer) => self.read(left, &answer, asked, guard_too).map(Some),
            Err(why) => {
                self.fleet.lost(&why);
                Ok(None)
            }
        }
    }

    /// A turn call's answer for `left`, asked at `asked`: the step it makes, and whether
    /// the guard asked along passed. An admission answered too late to send on is not used:
    /// the send asks the guard itself.
    fn read(
        self: &Arc<Self>,
        left: &[Ask],
        answer: &[i64],
        asked: Instant,
        guard_too: bool,
    ) -> Result<(Step, bool), Throttled> {
        let (&n, rest) = answer.split_first().ok_or_else(unreachable_reply)?;
        let n_lanes = usize::try_from(n).unwrap_or(0);
        // The guard's answer follows the turn's 1 + 2n cells.
        let guard_answer = n_lanes.checked_mul(2).and_then(|at| rest.get(at + 1));
        let guarded = guard_too
            && n >= 0
            && guard_answer == Some(&0)
            && !self.fleet.late(asked, Instant::now());
        let told = rest.first().copied().unwrap_or(0);
        if n < 0 {
            return Ok((refused(left, n, told)?, false));
        }
        let wait = Duration::from_micros(told.max(0) as u64);
        let reserved_lanes = left
            .get(..n_lanes)
            .filter(|lanes| !lanes.is_empty())
            .ok_or_else(unreachable_reply)?;
        let reservation = Reservation {
            group: self.clone(),
            keys: reserved_lanes.iter().map(|a| a.key.clone()).collect(),
            tats: rest
                .get(1..1 + 2 * n_lanes)
                .ok_or_else(unreachable_reply)?
                .to_vec(),
            used: false,
        };
        let step = Step::Reserved {
            reservation,
            n: n_lanes,
            asked,
            wait,
        };
        Ok((step, guarded))
    }

    /// The fleet-wide send-time guard for `asks`, admitting no later than `by`. `Ok(false)`:
    /// Redis is gone, so nothing may be sent on this turn.
    ///
    /// An admission answered more than `FRESH` after the ask is not sent on: the send could
    /// reach Tencent later after its admission than `SPREAD` allows against others'. It is
    /// asked again; a second such answer in a row counts as losing Redis, since a Redis that
    /// slow cannot keep the limit at the wire (capacity lost, never the limit).
    pub(crate) async fn guard(
        self: &Arc<Self>,
        asks: &[Ask],
        by: Instant,
    ) -> Result<bool, Throttled> {
        let mut guarding = Guarding::default();
        loop {
            let asked = Instant::now();
            let wait = match self.ask(Kind::Guards, None, asks).await {
                Ok(wait) => Duration::from_micros(wait.first().copied().unwrap_or(0).max(0) as u64),
                Err(why) => {
                    self.fleet.lost(&why);
                    return Ok(false);
                }
            };
            let answered = Instant::now();
            // Counted when late; what follows from it is `Guarding`'s to say.
            self.fleet.late(asked, answered);
            match guarding.answered(asked, answered, wait) {
                Guarded::Send => return Ok(true),
                Guarded::Again => {}
                Guarded::Lost => {
                    self.fleet.lost(&format!(
                        "two send-time guards in a row answered after more than {} ms",
                        FRESH.as_millis()
                    ));
                    return Ok(false);
                }
                Guarded::Wait(wait) if Instant::now() + wait > by => {
                    return Err(Throttled {
                        scope: Scope::App,
                        retry_after: wait,
                    });
                }
                Guarded::Wait(wait) => tokio::time::sleep(wait).await,
            }
        }
    }

    /// Tencent said too fast: slow the shared lane for every replica.
    pub(crate) fn slow_down(self: &Arc<Self>, key: Arc<str>, limit: NonZeroU32) {
        let group = self.clone();
        tokio::spawn(async move {
            if let Err(why) = group.call::<i64>("slow", [&*key], &[limit]).await {
                group.fleet.lost(&why);
            }
        });
    }
}

impl Drop for Group {
    /// The app is no longer served here: its claim goes back, as on shutdown.
    fn drop(&mut self) {
        let mut call = self.prepare("leave", []);
        for arg in self.fleet.leave_args() {
            call.arg(arg);
        }
        let fleet = self.fleet.clone();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = fleet.call::<i64>(call).await;
            });
        }
    }
}

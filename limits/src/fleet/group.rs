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

use redis::FromRedisValue;
use tokio::time::Instant;

use super::batch::{self, Kind, Wait};
use super::{
    Ask, BEAT, EXPIRY, FRESH, Fleet, MARGIN, MILLION, RETAIN, Reservation, TICK, WINDOW,
    unreachable_reply,
};
use crate::lane::Lane;
use crate::{Scope, Throttled};

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

/// What this replica holds of one app's limits.
#[derive(Clone, Copy)]
pub(super) struct Claim {
    /// The claim it may spend in fallback (millionths).
    pub(super) held: u32,
    /// How many members Redis last reported for the app (lapsed included).
    pub(super) members: u32,
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

    /// One script call of this app.
    pub(super) async fn call<T: FromRedisValue + Send + 'static>(
        &self,
        op: &str,
        keys: &[String],
        args: &[String],
    ) -> Result<T, String> {
        self.fleet.call(&self.common, op, keys, args).await
    }

    /// This replica's fallback share of `limit`, none once cut off for longer than `RETAIN`.
    pub(crate) fn share(&self, limit: NonZeroU32) -> Option<NonZeroU32> {
        let retained = self
            .fleet
            .lock()
            .contact
            .is_none_or(|at| at.elapsed() + EXPIRY + MARGIN < RETAIN);
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

    /// Waits for a shared turn on `asks` (narrowest first). `Ok(None)`: Redis is gone, use
    /// the fallback. `Ok(Some(true))`: the turn came at once and its send-time guard passed
    /// in the same call, asked because the request `held` a ready connection; it is to be
    /// sent at once. Otherwise `held` is dropped before any wait (a connection is not kept
    /// from others while its request waits) and the send asks the guard itself.
    pub(crate) async fn turn<T>(
        self: &Arc<Self>,
        asks: &[Ask],
        max_wait: Duration,
        closing: &crate::Closing,
        held: &mut Option<T>,
    ) -> Result<Option<bool>, Throttled> {
        let start = Instant::now();
        let mut reserved = Vec::new();
        let mut from = 0;
        let mut guarded = false;
        while from < asks.len() {
            let left = &asks[from..];
            let budget = max_wait.saturating_sub(start.elapsed());
            let asked = Instant::now();
            // In whole milliseconds (refusing at most one early), so that the asks of
            // concurrent requests read alike and go to Redis as one (`batch`). The guard
            // goes along only on the first call, which asks every lane.
            let wait = Wait {
                longest: budget.as_millis() as u64 * 1000,
                guard_too: held.is_some() && from == 0,
            };
            let answer = self.ask(Kind::Turns, Some(wait), left).await;
            let answer = match answer {
                Ok(answer) => answer,
                Err(why) => {
                    *held = None;
                    self.fleet.lost(&why);
                    return Ok(None);
                }
            };
            let (&n, rest) = answer.split_first().ok_or_else(unreachable_reply)?;
            let n_lanes = usize::try_from(n).unwrap_or(0);
            // The guard's answer follows the turn's 1 + 2n cells.
            let guard_answer = n_lanes.checked_mul(2).and_then(|at| rest.get(at + 1));
            // An admission answered too late to send on is not used: the send asks the
            // guard itself.
            guarded =
                wait.guard_too && n >= 0 && guard_answer == Some(&0) && !self.fleet.late(asked);
            if !guarded {
                *held = None;
            }
            let told = rest.first().copied().unwrap_or(0);
            let wait = Duration::from_micros(told.max(0) as u64);
            if n < 0 {
                // A reply naming no lane of this ask is not Redis's script talking.
                let scope = usize::try_from(n.unsigned_abs() - 1)
                    .ok()
                    .and_then(|at| left.get(at))
                    .ok_or_else(unreachable_reply)?
                    .scope;
                // No capacity now: members whose heartbeat lapsed hold all of it (this
                // replica itself, until its first live beat). That passes with a beat:
                // ask again after one while the budget allows.
                if told < 0 && BEAT < max_wait.saturating_sub(start.elapsed()) {
                    let again = Instant::now() + BEAT;
                    tokio::select! {
                        () = tokio::time::sleep_until(again) => continue,
                        () = closing.before(again) => {}
                    }
                }
                return Err(Throttled {
                    scope,
                    retry_after: if told < 0 { WINDOW } else { wait },
                });
            }
            let n = n_lanes;
            let reserved_lanes = left
                .get(..n)
                .filter(|lanes| !lanes.is_empty())
                .ok_or_else(unreachable_reply)?;
            let reservation = Reservation {
                group: self.clone(),
                keys: reserved_lanes.iter().map(|a| a.key.clone()).collect(),
                tats: rest
                    .get(1..1 + 2 * n)
                    .ok_or_else(unreachable_reply)?
                    .to_vec(),
                used: false,
            };
            // Redis's wait counts from when it ran the script, somewhere in the round trip:
            // counted from the ask, the slot comes at most one round trip early. A wait under
            // a timer tick is not slept: tokio's timer would make it a whole tick (1 ms or
            // more) on every turn that was merely behind another by microseconds. Early is
            // safe: the send-time guard in Redis, not pacing, keeps the limit.
            // A drain that closes the limiter before the slot refuses the wait at once, as
            // a local lane does (the reservation is given back).
            let wait = wait.saturating_sub(asked.elapsed());
            if wait >= TICK {
                let slot = Instant::now() + wait;
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = closing.before(slot) => {
                        return Err(Throttled {
                            scope: left[0].scope,
                            retry_after: wait,
                        });
                    }
                }
            }
            reserved.push(reservation);
            from += n;
        }
        for reservation in &mut reserved {
            reservation.used = true;
        }
        Ok(Some(guarded))
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
        let mut stale = false;
        loop {
            let asked = Instant::now();
            let wait = match self.ask(Kind::Guards, None, asks).await {
                Ok(wait) => Duration::from_micros(wait.first().copied().unwrap_or(0).max(0) as u64),
                Err(why) => {
                    self.fleet.lost(&why);
                    return Ok(false);
                }
            };
            let late = self.fleet.late(asked);
            if late && stale {
                self.fleet.lost(&format!(
                    "two send-time guards in a row answered after more than {} ms",
                    FRESH.as_millis()
                ));
                return Ok(false);
            }
            stale = late;
            if wait.is_zero() {
                if !late {
                    return Ok(true);
                }
                continue;
            }
            if Instant::now() + wait > by {
                return Err(Throttled {
                    scope: Scope::App,
                    retry_after: wait,
                });
            }
            tokio::time::sleep(wait).await;
        }
    }

    /// Tencent said too fast: slow the shared lane for every replica.
    pub(crate) fn slow_down(self: &Arc<Self>, key: String, limit: NonZeroU32) {
        let group = self.clone();
        tokio::spawn(async move {
            if let Err(why) = group
                .call::<i64>("slow", &[key], &[limit.get().to_string()])
                .await
            {
                group.fleet.lost(&why);
            }
        });
    }
}

impl Drop for Group {
    /// The app is no longer served here: its claim goes back, as on shutdown.
    fn drop(&mut self) {
        let (fleet, common) = (self.fleet.clone(), self.common.clone());
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let id = fleet.id.clone();
                let _ = fleet.call::<i64>(&common, "leave", &[], &[id]).await;
            });
        }
    }
}

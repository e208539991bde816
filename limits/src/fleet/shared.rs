//! The fleet as a backend of the lanes: one app's lanes shared through Redis, with this
//! replica's own lanes in front and its fallback share behind (`AppBackend::Fleet`).
//!
//! A turn's first Redis call is made by `Shared::ask` (with the send-time guard in the same
//! call when the caller is ready and the turn needs no wait); the rest of the turn, or the
//! fallback share's while Redis is gone, is the wait it answers. `Shared::send` is the
//! fleet's send-time guard, after this replica's own.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::{Ask, Begun, Fleet, Group, Underway};
use crate::lane::Lane;
use crate::limit::{ApiLanes, Limit, QuotaLanes};
use crate::pace::{Queued, pace, pace_from};
use crate::share;
use crate::spec::AppSpec;
use crate::table::{DEFAULT_API_RATE, Quota};
use crate::{Asked, Lanes, Measured, Scope, Throttled, Turn, Waiting};

/// One app's part of the fleet, as its lanes see it.
pub(crate) struct Shared {
    sdkappid: u64,
    group: Arc<Group>,
    /// The implicit per-API lanes kept in Redis: only for an app whose own limit is above
    /// `DEFAULT_API_RATE` (at or below it, the app lane is the stricter and suffices).
    implicit: Option<Arc<SharedImplicit>>,
}

impl Shared {
    /// `app`'s part of `fleet`, keeping the implicit lanes of `previous` (the app's before
    /// a reload).
    pub(crate) fn new(fleet: &Arc<Fleet>, app: &AppSpec, previous: Option<&Shared>) -> Shared {
        let implicit = (app.rate_limit.get() > DEFAULT_API_RATE).then(|| {
            previous
                .and_then(|p| p.implicit.clone())
                .unwrap_or_else(|| Arc::new(SharedImplicit::new(app.sdkappid)))
        });
        Shared {
            sdkappid: app.sdkappid,
            group: fleet.group(app.sdkappid),
            implicit,
        }
    }

    /// The implicit lane of `api` in Redis, when the app keeps them there.
    pub(crate) fn implicit(
        &self,
        api: &str,
        now: Instant,
    ) -> Result<Option<Arc<Limit>>, Throttled> {
        self.implicit
            .as_ref()
            .map(|shared| shared.limit(&self.group, api, now))
            .transpose()
    }

    /// Each quota's lane in Redis: the quota's, or the key's within it.
    pub(crate) fn quota_asks(&self, lanes: &ApiLanes, measured: &[Measured]) -> Vec<Ask> {
        let ask = |(i, quota): (usize, &Quota)| {
            let measured = measured.get(i);
            let key = quota
                .key
                .as_ref()
                .map(|_| measured.and_then(|m| m.key.as_deref()).unwrap_or(""));
            Ask {
                key: self
                    .group
                    .quota_key(self.sdkappid, &quota.api, i, key)
                    .into(),
                limit: quota.rate,
                scope: Scope::Api,
                period: quota.per.period(),
                cost: measured.map_or(NonZeroU32::MIN, |m| m.cost),
                largest: quota.largest_cost(),
            }
        };
        lanes.quotas.iter().enumerate().map(ask).collect()
    }

    /// Whether a turn without lanes of this replica's own may pass its send-time guard in
    /// its first call: while Redis is reached.
    pub(crate) fn guards_with_turn(&self) -> bool {
        self.group.fallback_in().is_none()
    }

    /// The first phase of a turn: its first Redis call when it has no lane of this
    /// replica's own and Redis is reached, else the whole wait.
    pub(crate) async fn ask<'a>(
        &'a self,
        lanes: &'a Lanes,
        mut turn: Turn<'a>,
        ready: bool,
    ) -> Result<Asked<'a>, Throttled> {
        let max_wait = turn.max_wait;
        if !turn.local.is_empty() || self.group.fallback_in().is_some() {
            return Ok(self.waiting(lanes, turn, None, max_wait));
        }
        let start = Instant::now();
        let begun = {
            let _waiting = Queued::enter(&lanes.waiting);
            let budget = lanes.closing.budget(start, max_wait);
            self.group.begin(&asks(&turn), budget, ready).await?
        };
        let left = max_wait.saturating_sub(start.elapsed());
        match begun {
            Begun::Granted(guarded) => {
                turn.guarded = guarded;
                Ok(Asked::Granted(turn))
            }
            Begun::Underway(underway) => Ok(self.waiting(lanes, turn, Some(underway), left)),
            Begun::Lost => Ok(self.waiting(lanes, turn, None, left)),
        }
    }

    fn waiting<'a>(
        &'a self,
        lanes: &'a Lanes,
        turn: Turn<'a>,
        underway: Option<Underway>,
        max_wait: Duration,
    ) -> Asked<'a> {
        Asked::Waiting(Waiting::new(self.wait(lanes, turn, underway, max_wait)))
    }

    /// The wait for a turn, no longer than `max_wait`: this replica's own lanes first, then
    /// Redis's (the rest of a turn `underway` there), or the fallback share's while Redis is
    /// gone.
    async fn wait<'a>(
        &'a self,
        lanes: &'a Lanes,
        turn: Turn<'a>,
        underway: Option<Underway>,
        max_wait: Duration,
    ) -> Result<Turn<'a>, Throttled> {
        let start = Instant::now();
        let local: Vec<(&Lane, NonZeroU32)> = turn.local.iter().map(|(l, c)| (&**l, *c)).collect();
        pace(&local, max_wait, &lanes.waiting, &lanes.closing).await?;
        let budget = max_wait.saturating_sub(start.elapsed());
        self.shared(lanes, &turn, budget, underway).await?;
        Ok(turn)
    }

    /// A turn in Redis (going on from `underway` when its first call was made), or on this
    /// replica's share while Redis is gone.
    async fn shared(
        &self,
        lanes: &Lanes,
        turn: &Turn<'_>,
        max_wait: Duration,
        mut underway: Option<Underway>,
    ) -> Result<(), Throttled> {
        let start = Instant::now();
        let _waiting = Queued::enter(&lanes.waiting);
        loop {
            if let Some(underway) = underway.take() {
                if self
                    .group
                    .finish(&asks(turn), underway, &lanes.closing)
                    .await?
                {
                    return Ok(());
                }
                continue;
            }
            let budget = lanes
                .closing
                .budget(Instant::now(), max_wait.saturating_sub(start.elapsed()));
            match self.group.fallback_in() {
                None => {
                    if self.group.turn(&asks(turn), budget, &lanes.closing).await? {
                        return Ok(());
                    }
                }
                Some(wait) if wait > budget => {
                    return Err(Throttled {
                        scope: Scope::App,
                        retry_after: wait,
                    });
                }
                Some(wait) => match self.on_share(lanes, turn, wait, budget).await? {
                    true => return Ok(()),
                    false => continue,
                },
            }
        }
    }

    /// A turn on this replica's fallback share, which may be spent `wait` from now: `false`
    /// when a quota over a longer window may not be spent yet (ask again after that wait).
    async fn on_share(
        &self,
        lanes: &Lanes,
        turn: &Turn<'_>,
        wait: Duration,
        budget: Duration,
    ) -> Result<bool, Throttled> {
        let fallback = match self.fallback_lanes(turn) {
            Ok(fallback) => fallback,
            Err(throttled) if throttled.retry_after < budget => {
                tokio::time::sleep(throttled.retry_after).await;
                return Ok(false);
            }
            Err(throttled) => return Err(throttled),
        };
        let fallback: Vec<(&Lane, NonZeroU32)> =
            fallback.iter().map(|(l, c, _)| (&**l, *c)).collect();
        // In line from when the share may be spent: the requests that wait for it keep
        // their order, and do not all wake at that moment.
        let from = Instant::now() + wait;
        let waiting = std::sync::atomic::AtomicUsize::new(0);
        pace_from(&fallback, from, budget, &waiting, &lanes.closing).await?;
        Ok(true)
    }

    /// The fleet's send-time guard for `turn`, by `by`: Redis's, or this replica's share's
    /// while Redis is gone.
    pub(crate) async fn send(&self, turn: &Turn<'_>, by: Instant) -> Result<(), Throttled> {
        loop {
            match self.group.fallback_in() {
                None => {
                    if self.group.guard(&asks(turn), by).await? {
                        return Ok(());
                    }
                }
                Some(wait) if !wait.is_zero() => {
                    return Err(Throttled {
                        scope: Scope::App,
                        retry_after: wait,
                    });
                }
                Some(_) => {
                    let lanes = self.fallback_lanes(turn)?;
                    let lanes: Vec<(&Lane, NonZeroU32, Duration)> =
                        lanes.iter().map(|(l, c, p)| (&**l, *c, *p)).collect();
                    if self.group.fallback_send(&lanes, by).await? {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// The lanes at this replica's fallback share that `turn` passes, with its cost and
    /// each lane's window; `Throttled` when a share is nothing or may not be spent yet.
    fn fallback_lanes(
        &self,
        turn: &Turn<'_>,
    ) -> Result<Vec<(Arc<Lane>, NonZeroU32, Duration)>, Throttled> {
        let second = Duration::from_secs(1);
        let mut lanes = Vec::new();
        if let Some(entry) = turn.entry.filter(|e| !e.quotas.is_empty()) {
            let now = Instant::now();
            let mut generation = 0;
            for ask in &turn.quotas {
                let (made, wait) = self.group.fallback_period(ask.period);
                if !wait.is_zero() {
                    return Err(Throttled {
                        scope: Scope::Api,
                        retry_after: wait,
                    });
                }
                generation = made;
            }
            let quota_lanes = self.quota_fallback(entry, generation)?;
            // A keyed quota's lanes here are keyed by the lane's Redis key, one per value.
            for (quota_lanes, ask) in quota_lanes.iter().zip(&turn.quotas) {
                let lane = quota_lanes.lane(Some(&*ask.key), now)?;
                lanes.push((lane, ask.cost, ask.period));
            }
        }
        share::fits(&lanes)?;
        for limit in turn.limits() {
            lanes.push((self.fallback(limit)?, NonZeroU32::MIN, second));
        }
        Ok(lanes)
    }

    /// `limit`'s lane at this replica's share now; `Throttled` when the share is nothing.
    fn fallback(&self, limit: &Limit) -> Result<Arc<Lane>, Throttled> {
        let share = self.group.share(limit.limit()).ok_or(Throttled {
            scope: limit.lane.scope,
            retry_after: Duration::from_secs(1),
        })?;
        let mut fallback = limit
            .fallback
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match &*fallback {
            Some((n, lane)) if *n == share => Ok(lane.clone()),
            Some((_, before)) => {
                // A new share takes over the old one's sends, as a reloaded limit does.
                let lane = Lane::succeed(before, share);
                *fallback = Some((share, lane.clone()));
                Ok(lane)
            }
            None => {
                let lane = Arc::new(Lane::new(limit.lane.scope, share));
                *fallback = Some((share, lane.clone()));
                Ok(lane)
            }
        }
    }

    /// `entry`'s quotas' lanes at this replica's share for the loss of Redis `generation`,
    /// made afresh for each; `Throttled` when the share of one is nothing.
    fn quota_fallback(
        &self,
        entry: &ApiLanes,
        generation: u64,
    ) -> Result<Vec<Arc<QuotaLanes>>, Throttled> {
        let mut fallback = entry
            .fallback
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((made, lanes)) = &*fallback
            && *made == generation
        {
            return Ok(lanes.clone());
        }
        let lanes = entry
            .quotas
            .iter()
            .map(|quota| {
                let share = self.group.share(quota.rate).ok_or_else(share::too_small)?;
                Ok(Arc::new(QuotaLanes::new(
                    &share::quota(quota, share),
                    share,
                )))
            })
            .collect::<Result<Vec<_>, Throttled>>()?;
        *fallback = Some((generation, lanes.clone()));
        Ok(lanes)
    }

    /// Tencent said an API without a calls limit of its own is too fast: its implicit lane
    /// in Redis slows, or, when the app keeps none, the app's lane (`app`) does.
    pub(crate) fn slow_implicit(&self, api: &str, app: &Limit) {
        let shared = self
            .implicit
            .as_ref()
            .and_then(|shared| shared.limit(&self.group, api, Instant::now()).ok());
        let limit = shared.as_deref().unwrap_or(app);
        limit.lane.slow_down(Instant::now());
        self.slow_down(limit);
    }

    /// Tencent said `limit` is over: slow it for every replica, and its fallback lane here.
    pub(crate) fn slow_down(&self, limit: &Limit) {
        self.group.slow_down(limit.key.clone(), limit.limit());
        if let Ok(lane) = self.fallback(limit) {
            lane.slow_down(Instant::now());
        }
    }
}

/// What `turn` asks of Redis, narrowest first.
fn asks(turn: &Turn<'_>) -> Vec<Ask> {
    let mut asks: Vec<Ask> = turn.caller.map(ask).into_iter().collect();
    asks.extend(turn.quotas.iter().cloned());
    asks.extend(turn.api.as_deref().into_iter().chain([turn.app]).map(ask));
    asks
}

/// What a calls limit asks of Redis.
fn ask(limit: &Limit) -> Ask {
    Ask::calls(limit.key.clone(), limit.limit(), limit.lane.scope)
}

/// The most implicit per-API lanes an app keeps for the fleet at once.
const SHARED_IMPLICIT_MOST: usize = 1024;

/// One app's implicit per-API lanes in a fleet, by API name: each a `Limit` at
/// `DEFAULT_API_RATE` on the API's Redis key. At most `SHARED_IMPLICIT_MOST`: past that, the
/// lanes no turn holds and as a fresh one would be are dropped (exact, as in `keyed`); when
/// every lane is busy, a new API is refused (429) as if its lane were full.
pub(crate) struct SharedImplicit {
    sdkappid: u64,
    limits: Mutex<HashMap<String, Arc<Limit>>>,
}

impl SharedImplicit {
    fn new(sdkappid: u64) -> SharedImplicit {
        SharedImplicit {
            sdkappid,
            limits: Mutex::default(),
        }
    }

    fn limit(&self, group: &Group, api: &str, now: Instant) -> Result<Arc<Limit>, Throttled> {
        let mut limits = self
            .limits
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(limit) = limits.get(api) {
            return Ok(limit.clone());
        }
        let default = NonZeroU32::new(DEFAULT_API_RATE).unwrap_or(NonZeroU32::MIN);
        if limits.len() >= SHARED_IMPLICIT_MOST {
            limits.retain(|_, l| Arc::strong_count(l) > 1 || !l.lane.is_fresh(now));
            if limits.len() >= SHARED_IMPLICIT_MOST {
                return Err(Throttled {
                    scope: Scope::Api,
                    retry_after: Duration::from_secs(1) / default.get(),
                });
            }
        }
        let limit = Arc::new(Limit {
            lane: Arc::new(Lane::new(Scope::Api, default)),
            key: group.key(self.sdkappid, Some(api)).into(),
            fallback: Mutex::new(None),
        });
        limits.insert(api.to_owned(), limit.clone());
        Ok(limit)
    }
}

//! Keeps every SDKAppID, and every API of it, under Tencent's call-frequency limits, in one
//! process or across a fleet of replicas that share them through Redis (`fleet`).
//!
//! Each limit L is a `Lane` with two layers: **pacing** reserves the lane's next free slot
//! (at `PACE` × L, in arrival order, so a wait known to be too long is refused at once and a
//! caller that leaves gives its slot back), and a **guard** that every send passes at the
//! moment it happens, which admits at most L units in any window of the lane's period and
//! `SPREAD`. Waiters are sleeping futures, no queue structure exists. When the limiter closes
//! (a drain), a slot after its closing time is refused at once, for requests already
//! sleeping towards one too. Why this keeps every limit at Tencent, locally and fleet-wide,
//! is argued once, in `limits/ARGUMENT.md`; the timing values it rests on are in [`timing`].
//!
//! A request waits for its API's lanes first (its quotas from `table`, then its calls lane:
//! an `api_limits` entry or the implicit `DEFAULT_API_RATE` lane), then for the app lane, so
//! a slow API never holds up the app's other APIs. A caller with a `rate_limit` of its own waits in its
//! own lane of the app before either (the same pacing, guard and bounded wait), so a caller
//! flooding past its share queues in its own lane and never takes the app's whole limit
//! from the callers beside it. Each app's `Lanes` are built once from the
//! configuration and carried by its route, so no step looks the app up again; unknown
//! SDKAppIDs are refused by routing before they reach here.
//!
//! A reload builds each app's `Lanes` again with [`Limiter::lanes_after`]: a calls limit (the
//! app's, an API's, a caller's) that did not change is carried over as it is (its queue, its
//! guard, no fresh burst); one that did is taken over by a successor lane (`lane`;
//! `limits/ARGUMENT.md` §3). An unchanged quota keeps its lanes, and the implicit per-API
//! lanes are kept whole; a quota whose terms changed starts with fresh lanes.
//!
//! The order of one attempt is a type: `Lanes::turn` grants a `Turn`, the caller gets a
//! ready connection, and `Turn::send_now` consumes the turn at the send-time guard right
//! before the write. A turn cannot be spent twice, nor a guard passed without a turn.
//!
//! The limiter answers in two phases ([`Lanes::ask`]): the turn granted now, or a wait the
//! caller then awaits. The caller keeps or lets go of its own connection around that; none
//! passes through the limiter. In a fleet, a caller that holds a ready connection already
//! says so: a turn granted now then passes the fleet's guard in the same Redis call, and
//! `send_now` is left with this replica's own guard.

mod fleet;
mod keyed;
mod lane;
pub mod series;
pub mod spec;
pub mod table;
pub mod timing;

use std::collections::HashMap;
use std::future::{Future, IntoFuture};
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use keyed::Keyed;
pub use keyed::{SETS, WAYS};
use lane::{Lane, guard};
pub use lane::{TokioClock, TokioInstant};
pub use table::{DEFAULT_API_RATE, Per, Quota};

use fleet::{Ask, Begun, Fleet, Group, Underway};
pub use fleet::{BEAT, EXPIRY, MARGIN, QUARANTINE, RETAIN};
pub use series::FleetSeries;
pub use spec::{AppSpec, CallerSpec, ClusterSpec, FleetSpec, RedisSpec, SentinelSpec};
pub use timing::{GUARD, PACE, SLOWDOWN, SPREAD};

/// Which limit refused or slowed a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The whole SDKAppID (Tencent's 60011).
    App,
    /// One API of the SDKAppID (Tencent's 60007).
    Api,
    /// One caller's own share of the SDKAppID (`[[callers]] rate_limit`).
    Caller,
}

/// A request that would wait longer than it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttled {
    /// The limit at fault.
    pub scope: Scope,
    /// When the lane expects to have room.
    pub retry_after: Duration,
}

/// The limiter: builds each app's `Lanes` once, and counts the requests waiting in any of them.
#[derive(Default)]
pub struct Limiter {
    waiting: Arc<AtomicUsize>,
    fleet: Option<Arc<Fleet>>,
    /// The last moment a turn may be granted, once the limiter closes (a drain).
    closing: Arc<watch::Sender<Option<Instant>>>,
}

impl Limiter {
    /// A limiter whose lanes are shared in Redis when `fleet` is given.
    pub fn new(fleet: Option<impl Into<FleetSpec>>, series: FleetSeries) -> Limiter {
        Limiter {
            waiting: Arc::default(),
            fleet: fleet.map(|f| Fleet::start(&f.into(), series)),
            closing: Arc::default(),
        }
    }

    /// Grants no turn later than `last`: from now on a request whose turn would come after it
    /// is refused at once, those already waiting for one included (their `Throttled` says
    /// when the turn would have come). An earlier `last` than before wins.
    pub fn close_at(&self, last: Instant) {
        self.closing.send_if_modified(|closing| {
            let earlier = closing.is_none_or(|at| last < at);
            if earlier {
                *closing = Some(last);
            }
            earlier
        });
    }

    /// The lanes of `app`: its own limit, one lane per entry of its `api_limits`, a lane per
    /// other API at `DEFAULT_API_RATE` (keyed by the API's name), and its quotas.
    pub fn lanes(&self, app: impl Into<AppSpec>) -> Lanes {
        self.lanes_with_callers(app, std::iter::empty())
    }

    /// `lanes`, and one lane for each caller `(name, rate_limit)` of `callers`.
    pub fn lanes_with_callers<'c>(
        &self,
        app: impl Into<AppSpec>,
        callers: impl Iterator<Item = CallerSpec<'c>>,
    ) -> Lanes {
        self.build(&app.into(), callers, None)
    }

    /// The lanes of `app` and `callers` after a reload, taking over from `previous` (the same
    /// app's lanes before it): an unchanged limit keeps its lane, a changed one gets a
    /// successor, a new one a lane of its own.
    pub fn lanes_after<'c>(
        &self,
        app: impl Into<AppSpec>,
        callers: impl Iterator<Item = CallerSpec<'c>>,
        previous: &Lanes,
    ) -> Lanes {
        self.build(&app.into(), callers, Some(previous))
    }

    fn build<'c>(
        &self,
        app: &AppSpec,
        callers: impl Iterator<Item = CallerSpec<'c>>,
        previous: Option<&Lanes>,
    ) -> Lanes {
        let limit = |scope, limit: NonZeroU32, before: Option<&Arc<Limit>>, key: Option<String>| {
            let lane = match before {
                Some(before) if before.limit() == limit => return before.clone(),
                Some(before) => Lane::succeed(&before.lane, limit),
                None => Arc::new(Lane::new(scope, limit)),
            };
            Arc::new(Limit {
                lane,
                key: key.unwrap_or_default(),
                fallback: Mutex::new(None),
            })
        };
        let fleet = self.fleet.as_ref();
        let mut apis: HashMap<String, ApiLanes> = app
            .api_limits
            .iter()
            .map(|(api, n)| {
                let before = previous
                    .and_then(|p| p.apis.get(api))
                    .and_then(|l| l.calls.as_ref());
                let key = fleet.map(|f| f.key(app.sdkappid, Some(api)));
                let lanes = ApiLanes {
                    calls: Some(limit(Scope::Api, *n, before, key)),
                    ..ApiLanes::default()
                };
                (api.clone(), lanes)
            })
            .collect();
        let callers = callers
            .map(|(name, n)| {
                let before = previous.and_then(|p| p.callers.get(name));
                let key = fleet.map(|f| f.caller_key(app.sdkappid, name));
                (name.to_owned(), limit(Scope::Caller, n, before, key))
            })
            .collect();
        // In a fleet these are the local layer (no replica alone sends more than a quota);
        // the quota itself is kept in Redis too.
        for quota in &app.api_quotas {
            let lanes = apis.entry(quota.api.clone()).or_default();
            // A reload keeps an unchanged quota's lanes: its window's sends still count.
            let kept = previous
                .and_then(|p| p.apis.get(&quota.api))
                .and_then(|p| p.lanes_of(quota));
            lanes.quotas.push(quota.clone());
            lanes
                .lanes
                .push(kept.unwrap_or_else(|| Arc::new(QuotaLanes::new(quota, quota.rate))));
        }
        let implicit = match previous {
            // The implicit lanes never change (DEFAULT_API_RATE): a reload keeps them.
            Some(previous) => previous.implicit.clone(),
            None => self.fleet.is_none().then(|| {
                let default = NonZeroU32::new(DEFAULT_API_RATE).unwrap_or(NonZeroU32::MIN);
                let second = Duration::from_secs(1);
                Arc::new(Keyed::new(Scope::Api, default, second, NonZeroU32::MIN))
            }),
        };
        // In a fleet, an app whose own limit is above an API's needs the implicit per-API
        // lanes shared too; at or below it, the app lane is the stricter and suffices.
        let shared_implicit = match fleet {
            Some(_) if app.rate_limit.get() > DEFAULT_API_RATE => Some(
                previous
                    .and_then(|p| p.shared_implicit.clone())
                    .unwrap_or_else(|| Arc::new(SharedImplicit::new(app.sdkappid))),
            ),
            _ => None,
        };
        Lanes {
            sdkappid: app.sdkappid,
            app: limit(
                Scope::App,
                app.rate_limit,
                previous.map(|p| &p.app),
                fleet.map(|f| f.key(app.sdkappid, None)),
            ),
            apis,
            callers,
            implicit,
            shared_implicit,
            waiting: self.waiting.clone(),
            fleet: self.fleet.as_ref().map(|fleet| fleet.group(app.sdkappid)),
            closing: Closing(self.closing.subscribe()),
        }
    }

    /// How many requests are waiting for a slot, across all lanes.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Gives this replica's fleet claim back; call once no request will be sent any more.
    pub async fn leave(&self) {
        if let Some(fleet) = &self.fleet {
            fleet.leave().await;
        }
    }
}

/// One limit of an app: its local lane, and where it lives in the fleet.
struct Limit {
    /// Its lane; a reload that changes the limit hands its turns on to a successor.
    lane: Arc<Lane>,
    /// The lane's Redis key (empty without a fleet).
    key: String,
    /// The lane at this replica's fallback share, rebuilt when the share changes.
    fallback: Mutex<Option<(NonZeroU32, Arc<Lane>)>>,
}

impl Limit {
    /// The limit in force now: the newest lane's, also for a request of an older configuration.
    fn limit(&self) -> NonZeroU32 {
        self.lane.newest().limit
    }

    fn ask(&self) -> Ask {
        Ask::calls(self.key.clone(), self.limit(), self.lane.scope)
    }

    /// The lane at this replica's share now; `Throttled` when the share is nothing.
    fn fallback(&self, fleet: &Group) -> Result<Arc<Lane>, Throttled> {
        let share = fleet.share(self.limit()).ok_or(Throttled {
            scope: self.lane.scope,
            retry_after: Duration::from_secs(1),
        })?;
        let mut fallback = self
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
                let lane = Arc::new(Lane::new(self.lane.scope, share));
                *fallback = Some((share, lane.clone()));
                Ok(lane)
            }
        }
    }
}

/// One app's limits, found once when a request is routed to the app.
pub struct Lanes {
    sdkappid: u64,
    app: Arc<Limit>,
    apis: HashMap<String, ApiLanes>,
    /// Callers with a `rate_limit` of their own, by name.
    callers: HashMap<String, Arc<Limit>>,
    /// The lane of every API without a calls limit of its own, keyed by its name (without
    /// a fleet).
    implicit: Option<Arc<Keyed>>,
    /// In a fleet, the same implicit lanes kept in Redis (only for an app whose own limit is
    /// above `DEFAULT_API_RATE`).
    shared_implicit: Option<Arc<SharedImplicit>>,
    waiting: Arc<AtomicUsize>,
    /// In a fleet, this app's part of it.
    fleet: Option<Arc<Group>>,
    closing: Closing,
}

/// The most implicit per-API lanes an app keeps for the fleet at once.
const SHARED_IMPLICIT_MOST: usize = 1024;

/// One app's implicit per-API lanes in a fleet, by API name: each a `Limit` at
/// `DEFAULT_API_RATE` on the API's Redis key. At most `SHARED_IMPLICIT_MOST`: past that, the
/// lanes no turn holds and as a fresh one would be are dropped (exact, as in `keyed`); when
/// every lane is busy, a new API is refused (429) as if its lane were full.
struct SharedImplicit {
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

    fn limit(&self, fleet: &Group, api: &str, now: Instant) -> Result<Arc<Limit>, Throttled> {
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
            key: fleet.key(self.sdkappid, Some(api)),
            fallback: Mutex::new(None),
        });
        limits.insert(api.to_owned(), limit.clone());
        Ok(limit)
    }
}

/// The limiter's closing time as the lanes see it ([`Limiter::close_at`]).
struct Closing(watch::Receiver<Option<Instant>>);

impl Closing {
    /// `max_wait` from `now`, cut short by the closing time.
    fn budget(&self, now: Instant, max_wait: Duration) -> Duration {
        match *self.0.borrow() {
            Some(last) => max_wait.min(last.saturating_duration_since(now)),
            None => max_wait,
        }
    }

    /// Resolves once the closing time is set before `slot`; never if it is not.
    async fn before(&self, slot: Instant) {
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

/// The lanes of one API with an entry: its calls limit, if configured, and its quotas.
#[derive(Default)]
struct ApiLanes {
    calls: Option<Arc<Limit>>,
    quotas: Vec<Quota>,
    lanes: Vec<Arc<QuotaLanes>>,
    /// In a fleet, the quotas' lanes at this replica's share while Redis is gone, made
    /// afresh for each loss of Redis (its generation).
    fallback: Mutex<Option<(u64, Vec<Arc<QuotaLanes>>)>>,
}

impl ApiLanes {
    /// The lanes of a quota equal to `quota`, if it has one.
    fn lanes_of(&self, quota: &Quota) -> Option<Arc<QuotaLanes>> {
        let i = self.quotas.iter().position(|q| q == quota)?;
        self.lanes.get(i).cloned()
    }

    /// The quotas' lanes at this replica's share for the loss of Redis `generation`;
    /// `Throttled` when the share of one is nothing.
    fn fallback(&self, fleet: &Group, generation: u64) -> Result<Vec<Arc<QuotaLanes>>, Throttled> {
        let mut fallback = self
            .fallback
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((made, lanes)) = &*fallback
            && *made == generation
        {
            return Ok(lanes.clone());
        }
        let lanes = self
            .quotas
            .iter()
            .map(|quota| {
                let share = fleet.share(quota.rate).ok_or(Throttled {
                    scope: Scope::Api,
                    retry_after: quota.per.period(),
                })?;
                Ok(Arc::new(QuotaLanes::new(quota, share)))
            })
            .collect::<Result<Vec<_>, Throttled>>()?;
        *fallback = Some((generation, lanes.clone()));
        Ok(lanes)
    }
}

enum QuotaLanes {
    One(Arc<Lane>),
    Keyed(Keyed),
}

impl QuotaLanes {
    /// `quota`'s lanes, each at `rate` units per its window.
    fn new(quota: &Quota, rate: NonZeroU32) -> QuotaLanes {
        let (period, largest) = (quota.per.period(), quota.largest_cost());
        match quota.key {
            Some(_) => QuotaLanes::Keyed(Keyed::new(Scope::Api, rate, period, largest)),
            None => QuotaLanes::One(Arc::new(Lane::of(Scope::Api, rate, period, largest))),
        }
    }

    /// The lane of a request with `key` (one lane for all without a key).
    fn lane(&self, key: Option<&str>, now: Instant) -> Result<Arc<Lane>, Throttled> {
        match self {
            QuotaLanes::One(lane) => Ok(lane.clone()),
            QuotaLanes::Keyed(keyed) => keyed.lane(key.unwrap_or(""), now),
        }
    }
}

/// What a request's body says about one quota of its API: its cost and its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Measured {
    /// Units the request costs (at least 1).
    pub cost: NonZeroU32,
    /// The value of the quota's key field.
    pub key: Option<String>,
}

/// A request whose cost alone is over what its API takes in one call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TooCostly {
    /// Tencent's ErrorCode for it.
    pub code: u32,
    /// What is wrong.
    pub info: String,
}

/// Measures `body` for each of `quotas`, in order: the length of the cost field (absent or
/// not an array: 1), the key field's string (absent or not a string: no key, so one lane
/// for all such requests). Refuses a cost over the quota's documented most.
pub fn measure(
    quotas: &[Quota],
    body: &serde_json_borrow::Value<'_>,
) -> Result<Vec<Measured>, TooCostly> {
    quotas
        .iter()
        .map(|quota| {
            let items = quota
                .cost
                .as_deref()
                .and_then(|field| body.get(field).as_array().map(<[_]>::len))
                .unwrap_or(1);
            let cost = u32::try_from(items).unwrap_or(u32::MAX);
            if let (Some(field), Some((most, code))) = (&quota.cost, quota.max_cost)
                && cost > most.get()
            {
                return Err(TooCostly {
                    code,
                    info: format!(
                        "{field} has {items} entries; {} takes at most {most}",
                        quota.api
                    ),
                });
            }
            let key = quota
                .key
                .as_deref()
                .and_then(|field| body.get(field).as_str())
                .map(str::to_owned);
            Ok(Measured {
                cost: NonZeroU32::new(cost).unwrap_or(NonZeroU32::MIN),
                key,
            })
        })
        .collect()
}

impl Lanes {
    /// The quotas of `api` beyond calls a second, whose costs and keys `turn` needs.
    pub fn quotas(&self, api: &str) -> &[Quota] {
        self.apis.get(api).map_or(&[], |lanes| &lanes.quotas)
    }

    /// Waits, in arrival order, for one attempt's turn of `api`; refuses at once when the
    /// wait would exceed `max_wait`. `measured` holds the request's cost and key for each of
    /// `quotas(api)`, in order (missing ones cost 1, without a key). The turn is spent by
    /// `Turn::send_now`.
    pub async fn turn(
        &self,
        api: &str,
        measured: &[Measured],
        max_wait: Duration,
    ) -> Result<Turn<'_>, Throttled> {
        self.turn_as(api, None, measured, max_wait).await
    }

    /// `turn` for a request of `caller`, which waits in that caller's own lane first when it
    /// has one.
    pub async fn turn_as(
        &self,
        api: &str,
        caller: Option<&str>,
        measured: &[Measured],
        max_wait: Duration,
    ) -> Result<Turn<'_>, Throttled> {
        match self.ask(api, caller, measured, max_wait, false).await? {
            Asked::Granted(turn) => Ok(turn),
            Asked::Waiting(waiting) => waiting.await,
        }
    }

    /// In a fleet that reaches Redis now, for an API without lanes kept on this replica only
    /// (a quota's): a turn of `api` asked by a caller that holds a ready connection may pass
    /// its send-time guard in the same Redis call ([`Lanes::ask`]).
    pub fn guards_with_turn(&self, api: &str) -> bool {
        let local = self.implicit.is_some()
            || self
                .apis
                .get(api)
                .is_some_and(|lanes| !lanes.lanes.is_empty());
        !local
            && self
                .fleet
                .as_ref()
                .is_some_and(|fleet| fleet.fallback_in().is_none())
    }

    /// The first phase of `turn_as`: the turn granted now, or a wait for it. A caller that
    /// holds a `ready` connection keeps it through a turn granted now and lets it go before
    /// awaiting a wait, so no connection is kept from others by a waiting request. In a
    /// fleet that reaches Redis, this phase makes the turn's first Redis call; when the turn
    /// needs no wait and the caller is `ready`, Redis passes its send-time guard in the same
    /// call, and `send_now` then only checks this replica's own guard.
    pub async fn ask(
        &self,
        api: &str,
        caller: Option<&str>,
        measured: &[Measured],
        max_wait: Duration,
        ready: bool,
    ) -> Result<Asked<'_>, Throttled> {
        let mut turn = self.prepare(api, caller, measured, max_wait)?;
        let Some(fleet) = self.fleet.as_ref() else {
            return Ok(Asked::Waiting(Waiting::new(self.wait_local(turn))));
        };
        if !turn.local.is_empty() || fleet.fallback_in().is_some() {
            let waiting = self.wait_fleet(turn, fleet, None, max_wait);
            return Ok(Asked::Waiting(Waiting::new(waiting)));
        }
        let start = Instant::now();
        let begun = {
            let _waiting = Queued::enter(&self.waiting);
            let budget = self.closing.budget(start, max_wait);
            fleet.begin(&turn.asks(), budget, ready).await?
        };
        match begun {
            Begun::Granted(guarded) => {
                turn.guarded = guarded;
                Ok(Asked::Granted(turn))
            }
            Begun::Underway(underway) => {
                let left = max_wait.saturating_sub(start.elapsed());
                let waiting = self.wait_fleet(turn, fleet, Some(underway), left);
                Ok(Asked::Waiting(Waiting::new(waiting)))
            }
            Begun::Lost => {
                let left = max_wait.saturating_sub(start.elapsed());
                let waiting = self.wait_fleet(turn, fleet, None, left);
                Ok(Asked::Waiting(Waiting::new(waiting)))
            }
        }
    }

    /// The turn of a request of `caller` for `api`, not yet waited for.
    fn prepare(
        &self,
        api: &str,
        caller: Option<&str>,
        measured: &[Measured],
        max_wait: Duration,
    ) -> Result<Turn<'_>, Throttled> {
        let lanes = self.apis.get(api);
        let now = Instant::now();
        let mut local = Vec::new();
        for (i, quota) in lanes.iter().flat_map(|l| &l.lanes).enumerate() {
            let measured = measured.get(i);
            let cost = measured.map_or(NonZeroU32::MIN, |m| m.cost);
            local.push((
                quota.lane(measured.and_then(|m| m.key.as_deref()), now)?,
                cost,
            ));
        }
        let mut calls = lanes.and_then(|l| l.calls.clone());
        if let (None, Some(shared), Some(fleet)) = (&calls, &self.shared_implicit, &self.fleet) {
            calls = Some(shared.limit(fleet, api, now)?);
        }
        if let (None, Some(implicit)) = (&calls, &self.implicit) {
            local.push((implicit.lane(api, now)?, NonZeroU32::MIN));
        }
        Ok(Turn {
            guarded: false,
            caller: caller.and_then(|name| self.callers.get(name)).map(|l| &**l),
            local,
            quotas: self.quota_asks(lanes, measured),
            entry: lanes,
            api: calls,
            app: &self.app,
            fleet: self.fleet.as_ref(),
            max_wait,
        })
    }

    /// In a fleet, each quota's lane in Redis: the quota's, or the key's within it.
    fn quota_asks(&self, lanes: Option<&ApiLanes>, measured: &[Measured]) -> Vec<Ask> {
        let (Some(fleet), Some(lanes)) = (&self.fleet, lanes) else {
            return Vec::new();
        };
        let ask = |(i, quota): (usize, &Quota)| {
            let measured = measured.get(i);
            let key = quota
                .key
                .as_ref()
                .map(|_| measured.and_then(|m| m.key.as_deref()).unwrap_or(""));
            Ask {
                key: fleet.quota_key(self.sdkappid, &quota.api, i, key),
                limit: quota.rate,
                scope: Scope::Api,
                period: quota.per.period(),
                cost: measured.map_or(NonZeroU32::MIN, |m| m.cost),
                largest: quota.largest_cost(),
            }
        };
        lanes.quotas.iter().enumerate().map(ask).collect()
    }

    /// The wait for a turn on this replica's lanes alone.
    async fn wait_local<'a>(&'a self, turn: Turn<'a>) -> Result<Turn<'a>, Throttled> {
        let lanes: Vec<(&Lane, NonZeroU32)> = turn.lanes().collect();
        pace(&lanes, turn.max_wait, &self.waiting, &self.closing).await?;
        Ok(turn)
    }

    /// The wait for a turn in a fleet, no longer than `max_wait`: this replica's own lanes
    /// first, then Redis's (the rest of a turn `underway` there), or the fallback share's
    /// while Redis is gone.
    async fn wait_fleet<'a>(
        &'a self,
        turn: Turn<'a>,
        fleet: &'a Arc<Group>,
        underway: Option<Underway>,
        max_wait: Duration,
    ) -> Result<Turn<'a>, Throttled> {
        let start = Instant::now();
        let local: Vec<(&Lane, NonZeroU32)> = turn.local.iter().map(|(l, c)| (&**l, *c)).collect();
        pace(&local, max_wait, &self.waiting, &self.closing).await?;
        let budget = max_wait.saturating_sub(start.elapsed());
        self.shared(fleet, &turn, budget, underway).await?;
        Ok(turn)
    }

    /// A turn in Redis (going on from `underway` when its first call was made), or on this
    /// replica's share while Redis is gone.
    async fn shared(
        &self,
        fleet: &Arc<Group>,
        turn: &Turn<'_>,
        max_wait: Duration,
        mut underway: Option<Underway>,
    ) -> Result<(), Throttled> {
        let start = Instant::now();
        let _waiting = Queued::enter(&self.waiting);
        loop {
            if let Some(underway) = underway.take() {
                if fleet.finish(&turn.asks(), underway, &self.closing).await? {
                    return Ok(());
                }
                continue;
            }
            let budget = self
                .closing
                .budget(Instant::now(), max_wait.saturating_sub(start.elapsed()));
            match fleet.fallback_in() {
                None => {
                    if fleet.turn(&turn.asks(), budget, &self.closing).await? {
                        return Ok(());
                    }
                }
                Some(wait) if wait > budget => {
                    return Err(Throttled {
                        scope: Scope::App,
                        retry_after: wait,
                    });
                }
                Some(wait) => match self.on_share(fleet, turn, wait, budget).await? {
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
        fleet: &Group,
        turn: &Turn<'_>,
        wait: Duration,
        budget: Duration,
    ) -> Result<bool, Throttled> {
        let lanes = match turn.fallback_lanes(fleet) {
            Ok(lanes) => lanes,
            Err(throttled) if throttled.retry_after < budget => {
                tokio::time::sleep(throttled.retry_after).await;
                return Ok(false);
            }
            Err(throttled) => return Err(throttled),
        };
        let lanes: Vec<(&Lane, NonZeroU32)> = lanes.iter().map(|(l, c, _)| (&**l, *c)).collect();
        // In line from when the share may be spent: the requests that wait for it keep
        // their order, and do not all wake at that moment.
        let from = Instant::now() + wait;
        let waiting = AtomicUsize::new(0);
        pace_from(&lanes, from, budget, &waiting, &self.closing).await?;
        Ok(true)
    }

    /// `turn` then `send_now`, for a caller with nothing to prepare in between.
    pub async fn acquire(&self, api: &str, max_wait: Duration) -> Result<(), Throttled> {
        self.turn(api, &[], max_wait).await?.send_now().await
    }

    /// Tencent said `scope` is over its limit: run it slower for a while (in the fleet: for
    /// every replica).
    pub fn slow_down(&self, api: &str, scope: Scope) {
        let limit = match (scope, &self.shared_implicit, &self.fleet) {
            (Scope::Api, shared, fleet) => {
                let own = self.apis.get(api).and_then(|l| l.calls.clone());
                own.or_else(|| {
                    let (shared, fleet) = (shared.as_ref()?, fleet.as_ref()?);
                    shared.limit(fleet, api, Instant::now()).ok()
                })
            }
            (Scope::App | Scope::Caller, _, _) => None,
        };
        if let (Scope::Api, None, Some(implicit)) = (scope, &limit, &self.implicit) {
            // Its own lane, kept by name; a table too busy to hold it has nothing to slow.
            if let Ok(lane) = implicit.lane(api, Instant::now()) {
                lane.slow_down(Instant::now());
            }
            return;
        }
        // In a fleet, an API without its own lane (an app at or under DEFAULT_API_RATE) runs
        // in its app's lane: that one slows.
        let limit = limit.as_deref().unwrap_or(&self.app);
        limit.lane.slow_down(Instant::now());
        if let Some(fleet) = &self.fleet {
            fleet.slow_down(limit.key.clone(), limit.limit());
            if let Ok(lane) = limit.fallback(fleet) {
                lane.slow_down(Instant::now());
            }
        }
    }
}

/// Reserves a slot on each lane in order, sleeping until each; refuses at once when any
/// lane is already further behind than `max_wait` or the closing time, and, while waiting,
/// as soon as the limiter closes before the slot.
async fn pace(
    lanes: &[(&Lane, NonZeroU32)],
    max_wait: Duration,
    waiting: &AtomicUsize,
    closing: &Closing,
) -> Result<(), Throttled> {
    pace_from(lanes, Instant::now(), max_wait, waiting, closing).await
}

/// `pace`, with no slot before `from` (now or later): those who wait for `from` take their
/// places in line, in the order they came, before it.
async fn pace_from(
    lanes: &[(&Lane, NonZeroU32)],
    from: Instant,
    max_wait: Duration,
    waiting: &AtomicUsize,
    closing: &Closing,
) -> Result<(), Throttled> {
    let start = Instant::now();
    let budget = closing.budget(start, max_wait);
    let ahead = from.saturating_duration_since(start);
    let later = |throttled: Throttled, by: Duration| Throttled {
        retry_after: throttled.retry_after + by,
        ..throttled
    };
    // Of the lanes already too far behind, the one furthest behind answers: its wait is the
    // one a retry must sit out (a caller told to come back when the API's own lane frees
    // would meet the app lane still full).
    let refused = lanes
        .iter()
        .filter_map(|(lane, _)| lane.predict(from, budget.saturating_sub(ahead)).err())
        .max_by_key(|throttled| throttled.retry_after);
    if let Some(refused) = refused {
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
            tokio::select! {
                () = tokio::time::sleep_until(ticket.slot) => {}
                () = closing.before(ticket.slot) => {
                    return Err(Throttled {
                        scope: lane.scope,
                        retry_after: ticket.slot.saturating_duration_since(Instant::now()),
                    });
                }
            }
        }
        ticket.used();
    }
    Ok(())
}

/// The limiter's first answer to a turn (`Lanes::ask`): granted now, or a wait.
#[must_use = "a turn is granted now or after its wait"]
pub enum Asked<'a> {
    /// The turn is granted now: nothing to wait for.
    Granted(Turn<'a>),
    /// The turn comes after a wait: let go of what should not be held meanwhile (a ready
    /// connection), then await it.
    Waiting(Waiting<'a>),
}

/// A turn still to wait for: awaited, it is granted, or refused (`Throttled`) as soon as
/// it is known to come too late.
#[must_use = "a wait does nothing unless awaited"]
pub struct Waiting<'a>(Pin<Box<dyn Future<Output = Result<Turn<'a>, Throttled>> + Send + 'a>>);

impl<'a> Waiting<'a> {
    fn new(wait: impl Future<Output = Result<Turn<'a>, Throttled>> + Send + 'a) -> Waiting<'a> {
        Waiting(Box::pin(wait))
    }
}

impl<'a> IntoFuture for Waiting<'a> {
    type Output = Result<Turn<'a>, Throttled>;
    type IntoFuture = Pin<Box<dyn Future<Output = Result<Turn<'a>, Throttled>> + Send + 'a>>;

    fn into_future(self) -> Self::IntoFuture {
        self.0
    }
}

/// One attempt's turn, granted by `Lanes::turn`: the attempt may go on the wire once it has
/// a ready connection and `send_now` has passed the send-time guard. Only the limiter makes
/// one and sending consumes it, so *turn → ready connection → guard → write* is the only
/// order the types allow (in a fleet, a caller of `Lanes::ask` may take the connection first
/// and a turn granted now brings the guard's admission along: *ready connection → turn with
/// guard → write*, with only this replica's own guard between):
///
/// ```compile_fail
/// # async fn twice(lanes: &timgate_limits::Lanes, api: &str) {
/// let turn = lanes.turn(api, &[], std::time::Duration::ZERO).await.unwrap();
/// turn.send_now().await;
/// turn.send_now().await; // refused: the turn was spent by the first send
/// # }
/// ```
#[must_use = "a turn is spent by send_now, right before the request is written"]
pub struct Turn<'a> {
    /// Redis passed the fleet's send-time guard with the turn (`Lanes::ask`, `ready`).
    guarded: bool,
    caller: Option<&'a Limit>,
    /// Lanes kept on this replica only (quotas, an API's implicit lane), with the cost.
    local: Vec<(Arc<Lane>, NonZeroU32)>,
    /// In a fleet, the quotas' lanes in Redis, in the order of `entry`'s quotas.
    quotas: Vec<Ask>,
    /// The API's entry, whose quotas `quotas` are.
    entry: Option<&'a ApiLanes>,
    api: Option<Arc<Limit>>,
    app: &'a Limit,
    fleet: Option<&'a Arc<Group>>,
    /// The longest the turn could wait; the send-time guard waits no longer, in any mode
    /// (a send that would wait longer is refused), so a request's waits for the limit add
    /// up to at most twice it, which the proxy keeps within its queue wait and deadline.
    max_wait: Duration,
}

impl Turn<'_> {
    /// The limits this attempt passes, narrowest first.
    fn limits(&self) -> impl Iterator<Item = &Limit> {
        self.caller
            .into_iter()
            .chain(self.api.as_deref())
            .chain([self.app])
    }

    /// What this attempt asks of Redis, narrowest first.
    fn asks(&self) -> Vec<Ask> {
        let mut asks: Vec<Ask> = self.caller.map(Limit::ask).into_iter().collect();
        asks.extend(self.quotas.iter().cloned());
        asks.extend(
            self.api
                .as_deref()
                .into_iter()
                .chain([self.app])
                .map(Limit::ask),
        );
        asks
    }

    /// The lanes at this replica's fallback share that this attempt passes, with its cost
    /// and each lane's window; `Throttled` when a share is nothing or may not be spent yet.
    fn fallback_lanes(
        &self,
        fleet: &Group,
    ) -> Result<Vec<(Arc<Lane>, NonZeroU32, Duration)>, Throttled> {
        let second = Duration::from_secs(1);
        let mut lanes = Vec::new();
        if let Some(entry) = self.entry.filter(|e| !e.quotas.is_empty()) {
            let now = Instant::now();
            let mut generation = 0;
            for ask in &self.quotas {
                let (made, wait) = fleet.fallback_period(ask.period);
                if !wait.is_zero() {
                    return Err(Throttled {
                        scope: Scope::Api,
                        retry_after: wait,
                    });
                }
                generation = made;
            }
            let quota_lanes = entry.fallback(fleet, generation)?;
            // A keyed quota's lanes here are keyed by the lane's Redis key, one per value.
            for (quota_lanes, ask) in quota_lanes.iter().zip(&self.quotas) {
                let lane = quota_lanes.lane(Some(&ask.key), now)?;
                lanes.push((lane, ask.cost, ask.period));
            }
        }
        for limit in self.limits() {
            lanes.push((limit.fallback(fleet)?, NonZeroU32::MIN, second));
        }
        Ok(lanes)
    }

    /// Every lane this attempt passes and what it costs there, narrowest first: the
    /// caller's own lane before the API's lanes, so a caller flooding past its share queues
    /// there and takes no quota from the callers beside it.
    fn lanes(&self) -> impl Iterator<Item = (&Lane, NonZeroU32)> {
        fn unit(limit: &Limit) -> (&Lane, NonZeroU32) {
            (&limit.lane, NonZeroU32::MIN)
        }
        let local = self.local.iter().map(|(lane, cost)| (&**lane, *cost));
        let rest = self.api.as_deref().into_iter().chain([self.app]).map(unit);
        self.caller.map(unit).into_iter().chain(local).chain(rest)
    }

    /// Waits until a request sent now keeps every limit, and counts it as sent: call it with
    /// the connection ready, right before writing the request. Sends that wait here go in the
    /// order they came, and none waits longer than its turn could (`max_wait`): `Throttled`
    /// then, as when, in a fleet, Redis went away since the turn and this replica may not
    /// spend its share yet.
    pub async fn send_now(self) -> Result<(), Throttled> {
        let by = Instant::now() + self.max_wait;
        let lanes: Vec<(&Lane, NonZeroU32)> = self.lanes().collect();
        if self.guarded {
            // Redis admitted this send with its turn, a moment ago: only this replica's own
            // guard is left. Should that one make it wait, Redis's admission goes unused
            // (capacity lost, never the limit kept less) and the send asks Redis again after.
            if lane::try_guard(lanes.iter().copied()).is_ok() {
                return Ok(());
            }
        }
        guard(&lanes, by).await?;
        match self.fleet {
            Some(fleet) => self.send_in(fleet, by).await,
            None => Ok(()),
        }
    }

    /// The fleet's send-time guard, by `by`: Redis's, or this replica's share's while Redis
    /// is gone.
    async fn send_in(&self, fleet: &Arc<Group>, by: Instant) -> Result<(), Throttled> {
        loop {
            match fleet.fallback_in() {
                None => {
                    if fleet.guard(&self.asks(), by).await? {
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
                    let lanes = self.fallback_lanes(fleet)?;
                    let lanes: Vec<(&Lane, NonZeroU32, Duration)> =
                        lanes.iter().map(|(l, c, p)| (&**l, *c, *p)).collect();
                    if fleet.fallback_send(&lanes, by).await? {
                        return Ok(());
                    }
                }
            }
        }
    }
}

/// Counts a request as waiting for its turn for as long as it lives.
struct Queued<'a>(&'a AtomicUsize);

impl<'a> Queued<'a> {
    fn enter(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Self(count)
    }
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::Mutex as StdMutex;

    const ROOM_LIST: &str = "/v4/live_engine_http_srv/get_room_list";
    const SEND: &str = "/v4/openim/sendmsg";

    /// A limiter and the lanes of apps 1 and 2, each limited to `rate_limit`.
    struct Local {
        limiter: Limiter,
        apps: HashMap<u64, Lanes>,
    }

    impl Local {
        async fn acquire(&self, app: u64, api: &str, max_wait: Duration) -> Result<(), Throttled> {
            self.apps[&app].acquire(api, max_wait).await
        }

        fn slow_down(&self, app: u64, api: &str, scope: Scope) {
            self.apps[&app].slow_down(api, scope);
        }

        fn waiting(&self) -> usize {
            self.limiter.waiting()
        }
    }

    fn local(rate_limit: u32) -> Arc<Local> {
        let limiter = Limiter::default();
        let apps = [1, 2]
            .into_iter()
            .map(|id| (id, limiter.lanes(spec(id, rate_limit, &[]))))
            .collect();
        Arc::new(Local { limiter, apps })
    }

    /// App `sdkappid` at `rate_limit` calls a second, with Tencent's documented per-API
    /// limits and quotas, and the calls limits `api_limits` (API name, limit) besides.
    fn spec(sdkappid: u64, rate_limit: u32, api_limits: &[(&str, u32)]) -> AppSpec {
        let mut spec = AppSpec::new(sdkappid, NonZeroU32::new(rate_limit).unwrap());
        for (api, n) in api_limits {
            spec.api_limits
                .insert((*api).to_owned(), NonZeroU32::new(*n).unwrap());
        }
        spec
    }

    /// The API name (`service/command`) of a request path.
    fn api(path: &str) -> String {
        path.trim_start_matches("/v4/").to_owned()
    }

    /// Starts `n` acquisitions in order, one after another, and returns their release times
    /// in release order, tagged with their arrival index.
    async fn burst(
        limiter: &Arc<Local>,
        app: u64,
        path: &str,
        n: usize,
        max_wait: Duration,
    ) -> Vec<(usize, Instant)> {
        let released = Arc::new(StdMutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for i in 0..n {
            let (limiter, released, api) = (limiter.clone(), released.clone(), api(path));
            tasks.push(tokio::spawn(async move {
                if limiter.acquire(app, &api, max_wait).await.is_ok() {
                    released.lock().unwrap().push((i, Instant::now()));
                }
            }));
            // Let task i take its place in line before task i + 1 arrives.
            tokio::task::yield_now().await;
        }
        for task in tasks {
            task.await.unwrap();
        }
        Arc::try_unwrap(released).unwrap().into_inner().unwrap()
    }

    /// The most releases in any window of one second (closed at both ends).
    fn busiest_second(times: &[Instant]) -> usize {
        busiest_within(times, Duration::from_secs(1))
    }

    /// The most releases in any window of `window` (closed at both ends).
    fn busiest_within(times: &[Instant], window: Duration) -> usize {
        let each: Vec<(Instant, u32)> = times.iter().map(|at| (*at, 1)).collect();
        busiest_window(&each, window) as usize
    }

    #[tokio::test(start_paused = true)]
    async fn closing_refuses_the_waiters_whose_turn_comes_after_it_before_their_turn() {
        // 10/s paced at 9.6/s: ten requests hold slots about 104 ms apart, up to ~0.94 s.
        let limiter = local(10);
        let mut tasks = Vec::new();
        for _ in 0..10 {
            let limiter = limiter.clone();
            tasks.push(tokio::spawn(async move {
                let answer = limiter.acquire(1, &api(SEND), Duration::from_secs(5)).await;
                (answer, Instant::now())
            }));
            tokio::task::yield_now().await;
        }
        let closed = Instant::now();
        limiter
            .limiter
            .close_at(closed + Duration::from_millis(300));
        let mut granted = Vec::new();
        for task in tasks {
            match task.await.unwrap() {
                (Ok(()), at) => granted.push(at),
                (Err(throttled), at) => {
                    // Each waits first in sendmsg's own 200/s lane (one slot of ~5.2 ms per
                    // request ahead, under 50 ms for ten), whose slots all come before the
                    // closing time; it is refused as soon as it reaches the app lane, whose
                    // turn for it would come after the closing time — never at that turn.
                    assert!(
                        at - closed < Duration::from_millis(50),
                        "refused before its turn, not at it: {:?}",
                        at - closed
                    );
                    assert!(at + throttled.retry_after > closed + Duration::from_millis(300));
                }
            }
        }
        // Slots at 0, 104, 208 ms come before the closing time; the other seven do not.
        assert_eq!(granted.len(), 3, "{granted:?}");
        assert!(
            granted
                .iter()
                .all(|at| *at <= closed + Duration::from_millis(300))
        );
        // A request arriving now is refused at once too: its turn would come later still.
        let late = limiter.acquire(1, &api(SEND), Duration::from_secs(5)).await;
        assert!(late.is_err());
        assert_eq!(limiter.waiting(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_after_idle_never_exceeds_the_limit_in_any_second() {
        let limiter = local(200);
        let released = burst(&limiter, 1, SEND, 1000, Duration::from_secs(60)).await;
        let times: Vec<Instant> = released.iter().map(|(_, t)| *t).collect();
        assert_eq!(times.len(), 1000);
        assert!(busiest_second(&times) <= 200, "{}", busiest_second(&times));
        // Efficiency under sustained overload: at least 95% of the limit.
        let span = (*times.last().unwrap() - times[0]).as_secs_f64();
        let rate = 999.0 / span;
        assert!(rate >= 0.95 * 200.0, "released {rate:.1}/s");
    }

    #[tokio::test(start_paused = true)]
    async fn the_guard_alone_never_admits_more_than_the_limit_in_a_second_and_its_spread() {
        // Sends as fast as the guard lets them, as if every paced wake-up came late at once.
        // A send may reach Tencent up to SPREAD after its admission, so the guard's window is
        // one second and SPREAD.
        for limit in [1, 2, 10, 33, 50, 100, 200, 1000] {
            let lane = Lane::new(Scope::App, std::num::NonZeroU32::new(limit).unwrap());
            let end = Instant::now() + Duration::from_secs(3);
            let mut times = Vec::new();
            while Instant::now() < end {
                guard(&[(&lane, NonZeroU32::MIN)], end + Duration::from_secs(60))
                    .await
                    .unwrap();
                times.push(Instant::now());
            }
            let spread = busiest_within(&times, Duration::from_secs(1) + SPREAD);
            assert!(spread <= limit as usize, "limit {limit}: {spread}");
            assert!(
                busiest_second(&times) >= (limit as usize * 96) / 100,
                "limit {limit}: too strict"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_lane_of_a_longer_period_keeps_its_limit_within_the_period_and_its_spread() {
        // 12,000 units a minute, calls of up to 500 units: the burst is raised to 500.
        let minute = Duration::from_secs(60);
        let (limit, largest) = (
            NonZeroU32::new(12_000).unwrap(),
            NonZeroU32::new(500).unwrap(),
        );
        let lane = Lane::of(Scope::App, limit, minute, largest);
        let end = Instant::now() + Duration::from_secs(150);
        let mut sent = Vec::new();
        while Instant::now() < end {
            guard(&[(&lane, largest)], end + Duration::from_secs(60))
                .await
                .unwrap();
            sent.push((Instant::now(), largest.get()));
        }
        assert!(busiest_window(&sent, minute + SPREAD) <= limit.get());
        assert!(busiest_window(&sent, minute) >= limit.get() * 95 / 100);
    }

    #[tokio::test(start_paused = true)]
    async fn an_api_limit_holds_beside_the_app_limit() {
        let limiter = local(200);
        let released = burst(&limiter, 1, ROOM_LIST, 60, Duration::from_secs(60)).await;
        let times: Vec<Instant> = released.iter().map(|(_, t)| *t).collect();
        assert!(busiest_second(&times) <= 10, "{}", busiest_second(&times));
        let span = (*times.last().unwrap() - times[0]).as_secs_f64();
        assert!(59.0 / span >= 9.5, "released {:.2}/s", 59.0 / span);
    }

    #[tokio::test(start_paused = true)]
    async fn waiters_are_released_first_in_first_out() {
        let limiter = local(50);
        let released = burst(&limiter, 1, SEND, 200, Duration::from_secs(60)).await;
        let order: Vec<usize> = released.iter().map(|(i, _)| *i).collect();
        assert_eq!(order, (0..200).collect::<Vec<_>>());
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_predicted_too_long_is_refused_at_once() {
        let limiter = local(10);
        let max_wait = Duration::from_millis(250);
        // Three fit within 250 ms at 9.6/s (0, 104, 208 ms); the fourth is refused.
        let released = burst(&limiter, 1, SEND, 3, max_wait).await;
        assert_eq!(released.len(), 3);
        let before = Instant::now();
        let refused = limiter
            .acquire(1, &api(SEND), Duration::ZERO)
            .await
            .unwrap_err();
        assert_eq!(Instant::now(), before, "refused without waiting");
        assert_eq!(refused.scope, Scope::App);
        assert!(
            refused.retry_after > Duration::ZERO
                && refused.retry_after <= Duration::from_millis(105)
        );

        let room_list = local(200);
        room_list
            .acquire(1, &api(ROOM_LIST), max_wait)
            .await
            .unwrap();
        let refused = room_list
            .acquire(1, &api(ROOM_LIST), Duration::from_millis(50))
            .await
            .unwrap_err();
        assert_eq!(refused.scope, Scope::Api);
    }

    #[tokio::test(start_paused = true)]
    async fn saturating_one_app_does_not_slow_another() {
        let limiter = local(10);
        let busy = limiter.clone();
        let flood =
            tokio::spawn(async move { burst(&busy, 1, SEND, 50, Duration::from_secs(60)).await });
        for _ in 0..10_000 {
            if limiter.waiting() >= 45 {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert!(limiter.waiting() >= 45);
        let before = Instant::now();
        limiter
            .acquire(2, &api(SEND), Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(Instant::now(), before);
        assert_eq!(flood.await.unwrap().len(), 50);
        assert_eq!(limiter.waiting(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_caller_that_leaves_gives_its_turn_back() {
        let limiter = local(10);
        let send = api(SEND);
        limiter.acquire(1, &send, Duration::ZERO).await.unwrap();
        let leaver = limiter.acquire(1, &send, Duration::from_secs(1));
        // Poll once so it takes its place, then drop it: it leaves the queue.
        let mut leaver = Box::pin(leaver);
        assert!(futures_poll_once(leaver.as_mut()).await.is_none());
        assert_eq!(limiter.waiting(), 1);
        drop(leaver);
        assert_eq!(limiter.waiting(), 0);
        // The next caller gets the slot the leaver had, ~104 ms after the first.
        let start = Instant::now();
        limiter
            .acquire(1, &send, Duration::from_secs(1))
            .await
            .unwrap();
        assert!(Instant::now() - start <= Duration::from_millis(105));
    }

    #[tokio::test(start_paused = true)]
    async fn tencents_rate_limit_answer_halves_the_pace_for_a_while() {
        let limiter = local(100);
        let send = api(SEND);
        limiter.slow_down(1, &send, Scope::App);
        let released = burst(&limiter, 1, SEND, 41, Duration::from_secs(60)).await;
        let span = released.last().unwrap().1 - released[0].1;
        // 40 intervals at half of 96/s take about 0.83 s instead of 0.42 s.
        assert!(span >= Duration::from_millis(800), "{span:?}");
    }

    /// Lanes of app 1 at `rate_limit`, with the calls limits `api_limits` besides.
    fn app(rate_limit: u32, api_limits: &[(&str, u32)]) -> Lanes {
        Limiter::default().lanes(spec(1, rate_limit, api_limits))
    }

    /// Sends `measured` to `path` at each of `at` (in order), each waiting up to `max_wait`;
    /// returns the send times of those that went.
    async fn schedule(
        lanes: &Arc<Lanes>,
        path: &str,
        at: Vec<(Instant, Vec<Measured>)>,
        max_wait: Duration,
    ) -> Vec<Instant> {
        let tasks: Vec<_> = at
            .into_iter()
            .map(|(at, measured)| {
                let (lanes, api) = (lanes.clone(), api(path));
                tokio::spawn(async move {
                    tokio::time::sleep_until(at).await;
                    let turn = lanes.turn(&api, &measured, max_wait).await.ok()?;
                    turn.send_now().await.ok()?;
                    Some(Instant::now())
                })
            })
            .collect();
        let mut sent = Vec::new();
        for task in tasks {
            sent.extend(task.await.unwrap());
        }
        sent
    }

    fn costing(cost: u32, key: Option<&str>) -> Vec<Measured> {
        vec![Measured {
            cost: NonZeroU32::new(cost).unwrap(),
            key: key.map(str::to_owned),
        }]
    }

    #[tokio::test(start_paused = true)]
    async fn every_api_is_held_to_200_a_second_beside_a_larger_app_lane() {
        let lanes = Arc::new(app(1000, &[]));
        let now = Instant::now();
        let burst = (0..300).map(|_| (now, Vec::new())).collect();
        let sent = schedule(&lanes, SEND, burst, Duration::from_secs(10)).await;
        assert_eq!(sent.len(), 300);
        assert!(busiest_second(&sent) <= 200, "{}", busiest_second(&sent));
        // Another API is not held up by sendmsg's lane.
        // Another API is not held up by sendmsg's lane: only by the app's 1,000/s spacing.
        let before = Instant::now();
        lanes
            .acquire(&api("/v4/openim/querystate"), Duration::from_millis(5))
            .await
            .unwrap();
        assert!(Instant::now() - before <= Duration::from_millis(2));
        // A bought-up rate lifts it.
        let lanes = Arc::new(app(1000, &[("openim/sendmsg", 300)]));
        let now = Instant::now();
        let burst = (0..300).map(|_| (now, Vec::new())).collect();
        let sent = schedule(&lanes, SEND, burst, Duration::from_secs(10)).await;
        assert!(busiest_second(&sent) > 250, "{}", busiest_second(&sent));
    }

    /// The most units sent within any closed window of `period`.
    fn busiest_window(sent: &[(Instant, u32)], period: Duration) -> u32 {
        let mut sent = sent.to_vec();
        sent.sort();
        let (mut start, mut units, mut most) = (0, 0, 0);
        for end in 0..sent.len() {
            units += sent[end].1;
            while sent[end].0 - sent[start].0 > period {
                units -= sent[start].1;
                start += 1;
            }
            most = most.max(units);
        }
        most
    }

    #[tokio::test(start_paused = true)]
    async fn recipients_stay_within_12000_in_every_sliding_minute() {
        const BATCH: &str = "/v4/openim/batchsendmsg";
        let lanes = Arc::new(app(1000, &[]));
        let now = Instant::now();
        let calls = (0..40).map(|_| (now, costing(500, None))).collect();
        let sent = schedule(&lanes, BATCH, calls, Duration::from_secs(3600)).await;
        assert_eq!(sent.len(), 40);
        let units: Vec<(Instant, u32)> = sent.iter().map(|t| (*t, 500)).collect();
        let minute = Duration::from_secs(60);
        assert!(busiest_window(&units, minute) <= 12_000);
        // …and not far below it: 20,000 recipients go out within about 100 s.
        let span = *sent.iter().max().unwrap() - *sent.iter().min().unwrap();
        assert!(span <= Duration::from_secs(105), "{span:?}");
        // Right after, the next call's turn is 2.6 s away: past a 1 s wait, refused at once.
        let before = Instant::now();
        let refused = lanes
            .turn(&api(BATCH), &costing(500, None), Duration::from_secs(1))
            .await;
        assert!(refused.is_err());
        assert_eq!(Instant::now(), before);
    }

    #[tokio::test(start_paused = true)]
    async fn a_busy_group_is_held_to_40_a_second_and_a_quiet_one_is_not_slowed() {
        const GROUP: &str = "/v4/group_open_http_svc/send_group_msg";
        let lanes = Arc::new(app(1000, &[]));
        let start = Instant::now();
        let every = |hz: u64, key: &'static str| {
            (0..3 * hz).map(move |i| {
                let at = start + Duration::from_micros(i * 1_000_000 / hz);
                (at, costing(1, Some(key)))
            })
        };
        let busy = schedule(
            &lanes,
            GROUP,
            every(100, "busy").collect(),
            Duration::from_secs(60),
        );
        let quiet = every(30, "quiet").collect::<Vec<_>>();
        let asked: Vec<Instant> = quiet.iter().map(|(at, _)| *at).collect();
        let quiet = schedule(&lanes, GROUP, quiet, Duration::from_secs(60));
        let (busy, quiet) = tokio::join!(busy, quiet);
        assert_eq!(busy.len(), 300);
        assert!(busiest_second(&busy) <= 40, "{}", busiest_second(&busy));
        assert_eq!(quiet.len(), 90);
        let mut quiet = quiet;
        quiet.sort();
        // The quiet group waits at most one slot of the API's 200/s lane and one of the
        // app's, which both groups share, never for the busy group's own lane.
        let shared = Duration::from_secs_f64(1.0 / 192.0 + 1.0 / 960.0);
        for (sent, asked) in quiet.iter().zip(&asked) {
            assert!(*sent - *asked <= shared, "{:?}", *sent - *asked);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn keyed_lanes_are_bounded_and_gone_once_idle() {
        let keyed = Keyed::new(
            Scope::Api,
            NonZeroU32::new(40).unwrap(),
            Duration::from_secs(1),
            NonZeroU32::MIN,
        );
        let now = Instant::now();
        // Lanes held by turns in flight: every set fills, further keys are refused.
        let held: Vec<Arc<Lane>> = (0..20_000)
            .filter_map(|i| keyed.lane(&format!("g{i}"), now).ok())
            .collect();
        assert_eq!(held.len(), SETS * WAYS);
        for lane in &held {
            lane.reserve(now, Duration::ZERO, NonZeroU32::MIN)
                .unwrap()
                .used();
        }
        assert_eq!(keyed.live(now), SETS * WAYS);
        // A key with a lane keeps it.
        assert!(Arc::ptr_eq(&keyed.lane("g0", now).unwrap(), &held[0]));
        drop(held);
        // Unheld but reserved ahead: not yet anyone else's.
        assert!(keyed.lane("late", now).is_err());
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(keyed.live(Instant::now()), 0);
        // Idle lanes are taken over by new keys, as fresh ones.
        for i in 0..500 {
            let lane = keyed.lane(&format!("h{i}"), Instant::now()).unwrap();
            assert!(lane.is_fresh(Instant::now()));
        }
    }

    async fn futures_poll_once<F: Future + Unpin>(mut future: F) -> Option<F::Output> {
        std::future::poll_fn(|cx| match Pin::new(&mut future).poll(cx) {
            std::task::Poll::Ready(v) => std::task::Poll::Ready(Some(v)),
            std::task::Poll::Pending => std::task::Poll::Ready(None),
        })
        .await
    }
}

//! One app's lanes at work: a turn prepared from the lanes of its API, its caller and its
//! app, and asked of the app's backend (`Lanes::ask`); Tencent's "too fast" slowing them
//! (`Lanes::slow_down`); and the lanes built from an app's spec (`Limiter::build`), taking
//! over from the lanes before a reload.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::backend::Implicit;
use crate::limit::{ApiLanes, Limit, QuotaLanes};
use crate::pace::Closing;
use crate::spec::{AppSpec, CallerSpec};
use crate::table::Quota;
use crate::{Asked, Hasher, Lanes, Limiter, Measured, Scope, Throttled, Turn};

impl Lanes {
    /// The lanes of `api`, found once for the steps of a request that need them.
    pub fn of<'a, 'n>(&'a self, api: &'n str) -> LanesOf<'a, 'n> {
        LanesOf {
            lanes: self,
            entry: self.apis.get(api),
            api,
        }
    }

    /// The quotas of `api` beyond calls a second, whose costs and keys `turn` needs.
    pub fn quotas(&self, api: &str) -> &[Quota] {
        self.of(api).quotas()
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
        self.of(api).guards_with_turn()
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
        self.of(api).ask(caller, measured, max_wait, ready).await
    }

    /// `turn` then `send_now`, for a caller with nothing to prepare in between.
    pub async fn acquire(&self, api: &str, max_wait: Duration) -> Result<(), Throttled> {
        self.turn(api, &[], max_wait).await?.send_now().await
    }

    /// Tencent said `scope` is over its limit: run it slower for a while (in the fleet: for
    /// every replica).
    pub fn slow_down(&self, api: &str, scope: Scope) {
        let own = match scope {
            Scope::Api => self.apis.get(api).and_then(|l| l.calls.clone()),
            Scope::App | Scope::Caller | Scope::Share => None,
        };
        let limit = match own {
            Some(own) => own,
            None if scope == Scope::Api => {
                self.backend.slow_implicit(api, &self.app);
                return;
            }
            None => self.app.clone(),
        };
        limit.lane.slow_down(Instant::now());
        self.backend.slow_down(&limit);
    }
}

/// The lanes of one API of an app (`Lanes::of`): found once, by name, for every step of a
/// request that needs them (its quotas, whether its turn guards the send, the turn itself).
#[derive(Clone, Copy)]
pub struct LanesOf<'a, 'n> {
    lanes: &'a Lanes,
    entry: Option<&'a ApiLanes>,
    /// The API's name.
    api: &'n str,
}

impl<'a> LanesOf<'a, '_> {
    /// The API's quotas beyond calls a second, whose costs and keys `ask` needs.
    pub fn quotas(&self) -> &'a [Quota] {
        self.entry.map_or(&[], |lanes| &lanes.quotas)
    }

    /// `Lanes::guards_with_turn` of the API.
    pub fn guards_with_turn(&self) -> bool {
        let quotas = self.entry.is_some_and(|lanes| !lanes.lanes.is_empty());
        !quotas && self.lanes.backend.guards_with_turn()
    }

    /// `Lanes::ask` of the API.
    pub async fn ask(
        &self,
        caller: Option<&str>,
        measured: &[Measured],
        max_wait: Duration,
        ready: bool,
    ) -> Result<Asked<'a>, Throttled> {
        let turn = self.prepare(caller, measured, max_wait)?;
        self.lanes.backend.ask(self.lanes, turn, ready).await
    }

    /// The turn of a request of `caller`, not yet waited for.
    fn prepare(
        &self,
        caller: Option<&str>,
        measured: &[Measured],
        max_wait: Duration,
    ) -> Result<Turn<'a>, Throttled> {
        let (lanes, entry) = (self.lanes, self.entry);
        let now = Instant::now();
        let mut local = Vec::new();
        for (i, quota) in entry.iter().flat_map(|l| &l.lanes).enumerate() {
            let measured = measured.get(i);
            let cost = measured.map_or(NonZeroU32::MIN, |m| m.cost);
            local.push((
                quota.lane(measured.and_then(|m| m.key.as_deref()), now)?,
                cost,
            ));
        }
        let mut calls = entry.and_then(|l| l.calls.clone());
        if calls.is_none() {
            match lanes.backend.implicit(self.api, now)? {
                Implicit::Lane(lane) => local.push((lane, NonZeroU32::MIN)),
                Implicit::Limit(limit) => calls = Some(limit),
                Implicit::App => {}
            }
        }
        Ok(Turn {
            guarded: false,
            caller: caller
                .and_then(|name| lanes.callers.get(name))
                .map(|l| &**l),
            local,
            quotas: lanes.backend.quota_asks(entry, measured),
            entry,
            api: calls,
            app: &lanes.app,
            backend: &lanes.backend,
            max_wait,
        })
    }
}

impl Limiter {
    /// The lanes of `app` and `callers`, taking over from `previous` (the same app's lanes
    /// before a reload) when given.
    pub(crate) fn build<'c>(
        &self,
        app: &AppSpec,
        callers: impl Iterator<Item = CallerSpec<'c>>,
        previous: Option<&Lanes>,
    ) -> Lanes {
        let callers = callers
            .map(|(name, n)| {
                let before = previous.and_then(|p| p.callers.get(name));
                let key = self.backend.caller_key(app.sdkappid, name);
                (name.to_owned(), Limit::after(Scope::Caller, n, before, key))
            })
            .collect();
        let key = self.backend.key(app.sdkappid, None);
        Lanes {
            app: Limit::after(Scope::App, app.rate_limit, previous.map(|p| &p.app), key),
            apis: self.api_lanes(app, previous),
            callers,
            waiting: self.waiting.clone(),
            backend: self.backend.app(app, previous.map(|p| &p.backend)),
            closing: Closing::new(self.closing.subscribe()),
        }
    }

    /// The lanes of each API of `app` with an entry: its calls limit, if configured, and
    /// its quotas.
    fn api_lanes(
        &self,
        app: &AppSpec,
        previous: Option<&Lanes>,
    ) -> HashMap<String, ApiLanes, Hasher> {
        let before = |api: &str| previous.and_then(|p| p.apis.get(api));
        let mut apis: HashMap<String, ApiLanes, Hasher> = app
            .api_limits
            .iter()
            .map(|(api, n)| {
                let calls = before(api).and_then(|l| l.calls.as_ref());
                let key = self.backend.key(app.sdkappid, Some(api));
                let lanes = ApiLanes {
                    calls: Some(Limit::after(Scope::Api, *n, calls, key)),
                    ..ApiLanes::default()
                };
                (api.clone(), lanes)
            })
            .collect();
        // In a fleet these are the local layer (no replica alone sends more than a quota);
        // the quota itself is kept in Redis too.
        for quota in &app.api_quotas {
            // A reload keeps an unchanged quota's lanes: its window's sends still count.
            let kept = before(&quota.api).and_then(|p| p.lanes_of(quota));
            let lanes = apis.entry(quota.api.clone()).or_default();
            lanes.quotas.push(quota.clone());
            lanes
                .lanes
                .push(kept.unwrap_or_else(|| Arc::new(QuotaLanes::new(quota, quota.rate))));
        }
        apis
    }
}

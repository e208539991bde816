//! The seam between the lanes and where they are kept: on this replica alone
//! ([`crate::local`]), or shared with a fleet through Redis (`fleet::shared`). Lane code asks
//! its app's backend; each method here is one match that hands over to the variant's own
//! implementation, so neither pays for the other (no dynamic dispatch, no allocation).

use std::sync::Arc;

use tokio::time::Instant;

use crate::fleet::{Ask, Fleet, Shared};
use crate::lane::Lane;
use crate::limit::{ApiLanes, Limit};
use crate::local::Local;
use crate::spec::AppSpec;
use crate::{Asked, Lanes, Measured, Throttled, Turn};

/// Where a limiter keeps its lanes.
#[derive(Default)]
pub(crate) enum Backend {
    /// On this replica alone.
    #[default]
    Local,
    /// Shared with the fleet through Redis, this replica's own lanes in front.
    Fleet(Arc<Fleet>),
}

impl Backend {
    /// The Redis key of a calls lane of app `sdkappid` (the app's, or `api`'s); none locally.
    pub(crate) fn key(&self, sdkappid: u64, api: Option<&str>) -> Arc<str> {
        match self {
            Backend::Local => Arc::default(),
            Backend::Fleet(fleet) => fleet.key(sdkappid, api).into(),
        }
    }

    /// The Redis key of `caller`'s own lane within app `sdkappid`; none locally.
    pub(crate) fn caller_key(&self, sdkappid: u64, caller: &str) -> Arc<str> {
        match self {
            Backend::Local => Arc::default(),
            Backend::Fleet(fleet) => fleet.caller_key(sdkappid, caller).into(),
        }
    }

    /// `app`'s part of the backend, taking over from `previous` (the app's before a reload).
    pub(crate) fn app(&self, app: &AppSpec, previous: Option<&AppBackend>) -> AppBackend {
        match (self, previous) {
            (Backend::Local, Some(AppBackend::Local(previous))) => {
                AppBackend::Local(Local::new(Some(previous)))
            }
            (Backend::Local, _) => AppBackend::Local(Local::new(None)),
            (Backend::Fleet(fleet), Some(AppBackend::Fleet(previous))) => {
                AppBackend::Fleet(Shared::new(fleet, app, Some(previous)))
            }
            (Backend::Fleet(fleet), _) => AppBackend::Fleet(Shared::new(fleet, app, None)),
        }
    }

    /// Gives this replica's fleet claim back; nothing to give locally.
    pub(crate) async fn leave(&self) {
        match self {
            Backend::Local => {}
            Backend::Fleet(fleet) => fleet.leave().await,
        }
    }
}

/// One app's part of the backend, carried by its `Lanes`.
pub(crate) enum AppBackend {
    Local(Local),
    Fleet(Shared),
}

/// Where an API without a calls limit of its own is paced.
pub(crate) enum Implicit {
    /// In a lane of this replica's own, kept by the API's name.
    Lane(Arc<Lane>),
    /// In a lane kept in Redis.
    Limit(Arc<Limit>),
    /// In the app's lane alone.
    App,
}

impl AppBackend {
    /// Where `api`, which has no calls limit of its own, is paced.
    pub(crate) fn implicit(&self, api: &str, now: Instant) -> Result<Implicit, Throttled> {
        Ok(match self {
            AppBackend::Local(local) => Implicit::Lane(local.implicit(api, now)?),
            AppBackend::Fleet(shared) => match shared.implicit(api, now)? {
                Some(limit) => Implicit::Limit(limit),
                None => Implicit::App,
            },
        })
    }

    /// What a turn asks of Redis for the quotas of its API's `lanes`; nothing locally.
    pub(crate) fn quota_asks(&self, lanes: Option<&ApiLanes>, measured: &[Measured]) -> Vec<Ask> {
        match (self, lanes) {
            (AppBackend::Fleet(shared), Some(lanes)) => shared.quota_asks(lanes, measured),
            _ => Vec::new(),
        }
    }

    /// Whether a turn without lanes of this replica's own may pass its send-time guard in
    /// its first phase ([`Lanes::guards_with_turn`]).
    pub(crate) fn guards_with_turn(&self) -> bool {
        match self {
            AppBackend::Local(_) => false,
            AppBackend::Fleet(shared) => shared.guards_with_turn(),
        }
    }

    /// The first phase of `turn` ([`Lanes::ask`]).
    pub(crate) async fn ask<'a>(
        &'a self,
        lanes: &'a Lanes,
        turn: Turn<'a>,
        ready: bool,
    ) -> Result<Asked<'a>, Throttled> {
        match self {
            AppBackend::Local(_) => Ok(Local::ask(lanes, turn)),
            AppBackend::Fleet(shared) => shared.ask(lanes, turn, ready).await,
        }
    }

    /// The backend's send-time guard for `turn`, by `by`, after this replica's own.
    pub(crate) async fn send(&self, turn: &Turn<'_>, by: Instant) -> Result<(), Throttled> {
        match self {
            AppBackend::Local(_) => Ok(()),
            AppBackend::Fleet(shared) => shared.send(turn, by).await,
        }
    }

    /// Tencent said `api`, which has no calls limit of its own, is too fast: slow the lane
    /// that paces it (`app`'s when no other does).
    pub(crate) fn slow_implicit(&self, api: &str, app: &Limit) {
        match self {
            AppBackend::Local(local) => local.slow_implicit(api),
            AppBackend::Fleet(shared) => shared.slow_implicit(api, app),
        }
    }

    /// Tencent said `limit` is over, and its own lane slowed: slow what the backend keeps
    /// of it.
    pub(crate) fn slow_down(&self, limit: &Limit) {
        match self {
            AppBackend::Local(_) => {}
            AppBackend::Fleet(shared) => shared.slow_down(limit),
        }
    }
}

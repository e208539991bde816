//! The limits of one app as its lanes hold them: a calls limit (`Limit`: the app's, an
//! API's, a caller's), an API's entry (`ApiLanes`: its calls limit and its quotas), and a
//! quota's lanes (`QuotaLanes`: one, or one per key).

use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};

use tokio::time::Instant;

use crate::keyed::Keyed;
use crate::lane::Lane;
use crate::table::Quota;
use crate::{Scope, Throttled};

/// One limit of an app: its local lane, and where it lives in the fleet.
pub(crate) struct Limit {
    /// Its lane; a reload that changes the limit hands its turns on to a successor.
    pub(crate) lane: Arc<Lane>,
    /// The lane's Redis key (empty without a fleet), shared with every ask for it.
    pub(crate) key: Arc<str>,
    /// The lane at this replica's fallback share, rebuilt when the share changes.
    pub(crate) fallback: Mutex<Option<(NonZeroU32, Arc<Lane>)>>,
}

impl Limit {
    /// A limit of `n` in `scope`: `before` itself when its limit is `n` (a reload that did
    /// not change it), a successor to `before` when it is not, else a lane of its own.
    /// `key` is its lane's key in Redis (empty without a fleet).
    pub(crate) fn after(
        scope: Scope,
        n: NonZeroU32,
        before: Option<&Arc<Limit>>,
        key: Arc<str>,
    ) -> Arc<Limit> {
        let lane = match before {
            Some(before) if before.limit() == n => return before.clone(),
            Some(before) => Lane::succeed(&before.lane, n),
            None => Arc::new(Lane::new(scope, n)),
        };
        Arc::new(Limit {
            lane,
            key,
            fallback: Mutex::new(None),
        })
    }

    /// The limit in force now: the newest lane's, also for a request of an older configuration.
    pub(crate) fn limit(&self) -> NonZeroU32 {
        self.lane.newest().limit
    }
}

/// The lanes of one API with an entry: its calls limit, if configured, and its quotas.
#[derive(Default)]
pub(crate) struct ApiLanes {
    pub(crate) calls: Option<Arc<Limit>>,
    pub(crate) quotas: Vec<Quota>,
    pub(crate) lanes: Vec<Arc<QuotaLanes>>,
    /// In a fleet, the quotas' lanes at this replica's share while Redis is gone, made
    /// afresh for each loss of Redis (its generation).
    pub(crate) fallback: Mutex<Option<(u64, Vec<Arc<QuotaLanes>>)>>,
}

impl ApiLanes {
    /// The lanes of a quota equal to `quota`, if it has one.
    pub(crate) fn lanes_of(&self, quota: &Quota) -> Option<Arc<QuotaLanes>> {
        let i = self.quotas.iter().position(|q| q == quota)?;
        self.lanes.get(i).cloned()
    }
}

/// A quota's lanes: one for all requests, or one per value of its key.
pub(crate) enum QuotaLanes {
    One(Arc<Lane>),
    Keyed(Keyed),
}

impl QuotaLanes {
    /// `quota`'s lanes, each at `rate` units per its window.
    pub(crate) fn new(quota: &Quota, rate: NonZeroU32) -> QuotaLanes {
        let (period, largest) = (quota.per.period(), quota.largest_cost());
        match quota.key {
            Some(_) => QuotaLanes::Keyed(Keyed::new(Scope::Api, rate, period, largest)),
            None => QuotaLanes::One(Arc::new(Lane::of(Scope::Api, rate, period, largest))),
        }
    }

    /// The lane of a request with `key` (one lane for all without a key).
    pub(crate) fn lane(&self, key: Option<&str>, now: Instant) -> Result<Arc<Lane>, Throttled> {
        match self {
            QuotaLanes::One(lane) => Ok(lane.clone()),
            QuotaLanes::Keyed(keyed) => keyed.lane(key.unwrap_or(""), now),
        }
    }
}

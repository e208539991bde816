//! Lanes keyed by a value the caller chooses (a `GroupId`, an API's name), bounded in memory.
//!
//! A keyed lane exists only while it holds state a fresh lane would not: a slot reserved
//! ahead, a guard not yet refilled, a slow-down. GCRA state past that horizon *is* a fresh
//! lane's, so handing an idle lane to another key changes nothing either key sees: eviction
//! is exact. The lanes live in a fixed set-associative table: a key's 64-bit fingerprint
//! (SipHash with a per-process random key, so callers cannot aim keys at one set) picks one
//! of `SETS` sets of at most `WAYS` lanes. A new key takes a free way or one whose lane is
//! fresh and held by no turn; when all `WAYS` lanes of its set are busy, the request is
//! refused (429) as if its lane were full. Memory is therefore at most `SETS × WAYS` lanes per
//! keyed quota of an app, however many keys callers send, and a flood of distinct keys
//! leaves nothing behind once idle. A set is busy only with `WAYS` keys sent within about one
//! interval of each other, far above what an app's own lane lets through.

use std::hash::{BuildHasher, RandomState};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::lane::Lane;
use super::{Scope, Throttled};

/// Sets in a keyed table.
pub const SETS: usize = 512;
/// Lanes per set.
pub const WAYS: usize = 8;

/// One keyed quota's lanes.
pub(super) struct Keyed {
    scope: Scope,
    limit: NonZeroU32,
    period: Duration,
    largest: NonZeroU32,
    hasher: RandomState,
    sets: Box<[Mutex<Vec<Way>>]>,
}

/// A lane and the fingerprint of the key that holds it.
struct Way {
    owner: u64,
    lane: Arc<Lane>,
}

impl Keyed {
    /// A table of lanes of `limit` units per `period`, requests costing at most `largest`.
    pub(super) fn new(
        scope: Scope,
        limit: NonZeroU32,
        period: Duration,
        largest: NonZeroU32,
    ) -> Keyed {
        Keyed {
            scope,
            limit,
            period,
            largest,
            hasher: RandomState::new(),
            sets: (0..SETS).map(|_| Mutex::new(Vec::new())).collect(),
        }
    }

    /// The lane of `key`, made or taken over if it has none; `Throttled` when every lane of
    /// its set is in use by other keys.
    pub(super) fn lane(&self, key: &str, now: Instant) -> Result<Arc<Lane>, Throttled> {
        let owner = self.hasher.hash_one(key);
        let set = &self.sets[(owner % SETS as u64) as usize];
        let mut ways = set
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(way) = ways.iter().find(|w| w.owner == owner) {
            return Ok(way.lane.clone());
        }
        if ways.len() < WAYS {
            let lane = Arc::new(Lane::of(self.scope, self.limit, self.period, self.largest));
            ways.push(Way {
                owner,
                lane: lane.clone(),
            });
            return Ok(lane);
        }
        // A lane no turn holds and as a fresh one would be: its new key sees a fresh lane.
        let idle = ways
            .iter_mut()
            .find(|w| Arc::strong_count(&w.lane) == 1 && w.lane.is_fresh(now));
        match idle {
            Some(way) => {
                way.owner = owner;
                Ok(way.lane.clone())
            }
            None => Err(Throttled {
                scope: self.scope,
                retry_after: self.period / self.limit.get(),
            }),
        }
    }

    /// How many keys hold a lane that is not fresh at `now`.
    #[cfg(test)]
    pub(super) fn live(&self, now: Instant) -> usize {
        self.sets
            .iter()
            .map(|set| {
                let ways = set
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                ways.iter().filter(|w| !w.lane.is_fresh(now)).count()
            })
            .sum()
    }
}

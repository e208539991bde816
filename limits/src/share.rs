//! A quota's share on a replica cut off from the fleet's Redis, when one call may cost more
//! than the share can carry.
//!
//! In a fleet every limit is kept in Redis at its whole size, whatever `replicas` is: the
//! share matters only while a replica is cut off, when it paces and guards itself at its
//! claim of each limit (1/members of it). A cost quota's share can then be smaller than one
//! call: `openim/batchsendmsg`'s 12,000 recipients a minute over 100 replicas is 120 each,
//! and one call may name 500. No window of the share could hold such a call without passing
//! the share, so the rule is:
//!
//! - a share's lane keeps the most one call may cost at half its size, as every lane does
//!   (`Lane::of`: its pacing then runs at the quota's rate, not one unit a period);
//! - a call that costs more, or any call on a share that is nothing (40 a second per group
//!   over more than 40 replicas), waits for Redis within its `max_queue_wait_ms` (a beat at
//!   a time: back in Redis, it is admitted against the whole quota), and is then refused:
//!   `Scope::Share`, which timgate answers with 429 and Tencent's 60007, saying why.
//!
//! Smaller calls go on the share as before. So the configuration accepts any `replicas`.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use crate::lane::Lane;
use crate::table::Quota;
use crate::timing::BEAT;
use crate::{Scope, Throttled};

/// `quota` as this replica's share of it, `share` units a period: the most one call may cost
/// on it at most half the share.
pub(crate) fn quota(quota: &Quota, share: NonZeroU32) -> Quota {
    let half = NonZeroU32::new(share.get() / 2).unwrap_or(NonZeroU32::MIN);
    let code = quota.max_cost.map_or(0, |(_, code)| code);
    Quota {
        rate: share,
        max_cost: Some((quota.largest_cost().min(half), code)),
        ..quota.clone()
    }
}

/// The refusal of a call the share cannot carry: asked again after a beat, when Redis may
/// be back.
pub(crate) fn too_small() -> Throttled {
    Throttled {
        scope: Scope::Share,
        retry_after: BEAT,
    }
}

/// Refuses a call whose cost on one of `lanes` (a fallback turn's: lane, cost, period) is
/// more than that lane admits at once.
pub(crate) fn fits(lanes: &[(Arc<Lane>, NonZeroU32, Duration)]) -> Result<(), Throttled> {
    if lanes.iter().any(|(lane, cost, _)| *cost > lane.largest()) {
        return Err(too_small());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::Per;

    fn batch() -> Quota {
        crate::table::quotas()
            .into_iter()
            .find(|q| q.api == "openim/batchsendmsg")
            .unwrap()
    }

    #[test]
    fn a_share_smaller_than_a_call_carries_calls_up_to_half_of_it() {
        let n = |n| NonZeroU32::new(n).unwrap();
        // 12,000 a minute over 100 replicas: 120 each, one call at most 60 on it.
        let share = quota(&batch(), n(120));
        assert_eq!((share.rate, share.largest_cost()), (n(120), n(60)));
        assert_eq!(share.per, Per::Minute);
        // A share of 2,000 keeps Tencent's cap of 500, and the cap's code.
        let share = quota(&batch(), n(2000));
        assert_eq!(share.largest_cost(), n(500));
        assert_eq!(share.max_cost.unwrap().1, batch().max_cost.unwrap().1);
        assert_eq!(quota(&batch(), n(1)).largest_cost(), n(1));
        let lane = Arc::new(Lane::of(Scope::Api, n(120), Duration::from_secs(60), n(60)));
        let second = Duration::from_secs(60);
        assert!(fits(&[(lane.clone(), n(60), second)]).is_ok());
        let refused = fits(&[(lane, n(61), second)]).unwrap_err();
        assert_eq!(refused, too_small());
        assert_eq!(refused.scope, Scope::Share);
    }
}

//! Spending a turn: `Turn::send_now` passes this replica's send-time guard, then the
//! backend's (the fleet's, in Redis or on this replica's share), right before the write.

use std::num::NonZeroU32;

use tokio::time::Instant;

use crate::lane::{self, Lane, guard};
use crate::limit::Limit;
use crate::{Throttled, Turn};

impl Turn<'_> {
    /// The limits this attempt passes, narrowest first.
    pub(crate) fn limits(&self) -> impl Iterator<Item = &Limit> {
        self.caller
            .into_iter()
            .chain(self.api.as_deref())
            .chain([self.app])
    }

    /// Every lane this attempt passes and what it costs there, narrowest first: the
    /// caller's own lane before the API's lanes, so a caller flooding past its share queues
    /// there and takes no quota from the callers beside it.
    pub(crate) fn lanes(&self) -> impl Iterator<Item = (&Lane, NonZeroU32)> {
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
        self.backend.send(&self, by).await
    }
}

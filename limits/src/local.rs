//! The local backend: an app's lanes kept on this replica alone (`AppBackend::Local`).
//!
//! Every lane of a turn is paced here, so a turn is always a wait (`Asked::Waiting`), and the
//! send-time guard is this replica's own. An API without a calls limit of its own runs in
//! its implicit lane at `DEFAULT_API_RATE`, kept by the API's name (`keyed`).

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::keyed::Keyed;
use crate::lane::Lane;
use crate::pace::pace;
use crate::table::DEFAULT_API_RATE;
use crate::{Asked, Lanes, Scope, Throttled, Turn, Waiting};

/// One app's lanes as this replica alone keeps them.
pub(crate) struct Local {
    /// The lane of every API without a calls limit of its own, keyed by its name.
    implicit: Arc<Keyed>,
}

impl Local {
    /// The implicit lanes of `previous` (the app's before a reload: they never change, so a
    /// reload keeps them), or new ones.
    pub(crate) fn new(previous: Option<&Local>) -> Local {
        let implicit = previous.map_or_else(
            || {
                let default = NonZeroU32::new(DEFAULT_API_RATE).unwrap_or(NonZeroU32::MIN);
                let second = Duration::from_secs(1);
                Arc::new(Keyed::new(Scope::Api, default, second, NonZeroU32::MIN))
            },
            |previous| previous.implicit.clone(),
        );
        Local { implicit }
    }

    /// The implicit lane of `api`.
    pub(crate) fn implicit(&self, api: &str, now: Instant) -> Result<Arc<Lane>, Throttled> {
        self.implicit.lane(api, now)
    }

    /// The first phase of a turn: always the wait on this replica's lanes.
    pub(crate) fn ask<'a>(lanes: &'a Lanes, turn: Turn<'a>) -> Asked<'a> {
        Asked::Waiting(Waiting::new(wait(lanes, turn)))
    }

    /// Tencent said an API without a calls limit of its own is too fast: its implicit lane
    /// slows (a table too busy to hold it has nothing to slow).
    pub(crate) fn slow_implicit(&self, api: &str) {
        if let Ok(lane) = self.implicit.lane(api, Instant::now()) {
            lane.slow_down(Instant::now());
        }
    }
}

/// The wait for a turn on this replica's lanes alone.
async fn wait<'a>(lanes: &'a Lanes, turn: Turn<'a>) -> Result<Turn<'a>, Throttled> {
    let paced: Vec<(&Lane, NonZeroU32)> = turn.lanes().collect();
    pace(&paced, turn.max_wait, &lanes.waiting, &lanes.closing).await?;
    Ok(turn)
}

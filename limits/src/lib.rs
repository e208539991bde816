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
//!
//! # Where it is
//! This file is the public face: the types a caller holds (`Limiter`, `Lanes`, `Asked`,
//! `Waiting`, `Turn`, `Throttled`). Their work is done below it, each module naming only
//! those beneath:
//! - `lanes`: a turn prepared from an app's lanes and asked of its backend; an app's lanes
//!   built from its spec, and taken over on a reload; `turn`: a turn spent at the guards.
//! - `backend`: the seam. `Backend` (a limiter's) and `AppBackend` (an app's) are `Local` or
//!   `Fleet`; each method hands over to `local` (the lanes on this replica alone) or to
//!   `fleet::shared` (the lanes in Redis, with this replica's fallback share).
//! - `limit` (an app's calls limits and quotas as lanes), `pace` (waiting for slots),
//!   `lane` and `keyed` (one limit's pacing and guard), `measure` (a body's cost).
//! - `table` (Tencent's documented limits), `timing` (every timing constant), `spec` (what
//!   the configuration builds), `series` (the fleet's metrics).

mod backend;
mod fleet;
mod keyed;
mod lane;
mod lanes;
mod limit;
mod local;
mod measure;
mod pace;
pub mod series;
mod share;
pub mod spec;
pub mod table;
pub mod timing;
mod turn;

use std::collections::HashMap;
use std::future::{Future, IntoFuture};
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use backend::{AppBackend, Backend};
use fleet::{Ask, Fleet};
use lane::Lane;
use limit::{ApiLanes, Limit};
use pace::Closing;

pub use fleet::{BEAT, EXPIRY, MARGIN, QUARANTINE, RETAIN, script as fleet_script};
pub use keyed::{SETS, WAYS};
pub use lane::{TokioClock, TokioInstant};
pub use lanes::LanesOf;
pub use measure::{Measured, TooCostly, measure};
pub use series::FleetSeries;
pub use spec::{AppSpec, CallerSpec, ClusterSpec, FleetSpec, RedisSpec, SentinelSpec};
pub use table::{DEFAULT_API_RATE, Per, Quota};
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
    /// This replica's share of an API's quota while it is cut off from the fleet's Redis,
    /// too small for the call (Tencent's 60007; see `share`).
    Share,
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
    /// Where the lanes are kept: here alone, or shared with a fleet.
    backend: Backend,
    /// The last moment a turn may be granted, once the limiter closes (a drain).
    closing: Arc<watch::Sender<Option<Instant>>>,
}

impl Limiter {
    /// A limiter whose lanes are shared in Redis when `fleet` is given.
    pub fn new(fleet: Option<impl Into<FleetSpec>>, series: FleetSeries) -> Limiter {
        Limiter {
            waiting: Arc::default(),
            backend: fleet.map_or(Backend::Local, |f| {
                Backend::Fleet(Fleet::start(&f.into(), series))
            }),
            closing: Arc::default(),
        }
    }

    /// A limiter sharing its lanes through `fleet` (the simulations' own fleet).
    #[cfg(test)]
    fn on(fleet: Arc<Fleet>) -> Limiter {
        Limiter {
            backend: Backend::Fleet(fleet),
            ..Limiter::default()
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

    /// How many requests are waiting for a slot, across all lanes.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Gives this replica's fleet claim back; call once no request will be sent any more.
    pub async fn leave(&self) {
        self.backend.leave().await;
    }
}

/// The hasher of the maps a request looks up by name (`Lanes`' APIs and callers): foldhash,
/// seeded at random like std's SipHash, at a fraction of its cost on these short keys.
type Hasher = foldhash::fast::RandomState;

/// One app's limits, found once when a request is routed to the app.
pub struct Lanes {
    app: Arc<Limit>,
    apis: HashMap<String, ApiLanes, Hasher>,
    /// Callers with a `rate_limit` of their own, by name.
    callers: HashMap<String, Arc<Limit>, Hasher>,
    waiting: Arc<AtomicUsize>,
    /// Where the app's lanes are kept beyond this replica's own: nowhere, or in the fleet.
    backend: AppBackend,
    closing: Closing,
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
    /// The app's backend, whose send-time guard follows this replica's own.
    backend: &'a AppBackend,
    /// The longest the turn could wait; the send-time guard waits no longer, in any mode
    /// (a send that would wait longer is refused), so a request's waits for the limit add
    /// up to at most twice it, which the proxy keeps within its queue wait and deadline.
    max_wait: Duration,
}

#[cfg(test)]
mod tests;

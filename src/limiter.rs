//! Keeps every SDKAppID, and every API of it, under Tencent's call-frequency limits.
//!
//! Each limit L is a `Lane` with two layers:
//! - **Pacing** (ours): a request reserves the lane's next free slot (GCRA virtual scheduling,
//!   burst 1, at `PACE` × L), then sleeps until it. Slots are handed out in arrival
//!   order, so release is first-in first-out, and the wait is known at once: a request whose
//!   slot lies beyond its allowed wait is refused before it queues. Waiters are sleeping
//!   futures, no queue structure exists; a caller that disconnects drops its reservation (and
//!   gives the slot back when it was the last one).
//!   When the limiter closes (a drain), a slot after its closing time is refused as well,
//!   at once, for requests already sleeping towards one too.
//! - **Guard** (governor): at the actual moment of sending, every lane's governor limiter
//!   (rate r = `GUARD` × L, burst b = L − floor(r)) must admit the attempt. Late timer wake-ups
//!   can bunch paced requests; the guard cannot be fooled by that. GCRA admits at most
//!   b + floor(r) = L cells in any closed one-second window, so timgate never sends more than
//!   the limit in any sliding second, the first second after idle included. Pacing runs a
//!   little slower than the guard, so the guard only bites on jitter and the flow keeps a
//!   margin of about 4% for network jitter between here and Tencent.
//!
//! An API-limited request waits for its API lane first, then for the app lane, so a slow API
//! never holds up the app's other APIs. A caller with a `rate_limit` of its own waits in its
//! own lane of the app before either (the same pacing, guard and bounded wait), so a caller
//! flooding past its share queues in its own lane and never takes the app's whole limit
//! from the callers beside it. Each app's `Lanes` are built once from the
//! configuration and carried by its route, so no step looks the app up again; unknown
//! SDKAppIDs are refused by routing before they reach here.
//!
//! The order of one attempt is a type: `Lanes::turn` grants a `Turn`, the caller gets a
//! ready connection, and `Turn::send_now` consumes the turn at the send-time guard right
//! before the write. A turn cannot be spent twice, nor a guard passed without a turn.

mod fleet;
mod lane;

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use lane::{Lane, guard};
pub use lane::{TokioClock, TokioInstant};

use crate::api::Api;
use crate::config::{self, App};
use crate::metrics::FleetSeries;
use fleet::{Ask, Fleet};
pub use fleet::{BEAT, EXPIRY, MARGIN, QUARANTINE, RETAIN};

/// Share of the limit that pacing releases: the margin absorbs network jitter at Tencent.
pub const PACE: f64 = 0.96;
/// Share of the limit the send-time guard refills at; its burst makes up the rest of L.
pub const GUARD: f64 = 0.97;
/// How long a lane runs at half pace after Tencent said it was too fast.
pub const SLOWDOWN: Duration = Duration::from_secs(2);

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
    /// A limiter whose lanes are shared in Redis when `fleet` is configured.
    pub fn new(fleet: Option<&config::Fleet>, series: FleetSeries) -> Limiter {
        Limiter {
            waiting: Arc::default(),
            fleet: fleet.map(|f| Fleet::start(f, series)),
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

    /// The lanes of `app`: its own limit and one lane per entry of its `api_limits`.
    pub fn lanes(&self, app: &App) -> Lanes {
        self.lanes_with_callers(app, std::iter::empty())
    }

    /// `lanes`, and one lane for each caller `(name, rate_limit)` of `callers`.
    pub fn lanes_with_callers<'c>(
        &self,
        app: &App,
        callers: impl Iterator<Item = (&'c str, NonZeroU32)>,
    ) -> Lanes {
        let limit = |scope, limit: NonZeroU32, key: Option<String>| Limit {
            lane: Lane::new(scope, limit),
            limit,
            key: key.unwrap_or_default(),
            fallback: Mutex::new(None),
        };
        let fleet = self.fleet.as_ref();
        let apis = app
            .api_limits
            .iter()
            .map(|(api, n)| {
                let key = fleet.map(|f| f.key(app.sdkappid, Some(api)));
                (api.clone(), limit(Scope::Api, *n, key))
            })
            .collect();
        let callers = callers
            .map(|(name, n)| {
                let key = fleet.map(|f| f.caller_key(app.sdkappid, name));
                (name.to_owned(), limit(Scope::Caller, n, key))
            })
            .collect();
        Lanes {
            app: limit(
                Scope::App,
                app.rate_limit,
                fleet.map(|f| f.key(app.sdkappid, None)),
            ),
            apis,
            callers,
            waiting: self.waiting.clone(),
            fleet: self.fleet.clone(),
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
    lane: Lane,
    limit: NonZeroU32,
    /// The lane's Redis key (empty without a fleet).
    key: String,
    /// The lane at this replica's fallback share, rebuilt when the share changes.
    fallback: Mutex<Option<(NonZeroU32, Arc<Lane>)>>,
}

impl Limit {
    fn ask(&self) -> Ask {
        Ask {
            key: self.key.clone(),
            limit: self.limit,
            scope: self.lane.scope,
        }
    }

    /// The lane at this replica's share now; `Throttled` when the share is nothing.
    fn fallback(&self, fleet: &Fleet) -> Result<Arc<Lane>, Throttled> {
        let share = fleet.share(self.limit).ok_or(Throttled {
            scope: self.lane.scope,
            retry_after: Duration::from_secs(1),
        })?;
        let mut fallback = self
            .fallback
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match &*fallback {
            Some((n, lane)) if *n == share => Ok(lane.clone()),
            _ => {
                let lane = Arc::new(Lane::new(self.lane.scope, share));
                *fallback = Some((share, lane.clone()));
                Ok(lane)
            }
        }
    }
}

/// One app's limits, found once when a request is routed to the app.
pub struct Lanes {
    app: Limit,
    apis: HashMap<String, Limit>,
    /// Callers with a `rate_limit` of their own, by name.
    callers: HashMap<String, Limit>,
    waiting: Arc<AtomicUsize>,
    fleet: Option<Arc<Fleet>>,
    closing: Closing,
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

impl Lanes {
    /// Waits, in arrival order, for one attempt's turn of `api`; refuses at once when the
    /// wait would exceed `max_wait`. The turn is spent by `Turn::send_now`.
    pub async fn turn(&self, api: &Api, max_wait: Duration) -> Result<Turn<'_>, Throttled> {
        self.turn_as(api, None, max_wait).await
    }

    /// `turn` for a request of `caller`, which waits in that caller's own lane first when it
    /// has one.
    pub async fn turn_as(
        &self,
        api: &Api,
        caller: Option<&str>,
        max_wait: Duration,
    ) -> Result<Turn<'_>, Throttled> {
        let turn = Turn {
            caller: caller.and_then(|name| self.callers.get(name)),
            api: self.apis.get(api.name()),
            app: &self.app,
            fleet: self.fleet.as_deref(),
            max_wait,
        };
        match &self.fleet {
            None => {
                let lanes: Vec<&Lane> = turn.limits().map(|l| &l.lane).collect();
                pace(&lanes, max_wait, &self.waiting, &self.closing).await?;
            }
            Some(fleet) => self.shared(fleet, &turn, max_wait).await?,
        }
        Ok(turn)
    }

    /// A turn in Redis, or on this replica's share while Redis is gone.
    async fn shared(
        &self,
        fleet: &Arc<Fleet>,
        turn: &Turn<'_>,
        max_wait: Duration,
    ) -> Result<(), Throttled> {
        let start = Instant::now();
        let _waiting = Queued::enter(&self.waiting);
        loop {
            let budget = self
                .closing
                .budget(Instant::now(), max_wait.saturating_sub(start.elapsed()));
            match fleet.fallback_in() {
                None => {
                    let asks: Vec<Ask> = turn.limits().map(Limit::ask).collect();
                    if fleet.turn(&asks, budget).await?.is_some() {
                        return Ok(());
                    }
                }
                Some(wait) if wait > budget => {
                    return Err(Throttled {
                        scope: Scope::App,
                        retry_after: wait,
                    });
                }
                Some(wait) if !wait.is_zero() => tokio::time::sleep(wait).await,
                Some(_) => {
                    let lanes = turn
                        .limits()
                        .map(|l| l.fallback(fleet))
                        .collect::<Result<Vec<_>, _>>()?;
                    let lanes: Vec<&Lane> = lanes.iter().map(|l| &**l).collect();
                    return pace(&lanes, budget, &AtomicUsize::new(0), &self.closing).await;
                }
            }
        }
    }

    /// `turn` then `send_now`, for a caller with nothing to prepare in between.
    pub async fn acquire(&self, api: &Api, max_wait: Duration) -> Result<(), Throttled> {
        self.turn(api, max_wait).await?.send_now().await
    }

    /// Tencent said `scope` is over its limit: run it slower for a while (in the fleet: for
    /// every replica).
    pub fn slow_down(&self, api: &Api, scope: Scope) {
        let limit = match scope {
            Scope::Api => self.apis.get(api.name()),
            Scope::App | Scope::Caller => None,
        };
        // An API without its own lane slows the whole app: that is the lane it runs in.
        let limit = limit.unwrap_or(&self.app);
        limit.lane.slow_down(Instant::now());
        if let Some(fleet) = &self.fleet {
            fleet.slow_down(limit.key.clone(), limit.limit);
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
    lanes: &[&Lane],
    max_wait: Duration,
    waiting: &AtomicUsize,
    closing: &Closing,
) -> Result<(), Throttled> {
    let start = Instant::now();
    for lane in lanes {
        lane.predict(start, closing.budget(start, max_wait))?;
    }
    let _waiting = Queued::enter(waiting);
    for lane in lanes {
        let now = Instant::now();
        let budget = closing.budget(now, max_wait.saturating_sub(now - start));
        let ticket = lane.reserve(now, budget)?;
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

/// One attempt's turn, granted by `Lanes::turn`: the attempt may go on the wire once it has
/// a ready connection and `send_now` has passed the send-time guard. Only the limiter makes
/// one and sending consumes it, so *turn → ready connection → guard → write* is the only
/// order the types allow:
///
/// ```compile_fail
/// # async fn twice(lanes: &timgate::limiter::Lanes, api: &timgate::api::Api) {
/// let turn = lanes.turn(api, std::time::Duration::ZERO).await.unwrap();
/// turn.send_now().await;
/// turn.send_now().await; // refused: the turn was spent by the first send
/// # }
/// ```
#[must_use = "a turn is spent by send_now, right before the request is written"]
pub struct Turn<'a> {
    caller: Option<&'a Limit>,
    api: Option<&'a Limit>,
    app: &'a Limit,
    fleet: Option<&'a Fleet>,
    max_wait: Duration,
}

impl Turn<'_> {
    /// The limits this attempt passes, narrowest first.
    fn limits(&self) -> impl Iterator<Item = &Limit> {
        self.caller.into_iter().chain(self.api).chain([self.app])
    }

    /// Waits until a request sent now keeps every limit, and counts it as sent: call it with
    /// the connection ready, right before writing the request. In a fleet, `Throttled` when
    /// Redis went away since the turn and this replica may not spend its share yet.
    pub async fn send_now(self) -> Result<(), Throttled> {
        let lanes: Vec<&Lane> = self.limits().map(|l| &l.lane).collect();
        guard(&lanes).await;
        let Some(fleet) = self.fleet else {
            return Ok(());
        };
        loop {
            match fleet.fallback_in() {
                None => {
                    let asks: Vec<Ask> = self.limits().map(Limit::ask).collect();
                    if fleet.guard(&asks, self.max_wait).await? {
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
                    let lanes = self
                        .limits()
                        .map(|l| l.fallback(fleet))
                        .collect::<Result<Vec<_>, _>>()?;
                    let lanes: Vec<&Lane> = lanes.iter().map(|l| &**l).collect();
                    match fleet.fallback_send(&lanes) {
                        Ok(true) => return Ok(()),
                        Ok(false) => {}
                        Err(wait) => tokio::time::sleep(wait).await,
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
    use crate::config::Config;
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
        async fn acquire(&self, app: u64, api: &Api, max_wait: Duration) -> Result<(), Throttled> {
            self.apps[&app].acquire(api, max_wait).await
        }

        fn slow_down(&self, app: u64, api: &Api, scope: Scope) {
            self.apps[&app].slow_down(api, scope);
        }

        fn waiting(&self) -> usize {
            self.limiter.waiting()
        }
    }

    fn local(rate_limit: u32) -> Arc<Local> {
        let app = |id: u64| {
            format!(
                "[[apps]]\nsdkappid = {id}\nidentifier = \"a\"\nsecret_key = \"k\"\nregion = \"usa\"\nrate_limit = {rate_limit}\n"
            )
        };
        let config = Config::from_toml(&format!("{}{}", app(1), app(2))).unwrap();
        let limiter = Limiter::default();
        let apps = config
            .apps
            .iter()
            .map(|app| (app.sdkappid, limiter.lanes(app)))
            .collect();
        Arc::new(Local { limiter, apps })
    }

    fn api(path: &str) -> Api {
        Api::from_path(path).unwrap()
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
        let mut sorted = times.to_vec();
        sorted.sort();
        let mut start = 0;
        let mut most = 0;
        for end in 0..sorted.len() {
            while sorted[end] - sorted[start] > Duration::from_secs(1) {
                start += 1;
            }
            most = most.max(end - start + 1);
        }
        most
    }

    #[tokio::test(start_paused = true)]
    async fn closing_refuses_at_once_the_waiters_whose_turn_comes_after_it() {
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
                    assert_eq!(at, closed, "refused at once, not at its turn");
                    assert!(throttled.retry_after > Duration::from_millis(300));
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
    async fn the_guard_alone_never_admits_more_than_the_limit_in_any_second() {
        // Sends as fast as the guard lets them, as if every paced wake-up came late at once.
        for limit in [1, 2, 10, 33, 100, 200, 1000] {
            let lane = Lane::new(Scope::App, std::num::NonZeroU32::new(limit).unwrap());
            let end = Instant::now() + Duration::from_secs(3);
            let mut times = Vec::new();
            while Instant::now() < end {
                guard(&[&lane]).await;
                times.push(Instant::now());
            }
            assert!(
                busiest_second(&times) <= limit as usize,
                "limit {limit}: {}",
                busiest_second(&times)
            );
            assert!(
                busiest_second(&times) >= (limit as usize * 96) / 100,
                "limit {limit}: too strict"
            );
        }
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

    async fn futures_poll_once<F: Future + Unpin>(mut future: F) -> Option<F::Output> {
        std::future::poll_fn(|cx| match Pin::new(&mut future).poll(cx) {
            std::task::Poll::Ready(v) => std::task::Poll::Ready(Some(v)),
            std::task::Poll::Pending => std::task::Poll::Ready(None),
        })
        .await
    }
}

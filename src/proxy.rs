//! The request path: route, read, check, sign, forward, answer.
//!
//! Each request takes one snapshot of the live configuration ([`Routes`]) when it arrives and
//! keeps it to its end: a reload swaps the snapshot whole for the requests that start after
//! it, while those in flight and queued finish under the one they started with.
//!
//! `handle` is the edge: a `Call` follows each request and makes its one answer, one log
//! line and one outcome metric from one summary, also for a request that ends without an
//! answer (the caller hung up). `forward` is the chain of steps, in the order the spec gives
//! them. Caller-supplied `identifier`, `usersig`, `random` and `contenttype` are never read:
//! the upstream URL is built from scratch for every attempt, with a fresh `random`.
//!
//! Finding a request's app and building the snapshot is `route`; who a request is signed as
//! (the admin identity, the UserSig, the target URL they go into) is `sign`.

mod call;
mod drain;
mod inspect;
mod route;
mod sign;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, Uri};
use tokio::time::Instant;

use crate::api::Api;
use crate::auth;
use crate::body::{self, Budget};
use crate::config::Resolved;
use crate::error::Error;
use crate::limiter::{self, Asked, LanesOf, Limiter, Measured, Scope, Throttled, Turn};
use crate::metrics::Metrics;
use crate::retry::{self, Verdict};
use crate::server;
use crate::upstream::{self, Reply, Upstream};

use call::Call;
use drain::Drain;
pub use inspect::inspect;
use route::Route;
pub use route::{Routes, requested_app};

/// Everything the request path needs, shared by all connections.
pub struct Gateway {
    /// The live configuration snapshot; see [`Routes`].
    routes: ArcSwap<Routes>,
    limiter: Limiter,
    metrics: Arc<Metrics>,
    upstream: Upstream,
    /// The longest making a connection may take once one may be made (a dial to the primary
    /// and one to the backup), so a repeat can be sent inside a dedup window.
    connect_timeout: Duration,
    max_body_bytes: usize,
    body_timeout: Duration,
    bodies: Budget,
    drain: Drain,
}

impl Gateway {
    /// Builds the gateway for a configuration whose every app's upstream is known. Cannot
    /// fail: validation and [`crate::bind`] did everything that could.
    pub fn new(resolved: &Resolved) -> Gateway {
        let config = resolved.config();
        let mut metrics = Metrics::new(&config.apps);
        if config.fleet.is_some() {
            metrics.register_fleet();
        }
        let metrics = Arc::new(metrics);
        let limiter = Limiter::new(config.fleet.as_ref(), metrics.fleet());
        let (gauges, failovers) = metrics.upstream();
        let upstream = Upstream::new(
            &upstream::Settings {
                timeout: config.server.upstream_timeout,
                connect_timeout: config.server.connect_timeout,
                max_connections: config.server.upstream_max_connections,
                idle_timeout: config.server.upstream_idle_timeout,
                extra_roots: &config.server.extra_roots,
                egress_proxy: config.server.egress_proxy.as_ref(),
            },
            gauges,
            failovers,
        );
        let routes = Routes::build(resolved, None, &limiter, &metrics, &upstream);
        Gateway {
            routes: ArcSwap::from_pointee(routes),
            limiter,
            metrics,
            upstream,
            connect_timeout: config.server.connect_timeout * 2,
            max_body_bytes: config.server.max_body_bytes,
            body_timeout: config.server.body_read_timeout,
            bodies: Budget::new(config.server.max_body_bytes_in_flight),
            drain: Drain::new(
                config.server.drain_timeout,
                config.server.connect_timeout + config.server.upstream_timeout,
            ),
        }
    }
}

/// The gateway as its listener's handler: requests go to [`handle`]; a request the edge
/// answered itself (Host rules, a head too large or unreadable) gets its one log line and
/// outcome metric like any other.
#[derive(Clone)]
pub struct Edge(pub Arc<Gateway>);

impl server::Handler for Edge {
    type Answer = Pin<Box<dyn Future<Output = Response<Full<Bytes>>> + Send>>;

    fn handle(&self, request: Request<Incoming>) -> Self::Answer {
        Box::pin(handle(self.0.clone(), request))
    }

    fn refused(&self, refusal: server::Refusal) {
        Call::refused(&self.0, refusal);
    }
}

/// Answers one caller request. Never fails: every error becomes Tencent's envelope. A drain
/// that reaches its deadline answers what is still running (503) before it is cut off.
pub fn handle(
    gateway: Arc<Gateway>,
    request: Request<Incoming>,
) -> impl Future<Output = Response<Full<Bytes>>> {
    answer(gateway, Box::new(request))
}

/// `handle`, with the request boxed: a request head is some 250 bytes that the future of an
/// async function would keep a place for (twice over) until its answer, also while it waits
/// for its turn or a connection, long after its body was read and the head dropped.
async fn answer(gateway: Arc<Gateway>, request: Box<Request<Incoming>>) -> Response<Full<Bytes>> {
    let routes = gateway.routes();
    let mut call = Call::new(&gateway);
    call.named = routes.callers.required();
    // The work first: the drain's cut is looked at only while the work waits, and not at all
    // in the poll that finishes it.
    let result = tokio::select! {
        biased;
        result = forward(&gateway, &routes, request, &mut call) => result,
        () = gateway.drain.cut() => Err(Error::DrainCut),
    };
    call.answer(result)
}

async fn forward<'g>(
    gateway: &'g Gateway,
    routes: &'g Routes,
    request: Box<Request<Incoming>>,
    call: &mut Call<'g>,
) -> Result<Reply, Error> {
    let api = Api::from_path(request.uri().path()).ok_or(Error::NotFound)?;
    call.api = Some(api.clone());
    if request.method() != Method::POST {
        return Err(Error::MethodNotAllowed(request.method().clone()));
    }
    // Who calls, and whether they may, before the body is read or any quota is spent.
    let caller = routes.callers.identify(request.headers())?;
    call.caller = caller;
    let route = routes.find(request.uri().query())?;
    call.route = Some(route);
    auth::app_allows(&route.app, &api)?;
    if let Some(caller) = caller {
        caller.allows(route.app.sdkappid, &api)?;
    }
    // Boxed, like the turn, the send-time guard and the send in `deliver`: a future is as
    // large as its largest step, and a request spends most of its life waiting for a turn or
    // an upstream connection (with 1,000 callers over 64 connections, ~940 of them), so the
    // steps that are large and short are kept out of what every waiting request holds.
    let (body, _held) = Box::pin(body::read(
        *request,
        gateway.max_body_bytes,
        gateway.body_timeout,
        &gateway.bodies,
    ))
    .await?;
    let lanes = route.lanes.of(&api);
    let measured = inspect::inspect(&api, &body, lanes.quotas())?;
    gateway
        .deliver(route, &api, lanes, body, &measured, call)
        .await
}

impl Gateway {
    /// Sends attempts, each through the limiter, until the retry policy says the answer is
    /// final, attempts run out, or the deadline (or a drain's) would pass. The caller gets the
    /// last answer.
    ///
    /// An `async` block rather than an `async fn`, which would keep a second place for each
    /// argument while every request waits (see `attempt`).
    #[allow(clippy::manual_async_fn)]
    fn deliver(
        &self,
        route: &Route,
        api: &Api,
        lanes: LanesOf<'_, '_>,
        body: Bytes,
        measured: &[Measured],
        call: &mut Call<'_>,
    ) -> impl Future<Output = Result<Reply, Error>> {
        async move {
            let app = &route.app;
            let mut deadline = call.started + app.deadline;
            let dedup = limiter::table::dedup_window(api.name());
            let mut first_sent = None;
            // Boxed: a place for an answer is kept only once a retry has one to keep.
            let mut last: Option<Box<Result<Reply, upstream::Error>>> = None;
            loop {
                let target = route.target(api)?;
                // In a fleet, a request that finds a ready connection idle takes it before its
                // turn: a turn that needs no wait then passes Redis's send-time guard in the same
                // call (`Lanes::ask`), one Redis call instead of two. A turn that waits gives it
                // back before waiting (`take_turn`).
                let held = lanes
                    .guards_with_turn()
                    .then(|| self.upstream.try_connect(&route.endpoint))
                    .flatten();
                let turned =
                    Box::pin(self.turn(route, lanes, call.caller, measured, deadline, held));
                let (turn, held) = match turned.await {
                    Ok(turned) => turned,
                    Err(refused) => {
                        // A retry that finds no room ends with the answer already in hand.
                        return last
                            .map_or(Err(refused), |tried| (*tried).map_err(Error::Upstream));
                    }
                };
                call.attempts += 1;
                let tried = match self
                    .attempt(
                        route,
                        (turn, held),
                        api,
                        target,
                        body.clone(),
                        call,
                        deadline,
                    )
                    .await
                {
                    Ok((tried, sent)) => {
                        if !matches!(tried, Err(upstream::Error::Unreachable(_))) {
                            first_sent = first_sent.or(Some(sent));
                        }
                        tried
                    }
                    Err(held) => {
                        // The fleet's Redis went away after the turn and this replica's own
                        // share is not free yet: nothing was sent; 429 like any full lane.
                        route.series.rejected(held.scope);
                        return last.map_or(Err(Error::Throttled(held)), |tried| {
                            (*tried).map_err(Error::Upstream)
                        });
                    }
                };
                // A repeat is safe only if it reaches Tencent inside the window of the first
                // send: the next attempt must be sent (connection made) before it closes.
                let repeat_by = dedup
                    .zip(first_sent)
                    .map(|(window, sent)| (sent + window).checked_sub(self.connect_timeout));
                let repeat_by = repeat_by.flatten().filter(|by| Instant::now() < *by);
                match retry::decide(&tried, repeat_by.is_some()) {
                    Verdict::Answer => return tried.map_err(Error::Upstream),
                    Verdict::SlowDown(scope) => route.lanes.slow_down(api, scope),
                    Verdict::Retry => {}
                }
                if matches!(tried, Err(ref e) if !matches!(e, upstream::Error::Unreachable(_))) {
                    // Retried only because Tencent drops the repeat: no later than its window.
                    deadline = deadline.min(repeat_by.unwrap_or(deadline));
                }
                let pause =
                    retry::backoff(call.attempts, app.retry_base, app.retry_cap, rand::random());
                let next = Instant::now() + pause;
                let too_late =
                    next >= deadline || self.drain.last_turn().is_some_and(|t| next >= t);
                if call.attempts >= app.max_attempts || too_late {
                    return tried.map_err(Error::Upstream);
                }
                last = Some(Box::new(tried));
                tokio::time::sleep(pause).await;
            }
        }
    }

    /// Waits for one attempt's turn, in arrival order, no longer than the app's
    /// `max_queue_wait_ms`, the request's deadline, or the drain's last turn allow.
    /// `held`: a ready connection taken before the turn, handed back when the turn kept it.
    async fn turn<'r>(
        &self,
        route: &'r Route,
        lanes: LanesOf<'r, '_>,
        caller: Option<&auth::Caller>,
        measured: &[Measured],
        deadline: Instant,
        held: Option<upstream::Held>,
    ) -> Result<(Turn<'r>, Option<upstream::Held>), Error> {
        let app = &route.app;
        let now = Instant::now();
        let max_wait = app
            .max_queue_wait
            .min(deadline.saturating_duration_since(now));
        // A drain closes the limiter at its last turn, so the lanes refuse a turn that would
        // come later, at once, also for requests that were already waiting when it started.
        // The turn first: one granted at once (the limiter is closed from the last turn on)
        // never looks at the drain.
        let granted = tokio::select! {
            biased;
            granted = Self::take_turn(lanes, caller.map(auth::Caller::name), measured, max_wait, held) => granted,
            () = self.drain.past_last_turn() => return Err(Error::Draining),
        };
        match granted {
            Ok(turn) => {
                route.series.throttled(now.elapsed());
                Ok(turn)
            }
            Err(throttled) if self.drain.too_late(Instant::now() + throttled.retry_after) => {
                Err(Error::Draining)
            }
            Err(throttled) => {
                route.series.rejected(throttled.scope);
                match (
                    throttled.scope,
                    caller.and_then(|c| Some((c, c.rate_limit()?))),
                ) {
                    (Scope::Caller, Some((caller, limit))) => Err(Error::CallerThrottled {
                        caller: caller.name().to_owned(),
                        limit,
                        throttled,
                    }),
                    _ => Err(Error::Throttled(throttled)),
                }
            }
        }
    }

    /// The limiter's two phases around a ready connection `held` before the turn: kept through a
    /// turn granted now (in a fleet, Redis has passed the send-time guard with it), let go
    /// before a wait, so no connection is kept from others by a waiting request.
    async fn take_turn<'r>(
        lanes: LanesOf<'r, '_>,
        caller: Option<&str>,
        measured: &[Measured],
        max_wait: Duration,
        held: Option<upstream::Held>,
    ) -> Result<(Turn<'r>, Option<upstream::Held>), Throttled> {
        match lanes
            .ask(caller, measured, max_wait, held.is_some())
            .await?
        {
            Asked::Granted(turn) => Ok((turn, held)),
            Asked::Waiting(waiting) => {
                drop(held);
                Ok((waiting.await?, None))
            }
        }
    }

    /// One attempt whose turn has come: a ready connection (handshakes done; waiting in
    /// order, until `deadline`, when the pool is at `upstream_max_connections`), then the
    /// send-time check of every limit, then the request on the wire at once — so a slow
    /// handshake or a wait for a connection can never bunch requests at Tencent past the
    /// limit. The connection is the one held through the turn, when the turn kept it.
    /// `Err`: the send-time check could not clear it (a fleet whose Redis went away since
    /// the turn), nothing sent.
    ///
    /// An `async` block rather than an `async fn`, which would keep a second place for each
    /// argument: this is what a request waiting for a connection holds (~940 of 1,000
    /// callers over 64 connections).
    #[allow(clippy::too_many_arguments, clippy::manual_async_fn)]
    fn attempt(
        &self,
        route: &Route,
        (turn, held): (Turn<'_>, Option<upstream::Held>),
        api: &Api,
        target: Uri,
        body: Bytes,
        call: &mut Call<'_>,
        deadline: Instant,
    ) -> impl Future<Output = Result<(Result<Reply, upstream::Error>, Instant), Throttled>> {
        async move {
            // A connection held through the turn: the turn needed no wait (and Redis has passed
            // the send-time guard with it, unless `send_now` asks it), so the target signed just
            // before the turn is sent as it is, and nothing but the write follows that guard.
            let (connection, target) = match held.and_then(upstream::Held::take) {
                Some(connection) => (connection, target),
                None => {
                    let connection = match self.upstream.connect(&route.endpoint, deadline).await {
                        Ok(connection) => connection,
                        Err(unreachable) => return Ok((Err(unreachable), Instant::now())),
                    };
                    // Signed again once the turn has come: a key rotated while this request
                    // waited signs it already. Done before the send-time guard, so nothing but
                    // the write follows the guard.
                    (connection, route.signed_again(api, target))
                }
            };
            Box::pin(turn.send_now()).await?;
            let sent = Instant::now();
            let reached_before = call.reached_tencent;
            call.reached_tencent = true;
            let tried = Box::pin(self.upstream.send(connection, target, body)).await;
            if let Err(upstream::Error::Unreachable(_)) = tried {
                // Nothing was written: this attempt never reached Tencent.
                call.reached_tencent = reached_before;
            }
            route.series.attempt(sent.elapsed(), call.attempts > 1);
            let code = tried.as_ref().ok().and_then(|r| r.envelope.error_code);
            route.series.answered(api.name(), code);
            if let Ok(reply) = &tried {
                route.series.partial(api.name(), reply.envelope.partial());
            }
            Ok((tried, sent))
        }
    }

    /// Starts the drain: requests whose turn would come too late to finish by `deadline` are
    /// answered 503 from now on, and whatever still runs shortly before it is answered too.
    pub fn drain(&self, deadline: Instant) {
        self.drain.start(deadline);
        if let Some(last_turn) = self.drain.last_turn() {
            self.limiter.close_at(last_turn);
        }
    }

    /// How many requests a drain has cut: answered 503 at its cut, or dropped unanswered.
    pub fn requests_cut(&self) -> usize {
        self.drain.requests_cut()
    }

    /// Gives this replica's share of the fleet's limits back, once nothing more will be sent.
    pub async fn leave_fleet(&self) {
        self.limiter.leave().await;
    }

    /// The gateway's metrics, for the admin listener.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// How many requests are waiting for their turn.
    pub fn waiting(&self) -> usize {
        self.limiter.waiting()
    }

    /// Swaps in the apps of `resolved` for every request that starts from now on. Requests in
    /// flight and queued keep the snapshot they took; each app that stays carries its lanes
    /// (an unchanged limit keeps its state, a changed one hands over to a successor lane) and
    /// its signer (a changed key takes over signing at once, also for those requests).
    pub fn reload(&self, resolved: &Resolved) {
        let previous = self.routes();
        let next = Routes::build(
            resolved,
            Some(&previous),
            &self.limiter,
            &self.metrics,
            &self.upstream,
        );
        self.routes.store(Arc::new(next));
        self.metrics.set_limits(&resolved.config().apps);
    }

    /// The live configuration snapshot, for one request to keep until it is answered.
    pub fn routes(&self) -> Arc<Routes> {
        self.routes.load_full()
    }
}

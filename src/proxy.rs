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

mod call;
mod drain;
mod inspect;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, Uri};
use tokio::time::Instant;

use crate::api::Api;
use crate::auth::{self, Callers};
use crate::body::{self, Budget};
use crate::config::{App, Resolved};
use crate::error::Error;
use crate::limiter::{self, Lanes, Limiter, Measured, Scope, Throttled, Turn};
use crate::metrics::{AppSeries, Metrics};
use crate::retry::{self, Verdict};
use crate::server;
use crate::upstream::{self, Endpoint, Reply, Upstream};
use crate::usersig::{self, Signer, UserSig};

use call::Call;
use drain::Drain;
pub use inspect::inspect;

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

/// The part of the configuration a request sees: the configured apps, each with its lanes,
/// signer and retry settings. One snapshot is taken per request (`Gateway::routes`) and held
/// until the request is answered; a reload builds a new one and swaps it in whole, so no
/// request ever sees half of one configuration and half of another.
pub struct Routes {
    by_id: HashMap<u64, Route>,
    /// Who may call what (`[[callers]]`), from the same configuration as the apps.
    callers: Callers,
}

/// One configured app, found once by `?sdkappid`: where it goes, who it signs as, its limits
/// and its metric series, so no later step looks the app up again by id.
struct Route {
    app: App,
    lanes: Lanes,
    endpoint: Endpoint,
    /// Who its requests are signed as.
    credentials: Arc<Credentials>,
    /// Its metric series.
    series: Arc<AppSeries>,
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
    let result = tokio::select! {
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
    let measured = inspect::inspect(&api, &body, route.lanes.quotas(&api))?;
    gateway.deliver(route, &api, body, &measured, call).await
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
                // call (`Lanes::turn_holding`), one Redis call instead of two. A turn that waits
                // gives it back before waiting.
                let held = route
                    .lanes
                    .guards_with_turn(api)
                    .then(|| self.upstream.try_connect(&route.endpoint))
                    .flatten();
                let turned = Box::pin(self.turn(route, api, call.caller, measured, deadline, held));
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
        api: &Api,
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
        let granted = tokio::select! {
            granted = route.lanes.turn_holding(api, caller.map(auth::Caller::name), measured, max_wait, held) => granted,
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
            // A connection held through the turn: the turn needed no wait and Redis has passed
            // the send-time guard with it, so the target signed just before the turn is sent as
            // it is, and nothing but the write follows that guard.
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

/// Who an app's requests are signed as: the credentials of the query and the signer that
/// caches the current UserSig. When a reload changes the key (or the identifier, or the
/// lifetime), the new ones become their *successor*: a request of the old configuration that
/// still runs signs with the successor from then on, so no UserSig of a rotated key is sent
/// again.
struct Credentials {
    /// `?sdkappid=N&identifier=ID&usersig=`.
    query: String,
    signer: Signer,
    successor: OnceLock<Arc<Credentials>>,
}

impl Credentials {
    fn new(app: &App) -> Credentials {
        let identifier: String =
            form_urlencoded::byte_serialize(app.identifier.as_bytes()).collect();
        Credentials {
            query: format!(
                "?sdkappid={}&identifier={identifier}&usersig=",
                app.sdkappid
            ),
            signer: Signer::new(
                app.secret_key.clone(),
                app.sdkappid,
                app.identifier.clone(),
                app.usersig_ttl,
            ),
            successor: OnceLock::new(),
        }
    }

    /// The credentials in force now: these, or the last of their successors.
    fn newest(&self) -> &Credentials {
        let mut credentials = self;
        while let Some(next) = credentials.successor.get() {
            credentials = next;
        }
        credentials
    }
}

impl Routes {
    /// The routes of every app and caller in `resolved`, with lanes from `limiter`, series
    /// from `metrics` and connection pools from `upstream` (shared by origin); with
    /// `previous`, each app that was in it carries its state over.
    fn build(
        resolved: &Resolved,
        previous: Option<&Routes>,
        limiter: &Limiter,
        metrics: &Metrics,
        upstream: &Upstream,
    ) -> Routes {
        let callers = Callers::new(&resolved.config().callers);
        let by_id = resolved
            .apps()
            .map(|(app, origin)| {
                let before = previous.and_then(|p| p.by_id.get(&app.sdkappid));
                let endpoint = upstream.endpoint(origin, app.backup_endpoint.as_ref());
                let route = Route::new(app, endpoint, before, limiter, metrics, &callers);
                (app.sdkappid, route)
            })
            .collect();
        Routes { by_id, callers }
    }

    /// The app a request is for: `?sdkappid=N`, or the only configured app.
    fn find(&self, query: Option<&str>) -> Result<&Route, Error> {
        match requested_app(query)? {
            Some(id) => self.by_id.get(&id).ok_or(Error::UnknownApp(id)),
            None => match (self.by_id.len(), self.by_id.values().next()) {
                (1, Some(only)) => Ok(only),
                (apps, _) => Err(Error::AmbiguousApp(apps)),
            },
        }
    }
}

/// The SDKAppID a request's query asks for (`sdkappid`, the first if repeated), if any.
pub fn requested_app(query: Option<&str>) -> Result<Option<u64>, Error> {
    let given = form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .find(|(name, _)| name == "sdkappid")
        .map(|(_, value)| value);
    given
        .map(|text| {
            text.parse()
                .map_err(|_| Error::BadSdkAppId(text.into_owned()))
        })
        .transpose()
}

impl Route {
    /// The route of `app`; `before`, the same app's route in the running configuration,
    /// hands on its lanes, its callers' lanes included (see [`Limiter::lanes_after`]) and,
    /// when the key, identifier and lifetime are the same, its current UserSig.
    fn new(
        app: &App,
        endpoint: Endpoint,
        before: Option<&Route>,
        limiter: &Limiter,
        metrics: &Metrics,
        callers: &Callers,
    ) -> Route {
        let shares = callers
            .iter()
            .filter(|c| c.may_use(app.sdkappid))
            .filter_map(|c| Some((c.name(), c.rate_limit()?)));
        let lanes = match before {
            Some(before) => limiter.lanes_after(app, shares, &before.lanes),
            None => limiter.lanes_with_callers(app, shares),
        };
        let credentials = match before {
            Some(before) if same_signer(&before.app, app) => before.credentials.clone(),
            Some(before) => {
                let fresh = Arc::new(Credentials::new(app));
                let _ = before.credentials.newest().successor.set(fresh.clone());
                fresh
            }
            None => Arc::new(Credentials::new(app)),
        };
        Route {
            app: app.clone(),
            lanes,
            endpoint,
            credentials,
            series: metrics.app(app.sdkappid),
        }
    }

    /// The upstream path and query for one attempt: admin identity, a current UserSig, a new
    /// `random`.
    /// Fallible because `api` comes from the caller: `Api`'s checks make a failure unexpected,
    /// but a caller's path must never reach a panic.
    fn target(&self, api: &Api) -> Result<Uri, Error> {
        let credentials = self.credentials.newest();
        let sig = self.usersig(credentials);
        target(api, credentials, &sig)
    }

    /// The target once the turn has come: `first` (checked before the turn) when it already
    /// carries the credentials and UserSig that signing now would use, else one signed anew
    /// (a key rotated, or a UserSig renewed, while the request waited). `first`'s `random`
    /// was never sent, so it is as new as another.
    fn signed_again(&self, api: &Api, first: Uri) -> Uri {
        let credentials = self.credentials.newest();
        let sig = self.usersig(credentials);
        if carries(&first, credentials, &sig) {
            return first;
        }
        // Building cannot fail where it did not just before (same API, same kind of
        // credentials); if it did, the one checked is sent.
        target(api, credentials, &sig).unwrap_or(first)
    }

    /// A current UserSig of `credentials`, counted when newly signed.
    fn usersig(&self, credentials: &Credentials) -> UserSig {
        let (sig, minted) = credentials.signer.usersig(usersig::unix_now());
        if minted {
            self.series.signed();
        }
        sig
    }
}

/// Whether `target` is signed as `credentials` with `sig`: its query is theirs up to its
/// `random`. Neither the (percent-encoded) identifier nor a UserSig holds a `&`.
fn carries(target: &Uri, credentials: &Credentials, sig: &UserSig) -> bool {
    target
        .query()
        .and_then(|query| query.strip_prefix(credentials.query.trim_start_matches('?')))
        .and_then(|rest| rest.strip_prefix(sig.as_str()))
        .is_some_and(|rest| rest.starts_with("&random="))
}

/// `api`'s upstream path and query, signed with `sig` of `credentials`, with a new `random`:
/// appended into one buffer, which `Uri` takes without a copy.
fn target(api: &Api, credentials: &Credentials, sig: &UserSig) -> Result<Uri, Error> {
    let (name, sig) = (api.name(), sig.as_str());
    let mut target = String::with_capacity(
        "/v4/".len() + name.len() + credentials.query.len() + sig.len() + RANDOM_AND_TYPE,
    );
    for part in ["/v4/", name, &credentials.query, sig, "&random="] {
        target.push_str(part);
    }
    let _ = write!(target, "{}", rand::random::<u32>());
    target.push_str("&contenttype=json");
    Uri::try_from(target).map_err(|_| Error::Unforwardable)
}

/// `&random=` with the longest `u32`, then `&contenttype=json`.
const RANDOM_AND_TYPE: usize = "&random=4294967295&contenttype=json".len();

/// Whether `a` and `b` sign the same UserSigs: same key, app, identifier and lifetime.
fn same_signer(a: &App, b: &App) -> bool {
    a.secret_key == b.secret_key
        && a.sdkappid == b.sdkappid
        && a.identifier == b.identifier
        && a.usersig_ttl == b.usersig_ttl
}

#[cfg(test)]
mod tests {
    use super::{Api, Credentials, carries, target};
    use crate::config::Config;
    use crate::usersig::unix_now;

    fn credentials(identifier: &str, key: &str) -> Credentials {
        let config = Config::from_toml(&format!(
            "[[apps]]\nsdkappid = 1400000001\nidentifier = {identifier:?}\nsecret_key = {key:?}\nregion = \"singapore\"\n"
        ))
        .unwrap();
        Credentials::new(&config.apps[0])
    }

    #[test]
    fn a_target_is_sent_again_only_while_its_credentials_and_usersig_are_current() {
        let api = Api::from_path("/v4/openim/sendmsg").unwrap();
        let now = unix_now();
        let signed = credentials("admin", "key-1");
        let (sig, _) = signed.signer.usersig(now);
        let first = target(&api, &signed, &sig).unwrap();
        assert!(carries(&first, &signed, &sig));
        assert!(carries(&first, &signed, &signed.signer.usersig(now).0));
        // A key rotated while the request waited: new credentials, a UserSig of the new key.
        let rotated = credentials("admin", "key-2");
        assert!(!carries(&first, &rotated, &rotated.signer.usersig(now).0));
        // The UserSig renewed (half its lifetime passed) while the request waited.
        let renewed = signed.signer.usersig(now + 600).0;
        assert_ne!(renewed, sig);
        assert!(!carries(&first, &signed, &renewed));
        // Another identifier, even one the first begins with, with the same UserSig text.
        for identifier in ["admin2", "adm", "admin&usersig="] {
            assert!(
                !carries(&first, &credentials(identifier, "key-1"), &sig),
                "{identifier}"
            );
        }
    }
}

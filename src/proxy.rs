//! The request path: route, read, check, sign, forward, answer.
//!
//! `handle` is the edge: it turns any `Error` into Tencent's envelope and writes the one log
//! line per request. `forward` is the chain of steps, in the order the spec gives them.
//! Caller-supplied `identifier`, `usersig`, `random` and `contenttype` are never read: the
//! upstream URL is built from scratch for every attempt, with a fresh `random`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, Uri};
use tokio::time::Instant;
use tracing::info;

use crate::api::Api;
use crate::body::{self, Budget};
use crate::config::{App, Config, ConfigError, Endpoint};
use crate::error::{Error, json_response};
use crate::limiter::{Lanes, Limiter, Turn};
use crate::metrics::Metrics;
use crate::retry::{self, Verdict};
use crate::rules;
use crate::upstream::{Origin, Reply, Upstream};
use crate::usersig::{self, Signer};

/// Everything the request path needs, shared by all connections.
pub struct Gateway {
    routes: HashMap<u64, Route>,
    limiter: Limiter,
    metrics: Arc<Metrics>,
    upstream: Upstream,
    max_body_bytes: usize,
    body_timeout: Duration,
    bodies: Budget,
}

/// One configured app: where it goes, who it signs as, and its limits.
struct Route {
    app: App,
    lanes: Lanes,
    origin: Origin,
    /// `?sdkappid=N&identifier=ID&usersig=`, fixed for the app's lifetime.
    credentials: String,
    signer: Signer,
}

/// What is known about a request so far, for its log line.
struct Call {
    started: Instant,
    app: Option<u64>,
    api: Option<Api>,
    attempts: u32,
}

impl Gateway {
    /// Builds the gateway; `emulator` is the in-process emulator's address, for apps
    /// configured with `endpoint = "emulator"` (an error when there is none).
    pub fn new(config: &Config, emulator: Option<SocketAddr>) -> Result<Gateway, ConfigError> {
        let limiter = Limiter::default();
        let routes = config
            .apps
            .iter()
            .enumerate()
            .map(|(i, app)| {
                let origin = match (&app.endpoint, emulator) {
                    (Endpoint::Url(uri), _) => Origin::new(uri),
                    (Endpoint::Emulator, Some(addr)) => Origin::new(
                        &format!("http://{addr}").parse().expect("an address makes a valid URL"),
                    ),
                    (Endpoint::Emulator, None) => {
                        return Err(ConfigError {
                            key: format!("apps[{i}].endpoint"),
                            message: "\"emulator\" needs the in-process emulator that timgate::run starts".into(),
                        });
                    }
                };
                let signer = Signer::new(
                    app.secret_key.clone(),
                    app.sdkappid,
                    app.identifier.clone(),
                    app.usersig_ttl,
                );
                let identifier: String =
                    form_urlencoded::byte_serialize(app.identifier.as_bytes()).collect();
                let route = Route {
                    app: app.clone(),
                    lanes: limiter.lanes(app),
                    origin,
                    credentials: format!("?sdkappid={}&identifier={identifier}&usersig=", app.sdkappid),
                    signer,
                };
                Ok((app.sdkappid, route))
            })
            .collect::<Result<_, _>>()?;
        Ok(Gateway {
            routes,
            limiter,
            metrics: Arc::new(Metrics::new(&config.apps)),
            upstream: Upstream::new(
                config.server.upstream_timeout,
                config.server.connect_timeout,
                &config.server.extra_roots,
            ),
            max_body_bytes: config.server.max_body_bytes,
            body_timeout: config.server.body_read_timeout,
            bodies: Budget::new(config.server.max_body_bytes_in_flight),
        })
    }
}

/// Answers one caller request. Never fails: every error becomes Tencent's envelope.
pub async fn handle(gateway: Arc<Gateway>, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let _in_flight = gateway.metrics.in_flight();
    let mut call = Call {
        started: Instant::now(),
        app: None,
        api: None,
        attempts: 0,
    };
    let (response, error_code, request_id, error) = match forward(&gateway, request, &mut call)
        .await
    {
        Ok(reply) => {
            let (code, id) = (reply.outcome.error_code, reply.outcome.request_id.clone());
            let outcome = match code {
                Some(0) => "ok",
                Some(_) => "tencent_error",
                None => "not_an_envelope",
            };
            gateway
                .metrics
                .request(call.app, call.api.as_ref().map(Api::name), outcome);
            (respond(reply, call.attempts), code, id, None)
        }
        Err(error) => {
            let code = i64::from(error.status_and_code().1);
            let info = error.to_string();
            gateway
                .metrics
                .request(call.app, call.api.as_ref().map(Api::name), error.outcome());
            (error.into_response(), Some(code), None, Some(info))
        }
    };
    info!(
        app = call.app,
        api = call.api.as_ref().map(tracing::field::display),
        status = response.status().as_u16(),
        error_code,
        request_id,
        attempts = call.attempts,
        latency_ms = call.started.elapsed().as_secs_f64() * 1000.0,
        error,
        "request"
    );
    response
}

async fn forward(
    gateway: &Gateway,
    request: Request<Incoming>,
    call: &mut Call,
) -> Result<Reply, Error> {
    let api = Api::from_path(request.uri().path()).ok_or(Error::NotFound)?;
    call.api = Some(api.clone());
    if request.method() != Method::POST {
        return Err(Error::MethodNotAllowed(request.method().clone()));
    }
    let route = gateway.route(request.uri().query())?;
    call.app = Some(route.app.sdkappid);
    let (body, _held) = body::read(
        request,
        gateway.max_body_bytes,
        gateway.body_timeout,
        &gateway.bodies,
    )
    .await?;
    inspect(&api, &body)?;
    gateway.exchange(route, &api, body, call).await
}

/// One parse of the body: JSON at all (else 60003), then the API's rules, if it has any.
/// Strings are borrowed from `body`, which goes upstream unchanged.
fn inspect(api: &Api, body: &[u8]) -> Result<(), Error> {
    match rules::for_api(api.name()) {
        None => serde_json::from_slice::<serde::de::IgnoredAny>(body)
            .map(drop)
            .map_err(Error::NotJson),
        Some(rules) => {
            let value: serde_json_borrow::Value =
                serde_json::from_slice(body).map_err(Error::NotJson)?;
            rules::check(rules, &value).map_err(Error::Rejected)
        }
    }
}

impl Gateway {
    /// Sends attempts, each through the limiter, until the retry policy says the outcome is
    /// final, attempts run out, or the deadline would pass. The caller gets the last answer.
    async fn exchange(
        &self,
        route: &Route,
        api: &Api,
        body: Bytes,
        call: &mut Call,
    ) -> Result<Reply, Error> {
        let app = &route.app;
        let deadline = call.started + app.deadline;
        let mut last = None;
        loop {
            let max_wait = app
                .max_queue_wait
                .min(deadline.saturating_duration_since(Instant::now()));
            let queued = Instant::now();
            let turn = match route.lanes.turn(api, max_wait).await {
                Ok(turn) => turn,
                Err(throttled) => {
                    self.metrics.rejected(app.sdkappid, throttled.scope);
                    // A retry that finds no room ends with the answer already in hand.
                    return last.unwrap_or(Err(Error::Throttled(throttled)));
                }
            };
            self.metrics.throttled(app.sdkappid, queued.elapsed());
            call.attempts += 1;
            let outcome = self
                .attempt(route, turn, api, body.clone(), call.attempts > 1)
                .await;
            match retry::decide(&outcome) {
                Verdict::Answer => return outcome,
                Verdict::SlowDown(scope) => route.lanes.slow_down(api, scope),
                Verdict::Retry => {}
            }
            let pause =
                retry::backoff(call.attempts, app.retry_base, app.retry_cap, rand::random());
            if call.attempts >= app.max_attempts || Instant::now() + pause >= deadline {
                return outcome;
            }
            last = Some(outcome);
            tokio::time::sleep(pause).await;
        }
    }
}

impl Gateway {
    /// One attempt whose turn has come: a ready connection (handshakes done), then the
    /// send-time check of every limit, then the request on the wire at once — so a slow
    /// handshake can never bunch requests at Tencent past the limit.
    async fn attempt(
        &self,
        route: &Route,
        turn: Turn<'_>,
        api: &Api,
        body: Bytes,
        retry: bool,
    ) -> Result<Reply, Error> {
        let connection = self.upstream.connect(&route.origin).await?;
        turn.send_now().await;
        let target = route.target(api, &self.metrics)?;
        let sent = Instant::now();
        let outcome = self
            .upstream
            .send(connection, &route.origin, target, body)
            .await;
        self.metrics
            .attempt(route.app.sdkappid, sent.elapsed(), retry);
        let code = outcome.as_ref().ok().and_then(|r| r.outcome.error_code);
        self.metrics.answered(route.app.sdkappid, api.name(), code);
        outcome
    }

    /// The gateway's metrics, for the admin listener.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// How many requests are waiting for their turn.
    pub fn waiting(&self) -> usize {
        self.limiter.waiting()
    }

    /// The app a request is for: `?sdkappid=N`, or the only configured app.
    fn route(&self, query: Option<&str>) -> Result<&Route, Error> {
        let given = form_urlencoded::parse(query.unwrap_or("").as_bytes())
            .find(|(name, _)| name == "sdkappid")
            .map(|(_, value)| value);
        match given {
            Some(text) => {
                let id: u64 = text
                    .parse()
                    .map_err(|_| Error::BadSdkAppId(text.into_owned()))?;
                self.routes.get(&id).ok_or(Error::UnknownApp(id))
            }
            None if self.routes.len() == 1 => {
                Ok(self.routes.values().next().expect("one route exists"))
            }
            None => Err(Error::AmbiguousApp(self.routes.len())),
        }
    }
}

impl Route {
    /// The upstream path and query for one attempt: admin identity, a current UserSig, a new
    /// `random`.
    /// Fallible because `api` comes from the caller: `Api`'s checks make a failure unexpected,
    /// but a caller's path must never reach a panic.
    fn target(&self, api: &Api, metrics: &Metrics) -> Result<Uri, Error> {
        let (sig, minted) = self.signer.usersig(usersig::unix_now());
        if minted {
            metrics.signed(self.app.sdkappid);
        }
        format!(
            "/v4/{}{}{}&random={}&contenttype=json",
            api.name(),
            self.credentials,
            sig.as_str(),
            rand::random::<u32>(),
        )
        .parse()
        .map_err(|_| Error::Unforwardable)
    }
}

/// Tencent's answer, passed through unchanged, plus how many attempts it took.
fn respond(reply: Reply, attempts: u32) -> Response<Full<Bytes>> {
    let mut response = json_response(reply.status, reply.body);
    if let Some(content_type) = reply.content_type {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, content_type);
    }
    response
        .headers_mut()
        .insert("x-timgate-attempts", attempts.into());
    response
}

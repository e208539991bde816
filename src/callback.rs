//! Tencent's callbacks in: the `[callbacks]` listener, the front door of the service that
//! handles them.
//!
//! Each callback is checked from its query before its body is read ([`verify`]): a
//! configured app, a `RequestTime` within 60 s, a `Sign` of the app's token (or the previous
//! one). A callback that fails is refused (401, 403 or 400, in Tencent's envelope), counted
//! by reason, and never reaches the service. One that passes is routed by `CallbackCommand`
//! ([`route`]) and forwarded ([`forward`]); Tencent gets the service's answer, or the
//! route's default answer when the service is late, down or failing, inside the route's
//! timeout. A command no route names gets the answer that lets the event go on.
//!
//! The listener is the proxy port's edge (`server::serve`, with `[server]`'s bounds on
//! connections, heads, bodies and time) on an address of its own. Every callback leaves one
//! log line and one count, also one that Tencent gave up on. Its query, which carries the
//! sign, is never logged. The routes and tokens are one snapshot per callback, swapped whole
//! on reload.

pub mod forward;
mod record;
pub mod route;
pub mod verify;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::CONTENT_TYPE;
use hyper::{Method, Request, Response};
use tokio::time::Instant;

use crate::body::{self, Budget};
use crate::config::Config;
use crate::metrics::CallbackMetrics;
use crate::server;
use crate::usersig::unix_now;
use forward::{Callback, Sent, Services};
use record::{Record, Refusal, Reply};
use route::Table;
use verify::Refused;

/// The callback listener's shared state.
pub struct Callbacks {
    table: ArcSwap<Table>,
    services: Services,
    metrics: CallbackMetrics,
    max_body_bytes: usize,
    body_timeout: Duration,
    bodies: Budget,
}

impl Callbacks {
    /// The listener's state for `config`, counting into `metrics`. Bodies are bounded as on
    /// the proxy port (`server.max_body_bytes`, `body_read_timeout_ms`), with a budget of
    /// `max_body_bytes_in_flight` of their own; a service's answer is read up to
    /// `max_body_bytes` too, paid for from the same budget.
    pub fn new(config: &Config, metrics: CallbackMetrics) -> Callbacks {
        metrics.prepare(config);
        let server = &config.server;
        let bodies = Budget::new(server.max_body_bytes_in_flight);
        Callbacks {
            table: ArcSwap::from_pointee(Table::new(config)),
            services: Services::new(server.max_body_bytes, bodies.clone()),
            metrics,
            max_body_bytes: server.max_body_bytes,
            body_timeout: server.body_read_timeout,
            bodies,
        }
    }

    /// Takes `config`'s apps, tokens and routes for every callback that arrives from now on.
    pub fn reload(&self, config: &Config) {
        self.metrics.prepare(config);
        self.table.store(Arc::new(Table::new(config)));
    }
}

/// The listener's handler: callbacks go to [`handle`]; a request the edge answered itself
/// gets its log line and count like any other.
#[derive(Clone)]
pub struct Edge(pub Arc<Callbacks>);

impl server::Handler for Edge {
    type Answer = Pin<Box<dyn Future<Output = Response<Full<Bytes>>> + Send>>;

    fn handle(&self, request: Request<Incoming>) -> Self::Answer {
        Box::pin(handle(self.0.clone(), request))
    }

    fn refused(&self, refusal: server::Refusal) {
        let outcome = match refusal.outcome {
            "overloaded" => "refused_overloaded",
            _ => "refused_bad_request",
        };
        Record::new(&self.0.metrics).refused(outcome, refusal);
    }
}

/// Answers one callback. Never fails: a refusal is Tencent's envelope.
pub async fn handle(
    callbacks: Arc<Callbacks>,
    request: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let table = callbacks.table.load_full();
    let mut record = Record::new(&callbacks.metrics);
    let result = take(&callbacks, &table, request, &mut record).await;
    record.answer(result)
}

/// The steps, in the order the spec gives them: method, query, app, sign and time, body,
/// route, service.
async fn take(
    callbacks: &Callbacks,
    table: &Table,
    request: Request<Incoming>,
    record: &mut Record<'_>,
) -> Result<Reply, Refusal> {
    if request.method() != Method::POST {
        return Err(Refused::Method.into());
    }
    let params = verify::read(request.uri().query())?;
    record.command = Some(params.command.clone());
    let entry = table
        .app(params.sdkappid)
        .ok_or(Refused::UnknownApp(params.sdkappid))?;
    record.app = Some(params.sdkappid);
    record.label = entry.label(&params.command).to_owned();
    let tokens = entry.tokens();
    verify::check(&tokens, &params, unix_now())?;
    let query = request.uri().query().unwrap_or("").to_owned();
    let content_type = request.headers().get(CONTENT_TYPE).cloned();
    let (body, _held) = body::read_exact(
        request,
        callbacks.max_body_bytes,
        callbacks.body_timeout,
        &callbacks.bodies,
    )
    .await?;
    let Some(found) = entry.route(&params.command) else {
        return Ok(Reply::unrouted());
    };
    let callback = Callback {
        body,
        content_type,
        verified: if tokens.is_empty() { "app" } else { "sign" },
    };
    Ok(callbacks
        .deliver(&params, found, &query, callback, record)
        .await)
}

impl Callbacks {
    /// Forwards a verified `callback` along the route `found`, within the route's timeout;
    /// Tencent's answer: the service's, or the route's default.
    async fn deliver(
        &self,
        params: &verify::Params,
        found: route::Found<'_>,
        query: &str,
        callback: Callback,
        record: &mut Record<'_>,
    ) -> Reply {
        let timeout = found.route.timeout(&params.command);
        let started = Instant::now();
        let sent = self
            .services
            .send(found.route, query, callback, timeout)
            .await;
        let took = started.elapsed();
        record.service = Some(took);
        self.metrics
            .served(params.sdkappid, found.label, took.as_secs_f64());
        match sent {
            Sent::Answered {
                status,
                content_type,
                body,
                held,
            } => Reply::forwarded(status, content_type, body, held),
            Sent::Failed { outcome, error } => Reply::fallback(found.route, outcome, error),
        }
    }
}

/// An address the callback listener bound, as a peer can connect to it: a wildcard
/// (`0.0.0.0`, `[::]`) becomes loopback.
pub fn reachable(bound: std::net::SocketAddr) -> std::net::SocketAddr {
    use std::net::{Ipv4Addr, Ipv6Addr};
    let ip = match bound.ip() {
        ip if !ip.is_unspecified() => ip,
        std::net::IpAddr::V4(_) => Ipv4Addr::LOCALHOST.into(),
        std::net::IpAddr::V6(_) => Ipv6Addr::LOCALHOST.into(),
    };
    std::net::SocketAddr::new(ip, bound.port())
}

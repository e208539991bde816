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
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use tokio::time::Instant;
use tracing::info;

use crate::body::{self, Budget};
use crate::config::Config;
use crate::error::{envelope, json_response};
use crate::metrics::{CallbackMetrics, OTHER};
use crate::server;
use crate::upstream::Envelope;
use crate::usersig::unix_now;
use forward::{Callback, Sent, Services};
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
    /// `max_body_bytes` too.
    pub fn new(config: &Config, metrics: CallbackMetrics) -> Callbacks {
        metrics.prepare(config);
        let server = &config.server;
        Callbacks {
            table: ArcSwap::from_pointee(Table::new(config)),
            services: Services::new(server.max_body_bytes),
            metrics,
            max_body_bytes: server.max_body_bytes,
            body_timeout: server.body_read_timeout,
            bodies: Budget::new(server.max_body_bytes_in_flight),
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
        Record::new(&self.0).finish(&Summary {
            outcome,
            status: Some(refusal.status),
            error_code: refusal.code.map(i64::from),
            error: Some(refusal.error.to_owned()),
        });
    }
}

/// Answers one callback. Never fails: a refusal is Tencent's envelope.
pub async fn handle(
    callbacks: Arc<Callbacks>,
    request: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let table = callbacks.table.load_full();
    let mut record = Record::new(&callbacks);
    let result = take(&callbacks, &table, request, &mut record).await;
    record.answer(result)
}

/// The answer Tencent gets for a callback that was taken.
struct Reply {
    status: StatusCode,
    content_type: Option<HeaderValue>,
    body: Bytes,
    outcome: &'static str,
    error: Option<String>,
}

/// A callback refused before the service saw it.
struct Refusal {
    status: StatusCode,
    code: u32,
    outcome: &'static str,
    error: String,
}

impl From<Refused> for Refusal {
    fn from(refused: Refused) -> Refusal {
        let (status, code) = refused.status_and_code();
        Refusal {
            status,
            code,
            outcome: refused.outcome(),
            error: refused.to_string(),
        }
    }
}

impl From<crate::error::Error> for Refusal {
    fn from(error: crate::error::Error) -> Refusal {
        let (status, code) = error.status_and_code();
        let outcome = match error {
            crate::error::Error::Overloaded(_) => "refused_overloaded",
            _ => "refused_body",
        };
        Refusal {
            status,
            code,
            outcome,
            error: error.to_string(),
        }
    }
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
        return Ok(Reply {
            status: StatusCode::OK,
            content_type: None,
            body: Bytes::from_static(route::ALLOW),
            outcome: "unrouted",
            error: None,
        });
    };
    let callback = Callback {
        body,
        content_type,
        verified: if tokens.is_empty() { "app" } else { "sign" },
    };
    let timeout = found.route.timeout(&params.command);
    let started = Instant::now();
    let sent = callbacks
        .services
        .send(found.route, &query, callback, timeout)
        .await;
    let took = started.elapsed();
    record.service = Some(took);
    callbacks
        .metrics
        .served(params.sdkappid, found.label, took.as_secs_f64());
    Ok(match sent {
        Sent::Answered {
            status,
            content_type,
            body,
        } => Reply {
            status,
            content_type,
            body,
            outcome: "forwarded",
            error: None,
        },
        Sent::Failed { outcome, error } => Reply {
            status: StatusCode::OK,
            content_type: None,
            body: found.route.default_answer(),
            outcome,
            error: Some(error),
        },
    })
}

/// What is known about one callback so far; it writes the one log line and count, when it
/// answers or, if Tencent hung up first, when it is dropped.
struct Record<'c> {
    callbacks: &'c Callbacks,
    started: Instant,
    app: Option<u64>,
    /// `CallbackCommand`, once read (letters, digits, `.` and `_`: safe to log).
    command: Option<String>,
    /// The `command` label: the pattern that routes it, or `other`.
    label: String,
    /// How long the service took, when it was asked.
    service: Option<Duration>,
    recorded: bool,
}

/// How a callback ended: what its log line and count are written from.
struct Summary {
    outcome: &'static str,
    status: Option<StatusCode>,
    error_code: Option<i64>,
    error: Option<String>,
}

impl<'c> Record<'c> {
    fn new(callbacks: &'c Callbacks) -> Record<'c> {
        Record {
            callbacks,
            started: Instant::now(),
            app: None,
            command: None,
            label: OTHER.to_owned(),
            service: None,
            recorded: false,
        }
    }

    /// Tencent's answer to `result`, recorded.
    fn answer(mut self, result: Result<Reply, Refusal>) -> Response<Full<Bytes>> {
        match result {
            Ok(reply) => {
                let error_code = serde_json::from_slice::<Envelope>(&reply.body)
                    .ok()
                    .and_then(|e| e.error_code);
                self.finish(&Summary {
                    outcome: reply.outcome,
                    status: Some(reply.status),
                    error_code,
                    error: reply.error,
                });
                let mut response = json_response(reply.status, reply.body);
                if let Some(content_type) = reply.content_type {
                    response.headers_mut().insert(CONTENT_TYPE, content_type);
                }
                response
            }
            Err(refusal) => {
                self.finish(&Summary {
                    outcome: refusal.outcome,
                    status: Some(refusal.status),
                    error_code: Some(i64::from(refusal.code)),
                    error: Some(refusal.error.clone()),
                });
                envelope(refusal.status, refusal.code, &refusal.error)
            }
        }
    }

    fn finish(&mut self, summary: &Summary) {
        self.recorded = true;
        self.callbacks
            .metrics
            .counted(self.app, &self.label, summary.outcome);
        info!(
            app = self.app,
            command = self.command.as_deref(),
            route = self.label.as_str(),
            outcome = summary.outcome,
            status = summary.status.map(|s| s.as_u16()),
            error_code = summary.error_code,
            service_ms = self.service.map(|d| d.as_secs_f64() * 1000.0),
            latency_ms = self.started.elapsed().as_secs_f64() * 1000.0,
            error = summary.error.as_deref(),
            "callback"
        );
    }
}

impl Drop for Record<'_> {
    /// Tencent hung up before its answer.
    fn drop(&mut self) {
        if !self.recorded {
            self.finish(&Summary {
                outcome: "tencent_gone",
                status: None,
                error_code: None,
                error: None,
            });
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

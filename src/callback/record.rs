//! One callback's record: what is known about it as it goes, and the one log line and count
//! its answer (or Tencent hanging up first) makes. The query, which carries the sign, and the
//! body are never logged; `CallbackCommand` is (it is letters, digits, `.` and `_` only).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Response, StatusCode};
use tokio::time::Instant;
use tracing::info;

use super::route::{self, Route};
use super::verify::Refused;
use crate::body::Held;
use crate::error::{envelope, json_response};
use crate::metrics::{CallbackMetrics, OTHER};
use crate::server;
use crate::upstream::Envelope;

/// The answer Tencent gets for a callback that was taken.
pub(super) struct Reply {
    status: StatusCode,
    content_type: Option<HeaderValue>,
    body: Bytes,
    /// The service's answer's share of the body budget, until it is answered.
    _held: Option<Held>,
    outcome: &'static str,
    error: Option<String>,
}

/// A callback refused before the service saw it.
pub(super) struct Refusal {
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

impl Reply {
    /// The answer to a command no route names: the event goes on.
    pub(super) fn unrouted() -> Reply {
        Reply {
            status: StatusCode::OK,
            content_type: None,
            body: Bytes::from_static(route::ALLOW),
            _held: None,
            outcome: "unrouted",
            error: None,
        }
    }

    /// The service's answer, passed on.
    pub(super) fn forwarded(
        status: StatusCode,
        content_type: Option<HeaderValue>,
        body: Bytes,
        held: Held,
    ) -> Reply {
        Reply {
            status,
            content_type,
            body,
            _held: Some(held),
            outcome: "forwarded",
            error: None,
        }
    }

    /// `route`'s default answer, because of `error`.
    pub(super) fn fallback(route: &Route, outcome: &'static str, error: String) -> Reply {
        Reply {
            status: StatusCode::OK,
            content_type: None,
            body: route.default_answer(),
            _held: None,
            outcome,
            error: Some(error),
        }
    }
}

/// What is known about one callback so far; it writes the one log line and count, when it
/// answers or, if Tencent hung up first, when it is dropped.
pub(super) struct Record<'c> {
    metrics: &'c CallbackMetrics,
    started: Instant,
    pub(super) app: Option<u64>,
    /// `CallbackCommand`, once read (letters, digits, `.` and `_`: safe to log).
    pub(super) command: Option<String>,
    /// The `command` label: the pattern that routes it, or `other`.
    pub(super) label: String,
    /// How long the service took, when it was asked.
    pub(super) service: Option<Duration>,
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
    pub(super) fn new(metrics: &'c CallbackMetrics) -> Record<'c> {
        Record {
            metrics,
            started: Instant::now(),
            app: None,
            command: None,
            label: OTHER.to_owned(),
            service: None,
            recorded: false,
        }
    }

    /// Tencent's answer to `result`, recorded.
    pub(super) fn answer(mut self, result: Result<Reply, Refusal>) -> Response<Full<Bytes>> {
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

    /// A request the edge answered itself (a head it could not read, the connection cap),
    /// recorded as `outcome`.
    pub(super) fn refused(mut self, outcome: &'static str, refusal: server::Refusal) {
        self.finish(&Summary {
            outcome,
            status: Some(refusal.status),
            error_code: refusal.code.map(i64::from),
            error: Some(refusal.error.to_owned()),
        });
    }

    fn finish(&mut self, summary: &Summary) {
        self.recorded = true;
        self.metrics.counted(self.app, &self.label, summary.outcome);
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

//! One request's record: what is known about it as it goes, and the one summary its answer,
//! its log line and its outcome metric are all made from.
//!
//! A `Call` writes its line and metric exactly once: when it answers, or, when the request
//! ends without an answer (the caller hung up, or the runtime stopped under it), when it is
//! dropped. `outcome` has one meaning everywhere: how the request ended, a fixed name.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{CONTENT_ENCODING, CONTENT_TYPE, HeaderName, HeaderValue};
use hyper::{Response, StatusCode};
use tokio::time::Instant;
use tracing::info;

use super::{Gateway, Route};
use crate::api::Api;
use crate::auth::Caller;
use crate::error::{Error, json_response};
use crate::metrics::InFlight;
use crate::server::{ATTEMPTS, Refusal};
use crate::upstream::Reply;

/// The outcome of a request the drain cut: what the drain's verdict counts.
const DRAIN_CUT: &str = "drain_cut";

/// What is known about one request so far.
pub(super) struct Call<'g> {
    gateway: &'g Gateway,
    _in_flight: InFlight<'g>,
    pub(super) started: Instant,
    pub(super) route: Option<&'g Route>,
    /// The caller its token names, once known (only with `[[callers]]`).
    pub(super) caller: Option<&'g Caller>,
    /// Callers are configured: the request is counted by caller name.
    pub(super) named: bool,
    pub(super) api: Option<Api>,
    pub(super) attempts: u32,
    /// An attempt was handed to a connection and may have reached Tencent.
    pub(super) reached_tencent: bool,
    recorded: bool,
}

/// How one request ended: the one value its log line and metric are written from.
struct Summary {
    /// How it ended, as the `outcome` label and log field.
    outcome: &'static str,
    /// The HTTP status answered; `None` when no answer was given.
    status: Option<StatusCode>,
    /// Tencent's ErrorCode, or the one timgate answered with.
    error_code: Option<i64>,
    /// Tencent's `RequestId`, when Tencent answered.
    request_id: Option<String>,
    /// Why timgate answered itself.
    error: Option<String>,
}

impl Summary {
    /// Takes the reply's `RequestId` (the answer passes on the body, not the parsed envelope).
    fn of_reply(reply: &mut Reply) -> Summary {
        let code = reply.envelope.error_code;
        Summary {
            outcome: match code {
                Some(0) => "ok",
                Some(_) => "tencent_error",
                None => "not_an_envelope",
            },
            status: Some(reply.status),
            error_code: code,
            request_id: reply.envelope.request_id.take(),
            error: None,
        }
    }

    fn of_error(error: &Error) -> Summary {
        let (status, code) = error.status_and_code();
        Summary {
            outcome: error.outcome(),
            status: Some(status),
            error_code: Some(i64::from(code)),
            request_id: None,
            error: Some(error.to_string()),
        }
    }

    fn unanswered(outcome: &'static str) -> Summary {
        Summary {
            outcome,
            status: None,
            error_code: None,
            request_id: None,
            error: None,
        }
    }
}

impl<'g> Call<'g> {
    /// A request that has just arrived; it counts as in flight until the `Call` is gone.
    pub(super) fn new(gateway: &'g Gateway) -> Call<'g> {
        Call {
            gateway,
            _in_flight: gateway.metrics.in_flight(),
            started: Instant::now(),
            route: None,
            caller: None,
            named: false,
            api: None,
            attempts: 0,
            reached_tencent: false,
            recorded: false,
        }
    }

    /// The caller's answer to `result`, recorded in the log and the metrics; every answer
    /// says how many attempts it took.
    pub(super) fn answer(mut self, result: Result<Reply, Error>) -> Response<Full<Bytes>> {
        let mut response = match result {
            Ok(mut reply) => {
                self.record(&Summary::of_reply(&mut reply));
                respond(reply)
            }
            Err(error) => {
                self.record(&Summary::of_error(&error));
                error.into_response()
            }
        };
        response
            .headers_mut()
            .insert(ATTEMPTS_HEADER.clone(), attempts_value(self.attempts));
        response
    }

    /// Records a request the edge answered itself, before the request path saw it.
    pub(super) fn refused(gateway: &'g Gateway, refusal: Refusal) {
        Call::new(gateway).record(&Summary {
            outcome: refusal.outcome,
            status: Some(refusal.status),
            error_code: refusal.code.map(i64::from),
            request_id: None,
            error: Some(refusal.error.to_owned()),
        });
    }

    fn record(&mut self, summary: &Summary) {
        self.recorded = true;
        if summary.outcome == DRAIN_CUT {
            self.gateway.drain.cut_one();
        }
        let series = self.route.map(|route| &*route.series);
        self.gateway
            .metrics
            .request(series, self.api.as_ref(), summary.outcome);
        let caller = self.caller.map(Caller::name);
        if self.named {
            self.gateway
                .metrics
                .caller_request(caller.unwrap_or("none"), summary.outcome);
        }
        // The message as a `&str` field, where `"request"` alone would be `format_args!`.
        info!(
            message = "request",
            caller,
            app = self.route.map(|route| route.app.sdkappid),
            api = self.api.as_ref().map(tracing::field::display),
            outcome = summary.outcome,
            status = summary.status.map(|s| s.as_u16()),
            error_code = summary.error_code,
            request_id = summary.request_id.as_deref(),
            attempts = self.attempts,
            reached_tencent = self.reached_tencent,
            latency_ms = self.started.elapsed().as_secs_f64() * 1000.0,
            error = summary.error.as_deref(),
        );
    }
}

impl Drop for Call<'_> {
    /// A request dropped before it was answered: the caller hung up, or a drain's deadline
    /// stopped the runtime under it.
    fn drop(&mut self) {
        if !self.recorded {
            let outcome = if self.gateway.drain.over() {
                DRAIN_CUT
            } else {
                "caller_gone"
            };
            self.record(&Summary::unanswered(outcome));
        }
    }
}

/// The attempts header's name, made once: a name given as `&str` is copied into a new
/// buffer at every insert.
static ATTEMPTS_HEADER: HeaderName = HeaderName::from_static(ATTEMPTS);

/// `attempts` as a header value; the usual few without formatting and allocating one.
fn attempts_value(attempts: u32) -> HeaderValue {
    const FEW: [&str; 4] = ["0", "1", "2", "3"];
    match usize::try_from(attempts).ok().and_then(|i| FEW.get(i)) {
        Some(few) => HeaderValue::from_static(few),
        None => attempts.into(),
    }
}

/// Tencent's answer, passed through unchanged: status, body, and the headers that say how
/// to read the body.
fn respond(reply: Reply) -> Response<Full<Bytes>> {
    let mut response = json_response(reply.status, reply.body);
    let headers = response.headers_mut();
    if let Some(content_type) = reply.content_type {
        headers.insert(CONTENT_TYPE, content_type);
    }
    if let Some(encoding) = reply.content_encoding {
        headers.insert(CONTENT_ENCODING, encoding);
    }
    response
}

//! A verified callback to the service, and the service's answer (or the route's default) back.
//!
//! The service gets a POST with Tencent's body byte for byte and Tencent's query as it came
//! (so a service that checks the sign itself still can), plus `x-timgate-callback-verified`.
//! Its answer, status and body, goes back to Tencent. When the service is late (past the
//! route's timeout, which covers connecting, sending and reading the whole answer), refuses
//! the connection, or answers 5xx (or a 1xx as its final answer), Tencent gets the route's default answer instead, inside
//! the timeout. Connections to the service are hyper-util's pooled keep-alive ones; there
//! are never more open than callbacks in flight (bounded by the listener's connection cap)
//! plus `MAX_IDLE` idle ones.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::route::Route;
use crate::body::{self, Budget, Held};
use crate::error::Error;

/// The header that tells the service what timgate checked: `sign` (the app's token signed
/// it within 60 s of now) or `app` (the app takes unsigned callbacks: only its SDKAppID
/// was checked).
pub const VERIFIED: &str = "x-timgate-callback-verified";

/// Idle connections kept to each service.
const MAX_IDLE: usize = 16;
/// How long an idle connection to a service is kept.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// How a forwarded callback ended.
pub enum Sent {
    /// The service answered (not 1xx or 5xx): its status, content type and body.
    Answered {
        /// The service's status.
        status: StatusCode,
        /// The service's content type, if any.
        content_type: Option<HeaderValue>,
        /// The service's body.
        body: Bytes,
        /// The body's share of the listener's body budget.
        held: Held,
    },
    /// No answer to pass on: the `outcome` label, and why.
    Failed {
        /// `default_timeout`, `default_unreachable` or `default_error`.
        outcome: &'static str,
        /// What went wrong, for the log line.
        error: String,
    },
}

/// The client that reaches the services.
pub struct Services {
    client: Client<HttpConnector, Full<Bytes>>,
    /// The largest answer read from a service.
    max_answer_bytes: usize,
    /// What answers being read and held cost, shared with the callbacks' own bodies.
    budget: Budget,
}

impl Services {
    /// A client reading answers of at most `max_answer_bytes`, paid for from `budget`.
    pub fn new(max_answer_bytes: usize, budget: Budget) -> Services {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_keepalive(Some(IDLE_TIMEOUT));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(IDLE_TIMEOUT)
            .pool_timer(TokioTimer::new())
            .pool_max_idle_per_host(MAX_IDLE)
            .build(connector);
        Services {
            client,
            max_answer_bytes,
            budget,
        }
    }

    /// Posts `body` to `route`'s service with Tencent's `query`, within `timeout`.
    pub async fn send(
        &self,
        route: &Route,
        query: &str,
        callback: Callback,
        timeout: Duration,
    ) -> Sent {
        match tokio::time::timeout(timeout, self.exchange(route, query, callback)).await {
            Ok(sent) => sent,
            Err(_) => Sent::Failed {
                outcome: "default_timeout",
                error: format!("the service did not answer within {timeout:?}"),
            },
        }
    }

    async fn exchange(&self, route: &Route, query: &str, callback: Callback) -> Sent {
        let failed = |outcome, error: String| Sent::Failed { outcome, error };
        let Ok(target) = route.target(query) else {
            return failed("default_error", "the query cannot be passed on".into());
        };
        let mut request = Request::new(Full::new(callback.body));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = target;
        let headers = request.headers_mut();
        headers.insert(
            CONTENT_TYPE,
            callback
                .content_type
                .unwrap_or(HeaderValue::from_static("application/json")),
        );
        headers.insert(VERIFIED, HeaderValue::from_static(callback.verified));
        let response = match self.client.request(request).await {
            Ok(response) => response,
            Err(e) if e.is_connect() => {
                return failed(
                    "default_unreachable",
                    format!("the service is unreachable: {e}"),
                );
            }
            Err(e) => {
                return failed(
                    "default_error",
                    format!("the service's connection failed: {e}"),
                );
            }
        };
        self.answer(response).await
    }

    /// The service's `response`, read within the answer bounds: passed on, or why not.
    async fn answer(&self, response: Response<Incoming>) -> Sent {
        let failed = |outcome, error: String| Sent::Failed { outcome, error };
        let status = response.status();
        let content_type = response.headers().get(CONTENT_TYPE).cloned();
        let declared = response
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let read = body::read_answer(
            response.into_body(),
            declared,
            self.max_answer_bytes,
            &self.budget,
        );
        let (body, held) = match read.await {
            Ok(read) => read,
            Err(e) => return failed("default_error", unread(&e, self.max_answer_bytes)),
        };
        // A 101 (the only 1xx hyper hands back as final) is no answer Tencent can read: its
        // connection would be switched to nothing, with no envelope.
        if status.is_server_error() || status.is_informational() {
            return failed(
                "default_error",
                format!("the service answered HTTP {status}"),
            );
        }
        Sent::Answered {
            status,
            content_type,
            body,
            held,
        }
    }
}

/// Why a service's answer was not read, for the log line.
fn unread(error: &Error, limit: usize) -> String {
    match error {
        Error::BodyTooLarge(_) => {
            format!("the service's answer is over the {limit}-byte limit (server.max_body_bytes)")
        }
        Error::Overloaded(_) => {
            "the service's answer would pass server.max_body_bytes_in_flight".to_owned()
        }
        other => format!("the service's answer could not be read: {other}"),
    }
}

/// One verified callback, as it goes to the service.
pub struct Callback {
    /// Tencent's body, byte for byte.
    pub body: Bytes,
    /// Tencent's content type, if any.
    pub content_type: Option<HeaderValue>,
    /// What timgate checked: the `VERIFIED` header's value.
    pub verified: &'static str,
}

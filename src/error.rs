//! The errors timgate answers itself, and the one place their HTTP status and Tencent
//! ErrorCode are decided.
//!
//! Every answer uses Tencent's envelope (`ActionStatus`, `ErrorCode`, `ErrorInfo`), so callers
//! parse one shape whether Tencent or timgate spoke. `ErrorInfo` never carries a secret: the
//! upstream URL (which holds a UserSig) is never formatted into an error.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Response, StatusCode};

use crate::auth::Denied;
use crate::json;
use crate::limiter::{Scope, Throttled};
use crate::rules::Refusal;
use crate::upstream;

/// Why timgate answered a request itself.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The path is not `/v4/<service>/<command>`.
    #[error("no such API: the path must be /v4/<service>/<command>")]
    NotFound,
    /// The API's name cannot be put into an upstream URL; `Api`'s own checks make this a
    /// guard, so that no caller's path can reach a panic.
    #[error("the request path cannot be forwarded to Tencent")]
    Unforwardable,
    /// Any method but POST.
    #[error("method {0} is not allowed: Tencent's REST API takes POST only")]
    MethodNotAllowed(hyper::Method),
    /// No caller's token (401), or a caller, or anyone, not allowed this app or API (403).
    #[error(transparent)]
    Refused(#[from] Denied),
    /// `sdkappid` is given but is not a number.
    #[error("sdkappid {0:?} is not a number")]
    BadSdkAppId(String),
    /// `sdkappid` names no configured app.
    #[error("sdkappid {0} is not configured in this gateway")]
    UnknownApp(u64),
    /// No `sdkappid` and more than one configured app.
    #[error("sdkappid is required: this gateway serves {0} apps")]
    AmbiguousApp(usize),
    /// The body is over `server.max_body_bytes`.
    #[error("request body is over the {0}-byte limit")]
    BodyTooLarge(usize),
    /// The caller did not send its whole body within `server.body_read_timeout_ms`.
    #[error("request body did not arrive within {0:?}")]
    BodyTimeout(Duration),
    /// The request bodies held at once would pass `server.max_body_bytes_in_flight`.
    #[error("the gateway is holding its limit of {0} request body bytes; retry shortly")]
    Overloaded(usize),
    /// The caller's body could not be read.
    #[error("request body could not be read: {0}")]
    BodyRead(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The body breaks a documented rule of its API: Tencent's code, no quota spent.
    #[error("{}", .0.info)]
    Rejected(Refusal),
    /// The body is not JSON, or names a key twice in one object: 60003.
    #[error(transparent)]
    NotJson(#[from] json::Unreadable),
    /// The last attempt got no answer from Tencent.
    #[error(transparent)]
    Upstream(#[from] upstream::Error),
    /// A drain has started and the request's turn would come too late to finish before its
    /// deadline; nothing was sent to Tencent.
    #[error(
        "timgate is shutting down and this request's turn would come after the drain deadline; nothing was sent to Tencent"
    )]
    Draining,
    /// A drain reached its deadline while the request was still running.
    #[error("timgate is shutting down and its drain deadline cut this request off")]
    DrainCut,
    /// The request would wait longer than `max_queue_wait_ms` in its caller's own lane.
    #[error("caller {caller}'s rate_limit of {limit}/s reached: the wait for a turn would be {:?}, over this app's max_queue_wait_ms", .throttled.retry_after)]
    CallerThrottled {
        /// The caller's name.
        caller: String,
        /// Its `rate_limit`.
        limit: std::num::NonZeroU32,
        /// The lane's answer.
        throttled: Throttled,
    },
    /// The request would wait longer than `max_queue_wait_ms` for its turn.
    #[error("{}", throttled_info(.0))]
    Throttled(Throttled),
}

fn scope_name(scope: Scope) -> &'static str {
    match scope {
        Scope::App => "SDKAppID",
        Scope::Api | Scope::Share => "API",
        Scope::Caller => "caller",
    }
}

/// A `Throttled` refusal's ErrorInfo: the limit, and why the turn would not come in time.
fn throttled_info(throttled: &Throttled) -> String {
    match throttled.scope {
        Scope::Share => "API quota: this call costs more than this replica's share of the \
                         quota can carry, and the replica is cut off from the fleet's Redis \
                         (no answer within max_queue_wait_ms); through Redis the whole quota \
                         applies again"
            .to_owned(),
        scope => format!(
            "{} rate limit reached: the wait for a turn would be {:?}, over this app's \
             max_queue_wait_ms",
            scope_name(scope),
            throttled.retry_after
        ),
    }
}

impl Error {
    /// The HTTP status and Tencent ErrorCode for this error.
    pub fn status_and_code(&self) -> (StatusCode, u32) {
        match self {
            Error::NotFound => (StatusCode::NOT_FOUND, 60002),
            Error::MethodNotAllowed(_) => (StatusCode::METHOD_NOT_ALLOWED, 60002),
            Error::Unforwardable => (StatusCode::BAD_REQUEST, 60002),
            // Tencent's "wrong credentials" and "caller not on the allow-list".
            Error::Refused(refusal) if refusal.is_unauthenticated() => {
                (StatusCode::UNAUTHORIZED, 60005)
            }
            Error::Refused(_) => (StatusCode::FORBIDDEN, 60021),
            Error::BadSdkAppId(_) => (StatusCode::BAD_REQUEST, 60006),
            Error::UnknownApp(_) => (StatusCode::BAD_REQUEST, 60006),
            Error::AmbiguousApp(_) => (StatusCode::BAD_REQUEST, 60006),
            Error::BodyTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, 60002),
            Error::BodyRead(_) => (StatusCode::BAD_REQUEST, 60002),
            Error::BodyTimeout(_) => (StatusCode::REQUEST_TIMEOUT, 60002),
            // 60008 is Tencent's own "retry, bounded" code for an overloaded or slow service.
            Error::Overloaded(_) => (StatusCode::SERVICE_UNAVAILABLE, 60008),
            Error::Draining | Error::DrainCut => (StatusCode::SERVICE_UNAVAILABLE, 60008),
            Error::NotJson(_) => (StatusCode::OK, 60003),
            Error::Rejected(refusal) => (StatusCode::OK, refusal.code),
            Error::Upstream(failure) => match failure {
                upstream::Error::Unreachable(_)
                | upstream::Error::Broken(_)
                | upstream::Error::Body(_)
                | upstream::Error::Status(_) => (StatusCode::BAD_GATEWAY, 60008),
                upstream::Error::Timeout(_) => (StatusCode::GATEWAY_TIMEOUT, 60008),
            },
            Error::Throttled(Throttled {
                scope: Scope::App, ..
            }) => (StatusCode::TOO_MANY_REQUESTS, 60011),
            Error::Throttled(Throttled {
                scope: Scope::Api | Scope::Share,
                ..
            }) => (StatusCode::TOO_MANY_REQUESTS, 60007),
            // A caller's share of the app's frequency: the app-wide code, with its own ErrorInfo.
            Error::Throttled(Throttled {
                scope: Scope::Caller,
                ..
            })
            | Error::CallerThrottled { .. } => (StatusCode::TOO_MANY_REQUESTS, 60011),
        }
    }

    /// How a request that got this error ended: the `outcome` label and log field.
    pub fn outcome(&self) -> &'static str {
        match self {
            Error::NotFound | Error::Unforwardable => "not_found",
            Error::MethodNotAllowed(_) => "method_not_allowed",
            Error::Refused(refusal) if refusal.is_unauthenticated() => "unauthorized",
            Error::Refused(_) => "forbidden",
            Error::BadSdkAppId(_) | Error::UnknownApp(_) | Error::AmbiguousApp(_) => "unknown_app",
            Error::BodyTooLarge(_) => "body_too_large",
            Error::BodyRead(_) | Error::BodyTimeout(_) => "body_unreadable",
            Error::Overloaded(_) => "overloaded",
            Error::Draining => "draining",
            Error::DrainCut => "drain_cut",
            Error::NotJson(_) => "not_json",
            Error::Rejected(_) => "rejected",
            Error::Throttled(_) | Error::CallerThrottled { .. } => "throttled",
            Error::Upstream(failure) => match failure {
                upstream::Error::Unreachable(_)
                | upstream::Error::Broken(_)
                | upstream::Error::Body(_)
                | upstream::Error::Status(_) => "upstream_unreachable",
                upstream::Error::Timeout(_) => "upstream_timeout",
            },
        }
    }

    /// The response a caller gets.
    pub fn into_response(self) -> Response<Full<Bytes>> {
        let (status, code) = self.status_and_code();
        let mut response = envelope(status, code, &self.to_string());
        let headers = response.headers_mut();
        match self {
            Error::MethodNotAllowed(_) => {
                headers.insert(hyper::header::ALLOW, HeaderValue::from_static("POST"));
            }
            Error::Refused(refusal) if refusal.is_unauthenticated() => {
                headers.insert(
                    hyper::header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"timgate\""),
                );
            }
            Error::Overloaded(_) | Error::Draining | Error::DrainCut => {
                headers.insert(hyper::header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            Error::Throttled(throttled) | Error::CallerThrottled { throttled, .. } => {
                // Whole seconds, rounded up: a caller that waits this long finds room.
                let secs = throttled.retry_after.as_secs()
                    + u64::from(throttled.retry_after.subsec_nanos() > 0);
                headers.insert(hyper::header::RETRY_AFTER, secs.max(1).into());
            }
            _ => {}
        }
        response
    }
}

/// A Tencent-shaped failure: `{"ActionStatus":"FAIL","ErrorCode":code,"ErrorInfo":info}`.
pub fn envelope(status: StatusCode, code: u32, info: &str) -> Response<Full<Bytes>> {
    let body = serde_json::json!({
        "ActionStatus": "FAIL",
        "ErrorCode": code,
        "ErrorInfo": info,
    });
    json_response(status, body.to_string().into())
}

/// A JSON response with `status`.
pub fn json_response(status: StatusCode, body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_share_too_small_while_cut_off_from_redis_is_60007_saying_why() {
        let throttled = |scope| {
            Error::Throttled(Throttled {
                scope,
                retry_after: Duration::from_millis(200),
            })
        };
        let share = throttled(Scope::Share);
        assert_eq!(
            share.status_and_code(),
            (StatusCode::TOO_MANY_REQUESTS, 60007)
        );
        let info = share.to_string();
        assert!(
            info.contains("share of the quota") && info.contains("cut off from the fleet's Redis"),
            "{info}"
        );
        assert_eq!(
            throttled(Scope::Api).to_string(),
            "API rate limit reached: the wait for a turn would be 200ms, over this app's \
             max_queue_wait_ms"
        );
    }
}

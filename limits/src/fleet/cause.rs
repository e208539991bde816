//! Why a Redis call failed, in words an operator can act on, logged once per change.
//!
//! Every failed call is sorted into a [`Cause`] from redis-rs's typed error (its kind, and
//! Redis's own error code such as `WRONGPASS` or `OOM`). The log gets one line when the
//! cause changes — a first failure, another cause, or a failure after Redis answered again
//! — not one per request: an outage that refuses every call of a busy replica writes one
//! line, not thousands. A call cut off by `timeout_ms` before redis-rs could tell why (a
//! connection still being set up, say) is followed up by [`Causes::follow`], which lets the
//! same call run on for up to `FOLLOW` in the background and logs what it ends with: a
//! wrong password shows as the authentication failure it is, not as a slow answer.
//!
//! What is logged is the cause's name and Redis's message; never the URL (which may hold
//! the password) nor a command's arguments.

use std::future::Future;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use tracing::{info, warn};

use crate::timing::FOLLOW;

/// Why a Redis call failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Cause {
    /// Redis refused the credentials (`WRONGPASS`, `NOAUTH`, a password it was not given).
    Auth,
    /// Redis is at `maxmemory` and refuses writes (`OOM`).
    Oom,
    /// The answer was not Redis's protocol, or not the script's answer.
    Protocol,
    /// Nothing listens at the address (connection refused).
    Refused,
    /// The connection was closed under the call.
    Dropped,
    /// No answer in time (a paused or hanging server, or a slow one).
    Timeout,
    /// A replica, or a cluster node, that cannot take the script (`READONLY`, `MOVED`,
    /// `CROSSSLOT`, `CLUSTERDOWN`, ...).
    Topology,
    /// Anything else Redis or the connection said.
    Other,
}

impl Cause {
    /// The name logged in the `cause` field.
    pub(super) fn name(self) -> &'static str {
        match self {
            Cause::Auth => "auth",
            Cause::Oom => "oom",
            Cause::Protocol => "protocol",
            Cause::Refused => "refused",
            Cause::Dropped => "dropped",
            Cause::Timeout => "timeout",
            Cause::Topology => "topology",
            Cause::Other => "other",
        }
    }

    /// The cause of a redis-rs error.
    pub(super) fn of(error: &redis::RedisError) -> Cause {
        use redis::{ErrorKind, ServerErrorKind};
        let code = error.code().unwrap_or_default();
        let said = error.to_string();
        match error.kind() {
            ErrorKind::AuthenticationFailed => Cause::Auth,
            _ if matches!(code, "WRONGPASS" | "NOAUTH" | "NOPERM")
                || said.contains("unauthenticated") =>
            {
                Cause::Auth
            }
            _ if code == "OOM" => Cause::Oom,
            ErrorKind::Parse | ErrorKind::UnexpectedReturnType => Cause::Protocol,
            ErrorKind::Server(
                ServerErrorKind::ReadOnly
                | ServerErrorKind::Moved
                | ServerErrorKind::Ask
                | ServerErrorKind::CrossSlot
                | ServerErrorKind::ClusterDown
                | ServerErrorKind::MasterDown
                | ServerErrorKind::TryAgain,
            ) => Cause::Topology,
            _ if error.is_connection_refusal() => Cause::Refused,
            _ if error.is_timeout() => Cause::Timeout,
            _ if error.is_connection_dropped() => Cause::Dropped,
            _ => Cause::Other,
        }
    }
}

/// The cause last logged, and whether a cut-off call is being followed up.
#[derive(Default)]
pub(super) struct Causes {
    last: Mutex<Option<Cause>>,
    following: AtomicBool,
}

impl Causes {
    /// A call failed with `cause`: logged (with Redis's words, `detail`) when it differs
    /// from the last cause logged since Redis last answered.
    pub(super) fn failed(&self, cause: Cause, detail: &str) {
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if *last == Some(cause) {
            return;
        }
        *last = Some(cause);
        drop(last);
        warn!(
            cause = cause.name(),
            error = detail,
            "fleet: Redis call failed"
        );
    }

    /// A call was answered: the next failure is logged whatever its cause.
    pub(super) fn answered(&self) {
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(cause) = last.take() {
            drop(last);
            info!(after = cause.name(), "fleet: Redis answers again");
        }
    }

    /// Whether a cut-off call may be followed up now (one at a time); if so, the caller
    /// runs `call` on its own task and reports its end with `followed`.
    pub(super) fn may_follow(&self) -> bool {
        !self.following.swap(true, Ordering::AcqRel)
    }

    /// The end of a followed-up call: what it failed with, or `Timeout` if it was still
    /// unanswered after `FOLLOW`; an answer logs nothing (the next call will tell).
    pub(super) async fn followed<T, F>(&self, call: F)
    where
        F: Future<Output = Result<T, redis::RedisError>>,
    {
        match tokio::time::timeout(FOLLOW, call).await {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => self.failed(Cause::of(&error), &error.to_string()),
            Err(_) => self.failed(
                Cause::Timeout,
                &format!("no answer within {} ms", FOLLOW.as_millis()),
            ),
        }
        self.following.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(code: &str, detail: &str) -> redis::RedisError {
        redis::make_extension_error(code.to_owned(), Some(detail.to_owned()))
    }

    #[test]
    fn redis_errors_are_named_by_their_cause() {
        let wrongpass = server("WRONGPASS", "invalid username-password pair");
        assert_eq!(Cause::of(&wrongpass), Cause::Auth);
        assert_eq!(
            Cause::of(&server("NOAUTH", "Authentication required.")),
            Cause::Auth
        );
        let oom = server("OOM", "command not allowed when used memory > 'maxmemory'.");
        assert_eq!(Cause::of(&oom), Cause::Oom);
        let refused =
            redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert_eq!(Cause::of(&refused), Cause::Refused);
        let timeout = redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut));
        assert_eq!(Cause::of(&timeout), Cause::Timeout);
        let parse = redis::RedisError::from((redis::ErrorKind::Parse, "invalid first byte"));
        assert_eq!(Cause::of(&parse), Cause::Protocol);
        assert_eq!(Cause::of(&server("BUSYKEY", "whatever")), Cause::Other);
    }
}

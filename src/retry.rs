//! The retry policy: which attempts are tried again, and how long to wait before the next try.
//!
//! Pure functions; the loop that applies them lives in `proxy`. Retried: ErrorCode 100001
//! (Tencent asks for it), a connection that failed before the request was sent, and Tencent's
//! rate-limit answers (60007, 60011, 60018, 60019: the request was not carried out), which
//! also slow the lane down. Never retried: signature errors (700xx: retrying them triggers the
//! one-minute lockout, 70050), invalid parameters and every other answer, and a timeout or a
//! broken connection once the request may have reached Tencent — unless the repeat is safe:
//! Tencent drops a repeat of the same bytes to some APIs within a window
//! (`limiter::table::DEDUP`), and the caller (`proxy`) says whether the first attempt is
//! still inside it. An answer that carried out part of a batch (`ErrorList`,
//! `FailAccounts`) is never retried as a whole: a repeat would send the rest again.

use std::time::Duration;

use crate::limiter::Scope;
use crate::upstream::{Error, Reply};

/// What to do with one attempt's result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Give this result to the caller.
    Answer,
    /// Try again after a backoff.
    Retry,
    /// Tencent says `Scope` is over its limit: slow it down, then try again.
    SlowDown(Scope),
}

/// Decides whether an attempt's result is final. `repeat_safe`: Tencent would drop a repeat
/// of this request as a duplicate if it carried out the first one.
pub fn decide(tried: &Result<Reply, Error>, repeat_safe: bool) -> Verdict {
    match tried {
        Ok(reply) if reply.envelope.partial() > 0 => Verdict::Answer,
        Ok(reply) => match reply.envelope.error_code {
            Some(100001) => Verdict::Retry,
            Some(60007) => Verdict::SlowDown(Scope::Api),
            Some(60011 | 60018 | 60019) => Verdict::SlowDown(Scope::App),
            _ => Verdict::Answer,
        },
        // No connection could be made: nothing was sent.
        Err(Error::Unreachable(_)) => Verdict::Retry,
        // The request may have reached Tencent and been carried out: a repeat could do it
        // twice, so the caller decides — unless Tencent would drop the repeat.
        Err(Error::Broken(_) | Error::Timeout(_) | Error::Body(_)) if repeat_safe => Verdict::Retry,
        Err(Error::Broken(_) | Error::Timeout(_) | Error::Body(_) | Error::Status(_)) => {
            Verdict::Answer
        }
    }
}

/// The pause before retry number `retry` (1 for the first retry): exponential from `base`,
/// capped at `cap`, with "equal jitter" — half fixed, half scaled by `jitter` in `[0, 1)`.
pub fn backoff(retry: u32, base: Duration, cap: Duration, jitter: f64) -> Duration {
    let exponential = base.saturating_mul(1u32 << retry.saturating_sub(1).min(20));
    let full = exponential.min(cap);
    full / 2 + (full / 2).mul_f64(jitter.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::Envelope;
    use bytes::Bytes;
    use hyper::StatusCode;

    fn reply(code: i64) -> Result<Reply, Error> {
        Ok(Reply {
            status: StatusCode::OK,
            content_type: None,
            content_encoding: None,
            body: Bytes::new(),
            envelope: Envelope {
                error_code: Some(code),
                ..Envelope::default()
            },
        })
    }

    #[test]
    fn a_partial_answer_is_never_retried_as_a_whole() {
        let body = br#"{"ErrorCode":100001,"ErrorList":[{"To_Account":"x","ErrorCode":70107}]}"#;
        let envelope: Envelope = serde_json::from_slice(body).unwrap();
        assert_eq!(envelope.partial(), 1);
        let Ok(mut partial) = reply(100001) else {
            unreachable!()
        };
        partial.envelope = envelope;
        assert_eq!(decide(&Ok(partial), true), Verdict::Answer);
        let other: Envelope =
            serde_json::from_slice(br#"{"ErrorList":"x","FailAccounts":[1,2]}"#).unwrap();
        assert_eq!(other.partial(), 2);
    }

    #[test]
    fn retries_100001_only_among_tencent_failures() {
        assert_eq!(decide(&reply(100001), false), Verdict::Retry);
        for code in [
            0, 100002, 100004, 60002, 60003, 60008, 70001, 70003, 70009, 70013, 70050,
        ] {
            assert_eq!(decide(&reply(code), true), Verdict::Answer, "{code}");
        }
    }

    #[test]
    fn rate_limit_answers_slow_the_right_scope() {
        assert_eq!(decide(&reply(60007), false), Verdict::SlowDown(Scope::Api));
        for code in [60011, 60018, 60019] {
            assert_eq!(decide(&reply(code), true), Verdict::SlowDown(Scope::App));
        }
    }

    #[test]
    fn timeouts_are_retried_only_where_a_repeat_is_dropped() {
        let timeout = || Err(Error::Timeout(Duration::from_secs(5)));
        assert_eq!(decide(&timeout(), false), Verdict::Answer);
        assert_eq!(decide(&timeout(), true), Verdict::Retry);
    }

    #[test]
    fn an_answer_that_is_not_final_is_never_retried() {
        assert_eq!(
            decide(&Err(Error::Status(StatusCode::SWITCHING_PROTOCOLS)), true),
            Verdict::Answer
        );
    }

    #[test]
    fn a_connection_never_made_is_retried() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(
            decide(&Err(Error::Unreachable(refused.into())), false),
            Verdict::Retry
        );
    }

    #[test]
    fn backoff_doubles_from_base_and_stops_at_cap() {
        let (base, cap) = (Duration::from_millis(50), Duration::from_secs(1));
        let fixed = |n| backoff(n, base, cap, 0.0);
        assert_eq!(fixed(1), Duration::from_millis(25));
        assert_eq!(fixed(2), Duration::from_millis(50));
        assert_eq!(fixed(5), Duration::from_millis(400));
        assert_eq!(fixed(6), Duration::from_millis(500));
        assert_eq!(fixed(40), Duration::from_millis(500));
        assert_eq!(
            backoff(1, base, cap, 0.999_999),
            Duration::from_nanos(49_999_975)
        );
        assert_eq!(backoff(40, base, cap, 1.0), cap);
    }
}

//! Whether a callback is Tencent's, from its query alone (before its body is read).
//!
//! Tencent appends `SdkAppid`, `CallbackCommand`, `contenttype`, `ClientIP` and
//! `OptPlatform` to the callback URL, and with a callback token `Sign` and `RequestTime`:
//! `Sign = lowercase hex(sha256(Token + RequestTime))` (TENCENT.md §7, §8). A callback is
//! taken when its SDKAppID (spelt `SdkAppid` or `SdkAppId`: every name is matched without
//! regard to case) is a configured app's, its `RequestTime` is within [`WINDOW`] of now, and
//! its `Sign` is the app's token's, or the previous token's while a rotation is under way.
//! The sign is compared in constant time. There is no replay cache keyed on `Sign`: every
//! callback of one second carries the same one; the window is the only replay bound, and
//! idempotency keys live in the body.
//!
//! Time is an argument (`now`, Unix seconds), so the window is tested without a clock.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::Token;

/// How far `RequestTime` may be from now, either way, in seconds.
pub const WINDOW: u64 = 60;
/// The longest `CallbackCommand` taken; Tencent's are about 30 bytes.
pub const MAX_COMMAND_BYTES: usize = 64;

/// Why a callback was refused before it reached the service.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Any method but POST.
    #[error("Tencent's callbacks are POST requests")]
    Method,
    /// A parameter is missing, repeated or malformed.
    #[error("{0}")]
    Malformed(&'static str),
    /// The SDKAppID is not a configured app's.
    #[error("SdkAppid {0} is not an app of this gateway")]
    UnknownApp(u64),
    /// The app has a token and the callback carries no `Sign` or no `RequestTime`.
    #[error(
        "the callback carries no Sign and RequestTime: set the callback token in Tencent's console"
    )]
    Unsigned,
    /// `RequestTime` is not a Unix time, or is more than `WINDOW` from now.
    #[error("RequestTime is {0}: a callback is taken within 60 s of now (check the clocks)")]
    Stale(String),
    /// `Sign` is neither the token's nor the previous token's.
    #[error("Sign does not match the app's callback token")]
    BadSign,
}

impl Refused {
    /// The `outcome` label and log field.
    pub fn outcome(&self) -> &'static str {
        match self {
            Refused::Method | Refused::Malformed(_) => "refused_bad_request",
            Refused::UnknownApp(_) => "refused_unknown_app",
            Refused::Unsigned => "refused_unsigned",
            Refused::Stale(_) => "refused_stale",
            Refused::BadSign => "refused_sign",
        }
    }

    /// The HTTP status, and the `ErrorCode` of the envelope (Tencent's codes for a bad
    /// request, an unknown SDKAppID and a wrong credential).
    pub fn status_and_code(&self) -> (hyper::StatusCode, u32) {
        use hyper::StatusCode;
        match self {
            Refused::Method => (StatusCode::METHOD_NOT_ALLOWED, 60002),
            Refused::Malformed(_) => (StatusCode::BAD_REQUEST, 60002),
            Refused::UnknownApp(_) => (StatusCode::FORBIDDEN, 60006),
            Refused::Unsigned | Refused::Stale(_) | Refused::BadSign => {
                (StatusCode::UNAUTHORIZED, 60005)
            }
        }
    }
}

/// What a callback's query says, read once.
#[derive(Debug, PartialEq, Eq)]
pub struct Params {
    /// `SdkAppid`.
    pub sdkappid: u64,
    /// `CallbackCommand`: letters, digits, `.` and `_`, at most `MAX_COMMAND_BYTES`.
    pub command: String,
    /// `Sign`, when given.
    sign: Option<String>,
    /// `RequestTime`, when given.
    time: Option<String>,
}

/// Reads the parameters verification needs; each may be given once.
pub fn read(query: Option<&str>) -> Result<Params, Refused> {
    let (mut sdkappid, mut command, mut sign, mut time) = (None, None, None, None);
    for (name, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        // Every name without regard to case, so that `CallbackCommand=A&callbackcommand=B`
        // is refused as a repeat rather than routed by A while a service that reads names
        // without regard to case (or takes the last) sees B.
        let slot = match name.to_ascii_lowercase().as_str() {
            "sdkappid" => &mut sdkappid,
            "callbackcommand" => &mut command,
            "sign" => &mut sign,
            "requesttime" => &mut time,
            _ => continue,
        };
        if slot.replace(value.into_owned()).is_some() {
            return Err(Refused::Malformed(
                "SdkAppid, CallbackCommand, Sign and RequestTime may each be given once, in any case",
            ));
        }
    }
    let sdkappid = sdkappid
        .ok_or(Refused::Malformed("the query has no SdkAppid"))?
        .parse()
        .map_err(|_| Refused::Malformed("SdkAppid is not a number"))?;
    let command = command.ok_or(Refused::Malformed("the query has no CallbackCommand"))?;
    let plain = command
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_');
    if command.is_empty() || command.len() > MAX_COMMAND_BYTES || !plain {
        return Err(Refused::Malformed(
            "CallbackCommand must be up to 64 letters, digits, '.' and '_'",
        ));
    }
    Ok(Params {
        sdkappid,
        command,
        sign,
        time,
    })
}

/// Whether a callback with `params` is signed by one of `tokens` (current first) at a time
/// within `WINDOW` of `now`. No tokens: the app takes unsigned callbacks.
pub fn check(tokens: &[&Token], params: &Params, now: u64) -> Result<(), Refused> {
    if tokens.is_empty() {
        return Ok(());
    }
    let (Some(sign), Some(time)) = (&params.sign, &params.time) else {
        return Err(Refused::Unsigned);
    };
    let digits = !time.is_empty() && time.len() <= 20 && time.bytes().all(|b| b.is_ascii_digit());
    let at: u64 = digits
        .then(|| time.parse().ok())
        .flatten()
        .ok_or_else(|| Refused::Stale("not a Unix time".into()))?;
    if at.abs_diff(now) > WINDOW {
        let how = if at < now { "old" } else { "ahead" };
        return Err(Refused::Stale(format!("{} s {how}", at.abs_diff(now))));
    }
    // Every token is tried, so the time taken does not say which one matched.
    let matched = tokens.iter().fold(subtle::Choice::from(0), |any, token| {
        any | sign
            .as_bytes()
            .ct_eq(self::sign(token.expose(), time).as_bytes())
    });
    if bool::from(matched) {
        Ok(())
    } else {
        Err(Refused::BadSign)
    }
}

/// `lowercase hex(sha256(token + time))`.
pub fn sign(token: &str, time: &str) -> String {
    let digest = Sha256::new()
        .chain_update(token.as_bytes())
        .chain_update(time.as_bytes())
        .finalize();
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The query a Tencent callback of `command` to app `sdkappid` carries at `time`, signed with
/// `token` when there is one; `ClientIP` and `OptPlatform` as for a REST API call.
pub fn query(sdkappid: u64, command: &str, token: Option<&str>, time: u64) -> String {
    let mut query = form_urlencoded::Serializer::new(String::new());
    query
        .append_pair("SdkAppid", &sdkappid.to_string())
        .append_pair("CallbackCommand", command)
        .append_pair("contenttype", "json")
        .append_pair("ClientIP", "127.0.0.1")
        .append_pair("OptPlatform", "RESTAPI");
    if let Some(token) = token {
        let time = time.to_string();
        query
            .append_pair("Sign", &sign(token, &time))
            .append_pair("RequestTime", &time);
    }
    query.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    const KNOWN: u64 = 1_669_872_112;

    fn params(query: &str) -> Params {
        read(Some(query)).unwrap()
    }

    #[test]
    fn the_sign_is_tencents_known_answer() {
        // TENCENT.md §7: Token `xxxxyyyy`, RequestTime 1669872112.
        assert_eq!(
            sign("xxxxyyyy", "1669872112"),
            "17773bc39a671d7b9aa835458704d2a6db81360a5940292b587d6d760d484061"
        );
        let token = Token::new("xxxxyyyy");
        let signed = params(&query(
            1400000001,
            "C2C.CallbackAfterSendMsg",
            Some("xxxxyyyy"),
            KNOWN,
        ));
        assert_eq!(check(&[&token], &signed, KNOWN), Ok(()));
    }

    #[test]
    fn times_more_than_60_s_away_are_refused_and_59_taken() {
        let token = Token::new("xxxxyyyy");
        let at = |time: u64| {
            params(&query(
                1,
                "C2C.CallbackBeforeSendMsg",
                Some("xxxxyyyy"),
                time,
            ))
        };
        assert_eq!(check(&[&token], &at(KNOWN - 59), KNOWN), Ok(()));
        assert_eq!(check(&[&token], &at(KNOWN + 59), KNOWN), Ok(()));
        assert_eq!(check(&[&token], &at(KNOWN - 60), KNOWN), Ok(()));
        assert_eq!(
            check(&[&token], &at(KNOWN - 61), KNOWN),
            Err(Refused::Stale("61 s old".into()))
        );
        assert_eq!(
            check(&[&token], &at(KNOWN + 61), KNOWN),
            Err(Refused::Stale("61 s ahead".into()))
        );
        let garbled = params("SdkAppid=1&CallbackCommand=X&Sign=ab&RequestTime=-5");
        assert!(matches!(
            check(&[&token], &garbled, KNOWN),
            Err(Refused::Stale(_))
        ));
    }

    #[test]
    fn a_wrong_sign_or_none_is_refused_and_the_previous_token_taken() {
        let (current, previous) = (Token::new("current-token"), Token::new("xxxxyyyy"));
        let other = Token::new("unrelated-token");
        let signed = params(&query(1, "State.StateChange", Some("xxxxyyyy"), KNOWN));
        assert_eq!(check(&[&current, &previous], &signed, KNOWN), Ok(()));
        assert_eq!(check(&[&current], &signed, KNOWN), Err(Refused::BadSign));
        assert_eq!(check(&[&other], &signed, KNOWN), Err(Refused::BadSign));
        let upper = query(1, "State.StateChange", None, KNOWN)
            + &format!(
                "&Sign={}&RequestTime={KNOWN}",
                sign("xxxxyyyy", "1669872112").to_uppercase()
            );
        assert_eq!(
            check(&[&previous], &params(&upper), KNOWN),
            Err(Refused::BadSign)
        );
        let unsigned = params(&query(1, "State.StateChange", None, KNOWN));
        assert_eq!(check(&[&current], &unsigned, KNOWN), Err(Refused::Unsigned));
        assert_eq!(check(&[], &unsigned, KNOWN), Ok(()));
    }

    #[test]
    fn the_sdkappid_is_read_in_either_spelling_and_each_parameter_once() {
        for name in ["SdkAppid", "SdkAppId", "sdkappid", "SDKAPPID"] {
            let read = params(&format!(
                "{name}=1400000001&CallbackCommand=Live.CallbackAfterCreateRoom"
            ));
            assert_eq!(read.sdkappid, 1400000001, "{name}");
        }
        for bad in [
            "CallbackCommand=X",
            "SdkAppid=abc&CallbackCommand=X",
            "SdkAppid=1",
            "SdkAppid=1&CallbackCommand=",
            "SdkAppid=1&CallbackCommand=a%20b",
            "SdkAppid=1&SdkAppId=2&CallbackCommand=X",
            "SdkAppid=1&CallbackCommand=X&Sign=a&Sign=b",
            "SdkAppid=1&CallbackCommand=X&callbackcommand=Y",
            "SdkAppid=1&CallbackCommand=X&Sign=a&sign=b",
            "SdkAppid=1&CallbackCommand=X&RequestTime=1&REQUESTTIME=2",
        ] {
            assert!(
                matches!(read(Some(bad)), Err(Refused::Malformed(_))),
                "{bad}"
            );
        }
        let long = format!("SdkAppid=1&CallbackCommand={}", "C".repeat(65));
        assert!(read(Some(&long)).is_err());
    }
}

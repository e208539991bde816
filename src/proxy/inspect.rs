//! One parse of a request body: JSON with no repeated key, by the same rules on every API
//! (else 60003, see `json`), then the API's documented rules, if it has any, and its quotas'
//! costs and keys, all read from that one parse.

use crate::api::Api;
use crate::error::Error;
use crate::json;
use crate::limiter::{self, Measured, Quota};
use crate::rules;

/// Checks `body` for `api`: JSON at all, then the API's rules; and measures it for each of
/// `quotas` (its cost and key there), from the same parse.
pub fn inspect(api: &Api, body: &[u8], quotas: &[Quota]) -> Result<Vec<Measured>, Error> {
    let rules = rules::for_api(api.name());
    if rules.is_none() && quotas.is_empty() {
        json::validate(body)?;
        return Ok(Vec::new());
    }
    let value = json::parse(body)?;
    if let Some(rules) = rules {
        rules::check(rules, &value).map_err(Error::Rejected)?;
    }
    limiter::measure(quotas, &value)
        .map_err(|too| Error::Rejected(rules::Refusal::new(too.code, too.info)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unchecked(body: &[u8]) -> Result<(), Error> {
        inspect(
            &Api::from_path("/v4/profile/portrait_get").unwrap(),
            body,
            &[],
        )
        .map(drop)
    }

    fn checked(body: &[u8]) -> Result<(), Error> {
        inspect(
            &Api::from_path("/v4/live_engine_http_srv/get_room_info").unwrap(),
            body,
            &[],
        )
        .map(drop)
    }

    #[test]
    fn unchecked_apis_take_any_json() {
        for body in [
            &br#"{"a":[1,-2,3.5e10,true,false,null,"\u00e9\ud83d\ude00",{"b":{}}]}"#[..],
            b"[]",
            b"\"text\"",
            "{\"é\":\"日本\"}".as_bytes(),
        ] {
            assert!(unchecked(body).is_ok(), "{}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn checked_and_unchecked_apis_refuse_the_same_bodies() {
        let deep = |n| format!("{}{}", "[".repeat(n), "]".repeat(n)).into_bytes();
        let mut bad_utf8 = br#"{"RoomId":"r","x":""#.to_vec();
        bad_utf8.extend_from_slice(&[0xff, 0xfe, b'"', b'}']);
        let mut bad_key = b"{\"".to_vec();
        bad_key.extend_from_slice(&[0xc3, b'"', b':', b'1', b'}']);
        for body in [
            bad_utf8,
            bad_key,
            br#"{"RoomId":"r","x":"\ud800"}"#.to_vec(),
            br#"{"RoomId":"r","x":"\udc00 alone"}"#.to_vec(),
            br#"{"RoomId":"r","x":1e400}"#.to_vec(),
            br#"{"RoomId":"r"} {}"#.to_vec(),
            deep(128),
            deep(500_000),
        ] {
            let shown = String::from_utf8_lossy(&body[..body.len().min(40)]).into_owned();
            assert!(
                matches!(unchecked(&body), Err(Error::NotJson(_))),
                "unchecked took {shown}"
            );
            assert!(
                matches!(checked(&body), Err(Error::NotJson(_))),
                "checked took {shown}"
            );
        }
        assert!(unchecked(&deep(127)).is_ok());
    }
}

//! One parse of a request body: JSON by the same rules on every API (else 60003), then the
//! API's documented rules, if it has any.
//!
//! "JSON" means what serde_json's full parse accepts: UTF-8 throughout (no lone surrogate in
//! a `\u` escape either), fewer than 128 levels of nesting, numbers that fit an `f64`, nothing
//! after the value. A checked API gets this from the parse its rules need anyway; an
//! unchecked one from `Json`, which walks the same parse without building anything. Strings
//! are borrowed from the body, which goes upstream unchanged.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

use crate::api::Api;
use crate::error::Error;
use crate::limiter::{self, Measured, Quota};
use crate::rules;

/// Checks `body` for `api`: JSON at all, then the API's rules; and measures it for each of
/// `quotas` (its cost and key there), from the same parse.
pub fn inspect(api: &Api, body: &[u8], quotas: &[Quota]) -> Result<Vec<Measured>, Error> {
    let rules = rules::for_api(api.name());
    if rules.is_none() && quotas.is_empty() {
        return serde_json::from_slice::<Json>(body)
            .map(|_| Vec::new())
            .map_err(Error::NotJson);
    }
    let value: serde_json_borrow::Value = serde_json::from_slice(body).map_err(Error::NotJson)?;
    if let Some(rules) = rules {
        rules::check(rules, &value).map_err(Error::Rejected)?;
    }
    limiter::measure(quotas, &value)
        .map_err(|too| Error::Rejected(rules::Refusal::new(too.code, too.info)))
}

/// Any JSON value, validated and then forgotten. Unlike `IgnoredAny`, which skips strings and
/// nested values without looking, it asks for every value, so the parser checks each string's
/// UTF-8 and escapes, counts nesting against its limit, and reads each number.
struct Json;

impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Json, D::Error> {
        deserializer.deserialize_any(Json)
    }
}

impl<'de> Visitor<'de> for Json {
    type Value = Json;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Json, E> {
        Ok(Json)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Json, E> {
        Ok(Json)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Json, E> {
        Ok(Json)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Json, E> {
        Ok(Json)
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Json, E> {
        Ok(Json)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Json, E> {
        Ok(Json)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut items: A) -> Result<Json, A::Error> {
        while items.next_element::<Json>()?.is_some() {}
        Ok(Json)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut entries: A) -> Result<Json, A::Error> {
        while entries.next_entry::<Json, Json>()?.is_some() {}
        Ok(Json)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unchecked(body: &[u8]) -> Result<(), Error> {
        inspect(&Api::from_path("/v4/openim/sendmsg").unwrap(), body, &[]).map(drop)
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

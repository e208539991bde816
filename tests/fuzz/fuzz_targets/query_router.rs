//! The query router on any bytes: which app `?sdkappid=` asks for is a number, nothing, or
//! `BadSdkAppId` (400, 60006, in Tencent's envelope); never a panic. Checked against a second,
//! plain decoding of the query: the first `sdkappid` pair decides.
#![no_main]

use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use http_body::Body;
use libfuzzer_sys::fuzz_target;
use timgate::error::Error;
use timgate::proxy::requested_app;

fuzz_target!(|data: &[u8]| {
    let query = String::from_utf8_lossy(data);
    let first = query
        .split('&')
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
        .find(|(name, _)| decode(name) == "sdkappid")
        .map(|(_, value)| decode(value));
    match requested_app(Some(&query)) {
        Ok(None) => assert_eq!(first, None, "{query:?}"),
        Ok(Some(id)) => {
            let given = first.expect("an id comes from an sdkappid pair");
            assert_eq!(given.parse::<u64>(), Ok(id), "{query:?}");
        }
        Err(error) => {
            let Error::BadSdkAppId(text) = &error else {
                panic!("{query:?}: {error}");
            };
            assert_eq!(first.as_ref(), Some(text), "{query:?}");
            assert!(text.parse::<u64>().is_err());
            envelope(error, 400, 60006);
        }
    }
});

/// `application/x-www-form-urlencoded` decoding: `+` is a space, `%XY` a byte, anything else
/// itself; bytes that are not UTF-8 become U+FFFD.
fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let hex = |i: usize| bytes.get(i).and_then(|b| char::from(*b).to_digit(16));
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match (bytes[i], hex(i + 1), hex(i + 2)) {
            (b'+', _, _) => out.push(b' '),
            (b'%', Some(hi), Some(lo)) => {
                out.push(u8::try_from(hi * 16 + lo).expect("two hex digits"));
                i += 2;
            }
            (b, _, _) => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The answer `error` makes: Tencent's envelope, with `status` and `code`.
fn envelope(error: Error, status: u16, code: u32) {
    let mut body = error.into_response();
    assert_eq!(body.status().as_u16(), status);
    // A `Full` body is ready at once: one poll, no runtime.
    let mut cx = Context::from_waker(Waker::noop());
    let Poll::Ready(Some(Ok(frame))) = Pin::new(body.body_mut()).poll_frame(&mut cx) else {
        panic!("the envelope's body is ready");
    };
    let bytes = frame.into_data().expect("a data frame");
    let json: serde_json::Value = serde_json::from_slice(&bytes).expect("the envelope is JSON");
    assert_eq!(json["ActionStatus"], "FAIL");
    assert_eq!(json["ErrorCode"], code);
    assert!(json["ErrorInfo"].is_string());
}

//! End to end: callers → gateway → emulator or recording upstream, all real HTTP on loopback.
// Tests may unwrap: a panic is how a test fails.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::HashSet;
use std::time::Duration;

use hyper::StatusCode;
use serde_json::json;
use support::{Caller, KEY, Recorder, app_entry, emulator, gateway, one_app};
use timgate::config::{Config, SecretKey};
use timgate::usersig;
use tokio::net::TcpListener;

const APP: u64 = 1400000001;
const SET: &str = "/v4/live_engine_http_srv/set_room_metadata";
const GET: &str = "/v4/live_engine_http_srv/get_room_metadata";
/// An API without request rules: any JSON body goes through.
const PLAIN: &str = "/v4/profile/portrait_get";

fn config(text: &str) -> Config {
    Config::from_toml(text).unwrap()
}

#[tokio::test]
async fn metadata_round_trips_through_gateway_and_emulator() {
    // The emulator knows the app by its key; the gateway reaches it over HTTP.
    let emu = emulator(&config(&one_app(APP, "http://127.0.0.1:1"))).await;
    let gw = gateway(config(&one_app(APP, &format!("http://{}", emu.addr)))).await;
    let caller = Caller::default();

    let set = caller
        .post(
            gw.addr,
            SET,
            r#"{"RoomId":"r1","Metadata":[{"Key":"topic","Value":"héllo"}]}"#,
        )
        .await;
    assert_eq!(
        (set.status, set.code()),
        (StatusCode::OK, 0),
        "{:?}",
        set.json()
    );
    assert!(set.json()["RequestId"].as_str().unwrap().starts_with("Id-"));

    let got = caller.post(gw.addr, GET, r#"{"RoomId":"r1"}"#).await;
    assert_eq!(got.code(), 0);
    assert_eq!(
        got.json()["Response"]["Metadata"],
        json!([{"Key": "topic", "Value": "héllo"}])
    );
    assert_eq!(got.headers["x-timgate-attempts"], "1");
}

#[tokio::test]
async fn embedded_emulator_serves_the_default_config() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/timgate.toml"))
        .unwrap();
    let gw = gateway(config(&text)).await;
    let caller = Caller::default();
    let set = caller
        .post(
            gw.addr,
            SET,
            r#"{"RoomId":"demo","Metadata":[{"Key":"k","Value":"v"}]}"#,
        )
        .await;
    assert_eq!(set.code(), 0, "{:?}", set.json());
    let got = caller
        .post(gw.addr, GET, r#"{"RoomId":"demo","Keys":["k"]}"#)
        .await;
    assert_eq!(got.json()["Response"]["Metadata"][0]["Value"], "v");
}

#[tokio::test]
async fn every_request_is_signed_as_the_admin_with_a_fresh_random() {
    let upstream = Recorder::ok().await;
    let gw = gateway(config(&one_app(APP, &upstream.url()))).await;
    let caller = Caller::default();
    let calls = (0..1000).map(|i| {
        let caller = caller.clone();
        async move { caller.post(gw.addr, PLAIN, format!("{{\"n\":{i}}}")).await }
    });
    let answers = futures_join_all(calls, 50).await;
    assert!(
        answers
            .iter()
            .all(|a| a.status == StatusCode::OK && a.code() == 0)
    );

    let seen = upstream.seen();
    assert_eq!(seen.len(), 1000);
    let key = SecretKey::new(KEY);
    let now = usersig::unix_now();
    let mut randoms = HashSet::new();
    for s in &seen {
        assert_eq!(s.path, PLAIN);
        assert_eq!(s.param("sdkappid"), Some("1400000001"));
        assert_eq!(s.param("identifier"), Some("administrator"));
        assert_eq!(s.param("contenttype"), Some("json"));
        let token = s.param("usersig").expect("usersig present");
        let claims =
            usersig::verify(&key, token, APP, "administrator", now).expect("valid UserSig");
        assert!(claims.expire <= 600, "short-lived");
        randoms.insert(
            s.param("random")
                .unwrap()
                .parse::<u32>()
                .expect("random is a u32"),
        );
    }
    assert_eq!(randoms.len(), 1000, "a new random for every request");
}

/// Runs `futures` with at most `width` in flight, keeping their order.
async fn futures_join_all<F: std::future::Future + Send + 'static>(
    futures: impl Iterator<Item = F>,
    width: usize,
) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let semaphore = std::sync::Arc::new(tokio::sync::Semaphore::new(width));
    let tasks: Vec<_> = futures
        .map(|f| {
            let semaphore = semaphore.clone();
            tokio::spawn(async move {
                let _permit = semaphore.acquire().await.unwrap();
                f.await
            })
        })
        .collect();
    let mut out = Vec::with_capacity(tasks.len());
    for task in tasks {
        out.push(task.await.unwrap());
    }
    out
}

#[tokio::test]
async fn callers_credentials_and_nonce_never_reach_upstream() {
    let upstream = Recorder::ok().await;
    let gw = gateway(config(&one_app(APP, &upstream.url()))).await;
    let path = format!(
        "{PLAIN}?identifier=intruder&usersig=caller-sig&random=7&contenttype=xml&sdkappid={APP}&extra=1"
    );
    let answer = Caller::default().post(gw.addr, &path, "{}").await;
    assert_eq!(answer.code(), 0);

    let seen = &upstream.seen()[0];
    let names: Vec<&str> = seen.query.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["sdkappid", "identifier", "usersig", "random", "contenttype"]
    );
    assert_eq!(seen.param("identifier"), Some("administrator"));
    assert_ne!(seen.param("usersig"), Some("caller-sig"));
    assert_eq!(seen.param("contenttype"), Some("json"));
}

#[tokio::test]
async fn body_passes_byte_for_byte_and_empty_becomes_braces() {
    let upstream = Recorder::ok().await;
    let gw = gateway(config(&one_app(APP, &upstream.url()))).await;
    let caller = Caller::default();
    let odd = " {\"b\" : [1,2.50, \"\\u00e9\"],\n\"a\":null} ";
    caller.post(gw.addr, PLAIN, odd).await;
    caller.post(gw.addr, PLAIN, "").await;
    let seen = upstream.seen();
    assert_eq!(seen[0].body, odd.as_bytes());
    assert_eq!(seen[1].body, "{}".as_bytes());
}

#[tokio::test]
async fn two_apps_are_routed_by_sdkappid() {
    let (a, b) = (Recorder::ok().await, Recorder::ok().await);
    let text = format!(
        "{}{}",
        app_entry(1400000001, "admin_a", &a.url()),
        app_entry(1400000002, "admin_b", &b.url())
    );
    let gw = gateway(config(&text)).await;
    let caller = Caller::default();
    caller
        .post(gw.addr, &format!("{PLAIN}?sdkappid=1400000002"), "{}")
        .await;
    caller
        .post(gw.addr, &format!("{PLAIN}?sdkappid=1400000001"), "{}")
        .await;
    caller
        .post(gw.addr, &format!("{PLAIN}?sdkappid=1400000002"), "{}")
        .await;

    let (seen_a, seen_b) = (a.seen(), b.seen());
    assert_eq!((seen_a.len(), seen_b.len()), (1, 2));
    assert_eq!(seen_a[0].param("identifier"), Some("admin_a"));
    assert!(
        seen_b
            .iter()
            .all(|s| s.param("sdkappid") == Some("1400000002"))
    );
    assert!(
        seen_b
            .iter()
            .all(|s| s.param("identifier") == Some("admin_b"))
    );

    let ambiguous = caller.post(gw.addr, PLAIN, "{}").await;
    assert_eq!(
        (ambiguous.status, ambiguous.code()),
        (StatusCode::BAD_REQUEST, 60006)
    );
}

#[tokio::test]
async fn each_refusal_has_its_status_and_envelope() {
    let upstream = Recorder::ok().await;
    let mut cfg = config(&one_app(APP, &upstream.url()));
    cfg.server.max_body_bytes = 64;
    let gw = gateway(cfg).await;
    let caller = Caller::default();
    let cases = [
        (
            "POST",
            PLAIN.to_owned(),
            "{".to_owned(),
            StatusCode::OK,
            60003,
        ),
        (
            "POST",
            PLAIN.to_owned(),
            "{} trailing".to_owned(),
            StatusCode::OK,
            60003,
        ),
        (
            "POST",
            format!("{PLAIN}?sdkappid=42"),
            "{}".to_owned(),
            StatusCode::BAD_REQUEST,
            60006,
        ),
        (
            "POST",
            format!("{PLAIN}?sdkappid=x"),
            "{}".to_owned(),
            StatusCode::BAD_REQUEST,
            60006,
        ),
        (
            "POST",
            "/v4/only_service".to_owned(),
            "{}".to_owned(),
            StatusCode::NOT_FOUND,
            60002,
        ),
        (
            "POST",
            "/healthz".to_owned(),
            "{}".to_owned(),
            StatusCode::NOT_FOUND,
            60002,
        ),
        (
            "GET",
            PLAIN.to_owned(),
            String::new(),
            StatusCode::METHOD_NOT_ALLOWED,
            60002,
        ),
        (
            "POST",
            PLAIN.to_owned(),
            format!("{{\"a\":\"{}\"}}", "x".repeat(64)),
            StatusCode::PAYLOAD_TOO_LARGE,
            60002,
        ),
    ];
    for (method, path, body, status, code) in cases {
        let answer = caller.send(method, gw.addr, &path, body.clone()).await;
        let doc = answer.json();
        assert_eq!(
            (answer.status, answer.code()),
            (status, code),
            "{method} {path} {body:?}: {doc}"
        );
        assert_eq!(doc["ActionStatus"], "FAIL");
        assert!(!doc["ErrorInfo"].as_str().unwrap().is_empty());
    }
    assert!(
        upstream.seen().is_empty(),
        "refused requests never reach Tencent"
    );
}

#[tokio::test]
async fn unreachable_upstream_is_502_and_silent_one_is_504() {
    let (_held, closed_addr) = support::refusing_port();
    // Accepts connections and never answers.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket);
        }
    });
    let text = format!(
        "{}{}",
        app_entry(1, "admin", &format!("http://{closed_addr}")),
        app_entry(2, "admin", &format!("http://{silent_addr}"))
    );
    let mut cfg = config(&text);
    cfg.server.upstream_timeout = Duration::from_millis(300);
    let gw = gateway(cfg).await;
    let caller = Caller::default();

    let refused = caller
        .post(gw.addr, &format!("{PLAIN}?sdkappid=1"), "{}")
        .await;
    assert_eq!(
        (refused.status, refused.code()),
        (StatusCode::BAD_GATEWAY, 60008)
    );
    let slow = caller
        .post(gw.addr, &format!("{PLAIN}?sdkappid=2"), "{}")
        .await;
    assert_eq!(
        (slow.status, slow.code()),
        (StatusCode::GATEWAY_TIMEOUT, 60008)
    );
    holder.abort();
}

/// Whatever Tencent (or its edge) answers, status and bytes, is what the caller gets: odd
/// spacing, escapes and a trailing newline in an envelope, and non-200 answers that are no
/// envelope at all.
#[tokio::test]
async fn tencents_status_and_bytes_come_back_unchanged() {
    let cases: [(StatusCode, &[u8]); 5] = [
        (
            StatusCode::OK,
            b"{ \"ActionStatus\":\"FAIL\" ,\"ErrorCode\": 100004,\"ErrorInfo\":\"\\u623f\\u95f4\",\"RequestId\":\"Id-1\",\"N\":1.50}\n",
        ),
        (StatusCode::OK, b"{\"ActionStatus\":\"OK\",\"ErrorCode\":0,\"Big\":18446744073709551615}"),
        (StatusCode::BAD_GATEWAY, b"<html><body>502 Bad Gateway</body></html>\r\n"),
        (StatusCode::SERVICE_UNAVAILABLE, b"{\"ErrorCode\":-1,\"ErrorInfo\":\"busy\"}"),
        (StatusCode::INTERNAL_SERVER_ERROR, b""),
    ];
    let caller = Caller::default();
    for (status, bytes) in cases {
        let upstream = Recorder::answering(Duration::ZERO, move |_| {
            (status, bytes::Bytes::from_static(bytes))
        })
        .await;
        let gw = gateway(config(&one_app(APP, &upstream.url()))).await;
        let answer = caller.post(gw.addr, PLAIN, "{}").await;
        assert_eq!(answer.status, status, "{}", String::from_utf8_lossy(bytes));
        assert_eq!(
            answer.body,
            bytes,
            "{status}: {}",
            String::from_utf8_lossy(&answer.body)
        );
        assert_eq!(upstream.seen().len(), 1, "{status}: not retried");
    }
}

#[tokio::test]
async fn a_body_that_never_finishes_gets_408_not_a_hang() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let upstream = Recorder::ok().await;
    let mut cfg = config(&one_app(APP, &upstream.url()));
    cfg.server.body_read_timeout = Duration::from_millis(200);
    let gw = gateway(cfg).await;
    let mut stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let head = format!("POST {PLAIN} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{{\"a\":");
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "the gateway answered and closed");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"ErrorCode\":60002"));
    assert!(upstream.seen().is_empty());
}

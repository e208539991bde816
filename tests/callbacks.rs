//! Tencent's callbacks in (issue 29), end to end: the gateway's callback listener on port 0,
//! the service a test runs on port 0 (a recording server), and Tencent's side played by a
//! real hyper client, or by the in-process emulator for the loop from a caller's `sendmsg`.
//! The exact 60 s window and the known answer are unit tests in `callback::verify`, where
//! the time is an argument; here the clock is the real one, so times are chosen with a
//! second to spare either way.
// Tests may unwrap: a panic is how a test fails.
#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use hyper::StatusCode;
use serde_json::{Value, json};
use support::{Caller, Process, RawUpstream, Recorder, gateway, refusing_port, sample};
use timgate::callback::verify;
use timgate::config::Config;
use timgate::usersig::unix_now;
use tokio::time::Instant;

const APP: u64 = 1400000001;
const TOKEN: &str = "callback-token-0123456789";
const BEFORE_C2C: &str = "C2C.CallbackBeforeSendMsg";
const AFTER_C2C: &str = "C2C.CallbackAfterSendMsg";
const ALLOW: &str = r#"{"ActionStatus":"OK","ErrorInfo":"","ErrorCode":0}"#;
const DENY: &str = r#"{"ActionStatus":"OK","ErrorInfo":"","ErrorCode":1}"#;

/// A token file holding `token`, named after `name`.
fn token_file(name: &str, token: &str) -> String {
    let path = std::env::temp_dir().join(format!("timgate-cbt-{name}-{}", std::process::id()));
    std::fs::write(&path, token).unwrap();
    path.display().to_string()
}

/// One app (endpoint `endpoint`) with a callback listener, `keys` among its keys (a token
/// source) and `routes` after them; `server` keys go in `[server]`.
fn config(server: &str, endpoint: &str, keys: &str, routes: &str) -> Config {
    let text = format!(
        "[server]\n{server}[callbacks]\nlisten = \"127.0.0.1:0\"\n{}{keys}{routes}",
        support::one_app(APP, endpoint)
    );
    Config::from_toml(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

/// A route of `commands` to `forward`, with `extra` keys.
fn route(commands: &[&str], forward: &str, extra: &str) -> String {
    format!("[[apps.callbacks]]\ncommands = {commands:?}\nforward = \"{forward}\"\n{extra}")
}

/// An app keyed with the token `TOKEN` (file named after `name`) and `routes`.
fn signed_config(name: &str, routes: &str) -> Config {
    let keys = format!("callback_token_file = {:?}\n", token_file(name, TOKEN));
    config("", "http://127.0.0.1:1", &keys, routes)
}

/// The query of `command` for app `sdkappid`, signed with `token` at `time`.
fn query(sdkappid: u64, command: &str, token: &str, time: u64) -> String {
    verify::query(sdkappid, command, Some(token), time)
}

/// Posts a callback with `query` and `body` to the listener at `addr`, as Tencent would.
async fn post(caller: &Caller, addr: SocketAddr, query: &str, body: &str) -> support::Answer {
    let headers = [("content-type", "application/json")];
    caller
        .send_with(
            "POST",
            addr,
            &format!("/tim/callback?{query}"),
            &headers,
            body.to_owned(),
        )
        .await
}

/// The admin listener's `/metrics` text.
async fn metrics(caller: &Caller, admin: SocketAddr) -> String {
    String::from_utf8(caller.get(admin, "/metrics").await.body.to_vec()).unwrap()
}

/// `timgate_callbacks_total` for `command` and `outcome` of app `app` (`none` included).
fn counted(text: &str, app: &str, command: &str, outcome: &str) -> f64 {
    let labels = [
        format!("app=\"{app}\""),
        format!("command=\"{command}\""),
        format!("outcome=\"{outcome}\""),
    ];
    let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
    sample(text, "timgate_callbacks_total", &labels)
}

fn c2c_body(text: &str) -> String {
    json!({
        "CallbackCommand": BEFORE_C2C,
        "From_Account": "jared",
        "To_Account": "Jonh",
        "MsgSeq": 48374,
        "MsgRandom": 2837546,
        "MsgBody": [{"MsgType": "TIMTextElem", "MsgContent": {"Text": text}}],
    })
    .to_string()
}

#[tokio::test]
async fn a_signed_callback_reaches_the_service_byte_for_byte_and_its_answer_comes_back() {
    let service = Recorder::with(
        |_| json!({"ActionStatus": "OK", "ErrorInfo": "", "ErrorCode": 0, "MsgBody": []}),
    )
    .await;
    let routes = route(&["C2C.*"], &format!("{}/tim/moderate", service.url()), "");
    let gw = gateway(signed_config("bytes", &routes)).await;
    let caller = Caller::default();
    // Tencent's parameters, with an extra one whose encoding must survive as it came.
    let sent_query = format!(
        "{}&Extra=a%2Bb%20c&Odd=%E4%BD%A0",
        query(APP, BEFORE_C2C, TOKEN, unix_now())
    );
    let body = "{\"CallbackCommand\":\"C2C.CallbackBeforeSendMsg\",  \"Text\":\"h\u{e9}llo\"}\n";
    let answer = post(&caller, gw.callbacks.unwrap(), &sent_query, body).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.json()["MsgBody"], json!([]), "the service's answer");
    let seen = service.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, "/tim/moderate");
    assert_eq!(seen[0].raw_query, sent_query);
    assert_eq!(seen[0].body, Bytes::from(body));
    assert_eq!(seen[0].headers["x-timgate-callback-verified"], "sign");
    assert_eq!(seen[0].headers["content-type"], "application/json");
    let text = metrics(&caller, gw.admin.unwrap()).await;
    assert_eq!(counted(&text, "1400000001", "C2C.*", "forwarded"), 1.0);
    assert!(
        text.contains(
            "timgate_callback_service_seconds_count{app=\"1400000001\",command=\"C2C.*\"} 1"
        ),
        "{text}"
    );
}

#[tokio::test]
async fn refused_callbacks_never_reach_the_service_and_are_counted_by_reason() {
    let service = Recorder::ok().await;
    let routes = route(&["*"], &service.url(), "");
    let gw = gateway(signed_config("refused", &routes)).await;
    let (addr, caller) = (gw.callbacks.unwrap(), Caller::default());
    let now = unix_now();
    let body = c2c_body("hi");
    let cases = [
        // A wrong sign: another token's.
        (
            query(APP, BEFORE_C2C, "another-token-0123456789", now),
            401,
            60005,
        ),
        // 61 s old; and ahead by 62 s (a second to spare for the time the request takes).
        (query(APP, BEFORE_C2C, TOKEN, now - 61), 401, 60005),
        (query(APP, BEFORE_C2C, TOKEN, now + 62), 401, 60005),
        // No sign at all, while the app has a token.
        (verify::query(APP, BEFORE_C2C, None, now), 401, 60005),
        // An app this gateway does not serve.
        (query(1400000002, BEFORE_C2C, TOKEN, now), 403, 60006),
        // No SdkAppid.
        (format!("CallbackCommand={BEFORE_C2C}"), 400, 60002),
    ];
    for (query, status, code) in &cases {
        let answer = post(&caller, addr, query, &body).await;
        assert_eq!(
            answer.status.as_u16(),
            *status,
            "{query}: {:?}",
            answer.json()
        );
        assert_eq!(answer.json()["ActionStatus"], "FAIL");
        assert_eq!(answer.code(), *code);
    }
    let get = caller
        .get(addr, &format!("/?{}", query(APP, BEFORE_C2C, TOKEN, now)))
        .await;
    assert_eq!(get.status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(
        service.seen().is_empty(),
        "a refused callback reached the service"
    );
    // 59 s old is taken (and reaches the service).
    let taken = post(
        &caller,
        addr,
        &query(APP, BEFORE_C2C, TOKEN, now - 59),
        &body,
    )
    .await;
    assert_eq!(taken.code(), 0);
    assert_eq!(service.seen().len(), 1);
    let text = metrics(&caller, gw.admin.unwrap()).await;
    for (app, outcome, n) in [
        ("1400000001", "refused_sign", 1.0),
        ("1400000001", "refused_stale", 2.0),
        ("1400000001", "refused_unsigned", 1.0),
        ("none", "refused_unknown_app", 1.0),
        ("none", "refused_bad_request", 2.0),
    ] {
        let command = if app == "none" { "other" } else { "*" };
        assert_eq!(
            counted(&text, app, command, outcome),
            n,
            "{outcome}\n{text}"
        );
    }
}

#[tokio::test]
async fn both_spellings_of_the_sdkappid_and_the_previous_token_are_taken() {
    let service = Recorder::ok().await;
    let keys = format!(
        "callback_token_file = {:?}\ncallback_token_previous_file = {:?}\n",
        token_file("current", TOKEN),
        token_file("previous", "previous-token-0123456789"),
    );
    let routes = route(&["*"], &service.url(), "");
    let gw = gateway(config("", "http://127.0.0.1:1", &keys, &routes)).await;
    let (addr, caller) = (gw.callbacks.unwrap(), Caller::default());
    let now = unix_now();
    let signed = query(APP, "State.StateChange", TOKEN, now);
    let trtc = signed.replace("SdkAppid=", "SdkAppId=");
    assert_ne!(signed, trtc);
    for query in [&signed, &trtc] {
        assert_eq!(post(&caller, addr, query, "{}").await.code(), 0, "{query}");
    }
    let previous = query(APP, "State.StateChange", "previous-token-0123456789", now);
    assert_eq!(post(&caller, addr, &previous, "{}").await.code(), 0);
    let unrelated = query(APP, "State.StateChange", "unrelated-token-0123456789", now);
    let refused = post(&caller, addr, &unrelated, "{}").await;
    assert_eq!(
        (refused.status, refused.code()),
        (StatusCode::UNAUTHORIZED, 60005)
    );
    assert_eq!(service.seen().len(), 3);
}

#[tokio::test]
async fn commands_are_routed_by_glob_and_the_first_matching_route_wins() {
    let (moderation, archive) = (Recorder::ok().await, Recorder::ok().await);
    let routes = format!(
        "{}{}",
        route(&[BEFORE_C2C, "Group.*"], &moderation.url(), ""),
        route(
            &["*.CallbackAfter*", "Group.CallbackBeforeSendMsg"],
            &archive.url(),
            ""
        )
    );
    let gw = gateway(signed_config("globs", &routes)).await;
    let (addr, caller) = (gw.callbacks.unwrap(), Caller::default());
    let now = unix_now();
    for command in [
        BEFORE_C2C,
        "Group.CallbackBeforeSendMsg",
        AFTER_C2C,
        "Live.CallbackAfterCreateRoom",
        "State.StateChange",
    ] {
        let answer = post(&caller, addr, &query(APP, command, TOKEN, now), "{}").await;
        assert_eq!(answer.code(), 0, "{command}");
    }
    let commands = |recorder: &Recorder| -> Vec<String> {
        recorder
            .seen()
            .iter()
            .map(|s| s.param("CallbackCommand").unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        commands(&moderation),
        [BEFORE_C2C, "Group.CallbackBeforeSendMsg"]
    );
    assert_eq!(
        commands(&archive),
        [AFTER_C2C, "Live.CallbackAfterCreateRoom"]
    );
    // No route names State.StateChange: answered "go on", counted, sent nowhere.
    let text = metrics(&caller, gw.admin.unwrap()).await;
    assert_eq!(
        counted(&text, "1400000001", "other", "unrouted"),
        1.0,
        "{text}"
    );
    assert_eq!(counted(&text, "1400000001", "Group.*", "forwarded"), 1.0);
    assert_eq!(
        counted(&text, "1400000001", "*.CallbackAfter*", "forwarded"),
        2.0
    );
    assert_eq!(
        counted(
            &text,
            "1400000001",
            "Group.CallbackBeforeSendMsg",
            "forwarded"
        ),
        0.0
    );
}

#[tokio::test]
async fn a_service_that_never_answers_gets_tencent_the_default_within_the_timeout() {
    let silent = RawUpstream::start(None).await;
    let routes = route(
        &[BEFORE_C2C],
        &silent.url(),
        "timeout_ms = 300\non_timeout = \"deny\"\n",
    );
    let gw = gateway(signed_config("silent", &routes)).await;
    let (addr, caller) = (gw.callbacks.unwrap(), Caller::default());
    let started = Instant::now();
    let answer = post(
        &caller,
        addr,
        &query(APP, BEFORE_C2C, TOKEN, unix_now()),
        &c2c_body("hi"),
    )
    .await;
    let took = started.elapsed();
    assert_eq!(
        (answer.status, &answer.body[..]),
        (StatusCode::OK, DENY.as_bytes())
    );
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_millis(300 + 700),
        "answered after {took:?}: the timeout is 300 ms"
    );
    assert_eq!(silent.requests(), 1, "the service did get the callback");
    let text = metrics(&caller, gw.admin.unwrap()).await;
    assert_eq!(
        counted(&text, "1400000001", BEFORE_C2C, "default_timeout"),
        1.0
    );
}

#[tokio::test]
async fn a_service_that_is_down_or_failing_gets_tencent_the_default_at_once() {
    let (_held, down) = refusing_port();
    let failing = Recorder::answering(Duration::ZERO, |_| {
        (
            StatusCode::BAD_GATEWAY,
            Bytes::from_static(b"upstream down"),
        )
    })
    .await;
    let routes = format!(
        "{}{}",
        route(
            &[BEFORE_C2C],
            &format!("http://{down}"),
            "on_timeout = \"deny\"\n"
        ),
        route(&[AFTER_C2C], &failing.url(), "")
    );
    let gw = gateway(signed_config("down", &routes)).await;
    let (addr, caller) = (gw.callbacks.unwrap(), Caller::default());
    let started = Instant::now();
    let denied = post(
        &caller,
        addr,
        &query(APP, BEFORE_C2C, TOKEN, unix_now()),
        "{}",
    )
    .await;
    assert_eq!(&denied.body[..], DENY.as_bytes());
    let allowed = post(
        &caller,
        addr,
        &query(APP, AFTER_C2C, TOKEN, unix_now()),
        "{}",
    )
    .await;
    assert_eq!(
        (allowed.status, &allowed.body[..]),
        (StatusCode::OK, ALLOW.as_bytes())
    );
    assert!(
        started.elapsed() < Duration::from_millis(1000),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(failing.seen().len(), 1);
    let text = metrics(&caller, gw.admin.unwrap()).await;
    assert_eq!(
        counted(&text, "1400000001", BEFORE_C2C, "default_unreachable"),
        1.0
    );
    assert_eq!(
        counted(&text, "1400000001", AFTER_C2C, "default_error"),
        1.0
    );
}

#[tokio::test]
async fn a_service_that_switches_protocols_gets_tencent_the_default() {
    let switching = RawUpstream::start(Some(Bytes::from_static(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n",
    )))
    .await;
    let routes = route(&[BEFORE_C2C], &switching.url(), "on_timeout = \"deny\"\n");
    let gw = gateway(signed_config("switching", &routes)).await;
    let (addr, caller) = (gw.callbacks.unwrap(), Caller::default());
    let answer = post(
        &caller,
        addr,
        &query(APP, BEFORE_C2C, TOKEN, unix_now()),
        &c2c_body("hi"),
    )
    .await;
    assert_eq!(
        (answer.status, &answer.body[..]),
        (StatusCode::OK, DENY.as_bytes())
    );
    assert_eq!(switching.requests(), 1);
    let text = metrics(&caller, gw.admin.unwrap()).await;
    assert_eq!(
        counted(&text, "1400000001", BEFORE_C2C, "default_error"),
        1.0
    );
}

#[tokio::test]
async fn a_services_answer_is_paid_for_from_the_listeners_body_budget() {
    // 3,000 answer bytes: within max_body_bytes, but with the callback's own 2,000 bytes
    // still held, past the 4,096 bytes the listener may hold at once.
    let mut answer = b"HTTP/1.1 200 OK\r\nContent-Length: 3000\r\n\r\n".to_vec();
    answer.extend_from_slice(&[b' '; 3000]);
    let service = RawUpstream::start(Some(Bytes::from(answer))).await;
    let routes = route(&[BEFORE_C2C], &service.url(), "on_timeout = \"deny\"\n");
    let keys = format!("callback_token_file = {:?}\n", token_file("budget", TOKEN));
    let server = "max_body_bytes = 4096\nmax_body_bytes_in_flight = 4096\n";
    let gw = gateway(config(server, "http://127.0.0.1:1", &keys, &routes)).await;
    let (addr, caller) = (gw.callbacks.unwrap(), Caller::default());
    let query = query(APP, BEFORE_C2C, TOKEN, unix_now());
    let over = post(&caller, addr, &query, &" ".repeat(2000)).await;
    assert_eq!(
        (over.status, &over.body[..]),
        (StatusCode::OK, DENY.as_bytes())
    );
    // With a small callback, the same answer fits and is passed on.
    let within = post(&caller, addr, &query, "{}").await;
    assert_eq!((within.status, within.body.len()), (StatusCode::OK, 3000));
    assert_eq!(service.requests(), 2);
    let text = metrics(&caller, gw.admin.unwrap()).await;
    assert_eq!(
        counted(&text, "1400000001", BEFORE_C2C, "default_error"),
        1.0
    );
    assert_eq!(counted(&text, "1400000001", BEFORE_C2C, "forwarded"), 1.0);
}

#[tokio::test]
async fn the_listener_keeps_the_proxy_ports_bounds() {
    let service = Recorder::ok().await;
    let routes = route(&["*"], &service.url(), "");
    let keys = format!("callback_token_file = {:?}\n", token_file("bounds", TOKEN));
    let server = "max_body_bytes = 1024\nbody_read_timeout_ms = 300\nmax_header_bytes = 8192\n";
    let gw = gateway(config(server, "http://127.0.0.1:1", &keys, &routes)).await;
    let (addr, caller) = (gw.callbacks.unwrap(), Caller::default());
    let signed = query(APP, AFTER_C2C, TOKEN, unix_now());
    // A body over max_body_bytes.
    let large = post(&caller, addr, &signed, &"x".repeat(2048)).await;
    assert_eq!(
        (large.status, large.code()),
        (StatusCode::PAYLOAD_TOO_LARGE, 60002)
    );
    // A head over max_header_bytes.
    let long = format!("{signed}&Pad={}", "p".repeat(9000));
    let head = Caller::unpooled()
        .send_with("POST", addr, &format!("/?{long}"), &[], "{}")
        .await;
    let too_large = [
        StatusCode::URI_TOO_LONG,
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
    ];
    assert!(too_large.contains(&head.status), "{:?}", head.status);
    assert_eq!(head.code(), 60002);
    // A body that never finishes.
    let slow = slow_body(addr, &signed).await;
    assert!(slow.starts_with("HTTP/1.1 408"), "{slow}");
    assert!(
        service.seen().is_empty(),
        "a refused callback reached the service"
    );
    let text = metrics(&caller, gw.admin.unwrap()).await;
    assert_eq!(
        counted(&text, "1400000001", "*", "refused_body"),
        2.0,
        "{text}"
    );
    assert_eq!(
        counted(&text, "none", "other", "refused_bad_request"),
        1.0,
        "{text}"
    );
}

/// Sends a head promising 100 body bytes and only 10 of them, and returns what comes back.
async fn slow_body(addr: SocketAddr, query: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head =
        format!("POST /?{query} HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n0123456789");
    socket.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), socket.read_to_end(&mut answer));
    let _ = read.await.expect("answered within 5 s");
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn a_listener_past_its_connection_cap_answers_503() {
    let routes = route(&["*"], "http://127.0.0.1:1", "");
    let keys = format!("callback_token_file = {:?}\n", token_file("cap", TOKEN));
    let gw = gateway(config(
        "max_connections = 1\n",
        "http://127.0.0.1:1",
        &keys,
        &routes,
    ))
    .await;
    let addr = gw.callbacks.unwrap();
    // One connection holds the only place (its head never finishes).
    let mut held = tokio::net::TcpStream::connect(addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut held, b"POST / HTTP/1.1\r\n")
        .await
        .unwrap();
    support::eventually(|| async {
        let answer = Caller::unpooled()
            .send(
                "POST",
                addr,
                &format!("/?{}", query(APP, AFTER_C2C, TOKEN, unix_now())),
                "{}",
            )
            .await;
        answer.status == StatusCode::SERVICE_UNAVAILABLE
    })
    .await;
    let text = metrics(&Caller::default(), gw.admin.unwrap()).await;
    assert!(
        counted(&text, "none", "other", "refused_overloaded") >= 1.0,
        "{text}"
    );
}

/// The emulator's loop: a caller's `sendmsg` through the gateway, the emulator's signed
/// before-send callback to the listener, the service's answer, and the caller's answer.
#[tokio::test]
async fn the_emulators_callbacks_go_through_the_listener_to_the_service_and_back() {
    let service = Recorder::with(|seen| {
        let refused = String::from_utf8_lossy(&seen.body).contains("forbidden");
        json!({"ActionStatus": "OK", "ErrorInfo": "", "ErrorCode": u8::from(refused)})
    })
    .await;
    let routes = route(&["C2C.*", "Group.*"], &service.url(), "");
    let keys = format!("callback_token_file = {:?}\n", token_file("loop", TOKEN));
    let gw = gateway(config("", "emulator", &keys, &routes)).await;
    let caller = Caller::default();
    let send = |text: &str, random: u32| {
        json!({"From_Account": "a", "To_Account": "b", "MsgRandom": random,
               "MsgBody": [{"MsgType": "TIMTextElem", "MsgContent": {"Text": text}}]})
        .to_string()
    };
    // Tencent refuses a message between accounts never imported (90008, 90012).
    let imported = caller
        .post(
            gw.addr,
            "/v4/im_open_login_svc/multiaccount_import",
            r#"{"Accounts":["a","b"]}"#,
        )
        .await;
    assert_eq!(imported.code(), 0, "{:?}", imported.json());
    let sent = caller
        .post(gw.addr, "/v4/openim/sendmsg", send("hello", 1))
        .await;
    assert_eq!(sent.code(), 0, "{:?}", sent.json());
    // The before-send callback was answered before the caller's answer; the after-send one
    // follows the stored message.
    service.arrived(2).await;
    let refused = caller
        .post(gw.addr, "/v4/openim/sendmsg", send("a forbidden word", 2))
        .await;
    assert_eq!(refused.code(), 20006, "{:?}", refused.json());
    // Tencent refuses a message to an account or group that does not exist before any
    // callback: none is posted for these.
    let unknown = caller
        .post(
            gw.addr,
            "/v4/openim/sendmsg",
            send("hello", 3).replace("\"b\"", "\"ghost\""),
        )
        .await;
    assert_eq!(unknown.code(), 90012, "{:?}", unknown.json());
    let group = |id: &str| {
        json!({"GroupId": id, "Random": 5, "MsgBody": [{"MsgType": "TIMTextElem", "MsgContent": {"Text": "forbidden"}}]}).to_string()
    };
    let path = "/v4/group_open_http_svc/send_group_msg";
    let missing = caller.post(gw.addr, path, group("@TGS#1")).await;
    assert_eq!(missing.code(), 10010, "{:?}", missing.json());
    let created = caller
        .post(
            gw.addr,
            "/v4/group_open_http_svc/create_group",
            r#"{"Type":"Public","Name":"n","GroupId":"g"}"#,
        )
        .await;
    assert_eq!(created.code(), 0, "{:?}", created.json());
    within(service.arrived(4)).await;
    let refused = caller.post(gw.addr, path, group("g")).await;
    assert_eq!(refused.code(), 10016, "{:?}", refused.json());
    let stats = caller.post(gw.addr, "/v4/_emulator/stats", "{}").await;
    assert_eq!(
        stats.json()["Response"]["Messages"],
        1,
        "only the allowed message was stored"
    );
    let seen = service.seen();
    let commands: Vec<&str> = seen
        .iter()
        .map(|s| s.param("CallbackCommand").unwrap())
        .collect();
    assert_eq!(
        commands,
        [
            BEFORE_C2C,
            AFTER_C2C,
            BEFORE_C2C,
            "Group.CallbackAfterCreateGroup",
            "Group.CallbackBeforeSendMsg"
        ]
    );
    for callback in &seen {
        assert_eq!(callback.headers["x-timgate-callback-verified"], "sign");
        let time = callback.param("RequestTime").unwrap();
        assert_eq!(callback.param("Sign").unwrap(), verify::sign(TOKEN, time));
        assert_eq!(callback.param("SdkAppid").unwrap(), "1400000001");
    }
    let first: Value = serde_json::from_slice(&seen[0].body).unwrap();
    assert_eq!(first["MsgBody"][0]["MsgContent"]["Text"], "hello");
    assert_eq!(first["MsgRandom"], 1);
    // The after-send callback names the message as the caller's answer did.
    let after: Value = serde_json::from_slice(&seen[1].body).unwrap();
    assert_eq!(after["MsgKey"], sent.json()["MsgKey"], "{after}");
    assert_eq!(after["MsgTime"], sent.json()["MsgTime"]);
}

/// Waits for `arrival`, at most 10 s.
async fn within(arrival: impl std::future::Future<Output = ()>) {
    tokio::time::timeout(Duration::from_secs(10), arrival)
        .await
        .expect("the callback arrived within 10 s");
}

/// A group's lifecycle through the gateway and the emulator: each call that creates,
/// fills, empties or dissolves a group posts its after-event callback with the fields the
/// pages give; a call that changes nobody, or that Tencent refuses, posts none; a group
/// message's after-send callback carries the `MsgSeq` the group gave it.
#[tokio::test]
async fn the_emulator_posts_a_groups_lifecycle_callbacks() {
    let service = Recorder::with(|_| serde_json::from_str(ALLOW).unwrap()).await;
    let routes = route(&["Group.*"], &service.url(), "");
    let keys = format!("callback_token_file = {:?}\n", token_file("life", TOKEN));
    let gw = gateway(config("", "emulator", &keys, &routes)).await;
    let caller = Caller::default();
    let addr = gw.addr;
    let call = |api: &str, body: Value| {
        let caller = &caller;
        let path = format!("/v4/group_open_http_svc/{api}");
        async move { caller.post(addr, &path, body.to_string()).await.code() }
    };
    let imported = caller
        .post(
            gw.addr,
            "/v4/im_open_login_svc/multiaccount_import",
            r#"{"Accounts":["a","b","c"]}"#,
        )
        .await;
    assert_eq!(imported.code(), 0);
    let members =
        |names: &[&str]| -> Value { names.iter().map(|n| json!({"Member_Account": n})).collect() };
    let create = json!({"Type": "Public", "Name": "team", "GroupId": "team",
        "Owner_Account": "a", "MemberList": members(&["b"])});
    assert_eq!(call("create_group", create).await, 0);
    within(service.arrived(1)).await;
    let never = json!({"Type": "Public", "Name": "x", "MemberList": members(&["ghost"])});
    assert_eq!(call("create_group", never).await, 10019);
    let add = |names: &[&str]| json!({"GroupId": "team", "MemberList": members(names)});
    assert_eq!(call("add_group_member", add(&["b", "c", "ghost"])).await, 0);
    within(service.arrived(2)).await;
    assert_eq!(
        call("add_group_member", add(&["b"])).await,
        0,
        "adds nobody"
    );
    let text = json!([{"MsgType": "TIMTextElem", "MsgContent": {"Text": "hi"}}]);
    for (random, arrivals) in [(1, 4), (2, 6)] {
        let message = json!({"GroupId": "team", "Random": random, "MsgBody": text});
        assert_eq!(call("send_group_msg", message).await, 0);
        within(service.arrived(arrivals)).await;
    }
    let delete = json!({"GroupId": "team", "MemberToDel_Account": ["c", "a", "nobody"]});
    assert_eq!(call("delete_group_member", delete).await, 0);
    within(service.arrived(7)).await;
    assert_eq!(call("destroy_group", json!({"GroupId": "team"})).await, 0);
    within(service.arrived(8)).await;
    assert_eq!(
        call("destroy_group", json!({"GroupId": "team"})).await,
        10010
    );
    let end = json!({"Type": "Public", "Name": "end", "GroupId": "end"});
    assert_eq!(call("create_group", end).await, 0);
    within(service.arrived(9)).await;
    let seen = service.seen();
    let bodies: Vec<Value> = seen
        .iter()
        .map(|s| serde_json::from_slice(&s.body).unwrap())
        .collect();
    let commands: Vec<&str> = bodies
        .iter()
        .map(|b| b["CallbackCommand"].as_str().unwrap())
        .collect();
    let (before, after) = ("Group.CallbackBeforeSendMsg", "Group.CallbackAfterSendMsg");
    assert_eq!(
        commands,
        [
            "Group.CallbackAfterCreateGroup",
            "Group.CallbackAfterNewMemberJoin",
            before,
            after,
            before,
            after,
            "Group.CallbackAfterMemberExit",
            "Group.CallbackAfterGroupDestroyed",
            "Group.CallbackAfterCreateGroup",
        ],
        "{bodies:?}"
    );
    for (body, callback) in bodies.iter().zip(&seen) {
        assert_eq!(
            callback.param("CallbackCommand"),
            body["CallbackCommand"].as_str()
        );
        assert!(body["EventTime"].as_u64().is_some(), "{body}");
    }
    let created = &bodies[0];
    assert_eq!(
        (
            &created["GroupId"],
            &created["Owner_Account"],
            &created["Type"],
            &created["Name"]
        ),
        (
            &json!("team"),
            &json!("a"),
            &json!("Public"),
            &json!("team")
        )
    );
    assert_eq!(created["Operator_Account"], "administrator");
    assert_eq!(created["MemberList"], members(&["b"]));
    let joined = &bodies[1];
    assert_eq!(
        joined["NewMemberList"],
        members(&["c"]),
        "b was in, ghost never imported"
    );
    assert_eq!(
        (&joined["JoinType"], &joined["Type"]),
        (&json!("Invited"), &json!("Public"))
    );
    let seqs: Vec<&Value> = [&bodies[3], &bodies[5]]
        .iter()
        .map(|b| &b["MsgSeq"])
        .collect();
    assert_eq!(seqs, [&json!(1), &json!(2)], "the group's own MsgSeq");
    let exited = &bodies[6];
    assert_eq!(
        exited["ExitMemberList"],
        members(&["c"]),
        "never the owner, only members"
    );
    assert_eq!(exited["ExitType"], "Kicked");
    let destroyed = &bodies[7];
    assert_eq!(destroyed["MemberList"], members(&["a", "b"]));
    assert_eq!(
        (&destroyed["Owner_Account"], &destroyed["Name"]),
        (&json!("a"), &json!("team"))
    );
}

/// `timgate callback-sign` prints Tencent's known answer (TENCENT.md §7).
#[tokio::test]
async fn callback_sign_prints_the_query_tencent_would_send() {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_timgate"))
        .args(["callback-sign", "--sdkappid", "1400000001"])
        .args(["--command", BEFORE_C2C, "--time", "1669872112"])
        .env("TIMGATE_CALLBACK_TOKEN", "xxxxyyyy")
        .output()
        .await
        .unwrap();
    assert!(out.status.success());
    let printed = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        printed.trim_end(),
        "SdkAppid=1400000001&CallbackCommand=C2C.CallbackBeforeSendMsg&contenttype=json\
         &ClientIP=127.0.0.1&OptPlatform=RESTAPI\
         &Sign=17773bc39a671d7b9aa835458704d2a6db81360a5940292b587d6d760d484061\
         &RequestTime=1669872112"
    );
}

/// A `timgate` process whose app has `TOKEN` in a file, a route of every command to
/// `service`, and a callback listener on a port that was free; JSON logs collected.
async fn process(name: &str, service: &str) -> (Process, support::Logs, SocketAddr, String) {
    let file = token_file(name, TOKEN);
    let port = support::free_port();
    let text = format!(
        "drain_timeout_ms = 5000\n[callbacks]\nlisten = \"127.0.0.1:{port}\"\n{}\
         callback_token_file = {file:?}\n{}",
        support::one_app(APP, "http://127.0.0.1:1"),
        route(&["*"], service, "")
    );
    let (process, logs) = Process::logged(&text).await;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    support::eventually(|| async move { tokio::net::TcpStream::connect(addr).await.is_ok() }).await;
    (process, logs, addr, file)
}

/// The "callback" log lines' fields so far.
fn callback_lines(logs: &support::Logs) -> Vec<Value> {
    logs.lines()
        .iter()
        .filter(|l| l["fields"]["message"] == "callback")
        .map(|l| l["fields"].clone())
        .collect()
}

#[tokio::test]
async fn every_callback_leaves_one_log_line_without_its_sign_or_token() {
    let service = Recorder::ok().await;
    let (_process, logs, addr, _) = process("logs", &service.url()).await;
    let caller = Caller::default();
    let good = query(APP, AFTER_C2C, TOKEN, unix_now());
    let forged = query(APP, AFTER_C2C, "forged-token-0123456789", unix_now());
    let unknown = query(1400000009, AFTER_C2C, TOKEN, unix_now());
    for query in [&good, &forged, &unknown] {
        post(&caller, addr, query, "{}").await;
    }
    support::eventually(|| {
        let n = callback_lines(&logs).len();
        async move { n >= 3 }
    })
    .await;
    let lines = callback_lines(&logs);
    let outcomes: Vec<&str> = lines
        .iter()
        .map(|l| l["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(
        outcomes,
        ["forwarded", "refused_sign", "refused_unknown_app"]
    );
    assert_eq!(lines[0]["command"], AFTER_C2C);
    assert_eq!(lines[0]["route"], "*");
    let everything = serde_json::to_string(&logs.lines()).unwrap();
    for secret in [TOKEN, &verify::sign(TOKEN, &unix_now().to_string())] {
        assert!(!everything.contains(secret), "{secret} was logged");
    }
    assert!(
        !everything.contains("Sign="),
        "a callback's query was logged"
    );
}

#[tokio::test]
async fn a_callback_in_flight_at_sigterm_is_answered_before_the_process_exits() {
    let service = Recorder::slow(Duration::from_millis(500), |_| support::ok_envelope()).await;
    let (mut process, logs, addr, _) = process("drain", &service.url()).await;
    let caller = Caller::default();
    let signed = query(APP, AFTER_C2C, TOKEN, unix_now());
    let pending = tokio::spawn(async move { post(&caller, addr, &signed, "{}").await });
    service.arrived(1).await;
    process.terminate();
    let answer = pending.await.unwrap();
    assert_eq!((answer.status, answer.code()), (StatusCode::OK, 0));
    assert_eq!(process.child.wait().await.unwrap().code(), Some(0));
    let lines = callback_lines(&logs);
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["outcome"], "forwarded");
}

#[tokio::test]
async fn a_rotated_token_file_and_changed_routes_follow_a_reload() {
    let (first, second) = (Recorder::ok().await, Recorder::ok().await);
    let (process, _logs, addr, file) = process("reload", &first.url()).await;
    let caller = Caller::default();
    let accepted = post(
        &caller,
        addr,
        &query(APP, AFTER_C2C, TOKEN, unix_now()),
        "{}",
    )
    .await;
    assert_eq!(accepted.code(), 0);
    // The console's token changes, the old one kept as previous; the route moves.
    let rotated = "rotated-token-0123456789";
    std::fs::write(&file, rotated).unwrap();
    let previous = token_file("reload-previous", TOKEN);
    let text = std::fs::read_to_string(process.config_path()).unwrap();
    let text = text.replace(&first.url(), &second.url()).replace(
        "callback_token_file",
        &format!("callback_token_previous_file = {previous:?}\ncallback_token_file"),
    );
    std::fs::write(process.config_path(), text).unwrap();
    let admin = process.admin;
    support::eventually(|| {
        let caller = caller.clone();
        async move {
            support::scrape(
                &caller,
                admin,
                "timgate_config_reloads_total{result=\"ok\"}",
            )
            .await
                >= 1.0
        }
    })
    .await;
    for token in [rotated, TOKEN] {
        let answer = post(
            &caller,
            addr,
            &query(APP, AFTER_C2C, token, unix_now()),
            "{}",
        )
        .await;
        assert_eq!(answer.code(), 0, "{token}");
    }
    let stranger = query(APP, AFTER_C2C, "stranger-token-0123456789", unix_now());
    assert_eq!(
        post(&caller, addr, &stranger, "{}").await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!((first.seen().len(), second.seen().len()), (1, 2));
}

/// The committed demo configuration shows the loop with `cargo run`: a message with
/// "forbidden" in it is refused by the emulator's stand-in service, through the listener.
#[tokio::test]
async fn the_committed_demo_refuses_a_forbidden_message_through_its_callbacks() {
    let (gateway, _) = support::start_on_free_port(|emulator_port| {
        let forward = format!("http://127.0.0.1:{emulator_port}/_emulator/moderate");
        let mut run = tokio::process::Command::new(env!("CARGO_BIN_EXE_timgate"));
        run.arg("--config")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/config/timgate.toml"))
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env("TIMGATE__LOG__FORMAT", "json")
            .env("TIMGATE__SERVER__LISTEN", "127.0.0.1:0")
            .env("TIMGATE__SERVER__ADMIN_LISTEN", "127.0.0.1:0")
            .env("TIMGATE__CALLBACKS__LISTEN", "127.0.0.1:0")
            .env(
                "TIMGATE__EMULATOR__LISTEN",
                format!("127.0.0.1:{emulator_port}"),
            )
            .env("TIMGATE__APPS__0__CALLBACKS__0__FORWARD", forward);
        run
    })
    .await;
    assert!(gateway.callbacks.is_some());
    let caller = Caller::default();
    let send = |text: &str| {
        json!({"From_Account": "a", "To_Account": "b", "MsgRandom": 7,
               "MsgBody": [{"MsgType": "TIMTextElem", "MsgContent": {"Text": text}}]})
        .to_string()
    };
    // Tencent refuses a message between accounts never imported (90008, 90012).
    let imported = caller
        .post(
            gateway.addr,
            "/v4/im_open_login_svc/multiaccount_import",
            r#"{"Accounts":["a","b"]}"#,
        )
        .await;
    assert_eq!(imported.code(), 0, "{:?}", imported.json());
    let sent = caller
        .post(gateway.addr, "/v4/openim/sendmsg", send("hello"))
        .await;
    assert_eq!(sent.code(), 0, "{:?}", sent.json());
    let refused = caller
        .post(gateway.addr, "/v4/openim/sendmsg", send("forbidden"))
        .await;
    assert_eq!(refused.code(), 20006, "{:?}", refused.json());
    let text = metrics(&caller, gateway.admin.unwrap()).await;
    assert_eq!(
        counted(&text, "1400000001", BEFORE_C2C, "forwarded"),
        2.0,
        "{text}"
    );
    assert_eq!(gateway.stop().await, Some(0));
}

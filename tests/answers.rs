//! Every request gets one answer, one log line and one outcome metric, whatever the caller
//! sends and whatever Tencent does: paths no API could have, callers that hang up, a drain,
//! JSON that is not JSON, and upstream answers that are not plain final answers.
// Tests may unwrap: a panic is how a test fails.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use bytes::Bytes;
use hyper::StatusCode;
use support::{
    Caller, Process, RawUpstream, Recorder, eventually, gateway, ok_envelope, one_app, sample,
    scrape,
};
use timgate::config::Config;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

const APP: u64 = 1400000001;
const INFO: &str = "/v4/live_engine_http_srv/get_room_info";
const ROOM: &str = r#"{"RoomId":"r"}"#;
/// An API without request rules.
const PLAIN: &str = "/v4/profile/portrait_get";

fn config(text: &str) -> Config {
    Config::from_toml(text).unwrap()
}

/// A path `/v4/<service>/<command>` whose name is `len` bytes.
fn api_path(len: usize) -> String {
    let service = len / 2;
    format!(
        "/v4/{}/{}",
        "s".repeat(service),
        "c".repeat(len - service - 1)
    )
}

#[tokio::test]
async fn the_longest_allowed_api_name_is_forwarded_and_one_byte_more_is_404() {
    let upstream = Recorder::ok().await;
    let gw = gateway(config(&one_app(APP, &upstream.url()))).await;
    let caller = Caller::default();

    let longest = caller.post(gw.addr, &api_path(128), "{}").await;
    assert_eq!((longest.status, longest.code()), (StatusCode::OK, 0));
    assert_eq!(upstream.seen()[0].path, api_path(128));

    let over = caller.post(gw.addr, &api_path(129), "{}").await;
    assert_eq!((over.status, over.code()), (StatusCode::NOT_FOUND, 60002));
    // Before anything else: even the method is not looked at.
    let get = caller.get(gw.addr, &api_path(129)).await;
    assert_eq!(get.status, StatusCode::NOT_FOUND);
    assert_eq!(upstream.seen().len(), 1);
}

#[tokio::test]
async fn a_65400_byte_path_is_404_logged_and_spends_no_turn() {
    let upstream = Recorder::ok().await;
    // One turn a second and no waiting: a turn spent on the long path would make the next
    // request a 429. The head bound is raised so the path reaches the request path (at the
    // default 16 KiB it is a 431, tests/edge.rs): the API-name bound holds on its own.
    let apps = format!(
        "max_header_bytes = 131072\n{}rate_limit = 1\nmax_queue_wait_ms = 0\n",
        one_app(APP, &upstream.url())
    );
    let (gateway, logs) = Process::logged(&apps).await;
    let caller = Caller::default();

    let long = caller
        .post(gateway.addr, &api_path(65_400 - "/v4/".len()), ROOM)
        .await;
    assert_eq!((long.status, long.code()), (StatusCode::NOT_FOUND, 60002));
    assert_eq!(long.json()["ActionStatus"], "FAIL");

    let next = caller.post(gateway.addr, INFO, ROOM).await;
    assert_eq!(
        (next.status, next.code()),
        (StatusCode::OK, 0),
        "the process lives, its turn unspent"
    );
    assert_eq!(upstream.seen().len(), 1);

    let lines = logs.requests_reach(2).await;
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(lines[0]["status"], 404);
    assert_eq!(lines[1]["status"], 200);
}

/// The metrics text of the admin listener at `admin`.
async fn metrics(caller: &Caller, admin: std::net::SocketAddr) -> String {
    String::from_utf8(caller.get(admin, "/metrics").await.body.to_vec()).unwrap()
}

#[tokio::test]
async fn a_caller_that_hangs_up_after_its_request_reached_tencent_is_logged_and_counted() {
    let upstream = Recorder::slow(Duration::from_secs(2), |_| ok_envelope()).await;
    let (gateway, logs) = Process::logged(&one_app(APP, &upstream.url())).await;
    let mut socket = tokio::net::TcpStream::connect(gateway.addr).await.unwrap();
    let request = format!(
        "POST {INFO} HTTP/1.1\r\nhost: t\r\ncontent-length: {}\r\n\r\n{ROOM}",
        ROOM.len()
    );
    socket.write_all(request.as_bytes()).await.unwrap();
    upstream.arrived(1).await;
    drop(socket);

    let lines = logs.requests_reach(1).await;
    assert_eq!(lines.len(), 1, "{lines:?}");
    let line = &lines[0];
    assert_eq!(line["outcome"], "caller_gone");
    assert_eq!(line["reached_tencent"], true);
    assert_eq!(line["app"], APP);
    assert_eq!(line["api"], "live_engine_http_srv/get_room_info");
    assert_eq!(line["attempts"], 1);
    assert!(line.get("status").is_none(), "no answer was given: {line}");
    let text = metrics(&Caller::default(), gateway.admin).await;
    let labels = [
        "app=\"1400000001\"",
        "api=\"live_engine_http_srv/get_room_info\"",
        "outcome=\"caller_gone\"",
    ];
    assert_eq!(
        sample(&text, "timgate_requests_total", &labels),
        1.0,
        "{text}"
    );
    assert_eq!(sample(&text, "timgate_inflight_requests", &[]), 0.0);
}

#[tokio::test]
async fn a_drain_answers_every_queued_caller_in_time_and_logs_each() {
    let upstream = Recorder::ok().await;
    // 1 request a second, 20 queued, 8 s to drain: turns after the last one that can finish
    // (8 s - 0.5 s grace - 3.5 s for an attempt) are answered 503 instead of cut off.
    let config = format!(
        "drain_timeout_ms = 8000\nconnect_timeout_ms = 499\nupstream_timeout_ms = 3001\n{}\
         rate_limit = 1\nmax_queue_wait_ms = 60000\ndeadline_ms = 60000\n",
        one_app(APP, &upstream.url())
    );
    let (mut gateway, logs) = Process::logged(&config).await;
    let (addr, admin) = (gateway.addr, gateway.admin);
    let caller = Caller::default();
    let requests: Vec<_> = (0..20)
        .map(|_| {
            let caller = caller.clone();
            tokio::spawn(async move { caller.post(addr, INFO, ROOM).await })
        })
        .collect();
    // Every request accepted: answered already (the first turn is free) or in flight.
    eventually(|| {
        let (caller, served) = (caller.clone(), upstream.seen().len());
        async move {
            let inflight = scrape(&caller, admin, "timgate_inflight_requests").await;
            inflight as usize + served >= 20
        }
    })
    .await;
    let signalled = Instant::now();
    gateway.terminate();

    let (mut served, mut refused) = (0, 0);
    for request in requests {
        let answer = request.await.unwrap();
        match (answer.status, answer.code()) {
            (StatusCode::OK, 0) => served += 1,
            (StatusCode::SERVICE_UNAVAILABLE, 60008) => {
                assert_eq!(answer.headers["retry-after"], "1");
                assert_eq!(answer.headers["x-timgate-attempts"], "0");
                refused += 1;
            }
            other => panic!("{other:?}: {:?}", answer.json()),
        }
    }
    assert!(
        signalled.elapsed() < Duration::from_secs(8),
        "all answered within the drain"
    );
    assert!(
        served >= 2 && refused >= 10,
        "{served} served, {refused} refused"
    );
    assert_eq!(served, upstream.seen().len());
    assert_eq!(gateway.child.wait().await.unwrap().code(), Some(0));
    let lines = logs.requests_reach(20).await;
    assert_eq!(lines.len(), 20);
    assert_eq!(
        lines.iter().filter(|l| l["outcome"] == "draining").count(),
        refused
    );
    assert_eq!(
        lines.iter().filter(|l| l["outcome"] == "ok").count(),
        served
    );
}

#[tokio::test]
async fn junk_api_names_first_do_not_push_a_real_api_out_of_its_series() {
    let upstream = Recorder::ok().await;
    let gw = gateway(config(&one_app(APP, &upstream.url()))).await;
    let caller = Caller::default();
    for i in 0..256 {
        let junk = caller.get(gw.addr, &format!("/v4/junk/name{i}")).await;
        assert_eq!(junk.status, StatusCode::METHOD_NOT_ALLOWED);
    }
    assert_eq!(caller.post(gw.addr, INFO, ROOM).await.code(), 0);
    let text = metrics(&caller, gw.admin.unwrap()).await;
    let real = [
        "api=\"live_engine_http_srv/get_room_info\"",
        "outcome=\"ok\"",
    ];
    assert_eq!(
        sample(&text, "timgate_requests_total", &real),
        1.0,
        "{text}"
    );
    let junk = ["api=\"other\"", "outcome=\"method_not_allowed\""];
    assert_eq!(sample(&text, "timgate_requests_total", &junk), 256.0);
    assert!(!text.contains("junk/"));
}

#[tokio::test]
async fn distinct_60_kb_api_names_keep_metrics_small_and_memory_flat() {
    let upstream = Recorder::ok().await;
    let gateway = Process::start(
        // Heads this long are a 431 at the default bound; raised, they reach the API check.
        &format!(
            "max_header_bytes = 131072\n{}",
            one_app(APP, &upstream.url())
        ),
        &[],
        std::process::Stdio::null(),
    )
    .await;
    let caller = Caller::default();
    assert_eq!(caller.post(gateway.addr, INFO, ROOM).await.code(), 0);
    let idle = gateway.rss_mib();
    for i in 0..256 {
        let path = format!("/v4/{i:05}{}/c", "s".repeat(60_000));
        let answer = caller.post(gateway.addr, &path, ROOM).await;
        assert_eq!(answer.status, StatusCode::NOT_FOUND);
    }
    let after = gateway.rss_mib();
    let text = metrics(&caller, gateway.admin).await;
    assert!(text.len() < 64 * 1024, "/metrics is {} bytes", text.len());
    assert!(after < 64.0, "{after:.1} MiB");
    assert!(
        after - idle < 8.0,
        "{idle:.1} MiB idle, {after:.1} MiB after"
    );
    assert_eq!(upstream.seen().len(), 1);
}

#[tokio::test]
async fn an_unchecked_api_refuses_what_is_not_json_like_a_checked_one() {
    let upstream = Recorder::ok().await;
    let mut cfg = config(&one_app(APP, &upstream.url()));
    cfg.server.max_body_bytes = 1024 * 1024;
    cfg.server.max_body_bytes_in_flight = 8 * 1024 * 1024;
    let gw = gateway(cfg).await;
    let caller = Caller::default();
    let mut bad_utf8 = br#"{"To_Account":[""#.to_vec();
    bad_utf8.extend_from_slice(&[0xff, 0xfe]);
    bad_utf8.extend_from_slice(br#""]}"#);
    let surrogate = br#"{"To_Account":["\ud800"]}"#.to_vec();
    let deep = format!("{}{}", "[".repeat(500_000), "]".repeat(500_000)).into_bytes();
    for body in [bad_utf8, surrogate, deep] {
        let answer = caller.post(gw.addr, PLAIN, body).await;
        assert_eq!((answer.status, answer.code()), (StatusCode::OK, 60003));
    }
    assert!(upstream.seen().is_empty(), "nothing reached Tencent");
    let fine = caller
        .post(gw.addr, PLAIN, r#"{"To_Account":["\ud83d\ude00"]}"#)
        .await;
    assert_eq!(fine.code(), 0);
}

/// A head for `status` with `headers`, then `body` as is.
fn raw(status: &str, headers: &str, body: &[u8]) -> Bytes {
    let mut answer = format!("HTTP/1.1 {status}\r\n{headers}\r\n").into_bytes();
    answer.extend_from_slice(body);
    answer.into()
}

#[tokio::test]
async fn gateway_made_502_and_504_say_how_many_attempts_they_took() {
    let switching = RawUpstream::start(Some(raw(
        "101 Switching Protocols",
        "connection: upgrade\r\nupgrade: websocket\r\n",
        b"",
    )))
    .await;
    let silent = RawUpstream::start(None).await;
    let text = format!(
        "{}{}",
        support::app_entry(1, "admin", &switching.url()),
        support::app_entry(2, "admin", &silent.url())
    );
    let mut cfg = config(&text);
    cfg.server.upstream_timeout = Duration::from_millis(300);
    let gw = gateway(cfg).await;
    let caller = Caller::default();

    let upgraded = caller
        .post(gw.addr, &format!("{PLAIN}?sdkappid=1"), "{}")
        .await;
    assert_eq!(
        (upgraded.status, upgraded.code()),
        (StatusCode::BAD_GATEWAY, 60008)
    );
    assert_eq!(upgraded.headers["x-timgate-attempts"], "1");
    assert_eq!(
        switching.requests(),
        1,
        "a 101 is not retried: the request reached Tencent"
    );

    let slow = caller
        .post(gw.addr, &format!("{PLAIN}?sdkappid=2"), "{}")
        .await;
    assert_eq!(
        (slow.status, slow.code()),
        (StatusCode::GATEWAY_TIMEOUT, 60008)
    );
    assert_eq!(slow.headers["x-timgate-attempts"], "1");
}

#[tokio::test]
async fn an_encoded_answer_passes_with_its_content_encoding_and_bytes() {
    // Not real gzip: the point is that the bytes and the header arrive as Tencent sent them.
    let body = b"\x1f\x8b\x08\x00 compressed bytes";
    let upstream = RawUpstream::start(Some(raw(
        "200 OK",
        &format!(
            "content-type: application/json\r\ncontent-encoding: gzip\r\ncontent-length: {}\r\n",
            body.len()
        ),
        body,
    )))
    .await;
    let gw = gateway(config(&one_app(APP, &upstream.url()))).await;
    let answer = Caller::default().post(gw.addr, PLAIN, "{}").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.headers["content-encoding"], "gzip");
    assert_eq!(&answer.body[..], &body[..]);
    assert_eq!(upstream.requests(), 1);
}

#[tokio::test]
async fn a_4_mb_answer_in_1_byte_chunks_costs_its_bytes_not_its_frames() {
    let size = 4 * 1024 * 1024;
    let mut chunked = Vec::with_capacity(size * 6 + 5);
    for _ in 0..size {
        chunked.extend_from_slice(b"1\r\nx\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let upstream = RawUpstream::start(Some(raw(
        "200 OK",
        "content-type: application/json\r\ntransfer-encoding: chunked\r\n",
        &chunked,
    )))
    .await;
    drop(chunked);
    // Reading four million frames takes a few seconds on a loaded machine: this test is
    // about memory, so the attempt may take its time.
    let config = format!(
        "upstream_timeout_ms = 60000\n{}",
        one_app(APP, &upstream.url())
    );
    let gateway = Process::start(&config, &[], std::process::Stdio::null()).await;
    let idle = gateway.rss_mib();
    let started = Instant::now();
    let caller = Caller::default();
    let addr = gateway.addr;
    let call = tokio::spawn(async move { caller.post(addr, PLAIN, "{}").await });
    let mut peak = idle;
    while !call.is_finished() {
        peak = peak.max(gateway.rss_mib());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let answer = call.await.unwrap();
    eprintln!(
        "4 MB in 1-byte chunks: {:?}, peak {peak:.1} MiB",
        started.elapsed()
    );
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.body.len(), size);
    let after = gateway.rss_mib();
    assert!(peak < 64.0, "peak {peak:.1} MiB (idle {idle:.1})");
    assert!(
        after - idle < 16.0,
        "{idle:.1} MiB idle, {after:.1} MiB after"
    );
}

#[tokio::test]
async fn a_request_still_at_tencent_near_the_drain_deadline_is_answered_not_cut_off() {
    let silent = RawUpstream::start(None).await;
    let mut cfg = config(&one_app(APP, &silent.url()));
    cfg.server.drain_timeout = Duration::from_secs(2);
    cfg.server.upstream_timeout = Duration::from_secs(10);
    let mut gw = gateway(cfg).await;
    let addr = gw.addr;
    let call = tokio::spawn(async move { Caller::default().post(addr, PLAIN, "{}").await });
    eventually(|| async { silent.requests() == 1 }).await;
    let stopped = Instant::now();
    gw.begin_stop();

    let answer = call.await.unwrap();
    assert!(
        stopped.elapsed() < Duration::from_secs(2),
        "answered within the drain"
    );
    // Its connection closed after the answer, yet the request was cut: the verdict says so.
    assert!(!gw.stop().await, "the drain cut a request");
    assert_eq!(
        (answer.status, answer.code()),
        (StatusCode::SERVICE_UNAVAILABLE, 60008)
    );
    assert_eq!(answer.headers["retry-after"], "1");
    assert_eq!(answer.headers["x-timgate-attempts"], "1");
    assert!(
        answer.json()["ErrorInfo"]
            .as_str()
            .unwrap()
            .contains("drain")
    );
}

#[tokio::test]
async fn a_caller_that_hangs_up_while_waiting_is_logged_as_never_reaching_tencent() {
    let upstream = Recorder::ok().await;
    let config = format!(
        "{}rate_limit = 1\nmax_queue_wait_ms = 30000\n",
        one_app(APP, &upstream.url())
    );
    let (gateway, logs) = Process::logged(&config).await;
    let (addr, admin) = (gateway.addr, gateway.admin);
    let caller = Caller::default();
    // Five ahead in line at 1/s: the sixth's turn is seconds away.
    let _ahead: Vec<_> = (0..5)
        .map(|_| {
            let caller = caller.clone();
            tokio::spawn(async move { caller.post(addr, INFO, ROOM).await })
        })
        .collect();
    eventually(|| {
        let caller = caller.clone();
        async move { scrape(&caller, admin, "timgate_throttle_queue_depth").await >= 4.0 }
    })
    .await;
    let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "POST {INFO} HTTP/1.1\r\nhost: t\r\ncontent-length: {}\r\n\r\n{ROOM}",
        ROOM.len()
    );
    socket.write_all(request.as_bytes()).await.unwrap();
    eventually(|| {
        let caller = caller.clone();
        async move { scrape(&caller, admin, "timgate_throttle_queue_depth").await >= 5.0 }
    })
    .await;
    drop(socket);

    eventually(|| {
        let logs = logs.clone();
        async move {
            logs.requests()
                .iter()
                .any(|l| l["outcome"] == "caller_gone")
        }
    })
    .await;
    let lines = logs.requests();
    let gone = lines
        .iter()
        .find(|l| l["outcome"] == "caller_gone")
        .unwrap();
    assert_eq!(gone["reached_tencent"], false, "{gone}");
    assert_eq!(gone["attempts"], 0);
}

/// Writes `request` on a new connection and reads until the gateway closes it.
async fn exchange(addr: std::net::SocketAddr, request: &[u8]) -> String {
    use tokio::io::AsyncReadExt;
    let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
    socket.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    let reading = socket.read_to_end(&mut answer);
    tokio::time::timeout(Duration::from_secs(5), reading)
        .await
        .expect("closed within 5 s")
        .unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn requests_the_edge_answers_itself_are_logged_and_counted_once_each() {
    let upstream = Recorder::ok().await;
    let (gateway, logs) = Process::logged(&one_app(APP, &upstream.url())).await;
    let addr = gateway.addr;
    let post = |head: &str| format!("POST {PLAIN} {head}\r\ncontent-length: 2\r\n\r\n{{}}");
    // Each is answered by the edge, before the request path: (status, its start).
    let cases = [
        (400, post("HTTP/1.1")),                       // no Host
        (400, post("HTTP/1.1\r\nhost: a\r\nhost: b")), // two Hosts
        (
            431,
            post(&format!(
                "HTTP/1.1\r\nhost: t\r\nx-big: {}",
                "a".repeat(20_000)
            )),
        ),
        (400, "NOT HTTP AT ALL\r\n\r\n".to_owned()), // hyper cannot parse it
        (505, "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_owned()),
    ];
    for (status, request) in &cases {
        let answer = exchange(addr, request.as_bytes()).await;
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status} ")),
            "{status}: {answer}"
        );
    }
    assert!(upstream.seen().is_empty());

    let lines = logs.requests_reach(cases.len()).await;
    // Lines written once a connection is closed may come in another order.
    let mut statuses: Vec<_> = lines
        .iter()
        .map(|l| l["status"].as_u64().unwrap())
        .collect();
    statuses.sort_unstable();
    assert_eq!(statuses, [400, 400, 400, 431, 505], "{lines:?}");
    for line in &lines {
        assert_eq!(line["attempts"], 0, "{line}");
        assert!(line["error"].is_string(), "{line}");
    }
    let outcome = |name: &str| lines.iter().filter(|l| l["outcome"] == name).count();
    assert_eq!(
        (outcome("bad_request"), outcome("header_too_large")),
        (4, 1)
    );
    let text = metrics(&Caller::default(), gateway.admin).await;
    let counted = |name: &str| {
        let labels = [
            "app=\"none\"",
            "api=\"none\"",
            &format!("outcome=\"{name}\""),
        ];
        sample(&text, "timgate_requests_total", &labels)
    };
    assert_eq!(counted("bad_request"), 4.0, "{text}");
    assert_eq!(counted("header_too_large"), 1.0, "{text}");
    // Exactly one line each: nothing else was logged as a request.
    assert_eq!(logs.requests().len(), cases.len());
}

#[tokio::test]
async fn a_drain_answers_at_once_the_waiting_requests_whose_turn_would_come_too_late() {
    support::late_turns_refused_at_once_on_drain("").await;
}

#[tokio::test]
async fn a_drain_whose_only_open_connection_is_a_caller_not_reading_cut_no_request() {
    // An answer far larger than the kernel's buffers, to a caller that reads none of it: the
    // request is answered (and logged), but its connection is still writing at the deadline.
    let big = "x".repeat(7 * 1024 * 1024);
    let upstream = Recorder::with(
        move |_| serde_json::json!({"ActionStatus":"OK","ErrorCode":0,"ErrorInfo":"","Pad":big}),
    )
    .await;
    let mut cfg = config(&one_app(APP, &upstream.url()));
    cfg.server.drain_timeout = Duration::from_secs(1);
    let gw = gateway(cfg).await;
    let admin = gw.admin.unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stalled = socket.connect(gw.addr).await.unwrap();
    let request = format!("POST {PLAIN} HTTP/1.1\r\nhost: t\r\ncontent-length: 2\r\n\r\n{{}}");
    stalled.write_all(request.as_bytes()).await.unwrap();
    let caller = Caller::default();
    eventually(|| {
        let caller = caller.clone();
        async move {
            let text = metrics(&caller, admin).await;
            let ok = ["outcome=\"ok\""];
            sample(&text, "timgate_requests_total", &ok) >= 1.0
        }
    })
    .await;

    assert!(
        gw.stop().await,
        "no request was cut: the open connection is not a cut request"
    );
    drop(stalled);
}

//! Running it as a sidecar: health, readiness, metrics, drains, signals, `timgate check`.
// Tests may unwrap: a panic is how a test fails.
#![allow(clippy::unwrap_used)]

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use hyper::StatusCode;
use support::{
    Caller, Process, Recorder, eventually, gateway, ok_envelope, one_app, sample, scrape,
};
use timgate::config::Config;

const INFO: &str = "/v4/live_engine_http_srv/get_room_info";
const ROOM: &str = r#"{"RoomId":"r"}"#;

/// Waits until the gateway's `metric` (without labels) reaches `at_least`.
async fn metric_reaches(
    caller: &Caller,
    admin: std::net::SocketAddr,
    metric: &'static str,
    at_least: f64,
) {
    eventually(|| {
        let caller = caller.clone();
        async move { scrape(&caller, admin, metric).await >= at_least }
    })
    .await;
}

/// Waits until `/readyz` says the gateway is draining.
async fn unready(caller: &Caller, admin: std::net::SocketAddr) {
    eventually(|| {
        let caller = caller.clone();
        async move { caller.get(admin, "/readyz").await.status == StatusCode::SERVICE_UNAVAILABLE }
    })
    .await;
}

#[tokio::test]
async fn metrics_move_as_requests_flow() {
    let upstream = Recorder::ok().await;
    let text = format!(
        "{}rate_limit = 1\nmax_queue_wait_ms = 0\n",
        one_app(1400000001, &upstream.url())
    );
    let gw = gateway(Config::from_toml(&text).unwrap()).await;
    let admin = gw.admin.unwrap();
    let caller = Caller::default();
    let before = caller.get(admin, "/metrics").await;
    assert_eq!(before.status, StatusCode::OK);
    assert!(
        before.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    let before = String::from_utf8(before.body.to_vec()).unwrap();

    caller.post(gw.addr, INFO, ROOM).await;
    caller.post(gw.addr, INFO, ROOM).await; // throttled: 1/s, no waiting allowed
    caller.post(gw.addr, INFO, "{}").await; // rejected by the rules

    let after = String::from_utf8(caller.get(admin, "/metrics").await.body.to_vec()).unwrap();
    let app = "app=\"1400000001\"";
    let api = "api=\"live_engine_http_srv/get_room_info\"";
    let moved = |metric: &str, labels: &[&str]| {
        sample(&after, metric, labels) - sample(&before, metric, labels)
    };
    assert_eq!(
        moved("timgate_requests_total", &[app, api, "outcome=\"ok\""]),
        1.0,
        "{after}"
    );
    assert_eq!(
        moved(
            "timgate_requests_total",
            &[app, api, "outcome=\"throttled\""]
        ),
        1.0
    );
    assert_eq!(
        moved(
            "timgate_requests_total",
            &[app, api, "outcome=\"rejected\""]
        ),
        1.0
    );
    assert_eq!(moved("timgate_upstream_attempts_total", &[app]), 1.0);
    assert_eq!(moved("timgate_upstream_latency_seconds_count", &[app]), 1.0);
    assert_eq!(
        moved("timgate_throttle_rejections_total", &[app, "scope=\"app\""]),
        1.0
    );
    assert_eq!(moved("timgate_usersig_signs_total", &[app]), 1.0);
    assert_eq!(sample(&after, "timgate_inflight_requests", &[]), 0.0);
}

#[tokio::test]
async fn a_drain_answers_in_flight_and_queued_requests_and_fails_readiness() {
    let upstream = Recorder::slow(Duration::from_millis(300), |_| ok_envelope()).await;
    let text = format!(
        "{}rate_limit = 4\nmax_queue_wait_ms = 5000\n",
        one_app(1400000001, &upstream.url())
    );
    let mut gw = gateway(Config::from_toml(&text).unwrap()).await;
    let (addr, admin) = (gw.addr, gw.admin.unwrap());
    let caller = Caller::default();
    assert_eq!(caller.get(admin, "/readyz").await.status, StatusCode::OK);
    assert_eq!(caller.get(admin, "/healthz").await.status, StatusCode::OK);

    let requests: Vec<_> = (0..6)
        .map(|_| {
            let caller = caller.clone();
            tokio::spawn(async move { caller.post(addr, INFO, ROOM).await })
        })
        .collect();
    // One at the upstream, the rest waiting their turn at 4/s.
    upstream.arrived(1).await;
    metric_reaches(&caller, admin, "timgate_throttle_queue_depth", 3.0).await;

    gw.begin_stop();
    unready(&caller, admin).await;
    for request in requests {
        let answer = request.await.unwrap();
        assert_eq!((answer.status, answer.code()), (StatusCode::OK, 0));
    }
    assert!(gw.stop().await, "drained within the deadline");
    assert_eq!(upstream.seen().len(), 6);
}

#[tokio::test]
async fn sigterm_answers_every_accepted_request_then_exits_0() {
    let upstream = Recorder::slow(Duration::from_millis(300), |_| ok_envelope()).await;
    let apps = format!(
        "{}rate_limit = 4\nmax_queue_wait_ms = 5000\n",
        one_app(1400000001, &upstream.url())
    );
    let mut gateway = Process::start(&apps, &[], Stdio::null()).await;
    let (addr, admin) = (gateway.addr, gateway.admin);
    let caller = Caller::default();
    let requests: Vec<_> = (0..5)
        .map(|_| {
            let caller = caller.clone();
            tokio::spawn(async move { caller.post(addr, INFO, ROOM).await })
        })
        .collect();
    upstream.arrived(1).await;
    // Every request accepted before the signal: one at Tencent, four waiting their turn.
    metric_reaches(&caller, admin, "timgate_inflight_requests", 5.0).await;
    gateway.terminate();
    unready(&caller, admin).await;
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no new connections while draining"
    );
    for request in requests {
        let answer = request.await.unwrap();
        assert_eq!((answer.status, answer.code()), (StatusCode::OK, 0));
    }
    let status = gateway.child.wait().await.unwrap();
    assert_eq!(status.code(), Some(0));
    assert_eq!(upstream.seen().len(), 5);
}

#[test]
fn check_prints_the_config_with_the_key_masked() {
    let path = std::env::temp_dir().join(format!("timgate-check-{}.toml", std::process::id()));
    std::fs::write(
        &path,
        one_app(1400000001, "emulator").replace("test-key-0123456789", "s3cr3t-value"),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_timgate"))
        .arg("check")
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    std::fs::write(&path, "[[apps]]\nsdkappid = 1\n").unwrap();
    let bad = Command::new(env!("CARGO_BIN_EXE_timgate"))
        .arg("check")
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    std::fs::remove_file(&path).unwrap();

    let printed = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success());
    assert!(
        printed.contains("1400000001") && printed.contains("***"),
        "{printed}"
    );
    assert!(!printed.contains("s3cr3t-value"));
    assert_eq!(bad.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("apps[0].identifier"));
}

#[tokio::test]
async fn json_logs_are_one_object_per_line_with_the_request_fields() {
    let upstream = Recorder::ok().await;
    let apps = one_app(1400000001, &upstream.url());
    let mut gateway = Process::start(&apps, &["--log-format", "json"], Stdio::piped()).await;
    assert_eq!(
        Caller::default()
            .post(gateway.addr, INFO, ROOM)
            .await
            .code(),
        0
    );
    gateway.terminate();
    let mut logs = Vec::new();
    let mut stderr = gateway.child.stderr.take().unwrap();
    tokio::io::AsyncReadExt::read_to_end(&mut stderr, &mut logs)
        .await
        .unwrap();
    let status = gateway.child.wait().await.unwrap();
    assert_eq!(status.code(), Some(0));

    let lines: Vec<serde_json::Value> = String::from_utf8(logs)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let request = lines
        .iter()
        .find(|l| l["fields"]["message"] == "request")
        .expect("a request line");
    assert_eq!(request["fields"]["app"], 1400000001);
    assert_eq!(
        request["fields"]["api"],
        "live_engine_http_srv/get_room_info"
    );
    assert_eq!(request["fields"]["status"], 200);
    assert_eq!(request["fields"]["error_code"], 0);
    assert_eq!(request["fields"]["request_id"], "Id-test");
    assert_eq!(request["fields"]["attempts"], 1);
}

//! Every request gets one answer, one log line and one outcome metric, whatever the caller
//! sends and whatever Tencent does: paths no API could have, callers that hang up, a drain,
//! JSON that is not JSON, and upstream answers that are not plain final answers.
// Tests may unwrap: a panic is how a test fails.
#![allow(clippy::unwrap_used)]

mod support;

use hyper::StatusCode;
use support::{Caller, Process, Recorder, gateway, one_app};
use timgate::config::Config;

const APP: u64 = 1400000001;
const INFO: &str = "/v4/live_engine_http_srv/get_room_info";
const ROOM: &str = r#"{"RoomId":"r"}"#;

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
    // request a 429.
    let apps = format!(
        "{}rate_limit = 1\nmax_queue_wait_ms = 0\n",
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

//! The emulator refuses what Tencent refuses, with Tencent's codes, over real HTTP.
// Tests may unwrap: a panic is how a test fails.
#![allow(clippy::unwrap_used)]

mod support;

use support::{Caller, KEY, emulator, one_app};
use timgate::config::{Config, SecretKey};
use timgate::usersig::{self, Claims};

const APP: u64 = 1400000001;

fn token(key: &str, sdkappid: u64, identifier: &str, time: u64, expire: u64) -> String {
    let claims = Claims {
        sdkappid,
        identifier: identifier.into(),
        time,
        expire,
        userbuf: None,
    };
    usersig::sign(&SecretKey::new(key), &claims)
        .as_str()
        .to_owned()
}

fn query(sdkappid: u64, identifier: &str, sig: &str) -> String {
    format!(
        "sdkappid={sdkappid}&identifier={identifier}&usersig={sig}&random=12345&contenttype=json"
    )
}

#[tokio::test]
async fn refuses_each_url_fault_with_tencents_code() {
    let config = Config::from_toml(&one_app(APP, "http://127.0.0.1:1")).unwrap();
    let emu = emulator(&config).await;
    let caller = Caller::default();
    let now = usersig::unix_now();
    let good = token(KEY, APP, "administrator", now, 600);
    let path = "/v4/openim/query_online_status";
    let cases: Vec<(String, i64)> = vec![
        (query(APP, "administrator", &good), 0),
        (
            format!("sdkappid={APP}&identifier=administrator&usersig={good}&contenttype=json"),
            60002,
        ),
        (
            query(APP, "administrator", &good).replace("random=12345", "random=4294967296"),
            60002,
        ),
        (
            query(APP, "administrator", &good).replace("contenttype=json", "contenttype=xml"),
            60002,
        ),
        (query(999, "administrator", &good), 60006),
        (query(APP, "administrator", "garbage"), 70003),
        (
            query(
                APP,
                "administrator",
                &token("wrong-key", APP, "administrator", now, 600),
            ),
            70009,
        ),
        (
            query(
                APP,
                "administrator",
                &token(KEY, APP, "administrator", now - 700, 600),
            ),
            70001,
        ),
        (
            query(APP, "administrator", &token(KEY, APP, "someone", now, 600)),
            70013,
        ),
        (
            query(
                APP,
                "administrator",
                &token(KEY, APP + 1, "administrator", now, 600),
            ),
            70014,
        ),
        (
            query(APP, "someone", &token(KEY, APP, "someone", now, 600)),
            60010,
        ),
    ];
    for (q, code) in cases {
        let answer = caller.post(emu.addr, &format!("{path}?{q}"), "{}").await;
        assert_eq!(answer.status, hyper::StatusCode::OK);
        assert_eq!(answer.code(), code, "{q}: {}", answer.json());
        assert_eq!(
            answer.json()["ActionStatus"],
            if code == 0 { "OK" } else { "FAIL" }
        );
    }
}

#[tokio::test]
async fn refuses_bad_bodies_and_methods() {
    let config = Config::from_toml(&one_app(APP, "http://127.0.0.1:1")).unwrap();
    let emu = emulator(&config).await;
    let caller = Caller::default();
    let q = query(
        APP,
        "administrator",
        &token(KEY, APP, "administrator", usersig::unix_now(), 600),
    );
    let path = format!("/v4/live_engine_http_srv/set_room_metadata?{q}");
    assert_eq!(caller.post(emu.addr, &path, "").await.code(), 60003);
    assert_eq!(caller.post(emu.addr, &path, "[1]").await.code(), 100002);
    assert_eq!(caller.send("GET", emu.addr, &path, "").await.code(), 60002);
    let big = format!(
        r#"{{"RoomId":"r","Metadata":[{{"Key":"k","Value":"{}"}}]}}"#,
        "x".repeat(2049)
    );
    assert_eq!(caller.post(emu.addr, &path, big).await.code(), 100501);
    assert_eq!(
        caller
            .post(emu.addr, &path, r#"{"RoomId":"r"}"#)
            .await
            .code(),
        100002
    );
}

#[tokio::test]
async fn the_fault_table_is_bounded_in_entries_and_names() {
    use timgate::emulator::{FAULTS_PATH, MAX_FAULTS};
    let config = Config::from_toml(&one_app(APP, "http://127.0.0.1:1")).unwrap();
    let emu = emulator(&config).await;
    let caller = Caller::default();
    let fault = |api: &str| format!(r#"{{"Api":"{api}","ErrorCode":100001,"Times":1}}"#);
    for bad in [
        "x".repeat(129),
        "x".repeat(100_000),
        "a/b/c".into(),
        "nocommand".into(),
    ] {
        let answer = caller.post(emu.addr, FAULTS_PATH, fault(&bad)).await;
        assert_eq!(answer.code(), 60002, "{}", answer.json());
    }
    for i in 0..MAX_FAULTS {
        let answer = caller
            .post(emu.addr, FAULTS_PATH, fault(&format!("svc/cmd{i}")))
            .await;
        assert_eq!(answer.code(), 0, "{}", answer.json());
    }
    // Full: a new API is refused, one already listed may be set again.
    let full = caller
        .post(emu.addr, FAULTS_PATH, fault("svc/another"))
        .await;
    assert_eq!(full.code(), 60002);
    let info = full.json()["ErrorInfo"].as_str().unwrap().to_owned();
    assert!(info.contains(&MAX_FAULTS.to_string()), "{info}");
    assert_eq!(
        caller
            .post(emu.addr, FAULTS_PATH, fault("svc/cmd0"))
            .await
            .code(),
        0
    );
    // A spent fault gives its place up.
    let q = query(
        APP,
        "administrator",
        &token(KEY, APP, "administrator", usersig::unix_now(), 600),
    );
    let spent = caller
        .post(emu.addr, &format!("/v4/svc/cmd0?{q}"), "{}")
        .await;
    assert_eq!(spent.code(), 100001);
    assert_eq!(
        caller
            .post(emu.addr, FAULTS_PATH, fault("svc/another"))
            .await
            .code(),
        0
    );
}

#[tokio::test]
async fn a_repeated_key_is_refused_as_the_gateway_refuses_it() {
    let config = Config::from_toml(&one_app(APP, "http://127.0.0.1:1")).unwrap();
    let emu = emulator(&config).await;
    let caller = Caller::default();
    let q = query(
        APP,
        "administrator",
        &token(KEY, APP, "administrator", usersig::unix_now(), 600),
    );
    let path = format!("/v4/group_open_http_svc/send_group_msg?{q}");
    let answer = caller
        .post(emu.addr, &path, r#"{"GroupId":"a","GroupId":"b"}"#)
        .await;
    assert_eq!(answer.code(), 60003, "{}", answer.json());
    let info = answer.json()["ErrorInfo"].as_str().unwrap().to_owned();
    assert!(info.contains(r#"the key "GroupId" twice"#), "{info}");
}

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
    let path = "/v4/profile/portrait_get";
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

/// A message needs at least one element, in the emulator as in the gateway's rules: an
/// empty `MsgBody` is refused with the rules table's code (90002 one-to-one, 10004 in a
/// group), one element goes out. Straight to the emulator, so no gateway check stands in.
#[tokio::test]
async fn an_empty_msg_body_is_refused_and_one_element_is_sent() {
    use serde_json::json;
    let config = Config::from_toml(&one_app(APP, "http://127.0.0.1:1")).unwrap();
    let emu = emulator(&config).await;
    let caller = Caller::default();
    let q = query(
        APP,
        "administrator",
        &token(KEY, APP, "administrator", usersig::unix_now(), 600),
    );
    let addr = emu.addr;
    let post = |api: &str, body: serde_json::Value| {
        let path = format!("/v4/{api}?{q}");
        let caller = &caller;
        async move { caller.post(addr, &path, body.to_string()).await.json() }
    };
    let created = post(
        "group_open_http_svc/create_group",
        json!({"Type": "Public", "Name": "n", "GroupId": "g"}),
    )
    .await;
    assert_eq!(created["ErrorCode"], 0, "{created}");
    let c2c = |body: serde_json::Value| json!({"To_Account": "administrator", "MsgRandom": 1, "MsgBody": body});
    let group = |body: serde_json::Value| json!({"GroupId": "g", "Random": 1, "MsgBody": body});
    let cases = [
        ("openim/sendmsg", c2c(json!([])), 90002),
        ("openim/sendmsg", c2c(text("one")), 0),
        (
            "group_open_http_svc/send_group_msg",
            group(json!([])),
            10004,
        ),
        ("group_open_http_svc/send_group_msg", group(text("one")), 0),
    ];
    for (api, body, code) in cases {
        let answer = post(api, body.clone()).await;
        assert_eq!(answer["ErrorCode"], code, "{api} {body}: {answer}");
    }
    let info = post("openim/sendmsg", c2c(json!([]))).await["ErrorInfo"].clone();
    assert_eq!(info, "MsgBody must not be empty");
}

/// A gateway in front of the built-in emulator, and a caller.
async fn chat() -> (support::Running, support::Running, Caller) {
    let config = Config::from_toml(&one_app(APP, "http://127.0.0.1:1")).unwrap();
    let emu = emulator(&config).await;
    let text = one_app(APP, &format!("http://{}", emu.addr)) + "max_queue_wait_ms = 3000\n";
    let gw = support::gateway(Config::from_toml(&text).unwrap()).await;
    (emu, gw, Caller::default())
}

async fn call(
    caller: &Caller,
    gw: &support::Running,
    api: &str,
    body: serde_json::Value,
) -> serde_json::Value {
    let answer = caller
        .post(
            gw.addr,
            &format!("/v4/{api}?sdkappid={APP}"),
            body.to_string(),
        )
        .await;
    answer.json()
}

fn text(words: &str) -> serde_json::Value {
    serde_json::json!([{"MsgType": "TIMTextElem", "MsgContent": {"Text": words}}])
}

#[tokio::test]
async fn accounts_messages_and_history_behave_like_tencent() {
    use serde_json::json;
    let (emu, gw, caller) = chat().await;
    let imported = call(
        &caller,
        &gw,
        "im_open_login_svc/multiaccount_import",
        json!({"Accounts": ["alice", "bob", "x".repeat(33)]}),
    )
    .await;
    assert_eq!(imported["ActionStatus"], "OK");
    assert_eq!(imported["FailAccounts"], json!(["x".repeat(33)]));
    let checked = call(
        &caller,
        &gw,
        "im_open_login_svc/account_check",
        json!({"CheckItem": [{"UserID": "alice"}, {"UserID": "carol"}]}),
    )
    .await;
    let statuses: Vec<&str> = checked["ResultItem"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["AccountStatus"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["Imported", "NotImported"]);
    // A message to an account never imported: Tencent's 90012, nothing stored.
    let send = |to: &str, random: u32| {
        json!({"From_Account": "alice", "To_Account": to,
        "MsgSeq": 3, "MsgRandom": random, "MsgBody": text("hi")})
    };
    let unknown = call(&caller, &gw, "openim/sendmsg", send("carol", 1)).await;
    assert_eq!(
        (
            unknown["ActionStatus"].as_str(),
            unknown["ErrorCode"].as_i64()
        ),
        (Some("FAIL"), Some(90012))
    );
    let sent = call(&caller, &gw, "openim/sendmsg", send("bob", 7)).await;
    assert_eq!(sent["ErrorCode"], 0, "{sent}");
    let time = sent["MsgTime"].as_u64().unwrap();
    assert_eq!(sent["MsgKey"], format!("3_7_{time}"));
    // A repeat inside 120 s is answered with the first one's key and not delivered twice.
    let again = call(&caller, &gw, "openim/sendmsg", send("bob", 7)).await;
    assert_eq!(again["MsgKey"], sent["MsgKey"]);
    let roam = json!({"Operator_Account": "bob", "Peer_Account": "alice", "MaxCnt": 10,
        "MinTime": 0, "MaxTime": u32::MAX});
    let history = call(&caller, &gw, "openim/admin_getroammsg", roam.clone()).await;
    assert_eq!(history["MsgCnt"], 1, "{history}");
    assert_eq!(history["MsgList"][0]["MsgBody"], text("hi"));
    // Outside the window it is a new message.
    let clock = caller
        .post(
            emu.addr,
            timgate::emulator::CLOCK_PATH,
            r#"{"AdvanceSeconds":121}"#,
        )
        .await;
    assert_eq!(clock.code(), 0);
    let later = call(&caller, &gw, "openim/sendmsg", send("bob", 7)).await;
    assert_ne!(later["MsgKey"], sent["MsgKey"]);
    let history = call(&caller, &gw, "openim/admin_getroammsg", roam).await;
    assert_eq!(
        (history["MsgCnt"].as_u64(), history["Complete"].as_u64()),
        (Some(2), Some(1))
    );
}

#[tokio::test]
async fn a_batch_with_one_unknown_recipient_delivers_the_others_and_names_it() {
    use serde_json::json;
    let (_emu, gw, caller) = chat().await;
    call(
        &caller,
        &gw,
        "im_open_login_svc/multiaccount_import",
        json!({"Accounts": ["a", "b", "c"]}),
    )
    .await;
    let batch = call(
        &caller,
        &gw,
        "openim/batchsendmsg",
        json!({"From_Account": "a",
        "To_Account": ["b", "ghost", "c"], "MsgRandom": 9, "MsgBody": text("all")}),
    )
    .await;
    assert_eq!(
        (batch["ActionStatus"].as_str(), batch["ErrorCode"].as_i64()),
        (Some("OK"), Some(0)),
        "{batch}"
    );
    assert_eq!(
        batch["ErrorList"],
        json!([{"To_Account": "ghost", "ErrorCode": 70107}])
    );
    assert!(batch["MsgKey"].as_str().unwrap().contains("_9_"));
    for peer in ["b", "c"] {
        let history = call(
            &caller,
            &gw,
            "openim/admin_getroammsg",
            json!({"Operator_Account": peer,
            "Peer_Account": "a", "MaxCnt": 5, "MinTime": 0, "MaxTime": u32::MAX}),
        )
        .await;
        assert_eq!(history["MsgCnt"], 1, "{peer}: {history}");
    }
    // The failed entries are counted by app and API, and the partial answer was not retried.
    let metrics = caller
        .get(gw.admin.unwrap(), "/metrics")
        .await
        .body
        .to_vec();
    let metrics = String::from_utf8(metrics).unwrap();
    let partial = support::sample(
        &metrics,
        "timgate_partial_failures_total",
        &[&format!("app=\"{APP}\""), "api=\"openim/batchsendmsg\""],
    );
    assert_eq!(partial, 1.0, "{metrics}");
    let retries = support::sample(&metrics, "timgate_retries_total", &[]);
    assert_eq!(retries, 0.0);
    let none = call(
        &caller,
        &gw,
        "openim/batchsendmsg",
        json!({"From_Account": "a",
        "To_Account": ["ghost"], "MsgRandom": 9, "MsgBody": text("x")}),
    )
    .await;
    assert_eq!(none["ActionStatus"], "FAIL");
    let online = call(
        &caller,
        &gw,
        "openim/query_online_status",
        json!({"To_Account": ["a", "ghost"]}),
    )
    .await;
    assert_eq!(
        online["QueryResult"],
        json!([{"To_Account": "a", "Status": "Offline"}])
    );
    assert_eq!(online["ErrorList"][0]["To_Account"], "ghost");
}

#[tokio::test]
async fn a_group_is_created_filled_paged_messaged_and_read_back() {
    use serde_json::json;
    let (emu, gw, caller) = chat().await;
    let users: Vec<String> = (0..30).map(|i| format!("u{i}")).collect();
    call(
        &caller,
        &gw,
        "im_open_login_svc/multiaccount_import",
        json!({"Accounts": users}),
    )
    .await;
    let created = call(
        &caller,
        &gw,
        "group_open_http_svc/create_group",
        json!({"Type": "Public", "Name": "room", "MemberList": [{"Member_Account": "u0"}]}),
    )
    .await;
    let id = created["GroupId"].as_str().unwrap().to_owned();
    assert!(id.starts_with("@TGS#"), "{created}");
    let list: Vec<_> = users
        .iter()
        .map(|u| json!({"Member_Account": u}))
        .chain([json!({"Member_Account": "ghost"})])
        .collect();
    let added = call(
        &caller,
        &gw,
        "group_open_http_svc/add_group_member",
        json!({"GroupId": id, "MemberList": list}),
    )
    .await;
    let results: Vec<u64> = added["MemberList"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["Result"].as_u64().unwrap())
        .collect();
    assert_eq!(
        (results[0], results[1], results[30]),
        (2, 1, 0),
        "already, added, never imported"
    );
    // 31 members (the admin owner and u0..u29), paged 10 at a time.
    let mut seen = Vec::new();
    for offset in (0..40).step_by(10) {
        let page = call(
            &caller,
            &gw,
            "group_open_http_svc/get_group_member_info",
            json!({"GroupId": id, "Limit": 10, "Offset": offset}),
        )
        .await;
        assert_eq!(page["MemberNum"], 31);
        seen.extend(
            page["MemberList"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["Member_Account"].as_str().unwrap().to_owned()),
        );
    }
    assert_eq!(seen.len(), 31);
    assert_eq!(seen[0], "administrator");
    let send = |random: u32| json!({"GroupId": id, "From_Account": "u1", "Random": random, "MsgBody": text("g")});
    let seqs: Vec<u64> = [
        call(&caller, &gw, "group_open_http_svc/send_group_msg", send(1)).await,
        call(&caller, &gw, "group_open_http_svc/send_group_msg", send(2)).await,
        call(&caller, &gw, "group_open_http_svc/send_group_msg", send(1)).await,
        call(&caller, &gw, "group_open_http_svc/send_group_msg", send(3)).await,
    ]
    .iter()
    .map(|a| a["MsgSeq"].as_u64().unwrap())
    .collect();
    assert_eq!(
        seqs,
        [1, 2, 1, 3],
        "MsgSeq rises by one; a repeated Random is not sent again"
    );
    let back = call(
        &caller,
        &gw,
        "group_open_http_svc/group_msg_get_simple",
        json!({"GroupId": id, "ReqMsgNumber": 2}),
    )
    .await;
    let got: Vec<u64> = back["RspMsgList"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["MsgSeq"].as_u64().unwrap())
        .collect();
    assert_eq!((got, back["IsFinished"].as_u64()), (vec![3, 2], Some(0)));
    let info = call(
        &caller,
        &gw,
        "group_open_http_svc/get_group_info",
        json!({"GroupIdList": [id, "nope"]}),
    )
    .await;
    assert_eq!(
        (
            info["GroupInfo"][0]["NextMsgSeq"].as_u64(),
            info["GroupInfo"][1]["ErrorCode"].as_u64()
        ),
        (Some(4), Some(10010))
    );
    let gone = call(
        &caller,
        &gw,
        "group_open_http_svc/destroy_group",
        json!({"GroupId": id}),
    )
    .await;
    assert_eq!(gone["ErrorCode"], 0);
    let after = call(&caller, &gw, "group_open_http_svc/send_group_msg", send(4)).await;
    assert_eq!(after["ErrorCode"], 10010);
    drop(emu);
}

#[tokio::test]
async fn group_list_pages_by_a_64_bit_next_and_reset_forgets_everything() {
    use serde_json::json;
    let (emu, gw, caller) = chat().await;
    for i in 0..5 {
        let created = call(
            &caller,
            &gw,
            "group_open_http_svc/create_group",
            json!({"Type": "Public", "Name": format!("g{i}"), "GroupId": format!("g{i}")}),
        )
        .await;
        assert_eq!(created["GroupId"], format!("g{i}"));
    }
    let mut ids = Vec::new();
    let mut next = 0u64;
    let mut pages = 0;
    loop {
        let page = call(
            &caller,
            &gw,
            "group_open_http_svc/get_appid_group_list",
            json!({"Limit": 3, "Next": next}),
        )
        .await;
        assert_eq!(page["TotalCount"], 5, "{page}");
        ids.extend(
            page["GroupIdList"]
                .as_array()
                .unwrap()
                .iter()
                .map(|g| g["GroupId"].as_str().unwrap().to_owned()),
        );
        pages += 1;
        // Carried as the integer Tencent sends: above 2^53, where a double would round it.
        next = page["Next"].as_u64().unwrap();
        if next == 0 {
            break;
        }
        assert!(next > 1 << 53, "{next}");
    }
    assert_eq!(
        (pages, ids),
        (2, (0..5).map(|i| format!("g{i}")).collect::<Vec<_>>())
    );
    let reset = caller
        .post(emu.addr, timgate::emulator::RESET_PATH, "{}")
        .await;
    assert_eq!(reset.code(), 0);
    let page = call(
        &caller,
        &gw,
        "group_open_http_svc/get_appid_group_list",
        json!({}),
    )
    .await;
    assert_eq!(page["TotalCount"], 0);
}

/// A seed file in a folder of its own, removed with it.
struct SeedFile(std::path::PathBuf);

impl SeedFile {
    fn new(name: &str, calls: &serde_json::Value) -> SeedFile {
        let dir = std::env::temp_dir().join(format!("timgate-seed-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("seed.json");
        std::fs::write(&path, calls.to_string()).unwrap();
        SeedFile(path)
    }

    /// `config`'s text with `[emulator] seed` naming this file.
    fn configured(&self, config: &str) -> String {
        format!(
            "{config}[emulator]\nseed = {:?}\n",
            self.0.display().to_string()
        )
    }
}

impl Drop for SeedFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(self.0.parent().unwrap());
    }
}

#[tokio::test]
async fn a_seed_is_there_from_the_start_and_again_after_a_reset() {
    use serde_json::json;
    let seed = SeedFile::new(
        "kept",
        &json!([
            {"SdkAppId": APP, "Api": "im_open_login_svc/multiaccount_import",
             "Body": {"Accounts": ["alice", "bob"]}},
            {"SdkAppId": APP, "Api": "group_open_http_svc/create_group",
             "Body": {"Type": "Public", "Name": "team", "GroupId": "team",
                      "Owner_Account": "alice", "MemberList": [{"Member_Account": "bob"}]}},
            {"SdkAppId": APP, "Api": "openim/sendmsg",
             "Body": {"From_Account": "alice", "To_Account": "bob", "MsgRandom": 1,
                      "MsgBody": text("seeded")}},
        ]),
    );
    let config = Config::from_toml(&seed.configured(&one_app(APP, "http://127.0.0.1:1"))).unwrap();
    let emu = emulator(&config).await;
    // get_appid_group_list takes 1 call a second: the second round waits for its turn.
    let text_config = one_app(APP, &format!("http://{}", emu.addr)) + "max_queue_wait_ms = 3000\n";
    let gw = support::gateway(Config::from_toml(&text_config).unwrap()).await;
    let caller = Caller::default();
    let roam = json!({"Operator_Account": "bob", "Peer_Account": "alice", "MaxCnt": 10,
        "MinTime": 0, "MaxTime": u32::MAX});
    let send = |to: &str| json!({"From_Account": "alice", "To_Account": to, "MsgRandom": 2, "MsgBody": text("hi")});
    for round in ["at the start", "after a reset"] {
        let groups = call(
            &caller,
            &gw,
            "group_open_http_svc/get_appid_group_list",
            json!({}),
        )
        .await;
        assert_eq!(groups["TotalCount"], 1, "{round}: {groups}");
        assert_eq!(groups["GroupIdList"][0]["GroupId"], "team", "{round}");
        let history = call(&caller, &gw, "openim/admin_getroammsg", roam.clone()).await;
        assert_eq!(history["MsgCnt"], 1, "{round}: {history}");
        assert_eq!(history["MsgList"][0]["MsgBody"], text("seeded"), "{round}");
        // What was added after the seed is gone after a reset; the seed is not.
        let to_carol = call(&caller, &gw, "openim/sendmsg", send("carol")).await;
        assert_eq!(to_carol["ErrorCode"], 90012, "{round}: {to_carol}");
        let imported = call(
            &caller,
            &gw,
            "im_open_login_svc/account_import",
            json!({"UserID": "carol"}),
        )
        .await;
        assert_eq!(imported["ErrorCode"], 0, "{round}: {imported}");
        let to_carol = call(&caller, &gw, "openim/sendmsg", send("carol")).await;
        assert_eq!(to_carol["ErrorCode"], 0, "{round}: {to_carol}");
        let reset = caller
            .post(emu.addr, timgate::emulator::RESET_PATH, "{}")
            .await;
        assert_eq!(reset.code(), 0);
    }
}

#[test]
fn a_seed_that_names_an_unknown_app_or_api_is_refused_by_the_configuration() {
    use serde_json::json;
    let config = |name: &str, calls: serde_json::Value| {
        let seed = SeedFile::new(name, &calls);
        Config::from_toml(&seed.configured(&one_app(APP, "http://127.0.0.1:1")))
            .map(drop)
            .map_err(|e| e.to_string())
    };
    let body = json!({"Accounts": ["a"]});
    let good =
        json!([{"SdkAppId": APP, "Api": "im_open_login_svc/multiaccount_import", "Body": body}]);
    assert_eq!(config("good", good), Ok(()));
    let cases = [
        (
            json!([{"SdkAppId": 1, "Api": "im_open_login_svc/multiaccount_import", "Body": body}]),
            "call 0: SdkAppId 1 is not in [[apps]]",
        ),
        (
            json!([{"SdkAppId": APP, "Api": "no-command", "Body": body}]),
            "call 0: Api \"no-command\" is not service/command",
        ),
        (json!({"Calls": []}), "must be a JSON array"),
        (
            json!([{"SdkAppId": APP, "Api": "openim/sendmsg", "Body": []}]),
            "must be a JSON array",
        ),
    ];
    for (i, (calls, expected)) in cases.into_iter().enumerate() {
        let refused = config(&format!("bad{i}"), calls).unwrap_err();
        assert!(
            refused.contains("emulator.seed") && refused.contains(expected),
            "{refused}"
        );
    }
}

#[test]
fn a_seed_the_emulator_refuses_stops_the_start_with_its_answer() {
    use serde_json::json;
    let seed = SeedFile::new(
        "refused",
        &json!([{"SdkAppId": APP, "Api": "openim/sendmsg",
                 "Body": {"From_Account": "alice", "To_Account": "nobody", "MsgRandom": 1,
                          "MsgBody": text("hi")}}]),
    );
    let dir = seed.0.parent().unwrap().to_owned();
    let path = dir.join("timgate.toml");
    std::fs::write(&path, seed.configured(&one_app(APP, "emulator"))).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_timgate"))
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains("emulator.seed")
            && stderr.contains("call 0 (openim/sendmsg)")
            && stderr.contains("ErrorCode 90008"),
        "{stderr}"
    );
}

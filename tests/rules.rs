//! Every documented limit, end to end: at the limit a request reaches Tencent; one past it,
//! the caller gets Tencent's code and Tencent sees nothing. And whatever the gateway's checks
//! accept, the emulator (Tencent's stand-in) accepts too.
// Tests may unwrap: a panic is how a test fails.
#![allow(clippy::unwrap_used)]

mod support;

use proptest::prelude::*;
use proptest::strategy::Strategy;
use serde_json::{Value, json};
use support::{Caller, Recorder, gateway, one_app};
use timgate::api::Api;
use timgate::config::Config;
use timgate::emulator::Emulator;
use timgate::rules::{self, Check, Rule, TABLE};

/// A text message body, as Tencent's message format page shows one.
fn text(words: &str) -> Value {
    json!([{"MsgType": "TIMTextElem", "MsgContent": {"Text": words}}])
}

/// A body each checked API accepts, as small as its rules allow.
fn valid(api: &str) -> Value {
    let command = api.split('/').nth(1).unwrap();
    match command {
        "account_import" => json!({"UserID": "u"}),
        "multiaccount_import" => json!({"Accounts": ["u"]}),
        "account_check" => json!({"CheckItem": [{"UserID": "u"}]}),
        "account_delete" => json!({"DeleteItem": [{"UserID": "u"}]}),
        "query_online_status" => json!({"To_Account": ["u"]}),
        "sendmsg" => json!({"To_Account": "u", "MsgRandom": 1, "MsgBody": text("hi")}),
        "batchsendmsg" => json!({"To_Account": ["u"], "MsgRandom": 1, "MsgBody": text("hi")}),
        "admin_getroammsg" => json!({"Operator_Account": "a", "Peer_Account": "b", "MaxCnt": 10,
            "MinTime": 0, "MaxTime": 1}),
        "create_group" => {
            json!({"Type": "Public", "Name": "n", "MemberList": [{"Member_Account": "u"}]})
        }
        "add_group_member" => json!({"GroupId": "g", "MemberList": [{"Member_Account": "u"}]}),
        "delete_group_member" => json!({"GroupId": "g", "MemberToDel_Account": ["u"]}),
        "get_group_info" => json!({"GroupIdList": ["g"]}),
        "get_appid_group_list" => json!({}),
        "send_group_msg" => json!({"GroupId": "g", "Random": 1, "MsgBody": text("hi")}),
        "group_msg_get_simple" => json!({"GroupId": "g", "ReqMsgNumber": 1}),
        "destroy_group" | "get_group_member_info" => json!({"GroupId": "g"}),
        "set_room_metadata" => json!({"RoomId": "r", "Metadata": [{"Key": "k", "Value": "v"}]}),
        "del_room_metadata" => json!({"RoomId": "r", "Keys": ["k"]}),
        "create_room" | "update_room_info" => json!({"RoomInfo": {"RoomId": "r"}}),
        "get_room_list" => json!({"Next": ""}),
        "ban_member" => json!({"RoomId": "r", "MemberList_Account": ["u"], "Duration": 60}),
        "unban_member" => json!({"RoomId": "r", "MemberList_Account": ["u"]}),
        "mute_member" => json!({"RoomId": "r", "MuteTime": 0}),
        "send_text_msg" => json!({"RoomId": "r", "Sender_Account": "u", "TextContent": "hi"}),
        _ => json!({"RoomId": "r"}),
    }
}

/// The field `path` selects in `body` (the first element where it passes an array).
fn field<'a>(body: &'a mut Value, path: &str) -> &'a mut Value {
    path.split('.')
        .fold(body, |value, segment| match segment.strip_suffix("[]") {
            Some(name) => {
                let list = &mut value[name];
                if !list.is_array() || list.as_array().unwrap().is_empty() {
                    *list = json!([{}]);
                }
                &mut list[0]
            }
            None => &mut value[segment],
        })
}

/// `valid(api)` changed so that `rule`'s measure is exactly `n`.
fn sized(api: &str, rule: &Rule, n: usize) -> Value {
    let mut body = valid(api);
    let (list, item) = rule.field.rsplit_once("[].").unwrap_or(("", rule.field));
    match rule.check {
        Check::MaxBytes(_) => *field(&mut body, rule.field) = json!("b".repeat(n)),
        Check::MaxItems(_) => {
            // Items shaped like the valid body's first one, each with its own strings.
            let first = field(&mut body, rule.field)[0].clone();
            let item = |i: usize| match &first {
                Value::Object(fields) => Value::Object(
                    fields
                        .iter()
                        .map(|(k, v)| {
                            (
                                k.clone(),
                                if v.is_string() {
                                    json!(format!("m{i}"))
                                } else {
                                    v.clone()
                                },
                            )
                        })
                        .collect(),
                ),
                _ => json!(format!("m{i}")),
            };
            *field(&mut body, rule.field) = json!((0..n).map(item).collect::<Vec<_>>());
        }
        Check::MaxJsonBytes(_) => {
            let base = text("").to_string().len();
            *field(&mut body, rule.field) = text(&"t".repeat(n - base));
        }
        Check::MaxValue(_) => *field(&mut body, rule.field) = json!(n),
        Check::MaxDistinct(_) => {
            let entries: Vec<Value> = (0..n)
                .map(|i| json!({item: format!("k{i}"), "Value": "v"}))
                .collect();
            *field(&mut body, list) = json!(entries);
        }
        Check::MaxTotalBytes(_) => {
            // Values at most 2 KB each, as the per-value rule wants, adding up to n.
            let entries: Vec<Value> = (0..n.div_ceil(2048))
                .map(
                    |i| json!({"Key": format!("k{i}"), item: "t".repeat((n - i * 2048).min(2048))}),
                )
                .collect();
            *field(&mut body, list) = json!(entries);
        }
        Check::Required(_)
        | Check::Optional(_)
        | Check::NonEmpty
        | Check::MinValue(_)
        | Check::Elements(_) => unreachable!("not a limit"),
    }
    body
}

fn limit(check: Check) -> Option<usize> {
    match check {
        Check::MaxBytes(n)
        | Check::MaxItems(n)
        | Check::MaxDistinct(n)
        | Check::MaxTotalBytes(n)
        | Check::MaxJsonBytes(n) => Some(n),
        Check::MaxValue(n) => Some(n as usize),
        // Lower bounds and element shapes have tests of their own.
        Check::Required(_)
        | Check::Optional(_)
        | Check::NonEmpty
        | Check::MinValue(_)
        | Check::Elements(_) => None,
    }
}

/// Every documented limit, copied from TENCENT.md §6 (`live_engine_http_srv`) and from the
/// Chat pages (§7: accounts …/269/1608, 4919, 38417, 36443, 2566; one-to-one messages
/// …/269/2282, 1612; groups …/269/1615, 1621, 1622, 1616, 1617, 1614, 1629, 2738), with the
/// ErrorCode Tencent answers one past it (100002 "invalid parameter" unless the page names
/// its own): (command, field, limit, code). The table under test must agree with these
/// literals; the requests below are sized from them, not from the table.
const DOCUMENTED: [(&str, &str, usize, i64); 40] = [
    ("set_room_metadata", "Metadata[].Key", 10, 100500), // ≤ 10 keys
    ("set_room_metadata", "Metadata[].Key", 50, 100504), // key ≤ 50 bytes
    ("set_room_metadata", "Metadata[].Value", 2048, 100501), // value ≤ 2 KB
    ("set_room_metadata", "Metadata[].Value", 16384, 100502), // all values ≤ 16 KB
    ("create_room", "RoomInfo.RoomId", 48, 100002),
    ("create_room", "RoomInfo.RoomName", 100, 100002),
    ("create_room", "RoomInfo.CoverURL", 200, 100002),
    ("create_room", "RoomInfo.Category", 3, 100002),
    ("update_room_info", "RoomInfo.Category", 3, 100002),
    ("update_room_info", "RoomInfo.Notice", 100, 100002),
    ("get_room_list", "Count", 20, 100002),
    ("ban_member", "MemberList_Account", 20, 100002),
    ("ban_member", "Reason", 200, 100002),
    ("unban_member", "MemberList_Account", 20, 100002),
    ("get_banned_member_list", "Limit", 100, 100002),
    ("get_room_stats", "RoomId", 48, 100002),
    ("add_robot", "RoomId", 48, 100002),
    ("account_import", "UserID", 32, 70402),
    ("multiaccount_import", "Accounts", 100, 70402),
    ("account_check", "CheckItem", 100, 70402),
    ("account_delete", "DeleteItem", 100, 70402),
    ("query_online_status", "To_Account", 500, 70402),
    ("sendmsg", "MsgRandom", 4_294_967_295, 90005),
    ("sendmsg", "MsgBody", 12 * 1024, 93000),
    ("sendmsg", "MsgLifeTime", 604_800, 90026),
    ("batchsendmsg", "To_Account", 500, 90011),
    ("batchsendmsg", "MsgRandom", 4_294_967_295, 90005),
    ("batchsendmsg", "MsgBody", 12 * 1024, 93000),
    ("batchsendmsg", "MsgLifeTime", 604_800, 90026),
    ("create_group", "Name", 30, 10004),
    ("create_group", "GroupId", 48, 10004),
    ("create_group", "MemberList", 100, 10005),
    ("add_group_member", "MemberList", 300, 10005),
    ("delete_group_member", "MemberToDel_Account", 100, 10005),
    ("get_group_info", "GroupIdList", 50, 10004),
    ("get_group_member_info", "Limit", 6000, 10004),
    ("get_appid_group_list", "Limit", 10_000, 10004),
    ("send_group_msg", "Random", 4_294_967_295, 90005),
    ("send_group_msg", "MsgBody", 12 * 1024, 80002),
    ("group_msg_get_simple", "ReqMsgNumber", 20, 10004),
];

/// The documented (limit, code) for `rule` of `api`; the table must list the same limit.
fn documented(api: &str, rule: &Rule, table_limit: usize) -> (usize, i64) {
    let command = api.split_once('/').unwrap().1;
    let kind_matches = |n: usize| match rule.check {
        // Two documented limits share Metadata[].Key and two Metadata[].Value: tell them
        // apart by kind (a count of keys vs bytes; bytes of one vs of all).
        Check::MaxDistinct(_) => n == 10,
        Check::MaxBytes(_) if rule.field == "Metadata[].Key" => n == 50,
        Check::MaxBytes(_) if rule.field == "Metadata[].Value" => n == 2048,
        Check::MaxTotalBytes(_) => n == 16384,
        _ => true,
    };
    let (_, _, n, code) = DOCUMENTED
        .iter()
        .find(|(c, f, n, _)| *c == command && *f == rule.field && kind_matches(*n))
        .unwrap_or_else(|| panic!("{api} {}: a limit TENCENT.md does not document", rule.field));
    assert_eq!(
        table_limit, *n,
        "{api} {}: the table says {table_limit}, Tencent {n}",
        rule.field
    );
    assert_eq!(
        i64::from(rule.code),
        *code,
        "{api} {}: the code",
        rule.field
    );
    (*n, *code)
}

#[tokio::test]
async fn every_limit_passes_at_the_limit_and_fails_one_past_it() {
    let upstream = Recorder::ok().await;
    // get_appid_group_list takes 1 call a second: room for its calls to wait their turn.
    let config = one_app(1, &upstream.url()) + "max_queue_wait_ms = 3000\n";
    let gw = gateway(Config::from_toml(&config).unwrap()).await;
    let caller = Caller::default();
    let mut sent = 0;
    let mut limits = 0;
    for (api, rules) in TABLE {
        let path = format!("/v4/{api}");
        let answer = caller.post(gw.addr, &path, valid(api).to_string()).await;
        assert_eq!(answer.code(), 0, "{api}: the valid body: {}", answer.json());
        sent += 1;
        for rule in rules.iter() {
            let Some(table_limit) = limit(rule.check) else {
                continue;
            };
            let (n, code) = documented(api, rule, table_limit);
            limits += 1;
            let at = caller
                .post(gw.addr, &path, sized(api, rule, n).to_string())
                .await;
            assert_eq!(at.code(), 0, "{api} {} at {n}: {}", rule.field, at.json());
            sent += 1;
            let over = caller
                .post(gw.addr, &path, sized(api, rule, n + 1).to_string())
                .await;
            assert_eq!(over.status, hyper::StatusCode::OK);
            assert_eq!(
                over.code(),
                code,
                "{api} {} at {}: {}",
                rule.field,
                n + 1,
                over.json()
            );
            assert!(
                over.json()["ErrorInfo"]
                    .as_str()
                    .unwrap()
                    .contains(&format!("the limit is {n}"))
            );
            assert_eq!(
                upstream.seen().len(),
                sent,
                "{api}: a refused request reached Tencent"
            );
        }
    }
    assert_eq!(
        limits,
        DOCUMENTED.len(),
        "every documented limit is covered"
    );
}

/// The lower bounds (a 32-bit unsigned `MsgRandom`/`Random`, `MsgLifeTime` from 0, counts
/// from 1, a `MsgBody` of at least one element) and the message element types, at their boundary both sides, through the
/// gateway: the refused ones never reach Tencent.
#[tokio::test]
async fn lower_bounds_and_message_elements_hold_before_the_wire() {
    let upstream = Recorder::ok().await;
    let gw = gateway(Config::from_toml(&one_app(1, &upstream.url())).unwrap()).await;
    let caller = Caller::default();
    let send = |field: &str, value: Value| {
        let mut body = valid("openim/sendmsg");
        body[field] = value;
        body.to_string()
    };
    let element = |e: Value| send("MsgBody", json!([e]));
    let cases: Vec<(&str, String, i64)> = vec![
        ("openim/sendmsg", send("MsgRandom", json!(0)), 0),
        ("openim/sendmsg", send("MsgRandom", json!(-1)), 90005),
        ("openim/sendmsg", send("MsgRandom", json!("1")), 90005),
        ("openim/sendmsg", send("MsgLifeTime", json!(0)), 0),
        ("openim/sendmsg", send("MsgLifeTime", json!(-1)), 90026),
        ("openim/sendmsg", send("MsgBody", json!({})), 90007),
        // A message of no element at all: refused; one element is the valid body above.
        ("openim/sendmsg", send("MsgBody", json!([])), 90002),
        ("openim/batchsendmsg", json!({"To_Account": ["u"], "MsgRandom": 1, "MsgBody": []}).to_string(), 90002),
        ("group_open_http_svc/send_group_msg", json!({"GroupId": "g", "Random": 1, "MsgBody": []}).to_string(), 10004),
        ("openim/sendmsg", element(json!({"MsgType": "TIMFaceElem", "MsgContent": {"Index": 1}})), 0),
        ("openim/sendmsg", element(json!({"MsgType": "TIMFaceElem", "MsgContent": {"Data": "x"}})), 90002),
        ("openim/sendmsg", element(json!({"MsgType": "TIMLocationElem", "MsgContent": {"Latitude": 1.5, "Longitude": 2}})), 0),
        ("openim/sendmsg", element(json!({"MsgType": "TIMLocationElem", "MsgContent": {"Latitude": "1"}})), 90002),
        ("openim/sendmsg", element(json!({"MsgType": "TIMTextElem", "MsgContent": {"Text": 5}})), 90002),
        ("openim/sendmsg", element(json!({"MsgType": "TIMNoSuchElem", "MsgContent": {}})), 90002),
        ("openim/sendmsg", element(json!({"MsgType": "TIMCustomElem"})), 90002),
        ("group_open_http_svc/send_group_msg", json!({"GroupId": "g", "Random": 0, "MsgBody": text("a")}).to_string(), 0),
        ("group_open_http_svc/send_group_msg", json!({"GroupId": "g", "Random": -1, "MsgBody": text("a")}).to_string(), 90005),
        ("group_open_http_svc/group_msg_get_simple", json!({"GroupId": "g", "ReqMsgNumber": 0}).to_string(), 10004),
        ("openim/admin_getroammsg", json!({"Operator_Account": "a", "Peer_Account": "b", "MaxCnt": 0, "MinTime": 0, "MaxTime": 1}).to_string(), 90010),
    ];
    let mut passed = 0;
    for (api, body, code) in &cases {
        let answer = caller
            .post(gw.addr, &format!("/v4/{api}"), body.clone())
            .await;
        assert_eq!(answer.code(), *code, "{api} {body}: {}", answer.json());
        passed += usize::from(*code == 0);
        assert_eq!(upstream.seen().len(), passed, "{api} {body}");
    }
    let info = caller
        .post(
            gw.addr,
            "/v4/openim/sendmsg",
            element(json!({"MsgType": "TIMNoSuchElem", "MsgContent": {}})),
        )
        .await
        .json()["ErrorInfo"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        info.starts_with("MsgBody[0] has MsgType TIMNoSuchElem, which is not one of TIMTextElem"),
        "{info}"
    );
}

#[tokio::test]
async fn malformed_bodies_never_reach_tencent() {
    let upstream = Recorder::ok().await;
    let mut config = Config::from_toml(&one_app(1, &upstream.url())).unwrap();
    config.server.max_body_bytes = 8 << 20;
    let gw = gateway(config).await;
    let caller = Caller::default();
    let set = "/v4/live_engine_http_srv/set_room_metadata";
    let deep = format!(
        "{{\"RoomId\":\"r\",\"Metadata\":{}{}}}",
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    let mut invalid_utf8 = br#"{"RoomId":"r","Metadata":[{"Key":"k","Value":""#.to_vec();
    invalid_utf8.extend_from_slice(&[0xff, 0xfe]);
    invalid_utf8.extend_from_slice(br#""}]}"#);
    let cases: Vec<(Vec<u8>, i64)> = vec![
        (deep.into_bytes(), 60003),
        (invalid_utf8, 60003),
        (
            br#"{"RoomId":"r","Metadata":[{"Key":"k","Value":"v"}]} trailing"#.to_vec(),
            60003,
        ),
        (
            br#"{"RoomId":"r","RoomId":"s","Metadata":[{"Key":"k","Value":"v"}]}"#.to_vec(),
            60003,
        ),
        (
            br#"{"RoomId":null,"Metadata":[{"Key":"k","Value":"v"}]}"#.to_vec(),
            100002,
        ),
        (
            format!(
                r#"{{"RoomId":"r","Metadata":[{}]}}"#,
                vec![r#"{"Key":"k","Value":""}"#; 100_000].join(",")
            )
            .into_bytes(),
            0,
        ),
        (
            format!(
                r#"{{"RoomId":"r","Metadata":[{}]}}"#,
                (0..100_000)
                    .map(|i| format!(r#"{{"Key":"k{i}","Value":"v"}}"#))
                    .collect::<Vec<_>>()
                    .join(",")
            )
            .into_bytes(),
            100500,
        ),
    ];
    let mut passed = 0;
    for (body, code) in cases {
        let answer = caller.post(gw.addr, set, body).await;
        assert_eq!(answer.code(), code, "{}", answer.json());
        passed += usize::from(code == 0);
    }
    assert_eq!(upstream.seen().len(), passed);
}

/// A JSON body with a repeated member name is refused on every API (60003, naming the key and
/// its object), before any quota is spent: Tencent and timgate could read different copies.
#[tokio::test]
async fn a_repeated_key_is_refused_on_every_api_before_any_quota() {
    let upstream = Recorder::ok().await;
    let gw = gateway(Config::from_toml(&one_app(1, &upstream.url())).unwrap()).await;
    let caller = Caller::default();
    let ids = |n: usize| json!((0..n).map(|i| format!("u{i}")).collect::<Vec<_>>()).to_string();
    let batch = "/v4/openim/batchsendmsg";
    let group = "/v4/group_open_http_svc/send_group_msg";
    let text = r#""MsgRandom":1,"Random":1,"MsgBody":[{"MsgType":"TIMTextElem","MsgContent":{"Text":"hi"}}]"#;
    let refused = [
        (batch, format!(r#"{{"To_Account":["x"],"To_Account":{},{text}}}"#, ids(500)), "To_Account", "its top-level object"),
        (batch, format!(r#"{{"To_Account":{},"To_Account":["x"],{text}}}"#, ids(500)), "To_Account", "its top-level object"),
        (batch, format!(r#"{{"To_Account":["x"],"To_Account":{},{text}}}"#, ids(501)), "To_Account", "its top-level object"),
        (
            batch,
            r#"{"To_Account":["x"],"MsgBody":[{"MsgType":"TIMTextElem","MsgContent":{"Text":"a","Text":"b"}}]}"#.into(),
            "Text",
            "the object at MsgBody[0].MsgContent",
        ),
        (group, format!(r#"{{"GroupId":"decoy","GroupId":"victim",{text}}}"#), "GroupId", "its top-level object"),
        (group, format!(r#"{{"GroupId":"victim","\u0047roupId":"decoy",{text}}}"#), "GroupId", "its top-level object"),
        ("/v4/profile/portrait_get", r#"{"To_Account":["a"],"TagList":["x"],"TagList":[]}"#.into(), "TagList", "its top-level object"),
        (
            "/v4/live_engine_http_srv/set_room_metadata",
            r#"{"RoomId":"r","Metadata":[{"Key":"k","Key":"j","Value":"v"}]}"#.into(),
            "Key",
            "the object at Metadata[0]",
        ),
    ];
    for (path, body, key, place) in &refused {
        let answer = caller.post(gw.addr, path, body.clone()).await;
        assert_eq!(answer.status, 200, "{path}");
        assert_eq!(answer.json()["ActionStatus"], "FAIL");
        assert_eq!(answer.code(), 60003, "{path}: {}", answer.json());
        let info = answer.json()["ErrorInfo"].as_str().unwrap().to_owned();
        assert!(
            info.contains(&format!("the key \"{key}\" twice in {place}:")),
            "{info}"
        );
        assert_eq!(answer.headers["x-timgate-attempts"], "0");
    }
    assert_eq!(upstream.seen().len(), 0, "a refused body reached Tencent");
    // The controls: the same bodies with each key once pass, or meet the documented check.
    let controls = [
        (batch, format!(r#"{{"To_Account":{},{text}}}"#, ids(500)), 0),
        (
            batch,
            format!(r#"{{"To_Account":{},{text}}}"#, ids(501)),
            90011,
        ),
        (group, format!(r#"{{"GroupId":"victim",{text}}}"#), 0),
        (
            "/v4/profile/portrait_get",
            r#"{"To_Account":["a"],"TagList":["x"]}"#.into(),
            0,
        ),
    ];
    for (path, body, code) in &controls {
        let answer = caller.post(gw.addr, path, body.clone()).await;
        assert_eq!(answer.code(), *code, "{path}: {}", answer.json());
    }
    assert_eq!(upstream.seen().len(), 3);
}

fn emulator() -> Emulator {
    let config = Config::from_toml(&one_app(1, "http://127.0.0.1:1")).unwrap();
    Emulator::new(&config.apps)
}

/// Strings of `around` UTF-8 bytes give or take a few, in one- to three-byte characters.
fn near(around: usize) -> impl Strategy<Value = String> {
    let low = around.saturating_sub(6);
    prop_oneof![
        (low..around + 6).prop_map(|n| "x".repeat(n)),
        (low / 2..(around + 6) / 2).prop_map(|n| "é".repeat(n)),
        (low / 3..(around + 6) / 3, 0..3usize)
            .prop_map(|(n, pad)| "字".repeat(n) + &"a".repeat(pad)),
    ]
}

/// Mostly well-formed strings, some at the documented size, now and then a wrong type.
fn string_ish(short: &'static str, limit: usize) -> impl Strategy<Value = Value> {
    prop_oneof![
        12 => short.prop_map(Value::from),
        4 => near(limit).prop_map(Value::from),
        1 => Just(Value::Null),
        1 => any::<i64>().prop_map(Value::from),
        1 => Just(json!(["nested"])),
    ]
}

fn metadata_body() -> impl Strategy<Value = Value> {
    let entry = prop_oneof![
        30 => (string_ish("[a-z0-9]{1,6}", 50), string_ish("[a-z ]{0,12}", 2048)).prop_map(|(k, v)| json!({"Key": k, "Value": v})),
        1 => Just(json!("not an object")),
        1 => string_ish("[a-z]{1,4}", 50).prop_map(|k| json!({"Key": k})),
    ];
    (
        string_ish("[a-z]{1,8}", 48),
        proptest::collection::vec(entry, 0..13),
    )
        .prop_map(|(room, entries)| json!({"RoomId": room, "Metadata": entries}))
}

/// Mostly valid message elements, now and then an unknown type, a missing or mistyped
/// required field, or an element that is not an object.
fn element() -> impl Strategy<Value = Value> {
    prop_oneof![
        8 => string_ish("[a-z ]{0,12}", 12 * 1024 - 60)
            .prop_map(|t| json!({"MsgType": "TIMTextElem", "MsgContent": {"Text": t}})),
        2 => (any::<f64>(), any::<i32>())
            .prop_map(|(a, b)| json!({"MsgType": "TIMLocationElem", "MsgContent": {"Latitude": a, "Longitude": b}})),
        2 => any::<i64>().prop_map(|i| json!({"MsgType": "TIMFaceElem", "MsgContent": {"Index": i}})),
        1 => Just(json!({"MsgType": "TIMFaceElem", "MsgContent": {"Index": "1"}})),
        1 => Just(json!({"MsgType": "TIMCustomElem", "MsgContent": {"Data": "d"}})),
        1 => Just(json!({"MsgType": "TIMNoSuchElem", "MsgContent": {}})),
        1 => Just(json!({"MsgType": "TIMTextElem"})),
        1 => Just(json!("not an element")),
    ]
}

/// sendmsg bodies around every rule: MsgRandom near 0 and 2^32, MsgLifeTime near 7 days,
/// bodies near 12 KB, accounts present or not.
fn sendmsg_body() -> impl Strategy<Value = Value> {
    let random = prop_oneof![
        Just(json!(0)),
        Just(json!(-1)),
        Just(json!(4_294_967_295u64)),
        Just(json!(4_294_967_296u64)),
        any::<u32>().prop_map(Value::from),
        Just(json!("7")),
    ];
    let lifetime = prop_oneof![
        Just(Value::Null),
        Just(json!(0)),
        Just(json!(-1)),
        Just(json!(604_800)),
        Just(json!(604_801)),
    ];
    let to = prop_oneof![8 => Just(json!("bob")), 1 => Just(Value::Null), 1 => Just(json!(""))];
    (
        to,
        random,
        lifetime,
        proptest::collection::vec(element(), 0..4),
    )
        .prop_map(|(to, random, lifetime, body)| {
            json!({"From_Account": "alice", "To_Account": to, "MsgRandom": random,
                   "MsgLifeTime": lifetime, "MsgBody": body})
        })
}

fn emulator_with_accounts() -> Emulator {
    let emulator = emulator();
    emulator.accounts().import(1, "alice");
    emulator.accounts().import(1, "bob");
    emulator
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn the_emulator_accepts_each_message_the_checker_accepts_and_refuses_the_rest_alike(body in sendmsg_body()) {
        let api = Api::from_path("/v4/openim/sendmsg").unwrap();
        let bytes = body.to_string();
        let parsed: serde_json_borrow::Value = serde_json::from_str(&bytes).unwrap();
        let checked = rules::check(rules::for_api(api.name()).unwrap(), &parsed);
        let answer = emulator_with_accounts().execute(1, &api, bytes.as_bytes());
        match checked {
            Ok(()) => prop_assert!(answer.is_ok(), "{bytes}: {answer:?}"),
            Err(refusal) => prop_assert_eq!(answer.unwrap_err(), refusal),
        }
    }

    #[test]
    fn whatever_the_checker_accepts_the_emulator_accepts(body in metadata_body()) {
        let api = Api::from_path("/v4/live_engine_http_srv/set_room_metadata").unwrap();
        let bytes = body.to_string();
        let parsed: serde_json_borrow::Value = serde_json::from_str(&bytes).unwrap();
        // One deliberate difference: the emulator's bounded store refuses a RoomId over 48
        // bytes (create_room's limit, so no room can have one); the checker has no such rule.
        let storable = body["RoomId"].as_str().is_none_or(|room| room.len() <= 48);
        if storable && rules::check(rules::for_api(api.name()).unwrap(), &parsed).is_ok() {
            let answer = emulator().execute(1, &api, bytes.as_bytes());
            prop_assert!(answer.is_ok(), "{bytes}: {answer:?}");
        }
    }

    #[test]
    fn the_emulator_refuses_what_the_checker_refuses(body in metadata_body()) {
        let api = Api::from_path("/v4/live_engine_http_srv/set_room_metadata").unwrap();
        let bytes = body.to_string();
        let parsed: serde_json_borrow::Value = serde_json::from_str(&bytes).unwrap();
        if let Err(refusal) = rules::check(rules::for_api(api.name()).unwrap(), &parsed) {
            prop_assert_eq!(emulator().execute(1, &api, bytes.as_bytes()).unwrap_err(), refusal);
        }
    }
}

//! The bodies of the callbacks Tencent posts for what the emulator carries out, built from
//! the request as Tencent's pages show them (the C2C and group before/after-send pages,
//! cloud.tencent.com/document/product/269/1632 and …/269/1619; the group lifecycle pages,
//! trtc.io/document/34369, …/34377, …/34372, …/34373; the live room pages,
//! trtc.io/document/64422 and …/64423). A before-send event comes with the code its
//! refusal answers the REST caller: 20006 for a C2C message, 10016 for a group one (both
//! confirmed in Tencent's error table …/269/1671, as its Web SDK carries it).

use serde_json::{Map, Value, json};

use super::groups::Facts;
use crate::usersig::unix_now;

/// A before-event callback's body and the code its refusal answers, if the API has one;
/// and the after-event callback's body.
pub(super) type Pair = (Option<(Value, u32)>, Value);

/// `body`'s field `name`, or `fallback`.
fn field(body: &Map<String, Value>, name: &str, fallback: Value) -> Value {
    body.get(name).cloned().unwrap_or(fallback)
}

/// Copies `CloudCustomData` into `event` when the request has it.
fn with_custom_data(mut event: Value, body: &Map<String, Value>) -> Value {
    if let (Some(data), Some(fields)) = (body.get("CloudCustomData"), event.as_object_mut()) {
        fields.insert("CloudCustomData".into(), data.clone());
    }
    event
}

/// `openim/sendmsg`: the C2C pair; a refusal answers 20006. Without a `MsgSeq` the message's
/// seq is its `MsgRandom`, as the emulator stores it, so `MsgKey` reads the same in both.
pub(super) fn c2c(body: &Map<String, Value>, operator: &str) -> Pair {
    let random = body.get("MsgRandom").and_then(Value::as_u64).unwrap_or(0);
    let seq = body.get("MsgSeq").and_then(Value::as_u64).unwrap_or(random);
    let time = unix_now();
    let online_only = body.get("MsgLifeTime").and_then(Value::as_u64) == Some(0);
    let event = |command: &str| {
        let event = json!({
            "CallbackCommand": command,
            "From_Account": field(body, "From_Account", json!(operator)),
            "To_Account": field(body, "To_Account", Value::Null),
            "MsgSeq": seq,
            "MsgRandom": random,
            "MsgTime": time,
            "MsgKey": format!("{seq}_{random}_{time}"),
            "OnlineOnlyFlag": u8::from(online_only),
            "MsgBody": field(body, "MsgBody", json!([])),
        });
        with_custom_data(event, body)
    };
    let mut after = event("C2C.CallbackAfterSendMsg");
    if let Some(fields) = after.as_object_mut() {
        fields.insert("SendMsgResult".into(), json!(0));
        fields.insert("ErrorInfo".into(), json!(""));
        fields.insert("UnreadMsgNum".into(), json!(0));
    }
    (Some((event("C2C.CallbackBeforeSendMsg"), 20006)), after)
}

/// `group_open_http_svc/send_group_msg`: the Group pair; a refusal answers 10016.
pub(super) fn group(body: &Map<String, Value>, operator: &str, seq: u64) -> Pair {
    let event = |command: &str| {
        let event = json!({
            "CallbackCommand": command,
            "GroupId": field(body, "GroupId", Value::Null),
            "Type": "Public",
            "From_Account": field(body, "From_Account", json!(operator)),
            "Operator_Account": operator,
            "Random": field(body, "Random", json!(0)),
            "OnlineOnlyFlag": field(body, "OnlineOnlyFlag", json!(0)),
            "MsgBody": field(body, "MsgBody", json!([])),
            "EventTime": event_time(),
        });
        with_custom_data(event, body)
    };
    let mut after = event("Group.CallbackAfterSendMsg");
    if let Some(fields) = after.as_object_mut() {
        fields.insert("MsgSeq".into(), json!(seq));
        fields.insert("MsgTime".into(), json!(unix_now()));
    }
    (Some((event("Group.CallbackBeforeSendMsg"), 10016)), after)
}

/// `live_engine_http_srv/create_room`: `Live.CallbackAfterCreateRoom`.
pub(super) fn created(body: &Map<String, Value>, operator: &str) -> Value {
    let mut room = field(body, "RoomInfo", json!({}));
    if let Some(room) = room.as_object_mut() {
        room.insert("CreateTime".into(), json!(unix_now()));
    }
    json!({
        "CallbackCommand": "Live.CallbackAfterCreateRoom",
        "Operator_Account": operator,
        "RoomInfo": room,
    })
}

/// `live_engine_http_srv/destroy_room`: `Live.CallbackAfterDestroyRoom`.
pub(super) fn destroyed(body: &Map<String, Value>, operator: &str) -> Value {
    json!({
        "CallbackCommand": "Live.CallbackAfterDestroyRoom",
        "Operator_Account": operator,
        "RoomId": field(body, "RoomId", Value::Null),
        "EventType": "DestroyByUser",
        "EventTime": event_time(),
    })
}

/// `{"Member_Account": …}` for each of `accounts`, as the group callbacks list members.
fn member_list<'a>(accounts: impl IntoIterator<Item = &'a str>) -> Value {
    accounts
        .into_iter()
        .map(|account| json!({ "Member_Account": account }))
        .collect()
}

/// The group lifecycle callback a group call that succeeded makes, if any: `was` is the
/// group before the call, `now` after it, `answer` the call's answer. The bodies follow the
/// pages' samples: `Group.CallbackAfterCreateGroup` (trtc.io/document/34369),
/// `Group.CallbackAfterGroupDestroyed` (…/34377), `Group.CallbackAfterNewMemberJoin`
/// (…/34372) and `Group.CallbackAfterMemberExit` (…/34373). A call that adds or removes
/// nobody makes none.
pub(super) fn lifecycle(
    api: &str,
    (body, answer): (&Map<String, Value>, &Value),
    (was, now): (Option<&Facts>, Option<&Facts>),
    operator: &str,
) -> Option<Value> {
    let id = answer
        .get("GroupId")
        .or_else(|| body.get("GroupId"))
        .and_then(Value::as_str)?;
    match api {
        "group_open_http_svc/create_group" => Some(group_created(id, now?, operator)),
        "group_open_http_svc/destroy_group" => Some(group_destroyed(id, was?)),
        "group_open_http_svc/add_group_member" => {
            let joined: Vec<&str> = answer["MemberList"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|m| m["Result"] == 1)
                .filter_map(|m| m["Member_Account"].as_str())
                .collect();
            let kind = &was?.kind;
            (!joined.is_empty()).then(|| members_joined(id, kind, operator, &joined))
        }
        "group_open_http_svc/delete_group_member" => {
            let was = was?;
            let gone = body.get("MemberToDel_Account").and_then(Value::as_array);
            let exited: Vec<&str> = was
                .members
                .iter()
                .filter(|m| **m != was.owner)
                .filter(|m| gone.is_some_and(|g| g.iter().any(|a| a == m.as_str())))
                .map(String::as_str)
                .collect();
            (!exited.is_empty()).then(|| members_exited(id, &was.kind, operator, &exited))
        }
        _ => None,
    }
}

/// `Group.CallbackAfterCreateGroup`: the initial members are those besides the owner (the
/// page's sample lists the owner apart). `UserDefinedDataList` is left out: the emulator
/// keeps no custom group fields.
fn group_created(id: &str, group: &Facts, operator: &str) -> Value {
    let initial = group.members.iter().filter(|m| **m != group.owner);
    json!({
        "CallbackCommand": "Group.CallbackAfterCreateGroup",
        "GroupId": id,
        "Operator_Account": operator,
        "Owner_Account": group.owner,
        "Type": group.kind,
        "Name": group.name,
        "MemberList": member_list(initial.map(String::as_str)),
        "EventTime": event_time(),
    })
}

/// `Group.CallbackAfterGroupDestroyed`: every member the group had, the owner among them
/// (the page's sample lists the owner in `MemberList`).
fn group_destroyed(id: &str, group: &Facts) -> Value {
    json!({
        "CallbackCommand": "Group.CallbackAfterGroupDestroyed",
        "GroupId": id,
        "Type": group.kind,
        "Owner_Account": group.owner,
        "Name": group.name,
        "MemberList": member_list(group.members.iter().map(String::as_str)),
        "EventTime": event_time(),
    })
}

/// `Group.CallbackAfterNewMemberJoin` for members an admin added: `JoinType` `Invited`
/// (the page's two values are `Apply` and `Invited`; an admin's REST call is an invitation,
/// not an application: the stored page's sample body was not at hand to confirm it).
fn members_joined(id: &str, kind: &str, operator: &str, joined: &[&str]) -> Value {
    json!({
        "CallbackCommand": "Group.CallbackAfterNewMemberJoin",
        "GroupId": id,
        "Type": kind,
        "JoinType": "Invited",
        "Operator_Account": operator,
        "NewMemberList": member_list(joined.iter().copied()),
        "EventTime": event_time(),
    })
}

/// `Group.CallbackAfterMemberExit` for members an admin removed: `ExitType` `Kicked`.
fn members_exited(id: &str, kind: &str, operator: &str, exited: &[&str]) -> Value {
    json!({
        "CallbackCommand": "Group.CallbackAfterMemberExit",
        "GroupId": id,
        "Type": kind,
        "ExitType": "Kicked",
        "Operator_Account": operator,
        "ExitMemberList": member_list(exited.iter().copied()),
        "EventTime": event_time(),
    })
}

/// Milliseconds since the Unix epoch.
fn event_time() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(text: &str) -> Map<String, Value> {
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn a_c2c_message_makes_tencents_pair_with_its_key() {
        let sent = body(
            r#"{"To_Account":"b","MsgSeq":9,"MsgRandom":77,"MsgLifeTime":0,
                "MsgBody":[{"MsgType":"TIMTextElem"}],"CloudCustomData":"x"}"#,
        );
        let (before, after) = c2c(&sent, "admin");
        let (before, refused_with) = before.unwrap();
        assert_eq!(refused_with, 20006);
        assert_eq!(before["CallbackCommand"], "C2C.CallbackBeforeSendMsg");
        // No From_Account: the admin sends it.
        assert_eq!(before["From_Account"], "admin");
        assert_eq!(
            (before["MsgSeq"].as_u64(), before["MsgRandom"].as_u64()),
            (Some(9), Some(77))
        );
        let time = before["MsgTime"].as_u64().unwrap();
        assert_eq!(before["MsgKey"], format!("9_77_{time}"));
        assert_eq!(before["OnlineOnlyFlag"], 1);
        assert_eq!(before["CloudCustomData"], "x");
        assert_eq!(after["CallbackCommand"], "C2C.CallbackAfterSendMsg");
        assert_eq!(after["SendMsgResult"], 0);
        assert_eq!(after["MsgKey"], before["MsgKey"]);
    }

    #[test]
    fn a_groups_lifecycle_lists_only_the_members_it_changed() {
        let team = Facts {
            kind: "Work".into(),
            name: "team".into(),
            owner: "a".into(),
            members: vec!["a".into(), "b".into(), "c".into()],
        };
        let add = "group_open_http_svc/add_group_member";
        let answer = json!({"MemberList": [{"Member_Account": "b", "Result": 2},
            {"Member_Account": "d", "Result": 1}, {"Member_Account": "x", "Result": 0}]});
        let joined = lifecycle(
            add,
            (&body(r#"{"GroupId":"g"}"#), &answer),
            (Some(&team), None),
            "op",
        )
        .unwrap();
        assert_eq!(joined["NewMemberList"], json!([{"Member_Account": "d"}]));
        assert_eq!(
            (&joined["Type"], &joined["GroupId"]),
            (&json!("Work"), &json!("g"))
        );
        let nobody = json!({"MemberList": [{"Member_Account": "b", "Result": 2}]});
        let none = lifecycle(
            add,
            (&body(r#"{"GroupId":"g"}"#), &nobody),
            (Some(&team), None),
            "op",
        );
        assert!(none.is_none(), "adding nobody posts nothing");
        let delete = "group_open_http_svc/delete_group_member";
        let gone = body(r#"{"GroupId":"g","MemberToDel_Account":["a","c","z"]}"#);
        let exited = lifecycle(delete, (&gone, &json!({})), (Some(&team), None), "op").unwrap();
        assert_eq!(exited["ExitMemberList"], json!([{"Member_Account": "c"}]));
        let created = lifecycle(
            "group_open_http_svc/create_group",
            (&body("{}"), &json!({"GroupId": "@TGS#1"})),
            (None, Some(&team)),
            "op",
        )
        .unwrap();
        assert_eq!(
            created["MemberList"],
            json!([{"Member_Account": "b"}, {"Member_Account": "c"}])
        );
        assert_eq!(created["Operator_Account"], "op");
        let other = lifecycle(
            "openim/sendmsg",
            (&gone, &json!({})),
            (Some(&team), None),
            "op",
        );
        assert!(other.is_none());
    }

    #[test]
    fn group_and_room_events_carry_their_ids() {
        let (before, after) = group(&body(r#"{"GroupId":"@TGS#1","Random":5}"#), "admin", 3);
        let (before, refused_with) = before.unwrap();
        assert_eq!(
            (refused_with, &before["GroupId"]),
            (10016, &json!("@TGS#1"))
        );
        assert_eq!(before["Operator_Account"], "admin");
        assert!(before.get("CloudCustomData").is_none());
        assert_eq!(
            (after["CallbackCommand"].as_str(), after["MsgSeq"].as_u64()),
            (Some("Group.CallbackAfterSendMsg"), Some(3))
        );
        let room = created(&body(r#"{"RoomInfo":{"RoomId":"r1"}}"#), "admin");
        assert_eq!(room["RoomInfo"]["RoomId"], "r1");
        assert!(room["RoomInfo"]["CreateTime"].as_u64().is_some());
        let gone = destroyed(&body(r#"{"RoomId":"r1"}"#), "admin");
        assert_eq!(
            (gone["RoomId"].as_str(), gone["EventType"].as_str()),
            (Some("r1"), Some("DestroyByUser"))
        );
    }
}

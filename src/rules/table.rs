//! The live room API family's documented rules (TENCENT.md §6), one entry per API, each line
//! readable against Tencent's page. Adding an API is adding an entry here.
//!
//! Only documented requirements are here: a rule Tencent does not enforce would refuse a
//! request Tencent accepts. Sizes are UTF-8 bytes; "KB" is 1024 bytes.

use super::Check::{
    MaxBytes, MaxDistinct, MaxItems, MaxTotalBytes, MaxValue, NonEmpty, Optional, Required,
};
use super::Rule;
use super::Type::{Array, Integer, Object, String};

use super::INVALID;

const fn rule(field: &'static str, check: super::Check) -> Rule {
    Rule {
        field,
        check,
        code: INVALID,
    }
}

const fn coded(field: &'static str, check: super::Check, code: u32) -> Rule {
    Rule { field, check, code }
}

const ROOM_ID: [Rule; 2] = [rule("RoomId", Required(String)), rule("RoomId", NonEmpty)];

const SET_ROOM_METADATA: &[Rule] = &[
    ROOM_ID[0],
    ROOM_ID[1],
    rule("Metadata", Required(Array)),
    rule("Metadata", NonEmpty),
    rule("Metadata[]", Required(Object)),
    rule("Metadata[].Key", Required(String)),
    rule("Metadata[].Value", Required(String)),
    coded("Metadata[].Key", MaxDistinct(10), 100500),
    coded("Metadata[].Key", MaxBytes(50), 100504),
    coded("Metadata[].Value", MaxBytes(2048), 100501),
    coded("Metadata[].Value", MaxTotalBytes(16384), 100502),
];

const GET_ROOM_METADATA: &[Rule] = &[
    ROOM_ID[0],
    ROOM_ID[1],
    rule("Keys", Optional(Array)),
    rule("Keys[]", Required(String)),
];

const DEL_ROOM_METADATA: &[Rule] = &[
    ROOM_ID[0],
    ROOM_ID[1],
    rule("Keys", Required(Array)),
    rule("Keys", NonEmpty),
    rule("Keys[]", Required(String)),
];

const CREATE_ROOM: &[Rule] = &[
    rule("RoomInfo", Required(Object)),
    rule("RoomInfo.RoomId", Required(String)),
    rule("RoomInfo.RoomId", NonEmpty),
    rule("RoomInfo.RoomId", MaxBytes(48)),
    rule("RoomInfo.RoomName", Optional(String)),
    rule("RoomInfo.RoomName", MaxBytes(100)),
    rule("RoomInfo.CoverURL", Optional(String)),
    rule("RoomInfo.CoverURL", MaxBytes(200)),
    rule("RoomInfo.Category", Optional(Array)),
    rule("RoomInfo.Category", MaxItems(3)),
];

const UPDATE_ROOM_INFO: &[Rule] = &[
    rule("RoomInfo", Required(Object)),
    rule("RoomInfo.RoomId", Required(String)),
    rule("RoomInfo.RoomId", NonEmpty),
    rule("RoomInfo.Category", Optional(Array)),
    rule("RoomInfo.Category", MaxItems(3)),
    rule("RoomInfo.Notice", Optional(String)),
    rule("RoomInfo.Notice", MaxBytes(100)),
];

const ROOM_ONLY: &[Rule] = &[ROOM_ID[0], ROOM_ID[1]];

const GET_ROOM_LIST: &[Rule] = &[
    rule("Next", Required(String)),
    rule("Count", Optional(Integer)),
    rule("Count", MaxValue(20)),
];

const MEMBERS: [Rule; 3] = [
    rule("MemberList_Account", Required(Array)),
    rule("MemberList_Account", MaxItems(20)),
    rule("MemberList_Account[]", Required(String)),
];

const BAN_MEMBER: &[Rule] = &[
    ROOM_ID[0],
    ROOM_ID[1],
    MEMBERS[0],
    MEMBERS[1],
    MEMBERS[2],
    rule("Duration", Required(Integer)),
    rule("Reason", Optional(String)),
    rule("Reason", MaxBytes(200)),
];

const UNBAN_MEMBER: &[Rule] = &[ROOM_ID[0], ROOM_ID[1], MEMBERS[0], MEMBERS[1], MEMBERS[2]];

const GET_BANNED_MEMBER_LIST: &[Rule] = &[
    ROOM_ID[0],
    ROOM_ID[1],
    rule("Limit", Optional(Integer)),
    rule("Limit", MaxValue(100)),
];

const MUTE_MEMBER: &[Rule] = &[ROOM_ID[0], ROOM_ID[1], rule("MuteTime", Required(Integer))];

const SEND_TEXT_MSG: &[Rule] = &[
    ROOM_ID[0],
    ROOM_ID[1],
    rule("Sender_Account", Required(String)),
    rule("TextContent", Required(String)),
];

const ROOM_ID_48: &[Rule] = &[ROOM_ID[0], ROOM_ID[1], rule("RoomId", MaxBytes(48))];

/// Every checked API, by `service/command`.
pub const TABLE: &[(&str, &[Rule])] = &[
    ("live_engine_http_srv/set_room_metadata", SET_ROOM_METADATA),
    ("live_engine_http_srv/get_room_metadata", GET_ROOM_METADATA),
    ("live_engine_http_srv/del_room_metadata", DEL_ROOM_METADATA),
    ("live_engine_http_srv/create_room", CREATE_ROOM),
    ("live_engine_http_srv/update_room_info", UPDATE_ROOM_INFO),
    ("live_engine_http_srv/destroy_room", ROOM_ONLY),
    ("live_engine_http_srv/get_room_info", ROOM_ONLY),
    ("live_engine_http_srv/get_room_list", GET_ROOM_LIST),
    ("live_engine_http_srv/ban_member", BAN_MEMBER),
    ("live_engine_http_srv/unban_member", UNBAN_MEMBER),
    (
        "live_engine_http_srv/get_banned_member_list",
        GET_BANNED_MEMBER_LIST,
    ),
    ("live_engine_http_srv/mute_member", MUTE_MEMBER),
    ("live_engine_http_srv/send_text_msg", SEND_TEXT_MSG),
    ("live_engine_http_srv/get_room_stats", ROOM_ID_48),
    ("live_engine_http_srv/add_robot", ROOM_ID_48),
];

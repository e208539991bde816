//! The emulator's groups: `group_open_http_svc/create_group`, `destroy_group`,
//! `add_group_member`, `delete_group_member`, `get_group_info`, `get_group_member_info`,
//! `get_appid_group_list`, `send_group_msg` and `group_msg_get_simple`, answered with the
//! fields Tencent's pages give (cloud.tencent.com/document/product/269/1615, …/269/1624,
//! …/269/1621, …/269/1622, …/269/1616, …/269/1617, …/269/1614, …/269/1629, …/269/2738).
//!
//! Each group keeps its own `MsgSeq`, from 1, one more per message; a repeat of `Random`
//! inside Tencent's 5 minutes (`Messages`) is answered with the first one's seq and stored
//! once. `get_appid_group_list` pages by `Next`, a 64-bit integer: the emulator's cursors
//! start above 2^53, so a caller that carries them through a float (and rounds them) is
//! caught here rather than at Tencent.
//!
//! Bounded: at most `MAX_GROUPS` groups (the oldest evicted first), `MAX_MEMBERS` members a
//! group (Tencent's 10014, "group full", past it) and `MAX_GROUP_HISTORY` messages a group
//! (the oldest dropped).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;

use serde_json::{Map, Value, json};

use crate::rules::Refusal;

/// Most groups kept over all apps; a new one past it evicts the oldest.
pub const MAX_GROUPS: usize = 256;
/// Most members a group holds in the emulator.
pub const MAX_MEMBERS: usize = 500;
/// Most messages kept per group, each at most 12 KB of `MsgBody`.
pub const MAX_GROUP_HISTORY: usize = 32;
/// The first `Next` cursor value: above 2^53, where a double stops holding every integer.
pub const FIRST_SERIAL: u64 = (1 << 53) + 1;
// The group codes are confirmed in Tencent's error table (…/269/1671, as its Web SDK carries
// it). `MAX_MEMBERS` is the emulator's own bound, not a Tencent group type's cap.

/// The group APIs' "group does not exist or was dissolved".
pub const NO_GROUP: u32 = 10010;
/// The group APIs' "the group is full".
pub const FULL: u32 = 10014;
/// The group APIs' "the account does not exist".
pub const NO_ACCOUNT: u32 = 10019;
/// The group APIs' "the group ID is taken".
pub const TAKEN: u32 = 10021;

type Key = (u64, String);

struct Member {
    account: String,
    role: &'static str,
    joined: u64,
}

struct Message {
    from: String,
    seq: u64,
    random: u64,
    time: u64,
    body: Value,
}

struct Group {
    serial: u64,
    kind: String,
    name: String,
    owner: String,
    created: u64,
    members: Vec<Member>,
    next_seq: u64,
    history: VecDeque<Message>,
}

#[derive(Default)]
struct Store {
    groups: HashMap<Key, Group>,
    /// Groups by serial: creation order, and `Next` cursors.
    order: BTreeMap<u64, Key>,
    next_serial: u64,
}

/// Every app's groups.
#[derive(Default)]
pub struct Groups {
    store: Mutex<Store>,
}

/// What a group's lifecycle callbacks say of it: its type, name, owner and members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts {
    /// `Type`, e.g. `Public`.
    pub kind: String,
    /// `Name`.
    pub name: String,
    /// `Owner_Account`.
    pub owner: String,
    /// Every member's account, the owner first, in joining order.
    pub members: Vec<String>,
}

/// Who asks, and when: the app, the admin account and Unix seconds now.
pub struct Asker<'a> {
    /// The app.
    pub sdkappid: u64,
    /// The admin account the request was signed as.
    pub admin: &'a str,
    /// Unix seconds now.
    pub time: u64,
}

fn text<'b>(body: &'b Map<String, Value>, name: &str) -> Option<&'b str> {
    body.get(name).and_then(Value::as_str)
}

fn number(body: &Map<String, Value>, name: &str) -> Option<u64> {
    body.get(name).and_then(Value::as_u64)
}

fn missing(id: &str) -> Refusal {
    Refusal::new(
        NO_GROUP,
        format!("group {id} does not exist or was dissolved"),
    )
}

impl Groups {
    /// `create_group`: a new group with its initial members; `GroupId` when the body names
    /// none is made up as Tencent's are (`@TGS#...`).
    pub fn create(
        &self,
        asker: &Asker<'_>,
        body: &Map<String, Value>,
        known: &dyn Fn(&str) -> bool,
    ) -> Result<Value, Refusal> {
        let accounts: Vec<&str> = members(body.get("MemberList"), "Member_Account").collect();
        if let Some(unknown) = accounts.iter().find(|a| !known(a)) {
            return Err(Refusal::new(
                NO_ACCOUNT,
                format!("{unknown} was never imported"),
            ));
        }
        if accounts.len() > MAX_MEMBERS {
            return Err(Refusal::new(
                FULL,
                format!("a group holds {MAX_MEMBERS} members here"),
            ));
        }
        let mut store = self.lock();
        let serial = store.next_serial.max(FIRST_SERIAL);
        store.next_serial = serial + 1;
        let id = text(body, "GroupId").map_or_else(|| format!("@TGS#{serial:X}"), str::to_owned);
        let key = (asker.sdkappid, id.clone());
        if store.groups.contains_key(&key) {
            return Err(Refusal::new(TAKEN, format!("group ID {id} is taken")));
        }
        let owner = text(body, "Owner_Account")
            .unwrap_or(asker.admin)
            .to_owned();
        let mut list = vec![Member {
            account: owner.clone(),
            role: "Owner",
            joined: asker.time,
        }];
        list.extend(accounts.iter().filter(|a| **a != owner).map(|a| Member {
            account: (*a).to_owned(),
            role: "Member",
            joined: asker.time,
        }));
        let group = Group {
            serial,
            kind: text(body, "Type").unwrap_or("Public").to_owned(),
            name: text(body, "Name").unwrap_or("").to_owned(),
            owner,
            created: asker.time,
            members: list,
            next_seq: 1,
            history: VecDeque::new(),
        };
        store.insert(key, group);
        Ok(json!({ "GroupId": id }))
    }

    /// `destroy_group`.
    pub fn destroy(&self, sdkappid: u64, body: &Map<String, Value>) -> Result<Value, Refusal> {
        let id = text(body, "GroupId").unwrap_or("");
        let mut store = self.lock();
        let group = store
            .groups
            .remove(&(sdkappid, id.to_owned()))
            .ok_or_else(|| missing(id))?;
        store.order.remove(&group.serial);
        Ok(json!({}))
    }

    /// `add_group_member`: each member's `Result`: 1 added, 2 already a member, 0 failed
    /// (never imported). All or nothing past `MAX_MEMBERS` (10014).
    pub fn add(
        &self,
        asker: &Asker<'_>,
        body: &Map<String, Value>,
        known: &dyn Fn(&str) -> bool,
    ) -> Result<Value, Refusal> {
        let id = text(body, "GroupId").unwrap_or("");
        let mut store = self.lock();
        let group = store.get_mut(asker.sdkappid, id)?;
        let mut results = Vec::new();
        let mut added = Vec::new();
        for account in members(body.get("MemberList"), "Member_Account") {
            let already = group.members.iter().any(|m| m.account == account)
                || added.iter().any(|m: &Member| m.account == account);
            let result = match (already, known(account)) {
                (true, _) => 2,
                (false, false) => 0,
                (false, true) => {
                    added.push(Member {
                        account: account.to_owned(),
                        role: "Member",
                        joined: asker.time,
                    });
                    1
                }
            };
            results.push(json!({"Member_Account": account, "Result": result}));
        }
        if group.members.len() + added.len() > MAX_MEMBERS {
            return Err(Refusal::new(
                FULL,
                format!("group {id} would hold more than {MAX_MEMBERS} members"),
            ));
        }
        group.members.extend(added);
        Ok(json!({ "MemberList": results }))
    }

    /// `delete_group_member`.
    pub fn remove(&self, sdkappid: u64, body: &Map<String, Value>) -> Result<Value, Refusal> {
        let id = text(body, "GroupId").unwrap_or("");
        let gone: Vec<&str> = body
            .get("MemberToDel_Account")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        let mut store = self.lock();
        let group = store.get_mut(sdkappid, id)?;
        group
            .members
            .retain(|m| m.role == "Owner" || !gone.contains(&m.account.as_str()));
        Ok(json!({}))
    }

    /// `get_group_info`: each group's profile, or its own `ErrorCode` when it does not exist.
    pub fn info(&self, sdkappid: u64, body: &Map<String, Value>) -> Result<Value, Refusal> {
        let store = self.lock();
        let ids = body
            .get("GroupIdList")
            .and_then(Value::as_array)
            .into_iter()
            .flatten();
        let infos: Vec<Value> = ids
            .filter_map(Value::as_str)
            .map(|id| match store.groups.get(&(sdkappid, id.to_owned())) {
                Some(g) => json!({
                    "GroupId": id, "ErrorCode": 0, "ErrorInfo": "",
                    "Type": g.kind, "Name": g.name, "Owner_Account": g.owner,
                    "CreateTime": g.created, "MemberNum": g.members.len(),
                    "MaxMemberNum": MAX_MEMBERS, "NextMsgSeq": g.next_seq,
                }),
                None => {
                    json!({"GroupId": id, "ErrorCode": NO_GROUP, "ErrorInfo": missing(id).info})
                }
            })
            .collect();
        Ok(json!({ "GroupInfo": infos }))
    }

    /// `get_group_member_info`: `Limit` members from `Offset`, in joining order.
    pub fn member_info(&self, sdkappid: u64, body: &Map<String, Value>) -> Result<Value, Refusal> {
        let id = text(body, "GroupId").unwrap_or("");
        let store = self.lock();
        let group = store
            .groups
            .get(&(sdkappid, id.to_owned()))
            .ok_or_else(|| missing(id))?;
        let offset = usize::try_from(number(body, "Offset").unwrap_or(0)).unwrap_or(usize::MAX);
        let limit = usize::try_from(number(body, "Limit").unwrap_or(0)).unwrap_or(usize::MAX);
        let limit = if limit == 0 { MAX_MEMBERS } else { limit };
        let list: Vec<Value> = group
            .members
            .iter()
            .skip(offset)
            .take(limit)
            .map(|m| {
                json!({
                    "Member_Account": m.account, "Role": m.role, "JoinTime": m.joined,
                    "MsgSeq": 0, "MsgFlag": "AcceptAndNotify", "LastSendMsgTime": 0,
                    "ShutUpUntil": 0, "AppMemberDefinedData": [],
                })
            })
            .collect();
        Ok(json!({ "MemberNum": group.members.len(), "MemberList": list }))
    }

    /// `get_appid_group_list`: `Limit` group IDs after the cursor `Next` (0: the first
    /// page); the answer's `Next` is 0 on the last page.
    pub fn list(&self, sdkappid: u64, body: &Map<String, Value>) -> Result<Value, Refusal> {
        let after = number(body, "Next").unwrap_or(0);
        let limit = usize::try_from(number(body, "Limit").unwrap_or(1000)).unwrap_or(usize::MAX);
        let kind = text(body, "GroupType");
        let store = self.lock();
        let mut ours = store
            .order
            .range(after.saturating_add(1)..)
            .filter_map(|(serial, key)| Some((serial, store.groups.get(key)?, key)))
            .filter(|(_, g, key)| key.0 == sdkappid && kind.is_none_or(|k| k == g.kind));
        let page: Vec<(&u64, &Group, &Key)> = ours.by_ref().take(limit.max(1)).collect();
        let more = ours.next().is_some();
        let total = store.groups.keys().filter(|k| k.0 == sdkappid).count();
        let next = if more {
            page.last().map_or(0, |(s, _, _)| **s)
        } else {
            0
        };
        let ids: Vec<Value> = page
            .iter()
            .map(|(_, _, key)| json!({"GroupId": key.1}))
            .collect();
        Ok(json!({"TotalCount": total, "GroupIdList": ids, "Next": next}))
    }

    /// `send_group_msg`: the group's next `MsgSeq`, or the first one's for a repeat.
    pub fn send(
        &self,
        asker: &Asker<'_>,
        body: &Map<String, Value>,
        fresh: bool,
    ) -> Result<Value, Refusal> {
        let id = text(body, "GroupId").unwrap_or("");
        let random = number(body, "Random").unwrap_or(0);
        let mut store = self.lock();
        let group = store.get_mut(asker.sdkappid, id)?;
        if !fresh && let Some(first) = group.history.iter().find(|m| m.random == random) {
            return Ok(json!({"MsgTime": first.time, "MsgSeq": first.seq}));
        }
        let seq = group.next_seq;
        group.next_seq += 1;
        if group.history.len() >= MAX_GROUP_HISTORY {
            group.history.pop_front();
        }
        group.history.push_back(Message {
            from: text(body, "From_Account").unwrap_or(asker.admin).to_owned(),
            seq,
            random,
            time: asker.time,
            body: body.get("MsgBody").cloned().unwrap_or(json!([])),
        });
        Ok(json!({"MsgTime": asker.time, "MsgSeq": seq}))
    }

    /// `group_msg_get_simple`: up to `ReqMsgNumber` messages at or below `ReqMsgSeq` (the
    /// newest when absent), newest first; `IsFinished` 1 when none older is left.
    pub fn history(&self, sdkappid: u64, body: &Map<String, Value>) -> Result<Value, Refusal> {
        let id = text(body, "GroupId").unwrap_or("");
        let count = usize::try_from(number(body, "ReqMsgNumber").unwrap_or(20)).unwrap_or(20);
        let store = self.lock();
        let group = store
            .groups
            .get(&(sdkappid, id.to_owned()))
            .ok_or_else(|| missing(id))?;
        let below = number(body, "ReqMsgSeq").unwrap_or(u64::MAX);
        let mut older = group.history.iter().rev().filter(|m| m.seq <= below);
        let list: Vec<Value> = older
            .by_ref()
            .take(count)
            .map(|m| {
                json!({
                    "From_Account": m.from, "IsPlaceMsg": 0, "MsgBody": m.body,
                    "MsgPriority": 1, "MsgRandom": m.random, "MsgSeq": m.seq,
                    "MsgTimeStamp": m.time,
                })
            })
            .collect();
        let finished = older.next().is_none();
        Ok(json!({"GroupId": id, "IsFinished": u8::from(finished), "RspMsgList": list}))
    }

    /// Group `id` of `sdkappid` as its lifecycle callbacks describe it, if it exists.
    pub fn facts(&self, sdkappid: u64, id: &str) -> Option<Facts> {
        let store = self.lock();
        let group = store.groups.get(&(sdkappid, id.to_owned()))?;
        Some(Facts {
            kind: group.kind.clone(),
            name: group.name.clone(),
            owner: group.owner.clone(),
            members: group.members.iter().map(|m| m.account.clone()).collect(),
        })
    }

    /// Whether group `id` of `sdkappid` exists.
    pub fn exists(&self, sdkappid: u64, id: &str) -> bool {
        self.lock().groups.contains_key(&(sdkappid, id.to_owned()))
    }

    /// Forgets every group.
    pub fn reset(&self) {
        *self.lock() = Store::default();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Store {
    fn insert(&mut self, key: Key, group: Group) {
        if self.groups.len() >= MAX_GROUPS
            && let Some((_, oldest)) = self.order.pop_first()
        {
            self.groups.remove(&oldest);
        }
        self.order.insert(group.serial, key.clone());
        self.groups.insert(key, group);
    }

    fn get_mut(&mut self, sdkappid: u64, id: &str) -> Result<&mut Group, Refusal> {
        self.groups
            .get_mut(&(sdkappid, id.to_owned()))
            .ok_or_else(|| missing(id))
    }
}

/// The `field` of each object in an array (`MemberList[].Member_Account`).
fn members<'b>(list: Option<&'b Value>, field: &'b str) -> impl Iterator<Item = &'b str> {
    list.and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(move |m| m.get(field).and_then(Value::as_str))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    const ASKER: Asker<'static> = Asker {
        sdkappid: 1,
        admin: "admin",
        time: 100,
    };

    fn create(groups: &Groups, id: &str) -> Result<Value, Refusal> {
        groups.create(
            &ASKER,
            &body(json!({"Type": "Public", "Name": "n", "GroupId": id})),
            &|_| true,
        )
    }

    #[test]
    fn seq_rises_per_group_and_a_repeat_answers_the_first() {
        let groups = Groups::default();
        create(&groups, "g").unwrap();
        create(&groups, "h").unwrap();
        let send = |id: &str, random: u64, fresh| {
            groups
                .send(
                    &ASKER,
                    &body(json!({"GroupId": id, "Random": random})),
                    fresh,
                )
                .unwrap()["MsgSeq"]
                .as_u64()
        };
        assert_eq!(send("g", 1, true), Some(1));
        assert_eq!(send("g", 2, true), Some(2));
        assert_eq!(send("h", 3, true), Some(1));
        assert_eq!(send("g", 1, false), Some(1), "a repeat is not sent twice");
        assert_eq!(send("g", 4, true), Some(3));
        assert_eq!(create(&groups, "g").unwrap_err().code, TAKEN);
    }

    #[test]
    fn past_the_cap_the_oldest_group_is_evicted_and_next_is_64_bit() {
        let groups = Groups::default();
        for i in 0..=MAX_GROUPS {
            create(&groups, &format!("g{i}")).unwrap();
        }
        assert!(!groups.exists(1, "g0") && groups.exists(1, &format!("g{MAX_GROUPS}")));
        let page = groups.list(1, &body(json!({"Limit": 10}))).unwrap();
        let next = page["Next"].as_u64().unwrap();
        assert!(next > 1 << 53, "{next}");
        assert_eq!(page["TotalCount"], MAX_GROUPS);
        let rest = groups
            .list(1, &body(json!({"Limit": 1000, "Next": next})))
            .unwrap();
        assert_eq!(
            rest["GroupIdList"].as_array().unwrap().len(),
            MAX_GROUPS - 10
        );
        assert_eq!(rest["Next"], 0);
    }

    #[test]
    fn members_are_bounded_and_results_per_member() {
        let groups = Groups::default();
        create(&groups, "g").unwrap();
        let add = |list: Vec<Value>| {
            groups.add(
                &ASKER,
                &body(json!({"GroupId": "g", "MemberList": list})),
                &|a| a != "ghost",
            )
        };
        let answer = add(vec![
            json!({"Member_Account": "a"}),
            json!({"Member_Account": "ghost"}),
        ])
        .unwrap();
        let results: Vec<u64> = answer["MemberList"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["Result"].as_u64().unwrap())
            .collect();
        assert_eq!(results, [1, 0]);
        let many: Vec<Value> = (0..MAX_MEMBERS)
            .map(|i| json!({"Member_Account": format!("m{i}")}))
            .collect();
        assert_eq!(add(many).unwrap_err().code, FULL);
        let info = groups
            .member_info(1, &body(json!({"GroupId": "g"})))
            .unwrap();
        assert_eq!(info["MemberNum"], 2, "the refused call changed nothing");
    }
}

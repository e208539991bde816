//! The emulator's accounts: `im_open_login_svc/account_import`, `multiaccount_import`,
//! `account_check`, `account_delete` and `openim/query_online_status`, answered with the
//! fields Tencent's pages give (cloud.tencent.com/document/product/269/1608, …/269/4919,
//! …/269/38417, …/269/36443, …/269/2566).
//!
//! A request's shape was checked by `rules` before it gets here. An app's admin accounts
//! exist without being imported, as at Tencent. The store is bounded: at most `MAX_ACCOUNTS`
//! accounts over all apps, the oldest import evicted first. No account is ever online: no
//! client logs in to the emulator.

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;

use serde_json::{Map, Value, json};

use crate::rules::Refusal;

/// Most accounts kept over all apps; an import past it evicts the oldest.
pub const MAX_ACCOUNTS: usize = 10_000;
/// The longest UserID, in bytes (…/269/1608).
pub const MAX_USER_ID_BYTES: usize = 32;
/// Tencent's code for an account that was never imported, in a per-account result
/// (`ResultItem`, `ErrorList`): 70107, "请求的用户账号不存在". Confirmed for account_delete
/// (the error table …/269/1671: "请求删除的 UserID 不存在"); that query_online_status and
/// batchsendmsg list the same code in `ErrorList` follows their pages' examples as
/// remembered, unconfirmed: check against …/269/2566 and …/269/1612.
pub const NOT_IMPORTED: u32 = 70107;

type Key = (u64, String);

/// Every imported account, keyed by SDKAppID and UserID.
#[derive(Default)]
pub struct Accounts {
    store: Mutex<Store>,
}

#[derive(Default)]
struct Store {
    known: HashSet<Key>,
    /// Import order, oldest first; may hold keys deleted since (skipped on eviction).
    age: VecDeque<Key>,
}

impl Store {
    fn insert(&mut self, key: Key) {
        if self.known.contains(&key) {
            return;
        }
        while self.known.len() >= MAX_ACCOUNTS {
            let Some(oldest) = self.age.pop_front() else {
                break;
            };
            self.known.remove(&oldest);
        }
        self.age.push_back(key.clone());
        self.known.insert(key);
    }

    fn remove(&mut self, key: &Key) -> bool {
        let removed = self.known.remove(key);
        if removed {
            self.age.retain(|k| k != key);
        }
        removed
    }
}

impl Accounts {
    /// Whether `user` of `sdkappid` was imported (and not deleted or evicted since).
    pub fn exists(&self, sdkappid: u64, user: &str) -> bool {
        self.lock().known.contains(&(sdkappid, user.to_owned()))
    }

    /// Imports `user`, as account_import does; a seed or a test may call it directly.
    pub fn import(&self, sdkappid: u64, user: &str) {
        self.lock().insert((sdkappid, user.to_owned()));
    }

    /// `account_import`: one account; importing it again is not an error.
    pub fn import_one(&self, sdkappid: u64, body: &Map<String, Value>) -> Result<Value, Refusal> {
        let user = body
            .get("UserID")
            .and_then(Value::as_str)
            .ok_or_else(|| Refusal::new(70402, "UserID is required: a string"))?;
        self.import(sdkappid, user);
        Ok(json!({}))
    }

    /// `multiaccount_import`: the accounts that could not be imported (empty, or over 32
    /// bytes) come back in `FailAccounts`; the others are imported.
    pub fn import_many(&self, sdkappid: u64, body: &Map<String, Value>) -> Result<Value, Refusal> {
        let mut failed = Vec::new();
        let mut store = self.lock();
        for user in strings(body.get("Accounts")) {
            if user.is_empty() || user.len() > MAX_USER_ID_BYTES {
                failed.push(user);
            } else {
                store.insert((sdkappid, user.to_owned()));
            }
        }
        // The page's example carries FailAccounts only when some failed (…/269/4919).
        if failed.is_empty() {
            return Ok(json!({}));
        }
        Ok(json!({ "FailAccounts": failed }))
    }

    /// `account_check`: each UserID with `AccountStatus` `Imported` or `NotImported`.
    pub fn check(&self, sdkappid: u64, body: &Map<String, Value>) -> Result<Value, Refusal> {
        let store = self.lock();
        let results: Vec<Value> = users(body.get("CheckItem"))
            .map(|user| {
                let known = store.known.contains(&(sdkappid, user.to_owned()));
                json!({
                    "UserID": user,
                    "ResultCode": 0,
                    "ResultInfo": "",
                    "AccountStatus": if known { "Imported" } else { "NotImported" },
                })
            })
            .collect();
        Ok(json!({ "ResultItem": results }))
    }

    /// `account_delete`: each UserID with its `ResultCode` (70107 when it was never imported).
    pub fn delete(&self, sdkappid: u64, body: &Map<String, Value>) -> Result<Value, Refusal> {
        let mut store = self.lock();
        let results: Vec<Value> = users(body.get("DeleteItem"))
            .map(|user| {
                let removed = store.remove(&(sdkappid, user.to_owned()));
                let (code, info) = if removed {
                    (0, "")
                } else {
                    (NOT_IMPORTED, "the account was never imported")
                };
                json!({"UserID": user, "ResultCode": code, "ResultInfo": info})
            })
            .collect();
        Ok(json!({ "ResultItem": results }))
    }

    /// `query_online_status`: every imported account is `Offline`; the others are in
    /// `ErrorList` with 70107.
    pub fn online_status(
        &self,
        sdkappid: u64,
        body: &Map<String, Value>,
    ) -> Result<Value, Refusal> {
        let store = self.lock();
        let (known, unknown): (Vec<&str>, Vec<&str>) = strings(body.get("To_Account"))
            .partition(|user| store.known.contains(&(sdkappid, (*user).to_owned())));
        let results: Vec<Value> = known
            .iter()
            .map(|user| json!({"To_Account": user, "Status": "Offline"}))
            .collect();
        let mut answer = json!({ "QueryResult": results });
        if !unknown.is_empty() {
            answer["ErrorList"] = unknown
                .iter()
                .map(|user| json!({"To_Account": user, "ErrorCode": NOT_IMPORTED}))
                .collect();
        }
        Ok(answer)
    }

    /// Forgets every account.
    pub fn reset(&self) {
        *self.lock() = Store::default();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().known.len()
    }
}

/// The strings of an array field (the rules checked its type).
fn strings(list: Option<&Value>) -> impl Iterator<Item = &str> {
    list.and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
}

/// The `UserID`s of an array of `{"UserID": ...}` objects.
fn users(list: Option<&Value>) -> impl Iterator<Item = &str> {
    list.and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|item| item.get("UserID").and_then(Value::as_str))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn import_check_and_delete_answer_per_account() {
        let accounts = Accounts::default();
        let long = "x".repeat(33);
        let answer = accounts
            .import_many(1, &body(json!({"Accounts": ["a", "", long, "b"]})))
            .unwrap();
        assert_eq!(answer["FailAccounts"], json!(["", long]));
        let checked = accounts
            .check(
                1,
                &body(json!({"CheckItem": [{"UserID": "a"}, {"UserID": "z"}]})),
            )
            .unwrap();
        assert_eq!(checked["ResultItem"][0]["AccountStatus"], "Imported");
        assert_eq!(checked["ResultItem"][1]["AccountStatus"], "NotImported");
        assert!(!accounts.exists(2, "a"), "accounts belong to their app");
        let deleted = accounts
            .delete(
                1,
                &body(json!({"DeleteItem": [{"UserID": "a"}, {"UserID": "z"}]})),
            )
            .unwrap();
        assert_eq!(deleted["ResultItem"][0]["ResultCode"], 0);
        assert_eq!(deleted["ResultItem"][1]["ResultCode"], 70107);
        assert!(!accounts.exists(1, "a") && accounts.exists(1, "b"));
    }

    #[test]
    fn online_status_lists_unknown_accounts_in_error_list() {
        let accounts = Accounts::default();
        accounts.import(1, "a");
        let answer = accounts
            .online_status(1, &body(json!({"To_Account": ["a", "nobody"]})))
            .unwrap();
        assert_eq!(
            answer["QueryResult"],
            json!([{"To_Account": "a", "Status": "Offline"}])
        );
        assert_eq!(
            answer["ErrorList"],
            json!([{"To_Account": "nobody", "ErrorCode": 70107}])
        );
    }

    #[test]
    fn past_the_cap_the_oldest_import_is_evicted() {
        let accounts = Accounts::default();
        for i in 0..=MAX_ACCOUNTS {
            accounts.import(1, &format!("u{i}"));
        }
        assert_eq!(accounts.len(), MAX_ACCOUNTS);
        assert!(!accounts.exists(1, "u0"));
        assert!(accounts.exists(1, &format!("u{MAX_ACCOUNTS}")));
        accounts.reset();
        assert_eq!(accounts.len(), 0);
    }
}

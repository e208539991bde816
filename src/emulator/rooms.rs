//! The emulator's room metadata store, with the limits that depend on the room's state.
//!
//! A request's own shape (key and value sizes, its key count, its values' total) is checked
//! by `rules` before it gets here. What only the store can know is checked here: a room holds
//! at most 10 keys and 16 KB of values *after* an update, and an update that would break
//! either changes nothing. Rooms exist from their first metadata (the emulator does not
//! require `create_room` first).

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use serde_json::{Map, Value, json};

use crate::rules::Refusal;

/// Most keys a room's metadata may hold.
pub const MAX_KEYS: usize = 10;
/// Most bytes all of a room's values may hold together.
pub const MAX_TOTAL_BYTES: usize = 16 * 1024;

type Metadata = BTreeMap<String, String>;

/// Every room's metadata, keyed by SDKAppID and RoomId.
#[derive(Default)]
pub struct Rooms {
    rooms: Mutex<HashMap<(u64, String), Metadata>>,
}

impl Rooms {
    /// `set_room_metadata`: adds or replaces keys, all or nothing.
    pub fn set(&self, sdkappid: u64, body: &Map<String, Value>) -> Result<Value, Refusal> {
        let room = room_id(body)?;
        let entries = metadata(body)?;
        let mut rooms = self.lock();
        let current = rooms.get(&(sdkappid, room.to_owned()));
        let mut updated = current.cloned().unwrap_or_default();
        for (key, value) in entries {
            updated.insert(key.to_owned(), value.to_owned());
        }
        if updated.len() > MAX_KEYS {
            return Err(Refusal::new(
                100500,
                format!(
                    "the room would hold {} keys; the limit is {MAX_KEYS}",
                    updated.len()
                ),
            ));
        }
        let total: usize = updated.values().map(String::len).sum();
        if total > MAX_TOTAL_BYTES {
            return Err(Refusal::new(
                100502,
                format!(
                    "the room's values would total {total} bytes; the limit is {MAX_TOTAL_BYTES}"
                ),
            ));
        }
        rooms.insert((sdkappid, room.to_owned()), updated);
        Ok(Value::Null)
    }

    /// `get_room_metadata`: the named keys, or all when `Keys` is absent or empty.
    pub fn get(&self, sdkappid: u64, body: &Map<String, Value>) -> Result<Value, Refusal> {
        let room = room_id(body)?;
        let wanted = match body.get("Keys") {
            None => Vec::new(),
            Some(_) => keys(body)?,
        };
        let rooms = self.lock();
        let metadata = rooms.get(&(sdkappid, room.to_owned()));
        let list: Vec<Value> = metadata
            .into_iter()
            .flatten()
            .filter(|(k, _)| wanted.is_empty() || wanted.contains(&k.as_str()))
            .map(|(k, v)| json!({"Key": k, "Value": v}))
            .collect();
        Ok(json!({ "Metadata": list }))
    }

    /// `del_room_metadata`: removes the named keys; refused when none of them exists.
    pub fn delete(&self, sdkappid: u64, body: &Map<String, Value>) -> Result<Value, Refusal> {
        let room = room_id(body)?;
        let names = keys(body)?;
        if names.is_empty() {
            return Err(Refusal::new(100002, "Keys must not be empty"));
        }
        let mut rooms = self.lock();
        let metadata = rooms.get_mut(&(sdkappid, room.to_owned()));
        let removed = metadata.map_or(0, |m| {
            names.iter().filter(|k| m.remove(**k).is_some()).count()
        });
        if removed == 0 {
            return Err(Refusal::new(100503, "none of the keys to delete exist"));
        }
        Ok(Value::Null)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(u64, String), Metadata>> {
        // A panic elsewhere cannot leave a half-applied update: updates are built aside first.
        self.rooms
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn room_id(body: &Map<String, Value>) -> Result<&str, Refusal> {
    body.get("RoomId")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| Refusal::new(100002, "RoomId is required: a non-empty string"))
}

fn keys(body: &Map<String, Value>) -> Result<Vec<&str>, Refusal> {
    let invalid = || Refusal::new(100002, "Keys must be an array of strings");
    body.get("Keys")
        .and_then(Value::as_array)
        .ok_or_else(invalid)?
        .iter()
        .map(|k| k.as_str().ok_or_else(invalid))
        .collect()
}

/// The request's `Metadata` entries; their limits were checked by the rules.
fn metadata(body: &Map<String, Value>) -> Result<Vec<(&str, &str)>, Refusal> {
    let invalid = || Refusal::new(100002, "Metadata must be an array of {Key, Value} strings");
    body.get("Metadata")
        .and_then(Value::as_array)
        .ok_or_else(invalid)?
        .iter()
        .map(|entry| {
            let field = |name: &str| entry.get(name).and_then(Value::as_str).ok_or_else(invalid);
            Ok((field("Key")?, field("Value")?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    fn set(rooms: &Rooms, entries: &[(&str, String)]) -> Result<Value, Refusal> {
        let list: Vec<Value> = entries
            .iter()
            .map(|(k, v)| json!({"Key": k, "Value": v}))
            .collect();
        rooms.set(1, &body(json!({"RoomId": "r", "Metadata": list})))
    }

    fn code(r: Result<Value, Refusal>) -> u32 {
        r.map_or_else(|e| e.code, |_| 0)
    }

    #[test]
    fn set_then_get_returns_the_values() {
        let rooms = Rooms::default();
        set(&rooms, &[("a", "1".into()), ("b", "2".into())]).unwrap();
        let got = rooms
            .get(1, &body(json!({"RoomId": "r", "Keys": ["b"]})))
            .unwrap();
        assert_eq!(got, json!({"Metadata": [{"Key": "b", "Value": "2"}]}));
        let other_app = rooms.get(2, &body(json!({"RoomId": "r"}))).unwrap();
        assert_eq!(other_app, json!({"Metadata": []}));
    }

    #[test]
    fn the_total_counts_the_room_after_the_update() {
        let rooms = Rooms::default();
        let names: Vec<String> = (0..8).map(|i| format!("k{i}")).collect();
        for name in &names {
            assert_eq!(code(set(&rooms, &[(name.as_str(), "x".repeat(2048))])), 0);
        }
        // 16384 bytes now; one more byte anywhere is over, and changes nothing.
        assert_eq!(code(set(&rooms, &[("extra", "x".into())])), 100502);
        assert_eq!(code(set(&rooms, &[("k0", "x".repeat(2047))])), 0);
        assert_eq!(code(set(&rooms, &[("extra", "x".into())])), 0);
    }

    #[test]
    fn an_eleventh_key_is_refused() {
        let rooms = Rooms::default();
        let entries: Vec<(String, String)> =
            (0..10).map(|i| (format!("k{i}"), "v".into())).collect();
        let refs: Vec<(&str, String)> = entries
            .iter()
            .map(|(k, v)| (k.as_str(), v.clone()))
            .collect();
        assert_eq!(code(set(&rooms, &refs)), 0);
        assert_eq!(code(set(&rooms, &[("k10", "v".into())])), 100500);
    }

    #[test]
    fn delete_refuses_when_no_key_exists() {
        let rooms = Rooms::default();
        set(&rooms, &[("a", "1".into())]).unwrap();
        let del = |keys: Value| rooms.delete(1, &body(json!({"RoomId": "r", "Keys": keys})));
        assert_eq!(code(del(json!(["zz"]))), 100503);
        assert_eq!(code(del(json!(["a", "zz"]))), 0);
        assert_eq!(code(del(json!(["a"]))), 100503);
    }
}

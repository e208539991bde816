//! The emulator's room metadata store, with the limits that depend on the room's state.
//!
//! A request's own shape (key and value sizes, its key count, its values' total) is checked
//! by `rules` before it gets here. What only the store can know is checked here: a room holds
//! at most 10 keys and 16 KB of values *after* an update, and an update that would break
//! either changes nothing. Rooms exist from their first metadata (the emulator does not
//! require `create_room` first).
//!
//! The store is bounded: a RoomId is at most 48 bytes (what `create_room` allows, so no
//! longer one can name a room), at most `MAX_ROOMS` rooms are kept, the oldest evicted
//! first, and a room whose last key is deleted is dropped.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;

use serde_json::{Map, Value, json};

use crate::rules::Refusal;

/// Most keys a room's metadata may hold.
pub const MAX_KEYS: usize = 10;
/// Most bytes all of a room's values may hold together.
pub const MAX_TOTAL_BYTES: usize = 16 * 1024;
/// Longest RoomId, in bytes (TENCENT.md §6, `create_room`).
pub const MAX_ROOM_ID_BYTES: usize = 48;
/// Most rooms kept; a new room past it evicts the oldest. With 16 KB of values each, at most
/// about 4 MiB of metadata.
pub const MAX_ROOMS: usize = 256;

type Metadata = BTreeMap<String, String>;
type Key = (u64, String);

/// Every room's metadata, keyed by SDKAppID and RoomId.
#[derive(Default)]
pub struct Rooms {
    rooms: Mutex<Store>,
}

/// The rooms and the order they were made in, oldest first.
#[derive(Default)]
struct Store {
    metadata: HashMap<Key, Metadata>,
    age: VecDeque<Key>,
}

impl Store {
    fn get(&self, key: &Key) -> Option<&Metadata> {
        self.metadata.get(key)
    }

    /// Stores `metadata` for `key`, evicting the oldest room when a new one is past the cap.
    fn insert(&mut self, key: Key, metadata: Metadata) {
        if !self.metadata.contains_key(&key) {
            if self.age.len() >= MAX_ROOMS
                && let Some(oldest) = self.age.pop_front()
            {
                self.metadata.remove(&oldest);
            }
            self.age.push_back(key.clone());
        }
        self.metadata.insert(key, metadata);
    }

    /// Removes `names` from the room; returns how many existed. An emptied room is dropped.
    fn remove_keys(&mut self, key: &Key, names: &[&str]) -> usize {
        let Some(metadata) = self.metadata.get_mut(key) else {
            return 0;
        };
        let removed = names
            .iter()
            .filter(|k| metadata.remove(**k).is_some())
            .count();
        if metadata.is_empty() {
            self.metadata.remove(key);
            self.age.retain(|k| k != key);
        }
        removed
    }
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
        let removed = self
            .lock()
            .remove_keys(&(sdkappid, room.to_owned()), &names);
        if removed == 0 {
            return Err(Refusal::new(100503, "none of the keys to delete exist"));
        }
        Ok(Value::Null)
    }

    /// Forgets every room.
    pub fn reset(&self) {
        *self.lock() = Store::default();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Store> {
        // A panic elsewhere cannot leave a half-applied update: updates are built aside first.
        self.rooms
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn room_id(body: &Map<String, Value>) -> Result<&str, Refusal> {
    let room = body
        .get("RoomId")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| Refusal::new(100002, "RoomId is required: a non-empty string"))?;
    if room.len() > MAX_ROOM_ID_BYTES {
        return Err(Refusal::new(
            100002,
            format!(
                "RoomId is {} bytes; the limit is {MAX_ROOM_ID_BYTES}",
                room.len()
            ),
        ));
    }
    Ok(room)
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
    fn a_room_id_over_48_bytes_is_refused_and_not_stored() {
        let rooms = Rooms::default();
        let long = |n: usize| {
            body(json!({"RoomId": "r".repeat(n), "Metadata": [{"Key": "k", "Value": "v"}]}))
        };
        assert_eq!(code(rooms.set(1, &long(48))), 0);
        assert_eq!(code(rooms.set(1, &long(49))), 100002);
        assert_eq!(rooms.lock().metadata.len(), 1);
    }

    #[test]
    fn past_the_room_cap_the_oldest_room_is_evicted() {
        let rooms = Rooms::default();
        let set = |room: String| {
            rooms.set(
                1,
                &body(json!({"RoomId": room, "Metadata": [{"Key": "k", "Value": "v"}]})),
            )
        };
        for i in 0..=MAX_ROOMS {
            assert_eq!(code(set(format!("room{i}"))), 0);
        }
        let store = rooms.lock();
        assert_eq!(store.metadata.len(), MAX_ROOMS);
        assert!(
            store.get(&(1, "room0".into())).is_none(),
            "the oldest went first"
        );
        assert!(store.get(&(1, format!("room{MAX_ROOMS}"))).is_some());
    }

    #[test]
    fn a_room_whose_last_key_is_deleted_is_dropped() {
        let rooms = Rooms::default();
        set(&rooms, &[("a", "1".into())]).unwrap();
        rooms
            .delete(1, &body(json!({"RoomId": "r", "Keys": ["a"]})))
            .unwrap();
        let store = rooms.lock();
        assert!(store.metadata.is_empty() && store.age.is_empty());
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

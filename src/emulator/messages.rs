//! The emulator's messages: counted as stored, with Tencent's duplicate suppression
//! (TENCENT.md §7). `openim/sendmsg` drops a repeat of the same (sender, `MsgSeq`,
//! `MsgRandom`, content) within 120 s; `send_group_msg` a repeat of the same `Random` to the
//! same group within 5 minutes. `MsgRandom` must fit in 32 bits (else 90005). Fingerprints
//! of recent messages are kept for their window, at most `MAX_TRACKED` (oldest dropped).

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json_borrow::Value;
use tokio::time::Instant;

use crate::api::Api;
use crate::limiter::table::dedup_window;
use crate::rules::Refusal;

/// Most message fingerprints kept at once.
pub const MAX_TRACKED: usize = 100_000;

/// Messages stored, and the fingerprints of recent ones.
#[derive(Default)]
pub struct Messages {
    stored: AtomicU64,
    recent: Mutex<Recent>,
}

#[derive(Default)]
struct Recent {
    seen: HashMap<u64, Instant>,
    order: VecDeque<(Instant, u64)>,
}

impl Messages {
    /// Stores the message `body` sends to `api`, unless it repeats one inside the API's
    /// window: whether it is new. APIs that send no message are left alone (new).
    pub fn store(
        &self,
        sdkappid: u64,
        api: &Api,
        body: &Value<'_>,
        now: Instant,
    ) -> Result<bool, Refusal> {
        let Some(fingerprint) = fingerprint(sdkappid, api, body)? else {
            return Ok(true);
        };
        let Some(window) = dedup_window(api.name()) else {
            return Ok(true);
        };
        let mut recent = self
            .recent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        while let Some((at, old)) = recent.order.front().copied()
            && (now.duration_since(at) >= window || recent.order.len() >= MAX_TRACKED)
        {
            recent.order.pop_front();
            if recent.seen.get(&old) == Some(&at) {
                recent.seen.remove(&old);
            }
        }
        if recent.seen.contains_key(&fingerprint) {
            return Ok(false);
        }
        recent.seen.insert(fingerprint, now);
        recent.order.push_back((now, fingerprint));
        self.stored.fetch_add(1, Ordering::Relaxed);
        Ok(true)
    }

    /// Forgets every fingerprint and the count.
    pub fn reset(&self) {
        self.stored.store(0, Ordering::Relaxed);
        *self
            .recent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Recent::default();
    }

    /// How many messages were stored.
    pub fn stored(&self) -> u64 {
        self.stored.load(Ordering::Relaxed)
    }
}

/// What makes a message the same as another for Tencent's duplicate check.
fn fingerprint(sdkappid: u64, api: &Api, body: &Value<'_>) -> Result<Option<u64>, Refusal> {
    let mut hasher = DefaultHasher::new();
    (sdkappid, api.name()).hash(&mut hasher);
    match api.name() {
        "openim/sendmsg" => {
            let random = body.get("MsgRandom");
            if !random.is_null() && random.as_u64().is_none_or(|n| n > u64::from(u32::MAX)) {
                return Err(Refusal::new(
                    90005,
                    "MsgRandom must be an integer of at most 4294967295",
                ));
            }
            body.get("From_Account").as_str().hash(&mut hasher);
            body.get("MsgSeq").as_u64().hash(&mut hasher);
            random.as_u64().hash(&mut hasher);
            format!("{:?}", body.get("MsgBody")).hash(&mut hasher);
        }
        "group_open_http_svc/send_group_msg" => {
            body.get("GroupId").as_str().hash(&mut hasher);
            body.get("Random").as_u64().hash(&mut hasher);
        }
        _ => return Ok(None),
    }
    Ok(Some(hasher.finish()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn send(messages: &Messages, body: &str, at: Instant) -> Result<bool, Refusal> {
        let api = Api::from_path("/v4/openim/sendmsg").unwrap();
        let value: Value = serde_json::from_str(body).unwrap();
        messages.store(1, &api, &value, at)
    }

    #[test]
    fn a_repeat_inside_the_window_is_stored_once() {
        let messages = Messages::default();
        let t0 = Instant::now();
        let body = r#"{"From_Account":"a","To_Account":"b","MsgSeq":1,"MsgRandom":7,"MsgBody":[{"MsgType":"TIMTextElem","MsgContent":{"Text":"hi"}}]}"#;
        send(&messages, body, t0).unwrap();
        send(&messages, body, t0 + Duration::from_secs(119)).unwrap();
        assert_eq!(messages.stored(), 1);
        send(&messages, &body.replace("\"hi\"", "\"ho\""), t0).unwrap();
        assert_eq!(messages.stored(), 2);
        send(&messages, body, t0 + Duration::from_secs(121)).unwrap();
        assert_eq!(messages.stored(), 3);
        let too_big = r#"{"From_Account":"a","MsgRandom":4294967296}"#;
        assert_eq!(send(&messages, too_big, t0).unwrap_err().code, 90005);
    }

    #[test]
    fn fingerprints_are_bounded() {
        let messages = Messages::default();
        let t0 = Instant::now();
        for i in 0..(MAX_TRACKED + 10) {
            let body = format!(r#"{{"From_Account":"a","MsgRandom":{i}}}"#);
            send(&messages, &body, t0).unwrap();
        }
        assert!(messages.recent.lock().unwrap().seen.len() <= MAX_TRACKED);
    }
}

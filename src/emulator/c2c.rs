//! The emulator's one-to-one messages: `openim/sendmsg`, `openim/batchsendmsg` and
//! `openim/admin_getroammsg`, answered with the fields Tencent's pages give
//! (cloud.tencent.com/document/product/269/2282, …/269/1612, …/269/42794).
//!
//! A message's `MsgKey` is `"<MsgSeq>_<MsgRandom>_<MsgTime>"` (TENCENT.md §8). A repeat that
//! Tencent drops (`Messages`, §7) is answered with the first one's `MsgTime` and `MsgKey`
//! and stored once. History is bounded: at most `MAX_HISTORY` messages over all apps and
//! conversations, the oldest dropped first.

use std::collections::VecDeque;
use std::sync::Mutex;

use serde_json::{Map, Value, json};

use super::accounts::NOT_IMPORTED;
use crate::rules::Refusal;

/// Most one-to-one messages kept over all apps; each is at most 12 KB of `MsgBody`.
pub const MAX_HISTORY: usize = 2048;
/// Most messages one admin_getroammsg answer holds (the page's example pages by `MaxCnt`;
/// the emulator caps it here).
pub const MAX_PAGE: usize = 100;
/// sendmsg's code for a `To_Account` that was never imported (…/269/2282; confirmed in
/// Tencent's error table …/269/1671 as its Web SDK carries it: "To_Account 没有注册或不存在").
pub const TO_NOT_IMPORTED: u32 = 90012;
/// The code for a `From_Account` that was never imported (…/269/2282: "缺少 From_Account
/// 字段或者 From_Account 账号不存在"; confirmed the same way).
pub const FROM_NOT_IMPORTED: u32 = 90008;

/// One stored message.
#[derive(Debug, Clone)]
pub struct Stored {
    sdkappid: u64,
    from: String,
    to: String,
    seq: u64,
    random: u64,
    time: u64,
    body: Value,
    custom: Option<Value>,
}

impl Stored {
    fn key(&self) -> String {
        format!("{}_{}_{}", self.seq, self.random, self.time)
    }

    fn between(&self, sdkappid: u64, a: &str, b: &str) -> bool {
        self.sdkappid == sdkappid
            && ((self.from == a && self.to == b) || (self.from == b && self.to == a))
    }

    fn roam(&self) -> Value {
        let mut item = json!({
            "From_Account": self.from,
            "To_Account": self.to,
            "MsgSeq": self.seq,
            "MsgRandom": self.random,
            "MsgTimeStamp": self.time,
            "MsgFlagBits": 0,
            "IsPeerRead": 0,
            "MsgKey": self.key(),
            "MsgBody": self.body,
        });
        if let Some(custom) = &self.custom {
            item["CloudCustomData"] = custom.clone();
        }
        item
    }
}

/// A message about to be sent: who, what, and when.
pub struct Outgoing<'a> {
    /// Its app.
    pub sdkappid: u64,
    /// Its sender (the admin when the body names none).
    pub from: &'a str,
    /// Its body.
    pub body: &'a Map<String, Value>,
    /// Unix seconds now.
    pub time: u64,
}

impl Outgoing<'_> {
    fn stored(&self, to: &str) -> Stored {
        let random = self
            .body
            .get("MsgRandom")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        let seq = self
            .body
            .get("MsgSeq")
            .and_then(Value::as_u64)
            .unwrap_or(random);
        Stored {
            sdkappid: self.sdkappid,
            from: self.from.to_owned(),
            to: to.to_owned(),
            seq,
            random,
            time: self.time,
            body: self.body.get("MsgBody").cloned().unwrap_or(json!([])),
            custom: self.body.get("CloudCustomData").cloned(),
        }
    }
}

/// Every app's one-to-one messages, oldest first.
#[derive(Default)]
pub struct C2c {
    history: Mutex<VecDeque<Stored>>,
}

impl C2c {
    /// `sendmsg`, once its accounts are known to exist: stores the message unless it is a
    /// repeat (`fresh` false), and answers `MsgTime` and `MsgKey`.
    pub fn send(&self, out: &Outgoing<'_>, to: &str, fresh: bool) -> Value {
        let message = out.stored(to);
        let mut history = self.lock();
        if !fresh
            && let Some(first) = history.iter().rev().find(|m| {
                m.between(out.sdkappid, &message.from, to)
                    && m.from == message.from
                    && (m.seq, m.random) == (message.seq, message.random)
            })
        {
            return json!({"MsgTime": first.time, "MsgKey": first.key()});
        }
        let answer = json!({"MsgTime": message.time, "MsgKey": message.key()});
        if fresh {
            push(&mut history, message);
        }
        answer
    }

    /// `batchsendmsg`: the message to each recipient in `known`; the others listed in
    /// `ErrorList`. When none was delivered the caller refuses the whole request.
    pub fn batch(&self, out: &Outgoing<'_>, known: &[&str], unknown: &[&str]) -> Value {
        let mut history = self.lock();
        let mut key = String::new();
        for to in known {
            let message = out.stored(to);
            key = message.key();
            push(&mut history, message);
        }
        let mut answer = json!({ "MsgKey": key });
        if !unknown.is_empty() {
            // The page's partial-failure example: ActionStatus OK, ErrorCode 0, and the
            // recipients that failed in ErrorList with their codes (…/269/1612).
            answer["ErrorList"] = unknown
                .iter()
                .map(|to| json!({"To_Account": to, "ErrorCode": NOT_IMPORTED}))
                .collect();
        }
        answer
    }

    /// `admin_getroammsg`: the conversation's messages in `[MinTime, MaxTime]`, newest first,
    /// at most `MaxCnt` (and `MAX_PAGE`); the next page starts after `LastMsgKey`, with
    /// `MaxTime` set to the `LastMsgTime` answered (…/269/42794).
    pub fn roam(&self, sdkappid: u64, body: &Map<String, Value>) -> Value {
        let text = |name: &str| body.get(name).and_then(Value::as_str).unwrap_or("");
        let number = |name: &str| body.get(name).and_then(Value::as_u64).unwrap_or(0);
        let (me, peer) = (text("Operator_Account"), text("Peer_Account"));
        let (min, max) = (number("MinTime"), number("MaxTime"));
        let count = usize::try_from(number("MaxCnt"))
            .unwrap_or(MAX_PAGE)
            .min(MAX_PAGE);
        let after = text("LastMsgKey");
        let history = self.lock();
        let mut range = history
            .iter()
            .rev()
            .filter(|m| m.between(sdkappid, me, peer) && (min..=max).contains(&m.time));
        if !after.is_empty() {
            // Skip to just past the last message of the previous page.
            let mut skipped = range.by_ref().skip_while(|m| m.key() != after);
            skipped.next();
            return page(skipped.collect(), count);
        }
        page(range.collect(), count)
    }

    /// Forgets every message.
    pub fn reset(&self) {
        self.lock().clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Stored>> {
        self.history
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn push(history: &mut VecDeque<Stored>, message: Stored) {
    if history.len() >= MAX_HISTORY {
        history.pop_front();
    }
    history.push_back(message);
}

/// One page of `matching` (newest first), with `Complete` 1 when nothing is left.
fn page(matching: Vec<&Stored>, count: usize) -> Value {
    let complete = matching.len() <= count;
    let shown = &matching[..matching.len().min(count)];
    let last = shown.last();
    json!({
        "Complete": u8::from(complete),
        "MsgCnt": shown.len(),
        "LastMsgTime": last.map_or(0, |m| m.time),
        "LastMsgKey": last.map_or_else(String::new, |m| m.key()),
        "MsgList": shown.iter().map(|m| m.roam()).collect::<Vec<_>>(),
    })
}

/// `refusal` when `user` was never imported, for the sender and recipient checks.
pub fn require(known: bool, code: u32, user: &str) -> Result<(), Refusal> {
    if known {
        return Ok(());
    }
    Err(Refusal::new(
        code,
        format!("{user} was never imported (account_import first)"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    fn send(c2c: &C2c, random: u64, time: u64, fresh: bool) -> Value {
        let b = body(
            json!({"MsgRandom": random, "MsgSeq": 5, "MsgBody": [{"MsgType": "TIMTextElem"}]}),
        );
        let out = Outgoing {
            sdkappid: 1,
            from: "a",
            body: &b,
            time,
        };
        c2c.send(&out, "b", fresh)
    }

    #[test]
    fn a_repeat_answers_the_first_key_and_is_stored_once() {
        let c2c = C2c::default();
        let first = send(&c2c, 7, 100, true);
        assert_eq!(first["MsgKey"], "5_7_100");
        let again = send(&c2c, 7, 150, false);
        assert_eq!(again, first);
        assert_eq!(c2c.lock().len(), 1);
    }

    #[test]
    fn history_pages_newest_first_and_is_bounded() {
        let c2c = C2c::default();
        for i in 0..5 {
            send(&c2c, i, 100 + i, true);
        }
        let ask = |last: &str| {
            c2c.roam(
                1,
                &body(
                    json!({"Operator_Account": "b", "Peer_Account": "a", "MaxCnt": 2,
                    "MinTime": 0, "MaxTime": 1000, "LastMsgKey": last}),
                ),
            )
        };
        let first = ask("");
        assert_eq!(
            (first["Complete"].as_u64(), first["MsgCnt"].as_u64()),
            (Some(0), Some(2))
        );
        assert_eq!(first["MsgList"][0]["MsgTimeStamp"], 104);
        let second = ask(first["LastMsgKey"].as_str().unwrap());
        assert_eq!(second["MsgList"][0]["MsgTimeStamp"], 102);
        let third = ask(second["LastMsgKey"].as_str().unwrap());
        assert_eq!(
            (third["Complete"].as_u64(), third["MsgCnt"].as_u64()),
            (Some(1), Some(1))
        );
        for i in 0..MAX_HISTORY as u64 {
            send(&c2c, 1000 + i, 200, true);
        }
        assert_eq!(c2c.lock().len(), MAX_HISTORY);
    }
}

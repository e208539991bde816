//! The callbacks Tencent would post for what the emulator carries out, to timgate's callback
//! listener, signed with the app's callback token (TENCENT.md §8).
//!
//! An app gets them when it has `[[apps.callbacks]]` routes, for the commands its routes
//! name (as if the console's switches were on for exactly those): `openim/sendmsg` posts
//! `C2C.CallbackBeforeSendMsg` and, once the message is stored, `C2C.CallbackAfterSendMsg`;
//! `group_open_http_svc/send_group_msg` the `Group.` pair; `live_engine_http_srv/create_room`
//! and `destroy_room` `Live.CallbackAfterCreateRoom` and `Live.CallbackAfterDestroyRoom`;
//! a group's lifecycle its after-event callbacks (`Group.CallbackAfterCreateGroup`,
//! `AfterGroupDestroyed`, `AfterNewMemberJoin`, `AfterMemberExit`: [`Notifier::notify`]).
//! Nothing is posted for a request Tencent refuses before the event (its rules, an account
//! or group that does not exist), nor for a seed's calls.
//! A before-send answer is honoured as Tencent documents it: `ErrorCode` 1 refuses the
//! message (the caller gets 20006 for a C2C message, 10016 for a group one), 2 drops it
//! silently, a code in 120001–130000 refuses it with that code and `ErrorInfo`; 0 sends it,
//! with the answer's `MsgBody` and `CloudCustomData` when it changes them. No answer within
//! Tencent's 2 s, or one that is not a 200, sends the message as it was. An after-callback is
//! not waited for; at most `MAX_AFTER` are in flight, beyond that one is dropped and logged.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Map, Value};
use tokio::sync::Semaphore;
use tracing::warn;

use super::events;
use crate::api::glob;
use crate::callback::verify;
use crate::config::App;
use crate::rules::Refusal;
use crate::usersig::unix_now;

/// How long Tencent waits for a before-event callback.
pub const BEFORE_DEADLINE: Duration = Duration::from_secs(2);
/// How long an after-event callback may take.
const AFTER_DEADLINE: Duration = Duration::from_secs(5);
/// After-event callbacks in flight at once.
const MAX_AFTER: usize = 64;
/// The largest answer read.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// Posts the callbacks of the apps that have routes.
pub struct Notifier {
    target: SocketAddr,
    client: Client<HttpConnector, Full<Bytes>>,
    apps: HashMap<u64, Subscriber>,
    after: Arc<Semaphore>,
    seq: AtomicU64,
}

/// An app's token and the commands its routes name.
struct Subscriber {
    token: Option<String>,
    patterns: Vec<String>,
}

/// The callbacks of one request: a before-event one (with the code a refusal answers), and
/// the after-event one.
pub struct Event {
    sdkappid: u64,
    before: Option<(Value, u32)>,
    after: Value,
}

/// What a before-event answer decided.
pub enum Verdict {
    /// Go on, with these fields of the event replaced (`MsgBody`, `CloudCustomData`).
    Go(Map<String, Value>),
    /// Refused: the caller gets this.
    Deny(Refusal),
    /// Dropped without a word: the caller is told it was sent.
    Discard,
}

impl Notifier {
    /// A notifier posting to `target` for the apps among `apps` that have routes; `None`
    /// when none has.
    pub fn new(apps: &[App], target: SocketAddr) -> Option<Notifier> {
        let apps: HashMap<u64, Subscriber> = apps
            .iter()
            .filter(|app| !app.callbacks.routes.is_empty())
            .map(|app| {
                let callbacks = &app.callbacks;
                let subscriber = Subscriber {
                    token: callbacks
                        .token
                        .as_ref()
                        .map(|t| t.token.expose().to_owned()),
                    patterns: callbacks
                        .routes
                        .iter()
                        .flat_map(|r| r.commands.clone())
                        .collect(),
                };
                (app.sdkappid, subscriber)
            })
            .collect();
        (!apps.is_empty()).then(|| Notifier {
            target,
            client: Client::builder(TokioExecutor::new()).build_http(),
            apps,
            after: Arc::new(Semaphore::new(MAX_AFTER)),
            seq: AtomicU64::new(1),
        })
    }

    /// The callbacks `api` called by `operator` with `body` makes, if the app has routes
    /// for them.
    pub fn event(
        &self,
        sdkappid: u64,
        api: &str,
        body: &Map<String, Value>,
        operator: &str,
    ) -> Option<Event> {
        let subscriber = self.apps.get(&sdkappid)?;
        let wanted = |command: &str| subscriber.patterns.iter().any(|p| glob(p, command));
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let (before, after) = match api {
            "openim/sendmsg" => events::c2c(body, operator),
            "group_open_http_svc/send_group_msg" => events::group(body, operator, seq),
            "live_engine_http_srv/create_room" => (None, events::created(body, operator)),
            "live_engine_http_srv/destroy_room" => (None, events::destroyed(body, operator)),
            _ => return None,
        };
        let before = before.filter(|(b, _)| wanted(command(b)));
        let after_wanted = wanted(command(&after));
        if before.is_none() && !after_wanted {
            return None;
        }
        let after = if after_wanted { after } else { Value::Null };
        Some(Event {
            sdkappid,
            before,
            after,
        })
    }

    /// Posts the before-event callback, if any, and reads its answer as Tencent does.
    pub async fn before(&self, event: &Event) -> Verdict {
        let Some((body, refused_with)) = &event.before else {
            return Verdict::Go(Map::new());
        };
        let answer = tokio::time::timeout(BEFORE_DEADLINE, self.post(event.sdkappid, body)).await;
        match answer {
            Ok(Some(answer)) => verdict(&answer, *refused_with),
            // Late or failed: Tencent goes on without the answer.
            _ => Verdict::Go(Map::new()),
        }
    }

    /// Whether app `sdkappid` has routes, and so gets callbacks at all.
    pub fn subscribed(&self, sdkappid: u64) -> bool {
        self.apps.contains_key(&sdkappid)
    }

    /// Posts the after-event callback, if any, with `changes` applied; not waited for.
    pub fn after(self: &Arc<Self>, event: Event, changes: Map<String, Value>) {
        let Event {
            sdkappid,
            mut after,
            ..
        } = event;
        if after.is_null() {
            return;
        }
        if let Some(fields) = after.as_object_mut() {
            fields.extend(changes);
        }
        self.spawn(sdkappid, after);
    }

    /// Posts `body`, an after-event callback of its own (a group's lifecycle), when the app's
    /// routes name its command; not waited for.
    pub fn notify(self: &Arc<Self>, sdkappid: u64, body: Value) {
        let wanted = self
            .apps
            .get(&sdkappid)
            .is_some_and(|subscriber| subscriber.patterns.iter().any(|p| glob(p, command(&body))));
        if wanted {
            self.spawn(sdkappid, body);
        }
    }

    /// Posts `after` in the background, within `MAX_AFTER` in flight.
    fn spawn(self: &Arc<Self>, sdkappid: u64, after: Value) {
        let Ok(permit) = self.after.clone().try_acquire_owned() else {
            warn!(
                sdkappid,
                "emulator: {MAX_AFTER} after-event callbacks in flight; one dropped"
            );
            return;
        };
        let notifier = self.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(AFTER_DEADLINE, notifier.post(sdkappid, &after)).await;
            drop(permit);
        });
    }

    /// Posts `body` as app `sdkappid`'s callback; the answer when it is a 200.
    async fn post(&self, sdkappid: u64, body: &Value) -> Option<Bytes> {
        let subscriber = self.apps.get(&sdkappid)?;
        let query = verify::query(
            sdkappid,
            command(body),
            subscriber.token.as_deref(),
            unix_now(),
        );
        let mut request = Request::new(Full::new(Bytes::from(body.to_string())));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = format!("http://{}/?{query}", self.target).parse().ok()?;
        request
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let response = self.client.request(request).await.ok()?;
        if response.status() != StatusCode::OK {
            return None;
        }
        let body = Limited::new(response.into_body(), MAX_ANSWER_BYTES);
        Some(body.collect().await.ok()?.to_bytes())
    }
}

/// A callback body's `CallbackCommand`.
fn command(body: &Value) -> &str {
    body["CallbackCommand"].as_str().unwrap_or("")
}

/// What a before-event `answer` decides; a refusal answers `refused_with`.
fn verdict(answer: &[u8], refused_with: u32) -> Verdict {
    let Ok(Value::Object(mut answer)) = serde_json::from_slice::<Value>(answer) else {
        return Verdict::Go(Map::new());
    };
    let info = answer
        .get("ErrorInfo")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    match answer.get("ErrorCode").and_then(Value::as_u64) {
        Some(1) => Verdict::Deny(Refusal::new(
            refused_with,
            "the before-send callback refused the message",
        )),
        Some(2) => Verdict::Discard,
        Some(code @ 120_001..=130_000) => Verdict::Deny(Refusal::new(
            u32::try_from(code).unwrap_or(refused_with),
            info,
        )),
        _ => {
            answer.retain(|name, _| name == "MsgBody" || name == "CloudCustomData");
            Verdict::Go(answer)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(verdict: Verdict) -> Option<u32> {
        match verdict {
            Verdict::Deny(refusal) => Some(refusal.code),
            Verdict::Go(_) | Verdict::Discard => None,
        }
    }

    #[test]
    fn before_send_answers_are_read_as_tencent_documents_them() {
        let ok = br#"{"ActionStatus":"OK","ErrorInfo":"","ErrorCode":0}"#;
        assert!(matches!(verdict(ok, 20006), Verdict::Go(changes) if changes.is_empty()));
        let deny = br#"{"ActionStatus":"OK","ErrorInfo":"","ErrorCode":1}"#;
        assert_eq!(code(verdict(deny, 20006)), Some(20006));
        assert_eq!(code(verdict(deny, 10016)), Some(10016));
        assert!(matches!(
            verdict(br#"{"ErrorCode":2}"#, 20006),
            Verdict::Discard
        ));
        let own = br#"{"ErrorCode":120123,"ErrorInfo":"not here"}"#;
        let Verdict::Deny(refusal) = verdict(own, 20006) else {
            panic!("a code in 120001-130000 refuses");
        };
        assert_eq!((refusal.code, refusal.info.as_str()), (120123, "not here"));
        let changed = br#"{"ErrorCode":0,"MsgBody":[{"MsgType":"TIMTextElem"}],"Other":1}"#;
        let Verdict::Go(changes) = verdict(changed, 20006) else {
            panic!("0 sends");
        };
        assert_eq!(changes.keys().collect::<Vec<_>>(), ["MsgBody"]);
        assert!(matches!(verdict(b"not json", 20006), Verdict::Go(_)));
    }
}

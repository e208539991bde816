//! A stand-in for Tencent's REST API, for local runs, tests and benchmarks.
//!
//! It checks a request as Tencent does — method, path, query parameters, SDKAppID, UserSig
//! (with our own `usersig::verify`), admin rights, call frequency (sliding one-second windows),
//! injected faults, JSON body, then the API's rules from the same table the gateway uses —
//! and answers Tencent's codes when something is wrong. The room metadata APIs, the Chat
//! accounts ([`accounts`]), one-to-one messages ([`c2c`]) and groups ([`groups`]) work on
//! bounded in-memory stores; every other API answers OK. Like Tencent, it answers HTTP 200
//! with the envelope for every API-level outcome, each with a fresh `RequestId`; a Chat API's
//! own fields sit beside the envelope's, a live room API's under `Response`.
//!
//! `POST /_emulator/reset` forgets every store; `POST /_emulator/clock` with
//! `{"AdvanceSeconds": N}` moves the emulator's clock (message times and Tencent's duplicate
//! windows) forward, so a test can step past a window without waiting for it.
//!
//! With a callback listener to post to, it sends the callbacks Tencent would send for the
//! apps that have callback routes ([`callbacks`]), and `/_emulator/moderate` stands in for
//! a service behind them.

mod accounts;
mod c2c;
mod callbacks;
mod events;
mod groups;
mod limits;
mod messages;
mod rooms;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tokio::time::Instant;

use crate::api::Api;
use crate::body::{self, Budget, Held};
use crate::config::{App, SecretKey, Seed};
use crate::error::json_response;
use crate::json;
use crate::limiter;
use crate::rules::{self, Refusal};
use crate::usersig::{self, VerifyError};

pub use accounts::{Accounts, MAX_ACCOUNTS};
pub use c2c::{C2c, MAX_HISTORY};
pub use callbacks::{BEFORE_DEADLINE, Notifier};
pub use groups::{FIRST_SERIAL, Groups, MAX_GROUP_HISTORY, MAX_GROUPS, MAX_MEMBERS};
pub use limits::Limits;
pub use messages::Messages;
pub use rooms::Rooms;

/// The largest body the emulator reads.
const MAX_BODY_BYTES: usize = 1024 * 1024;
/// Body bytes the emulator holds at once, across all connections.
const MAX_BODY_BYTES_IN_FLIGHT: usize = 8 * 1024 * 1024;
/// How long a caller may take to send its body.
const BODY_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// One emulated app: its key and its admin accounts.
struct Tenant {
    key: SecretKey,
    admins: Vec<String>,
}

/// The emulator's state: known apps, their limits, the rooms' metadata and injected faults.
pub struct Emulator {
    tenants: HashMap<u64, Tenant>,
    limits: Limits,
    rooms: Rooms,
    messages: Messages,
    accounts: Accounts,
    c2c: C2c,
    groups: Groups,
    /// Seconds the emulator's clock runs ahead of the real one (`/_emulator/clock`).
    ahead: AtomicU64,
    faults: Mutex<HashMap<Api, Fault>>,
    seq: AtomicU64,
    bodies: Budget,
    /// Posts the callbacks of apps with routes, when there is a listener to post to.
    notifier: Option<Arc<Notifier>>,
    /// Carried out on the empty emulator, at its start and after each reset.
    seed: Option<Seed>,
}

/// A seed call the emulator refused; names the file, the call's place and Tencent's answer.
#[derive(Debug, thiserror::Error)]
#[error("emulator.seed: {path}, call {call} ({api}) was refused: ErrorCode {code}: {info}")]
pub struct SeedRefused {
    path: String,
    call: usize,
    api: String,
    code: u32,
    info: String,
}

/// An injected failure: the next `times` requests for an API answer `code`; with code 0,
/// they are carried out and answered only after `delay_ms` (a timeout after receipt).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct Fault {
    /// The ErrorCode to answer, e.g. 100001.
    #[serde(rename = "ErrorCode")]
    pub code: u32,
    /// How many requests answer it before the API behaves again.
    #[serde(rename = "Times")]
    pub times: u32,
    /// How long to hold the answer of a request carried out (code 0).
    #[serde(rename = "DelayMs", default)]
    pub delay_ms: u64,
}

/// The path of the emulator's fault-injection endpoint.
pub const FAULTS_PATH: &str = "/_emulator/faults";

/// The most APIs with a pending fault at once; a spent fault gives its place up. Each `Api`
/// names a valid `service/command` of at most `api::MAX_NAME_BYTES`.
pub const MAX_FAULTS: usize = 64;

/// A validated request's coordinates.
struct Caller {
    sdkappid: u64,
    /// The admin account it was signed as.
    identifier: String,
}

impl Emulator {
    /// An emulator that knows `apps` (each app's identifier is its admin account).
    pub fn new(apps: &[App]) -> Emulator {
        let mut tenants: HashMap<u64, Tenant> = HashMap::new();
        for app in apps {
            let tenant = tenants.entry(app.sdkappid).or_insert_with(|| Tenant {
                key: app.secret_key.clone(),
                admins: Vec::new(),
            });
            tenant.admins.push(app.identifier.clone());
        }
        Emulator {
            tenants,
            limits: Limits::new(apps),
            rooms: Rooms::default(),
            messages: Messages::default(),
            accounts: Accounts::default(),
            c2c: C2c::default(),
            groups: Groups::default(),
            ahead: AtomicU64::new(0),
            faults: Mutex::default(),
            seq: AtomicU64::new(1),
            bodies: Budget::new(MAX_BODY_BYTES_IN_FLIGHT),
            notifier: None,
            seed: None,
        }
    }

    /// The same emulator with `seed`'s calls carried out in order, before any callback could
    /// be posted for them; they are carried out again after each reset. Fails at the first
    /// call refused (its rules, an unknown account, a cap).
    pub fn with_seed(self, seed: Option<&Seed>) -> Result<Emulator, SeedRefused> {
        let emulator = Emulator {
            seed: seed.cloned(),
            ..self
        };
        emulator.plant()?;
        Ok(emulator)
    }

    /// Carries out the seed's calls, as each app's first admin.
    fn plant(&self) -> Result<(), SeedRefused> {
        let Some(seed) = &self.seed else {
            return Ok(());
        };
        for (i, call) in seed.calls.iter().enumerate() {
            self.execute(call.sdkappid, &call.api, &call.body)
                .map_err(|refusal| SeedRefused {
                    path: seed.path.clone(),
                    call: i,
                    api: call.api.name().to_owned(),
                    code: refusal.code,
                    info: refusal.info,
                })?;
        }
        Ok(())
    }

    /// The same emulator, posting the callbacks of `apps` that have routes to the callback
    /// listener at `target`, if any.
    pub fn with_callbacks(self, apps: &[App], target: Option<SocketAddr>) -> Emulator {
        let notifier = target
            .and_then(|target| Notifier::new(apps, target))
            .map(Arc::new);
        Emulator { notifier, ..self }
    }

    fn request_id(&self) -> String {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        format!("Id-{:032x}-O-Seq-{seq}", rand::random::<u128>())
    }

    /// Checks the URL part of a request: parameters, app, UserSig, admin rights.
    fn authenticate(&self, query: Option<&str>, now: u64) -> Result<Caller, Refusal> {
        let params: HashMap<String, String> =
            form_urlencoded::parse(query.unwrap_or("").as_bytes())
                .into_owned()
                .collect();
        let param = |name: &str| {
            params
                .get(name)
                .filter(|v| !v.is_empty())
                .ok_or_else(|| Refusal::new(60002, format!("URL parameter {name} is missing")))
        };
        let sdkappid: u64 = param("sdkappid")?
            .parse()
            .map_err(|_| Refusal::new(60002, "URL parameter sdkappid is not a number"))?;
        let identifier = param("identifier")?;
        let token = param("usersig")?;
        param("random")?.parse::<u32>().map_err(|_| {
            Refusal::new(
                60002,
                "URL parameter random is not a 32-bit unsigned integer",
            )
        })?;
        if param("contenttype")? != "json" {
            return Err(Refusal::new(
                60002,
                "URL parameter contenttype must be json",
            ));
        }
        let tenant = self
            .tenants
            .get(&sdkappid)
            .ok_or_else(|| Refusal::new(60006, format!("SDKAppID {sdkappid} is invalid")))?;
        usersig::verify(&tenant.key, token, sdkappid, identifier, now).map_err(refusal_for)?;
        if !tenant.admins.iter().any(|a| a == identifier) {
            return Err(Refusal::new(
                60010,
                format!("{identifier} is not an App admin"),
            ));
        }
        Ok(Caller {
            sdkappid,
            identifier: identifier.clone(),
        })
    }

    /// Makes the next `fault.times` requests for `api` answer `fault.code`; refused when
    /// `MAX_FAULTS` other APIs still have faults pending.
    pub fn inject(&self, api: Api, fault: Fault) -> Result<(), Refusal> {
        let mut faults = self.lock_faults();
        if faults.len() >= MAX_FAULTS && !faults.contains_key(&api) {
            faults.retain(|_, pending| pending.times > 0);
        }
        if faults.len() >= MAX_FAULTS && !faults.contains_key(&api) {
            return Err(Refusal::new(
                60002,
                format!("the emulator holds faults for at most {MAX_FAULTS} APIs at once"),
            ));
        }
        faults.insert(api, fault);
        Ok(())
    }

    /// Answers with an injected fault for `api`, if one is pending; or says how long to
    /// hold the answer of a request carried out.
    fn fault(&self, api: &Api) -> Result<Duration, Refusal> {
        let mut faults = self.lock_faults();
        let Some(fault) = faults.get_mut(api).filter(|f| f.times > 0) else {
            return Ok(Duration::ZERO);
        };
        fault.times -= 1;
        if fault.code == 0 {
            return Ok(Duration::from_millis(fault.delay_ms));
        }
        Err(Refusal::new(fault.code, "injected by the emulator"))
    }

    /// How many messages were stored (a repeat Tencent drops is not).
    pub fn messages_stored(&self) -> u64 {
        self.messages.stored()
    }

    fn lock_faults(&self) -> std::sync::MutexGuard<'_, HashMap<Api, Fault>> {
        self.faults
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Carries out an authenticated request's `body` as app `sdkappid`'s first admin: the
    /// API's rules (the same table the gateway checks), then the store. Returns the API's
    /// answer fields (a live room API's under `Response`).
    pub fn execute(&self, sdkappid: u64, api: &Api, body: &[u8]) -> Result<Value, Refusal> {
        let parsed = json::parse(body).map_err(not_json)?;
        let admin = self
            .tenants
            .get(&sdkappid)
            .and_then(|t| t.admins.first())
            .cloned()
            .unwrap_or_default();
        let caller = Caller {
            sdkappid,
            identifier: admin,
        };
        self.carry_out(&caller, api, &parsed)
    }

    /// The accounts store, for seeding and tests.
    pub fn accounts(&self) -> &Accounts {
        &self.accounts
    }

    /// Forgets every room, account, message and group, and sets the clock back.
    pub fn reset(&self) {
        self.rooms.reset();
        self.messages.reset();
        self.accounts.reset();
        self.c2c.reset();
        self.groups.reset();
        self.ahead.store(0, Ordering::Relaxed);
        if let Err(refused) = self.plant() {
            // It was carried out on an empty emulator at the start: only a change of the
            // emulator's own rules between then and now could refuse it.
            tracing::warn!(error = %refused, "emulator: the seed was refused after a reset");
        }
    }

    /// Moves the emulator's clock `seconds` ahead.
    pub fn advance(&self, seconds: u64) {
        self.ahead.fetch_add(seconds, Ordering::Relaxed);
    }

    fn now(&self) -> (Instant, u64) {
        let ahead = self.ahead.load(Ordering::Relaxed);
        (
            Instant::now() + Duration::from_secs(ahead),
            usersig::unix_now() + ahead,
        )
    }

    /// Checks a parsed body against the API's rules, then carries it out.
    fn carry_out(
        &self,
        caller: &Caller,
        api: &Api,
        parsed: &serde_json_borrow::Value<'_>,
    ) -> Result<Value, Refusal> {
        if let Some(rules) = rules::for_api(api.name()) {
            rules::check(rules, parsed)?;
        }
        let Some(object) = parsed.as_object() else {
            return Err(Refusal::new(60003, "request JSON must be an object"));
        };
        let (now, unix) = self.now();
        // Counted (and remembered for Tencent's duplicate window) once the message is
        // known to go out: a refused one leaves no fingerprint.
        let fresh = || self.messages.store(caller.sdkappid, api, parsed, now);
        let body = Map::from(object);
        let sdkappid = caller.sdkappid;
        let room = |answered: Result<Value, Refusal>| {
            answered.map(|v| {
                if v.is_null() {
                    v
                } else {
                    json!({ "Response": v })
                }
            })
        };
        match api.name() {
            "live_engine_http_srv/set_room_metadata" => room(self.rooms.set(sdkappid, &body)),
            "live_engine_http_srv/get_room_metadata" => room(self.rooms.get(sdkappid, &body)),
            "live_engine_http_srv/del_room_metadata" => room(self.rooms.delete(sdkappid, &body)),
            name => self.chat(name, caller, &body, (unix, &fresh)),
        }
    }

    /// The Chat APIs the emulator keeps state for; every other API answers OK.
    fn chat(
        &self,
        name: &str,
        caller: &Caller,
        body: &Map<String, Value>,
        (unix, fresh): (u64, Fresh<'_>),
    ) -> Result<Value, Refusal> {
        let sdkappid = caller.sdkappid;
        let asker = groups::Asker {
            sdkappid,
            admin: &caller.identifier,
            time: unix,
        };
        let known = |user: &str| self.known(caller, user);
        match name {
            "im_open_login_svc/account_import" => self.accounts.import_one(sdkappid, body),
            "im_open_login_svc/multiaccount_import" => self.accounts.import_many(sdkappid, body),
            "im_open_login_svc/account_check" => self.accounts.check(sdkappid, body),
            "im_open_login_svc/account_delete" => self.accounts.delete(sdkappid, body),
            "openim/query_online_status" => self.accounts.online_status(sdkappid, body),
            "openim/sendmsg" => self.send(caller, body, unix, fresh),
            "openim/batchsendmsg" => self.batch(caller, body, unix),
            "openim/admin_getroammsg" => Ok(self.c2c.roam(sdkappid, body)),
            "group_open_http_svc/create_group" => self.groups.create(&asker, body, &known),
            "group_open_http_svc/destroy_group" => self.groups.destroy(sdkappid, body),
            "group_open_http_svc/add_group_member" => self.groups.add(&asker, body, &known),
            "group_open_http_svc/delete_group_member" => self.groups.remove(sdkappid, body),
            "group_open_http_svc/get_group_info" => self.groups.info(sdkappid, body),
            "group_open_http_svc/get_group_member_info" => self.groups.member_info(sdkappid, body),
            "group_open_http_svc/get_appid_group_list" => self.groups.list(sdkappid, body),
            "group_open_http_svc/send_group_msg" => {
                self.group_exists(caller, body)?;
                self.groups.send(&asker, body, fresh()?)
            }
            "group_open_http_svc/group_msg_get_simple" => self.groups.history(sdkappid, body),
            _ => Ok(Value::Null),
        }
    }

    /// Whether `user` exists for the caller's app: imported, or one of its admins.
    fn known(&self, caller: &Caller, user: &str) -> bool {
        self.accounts.exists(caller.sdkappid, user)
            || self
                .tenants
                .get(&caller.sdkappid)
                .is_some_and(|t| t.admins.iter().any(|a| a == user))
    }

    /// What Tencent checks of a message before anything else happens to it (and so before
    /// any callback is posted for it): the API's rules, then that its sender, recipients or
    /// group exist. `carry_out` makes the same checks again, for calls that post nothing.
    fn precheck(
        &self,
        caller: &Caller,
        api: &Api,
        parsed: &serde_json_borrow::Value<'_>,
        body: &Map<String, Value>,
    ) -> Result<(), Refusal> {
        if let Some(rules) = rules::for_api(api.name()) {
            rules::check(rules, parsed)?;
        }
        match api.name() {
            "openim/sendmsg" => self.c2c_accounts(caller, body).map(drop),
            "openim/batchsendmsg" => self.batch_accounts(caller, body).map(drop),
            "group_open_http_svc/send_group_msg" => self.group_exists(caller, body),
            _ => Ok(()),
        }
    }

    /// `sendmsg`'s sender and recipient, both of which must exist (90008, 90012).
    fn c2c_accounts<'b>(
        &self,
        caller: &'b Caller,
        body: &'b Map<String, Value>,
    ) -> Result<(&'b str, &'b str), Refusal> {
        let from = sender(caller, body);
        let to = body.get("To_Account").and_then(Value::as_str).unwrap_or("");
        c2c::require(self.known(caller, from), c2c::FROM_NOT_IMPORTED, from)?;
        c2c::require(self.known(caller, to), c2c::TO_NOT_IMPORTED, to)?;
        Ok((from, to))
    }

    /// `batchsendmsg`'s recipients that exist and those that do not; refused as a whole
    /// when the sender does not exist (90008) or none of them does (90012), as Tencent
    /// answers FAIL then.
    fn batch_accounts<'b>(
        &self,
        caller: &Caller,
        body: &'b Map<String, Value>,
    ) -> Result<Recipients<'b>, Refusal> {
        let from = sender(caller, body);
        c2c::require(self.known(caller, from), c2c::FROM_NOT_IMPORTED, from)?;
        let (known, unknown): Recipients<'b> = body
            .get("To_Account")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .partition(|to| self.known(caller, to));
        if known.is_empty() {
            return Err(Refusal::new(
                c2c::TO_NOT_IMPORTED,
                "none of To_Account was ever imported",
            ));
        }
        Ok((known, unknown))
    }

    /// The group a message is sent to must exist (10010).
    fn group_exists(&self, caller: &Caller, body: &Map<String, Value>) -> Result<(), Refusal> {
        let id = body.get("GroupId").and_then(Value::as_str).unwrap_or("");
        if self.groups.exists(caller.sdkappid, id) {
            return Ok(());
        }
        Err(Refusal::new(
            groups::NO_GROUP,
            format!("group {id} does not exist or was dissolved"),
        ))
    }

    /// `sendmsg`: both accounts must exist (90008, 90012).
    fn send(
        &self,
        caller: &Caller,
        body: &Map<String, Value>,
        unix: u64,
        fresh: Fresh<'_>,
    ) -> Result<Value, Refusal> {
        let (from, to) = self.c2c_accounts(caller, body)?;
        let out = c2c::Outgoing {
            sdkappid: caller.sdkappid,
            from,
            body,
            time: unix,
        };
        Ok(self.c2c.send(&out, to, fresh()?))
    }

    /// `batchsendmsg`: delivered to the recipients that exist, the others in `ErrorList`;
    /// refused as a whole (90012) only when none exists, as Tencent answers FAIL then.
    fn batch(
        &self,
        caller: &Caller,
        body: &Map<String, Value>,
        unix: u64,
    ) -> Result<Value, Refusal> {
        let (known, unknown) = self.batch_accounts(caller, body)?;
        let from = sender(caller, body);
        let out = c2c::Outgoing {
            sdkappid: caller.sdkappid,
            from,
            body,
            time: unix,
        };
        Ok(self.c2c.batch(&out, &known, &unknown))
    }
}

/// Records a message for Tencent's duplicate window: whether it is new.
type Fresh<'a> = &'a dyn Fn() -> Result<bool, Refusal>;

/// A batch's recipients that exist, and those that do not.
type Recipients<'b> = (Vec<&'b str>, Vec<&'b str>);

/// A message's sender: its `From_Account`, or the admin who sends it.
fn sender<'b>(caller: &'b Caller, body: &'b Map<String, Value>) -> &'b str {
    body.get("From_Account")
        .and_then(Value::as_str)
        .unwrap_or(&caller.identifier)
}

/// How Tencent answers each UserSig fault.
fn refusal_for(error: VerifyError) -> Refusal {
    let code = match error {
        VerifyError::Malformed(_) => 70003,
        VerifyError::SdkAppIdMismatch => 70014,
        VerifyError::IdentifierMismatch => 70013,
        VerifyError::Expired => 70001,
        VerifyError::BadSignature => 70009,
    };
    Refusal::new(code, error.to_string())
}

/// Answers one request as Tencent would.
pub async fn handle(emulator: Arc<Emulator>, request: Request<Incoming>) -> Response<Full<Bytes>> {
    if request.uri().path() == MODERATE_PATH {
        return moderate(&emulator, request).await;
    }
    let answered = answer(&emulator, request).await;
    let mut doc = json!({
        "ActionStatus": if answered.is_ok() { "OK" } else { "FAIL" },
        "ErrorCode": 0,
        "ErrorInfo": "",
        "RequestId": emulator.request_id(),
    });
    match answered {
        Ok(Value::Object(fields)) => {
            if let Some(doc) = doc.as_object_mut() {
                doc.extend(fields);
            }
        }
        Ok(_) => {}
        Err(refusal) => {
            doc["ErrorCode"] = refusal.code.into();
            doc["ErrorInfo"] = refusal.info.into();
        }
    }
    json_response(StatusCode::OK, doc.to_string().into())
}

async fn answer(emulator: &Emulator, request: Request<Incoming>) -> Result<Value, Refusal> {
    // A call counts in the frequency windows from when its head arrived, as at Tencent's
    // edge: not from after the body was read and the UserSig verified, which adds this
    // process's own scheduling delays to the gateway's pacing.
    let arrived = Instant::now();
    if request.method() != Method::POST {
        return Err(Refusal::new(60002, "HTTP method must be POST"));
    }
    if request.uri().path() == FAULTS_PATH {
        return inject(emulator, request).await;
    }
    if request.uri().path() == RESET_PATH {
        emulator.reset();
        return Ok(Value::Null);
    }
    if request.uri().path() == CLOCK_PATH {
        return advance(emulator, request).await;
    }
    let api = Api::from_path(request.uri().path())
        .ok_or_else(|| Refusal::new(60002, "URL path must be /v4/<service>/<command>"))?;
    if api.name() == STATS {
        return Ok(json!({"Response": {"Messages": emulator.messages_stored()}}));
    }
    let caller = emulator.authenticate(request.uri().query(), usersig::unix_now())?;
    let (bytes, _held) = read_bytes(emulator, request).await?;
    let parsed = json::parse(&bytes).map_err(not_json)?;
    let quotas = emulator.limits.quotas(caller.sdkappid, &api);
    let measured = limiter::measure(&quotas, &parsed).map_err(|e| Refusal::new(e.code, e.info))?;
    emulator
        .limits
        .admit(caller.sdkappid, &api, &measured, arrived)?;
    let delay = emulator.fault(&api)?;
    let answered = emulator.carry_out_notified(&caller, &api, &parsed).await;
    tokio::time::sleep(delay).await;
    answered
}

impl Emulator {
    /// `carry_out`, between the callbacks Tencent posts for it: nothing is posted for a
    /// request Tencent refuses first (`precheck`); a before-event callback that refuses (or
    /// drops) the request stops it; the after-event ones follow success.
    async fn carry_out_notified(
        &self,
        caller: &Caller,
        api: &Api,
        parsed: &serde_json_borrow::Value<'_>,
    ) -> Result<Value, Refusal> {
        let notifier = self
            .notifier
            .as_ref()
            .filter(|notifier| notifier.subscribed(caller.sdkappid));
        let (Some(notifier), Some(object)) = (notifier, parsed.as_object()) else {
            return self.carry_out(caller, api, parsed);
        };
        let body = Map::from(object);
        self.precheck(caller, api, parsed, &body)?;
        let event = notifier.event(caller.sdkappid, api.name(), &body, &caller.identifier);
        let changes = match &event {
            Some(event) => match notifier.before(event).await {
                callbacks::Verdict::Go(changes) => changes,
                callbacks::Verdict::Deny(refusal) => return Err(refusal),
                callbacks::Verdict::Discard => return Ok(Value::Null),
            },
            None => Map::new(),
        };
        let was = self.group_facts(caller, &body);
        let answered = self.carry_out(caller, api, parsed);
        if let Ok(answer) = &answered {
            if let Some(event) = event {
                notifier.after(event, with_answer(changes, answer));
            }
            self.notify_lifecycle(notifier, (caller, api), (&body, answer), was.as_ref());
        }
        answered
    }

    /// Posts the group lifecycle callback an answered call makes, if any; `was` is the group
    /// the call named, as it was before it.
    fn notify_lifecycle(
        &self,
        notifier: &Arc<Notifier>,
        (caller, api): (&Caller, &Api),
        done: (&Map<String, Value>, &Value),
        was: Option<&groups::Facts>,
    ) {
        let now = done
            .1
            .get("GroupId")
            .and_then(Value::as_str)
            .and_then(|id| self.groups.facts(caller.sdkappid, id));
        let lifecycle =
            events::lifecycle(api.name(), done, (was, now.as_ref()), &caller.identifier);
        if let Some(lifecycle) = lifecycle {
            notifier.notify(caller.sdkappid, lifecycle);
        }
    }

    /// The group a request names, as it is before the request is carried out.
    fn group_facts(&self, caller: &Caller, body: &Map<String, Value>) -> Option<groups::Facts> {
        let id = body.get("GroupId").and_then(Value::as_str)?;
        self.groups.facts(caller.sdkappid, id)
    }
}

/// `changes` with the fields of a message's `answer` its after-send callback repeats: the
/// `MsgSeq` a group gave it, the `MsgTime` and `MsgKey` Tencent gave it.
fn with_answer(mut changes: Map<String, Value>, answer: &Value) -> Map<String, Value> {
    for name in ["MsgSeq", "MsgTime", "MsgKey"] {
        if let Some(value) = answer.get(name) {
            changes.insert(name.to_owned(), value.clone());
        }
    }
    changes
}

/// A stand-in for the service behind the callback listener, for the demo: it refuses a
/// message whose text holds the word `forbidden` (`ErrorCode` 1) and lets everything else
/// go on (`ErrorCode` 0), answering as Tencent documents a callback's answer.
pub const MODERATE_PATH: &str = "/_emulator/moderate";

async fn moderate(emulator: &Emulator, request: Request<Incoming>) -> Response<Full<Bytes>> {
    use crate::callback::route::{ALLOW, DENY};
    let Ok((bytes, _held)) = read_bytes(emulator, request).await else {
        return json_response(StatusCode::BAD_REQUEST, Bytes::from_static(ALLOW));
    };
    let texts = serde_json::from_slice::<Value>(&bytes).ok().map(|event| {
        event["MsgBody"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|element| element["MsgContent"]["Text"].as_str().map(str::to_owned))
            .collect::<Vec<_>>()
    });
    let refused = texts
        .unwrap_or_default()
        .iter()
        .any(|text| text.to_lowercase().contains("forbidden"));
    let answer = if refused { DENY } else { ALLOW };
    json_response(StatusCode::OK, Bytes::from_static(answer))
}

/// `POST /_emulator/reset`: forget every room, account, message and group.
pub const RESET_PATH: &str = "/_emulator/reset";

/// `POST /_emulator/clock` with `{"AdvanceSeconds": N}`: move the emulator's clock ahead.
pub const CLOCK_PATH: &str = "/_emulator/clock";

/// The most one `/_emulator/clock` call moves the clock: a day.
const MAX_ADVANCE: u64 = 86_400;

async fn advance(emulator: &Emulator, request: Request<Incoming>) -> Result<Value, Refusal> {
    let (bytes, _held) = read_bytes(emulator, request).await?;
    let seconds = serde_json::from_slice::<Value>(&bytes)
        .ok()
        .and_then(|v| v["AdvanceSeconds"].as_u64())
        .filter(|n| *n <= MAX_ADVANCE)
        .ok_or_else(|| {
            Refusal::new(
                60003,
                format!("the clock takes {{\"AdvanceSeconds\": N}}, N at most {MAX_ADVANCE}"),
            )
        })?;
    emulator.advance(seconds);
    Ok(Value::Null)
}

/// `POST /v4/_emulator/stats`: what the emulator stored, `{"Messages": N}`.
pub const STATS: &str = "_emulator/stats";

/// `POST /_emulator/faults` with `{"Api": "service/command", "ErrorCode": N, "Times": N}`.
async fn inject(emulator: &Emulator, request: Request<Incoming>) -> Result<Value, Refusal> {
    #[derive(Deserialize)]
    struct Injection {
        #[serde(rename = "Api")]
        api: String,
        #[serde(flatten)]
        fault: Fault,
    }
    let (bytes, _held) = read_bytes(emulator, request).await?;
    let Injection { api, fault } = serde_json::from_slice(&bytes).map_err(|e| {
        Refusal::new(
            60003,
            format!("a fault is {{\"Api\", \"ErrorCode\", \"Times\"}}: {e}"),
        )
    })?;
    let named = Api::from_path(&format!("/v4/{api}")).ok_or_else(|| {
        Refusal::new(
            60002,
            format!(
                "Api must be service/command of at most {} bytes",
                crate::api::MAX_NAME_BYTES
            ),
        )
    })?;
    emulator.inject(named, fault)?;
    Ok(Value::Null)
}

/// The whole body, held within the emulator's own body budget.
async fn read_bytes(
    emulator: &Emulator,
    request: Request<Incoming>,
) -> Result<(Bytes, Held), Refusal> {
    body::read_exact(request, MAX_BODY_BYTES, BODY_READ_TIMEOUT, &emulator.bodies)
        .await
        .map_err(|e| Refusal::new(60002, format!("request body could not be read: {e}")))
}

fn not_json(e: json::Unreadable) -> Refusal {
    Refusal::new(60003, e.to_string())
}

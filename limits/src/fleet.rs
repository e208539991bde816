//! The fleet's shared lanes in Redis, and the local fallback that keeps the limit when Redis
//! is slow or gone.
//!
//! # Shared mode
//! Every timgate on the same Redis and `key_prefix` that serves an app shares its app lane and
//! API lanes, and only those timgates: membership and claims are the app's too. The two
//! layers of a local lane move into Redis, each one atomic call of one Lua script
//! (`fleet/script.lua`, loaded once, run by EVALSHA, on Redis's own clock, its timing values
//! written into its text from [`crate::timing`], [`script`]): the **turn** (the pacing reservation on all of a
//! request's lanes at once) and, right before the write, the **guard** (at most the lane's
//! capacity in any window of its period and `SPREAD` of Redis time, fleet-wide). An
//! admission is sent on only while fresh (answered within `FRESH` of its ask); a replica away
//! from Redis comes back only on a heartbeat answered within `BACK`. A replica's concurrent
//! turns, and its send-time guards, go to Redis together (`batch`). A request that already
//! holds a ready connection when it asks for its turn has Redis run the guard in the same
//! call when the turn needs no wait. The local governor guard at L stays in front of both:
//! no replica ever sends more than L alone. A lane's *capacity* is its limit less the
//! fallback shares of members whose heartbeat has lapsed.
//!
//! Why all of this, and the fallback below, keep every limit fleet-wide (each step, the waits
//! before a share is spent or given back, lost state, quotas over a minute, and the
//! argument's known limits) is written once, in `limits/ARGUMENT.md` §4–6.
//!
//! # Keys
//! Every key is `{key_prefix}:…`: `members:<sdkappid>`, `claims:<sdkappid>`, `epoch` and
//! `lane:<sdkappid>[:<api>]`. The braces make `key_prefix` the Redis Cluster hash tag of
//! every key, so all keys of one fleet live in one slot and a script call (one app's
//! membership keys and its lanes) never spans slots.
//!
//! # Membership and claims
//! Membership is per app (`group`): the members of an app are the replicas that serve it,
//! whatever their deployment, and what follows holds for each app on its own. A member is
//! a name (`[fleet] member`) held by one process, told apart by a random incarnation token:
//! a process that comes back under its name takes its place and claim once its
//! predecessor has not beaten for `EXPIRY`; a second one that still sees the name held
//! holds no claim and, after `HELD`, renames itself (`Fleet::rename`). Every replica
//! beats every `BEAT` into each of its apps' sorted sets, scored by Redis time; a member whose
//! last live beat is older than `EXPIRY` has *lapsed* and is counted as possibly sending on
//! its own. Each member holds a *claim* c (millionths): its fallback share of a limit L is
//! floor(L × c / 10⁶). Claims are granted by the beat script so that they never sum above
//! 10⁶; a replica adopts a smaller claim before asking and a larger one only once granted,
//! so Redis always accounts at least what the replica may spend. The live size N is the
//! `timgate_fleet_members` metric; each replica asks for 10⁶ / (members it saw).
//!
//! A new replica's first beat registers it as lapsed (it has no clock offset yet, so its
//! beat could not carry a deadline); its first live beat follows at once. While lapsed
//! members hold a lane's whole capacity — a lone new replica for those two round trips —
//! a turn asks again after a `BEAT` for as long as its wait allows, rather than refuse.
//!
//! # Fallback
//! A replica whose call fails or passes `timeout_ms` stops using Redis at once, waits until
//! Redis surely counts it lapsed and a window more (`Mode::Leaving`), then paces and guards
//! itself locally at its share (`Mode::Fallback`), probing Redis every `BEAT`; the first
//! heartbeat answered within `BACK` takes it back. A quota over a longer period waits that
//! period instead of a second (`Fleet::fallback_period`).
//!
//! `fleet/tests.rs` drives this state machine on a paused clock against a real Redis at fixed
//! Redis time and checks each step of the argument on every send (switch, partial partition, switch
//! back, lost state), and that no closed second holds more than L.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncConnectionConfig, FromRedisValue, Script};
use tokio::time::Instant;
use tracing::{info, warn};

use self::cause::Cause;
pub use self::group::Group;
pub(super) use self::group::{Begun, Underway};
use self::link::{Call, Link};
use self::mode::{Answered, Machine, Mode, Naming};
pub(super) use self::shared::Shared;
use super::lane::Lane;
use super::{Scope, Throttled};
use crate::series::FleetSeries;
use crate::spec::{FleetSpec, RedisSpec};

use crate::timing::{self, TICK, WINDOW};
pub(super) use crate::timing::{BACK, FRESH, HELD};
pub use crate::timing::{BEAT, EXPIRY, MARGIN, QUARANTINE, RETAIN};

/// A whole claim: every limit.
const MILLION: u32 = 1_000_000;
/// The heartbeat's answer when another process that still beats holds this member name.
const NAME_HELD: i64 = -2;

/// The shared backend: its way to Redis, this replica's state.
pub struct Fleet {
    link: Arc<dyn Link>,
    /// Why calls fail, logged once per change.
    causes: Arc<cause::Causes>,
    /// `{key_prefix}`: every key starts with it, so all keys one script call touches hash
    /// to one Redis Cluster slot.
    tag: String,
    /// This replica's member name (`[fleet] member`, or that with a suffix once another
    /// process that reaches Redis was found under it) and its incarnation token.
    name: Mutex<String>,
    token: String,
    timeout: Duration,
    state: Mutex<Machine>,
    series: FleetSeries,
    /// The fleet size planned (`replicas`): a new app's first claim is 1/`replicas`.
    replicas: NonZeroU32,
    /// The groups of the apps this replica serves, by SDKAppID, each alive while some
    /// app's lanes hold it.
    groups: Mutex<HashMap<u64, Weak<Group>>>,
}

/// A pacing reservation in Redis, given back if dropped unused.
pub(super) struct Reservation {
    group: Arc<Group>,
    keys: Vec<Arc<str>>,
    /// `before`, `after` per reserved lane, as Redis stored them.
    tats: Vec<i64>,
    used: bool,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.used {
            return;
        }
        let (group, keys, tats) = (
            self.group.clone(),
            std::mem::take(&mut self.keys),
            std::mem::take(&mut self.tats),
        );
        // Best effort: a caller who left does not wait for Redis.
        tokio::spawn(async move {
            let keys = keys.iter().map(|key| &**key);
            let _ = group.call::<i64>("release", keys, &tats).await;
        });
    }
}

/// What a shared turn asks of Redis, per lane.
#[derive(Clone)]
pub(super) struct Ask {
    /// The lane's key, shared with its `Limit`: an ask is made (and queued, and batched) for
    /// every request, its key never copied.
    pub key: Arc<str>,
    pub limit: NonZeroU32,
    pub scope: Scope,
    /// The window `limit` counts over.
    pub period: Duration,
    /// What this request costs there.
    pub cost: NonZeroU32,
    /// The most one request may cost there.
    pub largest: NonZeroU32,
}

/// A lane's spec as the script reads it (`fleet/script.lua`), written as it is sent
/// (`Display`). Two specs are equal exactly when their text is.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Spec {
    /// A limit of calls a second: the limit alone.
    Calls(NonZeroU32),
    /// Any other: `limit/period in µs/cost/largest`.
    Full {
        limit: NonZeroU32,
        period: u128,
        cost: NonZeroU32,
        largest: NonZeroU32,
    },
}

impl std::fmt::Display for Spec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Spec::Calls(limit) => write!(f, "{limit}"),
            Spec::Full {
                limit,
                period,
                cost,
                largest,
            } => write!(f, "{limit}/{period}/{cost}/{largest}"),
        }
    }
}

/// Written as one argument of a script call: a calls limit's integer as any other.
impl redis::ToRedisArgs for Spec {
    fn write_redis_args<W: ?Sized + redis::RedisWrite>(&self, out: &mut W) {
        match self {
            Spec::Calls(limit) => limit.write_redis_args(out),
            Spec::Full { .. } => out.write_arg_fmt(self),
        }
    }
}

impl redis::ToSingleRedisArg for Spec {}

impl Ask {
    /// A limit of calls a second.
    pub fn calls(key: Arc<str>, limit: NonZeroU32, scope: Scope) -> Ask {
        Ask {
            key,
            limit,
            scope,
            period: WINDOW,
            cost: NonZeroU32::MIN,
            largest: NonZeroU32::MIN,
        }
    }

    /// The lane's spec as the script reads it.
    fn spec(&self) -> Spec {
        if self.period == WINDOW && self.largest == NonZeroU32::MIN {
            return Spec::Calls(self.limit);
        }
        Spec::Full {
            limit: self.limit,
            period: self.period.as_micros(),
            cost: self.cost,
            largest: self.largest,
        }
    }
}

impl Fleet {
    /// Connects lazily (a Redis that is down at start is an outage like any other) and starts
    /// the heartbeat. Cannot fail: validation built the clients, and nothing here may fail
    /// once the ports are bound.
    pub fn start(config: &FleetSpec, series: FleetSeries) -> Arc<Fleet> {
        let causes = Arc::<cause::Causes>::default();
        Fleet::with_link(
            connect(config, causes.clone()),
            causes,
            &config.key_prefix,
            &config.member,
            config.timeout,
            config.replicas,
            series,
        )
    }

    /// The fleet on `link`, whose failures are told to `causes`.
    fn with_link(
        link: Arc<dyn Link>,
        causes: Arc<cause::Causes>,
        prefix: &str,
        member: &str,
        timeout: Duration,
        replicas: NonZeroU32,
        series: FleetSeries,
    ) -> Arc<Fleet> {
        let tag = format!("{{{prefix}}}");
        let fleet = Arc::new(Fleet {
            link,
            causes,
            tag,
            name: Mutex::new(member.to_owned()),
            // Tells this process from an earlier or a second one under the same name.
            token: format!("{:016x}", rand::random::<u64>()),
            timeout,
            state: Mutex::new(Machine::new(Instant::now(), timeout)),
            series,
            replicas,
            groups: Mutex::default(),
        });
        fleet.series.redis_up.set(1);
        tokio::spawn(heartbeat(Arc::downgrade(&fleet)));
        fleet
    }

    /// The group of app `sdkappid`: the one its lanes hold already, or a new one.
    pub fn group(self: &Arc<Self>, sdkappid: u64) -> Arc<Group> {
        let mut groups = self
            .groups
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(group) = groups.get(&sdkappid).and_then(Weak::upgrade) {
            return group;
        }
        groups.retain(|_, group| group.strong_count() > 0);
        let group = Arc::new(Group::new(self.clone(), sdkappid, self.replicas));
        groups.insert(sdkappid, Arc::downgrade(&group));
        group
    }

    /// The groups alive now.
    fn groups(&self) -> Vec<Arc<Group>> {
        let groups = self
            .groups
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        groups.values().filter_map(Weak::upgrade).collect()
    }

    /// The Redis key of one lane.
    pub fn key(&self, sdkappid: u64, api: Option<&str>) -> String {
        match api {
            Some(api) => format!("{}:lane:{sdkappid}:{api}", self.tag),
            None => format!("{}:lane:{sdkappid}", self.tag),
        }
    }

    /// The Redis key of an API's quota (its `index`-th), and for a keyed quota of the lane of
    /// `key`: the key's SHA-256 (the first 16 hex digits), so every replica finds the same
    /// lane and a caller's value never grows the key.
    pub fn quota_key(&self, sdkappid: u64, api: &str, index: usize, key: Option<&str>) -> String {
        use sha2::{Digest, Sha256};
        let base = format!("{}:lane:{sdkappid}:{api}:quota{index}", self.tag);
        match key {
            None => base,
            Some(key) => {
                let digest = Sha256::digest(key.as_bytes());
                let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
                format!("{base}:{hex}")
            }
        }
    }

    /// The Redis key of a caller's own lane within an app: `caller:` cannot begin an API
    /// name's key, which always holds a `/`.
    pub fn caller_key(&self, sdkappid: u64, caller: &str) -> String {
        format!("{}:lane:{sdkappid}:caller:{caller}", self.tag)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Machine> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The mode now, moving from leaving to fallback when its wait is over.
    fn mode(&self) -> Mode {
        let (mode, spending) = self.lock().mode_at(Instant::now());
        if spending {
            warn!("fleet: spending this replica's fallback share");
        }
        mode
    }

    /// A call failed or timed out: stop using Redis, and wait before spending the share.
    fn lost(&self, why: &str) {
        let Some(until) = self.lock().failed(Instant::now()) else {
            return;
        };
        self.series.redis_up.set(0);
        self.series.to_fallback.inc();
        warn!(
            why,
            wait_ms = until.saturating_duration_since(Instant::now()).as_millis() as u64,
            "fleet: Redis lost; local lanes at this replica's share after the wait"
        );
    }

    /// One script call within `timeout_ms`, with its latency recorded, and its failure's
    /// cause logged when it changes (`cause`).
    async fn call<T: FromRedisValue>(&self, call: Call) -> Result<T, String> {
        let started = Instant::now();
        let answer = self.link.eval(call, self.timeout).await;
        self.series.latency.observe(started.elapsed().as_secs_f64());
        T::from_redis_value(answer?).map_err(|error| {
            let error = redis::RedisError::from(error);
            self.causes.failed(Cause::of(&error), &error.to_string());
            error.to_string()
        })
    }

    /// Whether a guard's answer at `at` to an ask made at `asked` came too late to be sent
    /// on (counted when it did).
    fn late(&self, asked: Instant, at: Instant) -> bool {
        let late = !mode::fresh(asked, at);
        if late {
            self.series.late_checks.inc();
        }
        late
    }

    /// Where turns are taken now: `None` for Redis, else how long until the fallback share
    /// may be spent (zero: now).
    pub(super) fn fallback_in(&self) -> Option<Duration> {
        match self.mode() {
            Mode::Shared => None,
            Mode::Leaving { until } => Some(until.saturating_duration_since(Instant::now())),
            Mode::Fallback => Some(Duration::ZERO),
        }
    }

    /// Which loss of Redis the fallback lanes are for now, and how long until a fallback
    /// share of a limit over `period` may be spent (zero: now). A second's share may be
    /// spent once in fallback; a longer period's only a period after Redis surely counted
    /// this replica out, since the shared lane admitted sends under the whole limit until then.
    pub(super) fn fallback_period(&self, period: Duration) -> (u64, Duration) {
        self.lock().fallback_period(period, Instant::now())
    }

    /// Passes the fallback lanes' send-time guard (lane, cost, period) while the replica is
    /// still in fallback, and records the send. Sends wait at each lane's gate in the order
    /// they came, and none past `by`: `Throttled` then. `Ok(false)`: no longer in fallback.
    pub(super) async fn fallback_send(
        &self,
        lanes: &[(&Lane, NonZeroU32, Duration)],
        by: Instant,
    ) -> Result<bool, Throttled> {
        let mut gates = Vec::with_capacity(lanes.len());
        for (lane, _, _) in lanes {
            gates.push(lane.gate(by).await?);
        }
        loop {
            let wait = {
                let mut state = self.lock();
                if !state.in_fallback() {
                    return Ok(false);
                }
                match super::lane::admit_all(lanes.iter().map(|(lane, cost, _)| (*lane, *cost))) {
                    Ok(()) => {
                        state.sent_on_fallback(lanes.iter().map(|(_, _, p)| *p), Instant::now());
                        return Ok(true);
                    }
                    Err(refused) => refused,
                }
            };
            super::lane::wait_until_by(wait.0, wait.1, by).await?;
        }
    }

    /// Gives this replica's claim back (on shutdown).
    pub async fn leave(&self) {
        for group in self.groups() {
            let _ = group.call::<i64>("leave", [], &self.leave_args()).await;
        }
    }

    /// The `leave` call's arguments: the name and this incarnation's token, so a process
    /// never takes away the place of another under its name.
    fn leave_args(&self) -> [String; 2] {
        [self.name(), self.token.clone()]
    }

    /// The member name this replica beats under now.
    pub fn name(&self) -> String {
        self.name
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Another process that reaches Redis has held this replica's name longer than a dead
    /// one could: beat under the name with this incarnation's token as suffix, from now on.
    /// No claim is held meanwhile, so the two never hold two shares.
    fn rename(&self) {
        let renamed = {
            let mut name = self
                .name
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if name.ends_with(&self.token) {
                return;
            }
            let new = format!("{name}-{}", self.token);
            let old = std::mem::replace(&mut *name, new);
            (old, name.clone())
        };
        for group in self.groups() {
            group.claim().naming = Naming::default();
        }
        warn!(
            member = renamed.0,
            now = renamed.1,
            "fleet: another timgate that reaches Redis beats under this member name; this one \
             takes the name with its own suffix (give each replica its own [fleet] member)"
        );
    }

    /// One heartbeat, for each app this replica serves: live while in Redis and past any
    /// fallback send's second; otherwise a probe that registers this replica's claim as
    /// possibly in use. The members gauge shows the fewest live members of its apps.
    async fn beat(&self) {
        let mut fewest = None::<i64>;
        for group in self.groups() {
            if let Some(live) = self.beat_for(&group).await {
                fewest = Some(fewest.map_or(live, |f| f.min(live)));
            }
        }
        if let Some(fewest) = fewest {
            self.series.members.set(fewest);
        }
    }

    /// One app's heartbeat; its live members when Redis answered in time to count.
    async fn beat_for(&self, group: &Group) -> Option<i64> {
        let sent = Instant::now();
        let beat = self.lock().beat_sent(sent);
        let (held, wanted) = {
            let mut claim = group.claim();
            let wanted = MILLION / claim.members.max(1);
            claim.held = claim.held.min(wanted);
            (claim.held, wanted)
        };
        let args = [
            self.name(),
            held.to_string(),
            wanted.to_string(),
            if beat.live { "1" } else { "0" }.to_owned(),
            beat.not_after.map(|at| at.to_string()).unwrap_or_default(),
            RETAIN.as_micros().to_string(),
            beat.long_until.map(|at| at.to_string()).unwrap_or_default(),
            self.token.clone(),
        ];
        let answer = group.call::<Vec<i64>>("beat", [], &args).await;
        let received = Instant::now();
        match answer {
            Ok(reply) if reply.len() == 4 && reply[0] == NAME_HELD => {
                self.causes.answered();
                self.name_held(group, received);
            }
            Ok(reply) if reply.len() == 4 && reply[0] >= 0 => {
                self.causes.answered();
                return self.answered(group, &reply, sent, received);
            }
            Ok(reply) if reply.len() == 4 => {
                self.causes.answered();
                self.lost("a heartbeat reached Redis after its deadline");
            }
            Ok(_) => {
                let why = "a heartbeat's answer is not the script's";
                self.causes.failed(Cause::Protocol, why);
                self.lost(why);
            }
            Err(why) => self.lost(&why),
        }
        None
    }

    /// A beat refused: another process that still beats holds this replica's name. This one
    /// holds no claim meanwhile (it may share Redis's lanes, never spend a share); once the
    /// name stays held longer than a process that is gone could hold it, it renames.
    fn name_held(&self, group: &Group, at: Instant) {
        let rename = {
            let mut claim = group.claim();
            claim.held = 0;
            claim.naming.held(at)
        };
        if rename {
            self.rename();
        }
    }

    /// A heartbeat's answer. Away from Redis, one slower than `BACK` does not bring the
    /// replica back (its guards would come back too late to be sent on), and leaves its claim
    /// and the member count alone: the claim it spends stays the one Redis accounts for it
    /// until it is back (Redis may have granted more, which only takes more off the shared
    /// lanes). The clock offset (still an upper bound, however slow the answer) and the last
    /// contact are kept current, so its beats keep reaching Redis before their deadlines.
    fn answered(
        &self,
        group: &Group,
        reply: &[i64],
        sent: Instant,
        received: Instant,
    ) -> Option<i64> {
        let mut state = self.lock();
        let back = match state.beat_answered(sent, received, reply[3]) {
            Answered::TooSlow(round_trip) => {
                self.series.late_beats.inc();
                tracing::debug!(
                    round_trip_ms = round_trip.as_millis() as u64,
                    "fleet: Redis answered, too slowly to go back to it"
                );
                return None;
            }
            Answered::Counted { back } => back,
        };
        // Under the mode's lock: no fallback send comes between the claim and the mode.
        {
            let mut claim = group.claim();
            claim.naming = Naming::default();
            claim.held = u32::try_from(reply[0]).unwrap_or(0).min(MILLION);
            claim.members = u32::try_from(reply[2]).unwrap_or(1).max(1);
        }
        drop(state);
        if back {
            self.series.redis_up.set(1);
            self.series.to_shared.inc();
            info!("fleet: Redis is back; shared lanes again");
        }
        Some(reply[1])
    }
}

fn unreachable_reply() -> Throttled {
    Throttled {
        scope: Scope::App,
        retry_after: WINDOW,
    }
}

/// The fleet's script (`fleet/script.lua`) with its timing values written in as its first
/// line: heartbeat `expiry`, epoch `quarantine` and the rest of [`timing::script`]'s. The
/// replicas' are `EXPIRY` and `QUARANTINE`; a test of the script alone may pass others. A
/// call then parses nothing of them (they cost a tenth of a short call's time in Redis when
/// each call passed them as an argument), and another set of values is another script.
pub fn script(expiry: Duration, quarantine: Duration) -> String {
    format!(
        "local expiry, quarantine, PACE, GUARD, SPREAD, SLOWDOWN, KEEP, LOWEST_STANDS, TICK = {}\n{}",
        timing::script(expiry, quarantine).replace(' ', ", "),
        include_str!("fleet/script.lua")
    )
}

/// The link to the Redis that `config` names: one server, Sentinel's primary or a Cluster.
fn connect(config: &FleetSpec, causes: Arc<cause::Causes>) -> Arc<dyn Link> {
    let script = Script::new(&script(EXPIRY, QUARANTINE));
    let connect_within = config.timeout.max(Duration::from_millis(200));
    match &config.redis {
        RedisSpec::Url(client) => {
            let manager = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(connect_within))
                .set_response_timeout(Some(config.timeout))
                .set_number_of_retries(1)
                .set_max_delay(Duration::from_millis(200));
            let redis = ConnectionManager::new_lazy_with_config(client.clone(), manager)
                .expect("a lazy manager fails only for push or resubscribe settings, not set here");
            Arc::new(link::Redis::new(redis, script, causes))
        }
        RedisSpec::Sentinel(sentinel) => {
            let client = sentinel
                .client()
                .expect("validation built this Sentinel client already");
            let connection = AsyncConnectionConfig::new()
                .set_connection_timeout(Some(connect_within))
                .set_response_timeout(Some(config.timeout));
            let find = link::Sentinel::new(client, connection);
            let way = link::Finder::new(find, causes.clone());
            Arc::new(link::Redis::new(way, script, causes))
        }
        RedisSpec::Cluster(cluster) => {
            let client = cluster
                .client(config.timeout)
                .expect("validation built this Cluster client already");
            let way = link::Finder::new(link::Cluster(client), causes.clone());
            Arc::new(link::Redis::new(way, script, causes))
        }
    }
}

/// Beats every `BEAT` until the fleet is dropped.
async fn heartbeat(fleet: Weak<Fleet>) {
    let mut ticks = tokio::time::interval(BEAT);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(fleet) = fleet.upgrade() else {
            return;
        };
        let first = !fleet.lock().has_offset();
        fleet.beat().await;
        // The first answer gives the clock offset a live beat needs: send that one at once,
        // so a new replica is counted live (and its share usable) within two round trips.
        if first && fleet.lock().has_offset() {
            ticks.reset_immediately();
        }
    }
}

mod batch;
mod cause;
mod group;
mod link;
mod mode;
mod shared;
#[cfg(test)]
mod tests;

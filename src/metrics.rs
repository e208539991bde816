//! What operators watch: requests, upstream attempts and latency, throttling, re-signs,
//! in-flight requests — exposed in the Prometheus/OpenMetrics text format.
//!
//! One `Registry` per gateway instance (no global recorder), so tests and benches can run
//! several side by side. Label values come from the configuration and the rules table, never
//! from a request: the `app` label holds configured SDKAppIDs (or `none`), and the `api` label
//! the APIs of the rules table and of every app's `api_limits` (or `other`, or `none` when the
//! path names no API). So a caller inventing paths can neither grow memory nor, by arriving
//! first, push a real API out of its own series.
//!
//! Each app's series are created once, when the gateway is built, and carried by its route:
//! the request path never looks an app up by id here.
//! The per-lane series (`api` on the configured limits, Tencent's `code` from a fixed table)
//! are created up front from the configuration, so a first 60011 shows as an increase from 0.

mod callbacks;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use crate::api::Api;
use crate::config::App;
use crate::limiter::{FleetSeries, Scope};
use crate::rules;

pub use callbacks::{CallbackMetrics, OTHER, OUTCOMES};

/// The content type of `Metrics::render`.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    app: String,
    api: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallerLabels {
    caller: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AppLabels {
    app: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RejectionLabels {
    app: String,
    scope: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ApiLabels {
    app: String,
    api: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabels {
    app: String,
    code: &'static str,
}

/// Tencent ErrorCodes counted under their own `code` label (TENCENT.md §5): success, the
/// rate-limit codes, 100001 "please retry", 60008, the UserSig and region errors, 100002.
/// Every other code is `other`; an answer without an ErrorCode is `none`.
pub const CODES: [(i64, &str); 18] = [
    (0, "0"),
    (60007, "60007"),
    (60008, "60008"),
    (60011, "60011"),
    (60018, "60018"),
    (60019, "60019"),
    (70001, "70001"),
    (70003, "70003"),
    (70005, "70005"),
    (70009, "70009"),
    (70013, "70013"),
    (70014, "70014"),
    (70016, "70016"),
    (70020, "70020"),
    (70050, "70050"),
    (70052, "70052"),
    (100001, "100001"),
    (100002, "100002"),
];

/// One app's series, created once and carried by the app's route.
pub struct AppSeries {
    /// The `app` label value.
    app: String,
    attempts: Counter,
    retries: Counter,
    latency: Histogram,
    throttle_wait: Histogram,
    rejected_app: Counter,
    rejected_api: Counter,
    rejected_caller: Counter,
    signs: Counter,
    /// Tencent's answers by ErrorCode, in `CODES` order, then `other`, then `none`.
    codes: Vec<Counter>,
    /// Failed entries of partial answers, in `PARTIAL_APIS` order, then `other`.
    partial: Vec<Counter>,
    /// Its requests and attempts by API.
    apis: ApiSet,
}

/// The hasher of the maps a request looks up by API name: seeded at random like std's
/// SipHash, at a fraction of its cost on these short keys.
type Hasher = foldhash::fast::RandomState;

/// The series of one `api` label value of one app (or of the requests that found none).
struct ApiSeries {
    /// The `api` label value.
    api: String,
    /// Its `timgate_requests_total` counters by outcome, each found in the family on its
    /// first request: a family lookup allocates its label set's strings and hashes all three.
    /// Bounded as the outcomes are, and no series shows before its first request.
    requests: RwLock<Vec<(&'static str, Counter)>>,
    /// Attempts sent, for an API with a limit of its own.
    attempts: Option<Counter>,
}

impl ApiSeries {
    fn new(api: &str, attempts: Option<Counter>) -> ApiSeries {
        ApiSeries {
            api: api.to_owned(),
            requests: RwLock::default(),
            attempts,
        }
    }

    /// Counts one request of `app` (its label) that ended `outcome`.
    fn request(&self, family: &Family<RequestLabels, Counter>, app: &str, outcome: &'static str) {
        let known = self.requests.read().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, counter)) = known.iter().find(|(name, _)| *name == outcome) {
            counter.inc();
            return;
        }
        drop(known);
        let labels = RequestLabels {
            app: app.to_owned(),
            api: self.api.clone(),
            outcome,
        };
        let counter = family.get_or_create(&labels).clone();
        counter.inc();
        let mut known = self
            .requests
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        // Another request may have added it meanwhile: the same counter either way.
        if !known.iter().any(|(name, _)| *name == outcome) {
            known.push((outcome, counter));
        }
    }
}

/// The series of every `api` label value of one app, so a request finds its API's with one
/// lookup of its name: each known API (`Metrics::apis`), then `other` and `none`.
struct ApiSet {
    known: HashMap<String, ApiSeries, Hasher>,
    other: ApiSeries,
    none: ApiSeries,
}

impl ApiSet {
    /// The set of `apis`, each with its attempts counter from `attempts`, if any.
    fn new(apis: &HashSet<String>, mut attempts: impl FnMut(&str) -> Option<Counter>) -> ApiSet {
        ApiSet {
            known: apis
                .iter()
                .map(|api| (api.clone(), ApiSeries::new(api, attempts(api))))
                .collect(),
            other: ApiSeries::new("other", None),
            none: ApiSeries::new("none", None),
        }
    }

    /// The series of the API named `api` (`None`: the path named none).
    fn of(&self, api: Option<&str>) -> &ApiSeries {
        match api {
            Some(name) => self.known.get(name).unwrap_or(&self.other),
            None => &self.none,
        }
    }
}

/// The APIs whose answers may carry `ErrorList` or `FailAccounts` (a batch carried out in
/// part): the `api` label of `timgate_partial_failures_total`, with `other` for the rest.
const PARTIAL_APIS: &[&str] = &[
    "openim/batchsendmsg",
    "openim/query_online_status",
    "im_open_login_svc/multiaccount_import",
];

/// The gateway's metrics.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    caller_requests: Family<CallerLabels, Counter>,
    upstream_latency: Family<AppLabels, Histogram>,
    attempts: Family<AppLabels, Counter>,
    retries: Family<AppLabels, Counter>,
    throttle_wait: Family<AppLabels, Histogram>,
    throttle_rejections: Family<RejectionLabels, Counter>,
    queue_depth: Gauge,
    usersig_signs: Family<AppLabels, Counter>,
    inflight: Gauge,
    upstream_codes: Family<CodeLabels, Counter>,
    api_attempts: Family<ApiLabels, Counter>,
    partial_failures: Family<ApiLabels, Counter>,
    draining: Gauge,
    upstream_pool: crate::upstream::Gauges,
    upstream_failovers: Counter,
    /// Each app's configured limits, set anew on every reload.
    limits: LimitGauges,
    /// Configuration reloads, by result: `[ok, error]`.
    reloads: [Counter; 2],
    /// Every `api` label value besides `other` and `none`.
    apis: HashSet<String>,
    apps: HashMap<u64, Arc<AppSeries>>,
    /// The requests that found no app (`app="none"`).
    unrouted: ApiSet,
    fleet: FleetSeries,
    /// The callback listener's series (`[callbacks]`).
    callbacks: CallbackMetrics,
}

/// The configured limits, as gauges.
#[derive(Default)]
struct LimitGauges {
    app: Family<AppLabels, Gauge<f64, AtomicU64>>,
    api: Family<ApiLabels, Gauge<f64, AtomicU64>>,
    max_wait: Family<AppLabels, Gauge<f64, AtomicU64>>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TransitionLabels {
    to: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LateLabels {
    call: &'static str,
}

impl Metrics {
    /// The callback listener's series.
    pub fn callbacks(&self) -> CallbackMetrics {
        self.callbacks.clone()
    }

    /// The fleet's series, for the limiter to update.
    pub fn fleet(&self) -> FleetSeries {
        self.fleet.clone()
    }

    /// Registers the fleet's series; only a gateway with `[fleet]` exports them, so a
    /// local-only one never shows Redis as down.
    pub fn register_fleet(&mut self) {
        let r = &mut self.registry;
        r.register(
            "fleet_redis_up",
            "1 while the limits are shared in Redis, 0 while this replica is on its fallback share",
            self.fleet.redis_up.clone(),
        );
        r.register(
            "fleet_members",
            "Live timgate replicas sharing the limits, as Redis last said (the fewest of any app this replica serves)",
            self.fleet.members.clone(),
        );
        let transitions = Family::<TransitionLabels, Counter>::default();
        let to = |to| transitions.get_or_create(&TransitionLabels { to }).clone();
        self.fleet.to_fallback = to("fallback");
        self.fleet.to_shared = to("shared");
        r.register(
            "fleet_fallback_transitions",
            "Switches between shared lanes in Redis and the local fallback",
            transitions,
        );
        let late = Family::<LateLabels, Counter>::default();
        let call = |call| late.get_or_create(&LateLabels { call }).clone();
        self.fleet.late_checks = call("send_check");
        self.fleet.late_beats = call("heartbeat");
        r.register(
            "fleet_late_answers",
            "Redis answers too late to use: send checks over 20 ms after their ask (not sent on), \
             heartbeats over 10 ms while on the fallback (no way back yet)",
            late,
        );
        r.register_with_unit(
            "fleet_redis_call",
            "Time of one Redis call of the shared limiter, timeouts included",
            Unit::Seconds,
            self.fleet.latency.clone(),
        );
        r.register(
            "fleet_redis_batch_asks",
            "Requests' turns or send checks carried by one Redis call: concurrent ones share a call",
            self.fleet.batch.clone(),
        );
    }

    /// Every metric, registered under the `timgate_` prefix, with the per-app series of
    /// `apps` created up front (they show as 0 before the first request) and each app's
    /// configured limits as gauges.
    pub fn new(apps: &[App]) -> Metrics {
        // 1 ms to 11.6 s in steps of √2: a p99 read from the buckets is within 41% of the
        // truth, fine enough to tell a wait from one near max_queue_wait_ms.
        let latency = || Histogram::new(exponential_buckets(0.001, std::f64::consts::SQRT_2, 28));
        let apis: HashSet<String> = rules::TABLE
            .iter()
            .map(|(api, _)| (*api).to_owned())
            .chain(apps.iter().flat_map(|app| app.api_limits.keys().cloned()))
            .collect();
        let mut metrics = Metrics {
            registry: Registry::with_prefix("timgate"),
            requests: Family::default(),
            caller_requests: Family::default(),
            upstream_latency: Family::new_with_constructor(latency),
            attempts: Family::default(),
            retries: Family::default(),
            throttle_wait: Family::new_with_constructor(latency),
            throttle_rejections: Family::default(),
            queue_depth: Gauge::default(),
            usersig_signs: Family::default(),
            inflight: Gauge::default(),
            upstream_codes: Family::default(),
            api_attempts: Family::default(),
            partial_failures: Family::default(),
            draining: Gauge::default(),
            upstream_pool: crate::upstream::Gauges::default(),
            upstream_failovers: Counter::default(),
            limits: LimitGauges::default(),
            reloads: Default::default(),
            unrouted: ApiSet::new(&apis, |_| None),
            apis,
            apps: HashMap::new(),
            fleet: FleetSeries::default(),
            callbacks: CallbackMetrics::new(),
        };
        let r = &mut metrics.registry;
        r.register(
            "requests",
            "Requests, each counted once, by app, API and how it ended (outcome)",
            metrics.requests.clone(),
        );
        r.register(
            "caller_requests",
            "Requests by [[callers]] name (`none`: no known token) and outcome, with callers configured",
            metrics.caller_requests.clone(),
        );
        r.register_with_unit(
            "upstream_latency",
            "Time for one upstream attempt, from send to the whole answer",
            Unit::Seconds,
            metrics.upstream_latency.clone(),
        );
        r.register(
            "upstream_attempts",
            "Upstream attempts, retries included",
            metrics.attempts.clone(),
        );
        r.register(
            "retries",
            "Upstream attempts that were retries",
            metrics.retries.clone(),
        );
        r.register_with_unit(
            "throttle_wait",
            "Time a request waited for its turn under the rate limits",
            Unit::Seconds,
            metrics.throttle_wait.clone(),
        );
        r.register(
            "throttle_rejections",
            "Requests refused because their wait would exceed max_queue_wait_ms",
            metrics.throttle_rejections.clone(),
        );
        r.register(
            "throttle_queue_depth",
            "Requests waiting for their turn now",
            metrics.queue_depth.clone(),
        );
        r.register(
            "usersig_signs",
            "UserSigs minted (first use and every re-sign)",
            metrics.usersig_signs.clone(),
        );
        r.register(
            "partial_failures",
            "Failed entries (ErrorList, FailAccounts) of answers that carried out the rest, by app and API",
            metrics.partial_failures.clone(),
        );
        r.register(
            "inflight_requests",
            "Requests accepted and not yet answered",
            metrics.inflight.clone(),
        );
        metrics.register_upstream();
        metrics.callbacks.register(&mut metrics.registry);
        metrics.register_operators_view(apps);
        let reloads = Family::<ReloadLabels, Counter>::default();
        for (i, result) in ["ok", "error"].into_iter().enumerate() {
            metrics.reloads[i] = reloads.get_or_create(&ReloadLabels { result }).clone();
        }
        metrics.registry.register(
            "config_reloads",
            "Configuration reloads (SIGHUP or a changed file), by result; an error keeps the running one",
            reloads,
        );
        metrics.apps = apps
            .iter()
            .map(|app| {
                let series = metrics.series(app.sdkappid, app.api_limits.keys());
                (app.sdkappid, Arc::new(series))
            })
            .collect();
        metrics
    }

    /// The upstream pools' connections by state, and failovers to a backup domain.
    fn register_upstream(&mut self) {
        let connections = Family::<StateLabels, Gauge>::default();
        // A gauge's clone shares its value: the pools update these, the scrape reads them.
        let gauge = |state| connections.get_or_create(&StateLabels { state }).clone();
        self.upstream_pool = crate::upstream::Gauges {
            open: gauge("open"),
            idle: gauge("idle"),
            waiting: gauge("waiting"),
        };
        self.registry.register(
            "upstream_connections",
            "Connections to Tencent: open (busy or idle) and idle, and attempts waiting for one (state)",
            connections,
        );
        self.registry.register(
            "upstream_failovers",
            "Times an origin could not be resolved or connected to and attempts went to its backup domain",
            self.upstream_failovers.clone(),
        );
    }

    /// Shows the configured limits of `apps`, and of no other app: at start and after a
    /// reload, which may add and remove apps and change their limits.
    pub fn set_limits(&self, apps: &[App]) {
        let LimitGauges { app, api, max_wait } = &self.limits;
        app.clear();
        api.clear();
        max_wait.clear();
        for config in apps {
            let labels = AppLabels {
                app: config.sdkappid.to_string(),
            };
            app.get_or_create(&labels)
                .set(f64::from(config.rate_limit.get()));
            max_wait
                .get_or_create(&labels)
                .set(config.max_queue_wait.as_secs_f64());
            for (name, limit) in &config.api_limits {
                let labels = ApiLabels {
                    app: config.sdkappid.to_string(),
                    api: name.clone(),
                };
                api.get_or_create(&labels).set(f64::from(limit.get()));
            }
        }
    }

    /// The upstream pools' gauges and the failover counter, for `Upstream::new`.
    pub fn upstream(&self) -> (crate::upstream::Gauges, Counter) {
        (self.upstream_pool.clone(), self.upstream_failovers.clone())
    }

    /// The series the dashboard and alerts need beyond the request path's own: Tencent's
    /// codes, sends per limited API, the configured limits and waits, and the drain.
    fn register_operators_view(&mut self, apps: &[App]) {
        self.set_limits(apps);
        let r = &mut self.registry;
        r.register(
            "upstream_error_codes",
            "Tencent's answers by ErrorCode (a fixed set, else `other`; `none` without one)",
            self.upstream_codes.clone(),
        );
        r.register(
            "api_upstream_attempts",
            "Upstream attempts, retries included, of each API that has a limit of its own",
            self.api_attempts.clone(),
        );
        r.register(
            "app_limit_per_second",
            "Each app's configured rate_limit",
            self.limits.app.clone(),
        );
        r.register(
            "api_limit_per_second",
            "Each app's configured per-API limits (api_limits and the built-in ones)",
            self.limits.api.clone(),
        );
        r.register_with_unit(
            "max_queue_wait",
            "Each app's configured max_queue_wait_ms: the longest wait before a 429",
            Unit::Seconds,
            self.limits.max_wait.clone(),
        );
        r.register(
            "draining",
            "1 from the moment a drain (SIGTERM) starts: requests still in flight may be cut",
            self.draining.clone(),
        );
    }

    /// One request, answered or not: `app` is its route's series when it got that far, `api`
    /// the API its path names, if any.
    pub fn request(&self, app: Option<&AppSeries>, api: Option<&Api>, outcome: &'static str) {
        let (label, apis) = match app {
            Some(series) => (series.app.as_str(), &series.apis),
            None => ("none", &self.unrouted),
        };
        apis.of(api.map(Api::name))
            .request(&self.requests, label, outcome);
    }

    /// One request of `caller` (a configured name, or `none`), by how it ended.
    pub fn caller_request(&self, caller: &str, outcome: &'static str) {
        let labels = CallerLabels {
            caller: caller.to_owned(),
            outcome,
        };
        self.caller_requests.get_or_create(&labels).inc();
    }

    /// A configuration reload was applied (`ok`) or refused.
    pub fn reloaded(&self, ok: bool) {
        self.reloads[usize::from(!ok)].inc();
    }

    /// A drain has started.
    pub fn draining(&self) {
        self.draining.set(1);
    }

    /// `app`'s series: the ones created with the gateway for a configured app, else new
    /// ones (for an app built after the fact, as tests and benches do).
    pub fn app(&self, app: u64) -> Arc<AppSeries> {
        match self.apps.get(&app) {
            Some(series) => series.clone(),
            None => Arc::new(self.series(app, std::iter::empty())),
        }
    }

    /// The series of `app`, which has a limit of its own on the APIs `limited` (all of them
    /// in `apis`, which holds every configured app's).
    fn series<'a>(&self, app: u64, limited: impl Iterator<Item = &'a String>) -> AppSeries {
        let mut attempts: HashMap<&str, Counter> = limited
            .map(|api| {
                let labels = ApiLabels {
                    app: app.to_string(),
                    api: api.clone(),
                };
                (
                    api.as_str(),
                    self.api_attempts.get_or_create(&labels).clone(),
                )
            })
            .collect();
        let labels = AppLabels {
            app: app.to_string(),
        };
        let rejected = |scope| {
            let labels = RejectionLabels {
                app: app.to_string(),
                scope,
            };
            self.throttle_rejections.get_or_create(&labels).clone()
        };
        AppSeries {
            app: app.to_string(),
            attempts: self.attempts.get_or_create(&labels).clone(),
            retries: self.retries.get_or_create(&labels).clone(),
            latency: self.upstream_latency.get_or_create(&labels).clone(),
            throttle_wait: self.throttle_wait.get_or_create(&labels).clone(),
            rejected_app: rejected("app"),
            rejected_api: rejected("api"),
            rejected_caller: rejected("caller"),
            signs: self.usersig_signs.get_or_create(&labels).clone(),
            codes: CODES
                .iter()
                .map(|(_, code)| *code)
                .chain(["other", "none"])
                .map(|code| {
                    let labels = CodeLabels {
                        app: app.to_string(),
                        code,
                    };
                    self.upstream_codes.get_or_create(&labels).clone()
                })
                .collect(),
            partial: PARTIAL_APIS
                .iter()
                .chain(&["other"])
                .map(|api| {
                    let labels = ApiLabels {
                        app: app.to_string(),
                        api: (*api).to_owned(),
                    };
                    self.partial_failures.get_or_create(&labels).clone()
                })
                .collect(),
            apis: ApiSet::new(&self.apis, |api| attempts.remove(api)),
        }
    }

    /// Counts a request in flight until the returned guard is dropped.
    pub fn in_flight(&self) -> InFlight<'_> {
        self.inflight.inc();
        InFlight(&self.inflight)
    }

    /// The exposition text, with the queue depth read as of now.
    pub fn render(&self, waiting: usize) -> String {
        self.queue_depth
            .set(i64::try_from(waiting).unwrap_or(i64::MAX));
        let mut text = String::new();
        encode(&mut text, &self.registry).expect("writing to a String cannot fail");
        text
    }
}

impl AppSeries {
    /// One upstream attempt and how long it took; `retry` when it was not the first.
    pub fn attempt(&self, took: Duration, retry: bool) {
        self.attempts.inc();
        if retry {
            self.retries.inc();
        }
        self.latency.observe(took.as_secs_f64());
    }

    /// A turn granted after `waited`.
    pub fn throttled(&self, waited: Duration) {
        self.throttle_wait.observe(waited.as_secs_f64());
    }

    /// Tencent's answer to one attempt on `api`: its ErrorCode, `None` when the attempt got
    /// no envelope (timed out, broke, or the body was not Tencent's JSON).
    pub fn answered(&self, api: &str, code: Option<i64>) {
        if let Some(sent) = self.apis.known.get(api).and_then(|s| s.attempts.as_ref()) {
            sent.inc();
        }
        let slot = match code {
            Some(code) => CODES
                .iter()
                .position(|(known, _)| *known == code)
                .unwrap_or(CODES.len()),
            None => CODES.len() + 1,
        };
        self.codes[slot].inc();
    }

    /// `entries` failed in an answer to `api` that carried out the rest.
    pub fn partial(&self, api: &str, entries: u32) {
        if entries == 0 {
            return;
        }
        let slot = PARTIAL_APIS
            .iter()
            .position(|known| *known == api)
            .unwrap_or(PARTIAL_APIS.len());
        self.partial[slot].inc_by(u64::from(entries));
    }

    /// A request refused because its wait would be too long.
    pub fn rejected(&self, scope: Scope) {
        let counter = match scope {
            Scope::App => &self.rejected_app,
            Scope::Api | Scope::Share => &self.rejected_api,
            Scope::Caller => &self.rejected_caller,
        };
        counter.inc();
    }

    /// A UserSig minted.
    pub fn signed(&self) {
        self.signs.inc();
    }
}

/// Decrements the in-flight gauge when the request is answered or abandoned.
pub struct InFlight<'a>(&'a Gauge);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_prometheus_conventions() {
        let metrics = Metrics::new(&[]);
        let one = metrics.app(1);
        let api = Api::from_path("/v4/live_engine_http_srv/get_room_info").unwrap();
        metrics.request(Some(&one), Some(&api), "ok");
        one.attempt(Duration::from_millis(3), false);
        one.throttled(Duration::ZERO);
        one.rejected(Scope::Api);
        one.signed();
        let text = metrics.render(4);
        for name in [
            "timgate_requests_total{app=\"1\",api=\"live_engine_http_srv/get_room_info\",outcome=\"ok\"} 1",
            "timgate_upstream_latency_seconds_bucket",
            "timgate_upstream_attempts_total{app=\"1\"} 1",
            "timgate_throttle_wait_seconds_count{app=\"1\"} 1",
            "timgate_throttle_rejections_total{app=\"1\",scope=\"api\"} 1",
            "timgate_throttle_queue_depth 4",
            "timgate_usersig_signs_total{app=\"1\"} 1",
            "timgate_inflight_requests 0",
        ] {
            assert!(text.contains(name), "{name} missing from\n{text}");
        }
    }

    /// App 7 with rate_limit 50, a 250 ms wait, and one API limit of its own besides the
    /// built-in ones.
    fn app_seven() -> Vec<App> {
        let text = "[[apps]]\nsdkappid = 7\nidentifier = \"administrator\"\n\
                    secret_key = \"k\"\nregion = \"singapore\"\nrate_limit = 50\n\
                    max_queue_wait_ms = 250\n[apps.api_limits]\n\"openim/sendmsg\" = 20\n";
        crate::config::Config::from_toml(text).unwrap().apps
    }

    #[test]
    fn configured_apps_show_from_the_start() {
        let text = Metrics::new(&app_seven()).render(0);
        for zero in [
            "timgate_upstream_attempts_total{app=\"7\"} 0",
            "timgate_throttle_rejections_total{app=\"7\",scope=\"api\"} 0",
            "timgate_upstream_error_codes_total{app=\"7\",code=\"60011\"} 0",
            "timgate_upstream_error_codes_total{app=\"7\",code=\"other\"} 0",
            "timgate_api_upstream_attempts_total{app=\"7\",api=\"openim/sendmsg\"} 0",
            "timgate_draining 0",
        ] {
            assert!(text.contains(zero), "{zero} missing from\n{text}");
        }
    }

    #[test]
    fn configured_limits_are_gauges() {
        let text = Metrics::new(&app_seven()).render(0);
        for line in [
            "timgate_app_limit_per_second{app=\"7\"} 50.0",
            "timgate_api_limit_per_second{app=\"7\",api=\"openim/sendmsg\"} 20.0",
            "timgate_api_limit_per_second{app=\"7\",api=\"live_engine_http_srv/get_room_list\"} 10.0",
            "timgate_max_queue_wait_seconds{app=\"7\"} 0.25",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }

    #[test]
    fn tencent_codes_are_a_fixed_set() {
        let metrics = Metrics::new(&app_seven());
        let seven = metrics.app(7);
        seven.answered("openim/sendmsg", Some(60011));
        seven.answered("openim/sendmsg", Some(123456));
        seven.answered("openim/sendmsg", Some(-7));
        seven.answered("svc/unlimited", None);
        let text = metrics.render(0);
        let app = "timgate_upstream_error_codes_total{app=\"7\"";
        assert!(
            text.contains(&format!("{app},code=\"60011\"}} 1")),
            "{text}"
        );
        assert!(
            text.contains(&format!("{app},code=\"other\"}} 2")),
            "{text}"
        );
        assert!(text.contains(&format!("{app},code=\"none\"}} 1")), "{text}");
        assert_eq!(text.matches(app).count(), CODES.len() + 2);
        // Sends are counted for APIs with a limit of their own only: a bounded label.
        assert!(text.contains("api=\"openim/sendmsg\"} 3"), "{text}");
        assert!(!text.contains("svc/unlimited"), "{text}");
    }

    #[test]
    fn a_drain_shows() {
        let metrics = Metrics::new(&[]);
        metrics.draining();
        assert!(metrics.render(0).contains("timgate_draining 1"));
    }

    #[test]
    fn api_labels_come_from_the_rules_table_and_the_configuration() {
        let metrics = Metrics::new(&app_seven());
        let seven = metrics.app(7);
        for i in 0..300 {
            let junk = Api::from_path(&format!("/v4/svc/cmd{i}")).unwrap();
            metrics.request(Some(&seven), Some(&junk), "ok");
        }
        for path in [
            "/v4/live_engine_http_srv/get_room_info",
            "/v4/openim/sendmsg",
            "/v4/profile/portrait_get",
        ] {
            metrics.request(Some(&seven), Some(&Api::from_path(path).unwrap()), "ok");
        }
        metrics.request(None, None, "not_found");
        let text = metrics.render(0);
        let requests = |labels: &str, n: u32| format!("timgate_requests_total{{{labels}}} {n}");
        for line in [
            requests("app=\"7\",api=\"other\",outcome=\"ok\"", 301),
            // In the rules table; in app 7's api_limits.
            requests(
                "app=\"7\",api=\"live_engine_http_srv/get_room_info\",outcome=\"ok\"",
                1,
            ),
            requests("app=\"7\",api=\"openim/sendmsg\",outcome=\"ok\"", 1),
            requests("app=\"none\",api=\"none\",outcome=\"not_found\"", 1),
        ] {
            assert!(text.contains(&line), "{line} missing from\n{text}");
        }
        assert_eq!(text.matches("timgate_requests_total{").count(), 4);
    }

    #[test]
    fn in_flight_counts_until_dropped() {
        let metrics = Metrics::new(&[]);
        let a = metrics.in_flight();
        let b = metrics.in_flight();
        assert_eq!(metrics.inflight.get(), 2);
        drop(a);
        drop(b);
        assert_eq!(metrics.inflight.get(), 0);
    }
}

//! What operators watch: requests, upstream attempts and latency, throttling, re-signs,
//! in-flight requests — exposed in the Prometheus/OpenMetrics text format.
//!
//! One `Registry` per gateway instance (no global recorder), so tests and benches can run
//! several side by side. Label values are bounded: the `app` label only ever holds configured
//! SDKAppIDs (or `none`), and the `api` label holds at most `MAX_APIS` distinct APIs, the rest
//! counted as `other`, so a caller inventing paths cannot grow memory without bound.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use crate::limiter::Scope;

/// Distinct `api` label values kept before the rest are counted as `other`.
pub const MAX_APIS: usize = 256;

/// The content type of `Metrics::render`.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    app: String,
    api: String,
    outcome: &'static str,
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

/// One app's per-app series, resolved once.
struct AppSeries {
    attempts: Counter,
    retries: Counter,
    latency: Histogram,
    throttle_wait: Histogram,
    rejected_app: Counter,
    rejected_api: Counter,
    signs: Counter,
}

/// The gateway's metrics.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    upstream_latency: Family<AppLabels, Histogram>,
    attempts: Family<AppLabels, Counter>,
    retries: Family<AppLabels, Counter>,
    throttle_wait: Family<AppLabels, Histogram>,
    throttle_rejections: Family<RejectionLabels, Counter>,
    queue_depth: Gauge,
    usersig_signs: Family<AppLabels, Counter>,
    inflight: Gauge,
    apis: Mutex<HashSet<String>>,
    apps: HashMap<u64, AppSeries>,
}

impl Metrics {
    /// Every metric, registered under the `timgate_` prefix, with the per-app series of
    /// `apps` created up front (they show as 0 before the first request).
    pub fn new(apps: &[u64]) -> Metrics {
        let latency = || Histogram::new(exponential_buckets(0.001, 2.0, 14));
        let mut metrics = Metrics {
            registry: Registry::with_prefix("timgate"),
            requests: Family::default(),
            upstream_latency: Family::new_with_constructor(latency),
            attempts: Family::default(),
            retries: Family::default(),
            throttle_wait: Family::new_with_constructor(latency),
            throttle_rejections: Family::default(),
            queue_depth: Gauge::default(),
            usersig_signs: Family::default(),
            inflight: Gauge::default(),
            apis: Mutex::default(),
            apps: HashMap::new(),
        };
        let r = &mut metrics.registry;
        r.register(
            "requests",
            "Requests answered, by app, API and outcome",
            metrics.requests.clone(),
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
            "inflight_requests",
            "Requests accepted and not yet answered",
            metrics.inflight.clone(),
        );
        metrics.apps = apps
            .iter()
            .map(|app| (*app, metrics.series(*app)))
            .collect();
        metrics
    }

    /// One answered request.
    pub fn request(&self, app: Option<u64>, api: Option<&str>, outcome: &'static str) {
        let labels = RequestLabels {
            app: app_label(app),
            api: api.map_or_else(|| "none".to_owned(), |api| self.api_label(api)),
            outcome,
        };
        self.requests.get_or_create(&labels).inc();
    }

    /// One upstream attempt and how long it took; `retry` when it was not the first.
    pub fn attempt(&self, app: u64, took: Duration, retry: bool) {
        self.with_series(app, |series| {
            series.attempts.inc();
            if retry {
                series.retries.inc();
            }
            series.latency.observe(took.as_secs_f64());
        });
    }

    /// A turn granted after `waited`.
    pub fn throttled(&self, app: u64, waited: Duration) {
        self.with_series(app, |series| {
            series.throttle_wait.observe(waited.as_secs_f64());
        });
    }

    /// A request refused because its wait would be too long.
    pub fn rejected(&self, app: u64, scope: Scope) {
        self.with_series(app, |series| {
            let counter = match scope {
                Scope::App => &series.rejected_app,
                Scope::Api => &series.rejected_api,
            };
            counter.inc();
        });
    }

    /// A UserSig minted for `app`.
    pub fn signed(&self, app: u64) {
        self.with_series(app, |series| {
            series.signs.inc();
        });
    }

    /// Runs `f` on `app`'s series: the pre-created ones for a configured app (no allocation
    /// on the request path), else ones looked up by label.
    fn with_series(&self, app: u64, f: impl FnOnce(&AppSeries)) {
        match self.apps.get(&app) {
            Some(series) => f(series),
            None => f(&self.series(app)),
        }
    }

    fn series(&self, app: u64) -> AppSeries {
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
            attempts: self.attempts.get_or_create(&labels).clone(),
            retries: self.retries.get_or_create(&labels).clone(),
            latency: self.upstream_latency.get_or_create(&labels).clone(),
            throttle_wait: self.throttle_wait.get_or_create(&labels).clone(),
            rejected_app: rejected("app"),
            rejected_api: rejected("api"),
            signs: self.usersig_signs.get_or_create(&labels).clone(),
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

    fn api_label(&self, api: &str) -> String {
        let mut apis = self
            .apis
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if apis.contains(api) || (apis.len() < MAX_APIS && apis.insert(api.to_owned())) {
            api.to_owned()
        } else {
            "other".to_owned()
        }
    }
}

/// Decrements the in-flight gauge when the request is answered or abandoned.
pub struct InFlight<'a>(&'a Gauge);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

fn app_label(app: Option<u64>) -> String {
    app.map_or_else(|| "none".to_owned(), |id| id.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_prometheus_conventions() {
        let metrics = Metrics::new(&[]);
        metrics.request(Some(1), Some("openim/sendmsg"), "ok");
        metrics.attempt(1, Duration::from_millis(3), false);
        metrics.throttled(1, Duration::ZERO);
        metrics.rejected(1, Scope::Api);
        metrics.signed(1);
        let text = metrics.render(4);
        for name in [
            "timgate_requests_total{app=\"1\",api=\"openim/sendmsg\",outcome=\"ok\"} 1",
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

    #[test]
    fn configured_apps_show_from_the_start() {
        let text = Metrics::new(&[7]).render(0);
        assert!(
            text.contains("timgate_upstream_attempts_total{app=\"7\"} 0"),
            "{text}"
        );
        assert!(text.contains("timgate_throttle_rejections_total{app=\"7\",scope=\"api\"} 0"));
    }

    #[test]
    fn api_labels_are_bounded() {
        let metrics = Metrics::new(&[]);
        for i in 0..MAX_APIS + 10 {
            metrics.request(Some(1), Some(&format!("svc/cmd{i}")), "ok");
        }
        let text = metrics.render(0);
        assert!(text.contains("api=\"other\",outcome=\"ok\"} 10"));
        assert_eq!(
            text.matches("timgate_requests_total{").count(),
            MAX_APIS + 1
        );
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

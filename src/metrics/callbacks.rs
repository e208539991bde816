//! The callback listener's series: callbacks by app, command and outcome, and the service's
//! latency. Label values come from the configuration and a fixed table, never from a
//! callback: `app` is a configured SDKAppID or `none`, `command` a configured pattern or
//! `other`, `outcome` one of [`OUTCOMES`]. Every app's series exist from the start at 0, so
//! a first refusal is an increase that `rate()` sees.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use crate::config::Config;

/// How a callback ended: the `outcome` label.
pub const OUTCOMES: [&str; 13] = [
    // The service answered; its answer went back to Tencent.
    "forwarded",
    // Tencent got the route's default answer: the service was late, down, or failed (5xx).
    "default_timeout",
    "default_unreachable",
    "default_error",
    // No route matched the command: Tencent got the answer that lets the event go on.
    "unrouted",
    // Refused before the service saw it, by reason.
    "refused_bad_request",
    "refused_unknown_app",
    "refused_unsigned",
    "refused_stale",
    "refused_sign",
    "refused_body",
    "refused_overloaded",
    // Tencent closed the connection before its answer.
    "tencent_gone",
];

/// The `command` label of a callback no configured pattern names.
pub const OTHER: &str = "other";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallbackLabels {
    app: String,
    command: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    app: String,
    command: String,
}

/// The callback series; a clone shares them.
#[derive(Clone)]
pub struct CallbackMetrics {
    callbacks: Family<CallbackLabels, Counter>,
    service: Family<RouteLabels, Histogram>,
}

impl CallbackMetrics {
    /// The series, not yet registered.
    pub(super) fn new() -> CallbackMetrics {
        // 1 ms to 16 s in steps of 2: a callback's budget is 1.5 s to 5 s by default.
        let latency = || Histogram::new(exponential_buckets(0.001, 2.0, 15));
        CallbackMetrics {
            callbacks: Family::default(),
            service: Family::new_with_constructor(latency),
        }
    }

    /// Registers the series in `registry`.
    pub(super) fn register(&self, registry: &mut Registry) {
        registry.register(
            "callbacks",
            "Tencent's callbacks, each counted once, by app, command pattern (`other`: no route's) \
             and outcome (forwarded, a default answer and why, unrouted, refused and why)",
            self.callbacks.clone(),
        );
        registry.register_with_unit(
            "callback_service",
            "Time the service took to answer a callback (or to fail, or to reach timeout_ms)",
            Unit::Seconds,
            self.service.clone(),
        );
    }

    /// Creates every series of `config`'s apps and patterns at 0 (and `none`'s refusals):
    /// at start and after a reload, which may add apps and patterns.
    pub fn prepare(&self, config: &Config) {
        for outcome in OUTCOMES.iter().filter(|o| o.starts_with("refused_")) {
            self.series(None, OTHER, outcome);
        }
        for app in &config.apps {
            let patterns = app
                .callbacks
                .routes
                .iter()
                .flat_map(|route| route.commands.iter().map(String::as_str));
            for command in patterns.chain([OTHER]) {
                for outcome in OUTCOMES {
                    self.series(Some(app.sdkappid), command, outcome);
                }
                let _ = self.service.get_or_create(&RouteLabels {
                    app: app.sdkappid.to_string(),
                    command: command.to_owned(),
                });
            }
        }
    }

    /// One callback of `app` (a configured SDKAppID, or none), whose command `command` (a
    /// configured pattern, or [`OTHER`]) names, ended with `outcome` (one of [`OUTCOMES`]).
    pub fn counted(&self, app: Option<u64>, command: &str, outcome: &'static str) {
        self.series(app, command, outcome).inc();
    }

    /// The service took `seconds` over one callback of `app` routed by `command`.
    pub fn served(&self, app: u64, command: &str, seconds: f64) {
        let labels = RouteLabels {
            app: app.to_string(),
            command: command.to_owned(),
        };
        self.service.get_or_create(&labels).observe(seconds);
    }

    fn series(&self, app: Option<u64>, command: &str, outcome: &'static str) -> Counter {
        let labels = CallbackLabels {
            app: app.map_or_else(|| "none".to_owned(), |id| id.to_string()),
            command: command.to_owned(),
            outcome,
        };
        self.callbacks.get_or_create(&labels).clone()
    }
}

//! The plain data the limiter is built from: an app's limits, its callers' lanes and the
//! fleet's settings. timgate's configuration builds these; the limiter reads nothing else.

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::time::Duration;

use crate::table::Quota;

/// One app's limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppSpec {
    /// The SDKAppID.
    pub sdkappid: u64,
    /// Calls per second Tencent allows the app.
    pub rate_limit: NonZeroU32,
    /// Calls per second of single APIs, by API name (`service/command`).
    pub api_limits: BTreeMap<String, NonZeroU32>,
    /// Quotas beyond calls a second (the documented ones and the configured others).
    pub api_quotas: Vec<Quota>,
}

impl AppSpec {
    /// An app limited to `rate_limit` calls a second, with the documented per-API limits
    /// (`table::CALLS`) and quotas (`table::quotas`).
    pub fn new(sdkappid: u64, rate_limit: NonZeroU32) -> AppSpec {
        AppSpec {
            sdkappid,
            rate_limit,
            api_limits: crate::table::CALLS
                .iter()
                .filter_map(|(api, n)| Some(((*api).to_owned(), NonZeroU32::new(*n)?)))
                .collect(),
            api_quotas: crate::table::quotas(),
        }
    }
}

impl From<&AppSpec> for AppSpec {
    fn from(spec: &AppSpec) -> AppSpec {
        spec.clone()
    }
}

/// A caller's own lane within each app it calls: its name and calls a second.
pub type CallerSpec<'c> = (&'c str, NonZeroU32);

/// Where and how the fleet's lanes are shared.
#[derive(Clone)]
pub struct FleetSpec {
    /// The Redis client (URL and password), built when the configuration was checked, so
    /// nothing about it can fail once the limiter runs. Never printed.
    pub client: redis::Client,
    /// Prefix of every key, and their Redis Cluster hash tag.
    pub key_prefix: String,
    /// This replica's name in the fleet (`[fleet] member`): a process that comes back under
    /// it takes its place.
    pub member: String,
    /// Planned replica count: a replica's share until Redis has told it the live size.
    pub replicas: NonZeroU32,
    /// Longest one Redis call may take before the fallback takes over.
    pub timeout: Duration,
}

impl From<&FleetSpec> for FleetSpec {
    fn from(spec: &FleetSpec) -> FleetSpec {
        spec.clone()
    }
}

impl std::fmt::Debug for FleetSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The client holds the password: only the rest is shown.
        f.debug_struct("FleetSpec")
            .field("key_prefix", &self.key_prefix)
            .field("member", &self.member)
            .field("replicas", &self.replicas)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

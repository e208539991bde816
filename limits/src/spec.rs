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
    /// The way to Redis, built when the configuration was checked, so nothing about it can
    /// fail once the limiter runs. Never printed (it holds passwords).
    pub redis: RedisSpec,
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

/// The three ways to the fleet's Redis.
#[derive(Clone)]
pub enum RedisSpec {
    /// One server (`redis_url`): the client for its URL and password.
    Url(redis::Client),
    /// The primary that Redis Sentinel names (`sentinels`, `master_name`), found again after
    /// a failover.
    Sentinel(SentinelSpec),
    /// A Redis Cluster from its seed nodes (`cluster_nodes`), following `MOVED` and `ASK`.
    Cluster(ClusterSpec),
}

/// A Redis Cluster, reached through any of its seed nodes.
#[derive(Clone)]
pub struct ClusterSpec {
    /// The seed nodes' addresses (host, port): any one that answers tells the rest.
    pub nodes: Vec<(String, u16)>,
    /// The nodes' password, if any.
    pub password: Option<String>,
}

impl ClusterSpec {
    /// The redis-rs client for the Cluster, each call given up after `timeout`; built once
    /// by validation to check it, and again by the fleet.
    pub fn client(&self, timeout: Duration) -> redis::RedisResult<redis::cluster::ClusterClient> {
        let nodes = self
            .nodes
            .iter()
            .map(|(host, port)| redis::ConnectionAddr::Tcp(host.clone(), *port));
        let mut builder = redis::cluster::ClusterClientBuilder::new(nodes)
            .connection_timeout(timeout.max(Duration::from_millis(200)))
            .response_timeout(timeout)
            // A MOVED or ASK is followed at once; a node that is gone is not waited for: the
            // fleet's fallback covers the failover and the next call finds the new map.
            .retries(2)
            .min_retry_wait(1)
            .max_retry_wait(20)
            .tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true));
        if let Some(password) = &self.password {
            builder = builder.password(password);
        }
        builder.build()
    }
}

/// The primary named `master_name`, as the Sentinels at `sentinels` know it.
#[derive(Clone)]
pub struct SentinelSpec {
    /// The Sentinels' addresses (host, port), asked in order.
    pub sentinels: Vec<(String, u16)>,
    /// The name the Sentinels monitor the primary under.
    pub master_name: String,
    /// The password of the primary (and replicas), if any.
    pub password: Option<String>,
    /// The Sentinels' own password, if any.
    pub sentinel_password: Option<String>,
}

impl SentinelSpec {
    /// The redis-rs client that asks the Sentinels for the primary; built once by validation
    /// to check it, and again by the fleet.
    pub fn client(&self) -> redis::RedisResult<redis::sentinel::SentinelClient> {
        let addrs = self
            .sentinels
            .iter()
            .map(|(host, port)| redis::ConnectionAddr::Tcp(host.clone(), *port));
        let mut builder = redis::sentinel::SentinelClientBuilder::new(
            addrs,
            &self.master_name,
            redis::sentinel::SentinelServerType::Master,
        )?;
        // Nagle off, as for `redis_url`: calls are small and latency is the point.
        builder = builder.set_client_to_redis_tcp_settings(
            redis::io::tcp::TcpSettings::default().set_nodelay(true),
        );
        if let Some(password) = &self.password {
            builder = builder.set_client_to_redis_password(password);
        }
        if let Some(password) = &self.sentinel_password {
            builder = builder.set_client_to_sentinel_password(password);
        }
        builder.build()
    }
}

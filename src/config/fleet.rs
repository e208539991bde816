//! `[fleet]`'s way to Redis: exactly one of `redis_url` (one server), `sentinels` with
//! `master_name` (the primary Redis Sentinel names), or `cluster_nodes` (a Redis Cluster's
//! seed nodes). Passwords come from environment variables named in the file (or, for
//! `redis_url`, from the URL) and are never printed.

use super::{ConfigError, RedisUrl, SecretKey};
use crate::limiter::{ClusterSpec, RedisSpec, SentinelSpec};

/// Where the fleet's Redis is, as configured; `Debug` shows no password.
#[derive(Clone)]
pub enum FleetRedis {
    /// `redis_url`: one server (or anything that answers at one address).
    Url(RedisUrl),
    /// `sentinels`, `master_name`, `sentinel_password_env`: the primary the Sentinels name.
    Sentinel {
        /// The Sentinels' addresses as written (`host:port`).
        sentinels: Vec<String>,
        /// The name the Sentinels monitor the primary under.
        master_name: String,
        /// The variable the Sentinels' own password was read from, if any.
        sentinel_password_env: Option<String>,
        /// What the limiter connects with (passwords included).
        spec: SentinelSpec,
    },
    /// `cluster_nodes`: a Redis Cluster.
    Cluster {
        /// The seed nodes as written (`host:port`).
        nodes: Vec<String>,
        /// What the limiter connects with (password included).
        spec: ClusterSpec,
    },
}

impl FleetRedis {
    /// What the limiter connects with.
    pub fn spec(&self) -> RedisSpec {
        match self {
            FleetRedis::Url(url) => RedisSpec::Url(url.client()),
            FleetRedis::Sentinel { spec, .. } => RedisSpec::Sentinel(spec.clone()),
            FleetRedis::Cluster { spec, .. } => RedisSpec::Cluster(spec.clone()),
        }
    }
}

impl std::fmt::Debug for FleetRedis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FleetRedis::Url(url) => write!(f, "Url({url:?})"),
            FleetRedis::Sentinel {
                sentinels,
                master_name,
                sentinel_password_env,
                spec,
            } => f
                .debug_struct("Sentinel")
                .field("sentinels", sentinels)
                .field("master_name", master_name)
                .field("sentinel_password_env", sentinel_password_env)
                .field("password", &spec.password.as_ref().map(|_| "***"))
                .finish(),
            FleetRedis::Cluster { nodes, spec } => f
                .debug_struct("Cluster")
                .field("nodes", nodes)
                .field("password", &spec.password.as_ref().map(|_| "***"))
                .finish(),
        }
    }
}

/// The `[fleet]` keys that choose the way to Redis, as written.
pub(super) struct RawRedis {
    pub redis_url: Option<String>,
    pub sentinels: Option<Vec<String>>,
    pub master_name: Option<String>,
    pub sentinel_password_env: Option<String>,
    pub cluster_nodes: Option<Vec<String>>,
}

impl RawRedis {
    /// The way to Redis, `None` when no key names one (the fleet is off), or the key at
    /// fault; `password` is `redis_password_env`'s value.
    pub fn validate(
        self,
        password: Option<SecretKey>,
        timeout: std::time::Duration,
    ) -> Result<Option<FleetRedis>, ConfigError> {
        let named: Vec<&str> = [
            ("redis_url", self.redis_url.is_some()),
            ("sentinels", self.sentinels.is_some()),
            ("cluster_nodes", self.cluster_nodes.is_some()),
        ]
        .into_iter()
        .filter_map(|(key, set)| set.then_some(key))
        .collect();
        if named.len() > 1 {
            return Err(ConfigError::new(
                "fleet",
                format!(
                    "set exactly one of redis_url, sentinels, cluster_nodes; found {}",
                    named.join(" and ")
                ),
            ));
        }
        if self.sentinels.is_none() {
            for (key, set) in [
                ("master_name", self.master_name.is_some()),
                (
                    "sentinel_password_env",
                    self.sentinel_password_env.is_some(),
                ),
            ] {
                if set {
                    return Err(ConfigError::new(
                        format!("fleet.{key}"),
                        "is read only with fleet.sentinels",
                    ));
                }
            }
        }
        if let Some(url) = self.redis_url {
            let url = RedisUrl::new(&url, password)
                .map_err(|e| ConfigError::new("fleet.redis_url", e))?;
            return Ok(Some(FleetRedis::Url(url)));
        }
        let password = password.map(|p| p.expose().to_owned());
        if let Some(sentinels) = self.sentinels {
            let master_name = self.master_name.ok_or_else(|| {
                ConfigError::new(
                    "fleet.master_name",
                    "is required with fleet.sentinels: the name the Sentinels monitor the primary under",
                )
            })?;
            return sentinel(sentinels, master_name, self.sentinel_password_env, password)
                .map(Some);
        }
        match self.cluster_nodes {
            Some(nodes) => cluster(nodes, password, timeout).map(Some),
            None => Ok(None),
        }
    }
}

/// `sentinels`, `master_name` and `sentinel_password_env`.
fn sentinel(
    sentinels: Vec<String>,
    master_name: String,
    sentinel_password_env: Option<String>,
    password: Option<String>,
) -> Result<FleetRedis, ConfigError> {
    if master_name.is_empty() || master_name.contains(char::is_whitespace) {
        return Err(ConfigError::new(
            "fleet.master_name",
            "must be a non-empty name without spaces",
        ));
    }
    let sentinel_password = match &sentinel_password_env {
        None => None,
        Some(var) => Some(std::env::var(var).map_err(|_| {
            ConfigError::new(
                "fleet.sentinel_password_env",
                format!("environment variable {var} is not set"),
            )
        })?),
    };
    let spec = SentinelSpec {
        sentinels: addresses("fleet.sentinels", &sentinels)?,
        master_name: master_name.clone(),
        password,
        sentinel_password,
    };
    // The client's own checks; its errors name no secret.
    spec.client()
        .map_err(|e| ConfigError::new("fleet.sentinels", e.to_string()))?;
    Ok(FleetRedis::Sentinel {
        sentinels,
        master_name,
        sentinel_password_env,
        spec,
    })
}

/// `cluster_nodes`.
fn cluster(
    nodes: Vec<String>,
    password: Option<String>,
    timeout: std::time::Duration,
) -> Result<FleetRedis, ConfigError> {
    let spec = ClusterSpec {
        nodes: addresses("fleet.cluster_nodes", &nodes)?,
        password,
    };
    spec.client(timeout)
        .map_err(|e| ConfigError::new("fleet.cluster_nodes", e.to_string()))?;
    Ok(FleetRedis::Cluster { nodes, spec })
}

/// A non-empty list of `host:port` (`[v6]:port` for an IPv6 address), at most 64.
fn addresses(key: &str, written: &[String]) -> Result<Vec<(String, u16)>, ConfigError> {
    if written.is_empty() || written.len() > 64 {
        return Err(ConfigError::new(
            key,
            "must list 1 to 64 host:port addresses",
        ));
    }
    written
        .iter()
        .enumerate()
        .map(|(i, address)| {
            host_port(address).ok_or_else(|| {
                ConfigError::new(
                    format!("{key}[{i}]"),
                    format!("{address:?} is not host:port (a port from 1 to 65535)"),
                )
            })
        })
        .collect()
}

/// `host:port`, or `[v6]:port`.
fn host_port(address: &str) -> Option<(String, u16)> {
    let (host, port) = address.rsplit_once(':')?;
    let host = match host.strip_prefix('[') {
        Some(v6) => v6.strip_suffix(']')?,
        None if host.contains(':') => return None,
        None => host,
    };
    let port: u16 = port.parse().ok().filter(|p| *p != 0)?;
    let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':');
    (!host.is_empty() && host.chars().all(plain)).then(|| (host.to_owned(), port))
}

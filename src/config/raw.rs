//! The configuration as written: serde structs with their defaults, and the validation that
//! turns them into the typed `Config`, naming the key at fault for every problem.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use hyper::Uri;
use serde::Deserialize;

use super::value::{millis, rate, socket_addr, up_to_an_hour};
use super::{
    App, Config, ConfigError, DEFAULT_API_LIMITS, Emulator, Endpoint, Fleet, Log, LogFormat,
    Region, SecretKey, SecretSource, Server,
};
use crate::api::{Api, Known};
use crate::limiter::table::{self, Per, Quota};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    #[serde(default)]
    server: super::server::RawServer,
    #[serde(default)]
    emulator: RawEmulator,
    #[serde(default)]
    log: RawLog,
    #[serde(default)]
    apps: Vec<RawApp>,
    #[serde(default)]
    fleet: RawFleet,
    #[serde(default)]
    callers: Vec<super::callers::RawCaller>,
    #[serde(default)]
    callbacks: super::callbacks::RawCallbacks,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawFleet {
    redis_url: Option<String>,
    sentinels: Option<Vec<String>>,
    master_name: Option<String>,
    sentinel_password_env: Option<String>,
    cluster_nodes: Option<Vec<String>>,
    redis_password_env: Option<String>,
    key_prefix: String,
    member: Option<String>,
    replicas: u32,
    timeout_ms: u64,
}

impl Default for RawFleet {
    fn default() -> Self {
        Self {
            redis_url: None,
            sentinels: None,
            master_name: None,
            sentinel_password_env: None,
            cluster_nodes: None,
            redis_password_env: None,
            key_prefix: "timgate".into(),
            member: None,
            replicas: 1,
            timeout_ms: 50,
        }
    }
}

impl RawFleet {
    fn validate(self) -> Result<Option<Fleet>, ConfigError> {
        let none =
            self.redis_url.is_none() && self.sentinels.is_none() && self.cluster_nodes.is_none();
        if none && self.master_name.is_none() && self.sentinel_password_env.is_none() {
            return Ok(None);
        }
        let password = match &self.redis_password_env {
            None => None,
            Some(var) => Some(SecretKey::new(&std::env::var(var).map_err(|_| {
                ConfigError::new(
                    "fleet.redis_password_env",
                    format!("environment variable {var} is not set"),
                )
            })?)),
        };
        let raw = super::fleet::RawRedis {
            redis_url: self.redis_url,
            sentinels: self.sentinels,
            master_name: self.master_name,
            sentinel_password_env: self.sentinel_password_env,
            cluster_nodes: self.cluster_nodes,
        };
        let Some(redis) = raw.validate(password, Duration::from_millis(self.timeout_ms))? else {
            return Ok(None);
        };
        key_prefix(&self.key_prefix)?;
        let member = member(self.member)?;
        let replicas = NonZeroU32::new(self.replicas)
            .ok_or_else(|| ConfigError::new("fleet.replicas", "must be at least 1"))?;
        if !(1..=1000).contains(&self.timeout_ms) {
            return Err(ConfigError::new(
                "fleet.timeout_ms",
                "must be between 1 and 1000: a limiter call slower than that is an outage",
            ));
        }
        Ok(Some(Fleet {
            redis,
            redis_password_env: self.redis_password_env,
            key_prefix: self.key_prefix,
            member,
            replicas,
            timeout: Duration::from_millis(self.timeout_ms),
        }))
    }
}

/// `fleet.key_prefix`: a word that can sit inside the braces of a Redis Cluster hash tag.
fn key_prefix(prefix: &str) -> Result<(), ConfigError> {
    if prefix.is_empty() || prefix.contains(|c: char| c.is_whitespace() || c == '{' || c == '}') {
        return Err(ConfigError::new(
            "fleet.key_prefix",
            "must be a non-empty word without spaces or braces (timgate wraps it in braces: the keys' Redis Cluster hash tag)",
        ));
    }
    Ok(())
}

/// `fleet.member`, by default the host name (Kubernetes sets it to the pod's name, which a
/// restarted container keeps): a name the script can keep beside its own `~`/`@` fields.
fn member(configured: Option<String>) -> Result<String, ConfigError> {
    let (name, from) = match configured {
        Some(name) => (name, "is"),
        None => (
            rustix::system::uname()
                .nodename()
                .to_string_lossy()
                .into_owned(),
            "defaults to the host name, which is",
        ),
    };
    let fits = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_');
    if name.is_empty()
        || name.len() > 253
        || !name.chars().all(fits)
        || name.starts_with(['-', '.'])
    {
        return Err(ConfigError::new(
            "fleet.member",
            format!(
                "{from} {name:?}: must be 1 to 253 letters, digits, '.', '-' or '_', not starting \
                 with '.' or '-' (each replica's own name; a replica that restarts under it takes \
                 its place)"
            ),
        ));
    }
    Ok(name)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    #[serde(default = "default_log_format")]
    format: LogFormat,
}

impl Default for RawLog {
    fn default() -> Self {
        Self {
            format: default_log_format(),
        }
    }
}

fn default_log_format() -> LogFormat {
    LogFormat::Text
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawEmulator {
    listen: String,
    seed: Option<String>,
}

impl Default for RawEmulator {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9000".into(),
            seed: None,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApp {
    sdkappid: Option<u64>,
    identifier: Option<String>,
    secret_key: Option<String>,
    secret_key_env: Option<String>,
    secret_key_file: Option<String>,
    region: Option<String>,
    endpoint: Option<String>,
    backup_endpoint: Option<String>,
    #[serde(default = "default_ttl")]
    usersig_ttl_secs: u64,
    #[serde(default = "default_rate_limit")]
    rate_limit: u32,
    #[serde(default)]
    api_limits: BTreeMap<String, u32>,
    apis: Option<Vec<String>>,
    #[serde(default)]
    api_quotas: Vec<RawQuota>,
    #[serde(default = "default_max_queue_wait_ms")]
    max_queue_wait_ms: u64,
    #[serde(default = "default_max_attempts")]
    max_attempts: u32,
    #[serde(default = "default_retry_base_ms")]
    retry_base_ms: u64,
    #[serde(default = "default_retry_cap_ms")]
    retry_cap_ms: u64,
    #[serde(default = "default_deadline_ms")]
    deadline_ms: u64,
    /// Only here to be refused with a useful message: a token never sits in the file.
    callback_token: Option<serde::de::IgnoredAny>,
    callback_token_env: Option<String>,
    callback_token_file: Option<String>,
    callback_token_previous_env: Option<String>,
    callback_token_previous_file: Option<String>,
    #[serde(default)]
    allow_unsigned_callbacks: bool,
    #[serde(default)]
    callbacks: Vec<super::callbacks::RawRoute>,
}

/// One `[[apps.api_quotas]]` entry: a quota beyond calls a second.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawQuota {
    api: Option<String>,
    rate: Option<u32>,
    per: Option<String>,
    cost: Option<String>,
    key: Option<String>,
}

fn default_ttl() -> u64 {
    600
}
fn default_rate_limit() -> u32 {
    200
}
fn default_max_queue_wait_ms() -> u64 {
    1000
}
fn default_max_attempts() -> u32 {
    3
}
fn default_retry_base_ms() -> u64 {
    50
}
fn default_retry_cap_ms() -> u64 {
    1000
}
fn default_deadline_ms() -> u64 {
    10_000
}

impl RawConfig {
    pub(super) fn validate(self) -> Result<Config, ConfigError> {
        let apps = apps(self.apps)?;
        let server = self.server.validate()?;
        let callers = super::callers::validate(self.callers, &apps)?;
        super::callers::check_exposure(server.listen, server.allow_anonymous, &callers)?;
        let embedded = apps.iter().any(|a| a.endpoint == Endpoint::Emulator);
        let emulator = self.emulator.validate(embedded, &server)?;
        let seed = self
            .emulator
            .seed
            .as_deref()
            .map(|path| super::read_seed(path, &apps))
            .transpose()?;
        // Any `replicas` fits every quota: a share smaller than a call is the fallback's to
        // handle while cut off from Redis (the limiter's `share`).
        let fleet = self.fleet.validate()?;
        let mut taken = vec![
            ("server.listen", server.listen),
            ("server.admin_listen", server.admin_listen),
        ];
        if embedded {
            taken.push(("emulator.listen", emulator));
        }
        let callbacks = super::callbacks::validate(self.callbacks, &apps, &taken)?;
        Ok(Config {
            server,
            emulator: Emulator {
                listen: emulator,
                seed,
            },
            log: Log {
                format: self.log.format,
            },
            apps,
            fleet,
            callers,
            callbacks,
        })
    }
}

/// Every `[[apps]]` entry, at least one, each SDKAppID once.
fn apps(raw: Vec<RawApp>) -> Result<Vec<App>, ConfigError> {
    if raw.is_empty() {
        return Err(ConfigError::new(
            "apps",
            "at least one [[apps]] entry is required",
        ));
    }
    let apps = raw
        .into_iter()
        .enumerate()
        .map(|(i, app)| app.validate(&format!("apps[{i}]")))
        .collect::<Result<Vec<_>, _>>()?;
    let mut seen = HashSet::new();
    for (i, app) in apps.iter().enumerate() {
        if !seen.insert(app.sdkappid) {
            return Err(ConfigError::new(
                format!("apps[{i}].sdkappid"),
                format!("{} is configured twice", app.sdkappid),
            ));
        }
    }
    Ok(apps)
}

impl RawEmulator {
    /// `emulator.listen`; with an app whose endpoint is the in-process emulator (`embedded`),
    /// apart from the server's listeners.
    fn validate(&self, embedded: bool, server: &Server) -> Result<SocketAddr, ConfigError> {
        let emulator = socket_addr("emulator.listen", &self.listen)?;
        let taken = [server.listen, server.admin_listen];
        if embedded && emulator.port() != 0 && taken.contains(&emulator) {
            return Err(ConfigError::new(
                "emulator.listen",
                "must differ from server.listen and server.admin_listen: an app's endpoint is \"emulator\"",
            ));
        }
        Ok(emulator)
    }
}

impl RawApp {
    fn validate(mut self, at: &str) -> Result<App, ConfigError> {
        let key = |name: &str| format!("{at}.{name}");
        let (sdkappid, identifier) = self.identity(at)?;
        let region = region(&key("region"), self.region.as_deref())?;
        let (endpoint, backup_endpoint) = self.endpoints(at, region)?;
        self.check_signing_and_retries(at)?;
        let (secret_key, secret_source) = secret(
            at,
            self.secret_key.take(),
            self.secret_key_env.take(),
            self.secret_key_file.take(),
        )?;
        let callbacks = self.callbacks(at)?;
        Ok(App {
            sdkappid,
            identifier,
            secret_key,
            secret_source,
            region,
            endpoint,
            backup_endpoint,
            usersig_ttl: Duration::from_secs(self.usersig_ttl_secs),
            rate_limit: rate(&key("rate_limit"), self.rate_limit)?,
            api_limits: api_limits(&key("api_limits"), self.api_limits)?,
            apis: super::callers::patterns(&key("apis"), self.apis)?,
            api_quotas: api_quotas(&key("api_quotas"), self.api_quotas)?,
            max_queue_wait: up_to_an_hour(&key("max_queue_wait_ms"), self.max_queue_wait_ms)?,
            max_attempts: self.max_attempts,
            retry_base: millis(&key("retry_base_ms"), self.retry_base_ms)?,
            retry_cap: millis(&key("retry_cap_ms"), self.retry_cap_ms)?,
            deadline: millis(&key("deadline_ms"), self.deadline_ms)?,
            callbacks,
        })
    }

    /// `sdkappid` and `identifier`, both required.
    fn identity(&mut self, at: &str) -> Result<(u64, String), ConfigError> {
        let key = |name: &str| format!("{at}.{name}");
        let sdkappid = self
            .sdkappid
            .filter(|n| *n > 0)
            .ok_or_else(|| ConfigError::new(key("sdkappid"), "required, a positive integer"))?;
        let identifier = self
            .identifier
            .take()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| ConfigError::new(key("identifier"), "required: an App admin account"))?;
        Ok((sdkappid, identifier))
    }

    /// `endpoint` (default the region's primary domain) and `backup_endpoint`.
    fn endpoints(&self, at: &str, region: Region) -> Result<(Endpoint, Option<Uri>), ConfigError> {
        let key = |name: &str| format!("{at}.{name}");
        let endpoint = match self.endpoint.as_deref() {
            None => Endpoint::Url(
                base_url(&format!("https://{}", region.domain()))
                    .expect("the built-in domains are valid URLs"),
            ),
            Some("emulator") => Endpoint::Emulator,
            Some(url) => {
                Endpoint::Url(base_url(url).map_err(|m| ConfigError::new(key("endpoint"), m))?)
            }
        };
        let backup_endpoint = match (self.backup_endpoint.as_deref(), &self.endpoint) {
            (Some(url), _) => {
                Some(base_url(url).map_err(|m| ConfigError::new(key("backup_endpoint"), m))?)
            }
            // The region's own domains: the backup is its `*.my-imcloud.com` twin.
            (None, None) => Some(
                base_url(&format!("https://{}", region.backup_domain()))
                    .expect("the built-in domains are valid URLs"),
            ),
            // An endpoint of one's own has no backup unless one is named.
            (None, Some(_)) => None,
        };
        Ok((endpoint, backup_endpoint))
    }

    /// `usersig_ttl_secs`, `max_attempts`, and a `retry_cap_ms` not below `retry_base_ms`.
    fn check_signing_and_retries(&self, at: &str) -> Result<(), ConfigError> {
        let key = |name: &str| format!("{at}.{name}");
        if self.usersig_ttl_secs < 60 || self.usersig_ttl_secs > 86_400 {
            return Err(ConfigError::new(
                key("usersig_ttl_secs"),
                "must be between 60 and 86400: short-lived, yet long enough to re-sign at half",
            ));
        }
        if !(1..=10).contains(&self.max_attempts) {
            return Err(ConfigError::new(
                key("max_attempts"),
                "must be between 1 and 10",
            ));
        }
        if self.retry_cap_ms < self.retry_base_ms {
            return Err(ConfigError::new(
                key("retry_cap_ms"),
                "must be at least retry_base_ms",
            ));
        }
        Ok(())
    }

    /// Its callback token and `[[apps.callbacks]]` routes, taken out of it.
    fn callbacks(&mut self, at: &str) -> Result<super::AppCallbacks, ConfigError> {
        super::callbacks::RawAppCallbacks {
            inline: self.callback_token.is_some(),
            token_env: self.callback_token_env.take(),
            token_file: self.callback_token_file.take(),
            previous_env: self.callback_token_previous_env.take(),
            previous_file: self.callback_token_previous_file.take(),
            allow_unsigned: self.allow_unsigned_callbacks,
            routes: std::mem::take(&mut self.callbacks),
        }
        .validate(at)
    }
}

/// `region`, by its configuration name.
fn region(key: &str, name: Option<&str>) -> Result<Region, ConfigError> {
    let region_name = name.unwrap_or("");
    Region::from_name(region_name).ok_or_else(|| {
        let names: Vec<_> = Region::ALL.iter().map(|(n, _)| *n).collect();
        ConfigError::new(
            key,
            format!(
                "unknown region {region_name:?}; expected one of {}",
                names.join(", ")
            ),
        )
    })
}

/// The documented per-API limits, overridden and extended by the configured ones.
fn api_limits(
    at: &str,
    configured: BTreeMap<String, u32>,
) -> Result<BTreeMap<String, NonZeroU32>, ConfigError> {
    let defaults = DEFAULT_API_LIMITS
        .iter()
        .map(|(api, n)| ((*api).to_owned(), *n));
    let mut limits = BTreeMap::new();
    for (api, n) in defaults.chain(configured) {
        let key = format!("{at}.\"{api}\"");
        api_name(&key, &api)?;
        limits.insert(api, rate(&key, n)?);
    }
    Ok(limits)
}

/// Refuses anything but a known-looking `service/command`.
fn api_name(key: &str, api: &str) -> Result<(), ConfigError> {
    let Some(parsed) = Api::from_path(&format!("/v4/{api}")) else {
        return Err(ConfigError::new(
            key,
            "must name an API as \"service/command\" (letters, digits and _)",
        ));
    };
    match parsed.known() {
        Known::Command | Known::OtherService => Ok(()),
        Known::UnknownCommand => Err(ConfigError::new(
            key,
            format!("{} has no command {:?}", parsed.service(), parsed.command()),
        )),
        Known::NearService(service) => Err(ConfigError::new(
            key,
            format!(
                "unknown service {:?}; did you mean {service}?",
                parsed.service()
            ),
        )),
    }
}

/// The documented quotas, each replaced by a configured one that counts the same thing
/// (same API, cost field and key field), then the other configured ones.
fn api_quotas(at: &str, configured: Vec<RawQuota>) -> Result<Vec<Quota>, ConfigError> {
    let mut quotas = table::quotas();
    for (i, raw) in configured.into_iter().enumerate() {
        let at = format!("{at}[{i}]");
        let mut quota = raw.validate(&at)?;
        let documented = quotas.iter().position(|q| q.same_lane(&quota));
        quota.max_cost = documented.and_then(|i| quotas[i].max_cost);
        let largest = quota.largest_cost().get();
        if quota.cost.is_some() && quota.rate.get() < 2 * largest {
            return Err(ConfigError::new(
                format!("{at}.rate"),
                format!(
                    "must be at least {}: twice the most one call may cost",
                    2 * largest
                ),
            ));
        }
        match documented {
            Some(i) => quotas[i] = quota,
            None if quotas.iter().any(|q| q.same_lane(&quota)) => {
                return Err(ConfigError::new(
                    at,
                    "a quota with the same api, cost and key is configured above",
                ));
            }
            None => quotas.push(quota),
        }
    }
    Ok(quotas)
}

impl RawQuota {
    fn validate(self, at: &str) -> Result<Quota, ConfigError> {
        let key = |name: &str| format!("{at}.{name}");
        let api = self
            .api
            .ok_or_else(|| ConfigError::new(key("api"), "required: \"service/command\""))?;
        api_name(&key("api"), &api)?;
        let rate = rate(&key("rate"), self.rate.unwrap_or(0))?;
        let per = match self.per.as_deref() {
            None => Per::Second,
            Some(name) => Per::from_name(name)
                .ok_or_else(|| ConfigError::new(key("per"), "must be \"second\" or \"minute\""))?,
        };
        let field = |name: &str, value: Option<String>| match value {
            Some(f)
                if f.is_empty()
                    || f.len() > 64
                    || !f.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') =>
            {
                Err(ConfigError::new(
                    key(name),
                    "must name a top-level field of the body (letters, digits and _)",
                ))
            }
            other => Ok(other),
        };
        Ok(Quota {
            api,
            rate,
            per,
            cost: field("cost", self.cost)?,
            key: field("key", self.key)?,
            max_cost: None,
        })
    }
}

/// Resolves exactly one of the three secret sources.
fn secret(
    at: &str,
    inline: Option<String>,
    env: Option<String>,
    file: Option<String>,
) -> Result<(SecretKey, SecretSource), ConfigError> {
    let key = format!("{at}.secret_key");
    let (value, source) = match (inline, env, file) {
        (Some(k), None, None) => (k, SecretSource::Inline),
        (None, Some(var), None) => {
            let value = std::env::var(&var).map_err(|_| {
                ConfigError::new(
                    format!("{at}.secret_key_env"),
                    format!("environment variable {var} is not set"),
                )
            })?;
            (value, SecretSource::Env(var))
        }
        (None, None, Some(path)) => {
            let value = super::read_key_file(&path)
                .map_err(|e| ConfigError::new(format!("{at}.secret_key_file"), e))?;
            (value, SecretSource::File(path))
        }
        (None, None, None) => {
            return Err(ConfigError::new(
                key,
                "missing: set one of secret_key, secret_key_env, secret_key_file",
            ));
        }
        _ => {
            return Err(ConfigError::new(
                key,
                "set exactly one of secret_key, secret_key_env, secret_key_file",
            ));
        }
    };
    if value.is_empty() {
        return Err(ConfigError::new(key, "the secret key is empty"));
    }
    Ok((SecretKey::new(&value), source))
}

fn base_url(text: &str) -> Result<Uri, String> {
    let uri: Uri = text.parse().map_err(|_| format!("{text:?} is not a URL"))?;
    let scheme_ok = matches!(uri.scheme_str(), Some("http" | "https"));
    let bare = uri.path_and_query().is_none_or(|pq| pq.as_str() == "/");
    if !scheme_ok || uri.authority().is_none() || !bare {
        return Err(format!(
            "{text:?} must be http(s)://host[:port] with no path or query, or \"emulator\""
        ));
    }
    Ok(uri)
}

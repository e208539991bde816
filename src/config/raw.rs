//! The configuration as written: serde structs with their defaults, and the validation that
//! turns them into the typed `Config`, naming the key at fault for every problem.

use std::collections::{BTreeMap, HashSet};
use std::num::{NonZeroU32, NonZeroUsize};
use std::time::Duration;

use hyper::Uri;
use serde::Deserialize;

use super::value::{MAX_MS, millis, proxy_url, rate, socket_addr, up_to_an_hour};
use super::{
    App, Config, ConfigError, DEFAULT_API_LIMITS, EgressProxy, Emulator, Endpoint, ExtraRoots,
    Fleet, Log, LogFormat, RedisUrl, Region, SecretKey, SecretSource, Server,
};
use crate::api::{Api, Known};
use crate::limiter::table::{self, Per, Quota};

/// Most connections to one upstream origin (`server.upstream_max_connections`).
pub const MAX_UPSTREAM_CONNECTIONS: usize = 4096;
/// Most runtime worker threads (`server.worker_threads`).
pub const MAX_WORKER_THREADS: usize = 256;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    #[serde(default)]
    server: RawServer,
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
    redis_password_env: Option<String>,
    key_prefix: String,
    replicas: u32,
    timeout_ms: u64,
}

impl Default for RawFleet {
    fn default() -> Self {
        Self {
            redis_url: None,
            redis_password_env: None,
            key_prefix: "timgate".into(),
            replicas: 1,
            timeout_ms: 50,
        }
    }
}

impl RawFleet {
    fn validate(self) -> Result<Option<Fleet>, ConfigError> {
        let Some(url) = self.redis_url else {
            return Ok(None);
        };
        let password = match &self.redis_password_env {
            None => None,
            Some(var) => Some(SecretKey::new(&std::env::var(var).map_err(|_| {
                ConfigError::new(
                    "fleet.redis_password_env",
                    format!("environment variable {var} is not set"),
                )
            })?)),
        };
        let redis =
            RedisUrl::new(&url, password).map_err(|e| ConfigError::new("fleet.redis_url", e))?;
        if self.key_prefix.is_empty()
            || self
                .key_prefix
                .contains(|c: char| c.is_whitespace() || c == '{' || c == '}')
        {
            return Err(ConfigError::new(
                "fleet.key_prefix",
                "must be a non-empty word without spaces or braces (timgate wraps it in braces: the keys' Redis Cluster hash tag)",
            ));
        }
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
            replicas,
            timeout: Duration::from_millis(self.timeout_ms),
        }))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawServer {
    listen: String,
    admin_listen: String,
    max_body_bytes: u64,
    max_body_bytes_in_flight: u64,
    max_connections: u64,
    max_header_bytes: u64,
    header_read_timeout_ms: u64,
    write_timeout_ms: u64,
    body_read_timeout_ms: u64,
    ca_file: Option<String>,
    upstream_timeout_ms: u64,
    connect_timeout_ms: u64,
    drain_timeout_ms: u64,
    allow_anonymous: bool,
    upstream_max_connections: u64,
    upstream_idle_timeout_ms: u64,
    egress_proxy: Option<String>,
    worker_threads: Option<u64>,
}

impl Default for RawServer {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            admin_listen: "127.0.0.1:9464".into(),
            max_body_bytes: 128 * 1024,
            max_body_bytes_in_flight: 8 * 1024 * 1024,
            max_connections: 1024,
            max_header_bytes: 16 * 1024,
            header_read_timeout_ms: 10_000,
            write_timeout_ms: 10_000,
            body_read_timeout_ms: 10_000,
            ca_file: None,
            upstream_timeout_ms: 5000,
            connect_timeout_ms: 2000,
            drain_timeout_ms: 20_000,
            allow_anonymous: false,
            upstream_max_connections: 64,
            upstream_idle_timeout_ms: 60_000,
            egress_proxy: None,
            worker_threads: None,
        }
    }
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
}

impl Default for RawEmulator {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9000".into(),
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
        if self.apps.is_empty() {
            return Err(ConfigError::new(
                "apps",
                "at least one [[apps]] entry is required",
            ));
        }
        let apps = self
            .apps
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
        let server = self.server.validate()?;
        let callers = super::callers::validate(self.callers, &apps)?;
        super::callers::check_exposure(server.listen, server.allow_anonymous, &callers)?;
        let emulator = socket_addr("emulator.listen", &self.emulator.listen)?;
        let embedded = apps.iter().any(|a| a.endpoint == Endpoint::Emulator);
        let taken = [server.listen, server.admin_listen];
        if embedded && emulator.port() != 0 && taken.contains(&emulator) {
            return Err(ConfigError::new(
                "emulator.listen",
                "must differ from server.listen and server.admin_listen: an app's endpoint is \"emulator\"",
            ));
        }
        let fleet = self.fleet.validate()?;
        if let Some(fleet) = &fleet {
            quotas_fit_replicas(&apps, fleet.replicas)?;
        }
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
            emulator: Emulator { listen: emulator },
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

impl RawServer {
    fn validate(self) -> Result<Server, ConfigError> {
        let max_body_bytes = usize::try_from(self.max_body_bytes)
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| ConfigError::new("server.max_body_bytes", "must be above 0"))?;
        let max_body_bytes_in_flight = usize::try_from(self.max_body_bytes_in_flight)
            .ok()
            .filter(|n| *n >= max_body_bytes)
            .ok_or_else(|| {
                ConfigError::new(
                    "server.max_body_bytes_in_flight",
                    "must be at least server.max_body_bytes",
                )
            })?;
        if u32::try_from(max_body_bytes).is_err() {
            return Err(ConfigError::new(
                "server.max_body_bytes",
                "must be below 4 GiB",
            ));
        }
        let max_connections = usize::try_from(self.max_connections)
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| ConfigError::new("server.max_connections", "must be above 0"))?;
        // hyper's read buffer cannot be smaller than 8 KiB; a head never needs more than 1 MiB.
        let max_header_bytes = usize::try_from(self.max_header_bytes)
            .ok()
            .filter(|n| (8192..=1 << 20).contains(n))
            .ok_or_else(|| {
                ConfigError::new(
                    "server.max_header_bytes",
                    "must be between 8192 and 1048576",
                )
            })?;
        if !(3001..=MAX_MS).contains(&self.upstream_timeout_ms) {
            return Err(ConfigError::new(
                "server.upstream_timeout_ms",
                format!("must be between 3001 and {MAX_MS}: above Tencent's own deadline of 3 s"),
            ));
        }
        let listen = socket_addr("server.listen", &self.listen)?;
        let admin_listen = socket_addr("server.admin_listen", &self.admin_listen)?;
        if listen == admin_listen && listen.port() != 0 {
            return Err(ConfigError::new(
                "server.admin_listen",
                "must differ from server.listen",
            ));
        }
        let upstream_max_connections = usize::try_from(self.upstream_max_connections)
            .ok()
            .filter(|n| (1..=MAX_UPSTREAM_CONNECTIONS).contains(n))
            .ok_or_else(|| {
                ConfigError::new(
                    "server.upstream_max_connections",
                    format!("must be between 1 and {MAX_UPSTREAM_CONNECTIONS}"),
                )
            })?;
        let worker_threads = match self.worker_threads {
            None => default_worker_threads(),
            Some(n) => usize::try_from(n)
                .ok()
                .filter(|n| (1..=MAX_WORKER_THREADS).contains(n))
                .and_then(NonZeroUsize::new)
                .ok_or_else(|| {
                    ConfigError::new(
                        "server.worker_threads",
                        format!("must be between 1 and {MAX_WORKER_THREADS}"),
                    )
                })?,
        };
        let egress_proxy = self
            .egress_proxy
            .as_deref()
            .map(|url| {
                let url = proxy_url(url).map_err(|m| ConfigError::new("server.egress_proxy", m))?;
                Ok(EgressProxy {
                    url,
                    no_proxy: Vec::new(),
                    from: "server.egress_proxy",
                })
            })
            .transpose()?;
        Ok(Server {
            listen,
            admin_listen,
            upstream_max_connections,
            worker_threads,
            upstream_idle_timeout: millis(
                "server.upstream_idle_timeout_ms",
                self.upstream_idle_timeout_ms,
            )?,
            egress_proxy,
            max_body_bytes,
            max_body_bytes_in_flight,
            max_connections,
            max_header_bytes,
            header_read_timeout: millis(
                "server.header_read_timeout_ms",
                self.header_read_timeout_ms,
            )?,
            write_timeout: millis("server.write_timeout_ms", self.write_timeout_ms)?,
            body_read_timeout: millis("server.body_read_timeout_ms", self.body_read_timeout_ms)?,
            upstream_timeout: Duration::from_millis(self.upstream_timeout_ms),
            connect_timeout: millis("server.connect_timeout_ms", self.connect_timeout_ms)?,
            extra_roots: extra_roots(self.ca_file.as_deref())?,
            ca_file: self.ca_file,
            drain_timeout: drain("server.drain_timeout_ms", self.drain_timeout_ms)?,
            allow_anonymous: self.allow_anonymous,
        })
    }
}

impl RawApp {
    fn validate(self, at: &str) -> Result<App, ConfigError> {
        let key = |name: &str| format!("{at}.{name}");
        let sdkappid = self
            .sdkappid
            .filter(|n| *n > 0)
            .ok_or_else(|| ConfigError::new(key("sdkappid"), "required, a positive integer"))?;
        let identifier = self
            .identifier
            .filter(|s| !s.is_empty())
            .ok_or_else(|| ConfigError::new(key("identifier"), "required: an App admin account"))?;
        let region_name = self.region.as_deref().unwrap_or("");
        let region = Region::from_name(region_name).ok_or_else(|| {
            let names: Vec<_> = Region::ALL.iter().map(|(n, _)| *n).collect();
            ConfigError::new(
                key("region"),
                format!(
                    "unknown region {region_name:?}; expected one of {}",
                    names.join(", ")
                ),
            )
        })?;
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
        let (secret_key, secret_source) = secret(
            at,
            self.secret_key,
            self.secret_key_env,
            self.secret_key_file,
        )?;
        let callbacks = super::callbacks::RawAppCallbacks {
            inline: self.callback_token.is_some(),
            token_env: self.callback_token_env,
            token_file: self.callback_token_file,
            previous_env: self.callback_token_previous_env,
            previous_file: self.callback_token_previous_file,
            allow_unsigned: self.allow_unsigned_callbacks,
            routes: self.callbacks,
        }
        .validate(at)?;
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

/// In a fleet, each replica keeps every quota at 1/`replicas` of its rate (quotas are not
/// in Redis), so that the replicas together never pass it. That share must still be at least
/// one unit, and for a cost quota more than the most one call may cost: a smaller share would
/// hold the fleet under the limit only by refusing such calls forever.
fn quotas_fit_replicas(apps: &[App], replicas: NonZeroU32) -> Result<(), ConfigError> {
    for (i, app) in apps.iter().enumerate() {
        for quota in &app.api_quotas {
            let share = quota.rate.get() / replicas.get();
            let least = match quota.cost {
                Some(_) => quota.largest_cost().get() + 1,
                None => 1,
            };
            if share < least {
                return Err(ConfigError::new(
                    "fleet.replicas",
                    format!(
                        "{replicas} is too many for apps[{i}]'s {} quota of {quota}: each replica \
                         keeps 1/replicas of it ({share}), which must be at least {least}",
                        quota.api
                    ),
                ));
            }
        }
    }
    Ok(())
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

/// The certificates in the PEM file at `path`, if one is configured; at least one.
fn extra_roots(path: Option<&str>) -> Result<ExtraRoots, ConfigError> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let Some(path) = path else {
        return Ok(ExtraRoots::default());
    };
    let fail = |why: String| ConfigError::new("server.ca_file", format!("{path}: {why}"));
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| fail(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(e.to_string()))?;
    if certs.is_empty() {
        return Err(fail("no PEM certificate in it".into()));
    }
    let (_, rejected) =
        rustls::RootCertStore::empty().add_parsable_certificates(certs.iter().cloned());
    if rejected > 0 {
        return Err(fail(format!(
            "{rejected} certificate(s) are not usable as roots"
        )));
    }
    Ok(ExtraRoots(certs))
}

/// The drain: 1 s to an hour. A shorter one would cut off the callers' idle keep-alive
/// connections before they close, and the exit code would report requests cut that never were.
fn drain(key: &str, ms: u64) -> Result<Duration, ConfigError> {
    if ms < 1000 {
        return Err(ConfigError::new(
            key,
            format!("must be between 1000 and {MAX_MS}"),
        ));
    }
    up_to_an_hour(key, ms)
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

/// One: a sidecar's load is what Tencent's limits let through (200/s an app by default),
/// which one thread serves a hundred times over (about 20,000 requests/s on the development
/// machine), and a second worker costs cross-thread wake-ups on every request: CPU per
/// request 78-80 µs with two workers, 40-45 µs with one, in the same rounds
/// (benches/README.md). A gateway for many busy apps can set more.
fn default_worker_threads() -> NonZeroUsize {
    NonZeroUsize::MIN
}

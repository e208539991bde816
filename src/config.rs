//! Configuration: a TOML file layered with `TIMGATE__<SECTION>__<KEY>` environment variables,
//! validated whole before any port is bound.
//!
//! Raw, serde-shaped structs are read first; `validate` turns them into typed ones (units in
//! `Duration`, addresses parsed, exactly one secret source resolved) or into a `ConfigError`
//! that names the offending key. The secret key is a `SecretKey`, whose `Debug` prints `***`,
//! so a whole `Config` can be logged.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hyper::Uri;
use serde::Deserialize;

/// A Tencent SecretKey. Never printed: `Debug` and `Display` show `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretKey(Arc<str>);

impl SecretKey {
    /// Wraps a key; its raw UTF-8 bytes are the HMAC key.
    pub fn new(key: &str) -> Self {
        Self(Arc::from(key))
    }

    /// The key itself, for signing only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

impl std::fmt::Display for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// A Tencent data center, with its documented domains (TENCENT.md §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Region {
    China,
    Singapore,
    Korea,
    Japan,
    Germany,
    India,
    Usa,
    Indonesia,
}

impl Region {
    /// Every region, by its configuration name.
    pub const ALL: [(&'static str, Region); 8] = [
        ("china", Region::China),
        ("singapore", Region::Singapore),
        ("korea", Region::Korea),
        ("japan", Region::Japan),
        ("germany", Region::Germany),
        ("india", Region::India),
        ("usa", Region::Usa),
        ("indonesia", Region::Indonesia),
    ];

    /// The region named `name` in the configuration, if any.
    pub fn from_name(name: &str) -> Option<Region> {
        Self::ALL.iter().find(|(n, _)| *n == name).map(|(_, r)| *r)
    }

    /// The primary API domain of this data center.
    pub fn domain(self) -> &'static str {
        match self {
            Region::China => "console.tim.qq.com",
            Region::Singapore => "adminapisgp.im.qcloud.com",
            Region::Korea => "adminapikr.im.qcloud.com",
            Region::Japan => "adminapijpn.im.qcloud.com",
            Region::Germany => "adminapiger.im.qcloud.com",
            Region::India => "adminapiind.im.qcloud.com",
            Region::Usa => "adminapiusa.im.qcloud.com",
            Region::Indonesia => "adminapiidn.im.qcloud.com",
        }
    }
}

/// Where an app's requests go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A base URL such as `https://adminapisgp.im.qcloud.com` (no path, no query).
    Url(Uri),
    /// The emulator that timgate starts in its own process (`endpoint = "emulator"`).
    Emulator,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The proxy listener and request handling.
    pub server: Server,
    /// The emulator (`timgate emulate`, or the in-process one).
    pub emulator: Emulator,
    /// Logging.
    pub log: Log,
    /// One entry per SDKAppID; at least one.
    pub apps: Vec<App>,
}

/// `[server]`.
#[derive(Debug, Clone)]
pub struct Server {
    /// Where callers reach the gateway (`listen`, default `127.0.0.1:8080`).
    pub listen: SocketAddr,
    /// Health, readiness and metrics (`admin_listen`, default `127.0.0.1:9464`).
    pub admin_listen: SocketAddr,
    /// Largest request body accepted (`max_body_bytes`, default 1 MiB).
    pub max_body_bytes: usize,
    /// How long a caller may take to send its body (`body_read_timeout_ms`, default 10000).
    pub body_read_timeout: Duration,
    /// One upstream attempt's deadline (`upstream_timeout_ms`, default 5000; Tencent's own is 3 s).
    pub upstream_timeout: Duration,
    /// TCP+TLS connect deadline (`connect_timeout_ms`, default 2000).
    pub connect_timeout: Duration,
    /// How long accepted requests may take to finish on shutdown (`drain_timeout_ms`, default 20000).
    pub drain_timeout: Duration,
}

/// `[log]`.
#[derive(Debug, Clone)]
pub struct Log {
    /// `text` (default) or `json` lines (`format`); `--log-format` overrides it.
    pub format: LogFormat,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// `[emulator]`.
#[derive(Debug, Clone)]
pub struct Emulator {
    /// Where `timgate emulate` listens (`listen`, default `127.0.0.1:9000`).
    /// The in-process emulator always takes a free loopback port instead.
    pub listen: SocketAddr,
}

/// One `[[apps]]` entry.
#[derive(Debug, Clone)]
pub struct App {
    /// The SDKAppID.
    pub sdkappid: u64,
    /// An App administrator account; every upstream request is signed as it.
    pub identifier: String,
    /// The app's SecretKey, from `secret_key`, `secret_key_env` or `secret_key_file`.
    pub secret_key: SecretKey,
    /// The data center (`region`).
    pub region: Region,
    /// Where requests go (`endpoint`, default the region's primary domain over HTTPS).
    pub endpoint: Endpoint,
    /// Lifetime of each minted UserSig (`usersig_ttl_secs`, default 600); re-signed at half.
    pub usersig_ttl: Duration,
    /// Calls per second Tencent allows this SDKAppID (`rate_limit`, default 200).
    pub rate_limit: NonZeroU32,
    /// Calls per second for single APIs, keyed `service/command` (`api_limits`); the
    /// documented lower limits are there unless overridden.
    pub api_limits: BTreeMap<String, NonZeroU32>,
    /// Longest a request may wait for its turn (`max_queue_wait_ms`, default 1000).
    pub max_queue_wait: Duration,
    /// Upstream attempts per request, the first included (`max_attempts`, default 3).
    pub max_attempts: u32,
    /// First retry backoff (`retry_base_ms`, default 50); doubles per retry, jittered.
    pub retry_base: Duration,
    /// Longest retry backoff (`retry_cap_ms`, default 1000).
    pub retry_cap: Duration,
    /// No attempt starts later than this after the request arrived (`deadline_ms`, default 10000).
    pub deadline: Duration,
}

/// Tencent's documented per-API limits below the app's 200/s (TENCENT.md §6).
pub const DEFAULT_API_LIMITS: [(&str, u32); 3] = [
    ("live_engine_http_srv/get_room_list", 10),
    ("live_engine_http_srv/get_room_stats", 100),
    ("live_engine_http_srv/add_robot", 100),
];

/// A configuration problem, naming the key at fault.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {message}")]
pub struct ConfigError {
    /// The offending key, e.g. `apps[0].region`.
    pub key: String,
    /// What is wrong with it.
    pub message: String,
}

impl ConfigError {
    fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    emulator: RawEmulator,
    #[serde(default)]
    log: RawLog,
    #[serde(default)]
    apps: Vec<RawApp>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawServer {
    listen: String,
    admin_listen: String,
    max_body_bytes: u64,
    body_read_timeout_ms: u64,
    upstream_timeout_ms: u64,
    connect_timeout_ms: u64,
    drain_timeout_ms: u64,
}

impl Default for RawServer {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            admin_listen: "127.0.0.1:9464".into(),
            max_body_bytes: 1024 * 1024,
            body_read_timeout_ms: 10_000,
            upstream_timeout_ms: 5000,
            connect_timeout_ms: 2000,
            drain_timeout_ms: 20_000,
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
    #[serde(default = "default_ttl")]
    usersig_ttl_secs: u64,
    #[serde(default = "default_rate_limit")]
    rate_limit: u32,
    #[serde(default)]
    api_limits: BTreeMap<String, u32>,
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

impl Config {
    /// Reads `path` (TOML), layers `TIMGATE__*` environment variables over it, and validates.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = config::File::from(path).format(config::FileFormat::Toml);
        Self::build(config::Config::builder().add_source(file), true)
    }

    /// Validates a TOML document alone, without the environment (for tests and tools).
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let file = config::File::from_str(text, config::FileFormat::Toml);
        Self::build(config::Config::builder().add_source(file), false)
    }

    fn build(
        builder: config::ConfigBuilder<config::builder::DefaultState>,
        with_env: bool,
    ) -> Result<Config, ConfigError> {
        let builder = if with_env {
            builder.add_source(
                config::Environment::with_prefix("TIMGATE")
                    .separator("__")
                    .try_parsing(true),
            )
        } else {
            builder
        };
        let raw: RawConfig = builder
            .build()
            .and_then(config::Config::try_deserialize)
            .map_err(|e| ConfigError::new("config", e.to_string()))?;
        raw.validate()
    }

    /// The app for `sdkappid`, if configured.
    pub fn app(&self, sdkappid: u64) -> Option<&App> {
        self.apps.iter().find(|a| a.sdkappid == sdkappid)
    }
}

impl RawConfig {
    fn validate(self) -> Result<Config, ConfigError> {
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
        Ok(Config {
            server: self.server.validate()?,
            emulator: Emulator {
                listen: socket_addr("emulator.listen", &self.emulator.listen)?,
            },
            log: Log {
                format: self.log.format,
            },
            apps,
        })
    }
}

impl RawServer {
    fn validate(self) -> Result<Server, ConfigError> {
        let max_body_bytes = usize::try_from(self.max_body_bytes)
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| ConfigError::new("server.max_body_bytes", "must be above 0"))?;
        if self.upstream_timeout_ms <= 3000 {
            return Err(ConfigError::new(
                "server.upstream_timeout_ms",
                "must be above 3000: Tencent's own deadline is 3 s",
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
        Ok(Server {
            listen,
            admin_listen,
            max_body_bytes,
            body_read_timeout: millis("server.body_read_timeout_ms", self.body_read_timeout_ms)?,
            upstream_timeout: Duration::from_millis(self.upstream_timeout_ms),
            connect_timeout: millis("server.connect_timeout_ms", self.connect_timeout_ms)?,
            drain_timeout: Duration::from_millis(self.drain_timeout_ms),
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
        Ok(App {
            sdkappid,
            identifier,
            secret_key: secret(
                at,
                self.secret_key,
                self.secret_key_env,
                self.secret_key_file,
            )?,
            region,
            endpoint,
            usersig_ttl: Duration::from_secs(self.usersig_ttl_secs),
            rate_limit: NonZeroU32::new(self.rate_limit)
                .ok_or_else(|| ConfigError::new(key("rate_limit"), "must be above 0"))?,
            api_limits: api_limits(&key("api_limits"), self.api_limits)?,
            max_queue_wait: Duration::from_millis(self.max_queue_wait_ms),
            max_attempts: self.max_attempts,
            retry_base: millis(&key("retry_base_ms"), self.retry_base_ms)?,
            retry_cap: Duration::from_millis(self.retry_cap_ms),
            deadline: millis(&key("deadline_ms"), self.deadline_ms)?,
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
        if crate::api::Api::from_path(&format!("/v4/{api}")).is_none() {
            return Err(ConfigError::new(
                key,
                "must name an API as \"service/command\"",
            ));
        }
        let n = NonZeroU32::new(n).ok_or_else(|| ConfigError::new(key, "must be above 0"))?;
        limits.insert(api, n);
    }
    Ok(limits)
}

/// Resolves exactly one of the three secret sources.
fn secret(
    at: &str,
    inline: Option<String>,
    env: Option<String>,
    file: Option<String>,
) -> Result<SecretKey, ConfigError> {
    let key = format!("{at}.secret_key");
    let value = match (inline, env, file) {
        (Some(k), None, None) => k,
        (None, Some(var), None) => std::env::var(&var).map_err(|_| {
            ConfigError::new(
                format!("{at}.secret_key_env"),
                format!("environment variable {var} is not set"),
            )
        })?,
        (None, None, Some(path)) => std::fs::read_to_string(&path)
            .map_err(|e| {
                ConfigError::new(
                    format!("{at}.secret_key_file"),
                    format!("cannot read {path}: {e}"),
                )
            })?
            .trim_end_matches(['\r', '\n'])
            .to_owned(),
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
    Ok(SecretKey::new(&value))
}

fn socket_addr(key: &str, text: &str) -> Result<SocketAddr, ConfigError> {
    text.parse()
        .map_err(|_| ConfigError::new(key, format!("{text:?} is not an IP:port address")))
}

fn millis(key: &str, ms: u64) -> Result<Duration, ConfigError> {
    if ms == 0 {
        return Err(ConfigError::new(key, "must be above 0"));
    }
    Ok(Duration::from_millis(ms))
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

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
        [[apps]]
        sdkappid = 1400000001
        identifier = "administrator"
        secret_key = "k"
        region = "singapore"
    "#;

    fn refusal(text: &str) -> ConfigError {
        Config::from_toml(text).expect_err("config should be refused")
    }

    #[test]
    fn defaults_fill_an_app_with_only_its_required_keys() {
        let config = Config::from_toml(GOOD).unwrap();
        assert_eq!(config.server.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(config.server.max_body_bytes, 1024 * 1024);
        let app = &config.apps[0];
        assert_eq!(app.region, Region::Singapore);
        assert_eq!(
            app.endpoint,
            Endpoint::Url("https://adminapisgp.im.qcloud.com".parse().unwrap())
        );
        assert_eq!(app.usersig_ttl, Duration::from_secs(600));
    }

    #[test]
    fn debug_of_a_whole_config_masks_the_key() {
        let config = Config::from_toml(&GOOD.replace("\"k\"", "\"very-secret-value\"")).unwrap();
        let printed = format!("{config:?}");
        assert!(!printed.contains("very-secret-value"));
        assert!(printed.contains("***"));
    }

    #[test]
    fn two_secret_sources_are_refused_naming_the_key() {
        let e = refusal(&GOOD.replace(
            "secret_key = \"k\"",
            "secret_key = \"k\"\nsecret_key_env = \"X\"",
        ));
        assert_eq!(e.key, "apps[0].secret_key");
        assert!(e.message.contains("exactly one"));
    }

    #[test]
    fn a_missing_key_is_refused_naming_the_key() {
        let e = refusal(&GOOD.replace("secret_key = \"k\"", ""));
        assert_eq!(e.key, "apps[0].secret_key");
        assert!(e.message.contains("missing"));
    }

    #[test]
    fn an_unknown_region_is_refused_naming_the_key() {
        let e = refusal(&GOOD.replace("singapore", "mars"));
        assert_eq!(e.key, "apps[0].region");
        assert!(e.to_string().contains("\"mars\""));
    }

    #[test]
    fn an_unknown_key_is_refused_naming_it() {
        let e = refusal(&format!("{GOOD}\nregoin = \"x\""));
        assert!(e.to_string().contains("regoin"), "{e}");
    }

    #[test]
    fn a_timeout_below_tencents_own_is_refused() {
        let e = refusal(&format!("[server]\nupstream_timeout_ms = 3000\n{GOOD}"));
        assert_eq!(e.key, "server.upstream_timeout_ms");
    }

    #[test]
    fn endpoint_accepts_plain_http_and_the_emulator_only() {
        let with = |e: &str| Config::from_toml(&format!("{GOOD}endpoint = \"{e}\"\n"));
        assert!(with("http://127.0.0.1:9000").is_ok());
        assert_eq!(
            with("emulator").unwrap().apps[0].endpoint,
            Endpoint::Emulator
        );
        assert_eq!(with("ftp://x").unwrap_err().key, "apps[0].endpoint");
        assert_eq!(with("http://x/v4").unwrap_err().key, "apps[0].endpoint");
    }

    #[test]
    fn secret_key_file_is_read_and_its_newline_trimmed() {
        let path = std::env::temp_dir().join(format!("timgate-key-{}", std::process::id()));
        std::fs::write(&path, "from-file\n").unwrap();
        let text = GOOD.replace(
            "secret_key = \"k\"",
            &format!("secret_key_file = {:?}", path.display().to_string()),
        );
        let config = Config::from_toml(&text).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(config.apps[0].secret_key.expose(), "from-file");
    }

    #[test]
    fn api_limits_keep_documented_defaults_and_take_overrides() {
        let text = format!(
            "{GOOD}rate_limit = 500\n[apps.api_limits]\n\"live_engine_http_srv/get_room_list\" = 20\n\"openim/sendmsg\" = 50\n"
        );
        let app = &Config::from_toml(&text).unwrap().apps[0];
        assert_eq!(app.rate_limit.get(), 500);
        let limit = |api: &str| app.api_limits.get(api).map(|n| n.get());
        assert_eq!(limit("live_engine_http_srv/get_room_list"), Some(20));
        assert_eq!(limit("live_engine_http_srv/get_room_stats"), Some(100));
        assert_eq!(limit("openim/sendmsg"), Some(50));
    }

    #[test]
    fn a_malformed_api_limit_is_refused_naming_it() {
        let e = refusal(&format!(
            "{GOOD}[apps.api_limits]\n\"get_room_list\" = 20\n"
        ));
        assert!(
            e.key.contains("api_limits") && e.key.contains("get_room_list"),
            "{e}"
        );
        let e = refusal(&format!("{GOOD}rate_limit = 0\n"));
        assert_eq!(e.key, "apps[0].rate_limit");
    }

    #[test]
    fn the_same_sdkappid_twice_is_refused() {
        let e = refusal(&format!("{GOOD}{GOOD}"));
        assert_eq!(e.key, "apps[1].sdkappid");
    }
}

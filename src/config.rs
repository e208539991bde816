//! Configuration: a TOML file layered with `TIMGATE__<SECTION>__<KEY>` environment variables,
//! validated whole before any port is bound.
//!
//! Raw, serde-shaped structs are read first; `validate` turns them into typed ones (units in
//! `Duration`, addresses parsed, exactly one secret source resolved, every number within what
//! the gateway can run with) or into a `ConfigError` that names the offending key, and the
//! environment variable when one set it. The secret key is a `SecretKey`, whose `Debug`
//! prints `***`, so a whole `Config` can be logged; `Config::to_toml` prints the effective
//! configuration, secrets masked, in the file's own format. The files it comes from (the
//! configuration itself, key and token files) are read by `file`: regular files only, each
//! within its cap, so no path can make a start or a reload wait or swell.

mod callbacks;
mod callers;
mod egress;
mod env;
pub(crate) mod file;
mod fleet;
mod print;
mod raw;
mod server;
mod value;

pub use callbacks::{AppCallbacks, CallbackRoute, CallbackToken, Callbacks, OnTimeout};
pub use file::{MAX_CONFIG_BYTES, MAX_KEY_FILE_BYTES};
pub use fleet::FleetRedis;
pub use server::{Reload, SERVER_KEYS, ServerKey};
pub use value::{MAX_MS, MAX_RATE};

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hyper::Uri;
use serde::Deserialize;

use crate::api::Pattern;
use egress::{ProxyVars, egress_proxy};
use raw::RawConfig;

pub use crate::usersig::SecretKey;

/// A Tencent data center, with its documented domains (TENCENT.md §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Region {
    /// Mainland China (`china`).
    China,
    /// Singapore (`singapore`).
    Singapore,
    /// Seoul (`korea`).
    Korea,
    /// Tokyo (`japan`).
    Japan,
    /// Frankfurt (`germany`).
    Germany,
    /// Mumbai (`india`).
    India,
    /// Silicon Valley (`usa`).
    Usa,
    /// Jakarta (`indonesia`).
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

    /// The region's name in the configuration.
    pub fn name(self) -> &'static str {
        match self {
            Region::China => "china",
            Region::Singapore => "singapore",
            Region::Korea => "korea",
            Region::Japan => "japan",
            Region::Germany => "germany",
            Region::India => "india",
            Region::Usa => "usa",
            Region::Indonesia => "indonesia",
        }
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

    /// The backup API domain of this data center (TENCENT.md §3), for when the primary's
    /// DNS or connection fails.
    pub fn backup_domain(self) -> &'static str {
        match self {
            Region::China => "adminapi.my-imcloud.com",
            Region::Singapore => "adminapisgp.my-imcloud.com",
            Region::Korea => "adminapikr.my-imcloud.com",
            Region::Japan => "adminapijpn.my-imcloud.com",
            Region::Germany => "adminapiger.my-imcloud.com",
            Region::India => "adminapiind.my-imcloud.com",
            Region::Usa => "adminapiusa.my-imcloud.com",
            Region::Indonesia => "adminapiidn.my-imcloud.com",
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
    /// `[fleet]`: limits shared with every timgate on the same Redis; `None` without
    /// `redis_url`, `sentinels` or `cluster_nodes` (each process keeps the limits alone).
    pub fleet: Option<Fleet>,
    /// `[[callers]]`: who may call, with which token; empty = anyone who reaches the port.
    pub callers: Vec<Caller>,
    /// `[callbacks]`: the listener for Tencent's callbacks, if any.
    pub callbacks: Callbacks,
}

/// One `[[callers]]` entry: a service that calls timgate with its own bearer token.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Its name (`name`): in log lines and as the `caller` metric label. Letters, digits,
    /// `_`, `-` and `.`, at most 64 bytes; unique.
    pub name: String,
    /// The token it sends as `Authorization: Bearer <token>`; never inline in the file.
    pub token: Token,
    /// Where the token came from (`token_env` or `token_file`).
    pub token_source: TokenSource,
    /// The SDKAppIDs it may call (`apps`); `None`: every configured app.
    pub apps: Option<Vec<u64>>,
    /// The APIs it may call (`apis`, `service/command` with `*`); `None`: every API.
    pub apis: Option<Vec<Pattern>>,
    /// Its own calls per second within each app's limit (`rate_limit`); `None`: no lane of
    /// its own.
    pub rate_limit: Option<NonZeroU32>,
}

/// A caller's bearer token. Never printed: `Debug` shows `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(Arc<str>);

impl Token {
    /// Wraps a token.
    pub fn new(token: &str) -> Self {
        Self(Arc::from(token))
    }

    /// The token itself, for building the gateway's lookup only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// Where a caller's token came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// `token_env`: this environment variable.
    Env(String),
    /// `token_file`: this file.
    File(String),
}

/// `[fleet]`, when `redis_url`, `sentinels` or `cluster_nodes` is set.
#[derive(Debug, Clone)]
pub struct Fleet {
    /// Where the shared lanes live: one of `redis_url` (`redis://` or `rediss://`, password
    /// optional), `sentinels` with `master_name`, or `cluster_nodes`; `Debug` masks the
    /// passwords.
    pub redis: FleetRedis,
    /// The variable the Redis password was read from (`redis_password_env`), if any: a name,
    /// not a secret.
    pub redis_password_env: Option<String>,
    /// Prefix of every key, and their Redis Cluster hash tag (`key_prefix`, default
    /// `timgate`). Fleets of different apps are apart without it: membership, claims and
    /// lanes are per SDKAppID.
    pub key_prefix: String,
    /// This replica's name in the fleet (`member`, default the host name): a process that
    /// restarts under it takes its place, claim and all.
    pub member: String,
    /// Planned replica count, the fallback share's divisor until Redis has told us the live
    /// size (`replicas`, default 1).
    pub replicas: NonZeroU32,
    /// Longest one Redis call may take before the fallback takes over (`timeout_ms`,
    /// default 50).
    pub timeout: Duration,
}

impl From<&Fleet> for crate::limiter::FleetSpec {
    /// What the limiter needs of `[fleet]`: the way to Redis with its passwords, the key
    /// prefix, the planned replica count and the call timeout.
    fn from(fleet: &Fleet) -> Self {
        crate::limiter::FleetSpec {
            redis: fleet.redis.spec(),
            key_prefix: fleet.key_prefix.clone(),
            member: fleet.member.clone(),
            replicas: fleet.replicas,
            timeout: fleet.timeout,
        }
    }
}

/// A Redis URL and the password to use with it (from the URL or `redis_password_env`),
/// parsed into the client that connects with them, so that nothing about it can fail once
/// the ports are bound. `Debug` and `Display` print the URL with the password masked.
#[derive(Clone)]
pub struct RedisUrl {
    /// The URL as written, password included.
    url: String,
    /// The password from `redis_password_env`, if set; it wins over one in the URL.
    password: Option<SecretKey>,
    /// The client for both (it connects only when asked to).
    client: redis::Client,
}

impl RedisUrl {
    /// A URL whose scheme is `redis` or `rediss` and that the Redis client can use as it is,
    /// and an optional password beside it.
    pub fn new(url: &str, password: Option<SecretKey>) -> Result<RedisUrl, String> {
        use redis::IntoConnectionInfo;
        let parsed: Uri = url.parse().map_err(|e| format!("not a URL: {e}"))?;
        match parsed.scheme_str() {
            Some("redis" | "rediss") => {}
            _ => return Err("must start with redis:// or rediss://".into()),
        }
        // The client's own reading of the URL (database number, host, TLS fragment): its
        // errors name no secret.
        let mut info = url.into_connection_info().map_err(|e| e.to_string())?;
        if let Some(password) = &password {
            let settings = info
                .redis_settings()
                .clone()
                .set_password(password.expose());
            info = info.set_redis_settings(settings);
        }
        // redis-rs leaves Nagle on: a call written while an earlier one is unacknowledged would
        // wait for that ACK. Calls are small and latency is the point.
        let tcp = info.tcp_settings().clone().set_nodelay(true);
        info = info.set_tcp_settings(tcp);
        let client = redis::Client::open(info).map_err(|e| e.to_string())?;
        Ok(RedisUrl {
            url: url.to_owned(),
            password,
            client,
        })
    }

    /// The client for this URL and password; it connects only when asked to.
    pub fn client(&self) -> redis::Client {
        self.client.clone()
    }
}

impl std::fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // `scheme://user:password@host…`: what follows the first ":" of the user info (up to
        // the last "@" before the path) is the password; show only the user name.
        let (scheme, rest) = self.url.split_once("//").unwrap_or(("", &self.url));
        let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        match rest[..authority_end].rfind('@') {
            Some(at) if rest[..at].contains(':') => {
                let user = rest[..at].split(':').next().unwrap_or("");
                write!(f, "{scheme}//{user}:***{}", &rest[at..])
            }
            _ => f.write_str(&self.url),
        }
    }
}

impl std::fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "\"{self}\"")?;
        if self.password.is_some() {
            f.write_str(" (password from redis_password_env: ***)")?;
        }
        Ok(())
    }
}

/// `[server]`.
#[derive(Debug, Clone)]
pub struct Server {
    /// Where callers reach the gateway (`listen`, default `127.0.0.1:8080`).
    pub listen: SocketAddr,
    /// Health, readiness and metrics (`admin_listen`, default `127.0.0.1:9464`).
    pub admin_listen: SocketAddr,
    /// Largest request body accepted (`max_body_bytes`, default 128 KiB: about four times the
    /// largest documented request, a 500-recipient `batchsendmsg` with a 12 KB message).
    pub max_body_bytes: usize,
    /// Request body bytes held at once across all connections (`max_body_bytes_in_flight`,
    /// default 8 MiB); a body that finds it spent is answered 503.
    pub max_body_bytes_in_flight: usize,
    /// Proxy connections served at once (`max_connections`, default 1024); past it a new
    /// connection takes the place of the longest-idle one, which is closed, or is answered
    /// 503 and closed when none is idle. Lowered at start to fit the open-file limit.
    pub max_connections: usize,
    /// Bytes of a request line and headers together (`max_header_bytes`, default 16384);
    /// a longer head, a long path included, is answered 431.
    pub max_header_bytes: usize,
    /// How long a caller may take to send a request head, and so how long an idle
    /// keep-alive connection is kept (`header_read_timeout_ms`, default 10000).
    pub header_read_timeout: Duration,
    /// How long a write to a caller may make no progress before its connection is closed
    /// (`write_timeout_ms`, default 10000).
    pub write_timeout: Duration,
    /// How long a caller may take to send its body (`body_read_timeout_ms`, default 10000).
    pub body_read_timeout: Duration,
    /// One upstream attempt's deadline (`upstream_timeout_ms`, default 5000; Tencent's own is 3 s).
    pub upstream_timeout: Duration,
    /// TCP+TLS connect deadline (`connect_timeout_ms`, default 2000).
    pub connect_timeout: Duration,
    /// Certificates trusted besides Mozilla's roots (`ca_file`, PEM; default none), for a
    /// private CA in front of Tencent or a local TLS test upstream.
    pub extra_roots: ExtraRoots,
    /// The PEM file `extra_roots` came from (`ca_file`), if any.
    pub ca_file: Option<String>,
    /// How long accepted requests may take to finish on shutdown (`drain_timeout_ms`, default 20000).
    pub drain_timeout: Duration,
    /// A `listen` address other than loopback without `[[callers]]` is meant
    /// (`allow_anonymous`, default false: such a configuration is refused).
    pub allow_anonymous: bool,
    /// Connections open at once to one upstream origin (`upstream_max_connections`, default
    /// 64); past it, attempts wait in order for one to come free, within their deadline.
    pub upstream_max_connections: usize,
    /// Threads that run requests (`worker_threads`, read at start; default 1).
    pub worker_threads: NonZeroUsize,
    /// How long an unused upstream connection is kept (`upstream_idle_timeout_ms`, default
    /// 60000); a sweeper closes it after that.
    pub upstream_idle_timeout: Duration,
    /// The HTTP proxy that upstream HTTPS is tunnelled through with CONNECT
    /// (`egress_proxy`, else `HTTPS_PROXY` from the environment at start), if any.
    pub egress_proxy: Option<EgressProxy>,
}

/// An HTTP proxy for upstream HTTPS, and the hosts that bypass it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressProxy {
    /// `http://host:port`.
    pub url: Uri,
    /// `NO_PROXY` entries, lower case: a host equal to one, or ending in `.entry`, goes direct;
    /// `*` sends everything direct.
    pub no_proxy: Vec<String>,
    /// Where it came from: `server.egress_proxy` or the variable's name.
    pub from: &'static str,
}

impl EgressProxy {
    /// Whether connections to `host` go through the proxy.
    pub fn covers(&self, host: &str) -> bool {
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        !self.no_proxy.iter().any(|entry| {
            let entry = entry.trim_start_matches('.');
            entry == "*"
                || host == entry
                || host
                    .strip_suffix(entry)
                    .is_some_and(|rest| rest.ends_with('.'))
        })
    }
}

/// Extra trusted root certificates; `Debug` shows only how many.
#[derive(Clone, Default)]
pub struct ExtraRoots(pub Vec<rustls_pki_types::CertificateDer<'static>>);

impl std::fmt::Debug for ExtraRoots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} certificate(s)", self.0.len())
    }
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
    /// Where the emulator listens (`listen`, default `127.0.0.1:9000`): `timgate emulate`,
    /// and the in-process one that `timgate run` starts when an app's endpoint is `"emulator"`.
    pub listen: SocketAddr,
    /// The calls it carries out at its start and after each reset (`seed`), if any.
    pub seed: Option<Seed>,
}

/// The emulator's seed (`emulator.seed`): calls carried out, in order, on an empty emulator,
/// so a team's accounts and groups are there from the start and again after each reset.
#[derive(Debug, Clone)]
pub struct Seed {
    /// The file, as configured.
    pub path: String,
    /// The calls, in the file's order.
    pub calls: Arc<[SeedCall]>,
}

/// One call of a seed: `{"SdkAppId": …, "Api": "service/command", "Body": {…}}`.
#[derive(Debug, Clone)]
pub struct SeedCall {
    /// The app it is made as (one of `[[apps]]`).
    pub sdkappid: u64,
    /// The API it calls.
    pub api: crate::api::Api,
    /// The request body, as JSON text.
    pub body: Vec<u8>,
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
    /// Which of the three the key came from.
    pub secret_source: SecretSource,
    /// The data center (`region`).
    pub region: Region,
    /// Where requests go (`endpoint`, default the region's primary domain over HTTPS).
    pub endpoint: Endpoint,
    /// Where an attempt goes when `endpoint` cannot be resolved or connected to
    /// (`backup_endpoint`; default the region's backup domain when `endpoint` is not set,
    /// none when it is).
    pub backup_endpoint: Option<Uri>,
    /// Lifetime of each minted UserSig (`usersig_ttl_secs`, default 600); re-signed at half.
    pub usersig_ttl: Duration,
    /// Calls per second Tencent allows this SDKAppID (`rate_limit`, default 200).
    pub rate_limit: NonZeroU32,
    /// Calls per second for single APIs, keyed `service/command` (`api_limits`); the
    /// documented lower limits are there unless overridden.
    pub api_limits: BTreeMap<String, NonZeroU32>,
    /// The only APIs this app may be used for, by anyone (`apis`, `service/command` with
    /// `*`); `None`: every API.
    pub apis: Option<Vec<Pattern>>,
    /// Quotas beyond calls a second (`api_quotas`): the documented ones
    /// (`limiter::table::QUOTAS`), each replaced by a configured one that counts the same
    /// thing, and the configured others.
    pub api_quotas: Vec<crate::limiter::Quota>,
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
    /// Its callback token and `[[apps.callbacks]]` routes.
    pub callbacks: AppCallbacks,
}

/// Where an app's SecretKey came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// `secret_key`, in the configuration itself.
    Inline,
    /// `secret_key_env`: this environment variable.
    Env(String),
    /// `secret_key_file`: this file.
    File(String),
}

impl From<&App> for crate::limiter::AppSpec {
    /// What the limiter needs of an app: its SDKAppID, calls limit, API limits and quotas.
    fn from(app: &App) -> Self {
        crate::limiter::AppSpec {
            sdkappid: app.sdkappid,
            rate_limit: app.rate_limit,
            api_limits: app.api_limits.clone(),
            api_quotas: app.api_quotas.clone(),
        }
    }
}

/// Tencent's documented per-API limits below 200/s (TENCENT.md §6, §7), from the limits table.
pub const DEFAULT_API_LIMITS: &[(&str, u32)] = crate::limiter::table::CALLS;

/// Reads a key or token file of at most `MAX_KEY_FILE_BYTES`, less its trailing newline.
pub(crate) fn read_key_file(path: &str) -> Result<String, String> {
    let bytes = file::read(Path::new(path), file::KEY).map_err(|e| e.to_string())?;
    let text = String::from_utf8(bytes).map_err(|_| format!("{path} is not UTF-8 text"))?;
    Ok(text.trim_end_matches(['\r', '\n']).to_owned())
}

/// Reads `emulator.seed`: a JSON array of calls, each to a configured app and a valid API,
/// its body an object; a regular file of at most `MAX_CONFIG_BYTES`.
pub(crate) fn read_seed(path: &str, apps: &[App]) -> Result<Seed, ConfigError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct RawCall {
        #[serde(rename = "SdkAppId")]
        sdkappid: u64,
        #[serde(rename = "Api")]
        api: String,
        #[serde(rename = "Body")]
        body: serde_json::Map<String, serde_json::Value>,
    }
    let key = "emulator.seed";
    let bytes = file::read(Path::new(path), file::SEED)
        .map_err(|e| ConfigError::new(key, e.to_string()))?;
    let raw: Vec<RawCall> = serde_json::from_slice(&bytes).map_err(|e| {
        let shape = r#"[{"SdkAppId": N, "Api": "service/command", "Body": {…}}, …]"#;
        ConfigError::new(key, format!("{path} must be a JSON array {shape}: {e}"))
    })?;
    let mut calls = Vec::with_capacity(raw.len());
    for (i, call) in raw.into_iter().enumerate() {
        let at = |why: String| ConfigError::new(key, format!("{path}, call {i}: {why}"));
        if !apps.iter().any(|a| a.sdkappid == call.sdkappid) {
            return Err(at(format!("SdkAppId {} is not in [[apps]]", call.sdkappid)));
        }
        let api = crate::api::Api::from_path(&format!("/v4/{}", call.api))
            .filter(|_| !call.api.contains(['?', '#']))
            .ok_or_else(|| at(format!("Api {:?} is not service/command", call.api)))?;
        let body = serde_json::to_vec(&call.body).map_err(|e| at(e.to_string()))?;
        calls.push(SeedCall {
            sdkappid: call.sdkappid,
            api,
            body,
        });
    }
    Ok(Seed {
        path: path.to_owned(),
        calls: calls.into(),
    })
}

/// Reads the configuration file: a regular file of at most `MAX_CONFIG_BYTES`, in UTF-8.
fn read_config(path: &Path) -> Result<String, ConfigError> {
    let bytes =
        file::read(path, file::CONFIG).map_err(|e| ConfigError::new("config", e.to_string()))?;
    String::from_utf8(bytes)
        .map_err(|_| ConfigError::new("config", format!("{} is not UTF-8 text", path.display())))
}

/// A configuration with every app's upstream known: `endpoint = "emulator"` resolved to the
/// address the in-process emulator was bound to. [`crate::bind`] makes it together with the
/// listeners, so a gateway built from it has nothing left to get wrong.
#[derive(Debug, Clone)]
pub struct Resolved {
    config: Config,
    /// `origins[i]` is `config.apps[i]`'s base URL.
    origins: Vec<Uri>,
}

impl Resolved {
    /// Resolves `config` with the in-process emulator at `emulator`, which must be `Some`
    /// when an app's endpoint is `"emulator"` (`crate::bind` binds it exactly then).
    pub(crate) fn new(config: Config, emulator: Option<SocketAddr>) -> Resolved {
        let origins = config
            .apps
            .iter()
            .map(|app| match &app.endpoint {
                Endpoint::Url(uri) => uri.clone(),
                Endpoint::Emulator => {
                    let addr = emulator.expect("bind binds the emulator when an app needs it");
                    Uri::try_from(format!("http://{addr}"))
                        .expect("an IP:port makes a valid authority")
                }
            })
            .collect();
        Resolved { config, origins }
    }

    /// The configuration itself.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Each app with its upstream's base URL.
    pub fn apps(&self) -> impl Iterator<Item = (&App, &Uri)> {
        self.config.apps.iter().zip(&self.origins)
    }
}

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

impl Config {
    /// Reads `path` (TOML), layers the process's `TIMGATE__*` environment variables over it,
    /// and validates.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Self::load_with(path, std::env::vars_os())
    }

    /// Reads `path` (TOML: a regular file of at most `MAX_CONFIG_BYTES`), layers the
    /// `TIMGATE__*` variables among `vars` over it, and validates.
    pub fn load_with(
        path: &Path,
        vars: impl IntoIterator<Item = (OsString, OsString)>,
    ) -> Result<Config, ConfigError> {
        Self::from_toml_with(&read_config(path)?, vars)
    }

    /// Validates a TOML document alone, without the environment (for tests and tools).
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        Self::from_toml_with(text, [])
    }

    /// Validates a TOML document with the `TIMGATE__*` variables among `vars` layered over it.
    pub fn from_toml_with(
        text: &str,
        vars: impl IntoIterator<Item = (OsString, OsString)>,
    ) -> Result<Config, ConfigError> {
        let file = config::File::from_str(text, config::FileFormat::Toml);
        Self::build(config::Config::builder().add_source(file), vars)
    }

    fn build(
        mut builder: config::ConfigBuilder<config::builder::DefaultState>,
        vars: impl IntoIterator<Item = (OsString, OsString)>,
    ) -> Result<Config, ConfigError> {
        let vars: Vec<(OsString, OsString)> = vars.into_iter().collect();
        let proxy_vars = ProxyVars::from(&vars);
        let overrides = env::overrides(vars)?;
        for o in &overrides {
            builder = builder
                .set_override(&o.path, o.value.as_str())
                .map_err(|e| ConfigError::new(format!("environment {}", o.var), e.to_string()))?;
        }
        let blamed = |e: ConfigError| match env::blame(&overrides, &e.key) {
            Some(var) => ConfigError::new(e.key, format!("{} (set by {var})", e.message)),
            None => e,
        };
        let raw: RawConfig = builder
            .build()
            .and_then(config::Config::try_deserialize)
            .map_err(|e| blamed(ConfigError::from_library(e)))?;
        let mut config = raw.validate().map_err(blamed)?;
        config.server.egress_proxy = egress_proxy(config.server.egress_proxy.take(), &proxy_vars)?;
        Ok(config)
    }

    /// The effective configuration in the file's own format, defaults filled in and secrets
    /// masked: a key given inline prints as `"***"`; `secret_key_env` and `secret_key_file`
    /// print as given, since they name where the key is, not the key.
    pub fn to_toml(&self) -> String {
        print::to_toml(self)
    }
}

impl ConfigError {
    /// The `config` library's error, with its key written the way this crate names keys
    /// (`apps[0].rate_limit`, where the library writes `apps[0]rate_limit`).
    fn from_library(e: config::ConfigError) -> ConfigError {
        match e {
            config::ConfigError::Type {
                unexpected,
                expected,
                key: Some(key),
                ..
            } => ConfigError::new(
                dotted(&key),
                format!("invalid type: {unexpected}, expected {expected}"),
            ),
            config::ConfigError::At {
                error,
                key: Some(key),
                ..
            } => ConfigError::new(dotted(&key), error.to_string()),
            other => ConfigError::new("config", other.to_string()),
        }
    }
}

/// `apps[0]rate_limit` → `apps[0].rate_limit`.
fn dotted(key: &str) -> String {
    let mut out = String::with_capacity(key.len() + 4);
    let mut after_index = false;
    for c in key.chars() {
        if after_index && c != '[' && c != '.' {
            out.push('.');
        }
        after_index = c == ']';
        out.push(c);
    }
    out
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
        assert_eq!(config.server.max_body_bytes, 128 * 1024);
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
    fn a_key_file_too_large_to_be_a_key_is_refused_naming_it() {
        let path = std::env::temp_dir().join(format!("timgate-big-key-{}", std::process::id()));
        std::fs::write(&path, "k".repeat(100 * 1024)).unwrap();
        let text = GOOD.replace(
            "secret_key = \"k\"",
            &format!("secret_key_file = {:?}", path.display().to_string()),
        );
        let e = Config::from_toml(&text).unwrap_err();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(e.key, "apps[0].secret_key_file");
        assert!(e.message.contains("larger than 64 KiB"), "{}", e.message);
        // A device that never ends is refused as quickly (read no further than the bound).
        let text = GOOD.replace("secret_key = \"k\"", "secret_key_file = \"/dev/zero\"");
        assert_eq!(
            Config::from_toml(&text).unwrap_err().key,
            "apps[0].secret_key_file"
        );
    }

    #[test]
    fn worker_threads_default_to_one_and_take_a_setting() {
        let default = Config::from_toml(GOOD).unwrap().server.worker_threads.get();
        assert_eq!(default, 1);
        let set = Config::from_toml(&format!("[server]\nworker_threads = 6\n{GOOD}")).unwrap();
        assert_eq!(set.server.worker_threads.get(), 6);
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
    fn a_ca_file_that_is_missing_or_holds_no_certificate_is_refused() {
        let e = refusal(&format!(
            "[server]\nca_file = \"/nonexistent/ca.pem\"\n{GOOD}"
        ));
        assert_eq!(e.key, "server.ca_file");
        let path = std::env::temp_dir().join(format!("timgate-empty-ca-{}", std::process::id()));
        std::fs::write(&path, "not a certificate\n").unwrap();
        let e = refusal(&format!(
            "[server]\nca_file = {:?}\n{GOOD}",
            path.display().to_string()
        ));
        std::fs::remove_file(&path).unwrap();
        assert_eq!(e.key, "server.ca_file");
        assert!(e.message.contains("no PEM certificate"), "{e}");
    }

    fn vars(list: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
        list.iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect()
    }

    #[test]
    fn an_app_key_can_come_from_the_environment_alone() {
        let file = GOOD.replace("secret_key = \"k\"\n", "");
        let env = vars(&[
            ("TIMGATE__APPS__0__SECRET_KEY", "from-env"),
            ("TIMGATE__APPS__0__RATE_LIMIT", "500"),
            ("TIMGATE__SERVER__LISTEN", "0.0.0.0:8080"),
            ("TIMGATE__SERVER__ALLOW_ANONYMOUS", "true"),
        ]);
        let config = Config::from_toml_with(&file, env).unwrap();
        assert_eq!(config.apps[0].secret_key.expose(), "from-env");
        assert_eq!(config.apps[0].rate_limit.get(), 500);
        assert_eq!(config.server.listen, "0.0.0.0:8080".parse().unwrap());
    }

    #[test]
    fn a_whole_second_app_can_come_from_the_environment() {
        let env = vars(&[
            ("TIMGATE__APPS__1__SDKAPPID", "1400000002"),
            ("TIMGATE__APPS__1__IDENTIFIER", "admin2"),
            ("TIMGATE__APPS__1__SECRET_KEY", "k2"),
            ("TIMGATE__APPS__1__REGION", "korea"),
        ]);
        let config = Config::from_toml_with(GOOD, env).unwrap();
        assert_eq!(config.apps.len(), 2);
        assert_eq!(config.apps[1].sdkappid, 1400000002);
        assert_eq!(config.apps[1].region, Region::Korea);
    }

    #[test]
    fn a_bad_value_from_the_environment_names_the_key_and_the_variable() {
        let e = Config::from_toml_with(GOOD, vars(&[("TIMGATE__APPS__0__RATE_LIMIT", "fast")]))
            .unwrap_err();
        assert_eq!(e.key, "apps[0].rate_limit");
        assert!(e.message.contains("TIMGATE__APPS__0__RATE_LIMIT"), "{e}");
        let e = Config::from_toml_with(GOOD, vars(&[("TIMGATE__APPS__0__RATE_LIMIT", "0")]))
            .unwrap_err();
        assert_eq!(e.key, "apps[0].rate_limit");
        assert!(e.message.contains("TIMGATE__APPS__0__RATE_LIMIT"), "{e}");
        let e = Config::from_toml_with(GOOD, vars(&[("TIMGATE__SERVER__LISTN", "x")])).unwrap_err();
        assert!(e.to_string().contains("TIMGATE__SERVER__LISTN"), "{e}");
    }

    #[test]
    fn a_type_error_names_the_key_with_a_dot() {
        let e = refusal(&format!("{GOOD}rate_limit = \"fast\"\n"));
        assert_eq!(e.key, "apps[0].rate_limit", "{e}");
        let e = refusal(&format!("[server]\nmax_body_bytes = \"big\"\n{GOOD}"));
        assert_eq!(e.key, "server.max_body_bytes", "{e}");
    }

    #[test]
    fn api_limits_must_name_a_known_command_of_a_known_service() {
        let with =
            |api: &str| Config::from_toml(&format!("{GOOD}[apps.api_limits]\n\"{api}\" = 5\n"));
        let e = with("live_engine_http_srv/get_room_lists").unwrap_err();
        assert_eq!(
            e.key,
            "apps[0].api_limits.\"live_engine_http_srv/get_room_lists\""
        );
        assert!(e.message.contains("no command"), "{e}");
        let e = with("live_engine_http_svr/get_room_list").unwrap_err();
        assert!(
            e.message.contains("did you mean live_engine_http_srv"),
            "{e}"
        );
        assert!(with("room_engine_http_mic/kick_user_off_seat").is_ok());
        assert!(with("openim/sendmsg").is_ok());
    }

    #[test]
    fn values_the_gateway_cannot_run_with_are_refused_naming_the_key() {
        let cases = [
            (
                format!("{GOOD}rate_limit = 4000000000\n"),
                "apps[0].rate_limit",
            ),
            (
                format!("{GOOD}rate_limit = 1000001\n"),
                "apps[0].rate_limit",
            ),
            (
                format!("{GOOD}max_queue_wait_ms = 3600001\n"),
                "apps[0].max_queue_wait_ms",
            ),
            (
                format!("{GOOD}deadline_ms = 9223372036854775807\n"),
                "apps[0].deadline_ms",
            ),
            (
                format!("{GOOD}retry_cap_ms = 9000000000\n"),
                "apps[0].retry_cap_ms",
            ),
            (
                format!("[server]\ndrain_timeout_ms = 9000000000\n{GOOD}"),
                "server.drain_timeout_ms",
            ),
            (
                format!("[server]\nworker_threads = 0\n{GOOD}"),
                "server.worker_threads",
            ),
            (
                format!("[server]\nworker_threads = 257\n{GOOD}"),
                "server.worker_threads",
            ),
            (
                format!("{GOOD}[apps.api_limits]\n\"openim/sendmsg\" = 2000000\n"),
                "apps[0].api_limits.\"openim/sendmsg\"",
            ),
        ];
        for (text, key) in cases {
            assert_eq!(refusal(&text).key, key, "{text}");
        }
        let most = format!("{GOOD}rate_limit = 1000000\nmax_queue_wait_ms = 3600000\n");
        assert!(Config::from_toml(&most).is_ok());
    }

    #[test]
    fn api_quotas_replace_the_documented_ones_and_are_refused_naming_the_key() {
        let app = |quota: &str| Config::from_toml(&format!("{GOOD}[[apps.api_quotas]]\n{quota}"));
        let bought = app("api = \"openim/batchsendmsg\"\nrate = 18000\nper = \"minute\"\ncost = \"To_Account\"\n")
            .unwrap();
        let quotas = &bought.apps[0].api_quotas;
        let batch: Vec<_> = quotas
            .iter()
            .filter(|q| q.api == "openim/batchsendmsg")
            .collect();
        assert_eq!(batch.len(), 1);
        assert_eq!(batch[0].rate.get(), 18000);
        assert_eq!(batch[0].largest_cost().get(), 500);
        let group =
            app("api = \"group_open_http_svc/send_group_msg\"\nrate = 80\nkey = \"GroupId\"\n")
                .unwrap();
        assert!(
            group.apps[0]
                .api_quotas
                .iter()
                .any(|q| q.rate.get() == 80 && q.key.is_some())
        );
        for (quota, key) in [
            ("rate = 5\n", "apps[0].api_quotas[0].api"),
            ("api = \"openim/sendmsg\"\n", "apps[0].api_quotas[0].rate"),
            (
                "api = \"openim/sendmsg\"\nrate = 5\nper = \"hour\"\n",
                "apps[0].api_quotas[0].per",
            ),
            (
                "api = \"openim/sendmsg\"\nrate = 5\nkey = \"a.b\"\n",
                "apps[0].api_quotas[0].key",
            ),
            (
                "api = \"openim/batchsendmsg\"\nrate = 900\ncost = \"To_Account\"\n",
                "apps[0].api_quotas[0].rate",
            ),
            (
                "api = \"live_engine_http_srv/no_such\"\nrate = 5\n",
                "apps[0].api_quotas[0].api",
            ),
        ] {
            let refused = app(quota).unwrap_err();
            assert_eq!(refused.key, key, "{quota}: {}", refused.message);
        }
    }

    #[test]
    fn the_printed_configuration_reads_back_as_the_same_one() {
        let text = format!(
            "[server]\nlisten = \"0.0.0.0:8080\"\nallow_anonymous = true\n[log]\nformat = \"json\"\n{GOOD}\
             endpoint = \"http://127.0.0.1:9000\"\nrate_limit = 300\n[apps.api_limits]\n\
             \"openim/sendmsg\" = 50\n[[apps.api_quotas]]\napi = \"openim/batchsendmsg\"\n\
             rate = 18000\nper = \"minute\"\ncost = \"To_Account\"\n{}",
            GOOD.replace("1400000001", "1400000002")
                .replace("secret_key = \"k\"", "secret_key_env = \"PATH\"")
        );
        let config = Config::from_toml(&text).unwrap();
        let printed = config.to_toml();
        assert!(printed.contains("secret_key = \"***\""), "{printed}");
        assert!(printed.contains("secret_key_env = \"PATH\""), "{printed}");
        let again = Config::from_toml(&printed).unwrap();
        // The inline key prints masked; everything else, the env key included, reads back.
        assert_eq!(again.apps[0].secret_key.expose(), "***");
        assert_eq!(format!("{again:?}"), format!("{config:?}"));
        assert_eq!(again.to_toml(), printed);
        assert!(printed.contains("rate = 18000"), "{printed}");
    }

    #[test]
    fn a_fleet_of_any_size_is_accepted_whatever_its_quotas_shares() {
        // 12,000 recipients a minute over 100 or 1,000 replicas is 120 or 12 each, under one
        // call of 500; 40 a second per group over 1,000 is nothing. While cut off from Redis
        // such a call is refused (the limiter's `share`), so the size is accepted.
        for replicas in [24, 100, 1000] {
            let text = format!(
                "[fleet]\nredis_url = \"redis://127.0.0.1:6379\"\nreplicas = {replicas}\n{GOOD}"
            );
            let config = Config::from_toml(&text).unwrap();
            assert_eq!(config.fleet.unwrap().replicas.get(), replicas);
        }
    }

    #[test]
    fn the_printed_fleet_reads_back_with_its_password_masked() {
        let with_url = format!(
            "[fleet]\nredis_url = \"rediss://app:hunter2@redis.example:6380/2\"\n\
             key_prefix = \"blue\"\nreplicas = 3\ntimeout_ms = 80\n{GOOD}"
        );
        // The variable's name is printed, never its value (PATH is set everywhere).
        let with_env = format!(
            "[fleet]\nredis_url = \"redis://127.0.0.1:6379\"\nredis_password_env = \"PATH\"\n{GOOD}"
        );
        for text in [with_url, with_env] {
            let config = Config::from_toml(&text).unwrap();
            let printed = config.to_toml();
            assert!(printed.contains("[fleet]"), "{printed}");
            assert!(!printed.contains("hunter2"), "{printed}");
            let path = std::env::var("PATH").unwrap();
            assert!(!printed.contains(&path), "{printed}");
            let again = Config::from_toml(&printed).unwrap();
            assert_eq!(format!("{again:?}"), format!("{config:?}"));
            assert_eq!(again.to_toml(), printed);
        }
        let printed = Config::from_toml(&format!(
            "[fleet]\nredis_url = \"rediss://app:hunter2@redis.example:6380/2\"\n{GOOD}"
        ))
        .unwrap()
        .to_toml();
        assert!(
            printed.contains("redis_url = \"rediss://app:***@redis.example:6380/2\""),
            "{printed}"
        );
        // A user without a password gains none.
        let url = "redis://app@redis.example/0";
        let printed = Config::from_toml(&format!("[fleet]\nredis_url = \"{url}\"\n{GOOD}"))
            .unwrap()
            .to_toml();
        assert!(printed.contains(url), "{printed}");
        assert!(!Config::from_toml(GOOD).unwrap().to_toml().contains("fleet"));
    }

    #[test]
    fn a_redis_url_the_client_cannot_use_is_refused_by_validation() {
        for url in [
            "redis://0.0.0.0:6379",
            "redis://127.0.0.1:6379/not-a-db",
            "rediss://redis.example/0#unsafe",
        ] {
            let e = refusal(&format!("[fleet]\nredis_url = \"{url}\"\n{GOOD}"));
            assert_eq!(e.key, "fleet.redis_url", "{url}: {e}");
        }
    }

    #[test]
    fn a_fleet_member_is_the_host_name_unless_configured_and_must_be_a_plain_name() {
        let fleet = |extra: &str| {
            Config::from_toml(&format!(
                "[fleet]\nredis_url = \"redis://127.0.0.1:6379\"\n{extra}{GOOD}"
            ))
        };
        let host = rustix::system::uname()
            .nodename()
            .to_string_lossy()
            .into_owned();
        assert_eq!(fleet("").unwrap().fleet.unwrap().member, host);
        let named = fleet("member = \"timgate-7.blue_0\"\n").unwrap();
        assert_eq!(named.fleet.unwrap().member, "timgate-7.blue_0");
        for bad in ["", "a b", "~x", "@x", "-x", ".x", "ü", &"x".repeat(254)] {
            let refused = fleet(&format!("member = {bad:?}\n")).unwrap_err();
            assert_eq!(refused.key, "fleet.member", "{bad:?}");
            assert!(refused.message.contains("letters, digits"), "{refused}");
        }
    }

    #[test]
    fn fleet_is_off_without_a_redis_url_and_masks_the_password() {
        assert!(Config::from_toml(GOOD).unwrap().fleet.is_none());
        let text = format!(
            "[fleet]\nredis_url = \"rediss://app:hunter2@redis.example:6380/0\"\nreplicas = 3\n{GOOD}"
        );
        let fleet = Config::from_toml(&text).unwrap().fleet.unwrap();
        assert_eq!(fleet.replicas.get(), 3);
        assert_eq!(fleet.timeout, Duration::from_millis(50));
        assert_eq!(fleet.key_prefix, "timgate");
        let printed = format!("{fleet:?}");
        assert!(!printed.contains("hunter2"), "{printed}");
        assert!(
            printed.contains("rediss://app:***@redis.example:6380/0"),
            "{printed}"
        );
        let e = refusal(&format!("[fleet]\nredis_url = \"http://x\"\n{GOOD}"));
        assert_eq!(e.key, "fleet.redis_url");
        let e = refusal(&format!(
            "[fleet]\nredis_url = \"redis://x\"\nredis_password_env = \"TIMGATE_TEST_UNSET_PASSWORD\"\n{GOOD}"
        ));
        assert_eq!(e.key, "fleet.redis_password_env");
    }

    #[test]
    fn the_fleet_takes_exactly_one_of_redis_url_sentinels_and_cluster_nodes() {
        let url = "redis_url = \"redis://127.0.0.1:6379\"\n";
        let sentinels = "sentinels = [\"s0:26379\", \"s1:26379\"]\nmaster_name = \"mymaster\"\n";
        let nodes = "cluster_nodes = [\"r0:6379\", \"r1:6379\"]\n";
        for (keys, named) in [
            (format!("{url}{sentinels}"), "redis_url and sentinels"),
            (format!("{url}{nodes}"), "redis_url and cluster_nodes"),
            (format!("{sentinels}{nodes}"), "sentinels and cluster_nodes"),
            (
                format!("{url}{sentinels}{nodes}"),
                "redis_url and sentinels and cluster_nodes",
            ),
        ] {
            let e = refusal(&format!("[fleet]\n{keys}{GOOD}"));
            assert_eq!(e.key, "fleet", "{keys}");
            assert!(e.message.contains("exactly one of"), "{e}");
            assert!(e.message.contains(named), "{e}");
        }
        for (keys, key) in [
            ("master_name = \"m\"\n".to_owned(), "fleet.master_name"),
            (format!("{url}master_name = \"m\"\n"), "fleet.master_name"),
            (
                format!("{nodes}sentinel_password_env = \"PATH\"\n"),
                "fleet.sentinel_password_env",
            ),
            (
                "sentinels = [\"s0:26379\"]\n".to_owned(),
                "fleet.master_name",
            ),
            (
                format!("{sentinels}sentinel_password_env = \"TIMGATE_TEST_UNSET_PASSWORD\"\n"),
                "fleet.sentinel_password_env",
            ),
            (
                "sentinels = []\nmaster_name = \"m\"\n".to_owned(),
                "fleet.sentinels",
            ),
            ("cluster_nodes = []\n".to_owned(), "fleet.cluster_nodes"),
            (
                "cluster_nodes = [\"r0:6379\", \"r1\"]\n".to_owned(),
                "fleet.cluster_nodes[1]",
            ),
            (
                "cluster_nodes = [\"r0:0\"]\n".to_owned(),
                "fleet.cluster_nodes[0]",
            ),
            (
                "cluster_nodes = [\"::1:6379\"]\n".to_owned(),
                "fleet.cluster_nodes[0]",
            ),
            (
                "cluster_nodes = [\"redis://r0:6379\"]\n".to_owned(),
                "fleet.cluster_nodes[0]",
            ),
            (
                "sentinels = [\"s0:x\"]\nmaster_name = \"m\"\n".to_owned(),
                "fleet.sentinels[0]",
            ),
            (
                "sentinels = [\"s0:1\"]\nmaster_name = \"a b\"\n".to_owned(),
                "fleet.master_name",
            ),
        ] {
            let e = refusal(&format!("[fleet]\n{keys}{GOOD}"));
            assert_eq!(e.key, key, "{keys}: {e}");
        }
        let v6 = Config::from_toml(&format!(
            "[fleet]\ncluster_nodes = [\"[::1]:7000\"]\n{GOOD}"
        ));
        assert!(v6.unwrap().fleet.is_some());
    }

    #[test]
    fn sentinels_and_cluster_nodes_print_back_without_a_password() {
        let path = std::env::var("PATH").unwrap();
        for (keys, form) in [
            (
                "sentinels = [\"s0:26379\", \"[::1]:26380\"]\nmaster_name = \"mymaster\"\n\
                 sentinel_password_env = \"PATH\"\nredis_password_env = \"PATH\"\n",
                "Sentinel",
            ),
            (
                "cluster_nodes = [\"r0:6379\", \"r1:6380\"]\nredis_password_env = \"PATH\"\n",
                "Cluster",
            ),
        ] {
            let config = Config::from_toml(&format!("[fleet]\n{keys}{GOOD}")).unwrap();
            let fleet = config.fleet.as_ref().unwrap();
            let debug = format!("{fleet:?}");
            assert!(debug.contains(form), "{debug}");
            assert!(!debug.contains(&path), "{debug}");
            let spec = crate::limiter::FleetSpec::from(fleet);
            match (&spec.redis, form) {
                (crate::limiter::RedisSpec::Sentinel(s), "Sentinel") => {
                    assert_eq!(s.master_name, "mymaster");
                    assert_eq!(s.sentinels[1], ("::1".to_owned(), 26380));
                    assert_eq!(s.sentinel_password.as_deref(), Some(path.as_str()));
                    assert_eq!(s.password.as_deref(), Some(path.as_str()));
                }
                (crate::limiter::RedisSpec::Cluster(c), "Cluster") => {
                    assert_eq!(c.nodes[1], ("r1".to_owned(), 6380));
                    assert_eq!(c.password.as_deref(), Some(path.as_str()));
                }
                _ => panic!("{form}: another way to Redis"),
            }
            let printed = config.to_toml();
            assert!(!printed.contains(&path), "{printed}");
            assert!(!printed.contains("redis_url"), "{printed}");
            for line in keys.lines() {
                assert!(printed.contains(line.trim()), "{line} in {printed}");
            }
            let again = Config::from_toml(&printed).unwrap();
            assert_eq!(format!("{again:?}"), format!("{config:?}"));
            assert_eq!(again.to_toml(), printed);
        }
    }

    #[test]
    fn the_same_sdkappid_twice_is_refused() {
        let e = refusal(&format!("{GOOD}{GOOD}"));
        assert_eq!(e.key, "apps[1].sdkappid");
    }

    /// A caller entry whose token is `value`, read from a file named after `var`.
    fn caller(name: &str, var: &str, value: &str, extra: &str) -> String {
        let path = std::env::temp_dir().join(format!("timgate-{var}-{}", std::process::id()));
        std::fs::write(&path, value).unwrap();
        format!(
            "[[callers]]\nname = \"{name}\"\ntoken_file = {:?}\n{extra}",
            path.display().to_string()
        )
    }

    #[test]
    fn a_listen_off_loopback_needs_callers_or_allow_anonymous() {
        let open = format!("[server]\nlisten = \"0.0.0.0:8080\"\n{GOOD}");
        let e = refusal(&open);
        assert_eq!(e.key, "server.listen");
        assert!(e.message.contains("allow_anonymous"), "{e}");
        let e = refusal(&format!("[server]\nlisten = \"[::]:8080\"\n{GOOD}"));
        assert_eq!(e.key, "server.listen");
        let e = refusal(&format!("[server]\nlisten = \"10.0.0.7:8080\"\n{GOOD}"));
        assert_eq!(e.key, "server.listen");
        assert!(Config::from_toml(&format!("[server]\nlisten = \"[::1]:8080\"\n{GOOD}")).is_ok());
        let meant = open.replace("[server]\n", "[server]\nallow_anonymous = true\n");
        assert!(Config::from_toml(&meant).is_ok());
        let guarded = format!(
            "{open}{}",
            caller("svc", "TIMGATE_TEST_TOKEN_EXPOSURE", "0123456789abcdef", "")
        );
        assert!(Config::from_toml(&guarded).is_ok());
    }

    #[test]
    fn callers_take_tokens_from_env_or_file_only_and_print_masked() {
        // PATH is set in every test process and long enough to be a token.
        let token = std::env::var("PATH").unwrap();
        let text = format!(
            "{GOOD}[[callers]]\nname = \"live-service\"\ntoken_env = \"PATH\"\napps = [1400000001]\n\
             apis = [\"live_engine_http_srv/*\", \"openim/sendmsg\"]\nrate_limit = 50\n"
        );
        let config = Config::from_toml(&text).unwrap();
        let c = &config.callers[0];
        assert_eq!(c.name, "live-service");
        assert_eq!(c.token.expose(), token);
        assert_eq!(c.rate_limit.map(NonZeroU32::get), Some(50));
        assert!(!format!("{config:?}").contains(&token));
        let printed = config.to_toml();
        assert!(!printed.contains(&token), "{printed}");
        assert!(printed.contains("token_env = \"PATH\""), "{printed}");
        let again = Config::from_toml(&printed).unwrap_or_else(|e| panic!("{e}\n{printed}"));
        assert_eq!(format!("{again:?}"), format!("{config:?}"));

        let e = refusal(&format!(
            "{GOOD}[[callers]]\nname = \"x\"\ntoken = \"{token}\"\n"
        ));
        assert_eq!(e.key, "callers[0].token");
        assert!(!e.to_string().contains(&token), "{e}");
        let path = std::env::temp_dir().join(format!("timgate-token-{}", std::process::id()));
        std::fs::write(&path, "from-a-file-0123456789\n").unwrap();
        let text = format!(
            "{GOOD}[[callers]]\nname = \"f\"\ntoken_file = {:?}\n",
            path.display().to_string()
        );
        let config = Config::from_toml(&text).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(config.callers[0].token.expose(), "from-a-file-0123456789");
    }

    #[test]
    fn bad_callers_are_refused_naming_the_key() {
        let good = |name: &str, var: &str| caller(name, var, &format!("token-of-{var}"), "");
        let cases = [
            (
                format!(
                    "{GOOD}{}",
                    caller("short", "TIMGATE_TEST_TOKEN_SHORT", "short", "")
                ),
                "callers[0].token_file",
            ),
            (
                format!("{GOOD}{}", good("bad name", "TIMGATE_TEST_TOKEN_A")),
                "callers[0].name",
            ),
            (
                format!(
                    "{GOOD}{}{}",
                    good("a", "TIMGATE_TEST_TOKEN_B"),
                    good("a", "TIMGATE_TEST_TOKEN_C")
                ),
                "callers[1].name",
            ),
            (
                format!(
                    "{GOOD}{}{}",
                    good("a", "TIMGATE_TEST_TOKEN_D"),
                    good("b", "TIMGATE_TEST_TOKEN_D")
                ),
                "callers[1].token_file",
            ),
            (
                format!("{GOOD}{}apps = [42]\n", good("a", "TIMGATE_TEST_TOKEN_E")),
                "callers[0].apps[0]",
            ),
            (
                format!(
                    "{GOOD}{}apis = [\"openim\"]\n",
                    good("a", "TIMGATE_TEST_TOKEN_F")
                ),
                "callers[0].apis[0]",
            ),
            (
                format!("{GOOD}{}apis = []\n", good("a", "TIMGATE_TEST_TOKEN_G")),
                "callers[0].apis",
            ),
            (
                format!(
                    "{GOOD}{}rate_limit = 0\n",
                    good("a", "TIMGATE_TEST_TOKEN_H")
                ),
                "callers[0].rate_limit",
            ),
            (
                format!(
                    "{GOOD}[[callers]]\nname = \"a\"\ntoken_env = \"TIMGATE_TEST_UNSET_TOKEN\"\n"
                ),
                "callers[0].token_env",
            ),
            (
                format!("{GOOD}apis = [\"live_engine_http_svr/*\"]\n"),
                "apps[0].apis[0]",
            ),
        ];
        for (text, key) in cases {
            assert_eq!(refusal(&text).key, key, "{text}");
        }
    }
}

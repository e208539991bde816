//! The effective configuration as TOML, in the file's own keys and units, for `timgate check`.
//! What it prints, pasted back into a file, is the same configuration (an inline secret key
//! and a password inside `fleet.redis_url` aside, which print as `***`).

use std::collections::BTreeMap;

use serde::Serialize;

use super::server::RawServer;
use super::value::ms;
use super::{
    App, AppCallbacks, CallbackToken, Caller, Config, Endpoint, FleetRedis, LogFormat,
    SecretSource, TokenSource,
};

#[derive(Serialize)]
struct File {
    server: RawServer,
    log: Log,
    emulator: Emulator,
    #[serde(skip_serializing_if = "Option::is_none")]
    fleet: Option<Fleet>,
    apps: Vec<AppEntry>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    callers: Vec<CallerEntry>,
    #[serde(skip_serializing_if = "Option::is_none")]
    callbacks: Option<CallbacksSection>,
}

/// `[callbacks]`, when it names a listener.
#[derive(Serialize)]
struct CallbacksSection {
    listen: String,
}

/// One `[[apps.callbacks]]` route.
#[derive(Serialize)]
struct RouteEntry {
    commands: Vec<String>,
    forward: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    timeout_ms: Option<u64>,
    on_timeout: &'static str,
}

/// A caller as written: its token's source, never the token.
#[derive(Serialize)]
struct CallerEntry {
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    token_env: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    token_file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    apps: Option<Vec<u64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    apis: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rate_limit: Option<u32>,
}

/// `[fleet]`: the URL with any password in it masked, or the Sentinels or Cluster nodes;
/// `redis_password_env` and `sentinel_password_env` name variables.
#[derive(Serialize)]
struct Fleet {
    #[serde(skip_serializing_if = "Option::is_none")]
    redis_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sentinels: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    master_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sentinel_password_env: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cluster_nodes: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    redis_password_env: Option<String>,
    key_prefix: String,
    member: String,
    replicas: u32,
    timeout_ms: u64,
}

#[derive(Serialize)]
struct Log {
    format: &'static str,
}

#[derive(Serialize)]
struct Emulator {
    listen: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    seed: Option<String>,
}

#[derive(Serialize)]
struct AppEntry {
    sdkappid: u64,
    identifier: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    secret_key: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    secret_key_env: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    secret_key_file: Option<String>,
    region: &'static str,
    endpoint: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    backup_endpoint: Option<String>,
    usersig_ttl_secs: u64,
    rate_limit: u32,
    max_queue_wait_ms: u64,
    max_attempts: u32,
    retry_base_ms: u64,
    retry_cap_ms: u64,
    deadline_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    apis: Option<Vec<String>>,
    // A callback token's source, never the token.
    #[serde(skip_serializing_if = "Option::is_none")]
    callback_token_env: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    callback_token_file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    callback_token_previous_env: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    callback_token_previous_file: Option<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    allow_unsigned_callbacks: bool,
    api_limits: BTreeMap<String, u32>,
    api_quotas: Vec<QuotaEntry>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    callbacks: Vec<RouteEntry>,
}

/// One `[[apps.api_quotas]]` entry (the built-in ones are printed too: they read back as
/// themselves).
#[derive(Serialize)]
struct QuotaEntry {
    api: String,
    rate: u32,
    per: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    cost: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<String>,
}

pub(super) fn to_toml(config: &Config) -> String {
    let file = File {
        server: RawServer::printed(&config.server),
        log: Log {
            format: match config.log.format {
                LogFormat::Text => "text",
                LogFormat::Json => "json",
            },
        },
        emulator: Emulator {
            listen: config.emulator.listen.to_string(),
            seed: config.emulator.seed.as_ref().map(|seed| seed.path.clone()),
        },
        fleet: config.fleet.as_ref().map(fleet),
        apps: config.apps.iter().map(entry).collect(),
        callers: config.callers.iter().map(caller).collect(),
        callbacks: config.callbacks.listen.map(|addr| CallbacksSection {
            listen: addr.to_string(),
        }),
    };
    toml::to_string(&file).expect("plain strings, numbers and tables always serialize")
}

fn entry(app: &App) -> AppEntry {
    let (secret_key, secret_key_env, secret_key_file) = match &app.secret_source {
        SecretSource::Inline => (Some("***"), None, None),
        SecretSource::Env(var) => (None, Some(var.clone()), None),
        SecretSource::File(path) => (None, None, Some(path.clone())),
    };
    let callbacks = &app.callbacks;
    let (callback_token_env, callback_token_file) = source(callbacks.token.as_ref());
    let (callback_token_previous_env, callback_token_previous_file) =
        source(callbacks.previous.as_ref());
    AppEntry {
        sdkappid: app.sdkappid,
        identifier: app.identifier.clone(),
        secret_key,
        secret_key_env,
        secret_key_file,
        region: app.region.name(),
        endpoint: match &app.endpoint {
            Endpoint::Url(uri) => uri.to_string().trim_end_matches('/').to_owned(),
            Endpoint::Emulator => "emulator".to_owned(),
        },
        // `endpoint` is always printed, so the region's default backup is printed too.
        backup_endpoint: app
            .backup_endpoint
            .as_ref()
            .map(|backup| backup.to_string().trim_end_matches('/').to_owned()),
        usersig_ttl_secs: app.usersig_ttl.as_secs(),
        rate_limit: app.rate_limit.get(),
        max_queue_wait_ms: ms(app.max_queue_wait),
        max_attempts: app.max_attempts,
        retry_base_ms: ms(app.retry_base),
        retry_cap_ms: ms(app.retry_cap),
        deadline_ms: ms(app.deadline),
        apis: patterns(app.apis.as_deref()),
        callback_token_env,
        callback_token_file,
        callback_token_previous_env,
        callback_token_previous_file,
        allow_unsigned_callbacks: callbacks.allow_unsigned,
        callbacks: routes(callbacks),
        api_limits: app
            .api_limits
            .iter()
            .map(|(api, n)| (api.clone(), n.get()))
            .collect(),
        api_quotas: app
            .api_quotas
            .iter()
            .map(|q| QuotaEntry {
                api: q.api.clone(),
                rate: q.rate.get(),
                per: q.per.name(),
                cost: q.cost.clone(),
                key: q.key.clone(),
            })
            .collect(),
    }
}

/// Where a callback token came from: (`_env`, `_file`).
fn source(token: Option<&CallbackToken>) -> (Option<String>, Option<String>) {
    match token.map(|t| &t.source) {
        None => (None, None),
        Some(TokenSource::Env(var)) => (Some(var.clone()), None),
        Some(TokenSource::File(path)) => (None, Some(path.clone())),
    }
}

fn routes(callbacks: &AppCallbacks) -> Vec<RouteEntry> {
    callbacks
        .routes
        .iter()
        .map(|route| RouteEntry {
            commands: route.commands.clone(),
            forward: route.forward.to_string(),
            timeout_ms: route.timeout.map(ms),
            on_timeout: route.on_timeout.name(),
        })
        .collect()
}

fn patterns(list: Option<&[crate::api::Pattern]>) -> Option<Vec<String>> {
    list.map(|list| list.iter().map(|p| p.as_str().to_owned()).collect())
}

fn caller(caller: &Caller) -> CallerEntry {
    let (token_env, token_file) = match &caller.token_source {
        TokenSource::Env(var) => (Some(var.clone()), None),
        TokenSource::File(path) => (None, Some(path.clone())),
    };
    CallerEntry {
        name: caller.name.clone(),
        token_env,
        token_file,
        apps: caller.apps.clone(),
        apis: patterns(caller.apis.as_deref()),
        rate_limit: caller.rate_limit.map(std::num::NonZeroU32::get),
    }
}

/// `[fleet]` as printed: exactly one of the three ways to Redis, no password.
fn fleet(fleet: &super::Fleet) -> Fleet {
    let mut printed = Fleet {
        redis_url: None,
        sentinels: None,
        master_name: None,
        sentinel_password_env: None,
        cluster_nodes: None,
        redis_password_env: fleet.redis_password_env.clone(),
        key_prefix: fleet.key_prefix.clone(),
        member: fleet.member.clone(),
        replicas: fleet.replicas.get(),
        timeout_ms: ms(fleet.timeout),
    };
    match &fleet.redis {
        FleetRedis::Url(url) => printed.redis_url = Some(url.to_string()),
        FleetRedis::Sentinel {
            sentinels,
            master_name,
            sentinel_password_env,
            ..
        } => {
            printed.sentinels = Some(sentinels.clone());
            printed.master_name = Some(master_name.clone());
            printed.sentinel_password_env = sentinel_password_env.clone();
        }
        FleetRedis::Cluster { nodes, .. } => printed.cluster_nodes = Some(nodes.clone()),
    }
    printed
}

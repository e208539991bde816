//! `[[callers]]` as written, and the checks that make "who may call what" hard to get wrong:
//! tokens only from the environment or a file (never inline), long enough to resist guessing
//! and different for every caller; names that can be a metric label; apps that exist; API
//! patterns that could match something; and a `listen` address off loopback only with
//! callers, or with `server.allow_anonymous = true` saying it is meant.

use std::collections::HashSet;
use std::net::SocketAddr;

use serde::Deserialize;

use super::{App, Caller, ConfigError, Token, TokenSource};
use crate::api::Pattern;

/// The shortest token accepted: 16 bytes of a random token are far beyond guessing.
pub const MIN_TOKEN_BYTES: usize = 16;
/// The longest caller name: it is a metric label value and a log field.
pub const MAX_NAME_BYTES: usize = 64;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCaller {
    name: Option<String>,
    /// Only here to be refused with a useful message: a token never sits in the file.
    token: Option<serde::de::IgnoredAny>,
    token_env: Option<String>,
    token_file: Option<String>,
    apps: Option<Vec<u64>>,
    apis: Option<Vec<String>>,
    rate_limit: Option<u32>,
}

/// Validates every caller against the configured `apps`.
pub(super) fn validate(raw: Vec<RawCaller>, apps: &[App]) -> Result<Vec<Caller>, ConfigError> {
    let callers = raw
        .into_iter()
        .enumerate()
        .map(|(i, caller)| caller.validate(&format!("callers[{i}]"), apps))
        .collect::<Result<Vec<_>, _>>()?;
    let (mut names, mut tokens) = (HashSet::new(), HashSet::new());
    for (i, caller) in callers.iter().enumerate() {
        if !names.insert(caller.name.as_str()) {
            return Err(ConfigError::new(
                format!("callers[{i}].name"),
                format!("{:?} is configured twice", caller.name),
            ));
        }
        if !tokens.insert(caller.token.expose()) {
            let key = match caller.token_source {
                TokenSource::Env(_) => "token_env",
                TokenSource::File(_) => "token_file",
            };
            return Err(ConfigError::new(
                format!("callers[{i}].{key}"),
                "the same token as an earlier caller: every caller needs its own",
            ));
        }
    }
    Ok(callers)
}

/// A `listen` address off loopback needs callers, or `allow_anonymous` to say it is meant.
pub(super) fn check_exposure(
    listen: SocketAddr,
    allow_anonymous: bool,
    callers: &[Caller],
) -> Result<(), ConfigError> {
    if listen.ip().to_canonical().is_loopback() || allow_anonymous || !callers.is_empty() {
        return Ok(());
    }
    Err(ConfigError::new(
        "server.listen",
        format!(
            "{listen} is not a loopback address and no [[callers]] are configured: anyone who \
             reaches it could call Tencent as the apps' admin. Add [[callers]] with tokens, or \
             set server.allow_anonymous = true if an open port is meant"
        ),
    ))
}

/// An optional allow-list of API patterns: absent allows all, an empty one is a mistake.
pub(super) fn patterns(
    key: &str,
    list: Option<Vec<String>>,
) -> Result<Option<Vec<Pattern>>, ConfigError> {
    let Some(list) = list else {
        return Ok(None);
    };
    if list.is_empty() {
        return Err(ConfigError::new(
            key,
            "an empty list allows nothing; omit the key to allow every API",
        ));
    }
    list.iter()
        .enumerate()
        .map(|(i, text)| {
            Pattern::parse(text).map_err(|m| ConfigError::new(format!("{key}[{i}]"), m))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

impl RawCaller {
    fn validate(self, at: &str, apps: &[App]) -> Result<Caller, ConfigError> {
        let key = |name: &str| format!("{at}.{name}");
        let name = self.name.unwrap_or_default();
        let word = name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
        if name.is_empty() || name.len() > MAX_NAME_BYTES || !word {
            return Err(ConfigError::new(
                key("name"),
                format!("required: 1 to {MAX_NAME_BYTES} letters, digits, '_', '-' or '.'"),
            ));
        }
        if self.token.is_some() {
            return Err(ConfigError::new(
                key("token"),
                "a token is never written in the file: use token_env or token_file",
            ));
        }
        let (token, token_source) = token(at, "token", self.token_env, self.token_file)?;
        if let Some(list) = &self.apps {
            allowed_apps(at, list, apps)?;
        }
        let rate_limit = self
            .rate_limit
            .map(|n| super::value::rate(&key("rate_limit"), n))
            .transpose()?;
        Ok(Caller {
            name,
            token,
            token_source,
            apps: self.apps,
            apis: patterns(&key("apis"), self.apis)?,
            rate_limit,
        })
    }
}

/// A caller's `apps`: not empty, and every one configured.
fn allowed_apps(at: &str, list: &[u64], apps: &[App]) -> Result<(), ConfigError> {
    let known = apps.iter().map(|a| a.sdkappid).collect::<HashSet<_>>();
    if list.is_empty() {
        return Err(ConfigError::new(
            format!("{at}.apps"),
            "an empty list allows nothing; omit the key to allow every app",
        ));
    }
    if let Some((i, id)) = list.iter().enumerate().find(|(_, id)| !known.contains(id)) {
        return Err(ConfigError::new(
            format!("{at}.apps[{i}]"),
            format!("{id} is not a configured [[apps]] sdkappid"),
        ));
    }
    Ok(())
}

/// Reads exactly one of `<name>_env` and `<name>_file` (`token_env` and `token_file` for a
/// caller): visible ASCII, at least `MIN_TOKEN_BYTES` long.
pub(super) fn token(
    at: &str,
    name: &str,
    env: Option<String>,
    file: Option<String>,
) -> Result<(Token, TokenSource), ConfigError> {
    let (value, source, key) = match (env, file) {
        (Some(var), None) => {
            let key = format!("{at}.{name}_env");
            let value = std::env::var(&var).map_err(|_| {
                ConfigError::new(&key, format!("environment variable {var} is not set"))
            })?;
            (value, TokenSource::Env(var), key)
        }
        (None, Some(path)) => {
            let key = format!("{at}.{name}_file");
            let value = super::read_key_file(&path).map_err(|e| ConfigError::new(&key, e))?;
            (value, TokenSource::File(path), key)
        }
        (None, None) => {
            return Err(ConfigError::new(
                format!("{at}.{name}_env"),
                format!("missing: set one of {name}_env, {name}_file"),
            ));
        }
        (Some(_), Some(_)) => {
            return Err(ConfigError::new(
                format!("{at}.{name}_env"),
                format!("set exactly one of {name}_env, {name}_file"),
            ));
        }
    };
    // Checked without saying what the token is: a message never carries it.
    if value.len() < MIN_TOKEN_BYTES || !value.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ConfigError::new(
            key,
            format!(
                "the token must be at least {MIN_TOKEN_BYTES} visible ASCII characters, no spaces"
            ),
        ));
    }
    Ok((Token::new(&value), source))
}

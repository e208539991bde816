//! Tencent's callbacks in: `[callbacks]` (the listener) and each app's callback token and
//! `[[apps.callbacks]]` routes, as written and validated.
//!
//! Tokens follow the caller tokens' rules (only from the environment or a file, visible
//! ASCII of at least 16 bytes, never printed), and at most Tencent's own 128. An app with
//! routes has a token, or says `allow_unsigned_callbacks = true`: a callback URL open to
//! whoever finds it is meant, never an accident. Routes name where the service listens
//! (plain `http://`: it runs beside timgate) and which commands go there, as globs over
//! `CallbackCommand`; a pattern is a metric label value, so it is short and plain.

use std::net::SocketAddr;
use std::time::Duration;

use hyper::Uri;
use serde::Deserialize;

use super::{App, ConfigError, Token, TokenSource};

/// Tencent's longest callback token (TENCENT.md §7).
pub const MAX_TOKEN_BYTES: usize = 128;
/// The longest command pattern: it is a metric label value.
pub const MAX_PATTERN_BYTES: usize = 64;
/// Most patterns one route may list, and most routes one app may have: each pattern is a
/// metric label value.
pub const MAX_PATTERNS: usize = 32;
/// The longest `timeout_ms`: far past Tencent's own wait for any callback, so longer is a
/// mistake, and a connection to the service is never held longer than this.
pub const MAX_TIMEOUT_MS: u64 = 30_000;

/// `[callbacks]`.
#[derive(Debug, Clone, Default)]
pub struct Callbacks {
    /// Where Tencent's callbacks arrive (`listen`, through the ingress); `None`: no callback
    /// listener. Apart from `server.listen`, which faces the pod.
    pub listen: Option<SocketAddr>,
}

/// One app's callback settings.
#[derive(Debug, Clone, Default)]
pub struct AppCallbacks {
    /// The token set in Tencent's console (`callback_token_env` or `callback_token_file`).
    pub token: Option<CallbackToken>,
    /// The token before a rotation, accepted too while it lasts
    /// (`callback_token_previous_env` or `callback_token_previous_file`).
    pub previous: Option<CallbackToken>,
    /// Callbacks without `Sign` are meant (`allow_unsigned_callbacks`, default false): an app
    /// with routes and no token is refused without it.
    pub allow_unsigned: bool,
    /// `[[apps.callbacks]]`, in order: the first whose pattern matches a command takes it.
    pub routes: Vec<CallbackRoute>,
}

/// A callback token and where it came from. `Debug` shows `***` for the token.
#[derive(Debug, Clone)]
pub struct CallbackToken {
    /// The token; never printed.
    pub token: Token,
    /// The variable or file it was read from.
    pub source: TokenSource,
}

/// One `[[apps.callbacks]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallbackRoute {
    /// Globs over `CallbackCommand` (`commands`; `*` matches any run of characters), e.g.
    /// `C2C.CallbackBeforeSendMsg`, `Group.*`.
    pub commands: Vec<String>,
    /// Where the service takes them (`forward`, `http://host:port/path`).
    pub forward: Uri,
    /// How long the service may take (`timeout_ms`); `None`: 1500 ms for a
    /// `*CallbackBefore*` command (Tencent waits 2 s for those), 5000 ms for any other.
    pub timeout: Option<Duration>,
    /// Tencent's answer when the service is late, down or answers 5xx (`on_timeout`).
    pub on_timeout: OnTimeout,
}

/// The answer Tencent gets when the service cannot give one in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnTimeout {
    /// The event goes on (`ErrorCode` 0): the default.
    Allow,
    /// The event is stopped (`ErrorCode` 1: a before-send callback's message is not sent).
    Deny,
}

impl OnTimeout {
    /// Its name in the configuration.
    pub fn name(self) -> &'static str {
        match self {
            OnTimeout::Allow => "allow",
            OnTimeout::Deny => "deny",
        }
    }
}

/// `[callbacks]` as written.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCallbacks {
    listen: Option<String>,
}

/// One `[[apps.callbacks]]` entry as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoute {
    commands: Option<Vec<String>>,
    forward: Option<String>,
    timeout_ms: Option<u64>,
    on_timeout: Option<OnTimeout>,
}

/// An app's callback keys as written (gathered from `RawApp`'s own fields).
pub(super) struct RawAppCallbacks {
    /// Only here to be refused with a useful message: a token never sits in the file.
    pub(super) inline: bool,
    pub(super) token_env: Option<String>,
    pub(super) token_file: Option<String>,
    pub(super) previous_env: Option<String>,
    pub(super) previous_file: Option<String>,
    pub(super) allow_unsigned: bool,
    pub(super) routes: Vec<RawRoute>,
}

impl RawAppCallbacks {
    /// The app at `at`'s callback settings.
    pub(super) fn validate(self, at: &str) -> Result<AppCallbacks, ConfigError> {
        if self.inline {
            return Err(ConfigError::new(
                format!("{at}.callback_token"),
                "a token is never written in the file: use callback_token_env or callback_token_file",
            ));
        }
        let token = optional_token(at, "callback_token", self.token_env, self.token_file)?;
        let previous = optional_token(
            at,
            "callback_token_previous",
            self.previous_env,
            self.previous_file,
        )?;
        if token.is_none() && previous.is_some() {
            return Err(ConfigError::new(
                format!("{at}.callback_token_previous_env"),
                "a previous token needs a current one (callback_token_env or callback_token_file)",
            ));
        }
        if token.is_some() && self.allow_unsigned {
            return Err(ConfigError::new(
                format!("{at}.allow_unsigned_callbacks"),
                "an app with a callback token takes signed callbacks only: remove one of the two",
            ));
        }
        let routes = routes(at, self.routes)?;
        if !routes.is_empty() && token.is_none() && !self.allow_unsigned {
            return Err(ConfigError::new(
                format!("{at}.callback_token_env"),
                "required with [[apps.callbacks]]: set callback_token_env or callback_token_file \
                 to the token set in Tencent's console, or allow_unsigned_callbacks = true if \
                 unsigned callbacks are meant",
            ));
        }
        Ok(AppCallbacks {
            token,
            previous,
            allow_unsigned: self.allow_unsigned,
            routes,
        })
    }
}

/// An app's `[[apps.callbacks]]`, in order.
fn routes(at: &str, raw: Vec<RawRoute>) -> Result<Vec<CallbackRoute>, ConfigError> {
    if raw.len() > MAX_PATTERNS {
        return Err(ConfigError::new(
            format!("{at}.callbacks"),
            format!("at most {MAX_PATTERNS} routes"),
        ));
    }
    raw.into_iter()
        .enumerate()
        .map(|(i, route)| route.validate(&format!("{at}.callbacks[{i}]")))
        .collect()
}

/// A token when either key is set: the caller tokens' rules, and Tencent's length limit.
fn optional_token(
    at: &str,
    name: &str,
    env: Option<String>,
    file: Option<String>,
) -> Result<Option<CallbackToken>, ConfigError> {
    if env.is_none() && file.is_none() {
        return Ok(None);
    }
    let (token, source) = super::callers::token(at, name, env, file)?;
    if token.expose().len() > MAX_TOKEN_BYTES {
        let key = match source {
            TokenSource::Env(_) => format!("{at}.{name}_env"),
            TokenSource::File(_) => format!("{at}.{name}_file"),
        };
        return Err(ConfigError::new(
            key,
            format!("Tencent's callback token is at most {MAX_TOKEN_BYTES} characters"),
        ));
    }
    Ok(Some(CallbackToken { token, source }))
}

impl RawRoute {
    fn validate(self, at: &str) -> Result<CallbackRoute, ConfigError> {
        let key = |name: &str| format!("{at}.{name}");
        let commands = commands(at, self.commands.unwrap_or_default())?;
        let forward = self.forward.ok_or_else(|| {
            ConfigError::new(key("forward"), "required: the service's http:// URL")
        })?;
        let forward = service_url(&forward).map_err(|m| ConfigError::new(key("forward"), m))?;
        let timeout = self
            .timeout_ms
            .map(|ms| {
                (1..=MAX_TIMEOUT_MS)
                    .contains(&ms)
                    .then(|| Duration::from_millis(ms))
                    .ok_or_else(|| {
                        ConfigError::new(
                            key("timeout_ms"),
                            format!("must be between 1 and {MAX_TIMEOUT_MS}"),
                        )
                    })
            })
            .transpose()?;
        Ok(CallbackRoute {
            commands,
            forward,
            timeout,
            on_timeout: self.on_timeout.unwrap_or(OnTimeout::Allow),
        })
    }
}

/// A route's patterns: 1 to `MAX_PATTERNS`, each a short glob of command characters.
fn commands(at: &str, commands: Vec<String>) -> Result<Vec<String>, ConfigError> {
    if commands.is_empty() || commands.len() > MAX_PATTERNS {
        return Err(ConfigError::new(
            format!("{at}.commands"),
            format!(
                "required: 1 to {MAX_PATTERNS} CallbackCommand patterns, e.g. \"C2C.CallbackBeforeSendMsg\" or \"Group.*\""
            ),
        ));
    }
    for (i, pattern) in commands.iter().enumerate() {
        let plain = pattern
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'*'));
        if pattern.is_empty() || pattern.len() > MAX_PATTERN_BYTES || !plain {
            return Err(ConfigError::new(
                format!("{at}.commands[{i}]"),
                format!(
                    "{pattern:?} must be 1 to {MAX_PATTERN_BYTES} letters, digits, '.', '_' \
                     and '*' (any run of characters)"
                ),
            ));
        }
    }
    Ok(commands)
}

/// `http://host:port/path` of the service: plain HTTP (it runs beside timgate), no query
/// (Tencent's own is appended), no credentials.
fn service_url(text: &str) -> Result<Uri, String> {
    let uri: Uri = text.parse().map_err(|_| format!("{text:?} is not a URL"))?;
    let userinfo = uri.authority().is_some_and(|a| a.as_str().contains('@'));
    if uri.scheme_str() != Some("http") || uri.host().is_none() || userinfo || uri.query().is_some()
    {
        return Err(format!(
            "{text:?} must be http://host[:port][/path]: the service beside timgate, over plain \
             HTTP, with no query (Tencent's is passed on) and no credentials"
        ));
    }
    Ok(uri)
}

/// `[callbacks]` against the validated `apps` and the addresses already taken.
pub(super) fn validate(
    raw: RawCallbacks,
    apps: &[App],
    taken: &[(&str, SocketAddr)],
) -> Result<Callbacks, ConfigError> {
    let listen = raw
        .listen
        .map(|text| {
            text.parse::<SocketAddr>().map_err(|_| {
                ConfigError::new(
                    "callbacks.listen",
                    format!("{text:?} is not an IP:port address"),
                )
            })
        })
        .transpose()?;
    match listen {
        None => {
            if let Some(i) = apps.iter().position(|a| !a.callbacks.routes.is_empty()) {
                return Err(ConfigError::new(
                    "callbacks.listen",
                    format!("required: apps[{i}] has [[apps.callbacks]] routes"),
                ));
            }
        }
        Some(addr) if addr.port() != 0 => {
            if let Some((key, _)) = taken.iter().find(|(_, other)| *other == addr) {
                return Err(ConfigError::new(
                    "callbacks.listen",
                    format!("must differ from {key}"),
                ));
            }
        }
        Some(_) => {}
    }
    Ok(Callbacks { listen })
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, OnTimeout};
    use std::time::Duration;

    const APP: &str = "[[apps]]\nsdkappid = 1400000001\nidentifier = \"administrator\"\n\
                       secret_key = \"k\"\nregion = \"singapore\"\n";
    const ROUTE: &str = "[[apps.callbacks]]\ncommands = [\"C2C.*\"]\n\
                         forward = \"http://127.0.0.1:9100/tim\"\n";

    /// A token file holding `value`, named after `name`.
    fn token_file(name: &str, value: &str) -> String {
        let path = std::env::temp_dir().join(format!("timgate-cb-{name}-{}", std::process::id()));
        std::fs::write(&path, value).unwrap();
        path.display().to_string()
    }

    fn with(app_keys: &str, routes: &str) -> Result<Config, crate::config::ConfigError> {
        Config::from_toml(&format!(
            "[callbacks]\nlisten = \"127.0.0.1:8081\"\n{APP}{app_keys}{routes}"
        ))
    }

    #[test]
    fn routes_without_a_token_are_refused_naming_the_key_unless_unsigned_is_meant() {
        let e = with("", ROUTE).unwrap_err();
        assert_eq!(e.key, "apps[0].callback_token_env");
        assert!(e.message.contains("allow_unsigned_callbacks"), "{e}");
        let open = with("allow_unsigned_callbacks = true\n", ROUTE).unwrap();
        let callbacks = &open.apps[0].callbacks;
        assert!(callbacks.allow_unsigned && callbacks.token.is_none());
        assert_eq!(callbacks.routes[0].on_timeout, OnTimeout::Allow);
        assert_eq!(callbacks.routes[0].timeout, None);
    }

    #[test]
    fn tokens_follow_the_caller_tokens_rules_and_tencents_length() {
        let short = token_file("short", "xxxxyyyy");
        let e = with(&format!("callback_token_file = {short:?}\n"), ROUTE).unwrap_err();
        assert_eq!(e.key, "apps[0].callback_token_file");
        assert!(!e.to_string().contains("xxxxyyyy"), "{e}");
        let long = token_file("long", &"t".repeat(129));
        let e = with(&format!("callback_token_file = {long:?}\n"), ROUTE).unwrap_err();
        assert_eq!(e.key, "apps[0].callback_token_file");
        let e = with("callback_token = \"inline-token-0123456789\"\n", ROUTE).unwrap_err();
        assert_eq!(e.key, "apps[0].callback_token");
        let good = token_file("good", "callback-token-0123456789\n");
        let e = with(&format!("callback_token_previous_file = {good:?}\n"), ROUTE).unwrap_err();
        assert_eq!(e.key, "apps[0].callback_token_previous_env");
        let e = with(
            &format!("callback_token_file = {good:?}\nallow_unsigned_callbacks = true\n"),
            ROUTE,
        )
        .unwrap_err();
        assert_eq!(e.key, "apps[0].allow_unsigned_callbacks");
        let config = with(&format!("callback_token_file = {good:?}\n"), ROUTE).unwrap();
        let token = config.apps[0].callbacks.token.as_ref().unwrap();
        assert_eq!(token.token.expose(), "callback-token-0123456789");
        assert!(!format!("{config:?}").contains("callback-token-0123456789"));
    }

    #[test]
    fn bad_routes_are_refused_naming_the_key() {
        let open = "allow_unsigned_callbacks = true\n";
        for (route, key) in [
            (
                "forward = \"http://127.0.0.1:1/\"\n",
                "apps[0].callbacks[0].commands",
            ),
            (
                "commands = []\nforward = \"http://127.0.0.1:1/\"\n",
                "apps[0].callbacks[0].commands",
            ),
            (
                "commands = [\"C2C Callback\"]\nforward = \"http://127.0.0.1:1/\"\n",
                "apps[0].callbacks[0].commands[0]",
            ),
            ("commands = [\"*\"]\n", "apps[0].callbacks[0].forward"),
            (
                "commands = [\"*\"]\nforward = \"https://127.0.0.1:1/\"\n",
                "apps[0].callbacks[0].forward",
            ),
            (
                "commands = [\"*\"]\nforward = \"http://127.0.0.1:1/?a=b\"\n",
                "apps[0].callbacks[0].forward",
            ),
            (
                "commands = [\"*\"]\nforward = \"http://127.0.0.1:1/\"\ntimeout_ms = 0\n",
                "apps[0].callbacks[0].timeout_ms",
            ),
            (
                "commands = [\"*\"]\nforward = \"http://127.0.0.1:1/\"\ntimeout_ms = 30001\n",
                "apps[0].callbacks[0].timeout_ms",
            ),
        ] {
            let e = with(open, &format!("[[apps.callbacks]]\n{route}")).unwrap_err();
            assert_eq!(e.key, key, "{route}: {e}");
        }
        let e = with(open, &format!("{ROUTE}on_timeout = \"maybe\"\n")).unwrap_err();
        assert!(e.to_string().contains("on_timeout"), "{e}");
        let set = with(
            open,
            &format!("{ROUTE}timeout_ms = 800\non_timeout = \"deny\"\n"),
        )
        .unwrap();
        let route = &set.apps[0].callbacks.routes[0];
        assert_eq!(route.timeout, Some(Duration::from_millis(800)));
        assert_eq!(route.on_timeout, OnTimeout::Deny);
    }

    #[test]
    fn routes_need_a_listener_apart_from_the_others() {
        let e = Config::from_toml(&format!("{APP}allow_unsigned_callbacks = true\n{ROUTE}"))
            .unwrap_err();
        assert_eq!(e.key, "callbacks.listen");
        let e = Config::from_toml(&format!("[callbacks]\nlisten = \"127.0.0.1:8080\"\n{APP}"))
            .unwrap_err();
        assert_eq!(e.key, "callbacks.listen");
        assert!(e.message.contains("server.listen"), "{e}");
        let none = Config::from_toml(APP).unwrap();
        assert_eq!(none.callbacks.listen, None);
    }

    #[test]
    fn the_printed_callbacks_read_back_with_tokens_masked() {
        let good = token_file("printed", "printed-token-0123456789");
        let old = token_file("previous", "previous-token-0123456789");
        let text = format!(
            "[callbacks]\nlisten = \"0.0.0.0:8081\"\n{APP}callback_token_file = {good:?}\n\
             callback_token_previous_file = {old:?}\n{ROUTE}timeout_ms = 900\n\
             on_timeout = \"deny\"\n[[apps.callbacks]]\ncommands = [\"Group.*\", \"*\"]\n\
             forward = \"http://svc:9000\"\n"
        );
        let config = Config::from_toml(&text).unwrap();
        let printed = config.to_toml();
        assert!(!printed.contains("printed-token-0123456789"), "{printed}");
        assert!(!printed.contains("previous-token-0123456789"), "{printed}");
        assert!(
            printed.contains(&format!("callback_token_previous_file = {old:?}")),
            "{printed}"
        );
        let again = Config::from_toml(&printed).unwrap_or_else(|e| panic!("{e}\n{printed}"));
        assert_eq!(format!("{again:?}"), format!("{config:?}"));
        assert_eq!(again.to_toml(), printed);
    }
}

//! Which app a callback is for, what it is checked against, and where it goes: one table built
//! from one configuration, swapped whole on reload.
//!
//! An app's routes are tried in order; the first whose pattern matches `CallbackCommand`
//! takes the callback, and that pattern is its `command` label. A command no route names is
//! answered with the answer that lets the event go on, and labelled `other`. The default
//! answers are the documented ones (TENCENT.md §8): `ErrorCode` 0 lets the event go on; 1
//! stops it (a before-send callback's message is not sent).

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use hyper::Uri;

use crate::api::glob;
use crate::config::{App, Config, OnTimeout, Token};
use crate::metrics::OTHER;

/// The answer that lets the event go on.
pub const ALLOW: &[u8] = br#"{"ActionStatus":"OK","ErrorInfo":"","ErrorCode":0}"#;
/// The answer that stops it.
pub const DENY: &[u8] = br#"{"ActionStatus":"OK","ErrorInfo":"","ErrorCode":1}"#;

/// How long the service may take when a route sets no `timeout_ms`: Tencent waits 2 s for a
/// before-event callback, so 1.5 s leaves the default answer time to reach it.
pub const BEFORE_TIMEOUT: Duration = Duration::from_millis(1500);
/// The same for every other command, whose answer Tencent does not act on.
pub const AFTER_TIMEOUT: Duration = Duration::from_millis(5000);

/// Every configured app, by SDKAppID.
pub struct Table {
    apps: HashMap<u64, Entry>,
}

/// One app: its tokens and routes.
pub struct Entry {
    /// The current token, then the previous one; empty when it takes unsigned callbacks.
    tokens: Vec<Token>,
    routes: Vec<Route>,
}

/// One `[[apps.callbacks]]` route.
pub struct Route {
    patterns: Vec<String>,
    /// `scheme://authority/path` of the service.
    forward: String,
    timeout: Option<Duration>,
    on_timeout: OnTimeout,
}

/// A route found for one command, with the pattern that matched it.
pub struct Found<'t> {
    /// The route.
    pub route: &'t Route,
    /// The pattern that matched: the `command` label.
    pub label: &'t str,
}

impl Table {
    /// The table of `config`'s apps.
    pub fn new(config: &Config) -> Table {
        let apps = config
            .apps
            .iter()
            .map(|app| (app.sdkappid, Entry::new(app)))
            .collect();
        Table { apps }
    }

    /// The app `sdkappid` names, if configured.
    pub fn app(&self, sdkappid: u64) -> Option<&Entry> {
        self.apps.get(&sdkappid)
    }
}

impl Entry {
    fn new(app: &App) -> Entry {
        let callbacks = &app.callbacks;
        let tokens = [&callbacks.token, &callbacks.previous]
            .into_iter()
            .flatten()
            .map(|t| t.token.clone())
            .collect();
        let routes = callbacks
            .routes
            .iter()
            .map(|route| Route {
                patterns: route.commands.clone(),
                forward: route.forward.to_string(),
                timeout: route.timeout,
                on_timeout: route.on_timeout,
            })
            .collect();
        Entry { tokens, routes }
    }

    /// The tokens a sign may match, current first; none when unsigned callbacks are taken.
    pub fn tokens(&self) -> Vec<&Token> {
        self.tokens.iter().collect()
    }

    /// The first route whose pattern matches `command`.
    pub fn route(&self, command: &str) -> Option<Found<'_>> {
        self.routes.iter().find_map(|route| {
            let label = route.patterns.iter().find(|p| glob(p, command))?;
            Some(Found { route, label })
        })
    }

    /// The `command` label of `command`: the pattern that routes it, or `other`.
    pub fn label(&self, command: &str) -> &str {
        self.route(command).map_or(OTHER, |found| found.label)
    }
}

impl Route {
    /// How long the service may take over `command`.
    pub fn timeout(&self, command: &str) -> Duration {
        self.timeout
            .unwrap_or(if command.contains("CallbackBefore") {
                BEFORE_TIMEOUT
            } else {
                AFTER_TIMEOUT
            })
    }

    /// Tencent's answer when the service gives none in time.
    pub fn default_answer(&self) -> Bytes {
        match self.on_timeout {
            OnTimeout::Allow => Bytes::from_static(ALLOW),
            OnTimeout::Deny => Bytes::from_static(DENY),
        }
    }

    /// The service's URL for a callback whose query was `query`, passed on as it came.
    pub fn target(&self, query: &str) -> Result<Uri, hyper::http::uri::InvalidUri> {
        format!("{}?{query}", self.forward).parse()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> Table {
        let text = "[callbacks]\nlisten = \"127.0.0.1:0\"\n[[apps]]\nsdkappid = 7\n\
                    identifier = \"admin\"\nsecret_key = \"k\"\nregion = \"usa\"\n\
                    allow_unsigned_callbacks = true\n\
                    [[apps.callbacks]]\ncommands = [\"C2C.CallbackBeforeSendMsg\", \"Group.*\"]\n\
                    forward = \"http://127.0.0.1:9000/moderate\"\non_timeout = \"deny\"\n\
                    [[apps.callbacks]]\ncommands = [\"*.CallbackAfter*\", \"Group.CallbackBeforeSendMsg\"]\n\
                    forward = \"http://127.0.0.1:9001\"\ntimeout_ms = 700\n";
        Table::new(&Config::from_toml(text).unwrap())
    }

    #[test]
    fn the_first_route_whose_glob_matches_takes_the_command() {
        let table = table();
        let app = table.app(7).unwrap();
        assert!(table.app(8).is_none());
        assert!(app.tokens().is_empty());
        let found = |command: &str| {
            app.route(command)
                .map(|f| (f.label, f.route.forward.as_str()))
        };
        assert_eq!(
            found("C2C.CallbackBeforeSendMsg"),
            Some((
                "C2C.CallbackBeforeSendMsg",
                "http://127.0.0.1:9000/moderate"
            ))
        );
        // Both routes name it; the first wins.
        assert_eq!(
            found("Group.CallbackBeforeSendMsg"),
            Some(("Group.*", "http://127.0.0.1:9000/moderate"))
        );
        assert_eq!(
            found("C2C.CallbackAfterSendMsg"),
            Some(("*.CallbackAfter*", "http://127.0.0.1:9001/"))
        );
        assert_eq!(found("State.StateChange"), None);
        assert_eq!(app.label("State.StateChange"), "other");
        assert_eq!(app.label("C2C.CallbackBeforeSendMsgX"), "other");
    }

    #[test]
    fn timeouts_default_by_command_and_answers_by_route() {
        let table = table();
        let app = table.app(7).unwrap();
        let before = app.route("C2C.CallbackBeforeSendMsg").unwrap().route;
        assert_eq!(
            before.timeout("C2C.CallbackBeforeSendMsg"),
            Duration::from_millis(1500)
        );
        assert_eq!(
            before.timeout("Group.CallbackAfterSendMsg"),
            Duration::from_millis(5000)
        );
        assert_eq!(&before.default_answer()[..], DENY);
        let after = app.route("C2C.CallbackAfterSendMsg").unwrap().route;
        assert_eq!(
            after.timeout("C2C.CallbackBeforeSendMsg"),
            Duration::from_millis(700)
        );
        assert_eq!(&after.default_answer()[..], ALLOW);
        let target = before
            .target("SdkAppid=7&CallbackCommand=C2C.X&Sign=ab%20c")
            .unwrap();
        assert_eq!(target.path(), "/moderate");
        assert_eq!(
            target.query(),
            Some("SdkAppid=7&CallbackCommand=C2C.X&Sign=ab%20c")
        );
    }
}

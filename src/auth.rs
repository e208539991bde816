//! Who may call what: the `[[callers]]` bearer tokens, and the app and API allow-lists.
//!
//! With no caller configured every request is anonymous and only the apps' `apis` lists
//! apply. With any, a request must carry `Authorization: Bearer <token>` of one of them, or
//! it is refused 401 before its body is read or any quota is spent; a known caller outside
//! its `apps` or `apis` is refused 403 likewise.
//!
//! Tokens are never held for lookup as themselves: each is kept as its SHA-256 digest, and a
//! presented token is hashed and found by its digest, then compared with the stored digest
//! in constant time (`subtle`). Whatever the lookup's timing shows is about a digest of what
//! the caller sent, which tells nothing about any configured token. The header is never
//! logged, never a metric label, and never forwarded (the upstream request is built from
//! scratch). `Callers` is plain data built from the configuration, so a reloaded
//! configuration brings its own.

use std::collections::{HashMap, HashSet};
use std::num::NonZeroU32;

use hyper::HeaderMap;
use hyper::header::AUTHORIZATION;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::api::{Api, Pattern};
use crate::config::{self, App};

/// A token's SHA-256 digest.
type Digest32 = [u8; 32];

/// Every configured caller, found by its token.
#[derive(Debug, Default)]
pub struct Callers {
    /// Indexed by the first half of each token's digest; the whole digest is compared after.
    by_digest: HashMap<u128, usize>,
    callers: Vec<Caller>,
}

/// One caller as the request path sees it: its name and what it may call.
#[derive(Debug)]
pub struct Caller {
    name: String,
    digest: Digest32,
    apps: Option<HashSet<u64>>,
    apis: Option<Vec<Pattern>>,
    rate_limit: Option<NonZeroU32>,
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// No `Authorization: Bearer` header, while callers are configured.
    #[error("this gateway needs Authorization: Bearer <token> of a configured caller")]
    Missing,
    /// More than one `Authorization` header: which caller is meant is not for timgate to
    /// guess, so none is chosen.
    #[error("the request carries more than one Authorization header; send exactly one")]
    Ambiguous,
    /// A bearer token that is no configured caller's (the token is never repeated).
    #[error("the bearer token is not one of this gateway's callers")]
    Unknown,
    /// A known caller, but not allowed this app.
    #[error("caller {caller} may not use app {app} (its apps list)")]
    App {
        /// The caller's name.
        caller: String,
        /// The SDKAppID asked for.
        app: u64,
    },
    /// A known caller, but not allowed this API.
    #[error("caller {caller} may not call {api} (its apis list)")]
    CallerApi {
        /// The caller's name.
        caller: String,
        /// The API asked for.
        api: String,
    },
    /// An API outside the app's own `apis` list, whoever calls.
    #[error("app {app} may not be used for {api} (its apis list)")]
    AppApi {
        /// The SDKAppID.
        app: u64,
        /// The API asked for.
        api: String,
    },
}

impl Denied {
    /// 401 (who are you?) or 403 (known, not allowed).
    pub fn is_unauthenticated(&self) -> bool {
        matches!(self, Denied::Missing | Denied::Ambiguous | Denied::Unknown)
    }
}

impl Callers {
    /// The callers of a validated configuration.
    pub fn new(configured: &[config::Caller]) -> Callers {
        let callers: Vec<Caller> = configured
            .iter()
            .map(|c| Caller {
                name: c.name.clone(),
                digest: digest(c.token.expose().as_bytes()),
                apps: c.apps.as_ref().map(|apps| apps.iter().copied().collect()),
                apis: c.apis.clone(),
                rate_limit: c.rate_limit,
            })
            .collect();
        let by_digest = callers
            .iter()
            .enumerate()
            .map(|(i, c)| (index(&c.digest), i))
            .collect();
        Callers { by_digest, callers }
    }

    /// Whether every request must name a caller.
    pub fn required(&self) -> bool {
        !self.callers.is_empty()
    }

    /// Every caller, in configuration order.
    pub fn iter(&self) -> impl Iterator<Item = &Caller> {
        self.callers.iter()
    }

    /// The caller whose token `headers` carry; `Ok(None)` when no callers are configured.
    pub fn identify(&self, headers: &HeaderMap) -> Result<Option<&Caller>, Denied> {
        if !self.required() {
            return Ok(None);
        }
        let token = bearer(headers)?.ok_or(Denied::Missing)?;
        let presented = digest(token);
        let found = self
            .by_digest
            .get(&index(&presented))
            .map(|i| &self.callers[*i]);
        match found {
            Some(caller) if bool::from(caller.digest.ct_eq(&presented)) => Ok(Some(caller)),
            _ => Err(Denied::Unknown),
        }
    }
}

impl Caller {
    /// Its configured name: a log field and a metric label value.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its own calls per second within each app, if it has a lane of its own.
    pub fn rate_limit(&self) -> Option<NonZeroU32> {
        self.rate_limit
    }

    /// Whether its `apps` list lets it use `app` at all.
    pub fn may_use(&self, app: u64) -> bool {
        self.apps.as_ref().is_none_or(|apps| apps.contains(&app))
    }

    /// Whether it may call `api` of `app`.
    pub fn allows(&self, app: u64, api: &Api) -> Result<(), Denied> {
        if !self.may_use(app) {
            return Err(Denied::App {
                caller: self.name.clone(),
                app,
            });
        }
        if !listed(self.apis.as_deref(), api) {
            return Err(Denied::CallerApi {
                caller: self.name.clone(),
                api: api.name().to_owned(),
            });
        }
        Ok(())
    }
}

/// Whether `app`'s own `apis` list lets anyone call `api`.
pub fn app_allows(app: &App, api: &Api) -> Result<(), Denied> {
    if listed(app.apis.as_deref(), api) {
        Ok(())
    } else {
        Err(Denied::AppApi {
            app: app.sdkappid,
            api: api.name().to_owned(),
        })
    }
}

/// An absent list allows every API.
fn listed(patterns: Option<&[Pattern]>, api: &Api) -> bool {
    patterns.is_none_or(|patterns| patterns.iter().any(|p| p.matches(api)))
}

/// The token of the one `Authorization: Bearer <token>` header (the scheme in any case);
/// `Err` when there are two or more.
fn bearer(headers: &HeaderMap) -> Result<Option<&[u8]>, Denied> {
    let mut all = headers.get_all(AUTHORIZATION).iter();
    let (Some(value), None) = (all.next(), all.next()) else {
        return if headers.contains_key(AUTHORIZATION) {
            Err(Denied::Ambiguous)
        } else {
            Ok(None)
        };
    };
    let Some((scheme, token)) = value.as_bytes().split_at_checked(7) else {
        return Ok(None);
    };
    let token = token.trim_ascii();
    Ok((scheme.eq_ignore_ascii_case(b"bearer ") && !token.is_empty()).then_some(token))
}

fn digest(token: &[u8]) -> Digest32 {
    Sha256::digest(token).into()
}

fn index(digest: &Digest32) -> u128 {
    let mut half = [0u8; 16];
    half.copy_from_slice(&digest[..16]);
    u128::from_le_bytes(half)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use hyper::header::HeaderValue;

    fn callers() -> Callers {
        let token = std::env::var("PATH").unwrap();
        let text = "[[apps]]\nsdkappid = 1\nidentifier = \"a\"\nsecret_key = \"k\"\nregion = \"usa\"\n\
             [[apps]]\nsdkappid = 2\nidentifier = \"a\"\nsecret_key = \"k\"\nregion = \"usa\"\n\
             [[callers]]\nname = \"live\"\ntoken_env = \"PATH\"\napps = [1]\n\
             apis = [\"live_engine_http_srv/*\"]\n";
        let config = Config::from_toml(text).unwrap();
        assert_eq!(config.callers[0].token.expose(), token);
        Callers::new(&config.callers)
    }

    fn headers(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn a_token_is_found_by_its_digest_and_nothing_else_is() {
        let callers = callers();
        let token = std::env::var("PATH").unwrap();
        let found = callers
            .identify(&headers(&format!("Bearer {token}")))
            .unwrap();
        assert_eq!(found.unwrap().name(), "live");
        let found = callers
            .identify(&headers(&format!("bearer  {token} ")))
            .unwrap();
        assert_eq!(found.unwrap().name(), "live");
        assert_eq!(
            callers.identify(&HeaderMap::new()).unwrap_err(),
            Denied::Missing
        );
        for bad in [
            format!("Basic {token}"),
            "Bearer".to_owned(),
            "Bearer ".to_owned(),
            format!("Bearer {token}x"),
            format!("Bearer {}", &token[1..]),
        ] {
            assert!(callers.identify(&headers(&bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn two_authorization_headers_choose_no_caller() {
        let callers = callers();
        let token = std::env::var("PATH").unwrap();
        for (first, second) in [
            (
                format!("Bearer {token}"),
                "Bearer wrong-token-0123456789".to_owned(),
            ),
            (
                "Bearer wrong-token-0123456789".to_owned(),
                format!("Bearer {token}"),
            ),
            (format!("Bearer {token}"), format!("Bearer {token}")),
        ] {
            let mut headers = headers(&first);
            headers.append(AUTHORIZATION, HeaderValue::from_str(&second).unwrap());
            let denied = callers.identify(&headers).unwrap_err();
            assert_eq!(denied, Denied::Ambiguous);
            assert!(denied.is_unauthenticated());
        }
    }

    #[test]
    fn a_caller_is_held_to_its_apps_and_apis() {
        let callers = callers();
        let live = callers.iter().next().unwrap();
        let api = |p: &str| Api::from_path(p).unwrap();
        assert!(
            live.allows(1, &api("/v4/live_engine_http_srv/get_room_info"))
                .is_ok()
        );
        assert!(matches!(
            live.allows(2, &api("/v4/live_engine_http_srv/get_room_info")),
            Err(Denied::App { app: 2, .. })
        ));
        assert!(matches!(
            live.allows(1, &api("/v4/im_open_login_svc/account_delete")),
            Err(Denied::CallerApi { .. })
        ));
    }

    #[test]
    fn without_callers_every_request_is_anonymous() {
        let callers = Callers::new(&[]);
        assert!(!callers.required());
        assert!(callers.identify(&HeaderMap::new()).unwrap().is_none());
    }
}
